//! The embedded job store survives `kill -9`: `sluice serve` is killed with jobs queued and one
//! running; started again on the same state directory, it runs every one of them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The slow model's cost: N^3 multiply-adds, about a second here.
const SLOW_N: i64 = 6000;

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_sub(dir.path(), ADD_SUB_CONFIG);
    std::fs::create_dir_all(dir.path().join("slow/1")).unwrap();
    std::fs::copy(crates_dir().join("sluice-server/tests/data/slow.onnx"), dir.path().join("slow/1/model.onnx"))
        .unwrap();
    dir
}

/// `sluice serve`, killed (SIGKILL) when dropped.
struct Server {
    _proc: Proc,
    base: String,
}

fn serve(repo: &Path, state: &Path, workers: usize) -> Server {
    let http = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--host", "127.0.0.1", "--model-repository"])
        .arg(repo)
        .arg("--state-dir")
        .arg(state)
        .args(["--http-port", &http.to_string(), "--grpc-port", &free_port().to_string()])
        .args(["--metrics-port", &free_port().to_string(), "--workers", &workers.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { _proc: Proc(child), base: format!("http://127.0.0.1:{http}") };
    wait_http(&format!("{}/v2/health/ready", server.base));
    server
}

fn submit(s: &Server, model: &str, body: Value) -> String {
    let r =
        reqwest::blocking::Client::new().post(format!("{}/v2/models/{model}/jobs", s.base)).json(&body).send().unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().unwrap()["job_id"].as_str().unwrap().to_string()
}

fn job(s: &Server, id: &str) -> Value {
    reqwest::blocking::get(format!("{}/v2/jobs/{id}", s.base)).unwrap().json().unwrap()
}

#[test]
fn killed_server_runs_its_queued_and_running_jobs_after_restart() {
    let (repo, state) = (repo(), tempfile::tempdir().unwrap());
    let first = serve(repo.path(), state.path(), 1);
    let slow =
        submit(&first, "slow", json!({"inputs": [{"name": "N", "shape": [1], "datatype": "INT64", "data": [SLOW_N]}]}));
    let quick: Vec<String> = (0..10)
        .map(|i| {
            let a: Vec<f32> = (0..16).map(|k| (k + i) as f32).collect();
            submit(
                &first,
                "add_sub",
                json!({"inputs": [
                    {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
                    {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0f32; 16]}]}),
            )
        })
        .collect();
    // The one worker is busy with the slow job; the others wait behind it.
    let end = Instant::now() + Duration::from_secs(20);
    while job(&first, &slow)["status"] != "processing" {
        assert!(Instant::now() < end, "the slow job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(job(&first, &quick[9])["status"], "queued");
    drop(first); // SIGKILL

    let second = serve(repo.path(), state.path(), 2);
    let end = Instant::now() + Duration::from_secs(120);
    for id in quick.iter().chain([&slow]) {
        loop {
            let v = job(&second, id);
            if v["status"] == "completed" {
                break;
            }
            assert!(["queued", "processing"].contains(&v["status"].as_str().unwrap()), "{v}");
            assert!(Instant::now() < end, "job {id} never completed after the restart: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let v = job(&second, &slow);
    assert_eq!(v["attempts"], 2, "the interrupted run counts: {v}");
    assert_eq!(v["result"]["outputs"][0]["datatype"], "FP32", "{v}");
    let v = job(&second, &quick[3]);
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["result"]["outputs"][0]["data"][0], 4.0, "{v}");
}
