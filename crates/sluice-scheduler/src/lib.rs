//! Per-model scheduling: request validation against the model config, a queue per model
//! version, and instance pools on dedicated threads (never tokio workers). Counters for
//! Triton's statistics and metrics are kept here, where queueing and execution happen.

pub mod adaptive;
pub mod batch;
pub mod order;
pub mod policy;
pub mod queue;
pub mod runner;
pub mod stats;
pub mod validate;

pub use policy::BatchPolicy;
pub use runner::{Executed, ModelRunner, QueueLimits, Submission};
pub use stats::ModelStats;
pub use validate::validate_request;
