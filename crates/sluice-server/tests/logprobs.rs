//! Log-probabilities through the served API, on the real SmolLM2-135M-Instruct GGUF:
//! `/v1/completions` with `echo` and `logprobs` (whole, streamed, batched, as
//! lm-evaluation-harness asks), chat `logprobs`, clear errors. The accuracy of the scores
//! against candle's own llama: tests/accuracy.rs.
//!
//! The models folder: `SLUICE_MODELS`, else `$SLUICE_HOME/models`, else
//! `~/.local/share/sluice/models` (where scripts/setup.sh puts it).

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, ServerConfig};

/// The models folder (`SLUICE_MODELS`, …); a missing SmolLM2 fails the test with how to get it.
fn models() -> PathBuf {
    sluice_test_models::model_path("smollm2-135m-instruct/model.gguf");
    sluice_test_models::models_dir()
}

fn smollm() -> PathBuf {
    models().join("smollm2-135m-instruct")
}

/// A repository holding only `smollm` (the GGUF and its tokenizer, no config).
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = smollm();
    std::fs::create_dir_all(dir.path().join("smollm/1")).unwrap();
    std::os::unix::fs::symlink(m.join("model.gguf"), dir.path().join("smollm/1/model.gguf")).unwrap();
    std::os::unix::fs::symlink(m.join("tokenizer.json"), dir.path().join("smollm/tokenizer.json")).unwrap();
    dir
}

fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(smollm().join("tokenizer.json")).unwrap()
}

const FRANCE: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The `data:` payloads of an SSE body.
fn sse(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string()))
        .collect()
}

