//! Two `sluice serve` replicas on one Redis (`--state`, a `redis-server` of the test's own):
//! - an experiment assigns each user the same arm on both, adds both replicas' exposures up
//!   (a user seen by both counts once), and takes feedback on one for a request the other
//!   answered;
//! - a rollout advanced by the replica that drives it is followed by the other, a command given
//!   to the other is obeyed by the driver, and when the driver is killed (SIGKILL) the survivor
//!   takes the lease over and drives the rollout on.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Step 1 holds long enough for the test to look around in it, kill its driver and see the
/// survivor advance it.
const ROLLOUT: &str = "kind: rollout\nbaseline: { model: add_sub, version: 1 }\ncandidate: { model: add_sub, version: 2 }\n\
    unit: { header: x-user-id }\nsteps:\n  - { weight: 20, hold: 1s }\n  - { weight: 50, hold: 8s }\n  - { weight: 100, hold: 1h }\n";

const EXPERIMENT: &str = "kind: experiment\nunit: { header: x-user-id }\narms:\n  \
    - { name: control, model: add_sub, version: 1, weight: 50 }\n  \
    - { name: treatment, model: add_sub, version: 2, weight: 50 }\n\
    metrics:\n  - { name: click, type: proportion, primary: true }\n";

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_sub(dir.path(), &format!("{ADD_SUB_CONFIG}version_policy: {{ all {{ }} }}\n"));
    std::fs::create_dir_all(dir.path().join("add_sub/2")).unwrap();
    std::fs::copy(dir.path().join("add_sub/1/model.onnx"), dir.path().join("add_sub/2/model.onnx")).unwrap();
    for (name, yaml) in [("rollout", ROLLOUT), ("ab", EXPERIMENT)] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("endpoint.yaml"), yaml).unwrap();
    }
    dir
}

struct Replica {
    proc: Option<Proc>,
    base: String,
}

fn replica(repo: &Path, state: &str, dir: &Path) -> Replica {
    let http = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--host", "127.0.0.1", "--state", state, "--model-repository"])
        .arg(repo)
        .arg("--state-dir")
        .arg(dir)
        .args(["--http-port", &http.to_string(), "--grpc-port", &free_port().to_string()])
        .args(["--metrics-port", &free_port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = Replica { proc: Some(Proc(child)), base: format!("http://127.0.0.1:{http}") };
    for model in ["rollout", "ab"] {
        wait_http(&format!("{}/v2/models/{model}/ready", r.base));
    }
    r
}

fn body() -> Value {
    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": a},
    ]})
}

/// One request to `endpoint` as `user`: the answer's parameters.
fn infer(r: &Replica, endpoint: &str, user: &str, request_id: &str) -> Value {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/v2/models/{endpoint}/infer", r.base))
        .header("x-user-id", user)
        .header("x-request-id", request_id)
        .json(&body())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().unwrap()["parameters"].clone()
}

fn get(r: &Replica, path: &str) -> Value {
    reqwest::blocking::get(format!("{}{path}", r.base)).unwrap().json().unwrap()
}

fn post(r: &Replica, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new().post(format!("{}{path}", r.base)).json(&body).send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap())
}

fn rollout(r: &Replica) -> Value {
    get(r, "/v2/endpoints/rollout/rollout")
}

fn phase(status: &Value) -> Value {
    status["status"]["phase"].clone()
}

