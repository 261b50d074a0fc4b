//! Traffic between models: endpoints that are policies over other endpoints (route, cascade,
//! split, shadow) and Triton ensembles. This crate knows nothing of HTTP or of how a model runs; it sees requests
//! through [`sluice_types::InferRequest`] and a [`sluice_types::RequestContext`], and its targets
//! through a [`sluice_types::Resolver`].
//!
//! - [`definition`]: `endpoint.yaml` read into a checked [`definition::Definition`];
//! - [`policy`]: route, cascade and split as endpoints; [`shadow`]: the shadow endpoint, its
//!   bounded copy queue, statistics and comparison log; [`ensemble`]: Triton ensembles, steps
//!   run as a graph; [`build`] makes the right one;
//! - their decisions, pure functions unit-tested without threads or sockets: whether a rule's
//!   condition holds for a request ([`rules`]), which target of a weighted split a unit goes to
//!   ([`split`]), whether a cascade stage is confident enough to answer ([`cascade`]), how a
//!   shadow's answers compare with the primary's ([`compare`]);
//! - [`rollout`]: a candidate rolled out over a baseline in steps (shadow, then growing weights)
//!   under guardrails: its plan, read from `endpoint.yaml`, the pure state machine that
//!   advances, pauses, promotes or rolls it back on guardrail verdicts and commands, driven by a
//!   clock passed in, and the guardrail verdicts computed from a step's counts (not yet wired
//!   into an endpoint);
//! - [`experiment`]: A/B experiments (`kind: experiment`): the plan, the endpoint that assigns
//!   units to arms and takes outcomes fed back, and the analysis (per-arm estimates, differences
//!   with fixed-horizon and always-valid tests, planned size, SRM, a verdict in words), pure;
//! - [`stats`]: the statistics of A/B experiments and rollout guardrails, as pure functions:
//!   fixed-horizon tests and intervals, sample size and power, sequential (always-valid) tests,
//!   the sample-ratio-mismatch check, and hash buckets for single-threshold canary ramps.

use std::sync::{Arc, Weak};

use sluice_types::{Endpoint, Resolver, ServeError};

pub mod cascade;
pub mod compare;
pub mod definition;
pub mod ensemble;
pub mod experiment;
mod loaded;
mod own_stats;
pub mod policy;
pub mod rollout;
pub mod rules;
pub mod shadow;
pub mod split;
pub mod stats;
#[cfg(test)]
mod testing;

use definition::Definition;
pub use shadow::ShadowOptions;

/// Milliseconds since the Unix epoch (0 if the clock is before it): the time endpoints record.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What endpoints need from the server beyond their definition.
#[derive(Clone, Default)]
pub struct BuildOptions {
    pub shadow: ShadowOptions,
    /// Where rollouts and experiments keep their state (shared with other replicas when the
    /// store is); `None`: a store in memory, gone with the process.
    pub state: Option<Arc<dyn sluice_state::StateStore>>,
    /// This process as a writer to the state store (empty: one is made up).
    pub replica: String,
}

impl BuildOptions {
    fn state(&self) -> Result<(Arc<dyn sluice_state::StateStore>, String), ServeError> {
        let store = match &self.state {
            Some(s) => s.clone(),
            None => Arc::new(sluice_state::RedbStore::in_memory()?),
        };
        let replica = if self.replica.is_empty() { sluice_state::replica_id() } else { self.replica.clone() };
        Ok((store, replica))
    }
}

/// The endpoint `definition` declares, finding its targets through `resolver`.
pub fn build(
    name: &str,
    definition: Definition,
    resolver: Weak<dyn Resolver>,
    opts: &BuildOptions,
) -> Result<Arc<dyn Endpoint>, ServeError> {
    Ok(match definition {
        Definition::Shadow { primary, shadows, compare, log_sample } => Arc::new(shadow::ShadowEndpoint::new(
            name,
            primary,
            shadows,
            compare,
            log_sample,
            resolver,
            opts.shadow.clone(),
        )),
        Definition::Rollout(plan) => {
            let (store, replica) = opts.state()?;
            Arc::new(rollout::endpoint::RolloutEndpoint::new(name, *plan, resolver, &opts.shadow, store, &replica)?)
        }
        Definition::Experiment(plan) => {
            let (store, replica) = opts.state()?;
            experiment::endpoint::ExperimentEndpoint::new(name, *plan, resolver, store, &replica)
        }
        Definition::Ensemble { spec, versions } => Arc::new(ensemble::Ensemble::new(name, spec, versions, resolver)),
        d @ (Definition::Route { .. } | Definition::Cascade { .. } | Definition::Split { .. }) => {
            Arc::new(policy::Policy::new(name, d, resolver)?)
        }
    })
}
