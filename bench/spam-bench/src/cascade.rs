//! `cascade`: issue 16's cascade benchmark. Starts `sluice serve` on a repository holding the
//! text classifiers (`spam-text`, `spam-text-accurate`: raw email text in, the server tokenizes)
//! and one cascade endpoint per threshold (spam-text answers when its top probability reaches the
//! threshold, spam-text-accurate otherwise), then sends every held-out email once to each served
//! name — the two models alone and each cascade — with a fixed number of closed-loop clients.
//! Per served name and round: accuracy against the emails' labels, the share the cascade
//! escalated (`sluice_stage` = 1 in the answer's parameters), throughput and latency. Rounds
//! interleave the served names in a rotating order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::compare::{f, machine};
use crate::data::{self, Labelled};
use crate::endpoints::{loadavg, Served, ACCURATE, FAST, TEXT_INPUT};
use crate::load::http_connect;
use crate::stats::{median, num, Summary};
use crate::{cpus, runtime, write_results};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct CascadeArgs {
    /// The Sluice binary (default: <repo root>/target/release/sluice).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// ONNX Runtime intra-op threads of the server (`--onnx-intra-op-threads`); default: CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Closed-loop clients, each one keep-alive connection sending one email per request.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// The cascades' thresholds (one endpoint each).
    #[arg(long, value_delimiter = ',', default_value = "0.6,0.7,0.8,0.9")]
    thresholds: Vec<f64>,
    /// Interleaved rounds; each sends every email once to each served name.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Unmeasured requests (the first emails) before each measured pass.
    #[arg(long, default_value_t = 64)]
    warmup_requests: usize,
    /// Where to write the JSON results (default: <repo root>/bench/results/cascade.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary model repository and the server log.
    #[arg(long)]
    keep_repo: bool,
}

/// A served name measured: a model alone or a cascade endpoint.
#[derive(Clone)]
struct Served1 {
    name: String,
    threshold: Option<f64>,
}

impl Served1 {
    fn label(&self) -> String {
        match self.threshold {
            Some(t) => format!("cascade @ {t}"),
            None => format!("{} alone", self.name),
        }
    }
}

fn cascade_name(t: f64) -> String {
    format!("spam-cascade-{:02.0}", t * 100.0)
}

fn cascade_yaml(t: f64) -> String {
    format!(
        "# Written by spam-bench cascade.\nkind: cascade\nstages:\n  - model: {FAST}\n    confidence: {{ output: \
         probabilities }}\n    threshold: {t}\n  - model: {ACCURATE}\n"
    )
}

/// One answer: latency, the label, and the cascade stage that answered (absent for a model).
struct Reply {
    ms: f64,
    label: i64,
    stage: Option<u64>,
}

type Outcome = std::result::Result<Reply, String>;

/// One JSON request body per email: `TEXT` BYTES `[1, 1]`, asking for `label` only (a cascade
/// reads its confidence output itself and hides it again).
fn bodies(emails: &[Labelled]) -> Result<Vec<Bytes>> {
    emails
        .iter()
        .map(|e| {
            let body = json!({
                "inputs": [{"name": TEXT_INPUT, "shape": [1, 1], "datatype": "BYTES", "data": [e.text]}],
                "outputs": [{"name": "label"}],
            });
            Ok(Bytes::from(serde_json::to_vec(&body)?))
        })
        .collect()
}

async fn post(sender: &mut SendRequest<Full<Bytes>>, host: &str, path: &str, body: Bytes) -> Outcome {
    let started = Instant::now();
    sender.ready().await.map_err(|_| "connection".to_string())?;
    let req = http::Request::post(path)
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender.send_request(req).await.map_err(|_| "connection".to_string())?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|_| "connection".to_string())?.to_bytes();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| "bad JSON".to_string())?;
    let label = v["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "label"))
        .and_then(|t| t["data"][0].as_i64())
        .ok_or_else(|| "no label".to_string())?;
    let stage = v["parameters"]["sluice_stage"].as_u64();
    Ok(Reply { ms, label, stage })
}

