//! Ragged batching end to end with a real model: the spam-accurate MiniLM classifier of
//! $SLUICE_MODELS, fed real emails tokenized to their own lengths (fixture made by
//! `tests/data/make_spam_samples.py`). Requests of different lengths share executions; the
//! server pads each batch to its longest request.

mod common;

use std::path::PathBuf;

use common::start_server;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, ServerConfig};

const SPAM_CONFIG: &str = r#"
name: "spam-accurate"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true },
  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true }
]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "label" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } }
]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"#;

/// A model repository holding spam-accurate (linked from the models folder) with the ragged
/// config above.
fn spam_repo() -> tempfile::TempDir {
    let src = sluice_test_models::model_path("spam-accurate/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().join("spam-accurate/1");
    std::fs::create_dir_all(&vdir).unwrap();
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&src, vdir.join("model.onnx")).is_ok();
    #[cfg(not(unix))]
    let linked = false;
    if !linked {
        std::fs::copy(&src, vdir.join("model.onnx")).unwrap();
    }
    std::fs::write(dir.path().join("spam-accurate/config.pbtxt"), SPAM_CONFIG).unwrap();
    dir
}

struct Sample {
    id: String,
    spam: bool,
    accurate_p_spam: f64,
    input_ids: Vec<i64>,
}

/// The fixture's emails with the batch-1 p(spam) of the spam-accurate model beside them in the
/// models folder (a copy rebuilt from packages answers slightly differently from the shared one).
fn samples() -> Vec<Sample> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/spam_samples.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let expected_path = sluice_test_models::model_path("datasets/spamassassin/samples.jsonl");
    let expected: Vec<Value> =
        std::fs::read_to_string(&expected_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let e = &expected[s["line"].as_u64().unwrap() as usize];
            assert_eq!(
                (&e["id"], &e["label"]),
                (&s["id"], &s["label"]),
                "{} does not hold the fixture's emails",
                expected_path.display()
            );
            Sample {
                id: s["id"].as_str().unwrap().to_string(),
                spam: s["label"] == "spam",
                accurate_p_spam: e["accurate_p_spam"].as_f64().unwrap(),
                input_ids: s["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect(),
            }
        })
        .collect()
}

fn body(ids: &[i64], mask_len: usize) -> Value {
    json!({"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, ids.len()], "data": ids},
        {"name": "attention_mask", "datatype": "INT64", "shape": [1, mask_len], "data": vec![1; mask_len]}
    ]})
}

#[tokio::test]
async fn requests_of_different_lengths_share_padded_batches() {
    let repo = spam_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", server.http_addr);
    let c = reqwest::Client::new();
    let samples = samples();
    let mut lengths: Vec<usize> = samples.iter().map(|s| s.input_ids.len()).collect();
    lengths.sort_unstable();
    lengths.dedup();
    assert!(samples.len() >= 12 && lengths.len() >= 6, "the fixture needs many lengths: {lengths:?}");

    let tasks: Vec<_> = samples
        .iter()
        .map(|s| {
            let (c, url, b) =
                (c.clone(), format!("{base}/v2/models/spam-accurate/infer"), body(&s.input_ids, s.input_ids.len()));
            tokio::spawn(async move {
                let r = c.post(url).json(&b).send().await.unwrap();
                let status = r.status();
                let v: Value = r.json().await.unwrap();
                assert_eq!(status, 200, "{v}");
                v
            })
        })
        .collect();
    let mut checked_labels = 0;
    for (s, t) in samples.iter().zip(tasks) {
        let v = t.await.unwrap();
        let out = |name: &str| v["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap().clone();
        let probs = out("probabilities");
        assert_eq!(probs["shape"], json!([1, 2]), "sample {}: {v}", s.id);
        let p_spam = probs["data"][1].as_f64().unwrap();
        assert!(
            (p_spam - s.accurate_p_spam).abs() < 0.05,
            "sample {} ({} tokens): p(spam) {p_spam} served in a padded batch, {} at batch 1",
            s.id,
            s.input_ids.len(),
            s.accurate_p_spam
        );
        let label = out("label")["data"][0].as_i64().unwrap();
        if (s.accurate_p_spam > 0.5) == s.spam {
            checked_labels += 1;
            assert_eq!(label == 1, s.spam, "sample {}: label {label}, expected {}", s.id, s.spam);
        }
    }
    assert!(checked_labels >= 10, "the model is right at batch 1 on most of the fixture");

    let st: Value = c.get(format!("{base}/v2/models/spam-accurate/stats")).send().await.unwrap().json().await.unwrap();
    let st = &st["model_stats"][0];
    assert_eq!(st["inference_count"], 12, "{st}");
    let executions = st["execution_count"].as_u64().unwrap();
    assert!(executions < 12, "12 concurrent requests of {} lengths ran in {executions} executions", lengths.len());
}

#[tokio::test]
async fn inputs_of_one_request_must_have_the_same_length() {
    let repo = spam_repo();
    let server = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", server.http_addr);
    let c = reqwest::Client::new();
    let ids = [101, 7592, 2088, 999, 102];
    let r = c.post(format!("{base}/v2/models/spam-accurate/infer")).json(&body(&ids, 6)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e = r.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(e.contains("'attention_mask'") && e.contains("'input_ids'"), "{e}");
    assert!(e.contains("[1,5]") && e.contains("[1,6]"), "{e}");
    // The same ids with a matching mask run.
    let r = c.post(format!("{base}/v2/models/spam-accurate/infer")).json(&body(&ids, 5)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
