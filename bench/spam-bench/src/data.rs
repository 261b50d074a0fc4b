//! Real email text from the SpamAssassin set, tokenized as the models were trained: BERT uncased
//! WordPiece from the model's `tokenizer.json`, truncated to 128 tokens, not padded.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams};

/// Longest token sequence, as the shipped tokenizer truncates.
pub const MAX_TOKENS: usize = 128;
/// Characters of `subject + ". " + body` the models were trained on.
pub const MAX_CHARS: usize = 1000;

/// The emails' texts: `spamassassin.jsonl` (`(subject + ". " + body)[:1000]`), else the `text`
/// field of `samples.jsonl`.
pub fn load_texts(models: &Path) -> Result<Vec<String>> {
    let dir = models.join("datasets/spamassassin");
    let full = dir.join("spamassassin.jsonl");
    let (file, from_samples) = if full.is_file() { (full, false) } else { (dir.join("samples.jsonl"), true) };
    let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut texts = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{}:{}", file.display(), i + 1))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
        let text =
            if from_samples { field("text").to_string() } else { format!("{}. {}", field("subject"), field("body")) };
        // Python's `[:1000]` counts code points.
        texts.push(text.chars().take(MAX_CHARS).collect());
    }
    if texts.is_empty() {
        bail!("{} holds no emails", file.display());
    }
    Ok(texts)
}

/// One email of the held-out half with its label.
pub struct Labelled {
    pub text: String,
    pub spam: bool,
}

/// The held-out emails (odd line index of `spamassassin.jsonl`, 0-based: the 3023 the models'
/// heads were not trained on), text `(subject + ". " + body)[:1000]` and label, in the fixed
/// shuffled order of [`shuffle`], the first `limit` of them.
pub fn held_out(models: &Path, limit: Option<usize>) -> Result<Vec<Labelled>> {
    let file = models.join("datasets/spamassassin/spamassassin.jsonl");
    let f = std::fs::File::open(&file)
        .with_context(|| format!("cannot open {} (the full set; scripts/setup.sh fetches it)", file.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if i % 2 == 0 || line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{}:{}", file.display(), i + 1))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
        let spam = match field("label") {
            "spam" => true,
            "ham" => false,
            other => bail!("{}:{}: label {other:?} is neither ham nor spam", file.display(), i + 1),
        };
        let text = format!("{}. {}", field("subject"), field("body")).chars().take(MAX_CHARS).collect();
        out.push(Labelled { text, spam });
    }
    if out.is_empty() {
        bail!("{} holds no held-out emails", file.display());
    }
    shuffle(&mut out);
    if let Some(n) = limit {
        out.truncate(n.max(1));
    }
    Ok(out)
}

/// Token ids of each text: special tokens added, truncated to [`MAX_TOKENS`], no padding.
pub fn tokenize(tokenizer_json: &Path, texts: &[String]) -> Result<Vec<Vec<i64>>> {
    let mut tok = Tokenizer::from_file(tokenizer_json)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", tokenizer_json.display()))?;
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
        .map_err(|e| anyhow::anyhow!("truncation: {e}"))?;
    texts
        .iter()
        .map(|t| {
            let enc = tok.encode(t.as_str(), true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
            Ok(enc.get_ids().iter().map(|&id| id as i64).collect())
        })
        .collect()
}

/// A fixed permutation (xorshift, seed 3) so that any prefix is a fair sample of the set, which
/// is stored grouped by folder (ham first, then spam).
pub fn shuffle<T>(items: &mut [T]) {
    let mut rng = Rng::new(3);
    for i in (1..items.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The emails' texts in the benchmarks' fixed shuffled order, the first `limit` of them.
pub fn texts(models: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    let mut texts = load_texts(models)?;
    shuffle(&mut texts);
    if let Some(n) = limit {
        texts.truncate(n.max(1));
    }
    Ok(texts)
}

/// Loads, shuffles and tokenizes the emails: the token ids of [`texts`], in the same order.
pub fn emails(models: &Path, model: &str, limit: Option<usize>) -> Result<Vec<Vec<i64>>> {
    tokenize(&models.join(model).join("tokenizer.json"), &texts(models, limit)?)
}

/// Token count summary: (mean, median, share at the 128 cap).
pub fn length_summary(emails: &[Vec<i64>]) -> (f64, usize, f64) {
    let mut lens: Vec<usize> = emails.iter().map(Vec::len).collect();
    lens.sort_unstable();
    let n = lens.len().max(1) as f64;
    let mean = lens.iter().sum::<usize>() as f64 / n;
    let capped = lens.iter().filter(|&&l| l >= MAX_TOKENS).count() as f64 / n;
    (mean, lens.get(lens.len() / 2).copied().unwrap_or(0), capped)
}

/// xorshift64*: enough randomness for shuffles and Poisson arrivals, and reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}
