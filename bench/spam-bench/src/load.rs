//! Load generation against a running Sluice: closed-loop clients (each one keep-alive connection
//! sending batch-1 requests back to back), phases of changing concurrency (bursts), and an
//! open-loop Poisson load at a fixed rate (latency counted from each request's scheduled start,
//! so a slow server cannot hide its queue behind a slow client).
//!
//! HTTP uses Triton's binary tensor extension over hyper's HTTP/1.1 client connections; gRPC uses
//! the tonic client generated in `sluice-server`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sluice_server::grpc::pb;
use sluice_server::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::data::Rng;
use crate::stats::{num, ServerStats, StatsDelta, Summary};

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    Grpc,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Http => "HTTP binary",
            Transport::Grpc => "gRPC",
        }
    }
}

/// Where the server listens.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` of the HTTP edge (statistics are always read there).
    pub http: String,
    /// `host:port` of the gRPC edge.
    pub grpc: Option<String>,
}

/// One input of a prepared request.
pub struct RawInput {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// A request encoded once, sent many times.
pub enum Prepared {
    Http { body: Bytes, header_len: usize },
    Grpc(Box<pb::ModelInferRequest>),
}

/// The requests a load cycles through, for one model.
#[derive(Clone)]
pub struct Workload {
    pub model: String,
    pub transport: Transport,
    pub requests: Arc<Vec<Prepared>>,
}

impl Workload {
    pub fn new(model: &str, transport: Transport, requests: Vec<(Vec<RawInput>, Vec<&str>)>) -> Result<Workload> {
        let requests = requests
            .into_iter()
            .map(|(inputs, outputs)| prepare(model, transport, &inputs, &outputs))
            .collect::<Result<Vec<_>>>()?;
        if requests.is_empty() {
            bail!("no requests to send");
        }
        Ok(Workload { model: model.to_string(), transport, requests: Arc::new(requests) })
    }

    /// One batch-1 request per email: `input_ids` and `attention_mask` `[1, len]`.
    pub fn spam(model: &str, transport: Transport, emails: &[Vec<i64>]) -> Result<Workload> {
        let reqs = emails
            .iter()
            .map(|ids| {
                let shape = vec![1, ids.len() as i64];
                let mask = vec![1i64; ids.len()];
                let inputs = vec![
                    RawInput { name: "input_ids", datatype: "INT64", shape: shape.clone(), data: le_i64(ids) },
                    RawInput { name: "attention_mask", datatype: "INT64", shape, data: le_i64(&mask) },
                ];
                (inputs, vec!["probabilities", "label"])
            })
            .collect();
        Workload::new(model, transport, reqs)
    }

    /// One batch-1 request per email as text, for a model that tokenizes on the server
    /// (`text_input` in its config): `input` BYTES `[1, 1]`, the email's UTF-8 text as is.
    pub fn text(model: &str, transport: Transport, input: &'static str, texts: &[String]) -> Result<Workload> {
        let reqs = texts
            .iter()
            .map(|t| {
                let inputs = vec![RawInput {
                    name: input,
                    datatype: "BYTES",
                    shape: vec![1, 1],
                    data: bytes_elements(&[t.as_str()]),
                }];
                (inputs, vec!["probabilities", "label"])
            })
            .collect();
        Workload::new(model, transport, reqs)
    }

    /// Mean size of a request as sent: the whole HTTP body (JSON header and binary tensors), or
    /// the raw tensor contents of a gRPC request.
    pub fn mean_request_bytes(&self) -> f64 {
        let total: usize = self
            .requests
            .iter()
            .map(|r| match r {
                Prepared::Http { body, .. } => body.len(),
                Prepared::Grpc(r) => r.raw_input_contents.iter().map(Bytes::len).sum(),
            })
            .sum();
        total as f64 / self.requests.len().max(1) as f64
    }

