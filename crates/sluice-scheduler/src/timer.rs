//! A timer precise to tens of microseconds for the scheduler's queue delays. Tokio's timer wheel
//! ticks in milliseconds, so a `max_queue_delay_microseconds: 100` waited on with
//! `tokio::time::sleep` lasts a millisecond or more; this timer sleeps on a condition variable
//! in a thread of its own (hrtimer-backed on Linux) and wakes the actor through a `Notify`.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    stop: bool,
}

pub struct PreciseTimer {
    shared: Arc<(Mutex<State>, Condvar)>,
    notify: Arc<Notify>,
    armed: Option<Instant>,
    thread: Option<JoinHandle<()>>,
}

impl PreciseTimer {
    pub fn new(name: String) -> std::io::Result<PreciseTimer> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let notify = Arc::new(Notify::new());
        let (s, n) = (shared.clone(), notify.clone());
        let thread = std::thread::Builder::new().name(name).spawn(move || run(&s, &n))?;
        Ok(PreciseTimer { shared, notify, armed: None, thread: Some(thread) })
    }

    /// Fires once at `deadline` (replacing any earlier one); `None` disarms.
    pub fn set(&mut self, deadline: Option<Instant>) {
        if self.armed == deadline {
            return;
        }
        self.armed = deadline;
        let (lock, cv) = &*self.shared;
        lock.lock().deadline = deadline;
        cv.notify_one();
    }

    /// Completes when the deadline passes (or spuriously: callers re-check their state).
    pub async fn fired(&self) {
        self.notify.notified().await
    }

    /// Forget the deadline once it has fired, so the next `set` of the same instant re-arms.
    pub fn clear_fired(&mut self, now: Instant) {
        if self.armed.is_some_and(|d| d <= now) {
            self.armed = None;
        }
    }
}

impl Drop for PreciseTimer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().stop = true;
        cv.notify_one();
        // The thread exits at once; joining it would block an async context for nothing.
        drop(self.thread.take());
    }
}

fn run(shared: &(Mutex<State>, Condvar), notify: &Notify) {
    let (lock, cv) = shared;
    let mut state = lock.lock();
    loop {
        if state.stop {
            return;
        }
        match state.deadline {
            None => cv.wait(&mut state),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    state.deadline = None;
                    notify.notify_one();
                } else {
                    cv.wait_for(&mut state, d - now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fires_after_the_deadline() {
        let mut t = PreciseTimer::new("t".into()).unwrap();
        let start = Instant::now();
        t.set(Some(start + Duration::from_micros(300)));
        t.fired().await;
        assert!(start.elapsed() >= Duration::from_micros(300));
        // Re-arming after it fired works.
        t.clear_fired(Instant::now());
        let again = Instant::now();
        t.set(Some(again + Duration::from_micros(200)));
        t.fired().await;
        assert!(again.elapsed() >= Duration::from_micros(200));
    }
}
