//! The rollout state machine: where a rollout is ([`Phase`]), what moved it there (the history
//! of [`Transition`]s), and the rules that move it on guardrail verdicts and commands by hand
//! (described in [`super`]). Pure: the caller passes the time and the readings in; the state is
//! serde so that a restart can carry on in the same step.

use serde::{Deserialize, Serialize};

use super::plan::{show_duration, Exposure, Guardrail, OnFailure, RolloutPlan};

/// Where a rollout is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not started: all traffic to the baseline.
    #[default]
    Pending,
    /// Running step `k` of the plan.
    Step(usize),
    /// Stopped at `step`; by a failing guardrail (all traffic to the baseline) or by hand (the
    /// step's traffic holds).
    Paused { step: usize, by_failure: bool },
    /// Over: all traffic to the candidate.
    Promoted,
    /// Over: all traffic to the baseline.
    RolledBack,
}

impl Phase {
    /// The step it runs or is paused at.
    pub fn step(self) -> Option<usize> {
        match self {
            Phase::Step(k) | Phase::Paused { step: k, .. } => Some(k),
            Phase::Pending | Phase::Promoted | Phase::RolledBack => None,
        }
    }

    /// Promoted or rolled back: no command or observation moves it any more.
    pub fn is_over(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Pending => write!(f, "pending"),
            Phase::Step(k) => write!(f, "step {k}"),
            Phase::Paused { step, by_failure: false } => write!(f, "paused at step {step}"),
            Phase::Paused { step, by_failure: true } => write!(f, "paused at step {step} by a failing guardrail"),
            Phase::Promoted => write!(f, "promoted"),
            Phase::RolledBack => write!(f, "rolled back"),
        }
    }
}

/// What the statistics conclude about one guardrail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Enough data, and within the limit with confidence.
    Pass,
    /// The limit is exceeded with confidence.
    Fail,
    /// Not enough data yet, or not significant either way.
    Inconclusive,
}

/// One guardrail's value and verdict at an observation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardrailReading {
    /// [`Guardrail::name`]: `error_rate`, `disagreement(label)`, `feedback.conversion`.
    pub guardrail: String,
    /// The measured value (a difference, a ratio, a share, a p-value); `None` when there is none
    /// yet.
    pub value: Option<f64>,
    pub threshold: f64,
    pub verdict: Verdict,
}

impl GuardrailReading {
    /// A reading of `guardrail`, named and with the threshold as the plan gives them.
    pub fn of(guardrail: &Guardrail, value: Option<f64>, verdict: Verdict) -> Self {
        GuardrailReading { guardrail: guardrail.name(), value, threshold: guardrail.threshold(), verdict }
    }
}

/// What the statistics saw in the current step, handed to [`Rollout::observe`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Requests the candidate has seen (answered, or shadowed in the shadow step) since
    /// [`RolloutState::step_started_ms`].
    pub candidate_requests_in_step: u64,
    pub guardrails: Vec<GuardrailReading>,
}

/// How traffic is divided.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Percent of units the candidate answers, in [0, 100].
    pub candidate_percent: f64,
    /// Share of the baseline's requests also copied to the candidate, whose answers go to nobody.
    pub shadow_share: f64,
}

impl Traffic {
    pub const BASELINE: Traffic = Traffic { candidate_percent: 0.0, shadow_share: 0.0 };
    pub const CANDIDATE: Traffic = Traffic { candidate_percent: 100.0, shadow_share: 0.0 };
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// [`Rollout::start`].
    Start,
    /// A step's hold, requests and guardrails were met.
    Advance,
    /// A guardrail failed.
    Failure,
    /// Pause, resume, promote or rollback by hand.
    Command,
}

/// One entry of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub from: Phase,
    pub to: Phase,
    /// The step the rollout was in (or paused at) when it happened; `None` when pending.
    pub step: Option<usize>,
    pub cause: Cause,
    pub reason: String,
    /// The readings that decided it, or for a command the last ones seen.
    pub guardrails: Vec<GuardrailReading>,
    /// How traffic is divided after it.
    pub traffic: Traffic,
}

