//! Model lifecycle end to end: warmup before a version takes traffic (and a failing warmup that
//! fails the load or keeps the old version serving), reloads under a steady load that lose no
//! request and answer none with an error, an unload that waits for in-flight requests, and a
//! shutdown that drains: not ready at once, still answering for the drain delay.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_repository::ControlMode;
use sluice_server::{EngineOptions, RunningServer, ServerConfig};

/// add_sub with two instances and two warmup samples: zeros (batch 2, three times) and a file.
const WARM_CONFIG: &str = r#"
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [
  { name: "zeros" batch_size: 2 count: 3
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
    inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 16 ] random_data: true } } },
  { name: "from file"
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] input_data_file: "input0.bin" } }
    inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } }
]
"#;

fn write_warmup_file(model_dir: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(model_dir.join("warmup")).unwrap();
    std::fs::write(model_dir.join("warmup/input0.bin"), bytes).unwrap();
}

fn good_warmup_file() -> Vec<u8> {
    bytemuck::cast_slice(&[1.5f32; 16]).to_vec()
}

async fn index(c: &reqwest::Client, base: &str) -> Vec<Value> {
    c.post(format!("{base}/v2/repository/index"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

async fn stats(c: &reqwest::Client, base: &str, model: &str) -> Value {
    let s: Value = c.get(format!("{base}/v2/models/{model}/stats")).send().await.unwrap().json().await.unwrap();
    s["model_stats"][0].clone()
}

fn add_sub_request(seed: u32) -> (Value, Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..16).map(|j| (seed % 1000) as f32 + j as f32).collect();
    let b: Vec<f32> = (0..16).map(|j| (j * (seed % 7)) as f32).collect();
    let body = json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": b}]});
    let sum = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let diff = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    (body, sum, diff)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[tokio::test]
async fn warmup_runs_on_every_instance_before_ready_and_stays_out_of_statistics() {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(&(ADD_SUB_CONFIG.to_string() + WARM_CONFIG)));
    write_warmup_file(&dir.path().join("add_sub"), &good_warmup_file());
    // The same model whose warmup file is 10 bytes short of one row.
    let bad_config = ADD_SUB_CONFIG.replace("\"add_sub\"", "\"bad_warmup\"") + WARM_CONFIG;
    add_model(dir.path(), "bad_warmup", 1, "add_sub.onnx", Some(&bad_config));
    write_warmup_file(&dir.path().join("bad_warmup"), &[0u8; 54]);
    let server = start_server(dir.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", server.http_addr);
    let c = reqwest::Client::new();

    let entries = index(&c, &base).await;
    let bad = entries.iter().find(|e| e["name"] == "bad_warmup").unwrap();
    assert_eq!(bad["state"], "UNAVAILABLE", "{bad}");
    let reason = bad["reason"].as_str().unwrap();
    for part in ["warmup sample 'from file'", "input 'INPUT0'", "input0.bin", "54 bytes", "64 bytes"] {
        assert!(reason.contains(part), "the reason '{reason}' does not mention {part}");
    }
    assert_eq!(c.get(format!("{base}/v2/models/bad_warmup/ready")).send().await.unwrap().status(), 503);

    // Warmed: (3 + 1) executions on each of 2 instances, none of them in the statistics.
    let good = entries.iter().find(|e| e["name"] == "add_sub").unwrap();
    assert_eq!(good["state"], "READY", "{good}");
    let served = server.engine.repository().get("add_sub", None).unwrap();
    assert_eq!((served.warmup.samples, served.warmup.executions), (2, 8));
    let s = stats(&c, &base, "add_sub").await;
    assert_eq!((s["inference_count"].as_u64(), s["execution_count"].as_u64()), (Some(0), Some(0)), "{s}");
    let (body, sum, _) = add_sub_request(3);
    let out: Value =
        c.post(format!("{base}/v2/models/add_sub/infer")).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(floats(&out["outputs"][0]["data"]), sum);
    let s = stats(&c, &base, "add_sub").await;
    assert_eq!((s["inference_count"].as_u64(), s["execution_count"].as_u64()), (Some(1), Some(1)), "{s}");

    // A reload whose warmup fails keeps the old version serving, and the index says why.
    write_warmup_file(&dir.path().join("add_sub"), b"short");
    let r = c.post(format!("{base}/v2/repository/models/add_sub/load")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("warmup sample 'from file' input 'INPUT0'"), "{e}");
    let entries = index(&c, &base).await;
    let good = entries.iter().find(|e| e["name"] == "add_sub").unwrap();
    assert_eq!(good["state"], "READY", "{good}");
    let reason = good["reason"].as_str().unwrap();
    assert!(reason.contains("previous version kept serving") && reason.contains("warmup sample"), "{reason}");
    let r = c.post(format!("{base}/v2/models/add_sub/infer")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(Arc::ptr_eq(&served, &server.engine.repository().get("add_sub", None).unwrap()));
    server.shutdown().await;
}

/// Replaces add_sub in every way the repository allows while four clients keep calling it.
#[tokio::test]
async fn reload_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("add_sub");
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(ADD_SUB_CONFIG));
    let opts = EngineOptions {
        control_mode: ControlMode::Poll,
        poll_interval: Duration::from_secs(3600), // the test polls itself
        ..Default::default()
    };
    let server = start_server(dir.path(), opts, ServerConfig::default()).await;
    let base = format!("http://{}", server.http_addr);
    let c = reqwest::Client::new();
    let repo = server.engine.repository().clone();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u32)
        .map(|client| {
            let (c, url, stop) = (c.clone(), format!("{base}/v2/models/add_sub/infer"), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failures, mut versions) = (0u64, Vec::new(), BTreeSet::new());
                let mut seed = client * 10_000;
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    let (body, sum, diff) = add_sub_request(seed);
                    let r = c.post(&url).json(&body).send().await.unwrap();
                    let status = r.status();
                    let out: Value = r.json().await.unwrap();
                    if status != 200 {
                        failures.push(format!("{status}: {out}"));
                        continue;
                    }
                    assert_eq!(floats(&out["outputs"][0]["data"]), sum, "OUTPUT0 of {out}");
                    assert_eq!(floats(&out["outputs"][1]["data"]), diff, "OUTPUT1 of {out}");
                    versions.insert(out["model_version"].as_str().unwrap().to_string());
                    ok += 1;
                }
                (ok, failures, versions)
            })
        })
        .collect();

    let started = Instant::now();
    let settle = || tokio::time::sleep(Duration::from_millis(150));
    let load = |body: Value| {
        let c = c.clone();
        let url = format!("{base}/v2/repository/models/add_sub/load");
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    let mut reloads = 0;
    let mut version = 1;
    for round in 0..3 {
        if started.elapsed() > Duration::from_secs(40) {
            break;
        }
        settle().await;
        // A new version, picked up by poll (the old one is unloaded: latest policy).
        version += 1;
        add_model(dir.path(), "add_sub", version, "add_sub.onnx", None);
        repo.poll().await;
        assert_eq!(repo.get("add_sub", None).unwrap().version, version);
        reloads += 1;
        settle().await;
        // A changed config, picked up by poll.
        let extra = format!(
            "instance_group [ {{ count: {} }} ]\ndynamic_batching {{ max_queue_delay_microseconds: {} }}\n",
            1 + round % 2,
            100 * (round + 1)
        );
        std::fs::write(model_dir.join("config.pbtxt"), ADD_SUB_CONFIG.to_string() + &extra).unwrap();
        let before = repo.get("add_sub", None).unwrap();
        repo.poll().await;
        assert!(!Arc::ptr_eq(&before, &repo.get("add_sub", None).unwrap()), "the config change was not loaded");
        reloads += 1;
        settle().await;
        // Explicit loads: from the repository, then with a config override (JSON).
        load(json!({})).await;
        reloads += 1;
        settle().await;
        let config = json!({"name": "add_sub", "platform": "onnxruntime_onnx", "max_batch_size": 4,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]},
                      {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [16]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]},
                       {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [16]}]});
        load(json!({"parameters": {"config": config.to_string()}})).await;
        reloads += 1;
    }
    settle().await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failures, mut versions) = (0, Vec::new(), BTreeSet::new());
    for h in clients {
        let (o, f, v) = h.await.unwrap();
        ok += o;
        failures.extend(f);
        versions.extend(v);
    }
    assert!(failures.is_empty(), "{} of {} requests failed over {reloads} reloads: {:?}", failures.len(), ok, failures);
    assert!(reloads >= 4, "only {reloads} reloads in the time allowed");
    assert!(ok >= 100, "only {ok} requests over {reloads} reloads");
    assert!(versions.len() >= 2, "the served version never changed: {versions:?}");
    assert!(versions.contains(&version.to_string()), "{versions:?} lacks the last version {version}");
    let meta: Value = c.get(format!("{base}/v2/models/add_sub")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["versions"], json!([version.to_string()]));
    println!("{ok} requests, none failed, over {reloads} reloads; versions served: {versions:?}");
    server.shutdown().await;
}

