//! The model lifecycle actor: loads, reloads and unloads model versions one command at a time,
//! and publishes an immutable table of what is served for the request path to read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use sluice_backend::{Backend, BackendRegistry, ModelFiles};
use sluice_scheduler::{ModelRunner, ModelStats, QueueLimits};
use sluice_types::api::{IndexEntry, ModelState};
use sluice_types::{ModelConfig, ServeError};
use tokio::sync::{mpsc, oneshot};

use crate::config::{parse_model_config, read_model_config, validate_config, ConfigFormat};

/// When models are loaded: all at start (`None`), on request (`Explicit`), or by watching the
/// repository (`Poll`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlMode {
    None,
    Explicit,
    Poll,
}

#[derive(Clone)]
pub struct RepositoryOptions {
    pub roots: Vec<PathBuf>,
    pub control_mode: ControlMode,
    /// Models loaded at start in explicit mode.
    pub startup_models: Vec<String>,
    pub backends: BackendRegistry,
    /// How much a version may hold queued before it answers "queue full".
    pub queue_limits: QueueLimits,
    /// Object-storage repositories, each mirrored into a cache directory that is also in
    /// `roots`; synced before the start-up scan, before each poll and before a load from disk.
    pub remotes: Vec<crate::remote::RemoteRepository>,
}

/// A version that takes requests.
pub struct ServedVersion {
    pub name: String,
    pub version: u64,
    pub config: Arc<ModelConfig>,
    pub runner: ModelRunner,
    /// What `model_warmup` ran before this version took traffic (not in its statistics).
    pub warmup: crate::warmup::WarmupReport,
    /// The text step, when the config declares one (`text_input`).
    pub text: Option<Arc<sluice_text::TextInput>>,
    /// Class labels per output (`label_filename`, else the model directory's `labels.txt`).
    pub labels: std::collections::BTreeMap<String, Vec<String>>,
    /// Generative models (`candle` backend): the engine that streams their tokens. Their
    /// instances call it too, so that plain infer requests and jobs work unchanged.
    pub generator: Option<Arc<sluice_llm::Generator>>,
}

impl ServedVersion {
    pub fn stats(&self) -> &Arc<ModelStats> {
        self.runner.stats()
    }
}

#[derive(Clone)]
pub struct VersionSlot {
    pub state: ModelState,
    pub reason: String,
    pub served: Option<Arc<ServedVersion>>,
}

#[derive(Clone)]
pub struct ModelRecord {
    pub name: String,
    pub versions: BTreeMap<u64, VersionSlot>,
    /// Set when the model as a whole could not be loaded (bad config, no versions).
    pub state: ModelState,
    pub reason: String,
    /// What the model directory looked like when it was last loaded (poll mode compares).
    pub fingerprint: u64,
}

impl ModelRecord {
    fn loading(name: &str) -> ModelRecord {
        ModelRecord {
            name: name.to_string(),
            versions: BTreeMap::new(),
            state: ModelState::Loading,
            reason: String::new(),
            fingerprint: 0,
        }
    }

    fn ready_versions(&self) -> impl DoubleEndedIterator<Item = &Arc<ServedVersion>> {
        self.versions.values().filter(|s| s.state == ModelState::Ready).filter_map(|s| s.served.as_ref())
    }
}

type Table = HashMap<String, ModelRecord>;

/// Why a model with no ready version cannot take a request. Only a load in progress is
/// UNAVAILABLE (retry soon); a model that was unloaded or failed to load is NOT_FOUND, with
/// Triton's words, because a client treats 5xx as a broken server.
fn no_ready_version(rec: &ModelRecord) -> ServeError {
    let loading = rec.state == ModelState::Loading || rec.versions.values().any(|s| s.state == ModelState::Loading);
    if loading {
        return ServeError::Unavailable(format!("model '{}' is loading", rec.name));
    }
    let reason = if rec.reason.is_empty() { String::new() } else { format!(" ({})", rec.reason) };
    ServeError::NotFound(format!("Request for unknown model: '{}' has no available versions{reason}", rec.name))
}