/// All a rollout has to keep over a restart; its plan comes from `endpoint.yaml` again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub phase: Phase,
    /// When the current step started, or was last resumed; set while a step runs or is paused.
    pub step_started_ms: Option<u64>,
    /// From the last observation in this step.
    pub candidate_requests_in_step: u64,
    /// The last observation's readings in this step (cleared when a step starts).
    pub last_readings: Vec<GuardrailReading>,
    pub history: Vec<Transition>,
}

/// A rollout: its plan and its state.
#[derive(Clone, Debug)]
pub struct Rollout {
    plan: RolloutPlan,
    state: RolloutState,
}

impl Rollout {
    /// A pending rollout of `plan`.
    pub fn new(plan: RolloutPlan) -> Self {
        Rollout { plan, state: RolloutState::default() }
    }

    /// A rollout carried on from a saved `state`, which must fit the plan: a plan edited
    /// mid-rollout to fewer steps would leave the state pointing at a step that is not there.
    pub fn restore(plan: RolloutPlan, state: RolloutState) -> Result<Self, String> {
        if let Some(k) = state.phase.step() {
            let n = plan.steps.len();
            if k >= n {
                return Err(format!("the saved rollout is at '{}' but the plan's last step is {}", state.phase, n - 1));
            }
            if state.step_started_ms.is_none() {
                return Err(format!("the saved rollout is at '{}' but has no step start time", state.phase));
            }
        }
        Ok(Rollout { plan, state })
    }

    pub fn plan(&self) -> &RolloutPlan {
        &self.plan
    }

