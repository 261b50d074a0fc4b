//! The OpenAI-compatible API over the generative models: `/v1/models`, `/v1/completions` and
//! `/v1/chat/completions`, whole or streamed (`stream: true`: SSE chunks, then `data: [DONE]`;
//! `stream_options.include_usage` adds a last chunk with the token counts). Errors have
//! OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so SDKs raise them as
//! they would for OpenAI. The model name is the repository's model name.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sluice_llm::{params_from_json, Event, Finish, Message, SamplingParams};
use sluice_types::ServeError;

use super::generate::{one_string, sse_events};
use super::{status_of, AppState};
use crate::generate::Prompt;

/// An error in OpenAI's shape.
pub(super) struct OpenAiError(ServeError);

impl From<ServeError> for OpenAiError {
    fn from(e: ServeError) -> Self {
        OpenAiError(e)
    }
}

fn error_body(e: &ServeError) -> Value {
    let kind = match status_of(e).as_u16() {
        400 | 404 | 409 | 413 => "invalid_request_error",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    json!({ "error": { "message": e.to_string(), "type": kind, "param": null, "code": null } })
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        crate::request_log::log_error(&self.0);
        let mut resp = (status, Json(error_body(&self.0))).into_response();
        if let ServeError::ResourceExhausted { retry_after_ms, .. } = &self.0 {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

type OpenAiResult = Result<Response, OpenAiError>;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) async fn models(State(s): State<AppState>) -> Response {
    let created = now();
    let data: Vec<Value> = s
        .engine
        .generative_models()
        .into_iter()
        .map(|(name, _)| json!({ "id": name, "object": "model", "created": created, "owned_by": "sluice" }))
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// The fields both endpoints share.
struct Common {
    model: String,
    stream: bool,
    include_usage: bool,
    params: SamplingParams,
    explicit_max: bool,
}

fn common(body: &serde_json::Map<String, Value>, default_max: usize) -> Result<Common, ServeError> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ServeError::invalid("'model' is required: the name of a generative model (see /v1/models)")),
    };
    if let Some(n) = body.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            return Err(ServeError::invalid(format!("'n' must be 1 (one answer per request), got {n}")));
        }
    }
    if body.get("echo").and_then(Value::as_bool) == Some(true) {
        return Err(ServeError::Unsupported("'echo' is not supported".into()));
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(ServeError::invalid(format!("'stream' must be true or false, got {v}"))),
    };
    let include_usage =
        body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let explicit_max =
        ["max_tokens", "max_completion_tokens"].iter().any(|k| body.get(*k).is_some_and(|v| !v.is_null()));
    let params = params_from_json(body, SamplingParams { max_tokens: default_max, ..Default::default() })?;
    Ok(Common { model, stream, include_usage, params, explicit_max })
}

fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ServeError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ServeError::invalid("request body must be a JSON object")),
        Err(e) => Err(ServeError::invalid(format!("request body is not valid JSON: {e}"))),
    }
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// What differs between completions and chat completions.
#[derive(Clone, Copy)]
enum Kind {
    Completion,
    Chat,
}

impl Kind {
    fn object(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn choice(self, text: Option<&str>, finish: Option<&str>, first: bool) -> Value {
        match self {
            Kind::Completion => {
                json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish })
            }
            Kind::Chat => {
                let delta = match (text, first) {
                    (_, true) => json!({ "role": "assistant", "content": "" }),
                    (Some(t), false) => json!({ "content": t }),
                    (None, false) => json!({}),
                };
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
            }
        }
    }

    fn whole(self, text: String, finish: &str) -> Value {
        match self {
            Kind::Completion => json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }),
            Kind::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": finish,
            }),
        }
    }
}

async fn answer(s: AppState, kind: Kind, c: Common, prompt: Prompt) -> OpenAiResult {
    let stream = s.engine.generate(&c.model, None, prompt, c.params, c.explicit_max)?;
    let (id, created, model) = (new_id(if matches!(kind, Kind::Chat) { "chatcmpl" } else { "cmpl" }), now(), c.model);
    if !c.stream {
        let (text, f) = stream.collect().await?;
        return Ok(Json(json!({
            "id": id,
            "object": kind.object(false),
            "created": created,
            "model": model,
            "choices": [kind.whole(text, f.reason.as_str())],
            "usage": usage(&f),
        }))
        .into_response());
    }
    let include_usage = c.include_usage;
    let chunk = move |choices: Vec<Value>, usage: Option<Value>| {
        let mut v =
            json!({ "id": id, "object": kind.object(true), "created": created, "model": model, "choices": choices });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    let mut first = matches!(kind, Kind::Chat);
    let events = sse_events(stream, move |_, e| match e {
        Event::Text(t) => {
            let mut out = Vec::new();
            if first {
                out.push(chunk(vec![kind.choice(None, None, true)], None));
                first = false;
            }
            out.push(chunk(vec![kind.choice(Some(t), None, false)], None));
            out
        }
        Event::Done(f) => {
            let mut out = vec![chunk(vec![kind.choice(None, Some(f.reason.as_str()), false)], None)];
            if include_usage {
                out.push(chunk(vec![], Some(usage(f))));
            }
            out.push(SseEvent::default().data("[DONE]"));
            out
        }
        Event::Error(msg) => vec![
            SseEvent::default().data(error_body(&ServeError::Backend(msg.clone())).to_string()),
            SseEvent::default().data("[DONE]"),
        ],
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// OpenAI's default for the legacy completions endpoint.
const COMPLETIONS_DEFAULT_MAX: usize = 16;

pub(super) async fn completions(State(s): State<AppState>, body: Bytes) -> OpenAiResult {
    let body = object(&body)?;
    let c = common(&body, COMPLETIONS_DEFAULT_MAX)?;
    let c = Common { explicit_max: true, ..c };
    let prompt = match body.get("prompt") {
        Some(Value::Array(a)) if a.len() != 1 => {
            return Err(ServeError::invalid("'prompt' must be one string (batches of prompts are not supported)").into())
        }
        Some(v) => one_string(v),
        None => None,
    }
    .ok_or_else(|| ServeError::invalid("'prompt' is required and must be a string"))?;
    answer(s, Kind::Completion, c, Prompt::Text(prompt)).await
}

pub(super) async fn chat_completions(State(s): State<AppState>, body: Bytes) -> OpenAiResult {
    let body = object(&body)?;
    // The default (when max_tokens is absent) is resolved from the prompt's length.
    let c = common(&body, 1)?;
    let Some(Value::Array(raw)) = body.get("messages") else {
        return Err(ServeError::invalid("'messages' is required: a list of {role, content}").into());
    };
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let content = match m.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            // Content parts: the text parts, joined.
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => Some(t.to_string()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|v| v.concat()),
            Some(Value::Null) | None => Some(String::new()),
            _ => None,
        };
        match (role, content) {
            (Some(r), Some(c)) => messages.push(Message { role: r.to_string(), content: c }),
            _ => {
                return Err(ServeError::invalid(format!(
                    "messages[{i}] must have a string 'role' and a text 'content' (a string or text parts)"
                ))
                .into())
            }
        }
    }
    answer(s, Kind::Chat, c, Prompt::Chat(messages)).await
}
