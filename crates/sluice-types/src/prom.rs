//! A lock-free Prometheus histogram in seconds, rendered as text exposition at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// `bounds`: the buckets' upper bounds in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, secs: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines; `labels` is `key="value",...` or empty.
    pub fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
        }
        let count = self.count.load(Relaxed);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }

    /// HELP and TYPE, then the series without labels.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        self.render_series(out, name, "");
    }
}

/// The `# HELP` and `# TYPE` lines of a family.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_labelled() {
        static B: [f64; 2] = [0.1, 1.0];
        let h = Histogram::new(&B);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.render_series(&mut s, "x", "model=\"m\"");
        assert!(s.contains("x_bucket{model=\"m\",le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{model=\"m\",le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{model=\"m\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{model=\"m\"} 3\n"), "{s}");
    }
}
