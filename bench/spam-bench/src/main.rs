//! `spam-bench`: issue 3's benchmarks on the real spam classifiers (MiniLM encoders, int8) with
//! real email text.
//!
//! * `inprocess`: the physical limit, the ONNX Runtime session driven in-process through
//!   Sluice's own backend at each batch size;
//! * `serve-load`: N concurrent batch-1 clients against a running Sluice (HTTP binary or gRPC);
//! * `compare`: starts Sluice itself and runs the whole table in interleaved rounds;
//! * `text-vs-ids`: starts Sluice and compares raw text tokenized by the server (`spam-text`)
//!   with token ids tokenized by the client (`spam-fast`), interleaved rounds;
//! * `pa-half-load`: starts Sluice and measures the half-load p99 with Triton's `perf_analyzer`;
//! * `cascade`: starts Sluice with cascade endpoints over the text classifiers and measures
//!   accuracy, escalation, throughput and latency on the held-out emails (issue 16);
//! * `shadow-cost`: starts Sluice with a shadow endpoint and measures what the shadow costs the
//!   primary's latency and throughput at full and half load (issue 16).
//!
//! Build with `cargo build --release -p spam-bench -p sluice`; see docs/benchmarks.md.

mod cascade;
mod compare;
mod data;
mod endpoints;
mod inprocess;
mod load;
mod pa;
mod shadow;
mod stats;
mod text_ids;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::load::{Phase, Target, Transport, Workload};

#[derive(Parser)]
#[command(
    name = "spam-bench",
    about = "Sluice on the real spam classifiers: in-process limit, served load, comparison"
)]
struct Cli {
    /// The models folder (default: $SLUICE_MODELS, else $SLUICE_HOME/models, else
    /// ~/.local/share/sluice/models; scripts/setup.sh fills it).
    #[arg(long, global = true)]
    models: Option<PathBuf>,
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, $SLUICE_HOME/lib, python3's onnxruntime).
    #[arg(long, global = true)]
    onnxruntime_lib: Option<PathBuf>,
    /// Use only the first N emails (after a fixed shuffle); default all 6046 (`cascade`: all 3023
    /// held-out ones).
    #[arg(long, global = true)]
    emails: Option<usize>,
    /// Threads of the load generator's tokio runtime (1 = current-thread runtime, the least
    /// interference with the server on a small machine).
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive the model in-process through Sluice's ONNX backend at each batch size.
    Inprocess(InprocessArgs),
    /// Drive a running Sluice with concurrent batch-1 clients.
    ServeLoad(ServeLoadArgs),
    /// Start Sluice and run the whole comparison (issue 3's table) in interleaved rounds.
    Compare(compare::CompareArgs),
    /// Start Sluice and compare server-side tokenization (raw text to spam-text) with token ids
    /// tokenized here (spam-fast), same emails, interleaved rounds.
    TextVsIds(text_ids::TextVsIdsArgs),
    /// Start Sluice and measure the p99 at half the in-process best rate with Triton's
    /// perf_analyzer (`--request-rate-range`, constant and Poisson arrivals).
    PaHalfLoad(pa::PaArgs),
    /// Start Sluice with cascade endpoints (spam-text, then spam-text-accurate) at several
    /// thresholds and measure accuracy, share escalated, throughput and latency over the
    /// held-out emails, against either model alone (issue 16).
    Cascade(cascade::CascadeArgs),
    /// Start Sluice with a shadow endpoint (primary spam-text, shadow spam-text-accurate) and
    /// measure the primary's latency and throughput directly and through the endpoint, at full
    /// and half load (issue 16).
    ShadowCost(shadow::ShadowCostArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SpamModel {
    SpamAccurate,
    SpamFast,
}

impl SpamModel {
    pub fn dir(self) -> &'static str {
        match self {
            SpamModel::SpamAccurate => "spam-accurate",
            SpamModel::SpamFast => "spam-fast",
        }
    }
}

#[derive(clap::Args)]
struct InprocessArgs {
    #[arg(long, value_enum, default_value = "spam-accurate")]
    model: SpamModel,
    /// ONNX Runtime intra-op threads (as the server's `intra_op_thread_count`); default: CPUs.
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    batch_sizes: Vec<usize>,
    /// Seconds per batch size.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadKind {
    /// add_sub when the model name starts with "add_sub", else emails.
    Auto,
    Spam,
    AddSub,
}

#[derive(clap::Args)]
struct ServeLoadArgs {
    /// host:port of Sluice's HTTP edge (statistics are read there in every mode).
    #[arg(long, default_value = "127.0.0.1:8000")]
    url: String,
    /// host:port of the gRPC edge (default: the HTTP port + 1).
    #[arg(long)]
    grpc_url: Option<String>,
    #[arg(long)]
    model: String,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Send over gRPC instead of HTTP binary.
    #[arg(long)]
    grpc: bool,
    /// Also run an open-loop Poisson load at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum, default_value = "auto")]
    workload: WorkloadKind,
}

/// Writes a subcommand's results to `--json`, else to `bench/results/<default_name>`.
fn write_results(
    json_arg: Option<&Path>,
    default_name: &str,
    value: &serde_json::Value,
    started: Instant,
) -> Result<()> {
    let out = json_arg.map(Path::to_path_buf).unwrap_or_else(|| repo_root().join("bench/results").join(default_name));
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(value)?)?;
    eprintln!("wrote {} ({:.0} s in all)", out.display(), started.elapsed().as_secs_f64());
    Ok(())
}

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