/// Inline content for a load: a config that replaces the one on disk and model files
/// (`<version>/<name>` → bytes) that replace the directory's.
#[derive(Clone, Debug, Default)]
pub struct LoadOverride {
    pub config_json: Option<String>,
    pub files: BTreeMap<String, Vec<u8>>,
}

enum Command {
    Load { name: String, ov: Option<LoadOverride>, reply: oneshot::Sender<Result<(), ServeError>> },
    Unload { name: String, reply: oneshot::Sender<Result<(), ServeError>> },
    Startup { reply: oneshot::Sender<Result<(), ServeError>> },
    Poll { reply: oneshot::Sender<()> },
    UnloadAll { reply: oneshot::Sender<()> },
}

/// Cloneable handle to the repository actor.
#[derive(Clone)]
pub struct ModelRepository {
    table: Arc<RwLock<Arc<Table>>>,
    tx: mpsc::Sender<Command>,
    opts: Arc<RepositoryOptions>,
    required: Required,
}

/// The models the server must serve to be ready, as the actor last worked them out (at start,
/// and after each poll); `None` until the start-up loads ran. Kept so that a readiness probe
/// reads a list instead of scanning the repositories' directories.
type Required = Arc<RwLock<Option<Arc<Vec<String>>>>>;

impl ModelRepository {
    /// Starts the actor; call [`ModelRepository::load_startup_models`] to load what the mode says.
    pub fn start(opts: RepositoryOptions) -> ModelRepository {
        let table = Arc::new(RwLock::new(Arc::new(Table::new())));
        let (tx, rx) = mpsc::channel(64);
        let opts = Arc::new(opts);
        let required = Required::default();
        let actor = Actor {
            table: Table::new(),
            published: table.clone(),
            opts: opts.clone(),
            inline_seq: 0,
            required: required.clone(),
        };
        tokio::spawn(actor.run(rx));
        ModelRepository { table, tx, opts, required }
    }

