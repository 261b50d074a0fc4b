//! The gRPC edge end to end: an engine over a temporary repository holding `add_sub`
//! (INPUT0, INPUT1: FP32 [-1, 16]; OUTPUT0 = sum, OUTPUT1 = difference), served on 127.0.0.1:0
//! and called through the generated tonic client. Needs ONNX Runtime: set `ORT_DYLIB_PATH`, or
//! have the workspace's `.venv` with `onnxruntime`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use sluice_backend::onnx::{self, OnnxBackend};
use sluice_backend::BackendRegistry;
use sluice_repository::{ControlMode, ModelRepository, RepositoryOptions};
use sluice_server::engine::Engine;
use sluice_server::grpc::pb;
use sluice_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_server::grpc::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use sluice_server::grpc::pb::model_repository_parameter::ParameterChoice;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn model_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sluice-backend/tests/data/add_sub.onnx")
}

fn runtime() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let lib = onnx::find_library(None).or_else(|e| {
            let venv =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib/python3.11/site-packages/onnxruntime/capi");
            onnx::find_library(Some(&venv)).map_err(|_| e)
        });
        let lib = lib.unwrap_or_else(|e| panic!("these tests need ONNX Runtime: {e}"));
        onnx::init_runtime(&lib).expect("init_runtime");
    });
}

struct Server {
    engine: Arc<Engine>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        runtime();
        let dir = tempfile::tempdir().unwrap();
        let version_dir = dir.path().join("add_sub/1");
        std::fs::create_dir_all(&version_dir).unwrap();
        std::fs::copy(model_file(), version_dir.join("model.onnx")).unwrap();

        let mut backends = BackendRegistry::new();
        backends.register(Arc::new(OnnxBackend::new(1)));
        let repo = ModelRepository::start(RepositoryOptions {
            roots: vec![dir.path().to_path_buf()],
            control_mode: ControlMode::None,
            startup_models: vec![],
            backends,
            queue_limits: Default::default(),
            remotes: vec![],
        });
        repo.load_startup_models().await.unwrap();
        let engine = Engine::new(repo, Default::default());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_server::grpc::serve(engine.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Server { engine, addr, stop: Some(stop), task: Some(task), _dir: dir }
    }

    async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    async fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(self.channel().await)
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), task).await.expect("server stops in time");
            r.expect("server task").expect("serve returns Ok");
        }
    }
}

fn fp32_input(name: &str, shape: Vec<i64>, values: Vec<f32>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape,
        parameters: HashMap::new(),
        contents: Some(pb::InferTensorContents { fp32_contents: values, ..Default::default() }),
    }
}

fn raw_input(name: &str, shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: "FP32".into(), shape, parameters: HashMap::new(), contents: None }
}

fn le_bytes(values: &[f32]) -> Bytes {
    values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()
}

fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn typed_request(id: &str, a: Vec<f32>, b: Vec<f32>) -> pb::ModelInferRequest {
    let n = a.len() as i64 / 16;
    pb::ModelInferRequest {
        model_name: "add_sub".into(),
        id: id.into(),
        inputs: vec![fp32_input("INPUT0", vec![n, 16], a), fp32_input("INPUT1", vec![n, 16], b)],
        ..Default::default()
    }
}

