//! The sample-ratio-mismatch guardrail: README §3. Before any metric of an experiment is read,
//! the units each arm received are compared with the configured weights by a chi-square
//! goodness-of-fit test, E_i = w_i/Σw · ΣO, χ² = Σ (O_i − E_i)²/E_i, df = k − 1, p = P(χ²_df > χ²):
//! GrowthBook's `check_srm` (gbstats `utils.py`), which is scipy's `chisquare` against those
//! expectations. A mismatch means assignment or logging is broken (in a model server: only
//! successful responses logged while one arm errors more; retries or timeouts handled
//! differently per arm), and every comparison of the arms is then suspect.
//!
//! The default threshold is p < 0.001, GrowthBook's (its SRM docs): mismatches are rare, so at
//! 0.05 about half the alerts would be false, at 0.001 about 2 %. The test is for one look; a
//! check repeated at every look should use a stricter threshold or a sequential test
//! (README §3; not provided here).

use super::dist::chi_square_sf;

/// GrowthBook's default SRM threshold on the p-value.
pub const SRM_THRESHOLD: f64 = 0.001;

/// The outcome of one SRM check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SrmCheck {
    /// Σ (O − E)²/E over the arms with positive weight.
    pub chi_square: f64,
    /// The number of arms with positive weight, less one.
    pub df: usize,
    pub p_value: f64,
    /// Units observed in arms with zero (or negative) weight, which the test leaves out. More
    /// than zero means units reached an arm configured to receive none: a mismatch of its own
    /// if the weights did not change while the counts were taken.
    pub skipped_units: u64,
}

impl SrmCheck {
    /// Whether the counts contradict the weights at `threshold` (p < threshold).
    pub fn mismatch_at(&self, threshold: f64) -> bool {
        self.p_value < threshold
    }

    /// [`Self::mismatch_at`] the default [`SRM_THRESHOLD`].
    pub fn mismatch(&self) -> bool {
        self.mismatch_at(SRM_THRESHOLD)
    }
}

/// The chi-square SRM test of `observed` units per arm against the arms' `weights` (any
/// positive scale; they need not sum to 1). Arms with weight ≤ 0 are skipped, as GrowthBook
/// skips them, but here entirely: their units count neither in the total the expectations
/// share nor in df (GrowthBook keeps both, which lets a zero-weight arm's units inflate the
/// other arms' expectations); they are reported as [`SrmCheck::skipped_units`] instead.
///
/// `None` when the slices differ in length, a weight is not finite, fewer than two arms have
/// positive weight, or those arms have no units at all (nothing to test: GrowthBook answers
/// p = 1 there).
pub fn srm_chi_square(observed: &[u64], weights: &[f64]) -> Option<SrmCheck> {
    if observed.len() != weights.len() || weights.iter().any(|w| !w.is_finite()) {
        return None;
    }
    let arms: Vec<(f64, f64)> =
        observed.iter().zip(weights).filter(|(_, &w)| w > 0.0).map(|(&o, &w)| (o as f64, w)).collect();
    let skipped_units = observed.iter().zip(weights).filter(|(_, &w)| w <= 0.0).map(|(&o, _)| o).sum();
    let total: f64 = arms.iter().map(|(o, _)| o).sum();
    let total_weight: f64 = arms.iter().map(|(_, w)| w).sum();
    if arms.len() < 2 || total <= 0.0 {
        return None;
    }
    let chi_square = arms
        .iter()
        .map(|&(o, w)| {
            let expected = w / total_weight * total;
            (o - expected) * (o - expected) / expected
        })
        .sum();
    let df = arms.len() - 1;
    Some(SrmCheck { chi_square, df, p_value: chi_square_sf(chi_square, df as f64), skipped_units })
}

#[cfg(test)]
mod tests {
    use super::super::reference::{assert_rel, at, cases, count, num};
    use super::*;

    #[test]
    fn reproduces_scipy_chisquare() {
        assert_eq!(num(at("srm_chi_square"), "threshold_commonly_used"), SRM_THRESHOLD);
        for (name, case) in cases("srm_chi_square/cases") {
            let list = |key: &str| case[key].as_array().unwrap_or_else(|| panic!("{name}: {key}")).clone();
            let observed: Vec<u64> = list("observed").iter().map(|v| v.as_u64().expect("count")).collect();
            let weights: Vec<f64> = list("weights").iter().map(|v| v.as_f64().expect("weight")).collect();
            let got = srm_chi_square(&observed, &weights).unwrap_or_else(|| panic!("{name}: no check"));
            let (total, weight): (u64, f64) = (observed.iter().sum(), weights.iter().sum());
            for (i, (w, e)) in weights.iter().zip(list("expected")).enumerate() {
                let expected = w / weight * total as f64;
                assert_rel(&name, &format!("expected[{i}]"), expected, e.as_f64().unwrap(), 1e-15);
            }
            // Closed form over exact counts; the weights (0.95, 0.05, …) carry their decimal
            // rounding into E, as they do in scipy.
            assert_rel(&name, "chi2", got.chi_square, num(case, "chi2"), 1e-12);
            assert_eq!(got.df as u64, count(case, "df"), "{name}: df");
            // Through the incomplete gamma function (erfc for df = 1, exp for df = 2).
            assert_rel(&name, "p", got.p_value, num(case, "p_value"), 1e-12);
            assert_eq!(got.mismatch(), case["flag_at_0.001"].as_bool().unwrap(), "{name}: flag");
            assert_eq!(got.skipped_units, 0);
        }
    }

    #[test]
    fn weights_need_not_sum_to_one_and_zero_weights_are_skipped() {
        let scaled = srm_chi_square(&[94_650, 5350], &[95.0, 5.0]).unwrap();
        let unit = srm_chi_square(&[94_650, 5350], &[0.95, 0.05]).unwrap();
        assert_rel("scaled weights", "chi2", scaled.chi_square, unit.chi_square, 1e-12);
        let with_idle = srm_chi_square(&[94_650, 17, 5350, 0], &[0.95, 0.0, 0.05, -1.0]).unwrap();
        assert_eq!((with_idle.chi_square, with_idle.df, with_idle.skipped_units), (unit.chi_square, 1, 17));
        assert!(with_idle.mismatch() && !with_idle.mismatch_at(1e-9));
    }

    #[test]
    fn nothing_to_test_is_none() {
        assert_eq!(srm_chi_square(&[10, 10], &[0.5]), None, "lengths differ");
        assert_eq!(srm_chi_square(&[10, 10], &[0.5, f64::NAN]), None, "NaN weight");
        assert_eq!(srm_chi_square(&[10, 10], &[1.0, 0.0]), None, "one weighted arm");
        assert_eq!(srm_chi_square(&[0, 0], &[0.5, 0.5]), None, "no units");
        assert_eq!(srm_chi_square(&[], &[]), None);
        let balanced = srm_chi_square(&[500, 500], &[1.0, 1.0]).unwrap();
        assert_eq!((balanced.chi_square, balanced.p_value), (0.0, 1.0));
    }
}
