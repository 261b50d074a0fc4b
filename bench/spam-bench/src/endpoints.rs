//! What `cascade` and `shadow-cost` share: a temporary repository made by
//! `scripts/make_models_repo.sh` with endpoint definitions added (`<name>/endpoint.yaml`), and a
//! `sluice serve` on it with the text models and the endpoints loaded.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sluice_backend::onnx::find_library;

use crate::compare::{sluice_bin, Server};
use crate::load;
use crate::text_ids::make_repository;

/// The text classifiers of `scripts/make_models_repo.sh` (server-side tokenization).
pub const FAST: &str = "spam-text";
pub const ACCURATE: &str = "spam-text-accurate";
/// Their BYTES input.
pub const TEXT_INPUT: &str = "TEXT";

/// A server on a temporary repository; the repository (and the server's log) go with it unless
/// kept.
pub struct Served {
    pub server: Server,
    pub tmp: tempfile::TempDir,
}

impl Served {
    /// Builds the repository (`scripts/make_models_repo.sh` plus `endpoints`: name and YAML),
    /// appends `extra` (model, config text) to those models' `config.pbtxt`, starts Sluice on it
    /// (explicit mode), and loads `models`, then `endpoints`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        bin: Option<&Path>,
        models_dir: &Path,
        ort_lib: Option<&Path>,
        threads: usize,
        rt: &tokio::runtime::Runtime,
        models: &[&str],
        endpoints: &[(String, String)],
        extra: &[(&str, String)],
    ) -> Result<Served> {
        let bin = sluice_bin(bin)?;
        let lib = find_library(ort_lib).map_err(|e| anyhow!("{e}"))?;
        let tmp = tempfile::Builder::new().prefix("spam-bench-endpoints-").tempdir()?;
        let repo = tmp.path().join("models");
        make_repository(&repo, models_dir)?;
        for (m, more) in extra {
            let config = repo.join(m).join("config.pbtxt");
            let mut text = fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
            text.push('\n');
            text.push_str(more);
            text.push('\n');
            fs::write(&config, text)?;
        }
        for (name, yaml) in endpoints {
            let dir = repo.join(name);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("endpoint.yaml"), yaml).with_context(|| format!("writing {name}/endpoint.yaml"))?;
        }
        let mut server = Server::start(&bin, &repo, &lib, threads, tmp.path().join("sluice.log"))?;
        rt.block_on(async {
            server.wait_live().await?;
            for m in models {
                if let Err(why) = server.load_model(m).await {
                    bail!("loading {m}: {why}\n{}", server.log_tail());
                }
            }
            for (name, _) in endpoints {
                load_endpoint(&server, name).await?;
            }
            Ok(())
        })?;
        Ok(Served { server, tmp })
    }

    /// Keeps the repository and log, printing where.
    pub fn keep(self) {
        let Served { server, tmp } = self;
        drop(server);
        let kept = tmp.keep();
        eprintln!("kept the model repository and server log in {}", kept.display());
    }
}

/// Loads an endpoint through the repository API, as a model. A server that reads every endpoint
/// at start instead (and may refuse the load of a directory that holds no versions) passes when
/// the endpoint answers ready.
async fn load_endpoint(server: &Server, name: &str) -> Result<()> {
    let load = server.load_model(name).await;
    let ready = model_ready(&server.target.http, name).await;
    match (load, ready) {
        (_, true) => Ok(()),
        (Ok(()), false) => bail!("endpoint {name} loaded but is not ready\n{}", server.log_tail()),
        (Err(why), false) => bail!("endpoint {name} is not served: {why}\n{}", server.log_tail()),
    }
}

async fn model_ready(http: &str, name: &str) -> bool {
    matches!(load::http_call(http, "GET", &format!("/v2/models/{name}/ready"), None).await, Ok((200, _)))
}

/// `GET /v2/endpoints/{name}`: the endpoint's traffic report.
pub async fn endpoint_report(http: &str, name: &str) -> Result<Value> {
    let (status, body) = load::http_call(http, "GET", &format!("/v2/endpoints/{name}"), None).await?;
    if status != 200 {
        bail!("GET /v2/endpoints/{name}: HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(serde_json::from_slice(&body)?)
}

/// The first shadow's counters in an endpoint report: (requests, dropped, completed).
pub fn shadow_counters(report: &Value) -> (u64, u64, u64) {
    let s = &report["shadows"][0];
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    (n("requests"), n("dropped"), n("completed"))
}

/// Waits until every copy a shadow endpoint queued has run (completed + dropped = requests), so
/// that the next measurement does not share the machine with a backlog; returns the seconds it
/// took, or an error after `limit`.
pub async fn shadow_drained(http: &str, name: &str, limit: Duration) -> Result<f64> {
    let start = tokio::time::Instant::now();
    loop {
        let (requests, dropped, completed) = shadow_counters(&endpoint_report(http, name).await?);
        if completed + dropped >= requests {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > limit {
            bail!(
                "shadow of {name} still busy after {limit:?}: {requests} copies, {dropped} dropped, {completed} done"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/proc/loadavg`'s first three fields: what else the machine was doing.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
