//! The non-inference answers as protobuf: model configuration (Triton's `model_config.proto`),
//! statistics, metadata and the repository index.

use std::collections::HashMap;

use serde_json::Value;
use sluice_types::api::{
    BatchStats, IndexEntry, InferenceStats, ModelMetadata, ModelStatistics, StatDuration, TensorMetadata,
};
use sluice_types::config::{DynamicBatching, InstanceGroup, QueuePolicy, TensorConfig, VersionPolicy};
use sluice_types::{DataType, ModelConfig};

use super::pb;

fn data_type(name: &str) -> i32 {
    let dt = match DataType::from_config_name(name) {
        None => pb::DataType::TypeInvalid,
        Some(DataType::Bool) => pb::DataType::TypeBool,
        Some(DataType::Uint8) => pb::DataType::TypeUint8,
        Some(DataType::Uint16) => pb::DataType::TypeUint16,
        Some(DataType::Uint32) => pb::DataType::TypeUint32,
        Some(DataType::Uint64) => pb::DataType::TypeUint64,
        Some(DataType::Int8) => pb::DataType::TypeInt8,
        Some(DataType::Int16) => pb::DataType::TypeInt16,
        Some(DataType::Int32) => pb::DataType::TypeInt32,
        Some(DataType::Int64) => pb::DataType::TypeInt64,
        Some(DataType::Fp16) => pb::DataType::TypeFp16,
        Some(DataType::Bf16) => pb::DataType::TypeBf16,
        Some(DataType::Fp32) => pb::DataType::TypeFp32,
        Some(DataType::Fp64) => pb::DataType::TypeFp64,
        Some(DataType::Bytes) => pb::DataType::TypeString,
    };
    dt as i32
}

fn saturate_i32(v: i64) -> i32 {
    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

fn reshape(t: &TensorConfig) -> Option<pb::ModelTensorReshape> {
    t.reshape.as_ref().map(|r| pb::ModelTensorReshape { shape: r.shape.clone() })
}

fn input(t: &TensorConfig) -> pb::ModelInput {
    pb::ModelInput {
        name: t.name.clone(),
        data_type: data_type(&t.data_type),
        format: pb::model_input::Format::None as i32,
        dims: t.dims.clone(),
        reshape: reshape(t),
        is_shape_tensor: t.is_shape_tensor,
        allow_ragged_batch: t.allow_ragged_batch,
        optional: t.optional,
        is_non_linear_format_io: false,
    }
}

fn output(t: &TensorConfig) -> pb::ModelOutput {
    pb::ModelOutput {
        name: t.name.clone(),
        data_type: data_type(&t.data_type),
        dims: t.dims.clone(),
        reshape: reshape(t),
        label_filename: t.label_filename.clone(),
        is_shape_tensor: t.is_shape_tensor,
        is_non_linear_format_io: false,
    }
}

fn version_policy(p: &VersionPolicy) -> pb::ModelVersionPolicy {
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let choice = if p.all.is_some() {
        PolicyChoice::All(All {})
    } else if let Some(s) = &p.specific {
        PolicyChoice::Specific(Specific { versions: s.versions.clone() })
    } else {
        PolicyChoice::Latest(Latest { num_versions: p.latest.as_ref().map_or(1, |l| l.num_versions) })
    };
    pb::ModelVersionPolicy { policy_choice: Some(choice) }
}

fn queue_policy(q: &QueuePolicy) -> pb::ModelQueuePolicy {
    use pb::model_queue_policy::TimeoutAction;
    let action =
        if q.timeout_action.eq_ignore_ascii_case("DELAY") { TimeoutAction::Delay } else { TimeoutAction::Reject };
    pb::ModelQueuePolicy {
        timeout_action: action as i32,
        default_timeout_microseconds: q.default_timeout_microseconds,
        allow_timeout_override: q.allow_timeout_override,
        max_queue_size: u32::try_from(q.max_queue_size).unwrap_or(u32::MAX),
    }
}

fn dynamic_batching(d: &DynamicBatching) -> pb::ModelDynamicBatching {
    pb::ModelDynamicBatching {
        preferred_batch_size: d.preferred_batch_size.iter().map(|&b| saturate_i32(b)).collect(),
        max_queue_delay_microseconds: d.max_queue_delay_microseconds,
        preserve_ordering: d.preserve_ordering,
        priority_levels: d.priority_levels,
        default_priority_level: d.default_priority_level,
        default_queue_policy: d.default_queue_policy.as_ref().map(queue_policy),
        priority_queue_policy: d
            .priority_queue_policy
            .iter()
            .filter_map(|(level, q)| Some((level.trim().parse::<u64>().ok()?, queue_policy(q))))
            .collect(),
    }
}

fn instance_group(g: &InstanceGroup) -> pb::ModelInstanceGroup {
    use pb::model_instance_group::Kind;
    let kind = match g.kind.as_str() {
        "KIND_GPU" => Kind::Gpu,
        "KIND_CPU" => Kind::Cpu,
        "KIND_MODEL" => Kind::Model,
        _ => Kind::Auto,
    };
    pb::ModelInstanceGroup {
        name: g.name.clone(),
        kind: kind as i32,
        count: i32::try_from(g.count).unwrap_or(i32::MAX),
        gpus: g.gpus.iter().map(|&x| saturate_i32(x)).collect(),
        ..Default::default()
    }
}

/// An ensemble's steps from the normalized JSON (`{"step": [{"model_name", "model_version",
/// "input_map": {..}, "output_map": {..}}]}`).
fn ensemble(e: &Value) -> pb::ModelEnsembling {
    let map = |v: &Value| -> HashMap<String, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect()
    };
    let version = |v: &Value| match v {
        Value::Number(n) => n.as_i64().unwrap_or(-1),
        Value::String(s) => s.parse().unwrap_or(-1),
        _ => -1,
    };
    pb::ModelEnsembling {
        step: e["step"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| pb::model_ensembling::Step {
                model_name: s["model_name"].as_str().unwrap_or_default().to_string(),
                model_version: version(&s["model_version"]),
                input_map: map(&s["input_map"]),
                output_map: map(&s["output_map"]),
                model_namespace: String::new(),
            })
            .collect(),
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        _ => false,
    }
}

