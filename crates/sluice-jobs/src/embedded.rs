//! The default job store: one `redb` file in the state directory, so that `sluice serve` alone
//! keeps its jobs across a restart. A job is committed to disk before its submit is answered;
//! jobs that were processing when the process died are queued again when the store opens.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use sluice_types::ServeError;
use tokio::sync::Notify;

use crate::record::{now_ms, Delivery, JobRecord, JobStatus};
use crate::store::{conflict_final, expired, not_found, JobStore, ListFilter};

/// Job id → record (JSON).
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// (priority << 64 | sequence) → job id: the queue, in dispatch order.
const QUEUE: TableDefinition<u128, &str> = TableDefinition::new("queue");
/// Idempotency key → job id.
const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");
/// Id of an expired job → when it expired: so that a late poll hears "expired", not "unknown".
const EXPIRED: TableDefinition<&str, u64> = TableDefinition::new("expired");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How long an expired job's tombstone is kept.
const TOMBSTONE_MS: u64 = 24 * 3600 * 1000;

fn db_err(e: impl std::fmt::Display) -> ServeError {
    ServeError::Internal(format!("job store: {e}"))
}

fn encode(r: &JobRecord) -> Result<Vec<u8>, ServeError> {
    serde_json::to_vec(r).map_err(db_err)
}

