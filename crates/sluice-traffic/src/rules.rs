//! The conditions of a route's rules, evaluated against a request: its V2 parameters, its
//! headers (gRPC metadata), and the size of its inputs. `all`, `any` and `not` combine them. A
//! condition on something the request does not have is false (`present: false` aside).

use serde_json::Value;
use sluice_types::{InferRequest, RequestContext, TensorData};

/// A comparison of one value.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// Equal as JSON (`"1"` and `1` differ), except that a header, always text, equals a number
    /// or boolean written the same way.
    Equals(Value),
    In(Vec<Value>),
    /// Numbers (or numeric strings) only.
    Lt(f64),
    Gt(f64),
    /// Whether the value is there at all.
    Present(bool),
}

/// What a condition looks at in an input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Size {
    /// The longest element of a BYTES input, in characters.
    MaxChars(usize),
    /// The shortest element of a BYTES input, in characters.
    MinChars(usize),
    MaxElements(usize),
    MinElements(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    Parameter { key: String, test: Test },
    Header { name: String, test: Test },
    Input { name: String, size: Size },
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
}

impl Condition {
    pub fn holds(&self, req: &InferRequest, ctx: &RequestContext) -> bool {
        match self {
            Condition::Parameter { key, test } => check(test, req.parameters.get(key).map(Seen::Json)),
            Condition::Header { name, test } => check(test, ctx.header(name).map(Seen::Text)),
            Condition::Input { name, size } => req.input(name).is_some_and(|t| fits(*size, t)),
            Condition::All(cs) => cs.iter().all(|c| c.holds(req, ctx)),
            Condition::Any(cs) => cs.iter().any(|c| c.holds(req, ctx)),
            Condition::Not(c) => !c.holds(req, ctx),
        }
    }
}

