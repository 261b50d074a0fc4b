//! Hash buckets for rollouts that want a single threshold: README §5.
//!
//! The bucket is GrowthBook's SDK hash (`packages/sdk-js/src/util.ts`; its `build-your-own`
//! docs), so an id lands in the same bucket here as in any GrowthBook SDK with the same seed:
//! - v2: fnv32a(decimal(fnv32a(seed + id))) mod 10 000 / 10 000; hashing the hash decorrelates
//!   experiments whose seeds share a prefix;
//! - v1 (legacy): fnv32a(id + seed) mod 1000 / 1000, which GrowthBook documents as biased when
//!   experiments run in parallel; kept for compatibility only.
//!
//! fnv32a is 32-bit Fowler–Noll–Vo 1a (offset basis 0x811c9dc5, prime 0x01000193). The JS SDK
//! feeds it `charCodeAt`, i.e. UTF-16 code units, and so does this module: any id, ASCII or
//! not, gets the JS SDK's bucket. (GrowthBook's Python SDK feeds it code points; the two agree
//! on every character of the Basic Multilingual Plane and differ on others, e.g. emoji.)
//!
//! A canary ramp puts a unit on the candidate when its bucket is below the candidate's weight
//! (README §5, "single threshold"). Raising the weight then only moves units from stable to
//! candidate, never back, so a user who has seen the new model keeps it for the rest of the
//! ramp (README §5 reproduces 5 → 25 → 50 → 100 % with no unit moving back). Use one seed per
//! rollout (reusing it across successive versions exposes the same cohort first) and a fresh
//! seed per A/B experiment, or the same units come first in every experiment.
//!
//! This is not how Sluice's weighted `split` endpoint assigns targets: that is rendezvous
//! hashing over any number of targets (`crate::split`), which moves only what a re-weighting
//! requires; this is for a rollout that wants one threshold and GrowthBook's buckets.

/// Which GrowthBook hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashVersion {
    /// fnv32a(id + seed) mod 1000: 1000 buckets, correlated across experiments.
    V1,
    /// fnv32a(decimal(fnv32a(seed + id))) mod 10 000: 10 000 buckets.
    V2,
}

const FNV_OFFSET: u32 = 0x811c_9dc5;

/// One step of 32-bit FNV-1a.
fn fnv_step(hash: u32, unit: u32) -> u32 {
    (hash ^ unit).wrapping_mul(0x0100_0193)
}

/// 32-bit FNV-1a over the UTF-16 code units of the strings, one after the other.
fn fnv32a(parts: &[&str]) -> u32 {
    parts.iter().flat_map(|s| s.encode_utf16()).fold(FNV_OFFSET, |hash, unit| fnv_step(hash, u32::from(unit)))
}

/// fnv32a of the decimal digits of `n` (ASCII, so one code unit each), without building the
/// string: a rollout hashes every request.
fn fnv32a_decimal(n: u32) -> u32 {
    let mut digits = [0u8; 10];
    let (mut rest, mut start) = (n, digits.len());
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    digits[start..].iter().fold(FNV_OFFSET, |hash, &d| fnv_step(hash, u32::from(d)))
}

/// GrowthBook's bucket in [0, 1) for `value` (the unit's id) under `seed` (the experiment's
/// or rollout's salt).
pub fn growthbook_hash(seed: &str, value: &str, version: HashVersion) -> f64 {
    match version {
        HashVersion::V1 => f64::from(fnv32a(&[value, seed]) % 1000) / 1000.0,
        HashVersion::V2 => f64::from(fnv32a_decimal(fnv32a(&[seed, value])) % 10_000) / 10_000.0,
    }
}

/// Whether `unit` goes to the candidate of a canary rollout seeded `seed` when the candidate's
/// share is `candidate_weight` (0 to 1): its v2 bucket is below the weight. Weights resolve to
/// 0.01 %; 0 (or less, or NaN) sends no unit, 1 (or more) every unit.
pub fn routes_to_candidate(seed: &str, unit: &str, candidate_weight: f64) -> bool {
    growthbook_hash(seed, unit, HashVersion::V2) < candidate_weight
}

