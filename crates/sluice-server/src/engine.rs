//! The engine façade: what every edge holds. It resolves a served name to the [`Endpoint`] that
//! answers it, and does what concerns the server as a whole (health, the repository API,
//! statistics of everything).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;

use sluice_repository::{LoadOverride, ModelRepository, ServedVersion};
use sluice_types::api::{IndexEntry, ModelState, ModelStatistics, ServerMetadata};
use sluice_types::{Endpoint, Resolver, ServeError};

use crate::version::ModelVersionEndpoint;

/// The protocol extensions this server implements, as listed in server metadata.
pub const EXTENSIONS: &[&str] = &[
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "generate",
];

/// Endpoint name → the policy, or why its definition cannot be served.
type EndpointTable = BTreeMap<String, Result<Arc<dyn Endpoint>, String>>;

pub struct Engine {
    repo: ModelRepository,
    draining: AtomicBool,
    /// Endpoints declared by `endpoint.yaml` (policies over models), by name; a definition that
    /// failed to load keeps its reason.
    endpoints: RwLock<EndpointTable>,
    /// The engine itself, as the resolver its policies call back into (held weakly by them).
    me: Weak<Engine>,
}

impl Engine {
    pub fn new(repo: ModelRepository) -> Arc<Engine> {
        Arc::new_cyclic(|me| Engine {
            repo,
            draining: AtomicBool::new(false),
            endpoints: RwLock::new(BTreeMap::new()),
            me: me.clone(),
        })
    }

    /// Reads every `endpoint.yaml` of the repositories and serves the policies they declare. A
    /// definition that does not parse, refers to itself through other endpoints, or is of a
    /// kind not served yet is listed as unavailable with the reason.
    pub fn load_endpoints(&self) {
        let found = sluice_repository::scan_endpoints(&self.repo.options().roots);
        let mut defs = BTreeMap::new();
        let mut table = EndpointTable::new();
        for (name, file) in found {
            let shown = format!("{name}/{}", sluice_repository::ENDPOINT_FILE);
            let parsed = std::fs::read_to_string(&file)
                .map_err(|e| format!("{shown}: cannot read: {e}"))
                .and_then(|text| sluice_traffic::definition::parse(&shown, &text));
            match parsed {
                Ok(d) => {
                    defs.insert(name, d);
                }
                Err(e) => {
                    table.insert(name, Err(e));
                }
            }
        }
        for (name, def) in &defs {
            if let Some(cycle) = cycle_from(name, &defs) {
                table.insert(
                    name.clone(),
                    Err(format!("{name}/endpoint.yaml: endpoints call each other in a cycle: {cycle}")),
                );
                continue;
            }
            let resolver: Weak<dyn Resolver> = self.me.clone();
            let policy = sluice_traffic::policy::Policy::new(name, def.clone(), resolver)
                .map(|p| Arc::new(p) as Arc<dyn Endpoint>)
                .map_err(|e| e.to_string());
            table.insert(name.clone(), policy);
        }
        for (name, e) in &table {
            match e {
                Ok(_) => tracing::info!(endpoint = %name, "endpoint ready"),
                Err(why) => tracing::error!(endpoint = %name, error = %why, "endpoint failed to load"),
            }
        }
        *self.endpoints.write() = table;
    }

    pub fn repository(&self) -> &ModelRepository {
        &self.repo
    }

    pub fn live(&self) -> bool {
        true
    }

