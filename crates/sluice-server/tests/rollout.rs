//! Rollouts end to end on a real server: add_sub version 1 (baseline) → version 2 (candidate),
//! holds of a second or two. A candidate faulted at 20 % errors is rolled back during its first
//! canary step and gets no request after; a healthy one walks shadow → 5 → 25 → 50 → 100 % and
//! is promoted; pause, resume and rollback by hand, refused commands, and a restart that goes on
//! in the same step.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, RunningServer, ServerConfig};

const CONFIG: &str = "name: \"add_sub\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 8\n\
    input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 16 ] }, { name: \"INPUT1\" data_type: TYPE_FP32 dims: [ 16 ] } ]\n\
    output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 16 ] }, { name: \"OUTPUT1\" data_type: TYPE_FP32 dims: [ 16 ] } ]\n\
    version_policy: { all { } }\n";

/// add_sub at versions 1 and 2, and `rollout/endpoint.yaml`.
fn repo(rollout_yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(CONFIG));
    add_model(dir.path(), "add_sub", 2, "add_sub.onnx", None);
    std::fs::create_dir_all(dir.path().join("rollout")).unwrap();
    std::fs::write(dir.path().join("rollout/endpoint.yaml"), rollout_yaml).unwrap();
    dir
}

async fn server(repo: &std::path::Path, state: &std::path::Path) -> RunningServer {
    let opts = EngineOptions { state_dir: Some(state.to_path_buf()), ..Default::default() };
    start_server(repo, opts, ServerConfig::default()).await
}

fn body() -> Value {
    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": a},
    ]})
}

/// Sends `n` requests (8 at a time), each as user `user-<i>`; the answers' versions in order
/// (`Err(status)` for a failed one).
async fn send(base: &str, n: usize, first_user: usize) -> Vec<Result<String, u16>> {
    let c = reqwest::Client::new();
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let calls = chunk.iter().map(|i| {
            c.post(format!("{base}/v2/models/rollout/infer"))
                .header("x-user-id", format!("user-{}", first_user + i))
                .json(&body())
                .send()
        });
        for r in futures::future::join_all(calls).await {
            let r = r.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            out.push(if status == 200 {
                assert_eq!(v["model_name"], "rollout");
                Ok(v["parameters"]["sluice_model_version"].as_str().unwrap().to_string())
            } else {
                Err(status)
            });
        }
    }
    out
}

