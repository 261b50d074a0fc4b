//! The gRPC edge: `inference.GRPCInferenceService` (KServe V2 / Open Inference Protocol with
//! Triton's extensions, from `proto/grpc_service.proto`) and `grpc.health.v1.Health`, both over
//! the [`Engine`].
//!
//! Inputs come as typed `contents` or as `raw_input_contents`; outputs always go out in
//! `raw_output_contents`, as Triton sends them. Shared memory, trace and log settings answer
//! UNIMPLEMENTED.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use sluice_types::ServeError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::service::Routes;
use tonic::Status;
use tonic_health::pb::health_server::HealthServer;

use crate::engine::Engine;

mod config;
mod convert;
mod health;
mod service;

/// Types and client/server stubs generated from `proto/` (package `inference`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

pub use health::EngineHealth;
pub use service::InferenceService;

/// Largest message accepted or sent, as Triton's default: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The gRPC services over `engine`, with the default 64 MiB message limit.
pub fn routes(engine: Arc<Engine>) -> Routes {
    routes_with(engine, DEFAULT_MAX_MESSAGE_BYTES, None)
}

fn routes_with(engine: Arc<Engine>, max_message_bytes: usize, closing: Option<watch::Receiver<bool>>) -> Routes {
    let inference =
        pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(InferenceService::new(engine.clone()))
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
    let health = HealthServer::new(EngineHealth::new(engine, closing));
    Routes::new(inference).add_service(health)
}

/// Serves gRPC on `listener` until `shutdown` completes, then stops taking calls and lets the
/// ones in flight finish. Messages up to 64 MiB.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_limit(engine, listener, DEFAULT_MAX_MESSAGE_BYTES, shutdown).await
}

/// [`serve`] with a message size limit (both directions) other than 64 MiB.
pub async fn serve_with_limit(
    engine: Arc<Engine>,
    listener: TcpListener,
    max_message_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (closing_tx, closing_rx) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        // Health watchers end so that they do not hold the graceful shutdown open.
        let _ = closing_tx.send(true);
    };
    // Small requests should not wait for Nagle's algorithm.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    tonic::transport::Server::builder()
        .trace_fn(crate::request_log::grpc_span)
        .add_routes(routes_with(engine, max_message_bytes, Some(closing_rx)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server failed")
}

/// The one mapping from [`ServeError`] to gRPC status codes.
///
/// A scheduler timeout is UNAVAILABLE, as Triton answers requests its queue policy rejects
/// (DEADLINE_EXCEEDED is left to the client's own gRPC deadline). A full queue is
/// RESOURCE_EXHAUSTED with a `retry-after` (seconds) entry in the trailers.
pub fn status_from(e: &ServeError) -> Status {
    crate::request_log::log_error(e);
    match e {
        ServeError::NotFound(m) => Status::not_found(m),
        ServeError::Unavailable(m) => Status::unavailable(m),
        ServeError::InvalidArgument(m) => Status::invalid_argument(m),
        ServeError::Unsupported(m) => Status::unimplemented(m),
        ServeError::ResourceExhausted { message, retry_after_ms } => {
            let mut s = Status::resource_exhausted(message);
            let secs = retry_after_ms.div_ceil(1000).max(1);
            s.metadata_mut().insert("retry-after", MetadataValue::from(secs));
            s
        }
        ServeError::Timeout(m) => Status::unavailable(m),
        ServeError::Cancelled(m) => Status::cancelled(m),
        ServeError::PayloadTooLarge(m) => Status::resource_exhausted(m),
        ServeError::Backend(m) => Status::internal(m),
        ServeError::Conflict(m) => Status::failed_precondition(m),
        ServeError::Internal(m) => Status::internal(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_error_has_its_code() {
        let s = |m: &str| m.to_string();
        let cases = [
            (ServeError::NotFound(s("a")), Code::NotFound),
            (ServeError::Unavailable(s("a")), Code::Unavailable),
            (ServeError::InvalidArgument(s("a")), Code::InvalidArgument),
            (ServeError::Unsupported(s("a")), Code::Unimplemented),
            (ServeError::ResourceExhausted { message: s("a"), retry_after_ms: 100 }, Code::ResourceExhausted),
            (ServeError::Timeout(s("a")), Code::Unavailable),
            (ServeError::Cancelled(s("a")), Code::Cancelled),
            (ServeError::PayloadTooLarge(s("a")), Code::ResourceExhausted),
            (ServeError::Backend(s("a")), Code::Internal),
            (ServeError::Internal(s("a")), Code::Internal),
        ];
        for (e, code) in cases {
            let st = status_from(&e);
            assert_eq!(st.code(), code, "{e:?}");
            assert_eq!(st.message(), "a");
        }
        let st = status_from(&ServeError::ResourceExhausted { message: s("full"), retry_after_ms: 1500 });
        assert_eq!(st.metadata().get("retry-after").and_then(|v| v.to_str().ok()), Some("2"));
    }
}
