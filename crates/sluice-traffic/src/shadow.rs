//! The shadow endpoint: the caller gets the primary's answer, and a copy of its request goes to
//! each shadow off the response path. Copies wait in one bounded queue per endpoint and run a
//! few at a time; when the queue is full a copy is dropped and counted, so a slow candidate can
//! never hold up or fill the memory of the live path. What the caller sees is the primary's
//! answer or error, whatever the shadows do.
//!
//! Per shadow it keeps requests, drops, errors of each side, agreement of the compared output
//! (with a 95 % interval) and latency percentiles of each side, for `GET /v2/endpoints/{name}`
//! and `/metrics`. A sampled share of comparisons is written as JSON lines to a log file that
//! rotates (one older file kept), by a thread of its own.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::generation::{GenerateRequest, TokenStream};
use sluice_types::{
    Answer, Endpoint, InferRequest, InferResponse, ModelConfig, RequestContext, RequestedOutput, Resolver, ServeError,
    TrafficCounter,
};
use tokio::sync::{mpsc, Semaphore};

use crate::compare::{compare, Agreement, LatencyWindow};
use crate::definition::Target;
use crate::own_stats::{extend_unique, OwnStats};
use crate::policy::{resolve_target, tag, target_key};
use crate::split;

/// How shadow copies are queued, run and logged.
#[derive(Clone, Debug)]
pub struct ShadowOptions {
    /// Copies waiting to run, over all shadows of one endpoint; more are dropped.
    pub queue: usize,
    /// Copies running at once per endpoint.
    pub concurrency: usize,
    /// Where `<endpoint>.jsonl` logs go; `None`: no log even when `log.sample` asks.
    pub log_dir: Option<PathBuf>,
    /// A log rotates (to `<endpoint>.jsonl.1`) past this size.
    pub log_max_bytes: u64,
}

impl Default for ShadowOptions {
    fn default() -> Self {
        ShadowOptions { queue: 256, concurrency: 4, log_dir: None, log_max_bytes: 64 << 20 }
    }
}

/// One shadow of the endpoint and what it has seen.
struct Copy {
    target: Target,
    key: String,
    /// What picks its share of requests: `<endpoint>/<key>`.
    salt: String,
    share: f64,
    stats: Mutex<CopyStats>,
}

#[derive(Default)]
struct CopyStats {
    /// Requests picked for this shadow (by its share), queued or dropped.
    requests: u64,
    dropped: u64,
    completed: u64,
    primary_errors: u64,
    shadow_errors: u64,
    last_shadow_error: Option<String>,
    agreement: Agreement,
    primary_latency: LatencyWindow,
    shadow_latency: LatencyWindow,
}

/// What the copy workers share with the endpoint (not the endpoint itself: the endpoint's queue
/// sender must drop with it, which ends its workers).
struct Shared {
    name: String,
    copies: Vec<Copy>,
    compare: Option<String>,
    resolver: Weak<dyn Resolver>,
    log: Option<Log>,
}

/// A copy waiting to run.
struct Job {
    copy: usize,
    ctx: RequestContext,
    request: InferRequest,
    /// The primary's outputs (the compared one, or all when this request is logged) or error.
    primary: Result<Answer, String>,
    primary_micros: u64,
    logged: bool,
}

pub struct ShadowEndpoint {
    shared: Arc<Shared>,
    primary: Target,
    log_sample: f64,
    opts: ShadowOptions,
    /// Started by the first request, from inside the runtime.
    queue: OnceLock<mpsc::Sender<Job>>,
    own: OwnStats,
}