    /// add_sub batch-1 requests: `INPUT0`, `INPUT1` FP32 `[1, 16]`.
    pub fn add_sub(model: &str, transport: Transport) -> Result<Workload> {
        let reqs = (0..64)
            .map(|k| {
                let a: Vec<f32> = (0..16).map(|i| (i + k) as f32).collect();
                let b: Vec<f32> = (0..16).map(|i| (i * k) as f32 * 0.5).collect();
                let inputs = vec![
                    RawInput { name: "INPUT0", datatype: "FP32", shape: vec![1, 16], data: le_f32(&a) },
                    RawInput { name: "INPUT1", datatype: "FP32", shape: vec![1, 16], data: le_f32(&b) },
                ];
                (inputs, vec!["OUTPUT0", "OUTPUT1"])
            })
            .collect();
        Workload::new(model, transport, reqs)
    }
}

fn le_i64(v: &[i64]) -> Bytes {
    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into()
}

/// A BYTES tensor's raw contents: per element, its length (4 bytes, little-endian), then its bytes.
fn bytes_elements(elements: &[&str]) -> Bytes {
    let mut out = Vec::with_capacity(elements.iter().map(|e| 4 + e.len()).sum());
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e.as_bytes());
    }
    out.into()
}

fn le_f32(v: &[f32]) -> Bytes {
    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into()
}