/// Sends requests `0..n` of `bodies` once each from `concurrency` closed-loop clients (a shared
/// cursor, one keep-alive connection each); returns each request's outcome, in request order, and
/// the wall time from the first send to the last answer.
async fn once_through(
    http: &str,
    model: &str,
    bodies: &Arc<Vec<Bytes>>,
    n: usize,
    concurrency: usize,
) -> Result<(Vec<Outcome>, f64)> {
    let n = n.min(bodies.len());
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(http_connect(http).await?);
    }
    let path = Arc::new(format!("/v2/models/{model}/infer"));
    let cursor = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for conn in conns {
        let (host, path, bodies, cursor) = (http.to_string(), path.clone(), bodies.clone(), cursor.clone());
        set.spawn(async move {
            let mut slot = Some(conn);
            let mut got = Vec::new();
            loop {
                let i = cursor.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if slot.is_none() {
                    slot = http_connect(&host).await.ok();
                }
                let out = match slot.as_mut() {
                    None => Err("connect".to_string()),
                    Some(s) => {
                        match tokio::time::timeout(REQUEST_TIMEOUT, post(s, &host, &path, bodies[i].clone())).await {
                            Ok(o) => o,
                            Err(_) => Err("timeout".to_string()),
                        }
                    }
                };
                if matches!(&out, Err(e) if e == "connection" || e == "timeout" || e == "connect") {
                    slot = None;
                }
                got.push((i, out));
            }
            got
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        for (i, o) in r? {
            outcomes[i] = Some(o);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err("not sent".into()))).collect(), seconds))
}

/// One served name over every email, once.
#[derive(Clone, Debug)]
struct Pass {
    emails: usize,
    answered: usize,
    correct: usize,
    escalated: usize,
    /// Answers that carried `sluice_stage` at all (cascades only).
    staged: usize,
    errors: BTreeMap<String, u64>,
    seconds: f64,
    per_sec: f64,
    latency_ms: Summary,
    stage0_ms: Summary,
    stage1_ms: Summary,
    loadavg: String,
}

impl Pass {
    fn of(emails: &[Labelled], outcomes: &[Outcome], seconds: f64, loadavg: String) -> Pass {
        let (mut correct, mut escalated, mut staged) = (0, 0, 0);
        let (mut all, mut s0, mut s1) = (Vec::new(), Vec::new(), Vec::new());
        let mut errors = BTreeMap::new();
        for (e, o) in emails.iter().zip(outcomes) {
            match o {
                Ok(r) => {
                    correct += usize::from((r.label == 1) == e.spam);
                    all.push(r.ms);
                    match r.stage {
                        Some(0) => {
                            staged += 1;
                            s0.push(r.ms);
                        }
                        Some(_) => {
                            staged += 1;
                            escalated += 1;
                            s1.push(r.ms);
                        }
                        None => {}
                    }
                }
                Err(why) => *errors.entry(why.clone()).or_default() += 1,
            }
        }
        let answered = all.len();
        Pass {
            emails: outcomes.len(),
            answered,
            correct,
            escalated,
            staged,
            errors,
            seconds,
            per_sec: answered as f64 / seconds,
            latency_ms: Summary::of(&mut all),
            stage0_ms: Summary::of(&mut s0),
            stage1_ms: Summary::of(&mut s1),
            loadavg,
        }
    }

    /// Correct answers over all emails sent (an error counts as wrong).
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.emails.max(1) as f64
    }

    /// Escalated answers over the answers that said which stage answered; NaN for a model.
    fn escalated_share(&self) -> f64 {
        if self.staged == 0 {
            f64::NAN
        } else {
            self.escalated as f64 / self.staged as f64
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn to_json(&self) -> Value {
        json!({
            "emails": self.emails, "answered": self.answered, "correct": self.correct,
            "accuracy": num(self.accuracy()), "escalated": self.escalated,
            "escalated_share": num(self.escalated_share()), "errors": self.errors,
            "seconds": num(self.seconds), "per_sec": num(self.per_sec),
            "latency_ms": self.latency_ms.to_json(),
            "stage0_latency_ms": self.stage0_ms.to_json(), "stage1_latency_ms": self.stage1_ms.to_json(),
            "loadavg_before": self.loadavg,
        })
    }
}

/// Median over rounds, with the smallest and largest.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&v), min, max)
}

fn spread_json(values: &[f64]) -> Value {
    let (m, lo, hi) = spread(values);
    json!({"median": num(m), "min": num(lo), "max": num(hi)})
}

