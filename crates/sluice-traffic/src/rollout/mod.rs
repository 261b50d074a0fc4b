//! Rollouts: a candidate replaces a baseline in steps (a shadow phase in which it answers nobody,
//! then a growing percent of traffic), watched by guardrails, and is promoted or rolled back.
//! This module is the pure part, unit-tested without threads: the plan read from `endpoint.yaml`
//! ([`plan`]), the state machine that acts on guardrail verdicts ([`machine`]), its status view
//! ([`status`]) and which side a unit is on ([`canary`]). It reads no clock, does no I/O and
//! computes no statistics: an endpoint routes by [`Rollout::traffic`] and [`canary`], statistics
//! turn counts into [`Verdict`]s ([`guardrails`]), and the endpoint keeps [`RolloutState`] (serde)
//! in the state store, which carries a rollout over a restart ([`Rollout::restore`]) and shares
//! it between replicas (`shared`: one replica at a time drives, every replica follows).
//!
//! # How the machine moves
//!
//! `pending → step 0 → … → step n−1 → promoted`, with `paused` beside any step and `rolled back`
//! reachable from anywhere not over. Every transition is kept in the history with its time, the
//! step it left, its cause, the guardrail readings of the moment, the traffic after it and a
//! reason in words; an observation that changes nothing records nothing.
//!
//! - **Time** is milliseconds since the Unix epoch, passed into every call. A clock that goes
//!   back counts as no time passing.
//! - **A failure acts at once.** Any reading with [`Verdict::Fail`] (of a planned guardrail or
//!   not) applies `on_failure` on that observation, whatever the hold: `rollback` ends the
//!   rollout with all traffic to the baseline; `pause` pauses it *by failure*, which also sends
//!   all traffic to the baseline until someone resumes or rolls back. A failure counts while the
//!   rollout is paused by hand too, since the candidate still serves then; it is ignored while
//!   paused by failure (the candidate serves nobody, and stale readings must not fail it twice),
//!   while pending and once over.
//! - **An intermediate step advances** on the first observation at which its `hold` has passed
//!   since the step started, the candidate has seen `min_requests` requests in the step, and
//!   every guardrail the step can measure ([`plan::Guardrail::applies_to`]: disagreement only in
//!   the shadow step, feedback and SRM only in weight steps) reads [`Verdict::Pass`]. An
//!   `Inconclusive` verdict, or no reading at all for such a guardrail, holds the step past its
//!   hold for as long as it lasts: "not enough data" is never taken as "fine". A step with no
//!   hold and no `min_requests` still needs those passes.
//! - **The last step (`weight: 100`) promotes** once its hold and `min_requests` are met and no
//!   guardrail fails; `Inconclusive` is allowed there, because with no baseline traffic left the
//!   comparative guardrails cannot reach `Pass`. With no hold it promotes on the first
//!   observation without a failure. Promotion sends all traffic to the candidate.
//! - **One transition per observation.** Entering a step (by advancing or resuming) restarts its
//!   hold clock, its request count and its readings: `candidate_requests_in_step` in an
//!   [`Observation`] counts from [`RolloutState::step_started_ms`].
//! - **By hand**, each with a non-empty reason: `pause` (a running step; its weights hold),
//!   `resume` (a paused rollout, back to its step with the hold restarted), `promote` and
//!   `rollback` (from anything not over, pending included). Refusals say why ("rollout is
//!   already rolled back"). `start` moves pending to step 0.
//! - **Canary assignment** is a single threshold on a unit's hashed point ([`canary`]): raising
//!   the percent only moves units from the baseline to the candidate.

pub mod canary;
pub mod endpoint;
pub mod guardrails;
pub mod machine;
pub mod plan;
mod shared;
pub mod status;

pub use machine::{Cause, GuardrailReading, Observation, Phase, Rollout, RolloutState, Traffic, Transition, Verdict};
pub use plan::{Exposure, Guardrail, Limit, Metric, OnFailure, RolloutPlan, Step};
pub use status::{GuardrailStatus, Status};