fn decode(b: &[u8]) -> Result<JobRecord, ServeError> {
    serde_json::from_slice(b).map_err(db_err)
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// The state directory (also holds `webhook-secret`).
    dir: std::path::PathBuf,
    /// One permit per submitted job: wakes a waiting worker.
    arrivals: Arc<Notify>,
    /// Queued jobs per model (rebuilt at open).
    depth: Arc<Mutex<BTreeMap<String, u64>>>,
    max_queued: u64,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/jobs.redb`; jobs left processing by a dead process go back to
    /// the queue. `max_queued`: submits beyond it answer "queue full".
    pub fn open(dir: &Path, max_queued: u64) -> Result<EmbeddedStore, ServeError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ServeError::Internal(format!("cannot create state directory {}: {e}", dir.display())))?;
        let path = dir.join("jobs.redb");
        let db = Database::create(&path).map_err(|e| {
            ServeError::Internal(format!(
                "cannot open the job store {}: {e} (is another sluice using it?)",
                path.display()
            ))
        })?;
        let store = EmbeddedStore {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            arrivals: Arc::new(Notify::new()),
            depth: Arc::default(),
            max_queued,
        };
        store.recover()?;
        Ok(store)
    }

    /// Requeues jobs that were processing, creates the tables, counts the queue.
    fn recover(&self) -> Result<(), ServeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut requeued = 0;
        {
            let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
            let mut queue = tx.open_table(QUEUE).map_err(db_err)?;
            tx.open_table(IDEMPOTENCY).map_err(db_err)?;
            tx.open_table(EXPIRED).map_err(db_err)?;
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let mut seq = meta.get("seq").map_err(db_err)?.map(|v| v.value()).unwrap_or(0);
            let mut stale = Vec::new();
            for entry in jobs.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                let r = decode(v.value())?;
                if r.status == JobStatus::Processing {
                    stale.push(r);
                }
            }
            for mut r in stale {
                r.status = JobStatus::Queued;
                seq += 1;
                queue.insert(queue_key(r.priority, seq), r.job_id.as_str()).map_err(db_err)?;
                jobs.insert(r.job_id.as_str(), encode(&r)?.as_slice()).map_err(db_err)?;
                requeued += 1;
            }
            meta.insert("seq", seq).map_err(db_err)?;
            let mut depth = self.depth.lock();
            for entry in queue.iter().map_err(db_err)? {
                let (_, id) = entry.map_err(db_err)?;
                if let Some(v) = jobs.get(id.value()).map_err(db_err)? {
                    let r = decode(v.value())?;
                    if r.status == JobStatus::Queued {
                        *depth.entry(r.model).or_default() += 1;
                    }
                }
            }
        }
        tx.commit().map_err(db_err)?;
        if requeued > 0 {
            tracing::warn!(requeued, "jobs that were running when the server stopped are queued again");
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, ServeError> + Send + 'static,
    ) -> Result<T, ServeError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| ServeError::Internal(format!("job store task failed: {e}")))?
    }

    fn try_claim(db: &Database) -> Result<Option<JobRecord>, ServeError> {
        let mut tx = db.begin_write().map_err(db_err)?;
        // Losing a claim in a crash only means the job runs again: no fsync for it.
        let _ = tx.set_durability(Durability::None);
        let claimed = {
            let mut queue = tx.open_table(QUEUE).map_err(db_err)?;
            let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
            let mut claimed = None;
            while let Some((_, id)) = queue.pop_first().map_err(db_err)? {
                let id = id.value().to_string();
                let Some(v) = jobs.get(id.as_str()).map_err(db_err)?.map(|v| v.value().to_vec()) else { continue };
                let mut r = decode(&v)?;
                if r.status != JobStatus::Queued {
                    continue; // cancelled while queued
                }
                r.status = JobStatus::Processing;
                r.attempts += 1;
                r.started_ms = Some(now_ms());
                jobs.insert(id.as_str(), encode(&r)?.as_slice()).map_err(db_err)?;
                claimed = Some(r);
                break;
            }
            claimed
        };
        tx.commit().map_err(db_err)?;
        Ok(claimed)
    }

    fn change_depth(&self, model: &str, delta: i64) {
        let mut d = self.depth.lock();
        let e = d.entry(model.to_string()).or_default();
        *e = e.saturating_add_signed(delta);
    }
}

/// Writes a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new();
    f.write(true).create_new(true);
    #[cfg(unix)]
    f.mode(0o600);
    f.open(path)?.write_all(text.as_bytes())
}

fn queue_key(priority: u32, seq: u64) -> u128 {
    ((priority as u128) << 64) | seq as u128
}

/// The next queue sequence number (persisted with the transaction).
fn next_seq(meta: &mut redb::Table<&str, u64>) -> Result<u64, ServeError> {
    let seq = meta.get("seq").map_err(db_err)?.map(|v| v.value()).unwrap_or(0) + 1;
    meta.insert("seq", seq).map_err(db_err)?;
    Ok(seq)
}

/// A job's record inside a write transaction; `None` when there is no such job.
fn stored(jobs: &redb::Table<&str, &[u8]>, id: &str) -> Result<Option<JobRecord>, ServeError> {
    jobs.get(id).map_err(db_err)?.map(|v| decode(v.value())).transpose()
}

fn durable(db: &Database) -> Result<redb::WriteTransaction, ServeError> {
    let mut tx = db.begin_write().map_err(db_err)?;
    let _ = tx.set_durability(Durability::Immediate);
    Ok(tx)
}

fn read_job(db: &Database, id: &str) -> Result<JobRecord, ServeError> {
    let tx = db.begin_read().map_err(db_err)?;
    let jobs = tx.open_table(JOBS).map_err(db_err)?;
    match jobs.get(id).map_err(db_err)? {
        Some(v) => {
            let r = decode(v.value())?;
            match r.expires_ms() {
                Some(at) if now_ms() >= at => Err(expired(id, at)),
                _ => Ok(r),
            }
        }
        None => {
            let gone = tx.open_table(EXPIRED).map_err(db_err)?;
            match gone.get(id).map_err(db_err)? {
                Some(at) => Err(expired(id, at.value())),
                None => Err(not_found(id)),
            }
        }
    }
}

#[async_trait]
impl JobStore for EmbeddedStore {
    async fn submit(&self, job: JobRecord) -> Result<(JobRecord, bool), ServeError> {
        let queued: u64 = self.depth.lock().values().sum();
        let max = self.max_queued;
        let (record, new) = self
            .blocking(move |db| {
                let tx = durable(db)?;
                let out = {
                    let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
                    let mut idem = tx.open_table(IDEMPOTENCY).map_err(db_err)?;
                    if let Some(key) = &job.idempotency_key {
                        let first = idem.get(key.as_str()).map_err(db_err)?.map(|v| v.value().to_string());
                        if let Some(first) = first {
                            if let Some(v) = jobs.get(first.as_str()).map_err(db_err)? {
                                let r = decode(v.value())?;
                                if !r.is_expired(now_ms()) {
                                    return Ok((r, false));
                                }
                            }
                        }
                    }
                    if queued >= max {
                        return Err(ServeError::ResourceExhausted {
                            message: format!("the job queue is full ({max} queued jobs)"),
                            retry_after_ms: 5000,
                        });
                    }
                    let seq = next_seq(&mut tx.open_table(META).map_err(db_err)?)?;
                    let mut queue = tx.open_table(QUEUE).map_err(db_err)?;
                    queue.insert(queue_key(job.priority, seq), job.job_id.as_str()).map_err(db_err)?;
                    jobs.insert(job.job_id.as_str(), encode(&job)?.as_slice()).map_err(db_err)?;
                    if let Some(key) = &job.idempotency_key {
                        idem.insert(key.as_str(), job.job_id.as_str()).map_err(db_err)?;
                    }
                    (job, true)
                };
                tx.commit().map_err(db_err)?;
                Ok(out)
            })
            .await?;
        if new {
            self.change_depth(&record.model, 1);
            self.arrivals.notify_one();
        }
        Ok((record, new))
    }

    async fn get(&self, id: &str) -> Result<JobRecord, ServeError> {
        let id = id.to_string();
        self.blocking(move |db| read_job(db, &id)).await
    }

    async fn cancel(&self, id: &str) -> Result<JobRecord, ServeError> {
        let id = id.to_string();
        let (r, was) = self
            .blocking(move |db| {
                let tx = durable(db)?;
                let out = {
                    let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
                    let mut r = stored(&jobs, &id)?.ok_or_else(|| not_found(&id))?;
                    if r.status.is_final() {
                        return Err(conflict_final(&r));
                    }
                    let was = r.status;
                    // The queue entry stays; a claim skips it.
                    r.finish(JobStatus::Cancelled, None, Some("cancelled by the client".into()));
                    jobs.insert(id.as_str(), encode(&r)?.as_slice()).map_err(db_err)?;
                    (r, was)
                };
                tx.commit().map_err(db_err)?;
                Ok(out)
            })
            .await?;
        if was == JobStatus::Queued {
            self.change_depth(&r.model, -1);
        }
        Ok(r)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, ServeError> {
        let filter = filter.clone();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let jobs = tx.open_table(JOBS).map_err(db_err)?;
            let now = now_ms();
            let mut out = Vec::new();
            // Ids are time-ordered (UUIDv7): newest first.
            for entry in jobs.iter().map_err(db_err)?.rev() {
                let (_, v) = entry.map_err(db_err)?;
                let r = decode(v.value())?;
                if !filter.matches(&r, now) {
                    continue;
                }
                out.push(r);
                if out.len() >= filter.limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn claim(&self, _models: &[String], wait: Duration) -> Result<Option<JobRecord>, ServeError> {
        let until = Instant::now() + wait;
        loop {
            if let Some(r) = self.blocking(EmbeddedStore::try_claim).await? {
                self.change_depth(&r.model, -1);
                return Ok(Some(r));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let _ = tokio::time::timeout(left, self.arrivals.notified()).await;
        }
    }

    async fn finish(&self, job: JobRecord) -> Result<JobRecord, ServeError> {
        self.blocking(move |db| {
            let tx = durable(db)?;
            let stored = {
                let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
                let current = stored(&jobs, &job.job_id)?.ok_or_else(|| not_found(&job.job_id))?;
                if current.status.is_final() {
                    current
                } else {
                    jobs.insert(job.job_id.as_str(), encode(&job)?.as_slice()).map_err(db_err)?;
                    job
                }
            };
            tx.commit().map_err(db_err)?;
            Ok(stored)
        })
        .await
    }

    async fn release(&self, id: &str) -> Result<(), ServeError> {
        let id = id.to_string();
        let model = self
            .blocking(move |db| {
                let tx = durable(db)?;
                let model = {
                    let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
                    let mut r = stored(&jobs, &id)?.ok_or_else(|| not_found(&id))?;
                    if r.status != JobStatus::Processing {
                        return Ok(None);
                    }
                    r.status = JobStatus::Queued;
                    let seq = next_seq(&mut tx.open_table(META).map_err(db_err)?)?;
                    tx.open_table(QUEUE)
                        .map_err(db_err)?
                        .insert(queue_key(r.priority, seq), id.as_str())
                        .map_err(db_err)?;
                    jobs.insert(id.as_str(), encode(&r)?.as_slice()).map_err(db_err)?;
                    Some(r.model)
                };
                tx.commit().map_err(db_err)?;
                Ok(model)
            })
            .await?;
        if let Some(m) = model {
            self.change_depth(&m, 1);
            self.arrivals.notify_one();
        }
        Ok(())
    }

    async fn record_deliveries(&self, id: &str, deliveries: Vec<Delivery>, pending: bool) -> Result<(), ServeError> {
        let id = id.to_string();
        self.blocking(move |db| {
            let tx = durable(db)?;
            {
                let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
                let Some(mut r) = stored(&jobs, &id)? else { return Ok(()) };
                r.deliveries = deliveries;
                r.webhook_pending = pending;
                jobs.insert(id.as_str(), encode(&r)?.as_slice()).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn webhook_secret(&self, candidate: String) -> Result<(String, bool), ServeError> {
        let path = self.dir.join("webhook-secret");
        if let Ok(s) = std::fs::read_to_string(&path) {
            return Ok((s.trim().to_string(), false));
        }
        write_private(&path, &candidate)
            .map_err(|e| ServeError::Internal(format!("cannot write {}: {e}", path.display())))?;
        Ok((candidate, true))
    }

    async fn pending_webhooks(&self) -> Result<Vec<JobRecord>, ServeError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let jobs = tx.open_table(JOBS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in jobs.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                let r = decode(v.value())?;
                if r.webhook_pending && r.status.is_final() {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn depth(&self) -> Result<Vec<(String, u64)>, ServeError> {
        Ok(self.depth.lock().iter().map(|(m, n)| (m.clone(), *n)).collect())
    }

    async fn sweep(&self) -> Result<usize, ServeError> {
        self.blocking(|db| {
            let now = now_ms();
            let tx = db.begin_write().map_err(db_err)?;
            let mut removed = 0;
            {
                let mut jobs = tx.open_table(JOBS).map_err(db_err)?;
                let mut idem = tx.open_table(IDEMPOTENCY).map_err(db_err)?;
                let mut gone = tx.open_table(EXPIRED).map_err(db_err)?;
                let mut dead = Vec::new();
                for entry in jobs.iter().map_err(db_err)? {
                    let (k, v) = entry.map_err(db_err)?;
                    let r = decode(v.value())?;
                    if let Some(at) = r.expires_ms().filter(|&at| now >= at) {
                        dead.push((k.value().to_string(), r.idempotency_key, at));
                    }
                }
                for (id, key, at) in dead {
                    jobs.remove(id.as_str()).map_err(db_err)?;
                    if let Some(key) = key {
                        idem.remove(key.as_str()).map_err(db_err)?;
                    }
                    gone.insert(id.as_str(), at).map_err(db_err)?;
                    removed += 1;
                }
                gone.retain(|_, at| now < at + TOMBSTONE_MS).map_err(db_err)?;
                let _ = gone.len();
            }
            tx.commit().map_err(db_err)?;
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::NewJob;
    use sluice_types::InferRequest;

    fn job(model: &str, priority: u32, key: Option<&str>, ttl_seconds: u64) -> JobRecord {
        JobRecord::new(NewJob {
            request: InferRequest { model: model.into(), ..Default::default() },
            context: Default::default(),
            priority,
            ttl_seconds,
            callback_url: None,
            idempotency_key: key.map(str::to_string),
        })
    }

    async fn claim(s: &EmbeddedStore) -> Option<JobRecord> {
        s.claim(&[], Duration::ZERO).await.unwrap()
    }

    #[tokio::test]
    async fn urgent_first_then_oldest_and_cancelled_jobs_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), 100).unwrap();
        let (a, _) = s.submit(job("m", 5, None, 60)).await.unwrap();
        let (b, _) = s.submit(job("m", 1, None, 60)).await.unwrap();
        let (c, _) = s.submit(job("m", 5, None, 60)).await.unwrap();
        let (d, _) = s.submit(job("n", 5, None, 60)).await.unwrap();
        assert_eq!(s.depth().await.unwrap(), vec![("m".into(), 3), ("n".into(), 1)]);
        assert_eq!(s.cancel(&c.job_id).await.unwrap().status, JobStatus::Cancelled);
        assert!(matches!(s.cancel(&c.job_id).await, Err(ServeError::Conflict(_))));
        let order: Vec<String> =
            [claim(&s).await, claim(&s).await, claim(&s).await].into_iter().map(|r| r.unwrap().job_id).collect();
        assert_eq!(order, vec![b.job_id, a.job_id.clone(), d.job_id]);
        assert!(claim(&s).await.is_none());
        let got = s.get(&a.job_id).await.unwrap();
        assert_eq!((got.status, got.attempts), (JobStatus::Processing, 1));
    }

    #[tokio::test]
    async fn reopening_requeues_what_was_processing() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = EmbeddedStore::open(dir.path(), 100).unwrap();
            s.submit(job("m", 5, None, 60)).await.unwrap();
            claim(&s).await.unwrap().job_id
        };
        let s = EmbeddedStore::open(dir.path(), 100).unwrap();
        assert_eq!(s.get(&id).await.unwrap().status, JobStatus::Queued);
        let again = claim(&s).await.unwrap();
        assert_eq!((again.job_id.as_str(), again.attempts), (id.as_str(), 2));
    }

    #[tokio::test]
    async fn idempotency_queue_limit_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), 2).unwrap();
        let (first, new) = s.submit(job("m", 5, Some("k"), 1)).await.unwrap();
        assert!(new);
        let (same, new) = s.submit(job("m", 5, Some("k"), 1)).await.unwrap();
        assert!(!new);
        assert_eq!(same.job_id, first.job_id);
        s.submit(job("m", 5, None, 1)).await.unwrap();
        assert!(matches!(s.submit(job("m", 5, None, 1)).await, Err(ServeError::ResourceExhausted { .. })));

        let mut done = claim(&s).await.unwrap();
        done.finish(JobStatus::Completed, Some(serde_json::json!({})), None);
        done.finished_ms = Some(now_ms() - 2000);
        s.finish(done.clone()).await.unwrap();
        let e = s.get(&done.job_id).await.unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert_eq!(s.sweep().await.unwrap(), 1);
        let e = s.get(&done.job_id).await.unwrap_err();
        assert!(e.to_string().contains("expired"), "a swept job still says it expired: {e}");
        let (fresh, new) = s.submit(job("m", 5, Some("k"), 1)).await.unwrap();
        assert!(new, "an expired job frees its idempotency key");
        assert_ne!(fresh.job_id, done.job_id);
    }
}
