//! The reference values of the experiment-statistics brief, for the unit tests: a copy of its
//! `reference_values.json` (computed with scipy 1.17.1 and statsmodels 0.15.0 by the brief's
//! `compute_reference.py`), kept beside the crate's tests so that they run anywhere.

use std::sync::OnceLock;

use serde_json::Value;

const JSON: &str = include_str!("../../tests/data/experiment_reference_values.json");

/// The parsed file.
pub(crate) fn values() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(JSON).expect("the reference file is JSON"))
}

/// The value at a `/`-separated path, e.g. `"srm_chi_square/cases"`.
pub(crate) fn at(path: &str) -> &'static Value {
    let pointer = format!("/{path}");
    values().pointer(&pointer).unwrap_or_else(|| panic!("no {path} in the reference file"))
}

/// The cases of an array, each with its name (or its index when it has none).
pub(crate) fn cases(path: &str) -> Vec<(String, &'static Value)> {
    let list = at(path).as_array().unwrap_or_else(|| panic!("{path} is not an array"));
    list.iter()
        .enumerate()
        .map(|(i, case)| {
            let name = case.get("name").and_then(Value::as_str).map_or_else(|| format!("{path}[{i}]"), str::to_owned);
            (name, case)
        })
        .collect()
}

/// A number of a case, by a `/`-separated path inside it.
pub(crate) fn num(case: &Value, path: &str) -> f64 {
    let pointer = format!("/{path}");
    case.pointer(&pointer).and_then(Value::as_f64).unwrap_or_else(|| panic!("no number at {path} in {case}"))
}

/// An unsigned count of a case.
pub(crate) fn count(case: &Value, path: &str) -> u64 {
    let pointer = format!("/{path}");
    case.pointer(&pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no count at {path} in {case}"))
}

/// A pair `[lower, upper]` of a case.
pub(crate) fn pair(case: &Value, path: &str) -> (f64, f64) {
    (num(case, &format!("{path}/0")), num(case, &format!("{path}/1")))
}

/// Asserts `got` is within `rel` of `want`, relative to |want| (exactly equal when `want` is 0),
/// naming the case and the quantity.
#[track_caller]
pub(crate) fn assert_rel(case: &str, what: &str, got: f64, want: f64, rel: f64) {
    let err = if got == want { 0.0 } else { ((got - want) / want).abs() };
    assert!(err <= rel, "{case}: {what} = {got:e}, reference {want:e} (relative error {err:e} > {rel:e})");
}

/// Asserts both ends of an interval, relative to each end.
#[track_caller]
pub(crate) fn assert_interval(case: &str, what: &str, got: super::Interval, want: (f64, f64), rel: f64) {
    assert_rel(case, &format!("{what} lower"), got.lower, want.0, rel);
    assert_rel(case, &format!("{what} upper"), got.upper, want.1, rel);
}
