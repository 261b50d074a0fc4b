//! One contract, checked on both stores: the embedded redb file and a real Redis (the one on
//! 127.0.0.1:6379, or `SLUICE_TEST_REDIS`), each under keys no other test uses.

use std::sync::Arc;
use std::time::Duration;

use sluice_state::{RedbStore, RedisStore, StateStore};

fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

async fn redis() -> RedisStore {
    let prefix = format!("sluice-test:{}", sluice_state::replica_id());
    RedisStore::connect(&redis_url(), &prefix).await.expect("a Redis on 127.0.0.1:6379 (or SLUICE_TEST_REDIS)")
}

async fn contract(store: Arc<dyn StateStore>) {
    // Documents: compare-and-set by version.
    assert_eq!(store.get("r/state").await.unwrap(), None);
    assert_eq!(store.put("r/state", b"one", 1).await.unwrap(), None, "no version 1 exists yet");
    assert_eq!(store.put("r/state", b"one", 0).await.unwrap(), Some(1));
    assert_eq!(store.put("r/state", b"two", 0).await.unwrap(), None, "a stale writer loses");
    assert_eq!(store.put("r/state", b"two", 1).await.unwrap(), Some(2));
    let doc = store.get("r/state").await.unwrap().unwrap();
    assert_eq!((doc.value.as_slice(), doc.version), (&b"two"[..], 2));

    // Parts: one per writer, replaced whole.
    store.put_part("r/counts", "a", b"1").await.unwrap();
    store.put_part("r/counts", "b", b"2").await.unwrap();
    store.put_part("r/counts", "a", b"3").await.unwrap();
    store.put_part("r/countsx", "a", b"other key").await.unwrap();
    let mut parts = store.parts("r/counts").await.unwrap();
    parts.sort();
    assert_eq!(parts, vec![("a".to_string(), b"3".to_vec()), ("b".to_string(), b"2".to_vec())]);

    // Sets count each member once.
    store.set_add("r/units", &[1, 2, 3]).await.unwrap();
    store.set_add("r/units", &[3, 4, u64::MAX]).await.unwrap();
    store.set_add("r/units", &[]).await.unwrap();
    assert_eq!(store.set_len("r/units").await.unwrap(), 5);
    assert!(store.set_contains("r/units", u64::MAX).await.unwrap());
    assert!(!store.set_contains("r/units", 9).await.unwrap());
    assert_eq!(store.set_len("r/none").await.unwrap(), 0);

    // Expiring values and claims.
    store.put_expiring(&[("r/req/1".into(), b"arm0".to_vec())], Duration::from_millis(300)).await.unwrap();
    assert_eq!(store.get_expiring("r/req/1").await.unwrap(), Some(b"arm0".to_vec()));
    assert!(store.claim("r/fb/x", Duration::from_millis(300)).await.unwrap());
    assert!(!store.claim("r/fb/x", Duration::from_millis(300)).await.unwrap(), "a claim is taken once");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.get_expiring("r/req/1").await.unwrap(), None, "expired");
    assert!(store.claim("r/fb/x", Duration::from_millis(300)).await.unwrap(), "an expired claim is free again");

    // Leases: held by one until it lapses.
    assert!(store.lease("r/lease", "a", Duration::from_millis(300)).await.unwrap());
    assert!(store.lease("r/lease", "a", Duration::from_millis(300)).await.unwrap(), "renewed");
    if store.shared() {
        assert!(!store.lease("r/lease", "b", Duration::from_millis(300)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(store.lease("r/lease", "b", Duration::from_millis(300)).await.unwrap(), "a lapsed lease passes on");
        assert!(!store.lease("r/lease", "a", Duration::from_millis(300)).await.unwrap());
    }

    // Delete takes documents, parts and sets.
    store.delete(&["r/state".into(), "r/counts".into(), "r/units".into()]).await.unwrap();
    assert_eq!(store.get("r/state").await.unwrap(), None);
    assert!(store.parts("r/counts").await.unwrap().is_empty());
    assert_eq!(store.set_len("r/units").await.unwrap(), 0);
    assert_eq!(store.parts("r/countsx").await.unwrap().len(), 1, "a key that only shares a prefix stays");
    store.delete(&["r/countsx".into()]).await.unwrap();
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract_and_its_state_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    contract(Arc::new(RedbStore::open(&path).unwrap())).await;
    {
        let store = RedbStore::open(&path).unwrap();
        store.put("kept", b"v", 0).await.unwrap();
        store.put_part("kept", "w", b"p").await.unwrap();
        store.set_add("kept", &[7]).await.unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.get("kept").await.unwrap().unwrap().version, 1);
    assert_eq!(store.parts("kept").await.unwrap(), vec![("w".to_string(), b"p".to_vec())]);
    assert_eq!(store.set_len("kept").await.unwrap(), 1);
}

#[tokio::test]
async fn the_in_memory_store_keeps_the_contract() {
    contract(Arc::new(RedbStore::in_memory().unwrap())).await;
}

#[tokio::test]
async fn the_redis_store_keeps_the_contract() {
    contract(Arc::new(redis().await)).await;
}

#[tokio::test]
async fn two_redis_clients_see_one_state() {
    let prefix = format!("sluice-test:{}", sluice_state::replica_id());
    let a = RedisStore::connect(&redis_url(), &prefix).await.unwrap();
    let b = RedisStore::connect(&redis_url(), &prefix).await.unwrap();
    assert_eq!(a.put("doc", b"a", 0).await.unwrap(), Some(1));
    assert_eq!(b.put("doc", b"b", 0).await.unwrap(), None);
    assert_eq!(b.get("doc").await.unwrap().unwrap().value, b"a");
    a.set_add("s", &[1, 2]).await.unwrap();
    b.set_add("s", &[2, 3]).await.unwrap();
    assert_eq!(a.set_len("s").await.unwrap(), 3);
    assert!(a.lease("l", "a", Duration::from_secs(5)).await.unwrap());
    assert!(!b.lease("l", "b", Duration::from_secs(5)).await.unwrap());
    a.delete(&["doc".into(), "s".into()]).await.unwrap();
}
