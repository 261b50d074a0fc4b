//! `/v1/completions`, OpenAI's legacy Completions API, as evaluation harnesses use it:
//!
//! - `prompt`: a string, a list of token ids, or a batch (a list of strings or of token-id
//!   lists), one choice per prompt with its `index`;
//! - `echo: true` puts the prompt before the answer;
//! - `logprobs: N` (0 to 5) scores each token under the model's own distribution (before
//!   temperature and top-p) with its N most likely alternatives; with `echo` the prompt's
//!   tokens too, the first one `null` (nothing predicts it);
//! - `max_tokens: 0` with `echo` scores the prompt only: what lm-evaluation-harness's
//!   `local-completions` asks for a log-likelihood (it also sends `max_tokens: 1` and drops the
//!   last token's score).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use sluice_llm::detok::{Decode, Plain, Special};
use sluice_types::generation::{
    collect, Event, GenerateRequest, Prompt, SamplingParams, TokenLogprob, TokenStream, Vocabulary,
};
use sluice_types::ServeError;

use super::logprobs::{CompletionLogprobs, LogprobText};
use super::openai::{common, count, error_body, flag, new_id, now, object, usage, OpenAiResult};
use super::AppState;

/// OpenAI's default for the legacy completions endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;
/// OpenAI's limit for the legacy endpoint's `logprobs`.
const MAX_LOGPROBS: usize = 5;

/// The prompts of a request, in order.
fn prompts(v: Option<&Value>) -> Result<Vec<Prompt>, ServeError> {
    const WANT: &str = "'prompt' must be a string, a list of token ids, or a list of either";
    let ids = |a: &[Value], at: &str| -> Result<Vec<u32>, ServeError> {
        a.iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    ServeError::invalid(format!("'prompt'{at}[{i}] must be a token id (an integer >= 0), got {t}"))
                })
            })
            .collect()
    };
    let one = |v: &Value, at: &str| -> Result<Prompt, ServeError> {
        match v {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => Ok(Prompt::Tokens(ids(a, at)?)),
            _ => Err(ServeError::invalid(format!("{WANT}; 'prompt'{at} is {v}"))),
        }
    };
    match v {
        None | Some(Value::Null) => Err(ServeError::invalid(format!("'prompt' is required: {WANT}"))),
        Some(Value::Array(a)) if a.is_empty() => Err(ServeError::invalid("'prompt' must not be an empty list")),
        // A flat list of numbers is one tokenized prompt; otherwise a list is a batch.
        Some(Value::Array(a)) if a.iter().any(Value::is_number) => Ok(vec![one(&Value::Array(a.clone()), "")?]),
        Some(Value::Array(a)) => a.iter().enumerate().map(|(i, p)| one(p, &format!("[{i}]"))).collect(),
        Some(v) => Ok(vec![one(v, "")?]),
    }
}

/// The sampling parameters of a request, with what `echo` and `logprobs` ask of the engine.
fn params(body: &Map<String, Value>) -> Result<(super::openai::Common, bool, Option<usize>), ServeError> {
    let echo = flag(body, "echo")?;
    if body.get("logprobs").is_some_and(Value::is_boolean) {
        return Err(ServeError::invalid(format!(
            "'logprobs' must be an integer from 0 to {MAX_LOGPROBS} on /v1/completions (true/false is the chat API's)"
        )));
    }
    let logprobs = count(body, "logprobs", MAX_LOGPROBS)?;
    // Scoring the prompt is what allows max_tokens 0; whether it is needed is settled once
    // max_tokens is read.
    let defaults =
        SamplingParams { max_tokens: DEFAULT_MAX_TOKENS, prompt_logprobs: echo.then_some(0), ..Default::default() };
    let mut c = common(body, defaults)?;
    c.params.logprobs = logprobs;
    c.params.prompt_logprobs = match (echo, logprobs) {
        (true, Some(n)) => Some(n),
        (true, None) if c.params.max_tokens == 0 => Some(0),
        _ => None,
    };
    c.explicit_max = true;
    Ok((c, echo, logprobs))
}

/// What a choice needs besides its events: its index, its prompt's text for `echo`, and the
/// state that turns its scored tokens into text.
struct Choice {
    index: usize,
    vocabulary: Arc<dyn Vocabulary>,
    first_token: u32,
    echo: Option<String>,
    logprobs: bool,
    text: LogprobText,
    /// Generated tokens scored since the last chunk.
    scored: Vec<TokenLogprob>,
}

