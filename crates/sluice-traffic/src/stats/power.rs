//! Planning an experiment: units per arm for a two-sided level α and a power 1 − β, the power
//! of a given size, and the smallest effect a given size can detect. README §1.4.
//!
//! Three formulas for two proportions are in common use and legitimately disagree by a few
//! units per ten thousand; each is named, and tested against its own reference value:
//! - classic: the α term under H₀'s pooled variance 2p̄(1−p̄), the β term under H₁'s
//!   p₁(1−p₁) + p₂(1−p₂) (Fleiss, Levin & Paik, *Statistical Methods for Rates and Proportions*,
//!   3rd ed. §4.2, without continuity correction);
//! - unpooled: H₁'s variance in both terms;
//! - Cohen's h: the arcsine transform h = 2 asin √p₂ − 2 asin √p₁ (Cohen, *Statistical Power
//!   Analysis*, 2nd ed. §6.2), with n solved from the power function exactly as statsmodels'
//!   `NormalIndPower().solve_power(effect_size=h, ratio=1)` does; that power counts the far
//!   rejection tail too, so its n is a hair below the closed form's.
//!
//! Two means with a common σ: n = 2 (z_{1−α/2} + z_{1−β})² σ²/δ² (README §1.4); the t-based
//! `TTestIndPower` (noncentral t) is not provided. MDE for a given n: (z_{1−α/2} + z_{1−β}) ·
//! √(2p(1−p)/n) (README §1.4; GrowthBook's power docs frame it the same way).
//!
//! Sizes come back unrounded so that they can be compared and combined; [`round_up_per_arm`]
//! turns one into a plan.

use super::dist::{normal_cdf, normal_isf, normal_quantile, normal_sf};
use super::valid_alpha;

/// Which two-proportion sample-size formula (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProportionSampleSize {
    Classic,
    Unpooled,
    CohensH,
}

/// Units per arm (unrounded) for a two-sided test at `alpha` to detect the change from
/// `p_baseline` to `p_candidate` with probability `power`. `None` unless both rates are
/// strictly between 0 and 1 and differ, `alpha` and `power` are in (0, 1), and `power` is one a
/// finite sample can reach (above α/2 for the closed forms, above α for Cohen's h).
pub fn n_per_arm_two_proportions(
    p_baseline: f64,
    p_candidate: f64,
    alpha: f64,
    power: f64,
    formula: ProportionSampleSize,
) -> Option<f64> {
    let rate = |p: f64| p > 0.0 && p < 1.0;
    if !rate(p_baseline) || !rate(p_candidate) || p_baseline == p_candidate {
        return None;
    }
    let (z_alpha, z_beta) = z_pair(alpha, power)?;
    let (p1, p2) = (p_baseline, p_candidate);
    let alternative_variance = p1 * (1.0 - p1) + p2 * (1.0 - p2);
    let d2 = (p1 - p2) * (p1 - p2);
    let n = match formula {
        ProportionSampleSize::Classic => {
            let p_bar = 0.5 * (p1 + p2);
            let root = z_alpha * (2.0 * p_bar * (1.0 - p_bar)).sqrt() + z_beta * alternative_variance.sqrt();
            if root <= 0.0 {
                return None;
            }
            root * root / d2
        }
        ProportionSampleSize::Unpooled => positive_sum(z_alpha, z_beta)?.powi(2) * alternative_variance / d2,
        ProportionSampleSize::CohensH => return n_per_arm_normal_power(cohens_h(p1, p2)?, alpha, power),
    };
    Some(n)
}

/// Cohen's h = 2 asin √p_candidate − 2 asin √p_baseline, the variance-stabilised difference of
/// two rates; `None` unless both are in [0, 1].
pub fn cohens_h(p_baseline: f64, p_candidate: f64) -> Option<f64> {
    let rate = |p: f64| (0.0..=1.0).contains(&p);
    (rate(p_baseline) && rate(p_candidate)).then(|| 2.0 * p_candidate.sqrt().asin() - 2.0 * p_baseline.sqrt().asin())
}

