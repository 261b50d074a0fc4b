//! The statistics of A/B experiments and rollout guardrails, as pure functions and plain
//! structs over numbers: no threads, clocks, I/O or async. An endpoint that splits or ramps
//! traffic feeds them counts and means; they say whether the candidate differs, how many units
//! that takes, whether it may be read yet, and which units it gets.
//!
//! - [`dist`]: the normal, Student's t and chi-square distributions, with the special
//!   functions under them;
//! - [`compare_arms`]: fixed-horizon comparisons, the two-proportion z-test, intervals for a
//!   difference of proportions, Welch's t-test, and mergeable running moments for per-arm means;
//! - [`power`]: sample size per arm, power for a given size, and the minimum detectable effect;
//! - [`sequential`]: the normal-mixture mSPRT that survives looking at every step (always-valid
//!   p-values and confidence sequences), its choice of mixing variance, GrowthBook's GAVI form,
//!   and [`SequentialTest`], which is fed successive looks;
//! - [`srm`]: the sample-ratio-mismatch guardrail, a chi-square test of assignment counts
//!   against configured weights;
//! - [`bucketing`]: GrowthBook's fnv32a hash buckets and the single-threshold canary ramp;
//! - [`histogram`]: a mergeable latency histogram with distribution-free bounds on a quantile.
//!
//! Every formula and reference value comes from the experiment-statistics brief (its README,
//! §1–§3, §5 and §7, and `reference_values.json`, computed with scipy 1.17.1 and statsmodels
//! 0.15.0); each file names the sections and the published sources it implements. The unit
//! tests reproduce every value of that file (a copy lives in
//! `crates/sluice-traffic/tests/data/experiment_reference_values.json`).
//!
//! Conventions: the *baseline* is the stable model (arm A, control) and the *candidate* the new
//! one (arm B, treatment); every difference is candidate − baseline. `alpha` is the two-sided
//! level unless a function says otherwise. Inputs that leave a statistic undefined (no trials,
//! a zero variance, fewer than two observations, `alpha` outside (0, 1)) give `None`, never NaN
//! and never a panic; the distribution functions of [`dist`] are total instead, like `f64`'s
//! own, and give NaN outside their domain.

pub mod bucketing;
pub mod compare_arms;
pub mod dist;
pub mod histogram;
pub mod power;
pub mod sequential;
mod special;
pub mod srm;

#[cfg(test)]
mod reference;

/// The relative error of `got` against `want` (0 when equal, infinities included), for tests.
#[cfg(test)]
pub(crate) fn rel(got: f64, want: f64) -> f64 {
    if got == want {
        0.0
    } else {
        ((got - want) / want).abs()
    }
}

pub use bucketing::{growthbook_hash, routes_to_candidate, HashVersion};
pub use compare_arms::{
    proportion_difference_interval, two_proportion_z_test, welch_t_test, welch_t_test_samples, wilson_interval,
    BinomialCounts, DifferenceInterval, MeanSummary, ProportionZTest, RunningMoments, WelchTest,
};
pub use power::{
    cohens_h, mde_two_proportions, n_per_arm_means, n_per_arm_normal_power, n_per_arm_two_proportions, power_normal,
    power_two_proportions, round_up_per_arm, ProportionSampleSize,
};
pub use sequential::{
    always_valid_p, confidence_sequence_halfwidth, gavi_equivalent_tau2, gavi_halfwidth, gavi_log_e_value, gavi_rho,
    johari_tau2, msprt_log_lambda, msprt_log_lambda_bernoulli, msprt_log_lambda_known_sigma, SequentialLook,
    SequentialTest,
};
pub use srm::{srm_chi_square, srm_sequential_p, SrmCheck, SRM_CONCENTRATION, SRM_THRESHOLD};

/// A closed interval [lower, upper] on the scale of the difference it bounds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
}

impl Interval {
    /// centre ± half_width.
    pub fn around(centre: f64, half_width: f64) -> Self {
        Self { lower: centre - half_width, upper: centre + half_width }
    }

    /// The whole line: what a confidence sequence is before its first look.
    pub fn everything() -> Self {
        Self { lower: f64::NEG_INFINITY, upper: f64::INFINITY }
    }

    pub fn contains(&self, x: f64) -> bool {
        self.lower <= x && x <= self.upper
    }

    /// The common part of two intervals, `None` when they do not meet.
    pub fn intersect(&self, other: &Interval) -> Option<Interval> {
        let both = Interval { lower: self.lower.max(other.lower), upper: self.upper.min(other.upper) };
        (both.lower <= both.upper).then_some(both)
    }
}

/// Whether `alpha` can be a significance level.
fn valid_alpha(alpha: f64) -> bool {
    alpha > 0.0 && alpha < 1.0
}
