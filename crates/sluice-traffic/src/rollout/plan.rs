//! A rollout's plan: the `kind: rollout` document of `endpoint.yaml` read into a checked
//! [`RolloutPlan`] (baseline, candidate, steps, guardrails, alpha, what a failure does), and the
//! durations it is written in. Errors are `(field path, message)`, in the style of
//! [`crate::definition`]: every one names the field, unknown fields are errors, and a message
//! says what was expected.

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::definition::{bad, get, join, list, mapping, number, show, sticky, string, target, Bad, Sticky, Target};

/// A checked rollout: how the candidate's exposure grows step by step, and what must hold on the
/// way.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPlan {
    /// What serves now, and all traffic after a rollback.
    pub baseline: Target,
    /// What is rolled out, and all traffic after promotion.
    pub candidate: Target,
    /// Faults injected into each side's answers (`fault:` beside the target), for drills.
    pub baseline_fault: Option<Fault>,
    pub candidate_fault: Option<Fault>,
    /// What keeps a user on one side across requests; `None`: each request is drawn on its own.
    pub unit: Option<Sticky>,
    /// At least one; at most one shadow step, first; weights never fall; the last is weight 100.
    pub steps: Vec<Step>,
    /// One per metric name ([`Guardrail::name`]), so a reading names its guardrail unambiguously.
    pub guardrails: Vec<Guardrail>,
    /// The one-sided significance level of the comparative guardrails, in (0, 0.5].
    pub alpha: f64,
    pub on_failure: OnFailure,
}

/// Faults injected into a side's answers, as a service mesh injects them: for drills and tests of
/// the guardrails (`fault: { error_rate: 0.2, delay_ms: 50 }` beside `model:`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Share of requests, in [0, 1], answered with an error instead of the model's answer.
    pub error_rate: f64,
    /// Added before every request the side answers.
    pub delay_ms: u64,
}

/// What a guardrail failing with confidence does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// All traffic back to the baseline for good.
    #[default]
    Rollback,
    /// All traffic to the baseline until someone resumes (or rolls back) by hand.
    Pause,
}

/// One step of a rollout: the candidate's exposure, and how long and how much it must be watched
/// before the next.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub exposure: Exposure,
    /// The least time in the step; 0 when the file gives no `hold`.
    pub hold_ms: u64,
    /// The least number of requests the candidate must see in the step; 0 when not given.
    pub min_requests: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exposure {
    /// A share in (0, 1] of requests is copied to the candidate, whose answers go to nobody.
    Shadow { share: f64 },
    /// The candidate answers this percent, in (0, 100], of units.
    Weight { percent: f64 },
}

impl Step {
    pub fn is_shadow(&self) -> bool {
        matches!(self.exposure, Exposure::Shadow { .. })
    }
}

impl std::fmt::Display for Exposure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Rounded: 0.07 × 100 is 7.000000000000001.
            Exposure::Shadow { share } => write!(f, "shadow {}%", (share * 1e8).round() / 1e6),
            Exposure::Weight { percent } => write!(f, "weight {percent}%"),
        }
    }
}

/// A limit on how much worse the candidate may be than the baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guardrail {
    pub metric: Metric,
    pub limit: Limit,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of requests answered with an error.
    ErrorRate,
    /// 99th percentile of latency.
    LatencyP99,
    /// Share of shadow comparisons in which the candidate's `output` differs from the baseline's.
    Disagreement { output: String },
    /// A business metric fed back by the caller (`feedback.<name>`), higher is better.
    Feedback { name: String },
    /// Sample ratio mismatch: whether the units really split as the step's weight says.
    Srm,
}

/// The limit, and so the test, a [`Guardrail`]'s statistics are held to. Comparative limits are
/// one-sided tests at the plan's `alpha`: `Fail` when the data show the limit exceeded with
/// confidence, `Pass` when they show it kept with confidence (the interval lies within it),
/// `Inconclusive` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// candidate − baseline at most this (an absolute difference of rates).
    MaxIncrease(f64),
    /// candidate / baseline at most this, above 1.
    MaxRatio(f64),
    /// candidate − baseline at most this many milliseconds.
    MaxIncreaseMs(f64),
    /// The metric itself at most this, in [0, 1].
    Max(f64),
    /// baseline − candidate at most this.
    MaxDecrease(f64),
    /// Fail when the chi-square test of the observed split against the planned one gives a p-value
    /// below this (fixed, not `alpha`: a broken split is a bug, not a trade-off).
    P(f64),
}

