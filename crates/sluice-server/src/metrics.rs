//! Prometheus text exposition on the metrics port: Triton's `nv_inference_*` families (so
//! NVIDIA's dashboards and the queue-time autoscaling recipe work unchanged) and `sluice_*`
//! latency histograms in seconds. Rendered at scrape time from the per-version counters.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use sluice_repository::ModelRepository;
use sluice_scheduler::ModelStats;
use sluice_types::prom::{escape, header, Histogram};

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    value: fn(&ModelStats) -> i64,
}

fn us(d: &sluice_scheduler::stats::Duration) -> i64 {
    (d.get().ns / 1000) as i64
}

const FAMILIES: [Family; 10] = [
    Family {
        name: "nv_inference_request_success",
        help: "Number of successful inference requests, all batch sizes",
        kind: "counter",
        value: |s| s.success.get().count as i64,
    },
    Family {
        name: "nv_inference_count",
        help: "Number of inferences performed (a batch of n counts n)",
        kind: "counter",
        value: |s| s.inference_count.load(Relaxed) as i64,
    },
    Family {
        name: "nv_inference_exec_count",
        help: "Number of model executions performed (batches)",
        kind: "counter",
        value: |s| s.execution_count.load(Relaxed) as i64,
    },
    Family {
        name: "nv_inference_pending_request_count",
        help: "Instantaneous number of pending requests awaiting execution",
        kind: "gauge",
        value: |s| s.pending.load(Relaxed).max(0),
    },
    Family {
        name: "sluice_inference_executing_count",
        help: "Batches executing right now (busy model instances)",
        kind: "gauge",
        value: |s| s.executing.load(Relaxed).max(0),
    },
    Family {
        name: "nv_inference_request_duration_us",
        help: "Cumulative inference request duration in microseconds",
        kind: "counter",
        value: |s| ((s.success.get().ns + s.fail.get().ns) / 1000) as i64,
    },
    Family {
        name: "nv_inference_queue_duration_us",
        help: "Cumulative inference queuing duration in microseconds",
        kind: "counter",
        value: |s| us(&s.queue),
    },
    Family {
        name: "nv_inference_compute_input_duration_us",
        help: "Cumulative compute input duration in microseconds",
        kind: "counter",
        value: |s| us(&s.compute_input),
    },
    Family {
        name: "nv_inference_compute_infer_duration_us",
        help: "Cumulative compute inference duration in microseconds",
        kind: "counter",
        value: |s| us(&s.compute_infer),
    },
    Family {
        name: "nv_inference_compute_output_duration_us",
        help: "Cumulative inference compute output duration in microseconds",
        kind: "counter",
        value: |s| us(&s.compute_output),
    },
];

/// Renders every metric of every ready model version.
pub fn render(repo: &ModelRepository) -> String {
    let versions = repo.all_ready();
    let mut out = String::with_capacity(4096);
    let labels: Vec<String> =
        versions.iter().map(|v| format!("model=\"{}\",version=\"{}\"", escape(&v.name), v.version)).collect();
    header(&mut out, "nv_inference_request_failure", "Number of failed inference requests, all batch sizes", "counter");
    for (v, l) in versions.iter().zip(&labels) {
        for (reason, n) in v.stats().failures() {
            let _ = writeln!(out, "nv_inference_request_failure{{{l},reason=\"{reason}\"}} {n}");
        }
    }
    for f in &FAMILIES {
        header(&mut out, f.name, f.help, f.kind);
        for (v, l) in versions.iter().zip(&labels) {
            let _ = writeln!(out, "{}{{{l}}} {}", f.name, (f.value)(v.stats()));
        }
    }
    type Pick = fn(&ModelStats) -> &Histogram;
    let hists: [(&str, &str, Pick); 3] = [
        ("sluice_request_duration_seconds", "End-to-end inference request latency", |s| &s.request_latency),
        ("sluice_queue_duration_seconds", "Time requests wait in the queue", |s| &s.queue_latency),
        ("sluice_compute_duration_seconds", "Time of one model execution (a batch)", |s| &s.compute_latency),
    ];
    for (name, help, get) in hists {
        header(&mut out, name, help, "histogram");
        for (v, l) in versions.iter().zip(&labels) {
            get(v.stats()).render_series(&mut out, name, l);
        }
    }
    let name = "sluice_batch_size";
    header(&mut out, name, "Inferences per model execution (the batches the scheduler formed)", "histogram");
    for (v, l) in versions.iter().zip(&labels) {
        let counts = v.stats().batch_size_counts();
        for le in BATCH_BUCKETS {
            let n: u64 = counts.iter().filter(|(size, _)| *size <= le).map(|(_, c)| c).sum();
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {n}");
        }
        let total: u64 = counts.iter().map(|(_, c)| c).sum();
        let sum: u64 = counts.iter().map(|(size, c)| size * c).sum();
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{l}}} {total}");
    }
    let generative: Vec<_> = versions
        .iter()
        .filter_map(|v| v.generator.as_ref().map(|g| (v.name.as_str(), v.version, g.metrics())))
        .collect();
    sluice_llm::metrics::render(&mut out, &generative);
    out
}

/// The endpoints' counters, one family per metric name in the order first seen.
pub fn render_traffic(out: &mut String, counters: &[sluice_types::TrafficCounter]) {
    let mut families: Vec<&str> = Vec::new();
    for c in counters {
        if !families.contains(&c.metric) {
            families.push(c.metric);
        }
    }
    for family in families {
        let mut first = true;
        for c in counters.iter().filter(|c| c.metric == family) {
            if first {
                header(out, c.metric, c.help, "counter");
                first = false;
            }
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = writeln!(out, "{}{{{}}} {}", c.metric, labels.join(","), c.value);
        }
    }
}

const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
