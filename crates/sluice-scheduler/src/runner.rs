//! The scheduler of one model version: an actor (a tokio task) that owns the queues and forms
//! batches with the [`BatchPolicy`], and a pool of model instances, each on its own OS thread,
//! that execute them. A request whose timeout passes is answered by the actor at that moment,
//! whatever is running; a request whose caller went away is dropped before it runs and counted
//! as cancelled.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use sluice_backend::{ExecOutput, ModelInstance};
use sluice_types::{ModelConfig, ServeError, Tensor, Timings};
use tokio::sync::{mpsc, oneshot};

use crate::adaptive::AdaptiveController;
use crate::batch::{merge_inputs, shape_key, split_outputs, Padding};
use crate::policy::{BatchPolicy, Decision};
use crate::queue::{Queues, Refusal};
use crate::stats::ModelStats;
use crate::timer::PreciseTimer;

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

struct Pending {
    inputs: Vec<Tensor>,
    outputs: Vec<String>,
    batch_size: u64,
    reply: oneshot::Sender<Result<Executed, ServeError>>,
}

struct Arrival {
    pending: Pending,
    shape_key: u64,
    bytes: usize,
    priority: Option<u64>,
    timeout: Option<Duration>,
}

struct Batch {
    requests: Vec<(Pending, Instant)>,
    dispatched: Instant,
}

/// An instance's word that it finished a batch (and is free again), with what adaptive
/// batching measures: the batch's inferences, how long it took, and each request's latency
/// (queue + compute; only when measuring).
struct Done {
    requests: usize,
    inferences: u64,
    took: Duration,
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

struct Inner {
    label: String,
    /// The only sender: taking it out closes the queue; the actor then runs what is queued,
    /// stops the instances and finishes.
    tx: RwLock<Option<mpsc::Sender<Arrival>>>,
    finished: Mutex<Option<oneshot::Receiver<Vec<JoinHandle<()>>>>>,
    stats: Arc<ModelStats>,
    /// Ragged inputs and pad values, from the config (see `batch`).
    padding: Arc<Padding>,
}

/// Cloneable handle to a model version's scheduler.
#[derive(Clone)]
pub struct ModelRunner {
    inner: Arc<Inner>,
}

impl ModelRunner {
    /// Starts the actor and one thread per instance. `label` names them (`model:version`).
    pub fn start(
        label: String,
        config: &ModelConfig,
        instances: Vec<Box<dyn ModelInstance>>,
        limits: QueueLimits,
        stats: Arc<ModelStats>,
    ) -> Result<ModelRunner, ServeError> {
        let policy = BatchPolicy::from_config(config);
        let padding = Arc::new(Padding::from_config(config)?);
        let n = instances.len().max(1);
        let (batch_tx, batch_rx) = flume::bounded::<Batch>(n);
        let adaptive = AdaptiveController::from_config(config, n)
            .map_err(|m| ServeError::invalid(format!("model {label}: {m}")))?;
        let measure = adaptive.is_some();
        // One message per batch, at most one batch per instance: `n` never blocks.
        let (done_tx, done_rx) = mpsc::channel::<Done>(n);
        let mut threads = Vec::new();
        for (i, instance) in instances.into_iter().enumerate() {
            let (rx, done, stats, name) = (batch_rx.clone(), done_tx.clone(), stats.clone(), label.clone());
            let padding = padding.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sluice-{label}-{i}"))
                .spawn(move || instance_loop(&name, instance, rx, done, &stats, &padding, measure))
                .map_err(|e| ServeError::Internal(format!("cannot start a thread for {label}: {e}")))?;
            threads.push(handle);
        }
        // The actor's inbox only needs to absorb bursts; the queues enforce the real limits.
        let (tx, rx) = mpsc::channel(256);
        let (finished_tx, finished_rx) = oneshot::channel();
        let actor = Actor {
            label: label.clone(),
            queues: Queues::from_config(config, limits.max_requests, limits.max_bytes),
            policy,
            idle: threads.len(),
            batch_tx: Some(batch_tx),
            stats: stats.clone(),
            adaptive,
            in_flight: 0,
        };
        tokio::spawn(actor.run(rx, done_rx, threads, finished_tx));
        Ok(ModelRunner {
            inner: Arc::new(Inner {
                label,
                tx: RwLock::new(Some(tx)),
                finished: Mutex::new(Some(finished_rx)),
                stats,
                padding,
            }),
        })
    }

