//! The job store for several machines: Redis Streams with one consumer group per model stream.
//!
//! - `sluice:job:{id}` (`sluice` is the key prefix): a hash holding the record (JSON) and the fields that change atomically
//!   (`status`, `attempts`, `started_ms`, `entry`: the stream entry a worker holds). Every status
//!   change is a Lua script that checks the current status first, so a final status is never
//!   overwritten and a job is never claimed twice.
//! - `sluice:stream:{model}`: XADD on submit, XREADGROUP to claim, XACK + XDEL when done. Entries
//!   of a worker that died stay pending; after the visibility timeout another worker takes them
//!   over with XAUTOCLAIM (a live worker renews its claim while it runs).
//! - Results expire with the job's TTL (PEXPIRE); a small tombstone says "expired" for a day more.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Script};
use sluice_types::ServeError;

use crate::record::{now_ms, Delivery, JobRecord, JobStatus};
use crate::store::{conflict_final, expired, not_found, JobStore, ListFilter};

const GROUP: &str = "sluice-workers";
const DAY_MS: u64 = 24 * 3600 * 1000;

fn redis_err(e: redis::RedisError) -> ServeError {
    ServeError::Unavailable(format!("job store (Redis): {e}"))
}

/// queued → processing (or processing → processing for an entry taken over from a dead worker).
const CLAIM: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'queued' then
  redis.call('DECR', KEYS[2])
elseif not (st == 'processing' and ARGV[3] == '1') then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'processing', 'started_ms', ARGV[1], 'entry', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 1
"#;

/// Writes a final status unless one is there already; acknowledges the stream entry either way.
/// KEYS: job, stream, tombstone, webhook set, queued counter. ARGV: group, status, record,
/// ttl ms, expires at ms, id, webhook pending, expected status ('' = processing or queued).
const FINISH: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry and ARGV[2] ~= 'cancelled' then
  redis.call('XACK', KEYS[2], ARGV[1], entry)
  redis.call('XDEL', KEYS[2], entry)
end
if st ~= 'queued' and st ~= 'processing' then return 0 end
if st == 'queued' then redis.call('DECR', KEYS[5]) end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'record', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[3], ARGV[5], 'PX', tonumber(ARGV[4]) + 86400000)
if ARGV[7] == '1' then redis.call('SADD', KEYS[4], ARGV[6]) end
return 1
"#;

/// processing → queued, with a new stream entry. KEYS: job, queued counter, stream. ARGV: group, id.
const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
  redis.call('XACK', KEYS[3], ARGV[1], entry)
  redis.call('XDEL', KEYS[3], entry)
end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'entry')
redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[2])
return 1
"#;

pub struct RedisStore {
    /// Every key starts with it (`sluice`).
    prefix: String,
    conn: ConnectionManager,
    client: redis::Client,
    /// Connections for blocking reads, one per concurrent claim.
    blocking: Mutex<Vec<ConnectionManager>>,
    consumer: String,
    visibility: Duration,
    max_queued: u64,
    groups: Mutex<std::collections::HashSet<String>>,
    last_reclaim: Mutex<Option<Instant>>,
    scripts: HashMap<&'static str, Script>,
}

