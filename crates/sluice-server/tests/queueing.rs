//! Queueing behaviour end to end, with a model whose cost the request chooses (`slow.onnx`):
//! a client that goes away before its request runs is never computed, a full queue answers
//! 429 / RESOURCE_EXHAUSTED, and a queued request times out on time.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sluice_server::grpc::pb;
use sluice_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_server::{EngineOptions, RunningServer, ServerConfig};

/// Big enough to keep the only instance busy for a good while (about 2^37 flops).
const SLOW: i64 = 4000;

fn body(n: i64, timeout_us: Option<u64>) -> Value {
    let mut b = json!({"inputs": [{"name": "N", "shape": [1], "datatype": "INT64", "data": [n]}]});
    if let Some(t) = timeout_us {
        b["parameters"] = json!({ "timeout": t });
    }
    b
}

async fn stats(server: &RunningServer) -> Value {
    let url = format!("http://{}/v2/models/slow/stats", server.http_addr);
    reqwest::get(url).await.unwrap().json::<Value>().await.unwrap()["model_stats"][0].clone()
}

async fn canceled_metric(server: &RunningServer) -> String {
    let m = reqwest::get(format!("http://{}/metrics", server.metrics_addr)).await.unwrap().text().await.unwrap();
    m.lines()
        .find(|l| l.starts_with("nv_inference_request_failure{model=\"slow\"") && l.contains("CANCELED"))
        .unwrap()
        .to_string()
}

