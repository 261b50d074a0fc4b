//! The sample-ratio-mismatch guardrail: README §3. Before any metric of an experiment is read,
//! the units each arm received are compared with the configured weights by a chi-square
//! goodness-of-fit test, E_i = w_i/Σw · ΣO, χ² = Σ (O_i − E_i)²/E_i, df = k − 1, p = P(χ²_df > χ²):
//! GrowthBook's `check_srm` (gbstats `utils.py`), which is scipy's `chisquare` against those
//! expectations. A mismatch means assignment or logging is broken (in a model server: only
//! successful responses logged while one arm errors more; retries or timeouts handled
//! differently per arm), and every comparison of the arms is then suspect.
//!
//! The default threshold is p < 0.001, GrowthBook's (its SRM docs): mismatches are rare, so at
//! 0.05 about half the alerts would be false, at 0.001 about 2 %. The chi-square test is for one
//! look; a check repeated at every look needs the sequential test beside it
//! ([`srm_sequential_p`], README §3: GrowthBook's Dirichlet–multinomial Bayes factor, Lindon,
//! Semmens & Gotwalt 2022), whose p-value stays valid however often it is read.

use super::dist::chi_square_sf;
use super::special::ln_gamma_shift;

/// GrowthBook's default concentration of the Dirichlet prior of the sequential SRM test.
pub const SRM_CONCENTRATION: f64 = 10_000.0;

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

/// The always-valid p-value of the sequential SRM test at these counts: 1/BF (at most 1), where
/// BF is the Bayes factor of a Dirichlet–multinomial alternative (prior Dirichlet(c·θ₀), c the
/// `concentration`) against the multinomial with probabilities θ₀ = the weights:
///
/// ln BF = lnΓ(c) − lnΓ(c + n) + Σᵢ [lnΓ(c·θ₀ᵢ + Oᵢ) − lnΓ(c·θ₀ᵢ)] − Σᵢ Oᵢ ln θ₀ᵢ.
///
/// BF is a test martingale under the null, so by Ville's inequality the chance that 1/BF ever
/// falls to α, at any of however many looks, is at most α: a guardrail may read it every tick.
/// Arms with weight ≤ 0 are left out as in [`srm_chi_square`]; `None` where that gives `None`.
pub fn srm_sequential_p(observed: &[u64], weights: &[f64], concentration: f64) -> Option<f64> {
    srm_chi_square(observed, weights)?;
    if !(concentration.is_finite() && concentration > 0.0) {
        return None;
    }
    let arms: Vec<(f64, f64)> =
        observed.iter().zip(weights).filter(|(_, &w)| w > 0.0).map(|(&o, &w)| (o as f64, w)).collect();
    let total_weight: f64 = arms.iter().map(|(_, w)| w).sum();
    let n: f64 = arms.iter().map(|(o, _)| o).sum();
    let mut ln_bf = -ln_gamma_shift(concentration, n);
    for (o, w) in arms {
        let theta = w / total_weight;
        let a = concentration * theta;
        ln_bf += if o > 0.0 { ln_gamma_shift(a, o) } else { 0.0 } - o * theta.ln();
    }
    Some((-ln_bf).exp().min(1.0))
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

    #[test]
    fn the_sequential_srm_p_value_matches_an_independent_computation() {
        // ln BF from Python's math.lgamma (the formula above, concentration 10 000).
        for (observed, weights, p) in [
            ([50_500u64, 49_500], [0.5, 0.5], 0.035204262220968854),
            ([94_650, 5_350], [95.0, 5.0], 3.4800153512161566e-05),
            ([5_000, 5_250], [0.5, 0.5], 0.3040607408444243),
        ] {
            let got = srm_sequential_p(&observed, &weights, SRM_CONCENTRATION).unwrap();
            assert!((got - p).abs() / p < 1e-9, "{observed:?}: {got} against {p}");
        }
        assert_eq!(srm_sequential_p(&[9_500, 500], &[95.0, 5.0], SRM_CONCENTRATION), Some(1.0));
        assert_eq!(srm_sequential_p(&[0, 0], &[1.0, 1.0], SRM_CONCENTRATION), None);
        assert_eq!(srm_sequential_p(&[5, 5], &[1.0, 1.0], 0.0), None);
    }

    #[test]
    fn the_sequential_srm_test_keeps_its_level_read_at_every_look_where_chi_square_does_not() {
        // A fair 50/50 split read after every 20 units up to 4000, 400 times over, at 0.05.
        let mut state = 5u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut sequential, mut chi) = (0, 0);
        for _ in 0..400 {
            let mut counts = [0u64; 2];
            let (mut s, mut c) = (false, false);
            for _ in 0..200 {
                for _ in 0..20 {
                    counts[usize::from(next() < 0.5)] += 1;
                }
                s |= srm_sequential_p(&counts, &[1.0, 1.0], SRM_CONCENTRATION).unwrap() < 0.05;
                c |= srm_chi_square(&counts, &[1.0, 1.0]).unwrap().p_value < 0.05;
            }
            sequential += usize::from(s);
            chi += usize::from(c);
        }
        assert!(sequential <= 20, "sequential: {sequential} of 400 false alarms at 0.05");
        assert!(chi > 40, "chi-square peeked should exceed its level: {chi} of 400");
    }
}
