//! The shared store: Redis, for replicas that serve the same endpoints. Each primitive is one
//! Redis structure under `<prefix>:<key>:<kind>`; compare-and-set and leases are Lua scripts,
//! so that the check and the write are one step on the server.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sluice_types::ServeError;

use crate::{store_err, StateStore, Versioned};

/// Writes `ARGV[2]` as version `ARGV[1] + 1` if the version is `ARGV[1]`; the new version, or -1.
const CAS: &str = r"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'data', ARGV[2])
return v + 1
";

/// Takes or renews the lease for `ARGV[1]` for `ARGV[2]` ms: 1 while `ARGV[1]` holds it.
const LEASE: &str = r"
local h = redis.call('GET', KEYS[1])
if (not h) or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

pub struct RedisStore {
    url: String,
    prefix: String,
    conn: ConnectionManager,
    cas: Script,
    lease: Script,
}

fn redis_err(e: redis::RedisError) -> ServeError {
    store_err("redis", e)
}

impl RedisStore {
    /// Connects to `redis://host:port/db`; every key starts with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, ServeError> {
        let client = redis::Client::open(url)
            .map_err(|e| ServeError::invalid(format!("--state {url}: not a Redis URL ({e})")))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| ServeError::Unavailable(format!("cannot connect to Redis at {url}: {e}")))?;
        Ok(RedisStore {
            url: url.to_string(),
            prefix: prefix.to_string(),
            conn,
            cas: Script::new(CAS),
            lease: Script::new(LEASE),
        })
    }

    fn key(&self, key: &str, kind: &str) -> String {
        format!("{}:{key}:{kind}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

#[async_trait]
impl StateStore for RedisStore {
    fn describe(&self) -> String {
        format!("{} (keys {}:*)", self.url, self.prefix)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, ServeError> {
        let (version, value): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.key(key, "doc"))
            .arg("v")
            .arg("data")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(match (version, value) {
            (Some(version), Some(value)) => Some(Versioned { value, version }),
            _ => None,
        })
    }

    async fn put(&self, key: &str, value: &[u8], expected: u64) -> Result<Option<u64>, ServeError> {
        let written: i64 = self
            .cas
            .key(self.key(key, "doc"))
            .arg(expected)
            .arg(value)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(u64::try_from(written).ok())
    }

    async fn put_part(&self, key: &str, writer: &str, value: &[u8]) -> Result<(), ServeError> {
        self.conn().hset(self.key(key, "parts"), writer, value).await.map_err(redis_err)
    }

    async fn parts(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, ServeError> {
        self.conn().hgetall(self.key(key, "parts")).await.map_err(redis_err)
    }

    async fn set_add(&self, key: &str, members: &[u64]) -> Result<(), ServeError> {
        if members.is_empty() {
            return Ok(());
        }
        let _: u64 = self.conn().sadd(self.key(key, "set"), members).await.map_err(redis_err)?;
        Ok(())
    }

    async fn set_len(&self, key: &str) -> Result<u64, ServeError> {
        self.conn().scard(self.key(key, "set")).await.map_err(redis_err)
    }

    async fn set_contains(&self, key: &str, member: u64) -> Result<bool, ServeError> {
        self.conn().sismember(self.key(key, "set"), member).await.map_err(redis_err)
    }

    async fn put_expiring(&self, entries: &[(String, Vec<u8>)], ttl: Duration) -> Result<(), ServeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ms = ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            pipe.cmd("SET").arg(self.key(key, "x")).arg(value.as_slice()).arg("PX").arg(ms).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await.map_err(redis_err)
    }

    async fn get_expiring(&self, key: &str) -> Result<Option<Vec<u8>>, ServeError> {
        self.conn().get(self.key(key, "x")).await.map_err(redis_err)
    }

    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, ServeError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(key, "x"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(set.is_some())
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, ServeError> {
        let held: i64 = self
            .lease
            .key(self.key(key, "lease"))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(held == 1)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ServeError> {
        if keys.is_empty() {
            return Ok(());
        }
        let all: Vec<String> =
            keys.iter().flat_map(|k| ["doc", "parts", "set"].map(|kind| self.key(k, kind))).collect();
        let _: u64 = self.conn().del(all).await.map_err(redis_err)?;
        Ok(())
    }
}
