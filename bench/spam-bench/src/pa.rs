//! `pa-half-load`: issue 3's half-load p99 measured by Triton's own load generator,
//! `perf_analyzer --request-rate-range`, so that the figure does not rest on this crate's load
//! generator alone. Each round measures the in-process best rate (the rate is half of it) and,
//! just before each cell, the in-process batch-1 time the cell is judged against; perf_analyzer
//! then sends the real emails as token ids at that rate, evenly spaced (its default) or Poisson.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use serde_json::{json, Value};

use crate::compare::{f, machine, sluice_bin, symlink, Server};
use crate::inprocess::{self, Batching};
use crate::stats::{md1_time_in_system, median, num};
use crate::{cpus, data, runtime, write_results};

const FIXED: &str = "spam-accurate";
const ADAPTIVE: &str = "spam-accurate-adaptive";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Distribution {
    Constant,
    Poisson,
}

impl Distribution {
    fn name(self) -> &'static str {
        match self {
            Distribution::Constant => "constant",
            Distribution::Poisson => "poisson",
        }
    }
}

#[derive(clap::Args)]
pub struct PaArgs {
    /// The Sluice binary (default: <repo root>/target/release/sluice).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// Triton's perf_analyzer (default: $SLUICE_HOME/bin/perf_analyzer, as scripts/setup.sh
    /// installs it; SLUICE_HOME defaults to ~/.local/share/sluice).
    #[arg(long)]
    perf_analyzer: Option<PathBuf>,
    /// ONNX Runtime intra-op threads, in-process and served; default: CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Interleaved rounds (the table shows medians over rounds).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// perf_analyzer's `--measurement-interval`, milliseconds; it reports three windows merged.
    #[arg(long, default_value_t = 4000)]
    measurement_ms: u64,
    /// In-process seconds per batch size.
    #[arg(long, default_value_t = 1.5)]
    inprocess_seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    batch_sizes: Vec<usize>,
    /// `max_queue_delay_microseconds` of the fixed-delay config.
    #[arg(long, default_value_t = 2000)]
    delay_us: u64,
    /// `adaptive { max_p99_latency_ms }` of the adaptive config.
    #[arg(long, default_value_t = 50)]
    adaptive_p99_ms: u64,
    /// The rate as a fraction of the round's in-process best ("half that load").
    #[arg(long, default_value_t = 0.5)]
    half_load: f64,
    /// perf_analyzer's `--request-distribution` values to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "constant,poisson")]
    distributions: Vec<Distribution>,
    /// Where to write the JSON results (default: <repo root>/bench/results/pa-half-load.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What perf_analyzer reported for one cell in one round, with the reference it is judged by.
#[derive(Clone, Debug)]
struct PaRun {
    rate: f64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Server-side queue time, µs per request (perf_analyzer reads the statistics endpoint).
    server_queue_us: f64,
    server_infer_us: f64,
    /// In-process batch-1 compute time (p50, ms) measured just before the cell.
    batch1_ms: f64,
    /// The p99 of that same batch-1 run: the tail the machine adds with no queue at all.
    batch1_p99_ms: f64,
}

impl PaRun {
    /// p99 over twice the adjacent batch-1 compute time: the target is ≤ 1.
    fn ratio(&self) -> f64 {
        self.p99_ms / (2.0 * self.batch1_ms)
    }

    /// What a server with no queueing and no HTTP would score on the same scale: batch-1's own
    /// tail over twice its median. Near 1 means the machine's noise alone uses up the target.
    fn alone_ratio(&self) -> f64 {
        self.batch1_p99_ms / (2.0 * self.batch1_ms)
    }

    fn md1_floor_ms(&self) -> f64 {
        md1_time_in_system(self.rate, self.batch1_ms / 1e3, 0.99) * 1e3
    }

    fn to_json(&self) -> Value {
        json!({
            "rate": num(self.rate), "per_sec": num(self.per_sec), "p50_ms": num(self.p50_ms),
            "p99_ms": num(self.p99_ms), "server_queue_us": num(self.server_queue_us),
            "server_compute_infer_us": num(self.server_infer_us), "adjacent_batch1_ms": num(self.batch1_ms),
            "adjacent_batch1_p99_ms": num(self.batch1_p99_ms),
            "ratio": num(self.ratio()), "md1_floor_ms": num(self.md1_floor_ms()),
        })
    }
}

type Cell = (&'static str, Distribution);

fn default_perf_analyzer() -> PathBuf {
    let home = std::env::var_os("SLUICE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/sluice"));
    home.join("bin/perf_analyzer")
}

/// perf_analyzer's `--input-data` file: one entry per email, shapes without the batch dim.
fn input_data(emails: &[Vec<i64>]) -> Value {
    let entries: Vec<Value> = emails
        .iter()
        .map(|ids| {
            json!({
                "input_ids": {"content": ids, "shape": [ids.len()]},
                "attention_mask": {"content": vec![1; ids.len()], "shape": [ids.len()]},
            })
        })
        .collect();
    json!({ "data": entries })
}

/// perf_analyzer's `-f` report: a header line and one line per rate.
fn parse_csv(text: &str) -> Result<BTreeMap<String, String>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| anyhow!("empty perf_analyzer report"))?;
    let row = lines.next_back().ok_or_else(|| anyhow!("perf_analyzer report has no rows"))?;
    Ok(header.split(',').map(|k| k.trim().to_string()).zip(row.split(',').map(|v| v.trim().to_string())).collect())
}

