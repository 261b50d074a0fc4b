//! Generation as the edges see it: find a generative model, turn a prompt or chat messages into
//! a stream of text pieces, and record each request in the version's statistics when its
//! stream ends. The HTTP (`generate`, `generate_stream`, OpenAI) and gRPC (`ModelStreamInfer`)
//! edges all go through here.

use std::sync::Arc;
use std::time::Instant;

use sluice_llm::{Event, Finish, Generator, Message, SamplingParams, TokenLogprob};
use sluice_repository::ServedVersion;
use sluice_types::ServeError;
use tokio::sync::mpsc;

use crate::engine::Engine;

pub enum Prompt {
    Text(String),
    /// Token ids as the client tokenized them (OpenAI's `prompt` as a list of integers).
    Tokens(Vec<u32>),
    Chat(Vec<Message>),
}

/// A request's stream of events. Dropping it cancels the generation.
pub struct GenStream {
    served: Arc<ServedVersion>,
    generator: Arc<Generator>,
    rx: mpsc::Receiver<Event>,
    start: Instant,
    ended: bool,
    prompt: Vec<u32>,
}

/// A whole answer.
pub struct Answer {
    pub text: String,
    pub finish: Finish,
    /// The prompt's tokens from the second on, scored (when asked).
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Each generated token, scored (when asked).
    pub logprobs: Vec<TokenLogprob>,
}

impl GenStream {
    pub fn model(&self) -> &str {
        &self.served.name
    }

    pub fn version(&self) -> u64 {
        self.served.version
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.generator.tokenizer()
    }

    pub fn generator(&self) -> &Arc<Generator> {
        &self.generator
    }

    /// The prompt's token ids, as fed to the model.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// The next event; `None` after the end. A stream that stops without a `Done` (the engine
    /// went away) yields an `Error`.
    pub async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let e = self.rx.recv().await.unwrap_or_else(|| Event::Error("generation ended unexpectedly".into()));
        let ns = self.start.elapsed().as_nanos() as u64;
        match &e {
            Event::Text(_) | Event::PromptLogprobs(_) | Event::Logprobs(_) => {}
            Event::Done(_) => {
                self.ended = true;
                self.served.stats().record_success(ns);
            }
            Event::Error(msg) => {
                self.ended = true;
                self.served.stats().record_failure(ns, &ServeError::Backend(msg.clone()));
            }
        }
        Some(e)
    }

    /// The whole answer.
    pub async fn collect(&mut self) -> Result<Answer, ServeError> {
        let (mut text, mut prompt_logprobs, mut logprobs) = (String::new(), Vec::new(), Vec::new());
        while let Some(e) = self.next().await {
            match e {
                Event::PromptLogprobs(p) => prompt_logprobs = p,
                Event::Logprobs(l) => logprobs.push(l),
                Event::Text(t) => text.push_str(&t),
                Event::Done(finish) => return Ok(Answer { text, finish, prompt_logprobs, logprobs }),
                Event::Error(e) => return Err(ServeError::Backend(e)),
            }
        }
        Err(ServeError::Internal("generation ended without an answer".into()))
    }
}

impl Drop for GenStream {
    /// A stream dropped before its end was cancelled by its client (counted as Triton counts a
    /// cancelled request: a failure with reason CANCELED).
    fn drop(&mut self) {
        if !self.ended {
            let ns = self.start.elapsed().as_nanos() as u64;
            self.served.stats().record_failure(ns, &ServeError::Cancelled("client went away".into()));
        }
    }
}

impl Engine {
    /// A ready generative model, or a clear error for a model that is not one.
    pub fn generator(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<(Arc<ServedVersion>, Arc<Generator>), ServeError> {
        let served = self.repository().get(model, version)?;
        match served.generator.clone() {
            Some(g) => Ok((served, g)),
            None => Err(ServeError::invalid(format!(
                "model '{model}' is not a generative model (backend '{}'); use its infer endpoint",
                served.config.backend
            ))),
        }
    }

    /// Names of the ready generative models.
    pub fn generative_models(&self) -> Vec<(String, u64)> {
        self.repository()
            .all_ready()
            .iter()
            .filter(|s| s.generator.is_some())
            .map(|s| (s.name.clone(), s.version))
            .collect()
    }

    /// Starts a generation. Without `explicit_max`, `params.max_tokens` is replaced by what
    /// the context leaves after the prompt (at most 512).
    pub fn generate(
        &self,
        model: &str,
        version: Option<&str>,
        prompt: Prompt,
        mut params: SamplingParams,
        explicit_max: bool,
    ) -> Result<GenStream, ServeError> {
        let (served, g) = self.generator(model, version)?;
        let ids = match prompt {
            Prompt::Text(t) => g.encode_text(&t)?,
            Prompt::Tokens(ids) => ids,
            Prompt::Chat(m) => g.encode_text(&g.chat_prompt(&m)?)?,
        };
        if !explicit_max {
            params.max_tokens = g.context().saturating_sub(ids.len()).clamp(1, 512);
        }
        let rx = g.submit(ids.clone(), params)?;
        Ok(GenStream { served, generator: g, rx, start: Instant::now(), ended: false, prompt: ids })
    }
}
