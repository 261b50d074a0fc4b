//! Remote model repositories (`s3://`, `gs://`, `az://`) mirrored into a local cache directory.
//!
//! A [`RemoteRepository`] lists every object under its URL's prefix and keeps a mirror of them in
//! `<cache_dir>/repo`, which the manager then serves like any local repository. A small manifest
//! (`<cache_dir>/manifest.json`: relative path → ETag, size) tells which objects changed since the
//! last sync, so only those are downloaded. Changed objects are first downloaded into
//! `<cache_dir>/tmp`; only when every download succeeded are they renamed into place and the
//! files of vanished objects deleted, so a failed sync leaves the previous mirror untouched and a
//! scan after a sync never sees half a model.
//!
//! Credentials and endpoints come from the standard environment variables that `object_store`
//! reads: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`, `AWS_ENDPOINT_URL_S3`),
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP server such as MinIO; `GOOGLE_*` /
//! `GOOGLE_APPLICATION_CREDENTIALS` for `gs://`; `AZURE_*` for `az://`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig};
use serde::{Deserialize, Serialize};
use sluice_types::ServeError;
use tokio::io::AsyncWriteExt;

pub use object_store;

/// URL schemes served through `object_store`.
pub const REMOTE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// Objects downloaded at once during a sync.
const PARALLEL_DOWNLOADS: usize = 4;

const MANIFEST: &str = "manifest.json";

/// True when `s` names a remote repository (`s3://…`, `gs://…`, `az://…`) rather than a directory.
pub fn is_remote_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| REMOTE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// The parts of a remote repository URL: scheme, bucket (or container), prefix inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    pub scheme: String,
    pub bucket: String,
    pub prefix: String,
}

/// Splits `s3://bucket/some/prefix/` into its scheme, bucket and prefix (without slashes at
/// either end).
pub fn parse_remote_url(url: &str) -> Result<RemoteUrl, ServeError> {
    let bad = |why: &str| {
        ServeError::invalid(format!(
            "model repository '{url}': {why} (expected {}://bucket/prefix)",
            REMOTE_SCHEMES.join("://, ")
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not a URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    if !REMOTE_SCHEMES.contains(&scheme.as_str()) {
        return Err(bad(&format!("unsupported scheme '{scheme}'")));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err(bad("the prefix must not contain empty, '.' or '..' segments"));
    }
    Ok(RemoteUrl { scheme, bucket: bucket.to_string(), prefix: prefix.to_string() })
}

/// Where mirrors go without `--model-cache-dir`: `$SLUICE_HOME/cache`, else
/// `~/.local/share/sluice/cache`, else `<tmp>/sluice-cache`.
pub fn default_cache_dir() -> PathBuf {
    data_dir("cache")
}

/// `$SLUICE_HOME/<sub>`, else `~/.local/share/sluice/<sub>`, else `<tmp>/sluice-<sub>`.
pub fn data_dir(sub: &str) -> PathBuf {
    if let Some(home) = std::env::var_os("SLUICE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join(sub);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join(".local/share/sluice").join(sub);
    }
    std::env::temp_dir().join(format!("sluice-{sub}"))
}

/// The cache subdirectory of one remote URL: a readable part and a stable hash of the URL.
pub fn cache_dir_for(url: &str, cache_base: &Path) -> PathBuf {
    let url = url.trim_end_matches('/');
    let readable: String = url
        .split_once("://")
        .map(|(s, r)| format!("{s}_{r}"))
        .unwrap_or_else(|| url.to_string())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .take(48)
        .collect();
    cache_base.join(format!("{readable}-{:016x}", fnv1a(url.as_bytes())))
}

/// FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// What the mirror knows of one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Last modification (RFC 3339); compared only when a store gives no ETag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
}

impl ObjectEntry {
    fn from_meta(meta: &ObjectMeta) -> ObjectEntry {
        ObjectEntry { size: meta.size, etag: meta.e_tag.clone(), modified: Some(meta.last_modified.to_rfc3339()) }
    }

    /// True when both describe the same content: same size and ETag (or, without ETags, the
    /// same modification time).
    pub fn same_object(&self, other: &ObjectEntry) -> bool {
        self.size == other.size
            && match (&self.etag, &other.etag) {
                (Some(a), Some(b)) => a == b,
                (None, None) => self.modified.is_some() && self.modified == other.modified,
                _ => false,
            }
    }
}

/// The manifest kept beside the mirror: what was downloaded, as the store described it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub objects: BTreeMap<String, ObjectEntry>,
}

/// What a sync has to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Relative paths to download (new, changed, or missing or altered locally).
    pub download: Vec<String>,
    /// Relative paths of local files to delete (their objects are gone, or they were never ours).
    pub delete: Vec<String>,
    pub unchanged: usize,
}

