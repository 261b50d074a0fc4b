//! Job metrics in Prometheus text: queue depth per model (what KEDA or an HPA scales workers
//! on), wait and run time histograms, outcomes, failures by reason, webhook deliveries.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sluice_types::prom::{escape, header, Histogram};

use parking_lot::Mutex;

/// Upper bounds in seconds: jobs take from milliseconds to an hour.
static BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0];

pub struct JobMetrics {
    wait: Histogram,
    run: Histogram,
    /// (model, status) → jobs that ended so.
    ended: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// (model, reason) → failed jobs.
    failed: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// outcome → webhooks.
    webhooks: Mutex<BTreeMap<&'static str, u64>>,
    submitted: AtomicU64,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            wait: Histogram::new(&BUCKETS),
            run: Histogram::new(&BUCKETS),
            ended: Default::default(),
            failed: Default::default(),
            webhooks: Default::default(),
            submitted: Default::default(),
        }
    }
}

impl JobMetrics {
    pub fn submitted(&self) {
        self.submitted.fetch_add(1, Relaxed);
    }

    pub fn started(&self, waited_secs: f64) {
        self.wait.observe(waited_secs);
    }

    pub fn ended(&self, model: &str, status: &'static str, ran_secs: Option<f64>) {
        if let Some(s) = ran_secs {
            self.run.observe(s);
        }
        *self.ended.lock().entry((model.to_string(), status)).or_default() += 1;
    }

    pub fn failed(&self, model: &str, reason: &'static str) {
        *self.failed.lock().entry((model.to_string(), reason)).or_default() += 1;
    }

    pub fn webhook(&self, outcome: &'static str) {
        *self.webhooks.lock().entry(outcome).or_default() += 1;
    }

    /// The text exposition, with the queue depth per model as the store reports it.
    pub fn render(&self, depth: &[(String, u64)]) -> String {
        let mut out = String::new();
        header(&mut out, "sluice_jobs_queued", "Jobs waiting for a worker", "gauge");
        for (model, n) in depth {
            let _ = writeln!(out, "sluice_jobs_queued{{model=\"{}\"}} {n}", escape(model));
        }
        header(&mut out, "sluice_jobs_submitted_total", "Jobs accepted", "counter");
        let _ = writeln!(out, "sluice_jobs_submitted_total {}", self.submitted.load(Relaxed));
        header(&mut out, "sluice_jobs_ended_total", "Jobs that ended, by final status", "counter");
        for ((model, status), n) in self.ended.lock().iter() {
            let _ = writeln!(out, "sluice_jobs_ended_total{{model=\"{}\",status=\"{status}\"}} {n}", escape(model));
        }
        header(&mut out, "sluice_jobs_failed_total", "Failed jobs by reason", "counter");
        for ((model, reason), n) in self.failed.lock().iter() {
            let _ = writeln!(out, "sluice_jobs_failed_total{{model=\"{}\",reason=\"{reason}\"}} {n}", escape(model));
        }
        header(&mut out, "sluice_webhook_deliveries_total", "Webhooks by outcome", "counter");
        for (outcome, n) in self.webhooks.lock().iter() {
            let _ = writeln!(out, "sluice_webhook_deliveries_total{{outcome=\"{outcome}\"}} {n}");
        }
        self.wait.render(&mut out, "sluice_job_wait_seconds", "Time from submit to a worker starting the job");
        self.run.render(&mut out, "sluice_job_run_seconds", "Time a worker spent running the job");
        out
    }
}
