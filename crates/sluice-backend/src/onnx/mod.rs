//! The ONNX Runtime backend (`platform: onnxruntime_onnx`, `backend: onnxruntime`), through
//! `ort` with the library loaded at run time: call [`find_library`] and [`init_runtime`] at
//! startup (the backend falls back to `find_library(None)` on first use otherwise).
//!
//! Each instance owns one ORT session, run by the one thread that owns the instance.

mod complete;
mod convert;
mod runtime;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::DynValue;
use sluice_types::{DataType, ModelConfig, ServeError, Tensor};

use crate::{Backend, ExecOutput, ModelFiles, ModelInstance};

pub use complete::{
    complete_config, datatype_element, element_datatype, IoInfo, ModelIo, BACKEND, DEFAULT_MAX_BATCH_SIZE, PLATFORM,
};
pub use runtime::{find_library, init_runtime, runtime_library, ORT_VERSION};

/// The default model file name in a version directory.
pub const DEFAULT_FILENAME: &str = "model.onnx";

/// Config parameter overriding the intra-op thread count of a model's sessions.
pub const INTRA_OP_THREADS_PARAM: &str = "intra_op_thread_count";
/// Config parameter overriding the inter-op thread count (default 1).
pub const INTER_OP_THREADS_PARAM: &str = "inter_op_thread_count";

/// Serves `.onnx` models with ONNX Runtime.
#[derive(Clone, Debug, Default)]
pub struct OnnxBackend {
    /// Intra-op threads per session when the config does not set `intra_op_thread_count`;
    /// 0 lets ONNX Runtime choose (one per physical core).
    intra_op_threads: usize,
}

impl OnnxBackend {
    pub fn new(intra_op_threads: usize) -> Self {
        OnnxBackend { intra_op_threads }
    }

    /// Reads a model's inputs and outputs (a session with one thread and no graph optimization).
    pub fn model_io(&self, model_file: &Path) -> Result<ModelIo, ServeError> {
        let session = open_session(model_file, 1, 1, GraphOptimizationLevel::Disable)?;
        Ok(ModelIo::from_session(&session))
    }
}

/// A version's `model.onnx` may also be a directory holding `model.onnx` (and external data),
/// as Triton allows.
fn model_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(DEFAULT_FILENAME)
    } else {
        path.to_path_buf()
    }
}

fn open_session(path: &Path, intra: usize, inter: usize, level: GraphOptimizationLevel) -> Result<Session, ServeError> {
    let env = runtime::environment()?;
    let file = model_file(path);
    if !file.is_file() {
        return Err(ServeError::NotFound(format!("model file {} does not exist", file.display())));
    }
    let fail = |what: &str, e: String| {
        ServeError::Unavailable(format!("cannot load {} with ONNX Runtime: {what}: {e}", file.display()))
    };
    Session::builder(env)
        .map_err(|e| fail("session options", e.to_string()))?
        .with_intra_threads(intra)
        .map_err(|e| fail("intra-op threads", e.to_string()))?
        .with_inter_threads(inter)
        .map_err(|e| fail("inter-op threads", e.to_string()))?
        .with_optimization_level(level)
        .map_err(|e| fail("optimization level", e.to_string()))?
        .commit_from_file(&file)
        .map_err(|e| fail("session", e.to_string()))
}

fn thread_param(config: &ModelConfig, key: &str) -> Result<Option<usize>, ServeError> {
    match config.parameter(key) {
        None => Ok(None),
        Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
            ServeError::InvalidArgument(format!(
                "model '{}': parameter {key} must be a non-negative integer, got '{v}'",
                config.name
            ))
        }),
    }
}

impl Backend for OnnxBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn accepts(&self, config: &ModelConfig, version_dir: &Path) -> bool {
        config.platform == PLATFORM
            || config.backend == BACKEND
            || crate::holds_model_file(config, version_dir, DEFAULT_FILENAME, ".onnx")
    }

    fn default_filename(&self) -> &'static str {
        DEFAULT_FILENAME
    }

    fn auto_complete(&self, config: &mut ModelConfig, files: &ModelFiles) -> Result<(), ServeError> {
        let io = self.model_io(&files.model_path)?;
        complete_config(config, &io)
    }

    fn load(
        &self,
        config: &ModelConfig,
        files: &ModelFiles,
        index: usize,
    ) -> Result<Box<dyn ModelInstance>, ServeError> {
        let intra = thread_param(config, INTRA_OP_THREADS_PARAM)?.unwrap_or(self.intra_op_threads);
        let inter = thread_param(config, INTER_OP_THREADS_PARAM)?.unwrap_or(1);
        let started = Instant::now();
        let session = open_session(&files.model_path, intra, inter, GraphOptimizationLevel::All)?;
        let io = ModelIo::from_session(&session);
        tracing::info!(
            model = %config.name,
            instance = index,
            intra_op_threads = intra,
            ms = started.elapsed().as_millis() as u64,
            "loaded ONNX Runtime session"
        );
        OnnxInstance::new(config, io, session).map(|i| Box::new(i) as Box<dyn ModelInstance>)
    }
}

struct InputSpec {
    name: String,
    datatype: DataType,
    /// May be left out of a request: the config marks it optional, or it is an overridable
    /// initializer.
    optional: bool,
}

