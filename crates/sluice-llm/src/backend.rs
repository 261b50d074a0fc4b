//! How the model repository sees a generative model: the `candle` backend completes its config
//! (inputs and outputs as Triton's vLLM backend names them, so V2 clients call it the same
//! way) and loads a version as one shared [`Generator`] (the version's shared state) with
//! execution instances that are synchronous callers of it: a plain infer request runs a whole
//! generation and answers `text_output`. Streaming endpoints use the generator directly.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sluice_backend::{Backend, ExecOutput, LoadedVersion, ModelFiles, ModelInstance};
use sluice_types::config::{InstanceGroup, TensorConfig};
use sluice_types::{ModelConfig, ServeError, Tensor, TensorData};

use crate::{params_from_json, tokenizer_path, Event, Generator, GeneratorOptions, SamplingParams};

pub const BACKEND: &str = "candle";
pub const DEFAULT_FILENAME: &str = "model.gguf";
pub const TEXT_INPUT: &str = "text_input";
pub const SAMPLING_PARAMETERS: &str = "sampling_parameters";
pub const TEXT_OUTPUT: &str = "text_output";
/// The answer length when a request does not say (Triton's vLLM backend's default).
pub const TRITON_DEFAULT_MAX_TOKENS: usize = 16;

pub struct CandleBackend;

impl Backend for CandleBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn accepts(&self, config: &ModelConfig, version_dir: &Path) -> bool {
        config.backend == BACKEND || sluice_backend::holds_model_file(config, version_dir, DEFAULT_FILENAME, ".gguf")
    }

    fn default_filename(&self) -> &'static str {
        DEFAULT_FILENAME
    }

    fn auto_complete(&self, config: &mut ModelConfig, files: &ModelFiles) -> Result<(), ServeError> {
        if tokenizer_path(&files.model_dir, &files.version_dir).is_none() {
            return Err(ServeError::invalid(format!(
                "generative model '{}' needs a tokenizer.json in {} or {}",
                config.name,
                files.model_dir.display(),
                files.version_dir.display()
            )));
        }
        if config.max_batch_size != 0 {
            return Err(ServeError::invalid(format!(
                "generative model '{}': max_batch_size must be 0 (requests share decoding steps through continuous batching, not batches)",
                config.name
            )));
        }
        config.backend = BACKEND.into();
        let string = |name: &str, optional: bool| TensorConfig {
            name: name.into(),
            data_type: "TYPE_STRING".into(),
            dims: vec![1],
            optional,
            ..Default::default()
        };
        if config.input.is_empty() {
            config.input = vec![string(TEXT_INPUT, false), string(SAMPLING_PARAMETERS, true)];
        }
        if config.output.is_empty() {
            config.output = vec![string(TEXT_OUTPUT, false)];
        }
        if config.instance_group.is_empty() {
            // One synchronous caller per sequence slot: plain infer requests fill the slots.
            let seqs = GeneratorOptions::from_config(config)?.max_num_seqs;
            config.instance_group =
                vec![InstanceGroup { count: seqs as u32, kind: "KIND_CPU".into(), ..Default::default() }];
        }
        Ok(())
    }

    fn load(
        &self,
        config: &ModelConfig,
        _files: &ModelFiles,
        _index: usize,
    ) -> Result<Box<dyn ModelInstance>, ServeError> {
        Err(ServeError::Internal(format!(
            "generative model '{}': its instances share one engine and are loaded with the version",
            config.name
        )))
    }

    /// A generative model's instances share one engine (its weights, KV caches and the
    /// continuous batcher): it is loaded once per version, and each instance is a synchronous
    /// caller of it for plain infer requests. The engine is the version's shared state, which
    /// streaming endpoints use directly.
    fn load_version(
        &self,
        config: &ModelConfig,
        files: &ModelFiles,
        count: usize,
    ) -> Result<LoadedVersion, ServeError> {
        let generator = start(config, files)?;
        let instances = (0..count).map(|_| instance(generator.clone())).collect();
        Ok(LoadedVersion { instances, shared: Some(generator) })
    }
}

/// Loads a version's generator.
fn start(config: &ModelConfig, files: &ModelFiles) -> Result<Arc<Generator>, ServeError> {
    let tokenizer = tokenizer_path(&files.model_dir, &files.version_dir)
        .ok_or_else(|| ServeError::invalid(format!("generative model '{}' has no tokenizer.json", config.name)))?;
    let options = GeneratorOptions::from_config(config)?;
    Ok(Arc::new(Generator::load(&config.name, &files.model_path, &tokenizer, options)?))
}

