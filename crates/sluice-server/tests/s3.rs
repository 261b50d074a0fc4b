//! An `s3://` model repository end to end, against a real S3-protocol server on loopback
//! (`moto_server` from `moto[server]`, installed into `.venv` by scripts/setup.sh): the server
//! mirrors the bucket, serves it, follows a new version and a removed model in poll mode, and
//! keeps serving its cached copy when the store goes away.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{test_data, ADD_SUB_CONFIG};
use serde_json::{json, Value};
use sluice_repository::remote::object_store::aws::AmazonS3Builder;
use sluice_repository::remote::object_store::path::Path as ObjectPath;
use sluice_repository::remote::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sluice_server::{EngineOptions, ServerConfig};

const BUCKET: &str = "sluice-models";

/// A `moto_server` child process, killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    async fn start() -> Moto {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let bin = root.join(".venv/bin/moto_server");
        assert!(
            bin.is_file(),
            "{} is missing: the S3 repository test needs `moto[server]` (pinned in scripts/requirements.txt); \
             run scripts/setup.sh, or .venv/bin/pip install -r scripts/requirements.txt",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}"), log, _dir: dir };
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto_server exited ({status}): {}", std::fs::read_to_string(&moto.log).unwrap_or_default());
            }
            if c.get(&moto.endpoint).send().await.is_ok_and(|r| r.status().is_success()) {
                return moto;
            }
            assert!(Instant::now() < deadline, "moto_server did not answer on {} within 60 s", moto.endpoint);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn put(store: &dyn ObjectStore, key: &str, data: Vec<u8>) {
    store.put(&ObjectPath::from(key), PutPayload::from(data)).await.unwrap();
}

fn add_sub_body() -> Value {
    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0f32; 16]}
    ]})
}

