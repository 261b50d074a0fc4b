//! [`Jobs`]: what the edges call (submit, get, cancel, list) and the workers that run queued
//! jobs through the endpoint a [`Resolver`] names, in the context of their submit, store the outcome and deliver webhooks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_types::{Resolver, ServeError};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::metrics::JobMetrics;
use crate::record::{now_ms, response_json, JobRecord, JobStatus, NewJob};
use crate::store::{JobStore, ListFilter};
use crate::webhook::{deliver, WebhookConfig};

#[derive(Clone)]
pub struct JobsConfig {
    /// Runs of a job before it is failed (a worker that died mid-run counts as a run).
    pub max_attempts: u32,
    /// Wait before retrying a job whose model was not ready.
    pub retry_delay: Duration,
    pub webhooks: WebhookConfig,
    /// How often expired results are deleted.
    pub sweep_every: Duration,
    /// How often a running job's claim is renewed (well under the store's visibility timeout).
    pub heartbeat: Duration,
}

/// The job subsystem of one process.
pub struct Jobs {
    pub store: Arc<dyn JobStore>,
    pub metrics: Arc<JobMetrics>,
    cfg: JobsConfig,
    client: reqwest::Client,
    /// Jobs running in this process, to stop waiting for them when they are cancelled.
    running: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Bounds concurrent webhook deliveries.
    deliveries: Arc<Semaphore>,
}

/// The label of a failure reason in metrics (one per error kind).
fn reason(e: &ServeError) -> &'static str {
    match e {
        ServeError::NotFound(_) => "not_found",
        ServeError::Unavailable(_) => "unavailable",
        ServeError::InvalidArgument(_) => "invalid_argument",
        ServeError::Unsupported(_) => "unsupported",
        ServeError::ResourceExhausted { .. } => "resource_exhausted",
        ServeError::Timeout(_) => "timeout",
        ServeError::Cancelled(_) => "cancelled",
        ServeError::Conflict(_) => "conflict",
        ServeError::PayloadTooLarge(_) => "payload_too_large",
        ServeError::Backend(_) => "backend",
        ServeError::Internal(_) => "internal",
    }
}

/// Errors after which the same job may well succeed later.
fn transient(e: &ServeError) -> bool {
    matches!(e, ServeError::Unavailable(_) | ServeError::ResourceExhausted { .. } | ServeError::Timeout(_))
}

impl Jobs {
    pub fn new(store: Arc<dyn JobStore>, cfg: JobsConfig) -> Arc<Jobs> {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap_or_default();
        Arc::new(Jobs {
            store,
            metrics: Arc::default(),
            cfg,
            client,
            running: Mutex::default(),
            deliveries: Arc::new(Semaphore::new(64)),
        })
    }

    /// Accepts a job (after checking its callback URL); `false` when an idempotency key
    /// returned an earlier job.
    pub async fn submit(&self, job: NewJob) -> Result<(JobRecord, bool), ServeError> {
        if let Some(url) = &job.callback_url {
            self.cfg.webhooks.check(url).await?;
        }
        let (record, new) = self.store.submit(JobRecord::new(job)).await?;
        if new {
            self.metrics.submitted();
        }
        Ok((record, new))
    }

