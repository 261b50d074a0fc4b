use super::*;
use serde_json::json;
use sluice_types::config::ModelConfig;

fn cfg(text: &str) -> ModelConfig {
    let v = parse(text).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) const ADD_SUB: &str = r#"
name: "add_sub"
backend: "python"
max_batch_size: 8

input [
  {
name: "INPUT0"
data_type: TYPE_FP32
dims: [ 4 ]
  },
  {
name: "INPUT1"
data_type: TYPE_FP32
dims: [ 4 ]
  }
]
output [
  {
name: "OUTPUT0"
data_type: TYPE_FP32
dims: [ 4 ]
  },
  {
name: "OUTPUT1"
data_type: TYPE_FP32
dims: [ 4 ]
  }
]

instance_group [{ kind: KIND_CPU }]
"#;

const ENSEMBLE: &str = r#"
name: "ensemble_model"
platform: "ensemble"
max_batch_size: 1
input [
  {
name: "IN"
data_type: TYPE_STRING
dims: [ -1 ]
  }
]
output [
  {
name: "OUT"
data_type: TYPE_FP32
dims: [ -1, 16 ]
  }
]
ensemble_scheduling {
  step [
{
  model_name: "preprocess"
  model_version: -1
  input_map {
    key: "PRE_IN"
    value: "IN"
  }
  output_map {
    key: "PRE_OUT"
    value: "preprocessed"
  }
},
{
  model_name: "classifier"
  model_version: -1
  input_map { key: "X" value: "preprocessed" }
  input_map { key: "Y" value: "IN" }
  output_map { key: "PROB" value: "OUT" }
}
  ]
}
"#;

#[test]
fn add_sub() {
    let c = cfg(ADD_SUB);
    assert_eq!(c.name, "add_sub");
    assert_eq!(c.backend, "python");
    assert_eq!(c.max_batch_size, 8);
    assert_eq!(c.input.len(), 2);
    assert_eq!(c.input[1].name, "INPUT1");
    assert_eq!(c.input[1].data_type, "TYPE_FP32");
    assert_eq!(c.input[1].dims, vec![4]);
    assert_eq!(c.output[0].name, "OUTPUT0");
    assert_eq!(c.instance_group[0].kind, "KIND_CPU");
}

#[test]
fn ensemble() {
    let v = parse(ENSEMBLE).unwrap();
    let steps = &v["ensemble_scheduling"]["step"];
    assert_eq!(steps.as_array().unwrap().len(), 2);
    assert_eq!(steps[0]["model_version"], json!(-1));
    assert_eq!(steps[0]["input_map"], json!({"key": "PRE_IN", "value": "IN"}));
    assert_eq!(steps[1]["input_map"], json!([{"key": "X", "value": "preprocessed"}, {"key": "Y", "value": "IN"}]));
    let c = cfg(ENSEMBLE);
    assert_eq!(c.platform, "ensemble");
    assert_eq!(c.output[0].dims, vec![-1, 16]);
    assert_eq!(c.input[0].data_type, "TYPE_STRING");
    assert!(c.ensemble_scheduling.is_some());
}

