//! The state store: where traffic endpoints keep what must outlive a process and be seen by every
//! replica (a rollout's phase and history, the counts its guardrails judge, an experiment's
//! exposures and outcomes). Two implementations of one small trait, [`StateStore`]:
//!
//! - [`RedbStore`]: embedded, one redb file in the state directory (the default; a single server
//!   continues its rollouts and experiments after a restart);
//! - [`RedisStore`]: shared, when several replicas serve the same endpoints (`--state
//!   redis://…`).
//!
//! The trait offers a few primitives rather than rollout- or experiment-shaped calls, each chosen
//! so that replicas never overwrite one another's work:
//!
//! - **documents** with a version, written by compare-and-set: two replicas that change a
//!   rollout at once cannot both win, and the loser reads the winner's state;
//! - **parts**: one value per writer under a key (each replica writes its own counts whole and
//!   readers merge them). A write can be repeated without counting twice, and a replica that
//!   died leaves its counts behind for the others to add;
//! - **sets** of 64-bit members, for things counted once however many replicas see them
//!   (units exposed, units that converted);
//! - **expiring values** (a request id's arm for an attribution window) and **claims** (a
//!   feedback id counted once);
//! - **leases**: the one replica at a time that drives a rollout.

mod redb_store;
mod redis_store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_types::ServeError;

pub use redb_store::RedbStore;
pub use redis_store::RedisStore;

/// A document's bytes and the version they were written as (versions count from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

/// See the crate documentation. Keys are `/`-separated paths chosen by the caller; a key names
/// one document, one set of parts, one set and one expiring value independently.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Where the state lives, for logs (`redb /var/lib/sluice/state.redb`, `redis://…`).
    fn describe(&self) -> String;

    /// Whether other processes may read and write the same state (leases then matter).
    fn shared(&self) -> bool;

    /// The document at `key`.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, ServeError>;

    /// Writes the document at `key` if its version is `expected` (0: if there is none), and
    /// returns the new version; `None` when another writer got there first.
    async fn put(&self, key: &str, value: &[u8], expected: u64) -> Result<Option<u64>, ServeError>;

    /// Replaces `writer`'s part under `key`.
    async fn put_part(&self, key: &str, writer: &str, value: &[u8]) -> Result<(), ServeError>;

    /// Every writer's part under `key`.
    async fn parts(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, ServeError>;

    /// Adds members to the set at `key`.
    async fn set_add(&self, key: &str, members: &[u64]) -> Result<(), ServeError>;

    /// How many members the set at `key` has.
    async fn set_len(&self, key: &str) -> Result<u64, ServeError>;

    /// Whether `member` is in the set at `key`.
    async fn set_contains(&self, key: &str, member: u64) -> Result<bool, ServeError>;

    /// Keeps each `(key, value)` for `ttl`.
    async fn put_expiring(&self, entries: &[(String, Vec<u8>)], ttl: Duration) -> Result<(), ServeError>;

    /// The expiring value at `key`, while it lasts.
    async fn get_expiring(&self, key: &str) -> Result<Option<Vec<u8>>, ServeError>;

    /// Takes `key` for `ttl` unless it is taken: `true` the first time only.
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, ServeError>;

    /// Takes or renews the lease at `key` for `holder` until `ttl` from now; `true` while
    /// `holder` holds it. A lease not renewed in time passes to the next to ask.
    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, ServeError>;

    /// Removes the documents, parts and sets at `keys`.
    async fn delete(&self, keys: &[String]) -> Result<(), ServeError>;
}

/// The store `--state` names: a `redis://` URL, else the embedded file in `state_dir`; with
/// neither, an in-memory store (state lasts as long as the process).
pub async fn open(url: Option<&str>, state_dir: Option<&std::path::Path>) -> Result<Arc<dyn StateStore>, ServeError> {
    let store: Arc<dyn StateStore> = match (url, state_dir) {
        (Some(url), _) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            Arc::new(RedisStore::connect(url, "sluice:state").await?)
        }
        (Some(other), _) => {
            return Err(ServeError::invalid(format!("--state {other}: expected a redis:// URL")));
        }
        (None, Some(dir)) => Arc::new(RedbStore::open(&dir.join("state.redb"))?),
        (None, None) => Arc::new(RedbStore::in_memory()?),
    };
    tracing::info!(state = %store.describe(), "state store");
    Ok(store)
}

/// An id for this process as a writer of parts and a holder of leases: the host name (a pod's
/// name on Kubernetes), the process id and a random tail, so that a restarted process is a new
/// writer (its predecessor's parts stay counted).
pub fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[24..])
}

pub(crate) fn store_err(what: &str, e: impl std::fmt::Display) -> ServeError {
    ServeError::Unavailable(format!("state store ({what}): {e}"))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