    pub fn options(&self) -> &RepositoryOptions {
        &self.opts
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ServeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ServeError::Unavailable("the model repository is shutting down".into()))?;
        rx.await.map_err(|_| ServeError::Internal("the model repository stopped".into()))
    }

    /// Loads every model of the repository (mode none and poll) or the `--load-model` ones.
    /// Fails only when a remote repository cannot be mirrored.
    pub async fn load_startup_models(&self) -> Result<(), ServeError> {
        self.call(|reply| Command::Startup { reply }).await?
    }

    /// Loads or reloads a model; on failure a model that was serving keeps serving.
    pub async fn load(&self, name: &str, ov: Option<LoadOverride>) -> Result<(), ServeError> {
        self.call(|reply| Command::Load { name: name.to_string(), ov, reply }).await?
    }

    /// Unloads a model after its in-flight requests finish.
    pub async fn unload(&self, name: &str) -> Result<(), ServeError> {
        self.call(|reply| Command::Unload { name: name.to_string(), reply }).await?
    }

    /// Poll mode: loads added models, reloads changed ones, unloads removed ones.
    pub async fn poll(&self) {
        let _ = self.call(|reply| Command::Poll { reply }).await;
    }

    /// Starts the poll loop (poll mode only): one [`ModelRepository::poll`] every `every`.
    pub fn spawn_poller(&self, every: std::time::Duration) -> Option<tokio::task::JoinHandle<()>> {
        if self.opts.control_mode != ControlMode::Poll {
            return None;
        }
        let repo = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                repo.poll().await;
            }
        }))
    }

    pub async fn unload_all(&self) {
        let _ = self.call(|reply| Command::UnloadAll { reply }).await;
    }

    fn snapshot(&self) -> Arc<Table> {
        self.table.read().clone()
    }

    /// The version a request goes to: the one named, or the newest ready one.
    pub fn get(&self, model: &str, version: Option<&str>) -> Result<Arc<ServedVersion>, ServeError> {
        let table = self.snapshot();
        let rec = table.get(model).ok_or_else(|| ServeError::model_not_found(model, version))?;
        match version.filter(|v| !v.is_empty()) {
            None => rec.ready_versions().next_back().cloned().ok_or_else(|| no_ready_version(rec)),
            Some(v) => {
                let n: u64 = v.parse().map_err(|_| ServeError::model_not_found(model, Some(v)))?;
                let slot = rec.versions.get(&n).ok_or_else(|| ServeError::model_not_found(model, Some(v)))?;
                match (&slot.served, slot.state) {
                    (Some(s), ModelState::Ready) => Ok(s.clone()),
                    (_, ModelState::Loading) => {
                        Err(ServeError::Unavailable(format!("model '{model}' version {v} is loading")))
                    }
                    // Triton answers NOT_FOUND for a version that is not available (unloaded,
                    // failed, going away): clients read 503 as "the server is broken, retry".
                    _ => Err(ServeError::NotFound(format!(
                        "Request for unknown model: '{model}' version {v} is not available ({}{})",
                        slot.state.as_str(),
                        if slot.reason.is_empty() { String::new() } else { format!(": {}", slot.reason) }
                    ))),
                }
            }
        }
    }

    /// True when the model is in the served table or in a repository (loaded or not).
    pub fn is_known(&self, model: &str) -> bool {
        self.snapshot().contains_key(model) || scan_model_names(&self.opts.roots).iter().any(|n| n == model)
    }

    /// Ready versions of a model, oldest first.
    pub fn ready_versions(&self, model: &str) -> Vec<Arc<ServedVersion>> {
        self.snapshot().get(model).map(|r| r.ready_versions().cloned().collect()).unwrap_or_default()
    }

    /// Every ready version of every model.
    pub fn all_ready(&self) -> Vec<Arc<ServedVersion>> {
        let table = self.snapshot();
        let mut v: Vec<_> = table.values().flat_map(|r| r.ready_versions().cloned()).collect();
        v.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        v
    }

    /// True when the start-up loads ran and every model they had to load (in poll mode: every
    /// model the last poll found) is ready.
    pub fn required_ready(&self) -> bool {
        let Some(required) = self.required.read().clone() else { return false };
        let table = self.snapshot();
        required.iter().all(|m| table.get(m).is_some_and(|r| r.ready_versions().next().is_some()))
    }

    /// Triton's repository index: every model in the repositories and every loaded version.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let table = self.snapshot();
        let mut names = scan_model_names(&self.opts.roots);
        names.extend(table.keys().cloned());
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            match table.get(&name) {
                None => out.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: ModelState::Unavailable,
                    reason: "unloaded".into(),
                }),
                Some(rec) if rec.versions.is_empty() => {
                    out.push(IndexEntry { name, version: String::new(), state: rec.state, reason: rec.reason.clone() })
                }
                Some(rec) => out.extend(rec.versions.iter().map(|(v, s)| IndexEntry {
                    name: name.clone(),
                    version: v.to_string(),
                    state: s.state,
                    reason: if s.reason.is_empty() { rec.reason.clone() } else { s.reason.clone() },
                })),
            }
        }
        if ready_only {
            out.retain(|e| e.state == ModelState::Ready);
        }
        out
    }
}

/// The file that makes a repository directory an endpoint (a policy over models).
pub const ENDPOINT_FILE: &str = "endpoint.yaml";

/// Endpoint directories of the repositories: `(name, path of its endpoint.yaml)`, sorted, the
/// first root winning on duplicates.
pub fn scan_endpoints(roots: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for root in roots {
        let Ok(rd) = std::fs::read_dir(root) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let file = e.path().join(ENDPOINT_FILE);
            if !name.starts_with('.') && file.is_file() && !out.iter().any(|(n, _)| *n == name) {
                out.push((name, file));
            }
        }
    }
    out.sort();
    out
}

