//! A cascade answers with the first stage that is confident enough. A stage's confidence is the
//! largest value of one of its outputs per row (probabilities), or of their softmax (logits); a
//! batch of several rows is only as confident as its least confident row, since one answer
//! covers them all.

/// The confidence of one stage's output: per row of `row_len` values, the largest probability;
/// the smallest of those over the rows. `None` for an empty output or a row length of 0.
pub fn confidence(values: &[f32], row_len: usize, softmax: bool) -> Option<f32> {
    if values.is_empty() || row_len == 0 || !values.len().is_multiple_of(row_len) {
        return None;
    }
    values.chunks(row_len).map(|row| if softmax { max_softmax(row) } else { max_of(row) }).reduce(f32::min)
}

fn max_of(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The largest softmax probability of a row of logits: exp(max - logsumexp), computed from the
/// maximum so that large logits do not overflow.
fn max_softmax(row: &[f32]) -> f32 {
    let m = max_of(row);
    let sum: f64 = row.iter().map(|&x| ((x - m) as f64).exp()).sum();
    (1.0 / sum) as f32
}

/// Whether a stage answers: it is confident enough, or it is the last stage. A NaN confidence
/// is never enough.
pub fn answers(confidence: Option<f32>, threshold: f32, last_stage: bool) -> bool {
    last_stage || confidence.is_some_and(|c| c >= threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_give_the_largest_per_row_and_the_weakest_row() {
        assert_eq!(confidence(&[0.1, 0.9], 2, false), Some(0.9));
        assert_eq!(confidence(&[0.1, 0.9, 0.6, 0.4], 2, false), Some(0.6));
        assert_eq!(confidence(&[], 2, false), None);
        assert_eq!(confidence(&[0.5, 0.5, 0.1], 2, false), None, "a ragged output is not a confidence");
    }

    #[test]
    fn logits_go_through_a_stable_softmax() {
        let c = confidence(&[0.0, 0.0], 2, true).unwrap();
        assert!((c - 0.5).abs() < 1e-6);
        let c = confidence(&[1000.0, 0.0], 2, true).unwrap();
        assert!((c - 1.0).abs() < 1e-6, "no overflow: {c}");
        let c = confidence(&[2.0, 1.0, 0.0], 3, true).unwrap();
        let want = 2f64.exp() / (2f64.exp() + 1f64.exp() + 1.0);
        assert!((c as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn the_threshold_decides_except_at_the_last_stage() {
        assert!(answers(Some(0.8), 0.8, false));
        assert!(!answers(Some(0.79), 0.8, false));
        assert!(!answers(None, 0.0, false));
        assert!(!answers(Some(f32::NAN), 0.0, false));
        assert!(answers(None, 0.99, true));
    }
}
