//! What a model's inputs and outputs are, and Triton's auto-complete of a config from them.
//! The rules live in [`complete_config`], a pure function over [`ModelIo`], so they are tested
//! without ONNX Runtime.

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use sluice_types::config::{DynamicBatching, TensorConfig};
use sluice_types::{DataType, ModelConfig, ServeError};

/// Triton's `--backend-config=default-max-batch-size`: what auto-complete sets `max_batch_size` to
/// when the model can batch and the config does not say.
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 4;

pub const PLATFORM: &str = "onnxruntime_onnx";
pub const BACKEND: &str = "onnxruntime";

/// One model input or output as ONNX Runtime describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct IoInfo {
    pub name: String,
    /// The element type, or a description of why it cannot be served (`tensor(complex64)`,
    /// `Sequence<Map<i64, f32>>`).
    pub datatype: Result<DataType, String>,
    /// Full shape with -1 for dynamic or symbolic dims; `None` for non-tensor values.
    pub shape: Option<Vec<i64>>,
}

/// A model's interface.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelIo {
    /// Inputs the model needs.
    pub inputs: Vec<IoInfo>,
    /// Initializers that a request may override (initializers also listed as graph inputs):
    /// a config may list them, usually as `optional`.
    pub overridable: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
}

impl ModelIo {
    pub fn from_session(session: &Session) -> ModelIo {
        let info = |name: &str, ty: &ValueType| IoInfo {
            name: name.to_string(),
            datatype: value_datatype(ty),
            shape: ty.tensor_shape().map(|s| s.iter().map(|&d| if d < 0 { -1 } else { d }).collect()),
        };
        ModelIo {
            inputs: session.inputs().iter().map(|o| info(o.name(), o.dtype())).collect(),
            overridable: session.overridable_initializers().iter().map(|o| info(o.name(), o.dtype())).collect(),
            outputs: session.outputs().iter().map(|o| info(o.name(), o.dtype())).collect(),
        }
    }

