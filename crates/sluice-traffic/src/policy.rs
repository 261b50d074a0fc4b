//! Route, cascade and split as endpoints over other endpoints. A policy finds its targets by name
//! through the [`Resolver`] on every request (so a target that reloads is picked up), answers
//! under its own name, and says in the response's parameters what answered: `sluice_model`,
//! `sluice_model_version`, and `sluice_rule` (route) or `sluice_stage` (cascade).
//!
//! Shadow copies need a queue and statistics of their own: see [`crate::shadow`].

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::generation::{GenerateRequest, TokenStream};
use sluice_types::{
    Answer, DataType, Endpoint, InferRequest, ModelConfig, RequestContext, RequestedOutput, Resolver, ServeError,
    TensorData, TrafficCounter,
};

use crate::cascade;
use crate::definition::{Definition, Rule, Stage, Target};
use crate::own_stats::{extend_unique, OwnStats};
use crate::split;

/// A policy endpoint. It holds its resolver weakly: the resolver (the engine) holds it.
pub struct Policy {
    name: String,
    definition: Definition,
    resolver: Weak<dyn Resolver>,
    /// A split's targets as the assignment hashes them (a stable name each) with their weights.
    split_keys: Vec<(String, f64)>,
    /// `definition.targets()`, in that order: what `pick` indexes.
    flat: Vec<Target>,
    /// Requests sent to each of `flat`.
    sent: Vec<AtomicU64>,
    /// Requests each cascade stage passed on to the next.
    escalated: Vec<AtomicU64>,
    own: OwnStats,
}

impl Policy {
    /// A route, cascade or split over `definition`'s targets (a shadow is a
    /// [`crate::shadow::ShadowEndpoint`]).
    pub fn new(name: &str, definition: Definition, resolver: Weak<dyn Resolver>) -> Result<Policy, ServeError> {
        if let Definition::Shadow { .. }
        | Definition::Ensemble { .. }
        | Definition::Rollout(_)
        | Definition::Experiment(_) = definition
        {
            return Err(ServeError::Internal(format!(
                "endpoint '{name}': a shadow, a rollout or an ensemble is not a Policy"
            )));
        }
        let split_keys = match &definition {
            Definition::Split { targets, .. } => targets.iter().map(|(t, w)| (target_key(t), *w)).collect(),
            Definition::Route { .. }
            | Definition::Cascade { .. }
            | Definition::Shadow { .. }
            | Definition::Rollout(_)
            | Definition::Experiment(_)
            | Definition::Ensemble { .. } => Vec::new(),
        };
        let flat: Vec<Target> = definition.targets().into_iter().cloned().collect();
        let sent = flat.iter().map(|_| AtomicU64::new(0)).collect();
        let escalated = match &definition {
            Definition::Cascade { stages } => stages.iter().map(|_| AtomicU64::new(0)).collect(),
            _ => Vec::new(),
        };
        Ok(Policy {
            name: name.to_string(),
            definition,
            resolver,
            split_keys,
            flat,
            sent,
            escalated,
            own: Default::default(),
        })
    }

    fn resolve(&self, t: &Target) -> Result<Arc<dyn Endpoint>, ServeError> {
        resolve_target(&self.resolver, t)
    }

    /// Target `i` of `flat`, counting the request sent to it.
    fn send_to(&self, i: usize) -> Result<Arc<dyn Endpoint>, ServeError> {
        self.sent[i].fetch_add(1, Ordering::Relaxed);
        self.resolve(&self.flat[i])
    }

