//! Which side of a canary a unit is on. A unit's point in (0, 1) comes from
//! [`crate::split::point`] and it goes to the candidate iff the point is below the candidate's
//! share: one threshold, so raising the percent from step to step only moves units from the
//! baseline to the candidate, never back, and a user seen at 5 % stays on the candidate at 25 %.
//!
//! The salt should name the rollout, not only the endpoint (say `<endpoint>/<candidate>`): with
//! the endpoint alone, every rollout on it would try its candidates on the same few users first.
//! Without a sticky unit, a request is its own unit: the caller draws a fresh random point.

use crate::split;

/// Whether a unit at `point` (in [0, 1)) is on the candidate when it takes `candidate_percent`.
pub fn to_candidate(point: f64, candidate_percent: f64) -> bool {
    point < candidate_percent / 100.0
}

/// [`to_candidate`] of `unit`'s hashed point under `salt`.
pub fn unit_to_candidate(salt: &str, unit: &str, candidate_percent: f64) -> bool {
    to_candidate(split::point(salt, unit), candidate_percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_percent_moves_units_only_to_the_candidate() {
        let n = 100_000;
        let points: Vec<f64> = (0..n).map(|i| split::point("fraud/3", &format!("user-{i}"))).collect();
        let mut before = vec![false; n];
        for percent in [5.0, 25.0, 50.0, 100.0] {
            let now: Vec<bool> = points.iter().map(|p| to_candidate(*p, percent)).collect();
            let back = before.iter().zip(&now).filter(|(b, a)| **b && !**a).count();
            assert_eq!(back, 0, "{back} units went back to the baseline at {percent}%");
            let share = now.iter().filter(|c| **c).count() as f64 / n as f64;
            assert!((share - percent / 100.0).abs() < 0.01, "{share} at {percent}%");
            before = now;
        }
        assert!(before.iter().all(|c| *c), "at 100 % every unit is on the candidate");
        assert!(!points.iter().any(|p| to_candidate(*p, 0.0)), "at 0 % none is");
    }

    #[test]
    fn a_unit_keeps_its_side() {
        for i in 0..1000 {
            let u = format!("user-{i}");
            assert_eq!(unit_to_candidate("s", &u, 25.0), unit_to_candidate("s", &u, 25.0));
            assert_eq!(unit_to_candidate("s", &u, 25.0), to_candidate(split::point("s", &u), 25.0));
        }
    }
}
