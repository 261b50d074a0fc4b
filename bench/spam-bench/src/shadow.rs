//! `shadow-cost`: what a shadow costs the live path (issue 16). Starts `sluice serve` on a
//! repository holding `spam-text` and `spam-text-accurate` and a shadow endpoint whose primary is
//! spam-text and whose shadow is spam-text-accurate at `--share` (1.0: every request copied),
//! then measures, in interleaved rounds, the primary's latency and throughput as the caller sees
//! them, spam-text directly against the same model through the shadow endpoint:
//!
//! * full load: `--concurrency` closed-loop clients;
//! * half load: open loop, evenly spaced arrivals at `--half-load` times the round's own
//!   full-load throughput of spam-text directly (latency from each request's scheduled start).
//!
//! After every shadow cell it waits until the shadow's queue has drained (every copy completed or
//! dropped), so that no cell shares the machine with the previous one's backlog, and records the
//! endpoint's copy counters (`GET /v2/endpoints/{name}`: requests, dropped, completed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::compare::{f, machine, med_of};
use crate::endpoints::{endpoint_report, loadavg, shadow_counters, shadow_drained, Served, ACCURATE, FAST, TEXT_INPUT};
use crate::load::{self, Arrivals, LoadResult, Phase, Transport, Workload};
use crate::stats::{median, num};
use crate::{cpus, data, runtime, write_results};

/// The shadow endpoint's name in the temporary repository.
const SHADOW: &str = "spam-shadow";

#[derive(clap::Args)]
pub struct ShadowCostArgs {
    /// The Sluice binary (default: <repo root>/target/release/sluice).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// ONNX Runtime intra-op threads of the server (`--onnx-intra-op-threads`); default: CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Closed-loop clients of the full-load cells.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured seconds of each cell.
    #[arg(long, default_value_t = 6.0)]
    seconds: f64,
    /// Unmeasured seconds before each cell.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Interleaved rounds (the table shows medians over rounds).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Half load: this fraction of the round's full-load throughput of spam-text directly.
    #[arg(long, default_value_t = 0.5)]
    half_load: f64,
    /// The shadow's share of requests copied.
    #[arg(long, default_value_t = 1.0)]
    share: f64,
    /// Connections of the open-loop client.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// The target: the primary's p99 at half load through the shadow endpoint at most this much
    /// above spam-text's directly (0.10 = within 10 %).
    #[arg(long, default_value_t = 0.10)]
    p99_margin: f64,
    /// Send over gRPC instead of HTTP binary.
    #[arg(long)]
    grpc: bool,
    /// The candidate's `optimization { priority }`: `min` (PRIORITY_MIN, its threads at the
    /// lowest CPU priority, as the README advises for a shadow candidate) or `default`.
    #[arg(long, default_value = "min", value_parser = ["min", "default"])]
    candidate_priority: String,
    /// ONNX Runtime intra-op threads of the candidate alone (`intra_op_thread_count`); default:
    /// the server's.
    #[arg(long)]
    candidate_threads: Option<usize>,
    /// Where to write the JSON results (default: <repo root>/bench/results/shadow-cost.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary model repository and the server log.
    #[arg(long)]
    keep_repo: bool,
}

/// What the candidate's config gets beside the repository's: its priority and thread count.
fn candidate_config(args: &ShadowCostArgs) -> Vec<(&'static str, String)> {
    let mut extra = Vec::new();
    if args.candidate_priority == "min" {
        extra.push((ACCURATE, "optimization { priority: PRIORITY_MIN }".to_string()));
    }
    if let Some(n) = args.candidate_threads {
        extra.push((
            ACCURATE,
            format!("parameters {{ key: \"intra_op_thread_count\" value {{ string_value: \"{n}\" }} }}"),
        ));
    }
    extra
}

