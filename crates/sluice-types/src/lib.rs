//! Shared vocabulary of Sluice: tensors and datatypes, inference requests and responses, the
//! model configuration, generation requests and streams, the one error enum `ServeError`, and
//! the seam every layer talks
//! through: the [`Endpoint`] trait, the [`Resolver`] that finds one for a served name, and the
//! [`RequestContext`] a request carries. No internal dependencies.

pub mod api;
pub mod config;
mod datatype;
pub mod endpoint;
mod error;
pub mod generation;
pub mod json;
pub mod prom;
mod request;
mod tensor;

pub use config::{CpuPriority, ModelConfig};
pub use datatype::DataType;
pub use endpoint::{
    Answer, Endpoint, ExperimentControl, Feedback, RequestContext, Resolver, RolloutAction, RolloutControl,
    TrafficCounter,
};
pub use error::{Result, ServeError};
pub use request::{InferRequest, InferResponse, Parameters, RequestedOutput, Timings};
pub use tensor::{element_count, Element, Tensor, TensorData};
