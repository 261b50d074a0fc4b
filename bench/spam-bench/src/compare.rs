//! `compare`: issue 3's whole table in one run. Starts `sluice serve` on free ports over a
//! temporary model repository (symlinks into the models folder, configs written here), then runs
//! every cell once per round, rounds interleaved so that machine noise hits every cell alike,
//! and reports medians over rounds and medians of per-round ratios.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::inprocess::{self, BatchRun, Batching};
use crate::load::{self, Arrivals, LoadResult, Phase, Target, Transport, Workload};
use crate::stats::{md1_time_in_system, median, num};
use crate::{cpus, data, repo_root, runtime};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The Sluice binary (default: <repo root>/target/release/sluice).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// ONNX Runtime intra-op threads, in-process and in every served config; default: CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Measured seconds of each served cell.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Unmeasured seconds before each served cell.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Interleaved rounds (the table shows medians over rounds).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// In-process seconds per batch size.
    #[arg(long, default_value_t = 1.5)]
    inprocess_seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    batch_sizes: Vec<usize>,
    /// `max_queue_delay_microseconds` of the spam models with batching on (fixed delay).
    #[arg(long, default_value_t = 2000)]
    delay_us: u64,
    /// `max_batch_size` of the capped spam-accurate config (the others have 32).
    #[arg(long, default_value_t = 8)]
    capped_batch: usize,
    /// `adaptive { max_p99_latency_ms }` of the adaptive configs (spam-accurate and spam-fast).
    #[arg(long, default_value_t = 50)]
    adaptive_p99_ms: u64,
    /// Bursty load: cycles of `--burst-high` clients then `--burst-low` clients.
    #[arg(long, default_value_t = 3)]
    burst_cycles: usize,
    #[arg(long, default_value_t = 32)]
    burst_high: usize,
    #[arg(long, default_value_t = 2)]
    burst_low: usize,
    /// Seconds of each burst phase.
    #[arg(long, default_value_t = 1.0)]
    burst_phase_secs: f64,
    /// Open-loop rate as a fraction of the round's in-process best ("half that load").
    #[arg(long, default_value_t = 0.5)]
    half_load: f64,
    /// Send the spam requests over gRPC instead of HTTP binary (add_sub stays on HTTP, whose
    /// response headers carry the queue time).
    #[arg(long)]
    grpc: bool,
    /// Where to write the JSON results (default: <repo root>/bench/results/spam-bench.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary model repository and the server log.
    #[arg(long)]
    keep_repo: bool,
    /// Run only these served cells (their JSON keys, e.g. `spam_accurate_adaptive_half_load_uniform`);
    /// default: all. The in-process sweep always runs.
    #[arg(long, value_delimiter = ',')]
    cells: Vec<String>,
}

/// Model names in the temporary repository.
const ACCURATE: &str = "spam-accurate";
const ACCURATE_CAPPED: &str = "spam-accurate-capped";
const ACCURATE_ADAPTIVE: &str = "spam-accurate-adaptive";
const ACCURATE_OFF: &str = "spam-accurate-nobatch";
const FAST: &str = "spam-fast";
const FAST_ADAPTIVE: &str = "spam-fast-adaptive";
const ADD_SUB: &str = "add_sub";
const ADD_SUB_OFF: &str = "add_sub-nobatch";

/// Every model of the repository, in load order.
const MODELS: [&str; 8] =
    [ACCURATE, ACCURATE_CAPPED, ACCURATE_ADAPTIVE, ACCURATE_OFF, FAST, FAST_ADAPTIVE, ADD_SUB, ADD_SUB_OFF];
/// Models whose config uses a feature that may not have landed yet: a load failure marks their
/// rows "not available yet" instead of ending the run.
const OPTIONAL: [&str; 2] = [ACCURATE_ADAPTIVE, FAST_ADAPTIVE];

/// The served cells, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    Spam1,
    Spam8,
    Spam32,
    SpamCapped32,
    SpamAdaptive32,
    SpamOff32,
    HalfPoisson,
    HalfUniform,
    AdaptiveHalfPoisson,
    AdaptiveHalfUniform,
    AddSubOn32,
    AddSubOff32,
    AddSubOn1,
    AddSubOff1,
    BurstFixed,
    BurstAdaptive,
}

const CELLS: [Cell; 16] = [
    Cell::Spam1,
    Cell::Spam8,
    Cell::Spam32,
    Cell::SpamCapped32,
    Cell::SpamAdaptive32,
    Cell::SpamOff32,
    Cell::HalfPoisson,
    Cell::HalfUniform,
    Cell::AdaptiveHalfPoisson,
    Cell::AdaptiveHalfUniform,
    Cell::AddSubOn32,
    Cell::AddSubOff32,
    Cell::AddSubOn1,
    Cell::AddSubOff1,
    Cell::BurstFixed,
    Cell::BurstAdaptive,
];

