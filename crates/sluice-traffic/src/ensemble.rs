//! Triton ensembles: a model directory whose config says `platform: "ensemble"` and lists
//! `ensemble_scheduling { step [...] }`, loaded unchanged from a Triton repository. Each step
//! runs a model on tensors of the ensemble (`input_map`: the model's input ← an ensemble tensor;
//! `output_map`: the model's output → an ensemble tensor). Steps form a graph through the tensors
//! they read and write: a step starts as soon as its inputs exist, so independent steps run at
//! the same time, as Triton's ensemble scheduler does.
//!
//! [`Spec::from_config`] checks the graph when the ensemble loads (every tensor a step reads is
//! an ensemble input or written by exactly one step, every ensemble output is written, no step
//! waits on itself); [`runnable`] is the scheduling decision, a pure function.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::{
    Answer, Endpoint, InferRequest, InferResponse, ModelConfig, RequestContext, RequestedOutput, Resolver, ServeError,
    Tensor, Timings, TrafficCounter,
};

use crate::definition::Target;
use crate::own_stats::{extend_unique, OwnStats};
use crate::policy::{requests_by_target, resolve_target, target_key};

/// One step: a model, and how its tensors are named in the ensemble.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// A model (version `None`: the newest ready one, Triton's `model_version: -1`).
    pub target: Target,
    /// (the model's input, the ensemble tensor it reads)
    pub inputs: Vec<(String, String)>,
    /// (the model's output, the ensemble tensor it writes)
    pub outputs: Vec<(String, String)>,
}

impl Step {
    pub fn model(&self) -> &str {
        match &self.target {
            Target::Model { name, .. } | Target::Endpoint(name) => name,
        }
    }
}

/// A checked ensemble: its own configuration and its steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub config: Arc<ModelConfig>,
    pub steps: Vec<Step>,
}

impl Spec {
    /// Reads the steps of `config` (a Triton ensemble's); `file` names it in errors.
    pub fn from_config(file: &str, config: ModelConfig) -> Result<Spec, String> {
        let sched = config
            .ensemble_scheduling
            .as_ref()
            .ok_or_else(|| format!("{file}: platform \"ensemble\" needs 'ensemble_scheduling'"))?;
        let raw = sched["step"]
            .as_array()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{file}: ensemble_scheduling.step: an ensemble needs at least one step"))?;
        let mut steps = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let path = format!("ensemble_scheduling.step[{i}]");
            let model = s["model_name"]
                .as_str()
                .filter(|m| !m.is_empty())
                .ok_or_else(|| format!("{file}: {path}.model_name is required"))?
                .to_string();
            let version = match &s["model_version"] {
                Value::Null => None,
                Value::Number(n) if n.as_i64() == Some(-1) => None,
                Value::Number(n) if n.as_i64().is_some_and(|v| v > 0) => Some(n.to_string()),
                Value::String(v) if v == "-1" => None,
                Value::String(v) if v.parse::<u64>().is_ok_and(|v| v > 0) => Some(v.clone()),
                v => return Err(format!("{file}: {path}.model_version: expected -1 or a version number, got {v}")),
            };
            let map = |key: &str| -> Result<Vec<(String, String)>, String> {
                let m = s[key]
                    .as_object()
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| format!("{file}: {path}.{key}: a step maps at least one tensor"))?;
                m.iter()
                    .map(|(k, v)| match v.as_str() {
                        Some(v) if !v.is_empty() => Ok((k.clone(), v.to_string())),
                        _ => Err(format!("{file}: {path}.{key}: '{k}' needs an ensemble tensor name, got {v}")),
                    })
                    .collect()
            };
            let target = Target::Model { name: model, version };
            steps.push(Step { target, inputs: map("input_map")?, outputs: map("output_map")? });
        }
        let spec = Spec { config: Arc::new(config), steps };
        spec.check_graph(file)?;
        Ok(spec)
    }

    fn check_graph(&self, file: &str) -> Result<(), String> {
        let inputs: HashSet<&str> = self.config.input.iter().map(|t| t.name.as_str()).collect();
        let mut writer: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            for (_, tensor) in &s.outputs {
                if inputs.contains(tensor.as_str()) {
                    return Err(format!(
                        "{file}: ensemble_scheduling.step[{i}].output_map: '{tensor}' is an input of the ensemble"
                    ));
                }
                if let Some(j) = writer.insert(tensor, i) {
                    return Err(format!(
                        "{file}: ensemble_scheduling.step[{i}].output_map: '{tensor}' is written by step {j} too"
                    ));
                }
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            for (_, tensor) in &s.inputs {
                if !inputs.contains(tensor.as_str()) && !writer.contains_key(tensor.as_str()) {
                    return Err(format!(
                        "{file}: ensemble_scheduling.step[{i}].input_map: '{tensor}' is neither an input of the \
                         ensemble nor written by a step"
                    ));
                }
            }
        }
        for o in &self.config.output {
            if !writer.contains_key(o.name.as_str()) {
                return Err(format!("{file}: output '{}' of the ensemble is not written by any step", o.name));
            }
        }
        // Every step must become runnable from the ensemble's inputs alone.
        let mut have: HashSet<String> = inputs.iter().map(|s| s.to_string()).collect();
        let mut started = vec![false; self.steps.len()];
        loop {
            let next = runnable(&self.steps, &have, &started);
            if next.is_empty() {
                break;
            }
            for i in next {
                started[i] = true;
                have.extend(self.steps[i].outputs.iter().map(|(_, t)| t.clone()));
            }
        }
        match started.iter().position(|s| !s) {
            Some(i) => Err(format!(
                "{file}: ensemble_scheduling.step[{i}] ('{}') waits on itself through the tensors it reads",
                self.steps[i].model()
            )),
            None => Ok(()),
        }
    }

    /// The composing models (each once), for readiness, statistics and `unload_dependents`.
    pub fn models(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for s in &self.steps {
            if !v.contains(&s.model()) {
                v.push(s.model());
            }
        }
        v
    }
}

