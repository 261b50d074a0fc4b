//! How requests show up in the logs. Every HTTP request and gRPC call runs inside a `request`
//! span that carries its id, so each log line written while it is handled (and, over HTTP, the
//! access line at debug level) says which request it belongs to.
//!
//! The id is the client's `x-request-id` header (gRPC: metadata), else a generated UUID; over HTTP
//! the response echoes it in `x-request-id`, so a client can quote it. The V2 request's own `id`,
//! when there is one, is recorded as the span's `id` once the body is decoded
//! ([`record_v2_id`]): finding it before would mean parsing every body twice.

use axum::http::{Request, StatusCode};
use axum::Router;
use sluice_types::endpoint::clip;
use sluice_types::ServeError;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{MakeSpan, TraceLayer};
use tracing::Span;

#[derive(Clone, Copy)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &Request<B>) -> Span {
        // Set by SetRequestIdLayer when the client sent none; `to_str` fails only on non-ASCII.
        let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let request_id = clip(id);
        // The path by Display: a `&str` field is otherwise escaped character by character on
        // every request (a path is percent-encoded, so it needs no quotes in text logs; the ids,
        // which may hold anything, keep them).
        tracing::info_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            request_id,
            id = tracing::field::Empty,
        )
    }
}

/// Wraps the router, outermost first: an id for requests without one, the span, the id echoed
/// in the response. TraceLayer's own lines are off but for the access line at debug level:
/// errors are logged with their message by [`log_error`], where the message is known.
pub fn instrument(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(RequestSpan)
                    .on_request(())
                    .on_failure(())
                    .on_body_chunk(())
                    .on_eos(()),
            )
            .layer(PropagateRequestIdLayer::x_request_id()),
    )
}

/// The span of one gRPC call (tonic's `trace_fn`). gRPC has no response header a client would
/// read the generated id from, but the call's lines still share it.
pub fn grpc_span(req: &Request<()>) -> Span {
    let span = tracing::info_span!(
        "request",
        path = req.uri().path(),
        request_id = tracing::field::Empty,
        id = tracing::field::Empty,
    );
    // A UUID costs little, but nothing at all when the span is filtered out.
    if !span.is_disabled() {
        match req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(id) => span.record("request_id", clip(id)),
            None => span.record("request_id", tracing::field::display(uuid::Uuid::now_v7())),
        };
    }
    span
}

/// Records the V2 request's own `id` on the current request span.
pub fn record_v2_id(id: Option<&str>) {
    if let Some(id) = id.filter(|id| !id.is_empty()) {
        Span::current().record("id", clip(id));
    }
}

/// An error answer in the logs, by either edge: a failure of the server (HTTP 500) at error
/// level, anything the client can fix or retry at debug level (a busy server would otherwise log
/// every 429).
pub fn log_error(e: &ServeError) {
    let status = crate::http::status_of(e);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(status = status.as_u16(), error = %e, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), error = %e, "request refused");
    }
}
