//! Whether an endpoint with state in the state store has read it yet: requests that arrive
//! before the first read wait for it (a bounded time), so that a restarted replica never serves a
//! blank state (a promoted rollout as pending, a stopped experiment as running).

use std::time::Duration;

use parking_lot::Mutex;
use sluice_types::ServeError;
use tokio::sync::watch;

/// How long a request waits for the first read.
const WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Loaded {
    done: watch::Sender<bool>,
    /// The last read's error, said to those who wait in vain.
    error: Mutex<Option<String>>,
}

impl Loaded {
    pub(crate) fn new() -> Loaded {
        Loaded { done: watch::channel(false).0, error: Mutex::new(None) }
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

    /// Waits for the first read; `Unavailable` naming `what` when it does not come in time.
    pub(crate) async fn wait(&self, what: &str) -> Result<(), ServeError> {
        let mut done = self.done.subscribe();
        let read = matches!(tokio::time::timeout(WAIT, done.wait_for(|d| *d)).await, Ok(Ok(_)));
        if read {
            return Ok(());
        }
        Err(ServeError::Unavailable(format!(
            "{what} has not read its state from the state store yet{}",
            self.error.lock().as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        )))
    }
}
