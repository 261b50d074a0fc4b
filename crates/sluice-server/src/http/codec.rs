//! The HTTP body formats of inference: V2 JSON (flat or nested data) and Triton's binary tensor
//! extension (a JSON header followed by raw tensors), both ways. Pure functions.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_types::json::{DataJson, JsonData};
use sluice_types::{
    DataType, InferRequest, InferResponse, ModelConfig, Parameters, RequestedOutput, ServeError, Tensor,
};

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default)]
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default)]
    data: Option<JsonData>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// How the client wants outputs encoded.
#[derive(Debug, Default, Clone)]
pub struct OutputEncoding {
    /// Request-level `binary_data_output`.
    pub all_binary: bool,
}

fn param_bool(p: Option<&Parameters>, key: &str) -> Option<bool> {
    match p?.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(s == "true"),
        Value::Number(n) => Some(n.as_i64() != Some(0)),
        _ => None,
    }
}

fn param_usize(p: Option<&Parameters>, key: &str) -> Option<Result<usize, String>> {
    let v = p?.get(key)?;
    Some(match v {
        Value::Number(n) => n.as_u64().map(|x| x as usize).ok_or_else(|| format!("{v}")),
        Value::String(s) => s.parse().map_err(|_| s.clone()),
        other => Err(other.to_string()),
    })
}

/// Parses an inference body. `header_len` is `Inference-Header-Content-Length` when present.
pub fn decode_request(
    model: &str,
    version: Option<&str>,
    body: Bytes,
    header_len: Option<usize>,
) -> Result<(InferRequest, OutputEncoding), ServeError> {
    let json_len = header_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(ServeError::invalid(format!(
            "Inference-Header-Content-Length is {json_len} but the body has only {} bytes",
            body.len()
        )));
    }
    let parsed: JsonRequest = serde_json::from_slice(&body[..json_len])
        .map_err(|e| ServeError::invalid(format!("failed to parse the request JSON: {e}")))?;
    let mut binary = body.slice(json_len..);
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for i in parsed.inputs {
        let datatype = DataType::parse(&i.datatype)
            .ok_or_else(|| ServeError::invalid(format!("input '{}': unknown datatype '{}'", i.name, i.datatype)))?;
        let tensor = match (param_usize(i.parameters.as_ref(), "binary_data_size"), &i.data) {
            (Some(size), _) => {
                let size = size.map_err(|v| {
                    ServeError::invalid(format!(
                        "input '{}': binary_data_size must be a non-negative integer, got {v}",
                        i.name
                    ))
                })?;
                if size > binary.len() {
                    return Err(ServeError::invalid(format!(
                        "input '{}': binary_data_size is {size} but only {} bytes of binary data remain",
                        i.name,
                        binary.len()
                    )));
                }
                let raw = binary.split_to(size);
                Tensor::from_raw(i.name, datatype, i.shape, raw)?
            }
            (None, Some(data)) => Tensor::from_json_data(i.name, datatype, i.shape, data)?,
            (None, None) => {
                return Err(ServeError::invalid(format!(
                    "input '{}' has neither 'data' nor a 'binary_data_size' parameter",
                    i.name
                )))
            }
        };
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(ServeError::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    let parameters = parsed.parameters.unwrap_or_default();
    let enc = OutputEncoding { all_binary: param_bool(Some(&parameters), "binary_data_output").unwrap_or(false) };
    let outputs = parsed
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| RequestedOutput { name: o.name, parameters: o.parameters.unwrap_or_default() })
        .collect();
    let id = parsed.id.map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    });
    Ok((
        InferRequest {
            model: model.to_string(),
            version: version.map(str::to_string),
            id,
            parameters,
            inputs,
            outputs,
        },
        enc,
    ))
}

/// A raw binary request (`Inference-Header-Content-Length: 0`): the body is the one input of
/// the model, batch 1, and at most one variable dimension whose size the byte count tells.
pub fn decode_raw_request(
    model: &str,
    version: Option<&str>,
    config: &ModelConfig,
    body: Bytes,
) -> Result<InferRequest, ServeError> {
    let [input] = config.input.as_slice() else {
        return Err(ServeError::invalid(format!(
            "a raw binary request needs a model with exactly one input; '{model}' has {}",
            config.input.len()
        )));
    };
    let dt = input
        .datatype()
        .ok_or_else(|| ServeError::Internal(format!("input '{}' has an unknown data_type", input.name)))?;
    let mut shape = input.dims.clone();
    if config.max_batch_size > 0 {
        shape.insert(0, 1);
    }
    let variable: Vec<usize> = shape.iter().enumerate().filter(|(_, &d)| d < 0).map(|(i, _)| i).collect();
    match (dt.size(), variable.as_slice()) {
        (None, _) => {
            // BYTES: one element holding the whole body.
            shape.iter_mut().for_each(|d| *d = 1);
            let t = Tensor {
                name: input.name.clone(),
                datatype: dt,
                shape,
                data: sluice_types::TensorData::Bytes(vec![body]),
            };
            return Ok(InferRequest {
                model: model.into(),
                version: version.map(Into::into),
                inputs: vec![t],
                ..Default::default()
            });
        }
        (Some(_), []) => {}
        (Some(size), [i]) => {
            let fixed: i64 = shape.iter().filter(|&&d| d >= 0).product();
            let per = fixed as usize * size;
            if per == 0 || !body.len().is_multiple_of(per) {
                return Err(ServeError::invalid(format!(
                    "input '{}': raw body of {} bytes is not a whole number of {dt} elements of shape {:?}",
                    input.name,
                    body.len(),
                    shape
                )));
            }
            shape[*i] = (body.len() / per) as i64;
        }
        (Some(_), _) => {
            return Err(ServeError::invalid(format!(
                "input '{}' has more than one variable dimension ({:?}); a raw binary request cannot tell its shape",
                input.name, shape
            )))
        }
    }
    let t = Tensor::from_raw(input.name.clone(), dt, shape, body)?;
    Ok(InferRequest { model: model.into(), version: version.map(Into::into), inputs: vec![t], ..Default::default() })
}

