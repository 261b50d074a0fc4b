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
//!
//! # State
//! Everything counted lives in the state store, under `experiment/<name>/…`, so that a restart
//! continues the experiment and replicas add up what each saw:
//! - exposed units per arm and converted units per proportion metric and arm are sets, counted
//!   once however many replicas saw a unit;
//! - a mean metric's moments are each replica's part, merged (Chan et al.) when read;
//! - a request id's arm is an expiring value, kept for the attribution window;
//! - a feedback id is a claim, taken once for [`FEEDBACK_ID_TTL`];
//! - a stop is a document, written once by compare-and-set and followed by every replica.
//!
//! Exposures, attributions and moments are written every [`TICK`] (and before every report), so
//! feedback naming a request that another replica answered is found once that replica has
//! written it, within a tick; a unit's conversion and a feedback id are written as they come.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_state::StateStore;
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::{
    Answer, Endpoint, ExperimentControl, Feedback, InferRequest, ModelConfig, RequestContext, Resolver, ServeError,
    TrafficCounter,
};

use super::plan::{ExperimentPlan, MetricKind};
use super::{srm_p, verdict, Analysis, Outcomes};
use crate::definition::Target;
use crate::loaded::Loaded;
use crate::own_stats::{extend_unique, OwnStats};
use crate::policy::{requests_by_target, resolve_target, tag, target_key};
use crate::split;
use crate::stats::{BinomialCounts, RunningMoments};

/// Request ids remembered here for attribution, and exposed units, at most.
const MAX_REMEMBERED: usize = 1_000_000;
/// How often counts are written and the stored state read.
pub const TICK: Duration = Duration::from_millis(500);
/// How long a feedback id is remembered, so that a repeated post counts once.
pub const FEEDBACK_ID_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stopped {
    arm: usize,
    reason: String,
    at_ms: u64,
}

struct Live {
    /// Per arm: the subjects exposed here, and those not yet written to the store.
    exposed: Vec<HashSet<u64>>,
    unsent_exposed: Vec<Vec<u64>>,
    /// Request id → (arm, subject), the order they came in (oldest first) for expiry, and those
    /// not yet written to the store.
    answered: HashMap<String, (usize, u64)>,
    order: VecDeque<(u64, String)>,
    unsent_answered: Vec<(String, Vec<u8>)>,
    /// `[metric][arm]`: this replica's moments of mean metrics (its part in the store), and
    /// whether they changed since last written.
    moments: Vec<Vec<RunningMoments>>,
    moments_changed: bool,
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

/// Every replica's counts, as read from the store (or this replica's, for `/metrics`).
struct Counts {
    units: Vec<u64>,
    /// `[metric][arm]`: converted units (proportions) or merged moments (means).
    outcomes: Vec<Vec<Outcomes>>,
}

pub struct ExperimentEndpoint {
    name: String,
    plan: ExperimentPlan,
    resolver: Weak<dyn Resolver>,
    /// The arms as the assignment hashes them, with their weights.
    keys: Vec<(String, f64)>,
    live: Mutex<Live>,
    store: Arc<dyn StateStore>,
    replica: String,
    loaded: Loaded,
    /// Held while writing to the store: a report waits for a tick's writes in flight, else it
    /// could read the store before the exposures that tick took have reached it.
    syncing: tokio::sync::Mutex<()>,
    /// The last report read from every replica's counts.
    last_report: Mutex<Option<Value>>,
    sent: Vec<AtomicU64>,
    own: OwnStats,
}

fn encode_answered(arm: usize, subject: u64) -> Vec<u8> {
    format!("{arm}:{subject}").into_bytes()
}

fn decode_answered(bytes: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (arm, subject) = text.split_once(':')?;
    Some((arm.parse().ok()?, subject.parse().ok()?))
}

fn store_err(e: serde_json::Error) -> ServeError {
    ServeError::Internal(format!("experiment state: {e}"))
}

impl ExperimentEndpoint {
    /// An experiment served as `name`, its counts kept in `store`. Must be called inside a tokio
    /// runtime: a task started here reads the stored state, then writes this replica's counts
    /// every [`TICK`]; requests wait for the first read.
    pub fn new(
        name: &str,
        plan: ExperimentPlan,
        resolver: Weak<dyn Resolver>,
        store: Arc<dyn StateStore>,
        replica: &str,
    ) -> Arc<ExperimentEndpoint> {
        let arms = plan.arms.len();
        let alpha = plan.design.map_or(0.05, |d| d.alpha);
        let planned = plan.design.and_then(|d| d.units_per_arm());
        let live = Live {
            exposed: vec![HashSet::new(); arms],
            unsent_exposed: vec![Vec::new(); arms],
            answered: HashMap::new(),
            order: VecDeque::new(),
            unsent_answered: Vec::new(),
            moments: vec![vec![RunningMoments::new(); arms]; plan.metrics.len()],
            moments_changed: false,
            analysis: Analysis::new(alpha, planned, plan.metrics.len(), arms),
            stopped: None,
        };
        let endpoint = Arc::new(ExperimentEndpoint {
            name: name.to_string(),
            keys: plan.arms.iter().map(|a| (a.name.clone(), a.weight)).collect(),
            sent: plan.arms.iter().map(|_| AtomicU64::new(0)).collect(),
            plan,
            resolver,
            live: Mutex::new(live),
            store,
            replica: replica.to_string(),
            loaded: Loaded::new(format!("experiment '{name}'")),
            syncing: tokio::sync::Mutex::new(()),
            last_report: Mutex::new(None),
            own: OwnStats::default(),
        });
        let (weak, what) = (Arc::downgrade(&endpoint), format!("experiment '{name}'"));
        tokio::spawn(async move { crate::loaded::keep_in_step(weak, TICK, &what, |e| Box::pin(e.sync())).await });
        endpoint
    }

