//! Moving tensors into and out of ONNX Runtime values. Fixed-size types travel as raw
//! little-endian bytes (identical to ORT's in-memory layout on the little-endian CPUs this
//! runs on), BYTES as ORT string tensors.

use bytes::Bytes;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor as OrtTensor, ValueType};
use sluice_types::{element_count, DataType, ServeError, Tensor, TensorData};

use super::complete::{datatype_element, element_datatype};

/// Builds the ORT value for one request input. The tensor's datatype must already be the one
/// the model expects; its shape and contents are checked here (never trusted).
pub fn to_value(model: &str, t: &Tensor) -> Result<DynValue, ServeError> {
    let n = element_count(&t.name, &t.shape)?;
    let ort_err = |e: ort::Error| ServeError::Backend(format!("{model}: input '{}': {e}", t.name));
    match (&t.data, t.datatype.size()) {
        (TensorData::Fixed(bytes), Some(size)) => {
            let want = n
                .checked_mul(size)
                .ok_or_else(|| ServeError::invalid(format!("input '{}': shape {:?} is too large", t.name, t.shape)))?;
            if bytes.len() != want {
                return Err(ServeError::invalid(format!(
                    "input '{}': shape {:?} of {} needs {want} bytes, got {}",
                    t.name,
                    t.shape,
                    t.datatype,
                    bytes.len()
                )));
            }
            if t.datatype == DataType::Bool && bytes.iter().any(|&b| b > 1) {
                return Err(ServeError::invalid(format!("input '{}': BOOL elements must be 0 or 1", t.name)));
            }
            let mut value = DynTensor::new(&Allocator::default(), datatype_element(t.datatype), t.shape.clone())
                .map_err(ort_err)?;
            if want > 0 {
                if value.size() != Some(want) {
                    return Err(ServeError::Internal(format!(
                        "{model}: input '{}': ONNX Runtime allocated {:?} bytes for {want}",
                        t.name,
                        value.size()
                    )));
                }
                let dst = value.data_ptr_mut().cast::<u8>();
                if dst.is_null() {
                    return Err(ServeError::Internal(format!(
                        "{model}: input '{}': ONNX Runtime returned no buffer",
                        t.name
                    )));
                }
                // SAFETY: `dst` is the CPU buffer of a freshly created tensor of exactly `want`
                // bytes (checked above), and `bytes` holds exactly `want` bytes; they cannot overlap.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, want) };
            }
            Ok(value.into_dyn())
        }
        (TensorData::Bytes(items), None) => {
            if items.len() != n {
                return Err(ServeError::invalid(format!(
                    "input '{}': shape {:?} needs {n} elements, got {}",
                    t.name,
                    t.shape,
                    items.len()
                )));
            }
            let mut strings = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let s = std::str::from_utf8(item).map_err(|e| {
                    ServeError::invalid(format!(
                        "input '{}': BYTES element {i} is not valid UTF-8 ({e}); ONNX Runtime string tensors \
                         hold UTF-8 text",
                        t.name
                    ))
                })?;
                if s.contains('\0') {
                    return Err(ServeError::invalid(format!(
                        "input '{}': BYTES element {i} contains a NUL byte, which ONNX Runtime string tensors \
                         cannot hold",
                        t.name
                    )));
                }
                strings.push(s.to_owned());
            }
            let value = OrtTensor::from_string_array((t.shape.clone(), strings.as_slice())).map_err(ort_err)?;
            Ok(value.into_dyn())
        }
        (TensorData::Fixed(_), None) | (TensorData::Bytes(_), Some(_)) => {
            Err(ServeError::invalid(format!("input '{}': data does not match datatype {}", t.name, t.datatype)))
        }
    }
}

/// Copies one ORT output into a [`Tensor`].
pub fn from_value(model: &str, name: &str, value: DynValue) -> Result<Tensor, ServeError> {
    let ort_err = |e: ort::Error| ServeError::Backend(format!("{model}: output '{name}': {e}"));
    let (elem, shape) = match value.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
        other => {
            return Err(ServeError::Unsupported(format!(
                "{model}: output '{name}' is a {other}, which this server cannot return"
            )))
        }
    };
    let datatype = element_datatype(elem).ok_or_else(|| {
        ServeError::Unsupported(format!(
            "{model}: output '{name}' has element type {elem}, which this server cannot return"
        ))
    })?;
    let n = element_count(name, &shape).map_err(|e| ServeError::Backend(format!("{model}: {e}")))?;
    let data = match datatype.size() {
        None => {
            let (_, strings) = value.try_extract_strings().map_err(ort_err)?;
            if strings.len() != n {
                return Err(ServeError::Backend(format!(
                    "{model}: output '{name}': shape {shape:?} but {} strings",
                    strings.len()
                )));
            }
            TensorData::Bytes(strings.into_iter().map(Bytes::from).collect())
        }
        Some(size) => {
            let len = n.checked_mul(size).ok_or_else(|| {
                ServeError::Backend(format!("{model}: output '{name}': shape {shape:?} is too large"))
            })?;
            let tensor = value.downcast::<DynTensorValueType>().map_err(ort_err)?;
            if !tensor.memory_info().is_cpu_accessible() {
                return Err(ServeError::Backend(format!("{model}: output '{name}' is not in CPU memory")));
            }
            if len == 0 {
                TensorData::Fixed(Bytes::new())
            } else {
                if tensor.size() != Some(len) {
                    return Err(ServeError::Backend(format!(
                        "{model}: output '{name}': shape {shape:?} of {datatype} needs {len} bytes, ONNX Runtime \
                         holds {:?}",
                        tensor.size()
                    )));
                }
                let src = tensor.data_ptr().cast::<u8>();
                if src.is_null() {
                    return Err(ServeError::Backend(format!("{model}: output '{name}' has no data")));
                }
                // SAFETY: `src` is the CPU buffer of `tensor`, which holds `len` bytes (checked
                // above) and stays alive for the copy.
                TensorData::Fixed(Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(src, len) }))
            }
        }
    };
    Ok(Tensor { name: name.to_string(), datatype, shape, data })
}
