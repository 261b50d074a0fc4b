//! `<repo>/<name>/endpoint.yaml`, read into a checked definition. Every error names the file and
//! the field (`rules[1].when.all[0]: unknown field 'max_char'`), and unknown fields are errors:
//! a typo must not silently route traffic somewhere else. Whether the targets exist, and whether
//! their inputs agree, is checked when the endpoint is loaded beside the models.

use serde_yaml::{Mapping, Value};
use sluice_types::api::{ModelMetadata, TensorMetadata};

use crate::rules::{Condition, Size, Test};

/// What a policy sends traffic to.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Model { name: String, version: Option<String> },
    Endpoint(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub when: Condition,
    pub to: Target,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub target: Target,
    /// The output whose largest value is the stage's confidence; `None` on the last stage.
    pub confidence: Option<(String, bool)>,
    pub threshold: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Sticky {
    Header(String),
    Parameter(String),
}

impl Sticky {
    /// The unit of a request: the header's value, or the parameter's (a non-string parameter as
    /// its JSON text); `None` when the request does not carry it.
    pub fn unit<'a>(
        &self,
        ctx: &'a sluice_types::RequestContext,
        req: &'a sluice_types::InferRequest,
    ) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        match self {
            Sticky::Header(h) => ctx.header(h).map(Cow::Borrowed),
            Sticky::Parameter(p) => req.parameters.get(p).map(|v| match v {
                serde_json::Value::String(s) => Cow::Borrowed(s.as_str()),
                other => Cow::Owned(other.to_string()),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Shadow {
    pub target: Target,
    pub share: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Definition {
    Route {
        rules: Vec<Rule>,
        default: Option<Target>,
    },
    Cascade {
        stages: Vec<Stage>,
    },
    Split {
        targets: Vec<(Target, f64)>,
        sticky: Option<Sticky>,
    },
    Shadow {
        primary: Target,
        shadows: Vec<Shadow>,
        compare: Option<String>,
        log_sample: f64,
    },
    /// A candidate rolled out over a baseline in steps, under guardrails.
    Rollout(Box<crate::rollout::RolloutPlan>),
    /// Arms compared on outcomes fed back.
    Experiment(Box<crate::experiment::plan::ExperimentPlan>),
    /// A Triton ensemble, read from its model config (not from `endpoint.yaml`), with the version
    /// directories it was found with.
    Ensemble {
        spec: crate::ensemble::Spec,
        versions: Vec<String>,
    },
}

impl Definition {
    /// Every endpoint or model it sends traffic to (for cycle and existence checks).
    pub fn targets(&self) -> Vec<&Target> {
        self.targets_at().into_iter().map(|(_, t)| t).collect()
    }

    /// [`Definition::targets`] with the field each is declared at (`rules[1].to`), for errors.
    pub fn targets_at(&self) -> Vec<(String, &Target)> {
        match self {
            Definition::Route { rules, default } => rules
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("rules[{i}].to"), &r.to))
                .chain(default.iter().map(|d| ("default".to_string(), d)))
                .collect(),
            Definition::Cascade { stages } => {
                stages.iter().enumerate().map(|(i, s)| (format!("stages[{i}]"), &s.target)).collect()
            }
            Definition::Split { targets, .. } => {
                targets.iter().enumerate().map(|(i, (t, _))| (format!("targets[{i}]"), t)).collect()
            }
            Definition::Shadow { primary, shadows, .. } => std::iter::once(("primary".to_string(), primary))
                .chain(shadows.iter().enumerate().map(|(i, s)| (format!("shadows[{i}]"), &s.target)))
                .collect(),
            Definition::Rollout(plan) => {
                vec![("baseline".to_string(), &plan.baseline), ("candidate".to_string(), &plan.candidate)]
            }
            Definition::Experiment(plan) => {
                plan.arms.iter().enumerate().map(|(i, a)| (format!("arms[{i}]"), &a.target)).collect()
            }
            Definition::Ensemble { spec, .. } => spec
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("ensemble_scheduling.step[{i}]"), &s.target))
                .collect(),
        }
    }

    /// Checks that the targets whose metadata are known (`meta`: `None` while a target is not
    /// loaded) take the same inputs, that outputs of one name agree in type, and that the outputs
    /// a cascade reads its confidence from, or a shadow compares, exist. Errors name the file and
    /// the field.
    pub fn check_signatures(&self, file: &str, meta: impl Fn(&Target) -> Option<ModelMetadata>) -> Result<(), String> {
        let known: Vec<(String, ModelMetadata)> =
            self.targets_at().into_iter().filter_map(|(path, t)| meta(t).map(|m| (path, m))).collect();
        if let Definition::Ensemble { spec, .. } = self {
            return check_steps(file, spec, &known);
        }
        let signature = |ts: &[TensorMetadata]| {
            let mut v: Vec<(String, String)> = ts.iter().map(|t| (t.name.clone(), t.datatype.clone())).collect();
            v.sort();
            v
        };
        let show = |v: &[(String, String)]| v.iter().map(|(n, d)| format!("{n} {d}")).collect::<Vec<_>>().join(", ");
        if let Some((first_path, first)) = known.first() {
            let want = signature(&first.inputs);
            for (path, m) in &known[1..] {
                let got = signature(&m.inputs);
                if got != want {
                    return Err(format!(
                        "{file}: {path}: '{}' takes inputs [{}] but {first_path} ('{}') takes [{}]; the targets of an endpoint must take the same inputs",
                        m.name,
                        show(&got),
                        first.name,
                        show(&want)
                    ));
                }
                for o in &m.outputs {
                    if let Some(f) = first.outputs.iter().find(|f| f.name == o.name && f.datatype != o.datatype) {
                        return Err(format!(
                            "{file}: {path}: output '{}' of '{}' is {} but {first_path} ('{}') gives {}",
                            o.name, m.name, o.datatype, first.name, f.datatype
                        ));
                    }
                }
            }
        }
        let needs = |path: &str, output: &str, what: &str| -> Result<(), String> {
            match known.iter().find(|(p, _)| p == path) {
                Some((_, m)) if !m.outputs.iter().any(|o| o.name == output) => Err(format!(
                    "{file}: {path}: {what} output '{output}', which '{}' does not have (it has: {})",
                    m.name,
                    m.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
                )),
                _ => Ok(()),
            }
        };
        match self {
            Definition::Cascade { stages } => {
                for (i, s) in stages.iter().enumerate() {
                    if let Some((output, _)) = &s.confidence {
                        needs(&format!("stages[{i}]"), output, "confidence is read from")?;
                    }
                }
            }
            Definition::Shadow { compare: Some(output), shadows, .. } => {
                needs("primary", output, "compare names")?;
                for i in 0..shadows.len() {
                    needs(&format!("shadows[{i}]"), output, "compare names")?;
                }
            }
            Definition::Rollout(plan) => {
                for g in &plan.guardrails {
                    if let crate::rollout::Metric::Disagreement { output } = &g.metric {
                        needs("baseline", output, "the disagreement guardrail compares")?;
                        needs("candidate", output, "the disagreement guardrail compares")?;
                    }
                }
            }
            Definition::Route { .. }
            | Definition::Split { .. }
            | Definition::Shadow { compare: None, .. }
            | Definition::Experiment(_)
            | Definition::Ensemble { .. } => {}
        }
        Ok(())
    }
}

/// An ensemble's steps against the metadata of their models (`known`: by step path, those
/// loaded now): every mapped input and output must exist on the model.
fn check_steps(file: &str, spec: &crate::ensemble::Spec, known: &[(String, ModelMetadata)]) -> Result<(), String> {
    for (i, step) in spec.steps.iter().enumerate() {
        let path = format!("ensemble_scheduling.step[{i}]");
        let Some((_, m)) = known.iter().find(|(p, _)| *p == path) else { continue };
        let names = |ts: &[TensorMetadata]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>().join(", ");
        for (input, _) in &step.inputs {
            if !m.inputs.iter().any(|t| &t.name == input) {
                return Err(format!(
                    "{file}: {path}.input_map: '{}' has no input '{input}' (it has: {})",
                    m.name,
                    names(&m.inputs)
                ));
            }
        }
        for (output, _) in &step.outputs {
            if !m.outputs.iter().any(|t| &t.name == output) {
                return Err(format!(
                    "{file}: {path}.output_map: '{}' has no output '{output}' (it has: {})",
                    m.name,
                    names(&m.outputs)
                ));
            }
        }
    }
    Ok(())
}

/// Parses the text of `file` (named in errors).
pub fn parse(file: &str, text: &str) -> Result<Definition, String> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| format!("{file}: not valid YAML: {e}"))?;
    definition(&doc).map_err(
        |(path, msg)| if path.is_empty() { format!("{file}: {msg}") } else { format!("{file}: {path}: {msg}") },
    )
}

