//! Inference messages between protobuf and the server's own types: typed `contents` or
//! `raw_input_contents` into tensors, tensors into `raw_output_contents`, and `InferParameter`
//! values to and from JSON values.

use std::collections::HashMap;
use std::fmt::Display;

use bytes::Bytes;
use serde_json::{Number, Value};
use sluice_types::{
    element_count, DataType, Element, InferRequest, InferResponse, Parameters, RequestedOutput, ServeError, Tensor,
    TensorData,
};

use super::pb;
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::InferInputTensor;
use pb::model_infer_response::InferOutputTensor;

/// A protobuf parameter map as JSON values; parameters without a value are left out.
pub fn params_from_pb(map: HashMap<String, pb::InferParameter>) -> Result<Parameters, ServeError> {
    let mut out = Parameters::new();
    for (key, p) in map {
        let value = match p.parameter_choice {
            None => continue,
            Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
            Some(ParameterChoice::Int64Param(i)) => Value::from(i),
            Some(ParameterChoice::Uint64Param(u)) => Value::from(u),
            Some(ParameterChoice::StringParam(s)) => Value::String(s),
            Some(ParameterChoice::DoubleParam(d)) => Value::Number(
                Number::from_f64(d)
                    .ok_or_else(|| ServeError::invalid(format!("parameter '{key}': {d} is not a finite number")))?,
            ),
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// JSON parameter values as protobuf ones. Integers stay integers (int64, or uint64 above
/// `i64::MAX`); `null` is left out; arrays and objects travel as their JSON text.
pub fn params_to_pb(params: &Parameters) -> HashMap<String, pb::InferParameter> {
    params
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let choice = match v {
                Value::Bool(b) => ParameterChoice::BoolParam(*b),
                Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => ParameterChoice::Int64Param(i),
                    (None, Some(u)) => ParameterChoice::Uint64Param(u),
                    (None, None) => ParameterChoice::DoubleParam(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => ParameterChoice::StringParam(s.clone()),
                other => ParameterChoice::StringParam(other.to_string()),
            };
            (k.clone(), pb::InferParameter { parameter_choice: Some(choice) })
        })
        .collect()
}

/// A `ModelInferRequest` as the engine's request.
pub fn infer_request(req: pb::ModelInferRequest) -> Result<InferRequest, ServeError> {
    let pb::ModelInferRequest { model_name, model_version, id, parameters, inputs, outputs, raw_input_contents } = req;
    let inputs = if raw_input_contents.is_empty() {
        inputs.into_iter().map(typed_input).collect::<Result<Vec<_>, _>>()?
    } else {
        if raw_input_contents.len() != inputs.len() {
            return Err(ServeError::invalid(format!(
                "raw_input_contents has {} entries but the request has {} inputs; give exactly one per input, in the order of 'inputs'",
                raw_input_contents.len(),
                inputs.len()
            )));
        }
        inputs
            .into_iter()
            .zip(raw_input_contents)
            .map(|(input, raw)| raw_input(input, raw))
            .collect::<Result<Vec<_>, _>>()?
    };
    let outputs = outputs
        .into_iter()
        .map(|o| Ok(RequestedOutput { name: o.name, parameters: params_from_pb(o.parameters)? }))
        .collect::<Result<Vec<_>, ServeError>>()?;
    Ok(InferRequest {
        model: model_name,
        version: Some(model_version).filter(|v| !v.is_empty()),
        id: Some(id).filter(|i| !i.is_empty()),
        parameters: params_from_pb(parameters)?,
        inputs,
        outputs,
    })
}

/// The engine's response as a `ModelInferResponse`, data in `raw_output_contents` as Triton does.
pub fn infer_response(resp: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for t in resp.outputs {
        raw.push(t.to_raw());
        outputs.push(InferOutputTensor {
            name: t.name,
            datatype: t.datatype.as_str().to_string(),
            shape: t.shape,
            parameters: HashMap::new(),
            contents: None,
        });
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version,
        id: resp.id.unwrap_or_default(),
        parameters: params_to_pb(&resp.parameters),
        outputs,
        raw_output_contents: raw,
    }
}

fn datatype(input: &InferInputTensor) -> Result<DataType, ServeError> {
    DataType::parse(&input.datatype)
        .ok_or_else(|| ServeError::invalid(format!("input '{}': unknown datatype '{}'", input.name, input.datatype)))
}

/// How many elements each field of a `contents` holds, by field name.
fn content_lengths(c: &pb::InferTensorContents) -> [(&'static str, usize); 8] {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
}

fn raw_input(input: InferInputTensor, raw: Bytes) -> Result<Tensor, ServeError> {
    let dt = datatype(&input)?;
    if let Some(c) = &input.contents {
        if let Some((field, _)) = content_lengths(c).into_iter().find(|(_, n)| *n > 0) {
            return Err(ServeError::invalid(format!(
                "input '{}': {field} is set, but the request uses raw_input_contents; with raw contents no input may carry typed contents",
                input.name
            )));
        }
    }
    Tensor::from_raw(input.name, dt, input.shape, raw)
}

/// The `contents` field that carries a datatype; `None` for FP16/BF16, which travel raw only.
fn contents_field(dt: DataType) -> Option<&'static str> {
    match dt {
        DataType::Bool => Some("bool_contents"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => Some("int_contents"),
        DataType::Int64 => Some("int64_contents"),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => Some("uint_contents"),
        DataType::Uint64 => Some("uint64_contents"),
        DataType::Fp32 => Some("fp32_contents"),
        DataType::Fp64 => Some("fp64_contents"),
        DataType::Bytes => Some("bytes_contents"),
        DataType::Fp16 | DataType::Bf16 => None,
    }
}

fn typed_input(input: InferInputTensor) -> Result<Tensor, ServeError> {
    let dt = datatype(&input)?;
    let InferInputTensor { name, shape, contents, .. } = input;
    let n = element_count(&name, &shape)?;
    let c = contents.unwrap_or_default();
    let lengths = content_lengths(&c);
    let expected = contents_field(dt);
    if let Some((other, _)) = lengths.iter().find(|(f, len)| *len > 0 && Some(*f) != expected) {
        return Err(ServeError::invalid(match expected {
            Some(field) => format!("input '{name}': datatype {dt} takes its data in {field}, got {other}"),
            None => format!("input '{name}': {dt} data must be sent in raw_input_contents, got {other}"),
        }));
    }
    let Some(field) = expected else {
        if n == 0 {
            return Tensor::from_raw(name, dt, shape, Bytes::new());
        }
        return Err(ServeError::invalid(format!(
            "input '{name}': {dt} data must be sent in raw_input_contents (shape {shape:?} needs {n} elements)"
        )));
    };
    let got = lengths.iter().find(|(f, _)| *f == field).map_or(0, |(_, len)| *len);
    if got != n {
        return Err(ServeError::invalid(if lengths.iter().all(|(_, len)| *len == 0) && n > 0 {
            format!("input '{name}' has no data: shape {shape:?} needs {n} elements in contents.{field} or raw_input_contents")
        } else {
            format!("input '{name}': shape {shape:?} needs {n} elements, got {got} in {field}")
        }));
    }
    let name_ref = name.as_str();
    let tensor = match dt {
        DataType::Bool => Tensor::from_bools(name_ref, shape, &c.bool_contents),
        DataType::Int8 => Tensor::from_vec(name_ref, shape, narrow::<i32, i8>(name_ref, dt, &c.int_contents)?),
        DataType::Int16 => Tensor::from_vec(name_ref, shape, narrow::<i32, i16>(name_ref, dt, &c.int_contents)?),
        DataType::Int32 => Tensor::from_vec(name_ref, shape, c.int_contents),
        DataType::Int64 => Tensor::from_vec(name_ref, shape, c.int64_contents),
        DataType::Uint8 => Tensor::from_vec(name_ref, shape, narrow::<u32, u8>(name_ref, dt, &c.uint_contents)?),
        DataType::Uint16 => Tensor::from_vec(name_ref, shape, narrow::<u32, u16>(name_ref, dt, &c.uint_contents)?),
        DataType::Uint32 => Tensor::from_vec(name_ref, shape, c.uint_contents),
        DataType::Uint64 => Tensor::from_vec(name_ref, shape, c.uint64_contents),
        DataType::Fp32 => Tensor::from_vec(name_ref, shape, c.fp32_contents),
        DataType::Fp64 => Tensor::from_vec(name_ref, shape, c.fp64_contents),
        DataType::Bytes => Tensor { name, datatype: dt, shape, data: TensorData::Bytes(c.bytes_contents) },
        DataType::Fp16 | DataType::Bf16 => {
            return Err(ServeError::Internal(format!("input '{name}': {dt} has no typed contents field")))
        }
    };
    Ok(tensor)
}

/// Narrows wire integers (int32/uint32) to the tensor's element type, naming the first value
/// that does not fit.
fn narrow<S, T>(name: &str, dt: DataType, values: &[S]) -> Result<Vec<T>, ServeError>
where
    S: Copy + Display,
    T: Element + TryFrom<S>,
{
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            T::try_from(v).map_err(|_| {
                ServeError::invalid(format!("input '{name}': element {i} is {v}, which is out of range for {dt}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, dt: &str, shape: Vec<i64>, contents: Option<pb::InferTensorContents>) -> InferInputTensor {
        InferInputTensor { name: name.into(), datatype: dt.into(), shape, parameters: HashMap::new(), contents }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> pb::ModelInferRequest {
        pb::ModelInferRequest { model_name: "m".into(), inputs, raw_input_contents: raw, ..Default::default() }
    }

    fn invalid(r: Result<InferRequest, ServeError>) -> String {
        match r {
            Err(ServeError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn typed_contents_per_datatype() {
        let c = |f: fn(&mut pb::InferTensorContents)| {
            let mut c = pb::InferTensorContents::default();
            f(&mut c);
            Some(c)
        };
        let req = request(
            vec![
                input("b", "BOOL", vec![2], c(|c| c.bool_contents = vec![true, false])),
                input("i8", "INT8", vec![2], c(|c| c.int_contents = vec![-128, 127])),
                input("u16", "UINT16", vec![1], c(|c| c.uint_contents = vec![65535])),
                input("f", "FP32", vec![1, 2], c(|c| c.fp32_contents = vec![1.5, -2.0])),
                input("s", "BYTES", vec![1], c(|c| c.bytes_contents = vec![Bytes::from_static(b"hi")])),
            ],
            vec![],
        );
        let r = infer_request(req).unwrap();
        assert_eq!(r.version, None);
        assert_eq!(r.inputs[0], Tensor::from_bools("b", vec![2], &[true, false]));
        assert_eq!(r.inputs[1].to_vec::<i8>().unwrap(), vec![-128, 127]);
        assert_eq!(r.inputs[2].to_vec::<u16>().unwrap(), vec![65535]);
        assert_eq!(r.inputs[3].to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
        assert_eq!(r.inputs[4], Tensor::from_strings("s", vec![1], &["hi"]));
    }

    #[test]
    fn typed_contents_errors_name_the_tensor() {
        let ints = |v: Vec<i32>| Some(pb::InferTensorContents { int_contents: v, ..Default::default() });
        let m = invalid(infer_request(request(vec![input("X", "INT8", vec![1], ints(vec![300]))], vec![])));
        assert!(m.contains("'X'") && m.contains("300") && m.contains("INT8"), "{m}");
        let m = invalid(infer_request(request(vec![input("X", "INT32", vec![3], ints(vec![1, 2]))], vec![])));
        assert!(m.contains("'X'") && m.contains("needs 3") && m.contains("got 2"), "{m}");
        let m = invalid(infer_request(request(vec![input("X", "FP32", vec![2], ints(vec![1, 2]))], vec![])));
        assert!(m.contains("fp32_contents") && m.contains("int_contents"), "{m}");
        let m = invalid(infer_request(request(vec![input("H", "FP16", vec![1], ints(vec![1]))], vec![])));
        assert!(m.contains("raw_input_contents"), "{m}");
        let m = invalid(infer_request(request(vec![input("X", "FP99", vec![1], None)], vec![])));
        assert!(m.contains("FP99"), "{m}");
        let m = invalid(infer_request(request(vec![input("X", "FP32", vec![4], None)], vec![])));
        assert!(m.contains("no data"), "{m}");
    }

    #[test]
    fn raw_contents() {
        let raw = Bytes::from(1.0f32.to_le_bytes().iter().chain(&2.0f32.to_le_bytes()).copied().collect::<Vec<u8>>());
        let r = infer_request(request(vec![input("A", "FP32", vec![2], None)], vec![raw.clone()])).unwrap();
        assert_eq!(r.inputs[0].to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        let m = invalid(infer_request(request(vec![input("A", "FP32", vec![3], None)], vec![raw.clone()])));
        assert!(m.contains("'A'") && m.contains("needs 12 bytes, got 8"), "{m}");
        let m = invalid(infer_request(request(
            vec![input("A", "FP32", vec![2], None), input("B", "FP32", vec![2], None)],
            vec![raw.clone()],
        )));
        assert!(m.contains("1 entries") && m.contains("2 inputs"), "{m}");
        let with_contents = Some(pb::InferTensorContents { fp32_contents: vec![1.0, 2.0], ..Default::default() });
        let m = invalid(infer_request(request(vec![input("A", "FP32", vec![2], with_contents)], vec![raw])));
        assert!(m.contains("'A'") && m.contains("fp32_contents"), "{m}");
        // FP16 goes raw.
        let r = infer_request(request(vec![input("H", "FP16", vec![1], None)], vec![Bytes::from_static(&[0, 0x3c])]));
        assert_eq!(r.unwrap().inputs[0].datatype, DataType::Fp16);
    }

    #[test]
    fn parameters_round_trip() {
        let mut p = Parameters::new();
        p.insert("b".into(), Value::Bool(true));
        p.insert("i".into(), Value::from(-3));
        p.insert("u".into(), Value::from(u64::MAX));
        p.insert("d".into(), Value::from(0.5));
        p.insert("s".into(), Value::from("x"));
        assert_eq!(params_from_pb(params_to_pb(&p)).unwrap(), p);
        let nan = HashMap::from([(
            "d".to_string(),
            pb::InferParameter { parameter_choice: Some(ParameterChoice::DoubleParam(f64::NAN)) },
        )]);
        assert!(params_from_pb(nan).is_err());
    }

    #[test]
    fn response_is_raw() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: Some("7".into()),
            parameters: Parameters::new(),
            outputs: vec![Tensor::from_vec("O", vec![2], vec![1i32, 2]), Tensor::from_strings("S", vec![1], &["ab"])],
        };
        let r = infer_response(resp);
        assert_eq!((r.model_name.as_str(), r.model_version.as_str(), r.id.as_str()), ("m", "1", "7"));
        assert_eq!(r.outputs[0].datatype, "INT32");
        assert_eq!(r.outputs[1].shape, vec![1]);
        assert_eq!(&r.raw_output_contents[0][..], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&r.raw_output_contents[1][..], &[2, 0, 0, 0, b'a', b'b']);
    }
}
