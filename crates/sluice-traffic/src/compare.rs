//! How a shadow's answers compare with the primary's, as plain accumulators: agreement of labels
//! with its 95 % interval, differences of numeric outputs, and latency percentiles over a recent
//! window. No clocks, threads or I/O: the shadow endpoint feeds them.

use serde::Serialize;
use sluice_types::{DataType, Tensor, TensorData};

/// The Wilson score interval for `k` successes in `n` trials at 95 %: unlike the normal
/// approximation it stays inside [0, 1] and is honest at 0 % or 100 % agreement, which is
/// where a good candidate sits. `None` for no trials (or more successes than trials).
pub fn wilson95(k: u64, n: u64) -> Option<(f64, f64)> {
    crate::stats::wilson_interval(k, n, 0.05).map(|i| (i.lower, i.upper))
}

/// How one output of one request compares.
#[derive(Clone, Debug, PartialEq)]
pub enum Comparison {
    /// Labels (BYTES, BOOL, integers): elements compared one by one.
    Labels { elements: u64, agreed: u64 },
    /// Numbers: absolute differences, element by element.
    Numbers { elements: u64, sum_abs: f64, max_abs: f64 },
    /// The two sides cannot be compared: shapes or types differ, or an output is missing.
    Mismatch(String),
}

/// Compares output `name` of the two sides.
pub fn compare(name: &str, primary: &[Tensor], shadow: &[Tensor]) -> Comparison {
    fn find<'a>(side: &'a [Tensor], name: &str, who: &str) -> Result<&'a Tensor, String> {
        side.iter().find(|t| t.name == name).ok_or_else(|| format!("the {who} did not return output '{name}'"))
    }
    let (a, b) = match (find(primary, name, "primary"), find(shadow, name, "shadow")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Comparison::Mismatch(e),
    };
    if a.shape != b.shape || a.datatype != b.datatype {
        return Comparison::Mismatch(format!(
            "output '{name}': primary {} {:?}, shadow {} {:?}",
            a.datatype, a.shape, b.datatype, b.shape
        ));
    }
    match (&a.data, &b.data) {
        (TensorData::Bytes(x), TensorData::Bytes(y)) => labels(x.iter().zip(y).map(|(p, q)| p == q)),
        (TensorData::Fixed(x), TensorData::Fixed(y)) => match a.datatype {
            DataType::Fp32 | DataType::Fp64 | DataType::Fp16 | DataType::Bf16 => {
                match (floats(a.datatype, x), floats(b.datatype, y)) {
                    (Some(p), Some(q)) => numbers(p.iter().zip(&q).map(|(p, q)| (p - q).abs())),
                    _ => Comparison::Mismatch(format!("output '{name}': cannot read {} values", a.datatype)),
                }
            }
            dt => {
                let size = dt.size().unwrap_or(1).max(1);
                labels(x.chunks(size).zip(y.chunks(size)).map(|(p, q)| p == q))
            }
        },
        _ => Comparison::Mismatch(format!("output '{name}': the two sides are encoded differently")),
    }
}

fn labels(same: impl Iterator<Item = bool>) -> Comparison {
    let (mut elements, mut agreed) = (0, 0);
    for s in same {
        elements += 1;
        agreed += u64::from(s);
    }
    Comparison::Labels { elements, agreed }
}

fn numbers(diffs: impl Iterator<Item = f64>) -> Comparison {
    let (mut elements, mut sum_abs, mut max_abs) = (0, 0.0, 0.0f64);
    for d in diffs {
        elements += 1;
        sum_abs += d;
        // NaN on either side counts as the largest difference there is.
        max_abs = if d.is_nan() { f64::INFINITY } else { max_abs.max(d) };
    }
    Comparison::Numbers { elements, sum_abs, max_abs }
}

fn floats(dt: DataType, bytes: &[u8]) -> Option<Vec<f64>> {
    match dt {
        DataType::Fp32 => {
            Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect())
        }
        DataType::Fp64 => {
            Some(bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
        }
        DataType::Fp16 => {
            Some(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect())
        }
        DataType::Bf16 => {
            Some(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect())
        }
        _ => None,
    }
}

/// Comparisons summed over requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agreement {
    pub label_elements: u64,
    pub label_agreed: u64,
    pub number_elements: u64,
    pub sum_abs: f64,
    pub max_abs: f64,
    /// Requests whose outputs could not be compared.
    pub mismatched: u64,
    pub last_mismatch: Option<String>,
}

impl Agreement {
    pub fn add(&mut self, c: Comparison) {
        match c {
            Comparison::Labels { elements, agreed } => {
                self.label_elements += elements;
                self.label_agreed += agreed;
            }
            Comparison::Numbers { elements, sum_abs, max_abs } => {
                self.number_elements += elements;
                self.sum_abs += sum_abs;
                self.max_abs = self.max_abs.max(max_abs);
            }
            Comparison::Mismatch(why) => {
                self.mismatched += 1;
                self.last_mismatch = Some(why);
            }
        }
    }

    /// Elements whose labels differ.
    pub fn disagreements(&self) -> u64 {
        self.label_elements - self.label_agreed
    }

