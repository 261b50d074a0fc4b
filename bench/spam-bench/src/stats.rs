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

/// Quantile `q` of the time in system (queueing + service) of an M/D/1 queue: Poisson arrivals
/// at `rate` per unit time, every request served alone in exactly `service` time units, with no
/// scheduler delay. This is the floor an open-loop Poisson load puts under any one-instance server
/// whose batches cost as much as their requests served one by one; NaN unless `rate * service`
/// is in (0, 1).
///
/// Erlang's waiting-time distribution, in units of `service` with `rho = rate * service`:
/// `P(W <= t) = (1 - rho) * sum_{k=0}^{floor t} (rho (k - t))^k / k! * e^{-rho (k - t)}`,
/// inverted by bisection. The alternating sum loses precision for waits of many dozens of
/// service times (utilization near 1), far past where the benchmarks use it.
pub fn md1_time_in_system(rate: f64, service: f64, q: f64) -> f64 {
    let rho = rate * service;
    if !(rho > 0.0 && rho < 1.0 && service > 0.0 && q > 0.0 && q < 1.0) {
        return f64::NAN;
    }
    let cdf = |t: f64| {
        let mut sum = 0.0;
        let mut fact = 1.0;
        for k in 0..=(t.floor() as u32) {
            if k > 0 {
                fact *= f64::from(k);
            }
            let x = rho * (f64::from(k) - t);
            sum += x.powi(k as i32) / fact * (-x).exp();
        }
        (1.0 - rho) * sum
    };
    if cdf(0.0) >= q {
        return service;
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while cdf(hi) < q {
        hi *= 2.0;
        if hi > 1e3 {
            return f64::NAN;
        }
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if cdf(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (hi + 1.0) * service
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

    #[test]
    fn md1_floor() {
        // p99 time in system at utilization 0.5 is 4.34 service times (Erlang's formula).
        let t = md1_time_in_system(50.0, 0.01, 0.99);
        assert!((t / 0.01 - 4.336).abs() < 0.01, "{t}");
        // Higher load, longer tail; nobody waits at the median when most find the server idle.
        assert!(md1_time_in_system(80.0, 0.01, 0.99) > t);
        assert_eq!(md1_time_in_system(10.0, 0.01, 0.5), 0.01);
        // The mean wait from the distribution is Pollaczek-Khinchine's rho / (2 (1 - rho)).
        let n = 4000;
        let mean_system: f64 =
            (0..n).map(|i| md1_time_in_system(0.5, 1.0, (f64::from(i) + 0.5) / f64::from(n))).sum::<f64>()
                / f64::from(n);
        assert!((mean_system - 1.5).abs() < 0.01, "{mean_system}");
        assert!(md1_time_in_system(100.0, 0.01, 0.99).is_nan());
        assert!(md1_time_in_system(0.0, 0.01, 0.99).is_nan());
    }
}
