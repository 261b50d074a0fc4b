//! Generation by a model version: a prompt or chat messages become token ids, the version's
//! LLM engine streams events back, and the request is recorded in the version's statistics
//! when its stream ends. The edges see only the [`TokenStream`] that the version's endpoint
//! returns.

use std::sync::Arc;
use std::time::Instant;

use crate::assemble::ServedVersion;
use async_trait::async_trait;
use sluice_llm::{Event, Generator};
use sluice_types::generation::{GenerateRequest, Prompt, TokenStream, Vocabulary};
use sluice_types::ServeError;
use tokio::sync::mpsc;

/// A request's stream of events. Dropping it cancels the generation.
struct VersionStream {
    served: Arc<ServedVersion>,
    generator: Arc<Generator>,
    rx: mpsc::Receiver<Event>,
    start: Instant,
    ended: bool,
    prompt: Vec<u32>,
}

/// Starts a generation on `served`, whose generator is `g`.
pub(crate) async fn start(
    served: Arc<ServedVersion>,
    g: Arc<Generator>,
    req: GenerateRequest,
) -> Result<Box<dyn TokenStream>, ServeError> {
    let GenerateRequest { prompt, mut params, explicit_max } = req;
    let ids = match prompt {
        Prompt::Tokens(ids) => ids,
        // Rendering a chat template and tokenizing a long prompt take milliseconds: not on a
        // tokio worker.
        text => {
            let g = g.clone();
            tokio::task::spawn_blocking(move || match text {
                Prompt::Text(t) => g.encode_text(&t),
                Prompt::Chat(m) => g.encode_text(&g.chat_prompt(&m)?),
                Prompt::Tokens(ids) => Ok(ids),
            })
            .await
            .map_err(|e| ServeError::Internal(format!("the prompt tokenization task failed: {e}")))??
        }
    };
    if !explicit_max {
        params.max_tokens = g.context().saturating_sub(ids.len()).clamp(1, 512);
    }
    let rx = g.submit(ids.clone(), params)?;
    Ok(Box::new(VersionStream { served, generator: g, rx, start: Instant::now(), ended: false, prompt: ids }))
}

#[async_trait]
impl TokenStream for VersionStream {
    fn model(&self) -> &str {
        &self.served.name
    }

    fn version(&self) -> String {
        self.served.version.to_string()
    }

    fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    fn vocabulary(&self) -> Arc<dyn Vocabulary> {
        self.generator.vocabulary()
    }

    async fn next(&mut self) -> Option<Event> {
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
}

impl Drop for VersionStream {
    /// A stream dropped before its end was cancelled by its client (counted as Triton counts a
    /// cancelled request: a failure with reason CANCELED).
    fn drop(&mut self) {
        if !self.ended {
            let ns = self.start.elapsed().as_nanos() as u64;
            self.served.stats().record_failure(ns, &ServeError::Cancelled("client went away".into()));
        }
    }
}
