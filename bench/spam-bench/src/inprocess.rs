//! The physical limit: the same ONNX Runtime session the server would load (Sluice's own backend,
//! the served config, the same intra-op threads), driven in-process with batches of consecutive
//! emails padded to the longest of each batch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::json;
use sluice_backend::onnx::{find_library, init_runtime, OnnxBackend};
use sluice_backend::{Backend, ModelFiles, ModelInstance};
use sluice_types::{ModelConfig, Tensor};

use crate::stats::Summary;

/// Largest batch the served spam configs accept.
pub const MAX_BATCH: usize = 32;

/// How the served spam config batches.
#[derive(Clone, Debug)]
pub enum Batching {
    Off,
    /// A fixed delay; `max_batch` lowers `max_batch_size` below [`MAX_BATCH`].
    Fixed {
        delay_us: u64,
        max_batch: Option<usize>,
    },
    Adaptive {
        max_p99_ms: u64,
    },
}

/// The served config of a spam model (`config.pbtxt`), as `scripts/make_models_repo.sh` writes
/// it, with `allow_ragged_batch` on the token inputs and an explicit intra-op thread count.
pub fn spam_pbtxt(name: &str, threads: usize, batching: &Batching) -> String {
    let dynamic = match batching {
        Batching::Off => String::new(),
        Batching::Fixed { delay_us, .. } => {
            format!("dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n")
        }
        Batching::Adaptive { max_p99_ms } => {
            format!("dynamic_batching {{\n  adaptive {{\n    max_p99_latency_ms: {max_p99_ms}\n  }}\n}}\n")
        }
    };
    let max_batch = match batching {
        Batching::Fixed { max_batch: Some(b), .. } => *b,
        _ => MAX_BATCH,
    };
    format!(
        r#"name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [
  {{
    name: "input_ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
    allow_ragged_batch: true
  }},
  {{
    name: "attention_mask"
    data_type: TYPE_INT64
    dims: [ -1 ]
    allow_ragged_batch: true
  }}
]
output [
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 2 ]
  }},
  {{
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }}
]
{dynamic}instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
parameters: {{
  key: "intra_op_thread_count"
  value: {{ string_value: "{threads}" }}
}}
"#
    )
}

/// The same config as [`spam_pbtxt`] (batching aside, which the in-process loop does itself).
pub fn spam_config(name: &str, threads: usize) -> Result<ModelConfig> {
    let input = |n: &str| json!({"name": n, "data_type": "TYPE_INT64", "dims": [-1], "allow_ragged_batch": true});
    Ok(serde_json::from_value(json!({
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": MAX_BATCH,
        "input": [input("input_ids"), input("attention_mask")],
        "output": [
            {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [2]},
            {"name": "label", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}}
        ],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "parameters": {"intra_op_thread_count": {"string_value": threads.to_string()}}
    }))?)
}

/// Finds and loads ONNX Runtime once; returns the library path (to hand to the server too).
pub fn init_ort(explicit: Option<&Path>) -> Result<PathBuf> {
    let lib = find_library(explicit).map_err(|e| anyhow!("{e}"))?;
    init_runtime(&lib).map_err(|e| anyhow!("{e}"))?;
    Ok(lib)
}

/// Loads `<models folder>/<model>/model.onnx` through Sluice's ONNX backend.
pub fn load(models: &Path, model: &str, threads: usize) -> Result<Box<dyn ModelInstance>> {
    let dir = models.join(model);
    let files = ModelFiles { model_dir: dir.clone(), version_dir: dir.clone(), model_path: dir.join("model.onnx") };
    let config = spam_config(model, threads)?;
    OnnxBackend::new(threads).load(&config, &files, 0).map_err(|e| anyhow!("{e}"))
}

/// `input_ids` and `attention_mask` of consecutive emails, padded with 0 to the longest.
pub fn batch_tensors(emails: &[Vec<i64>]) -> Vec<Tensor> {
    let len = emails.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(emails.len() * len);
    let mut mask: Vec<i64> = Vec::with_capacity(emails.len() * len);
    for e in emails {
        ids.extend_from_slice(e);
        ids.resize(ids.len() + len - e.len(), 0);
        mask.resize(mask.len() + e.len(), 1);
        mask.resize(mask.len() + len - e.len(), 0);
    }
    let shape = vec![emails.len() as i64, len as i64];
    vec![Tensor::from_vec("input_ids", shape.clone(), ids), Tensor::from_vec("attention_mask", shape, mask)]
}

/// One batch size driven for a while.
#[derive(Clone, Debug)]
pub struct BatchRun {
    pub batch_size: usize,
    pub inferences: u64,
    pub seconds: f64,
    pub per_sec: f64,
    /// Milliseconds per batch execution.
    pub batch_ms: Summary,
}

/// Runs batches of `batch_size` consecutive emails (cycling through `emails`) for `seconds`,
/// after `warmup` batches.
pub fn run_batch_size(
    instance: &mut dyn ModelInstance,
    emails: &[Vec<i64>],
    batch_size: usize,
    seconds: f64,
    warmup: usize,
) -> Result<BatchRun> {
    let batches: Vec<Vec<Tensor>> = emails.chunks_exact(batch_size.min(emails.len())).map(batch_tensors).collect();
    let mut it = batches.iter().cycle();
    for _ in 0..warmup {
        let b = it.next().ok_or_else(|| anyhow!("no emails"))?;
        instance.execute(b.clone(), &[]).map_err(|e| anyhow!("{e}"))?;
    }
    let mut times = Vec::new();
    let mut inferences = 0u64;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    while start.elapsed() < limit {
        let b = it.next().ok_or_else(|| anyhow!("no emails"))?;
        let t = Instant::now();
        instance.execute(b.clone(), &[]).map_err(|e| anyhow!("{e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        inferences += b[0].shape[0] as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(BatchRun {
        batch_size,
        inferences,
        seconds: secs,
        per_sec: inferences as f64 / secs,
        batch_ms: Summary::of(&mut times),
    })
}

/// Every batch size in turn; the best is the one with the most inferences per second.
pub fn sweep(
    instance: &mut dyn ModelInstance,
    emails: &[Vec<i64>],
    batch_sizes: &[usize],
    seconds: f64,
) -> Result<Vec<BatchRun>> {
    batch_sizes.iter().map(|&b| run_batch_size(instance, emails, b, seconds, 2)).collect()
}

pub fn best(runs: &[BatchRun]) -> Option<&BatchRun> {
    runs.iter().max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
}

/// The `inprocess` subcommand's report.
pub fn print_sweep(model: &str, threads: usize, runs: &[BatchRun]) {
    println!("in-process {model}, {threads} intra-op thread(s), batches of consecutive emails padded to the longest:");
    println!("| batch | inferences/s | ms per batch p50 | p99 |");
    println!("|---:|---:|---:|---:|");
    for r in runs {
        println!("| {} | {:.1} | {:.2} | {:.2} |", r.batch_size, r.per_sec, r.batch_ms.p50, r.batch_ms.p99);
    }
    if let Some(b) = best(runs) {
        println!("best: batch {} at {:.1} inferences/s", b.batch_size, b.per_sec);
    }
}
