//! Adaptive batching (Sluice's extension of Triton's dynamic batcher):
//! `dynamic_batching { adaptive { max_p99_latency_ms: 50 } }` lets the scheduler choose the
//! queue delay and the batch size itself, to get the most throughput out of the instances while
//! the p99 of queue + compute time stays under the target.
//!
//! [`AdaptiveController`] is a plain struct: no clock and no thread of its own; the actor feeds
//! it arrivals, executions and request latencies with the instants and durations it measured,
//! and asks it for the policy's parameters before each decision. The algorithm and its formulas
//! are explained in `docs/batching.md` ("Adaptive batching").

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use sluice_types::config::DynamicBatching;
use sluice_types::ModelConfig;

use crate::policy::BatchPolicy;

/// The config field this module reads.
pub const FIELD: &str = "dynamic_batching.adaptive";

/// The largest target accepted (one hour): anything more is a typo.
const MAX_TARGET_MS: f64 = 3_600_000.0;

/// The `adaptive` block of `dynamic_batching`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// The p99 of queue + compute time of a request to stay under.
    pub max_p99_latency: Duration,
}

impl AdaptiveConfig {
    /// The typed `adaptive` block; `Ok(None)` when there is none. The error names the field.
    pub fn from_dynamic_batching(db: &DynamicBatching) -> Result<Option<AdaptiveConfig>, String> {
        let Some(v) = db.adaptive.as_ref().filter(|v| !v.is_null()) else { return Ok(None) };
        let Some(fields) = v.as_object() else {
            return Err(format!("{FIELD} must be a block such as {{ max_p99_latency_ms: 50 }}, got {v}"));
        };
        let mut target = None;
        for (key, x) in fields {
            match key.as_str() {
                "max_p99_latency_ms" => {
                    let ms = x.as_f64().or_else(|| x.as_str().and_then(|s| s.trim().parse::<f64>().ok()));
                    match ms {
                        Some(ms) if ms.is_finite() && ms > 0.0 && ms <= MAX_TARGET_MS => {
                            target = Some(Duration::from_secs_f64(ms / 1000.0))
                        }
                        _ => {
                            return Err(format!(
                                "{FIELD}.max_p99_latency_ms must be a number of milliseconds above 0 and at most \
                                 {MAX_TARGET_MS}, got {x}"
                            ))
                        }
                    }
                }
                other => return Err(format!("{FIELD} has an unknown field '{other}' (known: max_p99_latency_ms)")),
            }
        }
        match target {
            Some(max_p99_latency) => Ok(Some(AdaptiveConfig { max_p99_latency })),
            None => Err(format!("{FIELD}.max_p99_latency_ms is required (the p99 latency target in milliseconds)")),
        }
    }
}

/// Checks the `adaptive` block of a `dynamic_batching` section; the message names the field.
pub fn validate(db: &DynamicBatching) -> Result<(), String> {
    AdaptiveConfig::from_dynamic_batching(db).map(drop)
}

/// What the controller currently asks of the [`BatchPolicy`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// The batch cap given to the policy (≤ the config's `max_batch_size`): the largest batch
    /// whose execution fits the latency budget, so that a backlog still goes in big batches.
    pub max_batch: u64,
    /// How long the oldest request may wait for companions.
    pub max_delay: Duration,
    /// The batch size the delay is meant to gather (b* in the docs).
    pub target_batch: u64,
    /// No batch size both meets the target and keeps up with the arrival rate: the controller
    /// maximises throughput instead (no delay, the batch with the best inferences per second).
    pub saturated: bool,
    /// No execution measured yet: the config's `max_queue_delay_microseconds` applies.
    pub cold: bool,
}

#[derive(Clone, Copy, Debug)]
struct Ewma {
    mean: f64,
    n: u32,
}

/// Weight of a new sample in the per-size cost averages.
const COST_ALPHA: f64 = 0.2;
/// A size's own average is trusted after this many executions; before, the affine fit is used.
const COST_MIN_SAMPLES: u32 = 3;
/// Distinct batch sizes whose cost is kept (bounded memory); others only use the fit.
const MAX_SIZES: usize = 256;
/// Arrivals over which the rate and the gaps' spread are measured.
const RATE_WINDOW: usize = 32;
/// Weight of a new request's inference count in its average.
const RATE_ALPHA: f64 = 0.2;
/// Completed requests per p99 evaluation.
const WINDOW: usize = 128;
/// Headroom: the share of the target the model plans with.
const MAX_HEADROOM: f64 = 0.9;
const MIN_HEADROOM: f64 = 0.3;
const SHRINK: f64 = 0.8;
const RELAX: f64 = 1.05;
/// Executions over which the peak number of requests in the system is remembered.
const PEAKS: usize = 8;
/// Throughputs within this share of the best count as tied (saturated choice).
const NEAR_BEST: f64 = 0.97;
/// Gaps seen before their variability is trusted.
const MIN_GAPS: usize = 16;
/// Variability beyond this is one burst, not a steady property of the traffic.
const MAX_CV2: f64 = 16.0;
/// Costs below this are measurement noise.
const MIN_COST_S: f64 = 1e-6;

