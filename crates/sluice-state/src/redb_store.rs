//! The embedded store: one redb file, owned by one process (redb locks it), so leases are always
//! this process's. Documents (a rollout's state, an experiment's stop) are written durably before
//! the write returns: a command that answered is on disk. Everything else (counts, sets,
//! expiring values, claims) is written without a sync of its own and made durable by one sync a
//! second ([`FLUSH_EVERY`]) when anything was written, and at drop: a crash loses at most the
//! last second of counts, and many endpoints writing every tick cost one sync a second, not one
//! each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use sluice_types::ServeError;

use crate::{now_ms, store_err, StateStore, Versioned};

/// key → version (8 bytes, little-endian) then the value.
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const PARTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("parts");
const SETS: TableDefinition<(&str, u64), ()> = TableDefinition::new("sets");
const SET_LENS: TableDefinition<&str, u64> = TableDefinition::new("set_lens");
/// key → expiry (ms since the epoch, 8 bytes) then the value.
const EXPIRING: TableDefinition<&str, &[u8]> = TableDefinition::new("expiring");
/// (expiry, key): what to sweep, oldest first.
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");
/// Expired entries removed per write, so that a sweep never holds a write long.
const SWEEP: usize = 1000;
/// How often writes made without a sync of their own are made durable.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The database, and whether it holds writes not yet synced.
struct Shared {
    db: Database,
    dirty: AtomicBool,
    /// Held while flushing, and by drop: a flush never keeps the database open past the store.
    flushing: Mutex<bool>,
}

impl std::ops::Deref for Shared {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

impl Shared {
    /// Syncs what was written without a sync, if anything was.
    fn flush(&self) -> Result<(), ServeError> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            let tx = self.db.begin_write().map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        Ok(())
    }
}

pub struct RedbStore {
    db: Arc<Shared>,
    path: Option<PathBuf>,
    /// Leases: the file is this process's alone, so a lease is a note in memory.
    leases: Mutex<HashMap<String, (String, u64)>>,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        let mut stopped = self.db.flushing.lock();
        *stopped = true;
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "state store: the last writes could not be synced");
        }
    }
}

/// Syncs the store's unsynced writes every [`FLUSH_EVERY`] until the store is dropped.
fn flusher(shared: Weak<Shared>) {
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(s) = shared.upgrade() else { return };
        let stopped = s.flushing.lock();
        if *stopped {
            return;
        }
        if let Err(e) = s.flush() {
            tracing::warn!(error = %e, "state store: cannot sync");
        }
        drop(stopped);
        drop(s);
    }
}

fn db_err(e: impl std::fmt::Display) -> ServeError {
    store_err("redb", e)
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<RedbStore, ServeError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ServeError::Internal(format!("cannot create state directory {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| {
            ServeError::Internal(format!(
                "cannot open the state store {}: {e} (is another sluice using it?)",
                path.display()
            ))
        })?;
        RedbStore::with(db, Some(path.to_path_buf()))
    }

    /// A store in memory, gone with the process (a worker, or a test).
    pub fn in_memory() -> Result<RedbStore, ServeError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(db_err)?;
        RedbStore::with(db, None)
    }

    fn with(db: Database, path: Option<PathBuf>) -> Result<RedbStore, ServeError> {
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(DOCS).map_err(db_err)?;
        tx.open_table(PARTS).map_err(db_err)?;
        tx.open_table(SETS).map_err(db_err)?;
        tx.open_table(SET_LENS).map_err(db_err)?;
        tx.open_table(EXPIRING).map_err(db_err)?;
        tx.open_table(EXPIRY).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        let shared = Arc::new(Shared { db, dirty: AtomicBool::new(false), flushing: Mutex::new(false) });
        if path.is_some() {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("sluice-state-sync".into())
                .spawn(move || flusher(weak))
                .map_err(|e| ServeError::Internal(format!("cannot start the state store's sync thread: {e}")))?;
        }
        Ok(RedbStore { db: shared, path, leases: Mutex::default() })
    }

    /// Runs `f` on a blocking thread: redb reads and writes the disk.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, ServeError> + Send + 'static,
    ) -> Result<T, ServeError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(db_err)?
    }
}

