//! Generative models on candle. A model directory holding `<version>/model.gguf` and a
//! `tokenizer.json` is served as a text generator: [`Generator`] owns the weights and a
//! continuous-batching engine on a dedicated thread; requests come in as prompts or chat
//! messages with sampling parameters and go out as a stream of text pieces.
//!
//! - [`model`]: the llama-architecture network with per-sequence KV caches, on
//!   [`qlinear`]'s batched Q4_1 kernel;
//! - [`plan`]: which requests join and what each sequence feeds, per step (pure);
//! - [`engine`]: the decoding loop;
//! - [`sample`], [`detok`], [`chat`]: sampling, UTF-8 safe detokenization with stop
//!   sequences, chat templates;
//! - [`logprob`]: log-probabilities of prompt and generated tokens; [`eval`]: perplexity and
//!   agreement with candle's own llama on the same text;
//! - [`backend`]: the repository's view (config auto-complete, the synchronous instance).

pub mod backend;
pub mod chat;
pub mod detok;
pub mod engine;
pub mod eval;
pub mod logprob;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod qlinear;
pub mod sample;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use sluice_types::{ModelConfig, ServeError};
use tokio::sync::mpsc;

pub use chat::Message;
pub use engine::{Event, Finish, FinishReason};
pub use logprob::TokenLogprob;
pub use metrics::GenMetrics;
pub use sample::SamplingParams;
pub use sluice_types::generation::params_from_json;

use crate::chat::ChatTemplate;
use crate::engine::{Engine, Job};
use crate::model::Llama;
use crate::plan::Limits;

/// How a generator bounds its work; from the model config's `parameters`.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorOptions {
    /// Sequences decoded together (`max_num_seqs`, default 8).
    pub max_num_seqs: usize,
    /// Tokens fed to the model in one step, prompts included (`max_num_batched_tokens`, 512).
    pub max_batched_tokens: usize,
    /// KV cache room in tokens over all sequences (`kv_cache_tokens`, default
    /// `max_num_seqs` × 2048, at most the context per sequence).
    pub kv_tokens: usize,
    /// Requests waiting for a slot before new ones get 429 (`max_queue_size`, default 64).
    pub max_queue: usize,
}

impl GeneratorOptions {
    pub fn from_config(config: &ModelConfig) -> Result<GeneratorOptions, ServeError> {
        let num = |key: &str, default: usize| -> Result<usize, ServeError> {
            match config.parameter(key) {
                None => Ok(default),
                Some(v) => v.trim().parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                    ServeError::invalid(format!(
                        "model '{}': parameter '{key}' must be a positive integer, got '{v}'",
                        config.name
                    ))
                }),
            }
        };
        let max_num_seqs = num("max_num_seqs", 8)?;
        let o = GeneratorOptions {
            max_num_seqs,
            max_batched_tokens: num("max_num_batched_tokens", 512)?.max(max_num_seqs),
            kv_tokens: num("kv_cache_tokens", max_num_seqs * 2048)?,
            max_queue: num("max_queue_size", 64)?,
        };
        Ok(o)
    }
}

/// A loaded generative model and its engine.
pub struct Generator {
    name: String,
    tx: flume::Sender<Job>,
    pending: Arc<AtomicUsize>,
    options: GeneratorOptions,
    context: usize,
    vocab: usize,
    tokenizer: Arc<tokenizers::Tokenizer>,
    chat: ChatTemplate,
    bos: Option<u32>,
    metrics: Arc<GenMetrics>,
}

/// Where a model directory keeps its tokenizer: beside the versions, or in the version.
pub fn tokenizer_path(model_dir: &Path, version_dir: &Path) -> Option<PathBuf> {
    [version_dir.join("tokenizer.json"), model_dir.join("tokenizer.json")].into_iter().find(|p| p.is_file())
}