/// Chooses the delay and batch size of one model version from measured costs, arrival rate and
/// p99 latency. Bounded memory: at most [`MAX_SIZES`] cost entries, a window of [`WINDOW`]
/// latencies, [`PEAKS`] peaks.
#[derive(Clone, Debug)]
pub struct AdaptiveController {
    target: Duration,
    max_batch_size: u64,
    instances: f64,
    /// Execution time (s) per batch size.
    costs: BTreeMap<u64, Ewma>,
    /// cost(b) = a + k·b, seconds, fitted over `costs`.
    fit: Option<(f64, f64)>,
    /// The last [`RATE_WINDOW`] arrivals, in order.
    arrivals: VecDeque<Instant>,
    /// Mean seconds between the arrivals in the window, and mean squared gap.
    gap: Option<f64>,
    gap_sq: f64,
    /// Mean of (execution time / its size's mean − 1)²: the squared coefficient of variation of
    /// execution times, pooled over sizes.
    service_cv2: f64,
    /// Mean inferences per arriving request.
    per_arrival: f64,
    /// Most requests in the system (queued + executing) seen since the last execution ended,
    /// and that peak for the last executions.
    cycle_peak: usize,
    peaks: VecDeque<usize>,
    window: Vec<u64>,
    headroom: f64,
    last_p99: Option<Duration>,
    choice: Choice,
}

impl AdaptiveController {
    /// `max_batch_size` from the config, `instances` executing in parallel, `cold_delay` the
    /// delay to use until something is measured (the config's `max_queue_delay_microseconds`).
    pub fn new(
        config: AdaptiveConfig,
        max_batch_size: u64,
        instances: usize,
        cold_delay: Duration,
    ) -> AdaptiveController {
        let max_batch_size = max_batch_size.max(1);
        AdaptiveController {
            target: config.max_p99_latency,
            max_batch_size,
            instances: instances.max(1) as f64,
            costs: BTreeMap::new(),
            fit: None,
            arrivals: VecDeque::with_capacity(RATE_WINDOW),
            gap: None,
            gap_sq: 0.0,
            service_cv2: 0.0,
            per_arrival: 1.0,
            cycle_peak: 0,
            peaks: VecDeque::with_capacity(PEAKS),
            window: Vec::with_capacity(WINDOW),
            headroom: MAX_HEADROOM,
            last_p99: None,
            choice: Choice {
                max_batch: max_batch_size,
                max_delay: cold_delay,
                target_batch: max_batch_size,
                saturated: false,
                cold: true,
            },
        }
    }

    /// The controller of a model whose config asks for adaptive batching; `Ok(None)` when it
    /// does not (or does not batch at all). The error names the field.
    pub fn from_config(config: &ModelConfig, instances: usize) -> Result<Option<AdaptiveController>, String> {
        let Some(db) = &config.dynamic_batching else { return Ok(None) };
        let Some(adaptive) = AdaptiveConfig::from_dynamic_batching(db)? else { return Ok(None) };
        if config.max_batch_size == 0 {
            return Ok(None);
        }
        let cold = Duration::from_micros(db.max_queue_delay_microseconds);
        Ok(Some(AdaptiveController::new(adaptive, u64::from(config.max_batch_size), instances, cold)))
    }

    /// A request of `inferences` arrived at `now`; `in_system` requests are now queued or
    /// executing, this one included.
    pub fn observe_arrival(&mut self, now: Instant, inferences: u64, in_system: usize) {
        match self.arrivals.back() {
            Some(&last) => {
                self.per_arrival += RATE_ALPHA * (inferences.max(1) as f64 - self.per_arrival);
                if self.arrivals.len() == RATE_WINDOW {
                    self.arrivals.pop_front();
                }
                self.arrivals.push_back(last.max(now));
            }
            None => {
                self.per_arrival = inferences.max(1) as f64;
                self.arrivals.push_back(now);
            }
        }
        self.measure_gaps();
        self.cycle_peak = self.cycle_peak.max(in_system);
        self.recompute();
    }

