//! Asynchronous jobs end to end over HTTP on the embedded store: submit, poll, result;
//! idempotency; cancel; expiry; clear 400s; a signed webhook retried until it is accepted.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::*;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, JobsOptions, RunningServer, ServerConfig};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn add_sub_body(offset: f32) -> Value {
    let a: Vec<f32> = (0..16).map(|i| i as f32 + offset).collect();
    json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0f32; 16]}]})
}

async fn server_with(workers: usize, state: &std::path::Path, allow: &[&str]) -> (tempfile::TempDir, RunningServer) {
    let repo = standard_repo();
    let jobs = JobsOptions {
        workers,
        webhook_secret: Some(SECRET.into()),
        webhook_allow: allow.iter().map(|s| s.to_string()).collect(),
        webhook_backoff: Duration::from_millis(20),
        ..JobsOptions::new(state.to_path_buf())
    };
    let server =
        start_server(repo.path(), EngineOptions::default(), ServerConfig { jobs: Some(jobs), ..Default::default() })
            .await;
    (repo, server)
}

fn url(s: &RunningServer, path: &str) -> String {
    format!("http://{}{path}", s.http_addr)
}

async fn submit(s: &RunningServer, model: &str, body: &Value, key: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    let mut req = reqwest::Client::new().post(url(s, &format!("/v2/models/{model}/jobs"))).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (StatusCode::from_u16(status.as_u16()).unwrap(), convert(headers), resp.json().await.unwrap())
}