    pub async fn get(&self, id: &str) -> Result<JobRecord, ServeError> {
        self.store.get(id).await
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, ServeError> {
        self.store.list(filter).await
    }

    /// Cancels a job. A running one is cancelled at once: its request is withdrawn from the
    /// model's queue if it has not started, and a result that comes anyway is discarded.
    pub async fn cancel(&self, id: &str) -> Result<JobRecord, ServeError> {
        let r = self.store.cancel(id).await?;
        if let Some(tx) = self.running.lock().remove(id) {
            let _ = tx.send(());
        }
        self.metrics.ended(&r.model, "cancelled", None);
        self.spawn_delivery(r.clone());
        Ok(r)
    }

    /// Starts `n` workers that run jobs through the endpoints `resolver` finds, for the models
    /// `models()` names,
    /// until `stop` turns true (each finishes the job it holds first).
    pub fn start_workers(
        self: &Arc<Self>,
        n: usize,
        resolver: Arc<dyn Resolver>,
        models: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
        stop: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let (jobs, resolver, models, stop) = (self.clone(), resolver.clone(), models.clone(), stop.clone());
                tokio::spawn(async move { jobs.worker(resolver, models, stop).await })
            })
            .collect()
    }

    /// Deletes expired results now and then, and delivers webhooks a restart interrupted.
    pub fn start_maintenance(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move {
            match jobs.store.pending_webhooks().await {
                Ok(pending) => pending.into_iter().for_each(|r| jobs.spawn_delivery(r)),
                Err(e) => tracing::warn!(error = %e, "cannot list pending webhooks"),
            }
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(jobs.cfg.sweep_every) => {}
                }
                match jobs.store.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "expired job results deleted"),
                    Err(e) => tracing::warn!(error = %e, "job sweep failed"),
                }
            }
        })
    }

    async fn worker(
        &self,
        resolver: Arc<dyn Resolver>,
        models: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            let serving = models();
            let claimed = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                c = self.store.claim(&serving, Duration::from_secs(1)) => c,
            };
            match claimed {
                Ok(Some(job)) => self.run(job, resolver.as_ref()).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a job");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn run(&self, mut job: JobRecord, resolver: &dyn Resolver) {
        let started = job.started_ms.unwrap_or_else(now_ms);
        self.metrics.started(started.saturating_sub(job.created_ms) as f64 / 1000.0);
        if job.attempts > self.cfg.max_attempts {
            let why = format!("abandoned: {} runs started and none finished (workers died)", job.attempts - 1);
            return self.end(job, Err(ServeError::Internal(why)), started).await;
        }
        let request = match job.request.to_request(&job.model, job.version.as_deref()) {
            Ok(r) => r,
            Err(e) => return self.end(job, Err(e), started).await,
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.running.lock().insert(job.job_id.clone(), cancel_tx);
        let heartbeat = async {
            loop {
                tokio::time::sleep(self.cfg.heartbeat).await;
                if let Err(e) = self.store.heartbeat(&job).await {
                    tracing::warn!(job = %job.job_id, error = %e, "cannot renew a job's claim");
                }
            }
        };
        let ctx = job.request_context();
        let span = tracing::info_span!("job", job = %job.job_id, request_id = %ctx.request_id);
        let infer = async {
            let endpoint = resolver.resolve(&request.model, request.version.as_deref())?;
            endpoint.infer(&ctx, request).await.map(|a| a.response)
        };
        let outcome = tokio::select! {
            r = tracing::Instrument::instrument(infer, span) => Some(r),
            _ = cancel_rx => None,
            _ = heartbeat => None,
        };
        self.running.lock().remove(&job.job_id);
        let Some(result) = outcome else { return }; // cancelled: the store says so already
        match result {
            Err(e) if transient(&e) && job.attempts < self.cfg.max_attempts => {
                tracing::info!(job = %job.job_id, error = %e, "job will be retried");
                tokio::time::sleep(self.cfg.retry_delay * job.attempts).await;
                if let Err(e) = self.store.release(&job.job_id).await {
                    tracing::warn!(job = %job.job_id, error = %e, "cannot requeue a job");
                }
            }
            result => {
                if let Err(e) = &result {
                    if transient(e) {
                        job.error = Some(format!("gave up after {} attempts: {e}", job.attempts));
                    }
                }
                self.end(job, result, started).await
            }
        }
    }

    async fn end(&self, mut job: JobRecord, result: Result<sluice_types::InferResponse, ServeError>, started: u64) {
        let ran = now_ms().saturating_sub(started) as f64 / 1000.0;
        match &result {
            Ok(resp) => job.finish(JobStatus::Completed, Some(response_json(resp)), None),
            Err(e) => {
                let why = job.error.take().unwrap_or_else(|| e.to_string());
                self.metrics.failed(&job.model, reason(e));
                job.finish(JobStatus::Failed, None, Some(why));
            }
        }
        match self.store.finish(job).await {
            Ok(stored) => {
                self.metrics.ended(&stored.model, stored.status.as_str(), Some(ran));
                if stored.webhook_pending {
                    self.spawn_delivery(stored);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot store a finished job"),
        }
    }

    fn spawn_delivery(&self, job: JobRecord) {
        if job.callback_url.is_none() || !job.webhook_pending {
            return;
        }
        let (client, cfg, store, metrics, sem) = (
            self.client.clone(),
            self.cfg.webhooks.clone(),
            self.store.clone(),
            self.metrics.clone(),
            self.deliveries.clone(),
        );
        tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else { return };
            let id = job.job_id.clone();
            let outcome = deliver(&client, &cfg, &job, |deliveries, pending| {
                let (store, id) = (store.clone(), id.clone());
                async move {
                    if let Err(e) = store.record_deliveries(&id, deliveries, pending).await {
                        tracing::warn!(job = %id, error = %e, "cannot record a webhook delivery");
                    }
                }
            })
            .await;
            metrics.webhook(outcome.label());
        });
    }
}