/// The load a cell applies.
#[derive(Clone, Copy)]
enum Load {
    /// That many closed-loop clients.
    Closed(usize),
    /// Open loop at `--half-load` times the round's in-process best.
    Open(Arrivals),
    /// `--burst-cycles` of `--burst-high` then `--burst-low` closed-loop clients.
    Burst,
}

impl Cell {
    fn key(self) -> &'static str {
        match self {
            Cell::Spam1 => "spam_accurate_c1",
            Cell::Spam8 => "spam_accurate_c8",
            Cell::Spam32 => "spam_accurate_c32",
            Cell::SpamCapped32 => "spam_accurate_capped_c32",
            Cell::SpamAdaptive32 => "spam_accurate_adaptive_c32",
            Cell::SpamOff32 => "spam_accurate_nobatch_c32",
            Cell::HalfPoisson => "spam_accurate_half_load_poisson",
            Cell::HalfUniform => "spam_accurate_half_load_uniform",
            Cell::AdaptiveHalfPoisson => "spam_accurate_adaptive_half_load_poisson",
            Cell::AdaptiveHalfUniform => "spam_accurate_adaptive_half_load_uniform",
            Cell::AddSubOn32 => "add_sub_c32",
            Cell::AddSubOff32 => "add_sub_nobatch_c32",
            Cell::AddSubOn1 => "add_sub_c1",
            Cell::AddSubOff1 => "add_sub_nobatch_c1",
            Cell::BurstFixed => "spam_fast_bursty_fixed",
            Cell::BurstAdaptive => "spam_fast_bursty_adaptive",
        }
    }

    fn model(self) -> &'static str {
        match self {
            Cell::Spam1 | Cell::Spam8 | Cell::Spam32 | Cell::HalfPoisson | Cell::HalfUniform => ACCURATE,
            Cell::SpamCapped32 => ACCURATE_CAPPED,
            Cell::SpamAdaptive32 | Cell::AdaptiveHalfPoisson | Cell::AdaptiveHalfUniform => ACCURATE_ADAPTIVE,
            Cell::SpamOff32 => ACCURATE_OFF,
            Cell::AddSubOn32 | Cell::AddSubOn1 => ADD_SUB,
            Cell::AddSubOff32 | Cell::AddSubOff1 => ADD_SUB_OFF,
            Cell::BurstFixed => FAST,
            Cell::BurstAdaptive => FAST_ADAPTIVE,
        }
    }

    fn load(self) -> Load {
        match self {
            Cell::Spam1 | Cell::AddSubOn1 | Cell::AddSubOff1 => Load::Closed(1),
            Cell::Spam8 => Load::Closed(8),
            Cell::Spam32 | Cell::SpamCapped32 | Cell::SpamAdaptive32 | Cell::SpamOff32 => Load::Closed(32),
            Cell::AddSubOn32 | Cell::AddSubOff32 => Load::Closed(32),
            Cell::HalfPoisson | Cell::AdaptiveHalfPoisson => Load::Open(Arrivals::Poisson),
            Cell::HalfUniform | Cell::AdaptiveHalfUniform => Load::Open(Arrivals::Uniform),
            Cell::BurstFixed | Cell::BurstAdaptive => Load::Burst,
        }
    }

    /// Compared with the in-process limit (same model, same emails).
    fn is_spam_accurate(self) -> bool {
        self.model().starts_with(ACCURATE)
    }
}

/// A `sluice serve` child process on free ports; stopped (SIGTERM, then SIGKILL) on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) target: Target,
    log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    pub(crate) fn start(bin: &Path, repo: &Path, ort_lib: &Path, threads: usize, log: PathBuf) -> Result<Server> {
        let (http, grpc, metrics) = (free_port()?, free_port()?, free_port()?);
        let out = fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(["serve", "--host", "127.0.0.1", "--model-control-mode", "explicit"])
            .arg("--model-repository")
            .arg(repo)
            .args(["--http-port", &http.to_string(), "--grpc-port", &grpc.to_string()])
            .args(["--metrics-port", &metrics.to_string()])
            // A fresh job store per server: the previous one may still be shutting down.
            .arg("--state-dir")
            .arg(log.with_extension("state"))
            .arg("--onnxruntime-lib")
            .arg(ort_lib)
            .args(["--onnx-intra-op-threads", &threads.to_string(), "--grace-period-secs", "2"])
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {} (build it: cargo build --release -p sluice)", bin.display()))?;
        Ok(Server {
            child,
            target: Target { http: format!("127.0.0.1:{http}"), grpc: Some(format!("127.0.0.1:{grpc}")) },
            log,
        })
    }

    pub(crate) fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub(crate) async fn wait_live(&mut self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait()? {
                bail!("sluice exited ({status}) before serving:\n{}", self.log_tail());
            }
            if let Ok((200, _)) = load::http_call(&self.target.http, "GET", "/v2/health/live", None).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("sluice did not come up in 60 s:\n{}", self.log_tail())
    }

    /// Loads a model through the repository API; `Err` carries the server's reason.
    pub(crate) async fn load_model(&self, model: &str) -> Result<(), String> {
        let path = format!("/v2/repository/models/{model}/load");
        match load::http_call(&self.target.http, "POST", &path, Some("{}".into())).await {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim())),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn symlink(src: &Path, dst: &Path) -> Result<()> {
    if !src.exists() {
        bail!("missing {}", src.display());
    }
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p)?;
    }
    std::os::unix::fs::symlink(src, dst).with_context(|| format!("symlink {}", dst.display()))
}

