//! A rollout's controls: `GET /v2/endpoints/{name}/rollout` (its status) and
//! `POST /v2/endpoints/{name}/rollout/{pause|resume|promote|rollback}` with `{"reason": "…"}`.
//! The endpoint is found by the one resolve step, as for inference; anything but a rollout is
//! 404.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_types::{RolloutAction, ServeError};

use super::{body_or_error, json_body, AppState, HttpResult};

fn rollout_of(s: &AppState, name: &str) -> HttpResult<std::sync::Arc<dyn sluice_types::Endpoint>> {
    let endpoint = s.engine.resolve(name, None)?;
    if endpoint.rollout().is_none() {
        return Err(ServeError::NotFound(format!("'{name}' is not a rollout endpoint")).into());
    }
    Ok(endpoint)
}

pub(super) async fn status(State(s): State<AppState>, Path(name): Path<String>) -> HttpResult<Response> {
    let endpoint = rollout_of(&s, &name)?;
    let status = match endpoint.rollout() {
        Some(r) => r.status().await,
        None => Default::default(),
    };
    Ok(Json(status).into_response())
}

pub(super) async fn command(
    State(s): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult<Response> {
    let body = body_or_error(&s, body)?;
    let Some(action) = RolloutAction::parse(&action) else {
        return Err(ServeError::NotFound(format!(
            "no rollout action '{action}' (expected one of: {})",
            RolloutAction::NAMES.join(", ")
        ))
        .into());
    };
    let body = json_body(&body)?;
    let reason = body.get("reason").and_then(|r| r.as_str()).map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err(ServeError::invalid(format!(
            "a rollout {} needs a reason, kept in its history: {{\"reason\": \"...\"}}",
            action.as_str()
        ))
        .into());
    }
    let endpoint = rollout_of(&s, &name)?;
    let Some(control) = endpoint.rollout() else {
        return Err(ServeError::NotFound(format!("'{name}' is not a rollout endpoint")).into());
    };
    Ok(Json(control.command(action, reason).await?).into_response())
}
