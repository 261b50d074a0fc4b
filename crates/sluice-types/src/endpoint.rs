//! The seam every edge (HTTP, gRPC, the OpenAI routes, job workers) talks through: a served name
//! resolves to an [`Endpoint`], and every request carries a [`RequestContext`] from the edge to
//! whatever answers it. A model version is one kind of endpoint; traffic policies over other
//! endpoints are others, and an edge cannot tell them apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::api::{ModelMetadata, ModelStatistics};
use crate::generation::{GenerateRequest, TokenStream};
use crate::{InferRequest, InferResponse, ModelConfig, ServeError, Timings};

/// Longest request id kept: a header can be kilobytes long.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Header names never kept in a context: credentials (a job's context is stored).
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// What travels with one request from the edge to every endpoint it reaches (and into a job).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestContext {
    /// The V2 request's `id`, else the client's `x-request-id`, else one generated at the edge.
    pub request_id: String,
    /// HTTP headers or gRPC metadata, without credentials. The edge's own map, moved in: no
    /// copy is made on the request path.
    pub headers: http::HeaderMap,
    /// Who is calling, once authentication names them.
    pub identity: Option<String>,
    /// When the caller stops waiting (gRPC's `grpc-timeout`); work still queued then is refused.
    pub deadline: Option<Instant>,
}

impl RequestContext {
    pub fn new(request_id: impl Into<String>) -> Self {
        RequestContext { request_id: clip(&request_id.into()).to_string(), ..Default::default() }
    }

    /// The first value of a header, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Keeps `headers`, leaving out credentials.
    pub fn with_headers(mut self, mut headers: http::HeaderMap) -> Self {
        for h in SECRET_HEADERS {
            headers.remove(*h);
        }
        self.headers = headers;
        self
    }

    /// The headers whose values are text, as pairs (names in lower case): how a job stores them.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers.iter().filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))).collect()
    }

    /// Headers from stored pairs; a pair that is not a valid header is left out.
    pub fn with_header_pairs(self, pairs: &[(String, String)]) -> Self {
        let mut map = http::HeaderMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v)) {
                map.append(k, v);
            }
        }
        self.with_headers(map)
    }

    /// The V2 request's own `id` takes over as the request id when there is one.
    pub fn adopt_v2_id(&mut self, id: Option<&str>) {
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            self.request_id = clip(id).to_string();
        }
    }

    /// Time left before the deadline: `Some(0)` once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// At most [`MAX_REQUEST_ID_LEN`] bytes, cut at a character boundary.
pub fn clip(s: &str) -> &str {
    let end = (0..=MAX_REQUEST_ID_LEN.min(s.len())).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    &s[..end]
}

/// An answer and where its time went.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub response: InferResponse,
    pub timings: Timings,
}

/// A served name: a model version, or a policy over other endpoints.
#[async_trait]
pub trait Endpoint: Send + Sync {
    /// The name it is served under.
    fn name(&self) -> &str;

    /// Whether it takes requests now.
    fn ready(&self) -> bool;

    /// Inputs and outputs as a client sees them (a text model takes text, not token ids).
    fn metadata(&self) -> ModelMetadata;

    /// The configuration, in Triton's model-configuration JSON.
    fn config(&self) -> Arc<ModelConfig>;

    /// Statistics in Triton's form: one entry per model version behind it.
    fn statistics(&self) -> Vec<ModelStatistics>;

    /// Refuses now a request that could never run (inputs that do not fit), as a job submit
    /// must, without running it.
    fn check(&self, request: &InferRequest) -> Result<(), ServeError>;

    /// Runs one request.
    async fn infer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError>;

    /// Whether it generates text ([`Endpoint::generate`]).
    fn generative(&self) -> bool {
        false
    }

    /// Starts a generation: its events come as the stream is read; dropping the stream
    /// cancels it. (Async: the prompt is tokenized off the caller's thread.)
    async fn generate(
        &self,
        _ctx: &RequestContext,
        _request: GenerateRequest,
    ) -> Result<Box<dyn TokenStream>, ServeError> {
        Err(ServeError::invalid(format!("model '{}' is not a generative model; use its infer endpoint", self.name())))
    }

    /// A traffic policy's state for `GET /v2/endpoints/{name}` (its kind, targets and what it
    /// has counted); `None` for a model version.
    fn traffic_report(&self) -> Option<serde_json::Value> {
        None
    }

    /// The controls of a rollout (`kind: rollout`), for `/v2/endpoints/{name}/rollout` and
    /// `sluice rollout`; `None` for anything else.
    fn rollout(&self) -> Option<&dyn RolloutControl> {
        None
    }

    /// The controls of an experiment (`kind: experiment`): its report, feedback, stop.
    fn experiment(&self) -> Option<&dyn ExperimentControl> {
        None
    }

    /// A traffic policy's counters for `/metrics`.
    fn counters(&self) -> Vec<TrafficCounter> {
        Vec::new()
    }
}

/// What a person may do to a rollout, each with a reason that goes into its history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// Hold the current step's traffic and stop advancing.
    Pause,
    /// Back to the paused step, its hold restarted.
    Resume,
    /// All traffic to the candidate, for good.
    Promote,
    /// All traffic to the baseline, for good.
    Rollback,
}

