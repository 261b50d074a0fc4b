//! The experiment endpoint (`kind: experiment`): assigns each unit to an arm for good (weighted
//! rendezvous hashing on the endpoint's name, as a split does: a unit keeps its arm on every
//! replica and across restarts), counts the units each arm is shown to, remembers which arm
//! answered each request id for the attribution window, takes outcomes fed back
//! ([`ExperimentControl::feedback`]), and reports them through [`super::Analysis`].
//!
//! - A unit is exposed when it is assigned (whether its request then succeeds or not: counting
//!   only successes would itself skew the arms' sizes, a classic cause of sample ratio mismatch).
//! - A proportion metric's rate is the exposed units (requests without a sticky unit) that had a
//!   `1` fed back, over the exposed units; a mean metric's mean is over the values fed back.
//! - Feedback names a request id (attributed to the arm that answered it, while the id is
//!   remembered) or a unit that was exposed (its arm by the hash); a repeated feedback `id`
//!   counts once.
//! - Counts live in memory: a restart starts the experiment's counts over (assignment does not
//!   change). Several replicas do not add their counts up yet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::{
    Answer, Endpoint, ExperimentControl, Feedback, InferRequest, ModelConfig, RequestContext, Resolver, ServeError,
    TrafficCounter,
};

use super::plan::{ExperimentPlan, MetricKind};
use super::{srm_p, verdict, Analysis, Outcomes};
use crate::definition::Target;
use crate::own_stats::{extend_unique, OwnStats};
use crate::policy::{requests_by_target, resolve_target, tag, target_key};
use crate::split;
use crate::stats::{BinomialCounts, RunningMoments};

/// Request ids remembered for attribution, and feedback ids for deduplication, at most.
const MAX_REMEMBERED: usize = 1_000_000;

enum Collected {
    /// Subjects (units, or requests) with a success.
    Proportion(HashSet<u64>),
    Mean(RunningMoments),
}

struct Stopped {
    arm: usize,
    reason: String,
    at_ms: u64,
}

struct Live {
    /// Per arm: the subjects exposed.
    exposed: Vec<HashSet<u64>>,
    /// Request id → (arm, subject), and the order they came in (oldest first), for expiry.
    answered: HashMap<String, (usize, u64)>,
    order: VecDeque<(u64, String)>,
    feedback_ids: HashSet<String>,
    feedback_order: VecDeque<String>,
    /// `[metric][arm]`.
    collected: Vec<Vec<Collected>>,
    analysis: Analysis,
    stopped: Option<Stopped>,
}

impl Live {
    fn forget_old(&mut self, now: u64, window: u64) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_sub(*at) <= window && self.order.len() <= MAX_REMEMBERED {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.answered.remove(&id);
            }
        }
    }
}

pub struct ExperimentEndpoint {
    name: String,
    plan: ExperimentPlan,
    resolver: Weak<dyn Resolver>,
    /// The arms as the assignment hashes them, with their weights.
    keys: Vec<(String, f64)>,
    live: Mutex<Live>,
    sent: Vec<AtomicU64>,
    own: OwnStats,
}

impl ExperimentEndpoint {
    pub fn new(name: &str, plan: ExperimentPlan, resolver: Weak<dyn Resolver>) -> ExperimentEndpoint {
        let arms = plan.arms.len();
        let collected = plan
            .metrics
            .iter()
            .map(|m| {
                (0..arms)
                    .map(|_| match m.kind {
                        MetricKind::Proportion => Collected::Proportion(HashSet::new()),
                        MetricKind::Mean => Collected::Mean(RunningMoments::new()),
                    })
                    .collect()
            })
            .collect();
        let alpha = plan.design.map_or(0.05, |d| d.alpha);
        let planned = plan.design.and_then(|d| d.units_per_arm());
        let live = Live {
            exposed: vec![HashSet::new(); arms],
            answered: HashMap::new(),
            order: VecDeque::new(),
            feedback_ids: HashSet::new(),
            feedback_order: VecDeque::new(),
            collected,
            analysis: Analysis::new(alpha, planned, plan.metrics.len(), arms),
            stopped: None,
        };
        ExperimentEndpoint {
            name: name.to_string(),
            keys: plan.arms.iter().map(|a| (a.name.clone(), a.weight)).collect(),
            sent: plan.arms.iter().map(|_| AtomicU64::new(0)).collect(),
            plan,
            resolver,
            live: Mutex::new(live),
            own: OwnStats::default(),
        }
    }

    fn unit(&self, ctx: &RequestContext, request: &InferRequest) -> Option<String> {
        self.plan.unit.as_ref().and_then(|u| u.unit(ctx, request)).map(|u| u.into_owned())
    }

