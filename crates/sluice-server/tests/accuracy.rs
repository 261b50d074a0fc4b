//! Does the served model compute what the model computes? Real email text (ham from the
//! SpamAssassin set) scored through `/v1/completions` (echo, logprobs, max_tokens 0) against
//! candle's own `quantized_llama::ModelWeights` on the same GGUF and the same token ids.
//!
//! Both run with candle's `CANDLE_DEQUANTIZE_ALL`: every matmul on dequantized `f32` weights.
//! By default both quantize activations to int8 per 32 values, and that rounding amplifies the
//! last-bit differences of any two summation orders (Sluice's AVX2 kernel and attention loop
//! against candle's) into per-token differences of ~0.05 nats: two equally valid computations
//! whose perplexities over a few hundred tokens differ by about 1 % either way. Without it the
//! comparison is exact, so a wrong rotary table, norm, mask, cache position or prompt chunking
//! shows at once. This process sets the switch for itself (the test is alone in its binary);
//! the int8 path is compared on a longer text by `gen-bench perplexity` (docs/benchmarks.md),
//! and its Q4_1 kernel against candle's matmul by sluice-llm's unit tests.
//!
//! The models folder: `SLUICE_MODELS`, else `$SLUICE_HOME/models`, else
//! `~/.local/share/sluice/models` (where scripts/setup.sh puts it).

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};
use sluice_llm::eval;
use sluice_server::{EngineOptions, ServerConfig};

/// The models folder (`SLUICE_MODELS`, …); a missing SmolLM2 fails the test with how to get it.
fn models() -> PathBuf {
    sluice_test_models::model_path("smollm2-135m-instruct/model.gguf");
    sluice_test_models::models_dir()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_logprobs_and_perplexity_match_candles_llama() {
    // Before anything reads it: candle caches the switch per thread on first use.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let smollm = models().join("smollm2-135m-instruct");
    let tokenizer = tokenizers::Tokenizer::from_file(smollm.join("tokenizer.json")).unwrap();
    let jsonl = models().join("datasets/spamassassin/spamassassin.jsonl");
    // Windows longer than the engine's 512-token step budget are fed, and scored, in chunks.
    let windows = eval::ham_windows(&jsonl, &tokenizer, 700, 600).unwrap();
    assert!(windows.iter().any(|w| w.len() > 512), "{:?}", windows.iter().map(Vec::len).collect::<Vec<_>>());

    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("smollm/1")).unwrap();
    std::os::unix::fs::symlink(smollm.join("model.gguf"), repo.path().join("smollm/1/model.gguf")).unwrap();
    std::os::unix::fs::symlink(smollm.join("tokenizer.json"), repo.path().join("smollm/tokenizer.json")).unwrap();
    let s = start_server(repo.path(), EngineOptions::default(), ServerConfig::default()).await;
    let url = format!("http://{}/v1/completions", s.http_addr);
    let c = reqwest::Client::new();
    let mut candle = eval::candle_model(&smollm.join("model.gguf")).unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for w in &windows {
        let body = json!({"model": "smollm", "prompt": w, "max_tokens": 0, "echo": true, "logprobs": 0});
        let r = c.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let lp = v["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap();
        assert_eq!(lp.len(), w.len());
        assert!(lp[0].is_null());
        ours.extend(lp[1..].iter().map(|x| x.as_f64().unwrap() as f32));
        theirs.extend(eval::candle_logprobs(&mut candle, w).unwrap());
    }
    let (p_ours, p_theirs) = (eval::perplexity(&ours), eval::perplexity(&theirs));
    let a = eval::agreement(&ours, &theirs);
    eprintln!(
        "{} windows, {} tokens scored: perplexity Sluice {p_ours:.4}, candle {p_theirs:.4}; {a:?}",
        windows.len(),
        ours.len()
    );
    assert!(p_ours > 1.5 && p_ours < 500.0, "a language model on English email: {p_ours}");
    assert!((p_ours / p_theirs - 1.0).abs() < 1e-3, "perplexity: Sluice {p_ours} vs candle {p_theirs}");
    assert!(a.max_abs < 1e-3, "per-token logprobs: {a:?}");
}
