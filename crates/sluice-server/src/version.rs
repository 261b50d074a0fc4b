//! A model version as an endpoint: text step → validation → the version's scheduler queue →
//! classification, with the outcome recorded in the version's statistics; or, for a generative
//! model, its LLM engine ([`crate::generate`]). The edges reach it only through
//! [`crate::Engine::resolve`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::assemble::{Repository, ServedVersion};
use async_trait::async_trait;
use sluice_scheduler::validate::{reshape_inputs, reshape_outputs};
use sluice_scheduler::{validate_request, Submission};
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::generation::{GenerateRequest, TokenStream};
use sluice_types::{
    Answer, Endpoint, InferRequest, InferResponse, ModelConfig, RequestContext, RequestedOutput, ServeError, Tensor,
};

pub struct ModelVersionEndpoint {
    repo: Repository,
    /// The version as the caller named it (`None`: whichever the policy serves).
    version: Option<String>,
    served: Arc<ServedVersion>,
}

impl ModelVersionEndpoint {
    pub fn new(repo: Repository, version: Option<&str>, served: Arc<ServedVersion>) -> Self {
        ModelVersionEndpoint { repo, version: version.map(str::to_string), served }
    }
}

#[async_trait]
impl Endpoint for ModelVersionEndpoint {
    fn name(&self) -> &str {
        &self.served.name
    }

    fn ready(&self) -> bool {
        !self.served.runner.is_closed()
    }

    fn metadata(&self) -> ModelMetadata {
        let served = &self.served;
        let c = &served.config;
        let meta = |ts: &[sluice_types::config::TensorConfig]| c.tensor_metadata(ts);
        // A model with a text step takes text, not token ids.
        let inputs = match &served.text {
            Some(t) => meta(&[t.public_input()]),
            None => meta(&c.input),
        };
        ModelMetadata {
            name: served.name.clone(),
            versions: self.repo.ready_versions(&served.name).iter().map(|s| s.version.to_string()).collect(),
            platform: if c.platform.is_empty() { c.backend.clone() } else { c.platform.clone() },
            inputs,
            outputs: meta(&c.output),
        }
    }

    fn config(&self) -> Arc<ModelConfig> {
        self.served.config.clone()
    }

    fn statistics(&self) -> Vec<ModelStatistics> {
        vec![self.served.stats().snapshot(&self.served.name, &self.served.version.to_string())]
    }

    fn check(&self, req: &InferRequest) -> Result<(), ServeError> {
        let served = &self.served;
        match &served.text {
            Some(text) => {
                let mut tokenized = req.clone();
                text.apply(&mut tokenized, served.config.max_batch_size > 0)?;
                validate_request(&served.config, &tokenized).map(|_| ())
            }
            None => validate_request(&served.config, req).map(|_| ()),
        }
    }

    fn generative(&self) -> bool {
        self.served.generator.is_some()
    }

    async fn generate(&self, _ctx: &RequestContext, req: GenerateRequest) -> Result<Box<dyn TokenStream>, ServeError> {
        match self.served.generator.clone() {
            Some(g) => crate::generate::start(self.served.clone(), g, req).await,
            None => Err(ServeError::invalid(format!(
                "model '{}' is not a generative model (backend '{}'); use its infer endpoint",
                self.served.name, self.served.config.backend
            ))),
        }
    }

    /// A reload can replace the version between the lookup and the queueing: the old version's
    /// runner is then closed (it still finishes what it had queued). Such a request is looked up
    /// again and run once more on the version now served, so that a reload answers no request
    /// with an error. A request that names a version that is gone gets the error.
    async fn infer(&self, ctx: &RequestContext, mut req: InferRequest) -> Result<Answer, ServeError> {
        let start = Instant::now();
        let mut served = self.served.clone();
        // Cheap: tensor data is reference-counted.
        let inputs = req.inputs.clone();
        let mut result = run(&served, ctx, &mut req).await;
        if matches!(result, Err(ServeError::Unavailable(_))) && served.runner.is_closed() {
            if let Ok(next) = self.repo.get(&served.name, self.version.as_deref()) {
                if !Arc::ptr_eq(&next, &served) {
                    tracing::debug!(model = %served.name, from = served.version, to = next.version, "version replaced: retrying");
                    req.inputs = inputs;
                    served = next;
                    result = run(&served, ctx, &mut req).await;
                }
            }
        }
        let ns = start.elapsed().as_nanos() as u64;
        match &result {
            Ok(_) => served.stats().record_success(ns),
            Err(e) => served.stats().record_failure(ns, e),
        }
        result
    }
}

/// A non-negative integer request parameter, or an error that names it.
fn u64_parameter(req: &InferRequest, key: &str, what: &str) -> Result<Option<u64>, ServeError> {
    match req.parameters.get(key) {
        None => Ok(None),
        Some(_) => req
            .int_parameter(key)
            .and_then(|v| u64::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| ServeError::invalid(format!("request parameter '{key}' must be {what}"))),
    }
}

