//! The HTTP edge (axum): the V2 REST endpoints and Triton's extensions over the [`Engine`].

mod codec;
mod completions;
mod experiment;
mod generate;
mod jobs;
mod logprobs;
mod openai;
mod rollout;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use sluice_repository::LoadOverride;
use sluice_types::ServeError;

use crate::engine::Engine;
pub use codec::{decode_raw_request, decode_request, encode_response, OutputEncoding};

/// Status code and `{"error": ...}` body for every error; one exhaustive match.
pub struct HttpError(pub ServeError);

impl From<ServeError> for HttpError {
    fn from(e: ServeError) -> Self {
        HttpError(e)
    }
}

pub fn status_of(e: &ServeError) -> StatusCode {
    match e {
        ServeError::NotFound(_) => StatusCode::NOT_FOUND,
        ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServeError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ServeError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        ServeError::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
        ServeError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServeError::Cancelled(_) => StatusCode::BAD_REQUEST,
        ServeError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ServeError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ServeError::Conflict(_) => StatusCode::CONFLICT,
        ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        crate::request_log::log_error(&self.0);
        let mut resp = (status, Json(json!({ "error": self.0.to_string() }))).into_response();
        if let ServeError::ResourceExhausted { retry_after_ms, .. } = &self.0 {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

type HttpResult<T> = Result<T, HttpError>;

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    max_body_bytes: usize,
    /// `None`: the job endpoints answer 501.
    jobs: Option<Arc<sluice_jobs::Jobs>>,
}

/// The router of the inference port.
pub fn router(engine: Arc<Engine>, max_body_bytes: usize, jobs: Option<Arc<sluice_jobs::Jobs>>) -> Router {
    let state = AppState { engine, max_body_bytes, jobs };
    let router = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_v))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_v))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config_v))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_stats_v))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/models/{model}/generate", post(generate::generate))
        .route("/v2/models/{model}/versions/{version}/generate", post(generate::generate_v))
        .route("/v2/models/{model}/generate_stream", post(generate::generate_stream))
        .route("/v2/models/{model}/versions/{version}/generate_stream", post(generate::generate_stream_v))
        .route("/v1/models", get(openai::models))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v2/models/{model}/jobs", post(jobs::submit))
        .route("/v2/models/{model}/versions/{version}/jobs", post(jobs::submit_v))
        .route("/v2/jobs", get(jobs::list_jobs))
        .route("/v2/jobs/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/v2/endpoints", get(endpoints_list))
        .route("/v2/endpoints/{name}", get(endpoint_status))
        .route("/v2/endpoints/{name}/rollout", get(rollout::status))
        .route("/v2/endpoints/{name}/rollout/{action}", post(rollout::command))
        .route("/v2/endpoints/{name}/experiment", get(experiment::report))
        .route("/v2/endpoints/{name}/experiment/stop", post(experiment::stop))
        .route("/v2/feedback", post(experiment::feedback))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(max_body_bytes, refuse_declared_oversize))
        .with_state(state);
    crate::request_log::instrument(router)
}

/// A request whose `Content-Length` declares more than the limit gets 413 before any of its
/// body is read (as nginx does): reading first would leave a client that declared a terabyte
/// and sent two bytes waiting until it gives up. Bodies without a declared length are still
/// cut off by `DefaultBodyLimit` as they arrive.
async fn refuse_declared_oversize(
    State(max_body_bytes): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max_body_bytes as u64 => {
            let mut resp = HttpError(ServeError::PayloadTooLarge(format!(
                "request body of {n} bytes (Content-Length) exceeds the limit of {max_body_bytes} bytes \
                 (--http-max-body-size)"
            )))
            .into_response();
            // The unread body must not be taken for the next request on this connection.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        _ => next.run(req).await,
    }
}

async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError(ServeError::NotFound(format!("no endpoint at {}", uri.path())))
}

