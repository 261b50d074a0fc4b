//! A latency histogram that replicas can add together: logarithmic buckets, [`SUB`] to a
//! doubling (each about 2.2 % wide), kept sparse, so that a step's whole sample fits in a few
//! hundred counters whatever its size. Quantiles read from it are bounded by the edges of the
//! buckets their ranks fall in, so the bounds stay conservative: the true order statistic lies
//! within the bucket the rank lands in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::dist::normal_isf;

/// Buckets per doubling.
pub const SUB: f64 = 32.0;

/// Counts of latencies (microseconds) by logarithmic bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    buckets: BTreeMap<i32, u64>,
    count: u64,
}

fn bucket(micros: f64) -> i32 {
    (micros.max(1.0).log2() * SUB).floor() as i32
}

fn lower_us(b: i32) -> f64 {
    (b as f64 / SUB).exp2()
}

fn upper_us(b: i32) -> f64 {
    ((b + 1) as f64 / SUB).exp2()
}

/// The bucket's geometric middle: what a quantile that lands in it reads as.
fn middle_us(b: i32) -> f64 {
    ((b as f64 + 0.5) / SUB).exp2()
}

impl LatencyHistogram {
    pub fn push_ms(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            *self.buckets.entry(bucket(ms * 1000.0)).or_default() += 1;
            self.count += 1;
        }
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The bucket holding the `rank`-th smallest latency (1-based, clamped into the sample).
    fn at_rank(&self, rank: f64) -> Option<i32> {
        let rank = (rank.max(1.0) as u64).min(self.count);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(*b);
            }
        }
        None
    }

    /// The `q` quantile (0–1) in milliseconds, nearest rank, read as its bucket's middle.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let b = self.at_rank((q * self.count as f64).ceil())?;
        Some(middle_us(b) / 1000.0)
    }

    /// `(lower, estimate, upper)` in milliseconds for the `q` quantile, each bound holding with
    /// probability 1 − α (one-sided): the order statistics at ranks n·q ∓ z·√(n·q·(1−q)), taken
    /// at the outer edges of their buckets. `None` below `min_count` latencies. The top is the
    /// largest bucket's edge when the upper rank passes the end.
    pub fn quantile_bounds_ms(&self, q: f64, alpha: f64, min_count: u64) -> Option<(f64, f64, f64)> {
        if self.count < min_count.max(1) {
            return None;
        }
        let n = self.count as f64;
        let spread = normal_isf(alpha) * (n * q * (1.0 - q)).sqrt();
        let lo = self.at_rank((n * q - spread).floor())?;
        let hi = self.at_rank((n * q + spread).ceil() + 1.0)?;
        Some((lower_us(lo) / 1000.0, self.quantile_ms(q)?, upper_us(hi) / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(ms: impl IntoIterator<Item = f64>) -> LatencyHistogram {
        let mut h = LatencyHistogram::default();
        ms.into_iter().for_each(|x| h.push_ms(x));
        h
    }

    #[test]
    fn quantiles_read_within_a_bucket_of_the_sample() {
        let h = of((1..=1000).map(|i| i as f64 / 100.0));
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((p99 / 9.9 - 1.0).abs() < 0.025, "{p99}");
        let (lo, mid, hi) = h.quantile_bounds_ms(0.99, 0.05, 100).unwrap();
        assert!(lo <= 9.9 && 9.9 <= hi && lo <= mid && mid <= hi, "{lo} {mid} {hi}");
        assert_eq!(of([1.0; 10]).quantile_bounds_ms(0.99, 0.05, 100), None);
        assert_eq!(LatencyHistogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn merged_histograms_equal_one_fed_everything() {
        let (a, b): (Vec<f64>, Vec<f64>) = (1..=500).map(|i| (i as f64 * 0.3, i as f64 * 0.7)).unzip();
        let mut merged = of(a.clone());
        merged.merge(&of(b.clone()));
        assert_eq!(merged, of(a.into_iter().chain(b)));
        assert_eq!(merged.count(), 1000);
    }

    #[test]
    fn bad_latencies_are_ignored_and_doubling_moves_a_quantile_by_exactly_two() {
        let h = of([f64::NAN, -1.0, f64::INFINITY]);
        assert_eq!(h.count(), 0);
        let base = of((1..=2000).map(|i| i as f64 / 200.0));
        let double = of((1..=2000).map(|i| i as f64 / 100.0));
        let ratio = double.quantile_ms(0.99).unwrap() / base.quantile_ms(0.99).unwrap();
        assert!((ratio - 2.0).abs() < 1e-9, "{ratio}");
    }
}