fn prepare(model: &str, transport: Transport, inputs: &[RawInput], outputs: &[&str]) -> Result<Prepared> {
    Ok(match transport {
        Transport::Http => {
            let header = json!({
                "inputs": inputs.iter().map(|i| json!({
                    "name": i.name, "datatype": i.datatype, "shape": i.shape,
                    "parameters": {"binary_data_size": i.data.len()}
                })).collect::<Vec<_>>(),
                "outputs": outputs.iter().map(|o| json!({"name": o, "parameters": {"binary_data": true}})).collect::<Vec<_>>(),
            });
            let mut body = serde_json::to_vec(&header)?;
            let header_len = body.len();
            for i in inputs {
                body.extend_from_slice(&i.data);
            }
            Prepared::Http { body: body.into(), header_len }
        }
        Transport::Grpc => Prepared::Grpc(Box::new(pb::ModelInferRequest {
            model_name: model.to_string(),
            inputs: inputs
                .iter()
                .map(|i| pb::model_infer_request::InferInputTensor {
                    name: i.name.to_string(),
                    datatype: i.datatype.to_string(),
                    shape: i.shape.clone(),
                    ..Default::default()
                })
                .collect(),
            outputs: outputs
                .iter()
                .map(|o| pb::model_infer_request::InferRequestedOutputTensor {
                    name: o.to_string(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: inputs.iter().map(|i| i.data.clone()).collect(),
            ..Default::default()
        })),
    })
}

/// One client connection.
pub enum Conn {
    Http { sender: SendRequest<Full<Bytes>>, host: String },
    Grpc(GrpcInferenceServiceClient<Channel>),
}

pub(crate) async fn http_connect(addr: &str) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub async fn connect(target: &Target, transport: Transport) -> Result<Conn> {
    match transport {
        Transport::Http => Ok(Conn::Http { sender: http_connect(&target.http).await?, host: target.http.clone() }),
        Transport::Grpc => {
            let addr = target.grpc.as_deref().ok_or_else(|| anyhow!("no gRPC address"))?;
            let channel = Channel::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
            Ok(Conn::Grpc(
                GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            ))
        }
    }
}

/// What one request came back with: the server's queue time (HTTP header), or an error class.
type Outcome = std::result::Result<Option<u64>, String>;

async fn send(conn: &mut Conn, model: &str, req: &Prepared) -> Outcome {
    match (conn, req) {
        (Conn::Http { sender, host }, Prepared::Http { body, header_len }) => {
            sender.ready().await.map_err(|_| "connection".to_string())?;
            let r = http::Request::post(format!("/v2/models/{model}/infer"))
                .header(http::header::HOST, host.as_str())
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .header("Inference-Header-Content-Length", *header_len)
                .body(Full::new(body.clone()))
                .map_err(|e| format!("request: {e}"))?;
            let resp = sender.send_request(r).await.map_err(|_| "connection".to_string())?;
            let status = resp.status();
            let queue_us = resp
                .headers()
                .get("sluice-queue-time-us")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let _ = resp.into_body().collect().await.map_err(|_| "connection".to_string())?;
            if status.is_success() {
                Ok(queue_us)
            } else {
                Err(format!("HTTP {}", status.as_u16()))
            }
        }
        (Conn::Grpc(client), Prepared::Grpc(r)) => match client.model_infer((**r).clone()).await {
            Ok(_) => Ok(None),
            Err(s) => Err(format!("gRPC {:?}", s.code())),
        },
        _ => Err("transport mismatch".to_string()),
    }
}

/// Sends with a timeout; a broken connection is replaced before the next request.
async fn send_on(slot: &mut Option<Conn>, target: &Target, wl: &Workload, idx: usize) -> Outcome {
    if slot.is_none() {
        *slot = Some(connect(target, wl.transport).await.map_err(|_| "connect".to_string())?);
    }
    let conn = slot.as_mut().ok_or("connect")?;
    let req = &wl.requests[idx % wl.requests.len()];
    let out = match tokio::time::timeout(REQUEST_TIMEOUT, send(conn, &wl.model, req)).await {
        Ok(o) => o,
        Err(_) => Err("timeout".to_string()),
    };
    if matches!(&out, Err(e) if e == "connection" || e == "timeout") {
        *slot = None;
    }
    out
}

/// A stretch of time at one concurrency.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub concurrency: usize,
    pub duration: Duration,
}

/// What a load measured, over its measurement window only.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub seconds: f64,
    /// Successful responses per second.
    pub per_sec: f64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Client-side latency of successful requests, milliseconds.
    pub latency_ms: Summary,
    /// `sluice-queue-time-us` of successful HTTP requests, microseconds.
    pub queue_us: Summary,
    pub server: StatsDelta,
    /// Open loop only: the arrival rate asked for.
    pub offered_per_sec: Option<f64>,
}

impl LoadResult {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "per_sec": num(self.per_sec),
            "ok": self.ok,
            "errors": self.errors,
            "latency_ms": self.latency_ms.to_json(),
            "queue_us_header": self.queue_us.to_json(),
            "server_executions": self.server.executions,
            "server_inferences": self.server.inferences,
            "server_avg_batch": num(self.server.avg_batch),
            "server_queue_us_per_request": num(self.server.queue_us_per_request),
            "server_infer_ms_per_execution": num(self.server.infer_ms_per_execution),
            "offered_per_sec": self.offered_per_sec.map(num),
        })
    }

    pub fn print(&self, label: &str) {
        println!(
            "{label}: {:.1} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}{}, executions {}, avg batch {:.2}, \
             server queue {:.0} us/request, ORT {:.2} ms/execution{}",
            self.per_sec,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.error_count(),
            if self.errors.is_empty() { String::new() } else { format!(" {:?}", self.errors) },
            self.server.executions,
            self.server.avg_batch,
            self.server.queue_us_per_request,
            self.server.infer_ms_per_execution,
            if self.queue_us.count > 0 {
                format!(", header queue p50 {:.0} us p99 {:.0} us", self.queue_us.p50, self.queue_us.p99)
            } else {
                String::new()
            }
        );
    }
}

/// Samples a client collected.
#[derive(Default)]
struct Samples {
    latency_ms: Vec<f64>,
    queue_us: Vec<f64>,
    errors: BTreeMap<String, u64>,
}

impl Samples {
    fn record(&mut self, out: &Outcome, ms: f64) {
        match out {
            Ok(q) => {
                self.latency_ms.push(ms);
                if let Some(q) = q {
                    self.queue_us.push(*q as f64);
                }
            }
            Err(e) => *self.errors.entry(e.clone()).or_default() += 1,
        }
    }

