//! The continuous-batching loop, on its own thread: between decoding steps it takes new
//! requests, drops the ones whose client is gone, asks [`plan`](crate::plan) who runs, feeds
//! the model one step for all running sequences together, samples, detokenizes and sends each
//! sequence its text.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::detok::{Detokenizer, Matched, StopMatcher};
use crate::logprob::{score, TokenLogprob};
use crate::metrics::GenMetrics;
use crate::model::{Chunk, KvCache, Llama, Logits};
use crate::plan::{plan, Limits, RunningSeq, WaitingSeq};
use crate::sample::{Sampler, SamplingParams};

/// A generation request as the engine gets it.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub events: mpsc::Sender<Event>,
    pub arrived: Instant,
}

pub use sluice_types::generation::{Event, Finish, FinishReason};

pub(crate) struct Engine {
    pub model: Llama,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub eos: Vec<u32>,
    pub limits: Limits,
    pub metrics: Arc<GenMetrics>,
    /// Requests submitted and not yet admitted (the handle refuses beyond its queue limit).
    pub pending: Arc<AtomicUsize>,
}

struct Seq {
    job: Job,
    cache: KvCache,
    fed: usize,
    last: u32,
    generated: usize,
    sampler: Sampler,
    detok: Detokenizer,
    stop: StopMatcher,
    last_token_at: Option<Instant>,
    /// Scores of the prompt's tokens so far, sent together once the prompt is fed.
    prompt_scores: Vec<TokenLogprob>,
}

impl Seq {
    fn new(job: Job, model: &Llama) -> Seq {
        Seq {
            cache: KvCache::new(&model.shape),
            fed: 0,
            last: 0,
            generated: 0,
            sampler: Sampler::new(&job.params),
            detok: Detokenizer::default(),
            stop: StopMatcher::new(job.params.stop.clone()),
            last_token_at: None,
            prompt_scores: Vec::new(),
            job,
        }
    }

    fn reserve(job: &Job) -> usize {
        job.prompt.len() + job.params.max_tokens
    }

    fn send(&self, e: Event) -> bool {
        self.job.events.try_send(e).is_ok()
    }
}

/// What became of a sequence after its step.
enum After {
    Continue,
    Finished(FinishReason),
    Gone,
}