    fn kind(&self) -> &'static str {
        match self.definition {
            Definition::Route { .. } => "route",
            Definition::Cascade { .. } => "cascade",
            Definition::Split { .. } => "split",
            Definition::Shadow { .. } => "shadow",
            Definition::Rollout(_) => "rollout",
            Definition::Experiment(_) => "experiment",
            Definition::Ensemble { .. } => "ensemble",
        }
    }

    /// The target whose inputs and outputs the endpoint shows.
    fn representative(&self) -> &Target {
        match &self.definition {
            Definition::Route { rules, default } => default.as_ref().unwrap_or(&rules[0].to),
            Definition::Cascade { stages } => &stages[stages.len() - 1].target,
            Definition::Split { targets, .. } => &targets[0].0,
            Definition::Shadow { primary, .. } => primary,
            Definition::Rollout(plan) => &plan.baseline,
            Definition::Experiment(plan) => &plan.arms[0].target,
            Definition::Ensemble { spec, .. } => &spec.steps[0].target,
        }
    }

    /// Where a request goes, for route and split (an index into `flat`); `None` for a cascade.
    /// Also the tag for the response (`sluice_rule`).
    fn pick(&self, ctx: &RequestContext, req: &InferRequest) -> Result<Option<(usize, Option<usize>)>, ServeError> {
        match &self.definition {
            Definition::Route { rules, default } => {
                match rules.iter().position(|Rule { when, .. }| when.holds(req, ctx)) {
                    Some(i) => Ok(Some((i, Some(i)))),
                    // The default comes after the rules in `flat`.
                    None => default.as_ref().map(|_| Some((rules.len(), None))).ok_or_else(|| {
                        ServeError::invalid(format!("endpoint '{}': no rule matched and it has no default", self.name))
                    }),
                }
            }
            Definition::Split { sticky, .. } => {
                let unit = sticky.as_ref().and_then(|s| s.unit(ctx, req));
                // Without a unit, each request is its own (its id is unique per request).
                let unit = unit.unwrap_or(Cow::Borrowed(ctx.request_id.as_str()));
                Ok(Some((split::assign(&self.name, &unit, &self.split_keys), None)))
            }
            Definition::Cascade { .. }
            | Definition::Shadow { .. }
            | Definition::Rollout(_)
            | Definition::Experiment(_)
            | Definition::Ensemble { .. } => Ok(None),
        }
    }

    /// One request, by the definition's kind.
    async fn answer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        if let Definition::Cascade { stages } = &self.definition {
            return self.cascade(ctx, request, stages).await;
        }
        let Some((target, rule)) = self.pick(ctx, &request)? else {
            return Err(ServeError::Unsupported(format!("endpoint '{}' cannot answer this", self.name)));
        };
        let answer = self.send_to(target)?.infer(ctx, request).await?;
        let mut answer = tag(&self.name, answer);
        if let Some(i) = rule {
            answer.response.parameters.insert("sluice_rule".into(), i.into());
        }
        Ok(answer)
    }

    async fn cascade(&self, ctx: &RequestContext, req: InferRequest, stages: &[Stage]) -> Result<Answer, ServeError> {
        let override_threshold = match req.parameters.get("confidence_threshold") {
            None => None,
            Some(v) => Some(v.as_f64().filter(|t| (0.0..=1.0).contains(t)).ok_or_else(|| {
                ServeError::invalid(format!(
                    "request parameter 'confidence_threshold' must be a number from 0 to 1, got {v}"
                ))
            })? as f32),
        };
        for (i, stage) in stages.iter().enumerate() {
            let last = i + 1 == stages.len();
            let mut stage_req = req.clone();
            // The confidence output must come back even when the client asked for others.
            let added = match &stage.confidence {
                Some((output, _))
                    if !last && !req.outputs.is_empty() && !req.outputs.iter().any(|o| &o.name == output) =>
                {
                    stage_req.outputs.push(RequestedOutput { name: output.clone(), parameters: Default::default() });
                    true
                }
                _ => false,
            };
            // Stage i is target i of `flat`.
            let mut answer = self.send_to(i)?.infer(ctx, stage_req).await?;
            let confident = match (&stage.confidence, last) {
                (_, true) | (None, _) => true,
                (Some((output, softmax)), false) => {
                    let c = stage_confidence(&answer, output, *softmax)?;
                    cascade::answers(c, override_threshold.unwrap_or(stage.threshold), false)
                }
            };
            if confident {
                if added {
                    let output = &stage.confidence.as_ref().map(|c| c.0.clone()).unwrap_or_default();
                    answer.response.outputs.retain(|t| &t.name != output);
                }
                let mut answer = tag(&self.name, answer);
                answer.response.parameters.insert("sluice_stage".into(), i.into());
                return Ok(answer);
            }
            self.escalated[i].fetch_add(1, Ordering::Relaxed);
        }
        Err(ServeError::Internal(format!("endpoint '{}': the cascade's last stage did not answer", self.name)))
    }
}

