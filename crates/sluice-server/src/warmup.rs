//! Model warmup, as Triton's `model_warmup`: sample requests built from the config (zeros,
//! random values, or raw data from `<model>/warmup/<file>`) and run on every instance of a new
//! version before it is published as READY. A sample that cannot be built or fails to run fails
//! the load, and the message names the sample (and the input, when one is at fault).
//!
//! Each sample runs `count` times (default 1) on each instance directly, before the version's
//! scheduler starts, as Triton warms each model instance: routing warmups through the shared
//! queue would leave instances beyond the first cold. Being outside the scheduler, they never
//! reach the version's statistics: `inference_count`, `execution_count` and the
//! `nv_inference_*` metrics count client traffic only, which is what dashboards and
//! perf_analyzer-style readers of those counters expect. What the warmup did is kept in a
//! [`WarmupReport`] on the served version and logged.

use std::path::{Component, Path};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sluice_backend::ModelInstance;
use sluice_scheduler::validate::reshape_inputs;
use sluice_scheduler::validate_request;
use sluice_types::{element_count, DataType, InferRequest, ModelConfig, ServeError, Tensor, TensorData};

/// The directory under the model directory that holds `input_data_file`s.
pub const WARMUP_DIR: &str = "warmup";

/// One warmup request, ready to execute.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupSample {
    pub name: String,
    pub batch_size: u64,
    /// Inputs in the order the sample lists them, batch dimension included when the model
    /// batches, before any `reshape`.
    pub inputs: Vec<Tensor>,
    /// Executions per instance.
    pub count: u64,
}

/// What a version's warmup did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmupReport {
    pub samples: usize,
    /// Executions over all instances.
    pub executions: u64,
    pub took: Duration,
}

fn bad(sample: &str, msg: impl std::fmt::Display) -> ServeError {
    ServeError::invalid(format!("warmup sample '{sample}': {msg}"))
}

fn bad_input(sample: &str, input: &str, msg: impl std::fmt::Display) -> ServeError {
    ServeError::invalid(format!("warmup sample '{sample}' input '{input}': {msg}"))
}

/// A non-negative integer written as a number or a string (protobuf JSON writes 64-bit
/// integers as strings).
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Builds the samples of `config.model_warmup`. Files are read from `<model_dir>/warmup/`.
/// Every sample is checked against the config as a request would be.
pub fn build_samples(config: &ModelConfig, model_dir: &Path) -> Result<Vec<WarmupSample>, ServeError> {
    let mut rng = Rng::seeded();
    config.model_warmup.iter().enumerate().map(|(i, raw)| build_sample(config, model_dir, i, raw, &mut rng)).collect()
}

fn build_sample(
    config: &ModelConfig,
    model_dir: &Path,
    index: usize,
    raw: &Value,
    rng: &mut Rng,
) -> Result<WarmupSample, ServeError> {
    let name = match raw.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("#{index}"),
    };
    if !raw.is_object() {
        return Err(bad(&name, format!("expected an object, got {raw}")));
    }
    let batch_size = match raw.get("batch_size") {
        None => 1,
        Some(v) => as_u64(v).ok_or_else(|| bad(&name, format!("batch_size must be a positive integer, got {v}")))?,
    }
    .max(1);
    if config.max_batch_size == 0 && batch_size != 1 {
        return Err(bad(&name, format!("batch_size is {batch_size}, but the model does not batch (must be 1)")));
    }
    if config.max_batch_size > 0 && batch_size > config.max_batch_size as u64 {
        return Err(bad(
            &name,
            format!("batch_size {batch_size} is more than the model's max_batch_size {}", config.max_batch_size),
        ));
    }
    let count = match raw.get("count") {
        None => 1,
        Some(v) => as_u64(v).ok_or_else(|| bad(&name, format!("count must be a non-negative integer, got {v}")))?,
    }
    .max(1);
    let specs = match raw.get("inputs") {
        None | Some(Value::Null) => return Err(bad(&name, "it has no inputs")),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(bad(&name, format!("inputs must be a map of input name to data, got {other}"))),
    };
    let mut inputs = Vec::with_capacity(specs.len());
    for (input, spec) in specs {
        inputs.push(build_input(config, model_dir, &name, batch_size, input, spec, rng)?);
    }
    let req = InferRequest { model: config.name.clone(), inputs, ..Default::default() };
    validate_request(config, &req).map_err(|e| bad(&name, e))?;
    Ok(WarmupSample { name, batch_size, inputs: req.inputs, count })
}