/// A Triton config without its `dynamic_batching { ... }` block, under another name.
fn without_dynamic_batching(config: &str, old_name: &str, new_name: &str) -> Result<String> {
    let mut s = config.replace(&format!("name: \"{old_name}\""), &format!("name: \"{new_name}\""));
    let start = s.find("dynamic_batching").ok_or_else(|| anyhow!("no dynamic_batching block"))?;
    let open = start + s[start..].find('{').ok_or_else(|| anyhow!("dynamic_batching without '{{'"))?;
    let mut depth = 0usize;
    let mut close = None;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.ok_or_else(|| anyhow!("unbalanced dynamic_batching block"))?;
    let end = s[close..].find('\n').map_or(s.len(), |n| close + n + 1);
    s.replace_range(start..end, "");
    Ok(s)
}

/// `max_queue_delay_microseconds` of a config's `dynamic_batching`, in words.
fn queue_delay(config: &str) -> String {
    let delay = config
        .split("max_queue_delay_microseconds")
        .nth(1)
        .and_then(|rest| rest.trim_start_matches([':', ' ']).split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if delay == 0 {
        "no delay".into()
    } else {
        format!("{delay} µs delay")
    }
}

/// Writes the model repository: spam models linked from `models`, add_sub from the examples.
fn write_repository(dir: &Path, models: &Path, args: &CompareArgs, threads: usize) -> Result<()> {
    let fixed = Batching::Fixed { delay_us: args.delay_us, max_batch: None };
    let adaptive = Batching::Adaptive { max_p99_ms: args.adaptive_p99_ms };
    let spam = [
        (ACCURATE, "spam-accurate", fixed.clone()),
        (
            ACCURATE_CAPPED,
            "spam-accurate",
            Batching::Fixed { delay_us: args.delay_us, max_batch: Some(args.capped_batch) },
        ),
        (ACCURATE_ADAPTIVE, "spam-accurate", adaptive.clone()),
        (ACCURATE_OFF, "spam-accurate", Batching::Off),
        (FAST, "spam-fast", fixed),
        (FAST_ADAPTIVE, "spam-fast", adaptive),
    ];
    for (name, src, batching) in spam {
        symlink(&models.join(src).join("model.onnx"), &dir.join(name).join("1/model.onnx"))?;
        fs::write(dir.join(name).join("config.pbtxt"), inprocess::spam_pbtxt(name, threads, &batching))?;
    }
    let examples = repo_root().join("examples/models/add_sub");
    let config = fs::read_to_string(examples.join("config.pbtxt"))?;
    for name in [ADD_SUB, ADD_SUB_OFF] {
        symlink(&examples.join("1/model.onnx"), &dir.join(name).join("1/model.onnx"))?;
    }
    fs::write(dir.join(ADD_SUB).join("config.pbtxt"), &config)?;
    fs::write(dir.join(ADD_SUB_OFF).join("config.pbtxt"), without_dynamic_batching(&config, ADD_SUB, ADD_SUB_OFF)?)?;
    Ok(())
}

pub(crate) fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} CPU(s), {cpu}", cpus())
}

/// Everything measured, per round.
#[derive(Default)]
struct Results {
    inprocess: Vec<Vec<BatchRun>>,
    served: BTreeMap<Cell, Vec<LoadResult>>,
    /// served throughput / the same round's in-process best.
    ratio: BTreeMap<Cell, Vec<f64>>,
    /// Open-loop cells: in-process batch-1 time (ms, p50) measured just before each run of the
    /// cell. Batch-1 time on these machines switches between modes from minute to minute, so
    /// the round's sweep may have caught another mode than the cell runs in.
    adjacent_batch1_ms: BTreeMap<Cell, Vec<f64>>,
    /// add_sub's `dynamic_batching` as the example config has it, in words.
    add_sub_batching: String,
}

impl Results {
    fn best(&self, round: usize) -> Option<&BatchRun> {
        inprocess::best(&self.inprocess[round])
    }
}

