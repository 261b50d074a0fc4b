//! Guardrail verdicts from what a step has counted: the statistics between the endpoint's
//! counters and the state machine's [`Verdict`]s. Pure: counts in, readings out.
//!
//! A rollout is looked at continuously, so a test read at every look must stay valid however
//! often it is read (reference README §2.1: a fixed-horizon test peeked at every 100 requests
//! rejects a true null 36 % of the time). Each verdict therefore comes from an interval that
//! holds at every look, and says `Fail` when the interval lies wholly beyond the limit, `Pass`
//! when it lies wholly within, and `Inconclusive` otherwise:
//!
//! - `error_rate` (`max_increase`): the normal-mixture confidence sequence (§2.2) on
//!   candidate − baseline error rate, with GrowthBook's GAVI choice of the mixing variance
//!   (τ² = ρ²·n·SE², ρ from the tuning `N` = the step's `min_requests`, else 1000: §2.2–2.3).
//!   The variance takes one error and one success more per arm (Agresti–Caffo), so that two
//!   error-free arms still have an honest, non-zero width.
//! - `latency_p99` (`max_ratio`, `max_increase_ms`): distribution-free bounds on each arm's
//!   p99 from order statistics (the ranks n·q ∓ z·√(n·q·(1−q))), at one-sided α, read from a
//!   mergeable histogram at the outer edges of the buckets those ranks land in (so replicas add
//!   their latencies up and the bounds only widen); an arm needs [`MIN_LATENCIES`] samples.
//! - `disagreement` (`max`): the share of shadow comparisons that differ, by the confidence
//!   sequence on one proportion (the same mixture, its variance smoothed as the error rate's).
//! - `feedback.<name>` (`max_decrease`): candidate − baseline mean of the values fed back for
//!   the requests each side answered, by the same confidence sequence as the error rate (a fall
//!   is judged, a rise is fine); each side needs [`MIN_FEEDBACK`] values.
//! - `srm` (`p`): the chi-square test of units per arm against the step's weight (§3), read with
//!   the sequential Dirichlet–multinomial test beside it: it fails when both p-values are below
//!   the limit (whatever α), so that reading it every tick keeps the sequential test's level.
//!   It needs [`MIN_SRM_UNITS`] units.
//!
//! The latency test is a fixed-horizon one read repeatedly: an always-valid version is future
//! work, and its minimum count keeps early noise out.

use super::machine::{GuardrailReading, Verdict};
use super::plan::{Exposure, Guardrail, Limit, Metric, RolloutPlan, Step};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::histogram::LatencyHistogram;
use crate::stats::sequential::{confidence_sequence_halfwidth, gavi_equivalent_tau2, gavi_rho};
use crate::stats::{srm_chi_square, srm_sequential_p, RunningMoments, SRM_CONCENTRATION};

/// Latency samples each arm needs before its p99 is judged.
pub const MIN_LATENCIES: u64 = 100;
/// Values each side needs fed back before a business metric is judged.
pub const MIN_FEEDBACK: u64 = 30;
/// Units the SRM test needs in all.
pub const MIN_SRM_UNITS: u64 = 100;
/// GrowthBook's default tuning `N` where the step plans no `min_requests`.
const DEFAULT_TUNING_N: f64 = 1000.0;

/// Requests one side answered in the step, and how many of them failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmCounts {
    pub requests: u64,
    pub errors: u64,
}

/// What was counted since the step started: by one replica (its part in the state store), or by
/// all of them ([`StepCounts::merge`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepCounts {
    pub baseline: ArmCounts,
    pub candidate: ArmCounts,
    /// Latencies of each side.
    pub baseline_latency: LatencyHistogram,
    pub candidate_latency: LatencyHistogram,
    /// Shadow comparisons made, and how many differed.
    pub compared: u64,
    pub disagreements: u64,
    /// Shadow copies dropped because the copy queue was full.
    #[serde(default)]
    pub copies_dropped: u64,
    /// Randomization units seen on each side (for SRM): [baseline, candidate]. Units are counted
    /// once across replicas (a set in the state store), so a part leaves them at zero.
    #[serde(default)]
    pub units: [u64; 2],
    /// Some requests had no sticky unit: each is its own unit, so SRM counts requests.
    #[serde(default)]
    pub per_request: bool,
    /// Values fed back for each `feedback.<name>` metric: [baseline, candidate].
    #[serde(default)]
    pub feedback: BTreeMap<String, [RunningMoments; 2]>,
}

