//! Choosing the next token from logits: greedy at temperature 0, else temperature, top-k and
//! top-p (nucleus) sampling with a per-request seeded generator, so that a request with a seed
//! gets the same tokens every time.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a request asks of the sampler and of the length of its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Nucleus: keep the most likely tokens whose probabilities add up to this (1 = all).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: Option<u64>,
    /// Generation ends before the first occurrence of any of these (not included in the text).
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks use it for fixed lengths).
    pub ignore_eos: bool,
    /// Report each generated token's log-probability with this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Score the prompt: each prompt token's log-probability (after the first) with this many
    /// alternatives. With it, `max_tokens` may be 0.
    pub prompt_logprobs: Option<usize>,
}

/// The most alternatives a position reports (OpenAI's chat API allows 20).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

impl SamplingParams {
    /// A clear message for values no sampler can use.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature must be a number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.max_tokens == 0 && self.prompt_logprobs.is_none() {
            return Err("max_tokens must be at least 1 (0 only when the prompt is scored: echo with logprobs)".into());
        }
        for (name, n) in [("logprobs", self.logprobs), ("prompt_logprobs", self.prompt_logprobs)] {
            if n.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
                return Err(format!("{name} must be at most {MAX_TOP_LOGPROBS}, got {}", n.unwrap_or_default()));
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("stop sequences must not be empty strings".into());
        }
        Ok(())
    }
}

pub struct Sampler {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    rng: StdRng,
}

impl Sampler {
    pub fn new(p: &SamplingParams) -> Sampler {
        let rng = match p.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Sampler { temperature: p.temperature, top_p: p.top_p, top_k: p.top_k, rng }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 || self.top_k == 1 {
            return argmax(logits);
        }
        // Candidates sorted by logit, cut by top-k before anything is exponentiated.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = if self.top_k == 0 { logits.len() } else { self.top_k.min(logits.len()) };
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
            idx.truncate(k);
        }
        idx.sort_unstable_by(by_logit);
        let max = logits[idx[0] as usize];
        let mut probs: Vec<f32> = idx.iter().map(|&i| ((logits[i as usize] - max) / self.temperature).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    acc += p;
                    acc >= self.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (p, &i) in probs.iter().zip(&idx) {
            r -= p;
            if r <= 0.0 {
                return i;
            }
        }
        idx[probs.len() - 1]
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed: Some(seed), ..Default::default() }
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let mut s = Sampler::new(&params(0.0, 0, 1.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(&params(5.0, 1, 1.0, 1));
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0]), 1);
        }
    }

    #[test]
    fn top_k_never_picks_outside_the_k_best() {
        let mut s = Sampler::new(&params(10.0, 2, 1.0, 7));
        let logits = [0.0, 1.0, 5.0, 4.0, 0.5];
        for _ in 0..500 {
            let t = s.sample(&logits);
            assert!(t == 2 || t == 3, "picked {t}");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ~0.84, 0.11, 0.04, ...: top_p 0.9 keeps the first two.
        let logits = [4.0, 2.0, 1.0, -3.0];
        let mut s = Sampler::new(&params(1.0, 0, 0.9, 3));
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert!(seen[0] > 1500 && seen[1] > 50, "{seen:?}");
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with p = 0.25 / 0.75.
        let logits = [0.0, 3f32.ln()];
        let mut s = Sampler::new(&params(1.0, 0, 1.0, 11));
        let ones = (0..4000).filter(|_| s.sample(&logits) == 1).count();
        assert!((2800..3200).contains(&ones), "{ones}");
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 / 4.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(&params(1.0, 0, 0.95, seed));
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let p = SamplingParams { top_p: 0.0, ..Default::default() };
        assert!(p.check().unwrap_err().contains("top_p"));
        let p = SamplingParams { temperature: -1.0, ..Default::default() };
        assert!(p.check().unwrap_err().contains("temperature"));
        let p = SamplingParams { max_tokens: 0, ..Default::default() };
        assert!(p.check().unwrap_err().contains("max_tokens"));
        let p = SamplingParams { logprobs: Some(21), ..Default::default() };
        assert!(p.check().unwrap_err().contains("logprobs"));
    }

    #[test]
    fn a_scored_prompt_may_ask_for_no_tokens() {
        let p = SamplingParams { max_tokens: 0, prompt_logprobs: Some(0), ..Default::default() };
        assert_eq!(p.check(), Ok(()));
    }
}
