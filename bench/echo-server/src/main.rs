//! The transport limit of this machine for the serving-overhead benchmark: an axum server that
//! reads each request body and answers with a fixed add_sub response, doing no inference.
//! It also answers the metadata and config calls perf_analyzer makes before it starts.
//!
//! Usage: `echo-server [PORT]` (default 8100).

use axum::body::Bytes;
use axum::http::header;
use axum::routing::{get, post};
use axum::Router;

const CONFIG: &str = r#"{"name":"add_sub","platform":"onnxruntime_onnx","max_batch_size":8,
"input":[{"name":"INPUT0","data_type":"TYPE_FP32","dims":[16]},{"name":"INPUT1","data_type":"TYPE_FP32","dims":[16]}],
"output":[{"name":"OUTPUT0","data_type":"TYPE_FP32","dims":[16]},{"name":"OUTPUT1","data_type":"TYPE_FP32","dims":[16]}]}"#;

const METADATA: &str = r#"{"name":"add_sub","versions":["1"],"platform":"onnxruntime_onnx",
"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[-1,16]},{"name":"INPUT1","datatype":"FP32","shape":[-1,16]}],
"outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[-1,16]},{"name":"OUTPUT1","datatype":"FP32","shape":[-1,16]}]}"#;

fn response() -> Vec<u8> {
    let data: Vec<String> = (0..16).map(|i| format!("{i}.0")).collect();
    let data = data.join(",");
    format!(
        r#"{{"model_name":"add_sub","model_version":"1","outputs":[{{"name":"OUTPUT0","datatype":"FP32","shape":[1,16],"data":[{data}]}},{{"name":"OUTPUT1","datatype":"FP32","shape":[1,16],"data":[{data}]}}]}}"#
    )
    .into_bytes()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8100);
    let body = Bytes::from(response());
    let infer = move |req: Bytes| {
        let body = body.clone();
        async move {
            std::hint::black_box(req.len());
            ([(header::CONTENT_TYPE, "application/json")], body)
        }
    };
    let app = Router::new()
        .route("/v2/health/ready", get(|| async { "" }))
        .route("/v2/health/live", get(|| async { "" }))
        .route("/v2", get(|| async { r#"{"name":"echo","version":"0","extensions":[]}"# }))
        .route("/v2/models/add_sub", get(|| async { METADATA }))
        .route("/v2/models/add_sub/config", get(|| async { CONFIG }))
        .route("/v2/models/add_sub/infer", post(infer));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("echo-server listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
