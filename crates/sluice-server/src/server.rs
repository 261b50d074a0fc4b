//! Starting and stopping the three listeners (HTTP, gRPC, metrics) around one engine, with a
//! graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::Engine;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after the listeners stop accepting.
    pub grace_period: Duration,
    /// How long the listeners keep accepting after shutdown begins, with readiness already
    /// false, so that endpoints controllers and load balancers stop sending before anything is
    /// refused.
    pub drain_delay: Duration,
    /// Asynchronous jobs; `None`: the job endpoints answer 501.
    pub jobs: Option<JobsOptions>,
    /// Serve the inference endpoints (HTTP and gRPC); `false` for `sluice worker`, which only
    /// runs jobs and serves /metrics.
    pub inference: bool,
}

/// Where jobs live and how they are run.
#[derive(Clone, Debug)]
pub struct JobsOptions {
    /// The embedded store's directory (`jobs.redb`, the generated webhook secret).
    pub state_dir: std::path::PathBuf,
    /// Job workers in this process (0 = accept jobs only).
    pub workers: usize,
    /// `redis://host:port/db`: jobs live in Redis, shared by every process pointed at it.
    pub queue: Option<String>,
    /// Redis: a job whose worker stopped renewing its claim this long is taken over.
    pub visibility_timeout: Duration,
    /// `whsec_...`; `None`: generated once and kept in the state directory.
    pub webhook_secret: Option<String>,
    pub webhook_allow: Vec<String>,
    pub webhook_max_attempts: u32,
    pub webhook_backoff: Duration,
    /// Runs of a job before it is failed.
    pub max_attempts: u32,
    /// Queued jobs before submits answer 429.
    pub max_queued: u64,
    pub sweep_every: Duration,
}

impl JobsOptions {
    pub fn new(state_dir: std::path::PathBuf) -> JobsOptions {
        JobsOptions {
            state_dir,
            workers: 2,
            queue: None,
            visibility_timeout: Duration::from_secs(30),
            webhook_secret: None,
            webhook_allow: Vec::new(),
            webhook_max_attempts: 6,
            webhook_backoff: Duration::from_secs(1),
            max_attempts: 3,
            max_queued: 100_000,
            sweep_every: Duration::from_secs(60),
        }
    }
}

/// The webhook secret: the configured one, else the one the job store keeps (the state
/// directory's file, or Redis), else a new one that the store keeps from now on (shown once).
async fn webhook_secret(o: &JobsOptions, store: &dyn sluice_jobs::JobStore) -> anyhow::Result<sluice_jobs::Signer> {
    let secret = match &o.webhook_secret {
        Some(s) => s.clone(),
        None => {
            let (s, new) = store.webhook_secret(sluice_jobs::Signer::generate()).await?;
            if new {
                tracing::warn!(secret = %s, "generated a webhook signing secret, kept in the job store; it is shown only this once");
            }
            s
        }
    };
    sluice_jobs::Signer::from_secret(&secret).map_err(anyhow::Error::msg)
}

async fn start_jobs(
    o: &JobsOptions,
    engine: &Arc<Engine>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(Arc<sluice_jobs::Jobs>, Vec<JoinHandle<()>>)> {
    let store: Arc<dyn sluice_jobs::JobStore> = match &o.queue {
        Some(url) => {
            let store = sluice_jobs::RedisStore::connect(url, "sluice", o.visibility_timeout, o.max_queued).await?;
            tracing::info!(queue = %url, workers = o.workers, "job queue: Redis Streams");
            Arc::new(store)
        }
        None => {
            let store = sluice_jobs::EmbeddedStore::open(&o.state_dir, o.max_queued)?;
            tracing::info!(state_dir = %o.state_dir.display(), workers = o.workers, "job queue: embedded store");
            Arc::new(store)
        }
    };
    let cfg = sluice_jobs::JobsConfig {
        max_attempts: o.max_attempts,
        retry_delay: Duration::from_secs(1),
        webhooks: sluice_jobs::WebhookConfig {
            signer: webhook_secret(o, store.as_ref()).await?,
            allow: o.webhook_allow.clone(),
            max_attempts: o.webhook_max_attempts,
            backoff: o.webhook_backoff,
            timeout: Duration::from_secs(10),
        },
        sweep_every: o.sweep_every,
        heartbeat: (o.visibility_timeout / 3).max(Duration::from_millis(100)),
    };
    let jobs = sluice_jobs::Jobs::new(store, cfg);
    let models: Arc<dyn Fn() -> Vec<String> + Send + Sync> = {
        let engine = engine.clone();
        Arc::new(move || engine.ready_models())
    };
    let resolver: Arc<dyn sluice_types::Resolver> = engine.clone();
    let mut tasks = jobs.start_workers(o.workers, resolver, models, stop.clone());
    tasks.push(jobs.start_maintenance(stop.clone()));
    Ok((jobs, tasks))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            http_port: 8000,
            grpc_port: 8001,
            metrics_port: 8002,
            max_body_bytes: 64 << 20,
            grace_period: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            jobs: None,
            inference: true,
        }
    }
}