impl StepCounts {
    /// Adds another replica's counts (units aside: they come from the shared sets).
    pub fn merge(&mut self, other: &StepCounts) {
        for (mine, theirs) in [(&mut self.baseline, &other.baseline), (&mut self.candidate, &other.candidate)] {
            mine.requests += theirs.requests;
            mine.errors += theirs.errors;
        }
        self.baseline_latency.merge(&other.baseline_latency);
        self.candidate_latency.merge(&other.candidate_latency);
        self.compared += other.compared;
        self.disagreements += other.disagreements;
        self.copies_dropped += other.copies_dropped;
        self.per_request |= other.per_request;
        for (name, theirs) in &other.feedback {
            let mine = self.feedback.entry(name.clone()).or_default();
            mine[0].merge(&theirs[0]);
            mine[1].merge(&theirs[1]);
        }
    }
}

/// A reading for each guardrail that `step` can measure ([`Guardrail::applies_to`]).
pub fn evaluate(plan: &RolloutPlan, step: &Step, counts: &StepCounts) -> Vec<GuardrailReading> {
    plan.guardrails.iter().filter(|g| g.applies_to(step)).map(|g| reading(plan, step, g, counts)).collect()
}

fn reading(plan: &RolloutPlan, step: &Step, g: &Guardrail, c: &StepCounts) -> GuardrailReading {
    let (value, verdict) = match (&g.metric, g.limit) {
        (Metric::ErrorRate, Limit::MaxIncrease(d)) => error_rate(c, d, plan.alpha, tuning_n(step)),
        (Metric::LatencyP99, limit) => latency_p99(c, limit, plan.alpha),
        (Metric::Disagreement { .. }, Limit::Max(m)) => disagreement(c, m, plan.alpha, tuning_n(step)),
        (Metric::Srm, Limit::P(p)) => srm(c, step, p),
        (Metric::Feedback { name }, Limit::MaxDecrease(d)) => feedback(c, name, d, plan.alpha, tuning_n(step)),
        // The plan pairs each metric with its limits; any other pairing has no test.
        (Metric::ErrorRate | Metric::Disagreement { .. } | Metric::Srm | Metric::Feedback { .. }, _) => {
            (None, Verdict::Inconclusive)
        }
    };
    GuardrailReading::of(g, value, verdict)
}

fn tuning_n(step: &Step) -> f64 {
    if step.min_requests > 0 {
        step.min_requests as f64
    } else {
        DEFAULT_TUNING_N
    }
}

/// Within the limit when the interval's top is, beyond it when its bottom is.
fn judge(lower: f64, upper: f64, limit: f64) -> Verdict {
    if lower > limit {
        Verdict::Fail
    } else if upper <= limit {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    }
}

/// The half-width of the normal-mixture confidence sequence on a difference of two means whose
/// estimate has `variance`, from `n` observations in all, with GAVI's mixing variance.
fn halfwidth(variance: f64, n: f64, alpha: f64, tuning_n: f64) -> Option<f64> {
    gavi_rho(alpha, tuning_n)
        .and_then(|rho| gavi_equivalent_tau2(rho, n, variance.sqrt()))
        .and_then(|tau2| confidence_sequence_halfwidth(variance, tau2, alpha))
}

fn error_rate(c: &StepCounts, max_increase: f64, alpha: f64, tuning_n: f64) -> (Option<f64>, Verdict) {
    let (b, k) = (c.baseline, c.candidate);
    if b.requests == 0 || k.requests == 0 {
        return (None, Verdict::Inconclusive);
    }
    let rate = |a: ArmCounts| a.errors.min(a.requests) as f64 / a.requests as f64;
    let diff = rate(k) - rate(b);
    let smoothed = |a: ArmCounts| {
        let m = a.requests as f64 + 2.0;
        let q = (a.errors.min(a.requests) as f64 + 1.0) / m;
        q * (1.0 - q) / m
    };
    let variance = smoothed(b) + smoothed(k);
    match halfwidth(variance, (b.requests + k.requests) as f64, alpha, tuning_n) {
        Some(h) => (Some(diff), judge(diff - h, diff + h, max_increase)),
        None => (Some(diff), Verdict::Inconclusive),
    }
}

