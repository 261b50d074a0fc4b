//! The engine façade: what every edge holds. It resolves a served name to the [`Endpoint`] that
//! answers it, and does what concerns the server as a whole (health, the repository API,
//! statistics of everything).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use sluice_repository::LoadOverride;

use crate::assemble::{Repository, ServedVersion};
use sluice_traffic::BuildOptions;
use sluice_types::api::{IndexEntry, ModelState, ModelStatistics, ServerMetadata};
use sluice_types::{Endpoint, Resolver, ServeError};

use crate::endpoints::EndpointTable;
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

pub struct Engine {
    repo: Repository,
    draining: AtomicBool,
    /// Endpoints declared by `endpoint.yaml` (policies over models), by name; a definition that
    /// failed to load keeps its reason.
    pub(crate) endpoints: RwLock<EndpointTable>,
    /// Endpoint loads, one at a time.
    pub(crate) endpoint_loads: Mutex<()>,
    /// How shadow endpoints queue and log their copies, and where rollouts keep their state.
    pub(crate) traffic: BuildOptions,
    /// The engine itself, as the resolver its policies call back into (held weakly by them).
    pub(crate) me: Weak<Engine>,
}

impl Engine {
    pub fn new(repo: Repository, traffic: BuildOptions) -> Arc<Engine> {
        Arc::new_cyclic(|me| Engine {
            repo,
            draining: AtomicBool::new(false),
            endpoints: RwLock::new(EndpointTable::new()),
            endpoint_loads: Mutex::new(()),
            traffic,
            me: me.clone(),
        })
    }

    pub fn repository(&self) -> &Repository {
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
        self.endpoints.read().contains_key(model) || self.repo.is_known(model) || self.endpoint_dir(model).is_some()
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
        let mut out: Vec<ModelStatistics> =
            versions.iter().map(|s| s.stats().snapshot(&s.name, &s.version.to_string())).collect();
        if model.filter(|m| !m.is_empty()).is_none() {
            // Ensembles count their own requests too.
            let served: Vec<Arc<dyn Endpoint>> =
                self.endpoints.read().values().filter_map(|d| d.served.as_ref().ok().cloned()).collect();
            for e in served {
                out.extend(e.statistics().into_iter().filter(|s| s.name == e.name()));
            }
        }
        Ok(out)
    }

    /// Models and endpoints, by name (an endpoint has no versions).
    pub fn repository_index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut index = self.repo.index(ready_only);
        for (name, d) in self.endpoints.read().iter() {
            let (state, reason) = match &d.served {
                Ok(e) if e.ready() => (ModelState::Ready, String::new()),
                Ok(_) => (ModelState::Unavailable, "a target is not ready".to_string()),
                Err(why) => (ModelState::Unavailable, why.clone()),
            };
            // An ensemble is listed with its version, as Triton lists it; a policy has none.
            let version = match &d.served {
                Ok(e) if e.config().platform == "ensemble" => e.metadata().versions.pop().unwrap_or_default(),
                Ok(_) | Err(_) => String::new(),
            };
            if !ready_only || state == ModelState::Ready {
                index.push(IndexEntry { name: name.clone(), version, state, reason });
            }
        }
        index.sort_by(|a, b| a.name.cmp(&b.name));
        index
    }

    /// Loads or reloads a model, or an endpoint (a directory with an `endpoint.yaml`).
    pub async fn load_model(&self, name: &str, ov: Option<LoadOverride>) -> Result<(), ServeError> {
        if let Some(file) = self.endpoint_dir(name) {
            if ov.is_some() {
                return Err(ServeError::invalid(format!(
                    "'{name}' is an endpoint or ensemble: it is loaded from its repository directory, not from a \
                     config or files sent with the request"
                )));
            }
            self.load_targets_of(name, &file).await;
            return self.load_endpoint(name);
        }
        self.repo.load(name, ov).await
    }

    /// Unloads a model or an endpoint; with `unload_dependents`, the endpoints and ensembles that
    /// send traffic to the model stop serving too.
    pub async fn unload_model(&self, name: &str, unload_dependents: bool) -> Result<(), ServeError> {
        if self.unload_endpoint(name) {
            return Ok(());
        }
        self.repo.unload(name).await?;
        if unload_dependents {
            self.unload_dependents_of(name);
        }
        Ok(())
    }

    /// Names of the models that are ready now.
    pub fn ready_models(&self) -> Vec<String> {
        // From the served table only: workers ask for every job they claim.
        let mut names: Vec<String> = self.repo.all_ready().iter().map(|s| s.name.clone()).collect();
        names.dedup();
        names.extend(
            self.endpoints
                .read()
                .iter()
                .filter(|(_, d)| d.served.as_ref().is_ok_and(|e| e.ready()))
                .map(|(n, _)| n.clone()),
        );
        names
    }
}

