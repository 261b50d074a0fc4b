//! Text in, labels out, with the real spam classifier of $SLUICE_MODELS: the server tokenizes
//! BYTES emails (the model's own tokenizer.json) and answers what the model answers for them,
//! and Triton's `classification` output names the label.

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, ServerConfig};

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_text_classifier(dir.path(), "spam", "spam-fast", "dynamic_batching { max_queue_delay_microseconds: 1000 }");
    dir
}

fn samples(n: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(sluice_test_models::model_path("datasets/spamassassin/samples.jsonl")).unwrap();
    text.lines().take(n).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_go_in_as_text_and_come_out_as_labels() {
    let repo = repo();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}/v2/models/spam", s.http_addr);
    let client = reqwest::Client::new();

    let meta: Value = client.get(&base).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["inputs"], json!([{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]}]), "{meta}");

    let emails = samples(12);
    let ask = |text: Value| {
        let (client, url) = (client.clone(), format!("{base}/infer"));
        async move {
            let body = json!({
                "inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}],
                "outputs": [{"name": "probabilities"}, {"name": "label"}]
            });
            let r = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let out = r.json::<Value>().await.unwrap();
            (out["outputs"][0]["data"][1].as_f64().unwrap(), out["outputs"][1]["data"][0].as_i64().unwrap())
        }
    };
    // One at a time (batch 1, as the expected values were computed): the same tokens, so the same
    // probabilities as the reference run.
    for e in &emails {
        let (p_spam, label) = ask(e["text"].clone()).await;
        let expected = e["fast_p_spam"].as_f64().unwrap();
        assert!((p_spam - expected).abs() < 1e-3, "email {}: p(spam) {p_spam}, expected {expected}", e["id"]);
        assert_eq!(label, i64::from(expected > 0.5), "email {}", e["id"]);
    }
    // All at once, so the batcher pads them together. Int8 dynamic quantization scales
    // activations per batch, so probabilities move a little with batch-mates: clear cases keep
    // their label.
    let answers = futures::future::join_all(emails.iter().map(|e| ask(e["text"].clone()))).await;
    for (e, (_, label)) in emails.iter().zip(answers) {
        let expected = e["fast_p_spam"].as_f64().unwrap();
        if (expected - 0.5).abs() > 0.3 {
            assert_eq!(label, i64::from(expected > 0.5), "email {} in a batch", e["id"]);
        }
    }

    // Two emails in one request, and the label by name.
    let e = samples(2);
    let body = json!({
        "inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": [e[0]["text"], e[1]["text"]]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]
    });
    let out: Value = client.post(format!("{base}/infer")).json(&body).send().await.unwrap().json().await.unwrap();
    let t = &out["outputs"][0];
    assert_eq!((t["datatype"].as_str(), t["shape"].clone()), (Some("BYTES"), json!([2, 1])), "{out}");
    for (i, e) in e.iter().enumerate() {
        let s = t["data"][i].as_str().unwrap();
        let want = if e["fast_p_spam"].as_f64().unwrap() > 0.5 { ":1:spam" } else { ":0:ham" };
        assert!(s.ends_with(want), "email {}: {s}, expected …{want}", e["id"]);
    }

    // Token ids are not what this model takes any more; text that is not a string is refused.
    let bad =
        json!({"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [101, 7592, 102]}]});
    let r = client.post(format!("{base}/infer")).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("'TEXT'"));
    let bad = json!({"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "INT64", "data": [1]}]});
    let r = client.post(format!("{base}/infer")).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_classification_over_grpc() {
    use sluice_server::grpc::pb;
    use sluice_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

    let repo = repo();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr)).await.unwrap();
    let e = &samples(1)[0];
    let text = e["text"].as_str().unwrap().as_bytes();
    // Raw BYTES: each element a 4-byte little-endian length, then the bytes.
    let mut raw = (text.len() as u32).to_le_bytes().to_vec();
    raw.extend_from_slice(text);
    let k = pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(2)) };
    let req = pb::ModelInferRequest {
        model_name: "spam".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "TEXT".into(),
            datatype: "BYTES".into(),
            shape: vec![1, 1],
            ..Default::default()
        }],
        outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
            name: "probabilities".into(),
            parameters: [("classification".to_string(), k)].into_iter().collect(),
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    };
    let resp = client.model_infer(req).await.unwrap().into_inner();
    let out = &resp.outputs[0];
    assert_eq!((out.datatype.as_str(), out.shape.clone()), ("BYTES", vec![1, 2]));
    let raw = &resp.raw_output_contents[0];
    let mut strings = Vec::new();
    let mut rest = &raw[..];
    while rest.len() >= 4 {
        let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        strings.push(String::from_utf8(rest[4..4 + n].to_vec()).unwrap());
        rest = &rest[4 + n..];
    }
    let p_spam = e["fast_p_spam"].as_f64().unwrap();
    let (first, second) = if p_spam > 0.5 { (":1:spam", ":0:ham") } else { (":0:ham", ":1:spam") };
    assert!(strings[0].ends_with(first) && strings[1].ends_with(second), "{strings:?}");
    let top: f64 = strings[0].split(':').next().unwrap().parse().unwrap();
    assert!((top - p_spam.max(1.0 - p_spam)).abs() < 1e-3, "{strings:?} vs p(spam) {p_spam}");
    s.shutdown().await;
}
