//! The analysis of an A/B experiment between model versions, pure: per-arm outcomes in, the
//! report a person reads out (each arm's rate or mean with its 95 % interval, each treatment's
//! difference from the control with its interval and p-value, the always-valid p-value of the
//! sequential test and whether it has concluded, the planned sample size and the progress toward
//! it, the sample-ratio check, and a verdict in words). The endpoint that assigns units to arms
//! and receives feedback ([`endpoint`]) is built on it; the analysis knows nothing of requests.
//!
//! - Fixed-horizon tests (reference README §1): the pooled two-proportion z-test for
//!   proportions, Welch's t-test for means, each difference's interval (Newcombe for
//!   proportions, Welch's for means) at the design's alpha.
//! - The sequential test (§2): the normal-mixture mSPRT on each difference, fed every look, so
//!   its p-value stays valid however often the report is read and whenever the experiment is
//!   stopped. Its mixing variance τ² is fixed once, at the first look where both arms have
//!   [`MIN_PER_ARM`] observations, as GrowthBook's GAVI sets it (τ² = ρ²·n·SE², ρ from the tuning
//!   `N` = the planned units per arm, else 5000, GrowthBook's default): the guarantee needs it
//!   fixed before the data that the test then judges.
//! - The planned sample size (§1.4, the classic formula (a)) from the design's baseline rate,
//!   minimum detectable effect, alpha and power.
//! - SRM (§3): units per arm against the weights, flagged at p < 0.001.
//!
//! [`plan`] reads the experiment's `endpoint.yaml` (arms, metrics, design).

pub mod endpoint;
pub mod plan;

use serde::Serialize;

use crate::stats::{
    n_per_arm_two_proportions, proportion_difference_interval, round_up_per_arm, srm_chi_square, two_proportion_z_test,
    welch_t_test, wilson_interval, BinomialCounts, DifferenceInterval, Interval, ProportionSampleSize, RunningMoments,
    SequentialTest, SRM_THRESHOLD,
};

/// Observations each arm needs before the sequential test looks (the normal approximation of a
/// difference needs some; Amplitude withholds sequential p-values below 100 exposures).
pub const MIN_PER_ARM: u64 = 100;
/// GrowthBook's default tuning `N` when no design plans a sample size.
const DEFAULT_TUNING_N: f64 = 5000.0;

/// What the design plans: the primary metric's baseline rate, the smallest absolute change worth
/// detecting, and the test's alpha and power.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Design {
    pub baseline_rate: f64,
    pub mde: f64,
    pub alpha: f64,
    pub power: f64,
}

impl Design {
    /// Units per arm for the design (classic two-proportion formula, rounded up); `None` when the
    /// rates leave it undefined.
    pub fn units_per_arm(&self) -> Option<u64> {
        let p2 = self.baseline_rate + self.mde;
        n_per_arm_two_proportions(self.baseline_rate, p2, self.alpha, self.power, ProportionSampleSize::Classic)
            .and_then(round_up_per_arm)
    }
}

/// One arm's outcomes on one metric.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcomes {
    /// Successes (conversions, clicks) of trials (units or requests exposed).
    Proportion(BinomialCounts),
    /// Values fed back (revenue, time on page).
    Mean(RunningMoments),
}