impl Engine {
    /// The endpoint serving `name` (at `version`, when given): the one step between an edge and
    /// whatever answers. Triton's errors: an unknown or unloaded name is NOT_FOUND, a loading
    /// one UNAVAILABLE.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError> {
        if let Some(d) = self.endpoints.read().get(name) {
            return match (&d.served, version.filter(|v| !v.is_empty())) {
                (Ok(e), None) => Ok(e.clone()),
                // An ensemble is served as the versions of its directory (Triton: `1/`).
                (Ok(e), Some(v)) if e.metadata().versions.iter().any(|x| x == v) => Ok(e.clone()),
                (Ok(_), Some(v)) => Err(ServeError::model_not_found(name, Some(v))),
                (Err(why), _) => Err(ServeError::NotFound(format!(
                    "Request for unknown model: '{name}' has no available versions ({why})"
                ))),
            };
        }
        self.resolve_model(name, version)
    }

    /// A model version, never an endpoint of the same name.
    pub(crate) fn resolve_model(&self, name: &str, version: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError> {
        let served = self.repo.get(name, version)?;
        Ok(Arc::new(ModelVersionEndpoint::new(self.repo.clone(), version, served)))
    }

    /// The endpoints declared in the repositories: name, and the policy's report or why it is
    /// not served.
    pub fn endpoint_reports(&self) -> Vec<(String, Result<serde_json::Value, String>)> {
        let table: Vec<(String, crate::endpoints::Served)> =
            self.endpoints.read().iter().map(|(n, d)| (n.clone(), d.served.clone())).collect();
        table
            .into_iter()
            .map(|(n, e)| {
                let report = e.map(|e| e.traffic_report().unwrap_or(serde_json::Value::Null));
                (n, report)
            })
            .collect()
    }

    /// Hands an outcome to the experiment or rollout it belongs to: the one that answered its
    /// request id, or, for a unit, every experiment with its metric. `NotFound` when none takes
    /// it.
    pub async fn feedback(&self, fb: &sluice_types::Feedback) -> Result<serde_json::Value, ServeError> {
        if fb.request_id.is_some() == fb.unit.is_some() {
            return Err(ServeError::invalid("feedback names one of 'request_id' or 'unit'".to_string()));
        }
        let served: Vec<Arc<dyn Endpoint>> =
            self.endpoints.read().values().filter_map(|d| d.served.as_ref().ok().cloned()).collect();
        let mut taken = Vec::new();
        for e in &served {
            let result = match (e.experiment(), e.rollout()) {
                (Some(x), _) => x.feedback(fb).await,
                (None, Some(r)) => r.feedback(fb).await,
                (None, None) => None,
            };
            if let Some(result) = result {
                taken.push(result?);
            }
        }
        match (taken.len(), &fb.request_id) {
            (0, Some(id)) => Err(ServeError::NotFound(format!(
                "no experiment or rollout answered request id '{id}' (or it is older than the attribution window)"
            ))),
            (0, None) => Err(ServeError::NotFound(format!(
                "no experiment with a metric named '{}' has seen unit '{}'",
                fb.metric,
                fb.unit.as_deref().unwrap_or_default()
            ))),
            (1, _) => Ok(taken.remove(0)),
            _ => Ok(serde_json::Value::Array(taken)),
        }
    }

    /// Every served endpoint's counters, for `/metrics`.
    pub fn traffic_counters(&self) -> Vec<sluice_types::TrafficCounter> {
        let served: Vec<Arc<dyn Endpoint>> =
            self.endpoints.read().values().filter_map(|d| d.served.as_ref().ok().cloned()).collect();
        served.iter().flat_map(|e| e.counters()).collect()
    }
}

impl Engine {
    /// Names of the ready generative models and of the endpoints over them (OpenAI's
    /// `/v1/models`).
    pub fn generative_models(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.repo.all_ready().iter().filter(|s| s.generator.is_some()).map(|s| s.name.clone()).collect();
        names.dedup();
        let served: Vec<Arc<dyn Endpoint>> =
            self.endpoints.read().values().filter_map(|d| d.served.as_ref().ok().cloned()).collect();
        names.extend(served.iter().filter(|e| e.ready() && e.generative()).map(|e| e.name().to_string()));
        names
    }
}

impl Resolver for Engine {
    fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError> {
        Engine::resolve(self, name, version)
    }
}