impl Engine {
    pub(crate) fn run(self, rx: flume::Receiver<Job>) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut running: Vec<Seq> = Vec::new();
        let mut open = true;
        loop {
            self.metrics.running.store(running.len() as i64, Relaxed);
            self.metrics.waiting.store(waiting.len() as i64, Relaxed);
            if running.is_empty() && waiting.is_empty() {
                if !open {
                    break;
                }
                match rx.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => break,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(flume::TryRecvError::Empty) => break,
                    Err(flume::TryRecvError::Disconnected) => {
                        // The model is being unloaded: finish what was accepted, then stop.
                        open = false;
                        break;
                    }
                }
            }
            self.drop_abandoned(&mut waiting, &mut running);
            let step = plan(
                &running
                    .iter()
                    .map(|s| RunningSeq { prompt_left: s.job.prompt.len() - s.fed, reserved: Seq::reserve(&s.job) })
                    .collect::<Vec<_>>(),
                &waiting
                    .iter()
                    .map(|j| WaitingSeq { prompt: j.prompt.len(), reserve: Seq::reserve(j) })
                    .collect::<Vec<_>>(),
                &self.limits,
            );
            for job in waiting.drain(..step.admit) {
                self.pending.fetch_sub(1, Relaxed);
                running.push(Seq::new(job, &self.model));
            }
            self.metrics.running.store(running.len() as i64, Relaxed);
            self.metrics.waiting.store(waiting.len() as i64, Relaxed);
            if step.feed.iter().all(|&n| n == 0) {
                if !waiting.is_empty() && running.is_empty() {
                    // A request that can never fit was refused at submit; this cannot
                    // happen, but must not spin.
                    let job = waiting.pop_front().expect("not empty");
                    self.pending.fetch_sub(1, Relaxed);
                    let _ = job.events.try_send(Event::Error("request does not fit the KV cache".into()));
                }
                continue;
            }
            self.step(&mut running, &step.feed);
        }
        self.metrics.running.store(0, Relaxed);
        self.metrics.waiting.store(0, Relaxed);
    }

    /// Requests whose receiver is gone (client disconnected or cancelled) free their slot now.
    fn drop_abandoned(&self, waiting: &mut VecDeque<Job>, running: &mut Vec<Seq>) {
        waiting.retain(|j| {
            let keep = !j.events.is_closed();
            if !keep {
                self.pending.fetch_sub(1, Relaxed);
                self.metrics.ended("cancelled");
            }
            keep
        });
        running.retain(|s| {
            let keep = !s.job.events.is_closed();
            if !keep {
                self.metrics.ended("cancelled");
            }
            keep
        });
    }

    fn step(&self, running: &mut Vec<Seq>, feed: &[usize]) {
        let prompt_fed: usize =
            running.iter().zip(feed).filter(|(s, _)| s.fed < s.job.prompt.len()).map(|(_, &n)| n).sum();
        let mut chunks = Vec::new();
        let mut wants = Vec::new();
        let mut stepped = Vec::new();
        for (i, (seq, &n)) in running.iter_mut().zip(feed).enumerate() {
            if n == 0 {
                continue;
            }
            let Seq { job, cache, fed, last, .. } = seq;
            let (tokens, want) = if *fed < job.prompt.len() {
                let end = *fed + n;
                let sample = end == job.prompt.len() && job.params.max_tokens > 0;
                let logits = match (job.params.prompt_logprobs, sample) {
                    (Some(_), _) => Logits::All,
                    (None, true) => Logits::Last,
                    (None, false) => Logits::None,
                };
                (&job.prompt[*fed..end], Want::new(logits, &job.prompt, *fed, n, sample, job.params.prompt_logprobs))
            } else {
                (std::slice::from_ref(&*last), Want::new(Logits::Last, &[], 0, 1, true, None))
            };
            chunks.push(Chunk { tokens, cache, logits: want.logits });
            wants.push(want);
            stepped.push((i, n));
        }
        let result = self.model.forward_each(&mut chunks, |c, j, row| wants[c].take(j, row));
        drop(chunks);
        self.metrics.prompt_tokens.fetch_add(prompt_fed as u64, Relaxed);
        if let Err(e) = result {
            tracing::error!(error = %e, "generation step failed");
            for &(i, _) in stepped.iter().rev() {
                let s = running.remove(i);
                s.send(Event::Error(format!("generation failed: {e}")));
                self.metrics.ended("error");
            }
            return;
        }
        let wants: Vec<(Vec<TokenLogprob>, Option<Vec<f32>>)> = wants.into_iter().map(|w| (w.scores, w.last)).collect();
        let mut remove = Vec::new();
        for ((i, n), (scores, logits)) in stepped.into_iter().zip(wants) {
            let seq = &mut running[i];
            let after = if seq.fed < seq.job.prompt.len() {
                seq.fed += n;
                seq.prompt_scores.extend(scores);
                if seq.fed < seq.job.prompt.len() {
                    continue;
                }
                self.prompt_done(seq, logits)
            } else {
                match logits {
                    Some(l) => self.emit(seq, &l),
                    None => continue,
                }
            };
            match after {
                After::Continue => {}
                After::Finished(reason) => {
                    let f = Finish { reason, prompt_tokens: seq.job.prompt.len(), completion_tokens: seq.generated };
                    seq.send(Event::Done(f));
                    self.metrics.end_to_end.observe(seq.job.arrived.elapsed().as_secs_f64());
                    self.metrics.ended(reason.as_str());
                    remove.push(i);
                }
                After::Gone => {
                    self.metrics.ended("cancelled");
                    remove.push(i);
                }
            }
        }
        for i in remove.into_iter().rev() {
            running.remove(i);
        }
    }

    /// A sequence's prompt has been fed: its scores go out, then its first token (unless it
    /// asked for none: scoring the prompt was the whole request).
    fn prompt_done(&self, seq: &mut Seq, logits: Option<Vec<f32>>) -> After {
        if seq.job.params.prompt_logprobs.is_some() {
            let scores = std::mem::take(&mut seq.prompt_scores);
            if !seq.send(Event::PromptLogprobs(scores)) {
                return After::Gone;
            }
        }
        match logits {
            Some(l) => self.emit(seq, &l),
            None => After::Finished(FinishReason::Length),
        }
    }

    /// Samples the next token of a sequence and sends what text it completes.
    fn emit(&self, seq: &mut Seq, logits: &[f32]) -> After {
        let token = seq.sampler.sample(logits);
        let now = Instant::now();
        match seq.last_token_at {
            None => self.metrics.time_to_first_token.observe((now - seq.job.arrived).as_secs_f64()),
            Some(t) => self.metrics.inter_token.observe((now - t).as_secs_f64()),
        }
        seq.last_token_at = Some(now);
        seq.generated += 1;
        seq.last = token;
        self.metrics.generated_tokens.fetch_add(1, Relaxed);
        if let Some(n) = seq.job.params.logprobs {
            if !seq.send(Event::Logprobs(score(logits, token, n))) {
                return After::Gone;
            }
        }
        let text_then = |seq: &mut Seq, text: String, after: After| {
            if text.is_empty() || seq.send(Event::Text(text)) {
                after
            } else {
                After::Gone
            }
        };
        if !seq.job.params.ignore_eos && self.eos.contains(&token) {
            let held = seq.stop.flush();
            return text_then(seq, held, After::Finished(FinishReason::Stop));
        }
        let piece = seq.detok.push(self.tokenizer.as_ref(), token);
        match seq.stop.push(&piece) {
            Matched::Stop(text) => text_then(seq, text, After::Finished(FinishReason::Stop)),
            Matched::Text(text) => {
                if seq.generated >= seq.job.params.max_tokens {
                    let text = text + &seq.stop.flush();
                    text_then(seq, text, After::Finished(FinishReason::Length))
                } else {
                    text_then(seq, text, After::Continue)
                }
            }
        }
    }
}

/// What one chunk of a step wants from the rows of logits the model hands back.
struct Want<'a> {
    logits: Logits,
    /// The sequence's prompt and the position of the chunk's first row in it: row `j` predicts
    /// `prompt[first + j + 1]`.
    prompt: &'a [u32],
    first: usize,
    rows: usize,
    /// Keep the last row: the next token is sampled from it.
    sample: bool,
    top: Option<usize>,
    scores: Vec<TokenLogprob>,
    last: Option<Vec<f32>>,
}

impl<'a> Want<'a> {
    fn new(logits: Logits, prompt: &'a [u32], first: usize, rows: usize, sample: bool, top: Option<usize>) -> Self {
        Want { logits, prompt, first, rows, sample, top, scores: Vec::new(), last: None }
    }

    fn take(&mut self, j: usize, row: &[f32]) {
        if let (Some(n), Some(&next)) = (self.top, self.prompt.get(self.first + j + 1)) {
            self.scores.push(score(row, next, n));
        } else if self.sample && j + 1 == self.rows {
            self.last = Some(row.to_vec());
        }
    }
}
