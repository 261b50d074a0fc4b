//! The job endpoints: `POST /v2/models/{m}[/versions/{v}]/jobs`, `GET|DELETE /v2/jobs/{id}`,
//! `GET /v2/jobs?model=&status=&limit=`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_jobs::{JobRecord, JobStatus, Jobs, ListFilter, NewJob, DEFAULT_PRIORITY};
use sluice_types::ServeError;

use super::{body_or_error, decode_request, header_len, AppState, HttpError, HttpResult};

/// Job fields that ride along the V2 request body.
#[derive(Deserialize)]
struct JobOptions {
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

const DEFAULT_TTL_SECONDS: u64 = 3600;
const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
const MAX_PAGE: usize = 1000;

fn jobs(s: &AppState) -> HttpResult<&Jobs> {
    s.jobs.as_deref().ok_or_else(|| HttpError(ServeError::Unsupported("asynchronous jobs are not enabled".into())))
}

fn poll_url(id: &str) -> String {
    format!("/v2/jobs/{id}")
}

/// How long a client should wait before polling again: about the time the job has waited so far,
/// between 0.2 and 5 seconds.
fn retry_after_ms(r: &JobRecord) -> u64 {
    let age = sluice_jobs::record::now_ms().saturating_sub(r.created_ms);
    age.clamp(200, 5000)
}

fn job_response(status: StatusCode, r: &JobRecord) -> Response {
    let mut body = r.to_api();
    let pending = !r.status.is_final();
    let wait = retry_after_ms(r);
    if pending {
        body["retry_after_ms"] = json!(wait);
    }
    let mut resp = (status, Json(body)).into_response();
    if pending {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.div_ceil(1000)));
    }
    resp
}

pub(super) async fn submit(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    submit_job(&s, &model, None, &headers, body).await
}

pub(super) async fn submit_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    submit_job(&s, &model, Some(&version), &headers, body).await
}

async fn submit_job(
    s: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    let jobs = jobs(s)?;
    let body = body_or_error(s, body)?;
    let header_len = header_len(headers)?;
    if header_len == Some(0) {
        return Err(HttpError(ServeError::invalid(
            "a job needs a V2 JSON header (Inference-Header-Content-Length > 0): raw binary bodies cannot carry job options",
        )));
    }
    let json_len = header_len.unwrap_or(body.len()).min(body.len());
    let header = body.slice(..json_len);
    let (request, _) = decode_request(model, version, body, header_len)?;
    let context = super::context(headers.clone(), request.id.as_deref());
    // The JSON is known to parse by now: what fails here is a job field of the wrong type.
    let opts: JobOptions = serde_json::from_slice(&header)
        .map_err(|e| ServeError::invalid(format!("job options (callback_url, priority, ttl_seconds): {e}")))?;
    // An unknown model or inputs that do not fit are refused now, not when a worker gets to
    // them; a model that is loading is accepted unchecked.
    match s.engine.resolve(&request.model, request.version.as_deref()) {
        Ok(endpoint) => endpoint.check(&request)?,
        Err(ServeError::Unavailable(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let ttl_seconds = opts.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
        return Err(HttpError(ServeError::invalid(format!(
            "ttl_seconds must be between 1 and {MAX_TTL_SECONDS}, got {ttl_seconds}"
        ))));
    }
    let priority = opts.priority.unwrap_or(DEFAULT_PRIORITY);
    if priority == 0 {
        return Err(HttpError(ServeError::invalid("priority must be 1 (most urgent) or more, got 0")));
    }
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| ServeError::invalid("Idempotency-Key must be 1 to 255 visible ASCII characters"))?
                .to_string(),
        ),
    };
    let (record, new) = jobs
        .submit(NewJob { request, context, priority, ttl_seconds, callback_url: opts.callback_url, idempotency_key })
        .await?;
    let url = poll_url(&record.job_id);
    let body = json!({ "job_id": record.job_id, "status": record.status.as_str(), "poll_url": url });
    let status = if new { StatusCode::ACCEPTED } else { StatusCode::OK };
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub(super) async fn get_job(State(s): State<AppState>, Path(id): Path<String>) -> HttpResult<Response> {
    let r = jobs(&s)?.get(&id).await?;
    Ok(job_response(StatusCode::OK, &r))
}

pub(super) async fn cancel_job(State(s): State<AppState>, Path(id): Path<String>) -> HttpResult<Response> {
    let r = jobs(&s)?.cancel(&id).await?;
    Ok(job_response(StatusCode::OK, &r))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    model: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list_jobs(State(s): State<AppState>, Query(q): Query<ListQuery>) -> HttpResult<Response> {
    let status = match q.status.as_deref() {
        None => None,
        Some(st) => Some(JobStatus::parse(st).ok_or_else(|| {
            ServeError::invalid(format!(
                "status must be one of queued, processing, completed, failed, cancelled; got '{st}'"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let found = jobs(&s)?.list(&ListFilter { model: q.model, status, limit }).await?;
    let items: Vec<Value> = found
        .iter()
        .map(|r| {
            let mut v = r.to_api();
            // A listing is for operators: results can be large.
            if let Some(o) = v.as_object_mut() {
                o.remove("result");
            }
            v
        })
        .collect();
    Ok(Json(json!({ "jobs": items, "limit": limit })).into_response())
}