/// Compares the listing with the manifest and the files on disk (relative path → size).
pub fn plan_sync(
    manifest: &BTreeMap<String, ObjectEntry>,
    remote: &BTreeMap<String, ObjectEntry>,
    local: &BTreeMap<String, u64>,
) -> SyncPlan {
    let mut plan = SyncPlan::default();
    for (path, entry) in remote {
        let known = manifest.get(path).is_some_and(|m| m.same_object(entry));
        let on_disk = local.get(path) == Some(&entry.size);
        if known && on_disk {
            plan.unchanged += 1;
        } else {
            plan.download.push(path.clone());
        }
    }
    plan.delete = local.keys().filter(|p| !remote.contains_key(*p)).cloned().collect();
    plan
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub downloaded: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: usize,
    pub bytes: u64,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        !self.downloaded.is_empty() || !self.deleted.is_empty()
    }
}

/// A model repository in object storage, mirrored into `cache_dir/repo`.
#[derive(Clone)]
pub struct RemoteRepository {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    cache_dir: PathBuf,
}

impl std::fmt::Debug for RemoteRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRepository").field("url", &self.url).field("cache_dir", &self.cache_dir).finish()
    }
}

/// Request limits suited to model files: no cap on a whole download (large models), a stall
/// timeout instead, and retries bounded so that a poll against a dead endpoint ends in seconds.
/// `<PREFIX>_TIMEOUT` / `<PREFIX>_READ_TIMEOUT` in the environment win.
fn client_defaults(env_prefix: &str) -> Vec<(ClientConfigKey, &'static str)> {
    let mut out = Vec::new();
    if std::env::var_os(format!("{env_prefix}_TIMEOUT")).is_none() {
        out.push((ClientConfigKey::Timeout, "6h"));
    }
    if std::env::var_os(format!("{env_prefix}_READ_TIMEOUT")).is_none() {
        out.push((ClientConfigKey::ReadTimeout, "60s"));
    }
    out
}

fn retry_config() -> RetryConfig {
    RetryConfig { max_retries: 5, retry_timeout: Duration::from_secs(60), backoff: Default::default() }
}