fn output<'a>(
    resp: &'a pb::ModelInferResponse,
    name: &str,
) -> (&'a pb::model_infer_response::InferOutputTensor, Vec<f32>) {
    let i = resp.outputs.iter().position(|o| o.name == name).unwrap_or_else(|| panic!("no output {name}"));
    (&resp.outputs[i], f32s(&resp.raw_output_contents[i]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metadata() {
    let server = Server::start().await;
    let mut c = server.client().await;

    assert!(c.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(c.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = |name: &str, version: &str| pb::ModelReadyRequest { name: name.into(), version: version.into() };
    assert!(c.model_ready(ready("add_sub", "")).await.unwrap().into_inner().ready);
    assert!(c.model_ready(ready("add_sub", "1")).await.unwrap().into_inner().ready);
    assert!(!c.model_ready(ready("add_sub", "7")).await.unwrap().into_inner().ready);
    assert!(!c.model_ready(ready("nope", "")).await.unwrap().into_inner().ready);

    let meta = c.server_metadata(pb::ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(meta.name, "sluice");
    assert!(meta.extensions.iter().any(|e| e == "model_repository"), "{:?}", meta.extensions);

    let m = c
        .model_metadata(pb::ModelMetadataRequest { name: "add_sub".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.name, "add_sub");
    assert_eq!(m.versions, vec!["1"]);
    assert_eq!(m.inputs.len(), 2);
    let in0 = m.inputs.iter().find(|t| t.name == "INPUT0").unwrap();
    assert_eq!((in0.datatype.as_str(), in0.shape.clone()), ("FP32", vec![-1, 16]));
    let e =
        c.model_metadata(pb::ModelMetadataRequest { name: "nope".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // gRPC health follows the engine's readiness.
    let mut h = HealthClient::new(server.channel().await);
    let check = |service: &str| HealthCheckRequest { service: service.into() };
    let s = h.check(check("")).await.unwrap().into_inner().status;
    assert_eq!(s, ServingStatus::Serving as i32);
    let s = h.check(check("inference.GRPCInferenceService")).await.unwrap().into_inner().status;
    assert_eq!(s, ServingStatus::Serving as i32);
    assert_eq!(h.check(check("other.Service")).await.unwrap_err().code(), Code::NotFound);
    let mut watch = h.watch(check("")).await.unwrap().into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    server.engine.start_draining();
    let s = h.check(check("")).await.unwrap().into_inner().status;
    assert_eq!(s, ServingStatus::NotServing as i32);
    assert!(!c.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let changed = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("watch reports the change");
    assert_eq!(changed.unwrap().unwrap().status, ServingStatus::NotServing as i32);

    // Shutdown ends the open watch and the server returns.
    server.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("watch ends on shutdown");
    assert!(end.is_none() || end.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_typed_and_raw() {
    let server = Server::start().await;
    let mut c = server.client().await;

    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..16).map(|i| 0.5 * i as f32).collect();
    let resp = c.model_infer(typed_request("req-1", a.clone(), b.clone())).await.unwrap().into_inner();
    assert_eq!((resp.model_name.as_str(), resp.model_version.as_str(), resp.id.as_str()), ("add_sub", "1", "req-1"));
    assert_eq!(resp.outputs.len(), 2);
    assert_eq!(resp.raw_output_contents.len(), 2);
    let (t, sum) = output(&resp, "OUTPUT0");
    assert_eq!((t.datatype.as_str(), t.shape.clone()), ("FP32", vec![1, 16]));
    assert_eq!(sum, a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>());
    let (_, diff) = output(&resp, "OUTPUT1");
    assert_eq!(diff, a.iter().zip(&b).map(|(x, y)| x - y).collect::<Vec<_>>());

    // Raw contents, batch of 2, one requested output, explicit version.
    let a2: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let b2: Vec<f32> = vec![1.0; 32];
    let req = pb::ModelInferRequest {
        model_name: "add_sub".into(),
        model_version: "1".into(),
        inputs: vec![raw_input("INPUT0", vec![2, 16]), raw_input("INPUT1", vec![2, 16])],
        outputs: vec![InferRequestedOutputTensor { name: "OUTPUT1".into(), parameters: HashMap::new() }],
        raw_input_contents: vec![le_bytes(&a2), le_bytes(&b2)],
        ..Default::default()
    };
    let resp = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(resp.id, "");
    assert_eq!(resp.outputs.len(), 1);
    let (t, diff) = output(&resp, "OUTPUT1");
    assert_eq!(t.shape, vec![2, 16]);
    assert_eq!(diff, a2.iter().map(|x| x - 1.0).collect::<Vec<_>>());

    // Request parameters travel (the engine accepts unknown ones).
    let mut req = typed_request("p", a.clone(), b.clone());
    req.parameters.insert(
        "priority".into(),
        pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(0)) },
    );
    c.model_infer(req).await.unwrap();

    // Statistics count what ran.
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest { name: "add_sub".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.model_stats.len(), 1);
    let s = &stats.model_stats[0];
    assert_eq!((s.name.as_str(), s.version.as_str()), ("add_sub", "1"));
    assert!(s.inference_count >= 4, "{s:?}");
    assert!(s.execution_count >= 1, "{s:?}");
    let inf = s.inference_stats.as_ref().unwrap();
    assert_eq!(inf.success.as_ref().unwrap().count, 3, "{s:?}");
    assert!(s.last_inference > 0);
    let all = c.model_statistics(pb::ModelStatisticsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.model_stats.len(), 1);
    let e = c
        .model_statistics(pb::ModelStatisticsRequest { name: "nope".into(), version: String::new() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_codes_and_names() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let a = vec![0.0f32; 16];

    let mut req = typed_request("", a.clone(), a.clone());
    req.model_name = "nope".into();
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nope"), "{e:?}");

    // Element count does not match the shape.
    let req = typed_request("", vec![0.0; 15], a.clone());
    let mut req = req;
    req.inputs[0].shape = vec![1, 16];
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("INPUT0") && e.message().contains("16") && e.message().contains("15"), "{e:?}");

    // Shape that does not match the model.
    let req = pb::ModelInferRequest {
        model_name: "add_sub".into(),
        inputs: vec![fp32_input("INPUT0", vec![1, 8], vec![0.0; 8]), fp32_input("INPUT1", vec![1, 8], vec![0.0; 8])],
        ..Default::default()
    };
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("INPUT0") || e.message().contains("INPUT1"), "{e:?}");

    // Raw contents of the wrong size.
    let req = pb::ModelInferRequest {
        model_name: "add_sub".into(),
        inputs: vec![raw_input("INPUT0", vec![1, 16]), raw_input("INPUT1", vec![1, 16])],
        raw_input_contents: vec![le_bytes(&a), le_bytes(&a[..3])],
        ..Default::default()
    };
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("INPUT1") && e.message().contains("64") && e.message().contains("12"), "{e:?}");

    // Out-of-range INT8 value.
    let req = pb::ModelInferRequest {
        model_name: "add_sub".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "INT8".into(),
            shape: vec![1],
            parameters: HashMap::new(),
            contents: Some(pb::InferTensorContents { int_contents: vec![1000], ..Default::default() }),
        }],
        ..Default::default()
    };
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("INPUT0") && e.message().contains("1000"), "{e:?}");

    // Unknown version.
    let mut req = typed_request("", a.clone(), a.clone());
    req.model_version = "9".into();
    assert_eq!(c.model_infer(req).await.unwrap_err().code(), Code::NotFound);

    // What the server does not do.
    let e = c.system_shared_memory_status(pb::SystemSharedMemoryStatusRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("shared memory"), "{e:?}");
    let e = c.cuda_shared_memory_register(pb::CudaSharedMemoryRegisterRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("CUDA"), "{e:?}");
    assert_eq!(c.trace_setting(pb::TraceSettingRequest::default()).await.unwrap_err().code(), Code::Unimplemented);
    assert_eq!(c.log_settings(pb::LogSettingsRequest::default()).await.unwrap_err().code(), Code::Unimplemented);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_infer_answers_each_request_and_survives_errors() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let mut bad = typed_request("bad", vec![0.0; 3], a.clone());
    bad.inputs[0].shape = vec![1, 16];
    let requests = vec![
        typed_request("one", a.clone(), a.clone()),
        bad,
        typed_request("two", a.clone(), vec![1.0; 16]),
        pb::ModelInferRequest { model_name: "nope".into(), id: "missing".into(), ..Default::default() },
        typed_request("three", vec![2.0; 16], a.clone()),
    ];
    let mut answers = c.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut by_id = HashMap::new();
    while let Some(item) = answers.next().await {
        let r = item.expect("the stream does not end on an inference error");
        let resp = r.infer_response.expect("each answer names its request");
        by_id.insert(resp.id.clone(), (r.error_message, resp));
    }
    assert_eq!(by_id.len(), 5, "{:?}", by_id.keys());
    let (err, resp) = &by_id["one"];
    assert!(err.is_empty(), "{err}");
    assert_eq!(output(resp, "OUTPUT0").1, a.iter().map(|x| 2.0 * x).collect::<Vec<_>>());
    let (err, _) = &by_id["bad"];
    assert!(err.contains("INPUT0"), "{err}");
    let (err, resp) = &by_id["two"];
    assert!(err.is_empty(), "{err}");
    assert_eq!(output(resp, "OUTPUT1").1, a.iter().map(|x| x - 1.0).collect::<Vec<_>>());
    let (err, _) = &by_id["missing"];
    assert!(err.contains("nope"), "{err}");
    assert!(by_id["three"].0.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_config_is_triton_shaped() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let cfg = c
        .model_config(pb::ModelConfigRequest { name: "add_sub".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(cfg.name, "add_sub");
    assert_eq!(cfg.backend, "onnxruntime");
    assert!(cfg.max_batch_size > 0);
    assert_eq!(cfg.input.len(), 2);
    assert_eq!(cfg.output.len(), 2);
    let in0 = cfg.input.iter().find(|i| i.name == "INPUT0").unwrap();
    assert_eq!(in0.data_type, pb::DataType::TypeFp32 as i32);
    assert_eq!(in0.dims, vec![16]);
    assert!(matches!(cfg.scheduling_choice, Some(pb::model_config::SchedulingChoice::DynamicBatching(_))));
    assert!(matches!(
        cfg.version_policy.and_then(|p| p.policy_choice),
        Some(pb::model_version_policy::PolicyChoice::Latest(pb::model_version_policy::Latest { num_versions: 1 }))
    ));
    let e = c.model_config(pb::ModelConfigRequest { name: "nope".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    server.shutdown().await;
}

fn param(choice: ParameterChoice) -> pb::ModelRepositoryParameter {
    pb::ModelRepositoryParameter { parameter_choice: Some(choice) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index_load_unload() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let index = |ready: bool| pb::RepositoryIndexRequest { repository_name: String::new(), ready };

    let idx = c.repository_index(index(false)).await.unwrap().into_inner().models;
    assert_eq!(idx.len(), 1, "{idx:?}");
    assert_eq!((idx[0].name.as_str(), idx[0].version.as_str(), idx[0].state.as_str()), ("add_sub", "1", "READY"));

    let unload = |name: &str, dependents: bool| pb::RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: name.into(),
        parameters: HashMap::from([("unload_dependents".to_string(), param(ParameterChoice::BoolParam(dependents)))]),
    };
    c.repository_model_unload(unload("add_sub", true)).await.unwrap();
    let ready = pb::ModelReadyRequest { name: "add_sub".into(), version: String::new() };
    assert!(!c.model_ready(ready.clone()).await.unwrap().into_inner().ready);
    assert!(c.repository_index(index(true)).await.unwrap().into_inner().models.is_empty());
    let idx = c.repository_index(index(false)).await.unwrap().into_inner().models;
    assert!(idx.iter().any(|m| m.name == "add_sub" && m.state != "READY"), "{idx:?}");
    let a = vec![0.0f32; 16];
    // An unloaded model is Triton's NOT_FOUND, not UNAVAILABLE (which clients retry as an outage).
    let e = c.model_infer(typed_request("", a.clone(), a.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("'add_sub' has no available versions"), "{e:?}");
    let meta = pb::ModelMetadataRequest { name: "add_sub".into(), version: String::new() };
    assert_eq!(c.model_metadata(meta).await.unwrap_err().code(), Code::NotFound);

    let load = |name: &str, parameters: HashMap<String, pb::ModelRepositoryParameter>| pb::RepositoryModelLoadRequest {
        repository_name: String::new(),
        model_name: name.into(),
        parameters,
    };
    c.repository_model_load(load("add_sub", HashMap::new())).await.unwrap();
    assert!(c.model_ready(ready).await.unwrap().into_inner().ready);
    c.model_infer(typed_request("", a.clone(), a.clone())).await.unwrap();

    // Inline config and files: a model that is not in the repository.
    let onnx = std::fs::read(model_file()).unwrap();
    let params = HashMap::from([
        (
            "config".to_string(),
            param(ParameterChoice::StringParam(r#"{"backend": "onnxruntime", "max_batch_size": 2}"#.into())),
        ),
        ("file:1/model.onnx".to_string(), param(ParameterChoice::BytesParam(onnx.into()))),
    ]);
    c.repository_model_load(load("inline_add", params)).await.unwrap();
    let mut req = typed_request("inline", a.clone(), vec![1.0; 16]);
    req.model_name = "inline_add".into();
    let resp = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(output(&resp, "OUTPUT0").1, vec![1.0; 16]);
    let cfg = c
        .model_config(pb::ModelConfigRequest { name: "inline_add".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cfg.config.unwrap().max_batch_size, 2);

    // Bad load parameters and unknown models.
    let bad = HashMap::from([("config".to_string(), param(ParameterChoice::Int64Param(1)))]);
    let e = c.repository_model_load(load("add_sub", bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("config"), "{e:?}");
    let bad = HashMap::from([("file:1/model.onnx".to_string(), param(ParameterChoice::StringParam("x".into())))]);
    assert_eq!(c.repository_model_load(load("add_sub", bad)).await.unwrap_err().code(), Code::InvalidArgument);
    let e = c.repository_model_load(load("missing_model", HashMap::new())).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_serve_with_a_custom_server() {
    // `routes` is what a caller mounts on its own tonic server.
    runtime();
    let server = Server::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = sluice_server::grpc::routes(server.engine.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tonic::transport::Server::builder().add_routes(routes).serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.unwrap();
    assert!(c.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    server.shutdown().await;
}

/// The real `tritonclient.grpc` (from the workspace's `.venv`) against this server: every call
/// it makes must parse. A venv without it fails the test: scripts/setup.sh installs it.
const TRITONCLIENT_SCRIPT: &str = r#"
import sys, queue
import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException

c = g.InferenceServerClient(sys.argv[1])
assert c.is_server_live() and c.is_server_ready()
assert c.is_model_ready("add_sub") and not c.is_model_ready("nope")
assert c.get_server_metadata().name == "sluice"
m = c.get_model_metadata("add_sub", as_json=True)
assert [i["name"] for i in m["inputs"]] == ["INPUT0", "INPUT1"], m
cfg = c.get_model_config("add_sub", as_json=True)["config"]
assert cfg["name"] == "add_sub" and cfg["input"][0]["data_type"] == "TYPE_FP32", cfg
assert "dynamic_batching" in cfg, cfg

a = np.arange(32, dtype=np.float32).reshape(2, 16)
b = np.ones((2, 16), dtype=np.float32)
inputs = [g.InferInput("INPUT0", [2, 16], "FP32"), g.InferInput("INPUT1", [2, 16], "FP32")]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(b)
r = c.infer("add_sub", inputs, request_id="7", outputs=[g.InferRequestedOutput("OUTPUT1")])
assert r.get_response().id == "7"
assert np.array_equal(r.as_numpy("OUTPUT1"), a - b)
assert r.as_numpy("OUTPUT0") is None

try:
    c.infer("nope", inputs)
    raise SystemExit("expected an error")
except InferenceServerException as e:
    assert e.status() == "StatusCode.NOT_FOUND", e.status()

q = queue.Queue()
c.start_stream(callback=lambda result, error: q.put((result, error)))
c.async_stream_infer("add_sub", inputs, request_id="s1")
c.async_stream_infer("nope", inputs, request_id="s2")
got = [q.get(timeout=10), q.get(timeout=10)]
c.stop_stream()
ok = [r for r, e in got if e is None]
errs = [e for r, e in got if e is not None]
assert len(ok) == 1 and len(errs) == 1, got
assert np.array_equal(ok[0].as_numpy("OUTPUT0"), a + b)

stats = c.get_inference_statistics("add_sub", as_json=True)
assert int(stats["model_stats"][0]["inference_count"]) >= 4, stats
idx = c.get_model_repository_index(as_json=True)
assert idx["models"][0]["name"] == "add_sub", idx
c.unload_model("add_sub")
assert not c.is_model_ready("add_sub")
c.load_model("add_sub")
assert c.is_model_ready("add_sub")
try:
    c.get_system_shared_memory_status()
    raise SystemExit("expected UNIMPLEMENTED")
except InferenceServerException as e:
    assert e.status() == "StatusCode.UNIMPLEMENTED", e.status()
print("tritonclient ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tritonclient_understands_the_server() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let probe = std::process::Command::new(&python).args(["-c", "import tritonclient.grpc, numpy"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{} cannot import tritonclient.grpc and numpy (run `bash scripts/setup.sh`, which installs \
             scripts/requirements.txt into .venv):\n{}",
            python.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {} ({e}): run `bash scripts/setup.sh` to create .venv", python.display()),
    }
    let server = Server::start().await;
    let out = tokio::process::Command::new(&python)
        .args(["-c", TRITONCLIENT_SCRIPT, &server.addr.to_string()])
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("tritonclient ok"), "{text}");
    eprintln!("{}", text.trim());
    server.shutdown().await;
}