/// The Sluice binary to start: `--sluice-bin`, else the release build of this checkout.
pub fn sluice_bin(given: Option<&Path>) -> Result<PathBuf> {
    let bin = given.map(Path::to_path_buf).unwrap_or_else(|| repo_root().join("target/release/sluice"));
    if !bin.is_file() {
        bail!("{} not found: cargo build --release -p sluice (or --sluice-bin)", bin.display());
    }
    Ok(bin)
}

pub fn run(
    args: CompareArgs,
    models: &Path,
    ort_lib: Option<&Path>,
    limit: Option<usize>,
    client_threads: usize,
) -> Result<()> {
    let threads = args.threads.unwrap_or_else(cpus);
    let bin = sluice_bin(args.sluice_bin.as_deref())?;
    let started = Instant::now();
    eprintln!("tokenizing the emails...");
    let emails = data::emails(models, "spam-accurate", limit)?;
    let (mean_len, median_len, capped) = data::length_summary(&emails);
    eprintln!(
        "{} emails, tokens mean {mean_len:.1}, median {median_len}, {:.0}% at the 128 cap",
        emails.len(),
        capped * 100.0
    );
    let lib = inprocess::init_ort(ort_lib)?;
    let mut instance = inprocess::load(models, "spam-accurate", threads)?;

    let tmp = tempfile::Builder::new().prefix("spam-bench-").tempdir()?;
    let repo = tmp.path().join("models");
    write_repository(&repo, models, &args, threads)?;
    let rt = runtime(client_threads)?;
    let mut server = Server::start(&bin, &repo, &lib, threads, tmp.path().join("sluice.log"))?;
    // Models that did not load (only OPTIONAL ones may fail), with the server's reason.
    let mut unavailable: BTreeMap<&'static str, String> = BTreeMap::new();
    rt.block_on(async {
        server.wait_live().await?;
        for m in MODELS {
            if let Err(why) = server.load_model(m).await {
                if OPTIONAL.contains(&m) {
                    eprintln!("{m} did not load ({why}): its rows are reported as not available yet");
                    unavailable.insert(m, why);
                } else {
                    bail!("loading {m}: {why}\n{}", server.log_tail());
                }
            }
        }
        anyhow::Ok(())
    })?;
    let spam_transport = if args.grpc { Transport::Grpc } else { Transport::Http };
    let mut wl: BTreeMap<&'static str, Workload> = BTreeMap::new();
    for m in MODELS {
        let w = if m.starts_with(ADD_SUB) {
            Workload::add_sub(m, Transport::Http)?
        } else {
            Workload::spam(m, spam_transport, &emails)?
        };
        wl.insert(m, w);
    }

    let add_sub_config = fs::read_to_string(repo.join(ADD_SUB).join("config.pbtxt"))?;
    let mut res = Results { add_sub_batching: queue_delay(&add_sub_config), ..Default::default() };
    let target = server.target.clone();
    for round in 0..args.rounds {
        eprintln!("round {}/{}: in-process spam-accurate, {threads} thread(s)", round + 1, args.rounds);
        let runs = inprocess::sweep(instance.as_mut(), &emails, &args.batch_sizes, args.inprocess_seconds)?;
        for r in &runs {
            eprintln!(
                "  in-process batch {:>2}: {:.1} inferences/s, {:.2} ms per batch (p50)",
                r.batch_size, r.per_sec, r.batch_ms.p50
            );
        }
        res.inprocess.push(runs);
        let best = res.best(round).map_or(f64::NAN, |b| b.per_sec);
        // Served cells rotate by one place per round, so that none always runs first or last.
        let mut order: Vec<Cell> = CELLS
            .iter()
            .copied()
            .filter(|c| !unavailable.contains_key(c.model()))
            .filter(|c| args.cells.is_empty() || args.cells.iter().any(|k| k == c.key()))
            .collect();
        let n = order.len();
        order.rotate_left(round % n.max(1));
        for cell in order {
            if matches!(cell.load(), Load::Open(_)) {
                let b1 = inprocess::sweep(instance.as_mut(), &emails, &[1], args.inprocess_seconds)?;
                let ms = b1.first().map_or(f64::NAN, |b| b.batch_ms.p50);
                eprintln!("  in-process batch 1 just before {}: {ms:.2} ms (p50)", cell.key());
                res.adjacent_batch1_ms.entry(cell).or_default().push(ms);
            }
            let r = rt.block_on(run_cell(cell, &args, &target, &wl, best))?;
            r.print(&format!("  {}", cell.key()));
            if cell.is_spam_accurate() {
                res.ratio.entry(cell).or_default().push(r.per_sec / best);
            }
            res.served.entry(cell).or_default().push(r);
        }
    }
    drop(server);

    let adaptive_config = fs::read_to_string(repo.join(ACCURATE_ADAPTIVE).join("config.pbtxt")).unwrap_or_default();
    let table = render(&res, &args, threads, &unavailable, spam_transport);
    let command: Vec<String> = std::env::args().collect();
    println!();
    println!("{table}");
    let json = to_json(&res, &args, threads, &unavailable, &command, mean_len, median_len, capped, &adaptive_config);
    crate::write_results(args.json.as_deref(), "spam-bench.json", &json, started)?;
    if args.keep_repo {
        let kept = tmp.keep();
        eprintln!("kept the model repository and server log in {}", kept.display());
    }
    Ok(())
}