fn models_dir(cli: Option<&Path>) -> Result<PathBuf> {
    let dir = match cli {
        Some(d) => d.to_path_buf(),
        None => sluice_test_models::models_dir(),
    };
    if !dir.is_dir() {
        bail!("models folder not found: {} (run scripts/setup.sh to fill it, or pass --models DIR)", dir.display());
    }
    Ok(dir.canonicalize().unwrap_or(dir))
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    Ok(rt)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let models = models_dir(cli.models.as_deref())?;
    match cli.command {
        Command::Inprocess(a) => {
            let threads = a.threads.unwrap_or_else(cpus);
            let emails = data::emails(&models, a.model.dir(), cli.emails)?;
            inprocess::init_ort(cli.onnxruntime_lib.as_deref())?;
            let mut instance = inprocess::load(&models, a.model.dir(), threads)?;
            let runs = inprocess::sweep(instance.as_mut(), &emails, &a.batch_sizes, a.seconds)?;
            inprocess::print_sweep(a.model.dir(), threads, &runs);
            Ok(())
        }
        Command::ServeLoad(a) => {
            let kind = match a.workload {
                WorkloadKind::Auto if a.model.starts_with("add_sub") => WorkloadKind::AddSub,
                WorkloadKind::Auto => WorkloadKind::Spam,
                k => k,
            };
            let transport = if a.grpc { Transport::Grpc } else { Transport::Http };
            let wl = match kind {
                WorkloadKind::AddSub => Workload::add_sub(&a.model, transport)?,
                _ => {
                    let emails = data::emails(&models, SpamModel::SpamAccurate.dir(), cli.emails)?;
                    Workload::spam(&a.model, transport, &emails)?
                }
            };
            let grpc = match a.grpc_url {
                Some(g) => g,
                None => {
                    let (host, port) = a.url.rsplit_once(':').context("--url must be host:port")?;
                    format!("{host}:{}", port.parse::<u16>()? + 1)
                }
            };
            let target = Target { http: a.url.clone(), grpc: Some(grpc) };
            let rt = runtime(cli.client_threads)?;
            rt.block_on(async {
                for &c in &a.concurrency {
                    let phases = [Phase { concurrency: c, duration: Duration::from_secs_f64(a.seconds) }];
                    let r = load::run_phases(&target, &wl, &phases, Duration::from_secs_f64(a.warmup)).await?;
                    r.print(&format!("{} {} concurrency {c}", a.model, transport.name()));
                }
                if let Some(rate) = a.rate {
                    let r = load::run_open(
                        &target,
                        &wl,
                        rate,
                        load::Arrivals::Poisson,
                        Duration::from_secs_f64(a.seconds),
                        Duration::from_secs_f64(a.warmup),
                        64,
                    )
                    .await?;
                    r.print(&format!("{} {} open loop {rate}/s", a.model, transport.name()));
                }
                Ok(())
            })
        }
        Command::Compare(a) => compare::run(a, &models, cli.onnxruntime_lib.as_deref(), cli.emails, cli.client_threads),
        Command::TextVsIds(a) => {
            text_ids::run(a, &models, cli.onnxruntime_lib.as_deref(), cli.emails, cli.client_threads)
        }
        Command::PaHalfLoad(a) => pa::run(a, &models, cli.onnxruntime_lib.as_deref(), cli.emails),
        Command::Cascade(a) => cascade::run(a, &models, cli.onnxruntime_lib.as_deref(), cli.emails, cli.client_threads),
        Command::ShadowCost(a) => {
            shadow::run(a, &models, cli.onnxruntime_lib.as_deref(), cli.emails, cli.client_threads)
        }
    }
}
