//! The rollout endpoint (`kind: rollout`): serves the plan's baseline and candidate as the state
//! machine divides traffic, counts what each side does in the current step, and turns those
//! counts into guardrail verdicts on a timer.
//!
//! - **Shadow step**: the baseline answers every request; a share of them is copied to the
//!   candidate after the answer, off the response path (at most `--shadow-concurrency` running
//!   and `--shadow-queue-size` waiting; more are dropped and counted), and the compared output of
//!   the disagreement guardrail is compared.
//! - **Weight steps**: a unit (the plan's sticky header or parameter, else the request id) goes
//!   to the candidate when its hashed point is below the step's percent ([`super::canary`]).
//! - **Over or paused by a failure**: all to the baseline (rolled back, paused) or the candidate
//!   (promoted).
//!
//! Every [`TICK`] the counts of the current step become an [`Observation`] for
//! [`Rollout::observe`]; a transition resets the counts and is stored before anything else sees
//! it (under the lock, so states reach the store in order, and a command that answered has been
//! saved: transitions are rare, so the few milliseconds of a write are paid rarely). Counts are
//! not stored: after a restart the step goes on from its saved start time with fresh
//! counts. Faults declared on a side (`fault:`) are injected into the requests the rollout sends
//! there, copies included.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::{
    Answer, Endpoint, InferRequest, ModelConfig, RequestContext, RequestedOutput, Resolver, RolloutAction,
    RolloutControl, ServeError, TrafficCounter,
};
use tokio::sync::Semaphore;

use super::guardrails::{self, ArmCounts, StepCounts};
use super::machine::{Cause, Observation, Phase, Rollout, Transition};
use super::plan::{Fault, Metric, RolloutPlan};
use super::store::{RolloutStore, Saved};
use crate::compare::{compare, Comparison, LatencyWindow};
use crate::definition::Target;
use crate::own_stats::{extend_unique, OwnStats};
use crate::policy::{resolve_target, tag, target_key};
use crate::shadow::ShadowOptions;
use crate::split;

/// How often the guardrails are read and the machine observes.
pub const TICK: Duration = Duration::from_millis(500);
/// Distinct units remembered per side and step for the SRM test; past it, SRM counts no more.
const MAX_UNITS: usize = 1_000_000;

const SIDES: [&str; 2] = ["baseline", "candidate"];
const CAUSES: [Cause; 4] = [Cause::Start, Cause::Advance, Cause::Failure, Cause::Command];

fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::Start => "start",
        Cause::Advance => "advance",
        Cause::Failure => "failure",
        Cause::Command => "command",
    }
}

/// What one side did in the current step.
#[derive(Default)]
struct Side {
    counts: ArmCounts,
    latency: LatencyWindow,
    units: HashSet<u64>,
    /// Units past [`MAX_UNITS`] were seen: the SRM count is no longer whole.
    units_overflowed: bool,
}

/// The current step's counts.
#[derive(Default)]
struct StepCounter {
    sides: [Side; 2],
    copies_dropped: u64,
    compared: u64,
    disagreements: u64,
    /// Requests without a sticky unit: each is its own unit, so units are requests.
    per_request: bool,
}

impl StepCounter {
    fn record(&mut self, side: usize, ok: bool, ms: f64, unit: Option<u64>) {
        let s = &mut self.sides[side];
        s.counts.requests += 1;
        s.counts.errors += u64::from(!ok);
        s.latency.push((ms * 1000.0) as u64);
        match unit {
            Some(u) if s.units.len() < MAX_UNITS => {
                s.units.insert(u);
            }
            Some(_) => s.units_overflowed = true,
            None => self.per_request = true,
        }
    }

    fn counts(&self) -> StepCounts {
        let [b, c] = &self.sides;
        let units = if self.per_request || b.units_overflowed || c.units_overflowed {
            // A mixed or overflowed count is no unit count: SRM sees requests instead.
            [b.counts.requests, c.counts.requests]
        } else {
            [b.units.len() as u64, c.units.len() as u64]
        };
        StepCounts {
            baseline: b.counts,
            candidate: c.counts,
            baseline_latency_ms: b.latency.samples_ms(),
            candidate_latency_ms: c.latency.samples_ms(),
            compared: self.compared,
            disagreements: self.disagreements,
            units,
        }
    }
}

