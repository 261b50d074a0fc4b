//! The scheduler of one model version: its queues and a pool of model instances, each on its own
//! OS thread. A request is pushed onto the queues by the caller's task; an idle instance forms
//! the next batch itself with the [`BatchPolicy`] and runs it, so that under load a request
//! crosses threads once (to the instance, which answers it directly). The queues are the
//! scheduler's mailbox: bounded, guarded by one short lock, each entry carrying its oneshot reply.
//! A watcher thread answers a request whose timeout passes at that moment, whatever is running;
//! a request whose caller went away is dropped before it runs and counted as cancelled.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use sluice_backend::{ExecOutput, ModelInstance};
use sluice_types::{ModelConfig, ServeError, Tensor, Timings};
use tokio::sync::oneshot;

use crate::adaptive::AdaptiveController;
use crate::batch::{merge_inputs, shape_key, split_outputs, Padding};
use crate::order::Reorder;
use crate::policy::{BatchPolicy, Decision};
use crate::queue::{Queues, Refusal};
use crate::stats::ModelStats;

/// What a request gets back from execution.
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub timings: Timings,
}

/// One request as the scheduler takes it.
#[derive(Debug, Default)]
pub struct Submission {
    pub inputs: Vec<Tensor>,
    /// Outputs to compute; empty = all.
    pub outputs: Vec<String>,
    /// Inferences in the request (its batch dimension; 1 for models that do not batch).
    pub batch_size: u64,
    /// The `priority` request parameter (0 or none = the model's default level).
    pub priority: Option<u64>,
    /// The `timeout` request parameter.
    pub timeout: Option<Duration>,
}

type Answer = Result<Executed, ServeError>;
type Reply = oneshot::Sender<Answer>;

struct Pending {
    inputs: Vec<Tensor>,
    outputs: Vec<String>,
    batch_size: u64,
    /// Arrival order, for `preserve_ordering`.
    seq: u64,
    reply: Reply,
}

struct Batch {
    requests: Vec<(Pending, Instant)>,
    dispatched: Instant,
}

/// What an instance reports when it finished a batch: what adaptive batching measures.
struct Done {
    requests: usize,
    inferences: u64,
    took: Duration,
    /// Each request's latency (queue + compute); only when measuring.
    latencies: Vec<Duration>,
}

/// Limits of one version's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Queued requests before "queue full".
    pub max_requests: usize,
    /// Queued input bytes before "queue full" (0 = no byte limit).
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { max_requests: 1024, max_bytes: 256 << 20 }
    }
}

/// Everything the lock guards.
struct State {
    queues: Queues<Pending>,
    policy: BatchPolicy,
    /// `dynamic_batching { adaptive { .. } }`: sets the policy's cap and delay.
    adaptive: Option<AdaptiveController>,
    /// Requests taken by instances and not finished.
    in_flight: usize,
    /// Instances blocked on `Shared::work`.
    waiting: usize,
    /// When the watcher wakes next (`None`: only when told).
    watching: Option<Instant>,
    closed: bool,
    next_seq: u64,
    /// `preserve_ordering`.
    order: Option<Reorder<(Reply, Answer)>>,
}

struct Shared {
    label: String,
    state: Mutex<State>,
    /// Idle instances wait here for work (or for a batch's delay to pass).
    work: Condvar,
    /// The timeout watcher waits here.
    watch: Condvar,
    /// Counts arrivals, so that a briefly spinning instance sees work without taking the lock.
    arrivals: AtomicU64,
    closed: AtomicBool,
    ordered: bool,
    /// Adaptive batching wants per-request latencies.
    measure: bool,
    stats: Arc<ModelStats>,
    /// Ragged inputs and pad values, from the config (see `batch`).
    padding: Padding,
}

struct Inner {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: let the threads finish what is queued and stop.
        self.shared.close();
    }
}

/// Cloneable handle to a model version's scheduler.
#[derive(Clone)]
pub struct ModelRunner {
    inner: Arc<Inner>,
}

