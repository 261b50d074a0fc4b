use super::*;
use sluice_types::config::{ModelParameter, TensorConfig};

fn no_padding() -> Padding {
    Padding::default()
}

#[test]
fn merge_and_split_round_trip() {
    let a = vec![Tensor::from_vec("x", vec![1, 2], vec![1f32, 2.0]), Tensor::from_strings("s", vec![1, 1], &["a"])];
    let b = vec![
        Tensor::from_strings("s", vec![2, 1], &["b", "c"]),
        Tensor::from_vec("x", vec![2, 2], vec![3f32, 4.0, 5.0, 6.0]),
    ];
    let p = no_padding();
    assert_eq!(shape_key(&a, &p), shape_key(&b, &p));
    let merged = merge_inputs(vec![a.clone(), b], &p).unwrap();
    assert!(merged.padded.is_none());
    let merged = merged.inputs;
    assert_eq!(merged[0].shape, vec![3, 2]);
    assert_eq!(merged[0].to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(merged[1].shape, vec![3, 1]);
    let parts = split_outputs(merged, &[1, 2], &p, None).unwrap();
    assert_eq!(parts[0], a);
    assert_eq!(parts[1][0].to_vec::<f32>().unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
    assert_eq!(parts[1][1].data, TensorData::Bytes(vec![Bytes::from("b"), Bytes::from("c")]));
}

#[test]
fn different_dims_have_different_keys() {
    let a = vec![Tensor::from_vec("x", vec![1, 2], vec![1f32, 2.0])];
    let b = vec![Tensor::from_vec("x", vec![1, 3], vec![1f32, 2.0, 3.0])];
    assert_ne!(shape_key(&a, &no_padding()), shape_key(&b, &no_padding()));
}

#[test]
fn split_checks_the_batch_dimension() {
    let e =
        split_outputs(vec![Tensor::from_vec("y", vec![2], vec![1f32, 2.0])], &[1, 2], &no_padding(), None).unwrap_err();
    assert!(e.to_string().contains("'y'"), "{e}");
}

fn input(name: &str, dt: &str, dims: Vec<i64>, ragged: bool) -> TensorConfig {
    TensorConfig { name: name.into(), data_type: dt.into(), dims, allow_ragged_batch: ragged, ..Default::default() }
}

fn config(inputs: Vec<TensorConfig>, outputs: Vec<TensorConfig>, params: &[(&str, &str)]) -> ModelConfig {
    ModelConfig {
        name: "m".into(),
        max_batch_size: 8,
        input: inputs,
        output: outputs,
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), ModelParameter { string_value: v.to_string() }))
            .collect(),
        ..Default::default()
    }
}

/// BERT-like: ids and mask, ragged in the sequence dim.
fn bert(params: &[(&str, &str)]) -> Padding {
    let c = config(
        vec![input("ids", "TYPE_INT64", vec![-1], true), input("mask", "TYPE_INT64", vec![-1], true)],
        vec![input("probabilities", "TYPE_FP32", vec![2], false), input("tokens", "TYPE_FP32", vec![-1, 2], false)],
        params,
    );
    Padding::from_config(&c).unwrap()
}

fn ids(v: &[i64]) -> Vec<Tensor> {
    let n = v.len() as i64;
    vec![Tensor::from_vec("ids", vec![1, n], v.to_vec()), Tensor::from_vec("mask", vec![1, n], vec![1i64; v.len()])]
}

#[test]
fn ragged_dims_leave_the_key_but_fixed_dims_and_datatypes_stay() {
    let p = bert(&[]);
    assert_eq!(shape_key(&ids(&[1, 2]), &p), shape_key(&ids(&[1, 2, 3, 4]), &p));
    assert_ne!(shape_key(&ids(&[1, 2]), &no_padding()), shape_key(&ids(&[1, 2, 3]), &no_padding()));
    // Rank and datatype still count.
    let rank3 = vec![Tensor::from_vec("ids", vec![1, 2, 1], vec![1i64, 2]), ids(&[1, 2]).remove(1)];
    assert_ne!(shape_key(&ids(&[1, 2]), &p), shape_key(&rank3, &p));
    let int32 = vec![Tensor::from_vec("ids", vec![1, 2], vec![1i32, 2]), ids(&[1, 2]).remove(1)];
    assert_ne!(shape_key(&ids(&[1, 2]), &p), shape_key(&int32, &p));
    // A fixed dim of a ragged input still counts.
    let c = config(vec![input("x", "TYPE_FP32", vec![-1, 3], true)], vec![], &[]);
    let p = Padding::from_config(&c).unwrap();
    let x = |s: i64, f: i64| vec![Tensor::from_vec("x", vec![1, s, f], vec![0f32; (s * f) as usize])];
    assert_eq!(shape_key(&x(2, 3), &p), shape_key(&x(5, 3), &p));
    assert_ne!(shape_key(&x(2, 3), &p), shape_key(&x(2, 4), &p));
}