async fn status(base: &str) -> Value {
    let r = reqwest::get(format!("{base}/v2/endpoints/rollout/rollout")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn command(base: &str, action: &str, reason: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v2/endpoints/rollout/rollout/{action}"))
        .json(&json!({ "reason": reason }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn phase(s: &Value) -> Value {
    s["status"]["phase"].clone()
}

async fn v2_inferences(base: &str) -> u64 {
    let v: Value =
        reqwest::get(format!("{base}/v2/models/add_sub/versions/2/stats")).await.unwrap().json().await.unwrap();
    v["model_stats"][0]["inference_count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_candidate_is_rolled_back_in_its_first_canary_step() {
    let dir = repo(
        "kind: rollout\nbaseline: { model: add_sub, version: 1 }\n\
         candidate: { model: add_sub, version: 2, fault: { error_rate: 0.2 } }\nunit: { header: x-user-id }\n\
         steps:\n  - { weight: 5, hold: 1h }\n  - { weight: 25, hold: 1h }\n  - { weight: 100 }\n\
         guardrails:\n  - { metric: error_rate, max_increase: 0.01 }\n  - { metric: srm }\n",
    );
    let state = tempfile::tempdir().unwrap();
    let s = server(dir.path(), state.path()).await;
    let base = format!("http://{}", s.http_addr);
    assert_eq!(phase(&status(&base).await), json!({"step": 0}));

    let started = Instant::now();
    let mut user = 0;
    while phase(&status(&base).await) == json!({"step": 0}) {
        assert!(started.elapsed() < Duration::from_secs(60), "still in step 0: {}", status(&base).await);
        let answers = send(&base, 200, user).await;
        user += 200;
        // The canary's callers meet its faults; nobody else does.
        assert!(answers.iter().all(|a| matches!(a, Ok(v) if v == "1" || v == "2") || *a == Err(503)), "{answers:?}");
    }
    let s1 = status(&base).await;
    assert_eq!(phase(&s1), json!("rolled_back"), "{s1}");
    let last = &s1["status"]["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["from"].clone(), last["cause"].clone()), (json!({"step": 0}), json!("failure")), "{last}");
    assert!(last["reason"].as_str().unwrap().contains("error_rate"), "{last}");
    assert!(s1["candidate"]["faults_injected"].as_u64().unwrap() > 0);
    eprintln!("rolled back after {user} requests: {}", last["reason"]);

    // No later request reaches version 2.
    let before = v2_inferences(&base).await;
    let answers = send(&base, 200, user).await;
    assert!(answers.iter().all(|a| a.as_deref() == Ok("1")), "{answers:?}");
    assert_eq!(v2_inferences(&base).await, before);
    let metrics = reqwest::get(format!("http://{}/metrics", s.metrics_addr)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("sluice_rollout_transitions_total{endpoint=\"rollout\",cause=\"failure\"} 1"),
        "{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_walks_every_step_and_is_promoted() {
    let dir = repo(
        "kind: rollout\nbaseline: { model: add_sub, version: 1 }\ncandidate: { model: add_sub, version: 2 }\n\
         unit: { header: x-user-id }\nsteps:\n  - { shadow: 1.0, hold: 1s, min_requests: 50 }\n  \
         - { weight: 5, hold: 1s }\n  - { weight: 25, hold: 1s }\n  - { weight: 50, hold: 1s }\n  - { weight: 100 }\n\
         guardrails:\n  - { metric: error_rate, max_increase: 0.05 }\n  - { metric: srm }\n",
    );
    let state = tempfile::tempdir().unwrap();
    let s = server(dir.path(), state.path()).await;
    let base = format!("http://{}", s.http_addr);

    let started = Instant::now();
    let mut user = 0;
    let mut seen_in_shadow = None;
    while phase(&status(&base).await) != json!("promoted") {
        assert!(started.elapsed() < Duration::from_secs(120), "not promoted: {}", status(&base).await);
        let in_shadow = phase(&status(&base).await) == json!({"step": 0});
        let answers = send(&base, 200, user).await;
        user += 200;
        assert!(answers.iter().all(Result::is_ok), "a healthy rollout fails nobody: {answers:?}");
        if in_shadow && phase(&status(&base).await) == json!({"step": 0}) {
            // The candidate answers nobody while it is shadowed.
            assert!(answers.iter().all(|a| a.as_deref() == Ok("1")), "{answers:?}");
            seen_in_shadow = Some(());
        }
    }
    assert!(seen_in_shadow.is_some(), "the shadow step was seen");
    let st = status(&base).await;
    let history = st["status"]["history"].as_array().unwrap();
    let path: Vec<Value> = history.iter().map(|h| h["to"].clone()).collect();
    assert_eq!(
        path,
        vec![
            json!({"step": 0}),
            json!({"step": 1}),
            json!({"step": 2}),
            json!({"step": 3}),
            json!({"step": 4}),
            json!("promoted")
        ],
        "{st}"
    );
    assert!(history.iter().all(|h| h["cause"] != "failure"), "{st}");
    let answers = send(&base, 50, user).await;
    assert!(answers.iter().all(|a| a.as_deref() == Ok("2")), "promoted: all to the candidate: {answers:?}");
    eprintln!("promoted after {user} requests in {:.1} s", started.elapsed().as_secs_f64());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_by_hand_and_a_restart_in_the_middle() {
    let yaml = "kind: rollout\nbaseline: { model: add_sub, version: 1 }\ncandidate: { model: add_sub, version: 2 }\n\
                steps:\n  - { weight: 50, hold: 1h }\n  - { weight: 100 }\n";
    let dir = repo(yaml);
    let state = tempfile::tempdir().unwrap();
    let s = server(dir.path(), state.path()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();

    // Refusals say why.
    let r = c.post(format!("{base}/v2/endpoints/rollout/rollout/pause")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("needs a reason"));
    let r = c
        .post(format!("{base}/v2/endpoints/rollout/rollout/launch"))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("pause, resume, promote, rollback"));
    let r = reqwest::get(format!("{base}/v2/endpoints/add_sub/rollout")).await.unwrap();
    assert_eq!(r.status(), 404);
    let (code, body) = command(&base, "resume", "nothing to resume").await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not paused"), "{body}");

    // Half the users each way while it runs; pause holds the split.
    let answers = send(&base, 200, 0).await;
    let on_v2 = answers.iter().filter(|a| a.as_deref() == Ok("2")).count();
    assert!((60..=140).contains(&on_v2), "about half on the candidate: {on_v2}");
    let (code, paused) = command(&base, "pause", "looking at a dashboard").await;
    assert_eq!(code, 200, "{paused}");
    assert_eq!(phase(&paused), json!({"paused": {"step": 0, "by_failure": false}}));
    let (_, resumed) = command(&base, "resume", "looks fine").await;
    assert_eq!(phase(&resumed), json!({"step": 0}));
    let started = resumed["status"]["step_started_ms"].clone();
    let answers = send(&base, 40, 1000).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    // The counts reach the store within a tick.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // A restart goes on in the same step, from the same start, with the step's counts.
    s.shutdown().await;
    let s = server(dir.path(), state.path()).await;
    let base = format!("http://{}", s.http_addr);
    let again = status(&base).await;
    assert_eq!(phase(&again), json!({"step": 0}), "{again}");
    assert_eq!(again["status"]["step_started_ms"], started);
    assert_eq!(again["status"]["history"].as_array().unwrap().len(), 3, "start, pause, resume: {again}");
    let counted = again["baseline"]["requests"].as_u64().unwrap() + again["candidate"]["requests"].as_u64().unwrap();
    assert_eq!(counted, 40, "the step's counts survive the restart: {again}");

    let (_, back) = command(&base, "rollback", "v2 is wrong for EU users").await;
    assert_eq!(phase(&back), json!("rolled_back"));
    let last = back["status"]["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["cause"], "command");
    assert!(last["reason"].as_str().unwrap().contains("v2 is wrong for EU users"), "{last}");
    let (code, body) = command(&base, "promote", "too late").await;
    assert_eq!(code, 409, "{body}");
    let answers = send(&base, 40, 0).await;
    assert!(answers.iter().all(|a| a.as_deref() == Ok("1")), "{answers:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_metric_fed_back_that_falls_on_the_candidate_rolls_it_back() {
    let dir = repo(
        "kind: rollout\nbaseline: { model: add_sub, version: 1 }\ncandidate: { model: add_sub, version: 2 }\n\
         unit: { header: x-user-id }\nsteps:\n  - { weight: 50, hold: 1h }\n  - { weight: 100 }\n\
         guardrails:\n  - { metric: feedback.conversion, max_decrease: 0.02 }\n",
    );
    let state = tempfile::tempdir().unwrap();
    let s = server(dir.path(), state.path()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();
    let feedback = |body: Value| {
        let c = c.clone();
        let url = format!("{base}/v2/feedback");
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    // Users of the baseline convert at 30 %, the candidate's at 5 %.
    let mut sides = Vec::new();
    for i in 0..300 {
        let r = c
            .post(format!("{base}/v2/models/rollout/infer"))
            .header("x-user-id", format!("user-{i}"))
            .header("x-request-id", format!("req-{i}"))
            .json(&body())
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        sides.push(v["parameters"]["sluice_rollout_side"].as_str().unwrap().to_string());
    }
    let (code, body) = feedback(json!({"request_id": "req-0", "metric": "revenue", "value": 1})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no guardrail feedback.revenue"), "{body}");
    for (i, side) in sides.iter().enumerate() {
        let converted = if side == "baseline" { i % 10 < 3 } else { i % 20 == 0 };
        let (code, taken) = feedback(json!({
            "request_id": format!("req-{i}"), "metric": "conversion", "value": u8::from(converted), "id": format!("fb-{i}"),
        }))
        .await;
        assert_eq!((code, taken["counted"].clone(), taken["side"].clone()), (200, json!(true), json!(side)), "{taken}");
    }
    let (_, again) = feedback(json!({"request_id": "req-1", "metric": "conversion", "value": 1, "id": "fb-1"})).await;
    assert_eq!(again["counted"], false, "{again}");

    let started = Instant::now();
    while phase(&status(&base).await) == json!({"step": 0}) {
        assert!(started.elapsed() < Duration::from_secs(10), "not rolled back: {}", status(&base).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = status(&base).await;
    assert_eq!(phase(&after), json!("rolled_back"), "{after}");
    let last = after["status"]["history"].as_array().unwrap().last().unwrap().clone();
    assert!(last["reason"].as_str().unwrap().contains("feedback.conversion"), "{last}");
    s.shutdown().await;
}
