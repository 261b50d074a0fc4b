//! The HTTP edge end to end: a real server in-process, real ONNX Runtime, reqwest as client.

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, ServerConfig};

fn add_sub_body(rows: usize) -> Value {
    let a: Vec<f32> = (0..16 * rows).map(|i| i as f32).collect();
    let b: Vec<f32> = vec![1.0; 16 * rows];
    json!({
        "id": "req-1",
        "inputs": [
            {"name": "INPUT0", "shape": [rows, 16], "datatype": "FP32", "data": a},
            {"name": "INPUT1", "shape": [rows, 16], "datatype": "FP32", "data": b}
        ]
    })
}

#[tokio::test]
async fn http_end_to_end() {
    let repo = standard_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", server.http_addr);
    let c = reqwest::Client::new();

    // Health and metadata. The broken model does not stop the others; readiness in mode none
    // needs every model, so the server reports not ready while `broken` cannot load.
    assert_eq!(c.get(format!("{base}/v2/health/live")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{base}/v2/health/ready")).send().await.unwrap().status(), 503);
    let meta: Value = c.get(format!("{base}/v2")).send().await.unwrap().json().await.unwrap();
    assert!(meta["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    let m: Value = c.get(format!("{base}/v2/models/add_sub")).send().await.unwrap().json().await.unwrap();
    assert_eq!(m["inputs"][0], json!({"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}));
    assert_eq!(m["versions"], json!(["1"]));
    let m: Value = c.get(format!("{base}/v2/models/strings/versions/1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(m["inputs"][0]["datatype"], "BYTES");
    assert_eq!(c.get(format!("{base}/v2/models/add_sub/ready")).send().await.unwrap().status(), 200);

    // The broken model is in the index with its reason.
    let index: Value = c.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    let broken = index.as_array().unwrap().iter().find(|e| e["name"] == "broken").unwrap();
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(broken["reason"].as_str().unwrap().contains("broken"), "{broken}");

    // JSON inference, with the id echoed and the answer computed.
    let r = c.post(format!("{base}/v2/models/add_sub/infer")).json(&add_sub_body(2)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("sluice-queue-time-us"));
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["id"], "req-1");
    assert_eq!(out["model_version"], "1");
    assert_eq!(out["outputs"][0]["name"], "OUTPUT0");
    assert_eq!(out["outputs"][0]["shape"], json!([2, 16]));
    assert_eq!(out["outputs"][0]["data"][31], json!(32.0));
    assert_eq!(out["outputs"][1]["data"][5], json!(4.0));

    // Requested subset, binary output for it, versioned path.
    let mut body = add_sub_body(1);
    body["outputs"] = json!([{"name": "OUTPUT1", "parameters": {"binary_data": true}}]);
    let r = c.post(format!("{base}/v2/models/add_sub/versions/1/infer")).json(&body).send().await.unwrap();
    let hlen: usize = r.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..hlen]).unwrap();
    assert_eq!(head["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 64);
    let vals: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[hlen..]);
    assert_eq!(vals, (0..16).map(|i| i as f32 - 1.0).collect::<Vec<_>>());

    // Binary inputs.
    let head = json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}],
        "parameters": {"binary_data_output": false}});
    let head = serde_json::to_vec(&head).unwrap();
    let mut raw = head.clone();
    raw.extend_from_slice(bytemuck::cast_slice(&[2f32; 16]));
    raw.extend_from_slice(bytemuck::cast_slice(&[3f32; 16]));
    let r = c
        .post(format!("{base}/v2/models/add_sub/infer"))
        .header("Inference-Header-Content-Length", head.len())
        .body(raw)
        .send()
        .await
        .unwrap();
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["outputs"][0]["data"][0], json!(5.0));
    assert_eq!(out["outputs"][1]["data"][0], json!(-1.0));

    // BYTES through JSON.
    let r: Value = c
        .post(format!("{base}/v2/models/strings/infer"))
        .json(&json!({"inputs": [{"name": "IN", "shape": [2, 1], "datatype": "BYTES", "data": ["héllo", "wörld"]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["outputs"][0]["data"], json!(["héllo", "wörld"]));

    // Errors name the tensor, the expected and the actual.
    let err = |status: u16, v: Value| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let r = c.post(format!("{base}/v2/models/add_sub/infer")).json(&v).send().await.unwrap();
            assert_eq!(r.status(), status);
            r.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string()
        }
    };
    let mut bad = add_sub_body(1);
    bad["inputs"][0]["shape"] = json!([2, 8]);
    let e = err(400, bad).await;
    assert!(e.contains("INPUT0") && e.contains("[-1,16]") && e.contains("[2,8]"), "{e}");
    let mut bad = add_sub_body(1);
    bad["inputs"][1] = json!({"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]});
    let e = err(400, bad).await;
    assert!(e.contains("INPUT1") && e.contains("FP32") && e.contains("INT32"), "{e}");
    let mut bad = add_sub_body(1);
    bad["inputs"].as_array_mut().unwrap().pop();
    let e = err(400, bad).await;
    assert!(e.contains("INPUT1") && e.contains("missing"), "{e}");
    let mut bad = add_sub_body(1);
    bad["inputs"][0]["data"] = json!([1, 2, 3]);
    let e = err(400, bad).await;
    assert!(e.contains("INPUT0") && e.contains("16") && e.contains("got 3"), "{e}");

    let r = c.post(format!("{base}/v2/models/add_sub/infer")).body("{\"inputs\": [").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("JSON"));
    let r = c.post(format!("{base}/v2/models/nope/infer")).json(&add_sub_body(1)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("nope"));
    let r = c.post(format!("{base}/v2/models/add_sub/versions/7/infer")).json(&add_sub_body(1)).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Statistics and metrics count what happened.
    let s: Value = c.get(format!("{base}/v2/models/add_sub/stats")).send().await.unwrap().json().await.unwrap();
    let st = &s["model_stats"][0];
    assert_eq!(st["inference_stats"]["success"]["count"], 3);
    assert_eq!(st["inference_count"], 4, "batch of 2 + two of 1");
    assert!(
        st["inference_stats"]["fail"]["count"].as_u64().unwrap() >= 3,
        "shape, datatype and missing-input failures"
    );
    let metrics = c.get(format!("http://{}/metrics", server.metrics_addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("nv_inference_request_success{model=\"add_sub\",version=\"1\"} 3"), "{metrics}");
    assert!(metrics.contains("nv_inference_request_failure{model=\"add_sub\",version=\"1\",reason=\"OTHER\"}"));
    assert!(metrics.contains("sluice_request_duration_seconds_bucket{model=\"add_sub\",version=\"1\",le=\"+Inf\"} 3"));

    // Config endpoint (perf_analyzer needs it).
    let cfg: Value = c.get(format!("{base}/v2/models/add_sub/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cfg["max_batch_size"], 8);
    assert_eq!(cfg["input"][1]["dims"], json!([16]));

    // Unload then load through the repository API.
    let r = c.post(format!("{base}/v2/repository/models/add_sub/unload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Known but unloaded: not ready (503); inference, metadata and config answer Triton's 404.
    assert_eq!(c.get(format!("{base}/v2/models/add_sub/ready")).send().await.unwrap().status(), 503);
    let r = c.post(format!("{base}/v2/models/add_sub/infer")).json(&add_sub_body(1)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"].as_str().unwrap().starts_with("Request for unknown model: 'add_sub' has no available versions"),
        "{e}"
    );
    for path in ["", "/config", "/versions/1", "/versions/1/config"] {
        let r = c.get(format!("{base}/v2/models/add_sub{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "GET /v2/models/add_sub{path}");
    }
    let r = c.post(format!("{base}/v2/repository/models/add_sub/load")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(format!("{base}/v2/models/add_sub/infer")).json(&add_sub_body(1)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(format!("{base}/v2/repository/models/missing/load")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 404);

    server.shutdown().await;
}

#[tokio::test]
async fn body_limit_answers_413() {
    let repo = standard_repo();
    let cfg = ServerConfig { max_body_bytes: 1024, ..Default::default() };
    let server = start_server(repo.path(), EngineOptions::default(), cfg).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("http://{}/v2/models/add_sub/infer", server.http_addr))
        .json(&add_sub_body(8))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("1024"), "{e}");
    server.shutdown().await;
}

#[tokio::test]
async fn raw_binary_request() {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), "id32", 1, "identity_int32.onnx", None);
    let server = start_server(dir.path(), EngineOptions::default(), ServerConfig::default()).await;
    let c = reqwest::Client::new();
    let cfg: Value =
        c.get(format!("http://{}/v2/models/id32/config", server.http_addr)).send().await.unwrap().json().await.unwrap();
    let r = c
        .post(format!("http://{}/v2/models/id32/infer", server.http_addr))
        .header("Inference-Header-Content-Length", "0")
        .body(bytemuck::cast_slice::<i32, u8>(&[7, 8]).to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let hlen: Option<usize> =
        r.headers().get("inference-header-content-length").map(|v| v.to_str().unwrap().parse().unwrap());
    let bytes = r.bytes().await.unwrap();
    assert_eq!(status, 200, "{cfg} {}", String::from_utf8_lossy(&bytes));
    let hlen = hlen.unwrap();
    let vals: Vec<i32> = bytemuck::pod_collect_to_vec(&bytes[hlen..]);
    assert_eq!(vals, vec![7, 8]);
    server.shutdown().await;
}

#[tokio::test]
async fn explicit_mode_loads_only_named_models() {
    let repo = standard_repo();
    let opts = EngineOptions {
        control_mode: sluice_repository::ControlMode::Explicit,
        load_models: vec!["add_sub".into()],
        ..Default::default()
    };
    let server = start_server(repo.path(), opts, ServerConfig::default()).await;
    let c = reqwest::Client::new();
    let base = format!("http://{}", server.http_addr);
    assert_eq!(c.get(format!("{base}/v2/health/ready")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{base}/v2/models/strings/ready")).send().await.unwrap().status(), 503);
    let index: Value = c
        .post(format!("{base}/v2/repository/index"))
        .json(&json!({"ready": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index.as_array().unwrap().len(), 1);
    assert_eq!(index[0]["name"], "add_sub");
    server.shutdown().await;
}

#[tokio::test]
async fn poll_mode_follows_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(ADD_SUB_CONFIG));
    let opts = EngineOptions { control_mode: sluice_repository::ControlMode::Poll, ..Default::default() };
    let server = start_server(dir.path(), opts, ServerConfig::default()).await;
    let repo = server.engine.repository().clone();
    let c = reqwest::Client::new();
    let base = format!("http://{}", server.http_addr);
    let config = |m: &'static str| {
        let (c, base) = (c.clone(), base.clone());
        async move { c.get(format!("{base}/v2/models/{m}/config")).send().await.unwrap().json::<Value>().await.unwrap() }
    };

    // An added model is loaded.
    add_model(dir.path(), "strings", 1, "identity_string.onnx", None);
    repo.poll().await;
    assert_eq!(c.get(format!("{base}/v2/models/strings/ready")).send().await.unwrap().status(), 200);

    // A changed config is reloaded; a new version takes over.
    std::fs::write(
        dir.path().join("add_sub/config.pbtxt"),
        ADD_SUB_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4"),
    )
    .unwrap();
    add_model(dir.path(), "add_sub", 2, "add_sub.onnx", None);
    repo.poll().await;
    assert_eq!(config("add_sub").await["max_batch_size"], 4);
    let m: Value = c.get(format!("{base}/v2/models/add_sub")).send().await.unwrap().json().await.unwrap();
    assert_eq!(m["versions"], json!(["2"]));

    // A broken reload keeps the old version serving, and the index says why.
    std::fs::write(dir.path().join("add_sub/config.pbtxt"), "max_batch_size: {").unwrap();
    repo.poll().await;
    assert_eq!(config("add_sub").await["max_batch_size"], 4);
    let index: Value = c.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    let e = index.as_array().unwrap().iter().find(|e| e["name"] == "add_sub").unwrap();
    assert_eq!(e["state"], "READY");
    assert!(e["reason"].as_str().unwrap().contains("reload failed"), "{e}");

    // A removed model is unloaded, and no repository holds it any more: unknown (400).
    std::fs::remove_dir_all(dir.path().join("strings")).unwrap();
    repo.poll().await;
    assert_eq!(c.get(format!("{base}/v2/models/strings/ready")).send().await.unwrap().status(), 400);
    server.shutdown().await;
}

#[tokio::test]
async fn loading_an_unknown_model_leaves_no_record() {
    let repo = standard_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let c = reqwest::Client::new();
    let base = format!("http://{}", server.http_addr);
    let r = c.post(format!("{base}/v2/repository/models/ghost/load")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let index: Value = c.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    assert!(!index.as_array().unwrap().iter().any(|e| e["name"] == "ghost"), "{index}");
    let r = c.post(format!("{base}/v2/repository/models/ghost/unload")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    server.shutdown().await;
}

/// Writes `head` and `body` on a fresh connection and reads until the server closes it or a
/// guard of 20 s passes (the guard only keeps a broken server from hanging the suite).
async fn raw_exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), read).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn declared_oversize_body_is_refused_before_reading() {
    let repo = standard_repo();
    let cfg = ServerConfig { max_body_bytes: 1024, ..Default::default() };
    let server = start_server(repo.path(), EngineOptions::default(), cfg).await;
    let addr = server.http_addr;

    // A terabyte declared, two bytes sent: 413 at once, and the connection closed (without the
    // early answer this read would wait for the rest of the body until the guard).
    let head = "POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 1099511627776\r\n\r\n";
    let out = raw_exchange(addr, head, b"{}").await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("1099511627776 bytes") && out.contains("1024"), "{out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");

    // No declared length (chunked): cut off at the limit as it arrives.
    let head = "POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n";
    let chunk = "a".repeat(2000);
    let body = format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len());
    let out = raw_exchange(addr, head, body.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    // More bytes than declared: the declared two are the body (a bad request for this model),
    // and what follows is no request at all.
    let head = "POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n";
    let out = raw_exchange(addr, head, b"{}{\"inputs\": []}").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    server.shutdown().await;
}

#[tokio::test]
async fn readiness_of_unknown_and_unloaded_models() {
    let repo = standard_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", server.http_addr);
    let c = reqwest::Client::new();

    // Unknown: Triton's 400 with an error, not a 5xx.
    for path in ["/v2/models/nope/ready", "/v2/models/nope/versions/1/ready"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains("unknown model: 'nope'"), "{e}");
    }
    // In the repository but failed to load: exists, not ready.
    let r = c.get(format!("{base}/v2/models/broken/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"name": "broken", "ready": false}));
    // Inference on it is Triton's 404, naming the model.
    let r = c.post(format!("{base}/v2/models/broken/infer")).json(&add_sub_body(1)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("'broken' has no available versions"), "{e}");
    server.shutdown().await;
}
