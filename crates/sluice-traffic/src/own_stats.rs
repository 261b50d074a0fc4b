//! What an endpoint counts of its own requests, reported first in its statistics as Triton
//! reports an ensemble: clients such as perf_analyzer look for an entry under the name they
//! asked for, then read the composing models' entries after it.

use parking_lot::Mutex;
use sluice_types::api::{InferenceStats, ModelStatistics, StatDuration};

#[derive(Default)]
struct Counts {
    success: StatDuration,
    fail: StatDuration,
    inferences: u64,
    last_ms: u64,
}

/// Requests that went through an endpoint: how many, how long end to end, how many failed.
#[derive(Default)]
pub struct OwnStats(Mutex<Counts>);

impl OwnStats {
    /// One request of `inferences` batch rows, answered or failed after `ns`.
    pub fn record(&self, ok: bool, ns: u64, inferences: u64) {
        let mut c = self.0.lock();
        let d = if ok { &mut c.success } else { &mut c.fail };
        d.count += 1;
        d.ns += ns;
        if ok {
            c.inferences += inferences;
            c.last_ms = crate::now_ms();
        }
    }

    /// Requests recorded, answered or failed.
    pub fn requests(&self) -> u64 {
        let c = self.0.lock();
        c.success.count + c.fail.count
    }

    /// The entry under the endpoint's own name.
    pub fn entry(&self, name: &str, version: &str) -> ModelStatistics {
        let c = self.0.lock();
        ModelStatistics {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: c.last_ms,
            inference_count: c.inferences,
            execution_count: c.success.count,
            // Every request passes the endpoint's (empty) queue: perf_analyzer, asked for no version,
            // takes the version whose queue count grew during its measurement.
            inference_stats: InferenceStats {
                success: c.success,
                fail: c.fail,
                queue: StatDuration { count: c.success.count, ns: 0 },
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Appends `more` to `out`, each model version once.
pub fn extend_unique(out: &mut Vec<ModelStatistics>, more: Vec<ModelStatistics>) {
    for s in more {
        if !out.iter().any(|o| o.name == s.name && o.version == s.version) {
            out.push(s);
        }
    }
}
