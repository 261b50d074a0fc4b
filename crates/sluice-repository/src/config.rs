//! Reading and checking a model's configuration: `config.pbtxt` (protobuf text format, as
//! Triton), `config.yaml`/`config.yml`, or `config.json`, all into the one
//! [`ModelConfig`].
//!
//! Every format goes through `serde_json::Value`. After deserializing, the fields that
//! `ModelConfig` keeps as raw JSON (`ensemble_scheduling`, `sequence_batching`, `optimization`,
//! `model_warmup`) are normalized to the shape Triton's JSON uses: repeated fields are arrays
//! and map fields are objects, whichever way the file wrote them.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sluice_types::config::{ModelConfig, QueuePolicy, TensorConfig};
use sluice_types::{DataType, ServeError};

use crate::pbtxt;

/// The syntax a configuration is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigFormat {
    Pbtxt,
    Yaml,
    Json,
}

impl ConfigFormat {
    /// The format of a config file by its name (`config.pbtxt`, `x.yaml`, `x.yml`, `x.json`).
    pub fn from_path(path: &Path) -> Option<ConfigFormat> {
        match path.extension()?.to_str()? {
            "pbtxt" => Some(ConfigFormat::Pbtxt),
            "yaml" | "yml" => Some(ConfigFormat::Yaml),
            "json" => Some(ConfigFormat::Json),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigFormat::Pbtxt => "pbtxt",
            ConfigFormat::Yaml => "YAML",
            ConfigFormat::Json => "JSON",
        })
    }
}

/// The config file names looked for in a model directory, in order of preference.
pub const CONFIG_FILE_NAMES: [&str; 4] = ["config.pbtxt", "config.yaml", "config.yml", "config.json"];

/// Reads the configuration of the model in `model_dir`: `config.pbtxt`, else `config.yaml` /
/// `config.yml`, else `config.json`. `Ok(None)` when there is none (the model may still load
/// with an auto-completed configuration). More than one config file is an error, as is a file
/// that does not parse; the message names the file and, for syntax errors, the position.
/// The result is not validated: see [`validate_config`].
pub fn read_model_config(model_dir: &Path) -> Result<Option<ModelConfig>, ServeError> {
    let present: Vec<PathBuf> = CONFIG_FILE_NAMES.iter().map(|n| model_dir.join(n)).filter(|p| p.is_file()).collect();
    let path = match present.as_slice() {
        [] => return Ok(None),
        [one] => one,
        several => {
            let names: Vec<String> =
                several.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
            return Err(ServeError::invalid(format!(
                "model directory {} has more than one config file ({}); keep only one",
                model_dir.display(),
                names.join(", ")
            )));
        }
    };
    let format = ConfigFormat::from_path(path).unwrap_or(ConfigFormat::Pbtxt);
    let bytes =
        std::fs::read(path).map_err(|e| ServeError::Internal(format!("failed to read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        ServeError::invalid(format!(
            "failed to parse {}: not valid UTF-8 (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_model_config(&text, format)
        .map(Some)
        .map_err(|e| ServeError::invalid(format!("failed to parse {}: {e}", path.display())))
}

/// Parses a configuration given as text (the repository load API sends it as JSON inline).
/// Empty or whitespace-only text is an empty configuration. The result is not validated.
pub fn parse_model_config(text: &str, format: ConfigFormat) -> Result<ModelConfig, ServeError> {
    let value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match format {
            ConfigFormat::Pbtxt => pbtxt::parse(text).map_err(|e| ServeError::invalid(e.to_string()))?,
            ConfigFormat::Json => serde_json::from_str::<Value>(text).map_err(|e| {
                ServeError::invalid(format!("line {}, column {}: {}", e.line(), e.column(), json_message(&e)))
            })?,
            ConfigFormat::Yaml => {
                let y: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
                    let msg = e.to_string();
                    match e.location() {
                        Some(l) if !msg.contains("line ") => {
                            ServeError::invalid(format!("line {}, column {}: {msg}", l.line(), l.column()))
                        }
                        _ => ServeError::invalid(msg),
                    }
                })?;
                yaml_to_json(y).map_err(ServeError::invalid)?
            }
        }
    };
    config_from_value(value, format)
}