impl RedisStore {
    /// Connects to `redis://host:port/db`. Entries a worker held longer than `visibility`
    /// without renewing are taken over by others.
    pub async fn connect(
        url: &str,
        prefix: &str,
        visibility: Duration,
        max_queued: u64,
    ) -> Result<RedisStore, ServeError> {
        let client = redis::Client::open(url)
            .map_err(|e| ServeError::invalid(format!("--queue {url}: not a Redis URL ({e})")))?;
        let conn = ConnectionManager::new(client.clone())
            .await
            .map_err(|e| ServeError::Unavailable(format!("cannot connect to Redis at {url}: {e}")))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let consumer = format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[24..]);
        let scripts = [("claim", CLAIM), ("finish", FINISH), ("release", RELEASE)]
            .into_iter()
            .map(|(n, s)| (n, Script::new(s)))
            .collect();
        Ok(RedisStore {
            prefix: prefix.to_string(),
            conn,
            client,
            blocking: Mutex::default(),
            consumer,
            visibility,
            max_queued,
            groups: Mutex::default(),
            last_reclaim: Mutex::new(None),
            scripts,
        })
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.prefix)
    }
    fn stream_key(&self, model: &str) -> String {
        format!("{}:stream:{model}", self.prefix)
    }
    fn queued_key(&self, model: &str) -> String {
        format!("{}:queued:{model}", self.prefix)
    }
    fn expired_key(&self, id: &str) -> String {
        format!("{}:expired:{id}", self.prefix)
    }
    fn index(&self) -> String {
        format!("{}:jobs", self.prefix)
    }
    fn models(&self) -> String {
        format!("{}:models", self.prefix)
    }
    fn webhooks(&self) -> String {
        format!("{}:webhooks-pending", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn ensure_group(&self, model: &str) -> Result<(), ServeError> {
        if self.groups.lock().contains(model) {
            return Ok(());
        }
        let created: Result<(), redis::RedisError> =
            self.conn().xgroup_create_mkstream(self.stream_key(model), GROUP, "0").await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(redis_err(e)),
        }
        self.groups.lock().insert(model.to_string());
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<Option<JobRecord>, ServeError> {
        let fields: HashMap<String, String> = self.conn().hgetall(self.job_key(id)).await.map_err(redis_err)?;
        let Some(json) = fields.get("record") else { return Ok(None) };
        let mut r: JobRecord = serde_json::from_str(json)
            .map_err(|e| ServeError::Internal(format!("job {id}: corrupt record in Redis: {e}")))?;
        if let Some(st) = fields.get("status").and_then(|s| JobStatus::parse(s)) {
            r.status = st;
        }
        if let Some(a) = fields.get("attempts").and_then(|a| a.parse().ok()) {
            r.attempts = a;
        }
        if let Some(t) = fields.get("started_ms").and_then(|a| a.parse().ok()) {
            r.started_ms = Some(t);
        }
        Ok(Some(r))
    }

    /// Writes a final record through the FINISH script; returns what is stored.
    async fn write_final(&self, r: &JobRecord) -> Result<JobRecord, ServeError> {
        let ttl_ms = r.ttl_seconds * 1000;
        let json = serde_json::to_string(r).map_err(|e| ServeError::Internal(e.to_string()))?;
        let done: i64 = self.scripts["finish"]
            .key(self.job_key(&r.job_id))
            .key(self.stream_key(&r.model))
            .key(self.expired_key(&r.job_id))
            .key(self.webhooks())
            .key(self.queued_key(&r.model))
            .arg(GROUP)
            .arg(r.status.as_str())
            .arg(json)
            .arg(ttl_ms.max(1))
            .arg(r.expires_ms().unwrap_or_else(now_ms))
            .arg(&r.job_id)
            .arg(if r.webhook_pending { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        match done {
            -1 => Err(not_found(&r.job_id)),
            1 => Ok(r.clone()),
            _ => self.load(&r.job_id).await?.ok_or_else(|| not_found(&r.job_id)),
        }
    }

    /// Claims the job of a stream entry; `None` (and the entry dropped) when it is not claimable.
    async fn claim_entry(
        &self,
        model: &str,
        entry: &str,
        id: &str,
        takeover: bool,
    ) -> Result<Option<JobRecord>, ServeError> {
        let ok: i64 = self.scripts["claim"]
            .key(self.job_key(id))
            .key(self.queued_key(model))
            .arg(now_ms())
            .arg(entry)
            .arg(if takeover { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        if ok == 1 {
            return self.load(id).await;
        }
        // Cancelled, expired or already ended: the entry has nothing left to do.
        let mut c = self.conn();
        let _: () = redis::pipe()
            .xack(self.stream_key(model), GROUP, &[entry])
            .xdel(self.stream_key(model), &[entry])
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        Ok(None)
    }

    /// Takes over entries whose worker stopped renewing them.
    async fn reclaim(&self, models: &[String]) -> Result<Option<JobRecord>, ServeError> {
        {
            let mut last = self.last_reclaim.lock();
            if last.is_some_and(|t| t.elapsed() < self.visibility / 4) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        for model in models {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(self.stream_key(model))
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(self.visibility.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(16)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_err)?;
            for e in reply.claimed {
                let Some(id) = e.get::<String>("id") else { continue };
                tracing::warn!(job = %id, model = %model, "taking over a job whose worker stopped");
                if let Some(r) = self.claim_entry(model, &e.id, &id, true).await? {
                    // Others taken over in this call wait for the next one; this worker runs one.
                    *self.last_reclaim.lock() = None;
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }

    async fn blocking_conn(&self) -> Result<ConnectionManager, ServeError> {
        if let Some(c) = self.blocking.lock().pop() {
            return Ok(c);
        }
        ConnectionManager::new(self.client.clone()).await.map_err(redis_err)
    }
}

#[async_trait]
impl JobStore for RedisStore {
    async fn submit(&self, job: JobRecord) -> Result<(JobRecord, bool), ServeError> {
        let mut c = self.conn();
        if let Some(key) = &job.idempotency_key {
            let idem = format!("{}:idem:{key}", self.prefix);
            let ttl = job.ttl_seconds * 1000 + DAY_MS;
            let set: Option<String> = redis::cmd("SET")
                .arg(&idem)
                .arg(&job.job_id)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .query_async(&mut c)
                .await
                .map_err(redis_err)?;
            if set.is_none() {
                let first: Option<String> = c.get(&idem).await.map_err(redis_err)?;
                if let Some(first) = first {
                    if let Some(r) = self.load(&first).await? {
                        return Ok((r, false));
                    }
                }
                let _: () = c.set(&idem, &job.job_id).await.map_err(redis_err)?;
            }
        }
        let queued: Option<u64> = c.get(self.queued_key(&job.model)).await.map_err(redis_err)?;
        if queued.unwrap_or(0) >= self.max_queued {
            return Err(ServeError::ResourceExhausted {
                message: format!("the job queue of model {} is full ({} queued jobs)", job.model, self.max_queued),
                retry_after_ms: 5000,
            });
        }
        self.ensure_group(&job.model).await?;
        let json = serde_json::to_string(&job).map_err(|e| ServeError::Internal(e.to_string()))?;
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(
                self.job_key(&job.job_id),
                &[("record", json.as_str()), ("status", "queued"), ("attempts", "0")],
            )
            .incr(self.queued_key(&job.model), 1)
            .sadd(self.models(), &job.model)
            .zadd(self.index(), &job.job_id, job.created_ms)
            .xadd(self.stream_key(&job.model), "*", &[("id", job.job_id.as_str())])
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        Ok((job, true))
    }

    async fn get(&self, id: &str) -> Result<JobRecord, ServeError> {
        match self.load(id).await? {
            Some(r) => match r.expires_ms() {
                Some(at) if now_ms() >= at && r.status.is_final() => Err(expired(id, at)),
                _ => Ok(r),
            },
            None => {
                let at: Option<u64> = self.conn().get(self.expired_key(id)).await.map_err(redis_err)?;
                Err(at.map_or_else(|| not_found(id), |at| expired(id, at)))
            }
        }
    }

    async fn cancel(&self, id: &str) -> Result<JobRecord, ServeError> {
        let mut r = self.load(id).await?.ok_or_else(|| not_found(id))?;
        if r.status.is_final() {
            return Err(conflict_final(&r));
        }
        r.finish(JobStatus::Cancelled, None, Some("cancelled by the client".into()));
        let stored = self.write_final(&r).await?;
        if stored.status != JobStatus::Cancelled {
            return Err(conflict_final(&stored));
        }
        Ok(stored)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, ServeError> {
        let ids: Vec<String> =
            self.conn().zrevrange(self.index(), 0, (filter.limit * 10).max(100) as isize).await.map_err(redis_err)?;
        let now = now_ms();
        let mut out = Vec::new();
        for id in ids {
            let Some(r) = self.load(&id).await? else { continue };
            if !filter.matches(&r, now) {
                continue;
            }
            out.push(r);
            if out.len() >= filter.limit {
                break;
            }
        }
        Ok(out)
    }

    async fn claim(&self, models: &[String], wait: Duration) -> Result<Option<JobRecord>, ServeError> {
        if models.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(None);
        }
        for m in models {
            self.ensure_group(m).await?;
        }
        if let Some(r) = self.reclaim(models).await? {
            return Ok(Some(r));
        }
        let until = Instant::now() + wait;
        let keys: Vec<String> = models.iter().map(|m| self.stream_key(m)).collect();
        let ids: Vec<&str> = keys.iter().map(|_| ">").collect();
        let mut conn = self.blocking_conn().await?;
        let result = async {
            loop {
                let left = until.saturating_duration_since(Instant::now());
                let opts = StreamReadOptions::default()
                    .group(GROUP, &self.consumer)
                    .count(1)
                    .block(left.as_millis().max(1) as usize);
                let reply: Option<StreamReadReply> = conn.xread_options(&keys, &ids, &opts).await.map_err(redis_err)?;
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    let model = key.key.trim_start_matches(&format!("{}:stream:", self.prefix)).to_string();
                    for e in key.ids {
                        let Some(id) = e.get::<String>("id") else { continue };
                        if let Some(r) = self.claim_entry(&model, &e.id, &id, false).await? {
                            return Ok(Some(r));
                        }
                    }
                }
                if Instant::now() >= until {
                    return Ok(None);
                }
            }
        }
        .await;
        self.blocking.lock().push(conn);
        result
    }

    async fn finish(&self, job: JobRecord) -> Result<JobRecord, ServeError> {
        self.write_final(&job).await
    }

    async fn release(&self, id: &str) -> Result<(), ServeError> {
        let r = self.load(id).await?.ok_or_else(|| not_found(id))?;
        let _: i64 = self.scripts["release"]
            .key(self.job_key(id))
            .key(self.queued_key(&r.model))
            .key(self.stream_key(&r.model))
            .arg(GROUP)
            .arg(id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn heartbeat(&self, job: &JobRecord) -> Result<(), ServeError> {
        let entry: Option<String> = self.conn().hget(self.job_key(&job.job_id), "entry").await.map_err(redis_err)?;
        if let Some(entry) = entry {
            let _: redis::Value = redis::cmd("XCLAIM")
                .arg(self.stream_key(&job.model))
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0)
                .arg(&entry)
                .arg("JUSTID")
                .query_async(&mut self.conn())
                .await
                .map_err(redis_err)?;
        }
        Ok(())
    }

    async fn webhook_secret(&self, candidate: String) -> Result<(String, bool), ServeError> {
        let key = format!("{}:webhook-secret", self.prefix);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&candidate)
            .arg("NX")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        if set.is_some() {
            return Ok((candidate, true));
        }
        let stored: String = self.conn().get(&key).await.map_err(redis_err)?;
        Ok((stored, false))
    }

    async fn record_deliveries(&self, id: &str, deliveries: Vec<Delivery>, pending: bool) -> Result<(), ServeError> {
        let Some(mut r) = self.load(id).await? else { return Ok(()) };
        r.deliveries = deliveries;
        r.webhook_pending = pending;
        let json = serde_json::to_string(&r).map_err(|e| ServeError::Internal(e.to_string()))?;
        let mut p = redis::pipe();
        p.hset(self.job_key(id), "record", json);
        if !pending {
            p.srem(self.webhooks(), id);
        }
        let _: () = p.query_async(&mut self.conn()).await.map_err(redis_err)?;
        Ok(())
    }

    async fn pending_webhooks(&self) -> Result<Vec<JobRecord>, ServeError> {
        let ids: Vec<String> = self.conn().smembers(self.webhooks()).await.map_err(redis_err)?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.load(&id).await? {
                if r.webhook_pending && r.status.is_final() {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    async fn depth(&self) -> Result<Vec<(String, u64)>, ServeError> {
        let mut models: Vec<String> = self.conn().smembers(self.models()).await.map_err(redis_err)?;
        models.sort();
        let mut out = Vec::with_capacity(models.len());
        for m in models {
            let n: Option<i64> = self.conn().get(self.queued_key(&m)).await.map_err(redis_err)?;
            out.push((m, n.unwrap_or(0).max(0) as u64));
        }
        Ok(out)
    }

    async fn sweep(&self) -> Result<usize, ServeError> {
        // Records expire by themselves; drop the index entries that outlived them, oldest first,
        // a chunk at a time, until a chunk is all alive (bounded work per sweep).
        let mut removed = 0;
        let mut start = 0isize;
        for _ in 0..SWEEP_CHUNKS {
            let ids: Vec<String> =
                self.conn().zrange(self.index(), start, start + SWEEP_CHUNK - 1).await.map_err(redis_err)?;
            if ids.is_empty() {
                break;
            }
            let mut p = redis::pipe();
            for id in &ids {
                p.exists(self.job_key(id));
            }
            let alive: Vec<bool> = p.query_async(&mut self.conn()).await.map_err(redis_err)?;
            let gone: Vec<&String> = ids.iter().zip(&alive).filter(|(_, a)| !**a).map(|(id, _)| id).collect();
            if !gone.is_empty() {
                let _: () = self.conn().zrem(self.index(), &gone).await.map_err(redis_err)?;
                let _: () = self.conn().srem(self.webhooks(), &gone).await.map_err(redis_err)?;
                removed += gone.len();
            }
            if gone.is_empty() {
                break;
            }
            // The survivors of this chunk stay at its front.
            start += (ids.len() - gone.len()) as isize;
        }
        Ok(removed)
    }
}

/// Index entries checked per round trip, and round trips per sweep at most.
const SWEEP_CHUNK: isize = 1000;
const SWEEP_CHUNKS: usize = 100;

#[cfg(test)]
mod tests {
    //! Against the Redis on 127.0.0.1:6379, each test under its own key prefix.
    use super::*;
    use crate::record::NewJob;
    use sluice_types::InferRequest;

    const URL: &str = "redis://127.0.0.1:6379/0";

    async fn store(prefix: &str, visibility_ms: u64) -> RedisStore {
        RedisStore::connect(URL, prefix, Duration::from_millis(visibility_ms), 100)
            .await
            .expect("a Redis server on 127.0.0.1:6379")
    }

    fn prefix(name: &str) -> String {
        format!("sluice-test-{name}-{}", uuid::Uuid::now_v7().simple())
    }

    fn job(model: &str, key: Option<&str>) -> JobRecord {
        JobRecord::new(NewJob {
            request: InferRequest { model: model.into(), ..Default::default() },
            context: Default::default(),
            priority: 5,
            ttl_seconds: 60,
            callback_url: None,
            idempotency_key: key.map(str::to_string),
        })
    }

    fn models() -> Vec<String> {
        vec!["m".to_string()]
    }

    async fn clean(s: &RedisStore) {
        let keys: Vec<String> = s.conn().keys(format!("{}:*", s.prefix)).await.unwrap();
        if !keys.is_empty() {
            let _: () = s.conn().del(keys).await.unwrap();
        }
    }

    #[tokio::test]
    async fn submit_claim_finish_and_cancel() {
        let s = store(&prefix("flow"), 30_000).await;
        let (a, new) = s.submit(job("m", Some("k1"))).await.unwrap();
        assert!(new);
        let (again, new) = s.submit(job("m", Some("k1"))).await.unwrap();
        assert!(!new);
        assert_eq!(again.job_id, a.job_id);
        let (b, _) = s.submit(job("m", None)).await.unwrap();
        assert_eq!(s.depth().await.unwrap(), vec![("m".to_string(), 2)]);
        assert_eq!(s.cancel(&b.job_id).await.unwrap().status, JobStatus::Cancelled);
        assert!(matches!(s.cancel(&b.job_id).await, Err(ServeError::Conflict(_))));

        let mut got = s.claim(&models(), Duration::from_millis(500)).await.unwrap().unwrap();
        assert_eq!((got.job_id.as_str(), got.status, got.attempts), (a.job_id.as_str(), JobStatus::Processing, 1));
        assert!(
            s.claim(&models(), Duration::from_millis(200)).await.unwrap().is_none(),
            "the cancelled job is skipped"
        );
        got.finish(JobStatus::Completed, Some(serde_json::json!({"ok": true})), None);
        let stored = s.finish(got).await.unwrap();
        assert_eq!(stored.status, JobStatus::Completed);
        let read = s.get(&a.job_id).await.unwrap();
        assert_eq!(read.result, Some(serde_json::json!({"ok": true})));
        assert!(matches!(s.cancel(&a.job_id).await, Err(ServeError::Conflict(_))));
        assert_eq!(s.depth().await.unwrap(), vec![("m".to_string(), 0)]);
        let listed = s.list(&ListFilter { status: Some(JobStatus::Completed), limit: 10, ..Default::default() }).await;
        assert_eq!(listed.unwrap().len(), 1);
        assert!(matches!(s.get("nosuch").await, Err(ServeError::NotFound(_))));
        clean(&s).await;
    }

    #[tokio::test]
    async fn a_job_whose_worker_stopped_is_taken_over_once_and_released_jobs_come_back() {
        let p = prefix("takeover");
        let (a, b) = (store(&p, 300).await, store(&p, 300).await);
        let (j, _) = a.submit(job("m", None)).await.unwrap();
        let held = a.claim(&models(), Duration::from_millis(500)).await.unwrap().unwrap();
        assert_eq!(held.job_id, j.job_id);
        // b sees nothing while a's claim is fresh...
        assert!(b.claim(&models(), Duration::from_millis(100)).await.unwrap().is_none());
        // ...and takes it over once a stops renewing it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let taken = b.claim(&models(), Duration::from_millis(500)).await.unwrap().unwrap();
        assert_eq!((taken.job_id.as_str(), taken.attempts), (j.job_id.as_str(), 2));
        // The first worker's late result does not overwrite the second's.
        let mut late = held.clone();
        late.finish(JobStatus::Failed, None, Some("late".into()));
        let mut winner = taken.clone();
        winner.finish(JobStatus::Completed, Some(serde_json::json!(1)), None);
        assert_eq!(b.finish(winner).await.unwrap().status, JobStatus::Completed);
        assert_eq!(a.finish(late).await.unwrap().status, JobStatus::Completed);

        let (k, _) = a.submit(job("m", None)).await.unwrap();
        let c = a.claim(&models(), Duration::from_millis(500)).await.unwrap().unwrap();
        a.release(&c.job_id).await.unwrap();
        assert_eq!(a.get(&k.job_id).await.unwrap().status, JobStatus::Queued);
        let again = b.claim(&models(), Duration::from_millis(500)).await.unwrap().unwrap();
        assert_eq!((again.job_id.as_str(), again.attempts), (k.job_id.as_str(), 2));
        clean(&a).await;
    }

    #[tokio::test]
    async fn expired_results_say_so_and_leave_the_index() {
        let s = store(&prefix("expiry"), 30_000).await;
        let mut j = job("m", None);
        j.ttl_seconds = 1;
        let (j, _) = s.submit(j).await.unwrap();
        let mut got = s.claim(&models(), Duration::from_millis(500)).await.unwrap().unwrap();
        got.finish(JobStatus::Completed, Some(serde_json::json!(1)), None);
        s.finish(got).await.unwrap();
        assert_eq!(s.get(&j.job_id).await.unwrap().status, JobStatus::Completed);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let e = s.get(&j.job_id).await.unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert_eq!(s.sweep().await.unwrap(), 1);
        let left: Vec<String> = s.conn().zrange(s.index(), 0, -1).await.unwrap();
        assert!(left.is_empty(), "{left:?}");
        clean(&s).await;
    }
}
