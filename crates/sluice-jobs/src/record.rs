//! A job as it is stored: its request, status, timestamps, outcome and webhook deliveries; and
//! the shape the API shows it in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_types::json::DataJson;
use sluice_types::{
    DataType, InferRequest, InferResponse, Parameters, RequestContext, RequestedOutput, ServeError, Tensor,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        match self {
            JobStatus::Queued | JobStatus::Processing => false,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        [JobStatus::Queued, JobStatus::Processing, JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// One tensor of a stored request: its bytes as the binary extension lays them out, in base64.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StoredTensor {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    raw: String,
}

/// An inference request kept until a worker runs it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<StoredTensor>,
    #[serde(default)]
    outputs: Vec<(String, Parameters)>,
}

impl StoredRequest {
    pub fn from_request(r: &InferRequest) -> StoredRequest {
        StoredRequest {
            id: r.id.clone(),
            parameters: r.parameters.clone(),
            inputs: r
                .inputs
                .iter()
                .map(|t| StoredTensor {
                    name: t.name.clone(),
                    datatype: t.datatype.as_str().to_string(),
                    shape: t.shape.clone(),
                    raw: B64.encode(t.to_raw()),
                })
                .collect(),
            outputs: r.outputs.iter().map(|o| (o.name.clone(), o.parameters.clone())).collect(),
        }
    }

    pub fn to_request(&self, model: &str, version: Option<&str>) -> Result<InferRequest, ServeError> {
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for t in &self.inputs {
            let dt = DataType::parse(&t.datatype).ok_or_else(|| {
                ServeError::Internal(format!("stored input '{}' has datatype {}", t.name, t.datatype))
            })?;
            let raw = B64
                .decode(&t.raw)
                .map_err(|e| ServeError::Internal(format!("stored input '{}' is corrupt: {e}", t.name)))?;
            inputs.push(Tensor::from_raw(t.name.clone(), dt, t.shape.clone(), Bytes::from(raw))?);
        }
        Ok(InferRequest {
            model: model.to_string(),
            version: version.map(str::to_string),
            id: self.id.clone(),
            parameters: self.parameters.clone(),
            inputs,
            outputs: self
                .outputs
                .iter()
                .map(|(name, parameters)| RequestedOutput { name: name.clone(), parameters: parameters.clone() })
                .collect(),
        })
    }
}

/// The request context of the submit, so that a worker runs the job as the edge would have run
/// the request (a route on a header picks the same model). Credentials are never stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredContext {
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub identity: Option<String>,
}

/// One attempt to deliver the webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub at_ms: u64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub model: String,
    pub version: Option<String>,
    pub status: JobStatus,
    /// 1 is the most urgent; larger numbers wait behind smaller ones.
    pub priority: u32,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Runs started (a worker that died mid-run counts as one).
    pub attempts: u32,
    pub ttl_seconds: u64,
    pub callback_url: Option<String>,
    pub idempotency_key: Option<String>,
    pub request: StoredRequest,
    /// The V2 inference response, when completed.
    pub result: Option<Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    pub deliveries: Vec<Delivery>,
    /// The webhook is still to be delivered (survives a restart).
    #[serde(default)]
    pub webhook_pending: bool,
    #[serde(default)]
    pub context: StoredContext,
}

/// What a client submits.
pub struct NewJob {
    pub request: InferRequest,
    pub context: RequestContext,
    pub priority: u32,
    pub ttl_seconds: u64,
    pub callback_url: Option<String>,
    pub idempotency_key: Option<String>,
}