fn latency_p99(c: &StepCounts, limit: Limit, alpha: f64) -> (Option<f64>, Verdict) {
    let bounds = |h: &LatencyHistogram| h.quantile_bounds_ms(0.99, alpha, MIN_LATENCIES);
    let (Some((b_lo, b, b_hi)), Some((k_lo, k, k_hi))) = (bounds(&c.baseline_latency), bounds(&c.candidate_latency))
    else {
        return (None, Verdict::Inconclusive);
    };
    match limit {
        Limit::MaxRatio(r) if b > 0.0 => {
            let verdict = if k_lo > r * b_hi {
                Verdict::Fail
            } else if k_hi <= r * b_lo {
                Verdict::Pass
            } else {
                Verdict::Inconclusive
            };
            (Some(k / b), verdict)
        }
        Limit::MaxIncreaseMs(m) => (Some(k - b), judge(k_lo - b_hi, k_hi - b_lo, m)),
        Limit::MaxRatio(_) | Limit::MaxIncrease(_) | Limit::Max(_) | Limit::MaxDecrease(_) | Limit::P(_) => {
            (None, Verdict::Inconclusive)
        }
    }
}

/// Candidate − baseline mean of a business metric fed back, judged against a fall of at most
/// `max_decrease` by the same confidence sequence as the error rate. Each side's variance is at
/// least the pooled variance of both sides' values, so that two sides with no spread of their own
/// (all 1 against all 0) still have an honest width; each side needs [`MIN_FEEDBACK`] values.
fn feedback(c: &StepCounts, name: &str, max_decrease: f64, alpha: f64, tuning_n: f64) -> (Option<f64>, Verdict) {
    let Some([b, k]) = c.feedback.get(name) else { return (None, Verdict::Inconclusive) };
    let (Some(mb), Some(mk)) = (b.mean(), k.mean()) else { return (None, Verdict::Inconclusive) };
    let diff = mk - mb;
    if b.count() < MIN_FEEDBACK || k.count() < MIN_FEEDBACK {
        return (Some(diff), Verdict::Inconclusive);
    }
    let mut pooled = *b;
    pooled.merge(k);
    let floor = pooled.variance().unwrap_or(0.0);
    let var = |m: &RunningMoments| m.variance().unwrap_or(0.0).max(floor) / m.count() as f64;
    let variance = var(b) + var(k);
    if variance <= 0.0 {
        // Every value the same on both sides: no fall at all.
        return (Some(diff), Verdict::Pass);
    }
    match halfwidth(variance, (b.count() + k.count()) as f64, alpha, tuning_n) {
        // A fall is −diff: beyond the limit when even the interval's top falls by more.
        Some(h) => (Some(diff), judge(-(diff + h), -(diff - h), max_decrease)),
        None => (Some(diff), Verdict::Inconclusive),
    }
}

/// The share of compared label elements that differ, judged by the normal-mixture confidence
/// sequence on one proportion (its variance smoothed by one agreement and one disagreement, as
/// the error rate's), so that reading it every tick keeps its level.
fn disagreement(c: &StepCounts, max: f64, alpha: f64, tuning_n: f64) -> (Option<f64>, Verdict) {
    if c.compared == 0 {
        return (None, Verdict::Inconclusive);
    }
    let share = c.disagreements.min(c.compared) as f64 / c.compared as f64;
    let m = c.compared as f64 + 2.0;
    let q = (c.disagreements.min(c.compared) as f64 + 1.0) / m;
    match halfwidth(q * (1.0 - q) / m, c.compared as f64, alpha, tuning_n) {
        Some(h) => (Some(share), judge(share - h, share + h, max)),
        None => (Some(share), Verdict::Inconclusive),
    }
}