#[derive(Serialize)]
struct JsonResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: &'a Parameters,
    outputs: Vec<JsonOutputTensor<'a>>,
}

#[derive(Serialize)]
struct JsonOutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// Encodes a response. Returns the body and, when some output is binary, the JSON length for
/// `Inference-Header-Content-Length`.
pub fn encode_response(
    resp: &InferResponse,
    requested: &[RequestedOutput],
    enc: &OutputEncoding,
) -> (Bytes, Option<usize>) {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut binary: Vec<Bytes> = Vec::new();
    for t in &resp.outputs {
        let params = requested.iter().find(|r| r.name == t.name).map(|r| &r.parameters);
        let as_binary = param_bool(params, "binary_data").unwrap_or(enc.all_binary)
            // JSON cannot carry FP16/BF16 exactly; Triton insists on binary for them too.
            || matches!(t.datatype, DataType::Fp16 | DataType::Bf16);
        let mut o = JsonOutputTensor {
            name: &t.name,
            datatype: t.datatype.as_str(),
            shape: &t.shape,
            parameters: None,
            data: None,
        };
        if as_binary {
            let raw = t.to_raw();
            o.parameters = Some(BinarySize { binary_data_size: raw.len() });
            binary.push(raw);
        } else {
            o.data = Some(DataJson(t));
        }
        outputs.push(o);
    }
    let head = JsonResponse {
        model_name: &resp.model_name,
        model_version: &resp.model_version,
        id: resp.id.as_deref(),
        parameters: &resp.parameters,
        outputs,
    };
    let binary_len: usize = binary.iter().map(|b| b.len()).sum();
    let mut out = BytesMut::with_capacity(256 + binary_len).writer();
    // Serializing plain structs into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, &head);
    let mut out = out.into_inner();
    if binary.is_empty() {
        return (out.freeze(), None);
    }
    let json_len = out.len();
    for b in &binary {
        out.put_slice(b);
    }
    (out.freeze(), Some(json_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_request_round_trip() {
        let body = br#"{"id":"7","inputs":[{"name":"A","shape":[1,2],"datatype":"FP32","data":[[1,2]]}],
            "outputs":[{"name":"B","parameters":{"binary_data":true}}]}"#;
        let (req, enc) = decode_request("m", None, Bytes::from_static(body), None).unwrap();
        assert_eq!(req.id.as_deref(), Some("7"));
        assert_eq!(req.inputs[0].to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        assert!(!enc.all_binary);
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: req.id.clone(),
            parameters: Default::default(),
            outputs: vec![Tensor::from_vec("B", vec![2], vec![3f32, 4.0]), Tensor::from_vec("C", vec![1], vec![5i64])],
        };
        let (body, hlen) = encode_response(&resp, &req.outputs, &enc);
        let hlen = hlen.unwrap();
        let head: Value = serde_json::from_slice(&body[..hlen]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(head["outputs"][1]["data"], json!([5]));
        assert_eq!(&body[hlen..], bytemuck::cast_slice::<f32, u8>(&[3.0, 4.0]));
    }

    #[test]
    fn binary_request() {
        let head = br#"{"inputs":[{"name":"A","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},
            {"name":"S","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}],
            "parameters":{"binary_data_output":true}}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(bytemuck::cast_slice::<i32, u8>(&[5, -6]));
        body.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
        let (req, enc) = decode_request("m", Some("2"), Bytes::from(body), Some(head.len())).unwrap();
        assert!(enc.all_binary);
        assert_eq!(req.version.as_deref(), Some("2"));
        assert_eq!(req.inputs[0].to_vec::<i32>().unwrap(), vec![5, -6]);
        assert_eq!(req.inputs[1].data, sluice_types::TensorData::Bytes(vec![Bytes::from_static(b"abc")]));
    }

    #[test]
    fn bad_requests_say_why() {
        let e = decode_request("m", None, Bytes::from_static(b"{nope"), None).unwrap_err();
        assert!(e.to_string().starts_with("failed to parse the request JSON"), "{e}");
        let e = decode_request(
            "m",
            None,
            Bytes::from_static(br#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP33","data":[1]}]}"#),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown datatype 'FP33'"), "{e}");
        let e = decode_request(
            "m",
            None,
            Bytes::from_static(
                br#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
            ),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("only 0 bytes"), "{e}");
        let e = decode_request("m", None, Bytes::from_static(b"{}"), Some(10)).unwrap_err();
        assert!(e.to_string().contains("Inference-Header-Content-Length"), "{e}");
    }
}