impl Choice {
    fn new(index: usize, stream: &dyn TokenStream, original: Option<String>, echo: bool, logprobs: bool) -> Choice {
        let vocabulary = stream.vocabulary();
        // A text prompt echoes as it was sent; token ids as they decode.
        let echo = echo.then(|| original.unwrap_or_else(|| Special(&*vocabulary).decode(stream.prompt())));
        let first_token = stream.prompt().first().copied().unwrap_or_default();
        Choice { index, vocabulary, first_token, echo, logprobs, text: LogprobText::default(), scored: Vec::new() }
    }

    fn prompt_logprobs(&mut self, scores: &[TokenLogprob]) -> CompletionLogprobs {
        self.text.prompt(&Special(&*self.vocabulary), self.first_token, scores)
    }

    fn generated_logprobs(&mut self) -> CompletionLogprobs {
        let v = &*self.vocabulary;
        self.text.generated(&Plain(v), &Special(v), &std::mem::take(&mut self.scored))
    }

    /// The choice's part of a chunk.
    fn part(&self, text: &str, logprobs: Option<Value>, finish: Option<&str>) -> Value {
        json!({ "index": self.index, "text": text, "logprobs": logprobs, "finish_reason": finish })
    }
}

pub(super) async fn completions(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> OpenAiResult {
    let body = object(&body)?;
    let (c, echo, logprobs) = params(&body)?;
    let prompts = prompts(body.get("prompt"))?;
    let endpoint = s.engine.resolve(&c.model, None)?;
    let ctx = super::context(headers, None);
    // Every prompt is queued before any answer is awaited: the engine batches them.
    let mut streams = Vec::with_capacity(prompts.len());
    for (index, p) in prompts.into_iter().enumerate() {
        let original = match &p {
            Prompt::Text(t) => Some(t.clone()),
            _ => None,
        };
        let stream = endpoint
            .generate(&ctx, GenerateRequest { prompt: p, params: c.params.clone(), explicit_max: true })
            .await?;
        let choice = Choice::new(index, &*stream, original, echo, logprobs.is_some());
        streams.push((stream, choice));
    }
    let (id, created, model) = (new_id("cmpl"), now(), c.model);
    if !c.stream {
        let (mut choices, mut prompt_tokens, mut completion_tokens) = (Vec::new(), 0, 0);
        for (mut stream, mut choice) in streams {
            let a = collect(&mut *stream).await?;
            prompt_tokens += a.finish.prompt_tokens;
            completion_tokens += a.finish.completion_tokens;
            let lp = choice.logprobs.then(|| {
                let mut lp = CompletionLogprobs::default();
                if choice.echo.is_some() {
                    lp.append(choice.prompt_logprobs(&a.prompt_logprobs));
                }
                choice.scored = a.logprobs;
                lp.append(choice.generated_logprobs());
                lp.to_json()
            });
            let text = choice.echo.take().unwrap_or_default() + &a.text;
            choices.push(choice.part(&text, lp, Some(a.finish.reason.as_str())));
        }
        return Ok(Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }))
        .into_response());
    }
    let chunk = move |choices: Vec<Value>, usage: Option<Value>| {
        let mut v =
            json!({ "id": id, "object": "text_completion", "created": created, "model": model, "choices": choices });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    Ok(Sse::new(streamed(streams, c.include_usage, chunk)).keep_alive(KeepAlive::default()).into_response())
}