impl Generator {
    /// Loads the weights and the tokenizer and starts the engine thread.
    pub fn load(
        name: &str,
        model_path: &Path,
        tokenizer: &Path,
        options: GeneratorOptions,
    ) -> Result<Generator, ServeError> {
        let failed = |what: String| ServeError::invalid(format!("model '{name}': {what}"));
        let tokenizer = tokenizers::Tokenizer::from_file(tokenizer)
            .map_err(|e| failed(format!("cannot read {}: {e}", tokenizer.display())))?;
        let (model, meta) = Llama::load(model_path).map_err(|e| failed(e.to_string()))?;
        let get_u32 = |k: &str| meta.get(k).and_then(|v| v.to_u32().ok());
        let mut eos: Vec<u32> = get_u32("tokenizer.ggml.eos_token_id").into_iter().collect();
        // Chat models end a turn with their own marker; any of the usual ones ends generation.
        for marker in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<|end|>"] {
            if let Some(id) = tokenizer.token_to_id(marker) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let add_bos = meta.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
        let bos_id = get_u32("tokenizer.ggml.bos_token_id");
        let token_text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
        let template = meta.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
        let chat = ChatTemplate::new(template.as_deref(), &token_text(bos_id), &token_text(eos.first().copied()));
        let context = model.shape.context;
        let vocab = model.shape.vocab;
        let kv_tokens = options.kv_tokens;
        tracing::info!(
            model = name,
            layers = model.shape.n_layer,
            context,
            kv_cache_mib = kv_tokens * model.shape.kv_bytes_per_token() / (1 << 20),
            chat_template = if chat.is_chatml() { "ChatML" } else { "from GGUF" },
            "generative model loaded"
        );
        let tokenizer = Arc::new(tokenizer);
        let metrics = Arc::new(GenMetrics::default());
        let pending = Arc::new(AtomicUsize::new(0));
        let engine = Engine {
            model,
            tokenizer: tokenizer.clone(),
            eos,
            limits: Limits {
                max_num_seqs: options.max_num_seqs,
                max_batched_tokens: options.max_batched_tokens,
                kv_tokens,
            },
            metrics: metrics.clone(),
            pending: pending.clone(),
        };
        // Submissions are bounded by `pending`; the channel only hands them over.
        let (tx, rx) = flume::bounded(options.max_queue + 1);
        std::thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn(move || engine.run(rx))
            .map_err(|e| ServeError::Internal(format!("cannot start the generation thread: {e}")))?;
        Ok(Generator {
            name: name.to_string(),
            tx,
            pending,
            options,
            context,
            vocab,
            tokenizer,
            chat,
            bos: if add_bos { bos_id } else { None },
            metrics,
        })
    }

    pub fn options(&self) -> &GeneratorOptions {
        &self.options
    }

    /// Longest prompt plus answer, in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    pub fn metrics(&self) -> &GenMetrics {
        &self.metrics
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The tokenizer as the edges see it: ids back to text.
    pub fn vocabulary(&self) -> Arc<dyn sluice_types::generation::Vocabulary> {
        Arc::new(detok::TokenizerVocabulary(self.tokenizer.clone()))
    }

    /// Token ids run from 0 to `vocab() - 1`.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Token ids of a plain prompt.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, ServeError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ServeError::invalid(format!("prompt cannot be tokenized: {e}")))?;
        Ok(self.bos.into_iter().chain(enc.get_ids().iter().copied()).collect())
    }

    /// The prompt of a chat, rendered with the model's chat template.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String, ServeError> {
        self.chat.render(messages).map_err(ServeError::invalid)
    }

    /// Queues a generation. The stream ends with one [`Event::Done`] or [`Event::Error`];
    /// dropping the receiver cancels the request (its slot is freed at the next step).
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<mpsc::Receiver<Event>, ServeError> {
        params.check().map_err(ServeError::invalid)?;
        if prompt.is_empty() {
            return Err(ServeError::invalid("the prompt is empty"));
        }
        // Token ids may come from the client: one outside the vocabulary must not reach the
        // embedding lookup.
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ServeError::invalid(format!(
                "prompt token id {bad} is not in the vocabulary of model '{}' (ids 0 to {})",
                self.name,
                self.vocab - 1
            )));
        }
        let need = prompt.len() + params.max_tokens;
        if need > self.context {
            return Err(ServeError::invalid(format!(
                "prompt of {} tokens plus max_tokens {} is {need} tokens, more than the model '{}' context of {}",
                prompt.len(),
                params.max_tokens,
                self.name,
                self.context
            )));
        }
        if need > self.options.kv_tokens {
            return Err(ServeError::invalid(format!(
                "prompt of {} tokens plus max_tokens {} needs {need} tokens of KV cache; model '{}' has {} (kv_cache_tokens)",
                prompt.len(),
                params.max_tokens,
                self.name,
                self.options.kv_tokens
            )));
        }
        if self.pending.fetch_add(1, Relaxed) >= self.options.max_queue {
            self.pending.fetch_sub(1, Relaxed);
            return Err(ServeError::ResourceExhausted {
                message: format!(
                    "model '{}': {} generation requests are already waiting for a sequence slot",
                    self.name, self.options.max_queue
                ),
                retry_after_ms: 1000,
            });
        }
        // Room for every event (a token's text and its scores, the prompt's scores, the end):
        // the engine never blocks on a slow reader.
        let per_token = 1 + usize::from(params.logprobs.is_some());
        let (events, rx) = mpsc::channel(params.max_tokens * per_token + 3);
        let job = Job { prompt, params, events, arrived: Instant::now() };
        if self.tx.try_send(job).is_err() {
            self.pending.fetch_sub(1, Relaxed);
            return Err(ServeError::Unavailable(format!("model '{}' is shutting down", self.name)));
        }
        Ok(rx)
    }
}