/// The answer under the endpoint's name, saying what answered.
pub(crate) fn tag(endpoint: &str, mut answer: Answer) -> Answer {
    let r = &mut answer.response;
    r.parameters.insert("sluice_model".into(), std::mem::replace(&mut r.model_name, endpoint.to_string()).into());
    r.parameters.insert("sluice_model_version".into(), std::mem::take(&mut r.model_version).into());
    answer
}

/// `sluice_endpoint_requests_total` for each target; a target named twice (two rules to one
/// model, two steps on one model) is one series.
pub(crate) fn requests_by_target<'a>(
    endpoint: &str,
    sent: impl Iterator<Item = (&'a Target, &'a AtomicU64)>,
) -> Vec<TrafficCounter> {
    let mut out: Vec<TrafficCounter> = Vec::new();
    for (t, n) in sent {
        let c = TrafficCounter::requests(endpoint, &target_key(t), n.load(Ordering::Relaxed));
        match out.iter_mut().find(|o| o.labels == c.labels) {
            Some(o) => o.value += c.value,
            None => out.push(c),
        }
    }
    out
}

/// The endpoint serving a target, through the resolver a policy holds weakly (the resolver, the
/// engine, holds the policy).
pub(crate) fn resolve_target(resolver: &Weak<dyn Resolver>, t: &Target) -> Result<Arc<dyn Endpoint>, ServeError> {
    let r = resolver.upgrade().ok_or_else(|| ServeError::Unavailable("the server is shutting down".into()))?;
    match t {
        Target::Model { name, version } => r.resolve(name, version.as_deref()),
        Target::Endpoint(name) => r.resolve(name, None),
    }
}

/// A target's stable name: what a split hashes with the unit, and how reports and metrics name it
/// (`model`, `model:version`, `endpoint:name`).
pub fn target_key(t: &Target) -> String {
    match t {
        Target::Model { name, version: Some(v) } => format!("{name}:{v}"),
        Target::Model { name, version: None } => name.clone(),
        Target::Endpoint(name) => format!("endpoint:{name}"),
    }
}

/// The confidence of a stage's answer, from its output `output` (rows: its last dimension):
/// FP32 values, or the `score:index[:label]` strings of Triton's `classification` when the client
/// asked for them (each row's first string holds its top score).
fn stage_confidence(answer: &Answer, output: &str, softmax: bool) -> Result<Option<f32>, ServeError> {
    let t = answer.response.outputs.iter().find(|t| t.name == output).ok_or_else(|| {
        ServeError::Internal(format!("cascade stage '{}' did not return output '{output}'", answer.response.model_name))
    })?;
    let row = t.shape.last().copied().unwrap_or(1).max(1) as usize;
    match (t.datatype, &t.data) {
        (DataType::Fp32, TensorData::Fixed(bytes)) => {
            let values: Vec<f32> =
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Ok(cascade::confidence(&values, row, softmax))
        }
        (DataType::Bytes, TensorData::Bytes(items)) if !softmax => {
            let tops = items.chunks(row).map(|r| {
                let first = String::from_utf8_lossy(&r[0]).into_owned();
                first.split(':').next().and_then(|score| score.parse::<f32>().ok())
            });
            Ok(tops.collect::<Option<Vec<f32>>>().and_then(|v| v.into_iter().reduce(f32::min)))
        }
        _ => Err(ServeError::invalid(format!(
            "cascade confidence output '{output}' of '{}': expected FP32 values{}, got {}",
            answer.response.model_name,
            if softmax { "" } else { " or classification strings" },
            t.datatype
        ))),
    }
}