/// A synchronous caller of the generator, for plain infer requests.
fn instance(generator: Arc<Generator>) -> Box<dyn ModelInstance> {
    Box::new(GenerateInstance { generator })
}

struct GenerateInstance {
    generator: Arc<Generator>,
}

/// The one string of a BYTES input.
fn one_string(t: &Tensor) -> Result<String, ServeError> {
    match &t.data {
        TensorData::Bytes(v) if v.len() == 1 => String::from_utf8(v[0].to_vec())
            .map_err(|_| ServeError::invalid(format!("input '{}': expected UTF-8 text", t.name))),
        TensorData::Bytes(v) => Err(ServeError::invalid(format!(
            "input '{}': expected 1 string, got {} (send one prompt per request)",
            t.name,
            v.len()
        ))),
        TensorData::Fixed(_) => {
            Err(ServeError::invalid(format!("input '{}': expected BYTES, got {}", t.name, t.datatype)))
        }
    }
}

/// The prompt and sampling parameters of a V2 request to a generative model, as Triton's vLLM
/// backend takes them: `text_input`, then the request's parameters, then the JSON object of a
/// `sampling_parameters` input (`max_tokens` default 16).
pub fn request_prompt(
    inputs: &[Tensor],
    parameters: &serde_json::Map<String, serde_json::Value>,
) -> Result<(String, SamplingParams), ServeError> {
    let mut prompt = None;
    let defaults = SamplingParams { max_tokens: TRITON_DEFAULT_MAX_TOKENS, ..Default::default() };
    let mut params = params_from_json(parameters, defaults)?;
    for t in inputs {
        match t.name.as_str() {
            TEXT_INPUT => prompt = Some(one_string(t)?),
            SAMPLING_PARAMETERS => {
                let json = one_string(t)?;
                let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).map_err(|e| {
                    ServeError::invalid(format!("input '{SAMPLING_PARAMETERS}': expected a JSON object: {e}"))
                })?;
                params = params_from_json(&obj, params)?;
            }
            _ => {}
        }
    }
    let prompt = prompt.ok_or_else(|| ServeError::invalid(format!("input '{TEXT_INPUT}' is required")))?;
    Ok((prompt, params))
}

impl ModelInstance for GenerateInstance {
    fn execute(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<ExecOutput, ServeError> {
        let started = std::time::Instant::now();
        let (prompt, params) = request_prompt(&inputs, &Default::default())?;
        let ids = self.generator.encode_text(&prompt)?;
        let mut rx = self.generator.submit(ids, params)?;
        let mut text = String::new();
        loop {
            match rx.blocking_recv() {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done(_)) => break,
                Some(Event::PromptLogprobs(_) | Event::Logprobs(_)) => {}
                Some(Event::Error(e)) => return Err(ServeError::Internal(e)),
                None => return Err(ServeError::Internal("generation ended without an answer".into())),
            }
        }
        Ok(ExecOutput {
            outputs: vec![text_output(text)],
            compute_infer_ns: started.elapsed().as_nanos() as u64,
            ..Default::default()
        })
    }
}

/// A `text_output` tensor holding one string.
pub fn text_output(text: String) -> Tensor {
    Tensor {
        name: TEXT_OUTPUT.into(),
        datatype: sluice_types::DataType::Bytes,
        shape: vec![1],
        data: TensorData::Bytes(vec![Bytes::from(text)]),
    }
}

/// Moves a V2 request's parameters (`max_tokens`, `temperature`, ...) into its
/// `sampling_parameters` input, whose own keys win, so that the instance that runs it sees
/// both: the scheduler passes tensors only.
pub fn fold_parameters(
    inputs: &mut Vec<Tensor>,
    parameters: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ServeError> {
    if parameters.is_empty() {
        return Ok(());
    }
    let pos = inputs.iter().position(|t| t.name == SAMPLING_PARAMETERS);
    let mut obj = match pos {
        Some(i) => serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&one_string(&inputs[i])?)
            .map_err(|e| ServeError::invalid(format!("input '{SAMPLING_PARAMETERS}': expected a JSON object: {e}")))?,
        None => serde_json::Map::new(),
    };
    for (k, v) in parameters {
        obj.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let t = Tensor::from_strings(SAMPLING_PARAMETERS, vec![1], &[serde_json::Value::Object(obj).to_string()]);
    match pos {
        Some(i) => inputs[i] = t,
        None => inputs.push(t),
    }
    Ok(())
}
