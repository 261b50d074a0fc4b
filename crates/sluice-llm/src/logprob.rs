//! Log-probabilities of tokens under the model's own distribution: the log-softmax of the raw
//! logits, before temperature, top-k or top-p shape the sampling. This is what OpenAI's
//! `logprobs` report and what evaluation harnesses sum to score a text.

pub use sluice_types::generation::TokenLogprob;

/// Scores `token` against one position's logits and picks the `top_n` most likely tokens.
///
/// The normaliser is summed in `f64`: over a 49k vocabulary an `f32` sum loses the low digits
/// that a perplexity over thousands of tokens adds up.
pub fn score(logits: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let lp = |i: u32| (logits[i as usize] as f64 - lse) as f32;
    TokenLogprob { token, logprob: lp(token), top: top_ids(logits, top_n).into_iter().map(|i| (i, lp(i))).collect() }
}

fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln()
}

/// Ids of the `n` largest logits, largest first; equal logits keep the lower id first.
fn top_ids(logits: &[f32], n: usize) -> Vec<u32> {
    let n = n.min(logits.len());
    let mut best: Vec<u32> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    // One pass with a sorted buffer of n (n ≤ 20): cheaper than sorting 49k logits per position.
    let before = |a: u32, b: u32| logits[a as usize] > logits[b as usize];
    for i in 0..logits.len() as u32 {
        if best.len() == n && !before(i, best[n - 1]) {
            continue;
        }
        let at = best.iter().position(|&b| before(i, b)).unwrap_or(best.len());
        best.insert(at, i);
        best.truncate(n);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_and_sum_to_one() {
        let logits = [1.0f32, 2.0, 3.0, 0.5];
        let total: f64 = (0..4).map(|t| (score(&logits, t, 0).logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        // log(e^3 / (e^1 + e^2 + e^3 + e^0.5))
        let want = 3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp() + 0.5f64.exp()).ln();
        assert!((score(&logits, 2, 0).logprob as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let s = score(&[1000.0, 1000.0], 0, 1);
        assert!((s.logprob - 0.5f32.ln()).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn top_n_are_the_most_likely_in_order_and_ties_keep_the_lower_id() {
        let logits = [0.1f32, 5.0, -2.0, 5.0, 3.0, 4.0];
        let s = score(&logits, 2, 3);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(s.top[0].1, s.top[1].1);
        assert!(s.top[1].1 > s.top[2].1);
        // The scored token need not be among them; its own logprob is still there.
        assert_eq!(s.token, 2);
        assert!(s.logprob < s.top[2].1);
    }

    #[test]
    fn top_n_is_bounded_by_the_vocabulary_and_may_be_empty() {
        assert_eq!(score(&[1.0, 2.0], 0, 5).top.len(), 2);
        assert!(score(&[1.0, 2.0], 0, 0).top.is_empty());
    }

    #[test]
    fn agrees_with_a_full_sort_on_a_large_vocabulary() {
        let logits: Vec<f32> =
            (0..5000u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f32 / 37.0).collect();
        let mut sorted: Vec<u32> = (0..5000).collect();
        sorted.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        assert_eq!(top_ids(&logits, 20), sorted[..20]);
    }
}
