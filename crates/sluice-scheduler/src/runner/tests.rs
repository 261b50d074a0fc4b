use super::*;

/// Doubles its input and records the batch sizes it saw.
struct Doubler {
    batches: Arc<Mutex<Vec<i64>>>,
    delay: Duration,
}

impl ModelInstance for Doubler {
    fn execute(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<ExecOutput, ServeError> {
        self.batches.lock().push(inputs[0].shape[0]);
        std::thread::sleep(self.delay);
        let v: Vec<f32> = inputs[0].to_vec::<f32>().unwrap().iter().map(|x| x * 2.0).collect();
        Ok(ExecOutput { outputs: vec![Tensor::from_vec("y", inputs[0].shape.clone(), v)], ..Default::default() })
    }
}

fn config(pbtxt_like: Option<sluice_types::config::DynamicBatching>) -> ModelConfig {
    ModelConfig { name: "m".into(), max_batch_size: 8, dynamic_batching: pbtxt_like, ..Default::default() }
}

fn runner(cfg: &ModelConfig, delay_ms: u64, limits: QueueLimits) -> (ModelRunner, Arc<Mutex<Vec<i64>>>) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let inst = Doubler { batches: batches.clone(), delay: Duration::from_millis(delay_ms) };
    let r = ModelRunner::start("m:1".into(), cfg, vec![Box::new(inst)], limits, Arc::default()).unwrap();
    (r, batches)
}

/// Submits `n` requests concurrently.
fn submit_all(r: &ModelRunner, n: usize) -> Vec<tokio::task::JoinHandle<Result<Executed, ServeError>>> {
    (0..n)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { r.submit(sub(i as f32)).await })
        })
        .collect()
}

fn sub(x: f32) -> Submission {
    Submission { inputs: vec![Tensor::from_vec("x", vec![1, 1], vec![x])], batch_size: 1, ..Default::default() }
}

#[tokio::test]
async fn concurrent_requests_share_executions_and_get_their_own_rows() {
    let db = sluice_types::config::DynamicBatching { max_queue_delay_microseconds: 20_000, ..Default::default() };
    let (r, batches) = runner(&config(Some(db)), 1, QueueLimits::default());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { r.submit(sub(i as f32)).await })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.await.unwrap().unwrap();
        assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
        assert_eq!(out.outputs[0].shape, vec![1, 1]);
    }
    let b = batches.lock().clone();
    assert_eq!(b.iter().sum::<i64>(), 8);
    assert!(b.len() < 8, "eight concurrent requests ran in {} executions: {b:?}", b.len());
    let snap = r.stats().snapshot("m", "1");
    assert_eq!(snap.inference_count, 8);
    assert_eq!(snap.execution_count, b.len() as u64);
    assert!(!r.is_closed());
    r.shutdown().await;
    assert!(r.is_closed());
    assert!(matches!(r.submit(sub(1.0)).await, Err(ServeError::Unavailable(_))));
}

#[tokio::test]
async fn without_dynamic_batching_one_request_per_execution() {
    let (r, batches) = runner(&config(None), 0, QueueLimits::default());
    let hs = submit_all(&r, 4);
    for h in hs {
        h.await.unwrap().unwrap();
    }
    assert_eq!(*batches.lock(), vec![1, 1, 1, 1]);
}

#[tokio::test]
async fn full_queue_is_resource_exhausted() {
    let (r, _) = runner(&config(None), 50, QueueLimits { max_requests: 1, max_bytes: 0 });
    let hs = submit_all(&r, 4);
    let mut exhausted = 0;
    for h in hs {
        if let Err(ServeError::ResourceExhausted { .. }) = h.await.unwrap() {
            exhausted += 1;
        }
    }
    assert!(exhausted >= 1, "a queue of one must refuse some of four concurrent requests");
}

