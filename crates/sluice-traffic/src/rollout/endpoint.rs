//! The rollout endpoint (`kind: rollout`): serves the plan's baseline and candidate as the state
//! machine divides traffic, counts what each side does in the current step, and lets the
//! replica that drives the rollout turn every replica's counts into guardrail verdicts
//! ([`super::shared`]).
//!
//! - **Shadow step**: the baseline answers every request; a share of them is copied to the
//!   candidate after the answer, off the response path (at most `--shadow-concurrency` running
//!   and `--shadow-queue-size` waiting; more are dropped and counted), and the compared output of
//!   the disagreement guardrail is compared.
//! - **Weight steps**: a unit (the plan's sticky header or parameter, else the request id) goes
//!   to the candidate when its hashed point is below the step's percent ([`super::canary`]), the
//!   same on every replica.
//! - **Over or paused by a failure**: all to the baseline (rolled back, paused) or the candidate
//!   (promoted).
//!
//! Faults declared on a side (`fault:`) are injected into the requests the rollout sends there,
//! copies included.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_state::StateStore;
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::{
    Answer, Endpoint, InferRequest, ModelConfig, RequestContext, RequestedOutput, Resolver, RolloutAction,
    RolloutControl, ServeError, TrafficCounter,
};
use tokio::sync::Semaphore;

use super::guardrails::StepCounts;
use super::machine::{Cause, Phase, Rollout, Transition};
use super::plan::{Fault, Metric, RolloutPlan};
use crate::compare::{compare, Comparison};
use crate::definition::Target;
use crate::loaded::Loaded;
use crate::own_stats::{extend_unique, OwnStats};
use crate::policy::{resolve_target, tag, target_key};
use crate::shadow::ShadowOptions;
use crate::split;

/// Distinct units remembered per side and step for the SRM test; past it, SRM counts requests.
const MAX_UNITS: usize = 1_000_000;
/// Answered request ids this replica remembers itself (the store keeps them all for
/// [`super::shared::FEEDBACK_WINDOW`]).
const MAX_ANSWERED: usize = 100_000;

pub(super) const SIDES: [&str; 2] = ["baseline", "candidate"];
pub(super) const CAUSES: [Cause; 4] = [Cause::Start, Cause::Advance, Cause::Failure, Cause::Command];

fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::Start => "start",
        Cause::Advance => "advance",
        Cause::Failure => "failure",
        Cause::Command => "command",
    }
}

/// The machine as stored, and what this replica counted in its current step.
pub(super) struct Live {
    pub machine: Rollout,
    /// The version of the stored state `machine` is (0: none read yet).
    pub version: u64,
    /// This replica's counts since the step started (its part in the store).
    pub step: StepCounts,
    /// Units this replica has seen on each side in the step, and those not yet sent to the store.
    pub seen_units: [HashSet<u64>; 2],
    pub unsent_units: [Vec<u64>; 2],
    /// Every replica's counts for the step, as last read from the store.
    pub merged: Option<StepCounts>,
    /// `step` changed since it was last written to the store.
    pub changed: bool,
    /// Request ids answered in weight steps (for `feedback.<name>` guardrails): id → (side,
    /// step start), oldest first, and those not yet written to the store.
    pub answered: HashMap<String, (usize, u64)>,
    pub answered_order: VecDeque<String>,
    pub unsent_answered: Vec<(String, Vec<u8>)>,
}

impl Live {
    pub(super) fn new(machine: Rollout) -> Live {
        Live {
            machine,
            version: 0,
            step: StepCounts::default(),
            seen_units: Default::default(),
            unsent_units: Default::default(),
            merged: None,
            changed: false,
            answered: HashMap::new(),
            answered_order: VecDeque::new(),
            unsent_answered: Vec::new(),
        }
    }

    pub(super) fn step_started(&self) -> Option<u64> {
        self.machine.state().step_started_ms
    }

    /// Fresh counts for a new step.
    pub(super) fn reset_step(&mut self) {
        self.step = StepCounts::default();
        self.seen_units = Default::default();
        self.unsent_units = Default::default();
        self.merged = None;
        self.changed = false;
    }

    /// An answer (or a shadow copy's) of `side`.
    fn record(&mut self, side: usize, ok: bool, ms: f64) {
        self.changed = true;
        let arm = if side == 0 { &mut self.step.baseline } else { &mut self.step.candidate };
        arm.requests += 1;
        arm.errors += u64::from(!ok);
        if side == 0 {
            self.step.baseline_latency.push_ms(ms);
        } else {
            self.step.candidate_latency.push_ms(ms);
        }
    }