    fn merge(&mut self, o: Samples) {
        self.latency_ms.extend(o.latency_ms);
        self.queue_us.extend(o.queue_us);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn finish(mut self, seconds: f64, server: StatsDelta) -> LoadResult {
        let ok = self.latency_ms.len() as u64;
        LoadResult {
            seconds,
            per_sec: ok as f64 / seconds,
            ok,
            errors: self.errors,
            latency_ms: Summary::of(&mut self.latency_ms),
            queue_us: Summary::of(&mut self.queue_us),
            server,
            offered_per_sec: None,
        }
    }
}

/// Closed loop: `phases` of concurrency after `warmup` at the first phase's concurrency. Each
/// client has its own connection and sends its next request when the last one came back; the
/// clients share one cursor over the workload. Only requests that complete inside the
/// measurement window count.
pub async fn run_phases(target: &Target, wl: &Workload, phases: &[Phase], warmup: Duration) -> Result<LoadResult> {
    let max_c = phases.iter().map(|p| p.concurrency).max().unwrap_or(0);
    if max_c == 0 {
        bail!("concurrency must be at least 1");
    }
    let mut conns = Vec::with_capacity(max_c);
    for _ in 0..max_c {
        conns.push(connect(target, wl.transport).await?);
    }
    let t_warm = Instant::now();
    let t0 = t_warm + warmup;
    let mut bounds = Vec::with_capacity(phases.len());
    let mut t = t0;
    for p in phases {
        t += p.duration;
        bounds.push((t, p.concurrency));
    }
    let end = t;
    let bounds = Arc::new(bounds);
    let first_c = phases[0].concurrency;
    let cursor = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let (target, wl, bounds, cursor) = (target.clone(), wl.clone(), bounds.clone(), cursor.clone());
        set.spawn(async move {
            let mut slot = Some(conn);
            let mut s = Samples::default();
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                // The concurrency now, and when it next changes.
                let (c, until) = if now < t0 {
                    (first_c, t0)
                } else {
                    bounds.iter().find(|(b, _)| now < *b).map(|&(b, c)| (c, b)).unwrap_or((0, end))
                };
                if i >= c {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
                let idx = cursor.fetch_add(1, Ordering::Relaxed);
                let out = send_on(&mut slot, &target, &wl, idx).await;
                let done = Instant::now();
                if done >= t0 && done <= end {
                    s.record(&out, (done - now).as_secs_f64() * 1e3);
                }
                if out.is_err() && slot.is_none() {
                    // Do not spin on a dead server.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            s
        });
    }
    let server = window_stats(target, &wl.model, t0, end).await;
    let mut all = Samples::default();
    while let Some(r) = set.join_next().await {
        all.merge(r?);
    }
    Ok(all.finish((end - t0).as_secs_f64(), server?))
}

/// Reads the model's statistics at `t0` and at `end`.
async fn window_stats(target: &Target, model: &str, t0: Instant, end: Instant) -> Result<StatsDelta> {
    tokio::time::sleep_until(t0).await;
    let before = model_stats(&target.http, model).await;
    tokio::time::sleep_until(end).await;
    let after = model_stats(&target.http, model).await;
    match (before, after) {
        (Ok(b), Ok(a)) => Ok(a.delta(&b)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("warning: statistics of {model} unavailable: {e:#}");
            Ok(StatsDelta::default())
        }
    }
}

/// How an open-loop load spaces its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrivals {
    /// Exponential gaps (independent users).
    Poisson,
    /// Equal gaps (the kindest load at a given rate: any queueing is the server's own doing).
    Uniform,
}

/// Sends each arrival's scheduled instant on `arrive`, at that instant, from `start` to `end`.
/// A thread of its own rather than tokio timers: those fire on a 1 ms wheel, which would add up
/// to a millisecond of the generator's own lateness to every latency measured from the scheduled
/// start (a fifth of a 5 ms request); `thread::sleep` wakes within tens of microseconds. If the
/// client falls behind, the channel fills and arrivals go out late, still timed from when they
/// were due.
fn pace(
    rate: f64,
    arrivals: Arrivals,
    start: std::time::Instant,
    end: std::time::Instant,
    arrive: flume::Sender<std::time::Instant>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = Rng::new(17);
        let mut at = start;
        loop {
            let gap = match arrivals {
                Arrivals::Poisson => -rng.unit().ln() / rate,
                Arrivals::Uniform => 1.0 / rate,
            };
            at += Duration::from_secs_f64(gap);
            if at >= end {
                return;
            }
            let now = std::time::Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if arrive.send(at).is_err() {
                return;
            }
        }
    })
}