#[tokio::test]
async fn queued_request_times_out_while_the_instance_is_busy() {
    let db = sluice_types::config::DynamicBatching {
        default_queue_policy: Some(sluice_types::config::QueuePolicy {
            allow_timeout_override: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (r, batches) = runner(&config(Some(db)), 300, QueueLimits::default());
    let busy = tokio::spawn({
        let r = r.clone();
        async move { r.submit(sub(1.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = r.submit(Submission { timeout: Some(Duration::from_millis(30)), ..sub(2.0) }).await.unwrap_err();
    assert!(matches!(e, ServeError::Timeout(_)), "{e}");
    // Answered when its own timeout passed, while the 300 ms execution is still running.
    assert!(!busy.is_finished(), "the timeout was answered only after the running batch");
    busy.await.unwrap().unwrap();
    assert_eq!(batches.lock().len(), 1, "the timed-out request never ran");
}

#[tokio::test]
async fn cancelled_request_is_not_executed() {
    let (r, batches) = runner(&config(None), 50, QueueLimits::default());
    let first = tokio::spawn({
        let r = r.clone();
        async move { r.submit(sub(1.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = tokio::time::timeout(Duration::from_millis(5), r.submit(sub(2.0))).await;
    first.await.unwrap().unwrap();
    let third = r.submit(sub(3.0)).await.unwrap();
    assert_eq!(third.outputs[0].to_vec::<f32>().unwrap(), vec![6.0]);
    assert_eq!(*batches.lock(), vec![1, 1], "the abandoned request was not computed");
    assert_eq!(r.stats().failures()[1], ("CANCELED", 1));
}

#[tokio::test]
async fn bad_priority_is_invalid() {
    let db =
        sluice_types::config::DynamicBatching { priority_levels: 2, default_priority_level: 1, ..Default::default() };
    let (r, _) = runner(&config(Some(db)), 0, QueueLimits::default());
    let e = r.submit(Submission { priority: Some(5), ..sub(1.0) }).await.unwrap_err();
    assert!(e.to_string().contains("priority"), "{e}");
    r.submit(Submission { priority: Some(2), ..sub(1.0) }).await.unwrap();
}

/// Doubles its input; an execution costs 2 ms + 0.25 ms per row (affine in the batch size).
struct Affine {
    batches: Arc<Mutex<Vec<i64>>>,
}

impl ModelInstance for Affine {
    fn execute(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<ExecOutput, ServeError> {
        let rows = inputs[0].shape[0];
        self.batches.lock().push(rows);
        std::thread::sleep(Duration::from_micros(2000 + 250 * rows as u64));
        let v: Vec<f32> = inputs[0].to_vec::<f32>().unwrap().iter().map(|x| x * 2.0).collect();
        Ok(ExecOutput { outputs: vec![Tensor::from_vec("y", inputs[0].shape.clone(), v)], ..Default::default() })
    }
}

fn adaptive(max_p99_latency_ms: &str) -> sluice_types::config::DynamicBatching {
    sluice_types::config::DynamicBatching {
        adaptive: Some([("max_p99_latency_ms", max_p99_latency_ms)].into_iter().collect()),
        ..Default::default()
    }
}

#[tokio::test]
async fn adaptive_runner_batches_a_burst_and_keeps_answering_single_requests() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let inst = Affine { batches: batches.clone() };
    let cfg = config(Some(adaptive("200")));
    let r =
        ModelRunner::start("m:1".into(), &cfg, vec![Box::new(inst)], QueueLimits::default(), Arc::default()).unwrap();
    // Cold start (no delay configured), then measured costs of single requests.
    for i in 0..3 {
        let out = r.submit(sub(i as f32)).await.unwrap();
        assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
    }
    // Two bursts of 32 concurrent requests.
    for _ in 0..2 {
        let hs: Vec<_> = (0..32)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move { (i, r.submit(sub(i as f32)).await) })
            })
            .collect();
        for h in hs {
            let (i, out) = h.await.unwrap();
            assert_eq!(out.unwrap().outputs[0].to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
        }
    }
    // Then one client alone: each of its requests runs (alone) and comes back.
    for i in 0..3 {
        let out = r.submit(sub(i as f32)).await.unwrap();
        assert_eq!(out.outputs[0].to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
    }
    let b = batches.lock().clone();
    assert_eq!(b.iter().sum::<i64>(), 3 + 64 + 3);
    assert!(b.iter().all(|&n| (1..=8).contains(&n)), "a batch beyond max_batch_size 8: {b:?}");
    let burst = &b[3..b.len() - 3];
    assert!(burst.iter().any(|&n| n > 1), "bursts were not batched: {b:?}");
    assert!(burst.len() < 64, "64 burst requests ran in {} executions: {b:?}", burst.len());
    assert_eq!(b[b.len() - 3..], [1, 1, 1]);
    r.shutdown().await;
}

#[tokio::test]
async fn a_bad_adaptive_block_fails_to_start_naming_the_field() {
    let cfg = config(Some(adaptive("soon")));
    let inst = Doubler { batches: Arc::default(), delay: Duration::ZERO };
    let e = ModelRunner::start("m:1".into(), &cfg, vec![Box::new(inst)], QueueLimits::default(), Arc::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("dynamic_batching.adaptive.max_p99_latency_ms"), "{e}");
}

/// Sleeps as many milliseconds as its input's first value, then echoes it.
struct Sleeper;

impl ModelInstance for Sleeper {
    fn execute(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<ExecOutput, ServeError> {
        let v = inputs[0].to_vec::<f32>().unwrap();
        std::thread::sleep(Duration::from_millis(v[0] as u64));
        Ok(ExecOutput { outputs: vec![Tensor::from_vec("y", inputs[0].shape.clone(), v)], ..Default::default() })
    }
}

/// A slow request then a fast one on two instances: the order their answers come back in.
async fn answer_order(preserve_ordering: bool) -> Vec<f32> {
    let db = sluice_types::config::DynamicBatching { preserve_ordering, ..Default::default() };
    let instances: Vec<Box<dyn ModelInstance>> = vec![Box::new(Sleeper), Box::new(Sleeper)];
    let r =
        ModelRunner::start("m:1".into(), &config(Some(db)), instances, QueueLimits::default(), Arc::default()).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    // The slow one's margin is wide: on a loaded machine an instance thread can wait a long
    // time for a core, and the fast one must still finish first without preserve_ordering.
    for x in [600.0, 1.0] {
        let (r, order) = (r.clone(), order.clone());
        hs.push(tokio::spawn(async move {
            let out = r.submit(sub(x)).await.unwrap();
            order.lock().push(out.outputs[0].to_vec::<f32>().unwrap()[0]);
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for h in hs {
        h.await.unwrap();
    }
    r.shutdown().await;
    let v = order.lock().clone();
    v
}

#[tokio::test]
async fn preserve_ordering_holds_a_fast_answer_behind_an_earlier_slow_one() {
    assert_eq!(answer_order(false).await, vec![1.0, 600.0], "without preserve_ordering the fast one comes first");
    assert_eq!(answer_order(true).await, vec![600.0, 1.0]);
}

#[tokio::test]
async fn dropping_every_handle_stops_the_threads() {
    let (r, _) = runner(&config(None), 0, QueueLimits::default());
    r.submit(sub(1.0)).await.unwrap();
    let shared = Arc::downgrade(&r.inner.shared);
    drop(r);
    for _ in 0..100 {
        if shared.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the scheduler's threads still hold it after every handle was dropped");
}