impl RemoteRepository {
    /// Opens `url` with credentials and endpoint from the environment; its mirror goes under
    /// [`cache_dir_for`]`(url, cache_base)`.
    pub fn from_url(url: &str, cache_base: &Path) -> Result<RemoteRepository, ServeError> {
        let parsed = parse_remote_url(url)?;
        let err = |e: object_store::Error| {
            ServeError::invalid(format!("model repository '{url}': cannot configure the object store client: {e}"))
        };
        let store: Arc<dyn ObjectStore> = match parsed.scheme.as_str() {
            "s3" | "s3a" => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let mut b = AmazonS3Builder::from_env().with_url(url).with_retry(retry_config());
                for (k, v) in client_defaults("AWS") {
                    b = b.with_config(AmazonS3ConfigKey::Client(k), v);
                }
                Arc::new(b.build().map_err(err)?)
            }
            "gs" => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let mut b = GoogleCloudStorageBuilder::from_env().with_url(url).with_retry(retry_config());
                for (k, v) in client_defaults("GOOGLE") {
                    b = b.with_config(GoogleConfigKey::Client(k), v);
                }
                Arc::new(b.build().map_err(err)?)
            }
            _ => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let mut b = MicrosoftAzureBuilder::from_env().with_url(url).with_retry(retry_config());
                for (k, v) in client_defaults("AZURE") {
                    b = b.with_config(AzureConfigKey::Client(k), v);
                }
                Arc::new(b.build().map_err(err)?)
            }
        };
        let prefix = ObjectPath::parse(&parsed.prefix)
            .map_err(|e| ServeError::invalid(format!("model repository '{url}': bad prefix: {e}")))?;
        Ok(RemoteRepository { url: url.to_string(), store, prefix, cache_dir: cache_dir_for(url, cache_base) })
    }

    /// A remote repository over any store (tests, custom clients); `prefix` is the path inside it.
    pub fn with_store(
        url: impl Into<String>,
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        cache_dir: PathBuf,
    ) -> Result<RemoteRepository, ServeError> {
        let url = url.into();
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|e| ServeError::invalid(format!("model repository '{url}': bad prefix: {e}")))?;
        Ok(RemoteRepository { url, store, prefix, cache_dir })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// This remote's own cache directory (mirror, manifest, temporary files).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The mirror: the directory the manager serves as a local repository root.
    pub fn local_root(&self) -> PathBuf {
        self.cache_dir.join("repo")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.cache_dir.join("tmp")
    }

    fn manifest_path(&self) -> PathBuf {
        self.cache_dir.join(MANIFEST)
    }

    /// Brings the mirror up to date with the store. On error the mirror is left as it was.
    pub async fn sync(&self) -> Result<SyncReport, ServeError> {
        let root = self.local_root();
        let tmp = self.tmp_dir();
        let io = |what: &str, p: &Path, e: std::io::Error| ServeError::Internal(format!("{what} {}: {e}", p.display()));
        for d in [&root, &tmp] {
            tokio::fs::create_dir_all(d).await.map_err(|e| io("cannot create", d, e))?;
        }
        clear_dir(&tmp).await; // what an interrupted sync left
        let remote = self.list().await?;
        let manifest = read_manifest(&self.manifest_path());
        let local = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || local_files(&root))
                .await
                .map_err(|e| ServeError::Internal(format!("scanning the model cache panicked: {e}")))?
        };
        let plan =
            plan_sync(&manifest.objects, &remote.iter().map(|(k, (e, _))| (k.clone(), e.clone())).collect(), &local);
        if remote.is_empty() && !local.is_empty() {
            tracing::warn!(url = %self.url, "no objects under the remote repository's prefix: every cached model goes");
        }

        // Stage every changed object; nothing in the mirror changes until all of them arrived.
        // (Owned futures: borrowing closures trip the `Send` check of the actor's task.)
        let jobs: Vec<_> = plan
            .download
            .iter()
            .map(|rel| {
                let (entry, location) = remote[rel].clone();
                let (this, rel, tmp) = (self.clone(), rel.clone(), tmp.clone());
                async move { this.download(&rel, &location, entry, &tmp).await }
            })
            .collect();
        let staged: Vec<Staged> =
            match futures::stream::iter(jobs).buffer_unordered(PARALLEL_DOWNLOADS).try_collect().await {
                Ok(s) => s,
                Err(e) => {
                    clear_dir(&tmp).await;
                    return Err(e);
                }
            };

        let mut objects: BTreeMap<String, ObjectEntry> = remote.into_iter().map(|(k, (e, _))| (k, e)).collect();
        let bytes = staged.iter().map(|s| s.entry.size).sum();
        for s in &staged {
            objects.insert(s.rel.clone(), s.entry.clone());
        }
        let manifest = Manifest { url: self.url.clone(), objects };
        let delete = plan.delete.clone();
        let applied = {
            let (root, manifest_path) = (root.clone(), self.manifest_path());
            tokio::task::spawn_blocking(move || apply(&root, &delete, &staged, &manifest, &manifest_path))
                .await
                .map_err(|e| ServeError::Internal(format!("updating the model cache panicked: {e}")))?
        };
        clear_dir(&tmp).await;
        applied?;
        let mut downloaded = plan.download;
        downloaded.sort();
        Ok(SyncReport { downloaded, deleted: plan.delete, unchanged: plan.unchanged, bytes })
    }

    /// Every object under the prefix: relative path → (entry, location). Directory markers
    /// (`models/x/` objects) and unsafe paths are skipped.
    async fn list(&self) -> Result<BTreeMap<String, (ObjectEntry, ObjectPath)>, ServeError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let metas: Vec<ObjectMeta> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| ServeError::Unavailable(format!("cannot list model repository '{}': {e}", self.url)))?;
        let mut out = BTreeMap::new();
        for meta in metas {
            let Some(parts) = meta.location.prefix_match(&self.prefix) else { continue };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            if parts.is_empty() {
                continue;
            }
            if parts.iter().any(|p| p.is_empty() || p == "." || p == ".." || p.contains(['\\', '\0'])) {
                tracing::warn!(url = %self.url, object = %meta.location, "skipping an object with an unsafe path");
                continue;
            }
            out.insert(parts.join("/"), (ObjectEntry::from_meta(&meta), meta.location));
        }
        // An object that is also a "directory" of others is a folder marker, not a file.
        let markers: Vec<String> = out
            .keys()
            .filter(|k| out.range(format!("{k}/")..).next().is_some_and(|(n, _)| n.starts_with(&format!("{k}/"))))
            .cloned()
            .collect();
        for m in markers {
            out.remove(&m);
        }
        Ok(out)
    }

    async fn download(
        &self,
        rel: &str,
        location: &ObjectPath,
        listed: ObjectEntry,
        tmp: &Path,
    ) -> Result<Staged, ServeError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let fail = |e: &dyn std::fmt::Display| {
            ServeError::Unavailable(format!("cannot download '{rel}' from model repository '{}': {e}", self.url))
        };
        let path = tmp.join(format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| fail(&e))?;
        if listed.size == 0 {
            // Nothing to fetch; and a leftover folder marker (`models/x/`, listed as `models/x`)
            // could not be fetched under its listed name anyway.
            return Ok(Staged { rel: rel.to_string(), tmp: path, entry: listed });
        }
        let got = self.store.get(location).await.map_err(|e| fail(&e))?;
        let entry = ObjectEntry::from_meta(&got.meta);
        let mut stream = got.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(|e| fail(&e))? {
            written += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| fail(&e))?;
        }
        file.flush().await.map_err(|e| fail(&e))?;
        file.sync_all().await.map_err(|e| fail(&e))?;
        if written != entry.size {
            return Err(fail(&format!("got {written} bytes, expected {} (listed {})", entry.size, listed.size)));
        }
        Ok(Staged { rel: rel.to_string(), tmp: path, entry })
    }
}