    /// A request answered by `side` in the weight step that started at `started`, for feedback.
    fn note_answered(&mut self, name: &str, id: &str, side: usize, started: u64) {
        if self.answered.insert(id.to_string(), (side, started)).is_none() {
            self.answered_order.push_back(id.to_string());
        }
        while self.answered_order.len() > MAX_ANSWERED {
            if let Some(old) = self.answered_order.pop_front() {
                self.answered.remove(&old);
            }
        }
        self.unsent_answered.push((super::shared::request_key(name, id), format!("{side}:{started}").into_bytes()));
    }

    /// The unit (else none: the request is its own) a request was sent to `side` for.
    fn note_unit(&mut self, side: usize, unit: Option<u64>) {
        match unit {
            Some(u) if self.seen_units[side].len() < MAX_UNITS => {
                if self.seen_units[side].insert(u) {
                    self.unsent_units[side].push(u);
                }
            }
            // A unit count that is no longer whole: SRM counts requests instead.
            Some(_) | None => self.step.per_request = true,
        }
    }

    /// The step's counts of every replica when read, else this replica's.
    pub(super) fn counts(&self) -> StepCounts {
        self.merged.clone().unwrap_or_else(|| {
            let mut c = self.step.clone();
            c.units = [self.seen_units[0].len() as u64, self.seen_units[1].len() as u64];
            c
        })
    }
}

pub(super) struct Inner {
    pub name: String,
    /// The machine's plan, read without its lock: it never changes while the endpoint lives.
    pub plan: Arc<RolloutPlan>,
    resolver: Weak<dyn Resolver>,
    /// The salt of canary assignment: the endpoint and its candidate (see [`super::canary`]).
    salt: String,
    /// The output the disagreement guardrail compares, if there is one.
    compared_output: Option<String>,
    /// The `feedback.<name>` guardrails' names: answered request ids are kept when there are any.
    pub feedback_metrics: Vec<String>,
    pub live: Mutex<Live>,
    pub store: Arc<dyn StateStore>,
    /// This process as a writer of counts and a holder of the rollout's lease.
    pub replica: String,
    /// Whether this replica holds the lease and drives the rollout.
    pub driving: AtomicBool,
    /// Whether the stored state has been read.
    pub loaded: Loaded,
    /// Held while sharing counts: a status read waits for a tick's writes in flight, else it
    /// could read the store before the units that tick took have reached it.
    pub sharing: tokio::sync::Mutex<()>,
    copy_slots: Arc<Semaphore>,
    copies_waiting: AtomicUsize,
    copy_queue: usize,
    sent: [AtomicU64; 2],
    faults: [AtomicU64; 2],
    transitions: [AtomicU64; 4],
    own: OwnStats,
}

pub struct RolloutEndpoint {
    inner: Arc<Inner>,
}

impl RolloutEndpoint {
    /// A rollout of `plan` served as `name`, its state kept in `store` under `rollout/<name>`: it
    /// continues the stored rollout when that is for the same baseline and candidate, else
    /// starts anew. Must be called inside a tokio runtime: the state is read, and then kept in
    /// step with the store, by a task started here; requests wait for the first read.
    pub fn new(
        name: &str,
        plan: RolloutPlan,
        resolver: Weak<dyn Resolver>,
        shadow: &ShadowOptions,
        store: Arc<dyn StateStore>,
        replica: &str,
    ) -> Result<RolloutEndpoint, ServeError> {
        let candidate = target_key(&plan.candidate);
        let compared_output = plan.guardrails.iter().find_map(|g| match &g.metric {
            Metric::Disagreement { output } => Some(output.clone()),
            Metric::ErrorRate | Metric::LatencyP99 | Metric::Feedback { .. } | Metric::Srm => None,
        });
        let feedback_metrics = plan
            .guardrails
            .iter()
            .filter_map(|g| match &g.metric {
                Metric::Feedback { name } => Some(name.clone()),
                Metric::ErrorRate | Metric::LatencyP99 | Metric::Disagreement { .. } | Metric::Srm => None,
            })
            .collect();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            feedback_metrics,
            plan: Arc::new(plan.clone()),
            resolver,
            salt: format!("{name}/{candidate}"),
            compared_output,
            live: Mutex::new(Live::new(Rollout::new(plan))),
            store,
            replica: replica.to_string(),
            driving: AtomicBool::new(false),
            loaded: Loaded::new(format!("rollout '{name}'")),
            sharing: tokio::sync::Mutex::new(()),
            copy_slots: Arc::new(Semaphore::new(shadow.concurrency.max(1))),
            copies_waiting: AtomicUsize::new(0),
            copy_queue: shadow.queue.max(1),
            sent: Default::default(),
            faults: Default::default(),
            transitions: Default::default(),
            own: OwnStats::default(),
        });
        tokio::spawn(super::shared::run(Arc::downgrade(&inner), format!("rollout '{name}'")));
        Ok(RolloutEndpoint { inner })
    }
}