fn floats(v: &Value) -> Vec<Option<f64>> {
    v.as_array().unwrap().iter().map(Value::as_f64).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// What every legacy `logprobs` object must satisfy: one entry per token in each list, the
/// tokens joining to `text`, offsets in characters into it, each scored token's own logprob
/// among its `top_logprobs` (at most `n` + 1 of them), `null`s only where `unscored` says.
fn check_shape(lp: &Value, text: &str, n: usize, unscored: &[usize]) {
    let tokens = strings(&lp["tokens"]);
    let logprobs = floats(&lp["token_logprobs"]);
    let top = lp["top_logprobs"].as_array().unwrap();
    let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    assert_eq!((logprobs.len(), top.len(), offsets.len()), (tokens.len(), tokens.len(), tokens.len()), "{lp}");
    assert_eq!(tokens.concat(), text);
    let mut at = 0;
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(offsets[i], at, "offset of token {i}");
        at += t.chars().count() as u64;
        if unscored.contains(&i) {
            assert!(logprobs[i].is_none() && top[i].is_null(), "token {i} has nothing to be predicted from");
            continue;
        }
        let lp = logprobs[i].unwrap_or_else(|| panic!("token {i} is scored"));
        assert!(lp <= 0.0, "token {i}: {lp}");
        let alternatives = top[i].as_object().unwrap();
        assert!(!alternatives.is_empty() && alternatives.len() <= n + 1, "token {i}: {alternatives:?}");
        assert_eq!(alternatives[t.as_str()].as_f64(), Some(lp), "token {i} ({t:?}) among its alternatives");
        let best = alternatives.values().filter_map(Value::as_f64).fold(f64::MIN, f64::max);
        assert!(best >= lp);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_score_prompts_and_answers() {
    let repo = repo();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let url = format!("http://{}/v1/completions", s.http_addr);
    let c = reqwest::Client::new();
    let ids = tokenizer().encode(FRANCE, false).unwrap().get_ids().to_vec();
    let n = ids.len();

    // The prompt scored, nothing generated.
    let (status, v) =
        post(&c, &url, &json!({"model": "smollm", "prompt": FRANCE, "max_tokens": 0, "echo": true, "logprobs": 2}))
            .await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], FRANCE);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(
        (v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()),
        (Some(n as u64), Some(0))
    );
    check_shape(&choice["logprobs"], FRANCE, 2, &[0]);
    let scored = floats(&choice["logprobs"]["token_logprobs"]);
    assert_eq!(scored.len(), n);
    // The chat markup the model saw thousands of times is near certain ("assistant" is "ass"
    // + "istant"); the question is not.
    let tokens = strings(&choice["logprobs"]["tokens"]);
    let at = |t: &str| tokens.iter().rposition(|x| x == t).unwrap_or_else(|| panic!("no {t:?} in {tokens:?}"));
    assert!(scored[at("istant")].unwrap() > -0.5, "{tokens:?} {scored:?}");
    assert!(scored[at("What")].unwrap() < scored[at("istant")].unwrap(), "{tokens:?} {scored:?}");

    // The same prompt as token ids: the same scores; echo decodes it.
    let (_, v) =
        post(&c, &url, &json!({"model": "smollm", "prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 0})).await;
    assert_eq!(v["choices"][0]["text"], FRANCE);
    assert_eq!(floats(&v["choices"][0]["logprobs"]["token_logprobs"]), scored);

    // What lm-evaluation-harness's local-completions sends for a log-likelihood, and how it
    // reads the answer: the continuation's tokens are token_logprobs[ctxlen:-1] (the last one
    // is the generated token), greedy when each is its position's best.
    let ctxlen = n - 3;
    let (_, v) = post(
        &c,
        &url,
        &json!({"model": "smollm", "prompt": [ids], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": true}),
    )
    .await;
    let lp = &v["choices"][0]["logprobs"];
    check_shape(lp, v["choices"][0]["text"].as_str().unwrap(), 1, &[0]);
    let harness = floats(&lp["token_logprobs"]);
    assert_eq!(harness.len(), n + 1);
    assert_eq!(harness[..n], scored[..]);
    let continuation: f64 = harness[ctxlen..n].iter().map(|x| x.unwrap()).sum();
    assert!(continuation < 0.0 && continuation > -10.0, "{continuation}");
    assert_eq!(v["choices"][0]["text"], format!("{FRANCE}The"), "the generated token follows the echo");

    // Generated tokens only (no echo): greedy takes each position's best.
    let (_, v) =
        post(&c, &url, &json!({"model": "smollm", "prompt": FRANCE, "max_tokens": 4, "temperature": 0, "logprobs": 3}))
            .await;
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], "The capital of France");
    check_shape(&choice["logprobs"], "The capital of France", 3, &[]);
    let lps = floats(&choice["logprobs"]["token_logprobs"]);
    for (lp, top) in lps.iter().zip(choice["logprobs"]["top_logprobs"].as_array().unwrap()) {
        let best = top.as_object().unwrap().values().filter_map(Value::as_f64).fold(f64::MIN, f64::max);
        assert_eq!(lp.unwrap(), best);
        assert_eq!(top.as_object().unwrap().len(), 3, "the chosen token is one of the 3 best: {top}");
    }
    // The first answer token's score is the harness request's last one.
    assert!((lps[0].unwrap() - harness[n].unwrap()).abs() < 1e-4);

    // Streamed, echo and logprobs: the prompt's chunk first, then the answer's; the parts join
    // to one whole logprobs object.
    let body = json!({"model": "smollm", "prompt": FRANCE, "max_tokens": 4, "temperature": 0, "logprobs": 1, "echo": true, "stream": true});
    let r = c.post(&url).json(&body).send().await.unwrap();
    let chunks = sse(&r.text().await.unwrap());
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let (mut text, mut whole) =
        (String::new(), json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}));
    for ch in &chunks[..chunks.len() - 1] {
        let v: Value = serde_json::from_str(ch).unwrap();
        let choice = &v["choices"][0];
        text.push_str(choice["text"].as_str().unwrap());
        if let Some(lp) = choice["logprobs"].as_object() {
            for (k, list) in lp {
                whole[k].as_array_mut().unwrap().extend(list.as_array().unwrap().iter().cloned());
            }
        }
    }
    assert_eq!(text, format!("{FRANCE}The capital of France"));
    assert!(chunks[0].contains("<|im_start|>"), "the echo comes first");
    check_shape(&whole, &text, 1, &[0]);
    assert_eq!(floats(&whole["token_logprobs"])[..n], scored[..]);

    // A batch: one choice per prompt, each as if alone, whole and streamed.
    let body = json!({"model": "smollm", "prompt": [FRANCE, "Once upon a time"], "max_tokens": 3, "temperature": 0});
    let (_, v) = post(&c, &url, &body).await;
    let texts: Vec<&str> = v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    let (_, alone) =
        post(&c, &url, &json!({"model": "smollm", "prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}))
            .await;
    assert_eq!(texts, ["The capital of", alone["choices"][0]["text"].as_str().unwrap()]);
    assert_eq!(v["choices"][1]["index"], 1);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = c.post(&url).json(&streamed).send().await.unwrap();
    let chunks = sse(&r.text().await.unwrap());
    let mut by_index = [String::new(), String::new()];
    let mut finished = 0;
    for ch in chunks.iter().filter(|c| *c != "[DONE]") {
        let v: Value = serde_json::from_str(ch).unwrap();
        for choice in v["choices"].as_array().unwrap() {
            by_index[choice["index"].as_u64().unwrap() as usize].push_str(choice["text"].as_str().unwrap());
            finished += usize::from(!choice["finish_reason"].is_null());
        }
    }
    assert_eq!(by_index, [texts[0], texts[1]]);
    assert_eq!(finished, 2);
    assert_eq!(chunks.iter().filter(|c| *c == "[DONE]").count(), 1);
    let last: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 6, "usage over the batch, last");

    // Chat logprobs: one entry per generated token, the entries joining to the answer.
    let chat = json!({
        "model": "smollm", "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
        "temperature": 0, "max_tokens": 30, "logprobs": true, "top_logprobs": 2
    });
    let (_, v) = post(&c, &format!("http://{}/v1/chat/completions", s.http_addr), &chat).await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    let joined: String = content.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(joined, v["choices"][0]["message"]["content"].as_str().unwrap());
    assert!(content
        .iter()
        .all(|t| t["top_logprobs"].as_array().unwrap().len() == 2 && t["logprob"].as_f64().unwrap() <= 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_logprobs_requests_get_400_naming_the_field() {
    let repo = repo();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let url = format!("http://{}/v1/completions", s.http_addr);
    let c = reqwest::Client::new();
    let cases = [
        (json!({"prompt": "x", "logprobs": 6}), "logprobs"),
        (json!({"prompt": "x", "logprobs": -1}), "logprobs"),
        (json!({"prompt": "x", "logprobs": true}), "logprobs"),
        (json!({"prompt": "x", "echo": "yes"}), "echo"),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": [1, -2]}), "prompt"),
        (json!({"prompt": [1, 2.5]}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": [["a"]]}), "prompt"),
        (json!({"prompt": {"text": "x"}}), "prompt"),
        (json!({"prompt": [1, 49152]}), "vocabulary"),
        (json!({"prompt": [[1], [4_294_967_296u64]]}), "prompt"),
    ];
    for (mut body, field) in cases {
        body["model"] = json!("smollm");
        let (status, v) = post(&c, &url, &body).await;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{body}: {v}");
        assert!(msg.contains(field), "{body}: {msg}");
    }
    let chat = format!("http://{}/v1/chat/completions", s.http_addr);
    let m = json!([{"role": "user", "content": "x"}]);
    for (body, field) in [
        (json!({"model": "smollm", "messages": m, "top_logprobs": 2}), "logprobs"),
        (json!({"model": "smollm", "messages": m, "logprobs": true, "top_logprobs": 21}), "top_logprobs"),
        (json!({"model": "smollm", "messages": m, "logprobs": 3}), "logprobs"),
    ] {
        let (status, v) = post(&c, &chat, &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(field), "{body}: {v}");
    }
}