async fn run_cell(
    cell: Cell,
    args: &CompareArgs,
    target: &Target,
    wl: &BTreeMap<&'static str, Workload>,
    best: f64,
) -> Result<LoadResult> {
    let secs = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_secs_f64(args.warmup);
    let w = wl.get(cell.model()).ok_or_else(|| anyhow!("no workload for {}", cell.model()))?;
    match cell.load() {
        Load::Closed(c) => load::run_phases(target, w, &[Phase { concurrency: c, duration: secs }], warmup).await,
        Load::Open(arrivals) => load::run_open(target, w, best * args.half_load, arrivals, secs, warmup, 64).await,
        Load::Burst => {
            let p = Duration::from_secs_f64(args.burst_phase_secs);
            let phases: Vec<Phase> = (0..args.burst_cycles)
                .flat_map(|_| {
                    [
                        Phase { concurrency: args.burst_high, duration: p },
                        Phase { concurrency: args.burst_low, duration: p },
                    ]
                })
                .collect();
            load::run_phases(target, w, &phases, warmup).await
        }
    }
}

pub(crate) fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

/// Microseconds: one decimal below 100, none above.
fn queue_us(x: f64) -> String {
    f(x, if x < 100.0 { 1 } else { 0 })
}

pub(crate) fn med_of(rs: &[LoadResult], g: impl Fn(&LoadResult) -> f64) -> f64 {
    median(&rs.iter().map(g).collect::<Vec<_>>())
}

fn label(cell: Cell, args: &CompareArgs, transport: Transport, add_sub: &str) -> (String, String) {
    let t = transport.name();
    let fixed = format!("batching on ({} µs delay)", args.delay_us);
    let adaptive = format!("adaptive batching (p99 ≤ {} ms)", args.adaptive_p99_ms);
    let half = |how: &str, batching: &str| {
        (
            format!(
                "served spam-accurate, {batching}, {t}, {how} arrivals at {:.0}% of in-process best",
                args.half_load * 100.0
            ),
            "open loop".to_string(),
        )
    };
    let clients = match cell.load() {
        Load::Closed(c) => c.to_string(),
        Load::Open(_) => "open loop".into(),
        Load::Burst => format!("{}↔{}", args.burst_high, args.burst_low),
    };
    let what = match cell {
        Cell::Spam1 | Cell::Spam8 | Cell::Spam32 => format!("served spam-accurate, {fixed}, {t}"),
        Cell::SpamCapped32 => {
            format!("served spam-accurate, {fixed}, max_batch_size {}, {t}", args.capped_batch)
        }
        Cell::SpamAdaptive32 => format!("served spam-accurate, {adaptive}, {t}"),
        Cell::SpamOff32 => format!("served spam-accurate, batching off, {t}"),
        Cell::HalfPoisson => return half("Poisson", &fixed),
        Cell::HalfUniform => return half("evenly spaced", &fixed),
        Cell::AdaptiveHalfPoisson => return half("Poisson", &adaptive),
        Cell::AdaptiveHalfUniform => return half("evenly spaced", &adaptive),
        Cell::AddSubOn32 | Cell::AddSubOn1 => format!("add_sub, batching on (example config: {add_sub}), HTTP binary"),
        Cell::AddSubOff32 | Cell::AddSubOff1 => "add_sub, batching off, HTTP binary".into(),
        Cell::BurstFixed => format!("spam-fast bursty, fixed delay ({} µs), {t}", args.delay_us),
        Cell::BurstAdaptive => format!("spam-fast bursty, {adaptive}, {t}"),
    };
    (what, clients)
}

