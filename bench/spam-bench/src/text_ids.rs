//! `text-vs-ids`: what server-side tokenization costs. Starts `sluice serve` on a repository
//! made by `scripts/make_models_repo.sh` and drives, interleaved, the same emails in the same
//! order as (a) raw text to `spam-text` (the server tokenizes with the model's `tokenizer.json`,
//! truncating to 128 tokens) and (b) token ids tokenized here, truncated to 128 the same way, to
//! `spam-fast` (the same ONNX file). Both modes run the same model on the same tokens, so the
//! difference is tokenizing on the server versus decoding the ids sent.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sluice_backend::onnx::find_library;

use crate::compare::{f, machine, med_of, sluice_bin, Server};
use crate::load::{self, LoadResult, Phase, Target, Transport, Workload};
use crate::stats::{median, num};
use crate::{cpus, data, repo_root, runtime, write_results};

/// The models of `scripts/make_models_repo.sh` compared here.
const IDS_MODEL: &str = "spam-fast";
const TEXT_MODEL: &str = "spam-text";
/// The BYTES input `spam-text` declares (`text_input` in its config).
const TEXT_INPUT: &str = "TEXT";

#[derive(clap::Args)]
pub struct TextVsIdsArgs {
    /// The Sluice binary (default: <repo root>/target/release/sluice).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// ONNX Runtime intra-op threads of the server (`--onnx-intra-op-threads`); default: CPUs.
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Measured seconds of each cell (one mode at one concurrency).
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Unmeasured seconds before each cell.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Interleaved rounds (the table shows medians over rounds).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Send over gRPC instead of HTTP binary.
    #[arg(long)]
    grpc: bool,
    /// Serve spam-fast with the script's config unchanged. By default its token inputs get
    /// `allow_ragged_batch: true`, as the server gives spam-text's tokens, so that both batch
    /// alike; without it, only emails of equal token length share a batch.
    #[arg(long)]
    script_config: bool,
    /// Emails compared answer for answer (ids against text, one at a time) before measuring.
    #[arg(long, default_value_t = 16)]
    check: usize,
    /// Where to write the JSON results (default: <repo root>/bench/results/text-vs-ids.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary model repository and the server log.
    #[arg(long)]
    keep_repo: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// Token ids tokenized by the client, to spam-fast.
    Ids,
    /// Raw text, tokenized by the server, to spam-text.
    Text,
}

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::Ids => "ids",
            Mode::Text => "text",
        }
    }
}

/// Adds `allow_ragged_batch: true` to the `dims: [ -1 ]` inputs of a config written by
/// `scripts/make_models_repo.sh` (outputs untouched).
fn ragged_inputs(config: &str) -> Result<String> {
    let start = config.find("\ninput [").ok_or_else(|| anyhow!("config has no input block"))?;
    let end = start + config[start..].find("\noutput [").ok_or_else(|| anyhow!("config has no output block"))?;
    let inputs = &config[start..end];
    let n = inputs.matches("dims: [ -1 ]").count();
    if n != 2 || inputs.contains("allow_ragged_batch") {
        bail!("expected two plain `dims: [ -1 ]` inputs, found {n}:\n{inputs}");
    }
    let inputs = inputs.replace("dims: [ -1 ]", "dims: [ -1 ]\n    allow_ragged_batch: true");
    Ok(format!("{}{inputs}{}", &config[..start], &config[end..]))
}

