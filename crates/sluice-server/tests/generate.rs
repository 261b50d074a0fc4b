//! Generation over HTTP with the real SmolLM2-135M-Instruct GGUF of $SLUICE_MODELS, served
//! from a model directory with no config: Triton's generate and generate_stream (raw SSE), the
//! OpenAI endpoints, a plain V2 infer, cancellation mid-stream, metrics, clear errors.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, ServerConfig};

/// `smollm/1/model.gguf` and `smollm/tokenizer.json`, nothing else; and add_sub beside it.
fn repo() -> tempfile::TempDir {
    let dir = standard_repo();
    let m = sluice_test_models::model_path("smollm2-135m-instruct");
    std::fs::create_dir_all(dir.path().join("smollm/1")).unwrap();
    std::os::unix::fs::symlink(m.join("model.gguf"), dir.path().join("smollm/1/model.gguf")).unwrap();
    std::os::unix::fs::symlink(m.join("tokenizer.json"), dir.path().join("smollm/tokenizer.json")).unwrap();
    dir
}

const FRANCE: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
const ANSWER: &str = "The capital of France is Paris.";

/// The `data:` payloads of an SSE body, with the event name when there is one.
fn sse(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .filter_map(|e| {
            let mut event = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.trim_start().to_string());
                }
            }
            data.map(|d| (event, d))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_stream_openai_and_infer() {
    let repo = repo();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();

    // Served without a config: the candle backend, Triton vLLM-style inputs and outputs.
    let cfg: Value = c.get(format!("{base}/v2/models/smollm/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cfg["backend"], "candle", "{cfg}");
    assert_eq!(cfg["input"][0]["name"], "text_input");
    assert_eq!(cfg["output"][0]["name"], "text_output");

    // generate: the whole answer.
    let body = json!({"text_input": FRANCE, "parameters": {"max_tokens": 30, "temperature": 0}});
    let r = c.post(format!("{base}/v2/models/smollm/generate")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["text_output"], ANSWER, "{v}");
    assert_eq!(v["model_name"], "smollm");

    // generate_stream: several events whose pieces make the same answer.
    let r = c.post(format!("{base}/v2/models/smollm/generate_stream")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse(&r.text().await.unwrap());
    assert!(events.len() >= 5, "one event per piece: {events:?}");
    let text: String = events
        .iter()
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap()["text_output"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, ANSWER);

    // Plain V2 infer, sampling from the request's parameters.
    let body = json!({
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [FRANCE]}],
        "parameters": {"max_tokens": 30, "temperature": 0}
    });
    let r = c.post(format!("{base}/v2/models/smollm/infer")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outputs"][0]["name"], "text_output");
    assert_eq!(v["outputs"][0]["data"][0], ANSWER, "{v}");

    // OpenAI: models, chat completion whole and streamed, completion.
    let v: Value = c.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["smollm"], "only generative models: {v}");
    let chat = json!({
        "model": "smollm",
        "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
        "temperature": 0, "max_tokens": 30
    });
    let v: Value =
        c.post(format!("{base}/v1/chat/completions")).json(&chat).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    // The model's own chat template (with SmolLM's system prompt) is used.
    assert_eq!(v["choices"][0]["message"]["content"], "The capital of Germany is Berlin.", "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 10 && u["completion_tokens"].as_u64().unwrap() > 3, "{v}");

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = c.post(format!("{base}/v1/chat/completions")).json(&streamed).send().await.unwrap();
    let events = sse(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(content, v["choices"][0]["message"]["content"].as_str().unwrap());
    let finish: Vec<&Value> = chunks.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(chunks.last().unwrap()["usage"], *u, "the usage chunk comes last");

    let comp = json!({"model": "smollm", "prompt": FRANCE, "max_tokens": 4, "temperature": 0});
    let v: Value = c.post(format!("{base}/v1/completions")).json(&comp).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "The capital of France");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 4);

    // Metrics per model. The engine updates its running gauge on its next loop, just after
    // the last token went out: wait for it rather than race it.
    let idle = "sluice_llm_running_sequences{model=\"smollm\",version=\"1\"} 0";
    let mut m = String::new();
    for _ in 0..100 {
        m = c.get(format!("http://{}/metrics", s.metrics_addr)).send().await.unwrap().text().await.unwrap();
        if m.contains(idle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for family in [
        "sluice_llm_time_to_first_token_seconds_count{model=\"smollm\",version=\"1\"}",
        "sluice_llm_inter_token_latency_seconds_bucket{model=\"smollm\",version=\"1\",le=",
        "sluice_llm_generated_tokens_total{model=\"smollm\",version=\"1\"}",
        "sluice_llm_running_sequences{model=\"smollm\",version=\"1\"} 0",
    ] {
        assert!(m.contains(family), "metrics lack {family}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_streams_free_their_slot_and_errors_are_clear() {
    let repo = repo();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();
    let running = || {
        let g = s.engine.repository().get("smollm", None).unwrap().generator.clone().unwrap();
        g.metrics().running.load(std::sync::atomic::Ordering::Relaxed)
    };

    // A long stream, read a little, then dropped: its sequence goes at the next step.
    let body = json!({"text_input": "Count to a thousand:", "parameters": {"max_tokens": 2000, "ignore_eos": true}});
    let mut r = c.post(format!("{base}/v2/models/smollm/generate_stream")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("text_output"));
    assert_eq!(running(), 1);
    drop(r);
    let t0 = Instant::now();
    while running() != 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the dropped stream kept its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let m = c.get(format!("http://{}/metrics", s.metrics_addr)).send().await.unwrap().text().await.unwrap();
    assert!(
        m.contains("nv_inference_request_failure{model=\"smollm\",version=\"1\",reason=\"CANCELED\"} 1"),
        "the dropped stream counts as cancelled"
    );
    assert!(m.contains("sluice_llm_requests_total{model=\"smollm\",version=\"1\",reason=\"cancelled\"} 1"));

    // Errors: the OpenAI shape with the right status, and Triton's `{"error"}`.
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"), "{v}");
    let r = c
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "smollm", "prompt": "x", "temperature": "hot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("temperature"), "{v}");
    let r =
        c.post(format!("{base}/v2/models/add_sub/generate")).json(&json!({"text_input": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("not a generative model"), "{v}");
    let r = c
        .post(format!("{base}/v2/models/smollm/generate_stream"))
        .json(&json!({"text_input": "x", "max_tokens": 100000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "refused before the stream starts");
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("context"), "{v}");
}

/// Every streaming edge ends its stream visibly when the answer is empty: the greedy answer to
/// FRANCE starts with "The", so `stop: "The"` ends it at its first token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_ends_at_its_first_token_still_ends_every_stream() {
    use sluice_server::grpc::pb;
    use sluice_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    use sluice_server::grpc::pb::infer_parameter::ParameterChoice;
    use sluice_server::grpc::pb::model_infer_request::InferInputTensor;

    let repo = repo();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();

    // The premise: without the stop, the answer starts with "The".
    let body = json!({"text_input": FRANCE, "parameters": {"max_tokens": 1, "temperature": 0}});
    let v: Value =
        c.post(format!("{base}/v2/models/smollm/generate")).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["text_output"], "The", "{v}");

    let body = json!({"text_input": FRANCE, "parameters": {"max_tokens": 30, "temperature": 0, "stop": "The"}});
    let v: Value =
        c.post(format!("{base}/v2/models/smollm/generate")).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["text_output"], "", "{v}");

    // generate_stream: one final event with empty text.
    let r = c.post(format!("{base}/v2/models/smollm/generate_stream")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let events = sse(&r.text().await.unwrap());
    assert_eq!(events.len(), 1, "{events:?}");
    let last: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!((last["text_output"].as_str(), last["model_name"].as_str()), (Some(""), Some("smollm")), "{last}");

    // OpenAI completions and chat: the finish chunk (chat: after its role chunk), then [DONE].
    let comp = json!({"model": "smollm", "prompt": FRANCE, "max_tokens": 30, "temperature": 0, "stop": ["The"], "stream": true});
    let r = c.post(format!("{base}/v1/completions")).json(&comp).send().await.unwrap();
    let events = sse(&r.text().await.unwrap());
    let data: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(data.len(), 2, "{data:?}");
    let fin: Value = serde_json::from_str(data[0]).unwrap();
    assert_eq!(
        (fin["choices"][0]["text"].as_str(), fin["choices"][0]["finish_reason"].as_str()),
        (Some(""), Some("stop"))
    );
    assert_eq!(data[1], "[DONE]");
    let chat = json!({
        "model": "smollm", "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
        "temperature": 0, "max_tokens": 30, "stop": "The", "stream": true
    });
    let r = c.post(format!("{base}/v1/chat/completions")).json(&chat).send().await.unwrap();
    let events = sse(&r.text().await.unwrap());
    let data: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(data.len(), 3, "{data:?}");
    let role: Value = serde_json::from_str(data[0]).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    let fin: Value = serde_json::from_str(data[1]).unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    assert_eq!(data[2], "[DONE]");

    // gRPC ModelStreamInfer: without Triton's final-response flag, one response with empty
    // text; with it, the empty final response alone.
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr)).await.unwrap();
    let request = |id: &str, flag: bool| {
        let string = |v: &str| pb::InferParameter { parameter_choice: Some(ParameterChoice::StringParam(v.into())) };
        let mut parameters: std::collections::HashMap<String, pb::InferParameter> = [
            ("max_tokens".to_string(), string("30")),
            ("temperature".to_string(), string("0")),
            ("stop".to_string(), string("The")),
        ]
        .into();
        if flag {
            parameters.insert(
                "triton_enable_empty_final_response".into(),
                pb::InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) },
            );
        }
        pb::ModelInferRequest {
            model_name: "smollm".into(),
            id: id.into(),
            parameters,
            inputs: vec![InferInputTensor {
                name: "text_input".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                contents: Some(pb::InferTensorContents {
                    bytes_contents: vec![FRANCE.as_bytes().to_vec().into()],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    };
    for flag in [false, true] {
        let mut answers =
            client.model_stream_infer(tokio_stream::iter(vec![request("r", flag)])).await.unwrap().into_inner();
        let mut got = Vec::new();
        while let Some(item) = tokio_stream::StreamExt::next(&mut answers).await {
            got.push(item.unwrap());
        }
        assert_eq!(got.len(), 1, "flag {flag}: {got:?}");
        assert!(got[0].error_message.is_empty(), "{}", got[0].error_message);
        let resp = got[0].infer_response.as_ref().unwrap();
        assert_eq!(resp.id, "r");
        if flag {
            assert!(resp.outputs.is_empty() && resp.raw_output_contents.is_empty(), "{resp:?}");
            let fin = &resp.parameters["triton_final_response"].parameter_choice;
            assert_eq!(fin, &Some(ParameterChoice::BoolParam(true)));
        } else {
            assert_eq!(resp.outputs[0].name, "text_output");
            // BYTES as Triton writes them: a 4-byte length, then the (empty) text.
            assert_eq!(&resp.raw_output_contents[0][..], &[0, 0, 0, 0]);
        }
    }
}

/// A split over two LLMs (the same GGUF served twice) streams: the answer comes under the
/// endpoint's name, the `sluice-model` header says which model gave it, a user keeps theirs, and
/// the OpenAI routes list and serve the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_over_two_llms_streams() {
    let repo = repo();
    let m = sluice_test_models::model_path("smollm2-135m-instruct");
    std::fs::create_dir_all(repo.path().join("smollm-b/1")).unwrap();
    std::os::unix::fs::symlink(m.join("model.gguf"), repo.path().join("smollm-b/1/model.gguf")).unwrap();
    std::os::unix::fs::symlink(m.join("tokenizer.json"), repo.path().join("smollm-b/tokenizer.json")).unwrap();
    std::fs::create_dir_all(repo.path().join("chat")).unwrap();
    std::fs::write(
        repo.path().join("chat/endpoint.yaml"),
        "kind: split\ntargets:\n  - { model: smollm, weight: 1 }\n  - { model: smollm-b, weight: 1 }\nsticky: { header: x-user-id }\n",
    )
    .unwrap();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let base = format!("http://{}", s.http_addr);
    let c = reqwest::Client::new();

    let v: Value = c.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"chat") && ids.contains(&"smollm-b"), "{v}");

    let body = json!({"text_input": FRANCE, "parameters": {"max_tokens": 30, "temperature": 0}});
    let mut seen = std::collections::BTreeMap::new();
    for user in 0..16 {
        let user = format!("user-{user}");
        let r = c
            .post(format!("{base}/v2/models/chat/generate_stream"))
            .header("x-user-id", &user)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answered = r.headers()["sluice-model"].to_str().unwrap().to_string();
        let events = sse(&r.text().await.unwrap());
        assert!(events.len() >= 5, "streamed piece by piece: {events:?}");
        let pieces: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        assert!(pieces.iter().all(|p| p["model_name"] == "chat"), "{pieces:?}");
        let text: String = pieces.iter().map(|p| p["text_output"].as_str().unwrap().to_string()).collect();
        assert_eq!(text, ANSWER);
        seen.entry(answered).or_insert(user);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both models answer some users: {seen:?}");
    // A user stays with the model they were given, through the OpenAI route too.
    for (model, user) in &seen {
        let chat = json!({
            "model": "chat", "stream": true, "temperature": 0, "max_tokens": 30,
            "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
        });
        let r =
            c.post(format!("{base}/v1/chat/completions")).header("x-user-id", user).json(&chat).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let events = sse(&r.text().await.unwrap());
        let chunks: Vec<Value> =
            events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        assert!(chunks.iter().all(|c| c["model"] == "chat"));
        let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(content, "The capital of Germany is Berlin.");
        let r = c
            .post(format!("{base}/v2/models/chat/generate"))
            .header("x-user-id", user)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["sluice-model"], model.as_str(), "{user} moved");
    }
    s.shutdown().await;
}
