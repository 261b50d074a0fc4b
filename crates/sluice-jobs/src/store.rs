//! The seam between the job API, the workers and where jobs live.

use std::time::Duration;

use async_trait::async_trait;
use sluice_types::ServeError;

use crate::record::{Delivery, JobRecord, JobStatus};

/// What `GET /v2/jobs` asks for.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub model: Option<String>,
    pub status: Option<JobStatus>,
    pub limit: usize,
}

impl ListFilter {
    /// Whether a listing at `now` (ms) shows the job: not expired, and of the model and status asked.
    pub fn matches(&self, r: &JobRecord, now: u64) -> bool {
        !r.is_expired(now)
            && self.model.as_ref().is_none_or(|m| *m == r.model)
            && self.status.is_none_or(|s| s == r.status)
    }
}

/// Where jobs live. Every method is atomic: a job is never run twice at once, never lost, and
/// a final status is never overwritten.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job durably before answering. With an idempotency key that is already
    /// known, stores nothing and returns the first job; the flag says whether it is new.
    async fn submit(&self, job: JobRecord) -> Result<(JobRecord, bool), ServeError>;

    /// A job by id; NotFound (saying so) when it never existed or its result expired.
    async fn get(&self, id: &str) -> Result<JobRecord, ServeError>;

    /// Cancels a queued or running job (a running one's result is discarded when it comes).
    /// A job that already ended answers Conflict.
    async fn cancel(&self, id: &str) -> Result<JobRecord, ServeError>;

    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, ServeError>;

    /// Takes the next queued job (most urgent priority first, then oldest) of one of `models`,
    /// marks it processing and counts an attempt; waits up to `wait` for one.
    async fn claim(&self, models: &[String], wait: Duration) -> Result<Option<JobRecord>, ServeError>;

    /// Stores the final state of a claimed job, unless it was cancelled meanwhile; returns what
    /// is stored.
    async fn finish(&self, job: JobRecord) -> Result<JobRecord, ServeError>;

    /// Puts a claimed job back in the queue (its worker is stopping, or the model was not ready).
    async fn release(&self, id: &str) -> Result<(), ServeError>;

    /// Tells the store the job's worker is alive and still running it (Redis: renews the claim
    /// so that no other worker takes it over).
    async fn heartbeat(&self, _job: &JobRecord) -> Result<(), ServeError> {
        Ok(())
    }

    /// The webhook secret every process of this store signs with: the stored one, or
    /// `candidate`, stored now (the flag says so).
    async fn webhook_secret(&self, candidate: String) -> Result<(String, bool), ServeError>;

    /// Records the webhook attempts so far, and whether delivery is still due.
    async fn record_deliveries(&self, id: &str, deliveries: Vec<Delivery>, pending: bool) -> Result<(), ServeError>;

    /// Final jobs whose webhook is still due (after a restart).
    async fn pending_webhooks(&self) -> Result<Vec<JobRecord>, ServeError>;

    /// Queued jobs per model.
    async fn depth(&self) -> Result<Vec<(String, u64)>, ServeError>;

    /// Deletes expired results; returns how many.
    async fn sweep(&self) -> Result<usize, ServeError>;
}

pub(crate) fn not_found(id: &str) -> ServeError {
    ServeError::NotFound(format!("job {id} not found"))
}

pub(crate) fn expired(id: &str, at_ms: u64) -> ServeError {
    let at = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(at_ms));
    ServeError::NotFound(format!("job {id} expired at {at}: its result was kept for its ttl_seconds"))
}

pub(crate) fn conflict_final(job: &JobRecord) -> ServeError {
    ServeError::Conflict(format!("job {} already ended: it is {}", job.job_id, job.status.as_str()))
}