/// The SSE chunks of every choice as their events come, then the usage (when asked) and
/// `[DONE]` once all have ended. An error ends the response (and the other generations).
fn streamed(
    streams: Vec<(Box<dyn TokenStream>, Choice)>,
    include_usage: bool,
    chunk: impl Fn(Vec<Value>, Option<Value>) -> SseEvent + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let mut first = Vec::new();
    let mut choices = Vec::with_capacity(streams.len());
    let mut sources = Vec::with_capacity(streams.len());
    for (i, (stream, mut choice)) in streams.into_iter().enumerate() {
        // An echo goes out at once, or with the prompt's scores when they are asked for.
        if !choice.logprobs {
            if let Some(text) = choice.echo.take() {
                first.push(chunk(vec![choice.part(&text, None, None)], None));
            }
        }
        choices.push(choice);
        sources.push(
            futures::stream::unfold(stream, move |mut s| async move { s.next().await.map(|e| ((i, e), s)) }).boxed(),
        );
    }
    // `None` after the last event of every choice: time for the usage and `[DONE]`.
    let merged = futures::stream::select_all(sources).map(Some).chain(futures::stream::once(async { None }));
    let state = (choices, (0, 0), false);
    let events = merged.scan(state, move |(choices, totals, failed), item| {
        let out = match item {
            _ if *failed => None,
            None => {
                let mut out = Vec::new();
                if include_usage {
                    out.push(chunk(vec![], Some(usage(totals.0, totals.1))));
                }
                out.push(SseEvent::default().data("[DONE]"));
                Some(out)
            }
            Some((i, e)) => {
                let choice = &mut choices[i];
                Some(match e {
                    Event::PromptLogprobs(p) if choice.logprobs => {
                        let lp = choice.prompt_logprobs(&p).to_json();
                        let text = choice.echo.take().unwrap_or_default();
                        vec![chunk(vec![choice.part(&text, Some(lp), None)], None)]
                    }
                    Event::PromptLogprobs(_) => vec![],
                    Event::Logprobs(l) => {
                        choice.scored.push(l);
                        vec![]
                    }
                    Event::Text(t) => {
                        let lp = choice.logprobs.then(|| choice.generated_logprobs().to_json());
                        vec![chunk(vec![choice.part(&t, lp, None)], None)]
                    }
                    Event::Done(f) => {
                        totals.0 += f.prompt_tokens;
                        totals.1 += f.completion_tokens;
                        let lp = (!choice.scored.is_empty()).then(|| choice.generated_logprobs().to_json());
                        vec![chunk(vec![choice.part("", lp, Some(f.reason.as_str()))], None)]
                    }
                    Event::Error(msg) => {
                        *failed = true;
                        vec![
                            SseEvent::default().data(error_body(&ServeError::Backend(msg)).to_string()),
                            SseEvent::default().data("[DONE]"),
                        ]
                    }
                })
            }
        };
        std::future::ready(out)
    });
    futures::stream::iter(first).chain(events.flat_map(futures::stream::iter)).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(v: Value) -> Result<Vec<String>, String> {
        let show = |p: &Prompt| match p {
            Prompt::Text(t) => format!("text:{t}"),
            Prompt::Tokens(ids) => format!("ids:{ids:?}"),
            Prompt::Chat(_) => "chat".into(),
        };
        prompts(Some(&v)).map(|ps| ps.iter().map(show).collect()).map_err(|e| e.to_string())
    }

    #[test]
    fn prompts_are_strings_token_ids_or_batches_of_either() {
        assert_eq!(forms(json!("hi")).unwrap(), ["text:hi"]);
        assert_eq!(forms(json!(["hi"])).unwrap(), ["text:hi"]);
        assert_eq!(forms(json!([1, 2])).unwrap(), ["ids:[1, 2]"]);
        assert_eq!(forms(json!([[1, 2], "x", [3]])).unwrap(), ["ids:[1, 2]", "text:x", "ids:[3]"]);
        for bad in [json!([]), json!([1, "x"]), json!([[]]), json!(3), json!([-1]), json!({}), json!(null)] {
            let e = forms(bad.clone()).unwrap_err();
            assert!(e.contains("'prompt'"), "{bad}: {e}");
        }
    }

    fn parsed(body: Value) -> Result<(Option<usize>, Option<usize>, usize), String> {
        let mut body = body;
        body["model"] = json!("m");
        let Value::Object(m) = body else { unreachable!() };
        params(&m)
            .map(|(c, _, _)| (c.params.prompt_logprobs, c.params.logprobs, c.params.max_tokens))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_prompt_is_scored_only_with_echo_and_logprobs_or_no_tokens() {
        assert_eq!(parsed(json!({"echo": true, "max_tokens": 0})), Ok((Some(0), None, 0)));
        assert_eq!(parsed(json!({"echo": true, "logprobs": 2, "max_tokens": 5})), Ok((Some(2), Some(2), 5)));
        assert_eq!(parsed(json!({"echo": true})), Ok((None, None, DEFAULT_MAX_TOKENS)));
        assert_eq!(parsed(json!({"logprobs": 1})), Ok((None, Some(1), DEFAULT_MAX_TOKENS)));
        assert!(parsed(json!({"max_tokens": 0})).unwrap_err().contains("max_tokens"));
        assert!(parsed(json!({"logprobs": 6})).unwrap_err().contains("logprobs"));
    }
}