    pub fn report(&self) -> AgreementReport {
        AgreementReport {
            compared_elements: self.label_elements,
            agreement: (self.label_elements > 0).then(|| self.label_agreed as f64 / self.label_elements as f64),
            agreement_ci95: wilson95(self.label_agreed, self.label_elements).map(|(lo, hi)| [lo, hi]),
            numeric_elements: self.number_elements,
            mean_abs_diff: (self.number_elements > 0).then(|| self.sum_abs / self.number_elements as f64),
            max_abs_diff: (self.number_elements > 0).then_some(self.max_abs),
            not_comparable: self.mismatched,
            last_not_comparable: self.last_mismatch.clone(),
        }
    }
}

/// What `GET /v2/endpoints/{name}` shows of an [`Agreement`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgreementReport {
    pub compared_elements: u64,
    pub agreement: Option<f64>,
    pub agreement_ci95: Option<[f64; 2]>,
    pub numeric_elements: u64,
    pub mean_abs_diff: Option<f64>,
    pub max_abs_diff: Option<f64>,
    pub not_comparable: u64,
    pub last_not_comparable: Option<String>,
}

/// The latencies of the last [`LatencyWindow::CAPACITY`] requests, for percentiles that follow
/// the current traffic rather than everything since start.
#[derive(Clone, Debug, Default)]
pub struct LatencyWindow {
    micros: Vec<u64>,
    next: usize,
}

impl LatencyWindow {
    pub const CAPACITY: usize = 4096;

    pub fn push(&mut self, micros: u64) {
        if self.micros.len() < Self::CAPACITY {
            self.micros.push(micros);
        } else {
            self.micros[self.next] = micros;
        }
        self.next = (self.next + 1) % Self::CAPACITY;
    }

    /// The latencies kept, in milliseconds, oldest first once the window has wrapped.
    pub fn samples_ms(&self) -> Vec<f64> {
        let (newer, older) = self.micros.split_at(self.next.min(self.micros.len()));
        older.iter().chain(newer).map(|&m| m as f64 / 1000.0).collect()
    }

    /// The `q` quantile (0–1) in milliseconds, nearest rank.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1] as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_statsmodels() {
        // scipy.stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        let close = |(a, b): (f64, f64), (x, y): (f64, f64)| (a - x).abs() < 1e-9 && (b - y).abs() < 1e-9;
        assert!(close(wilson95(81, 263).unwrap(), (0.25528851987827, 0.36620957698280)));
        assert!(close(wilson95(100, 100).unwrap(), (0.96300650179301, 1.0)));
        assert!(close(wilson95(0, 10).unwrap(), (0.0, 0.27753279986289)));
        assert_eq!(wilson95(0, 0), None);
    }

    #[test]
    fn labels_agree_element_by_element() {
        let p = [Tensor::from_vec("label", vec![3], vec![1i64, 0, 1])];
        let s = [Tensor::from_vec("label", vec![3], vec![1i64, 1, 1])];
        assert_eq!(compare("label", &p, &s), Comparison::Labels { elements: 3, agreed: 2 });
        let p = [Tensor::from_strings("label", vec![2], &["spam", "ham"])];
        let s = [Tensor::from_strings("label", vec![2], &["spam", "ham"])];
        assert_eq!(compare("label", &p, &s), Comparison::Labels { elements: 2, agreed: 2 });
    }

    #[test]
    fn numbers_report_their_differences() {
        let p = [Tensor::from_vec("y", vec![2], vec![1.0f32, 2.0])];
        let s = [Tensor::from_vec("y", vec![2], vec![1.5f32, 2.0])];
        assert_eq!(compare("y", &p, &s), Comparison::Numbers { elements: 2, sum_abs: 0.5, max_abs: 0.5 });
        let nan = [Tensor::from_vec("y", vec![2], vec![f32::NAN, 2.0])];
        assert!(matches!(compare("y", &p, &nan), Comparison::Numbers { max_abs, .. } if max_abs.is_infinite()));
    }

    #[test]
    fn what_cannot_be_compared_says_why() {
        let p = [Tensor::from_vec("y", vec![2], vec![1.0f32, 2.0])];
        let s = [Tensor::from_vec("y", vec![1, 2], vec![1.0f32, 2.0])];
        assert!(matches!(compare("y", &p, &s), Comparison::Mismatch(w) if w.contains("[2]") && w.contains("[1, 2]")));
        assert!(
            matches!(compare("z", &p, &p), Comparison::Mismatch(w) if w.contains("primary did not return output 'z'"))
        );
    }

    #[test]
    fn agreement_sums_requests() {
        let mut a = Agreement::default();
        a.add(Comparison::Labels { elements: 10, agreed: 9 });
        a.add(Comparison::Labels { elements: 10, agreed: 10 });
        a.add(Comparison::Mismatch("x".into()));
        let r = a.report();
        assert_eq!((r.compared_elements, r.agreement, r.not_comparable), (20, Some(0.95), 1));
        assert_eq!(a.disagreements(), 1);
        let [lo, hi] = r.agreement_ci95.unwrap();
        assert!(lo < 0.95 && hi > 0.95 && hi <= 1.0);
    }

    #[test]
    fn the_window_keeps_the_latest_and_ranks_them() {
        let mut w = LatencyWindow::default();
        assert_eq!(w.quantile_ms(0.5), None);
        for us in 1..=100 {
            w.push(us * 1000);
        }
        assert_eq!(
            (w.quantile_ms(0.5), w.quantile_ms(0.99), w.quantile_ms(1.0)),
            (Some(50.0), Some(99.0), Some(100.0))
        );
        for _ in 0..LatencyWindow::CAPACITY {
            w.push(7000);
        }
        assert_eq!(w.quantile_ms(0.99), Some(7.0), "old samples are gone");
    }
}