impl Limit {
    pub fn value(&self) -> f64 {
        match *self {
            Limit::MaxIncrease(x)
            | Limit::MaxRatio(x)
            | Limit::MaxIncreaseMs(x)
            | Limit::Max(x)
            | Limit::MaxDecrease(x)
            | Limit::P(x) => x,
        }
    }

    /// The field it is written as.
    pub fn key(&self) -> &'static str {
        match self {
            Limit::MaxIncrease(_) => "max_increase",
            Limit::MaxRatio(_) => "max_ratio",
            Limit::MaxIncreaseMs(_) => "max_increase_ms",
            Limit::Max(_) => "max",
            Limit::MaxDecrease(_) => "max_decrease",
            Limit::P(_) => "p",
        }
    }
}

impl Guardrail {
    /// How readings and status name it: `error_rate`, `latency_p99`, `disagreement(label)`,
    /// `feedback.conversion`, `srm`.
    pub fn name(&self) -> String {
        match &self.metric {
            Metric::ErrorRate => "error_rate".into(),
            Metric::LatencyP99 => "latency_p99".into(),
            Metric::Disagreement { output } => format!("disagreement({output})"),
            Metric::Feedback { name } => format!("feedback.{name}"),
            Metric::Srm => "srm".into(),
        }
    }

    pub fn threshold(&self) -> f64 {
        self.limit.value()
    }

    /// Whether `step` can measure it, and so whether the step needs it to pass: a disagreement
    /// comes from shadow comparisons, which only a shadow step makes; feedback and a split's ratio
    /// exist only once the candidate answers users. A reading that fails counts wherever it comes
    /// from.
    pub fn applies_to(&self, step: &Step) -> bool {
        match self.metric {
            Metric::ErrorRate | Metric::LatencyP99 => true,
            Metric::Disagreement { .. } => step.is_shadow(),
            Metric::Feedback { .. } | Metric::Srm => !step.is_shadow(),
        }
    }
}

/// Milliseconds from a duration as the file writes it: a non-negative number and one of `s`, `m`,
/// `h`, `d` (`90s`, `10m`, `72h`, `2d`, `1.5h`).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let expected =
        || format!("expected a duration: a number and one of s, m, h, d (90s, 10m, 72h, 1.5h), got '{text}'");
    let t = text.trim();
    let unit_ms = match t.chars().last() {
        Some('s') => 1_000.0,
        Some('m') => 60_000.0,
        Some('h') => 3_600_000.0,
        Some('d') => 86_400_000.0,
        _ => return Err(expected()),
    };
    let digits = &t[..t.len() - 1];
    // `f64::from_str` also takes "inf", "NaN" and exponents; a duration is plain digits.
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(expected());
    }
    let x: f64 = digits.parse().map_err(|_| expected())?;
    let ms = (x * unit_ms).round();
    // A thousand years is no rollout; past that the number is a typo (or would overflow).
    if ms > 1000.0 * 365.0 * 86_400_000.0 {
        return Err(format!("'{text}' is too long for a duration"));
    }
    Ok(ms as u64)
}

/// A duration for people: `3d`, `1h 30m`, `1m 30s`, `1.5s`, `0s`.
pub fn show_duration(ms: u64) -> String {
    let mut parts = Vec::new();
    let mut rest = ms;
    for (unit, name) in [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m")] {
        if rest >= unit {
            parts.push(format!("{}{name}", rest / unit));
            rest %= unit;
        }
    }
    if rest > 0 || parts.is_empty() {
        parts.push(format!("{}s", rest as f64 / 1000.0));
    }
    parts.join(" ")
}

const KEYS: &[&str] = &["kind", "baseline", "candidate", "unit", "steps", "guardrails", "alpha", "on_failure"];
const METRICS: &str = "error_rate, latency_p99, disagreement, feedback.<name>, srm";

