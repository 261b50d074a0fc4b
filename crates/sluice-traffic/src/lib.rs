//! Traffic between models: endpoints that are policies over other endpoints (route, cascade,
//! split, shadow, …). This crate knows nothing of HTTP or of how a model runs; it sees requests
//! through [`sluice_types::InferRequest`] and a [`sluice_types::RequestContext`].
//!
//! - [`definition`]: `endpoint.yaml` read into a checked [`definition::Definition`];
//! - [`policy`]: route, cascade and split as endpoints over a [`sluice_types::Resolver`];
//! - their decisions, pure functions unit-tested without threads or sockets: whether a rule's
//!   condition holds for a request ([`rules`]), which target of a weighted split a unit goes to
//!   ([`split`]), whether a cascade stage is confident enough to answer ([`cascade`]).
//!
//! The model repository does not load endpoints yet; the shadow endpoint is still to come.

pub mod cascade;
pub mod definition;
pub mod policy;
pub mod rules;
pub mod split;
