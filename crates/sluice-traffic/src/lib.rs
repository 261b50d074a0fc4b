//! Traffic between models: endpoints that are policies over other endpoints (route, cascade,
//! split, shadow, …). This crate knows nothing of HTTP or of how a model runs; it sees requests
//! through [`sluice_types::InferRequest`] and a [`sluice_types::RequestContext`].
//!
//! What is here so far are the decisions, as pure functions unit-tested without threads or
//! sockets: whether a rule's condition holds for a request ([`rules`]), which target of a
//! weighted split a unit goes to ([`split`]), and whether a cascade stage is confident enough to
//! answer ([`cascade`]). The policy endpoints that use them come with `endpoint.yaml`.

pub mod cascade;
pub mod definition;
pub mod rules;
pub mod split;
