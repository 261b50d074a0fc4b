//! `sluice experiment status|stop NAME`: an experiment endpoint of a running server, through
//! `GET /v2/endpoints/{name}/experiment` and `POST /v2/endpoints/{name}/experiment/stop`.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{str_of, Client, ClientArgs};

#[derive(Args)]
pub struct ExperimentArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: ExperimentCommand,
}

#[derive(Subcommand)]
enum ExperimentCommand {
    /// Per arm: units, each metric's rate or mean with its 95 % interval; the differences with
    /// their p-values (fixed and always-valid), the planned size, SRM and the verdict.
    Status {
        name: String,
        /// The server's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Ends the experiment: from now on ARM (default: the control) answers every request.
    Stop {
        name: String,
        #[arg(long)]
        arm: Option<String>,
        /// Why: kept with the experiment.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: ExperimentArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client);
    let (report, json) = match args.command {
        ExperimentCommand::Status { name, json } => {
            (client.get(&format!("/v2/endpoints/{name}/experiment")).await?, json)
        }
        ExperimentCommand::Stop { name, arm, reason, json } => (
            client
                .post(&format!("/v2/endpoints/{name}/experiment/stop"), &json!({ "arm": arm, "reason": reason }))
                .await?,
            json,
        ),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report_text(&report));
    }
    Ok(())
}

fn num(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into())
}

fn interval(v: &Value) -> String {
    match (v["lower"].as_f64(), v["upper"].as_f64()) {
        (Some(l), Some(u)) => format!("[{l:.4}, {u:.4}]"),
        _ => "-".into(),
    }
}

fn report_text(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "experiment: {} ({})", str_of(r, "name"), str_of(r, "state"));
    for a in r["arms"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  arm {:<12} {:<20} weight {:<6} units {}",
            str_of(a, "name"),
            str_of(a, "target"),
            a["weight"],
            a["units"]
        );
    }
    let planned = r["planned_units_per_arm"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "planned units per arm: {planned}; SRM p = {}", num(&r["srm_p"]));
    for m in r["metrics"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "metric {}:", str_of(m, "metric"));
        for a in m["arms"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {:<12} n {:<8} {} 95% {}",
                str_of(a, "arm"),
                a["n"],
                num(&a["estimate"]),
                interval(&a["interval_95"])
            );
        }
        for d in m["differences"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {} - control: {} {} p {} ({}); always-valid p {}{}",
                str_of(d, "arm"),
                num(&d["diff"]),
                interval(&d["interval"]),
                num(&d["p_value"]),
                str_of(d, "test"),
                num(&d["always_valid_p"]),
                if d["concluded"] == Value::Bool(true) { ", concluded" } else { "" }
            );
        }
    }
    let _ = writeln!(out, "verdict: {}", str_of(r, "verdict"));
    out
}
