//! Logs a collector can read: `sluice serve` with its stderr on a pipe writes plain text (no
//! ANSI escapes), or with `--log-format json` one JSON object a line whose span carries the
//! request's id (HTTP and gRPC).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_server::grpc::pb;
use sluice_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

/// `sluice serve` with stderr on a pipe whose lines a thread collects.
struct Server {
    _proc: Proc,
    base: String,
    grpc: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

fn serve(repo: &Path, state: &Path, extra: &[&str]) -> Server {
    let (http, grpc) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--host", "127.0.0.1", "--model-repository"])
        .arg(repo)
        .arg("--state-dir")
        .arg(state)
        .args(["--http-port", &http.to_string(), "--grpc-port", &grpc.to_string()])
        .args(["--metrics-port", &free_port().to_string()])
        .args(extra)
        // The access line is tower_http's at debug level; refusals are sluice_server's.
        .env("SLUICE_LOG", "info,tower_http=debug,sluice_server=debug")
        .env_remove("SLUICE_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    let server = Server { _proc: Proc(child), base: format!("http://127.0.0.1:{http}"), grpc, lines };
    wait_http(&format!("{}/v2/health/ready", server.base));
    server
}

impl Server {
    /// Waits until a line satisfies `pred` and returns it (the lines arrive through a pipe).
    fn line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(Instant::now() < end, "no log line {what} in:\n{}", self.lines.lock().unwrap().join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn infer(&self, request_id: Option<&str>, body: &Value) -> reqwest::blocking::Response {
        let mut req =
            reqwest::blocking::Client::new().post(format!("{}/v2/models/add_sub/infer", self.base)).json(body);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        req.send().unwrap()
    }
}

fn add_sub_request(id: &str, n: usize) -> Value {
    let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
    json!({"id": id, "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, n], "data": data},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, n], "data": data}]})
}

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_sub(dir.path(), ADD_SUB_CONFIG);
    dir
}

#[test]
fn json_lines_carry_the_request_id() {
    let (dir, state) = (repo(), tempfile::tempdir().unwrap());
    let s = serve(dir.path(), state.path(), &["--log-format", "json"]);

    // The client's id, and the V2 body's own id beside it.
    let r = s.infer(Some("trace-me-7"), &add_sub_request("v2-id-9", 16));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "trace-me-7", "the id is echoed");
    let access = s.line("for trace-me-7", |l| l.contains("trace-me-7"));
    let v: Value = serde_json::from_str(&access).unwrap_or_else(|e| panic!("not JSON ({e}): {access}"));
    assert_eq!(v["span"]["request_id"], "trace-me-7", "{v}");
    assert_eq!(v["span"]["id"], "v2-id-9", "{v}");
    assert_eq!(v["span"]["path"], "/v2/models/add_sub/infer", "{v}");
    assert_eq!(v["status"], 200, "the access line: {v}");

    // No id sent: one is generated, answered, and logged; a refusal is logged with its reason.
    let r = s.infer(None, &add_sub_request("v2-bad", 3));
    assert_eq!(r.status(), 400);
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let refused = s.line("for the refusal", |l| l.contains(&generated) && l.contains("request refused"));
    let v: Value = serde_json::from_str(&refused).unwrap();
    assert_eq!((v["level"].as_str(), v["span"]["id"].as_str()), (Some("DEBUG"), Some("v2-bad")), "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("INPUT0"), "{v}");

    // A gRPC call runs in its own span: a refusal carries the metadata's id and the request's.
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(format!("http://127.0.0.1:{}", s.grpc)).await.unwrap();
        let mut req = tonic::Request::new(pb::ModelInferRequest {
            model_name: "no_such_model".into(),
            id: "grpc-v2-id".into(),
            ..Default::default()
        });
        req.metadata_mut().insert("x-request-id", "grpc-trace-3".parse().unwrap());
        c.model_infer(req).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::NotFound);
    let refused = s.line("for the gRPC call", |l| l.contains("grpc-trace-3"));
    let v: Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(v["span"]["path"], "/inference.GRPCInferenceService/ModelInfer", "{v}");
    assert_eq!(v["span"]["id"], "grpc-v2-id", "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("no_such_model"), "{v}");

    // Every line, the start-up ones included, is one JSON object.
    s.line("saying it listens", |l| l.contains("sluice is listening"));
    for l in s.all() {
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}

#[test]
fn text_logs_on_a_pipe_have_no_colour() {
    let (dir, state) = (repo(), tempfile::tempdir().unwrap());
    let s = serve(dir.path(), state.path(), &[]);
    assert_eq!(s.infer(Some("plain-text-1"), &add_sub_request("x", 16)).status(), 200);
    let access = s.line("for plain-text-1", |l| l.contains(r#"request_id="plain-text-1" id="x""#));
    assert!(access.contains("status=200"), "{access}");
    s.line("saying it listens", |l| l.contains("sluice is listening"));
    let all = s.all().join("\n");
    assert!(!all.contains('\x1b'), "escape codes in piped logs:\n{all}");
}
