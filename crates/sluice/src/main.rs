//! `sluice`: the command line of the Sluice model server.

mod models;

/// Request buffers are allocated on tokio workers and freed on instance threads (and back);
/// glibc's malloc spent about a tenth of the server's CPU on that under load, mimalloc a fraction.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_server::{EngineOptions, ServerConfig};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a model server speaking the Open Inference Protocol (KServe V2 / Triton) over HTTP and gRPC",
    long_about = "Sluice serves ONNX models from a Triton-style model repository over the Open Inference \
Protocol (KServe V2), so tritonclient, perf_analyzer and curl work unchanged.\n\n\
Quick start:\n  sluice serve --model-repository ./examples/models\n  \
curl localhost:8000/v2/models/add_sub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of one or more model repositories.
    Serve(ServeArgs),
    /// List, inspect, load and unload the models of a running server.
    Models(models::ModelsArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ControlMode {
    /// Load every model at start.
    None,
    /// Load only --load-model models at start; others through the repository API.
    Explicit,
    /// Load every model at start and follow changes in the repository.
    Poll,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Model repository (repeatable): a directory, or s3://bucket/prefix, gs://bucket/prefix,
    /// az://container/prefix (mirrored into --model-cache-dir; credentials and endpoint from the
    /// standard AWS_* / GOOGLE_* / AZURE_* variables).
    #[arg(long = "model-repository", env = "SLUICE_MODEL_REPOSITORY", value_delimiter = ',', required = true)]
    model_repository: Vec<PathBuf>,
    /// Where object-storage repositories are mirrored (default $SLUICE_HOME/cache).
    #[arg(long, env = "SLUICE_MODEL_CACHE_DIR")]
    model_cache_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "SLUICE_HOST", default_value = "0.0.0.0")]
    host: String,
    /// HTTP port (V2 REST).
    #[arg(long, env = "SLUICE_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,
    /// gRPC port (inference.GRPCInferenceService and grpc.health.v1).
    #[arg(long, env = "SLUICE_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,
    /// Prometheus metrics port (/metrics).
    #[arg(long, env = "SLUICE_METRICS_PORT", default_value_t = 8002)]
    metrics_port: u16,
    /// When models are loaded.
    #[arg(long, env = "SLUICE_MODEL_CONTROL_MODE", value_enum, default_value = "none")]
    model_control_mode: ControlMode,
    /// Seconds between repository scans in poll mode.
    #[arg(long, env = "SLUICE_REPOSITORY_POLL_SECS", default_value_t = 15)]
    repository_poll_secs: u64,
    /// Model to load at start in explicit mode (repeatable).
    #[arg(long = "load-model", env = "SLUICE_LOAD_MODEL", value_delimiter = ',')]
    load_model: Vec<String>,
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, the setup's install, python3's onnxruntime).
    #[arg(long, env = "SLUICE_ONNXRUNTIME_LIB")]
    onnxruntime_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per model instance (0 = ONNX Runtime's default).
    #[arg(long, env = "SLUICE_ONNX_INTRA_OP_THREADS", default_value_t = 0)]
    onnx_intra_op_threads: usize,
    /// Largest accepted HTTP body in bytes; larger ones get 413.
    #[arg(long, env = "SLUICE_HTTP_MAX_BODY_SIZE", default_value_t = 64 << 20)]
    http_max_body_size: usize,
    /// Requests a model version may hold queued before answering 429.
    #[arg(long, env = "SLUICE_MAX_QUEUE_SIZE", default_value_t = 1024)]
    max_queue_size: usize,
    /// Queued input bytes a model version may hold before answering 429 (0 = no limit).
    #[arg(long, env = "SLUICE_MAX_QUEUE_BYTES", default_value_t = 256 << 20)]
    max_queue_bytes: usize,
    /// Seconds in-flight requests get to finish on SIGTERM.
    #[arg(long, env = "SLUICE_GRACE_PERIOD_SECS", default_value_t = 30)]
    grace_period_secs: u64,
    /// Where asynchronous jobs are kept (embedded store; default $SLUICE_HOME/state).
    #[arg(long, env = "SLUICE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Job workers in this process (0 = accept jobs only).
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = 2)]
    workers: usize,
    /// Runs of a job before it is failed (a worker that died mid-run counts as a run).
    #[arg(long, env = "SLUICE_JOB_MAX_ATTEMPTS", default_value_t = 3)]
    job_max_attempts: u32,
    /// Queued jobs before submits answer 429.
    #[arg(long, env = "SLUICE_MAX_QUEUED_JOBS", default_value_t = 100_000)]
    max_queued_jobs: u64,
    /// Secret that signs webhooks (whsec_<base64>); default: generated once, kept in --state-dir.
    #[arg(long, env = "SLUICE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Host a callback_url may point to (repeatable). Without any, public hosts only; private and
    /// loopback addresses need their host listed here.
    #[arg(long = "webhook-allow", env = "SLUICE_WEBHOOK_ALLOW", value_delimiter = ',')]
    webhook_allow: Vec<String>,
    /// Delivery attempts per webhook (retries on network errors and 5xx).
    #[arg(long, env = "SLUICE_WEBHOOK_MAX_ATTEMPTS", default_value_t = 6)]
    webhook_max_attempts: u32,
    /// Milliseconds before the first webhook retry; doubles each time, with jitter.
    #[arg(long, env = "SLUICE_WEBHOOK_BACKOFF_MS", default_value_t = 1000)]
    webhook_backoff_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(args)),
        Command::Models(args) => models::finish(rt.block_on(models::run(args))),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let opts = EngineOptions {
        model_repositories: args.model_repository,
        control_mode: match args.model_control_mode {
            ControlMode::None => sluice_repository::ControlMode::None,
            ControlMode::Explicit => sluice_repository::ControlMode::Explicit,
            ControlMode::Poll => sluice_repository::ControlMode::Poll,
        },
        load_models: args.load_model,
        onnxruntime_lib: args.onnxruntime_lib,
        intra_op_threads: args.onnx_intra_op_threads,
        queue_capacity: args.max_queue_size,
        queue_max_bytes: args.max_queue_bytes,
        poll_interval: Duration::from_secs(args.repository_poll_secs.max(1)),
        model_cache_dir: args.model_cache_dir,
    };
    let engine = sluice_server::build_engine(&opts).await?;
    let cfg = ServerConfig {
        host: args.host,
        http_port: args.http_port,
        grpc_port: args.grpc_port,
        metrics_port: args.metrics_port,
        max_body_bytes: args.http_max_body_size,
        grace_period: Duration::from_secs(args.grace_period_secs),
        jobs: Some(sluice_server::JobsOptions {
            workers: args.workers,
            webhook_secret: args.webhook_secret,
            webhook_allow: args.webhook_allow,
            webhook_max_attempts: args.webhook_max_attempts,
            webhook_backoff: Duration::from_millis(args.webhook_backoff_ms),
            max_attempts: args.job_max_attempts,
            max_queued: args.max_queued_jobs,
            ..sluice_server::JobsOptions::new(
                args.state_dir.unwrap_or_else(|| sluice_repository::remote::data_dir("state")),
            )
        }),
    };
    let server = sluice_server::start(engine, &cfg).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
