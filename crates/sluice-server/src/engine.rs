//! The engine façade: what both edges call. It resolves the model version, validates the
//! request against its config, queues it on the version's runner and shapes the answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sluice_repository::{LoadOverride, ModelRepository, ServedVersion};
use sluice_scheduler::validate::{reshape_inputs, reshape_outputs};
use sluice_scheduler::{validate_request, Submission};
use sluice_types::api::{IndexEntry, ModelMetadata, ModelStatistics, ServerMetadata, TensorMetadata};
use sluice_types::{InferRequest, InferResponse, InferService, ModelConfig, ServeError, Timings};

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

/// An answer and where its time went.
pub struct Answer {
    pub response: InferResponse,
    pub timings: Timings,
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

    pub fn model_metadata(&self, model: &str, version: Option<&str>) -> Result<ModelMetadata, ServeError> {
        let served = self.repo.get(model, version)?;
        let c = &served.config;
        let meta = |ts: &[sluice_types::config::TensorConfig]| {
            ts.iter()
                .map(|t| TensorMetadata {
                    name: t.name.clone(),
                    datatype: t.datatype().map(|d| d.as_str().to_string()).unwrap_or_else(|| t.data_type.clone()),
                    shape: c.full_shape(t),
                })
                .collect()
        };
        // A model with a text step takes text, not token ids.
        let inputs = match &served.text {
            Some(t) => meta(&[t.public_input()]),
            None => meta(&c.input),
        };
        Ok(ModelMetadata {
            name: model.to_string(),
            versions: self.repo.ready_versions(model).iter().map(|s| s.version.to_string()).collect(),
            platform: if c.platform.is_empty() { c.backend.clone() } else { c.platform.clone() },
            inputs,
            outputs: meta(&c.output),
        })
    }

    pub fn model_ready(&self, model: &str, version: Option<&str>) -> bool {
        self.repo.get(model, version).is_ok()
    }

    /// True for a model in a repository or in the served table, whether ready or not.
    pub fn model_known(&self, model: &str) -> bool {
        self.repo.is_known(model)
    }

    pub fn model_config(&self, model: &str, version: Option<&str>) -> Result<Arc<ModelConfig>, ServeError> {
        Ok(self.repo.get(model, version)?.config.clone())
    }

