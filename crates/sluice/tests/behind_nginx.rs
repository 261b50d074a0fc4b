//! Three `sluice serve` replicas behind one address: nginx (a local stand-in for a Kubernetes
//! Service) in front of them over HTTP and gRPC, one Redis for jobs and state. Closed-loop load
//! runs through nginx while one replica is killed (SIGKILL) and started again:
//! - every request is answered or fails with a retriable error (HTTP 502/503/504, gRPC
//!   UNAVAILABLE, a gRPC stream reset by the proxy, or a dropped connection), and the failures
//!   are counted;
//! - requests succeed again after the restart;
//! - every job accepted through nginx completes.
//!
//! nginx answers a gRPC call it could not pass on with gRPC status UNAVAILABLE (`error_page` to a
//! location that sets `grpc-status: 14`), not with an HTML 502 page that gRPC clients cannot
//! read; docs/deploy.md shows the same configuration.
//!
//! Needs `nginx` on the PATH (apt `nginx-light`; scripts/setup.sh installs it).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_server::grpc::pb;

struct Replica {
    http: u16,
    grpc: u16,
    metrics: u16,
}

fn start_replica(r: &Replica, repo: &Path, queue: &str, state: &Path) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--host", "127.0.0.1", "--queue", queue, "--workers", "1", "--drain-delay-secs", "0"])
        .arg("--model-repository")
        .arg(repo)
        .arg("--state-dir")
        .arg(state)
        .args(["--http-port", &r.http.to_string(), "--grpc-port", &r.grpc.to_string()])
        .args(["--metrics-port", &r.metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    wait_http(&format!("http://127.0.0.1:{}/v2/health/ready", r.http));
    proc
}

fn start_nginx(dir: &Path, http: u16, grpc: u16, replicas: &[Replica]) -> Proc {
    let servers = |port: fn(&Replica) -> u16| {
        replicas
            .iter()
            .map(|r| format!("server 127.0.0.1:{} max_fails=1 fail_timeout=1s;", port(r)))
            .collect::<String>()
    };
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream sluice_http {{ {} keepalive 16; }}\n  upstream sluice_grpc {{ {} keepalive 16; }}\n\
           server {{ listen 127.0.0.1:{http}; location / {{ proxy_pass http://sluice_http; proxy_http_version 1.1; \
                     proxy_set_header Connection \"\"; }} }}\n\
           server {{ listen 127.0.0.1:{grpc} http2; location / {{ grpc_pass grpc://sluice_grpc; \
                     error_page 502 503 504 = /unavailable; }}\n\
             location = /unavailable {{ internal; default_type application/grpc; add_header grpc-status 14 always; \
                     add_header grpc-message \"no replica answered\" always; return 204; }} }}\n}}\n",
        servers(|r| r.http),
        servers(|r| r.grpc),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    // Debian puts it in /usr/sbin, which is not on every user's PATH.
    let nginx = if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" };
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx on the PATH (apt nginx-light; scripts/setup.sh installs it)");
    wait_port(grpc, || {
        format!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default())
    });
    Proc(child)
}

fn body() -> Value {
    json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": (0..16).map(|i| i as f32).collect::<Vec<_>>()},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0f32; 16]},
    ]})
}

fn grpc_request() -> pb::ModelInferRequest {
    let input = |name: &str| pb::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![1, 16],
        parameters: HashMap::new(),
        contents: Some(pb::InferTensorContents { fp32_contents: vec![1.0; 16], ..Default::default() }),
    };
    pb::ModelInferRequest {
        model_name: "add_sub".into(),
        inputs: vec![input("INPUT0"), input("INPUT1")],
        ..Default::default()
    }
}