#[test]
fn int64_pads_to_the_longest_request_with_the_pad_value() {
    let p = bert(&[("pad_value:ids", "-7")]);
    let m = merge_inputs(vec![ids(&[1, 2]), ids(&[3, 4, 5, 6]), ids(&[7])], &p).unwrap();
    assert_eq!(m.inputs[0].shape, vec![3, 4]);
    assert_eq!(m.inputs[0].to_vec::<i64>().unwrap(), vec![1, 2, -7, -7, 3, 4, 5, 6, 7, -7, -7, -7]);
    // The mask pads with the default 0: exactly the attention mask a BERT model needs.
    assert_eq!(m.inputs[1].to_vec::<i64>().unwrap(), vec![1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(m.padded.unwrap().lengths, vec![(4, vec![2, 4, 1])]);
}

#[test]
fn fp32_bool_fp16_and_bf16_pad() {
    let c = config(
        vec![
            input("f", "TYPE_FP32", vec![-1], true),
            input("b", "TYPE_BOOL", vec![-1], true),
            input("h", "TYPE_FP16", vec![-1], true),
            input("z", "TYPE_BF16", vec![-1], true),
        ],
        vec![],
        &[("pad_value:f", "-inf"), ("pad_value:b", "true"), ("pad_value:h", "1.5"), ("pad_value:z", "-2")],
    );
    let p = Padding::from_config(&c).unwrap();
    let half = |name: &str, dt: DataType, bits: u16, n: usize| Tensor {
        name: name.into(),
        datatype: dt,
        shape: vec![1, n as i64],
        data: TensorData::Fixed(vec![bits; n].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into()),
    };
    let req = |n: usize| {
        vec![
            Tensor::from_vec("f", vec![1, n as i64], vec![0.5f32; n]),
            Tensor::from_bools("b", vec![1, n as i64], &vec![false; n]),
            half("h", DataType::Fp16, 0x3c00, n),
            half("z", DataType::Bf16, 0x3f80, n),
        ]
    };
    let (a, b) = (req(1), req(3));
    let m = merge_inputs(vec![a, b], &p).unwrap();
    let f = m.inputs[0].to_vec::<f32>().unwrap();
    assert_eq!(&f[..1], &[0.5]);
    assert!(f[1..3].iter().all(|x| *x == f32::NEG_INFINITY));
    assert_eq!(&f[3..], &[0.5; 3]);
    assert_eq!(m.inputs[1].data, TensorData::Fixed(Bytes::from(vec![0u8, 1, 1, 0, 0, 0])));
    let TensorData::Fixed(h) = &m.inputs[2].data else { panic!() };
    assert_eq!(u16s(h), vec![0x3c00, 0x3e00, 0x3e00, 0x3c00, 0x3c00, 0x3c00]);
    let TensorData::Fixed(z) = &m.inputs[3].data else { panic!() };
    assert_eq!(u16s(z), vec![0x3f80, 0xc000, 0xc000, 0x3f80, 0x3f80, 0x3f80]);
}

fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

#[test]
fn bytes_pad_with_empty_strings_or_the_configured_string() {
    let c = config(vec![input("s", "TYPE_STRING", vec![-1], true)], vec![], &[]);
    let p = Padding::from_config(&c).unwrap();
    let m = merge_inputs(
        vec![
            vec![Tensor::from_strings("s", vec![1, 1], &["a"])],
            vec![Tensor::from_strings("s", vec![1, 2], &["b", "c"])],
        ],
        &p,
    )
    .unwrap();
    assert_eq!(m.inputs[0].shape, vec![2, 2]);
    assert_eq!(m.inputs[0].data, TensorData::Bytes(["a", "", "b", "c"].map(Bytes::from).to_vec()));
    let c = config(vec![input("s", "TYPE_STRING", vec![-1], true)], vec![], &[("pad_value:s", "[PAD]")]);
    let p = Padding::from_config(&c).unwrap();
    let m = merge_inputs(
        vec![
            vec![Tensor::from_strings("s", vec![1, 2], &["b", "c"])],
            vec![Tensor::from_strings("s", vec![1, 1], &["a"])],
        ],
        &p,
    )
    .unwrap();
    assert_eq!(m.inputs[0].data, TensorData::Bytes(["b", "c", "a", "[PAD]"].map(Bytes::from).to_vec()));
}

#[test]
fn multi_dim_variable_shapes_pad_row_major() {
    // [batch, -1, 3, -1]: two variable dims and a fixed one between them.
    // The output "echo" is declared [-1, 3, -1]: its fixed 3 is not trimmed although it equals
    // a padded length.
    let c = config(
        vec![input("x", "TYPE_INT32", vec![-1, 3, -1], true)],
        vec![input("echo", "TYPE_INT32", vec![-1, 3, -1], false)],
        &[("pad_value:x", "9")],
    );
    let p = Padding::from_config(&c).unwrap();
    let a: Vec<i32> = (0..6).collect(); // [1, 1, 3, 2]
    let b: Vec<i32> = (100..118).collect(); // [2, 3, 3, 1]
    let ra = vec![Tensor::from_vec("x", vec![1, 1, 3, 2], a)];
    let rb = vec![Tensor::from_vec("x", vec![2, 3, 3, 1], b)];
    assert_eq!(shape_key(&ra, &p), shape_key(&rb, &p));
    let m = merge_inputs(vec![ra, rb], &p).unwrap();
    assert_eq!(m.inputs[0].shape, vec![3, 3, 3, 2]);
    let v = m.inputs[0].to_vec::<i32>().unwrap();
    #[rustfmt::skip]
    let want = vec![
        // request a, row 0: seq 0 real, seq 1..3 padding
        0, 1, 2, 3, 4, 5,   9, 9, 9, 9, 9, 9,   9, 9, 9, 9, 9, 9,
        // request b, rows 0 and 1: last dim 1 of 2 real
        100, 9, 101, 9, 102, 9,   103, 9, 104, 9, 105, 9,   106, 9, 107, 9, 108, 9,
        109, 9, 110, 9, 111, 9,   112, 9, 113, 9, 114, 9,   115, 9, 116, 9, 117, 9,
    ];
    assert_eq!(v, want);
    let padded = m.padded.unwrap();
    assert_eq!(padded.lengths, vec![(3, vec![1, 3]), (2, vec![2, 1])]);
    // An output that echoes the input comes back as each request sent it.
    let out = Tensor { name: "echo".into(), ..m.inputs[0].clone() };
    let parts = split_outputs(vec![out], &[1, 2], &p, Some(&padded)).unwrap();
    assert_eq!(parts[0][0].shape, vec![1, 1, 3, 2]);
    assert_eq!(parts[0][0].to_vec::<i32>().unwrap(), (0..6).collect::<Vec<_>>());
    assert_eq!(parts[1][0].shape, vec![2, 3, 3, 1]);
    assert_eq!(parts[1][0].to_vec::<i32>().unwrap(), (100..118).collect::<Vec<_>>());
}

#[test]
fn unpadding_trims_per_token_outputs_only() {
    let p = bert(&[]);
    let m = merge_inputs(vec![ids(&[1, 2]), ids(&[3, 4, 5, 6])], &p).unwrap();
    let padded = m.padded.clone().unwrap();
    // probabilities [2, 2]: declared fixed, although 2 is not the padded length anyway.
    let probs = Tensor::from_vec("probabilities", vec![2, 2], vec![0.1f32, 0.9, 0.8, 0.2]);
    // tokens [2, 4, 2]: per-token output, trimmed to each request's length.
    let tokens = Tensor::from_vec("tokens", vec![2, 4, 2], (0..16).map(|x| x as f32).collect());
    // hidden [2, 4]: not in the config, has the padded length: trimmed.
    let hidden = Tensor::from_strings("hidden", vec![2, 4], &["a", "b", "-", "-", "c", "d", "e", "f"]);
    let parts = split_outputs(vec![probs, tokens, hidden], &[1, 1], &p, Some(&padded)).unwrap();
    assert_eq!(parts[0][0].shape, vec![1, 2]);
    assert_eq!(parts[0][0].to_vec::<f32>().unwrap(), vec![0.1, 0.9]);
    assert_eq!(parts[0][1].shape, vec![1, 2, 2]);
    assert_eq!(parts[0][1].to_vec::<f32>().unwrap(), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(parts[1][1].shape, vec![1, 4, 2]);
    assert_eq!(parts[1][1].to_vec::<f32>().unwrap(), (8..16).map(|x| x as f32).collect::<Vec<_>>());
    assert_eq!(parts[0][2].data, TensorData::Bytes(["a", "b"].map(Bytes::from).to_vec()));
    assert_eq!(parts[1][2].shape, vec![1, 4]);

    // A dim the config declares fixed is not trimmed even when it equals the padded length.
    let m = merge_inputs(vec![ids(&[1]), ids(&[3, 4])], &p).unwrap();
    let padded = m.padded.unwrap();
    let probs = Tensor::from_vec("probabilities", vec![2, 2], vec![0.1f32, 0.9, 0.8, 0.2]);
    let parts = split_outputs(vec![probs], &[1, 1], &p, Some(&padded)).unwrap();
    assert_eq!(parts[0][0].shape, vec![1, 2]);
    assert_eq!(parts[0][0].to_vec::<f32>().unwrap(), vec![0.1, 0.9]);

    // Nothing padded: no trimming, whatever the sizes.
    let tokens = Tensor::from_vec("tokens", vec![2, 4, 2], (0..16).map(|x| x as f32).collect());
    let parts = split_outputs(vec![tokens], &[1, 1], &p, None).unwrap();
    assert_eq!(parts[0][0].shape, vec![1, 4, 2]);
}

#[test]
fn equal_shapes_take_the_fast_path() {
    let p = bert(&[("pad_value:ids", "5")]);
    let m = merge_inputs(vec![ids(&[1, 2, 3]), ids(&[4, 5, 6])], &p).unwrap();
    assert!(m.padded.is_none(), "nothing was padded");
    assert_eq!(m.inputs[0].shape, vec![2, 3]);
    assert_eq!(m.inputs[0].to_vec::<i64>().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    // One request alone is passed through untouched: the very same buffer.
    let one = ids(&[1, 2]);
    let TensorData::Fixed(before) = &one[0].data else { panic!() };
    let ptr = before.as_ptr();
    let m = merge_inputs(vec![one], &p).unwrap();
    let TensorData::Fixed(after) = &m.inputs[0].data else { panic!() };
    assert_eq!(after.as_ptr(), ptr);
    assert!(m.padded.is_none());
}

#[test]
fn bad_pad_values_and_names_are_config_errors() {
    let c = |v: &str| {
        config(
            vec![input("ids", "TYPE_INT64", vec![-1], true), input("f", "TYPE_FP32", vec![4], false)],
            vec![],
            &[("pad_value:ids", v)],
        )
    };
    let e = Padding::from_config(&c("abc")).unwrap_err().to_string();
    assert!(e.contains("pad_value:ids") && e.contains("'abc' is not a INT64 value"), "{e}");
    assert!(Padding::from_config(&c("1.5")).is_err());
    assert!(Padding::from_config(&c(" 3 ")).is_ok());
    let mut cfg = c("0");
    cfg.parameters.insert("pad_value:f".into(), ModelParameter { string_value: "0".into() });
    let e = Padding::from_config(&cfg).unwrap_err().to_string();
    assert!(e.contains("names no input with allow_ragged_batch") && e.contains("[ids]"), "{e}");
    assert!(Padding::from_config(&c("0")).unwrap().ragged("ids").is_some());
    assert!(Padding::from_config(&c("0")).unwrap().ragged("f").is_none());
}
