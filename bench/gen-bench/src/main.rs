//! `gen-bench`: LLM generation served by Sluice against two in-process references with the
//! same GGUF, prompt and settings (greedy, a fixed number of tokens), in interleaved rounds.
//!
//! * Sluice's own engine in-process (`sluice_llm::Generator`, no HTTP): one served stream over
//!   this is the serving overhead;
//! * stock candle in-process: time to first token (the prompt's forward pass) and decode
//!   tokens/s of one sequence, as `candle_transformers::models::quantized_llama` runs it. It is
//!   what a user would run without a server, not a limit of the machine: candle 0.11 has only a
//!   portable Q4_1 dot product, Sluice its own AVX2 kernel, so served / candle compares kernels;
//! * served: N concurrent streams over `/v1/completions` with `stream: true` (N = 1, 4, 8):
//!   time to first token as the client sees it, decode tokens/s per stream, aggregate
//!   tokens/s over all streams.
//!
//! `gen-bench perplexity` ([`perplexity`]) measures accuracy instead: the perplexity of a
//! fixed text scored through the served API against candle in-process.
//!
//! Build with `cargo build --release -p gen-bench -p sluice`; see docs/benchmarks.md.

mod perplexity;

/// The server's allocator, so that the engine in-process allocates as it does when served.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "gen-bench",
    about = "Sluice generation versus candle in-process",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Subcmd>,
    #[command(flatten)]
    speed: Args,
}

#[derive(Subcommand)]
enum Subcmd {
    /// Perplexity of a fixed text through the served API against candle in-process.
    Perplexity(perplexity::PerplexityArgs),
}

#[derive(clap::Args)]
struct Args {
    /// The Sluice binary (default: <repo root>/target/release/sluice).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// The SmolLM2 model folder (default: smollm2-135m-instruct in $SLUICE_MODELS, which
    /// scripts/setup.sh fills).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Tokens generated per stream (end of sequence ignored, so every run is this long).
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value = "Tell me a long story about a lighthouse keeper and a storm.")]
    question: String,
    /// Where to write the JSON results (default: <repo root>/bench/results/gen-bench.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(crate) fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// One stream's figures.
#[derive(Clone, Copy, Debug)]
struct Stream {
    ttft: f64,
    /// Decode tokens per second after the first token.
    rate: f64,
    tokens: usize,
    /// Seconds from the round's start to this stream's last token.
    end: f64,
}

fn inprocess(model: &mut ModelWeights, prompt: &[u32], tokens: usize) -> Result<Stream> {
    let dev = Device::Cpu;
    let t0 = Instant::now();
    let x = Tensor::new(prompt, &dev)?.unsqueeze(0)?;
    let logits = model.forward(&x, 0)?.squeeze(0)?;
    let mut next = logits.argmax(0)?.to_scalar::<u32>()?;
    let ttft = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 1..tokens {
        let x = Tensor::new(&[next], &dev)?.unsqueeze(0)?;
        let logits = model.forward(&x, prompt.len() + i - 1)?.squeeze(0)?;
        next = logits.argmax(0)?.to_scalar::<u32>()?;
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok(Stream { ttft, rate: (tokens - 1) as f64 / decode, tokens, end: t0.elapsed().as_secs_f64() })
}

/// One sequence through Sluice's engine in-process, timed as a client of the stream would.
async fn engine_inprocess(g: &sluice_llm::Generator, prompt: &[u32], tokens: usize) -> Result<Stream> {
    let params =
        sluice_llm::SamplingParams { max_tokens: tokens, temperature: 0.0, ignore_eos: true, ..Default::default() };
    let sent = Instant::now();
    let mut rx = g.submit(prompt.to_vec(), params).map_err(anyhow::Error::msg)?;
    let (mut first, mut last, mut n) = (None, None, 0);
    while let Some(ev) = rx.recv().await {
        match ev {
            sluice_llm::Event::Text(t) if !t.is_empty() => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
            }
            sluice_llm::Event::Text(_) | sluice_llm::Event::PromptLogprobs(_) | sluice_llm::Event::Logprobs(_) => {}
            sluice_llm::Event::Done(f) => n = f.completion_tokens,
            sluice_llm::Event::Error(e) => bail!("engine: {e}"),
        }
    }
    let (Some(first), Some(last)) = (first, last) else { bail!("no text generated") };
    Ok(Stream {
        ttft: (first - sent).as_secs_f64(),
        rate: n.saturating_sub(1) as f64 / (last - first).as_secs_f64().max(1e-9),
        tokens: n,
        end: (last - sent).as_secs_f64(),
    })
}

