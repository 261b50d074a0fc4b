//! The queues of one model version as a plain struct: priority levels, per-level queue policy
//! (size limit, timeout and what a timeout does), a bound on queued bytes, and the order in
//! which requests are offered to the [`crate::policy::BatchPolicy`]. No threads, no clocks of
//! its own: the caller passes `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_types::config::QueuePolicy;
use sluice_types::ModelConfig;

use crate::policy::Candidate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutAction {
    Reject,
    /// Keep the request, behind everything that has not timed out.
    Delay,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LevelPolicy {
    pub timeout: Option<Duration>,
    pub action: TimeoutAction,
    pub allow_override: bool,
    /// 0 = bounded only by the version's overall capacity.
    pub max_size: usize,
}

impl LevelPolicy {
    fn from(p: Option<&QueuePolicy>) -> LevelPolicy {
        let Some(p) = p else {
            return LevelPolicy { timeout: None, action: TimeoutAction::Reject, allow_override: true, max_size: 0 };
        };
        LevelPolicy {
            timeout: (p.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(p.default_timeout_microseconds)),
            action: if p.timeout_action == "DELAY" { TimeoutAction::Delay } else { TimeoutAction::Reject },
            allow_override: p.allow_timeout_override,
            max_size: p.max_queue_size as usize,
        }
    }
}

/// Why a request was not queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A queue limit is reached: `what` says which.
    Full(String),
    /// The `priority` parameter names a level the model does not have.
    BadPriority(u64, usize),
}

struct Entry<T> {
    item: T,
    cand: Candidate,
    deadline: Option<Instant>,
    bytes: usize,
}

pub struct Queues<T> {
    levels: Vec<VecDeque<Entry<T>>>,
    policies: Vec<LevelPolicy>,
    /// Requests whose timeout passed under `DELAY`: served after every level.
    delayed: VecDeque<Entry<T>>,
    default_level: usize,
    len: usize,
    capacity: usize,
    bytes: usize,
    max_bytes: usize,
}

impl<T> Queues<T> {
    /// Levels and policies from `dynamic_batching`; `capacity` and `max_bytes` bound the whole.
    pub fn from_config(config: &ModelConfig, capacity: usize, max_bytes: usize) -> Queues<T> {
        let db = config.dynamic_batching.as_ref();
        let n = db.map_or(0, |d| d.priority_levels as usize).max(1);
        let default_policy = db.and_then(|d| d.default_queue_policy.as_ref());
        let policies = (1..=n)
            .map(|level| {
                let specific = db.and_then(|d| d.priority_queue_policy.get(&level.to_string()));
                LevelPolicy::from(specific.or(default_policy))
            })
            .collect();
        let default_level = db.map_or(1, |d| d.default_priority_level as usize).clamp(1, n) - 1;
        Queues {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            policies,
            delayed: VecDeque::new(),
            default_level,
            len: 0,
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues a request and returns when it times out, if it can. `priority` 0 or `None` means
    /// the default level; `timeout` is the request's own, used when the level allows overriding.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        now: Instant,
        item: T,
        batch_size: u64,
        shape_key: u64,
        bytes: usize,
        priority: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<Option<Instant>, (T, Refusal)> {
        let level = match priority.unwrap_or(0) {
            0 => self.default_level,
            p if (p as usize) <= self.levels.len() => p as usize - 1,
            p => return Err((item, Refusal::BadPriority(p, self.levels.len()))),
        };
        let policy = &self.policies[level];
        if self.len >= self.capacity {
            return Err((item, Refusal::Full(format!("{} queued requests", self.capacity))));
        }
        if policy.max_size > 0 && self.levels[level].len() >= policy.max_size {
            return Err((
                item,
                Refusal::Full(format!("max_queue_size {} of priority level {}", policy.max_size, level + 1)),
            ));
        }
        if self.max_bytes > 0 && self.bytes + bytes > self.max_bytes && self.len > 0 {
            return Err((item, Refusal::Full(format!("{} queued bytes", self.max_bytes))));
        }
        let timeout = match (timeout.filter(|t| !t.is_zero()), policy.allow_override) {
            (Some(t), true) => Some(t),
            _ => policy.timeout,
        };
        let deadline = timeout.map(|t| now + t);
        self.levels[level].push_back(Entry {
            item,
            cand: Candidate { batch_size, shape_key, enqueued: now },
            deadline,
            bytes,
        });
        self.len += 1;
        self.bytes += bytes;
        Ok(deadline)
    }

    fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        self.levels.iter().flatten().chain(self.delayed.iter())
    }

    /// The first `limit` requests in dispatch order.
    pub fn candidates(&self, limit: usize) -> Vec<Candidate> {
        self.iter().take(limit).map(|e| e.cand).collect()
    }

    /// The earliest timeout among queued requests.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.levels.iter().flatten().filter_map(|e| e.deadline).min()
    }

