//! Sequential testing that stays valid however often a rollout is looked at and whenever it
//! is stopped: README §2. A fixed-horizon p-value read at every look and acted on at the first
//! p < α rejects a true null far more often than α (README §2.1: 36 % at 100 looks); these do
//! not.
//!
//! - The normal-mixture mSPRT (Robbins 1970; Johari, Koomen, Pekelis & Walsh, "Peeking at A/B
//!   Tests", KDD 2017; Johari, Pekelis & Walsh, "Always Valid Inference", arXiv 1512.04922),
//!   README §2.2: with θ̂ₙ ~ N(θ, vₙ) and the alternative mixed over θ ~ N(θ₀, τ²),
//!   Λₙ = √(vₙ/(vₙ+τ²)) · exp(τ²(θ̂ₙ−θ₀)² / (2vₙ(vₙ+τ²))). The balanced known-σ form (vₙ = 2σ²/n)
//!   and the Bernoulli plug-in (vₙ = Vₙ/n) are written as the `mixtureSPRT` R package writes
//!   them (`R/mSPRT.default.R`), and tested equal to the general form.
//! - Everything is kept as ln Λ (README §2.2, implementation notes): GrowthBook exponentiates
//!   directly, and exp overflows once its exponent, about z²/2, passes 709 (z ≈ 38), which a
//!   large rollout with a real effect reaches.
//! - The always-valid p-value pₙ = min(pₙ₋₁, 1/Λₙ), p₀ = 1 (Ville's inequality; GrowthBook's
//!   sequential SRM docs: "running minimum of 1/BF_t"); H₀ is rejected at the first look with
//!   Λₙ ≥ 1/α, i.e. pₙ ≤ α (`mixtureSPRT` rejects at `out > alpha^(-1)`).
//! - The confidence sequence {θ : Λₙ(θ) < 1/α} = θ̂ₙ ± √(2vₙ(vₙ+τ²)/τ² · ln(√((vₙ+τ²)/vₙ)/α))
//!   (README §2.2, derived there), intersected over the looks: its coverage holds uniformly
//!   over n, so the intersection keeps it.
//! - τ² for a planned horizon M: b = 2 ln(1/α)/√(Mσ²), τ² = σ² Φ(−b)/(φ(b)/b − Φ(−b)) (Johari
//!   et al. as `mixtureSPRT`'s `calcTau` writes it; README §2.3), unrounded: the package rounds
//!   to two decimals and then squares what it calls τ, which we do not copy.
//! - GrowthBook's GAVI form (Waudby-Smith et al., arXiv 2103.06476, eqs 9, 155, 161; gbstats
//!   `frequentist/tests.py`): ρ from the tuning N, the e-value and half-width in its own
//!   variables; README §2.2 shows it is the mixture above with τ² = ρ²·n·SE², which the tests
//!   check.
//!
//! τ² must be fixed per experiment before the first look (README §7; GrowthBook: the tuning
//! parameter "should remain fixed"): choosing it after seeing data voids the guarantee.
//! [`SequentialTest`] takes it at construction for that reason.

use super::compare_arms::BinomialCounts;
use super::dist::{normal_cdf, normal_pdf};
use super::{valid_alpha, Interval};

/// ln(1 + τ²/v), also when τ²/v overflows (a variance near the smallest subnormal).
fn ln_one_plus_ratio(tau2: f64, variance: f64) -> f64 {
    let ratio = tau2 / variance;
    if ratio.is_finite() {
        ratio.ln_1p()
    } else {
        tau2.ln() - variance.ln()
    }
}