impl ShadowEndpoint {
    pub fn new(
        name: &str,
        primary: Target,
        shadows: Vec<crate::definition::Shadow>,
        compare: Option<String>,
        log_sample: f64,
        resolver: Weak<dyn Resolver>,
        opts: ShadowOptions,
    ) -> ShadowEndpoint {
        let copies = shadows
            .into_iter()
            .map(|s| {
                let key = target_key(&s.target);
                Copy { salt: format!("{name}/{key}"), key, target: s.target, share: s.share, stats: Default::default() }
            })
            .collect();
        let log = match (&opts.log_dir, log_sample > 0.0) {
            (Some(dir), true) => Log::start(dir.join(format!("{name}.jsonl")), opts.log_max_bytes),
            _ => None,
        };
        ShadowEndpoint {
            shared: Arc::new(Shared { name: name.to_string(), copies, compare, resolver, log }),
            primary,
            log_sample,
            opts,
            queue: OnceLock::new(),
            own: Default::default(),
        }
    }

    /// One request: the primary answers, copies are queued.
    async fn serve(&self, ctx: &RequestContext, mut request: InferRequest) -> Result<Answer, ServeError> {
        let primary = self.primary()?;
        let picked: Vec<usize> = (0..self.shared.copies.len())
            .filter(|&i| {
                let c = &self.shared.copies[i];
                c.share >= 1.0 || split::point(&c.salt, &ctx.request_id) < c.share
            })
            .collect();
        if picked.is_empty() {
            return primary.infer(ctx, request).await.map(|a| tag(&self.shared.name, a));
        }
        let logged = self.shared.log.is_some() && split::point(&self.shared.name, &ctx.request_id) < self.log_sample;
        // Both sides must return the compared output even when the client asked for others.
        let mut hidden = None;
        if let Some(output) = &self.shared.compare {
            if !request.outputs.is_empty() && !request.outputs.iter().any(|o| &o.name == output) {
                request.outputs.push(RequestedOutput { name: output.clone(), parameters: Default::default() });
                hidden = Some(output.clone());
            }
        }
        let copy_request = request.clone();
        let started = Instant::now();
        let result = primary.infer(ctx, request).await;
        let micros = started.elapsed().as_micros() as u64;
        let kept = match &result {
            Ok(a) if logged => Ok(a.clone()),
            // Only the compared output travels with the copy.
            Ok(a) => Ok(Answer {
                response: InferResponse {
                    model_name: a.response.model_name.clone(),
                    model_version: a.response.model_version.clone(),
                    outputs: a
                        .response
                        .outputs
                        .iter()
                        .filter(|t| self.shared.compare.as_ref() == Some(&t.name))
                        .cloned()
                        .collect(),
                    ..Default::default()
                },
                timings: a.timings,
            }),
            Err(e) => Err(e.to_string()),
        };
        // The copy runs whatever the caller's deadline: it is not waiting for it.
        let copy_ctx = RequestContext { deadline: None, ..ctx.clone() };
        let tx = self.sender();
        for i in picked {
            let job = Job {
                copy: i,
                ctx: copy_ctx.clone(),
                request: copy_request.clone(),
                primary: kept.clone(),
                primary_micros: micros,
                logged,
            };
            let full = tx.try_send(job).is_err();
            let mut s = self.shared.copies[i].stats.lock();
            s.requests += 1;
            s.dropped += u64::from(full);
            s.primary_latency.push(micros);
        }
        let mut answer = tag(&self.shared.name, result?);
        if let Some(h) = hidden {
            answer.response.outputs.retain(|t| t.name != h);
        }
        Ok(answer)
    }

    fn sender(&self) -> &mpsc::Sender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.opts.queue.max(1));
            tokio::spawn(run_copies(self.shared.clone(), rx, self.opts.concurrency.max(1)));
            tx
        })
    }

    fn primary(&self) -> Result<Arc<dyn Endpoint>, ServeError> {
        resolve_target(&self.shared.resolver, &self.primary)
    }
}

/// Takes copies off the queue, at most `concurrency` running at once. Ends when the endpoint
/// (the queue's sender) is gone and the queue is empty.
async fn run_copies(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>, concurrency: usize) {
    let slots = Arc::new(Semaphore::new(concurrency));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(job) = rx.recv().await else { return };
        let shared = shared.clone();
        tokio::spawn(async move {
            run_copy(&shared, job).await;
            drop(slot);
        });
    }
}

