//! Where a model version is put together, in one place. The backend loads the version's
//! instances and whatever they share (a generative model's engine); warmup runs on each
//! instance; then the text step (server-side tokenization), the classification labels and the
//! scheduler that batches requests onto the instances make the [`ServedVersion`] that the
//! version's endpoint serves. The repository calls this through [`sluice_repository::Assemble`]
//! and knows none of these parts.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use sluice_backend::{Backend, ModelFiles};
use sluice_scheduler::{ModelRunner, ModelStats, QueueLimits};
use sluice_types::{ModelConfig, ServeError};

use crate::warmup;

/// A version that takes requests.
pub struct ServedVersion {
    pub name: String,
    pub version: u64,
    pub config: Arc<ModelConfig>,
    pub runner: ModelRunner,
    /// What `model_warmup` ran before this version took traffic (not in its statistics).
    pub warmup: warmup::WarmupReport,
    /// The text step, when the config declares one (`text_input`).
    pub text: Option<Arc<sluice_text::TextInput>>,
    /// Class labels per output (`label_filename`, else the model directory's `labels.txt`).
    pub labels: BTreeMap<String, Vec<String>>,
    /// Generative models (`candle` backend): the engine that streams their tokens. Their
    /// instances call it too, so that plain infer requests and jobs work unchanged.
    pub generator: Option<Arc<sluice_llm::Generator>>,
}

impl ServedVersion {
    pub fn stats(&self) -> &Arc<ModelStats> {
        self.runner.stats()
    }
}

impl sluice_repository::Version for ServedVersion {
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.runner.shutdown())
    }
}

/// The repository of this server: versions assembled by [`Assembler`].
pub type Repository = sluice_repository::ModelRepository<ServedVersion>;

/// Assembles versions for the repository.
pub struct Assembler {
    /// How much a version may hold queued before it answers "queue full".
    pub queue_limits: QueueLimits,
}

impl sluice_repository::Assemble<ServedVersion> for Assembler {
    /// The scheduler's own parameters (adaptive batching), which the repository cannot read.
    fn check(&self, config: &ModelConfig) -> Result<(), String> {
        match &config.dynamic_batching {
            Some(db) => sluice_scheduler::adaptive::validate(db),
            None => Ok(()),
        }
    }

    fn assemble(
        &self,
        backend: Arc<dyn Backend>,
        config: Arc<ModelConfig>,
        files: ModelFiles,
        version: u64,
    ) -> BoxFuture<'static, Result<Arc<ServedVersion>, ServeError>> {
        Box::pin(start_version(backend, config, files, version, self.queue_limits))
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
        let mut labels = BTreeMap::new();
        for o in &cfg.output {
            if let Some(l) = sluice_text::labels_for(&cfg, &o.name, &files.model_dir)? {
                labels.insert(o.name.clone(), l);
            }
        }
        let samples = warmup::build_samples(&cfg, &files.model_dir)?;
        // A PRIORITY_MIN model loads on a lowered thread, so that the compute threads its
        // runtime starts run lowered too.
        let (instances, report, generator) = sluice_backend::priority::with_config_priority(&cfg, || {
            let loaded = backend.load_version(&cfg, &files, n)?;
            // What the instances share, for the endpoints that use it directly: a generative
            // model's engine streams tokens to generate and the OpenAI routes.
            let generator = loaded.shared.and_then(|s| s.downcast::<sluice_llm::Generator>().ok());
            let mut instances = loaded.instances;
            let report = warmup::run(&cfg, &samples, &mut instances)?;
            Ok::<_, ServeError>((instances, report, generator))
        })?;
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