fn field(row: &BTreeMap<String, String>, key: &str) -> Result<f64> {
    row.get(key)
        .ok_or_else(|| anyhow!("perf_analyzer report has no '{key}' column"))?
        .parse::<f64>()
        .with_context(|| format!("perf_analyzer '{key}'"))
}

fn run_perf_analyzer(
    pa: &Path,
    http: &str,
    model: &str,
    rate: f64,
    dist: Distribution,
    args: &PaArgs,
    dir: &Path,
) -> Result<PaRun> {
    let report = dir.join("pa.csv");
    let _ = fs::remove_file(&report);
    let out = Command::new(pa)
        .args(["-m", model, "-u", http, "-i", "http", "-b", "1"])
        .arg("--input-data")
        .arg(dir.join("input.json"))
        .args(["--request-rate-range", &format!("{rate:.2}"), "--request-distribution", dist.name()])
        .args(["--measurement-interval", &args.measurement_ms.to_string()])
        // A fixed measurement length rather than perf_analyzer's search for stability: the p99 of
        // a few seconds at half load varies by more than its default 10 % from window to window by
        // nature, and the rounds are what averages it.
        .args(["--stability-percentage", "1000", "--max-trials", "3"])
        .arg("-f")
        .arg(&report)
        .arg("--verbose-csv")
        .output()
        .with_context(|| format!("cannot run {} (bash scripts/setup.sh installs it)", pa.display()))?;
    if !out.status.success() || !report.exists() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        bail!("perf_analyzer exit {}: {}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    let row = parse_csv(&fs::read_to_string(&report)?)?;
    Ok(PaRun {
        rate,
        per_sec: field(&row, "Inferences/Second")?,
        p50_ms: field(&row, "p50 latency")? / 1e3,
        p99_ms: field(&row, "p99 latency")? / 1e3,
        server_queue_us: field(&row, "Server Queue")?,
        server_infer_us: field(&row, "Server Compute Infer")?,
        batch1_ms: f64::NAN,
        batch1_p99_ms: f64::NAN,
    })
}

pub fn run(args: PaArgs, models: &Path, ort_lib: Option<&Path>, limit: Option<usize>) -> Result<()> {
    let threads = args.threads.unwrap_or_else(cpus);
    let bin = sluice_bin(args.sluice_bin.as_deref())?;
    let pa = args.perf_analyzer.clone().unwrap_or_else(default_perf_analyzer);
    if !pa.is_file() {
        bail!("{} not found: bash scripts/setup.sh installs perf_analyzer (or --perf-analyzer)", pa.display());
    }
    let started = Instant::now();
    let emails = data::emails(models, "spam-accurate", limit)?;
    let lib = inprocess::init_ort(ort_lib)?;
    let mut instance = inprocess::load(models, "spam-accurate", threads)?;

    let tmp = tempfile::Builder::new().prefix("spam-bench-pa-").tempdir()?;
    fs::write(tmp.path().join("input.json"), input_data(&emails).to_string())?;
    let repo = tmp.path().join("models");
    let configs = [
        (FIXED, Batching::Fixed { delay_us: args.delay_us, max_batch: None }),
        (ADAPTIVE, Batching::Adaptive { max_p99_ms: args.adaptive_p99_ms }),
    ];
    for (name, batching) in &configs {
        symlink(&models.join("spam-accurate/model.onnx"), &repo.join(name).join("1/model.onnx"))?;
        fs::write(repo.join(name).join("config.pbtxt"), inprocess::spam_pbtxt(name, threads, batching))?;
    }
    let rt = runtime(1)?;
    let mut server = Server::start(&bin, &repo, &lib, threads, tmp.path().join("sluice.log"))?;
    rt.block_on(async {
        server.wait_live().await?;
        for (m, _) in &configs {
            if let Err(why) = server.load_model(m).await {
                bail!("loading {m}: {why}\n{}", server.log_tail());
            }
        }
        anyhow::Ok(())
    })?;
    let http = server.target.http.clone();

    let cells: Vec<Cell> = configs.iter().flat_map(|(m, _)| args.distributions.iter().map(move |d| (*m, *d))).collect();
    let mut runs: BTreeMap<Cell, Vec<PaRun>> = BTreeMap::new();
    let mut best_rates = Vec::new();
    for round in 0..args.rounds {
        let sweep = inprocess::sweep(instance.as_mut(), &emails, &args.batch_sizes, args.inprocess_seconds)?;
        let best = inprocess::best(&sweep).ok_or_else(|| anyhow!("no batch sizes"))?;
        let rate = best.per_sec * args.half_load;
        eprintln!(
            "round {}/{}: in-process best batch {} at {:.1}/s; rate {rate:.1}/s",
            round + 1,
            args.rounds,
            best.batch_size,
            best.per_sec
        );
        best_rates.push(best.per_sec);
        let mut order = cells.clone();
        let n = order.len().max(1);
        order.rotate_left(round % n);
        for cell in order {
            let b1 = inprocess::run_batch_size(instance.as_mut(), &emails, 1, args.inprocess_seconds, 2)?;
            let mut r = run_perf_analyzer(&pa, &http, cell.0, rate, cell.1, &args, tmp.path())
                .with_context(|| format!("{} {}\n{}", cell.0, cell.1.name(), server.log_tail()))?;
            r.batch1_ms = b1.batch_ms.p50;
            r.batch1_p99_ms = b1.batch_ms.p99;
            eprintln!(
                "  {} {}: {:.1}/s, p50 {:.2} ms, p99 {:.2} ms, server queue {:.0} µs; batch 1 just before {:.2} ms \
                 (p99 {:.2}) → ratio {:.2}",
                cell.0,
                cell.1.name(),
                r.per_sec,
                r.p50_ms,
                r.p99_ms,
                r.server_queue_us,
                r.batch1_ms,
                r.batch1_p99_ms,
                r.ratio()
            );
            runs.entry(cell).or_default().push(r);
        }
    }
    drop(server);

    println!();
    println!("{}", render(&runs, &args, threads, median(&best_rates)));
    let command: Vec<String> = std::env::args().collect();
    let json = json!({
        "command": command.join(" "),
        "machine": machine(),
        "threads": threads,
        "rounds": args.rounds,
        "measurement_ms": args.measurement_ms,
        "in_process_best_per_sec": best_rates.iter().map(|&x| num(x)).collect::<Vec<_>>(),
        "cells": runs.iter().map(|((m, d), rs)| json!({
            "model": m, "distribution": d.name(),
            "median_ratio": num(median(&rs.iter().map(PaRun::ratio).collect::<Vec<_>>())),
            "rounds": rs.iter().map(PaRun::to_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    write_results(args.json.as_deref(), "pa-half-load.json", &json, started)?;
    Ok(())
}

fn render(runs: &BTreeMap<Cell, Vec<PaRun>>, args: &PaArgs, threads: usize, best: f64) -> String {
    let mut s = format!(
        "Machine: {}. ONNX Runtime intra-op threads: {threads}. {} interleaved round(s); perf_analyzer \
         --request-rate-range at {:.0} % of the round's in-process best (median {best:.1}/s), HTTP binary, \
         3 windows of {} ms merged; medians over rounds.\n\n",
        machine(),
        args.rounds,
        args.half_load * 100.0,
        args.measurement_ms
    );
    s.push_str(
        "| model | arrivals | rate /s | served /s | p50 ms | p99 ms | server queue µs | batch-1 ms (adjacent) \
         | p99 / (2 × batch-1), per round → median | batch-1 alone: its p99 / (2 × p50) | M/D/1 p99 floor ms |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for ((model, dist), rs) in runs {
        let med = |g: fn(&PaRun) -> f64| median(&rs.iter().map(g).collect::<Vec<_>>());
        let ratios: Vec<String> = rs.iter().map(|r| f(r.ratio(), 2)).collect();
        let floor = match dist {
            Distribution::Poisson => f(med(PaRun::md1_floor_ms), 2),
            Distribution::Constant => "–".into(),
        };
        s.push_str(&format!(
            "| {model} | {} | {} | {} | {} | {} | {} | {} | {} → **{}** | {} | {floor} |\n",
            dist.name(),
            f(med(|r| r.rate), 1),
            f(med(|r| r.per_sec), 1),
            f(med(|r| r.p50_ms), 2),
            f(med(|r| r.p99_ms), 2),
            f(med(|r| r.server_queue_us), 0),
            f(med(|r| r.batch1_ms), 2),
            ratios.join(", "),
            f(med(PaRun::ratio), 2),
            f(med(PaRun::alone_ratio), 2),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_row_of_a_report() {
        let csv = "Request Rate,Inferences/Second,Client Send,p50 latency,p99 latency,Server Queue\n\
                   78.5,78.4,20,9000,15000,30\n";
        let row = parse_csv(csv).unwrap();
        assert_eq!(field(&row, "p99 latency").unwrap(), 15000.0);
        assert_eq!(field(&row, "Server Queue").unwrap(), 30.0);
        assert!(field(&row, "Avg latency").is_err());
        assert!(parse_csv("Request Rate\n").is_err());
    }

    #[test]
    fn input_data_has_one_entry_per_email_without_the_batch_dim() {
        let v = input_data(&[vec![101, 7, 102], vec![101, 102]]);
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["input_ids"]["shape"], json!([3]));
        assert_eq!(data[1]["attention_mask"]["content"], json!([1, 1]));
    }
}