#[tokio::test]
async fn s3_repository_is_mirrored_served_and_followed() {
    let moto = Moto::start().await;
    // The standard variables, as an operator would set them for MinIO or any S3-compatible store.
    for k in ["AWS_SESSION_TOKEN", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_PROFILE"] {
        std::env::remove_var(k);
    }
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", &moto.endpoint);
    std::env::set_var("AWS_ALLOW_HTTP", "true");

    // A bucket holding a repository: add_sub (config.pbtxt) and strings (auto-completed), a
    // console-style folder marker, and objects outside the prefix that must not be mirrored.
    let c = reqwest::Client::new();
    let r = c.put(format!("{}/{BUCKET}", moto.endpoint)).send().await.unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let store = AmazonS3Builder::from_env().with_bucket_name(BUCKET).build().unwrap();
    let onnx = |name: &str| std::fs::read(test_data(name)).unwrap();
    put(&store, "models/add_sub/config.pbtxt", ADD_SUB_CONFIG.as_bytes().to_vec()).await;
    put(&store, "models/add_sub/1/model.onnx", onnx("add_sub.onnx")).await;
    put(&store, "models/strings/1/model.onnx", onnx("identity_string.onnx")).await;
    let marker = format!("{}/{BUCKET}/models/strings/", moto.endpoint);
    assert!(c.put(marker).send().await.unwrap().status().is_success());
    put(&store, "models-old/add_sub/1/model.onnx", b"not under the prefix".to_vec()).await;
    // An endpoint is mirrored and served like a model.
    put(&store, "models/adder/endpoint.yaml", b"kind: split\ntargets:\n  - { model: add_sub, weight: 1 }\n".to_vec())
        .await;

    // A repository that cannot be mirrored at start is a clear error.
    let cache = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        model_repositories: vec![PathBuf::from(format!("s3://{BUCKET}/models"))],
        control_mode: sluice_repository::ControlMode::Poll,
        model_cache_dir: Some(cache.path().to_path_buf()),
        intra_op_threads: 1,
        // Polls are driven by the test, not by the timer.
        poll_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let other_cache = tempfile::tempdir().unwrap();
    let missing = EngineOptions {
        model_repositories: vec!["s3://no-such-bucket/models".into()],
        model_cache_dir: Some(other_cache.path().to_path_buf()),
        ..opts.clone()
    };
    let err = sluice_server::build_engine(&missing).await.err().expect("a missing bucket fails the start").to_string();
    assert!(err.contains("s3://no-such-bucket/models"), "{err}");

    let engine = sluice_server::build_engine(&opts).await.expect("engine starts");
    let cfg =
        ServerConfig { host: "127.0.0.1".into(), http_port: 0, grpc_port: 0, metrics_port: 0, ..Default::default() };
    let server = sluice_server::start(engine, &cfg).await.expect("server starts");
    let engine = server.engine.clone();
    let base = format!("http://{}", server.http_addr);
    let get = |path: String| {
        let (c, base) = (c.clone(), base.clone());
        async move { c.get(format!("{base}{path}")).send().await.unwrap() }
    };
    let infer = |path: &'static str| {
        let (c, base) = (c.clone(), base.clone());
        async move { c.post(format!("{base}{path}")).json(&add_sub_body()).send().await.unwrap() }
    };
    let versions =
        || async { get("/v2/models/add_sub".into()).await.json::<Value>().await.unwrap()["versions"].clone() };

    // Served from the mirror.
    assert_eq!(get("/v2/health/ready".into()).await.status(), 200);
    assert_eq!(versions().await, json!(["1"]));
    assert_eq!(get("/v2/models/strings/ready".into()).await.status(), 200);
    let out: Value = infer("/v2/models/add_sub/infer").await.json().await.unwrap();
    assert_eq!(out["model_version"], "1");
    assert_eq!(out["outputs"][0]["data"][15], json!(16.0));
    assert_eq!(out["outputs"][1]["data"][15], json!(14.0));
    let mirrors: Vec<PathBuf> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(mirrors.len(), 1, "one cache directory per remote URL: {mirrors:?}");
    let mirror = mirrors[0].join("repo");
    assert!(mirror.join("add_sub/1/model.onnx").is_file());
    assert!(mirror.join("strings/1/model.onnx").is_file());
    let index: Value = c.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = index.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["add_sub", "adder", "strings"], "{index}");
    let out: Value = infer("/v2/models/adder/infer").await.json().await.unwrap();
    assert_eq!(
        (out["model_name"].clone(), out["parameters"]["sluice_model"].clone()),
        (json!("adder"), json!("add_sub"))
    );

    // A poll without changes keeps everything as it is.
    engine.poll().await;
    assert_eq!(versions().await, json!(["1"]));

    // Version 2 uploaded: the next poll loads it and it takes over (latest policy keeps one).
    put(&store, "models/add_sub/2/model.onnx", onnx("add_sub.onnx")).await;
    engine.poll().await;
    assert_eq!(versions().await, json!(["2"]));
    let r = infer("/v2/models/add_sub/infer").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["model_version"], "2");
    assert_eq!(infer("/v2/models/add_sub/versions/2/infer").await.status(), 200);
    assert_ne!(get("/v2/models/add_sub/versions/1/ready".into()).await.status(), 200);

    // An endpoint uploaded later is served from the next poll; one deleted stops being served.
    put(&store, "models/adder2/endpoint.yaml", b"kind: split\ntargets:\n  - { model: add_sub, weight: 1 }\n".to_vec())
        .await;
    engine.poll().await;
    assert_eq!(infer("/v2/models/adder2/infer").await.status(), 200);
    store.delete(&ObjectPath::from("models/adder/endpoint.yaml")).await.unwrap();
    engine.poll().await;
    assert_eq!(infer("/v2/models/adder/infer").await.status(), 404);

    // A model's files deleted (its folder marker left behind, as a console does): the next poll
    // unloads it and it leaves the index.
    store.delete(&ObjectPath::from("models/strings/1/model.onnx")).await.unwrap();
    engine.poll().await;
    assert_eq!(get("/v2/models/strings/ready".into()).await.status(), 400);
    assert!(!mirror.join("strings").is_dir());
    let index: Value = c.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    assert!(index.as_array().unwrap().iter().all(|e| e["name"] != "strings"), "{index}");

    // The store goes away: polls fail to sync, and the cached copy keeps serving.
    drop(moto);
    engine.poll().await;
    assert_eq!(versions().await, json!(["2"]));
    assert_eq!(infer("/v2/models/add_sub/infer").await.status(), 200);
    assert!(mirror.join("add_sub/2/model.onnx").is_file());
    server.shutdown().await;
}