/// An error: the field's path and what is wrong with it.
pub(crate) type Bad = (String, String);

pub(crate) fn bad(path: &str, msg: impl Into<String>) -> Bad {
    (path.to_string(), msg.into())
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The mapping at `path`, refusing keys outside `allowed`.
pub(crate) fn mapping<'a>(v: &'a Value, path: &str, allowed: &[&str]) -> Result<&'a Mapping, Bad> {
    let m = v.as_mapping().ok_or_else(|| bad(path, format!("expected a mapping, got {}", show(v))))?;
    for k in m.keys() {
        let k = k.as_str().ok_or_else(|| bad(path, format!("keys must be strings, got {}", show(k))))?;
        if !allowed.contains(&k) {
            return Err(bad(path, format!("unknown field '{k}' (expected one of: {})", allowed.join(", "))));
        }
    }
    Ok(m)
}

pub(crate) fn show(v: &Value) -> String {
    serde_yaml::to_string(v).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

pub(crate) fn get<'a>(m: &'a Mapping, key: &str) -> Option<&'a Value> {
    m.get(key)
}

pub(crate) fn string(m: &Mapping, key: &str, path: &str) -> Result<Option<String>, Bad> {
    match get(m, key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(v) => Err(bad(&join(path, key), format!("expected a non-empty string, got {}", show(v)))),
    }
}

