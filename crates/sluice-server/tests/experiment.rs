//! An A/B experiment end to end on a real server: add_sub version 1 (control) against version 2
//! (treatment), 50/50 by user. Outcomes are posted back with known rates (10 % of control users
//! click, 30 % of treatment users), by request id and by unit; the report finds the difference,
//! unknown ids and metrics are refused, a repeated feedback id counts once, and a stop sends every
//! request to the chosen arm.

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, RunningServer, ServerConfig};

const CONFIG: &str = "name: \"add_sub\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 8\n\
    input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 16 ] }, { name: \"INPUT1\" data_type: TYPE_FP32 dims: [ 16 ] } ]\n\
    output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 16 ] }, { name: \"OUTPUT1\" data_type: TYPE_FP32 dims: [ 16 ] } ]\n\
    version_policy: { all { } }\n";

const EXPERIMENT: &str = "kind: experiment\nunit: { header: x-user-id }\narms:\n  \
    - { name: control, model: add_sub, version: 1, weight: 50 }\n  \
    - { name: treatment, model: add_sub, version: 2, weight: 50 }\nmetrics:\n  \
    - { name: click, type: proportion, primary: true }\n  - { name: revenue, type: mean }\n\
    design: { baseline_rate: 0.10, mde: 0.10, alpha: 0.05, power: 0.8 }\nsequential: true\n";

fn body() -> Value {
    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": a},
    ]})
}

async fn server() -> (RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(CONFIG));
    add_model(dir.path(), "add_sub", 2, "add_sub.onnx", None);
    std::fs::create_dir_all(dir.path().join("ranker")).unwrap();
    std::fs::write(dir.path().join("ranker/endpoint.yaml"), EXPERIMENT).unwrap();
    (start_server(dir.path(), EngineOptions::default(), ServerConfig::default()).await, dir)
}

async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("{base}{path}")).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Whether user `u` of `arm` clicks: 1 in 10 of control users, 3 in 10 of treatment users.
fn clicks(arm: &str, u: usize) -> bool {
    if arm == "control" {
        u.is_multiple_of(10)
    } else {
        u % 10 < 3
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_finds_a_real_difference_and_stops_on_the_winner() {
    let (s, _dir) = server().await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();

    let mut by_arm = std::collections::HashMap::<String, usize>::new();
    let mut feedback = Vec::new();
    for u in 0..800usize {
        let r = c
            .post(format!("{base}/v2/models/ranker/infer"))
            .header("x-user-id", format!("user-{u}"))
            .header("x-request-id", format!("req-{u}"))
            .json(&body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model_name"], "ranker");
        let arm = v["parameters"]["sluice_experiment_arm"].as_str().unwrap().to_string();
        let version = if arm == "control" { "1" } else { "2" };
        assert_eq!(v["parameters"]["sluice_model_version"], version, "the arm's version answered");
        let n = by_arm.entry(arm.clone()).or_default();
        if clicks(&arm, *n) {
            // Half by request id, half by unit, one of them posted twice under one feedback id.
            feedback.push(if u.is_multiple_of(2) {
                json!({"id": format!("fb-{u}"), "request_id": format!("req-{u}"), "metric": "click", "value": 1})
            } else {
                json!({"id": format!("fb-{u}"), "unit": format!("user-{u}"), "metric": "click", "value": 1})
            });
        }
        feedback.push(json!({"request_id": format!("req-{u}"), "metric": "revenue", "value": if arm == "control" { 10.0 } else { 10.5 } + (u % 7) as f64}));
        *n += 1;
    }
    let (code, taken) = post(&base, "/v2/feedback", &Value::Array(feedback.clone())).await;
    assert_eq!(code, 200, "{taken}");
    assert!(taken.as_array().unwrap().iter().all(|t| t["counted"] == true), "{taken}");
    // The same outcome again counts once.
    let (code, again) = post(&base, "/v2/feedback", &feedback[0]).await;
    assert_eq!((code, again["counted"].clone()), (200, json!(false)), "{again}");

    // What cannot be taken says why.
    let (code, e) = post(&base, "/v2/feedback", &json!({"request_id": "req-5", "metric": "likes", "value": 1})).await;
    assert_eq!(code, 400);
    assert!(e["error"].as_str().unwrap().contains("has no metric 'likes' (it has: click, revenue)"), "{e}");
    let (code, e) = post(&base, "/v2/feedback", &json!({"request_id": "nobody", "metric": "click", "value": 1})).await;
    assert_eq!(code, 404, "{e}");
    let (code, e) = post(&base, "/v2/feedback", &json!({"unit": "never-seen", "metric": "click", "value": 1})).await;
    assert_eq!(code, 404, "a unit never exposed is nobody's: {e}");
    assert!(e["error"].as_str().unwrap().contains("has seen unit 'never-seen'"), "{e}");
    let (code, e) = post(&base, "/v2/feedback", &json!({"request_id": "req-3", "metric": "click", "value": 2})).await;
    assert_eq!(code, 400);
    assert!(e["error"].as_str().unwrap().contains("is a proportion: its value is 0 or 1, got 2"), "{e}");

    let report: Value =
        reqwest::get(format!("{base}/v2/endpoints/ranker/experiment")).await.unwrap().json().await.unwrap();
    let arms = report["arms"].as_array().unwrap();
    let units: Vec<u64> = arms.iter().map(|a| a["units"].as_u64().unwrap()).collect();
    assert_eq!(units.iter().sum::<u64>(), 800, "{report}");
    assert!(units.iter().all(|u| (320..=480).contains(u)), "about half each: {units:?}");
    let click = report["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "click").unwrap();
    let rates: Vec<f64> = click["arms"].as_array().unwrap().iter().map(|a| a["estimate"].as_f64().unwrap()).collect();
    assert!((rates[0] - 0.1).abs() < 0.01 && (rates[1] - 0.3).abs() < 0.01, "{rates:?}");
    let d = &click["differences"][0];
    assert!(d["p_value"].as_f64().unwrap() < 1e-6 && d["concluded"] == true, "{d}");
    assert!(report["verdict"].as_str().unwrap().starts_with("treatment is higher on click"), "{report}");
    assert!(report["srm_p"].as_f64().unwrap() > 0.001, "{report}");
    assert_eq!(report["planned_units_per_arm"], 199, "{report}");

    // Stop on the winner: every request goes to it from now on.
    let (code, e) = post(&base, "/v2/endpoints/ranker/experiment/stop", &json!({"arm": "treatment"})).await;
    assert_eq!(code, 400, "a reason is required: {e}");
    let (code, stopped) = post(
        &base,
        "/v2/endpoints/ranker/experiment/stop",
        &json!({"arm": "treatment", "reason": "clicks +20 points"}),
    )
    .await;
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(stopped["state"], "stopped");
    for u in 0..20 {
        let r = c
            .post(format!("{base}/v2/models/ranker/infer"))
            .header("x-user-id", format!("user-{u}"))
            .json(&body())
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["parameters"]["sluice_experiment_arm"], "treatment");
    }
    let (code, _) = post(&base, "/v2/endpoints/ranker/experiment/stop", &json!({"reason": "again"})).await;
    assert_eq!(code, 409);
    let r = reqwest::get(format!("{base}/v2/endpoints/add_sub/experiment")).await.unwrap();
    assert_eq!(r.status(), 404);
    s.shutdown().await;
}
