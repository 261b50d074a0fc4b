//! Triton's model configuration (the fields that matter for serving), as plain data.
//! Field names follow `model_config.proto`, so the JSON form is what Triton's
//! `/v2/models/{m}/config` answers. Parsing of `config.pbtxt` lives in `sluice-repository`;
//! it produces the same JSON shape, which deserializes into these structs.

use std::collections::BTreeMap;

use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::DataType;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    pub runtime: String,
    pub version_policy: VersionPolicy,
    #[serde(deserialize_with = "de_num")]
    pub max_batch_size: u32,
    #[serde(deserialize_with = "de_list")]
    pub input: Vec<TensorConfig>,
    #[serde(deserialize_with = "de_list")]
    pub output: Vec<TensorConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    #[serde(deserialize_with = "de_list")]
    pub instance_group: Vec<InstanceGroup>,
    pub default_model_filename: String,
    #[serde(deserialize_with = "de_map")]
    pub parameters: BTreeMap<String, ModelParameter>,
    #[serde(deserialize_with = "de_list")]
    pub model_warmup: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_transaction_policy: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_batching: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble_scheduling: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimization: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TensorConfig {
    pub name: String,
    pub data_type: String,
    #[serde(deserialize_with = "de_nums")]
    pub dims: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reshape: Option<Reshape>,
    pub optional: bool,
    pub allow_ragged_batch: bool,
    pub is_shape_tensor: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label_filename: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reshape {
    #[serde(deserialize_with = "de_nums")]
    pub shape: Vec<i64>,
}

/// Exactly one of the three is set; none set means `latest { num_versions: 1 }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<LatestPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specific: Option<SpecificPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatestPolicy {
    #[serde(deserialize_with = "de_num")]
    pub num_versions: u32,
}

impl Default for LatestPolicy {
    fn default() -> Self {
        LatestPolicy { num_versions: 1 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecificPolicy {
    #[serde(deserialize_with = "de_nums")]
    pub versions: Vec<i64>,
}

impl VersionPolicy {
    /// The versions to serve, out of those present on disk.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = available.to_vec();
        v.sort_unstable();
        if self.all.is_some() {
            return v;
        }
        if let Some(s) = &self.specific {
            return v.into_iter().filter(|x| s.versions.contains(&(*x as i64))).collect();
        }
        let n = self.latest.as_ref().map_or(1, |l| l.num_versions.max(1)) as usize;
        let skip = v.len().saturating_sub(n);
        v.split_off(skip)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicBatching {
    #[serde(deserialize_with = "de_nums")]
    pub preferred_batch_size: Vec<i64>,
    #[serde(deserialize_with = "de_num")]
    pub max_queue_delay_microseconds: u64,
    pub preserve_ordering: bool,
    #[serde(deserialize_with = "de_num")]
    pub priority_levels: u64,
    #[serde(deserialize_with = "de_num")]
    pub default_priority_level: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_queue_policy: Option<QueuePolicy>,
    #[serde(deserialize_with = "de_map")]
    pub priority_queue_policy: BTreeMap<String, QueuePolicy>,
    /// Sluice's extension: let the scheduler pick delay and batch size for a p99 target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueuePolicy {
    /// `REJECT` (default) or `DELAY`.
    pub timeout_action: String,
    #[serde(deserialize_with = "de_num")]
    pub default_timeout_microseconds: u64,
    pub allow_timeout_override: bool,
    #[serde(deserialize_with = "de_num")]
    pub max_queue_size: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceGroup {
    pub name: String,
    /// `KIND_AUTO`, `KIND_CPU`, `KIND_GPU`, `KIND_MODEL`.
    pub kind: String,
    #[serde(deserialize_with = "de_num")]
    pub count: u32,
    #[serde(deserialize_with = "de_nums")]
    pub gpus: Vec<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelParameter {
    pub string_value: String,
}

impl TensorConfig {
    pub fn datatype(&self) -> Option<DataType> {
        DataType::from_config_name(&self.data_type)
    }
}

/// How a model's threads share the CPU with other models: Triton's `optimization { priority }`.
/// Triton maps it to CUDA stream priorities; on the CPU Sluice runs a `PRIORITY_MIN` model's
/// threads (its instances' and ONNX Runtime's or candle's compute threads) at the lowest
/// scheduling priority, so that a shadow candidate or a batch model yields the cores to live
/// traffic. `PRIORITY_MAX` is accepted and runs as the default: raising a thread's priority needs
/// a privilege a server should not hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuPriority {
    #[default]
    Default,
    Max,
    Min,
}

impl CpuPriority {
    /// The names Triton's model config uses (also the enum's numbers, as JSON configs may carry).
    pub const NAMES: [&'static str; 3] = ["PRIORITY_DEFAULT", "PRIORITY_MAX", "PRIORITY_MIN"];
}

impl ModelConfig {
    /// Number of execution instances: the sum over instance groups, at least one.
    pub fn instance_count(&self) -> usize {
        let n: u32 = self.instance_group.iter().map(|g| g.count.max(1)).sum();
        n.max(1) as usize
    }

    /// `optimization.priority`, or an error naming the field and the values it takes.
    pub fn cpu_priority(&self) -> Result<CpuPriority, String> {
        let Some(v) = self.optimization.as_ref().and_then(|o| o.get("priority")) else {
            return Ok(CpuPriority::Default);
        };
        match (v.as_str(), v.as_u64()) {
            (Some("PRIORITY_DEFAULT"), _) | (_, Some(0)) => Ok(CpuPriority::Default),
            (Some("PRIORITY_MAX"), _) | (_, Some(1)) => Ok(CpuPriority::Max),
            (Some("PRIORITY_MIN"), _) | (_, Some(2)) => Ok(CpuPriority::Min),
            _ => Err(format!("optimization.priority is {v}, expected one of {}", CpuPriority::NAMES.join(", "))),
        }
    }

    /// A string parameter from `parameters { key: ... value: { string_value: ... } }`.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        self.parameters.get(key).map(|p| p.string_value.as_str())
    }

    /// The full request shape of an input or output: `[-1] + dims` when the model batches.
    pub fn full_shape(&self, t: &TensorConfig) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(-1).chain(t.dims.iter().copied()).collect()
        } else {
            t.dims.clone()
        }
    }

    /// Inputs or outputs as model metadata shows them (V2 datatype names, full shapes).
    pub fn tensor_metadata(&self, ts: &[TensorConfig]) -> Vec<crate::api::TensorMetadata> {
        ts.iter()
            .map(|t| crate::api::TensorMetadata {
                name: t.name.clone(),
                datatype: t.datatype().map(|d| d.as_str().to_string()).unwrap_or_else(|| t.data_type.clone()),
                shape: self.full_shape(t),
            })
            .collect()
    }
}

// --- lenient deserializers: protobuf JSON writes 64-bit ints as strings, pbtxt gives a single
// value where a repeated field has one element, and maps come either as objects or as lists of
// {key, value} entries.

fn to_i64<E: de::Error>(v: &Value) -> Result<i64, E> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| E::custom(format!("expected an integer, got {n}"))),
        Value::String(s) => s.trim().parse().map_err(|_| E::custom(format!("expected an integer, got \"{s}\""))),
        other => Err(E::custom(format!("expected an integer, got {other}"))),
    }
}

