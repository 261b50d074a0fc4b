//! `sluice endpoints list|status NAME`: the endpoints (`endpoint.yaml`) of a running server,
//! from `GET /v2/endpoints[/{name}]`.

use std::fmt::Write as _;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{str_of, Client, ClientArgs};
use crate::output::table;

#[derive(Args)]
pub struct EndpointsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: EndpointsCommand,
}

#[derive(Subcommand)]
enum EndpointsCommand {
    /// Every endpoint: name, kind, readiness, targets (or why it is not served).
    List,
    /// One endpoint: its targets and what it counted; for a shadow, per shadow: requests,
    /// drops, errors of each side, agreement with its 95 % interval, latency p50/p99 of each side.
    /// Exits 1 when the endpoint is not ready.
    Status {
        name: String,
        /// The server's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: EndpointsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client);
    match args.command {
        EndpointsCommand::List => {
            let list = client.get("/v2/endpoints").await?;
            print!("{}", list_table(list.as_array().map(Vec::as_slice).unwrap_or_default()));
            Ok(())
        }
        EndpointsCommand::Status { name, json } => {
            let report = match client.get(&format!("/v2/endpoints/{name}")).await {
                Ok(r) => r,
                Err(e) if e.to_string().contains("no endpoint named") => bail!("no endpoint '{name}' on the server"),
                Err(e) => return Err(e),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status_text(&report));
            }
            if report["ready"] != Value::Bool(true) {
                bail!("endpoint '{name}' is not ready");
            }
            Ok(())
        }
    }
}

fn targets_of(e: &Value) -> String {
    let mut names: Vec<String> = Vec::new();
    if let Some(p) = e["primary"].as_str() {
        names.push(format!("{p} (primary)"));
    }
    for side in ["baseline", "candidate"] {
        if let Some(t) = e[side]["target"].as_str() {
            names.push(format!("{t} ({side})"));
        }
    }
    for key in ["targets", "shadows"] {
        for t in e[key].as_array().into_iter().flatten() {
            let n = str_of(t, "target").to_string();
            let n = if key == "shadows" { format!("{n} (shadow)") } else { n };
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names.join(", ")
}

fn list_table(entries: &[Value]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let ready = if e["ready"] == Value::Bool(true) { "READY" } else { "UNAVAILABLE" };
            let detail = match e["reason"].as_str() {
                Some(why) => why.to_string(),
                None => targets_of(e),
            };
            vec![str_of(e, "name").to_string(), str_of(e, "kind").to_string(), ready.to_string(), detail]
        })
        .collect();
    table(&["NAME", "KIND", "STATE", "TARGETS / REASON"], &rows)
}

fn num(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    }
}

fn status_text(e: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "endpoint:  {}", str_of(e, "name"));
    if let Some(why) = e["reason"].as_str() {
        let _ = writeln!(out, "ready:     no ({why})");
        return out;
    }
    let _ = writeln!(out, "kind:      {}", str_of(e, "kind"));
    let _ = writeln!(out, "ready:     {}", if e["ready"] == Value::Bool(true) { "yes" } else { "no" });
    if let Some(targets) = e["targets"].as_array() {
        let rows: Vec<Vec<String>> = targets
            .iter()
            .map(|t| {
                vec![
                    str_of(t, "target").to_string(),
                    if t["ready"] == Value::Bool(true) { "yes".into() } else { "no".into() },
                    t["requests"].to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["TARGET", "READY", "REQUESTS"], &rows));
    }
    if let Some(esc) = e["escalated"].as_array() {
        let shown: Vec<String> = esc.iter().map(Value::to_string).collect();
        let _ = writeln!(out, "\nescalated from each stage: {}", shown.join(", "));
    }
    if let Some(p) = e["primary"].as_str() {
        let _ = writeln!(out, "primary:   {p} ({} requests)", e["requests"]);
    }
    for s in e["shadows"].as_array().into_iter().flatten() {
        let c = &s["comparison"];
        let _ = writeln!(out, "\nshadow {} (share {})", str_of(s, "target"), s["share"]);
        let _ =
            writeln!(out, "  copies:       {} ({} dropped, {} completed)", s["requests"], s["dropped"], s["completed"]);
        let _ = writeln!(out, "  errors:       primary {}, shadow {}", s["primary_errors"], s["shadow_errors"]);
        if let Some(why) = s["last_shadow_error"].as_str() {
            let _ = writeln!(out, "  last error:   {why}");
        }
        if let Some(output) = s["compared_output"].as_str() {
            let ci = c["agreement_ci95"].as_array();
            let agreement = match (c["agreement"].as_f64(), ci) {
                (Some(a), Some(ci)) => format!(
                    "{:.2} % (95 % CI {:.2}–{:.2} %) over {} elements",
                    a * 100.0,
                    ci[0].as_f64().unwrap_or(0.0) * 100.0,
                    ci[1].as_f64().unwrap_or(0.0) * 100.0,
                    c["compared_elements"]
                ),
                _ => "-".into(),
            };
            let _ = writeln!(out, "  {output}:  agreement {agreement}");
            if c["numeric_elements"].as_u64().unwrap_or(0) > 0 {
                let _ = writeln!(
                    out,
                    "  differences:  mean |d| {}, max |d| {}",
                    num(&c["mean_abs_diff"], 6),
                    num(&c["max_abs_diff"], 6)
                );
            }
        }
        let (p, q) = (&s["primary_latency_ms"], &s["shadow_latency_ms"]);
        let _ = writeln!(
            out,
            "  latency ms:   primary p50 {} p99 {}, shadow p50 {} p99 {}",
            num(&p["p50"], 2),
            num(&p["p99"], 2),
            num(&q["p50"], 2),
            num(&q["p99"], 2)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_shadow_reads_as_a_person_would_say_it() {
        let report = json!({
            "name": "spam-shadow", "kind": "shadow", "ready": true, "primary": "spam-text", "requests": 10,
            "shadows": [{
                "target": "spam-text-accurate", "share": 1.0, "requests": 10, "dropped": 1, "completed": 9,
                "primary_errors": 0, "shadow_errors": 2, "last_shadow_error": "boom",
                "compared_output": "label",
                "comparison": { "compared_elements": 7, "agreement": 1.0, "agreement_ci95": [0.6457, 1.0],
                                "numeric_elements": 0 },
                "primary_latency_ms": { "p50": 1.5, "p99": 3.0 },
                "shadow_latency_ms": { "p50": 2.5, "p99": null },
            }],
        });
        let text = status_text(&report);
        assert!(text.contains("copies:       10 (1 dropped, 9 completed)"), "{text}");
        assert!(text.contains("label:  agreement 100.00 % (95 % CI 64.57–100.00 %) over 7 elements"), "{text}");
        assert!(text.contains("primary p50 1.50 p99 3.00, shadow p50 2.50 p99 -"), "{text}");
        let listed =
            list_table(&[report, json!({ "name": "bad", "ready": false, "reason": "bad/endpoint.yaml: kind" })]);
        assert!(listed.contains("spam-text (primary), spam-text-accurate (shadow)"), "{listed}");
        assert!(listed.contains("UNAVAILABLE  bad/endpoint.yaml: kind"), "{listed}");
    }
}