/// Units per arm (unrounded) to detect a difference `delta` of means with a common standard
/// deviation `sigma`, by the closed form 2 (z_{1−α/2} + z_{1−β})² σ²/δ². `None` unless δ ≠ 0,
/// σ > 0, both finite, `alpha` and `power` in (0, 1) and `power` above α/2.
pub fn n_per_arm_means(delta: f64, sigma: f64, alpha: f64, power: f64) -> Option<f64> {
    if !(delta.is_finite() && delta != 0.0 && sigma.is_finite() && sigma > 0.0) {
        return None;
    }
    let (z_alpha, z_beta) = z_pair(alpha, power)?;
    Some(2.0 * positive_sum(z_alpha, z_beta)?.powi(2) * sigma * sigma / (delta * delta))
}

/// The power of the two-sided z-test with `n_per_arm` units in each arm for a standardised
/// effect (Cohen's d or h), counting both rejection tails: statsmodels'
/// `NormalIndPower().power(effect_size, nobs1=n, alpha, ratio=1)`. `None` unless the effect is
/// finite, n ≥ 0 and `alpha` in (0, 1).
pub fn power_normal(effect_size: f64, n_per_arm: f64, alpha: f64) -> Option<f64> {
    if !(effect_size.is_finite() && n_per_arm.is_finite() && n_per_arm >= 0.0 && valid_alpha(alpha)) {
        return None;
    }
    Some(two_tailed_power(effect_size, n_per_arm, normal_isf(alpha / 2.0)))
}

/// The power for two rates at `n_per_arm` each, through Cohen's h ([`power_normal`]).
pub fn power_two_proportions(p_baseline: f64, p_candidate: f64, n_per_arm: f64, alpha: f64) -> Option<f64> {
    power_normal(cohens_h(p_baseline, p_candidate)?, n_per_arm, alpha)
}

/// Φ̄(z − d√(n/2)) + Φ(−z − d√(n/2)): each arm's n enters as the effective n₁n₂/(n₁+n₂) = n/2.
fn two_tailed_power(effect_size: f64, n_per_arm: f64, z_alpha: f64) -> f64 {
    let shift = effect_size * (0.5 * n_per_arm).sqrt();
    normal_sf(z_alpha - shift) + normal_cdf(-z_alpha - shift)
}

