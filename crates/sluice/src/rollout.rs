//! `sluice rollout status|pause|resume|promote|rollback NAME`: a rollout endpoint of a running
//! server, through `GET /v2/endpoints/{name}/rollout` and
//! `POST /v2/endpoints/{name}/rollout/{action}`.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{str_of, Client, ClientArgs};

#[derive(Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// The phase and step, time in step, traffic, each guardrail's value, threshold and verdict,
    /// and the history.
    Status {
        name: String,
        /// The server's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Holds the step's traffic and stops advancing.
    Pause(Command),
    /// Goes back to the paused step, its hold restarted.
    Resume(Command),
    /// Sends all traffic to the candidate, for good.
    Promote(Command),
    /// Sends all traffic to the baseline, for good.
    Rollback(Command),
}

#[derive(Args)]
struct Command {
    name: String,
    /// Why: kept in the rollout's history.
    #[arg(long)]
    reason: String,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: RolloutArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client);
    let (status, json) = match args.command {
        RolloutCommand::Status { name, json } => (client.get(&format!("/v2/endpoints/{name}/rollout")).await?, json),
        RolloutCommand::Pause(c) => (command(&client, "pause", &c).await?, c.json),
        RolloutCommand::Resume(c) => (command(&client, "resume", &c).await?, c.json),
        RolloutCommand::Promote(c) => (command(&client, "promote", &c).await?, c.json),
        RolloutCommand::Rollback(c) => (command(&client, "rollback", &c).await?, c.json),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status_text(&status));
    }
    Ok(())
}

async fn command(client: &Client, action: &str, c: &Command) -> anyhow::Result<Value> {
    client.post(&format!("/v2/endpoints/{}/rollout/{action}", c.name), &json!({ "reason": c.reason })).await
}

/// A phase as the server serializes it (`"pending"`, `{"step": 1}`, `{"paused": {...}}`).
fn phase_text(p: &Value) -> String {
    if let Some(k) = p.get("step").and_then(Value::as_u64) {
        return format!("step {k}");
    }
    if let Some(paused) = p.get("paused") {
        let by = if paused["by_failure"] == Value::Bool(true) { " (by a failing guardrail)" } else { "" };
        return format!("paused at step {}{by}", paused["step"]);
    }
    p.as_str().map(|s| s.replace('_', " ")).unwrap_or_else(|| p.to_string())
}

/// A number as people write it: `5`, `0.5` (JSON has `5.0`).
fn plain(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x}")).unwrap_or_else(|| "-".into())
}

fn seconds(ms: &Value) -> String {
    ms.as_u64().map(|ms| format!("{:.1}s", ms as f64 / 1e3)).unwrap_or_else(|| "-".into())
}

fn number(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into())
}

fn status_text(r: &Value) -> String {
    let s = &r["status"];
    let mut out = String::new();
    let _ = writeln!(out, "rollout:    {}", str_of(r, "name"));
    let _ = writeln!(out, "baseline:   {}", str_of(&r["baseline"], "target"));
    let _ = writeln!(out, "candidate:  {}", str_of(&r["candidate"], "target"));
    let mut phase = phase_text(&s["phase"]);
    if s["step"].is_u64() {
        let _ = write!(phase, " of {}", s["steps"]);
        let e = &s["step_definition"]["exposure"];
        if let Some(share) = e.get("shadow").map(|x| &x["share"]) {
            let _ = write!(phase, " (shadow, share {})", plain(share));
        } else if let Some(percent) = e.get("weight").map(|x| &x["percent"]) {
            let _ = write!(phase, " (weight {}%)", plain(percent));
        }
    }
    let _ = writeln!(out, "phase:      {phase}");
    let t = &s["traffic"];
    let _ = writeln!(
        out,
        "traffic:    candidate {}%, shadow share {}",
        plain(&t["candidate_percent"]),
        plain(&t["shadow_share"])
    );
    if s["step"].is_u64() {
        let _ = writeln!(
            out,
            "in step:    {} (hold left {}), candidate requests {} (needed {})",
            seconds(&s["time_in_step_ms"]),
            seconds(&s["hold_remaining_ms"]),
            s["candidate_requests_in_step"],
            s["requests_needed"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
        );
    }
    let _ = writeln!(out, "guardrails:");
    for g in s["guardrails"].as_array().into_iter().flatten() {
        let verdict = g["verdict"].as_str().unwrap_or("no reading");
        let _ = writeln!(
            out,
            "  {:<24} {:>10} {:<15} value {:>10}  {verdict}{}",
            str_of(g, "guardrail"),
            str_of(g, "limit"),
            number(&g["threshold"]),
            number(&g["value"]),
            if g["required"] == Value::Bool(true) { " (required to advance)" } else { "" },
        );
    }
    let _ = writeln!(out, "history:");
    for h in s["history"].as_array().into_iter().flatten() {
        let at = h["at_ms"].as_u64().unwrap_or(0);
        let when = utc_text(at);
        let _ = writeln!(
            out,
            "  {when}  {} -> {}  [{}] {}",
            phase_text(&h["from"]),
            phase_text(&h["to"]),
            str_of(h, "cause"),
            str_of(h, "reason")
        );
    }
    out
}

/// `2026-12-07T21:04:05Z` from Unix milliseconds (days to a civil date, Howard Hinnant's
/// algorithm), without a date crate for one line.
fn utc_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_phases_read_as_people_write_them() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_text(1_796_677_445_000), "2026-12-07T21:04:05Z");
        assert_eq!(phase_text(&json!("rolled_back")), "rolled back");
        assert_eq!(phase_text(&json!({"step": 2})), "step 2");
        assert_eq!(
            phase_text(&json!({"paused": {"step": 1, "by_failure": true}})),
            "paused at step 1 (by a failing guardrail)"
        );
    }
}
