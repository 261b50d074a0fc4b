//! Endpoints declared by `<repo>/<name>/endpoint.yaml`, as the engine keeps them: read at start
//! (all of them, or in explicit mode the `--load-model` ones), loaded and unloaded through the
//! repository API like models, and in poll mode re-read when their file changes or goes away.
//!
//! A load checks what a file alone cannot: that every target exists, that endpoints do not call
//! each other in a cycle, and that the targets loaded now take the same inputs (and have the
//! outputs a cascade or shadow reads). A definition that fails stays listed with its reason, and
//! an endpoint already serving keeps serving when its new definition fails.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use sluice_traffic::definition::{Definition, Target};
use sluice_types::api::ModelMetadata;
use sluice_types::{Endpoint, Resolver, ServeError};

use crate::engine::Engine;

/// One `endpoint.yaml` as last read.
#[derive(Clone)]
pub(crate) struct Declared {
    /// The file's text: a poll re-reads only what changed.
    text: String,
    definition: Option<Definition>,
    /// The endpoint, or why it is not served (`unloaded`, or the load error).
    pub(crate) served: Served,
}

/// An endpoint, or why it is not served.
pub(crate) type Served = Result<Arc<dyn Endpoint>, String>;

pub(crate) type EndpointTable = BTreeMap<String, Declared>;

/// What an endpoint load or poll is asked to do.
#[derive(Clone, Copy, PartialEq)]
enum Reread {
    /// Read the named files again even when unchanged (an explicit load).
    Always,
    /// Only files whose text changed or whose last load failed (a poll).
    Changed,
}

impl Engine {
    /// Reads the endpoints to serve at start: every one, or in explicit mode those named by
    /// `--load-model`.
    /// In explicit mode the models they need are loaded first, as Triton loads an ensemble's
    /// composing models.
    pub async fn load_endpoints(&self) {
        let opts = self.repository().options();
        let mut found = sluice_repository::scan_endpoints(&opts.roots);
        if opts.control_mode == sluice_repository::ControlMode::Explicit {
            found.retain(|(n, _)| opts.startup_models.contains(n) || opts.startup_models.iter().any(|m| m == "*"));
            for (name, file) in &found {
                self.load_targets_of(name, file).await;
            }
        }
        let names: Vec<String> = found.into_iter().map(|(name, _)| name).collect();
        self.reread_endpoints(&names, Reread::Always);
    }

    /// Poll mode, one scan of the repositories: models first (an object-storage repository is
    /// synced then), then endpoints, which may name the models just loaded.
    pub async fn poll(&self) {
        self.repository().poll().await;
        self.poll_endpoints();
    }

    /// New and changed definitions are read, removed ones are no longer served.
    fn poll_endpoints(&self) {
        let names: Vec<String> = sluice_repository::scan_endpoints(&self.repository().options().roots)
            .into_iter()
            .map(|(name, _)| name)
            .chain(self.endpoints.read().keys().cloned())
            .collect();
        self.reread_endpoints(&names, Reread::Changed);
    }