/// "median (min–max)" with `digits`; a single round shows its value alone.
fn spread_text(values: &[f64], digits: usize, scale: f64) -> String {
    let (m, lo, hi) = spread(values);
    if values.len() <= 1 || !lo.is_finite() {
        return f(m * scale, digits);
    }
    format!("{} ({}–{})", f(m * scale, digits), f(lo * scale, digits), f(hi * scale, digits))
}

pub fn run(
    args: CascadeArgs,
    models: &Path,
    ort_lib: Option<&Path>,
    limit: Option<usize>,
    client_threads: usize,
) -> Result<()> {
    if args.concurrency == 0 || args.rounds == 0 {
        bail!("--concurrency and --rounds must be at least 1");
    }
    if let Some(t) = args.thresholds.iter().find(|t| !(**t > 0.0 && **t <= 1.0)) {
        bail!("threshold {t} is not in (0, 1]");
    }
    let started = std::time::Instant::now();
    let threads = args.threads.unwrap_or_else(cpus);
    let emails = data::held_out(models, limit)?;
    let spam = emails.iter().filter(|e| e.spam).count();
    eprintln!("{} held-out emails ({spam} spam, {} ham)", emails.len(), emails.len() - spam);
    let mut targets =
        vec![Served1 { name: FAST.into(), threshold: None }, Served1 { name: ACCURATE.into(), threshold: None }];
    let mut defs = Vec::new();
    for &t in &args.thresholds {
        defs.push((cascade_name(t), cascade_yaml(t)));
        targets.push(Served1 { name: cascade_name(t), threshold: Some(t) });
    }
    let rt = runtime(client_threads)?;
    let served =
        Served::start(args.sluice_bin.as_deref(), models, ort_lib, threads, &rt, &[FAST, ACCURATE], &defs, &[])?;
    let http = served.server.target.http.clone();
    let bodies = Arc::new(bodies(&emails)?);

    let k = targets.len();
    let mut passes: Vec<Vec<Pass>> = vec![Vec::new(); k];
    let mut orders = Vec::new();
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..k).collect();
        order.rotate_left(round % k);
        if round % 2 == 1 {
            order.reverse();
        }
        eprintln!(
            "round {}/{}: {}",
            round + 1,
            args.rounds,
            order.iter().map(|&i| targets[i].label()).collect::<Vec<_>>().join(", ")
        );
        for &i in &order {
            let t = &targets[i];
            let load = loadavg();
            let pass = rt.block_on(async {
                once_through(&http, &t.name, &bodies, args.warmup_requests, args.concurrency).await?;
                let (outcomes, seconds) = once_through(&http, &t.name, &bodies, emails.len(), args.concurrency).await?;
                Ok::<_, anyhow::Error>(Pass::of(&emails, &outcomes, seconds, load))
            })?;
            eprintln!(
                "  {}: accuracy {:.2} %, escalated {} %, {:.1} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {} (load {})",
                t.label(),
                pass.accuracy() * 100.0,
                f(pass.escalated_share() * 100.0, 1),
                pass.per_sec,
                pass.latency_ms.p50,
                pass.latency_ms.p99,
                pass.error_count(),
                pass.loadavg,
            );
            passes[i].push(pass);
        }
        orders.push(order.iter().map(|&i| targets[i].name.clone()).collect::<Vec<_>>());
    }
    if args.keep_repo {
        served.keep();
    } else {
        drop(served);
    }

    // Per round: throughput over spam-text-accurate alone's in the same round.
    let vs_accurate =
        |i: usize| -> Vec<f64> { passes[i].iter().zip(&passes[1]).map(|(p, a)| p.per_sec / a.per_sec).collect() };
    let col = |i: usize, g: &dyn Fn(&Pass) -> f64| -> Vec<f64> { passes[i].iter().map(g).collect() };
    let mut table = format!(
        "Machine: {}. {} held-out emails ({spam} spam), one per request, HTTP JSON (text in, label out), {} \
         closed-loop clients, {} round(s) interleaved; ONNX Runtime intra-op threads {threads}. Median over rounds \
         (min–max).\n\n",
        machine(),
        emails.len(),
        args.concurrency,
        args.rounds
    );
    table.push_str(
        "| served | accuracy % | escalated % | req/s | req/s vs accurate alone | p50 ms | p99 ms | p50 ms stage 0 / 1 \
         | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, t) in targets.iter().enumerate() {
        let errors: u64 = passes[i].iter().map(Pass::error_count).sum();
        let stages = if t.threshold.is_some() {
            format!("{} / {}", f(median(&col(i, &|p| p.stage0_ms.p50)), 2), f(median(&col(i, &|p| p.stage1_ms.p50)), 2))
        } else {
            "–".into()
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {stages} | {errors} |\n",
            t.label(),
            spread_text(&col(i, &|p| p.accuracy()), 2, 100.0),
            if t.threshold.is_some() { spread_text(&col(i, &|p| p.escalated_share()), 1, 100.0) } else { "–".into() },
            spread_text(&col(i, &|p| p.per_sec), 1, 1.0),
            spread_text(&vs_accurate(i), 2, 1.0),
            spread_text(&col(i, &|p| p.latency_ms.p50), 2, 1.0),
            spread_text(&col(i, &|p| p.latency_ms.p99), 2, 1.0),
        ));
    }
    println!();
    println!("{table}");

    let command: Vec<String> = std::env::args().collect();
    let results = json!({
        "command": command.join(" "),
        "machine": machine(),
        "threads": threads,
        "transport": "HTTP JSON",
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "warmup_requests": args.warmup_requests,
        "emails": {"count": emails.len(), "spam": spam, "ham": emails.len() - spam,
                   "which": "odd line index of spamassassin.jsonl (held out), fixed shuffled order"},
        "endpoints": defs.iter().map(|(n, y)| json!({"name": n, "endpoint_yaml": y})).collect::<Vec<_>>(),
        "order_per_round": orders,
        "served": targets.iter().enumerate().map(|(i, t)| json!({
            "name": t.name,
            "threshold": t.threshold,
            "accuracy": spread_json(&col(i, &|p| p.accuracy())),
            "escalated_share": spread_json(&col(i, &|p| p.escalated_share())),
            "per_sec": spread_json(&col(i, &|p| p.per_sec)),
            "per_sec_over_accurate_alone": spread_json(&vs_accurate(i)),
            "p50_ms": spread_json(&col(i, &|p| p.latency_ms.p50)),
            "p99_ms": spread_json(&col(i, &|p| p.latency_ms.p99)),
            "errors": passes[i].iter().map(Pass::error_count).sum::<u64>(),
            "per_round": passes[i].iter().map(Pass::to_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "table": table,
    });
    write_results(args.json.as_deref(), "cascade.json", &results, started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_yaml() {
        assert_eq!(cascade_name(0.6), "spam-cascade-60");
        assert_eq!(cascade_name(0.85), "spam-cascade-85");
        let y = cascade_yaml(0.8);
        assert!(y.contains("threshold: 0.8\n"), "{y}");
        assert!(y.contains("  - model: spam-text\n    confidence: { output: probabilities }\n"), "{y}");
        assert!(y.ends_with("  - model: spam-text-accurate\n"), "{y}");
    }

    #[test]
    fn pass_counts() {
        let emails = vec![
            Labelled { text: "a".into(), spam: true },
            Labelled { text: "b".into(), spam: false },
            Labelled { text: "c".into(), spam: false },
            Labelled { text: "d".into(), spam: true },
        ];
        let outcomes = vec![
            Ok(Reply { ms: 1.0, label: 1, stage: Some(0) }),
            Ok(Reply { ms: 3.0, label: 1, stage: Some(1) }),
            Ok(Reply { ms: 2.0, label: 0, stage: Some(0) }),
            Err("HTTP 500".to_string()),
        ];
        let p = Pass::of(&emails, &outcomes, 2.0, String::new());
        assert_eq!((p.answered, p.correct, p.escalated, p.staged), (3, 2, 1, 3));
        assert_eq!(p.accuracy(), 0.5);
        assert!((p.escalated_share() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(p.per_sec, 1.5);
        assert_eq!(p.error_count(), 1);
        let alone = Pass::of(&emails[..1], &[Ok(Reply { ms: 1.0, label: 1, stage: None })], 1.0, String::new());
        assert!(alone.escalated_share().is_nan());
    }
}