fn build_input(
    config: &ModelConfig,
    model_dir: &Path,
    sample: &str,
    batch_size: u64,
    input: &str,
    spec: &Value,
    rng: &mut Rng,
) -> Result<Tensor, ServeError> {
    let err = |msg: String| bad_input(sample, input, msg);
    let dt_name = spec.get("data_type").and_then(Value::as_str).ok_or_else(|| err("data_type is missing".into()))?;
    let datatype = DataType::from_config_name(dt_name).ok_or_else(|| err(format!("unknown data_type '{dt_name}'")))?;
    let dims: Vec<i64> = match spec.get("dims") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|d| as_i64(d).ok_or_else(|| err(format!("dims must be integers, got {d}"))))
            .collect::<Result<_, _>>()?,
        Some(d) => vec![as_i64(d).ok_or_else(|| err(format!("dims must be integers, got {d}")))?],
    };
    if dims.iter().any(|&d| d < 0) {
        return Err(err(format!("dims {dims:?} must all be known (no -1) in a warmup sample")));
    }
    let per_item = element_count(input, &dims)?;
    let batched = config.max_batch_size > 0;
    let rows = if batched { batch_size as usize } else { 1 };
    let total = per_item.checked_mul(rows).ok_or_else(|| err("the sample is too large".into()))?;
    let shape: Vec<i64> = if batched { std::iter::once(batch_size as i64).chain(dims).collect() } else { dims };

    let set = |k: &str| spec.get(k).is_some_and(|v| !v.is_null());
    let sources: Vec<&str> = ["zero_data", "random_data", "input_data_file"].into_iter().filter(|k| set(k)).collect();
    let data = match sources.as_slice() {
        ["zero_data"] => zeros(datatype, total),
        ["random_data"] => random(datatype, total, rng),
        ["input_data_file"] => {
            let file = spec["input_data_file"]
                .as_str()
                .ok_or_else(|| err(format!("input_data_file must be a file name, got {}", spec["input_data_file"])))?;
            let bytes = read_warmup_file(model_dir, file).map_err(err)?;
            from_file(datatype, bytes, per_item, rows).map_err(|m| err(format!("file '{file}': {m}")))?
        }
        [] => return Err(err("it needs one of zero_data, random_data or input_data_file".into())),
        several => return Err(err(format!("it sets {}; choose one", several.join(" and ")))),
    };
    Ok(Tensor { name: input.to_string(), datatype, shape, data })
}

fn zeros(datatype: DataType, n: usize) -> TensorData {
    match datatype.size() {
        Some(size) => TensorData::Fixed(Bytes::from(vec![0u8; n * size])),
        None => TensorData::Bytes(vec![Bytes::new(); n]),
    }
}

/// Random values that any model accepts: floats in [0, 1), integers in [0, 100) (token ids,
/// indices), booleans, and strings of eight lowercase letters.
fn random(datatype: DataType, n: usize, rng: &mut Rng) -> TensorData {
    fn fixed<T: bytemuck::Pod>(n: usize, mut f: impl FnMut() -> T) -> TensorData {
        let v: Vec<T> = (0..n).map(|_| f()).collect();
        TensorData::Fixed(Bytes::from(bytemuck::cast_slice::<T, u8>(&v).to_vec()))
    }
    let mut small = || rng.below(100);
    match datatype {
        DataType::Bool => fixed(n, || small() as u8 % 2),
        DataType::Uint8 => fixed(n, || small() as u8),
        DataType::Uint16 => fixed(n, || small() as u16),
        DataType::Uint32 => fixed(n, || small() as u32),
        DataType::Uint64 => fixed(n, &mut small),
        DataType::Int8 => fixed(n, || small() as i8),
        DataType::Int16 => fixed(n, || small() as i16),
        DataType::Int32 => fixed(n, || small() as i32),
        DataType::Int64 => fixed(n, || small() as i64),
        DataType::Fp16 => fixed(n, || half::f16::from_f64(rng.unit())),
        DataType::Bf16 => fixed(n, || half::bf16::from_f64(rng.unit())),
        DataType::Fp32 => fixed(n, || rng.unit() as f32),
        DataType::Fp64 => fixed(n, || rng.unit()),
        DataType::Bytes => TensorData::Bytes(
            (0..n).map(|_| Bytes::from((0..8).map(|_| b'a' + rng.below(26) as u8).collect::<Vec<u8>>())).collect(),
        ),
    }
}