pub(crate) fn number(m: &Mapping, key: &str, path: &str) -> Result<Option<f64>, Bad> {
    match get(m, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| bad(&join(path, key), format!("expected a number, got {}", show(v)))),
    }
}

pub(crate) fn list<'a>(m: &'a Mapping, key: &str, path: &str) -> Result<&'a Vec<Value>, Bad> {
    match get(m, key) {
        Some(Value::Sequence(s)) if !s.is_empty() => Ok(s),
        Some(v) => Err(bad(&join(path, key), format!("expected a non-empty list, got {}", show(v)))),
        None => Err(bad(path, format!("'{key}' is required"))),
    }
}

fn definition(doc: &Value) -> Result<Definition, Bad> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("", "'kind' is required: route, cascade, split, shadow, rollout or experiment"))?;
    match kind {
        "route" => {
            let m = mapping(doc, "", &["kind", "rules", "default"])?;
            let mut rules = Vec::new();
            for (i, r) in list(m, "rules", "")?.iter().enumerate() {
                let path = format!("rules[{i}]");
                let rm = mapping(r, &path, &["when", "to"])?;
                let when = get(rm, "when").ok_or_else(|| bad(&path, "'when' is required"))?;
                let to = get(rm, "to").ok_or_else(|| bad(&path, "'to' is required"))?;
                rules.push(Rule {
                    when: condition(when, &join(&path, "when"))?,
                    to: target(to, &join(&path, "to"), &[])?.0,
                });
            }
            let default = get(m, "default").map(|d| target(d, "default", &[]).map(|t| t.0)).transpose()?;
            Ok(Definition::Route { rules, default })
        }
        "cascade" => {
            let m = mapping(doc, "", &["kind", "stages"])?;
            let raw = list(m, "stages", "")?;
            let mut stages = Vec::new();
            for (i, s) in raw.iter().enumerate() {
                let path = format!("stages[{i}]");
                let last = i + 1 == raw.len();
                let (t, sm) = target(s, &path, &["confidence", "threshold"])?;
                let confidence = match get(sm, "confidence") {
                    None => None,
                    Some(c) => {
                        let cp = join(&path, "confidence");
                        let cm = mapping(c, &cp, &["output", "softmax"])?;
                        let output = string(cm, "output", &cp)?.ok_or_else(|| bad(&cp, "'output' is required"))?;
                        let softmax = match get(cm, "softmax") {
                            None => false,
                            Some(Value::Bool(b)) => *b,
                            Some(v) => {
                                return Err(bad(
                                    &join(&cp, "softmax"),
                                    format!("expected true or false, got {}", show(v)),
                                ))
                            }
                        };
                        Some((output, softmax))
                    }
                };
                let threshold = number(sm, "threshold", &path)?;
                if !last && (confidence.is_none() || threshold.is_none()) {
                    return Err(bad(&path, "a stage before the last needs 'confidence' and 'threshold'"));
                }
                let threshold = threshold.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&threshold) {
                    return Err(bad(&join(&path, "threshold"), format!("must be between 0 and 1, got {threshold}")));
                }
                stages.push(Stage { target: t, confidence, threshold: threshold as f32 });
            }
            if stages.len() < 2 {
                return Err(bad("stages", "a cascade needs at least two stages"));
            }
            Ok(Definition::Cascade { stages })
        }
        "split" => {
            let m = mapping(doc, "", &["kind", "targets", "sticky"])?;
            let mut targets = Vec::new();
            for (i, t) in list(m, "targets", "")?.iter().enumerate() {
                let path = format!("targets[{i}]");
                let (target, tm) = target(t, &path, &["weight"])?;
                let w = number(tm, "weight", &path)?.ok_or_else(|| bad(&path, "'weight' is required"))?;
                targets.push((target, w));
            }
            let weights: Vec<f64> = targets.iter().map(|(_, w)| *w).collect();
            crate::split::check_weights(&weights).map_err(|e| bad("targets", e))?;
            let sticky = get(m, "sticky").map(|s| sticky(s, "sticky")).transpose()?;
            Ok(Definition::Split { targets, sticky })
        }
        "shadow" => {
            let m = mapping(doc, "", &["kind", "primary", "shadows", "compare", "log"])?;
            let primary = get(m, "primary").ok_or_else(|| bad("", "'primary' is required"))?;
            let primary = target(primary, "primary", &[])?.0;
            let mut shadows = Vec::new();
            for (i, s) in list(m, "shadows", "")?.iter().enumerate() {
                let path = format!("shadows[{i}]");
                let (t, sm) = target(s, &path, &["share"])?;
                let share = number(sm, "share", &path)?.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&share) {
                    return Err(bad(&join(&path, "share"), format!("must be between 0 and 1, got {share}")));
                }
                shadows.push(Shadow { target: t, share });
            }
            let compare = match get(m, "compare") {
                None => None,
                Some(c) => string(mapping(c, "compare", &["output"])?, "output", "compare")?,
            };
            let log_sample = match get(m, "log") {
                None => 0.0,
                Some(l) => {
                    let s = number(mapping(l, "log", &["sample"])?, "sample", "log")?.unwrap_or(0.0);
                    if !(0.0..=1.0).contains(&s) {
                        return Err(bad("log.sample", format!("must be between 0 and 1, got {s}")));
                    }
                    s
                }
            };
            Ok(Definition::Shadow { primary, shadows, compare, log_sample })
        }
        "rollout" => Ok(Definition::Rollout(Box::new(crate::rollout::plan::parse(doc)?))),
        "experiment" => Ok(Definition::Experiment(Box::new(crate::experiment::plan::parse(doc)?))),
        other => Err(bad(
            "kind",
            format!("unknown kind '{other}' (expected route, cascade, split, shadow, rollout or experiment)"),
        )),
    }
}

