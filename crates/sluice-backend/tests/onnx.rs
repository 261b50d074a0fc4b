//! The ONNX Runtime backend against the tiny models in `tests/data` (made by
//! `tests/data/make_models.py`). Needs libonnxruntime.so: set `ORT_DYLIB_PATH`, or have the
//! workspace's `.venv` with `onnxruntime==1.32.0`.
#![cfg(feature = "onnx")]

use std::path::{Path, PathBuf};
use std::sync::Once;

use bytes::Bytes;
use half::{bf16, f16};
use sluice_backend::onnx::{self, OnnxBackend};
use sluice_backend::{Backend, ModelFiles, ModelInstance};
use sluice_types::config::{ModelParameter, TensorConfig};
use sluice_types::{DataType, ModelConfig, ServeError, Tensor, TensorData};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn runtime() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let lib = onnx::find_library(None).or_else(|e| {
            // Convenience for this workspace: the venv that `scripts/setup.sh` / the brief sets up.
            let venv =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib/python3.11/site-packages/onnxruntime/capi");
            onnx::find_library(Some(&venv)).map_err(|_| e)
        });
        let lib = lib.unwrap_or_else(|e| panic!("these tests need ONNX Runtime: {e}"));
        onnx::init_runtime(&lib).expect("init_runtime");
    });
}

fn files(file: &str) -> ModelFiles {
    ModelFiles { model_dir: data_dir(), version_dir: data_dir(), model_path: data_dir().join(file) }
}

fn named(name: &str) -> ModelConfig {
    ModelConfig { name: name.into(), ..Default::default() }
}

fn tc(name: &str, dt: &str, dims: &[i64]) -> TensorConfig {
    TensorConfig { name: name.into(), data_type: dt.into(), dims: dims.to_vec(), ..Default::default() }
}

/// Auto-completes an empty config for `file` and loads one instance.
fn load(file: &str) -> (ModelConfig, Box<dyn ModelInstance>) {
    runtime();
    let backend = OnnxBackend::new(1);
    let mut config = named(file.trim_end_matches(".onnx"));
    backend.auto_complete(&mut config, &files(file)).expect("auto_complete");
    let instance = backend.load(&config, &files(file), 0).expect("load");
    (config, instance)
}