async fn live(State(s): State<AppState>) -> Response {
    (StatusCode::OK, Json(json!({ "live": s.engine.live() }))).into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    let ready = s.engine.ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata(State(s): State<AppState>) -> Response {
    Json(s.engine.metadata()).into_response()
}

fn metadata(s: &AppState, model: &str, version: Option<&str>) -> HttpResult<Response> {
    Ok(Json(s.engine.resolve(model, version)?.metadata()).into_response())
}

async fn model_metadata(State(s): State<AppState>, Path(model): Path<String>) -> HttpResult<Response> {
    metadata(&s, &model, None)
}

async fn model_metadata_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> HttpResult<Response> {
    metadata(&s, &model, Some(&version))
}

/// 200 when ready, 503 for a model that exists but is not ready (loading, unloaded, failed),
/// and Triton's 400 with an error for a name no repository holds: a client reads 5xx as "the
/// server is broken".
fn readiness(s: &AppState, model: &str, version: Option<&str>) -> Response {
    if s.engine.resolve(model, version).is_ok_and(|e| e.ready()) {
        return (StatusCode::OK, Json(json!({ "name": model, "ready": true }))).into_response();
    }
    if !s.engine.model_known(model) {
        let e = ServeError::model_not_found(model, version);
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": e.to_string() }))).into_response();
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "name": model, "ready": false }))).into_response()
}

async fn model_ready(State(s): State<AppState>, Path(model): Path<String>) -> Response {
    readiness(&s, &model, None)
}

async fn model_ready_v(State(s): State<AppState>, Path((model, version)): Path<(String, String)>) -> Response {
    readiness(&s, &model, Some(&version))
}

fn config(s: &AppState, model: &str, version: Option<&str>) -> HttpResult<Response> {
    Ok(Json(&*s.engine.resolve(model, version)?.config()).into_response())
}

async fn model_config(State(s): State<AppState>, Path(model): Path<String>) -> HttpResult<Response> {
    config(&s, &model, None)
}

async fn model_config_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> HttpResult<Response> {
    config(&s, &model, Some(&version))
}

fn stats(s: &AppState, model: Option<&str>, version: Option<&str>) -> HttpResult<Response> {
    Ok(Json(json!({ "model_stats": s.engine.statistics(model, version)? })).into_response())
}

async fn all_stats(State(s): State<AppState>) -> HttpResult<Response> {
    stats(&s, None, None)
}

/// Every endpoint declared in the repositories: its report, or why it is not served.
async fn endpoints_list(State(s): State<AppState>) -> Response {
    let list: Vec<serde_json::Value> = s
        .engine
        .endpoint_reports()
        .into_iter()
        .map(|(name, r)| match r {
            Ok(report) => report,
            Err(why) => serde_json::json!({ "name": name, "ready": false, "reason": why }),
        })
        .collect();
    axum::Json(list).into_response()
}

/// One endpoint's report: kind, targets, what it counted (for a shadow: agreement, errors,
/// drops and latencies of each side).
async fn endpoint_status(State(s): State<AppState>, Path(name): Path<String>) -> HttpResult<Response> {
    match s.engine.endpoint_reports().into_iter().find(|(n, _)| *n == name) {
        Some((_, Ok(report))) => Ok(axum::Json(report).into_response()),
        Some((_, Err(why))) => {
            Ok(axum::Json(serde_json::json!({ "name": name, "ready": false, "reason": why })).into_response())
        }
        None => Err(ServeError::NotFound(format!("no endpoint named '{name}'")).into()),
    }
}

async fn model_stats(State(s): State<AppState>, Path(model): Path<String>) -> HttpResult<Response> {
    stats(&s, Some(&model), None)
}

async fn model_stats_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> HttpResult<Response> {
    stats(&s, Some(&model), Some(&version))
}

fn body_or_error(s: &AppState, body: Result<Bytes, BytesRejection>) -> HttpResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError(ServeError::PayloadTooLarge(format!(
                "request body exceeds the limit of {} bytes (--http-max-body-size)",
                s.max_body_bytes
            )))
        } else {
            HttpError(ServeError::invalid(format!("cannot read the request body: {r}")))
        }
    })
}

async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    run_infer(&s, &model, None, headers, body).await
}

async fn infer_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    run_infer(&s, &model, Some(&version), headers, body).await
}

const HEADER_LEN: &str = "inference-header-content-length";

/// Bodies larger than this are decoded on a blocking thread.
const BLOCKING_DECODE_BYTES: usize = 64 * 1024;

fn header_len(headers: &HeaderMap) -> HttpResult<Option<usize>> {
    match headers.get(HEADER_LEN) {
        None => Ok(None),
        Some(v) => {
            Ok(Some(v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
                ServeError::invalid(format!("{HEADER_LEN} must be a non-negative integer, got {v:?}"))
            })?))
        }
    }
}

