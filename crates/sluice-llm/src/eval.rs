//! Measuring what the network computes against candle's own `quantized_llama::ModelWeights`
//! on the same GGUF and the same token ids: perplexity of a fixed text and per-token agreement
//! of log-probabilities. The accuracy test and `gen-bench perplexity` share this, so the two
//! measure the same text the same way.
//!
//! The text is real email from the SpamAssassin ham set (in the shared models folder): each
//! email is one window, scored from its second token on (the first has nothing before it).
//! Errors are text: the callers (a test, a benchmark) only print them.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};

use crate::logprob::score;

/// The token windows of a text: the first `total` tokens' worth of ham emails, in the file's
/// order, each email cut to `max_window` tokens (and at least 2, so something is scored).
pub fn ham_windows(
    jsonl: &Path,
    tokenizer: &tokenizers::Tokenizer,
    total: usize,
    max_window: usize,
) -> Result<Vec<Vec<u32>>, String> {
    let data = std::fs::read_to_string(jsonl).map_err(|e| format!("cannot read {}: {e}", jsonl.display()))?;
    let mut windows = Vec::new();
    let mut have = 0;
    for line in data.lines() {
        if have >= total {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", jsonl.display()))?;
        if v["label"] != "ham" {
            continue;
        }
        let text = email_text(v["subject"].as_str().unwrap_or(""), v["body"].as_str().unwrap_or(""));
        let enc = tokenizer.encode(text, false).map_err(|e| e.to_string())?;
        let mut ids = enc.get_ids().to_vec();
        ids.truncate(max_window.min(total - have).max(2));
        if ids.len() < 2 {
            continue;
        }
        have += ids.len();
        windows.push(ids);
    }
    if windows.is_empty() {
        return Err(format!("{} holds no ham email", jsonl.display()));
    }
    Ok(windows)
}

/// How an email reads as text.
pub fn email_text(subject: &str, body: &str) -> String {
    format!("Subject: {subject}\n\n{body}")
}

/// Candle's `ModelWeights` on a GGUF file.
pub fn candle_model(gguf: &Path) -> Result<ModelWeights, String> {
    let mut f = std::fs::File::open(gguf).map_err(|e| format!("cannot open {}: {e}", gguf.display()))?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).map_err(|e| e.to_string())?;
    ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).map_err(|e| e.to_string())
}

/// The log-probability of each token of `window` from the second on, as candle's model gives
/// it. Its forward pass returns the logits of the last position only, so the window is fed one
/// token at a time on its KV cache (position 0 starts a new cache).
pub fn candle_logprobs(model: &mut ModelWeights, window: &[u32]) -> Result<Vec<f32>, String> {
    if window.len() > MAX_SEQ_LEN {
        return Err(format!("a window of {} tokens is longer than candle's {MAX_SEQ_LEN}", window.len()));
    }
    let mut out = Vec::with_capacity(window.len().saturating_sub(1));
    for (pos, pair) in window.windows(2).enumerate() {
        let x = Tensor::new(&pair[..1], &Device::Cpu).and_then(|t| t.unsqueeze(0)).map_err(|e| e.to_string())?;
        let logits: Vec<f32> =
            model.forward(&x, pos).and_then(|l| l.squeeze(0)).and_then(|l| l.to_vec1()).map_err(|e| e.to_string())?;
        out.push(score(&logits, pair[1], 0).logprob);
    }
    Ok(out)
}

/// `exp` of the mean negative log-likelihood per scored token.
pub fn perplexity(logprobs: &[f32]) -> f64 {
    let sum: f64 = logprobs.iter().map(|&l| l as f64).sum();
    (-sum / logprobs.len() as f64).exp()
}

/// How closely two scorings of the same tokens agree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    pub tokens: usize,
    /// Mean of |a - b| over the tokens.
    pub mean_abs: f64,
    pub max_abs: f64,
}

pub fn agreement(a: &[f32], b: &[f32]) -> Agreement {
    assert_eq!(a.len(), b.len(), "the same tokens scored twice");
    let diffs = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs());
    let (sum, max) = diffs.fold((0.0, 0.0f64), |(s, m), d| (s + d, m.max(d)));
    Agreement { tokens: a.len(), mean_abs: sum / a.len().max(1) as f64, max_abs: max }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_of_a_uniform_guess_is_the_number_of_choices() {
        let lp = vec![(0.25f32).ln(); 10];
        assert!((perplexity(&lp) - 4.0).abs() < 1e-5);
    }

    #[test]
    fn agreement_reports_the_mean_and_the_worst() {
        let a = agreement(&[-1.0, -2.0, -3.0], &[-1.0, -2.5, -2.0]);
        assert_eq!(a.tokens, 3);
        assert!((a.mean_abs - 0.5).abs() < 1e-9 && (a.max_abs - 1.0).abs() < 1e-9, "{a:?}");
    }
}
