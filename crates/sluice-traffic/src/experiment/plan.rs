//! An experiment's plan: the `kind: experiment` document of `endpoint.yaml` read into a checked
//! [`ExperimentPlan`] (arms and their weights, the metrics fed back, the design that plans the
//! sample size, the sequential switch, how long a request id stays attributable). Errors are
//! `(field path, message)` in the style of [`crate::definition`]: each names the field, unknown
//! fields are errors, and a message says what was expected.

use serde_yaml::Value;

use super::Design;
use crate::definition::{bad, get, join, list, mapping, number, show, sticky, string, target, Bad, Sticky, Target};
use crate::rollout::plan::parse_duration;

/// A checked A/B (or A/B/n) experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentPlan {
    /// What keeps a user in one arm; `None`: each request is drawn on its own.
    pub unit: Option<Sticky>,
    /// At least two; the first is the control every other arm is compared with.
    pub arms: Vec<Arm>,
    /// At least one; exactly one is primary (the first, unless one says `primary: true`).
    pub metrics: Vec<MetricSpec>,
    pub design: Option<Design>,
    /// Read the always-valid (sequential) test in verdicts; else the fixed-horizon one, which is
    /// only valid once, at the planned size.
    pub sequential: bool,
    /// How long feedback may name a request id after the request (default 24 h).
    pub attribution_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arm {
    pub name: String,
    pub target: Target,
    /// Positive; shares are weight / Σ weights.
    pub weight: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A yes/no outcome per unit (a click, a conversion): a rate.
    Proportion,
    /// A number per outcome (revenue, time spent): a mean.
    Mean,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricSpec {
    pub name: String,
    pub kind: MetricKind,
    pub primary: bool,
}

impl ExperimentPlan {
    pub fn primary(&self) -> &MetricSpec {
        self.metrics.iter().find(|m| m.primary).unwrap_or(&self.metrics[0])
    }
}

const KEYS: &[&str] = &["kind", "unit", "arms", "metrics", "design", "sequential", "attribution"];
const DAY_MS: u64 = 24 * 3_600_000;

/// A name feedback and reports can carry as it is: letters, digits, `_`, `-`, `.`.
fn plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Reads a whole `endpoint.yaml` document of `kind: experiment`.
pub fn parse(doc: &Value) -> Result<ExperimentPlan, Bad> {
    let top = doc.as_mapping().ok_or_else(|| bad("", format!("expected a mapping, got {}", show(doc))))?;
    match get(top, "kind") {
        None => return Err(bad("", "'kind' is required: experiment")),
        Some(Value::String(k)) if k == "experiment" => {}
        Some(k) => return Err(bad("kind", format!("expected 'experiment', got {}", show(k)))),
    }
    let m = mapping(doc, "", KEYS)?;
    let unit = get(m, "unit").map(|u| sticky(u, "unit")).transpose()?;

    let mut arms: Vec<Arm> = Vec::new();
    let raw = list(m, "arms", "")?;
    if raw.len() < 2 {
        return Err(bad("arms", format!("an experiment needs at least two arms, got {}", raw.len())));
    }
    for (i, a) in raw.iter().enumerate() {
        let path = format!("arms[{i}]");
        let (t, am) = target(a, &path, &["name", "weight"])?;
        let name = string(am, "name", &path)?.ok_or_else(|| bad(&path, "'name' is required (control, treatment…)"))?;
        if !plain_name(&name) {
            return Err(bad(&join(&path, "name"), format!("use letters, digits, '_', '-' or '.', got '{name}'")));
        }
        if let Some(j) = arms.iter().position(|x| x.name == name) {
            return Err(bad(&join(&path, "name"), format!("'{name}' is also the name of arms[{j}]")));
        }
        let weight = number(am, "weight", &path)?.unwrap_or(1.0);
        if weight <= 0.0 {
            return Err(bad(&join(&path, "weight"), format!("must be above 0, got {weight}")));
        }
        arms.push(Arm { name, target: t, weight });
    }

    let mut metrics: Vec<MetricSpec> = Vec::new();
    for (i, v) in list(m, "metrics", "")?.iter().enumerate() {
        let path = format!("metrics[{i}]");
        let mm = mapping(v, &path, &["name", "type", "primary"])?;
        let name = string(mm, "name", &path)?.ok_or_else(|| bad(&path, "'name' is required"))?;
        if !plain_name(&name) {
            return Err(bad(&join(&path, "name"), format!("use letters, digits, '_', '-' or '.', got '{name}'")));
        }
        if let Some(j) = metrics.iter().position(|x| x.name == name) {
            return Err(bad(&join(&path, "name"), format!("'{name}' is also the name of metrics[{j}]")));
        }
        let kind = match string(mm, "type", &path)?.as_deref() {
            Some("proportion") => MetricKind::Proportion,
            Some("mean") => MetricKind::Mean,
            Some(other) => {
                return Err(bad(&join(&path, "type"), format!("expected proportion or mean, got '{other}'")))
            }
            None => return Err(bad(&path, "'type' is required: proportion (a rate) or mean")),
        };
        let primary = match get(mm, "primary") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(bad(&join(&path, "primary"), format!("expected true or false, got {}", show(v)))),
        };
        if primary {
            if let Some(j) = metrics.iter().position(|x| x.primary) {
                return Err(bad(&join(&path, "primary"), format!("metrics[{j}] is primary already; give one")));
            }
        }
        metrics.push(MetricSpec { name, kind, primary });
    }
    if !metrics.iter().any(|x| x.primary) {
        metrics[0].primary = true;
    }

    let design = get(m, "design").map(|d| design(d, "design")).transpose()?;
    if let Some(d) = &design {
        let primary = metrics.iter().find(|x| x.primary).expect("one is primary");
        if primary.kind != MetricKind::Proportion {
            return Err(bad(
                "design",
                format!(
                    "plans a rate (baseline_rate, mde), but the primary metric '{}' is a mean: make a proportion \
                     metric primary, or leave the design out",
                    primary.name
                ),
            ));
        }
        if d.units_per_arm().is_none() {
            return Err(bad("design", "these rates plan no sample size (is baseline_rate + mde below 1?)"));
        }
    }
    let sequential = match get(m, "sequential") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(bad("sequential", format!("expected true or false, got {}", show(v)))),
    };
    let attribution_ms = match string(m, "attribution", "")? {
        None => DAY_MS,
        Some(t) => match parse_duration(&t) {
            Ok(ms) if ms > 0 => ms,
            Ok(_) => return Err(bad("attribution", "must be longer than 0")),
            Err(e) => return Err(bad("attribution", e)),
        },
    };
    Ok(ExperimentPlan { unit, arms, metrics, design, sequential, attribution_ms })
}

