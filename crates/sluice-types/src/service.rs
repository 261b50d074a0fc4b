//! The seam every layer (edges, traffic policies, jobs) talks through.

use async_trait::async_trait;

use crate::{InferRequest, InferResponse, ServeError};

/// Something that answers inference requests: the engine, or a traffic policy over models.
#[async_trait]
pub trait InferService: Send + Sync {
    async fn infer(&self, request: InferRequest) -> Result<InferResponse, ServeError>;
}