impl Outcomes {
    fn n(&self) -> u64 {
        match self {
            Outcomes::Proportion(c) => c.trials,
            Outcomes::Mean(m) => m.count(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmEstimate {
    pub arm: String,
    pub n: u64,
    /// The rate or the mean; `None` before any observation.
    pub estimate: Option<f64>,
    /// Its 95 % interval (Wilson for a rate, t for a mean).
    pub interval_95: Option<Interval>,
}

/// A treatment against the control (the first arm).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    pub arm: String,
    /// treatment − control.
    pub diff: Option<f64>,
    /// At the design's alpha.
    pub interval: Option<Interval>,
    /// The fixed-horizon p-value (two-sided): valid read once, at the planned size.
    pub p_value: Option<f64>,
    pub test: &'static str,
    /// The sequential test's p-value: valid at every look.
    pub always_valid_p: f64,
    /// Its confidence sequence, intersected over the looks.
    pub always_valid_interval: Option<Interval>,
    /// Whether the sequential test has rejected "no difference" at alpha (once true, it stays).
    pub concluded: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricReport {
    pub metric: String,
    pub arms: Vec<ArmEstimate>,
    pub differences: Vec<Difference>,
}

/// The sequential tests of one experiment, one per metric and treatment, kept between looks.
#[derive(Clone, Debug)]
pub struct Analysis {
    alpha: f64,
    tuning_n: f64,
    /// `[metric][treatment]`; `None` until τ² is fixed.
    tests: Vec<Vec<Option<SequentialTest>>>,
}

impl Analysis {
    /// For `metrics` metrics over `arms` arms (the first the control), at two-sided `alpha`, with
    /// the planned units per arm as the sequential test's tuning `N` when there is a plan.
    pub fn new(alpha: f64, planned_per_arm: Option<u64>, metrics: usize, arms: usize) -> Analysis {
        let tuning_n = planned_per_arm.filter(|n| *n > 0).map_or(DEFAULT_TUNING_N, |n| n as f64);
        Analysis { alpha, tuning_n, tests: vec![vec![None; arms.saturating_sub(1)]; metrics] }
    }

    /// One look at metric `metric` (its `name`), with each arm's outcomes in arm order.
    pub fn look(&mut self, metric: usize, name: &str, arms: &[String], outcomes: &[Outcomes]) -> MetricReport {
        let estimates = arms.iter().zip(outcomes).map(|(arm, o)| estimate(arm, o)).collect();
        let mut differences = Vec::new();
        if let (Some(control), Some(tests)) = (outcomes.first(), self.tests.get_mut(metric)) {
            for (i, (arm, o)) in arms.iter().zip(outcomes).enumerate().skip(1) {
                let slot = &mut tests[i - 1];
                differences.push(compare(arm, control, o, self.alpha, self.tuning_n, slot));
            }
        }
        MetricReport { metric: name.to_string(), arms: estimates, differences }
    }
}

fn estimate(arm: &str, o: &Outcomes) -> ArmEstimate {
    let (estimate, interval_95) = match o {
        Outcomes::Proportion(c) => {
            ((c.trials > 0).then(|| c.successes as f64 / c.trials as f64), wilson_interval(c.successes, c.trials, 0.05))
        }
        Outcomes::Mean(m) => {
            let interval = m.summary().and_then(|s| {
                let half =
                    crate::stats::dist::student_t_isf(0.025, s.n as f64 - 1.0) * (s.variance / s.n as f64).sqrt();
                half.is_finite().then(|| Interval::around(s.mean, half))
            });
            (m.mean(), interval)
        }
    };
    ArmEstimate { arm: arm.to_string(), n: o.n(), estimate, interval_95 }
}

/// The estimate of treatment − control and its variance, for the sequential test.
fn diff_and_variance(control: &Outcomes, treatment: &Outcomes) -> Option<(f64, f64)> {
    match (control, treatment) {
        (Outcomes::Proportion(a), Outcomes::Proportion(b)) if a.trials > 0 && b.trials > 0 => {
            let (p1, p2) = (a.successes as f64 / a.trials as f64, b.successes as f64 / b.trials as f64);
            let v = p1 * (1.0 - p1) / a.trials as f64 + p2 * (1.0 - p2) / b.trials as f64;
            Some((p2 - p1, v))
        }
        (Outcomes::Mean(a), Outcomes::Mean(b)) => {
            let (sa, sb) = (a.summary()?, b.summary()?);
            Some((sb.mean - sa.mean, sa.variance / sa.n as f64 + sb.variance / sb.n as f64))
        }
        _ => None,
    }
}

fn compare(
    arm: &str,
    control: &Outcomes,
    treatment: &Outcomes,
    alpha: f64,
    tuning_n: f64,
    test: &mut Option<SequentialTest>,
) -> Difference {
    let (diff, interval, p_value, name) = match (control, treatment) {
        (Outcomes::Proportion(a), Outcomes::Proportion(b)) => {
            let z = two_proportion_z_test(*a, *b);
            (
                z.map(|z| z.diff),
                proportion_difference_interval(*a, *b, alpha, DifferenceInterval::Newcombe),
                z.map(|z| z.p_two_sided),
                "two-proportion z (pooled)",
            )
        }
        (Outcomes::Mean(a), Outcomes::Mean(b)) => {
            let w = a.summary().zip(b.summary()).and_then(|(sa, sb)| welch_t_test(&sa, &sb, alpha));
            (w.map(|w| w.diff), w.map(|w| w.interval), w.map(|w| w.p_two_sided), "Welch t")
        }
        _ => (None, None, None, "none: the arms' outcomes are of different kinds"),
    };
    let enough = control.n() >= MIN_PER_ARM && treatment.n() >= MIN_PER_ARM;
    if let (true, Some((d, v))) = (enough, diff_and_variance(control, treatment)) {
        if test.is_none() {
            let n = (control.n() + treatment.n()) as f64;
            *test = crate::stats::gavi_rho(alpha, tuning_n)
                .and_then(|rho| crate::stats::gavi_equivalent_tau2(rho, n, v.sqrt()))
                .and_then(|tau2| SequentialTest::new(alpha, tau2, 0.0));
        }
        if let Some(t) = test.as_mut() {
            t.observe(d, v);
        }
    }
    Difference {
        arm: arm.to_string(),
        diff,
        interval,
        p_value,
        test: name,
        always_valid_p: test.as_ref().map_or(1.0, SequentialTest::p_value),
        always_valid_interval: test.as_ref().and_then(|t| t.looks().gt(&0).then(|| t.interval()).flatten()),
        concluded: test.as_ref().is_some_and(SequentialTest::concluded),
    }
}

/// The SRM check's p-value for units per arm against the weights (`None` with no units).
pub fn srm_p(units: &[u64], weights: &[f64]) -> Option<f64> {
    srm_chi_square(units, weights).map(|c| c.p_value)
}

/// What a person should conclude, in words, from the primary metric's report.
pub fn verdict(
    primary: &MetricReport,
    sequential: bool,
    alpha: f64,
    planned_per_arm: Option<u64>,
    srm: Option<f64>,
) -> String {
    if let Some(p) = srm.filter(|p| *p < SRM_THRESHOLD) {
        return format!(
            "sample ratio mismatch (p = {p:.2e}): the arms did not get the units their weights say, so the \
             metrics cannot be trusted; find out why before reading them"
        );
    }
    let least = primary.arms.iter().map(|a| a.n).min().unwrap_or(0);
    let progress = planned_per_arm.map(|n| format!(" ({least} of the planned {n} per arm)")).unwrap_or_default();
    let mut winners = Vec::new();
    for d in &primary.differences {
        let signif = if sequential { d.concluded } else { d.p_value.is_some_and(|p| p < alpha) };
        if signif {
            let dir = if d.diff.unwrap_or(0.0) > 0.0 { "higher" } else { "lower" };
            let p = if sequential { d.always_valid_p } else { d.p_value.unwrap_or(1.0) };
            winners.push(format!(
                "{} is {dir} on {} ({:+.4}, p = {p:.3})",
                d.arm,
                primary.metric,
                d.diff.unwrap_or(0.0)
            ));
        }
    }
    match (winners.is_empty(), sequential, planned_per_arm) {
        (false, true, _) => format!("{}: the sequential test has concluded{progress}", winners.join("; ")),
        (false, false, Some(n)) if least < n => format!(
            "{} at this look, but the fixed-horizon test is read once, at the planned size{progress}: keep going",
            winners.join("; ")
        ),
        (false, false, _) => format!("{}{progress}", winners.join("; ")),
        (true, _, Some(n)) if least < n => format!("no difference shown yet{progress}"),
        (true, _, Some(_)) => format!(
            "no difference of the planned size shown on {}{progress}: the arms are equivalent within the design",
            primary.metric
        ),
        (true, _, None) => format!("no difference shown on {} ({least} per arm)", primary.metric),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arms() -> Vec<String> {
        vec!["control".into(), "treatment".into()]
    }

    fn rates(x1: u64, n1: u64, x2: u64, n2: u64) -> Vec<Outcomes> {
        vec![Outcomes::Proportion(BinomialCounts::new(x1, n1)), Outcomes::Proportion(BinomialCounts::new(x2, n2))]
    }

    #[test]
    fn a_proportion_metric_reports_the_reference_test_and_interval() {
        // Reference §1.1 / §1.2: 200/2000 against 250/2000.
        let mut a = Analysis::new(0.05, None, 1, 2);
        let r = a.look(0, "click", &arms(), &rates(200, 2000, 250, 2000));
        let d = &r.differences[0];
        assert!((d.p_value.unwrap() - 0.012350947711191423).abs() < 1e-12, "{d:?}");
        let i = d.interval.unwrap();
        assert!((i.lower - 0.005410339067000933).abs() < 1e-12 && (i.upper - 0.044623635237633866).abs() < 1e-12);
        assert_eq!(r.arms[1].estimate, Some(0.125));
        assert!(d.always_valid_p > d.p_value.unwrap(), "peeking-safe costs evidence: {d:?}");
        assert!(!d.concluded);
    }

    #[test]
    fn a_mean_metric_uses_welch() {
        // Reference §1.3, the raw-sample case (scipy.stats.ttest_ind(treatment, control, equal_var=False)).
        let control = [12.1, 14.3, 11.8, 15.2, 13.9, 12.7, 16.4, 13.3, 12.9, 14.8];
        let treatment = [13.4, 15.9, 16.2, 14.1, 17.3, 15.5, 14.9, 18.2, 16.0, 15.1, 13.8, 17.0];
        let moments = |v: &[f64]| {
            let mut m = RunningMoments::new();
            v.iter().for_each(|x| {
                m.push(*x);
            });
            Outcomes::Mean(m)
        };
        let mut a = Analysis::new(0.05, None, 1, 2);
        let r = a.look(0, "revenue", &arms(), &[moments(&control), moments(&treatment)]);
        let d = &r.differences[0];
        assert_eq!(d.test, "Welch t");
        assert!((d.p_value.unwrap() - 0.007119457694238769).abs() < 1e-10, "{d:?}");
        let i = d.interval.unwrap();
        assert!((i.lower - 0.5729486072858498).abs() < 1e-9 && (i.upper - 3.180384726047484).abs() < 1e-9, "{i:?}");
        assert!(r.arms[0].interval_95.unwrap().contains(r.arms[0].estimate.unwrap()));
    }

    #[test]
    fn the_design_plans_the_reference_sample_size() {
        // Reference §1.4: 10 % → 11 %, alpha 0.05, power 0.8, classic formula: 14750.79, rounded up.
        let d = Design { baseline_rate: 0.10, mde: 0.01, alpha: 0.05, power: 0.8 };
        assert_eq!(d.units_per_arm(), Some(14751));
    }

    #[test]
    fn the_sequential_test_concludes_on_a_real_effect_and_holds_its_conclusion() {
        let mut a = Analysis::new(0.05, Some(4000), 1, 2);
        let mut concluded_at = None;
        for look in 1..=40u64 {
            let n = look * 250;
            // 10 % against 13 %, exactly.
            let r = a.look(0, "click", &arms(), &rates(n / 10, n, n * 13 / 100, n));
            if r.differences[0].concluded && concluded_at.is_none() {
                concluded_at = Some(n);
            }
            if concluded_at.is_some() {
                assert!(r.differences[0].concluded, "a conclusion stays");
            }
        }
        let at = concluded_at.expect("a 3-point effect is found within 10000 per arm");
        assert!(at >= MIN_PER_ARM, "{at}");
    }

    #[test]
    fn verdicts_say_what_to_do() {
        let mut a = Analysis::new(0.05, Some(3839), 1, 2);
        let r = a.look(0, "click", &arms(), &rates(100, 1000, 104, 1000));
        let v = verdict(&r, true, 0.05, Some(3839), Some(0.5));
        assert_eq!(v, "no difference shown yet (1000 of the planned 3839 per arm)");
        let v = verdict(&r, true, 0.05, Some(3839), Some(1e-5));
        assert!(v.starts_with("sample ratio mismatch"), "{v}");
        let r = a.look(0, "click", &arms(), &rates(200, 2000, 250, 2000));
        let v = verdict(&r, false, 0.05, Some(3839), None);
        assert!(v.contains("treatment is higher on click") && v.contains("keep going"), "{v}");
        assert!((srm_p(&[50500, 49500], &[1.0, 1.0]).unwrap() - 0.001565402258002549).abs() < 1e-12);
    }
}