async fn run_copy(shared: &Shared, job: Job) {
    let copy = &shared.copies[job.copy];
    let started = Instant::now();
    let answer = match resolve_target(&shared.resolver, &copy.target) {
        Ok(e) => e.infer(&job.ctx, job.request).await,
        Err(e) => Err(e),
    };
    let micros = started.elapsed().as_micros() as u64;
    let comparison = match (&job.primary, &answer, &shared.compare) {
        (Ok(p), Ok(s), Some(output)) => Some(compare(output, &p.response.outputs, &s.response.outputs)),
        _ => None,
    };
    if job.logged {
        if let Some(log) = &shared.log {
            let time = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            let candidate = answer.clone().map_err(|e| e.to_string());
            let line = json!({
                "time": time,
                "request_id": job.ctx.request_id,
                "shadow": copy.key,
                "primary": side(&job.primary, job.primary_micros),
                "candidate": side(&candidate, micros),
            });
            log.write(line.to_string());
        }
    }
    let mut s = copy.stats.lock();
    s.completed += 1;
    s.shadow_latency.push(micros);
    if job.primary.is_err() {
        s.primary_errors += 1;
    }
    match answer {
        Ok(_) => {}
        Err(e) => {
            s.shadow_errors += 1;
            s.last_shadow_error = Some(e.to_string());
        }
    }
    if let Some(c) = comparison {
        s.agreement.add(c);
    }
}

/// One side of a logged comparison.
fn side(answer: &Result<Answer, String>, micros: u64) -> Value {
    match answer {
        Ok(a) => json!({
            "model": a.response.model_name,
            "version": a.response.model_version,
            "latency_ms": micros as f64 / 1000.0,
            "outputs": a.response.outputs.iter().map(|t| json!({
                "name": t.name, "datatype": t.datatype.as_str(), "shape": t.shape, "data": t.to_json(),
            })).collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "error": e, "latency_ms": micros as f64 / 1000.0 }),
    }
}

#[async_trait]
impl Endpoint for ShadowEndpoint {
    fn name(&self) -> &str {
        &self.shared.name
    }

    /// Ready when the primary is: a shadow that is down costs the caller nothing.
    fn ready(&self) -> bool {
        self.primary().is_ok_and(|p| p.ready())
    }

    fn metadata(&self) -> ModelMetadata {
        let mut m = self.primary().map(|p| p.metadata()).unwrap_or_default();
        m.name = self.shared.name.clone();
        m.versions = vec!["1".into()];
        m.platform = "sluice_endpoint".into();
        m
    }

    fn config(&self) -> Arc<ModelConfig> {
        let mut c = self.primary().map(|p| (*p.config()).clone()).unwrap_or_default();
        c.name = self.shared.name.clone();
        Arc::new(c)
    }

    /// Its own requests (as version 1), then the primary's statistics.
    fn statistics(&self) -> Vec<ModelStatistics> {
        let mut out = vec![self.own.entry(&self.shared.name, "1")];
        extend_unique(&mut out, self.primary().map(|p| p.statistics()).unwrap_or_default());
        out
    }

    fn check(&self, request: &InferRequest) -> Result<(), ServeError> {
        self.primary()?.check(request)
    }