/// serde_json's message without its trailing " at line L column C" (reported separately).
fn json_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

fn config_from_value(value: Value, format: ConfigFormat) -> Result<ModelConfig, ServeError> {
    let value = match value {
        Value::Null => Value::Object(Map::new()),
        v @ Value::Object(_) => v,
        other => {
            return Err(ServeError::invalid(format!(
                "expected the {format} configuration to be a message/object of fields, got {}",
                kind(&other)
            )))
        }
    };
    match serde_json::from_value::<ModelConfig>(value.clone()) {
        Ok(mut config) => {
            normalize(&mut config);
            Ok(config)
        }
        Err(e) => Err(ServeError::invalid(locate_error(&value).unwrap_or_else(|| e.to_string()))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// serde's errors for custom deserializers do not say which field failed; find it by
/// deserializing one top-level field (and one list element) at a time.
fn locate_error(value: &Value) -> Option<String> {
    let Value::Object(fields) = value else {
        return None;
    };
    for (key, v) in fields {
        let one = |v: &Value| {
            let mut m = Map::new();
            m.insert(key.clone(), v.clone());
            serde_json::from_value::<ModelConfig>(Value::Object(m)).err()
        };
        let Some(err) = one(v) else { continue };
        if let Value::Array(items) = v {
            for (i, item) in items.iter().enumerate() {
                if let Some(e) = one(item) {
                    let what =
                        item.get("name").and_then(Value::as_str).map(|n| format!(" ('{n}')")).unwrap_or_default();
                    return Some(format!("field `{key}`[{i}]{what}: {e}"));
                }
            }
        }
        return Some(format!("field `{key}`: {err}"));
    }
    None
}

/// YAML to JSON, with scalar map keys (`1:` under `priority_queue_policy`) as strings.
fn yaml_to_json(y: serde_yaml::Value) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match y {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f).map_or_else(|| Value::String(n.to_string()), Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => return Err(format!("map keys must be strings or numbers, got {other:?}")),
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value)?,
    })
}

// --- normalization of the raw-JSON parts to Triton's JSON shape

/// Makes `v` an array: a single value becomes a one-element list, null an empty one.
fn list(v: &mut Value) {
    match v {
        Value::Array(_) => {}
        Value::Null => *v = Value::Array(vec![]),
        _ => *v = Value::Array(vec![v.take()]),
    }
}

fn is_entry(m: &Map<String, Value>) -> bool {
    m.contains_key("key") && m.keys().all(|k| k == "key" || k == "value")
}

/// Makes `v` a JSON object from a list of `{key, value}` entries (text format's map syntax).
fn map_object(v: &mut Value) {
    let entries = match v {
        Value::Object(m) if !is_entry(m) => return,
        Value::Array(items) if !items.iter().all(|i| matches!(i, Value::Object(m) if is_entry(m))) => return,
        Value::Null => {
            *v = Value::Object(Map::new());
            return;
        }
        Value::Object(_) => vec![v.take()],
        Value::Array(items) => std::mem::take(items),
        _ => return,
    };
    let mut out = Map::new();
    for e in entries {
        if let Value::Object(mut m) = e {
            let key = match m.remove("key") {
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => continue,
            };
            out.insert(key, m.remove("value").unwrap_or(Value::Null));
        }
    }
    *v = Value::Object(out);
}

/// Applies `f` to `v[key]` when present.
fn at(v: &mut Value, key: &str, f: impl FnOnce(&mut Value)) {
    if let Some(x) = v.get_mut(key) {
        f(x);
    }
}

/// Makes `v[key]` a list and applies `f` to each element.
fn each(v: &mut Value, key: &str, f: impl Fn(&mut Value)) {
    at(v, key, |x| {
        list(x);
        if let Value::Array(items) = x {
            items.iter_mut().for_each(f);
        }
    });
}

/// Makes `v[key]` a map object and applies `f` to each value.
fn each_value(v: &mut Value, key: &str, f: impl Fn(&mut Value)) {
    at(v, key, |x| {
        map_object(x);
        if let Value::Object(m) = x {
            m.values_mut().for_each(f);
        }
    });
}

