//! Scheduling priority of a model's threads (`optimization { priority: PRIORITY_MIN }`).
//!
//! Linux keeps the nice value per thread and a new thread inherits its creator's. So a version
//! whose instances are created on a lowered thread has every compute thread its runtime starts
//! while loading (ONNX Runtime's intra-op pool, candle's workers) lowered too, without the
//! backend knowing; the instance threads lower themselves when they start.

use sluice_types::{CpuPriority, ModelConfig};

/// The nice value of a `PRIORITY_MIN` model's threads: the lowest priority. Under contention the
/// kernel gives a nice-0 thread about 70 times the CPU share of a nice-19 one.
pub const MIN_PRIORITY_NICE: i32 = 19;

/// Whether a config asks for its threads to run at the lowest priority. An invalid value was
/// refused when the config was validated; here it counts as the default.
pub fn wants_min_priority(config: &ModelConfig) -> bool {
    config.cpu_priority() == Ok(CpuPriority::Min)
}

/// Lowers the calling thread (only that thread) to [`MIN_PRIORITY_NICE`]. Lowering never needs a
/// privilege; raising it back would, so call this only on threads that stay low.
pub fn lower_current_thread() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let tid = unsafe { libc::gettid() };
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, MIN_PRIORITY_NICE) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The calling thread's nice value (Linux; 0 elsewhere).
pub fn current_thread_nice() -> std::io::Result<i32> {
    #[cfg(target_os = "linux")]
    {
        // getpriority may return -1 as a value: errno tells an error apart.
        // SAFETY: as above; errno is thread-local.
        unsafe {
            *libc::__errno_location() = 0;
            let tid = libc::gettid();
            let n = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            if n == -1 && *libc::__errno_location() != 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(n);
        }
    }
    #[allow(unreachable_code)]
    Ok(0)
}

/// Runs `f` on a new thread lowered to the minimum priority when the config asks for it (so
/// the threads `f` starts inherit it), else on the calling thread.
pub fn with_config_priority<T: Send>(config: &ModelConfig, f: impl FnOnce() -> T + Send) -> T {
    if !wants_min_priority(config) {
        return f();
    }
    // Shared so that the calling thread can still run `f` if no thread can be started.
    let work = std::sync::Mutex::new(Some(f));
    let run_lowered = || {
        if let Err(e) = lower_current_thread() {
            tracing::warn!(model = %config.name, error = %e, "cannot lower the loading thread's priority");
        }
        work.lock().unwrap_or_else(|p| p.into_inner()).take().map(|f| f())
    };
    let lowered = std::thread::scope(|s| {
        match std::thread::Builder::new().name(format!("sluice-load-{}", config.name)).spawn_scoped(s, run_lowered) {
            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(e) => {
                tracing::warn!(model = %config.name, error = %e, "cannot start a lowered loading thread");
                None
            }
        }
    });
    match lowered {
        Some(t) => t,
        None => work.into_inner().unwrap_or_else(|p| p.into_inner()).map(|f| f()).expect("f ran nowhere"),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The lowered pool's queue: one thread per CPU, started on first use, each lowered to
/// [`MIN_PRIORITY_NICE`] before it takes work.
fn lowered_pool() -> &'static flume::Sender<Job> {
    static POOL: std::sync::OnceLock<flume::Sender<Job>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = flume::unbounded::<Job>();
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..n {
            let rx = rx.clone();
            let started = std::thread::Builder::new().name(format!("sluice-lowered-{i}")).spawn(move || {
                if let Err(e) = lower_current_thread() {
                    tracing::warn!(error = %e, "cannot lower a pool thread's priority");
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start a lowered pool thread");
            }
        }
        tx
    })
}

/// Runs CPU work of a `PRIORITY_MIN` model (tokenizing its requests) on a thread at the lowest
/// priority, as `spawn_blocking` would at the normal one: a shadow candidate's preprocessing must
/// yield to live requests as its inference does. `Err` if `f` panicked.
pub async fn run_lowered<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = flume::bounded(1);
    let job: Job = Box::new(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r.map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into())
        }));
    });
    if let Err(flume::SendError(job)) = lowered_pool().send(job) {
        // No pool thread could be started: run here rather than not at all.
        job();
    }
    rx.recv_async().await.map_err(|_| "the lowered pool dropped the work".to_string())?
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_min_priority_load_runs_lowered_and_its_threads_inherit() {
        let mut config = ModelConfig { name: "m".into(), ..Default::default() };
        let here = current_thread_nice().unwrap();
        // The default runs on the calling thread, untouched.
        let (same, nice) =
            with_config_priority(&config, || (std::thread::current().id(), current_thread_nice().unwrap()));
        assert_eq!((same, nice), (std::thread::current().id(), here));

        config.optimization = Some(serde_json::json!({"priority": "PRIORITY_MIN"}));
        let (loader, child) = with_config_priority(&config, || {
            let child = std::thread::spawn(|| current_thread_nice().unwrap()).join().unwrap();
            (current_thread_nice().unwrap(), child)
        });
        assert_eq!((loader, child), (MIN_PRIORITY_NICE, MIN_PRIORITY_NICE));
        assert_eq!(current_thread_nice().unwrap(), here, "the caller keeps its priority");
    }

    #[test]
    fn lowered_work_runs_at_the_lowest_priority_and_reports_panics() {
        assert_eq!(block_on(Box::pin(run_lowered(|| current_thread_nice().unwrap()))), Ok(MIN_PRIORITY_NICE));
        let panicked = block_on(Box::pin(run_lowered(|| -> i32 { panic!("tokenizer exploded") })));
        assert_eq!(panicked, Err("tokenizer exploded".to_string()));
    }

    /// Polls a future to completion on this thread (the pool threads wake it).
    fn block_on<T>(
        mut f: std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send>>,
    ) -> Result<T, String> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