    async fn infer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        let started = Instant::now();
        let result = self.serve(ctx, request).await;
        self.own.record(result.is_ok(), started.elapsed().as_nanos() as u64, 1);
        result
    }

    fn generative(&self) -> bool {
        false
    }

    async fn generate(&self, _: &RequestContext, _: GenerateRequest) -> Result<Box<dyn TokenStream>, ServeError> {
        Err(ServeError::Unsupported(format!(
            "endpoint '{}' is a shadow endpoint: it mirrors infer requests, not generations",
            self.shared.name
        )))
    }

    fn traffic_report(&self) -> Option<Value> {
        let shadows: Vec<Value> = self
            .shared
            .copies
            .iter()
            .map(|c| {
                let s = c.stats.lock();
                json!({
                    "target": c.key,
                    "share": c.share,
                    "requests": s.requests,
                    "dropped": s.dropped,
                    "completed": s.completed,
                    "primary_errors": s.primary_errors,
                    "shadow_errors": s.shadow_errors,
                    "last_shadow_error": s.last_shadow_error,
                    "compared_output": self.shared.compare,
                    "comparison": s.agreement.report(),
                    "primary_latency_ms": { "p50": s.primary_latency.quantile_ms(0.5), "p99": s.primary_latency.quantile_ms(0.99) },
                    "shadow_latency_ms": { "p50": s.shadow_latency.quantile_ms(0.5), "p99": s.shadow_latency.quantile_ms(0.99) },
                })
            })
            .collect();
        Some(json!({
            "name": self.shared.name,
            "kind": "shadow",
            "ready": self.ready(),
            "primary": target_key(&self.primary),
            "requests": self.own.requests(),
            "shadows": shadows,
        }))
    }

    fn counters(&self) -> Vec<TrafficCounter> {
        let name = &self.shared.name;
        let mut out = vec![TrafficCounter::requests(name, &target_key(&self.primary), self.own.requests())];
        for c in &self.shared.copies {
            let s = c.stats.lock();
            let labels = || vec![("endpoint", name.clone()), ("shadow", c.key.clone())];
            out.push(TrafficCounter {
                metric: "sluice_shadow_copies_total",
                help: "Requests copied to a shadow (queued or dropped)",
                labels: labels(),
                value: s.requests,
            });
            out.push(TrafficCounter {
                metric: "sluice_shadow_dropped_total",
                help: "Shadow copies dropped because the shadow queue was full",
                labels: labels(),
                value: s.dropped,
            });
            out.push(TrafficCounter {
                metric: "sluice_shadow_errors_total",
                help: "Shadow copies that failed",
                labels: labels(),
                value: s.shadow_errors,
            });
            out.push(TrafficCounter {
                metric: "sluice_shadow_disagreements_total",
                help: "Compared label elements on which a shadow and its primary differ",
                labels: labels(),
                value: s.agreement.disagreements(),
            });
        }
        out
    }
}

/// The comparison log: lines go to a thread that appends them, rotating the file past a size.
/// A full channel drops lines rather than slow the copies.
struct Log {
    tx: std::sync::mpsc::SyncSender<String>,
}