impl ModelRunner {
    /// Starts one thread per instance and the timeout watcher. `label` names them (`model:version`).
    pub fn start(
        label: String,
        config: &ModelConfig,
        instances: Vec<Box<dyn ModelInstance>>,
        limits: QueueLimits,
        stats: Arc<ModelStats>,
    ) -> Result<ModelRunner, ServeError> {
        let n = instances.len().max(1);
        let adaptive = AdaptiveController::from_config(config, n)
            .map_err(|m| ServeError::invalid(format!("model {label}: {m}")))?;
        let ordered = config.dynamic_batching.as_ref().is_some_and(|d| d.preserve_ordering);
        let measure = adaptive.is_some();
        let shared = Arc::new(Shared {
            label: label.clone(),
            state: Mutex::new(State {
                queues: Queues::from_config(config, limits.max_requests, limits.max_bytes),
                policy: BatchPolicy::from_config(config),
                adaptive,
                in_flight: 0,
                waiting: 0,
                watching: None,
                closed: false,
                next_seq: 0,
                order: ordered.then(Reorder::default),
            }),
            work: Condvar::new(),
            watch: Condvar::new(),
            arrivals: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            ordered,
            measure,
            stats,
            padding: Padding::from_config(config)?,
        });
        let mut threads = Vec::with_capacity(n + 1);
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|e| ServeError::Internal(format!("cannot start a thread for {label}: {e}")))
        };
        let lowered = sluice_backend::priority::wants_min_priority(config);
        let started = (|| {
            for (i, instance) in instances.into_iter().enumerate() {
                let s = shared.clone();
                let run = move || {
                    if lowered {
                        if let Err(e) = sluice_backend::priority::lower_current_thread() {
                            tracing::warn!(model = %s.label, error = %e, "cannot lower an instance thread's priority");
                        }
                    }
                    s.instance_loop(instance)
                };
                threads.push(spawn(format!("sluice-{label}-{i}"), Box::new(run))?);
            }
            let s = shared.clone();
            threads.push(spawn(format!("sluice-watch-{label}"), Box::new(move || s.watch_loop()))?);
            Ok(())
        })();
        if let Err(e) = started {
            shared.close();
            return Err(e);
        }
        Ok(ModelRunner { inner: Arc::new(Inner { shared, threads: Mutex::new(threads) }) })
    }

    pub fn stats(&self) -> &Arc<ModelStats> {
        &self.inner.shared.stats
    }

    /// Queues a request and waits for its result. Dropping the returned future before the
    /// request runs cancels it.
    pub async fn submit(&self, s: Submission) -> Result<Executed, ServeError> {
        let shared = &self.inner.shared;
        let (reply, rx) = oneshot::channel();
        let key = shape_key(&s.inputs, &shared.padding);
        let bytes = s.inputs.iter().map(Tensor::byte_size).sum();
        let pending = Pending { inputs: s.inputs, outputs: s.outputs, batch_size: s.batch_size, seq: 0, reply };
        shared.enqueue(pending, key, bytes, s.priority, s.timeout)?;
        rx.await.unwrap_or_else(|_| Err(shared.unloading()))
    }

    /// True once [`ModelRunner::shutdown`] began: this version takes no more requests (a reload
    /// or unload replaced it), so a caller may look the model up again.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Acquire)
    }

    /// Closes the queue, lets the instances finish what was queued, and waits for them.
    pub async fn shutdown(&self) {
        self.inner.shared.close();
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        if !threads.is_empty() {
            let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
        }
    }
}

impl Shared {
    fn unloading(&self) -> ServeError {
        ServeError::Unavailable(format!("model {} is unloading", self.label))
    }

    fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        self.closed.store(true, Release);
        self.work.notify_all();
        self.watch.notify_all();
    }

    fn enqueue(
        &self,
        mut p: Pending,
        key: u64,
        bytes: usize,
        priority: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<(), ServeError> {
        let now = Instant::now();
        let batch_size = p.batch_size;
        let mut st = self.state.lock();
        if st.closed {
            return Err(self.unloading());
        }
        p.seq = st.next_seq;
        let deadline = match st.queues.push(now, p, batch_size, key, bytes, priority, timeout) {
            Ok(deadline) => deadline,
            Err((_, refusal)) => {
                return Err(match refusal {
                    Refusal::Full(what) => ServeError::ResourceExhausted {
                        message: format!("the queue of model {} is full ({what})", self.label),
                        retry_after_ms: 1000,
                    },
                    Refusal::BadPriority(prio, levels) => ServeError::invalid(format!(
                        "request parameter 'priority' is {prio}, but model {} has priority levels 1..={levels}",
                        self.label
                    )),
                })
            }
        };
        st.next_seq += 1;
        self.stats.pending.fetch_add(1, Relaxed);
        let in_system = st.queues.len() + st.in_flight;
        if let Some(c) = &mut st.adaptive {
            c.observe_arrival(now, batch_size, in_system);
        }
        self.arrivals.fetch_add(1, Release);
        if st.waiting > 0 {
            self.work.notify_one();
        }
        if deadline.is_some_and(|d| st.watching.is_none_or(|w| d < w)) {
            self.watch.notify_one();
        }
        Ok(())
    }

    /// Sends answers, through the reorder buffer when answers must keep arrival order.
    fn answer(&self, st: &mut State, answers: Vec<(u64, Reply, Answer)>) {
        match &mut st.order {
            Some(order) => {
                for (seq, reply, answer) in answers {
                    let ready = if reply.is_closed() {
                        order.release(seq, None)
                    } else {
                        order.release(seq, Some((reply, answer)))
                    };
                    for (reply, answer) in ready {
                        let _ = reply.send(answer);
                    }
                }
            }
            None => {
                for (_, reply, answer) in answers {
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Answers timed-out requests and drops those whose caller went away.
    fn sweep(&self, st: &mut State, now: Instant, cancelled_too: bool) {
        let expired = st.queues.expire(now);
        let mut answers = Vec::with_capacity(expired.len());
        for (p, enqueued) in expired {
            self.stats.pending.fetch_sub(1, Relaxed);
            let waited = now.duration_since(enqueued);
            let e = ServeError::Timeout(format!(
                "request timed out after {} us in the queue of model {}",
                waited.as_micros(),
                self.label
            ));
            answers.push((p.seq, p.reply, Err(e)));
        }
        if cancelled_too {
            for (p, enqueued) in st.queues.remove_where(|p| p.reply.is_closed()) {
                self.stats.pending.fetch_sub(1, Relaxed);
                let ns = now.duration_since(enqueued).as_nanos() as u64;
                self.stats.record_failure(ns, &ServeError::Cancelled(String::new()));
                answers.push((p.seq, p.reply, Err(ServeError::Cancelled(String::new()))));
            }
        }
        if !answers.is_empty() {
            self.answer(st, answers);
        }
    }

    /// Waits until a batch can be formed and takes it; `None` once closed and empty. `done`
    /// reports the batch this instance just finished.
    fn next_batch(&self, done: Option<Done>) -> Option<Batch> {
        let mut st = self.state.lock();
        if let Some(done) = done {
            st.in_flight = st.in_flight.saturating_sub(done.requests);
            if let Some(a) = &mut st.adaptive {
                a.observe_execution(done.inferences, done.took);
                done.latencies.into_iter().for_each(|l| a.observe_latency(l));
            }
        }
        let mut spun = false;
        loop {
            let now = Instant::now();
            self.sweep(&mut st, now, true);
            let State { queues, policy, adaptive, in_flight, .. } = &mut *st;
            if let Some(a) = adaptive {
                a.apply(policy, *in_flight);
            }
            let candidates = queues.candidates(policy.max_batch_size as usize + 1);
            let count = match policy.decide(now, &candidates) {
                Decision::Dispatch { count } => count,
                Decision::WaitUntil(_) if st.closed => candidates.len(),
                Decision::Idle if st.closed => return None,
                Decision::WaitUntil(t) => {
                    st.waiting += 1;
                    self.work.wait_until(&mut st, t);
                    st.waiting -= 1;
                    continue;
                }
                Decision::Idle if !spun => {
                    spun = true;
                    self.spin(&mut st);
                    continue;
                }
                Decision::Idle => {
                    st.waiting += 1;
                    self.work.wait(&mut st);
                    st.waiting -= 1;
                    spun = false;
                    continue;
                }
            };
            let requests = st.queues.take(count);
            self.stats.pending.fetch_sub(requests.len() as i64, Relaxed);
            st.in_flight += requests.len();
            if st.waiting > 0 && !st.queues.is_empty() {
                self.work.notify_one();
            }
            return Some(Batch { requests, dispatched: now });
        }
    }

    /// Under load the next request usually arrives within microseconds: yielding briefly before
    /// sleeping saves a futex sleep and wake-up per batch, the largest fixed cost of a small model.
    fn spin(&self, st: &mut MutexGuard<'_, State>) {
        let seen = self.arrivals.load(Acquire);
        MutexGuard::unlocked(st, || {
            let start = Instant::now();
            while self.arrivals.load(Acquire) == seen
                && !self.closed.load(Acquire)
                && start.elapsed() < Duration::from_micros(SPIN_MICROS)
            {
                std::thread::yield_now();
            }
        });
    }

    fn instance_loop(&self, mut instance: Box<dyn ModelInstance>) {
        let mut done = None;
        while let Some(batch) = self.next_batch(done.take()) {
            let requests = batch.requests.len();
            let inferences = batch.requests.iter().map(|(p, _)| p.batch_size).sum();
            let enqueued: Vec<Instant> =
                if self.measure { batch.requests.iter().map(|(_, e)| *e).collect() } else { Vec::new() };
            let started = Instant::now();
            self.run_batch(instance.as_mut(), batch);
            let end = Instant::now();
            let latencies = enqueued.into_iter().map(|e| end.saturating_duration_since(e)).collect();
            done = Some(Done { requests, inferences, took: end.saturating_duration_since(started), latencies });
        }
    }

    /// Answers requests whose timeout passed while every instance is busy.
    fn watch_loop(&self) {
        let mut st = self.state.lock();
        loop {
            if st.closed {
                // The instances drain what is left, applying timeouts as they go.
                return;
            }
            self.sweep(&mut st, Instant::now(), false);
            st.watching = st.queues.next_deadline();
            match st.watching {
                Some(d) => drop(self.watch.wait_until(&mut st, d)),
                None => self.watch.wait(&mut st),
            }
        }
    }

    fn run_batch(&self, instance: &mut dyn ModelInstance, batch: Batch) {
        let stats = &*self.stats;
        let Batch { requests, dispatched } = batch;
        // A caller may have gone away between dispatch and now: do not compute for it.
        let (live, gone): (Vec<_>, Vec<_>) = requests.into_iter().partition(|(p, _)| !p.reply.is_closed());
        let mut answers = Vec::with_capacity(live.len() + gone.len());
        for (p, enqueued) in gone {
            stats.record_failure(
                dispatched.duration_since(enqueued).as_nanos() as u64,
                &ServeError::Cancelled(String::new()),
            );
            answers.push((p.seq, p.reply, Err(ServeError::Cancelled(String::new()))));
        }
        if !live.is_empty() {
            self.execute(instance, live, dispatched, &mut answers);
        }
        if self.ordered {
            self.answer(&mut self.state.lock(), answers);
        } else {
            for (_, reply, answer) in answers {
                let _ = reply.send(answer);
            }
        }
    }

    fn execute(
        &self,
        instance: &mut dyn ModelInstance,
        live: Vec<(Pending, Instant)>,
        dispatched: Instant,
        answers: &mut Vec<(u64, Reply, Answer)>,
    ) {
        let stats = &*self.stats;
        let sizes: Vec<u64> = live.iter().map(|(p, _)| p.batch_size).collect();
        let same_outputs = live.windows(2).all(|w| w[0].0.outputs == w[1].0.outputs);
        let outputs = if same_outputs { live[0].0.outputs.clone() } else { Vec::new() };
        let mut replies = Vec::with_capacity(live.len());
        let mut inputs = Vec::with_capacity(live.len());
        for (p, enqueued) in live {
            inputs.push(p.inputs);
            replies.push((p.seq, p.reply, dispatched.duration_since(enqueued).as_nanos() as u64));
        }
        stats.executing.fetch_add(1, Relaxed);
        let mut padded = None;
        let result = merge_inputs(inputs, &self.padding).and_then(|merged| {
            padded = merged.padded;
            std::panic::catch_unwind(AssertUnwindSafe(|| instance.execute(merged.inputs, &outputs)))
                .unwrap_or_else(|_| Err(ServeError::Internal(format!("model {} panicked while executing", self.label))))
        });
        stats.executing.fetch_sub(1, Relaxed);
        let result = result.and_then(|out| {
            let ExecOutput { outputs, compute_input_ns, compute_infer_ns, compute_output_ns } = out;
            stats.record_execution(sizes.iter().sum(), compute_input_ns, compute_infer_ns, compute_output_ns);
            let parts = split_outputs(outputs, &sizes, &self.padding, padded.as_ref())?;
            Ok((parts, Timings { queue_ns: 0, compute_input_ns, compute_infer_ns, compute_output_ns }))
        });
        match result {
            Ok((parts, t)) => {
                for ((seq, reply, queue_ns), outputs) in replies.into_iter().zip(parts) {
                    stats.record_request_compute(queue_ns, t.compute_input_ns, t.compute_infer_ns, t.compute_output_ns);
                    answers.push((seq, reply, Ok(Executed { outputs, timings: Timings { queue_ns, ..t } })));
                }
            }
            Err(e) => answers.extend(replies.into_iter().map(|(seq, reply, _)| (seq, reply, Err(e.clone())))),
        }
    }
}

const SPIN_MICROS: u64 = 50;

#[cfg(test)]
mod tests;