/// A write transaction: synced at commit when `durable`, else by the next flush.
fn write(db: &Shared, durable: bool) -> Result<WriteTransaction, ServeError> {
    let mut tx = db.begin_write().map_err(db_err)?;
    if !durable {
        tx.set_durability(Durability::None).map_err(db_err)?;
        db.dirty.store(true, Ordering::Release);
    }
    Ok(tx)
}

fn split_u64(bytes: &[u8]) -> (u64, &[u8]) {
    let (head, rest) = bytes.split_at(8.min(bytes.len()));
    let mut n = [0u8; 8];
    n[..head.len()].copy_from_slice(head);
    (u64::from_le_bytes(n), rest)
}

fn join_u64(n: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(value);
    out
}

#[async_trait]
impl StateStore for RedbStore {
    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("redb {}", p.display()),
            None => "in memory (lost at exit)".into(),
        }
    }

    fn shared(&self) -> bool {
        false
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, ServeError> {
        let key = key.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let docs = tx.open_table(DOCS).map_err(db_err)?;
            Ok(docs.get(key.as_str()).map_err(db_err)?.map(|v| {
                let (version, value) = split_u64(v.value());
                Versioned { value: value.to_vec(), version }
            }))
        })
        .await
    }

    async fn put(&self, key: &str, value: &[u8], expected: u64) -> Result<Option<u64>, ServeError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |db| {
            let tx = write(db, true)?;
            let written = {
                let mut docs = tx.open_table(DOCS).map_err(db_err)?;
                let current = docs.get(key.as_str()).map_err(db_err)?.map_or(0, |v| split_u64(v.value()).0);
                if current != expected {
                    None
                } else {
                    docs.insert(key.as_str(), join_u64(expected + 1, &value).as_slice()).map_err(db_err)?;
                    Some(expected + 1)
                }
            };
            if written.is_some() {
                tx.commit().map_err(db_err)?;
            }
            Ok(written)
        })
        .await
    }

    async fn put_part(&self, key: &str, writer: &str, value: &[u8]) -> Result<(), ServeError> {
        let (key, writer, value) = (key.to_string(), writer.to_string(), value.to_vec());
        self.run(move |db| {
            let tx = write(db, false)?;
            tx.open_table(PARTS)
                .map_err(db_err)?
                .insert((key.as_str(), writer.as_str()), value.as_slice())
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn parts(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, ServeError> {
        let key = key.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let parts = tx.open_table(PARTS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in parts.range((key.as_str(), "")..).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let (owner, writer) = k.value();
                if owner != key {
                    break;
                }
                out.push((writer.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn set_add(&self, key: &str, members: &[u64]) -> Result<(), ServeError> {
        if members.is_empty() {
            return Ok(());
        }
        let (key, members) = (key.to_string(), members.to_vec());
        self.run(move |db| {
            let tx = write(db, false)?;
            {
                let mut sets = tx.open_table(SETS).map_err(db_err)?;
                let mut added = 0u64;
                for m in members {
                    added += u64::from(sets.insert((key.as_str(), m), ()).map_err(db_err)?.is_none());
                }
                let mut lens = tx.open_table(SET_LENS).map_err(db_err)?;
                let len = lens.get(key.as_str()).map_err(db_err)?.map_or(0, |v| v.value());
                lens.insert(key.as_str(), len + added).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn set_len(&self, key: &str) -> Result<u64, ServeError> {
        let key = key.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            Ok(tx.open_table(SET_LENS).map_err(db_err)?.get(key.as_str()).map_err(db_err)?.map_or(0, |v| v.value()))
        })
        .await
    }

    async fn set_contains(&self, key: &str, member: u64) -> Result<bool, ServeError> {
        let key = key.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            Ok(tx.open_table(SETS).map_err(db_err)?.get((key.as_str(), member)).map_err(db_err)?.is_some())
        })
        .await
    }

    async fn put_expiring(&self, entries: &[(String, Vec<u8>)], ttl: Duration) -> Result<(), ServeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        let until = now_ms().saturating_add(ttl.as_millis() as u64);
        self.run(move |db| {
            let tx = write(db, false)?;
            {
                let mut values = tx.open_table(EXPIRING).map_err(db_err)?;
                let mut expiry = tx.open_table(EXPIRY).map_err(db_err)?;
                sweep(&mut values, &mut expiry)?;
                for (key, value) in &entries {
                    values.insert(key.as_str(), join_u64(until, value).as_slice()).map_err(db_err)?;
                    expiry.insert((until, key.as_str()), ()).map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_expiring(&self, key: &str) -> Result<Option<Vec<u8>>, ServeError> {
        let key = key.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let values = tx.open_table(EXPIRING).map_err(db_err)?;
            Ok(values.get(key.as_str()).map_err(db_err)?.and_then(|v| {
                let (until, value) = split_u64(v.value());
                (until > now_ms()).then(|| value.to_vec())
            }))
        })
        .await
    }

    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, ServeError> {
        let key = key.to_string();
        let (now, until) = (now_ms(), now_ms().saturating_add(ttl.as_millis() as u64));
        self.run(move |db| {
            let tx = write(db, false)?;
            let taken = {
                let mut values = tx.open_table(EXPIRING).map_err(db_err)?;
                let mut expiry = tx.open_table(EXPIRY).map_err(db_err)?;
                let live = values.get(key.as_str()).map_err(db_err)?.is_some_and(|v| split_u64(v.value()).0 > now);
                if !live {
                    values.insert(key.as_str(), join_u64(until, &[]).as_slice()).map_err(db_err)?;
                    expiry.insert((until, key.as_str()), ()).map_err(db_err)?;
                }
                !live
            };
            tx.commit().map_err(db_err)?;
            Ok(taken)
        })
        .await
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, ServeError> {
        let now = now_ms();
        let mut leases = self.leases.lock();
        let held = leases.get(key).is_some_and(|(h, until)| h != holder && *until > now);
        if !held {
            leases.insert(key.to_string(), (holder.to_string(), now.saturating_add(ttl.as_millis() as u64)));
        }
        Ok(!held)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ServeError> {
        let keys = keys.to_vec();
        self.run(move |db| {
            let tx = write(db, false)?;
            {
                let mut docs = tx.open_table(DOCS).map_err(db_err)?;
                let mut parts = tx.open_table(PARTS).map_err(db_err)?;
                let mut sets = tx.open_table(SETS).map_err(db_err)?;
                let mut lens = tx.open_table(SET_LENS).map_err(db_err)?;
                for key in &keys {
                    let k = key.as_str();
                    docs.remove(k).map_err(db_err)?;
                    lens.remove(k).map_err(db_err)?;
                    parts.retain_in((k, "")..=(k, "\u{10FFFF}"), |_, _| false).map_err(db_err)?;
                    sets.retain_in((k, 0)..=(k, u64::MAX), |_, _| false).map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }
}

/// Removes up to [`SWEEP`] expired values.
fn sweep(values: &mut redb::Table<&str, &[u8]>, expiry: &mut redb::Table<(u64, &str), ()>) -> Result<(), ServeError> {
    let now = now_ms();
    let mut gone = Vec::new();
    for entry in expiry.range((0, "")..(now, "")).map_err(db_err)?.take(SWEEP) {
        let (k, _) = entry.map_err(db_err)?;
        let (at, key) = k.value();
        gone.push((at, key.to_string()));
    }
    for (at, key) in gone {
        expiry.remove((at, key.as_str())).map_err(db_err)?;
        // A value written again since has a later expiry: keep it.
        let stale = values.get(key.as_str()).map_err(db_err)?.is_some_and(|v| split_u64(v.value()).0 <= at);
        if stale {
            values.remove(key.as_str()).map_err(db_err)?;
        }
    }
    Ok(())
}
