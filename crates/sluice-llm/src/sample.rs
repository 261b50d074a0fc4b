//! Choosing the next token from logits: greedy at temperature 0, else temperature, top-k and
//! top-p (nucleus) sampling with a per-request seeded generator, so that a request with a seed
//! gets the same tokens every time.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
pub use sluice_types::generation::{SamplingParams, MAX_TOP_LOGPROBS};

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