#[async_trait]
impl Endpoint for Policy {
    fn name(&self) -> &str {
        &self.name
    }

    fn ready(&self) -> bool {
        self.flat.iter().all(|t| self.resolve(t).is_ok_and(|e| e.ready()))
    }

    /// The representative target's inputs, and the outputs every ready target gives.
    fn metadata(&self) -> ModelMetadata {
        let mut m = match self.resolve(self.representative()) {
            Ok(e) => e.metadata(),
            Err(_) => ModelMetadata::default(),
        };
        for e in self.flat.iter().filter_map(|t| self.resolve(t).ok()).filter(|e| e.ready()) {
            let theirs = e.metadata().outputs;
            m.outputs.retain(|o| theirs.iter().any(|x| x.name == o.name));
        }
        m.name = self.name.clone();
        m.versions = vec!["1".into()];
        m.platform = "sluice_endpoint".into();
        m
    }

    fn config(&self) -> Arc<ModelConfig> {
        let mut c = match self.resolve(self.representative()) {
            Ok(e) => (*e.config()).clone(),
            Err(_) => ModelConfig::default(),
        };
        c.name = self.name.clone();
        Arc::new(c)
    }

    /// Its own requests (as version 1, the version its metadata shows), then every target's
    /// statistics, each model version once.
    fn statistics(&self) -> Vec<ModelStatistics> {
        let mut out = vec![self.own.entry(&self.name, "1")];
        for t in &self.flat {
            extend_unique(&mut out, self.resolve(t).map(|e| e.statistics()).unwrap_or_default());
        }
        out
    }

    fn check(&self, request: &InferRequest) -> Result<(), ServeError> {
        self.resolve(self.representative())?.check(request)
    }