fn render(
    res: &Results,
    args: &CompareArgs,
    threads: usize,
    unavailable: &BTreeMap<&'static str, String>,
    transport: Transport,
) -> String {
    let mut t = String::new();
    let rounds = res.inprocess.len();
    t.push_str(&format!(
        "Machine: {}. ONNX Runtime intra-op threads: {threads}. {rounds} interleaved round(s), {} s per served cell; \
         medians over rounds (ratios: median of per-round ratios).\n\n",
        machine(),
        args.seconds
    ));
    t.push_str(
        "| what | clients | inferences/s | vs in-process best | p50 ms | p99 ms | avg batch | ORT ms per execution | \
         server queue µs/req | queue µs p50 / p99 (header) | errors |\n",
    );
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    // In-process rows: the best batch size of each round, and batch 1 (the compute time).
    let bests: Vec<&BatchRun> = (0..rounds).filter_map(|r| res.best(r)).collect();
    let best_rate = median(&bests.iter().map(|b| b.per_sec).collect::<Vec<_>>());
    let sizes: Vec<String> = bests.iter().map(|b| b.batch_size.to_string()).collect();
    t.push_str(&format!(
        "| in-process spam-accurate, best batch size of {} (per round: {}) | – | {} | 1.00 | {} | {} | {} | {} | – | – | – |\n",
        args.batch_sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        sizes.join(", "),
        f(best_rate, 1),
        f(median(&bests.iter().map(|b| b.batch_ms.p50).collect::<Vec<_>>()), 2),
        f(median(&bests.iter().map(|b| b.batch_ms.p99).collect::<Vec<_>>()), 2),
        f(median(&bests.iter().map(|b| b.batch_size as f64).collect::<Vec<_>>()), 0),
        f(median(&bests.iter().map(|b| b.batch_ms.mean).collect::<Vec<_>>()), 2),
    ));
    for &size in &args.batch_sizes {
        let runs: Vec<&BatchRun> =
            res.inprocess.iter().filter_map(|r| r.iter().find(|b| b.batch_size == size)).collect();
        let what = if size == 1 { " (the batch-1 compute time)" } else { "" };
        t.push_str(&format!(
            "| in-process spam-accurate, batch {size}{what} | – | {} | {} | {} | {} | {size} | {} | – | – | – |\n",
            f(median(&runs.iter().map(|b| b.per_sec).collect::<Vec<_>>()), 1),
            f(median(&per_round_ratio(res, |r| r.iter().find(|b| b.batch_size == size).map(|b| b.per_sec))), 2),
            f(median(&runs.iter().map(|b| b.batch_ms.p50).collect::<Vec<_>>()), 2),
            f(median(&runs.iter().map(|b| b.batch_ms.p99).collect::<Vec<_>>()), 2),
            f(median(&runs.iter().map(|b| b.batch_ms.mean).collect::<Vec<_>>()), 2),
        ));
    }
    for cell in CELLS {
        let (what, clients) = label(cell, args, transport, &res.add_sub_batching);
        if let Some(why) = unavailable.get(cell.model()) {
            let why: String = why.chars().take(160).collect();
            t.push_str(&format!(
                "| {what} | {clients} | not available yet ({}) | | | | | | | | |\n",
                why.replace('|', "/")
            ));
            continue;
        }
        let Some(rs) = res.served.get(&cell) else { continue };
        let ratio = res.ratio.get(&cell).map_or(f64::NAN, |v| median(v));
        let header = med_of(rs, |r| r.queue_us.p50);
        let header = if header.is_finite() {
            format!("{} / {}", queue_us(header), queue_us(med_of(rs, |r| r.queue_us.p99)))
        } else {
            "–".into()
        };
        let rate = if matches!(cell.load(), Load::Open(_)) {
            format!(
                "{} (offered {})",
                f(med_of(rs, |r| r.per_sec), 1),
                f(med_of(rs, |r| r.offered_per_sec.unwrap_or(f64::NAN)), 1)
            )
        } else {
            f(med_of(rs, |r| r.per_sec), 1)
        };
        t.push_str(&format!(
            "| {what} | {clients} | {rate} | {} | {} | {} | {} | {} | {} | {header} | {} |\n",
            f(ratio, 2),
            f(med_of(rs, |r| r.latency_ms.p50), 2),
            f(med_of(rs, |r| r.latency_ms.p99), 2),
            f(med_of(rs, |r| r.server.avg_batch), 2),
            f(med_of(rs, |r| r.server.infer_ms_per_execution), 2),
            queue_us(med_of(rs, |r| r.server.queue_us_per_request)),
            rs.iter().map(LoadResult::error_count).sum::<u64>(),
        ));
    }
    t.push('\n');
    t.push_str(&targets(res, unavailable));
    t
}

fn batch1(res: &Results) -> Vec<&BatchRun> {
    res.inprocess.iter().filter_map(|r| r.iter().find(|b| b.batch_size == 1)).collect()
}

fn per_round_ratio(res: &Results, g: impl Fn(&[BatchRun]) -> Option<f64>) -> Vec<f64> {
    (0..res.inprocess.len()).filter_map(|r| Some(g(&res.inprocess[r])? / res.best(r)?.per_sec)).collect()
}

/// Per-round ratio of two served cells' throughput.
fn served_ratio(res: &Results, a: Cell, b: Cell) -> f64 {
    match (res.served.get(&a), res.served.get(&b)) {
        (Some(x), Some(y)) => median(&x.iter().zip(y).map(|(x, y)| x.per_sec / y.per_sec).collect::<Vec<_>>()),
        _ => f64::NAN,
    }
}