/// Units per arm (unrounded) at which [`power_normal`] reaches `power`, solved to full precision
/// where statsmodels' `solve_power` stops at its bracketing tolerance (1e-5 in n). `None`
/// unless the effect is finite and non-zero, `alpha` in (0, 1) and `power` in (α, 1): at n = 0
/// the power already is α.
pub fn n_per_arm_normal_power(effect_size: f64, alpha: f64, power: f64) -> Option<f64> {
    if !(effect_size.is_finite() && effect_size != 0.0 && valid_alpha(alpha) && power > alpha && power < 1.0) {
        return None;
    }
    let d = effect_size.abs();
    let z_alpha = normal_isf(alpha / 2.0);
    let shortfall = |n: f64| two_tailed_power(d, n, z_alpha) - power;
    // The one-tail closed form overshoots (the far tail only adds power): a bracket from the
    // start, widened only in case rounding says otherwise.
    let mut hi = 2.0 * (z_alpha + normal_quantile(power)).powi(2) / (d * d);
    let mut lo = 0.0;
    while shortfall(hi) < 0.0 {
        lo = hi;
        hi *= 2.0;
        if !hi.is_finite() {
            return None;
        }
    }
    // Bisection: the power is monotone in n, and 60-odd halvings reach the last bit.
    while hi - lo > 2.0 * f64::EPSILON * hi {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if shortfall(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(0.5 * (lo + hi))
}

/// The smallest absolute difference in rate detectable from `p_baseline` with `n_per_arm` units
/// in each arm: (z_{1−α/2} + z_{1−β}) √(2p(1−p)/n), both arms' variance taken at the baseline.
/// `None` unless p is in (0, 1), n > 0, `alpha` and `power` in (0, 1) and `power` above α/2.
pub fn mde_two_proportions(p_baseline: f64, n_per_arm: f64, alpha: f64, power: f64) -> Option<f64> {
    if !(p_baseline > 0.0 && p_baseline < 1.0 && n_per_arm.is_finite() && n_per_arm > 0.0) {
        return None;
    }
    let (z_alpha, z_beta) = z_pair(alpha, power)?;
    Some(positive_sum(z_alpha, z_beta)? * (2.0 * p_baseline * (1.0 - p_baseline) / n_per_arm).sqrt())
}

/// An unrounded size as a plan: the next whole unit up. A size within 1e-9 relative of a whole
/// number is taken as that number, so that 3000.0000000000005 (rounding, not need) does not
/// cost a unit. `None` for a negative, non-finite or unrepresentable size.
pub fn round_up_per_arm(n: f64) -> Option<u64> {
    if !(n.is_finite() && n >= 0.0 && n < u64::MAX as f64) {
        return None;
    }
    let nearest = n.round();
    let planned = if (n - nearest).abs() <= 1e-9 * nearest.max(1.0) { nearest } else { n.ceil() };
    Some(planned as u64)
}

/// (z_{1−α/2}, z_{1−β}), or `None` when `alpha` or `power` is outside (0, 1).
fn z_pair(alpha: f64, power: f64) -> Option<(f64, f64)> {
    (valid_alpha(alpha) && power > 0.0 && power < 1.0).then(|| (normal_isf(alpha / 2.0), normal_quantile(power)))
}

/// z_{1−α/2} + z_{1−β} when positive (power above α/2); a size needs it so.
fn positive_sum(z_alpha: f64, z_beta: f64) -> Option<f64> {
    let sum = z_alpha + z_beta;
    (sum > 0.0).then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::super::reference::{assert_rel, at, cases, count, num};
    use super::*;

    /// The closed forms, over the same normal quantiles scipy's: rounding only.
    const CLOSED_FORM: f64 = 1e-12;
    /// Sizes statsmodels solved numerically, to its own tolerance (brentq, xtol = 1e-5 units).
    const STATSMODELS_SOLVE: f64 = 1e-9;

    #[test]
    fn z_constants_match_scipy() {
        let r = at("sample_size_power");
        assert_rel("constants", "z_0.975", normal_isf(0.025), num(r, "z_0.975"), 1e-15);
        assert_rel("constants", "z_0.80", normal_quantile(0.8), num(r, "z_0.80"), 1e-15);
        assert_rel("constants", "z_0.90", normal_quantile(0.9), num(r, "z_0.90"), 1e-15);
    }

    #[test]
    fn two_proportion_sizes_reproduce_their_own_formulas() {
        for (name, case) in cases("sample_size_power/two_proportions") {
            let (p1, p2) = (num(case, "p_control"), num(case, "p_treatment"));
            let (alpha, power) = (num(case, "alpha_two_sided"), num(case, "power"));
            let n = |formula| n_per_arm_two_proportions(p1, p2, alpha, power, formula).expect("valid plan");
            let want = num(case, "n_per_arm_classic_pooled_null_formula");
            assert_rel(&name, "classic", n(ProportionSampleSize::Classic), want, CLOSED_FORM);
            let want = num(case, "n_per_arm_unpooled_formula");
            assert_rel(&name, "unpooled", n(ProportionSampleSize::Unpooled), want, CLOSED_FORM);
            assert_rel(&name, "cohens_h", cohens_h(p1, p2).unwrap(), num(case, "cohens_h"), CLOSED_FORM);
            // statsmodels stops its root search at brentq's xtol = 1e-5 units; ours is solved to
            // the last bit. What differs is statsmodels' residual: ≤ 1.4e-11 relative here.
            let got = n(ProportionSampleSize::CohensH);
            assert_rel(&name, "Cohen's h n", got, num(case, "n_per_arm_statsmodels_cohens_h"), STATSMODELS_SOLVE);
            // Ours is the exact root: the power there is the target to the last bits.
            let reached = power_two_proportions(p1, p2, got, alpha).unwrap();
            assert_rel(&name, "power at the solved n", reached, power, 1e-14);
        }
    }

    #[test]
    fn two_mean_sizes_reproduce_closed_form_and_statsmodels() {
        for (name, case) in cases("sample_size_power/two_means") {
            let (delta, sigma) = (num(case, "mde_abs"), num(case, "sigma"));
            let (alpha, power) = (num(case, "alpha_two_sided"), num(case, "power"));
            let got = n_per_arm_means(delta, sigma, alpha, power).expect("valid plan");
            assert_rel(&name, "closed form z", got, num(case, "n_per_arm_closed_form_z"), CLOSED_FORM);
            let got = n_per_arm_normal_power(delta / sigma, alpha, power).expect("valid plan");
            // statsmodels' residual reaches 4e-10 relative (1.4e-6 units) on the first case.
            let want = num(case, "n_per_arm_statsmodels_NormalIndPower");
            assert_rel(&name, "NormalIndPower n", got, want, STATSMODELS_SOLVE);
        }
    }

    #[test]
    fn power_and_mde_reproduce_statsmodels() {
        for (name, case) in cases("sample_size_power/power_given_n") {
            let n = count(case, "n_per_arm") as f64;
            let got = power_two_proportions(num(case, "p_control"), num(case, "p_treatment"), n, 0.05).unwrap();
            assert_rel(&name, "power", got, num(case, "power_statsmodels_cohens_h"), CLOSED_FORM);
        }
        for (name, case) in cases("sample_size_power/mde_given_n") {
            let n = count(case, "n_per_arm") as f64;
            let got = mde_two_proportions(num(case, "p_control"), n, num(case, "alpha_two_sided"), num(case, "power"));
            assert_rel(&name, "mde", got.unwrap(), num(case, "mde_abs_approx"), CLOSED_FORM);
        }
    }

    #[test]
    fn sizes_round_up_to_a_plan() {
        assert_eq!(round_up_per_arm(14_744.104_836_925_611), Some(14_745));
        assert_eq!(round_up_per_arm(3_000.000_000_000_000_5), Some(3000));
        assert_eq!(round_up_per_arm(0.2), Some(1));
        assert_eq!(round_up_per_arm(0.0), Some(0));
        assert_eq!(round_up_per_arm(-1.0), None);
        assert_eq!(round_up_per_arm(f64::NAN), None);
    }

    #[test]
    fn impossible_plans_are_refused() {
        use ProportionSampleSize::*;
        for formula in [Classic, Unpooled, CohensH] {
            assert_eq!(n_per_arm_two_proportions(0.1, 0.1, 0.05, 0.8, formula), None, "{formula:?}: no effect");
            assert_eq!(n_per_arm_two_proportions(0.0, 0.1, 0.05, 0.8, formula), None, "{formula:?}: rate 0");
            assert_eq!(n_per_arm_two_proportions(0.1, 0.11, 0.0, 0.8, formula), None, "{formula:?}: alpha");
            assert_eq!(n_per_arm_two_proportions(0.1, 0.11, 0.05, 1.0, formula), None, "{formula:?}: power");
            assert_eq!(n_per_arm_two_proportions(0.1, 0.11, 0.05, 0.01, formula), None, "{formula:?}: power < α/2");
        }
        assert_eq!(n_per_arm_normal_power(0.1, 0.05, 0.04), None, "power below α: n = 0 already has it");
        assert_eq!(n_per_arm_means(0.0, 1.0, 0.05, 0.8), None);
        assert_eq!(n_per_arm_means(1.0, 0.0, 0.05, 0.8), None);
        assert_eq!(mde_two_proportions(0.1, 0.0, 0.05, 0.8), None);
        assert_eq!(power_normal(0.1, -1.0, 0.05), None);
        assert_eq!(cohens_h(1.5, 0.1), None);
        // A decrease needs as many units as the same increase.
        let down = n_per_arm_normal_power(-0.1, 0.05, 0.8).unwrap();
        assert_eq!(down, n_per_arm_normal_power(0.1, 0.05, 0.8).unwrap());
        assert_rel("n = 0", "power", power_normal(0.3, 0.0, 0.05).unwrap(), 0.05, 1e-15);
    }
}
