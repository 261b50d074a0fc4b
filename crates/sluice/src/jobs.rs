//! `sluice jobs submit|status|wait|cancel|list`: the asynchronous job API of a running server
//! (docs/jobs.md) from the command line.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{fail, str_of, Client, ClientArgs, Exit};
use crate::infer::{print_response, RequestArgs};
use crate::output::{outputs_table, table};

#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Submit an inference request as a job; prints the job id (with --wait, the result).
    Submit(Box<SubmitArgs>),
    /// A job's status, times, attempts, error or result.
    Status {
        id: String,
        /// Print the job as the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until a job ends and print its result as `infer` does. Exits 4 when the job failed
    /// or was cancelled, 5 when --timeout runs out first.
    Wait(WaitArgs),
    /// Cancel a queued or running job.
    Cancel { id: String },
    /// Jobs, newest first (results left out).
    List {
        /// Only jobs of this model.
        #[arg(long)]
        model: Option<String>,
        /// Only jobs in this status: queued, processing, completed, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// At most this many (the server's default 100, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// 1 is the most urgent (the server's default 5).
    #[arg(long)]
    priority: Option<u32>,
    /// Seconds the result is kept after the job ends (the server's default 3600).
    #[arg(long)]
    ttl_seconds: Option<u64>,
    /// URL the finished job is POSTed to, signed (see docs/jobs.md, Webhooks).
    #[arg(long)]
    callback_url: Option<String>,
    /// Submitting the same key again answers the first job instead of a new one.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the job to end and print its result, as `jobs wait` does.
    #[arg(long)]
    wait: bool,
    /// With --wait: seconds to wait at most.
    #[arg(long, requires = "wait")]
    timeout: Option<f64>,
    /// Print the server's JSON (the submit answer; with --wait, the result).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WaitArgs {
    id: String,
    /// Seconds to wait at most (default: as long as it takes).
    #[arg(long)]
    timeout: Option<f64>,
    /// Print the result as the server's JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client);
    match args.command {
        JobsCommand::Submit(a) => submit(&client, *a).await,
        JobsCommand::Status { id, json } => {
            let answer = client.send(client.http().get(client.url(&format!("/v2/jobs/{id}")))).await?;
            if json {
                println!("{}", answer.text.trim_end());
            } else {
                print!("{}", describe(&answer.json));
            }
            Ok(())
        }
        JobsCommand::Wait(w) => wait(&client, &w.id, w.timeout, w.json).await,
        JobsCommand::Cancel { id } => {
            let job = client.delete(&format!("/v2/jobs/{id}")).await?;
            println!("{} {id}", str_of(&job, "status"));
            Ok(())
        }
        JobsCommand::List { model, status, limit, json } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            query.extend(model.map(|m| ("model", m)));
            query.extend(status.map(|s| ("status", s)));
            query.extend(limit.map(|l| ("limit", l.to_string())));
            let answer = client.send(client.http().get(client.url("/v2/jobs")).query(&query)).await?;
            if json {
                println!("{}", answer.text.trim_end());
            } else {
                print!("{}", jobs_table(answer.json["jobs"].as_array().map(Vec::as_slice).unwrap_or_default()));
            }
            Ok(())
        }
    }
}

async fn submit(client: &Client, a: SubmitArgs) -> anyhow::Result<()> {
    let mut body = a.request.body(client).await?;
    if let Some(p) = a.priority {
        body["priority"] = json!(p);
    }
    if let Some(t) = a.ttl_seconds {
        body["ttl_seconds"] = json!(t);
    }
    if let Some(u) = &a.callback_url {
        body["callback_url"] = json!(u);
    }
    let mut req = client.http().post(client.url(&format!("{}/jobs", a.request.model_path()))).json(&body);
    if let Some(k) = &a.idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let answer = client.send(req).await?;
    let id = str_of(&answer.json, "job_id").to_string();
    if id.is_empty() {
        anyhow::bail!("the server accepted the job but sent no job_id: {}", answer.text);
    }
    if a.wait {
        return wait(client, &id, a.timeout, a.json).await;
    }
    if a.json {
        println!("{}", answer.text.trim_end());
    } else {
        println!("{id}");
    }
    Ok(())
}