fn de_num<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let v = Value::deserialize(d)?;
    let n = to_i64::<D::Error>(&v)?;
    T::try_from(n).map_err(|_| de::Error::custom(format!("{n} is out of range")))
}

fn de_nums<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Array(items) => items.iter().map(to_i64::<D::Error>).collect(),
        Value::Null => Ok(vec![]),
        v => Ok(vec![to_i64::<D::Error>(&v)?]),
    }
}

fn de_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: de::DeserializeOwned,
{
    let items = match Value::deserialize(d)? {
        Value::Array(items) => items,
        Value::Null => vec![],
        v => vec![v],
    };
    items.into_iter().map(|v| serde_json::from_value(v).map_err(de::Error::custom)).collect()
}

fn de_map<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: de::DeserializeOwned,
{
    let entries: Vec<(String, Value)> = match Value::deserialize(d)? {
        // A single pbtxt map entry arrives as one `{key, value}` object.
        Value::Object(m) if m.contains_key("key") && m.keys().all(|k| k == "key" || k == "value") => {
            vec![key_value::<D::Error>(Value::Object(m))?]
        }
        Value::Object(m) => m.into_iter().collect(),
        Value::Null => vec![],
        Value::Array(items) => items.into_iter().map(key_value::<D::Error>).collect::<Result<_, _>>()?,
        v => vec![key_value::<D::Error>(v)?],
    };
    entries.into_iter().map(|(k, v)| Ok((k, serde_json::from_value(v).map_err(de::Error::custom)?))).collect()
}

fn key_value<E: de::Error>(v: Value) -> Result<(String, Value), E> {
    let Value::Object(mut m) = v else {
        return Err(E::custom("expected a { key, value } entry"));
    };
    let key = match m.remove("key") {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(E::custom("map entry without a key")),
    };
    Ok((key, m.remove("value").unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_json() {
        let c: ModelConfig = serde_json::from_value(json!({
            "name": "m", "max_batch_size": "8",
            "input": {"name": "A", "data_type": "TYPE_FP32", "dims": 16},
            "output": [{"name": "B", "data_type": "TYPE_FP32", "dims": ["-1", 2]}],
            "parameters": [{"key": "k", "value": {"string_value": "v"}}],
            "dynamic_batching": {"priority_queue_policy": {"key": 1, "value": {"max_queue_size": 4}}},
            "instance_group": [{"count": 2, "kind": "KIND_CPU"}]
        }))
        .unwrap();
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input[0].dims, vec![16]);
        assert_eq!(c.output[0].dims, vec![-1, 2]);
        assert_eq!(c.parameter("k"), Some("v"));
        assert_eq!(c.dynamic_batching.as_ref().unwrap().priority_queue_policy["1"].max_queue_size, 4);
        assert_eq!(c.instance_count(), 2);
    }

    #[test]
    fn version_policy_selects() {
        let avail = [3, 1, 2];
        assert_eq!(VersionPolicy::default().select(&avail), vec![3]);
        let p = VersionPolicy { latest: Some(LatestPolicy { num_versions: 2 }), ..Default::default() };
        assert_eq!(p.select(&avail), vec![2, 3]);
        let p = VersionPolicy { all: Some(json!({})), ..Default::default() };
        assert_eq!(p.select(&avail), vec![1, 2, 3]);
        let p = VersionPolicy { specific: Some(SpecificPolicy { versions: vec![1, 3, 7] }), ..Default::default() };
        assert_eq!(p.select(&avail), vec![1, 3]);
    }
}
