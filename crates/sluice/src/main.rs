//! `sluice`: the command line of the Sluice model server, and its client.

mod client;
mod endpoints;
mod experiment;
mod generate;
mod infer;
mod jobs;
mod logging;
mod models;
mod npy;
mod output;
mod rollout;

/// Request buffers are allocated on tokio workers and freed on instance threads (and back);
/// glibc's malloc spent about a tenth of the server's CPU on that under load, mimalloc a fraction.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_server::{EngineOptions, JobsOptions, ServerConfig};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a model server for ONNX and GGUF models over the Open Inference Protocol (KServe V2 / Triton), \
HTTP and gRPC, and its command-line client",
    long_about = "Sluice serves ONNX models (ONNX Runtime) and GGUF language models (candle, continuous batching) \
from a Triton-style model repository over the Open Inference Protocol (KServe V2) on HTTP and gRPC, so \
tritonclient, perf_analyzer and curl work unchanged. It also runs requests as asynchronous jobs (with signed \
webhooks), streams generated tokens (SSE, gRPC), and answers OpenAI-compatible /v1 routes. The client \
subcommands (models, infer, generate, jobs) talk to a running server.\n\n\
Quick start:\n  sluice serve --model-repository ./examples/models\n  \
sluice infer iris '[[5.1,3.5,1.4,0.2]]'\n  \
sluice generate smollm --chat \"What is the capital of France?\""
)]
struct Cli {
    /// Log lines as text or as one JSON object a line (to stderr).
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of one or more model repositories.
    Serve(ServeArgs),
    /// Run only job workers: take jobs from the Redis queue (--queue) and run them, with no
    /// inference endpoints (only /metrics).
    Worker(WorkerArgs),
    /// List, inspect, load and unload the models of a running server.
    Models(models::ModelsArgs),
    /// Run one inference request on a running server and print the outputs.
    Infer(infer::InferArgs),
    /// Generate text with a generative model of a running server, streamed as it comes.
    Generate(generate::GenerateArgs),
    /// Submit asynchronous jobs to a running server, and follow, wait for, cancel or list them.
    Jobs(jobs::JobsArgs),
    /// List the endpoints (endpoint.yaml) of a running server, or show one: its targets and
    /// what it counted (a shadow's agreement, errors, drops and latencies).
    Endpoints(endpoints::EndpointsArgs),
    /// Show a rollout endpoint (step, traffic, guardrails, history), or pause, resume, promote or
    /// roll it back with a reason.
    Rollout(rollout::RolloutArgs),
    /// Show an experiment endpoint (arms, metrics, tests, verdict), or stop it on an arm.
    Experiment(experiment::ExperimentArgs),
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
    #[command(flatten)]
    engine: EngineArgs,
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
    /// Largest accepted HTTP body in bytes; larger ones get 413.
    #[arg(long, env = "SLUICE_HTTP_MAX_BODY_SIZE", default_value_t = 64 << 20)]
    http_max_body_size: usize,
    /// Seconds in-flight requests and running jobs get to finish on SIGTERM, once the listeners
    /// stop accepting.
    #[arg(long, env = "SLUICE_GRACE_PERIOD_SECS", default_value_t = 30)]
    grace_period_secs: u64,
    /// Seconds the listeners keep accepting on SIGTERM, with readiness already false, so that
    /// load balancers and Kubernetes endpoints stop sending before anything is refused.
    #[arg(long, env = "SLUICE_DRAIN_DELAY_SECS", default_value_t = 5.0)]
    drain_delay_secs: f64,
    #[command(flatten)]
    jobs: JobArgs,
    /// Job workers in this process (0 = accept jobs only).
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = 2)]
    workers: usize,
}

#[derive(clap::Args)]
struct WorkerArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address of the metrics port.
    #[arg(long, env = "SLUICE_HOST", default_value = "0.0.0.0")]
    host: String,
    /// Prometheus metrics port (/metrics: job queue depth, model metrics).
    #[arg(long, env = "SLUICE_METRICS_PORT", default_value_t = 8002)]
    metrics_port: u16,
    /// Seconds the running jobs get to finish on SIGTERM (unfinished ones are taken over by
    /// other workers after the visibility timeout).
    #[arg(long, env = "SLUICE_GRACE_PERIOD_SECS", default_value_t = 30)]
    grace_period_secs: u64,
    #[command(flatten)]
    jobs: JobArgs,
    /// Jobs this process runs at once.
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = 2)]
    workers: usize,
}