/// A target (`model` with an optional `version`, or `endpoint`), with the extra keys a policy
/// allows beside it.
pub(crate) fn target<'a>(v: &'a Value, path: &str, extra: &[&str]) -> Result<(Target, &'a Mapping), Bad> {
    let mut allowed = vec!["model", "version", "endpoint"];
    allowed.extend_from_slice(extra);
    let m = mapping(v, path, &allowed)?;
    let t = match (string(m, "model", path)?, string(m, "endpoint", path)?) {
        (Some(name), None) => Target::Model { name, version: string(m, "version", path)? },
        (None, Some(name)) if get(m, "version").is_none() => Target::Endpoint(name),
        (None, Some(_)) => return Err(bad(path, "'version' goes with 'model', not with 'endpoint'")),
        _ => return Err(bad(path, "give one of 'model' (with an optional 'version') or 'endpoint'")),
    };
    Ok((t, m))
}

/// A sticky unit: the request header (matched case-insensitively, so kept lowercase) or the
/// request parameter whose value keeps a user on one side.
pub(crate) fn sticky(v: &Value, path: &str) -> Result<Sticky, Bad> {
    let m = mapping(v, path, &["header", "parameter"])?;
    match (string(m, "header", path)?, string(m, "parameter", path)?) {
        (Some(h), None) => Ok(Sticky::Header(h.to_ascii_lowercase())),
        (None, Some(p)) => Ok(Sticky::Parameter(p)),
        _ => Err(bad(path, "give one of 'header' or 'parameter'")),
    }
}