/// Triton's `ModelConfig` message from the served configuration. Fields Sluice keeps only as
/// free-form JSON (sequence batching, optimization, warmup) are not sent; an ensemble's steps are.
pub fn model_config(c: &ModelConfig) -> pb::ModelConfig {
    pb::ModelConfig {
        name: c.name.clone(),
        platform: c.platform.clone(),
        backend: c.backend.clone(),
        runtime: c.runtime.clone(),
        version_policy: Some(version_policy(&c.version_policy)),
        max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
        input: c.input.iter().map(input).collect(),
        output: c.output.iter().map(output).collect(),
        scheduling_choice: match (&c.dynamic_batching, &c.ensemble_scheduling) {
            (Some(d), _) => Some(pb::model_config::SchedulingChoice::DynamicBatching(dynamic_batching(d))),
            (None, Some(e)) => Some(pb::model_config::SchedulingChoice::EnsembleScheduling(ensemble(e))),
            (None, None) => None,
        },
        instance_group: c.instance_group.iter().map(instance_group).collect(),
        default_model_filename: c.default_model_filename.clone(),
        cc_model_filenames: HashMap::new(),
        metric_tags: HashMap::new(),
        parameters: c
            .parameters
            .iter()
            .map(|(k, p)| (k.clone(), pb::ModelParameter { string_value: p.string_value.clone() }))
            .collect(),
        model_transaction_policy: c
            .model_transaction_policy
            .as_ref()
            .map(|p| pb::ModelTransactionPolicy { decoupled: truthy(p.get("decoupled")) }),
    }
}

fn duration(d: &StatDuration) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count: d.count, ns: d.ns })
}

/// A `{count, ns}` JSON object (as the statistics' free-form parts hold them).
fn json_duration(v: Option<&Value>) -> Option<pb::StatisticDuration> {
    let n = |k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_u64).unwrap_or(0);
    Some(pb::StatisticDuration { count: n("count"), ns: n("ns") })
}

fn inference_stats(s: &InferenceStats) -> pb::InferStatistics {
    pb::InferStatistics {
        success: duration(&s.success),
        fail: duration(&s.fail),
        queue: duration(&s.queue),
        compute_input: duration(&s.compute_input),
        compute_infer: duration(&s.compute_infer),
        compute_output: duration(&s.compute_output),
        cache_hit: duration(&s.cache_hit),
        cache_miss: duration(&s.cache_miss),
    }
}

fn batch_stats(b: &BatchStats) -> pb::InferBatchStatistics {
    pb::InferBatchStatistics {
        batch_size: b.batch_size,
        compute_input: duration(&b.compute_input),
        compute_infer: duration(&b.compute_infer),
        compute_output: duration(&b.compute_output),
    }
}

