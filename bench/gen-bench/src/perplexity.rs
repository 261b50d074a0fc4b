//! `gen-bench perplexity`: does Sluice compute what the model computes? The same text, as the
//! same token ids, scored two ways:
//!
//! * served: `target/release/sluice serve`, `/v1/completions` with `echo`, `logprobs: 0` and
//!   `max_tokens: 0` (what lm-evaluation-harness asks for a log-likelihood), one request per
//!   window;
//! * candle: `quantized_llama::ModelWeights` in-process on the same GGUF, one position per
//!   forward pass (its forward returns the last position's logits only).
//!
//! The text is ham email from the SpamAssassin set, in the file's order, one window per email
//! (cut to `--window` tokens), until `--tokens` tokens. Perplexities are deterministic: one run.
//!
//! Twice: as served by default (Q4_1 weights, int8 activations on both sides), and with
//! candle's `CANDLE_DEQUANTIZE_ALL` on both sides (f32 weights, no activation rounding), where
//! the two must agree to float precision.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};
use sluice_llm::eval;

use crate::{repo_root, start_server};

#[derive(Args)]
pub struct PerplexityArgs {
    /// The Sluice binary (default: <repo root>/target/release/sluice).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// The shared models folder, holding smollm2-135m-instruct/ and datasets/spamassassin/
    /// (default: $SLUICE_MODELS, else $SLUICE_HOME/models, else ~/.local/share/sluice/models).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Tokens of text, over all windows.
    #[arg(long, default_value_t = 3000)]
    tokens: usize,
    /// Most tokens in one window (one email).
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Where to write the JSON results (default: <repo root>/bench/results/perplexity.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn models_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    let dir = arg.unwrap_or_else(sluice_test_models::models_dir);
    if !dir.join("smollm2-135m-instruct/model.gguf").is_file() {
        bail!("{} has no smollm2-135m-instruct: run scripts/setup.sh or pass --models", dir.display());
    }
    Ok(dir)
}

/// One comparison: perplexities, agreement and scoring times.
struct Measured {
    ours: f64,
    theirs: f64,
    agreement: eval::Agreement,
    served_s: f64,
    candle_s: f64,
}

/// Scores the windows through a fresh server and with candle; `dequantize` sets candle's
/// `CANDLE_DEQUANTIZE_ALL` for both.
async fn measure(bin: &Path, model_dir: &Path, windows: &[Vec<u32>], dequantize: bool) -> Result<Measured> {
    let env: &[(&str, &str)] = if dequantize { &[("CANDLE_DEQUANTIZE_ALL", "1")] } else { &[] };
    let server = start_server(bin, model_dir, env).await?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", server.base);
    let t0 = Instant::now();
    let mut ours = Vec::new();
    for w in windows {
        let body = json!({"model": "smollm", "prompt": w, "max_tokens": 0, "echo": true, "logprobs": 0});
        let r = client.post(&url).json(&body).send().await?;
        if !r.status().is_success() {
            bail!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default());
        }
        let v: Value = r.json().await?;
        let lp = v["choices"][0]["logprobs"]["token_logprobs"].as_array().ok_or_else(|| anyhow!("no logprobs: {v}"))?;
        if lp.len() != w.len() {
            bail!("{} logprobs for {} tokens", lp.len(), w.len());
        }
        for x in &lp[1..] {
            ours.push(x.as_f64().ok_or_else(|| anyhow!("a scored token without logprob: {v}"))? as f32);
        }
    }
    let served_s = t0.elapsed().as_secs_f64();
    drop(server);

    // candle reads its switch once per thread: a thread of its own sees this run's setting.
    let gguf = model_dir.join("model.gguf");
    let windows = windows.to_vec();
    let (theirs, candle_s) = std::thread::spawn(move || -> Result<(Vec<f32>, f64)> {
        if dequantize {
            std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
        } else {
            std::env::remove_var("CANDLE_DEQUANTIZE_ALL");
        }
        let mut candle = eval::candle_model(&gguf).map_err(anyhow::Error::msg)?;
        let t0 = Instant::now();
        let mut theirs = Vec::new();
        for w in &windows {
            theirs.extend(eval::candle_logprobs(&mut candle, w).map_err(anyhow::Error::msg)?);
        }
        Ok((theirs, t0.elapsed().as_secs_f64()))
    })
    .join()
    .map_err(|_| anyhow!("the candle thread panicked"))??;
    Ok(Measured {
        ours: eval::perplexity(&ours),
        theirs: eval::perplexity(&theirs),
        agreement: eval::agreement(&ours, &theirs),
        served_s,
        candle_s,
    })
}

pub async fn run(args: PerplexityArgs) -> Result<()> {
    let root = repo_root();
    let models = models_dir(args.models)?;
    let model_dir = models.join("smollm2-135m-instruct");
    let jsonl = models.join("datasets/spamassassin/spamassassin.jsonl");
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    let windows = eval::ham_windows(&jsonl, &tokenizer, args.tokens, args.window).map_err(anyhow::Error::msg)?;
    let total: usize = windows.iter().map(Vec::len).sum();
    let scored = total - windows.len();
    println!(
        "text: {} ham emails, {total} tokens, {scored} scored (windows of at most {})",
        windows.len(),
        args.window
    );
    let bin = args.sluice_bin.unwrap_or_else(|| root.join("target/release/sluice"));

    let mut rows = Vec::new();
    println!();
    println!("| weights × activations | candle perplexity | Sluice perplexity | Sluice / candle | mean abs logprob diff | max | candle scoring | Sluice scoring |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, dequantize) in [("Q4_1 × int8 (as served)", false), ("f32 × f32 (CANDLE_DEQUANTIZE_ALL)", true)] {
        let m = measure(&bin, &model_dir, &windows, dequantize).await?;
        println!(
            "| {name} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} s | {:.1} s |",
            m.theirs,
            m.ours,
            m.ours / m.theirs,
            m.agreement.mean_abs,
            m.agreement.max_abs,
            m.candle_s,
            m.served_s
        );
        rows.push(json!({
            "weights_activations": name, "dequantize_all": dequantize,
            "perplexity": {"sluice_served": m.ours, "candle": m.theirs, "ratio": m.ours / m.theirs},
            "logprob_abs_diff": {"mean": m.agreement.mean_abs, "max": m.agreement.max_abs},
            "seconds": {"sluice_served": m.served_s, "candle": m.candle_s},
        }));
    }
    let out = args.json.unwrap_or_else(|| root.join("bench/results/perplexity.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let result = json!({
        "text": "SpamAssassin ham emails in file order, 'Subject: <subject>\\n\\n<body>', one window each",
        "windows": windows.len(), "tokens": total, "scored_tokens": scored, "max_window": args.window,
        "runs": rows,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("\nJSON: {}", out.display());
    Ok(())
}
