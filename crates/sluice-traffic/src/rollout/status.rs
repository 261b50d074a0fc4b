//! What a rollout shows to people and to `GET` handlers: its phase and step, how far the step is
//! from done (time, requests, guardrails), the traffic, and the history. A view computed from
//! the state at a given time; serializable, never read back.

use serde::{Deserialize, Serialize};

use super::machine::{Phase, Rollout, Transition, Verdict};
use super::plan::Step;
use super::Traffic;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    /// The step running or paused at; `None` when pending or over.
    pub step: Option<usize>,
    /// How many steps the plan has.
    pub steps: usize,
    pub step_definition: Option<Step>,
    pub step_started_ms: Option<u64>,
    /// Since the step started (or was last resumed).
    pub time_in_step_ms: Option<u64>,
    /// Until the hold is met; only while the step runs (resuming restarts the hold).
    pub hold_remaining_ms: Option<u64>,
    /// From the last observation in the step.
    pub candidate_requests_in_step: u64,
    /// Until `min_requests` is met; only while the step runs.
    pub requests_needed: Option<u64>,
    pub traffic: Traffic,
    /// Every planned guardrail, in the plan's order, then any reading of another name.
    pub guardrails: Vec<GuardrailStatus>,
    pub history: Vec<Transition>,
}

/// A guardrail's limit and last reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardrailStatus {
    pub guardrail: String,
    /// The limit's field (`max_increase`, `max_ratio`, `p`…); empty for a guardrail not planned.
    pub limit: String,
    pub value: Option<f64>,
    pub threshold: f64,
    /// `None`: no reading in this step yet.
    pub verdict: Option<Verdict>,
    /// Whether the running step needs it to pass before it can advance.
    pub required: bool,
}

impl Rollout {
    /// The rollout as it stands at `now`.
    pub fn status(&self, now: u64) -> Status {
        let (plan, state) = (self.plan(), self.state());
        let phase = state.phase;
        let step = phase.step();
        let definition = step.map(|k| plan.steps[k]);
        let running = matches!(phase, Phase::Step(_));
        let time_in_step = step.and(state.step_started_ms).map(|t| now.saturating_sub(t));
        let is_last = step.is_some_and(|k| k + 1 == plan.steps.len());
        let readings = &state.last_readings;
        let mut guardrails: Vec<GuardrailStatus> = plan
            .guardrails
            .iter()
            .map(|g| {
                let name = g.name();
                let reading = readings.iter().find(|r| r.guardrail == name);
                GuardrailStatus {
                    limit: g.limit.key().to_string(),
                    value: reading.and_then(|r| r.value),
                    threshold: g.threshold(),
                    verdict: reading.map(|r| r.verdict),
                    required: running && !is_last && definition.is_some_and(|s| g.applies_to(&s)),
                    guardrail: name,
                }
            })
            .collect();
        for r in readings {
            if !guardrails.iter().any(|g| g.guardrail == r.guardrail) {
                guardrails.push(GuardrailStatus {
                    guardrail: r.guardrail.clone(),
                    limit: String::new(),
                    value: r.value,
                    threshold: r.threshold,
                    verdict: Some(r.verdict),
                    required: false,
                });
            }
        }
        Status {
            phase,
            step,
            steps: plan.steps.len(),
            step_definition: definition,
            step_started_ms: step.and(state.step_started_ms),
            time_in_step_ms: time_in_step,
            hold_remaining_ms: definition
                .filter(|_| running)
                .map(|s| s.hold_ms.saturating_sub(time_in_step.unwrap_or(0))),
            candidate_requests_in_step: state.candidate_requests_in_step,
            requests_needed: definition
                .filter(|_| running)
                .map(|s| s.min_requests.saturating_sub(state.candidate_requests_in_step)),
            traffic: self.traffic(),
            guardrails,
            history: state.history.clone(),
        }
    }
}