fn shadow_yaml(share: f64) -> String {
    format!(
        "# Written by spam-bench shadow-cost.\nkind: shadow\nprimary: {{ model: {FAST} }}\nshadows:\n  - {{ model: \
         {ACCURATE}, share: {share:?} }}\ncompare: {{ output: label }}\n"
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path2 {
    Direct,
    Shadow,
}

impl Path2 {
    fn key(self) -> &'static str {
        match self {
            Path2::Direct => "direct",
            Path2::Shadow => "shadow",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Full,
    Half,
}

impl Level {
    fn key(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Half => "half",
        }
    }
}

/// One cell of one round.
struct CellRun {
    result: LoadResult,
    /// Shadow cells: the copy counters over the cell (warmup included) and the drain time after.
    copies: Option<(u64, u64, u64)>,
    drain_s: f64,
    loadavg: String,
}

impl CellRun {
    fn to_json(&self) -> Value {
        let mut v = self.result.to_json();
        if let Some((requests, dropped, completed)) = self.copies {
            v["shadow_copies"] = json!({"requests": requests, "dropped": dropped, "completed": completed});
            v["shadow_drain_s"] = num(self.drain_s);
        }
        v["loadavg_before"] = json!(self.loadavg);
        v
    }
}

#[derive(Default)]
struct Results {
    /// Per round: [full direct, full shadow, half direct, half shadow].
    rounds: Vec<[Option<CellRun>; 4]>,
    /// Per round: the half-load rate.
    rates: Vec<f64>,
}

fn slot(level: Level, path: Path2) -> usize {
    (match level {
        Level::Full => 0,
        Level::Half => 2,
    }) + usize::from(path == Path2::Shadow)
}

impl Results {
    fn runs(&self, level: Level, path: Path2) -> Vec<&CellRun> {
        self.rounds.iter().filter_map(|r| r[slot(level, path)].as_ref()).collect()
    }

    fn results(&self, level: Level, path: Path2) -> Vec<LoadResult> {
        self.runs(level, path).into_iter().map(|c| c.result.clone()).collect()
    }

    /// Per round: shadow / direct of `g`.
    fn ratios(&self, level: Level, g: impl Fn(&LoadResult) -> f64) -> Vec<f64> {
        self.rounds
            .iter()
            .filter_map(|r| match (&r[slot(level, Path2::Direct)], &r[slot(level, Path2::Shadow)]) {
                (Some(d), Some(s)) => Some(g(&s.result) / g(&d.result)),
                _ => None,
            })
            .collect()
    }
}

fn range(v: &[f64], digits: usize) -> String {
    let lo = v.iter().copied().filter(|x| x.is_finite()).fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().filter(|x| x.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    if v.len() <= 1 || !lo.is_finite() {
        return f(median(v), digits);
    }
    format!("{} ({}–{})", f(median(v), digits), f(lo, digits), f(hi, digits))
}

pub fn run(
    args: ShadowCostArgs,
    models: &Path,
    ort_lib: Option<&Path>,
    limit: Option<usize>,
    client_threads: usize,
) -> Result<()> {
    if args.concurrency == 0 || args.rounds == 0 {
        bail!("--concurrency and --rounds must be at least 1");
    }
    if !(args.share > 0.0 && args.share <= 1.0) {
        bail!("--share must be in (0, 1]");
    }
    let started = Instant::now();
    let threads = args.threads.unwrap_or_else(cpus);
    let texts = data::texts(models, limit)?;
    let rt = runtime(client_threads)?;
    let yaml = shadow_yaml(args.share);
    let served = Served::start(
        args.sluice_bin.as_deref(),
        models,
        ort_lib,
        threads,
        &rt,
        &[FAST, ACCURATE],
        &[(SHADOW.to_string(), yaml.clone())],
        &candidate_config(&args),
    )?;
    let target = served.server.target.clone();
    let transport = if args.grpc { Transport::Grpc } else { Transport::Http };
    let direct = Workload::text(FAST, transport, TEXT_INPUT, &texts)?;
    let shadow = Workload::text(SHADOW, transport, TEXT_INPUT, &texts)?;
    let secs = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_secs_f64(args.warmup);
    let drain_limit = Duration::from_secs(120);

    let mut res = Results::default();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        let mut cells: [Option<CellRun>; 4] = Default::default();
        for level in [Level::Full, Level::Half] {
            let mut order = [Path2::Direct, Path2::Shadow];
            if (round + usize::from(level == Level::Half)) % 2 == 1 {
                order.reverse();
            }
            let rate = match level {
                Level::Full => f64::NAN,
                Level::Half => {
                    let full = cells[slot(Level::Full, Path2::Direct)].as_ref().map_or(f64::NAN, |c| c.result.per_sec);
                    args.half_load * full
                }
            };
            if level == Level::Half {
                res.rates.push(rate);
            }
            for path in order {
                let wl = match path {
                    Path2::Direct => &direct,
                    Path2::Shadow => &shadow,
                };
                let load = loadavg();
                let run = rt.block_on(async {
                    let before = match path {
                        Path2::Shadow => Some(shadow_counters(&endpoint_report(&target.http, SHADOW).await?)),
                        Path2::Direct => None,
                    };
                    let result = match level {
                        Level::Full => {
                            let phases = [Phase { concurrency: args.concurrency, duration: secs }];
                            load::run_phases(&target, wl, &phases, warmup).await?
                        }
                        Level::Half => {
                            load::run_open(&target, wl, rate, Arrivals::Uniform, secs, warmup, args.pool).await?
                        }
                    };
                    let (copies, drain_s) = match before {
                        Some(b) => {
                            let drain_s = shadow_drained(&target.http, SHADOW, drain_limit).await?;
                            let a = shadow_counters(&endpoint_report(&target.http, SHADOW).await?);
                            (Some((a.0 - b.0, a.1 - b.1, a.2 - b.2)), drain_s)
                        }
                        None => (None, 0.0),
                    };
                    Ok::<_, anyhow::Error>(CellRun { result, copies, drain_s, loadavg: load })
                })?;
                let label = match level {
                    Level::Full => format!("  {} c{}", path.key(), args.concurrency),
                    Level::Half => format!("  {} half load {rate:.1}/s", path.key()),
                };
                run.result.print(&label);
                if let Some((r, d, c)) = run.copies {
                    eprintln!("    shadow copies {r}, dropped {d}, completed {c}; drained in {:.2} s", run.drain_s);
                }
                cells[slot(level, path)] = Some(run);
            }
        }
        res.rounds.push(cells);
    }
    let final_report = rt.block_on(endpoint_report(&target.http, SHADOW)).unwrap_or(Value::Null);
    if args.keep_repo {
        served.keep();
    } else {
        drop(served);
    }

    let p99_ratios = res.ratios(Level::Half, |r| r.latency_ms.p99);
    let within = p99_ratios.iter().filter(|&&x| x <= 1.0 + args.p99_margin).count();
    let median_ratio = median(&p99_ratios);
    // "Not met" when most rounds miss; "at the edge" when neither most meet nor most miss.
    let misses = p99_ratios.len() - within;
    let verdict = if median_ratio <= 1.0 + args.p99_margin && within * 2 > p99_ratios.len() {
        "met"
    } else if misses * 2 > p99_ratios.len() {
        "not met"
    } else {
        "at the edge"
    };
    let table = render(&res, &args, threads, transport, median_ratio, within, verdict);
    println!();
    println!("{table}");

    let command: Vec<String> = std::env::args().collect();
    let level_json = |level: Level| {
        let side = |path: Path2| {
            let rs = res.results(level, path);
            let runs = res.runs(level, path);
            let copies = |k: usize| -> u64 { runs.iter().filter_map(|c| c.copies).map(|c| [c.0, c.1, c.2][k]).sum() };
            let mut v = json!({
                "per_sec": num(med_of(&rs, |r| r.per_sec)),
                "p50_ms": num(med_of(&rs, |r| r.latency_ms.p50)),
                "p99_ms": num(med_of(&rs, |r| r.latency_ms.p99)),
                "avg_batch": num(med_of(&rs, |r| r.server.avg_batch)),
                "errors": rs.iter().map(LoadResult::error_count).sum::<u64>(),
            });
            if path == Path2::Shadow {
                v["shadow_copies_all_rounds"] =
                    json!({"requests": copies(0), "dropped": copies(1), "completed": copies(2)});
            }
            v
        };
        json!({
            "direct": side(Path2::Direct),
            "shadow": side(Path2::Shadow),
            "per_round_per_sec_ratio": res.ratios(level, |r| r.per_sec).into_iter().map(num).collect::<Vec<_>>(),
            "per_round_p50_ratio": res.ratios(level, |r| r.latency_ms.p50).into_iter().map(num).collect::<Vec<_>>(),
            "per_round_p99_ratio": res.ratios(level, |r| r.latency_ms.p99).into_iter().map(num).collect::<Vec<_>>(),
        })
    };
    let json = json!({
        "command": command.join(" "),
        "machine": machine(),
        "threads": threads,
        "transport": transport.name(),
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "half_load": args.half_load,
        "half_load_rates": res.rates.iter().map(|&r| num(r)).collect::<Vec<_>>(),
        "endpoint_yaml": yaml,
        "candidate_priority": args.candidate_priority,
        "candidate_threads": args.candidate_threads,
        "emails": texts.len(),
        "full": level_json(Level::Full),
        "half": level_json(Level::Half),
        "target": {
            "what": format!("primary p99 at half load through the shadow endpoint within {:.0} % of spam-text directly", args.p99_margin * 100.0),
            "median_p99_ratio": num(median_ratio),
            "rounds_within": within,
            "rounds": p99_ratios.len(),
            "verdict": verdict,
        },
        "final_endpoint_report": final_report,
        "per_round": res.rounds.iter().enumerate().map(|(i, cells)| {
            let mut m = serde_json::Map::new();
            for level in [Level::Full, Level::Half] {
                for path in [Path2::Direct, Path2::Shadow] {
                    if let Some(c) = &cells[slot(level, path)] {
                        m.insert(format!("{}_{}", level.key(), path.key()), c.to_json());
                    }
                }
            }
            m.insert("half_load_rate".into(), num(res.rates.get(i).copied().unwrap_or(f64::NAN)));
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "table": table,
    });
    write_results(args.json.as_deref(), "shadow-cost.json", &json, started)
}

fn render(
    res: &Results,
    args: &ShadowCostArgs,
    threads: usize,
    transport: Transport,
    median_ratio: f64,
    within: usize,
    verdict: &str,
) -> String {
    let mut t = format!(
        "Machine: {}. ONNX Runtime intra-op threads {threads}; {}; {} interleaved round(s) of {} s per cell. Shadow: \
         {ACCURATE} at share {}, priority {}, threads {}. Medians over rounds; ratios: median of per-round shadow / direct \
         (min–max).\n\n",
        machine(),
        transport.name(),
        args.rounds,
        args.seconds,
        args.share,
        args.candidate_priority,
        args.candidate_threads.map_or("the server's".to_string(), |n| n.to_string()),
    );
    t.push_str(
        "| load | direct req/s | via shadow req/s | req/s ratio | direct p50 ms | via shadow p50 ms | direct p99 ms | \
         via shadow p99 ms | p99 ratio | shadow copies / dropped | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for level in [Level::Full, Level::Half] {
        let d = res.results(level, Path2::Direct);
        let s = res.results(level, Path2::Shadow);
        let copies: (u64, u64) = res
            .runs(level, Path2::Shadow)
            .iter()
            .filter_map(|c| c.copies)
            .fold((0, 0), |acc, c| (acc.0 + c.0, acc.1 + c.1));
        let what = match level {
            Level::Full => format!("full: {} clients, closed loop", args.concurrency),
            Level::Half => {
                format!("half: {} /s evenly spaced (× {} of direct full)", f(median(&res.rates), 1), args.half_load)
            }
        };
        let errors = d.iter().chain(&s).map(LoadResult::error_count).sum::<u64>();
        t.push_str(&format!(
            "| {what} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} ({}) | {errors} |\n",
            f(med_of(&d, |r| r.per_sec), 1),
            f(med_of(&s, |r| r.per_sec), 1),
            range(&res.ratios(level, |r| r.per_sec), 2),
            f(med_of(&d, |r| r.latency_ms.p50), 2),
            f(med_of(&s, |r| r.latency_ms.p50), 2),
            f(med_of(&d, |r| r.latency_ms.p99), 2),
            f(med_of(&s, |r| r.latency_ms.p99), 2),
            range(&res.ratios(level, |r| r.latency_ms.p99), 2),
            copies.0,
            copies.1,
            if copies.0 > 0 { format!("{:.1} %", copies.1 as f64 * 100.0 / copies.0 as f64) } else { "–".into() },
        ));
    }
    t.push_str(&format!(
        "\nTarget: the primary's p99 at half load within {:.0} % through the shadow: per-round ratio median {} ({within} \
         of {} rounds within) — {verdict}.\n",
        args.p99_margin * 100.0,
        f(median_ratio, 2),
        res.rounds.len(),
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml() {
        let y = shadow_yaml(1.0);
        assert!(y.contains("primary: { model: spam-text }\n"), "{y}");
        assert!(y.contains("  - { model: spam-text-accurate, share: 1.0 }\n"), "{y}");
        assert!(y.ends_with("compare: { output: label }\n"), "{y}");
        assert!(shadow_yaml(0.25).contains("share: 0.25 }"));
    }

    #[test]
    fn slots_are_distinct() {
        let all = [
            slot(Level::Full, Path2::Direct),
            slot(Level::Full, Path2::Shadow),
            slot(Level::Half, Path2::Direct),
            slot(Level::Half, Path2::Shadow),
        ];
        assert_eq!(all, [0, 1, 2, 3]);
    }
}