impl Log {
    fn start(path: PathBuf, max_bytes: u64) -> Option<Log> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1024);
        let spawned = std::thread::Builder::new().name("sluice-shadow-log".into()).spawn(move || {
            let open = |p: &PathBuf| std::fs::OpenOptions::new().create(true).append(true).open(p);
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let mut file = match open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the shadow log");
                    return;
                }
            };
            let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
            for line in rx {
                if size > 0 && size + line.len() as u64 + 1 > max_bytes {
                    let mut old = path.clone().into_os_string();
                    old.push(".1");
                    let _ = std::fs::rename(&path, &old);
                    match open(&path) {
                        Ok(f) => (file, size) = (f, 0),
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "cannot rotate the shadow log");
                            return;
                        }
                    }
                }
                if writeln!(file, "{line}").is_ok() {
                    size += line.len() as u64 + 1;
                }
            }
        });
        spawned.ok().map(|_| Log { tx })
    }

    fn write(&self, line: String) {
        let _ = self.tx.try_send(line);
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;
    use crate::definition::{parse, Definition};
    use crate::testing::{Fake, Table};

    fn fake(name: &str, label: i64, gate: Option<Arc<Semaphore>>, fail: bool) -> Fake {
        Fake { gate, fail, ..Fake::new(name, &[1.0], label) }
    }

    fn shadow(table: &Arc<Table>, yaml: &str, opts: ShadowOptions) -> ShadowEndpoint {
        let Definition::Shadow { primary, shadows, compare, log_sample } = parse("s/endpoint.yaml", yaml).unwrap()
        else {
            panic!("not a shadow")
        };
        let weak: Weak<dyn Resolver> = Arc::downgrade(&(table.clone() as Arc<dyn Resolver>));
        ShadowEndpoint::new("s", primary, shadows, compare, log_sample, weak, opts)
    }

    async fn settle(e: &ShadowEndpoint, completed: u64) -> Value {
        for _ in 0..1000 {
            let r = e.traffic_report().unwrap();
            if r["shadows"][0]["completed"] == completed {
                return r;
            }
            tokio::task::yield_now().await;
        }
        panic!("copies did not complete: {}", e.traffic_report().unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_drops_copies_and_the_caller_never_waits() {
        let gate = Arc::new(Semaphore::new(0));
        let t = Table::of([fake("live", 1, None, false), fake("slow", 1, Some(gate.clone()), false)]);
        let e = shadow(
            &t,
            "kind: shadow\nprimary: { model: live }\nshadows: [ { model: slow } ]\ncompare: { output: label }\n",
            ShadowOptions { queue: 2, concurrency: 1, ..Default::default() },
        );
        // On this single-threaded runtime nothing runs the copies until the test yields: all ten
        // requests are answered while the shadow has not started one.
        for i in 0..10 {
            let a = e.infer(&RequestContext::new(format!("r{i}")), InferRequest::default()).await.unwrap();
            assert_eq!(a.response.parameters["sluice_model"], "live");
        }
        let r = e.traffic_report().unwrap();
        assert_eq!((r["shadows"][0]["requests"].clone(), r["shadows"][0]["dropped"].clone()), (json!(10), json!(8)));
        gate.add_permits(2);
        let r = settle(&e, 2).await;
        assert_eq!(r["shadows"][0]["comparison"]["agreement"], 1.0, "{r}");
        let counters = e.counters();
        let dropped = counters.iter().find(|c| c.metric == "sluice_shadow_dropped_total").unwrap();
        assert_eq!((dropped.value, dropped.labels[1].1.as_str()), (8, "slow"));
    }

    #[tokio::test]
    async fn errors_on_either_side_are_counted_not_passed_on() {
        let t =
            Table::of([fake("live", 1, None, false), fake("broken", 1, None, true), fake("differs", 2, None, false)]);
        let e = shadow(
            &t,
            "kind: shadow\nprimary: { model: live }\nshadows: [ { model: broken } ]\n",
            ShadowOptions::default(),
        );
        e.infer(&RequestContext::new("r"), InferRequest::default()).await.unwrap();
        let r = settle(&e, 1).await;
        assert_eq!(r["shadows"][0]["shadow_errors"], 1);
        assert_eq!(r["shadows"][0]["last_shadow_error"], "broken failed", "{r}");

        let e = shadow(
            &t,
            "kind: shadow\nprimary: { model: broken }\nshadows: [ { model: differs } ]\ncompare: { output: label }\n",
            ShadowOptions::default(),
        );
        assert!(e.infer(&RequestContext::new("r"), InferRequest::default()).await.is_err(), "the primary's error");
        let r = settle(&e, 1).await;
        assert_eq!(
            (r["shadows"][0]["primary_errors"].clone(), r["shadows"][0]["shadow_errors"].clone()),
            (json!(1), json!(0))
        );

        let e = shadow(
            &t,
            "kind: shadow\nprimary: { model: live }\nshadows: [ { model: differs, share: 0.5 } ]\ncompare: { output: label }\n",
            ShadowOptions::default(),
        );
        let before = t.0["differs"].calls() as u64;
        for i in 0..400 {
            e.infer(&RequestContext::new(format!("r{i}")), InferRequest::default()).await.unwrap();
        }
        let picked = e.traffic_report().unwrap()["shadows"][0]["requests"].as_u64().unwrap();
        assert!((160..=240).contains(&picked), "share 0.5 of 400: {picked}");
        let r = settle(&e, picked).await;
        assert_eq!(r["shadows"][0]["comparison"]["agreement"], 0.0);
        assert_eq!(t.0["differs"].calls() as u64 - before, picked);
    }
}