/// Reads a whole `endpoint.yaml` document of `kind: rollout`. Errors are the field's path (empty
/// for the document itself) and what is wrong with it.
pub fn parse(doc: &Value) -> Result<RolloutPlan, Bad> {
    let top = doc.as_mapping().ok_or_else(|| bad("", format!("expected a mapping, got {}", show(doc))))?;
    // The kind first: another kind's fields are not typos of this one's.
    match get(top, "kind") {
        None => return Err(bad("", "'kind' is required: rollout")),
        Some(Value::String(k)) if k == "rollout" => {}
        Some(k) => return Err(bad("kind", format!("expected 'rollout', got {}", show(k)))),
    }
    let m = mapping(doc, "", KEYS)?;
    let side = |key: &str, what: &str| -> Result<(Target, Option<Fault>), Bad> {
        let v = get(m, key)
            .ok_or_else(|| bad("", format!("'{key}' is required: {what}, e.g. {{ model: fraud, version: 2 }}")))?;
        let (t, tm) = target(v, key, &["fault"])?;
        Ok((t, get(tm, "fault").map(|f| fault(f, &join(key, "fault"))).transpose()?))
    };
    let (baseline, baseline_fault) = side("baseline", "the model or endpoint serving now")?;
    let (candidate, candidate_fault) = side("candidate", "the model or endpoint rolled out")?;
    if candidate == baseline {
        return Err(bad("candidate", format!("must differ from the baseline (both are {})", describe(&baseline))));
    }
    let unit = get(m, "unit").map(|u| sticky(u, "unit")).transpose()?;
    let steps = steps(m)?;
    let guardrails = match get(m, "guardrails") {
        None => Vec::new(),
        Some(Value::Sequence(items)) => {
            let mut out: Vec<Guardrail> = Vec::new();
            for (i, g) in items.iter().enumerate() {
                let path = format!("guardrails[{i}]");
                let g = guardrail(g, &path)?;
                if let Some(j) = out.iter().position(|o| o.name() == g.name()) {
                    return Err(bad(
                        &path,
                        format!(
                            "a second '{}' guardrail (guardrails[{j}] is one); give one limit per metric",
                            g.name()
                        ),
                    ));
                }
                out.push(g);
            }
            out
        }
        Some(v) => return Err(bad("guardrails", format!("expected a list of guardrails, got {}", show(v)))),
    };
    let alpha = number(m, "alpha", "")?.unwrap_or(0.05);
    if !(alpha > 0.0 && alpha <= 0.5) {
        return Err(bad("alpha", format!("must be above 0 and at most 0.5, got {alpha}")));
    }
    let on_failure = match string(m, "on_failure", "")?.as_deref() {
        None | Some("rollback") => OnFailure::Rollback,
        Some("pause") => OnFailure::Pause,
        Some(other) => return Err(bad("on_failure", format!("expected rollback or pause, got '{other}'"))),
    };
    Ok(RolloutPlan { baseline, candidate, baseline_fault, candidate_fault, unit, steps, guardrails, alpha, on_failure })
}

fn fault(v: &Value, path: &str) -> Result<Fault, Bad> {
    let m = mapping(v, path, &["error_rate", "delay_ms"])?;
    let error_rate = number(m, "error_rate", path)?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&error_rate) {
        return Err(bad(&join(path, "error_rate"), format!("must be from 0 to 1, got {error_rate}")));
    }
    let delay = number(m, "delay_ms", path)?.unwrap_or(0.0);
    if !(0.0..=3_600_000.0).contains(&delay) || delay.fract() != 0.0 {
        return Err(bad(&join(path, "delay_ms"), format!("must be a whole number of milliseconds, got {delay}")));
    }
    Ok(Fault { error_rate, delay_ms: delay as u64 })
}

fn describe(t: &Target) -> String {
    match t {
        Target::Model { name, version: Some(v) } => format!("model '{name}' version {v}"),
        Target::Model { name, version: None } => format!("model '{name}'"),
        Target::Endpoint(name) => format!("endpoint '{name}'"),
    }
}