/// How long the request may wait in the queue: its `timeout` parameter, cut to what the
/// caller's deadline leaves.
fn queue_timeout(req: &InferRequest, ctx: &RequestContext) -> Result<Option<Duration>, ServeError> {
    let asked = u64_parameter(req, "timeout", "a non-negative integer (microseconds)")?.map(Duration::from_micros);
    match (asked, ctx.remaining()) {
        (_, Some(left)) if left.is_zero() => {
            Err(ServeError::Timeout("the request's deadline passed before it was queued".into()))
        }
        (Some(a), Some(left)) => Ok(Some(a.min(left))),
        (a, left) => Ok(a.or(left)),
    }
}

async fn run(served: &ServedVersion, ctx: &RequestContext, req: &mut InferRequest) -> Result<Answer, ServeError> {
    let config = &served.config;
    if let Some(text) = &served.text {
        // Tokenizing a batch of texts is CPU work of up to milliseconds: not on a tokio worker.
        let (text, batching, mut owned) = (text.clone(), config.max_batch_size > 0, std::mem::take(req));
        let tokenize = move || {
            let r = text.apply(&mut owned, batching);
            (owned, r)
        };
        // A PRIORITY_MIN model's tokenizing yields to live requests as its inference does.
        let done = if sluice_backend::priority::wants_min_priority(config) {
            sluice_backend::priority::run_lowered(tokenize).await
        } else {
            tokio::task::spawn_blocking(tokenize).await.map_err(|e| e.to_string())
        };
        let (back, tokenized) = done.map_err(|e| ServeError::Internal(format!("the tokenizer task failed: {e}")))?;
        *req = back;
        tokenized?;
    }
    if served.generator.is_some() {
        sluice_llm::backend::fold_parameters(&mut req.inputs, &req.parameters)?;
    }
    let batch = validate_request(config, req)?;
    let priority = u64_parameter(req, "priority", "a non-negative integer")?;
    let timeout = queue_timeout(req, ctx)?;
    let mut inputs = std::mem::take(&mut req.inputs);
    reshape_inputs(config, &mut inputs);
    let wanted: Vec<String> = req.outputs.iter().map(|o| o.name.clone()).collect();
    let executed = served
        .runner
        .submit(Submission { inputs, outputs: wanted.clone(), batch_size: batch, priority, timeout })
        .await?;
    let mut outputs = executed.outputs;
    reshape_outputs(config, &mut outputs);
    if !wanted.is_empty() {
        // Answer in the order the client asked for.
        outputs.sort_by_key(|t| wanted.iter().position(|w| *w == t.name).unwrap_or(usize::MAX));
        outputs.retain(|t| wanted.contains(&t.name));
    }
    classify_outputs(served, &req.outputs, &mut outputs)?;
    Ok(Answer {
        response: InferResponse {
            model_name: served.name.clone(),
            model_version: served.version.to_string(),
            id: req.id.take(),
            parameters: Default::default(),
            outputs,
        },
        timings: executed.timings,
    })
}

/// Triton's `classification` output parameter: the requested outputs become their top-k
/// `"score:index:label"` strings.
fn classify_outputs(
    served: &ServedVersion,
    requested: &[RequestedOutput],
    outputs: &mut [Tensor],
) -> Result<(), ServeError> {
    for r in requested {
        let Some(v) = r.parameters.get("classification") else { continue };
        let k = match v {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|&k| k > 0)
        .ok_or_else(|| {
            ServeError::invalid(format!("output '{}': classification must be a positive integer, got {v}", r.name))
        })?;
        if let Some(t) = outputs.iter_mut().find(|t| t.name == r.name) {
            let labels = served.labels.get(&r.name).map(Vec::as_slice);
            *t = sluice_text::classify(t, k as usize, labels, served.config.max_batch_size > 0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(params: &[(&str, serde_json::Value)]) -> InferRequest {
        let mut r = InferRequest::default();
        for (k, v) in params {
            r.parameters.insert(k.to_string(), v.clone());
        }
        r
    }

    #[test]
    fn the_deadline_cuts_the_queue_timeout() {
        let mut ctx = RequestContext::new("r");
        assert_eq!(queue_timeout(&req(&[]), &ctx).unwrap(), None);
        let with_timeout = req(&[("timeout", 5_000_000.into())]);
        assert_eq!(queue_timeout(&with_timeout, &ctx).unwrap(), Some(Duration::from_secs(5)));
        ctx.deadline = Some(Instant::now() + Duration::from_secs(1));
        assert!(queue_timeout(&with_timeout, &ctx).unwrap().unwrap() <= Duration::from_secs(1));
        assert!(queue_timeout(&req(&[]), &ctx).unwrap().unwrap() <= Duration::from_secs(1));
        ctx.deadline = Some(Instant::now() - Duration::from_millis(1));
        assert!(matches!(queue_timeout(&req(&[]), &ctx), Err(ServeError::Timeout(_))));
    }

    #[test]
    fn bad_parameters_are_named() {
        let ctx = RequestContext::new("r");
        let e = queue_timeout(&req(&[("timeout", (-1).into())]), &ctx).unwrap_err();
        assert!(e.to_string().contains("'timeout'"), "{e}");
        let e = u64_parameter(&req(&[("priority", "x".into())]), "priority", "a non-negative integer").unwrap_err();
        assert!(e.to_string().contains("'priority'"), "{e}");
    }
}