fn srm(c: &StepCounts, step: &Step, threshold: f64) -> (Option<f64>, Verdict) {
    let Exposure::Weight { percent } = step.exposure else {
        return (None, Verdict::Inconclusive);
    };
    if c.units.iter().sum::<u64>() < MIN_SRM_UNITS {
        return (None, Verdict::Inconclusive);
    }
    let weights = [100.0 - percent, percent];
    match srm_chi_square(&c.units, &weights) {
        // A unit on a side the step gives no weight is a broken split too.
        Some(check) if check.skipped_units > 0 => (Some(check.p_value), Verdict::Fail),
        Some(check) => {
            // Read every tick, the chi-square test alone would raise false alarms over a long
            // step: it fails only where the always-valid sequential test agrees.
            let sequential = srm_sequential_p(&c.units, &weights, SRM_CONCENTRATION).unwrap_or(1.0);
            let fail = check.mismatch_at(threshold) && sequential < threshold;
            (Some(check.p_value), if fail { Verdict::Fail } else { Verdict::Pass })
        }
        // All on one side, as the step says (weight 100): nothing to compare.
        None => (None, Verdict::Inconclusive),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(guardrails: &str, steps: &str) -> RolloutPlan {
        let yaml = format!(
            "kind: rollout\nbaseline: {{ model: m, version: 1 }}\ncandidate: {{ model: m, version: 2 }}\nsteps:\n{steps}\
             guardrails:\n{guardrails}"
        );
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        super::super::plan::parse(&doc).unwrap_or_else(|(p, m)| panic!("{p}: {m}"))
    }

    fn canary() -> RolloutPlan {
        plan(
            "  - { metric: error_rate, max_increase: 0.01 }\n  - { metric: latency_p99, max_ratio: 1.25 }\n  - { metric: srm }\n",
            "  - { weight: 5, hold: 1s }\n  - { weight: 100 }\n",
        )
    }

    fn verdict(readings: &[GuardrailReading], name: &str) -> Verdict {
        readings.iter().find(|r| r.guardrail == name).unwrap_or_else(|| panic!("no {name} in {readings:?}")).verdict
    }

    fn arm(requests: u64, errors: u64) -> ArmCounts {
        ArmCounts { requests, errors }
    }

    #[test]
    fn a_faulty_candidate_fails_its_error_guardrail_early_and_a_healthy_one_passes_with_data() {
        let p = canary();
        let step = &p.steps[0];
        // 20 % errors on 100 candidate requests against a clean baseline: confidently worse.
        let c = StepCounts { baseline: arm(1900, 0), candidate: arm(100, 20), ..Default::default() };
        let r = evaluate(&p, step, &c);
        assert_eq!(verdict(&r, "error_rate"), Verdict::Fail);
        assert_eq!(r.iter().find(|r| r.guardrail == "error_rate").unwrap().value, Some(0.2));
        // Two clean arms: too few candidate requests to promise < 1 %, then enough.
        let few = StepCounts { baseline: arm(1900, 0), candidate: arm(100, 0), ..Default::default() };
        assert_eq!(verdict(&evaluate(&p, step, &few), "error_rate"), Verdict::Inconclusive);
        let many = StepCounts { baseline: arm(19000, 2), candidate: arm(1000, 0), ..Default::default() };
        assert_eq!(verdict(&evaluate(&p, step, &many), "error_rate"), Verdict::Pass);
        // Nothing counted: nothing concluded.
        assert_eq!(verdict(&evaluate(&p, step, &StepCounts::default()), "error_rate"), Verdict::Inconclusive);
    }

    #[test]
    fn the_error_guardrail_rarely_fails_a_candidate_as_good_as_its_baseline_however_often_read() {
        // A/A at 2 % errors, read after every 50 requests up to 5000 per arm, 200 times over:
        // the always-valid interval may wrongly fail at most about alpha of these runs.
        let p = canary();
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut failed = 0;
        for _ in 0..200 {
            let mut c = StepCounts::default();
            for look in 1..=100 {
                for _ in 0..50 {
                    c.baseline.requests += 1;
                    c.baseline.errors += u64::from(next() < 0.02);
                    c.candidate.requests += 1;
                    c.candidate.errors += u64::from(next() < 0.02);
                }
                if verdict(&evaluate(&p, &p.steps[0], &c), "error_rate") == Verdict::Fail {
                    failed += 1;
                    break;
                }
                let _ = look;
            }
        }
        assert!(failed <= 10, "{failed} of 200 A/A runs failed (alpha 0.05)");
    }

    #[test]
    fn latency_is_judged_on_bounds_of_each_p99() {
        let p = canary();
        let step = &p.steps[0];
        let ramp = |n: usize, scale: f64| {
            let mut h = LatencyHistogram::default();
            (1..=n).for_each(|i| h.push_ms(scale * i as f64 / n as f64 * 10.0));
            h
        };
        let same =
            StepCounts { baseline_latency: ramp(2000, 1.0), candidate_latency: ramp(2000, 1.0), ..Default::default() };
        let r = evaluate(&p, step, &same);
        assert_eq!(verdict(&r, "latency_p99"), Verdict::Pass);
        let slow =
            StepCounts { baseline_latency: ramp(2000, 1.0), candidate_latency: ramp(2000, 2.0), ..Default::default() };
        let r = evaluate(&p, step, &slow);
        assert_eq!(verdict(&r, "latency_p99"), Verdict::Fail);
        assert!((r.iter().find(|r| r.guardrail == "latency_p99").unwrap().value.unwrap() - 2.0).abs() < 1e-9);
        let sparse =
            StepCounts { baseline_latency: ramp(50, 1.0), candidate_latency: ramp(2000, 9.0), ..Default::default() };
        assert_eq!(verdict(&evaluate(&p, step, &sparse), "latency_p99"), Verdict::Inconclusive);
    }

    #[test]
    fn srm_fails_a_split_that_does_not_match_its_weight() {
        let p = canary();
        let step = &p.steps[0];
        let ok = StepCounts { units: [9500, 500], ..Default::default() };
        assert_eq!(verdict(&evaluate(&p, step, &ok), "srm"), Verdict::Pass);
        // The reference's canary case: 94650 / 5350 against 95 / 5, p = 3.8e-7.
        let skewed = StepCounts { units: [94650, 5350], ..Default::default() };
        let r = evaluate(&p, step, &skewed);
        assert_eq!(verdict(&r, "srm"), Verdict::Fail);
        let value = r.iter().find(|r| r.guardrail == "srm").unwrap().value.unwrap();
        assert!((value - 3.807594010409735e-07).abs() / 3.807594010409735e-07 < 1e-6, "{value}");
        assert_eq!(
            verdict(&evaluate(&p, step, &StepCounts { units: [40, 2], ..Default::default() }), "srm"),
            Verdict::Inconclusive
        );
    }

    #[test]
    fn disagreement_is_read_in_the_shadow_step_only() {
        let p = plan(
            "  - { metric: disagreement, output: label, max: 0.05 }\n  - { metric: srm }\n",
            "  - { shadow: 1.0, hold: 1s }\n  - { weight: 100 }\n",
        );
        let shadow = &p.steps[0];
        let agree = StepCounts { compared: 2000, disagreements: 40, ..Default::default() };
        let r = evaluate(&p, shadow, &agree);
        assert_eq!(r.len(), 1, "SRM has nothing to measure in a shadow step: {r:?}");
        assert_eq!(r[0].verdict, Verdict::Pass);
        let differ = StepCounts { compared: 400, disagreements: 60, ..Default::default() };
        assert_eq!(evaluate(&p, shadow, &differ)[0].verdict, Verdict::Fail);
        assert!(evaluate(&p, &p.steps[1], &agree).iter().all(|r| r.guardrail != "disagreement(label)"));
    }

    #[test]
    fn a_business_metric_that_falls_fails_and_one_that_holds_passes() {
        let p = plan(
            "  - { metric: feedback.conversion, max_decrease: 0.02 }\n",
            "  - { weight: 50, hold: 1s }\n  - { weight: 100 }\n",
        );
        let step = &p.steps[0];
        let fed = |b_rate: f64, k_rate: f64, n: u64| {
            let side = |rate: f64| {
                let mut m = RunningMoments::new();
                for i in 0..n {
                    m.push(if (i as f64 + 0.5) / (n as f64) < rate { 1.0 } else { 0.0 });
                }
                m
            };
            let mut c = StepCounts::default();
            c.feedback.insert("conversion".into(), [side(b_rate), side(k_rate)]);
            c
        };
        let read = |c: &StepCounts| evaluate(&p, step, c)[0].clone();
        // 30 % → 10 % on 500 each: a fall of 0.2, confidently past 0.02.
        let r = read(&fed(0.3, 0.1, 500));
        assert_eq!(r.verdict, Verdict::Fail);
        assert!((r.value.unwrap() + 0.2).abs() < 1e-9, "{r:?}");
        // The same rates on 20 000 each: the fall is at most 0.02 with confidence.
        assert_eq!(read(&fed(0.3, 0.3, 20_000)).verdict, Verdict::Pass);
        // Too few values, or none: nothing concluded.
        assert_eq!(read(&fed(0.3, 0.1, 10)).verdict, Verdict::Inconclusive);
        assert_eq!(read(&StepCounts::default()).verdict, Verdict::Inconclusive);
        // Two sides with no spread of their own still fail on a clear fall.
        assert_eq!(read(&fed(1.0, 0.0, 50)).verdict, Verdict::Fail);
    }

    #[test]
    fn disagreement_at_its_limit_rarely_fails_however_often_read() {
        // The true share is the limit itself (5 %): read after every 50 comparisons up to 5000,
        // 200 times over, a test valid at every look fails at most about alpha of the runs.
        let p = plan(
            "  - { metric: disagreement, output: label, max: 0.05 }\n",
            "  - { shadow: 1.0, hold: 1s }\n  - { weight: 100 }\n",
        );
        let mut state = 11u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut failed = 0;
        for _ in 0..200 {
            let mut c = StepCounts::default();
            for _ in 0..100 {
                for _ in 0..50 {
                    c.compared += 1;
                    c.disagreements += u64::from(next() < 0.05);
                }
                if evaluate(&p, &p.steps[0], &c)[0].verdict == Verdict::Fail {
                    failed += 1;
                    break;
                }
            }
        }
        assert!(failed <= 10, "{failed} of 200 runs failed a candidate at its limit (alpha 0.05)");
    }
}