    /// The file declaring `name` when it is an endpoint directory of a repository.
    pub(crate) fn endpoint_dir(&self, name: &str) -> Option<std::path::PathBuf> {
        sluice_repository::scan_endpoints(&self.repository().options().roots)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, file)| file)
    }

    /// Loads the models `name`'s definition sends traffic to that are not loaded yet, as Triton
    /// does for an ensemble's composing models. A model that fails leaves the endpoint unready
    /// (the load of the endpoint says why).
    pub(crate) async fn load_targets_of(&self, name: &str, file: &std::path::Path) {
        let endpoint_dirs = sluice_repository::scan_endpoints(&self.repository().options().roots);
        for (model, version) in model_targets(file, name) {
            if self.endpoints.read().contains_key(&model) || endpoint_dirs.iter().any(|(n, _)| *n == model) {
                continue;
            }
            if self.resolve_model(&model, version.as_deref()).is_err() && self.repository().is_known(&model) {
                if let Err(e) = self.repository().load(&model, None).await {
                    tracing::error!(endpoint = %name, model = %model, error = %e, "failed to load a model of the endpoint");
                }
            }
        }
    }

    /// Stops serving the endpoints that send traffic to `model` (`unload_dependents`).
    pub(crate) fn unload_dependents_of(&self, model: &str) {
        let dependents: Vec<String> = self
            .endpoints
            .read()
            .iter()
            .filter(|(_, d)| d.served.is_ok())
            .filter(|(_, d)| {
                d.definition.as_ref().is_some_and(|def| {
                    def.targets().iter().any(|t| matches!(t, Target::Model { name, .. } if name == model))
                })
            })
            .map(|(n, _)| n.clone())
            .collect();
        for d in dependents {
            self.unload_endpoint(&d);
        }
    }

    /// Loads (or reloads) one endpoint; its load error is the answer's.
    pub(crate) fn load_endpoint(&self, name: &str) -> Result<(), ServeError> {
        if let Some(why) = self.reread_endpoints(&[name.to_string()], Reread::Always).remove(name) {
            return Err(ServeError::invalid(format!("failed to load '{name}': {why}")));
        }
        match self.endpoints.read().get(name) {
            Some(_) => Ok(()),
            None => Err(ServeError::model_not_found(name, None)),
        }
    }

    /// Stops serving an endpoint; it stays listed as unloaded.
    pub(crate) fn unload_endpoint(&self, name: &str) -> bool {
        let _serial = self.endpoint_loads.lock();
        let mut table = self.endpoints.write();
        match table.get_mut(name) {
            Some(d) => {
                d.served = Err("unloaded".into());
                tracing::info!(endpoint = %name, "endpoint unloaded");
                true
            }
            None => false,
        }
    }

    /// Reads `names` again; returns the load errors by name (an endpoint that was serving keeps
    /// serving through them).
    fn reread_endpoints(&self, names: &[String], how: Reread) -> BTreeMap<String, String> {
        // Loads are rare and short; one at a time keeps each read-modify-write whole.
        let _serial = self.endpoint_loads.lock();
        let found: BTreeMap<String, std::path::PathBuf> =
            sluice_repository::scan_endpoints(&self.repository().options().roots).into_iter().collect();
        let mut table = self.endpoints.read().clone();
        let mut changed = Vec::new();
        let mut errors = BTreeMap::new();
        for name in names {
            let Some(file) = found.get(name) else {
                if table.remove(name).is_some() {
                    tracing::info!(endpoint = %name, "endpoint removed from the repository");
                }
                continue;
            };
            let shown = format!("{name}/{}", file.file_name().unwrap_or_default().to_string_lossy());
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let old = table.get(name);
            let unchanged = old.is_some_and(|d| {
                d.text == text && (d.served.is_ok() || d.served.as_ref().is_err_and(|e| e == "unloaded"))
            });
            if how == Reread::Changed && unchanged {
                continue;
            }
            match parse(&shown, file, &text) {
                Ok(def) => {
                    table.insert(name.clone(), Declared { text, definition: Some(def), served: Err("loading".into()) });
                    changed.push(name.clone());
                }
                // An endpoint that serves keeps serving through a bad edit.
                Err(e) if old.is_some_and(|d| d.served.is_ok()) => {
                    tracing::error!(endpoint = %name, error = %e, "new definition refused; the old one keeps serving");
                    errors.insert(name.clone(), e);
                }
                Err(e) => {
                    tracing::error!(endpoint = %name, error = %e, "endpoint failed to load");
                    table.insert(name.clone(), Declared { text, definition: None, served: Err(e.clone()) });
                    errors.insert(name.clone(), e);
                }
            }
        }
        for name in &changed {
            let Some(def) = table.get(name).and_then(|d| d.definition.clone()) else { continue };
            let file = found.get(name).and_then(|f| f.file_name()).unwrap_or_default().to_string_lossy();
            let shown = format!("{name}/{file}");
            let served = self.build_endpoint(name, &shown, def, &table);
            match &served {
                Ok(_) => tracing::info!(endpoint = %name, "endpoint loaded"),
                Err(why) => {
                    tracing::error!(endpoint = %name, error = %why, "endpoint failed to load");
                    errors.insert(name.clone(), why.clone());
                }
            }
            let serving = self.endpoints.read().get(name).filter(|d| d.served.is_ok()).cloned();
            match (served, serving) {
                (Err(_), Some(old)) => {
                    table.insert(name.clone(), old);
                }
                (served, _) => {
                    if let Some(d) = table.get_mut(name) {
                        d.served = served;
                    }
                }
            }
        }
        *self.endpoints.write() = table;
        errors
    }

    /// Checks a parsed definition against the models and the other endpoints, and makes it.
    fn build_endpoint(
        &self,
        name: &str,
        shown: &str,
        def: Definition,
        table: &EndpointTable,
    ) -> Result<Arc<dyn Endpoint>, String> {
        let defs: BTreeMap<String, Definition> =
            table.iter().filter_map(|(n, d)| Some((n.clone(), d.definition.clone()?))).collect();
        if let Some(cycle) = cycle_from(name, &defs) {
            return Err(format!("{shown}: endpoints call each other in a cycle: {cycle}"));
        }
        for (path, t) in def.targets_at() {
            match t {
                Target::Model { name: m, version } if table.contains_key(m) => {
                    if let Some(v) = version {
                        return Err(format!("{shown}: {path}: '{m}' is an endpoint, which has no version {v}"));
                    }
                }
                Target::Model { name: m, .. } => {
                    if !self.repository().is_known(m) {
                        return Err(format!("{shown}: {path}: no model or endpoint named '{m}' in the repository"));
                    }
                }
                Target::Endpoint(e) => {
                    if !table.contains_key(e) {
                        return Err(format!("{shown}: {path}: no endpoint named '{e}' in the repository"));
                    }
                }
            }
        }
        def.check_signatures(shown, |t| self.target_metadata(t, table))?;
        let resolver: Weak<dyn Resolver> = self.me.clone();
        sluice_traffic::build(name, def, resolver, &self.traffic).map_err(|e| e.to_string())
    }

    /// A target's metadata when it is ready now (a target still loading is checked at its turn).
    fn target_metadata(&self, t: &Target, table: &EndpointTable) -> Option<ModelMetadata> {
        let endpoint = match t {
            Target::Model { name, version: None } | Target::Endpoint(name) if table.contains_key(name) => {
                table[name].served.as_ref().ok().cloned()?
            }
            Target::Model { name, version } => self.resolve_model(name, version.as_deref()).ok()?,
            Target::Endpoint(_) => return None,
        };
        endpoint.ready().then(|| endpoint.metadata())
    }
}