impl RolloutAction {
    pub const NAMES: [&'static str; 4] = ["pause", "resume", "promote", "rollback"];

    pub fn parse(s: &str) -> Option<RolloutAction> {
        match s {
            "pause" => Some(RolloutAction::Pause),
            "resume" => Some(RolloutAction::Resume),
            "promote" => Some(RolloutAction::Promote),
            "rollback" => Some(RolloutAction::Rollback),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
            RolloutAction::Rollback => "rollback",
        }
    }
}

/// A rollout as the edges see it: its status, and the commands a person may give it. Both read
/// and write the state store the rollout shares with the other replicas.
#[async_trait::async_trait]
pub trait RolloutControl: Send + Sync {
    /// Phase, step, time in step, traffic, each guardrail's value, threshold and verdict, the
    /// counts of every replica, and the history, as JSON.
    async fn status(&self) -> serde_json::Value;

    /// Applies `action` (its transition is recorded with `reason`) and answers the new status;
    /// `Conflict` when the rollout's phase does not allow it.
    async fn command(&self, action: RolloutAction, reason: &str) -> Result<serde_json::Value, ServeError>;

    /// Takes one outcome for a `feedback.<name>` guardrail: `None` when it is not this
    /// rollout's (the request id is not one it answered in a weight step); else whether it
    /// counted or why it cannot.
    async fn feedback(&self, feedback: &Feedback) -> Option<Result<serde_json::Value, ServeError>>;
}

/// One outcome fed back to an experiment (`POST /v2/feedback`): a metric's value for the request
/// that was answered (`request_id`) or for the randomization unit (`unit`), with an optional id
/// of its own so that a repeated post counts once.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    pub metric: String,
    pub value: f64,
}

/// An experiment as the edges see it.
#[async_trait::async_trait]
pub trait ExperimentControl: Send + Sync {
    /// Per arm and metric: counts (of every replica), estimates with intervals, differences,
    /// tests, planned size, SRM and a verdict, as JSON. Reading it is a look of the sequential
    /// test.
    async fn report(&self) -> serde_json::Value;

    /// Ends the experiment: from now on `arm` (else the control) answers every request, on every
    /// replica. `Conflict` when it has stopped already.
    async fn stop(&self, arm: Option<&str>, reason: &str) -> Result<serde_json::Value, ServeError>;

    /// Takes one outcome: `None` when it is not this experiment's (the request id is not one it
    /// answered, or, for a unit, it has no such metric); else whether it counted
    /// (`{"counted": bool}`, false for a repeated id) or why it cannot.
    async fn feedback(&self, feedback: &Feedback) -> Option<Result<serde_json::Value, ServeError>>;
}

/// One counter a traffic policy keeps, as `/metrics` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficCounter {
    pub metric: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

impl TrafficCounter {
    /// Requests an endpoint sent to one of its targets.
    pub fn requests(endpoint: &str, target: &str, value: u64) -> TrafficCounter {
        TrafficCounter {
            metric: "sluice_endpoint_requests_total",
            help: "Requests an endpoint sent to each of its targets",
            labels: vec![("endpoint", endpoint.to_string()), ("target", target.to_string())],
            value,
        }
    }
}

/// Finds the endpoint for a served name: what edges and job workers hold instead of an engine.
pub trait Resolver: Send + Sync {
    /// The endpoint serving `name` (at `version`, when given), or Triton's error for it.
    fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_are_cut_at_a_character_boundary() {
        assert_eq!(clip("abc"), "abc");
        assert_eq!(clip(&"é".repeat(100)).len(), 128);
        let odd = format!("a{}", "é".repeat(100));
        assert_eq!(clip(&odd).len(), 127);
    }

    #[test]
    fn credentials_are_not_kept_and_pairs_round_trip() {
        let mut map = http::HeaderMap::new();
        map.insert("authorization", "Bearer x".parse().unwrap());
        map.insert("X-User-Id", "42".parse().unwrap());
        map.insert("cookie", "a=b".parse().unwrap());
        map.insert("x-bin", http::HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let ctx = RequestContext::new("r1").with_headers(map);
        assert_eq!(ctx.header("x-user-id"), Some("42"));
        assert_eq!(ctx.header("authorization"), None);
        assert_eq!(ctx.header("x-bin"), None, "not text");
        let pairs = ctx.header_pairs();
        assert_eq!(pairs, vec![("x-user-id".to_string(), "42".to_string())]);
        let back = RequestContext::new("r1").with_header_pairs(&[
            ("x-user-id".into(), "42".into()),
            ("authorization".into(), "Bearer y".into()),
            ("bad name".into(), "v".into()),
        ]);
        assert_eq!(back.header_pairs(), pairs);
    }

    #[test]
    fn the_v2_id_takes_over_when_present() {
        let mut ctx = RequestContext::new("from-header");
        ctx.adopt_v2_id(Some(""));
        assert_eq!(ctx.request_id, "from-header");
        ctx.adopt_v2_id(Some("v2"));
        assert_eq!(ctx.request_id, "v2");
    }

    #[test]
    fn remaining_time_is_zero_after_the_deadline() {
        let mut ctx = RequestContext::new("r");
        assert_eq!(ctx.remaining(), None);
        ctx.deadline = Some(Instant::now() - Duration::from_secs(1));
        assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    }
}