/// Median over rounds of the p99 time in system that an M/D/1 queue would have at the cell's
/// offered rate with the round's in-process batch-1 compute time: what Poisson arrivals cost a
/// one-instance server that gains nothing from batching, with no scheduler delay at all.
fn md1_floor(res: &Results, cell: Cell) -> f64 {
    let Some(runs) = res.served.get(&cell) else { return f64::NAN };
    let floors: Vec<f64> = runs
        .iter()
        .zip(batch1(res))
        .filter_map(|(r, b)| Some(md1_time_in_system(r.offered_per_sec?, b.batch_ms.p50 / 1e3, 0.99) * 1e3))
        .collect();
    median(&floors)
}

fn targets(res: &Results, unavailable: &BTreeMap<&'static str, String>) -> String {
    let mut t = String::from("Against issue 3's targets (reported, not asserted):\n\n");
    let med = |c: Cell, g: fn(&LoadResult) -> f64| res.served.get(&c).map_or(f64::NAN, |rs| med_of(rs, g));
    let missing = |c: Cell| unavailable.contains_key(c.model());
    for (cell, name) in [
        (Cell::Spam32, "fixed delay"),
        (Cell::SpamCapped32, "fixed delay, smaller max_batch_size"),
        (Cell::SpamAdaptive32, "adaptive"),
    ] {
        if missing(cell) {
            continue;
        }
        let r = res.ratio.get(&cell).map_or(f64::NAN, |v| median(v));
        t.push_str(&format!(
            "- served throughput at concurrency 32 ({name}) / in-process best: {} (target ≥ 0.90){}\n",
            f(r, 2),
            verdict(r >= 0.9, r)
        ));
    }
    let compute = median(&batch1(res).iter().map(|b| b.batch_ms.p50).collect::<Vec<_>>());
    // The engine's own tail with no server in the way: what no scheduler can go below.
    let engine_p99 = median(&batch1(res).iter().map(|b| b.batch_ms.p99).collect::<Vec<_>>());
    for (cell, name) in [
        (Cell::HalfPoisson, "fixed delay, Poisson arrivals"),
        (Cell::HalfUniform, "fixed delay, evenly spaced arrivals"),
        (Cell::AdaptiveHalfPoisson, "adaptive, Poisson arrivals"),
        (Cell::AdaptiveHalfUniform, "adaptive, evenly spaced arrivals"),
    ] {
        if missing(cell) {
            continue;
        }
        let p99 = med(cell, |r| r.latency_ms.p99);
        let floor = match cell {
            Cell::HalfPoisson | Cell::AdaptiveHalfPoisson => {
                format!("; M/D/1 floor for Poisson arrivals at batch-1 compute time: {} ms", f(md1_floor(res, cell), 2))
            }
            _ => String::new(),
        };
        // Like the throughput ratios, the verdict is on the median of per-round ratios, each
        // against the batch-1 time measured just before that run of the cell: the batch-1
        // compute time of these machines moves between rounds and within them.
        let ratios: Vec<f64> = match (res.served.get(&cell), res.adjacent_batch1_ms.get(&cell)) {
            (Some(runs), Some(b1)) => runs.iter().zip(b1).map(|(r, b)| r.latency_ms.p99 / (2.0 * b)).collect(),
            _ => Vec::new(),
        };
        let ratio = median(&ratios);
        let adjacent = res.adjacent_batch1_ms.get(&cell).map_or(f64::NAN, |v| median(v));
        t.push_str(&format!(
            "- p99 at half the in-process best load ({name}): {} ms; 2 × batch-1 compute time (p50 {} ms, p99 {} ms \
             in-process) = {} ms; per round p99 / (2 × batch-1 p50 measured just before the cell, median {} ms) {} \
             (≤ 1 in {} of {} rounds){}{floor}\n",
            f(p99, 2),
            f(compute, 2),
            f(engine_p99, 2),
            f(2.0 * compute, 2),
            f(adjacent, 2),
            f(ratio, 2),
            ratios.iter().filter(|&&r| r <= 1.0).count(),
            ratios.len(),
            verdict(ratio <= 1.0, ratio)
        ));
    }
    for (cell, name) in [(Cell::AddSubOn1, "batching on"), (Cell::AddSubOff1, "batching off")] {
        let q = med(cell, |r| r.queue_us.p50);
        t.push_str(&format!(
            "- add_sub ({name}) at concurrency 1, server-side queue time p50: {} µs (target < 50 µs){}\n",
            queue_us(q),
            verdict(q < 50.0, q)
        ));
    }
    t.push_str(&format!(
        "- batching on / off at concurrency 32: spam-accurate {}×, add_sub {}×\n",
        f(served_ratio(res, Cell::Spam32, Cell::SpamOff32), 2),
        f(served_ratio(res, Cell::AddSubOn32, Cell::AddSubOff32), 2)
    ));
    if missing(Cell::BurstAdaptive) {
        t.push_str("- adaptive versus fixed delay on the bursty load: not available yet (config rejected)\n");
    } else {
        t.push_str(&format!(
            "- adaptive / fixed on the bursty load: throughput {}×, p99 {} ms vs {} ms\n",
            f(served_ratio(res, Cell::BurstAdaptive, Cell::BurstFixed), 2),
            f(med(Cell::BurstAdaptive, |r| r.latency_ms.p99), 2),
            f(med(Cell::BurstFixed, |r| r.latency_ms.p99), 2)
        ));
    }
    t
}