/// The definition in `file`: an `endpoint.yaml`, or a Triton ensemble's config (`shown` names it
/// in errors).
fn parse(shown: &str, file: &std::path::Path, text: &str) -> Result<Definition, String> {
    if file.file_name().is_some_and(|f| f == sluice_repository::ENDPOINT_FILE) {
        return sluice_traffic::definition::parse(shown, text);
    }
    let format = sluice_repository::config::ConfigFormat::from_path(file)
        .unwrap_or(sluice_repository::config::ConfigFormat::Pbtxt);
    let mut config =
        sluice_repository::config::parse_model_config(text, format).map_err(|e| format!("{shown}: {e}"))?;
    if config.name.is_empty() {
        config.name = shown.split('/').next().unwrap_or_default().to_string();
    }
    let spec = sluice_traffic::ensemble::Spec::from_config(shown, config)?;
    // Triton serves an ensemble from a directory holding an empty `1/`.
    let mut versions: Vec<u64> = file
        .parent()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    Ok(Definition::Ensemble { spec, versions: versions.iter().map(u64::to_string).collect() })
}

/// The models an endpoint's file names as targets (read without loading it), for loading them
/// first; empty when the file does not parse.
pub(crate) fn model_targets(file: &std::path::Path, name: &str) -> Vec<(String, Option<String>)> {
    let shown = format!("{name}/{}", file.file_name().unwrap_or_default().to_string_lossy());
    let Ok(text) = std::fs::read_to_string(file) else { return Vec::new() };
    let Ok(def) = parse(&shown, file, &text) else { return Vec::new() };
    def.targets()
        .into_iter()
        .filter_map(|t| match t {
            Target::Model { name, version } => Some((name.clone(), version.clone())),
            Target::Endpoint(_) => None,
        })
        .collect()
}

/// The chain of endpoint names that leads from `start` back to itself, if any.
pub(crate) fn cycle_from(start: &str, defs: &BTreeMap<String, Definition>) -> Option<String> {
    fn walk<'a>(at: &'a str, start: &str, defs: &'a BTreeMap<String, Definition>, path: &mut Vec<&'a str>) -> bool {
        let Some(def) = defs.get(at) else { return false };
        for t in def.targets() {
            let next = match t {
                Target::Endpoint(n) => n.as_str(),
                // A model target named like an endpoint resolves to the endpoint too.
                Target::Model { name, version: None } => name.as_str(),
                Target::Model { .. } => continue,
            };
            if next == start {
                path.push(next);
                return true;
            }
            if path.contains(&next) {
                continue;
            }
            path.push(next);
            if walk(next, start, defs, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![start];
    walk(start, start, defs, &mut path).then(|| path.join(" -> "))
}