fn positive_finite(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// ln Λₙ of the normal-mixture mSPRT for an estimate `theta_hat` with variance `variance`
/// (Var θ̂ₙ, e.g. s₁²/n₁ + s₂²/n₂) against H₀: θ = `theta0`, mixing variance `tau2`.
/// Written as −½ ln(1 + τ²/v) + (θ̂−θ₀)²/(2v) · τ²/(v+τ²) so that nothing overflows; it is +∞
/// only if (θ̂−θ₀)²/v itself exceeds f64. `None` unless the estimates are finite and the
/// variances positive and finite.
pub fn msprt_log_lambda(theta_hat: f64, variance: f64, tau2: f64, theta0: f64) -> Option<f64> {
    if !(theta_hat.is_finite() && theta0.is_finite() && positive_finite(variance) && positive_finite(tau2)) {
        return None;
    }
    let d = theta_hat - theta0;
    Some(-0.5 * ln_one_plus_ratio(tau2, variance) + d * d / (2.0 * variance) * (tau2 / (variance + tau2)))
}

/// ln Λₙ for two normal arms of `n_per_arm` units each with known common `sigma`, in the form of
/// `mixtureSPRT`: ½ ln(2σ²/(2σ²+nτ²)) + n²τ²(Ȳₙ−X̄ₙ−θ₀)² / (4σ²(2σ²+nτ²)), its second term
/// regrouped as [n d²/(4σ²)]·[nτ²/(2σ²+nτ²)] so that n² never overflows. `diff` is Ȳₙ − X̄ₙ.
/// `None` unless the inputs are finite, σ, τ² > 0 and n ≥ 1.
pub fn msprt_log_lambda_known_sigma(diff: f64, sigma: f64, n_per_arm: f64, tau2: f64, theta0: f64) -> Option<f64> {
    let finite = diff.is_finite() && theta0.is_finite() && n_per_arm.is_finite();
    if !(finite && positive_finite(sigma) && positive_finite(tau2) && n_per_arm >= 1.0) {
        return None;
    }
    let (two_sigma2, n_tau2) = (2.0 * sigma * sigma, n_per_arm * tau2);
    let d = diff - theta0;
    Some(
        -0.5 * ln_one_plus_ratio(n_tau2, two_sigma2)
            + n_per_arm * d * d / (2.0 * two_sigma2) * (n_tau2 / (two_sigma2 + n_tau2)),
    )
}

/// ln Λₙ for two conversion rates, with the plug-in variance v = p̂₁(1−p̂₁)/n₁ + p̂₂(1−p̂₂)/n₂
/// (for equal n this is `mixtureSPRT`'s Bernoulli form with Vₙ = p̂₁(1−p̂₁) + p̂₂(1−p̂₂)). `None`
/// when an arm has no trials or more successes than trials, when both arms sit at 0 % or 100 %
/// (no variance), or for an invalid τ² or θ₀. The normal approximation wants counts: a minimum
/// (e.g. Amplitude's 25 conversions and 100 exposures per arm, README §2.3) is the caller's.
pub fn msprt_log_lambda_bernoulli(
    baseline: BinomialCounts,
    candidate: BinomialCounts,
    tau2: f64,
    theta0: f64,
) -> Option<f64> {
    let (p1, n1) = baseline.rate()?;
    let (p2, n2) = candidate.rate()?;
    msprt_log_lambda(p2 - p1, p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2, tau2, theta0)
}

/// The single-look always-valid p-value min(1, 1/Λ) = min(1, e^(−ln Λ)); the running minimum
/// over looks is [`SequentialTest`]'s.
pub fn always_valid_p(log_lambda: f64) -> f64 {
    // f64::min ignores a NaN operand: a NaN ln Λ reads as no evidence.
    (-log_lambda).exp().min(1.0)
}

/// The half-width of the 1 − α confidence sequence at this look:
/// √(2v(v+τ²)/τ² · (½ ln(1 + τ²/v) + ln(1/α))). `None` unless the variances are positive and
/// finite and `alpha` is in (0, 1).
pub fn confidence_sequence_halfwidth(variance: f64, tau2: f64, alpha: f64) -> Option<f64> {
    if !(positive_finite(variance) && positive_finite(tau2) && valid_alpha(alpha)) {
        return None;
    }
    let log_term = 0.5 * ln_one_plus_ratio(tau2, variance) - alpha.ln();
    Some((2.0 * variance * (1.0 + variance / tau2) * log_term).sqrt())
}

/// The mixing variance τ² that Johari et al. find best for a test expected to stop by `horizon`
/// observations whose per-observation variance is `sigma2`. For a difference of two arms with
/// n units each, pass σ² → 2σ² and the planned n per arm (README §2.3). `None` unless `alpha`
/// is in (0, 1) and σ², M are positive and finite.
pub fn johari_tau2(alpha: f64, sigma2: f64, horizon: f64) -> Option<f64> {
    if !(valid_alpha(alpha) && positive_finite(sigma2) && positive_finite(horizon)) {
        return None;
    }
    let b = -2.0 * alpha.ln() / (horizon * sigma2).sqrt();
    let tail = normal_cdf(-b);
    let denominator = normal_pdf(b) / b - tail;
    (denominator > 0.0).then(|| sigma2 * tail / denominator)
}

/// GrowthBook's ρ for tuning parameter N (the sample size at which a decision is most likely;
/// its default is 5000): √((−2 ln α + ln(−2 ln α + 1)) / N), Waudby-Smith et al. eq. 161.
/// `None` unless `alpha` is in (0, 1) and N is positive and finite.
pub fn gavi_rho(alpha: f64, tuning_n: f64) -> Option<f64> {
    if !(valid_alpha(alpha) && positive_finite(tuning_n)) {
        return None;
    }
    let minus_2_ln_alpha = -2.0 * alpha.ln();
    Some(((minus_2_ln_alpha + (minus_2_ln_alpha + 1.0).ln()) / tuning_n).sqrt())
}

/// The natural log of GrowthBook's e-value (eq. 155) for an estimate θ̂ with standard error
/// `se` after `n_total` units over both arms, against 0:
/// ρ²θ̂²n/SE² / (2(nρ²+1)) − ½ ln(nρ²+1). Its p-value is [`always_valid_p`] of it. `None` unless
/// the inputs are finite and se, n, ρ positive.
pub fn gavi_log_e_value(theta_hat: f64, se: f64, n_total: f64, rho: f64) -> Option<f64> {
    if !(theta_hat.is_finite() && positive_finite(se) && positive_finite(n_total) && positive_finite(rho)) {
        return None;
    }
    let spread = n_total * rho * rho + 1.0;
    Some(rho * rho * (theta_hat / se).powi(2) * n_total / (2.0 * spread) - 0.5 * spread.ln())
}

/// GrowthBook's half-width (eq. 9): √(SE²·n) · √(2(nρ²+1) ln(√(nρ²+1)/α) / (nρ)²). `None` under
/// the conditions of [`gavi_log_e_value`], or for `alpha` outside (0, 1).
pub fn gavi_halfwidth(se: f64, n_total: f64, rho: f64, alpha: f64) -> Option<f64> {
    if !(positive_finite(se) && positive_finite(n_total) && positive_finite(rho) && valid_alpha(alpha)) {
        return None;
    }
    let spread = n_total * rho * rho + 1.0;
    let n_rho = n_total * rho;
    Some(se * n_total.sqrt() * (2.0 * spread * (0.5 * spread.ln() - alpha.ln()) / (n_rho * n_rho)).sqrt())
}

/// The mixing variance under which the mSPRT is GrowthBook's GAVI test at this look:
/// τ² = ρ²·n·SE² (README §2.2). SE² shrinks as 1/n, so this stays near ρ²s² for the experiment.
/// `None` unless ρ, n and SE are positive and finite.
pub fn gavi_equivalent_tau2(rho: f64, n_total: f64, se: f64) -> Option<f64> {
    (positive_finite(rho) && positive_finite(n_total) && positive_finite(se)).then_some(rho * rho * n_total * se * se)
}

/// What one look at a [`SequentialTest`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SequentialLook {
    /// ln Λₙ at this look.
    pub log_lambda: f64,
    /// min(1, 1/Λₙ): this look alone.
    pub p_this_look: f64,
    /// The confidence sequence at this look alone.
    pub interval_this_look: Interval,
    /// The always-valid p-value: the running minimum over all looks so far.
    pub p_value: f64,
    /// The running intersection of the looks' intervals; `None` once it is empty.
    pub interval: Option<Interval>,
    /// Whether the test has rejected H₀ at its α, at this look or before.
    pub concluded: bool,
}

