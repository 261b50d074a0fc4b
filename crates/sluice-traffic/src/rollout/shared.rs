//! A rollout kept in the state store, so that a restart continues it and replicas share it.
//!
//! - **The state** (phase, step start, history) is one document, `rollout/<name>`, written by
//!   compare-and-set on its version: a transition is stored before anything acts on it, and of
//!   two replicas that change the rollout at once (a command on one, an advance on another) one
//!   wins and the other reads the winner's state and drops its own change.
//! - **The counts** of a step are each replica's part under `rollout/<name>/step/<start>`
//!   (requests, errors, latency histograms, comparisons), rewritten whole every [`TICK`], and the
//!   units seen on each side, a set per side counted once however many replicas saw them.
//!   A step's counts are the sum of every part, so a restarted process (a new writer) adds to its
//!   predecessor's rather than starting over.
//! - **One replica drives**: the holder of the lease `rollout/<name>/lease` (renewed every tick,
//!   lapsing after [`LEASE`]) judges the guardrails on everyone's counts and makes the
//!   transitions; the others follow the stored state every tick. A command may come to any
//!   replica: it is a compare-and-set like any other transition. With the embedded store the
//!   one process always drives.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_types::{Feedback, RolloutAction, ServeError};

use super::endpoint::{Inner, SIDES};
use super::guardrails::{self, StepCounts};
use super::machine::{Observation, Rollout, RolloutState, Transition};
use crate::policy::target_key;

/// How often counts are shared, the lease renewed and the guardrails read.
pub const TICK: Duration = Duration::from_millis(500);
/// How long the driving replica's lease lasts unrenewed: how soon another takes over when it dies.
pub const LEASE: Duration = Duration::from_secs(3);
/// How long a request id answered in a weight step takes `feedback.<name>` outcomes.
pub const FEEDBACK_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How long a feedback id is remembered, so that a repeated post counts once.
const FEEDBACK_ID_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a command retries when the state changes under it.
const COMMAND_TRIES: usize = 5;

/// A rollout's state as stored, with what it was rolling out: an `endpoint.yaml` edited to roll
/// out another candidate starts a new rollout rather than inheriting a finished one's phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub baseline: String,
    pub candidate: String,
    pub state: RolloutState,
}

fn state_key(name: &str) -> String {
    format!("rollout/{name}")
}

fn step_key(name: &str, started: u64) -> String {
    format!("rollout/{name}/step/{started}")
}

fn units_key(name: &str, started: u64, side: usize) -> String {
    format!("rollout/{name}/step/{started}/units/{side}")
}

pub(super) fn request_key(name: &str, id: &str) -> String {
    format!("rollout/{name}/request/{id}")
}

/// Keeps the endpoint in step with the store until it is gone.
pub(super) async fn run(inner: Weak<Inner>, what: String) {
    crate::loaded::keep_in_step(inner, TICK, &what, |i| Box::pin(i.tick(crate::now_ms()))).await
}

impl Inner {
    fn keys(&self) -> (String, String) {
        (target_key(&self.plan.baseline), target_key(&self.plan.candidate))
    }

    async fn tick(&self, now: u64) -> Result<(), ServeError> {
        self.refresh(now).await?;
        self.share_counts().await?;
        let driving = !self.store.shared()
            || self.store.lease(&format!("rollout/{}/lease", self.name), &self.replica, LEASE).await?;
        if driving != self.driving.swap(driving, Ordering::Relaxed) {
            tracing::info!(endpoint = %self.name, replica = %self.replica, driving, "rollout lease");
        }
        self.judge(now, driving).await
    }

    /// Reads the stored state and follows it when it is newer. At the first read, a rollout
    /// with no stored state (or one of other targets) is started and stored.
    pub(super) async fn refresh(&self, now: u64) -> Result<(), ServeError> {
        let result = self.read_state(now).await;
        self.loaded.note(&result);
        result
    }

    async fn read_state(&self, now: u64) -> Result<(), ServeError> {
        let key = state_key(&self.name);
        let (baseline, candidate) = self.keys();
        for _ in 0..COMMAND_TRIES {
            let expected = match self.store.get(&key).await? {
                Some(doc) => {
                    let saved: Saved = serde_json::from_slice(&doc.value).map_err(|e| {
                        ServeError::Internal(format!("rollout '{}': the stored state is unreadable: {e}", self.name))
                    })?;
                    if saved.baseline == baseline && saved.candidate == candidate {
                        let machine = Rollout::restore((*self.plan).clone(), saved.state).map_err(|why| {
                            ServeError::invalid(format!(
                                "endpoint '{}': the stored rollout state does not fit its plan: {why} (to start the \
                                 rollout over, delete the key 'rollout/{}' from the state store)",
                                self.name, self.name
                            ))
                        })?;
                        self.follow(machine, doc.version);
                        return Ok(());
                    }
                    if self.loaded.is_loaded() {
                        // Another replica rolls out other targets: the replicas disagree on
                        // `endpoint.yaml`. This one keeps what it has rather than fight over it.
                        return Err(ServeError::Conflict(format!(
                            "the stored rollout '{}' is of {} → {}, this replica's of {baseline} → {candidate}",
                            self.name, saved.baseline, saved.candidate
                        )));
                    }
                    doc.version
                }
                None => 0,
            };
            let mut machine = Rollout::new((*self.plan).clone());
            let started = machine.start(now).ok().cloned();
            if self.commit(machine, expected, started).await? {
                return Ok(());
            }
        }
        Err(ServeError::Unavailable(format!("rollout '{}': its stored state kept changing while read", self.name)))
    }