fn verdict(ok: bool, x: f64) -> &'static str {
    if !x.is_finite() {
        ""
    } else if ok {
        ": met"
    } else {
        ": not met"
    }
}

#[allow(clippy::too_many_arguments)]
fn to_json(
    res: &Results,
    args: &CompareArgs,
    threads: usize,
    unavailable: &BTreeMap<&'static str, String>,
    command: &[String],
    mean_len: f64,
    median_len: usize,
    capped: f64,
    adaptive_config: &str,
) -> Value {
    let rounds: Vec<Value> = (0..res.inprocess.len())
        .map(|r| {
            let mut served = serde_json::Map::new();
            for (cell, rs) in &res.served {
                if let Some(x) = rs.get(r) {
                    served.insert(cell.key().into(), x.to_json());
                }
            }
            json!({
                "inprocess": res.inprocess[r].iter().map(|b| json!({
                    "batch_size": b.batch_size, "per_sec": num(b.per_sec), "inferences": b.inferences,
                    "seconds": b.seconds, "batch_ms": b.batch_ms.to_json(),
                })).collect::<Vec<_>>(),
                "served": served,
            })
        })
        .collect();
    let mut medians = serde_json::Map::new();
    for (cell, rs) in &res.served {
        medians.insert(
            cell.key().into(),
            json!({
                "model": cell.model(),
                "per_sec": num(med_of(rs, |r| r.per_sec)),
                "vs_inprocess_best": res.ratio.get(cell).map(|v| num(median(v))),
                "p50_ms": num(med_of(rs, |r| r.latency_ms.p50)),
                "p99_ms": num(med_of(rs, |r| r.latency_ms.p99)),
                "avg_batch": num(med_of(rs, |r| r.server.avg_batch)),
                "server_queue_us_per_request": num(med_of(rs, |r| r.server.queue_us_per_request)),
                "server_infer_ms_per_execution": num(med_of(rs, |r| r.server.infer_ms_per_execution)),
                "header_queue_us_p50": num(med_of(rs, |r| r.queue_us.p50)),
                "header_queue_us_p99": num(med_of(rs, |r| r.queue_us.p99)),
                "adjacent_batch1_ms_p50": res.adjacent_batch1_ms.get(cell).map(|v| v.iter().map(|&x| num(x)).collect::<Vec<_>>()),
                "errors": rs.iter().map(LoadResult::error_count).sum::<u64>(),
            }),
        );
    }
    let bests: Vec<f64> = (0..res.inprocess.len()).filter_map(|r| res.best(r).map(|b| b.per_sec)).collect();
    json!({
        "command": command.join(" "),
        "machine": machine(),
        "threads": threads,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "delay_us": args.delay_us,
        "adaptive_p99_ms": args.adaptive_p99_ms,
        "emails": {"mean_tokens": mean_len, "median_tokens": median_len, "share_at_cap": capped},
        "inprocess_best_per_sec": num(median(&bests)),
        "batch1_compute_ms_p50": num(median(&batch1(res).iter().map(|b| b.batch_ms.p50).collect::<Vec<_>>())),
        "medians": medians,
        "unavailable": unavailable.iter().map(|(m, why)| (m.to_string(), json!(why))).collect::<serde_json::Map<_, _>>(),
        "capped_batch": args.capped_batch,
        "adaptive_config": adaptive_config,
        "per_round": rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_dynamic_batching() {
        let c = "name: \"add_sub\"\nmax_batch_size: 8\ndynamic_batching {\n  max_queue_delay_microseconds: 100\n  \
                 default_queue_policy { max_queue_size: 4 }\n}\ninstance_group [ { count: 1 } ]\n";
        let s = without_dynamic_batching(c, "add_sub", "add_sub-nobatch").unwrap();
        assert_eq!(s, "name: \"add_sub-nobatch\"\nmax_batch_size: 8\ninstance_group [ { count: 1 } ]\n");
        assert_eq!(queue_delay(c), "100 µs delay");
        let c = "name: \"add_sub\"\ndynamic_batching { }\ninstance_group [ { count: 1 } ]\n";
        assert_eq!(queue_delay(c), "no delay");
        let s = without_dynamic_batching(c, "add_sub", "add_sub-nobatch").unwrap();
        assert_eq!(s, "name: \"add_sub-nobatch\"\ninstance_group [ { count: 1 } ]\n");
    }
}