fn design(v: &Value, path: &str) -> Result<Design, Bad> {
    let m = mapping(v, path, &["baseline_rate", "mde", "alpha", "power"])?;
    let need = |key: &str, what: &str| -> Result<f64, Bad> {
        number(m, key, path)?.ok_or_else(|| bad(path, format!("'{key}' is required: {what}")))
    };
    let baseline_rate = need("baseline_rate", "the primary metric's rate today, e.g. 0.10")?;
    let mde = need("mde", "the smallest absolute change worth finding, e.g. 0.02")?;
    let alpha = number(m, "alpha", path)?.unwrap_or(0.05);
    let power = number(m, "power", path)?.unwrap_or(0.8);
    let within = |key: &str, x: f64, ok: bool, range: &str| {
        if ok {
            Ok(())
        } else {
            Err(bad(&join(path, key), format!("must be {range}, got {x}")))
        }
    };
    within("baseline_rate", baseline_rate, baseline_rate > 0.0 && baseline_rate < 1.0, "between 0 and 1")?;
    within("mde", mde, mde > 0.0 && baseline_rate + mde < 1.0, "above 0, with baseline_rate + mde below 1")?;
    within("alpha", alpha, alpha > 0.0 && alpha <= 0.5, "above 0 and at most 0.5")?;
    within("power", power, power > 0.0 && power < 1.0, "between 0 and 1")?;
    Ok(Design { baseline_rate, mde, alpha, power })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<ExperimentPlan, String> {
        let doc: Value = serde_yaml::from_str(text).unwrap();
        parse(&doc).map_err(|(path, msg)| if path.is_empty() { msg } else { format!("{path}: {msg}") })
    }

    const EXAMPLE: &str = "kind: experiment
unit: { header: x-user-id }
arms:
  - { name: control,   model: ranker, version: 1, weight: 50 }
  - { name: treatment, model: ranker, version: 2, weight: 50 }
metrics:
  - { name: click,   type: proportion, primary: true }
  - { name: revenue, type: mean }
design: { baseline_rate: 0.10, mde: 0.02, alpha: 0.05, power: 0.8 }
sequential: true
";

    #[test]
    fn the_issue_example_reads() {
        let p = read(EXAMPLE).unwrap();
        assert_eq!(p.unit, Some(Sticky::Header("x-user-id".into())));
        assert_eq!(p.arms.len(), 2);
        assert_eq!(p.arms[1].target, Target::Model { name: "ranker".into(), version: Some("2".into()) });
        assert_eq!(p.primary().name, "click");
        assert_eq!(p.metrics[1].kind, MetricKind::Mean);
        assert_eq!(p.design.unwrap().units_per_arm(), Some(3841));
        assert!(p.sequential);
        assert_eq!(p.attribution_ms, DAY_MS);
        // The first metric is primary when none says so.
        let p = read(&EXAMPLE.replace(", primary: true", "")).unwrap();
        assert_eq!(p.primary().name, "click");
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases = [
            (
                EXAMPLE.replace("  - { name: treatment, model: ranker, version: 2, weight: 50 }\n", ""),
                "arms: an experiment needs at least two arms, got 1",
            ),
            (
                EXAMPLE.replace("name: treatment", "name: control"),
                "arms[1].name: 'control' is also the name of arms[0]",
            ),
            (
                EXAMPLE.replace("weight: 50 }\n  - { name: treatment", "weight: 0 }\n  - { name: treatment"),
                "arms[0].weight: must be above 0, got 0",
            ),
            (EXAMPLE.replace("type: mean", "type: sum"), "metrics[1].type: expected proportion or mean, got 'sum'"),
            (
                EXAMPLE.replace("type: mean }", "type: mean, primary: true }"),
                "metrics[1].primary: metrics[0] is primary already; give one",
            ),
            (
                EXAMPLE.replace("mde: 0.02", "mde: 0.95"),
                "design.mde: must be above 0, with baseline_rate + mde below 1, got 0.95",
            ),
            (
                EXAMPLE.replace("sequential: true", "sequential: yes please"),
                "sequential: expected true or false, got yes please",
            ),
            (EXAMPLE.replace("sequential: true", "attribution: 3 weeks"), "attribution: expected a duration"),
            (EXAMPLE.replace("unit:", "units:"), "unknown field 'units'"),
            (EXAMPLE.replace("name: control,", "name: 'con trol',"), "arms[0].name: use letters, digits"),
        ];
        for (text, want) in cases {
            let got = read(&text).unwrap_err();
            assert!(got.starts_with(want) || got.contains(want), "want {want:?}, got {got:?}");
        }
        let mean_primary =
            EXAMPLE.replace(", primary: true", "").replace("  - { name: click,   type: proportion }\n", "");
        let got = read(&mean_primary).unwrap_err();
        assert!(got.starts_with("design: plans a rate") && got.contains("'revenue' is a mean"), "{got}");
    }
}