/// A normal-mixture mSPRT fed successive looks (θ̂ₙ, vₙ) at the same experiment: it keeps the
/// running-minimum p-value and the intersected confidence sequence, and says whether it has
/// concluded. α, τ² and θ₀ are fixed at construction, before the first look, as the guarantee
/// requires.
///
/// An empty intersection (reported as `interval: None`) means the looks disagree by more than
/// the model allows: the effect drifted during the experiment, or the variances fed in are too
/// small. It is a finding to investigate, not an estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct SequentialTest {
    alpha: f64,
    tau2: f64,
    theta0: f64,
    looks: u64,
    p_value: f64,
    interval: Option<Interval>,
    concluded_at: Option<u64>,
}

impl SequentialTest {
    /// A test at level `alpha` of H₀: θ = `theta0` with mixing variance `tau2` (see
    /// [`johari_tau2`] for choosing it). `None` unless `alpha` is in (0, 1), τ² is positive and
    /// finite and θ₀ finite.
    pub fn new(alpha: f64, tau2: f64, theta0: f64) -> Option<Self> {
        (valid_alpha(alpha) && positive_finite(tau2) && theta0.is_finite()).then_some(Self {
            alpha,
            tau2,
            theta0,
            looks: 0,
            p_value: 1.0,
            interval: Some(Interval::everything()),
            concluded_at: None,
        })
    }