fn invalid(e: ServeError) -> String {
    match e {
        ServeError::InvalidArgument(m) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn runtime_init_is_idempotent() {
    runtime();
    let lib = onnx::runtime_library().expect("a library is loaded").to_path_buf();
    assert!(lib.file_name().unwrap().to_string_lossy().starts_with("libonnxruntime.so"), "{}", lib.display());
    onnx::init_runtime(&lib).unwrap();
    // A second, different path does not reload anything and reports the first outcome.
    onnx::init_runtime(Path::new("/nonexistent/libonnxruntime.so")).unwrap();
    assert_eq!(onnx::runtime_library(), Some(lib.as_path()));
}

#[test]
fn add_sub_batches_and_computes() {
    let (config, mut inst) = load("add_sub.onnx");
    assert_eq!(config.max_batch_size, 4);
    assert!(config.dynamic_batching.is_some());
    assert_eq!(config.platform, "onnxruntime_onnx");
    assert_eq!(config.backend, "onnxruntime");
    assert_eq!(config.input, vec![tc("INPUT0", "TYPE_FP32", &[16]), tc("INPUT1", "TYPE_FP32", &[16])]);
    assert_eq!(config.output, vec![tc("OUTPUT0", "TYPE_FP32", &[16]), tc("OUTPUT1", "TYPE_FP32", &[16])]);

    let a: Vec<f32> = (0..32).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..32).map(|i| 100.0 - i as f32).collect();
    let inputs =
        vec![Tensor::from_vec("INPUT0", vec![2, 16], a.clone()), Tensor::from_vec("INPUT1", vec![2, 16], b.clone())];
    let out = inst.execute(inputs.clone(), &[]).unwrap();
    assert_eq!(out.outputs.len(), 2);
    assert_eq!(out.outputs[0].name, "OUTPUT0");
    assert_eq!(out.outputs[0].shape, vec![2, 16]);
    assert_eq!(out.outputs[0].datatype, DataType::Fp32);
    let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), sum);
    assert_eq!(out.outputs[1].name, "OUTPUT1");
    assert_eq!(out.outputs[1].to_vec::<f32>().unwrap(), diff);
    assert!(out.compute_infer_ns > 0, "{out:?}");
    assert!(out.compute_input_ns > 0 && out.compute_output_ns > 0, "{out:?}");

    // Only the requested output, in the requested order.
    let out = inst.execute(inputs.clone(), &["OUTPUT1".to_string()]).unwrap();
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(out.outputs[0].name, "OUTPUT1");
    assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), diff);
    let out = inst.execute(inputs, &["OUTPUT1".to_string(), "OUTPUT0".to_string()]).unwrap();
    assert_eq!(out.outputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["OUTPUT1", "OUTPUT0"]);

    // Empty batch.
    let out = inst
        .execute(
            vec![
                Tensor::from_vec::<f32>("INPUT0", vec![0, 16], vec![]),
                Tensor::from_vec::<f32>("INPUT1", vec![0, 16], vec![]),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(out.outputs[0].shape, vec![0, 16]);
    assert_eq!(out.outputs[0].data, TensorData::Fixed(Bytes::new()));
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let (_, mut inst) = load("add_sub.onnx");
    let ok1 = || Tensor::from_vec("INPUT1", vec![1, 16], vec![1f32; 16]);
    let run = |inst: &mut Box<dyn ModelInstance>, inputs: Vec<Tensor>| inst.execute(inputs, &[]).unwrap_err();

    let e = invalid(run(&mut inst, vec![Tensor::from_vec("INPUT0", vec![1, 16], vec![1i32; 16]), ok1()]));
    assert!(e.contains("'INPUT0'") && e.contains("expects FP32, got INT32"), "{e}");

    let mut short = Tensor::from_vec("INPUT0", vec![1, 16], vec![1f32; 16]);
    short.data = TensorData::Fixed(Bytes::from(vec![0u8; 63]));
    let e = invalid(run(&mut inst, vec![short, ok1()]));
    assert!(e.contains("'INPUT0'") && e.contains("needs 64 bytes, got 63"), "{e}");

    let e = invalid(run(&mut inst, vec![Tensor::from_vec::<f32>("INPUT0", vec![-1, 16], vec![]), ok1()]));
    assert!(e.contains("'INPUT0'") && e.contains("negative"), "{e}");

    let huge = Tensor::from_vec::<f32>("INPUT0", vec![1 << 40, 1 << 40, 1 << 40], vec![]);
    let e = invalid(run(&mut inst, vec![huge, ok1()]));
    assert!(e.contains("'INPUT0'") && e.contains("too large"), "{e}");
    // Overflow only once multiplied by the element size.
    let huge = Tensor::from_vec::<f32>("INPUT0", vec![1 << 62, 1], vec![]);
    let e = invalid(run(&mut inst, vec![huge, ok1()]));
    assert!(e.contains("'INPUT0'") && e.contains("too large"), "{e}");

    let e = invalid(run(&mut inst, vec![ok1()]));
    assert!(e.contains("expects input 'INPUT0'"), "{e}");

    let e = invalid(run(&mut inst, vec![Tensor::from_vec("NOPE", vec![1, 16], vec![1f32; 16]), ok1()]));
    assert!(e.contains("'NOPE'"), "{e}");

    let e = invalid(run(&mut inst, vec![ok1(), ok1()]));
    assert!(e.contains("'INPUT1'") && e.contains("more than once"), "{e}");

    let e = invalid(
        inst.execute(vec![Tensor::from_vec("INPUT0", vec![1, 16], vec![1f32; 16]), ok1()], &["OUTPUT9".to_string()])
            .unwrap_err(),
    );
    assert!(e.contains("'OUTPUT9'"), "{e}");

    // A shape the model rejects: ONNX Runtime's own message, prefixed by the model name.
    let e = run(
        &mut inst,
        vec![
            Tensor::from_vec("INPUT0", vec![2, 8], vec![1f32; 16]),
            Tensor::from_vec("INPUT1", vec![2, 8], vec![1f32; 16]),
        ],
    );
    match e {
        ServeError::Backend(m) => {
            assert!(m.starts_with("add_sub: ") && m.contains("INPUT0"), "{m}")
        }
        other => panic!("expected Backend, got {other:?}"),
    }

    // The instance still works afterwards.
    let out = inst.execute(vec![Tensor::from_vec("INPUT0", vec![1, 16], vec![2f32; 16]), ok1()], &[]).unwrap();
    assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![3f32; 16]);
}