fn lists(v: &mut Value, keys: &[&str]) {
    for k in keys {
        at(v, k, list);
    }
}

fn normalize(config: &mut ModelConfig) {
    for w in &mut config.model_warmup {
        each_value(w, "inputs", |i| lists(i, &["dims"]));
    }
    if let Some(e) = &mut config.ensemble_scheduling {
        each(e, "step", |s| {
            at(s, "input_map", map_object);
            at(s, "output_map", map_object);
        });
    }
    if let Some(s) = &mut config.sequence_batching {
        each(s, "control_input", |c| {
            each(c, "control", |k| lists(k, &["int32_false_true", "fp32_false_true", "bool_false_true"]));
        });
        each(s, "state", |st| {
            lists(st, &["dims"]);
            each(st, "initial_state", |i| lists(i, &["dims"]));
        });
        at(s, "oldest", |o| lists(o, &["preferred_batch_size"]));
    }
    if let Some(o) = &mut config.optimization {
        at(o, "cuda", |c| {
            each(c, "graph_spec", |g| {
                each_value(g, "input", |s| lists(s, &["dim"]));
                at(g, "graph_lower_bound", |b| each_value(b, "input", |s| lists(s, &["dim"])));
            });
        });
        at(o, "execution_accelerators", |a| {
            for k in ["gpu_execution_accelerator", "cpu_execution_accelerator"] {
                each(a, k, |x| at(x, "parameters", map_object));
            }
        });
    }
}

// --- validation

const TIMEOUT_ACTIONS: [&str; 2] = ["REJECT", "DELAY"];
const INSTANCE_KINDS: [&str; 4] = ["KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL"];

/// Checks a configuration for what Triton would refuse to load; the message names the field
/// and the offending value.
pub fn validate_config(config: &ModelConfig) -> Result<(), ServeError> {
    let bad = |msg: String| {
        let model = if config.name.is_empty() { String::new() } else { format!("model '{}': ", config.name) };
        Err(ServeError::invalid(format!("{model}{msg}")))
    };
    for (what, tensors) in [("input", &config.input), ("output", &config.output)] {
        if let Err(msg) = validate_tensors(what, tensors) {
            return bad(msg);
        }
    }

    let vp = &config.version_policy;
    let set = [vp.latest.is_some(), vp.all.is_some(), vp.specific.is_some()];
    if set.iter().filter(|s| **s).count() > 1 {
        return bad("version_policy sets more than one of latest, all and specific".into());
    }
    if let Some(s) = &vp.specific {
        if let Some(v) = s.versions.iter().find(|v| **v < 0) {
            return bad(format!("version_policy.specific.versions has a negative version {v}"));
        }
    }

    if let Some(db) = &config.dynamic_batching {
        if config.max_batch_size == 0 {
            return bad("dynamic_batching requires max_batch_size > 0, but max_batch_size is 0".into());
        }
        let max = i64::from(config.max_batch_size);
        if let Some(p) = db.preferred_batch_size.iter().find(|p| !(1..=max).contains(*p)) {
            return bad(format!(
                "dynamic_batching.preferred_batch_size {p} must be between 1 and max_batch_size {max}"
            ));
        }
        if db.priority_levels > 0 && db.default_priority_level > db.priority_levels {
            return bad(format!(
                "dynamic_batching.default_priority_level {} must be between 1 and priority_levels {}",
                db.default_priority_level, db.priority_levels
            ));
        }
        if let Some(q) = &db.default_queue_policy {
            if let Err(msg) = validate_queue_policy("dynamic_batching.default_queue_policy", q) {
                return bad(msg);
            }
        }
        for (level, q) in &db.priority_queue_policy {
            let field = format!("dynamic_batching.priority_queue_policy[{level}]");
            match level.trim().parse::<u64>() {
                Ok(l) if l >= 1 && l <= db.priority_levels => {}
                _ => {
                    return bad(format!(
                        "{field}: priority level '{level}' must be an integer between 1 and priority_levels {}",
                        db.priority_levels
                    ))
                }
            }
            if let Err(msg) = validate_queue_policy(&field, q) {
                return bad(msg);
            }
        }
    }

    if let Err(msg) = config.cpu_priority() {
        return bad(msg);
    }

    for (i, g) in config.instance_group.iter().enumerate() {
        let field = if g.name.is_empty() {
            format!("instance_group[{i}]")
        } else {
            format!("instance_group[{i}] ('{}')", g.name)
        };
        if !g.kind.is_empty() && !INSTANCE_KINDS.contains(&g.kind.as_str()) {
            return bad(format!("{field}: kind '{}' is not one of {}", g.kind, INSTANCE_KINDS.join(", ")));
        }
        if let Some(gpu) = g.gpus.iter().find(|g| **g < 0) {
            return bad(format!("{field}: gpus has a negative device id {gpu}"));
        }
    }
    Ok(())
}