#[test]
fn dynamic_batching_with_priorities() {
    let c = cfg(r#"
        name: "m"
        max_batch_size: 16
        input { name: "x" data_type: TYPE_INT64 dims: 1 }
        dynamic_batching {
          preferred_batch_size: [ 4, 8 ]
          max_queue_delay_microseconds: 100
          preserve_ordering: true
          priority_levels: 2
          default_priority_level: 2
          default_queue_policy {
            timeout_action: REJECT
            default_timeout_microseconds: 1000
            allow_timeout_override: false
            max_queue_size: 10
          }
          priority_queue_policy {
            key: 1
            value: {
              timeout_action: DELAY
              default_timeout_microseconds: 500
              allow_timeout_override: true
              max_queue_size: 4
            }
          }
          priority_queue_policy [
            { key: 2 value: { max_queue_size: 8 } }
          ]
        }
    "#);
    let d = c.dynamic_batching.unwrap();
    assert_eq!(d.preferred_batch_size, vec![4, 8]);
    assert_eq!(d.max_queue_delay_microseconds, 100);
    assert!(d.preserve_ordering);
    assert_eq!(d.priority_levels, 2);
    let q = d.default_queue_policy.unwrap();
    assert_eq!(q.timeout_action, "REJECT");
    assert_eq!(q.max_queue_size, 10);
    assert_eq!(d.priority_queue_policy.len(), 2);
    let p1 = &d.priority_queue_policy["1"];
    assert_eq!(p1.timeout_action, "DELAY");
    assert!(p1.allow_timeout_override);
    assert_eq!(p1.default_timeout_microseconds, 500);
    assert_eq!(d.priority_queue_policy["2"].max_queue_size, 8);
    assert_eq!(c.input[0].dims, vec![1]);
}

#[test]
fn instance_groups_version_policy_reshape() {
    let c = cfg(r#"
        name: "resnet"
        platform: "onnxruntime_onnx"
        max_batch_size: 0
        version_policy: { specific { versions: [1, 3] } }
        instance_group [
          { name: "gpu_group" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] },
          { count: 1, kind: KIND_CPU }
        ]
        input [
          { name: "data" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] }
        ]
        output [
          { name: "prob" data_type: TYPE_FP32 dims: [ 1000, 1, 1 ] reshape: { shape: [ 1, 1000 ] } label_filename: "labels.txt" },
          { name: "scalar" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } }
        ]
        parameters { key: "x" value: { string_value: "y" } }
        parameters: { key: "threads" value: { string_value: "4" } }
    "#);
    assert_eq!(c.version_policy.specific.as_ref().unwrap().versions, vec![1, 3]);
    assert_eq!(c.version_policy.select(&[1, 2, 3]), vec![1, 3]);
    assert_eq!(c.instance_group.len(), 2);
    assert_eq!(c.instance_group[0].gpus, vec![0, 1]);
    assert_eq!(c.instance_group[0].count, 2);
    assert_eq!(c.instance_group[0].name, "gpu_group");
    assert_eq!(c.instance_count(), 3);
    assert_eq!(c.output[0].reshape.as_ref().unwrap().shape, vec![1, 1000]);
    assert_eq!(c.output[0].label_filename, "labels.txt");
    assert_eq!(c.output[1].reshape.as_ref().unwrap().shape, Vec::<i64>::new());
    assert_eq!(c.parameter("x"), Some("y"));
    assert_eq!(c.parameter("threads"), Some("4"));
    let v = parse("reshape: { shape: [ ] }").unwrap();
    assert_eq!(v, json!({"reshape": {"shape": []}}));
}

#[test]
fn version_policies() {
    let c = cfg("version_policy: { latest { num_versions: 2 } }");
    assert_eq!(c.version_policy.latest.unwrap().num_versions, 2);
    let c = cfg("version_policy: { all { } }");
    assert!(c.version_policy.all.is_some());
}

#[test]
fn model_warmup_with_inputs_map() {
    let text = r#"
        name: "m"
        max_batch_size: 8
        model_warmup [
          {
            name: "sample"
            batch_size: 8
            inputs {
              key: "INPUT0"
              value: {
                data_type: TYPE_FP32
                dims: [ 4 ]
                zero_data: true
              }
            }
            inputs {
              key: "INPUT1"
              value: { data_type: TYPE_FP32 dims: [ 4 ] random_data: true }
            }
          }
        ]
    "#;
    let v = parse(text).unwrap();
    let inputs = &v["model_warmup"][0]["inputs"];
    assert_eq!(inputs[0]["key"], "INPUT0");
    assert_eq!(inputs[0]["value"]["zero_data"], true);
    assert_eq!(inputs[1]["value"]["dims"], json!([4]));
    let c = cfg(text);
    assert_eq!(c.model_warmup.len(), 1);
    assert_eq!(c.model_warmup[0]["batch_size"], 8);
}

#[test]
fn scalars() {
    let v = parse(
        r#"a: -3 b: 2.5 c: -1e-3 d: 0x1F e: 017 f: 1.5f g: .5 h: "x\n\t\"y\"" i: 'it\'s'
           j: TYPE_FP32 k: true l: false m: "caf\u00e9 \x41\101" n: "ab" 'cd' o: -inf p: 0
           q: 18446744073709551615 r: -9223372036854775808 s: "\U0001F600""#,
    )
    .unwrap();
    assert_eq!(v["a"], json!(-3));
    assert_eq!(v["b"], json!(2.5));
    assert_eq!(v["c"], json!(-0.001));
    assert_eq!(v["d"], json!(31));
    assert_eq!(v["e"], json!(15));
    assert_eq!(v["f"], json!(1.5));
    assert_eq!(v["g"], json!(0.5));
    assert_eq!(v["h"], json!("x\n\t\"y\""));
    assert_eq!(v["i"], json!("it's"));
    assert_eq!(v["j"], json!("TYPE_FP32"));
    assert_eq!(v["k"], json!(true));
    assert_eq!(v["l"], json!(false));
    assert_eq!(v["m"], json!("café AA"));
    assert_eq!(v["n"], json!("abcd"));
    assert_eq!(v["o"], json!("-inf"));
    assert_eq!(v["p"], json!(0));
    assert_eq!(v["q"], json!(u64::MAX));
    assert_eq!(v["r"], json!(i64::MIN));
    assert_eq!(v["s"], json!("😀"));
}