struct OutputSpec {
    name: String,
    datatype: Result<DataType, String>,
}

/// One loaded session.
struct OnnxInstance {
    model: String,
    session: Session,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
    /// What an empty output list means: the outputs the config lists.
    default_outputs: Vec<String>,
}

impl OnnxInstance {
    fn new(config: &ModelConfig, io: ModelIo, session: Session) -> Result<Self, ServeError> {
        let optional_in_config = |name: &str| config.input.iter().any(|c| c.name == name && c.optional);
        let mut inputs = Vec::new();
        for (m, overridable) in io.inputs.iter().map(|m| (m, false)).chain(io.overridable.iter().map(|m| (m, true))) {
            let datatype = match &m.datatype {
                Ok(dt) => *dt,
                // An overridable initializer of an odd type is fine as long as nobody sends it.
                Err(_) if overridable => continue,
                Err(why) => {
                    return Err(ServeError::Unsupported(format!(
                        "model '{}': input '{}' is a {why}, which this server cannot send",
                        config.name, m.name
                    )))
                }
            };
            inputs.push(InputSpec {
                name: m.name.clone(),
                datatype,
                optional: overridable || optional_in_config(&m.name),
            });
        }
        let outputs: Vec<OutputSpec> =
            io.outputs.iter().map(|m| OutputSpec { name: m.name.clone(), datatype: m.datatype.clone() }).collect();
        let default_outputs = if config.output.is_empty() {
            outputs.iter().filter(|o| o.datatype.is_ok()).map(|o| o.name.clone()).collect()
        } else {
            config.output.iter().map(|c| c.name.clone()).collect()
        };
        Ok(OnnxInstance { model: config.name.clone(), session, inputs, outputs, default_outputs })
    }

    /// Checks names and datatypes and builds the ORT values.
    fn build_inputs(&self, inputs: &[Tensor]) -> Result<Vec<(String, DynValue)>, ServeError> {
        let mut seen = HashSet::with_capacity(inputs.len());
        let mut values = Vec::with_capacity(inputs.len());
        for t in inputs {
            let Some(spec) = self.inputs.iter().find(|s| s.name == t.name) else {
                return Err(ServeError::invalid(format!(
                    "unexpected inference input '{}' for model '{}'",
                    t.name, self.model
                )));
            };
            if !seen.insert(t.name.as_str()) {
                return Err(ServeError::invalid(format!("input '{}' is given more than once", t.name)));
            }
            if t.datatype != spec.datatype {
                return Err(ServeError::invalid(format!(
                    "input '{}': model '{}' expects {}, got {}",
                    t.name, self.model, spec.datatype, t.datatype
                )));
            }
            values.push((t.name.clone(), convert::to_value(&self.model, t)?));
        }
        if let Some(missing) = self.inputs.iter().find(|s| !s.optional && !seen.contains(s.name.as_str())) {
            return Err(ServeError::invalid(format!(
                "model '{}' expects input '{}' ({}), which the request does not have",
                self.model, missing.name, missing.datatype
            )));
        }
        Ok(values)
    }
}

impl ModelInstance for OnnxInstance {
    fn execute(&mut self, inputs: Vec<Tensor>, outputs: &[String]) -> Result<ExecOutput, ServeError> {
        let t0 = Instant::now();
        let wanted: Vec<&str> = if outputs.is_empty() {
            self.default_outputs.iter().map(String::as_str).collect()
        } else {
            outputs.iter().map(String::as_str).collect()
        };
        let mut selector = OutputSelector::no_default();
        for (i, name) in wanted.iter().enumerate() {
            match self.outputs.iter().find(|o| o.name == *name) {
                None => {
                    return Err(ServeError::invalid(format!(
                        "unexpected inference output '{name}' for model '{}'",
                        self.model
                    )))
                }
                Some(OutputSpec { datatype: Err(why), .. }) => {
                    return Err(ServeError::Unsupported(format!(
                        "model '{}': output '{name}' is a {why}, which this server cannot return",
                        self.model
                    )))
                }
                Some(_) => {}
            }
            if wanted[..i].contains(name) {
                return Err(ServeError::invalid(format!("output '{name}' is requested more than once")));
            }
            selector = selector.with(*name);
        }
        let values = self.build_inputs(&inputs)?;
        drop(inputs);
        let backend_err = |e: ort::Error| ServeError::Backend(format!("{}: {e}", self.model));
        let run_options = RunOptions::new().map_err(backend_err)?.with_outputs(selector);
        let t1 = Instant::now();

        let model = self.model.as_str();
        let mut results = self
            .session
            .run_with_options(values, &run_options)
            .map_err(|e| ServeError::Backend(format!("{model}: {e}")))?;
        let t2 = Instant::now();

        let mut tensors = Vec::with_capacity(wanted.len());
        for name in &wanted {
            let value = results
                .remove(name)
                .ok_or_else(|| ServeError::Backend(format!("{model}: ONNX Runtime did not produce output '{name}'")))?;
            tensors.push(convert::from_value(model, name, value)?);
        }
        drop(results);
        let t3 = Instant::now();
        Ok(ExecOutput {
            outputs: tensors,
            compute_input_ns: nanos(t1 - t0),
            compute_infer_ns: nanos(t2 - t1),
            compute_output_ns: nanos(t3 - t2),
        })
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