/// The machine and the counts of its current step, under one lock.
struct Live {
    machine: Rollout,
    step: StepCounter,
}

struct Inner {
    name: String,
    /// The machine's plan, read without its lock: it never changes while the endpoint lives.
    plan: Arc<RolloutPlan>,
    resolver: Weak<dyn Resolver>,
    /// The salt of canary assignment: the endpoint and its candidate (see [`super::canary`]).
    salt: String,
    /// The output the disagreement guardrail compares, if there is one.
    compared_output: Option<String>,
    live: Mutex<Live>,
    store: Option<Arc<dyn RolloutStore>>,
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
    /// A rollout of `plan` served as `name`: continued from `store`'s saved state when it is for
    /// the same baseline and candidate, else started now. Must be called inside a tokio runtime
    /// (its timer and store tasks start here).
    pub fn new(
        name: &str,
        plan: RolloutPlan,
        resolver: Weak<dyn Resolver>,
        shadow: &ShadowOptions,
        store: Option<Arc<dyn RolloutStore>>,
    ) -> Result<RolloutEndpoint, ServeError> {
        let (baseline, candidate) = (target_key(&plan.baseline), target_key(&plan.candidate));
        let saved = match &store {
            Some(s) => s.load(name).map_err(ServeError::Internal)?,
            None => None,
        };
        let compared_output = plan.guardrails.iter().find_map(|g| match &g.metric {
            Metric::Disagreement { output } => Some(output.clone()),
            Metric::ErrorRate | Metric::LatencyP99 | Metric::Feedback { .. } | Metric::Srm => None,
        });
        let now = crate::now_ms();
        let shared_plan = Arc::new(plan.clone());
        let mut started = None;
        let machine = match saved {
            Some(s) if s.baseline == baseline && s.candidate == candidate => {
                Rollout::restore(plan, s.state).map_err(|why| {
                    ServeError::invalid(format!(
                        "endpoint '{name}': the saved rollout state does not fit its plan: {why} (to start the \
                         rollout over, delete its state file)"
                    ))
                })?
            }
            // New, or another rollout than the one saved.
            _ => {
                let mut m = Rollout::new(plan);
                started = m.start(now).ok().cloned();
                m
            }
        };
        tracing::info!(endpoint = name, baseline, candidate, phase = %machine.phase(), "rollout loaded");
        let inner = Arc::new(Inner {
            name: name.to_string(),
            plan: shared_plan,
            resolver,
            salt: format!("{name}/{candidate}"),
            compared_output,
            live: Mutex::new(Live { machine, step: StepCounter::default() }),
            store,
            copy_slots: Arc::new(Semaphore::new(shadow.concurrency.max(1))),
            copies_waiting: AtomicUsize::new(0),
            copy_queue: shadow.queue.max(1),
            sent: Default::default(),
            faults: Default::default(),
            transitions: Default::default(),
            own: OwnStats::default(),
        });
        if let Some(t) = started {
            inner.after_transition(&mut inner.live.lock(), &t);
        }
        tokio::spawn(tick(Arc::downgrade(&inner)));
        Ok(RolloutEndpoint { inner })
    }
}

/// Reads the guardrails every [`TICK`] until the endpoint is gone.
async fn tick(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.observe(crate::now_ms());
    }
}

impl Inner {
    /// Reads the guardrails of the running (or paused by hand) step and lets the machine act.
    /// The counts are copied under the lock and judged outside it (sorting latency windows is
    /// not for the request path to wait on); a step that changed meanwhile is not judged on them.
    fn observe(&self, now: u64) {
        let (phase, started, counts) = {
            let live = self.live.lock();
            (live.machine.phase(), live.machine.state().step_started_ms, live.step.counts())
        };
        let Some(k) = phase.step() else { return };
        let step = self.plan.steps[k];
        let readings = guardrails::evaluate(&self.plan, &step, &counts);
        // In a shadow step the candidate's requests are the copies it ran.
        let observation = Observation { candidate_requests_in_step: counts.candidate.requests, guardrails: readings };
        let mut live = self.live.lock();
        if live.machine.phase() != phase || live.machine.state().step_started_ms != started {
            return;
        }
        if let Some(t) = live.machine.observe(now, &observation).cloned() {
            self.after_transition(&mut live, &t);
        }
    }