    /// Takes the look at the current estimate `theta_hat` with variance `variance` (cumulative
    /// over the experiment so far, not the increment since the last look). `None`, and the test
    /// unchanged, when θ̂ is not finite or the variance is not positive and finite.
    pub fn observe(&mut self, theta_hat: f64, variance: f64) -> Option<SequentialLook> {
        let log_lambda = msprt_log_lambda(theta_hat, variance, self.tau2, self.theta0)?;
        let halfwidth = confidence_sequence_halfwidth(variance, self.tau2, self.alpha)?;
        let interval_this_look = Interval::around(theta_hat, halfwidth);
        let p_this_look = always_valid_p(log_lambda);
        self.looks += 1;
        self.p_value = self.p_value.min(p_this_look);
        self.interval = self.interval.and_then(|i| i.intersect(&interval_this_look));
        if self.concluded_at.is_none() && self.p_value <= self.alpha {
            self.concluded_at = Some(self.looks);
        }
        Some(SequentialLook {
            log_lambda,
            p_this_look,
            interval_this_look,
            p_value: self.p_value,
            interval: self.interval,
            concluded: self.concluded(),
        })
    }

    /// The always-valid p-value so far (1 before the first look).
    pub fn p_value(&self) -> f64 {
        self.p_value
    }

    /// The intersected confidence sequence so far (the whole line before the first look,
    /// `None` once empty).
    pub fn interval(&self) -> Option<Interval> {
        self.interval
    }

    /// Whether H₀ has been rejected at α; once true it stays true.
    pub fn concluded(&self) -> bool {
        self.concluded_at.is_some()
    }

    /// The look (counting from 1) at which H₀ was first rejected.
    pub fn concluded_at(&self) -> Option<u64> {
        self.concluded_at
    }

    pub fn looks(&self) -> u64 {
        self.looks
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    pub fn tau2(&self) -> f64 {
        self.tau2
    }

    pub fn theta0(&self) -> f64 {
        self.theta0
    }
}

#[cfg(test)]
mod tests {
    use super::super::dist::{normal_isf, normal_sf};
    use super::super::reference::{assert_interval, assert_rel, at, cases, count, num, pair};
    use super::*;

    /// Closed forms in log space against the same closed forms in linear space: rounding only.
    const CLOSED_FORM: f64 = 1e-12;