/// A running server: its bound addresses and the handle to stop it.
pub struct RunningServer {
    pub engine: Arc<Engine>,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Job workers and maintenance: they finish the job they hold, then stop.
    job_tasks: Vec<JoinHandle<()>>,
    pub jobs: Option<Arc<sluice_jobs::Jobs>>,
    grace: Duration,
    drain_delay: Duration,
}

async fn bind(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port)).await.with_context(|| format!("cannot listen for {what} on {host}:{port}"))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Binds all listeners (port 0 picks a free port) and starts serving.
pub async fn start(engine: Arc<Engine>, cfg: &ServerConfig) -> anyhow::Result<RunningServer> {
    let metrics = bind(&cfg.host, cfg.metrics_port, "metrics").await?;
    let metrics_addr = metrics.local_addr()?;
    let (stop, rx) = watch::channel(false);
    let (jobs, job_tasks) = match &cfg.jobs {
        Some(o) => {
            let (jobs, tasks) = start_jobs(o, &engine, &rx).await?;
            (Some(jobs), tasks)
        }
        None => (None, Vec::new()),
    };
    let mut tasks = Vec::new();
    // A worker-only process serves no inference; its addresses say so (port 0).
    let (mut http_addr, mut grpc_addr) = (SocketAddr::from(([0, 0, 0, 0], 0)), SocketAddr::from(([0, 0, 0, 0], 0)));
    if cfg.inference {
        let http = bind(&cfg.host, cfg.http_port, "HTTP").await?;
        let grpc = bind(&cfg.host, cfg.grpc_port, "gRPC").await?;
        (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
        let app = crate::http::router(engine.clone(), cfg.max_body_bytes, jobs.clone());
        tasks.push(tokio::spawn({
            let rx = rx.clone();
            async move { axum::serve(http, app).with_graceful_shutdown(stopped(rx)).await.context("HTTP server failed") }
        }));
        tasks.push(tokio::spawn(crate::grpc::serve(engine.clone(), grpc, stopped(rx.clone()))));
    }
    let engine_for_metrics = engine.clone();
    let jobs_for_metrics = jobs.clone();
    let metrics_app = Router::new().route(
        "/metrics",
        get(move || {
            let (engine, jobs) = (engine_for_metrics.clone(), jobs_for_metrics.clone());
            async move {
                let mut text = crate::metrics::render(engine.repository());
                crate::metrics::render_traffic(&mut text, &engine.traffic_counters());
                if let Some(jobs) = jobs {
                    let depth = jobs.store.depth().await.unwrap_or_default();
                    text.push_str(&jobs.metrics.render(&depth));
                }
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }
        }),
    );
    tasks.push(tokio::spawn({
        let rx = rx.clone();
        async move {
            axum::serve(metrics, metrics_app).with_graceful_shutdown(stopped(rx)).await.context("metrics server failed")
        }
    }));
    if cfg.inference {
        tracing::info!(http = %http_addr, grpc = %grpc_addr, metrics = %metrics_addr, "sluice is listening");
    } else {
        tracing::info!(metrics = %metrics_addr, "sluice worker is running");
    }
    Ok(RunningServer {
        engine,
        http_addr,
        grpc_addr,
        metrics_addr,
        stop,
        tasks,
        job_tasks,
        jobs,
        grace: cfg.grace_period,
        drain_delay: cfg.drain_delay,
    })
}

impl RunningServer {
    /// Readiness goes false at once; the listeners keep accepting (and answering) for the drain
    /// delay, then stop accepting; in-flight requests, streams and jobs finish (up to the grace
    /// period); then models are unloaded.
    pub async fn shutdown(self) {
        self.engine.start_draining();
        if !self.drain_delay.is_zero() {
            tracing::info!(delay_ms = self.drain_delay.as_millis() as u64, "draining: not ready, still accepting");
            tokio::time::sleep(self.drain_delay).await;
        }
        let _ = self.stop.send(true);
        let all =
            futures::future::join(futures::future::join_all(self.tasks), futures::future::join_all(self.job_tasks));
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!("grace period over; stopping with requests still in flight");
        }
        self.engine.repository().unload_all().await;
    }
}