    /// Takes `machine` as stored at `version`, when that is newer than what this replica has.
    fn follow(&self, machine: Rollout, version: u64) {
        let mut live = self.live.lock();
        if version <= live.version {
            return;
        }
        if live.version > 0 && live.machine.phase() != machine.phase() {
            tracing::info!(endpoint = %self.name, phase = %machine.phase(), "rollout: following the stored state");
        }
        let new_step = live.step_started() != machine.state().step_started_ms;
        live.machine = machine;
        live.version = version;
        if new_step {
            live.reset_step();
        }
    }

    /// Stores `machine` if the stored state is still at `expected`, and follows it; `false` when
    /// another writer got there first. `made` is the transition this replica made to get it.
    async fn commit(&self, machine: Rollout, expected: u64, made: Option<Transition>) -> Result<bool, ServeError> {
        let (baseline, candidate) = self.keys();
        let saved = Saved { baseline, candidate, state: machine.state().clone() };
        let bytes = serde_json::to_vec(&saved).map_err(|e| ServeError::Internal(e.to_string()))?;
        let Some(version) = self.store.put(&state_key(&self.name), &bytes, expected).await? else {
            return Ok(false);
        };
        let ended = self.live.lock().step_started().filter(|s| Some(*s) != machine.state().step_started_ms);
        self.follow(machine, version);
        if let Some(t) = made {
            self.made(&t);
        }
        if let Some(old) = ended {
            // Followers may still write a part for the step that ended until they have read the
            // new state: its keys go once every replica has had ticks to move on.
            // The wait holds no store open: a server that stops meanwhile leaves them.
            let store = Arc::downgrade(&self.store);
            let keys = vec![step_key(&self.name, old), units_key(&self.name, old, 0), units_key(&self.name, old, 1)];
            tokio::spawn(async move {
                tokio::time::sleep(LEASE + 4 * TICK).await;
                let Some(store) = store.upgrade() else { return };
                if let Err(e) = store.delete(&keys).await {
                    tracing::debug!(error = %e, "rollout: cannot delete a finished step's counts");
                }
            });
        }
        Ok(true)
    }

    /// Writes this replica's counts of the step (and the request ids it answered) and reads
    /// everyone's.
    pub(super) async fn share_counts(&self) -> Result<(), ServeError> {
        let _one_at_a_time = self.sharing.lock().await;
        let (started, part, units, answered) = {
            let mut live = self.live.lock();
            let units = std::mem::take(&mut live.unsent_units);
            let answered = std::mem::take(&mut live.unsent_answered);
            // An idle replica writes nothing: many endpoints must not cost a write each per tick.
            let part = std::mem::take(&mut live.changed).then(|| live.step.clone());
            (live.step_started(), part, units, answered)
        };
        if let Err(e) = self.store.put_expiring(&answered, FEEDBACK_WINDOW).await {
            self.live.lock().unsent_answered.extend(answered);
            return Err(e);
        }
        let Some(started) = started else { return Ok(()) };
        for (side, members) in units.iter().enumerate() {
            if let Err(e) = self.store.set_add(&units_key(&self.name, started, side), members).await {
                let mut live = self.live.lock();
                if live.step_started() == Some(started) {
                    for (s, m) in units.into_iter().enumerate().skip(side) {
                        live.unsent_units[s].extend(m);
                    }
                }
                return Err(e);
            }
        }
        let key = step_key(&self.name, started);
        if let Some(part) = part {
            let bytes = serde_json::to_vec(&part).map_err(|e| ServeError::Internal(e.to_string()))?;
            if let Err(e) = self.store.put_part(&key, &self.replica, &bytes).await {
                let mut live = self.live.lock();
                live.changed |= live.step_started() == Some(started);
                return Err(e);
            }
        }
        let mut merged = StepCounts::default();
        for (writer, bytes) in self.store.parts(&key).await? {
            match serde_json::from_slice::<StepCounts>(&bytes) {
                Ok(c) => merged.merge(&c),
                Err(e) => {
                    tracing::warn!(endpoint = %self.name, writer, error = %e, "rollout: unreadable counts skipped")
                }
            }
        }
        for side in 0..2 {
            merged.units[side] = self.store.set_len(&units_key(&self.name, started, side)).await?;
        }
        let mut live = self.live.lock();
        if live.step_started() == Some(started) {
            live.merged = Some(merged);
        }
        Ok(())
    }