impl Inner {
    /// A transition this replica made (and stored): counted, logged.
    pub(super) fn made(&self, t: &Transition) {
        if let Some(i) = CAUSES.iter().position(|c| *c == t.cause) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
        if t.cause == Cause::Failure {
            tracing::warn!(endpoint = %self.name, from = %t.from, to = %t.to, reason = %t.reason, "rollout transition");
        } else {
            tracing::info!(endpoint = %self.name, from = %t.from, to = %t.to, reason = %t.reason, "rollout transition");
        }
    }

    fn target(&self, side: usize) -> &Target {
        if side == 0 {
            &self.plan.baseline
        } else {
            &self.plan.candidate
        }
    }

    fn fault(&self, side: usize) -> Option<Fault> {
        if side == 0 {
            self.plan.baseline_fault
        } else {
            self.plan.candidate_fault
        }
    }

    /// One request to a side, with its fault injected: a delay, then an error for a share of
    /// requests (picked by the request id, so a retry of the same id meets the same fate).
    async fn call(&self, side: usize, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        let target = self.target(side);
        if let Some(f) = self.fault(side) {
            if f.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(f.delay_ms)).await;
            }
            if f.error_rate > 0.0
                && split::point(&format!("{}/fault/{side}", self.name), &ctx.request_id) < f.error_rate
            {
                self.faults[side].fetch_add(1, Ordering::Relaxed);
                return Err(ServeError::Unavailable(format!(
                    "fault injected by rollout '{}' into {} ({})",
                    self.name,
                    SIDES[side],
                    target_key(target)
                )));
            }
        }
        resolve_target(&self.resolver, target)?.infer(ctx, request).await
    }

    fn unit(&self, ctx: &RequestContext, request: &InferRequest) -> Option<String> {
        self.plan.unit.as_ref().and_then(|u| u.unit(ctx, request)).map(|u| u.into_owned())
    }

    /// Counts an answer of the step that began at `step_started` (a request that straddles a
    /// transition is not counted in the next step).
    fn record(&self, step_started: Option<u64>, side: usize, ok: bool, ms: f64, unit: Option<u64>) {
        let mut live = self.live.lock();
        if live.step_started() == step_started {
            live.record(side, ok, ms);
            live.note_unit(side, unit);
        }
    }
}

impl RolloutEndpoint {
    async fn answer(&self, ctx: &RequestContext, mut request: InferRequest) -> Result<Answer, ServeError> {
        let inner = &self.inner;
        inner.loaded.wait().await?;
        let (traffic, step_started, phase) = {
            let live = inner.live.lock();
            (live.machine.traffic(), live.step_started(), live.machine.phase())
        };
        let unit = inner.unit(ctx, &request);
        let counted = matches!(phase, Phase::Step(_) | Phase::Paused { by_failure: false, .. });
        let copy = traffic.shadow_share > 0.0
            && (traffic.shadow_share >= 1.0
                || split::point(&format!("{}/shadow", inner.salt), &ctx.request_id) < traffic.shadow_share);
        let side = usize::from(
            !copy && {
                let key = unit.as_deref().unwrap_or(&ctx.request_id);
                super::canary::unit_to_candidate(&inner.salt, key, traffic.candidate_percent)
            },
        );
        // The compared output must come back even when the client asked for others.
        let mut hidden = None;
        if let (true, Some(output)) = (copy, &inner.compared_output) {
            if !request.outputs.is_empty() && !request.outputs.iter().any(|o| &o.name == output) {
                request.outputs.push(RequestedOutput { name: output.clone(), parameters: Default::default() });
                hidden = Some(output.clone());
            }
        }
        let copy_request = copy.then(|| request.clone());
        inner.sent[side].fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = inner.call(side, ctx, request).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if counted {
            inner.record(step_started, side, result.is_ok(), ms, unit.as_deref().map(split::key_hash));
            let weighted = !copy && traffic.shadow_share == 0.0;
            if let (true, true, Some(started)) = (weighted, !inner.feedback_metrics.is_empty(), step_started) {
                if result.is_ok() && !ctx.request_id.is_empty() {
                    let mut live = inner.live.lock();
                    if live.step_started() == step_started {
                        live.note_answered(&inner.name, &ctx.request_id, side, started);
                    }
                }
            }
        }
        if let Some(copy_request) = copy_request {
            self.start_copy(ctx, copy_request, &result, step_started);
        }
        let mut answer = tag(&inner.name, result?);
        if let Some(h) = hidden {
            answer.response.outputs.retain(|t| t.name != h);
        }
        answer.response.parameters.insert("sluice_rollout_side".into(), SIDES[side].into());
        Ok(answer)
    }