    /// What to save.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    pub fn phase(&self) -> Phase {
        self.state.phase
    }

    pub fn history(&self) -> &[Transition] {
        &self.state.history
    }

    /// How traffic is divided now.
    pub fn traffic(&self) -> Traffic {
        self.traffic_of(self.state.phase)
    }

    fn traffic_of(&self, phase: Phase) -> Traffic {
        match phase {
            Phase::Pending | Phase::RolledBack | Phase::Paused { by_failure: true, .. } => Traffic::BASELINE,
            Phase::Promoted => Traffic::CANDIDATE,
            Phase::Step(k) | Phase::Paused { step: k, by_failure: false } => match self.plan.steps[k].exposure {
                Exposure::Shadow { share } => Traffic { candidate_percent: 0.0, shadow_share: share },
                Exposure::Weight { percent } => Traffic { candidate_percent: percent, shadow_share: 0.0 },
            },
        }
    }

    /// Pending → step 0.
    pub fn start(&mut self, now: u64) -> Result<&Transition, String> {
        if self.state.phase != Phase::Pending {
            return Err(match self.state.phase {
                p if p.is_over() => already_over(p),
                p => format!("rollout has already started (it is {p})"),
            });
        }
        let reason = format!("started: step 0 of {} ({})", self.plan.steps.len(), self.plan.steps[0].exposure);
        Ok(self.record(now, Phase::Step(0), Cause::Start, reason, Vec::new()))
    }

    /// Acts on what the statistics saw: a failure at once, else the step advances when it is
    /// done (see [`super`]). Returns the transition it made, if any.
    pub fn observe(&mut self, now: u64, observation: &Observation) -> Option<&Transition> {
        let phase = self.state.phase;
        let k = phase.step()?;
        let readings = self.sanitized(&observation.guardrails);
        self.state.candidate_requests_in_step = observation.candidate_requests_in_step;
        self.state.last_readings = readings.clone();
        if let Phase::Paused { by_failure: true, .. } = phase {
            return None;
        }
        let failed: Vec<&GuardrailReading> = readings.iter().filter(|r| r.verdict == Verdict::Fail).collect();
        if !failed.is_empty() {
            let what = failed.iter().map(|r| show_reading(r)).collect::<Vec<_>>().join(", ");
            let (to, action) = match self.plan.on_failure {
                OnFailure::Rollback => (Phase::RolledBack, "rolled back: all traffic to the baseline"),
                OnFailure::Pause => (
                    Phase::Paused { step: k, by_failure: true },
                    "paused: all traffic to the baseline until resumed or rolled back by hand",
                ),
            };
            let failed = if failed.len() == 1 { "guardrail failed" } else { "guardrails failed" };
            let reason = format!("{failed} at step {k} ({}): {what}; {action}", self.plan.steps[k].exposure);
            return Some(self.record(now, to, Cause::Failure, reason, readings));
        }
        if let Phase::Paused { .. } = phase {
            return None;
        }
        let step = self.plan.steps[k];
        let in_step = now.saturating_sub(self.state.step_started_ms.unwrap_or(now));
        let requests = observation.candidate_requests_in_step;
        if in_step < step.hold_ms || requests < step.min_requests {
            return None;
        }
        let last = k + 1 == self.plan.steps.len();
        let needed: Vec<&Guardrail> = self.plan.guardrails.iter().filter(|g| g.applies_to(&step)).collect();
        if !last && !needed.iter().all(|g| passes(g, &readings)) {
            return None;
        }
        let met = format!(
            "step {k} ({}) done: {} in the step (hold {}), {requests} candidate requests (at least {})",
            step.exposure,
            show_duration(in_step),
            show_duration(step.hold_ms),
            step.min_requests
        );
        let (to, reason) = if last {
            let guards = if readings.is_empty() { "no guardrail readings" } else { "no guardrail failing" };
            (Phase::Promoted, format!("{met}, {guards}; promoted: all traffic to the candidate"))
        } else {
            let guards = if needed.is_empty() { "no guardrail to pass" } else { "every guardrail passing" };
            let next = self.plan.steps[k + 1].exposure;
            (Phase::Step(k + 1), format!("{met}, {guards}; now step {} ({next})", k + 1))
        };
        Some(self.record(now, to, Cause::Advance, reason, readings))
    }

    /// Keeps what the statistics saw in the current step for the status, acting on none of it:
    /// what a replica that does not drive the rollout does with its readings.
    pub fn note(&mut self, observation: &Observation) {
        if self.state.phase.step().is_some() {
            self.state.candidate_requests_in_step = observation.candidate_requests_in_step;
            self.state.last_readings = self.sanitized(&observation.guardrails);
        }
    }

    /// Stops a running step by hand; its traffic holds.
    pub fn pause(&mut self, now: u64, reason: &str) -> Result<&Transition, String> {
        let reason = required(reason)?;
        let k = match self.state.phase {
            Phase::Step(k) => k,
            Phase::Pending => return Err("rollout has not started".into()),
            Phase::Paused { step, .. } => return Err(format!("rollout is already paused at step {step}")),
            p => return Err(already_over(p)),
        };
        let to = Phase::Paused { step: k, by_failure: false };
        let reason = format!("paused by hand: {reason}; traffic holds at {}", show_traffic(self.traffic_of(to)));
        Ok(self.record_command(now, to, reason))
    }

    /// Back to the paused step, its hold, request count and readings starting afresh: what was
    /// seen before the pause (maybe a failure) is not evidence for the step as it runs now.
    pub fn resume(&mut self, now: u64, reason: &str) -> Result<&Transition, String> {
        let reason = required(reason)?;
        let k = match self.state.phase {
            Phase::Paused { step, .. } => step,
            p if p.is_over() => return Err(already_over(p)),
            Phase::Pending => return Err("rollout is not paused (it has not started)".into()),
            p => return Err(format!("rollout is not paused (it is at {p})")),
        };
        let to = Phase::Step(k);
        let reason = format!(
            "resumed by hand: {reason}; step {k} ({}) starts its hold again, traffic {}",
            self.plan.steps[k].exposure,
            show_traffic(self.traffic_of(to))
        );
        Ok(self.record_command(now, to, reason))
    }

    /// Ends the rollout with all traffic to the candidate, whatever step it is at.
    pub fn promote(&mut self, now: u64, reason: &str) -> Result<&Transition, String> {
        let reason = required(reason)?;
        self.refuse_if_over()?;
        let reason = format!("promoted by hand at {}: {reason}; all traffic to the candidate", self.state.phase);
        Ok(self.record_command(now, Phase::Promoted, reason))
    }

    /// Ends the rollout with all traffic to the baseline.
    pub fn rollback(&mut self, now: u64, reason: &str) -> Result<&Transition, String> {
        let reason = required(reason)?;
        self.refuse_if_over()?;
        let reason = format!("rolled back by hand at {}: {reason}; all traffic to the baseline", self.state.phase);
        Ok(self.record_command(now, Phase::RolledBack, reason))
    }

    fn refuse_if_over(&self) -> Result<(), String> {
        if self.state.phase.is_over() {
            return Err(already_over(self.state.phase));
        }
        Ok(())
    }

    fn record_command(&mut self, now: u64, to: Phase, reason: String) -> &Transition {
        let readings = self.state.last_readings.clone();
        self.record(now, to, Cause::Command, reason, readings)
    }

    fn record(
        &mut self,
        now: u64,
        to: Phase,
        cause: Cause,
        reason: String,
        guardrails: Vec<GuardrailReading>,
    ) -> &Transition {
        let from = self.state.phase;
        if let Phase::Step(_) = to {
            self.state.step_started_ms = Some(now);
            self.state.candidate_requests_in_step = 0;
            self.state.last_readings.clear();
        }
        self.state.phase = to;
        let traffic = self.traffic_of(to);
        self.state.history.push(Transition {
            at_ms: now,
            from,
            to,
            step: from.step(),
            cause,
            reason,
            guardrails,
            traffic,
        });
        self.state.history.last().expect("just pushed")
    }

    /// `readings` with non-finite numbers replaced: the state is saved as JSON, where NaN and
    /// infinity become `null`, which would not read back as a threshold.
    fn sanitized(&self, readings: &[GuardrailReading]) -> Vec<GuardrailReading> {
        readings
            .iter()
            .map(|r| {
                let planned = self.plan.guardrails.iter().find(|g| g.name() == r.guardrail);
                GuardrailReading {
                    guardrail: r.guardrail.clone(),
                    value: r.value.filter(|v| v.is_finite()),
                    threshold: if r.threshold.is_finite() {
                        r.threshold
                    } else {
                        planned.map_or(0.0, Guardrail::threshold)
                    },
                    verdict: r.verdict,
                }
            })
            .collect()
    }
}

/// Whether `readings` show `guardrail` passing; no reading is not a pass.
fn passes(guardrail: &Guardrail, readings: &[GuardrailReading]) -> bool {
    let name = guardrail.name();
    readings.iter().any(|r| r.guardrail == name && r.verdict == Verdict::Pass)
}

fn required(reason: &str) -> Result<&str, String> {
    let r = reason.trim();
    if r.is_empty() {
        return Err("a reason is required".into());
    }
    Ok(r)
}

fn already_over(phase: Phase) -> String {
    format!("rollout is already {phase}")
}

fn show_reading(r: &GuardrailReading) -> String {
    match r.value {
        Some(v) => format!("{} = {v} (threshold {})", r.guardrail, r.threshold),
        None => format!("{} (threshold {})", r.guardrail, r.threshold),
    }
}

fn show_traffic(t: Traffic) -> String {
    if t.shadow_share > 0.0 {
        format!("candidate {}% + shadow {}%", t.candidate_percent, (t.shadow_share * 1e8).round() / 1e6)
    } else {
        format!("candidate {}%", t.candidate_percent)
    }
}

#[cfg(test)]
mod tests;