    /// Reads the guardrails on every replica's counts: the driving replica acts on them (and
    /// stores what it does), the others note them for their status.
    async fn judge(&self, now: u64, driving: bool) -> Result<(), ServeError> {
        let (mut machine, expected, counts) = {
            let live = self.live.lock();
            let Some(counts) = live.merged.clone() else { return Ok(()) };
            (live.machine.clone(), live.version, counts)
        };
        let Some(k) = machine.phase().step() else { return Ok(()) };
        let readings = guardrails::evaluate(&self.plan, &self.plan.steps[k], &counts);
        // In a shadow step the candidate's requests are the copies it ran.
        let observation = Observation { candidate_requests_in_step: counts.candidate.requests, guardrails: readings };
        if driving {
            if let Some(t) = machine.observe(now, &observation).cloned() {
                if !self.commit(machine, expected, Some(t)).await? {
                    self.refresh(now).await?;
                }
                return Ok(());
            }
        }
        let mut live = self.live.lock();
        if live.version == expected {
            live.machine.note(&observation);
        }
        Ok(())
    }

    /// A command given to this replica, stored like any transition (retried on a newer state).
    pub(super) async fn command(&self, action: RolloutAction, reason: &str) -> Result<(), ServeError> {
        for _ in 0..COMMAND_TRIES {
            let now = crate::now_ms();
            self.refresh(now).await?;
            let (mut machine, expected) = {
                let live = self.live.lock();
                (live.machine.clone(), live.version)
            };
            let t = match action {
                RolloutAction::Pause => machine.pause(now, reason),
                RolloutAction::Resume => machine.resume(now, reason),
                RolloutAction::Promote => machine.promote(now, reason),
                RolloutAction::Rollback => machine.rollback(now, reason),
            }
            .cloned()
            .map_err(|why| {
                ServeError::Conflict(format!("rollout '{}': cannot {}: {why}", self.name, action.as_str()))
            })?;
            if self.commit(machine, expected, Some(t)).await? {
                return Ok(());
            }
        }
        Err(ServeError::Unavailable(format!(
            "rollout '{}': its state kept changing under the command; try again",
            self.name
        )))
    }

    /// An outcome for a `feedback.<name>` guardrail: counted on the side that answered its
    /// request id, while that request's step runs.
    pub(super) async fn feedback(&self, fb: &Feedback) -> Result<Option<Value>, ServeError> {
        let Some(id) = &fb.request_id else { return Ok(None) };
        if self.feedback_metrics.is_empty() {
            return Ok(None);
        }
        let local = self.live.lock().answered.get(id).copied();
        let found = match local {
            Some(f) => Some(f),
            None => self.store.get_expiring(&request_key(&self.name, id)).await?.and_then(|b| {
                let text = String::from_utf8(b).ok()?;
                let (side, started) = text.split_once(':')?;
                Some((side.parse::<usize>().ok().filter(|s| *s < 2)?, started.parse::<u64>().ok()?))
            }),
        };
        let Some((side, started)) = found else { return Ok(None) };
        if !self.feedback_metrics.contains(&fb.metric) {
            return Err(ServeError::invalid(format!(
                "rollout '{}' has no guardrail feedback.{} (it has: {})",
                self.name,
                fb.metric,
                self.feedback_metrics.iter().map(|m| format!("feedback.{m}")).collect::<Vec<_>>().join(", ")
            )));
        }
        if !fb.value.is_finite() {
            return Err(ServeError::invalid(format!("feedback value must be a finite number, got {}", fb.value)));
        }
        let answer = |counted: bool, reason: Option<&str>| json!({ "rollout": self.name, "side": SIDES[side], "counted": counted, "reason": reason });
        if self.live.lock().step_started() != Some(started) {
            return Ok(Some(answer(false, Some("the request was answered in an earlier step"))));
        }
        if let Some(fid) = &fb.id {
            if !self.store.claim(&format!("rollout/{}/feedback/{fid}", self.name), FEEDBACK_ID_TTL).await? {
                return Ok(Some(answer(false, Some("a repeated feedback id"))));
            }
        }
        let mut live = self.live.lock();
        if live.step_started() != Some(started) {
            return Ok(Some(answer(false, Some("the request was answered in an earlier step"))));
        }
        live.step.feedback.entry(fb.metric.clone()).or_default()[side].push(fb.value);
        live.changed = true;
        Ok(Some(answer(true, None)))
    }
}
