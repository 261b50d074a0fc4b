//! `grpc.health.v1.Health` over the engine: SERVING while `engine.ready()`, NOT_SERVING
//! otherwise, read at each call so it is always current. `Watch` polls every 500 ms and sends a
//! message on each change; it ends (after NOT_SERVING) when the server shuts down.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::engine::Engine;

const POLL: Duration = Duration::from_millis(500);

/// The services this health endpoint knows: the whole server ("") and the inference service.
const KNOWN: &[&str] = &["", "inference.GRPCInferenceService"];

pub struct EngineHealth {
    engine: Arc<Engine>,
    /// Turns true when the server begins shutting down; `None` when nobody will tell.
    closing: Option<watch::Receiver<bool>>,
}

impl EngineHealth {
    pub fn new(engine: Arc<Engine>, closing: Option<watch::Receiver<bool>>) -> Self {
        EngineHealth { engine, closing }
    }
}

fn status_of(engine: &Engine, service: &str) -> ServingStatus {
    if !KNOWN.contains(&service) {
        ServingStatus::ServiceUnknown
    } else if engine.ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn answer(s: ServingStatus) -> Result<HealthCheckResponse, Status> {
    Ok(HealthCheckResponse { status: s as i32 })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

struct WatchState {
    engine: Arc<Engine>,
    service: String,
    closing: Option<watch::Receiver<bool>>,
    last: Option<ServingStatus>,
    done: bool,
}

async fn closed(closing: &mut Option<watch::Receiver<bool>>) {
    match closing {
        // `wait_for` also returns when the sender is gone: the server stopped either way.
        Some(rx) => {
            let _ = rx.wait_for(|c| *c).await;
        }
        None => std::future::pending().await,
    }
}

async fn next(mut st: WatchState) -> Option<(Result<HealthCheckResponse, Status>, WatchState)> {
    if st.done {
        return None;
    }
    loop {
        let now = status_of(&st.engine, &st.service);
        if st.last != Some(now) {
            st.last = Some(now);
            return Some((answer(now), st));
        }
        let closing = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            _ = closed(&mut st.closing) => true,
        };
        if closing {
            st.done = true;
            let quiet = matches!(st.last, Some(ServingStatus::ServiceUnknown | ServingStatus::NotServing));
            return (!quiet).then(|| (answer(ServingStatus::NotServing), st));
        }
    }
}

#[tonic::async_trait]
impl Health for EngineHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match status_of(&self.engine, &service) {
            ServingStatus::ServiceUnknown => Err(Status::not_found(format!("unknown service '{service}'"))),
            s => Ok(Response::new(HealthCheckResponse { status: s as i32 })),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let state = WatchState {
            engine: self.engine.clone(),
            service: request.into_inner().service,
            closing: self.closing.clone(),
            last: None,
            done: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(state, next))))
    }
}
