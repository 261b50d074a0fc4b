//! Generation metrics of one model version: time to first token, inter-token latency and
//! end-to-end time histograms, prompt and generated token counters, running and waiting
//! sequences. Rendered per model with `model` and `version` labels.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use sluice_types::prom::{escape, header, Histogram};

static FIRST: [f64; 14] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0];
static INTER: [f64; 13] = [0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0];
static E2E: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

pub struct GenMetrics {
    pub time_to_first_token: Histogram,
    pub inter_token: Histogram,
    pub end_to_end: Histogram,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub running: AtomicI64,
    pub waiting: AtomicI64,
    /// Requests that ended: stop, length, cancelled, error.
    pub ended: [AtomicU64; 4],
}

pub const END_REASONS: [&str; 4] = ["stop", "length", "cancelled", "error"];

impl Default for GenMetrics {
    fn default() -> Self {
        GenMetrics {
            time_to_first_token: Histogram::new(&FIRST),
            inter_token: Histogram::new(&INTER),
            end_to_end: Histogram::new(&E2E),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            running: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            ended: Default::default(),
        }
    }
}

impl GenMetrics {
    pub fn ended(&self, reason: &str) {
        if let Some(i) = END_REASONS.iter().position(|r| *r == reason) {
            self.ended[i].fetch_add(1, Relaxed);
        }
    }
}

/// The exposition of every generative version: `(model, version, metrics)`.
pub fn render(out: &mut String, all: &[(&str, u64, &GenMetrics)]) {
    if all.is_empty() {
        return;
    }
    type Pick = fn(&GenMetrics) -> &Histogram;
    let histograms: [(&str, &str, Pick); 3] = [
        ("sluice_llm_time_to_first_token_seconds", "Time from arrival to the first generated token", |m| {
            &m.time_to_first_token
        }),
        ("sluice_llm_inter_token_latency_seconds", "Time between consecutive generated tokens of a sequence", |m| {
            &m.inter_token
        }),
        ("sluice_llm_request_duration_seconds", "Time from arrival to the end of a generation", |m| &m.end_to_end),
    ];
    let labels: Vec<String> =
        all.iter().map(|(model, version, _)| format!("model=\"{}\",version=\"{version}\"", escape(model))).collect();
    for (name, help, pick) in histograms {
        header(out, name, help, "histogram");
        for ((_, _, m), l) in all.iter().zip(&labels) {
            pick(m).render_series(out, name, l);
        }
    }
    type Count = fn(&GenMetrics) -> i64;
    let scalars: [(&str, &str, &str, Count); 4] = [
        ("sluice_llm_prompt_tokens_total", "Prompt tokens processed", "counter", |m| {
            m.prompt_tokens.load(Relaxed) as i64
        }),
        ("sluice_llm_generated_tokens_total", "Tokens generated", "counter", |m| {
            m.generated_tokens.load(Relaxed) as i64
        }),
        ("sluice_llm_running_sequences", "Sequences being decoded now", "gauge", |m| m.running.load(Relaxed)),
        ("sluice_llm_waiting_sequences", "Requests queued for a sequence slot", "gauge", |m| m.waiting.load(Relaxed)),
    ];
    for (name, help, kind, value) in scalars {
        header(out, name, help, kind);
        for ((_, _, m), l) in all.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{l}}} {}", value(m));
        }
    }
    header(out, "sluice_llm_requests_total", "Generation requests that ended, by reason", "counter");
    for ((_, _, m), l) in all.iter().zip(&labels) {
        for (reason, n) in END_REASONS.iter().zip(&m.ended) {
            let _ = writeln!(out, "sluice_llm_requests_total{{{l},reason=\"{reason}\"}} {}", n.load(Relaxed));
        }
    }
}