/// Directory names of the repositories' models (sorted, first root wins on duplicates).
pub fn scan_model_names(roots: &[PathBuf]) -> Vec<String> {
    let mut names = Vec::new();
    for root in roots {
        let Ok(rd) = std::fs::read_dir(root) else { continue };
        for e in rd.flatten() {
            let is_dir = e.file_type().map(|t| t.is_dir() || t.is_symlink()).unwrap_or(false) && e.path().is_dir();
            let name = e.file_name().to_string_lossy().into_owned();
            // A directory holding `endpoint.yaml` declares an endpoint, not a model.
            if is_dir && !name.starts_with('.') && !e.path().join(ENDPOINT_FILE).is_file() {
                names.push(name);
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Makes the defaults explicit, as Triton's config endpoint shows them: clients such as
/// perf_analyzer and dashboards read the served config, not the file.
fn fill_defaults(config: &mut ModelConfig) {
    let vp = &mut config.version_policy;
    if vp.latest.is_none() && vp.all.is_none() && vp.specific.is_none() {
        vp.latest = Some(sluice_types::config::LatestPolicy::default());
    }
    for g in config.instance_group.iter_mut().filter(|g| g.count == 0) {
        g.count = 1;
    }
    if config.instance_group.is_empty() {
        config.instance_group.push(sluice_types::config::InstanceGroup {
            name: config.name.clone(),
            kind: "KIND_CPU".into(),
            count: 1,
            gpus: vec![],
        });
    }
}

/// A hash of every file's path, size and modification time under a model directory.
pub fn fingerprint(model_dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::metadata(&p) else { continue };
            if md.is_dir() {
                if depth < 4 {
                    walk(&p, depth + 1, out);
                }
            } else {
                out.push((p, md.len(), md.modified().ok()));
            }
        }
    }
    let mut files = Vec::new();
    walk(model_dir, 0, &mut files);
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

fn version_dirs(model_dir: &Path) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(model_dir) else { return vec![] };
    let mut v: Vec<u64> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    v.sort_unstable();
    v
}

struct Actor {
    table: Table,
    published: Arc<RwLock<Arc<Table>>>,
    opts: Arc<RepositoryOptions>,
    inline_seq: u64,
    required: Required,
}

/// A version built and started, not yet taking traffic.
struct Prepared {
    versions: Vec<Arc<ServedVersion>>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Load { name, ov, reply } => {
                    if ov.as_ref().is_none_or(|o| o.files.is_empty()) {
                        let _ = self.sync_remotes().await;
                    }
                    let r = self.load(&name, ov).await;
                    let _ = reply.send(r);
                }
                Command::Unload { name, reply } => {
                    let r = self.unload(&name).await;
                    let _ = reply.send(r);
                }
                Command::Startup { reply } => {
                    if let Err(e) = self.sync_remotes().await {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let names = match self.opts.control_mode {
                        // Endpoints in the list are the engine's to load.
                        ControlMode::Explicit => {
                            let endpoints = scan_endpoints(&self.opts.roots);
                            let mut names = self.opts.startup_models.clone();
                            names.retain(|n| !endpoints.iter().any(|(e, _)| e == n));
                            names
                        }
                        ControlMode::None | ControlMode::Poll => scan_model_names(&self.opts.roots),
                    };
                    for name in &names {
                        if let Err(e) = self.load(name, None).await {
                            tracing::error!(model = %name, error = %e, "failed to load model");
                        }
                    }
                    *self.required.write() = Some(Arc::new(names));
                    let _ = reply.send(Ok(()));
                }
                Command::Poll { reply } => {
                    let _ = self.sync_remotes().await;
                    self.poll().await;
                    let _ = reply.send(());
                }
                Command::UnloadAll { reply } => {
                    let names: Vec<String> = self.table.keys().cloned().collect();
                    for name in names {
                        let _ = self.unload(&name).await;
                    }
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Brings every remote repository's mirror up to date. A failure is logged and the previous
    /// mirror keeps serving; the first failure is returned (start-up treats it as fatal).
    async fn sync_remotes(&self) -> Result<(), ServeError> {
        let mut first_err = None;
        for remote in &self.opts.remotes {
            match remote.sync().await {
                Ok(r) if r.changed() => tracing::info!(
                    url = %remote.url(),
                    downloaded = r.downloaded.len(),
                    deleted = r.deleted.len(),
                    bytes = r.bytes,
                    "remote model repository synced"
                ),
                Ok(_) => tracing::debug!(url = %remote.url(), "remote model repository unchanged"),
                Err(e) => {
                    tracing::warn!(url = %remote.url(), error = %e, "remote model repository sync failed; the previous mirror is kept");
                    first_err.get_or_insert(ServeError::Unavailable(format!(
                        "cannot mirror model repository '{}' into {}: {e}",
                        remote.url(),
                        remote.local_root().display()
                    )));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn publish(&self) {
        *self.published.write() = Arc::new(self.table.clone());
    }

    fn find_model_dir(&self, name: &str) -> Option<PathBuf> {
        self.opts.roots.iter().map(|r| r.join(name)).find(|p| p.is_dir())
    }

    async fn load(&mut self, name: &str, ov: Option<LoadOverride>) -> Result<(), ServeError> {
        if name.is_empty() || name.contains('/') || name.contains("..") {
            return Err(ServeError::invalid(format!("invalid model name '{name}'")));
        }
        // Triton's rule, for both edges: files sent inline come with the config they run under.
        if ov.as_ref().is_some_and(|o| !o.files.is_empty() && o.config_json.is_none()) {
            return Err(ServeError::invalid("loading model files inline needs a 'config' parameter too"));
        }
        let fingerprint = self.find_model_dir(name).map(|d| fingerprint(&d)).unwrap_or(0);
        let rec = self.table.entry(name.to_string()).or_insert_with(|| ModelRecord::loading(name));
        rec.fingerprint = fingerprint;
        if rec.versions.is_empty() {
            rec.state = ModelState::Loading;
            rec.reason.clear();
        }
        self.publish();
        match self.prepare(name, ov).await {
            Ok(prepared) => {
                self.swap_in(name, prepared).await;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(model = %name, error = %e, "load failed");
                if let Some(rec) = self.table.get_mut(name) {
                    rec.reason = e.to_string();
                    if rec.versions.values().any(|s| s.state == ModelState::Ready) {
                        rec.reason = format!("reload failed, previous version kept serving: {e}");
                    } else {
                        rec.state = ModelState::Unavailable;
                        rec.versions.clear();
                    }
                }
                // A name that is in no repository leaves no trace in the index.
                if matches!(e, ServeError::NotFound(_)) && self.table.get(name).is_some_and(|r| r.versions.is_empty()) {
                    self.table.remove(name);
                }
                self.publish();
                Err(e)
            }
        }
    }

    /// Reads the config, picks versions, loads and starts their instances.
    async fn prepare(&mut self, name: &str, ov: Option<LoadOverride>) -> Result<Prepared, ServeError> {
        let ov = ov.unwrap_or_default();
        let model_dir = if ov.files.is_empty() {
            self.find_model_dir(name).ok_or_else(|| {
                ServeError::NotFound(format!(
                    "failed to load '{name}': no model directory '{name}' in the model repositories"
                ))
            })?
        } else {
            self.inline_seq += 1;
            write_inline_files(name, self.inline_seq, &ov.files)?
        };
        let mut config = match &ov.config_json {
            Some(json) => parse_model_config(json, ConfigFormat::Json)?,
            None => read_model_config(&model_dir)?.unwrap_or_default(),
        };
        if config.name.is_empty() {
            config.name = name.to_string();
        } else if config.name != name {
            return Err(ServeError::invalid(format!(
                "failed to load '{name}': the config names the model '{}'; it must match the directory name",
                config.name
            )));
        }
        let available = version_dirs(&model_dir);
        let selected = config.version_policy.select(&available);
        if selected.is_empty() {
            return Err(ServeError::invalid(format!(
                "failed to load '{name}': no version directory matches the version policy (found: {available:?})"
            )));
        }
        let newest_dir = model_dir.join(selected[selected.len() - 1].to_string());
        let backend = self.opts.backends.find(&config, &newest_dir)?;
        let filename = if config.default_model_filename.is_empty() {
            backend.default_filename().to_string()
        } else {
            config.default_model_filename.clone()
        };
        let files = |v: u64| {
            let version_dir = model_dir.join(v.to_string());
            let file = filename.clone();
            ModelFiles { model_dir: model_dir.clone(), model_path: version_dir.join(file), version_dir }
        };
        let newest_files = files(selected[selected.len() - 1]);
        let config = {
            let backend = backend.clone();
            tokio::task::spawn_blocking(move || -> Result<ModelConfig, ServeError> {
                backend.auto_complete(&mut config, &newest_files)?;
                validate_config(&config)?;
                fill_defaults(&mut config);
                Ok(config)
            })
            .await
            .map_err(|e| ServeError::Internal(format!("auto-complete of '{name}' panicked: {e}")))??
        };
        let config = Arc::new(config);
        let mut versions = Vec::new();
        for v in selected {
            let files = files(v);
            match start_version(backend.clone(), config.clone(), files, v, self.opts.queue_limits).await {
                Ok(served) => versions.push(served),
                Err(e) => {
                    for s in versions {
                        s.runner.shutdown().await;
                    }
                    return Err(ServeError::invalid(format!("failed to load '{name}' version {v}: {e}")));
                }
            }
        }
        Ok(Prepared { versions })
    }

    /// Makes the new versions take traffic, then drains and stops the ones they replace.
    async fn swap_in(&mut self, name: &str, prepared: Prepared) {
        let mut old: Vec<Arc<ServedVersion>> = Vec::new();
        // `load` inserted the record and the actor runs one command at a time; re-creating it
        // anyway keeps a mistake here from stranding running versions.
        let rec = self.table.entry(name.to_string()).or_insert_with(|| ModelRecord::loading(name));
        let new_versions: BTreeMap<u64, VersionSlot> = prepared
            .versions
            .into_iter()
            .map(|s| (s.version, VersionSlot { state: ModelState::Ready, reason: String::new(), served: Some(s) }))
            .collect();
        for (_, slot) in std::mem::take(&mut rec.versions) {
            if let Some(s) = slot.served {
                old.push(s);
            }
        }
        rec.versions = new_versions;
        rec.state = ModelState::Ready;
        rec.reason.clear();
        tracing::info!(model = %name, versions = ?rec.versions.keys().collect::<Vec<_>>(), "model ready");
        self.publish();
        for s in old {
            s.runner.shutdown().await;
        }
    }

    async fn poll(&mut self) {
        let present = scan_model_names(&self.opts.roots);
        for name in &present {
            let changed = match self.table.get(name) {
                None => true,
                Some(rec) => self.find_model_dir(name).map(|d| fingerprint(&d)) != Some(rec.fingerprint),
            };
            if changed {
                tracing::info!(model = %name, "repository changed: loading");
                if let Err(e) = self.load(name, None).await {
                    tracing::warn!(model = %name, error = %e, "poll: load failed");
                }
            }
        }
        let gone: Vec<String> =
            self.table.iter().filter(|(n, _)| !present.contains(n)).map(|(n, _)| n.clone()).collect();
        for name in gone {
            tracing::info!(model = %name, "removed from the repository: unloading");
            let _ = self.unload(&name).await;
            self.table.remove(&name);
            self.publish();
        }
        let mut required = self.required.write();
        if required.is_some() {
            *required = Some(Arc::new(present));
        }
    }

    async fn unload(&mut self, name: &str) -> Result<(), ServeError> {
        let Some(rec) = self.table.get_mut(name) else {
            return if self.find_model_dir(name).is_some() {
                Ok(())
            } else {
                Err(ServeError::NotFound(format!("failed to unload '{name}': no such model")))
            };
        };
        let mut draining = Vec::new();
        for slot in rec.versions.values_mut() {
            slot.state = ModelState::Unloading;
            if let Some(s) = slot.served.take() {
                draining.push(s);
            }
        }
        rec.state = ModelState::Unloading;
        self.publish();
        for s in draining {
            s.runner.shutdown().await;
        }
        if let Some(rec) = self.table.get_mut(name) {
            rec.versions.clear();
            rec.state = ModelState::Unavailable;
            rec.reason = "unloaded".into();
        }
        self.publish();
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }
}

async fn start_version(
    backend: Arc<dyn Backend>,
    config: Arc<ModelConfig>,
    files: ModelFiles,
    version: u64,
    limits: QueueLimits,
) -> Result<Arc<ServedVersion>, ServeError> {
    let n = config.instance_count();
    let cfg = config.clone();
    // Load the instances, then warm each of them (Triton's `model_warmup`) before the version
    // can take traffic; a failing warmup fails the load.
    let (instances, warmup, text, labels, generator) = tokio::task::spawn_blocking(move || {
        let text = sluice_text::TextInput::from_config(&cfg, &files.model_dir, &files.version_dir)?;
        let mut labels = std::collections::BTreeMap::new();
        for o in &cfg.output {
            if let Some(l) = sluice_text::labels_for(&cfg, &o.name, &files.model_dir)? {
                labels.insert(o.name.clone(), l);
            }
        }
        let samples = crate::warmup::build_samples(&cfg, &files.model_dir)?;
        // A generative model's instances share one engine (its weights, KV caches, and the
        // continuous batcher), so it is loaded once per version, not per instance.
        let generator = match backend.name() {
            sluice_llm::backend::BACKEND => Some(sluice_llm::backend::start(&cfg, &files)?),
            _ => None,
        };
        let mut instances = match &generator {
            Some(g) => (0..n).map(|_| sluice_llm::backend::instance(g.clone())).collect(),
            None => (0..n).map(|i| backend.load(&cfg, &files, i)).collect::<Result<Vec<_>, _>>()?,
        };
        let report = crate::warmup::run(&cfg, &samples, &mut instances)?;
        Ok::<_, ServeError>((instances, report, text, labels, generator))
    })
    .await
    .map_err(|e| ServeError::Internal(format!("model load panicked: {e}")))??;
    // Tokenized inputs batch raggedly: each batch is padded to its longest sequence.
    let config = match &text {
        Some(t) => Arc::new(t.runner_config(&config)),
        None => config,
    };
    if warmup.samples > 0 {
        tracing::info!(
            model = %config.name,
            version,
            samples = warmup.samples,
            executions = warmup.executions,
            ms = warmup.took.as_secs_f64() * 1e3,
            "warmup done"
        );
    }
    let label = format!("{}:{version}", config.name);
    let runner = ModelRunner::start(label, &config, instances, limits, Arc::new(ModelStats::default()))?;
    Ok(Arc::new(ServedVersion {
        name: config.name.clone(),
        version,
        config,
        runner,
        warmup,
        text: text.map(Arc::new),
        labels,
        generator,
    }))
}

/// Writes files sent inline with a load request into a fresh directory, refusing paths that
/// would leave it.
fn write_inline_files(name: &str, seq: u64, files: &BTreeMap<String, Vec<u8>>) -> Result<PathBuf, ServeError> {
    let dir = std::env::temp_dir().join(format!("sluice-inline-{}-{name}-{seq}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (rel, bytes) in files {
        let p = Path::new(rel);
        if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(ServeError::invalid(format!(
                "inline model file 'file:{rel}' must be a relative path inside the model"
            )));
        }
        let target = dir.join(p);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ServeError::Internal(format!("cannot write {}: {e}", parent.display())))?;
        }
        std::fs::write(&target, bytes)
            .map_err(|e| ServeError::Internal(format!("cannot write {}: {e}", target.display())))?;
    }
    Ok(dir)
}