    pub fn stats(&self) -> &Arc<ModelStats> {
        &self.inner.stats
    }

    /// Queues a request and waits for its result. Dropping the returned future before the
    /// request runs cancels it.
    pub async fn submit(&self, s: Submission) -> Result<Executed, ServeError> {
        let (reply, rx) = oneshot::channel();
        let arrival = Arrival {
            shape_key: shape_key(&s.inputs, &self.inner.padding),
            bytes: s.inputs.iter().map(Tensor::byte_size).sum(),
            priority: s.priority,
            timeout: s.timeout,
            pending: Pending { inputs: s.inputs, outputs: s.outputs, batch_size: s.batch_size, reply },
        };
        {
            let guard = self.inner.tx.read();
            let tx = guard.as_ref().ok_or_else(|| self.unloading())?;
            self.inner.stats.pending.fetch_add(1, Relaxed);
            if let Err(e) = tx.try_send(arrival) {
                self.inner.stats.pending.fetch_sub(1, Relaxed);
                return Err(match e {
                    mpsc::error::TrySendError::Full(_) => ServeError::ResourceExhausted {
                        message: format!("model {} is overloaded: its scheduler inbox is full", self.inner.label),
                        retry_after_ms: 100,
                    },
                    mpsc::error::TrySendError::Closed(_) => self.unloading(),
                });
            }
        }
        rx.await.unwrap_or_else(|_| Err(self.unloading()))
    }

    /// True once [`ModelRunner::shutdown`] began: this version takes no more requests (a reload
    /// or unload replaced it), so a caller may look the model up again.
    pub fn is_closed(&self) -> bool {
        self.inner.tx.read().as_ref().is_none_or(|tx| tx.is_closed())
    }

    fn unloading(&self) -> ServeError {
        ServeError::Unavailable(format!("model {} is unloading", self.inner.label))
    }