/// One streamed completion; times are measured from `start`.
async fn served_stream(c: reqwest::Client, url: String, body: Value, start: Instant) -> Result<Stream> {
    let sent = Instant::now();
    let mut r = c.post(url).json(&body).send().await?;
    if !r.status().is_success() {
        bail!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default());
    }
    let mut buf = String::new();
    let (mut first, mut last) = (None, None);
    let mut tokens = 0;
    while let Some(chunk) = r.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data)?;
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as usize;
            }
            if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
            }
        }
    }
    let (Some(first), Some(last)) = (first, last) else { bail!("no text streamed") };
    Ok(Stream {
        ttft: (first - sent).as_secs_f64(),
        rate: (tokens.saturating_sub(1)) as f64 / (last - first).as_secs_f64().max(1e-9),
        tokens,
        end: (last - start).as_secs_f64(),
    })
}

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    _repo: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `sluice serve` on a repository holding only the model, with `env` added to its
/// environment.
pub(crate) async fn start_server(bin: &Path, model_dir: &Path, env: &[(&str, &str)]) -> Result<Server> {
    // The state dir and the log sit beside the repository: every directory in it is a model.
    let tmp = tempfile::tempdir()?;
    let models = tmp.path().join("models");
    std::fs::create_dir_all(models.join("smollm/1"))?;
    std::os::unix::fs::symlink(model_dir.join("model.gguf"), models.join("smollm/1/model.gguf"))?;
    std::os::unix::fs::symlink(model_dir.join("tokenizer.json"), models.join("smollm/tokenizer.json"))?;
    let (http, grpc, metrics) = (free_port()?, free_port()?, free_port()?);
    let log = std::fs::File::create(tmp.path().join("sluice.log"))?;
    let child = Command::new(bin)
        .envs(env.iter().copied())
        .args(["serve", "--model-repository"])
        .arg(&models)
        .args(["--http-port", &http.to_string(), "--grpc-port", &grpc.to_string()])
        .args(["--metrics-port", &metrics.to_string(), "--state-dir"])
        .arg(tmp.path().join("state"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let server = Server { child, base: format!("http://127.0.0.1:{http}"), _repo: tmp };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match reqwest::get(format!("{}/v2/health/ready", server.base)).await {
            Ok(r) if r.status().is_success() => return Ok(server),
            Ok(r) => format!("HTTP {} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(server._repo.path().join("sluice.log")).unwrap_or_default();
            bail!("sluice not ready after 60 s (last: {last}); its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Subcmd::Perplexity(p)) => return perplexity::run(p).await,
        None => cli.speed,
    };
    let root = repo_root();
    let model_dir = match args.model_dir.clone() {
        Some(dir) => dir,
        None => sluice_test_models::try_model_path("smollm2-135m-instruct").map_err(anyhow::Error::msg)?,
    };
    let bin = args.sluice_bin.clone().unwrap_or_else(|| root.join("target/release/sluice"));
    let prompt_text = format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", args.question);
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    let prompt: Vec<u32> =
        tokenizer.encode(prompt_text.as_str(), false).map_err(anyhow::Error::msg)?.get_ids().to_vec();

    let path = model_dir.join("model.gguf");
    let mut f = std::fs::File::open(&path)?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f)?;
    let mut model = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu)?;
    inprocess(&mut model, &prompt, 8)?; // warm
                                        // The same defaults the server gives a model directory without a config.
    let opts =
        sluice_llm::GeneratorOptions { max_num_seqs: 8, max_batched_tokens: 512, kv_tokens: 8 * 2048, max_queue: 64 };
    let engine = sluice_llm::Generator::load("smollm", &path, &model_dir.join("tokenizer.json"), opts)
        .map_err(anyhow::Error::msg)?;
    engine_inprocess(&engine, &prompt, 8).await?; // warm

    let server = start_server(&bin, &model_dir, &[]).await?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", server.base);
    let body = json!({
        "model": "smollm", "prompt": prompt_text, "max_tokens": args.tokens, "temperature": 0,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}
    });
    let mut warm = body.clone();
    warm["max_tokens"] = json!(8);
    served_stream(client.clone(), url.clone(), warm, Instant::now()).await?;

    println!("prompt: {} tokens; {} tokens per stream; {} rounds", prompt.len(), args.tokens, args.rounds);
    let mut ip: Vec<Stream> = Vec::new();
    let mut own: Vec<Stream> = Vec::new();
    // concurrency → per round: (ttft median, per-stream rate median, aggregate tokens/s)
    let mut sv: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); args.concurrency.len()];
    for round in 0..args.rounds {
        let s = inprocess(&mut model, &prompt, args.tokens)?;
        println!("round {round}: in-process ttft {:.1} ms, {:.1} tokens/s", s.ttft * 1e3, s.rate);
        ip.push(s);
        let s = engine_inprocess(&engine, &prompt, args.tokens).await?;
        println!("round {round}: Sluice engine in-process ttft {:.1} ms, {:.1} tokens/s", s.ttft * 1e3, s.rate);
        own.push(s);
        for (i, &n) in args.concurrency.iter().enumerate() {
            let start = Instant::now();
            let tasks: Vec<_> =
                (0..n).map(|_| tokio::spawn(served_stream(client.clone(), url.clone(), body.clone(), start))).collect();
            let mut streams = Vec::new();
            for t in tasks {
                streams.push(t.await??);
            }
            let total: usize = streams.iter().map(|s| s.tokens).sum();
            let wall = streams.iter().map(|s| s.end).fold(0.0, f64::max);
            let cell = (
                median(streams.iter().map(|s| s.ttft).collect()),
                median(streams.iter().map(|s| s.rate).collect()),
                total as f64 / wall,
            );
            println!(
                "round {round}: served x{n}: ttft {:.1} ms, {:.1} tokens/s per stream, {:.1} tokens/s aggregate",
                cell.0 * 1e3,
                cell.1,
                cell.2
            );
            sv[i].push(cell);
        }
    }
    let ip_rate = median(ip.iter().map(|s| s.rate).collect());
    let ip_ttft = median(ip.iter().map(|s| s.ttft).collect());
    let own_rate = median(own.iter().map(|s| s.rate).collect());
    let own_ttft = median(own.iter().map(|s| s.ttft).collect());
    println!("\nmedians over {} rounds", args.rounds);
    println!("| run | time to first token | tokens/s per stream | aggregate tokens/s | vs candle in-process |");
    println!("|---|---|---|---|---|");
    println!("| candle in-process, 1 sequence | {:.0} ms | {ip_rate:.1} | {ip_rate:.1} | 1.00 |", ip_ttft * 1e3);
    println!(
        "| Sluice engine in-process, 1 sequence | {:.0} ms | {own_rate:.1} | {own_rate:.1} | {:.2} |",
        own_ttft * 1e3,
        own_rate / ip_rate
    );
    let one = median(sv.first().map(|c| c.iter().map(|x| x.2).collect()).unwrap_or_default());
    // The serving overhead: one served stream against the same engine without HTTP, per round.
    let per_round = |f: fn(&Stream) -> f64, served: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> {
        sv.first().map(|c| c.iter().zip(&own).map(|(x, o)| served(x) / f(o)).collect()).unwrap_or_default()
    };
    let overhead_rate = median(per_round(|o| o.rate, |x| x.1));
    let overhead_ttft = median(per_round(|o| o.ttft, |x| x.0));
    println!(
        "serving overhead, 1 stream / Sluice engine in-process (median of rounds): decode rate {overhead_rate:.3}, \
         first token {overhead_ttft:.2}x"
    );
    let mut rows = Vec::new();
    for (i, &n) in args.concurrency.iter().enumerate() {
        let ttft = median(sv[i].iter().map(|x| x.0).collect());
        let rate = median(sv[i].iter().map(|x| x.1).collect());
        let agg = median(sv[i].iter().map(|x| x.2).collect());
        println!(
            "| Sluice, {n} stream{} | {:.0} ms | {rate:.1} | {agg:.1} | {:.2} (x{:.2} of 1 stream) |",
            if n == 1 { "" } else { "s" },
            ttft * 1e3,
            agg / ip_rate,
            agg / one
        );
        rows.push(json!({"streams": n, "ttft_ms": ttft * 1e3, "per_stream_tps": rate, "aggregate_tps": agg}));
    }
    let out = args.json.clone().unwrap_or_else(|| root.join("bench/results/gen-bench.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let result = json!({
        "prompt_tokens": prompt.len(), "tokens": args.tokens, "rounds": args.rounds,
        "inprocess": {"ttft_ms": ip_ttft * 1e3, "tps": ip_rate},
        "engine_inprocess": {"ttft_ms": own_ttft * 1e3, "tps": own_rate},
        "serving_overhead": {"decode_rate_ratio": overhead_rate, "ttft_ratio": overhead_ttft},
        "rounds_detail": {
            "candle": ip.iter().map(|s| json!({"ttft_ms": s.ttft * 1e3, "tps": s.rate})).collect::<Vec<_>>(),
            "engine": own.iter().map(|s| json!({"ttft_ms": s.ttft * 1e3, "tps": s.rate})).collect::<Vec<_>>(),
            "served": sv.iter().map(|c| c.iter().map(|x| json!({"ttft_ms": x.0 * 1e3, "per_stream_tps": x.1, "aggregate_tps": x.2})).collect::<Vec<_>>()).collect::<Vec<_>>(),
        },
        "served": rows,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    println!("\nJSON: {}", out.display());
    Ok(())
}
