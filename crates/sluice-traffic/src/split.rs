//! Weighted traffic, sticky per unit (a user id, a session; else the request itself).
//!
//! Each target draws a point for the unit from a fixed hash of (endpoint salt, unit, target)
//! and the unit goes to the target whose `-ln(point) / weight` is smallest (weighted rendezvous
//! hashing). That gives each target its weight's share of the units, keeps a unit on its target
//! while nothing changes, and when one weight is raised only that target's scores fall: the
//! units that move, move *to* the grown target, whatever the number of targets. (Slicing one
//! point by cumulative weights, as first planned, has that property for two targets only: with
//! three, raising the first weight shifts the second slice into the third.)

/// A point in (0, 1) for `key` under `salt`: the same on every machine and every version of
/// Sluice (an assignment must survive a restart and agree across replicas), so a fixed hash:
/// FNV-1a over salt, a separator and the key, then splitmix64's finaliser (FNV's high bits
/// alone are not uniform enough for short keys).
pub fn point(salt: &str, key: &str) -> f64 {
    point_of(salt, &[key.as_bytes()])
}

/// [`point`] of the key that `parts` make when joined, without joining them.
fn point_of(salt: &str, parts: &[&[u8]]) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let key = parts.iter().flat_map(|p| p.iter().copied());
    for b in salt.bytes().chain(std::iter::once(0xff)).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // Never 0: its logarithm is the score.
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A fixed 53-bit hash of `key`, for remembering units and requests in sets without keeping
/// their text.
pub fn key_hash(key: &str) -> u64 {
    (point("key", key) * (1u64 << 53) as f64) as u64
}

/// Which of `targets` (a stable name each, and its weight) `unit` goes to. Weights are
/// non-negative with a positive sum ([`check_weights`]); a zero weight gets no unit.
pub fn assign<S: AsRef<str>>(salt: &str, unit: &str, targets: &[(S, f64)]) -> usize {
    let mut best = (f64::INFINITY, 0);
    for (i, (name, w)) in targets.iter().enumerate() {
        if *w <= 0.0 {
            continue;
        }
        // The key is "unit \x1f name", hashed in pieces: this runs per request and target.
        let score = -point_of(salt, &[unit.as_bytes(), b"\x1f", name.as_ref().as_bytes()]).ln() / w;
        if score < best.0 {
            best = (score, i);
        }
    }
    best.1
}

/// Why a list of weights cannot be a split.
pub fn check_weights(weights: &[f64]) -> Result<(), String> {
    if weights.is_empty() {
        return Err("a split needs at least one target".into());
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
        return Err(format!("weights must be numbers >= 0, got {w}"));
    }
    if weights.iter().sum::<f64>() <= 0.0 {
        return Err("at least one weight must be above 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("user-{i}"))
    }

    const NAMES: [&str; 4] = ["add_sub:1", "add_sub:2", "spam-fast", "spam-accurate"];

    /// Worked out by hand from the hash's definition (a Python transcription of it).
    const PINNED_POINT: f64 = 0.4657354326246886;
    const PINNED_TARGET: usize = 0;

    fn targets(weights: &[f64]) -> Vec<(&'static str, f64)> {
        NAMES.iter().copied().zip(weights.iter().copied()).collect()
    }

    #[test]
    fn shares_follow_the_weights_within_two_percent() {
        for weights in [vec![95.0, 5.0], vec![50.0, 50.0], vec![1.0, 2.0, 7.0], vec![0.0, 1.0, 0.0, 3.0]] {
            let n = 100_000;
            let mut counts = vec![0usize; weights.len()];
            let t = targets(&weights);
            for u in units(n) {
                counts[assign("endpoint-a", &u, &t)] += 1;
            }
            let total: f64 = weights.iter().sum();
            for (c, w) in counts.iter().zip(&weights) {
                let share = *c as f64 / n as f64;
                assert!((share - w / total).abs() < 0.02, "{weights:?}: {counts:?}");
                if *w == 0.0 {
                    assert_eq!(*c, 0, "a zero weight gets nothing");
                }
            }
        }
    }

    #[test]
    fn a_unit_keeps_its_target_and_salts_are_independent() {
        let w = targets(&[50.0, 50.0]);
        for u in units(1000) {
            assert_eq!(assign("s", &u, &w), assign("s", &u, &w));
        }
        // Two endpoints with different salts do not put the same units together.
        let same = units(10_000).filter(|u| assign("a", u, &w) == assign("b", u, &w)).count();
        assert!((same as f64 / 10_000.0 - 0.5).abs() < 0.03, "{same}");
    }

    #[test]
    fn raising_one_weight_moves_units_only_to_that_target() {
        let before = [50.0, 20.0, 30.0];
        for grown in 0..3 {
            let mut after = before;
            after[grown] *= 2.0;
            let mut moved = 0;
            let (tb, ta) = (targets(&before), targets(&after));
            for u in units(50_000) {
                let (a, b) = (assign("s", &u, &tb), assign("s", &u, &ta));
                if a != b {
                    assert_eq!(b, grown, "unit {u} moved {a} -> {b} when target {grown} grew");
                    moved += 1;
                }
            }
            assert!(moved > 0);
        }
    }

    #[test]
    fn the_hash_is_fixed() {
        // The assignment of a unit must not change between releases or machines: these values
        // are pinned, not computed.
        assert_eq!(point("checkout", "user-42"), PINNED_POINT);
        assert_eq!(assign("checkout", "user-42", &targets(&[1.0, 1.0, 1.0, 1.0])), PINNED_TARGET);
        assert!(point("", "") > 0.0 && point("", "") < 1.0);
        assert_ne!(point("a", "bc"), point("ab", "c"), "the separator keeps salt and key apart");
    }

    #[test]
    fn reordering_targets_keeps_assignments() {
        let w = targets(&[3.0, 1.0, 2.0]);
        let mut reversed = w.clone();
        reversed.reverse();
        for u in units(2000) {
            assert_eq!(w[assign("s", &u, &w)].0, reversed[assign("s", &u, &reversed)].0);
        }
    }

    #[test]
    fn bad_weights_are_named() {
        assert!(check_weights(&[]).is_err());
        assert!(check_weights(&[1.0, -1.0]).unwrap_err().contains("-1"));
        assert!(check_weights(&[0.0, 0.0]).is_err());
        assert!(check_weights(&[f64::NAN]).is_err());
        assert!(check_weights(&[0.0, 5.0]).is_ok());
    }
}
