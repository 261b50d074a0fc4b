//! Repeated simulated experiments through [`sluice_traffic::experiment::Analysis`], read after
//! every batch of outcomes as a dashboard would read them (issue 17's figures):
//!
//! - A/A (both arms at the baseline rate): how often the sequential test ever declares a
//!   difference, against a fixed-horizon z-test peeked at the same looks, and read once at the
//!   planned size;
//! - A/B with the design's minimum detectable effect: how often each finds it by the planned
//!   size (the observed power, beside the planned one), and the sequential test by twice it.
//!
//! Outcomes are Bernoulli draws from a fixed-seed generator (splitmix64), so a run is repeatable.
//!
//!     cargo run --release -p sluice-traffic --example experiment_sim -- [RUNS] [JSON]

use sluice_traffic::experiment::{Analysis, Design, Outcomes};
use sluice_traffic::stats::BinomialCounts;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one simulated experiment showed.
#[derive(Default)]
struct Run {
    sequential_by_plan: bool,
    sequential_by_twice: bool,
    fixed_peeking: bool,
    fixed_final: bool,
}

fn simulate(rng: &mut Rng, design: &Design, p_control: f64, p_treatment: f64, look_every: u64) -> Run {
    let planned = design.units_per_arm().expect("a valid design");
    let arms = vec!["control".to_string(), "treatment".to_string()];
    let mut analysis = Analysis::new(design.alpha, Some(planned), 1, 2);
    let (mut c, mut t) = (BinomialCounts::new(0, 0), BinomialCounts::new(0, 0));
    let mut run = Run::default();
    while c.trials < 2 * planned {
        for _ in 0..look_every {
            c.trials += 1;
            c.successes += u64::from(rng.next() < p_control);
            t.trials += 1;
            t.successes += u64::from(rng.next() < p_treatment);
        }
        let report = analysis.look(0, "conversion", &arms, &[Outcomes::Proportion(c), Outcomes::Proportion(t)]);
        let d = &report.differences[0];
        let fixed = d.p_value.is_some_and(|p| p < design.alpha);
        if c.trials <= planned {
            run.fixed_peeking |= fixed;
            run.sequential_by_plan |= d.concluded;
            if c.trials + look_every > planned {
                run.fixed_final = fixed;
            }
        }
        run.sequential_by_twice |= d.concluded;
    }
    run
}

fn share(runs: &[Run], f: impl Fn(&Run) -> bool) -> f64 {
    runs.iter().filter(|r| f(r)).count() as f64 / runs.len() as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let design = Design { baseline_rate: 0.10, mde: 0.02, alpha: 0.05, power: 0.8 };
    let planned = design.units_per_arm().expect("a valid design");
    let look_every = 100;
    let mut rng = Rng(20261207);
    let aa: Vec<Run> = (0..n_runs).map(|_| simulate(&mut rng, &design, 0.10, 0.10, look_every)).collect();
    let ab: Vec<Run> = (0..n_runs).map(|_| simulate(&mut rng, &design, 0.10, 0.12, look_every)).collect();
    let json = format!(
        concat!(
            "{{\"command\": \"cargo run --release -p sluice-traffic --example experiment_sim -- {runs}\",\n",
            " \"design\": {{\"baseline_rate\": 0.10, \"mde\": 0.02, \"alpha\": 0.05, \"power\": 0.8, \"planned_per_arm\": {planned}}},\n",
            " \"runs\": {runs}, \"look_every_per_arm\": {look},\n",
            " \"a_a\": {{\"sequential_ever_by_plan\": {aa_seq}, \"sequential_ever_by_twice_plan\": {aa_seq2}, \"fixed_peeked_every_look\": {aa_peek}, \"fixed_read_once_at_plan\": {aa_final}}},\n",
            " \"a_b_at_mde\": {{\"sequential_by_plan\": {ab_seq}, \"sequential_by_twice_plan\": {ab_seq2}, \"fixed_read_once_at_plan\": {ab_final}, \"planned_power\": 0.8}}}}\n"
        ),
        runs = n_runs,
        planned = planned,
        look = look_every,
        aa_seq = share(&aa, |r| r.sequential_by_plan),
        aa_seq2 = share(&aa, |r| r.sequential_by_twice),
        aa_peek = share(&aa, |r| r.fixed_peeking),
        aa_final = share(&aa, |r| r.fixed_final),
        ab_seq = share(&ab, |r| r.sequential_by_plan),
        ab_seq2 = share(&ab, |r| r.sequential_by_twice),
        ab_final = share(&ab, |r| r.fixed_final),
    );
    print!("{json}");
    if let Some(path) = args.get(2) {
        std::fs::write(path, json).expect("writing the JSON");
    }
}