    async fn infer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        let started = std::time::Instant::now();
        let result = self.answer(ctx, request).await;
        self.own.record(result.is_ok(), started.elapsed().as_nanos() as u64, 1);
        result
    }

    fn generative(&self) -> bool {
        !matches!(self.definition, Definition::Cascade { .. })
            && self.resolve(self.representative()).is_ok_and(|e| e.generative())
    }

    /// Route and split send a generation where they would send a request (the rules see its
    /// headers; it has no V2 parameters or inputs).
    async fn generate(
        &self,
        ctx: &RequestContext,
        request: GenerateRequest,
    ) -> Result<Box<dyn TokenStream>, ServeError> {
        match self.pick(ctx, &InferRequest::default())? {
            Some((target, _)) => self.send_to(target)?.generate(ctx, request).await,
            None => Err(ServeError::Unsupported(format!(
                "endpoint '{}' is a cascade: it answers infer requests, not generations",
                self.name
            ))),
        }
    }

    fn traffic_report(&self) -> Option<Value> {
        let targets: Vec<Value> = self
            .definition
            .targets()
            .iter()
            .zip(&self.sent)
            .map(|(t, n)| {
                json!({
                    "target": target_key(t),
                    "ready": self.resolve(t).is_ok_and(|e| e.ready()),
                    "requests": n.load(Ordering::Relaxed),
                })
            })
            .collect();
        let mut report = json!({ "name": self.name, "kind": self.kind(), "ready": self.ready(), "targets": targets });
        if !self.escalated.is_empty() {
            report["escalated"] = self.escalated.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        }
        Some(report)
    }

    fn counters(&self) -> Vec<TrafficCounter> {
        let mut out = requests_by_target(&self.name, self.flat.iter().zip(&self.sent));
        for (i, n) in self.escalated.iter().enumerate().take(self.escalated.len().saturating_sub(1)) {
            out.push(TrafficCounter {
                metric: "sluice_cascade_escalations_total",
                help: "Requests a cascade stage was not confident enough to answer",
                labels: vec![("endpoint", self.name.clone()), ("stage", i.to_string())],
                value: n.load(Ordering::Relaxed),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_types::{InferResponse, Tensor, Timings};

    use super::*;
    use crate::definition::parse;
    use crate::testing::{Fake, Table};

    fn table(models: &[(&str, &[f32])]) -> Arc<Table> {
        Table::of(models.iter().map(|(n, p)| Fake::new(n, p, 0)))
    }

    fn policy(t: &Arc<Table>, yaml: &str) -> Policy {
        let weak: Weak<dyn Resolver> = Arc::downgrade(&(t.clone() as Arc<dyn Resolver>));
        Policy::new("ep", parse("ep/endpoint.yaml", yaml).unwrap(), weak).unwrap()
    }

    fn calls(t: &Table, name: &str) -> usize {
        t.0[name].calls()
    }

    fn text(s: &str) -> InferRequest {
        InferRequest { inputs: vec![Tensor::from_strings("TEXT", vec![1, 1], &[s])], ..Default::default() }
    }

    #[tokio::test]
    async fn a_route_takes_the_first_matching_rule_and_says_which() {
        let t = table(&[("fast", &[0.9, 0.1]), ("accurate", &[0.6, 0.4])]);
        let p = policy(
            &t,
            "kind: route\nrules:\n  - when: { header: x-canary, equals: '1' }\n    to: { model: fast }\ndefault: { model: accurate }\n",
        );
        let canary = RequestContext::new("r").with_header_pairs(&[("x-canary".into(), "1".into())]);
        let a = p.infer(&canary, text("hi")).await.unwrap();
        assert_eq!(a.response.model_name, "ep");
        assert_eq!(a.response.parameters["sluice_model"], json!("fast"));
        assert_eq!(a.response.parameters["sluice_model_version"], json!("1"));
        assert_eq!(a.response.parameters["sluice_rule"], json!(0));
        let a = p.infer(&RequestContext::new("r"), text("hi")).await.unwrap();
        assert_eq!(a.response.parameters["sluice_model"], json!("accurate"));
        assert!(!a.response.parameters.contains_key("sluice_rule"), "the default is no rule");
    }

    #[tokio::test]
    async fn a_cascade_escalates_when_unsure_and_the_request_can_move_the_bar() {
        let yaml = "kind: cascade\nstages:\n  - model: fast\n    confidence: { output: probabilities }\n    threshold: 0.8\n  - model: accurate\n";
        let sure = table(&[("fast", &[0.9, 0.1]), ("accurate", &[0.6, 0.4])]);
        let a = policy(&sure, yaml).infer(&RequestContext::new("r"), text("x")).await.unwrap();
        assert_eq!(
            (a.response.parameters["sluice_model"].clone(), a.response.parameters["sluice_stage"].clone()),
            (json!("fast"), json!(0))
        );
        assert_eq!(calls(&sure, "accurate"), 0);

        let unsure = table(&[("fast", &[0.7, 0.3]), ("accurate", &[0.6, 0.4])]);
        let p = policy(&unsure, yaml);
        let a = p.infer(&RequestContext::new("r"), text("x")).await.unwrap();
        assert_eq!(a.response.parameters["sluice_stage"], json!(1));
        assert_eq!((calls(&unsure, "fast"), calls(&unsure, "accurate")), (1, 1));
        // The caller accepts less certainty: the first stage answers.
        let mut lenient = text("x");
        lenient.parameters.insert("confidence_threshold".into(), json!(0.65));
        assert_eq!(
            p.infer(&RequestContext::new("r"), lenient).await.unwrap().response.parameters["sluice_stage"],
            json!(0)
        );
        let mut bad = text("x");
        bad.parameters.insert("confidence_threshold".into(), json!("high"));
        assert!(p
            .infer(&RequestContext::new("r"), bad)
            .await
            .unwrap_err()
            .to_string()
            .contains("confidence_threshold"));
    }

    #[tokio::test]
    async fn a_cascade_asks_for_its_confidence_output_and_hides_it_again() {
        let t = table(&[("fast", &[0.9, 0.1]), ("accurate", &[0.6, 0.4])]);
        let p = policy(&t, "kind: cascade\nstages:\n  - model: fast\n    confidence: { output: probabilities }\n    threshold: 0.8\n  - model: accurate\n");
        let mut req = text("x");
        req.outputs = vec![RequestedOutput { name: "label".into(), parameters: Default::default() }];
        let a = p.infer(&RequestContext::new("r"), req).await.unwrap();
        assert_eq!(a.response.parameters["sluice_stage"], json!(0));
        let names: Vec<&str> = a.response.outputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["label"]);
    }

    #[test]
    fn confidence_reads_classification_strings_too() {
        let answer = |t: Tensor| Answer {
            response: InferResponse { model_name: "m".into(), outputs: vec![t], ..Default::default() },
            timings: Timings::default(),
        };
        let strings = Tensor::from_strings("p", vec![2, 1], &["0.95:1:spam", "0.7:0:ham"]);
        assert_eq!(stage_confidence(&answer(strings.clone()), "p", false).unwrap(), Some(0.7));
        assert!(stage_confidence(&answer(strings), "p", true).is_err(), "no softmax over a top-k");
        let garbled = Tensor::from_strings("p", vec![1, 1], &["spam"]);
        assert_eq!(stage_confidence(&answer(garbled), "p", false).unwrap(), None, "never confident");
        let ints = Tensor::from_vec("p", vec![1, 2], vec![1i64, 2]);
        assert!(stage_confidence(&answer(ints), "p", false).unwrap_err().to_string().contains("INT64"));
    }

    #[tokio::test]
    async fn a_split_is_sticky_per_header_and_follows_its_weights() {
        let t = table(&[("a", &[1.0]), ("b", &[1.0])]);
        let p = policy(&t, "kind: split\ntargets:\n  - { model: a, weight: 80 }\n  - { model: b, weight: 20 }\nsticky: { header: x-user-id }\n");
        let mut to_b = 0;
        for u in 0..2000 {
            let ctx =
                RequestContext::new(format!("req-{u}")).with_header_pairs(&[("x-user-id".into(), format!("user-{u}"))]);
            let first = p.infer(&ctx, text("x")).await.unwrap().response.parameters["sluice_model"].clone();
            let again = p
                .infer(
                    &RequestContext::new("other").with_header_pairs(&[("x-user-id".into(), format!("user-{u}"))]),
                    text("x"),
                )
                .await
                .unwrap();
            assert_eq!(again.response.parameters["sluice_model"], first, "user-{u} moved");
            to_b += usize::from(first == json!("b"));
        }
        assert!((to_b as f64 / 2000.0 - 0.2).abs() < 0.03, "{to_b}");
    }

    #[tokio::test]
    async fn missing_targets_and_shadows_are_clear_errors() {
        let t = table(&[("a", &[1.0])]);
        let p = policy(&t, "kind: route\nrules:\n  - when: { header: x, present: true }\n    to: { model: gone }\n");
        assert!(!p.ready());
        let ctx = RequestContext::new("r").with_header_pairs(&[("x".into(), "1".into())]);
        assert!(matches!(p.infer(&ctx, text("x")).await, Err(ServeError::NotFound(_))));
        let e = p.infer(&RequestContext::new("r"), text("x")).await.unwrap_err();
        assert!(e.to_string().contains("no rule matched"), "{e}");
        let weak: Weak<dyn Resolver> = Arc::downgrade(&(t.clone() as Arc<dyn Resolver>));
        let shadow = parse("s", "kind: shadow\nprimary: { model: a }\nshadows: [ { model: a } ]\n").unwrap();
        assert!(Policy::new("s", shadow, weak).is_err());
    }
}