/// Reads `<model_dir>/warmup/<file>`, refusing names that leave that directory.
fn read_warmup_file(model_dir: &Path, file: &str) -> Result<Vec<u8>, String> {
    let rel = Path::new(file);
    if file.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("input_data_file '{file}' must be a relative path inside <model>/{WARMUP_DIR}/"));
    }
    let path = model_dir.join(WARMUP_DIR).join(rel);
    std::fs::read(&path).map_err(|e| format!("cannot read input_data_file {}: {e}", path.display()))
}

/// Raw little-endian data (BYTES: each element a 4-byte little-endian length and its bytes) for
/// one batch item, repeated for every row, or for the whole batch.
fn from_file(datatype: DataType, bytes: Vec<u8>, per_item: usize, rows: usize) -> Result<TensorData, String> {
    match datatype.size() {
        Some(size) => {
            let one = per_item * size;
            if bytes.len() == one {
                Ok(TensorData::Fixed(Bytes::from(bytes.repeat(rows))))
            } else if bytes.len() == one * rows {
                Ok(TensorData::Fixed(Bytes::from(bytes)))
            } else {
                let batch = if rows > 1 { format!(" (or {} for the whole batch)", one * rows) } else { String::new() };
                Err(format!("has {} bytes; {per_item} {datatype} element(s) need {one} bytes{batch}", bytes.len()))
            }
        }
        None => {
            let mut items = Vec::new();
            let mut rest = Bytes::from(bytes);
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(format!("element {} ends inside its 4-byte length prefix", items.len()));
                }
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if rest.len() - 4 < len {
                    return Err(format!(
                        "element {} claims {len} bytes, only {} left (elements are a 4-byte little-endian \
                         length followed by the bytes)",
                        items.len(),
                        rest.len() - 4
                    ));
                }
                let _ = rest.split_to(4);
                items.push(rest.split_to(len));
            }
            if items.len() == per_item {
                let row = items.clone();
                Ok(TensorData::Bytes((0..rows).flat_map(|_| row.iter().cloned()).collect()))
            } else if items.len() == per_item * rows {
                Ok(TensorData::Bytes(items))
            } else {
                Err(format!("has {} BYTES element(s); the dims need {per_item}", items.len()))
            }
        }
    }
}

/// Runs every sample `count` times on each instance (instances in parallel, each on its own
/// thread). Blocking: call from a blocking context.
pub fn run(
    config: &ModelConfig,
    samples: &[WarmupSample],
    instances: &mut [Box<dyn ModelInstance>],
) -> Result<WarmupReport, ServeError> {
    let start = Instant::now();
    if samples.is_empty() {
        return Ok(WarmupReport::default());
    }
    let results: Vec<Result<u64, ServeError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = instances
            .iter_mut()
            .enumerate()
            .map(|(i, instance)| {
                std::thread::Builder::new()
                    .name(format!("sluice-warmup-{}-{i}", config.name))
                    .spawn_scoped(scope, move || warm_instance(config, samples, instance.as_mut(), i))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| Err(ServeError::Internal("a warmup thread panicked".into()))),
                Err(e) => Err(ServeError::Internal(format!("cannot start a warmup thread: {e}"))),
            })
            .collect()
    });
    let mut executions = 0;
    for r in results {
        executions += r?;
    }
    Ok(WarmupReport { samples: samples.len(), executions, took: start.elapsed() })
}

fn warm_instance(
    config: &ModelConfig,
    samples: &[WarmupSample],
    instance: &mut dyn ModelInstance,
    index: usize,
) -> Result<u64, ServeError> {
    let mut executions = 0;
    for s in samples {
        for _ in 0..s.count {
            let mut inputs = s.inputs.clone();
            reshape_inputs(config, &mut inputs);
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| instance.execute(inputs, &[])));
            match run {
                Ok(Ok(_)) => executions += 1,
                Ok(Err(e)) => return Err(bad(&s.name, format!("failed on instance {index}: {e}"))),
                Err(_) => return Err(bad(&s.name, format!("the model panicked on instance {index}"))),
            }
        }
    }
    Ok(executions)
}