/// Round-trips 6 elements ([2, 3]) through `identity_<suffix>.onnx` and checks the config.
fn identity_round_trip(suffix: &str, input: Tensor) {
    let (config, mut inst) = load(&format!("identity_{suffix}.onnx"));
    let dt = input.datatype;
    assert_eq!(config.max_batch_size, 0, "{suffix}");
    assert!(config.dynamic_batching.is_none(), "{suffix}");
    assert_eq!(config.input, vec![tc("IN", dt.config_name(), &[2, -1])], "{suffix}");
    assert_eq!(config.output, vec![tc("OUT", dt.config_name(), &[2, -1])], "{suffix}");
    let out = inst.execute(vec![input.clone()], &[]).unwrap_or_else(|e| panic!("{suffix}: {e}"));
    assert_eq!(out.outputs.len(), 1);
    let got = &out.outputs[0];
    assert_eq!(got.name, "OUT");
    assert_eq!(got.datatype, dt, "{suffix}");
    assert_eq!(got.shape, input.shape, "{suffix}");
    assert_eq!(got.data, input.data, "{suffix}");
}

#[test]
fn identity_every_datatype() {
    let s = vec![2, 3];
    identity_round_trip("bool", Tensor::from_bools("IN", s.clone(), &[true, false, false, true, true, false]));
    identity_round_trip("uint8", Tensor::from_vec("IN", s.clone(), vec![0u8, 1, 127, 128, 254, 255]));
    identity_round_trip("uint16", Tensor::from_vec("IN", s.clone(), vec![0u16, 1, 300, 32768, 65534, u16::MAX]));
    identity_round_trip(
        "uint32",
        Tensor::from_vec("IN", s.clone(), vec![0u32, 1, 70000, 1 << 31, u32::MAX - 1, u32::MAX]),
    );
    identity_round_trip(
        "uint64",
        Tensor::from_vec("IN", s.clone(), vec![0u64, 1, 1 << 40, 1 << 63, u64::MAX - 1, u64::MAX]),
    );
    identity_round_trip("int8", Tensor::from_vec("IN", s.clone(), vec![i8::MIN, -1, 0, 1, 100, i8::MAX]));
    identity_round_trip("int16", Tensor::from_vec("IN", s.clone(), vec![i16::MIN, -300, 0, 1, 300, i16::MAX]));
    identity_round_trip("int32", Tensor::from_vec("IN", s.clone(), vec![i32::MIN, -70000, 0, 1, 70000, i32::MAX]));
    identity_round_trip(
        "int64",
        Tensor::from_vec("IN", s.clone(), vec![i64::MIN, -(1 << 40), 0, 1, 1 << 40, i64::MAX]),
    );
    let halfs = [0.0f32, -0.0, 1.5, -2.25, 65504.0, 6.1e-5];
    identity_round_trip("fp16", Tensor::from_vec("IN", s.clone(), halfs.iter().map(|&x| f16::from_f32(x)).collect()));
    identity_round_trip(
        "bf16",
        Tensor::from_vec("IN", s.clone(), halfs.iter().map(|&x| bf16::from_f32(x * 1e20)).collect()),
    );
    identity_round_trip(
        "fp32",
        Tensor::from_vec("IN", s.clone(), vec![0.0f32, -1.5, f32::MIN_POSITIVE, f32::MAX, f32::INFINITY, 1e-40]),
    );
    identity_round_trip(
        "fp64",
        Tensor::from_vec("IN", s.clone(), vec![0.0f64, -1.5, f64::MIN_POSITIVE, f64::MAX, f64::NEG_INFINITY, 1e-310]),
    );
    identity_round_trip(
        "string",
        Tensor::from_strings("IN", s.clone(), &["hello", "", "héllo wörld", "日本語", "a b\tc\n", "🦀"]),
    );
    // A different second dim, as the model allows.
    identity_round_trip("int32", Tensor::from_vec("IN", vec![2, 1], vec![7i32, -7]));
}

