//! The one error enum of the whole server. Edges map it to HTTP and gRPC status in one
//! exhaustive `match` each.

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq)]
pub enum ServeError {
    /// The model (or the requested version of it) is not in any repository.
    #[error("{0}")]
    NotFound(String),
    /// The model exists but cannot take requests now (loading, unloading, failed).
    #[error("{0}")]
    Unavailable(String),
    /// The request is malformed or does not match the model: the message names the tensor,
    /// what was expected and what came.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request asks for something this server does not do.
    #[error("{0}")]
    Unsupported(String),
    /// The queue is full; the client should retry after the given delay.
    #[error("{message}")]
    ResourceExhausted { message: String, retry_after_ms: u64 },
    /// The request waited longer than its timeout and was rejected by the scheduler.
    #[error("{0}")]
    Timeout(String),
    /// The client went away or cancelled before the request ran.
    #[error("{0}")]
    Cancelled(String),
    /// The request conflicts with the state of what it names (cancelling a job that ended).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The backend failed while executing a request.
    #[error("{0}")]
    Backend(String),
    /// A server bug or an unexpected failure.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ServeError::InvalidArgument(msg.into())
    }

    pub fn model_not_found(model: &str, version: Option<&str>) -> Self {
        match version {
            Some(v) => ServeError::NotFound(format!("Request for unknown model: '{model}' version {v} is not found")),
            None => ServeError::NotFound(format!("Request for unknown model: '{model}' is not found")),
        }
    }

    /// The label used for `nv_inference_request_failure{reason=...}`.
    pub fn failure_reason(&self) -> &'static str {
        match self {
            ServeError::Timeout(_) | ServeError::ResourceExhausted { .. } => "REJECTED",
            ServeError::Cancelled(_) => "CANCELED",
            ServeError::Backend(_) => "BACKEND",
            ServeError::NotFound(_)
            | ServeError::Unavailable(_)
            | ServeError::InvalidArgument(_)
            | ServeError::Unsupported(_)
            | ServeError::PayloadTooLarge(_)
            | ServeError::Conflict(_)
            | ServeError::Internal(_) => "OTHER",
        }
    }
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;