const TESTS: &[&str] = &["equals", "in", "lt", "gt", "present"];
const SIZES: &[&str] = &["max_chars", "min_chars", "max_elements", "min_elements"];

fn condition(v: &Value, path: &str) -> Result<Condition, Bad> {
    let m = v.as_mapping().ok_or_else(|| bad(path, format!("expected a condition, got {}", show(v))))?;
    let has = |k: &str| m.contains_key(k);
    let combinator = |key: &str| -> Result<Vec<Condition>, Bad> {
        mapping(v, path, &[key])?;
        let items = list(m, key, path)?;
        items.iter().enumerate().map(|(i, c)| condition(c, &format!("{}[{i}]", join(path, key)))).collect()
    };
    if has("all") {
        return Ok(Condition::All(combinator("all")?));
    }
    if has("any") {
        return Ok(Condition::Any(combinator("any")?));
    }
    if has("not") {
        mapping(v, path, &["not"])?;
        return Ok(Condition::Not(Box::new(condition(&m["not"], &join(path, "not"))?)));
    }
    if has("input") {
        let mut allowed = vec!["input"];
        allowed.extend_from_slice(SIZES);
        mapping(v, path, &allowed)?;
        let name = string(m, "input", path)?.ok_or_else(|| bad(path, "'input' names a tensor"))?;
        let size = one_of(m, SIZES, path)?;
        let n = m[size]
            .as_u64()
            .ok_or_else(|| bad(&join(path, size), format!("expected a count, got {}", show(&m[size]))))?
            as usize;
        let size = match size {
            "max_chars" => Size::MaxChars(n),
            "min_chars" => Size::MinChars(n),
            "max_elements" => Size::MaxElements(n),
            _ => Size::MinElements(n),
        };
        return Ok(Condition::Input { name, size });
    }
    for key in ["parameter", "header"] {
        if has(key) {
            let mut allowed = vec![key];
            allowed.extend_from_slice(TESTS);
            mapping(v, path, &allowed)?;
            let name = string(m, key, path)?.ok_or_else(|| bad(path, format!("'{key}' needs a name")))?;
            let op = one_of(m, TESTS, path)?;
            let test = test(op, &m[op], &join(path, op))?;
            return Ok(if key == "parameter" {
                Condition::Parameter { key: name, test }
            } else {
                Condition::Header { name: name.to_ascii_lowercase(), test }
            });
        }
    }
    Err(bad(path, "a condition is one of: parameter, header, input, all, any, not"))
}

/// The one key of `keys` that `m` has.
fn one_of<'a>(m: &Mapping, keys: &[&'a str], path: &str) -> Result<&'a str, Bad> {
    let present: Vec<&str> = keys.iter().copied().filter(|k| m.contains_key(*k)).collect();
    match present.as_slice() {
        [one] => Ok(one),
        [] => Err(bad(path, format!("needs one of: {}", keys.join(", ")))),
        many => Err(bad(path, format!("give only one of: {}", many.join(", ")))),
    }
}