fn validate_queue_policy(field: &str, q: &QueuePolicy) -> Result<(), String> {
    if q.timeout_action.is_empty() || TIMEOUT_ACTIONS.contains(&q.timeout_action.as_str()) {
        Ok(())
    } else {
        Err(format!("{field}.timeout_action '{}' is not REJECT or DELAY", q.timeout_action))
    }
}

fn validate_dims(field: &str, dims: &[i64]) -> Result<(), String> {
    match dims.iter().find(|d| **d < -1) {
        Some(d) => Err(format!("{field} has {d}; each dimension must be -1 (variable) or >= 0")),
        None => Ok(()),
    }
}

/// The element count of a shape when every dimension is fixed; a scalar (`[]`) counts one.
fn fixed_count(dims: &[i64]) -> Option<i128> {
    dims.iter().try_fold(1i128, |acc, d| (*d >= 0).then(|| acc.saturating_mul(i128::from(*d))))
}

fn validate_tensors(what: &str, tensors: &[TensorConfig]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (i, t) in tensors.iter().enumerate() {
        if t.name.is_empty() {
            return Err(format!("{what}[{i}] has no name"));
        }
        let field = format!("{what} '{}'", t.name);
        if !seen.insert(t.name.as_str()) {
            return Err(format!("{field} appears more than once; {what} names must be unique"));
        }
        if t.data_type.is_empty() {
            return Err(format!("{field} has no data_type"));
        }
        if DataType::from_config_name(&t.data_type).is_none() {
            return Err(format!("{field}: data_type '{}' is not a known type", t.data_type));
        }
        validate_dims(&format!("{field}: dims {:?}", t.dims), &t.dims)?;
        if let Some(r) = &t.reshape {
            validate_dims(&format!("{field}: reshape.shape {:?}", r.shape), &r.shape)?;
            if let (Some(a), Some(b)) = (fixed_count(&t.dims), fixed_count(&r.shape)) {
                if a != b {
                    return Err(format!(
                        "{field}: reshape.shape {:?} has {b} elements but dims {:?} has {a}",
                        r.shape, t.dims
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    fn message(e: ServeError) -> String {
        match e {
            ServeError::InvalidArgument(m) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    const PBTXT: &str = r#"
name: "add_sub"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { preferred_batch_size: [ 2, 4 ] }
"#;

    #[test]
    fn reads_each_format() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_model_config(dir.path()).unwrap(), None);

        write(dir.path(), "config.pbtxt", PBTXT);
        let from_pbtxt = read_model_config(dir.path()).unwrap().unwrap();
        assert_eq!(from_pbtxt.name, "add_sub");
        assert_eq!(from_pbtxt.input[0].dims, vec![4]);
        validate_config(&from_pbtxt).unwrap();
        fs::remove_file(dir.path().join("config.pbtxt")).unwrap();

        for name in ["config.yaml", "config.yml"] {
            write(
                dir.path(),
                name,
                "name: add_sub\nbackend: python\nmax_batch_size: 8\n\
                 input:\n  - name: INPUT0\n    data_type: TYPE_FP32\n    dims: [4]\n\
                 output:\n  - {name: OUTPUT0, data_type: TYPE_FP32, dims: [4]}\n\
                 dynamic_batching:\n  preferred_batch_size: [2, 4]\n",
            );
            assert_eq!(read_model_config(dir.path()).unwrap().unwrap(), from_pbtxt, "{name}");
            fs::remove_file(dir.path().join(name)).unwrap();
        }

        write(dir.path(), "config.json", &serde_json::to_string(&from_pbtxt).unwrap());
        assert_eq!(read_model_config(dir.path()).unwrap().unwrap(), from_pbtxt);
    }

    #[test]
    fn two_config_files_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config.pbtxt", PBTXT);
        write(dir.path(), "config.json", "{}");
        let m = message(read_model_config(dir.path()).unwrap_err());
        assert!(m.contains("config.pbtxt, config.json"), "{m}");
        assert!(m.contains("more than one config file"), "{m}");
    }

    #[test]
    fn parse_errors_name_the_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config.pbtxt", "name: \"m\"\nmax_batch_size 8\n");
        let m = message(read_model_config(dir.path()).unwrap_err());
        assert!(m.contains("config.pbtxt"), "{m}");
        assert!(m.contains("line 2, column 16"), "{m}");
        fs::remove_file(dir.path().join("config.pbtxt")).unwrap();

        write(dir.path(), "config.json", "{\n  \"name\": \"m\",\n  \"max_batch_size\": }\n");
        let m = message(read_model_config(dir.path()).unwrap_err());
        assert!(m.contains("config.json") && m.contains("line 3"), "{m}");
        fs::remove_file(dir.path().join("config.json")).unwrap();

        write(dir.path(), "config.yaml", "name: m\ninput: [\n  {name: x\n");
        let m = message(read_model_config(dir.path()).unwrap_err());
        assert!(m.contains("config.yaml") && m.contains("line "), "{m}");
        fs::remove_file(dir.path().join("config.yaml")).unwrap();

        write(dir.path(), "config.pbtxt", "max_batch_size: -1\n");
        let m = message(read_model_config(dir.path()).unwrap_err());
        assert!(m.contains("config.pbtxt") && m.contains("max_batch_size") && m.contains("-1"), "{m}");
    }

    #[test]
    fn data_errors_name_the_field() {
        let m = message(parse_model_config("max_batch_size: \"lots\"", ConfigFormat::Pbtxt).unwrap_err());
        assert!(m.contains("`max_batch_size`") && m.contains("lots"), "{m}");
        let m = message(
            parse_model_config(
                r#"{"input": [{"name": "a", "dims": [1]}, {"name": "b", "dims": ["x"]}]}"#,
                ConfigFormat::Json,
            )
            .unwrap_err(),
        );
        assert!(m.contains("`input`[1] ('b')"), "{m}");
        let m = message(parse_model_config("[1, 2]", ConfigFormat::Json).unwrap_err());
        assert!(m.contains("got a list"), "{m}");
    }

    #[test]
    fn inline_json_and_empty_text() {
        let c = parse_model_config(
            r#"{"name": "m", "max_batch_size": "4", "input": [{"name": "x", "data_type": "TYPE_INT32", "dims": ["-1"]}]}"#,
            ConfigFormat::Json,
        )
        .unwrap();
        assert_eq!(c.max_batch_size, 4);
        assert_eq!(c.input[0].dims, vec![-1]);
        for f in [ConfigFormat::Pbtxt, ConfigFormat::Yaml, ConfigFormat::Json] {
            assert_eq!(parse_model_config(" \n", f).unwrap(), ModelConfig::default());
        }
        assert_eq!(ConfigFormat::from_path(Path::new("a/config.yml")), Some(ConfigFormat::Yaml));
        assert_eq!(ConfigFormat::from_path(Path::new("config.txt")), None);
    }

    #[test]
    fn yaml_numeric_map_keys() {
        let c = parse_model_config(
            "max_batch_size: 4\ndynamic_batching:\n  priority_levels: 2\n  priority_queue_policy:\n    1: {max_queue_size: 3}\n    2: {timeout_action: DELAY}\n",
            ConfigFormat::Yaml,
        )
        .unwrap();
        let d = c.dynamic_batching.unwrap();
        assert_eq!(d.priority_queue_policy["1"].max_queue_size, 3);
        assert_eq!(d.priority_queue_policy["2"].timeout_action, "DELAY");
    }

    #[test]
    fn raw_parts_are_normalized_to_triton_json() {
        let c = parse_model_config(
            r#"
            ensemble_scheduling {
              step {
                model_name: "a"
                input_map { key: "X" value: "IN" }
                output_map { key: "Y" value: "mid" }
                output_map { key: "Z" value: "OUT" }
              }
            }
            model_warmup {
              name: "w"
              batch_size: 1
              inputs { key: "X" value: { data_type: TYPE_FP32 dims: 4 zero_data: true } }
            }
            sequence_batching {
              control_input { name: "START" control { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } }
              state { input_name: "s_in" output_name: "s_out" data_type: TYPE_FP32 dims: 2 }
            }
            optimization {
              execution_accelerators {
                gpu_execution_accelerator { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }
              }
            }
            "#,
            ConfigFormat::Pbtxt,
        )
        .unwrap();
        assert_eq!(
            c.ensemble_scheduling.unwrap(),
            json!({"step": [{"model_name": "a", "input_map": {"X": "IN"}, "output_map": {"Y": "mid", "Z": "OUT"}}]})
        );
        assert_eq!(
            c.model_warmup,
            vec![
                json!({"name": "w", "batch_size": 1, "inputs": {"X": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": true}}})
            ]
        );
        let s = c.sequence_batching.unwrap();
        assert_eq!(s["control_input"][0]["control"][0]["int32_false_true"], json!([0, 1]));
        assert_eq!(
            s["state"],
            json!([{"input_name": "s_in", "output_name": "s_out", "data_type": "TYPE_FP32", "dims": [2]}])
        );
        assert_eq!(
            c.optimization.unwrap()["execution_accelerators"]["gpu_execution_accelerator"],
            json!([{"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}])
        );

        // Already-canonical JSON is left as it is.
        let j = json!({"ensemble_scheduling": {"step": [{"model_name": "a", "input_map": {"key": "k"}}]}});
        let c = parse_model_config(&j.to_string(), ConfigFormat::Json).unwrap();
        assert_eq!(c.ensemble_scheduling.unwrap()["step"][0]["input_map"], json!({"k": null}));
    }

    fn valid() -> ModelConfig {
        parse_model_config(
            r#"
            name: "m"
            max_batch_size: 8
            input [ { name: "a" data_type: TYPE_FP32 dims: [ -1, 4 ] },
                    { name: "b" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]
            output [ { name: "a" data_type: TYPE_FP32 dims: [ 2, 3 ] reshape { shape: [ 3, 2 ] } } ]
            dynamic_batching {
              preferred_batch_size: [ 4, 8 ]
              priority_levels: 2
              default_priority_level: 1
              default_queue_policy { timeout_action: DELAY }
              priority_queue_policy { key: 2 value { timeout_action: REJECT } }
            }
            instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0 ] }, { kind: KIND_CPU }, { count: 1 } ]
            version_policy { latest { num_versions: 2 } }
            "#,
            ConfigFormat::Pbtxt,
        )
        .unwrap()
    }

    fn invalid(f: impl FnOnce(&mut ModelConfig)) -> String {
        let mut c = valid();
        f(&mut c);
        message(validate_config(&c).unwrap_err())
    }

    #[test]
    fn validation_accepts_a_good_config() {
        validate_config(&valid()).unwrap();
        validate_config(&ModelConfig::default()).unwrap();
    }

    #[test]
    fn validation_rejects_bad_tensors() {
        let m = invalid(|c| c.input[0].name.clear());
        assert!(m.contains("input[0] has no name"), "{m}");
        let m = invalid(|c| c.output[0].data_type = "TYPE_FOO".into());
        assert!(m.contains("output 'a'") && m.contains("TYPE_FOO"), "{m}");
        let m = invalid(|c| c.input[1].data_type.clear());
        assert!(m.contains("input 'b' has no data_type"), "{m}");
        let m = invalid(|c| c.input[0].dims = vec![-2, 4]);
        assert!(m.contains("input 'a'") && m.contains("-2"), "{m}");
        let m = invalid(|c| c.input[1].name = "a".into());
        assert!(m.contains("input 'a' appears more than once"), "{m}");
        let m = invalid(|c| c.output[0].reshape.as_mut().unwrap().shape = vec![4, 2]);
        assert!(m.contains("reshape.shape [4, 2] has 8 elements but dims [2, 3] has 6"), "{m}");
        let m = invalid(|c| c.output[0].reshape.as_mut().unwrap().shape = vec![-3]);
        assert!(m.contains("reshape.shape [-3]"), "{m}");
        // Variable dims skip the element-count check.
        let mut c = valid();
        c.output[0].dims = vec![-1, 3];
        c.output[0].reshape.as_mut().unwrap().shape = vec![7];
        validate_config(&c).unwrap();
        assert!(m.starts_with("model 'm': "), "{m}");
    }

    #[test]
    fn validation_rejects_bad_batching() {
        let m = invalid(|c| c.max_batch_size = 0);
        assert!(m.contains("dynamic_batching requires max_batch_size > 0"), "{m}");
        let m = invalid(|c| c.dynamic_batching.as_mut().unwrap().preferred_batch_size = vec![4, 16]);
        assert!(m.contains("preferred_batch_size 16") && m.contains("max_batch_size 8"), "{m}");
        let m = invalid(|c| c.dynamic_batching.as_mut().unwrap().preferred_batch_size = vec![0]);
        assert!(m.contains("preferred_batch_size 0"), "{m}");
        let m = invalid(|c| {
            c.dynamic_batching.as_mut().unwrap().default_queue_policy.as_mut().unwrap().timeout_action = "WAIT".into()
        });
        assert!(m.contains("default_queue_policy.timeout_action 'WAIT'"), "{m}");
        let m = invalid(|c| {
            let db = c.dynamic_batching.as_mut().unwrap();
            db.priority_queue_policy.get_mut("2").unwrap().timeout_action = "NOPE".into();
        });
        assert!(m.contains("priority_queue_policy[2].timeout_action 'NOPE'"), "{m}");
        let m = invalid(|c| {
            let db = c.dynamic_batching.as_mut().unwrap();
            let q = db.priority_queue_policy.remove("2").unwrap();
            db.priority_queue_policy.insert("3".into(), q);
        });
        assert!(m.contains("priority level '3'"), "{m}");
        let m = invalid(|c| c.dynamic_batching.as_mut().unwrap().default_priority_level = 5);
        assert!(m.contains("default_priority_level 5"), "{m}");
        // Without batching, no dynamic_batching is fine.
        let mut c = valid();
        c.max_batch_size = 0;
        c.dynamic_batching = None;
        validate_config(&c).unwrap();
    }

    #[test]
    fn validation_rejects_bad_instance_groups_and_policies() {
        let m = invalid(|c| c.instance_group[1].kind = "KIND_TPU".into());
        assert!(m.contains("instance_group[1]") && m.contains("KIND_TPU"), "{m}");
        let m = invalid(|c| c.instance_group[0].gpus = vec![-1]);
        assert!(m.contains("gpus") && m.contains("-1"), "{m}");
        let m = invalid(|c| c.version_policy.all = Some(json!({})));
        assert!(m.contains("version_policy"), "{m}");
    }

    #[test]
    fn optimization_priority_is_read_and_checked() {
        use sluice_types::CpuPriority;
        let c = parse_model_config("optimization { priority: PRIORITY_MIN }", ConfigFormat::Pbtxt).unwrap();
        assert_eq!(c.cpu_priority(), Ok(CpuPriority::Min));
        validate_config(&c).unwrap();
        let c = parse_model_config(r#"{"optimization": {"priority": 1}}"#, ConfigFormat::Json).unwrap();
        assert_eq!(c.cpu_priority(), Ok(CpuPriority::Max));
        assert_eq!(valid().cpu_priority(), Ok(CpuPriority::Default));
        let m = invalid(|c| c.optimization = Some(json!({"priority": "PRIORITY_LOW"})));
        assert!(m.contains("optimization.priority is \"PRIORITY_LOW\"") && m.contains("PRIORITY_MIN"), "{m}");
    }
}