    /// A new phase: fresh counts, the state to the store, a line in the log.
    fn after_transition(&self, live: &mut Live, t: &Transition) {
        live.step = StepCounter::default();
        if let Some(i) = CAUSES.iter().position(|c| *c == t.cause) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
        let level_warn = t.cause == Cause::Failure;
        if level_warn {
            tracing::warn!(endpoint = %self.name, from = %t.from, to = %t.to, reason = %t.reason, "rollout transition");
        } else {
            tracing::info!(endpoint = %self.name, from = %t.from, to = %t.to, reason = %t.reason, "rollout transition");
        }
        if let Some(store) = &self.store {
            let saved = Saved {
                baseline: target_key(&self.plan.baseline),
                candidate: target_key(&self.plan.candidate),
                state: live.machine.state().clone(),
            };
            if let Err(e) = store.save(&self.name, &saved) {
                tracing::error!(endpoint = %self.name, error = %e, "cannot save the rollout's state");
            }
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
        if live.machine.state().step_started_ms == step_started {
            live.step.record(side, ok, ms, unit);
        }
    }
}

impl RolloutEndpoint {
    async fn answer(&self, ctx: &RequestContext, mut request: InferRequest) -> Result<Answer, ServeError> {
        let inner = &self.inner;
        let (traffic, step_started, phase) = {
            let live = inner.live.lock();
            (live.machine.traffic(), live.machine.state().step_started_ms, live.machine.phase())
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
            if live.machine.state().step_started_ms == step_started {
                live.step.copies_dropped += 1;
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
            if live.machine.state().step_started_ms != step_started {
                return;
            }
            let step = &mut live.step;
            let s = &mut step.sides[1];
            s.counts.requests += 1;
            s.counts.errors += u64::from(result.is_err());
            s.latency.push((ms * 1000.0) as u64);
            if let Some(Comparison::Labels { elements, agreed }) = comparison {
                step.compared += elements;
                step.disagreements += elements - agreed;
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
        let counts = live.step.counts();
        let shadow_step = live.machine.phase().step().is_some_and(|k| plan.steps[k].is_shadow());
        let side = |i: usize, c: ArmCounts, fault: Option<Fault>| {
            json!({
                "target": target_key(if i == 0 { &plan.baseline } else { &plan.candidate }),
                "requests": c.requests,
                "errors": c.errors,
                "latency_p99_ms": live.step.sides[i].latency.quantile_ms(0.99),
                "fault": fault,
                "faults_injected": self.inner.faults[i].load(Ordering::Relaxed),
            })
        };
        json!({
            "name": self.inner.name,
            "kind": "rollout",
            "baseline": side(0, counts.baseline, plan.baseline_fault),
            "candidate": side(1, counts.candidate, plan.candidate_fault),
            "step_counts": {
                "shadow_copies": if shadow_step { counts.candidate.requests } else { 0 },
                "shadow_copies_dropped": live.step.copies_dropped,
                "compared": counts.compared,
                "disagreements": counts.disagreements,
                "units": counts.units,
            },
            "alpha": plan.alpha,
            "on_failure": plan.on_failure,
            "status": status,
        })
    }
}

#[async_trait]
impl Endpoint for RolloutEndpoint {
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Ready when the side that answers is (both, while both answer).
    fn ready(&self) -> bool {
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

impl RolloutControl for RolloutEndpoint {
    fn status(&self) -> Value {
        self.status_json()
    }

    fn command(&self, action: RolloutAction, reason: &str) -> Result<Value, ServeError> {
        let now = crate::now_ms();
        {
            let inner = &self.inner;
            let mut live = inner.live.lock();
            let t = match action {
                RolloutAction::Pause => live.machine.pause(now, reason),
                RolloutAction::Resume => live.machine.resume(now, reason),
                RolloutAction::Promote => live.machine.promote(now, reason),
                RolloutAction::Rollback => live.machine.rollback(now, reason),
            }
            .cloned()
            .map_err(|why| {
                ServeError::Conflict(format!("rollout '{}': cannot {}: {why}", inner.name, action.as_str()))
            })?;
            inner.after_transition(&mut live, &t);
        }
        Ok(self.status_json())
    }
}
