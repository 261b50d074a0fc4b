//! `sluice models ...`: the built binary against a server running in this test process.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use sluice_server::{EngineOptions, RunningServer, ServerConfig};

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_sub(dir.path(), ADD_SUB_CONFIG);
    std::fs::create_dir_all(dir.path().join("broken/1")).unwrap();
    std::fs::write(dir.path().join("broken/1/model.onnx"), b"not a model").unwrap();
    dir
}

async fn server(repo: &Path) -> RunningServer {
    let opts =
        EngineOptions { model_repositories: vec![repo.to_path_buf()], intra_op_threads: 1, ..Default::default() };
    let engine = sluice_server::build_engine(&opts).await.expect("engine starts");
    let cfg =
        ServerConfig { host: "127.0.0.1".into(), http_port: 0, grpc_port: 0, metrics_port: 0, ..Default::default() };
    sluice_server::start(engine, &cfg).await.expect("server starts")
}

/// `sluice models ARGS --url URL`.
async fn sluice(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["models"];
    all.extend_from_slice(args);
    sluice_client(url, &all).await
}

/// Asserts failure and returns stderr.
fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure; stdout: {}", text(&out.stdout));
    text(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_status_load_unload() {
    let dir = repo();
    let server = server(dir.path()).await;
    let url = format!("http://{}", server.http_addr);

    let list = ok(&sluice(&url, &["list"]).await);
    assert!(list.starts_with("NAME"), "{list}");
    assert_eq!(row(&list, "add_sub"), ["add_sub", "1", "READY"]);
    let broken = row(&list, "broken");
    assert_eq!(broken[1..3], ["-", "UNAVAILABLE"], "{list}");
    assert!(broken.len() > 3, "the reason is shown: {list}");
    let ready = ok(&sluice(&url, &["list", "--ready"]).await);
    assert!(ready.contains("add_sub") && !ready.contains("broken"), "{ready}");

    let status = ok(&sluice(&url, &["status", "add_sub"]).await);
    for part in ["ready:     yes", "versions:  1", "INPUT0 FP32 [-1,16]", "OUTPUT1 FP32 [-1,16]", "requests:    0 ok"] {
        assert!(status.contains(part), "'{part}' not in\n{status}");
    }
    let e = failed(&sluice(&url, &["status", "broken"]).await);
    assert!(e.contains("'broken' is not ready"), "{e}");
    let e = failed(&sluice(&url, &["status", "nope"]).await);
    assert!(e.contains("no model 'nope'"), "{e}");

    // Unload, then load with a pbtxt config that changes max_batch_size.
    assert_eq!(ok(&sluice(&url, &["unload", "add_sub"]).await).trim(), "unloaded add_sub");
    let list = ok(&sluice(&url, &["list"]).await);
    assert_eq!(row(&list, "add_sub"), ["add_sub", "-", "UNAVAILABLE", "unloaded"]);
    let cfg = dir.path().join("override.pbtxt");
    std::fs::write(&cfg, ADD_SUB_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4")).unwrap();
    assert_eq!(
        ok(&sluice(&url, &["load", "add_sub", "--config", cfg.to_str().unwrap()]).await).trim(),
        "loaded add_sub"
    );
    assert_eq!(server.engine.resolve("add_sub", None).unwrap().config().max_batch_size, 4);
    // A JSON config goes as it is; the server's refusal is the message, and the exit code says so.
    let json = dir.path().join("wrong.json");
    std::fs::write(&json, r#"{"name": "other"}"#).unwrap();
    let e = failed(&sluice(&url, &["load", "add_sub", "--config", json.to_str().unwrap()]).await);
    assert!(e.contains("must match the directory name") && e.contains("HTTP 400"), "{e}");
    let e = failed(&sluice(&url, &["load", "missing"]).await);
    assert!(e.contains("no model directory 'missing'"), "{e}");
    let e = failed(&sluice(&url, &["unload", "never_seen"]).await);
    assert!(e.contains("no such model"), "{e}");
    assert_eq!(ok(&sluice(&url, &["status", "add_sub"]).await).lines().nth(1), Some("ready:     yes"));
    server.shutdown().await;

    let e = failed(&sluice(&url, &["list"]).await);
    assert!(e.contains("cannot reach the server"), "{e}");
}