pub const DEFAULT_PRIORITY: u32 = 5;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl JobRecord {
    pub fn new(job: NewJob) -> JobRecord {
        JobRecord {
            job_id: uuid::Uuid::now_v7().simple().to_string(),
            model: job.request.model.clone(),
            version: job.request.version.clone(),
            status: JobStatus::Queued,
            priority: job.priority,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            attempts: 0,
            ttl_seconds: job.ttl_seconds,
            callback_url: job.callback_url,
            idempotency_key: job.idempotency_key,
            request: StoredRequest::from_request(&job.request),
            result: None,
            error: None,
            deliveries: Vec::new(),
            webhook_pending: false,
            context: StoredContext {
                headers: job.context.header_pairs(),
                request_id: job.context.request_id,
                identity: job.context.identity,
            },
        }
    }

    /// The context a worker runs the job in: the submit's, with the job id as the request id
    /// when the submit had none. No deadline: a job waits as long as its queue does.
    pub fn request_context(&self) -> RequestContext {
        let c = &self.context;
        let id = if c.request_id.is_empty() { &self.job_id } else { &c.request_id };
        let mut ctx = RequestContext::new(id.as_str()).with_header_pairs(&c.headers);
        ctx.identity = c.identity.clone();
        ctx
    }

    /// When the record stops being served (final jobs only).
    pub fn expires_ms(&self) -> Option<u64> {
        self.finished_ms.map(|f| f + self.ttl_seconds * 1000)
    }

    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_ms().is_some_and(|e| now >= e)
    }

    /// Moves to a final status.
    pub fn finish(&mut self, status: JobStatus, result: Option<Value>, error: Option<String>) {
        self.status = status;
        self.result = result;
        self.error = error;
        self.finished_ms = Some(now_ms());
        self.webhook_pending = self.callback_url.is_some();
    }

    /// The record as `GET /v2/jobs/{id}` shows it.
    pub fn to_api(&self) -> Value {
        let mut o = Map::new();
        o.insert("job_id".into(), json!(self.job_id));
        o.insert("status".into(), json!(self.status.as_str()));
        o.insert("model_name".into(), json!(self.model));
        if let Some(v) = &self.version {
            o.insert("model_version".into(), json!(v));
        }
        o.insert("priority".into(), json!(self.priority));
        o.insert("created_at".into(), json!(rfc3339(self.created_ms)));
        if let Some(t) = self.started_ms {
            o.insert("started_at".into(), json!(rfc3339(t)));
        }
        if let Some(t) = self.finished_ms {
            o.insert("finished_at".into(), json!(rfc3339(t)));
        }
        if let Some(t) = self.expires_ms() {
            o.insert("expires_at".into(), json!(rfc3339(t)));
        }
        o.insert("attempts".into(), json!(self.attempts));
        o.insert("ttl_seconds".into(), json!(self.ttl_seconds));
        if let Some(r) = &self.result {
            o.insert("result".into(), r.clone());
        }
        if let Some(e) = &self.error {
            o.insert("error".into(), json!(e));
        }
        if let Some(url) = &self.callback_url {
            let deliveries: Vec<Value> = self
                .deliveries
                .iter()
                .map(|d| json!({ "at": rfc3339(d.at_ms), "status": d.status, "error": d.error }))
                .collect();
            o.insert(
                "webhook".into(),
                json!({ "url": url, "pending": self.webhook_pending, "deliveries": deliveries }),
            );
        }
        Value::Object(o)
    }
}

/// A response as V2 JSON, every output as JSON data (what a job's `result` holds).
pub fn response_json(r: &InferResponse) -> Value {
    let outputs: Vec<Value> = r
        .outputs
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "datatype": t.datatype.as_str(),
                "shape": t.shape,
                "data": serde_json::to_value(DataJson(t)).unwrap_or(Value::Null),
            })
        })
        .collect();
    let mut o = Map::new();
    o.insert("model_name".into(), json!(r.model_name));
    o.insert("model_version".into(), json!(r.model_version));
    if let Some(id) = &r.id {
        o.insert("id".into(), json!(id));
    }
    if !r.parameters.is_empty() {
        o.insert("parameters".into(), Value::Object(r.parameters.clone()));
    }
    o.insert("outputs".into(), Value::Array(outputs));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_request_comes_back_identical() {
        let req = InferRequest {
            model: "m".into(),
            version: Some("2".into()),
            id: Some("r1".into()),
            inputs: vec![
                Tensor::from_vec("a", vec![1, 3], vec![1.5f32, -2.0, 3.25]),
                Tensor::from_strings("s", vec![2], &["héllo", ""]),
            ],
            outputs: vec![RequestedOutput { name: "y".into(), parameters: Parameters::new() }],
            ..Default::default()
        };
        let stored = StoredRequest::from_request(&req);
        let text = serde_json::to_string(&stored).unwrap();
        let back: StoredRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_request("m", Some("2")).unwrap(), req);
    }

    #[test]
    fn a_job_keeps_its_submit_context() {
        let mut ctx = RequestContext::new("req-9").with_header_pairs(&[("x-tier".into(), "gold".into())]);
        ctx.deadline = Some(std::time::Instant::now());
        let r = JobRecord::new(NewJob {
            request: InferRequest { model: "m".into(), ..Default::default() },
            context: ctx,
            priority: DEFAULT_PRIORITY,
            ttl_seconds: 10,
            callback_url: None,
            idempotency_key: None,
        });
        let back: JobRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let c = back.request_context();
        assert_eq!(c.request_id, "req-9");
        assert_eq!(c.header("x-tier"), Some("gold"));
        assert_eq!(c.deadline, None, "a job waits as long as its queue does");
        // A record stored before contexts were kept runs under its job id.
        let mut old = serde_json::to_value(&r).unwrap();
        old.as_object_mut().unwrap().remove("context");
        let old: JobRecord = serde_json::from_value(old).unwrap();
        assert_eq!(old.request_context().request_id, old.job_id);
    }

    #[test]
    fn expiry_counts_from_the_end() {
        let mut r = JobRecord::new(NewJob {
            request: InferRequest { model: "m".into(), ..Default::default() },
            context: RequestContext::default(),
            priority: DEFAULT_PRIORITY,
            ttl_seconds: 10,
            callback_url: None,
            idempotency_key: None,
        });
        assert!(!r.is_expired(u64::MAX), "a queued job never expires");
        r.finish(JobStatus::Completed, Some(json!({})), None);
        let f = r.finished_ms.unwrap();
        assert!(!r.is_expired(f + 9_999));
        assert!(r.is_expired(f + 10_000));
        assert_eq!(r.to_api()["status"], "completed");
        assert!(r.to_api()["expires_at"].as_str().unwrap().ends_with('Z'));
    }
}