/// A value as the request has it: JSON (parameters) or text (headers).
enum Seen<'a> {
    Json(&'a Value),
    Text(&'a str),
}

fn check(test: &Test, seen: Option<Seen>) -> bool {
    match (test, seen) {
        (Test::Present(want), seen) => seen.is_some() == *want,
        (_, None) => false,
        (Test::Equals(v), Some(s)) => equals(v, &s),
        (Test::In(vs), Some(s)) => vs.iter().any(|v| equals(v, &s)),
        (Test::Lt(x), Some(s)) => number(&s).is_some_and(|n| n < *x),
        (Test::Gt(x), Some(s)) => number(&s).is_some_and(|n| n > *x),
    }
}

fn equals(want: &Value, seen: &Seen) -> bool {
    match seen {
        Seen::Json(v) => *v == want,
        Seen::Text(t) => match want {
            Value::String(s) => s == t,
            Value::Number(_) | Value::Bool(_) => serde_json::from_str::<Value>(t).is_ok_and(|v| v == *want),
            Value::Null | Value::Array(_) | Value::Object(_) => false,
        },
    }
}

fn number(seen: &Seen) -> Option<f64> {
    match seen {
        Seen::Json(Value::Number(n)) => n.as_f64(),
        Seen::Json(Value::String(s)) => s.trim().parse().ok(),
        Seen::Text(s) => s.trim().parse().ok(),
        Seen::Json(_) => None,
    }
}

fn fits(size: Size, t: &sluice_types::Tensor) -> bool {
    let chars = || match &t.data {
        TensorData::Bytes(items) => Some(items.iter().map(|b| String::from_utf8_lossy(b).chars().count())),
        TensorData::Fixed(_) => None,
    };
    let elements = t.element_count().ok();
    match size {
        Size::MaxChars(n) => chars().is_some_and(|mut c| c.all(|c| c <= n)),
        Size::MinChars(n) => chars().is_some_and(|mut c| c.all(|c| c >= n)),
        Size::MaxElements(n) => elements.is_some_and(|e| e <= n),
        Size::MinElements(n) => elements.is_some_and(|e| e >= n),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_types::Tensor;

    use super::*;

    fn req(params: Value, text: &[&str]) -> InferRequest {
        let Value::Object(parameters) = params else { panic!() };
        InferRequest {
            model: "m".into(),
            parameters,
            inputs: vec![Tensor::from_strings("TEXT", vec![text.len() as i64, 1], text)],
            ..Default::default()
        }
    }

    fn ctx(headers: &[(&str, &str)]) -> RequestContext {
        let pairs: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RequestContext::new("r").with_header_pairs(&pairs)
    }

    fn param(key: &str, test: Test) -> Condition {
        Condition::Parameter { key: key.into(), test }
    }

    fn header(name: &str, test: Test) -> Condition {
        Condition::Header { name: name.into(), test }
    }

    #[test]
    fn parameters_compare_as_json() {
        let r = req(json!({"customer_tier": "enterprise", "confidence_threshold": 0.85, "n": "3"}), &["hi"]);
        let c = ctx(&[]);
        assert!(param("customer_tier", Test::Equals(json!("enterprise"))).holds(&r, &c));
        assert!(!param("customer_tier", Test::Equals(json!("free"))).holds(&r, &c));
        assert!(param("customer_tier", Test::In(vec![json!("pro"), json!("enterprise")])).holds(&r, &c));
        assert!(param("confidence_threshold", Test::Lt(0.9)).holds(&r, &c));
        assert!(!param("confidence_threshold", Test::Gt(0.9)).holds(&r, &c));
        assert!(param("n", Test::Gt(2.0)).holds(&r, &c), "numeric strings compare as numbers");
        assert!(!param("n", Test::Equals(json!(3))).holds(&r, &c), "but equality is exact");
        assert!(!param("missing", Test::Equals(json!(null))).holds(&r, &c));
        assert!(param("missing", Test::Present(false)).holds(&r, &c));
        assert!(!param("missing", Test::Lt(1.0)).holds(&r, &c), "nothing to compare is false");
    }

    #[test]
    fn headers_are_text_and_names_ignore_case() {
        let r = req(json!({}), &["hi"]);
        let c = ctx(&[("x-canary", "1"), ("x-user", "abc")]);
        assert!(header("X-Canary", Test::Equals(json!("1"))).holds(&r, &c));
        assert!(header("x-canary", Test::Equals(json!(1))).holds(&r, &c), "a header equals a number written the same");
        assert!(header("x-canary", Test::Lt(2.0)).holds(&r, &c));
        assert!(!header("x-user", Test::Lt(2.0)).holds(&r, &c), "not a number");
        assert!(header("x-user", Test::Present(true)).holds(&r, &c));
        assert!(!header("authorization", Test::Present(true)).holds(&r, &ctx(&[("authorization", "Bearer x")])));
    }

    #[test]
    fn input_sizes_count_characters_and_elements() {
        let c = ctx(&[]);
        let short = req(json!({}), &["héllo"]);
        let long = req(json!({}), &["short", "a much longer text than fifty characters, surely longer"]);
        let max50 = Condition::Input { name: "TEXT".into(), size: Size::MaxChars(50) };
        assert!(max50.holds(&short, &c));
        assert!(!max50.holds(&long, &c), "every element must fit");
        assert!(
            Condition::Input { name: "TEXT".into(), size: Size::MaxChars(5) }.holds(&short, &c),
            "é is one character"
        );
        assert!(Condition::Input { name: "TEXT".into(), size: Size::MinElements(2) }.holds(&long, &c));
        assert!(!Condition::Input { name: "TEXT".into(), size: Size::MaxElements(1) }.holds(&long, &c));
        assert!(!Condition::Input { name: "OTHER".into(), size: Size::MinElements(0) }.holds(&short, &c));
        let ids =
            InferRequest { inputs: vec![Tensor::from_vec("ids", vec![1, 3], vec![1i64, 2, 3])], ..Default::default() };
        assert!(!Condition::Input { name: "ids".into(), size: Size::MaxChars(10) }.holds(&ids, &c), "not text");
        assert!(Condition::Input { name: "ids".into(), size: Size::MaxElements(3) }.holds(&ids, &c));
    }

    #[test]
    fn all_any_not_combine() {
        // The issue's example: short texts from callers that accept lower confidence.
        let rule = Condition::All(vec![
            Condition::Input { name: "TEXT".into(), size: Size::MaxChars(50) },
            param("confidence_threshold", Test::Lt(0.9)),
        ]);
        let c = ctx(&[]);
        assert!(rule.holds(&req(json!({"confidence_threshold": 0.5}), &["hi"]), &c));
        assert!(!rule.holds(&req(json!({"confidence_threshold": 0.95}), &["hi"]), &c));
        assert!(!rule.holds(&req(json!({}), &["hi"]), &c));
        let any = Condition::Any(vec![param("a", Test::Present(true)), header("x-b", Test::Present(true))]);
        assert!(any.holds(&req(json!({}), &["x"]), &ctx(&[("x-b", "")])));
        assert!(!any.holds(&req(json!({}), &["x"]), &c));
        assert!(Condition::Not(Box::new(any)).holds(&req(json!({}), &["x"]), &c));
        assert!(Condition::All(vec![]).holds(&req(json!({}), &["x"]), &c), "all of nothing holds");
        assert!(!Condition::Any(vec![]).holds(&req(json!({}), &["x"]), &c));
    }
}
