//! Whether an endpoint with state in the state store has read it yet: requests that arrive
//! before the first read wait for it (a bounded time), so that a restarted replica never serves a
//! blank state (a promoted rollout as pending, a stopped experiment as running). Also the
//! endpoints' one loop that keeps them in step with the store ([`keep_in_step`]).

use std::time::Duration;

use parking_lot::Mutex;
use sluice_types::ServeError;
use tokio::sync::watch;

/// How long a request waits for the first read.
const WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Loaded {
    /// What waits say they wait for (`rollout 'name'`).
    what: String,
    done: watch::Sender<bool>,
    /// The last read's error, said to those who wait in vain.
    error: Mutex<Option<String>>,
}

impl Loaded {
    pub(crate) fn new(what: String) -> Loaded {
        Loaded { what, done: watch::channel(false).0, error: Mutex::new(None) }
    }

    pub(crate) fn is_loaded(&self) -> bool {
        *self.done.borrow()
    }

    /// Notes how a read of the stored state went.
    pub(crate) fn note<T>(&self, result: &Result<T, ServeError>) {
        match result {
            Ok(_) => {
                *self.error.lock() = None;
                self.done.send_replace(true);
            }
            Err(e) => *self.error.lock() = Some(e.to_string()),
        }
    }

    /// Waits for the first read; `Unavailable` naming what waits when it does not come in time.
    pub(crate) async fn wait(&self) -> Result<(), ServeError> {
        if self.is_loaded() {
            return Ok(());
        }
        let mut done = self.done.subscribe();
        let read = matches!(tokio::time::timeout(WAIT, done.wait_for(|d| *d)).await, Ok(Ok(_)));
        if read {
            return Ok(());
        }
        Err(ServeError::Unavailable(format!(
            "{} has not read its state from the state store yet{}",
            self.what,
            self.error.lock().as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        )))
    }
}

/// Runs `step` on the endpoint every `tick` until the endpoint is gone, saying a failure once
/// per kind (not twice a second while the store is away) and when the store answers again.
pub(crate) async fn keep_in_step<T, F>(endpoint: std::sync::Weak<T>, tick: Duration, what: &str, step: F)
where
    T: Send + Sync,
    F: for<'a> Fn(&'a T) -> futures::future::BoxFuture<'a, Result<(), ServeError>>,
{
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        every.tick().await;
        let Some(e) = endpoint.upgrade() else { return };
        match (step(&e).await, &last_error) {
            (Ok(()), Some(_)) => {
                tracing::info!(endpoint = what, "the state store answers again");
                last_error = None;
            }
            (Err(err), previous) if previous.as_deref() != Some(&err.to_string()) => {
                tracing::warn!(endpoint = what, error = %err, "cannot keep in step with the state store");
                last_error = Some(err.to_string());
            }
            (Ok(()) | Err(_), _) => {}
        }
    }
}