/// What a server needs to build its engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub model_repositories: Vec<std::path::PathBuf>,
    pub control_mode: sluice_repository::ControlMode,
    pub load_models: Vec<String>,
    pub onnxruntime_lib: Option<std::path::PathBuf>,
    /// ONNX Runtime intra-op threads per instance (0 = ONNX Runtime's default).
    pub intra_op_threads: usize,
    pub queue_capacity: usize,
    /// Queued input bytes per model version before 429 (0 = no byte limit).
    pub queue_max_bytes: usize,
    /// How often poll mode rescans the repositories.
    pub poll_interval: Duration,
    /// Where `s3://` / `gs://` / `az://` repositories are mirrored (one subdirectory per URL);
    /// `None`: [`sluice_repository::remote::default_cache_dir`].
    pub model_cache_dir: Option<std::path::PathBuf>,
    /// How shadow endpoints queue, run and log their copies.
    pub shadow: sluice_traffic::ShadowOptions,
    /// Where rollouts and experiments keep their state: a `redis://` URL (shared by replicas),
    /// else `state.redb` in `state_dir`, else memory (a restart starts them over).
    pub state_url: Option<String>,
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            model_repositories: vec![],
            control_mode: sluice_repository::ControlMode::None,
            load_models: vec![],
            onnxruntime_lib: None,
            intra_op_threads: 0,
            queue_capacity: 1024,
            queue_max_bytes: 256 << 20,
            poll_interval: Duration::from_secs(15),
            model_cache_dir: None,
            shadow: sluice_traffic::ShadowOptions::default(),
            state_url: None,
            state_dir: None,
        }
    }
}

/// Loads ONNX Runtime, starts the repository and loads the models the control mode asks for.
/// A model that fails to load is reported in the repository index; it does not stop the others.
pub async fn build_engine(opts: &EngineOptions) -> anyhow::Result<Arc<Engine>> {
    let lib = sluice_backend::onnx::find_library(opts.onnxruntime_lib.as_deref())?;
    sluice_backend::onnx::init_runtime(&lib)?;
    tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
    let mut backends = sluice_backend::BackendRegistry::new();
    backends.register(Arc::new(sluice_backend::onnx::OnnxBackend::new(opts.intra_op_threads)));
    backends.register(Arc::new(sluice_llm::backend::CandleBackend));
    // Object-storage repositories are served from their local mirror, in the order given.
    let (mut roots, mut remotes) = (Vec::new(), Vec::new());
    for root in &opts.model_repositories {
        let url = root.to_string_lossy();
        if sluice_repository::remote::is_remote_url(&url) {
            let cache = opts.model_cache_dir.clone().unwrap_or_else(sluice_repository::remote::default_cache_dir);
            let remote = sluice_repository::RemoteRepository::from_url(&url, &cache)?;
            tracing::info!(url = %url, cache = %remote.local_root().display(), "remote model repository");
            roots.push(remote.local_root());
            remotes.push(remote);
        } else {
            anyhow::ensure!(root.is_dir(), "model repository {} is not a directory", root.display());
            roots.push(root.clone());
        }
    }
    let assembler = crate::assemble::Assembler {
        queue_limits: sluice_scheduler::QueueLimits {
            max_requests: opts.queue_capacity,
            max_bytes: opts.queue_max_bytes,
        },
    };
    let repo = crate::assemble::Repository::start(
        sluice_repository::RepositoryOptions {
            roots,
            control_mode: opts.control_mode,
            startup_models: opts.load_models.clone(),
            backends,
            remotes,
        },
        Arc::new(assembler),
    );
    repo.load_startup_models().await?;
    let traffic = sluice_traffic::BuildOptions {
        shadow: opts.shadow.clone(),
        state: Some(sluice_state::open(opts.state_url.as_deref(), opts.state_dir.as_deref()).await?),
        replica: sluice_state::replica_id(),
    };
    let engine = Engine::new(repo, traffic);
    engine.load_endpoints().await;
    if opts.control_mode == sluice_repository::ControlMode::Poll {
        // The poller lives as long as the engine; nothing needs to join it.
        let weak = Arc::downgrade(&engine);
        let every = opts.poll_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                engine.poll().await;
            }
        });
    }
    Ok(engine)
}
