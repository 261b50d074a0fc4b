//! Experiments over HTTP: `POST /v2/feedback` (one outcome, or a list of them),
//! `GET /v2/endpoints/{name}/experiment` (the report) and
//! `POST /v2/endpoints/{name}/experiment/stop` with `{"reason": "…", "arm": "…"}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use sluice_types::{Feedback, ServeError};

use super::{body_or_error, json_body, AppState, HttpResult};

fn experiment_of(s: &AppState, name: &str) -> HttpResult<std::sync::Arc<dyn sluice_types::Endpoint>> {
    let endpoint = s.engine.resolve(name, None)?;
    if endpoint.experiment().is_none() {
        return Err(ServeError::NotFound(format!("'{name}' is not an experiment endpoint")).into());
    }
    Ok(endpoint)
}

pub(super) async fn report(State(s): State<AppState>, Path(name): Path<String>) -> HttpResult<Response> {
    let endpoint = experiment_of(&s, &name)?;
    let report = match endpoint.experiment() {
        Some(x) => x.report().await,
        None => Default::default(),
    };
    Ok(Json(report).into_response())
}

pub(super) async fn stop(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    let body = json_body(&body_or_error(&s, body)?)?;
    let reason = body.get("reason").and_then(Value::as_str).map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err(
            ServeError::invalid("stopping an experiment needs a reason: {\"reason\": \"...\"}".to_string()).into()
        );
    }
    let arm = match body.get("arm") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(other) => return Err(ServeError::invalid(format!("'arm' must be an arm's name, got {other}")).into()),
    };
    let endpoint = experiment_of(&s, &name)?;
    let Some(x) = endpoint.experiment() else {
        return Err(ServeError::NotFound(format!("'{name}' is not an experiment endpoint")).into());
    };
    Ok(Json(x.stop(arm, reason).await?).into_response())
}

/// One outcome, or a list of them (each answered in turn; the first that cannot be taken is the
/// answer, with the ones before it taken).
pub(super) async fn feedback(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> HttpResult<Response> {
    let body = json_body(&body_or_error(&s, body)?)?;
    let read = |v: Value| {
        serde_json::from_value::<Feedback>(v).map_err(|e| {
            ServeError::invalid(format!(
                "feedback is {{\"request_id\" or \"unit\", \"metric\", \"value\", optional \"id\"}}: {e}"
            ))
        })
    };
    match body {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(s.engine.feedback(&read(item)?).await?);
            }
            Ok(Json(Value::Array(out)).into_response())
        }
        one => Ok(Json(s.engine.feedback(&read(one)?).await?).into_response()),
    }
}
