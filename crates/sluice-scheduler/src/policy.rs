//! Batch formation as a pure decision over a snapshot of the queue, following Triton's dynamic
//! batcher: requests are taken in priority order, then arrival order; a batch stops at the first
//! request whose shape cannot join it; a preferred batch size is sent as soon as it can be formed,
//! a full batch at once, anything else when the oldest request has waited the maximum delay.
//! Adaptive batching (see [`crate::adaptive`]) sets the cap, the delay and `stop_at` before each
//! decision.

use std::time::{Duration, Instant};

use sluice_types::config::DynamicBatching;
use sluice_types::ModelConfig;

/// How a model's requests are grouped into executions.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPolicy {
    /// Largest number of inferences (sum of request batch sizes) in one execution.
    pub max_batch_size: u64,
    /// Sizes worth waiting for, ascending.
    pub preferred: Vec<u64>,
    /// How long the oldest request may wait for a better batch.
    pub max_delay: Duration,
    /// Whether requests are combined at all (`dynamic_batching` present).
    pub batching: bool,
    /// Send without waiting once the batch holds this many requests: no more are expected
    /// (set by adaptive batching when every request the clients have outstanding is queued).
    pub stop_at: Option<usize>,
}

/// What one queued request looks like to the policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub batch_size: u64,
    /// Requests with equal keys can share an execution (same non-batch dims of every input).
    pub shape_key: u64,
    pub enqueued: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Execute the first `count` candidates now.
    Dispatch { count: usize },
    /// Nothing to send before this instant (unless something new arrives).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

impl BatchPolicy {
    pub fn from_config(config: &ModelConfig) -> BatchPolicy {
        match (&config.dynamic_batching, config.max_batch_size) {
            (Some(db), mbs) if mbs > 0 => BatchPolicy::dynamic(mbs as u64, db),
            _ => BatchPolicy::single(),
        }
    }

    /// One request per execution (models without `dynamic_batching`).
    pub fn single() -> BatchPolicy {
        BatchPolicy { max_batch_size: 1, preferred: vec![], max_delay: Duration::ZERO, batching: false, stop_at: None }
    }

    pub fn dynamic(max_batch_size: u64, db: &DynamicBatching) -> BatchPolicy {
        let mut preferred: Vec<u64> = db
            .preferred_batch_size
            .iter()
            .filter(|&&p| p > 0 && p as u64 <= max_batch_size)
            .map(|&p| p as u64)
            .collect();
        preferred.sort_unstable();
        preferred.dedup();
        BatchPolicy {
            max_batch_size,
            preferred,
            max_delay: Duration::from_micros(db.max_queue_delay_microseconds),
            batching: true,
            stop_at: None,
        }
    }