    /// Mean and mean square of the gaps in the arrival window. A window rather than an EWMA of
    /// single gaps: two requests that reach the scheduler together (after a stall of the
    /// network or of the HTTP threads) would pull an EWMA's rate above what batch 1 serves and
    /// make the controller wait for a companion it does not need.
    fn measure_gaps(&mut self) {
        let n = self.arrivals.len().saturating_sub(1);
        if n == 0 {
            return;
        }
        let (first, last) = (self.arrivals[0], self.arrivals[n]);
        let span = last.saturating_duration_since(first).as_secs_f64();
        let sq: f64 = self
            .arrivals
            .iter()
            .zip(self.arrivals.iter().skip(1))
            .map(|(a, b)| b.saturating_duration_since(*a).as_secs_f64().powi(2))
            .sum();
        self.gap = Some(span / n as f64);
        self.gap_sq = sq / n as f64;
    }

    /// A batch of `batch_size` inferences took `duration` on an instance.
    pub fn observe_execution(&mut self, batch_size: u64, duration: Duration) {
        if self.cycle_peak > 0 {
            if self.peaks.len() == PEAKS {
                self.peaks.pop_front();
            }
            self.peaks.push_back(self.cycle_peak);
            self.cycle_peak = 0;
        }
        if batch_size == 0 || batch_size > self.max_batch_size {
            return;
        }
        let secs = duration.as_secs_f64().max(MIN_COST_S);
        if let Some(e) = self.costs.get_mut(&batch_size) {
            let dev = secs / e.mean - 1.0;
            self.service_cv2 += COST_ALPHA * (dev * dev - self.service_cv2);
            e.mean += COST_ALPHA * (secs - e.mean);
            e.n = e.n.saturating_add(1);
        } else if self.costs.len() < MAX_SIZES {
            self.costs.insert(batch_size, Ewma { mean: secs, n: 1 });
        }
        self.refit();
        self.recompute();
    }

    /// A request completed `latency` after it was queued (queue + compute).
    pub fn observe_latency(&mut self, latency: Duration) {
        self.window.push(latency.as_nanos().min(u64::MAX as u128) as u64);
        if self.window.len() < WINDOW {
            return;
        }
        self.window.sort_unstable();
        let p99 = Duration::from_nanos(self.window[(WINDOW * 99).div_ceil(100) - 1]);
        self.window.clear();
        self.last_p99 = Some(p99);
        self.headroom = if p99 > self.target {
            (self.headroom * SHRINK).max(MIN_HEADROOM)
        } else {
            (self.headroom * RELAX).min(MAX_HEADROOM)
        };
        self.recompute();
    }

    /// `(max_batch, max_delay)` for the [`BatchPolicy`].
    pub fn current(&self) -> (u64, Duration) {
        (self.choice.max_batch, self.choice.max_delay)
    }

    /// The whole current choice.
    pub fn choice(&self) -> Choice {
        self.choice
    }

    /// The share of the target currently planned with (0.3..=0.9).
    pub fn headroom(&self) -> f64 {
        self.headroom
    }

    /// The p99 of the last complete window of latencies.
    pub fn last_p99(&self) -> Option<Duration> {
        self.last_p99
    }

    /// Estimated arrival rate, inferences per second.
    pub fn arrival_rate(&self) -> Option<f64> {
        self.gap.map(|g| self.per_arrival / g.max(1e-12))
    }

    /// Squared coefficient of variation of the gaps between arrivals: 1 for Poisson arrivals,
    /// near 0 for evenly spaced ones, above 1 for bursts. Poisson (1) until a few gaps are seen.
    pub fn arrival_cv2(&self) -> f64 {
        match self.gap {
            Some(m) if self.arrivals.len() > MIN_GAPS && m > 0.0 => {
                ((self.gap_sq - m * m) / (m * m)).clamp(0.0, MAX_CV2)
            }
            _ => 1.0,
        }
    }

    /// Squared coefficient of variation of execution times (0 when they never vary).
    pub fn service_cv2(&self) -> f64 {
        self.service_cv2.clamp(0.0, MAX_CV2)
    }

    /// Predicted execution time of a batch of `b` inferences.
    pub fn predicted_cost(&self, b: u64) -> Option<Duration> {
        self.cost(b).map(Duration::from_secs_f64)
    }

    /// The most requests that were in the system (queued + executing) at once over the last
    /// executions: in a closed loop (clients that wait for their answer before sending again)
    /// no more will come while they are all here.
    pub fn expected_outstanding(&self) -> Option<usize> {
        self.peaks.iter().copied().chain([self.cycle_peak]).max().filter(|&m| m > 0)
    }

    /// Sets the policy's batch cap, delay and early stop before a decision; `in_flight`
    /// requests are executing.
    pub fn apply(&self, policy: &mut BatchPolicy, in_flight: usize) {
        policy.max_batch_size = self.choice.max_batch;
        policy.max_delay = self.choice.max_delay;
        policy.stop_at = if self.choice.cold {
            None
        } else {
            self.expected_outstanding().map(|m| m.saturating_sub(in_flight).max(1))
        };
    }