    /// Ready: every model required at start is ready and the server is not draining.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.repo.required_ready()
    }

    /// Readiness goes false; requests in flight still finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn metadata(&self) -> ServerMetadata {
        ServerMetadata {
            name: "sluice".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// True for a model in a repository or in the served table, whether ready or not.
    pub fn model_known(&self, model: &str) -> bool {
        self.endpoints.read().contains_key(model) || self.repo.is_known(model)
    }

    /// Statistics of one version, of every ready version of a model, or of everything.
    pub fn statistics(&self, model: Option<&str>, version: Option<&str>) -> Result<Vec<ModelStatistics>, ServeError> {
        let versions: Vec<Arc<ServedVersion>> =
            match (model.filter(|m| !m.is_empty()), version.filter(|v| !v.is_empty())) {
                (None, _) => self.repo.all_ready(),
                (Some(m), Some(v)) => return Ok(self.resolve(m, Some(v))?.statistics()),
                // An endpoint: the statistics of the model versions behind it.
                (Some(m), None) if self.endpoints.read().contains_key(m) => {
                    return Ok(self.resolve(m, None)?.statistics())
                }
                (Some(m), None) => {
                    let v = self.repo.ready_versions(m);
                    if v.is_empty() {
                        self.repo.get(m, None)?;
                    }
                    v
                }
            };
        Ok(versions.iter().map(|s| s.stats().snapshot(&s.name, &s.version.to_string())).collect())
    }

    /// Models and endpoints, by name (an endpoint has no versions).
    pub fn repository_index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut index = self.repo.index(ready_only);
        for (name, e) in self.endpoints.read().iter() {
            let (state, reason) = match e {
                Ok(e) if e.ready() => (ModelState::Ready, String::new()),
                Ok(_) => (ModelState::Unavailable, "a target is not ready".to_string()),
                Err(why) => (ModelState::Unavailable, why.clone()),
            };
            if !ready_only || state == ModelState::Ready {
                index.push(IndexEntry { name: name.clone(), version: String::new(), state, reason });
            }
        }
        index.sort_by(|a, b| a.name.cmp(&b.name));
        index
    }

    pub async fn load_model(&self, name: &str, ov: Option<LoadOverride>) -> Result<(), ServeError> {
        self.repo.load(name, ov).await
    }

    /// `unload_dependents` is accepted for compatibility; no model depends on another yet.
    pub async fn unload_model(&self, name: &str, _unload_dependents: bool) -> Result<(), ServeError> {
        self.repo.unload(name).await
    }

    /// Names of the models that are ready now.
    pub fn ready_models(&self) -> Vec<String> {
        // From the served table only: workers ask for every job they claim.
        let mut names: Vec<String> = self.repo.all_ready().iter().map(|s| s.name.clone()).collect();
        names.dedup();
        names.extend(
            self.endpoints.read().iter().filter(|(_, e)| e.as_ref().is_ok_and(|e| e.ready())).map(|(n, _)| n.clone()),
        );
        names
    }
}

impl Engine {
    /// The endpoint serving `name` (at `version`, when given): the one step between an edge and
    /// whatever answers. Triton's errors: an unknown or unloaded name is NOT_FOUND, a loading
    /// one UNAVAILABLE.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError> {
        if let Some(e) = self.endpoints.read().get(name) {
            return match (e, version.filter(|v| !v.is_empty())) {
                (Ok(e), None) => Ok(e.clone()),
                (Ok(_), Some(v)) => Err(ServeError::model_not_found(name, Some(v))),
                (Err(why), _) => Err(ServeError::NotFound(format!(
                    "Request for unknown model: '{name}' has no available versions ({why})"
                ))),
            };
        }
        let served = self.repo.get(name, version)?;
        Ok(Arc::new(ModelVersionEndpoint::new(self.repo.clone(), version, served)))
    }
}

impl Engine {
    /// Names and versions of the ready generative models (OpenAI's `/v1/models`).
    pub fn generative_models(&self) -> Vec<(String, u64)> {
        self.repo.all_ready().iter().filter(|s| s.generator.is_some()).map(|s| (s.name.clone(), s.version)).collect()
    }
}

impl Resolver for Engine {
    fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError> {
        Engine::resolve(self, name, version)
    }
}

/// The chain of endpoint names that leads from `start` back to itself, if any.
fn cycle_from(start: &str, defs: &BTreeMap<String, sluice_traffic::definition::Definition>) -> Option<String> {
    fn walk<'a>(
        at: &'a str,
        start: &str,
        defs: &'a BTreeMap<String, sluice_traffic::definition::Definition>,
        path: &mut Vec<&'a str>,
    ) -> bool {
        let Some(def) = defs.get(at) else { return false };
        for t in def.targets() {
            let next = match t {
                sluice_traffic::definition::Target::Endpoint(n) => n.as_str(),
                // A model target named like an endpoint resolves to the endpoint too.
                sluice_traffic::definition::Target::Model { name, version: None } => name.as_str(),
                sluice_traffic::definition::Target::Model { .. } => continue,
            };
            if next == start {
                path.push(next);
                return true;
            }
            if path.contains(&next) {
                continue;
            }
            path.push(next);
            if walk(next, start, defs, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![start];
    walk(start, start, defs, &mut path).then(|| path.join(" -> "))
}