/// What loads and runs models.
#[derive(clap::Args)]
struct EngineArgs {
    /// Model repository (repeatable): a directory, or s3://bucket/prefix, gs://bucket/prefix,
    /// az://container/prefix (mirrored into --model-cache-dir; credentials and endpoint from the
    /// standard AWS_* / GOOGLE_* / AZURE_* variables).
    #[arg(long = "model-repository", env = "SLUICE_MODEL_REPOSITORY", value_delimiter = ',', required = true)]
    model_repository: Vec<PathBuf>,
    /// Where object-storage repositories are mirrored (default $SLUICE_HOME/cache).
    #[arg(long, env = "SLUICE_MODEL_CACHE_DIR")]
    model_cache_dir: Option<PathBuf>,
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
    /// Requests a model version may hold queued before answering 429.
    #[arg(long, env = "SLUICE_MAX_QUEUE_SIZE", default_value_t = 1024)]
    max_queue_size: usize,
    /// Queued input bytes a model version may hold before answering 429 (0 = no limit).
    #[arg(long, env = "SLUICE_MAX_QUEUE_BYTES", default_value_t = 256 << 20)]
    max_queue_bytes: usize,
    /// Shadow copies an endpoint holds waiting before it drops new ones (counted as dropped).
    #[arg(long, env = "SLUICE_SHADOW_QUEUE_SIZE", default_value_t = 256)]
    shadow_queue_size: usize,
    /// Shadow copies an endpoint runs at once.
    #[arg(long, env = "SLUICE_SHADOW_CONCURRENCY", default_value_t = 4)]
    shadow_concurrency: usize,
    /// Where shadow endpoints write their sampled comparisons, `<endpoint>.jsonl`
    /// (default $SLUICE_HOME/shadow).
    #[arg(long, env = "SLUICE_SHADOW_LOG_DIR")]
    shadow_log_dir: Option<PathBuf>,
}

