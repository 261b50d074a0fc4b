//! Per model-version counters, updated with atomics on the request path and read as Triton's
//! statistics answer and as Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sluice_types::api::{BatchStats, InferenceStats, ModelStatistics, StatDuration};
use sluice_types::prom::Histogram;
use sluice_types::ServeError;

#[derive(Default)]
pub struct Duration {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Duration {
    pub fn record(&self, ns: u64) {
        self.count.fetch_add(1, Relaxed);
        self.ns.fetch_add(ns, Relaxed);
    }

    pub fn get(&self) -> StatDuration {
        StatDuration { count: self.count.load(Relaxed), ns: self.ns.load(Relaxed) }
    }
}

#[derive(Default)]
struct BatchCounters {
    input: Duration,
    infer: Duration,
    output: Duration,
}

/// Failure reasons as Triton's `nv_inference_request_failure{reason}` names them.
pub const FAILURE_REASONS: [&str; 4] = ["REJECTED", "CANCELED", "BACKEND", "OTHER"];

pub struct ModelStats {
    pub success: Duration,
    pub fail: Duration,
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
    pub inference_count: AtomicU64,
    pub execution_count: AtomicU64,
    pub pending: AtomicI64,
    /// Batches executing right now (busy instances).
    pub executing: AtomicI64,
    last_inference_ms: AtomicU64,
    failures: [AtomicU64; 4],
    batches: Mutex<BTreeMap<u64, BatchCounters>>,
    pub request_latency: Histogram,
    pub queue_latency: Histogram,
    pub compute_latency: Histogram,
}

impl Default for ModelStats {
    fn default() -> Self {
        ModelStats {
            success: Duration::default(),
            fail: Duration::default(),
            queue: Duration::default(),
            compute_input: Duration::default(),
            compute_infer: Duration::default(),
            compute_output: Duration::default(),
            inference_count: AtomicU64::default(),
            execution_count: AtomicU64::default(),
            pending: AtomicI64::default(),
            executing: AtomicI64::default(),
            last_inference_ms: AtomicU64::default(),
            failures: Default::default(),
            batches: Mutex::default(),
            request_latency: Histogram::latency(),
            queue_latency: Histogram::latency(),
            compute_latency: Histogram::latency(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl ModelStats {
    /// One batch execution of `batch_size` inferences.
    pub fn record_execution(&self, batch_size: u64, input_ns: u64, infer_ns: u64, output_ns: u64) {
        self.execution_count.fetch_add(1, Relaxed);
        self.inference_count.fetch_add(batch_size, Relaxed);
        self.last_inference_ms.store(now_ms(), Relaxed);
        self.compute_latency.observe_ns(input_ns + infer_ns + output_ns);
        let mut b = self.batches.lock();
        let c = b.entry(batch_size).or_default();
        c.input.record(input_ns);
        c.infer.record(infer_ns);
        c.output.record(output_ns);
    }

    /// The per-request share of an execution.
    pub fn record_request_compute(&self, queue_ns: u64, input_ns: u64, infer_ns: u64, output_ns: u64) {
        self.queue.record(queue_ns);
        self.queue_latency.observe_ns(queue_ns);
        self.compute_input.record(input_ns);
        self.compute_infer.record(infer_ns);
        self.compute_output.record(output_ns);
    }

    pub fn record_success(&self, total_ns: u64) {
        self.success.record(total_ns);
        self.request_latency.observe_ns(total_ns);
    }

    pub fn record_failure(&self, total_ns: u64, err: &ServeError) {
        self.fail.record(total_ns);
        let reason = err.failure_reason();
        if let Some(i) = FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.failures[i].fetch_add(1, Relaxed);
        }
    }

    pub fn failures(&self) -> [(&'static str, u64); 4] {
        std::array::from_fn(|i| (FAILURE_REASONS[i], self.failures[i].load(Relaxed)))
    }

    /// Executions per batch size, ascending by size.
    pub fn batch_size_counts(&self) -> Vec<(u64, u64)> {
        self.batches.lock().iter().map(|(&size, c)| (size, c.infer.get().count)).collect()
    }

    pub fn snapshot(&self, name: &str, version: &str) -> ModelStatistics {
        let batch_stats = self
            .batches
            .lock()
            .iter()
            .map(|(&batch_size, c)| BatchStats {
                batch_size,
                compute_input: c.input.get(),
                compute_infer: c.infer.get(),
                compute_output: c.output.get(),
            })
            .collect();
        ModelStatistics {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: self.last_inference_ms.load(Relaxed),
            inference_count: self.inference_count.load(Relaxed),
            execution_count: self.execution_count.load(Relaxed),
            inference_stats: InferenceStats {
                success: self.success.get(),
                fail: self.fail.get(),
                queue: self.queue.get(),
                compute_input: self.compute_input.get(),
                compute_infer: self.compute_infer.get(),
                compute_output: self.compute_output.get(),
                cache_hit: StatDuration::default(),
                cache_miss: StatDuration::default(),
            },
            response_stats: Default::default(),
            batch_stats,
            memory_usage: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_has_batch_stats() {
        let s = ModelStats::default();
        s.record_execution(4, 10, 20, 30);
        s.record_execution(4, 1, 2, 3);
        s.record_execution(1, 1, 2, 3);
        let snap = s.snapshot("m", "1");
        assert_eq!(snap.inference_count, 9);
        assert_eq!(snap.execution_count, 3);
        assert_eq!(snap.batch_stats.len(), 2);
        assert_eq!(snap.batch_stats[1].batch_size, 4);
        assert_eq!(snap.batch_stats[1].compute_infer, StatDuration { count: 2, ns: 22 });
        s.record_failure(5, &ServeError::Cancelled("x".into()));
        assert_eq!(s.failures()[1], ("CANCELED", 1));
    }
}