fn response_stats(v: &Value) -> pb::InferResponseStatistics {
    pb::InferResponseStatistics {
        compute_infer: json_duration(v.get("compute_infer")),
        compute_output: json_duration(v.get("compute_output")),
        success: json_duration(v.get("success")),
        fail: json_duration(v.get("fail")),
        empty_response: json_duration(v.get("empty_response")),
        cancel: json_duration(v.get("cancel")),
    }
}

fn memory_usage(v: &Value) -> pb::MemoryUsage {
    pb::MemoryUsage {
        r#type: v.get("type").and_then(Value::as_str).unwrap_or_default().to_string(),
        id: v.get("id").and_then(Value::as_i64).unwrap_or(0),
        byte_size: v.get("byte_size").and_then(Value::as_u64).unwrap_or(0),
    }
}

pub fn statistics(s: &ModelStatistics) -> pb::ModelStatistics {
    pb::ModelStatistics {
        name: s.name.clone(),
        version: s.version.clone(),
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(inference_stats(&s.inference_stats)),
        batch_stats: s.batch_stats.iter().map(batch_stats).collect(),
        memory_usage: s.memory_usage.iter().map(memory_usage).collect(),
        response_stats: s.response_stats.iter().map(|(k, v)| (k.clone(), response_stats(v))).collect(),
    }
}

fn tensor_metadata(t: &TensorMetadata) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: t.name.clone(),
        datatype: t.datatype.clone(),
        shape: t.shape.clone(),
    }
}

pub fn model_metadata(m: &ModelMetadata) -> pb::ModelMetadataResponse {
    pb::ModelMetadataResponse {
        name: m.name.clone(),
        versions: m.versions.clone(),
        platform: m.platform.clone(),
        inputs: m.inputs.iter().map(tensor_metadata).collect(),
        outputs: m.outputs.iter().map(tensor_metadata).collect(),
    }
}

pub fn index_entry(e: &IndexEntry) -> pb::repository_index_response::ModelIndex {
    pb::repository_index_response::ModelIndex {
        name: e.name.clone(),
        version: e.version.clone(),
        state: e.state.as_str().to_string(),
        reason: e.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_maps_triton_fields() {
        let c: ModelConfig = serde_json::from_value(json!({
            "name": "m", "backend": "onnxruntime", "max_batch_size": 8,
            "input": [{"name": "A", "data_type": "TYPE_FP32", "dims": [-1, 16], "reshape": {"shape": [16]}}],
            "output": [{"name": "B", "data_type": "TYPE_STRING", "dims": [1]}],
            "version_policy": {"specific": {"versions": [1, 3]}},
            "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 100,
                "default_queue_policy": {"timeout_action": "DELAY", "max_queue_size": 5},
                "priority_queue_policy": {"1": {"max_queue_size": 2}}},
            "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
            "parameters": {"k": {"string_value": "v"}},
            "model_transaction_policy": {"decoupled": true}
        }))
        .unwrap();
        let p = model_config(&c);
        assert_eq!(p.max_batch_size, 8);
        assert_eq!(p.input[0].data_type, pb::DataType::TypeFp32 as i32);
        assert_eq!(p.input[0].reshape.as_ref().unwrap().shape, vec![16]);
        assert_eq!(p.output[0].data_type, pb::DataType::TypeString as i32);
        let Some(pb::model_version_policy::PolicyChoice::Specific(s)) = p.version_policy.unwrap().policy_choice else {
            panic!("specific policy expected")
        };
        assert_eq!(s.versions, vec![1, 3]);
        let Some(pb::model_config::SchedulingChoice::DynamicBatching(d)) = p.scheduling_choice else {
            panic!("dynamic batching expected")
        };
        assert_eq!(d.preferred_batch_size, vec![4]);
        let q = d.default_queue_policy.unwrap();
        assert_eq!((q.timeout_action, q.max_queue_size), (pb::model_queue_policy::TimeoutAction::Delay as i32, 5));
        assert_eq!(d.priority_queue_policy[&1].max_queue_size, 2);
        assert_eq!(p.instance_group[0].kind, pb::model_instance_group::Kind::Cpu as i32);
        assert_eq!(p.parameters["k"].string_value, "v");
        assert!(p.model_transaction_policy.unwrap().decoupled);
    }
}