    /// Queues a copy of a shadow step's request for the candidate, unless the queue is full.
    fn start_copy(
        &self,
        ctx: &RequestContext,
        request: InferRequest,
        baseline: &Result<Answer, ServeError>,
        step_started: Option<u64>,
    ) {
        let inner = &self.inner;
        if inner.copies_waiting.fetch_add(1, Ordering::AcqRel) >= inner.copy_queue {
            inner.copies_waiting.fetch_sub(1, Ordering::AcqRel);
            let mut live = inner.live.lock();
            if live.step_started() == step_started {
                live.step.copies_dropped += 1;
                live.changed = true;
            }
            return;
        }
        let expected = match (baseline, &inner.compared_output) {
            (Ok(a), Some(output)) => a.response.outputs.iter().find(|t| &t.name == output).cloned(),
            _ => None,
        };
        // The copy runs whatever the caller's deadline: nobody waits for it.
        let ctx = RequestContext { deadline: None, ..ctx.clone() };
        let (inner, slots) = (inner.clone(), inner.copy_slots.clone());
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            inner.copies_waiting.fetch_sub(1, Ordering::AcqRel);
            inner.sent[1].fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = inner.call(1, &ctx, request).await;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let comparison = match (&expected, &result, &inner.compared_output) {
                (Some(e), Ok(a), Some(output)) => Some(compare(output, std::slice::from_ref(e), &a.response.outputs)),
                _ => None,
            };
            let mut live = inner.live.lock();
            if live.step_started() != step_started {
                return;
            }
            live.record(1, result.is_ok(), ms);
            if let Some(Comparison::Labels { elements, agreed }) = comparison {
                live.step.compared += elements;
                live.step.disagreements += elements - agreed;
            }
        });
    }

    fn resolve(&self, t: &Target) -> Result<Arc<dyn Endpoint>, ServeError> {
        resolve_target(&self.inner.resolver, t)
    }

    /// The side that answers when traffic is all on one side, else the baseline: what the
    /// endpoint's metadata and readiness follow.
    fn answering(&self) -> &Target {
        let phase = self.inner.live.lock().machine.phase();
        self.inner.target(usize::from(phase == Phase::Promoted))
    }

    fn status_json(&self) -> Value {
        let live = self.inner.live.lock();
        let plan = &self.inner.plan;
        let status = serde_json::to_value(live.machine.status(crate::now_ms())).unwrap_or(Value::Null);
        let counts = live.counts();
        let shadow_step = live.machine.phase().step().is_some_and(|k| plan.steps[k].is_shadow());
        let side = |i: usize| {
            let (c, latency) = if i == 0 {
                (counts.baseline, &counts.baseline_latency)
            } else {
                (counts.candidate, &counts.candidate_latency)
            };
            json!({
                "target": target_key(self.inner.target(i)),
                "requests": c.requests,
                "errors": c.errors,
                "latency_p99_ms": latency.quantile_ms(0.99),
                "fault": self.inner.fault(i),
                "faults_injected": self.inner.faults[i].load(Ordering::Relaxed),
            })
        };
        json!({
            "name": self.inner.name,
            "kind": "rollout",
            "baseline": side(0),
            "candidate": side(1),
            "step_counts": {
                "shadow_copies": if shadow_step { counts.candidate.requests } else { 0 },
                "shadow_copies_dropped": counts.copies_dropped,
                "compared": counts.compared,
                "disagreements": counts.disagreements,
                "units": counts.units,
                "all_replicas": live.merged.is_some(),
            },
            "alpha": plan.alpha,
            "on_failure": plan.on_failure,
            "replica": {
                "id": self.inner.replica,
                "driving": self.inner.driving.load(Ordering::Relaxed),
                "state_store": self.inner.store.describe(),
                "state_version": live.version,
            },
            "status": status,
        })
    }
}

