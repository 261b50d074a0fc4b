//! Jobs through Redis across processes, each test with its own `redis-server` on a free port:
//! an API-only `sluice serve --workers 0` takes jobs, `sluice worker` processes run them.
//! - 1,000 jobs, two workers, one SIGKILLed mid-run: every job completes once, none is lost.
//! - Redis itself restarts (AOF on) while jobs are queued: none is lost.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_sub(dir.path(), &format!("{ADD_SUB_CONFIG}dynamic_batching {{ }}\n"));
    dir
}

/// `sluice serve --workers 0`: accepts jobs, runs none. Returns it, its base URL and its
/// metrics URL.
fn api(repo: &Path, queue: &str, state: &Path) -> (Proc, String, String) {
    let (http, metrics) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--host", "127.0.0.1", "--workers", "0", "--queue", queue, "--model-repository"])
        .arg(repo)
        .arg("--state-dir")
        .arg(state)
        .args(["--http-port", &http.to_string(), "--grpc-port", &free_port().to_string()])
        .args(["--metrics-port", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http}");
    let p = Proc(child);
    wait_http(&format!("{base}/v2/health/ready"));
    (p, base, format!("http://127.0.0.1:{metrics}/metrics"))
}

/// `sluice_jobs_queued` of add_sub, as the metrics port says.
fn queued(client: &reqwest::blocking::Client, metrics: &str) -> u64 {
    let text = client.get(metrics).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("sluice_jobs_queued{model=\"add_sub\"} "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

fn worker(repo: &Path, queue: &str) -> Proc {
    let metrics = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["worker", "--host", "127.0.0.1", "--queue", queue, "--workers", "2"])
        .args(["--visibility-timeout-secs", "2", "--onnx-intra-op-threads", "1", "--model-repository"])
        .arg(repo)
        .args(["--metrics-port", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_http(&format!("http://127.0.0.1:{metrics}/metrics"));
    p
}

fn body(i: usize) -> Value {
    let a: Vec<f32> = (0..16).map(|k| (i * 16 + k) as f32).collect();
    json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0f32; 16]}]})
}

fn submit(client: &reqwest::blocking::Client, base: &str, i: usize) -> String {
    let r = client.post(format!("{base}/v2/models/add_sub/jobs")).json(&body(i)).send().unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().unwrap()["job_id"].as_str().unwrap().to_string()
}

fn job(client: &reqwest::blocking::Client, base: &str, id: &str) -> Value {
    client.get(format!("{base}/v2/jobs/{id}")).send().unwrap().json().unwrap()
}

/// Waits until every job is completed; checks each result is its own input's.
fn all_completed(client: &reqwest::blocking::Client, base: &str, ids: &[String], within: Duration) -> Vec<Value> {
    let end = Instant::now() + within;
    let mut done = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let v = loop {
            let v = job(client, base, id);
            match v["status"].as_str().unwrap() {
                "completed" => break v,
                "queued" | "processing" => {}
                other => panic!("job {id} ended {other}: {v}"),
            }
            assert!(Instant::now() < end, "job {i} ({id}) not completed in time: {v}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let out: Vec<f32> = serde_json::from_value(v["result"]["outputs"][0]["data"].clone()).unwrap();
        let want: Vec<f32> = (0..16).map(|k| (i * 16 + k) as f32 + 1.0).collect();
        assert_eq!(out, want, "job {i} has another job's result");
        done.push(v);
    }
    done
}

#[test]
fn a_thousand_jobs_survive_a_worker_killed_mid_run() {
    let (rdir, state, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), repo());
    let port = free_port();
    let _redis = redis(rdir.path(), port);
    let queue = format!("redis://127.0.0.1:{port}/0");
    let (_api, base, metrics) = api(repo.path(), &queue, state.path());
    let client = reqwest::blocking::Client::new();
    let ids: Vec<String> = (0..1000).map(|i| submit(&client, &base, i)).collect();
    let victim = worker(repo.path(), &queue);
    let _survivor = worker(repo.path(), &queue);
    // Kill one worker while both are busy with the queue.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let left = queued(&client, &metrics);
        if left <= 900 {
            assert!(left > 0, "the workers finished before one could be killed");
            break;
        }
        assert!(Instant::now() < end, "workers did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(victim); // SIGKILL
    let done = all_completed(&client, &base, &ids, Duration::from_secs(120));
    assert_eq!(done.len(), 1000);
    let runs: u64 = done.iter().map(|v| v["attempts"].as_u64().unwrap()).sum();
    assert!(runs >= 1000, "every job ran: {runs} runs");
    let again = done.iter().filter(|v| v["attempts"].as_u64().unwrap() > 1).count();
    eprintln!("{again} job(s) were run again after their worker was killed");
    let list: Value = client.get(format!("{base}/v2/jobs?status=failed&limit=1000")).send().unwrap().json().unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn queued_jobs_survive_a_redis_restart() {
    let (rdir, state, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), repo());
    let port = free_port();
    let queue = format!("redis://127.0.0.1:{port}/0");
    let redis1 = redis(rdir.path(), port);
    let (_api, base, _) = api(repo.path(), &queue, state.path());
    let client = reqwest::blocking::Client::new();
    let mut ids: Vec<String> = (0..50).map(|i| submit(&client, &base, i)).collect();
    drop(redis1); // SIGKILL: only the append-only file remains
    let _redis2 = redis(rdir.path(), port);
    // The API server reconnects: a submit right after the restart may fail once, then succeeds.
    let end = Instant::now() + Duration::from_secs(20);
    while ids.len() < 60 {
        let r = client.post(format!("{base}/v2/models/add_sub/jobs")).json(&body(ids.len())).send().unwrap();
        if r.status() == 202 {
            ids.push(r.json::<Value>().unwrap()["job_id"].as_str().unwrap().to_string());
        } else {
            assert!(Instant::now() < end, "submits keep failing after Redis restarted: {}", r.text().unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _worker = worker(repo.path(), &queue);
    all_completed(&client, &base, &ids, Duration::from_secs(60));
}
