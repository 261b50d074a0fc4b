//! A fake endpoint for the policies' unit tests: fixed answers, a call count, and on demand a
//! gate to hold calls or a failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sluice_types::api::{ModelMetadata, ModelStatistics};
use sluice_types::{
    Answer, Endpoint, InferRequest, InferResponse, ModelConfig, RequestContext, Resolver, ServeError, Tensor, Timings,
};
use tokio::sync::Semaphore;

/// Answers `probabilities` [1, n] and `label` [1, 1] (only those asked for, when the request
/// names outputs).
pub(crate) struct Fake {
    pub name: String,
    pub probabilities: Vec<f32>,
    pub label: i64,
    /// Each call waits for a permit first.
    pub gate: Option<Arc<Semaphore>>,
    pub fail: bool,
    pub calls: AtomicUsize,
}

impl Fake {
    pub fn new(name: &str, probabilities: &[f32], label: i64) -> Fake {
        Fake {
            name: name.into(),
            probabilities: probabilities.to_vec(),
            label,
            gate: None,
            fail: false,
            calls: AtomicUsize::new(0),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Endpoint for Fake {
    fn name(&self) -> &str {
        &self.name
    }
    fn ready(&self) -> bool {
        true
    }
    fn metadata(&self) -> ModelMetadata {
        ModelMetadata { name: self.name.clone(), ..Default::default() }
    }
    fn config(&self) -> Arc<ModelConfig> {
        Arc::new(ModelConfig::default())
    }
    fn statistics(&self) -> Vec<ModelStatistics> {
        vec![]
    }
    fn check(&self, _: &InferRequest) -> Result<(), ServeError> {
        Ok(())
    }
    async fn infer(&self, _: &RequestContext, req: InferRequest) -> Result<Answer, ServeError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = &self.gate {
            g.acquire().await.expect("gate open").forget();
        }
        if self.fail {
            return Err(ServeError::Internal(format!("{} failed", self.name)));
        }
        let mut outputs = vec![
            Tensor::from_vec("probabilities", vec![1, self.probabilities.len() as i64], self.probabilities.clone()),
            Tensor::from_vec("label", vec![1, 1], vec![self.label]),
        ];
        if !req.outputs.is_empty() {
            outputs.retain(|t| req.outputs.iter().any(|o| o.name == t.name));
        }
        let response =
            InferResponse { model_name: self.name.clone(), model_version: "1".into(), outputs, ..Default::default() };
        Ok(Answer { response, timings: Timings::default() })
    }
}

/// Fakes by name.
pub(crate) struct Table(pub HashMap<String, Arc<Fake>>);

impl Table {
    pub fn of(fakes: impl IntoIterator<Item = Fake>) -> Arc<Table> {
        Arc::new(Table(fakes.into_iter().map(|f| (f.name.clone(), Arc::new(f))).collect()))
    }
}

impl Resolver for Table {
    fn resolve(&self, name: &str, _: Option<&str>) -> Result<Arc<dyn Endpoint>, ServeError> {
        self.0.get(name).map(|e| e.clone() as Arc<dyn Endpoint>).ok_or_else(|| ServeError::model_not_found(name, None))
    }
}