    #[test]
    fn single_looks_reproduce_the_reference() {
        for (name, case) in cases("msprt_normal_mixture/single_look_cases") {
            let (theta_hat, tau2) = (num(case, "diff_hat"), num(case, "tau2"));
            let n = count(case, "n_per_arm");
            let (log_lambda, variance, lambda_key) = if case.get("sigma").is_some() {
                let (sigma, theta0) = (num(case, "sigma"), num(case, "theta0"));
                let variance = 2.0 * sigma * sigma / n as f64;
                assert_rel(&name, "v", variance, num(case, "v_var_of_diff"), 1e-15);
                let johari = msprt_log_lambda_known_sigma(theta_hat, sigma, n as f64, tau2, theta0).unwrap();
                assert_rel(
                    &name,
                    "Λ (mixtureSPRT normal form)",
                    johari.exp(),
                    num(case, "Lambda_johari_balanced_form"),
                    CLOSED_FORM,
                );
                // The closed form against scipy's quadrature of the mixture integral.
                let general = msprt_log_lambda(theta_hat, variance, tau2, theta0).unwrap();
                assert_rel(
                    &name,
                    "Λ (numeric integration)",
                    general.exp(),
                    num(case, "Lambda_numeric_integration"),
                    CLOSED_FORM,
                );
                let z = (theta_hat - theta0) / variance.sqrt();
                assert_rel(&name, "fixed z", z, num(case, "z_fixed_horizon"), CLOSED_FORM);
                let p_fixed = 2.0 * normal_sf(z.abs());
                assert_rel(&name, "fixed p", p_fixed, num(case, "p_fixed_horizon_two_sided"), CLOSED_FORM);
                let fixed = normal_isf(0.025) * variance.sqrt();
                assert_rel(&name, "fixed half-width", fixed, num(case, "fixed_ci95_halfwidth"), CLOSED_FORM);
                let halfwidth = confidence_sequence_halfwidth(variance, tau2, 0.05).unwrap();
                assert_rel(&name, "CS half-width", halfwidth, num(case, "cs95_halfwidth"), CLOSED_FORM);
                assert_eq!(general.exp() >= 20.0, case["reject_at_alpha_0.05"].as_bool().unwrap(), "{name}: reject");
                (general, variance, "Lambda")
            } else {
                let baseline = BinomialCounts::new(count(case, "control_successes"), n);
                let candidate = BinomialCounts::new(count(case, "treatment_successes"), n);
                let general = msprt_log_lambda_bernoulli(baseline, candidate, tau2, 0.0).unwrap();
                let (p1, p2) = (baseline.rate().unwrap().0, candidate.rate().unwrap().0);
                let v_n = p1 * (1.0 - p1) + p2 * (1.0 - p2);
                assert_rel(&name, "V_n", v_n, num(case, "V_n"), 1e-15);
                let z = (p2 - p1) / (v_n / n as f64).sqrt();
                assert_rel(&name, "fixed z (unpooled)", z, num(case, "z_fixed_horizon_unpooled"), CLOSED_FORM);
                let generic = msprt_log_lambda(p2 - p1, v_n / n as f64, tau2, 0.0).unwrap();
                assert_rel(
                    &name,
                    "Λ (v = V_n/n)",
                    generic.exp(),
                    num(case, "Lambda_generic_v_equals_Vn_over_n"),
                    CLOSED_FORM,
                );
                (general, v_n / n as f64, "Lambda_bernoulli_form")
            };
            assert_rel(&name, lambda_key, log_lambda.exp(), num(case, lambda_key), CLOSED_FORM);
            let p = always_valid_p(log_lambda);
            assert_rel(&name, "always-valid p", p, num(case, "always_valid_p_single_look"), CLOSED_FORM);
            let halfwidth = confidence_sequence_halfwidth(variance, tau2, 0.05).unwrap();
            assert_interval(&name, "CS", Interval::around(theta_hat, halfwidth), pair(case, "cs95"), CLOSED_FORM);
        }
    }

