//! Checks a request against the model's config before it queues: every input known, of the
//! right datatype and shape, required inputs present, one batch size, and ragged inputs of one
//! request in agreement (see `check_ragged`). Messages name the tensor, what the model expects
//! and what came.

use sluice_types::config::TensorConfig;
use sluice_types::{InferRequest, ModelConfig, ServeError, Tensor};

fn shape_str(s: &[i64]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

fn dims_match(expected: &[i64], got: &[i64]) -> bool {
    expected.len() == got.len() && expected.iter().zip(got).all(|(&e, &g)| e == -1 || e == g)
}

/// Validates `req` and returns its batch size (1 for models that do not batch).
pub fn validate_request(config: &ModelConfig, req: &InferRequest) -> Result<u64, ServeError> {
    let model = &config.name;
    let mut batch: Option<i64> = None;
    for (i, t) in req.inputs.iter().enumerate() {
        if req.inputs[..i].iter().any(|o| o.name == t.name) {
            return Err(ServeError::invalid(format!("input '{}' is given more than once", t.name)));
        }
        let Some(tc) = config.input.iter().find(|c| c.name == t.name) else {
            return Err(ServeError::invalid(format!(
                "unexpected inference input '{}' for model '{model}' (it has inputs: {})",
                t.name,
                names(&config.input)
            )));
        };
        check_tensor(config, tc, t, &mut batch)?;
        check_ragged(config, tc, t, &req.inputs[..i])?;
    }
    let missing: Vec<&str> =
        config.input.iter().filter(|c| !c.optional && req.input(&c.name).is_none()).map(|c| c.name.as_str()).collect();
    if !missing.is_empty() {
        return Err(ServeError::invalid(format!(
            "missing required input(s) {} for model '{model}': expected {} input(s) ({}), got {} ({})",
            missing.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", "),
            config.input.len(),
            names(&config.input),
            req.inputs.len(),
            req.inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    for o in &req.outputs {
        if !config.output.iter().any(|c| c.name == o.name) {
            return Err(ServeError::invalid(format!(
                "unexpected inference output '{}' for model '{model}' (it has outputs: {})",
                o.name,
                names(&config.output)
            )));
        }
    }
    Ok(batch.unwrap_or(1).max(1) as u64)
}

fn names(ts: &[TensorConfig]) -> String {
    ts.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn check_tensor(
    config: &ModelConfig,
    tc: &TensorConfig,
    t: &Tensor,
    batch: &mut Option<i64>,
) -> Result<(), ServeError> {
    let name = &t.name;
    let expected_dt = tc.datatype().ok_or_else(|| {
        ServeError::Internal(format!("input '{name}': config has unknown data_type '{}'", tc.data_type))
    })?;
    if t.datatype != expected_dt {
        return Err(ServeError::invalid(format!(
            "input '{name}': expected datatype {expected_dt}, got {} for model '{}'",
            t.datatype, config.name
        )));
    }
    let full = config.full_shape(tc);
    if !dims_match(&full, &t.shape) {
        return Err(ServeError::invalid(format!(
            "input '{name}': expected shape {}, got {} for model '{}'",
            shape_str(&full),
            shape_str(&t.shape),
            config.name
        )));
    }
    if config.max_batch_size > 0 {
        let b = t.shape[0];
        if b < 1 || b > config.max_batch_size as i64 {
            return Err(ServeError::invalid(format!(
                "input '{name}': batch size {b} is outside 1..={} for model '{}'",
                config.max_batch_size, config.name
            )));
        }
        match *batch {
            Some(prev) if prev != b => {
                return Err(ServeError::invalid(format!(
                    "input '{name}': batch size {b} differs from the other inputs' batch size {prev}"
                )))
            }
            _ => *batch = Some(b),
        }
    }
    Ok(())
}

/// Ragged inputs (`allow_ragged_batch: true`) declared with the same dims must have the same
/// shape within one request: the batcher pads each request to the batch's longest, so an
/// attention mask must cover exactly its token ids, and trimming outputs back needs one own
/// length per padded dim. Any length the dims accept is fine otherwise; requests of different
/// lengths still share a batch.
fn check_ragged(config: &ModelConfig, tc: &TensorConfig, t: &Tensor, earlier: &[Tensor]) -> Result<(), ServeError> {
    if !tc.allow_ragged_batch || !tc.dims.iter().any(|&d| d < 0) {
        return Ok(());
    }
    for o in earlier {
        let Some(oc) = config.input.iter().find(|c| c.name == o.name) else { continue };
        if oc.allow_ragged_batch && oc.dims == tc.dims && o.shape != t.shape {
            return Err(ServeError::invalid(format!(
                "input '{}': expected shape {} (the shape of ragged input '{}', which has the same dims {}), got {} \
                 for model '{}'",
                t.name,
                shape_str(&o.shape),
                o.name,
                shape_str(&tc.dims),
                shape_str(&t.shape),
                config.name
            )));
        }
    }
    Ok(())
}

/// Applies `reshape`: the model sees `[batch] + reshape.shape` instead of the request shape.
pub fn reshape_inputs(config: &ModelConfig, inputs: &mut [Tensor]) {
    for t in inputs {
        let Some(r) = config.input.iter().find(|c| c.name == t.name).and_then(|c| c.reshape.as_ref()) else {
            continue;
        };
        t.shape = if config.max_batch_size > 0 {
            std::iter::once(t.shape[0]).chain(r.shape.iter().copied()).collect()
        } else {
            r.shape.clone()
        };
    }
}

/// Undoes `reshape` on outputs whose configured dims are fully known.
pub fn reshape_outputs(config: &ModelConfig, outputs: &mut [Tensor]) {
    for t in outputs {
        let Some(c) = config.output.iter().find(|c| c.name == t.name && c.reshape.is_some()) else {
            continue;
        };
        if c.dims.iter().any(|&d| d < 0) {
            continue;
        }
        t.shape = if config.max_batch_size > 0 && !t.shape.is_empty() {
            std::iter::once(t.shape[0]).chain(c.dims.iter().copied()).collect()
        } else {
            c.dims.clone()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::RequestedOutput;

    fn add_sub() -> ModelConfig {
        let t = |n: &str| TensorConfig {
            name: n.into(),
            data_type: "TYPE_FP32".into(),
            dims: vec![16],
            ..Default::default()
        };
        ModelConfig {
            name: "add_sub".into(),
            max_batch_size: 8,
            input: vec![t("INPUT0"), t("INPUT1")],
            output: vec![t("OUTPUT0"), t("OUTPUT1")],
            ..Default::default()
        }
    }

    fn req(inputs: Vec<Tensor>) -> InferRequest {
        InferRequest { model: "add_sub".into(), inputs, ..Default::default() }
    }

    #[test]
    fn accepts_good_request() {
        let r = req(vec![
            Tensor::from_vec("INPUT0", vec![3, 16], vec![0f32; 48]),
            Tensor::from_vec("INPUT1", vec![3, 16], vec![0f32; 48]),
        ]);
        assert_eq!(validate_request(&add_sub(), &r).unwrap(), 3);
    }

    #[test]
    fn errors_name_tensor_expected_and_actual() {
        let c = add_sub();
        let ok1 = Tensor::from_vec("INPUT1", vec![1, 16], vec![0f32; 16]);
        let e = validate_request(&c, &req(vec![Tensor::from_vec("INPUT0", vec![1, 3], vec![0f32; 3]), ok1.clone()]))
            .unwrap_err();
        assert_eq!(e.to_string(), "input 'INPUT0': expected shape [-1,16], got [1,3] for model 'add_sub'");
        let e = validate_request(&c, &req(vec![Tensor::from_vec("INPUT0", vec![1, 16], vec![0i32; 16]), ok1.clone()]))
            .unwrap_err();
        assert!(e.to_string().contains("expected datatype FP32, got INT32"), "{e}");
        let e = validate_request(&c, &req(vec![ok1.clone()])).unwrap_err();
        assert!(e.to_string().contains("missing required input(s) 'INPUT0'"), "{e}");
        let e = validate_request(&c, &req(vec![Tensor::from_vec("X", vec![1], vec![0f32])])).unwrap_err();
        assert!(e.to_string().contains("unexpected inference input 'X'"), "{e}");
        let e = validate_request(&c, &req(vec![Tensor::from_vec("INPUT0", vec![9, 16], vec![0f32; 144]), ok1.clone()]))
            .unwrap_err();
        assert!(e.to_string().contains("batch size 9 is outside 1..=8"), "{e}");
        let e = validate_request(&c, &req(vec![Tensor::from_vec("INPUT0", vec![2, 16], vec![0f32; 32]), ok1.clone()]))
            .unwrap_err();
        assert!(e.to_string().contains("differs"), "{e}");
        let mut r = req(vec![Tensor::from_vec("INPUT0", vec![1, 16], vec![0f32; 16]), ok1]);
        r.outputs.push(RequestedOutput { name: "NOPE".into(), ..Default::default() });
        assert!(validate_request(&c, &r).unwrap_err().to_string().contains("unexpected inference output 'NOPE'"));
    }

    fn bert() -> ModelConfig {
        let t = |n: &str| TensorConfig {
            name: n.into(),
            data_type: "TYPE_INT64".into(),
            dims: vec![-1],
            allow_ragged_batch: true,
            ..Default::default()
        };
        ModelConfig { name: "bert".into(), max_batch_size: 8, input: vec![t("ids"), t("mask")], ..Default::default() }
    }

    fn tokens(name: &str, batch: i64, len: i64) -> Tensor {
        Tensor::from_vec(name, vec![batch, len], vec![1i64; (batch * len) as usize])
    }

    #[test]
    fn ragged_requests_of_any_length_are_accepted() {
        let c = bert();
        for len in [1, 7, 128, 300] {
            let r = req(vec![tokens("ids", 2, len), tokens("mask", 2, len)]);
            assert_eq!(validate_request(&c, &r).unwrap(), 2);
        }
    }

    #[test]
    fn ragged_inputs_of_one_request_must_agree() {
        let c = bert();
        let e = validate_request(&c, &req(vec![tokens("ids", 1, 5), tokens("mask", 1, 6)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'mask': expected shape [1,5] (the shape of ragged input 'ids', which has the same dims [-1]), \
             got [1,6] for model 'bert'"
        );
        let e = validate_request(&c, &req(vec![tokens("ids", 2, 5), tokens("mask", 1, 5)])).unwrap_err();
        assert!(e.to_string().contains("batch size 1 differs from the other inputs' batch size 2"), "{e}");
        // Inputs with other dims, or not ragged, may differ.
        let mut c = bert();
        c.input[1].dims = vec![-1, -1];
        let r = req(vec![tokens("ids", 1, 5), Tensor::from_vec("mask", vec![1, 6, 1], vec![1i64; 6])]);
        validate_request(&c, &r).unwrap();
        let mut c = bert();
        c.input[1].allow_ragged_batch = false;
        validate_request(&c, &req(vec![tokens("ids", 1, 5), tokens("mask", 1, 6)])).unwrap();
    }
}