    fn key(&self, what: &str) -> String {
        format!("experiment/{}{what}", self.name)
    }

    fn exposed_key(&self, arm: usize) -> String {
        self.key(&format!("/exposed/{arm}"))
    }

    fn hits_key(&self, metric: usize, arm: usize) -> String {
        self.key(&format!("/hits/{}/{arm}", self.plan.metrics[metric].name))
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

    /// Writes this replica's exposures, attributions and moments, and follows a stop.
    async fn sync(&self) -> Result<(), ServeError> {
        let _one_at_a_time = self.syncing.lock().await;
        let result = self.sync_once().await;
        self.loaded.note(&result);
        result
    }

    async fn sync_once(&self) -> Result<(), ServeError> {
        if let Some(doc) = self.store.get(&self.key("")).await? {
            let stopped: Stopped = serde_json::from_slice(&doc.value).map_err(store_err)?;
            let mut live = self.live.lock();
            if live.stopped.is_none() && stopped.arm < self.plan.arms.len() {
                live.stopped = Some(stopped);
            }
        }
        let (exposed, answered, moments) = {
            let mut live = self.live.lock();
            let exposed = std::mem::replace(&mut live.unsent_exposed, vec![Vec::new(); self.plan.arms.len()]);
            // An idle replica writes no moments: many endpoints must not cost a write each per tick.
            let moments = std::mem::take(&mut live.moments_changed).then(|| live.moments.clone());
            (exposed, std::mem::take(&mut live.unsent_answered), moments)
        };
        let mut result = Ok(());
        for (arm, members) in exposed.iter().enumerate() {
            if result.is_ok() {
                result = self.store.set_add(&self.exposed_key(arm), members).await;
            }
            if result.is_err() {
                self.live.lock().unsent_exposed[arm].extend(members);
            }
        }
        result?;
        let window = Duration::from_millis(self.plan.attribution_ms.max(1));
        if let Err(e) = self.store.put_expiring(&answered, window).await {
            self.live.lock().unsent_answered.extend(answered);
            return Err(e);
        }
        let Some(moments) = moments else { return Ok(()) };
        let bytes = serde_json::to_vec(&moments).map_err(store_err)?;
        let written = self.store.put_part(&self.key("/moments"), &self.replica, &bytes).await;
        if written.is_err() {
            self.live.lock().moments_changed = true;
        }
        written
    }

    /// Every replica's counts.
    async fn shared_counts(&self) -> Result<Counts, ServeError> {
        let arms = self.plan.arms.len();
        let mut units = Vec::with_capacity(arms);
        for arm in 0..arms {
            units.push(self.store.set_len(&self.exposed_key(arm)).await?);
        }
        let mut moments = vec![vec![RunningMoments::new(); arms]; self.plan.metrics.len()];
        for (writer, bytes) in self.store.parts(&self.key("/moments")).await? {
            let Ok(part) = serde_json::from_slice::<Vec<Vec<RunningMoments>>>(&bytes) else {
                tracing::warn!(endpoint = %self.name, writer, "experiment: unreadable moments skipped");
                continue;
            };
            for (mine, theirs) in moments.iter_mut().zip(&part) {
                for (m, t) in mine.iter_mut().zip(theirs) {
                    m.merge(t);
                }
            }
        }
        let mut outcomes = Vec::new();
        for (i, metric) in self.plan.metrics.iter().enumerate() {
            let mut per_arm = Vec::new();
            for (arm, trials) in units.iter().enumerate() {
                per_arm.push(match metric.kind {
                    MetricKind::Proportion => {
                        let hits = self.store.set_len(&self.hits_key(i, arm)).await?;
                        Outcomes::Proportion(BinomialCounts::new(hits.min(*trials), *trials))
                    }
                    MetricKind::Mean => Outcomes::Mean(moments[i][arm]),
                });
            }
            outcomes.push(per_arm);
        }
        Ok(Counts { units, outcomes })
    }

    /// The last full report, else the arms without counts: what the endpoint table shows
    /// without reading the store (or looking with the sequential test).
    fn last_or_brief(&self) -> Value {
        if let Some(r) = self.last_report.lock().clone() {
            return r;
        }
        let live = self.live.lock();
        json!({
            "name": self.name,
            "kind": "experiment",
            "state": if live.stopped.is_some() { "stopped" } else { "running" },
            "arms": self.plan.arms.iter().enumerate().map(|(i, a)| json!({
                "name": a.name,
                "target": target_key(&a.target),
                "weight": a.weight,
                "requests": self.sent[i].load(Ordering::Relaxed),
            })).collect::<Vec<_>>(),
        })
    }

    async fn answer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        self.loaded.wait().await?;
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
                    if live.exposed[arm].len() < MAX_REMEMBERED && live.exposed[arm].insert(h) {
                        live.unsent_exposed[arm].push(h);
                    }
                    if !ctx.request_id.is_empty() {
                        live.answered.insert(ctx.request_id.clone(), (arm, h));
                        live.order.push_back((now, ctx.request_id.clone()));
                        let key = self.key(&format!("/request/{}", ctx.request_id));
                        live.unsent_answered.push((key, encode_answered(arm, h)));
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

    /// The arm and subject feedback belongs to, if it is this experiment's.
    async fn attribute(&self, fb: &Feedback, metric: Option<usize>) -> Result<Option<(usize, u64)>, ServeError> {
        match (&fb.request_id, &fb.unit) {
            (Some(id), _) => {
                if let Some(found) = self.live.lock().answered.get(id).copied() {
                    return Ok(Some(found));
                }
                let stored = self.store.get_expiring(&self.key(&format!("/request/{id}"))).await?;
                Ok(stored.as_deref().and_then(decode_answered).filter(|(arm, _)| *arm < self.plan.arms.len()))
            }
            (None, Some(unit)) => {
                if metric.is_none() {
                    return Ok(None);
                }
                let (arm, subject) = (self.arm_of_unit(unit), split::key_hash(unit));
                // A unit this experiment never showed an arm to is not its to count.
                let here = self.live.lock().exposed[arm].contains(&subject);
                let exposed = here || self.store.set_contains(&self.exposed_key(arm), subject).await?;
                Ok(exposed.then_some((arm, subject)))
            }
            (None, None) => Ok(None),
        }
    }

    async fn take_feedback(&self, fb: &Feedback) -> Result<Option<Value>, ServeError> {
        let metric = self.plan.metrics.iter().position(|m| m.name == fb.metric);
        let Some((arm, subject)) = self.attribute(fb, metric).await? else { return Ok(None) };
        let Some(metric) = metric else {
            return Err(ServeError::invalid(format!(
                "experiment '{}' has no metric '{}' (it has: {})",
                self.name,
                fb.metric,
                self.plan.metrics.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        };
        if !fb.value.is_finite() {
            return Err(ServeError::invalid(format!("feedback value must be a finite number, got {}", fb.value)));
        }
        let kind = self.plan.metrics[metric].kind;
        if kind == MetricKind::Proportion && fb.value != 0.0 && fb.value != 1.0 {
            return Err(ServeError::invalid(format!(
                "metric '{}' of experiment '{}' is a proportion: its value is 0 or 1, got {}",
                fb.metric, self.name, fb.value
            )));
        }
        if let Some(id) = &fb.id {
            if !self.store.claim(&self.key(&format!("/feedback/{id}")), FEEDBACK_ID_TTL).await? {
                return Ok(Some(
                    json!({ "experiment": self.name, "counted": false, "reason": "a repeated feedback id" }),
                ));
            }
        }
        match kind {
            MetricKind::Proportion if fb.value == 1.0 => {
                self.store.set_add(&self.hits_key(metric, arm), &[subject]).await?;
            }
            MetricKind::Proportion => {}
            MetricKind::Mean => {
                let mut live = self.live.lock();
                live.moments[metric][arm].push(fb.value);
                live.moments_changed = true;
            }
        }
        Ok(Some(json!({ "experiment": self.name, "arm": self.plan.arms[arm].name, "counted": true })))
    }

    /// The report on `counts`: a look of the sequential test.
    fn report_json(&self, counts: &Counts) -> Value {
        let mut live = self.live.lock();
        let units = &counts.units;
        let names: Vec<String> = self.plan.arms.iter().map(|a| a.name.clone()).collect();
        let mut reports = Vec::new();
        for (i, metric) in self.plan.metrics.iter().enumerate() {
            reports.push(live.analysis.look(i, &metric.name, &names, &counts.outcomes[i]));
        }
        let weights: Vec<f64> = self.plan.arms.iter().map(|a| a.weight).collect();
        let srm = srm_p(units, &weights);
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
            "srm_sequential_p": crate::stats::srm_sequential_p(units, &weights, crate::stats::SRM_CONCENTRATION),
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

    /// Ready once its state is read, when every arm that may answer is.
    fn ready(&self) -> bool {
        if !self.loaded.is_loaded() {
            return false;
        }
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
        let mut r = self.last_or_brief();
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

#[async_trait]
impl ExperimentControl for ExperimentEndpoint {
    async fn report(&self) -> Value {
        let counts = match self.sync().await {
            Ok(()) => self.shared_counts().await,
            Err(e) => Err(e),
        };
        match counts {
            Ok(c) => {
                let r = self.report_json(&c);
                *self.last_report.lock() = Some(r.clone());
                r
            }
            Err(e) => {
                let mut r = self.last_or_brief();
                r["counts"] = "as last read".into();
                r["state_store_error"] = e.to_string().into();
                r
            }
        }
    }

    async fn stop(&self, arm: Option<&str>, reason: &str) -> Result<Value, ServeError> {
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
        let stopped = Stopped { arm: index, reason: reason.to_string(), at_ms: crate::now_ms() };
        let bytes = serde_json::to_vec(&stopped).map_err(store_err)?;
        if self.store.put(&self.key(""), &bytes, 0).await?.is_none() {
            // Stopped already, here or by another replica: say by whom and why.
            self.sync().await?;
            let live = self.live.lock();
            let (to, why) = live
                .stopped
                .as_ref()
                .map(|s| (self.plan.arms[s.arm].name.clone(), s.reason.clone()))
                .unwrap_or_default();
            return Err(ServeError::Conflict(format!(
                "experiment '{}' stopped already (all traffic to '{to}': {why})",
                self.name
            )));
        }
        self.live.lock().stopped = Some(stopped);
        tracing::info!(endpoint = %self.name, arm = %self.plan.arms[index].name, reason, "experiment stopped");
        Ok(self.report().await)
    }

    async fn feedback(&self, fb: &Feedback) -> Option<Result<Value, ServeError>> {
        self.take_feedback(fb).await.transpose()
    }
}