    fn cost(&self, b: u64) -> Option<f64> {
        match self.costs.get(&b) {
            Some(e) if e.n >= COST_MIN_SAMPLES => Some(e.mean),
            _ => self.fit.map(|(a, k)| (a + k * b as f64).max(MIN_COST_S)),
        }
    }

    /// Weighted least squares of cost(b) = a + k·b over the measured sizes, a, k ≥ 0. One size
    /// alone says nothing about the slope: assume half of its cost is fixed.
    fn refit(&mut self) {
        let (mut sw, mut sb, mut sc, mut sbb, mut sbc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&b, e) in &self.costs {
            let (w, b) = (f64::from(e.n.min(8)), b as f64);
            sw += w;
            sb += w * b;
            sc += w * e.mean;
            sbb += w * b * b;
            sbc += w * b * e.mean;
        }
        if sw == 0.0 {
            return;
        }
        let (mb, mc) = (sb / sw, sc / sw);
        let var = sbb / sw - mb * mb;
        let fit = if self.costs.len() < 2 || var <= 1e-9 * mb * mb {
            (mc / 2.0, mc / (2.0 * mb))
        } else {
            let k = (sbc / sw - mb * mc) / var;
            let a = mc - k * mb;
            if k < 0.0 {
                (mc, 0.0)
            } else if a < 0.0 {
                (0.0, sbc / sbb)
            } else {
                (a, k)
            }
        };
        self.fit = Some(fit);
    }

    /// For each candidate size b: gather(b) = (b − r)/λ (r inferences per request, λ per
    /// second), latency(b) = gather(b) + 2·cost(b), throughput(b) = instances·b/cost(b).
    /// A size is feasible when latency(b) ≤ budget and throughput(b) ≥ λ; b* is the feasible
    /// size of least expected latency ([`expected_latency`]); the delay is gather(b*), the cap
    /// the largest b with 2·cost(b) ≤ budget. Without a feasible b, the b of best throughput and
    /// no delay.
    fn recompute(&mut self) {
        if self.fit.is_none() {
            return;
        }
        let budget = self.target.as_secs_f64() * self.headroom;
        let lambda = self.arrival_rate();
        let (ca2, cs2) = (self.arrival_cv2(), self.service_cv2());
        let gather = |b: u64| {
            let more = (b as f64 - self.per_arrival).max(0.0);
            match lambda {
                _ if more == 0.0 => 0.0,
                Some(l) => more / l,
                None => f64::INFINITY,
            }
        };
        // (b, expected latency) of the best feasible size so far; a later (larger) size wins ties.
        let mut best: Option<(u64, f64)> = None;
        let mut cap: Option<u64> = None;
        let mut rates = Vec::new();
        for b in candidates(self.max_batch_size) {
            let Some(c) = self.cost(b) else { continue };
            let throughput = self.instances * b as f64 / c;
            rates.push((b, throughput));
            if 2.0 * c <= budget {
                cap = Some(b);
            }
            if gather(b) + 2.0 * c <= budget && lambda.is_none_or(|l| throughput >= l) {
                // The arrivals' own spread, not 1/b of it as for batches gathered b at a time:
                // while an instance is busy the backlog forms batches whatever b* is, so the
                // queue the instance sees is driven by single arrivals. (With c_a²/b the
                // controller gathered pairs of Poisson arrivals at half load on a CPU model,
                // 4 ms of queue at the median, for nothing.)
                let variability = ca2 + cs2;
                let e = expected_latency(gather(b), c, lambda.unwrap_or(0.0) / throughput, variability, self.instances);
                if best.is_none_or(|(_, e0)| e <= e0) {
                    best = Some((b, e));
                }
            }
        }
        let best = best.map(|(b, _)| b);
        let delay = |b: u64, c: f64| Duration::from_secs_f64(gather(b).min(budget - 2.0 * c).max(0.0));
        self.choice = match best {
            Some(b) => Choice {
                max_batch: cap.unwrap_or(b).max(b),
                max_delay: delay(b, self.cost(b).unwrap_or(0.0)),
                target_batch: b,
                saturated: false,
                cold: false,
            },
            None => {
                // Among sizes within a few percent of the best throughput, the largest: when costs
                // are nearly flat in b (measurement noise decides), a cap of 1 would never measure
                // larger batches again, and a larger batch costs fewer dispatches.
                let top = rates.iter().map(|&(_, t)| t).fold(0.0, f64::max);
                let b = rates.iter().filter(|&&(_, t)| t >= top * NEAR_BEST).map(|&(b, _)| b).max().unwrap_or(1);
                Choice {
                    max_batch: b,
                    max_delay: delay(b, self.cost(b).unwrap_or(0.0)),
                    target_batch: b,
                    saturated: true,
                    cold: false,
                }
            }
        };
    }
}