#[async_trait]
impl Endpoint for RolloutEndpoint {
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Ready once its state is read, when the side that answers is (both, while both answer).
    fn ready(&self) -> bool {
        if !self.inner.loaded.is_loaded() {
            return false;
        }
        let phase = self.inner.live.lock().machine.phase();
        let ready = |side: usize| self.resolve(self.inner.target(side)).is_ok_and(|e| e.ready());
        match phase {
            Phase::Promoted => ready(1),
            Phase::RolledBack | Phase::Pending | Phase::Paused { by_failure: true, .. } => ready(0),
            Phase::Step(_) | Phase::Paused { by_failure: false, .. } => ready(0) && ready(1),
        }
    }

    fn metadata(&self) -> ModelMetadata {
        let mut m = self.resolve(self.answering()).map(|e| e.metadata()).unwrap_or_default();
        m.name = self.inner.name.clone();
        m.versions = vec!["1".into()];
        m.platform = "sluice_endpoint".into();
        m
    }

    fn config(&self) -> Arc<ModelConfig> {
        let mut c = self.resolve(self.answering()).map(|e| (*e.config()).clone()).unwrap_or_default();
        c.name = self.inner.name.clone();
        Arc::new(c)
    }

    /// Its own requests (as version 1), then both sides' statistics.
    fn statistics(&self) -> Vec<ModelStatistics> {
        let mut out = vec![self.inner.own.entry(&self.inner.name, "1")];
        for side in 0..2 {
            extend_unique(&mut out, self.resolve(self.inner.target(side)).map(|e| e.statistics()).unwrap_or_default());
        }
        out
    }

    fn check(&self, request: &InferRequest) -> Result<(), ServeError> {
        self.resolve(self.answering())?.check(request)
    }

    async fn infer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        let started = Instant::now();
        let result = self.answer(ctx, request).await;
        self.inner.own.record(result.is_ok(), started.elapsed().as_nanos() as u64, 1);
        result
    }

    fn traffic_report(&self) -> Option<Value> {
        let mut report = self.status_json();
        report["ready"] = self.ready().into();
        report["requests"] = self.inner.own.requests().into();
        Some(report)
    }

    fn rollout(&self) -> Option<&dyn RolloutControl> {
        Some(self)
    }

    fn counters(&self) -> Vec<TrafficCounter> {
        let inner = &self.inner;
        let name = &inner.name;
        let mut out = Vec::new();
        for (i, side) in SIDES.iter().enumerate() {
            let target = target_key(inner.target(i));
            out.push(TrafficCounter::requests(name, &target, inner.sent[i].load(Ordering::Relaxed)));
            out.push(TrafficCounter {
                metric: "sluice_fault_injected_total",
                help: "Requests a rollout failed on purpose (fault injection on a side)",
                labels: vec![("endpoint", name.clone()), ("side", side.to_string())],
                value: inner.faults[i].load(Ordering::Relaxed),
            });
        }
        for (i, cause) in CAUSES.iter().enumerate() {
            out.push(TrafficCounter {
                metric: "sluice_rollout_transitions_total",
                help: "Rollout transitions, by cause (start, advance, failure, command)",
                labels: vec![("endpoint", name.clone()), ("cause", cause_name(*cause).to_string())],
                value: inner.transitions[i].load(Ordering::Relaxed),
            });
        }
        out
    }
}

#[async_trait]
impl RolloutControl for RolloutEndpoint {
    async fn status(&self) -> Value {
        // A status read just after a start shows the stored state, not the blank one before it.
        if let Err(e) = self.inner.loaded.wait().await {
            tracing::warn!(endpoint = %self.inner.name, error = %e, "rollout status: state not read yet");
        }
        if let Err(e) = self.inner.share_counts().await {
            tracing::warn!(endpoint = %self.inner.name, error = %e, "rollout status: cannot read every replica's counts");
        }
        self.status_json()
    }

    async fn command(&self, action: RolloutAction, reason: &str) -> Result<Value, ServeError> {
        self.inner.loaded.wait().await?;
        self.inner.command(action, reason).await?;
        Ok(self.status_json())
    }

    async fn feedback(&self, feedback: &sluice_types::Feedback) -> Option<Result<Value, ServeError>> {
        self.inner.feedback(feedback).await.transpose()
    }
}
