//! Generation as every layer sees it: the prompt and sampling parameters of a request, the
//! events of its stream (text pieces, log-probabilities, the end), and the [`TokenStream`] an
//! endpoint answers with. The engine that produces them lives in `sluice-llm`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ServeError;

/// What a request asks of the sampler and of the length of its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Nucleus: keep the most likely tokens whose probabilities add up to this (1 = all).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: Option<u64>,
    /// Generation ends before the first occurrence of any of these (not included in the text).
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks use it for fixed lengths).
    pub ignore_eos: bool,
    /// Report each generated token's log-probability with this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Score the prompt: each prompt token's log-probability (after the first) with this many
    /// alternatives. With it, `max_tokens` may be 0.
    pub prompt_logprobs: Option<usize>,
}

/// The most alternatives a position reports (OpenAI's chat API allows 20).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

impl SamplingParams {
    /// A clear message for values no sampler can use.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature must be a number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.max_tokens == 0 && self.prompt_logprobs.is_none() {
            return Err("max_tokens must be at least 1 (0 only when the prompt is scored: echo with logprobs)".into());
        }
        for (name, n) in [("logprobs", self.logprobs), ("prompt_logprobs", self.prompt_logprobs)] {
            if n.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
                return Err(format!("{name} must be at most {MAX_TOP_LOGPROBS}, got {}", n.unwrap_or_default()));
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("stop sequences must not be empty strings".into());
        }
        Ok(())
    }
}

/// One turn of a chat.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The log-probability of one token at one position, with the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The `n` most likely tokens at that position, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// What a request's stream carries: text pieces, then one `Done` or `Error`. A request that
/// asked for log-probabilities also gets them, each before the text it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The prompt's tokens scored, from the second on (the first has no context to be
    /// predicted from); once, before anything else.
    PromptLogprobs(Vec<TokenLogprob>),
    /// The token just generated, scored; before the text it completes (text may be held back
    /// for a stop sequence or an unfinished character, so a token's text can come later).
    Logprobs(TokenLogprob),
    Text(String),
    Done(Finish),
    Error(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What to generate from.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    /// Token ids as the client tokenized them (OpenAI's `prompt` as a list of integers).
    Tokens(Vec<u32>),
    /// Rendered with the model's chat template.
    Chat(Vec<Message>),
}

/// A generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// Without it, `params.max_tokens` becomes what the context leaves after the prompt (at
    /// most 512), as OpenAI's chat API does when `max_tokens` is absent.
    pub explicit_max: bool,
}

/// Turns token ids back into text, for log-probabilities and echoed prompts.
pub trait Vocabulary: Send + Sync {
    /// `special`: keep special tokens (`<|im_start|>`) as text.
    fn decode(&self, ids: &[u32], special: bool) -> String;
}

/// The answer of a generation: its events as they come. Dropping it cancels the generation.
#[async_trait]
pub trait TokenStream: Send {
    /// The model and version that answer.
    fn model(&self) -> &str;
    fn version(&self) -> String;
    /// The prompt's token ids, as fed to the model.
    fn prompt(&self) -> &[u32];
    fn vocabulary(&self) -> std::sync::Arc<dyn Vocabulary>;
    /// The next event; `None` after the end. A stream that stops without a `Done` yields an
    /// `Error`.
    async fn next(&mut self) -> Option<Event>;
}

/// A whole answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish: Finish,
    /// The prompt's tokens from the second on, scored (when asked).
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Each generated token, scored (when asked).
    pub logprobs: Vec<TokenLogprob>,
}

/// Reads a stream to its end.
pub async fn collect(stream: &mut dyn TokenStream) -> Result<Completion, ServeError> {
    let (mut text, mut prompt_logprobs, mut logprobs) = (String::new(), Vec::new(), Vec::new());
    while let Some(e) = stream.next().await {
        match e {
            Event::PromptLogprobs(p) => prompt_logprobs = p,
            Event::Logprobs(l) => logprobs.push(l),
            Event::Text(t) => text.push_str(&t),
            Event::Done(finish) => return Ok(Completion { text, finish, prompt_logprobs, logprobs }),
            Event::Error(e) => return Err(ServeError::Backend(e)),
        }
    }
    Err(ServeError::Internal("generation ended without an answer".into()))
}

/// Sampling parameters from a JSON object (Triton's generate `parameters`, OpenAI bodies,
/// the `sampling_parameters` input). Unknown keys are left to the caller; a known key of the
/// wrong type is an error that names it.
pub fn params_from_json(
    obj: &serde_json::Map<String, serde_json::Value>,
    defaults: SamplingParams,
) -> Result<SamplingParams, ServeError> {
    use serde_json::Value;
    let mut p = defaults;
    let bad = |k: &str, want: &str, v: &Value| ServeError::invalid(format!("parameter '{k}' must be {want}, got {v}"));
    // Numbers also come as strings from clients that only send string parameters.
    let num = |k: &str, v: &Value| -> Result<f64, ServeError> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| bad(k, "a number", v))
    };
    let count = |k: &str, v: &Value| -> Result<usize, ServeError> {
        let n = num(k, v)?;
        if n < 0.0 || n.fract() != 0.0 {
            return Err(bad(k, "a non-negative integer", v));
        }
        Ok(n as usize)
    };
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "max_tokens" | "max_new_tokens" | "max_completion_tokens" => p.max_tokens = count(k, v)?,
            "temperature" => p.temperature = num(k, v)? as f32,
            "top_p" => p.top_p = num(k, v)? as f32,
            "top_k" => {
                // -1 means "all" in vLLM's convention.
                p.top_k = if num(k, v)? < 0.0 { 0 } else { count(k, v)? }
            }
            "seed" => p.seed = Some(count(k, v)? as u64),
            "ignore_eos" => p.ignore_eos = v.as_bool().ok_or_else(|| bad(k, "true or false", v))?,
            "stop" => {
                p.stop = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a
                        .iter()
                        .map(|s| {
                            s.as_str().map(str::to_string).ok_or_else(|| bad(k, "a string or a list of strings", v))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(bad(k, "a string or a list of strings", v)),
                }
            }
            _ => {}
        }
    }
    p.check().map_err(ServeError::invalid)?;
    Ok(p)
}