/// Expected time in the system of a request when batches of b are formed: half the time to
/// gather b (the first waits all of it, the last none), the execution, and the wait for the
/// instance — Kingman's G/G/1 approximation (c_a² + c_s²)/2 · ρ/(1 − ρ) batch costs at
/// utilization ρ = λ / throughput(b), with `variability` = c_a² + c_s² of the gaps between
/// arrivals and of execution times, shared between the instances. Poisson arrivals and fixed
/// costs make this M/D/1's ρ/(2(1 − ρ)); evenly spaced arrivals and steady costs queue hardly
/// at all.
///
/// Among the sizes that keep up within the budget this prefers the quickest: at low load no
/// waiting at all (a batch gains no throughput that is needed, it only makes requests wait for
/// company), at higher load the size where the wait for the instance stops shrinking faster
/// than gathering grows. Infinite at ρ ≥ 1.
fn expected_latency(gather: f64, cost: f64, rho: f64, variability: f64, instances: f64) -> f64 {
    if rho >= 1.0 {
        return f64::INFINITY;
    }
    gather / 2.0 + cost + variability / 2.0 * rho / (1.0 - rho) * cost / instances
}

/// Every size up to 32, then steps of 1/8 up to `max` (and `max` itself): a bounded number of
/// candidates whatever `max_batch_size` is.
fn candidates(max: u64) -> impl Iterator<Item = u64> {
    let mut next = Some(1u64);
    std::iter::from_fn(move || {
        let b = next?;
        next = match b {
            b if b >= max => None,
            b if b < 32 => Some(b + 1),
            b => Some((b + b.div_ceil(8)).min(max)),
        };
        Some(b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn controller(target_ms: u64, max: u64) -> AdaptiveController {
        let cfg = AdaptiveConfig { max_p99_latency: Duration::from_millis(target_ms) };
        AdaptiveController::new(cfg, max, 1, Duration::from_micros(500))
    }

    /// cost(b) = a + k·b (milliseconds), measured three times for each of `sizes`.
    fn feed_costs(c: &mut AdaptiveController, a_ms: f64, k_ms: f64, sizes: &[u64]) {
        for &b in sizes {
            for _ in 0..3 {
                c.observe_execution(b, Duration::from_secs_f64((a_ms + k_ms * b as f64) / 1000.0));
            }
        }
    }

    /// `n` single-inference arrivals `gap` apart, starting at `t`; returns the last instant.
    fn feed_rate(c: &mut AdaptiveController, mut t: Instant, gap: Duration, n: usize) -> Instant {
        for _ in 0..n {
            t += gap;
            c.observe_arrival(t, 1, 1);
        }
        t
    }

    /// Gives the arrivals seen so far (evenly spaced by `feed_rate`) the variability of Poisson
    /// arrivals at the same rate, E[g²] = 2·E[g]², as if they had come at random.
    fn as_poisson(c: &mut AdaptiveController) {
        let g = c.gap.expect("arrivals were fed");
        c.gap_sq = 2.0 * g * g;
        c.recompute();
        assert!((c.arrival_cv2() - 1.0).abs() < 1e-9);
    }

    /// The choice after cost(b) = a + k·b (ms) was measured and Poisson arrivals came `gap`
    /// apart on average.
    fn settled(target_ms: u64, max: u64, a_ms: f64, k_ms: f64, gap: Duration) -> Choice {
        let mut c = controller(target_ms, max);
        feed_costs(&mut c, a_ms, k_ms, &[1, 2, 4, 8]);
        feed_rate(&mut c, Instant::now(), gap, 100);
        as_poisson(&mut c);
        c.choice()
    }

    #[test]
    fn cold_start_behaves_like_the_config() {
        let mut c = controller(50, 16);
        assert_eq!(c.current(), (16, Duration::from_micros(500)));
        assert!(c.choice().cold);
        feed_rate(&mut c, Instant::now(), MS, 10);
        assert!(c.choice().cold, "arrivals alone say nothing about costs");
        let mut p = BatchPolicy::dynamic(16, &DynamicBatching::default());
        c.apply(&mut p, 0);
        assert_eq!((p.max_batch_size, p.max_delay, p.stop_at), (16, Duration::from_micros(500), None));
        c.observe_execution(1, MS);
        assert!(!c.choice().cold);
    }

    #[test]
    fn cost_is_fitted_affine_and_extrapolated() {
        let mut c = controller(50, 64);
        feed_costs(&mut c, 2.0, 0.5, &[1, 4]);
        let d = |b| c.predicted_cost(b).unwrap().as_secs_f64() * 1000.0;
        assert!((d(16) - 10.0).abs() < 1e-6, "{}", d(16));
        assert!((d(2) - 3.0).abs() < 1e-6, "{}", d(2));
        // One size alone: half of its cost is taken as fixed.
        let mut c = controller(50, 64);
        c.observe_execution(4, Duration::from_millis(4));
        let d8 = c.predicted_cost(8).unwrap().as_secs_f64() * 1000.0;
        assert!((d8 - 6.0).abs() < 1e-6, "{d8}");
    }

    #[test]
    fn low_rate_gives_small_batches_and_no_delay() {
        let mut c = controller(50, 32);
        feed_costs(&mut c, 1.0, 0.1, &[1, 2, 4, 8]);
        feed_rate(&mut c, Instant::now(), 100 * MS, 20);
        let ch = c.choice();
        assert_eq!(ch.target_batch, 1, "{ch:?}");
        assert_eq!(ch.max_delay, Duration::ZERO);
        assert!(!ch.saturated);
    }

    #[test]
    fn high_rate_gives_bigger_batches_within_the_budget() {
        let mut c = controller(50, 32);
        feed_costs(&mut c, 1.0, 0.1, &[1, 2, 4, 8]);
        let t = feed_rate(&mut c, Instant::now(), 100 * MS, 20);
        let low = c.choice();
        feed_rate(&mut c, t, Duration::from_micros(200), 100);
        as_poisson(&mut c);
        let high = c.choice();
        assert!(high.target_batch > low.target_batch && high.target_batch >= 11, "{low:?} -> {high:?}");
        assert!(high.max_delay > Duration::ZERO);
        // The predicted worst latency stays within the planned share of the target.
        let cost = c.predicted_cost(high.target_batch).unwrap();
        assert!(high.max_delay + 2 * cost <= Duration::from_millis(45), "{high:?}");
        assert!(high.max_batch >= high.target_batch);
    }

    #[test]
    fn below_capacity_it_does_not_wait_for_company_it_does_not_need() {
        // A CPU model whose batches cost what their requests cost one by one (4.5 ms each), at
        // half its capacity: batching buys no throughput that is needed, so nobody waits, even
        // though waiting for two or three would fit the 50 ms target.
        let ch = settled(50, 32, 0.0, 4.5, Duration::from_micros(9000));
        assert_eq!((ch.target_batch, ch.max_delay, ch.saturated), (1, Duration::ZERO, false), "{ch:?}");
        // A backlog still goes out in batches as big as the budget allows.
        assert_eq!(ch.max_batch, 5, "{ch:?}");
        // With a large fixed cost per batch (an accelerator), the same rate is worth batching.
        let ch = settled(50, 32, 8.0, 0.1, Duration::from_micros(9000));
        assert!(ch.target_batch > 1 && ch.max_delay > Duration::ZERO, "{ch:?}");
    }

    #[test]
    fn evenly_spaced_arrivals_are_not_worth_waiting_for_where_random_ones_are() {
        // 100/s against batch 1 at 8 ms (125/s, ρ = 0.8): random arrivals would queue about
        // 2 batch-1 times for the instance, so gathering 2 (10 ms, and 9 ms for the pair) pays.
        // Evenly spaced arrivals and steady costs find the instance free: no waiting.
        let gap = Duration::from_millis(10);
        let random = settled(100, 32, 7.0, 1.0, gap);
        assert!(random.target_batch > 1 && random.max_delay > Duration::ZERO, "{random:?}");
        let mut c = controller(100, 32);
        feed_costs(&mut c, 7.0, 1.0, &[1, 2, 4, 8]);
        feed_rate(&mut c, Instant::now(), gap, 100);
        assert!(c.arrival_cv2() < 1e-6 && c.service_cv2() < 1e-6);
        let even = c.choice();
        assert_eq!((even.target_batch, even.max_delay), (1, Duration::ZERO), "{even:?}");
        // Few gaps say little about their spread: until then arrivals count as random.
        let mut c = controller(100, 32);
        feed_costs(&mut c, 7.0, 1.0, &[1, 2, 4, 8]);
        feed_rate(&mut c, Instant::now(), gap, 5);
        assert_eq!(c.arrival_cv2(), 1.0);
    }

    #[test]
    fn two_requests_arriving_together_do_not_make_it_wait() {
        // 143/s evenly spaced against batch 1 at 6.15 ms (162/s): no waiting. Then one request
        // is held up and reaches the scheduler with the next (gaps of 13.7 and 0.3 ms). An
        // average of single gaps would now read 177/s, beyond batch 1, and wait for pairs; the
        // rate over the window barely moves.
        let mut c = controller(50, 32);
        feed_costs(&mut c, 0.5, 5.65, &[1, 2, 4, 8]);
        let gap = Duration::from_secs_f64(1.0 / 143.0);
        let t = feed_rate(&mut c, Instant::now(), gap, 40);
        assert_eq!((c.choice().target_batch, c.choice().max_delay), (1, Duration::ZERO));
        let t = t + gap + gap - Duration::from_micros(300);
        c.observe_arrival(t, 1, 1);
        c.observe_arrival(t + Duration::from_micros(300), 1, 2);
        let rate = c.arrival_rate().unwrap();
        assert!(rate < 150.0, "{rate}");
        let ch = c.choice();
        assert_eq!((ch.target_batch, ch.max_delay), (1, Duration::ZERO), "{ch:?}");
    }

    #[test]
    fn execution_time_spread_is_measured() {
        let mut c = controller(100, 32);
        for i in 0..200 {
            c.observe_execution(1, if i % 2 == 0 { 5 * MS } else { 15 * MS });
        }
        // Times alternate ±50 % around a mean of 10 ms: c_s² ≈ 0.25 (more, as each is compared
        // with a mean that moves a little after every sample).
        assert!(c.service_cv2() > 0.2 && c.service_cv2() < 0.5, "{}", c.service_cv2());
    }

    #[test]
    fn a_tighter_target_waits_less() {
        let choice = |target_ms| settled(target_ms, 32, 1.0, 0.1, Duration::from_micros(200));
        let (loose, tight) = (choice(50), choice(7));
        assert!(tight.max_delay < loose.max_delay, "{loose:?} vs {tight:?}");
        assert!(tight.target_batch < loose.target_batch, "{loose:?} vs {tight:?}");
        assert!(!tight.saturated);
    }

    #[test]
    fn beyond_what_the_target_allows_it_maximises_throughput() {
        // 5000/s needs b ≥ 10 with these costs, whose latency does not fit 5 ms.
        let ch = settled(5, 32, 1.0, 0.1, Duration::from_micros(200));
        assert!(ch.saturated, "{ch:?}");
        assert_eq!((ch.max_batch, ch.target_batch, ch.max_delay), (32, 32, Duration::ZERO));
    }

    #[test]
    fn saturated_with_flat_costs_it_does_not_settle_on_batch_one() {
        // No fixed cost: every batch size gives the same throughput, 1000/s; 5000/s arrive.
        let ch = settled(5, 16, 0.0, 1.0, Duration::from_micros(200));
        assert!(ch.saturated, "{ch:?}");
        assert_eq!(ch.max_batch, 16, "{ch:?}");
    }

    #[test]
    fn the_worked_example_in_the_docs() {
        let choice = |target_ms, gap| {
            let ch = settled(target_ms, 32, 1.0, 0.1, gap);
            (ch.target_batch, (ch.max_delay.as_secs_f64() * 1e4).round() / 10.0, ch.max_batch, ch.saturated)
        };
        let fast = Duration::from_micros(200);
        assert_eq!(choice(50, 100 * MS), (1, 0.0, 32, false));
        assert_eq!(choice(50, fast), (19, 3.6, 32, false));
        assert_eq!(choice(7, fast), (11, 2.0, 21, false));
        assert_eq!(choice(5, fast), (32, 0.0, 32, true));
    }

    #[test]
    fn p99_over_the_target_shrinks_the_headroom_and_the_delay() {
        // A target that binds: the quickest size (19 at 5000/s) does not fit 0.9 × 8 ms; once
        // the headroom shrinks to 0.72 no size that keeps up (b ≥ 11) fits at all.
        let mut c = controller(8, 64);
        feed_costs(&mut c, 1.0, 0.1, &[1, 2, 4, 8]);
        feed_rate(&mut c, Instant::now(), Duration::from_micros(200), 100);
        as_poisson(&mut c);
        let before = c.choice();
        assert!(before.max_delay > Duration::ZERO && !before.saturated, "{before:?}");
        for _ in 0..WINDOW {
            c.observe_latency(80 * MS);
        }
        assert_eq!(c.last_p99(), Some(80 * MS));
        assert!((c.headroom() - 0.72).abs() < 1e-9, "{}", c.headroom());
        let after = c.choice();
        assert!(after.max_delay < before.max_delay, "{before:?} -> {after:?}");
        for _ in 0..20 * WINDOW {
            c.observe_latency(80 * MS);
        }
        assert!((c.headroom() - MIN_HEADROOM).abs() < 1e-9);
        // One slow request in a window is below the p99: the headroom relaxes, up to 0.9.
        for i in 0..100 * WINDOW {
            c.observe_latency(if i % WINDOW == 0 { 500 * MS } else { 5 * MS });
        }
        assert!((c.headroom() - MAX_HEADROOM).abs() < 1e-9);
    }

    #[test]
    fn never_exceeds_max_batch_size() {
        for max in [1, 3, 8, 100, 1000] {
            let mut c = controller(1000, max);
            feed_costs(&mut c, 1.0, 0.001, &[1, 2, max]);
            c.observe_execution(max + 5, MS); // cannot happen; ignored
            feed_rate(&mut c, Instant::now(), Duration::from_nanos(10), 200);
            let ch = c.choice();
            assert!(ch.max_batch <= max && ch.target_batch <= max, "max {max}: {ch:?}");
            assert_eq!(ch.max_batch, max, "cheap batches: the cap is the config's");
        }
        assert!(candidates(1000).count() < 80);
        assert_eq!(candidates(1000).last(), Some(1000));
        assert_eq!(candidates(1).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_closed_loop_does_not_wait_for_requests_that_cannot_come() {
        let mut c = controller(200, 64);
        feed_costs(&mut c, 1.0, 0.1, &[1, 2, 4]);
        let mut p = BatchPolicy::dynamic(64, &DynamicBatching::default());
        // 32 clients, each sends again when answered: at most 32 requests are ever here.
        let mut t = Instant::now();
        for _ in 0..4 {
            for i in 1..=32 {
                t += Duration::from_micros(20);
                c.observe_arrival(t, 1, i);
            }
            c.observe_execution(32, 4 * MS);
        }
        c.apply(&mut p, 0);
        assert_eq!(p.stop_at, Some(32));
        assert!(p.max_delay > Duration::ZERO);
        c.apply(&mut p, 20);
        assert_eq!(p.stop_at, Some(12));
        // One client alone: after a few executions, nothing is waited for.
        for _ in 0..PEAKS {
            t += 2 * MS;
            c.observe_arrival(t, 1, 1);
            c.observe_execution(1, MS);
        }
        c.apply(&mut p, 0);
        assert_eq!(p.stop_at, Some(1));
    }

    #[test]
    fn config_is_typed_and_bad_values_name_the_field() {
        let ok = |v: Option<f64>| {
            let d = DynamicBatching {
                adaptive: v.map(|ms| [("max_p99_latency_ms", ms)].into_iter().collect()),
                ..Default::default()
            };
            AdaptiveConfig::from_dynamic_batching(&d)
        };
        assert_eq!(ok(None), Ok(None));
        assert_eq!(ok(Some(50.0)).unwrap().unwrap().max_p99_latency, 50 * MS);
        assert_eq!(ok(Some(2.5)).unwrap().unwrap().max_p99_latency, Duration::from_micros(2500));
        assert!(ok(Some(0.0)).unwrap_err().contains("dynamic_batching.adaptive.max_p99_latency_ms"));
        assert!(ok(Some(-3.0)).unwrap_err().contains("dynamic_batching.adaptive.max_p99_latency_ms"));

        let with = |pairs: &[(&str, &str)]| DynamicBatching {
            adaptive: Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            ..Default::default()
        };
        // pbtxt and YAML may give numbers as strings.
        let d = with(&[("max_p99_latency_ms", "50")]);
        assert_eq!(AdaptiveConfig::from_dynamic_batching(&d).unwrap().unwrap().max_p99_latency, 50 * MS);
        let e = validate(&with(&[("max_p99_latency_ms", "fast")])).unwrap_err();
        assert!(e.contains("dynamic_batching.adaptive.max_p99_latency_ms") && e.contains("fast"), "{e}");
        let e = validate(&with(&[("max_p99_latency", "50")])).unwrap_err();
        assert!(e.contains("unknown field 'max_p99_latency'"), "{e}");
        let e = validate(&with(&[])).unwrap_err();
        assert!(e.contains("max_p99_latency_ms is required"), "{e}");
        let e = validate(&DynamicBatching { adaptive: Some(true.into()), ..Default::default() }).unwrap_err();
        assert!(e.starts_with("dynamic_batching.adaptive must be a block"), "{e}");
    }

    #[test]
    fn from_config_needs_batching() {
        let d = DynamicBatching {
            adaptive: Some([("max_p99_latency_ms", 20)].into_iter().collect()),
            max_queue_delay_microseconds: 300,
            ..Default::default()
        };
        let cfg = ModelConfig { max_batch_size: 8, dynamic_batching: Some(d.clone()), ..Default::default() };
        let c = AdaptiveController::from_config(&cfg, 2).unwrap().unwrap();
        assert_eq!(c.current(), (8, Duration::from_micros(300)));
        let cfg = ModelConfig { max_batch_size: 0, dynamic_batching: Some(d), ..Default::default() };
        assert!(AdaptiveController::from_config(&cfg, 1).unwrap().is_none());
        assert!(AdaptiveController::from_config(&ModelConfig::default(), 1).unwrap().is_none());
    }
}