/// What one request came to: answered, or how it failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Outcome {
    Ok,
    /// Retriable: the proxy had no live replica to give it (502/503/504, UNAVAILABLE), or the
    /// connection to it dropped.
    Retriable(String),
    Other(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_behind_one_address_loses_no_job_and_fails_only_retriably() {
    let (repo, redis_dir, nginx_dir) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    add_sub(repo.path(), &format!("{ADD_SUB_CONFIG}dynamic_batching {{ }}\n"));
    let redis_port = free_port();
    let _redis = redis(redis_dir.path(), redis_port);
    let queue = format!("redis://127.0.0.1:{redis_port}/0");
    let replicas: Vec<Replica> =
        (0..3).map(|_| Replica { http: free_port(), grpc: free_port(), metrics: free_port() }).collect();
    let states: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The helpers wait with a blocking client, which must not run on the runtime's own threads.
    let mut procs: Vec<Option<Proc>> = tokio::task::block_in_place(|| {
        replicas.iter().zip(&states).map(|(r, s)| Some(start_replica(r, repo.path(), &queue, s.path()))).collect()
    });
    let (http, grpc) = (free_port(), free_port());
    let _nginx = start_nginx(nginx_dir.path(), http, grpc, &replicas);
    let base = format!("http://127.0.0.1:{http}");

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, base) = (stop.clone(), base.clone());
        load.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = c.post(format!("{base}/v2/models/add_sub/infer")).json(&body()).send().await;
                let outcome = match r {
                    Ok(r) if r.status() == 200 => Outcome::Ok,
                    Ok(r) if [502, 503, 504].contains(&r.status().as_u16()) => {
                        Outcome::Retriable(format!("http {}", r.status()))
                    }
                    Ok(r) => Outcome::Other(format!("http {}: {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => Outcome::Retriable(format!("http connection: {e}")),
                };
                seen.push((started.elapsed(), outcome));
            }
            seen
        }));
    }
    for _ in 0..2 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}")).unwrap().connect_lazy();
            let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let outcome = match client.model_infer(grpc_request()).await {
                    Ok(_) => Outcome::Ok,
                    Err(s) if s.code() == tonic::Code::Unavailable => Outcome::Retriable("grpc UNAVAILABLE".into()),
                    // A call in flight on the killed replica: nginx resets its stream (RST_STREAM
                    // CANCEL), which the client reports as CANCELLED. Nothing answered it.
                    Err(s) if s.code() == tonic::Code::Cancelled => Outcome::Retriable("grpc stream reset".into()),
                    Err(s) => Outcome::Other(format!("grpc {:?}: {}", s.code(), s.message())),
                };
                seen.push((started.elapsed(), outcome));
            }
            seen
        }));
    }
    let jobs = {
        let (stop, base) = (stop.clone(), base.clone());
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut accepted = Vec::new();
            let mut refused = 0;
            while !stop.load(Ordering::Relaxed) {
                match c.post(format!("{base}/v2/models/add_sub/jobs")).json(&body()).send().await {
                    Ok(r) if r.status() == 202 => {
                        accepted.push(r.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_string())
                    }
                    Ok(_) | Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (accepted, refused)
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = started.elapsed();
    procs[0].take();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarting_at = started.elapsed();
    procs[0] = Some(tokio::task::block_in_place(|| start_replica(&replicas[0], repo.path(), &queue, states[0].path())));
    let back_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for l in load {
        all.extend(l.await.unwrap());
    }
    let mut counts: HashMap<Outcome, u64> = HashMap::new();
    for (_, o) in &all {
        *counts.entry(o.clone()).or_default() += 1;
    }
    let per_second: Vec<u64> = (0..started.elapsed().as_secs() + 1)
        .map(|s| all.iter().filter(|(t, o)| t.as_secs() == s && *o == Outcome::Ok).count() as u64)
        .collect();
    eprintln!(
        "killed at {killed_at:?}, restarted at {restarting_at:?}, ready at {back_at:?}; answered per second: {per_second:?}; \
         outcomes: {counts:?}"
    );
    let others: Vec<&Outcome> = all.iter().map(|(_, o)| o).filter(|o| matches!(o, Outcome::Other(_))).collect();
    assert!(others.is_empty(), "only retriable failures: {others:?}");
    assert!(all.iter().any(|(t, o)| *t > back_at && *o == Outcome::Ok), "requests are answered after the restart");

    // Every job accepted through the proxy completes, wherever it ran.
    let (accepted, refused) = jobs.await.unwrap();
    eprintln!("jobs: {} accepted, {refused} not accepted", accepted.len());
    assert!(accepted.len() > 50, "{} jobs accepted", accepted.len());
    let c = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs(90);
    for id in &accepted {
        loop {
            let r = c.get(format!("{base}/v2/jobs/{id}")).send().await.unwrap();
            let status =
                if r.status() == 200 { r.json::<Value>().await.unwrap()["status"].clone() } else { Value::Null };
            if status == "completed" {
                break;
            }
            assert!(status != "failed" && status != "cancelled", "job {id}: {status}");
            assert!(Instant::now() < end, "job {id} not completed: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
