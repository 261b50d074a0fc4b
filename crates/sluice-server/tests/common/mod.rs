//! Shared test fixture: a temporary model repository built from the backend's tiny test models
//! and a real server on 127.0.0.1:0.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sluice_server::{EngineOptions, RunningServer, ServerConfig};

pub fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sluice-backend/tests/data").join(name)
}

pub const ADD_SUB_CONFIG: &str = r#"
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"#;

/// Writes `<dir>/<model>/<version>/model.onnx` (a copy of a test model) and an optional config.
pub fn add_model(dir: &Path, model: &str, version: u64, onnx: &str, config: Option<&str>) {
    let vdir = dir.join(model).join(version.to_string());
    std::fs::create_dir_all(&vdir).unwrap();
    std::fs::copy(test_data(onnx), vdir.join("model.onnx")).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.join(model).join("config.pbtxt"), c).unwrap();
    }
}

/// A repository with add_sub (config.pbtxt), identity_string (auto-completed) and a broken
/// model whose file is not ONNX.
pub fn standard_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), "add_sub", 1, "add_sub.onnx", Some(ADD_SUB_CONFIG));
    add_model(dir.path(), "strings", 1, "identity_string.onnx", None);
    let broken = dir.path().join("broken/1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.onnx"), b"this is not an onnx file").unwrap();
    dir
}

pub async fn start_server(repo: &Path, opts: EngineOptions, cfg: ServerConfig) -> RunningServer {
    let opts = EngineOptions { model_repositories: vec![repo.to_path_buf()], intra_op_threads: 1, ..opts };
    let engine = sluice_server::build_engine(&opts).await.expect("engine starts");
    let cfg = ServerConfig { host: "127.0.0.1".into(), http_port: 0, grpc_port: 0, metrics_port: 0, ..cfg };
    sluice_server::start(engine, &cfg).await.expect("server starts")
}

/// A repository holding `slow` (tests/data/slow.onnx): its input `N` sets the cost, N^3 flops.
pub fn slow_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("slow/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/slow.onnx"), v.join("model.onnx")).unwrap();
    dir
}

/// The config of a spam classifier of $SLUICE_MODELS taking text: the server tokenizes `TEXT`
/// with the model's own tokenizer.json and answers `probabilities` (labelled) and `label`.
const TEXT_CLASSIFIER: &str = r#"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
        { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 2 ] label_filename: "labels.txt" },
         { name: "label" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } } ]
parameters { key: "text_input" value: { string_value: "TEXT" } }
parameters { key: "max_sequence_length" value: { string_value: "128" } }
"#;

/// `source` (spam-fast or spam-accurate, from $SLUICE_MODELS) as the text model `dir/name`,
/// version 1, with `extra` appended to its config.
pub fn add_text_classifier(dir: &Path, name: &str, source: &str, extra: &str) {
    let m = sluice_test_models::model_path(source);
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("1")).unwrap();
    std::os::unix::fs::symlink(m.join("model.onnx"), d.join("1/model.onnx")).unwrap();
    std::fs::copy(m.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    std::fs::copy(m.join("labels.txt"), d.join("labels.txt")).unwrap();
    std::fs::write(d.join("config.pbtxt"), format!("{TEXT_CLASSIFIER}{extra}\n")).unwrap();
}