async fn run_infer(
    s: &AppState,
    model: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    let body = body_or_error(s, body)?;
    let header_len = header_len(&headers)?;
    let endpoint = s.engine.resolve(model, version)?;
    let (req, enc) = if header_len == Some(0) {
        (decode_raw_request(model, version, &endpoint.config(), body)?, OutputEncoding { all_binary: true })
    } else if body.len() > BLOCKING_DECODE_BYTES {
        // Parsing megabytes of JSON takes milliseconds: not on a tokio worker.
        let (model, version) = (model.to_string(), version.map(str::to_string));
        tokio::task::spawn_blocking(move || decode_request(&model, version.as_deref(), body, header_len))
            .await
            .map_err(|e| ServeError::Internal(format!("the request decoding task failed: {e}")))??
    } else {
        decode_request(model, version, body, header_len)?
    };
    let ctx = context(headers, req.id.as_deref());
    let requested = req.outputs.clone();
    let answer = endpoint.infer(&ctx, req).await?;
    let (body, json_len) = encode_response(&answer.response, &requested, &enc);
    let mut resp = Response::new(axum::body::Body::from(body));
    let h = resp.headers_mut();
    match json_len {
        Some(n) => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(HEADER_LEN, HeaderValue::from(n));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    // What answered: the model behind an endpoint, else the model asked for.
    let params = &answer.response.parameters;
    let (answered, answered_version) = match (params.get("sluice_model"), params.get("sluice_model_version")) {
        (Some(serde_json::Value::String(m)), v) => (m.as_str(), v.and_then(|v| v.as_str()).unwrap_or_default()),
        _ => (answer.response.model_name.as_str(), answer.response.model_version.as_str()),
    };
    if let Ok(v) = HeaderValue::from_str(answered) {
        h.insert("sluice-model", v);
    }
    if let Ok(v) = HeaderValue::from_str(answered_version) {
        h.insert("sluice-model-version", v);
    }
    h.insert("sluice-queue-time-us", HeaderValue::from(answer.timings.queue_ns / 1000));
    let compute = answer.timings.compute_input_ns + answer.timings.compute_infer_ns + answer.timings.compute_output_ns;
    h.insert("sluice-compute-time-us", HeaderValue::from(compute / 1000));
    Ok(resp)
}

/// The request context of an HTTP request: its headers, and as its id the V2 body's `id` when
/// there is one, else `x-request-id` (which the request-id layer sets when the client did not).
/// The V2 id is recorded on the request's log span too.
pub(crate) fn context(headers: HeaderMap, v2_id: Option<&str>) -> sluice_types::RequestContext {
    crate::request_log::record_v2_id(v2_id);
    let header_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut ctx = sluice_types::RequestContext::new(header_id).with_headers(headers);
    ctx.adopt_v2_id(v2_id);
    ctx
}

fn json_body(body: &Bytes) -> HttpResult<Value> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| HttpError(ServeError::invalid(format!("failed to parse the request JSON: {e}"))))
}

async fn repository_index(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> HttpResult<Response> {
    let body = json_body(&body_or_error(&s, body)?)?;
    let ready = body.get("ready").and_then(Value::as_bool).unwrap_or(false);
    Ok(Json(s.engine.repository_index(ready)).into_response())
}

async fn load_model(
    State(s): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    let body = json_body(&body_or_error(&s, body)?)?;
    let mut ov = LoadOverride::default();
    if let Some(params) = body.get("parameters").and_then(Value::as_object) {
        for (k, v) in params {
            if k == "config" {
                ov.config_json = Some(match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            } else if let Some(path) = k.strip_prefix("file:") {
                let b64 = v
                    .as_str()
                    .ok_or_else(|| ServeError::invalid(format!("parameter '{k}' must be a base64 string")))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| ServeError::invalid(format!("parameter '{k}' is not valid base64: {e}")))?;
                ov.files.insert(path.to_string(), bytes);
            }
        }
    }
    let ov = (ov.config_json.is_some() || !ov.files.is_empty()).then_some(ov);
    s.engine.load_model(&model, ov).await?;
    Ok(StatusCode::OK.into_response())
}

async fn unload_model(
    State(s): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    let body = json_body(&body_or_error(&s, body)?)?;
    let dependents = body.pointer("/parameters/unload_dependents").and_then(Value::as_bool).unwrap_or(false);
    s.engine.unload_model(&model, dependents).await?;
    Ok(StatusCode::OK.into_response())
}