async fn executing(server: &RunningServer) -> bool {
    let m = reqwest::get(format!("http://{}/metrics", server.metrics_addr)).await.unwrap().text().await.unwrap();
    m.contains("sluice_inference_executing_count{model=\"slow\",version=\"1\"} 1")
}

#[tokio::test]
async fn unload_waits_for_in_flight_requests() {
    let repo = slow_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", server.http_addr);
    let c = reqwest::Client::new();
    let send = |n: i64| {
        let (c, url) = (c.clone(), format!("{base}/v2/models/slow/infer"));
        tokio::spawn(async move {
            let body = json!({"inputs": [{"name": "N", "shape": [1], "datatype": "INT64", "data": [n]}]});
            let r = c.post(url).json(&body).send().await.unwrap();
            let status = r.status();
            let out = r.json::<Value>().await.unwrap();
            (status, out, Instant::now())
        })
    };
    // One request executing (tens of GFLOP: a second or more), one queued behind it.
    let running = send(3000);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !executing(&server).await {
        assert!(Instant::now() < deadline && !running.is_finished(), "the request was never seen executing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = send(10);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let began = Instant::now();
    let unload = c.post(format!("{base}/v2/repository/models/slow/unload")).send().await.unwrap();
    assert_eq!(unload.status(), 200);
    let unloaded = Instant::now();
    let (status, out, running_done) = running.await.unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outputs"][0]["shape"], json!([1]));
    let (status, out, queued_done) = queued.await.unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outputs"][0]["data"], json!([1000.0]));
    // The unload answered after both (a little slack for the clients to read their answers).
    let slack = Duration::from_millis(100);
    assert!(running_done > began, "the long request ended before the unload began");
    assert!(running_done <= unloaded + slack && queued_done <= unloaded + slack, "unload did not wait");
    // Afterwards the model is gone: Triton's 404, not a 5xx that reads as a broken server.
    let (status, out, _) = send(10).await.unwrap();
    assert_eq!(status, 404, "{out}");
    server.shutdown().await;
}

/// The narrow case behind the retry in the model-version endpoint's `infer`: a request that looked up the old
/// version just before a reload swapped it out, and queues after the old runner closed. Many
/// callers in tight loops on the engine itself (no HTTP) make the window likely to be hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_racing_a_swap_are_retried_on_the_new_version() {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(ADD_SUB_CONFIG));
    let server = start_server(dir.path(), EngineOptions::default(), ServerConfig::default()).await;
    let engine = server.engine.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (engine, stop) = (engine.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let t = |name: &str| sluice_types::Tensor::from_vec(name, vec![1, 16], vec![1f32; 16]);
                    let req = sluice_types::InferRequest {
                        model: "add_sub".into(),
                        inputs: vec![t("INPUT0"), t("INPUT1")],
                        ..Default::default()
                    };
                    let ctx = sluice_types::RequestContext::new("race");
                    let answer = match engine.resolve("add_sub", None) {
                        Ok(endpoint) => endpoint.infer(&ctx, req).await,
                        Err(e) => Err(e),
                    };
                    match answer {
                        Ok(_) => ok += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    const RELOADS: usize = 100;
    for _ in 0..RELOADS {
        tokio::time::sleep(Duration::from_millis(5)).await;
        engine.load_model("add_sub", None).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors) = (0, Vec::new());
    for c in callers {
        let (o, e) = c.await.unwrap();
        ok += o;
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} of {} requests failed over {RELOADS} reloads: {:?}",
        errors.len(),
        ok,
        &errors[..3.min(errors.len())]
    );
    println!("{ok} requests over {RELOADS} reloads, none failed");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_goes_unready_at_once_and_keeps_answering_through_the_drain_delay() {
    let dir = standard_repo();
    let delay = Duration::from_millis(1500);
    let s =
        start_server(dir.path(), EngineOptions::default(), ServerConfig { drain_delay: delay, ..Default::default() })
            .await;
    let base = format!("http://{}", s.http_addr);
    // A fresh connection for every request, as a load balancer's new connections would be: a
    // listener that stopped accepting would show as "connection refused".
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let body = json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0f32; 16]},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0f32; 16]},
    ]});
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (c, base, body, stop) = (c.clone(), base.clone(), body.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let r = c.post(format!("{base}/v2/models/add_sub/infer")).json(&body).send().await;
                    sent.push((at, r.map(|r| r.status().as_u16()).map_err(|e| e.to_string())));
                }
                sent
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    let shutdown = tokio::spawn(s.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = c.get(format!("{base}/v2/health/ready")).send().await.unwrap().status();
    assert_eq!(ready, 503, "not ready from the start of the drain");
    shutdown.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut during = 0;
    for client in clients {
        for (at, result) in client.await.unwrap() {
            // Requests sent before the delay ran out (less a margin for the last ones in flight).
            if at < began + delay - Duration::from_millis(100) {
                assert_eq!(result, Ok(200), "a request sent during the drain delay failed");
                during += u64::from(at >= began);
            }
        }
    }
    assert!(during > 10, "the clients kept sending through the drain: {during} requests");
}
