//! Triton's generate extension: `POST /v2/models/{m}[/versions/{v}]/generate` answers the whole
//! text, `.../generate_stream` answers Server-Sent Events, one per piece of text and a last one
//! with empty `text_output` when the answer ends. The body's
//! `text_input` is the prompt; sampling parameters come at the top level or in `parameters`
//! (`max_tokens` default 16, as Triton's vLLM backend).

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use sluice_types::generation::{
    collect, params_from_json, Event, GenerateRequest, Prompt, SamplingParams, TokenStream,
};
use sluice_types::ServeError;

use super::{AppState, HttpResult};

use sluice_llm::backend::TRITON_DEFAULT_MAX_TOKENS as DEFAULT_MAX_TOKENS;

fn parse(body: &[u8]) -> Result<(String, SamplingParams), ServeError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ServeError::invalid(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(ServeError::invalid("request body must be a JSON object with 'text_input'"));
    };
    let text = match obj.remove("text_input") {
        Some(v) => one_string(&v)
            .ok_or_else(|| ServeError::invalid(format!("input 'text_input': expected a string, got {v}")))?,
        None => return Err(ServeError::invalid("input 'text_input' is required")),
    };
    let nested = match obj.remove("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(ServeError::invalid(format!("'parameters' must be an object, got {other}"))),
    };
    let defaults = SamplingParams { max_tokens: DEFAULT_MAX_TOKENS, ..Default::default() };
    let params = params_from_json(&obj, defaults)?;
    Ok((text, params_from_json(&nested, params)?))
}

/// A prompt: a string, or a list holding one string (as some clients send a single prompt).
pub(super) fn one_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) if a.len() == 1 => a[0].as_str().map(str::to_string),
        _ => None,
    }
}

async fn start(
    s: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Box<dyn TokenStream>, ServeError> {
    let endpoint = s.engine.resolve(model, version)?;
    let (text, params) = parse(body)?;
    let ctx = super::context(headers.clone(), None);
    endpoint.generate(&ctx, GenerateRequest { prompt: Prompt::Text(text), params, explicit_max: true }).await
}

async fn whole(
    s: AppState,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<Response> {
    let mut stream = start(&s, &model, version.as_deref(), &headers, &body).await?;
    let (name, v) = names(&model, &*stream);
    let answered = answered_by(&*stream);
    let text = collect(&mut *stream).await?.text;
    let mut resp = Json(json!({ "model_name": name, "model_version": v, "text_output": text })).into_response();
    resp.headers_mut().extend(answered);
    Ok(resp)
}

/// The name and version a generation answers under: the name asked for (an endpoint's, when it
/// is one: then without a version, as its infer answers are).
fn names(asked: &str, stream: &dyn TokenStream) -> (String, String) {
    let version = if stream.model() == asked { stream.version() } else { String::new() };
    (asked.to_string(), version)
}

/// `sluice-model` / `sluice-model-version`: the model that answers, behind an endpoint too.
fn answered_by(stream: &dyn TokenStream) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    if let Ok(v) = axum::http::HeaderValue::from_str(stream.model()) {
        h.insert("sluice-model", v);
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&stream.version()) {
        h.insert("sluice-model-version", v);
    }
    h
}

/// The events of a generation as SSE; an error after the stream started is an `error` event.
pub(super) fn sse_events<F>(stream: Box<dyn TokenStream>, piece: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnMut(&dyn TokenStream, &Event) -> Vec<SseEvent> + Send + 'static,
{
    futures::stream::unfold((stream, piece), |(mut stream, mut piece)| async move {
        let e = stream.next().await?;
        let events = piece(&*stream, &e);
        Some((events, (stream, piece)))
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)))
}

async fn streamed(
    s: AppState,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<Response> {
    let stream = start(&s, &model, version.as_deref(), &headers, &body).await?;
    let (name, v) = names(&model, &*stream);
    let answered = answered_by(&*stream);
    let piece = move |t: &str| {
        SseEvent::default().data(json!({ "model_name": name, "model_version": v, "text_output": t }).to_string())
    };
    let events = sse_events(stream, move |_, e| match e {
        Event::Text(t) => vec![piece(t)],
        // A last, empty piece: without it a stream whose answer is empty (its first token
        // ends it) would be no events at all, and a client could not tell a normal end from a
        // dropped connection. Triton's vLLM backend sends its final response the same way.
        Event::Done(_) => vec![piece("")],
        Event::PromptLogprobs(_) | Event::Logprobs(_) => vec![],
        Event::Error(msg) => vec![SseEvent::default().event("error").data(json!({ "error": msg }).to_string())],
    });
    let mut resp = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    resp.headers_mut().extend(answered);
    Ok(resp)
}

pub(super) async fn generate(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<Response> {
    whole(s, model, None, headers, body).await
}

pub(super) async fn generate_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<Response> {
    whole(s, model, Some(version), headers, body).await
}

pub(super) async fn generate_stream(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<Response> {
    streamed(s, model, None, headers, body).await
}

pub(super) async fn generate_stream_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResult<Response> {
    streamed(s, model, Some(version), headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_nested_win_over_top_level() {
        let (t, p) =
            parse(br#"{"text_input":"hi","max_tokens":5,"parameters":{"max_tokens":7,"temperature":0}}"#).unwrap();
        assert_eq!((t.as_str(), p.max_tokens, p.temperature), ("hi", 7, 0.0));
        let (_, p) = parse(br#"{"text_input":"hi"}"#).unwrap();
        assert_eq!(p.max_tokens, DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert!(parse(b"{}").unwrap_err().to_string().contains("text_input"));
        assert!(parse(br#"{"text_input":3}"#).unwrap_err().to_string().contains("text_input"));
        let e = parse(br#"{"text_input":"x","parameters":{"temperature":"hot"}}"#).unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
    }
}
