//! The OpenAI-compatible API over the generative models: `/v1/models`, `/v1/completions` (in
//! [`completions`](super::completions)) and `/v1/chat/completions`, whole or streamed
//! (`stream: true`: SSE chunks, then `data: [DONE]`; `stream_options.include_usage` adds a last
//! chunk with the token counts). Errors have OpenAI's shape, `{"error": {"message", "type",
//! "param", "code"}}`, so SDKs raise them as they would for OpenAI. The model name is the
//! repository's model name.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sluice_llm::detok::{Plain, Special};
use sluice_types::generation::{
    collect, params_from_json, Event, Finish, GenerateRequest, Message, Prompt, SamplingParams, TokenLogprob,
    TokenStream,
};
use sluice_types::{RequestContext, ServeError};

use super::generate::sse_events;
use super::logprobs::LogprobText;
use super::{status_of, AppState};

/// An error in OpenAI's shape.
pub(super) struct OpenAiError(ServeError);

impl From<ServeError> for OpenAiError {
    fn from(e: ServeError) -> Self {
        OpenAiError(e)
    }
}

pub(super) fn error_body(e: &ServeError) -> Value {
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

pub(super) type OpenAiResult = Result<Response, OpenAiError>;

pub(super) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) async fn models(State(s): State<AppState>) -> Response {
    let created = now();
    let data: Vec<Value> = s
        .engine
        .generative_models()
        .into_iter()
        .map(|name| json!({ "id": name, "object": "model", "created": created, "owned_by": "sluice" }))
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// The fields both endpoints share.
pub(super) struct Common {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub params: SamplingParams,
    pub explicit_max: bool,
}

/// `defaults` holds what the endpoint decided before reading the sampling fields.
pub(super) fn common(body: &serde_json::Map<String, Value>, defaults: SamplingParams) -> Result<Common, ServeError> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ServeError::invalid("'model' is required: the name of a generative model (see /v1/models)")),
    };
    if let Some(n) = body.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            return Err(ServeError::invalid(format!("'n' must be 1 (one answer per request), got {n}")));
        }
    }
    let stream = flag(body, "stream")?;
    let include_usage =
        body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let explicit_max =
        ["max_tokens", "max_completion_tokens"].iter().any(|k| body.get(*k).is_some_and(|v| !v.is_null()));
    let params = params_from_json(body, defaults)?;
    Ok(Common { model, stream, include_usage, params, explicit_max })
}

/// A boolean field, false when absent.
pub(super) fn flag(body: &serde_json::Map<String, Value>, key: &str) -> Result<bool, ServeError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ServeError::invalid(format!("'{key}' must be true or false, got {v}"))),
    }
}

/// A count field within `0..=max`, `None` when absent.
pub(super) fn count(body: &serde_json::Map<String, Value>, key: &str, max: usize) -> Result<Option<usize>, ServeError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n as usize <= max => Ok(Some(n as usize)),
            _ => Err(ServeError::invalid(format!("'{key}' must be an integer from 0 to {max}, got {v}"))),
        },
    }
}

pub(super) fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ServeError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ServeError::invalid("request body must be a JSON object")),
        Err(e) => Err(ServeError::invalid(format!("request body is not valid JSON: {e}"))),
    }
}

pub(super) fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn finish_usage(f: &Finish) -> Value {
    usage(f.prompt_tokens, f.completion_tokens)
}

pub(super) fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// The chat API's most alternatives per token.
const CHAT_MAX_TOP_LOGPROBS: usize = 20;

pub(super) async fn chat_completions(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> OpenAiResult {
    let body = object(&body)?;
    if flag(&body, "echo")? {
        return Err(ServeError::invalid("'echo' is a field of /v1/completions, not of chat completions").into());
    }
    // Chat's `logprobs` is a switch; `top_logprobs` says how many alternatives.
    let top = count(&body, "top_logprobs", CHAT_MAX_TOP_LOGPROBS)?;
    let logprobs = flag(&body, "logprobs")?;
    if top.is_some() && !logprobs {
        return Err(ServeError::invalid("'top_logprobs' needs 'logprobs': true").into());
    }
    // The default (when max_tokens is absent) is resolved from the prompt's length.
    let defaults = SamplingParams { max_tokens: 1, logprobs: logprobs.then(|| top.unwrap_or(0)), ..Default::default() };
    let c = common(&body, defaults)?;
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
    chat_answer(s, super::context(headers, None), c, messages).await
}

async fn chat_answer(s: AppState, ctx: RequestContext, c: Common, messages: Vec<Message>) -> OpenAiResult {
    let with_logprobs = c.params.logprobs.is_some();
    let request = GenerateRequest { prompt: Prompt::Chat(messages), params: c.params, explicit_max: c.explicit_max };
    let mut stream = s.engine.resolve(&c.model, None)?.generate(&ctx, request).await?;
    let (id, created, model) = (new_id("chatcmpl"), now(), c.model);
    if !c.stream {
        let a = collect(&mut *stream).await?;
        let logprobs = with_logprobs.then(|| {
            let v = stream.vocabulary();
            json!({ "content": LogprobText::default().chat(&Plain(&*v), &Special(&*v), &a.logprobs) })
        });
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": a.text },
                "logprobs": logprobs,
                "finish_reason": a.finish.reason.as_str(),
            }],
            "usage": finish_usage(&a.finish),
        }))
        .into_response());
    }
    let include_usage = c.include_usage;
    let chunk = move |delta: Value, logprobs: Option<Value>, finish: Option<&str>, usage: Option<Value>| {
        let choices = match usage {
            Some(_) => json!([]),
            None => json!([{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }]),
        };
        let mut v = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    // The first chunk carries the role, even when the answer is empty.
    let mut first = true;
    let (mut lt, mut scored) = (LogprobText::default(), Vec::new());
    let events = sse_events(stream, move |stream, e| {
        let mut out = Vec::new();
        if first && matches!(e, Event::Text(_) | Event::Done(_)) {
            out.push(chunk(json!({ "role": "assistant", "content": "" }), None, None, None));
            first = false;
        }
        match e {
            Event::PromptLogprobs(_) => {}
            Event::Logprobs(l) => scored.push(l.clone()),
            Event::Text(t) => {
                let lp = with_logprobs.then(|| chat_logprobs(&mut lt, stream, &mut scored));
                out.push(chunk(json!({ "content": t }), lp, None, None));
            }
            Event::Done(f) => {
                let lp = (!scored.is_empty()).then(|| chat_logprobs(&mut lt, stream, &mut scored));
                out.push(chunk(json!({}), lp, Some(f.reason.as_str()), None));
                if include_usage {
                    out.push(chunk(Value::Null, None, None, Some(finish_usage(f))));
                }
                out.push(SseEvent::default().data("[DONE]"));
            }
            Event::Error(msg) => {
                out.push(SseEvent::default().data(error_body(&ServeError::Backend(msg.clone())).to_string()));
                out.push(SseEvent::default().data("[DONE]"));
            }
        }
        out
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// The chat `logprobs` of the tokens scored since the last chunk.
fn chat_logprobs(lt: &mut LogprobText, stream: &dyn TokenStream, scored: &mut Vec<TokenLogprob>) -> Value {
    let v = stream.vocabulary();
    json!({ "content": lt.chat(&Plain(&*v), &Special(&*v), &std::mem::take(scored)) })
}