/// A downloaded object waiting in the temporary directory.
struct Staged {
    rel: String,
    tmp: PathBuf,
    entry: ObjectEntry,
}

fn read_manifest(path: &Path) -> Manifest {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "unreadable cache manifest: downloading everything again");
            Manifest::default()
        }),
        Err(_) => Manifest::default(),
    }
}

/// Regular files under `root` as relative `/`-separated paths → size.
fn local_files(root: &Path) -> BTreeMap<String, u64> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, u64>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if ft.is_dir() {
                walk(&e.path(), &child, out);
            } else if let Ok(md) = e.metadata() {
                out.insert(child, md.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// Moves staged files into the mirror, deletes the vanished ones, prunes empty directories and
/// writes the manifest (each file replaced by a rename, so readers see old or new, never half).
fn apply(
    root: &Path,
    delete: &[String],
    staged: &[Staged],
    manifest: &Manifest,
    manifest_path: &Path,
) -> Result<(), ServeError> {
    let io =
        |what: &str, p: &Path, e: std::io::Error| ServeError::Internal(format!("cannot {what} {}: {e}", p.display()));
    for rel in delete {
        let p = root.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(&p).map_err(|e| io("delete", &p, e))?,
            Ok(_) => std::fs::remove_file(&p).map_err(|e| io("delete", &p, e))?,
            Err(_) => {}
        }
    }
    for s in staged {
        let target = root.join(&s.rel);
        // A file where a directory must go (or the reverse) after the layout changed.
        let mut ancestor = target.parent();
        while let Some(a) = ancestor.filter(|a| a.starts_with(root) && *a != root) {
            if std::fs::symlink_metadata(a).is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(a).map_err(|e| io("delete", a, e))?;
            }
            ancestor = a.parent();
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
        }
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&target).map_err(|e| io("delete", &target, e))?;
        }
        std::fs::rename(&s.tmp, &target).map_err(|e| io("write", &target, e))?;
    }
    prune_empty_dirs(root, root);
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| ServeError::Internal(format!("cannot encode the cache manifest: {e}")))?;
    let tmp = manifest_path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, manifest_path).map_err(|e| io("write", manifest_path, e))?;
    Ok(())
}