/// Where jobs live and how webhooks go.
#[derive(clap::Args)]
struct JobArgs {
    /// Where asynchronous jobs, and rollout and experiment state, are kept (embedded stores;
    /// default $SLUICE_HOME/state).
    #[arg(long, env = "SLUICE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep jobs in Redis instead (redis://host:port/db), shared by every server and worker
    /// pointed at it.
    #[arg(long, env = "SLUICE_QUEUE")]
    queue: Option<String>,
    /// Keep rollout and experiment state in Redis (redis://host:port/db), shared by every
    /// replica pointed at it: one unit gets one arm everywhere, counts add up, one replica drives
    /// each rollout. Default: the --queue URL when one is given, else the embedded store.
    #[arg(long, env = "SLUICE_STATE")]
    state: Option<String>,
    /// Redis: seconds after which a job whose worker stopped renewing its claim is taken over.
    #[arg(long, env = "SLUICE_VISIBILITY_TIMEOUT_SECS", default_value_t = 30)]
    visibility_timeout_secs: u64,
    /// Runs of a job before it is failed (a worker that died mid-run counts as a run).
    #[arg(long, env = "SLUICE_JOB_MAX_ATTEMPTS", default_value_t = 3)]
    job_max_attempts: u32,
    /// Queued jobs before submits answer 429 (per model with Redis).
    #[arg(long, env = "SLUICE_MAX_QUEUED_JOBS", default_value_t = 100_000)]
    max_queued_jobs: u64,
    /// Secret that signs webhooks (whsec_<base64>); default: generated once, kept in the job store.
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

impl EngineArgs {
    fn options(self) -> EngineOptions {
        EngineOptions {
            model_repositories: self.model_repository,
            control_mode: match self.model_control_mode {
                ControlMode::None => sluice_repository::ControlMode::None,
                ControlMode::Explicit => sluice_repository::ControlMode::Explicit,
                ControlMode::Poll => sluice_repository::ControlMode::Poll,
            },
            load_models: self.load_model,
            onnxruntime_lib: self.onnxruntime_lib,
            intra_op_threads: self.onnx_intra_op_threads,
            queue_capacity: self.max_queue_size,
            queue_max_bytes: self.max_queue_bytes,
            poll_interval: Duration::from_secs(self.repository_poll_secs.max(1)),
            model_cache_dir: self.model_cache_dir,
            shadow: sluice_server::ShadowOptions {
                queue: self.shadow_queue_size,
                concurrency: self.shadow_concurrency,
                log_dir: Some(self.shadow_log_dir.unwrap_or_else(|| sluice_repository::remote::data_dir("shadow"))),
                ..Default::default()
            },
            // Set from the job arguments, which name the state directory and Redis.
            state_url: None,
            state_dir: None,
        }
    }
}

impl JobArgs {
    fn options(self, workers: usize) -> JobsOptions {
        JobsOptions {
            workers,
            queue: self.queue,
            visibility_timeout: Duration::from_secs(self.visibility_timeout_secs.max(1)),
            webhook_secret: self.webhook_secret,
            webhook_allow: self.webhook_allow,
            webhook_max_attempts: self.webhook_max_attempts,
            webhook_backoff: Duration::from_millis(self.webhook_backoff_ms),
            max_attempts: self.job_max_attempts,
            max_queued: self.max_queued_jobs,
            ..JobsOptions::new(self.state_dir.unwrap_or_else(|| sluice_repository::remote::data_dir("state")))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => exit_server(rt.block_on(serve(args))),
        Command::Worker(args) => exit_server(rt.block_on(worker(args))),
        Command::Models(args) => client::finish(rt.block_on(models::run(args))),
        Command::Infer(args) => client::finish(rt.block_on(infer::run(args))),
        Command::Generate(args) => client::finish(rt.block_on(generate::run(args))),
        Command::Jobs(args) => client::finish(rt.block_on(jobs::run(args))),
        Command::Endpoints(args) => client::finish(rt.block_on(endpoints::run(args))),
        Command::Rollout(args) => client::finish(rt.block_on(rollout::run(args))),
        Command::Experiment(args) => client::finish(rt.block_on(experiment::run(args))),
    }
}

/// What `fn main() -> anyhow::Result<()>` would print: the error with its causes.
fn exit_server(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let state_dir = args.jobs.state_dir.clone().unwrap_or_else(|| sluice_repository::remote::data_dir("state"));
    let opts = EngineOptions {
        state_url: args.jobs.state.clone().or_else(|| args.jobs.queue.clone()),
        state_dir: Some(state_dir),
        ..args.engine.options()
    };
    let engine = sluice_server::build_engine(&opts).await?;
    let cfg = ServerConfig {
        host: args.host,
        http_port: args.http_port,
        grpc_port: args.grpc_port,
        metrics_port: args.metrics_port,
        max_body_bytes: args.http_max_body_size,
        grace_period: Duration::from_secs(args.grace_period_secs),
        drain_delay: Duration::try_from_secs_f64(args.drain_delay_secs)
            .map_err(|e| anyhow::anyhow!("--drain-delay-secs {}: {e}", args.drain_delay_secs))?,
        jobs: Some(args.jobs.options(args.workers)),
        inference: true,
    };
    let server = sluice_server::start(engine, &cfg).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: readiness false, draining");
    server.shutdown().await;
    Ok(())
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.jobs.queue.is_some(),
        "sluice worker takes jobs from a shared queue: give --queue redis://host:port/db"
    );
    // Jobs sent to a rollout or experiment count with the servers': the same state store.
    let opts = EngineOptions {
        state_url: args.jobs.state.clone().or_else(|| args.jobs.queue.clone()),
        ..args.engine.options()
    };
    let engine = sluice_server::build_engine(&opts).await?;
    let cfg = ServerConfig {
        host: args.host,
        metrics_port: args.metrics_port,
        grace_period: Duration::from_secs(args.grace_period_secs),
        jobs: Some(args.jobs.options(args.workers.max(1))),
        inference: false,
        ..ServerConfig::default()
    };
    let server = sluice_server::start(engine, &cfg).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: finishing the jobs in hand");
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