/// The steps not started yet whose input tensors all exist.
pub fn runnable(steps: &[Step], have: &HashSet<String>, started: &[bool]) -> Vec<usize> {
    (0..steps.len()).filter(|&i| !started[i] && steps[i].inputs.iter().all(|(_, t)| have.contains(t))).collect()
}

/// The message of `e` with `prefix` before it, of the same kind.
fn within(e: ServeError, prefix: &str) -> ServeError {
    let p = |m: String| format!("{prefix}: {m}");
    match e {
        ServeError::NotFound(m) => ServeError::NotFound(p(m)),
        ServeError::Unavailable(m) => ServeError::Unavailable(p(m)),
        ServeError::InvalidArgument(m) => ServeError::InvalidArgument(p(m)),
        ServeError::Unsupported(m) => ServeError::Unsupported(p(m)),
        ServeError::ResourceExhausted { message, retry_after_ms } => {
            ServeError::ResourceExhausted { message: p(message), retry_after_ms }
        }
        ServeError::Timeout(m) => ServeError::Timeout(p(m)),
        ServeError::Cancelled(m) => ServeError::Cancelled(p(m)),
        ServeError::Conflict(m) => ServeError::Conflict(p(m)),
        ServeError::PayloadTooLarge(m) => ServeError::PayloadTooLarge(p(m)),
        ServeError::Backend(m) => ServeError::Backend(p(m)),
        ServeError::Internal(m) => ServeError::Internal(p(m)),
    }
}

/// An ensemble as an endpoint.
pub struct Ensemble {
    name: String,
    spec: Spec,
    /// The version directories it was found with (Triton serves an ensemble as version 1 of a
    /// directory holding an empty `1/`).
    versions: Vec<String>,
    resolver: Weak<dyn Resolver>,
    counts: OwnStats,
    runs: Vec<AtomicU64>,
}

impl Ensemble {
    pub fn new(name: &str, spec: Spec, versions: Vec<String>, resolver: Weak<dyn Resolver>) -> Ensemble {
        let runs = spec.steps.iter().map(|_| AtomicU64::new(0)).collect();
        let versions = if versions.is_empty() { vec!["1".to_string()] } else { versions };
        Ensemble { name: name.to_string(), spec, versions, resolver, counts: Default::default(), runs }
    }