    /// Closes the queue, lets the instances finish what was queued, and waits for them.
    pub async fn shutdown(&self) {
        self.inner.tx.write().take();
        let finished = self.inner.finished.lock().take();
        if let Some(rx) = finished {
            if let Ok(threads) = rx.await {
                let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
            }
        }
    }
}

struct Actor {
    label: String,
    queues: Queues<Pending>,
    policy: BatchPolicy,
    idle: usize,
    batch_tx: Option<flume::Sender<Batch>>,
    stats: Arc<ModelStats>,
    /// `dynamic_batching { adaptive { .. } }`: sets the policy's cap and delay.
    adaptive: Option<AdaptiveController>,
    /// Requests sent to instances and not finished.
    in_flight: usize,
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Arrival>,
        mut done_rx: mpsc::Receiver<Done>,
        threads: Vec<JoinHandle<()>>,
        finished: oneshot::Sender<Vec<JoinHandle<()>>>,
    ) {
        let mut open = true;
        let mut timer = match PreciseTimer::new(format!("sluice-timer-{}", self.label)) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(model = %self.label, error = %e, "no precise timer thread; queue delays round up to 1 ms");
                None
            }
        };
        loop {
            let now = Instant::now();
            let wake = self.dispatch(now, !open);
            if !open && self.queues.is_empty() {
                break;
            }
            if let Some(t) = timer.as_mut() {
                t.clear_fired(now);
                t.set(wake);
            }
            let sleep = async {
                match (wake, &timer) {
                    (Some(_), Some(t)) => t.fired().await,
                    (Some(w), None) => tokio::time::sleep_until(w.into()).await,
                    (None, _) => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(done) = done_rx.recv() => self.finished(done),
                msg = rx.recv(), if open => match msg {
                    Some(a) => self.enqueue(a),
                    None => open = false,
                },
                _ = sleep => {}
            }
        }
        // Instances finish their current batch, see the closed channel and exit.
        self.batch_tx = None;
        let _ = finished.send(threads);
    }

    /// An instance is free again.
    fn finished(&mut self, done: Done) {
        self.idle += 1;
        self.in_flight = self.in_flight.saturating_sub(done.requests);
        if let Some(a) = &mut self.adaptive {
            a.observe_execution(done.inferences, done.took);
            done.latencies.into_iter().for_each(|l| a.observe_latency(l));
        }
    }

    fn enqueue(&mut self, a: Arrival) {
        let batch_size = a.pending.batch_size;
        let pushed =
            self.queues.push(Instant::now(), a.pending, batch_size, a.shape_key, a.bytes, a.priority, a.timeout);
        if let Some(c) = &mut self.adaptive {
            c.observe_arrival(Instant::now(), batch_size, self.queues.len() + self.in_flight);
        }
        if let Err((p, refusal)) = pushed {
            self.stats.pending.fetch_sub(1, Relaxed);
            let err = match refusal {
                Refusal::Full(what) => ServeError::ResourceExhausted {
                    message: format!("the queue of model {} is full ({what})", self.label),
                    retry_after_ms: 1000,
                },
                Refusal::BadPriority(prio, levels) => ServeError::invalid(format!(
                    "request parameter 'priority' is {prio}, but model {} has priority levels 1..={levels}",
                    self.label
                )),
            };
            let _ = p.reply.send(Err(err));
        }
    }

    /// Answers timed-out and cancelled requests, sends batches to idle instances, and returns
    /// when to look again. `draining`: no more requests will come, so do not wait for any.
    fn dispatch(&mut self, now: Instant, draining: bool) -> Option<Instant> {
        for (p, enqueued) in self.queues.expire(now) {
            self.stats.pending.fetch_sub(1, Relaxed);
            let waited = now.duration_since(enqueued);
            let _ = p.reply.send(Err(ServeError::Timeout(format!(
                "request timed out after {} us in the queue of model {}",
                waited.as_micros(),
                self.label
            ))));
        }
        for (_, enqueued) in self.queues.remove_where(|p| p.reply.is_closed()) {
            self.stats.pending.fetch_sub(1, Relaxed);
            let ns = now.duration_since(enqueued).as_nanos() as u64;
            self.stats.record_failure(ns, &ServeError::Cancelled(String::new()));
        }
        let mut wake = None;
        while self.idle > 0 {
            if let Some(a) = &self.adaptive {
                a.apply(&mut self.policy, self.in_flight);
            }
            let candidates = self.queues.candidates(self.policy.max_batch_size as usize + 1);
            let count = match self.policy.decide(now, &candidates) {
                Decision::Dispatch { count } => count,
                Decision::WaitUntil(_) if draining => candidates.len(),
                Decision::WaitUntil(t) => {
                    wake = Some(t);
                    break;
                }
                Decision::Idle => break,
            };
            let requests = self.queues.take(count);
            self.stats.pending.fetch_sub(requests.len() as i64, Relaxed);
            let sent = requests.len();
            let Some(tx) = &self.batch_tx else { break };
            if let Err(e) = tx.try_send(Batch { requests, dispatched: now }) {
                // Cannot happen while `idle` is counted right; answer rather than lose them.
                for (p, _) in e.into_inner().requests {
                    let _ = p.reply.send(Err(ServeError::Internal(format!("model {} lost an instance", self.label))));
                }
                break;
            }
            self.idle -= 1;
            self.in_flight += sent;
        }
        match (wake, self.queues.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Under load the next batch usually arrives within microseconds: yielding briefly before
/// parking saves a futex sleep and wake-up per batch, the largest fixed cost of a small model.
fn next_batch(rx: &flume::Receiver<Batch>) -> Option<Batch> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(b) => return Some(b),
            Err(flume::TryRecvError::Disconnected) => return None,
            Err(flume::TryRecvError::Empty) if start.elapsed() < Duration::from_micros(SPIN_MICROS) => {
                std::thread::yield_now()
            }
            Err(flume::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

const SPIN_MICROS: u64 = 50;

fn instance_loop(
    label: &str,
    mut instance: Box<dyn ModelInstance>,
    rx: flume::Receiver<Batch>,
    done: mpsc::Sender<Done>,
    stats: &ModelStats,
    padding: &Padding,
    measure: bool,
) {
    while let Some(batch) = next_batch(&rx) {
        let requests = batch.requests.len();
        let inferences = batch.requests.iter().map(|(p, _)| p.batch_size).sum();
        let enqueued: Vec<Instant> =
            if measure { batch.requests.iter().map(|(_, e)| *e).collect() } else { Vec::new() };
        let started = Instant::now();
        run_batch(label, instance.as_mut(), batch, stats, padding);
        let end = Instant::now();
        let latencies = enqueued.into_iter().map(|e| end.saturating_duration_since(e)).collect();
        let took = end.saturating_duration_since(started);
        if done.blocking_send(Done { requests, inferences, took, latencies }).is_err() {
            break;
        }
    }
}

fn run_batch(label: &str, instance: &mut dyn ModelInstance, batch: Batch, stats: &ModelStats, padding: &Padding) {
    let Batch { requests, dispatched } = batch;
    // A caller may have gone away between dispatch and now: do not compute for it.
    let (live, gone): (Vec<_>, Vec<_>) = requests.into_iter().partition(|(p, _)| !p.reply.is_closed());
    for (_, enqueued) in gone {
        stats.record_failure(
            dispatched.duration_since(enqueued).as_nanos() as u64,
            &ServeError::Cancelled(String::new()),
        );
    }
    if live.is_empty() {
        return;
    }
    let sizes: Vec<u64> = live.iter().map(|(p, _)| p.batch_size).collect();
    let same_outputs = live.windows(2).all(|w| w[0].0.outputs == w[1].0.outputs);
    let outputs = if same_outputs { live[0].0.outputs.clone() } else { Vec::new() };
    let mut replies = Vec::with_capacity(live.len());
    let mut inputs = Vec::with_capacity(live.len());
    for (p, enqueued) in live {
        inputs.push(p.inputs);
        replies.push((p.reply, dispatched.duration_since(enqueued).as_nanos() as u64));
    }
    stats.executing.fetch_add(1, Relaxed);
    let mut padded = None;
    let result = merge_inputs(inputs, padding).and_then(|merged| {
        padded = merged.padded;
        std::panic::catch_unwind(AssertUnwindSafe(|| instance.execute(merged.inputs, &outputs)))
            .unwrap_or_else(|_| Err(ServeError::Internal(format!("model {label} panicked while executing"))))
    });
    stats.executing.fetch_sub(1, Relaxed);
    let ExecOutput { outputs, compute_input_ns, compute_infer_ns, compute_output_ns } = match result {
        Ok(out) => out,
        Err(e) => {
            for (reply, _) in replies {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    stats.record_execution(sizes.iter().sum(), compute_input_ns, compute_infer_ns, compute_output_ns);
    match split_outputs(outputs, &sizes, padding, padded.as_ref()) {
        Ok(parts) => {
            for ((reply, queue_ns), outputs) in replies.into_iter().zip(parts) {
                stats.record_request_compute(queue_ns, compute_input_ns, compute_infer_ns, compute_output_ns);
                let timings = Timings { queue_ns, compute_input_ns, compute_infer_ns, compute_output_ns };
                let _ = reply.send(Ok(Executed { outputs, timings }));
            }
        }
        Err(e) => {
            for (reply, _) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles its input and records the batch sizes it saw.
    struct Doubler {
        batches: Arc<Mutex<Vec<i64>>>,
        delay: Duration,
    }

    impl ModelInstance for Doubler {
        fn execute(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<ExecOutput, ServeError> {
            self.batches.lock().push(inputs[0].shape[0]);
            std::thread::sleep(self.delay);
            let v: Vec<f32> = inputs[0].to_vec::<f32>().unwrap().iter().map(|x| x * 2.0).collect();
            Ok(ExecOutput { outputs: vec![Tensor::from_vec("y", inputs[0].shape.clone(), v)], ..Default::default() })
        }
    }

    fn config(pbtxt_like: Option<sluice_types::config::DynamicBatching>) -> ModelConfig {
        ModelConfig { name: "m".into(), max_batch_size: 8, dynamic_batching: pbtxt_like, ..Default::default() }
    }

    fn runner(cfg: &ModelConfig, delay_ms: u64, limits: QueueLimits) -> (ModelRunner, Arc<Mutex<Vec<i64>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let inst = Doubler { batches: batches.clone(), delay: Duration::from_millis(delay_ms) };
        let r = ModelRunner::start("m:1".into(), cfg, vec![Box::new(inst)], limits, Arc::default()).unwrap();
        (r, batches)
    }

    /// Submits `n` requests concurrently.
    fn submit_all(r: &ModelRunner, n: usize) -> Vec<tokio::task::JoinHandle<Result<Executed, ServeError>>> {
        (0..n)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move { r.submit(sub(i as f32)).await })
            })
            .collect()
    }

    fn sub(x: f32) -> Submission {
        Submission { inputs: vec![Tensor::from_vec("x", vec![1, 1], vec![x])], batch_size: 1, ..Default::default() }
    }

    #[tokio::test]
    async fn concurrent_requests_share_executions_and_get_their_own_rows() {
        let db = sluice_types::config::DynamicBatching { max_queue_delay_microseconds: 20_000, ..Default::default() };
        let (r, batches) = runner(&config(Some(db)), 1, QueueLimits::default());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move { r.submit(sub(i as f32)).await })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let out = h.await.unwrap().unwrap();
            assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
            assert_eq!(out.outputs[0].shape, vec![1, 1]);
        }
        let b = batches.lock().clone();
        assert_eq!(b.iter().sum::<i64>(), 8);
        assert!(b.len() < 8, "eight concurrent requests ran in {} executions: {b:?}", b.len());
        let snap = r.stats().snapshot("m", "1");
        assert_eq!(snap.inference_count, 8);
        assert_eq!(snap.execution_count, b.len() as u64);
        assert!(!r.is_closed());
        r.shutdown().await;
        assert!(r.is_closed());
        assert!(matches!(r.submit(sub(1.0)).await, Err(ServeError::Unavailable(_))));
    }

    #[tokio::test]
    async fn without_dynamic_batching_one_request_per_execution() {
        let (r, batches) = runner(&config(None), 0, QueueLimits::default());
        let hs = submit_all(&r, 4);
        for h in hs {
            h.await.unwrap().unwrap();
        }
        assert_eq!(*batches.lock(), vec![1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn full_queue_is_resource_exhausted() {
        let (r, _) = runner(&config(None), 50, QueueLimits { max_requests: 1, max_bytes: 0 });
        let hs = submit_all(&r, 4);
        let mut exhausted = 0;
        for h in hs {
            if let Err(ServeError::ResourceExhausted { .. }) = h.await.unwrap() {
                exhausted += 1;
            }
        }
        assert!(exhausted >= 1, "a queue of one must refuse some of four concurrent requests");
    }

    #[tokio::test]
    async fn queued_request_times_out_while_the_instance_is_busy() {
        let db = sluice_types::config::DynamicBatching {
            default_queue_policy: Some(sluice_types::config::QueuePolicy {
                allow_timeout_override: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (r, batches) = runner(&config(Some(db)), 300, QueueLimits::default());
        let busy = tokio::spawn({
            let r = r.clone();
            async move { r.submit(sub(1.0)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = r.submit(Submission { timeout: Some(Duration::from_millis(30)), ..sub(2.0) }).await.unwrap_err();
        assert!(matches!(e, ServeError::Timeout(_)), "{e}");
        // Answered when its own timeout passed, while the 300 ms execution is still running.
        assert!(!busy.is_finished(), "the timeout was answered only after the running batch");
        busy.await.unwrap().unwrap();
        assert_eq!(batches.lock().len(), 1, "the timed-out request never ran");
    }

    #[tokio::test]
    async fn cancelled_request_is_not_executed() {
        let (r, batches) = runner(&config(None), 50, QueueLimits::default());
        let first = tokio::spawn({
            let r = r.clone();
            async move { r.submit(sub(1.0)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = tokio::time::timeout(Duration::from_millis(5), r.submit(sub(2.0))).await;
        first.await.unwrap().unwrap();
        let third = r.submit(sub(3.0)).await.unwrap();
        assert_eq!(third.outputs[0].to_vec::<f32>().unwrap(), vec![6.0]);
        assert_eq!(*batches.lock(), vec![1, 1], "the abandoned request was not computed");
        assert_eq!(r.stats().failures()[1], ("CANCELED", 1));
    }

    #[tokio::test]
    async fn bad_priority_is_invalid() {
        let db = sluice_types::config::DynamicBatching {
            priority_levels: 2,
            default_priority_level: 1,
            ..Default::default()
        };
        let (r, _) = runner(&config(Some(db)), 0, QueueLimits::default());
        let e = r.submit(Submission { priority: Some(5), ..sub(1.0) }).await.unwrap_err();
        assert!(e.to_string().contains("priority"), "{e}");
        r.submit(Submission { priority: Some(2), ..sub(1.0) }).await.unwrap();
    }

    /// Doubles its input; an execution costs 2 ms + 0.25 ms per row (affine in the batch size).
    struct Affine {
        batches: Arc<Mutex<Vec<i64>>>,
    }

    impl ModelInstance for Affine {
        fn execute(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<ExecOutput, ServeError> {
            let rows = inputs[0].shape[0];
            self.batches.lock().push(rows);
            std::thread::sleep(Duration::from_micros(2000 + 250 * rows as u64));
            let v: Vec<f32> = inputs[0].to_vec::<f32>().unwrap().iter().map(|x| x * 2.0).collect();
            Ok(ExecOutput { outputs: vec![Tensor::from_vec("y", inputs[0].shape.clone(), v)], ..Default::default() })
        }
    }

    fn adaptive(max_p99_latency_ms: &str) -> sluice_types::config::DynamicBatching {
        sluice_types::config::DynamicBatching {
            adaptive: Some([("max_p99_latency_ms", max_p99_latency_ms)].into_iter().collect()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn adaptive_runner_batches_a_burst_and_keeps_answering_single_requests() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let inst = Affine { batches: batches.clone() };
        let cfg = config(Some(adaptive("200")));
        let r = ModelRunner::start("m:1".into(), &cfg, vec![Box::new(inst)], QueueLimits::default(), Arc::default())
            .unwrap();
        // Cold start (no delay configured), then measured costs of single requests.
        for i in 0..3 {
            let out = r.submit(sub(i as f32)).await.unwrap();
            assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
        }
        // Two bursts of 32 concurrent requests.
        for _ in 0..2 {
            let hs: Vec<_> = (0..32)
                .map(|i| {
                    let r = r.clone();
                    tokio::spawn(async move { (i, r.submit(sub(i as f32)).await) })
                })
                .collect();
            for h in hs {
                let (i, out) = h.await.unwrap();
                assert_eq!(out.unwrap().outputs[0].to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
            }
        }
        // Then one client alone: each of its requests runs (alone) and comes back.
        for i in 0..3 {
            let out = r.submit(sub(i as f32)).await.unwrap();
            assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
        }
        let b = batches.lock().clone();
        assert_eq!(b.iter().sum::<i64>(), 3 + 64 + 3);
        assert!(b.iter().all(|&n| (1..=8).contains(&n)), "a batch beyond max_batch_size 8: {b:?}");
        let burst = &b[3..b.len() - 3];
        assert!(burst.iter().any(|&n| n > 1), "bursts were not batched: {b:?}");
        assert!(burst.len() < 64, "64 burst requests ran in {} executions: {b:?}", burst.len());
        assert_eq!(b[b.len() - 3..], [1, 1, 1]);
        r.shutdown().await;
    }

    #[tokio::test]
    async fn a_bad_adaptive_block_fails_to_start_naming_the_field() {
        let cfg = config(Some(adaptive("soon")));
        let inst = Doubler { batches: Arc::default(), delay: Duration::ZERO };
        let e = ModelRunner::start("m:1".into(), &cfg, vec![Box::new(inst)], QueueLimits::default(), Arc::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("dynamic_batching.adaptive.max_p99_latency_ms"), "{e}");
    }
}
