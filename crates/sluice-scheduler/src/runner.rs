//! A pool of model instances, each on its own OS thread, fed from one bounded queue.
//! Requests are answered through a oneshot; a request whose caller has gone away before it runs
//! is dropped and counted as cancelled, never computed.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use sluice_backend::{ExecOutput, ModelInstance};
use sluice_types::{ServeError, Tensor, Timings};
use tokio::sync::oneshot;

use crate::stats::ModelStats;

/// What a request gets back from execution.
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub timings: Timings,
}

struct Work {
    inputs: Vec<Tensor>,
    outputs: Vec<String>,
    batch_size: u64,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Executed, ServeError>>,
}

struct Inner {
    label: String,
    /// The only sender: taking it out closes the queue, after which the threads drain what is
    /// queued and exit.
    tx: RwLock<Option<flume::Sender<Work>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<ModelStats>,
}

/// Cloneable handle to a model version's instance pool.
#[derive(Clone)]
pub struct ModelRunner {
    inner: Arc<Inner>,
}

impl ModelRunner {
    /// Starts one thread per instance. `label` names the threads and errors (`model:version`).
    pub fn start(
        label: String,
        instances: Vec<Box<dyn ModelInstance>>,
        queue_capacity: usize,
        stats: Arc<ModelStats>,
    ) -> Result<ModelRunner, ServeError> {
        let (tx, rx) = flume::bounded::<Work>(queue_capacity.max(1));
        let mut threads = Vec::new();
        for (i, instance) in instances.into_iter().enumerate() {
            let rx = rx.clone();
            let stats = stats.clone();
            let label2 = label.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sluice-{label}-{i}"))
                .spawn(move || instance_loop(&label2, instance, rx, &stats))
                .map_err(|e| ServeError::Internal(format!("cannot start a thread for {label}: {e}")))?;
            threads.push(handle);
        }
        Ok(ModelRunner {
            inner: Arc::new(Inner { label, tx: RwLock::new(Some(tx)), threads: Mutex::new(threads), stats }),
        })
    }

    pub fn stats(&self) -> &Arc<ModelStats> {
        &self.inner.stats
    }

    /// Queues a request and waits for its result. Dropping the returned future before the
    /// request runs cancels it.
    pub async fn submit(
        &self,
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
        batch_size: u64,
    ) -> Result<Executed, ServeError> {
        let (reply, rx) = oneshot::channel();
        let work = Work { inputs, outputs, batch_size, enqueued: Instant::now(), reply };
        {
            let guard = self.inner.tx.read();
            let tx = guard
                .as_ref()
                .ok_or_else(|| ServeError::Unavailable(format!("model {} is unloading", self.inner.label)))?;
            self.inner.stats.pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = tx.try_send(work) {
                self.inner.stats.pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                return Err(match e {
                    flume::TrySendError::Full(_) => ServeError::ResourceExhausted {
                        message: format!(
                            "the queue of model {} is full ({} requests)",
                            self.inner.label,
                            tx.capacity().unwrap_or(0)
                        ),
                        retry_after_ms: 100,
                    },
                    flume::TrySendError::Disconnected(_) => {
                        ServeError::Unavailable(format!("model {} is unloading", self.inner.label))
                    }
                });
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(ServeError::Internal(format!("model {} dropped a request without answering it", self.inner.label)))
        })
    }

    /// Closes the queue, lets the instances finish what was queued, and waits for their threads.
    pub async fn shutdown(&self) {
        self.inner.tx.write().take();
        let threads: Vec<_> = std::mem::take(&mut *self.inner.threads.lock());
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Under load the next request usually arrives within microseconds: yielding briefly before
/// parking saves a futex sleep and wake-up per request, the largest cost on the request path
/// of a small model.
fn next_work(rx: &flume::Receiver<Work>) -> Option<Work> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(w) => return Some(w),
            Err(flume::TryRecvError::Disconnected) => return None,
            Err(flume::TryRecvError::Empty) if start.elapsed() < std::time::Duration::from_micros(SPIN_MICROS) => {
                std::thread::yield_now()
            }
            Err(flume::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

const SPIN_MICROS: u64 = 50;

fn instance_loop(label: &str, mut instance: Box<dyn ModelInstance>, rx: flume::Receiver<Work>, stats: &ModelStats) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Some(work) = next_work(&rx) {
        stats.pending.fetch_sub(1, Relaxed);
        let queue_ns = work.enqueued.elapsed().as_nanos() as u64;
        if work.reply.is_closed() {
            stats.record_failure(queue_ns, &ServeError::Cancelled(String::new()));
            continue;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| instance.execute(work.inputs, &work.outputs)))
            .unwrap_or_else(|_| Err(ServeError::Internal(format!("model {label} panicked while executing"))));
        let result = result.map(|ExecOutput { outputs, compute_input_ns, compute_infer_ns, compute_output_ns }| {
            stats.record_execution(work.batch_size, compute_input_ns, compute_infer_ns, compute_output_ns);
            stats.record_request_compute(queue_ns, compute_input_ns, compute_infer_ns, compute_output_ns);
            Executed { outputs, timings: Timings { queue_ns, compute_input_ns, compute_infer_ns, compute_output_ns } }
        });
        let _ = work.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Doubler(Arc<AtomicUsize>);

    impl ModelInstance for Doubler {
        fn execute(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<ExecOutput, ServeError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            let v: Vec<f32> = inputs[0].to_vec::<f32>().unwrap().iter().map(|x| x * 2.0).collect();
            Ok(ExecOutput { outputs: vec![Tensor::from_vec("y", vec![v.len() as i64], v)], ..Default::default() })
        }
    }

    fn runner(cap: usize) -> (ModelRunner, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let r = ModelRunner::start("m:1".into(), vec![Box::new(Doubler(calls.clone()))], cap, Arc::default()).unwrap();
        (r, calls)
    }

    #[tokio::test]
    async fn executes_and_counts() {
        let (r, calls) = runner(4);
        let out = r.submit(vec![Tensor::from_vec("x", vec![2], vec![1f32, 2.0])], vec![], 1).await.unwrap();
        assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.stats().snapshot("m", "1").execution_count, 1);
        r.shutdown().await;
        let e = r.submit(vec![], vec![], 1).await.unwrap_err();
        assert!(matches!(e, ServeError::Unavailable(_)));
    }

    #[tokio::test]
    async fn full_queue_is_resource_exhausted() {
        let (r, _) = runner(1);
        let x = || vec![Tensor::from_vec("x", vec![1], vec![1f32])];
        let mut futs = Vec::new();
        for _ in 0..4 {
            futs.push(tokio::spawn({
                let r = r.clone();
                let inp = x();
                async move { r.submit(inp, vec![], 1).await }
            }));
        }
        let mut exhausted = 0;
        for f in futs {
            if let Err(ServeError::ResourceExhausted { .. }) = f.await.unwrap() {
                exhausted += 1;
            }
        }
        assert!(exhausted >= 1, "a queue of one must refuse some of four concurrent requests");
    }

    #[tokio::test]
    async fn cancelled_request_is_not_executed() {
        let (r, calls) = runner(8);
        let x = || vec![Tensor::from_vec("x", vec![1], vec![1f32])];
        // The first occupies the instance; the second is queued and then abandoned.
        let first = tokio::spawn({
            let r = r.clone();
            let inp = x();
            async move { r.submit(inp, vec![], 1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let second = r.submit(x(), vec![], 1);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1), second).await;
        first.await.unwrap().unwrap();
        r.shutdown().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.stats().failures()[1], ("CANCELED", 1));
    }
}
