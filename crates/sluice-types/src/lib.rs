//! Shared vocabulary of Sluice: tensors and datatypes, inference requests and responses, the
//! model configuration, the one error enum `ServeError`, and the `InferService` trait that every
//! layer talks through. No internal dependencies.

pub mod api;
pub mod config;
mod datatype;
mod error;
pub mod json;
pub mod prom;
mod request;
mod service;
mod tensor;

pub use config::ModelConfig;
pub use datatype::DataType;
pub use error::{Result, ServeError};
pub use request::{InferRequest, InferResponse, Parameters, RequestedOutput, Timings};
pub use service::InferService;
pub use tensor::{element_count, Element, Tensor, TensorData};
