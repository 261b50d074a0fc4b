//! Model execution engines behind one pair of traits: a [`Backend`] completes configs and
//! loads a version's [`ModelInstance`]s with whatever they share ([`LoadedVersion`]); an instance executes one batch at a time on the dedicated thread
//! that owns it (never a tokio worker). Each engine lives in its own module behind a feature:
//! `onnx` (ONNX Runtime through `ort`).

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_types::{ModelConfig, ServeError, Tensor};

#[cfg(feature = "onnx")]
pub mod onnx;
pub mod priority;

/// What one execution produced, and where its time went.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub outputs: Vec<Tensor>,
    pub compute_input_ns: u64,
    pub compute_infer_ns: u64,
    pub compute_output_ns: u64,
}

/// One loaded copy of a model, owned by one execution thread.
pub trait ModelInstance: Send {
    /// Runs the model on `inputs` (already validated against the config, batch dimension
    /// included when the model batches) and returns the outputs named in `outputs`
    /// (every output when empty).
    fn execute(&mut self, inputs: Vec<Tensor>, outputs: &[String]) -> Result<ExecOutput, ServeError>;
}

/// Where a version's files are and what it is loaded as.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// `<repo>/<model>`.
    pub model_dir: PathBuf,
    /// `<repo>/<model>/<version>`.
    pub version_dir: PathBuf,
    /// The model file (or directory) inside the version directory.
    pub model_path: PathBuf,
}

/// A version as its backend loaded it: its instances, and what they share.
pub struct LoadedVersion {
    pub instances: Vec<Box<dyn ModelInstance>>,
    /// State the instances share (one per version, not per instance), for the server to use
    /// directly too: the candle backend's generator, which streams tokens.
    pub shared: Option<Arc<dyn Any + Send + Sync>>,
}

/// An execution engine.
pub trait Backend: Send + Sync {
    /// The backend name as in a config's `backend` field (`onnxruntime`).
    fn name(&self) -> &'static str;

    /// Whether this backend serves a config with this platform/backend, or, when neither is
    /// set, a version directory holding this file name.
    fn accepts(&self, config: &ModelConfig, version_dir: &Path) -> bool;

    /// The default model file name inside a version directory (`model.onnx`).
    fn default_filename(&self) -> &'static str;

    /// Fills what the config leaves out (inputs, outputs, max_batch_size, platform) from the
    /// model file itself, as Triton's auto-complete does, and checks what it states.
    fn auto_complete(&self, config: &mut ModelConfig, files: &ModelFiles) -> Result<(), ServeError>;

    /// Loads instance number `index` of a version.
    fn load(
        &self,
        config: &ModelConfig,
        files: &ModelFiles,
        index: usize,
    ) -> Result<Box<dyn ModelInstance>, ServeError>;

    /// Loads a version: its `count` instances and what they share. By default each instance
    /// is loaded on its own and nothing is shared.
    fn load_version(
        &self,
        config: &ModelConfig,
        files: &ModelFiles,
        count: usize,
    ) -> Result<LoadedVersion, ServeError> {
        let instances = (0..count).map(|i| self.load(config, files, i)).collect::<Result<Vec<_>, _>>()?;
        Ok(LoadedVersion { instances, shared: None })
    }
}

/// For [`Backend::accepts`]: a config that names no platform or backend is served by the
/// backend whose model file (`default_model_filename`, else `default`) the version directory
/// holds, recognised by its `extension` (another backend's file name is not ours).
pub fn holds_model_file(config: &ModelConfig, version_dir: &Path, default: &str, extension: &str) -> bool {
    if !config.platform.is_empty() || !config.backend.is_empty() {
        return false;
    }
    let file = if config.default_model_filename.is_empty() { default } else { config.default_model_filename.as_str() };
    file.ends_with(extension) && version_dir.join(file).exists()
}

/// The backends compiled into this binary.
#[derive(Clone, Default)]
pub struct BackendRegistry {
    backends: Vec<Arc<dyn Backend>>,
}

impl BackendRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, backend: Arc<dyn Backend>) {
        self.backends.push(backend);
    }

    /// The backend for a model version, or a message saying why there is none.
    pub fn find(&self, config: &ModelConfig, version_dir: &Path) -> Result<Arc<dyn Backend>, ServeError> {
        self.backends.iter().find(|b| b.accepts(config, version_dir)).cloned().ok_or_else(|| {
            ServeError::Unsupported(format!(
                "no backend for platform '{}' / backend '{}' (this server has: {})",
                config.platform,
                config.backend,
                self.backends.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
            ))
        })
    }
}
