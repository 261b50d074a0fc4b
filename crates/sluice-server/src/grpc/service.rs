//! `inference.GRPCInferenceService` over the engine.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sluice_repository::LoadOverride;
use sluice_types::generation::{Event, GenerateRequest, Prompt, TokenStream};
use sluice_types::{InferResponse, RequestContext, ServeError};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::model_repository_parameter::ParameterChoice;
use super::{config, convert, pb, status_from};
use crate::engine::Engine;

/// Requests of one `ModelStreamInfer` call that may run at once; further requests wait in the
/// stream (HTTP/2 flow control pushes back on the client).
const STREAM_CONCURRENCY: usize = 64;

pub struct InferenceService {
    engine: Arc<Engine>,
}

impl InferenceService {
    pub fn new(engine: Arc<Engine>) -> Self {
        InferenceService { engine }
    }
}

fn opt(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by this server"))
}

/// The request context of a call: its metadata, as its id
/// `x-request-id` or a generated one (recorded on the call's log span), and the deadline that
/// `grpc-timeout` sets.
fn context(meta: MetadataMap) -> RequestContext {
    let id = match meta.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_string(),
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            tracing::Span::current().record("request_id", id.as_str());
            id
        }
    };
    let deadline = meta.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(grpc_timeout);
    let mut ctx = RequestContext::new(id).with_headers(meta.into_headers());
    ctx.deadline = deadline.map(|d| Instant::now() + d);
    ctx
}

/// gRPC's `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

async fn infer(
    engine: &Engine,
    ctx: &RequestContext,
    req: pb::ModelInferRequest,
) -> Result<pb::ModelInferResponse, ServeError> {
    let endpoint = engine.resolve(&req.model_name, opt(&req.model_version))?;
    let request = convert::infer_request(req)?;
    let answer = endpoint.infer(ctx, request).await?;
    Ok(convert::infer_response(answer.response))
}

/// One answer of a stream: the response, or the error in `error_message` (the stream goes on).
async fn stream_answer(
    engine: Arc<Engine>,
    ctx: RequestContext,
    req: pb::ModelInferRequest,
) -> pb::ModelStreamInferResponse {
    let echo = pb::ModelInferResponse {
        model_name: req.model_name.clone(),
        model_version: req.model_version.clone(),
        id: req.id.clone(),
        ..Default::default()
    };
    match infer(&engine, &ctx, req).await {
        Ok(resp) => pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(resp) },
        Err(e) => pb::ModelStreamInferResponse { error_message: e.to_string(), infer_response: Some(echo) },
    }
}

/// The answers of one streamed request: one, or for a generative model one per piece of text
/// (decoupled, as Triton's vLLM backend). With `triton_enable_empty_final_response` (what
/// tritonclient sends for `enable_empty_final_response=True`) every response carries
/// `triton_final_response` and an empty last one marks the end.
fn answers_of(
    engine: Arc<Engine>,
    mut ctx: RequestContext,
    req: pb::ModelInferRequest,
) -> BoxStream<'static, pb::ModelStreamInferResponse> {
    ctx.adopt_v2_id(Some(&req.id));
    let endpoint = match engine.resolve(&req.model_name, opt(&req.model_version)) {
        Ok(e) if e.generative() => e,
        // Not generative, or not there: one answer, which says why when it is an error.
        _ => return futures::stream::once(stream_answer(engine, ctx, req)).boxed(),
    };
    let echo = pb::ModelInferResponse {
        model_name: req.model_name.clone(),
        model_version: req.model_version.clone(),
        id: req.id.clone(),
        ..Default::default()
    };
    let failed = {
        let echo = echo.clone();
        move |e: String| pb::ModelStreamInferResponse { error_message: e, infer_response: Some(echo.clone()) }
    };
    let parsed = convert::infer_request(req).and_then(|r| {
        let flag = r.parameters.get("triton_enable_empty_final_response").and_then(serde_json::Value::as_bool);
        let (text, params) = sluice_llm::backend::request_prompt(&r.inputs, &r.parameters)?;
        let request = GenerateRequest { prompt: Prompt::Text(text), params, explicit_max: true };
        Ok((request, flag.unwrap_or(false), r.id))
    });
    let (request, flag, id) = match parsed {
        Ok(s) => s,
        Err(e) => return futures::stream::once(async move { failed(e.to_string()) }).boxed(),
    };
    // Through an endpoint the answers come under its name, as its infer answers do.
    let asked = echo.model_name.clone();
    let response = move |stream: &dyn TokenStream, text: Option<String>, last: bool| {
        let mut parameters = sluice_types::Parameters::new();
        if flag {
            parameters.insert("triton_final_response".into(), last.into());
        }
        let resp = InferResponse {
            model_name: asked.clone(),
            model_version: if stream.model() == asked { stream.version() } else { String::new() },
            id: id.clone(),
            parameters,
            outputs: text.map(sluice_llm::backend::text_output).into_iter().collect(),
        };
        pb::ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(convert::infer_response(resp)),
        }
    };
    let failed_start = failed.clone();
    let answers = move |stream: Box<dyn TokenStream>| answers_of_stream(stream, flag, response.clone(), failed.clone());
    futures::stream::once(async move { endpoint.generate(&ctx, request).await })
        .flat_map(move |started| match started {
            Ok(stream) => answers(stream),
            Err(e) => futures::stream::once(std::future::ready(failed_start(e.to_string()))).boxed(),
        })
        .boxed()
}

