//! `sluice models list|status|load|unload`: the model repository API of a running server, from
//! the command line. Failures print the server's own message and exit as `client::Exit` says.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sluice_repository::config::{parse_model_config, ConfigFormat};

use crate::client::{str_of, Client, ClientArgs};
use crate::output::{shape, table};

#[derive(Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Every model of the repositories and every loaded version: name, version, state, reason.
    List {
        /// Only ready versions.
        #[arg(long)]
        ready: bool,
    },
    /// Readiness, versions, inputs and outputs, and the key statistics of one model.
    /// Exits 1 when the model is not ready.
    Status {
        name: String,
        /// One version instead of the newest ready one.
        #[arg(long)]
        version: Option<String>,
    },
    /// Load or reload a model, optionally with a config that replaces the one on disk.
    Load {
        name: String,
        /// Config file: JSON as the API takes it, or config.pbtxt / YAML (converted to JSON).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Unload a model once its in-flight requests finish.
    Unload {
        name: String,
        /// Also unload the models that depend on it.
        #[arg(long)]
        unload_dependents: bool,
    },
}

pub async fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client);
    match args.command {
        ModelsCommand::List { ready } => {
            let index = client.post("/v2/repository/index", &json!({ "ready": ready })).await?;
            print!("{}", index_table(index.as_array().map(Vec::as_slice).unwrap_or_default()));
            Ok(())
        }
        ModelsCommand::Status { name, version } => status(&client, &name, version.as_deref()).await,
        ModelsCommand::Load { name, config } => {
            let body = match &config {
                None => json!({}),
                Some(path) => json!({ "parameters": { "config": config_json(path)? } }),
            };
            client.post(&format!("/v2/repository/models/{name}/load"), &body).await?;
            println!("loaded {name}");
            Ok(())
        }
        ModelsCommand::Unload { name, unload_dependents } => {
            let body = json!({ "parameters": { "unload_dependents": unload_dependents } });
            client.post(&format!("/v2/repository/models/{name}/unload"), &body).await?;
            println!("unloaded {name}");
            Ok(())
        }
    }
}

/// The config to send: a JSON file as it is (checked to parse), a pbtxt or YAML file parsed
/// and written as JSON.
fn config_json(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let format = ConfigFormat::from_path(path).unwrap_or(ConfigFormat::Json);
    if format == ConfigFormat::Json {
        serde_json::from_str::<Value>(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        return Ok(text);
    }
    let config = parse_model_config(&text, format).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(serde_json::to_string(&config)?)
}

fn index_table(entries: &[Value]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let version = str_of(e, "version");
            vec![
                str_of(e, "name").to_string(),
                if version.is_empty() { "-".into() } else { version.to_string() },
                str_of(e, "state").to_string(),
                str_of(e, "reason").to_string(),
            ]
        })
        .collect();
    table(&["NAME", "VERSION", "STATE", "REASON"], &rows)
}

fn tensors(v: &Value) -> String {
    let ts: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("{} {} {}", str_of(t, "name"), str_of(t, "datatype"), shape(&t["shape"])))
        .collect();
    ts.join(", ")
}

/// Mean of a `{count, ns}` duration, in milliseconds.
fn mean_ms(d: &Value) -> String {
    let count = d["count"].as_u64().unwrap_or(0);
    let ns = d["ns"].as_u64().unwrap_or(0);
    if count == 0 {
        "-".into()
    } else {
        format!("{:.3} ms", ns as f64 / count as f64 / 1e6)
    }
}

async fn status(client: &Client, name: &str, version: Option<&str>) -> anyhow::Result<()> {
    let index = client.post("/v2/repository/index", &json!({})).await?;
    let entries: Vec<Value> =
        index.as_array().into_iter().flatten().filter(|e| str_of(e, "name") == name).cloned().collect();
    if entries.is_empty() {
        bail!("no model '{name}' in the server's repositories");
    }
    let path = match version {
        Some(v) => format!("/v2/models/{name}/versions/{v}"),
        None => format!("/v2/models/{name}"),
    };
    let mut out = String::new();
    let _ = writeln!(out, "model:     {name}");
    match client.get(&path).await {
        Ok(meta) => {
            let versions: Vec<&str> =
                meta["versions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let _ = writeln!(out, "ready:     yes");
            let _ = writeln!(out, "versions:  {} (ready)", versions.join(", "));
            let _ = writeln!(out, "platform:  {}", str_of(&meta, "platform"));
            let _ = writeln!(out, "inputs:    {}", tensors(&meta["inputs"]));
            let _ = writeln!(out, "outputs:   {}", tensors(&meta["outputs"]));
            let stats = client.get(&format!("{path}/stats")).await?;
            for s in stats["model_stats"].as_array().into_iter().flatten() {
                let i = &s["inference_stats"];
                let _ = writeln!(out, "version {}:", str_of(s, "version"));
                let _ = writeln!(
                    out,
                    "  requests:    {} ok, {} failed",
                    i["success"]["count"].as_u64().unwrap_or(0),
                    i["fail"]["count"].as_u64().unwrap_or(0)
                );
                let _ = writeln!(
                    out,
                    "  inferences:  {} in {} executions",
                    s["inference_count"].as_u64().unwrap_or(0),
                    s["execution_count"].as_u64().unwrap_or(0)
                );
                let _ = writeln!(
                    out,
                    "  mean:        request {}, queue {}, compute {}",
                    mean_ms(&i["success"]),
                    mean_ms(&i["queue"]),
                    mean_ms(&i["compute_infer"])
                );
            }
            print!("{out}");
            if !entries.iter().all(|e| str_of(e, "reason").is_empty()) {
                print!("{}", index_table(&entries));
            }
            Ok(())
        }
        Err(_) => {
            let _ = writeln!(out, "ready:     no");
            print!("{out}{}", index_table(&entries));
            bail!("model '{name}' is not ready")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_all_but_the_last_column() {
        let t = index_table(&[
            json!({"name": "add_sub", "version": "1", "state": "READY", "reason": ""}),
            json!({"name": "broken", "state": "UNAVAILABLE", "reason": "not an onnx file"}),
        ]);
        assert_eq!(
            t,
            "NAME     VERSION  STATE        REASON\n\
             add_sub  1        READY\n\
             broken   -        UNAVAILABLE  not an onnx file\n"
        );
    }

    #[test]
    fn pbtxt_config_becomes_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.pbtxt");
        std::fs::write(&p, "name: \"m\" max_batch_size: 4 input [ { name: \"X\" data_type: TYPE_FP32 dims: [ 2 ] } ]")
            .unwrap();
        let v: Value = serde_json::from_str(&config_json(&p).unwrap()).unwrap();
        assert_eq!(v["max_batch_size"], 4);
        assert_eq!(v["input"][0]["dims"], json!([2]));
        let bad = dir.path().join("c.json");
        std::fs::write(&bad, "{ nope").unwrap();
        assert!(config_json(&bad).unwrap_err().to_string().contains("not valid JSON"));
    }
}