#[test]
fn fp16_values_are_bit_exact() {
    let (_, mut inst) = load("identity_fp16.onnx");
    let bits: Vec<u16> = vec![0x0000, 0x8000, 0x3c00, 0x7bff, 0x0001, 0xfc00];
    let input = Tensor {
        name: "IN".into(),
        datatype: DataType::Fp16,
        shape: vec![2, 3],
        data: TensorData::Fixed(bits.iter().flat_map(|b| b.to_le_bytes()).collect::<Vec<u8>>().into()),
    };
    let out = inst.execute(vec![input], &[]).unwrap();
    let got: Vec<u16> = out.outputs[0].to_vec::<f16>().unwrap().iter().map(|h| h.to_bits()).collect();
    assert_eq!(got, bits);
}

#[test]
fn bytes_inputs_must_be_utf8_without_nul() {
    let (_, mut inst) = load("identity_string.onnx");
    let e = invalid(
        inst.execute(vec![Tensor::from_strings("IN", vec![2, 1], &[&b"ok"[..], &[0xff, 0xfe]])], &[]).unwrap_err(),
    );
    assert!(e.contains("'IN'") && e.contains("element 1") && e.contains("UTF-8"), "{e}");
    let e = invalid(inst.execute(vec![Tensor::from_strings("IN", vec![2, 1], &["a\0b", "c"])], &[]).unwrap_err());
    assert!(e.contains("'IN'") && e.contains("element 0") && e.contains("NUL"), "{e}");
    let e = invalid(inst.execute(vec![Tensor::from_strings("IN", vec![2, 2], &["a", "b", "c"])], &[]).unwrap_err());
    assert!(e.contains("'IN'") && e.contains("needs 4 elements, got 3"), "{e}");
    // BOOL elements other than 0/1 are refused too.
    let (_, mut inst) = load("identity_bool.onnx");
    let bad = Tensor {
        name: "IN".into(),
        datatype: DataType::Bool,
        shape: vec![2, 1],
        data: TensorData::Fixed(Bytes::from_static(&[1, 2])),
    };
    let e = invalid(inst.execute(vec![bad], &[]).unwrap_err());
    assert!(e.contains("'IN'") && e.contains("0 or 1"), "{e}");
}

#[test]
fn symbolic_batch_dim_enables_batching() {
    let (config, mut inst) = load("symbolic_batch.onnx");
    assert_eq!(config.max_batch_size, 4);
    assert_eq!(config.input, vec![tc("x", "TYPE_FP32", &[3])]);
    assert_eq!(config.output, vec![tc("y", "TYPE_FP32", &[3]), tc("z", "TYPE_INT64", &[1])]);
    let x = vec![1.0f32, 2.0, 3.5, -1.0, 0.0, 4.0, 10.0, 20.0, 30.0];
    let out = inst.execute(vec![Tensor::from_vec("x", vec![3, 3], x.clone())], &[]).unwrap();
    assert_eq!(out.outputs[0].shape, vec![3, 3]);
    assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), x.iter().map(|v| v * 2.0).collect::<Vec<_>>());
    assert_eq!(out.outputs[1].shape, vec![3, 1]);
    assert_eq!(out.outputs[1].datatype, DataType::Int64);
    assert_eq!(out.outputs[1].to_vec::<i64>().unwrap(), vec![6, 3, 60]);
}