    #[test]
    fn a_sequence_of_looks_keeps_the_running_minimum_and_intersection() {
        let mut test = SequentialTest::new(0.05, 0.01, 0.0).unwrap();
        assert_eq!((test.p_value(), test.interval(), test.looks()), (1.0, Some(Interval::everything()), 0));
        for (_, look) in cases("msprt_normal_mixture/sequence_of_looks_sigma1_tau2_0p01_alpha0p05") {
            let name = format!("look at n = {} per arm", count(look, "n_per_arm"));
            let variance = 2.0 / count(look, "n_per_arm") as f64;
            let got = test.observe(num(look, "diff_hat"), variance).unwrap();
            assert_rel(&name, "Λ", got.log_lambda.exp(), num(look, "Lambda"), CLOSED_FORM);
            assert_rel(&name, "running p", got.p_value, num(look, "p_always_valid_running_min"), CLOSED_FORM);
            assert_interval(&name, "CS this look", got.interval_this_look, pair(look, "cs95_this_look"), CLOSED_FORM);
            let running = got.interval.expect("the looks agree");
            assert_interval(&name, "CS running", running, pair(look, "cs95_running_intersection"), CLOSED_FORM);
            assert!(!got.concluded, "{name}: p stays above 0.05");
        }
        assert_eq!(test.looks(), 5);
        // A decisive look concludes, and a later weak one does not undo it.
        let strong = test.observe(0.06, 2.0 / 40_000.0).unwrap();
        assert!(strong.concluded && strong.p_value <= 0.05);
        assert_eq!(test.concluded_at(), Some(6));
        let weak = test.observe(0.0, 2.0 / 41_000.0).unwrap();
        assert!(weak.concluded && weak.p_this_look == 1.0 && weak.p_value == strong.p_value);
    }

    #[test]
    fn tau2_for_a_horizon_reproduces_the_reference() {
        for (name, case) in cases("msprt_normal_mixture/tau2_choice_johari_formula") {
            let got = johari_tau2(num(case, "alpha"), num(case, "sigma2"), num(case, "M_truncation")).unwrap();
            // Φ(−b) and φ(b) at b ≈ 0.06: the ratio carries their rounding only.
            assert_rel(&name, "tau2", got, num(case, "tau2"), CLOSED_FORM);
            assert_rel(&name, "tau", got.sqrt(), num(case, "tau"), CLOSED_FORM);
        }
        assert_eq!(johari_tau2(0.05, 0.0, 100.0), None);
        assert_eq!(johari_tau2(1.0, 1.0, 100.0), None);
    }

    #[test]
    fn growthbook_gavi_is_the_mixture_with_its_tau2() {
        for (name, case) in cases("growthbook_gavi_sequential/cases") {
            let (theta_hat, se, n) = (num(case, "theta_hat"), num(case, "se"), num(case, "n_total_both_arms"));
            let alpha = num(case, "alpha");
            let rho = gavi_rho(alpha, num(case, "tuning_N")).unwrap();
            assert_rel(&name, "rho", rho, num(case, "rho"), CLOSED_FORM);
            let log_e = gavi_log_e_value(theta_hat, se, n, rho).unwrap();
            assert_rel(&name, "e-value", log_e.exp(), num(case, "e_value"), CLOSED_FORM);
            assert_rel(&name, "p-value", always_valid_p(log_e), num(case, "p_value"), CLOSED_FORM);
            let halfwidth = gavi_halfwidth(se, n, rho, alpha).unwrap();
            assert_rel(&name, "half-width", halfwidth, num(case, "halfwidth"), CLOSED_FORM);
            assert_interval(&name, "ci", Interval::around(theta_hat, halfwidth), pair(case, "ci"), CLOSED_FORM);
            let fixed = normal_isf(alpha / 2.0) * se;
            assert_rel(&name, "fixed half-width", fixed, num(case, "fixed_halfwidth"), CLOSED_FORM);
            // The same test as the mixture with τ² = ρ² n SE².
            let tau2 = gavi_equivalent_tau2(rho, n, se).unwrap();
            assert_rel(&name, "equivalent tau2", tau2, num(case, "equivalent_msprt_tau2"), CLOSED_FORM);
            let log_lambda = msprt_log_lambda(theta_hat, se * se, tau2, 0.0).unwrap();
            assert_rel(&name, "Λ = e", log_lambda, log_e, 1e-13);
            let want = num(case, "msprt_Lambda_with_equivalent_tau2");
            assert_rel(&name, "Λ with equivalent tau2", log_lambda.exp(), want, CLOSED_FORM);
            let mixture_halfwidth = confidence_sequence_halfwidth(se * se, tau2, alpha).unwrap();
            assert_rel(&name, "mixture half-width", mixture_halfwidth, halfwidth, 1e-13);
            let want = num(case, "msprt_cs_halfwidth_with_equivalent_tau2");
            assert_rel(&name, "mixture half-width (reference)", mixture_halfwidth, want, CLOSED_FORM);
        }
    }