#[cfg(test)]
mod tests {
    use super::super::reference::{at, cases, count, num};
    use super::*;

    #[test]
    fn reproduces_growthbooks_published_vectors() {
        for (name, case) in cases("hash_bucketing/growthbook_fnv32a_vectors") {
            let (seed, value) = (case["seed"].as_str().unwrap(), case["value"].as_str().unwrap());
            let (version, buckets) = match count(case, "version") {
                1 => (HashVersion::V1, 1000.0),
                _ => (HashVersion::V2, 10_000.0),
            };
            let got = growthbook_hash(seed, value, version);
            let want = num(case, "expected_from_growthbook_cases_json");
            // Compared as bucket numbers: exact, whatever the last bit of the parsed decimal.
            assert_eq!((got * buckets).round(), (want * buckets).round(), "{name}: ({seed:?}, {value:?}, {version:?})");
        }
    }

    #[test]
    fn hashes_utf16_code_units_as_the_js_sdk_does() {
        // Computed with the JS SDK's algorithm (charCodeAt). "ü" is one code unit (0xfc, not
        // its two UTF-8 bytes); "😀" is two (a surrogate pair), where the Python SDK differs.
        assert_eq!(growthbook_hash("exp", "über-user", HashVersion::V2), 0.5082);
        assert_eq!(growthbook_hash("exp", "user-😀", HashVersion::V2), 0.5699);
        assert_eq!(growthbook_hash("exp", "user-😀", HashVersion::V1), 0.999);
    }

    fn ids() -> Vec<String> {
        (0..100_000).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn the_canary_ramp_reproduces_the_reference() {
        let ramp = at("hash_bucketing/rollout_stability_simulation_100k_ids_growthbook_hash_v2_seed_exp-seed/canary_threshold_ramp");
        let ids = ids();
        let mut previous: Option<Vec<bool>> = None;
        for step in ramp.as_array().unwrap() {
            let weight = num(step, "canary_weight");
            let on: Vec<bool> = ids.iter().map(|id| routes_to_candidate("exp-seed", id, weight)).collect();
            let candidates = on.iter().filter(|&&c| c).count() as f64;
            assert_eq!(candidates, (num(step, "fraction_on_canary") * 1e5).round(), "weight {weight}");
            if let Some(previous) = &previous {
                let moved = previous.iter().zip(&on).filter(|(a, b)| a != b).count() as u64;
                let back = previous.iter().zip(&on).filter(|(&a, &b)| a && !b).count() as u64;
                assert_eq!(moved, count(step, "units_moved_since_prev"), "weight {weight}: moved");
                assert_eq!(back, 0, "weight {weight}: moved back to stable");
                assert_eq!(back, count(step, "units_moved_canary_to_stable"));
            }
            previous = Some(on);
        }
    }

    #[test]
    fn a_candidate_unit_stays_candidate_at_every_higher_weight() {
        // A ramp with uneven steps, under a seed other than the reference's: a unit's
        // membership never falls as the weight rises, and each step's share is its weight
        // within binomial noise (σ ≤ 0.16 % at 100k).
        let weights = [0.0, 0.001, 0.01, 0.05, 0.2, 0.25, 0.5, 0.9, 0.9999, 1.0];
        let mut on_at = [0usize; 10];
        for i in 0..100_000 {
            let id = format!("req-{i:08x}");
            let member = weights.map(|w| routes_to_candidate("rollout-seed", &id, w));
            if let Some(first) = member.iter().position(|&m| m) {
                assert!(member[first..].iter().all(|&m| m), "{id} left the candidate as the weight rose");
            }
            member.iter().enumerate().filter(|(_, &m)| m).for_each(|(k, _)| on_at[k] += 1);
        }
        for (w, on) in weights.iter().zip(on_at) {
            assert!((on as f64 / 1e5 - w).abs() < 0.008, "weight {w}: {on} of 100 000");
        }
        assert_eq!((on_at[0], on_at[9]), (0, 100_000));
        assert!(!routes_to_candidate("s", "u", 0.0) && !routes_to_candidate("s", "u", f64::NAN));
        assert!(routes_to_candidate("s", "u", 1.0));
    }
}