/// Runs `scripts/make_models_repo.sh DIR` over `models`.
pub(crate) fn make_repository(dir: &Path, models: &Path) -> Result<()> {
    let script = repo_root().join("scripts/make_models_repo.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .env("SLUICE_MODELS", models)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// p(spam) of one JSON request.
async fn p_spam(target: &Target, model: &str, inputs: Value) -> Result<f64> {
    let body = json!({"inputs": inputs, "outputs": [{"name": "probabilities"}]});
    let (status, resp) =
        load::http_call(&target.http, "POST", &format!("/v2/models/{model}/infer"), Some(body.to_string())).await?;
    if status != 200 {
        bail!("{model}: HTTP {status}: {}", String::from_utf8_lossy(&resp));
    }
    let v: Value = serde_json::from_slice(&resp)?;
    v["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "probabilities"))
        .and_then(|t| t["data"][1].as_f64())
        .ok_or_else(|| anyhow!("{model}: no probabilities in {v}"))
}

/// The first `n` emails sent one at a time (so at batch 1) both ways: how many got the same
/// label, and the largest difference in p(spam). Equal answers mean equal tokens.
async fn same_answers(target: &Target, texts: &[String], ids: &[Vec<i64>], n: usize) -> Result<(usize, usize, f64)> {
    let (mut agree, mut max_diff) = (0, 0.0f64);
    let n = n.min(texts.len());
    for (text, ids) in texts.iter().zip(ids).take(n) {
        let shape = [1, ids.len()];
        let by_ids = p_spam(
            target,
            IDS_MODEL,
            json!([
                {"name": "input_ids", "shape": shape, "datatype": "INT64", "data": ids},
                {"name": "attention_mask", "shape": shape, "datatype": "INT64", "data": vec![1; ids.len()]},
            ]),
        )
        .await?;
        let by_text = p_spam(
            target,
            TEXT_MODEL,
            json!([{"name": TEXT_INPUT, "shape": [1, 1], "datatype": "BYTES", "data": [text]}]),
        )
        .await?;
        agree += usize::from((by_ids > 0.5) == (by_text > 0.5));
        max_diff = max_diff.max((by_ids - by_text).abs());
    }
    Ok((agree, n, max_diff))
}

/// Everything measured: per (concurrency, mode), one result per round.
#[derive(Default)]
struct Results {
    runs: BTreeMap<(usize, Mode), Vec<LoadResult>>,
}

impl Results {
    fn get(&self, c: usize, m: Mode) -> &[LoadResult] {
        self.runs.get(&(c, m)).map_or(&[], Vec::as_slice)
    }

    /// Median over rounds of text req/s / ids req/s of the same round.
    fn ratio(&self, c: usize) -> f64 {
        let ratios: Vec<f64> =
            self.get(c, Mode::Ids).iter().zip(self.get(c, Mode::Text)).map(|(i, t)| t.per_sec / i.per_sec).collect();
        median(&ratios)
    }
}

pub fn run(
    args: TextVsIdsArgs,
    models: &Path,
    ort_lib: Option<&Path>,
    limit: Option<usize>,
    client_threads: usize,
) -> Result<()> {
    let threads = args.threads.unwrap_or_else(cpus);
    let bin = sluice_bin(args.sluice_bin.as_deref())?;
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency must list client counts of at least 1");
    }
    let started = Instant::now();
    eprintln!("tokenizing the emails...");
    let texts = data::texts(models, limit)?;
    let ids = data::tokenize(&models.join(IDS_MODEL).join("tokenizer.json"), &texts)?;
    let (mean_len, median_len, capped) = data::length_summary(&ids);
    let mean_text = texts.iter().map(String::len).sum::<usize>() as f64 / texts.len() as f64;
    eprintln!(
        "{} emails, text {mean_text:.0} bytes mean; tokens mean {mean_len:.1}, median {median_len}, {:.0}% at the \
         {} cap",
        texts.len(),
        capped * 100.0,
        data::MAX_TOKENS
    );
    let lib = find_library(ort_lib).map_err(|e| anyhow!("{e}"))?;

    let tmp = tempfile::Builder::new().prefix("spam-bench-text-").tempdir()?;
    let repo = tmp.path().join("models");
    make_repository(&repo, models)?;
    let ids_config_path = repo.join(IDS_MODEL).join("config.pbtxt");
    let ids_config = if args.script_config {
        "as scripts/make_models_repo.sh writes it (no allow_ragged_batch)"
    } else {
        fs::write(&ids_config_path, ragged_inputs(&fs::read_to_string(&ids_config_path)?)?)?;
        "scripts/make_models_repo.sh's, with allow_ragged_batch: true on input_ids and attention_mask"
    };
    let rt = runtime(client_threads)?;
    let mut server = Server::start(&bin, &repo, &lib, threads, tmp.path().join("sluice.log"))?;
    let target = server.target.clone();
    let check = rt.block_on(async {
        server.wait_live().await?;
        for m in [IDS_MODEL, TEXT_MODEL] {
            if let Err(why) = server.load_model(m).await {
                bail!("loading {m}: {why}\n{}", server.log_tail());
            }
        }
        same_answers(&target, &texts, &ids, args.check).await
    })?;
    let (agree, checked, max_diff) = check;
    eprintln!(
        "check: {agree}/{checked} emails got the same label both ways, p(spam) differs by at most {max_diff:.2e}"
    );
    if agree < checked {
        eprintln!("warning: text and ids do not give the same answers, so they do not feed the model the same tokens");
    }

    let transport = if args.grpc { Transport::Grpc } else { Transport::Http };
    let workloads = [
        (Mode::Ids, Workload::spam(IDS_MODEL, transport, &ids)?),
        (Mode::Text, Workload::text(TEXT_MODEL, transport, TEXT_INPUT, &texts)?),
    ];
    let bytes: BTreeMap<Mode, f64> = workloads.iter().map(|(m, w)| (*m, w.mean_request_bytes())).collect();
    let secs = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_secs_f64(args.warmup);
    let mut res = Results::default();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for (k, &c) in args.concurrency.iter().enumerate() {
            // Which mode goes first alternates, by round and by concurrency.
            let mut order = [0, 1];
            if (round + k) % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (mode, w) = &workloads[i];
                // Every run starts at the first email: both modes send the same ones in order.
                let phases = [Phase { concurrency: c, duration: secs }];
                let r = rt.block_on(load::run_phases(&target, w, &phases, warmup))?;
                r.print(&format!("  {} c{c}", mode.key()));
                res.runs.entry((c, *mode)).or_default().push(r);
            }
        }
    }
    drop(server);

    let table = render(&res, &args, threads, transport, &bytes, mean_text, ids_config);
    println!();
    println!("{table}");
    let command: Vec<String> = std::env::args().collect();
    let json = json!({
        "command": command.join(" "),
        "machine": machine(),
        "threads": threads,
        "transport": transport.name(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "ids_config": ids_config,
        "emails": {
            "count": texts.len(), "mean_text_bytes": num(mean_text), "mean_tokens": num(mean_len),
            "median_tokens": median_len, "share_at_cap": num(capped),
        },
        "mean_request_bytes": {"ids": num(bytes[&Mode::Ids]), "text": num(bytes[&Mode::Text])},
        "check": {"emails": checked, "same_label": agree, "max_abs_diff_p_spam": num(max_diff)},
        "medians": args.concurrency.iter().map(|&c| {
            let m = |mode: Mode| {
                let rs = res.get(c, mode);
                json!({
                    "per_sec": num(med_of(rs, |r| r.per_sec)),
                    "p50_ms": num(med_of(rs, |r| r.latency_ms.p50)),
                    "p99_ms": num(med_of(rs, |r| r.latency_ms.p99)),
                    "avg_batch": num(med_of(rs, |r| r.server.avg_batch)),
                    "server_infer_ms_per_execution": num(med_of(rs, |r| r.server.infer_ms_per_execution)),
                    "errors": rs.iter().map(LoadResult::error_count).sum::<u64>(),
                })
            };
            json!({"concurrency": c, "ids": m(Mode::Ids), "text": m(Mode::Text), "text_over_ids": num(res.ratio(c))})
        }).collect::<Vec<_>>(),
        "per_round": (0..args.rounds).map(|r| {
            let mut cells = serde_json::Map::new();
            for ((c, mode), rs) in &res.runs {
                if let Some(x) = rs.get(r) {
                    cells.insert(format!("{}_c{c}", mode.key()), x.to_json());
                }
            }
            Value::Object(cells)
        }).collect::<Vec<_>>(),
    });
    write_results(args.json.as_deref(), "text-vs-ids.json", &json, started)?;
    if args.keep_repo {
        let kept = tmp.keep();
        eprintln!("kept the model repository and server log in {}", kept.display());
    }
    Ok(())
}

fn render(
    res: &Results,
    args: &TextVsIdsArgs,
    threads: usize,
    transport: Transport,
    bytes: &BTreeMap<Mode, f64>,
    mean_text: f64,
    ids_config: &str,
) -> String {
    let mut t = format!(
        "Machine: {}. ONNX Runtime intra-op threads: {threads}. {} interleaved round(s), {} s per cell, {}; \
         medians over rounds (text / ids: median of per-round ratios). Mean request: ids {:.0} bytes, text {:.0} \
         bytes (email text {mean_text:.0} bytes). spam-fast config: {ids_config}.\n\n",
        machine(),
        args.rounds,
        args.seconds,
        transport.name(),
        bytes[&Mode::Ids],
        bytes[&Mode::Text],
    );
    t.push_str(
        "| clients | ids req/s | text req/s | text / ids | ids p50 ms | text p50 ms | ids p99 ms | text p99 ms | \
         avg batch ids / text | ORT ms per execution ids / text | errors ids / text |\n",
    );
    t.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for &c in &args.concurrency {
        let (ids, text) = (res.get(c, Mode::Ids), res.get(c, Mode::Text));
        let errors = |rs: &[LoadResult]| rs.iter().map(LoadResult::error_count).sum::<u64>();
        t.push_str(&format!(
            "| {c} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |\n",
            f(med_of(ids, |r| r.per_sec), 1),
            f(med_of(text, |r| r.per_sec), 1),
            f(res.ratio(c), 2),
            f(med_of(ids, |r| r.latency_ms.p50), 2),
            f(med_of(text, |r| r.latency_ms.p50), 2),
            f(med_of(ids, |r| r.latency_ms.p99), 2),
            f(med_of(text, |r| r.latency_ms.p99), 2),
            f(med_of(ids, |r| r.server.avg_batch), 2),
            f(med_of(text, |r| r.server.avg_batch), 2),
            f(med_of(ids, |r| r.server.infer_ms_per_execution), 2),
            f(med_of(text, |r| r.server.infer_ms_per_execution), 2),
            errors(ids),
            errors(text),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_token_inputs_only() {
        let c = "name: \"spam-fast\"\nmax_batch_size: 32\ninput [\n  {\n    name: \"input_ids\"\n    dims: [ -1 ]\n  },\n  \
                 {\n    name: \"attention_mask\"\n    dims: [ -1 ]\n  }\n]\noutput [\n  {\n    name: \"p\"\n    \
                 dims: [ -1 ]\n  }\n]\n";
        let r = ragged_inputs(c).unwrap();
        assert_eq!(r.matches("allow_ragged_batch: true").count(), 2);
        assert!(r.ends_with("output [\n  {\n    name: \"p\"\n    dims: [ -1 ]\n  }\n]\n"), "{r}");
        assert!(r.contains("name: \"input_ids\"\n    dims: [ -1 ]\n    allow_ragged_batch: true\n  },"), "{r}");
        assert!(ragged_inputs(&r).is_err(), "twice is refused");
    }
}