    /// Removes the first `count` requests in dispatch order, with their enqueue instants.
    pub fn take(&mut self, count: usize) -> Vec<(T, Instant)> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let Some(q) = self.levels.iter_mut().chain(std::iter::once(&mut self.delayed)).find(|q| !q.is_empty())
            else {
                break;
            };
            if let Some(e) = q.pop_front() {
                self.len -= 1;
                self.bytes -= e.bytes;
                out.push((e.item, e.cand.enqueued));
            }
        }
        out
    }

    /// Applies timeouts at `now`: returns the rejected requests; delayed ones move to the back.
    pub fn expire(&mut self, now: Instant) -> Vec<(T, Instant)> {
        let mut rejected = Vec::new();
        for (level, q) in self.levels.iter_mut().enumerate() {
            if !q.iter().any(|e| e.deadline.is_some_and(|d| d <= now)) {
                continue;
            }
            let action = self.policies[level].action;
            let mut keep = VecDeque::with_capacity(q.len());
            for mut e in q.drain(..) {
                if e.deadline.is_some_and(|d| d <= now) {
                    match action {
                        TimeoutAction::Reject => {
                            self.len -= 1;
                            self.bytes -= e.bytes;
                            rejected.push((e.item, e.cand.enqueued));
                        }
                        TimeoutAction::Delay => {
                            e.deadline = None;
                            self.delayed.push_back(e);
                        }
                    }
                } else {
                    keep.push_back(e);
                }
            }
            *q = keep;
        }
        rejected
    }

    /// Removes requests for which `gone` is true (callers that went away); returns them.
    pub fn remove_where(&mut self, mut gone: impl FnMut(&T) -> bool) -> Vec<(T, Instant)> {
        let mut removed = Vec::new();
        for q in self.levels.iter_mut().chain(std::iter::once(&mut self.delayed)) {
            if !q.iter().any(|e| gone(&e.item)) {
                continue;
            }
            let mut keep = VecDeque::with_capacity(q.len());
            for e in q.drain(..) {
                if gone(&e.item) {
                    self.len -= 1;
                    self.bytes -= e.bytes;
                    removed.push((e.item, e.cand.enqueued));
                } else {
                    keep.push_back(e);
                }
            }
            *q = keep;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::config::DynamicBatching;
    use std::collections::BTreeMap;

    fn config(levels: u64, default: u64, policy: QueuePolicy, level2: Option<QueuePolicy>) -> ModelConfig {
        let mut pq = BTreeMap::new();
        if let Some(p) = level2 {
            pq.insert("2".to_string(), p);
        }
        ModelConfig {
            max_batch_size: 8,
            dynamic_batching: Some(DynamicBatching {
                priority_levels: levels,
                default_priority_level: default,
                default_queue_policy: Some(policy),
                priority_queue_policy: pq,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn push(
        q: &mut Queues<u32>,
        now: Instant,
        id: u32,
        prio: Option<u64>,
        timeout_us: Option<u64>,
    ) -> Result<(), Refusal> {
        q.push(now, id, 1, 0, 10, prio, timeout_us.map(Duration::from_micros)).map(|_| ()).map_err(|(_, r)| r)
    }

    #[test]
    fn higher_priority_is_offered_first_fifo_within_a_level() {
        let now = Instant::now();
        let mut q = Queues::from_config(&config(2, 2, QueuePolicy::default(), None), 100, 0);
        push(&mut q, now, 1, None, None).unwrap();
        push(&mut q, now, 2, Some(2), None).unwrap();
        push(&mut q, now, 3, Some(1), None).unwrap();
        push(&mut q, now, 4, Some(1), None).unwrap();
        let order: Vec<u32> = q.take(4).into_iter().map(|(i, _)| i).collect();
        assert_eq!(order, vec![3, 4, 1, 2]);
        assert!(q.is_empty());
        assert_eq!(push(&mut q, now, 5, Some(3), None), Err(Refusal::BadPriority(3, 2)));
    }

    #[test]
    fn size_limits_refuse() {
        let now = Instant::now();
        let p = QueuePolicy { max_queue_size: 2, ..Default::default() };
        let mut q = Queues::from_config(&config(1, 1, p, None), 100, 0);
        push(&mut q, now, 1, None, None).unwrap();
        push(&mut q, now, 2, None, None).unwrap();
        assert!(matches!(push(&mut q, now, 3, None, None), Err(Refusal::Full(m)) if m.contains("max_queue_size 2")));
        let mut q: Queues<u32> = Queues::from_config(&ModelConfig::default(), 100, 25);
        push(&mut q, now, 1, None, None).unwrap();
        push(&mut q, now, 2, None, None).unwrap();
        assert!(matches!(push(&mut q, now, 3, None, None), Err(Refusal::Full(m)) if m.contains("bytes")));
        assert_eq!(q.bytes(), 20);
        let mut q: Queues<u32> = Queues::from_config(&ModelConfig::default(), 1, 0);
        push(&mut q, now, 1, None, None).unwrap();
        assert!(push(&mut q, now, 2, None, None).is_err());
    }

    #[test]
    fn timeouts_reject_or_delay() {
        let t0 = Instant::now();
        let reject = QueuePolicy {
            timeout_action: "REJECT".into(),
            default_timeout_microseconds: 100,
            allow_timeout_override: true,
            ..Default::default()
        };
        let delay =
            QueuePolicy { timeout_action: "DELAY".into(), default_timeout_microseconds: 50, ..Default::default() };
        let mut q = Queues::from_config(&config(2, 1, reject, Some(delay)), 100, 0);
        push(&mut q, t0, 1, Some(1), None).unwrap(); // times out at 100 us, rejected
        push(&mut q, t0, 2, Some(1), Some(1000)).unwrap(); // its own timeout: 1 ms
        push(&mut q, t0, 3, Some(2), None).unwrap(); // 50 us, then delayed
        push(&mut q, t0, 4, Some(2), Some(5)).unwrap(); // level 2 does not allow overriding
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_micros(50)));
        let rejected = q.expire(t0 + Duration::from_micros(60));
        assert!(rejected.is_empty());
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_micros(100)));
        let rejected: Vec<u32> = q.expire(t0 + Duration::from_micros(100)).into_iter().map(|(i, _)| i).collect();
        assert_eq!(rejected, vec![1]);
        assert_eq!(q.len(), 3);
        let order: Vec<u32> = q.take(3).into_iter().map(|(i, _)| i).collect();
        assert_eq!(order, vec![2, 3, 4]);
    }

    #[test]
    fn cancelled_requests_are_removed() {
        let now = Instant::now();
        let mut q: Queues<u32> = Queues::from_config(&ModelConfig::default(), 100, 0);
        for i in 0..5 {
            push(&mut q, now, i, None, None).unwrap();
        }
        let gone: Vec<u32> = q.remove_where(|i| i % 2 == 1).into_iter().map(|(i, _)| i).collect();
        assert_eq!(gone, vec![1, 3]);
        assert_eq!(q.candidates(10).len(), 3);
        assert_eq!(q.bytes(), 30);
    }
}