/// Waits up to `secs` for `f` to hold.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "not within {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_replicas_share_experiments_and_rollouts_through_redis() {
    let (repo, redis_dir, a_dir, b_dir) =
        (repo(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let _redis = redis(redis_dir.path(), port);
    let state = format!("redis://127.0.0.1:{port}/0");
    let mut replicas = [replica(repo.path(), &state, a_dir.path()), replica(repo.path(), &state, b_dir.path())];

    // The experiment: one arm per user on both replicas.
    let arm = |r: &Replica, user: &str, id: &str| infer(r, "ab", user, id)["sluice_experiment_arm"].clone();
    let mut treated = 0;
    for u in 0..40 {
        let user = format!("user-{u}");
        let on_a = arm(&replicas[0], &user, &format!("a-{u}"));
        assert_eq!(on_a, arm(&replicas[1], &user, &format!("b-{u}")), "{user} has one arm");
        treated += usize::from(on_a == "treatment");
    }
    assert!((8..=32).contains(&treated), "about half treated: {treated}");
    // 30 users only on A, 20 only on B: 90 users in all, the 40 shared counted once.
    for u in 40..70 {
        arm(&replicas[0], &format!("user-{u}"), &format!("a-{u}"));
    }
    for u in 70..90 {
        arm(&replicas[1], &format!("user-{u}"), &format!("b-{u}"));
    }
    // A click on B for a request A answered, once B can see A's attributions (within a tick).
    std::thread::sleep(Duration::from_millis(1200));
    let (code, taken) =
        post(&replicas[1], "/v2/feedback", json!({"request_id": "a-45", "metric": "click", "value": 1, "id": "c1"}));
    assert_eq!(code, 200, "{taken}");
    assert_eq!(taken["counted"], true, "{taken}");
    let (_, again) =
        post(&replicas[0], "/v2/feedback", json!({"request_id": "a-45", "metric": "click", "value": 1, "id": "c1"}));
    assert_eq!(again["counted"], false, "a repeated feedback id counts once on any replica: {again}");
    for r in &replicas {
        let report = get(r, "/v2/endpoints/ab/experiment");
        let units: Vec<u64> = report["arms"].as_array().unwrap().iter().map(|a| a["units"].as_u64().unwrap()).collect();
        assert_eq!(units.iter().sum::<u64>(), 90, "both replicas' exposures, each user once: {report}");
        let clicks: f64 = report["metrics"][0]["arms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["estimate"].as_f64().unwrap_or(0.0) * a["n"].as_f64().unwrap())
            .sum();
        assert!((clicks - 1.0).abs() < 1e-9, "one click, counted on the arm that answered: {report}");
    }

    // The rollout: whichever replica drives it advances it, and the other follows.
    eventually(10, "both replicas in step 1", || replicas.iter().all(|r| phase(&rollout(r)) == json!({"step": 1})));
    let driving: Vec<bool> = replicas.iter().map(|r| rollout(r)["replica"]["driving"].as_bool().unwrap()).collect();
    assert_eq!(driving.iter().filter(|d| **d).count(), 1, "one driver: {driving:?}");
    let (driver, follower) = if driving[0] { (0, 1) } else { (1, 0) };
    for u in 0..40 {
        let user = format!("user-{u}");
        let side = |r: &Replica| infer(r, "rollout", &user, &format!("r-{u}"))["sluice_rollout_side"].clone();
        assert_eq!(side(&replicas[0]), side(&replicas[1]), "{user} is on one side");
    }

    // A command to the follower is obeyed by the driver.
    let (code, paused) = post(&replicas[follower], "/v2/endpoints/rollout/rollout/pause", json!({"reason": "drill"}));
    assert_eq!(code, 200, "{paused}");
    eventually(5, "the driver paused", || {
        phase(&rollout(&replicas[driver])) == json!({"paused": {"step": 1, "by_failure": false}})
    });
    let (code, resumed) = post(&replicas[driver], "/v2/endpoints/rollout/rollout/resume", json!({"reason": "go on"}));
    assert_eq!(code, 200, "{resumed}");

    // The driver dies; the survivor takes the lease and advances step 1 when its hold is over.
    replicas[driver].proc.take();
    let survivor = &replicas[follower];
    eventually(8, "the survivor drives", || rollout(survivor)["replica"]["driving"] == true);
    eventually(15, "the survivor advances to step 2", || phase(&rollout(survivor)) == json!({"step": 2}));
    let status = rollout(survivor);
    let last = status["status"]["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["cause"], "advance", "{status}");
    let history = status["status"]["history"].as_array().unwrap().len();
    assert_eq!(history, 5, "start, advance, pause, resume, advance: {status}");
}