fn steps(m: &serde_yaml::Mapping) -> Result<Vec<Step>, Bad> {
    let raw = match get(m, "steps") {
        Some(Value::Sequence(s)) if s.is_empty() => {
            return Err(bad("steps", "a rollout needs at least one step (the last one 'weight: 100')"))
        }
        None => return Err(bad("", "'steps' is required: a list ending with '{ weight: 100 }'")),
        Some(_) => list(m, "steps", "")?,
    };
    let mut steps: Vec<Step> = Vec::new();
    let mut shadow_at = None;
    let mut last_weight: Option<(usize, f64)> = None;
    for (i, s) in raw.iter().enumerate() {
        let path = format!("steps[{i}]");
        let sm = mapping(s, &path, &["shadow", "weight", "hold", "min_requests"])?;
        let exposure = match (number(sm, "shadow", &path)?, number(sm, "weight", &path)?) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    &path,
                    "give one of 'shadow' (a share in (0, 1]) or 'weight' (a percent in (0, 100]), not both",
                ))
            }
            (None, None) => {
                return Err(bad(
                    &path,
                    "needs one of: 'shadow' (the share of requests copied to the candidate, in (0, 1]) or 'weight' (the candidate's percent of traffic, in (0, 100])",
                ))
            }
            (Some(share), None) => {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(bad(&join(&path, "shadow"), format!("must be a share above 0 and at most 1, got {share}")));
                }
                if let Some(j) = shadow_at {
                    return Err(bad(&path, format!("only one shadow step is allowed (steps[{j}] is one)")));
                }
                if let Some((j, _)) = last_weight {
                    return Err(bad(
                        &path,
                        format!("the shadow step must come before the weight steps (steps[{j}] is a weight step)"),
                    ));
                }
                shadow_at = Some(i);
                Exposure::Shadow { share }
            }
            (None, Some(percent)) => {
                let wp = join(&path, "weight");
                if !(percent > 0.0 && percent <= 100.0) {
                    return Err(bad(&wp, format!("must be a percent above 0 and at most 100, got {percent}")));
                }
                if let Some((j, before)) = last_weight.filter(|(_, before)| percent < *before) {
                    return Err(bad(&wp, format!("weights must not fall: {percent} after {before} in steps[{j}]")));
                }
                last_weight = Some((i, percent));
                Exposure::Weight { percent }
            }
        };
        let hold_ms = match get(sm, "hold") {
            None => 0,
            Some(Value::String(t)) => parse_duration(t).map_err(|e| bad(&join(&path, "hold"), e))?,
            Some(v) => {
                return Err(bad(
                    &join(&path, "hold"),
                    format!(
                        "expected a duration: a number and one of s, m, h, d (90s, 10m, 72h, 1.5h), got {}",
                        show(v)
                    ),
                ))
            }
        };
        let min_requests = match get(sm, "min_requests") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                bad(&join(&path, "min_requests"), format!("expected a whole number, 0 or more, got {}", show(v)))
            })?,
        };
        steps.push(Step { exposure, hold_ms, min_requests });
    }
    let last = steps.len() - 1;
    if steps[last].exposure != (Exposure::Weight { percent: 100.0 }) {
        return Err(bad(
            &format!("steps[{last}]"),
            format!(
                "the last step must be 'weight: 100' (all traffic to the candidate before it is promoted), got '{}'",
                match steps[last].exposure {
                    Exposure::Shadow { share } => format!("shadow: {share}"),
                    Exposure::Weight { percent } => format!("weight: {percent}"),
                }
            ),
        ));
    }
    Ok(steps)
}

fn guardrail(v: &Value, path: &str) -> Result<Guardrail, Bad> {
    let gm = v.as_mapping().ok_or_else(|| bad(path, format!("expected a mapping, got {}", show(v))))?;
    let name =
        string(gm, "metric", path)?.ok_or_else(|| bad(path, format!("'metric' is required (one of: {METRICS})")))?;
    let metric = match name.as_str() {
        "error_rate" => Metric::ErrorRate,
        "latency_p99" => Metric::LatencyP99,
        "disagreement" => Metric::Disagreement { output: String::new() },
        "srm" => Metric::Srm,
        "feedback" | "feedback." => {
            return Err(bad(
                &join(path, "metric"),
                format!("name the feedback metric: feedback.<name>, e.g. feedback.conversion, got '{name}'"),
            ))
        }
        f if f.starts_with("feedback.") => Metric::Feedback { name: f["feedback.".len()..].to_string() },
        other => {
            return Err(bad(&join(path, "metric"), format!("unknown metric '{other}' (expected one of: {METRICS})")))
        }
    };
    // The limits that make sense differ by metric: a field of another metric is as much a typo
    // as an unknown one, and the error lists what this metric takes.
    let allowed: &[&str] = match metric {
        Metric::ErrorRate => &["metric", "max_increase"],
        Metric::LatencyP99 => &["metric", "max_ratio", "max_increase_ms"],
        Metric::Disagreement { .. } => &["metric", "output", "max"],
        Metric::Feedback { .. } => &["metric", "max_decrease"],
        Metric::Srm => &["metric", "p"],
    };
    mapping(v, path, allowed)?;
    let field = |key: &str| number(gm, key, path);
    let needs = |what: &str| bad(path, format!("{name} needs {what}"));
    let within = |key: &str, x: f64, ok: bool, range: &str| -> Result<f64, Bad> {
        if ok {
            Ok(x)
        } else {
            Err(bad(&join(path, key), format!("must be {range}, got {x}")))
        }
    };
    let (metric, limit) = match metric {
        Metric::ErrorRate => {
            let x = field("max_increase")?.ok_or_else(|| {
                needs("'max_increase' (the largest allowed rise in error rate, candidate − baseline, e.g. 0.01)")
            })?;
            (metric, Limit::MaxIncrease(within("max_increase", x, (0.0..1.0).contains(&x), "from 0 to below 1")?))
        }
        Metric::LatencyP99 => match (field("max_ratio")?, field("max_increase_ms")?) {
            (Some(r), None) => (metric, Limit::MaxRatio(within("max_ratio", r, r > 1.0, "above 1")?)),
            (None, Some(ms)) => (metric, Limit::MaxIncreaseMs(within("max_increase_ms", ms, ms > 0.0, "above 0")?)),
            (Some(_), Some(_)) => return Err(bad(path, "give only one of: max_ratio, max_increase_ms")),
            (None, None) => {
                return Err(needs(
                    "one of: 'max_ratio' (candidate p99 / baseline p99, above 1, e.g. 1.25), 'max_increase_ms' (candidate p99 − baseline p99 in milliseconds)",
                ))
            }
        },
        Metric::Disagreement { .. } => {
            let output = string(gm, "output", path)?
                .ok_or_else(|| needs("'output' (the output the shadow comparison compares, e.g. label)"))?;
            let x = field("max")?
                .ok_or_else(|| needs("'max' (the largest allowed share of disagreeing answers, e.g. 0.05)"))?;
            (Metric::Disagreement { output }, Limit::Max(within("max", x, (0.0..=1.0).contains(&x), "from 0 to 1")?))
        }
        Metric::Feedback { .. } => {
            let x = field("max_decrease")?.ok_or_else(|| {
                needs("'max_decrease' (the largest allowed fall, baseline − candidate, e.g. 0.02)")
            })?;
            (metric, Limit::MaxDecrease(within("max_decrease", x, x >= 0.0, "0 or more")?))
        }
        Metric::Srm => {
            let p = field("p")?.unwrap_or(0.001);
            (metric, Limit::P(within("p", p, p > 0.0 && p < 1.0, "above 0 and below 1")?))
        }
    };
    Ok(Guardrail { metric, limit })
}