    /// Statistics of one version, of every ready version of a model, or of everything.
    pub fn statistics(&self, model: Option<&str>, version: Option<&str>) -> Result<Vec<ModelStatistics>, ServeError> {
        let versions: Vec<Arc<ServedVersion>> =
            match (model.filter(|m| !m.is_empty()), version.filter(|v| !v.is_empty())) {
                (None, _) => self.repo.all_ready(),
                (Some(m), Some(v)) => vec![self.repo.get(m, Some(v))?],
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

    /// Checks a request against its model before it is queued as a job: an unknown model or
    /// inputs that do not fit are refused now, not when a worker gets to them. A model that is
    /// known but not ready (loading) is accepted unchecked.
    pub fn check_request(&self, req: &InferRequest) -> Result<(), ServeError> {
        match self.repo.get(&req.model, req.version.as_deref()) {
            Ok(served) => match &served.text {
                Some(text) => {
                    let mut tokenized = req.clone();
                    text.apply(&mut tokenized, served.config.max_batch_size > 0)?;
                    validate_request(&served.config, &tokenized).map(|_| ())
                }
                None => validate_request(&served.config, req).map(|_| ()),
            },
            Err(ServeError::Unavailable(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Names of the models that are ready now.
    pub fn ready_models(&self) -> Vec<String> {
        // From the served table only: workers ask for every job they claim.
        let mut names: Vec<String> = self.repo.all_ready().iter().map(|s| s.name.clone()).collect();
        names.dedup();
        names
    }

    /// Runs one inference request and records its outcome in the version's statistics.
    ///
    /// A reload can replace the version between the lookup and the queueing: the old version's
    /// runner is then closed (it still finishes what it had queued). Such a request is looked up
    /// again and run once more on the version now served, so that a reload answers no request
    /// with an error. A request that names a version that is gone gets the error.
    pub async fn infer_timed(&self, mut req: InferRequest) -> Result<Answer, ServeError> {
        let start = Instant::now();
        let mut served = self.repo.get(&req.model, req.version.as_deref())?;
        // Cheap: tensor data is reference-counted.
        let inputs = req.inputs.clone();
        let mut result = self.run(&served, &mut req).await;
        if matches!(result, Err(ServeError::Unavailable(_))) && served.runner.is_closed() {
            if let Ok(next) = self.repo.get(&req.model, req.version.as_deref()) {
                if !Arc::ptr_eq(&next, &served) {
                    tracing::debug!(model = %req.model, from = served.version, to = next.version, "version replaced: retrying");
                    req.inputs = inputs;
                    served = next;
                    result = self.run(&served, &mut req).await;
                }
            }
        }
        let ns = start.elapsed().as_nanos() as u64;
        match &result {
            Ok(_) => served.stats().record_success(ns),
            Err(e) => served.stats().record_failure(ns, e),
        }
        result
    }

    async fn run(&self, served: &ServedVersion, req: &mut InferRequest) -> Result<Answer, ServeError> {
        let config = &served.config;
        if let Some(text) = &served.text {
            text.apply(req, config.max_batch_size > 0)?;
        }
        if served.generator.is_some() {
            sluice_llm::backend::fold_parameters(&mut req.inputs, &req.parameters)?;
        }
        let batch = validate_request(config, req)?;
        let mut inputs = std::mem::take(&mut req.inputs);
        reshape_inputs(config, &mut inputs);
        let wanted: Vec<String> = req.outputs.iter().map(|o| o.name.clone()).collect();
        let priority = match req.parameters.get("priority") {
            None => None,
            Some(_) => {
                Some(req.int_parameter("priority").and_then(|p| u64::try_from(p).ok()).ok_or_else(|| {
                    ServeError::invalid("request parameter 'priority' must be a non-negative integer")
                })?)
            }
        };
        let timeout = match req.parameters.get("timeout") {
            None => None,
            Some(_) => Some(req.int_parameter("timeout").and_then(|t| u64::try_from(t).ok()).ok_or_else(|| {
                ServeError::invalid("request parameter 'timeout' must be a non-negative integer (microseconds)")
            })?),
        };
        let executed = served
            .runner
            .submit(Submission {
                inputs,
                outputs: wanted.clone(),
                batch_size: batch,
                priority,
                timeout: timeout.map(std::time::Duration::from_micros),
            })
            .await?;
        let mut outputs = executed.outputs;
        reshape_outputs(config, &mut outputs);
        if !wanted.is_empty() {
            // Answer in the order the client asked for.
            outputs.sort_by_key(|t| wanted.iter().position(|w| *w == t.name).unwrap_or(usize::MAX));
            outputs.retain(|t| wanted.contains(&t.name));
        }
        classify_outputs(served, &req.outputs, &mut outputs)?;
        Ok(Answer {
            response: InferResponse {
                model_name: served.name.clone(),
                model_version: served.version.to_string(),
                id: req.id.take(),
                parameters: Default::default(),
                outputs,
            },
            timings: executed.timings,
        })
    }
}

/// Triton's `classification` output parameter: the requested outputs become their top-k
/// `"score:index:label"` strings.
fn classify_outputs(
    served: &ServedVersion,
    requested: &[sluice_types::RequestedOutput],
    outputs: &mut [sluice_types::Tensor],
) -> Result<(), ServeError> {
    for r in requested {
        let Some(v) = r.parameters.get("classification") else { continue };
        let k = match v {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|&k| k > 0)
        .ok_or_else(|| {
            ServeError::invalid(format!("output '{}': classification must be a positive integer, got {v}", r.name))
        })?;
        if let Some(t) = outputs.iter_mut().find(|t| t.name == r.name) {
            let labels = served.labels.get(&r.name).map(Vec::as_slice);
            *t = sluice_text::classify(t, k as usize, labels, served.config.max_batch_size > 0)?;
        }
    }
    Ok(())
}

#[async_trait]
impl InferService for Engine {
    async fn infer(&self, request: InferRequest) -> Result<InferResponse, ServeError> {
        Ok(self.infer_timed(request).await?.response)
    }
}