fn test(op: &str, v: &Value, path: &str) -> Result<Test, Bad> {
    let json = |v: &Value| serde_json::to_value(v).map_err(|e| bad(path, e.to_string()));
    match op {
        "equals" => Ok(Test::Equals(json(v)?)),
        "in" => match v {
            Value::Sequence(items) if !items.is_empty() => {
                Ok(Test::In(items.iter().map(json).collect::<Result<_, _>>()?))
            }
            _ => Err(bad(path, format!("expected a non-empty list, got {}", show(v)))),
        },
        "lt" | "gt" => {
            let x = v.as_f64().ok_or_else(|| bad(path, format!("expected a number, got {}", show(v))))?;
            Ok(if op == "lt" { Test::Lt(x) } else { Test::Gt(x) })
        }
        _ => {
            v.as_bool().map(Test::Present).ok_or_else(|| bad(path, format!("expected true or false, got {}", show(v))))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ROUTE: &str = r#"
kind: route                      # first matching rule wins
rules:
  - when: { parameter: customer_tier, equals: enterprise }     # V2 request parameters
    to: { model: spam-accurate }
  - when: { all: [ { input: TEXT, max_chars: 50 }, { parameter: confidence_threshold, lt: 0.9 } ] }
    to: { model: spam-fast }
  - when: { header: x-canary, equals: "1" }                      # HTTP header / gRPC metadata
    to: { model: spam-accurate, version: 2 }
default: { model: spam-accurate }
"#;

    fn model(name: &str, version: Option<&str>) -> Target {
        Target::Model { name: name.into(), version: version.map(str::to_string) }
    }

    #[test]
    fn the_issues_route_reads_as_written() {
        let Definition::Route { rules, default } = parse("e.yaml", ROUTE).unwrap() else { panic!() };
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0].when,
            Condition::Parameter { key: "customer_tier".into(), test: Test::Equals(json!("enterprise")) }
        );
        assert_eq!(
            rules[1].when,
            Condition::All(vec![
                Condition::Input { name: "TEXT".into(), size: Size::MaxChars(50) },
                Condition::Parameter { key: "confidence_threshold".into(), test: Test::Lt(0.9) },
            ])
        );
        assert_eq!(rules[2].when, Condition::Header { name: "x-canary".into(), test: Test::Equals(json!("1")) });
        assert_eq!(rules[2].to, model("spam-accurate", Some("2")));
        assert_eq!(default, Some(model("spam-accurate", None)));
    }

    #[test]
    fn the_issues_cascade_split_and_shadow_read_as_written() {
        let c = "kind: cascade\nstages:\n  - model: spam-fast\n    confidence: { output: probabilities }\n    threshold: 0.8\n  - model: spam-accurate\n";
        let Definition::Cascade { stages } = parse("c.yaml", c).unwrap() else { panic!() };
        assert_eq!(stages[0].confidence, Some(("probabilities".into(), false)));
        assert_eq!(stages[0].threshold, 0.8);
        assert_eq!(stages[1].target, model("spam-accurate", None));

        let s = "kind: split\ntargets:\n  - { model: add_sub, version: 1, weight: 95 }\n  - { model: add_sub, version: 2, weight: 5 }\nsticky: { header: X-User-Id }\n";
        let Definition::Split { targets, sticky } = parse("s.yaml", s).unwrap() else { panic!() };
        assert_eq!(targets, vec![(model("add_sub", Some("1")), 95.0), (model("add_sub", Some("2")), 5.0)]);
        assert_eq!(sticky, Some(Sticky::Header("x-user-id".into())));

        let h = "kind: shadow\nprimary: { model: spam-accurate, version: 1 }\nshadows:\n  - { model: spam-accurate, version: 2, share: 1.0 }\ncompare: { output: label }\nlog: { sample: 0.1 }\n";
        let d = parse("h.yaml", h).unwrap();
        assert_eq!(d.targets().len(), 2);
        let Definition::Shadow { shadows, compare, log_sample, .. } = d else { panic!() };
        assert_eq!((shadows[0].share, compare.as_deref(), log_sample), (1.0, Some("label"), 0.1));

        let nested = "kind: split\ntargets:\n  - { endpoint: spam-router, weight: 1 }\n";
        assert_eq!(parse("n.yaml", nested).unwrap().targets(), vec![&Target::Endpoint("spam-router".into())]);
    }

    fn meta(name: &str, inputs: &[(&str, &str)], outputs: &[(&str, &str)]) -> ModelMetadata {
        let t = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(n, d)| TensorMetadata { name: n.to_string(), datatype: d.to_string(), shape: vec![-1] })
                .collect()
        };
        ModelMetadata { name: name.into(), inputs: t(inputs), outputs: t(outputs), ..Default::default() }
    }

    #[test]
    fn targets_must_take_the_same_inputs_and_have_the_outputs_named() {
        let text = meta("fast", &[("TEXT", "BYTES")], &[("label", "INT64"), ("probabilities", "FP32")]);
        let ids = meta("ids", &[("input_ids", "INT64")], &[("label", "INT64")]);
        let c = parse(
            "c.yaml",
            "kind: cascade\nstages:\n  - model: fast\n    confidence: { output: probs }\n    threshold: 0.8\n  - model: ids\n",
        )
        .unwrap();
        let lookup = |m: &[ModelMetadata]| {
            let m = m.to_vec();
            move |t: &Target| match t {
                Target::Model { name, .. } => m.iter().find(|x| &x.name == name).cloned(),
                Target::Endpoint(_) => None,
            }
        };
        let e = c.check_signatures("c.yaml", lookup(&[text.clone(), ids])).unwrap_err();
        assert!(e.starts_with("c.yaml: stages[1]: 'ids' takes inputs [input_ids INT64]"), "{e}");
        // A target not loaded yet is not held against the endpoint.
        let e = c.check_signatures("c.yaml", lookup(std::slice::from_ref(&text))).unwrap_err();
        assert!(e.contains("stages[0]: confidence is read from output 'probs', which 'fast' does not have"), "{e}");
        let other = meta("ids", &[("TEXT", "BYTES")], &[("label", "FP32")]);
        let s =
            parse("s.yaml", "kind: split\ntargets:\n  - { model: fast, weight: 1 }\n  - { model: ids, weight: 1 }\n")
                .unwrap();
        let e = s.check_signatures("s.yaml", lookup(&[text.clone(), other])).unwrap_err();
        assert!(e.contains("targets[1]: output 'label' of 'ids' is FP32"), "{e}");
        let same = meta("ids", &[("TEXT", "BYTES")], &[("label", "INT64")]);
        assert!(s.check_signatures("s.yaml", lookup(&[text, same])).is_ok());
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases = [
            ("kind: router\n", "x.yaml: kind: unknown kind 'router'"),
            ("rules: []\n", "x.yaml: 'kind' is required"),
            ("kind: route\nrules:\n  - when: { input: TEXT, max_char: 5 }\n    to: { model: m }\n", "x.yaml: rules[0].when: unknown field 'max_char'"),
            ("kind: route\nrules:\n  - when: { all: [ { parameter: p, lt: low } ] }\n    to: { model: m }\n", "x.yaml: rules[0].when.all[0].lt: expected a number"),
            ("kind: route\nrules:\n  - when: { parameter: p, equals: 1, lt: 2 }\n    to: { model: m }\n", "give only one of: equals, lt"),
            ("kind: route\nrules:\n  - when: { parameter: p, equals: 1 }\n    to: { modle: m }\n", "x.yaml: rules[0].to: unknown field 'modle'"),
            ("kind: route\nrules:\n  - when: { parameter: p, equals: 1 }\n", "x.yaml: rules[0]: 'to' is required"),
            ("kind: split\ntargets:\n  - { model: a, weight: -1 }\n", "x.yaml: targets: weights must be numbers >= 0"),
            ("kind: split\ntargets:\n  - { model: a }\n", "x.yaml: targets[0]: 'weight' is required"),
            ("kind: split\ntargets:\n  - { model: a, weight: 1 }\nsticky: { header: h, parameter: p }\n", "x.yaml: sticky: give one of"),
            ("kind: cascade\nstages:\n  - model: a\n  - model: b\n", "x.yaml: stages[0]: a stage before the last needs"),
            ("kind: cascade\nstages:\n  - model: a\n    confidence: { output: p }\n    threshold: 1.5\n  - model: b\n", "x.yaml: stages[0].threshold: must be between 0 and 1"),
            ("kind: shadow\nprimary: { endpoint: e, version: 2 }\nshadows: [ { model: m } ]\n", "x.yaml: primary: 'version' goes with 'model'"),
            ("kind: shadow\nprimary: { model: m }\nshadows: [ { model: m, share: 2 } ]\n", "x.yaml: shadows[0].share: must be between 0 and 1"),
            ("kind: route\nrules: [\n", "x.yaml: not valid YAML"),
            ("kind: experiment\narms: [ { name: a, model: m } ]\nmetrics: [ { name: c, type: proportion } ]\n", "x.yaml: arms: an experiment needs at least two arms"),
        ];
        for (text, want) in cases {
            let e = parse("x.yaml", text).unwrap_err();
            assert!(e.contains(want), "{text:?}\n  got:  {e}\n  want: {want}");
        }
    }
}