/// Removes empty directories below `root` (a model whose objects all went disappears).
fn prune_empty_dirs(dir: &Path, root: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else { return false };
    let mut empty = true;
    for e in rd.flatten() {
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if !(is_dir && prune_empty_dirs(&e.path(), root)) {
            empty = false;
        }
    }
    if empty && dir != root {
        return std::fs::remove_dir(dir).is_ok();
    }
    false
}

async fn clear_dir(dir: &Path) {
    if let Ok(mut rd) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    fn entry(size: u64, etag: &str) -> ObjectEntry {
        ObjectEntry { size, etag: Some(etag.into()), modified: None }
    }

    fn map<V: Clone>(items: &[(&str, V)]) -> BTreeMap<String, V> {
        items.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn plan_downloads_new_changed_and_damaged_files_and_deletes_vanished_ones() {
        let manifest = map(&[
            ("a/config.pbtxt", entry(10, "e1")),
            ("a/1/model.onnx", entry(100, "e2")),
            ("a/2/model.onnx", entry(100, "e3")),
            ("b/1/model.onnx", entry(50, "e4")),
            ("c/1/model.onnx", entry(7, "e5")),
        ]);
        let remote = map(&[
            ("a/config.pbtxt", entry(10, "e1")),  // unchanged
            ("a/1/model.onnx", entry(100, "e9")), // new ETag, same size
            ("a/2/model.onnx", entry(101, "e3")), // new size
            ("b/1/model.onnx", entry(50, "e4")),  // unchanged, but the local file was altered
            ("c/1/model.onnx", entry(7, "e5")),   // unchanged, but the local file is missing
            ("d/1/model.onnx", entry(3, "e6")),   // new
        ]);
        let local = map(&[
            ("a/config.pbtxt", 10),
            ("a/1/model.onnx", 100),
            ("a/2/model.onnx", 100),
            ("b/1/model.onnx", 49),
            ("gone/1/model.onnx", 5), // its object vanished
            ("stray.txt", 1),         // never ours
        ]);
        let plan = plan_sync(&manifest, &remote, &local);
        assert_eq!(
            plan.download,
            ["a/1/model.onnx", "a/2/model.onnx", "b/1/model.onnx", "c/1/model.onnx", "d/1/model.onnx"]
        );
        assert_eq!(plan.delete, ["gone/1/model.onnx", "stray.txt"]);
        assert_eq!(plan.unchanged, 1);
    }

    #[test]
    fn plan_of_an_unchanged_mirror_is_empty() {
        let remote = map(&[("m/1/model.onnx", entry(4, "x")), ("m/config.pbtxt", entry(2, "y"))]);
        let local = map(&[("m/1/model.onnx", 4u64), ("m/config.pbtxt", 2)]);
        let plan = plan_sync(&remote, &remote, &local);
        assert_eq!(plan, SyncPlan { download: vec![], delete: vec![], unchanged: 2 });
        // Without a manifest (first sync, or a lost one) everything is fetched again.
        assert_eq!(plan_sync(&BTreeMap::new(), &remote, &local).download.len(), 2);
    }

    #[test]
    fn entries_without_etags_compare_by_size_and_time() {
        let a = ObjectEntry { size: 1, etag: None, modified: Some("2024-01-01T00:00:00+00:00".into()) };
        let b = ObjectEntry { modified: Some("2024-01-02T00:00:00+00:00".into()), ..a.clone() };
        assert!(a.same_object(&a));
        assert!(!a.same_object(&b));
        assert!(!a.same_object(&entry(1, "x")));
        let unknown = ObjectEntry { size: 1, etag: None, modified: None };
        assert!(!unknown.same_object(&unknown));
    }

    #[test]
    fn urls() {
        assert!(is_remote_url("s3://b/p"));
        assert!(is_remote_url("GS://b"));
        assert!(is_remote_url("az://container/models"));
        assert!(!is_remote_url("/srv/models"));
        assert!(!is_remote_url("http://host/models"));
        assert_eq!(
            parse_remote_url("s3://bucket/some/prefix/").unwrap(),
            RemoteUrl { scheme: "s3".into(), bucket: "bucket".into(), prefix: "some/prefix".into() }
        );
        assert_eq!(parse_remote_url("gs://bucket").unwrap().prefix, "");
        assert!(parse_remote_url("s3:///models").is_err());
        assert!(parse_remote_url("s3://b/a/../c").is_err());
        assert!(parse_remote_url("ftp://b/c").is_err());

        let base = Path::new("/cache");
        let a = cache_dir_for("s3://bucket/models", base);
        assert_eq!(a, cache_dir_for("s3://bucket/models/", base));
        assert_ne!(a, cache_dir_for("s3://bucket/models2", base));
        assert!(a.file_name().unwrap().to_str().unwrap().starts_with("s3_bucket_models-"), "{a:?}");
    }

    #[test]
    fn an_s3_url_opens_with_its_own_cache_directory() {
        let base = Path::new("/var/cache/sluice");
        let r = RemoteRepository::from_url("s3://bucket/models/", base).unwrap();
        assert_eq!(r.url(), "s3://bucket/models/");
        assert_eq!(r.cache_dir(), cache_dir_for("s3://bucket/models", base));
        assert_eq!(r.local_root(), r.cache_dir().join("repo"));
        assert_eq!(r.prefix.as_ref(), "models");
        assert!(RemoteRepository::from_url("/srv/models", base).is_err());
    }

    async fn put(store: &InMemory, key: &str, data: &[u8]) {
        store.put(&ObjectPath::from(key), PutPayload::from(data.to_vec())).await.unwrap();
    }

    async fn delete(store: &InMemory, key: &str) {
        store.delete(&ObjectPath::from(key)).await.unwrap();
    }

    #[tokio::test]
    async fn sync_mirrors_adds_changes_and_removals() {
        let store = Arc::new(InMemory::new());
        put(&store, "models/a/config.pbtxt", b"name: \"a\"").await;
        put(&store, "models/a/1/model.onnx", b"v1").await;
        put(&store, "models/b/1/model.onnx", b"bbb").await;
        put(&store, "models/b", b"").await; // a folder marker, as consoles create them
        put(&store, "models/a/labels.txt", b"").await; // an empty file: created, not fetched
        put(&store, "models2/x/1/model.onnx", b"not under the prefix").await;
        put(&store, "other/y", b"not under the prefix").await;
        let cache = tempfile::tempdir().unwrap();
        let remote =
            RemoteRepository::with_store("mem://models", store.clone(), "models", cache.path().join("r")).unwrap();
        let root = remote.local_root();

        let r = remote.sync().await.unwrap();
        assert_eq!(r.downloaded, ["a/1/model.onnx", "a/config.pbtxt", "a/labels.txt", "b/1/model.onnx"]);
        assert_eq!(r.bytes, 9 + 2 + 3);
        assert_eq!(std::fs::read(root.join("a/labels.txt")).unwrap(), b"");
        assert!(root.join("b").is_dir());
        assert_eq!(std::fs::read(root.join("a/1/model.onnx")).unwrap(), b"v1");
        assert_eq!(std::fs::read(root.join("b/1/model.onnx")).unwrap(), b"bbb");
        assert!(!root.join("x").exists() && !root.join("y").exists());
        let manifest = read_manifest(&remote.manifest_path());
        assert_eq!(manifest.url, "mem://models");
        assert_eq!(manifest.objects.len(), 4);

        // Nothing changed: nothing downloaded.
        let r = remote.sync().await.unwrap();
        assert!(!r.changed(), "{r:?}");
        assert_eq!(r.unchanged, 4);

        // A new version, a changed object, a removed model.
        put(&store, "models/a/2/model.onnx", b"v2").await;
        put(&store, "models/a/config.pbtxt", b"name: \"a\" max_batch_size: 0").await;
        delete(&store, "models/b/1/model.onnx").await;
        delete(&store, "models/b").await;
        let r = remote.sync().await.unwrap();
        assert_eq!(r.downloaded, ["a/2/model.onnx", "a/config.pbtxt"]);
        assert_eq!(r.deleted, ["b/1/model.onnx"]);
        assert_eq!(std::fs::read_to_string(root.join("a/config.pbtxt")).unwrap(), "name: \"a\" max_batch_size: 0");
        assert!(!root.join("b").exists(), "an emptied model directory is removed");
        assert_eq!(crate::manager::scan_model_names(std::slice::from_ref(&root)), ["a"]);

        // A damaged local file is repaired; a stray one is removed.
        std::fs::write(root.join("a/1/model.onnx"), b"corrupted!").unwrap();
        std::fs::write(root.join("a/stray"), b"?").unwrap();
        let r = remote.sync().await.unwrap();
        assert_eq!(r.downloaded, ["a/1/model.onnx"]);
        assert_eq!(r.deleted, ["a/stray"]);
        assert_eq!(std::fs::read(root.join("a/1/model.onnx")).unwrap(), b"v1");
        assert_eq!(std::fs::read_dir(remote.tmp_dir()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_failed_sync_leaves_the_mirror_as_it_was() {
        let store = Arc::new(InMemory::new());
        put(&store, "m/1/model.onnx", b"v1").await;
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("r");
        let good = RemoteRepository::with_store("mem://", store.clone(), "", dir.clone()).unwrap();
        good.sync().await.unwrap();
        let before = local_files(&good.local_root());

        // The same mirror behind an endpoint that refuses connections.
        let dead = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("b")
            .with_region("us-east-1")
            .with_endpoint("http://127.0.0.1:1")
            .with_allow_http(true)
            .with_access_key_id("x")
            .with_secret_access_key("y")
            .with_retry(RetryConfig { max_retries: 0, ..RetryConfig::default() })
            .build()
            .unwrap();
        let bad = RemoteRepository::with_store("s3://b", Arc::new(dead), "", dir).unwrap();
        let err = bad.sync().await.unwrap_err();
        assert!(matches!(err, ServeError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("s3://b"), "{err}");
        assert_eq!(local_files(&good.local_root()), before);
        assert_eq!(std::fs::read(good.local_root().join("m/1/model.onnx")).unwrap(), b"v1");
    }
}