    pub fn input(&self, name: &str) -> Option<&IoInfo> {
        self.inputs.iter().chain(&self.overridable).find(|i| i.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&IoInfo> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

/// The protocol datatype of an ONNX tensor element type.
pub fn element_datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// The ONNX tensor element type of a protocol datatype.
pub fn datatype_element(dt: DataType) -> TensorElementType {
    match dt {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

fn value_datatype(ty: &ValueType) -> Result<DataType, String> {
    match ty {
        ValueType::Tensor { ty: elem, .. } => {
            element_datatype(*elem).ok_or_else(|| format!("tensor element type {elem}"))
        }
        other => Err(format!("non-tensor value {other}")),
    }
}

fn unsupported(model: &str, kind: &str, io: &IoInfo, why: &str) -> ServeError {
    ServeError::Unsupported(format!(
        "model '{model}': {kind} '{}' is a {why}, which this server cannot exchange (supported: \
         tensors of BOOL, UINT8-64, INT8-64, FP16, BF16, FP32, FP64, STRING)",
        io.name
    ))
}

fn dynamic_first_dim(io: &IoInfo) -> bool {
    io.datatype.is_ok() && io.shape.as_ref().is_some_and(|s| s.first() == Some(&-1))
}

/// Fills and checks `config` against the model, as Triton's ONNX Runtime backend does:
///
/// * inputs (outputs) the config leaves out come from the model: every required input
///   (every output) with its datatype and dims, -1 for dynamic dims;
/// * when the config states no inputs, has `max_batch_size` 0, and every input and output has a
///   dynamic first dim, the model batches: `max_batch_size` becomes [`DEFAULT_MAX_BATCH_SIZE`]
///   (and `dynamic_batching` is switched on when no scheduler is configured);
/// * with `max_batch_size` > 0 the first dim is the batch dim: it is left out of `dims`, and it
///   must be dynamic in every input and output;
/// * inputs and outputs the config states must exist in the model, with the same datatype, and
///   (without `reshape`) a shape the model accepts; every required model input must be stated;
/// * `platform` and `backend` are set when empty.
pub fn complete_config(config: &mut ModelConfig, io: &ModelIo) -> Result<(), ServeError> {
    let model = config.name.clone();
    let stated_inputs = !config.input.is_empty();
    let stated_outputs = !config.output.is_empty();

    // The outputs the config will carry: those it names, or all of the model's.
    let outputs: Vec<&IoInfo> = if stated_outputs {
        config.output.iter().filter_map(|c| io.output(&c.name)).collect()
    } else {
        io.outputs.iter().collect()
    };
    let can_batch = !io.inputs.is_empty()
        && io.inputs.iter().all(dynamic_first_dim)
        && outputs.iter().all(|o| dynamic_first_dim(o));

    if config.max_batch_size == 0 && !stated_inputs && can_batch {
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE;
        if config.dynamic_batching.is_none() && config.sequence_batching.is_none() {
            config.dynamic_batching = Some(DynamicBatching::default());
        }
    }
    if config.max_batch_size > 0 && !can_batch {
        let offender = io
            .inputs
            .iter()
            .chain(outputs.iter().copied())
            .find(|i| !dynamic_first_dim(i))
            .map(|i| format!(" ('{}' has shape {})", i.name, shape_str(i.shape.as_deref())))
            .unwrap_or_default();
        return Err(ServeError::InvalidArgument(format!(
            "model '{model}': max_batch_size is {} but the model does not support batching: every input \
             and output needs a dynamic first dimension{offender}; set max_batch_size: 0",
            config.max_batch_size
        )));
    }
    let batching = config.max_batch_size > 0;

    if stated_inputs {
        for c in &config.input {
            let Some(m) = io.input(&c.name) else {
                return Err(ServeError::InvalidArgument(format!(
                    "model '{model}': configuration input '{}' is not an input of the model (model inputs: {})",
                    c.name,
                    names(io.inputs.iter().chain(&io.overridable))
                )));
            };
            check_stated(&model, "input", config, c, m)?;
        }
        let missing: Vec<&IoInfo> =
            io.inputs.iter().filter(|m| !config.input.iter().any(|c| c.name == m.name)).collect();
        if !missing.is_empty() {
            return Err(ServeError::InvalidArgument(format!(
                "model '{model}': the configuration lists inputs but leaves out model input(s) {}; \
                 list them too (or list no inputs to have them filled in)",
                names(missing)
            )));
        }
    } else {
        for m in &io.inputs {
            config.input.push(tensor_config(&model, "input", m, batching)?);
        }
    }

    if stated_outputs {
        for c in &config.output {
            let Some(m) = io.output(&c.name) else {
                return Err(ServeError::InvalidArgument(format!(
                    "model '{model}': configuration output '{}' is not an output of the model (model outputs: {})",
                    c.name,
                    names(&io.outputs)
                )));
            };
            check_stated(&model, "output", config, c, m)?;
        }
    } else {
        for m in &io.outputs {
            config.output.push(tensor_config(&model, "output", m, batching)?);
        }
    }

    if config.platform.is_empty() {
        config.platform = PLATFORM.to_string();
    }
    if config.backend.is_empty() {
        config.backend = BACKEND.to_string();
    }
    Ok(())
}

fn names<'a>(items: impl IntoIterator<Item = &'a IoInfo>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| format!("'{}'", i.name)).collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

fn shape_str(shape: Option<&[i64]>) -> String {
    shape.map_or_else(|| "(not a tensor)".to_string(), |s| format!("{s:?}"))
}

fn tensor_config(model: &str, kind: &str, m: &IoInfo, batching: bool) -> Result<TensorConfig, ServeError> {
    let dt = m.datatype.as_ref().map_err(|why| unsupported(model, kind, m, why))?;
    let shape = m.shape.clone().unwrap_or_default();
    let dims = if batching { shape.get(1..).unwrap_or_default().to_vec() } else { shape };
    Ok(TensorConfig { name: m.name.clone(), data_type: dt.config_name().to_string(), dims, ..Default::default() })
}

fn check_stated(model: &str, kind: &str, config: &ModelConfig, c: &TensorConfig, m: &IoInfo) -> Result<(), ServeError> {
    let Some(stated) = c.datatype() else {
        return Err(ServeError::InvalidArgument(format!(
            "model '{model}': {kind} '{}' has unknown data_type '{}'",
            c.name, c.data_type
        )));
    };
    let actual = m.datatype.as_ref().map_err(|why| unsupported(model, kind, m, why))?;
    if stated != *actual {
        return Err(ServeError::InvalidArgument(format!(
            "model '{model}': {kind} '{}': configuration data_type is {} but the model's is {}",
            c.name,
            stated.config_name(),
            actual.config_name()
        )));
    }
    if c.reshape.is_some() {
        return Ok(());
    }
    let (Some(model_shape), full) = (m.shape.as_ref(), config.full_shape(c)) else {
        return Ok(());
    };
    let fits = full.len() == model_shape.len() && full.iter().zip(model_shape).all(|(&cd, &md)| md == -1 || cd == md);
    if !fits {
        let batch = if config.max_batch_size > 0 { " (with the batch dimension first)" } else { "" };
        return Err(ServeError::InvalidArgument(format!(
            "model '{model}': {kind} '{}': configuration dims {:?} give shape {full:?}{batch}, but the model's \
             shape is {model_shape:?} (-1 = dynamic)",
            c.name, c.dims
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(name: &str, dt: DataType, shape: &[i64]) -> IoInfo {
        IoInfo { name: name.into(), datatype: Ok(dt), shape: Some(shape.to_vec()) }
    }

    fn tc(name: &str, dt: &str, dims: &[i64]) -> TensorConfig {
        TensorConfig { name: name.into(), data_type: dt.into(), dims: dims.to_vec(), ..Default::default() }
    }

    fn add_sub() -> ModelIo {
        ModelIo {
            inputs: vec![io("A", DataType::Fp32, &[-1, 16]), io("B", DataType::Fp32, &[-1, 16])],
            overridable: vec![],
            outputs: vec![io("S", DataType::Fp32, &[-1, 16]), io("D", DataType::Fp32, &[-1, 16])],
        }
    }

    fn named(name: &str) -> ModelConfig {
        ModelConfig { name: name.into(), ..Default::default() }
    }

    #[test]
    fn empty_config_of_batchable_model_batches() {
        let mut c = named("m");
        complete_config(&mut c, &add_sub()).unwrap();
        assert_eq!(c.max_batch_size, DEFAULT_MAX_BATCH_SIZE);
        assert!(c.dynamic_batching.is_some());
        assert_eq!(c.input, vec![tc("A", "TYPE_FP32", &[16]), tc("B", "TYPE_FP32", &[16])]);
        assert_eq!(c.output, vec![tc("S", "TYPE_FP32", &[16]), tc("D", "TYPE_FP32", &[16])]);
        assert_eq!((c.platform.as_str(), c.backend.as_str()), (PLATFORM, BACKEND));
    }

    #[test]
    fn fixed_first_dim_keeps_full_shape() {
        let model = ModelIo {
            inputs: vec![io("IN", DataType::Bytes, &[2, -1])],
            overridable: vec![],
            outputs: vec![io("OUT", DataType::Bytes, &[2, -1])],
        };
        let mut c = named("m");
        complete_config(&mut c, &model).unwrap();
        assert_eq!(c.max_batch_size, 0);
        assert!(c.dynamic_batching.is_none());
        assert_eq!(c.input, vec![tc("IN", "TYPE_STRING", &[2, -1])]);
        assert_eq!(c.output, vec![tc("OUT", "TYPE_STRING", &[2, -1])]);
    }

    #[test]
    fn one_fixed_output_disables_batching() {
        let mut model = add_sub();
        model.outputs[1].shape = Some(vec![1, 16]);
        let mut c = named("m");
        complete_config(&mut c, &model).unwrap();
        assert_eq!(c.max_batch_size, 0);
        assert_eq!(c.input[0].dims, vec![-1, 16]);
    }

    #[test]
    fn stated_inputs_without_batch_keep_max_batch_size_zero() {
        let mut c = named("m");
        c.input = vec![tc("A", "TYPE_FP32", &[-1, 16]), tc("B", "TYPE_FP32", &[-1, 16])];
        complete_config(&mut c, &add_sub()).unwrap();
        assert_eq!(c.max_batch_size, 0);
        assert_eq!(c.output, vec![tc("S", "TYPE_FP32", &[-1, 16]), tc("D", "TYPE_FP32", &[-1, 16])]);
    }

    #[test]
    fn explicit_max_batch_size_strips_batch_dim_of_filled_outputs() {
        let mut c = named("m");
        c.max_batch_size = 8;
        c.input = vec![tc("A", "TYPE_FP32", &[16]), tc("B", "TYPE_FP32", &[16])];
        complete_config(&mut c, &add_sub()).unwrap();
        assert_eq!(c.max_batch_size, 8);
        assert!(c.dynamic_batching.is_none(), "only auto-enabled batching adds a scheduler");
        assert_eq!(c.output[1], tc("D", "TYPE_FP32", &[16]));
    }

    #[test]
    fn batching_requested_for_non_batchable_model_fails() {
        let model = ModelIo {
            inputs: vec![io("x", DataType::Fp32, &[3])],
            overridable: vec![],
            outputs: vec![io("y", DataType::Fp32, &[3])],
        };
        let mut c = named("m");
        c.max_batch_size = 2;
        let e = complete_config(&mut c, &model).unwrap_err().to_string();
        assert!(e.contains("does not support batching") && e.contains("'x' has shape [3]"), "{e}");
    }

    #[test]
    fn stated_tensors_are_checked() {
        let cases: Vec<(Vec<TensorConfig>, Vec<TensorConfig>, &str)> = vec![
            (vec![tc("A", "TYPE_FP32", &[16]), tc("C", "TYPE_FP32", &[16])], vec![], "input 'C' is not an input"),
            (
                vec![tc("A", "TYPE_INT32", &[16]), tc("B", "TYPE_FP32", &[16])],
                vec![],
                "input 'A': configuration data_type is TYPE_INT32 but the model's is TYPE_FP32",
            ),
            (vec![tc("A", "TYPE_FP32", &[16])], vec![], "leaves out model input(s) 'B'"),
            (
                vec![tc("A", "TYPE_FP32", &[8]), tc("B", "TYPE_FP32", &[16])],
                vec![],
                "input 'A': configuration dims [8] give shape [-1, 8]",
            ),
            (vec![tc("A", "FLOAT", &[16]), tc("B", "TYPE_FP32", &[16])], vec![], "unknown data_type 'FLOAT'"),
            (vec![], vec![tc("X", "TYPE_FP32", &[16])], "output 'X' is not an output"),
            (
                vec![],
                vec![tc("S", "TYPE_FP64", &[16])],
                "output 'S': configuration data_type is TYPE_FP64 but the model's is TYPE_FP32",
            ),
        ];
        for (inputs, outputs, want) in cases {
            let mut c = named("m");
            c.max_batch_size = 4;
            c.input = inputs;
            c.output = outputs;
            let e = complete_config(&mut c, &add_sub()).unwrap_err();
            assert!(matches!(e, ServeError::InvalidArgument(_)), "{e:?}");
            assert!(e.to_string().contains(want), "want '{want}' in: {e}");
            assert!(e.to_string().contains("model 'm'"), "{e}");
        }
    }

    #[test]
    fn stated_subset_of_outputs_and_reshape_are_accepted() {
        let mut c = named("m");
        c.max_batch_size = 4;
        c.output = vec![TensorConfig {
            reshape: Some(sluice_types::config::Reshape { shape: vec![4, 4] }),
            ..tc("D", "TYPE_FP32", &[4, 4])
        }];
        complete_config(&mut c, &add_sub()).unwrap();
        assert_eq!(c.output.len(), 1);
        assert_eq!(c.input.len(), 2);
    }

    #[test]
    fn overridable_initializer_may_be_listed() {
        let model = ModelIo {
            inputs: vec![io("x", DataType::Fp32, &[3])],
            overridable: vec![io("bias", DataType::Fp32, &[3])],
            outputs: vec![io("y", DataType::Fp32, &[3])],
        };
        let mut c = named("m");
        complete_config(&mut c, &model).unwrap();
        assert_eq!(c.input, vec![tc("x", "TYPE_FP32", &[3])], "overridable initializers are not filled in");
        let mut c = named("m");
        c.input = vec![tc("x", "TYPE_FP32", &[3]), TensorConfig { optional: true, ..tc("bias", "TYPE_FP32", &[3]) }];
        complete_config(&mut c, &model).unwrap();
    }

    #[test]
    fn unsupported_types_are_named() {
        let model = ModelIo {
            inputs: vec![io("x", DataType::Fp32, &[-1, 3])],
            overridable: vec![],
            outputs: vec![
                io("label", DataType::Int64, &[-1]),
                IoInfo {
                    name: "probs".into(),
                    datatype: Err("non-tensor value Sequence<Map<i64, f32>>".into()),
                    shape: None,
                },
            ],
        };
        let mut c = named("clf");
        let e = complete_config(&mut c, &model).unwrap_err();
        assert!(matches!(e, ServeError::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("output 'probs' is a non-tensor value Sequence"), "{e}");
        // Listing only the supported output works, and batching follows that output.
        let mut c = named("clf");
        c.output = vec![tc("label", "TYPE_INT64", &[])];
        c.max_batch_size = 4;
        complete_config(&mut c, &model).unwrap();
        assert_eq!(c.input, vec![tc("x", "TYPE_FP32", &[3])]);
    }

    #[test]
    fn every_datatype_maps_both_ways() {
        for dt in DataType::ALL {
            assert_eq!(element_datatype(datatype_element(dt)), Some(dt));
        }
        assert_eq!(element_datatype(TensorElementType::Complex64), None);
        assert_eq!(element_datatype(TensorElementType::Float8E4M3FN), None);
    }
}