    #[test]
    fn huge_evidence_does_not_overflow() {
        // n = 10⁹ per arm at σ = 1 and a 0.1 difference: z² = 5·10⁶, ln Λ ≈ 2.5·10⁶, far past
        // where exp overflows (709).
        let n = 1e9;
        let log_lambda = msprt_log_lambda(0.1, 2.0 / n, 0.01, 0.0).unwrap();
        assert!(log_lambda.is_finite() && log_lambda > 2e6, "ln Λ = {log_lambda}");
        let known = msprt_log_lambda_known_sigma(0.1, 1.0, n, 0.01, 0.0).unwrap();
        assert_rel("n = 1e9", "known-σ form", known, log_lambda, 1e-12);
        assert_eq!(always_valid_p(log_lambda), 0.0);
        let log_e = gavi_log_e_value(0.1, (2.0 / n).sqrt(), 2.0 * n, gavi_rho(0.05, 5000.0).unwrap()).unwrap();
        assert!(log_e.is_finite() && log_e > 2e6);
        let mut test = SequentialTest::new(0.05, 0.01, 0.0).unwrap();
        let look = test.observe(0.1, 2.0 / n).unwrap();
        assert!(look.concluded && look.p_value == 0.0 && look.interval.unwrap().contains(0.1));
        // Even a subnormal variance saturates rather than giving NaN.
        let extreme = msprt_log_lambda(1.0, 1e-320, 1.0, 0.0).unwrap();
        assert!(extreme == f64::INFINITY && always_valid_p(extreme) == 0.0);
        assert!(confidence_sequence_halfwidth(1e-320, 1.0, 0.05).unwrap().is_finite());
    }

    #[test]
    fn invalid_looks_are_refused_and_change_nothing() {
        assert_eq!(msprt_log_lambda(0.1, 0.0, 0.01, 0.0), None);
        assert_eq!(msprt_log_lambda(f64::NAN, 1.0, 0.01, 0.0), None);
        assert_eq!(msprt_log_lambda(0.1, 1.0, 0.0, 0.0), None);
        assert_eq!(msprt_log_lambda_known_sigma(0.1, 1.0, 0.0, 0.01, 0.0), None);
        let c = BinomialCounts::new;
        assert_eq!(msprt_log_lambda_bernoulli(c(0, 10), c(0, 10), 1e-4, 0.0), None, "no variance");
        assert_eq!(msprt_log_lambda_bernoulli(c(0, 0), c(1, 10), 1e-4, 0.0), None, "no trials");
        assert_eq!(confidence_sequence_halfwidth(1.0, 0.01, 0.0), None);
        assert_eq!(gavi_rho(0.05, 0.0), None);
        assert_eq!(gavi_log_e_value(0.1, 0.0, 100.0, 0.04), None);
        assert_eq!(gavi_halfwidth(0.01, 100.0, 0.04, 1.5), None);
        assert_eq!(gavi_equivalent_tau2(0.04, 100.0, f64::NAN), None);
        assert_eq!(SequentialTest::new(0.0, 0.01, 0.0), None);
        assert_eq!(SequentialTest::new(0.05, -1.0, 0.0), None);
        let mut test = SequentialTest::new(0.05, 0.01, 0.0).unwrap();
        test.observe(0.1, 0.002).unwrap();
        let before = test.clone();
        assert_eq!(test.observe(0.1, -0.002), None);
        assert_eq!(test.observe(f64::INFINITY, 0.002), None);
        assert_eq!(test, before);
    }