    /// Decides what to do with the queue (in dispatch order) at `now`.
    pub fn decide(&self, now: Instant, queue: &[Candidate]) -> Decision {
        let Some(first) = queue.first() else { return Decision::Idle };
        if !self.batching {
            return Decision::Dispatch { count: 1 };
        }
        // The longest prefix that fits one execution, and the sizes it passes through.
        let mut total = 0u64;
        let mut count = 0usize;
        let mut best_preferred: Option<usize> = None;
        for c in queue {
            if c.shape_key != first.shape_key || (count > 0 && total + c.batch_size > self.max_batch_size) {
                break;
            }
            total += c.batch_size;
            count += 1;
            if self.preferred.contains(&total) {
                best_preferred = Some(count);
            }
        }
        let blocked = count < queue.len(); // the next request cannot join this batch
        if total >= self.max_batch_size || blocked || self.stop_at.is_some_and(|n| count >= n) {
            return Decision::Dispatch { count };
        }
        let deadline = first.enqueued + self.max_delay;
        if now >= deadline {
            return Decision::Dispatch { count };
        }
        match best_preferred {
            // Waiting cannot make a bigger preferred batch when the largest preferred size is
            // already reached; otherwise send the preferred batch now (Triton's rule).
            Some(n) => Decision::Dispatch { count: n },
            None => Decision::WaitUntil(deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(t0: Instant, sizes: &[u64]) -> Vec<Candidate> {
        sizes.iter().map(|&b| Candidate { batch_size: b, shape_key: 0, enqueued: t0 }).collect()
    }

    fn policy(max: u64, preferred: &[i64], delay_us: u64) -> BatchPolicy {
        BatchPolicy::dynamic(
            max,
            &DynamicBatching {
                preferred_batch_size: preferred.to_vec(),
                max_queue_delay_microseconds: delay_us,
                ..Default::default()
            },
        )
    }

    #[test]
    fn no_delay_sends_what_is_there() {
        let t0 = Instant::now();
        let p = policy(8, &[], 0);
        assert_eq!(p.decide(t0, &[]), Decision::Idle);
        assert_eq!(p.decide(t0, &cands(t0, &[1, 1, 1])), Decision::Dispatch { count: 3 });
    }

    #[test]
    fn full_batch_goes_at_once_and_never_exceeds_max() {
        let t0 = Instant::now();
        let p = policy(4, &[], 1_000_000);
        assert_eq!(p.decide(t0, &cands(t0, &[1, 2, 1, 1])), Decision::Dispatch { count: 3 });
        assert_eq!(p.decide(t0, &cands(t0, &[3, 2])), Decision::Dispatch { count: 1 });
    }

    #[test]
    fn waits_up_to_the_delay_for_a_bigger_batch() {
        let t0 = Instant::now();
        let p = policy(8, &[], 100);
        let q = cands(t0, &[1, 1]);
        assert_eq!(p.decide(t0, &q), Decision::WaitUntil(t0 + Duration::from_micros(100)));
        assert_eq!(p.decide(t0 + Duration::from_micros(100), &q), Decision::Dispatch { count: 2 });
    }

    #[test]
    fn preferred_size_goes_before_the_delay() {
        let t0 = Instant::now();
        let p = policy(8, &[2, 4], 1000);
        assert_eq!(p.decide(t0, &cands(t0, &[1])), Decision::WaitUntil(t0 + Duration::from_micros(1000)));
        assert_eq!(p.decide(t0, &cands(t0, &[1, 1, 1])), Decision::Dispatch { count: 2 });
        assert_eq!(p.decide(t0, &cands(t0, &[1, 1, 1, 1, 1])), Decision::Dispatch { count: 4 });
        // After the delay, everything that fits goes, preferred or not.
        let late = t0 + Duration::from_millis(2);
        assert_eq!(p.decide(late, &cands(t0, &[1, 1, 1])), Decision::Dispatch { count: 3 });
    }

    #[test]
    fn different_shapes_do_not_share_a_batch() {
        let t0 = Instant::now();
        let p = policy(8, &[], 1000);
        let mut q = cands(t0, &[1, 1, 1]);
        q[2].shape_key = 7;
        assert_eq!(p.decide(t0, &q), Decision::Dispatch { count: 2 });
        assert_eq!(p.decide(t0, &q[2..]), Decision::WaitUntil(t0 + Duration::from_millis(1)));
    }

    #[test]
    fn stop_at_sends_without_waiting_for_the_delay() {
        let t0 = Instant::now();
        let mut p = policy(8, &[], 1000);
        p.stop_at = Some(3);
        assert_eq!(p.decide(t0, &cands(t0, &[1, 1])), Decision::WaitUntil(t0 + Duration::from_millis(1)));
        assert_eq!(p.decide(t0, &cands(t0, &[1, 1, 1])), Decision::Dispatch { count: 3 });
        // It counts requests, and never makes a batch bigger than the maximum.
        assert_eq!(p.decide(t0, &cands(t0, &[4, 4, 4])), Decision::Dispatch { count: 2 });
    }

    #[test]
    fn without_dynamic_batching_one_request_per_execution() {
        let t0 = Instant::now();
        let cfg = ModelConfig { max_batch_size: 8, ..Default::default() };
        let p = BatchPolicy::from_config(&cfg);
        assert_eq!(p.decide(t0, &cands(t0, &[2, 2])), Decision::Dispatch { count: 1 });
    }
}
