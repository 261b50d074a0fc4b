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

/// A shadow over spam-fast whose candidate is a split: half its copies go to spam-accurate,
/// half to a model that failed to load. The caller sees spam-fast's answers only; the report
/// counts the candidate's errors and its agreement with the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_is_never_seen_by_the_caller() {
    let (repo, state, logs) = (repo(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let broken = repo.path().join("broken/1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.onnx"), b"this is not an onnx file").unwrap();
    let endpoint = |name: &str, yaml: &str| {
        std::fs::create_dir_all(repo.path().join(name)).unwrap();
        std::fs::write(repo.path().join(name).join("endpoint.yaml"), yaml).unwrap();
    };
    endpoint(
        "flaky",
        "kind: split\ntargets:\n  - { model: spam-accurate, weight: 1 }\n  - { model: broken, weight: 1 }\n",
    );
    endpoint(
        "mirrored",
        "kind: shadow\nprimary: { model: spam-fast }\nshadows:\n  - { endpoint: flaky, share: 1.0 }\ncompare: { output: label }\nlog: { sample: 1.0 }\n",
    );
    let opts = EngineOptions {
        shadow: sluice_server::ShadowOptions { log_dir: Some(logs.path().to_path_buf()), ..Default::default() },
        ..Default::default()
    };
    let jobs = JobsOptions { workers: 1, ..JobsOptions::new(state.path().to_path_buf()) };
    let s = start_server(repo.path(), opts, ServerConfig { jobs: Some(jobs), ..Default::default() }).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();

    let emails: Vec<String> =
        std::fs::read_to_string(sluice_test_models::model_path("datasets/spamassassin/samples.jsonl"))
            .unwrap()
            .lines()
            .take(40)
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["text"].as_str().or(v["subject"].as_str()).unwrap().to_string()
            })
            .collect();
    for (i, text) in emails.iter().enumerate() {
        let r = c
            .post(format!("{base}/v2/models/mirrored/infer"))
            .header("x-request-id", format!("req-{i}"))
            .json(&body(text, json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the caller never sees the shadow's failures");
        assert_eq!(r.headers()["sluice-model"], "spam-fast");
        let a: Value = r.json().await.unwrap();
        let direct = infer(&s, "spam-fast", &[], &body(text, json!({}))).await;
        assert_eq!(a["model_name"], "mirrored");
        assert_eq!(a["parameters"]["sluice_model"], "spam-fast");
        assert_eq!(a["outputs"], direct["outputs"], "the primary's answer, unchanged");
    }

    // The copies run off the response path: wait for them.
    let t0 = Instant::now();
    let report = loop {
        let r: Value = c.get(format!("{base}/v2/endpoints/mirrored")).send().await.unwrap().json().await.unwrap();
        if r["shadows"][0]["completed"] == 40 {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let shadow = &report["shadows"][0];
    assert_eq!((report["kind"].clone(), report["requests"].clone()), (json!("shadow"), json!(40)), "{report}");
    assert_eq!((shadow["requests"].clone(), shadow["dropped"].clone()), (json!(40), json!(0)), "{report}");
    assert_eq!(shadow["primary_errors"], 0, "{report}");
    let failed = shadow["shadow_errors"].as_u64().unwrap();
    assert!((8..=32).contains(&failed), "about half of the copies fail: {report}");
    assert!(shadow["last_shadow_error"].as_str().unwrap().contains("broken"), "{report}");
    // Labels compared on the copies that spam-accurate answered: the two models mostly agree.
    let cmp = &shadow["comparison"];
    assert_eq!(cmp["compared_elements"], 40 - failed, "{report}");
    let agreement = cmp["agreement"].as_f64().unwrap();
    let [lo, hi] = [cmp["agreement_ci95"][0].as_f64().unwrap(), cmp["agreement_ci95"][1].as_f64().unwrap()];
    assert!(agreement > 0.7 && lo <= agreement && agreement <= hi && hi <= 1.0, "{report}");
    assert!(shadow["primary_latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{report}");
    assert!(shadow["shadow_latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{report}");

    // Every comparison was logged (sample 1.0), naming the request.
    // (Written by a thread of its own, just after each copy is counted.)
    let t0 = Instant::now();
    let lines: Vec<Value> = loop {
        let log = std::fs::read_to_string(logs.path().join("mirrored.jsonl")).unwrap_or_default();
        if log.lines().count() >= 40 || t0.elapsed() > Duration::from_secs(10) {
            break log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().any(|l| l["request_id"] == "req-7"));
    assert_eq!(lines.iter().filter(|l| l["candidate"]["error"].is_string()).count() as u64, failed);

    // The split behind the shadow counts its targets; /metrics shows both policies' counters.
    let metrics = c.get(format!("http://{}/metrics", s.metrics_addr)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "sluice_shadow_errors_total{{endpoint=\"mirrored\",shadow=\"endpoint:flaky\"}} {failed}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_shadow_copies_total{endpoint=\"mirrored\",shadow=\"endpoint:flaky\"} 40"));
    assert!(metrics.contains("sluice_endpoint_requests_total{endpoint=\"flaky\",target=\"broken\"}"));
    let list: Value = c.get(format!("{base}/v2/endpoints")).send().await.unwrap().json().await.unwrap();
    assert!(list.as_array().unwrap().iter().any(|e| e["name"] == "loop-a" && e["reason"].is_string()), "{list}");
    s.shutdown().await;
}

/// Endpoints load, unload and reload through the repository API; a load checks the targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_load_and_unload_like_models() {
    let (repo, state) = (repo(), tempfile::tempdir().unwrap());
    let s = server(repo.path(), state.path()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();
    let text = email();
    let post = |path: String| c.post(format!("{base}{path}")).json(&json!({})).send();

    assert_eq!(post("/v2/repository/models/router/unload".into()).await.unwrap().status(), 200);
    let r = c.post(format!("{base}/v2/models/router/infer")).json(&body(&text, json!({}))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("unloaded"));

    // A new definition with a target that does not exist is refused, naming the file and field.
    std::fs::write(
        repo.path().join("router/endpoint.yaml"),
        "kind: route\nrules:\n  - when: { header: x-canary, equals: '1' }\n    to: { model: spam-acurate }\ndefault: { model: spam-fast }\n",
    )
    .unwrap();
    let r = post("/v2/repository/models/router/load".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let e = r.text().await.unwrap();
    assert!(e.contains("router/endpoint.yaml: rules[0].to: no model or endpoint named 'spam-acurate'"), "{e}");

    // Targets whose inputs differ are refused.
    add_model(repo.path(), "add_sub", 1, "add_sub.onnx", Some(ADD_SUB_CONFIG));
    assert_eq!(post("/v2/repository/models/add_sub/load".into()).await.unwrap().status(), 200);
    std::fs::write(
        repo.path().join("router/endpoint.yaml"),
        "kind: split\ntargets:\n  - { model: spam-fast, weight: 1 }\n  - { model: add_sub, weight: 1 }\n",
    )
    .unwrap();
    let e = post("/v2/repository/models/router/load".into()).await.unwrap().text().await.unwrap();
    assert!(e.contains("router/endpoint.yaml: targets[1]: 'add_sub' takes inputs [INPUT0 FP32, INPUT1 FP32]"), "{e}");

    // Fixed, it loads and serves again.
    std::fs::write(repo.path().join("router/endpoint.yaml"), "kind: route\nrules:\n  - when: { header: x-canary, equals: '1' }\n    to: { model: spam-accurate }\ndefault: { model: spam-fast }\n").unwrap();
    assert_eq!(post("/v2/repository/models/router/load".into()).await.unwrap().status(), 200);
    let a = infer(&s, "router", &[("x-canary", "1")], &body(&text, json!({}))).await;
    assert_eq!(a["parameters"]["sluice_model"], "spam-accurate");
    s.shutdown().await;
}

/// The example repository's Triton ensemble, loaded unchanged: add_sub chained with itself and a
/// step beside them; its statistics, versions and `unload_dependents`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triton_ensemble_runs_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(ADD_SUB_CONFIG));
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/add_sub_twice");
    std::fs::create_dir_all(dir.path().join("add_sub_twice/1")).unwrap();
    std::fs::copy(example.join("config.pbtxt"), dir.path().join("add_sub_twice/config.pbtxt")).unwrap();
    let s = start_server(dir.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();
    assert_eq!(c.get(format!("{base}/v2/health/ready")).send().await.unwrap().status(), 200);

    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..16).map(|i| 100.0 - i as f32).collect();
    let req = json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": b},
    ]});
    for path in ["add_sub_twice", "add_sub_twice/versions/1"] {
        let r: Value =
            c.post(format!("{base}/v2/models/{path}/infer")).json(&req).send().await.unwrap().json().await.unwrap();
        let out = |n: &str| -> Vec<f64> {
            let t = r["outputs"].as_array().unwrap().iter().find(|o| o["name"] == n).unwrap_or_else(|| panic!("{r}"));
            t["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        };
        let twice = |v: &[f32]| v.iter().map(|x| 2.0 * *x as f64).collect::<Vec<_>>();
        assert_eq!((r["model_name"].clone(), r["model_version"].clone()), (json!("add_sub_twice"), json!("1")));
        assert_eq!((out("OUTPUT0"), out("OUTPUT1"), out("DOUBLE0")), (twice(&a), twice(&b), twice(&a)), "{r}");
    }
    let meta: Value = c.get(format!("{base}/v2/models/add_sub_twice")).send().await.unwrap().json().await.unwrap();
    assert_eq!((meta["platform"].clone(), meta["versions"].clone()), (json!("ensemble"), json!(["1"])), "{meta}");
    // Statistics: the ensemble's own requests, then add_sub's (three executions a request).
    let stats: Value =
        c.get(format!("{base}/v2/models/add_sub_twice/stats")).send().await.unwrap().json().await.unwrap();
    let entries = stats["model_stats"].as_array().unwrap();
    assert_eq!((entries[0]["name"].clone(), entries[0]["inference_count"].clone()), (json!("add_sub_twice"), json!(2)));
    assert_eq!(
        (entries[1]["name"].clone(), entries[1]["inference_count"].clone()),
        (json!("add_sub"), json!(6)),
        "{stats}"
    );
    // A request missing an input is refused by the ensemble, naming it.
    let bad = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a}]});
    let r = c.post(format!("{base}/v2/models/add_sub_twice/infer")).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("expects input 'INPUT1'"));

    // unload_dependents: the ensemble goes with add_sub; loading it loads add_sub again.
    let r = c
        .post(format!("{base}/v2/repository/models/add_sub/unload"))
        .json(&json!({"parameters": {"unload_dependents": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let index: Value =
        c.post(format!("{base}/v2/repository/index")).json(&json!({})).send().await.unwrap().json().await.unwrap();
    let ens = index.as_array().unwrap().iter().find(|e| e["name"] == "add_sub_twice").unwrap().clone();
    assert_eq!((ens["state"].clone(), ens["reason"].clone()), (json!("UNAVAILABLE"), json!("unloaded")), "{index}");
    let r = c.post(format!("{base}/v2/repository/models/add_sub_twice/load")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = c.post(format!("{base}/v2/models/add_sub_twice/infer")).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let index: Value =
        c.post(format!("{base}/v2/repository/index")).json(&json!({})).send().await.unwrap().json().await.unwrap();
    let ens = index.as_array().unwrap().iter().find(|e| e["name"] == "add_sub_twice").unwrap().clone();
    assert_eq!((ens["state"].clone(), ens["version"].clone()), (json!("READY"), json!("1")), "{index}");
    s.shutdown().await;
}

/// Nice values of this process's threads (Linux keeps one per thread: field 19 of each task's
/// `stat`, after the command name in parentheses).
fn thread_nices() -> Vec<i64> {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap().flatten();
    tasks.filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok()).map(|s| nice_of(&s)).collect()
}

fn nice_of(stat: &str) -> i64 {
    stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(16).unwrap().parse().unwrap()
}

/// A shadow candidate with Triton's `optimization { priority: PRIORITY_MIN }` runs every thread
/// it computes on (its instance thread and ONNX Runtime's intra-op pool, started while it loads)
/// at the lowest priority, so that its copies yield the cores to the primary; the server's own
/// threads keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_priority_candidate_computes_on_lowered_threads() {
    let (dir, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    add_text_classifier(dir.path(), "spam-fast", "spam-fast", "");
    add_text_classifier(
        dir.path(),
        "candidate",
        "spam-accurate",
        "optimization { priority: PRIORITY_MIN }\nparameters { key: \"intra_op_thread_count\" value { string_value: \"3\" } }",
    );
    std::fs::create_dir_all(dir.path().join("mirrored")).unwrap();
    std::fs::write(
        dir.path().join("mirrored/endpoint.yaml"),
        "kind: shadow\nprimary: { model: spam-fast }\nshadows:\n  - { model: candidate, share: 1.0 }\ncompare: { output: label }\n",
    )
    .unwrap();
    let own = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    let s = server(dir.path(), state.path()).await;
    assert!(own < 19, "this test runs at nice {own} already: it cannot see the candidate lowered");
    // One instance thread, and ONNX Runtime's pool of intra_op_thread_count - 1 (the caller
    // computes too); the other tests of this binary lower nothing.
    let lowered = thread_nices().into_iter().filter(|n| *n == 19).count();
    assert!(lowered >= 3, "the candidate's instance thread and 2 intra-op threads run at nice 19, got {lowered}");
    assert!(thread_nices().contains(&own), "the server's own threads keep their priority");

    let text = email();
    let a = infer(&s, "mirrored", &[], &body(&text, json!({}))).await;
    assert_eq!(a["parameters"]["sluice_model"], "spam-fast");
    let direct = infer(&s, "candidate", &[], &body(&text, json!({}))).await;
    assert_eq!(direct["model_name"], "candidate", "the lowered model still answers");
    let config: Value =
        reqwest::get(format!("http://{}/v2/models/candidate/config", s.http_addr)).await.unwrap().json().await.unwrap();
    assert_eq!(config["optimization"]["priority"], "PRIORITY_MIN");
    s.shutdown().await;
}