    #[test]
    fn disagreeing_looks_empty_the_interval() {
        let mut test = SequentialTest::new(0.05, 0.01, 0.0).unwrap();
        test.observe(1.0, 1e-6).unwrap();
        let look = test.observe(-1.0, 1e-6).unwrap();
        assert_eq!(look.interval, None);
        assert_eq!(test.interval(), None);
        assert!(test.concluded());
    }

    /// splitmix64 (Steele, Lea & Flood 2014): enough randomness for a seeded A/A simulation.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform on (0, 1), never 0 (its logarithm is taken).
        fn uniform(&mut self) -> f64 {
            ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// Two independent standard normals (Box–Muller).
        fn normals(&mut self) -> (f64, f64) {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let angle = std::f64::consts::TAU * self.uniform();
            (r * angle.cos(), r * angle.sin())
        }
    }

    #[test]
    fn under_the_null_peeking_inflates_the_fixed_test_but_not_the_msprt() {
        // The reference's setup (README §2.1): A/A experiments, σ = 1, τ² = 0.01, a look every
        // 100 units per arm up to 10 000. Only the looks matter, so each block of 100 paired
        // differences N(0, 2σ²) is drawn as its sum, one N(0, 200σ²).
        let sim = at("msprt_normal_mixture/null_simulation");
        let (experiments, looks, step, alpha) = (4000, 100, 100.0_f64, 0.05);
        let z_crit = normal_isf(alpha / 2.0);
        let mut rng = SplitMix64(7);
        let (mut fixed_any, mut fixed_final, mut msprt_any) = (0, 0, 0);
        let mut spare = None;
        for _ in 0..experiments {
            let mut test = SequentialTest::new(alpha, 0.01, 0.0).unwrap();
            let (mut sum, mut peeked) = (0.0, false);
            for look in 1..=looks {
                let z = spare.take().unwrap_or_else(|| {
                    let (a, b) = rng.normals();
                    spare = Some(b);
                    a
                });
                sum += (2.0 * step).sqrt() * z;
                let n = step * look as f64;
                let (theta_hat, variance) = (sum / n, 2.0 / n);
                let z_fixed = theta_hat / variance.sqrt();
                peeked |= z_fixed.abs() > z_crit;
                if look == looks && z_fixed.abs() > z_crit {
                    fixed_final += 1;
                }
                test.observe(theta_hat, variance).unwrap();
            }
            fixed_any += usize::from(peeked);
            msprt_any += usize::from(test.concluded());
        }
        let share = |k: usize| k as f64 / experiments as f64;
        let (fixed_any, fixed_final, msprt_any) = (share(fixed_any), share(fixed_final), share(msprt_any));
        // Bands of about three combined standard errors around numpy's run of the same setup.
        let near = |got: f64, key: &str, band: f64| {
            let want = num(sim, key);
            assert!((got - want).abs() <= band, "{key}: {got} here, {want} in the reference");
        };
        near(fixed_any, "false_positive_rate_fixed_z_peeking_every_look", 0.035);
        near(fixed_final, "false_positive_rate_fixed_z_single_final_look", 0.015);
        near(msprt_any, "false_positive_rate_msprt_any_look", 0.01);
        assert!(fixed_any > 5.0 * alpha, "peeking at a fixed test: {fixed_any}");
        assert!(msprt_any <= alpha, "the mSPRT keeps its level under peeking: {msprt_any}");
    }
}