#[test]
fn syntax_variants() {
    // Comments, angle brackets, separators, `field: {`, repeated scalars, extension names.
    let v = parse(
        "# leading comment\n\
         m < a: 1; b: 2, > # trailing\n\
         n: { x: [1, 2,] }\n\
         r: 1 r: 2 r: [3, 4]\n\
         l [ <k: 1>, {k: 2} ]\n\
         [ext.name/x]: 5\n",
    )
    .unwrap();
    assert_eq!(
        v,
        json!({
            "m": {"a": 1, "b": 2},
            "n": {"x": [1, 2]},
            "r": [1, 2, 3, 4],
            "l": [{"k": 1}, {"k": 2}],
            "[ext.name/x]": 5,
        })
    );
    assert_eq!(parse("").unwrap(), json!({}));
    assert_eq!(parse("  # only a comment").unwrap(), json!({}));
}

fn err(text: &str) -> PbtxtError {
    match parse(text) {
        Ok(v) => panic!("expected an error for {text:?}, got {v}"),
        Err(e) => e,
    }
}

#[test]
fn errors_have_positions() {
    let e = err("name: \"m\"\nmax_batch_size 8\n");
    assert_eq!((e.line, e.column), (2, 16));
    assert!(e.message.contains("expected ':', '{' or '['"), "{e}");
    assert!(e.message.contains("max_batch_size"), "{e}");
    assert!(e.message.contains("number 8"), "{e}");

    let e = err("input {\n  name: \"x\"\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("expected a field name or '}'"), "{e}");
    assert!(e.message.contains("end of input"), "{e}");

    let e = err("dims: [1 2]");
    assert_eq!((e.line, e.column), (1, 10));
    assert!(e.message.contains("',' or ']'"), "{e}");

    let e = err("a: }");
    assert_eq!((e.line, e.column), (1, 4));
    assert!(e.message.contains("expected a value for field `a`"), "{e}");

    let e = err("a: \"abc\nb: 1");
    assert_eq!((e.line, e.column), (1, 4));
    assert!(e.message.contains("unterminated string"), "{e}");

    let e = err("é: 1");
    assert_eq!((e.line, e.column), (1, 1));
    assert!(e.message.contains("unexpected character"), "{e}");

    let e = err("x: \"é\" y: @");
    assert_eq!((e.line, e.column), (1, 11));

    let e = err("a: \"\\q\"");
    assert!(e.message.contains("unknown escape"), "{e}");
    let e = err("a: 09");
    assert!(e.message.contains("octal"), "{e}");
    let e = err("a: 99999999999999999999");
    assert!(e.message.contains("out of range"), "{e}");
    let e = err("a: 1 }");
    assert!(e.message.contains("expected a field name"), "{e}");
    let e = err("a: - b");
    assert!(e.message.contains("after '-'"), "{e}");
    let e = err("a: {\n b: 1 >");
    assert_eq!((e.line, e.column), (2, 7));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = "a {".repeat(100_000);
    let e = err(&deep);
    assert!(e.message.contains("nested"), "{e}");
    let ok = format!("{}{}", "a {".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
    parse(&ok).unwrap();
}

/// A tiny xorshift generator: deterministic, no extra dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn never_panics_on_garbage_or_truncation() {
    // Every prefix of real configs.
    for text in [ADD_SUB, ENSEMBLE] {
        for (i, _) in text.char_indices() {
            let _ = parse(&text[..i]);
        }
    }
    // Random soups of syntax characters and random bytes.
    let alphabet = b"{}[]<>:,;-+./#\"'\\\n \tabexfuU0179_\x00\xc3\xa9\xff";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (rng.next() % 40) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.next();
                if r.is_multiple_of(8) {
                    (r >> 8) as u8
                } else {
                    alphabet[((r >> 8) % alphabet.len() as u64) as usize]
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(v) = parse(&text) {
            assert!(v.is_object());
        }
    }
    // Random mutations of a real config.
    for _ in 0..5_000 {
        let mut bytes = ADD_SUB.as_bytes().to_vec();
        for _ in 0..3 {
            let at = (rng.next() % bytes.len() as u64) as usize;
            bytes[at] = alphabet[(rng.next() % alphabet.len() as u64) as usize];
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }
}