#[test]
fn optional_inputs_may_be_absent() {
    runtime();
    let backend = OnnxBackend::new(0);
    let mut config = named("add_bias");
    config.input = vec![tc("x", "TYPE_FP32", &[3]), TensorConfig { optional: true, ..tc("bias", "TYPE_FP32", &[3]) }];
    backend.auto_complete(&mut config, &files("add_bias.onnx")).unwrap();
    assert_eq!(config.output, vec![tc("y", "TYPE_FP32", &[3])]);
    let mut inst = backend.load(&config, &files("add_bias.onnx"), 0).unwrap();
    let x = || Tensor::from_vec("x", vec![3], vec![10f32, 20.0, 30.0]);
    let out = inst.execute(vec![x()], &[]).unwrap();
    assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![11.0, 22.0, 33.0]);
    let out = inst.execute(vec![x(), Tensor::from_vec("bias", vec![3], vec![-10f32, 0.0, 0.5])], &[]).unwrap();
    assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![0.0, 20.0, 30.5]);
}

#[test]
fn auto_complete_checks_what_the_config_states() {
    runtime();
    let backend = OnnxBackend::new(1);
    let mut config = named("add_sub");
    config.max_batch_size = 8;
    config.input = vec![tc("INPUT0", "TYPE_FP32", &[16]), tc("INPUT1", "TYPE_INT32", &[16])];
    let e = invalid(backend.auto_complete(&mut config, &files("add_sub.onnx")).unwrap_err());
    assert!(e.contains("'INPUT1'") && e.contains("TYPE_INT32") && e.contains("TYPE_FP32"), "{e}");

    let mut config = named("add_sub");
    config.max_batch_size = 8;
    config.output = vec![tc("OUTPUT7", "TYPE_FP32", &[16])];
    let e = invalid(backend.auto_complete(&mut config, &files("add_sub.onnx")).unwrap_err());
    assert!(e.contains("'OUTPUT7'") && e.contains("'OUTPUT0'"), "{e}");

    // A correct explicit config is kept as is, with platform/backend filled in.
    let mut config = named("add_sub");
    config.max_batch_size = 8;
    config.input = vec![tc("INPUT0", "TYPE_FP32", &[16]), tc("INPUT1", "TYPE_FP32", &[16])];
    config.output = vec![tc("OUTPUT1", "TYPE_FP32", &[16])];
    let before = config.clone();
    backend.auto_complete(&mut config, &files("add_sub.onnx")).unwrap();
    assert_eq!(config.input, before.input);
    assert_eq!(config.output, before.output);
    assert_eq!(config.max_batch_size, 8);
    assert_eq!(config.platform, "onnxruntime_onnx");
    // An instance of it returns the configured outputs by default.
    let mut inst = backend.load(&config, &files("add_sub.onnx"), 0).unwrap();
    let out = inst
        .execute(
            vec![
                Tensor::from_vec("INPUT0", vec![1, 16], vec![5f32; 16]),
                Tensor::from_vec("INPUT1", vec![1, 16], vec![2f32; 16]),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![3f32; 16]);

    // Batching cannot be forced on a model whose first dim is fixed.
    let mut config = named("identity_fp32");
    config.max_batch_size = 4;
    let e = invalid(backend.auto_complete(&mut config, &files("identity_fp32.onnx")).unwrap_err());
    assert!(e.contains("does not support batching"), "{e}");
}

#[test]
fn non_tensor_outputs_are_refused_unless_left_out() {
    runtime();
    let backend = OnnxBackend::new(1);
    let mut config = named("zipmap");
    let e = backend.auto_complete(&mut config, &files("zipmap.onnx")).unwrap_err();
    assert!(matches!(e, ServeError::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("output 'probs'"), "{e}");

    let mut config = named("zipmap");
    config.max_batch_size = 4;
    config.output = vec![tc("label", "TYPE_INT64", &[])];
    backend.auto_complete(&mut config, &files("zipmap.onnx")).unwrap();
    assert_eq!(config.input, vec![tc("x", "TYPE_FP32", &[2])]);
    let mut inst = backend.load(&config, &files("zipmap.onnx"), 0).unwrap();
    let x = || Tensor::from_vec("x", vec![3, 2], vec![0.2f32, 0.8, 0.9, 0.1, 0.4, 0.6]);
    let out = inst.execute(vec![x()], &[]).unwrap();
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(out.outputs[0].shape, vec![3]);
    assert_eq!(out.outputs[0].to_vec::<i64>().unwrap(), vec![1, 0, 1]);
    let e = inst.execute(vec![x()], &["probs".to_string()]).unwrap_err();
    assert!(matches!(e, ServeError::Unsupported(_)) && e.to_string().contains("'probs'"), "{e:?}");
}

#[test]
fn thread_parameters() {
    runtime();
    let backend = OnnxBackend::new(0);
    let mut config = named("add_sub");
    backend.auto_complete(&mut config, &files("add_sub.onnx")).unwrap();
    config.parameters.insert("intra_op_thread_count".into(), ModelParameter { string_value: "2".into() });
    let mut inst = backend.load(&config, &files("add_sub.onnx"), 1).unwrap();
    let inputs = vec![
        Tensor::from_vec("INPUT0", vec![1, 16], vec![1f32; 16]),
        Tensor::from_vec("INPUT1", vec![1, 16], vec![1f32; 16]),
    ];
    assert_eq!(inst.execute(inputs, &[]).unwrap().outputs[0].to_vec::<f32>().unwrap(), vec![2f32; 16]);
    config.parameters.insert("intra_op_thread_count".into(), ModelParameter { string_value: "many".into() });
    let e = invalid(backend.load(&config, &files("add_sub.onnx"), 0).err().unwrap());
    assert!(e.contains("intra_op_thread_count") && e.contains("'many'"), "{e}");
}

#[test]
fn missing_or_broken_model_files_are_errors() {
    runtime();
    let backend = OnnxBackend::new(1);
    let mut config = named("ghost");
    let e = backend.auto_complete(&mut config, &files("ghost.onnx")).unwrap_err();
    assert!(e.to_string().contains("ghost.onnx"), "{e}");
    let e = backend.auto_complete(&mut config, &files("make_models.py")).unwrap_err();
    assert!(matches!(e, ServeError::Unavailable(_)) && e.to_string().contains("make_models.py"), "{e:?}");
}

#[test]
fn accepts_by_platform_backend_or_file() {
    let backend = OnnxBackend::new(1);
    let empty_dir = std::env::temp_dir().join(format!("sluice-onnx-accepts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&empty_dir);
    std::fs::create_dir_all(&empty_dir).unwrap();
    let mut c = ModelConfig::default();
    assert!(!backend.accepts(&c, &empty_dir));
    c.platform = "onnxruntime_onnx".into();
    assert!(backend.accepts(&c, &empty_dir));
    let c = ModelConfig { backend: "onnxruntime".into(), ..Default::default() };
    assert!(backend.accepts(&c, &empty_dir));
    let c = ModelConfig { platform: "tensorflow_savedmodel".into(), ..Default::default() };
    assert!(!backend.accepts(&c, &data_dir()));

    std::fs::write(empty_dir.join("model.onnx"), b"").unwrap();
    assert!(backend.accepts(&ModelConfig::default(), &empty_dir));
    let c = ModelConfig { default_model_filename: "add_sub.onnx".into(), ..Default::default() };
    assert!(!backend.accepts(&c, &empty_dir));
    assert!(backend.accepts(&c, &data_dir()));
    let c = ModelConfig { backend: "candle".into(), ..Default::default() };
    assert!(!backend.accepts(&c, &empty_dir));
    assert_eq!(backend.name(), "onnxruntime");
    assert_eq!(backend.default_filename(), "model.onnx");
    std::fs::remove_dir_all(&empty_dir).unwrap();
}

#[test]
fn model_directory_holding_model_onnx() {
    runtime();
    let dir = std::env::temp_dir().join(format!("sluice-onnx-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("model.onnx")).unwrap();
    std::fs::copy(data_dir().join("identity_int8.onnx"), dir.join("model.onnx/model.onnx")).unwrap();
    let files = ModelFiles { model_dir: dir.clone(), version_dir: dir.clone(), model_path: dir.join("model.onnx") };
    let backend = OnnxBackend::new(1);
    let mut config = named("dir");
    backend.auto_complete(&mut config, &files).unwrap();
    assert_eq!(config.input, vec![tc("IN", "TYPE_INT8", &[2, -1])]);
    backend.load(&config, &files, 0).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