    fn arm_of_unit(&self, unit: &str) -> usize {
        split::assign(&self.name, unit, &self.keys)
    }

    fn target(&self, arm: usize) -> &Target {
        &self.plan.arms[arm].target
    }

    async fn answer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        let unit = self.unit(ctx, &request);
        let subject = unit.as_deref().unwrap_or(&ctx.request_id).to_string();
        let now = crate::now_ms();
        let arm = {
            let mut live = self.live.lock();
            match &live.stopped {
                Some(s) => s.arm,
                None => {
                    let arm = self.arm_of_unit(&subject);
                    let h = split::key_hash(&subject);
                    live.exposed[arm].insert(h);
                    if !ctx.request_id.is_empty() {
                        live.answered.insert(ctx.request_id.clone(), (arm, h));
                        live.order.push_back((now, ctx.request_id.clone()));
                        live.forget_old(now, self.plan.attribution_ms);
                    }
                    arm
                }
            }
        };
        self.sent[arm].fetch_add(1, Ordering::Relaxed);
        let answer = resolve_target(&self.resolver, self.target(arm))?.infer(ctx, request).await?;
        let mut answer = tag(&self.name, answer);
        answer.response.parameters.insert("sluice_experiment_arm".into(), self.plan.arms[arm].name.clone().into());
        Ok(answer)
    }

    fn report_json(&self) -> Value {
        let mut live = self.live.lock();
        let units: Vec<u64> = live.exposed.iter().map(|s| s.len() as u64).collect();
        let names: Vec<String> = self.plan.arms.iter().map(|a| a.name.clone()).collect();
        let mut reports = Vec::new();
        for (i, metric) in self.plan.metrics.iter().enumerate() {
            let outcomes: Vec<Outcomes> = live.collected[i]
                .iter()
                .enumerate()
                .map(|(arm, c)| match c {
                    Collected::Proportion(hits) => {
                        let trials = units[arm];
                        Outcomes::Proportion(BinomialCounts::new((hits.len() as u64).min(trials), trials))
                    }
                    Collected::Mean(m) => Outcomes::Mean(*m),
                })
                .collect();
            reports.push(live.analysis.look(i, &metric.name, &names, &outcomes));
        }
        let weights: Vec<f64> = self.plan.arms.iter().map(|a| a.weight).collect();
        let srm = srm_p(&units, &weights);
        let planned = self.plan.design.and_then(|d| d.units_per_arm());
        let alpha = self.plan.design.map_or(0.05, |d| d.alpha);
        let primary = self.plan.metrics.iter().position(|m| m.primary).unwrap_or(0);
        let words = verdict(&reports[primary], self.plan.sequential, alpha, planned, srm);
        let least = units.iter().copied().min().unwrap_or(0);
        json!({
            "name": self.name,
            "kind": "experiment",
            "state": if live.stopped.is_some() { "stopped" } else { "running" },
            "stopped": live.stopped.as_ref().map(|s| json!({
                "arm": self.plan.arms[s.arm].name, "reason": s.reason, "at_ms": s.at_ms,
            })),
            "arms": self.plan.arms.iter().enumerate().map(|(i, a)| json!({
                "name": a.name,
                "target": target_key(&a.target),
                "weight": a.weight,
                "units": units[i],
                "requests": self.sent[i].load(Ordering::Relaxed),
            })).collect::<Vec<_>>(),
            "primary_metric": self.plan.metrics[primary].name,
            "sequential": self.plan.sequential,
            "alpha": alpha,
            "design": self.plan.design,
            "planned_units_per_arm": planned,
            "progress": planned.map(|n| least as f64 / n as f64),
            "srm_p": srm,
            "metrics": reports,
            "verdict": words,
        })
    }
}

#[async_trait]
impl Endpoint for ExperimentEndpoint {
    fn name(&self) -> &str {
        &self.name
    }

    /// Ready when every arm that may answer is.
    fn ready(&self) -> bool {
        let stopped = self.live.lock().stopped.as_ref().map(|s| s.arm);
        let ready = |arm: usize| resolve_target(&self.resolver, self.target(arm)).is_ok_and(|e| e.ready());
        match stopped {
            Some(arm) => ready(arm),
            None => (0..self.plan.arms.len()).all(ready),
        }
    }

    fn metadata(&self) -> ModelMetadata {
        let mut m = resolve_target(&self.resolver, self.target(0)).map(|e| e.metadata()).unwrap_or_default();
        m.name = self.name.clone();
        m.versions = vec!["1".into()];
        m.platform = "sluice_endpoint".into();
        m
    }

