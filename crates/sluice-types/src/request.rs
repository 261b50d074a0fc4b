//! Inference requests and responses, independent of the wire they came on.

use serde_json::{Map, Value};

use crate::Tensor;

/// Request or tensor parameters: values are strings, numbers or booleans.
pub type Parameters = Map<String, Value>;

/// An output the client asked for, with its parameters (`binary_data`, `classification`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    pub parameters: Parameters,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferRequest {
    pub model: String,
    /// `None` = the version the policy picks (the newest ready one).
    pub version: Option<String>,
    pub id: Option<String>,
    pub parameters: Parameters,
    pub inputs: Vec<Tensor>,
    /// Empty = every output of the model.
    pub outputs: Vec<RequestedOutput>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub parameters: Parameters,
    pub outputs: Vec<Tensor>,
}

/// Where the time of one request went, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub queue_ns: u64,
    pub compute_input_ns: u64,
    pub compute_infer_ns: u64,
    pub compute_output_ns: u64,
}

impl InferRequest {
    pub fn input(&self, name: &str) -> Option<&Tensor> {
        self.inputs.iter().find(|t| t.name == name)
    }

    /// An integer request parameter (accepts numbers and numeric strings).
    pub fn int_parameter(&self, key: &str) -> Option<i64> {
        match self.parameters.get(key)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}