/// xorshift64*: random enough for warmup data, no dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Rng((t as u64) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_repository::config::{parse_model_config, ConfigFormat};

    fn config(extra: &str) -> ModelConfig {
        parse_model_config(
            &format!(
                r#"
                name: "m"
                max_batch_size: 8
                input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }},
                        {{ name: "S" data_type: TYPE_STRING dims: [ 2 ] optional: true }},
                        {{ name: "I" data_type: TYPE_INT64 dims: [ -1 ] optional: true }} ]
                output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
                {extra}
                "#
            ),
            ConfigFormat::Pbtxt,
        )
        .unwrap()
    }

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(WARMUP_DIR)).unwrap();
        for (name, bytes) in files {
            std::fs::write(d.path().join(WARMUP_DIR).join(name), bytes).unwrap();
        }
        d
    }

    fn strings(items: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in items {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    #[test]
    fn zero_data_has_the_batch_dimension_and_defaults() {
        let c = config(
            r#"model_warmup [ { name: "zeros" batch_size: 3
                 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]"#,
        );
        let s = build_samples(&c, Path::new("/nonexistent")).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].name.as_str(), s[0].batch_size, s[0].count), ("zeros", 3, 1));
        let x = &s[0].inputs[0];
        assert_eq!((x.name.as_str(), x.datatype, x.shape.clone()), ("X", DataType::Fp32, vec![3, 4]));
        assert_eq!(x.to_vec::<f32>().unwrap(), vec![0.0; 12]);
    }

    #[test]
    fn random_data_is_in_range_and_count_is_kept() {
        let c = config(
            r#"model_warmup { name: "r" batch_size: 2 count: 5
                 inputs { key: "X" value: { data_type: TYPE_FP32 dims: 4 random_data: true } }
                 inputs { key: "I" value: { data_type: TYPE_INT64 dims: [ 7 ] random_data: true } }
                 inputs { key: "S" value: { data_type: TYPE_STRING dims: [ 2 ] random_data: true } } }"#,
        );
        let s = &build_samples(&c, Path::new("/nonexistent")).unwrap()[0];
        assert_eq!(s.count, 5);
        let x = s.inputs.iter().find(|t| t.name == "X").unwrap().to_vec::<f32>().unwrap();
        assert_eq!(x.len(), 8);
        assert!(x.iter().all(|v| (0.0..1.0).contains(v)), "{x:?}");
        let i = s.inputs.iter().find(|t| t.name == "I").unwrap();
        assert_eq!(i.shape, vec![2, 7]);
        assert!(i.to_vec::<i64>().unwrap().iter().all(|v| (0..100).contains(v)));
        let st = s.inputs.iter().find(|t| t.name == "S").unwrap();
        assert_eq!(st.shape, vec![2, 2]);
        let TensorData::Bytes(items) = &st.data else { panic!("strings are BYTES") };
        assert_eq!(items.len(), 4);
        assert!(items.iter().all(|b| b.len() == 8 && b.iter().all(u8::is_ascii_lowercase)));
    }

    #[test]
    fn input_data_file_is_raw_little_endian_repeated_per_row() {
        let one: Vec<u8> = bytemuck::cast_slice(&[1f32, 2.0, 3.0, 4.0]).to_vec();
        let d = dir_with(&[("x.bin", &one), ("s.bin", &strings(&["hi", ""]))]);
        let c = config(
            r#"model_warmup { name: "f" batch_size: 2
                 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "x.bin" } }
                 inputs { key: "S" value: { data_type: TYPE_STRING dims: [ 2 ] input_data_file: "s.bin" } } }"#,
        );
        let s = &build_samples(&c, d.path()).unwrap()[0];
        let input = |n: &str| s.inputs.iter().find(|t| t.name == n).unwrap();
        assert_eq!(input("X").to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(input("S").shape, vec![2, 2]);
        assert_eq!(
            input("S").data,
            TensorData::Bytes(vec![Bytes::from("hi"), Bytes::new(), Bytes::from("hi"), Bytes::new()])
        );

        // A file holding the whole batch is taken as it is.
        let both: Vec<u8> = bytemuck::cast_slice(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).to_vec();
        let d = dir_with(&[("x.bin", &both)]);
        let c = config(
            r#"model_warmup { name: "f" batch_size: 2
                 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "x.bin" } } }"#,
        );
        let s = &build_samples(&c, d.path()).unwrap()[0];
        assert_eq!(s.inputs[0].to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn a_model_without_batching_gets_the_dims_alone() {
        let c = parse_model_config(
            r#"name: "nb" input { name: "X" data_type: TYPE_INT32 dims: [ 2, 3 ] }
               model_warmup { name: "z" batch_size: 1
                 inputs { key: "X" value: { data_type: TYPE_INT32 dims: [ 2, 3 ] zero_data: true } } }"#,
            ConfigFormat::Pbtxt,
        )
        .unwrap();
        let s = &build_samples(&c, Path::new("/nonexistent")).unwrap()[0];
        assert_eq!(s.inputs[0].shape, vec![2, 3]);
        let mut c2 = c.clone();
        c2.model_warmup[0]["batch_size"] = 4.into();
        let e = build_samples(&c2, Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("warmup sample 'z'") && e.contains("does not batch"), "{e}");
    }

    #[test]
    fn errors_name_the_sample_and_the_input() {
        let short = vec![0u8; 10];
        let d = dir_with(&[("short.bin", &short), ("s.bin", &[5, 0, 0, 0, b'a'])]);
        let cases = [
            (
                r#"inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "short.bin" } }"#,
                &["sample 'w' input 'X'", "short.bin", "10 bytes", "16 bytes"][..],
            ),
            (
                r#"inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "missing.bin" } }"#,
                &["sample 'w' input 'X'", "missing.bin"],
            ),
            (
                r#"inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "../x" } }"#,
                &["sample 'w' input 'X'", "relative path"],
            ),
            (
                r#"inputs { key: "S" value: { data_type: TYPE_STRING dims: [ 2 ] input_data_file: "s.bin" } }
                   inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }"#,
                &["sample 'w' input 'S'", "claims 5 bytes"],
            ),
            (r#"inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] } }"#, &["input 'X'", "one of"]),
            (
                r#"inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ -1 ] zero_data: true } }"#,
                &["input 'X'", "must all be known"],
            ),
            (r#"inputs { key: "X" value: { data_type: TYPE_FOO dims: [ 4 ] zero_data: true } }"#, &["TYPE_FOO"]),
            (
                r#"inputs { key: "X" value: { data_type: TYPE_INT32 dims: [ 4 ] zero_data: true } }"#,
                &["sample 'w'", "input 'X'", "FP32"],
            ),
            (
                r#"inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 5 ] zero_data: true } }"#,
                &["sample 'w'", "input 'X'", "[-1,4]"],
            ),
            (
                r#"inputs { key: "Z" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }"#,
                &["sample 'w'", "'Z'"],
            ),
            (r#"inputs { key: "S" value: { data_type: TYPE_STRING dims: [ 2 ] zero_data: true } }"#, &["'X'"]),
            (
                r#"batch_size: 9 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }"#,
                &["max_batch_size 8"],
            ),
        ];
        for (sample, wanted) in cases {
            let c = config(&format!(r#"model_warmup {{ name: "w" {sample} }}"#));
            let e = build_samples(&c, d.path()).unwrap_err().to_string();
            for w in wanted {
                assert!(e.contains(w), "{sample}: '{e}' does not mention {w}");
            }
        }
    }

    /// Records what it executed; fails when asked.
    struct Recorder {
        seen: std::sync::Arc<parking_lot::Mutex<Vec<Vec<i64>>>>,
        fail: bool,
    }

    impl ModelInstance for Recorder {
        fn execute(&mut self, inputs: Vec<Tensor>, _: &[String]) -> Result<sluice_backend::ExecOutput, ServeError> {
            self.seen.lock().push(inputs[0].shape.clone());
            if self.fail {
                return Err(ServeError::Backend("boom".into()));
            }
            Ok(Default::default())
        }
    }

    #[test]
    fn run_executes_count_times_on_every_instance_with_reshape() {
        let mut c = config(
            r#"model_warmup { name: "a" batch_size: 2 count: 3
                 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } }
               model_warmup { name: "b"
                 inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } }"#,
        );
        c.input[0].reshape = Some(sluice_types::config::Reshape { shape: vec![2, 2] });
        let samples = build_samples(&c, Path::new("/nonexistent")).unwrap();
        let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut instances: Vec<Box<dyn ModelInstance>> =
            (0..2).map(|_| Box::new(Recorder { seen: seen.clone(), fail: false }) as Box<dyn ModelInstance>).collect();
        let report = run(&c, &samples, &mut instances).unwrap();
        assert_eq!((report.samples, report.executions), (2, 8));
        let mut shapes = seen.lock().clone();
        shapes.sort();
        assert_eq!(shapes, [vec![vec![1, 2, 2]; 2], vec![vec![2, 2, 2]; 6]].concat());

        let mut failing: Vec<Box<dyn ModelInstance>> = vec![Box::new(Recorder { seen, fail: true })];
        let e = run(&c, &samples, &mut failing).unwrap_err().to_string();
        assert!(e.contains("warmup sample 'a'") && e.contains("boom"), "{e}");
    }
}