    fn config(&self) -> Arc<ModelConfig> {
        let mut c = resolve_target(&self.resolver, self.target(0)).map(|e| (*e.config()).clone()).unwrap_or_default();
        c.name = self.name.clone();
        Arc::new(c)
    }

    fn statistics(&self) -> Vec<ModelStatistics> {
        let mut out = vec![self.own.entry(&self.name, "1")];
        for a in &self.plan.arms {
            extend_unique(
                &mut out,
                resolve_target(&self.resolver, &a.target).map(|e| e.statistics()).unwrap_or_default(),
            );
        }
        out
    }

    fn check(&self, request: &InferRequest) -> Result<(), ServeError> {
        resolve_target(&self.resolver, self.target(0))?.check(request)
    }

    async fn infer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        let started = Instant::now();
        let result = self.answer(ctx, request).await;
        self.own.record(result.is_ok(), started.elapsed().as_nanos() as u64, 1);
        result
    }

    fn traffic_report(&self) -> Option<Value> {
        let mut r = self.report_json();
        r["ready"] = self.ready().into();
        r["requests"] = self.own.requests().into();
        Some(r)
    }

    fn experiment(&self) -> Option<&dyn ExperimentControl> {
        Some(self)
    }

    fn counters(&self) -> Vec<TrafficCounter> {
        requests_by_target(&self.name, self.plan.arms.iter().map(|a| &a.target).zip(&self.sent))
    }
}

impl ExperimentControl for ExperimentEndpoint {
    fn report(&self) -> Value {
        self.report_json()
    }

    fn stop(&self, arm: Option<&str>, reason: &str) -> Result<Value, ServeError> {
        let index = match arm {
            None => 0,
            Some(name) => self.plan.arms.iter().position(|a| a.name == name).ok_or_else(|| {
                ServeError::invalid(format!(
                    "experiment '{}' has no arm '{name}' (it has: {})",
                    self.name,
                    self.keys.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?,
        };
        {
            let mut live = self.live.lock();
            if let Some(s) = &live.stopped {
                return Err(ServeError::Conflict(format!(
                    "experiment '{}' stopped already (all traffic to '{}': {})",
                    self.name, self.plan.arms[s.arm].name, s.reason
                )));
            }
            live.stopped = Some(Stopped { arm: index, reason: reason.to_string(), at_ms: crate::now_ms() });
        }
        tracing::info!(endpoint = %self.name, arm = %self.plan.arms[index].name, reason, "experiment stopped");
        Ok(self.report_json())
    }

    fn feedback(&self, fb: &Feedback) -> Option<Result<Value, ServeError>> {
        let metric = self.plan.metrics.iter().position(|m| m.name == fb.metric);
        let mut live = self.live.lock();
        let (arm, subject) = match (&fb.request_id, &fb.unit) {
            (Some(id), _) => *live.answered.get(id)?,
            (None, Some(unit)) => {
                metric?;
                let (arm, subject) = (self.arm_of_unit(unit), split::key_hash(unit));
                // A unit this experiment never showed an arm to is not its to count.
                if !live.exposed[arm].contains(&subject) {
                    return None;
                }
                (arm, subject)
            }
            (None, None) => return None,
        };
        let Some(metric) = metric else {
            return Some(Err(ServeError::invalid(format!(
                "experiment '{}' has no metric '{}' (it has: {})",
                self.name,
                fb.metric,
                self.plan.metrics.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            ))));
        };
        if !fb.value.is_finite() {
            return Some(Err(ServeError::invalid(format!("feedback value must be a finite number, got {}", fb.value))));
        }
        if let Some(id) = &fb.id {
            if live.feedback_ids.contains(id) {
                return Some(Ok(
                    json!({ "experiment": self.name, "counted": false, "reason": "a repeated feedback id" }),
                ));
            }
        }
        match &mut live.collected[metric][arm] {
            Collected::Proportion(hits) => {
                if fb.value != 0.0 && fb.value != 1.0 {
                    return Some(Err(ServeError::invalid(format!(
                        "metric '{}' of experiment '{}' is a proportion: its value is 0 or 1, got {}",
                        fb.metric, self.name, fb.value
                    ))));
                }
                if fb.value == 1.0 {
                    hits.insert(subject);
                }
            }
            Collected::Mean(m) => {
                m.push(fb.value);
            }
        }
        if let Some(id) = &fb.id {
            live.feedback_ids.insert(id.clone());
            live.feedback_order.push_back(id.clone());
            if live.feedback_order.len() > MAX_REMEMBERED {
                if let Some(old) = live.feedback_order.pop_front() {
                    live.feedback_ids.remove(&old);
                }
            }
        }
        Some(Ok(json!({ "experiment": self.name, "arm": self.plan.arms[arm].name, "counted": true })))
    }
}