fn convert(h: reqwest::header::HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in h.iter() {
        out.insert(
            axum::http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
            axum::http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    out
}

async fn get(s: &RunningServer, id: &str) -> (u16, Value) {
    let resp = reqwest::get(url(s, &format!("/v2/jobs/{id}"))).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn wait_final(s: &RunningServer, id: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = get(s, id).await;
        assert_eq!(code, 200, "{v}");
        if ["completed", "failed", "cancelled"].contains(&v["status"].as_str().unwrap()) {
            return v;
        }
        assert!(Instant::now() < end, "job {id} did not end: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_and_its_result_can_be_polled() {
    let state = tempfile::tempdir().unwrap();
    let (_repo, s) = server_with(2, state.path(), &[]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (code, headers, body) = submit(&s, "add_sub", &add_sub_body(i as f32), None).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        assert_eq!(body["poll_url"], format!("/v2/jobs/{id}"));
        assert_eq!(headers["location"], format!("/v2/jobs/{id}"));
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate() {
        let v = wait_final(&s, id).await;
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["attempts"], 1);
        let out0 = &v["result"]["outputs"][0];
        assert_eq!(out0["name"], "OUTPUT0");
        let expected: Vec<f32> = (0..16).map(|k| k as f32 + i as f32 + 1.0).collect();
        assert_eq!(serde_json::from_value::<Vec<f32>>(out0["data"].clone()).unwrap(), expected);
        assert!(v["finished_at"].as_str().is_some() && v["expires_at"].as_str().is_some(), "{v}");
    }
    let list: Value =
        reqwest::get(url(&s, "/v2/jobs?model=add_sub&status=completed&limit=5")).await.unwrap().json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 5);
    assert!(list["jobs"][0].get("result").is_none(), "listings leave results out");
    let m = reqwest::get(format!("http://{}/metrics", s.metrics_addr)).await.unwrap().text().await.unwrap();
    assert!(m.contains("sluice_jobs_ended_total{model=\"add_sub\",status=\"completed\"} 10"), "{m}");
    assert!(m.contains("sluice_job_wait_seconds_count 10"), "{m}");
    s.shutdown().await;
}

#[tokio::test]
async fn pending_jobs_idempotency_and_cancel() {
    let state = tempfile::tempdir().unwrap();
    // No workers: jobs stay queued.
    let (_repo, s) = server_with(0, state.path(), &[]).await;
    let (code, _, first) = submit(&s, "add_sub", &add_sub_body(0.0), Some("order-17")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let (code, _, again) = submit(&s, "add_sub", &add_sub_body(5.0), Some("order-17")).await;
    assert_eq!(code, StatusCode::OK, "a repeated key answers the first job");
    assert_eq!(again["job_id"], first["job_id"]);
    let id = first["job_id"].as_str().unwrap();

    let resp = reqwest::get(url(&s, &format!("/v2/jobs/{id}"))).await.unwrap();
    assert!(resp.headers().get("retry-after").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "queued");
    assert!(v["retry_after_ms"].as_u64().unwrap() >= 200);
    let m = reqwest::get(format!("http://{}/metrics", s.metrics_addr)).await.unwrap().text().await.unwrap();
    assert!(m.contains("sluice_jobs_queued{model=\"add_sub\"} 1"), "{m}");

    let client = reqwest::Client::new();
    let resp = client.delete(url(&s, &format!("/v2/jobs/{id}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "cancelled");
    let resp = client.delete(url(&s, &format!("/v2/jobs/{id}"))).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    assert!(resp.text().await.unwrap().contains("already ended"));
    let m = reqwest::get(format!("http://{}/metrics", s.metrics_addr)).await.unwrap().text().await.unwrap();
    assert!(m.contains("sluice_jobs_queued{model=\"add_sub\"} 0"), "{m}");
    let (code, v) = get(&s, "0000nosuchjob").await;
    assert_eq!(code, 404, "{v}");
    s.shutdown().await;
}

#[tokio::test]
async fn bad_job_requests_are_clear_400s() {
    let state = tempfile::tempdir().unwrap();
    let (_repo, s) = server_with(0, state.path(), &[]).await;
    let client = reqwest::Client::new();
    let post = |model: &str, body: String| {
        client
            .post(url(&s, &format!("/v2/models/{model}/jobs")))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("add_sub", "{not json".into(), 400, "parse"),
        ("nosuch", add_sub_body(0.0).to_string(), 404, "nosuch"),
        (
            "add_sub",
            json!({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).to_string(),
            400,
            "INPUT0",
        ),
        ("add_sub", with(add_sub_body(0.0), "ttl_seconds", json!(0)), 400, "ttl_seconds"),
        ("add_sub", with(add_sub_body(0.0), "priority", json!(0)), 400, "priority"),
        ("add_sub", with(add_sub_body(0.0), "priority", json!("high")), 400, "priority"),
        ("add_sub", with(add_sub_body(0.0), "callback_url", json!("http://127.0.0.1:9/hook")), 400, "--webhook-allow"),
        ("add_sub", with(add_sub_body(0.0), "callback_url", json!("not a url")), 400, "callback_url"),
    ];
    for (model, body, code, needle) in cases {
        let resp = post(model, body.clone()).await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, code, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text} should mention {needle}");
    }
    let resp = reqwest::get(url(&s, "/v2/jobs?status=done")).await.unwrap();
    assert_eq!(resp.status(), 400);
    s.shutdown().await;
}

fn with(mut body: Value, key: &str, value: Value) -> String {
    body[key] = value;
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_their_ttl() {
    let state = tempfile::tempdir().unwrap();
    let (_repo, s) = server_with(1, state.path(), &[]).await;
    let body: Value = serde_json::from_str(&with(add_sub_body(0.0), "ttl_seconds", json!(1))).unwrap();
    let (_, _, job) = submit(&s, "add_sub", &body, None).await;
    let id = job["job_id"].as_str().unwrap();
    assert_eq!(wait_final(&s, id).await["status"], "completed");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, v) = get(&s, id).await;
    assert_eq!(code, 404);
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_signed_retried_on_5xx_and_recorded() {
    // The receiver checks each signature, fails twice with 500, then accepts.
    let seen: Arc<Mutex<Vec<(bool, Value)>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let signer = sluice_jobs::Signer::from_secret(SECRET).unwrap();
                    let id = headers["webhook-id"].to_str().unwrap();
                    let ts: u64 = headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
                    let valid = headers["webhook-signature"].to_str().unwrap() == signer.sign(id, ts, &body);
                    let mut seen = seen.lock();
                    seen.push((valid, serde_json::from_slice(&body).unwrap()));
                    if seen.len() <= 2 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let state = tempfile::tempdir().unwrap();
    let (_repo, s) = server_with(1, state.path(), &["127.0.0.1"]).await;
    let body: Value = serde_json::from_str(&with(add_sub_body(0.0), "callback_url", json!(hook))).unwrap();
    let (code, _, job) = submit(&s, "add_sub", &body, None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{job}");
    let id = job["job_id"].as_str().unwrap();
    assert_eq!(wait_final(&s, id).await["status"], "completed");
    let end = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (_, v) = get(&s, id).await;
        if v["webhook"]["pending"] == false {
            break v;
        }
        assert!(Instant::now() < end, "webhook still pending: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deliveries = v["webhook"]["deliveries"].as_array().unwrap();
    let codes: Vec<u64> = deliveries.iter().map(|d| d["status"].as_u64().unwrap()).collect();
    assert_eq!(codes, vec![500, 500, 200], "{v}");
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 3, "delivered once more after the two failures, then never again");
    assert!(seen.iter().all(|(valid, _)| *valid), "every delivery carries a valid signature");
    assert_eq!(seen[2].1["job_id"], id);
    assert_eq!(seen[2].1["status"], "completed");
    assert!(seen[2].1["result"]["outputs"].is_array());
    let m = reqwest::get(format!("http://{}/metrics", s.metrics_addr)).await.unwrap().text().await.unwrap();
    assert!(m.contains("sluice_webhook_deliveries_total{outcome=\"delivered\"} 1"), "{m}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_can_be_submitted_with_binary_tensors() {
    let state = tempfile::tempdir().unwrap();
    let (_repo, s) = server_with(1, state.path(), &[]).await;
    let head = json!({
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}],
        "ttl_seconds": 120
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    for x in (0..16).map(|i| i as f32).chain(std::iter::repeat_n(2.0f32, 16)) {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let resp = reqwest::Client::new()
        .post(url(&s, "/v2/models/add_sub/jobs"))
        .header("Inference-Header-Content-Length", head.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_string();
    let v = wait_final(&s, &id).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["ttl_seconds"], 120);
    let out: Vec<f32> = serde_json::from_value(v["result"]["outputs"][1]["data"].clone()).unwrap();
    assert_eq!(out, (0..16).map(|i| i as f32 - 2.0).collect::<Vec<_>>());
    s.shutdown().await;
}
