//! The engine façade: what every edge holds. It resolves a served name to the [`Endpoint`] that
//! answers it, and does what concerns the server as a whole (health, the repository API,
//! statistics of everything).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_repository::{LoadOverride, ModelRepository, ServedVersion};
use sluice_types::api::{IndexEntry, ModelStatistics, ServerMetadata};
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

pub struct Engine {
    repo: ModelRepository,
    draining: AtomicBool,
}

impl Engine {
    pub fn new(repo: ModelRepository) -> Arc<Engine> {
        Arc::new(Engine { repo, draining: AtomicBool::new(false) })
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
        self.repo.is_known(model)
    }

    /// Statistics of one version, of every ready version of a model, or of everything.
    pub fn statistics(&self, model: Option<&str>, version: Option<&str>) -> Result<Vec<ModelStatistics>, ServeError> {
        let versions: Vec<Arc<ServedVersion>> =
            match (model.filter(|m| !m.is_empty()), version.filter(|v| !v.is_empty())) {
                (None, _) => self.repo.all_ready(),
                (Some(m), Some(v)) => return Ok(self.resolve(m, Some(v))?.statistics()),
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

    pub fn repository_index(&self, ready_only: bool) -> Vec<IndexEntry> {
        self.repo.index(ready_only)
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
        names
    }
}

impl Engine {
    /// The endpoint serving `name` (at `version`, when given): the one step between an edge and
    /// whatever answers. Triton's errors: an unknown or unloaded name is NOT_FOUND, a loading
    /// one UNAVAILABLE.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError> {
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