/// Open loop: arrivals at `rate` per second over a pool of `pool` connections; each request's
/// latency runs from its scheduled arrival (waiting for a free connection included).
pub async fn run_open(
    target: &Target,
    wl: &Workload,
    rate: f64,
    arrivals: Arrivals,
    duration: Duration,
    warmup: Duration,
    pool: usize,
) -> Result<LoadResult> {
    if rate <= 0.0 || !rate.is_finite() {
        bail!("open-loop rate must be positive, got {rate}");
    }
    let (tx, rx) = flume::bounded::<Option<Conn>>(pool);
    for _ in 0..pool.min(8) {
        tx.send_async(Some(connect(target, wl.transport).await?)).await?;
    }
    for _ in pool.min(8)..pool {
        tx.send_async(None).await?;
    }
    let t_warm = Instant::now();
    let t0 = t_warm + warmup;
    let end = t0 + duration;
    let stats = {
        let (target, model) = (target.clone(), wl.model.clone());
        tokio::spawn(async move { window_stats(&target, &model, t0, end).await })
    };
    let (arrive, arrived) = flume::bounded::<std::time::Instant>(1024);
    let pacer = pace(rate, arrivals, t_warm.into_std(), end.into_std(), arrive);
    let mut set = JoinSet::new();
    let mut idx = 0usize;
    while let Ok(at) = arrived.recv_async().await {
        let (target, wl, tx, rx) = (target.clone(), wl.clone(), tx.clone(), rx.clone());
        let scheduled = Instant::from_std(at);
        set.spawn(async move {
            let mut slot = rx.recv_async().await.ok().flatten();
            let out = send_on(&mut slot, &target, &wl, idx).await;
            let done = Instant::now();
            let _ = tx.send_async(slot).await;
            (scheduled, done, out)
        });
        idx += 1;
    }
    pacer.join().map_err(|_| anyhow!("the arrival pacer panicked"))?;
    let mut s = Samples::default();
    let drain = end + duration * 2 + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(drain, set.join_next()).await {
            Ok(Some(r)) => {
                let (scheduled, done, out) = r?;
                if scheduled >= t0 {
                    s.record(&out, (done - scheduled).as_secs_f64() * 1e3);
                }
            }
            Ok(None) => break,
            Err(_) => {
                let left = set.len() as u64;
                *s.errors.entry("not answered in time".to_string()).or_default() += left;
                set.abort_all();
                break;
            }
        }
    }
    let server = stats.await??;
    let mut r = s.finish(duration.as_secs_f64(), server);
    r.offered_per_sec = Some(rate);
    Ok(r)
}

/// A plain HTTP/1.1 call on a fresh connection: status and body.
pub async fn http_call(addr: &str, method: &str, path: &str, body: Option<String>) -> Result<(u16, Bytes)> {
    let mut sender = http_connect(addr).await?;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = tokio::time::timeout(Duration::from_secs(120), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("{method} {path}: no answer in 120 s"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub async fn model_stats(addr: &str, model: &str) -> Result<ServerStats> {
    let (status, body) = http_call(addr, "GET", &format!("/v2/models/{model}/stats"), None).await?;
    if status != 200 {
        bail!("statistics of {model}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(ServerStats::parse(&serde_json::from_slice(&body)?))
}