    /// Runs the steps, each as soon as its inputs exist; the first failure fails the request.
    async fn run(&self, ctx: &RequestContext, request: InferRequest) -> Result<InferResponse, ServeError> {
        let mut pool: HashMap<String, Tensor> = HashMap::new();
        for t in request.inputs {
            pool.insert(t.name.clone(), t);
        }
        let steps = &self.spec.steps;
        let mut started = vec![false; steps.len()];
        let mut running = FuturesUnordered::new();
        loop {
            let have: HashSet<String> = pool.keys().cloned().collect();
            for i in runnable(steps, &have, &started) {
                started[i] = true;
                let step = &steps[i];
                let inputs = step
                    .inputs
                    .iter()
                    .map(|(model_input, tensor)| Tensor { name: model_input.clone(), ..pool[tensor].clone() })
                    .collect();
                let version = match &step.target {
                    Target::Model { version, .. } => version.clone(),
                    Target::Endpoint(_) => None,
                };
                let req = InferRequest {
                    model: step.model().to_string(),
                    version,
                    id: request.id.clone(),
                    parameters: request.parameters.clone(),
                    inputs,
                    outputs: step
                        .outputs
                        .iter()
                        .map(|(o, _)| RequestedOutput { name: o.clone(), parameters: Default::default() })
                        .collect(),
                };
                self.runs[i].fetch_add(1, Ordering::Relaxed);
                running.push(async move {
                    let prefix = format!("ensemble '{}' step {i} ('{}')", self.name, step.model());
                    let endpoint = resolve_target(&self.resolver, &step.target).map_err(|e| within(e, &prefix))?;
                    let answer = endpoint.infer(ctx, req).await.map_err(|e| within(e, &prefix))?;
                    Ok::<_, ServeError>((i, answer))
                });
            }
            let Some(done) = running.next().await else { break };
            let (i, answer) = done?;
            let mut outputs = answer.response.outputs;
            for (model_output, tensor) in &steps[i].outputs {
                let at = outputs.iter().position(|t| &t.name == model_output).ok_or_else(|| {
                    ServeError::Internal(format!(
                        "ensemble '{}' step {i} ('{}') did not return output '{model_output}'",
                        self.name,
                        steps[i].model()
                    ))
                })?;
                let mut t = outputs.swap_remove(at);
                t.name = tensor.clone();
                pool.insert(tensor.clone(), t);
            }
        }
        let wanted: Vec<&str> = if request.outputs.is_empty() {
            self.spec.config.output.iter().map(|o| o.name.as_str()).collect()
        } else {
            request.outputs.iter().map(|o| o.name.as_str()).collect()
        };
        let outputs = wanted
            .into_iter()
            .map(|name| {
                pool.remove(name).ok_or_else(|| ServeError::Internal(format!("ensemble output '{name}' missing")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(InferResponse {
            model_name: self.name.clone(),
            model_version: self.versions.last().cloned().unwrap_or_default(),
            id: request.id,
            parameters: Default::default(),
            outputs,
        })
    }
}

#[async_trait]
impl Endpoint for Ensemble {
    fn name(&self) -> &str {
        &self.name
    }

    fn ready(&self) -> bool {
        self.spec.steps.iter().all(|s| resolve_target(&self.resolver, &s.target).is_ok_and(|e| e.ready()))
    }

    fn metadata(&self) -> ModelMetadata {
        let c = &self.spec.config;
        ModelMetadata {
            name: self.name.clone(),
            versions: self.versions.clone(),
            platform: "ensemble".into(),
            inputs: c.tensor_metadata(&c.input),
            outputs: c.tensor_metadata(&c.output),
        }
    }

    fn config(&self) -> Arc<ModelConfig> {
        self.spec.config.clone()
    }

    /// The ensemble's own entry (requests, their end-to-end time), then each composing model's,
    /// as Triton lists them.
    fn statistics(&self) -> Vec<ModelStatistics> {
        let mut out = vec![self.counts.entry(&self.name, &self.versions.last().cloned().unwrap_or_default())];
        for s in &self.spec.steps {
            extend_unique(
                &mut out,
                resolve_target(&self.resolver, &s.target).map(|e| e.statistics()).unwrap_or_default(),
            );
        }
        out
    }

    fn check(&self, request: &InferRequest) -> Result<(), ServeError> {
        for i in &self.spec.config.input {
            let Some(t) = request.input(&i.name) else {
                return Err(ServeError::invalid(format!(
                    "ensemble '{}' expects input '{}', which the request does not have",
                    self.name, i.name
                )));
            };
            if let Some(dt) = i.datatype() {
                if t.datatype != dt {
                    return Err(ServeError::invalid(format!(
                        "input '{}' of ensemble '{}': expected datatype {dt}, got {}",
                        i.name, self.name, t.datatype
                    )));
                }
            }
        }
        for t in &request.inputs {
            if !self.spec.config.input.iter().any(|i| i.name == t.name) {
                return Err(ServeError::invalid(format!(
                    "unexpected input '{}' for ensemble '{}' (it takes: {})",
                    t.name,
                    self.name,
                    self.spec.config.input.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        for o in &request.outputs {
            if !self.spec.config.output.iter().any(|c| c.name == o.name) {
                return Err(ServeError::invalid(format!(
                    "ensemble '{}' has no output '{}' (it has: {})",
                    self.name,
                    o.name,
                    self.spec.config.output.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }

    async fn infer(&self, ctx: &RequestContext, request: InferRequest) -> Result<Answer, ServeError> {
        self.check(&request)?;
        let batch = request.inputs.first().and_then(|t| t.shape.first()).copied().unwrap_or(1).max(1) as u64;
        let started = Instant::now();
        let result = self.run(ctx, request).await;
        let ns = started.elapsed().as_nanos() as u64;
        let rows = if self.spec.config.max_batch_size > 0 { batch } else { 1 };
        self.counts.record(result.is_ok(), ns, rows);
        Ok(Answer { response: result?, timings: Timings::default() })
    }

    fn traffic_report(&self) -> Option<Value> {
        let steps: Vec<Value> = self
            .spec
            .steps
            .iter()
            .zip(&self.runs)
            .map(|(s, n)| {
                json!({
                    "target": target_key(&s.target),
                    "ready": resolve_target(&self.resolver, &s.target).is_ok_and(|e| e.ready()),
                    "requests": n.load(Ordering::Relaxed),
                    "input_map": s.inputs.iter().cloned().collect::<BTreeMap<_, _>>(),
                    "output_map": s.outputs.iter().cloned().collect::<BTreeMap<_, _>>(),
                })
            })
            .collect();
        Some(json!({ "name": self.name, "kind": "ensemble", "ready": self.ready(), "targets": steps }))
    }

    fn counters(&self) -> Vec<TrafficCounter> {
        requests_by_target(&self.name, self.spec.steps.iter().map(|s| &s.target).zip(&self.runs))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Barrier;

    use super::*;

    /// add_sub in Rust: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; with a barrier, each
    /// call waits there first.
    struct AddSub {
        barrier: Option<Arc<Barrier>>,
    }

    #[async_trait]
    impl Endpoint for AddSub {
        fn name(&self) -> &str {
            "add_sub"
        }
        fn ready(&self) -> bool {
            true
        }
        fn metadata(&self) -> ModelMetadata {
            ModelMetadata::default()
        }
        fn config(&self) -> Arc<ModelConfig> {
            Arc::new(ModelConfig::default())
        }
        fn statistics(&self) -> Vec<ModelStatistics> {
            vec![ModelStatistics { name: "add_sub".into(), version: "1".into(), ..Default::default() }]
        }
        fn check(&self, _: &InferRequest) -> Result<(), ServeError> {
            Ok(())
        }
        async fn infer(&self, _: &RequestContext, req: InferRequest) -> Result<Answer, ServeError> {
            if let Some(b) = &self.barrier {
                b.wait().await;
            }
            let get = |n: &str| req.input(n).and_then(|t| t.to_vec::<f32>()).ok_or_else(|| ServeError::invalid(n));
            let (a, b) = (get("INPUT0")?, get("INPUT1")?);
            let shape = req.inputs[0].shape.clone();
            let outputs = vec![
                Tensor::from_vec("OUTPUT0", shape.clone(), a.iter().zip(&b).map(|(x, y)| x + y).collect()),
                Tensor::from_vec("OUTPUT1", shape, a.iter().zip(&b).map(|(x, y)| x - y).collect()),
            ];
            let outputs = outputs.into_iter().filter(|t| req.outputs.iter().any(|o| o.name == t.name)).collect();
            Ok(Answer { response: InferResponse { outputs, ..Default::default() }, timings: Timings::default() })
        }
    }

    struct One(Arc<AddSub>);

    impl Resolver for One {
        fn resolve(&self, name: &str, _: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError> {
            match name {
                "add_sub" => Ok(self.0.clone()),
                _ => Err(ServeError::model_not_found(name, None)),
            }
        }
    }

    fn request(a: Vec<f32>, b: Vec<f32>) -> InferRequest {
        let shape = vec![1, a.len() as i64];
        InferRequest {
            inputs: vec![Tensor::from_vec("A", shape.clone(), a), Tensor::from_vec("B", shape, b)],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn independent_steps_run_at_the_same_time_and_chained_ones_in_order() {
        // Steps 1 and 2 read only ensemble inputs; each waits at a barrier of two, so run one
        // after the other they would wait forever. Step 0 comes after step 1.
        let model = Arc::new(AddSub { barrier: Some(Arc::new(Barrier::new(2))) });
        let resolver: Arc<dyn Resolver> = Arc::new(One(model));
        let spec = Spec::from_config("e/config.pbtxt", config(CHAIN)).unwrap();
        let e = Ensemble::new("e", spec.clone(), vec![], Arc::downgrade(&resolver));
        // Step 0 waits at the barrier too: a fourth call keeps it company.
        let partner = {
            let r = resolver.clone();
            tokio::spawn(async move {
                let m = r.resolve("add_sub", None).unwrap();
                let _ = m.infer(&RequestContext::new("p"), request(vec![0.0], vec![0.0])).await;
            })
        };
        let ctx = RequestContext::new("r");
        let run = e.infer(&ctx, request(vec![1.0, 2.0], vec![10.0, 20.0]));
        let a = tokio::time::timeout(Duration::from_secs(10), run).await.expect("steps 1 and 2 ran together").unwrap();
        partner.await.unwrap();
        let out = |n: &str| a.response.outputs.iter().find(|t| t.name == n).unwrap().to_vec::<f32>().unwrap();
        // OUT = (A + B) + (A - B) = 2A; SIDE = A + A.
        assert_eq!((out("OUT"), out("SIDE")), (vec![2.0, 4.0], vec![2.0, 4.0]));
        assert_eq!(a.response.model_name, "e");
        assert_eq!(a.response.model_version, "1");
        let stats = e.statistics();
        assert_eq!((stats[0].name.as_str(), stats[0].inference_count, stats[1].name.as_str()), ("e", 1, "add_sub"));
    }

    #[tokio::test]
    async fn a_failing_step_fails_the_request_naming_the_step() {
        let resolver: Arc<dyn Resolver> = Arc::new(One(Arc::new(AddSub { barrier: None })));
        let text = CHAIN.replacen(
            r#""model_name": "add_sub", "input_map": {"INPUT0": "A", "INPUT1": "A"}"#,
            r#""model_name": "gone", "input_map": {"INPUT0": "A", "INPUT1": "A"}"#,
            1,
        );
        let e = Ensemble::new("e", Spec::from_config("e", config(&text)).unwrap(), vec![], Arc::downgrade(&resolver));
        let err = e.infer(&RequestContext::new("r"), request(vec![1.0], vec![2.0])).await.unwrap_err();
        assert!(matches!(&err, ServeError::NotFound(m) if m.starts_with("ensemble 'e' step 2 ('gone'): ")), "{err}");
        let err = e.infer(&RequestContext::new("r"), InferRequest::default()).await.unwrap_err();
        assert!(err.to_string().contains("ensemble 'e' expects input 'A'"), "{err}");
        assert_eq!(e.statistics()[0].inference_stats.fail.count, 1);
    }

    fn config(text: &str) -> ModelConfig {
        serde_json::from_str(text).unwrap()
    }

    const CHAIN: &str = r#"{
        "name": "e", "platform": "ensemble", "max_batch_size": 8,
        "input": [ {"name": "A", "data_type": "TYPE_FP32", "dims": [16]}, {"name": "B", "data_type": "TYPE_FP32", "dims": [16]} ],
        "output": [ {"name": "OUT", "data_type": "TYPE_FP32", "dims": [16]}, {"name": "SIDE", "data_type": "TYPE_FP32", "dims": [16]} ],
        "ensemble_scheduling": { "step": [
            { "model_name": "add_sub", "model_version": -1, "input_map": {"INPUT0": "sum", "INPUT1": "diff"}, "output_map": {"OUTPUT0": "OUT"} },
            { "model_name": "add_sub", "model_version": 1, "input_map": {"INPUT0": "A", "INPUT1": "B"}, "output_map": {"OUTPUT0": "sum", "OUTPUT1": "diff"} },
            { "model_name": "add_sub", "input_map": {"INPUT0": "A", "INPUT1": "A"}, "output_map": {"OUTPUT0": "SIDE"} }
        ] }
    }"#;

    #[test]
    fn steps_run_when_their_inputs_exist() {
        let spec = Spec::from_config("e/config.pbtxt", config(CHAIN)).unwrap();
        assert_eq!(spec.steps[1].target, Target::Model { name: "add_sub".into(), version: Some("1".into()) });
        assert_eq!(spec.steps[0].target, Target::Model { name: "add_sub".into(), version: None });
        let have = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        // The first wave: both steps that read only ensemble inputs, at the same time.
        assert_eq!(runnable(&spec.steps, &have(&["A", "B"]), &[false, false, false]), vec![1, 2]);
        assert_eq!(runnable(&spec.steps, &have(&["A", "B"]), &[false, true, true]), Vec::<usize>::new());
        assert_eq!(runnable(&spec.steps, &have(&["A", "B", "sum", "diff"]), &[false, true, true]), vec![0]);
        assert_eq!(spec.models(), vec!["add_sub"]);
    }

    #[test]
    fn graph_errors_name_the_file_and_the_step() {
        let bad = |from: &str, to: &str| {
            let text = CHAIN.replacen(from, to, 1);
            Spec::from_config("e/config.pbtxt", config(&text)).unwrap_err()
        };
        let e = bad(r#""INPUT1": "diff"}"#, r#""INPUT1": "dif"}"#);
        assert!(e.contains("e/config.pbtxt: ensemble_scheduling.step[0].input_map: 'dif' is neither"), "{e}");
        let e = bad(r#""output_map": {"OUTPUT0": "SIDE"}"#, r#""output_map": {"OUTPUT0": "sum"}"#);
        assert!(e.contains("step[2].output_map: 'sum' is written by step 1 too"), "{e}");
        let e = bad(r#""output_map": {"OUTPUT0": "SIDE"}"#, r#""output_map": {"OUTPUT0": "other"}"#);
        assert!(e.contains("output 'SIDE' of the ensemble is not written by any step"), "{e}");
        let e = bad(r#""INPUT0": "A", "INPUT1": "B""#, r#""INPUT0": "OUT", "INPUT1": "B""#);
        assert!(e.contains("waits on itself"), "{e}");
        let e = bad(r#""model_version": 1"#, r#""model_version": "latest""#);
        assert!(e.contains("step[1].model_version: expected -1 or a version number"), "{e}");
        let mut c = config(CHAIN);
        c.ensemble_scheduling = None;
        assert!(Spec::from_config("e/config.pbtxt", c).unwrap_err().contains("needs 'ensemble_scheduling'"));
    }
}