/// The issue's example, for tests here and in the machine's.
#[cfg(test)]
pub(crate) const EXAMPLE: &str = r#"
kind: rollout
baseline:  { model: fraud, version: 2 }
candidate: { model: fraud, version: 3 }
unit: { header: x-user-id }            # sticky randomization unit (else per request)
steps:
  - { shadow: 1.0, hold: 72h, min_requests: 10000 }   # shadow phase: candidate answers nobody
  - { weight: 5,  hold: 24h, min_requests: 5000 }
  - { weight: 25, hold: 24h }
  - { weight: 50, hold: 24h }
  - { weight: 100 }
guardrails:                            # checked continuously during every step
  - { metric: error_rate, max_increase: 0.01 }        # candidate − baseline, one-sided test at alpha
  - { metric: latency_p99, max_ratio: 1.25 }
  - { metric: disagreement, output: label, max: 0.05 } # from the shadow comparison
  - { metric: feedback.conversion, max_decrease: 0.02 } # business metric
  - { metric: srm }                                    # sample ratio mismatch (chi-square, p < 0.001)
alpha: 0.05
on_failure: rollback                   # or pause
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<RolloutPlan, String> {
        let doc: Value = serde_yaml::from_str(text).unwrap();
        parse(&doc).map_err(|(path, msg)| if path.is_empty() { msg } else { format!("{path}: {msg}") })
    }

    fn weight(percent: f64, hold_h: u64, min_requests: u64) -> Step {
        Step { exposure: Exposure::Weight { percent }, hold_ms: hold_h * 3_600_000, min_requests }
    }

    #[test]
    fn the_issues_example_reads_as_written() {
        let p = read(EXAMPLE).unwrap();
        assert_eq!(p.baseline, Target::Model { name: "fraud".into(), version: Some("2".into()) });
        assert_eq!(p.candidate, Target::Model { name: "fraud".into(), version: Some("3".into()) });
        assert_eq!(p.unit, Some(Sticky::Header("x-user-id".into())));
        assert_eq!(
            p.steps,
            vec![
                Step { exposure: Exposure::Shadow { share: 1.0 }, hold_ms: 72 * 3_600_000, min_requests: 10_000 },
                weight(5.0, 24, 5000),
                weight(25.0, 24, 0),
                weight(50.0, 24, 0),
                weight(100.0, 0, 0),
            ]
        );
        let names: Vec<String> = p.guardrails.iter().map(Guardrail::name).collect();
        assert_eq!(names, ["error_rate", "latency_p99", "disagreement(label)", "feedback.conversion", "srm"]);
        let limits: Vec<Limit> = p.guardrails.iter().map(|g| g.limit).collect();
        assert_eq!(
            limits,
            [
                Limit::MaxIncrease(0.01),
                Limit::MaxRatio(1.25),
                Limit::Max(0.05),
                Limit::MaxDecrease(0.02),
                Limit::P(0.001)
            ]
        );
        assert_eq!(p.guardrails[2].metric, Metric::Disagreement { output: "label".into() });
        assert_eq!((p.alpha, p.on_failure), (0.05, OnFailure::Rollback));
        // Which step needs which guardrail to pass.
        let needed =
            |s: &Step| p.guardrails.iter().filter(|g| g.applies_to(s)).map(Guardrail::name).collect::<Vec<_>>();
        assert_eq!(needed(&p.steps[0]), ["error_rate", "latency_p99", "disagreement(label)"]);
        assert_eq!(needed(&p.steps[1]), ["error_rate", "latency_p99", "feedback.conversion", "srm"]);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let p = read("kind: rollout\nbaseline: { model: a }\ncandidate: { endpoint: b }\nsteps: [ { weight: 100 } ]\n")
            .unwrap();
        assert_eq!((p.unit, p.alpha, p.on_failure), (None, 0.05, OnFailure::Rollback));
        assert!(p.guardrails.is_empty());
        assert_eq!(p.steps, vec![weight(100.0, 0, 0)]);
        let p = read("kind: rollout\nbaseline: { model: a }\ncandidate: { model: b }\nunit: { parameter: user }\nsteps: [ { weight: 100 } ]\nguardrails: [ { metric: srm, p: 0.01 }, { metric: latency_p99, max_increase_ms: 20 } ]\non_failure: pause\nalpha: 0.1\n").unwrap();
        assert_eq!(p.unit, Some(Sticky::Parameter("user".into())));
        assert_eq!(p.guardrails[0].limit, Limit::P(0.01));
        assert_eq!(p.guardrails[1].limit, Limit::MaxIncreaseMs(20.0));
        assert_eq!((p.alpha, p.on_failure), (0.1, OnFailure::Pause));
    }

    #[test]
    fn durations_take_seconds_minutes_hours_and_days() {
        for (text, ms) in [
            ("90s", 90_000),
            ("10m", 600_000),
            ("72h", 259_200_000),
            ("2d", 172_800_000),
            ("1.5h", 5_400_000),
            ("0s", 0),
            ("0.25s", 250),
        ] {
            assert_eq!(parse_duration(text), Ok(ms), "{text}");
        }
        for text in ["", "10", "h", "10ms", "-1h", "1e3h", "infh", "1,5h", "10 h", "10w", "1.2.3s"] {
            assert!(parse_duration(text).unwrap_err().contains("expected a duration"), "{text}");
        }
        assert!(parse_duration("999999999d").unwrap_err().contains("too long"));
        for (ms, text) in [
            (0, "0s"),
            (1_500, "1.5s"),
            (90_000, "1m 30s"),
            (5_400_000, "1h 30m"),
            (259_200_000, "3d"),
            (90_061_001, "1d 1h 1m 1.001s"),
        ] {
            assert_eq!(show_duration(ms), text);
        }
    }

    #[test]
    fn every_error_names_its_field_and_what_is_expected() {
        let head = "kind: rollout\nbaseline: { model: fraud, version: 2 }\ncandidate: { model: fraud, version: 3 }\n";
        let with_steps = |steps: &str| format!("{head}steps:\n{steps}");
        let with_guard = |g: &str| format!("{head}steps: [ {{ weight: 100 }} ]\nguardrails:\n  - {g}\n");
        let last = "  - { weight: 100 }\n";
        let cases: Vec<(String, &str)> = vec![
            // The document.
            ("kind: split\ntargets: []\n".into(), "kind: expected 'rollout', got split"),
            ("baseline: { model: a }\n".into(), "'kind' is required: rollout"),
            (format!("{head}steps: [ {{ weight: 100 }} ]\nstpes: []\n"), "unknown field 'stpes' (expected one of: kind, baseline, candidate, unit, steps, guardrails, alpha, on_failure)"),
            ("kind: rollout\ncandidate: { model: b }\nsteps: [ { weight: 100 } ]\n".into(), "'baseline' is required: the model or endpoint serving now"),
            ("kind: rollout\nbaseline: { model: a }\nsteps: [ { weight: 100 } ]\n".into(), "'candidate' is required"),
            ("kind: rollout\nbaseline: { model: a, version: 2 }\ncandidate: { model: a, version: 2 }\nsteps: [ { weight: 100 } ]\n".into(), "candidate: must differ from the baseline (both are model 'a' version 2)"),
            ("kind: rollout\nbaseline: { model: a }\ncandidate: { modle: b }\nsteps: [ { weight: 100 } ]\n".into(), "candidate: unknown field 'modle'"),
            (format!("{head}unit: {{ header: h, parameter: p }}\nsteps: [ {{ weight: 100 }} ]\n"), "unit: give one of 'header' or 'parameter'"),
            (format!("{head}unit: {{ cookie: c }}\nsteps: [ {{ weight: 100 }} ]\n"), "unit: unknown field 'cookie' (expected one of: header, parameter)"),
            (format!("{head}steps: [ {{ weight: 100 }} ]\nalpha: 0.7\n"), "alpha: must be above 0 and at most 0.5, got 0.7"),
            (format!("{head}steps: [ {{ weight: 100 }} ]\nalpha: 0\n"), "alpha: must be above 0"),
            (format!("{head}steps: [ {{ weight: 100 }} ]\non_failure: stop\n"), "on_failure: expected rollback or pause, got 'stop'"),
            // Steps.
            (head.to_string(), "'steps' is required: a list ending with '{ weight: 100 }'"),
            (format!("{head}steps: []\n"), "steps: a rollout needs at least one step"),
            (format!("{head}steps: 3\n"), "steps: expected a non-empty list, got 3"),
            (with_steps("  - { shadow: 1.0, weight: 5 }\n"), "steps[0]: give one of 'shadow' (a share in (0, 1]) or 'weight' (a percent in (0, 100]), not both"),
            (with_steps("  - { hold: 1h }\n"), "steps[0]: needs one of: 'shadow'"),
            (with_steps("  - { weight: 5, wait: 1h }\n"), "steps[0]: unknown field 'wait' (expected one of: shadow, weight, hold, min_requests)"),
            (with_steps("  - { shadow: 0 }\n  - { weight: 100 }\n"), "steps[0].shadow: must be a share above 0 and at most 1, got 0"),
            (with_steps("  - { shadow: 1.5 }\n  - { weight: 100 }\n"), "steps[0].shadow: must be a share above 0 and at most 1, got 1.5"),
            (with_steps("  - { weight: 0 }\n  - { weight: 100 }\n"), "steps[0].weight: must be a percent above 0 and at most 100, got 0"),
            (with_steps("  - { weight: 150 }\n"), "steps[0].weight: must be a percent above 0 and at most 100, got 150"),
            (with_steps("  - { weight: five }\n"), "steps[0].weight: expected a number, got five"),
            (with_steps("  - { weight: 50 }\n  - { weight: 25 }\n  - { weight: 100 }\n"), "steps[1].weight: weights must not fall: 25 after 50 in steps[0]"),
            (with_steps("  - { weight: 5 }\n  - { weight: 50 }\n"), "steps[1]: the last step must be 'weight: 100' (all traffic to the candidate before it is promoted), got 'weight: 50'"),
            (with_steps("  - { shadow: 1 }\n"), "steps[0]: the last step must be 'weight: 100'"),
            (with_steps(&format!("  - {{ shadow: 1 }}\n  - {{ shadow: 0.5 }}\n{last}")), "steps[1]: only one shadow step is allowed (steps[0] is one)"),
            (with_steps(&format!("  - {{ weight: 5 }}\n  - {{ shadow: 1 }}\n{last}")), "steps[1]: the shadow step must come before the weight steps (steps[0] is a weight step)"),
            (with_steps("  - { weight: 100, hold: 2w }\n"), "steps[0].hold: expected a duration: a number and one of s, m, h, d (90s, 10m, 72h, 1.5h), got '2w'"),
            (with_steps("  - { weight: 100, hold: 60 }\n"), "steps[0].hold: expected a duration: a number and one of s, m, h, d (90s, 10m, 72h, 1.5h), got 60"),
            (with_steps("  - { weight: 100, min_requests: -5 }\n"), "steps[0].min_requests: expected a whole number, 0 or more, got -5"),
            (with_steps("  - { weight: 100, min_requests: 2.5 }\n"), "steps[0].min_requests: expected a whole number, 0 or more, got 2.5"),
            // Guardrails.
            (format!("{head}steps: [ {{ weight: 100 }} ]\nguardrails: {{ metric: srm }}\n"), "guardrails: expected a list of guardrails"),
            (with_guard("srm"), "guardrails[0]: expected a mapping, got srm"),
            (with_guard("{ max: 0.1 }"), "guardrails[0]: 'metric' is required (one of: error_rate, latency_p99, disagreement, feedback.<name>, srm)"),
            (with_guard("{ metric: errors }"), "guardrails[0].metric: unknown metric 'errors' (expected one of: error_rate, latency_p99, disagreement, feedback.<name>, srm)"),
            (with_guard("{ metric: feedback }"), "guardrails[0].metric: name the feedback metric: feedback.<name>, e.g. feedback.conversion"),
            (with_guard("{ metric: error_rate, max_ratio: 2 }"), "guardrails[0]: unknown field 'max_ratio' (expected one of: metric, max_increase)"),
            (with_guard("{ metric: error_rate }"), "guardrails[0]: error_rate needs 'max_increase' (the largest allowed rise in error rate, candidate − baseline, e.g. 0.01)"),
            (with_guard("{ metric: error_rate, max_increase: 1.5 }"), "guardrails[0].max_increase: must be from 0 to below 1, got 1.5"),
            (with_guard("{ metric: error_rate, max_increase: high }"), "guardrails[0].max_increase: expected a number, got high"),
            (with_guard("{ metric: latency_p99 }"), "guardrails[0]: latency_p99 needs one of: 'max_ratio' (candidate p99 / baseline p99, above 1, e.g. 1.25), 'max_increase_ms'"),
            (with_guard("{ metric: latency_p99, max_ratio: 1.2, max_increase_ms: 5 }"), "guardrails[0]: give only one of: max_ratio, max_increase_ms"),
            (with_guard("{ metric: latency_p99, max_ratio: 0.9 }"), "guardrails[0].max_ratio: must be above 1, got 0.9"),
            (with_guard("{ metric: latency_p99, max_increase_ms: 0 }"), "guardrails[0].max_increase_ms: must be above 0, got 0"),
            (with_guard("{ metric: latency_p99, max: 3 }"), "guardrails[0]: unknown field 'max' (expected one of: metric, max_ratio, max_increase_ms)"),
            (with_guard("{ metric: disagreement, max: 0.05 }"), "guardrails[0]: disagreement needs 'output' (the output the shadow comparison compares, e.g. label)"),
            (with_guard("{ metric: disagreement, output: label }"), "guardrails[0]: disagreement needs 'max' (the largest allowed share of disagreeing answers, e.g. 0.05)"),
            (with_guard("{ metric: disagreement, output: label, max: 5 }"), "guardrails[0].max: must be from 0 to 1, got 5"),
            (with_guard("{ metric: feedback.conversion }"), "guardrails[0]: feedback.conversion needs 'max_decrease' (the largest allowed fall, baseline − candidate, e.g. 0.02)"),
            (with_guard("{ metric: feedback.conversion, max_decrease: -1 }"), "guardrails[0].max_decrease: must be 0 or more, got -1"),
            (with_guard("{ metric: feedback.conversion, max_increase: 1 }"), "guardrails[0]: unknown field 'max_increase' (expected one of: metric, max_decrease)"),
            (with_guard("{ metric: srm, p: 0 }"), "guardrails[0].p: must be above 0 and below 1, got 0"),
            (with_guard("{ metric: srm, max: 0.1 }"), "guardrails[0]: unknown field 'max' (expected one of: metric, p)"),
            (with_guard("{ metric: srm }\n  - { metric: srm, p: 0.01 }"), "guardrails[1]: a second 'srm' guardrail (guardrails[0] is one); give one limit per metric"),
        ];
        for (text, want) in cases {
            let e = read(&text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}\n  got:  {e}\n  want: {want}");
        }
    }

    #[test]
    fn a_side_may_carry_an_injected_fault() {
        let p = read("kind: rollout\nbaseline: { model: m, version: 1 }\ncandidate: { model: m, version: 2, fault: { error_rate: 0.2, delay_ms: 50 } }\nsteps: [ { weight: 100 } ]\n").unwrap();
        assert_eq!(p.candidate_fault, Some(Fault { error_rate: 0.2, delay_ms: 50 }));
        assert_eq!(p.baseline_fault, None);
        let e = read("kind: rollout\nbaseline: { model: m, version: 1, fault: { error_rate: 2 } }\ncandidate: { model: m, version: 2 }\nsteps: [ { weight: 100 } ]\n").unwrap_err();
        assert_eq!(e, "baseline.fault.error_rate: must be from 0 to 1, got 2");
        let e = read("kind: rollout\nbaseline: { model: m, version: 1 }\ncandidate: { model: m, version: 2, fault: { errors: 1 } }\nsteps: [ { weight: 100 } ]\n").unwrap_err();
        assert!(e.starts_with("candidate.fault: unknown field 'errors'"), "{e}");
    }
}
