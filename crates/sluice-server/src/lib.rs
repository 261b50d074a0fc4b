//! The server: the [`engine::Engine`] façade that every edge calls (it resolves a served name to
//! its endpoint; a model version is one, in `version`; the endpoints of `endpoint.yaml` files are
//! kept in `endpoints`), the HTTP edge (axum), the
//! gRPC edge (tonic), Prometheus metrics, and start-up and graceful shutdown.

mod endpoints;
pub mod engine;
pub mod generate;
pub mod grpc;
pub mod http;
pub mod metrics;
mod request_log;
pub mod server;
mod version;

pub use engine::Engine;
pub use server::{build_engine, start, EngineOptions, JobsOptions, RunningServer, ServerConfig};
pub use sluice_traffic::ShadowOptions;