/// The responses of a started generation, one per piece of text.
fn answers_of_stream<R, F>(
    stream: Box<dyn TokenStream>,
    flag: bool,
    response: R,
    failed: F,
) -> BoxStream<'static, pb::ModelStreamInferResponse>
where
    R: Fn(&dyn TokenStream, Option<String>, bool) -> pb::ModelStreamInferResponse + Clone + Send + 'static,
    F: Fn(String) -> pb::ModelStreamInferResponse + Clone + Send + 'static,
{
    // (stream, whether a response went out yet)
    futures::stream::unfold(Some((stream, false)), move |state| {
        let (response, failed) = (response.clone(), failed.clone());
        async move {
            let (mut stream, mut sent) = state?;
            let out = loop {
                match stream.next().await? {
                    Event::Text(t) => break response(&*stream, Some(t), false),
                    Event::PromptLogprobs(_) | Event::Logprobs(_) => continue,
                    Event::Done(_) if flag => break response(&*stream, None, true),
                    // Without the final-response flag a request whose answer is empty (its
                    // first token ends it) still gets one response, with empty text, as from
                    // Triton's vLLM backend: a client waiting for it is not left hanging.
                    Event::Done(_) if !sent => break response(&*stream, Some(String::new()), false),
                    Event::Done(_) => return None,
                    Event::Error(e) => break failed(e),
                }
            };
            sent = true;
            Some((out, Some((stream, sent))))
        }
    })
    .boxed()
}

/// The `config` and `file:<version>/<name>` parameters of a load request.
fn load_override(params: HashMap<String, pb::ModelRepositoryParameter>) -> Result<Option<LoadOverride>, ServeError> {
    let mut ov = LoadOverride::default();
    let mut any = false;
    for (key, p) in params {
        if key == "config" {
            let json = match p.parameter_choice {
                Some(ParameterChoice::StringParam(s)) => s,
                Some(ParameterChoice::BytesParam(b)) => String::from_utf8(b.to_vec())
                    .map_err(|_| ServeError::invalid("parameter 'config' is not valid UTF-8"))?,
                _ => {
                    return Err(ServeError::invalid(
                        "parameter 'config' must be a string_param holding the model configuration as JSON",
                    ))
                }
            };
            ov.config_json = Some(json);
            any = true;
        } else if let Some(path) = key.strip_prefix("file:") {
            let Some(ParameterChoice::BytesParam(b)) = p.parameter_choice else {
                return Err(ServeError::invalid(format!(
                    "parameter '{key}' must be a bytes_param with the file's content"
                )));
            };
            ov.files.insert(path.to_string(), b.to_vec());
            any = true;
        }
        // Other parameters are ignored, as Triton ignores those it does not know.
    }
    Ok(any.then_some(ov))
}

type InferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: self.engine.live() }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.engine.ready() }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.engine.resolve(&r.name, opt(&r.version)).is_ok_and(|e| e.ready());
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let m = self.engine.metadata();
        Ok(Response::new(pb::ServerMetadataResponse { name: m.name, version: m.version, extensions: m.extensions }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let m = self.engine.resolve(&r.name, opt(&r.version)).map_err(|e| status_from(&e))?.metadata();
        Ok(Response::new(config::model_metadata(&m)))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        // If the client goes away, tonic drops this future, and with it the queued request.
        let (meta, _, request) = request.into_parts();
        let mut ctx = context(meta);
        crate::request_log::record_v2_id(Some(&request.id));
        ctx.adopt_v2_id(Some(&request.id));
        let resp = infer(&self.engine, &ctx, request).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(resp))
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let engine = self.engine.clone();
        let (meta, _, requests) = request.into_parts();
        let ctx = context(meta);
        // Answers go out as they complete. Everything in flight lives inside this stream, so a
        // client that goes away drops (and so cancels) its queued requests and generations.
        let answers = requests
            .map(move |item| match item {
                Ok(req) => answers_of(engine.clone(), ctx.clone(), req).map(Ok).boxed(),
                // A broken inbound stream (bad frame, message too large) ends the call.
                Err(status) => futures::stream::once(async { Err(status) }).boxed(),
            })
            .flatten_unordered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let c = self.engine.resolve(&r.name, opt(&r.version)).map_err(|e| status_from(&e))?.config();
        Ok(Response::new(pb::ModelConfigResponse { config: Some(config::model_config(&c)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let stats = self.engine.statistics(opt(&r.name), opt(&r.version)).map_err(|e| status_from(&e))?;
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats: stats.iter().map(config::statistics).collect() }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        let models = self.engine.repository_index(r.ready).iter().map(config::index_entry).collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        let ov = load_override(r.parameters).map_err(|e| status_from(&e))?;
        self.engine.load_model(&r.model_name, ov).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        let dependents = match r.parameters.get("unload_dependents").and_then(|p| p.parameter_choice.as_ref()) {
            None => false,
            Some(ParameterChoice::BoolParam(b)) => *b,
            Some(_) => {
                return Err(Status::invalid_argument("parameter 'unload_dependents' must be a bool_param"));
            }
        };
        self.engine.unload_model(&r.model_name, dependents).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        Err(unimplemented("system shared memory (SystemSharedMemoryStatus)"))
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        Err(unimplemented("system shared memory (SystemSharedMemoryRegister)"))
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        Err(unimplemented("system shared memory (SystemSharedMemoryUnregister)"))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        Err(unimplemented("CUDA shared memory (CudaSharedMemoryStatus)"))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        Err(unimplemented("CUDA shared memory (CudaSharedMemoryRegister)"))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        Err(unimplemented("CUDA shared memory (CudaSharedMemoryUnregister)"))
    }

    async fn trace_setting(
        &self,
        _: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        Err(unimplemented("tracing (TraceSetting)"))
    }

    async fn log_settings(
        &self,
        _: Request<pb::LogSettingsRequest>,
    ) -> Result<Response<pb::LogSettingsResponse>, Status> {
        Err(unimplemented("changing log settings (LogSettings)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
