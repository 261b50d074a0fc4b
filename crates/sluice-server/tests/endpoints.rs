//! Endpoints declared in the model repository (`<name>/endpoint.yaml`), served beside the real
//! spam classifiers of $SLUICE_MODELS: a route on a header, a cascade spam-fast → spam-accurate
//! with text in, a sticky split, a job through a route (its header kept with the job), and
//! definitions that cannot be served listed with their reason.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, JobsOptions, RunningServer, ServerConfig};

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["spam-fast", "spam-accurate"] {
        add_text_classifier(dir.path(), name, name, "");
    }
    let endpoint = |name: &str, yaml: &str| {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("endpoint.yaml"), yaml).unwrap();
    };
    endpoint(
        "router",
        "kind: route\nrules:\n  - when: { header: x-canary, equals: '1' }\n    to: { model: spam-accurate }\ndefault: { model: spam-fast }\n",
    );
    endpoint(
        "cascade",
        "kind: cascade\nstages:\n  - model: spam-fast\n    confidence: { output: probabilities }\n    threshold: 0.9\n  - model: spam-accurate\n",
    );
    endpoint(
        "split",
        "kind: split\ntargets:\n  - { model: spam-fast, weight: 1 }\n  - { model: spam-accurate, weight: 1 }\nsticky: { header: x-user-id }\n",
    );
    endpoint("loop-a", "kind: split\ntargets:\n  - { endpoint: loop-b, weight: 1 }\n");
    endpoint("loop-b", "kind: route\nrules: [ { when: { header: x, present: true }, to: { model: spam-fast } } ]\ndefault: { endpoint: loop-a }\n");
    endpoint("typo", "kind: route\nrules:\n  - when: { input: TEXT, max_char: 10 }\n    to: { model: spam-fast }\n");
    dir
}

fn email() -> String {
    let text = std::fs::read_to_string(sluice_test_models::model_path("datasets/spamassassin/samples.jsonl")).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["text"].as_str().or(first["subject"].as_str()).unwrap().to_string()
}

fn body(text: &str, params: Value) -> Value {
    json!({
        "inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}],
        "parameters": params,
    })
}

async fn infer(s: &RunningServer, model: &str, headers: &[(&str, &str)], body: &Value) -> Value {
    let mut req = reqwest::Client::new().post(format!("http://{}/v2/models/{model}/infer", s.http_addr)).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{model}: {v}");
    v
}

async fn server(repo: &std::path::Path, state: &std::path::Path) -> RunningServer {
    let jobs = JobsOptions { workers: 1, ..JobsOptions::new(state.to_path_buf()) };
    start_server(repo, EngineOptions::default(), ServerConfig { jobs: Some(jobs), ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_route_cascade_and_split_real_models() {
    let (repo, state) = (repo(), tempfile::tempdir().unwrap());
    let s = server(repo.path(), state.path()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();
    // Endpoint directories are not models: the server is ready with them beside the models.
    assert_eq!(c.get(format!("{base}/v2/health/ready")).send().await.unwrap().status(), 200);
    let text = email();

    // Route: the header picks the model; the answer is the endpoint's and says what answered.
    let a = infer(&s, "router", &[("x-canary", "1")], &body(&text, json!({}))).await;
    assert_eq!(a["model_name"], "router");
    assert_eq!(
        (a["parameters"]["sluice_model"].clone(), a["parameters"]["sluice_rule"].clone()),
        (json!("spam-accurate"), json!(0))
    );
    let a = infer(&s, "router", &[], &body(&text, json!({}))).await;
    assert_eq!(a["parameters"]["sluice_model"], "spam-fast");
    assert!(a["parameters"].get("sluice_rule").is_none(), "{a}");
    let meta: Value = c.get(format!("{base}/v2/models/router")).send().await.unwrap().json().await.unwrap();
    assert_eq!((meta["name"].clone(), meta["inputs"][0]["name"].clone()), (json!("router"), json!("TEXT")), "{meta}");

    // Cascade: spam-fast answers when it is sure enough, else spam-accurate; the caller can
    // move the bar.
    let fast = infer(&s, "spam-fast", &[], &body(&text, json!({}))).await;
    let p = fast["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap()["data"].clone();
    let sure = p.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).fold(0.0, f64::max);
    let a = infer(&s, "cascade", &[], &body(&text, json!({}))).await;
    let want = if sure >= 0.9 { ("spam-fast", 0) } else { ("spam-accurate", 1) };
    assert_eq!(
        (a["parameters"]["sluice_model"].clone(), a["parameters"]["sluice_stage"].clone()),
        (json!(want.0), json!(want.1)),
        "p = {sure}"
    );
    let a = infer(&s, "cascade", &[], &body(&text, json!({"confidence_threshold": 0.0}))).await;
    assert_eq!(a["parameters"]["sluice_stage"], 0);
    // With Triton's classification asked of the confidence output, its top score decides.
    let mut classified = body(&text, json!({}));
    classified["outputs"] = json!([{"name": "probabilities", "parameters": {"classification": 1}}]);
    let a = infer(&s, "cascade", &[], &classified).await;
    assert_eq!(a["parameters"]["sluice_stage"], want.1, "{a}");
    assert!(a["outputs"][0]["data"][0].as_str().unwrap().contains(':'), "{a}");
    if sure < 1.0 {
        let a = infer(&s, "cascade", &[], &body(&text, json!({"confidence_threshold": 1.0}))).await;
        assert_eq!(a["parameters"]["sluice_stage"], 1, "p = {sure}");
    }

    // Split: a user keeps the model it was given.
    for user in ["u1", "u2", "u3", "u4"] {
        let first = infer(&s, "split", &[("x-user-id", user)], &body(&text, json!({}))).await["parameters"]
            ["sluice_model"]
            .clone();
        for _ in 0..3 {
            let again = infer(&s, "split", &[("x-user-id", user)], &body(&text, json!({}))).await;
            assert_eq!(again["parameters"]["sluice_model"], first, "{user}");
        }
    }

    // What cannot be served is listed with the reason, and answers 404 naming it.
    let index: Value = c.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    let entry =
        |name: &str| index.as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap_or(Value::Null);
    assert_eq!(entry("router")["state"], "READY", "{index}");
    assert_eq!(entry("loop-a")["state"], "UNAVAILABLE");
    assert!(entry("loop-a")["reason"].as_str().unwrap().contains("cycle"), "{index}");
    assert!(
        entry("typo")["reason"]
            .as_str()
            .unwrap()
            .contains("typo/endpoint.yaml: rules[0].when: unknown field 'max_char'"),
        "{index}"
    );
    let r = c.post(format!("{base}/v2/models/typo/infer")).json(&body(&text, json!({}))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("max_char"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_through_a_route_keeps_its_header() {
    let (repo, state) = (repo(), tempfile::tempdir().unwrap());
    let s = server(repo.path(), state.path()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/v2/models/router/jobs"))
        .header("x-canary", "1")
        .json(&body(&email(), json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    let job = loop {
        let job: Value = c.get(format!("{base}/v2/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if job["status"] == "completed" || job["status"] == "failed" {
            break job;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["model_name"], "router");
    assert_eq!(
        job["result"]["parameters"]["sluice_model"], "spam-accurate",
        "the worker saw the submit's header: {job}"
    );
    s.shutdown().await;
}
