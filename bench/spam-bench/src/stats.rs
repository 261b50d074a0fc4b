//! Percentiles, medians and the server's statistics endpoint.

use serde_json::{json, Value};

/// Nearest-rank percentile of sorted values (`q` in 0..=1); NaN when empty.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of unsorted values, ignoring NaN; NaN when none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// p50 / p99 / mean / max of a sample (e.g. milliseconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &mut [f64]) -> Summary {
        values.sort_by(f64::total_cmp);
        let count = values.len();
        let mean = if count == 0 { f64::NAN } else { values.iter().sum::<f64>() / count as f64 };
        Summary {
            count,
            mean,
            p50: percentile_sorted(values, 0.5),
            p99: percentile_sorted(values, 0.99),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub fn to_json(self) -> Value {
        json!({"count": self.count, "mean": num(self.mean), "p50": num(self.p50), "p99": num(self.p99), "max": num(self.max)})
    }
}

/// A float as JSON, `null` for NaN or infinity.
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// The counters of `/v2/models/{m}/stats` that the benchmarks read.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerStats {
    pub inference_count: u64,
    pub execution_count: u64,
    pub queue_count: u64,
    pub queue_ns: u64,
    pub success_count: u64,
    /// Executions and their ONNX Runtime time, summed over `batch_stats`.
    pub exec_count: u64,
    pub exec_infer_ns: u64,
}

impl ServerStats {
    /// Sums over the versions in a statistics answer.
    pub fn parse(v: &Value) -> ServerStats {
        let mut s = ServerStats::default();
        let u = |v: &Value, p: &str| v.pointer(p).and_then(|x| x.as_u64().or_else(|| x.as_str()?.parse().ok()));
        for m in v.get("model_stats").and_then(Value::as_array).into_iter().flatten() {
            s.inference_count += u(m, "/inference_count").unwrap_or(0);
            s.execution_count += u(m, "/execution_count").unwrap_or(0);
            s.queue_count += u(m, "/inference_stats/queue/count").unwrap_or(0);
            s.queue_ns += u(m, "/inference_stats/queue/ns").unwrap_or(0);
            s.success_count += u(m, "/inference_stats/success/count").unwrap_or(0);
            for b in m.get("batch_stats").and_then(Value::as_array).into_iter().flatten() {
                s.exec_count += u(b, "/compute_infer/count").unwrap_or(0);
                s.exec_infer_ns += u(b, "/compute_infer/ns").unwrap_or(0);
            }
        }
        s
    }

    /// What happened between two snapshots.
    pub fn delta(&self, before: &ServerStats) -> StatsDelta {
        let inf = self.inference_count.saturating_sub(before.inference_count);
        let exe = self.execution_count.saturating_sub(before.execution_count);
        let qc = self.queue_count.saturating_sub(before.queue_count);
        let qns = self.queue_ns.saturating_sub(before.queue_ns);
        let ec = self.exec_count.saturating_sub(before.exec_count);
        let ens = self.exec_infer_ns.saturating_sub(before.exec_infer_ns);
        StatsDelta {
            inferences: inf,
            executions: exe,
            avg_batch: if exe == 0 { f64::NAN } else { inf as f64 / exe as f64 },
            queue_us_per_request: if qc == 0 { f64::NAN } else { qns as f64 / qc as f64 / 1e3 },
            infer_ms_per_execution: if ec == 0 { f64::NAN } else { ens as f64 / ec as f64 / 1e6 },
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct StatsDelta {
    pub inferences: u64,
    pub executions: u64,
    pub avg_batch: f64,
    pub queue_us_per_request: f64,
    /// ONNX Runtime time of one execution, milliseconds (the server's `compute_infer`).
    pub infer_ms_per_execution: f64,
}

impl Default for StatsDelta {
    fn default() -> Self {
        StatsDelta {
            inferences: 0,
            executions: 0,
            avg_batch: f64::NAN,
            queue_us_per_request: f64::NAN,
            infer_ms_per_execution: f64::NAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile_sorted(&v, 0.5), 50.0);
        assert_eq!(percentile_sorted(&v, 0.99), 99.0);
        assert_eq!(percentile_sorted(&[3.0], 0.99), 3.0);
        assert!(percentile_sorted(&[], 0.5).is_nan());
        assert_eq!(median(&[3.0, 1.0, f64::NAN, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn stats_delta() {
        let v = json!({"model_stats": [{"inference_count": 10, "execution_count": 4,
            "inference_stats": {"queue": {"count": 10, "ns": 50000}, "success": {"count": 10, "ns": 1}},
            "batch_stats": [{"batch_size": 2, "compute_infer": {"count": 3, "ns": 6000000}},
                            {"batch_size": 4, "compute_infer": {"count": 1, "ns": 2000000}}]}]});
        let a = ServerStats::parse(&v);
        let d = a.delta(&ServerStats::default());
        assert_eq!(d.inferences, 10);
        assert_eq!(d.avg_batch, 2.5);
        assert_eq!(d.queue_us_per_request, 5.0);
        assert_eq!(d.infer_ms_per_execution, 2.0);
    }
}