/// Polls until the job ends, as often as the server's `retry_after_ms` suggests but at least
/// once a second, so that a short job is not waited on for long.
async fn wait(client: &Client, id: &str, timeout: Option<f64>, raw: bool) -> anyhow::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    loop {
        let job = client.get(&format!("/v2/jobs/{id}")).await?;
        let status = str_of(&job, "status");
        match status {
            "completed" => {
                let result = &job["result"];
                print_response(&result.to_string(), result, raw);
                return Ok(());
            }
            "failed" | "cancelled" => {
                let error = str_of(&job, "error");
                let why = if error.is_empty() { String::new() } else { format!(": {error}") };
                return Err(fail(Exit::JobUnsuccessful, format!("job {id} {status}{why}")));
            }
            _ => {}
        }
        let mut pause = Duration::from_millis(job["retry_after_ms"].as_u64().unwrap_or(200).clamp(50, 1000));
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(
                    Exit::TimedOut,
                    format!("job {id} is still {status} after {} s (--timeout)", timeout.unwrap_or(0.0)),
                ));
            }
            pause = pause.min(left);
        }
        tokio::time::sleep(pause).await;
    }
}

/// A job as `key: value` lines, and its result's outputs when it completed.
fn describe(job: &Value) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        if !v.is_empty() {
            let _ = writeln!(out, "{:<10}{v}", format!("{k}:"));
        }
    };
    line("job", str_of(job, "job_id"));
    line("status", str_of(job, "status"));
    let version = str_of(job, "model_version");
    let model = str_of(job, "model_name");
    line("model", &if version.is_empty() { model.to_string() } else { format!("{model} (version {version})") });
    line("priority", &job["priority"].as_u64().map(|p| p.to_string()).unwrap_or_default());
    line("attempts", &job["attempts"].as_u64().map(|p| p.to_string()).unwrap_or_default());
    for (k, field) in [("created", "created_at"), ("started", "started_at"), ("finished", "finished_at")] {
        line(k, str_of(job, field));
    }
    line("expires", str_of(job, "expires_at"));
    line("error", str_of(job, "error"));
    if let Some(w) = job.get("webhook") {
        let deliveries = w["deliveries"].as_array().map_or(0, Vec::len);
        let state = if w["pending"].as_bool() == Some(true) { "pending" } else { "done" };
        line("webhook", &format!("{} ({state}, {deliveries} attempts)", str_of(w, "url")));
    }
    if job.get("result").is_some_and(|r| !r.is_null()) {
        let _ = write!(out, "result:\n{}", outputs_table(&job["result"]));
    }
    out
}

fn jobs_table(jobs: &[Value]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let version = str_of(j, "model_version");
            vec![
                str_of(j, "job_id").to_string(),
                str_of(j, "model_name").to_string(),
                if version.is_empty() { "-".into() } else { version.to_string() },
                str_of(j, "status").to_string(),
                j["priority"].to_string(),
                str_of(j, "created_at").to_string(),
                str_of(j, "error").to_string(),
            ]
        })
        .collect();
    table(&["JOB", "MODEL", "VERSION", "STATUS", "PRIORITY", "CREATED", "ERROR"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_described_field_by_field() {
        let job = json!({"job_id": "j1", "status": "completed", "model_name": "add_sub", "model_version": "1",
            "priority": 5, "attempts": 1, "created_at": "2025-01-01T00:00:00Z", "ttl_seconds": 3600,
            "result": {"outputs": [{"name": "OUT", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}});
        assert_eq!(
            describe(&job),
            "job:      j1\nstatus:   completed\nmodel:    add_sub (version 1)\npriority: 5\nattempts: 1\n\
             created:  2025-01-01T00:00:00Z\nresult:\nNAME  DATATYPE  SHAPE  DATA\nOUT   INT32     [2]    [1, 2]\n"
        );
        let failed = json!({"job_id": "j2", "status": "failed", "model_name": "m", "error": "boom",
            "webhook": {"url": "http://h/", "pending": false, "deliveries": [{}, {}]}});
        let d = describe(&failed);
        assert!(d.contains("error:    boom\n") && d.contains("webhook:  http://h/ (done, 2 attempts)"), "{d}");
    }

    #[test]
    fn listing_is_a_table() {
        let t = jobs_table(&[json!({"job_id": "a", "model_name": "m", "status": "queued", "priority": 1,
            "created_at": "t"})]);
        assert_eq!(
            t,
            "JOB  MODEL  VERSION  STATUS  PRIORITY  CREATED  ERROR\na    m      -        queued  1         t\n"
        );
    }
}