fn grpc_request(n: i64) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "slow".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "N".into(),
            datatype: "INT64".into(),
            shape: vec![1],
            contents: Some(pb::InferTensorContents { int64_contents: vec![n], ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn infer_url(server: &RunningServer) -> String {
    format!("http://{}/v2/models/slow/infer", server.http_addr)
}

/// Starts a long request and returns once it is executing (nothing pending any more).
async fn occupy(server: &RunningServer) -> tokio::task::JoinHandle<reqwest::StatusCode> {
    let url = infer_url(server);
    let busy =
        tokio::spawn(
            async move { reqwest::Client::new().post(url).json(&body(SLOW, None)).send().await.unwrap().status() },
        );
    let metrics = format!("http://{}/metrics", server.metrics_addr);
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let m = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if m.contains("sluice_inference_executing_count{model=\"slow\",version=\"1\"} 1") {
            return busy;
        }
        assert!(!busy.is_finished(), "the long request ended before it was seen executing");
    }
}

#[tokio::test]
async fn http_client_that_disconnects_is_never_computed() {
    let repo = slow_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let busy = occupy(&server).await;
    // This client gives up while its request waits behind the busy one.
    let quitter = reqwest::Client::builder().timeout(Duration::from_millis(150)).build().unwrap();
    let r = quitter.post(infer_url(&server)).json(&body(SLOW, None)).send().await;
    assert!(r.is_err(), "the client timed out");
    assert!(!busy.is_finished(), "the quitter left while the first request was still running");
    assert_eq!(busy.await.unwrap(), 200);
    // A later request runs normally; the abandoned one never did.
    let r = reqwest::Client::new().post(infer_url(&server)).json(&body(10, None)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let s = stats(&server).await;
    assert_eq!(s["execution_count"], 2, "{s}");
    assert!(canceled_metric(&server).await.ends_with(" 1"), "{}", canceled_metric(&server).await);
    server.shutdown().await;
}

#[tokio::test]
async fn grpc_cancel_drops_the_queued_request() {
    let repo = slow_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let busy = occupy(&server).await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc_addr)).await.unwrap();
    let req = grpc_request(SLOW);
    // Dropping the call future resets the HTTP/2 stream: the client cancelled.
    let r = tokio::time::timeout(Duration::from_millis(150), client.model_infer(req)).await;
    assert!(r.is_err(), "the call was cancelled before an answer");
    assert!(!busy.is_finished());
    assert_eq!(busy.await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(stats(&server).await["execution_count"], 1);
    assert!(canceled_metric(&server).await.ends_with(" 1"), "{}", canceled_metric(&server).await);
    server.shutdown().await;
}

#[tokio::test]
async fn full_queue_answers_429_and_resource_exhausted() {
    let repo = slow_repo();
    let opts = EngineOptions { queue_capacity: 1, ..Default::default() };
    let server = start_server(repo.path(), opts, ServerConfig::default()).await;
    let busy = occupy(&server).await;
    let c = reqwest::Client::new();
    let queued = tokio::spawn({
        let (c, url) = (c.clone(), infer_url(&server));
        async move { c.post(url).json(&body(10, None)).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = c.post(infer_url(&server)).json(&body(10, None)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("full"), "{e}");

    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc_addr)).await.unwrap();
    let req = grpc_request(10);
    let status = client.model_infer(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(!busy.is_finished(), "the queue was full because the first request still ran");
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(queued.await.unwrap(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn queued_request_times_out_on_time() {
    let repo = slow_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let busy = occupy(&server).await;
    let r = reqwest::Client::new().post(infer_url(&server)).json(&body(10, Some(50_000))).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("timed out"), "{e}");
    // Answered at its timeout, while the long request is still executing.
    assert!(!busy.is_finished(), "the timeout was answered only after the running request");
    assert_eq!(busy.await.unwrap(), 200);
    let s = stats(&server).await;
    assert_eq!(s["execution_count"], 1, "the timed-out request never ran: {s}");
    let m = reqwest::get(format!("http://{}/metrics", server.metrics_addr)).await.unwrap().text().await.unwrap();
    assert!(m.contains("nv_inference_request_failure{model=\"slow\",version=\"1\",reason=\"REJECTED\"} 1"), "{m}");
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_are_batched_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let config = ADD_SUB_CONFIG.to_string() + "dynamic_batching { max_queue_delay_microseconds: 20000 }\n";
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(&config));
    let server = start_server(dir.path(), EngineOptions::default(), ServerConfig::default()).await;
    let url = format!("http://{}/v2/models/add_sub/infer", server.http_addr);
    let c = reqwest::Client::new();
    let http: Vec<_> = (0..12)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let a: Vec<f32> = (0..16).map(|j| (i * 100 + j) as f32).collect();
                let b = json!({"inputs": [
                    {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
                    {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0; 16]}]});
                let out: Value = c.post(url).json(&b).send().await.unwrap().json().await.unwrap();
                (i, out)
            })
        })
        .collect();
    let grpc: Vec<_> = (0..12)
        .map(|i| {
            let addr = server.grpc_addr;
            tokio::spawn(async move {
                let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.unwrap();
                let input = |name: &str, v: Vec<f32>| pb::model_infer_request::InferInputTensor {
                    name: name.into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 16],
                    contents: Some(pb::InferTensorContents { fp32_contents: v, ..Default::default() }),
                    ..Default::default()
                };
                let a: Vec<f32> = (0..16).map(|j| (i * 1000 + j) as f32).collect();
                let req = pb::ModelInferRequest {
                    model_name: "add_sub".into(),
                    inputs: vec![input("INPUT0", a), input("INPUT1", vec![2.0; 16])],
                    ..Default::default()
                };
                (i, client.model_infer(req).await.unwrap().into_inner())
            })
        })
        .collect();
    for h in http {
        let (i, out) = h.await.unwrap();
        assert_eq!(out["outputs"][0]["data"][3], json!((i * 100 + 3) as f64 + 1.0), "{out}");
        assert_eq!(out["outputs"][1]["shape"], json!([1, 16]));
    }
    for h in grpc {
        let (i, out) = h.await.unwrap();
        let o0: Vec<f32> = bytemuck::pod_collect_to_vec(&out.raw_output_contents[0]);
        assert_eq!(o0[5], (i * 1000 + 5) as f32 + 2.0);
    }
    let s: Value = reqwest::get(format!("http://{}/v2/models/add_sub/stats", server.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let st = &s["model_stats"][0];
    assert_eq!(st["inference_count"], 24);
    let execs = st["execution_count"].as_u64().unwrap();
    assert!(execs < 24, "24 concurrent requests ran in {execs} executions");
    let sizes: Vec<u64> =
        st["batch_stats"].as_array().unwrap().iter().map(|b| b["batch_size"].as_u64().unwrap()).collect();
    assert!(sizes.iter().any(|&b| b > 1), "batch sizes seen: {sizes:?}");
    let m = reqwest::get(format!("http://{}/metrics", server.metrics_addr)).await.unwrap().text().await.unwrap();
    let count = format!("sluice_batch_size_count{{model=\"add_sub\",version=\"1\"}} {execs}");
    let sum = "sluice_batch_size_sum{model=\"add_sub\",version=\"1\"} 24";
    assert!(m.contains(&count) && m.contains(sum), "{m}");
    server.shutdown().await;
}
