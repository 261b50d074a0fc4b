//! `sluice infer`: one V2 inference request built from the command line. Inputs are JSON (the
//! shape is the nesting, the datatype the model's), `.npy` files, or text for BYTES inputs; the
//! model's metadata says which inputs exist and what they hold. `sluice jobs submit` builds its
//! request the same way.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use sluice_types::DataType;

use crate::client::{usage, Client, ClientArgs};
use crate::npy;
use crate::output::outputs_table;

#[derive(Args)]
pub struct InferArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub request: RequestArgs,
    /// Print the server's response JSON as it came instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The model and the request: what `infer` and `jobs submit` both take.
#[derive(Args)]
pub struct RequestArgs {
    /// Model name.
    pub name: String,
    /// The value of a model's only input (as `--input VALUE`).
    #[arg(value_name = "VALUE")]
    pub value: Option<String>,
    /// An input, NAME=VALUE (repeatable). VALUE: JSON (a nested array, whose nesting is the
    /// shape; the datatype is the model's), @file.npy (dtype and shape from the file), @file
    /// (JSON, or the text of a BYTES input), or plain text for a BYTES input. `NAME=` may be
    /// left out when the model has one input. A missing batch dimension of 1 is added when that
    /// makes the shape fit the model's.
    #[arg(long = "input", short = 'i', value_name = "[NAME=]VALUE")]
    pub inputs: Vec<String>,
    /// Text for a model whose only input is BYTES (a text model).
    #[arg(long, conflicts_with_all = ["value", "inputs"])]
    pub text: Option<String>,
    /// Model version (default: the one the server picks, the newest ready).
    #[arg(long)]
    pub version: Option<String>,
    /// Output to return (repeatable; default: every output).
    #[arg(long = "output", short = 'o', value_name = "NAME")]
    pub outputs: Vec<String>,
    /// Answer the top K classes of each row as "score:index:label" (Triton's classification
    /// extension), for the --output outputs, else for the model's first output.
    #[arg(long, value_name = "K")]
    pub classification: Option<u32>,
    /// Request id (the V2 `id`): echoed in the answer and carried by the server's log lines.
    #[arg(long)]
    pub id: Option<String>,
}

pub async fn run(args: InferArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client);
    let body = args.request.body(&client).await?;
    let path = format!("{}/infer", args.request.model_path());
    let answer = client.send(client.http().post(client.url(&path)).json(&body)).await?;
    print_response(&answer.text, &answer.json, args.json);
    Ok(())
}

/// A V2 inference response as a table, or as the JSON it was.
pub fn print_response(text: &str, json: &Value, raw: bool) {
    if raw {
        println!("{}", text.trim_end());
    } else {
        print!("{}", outputs_table(json));
    }
}

/// A tensor of the model's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

fn tensor_metas(meta: &Value, key: &str) -> Vec<TensorMeta> {
    meta[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| TensorMeta {
            name: t["name"].as_str().unwrap_or_default().to_string(),
            datatype: t["datatype"].as_str().unwrap_or_default().to_string(),
            shape: t["shape"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect(),
        })
        .collect()
}

/// Where an input's value comes from.
#[derive(Debug, PartialEq)]
enum Source<'a> {
    /// JSON, or text for a BYTES input.
    Value(&'a str),
    /// `@path`: an .npy file, else JSON or text.
    File(&'a Path),
}

fn source(value: &str) -> Source<'_> {
    match value.strip_prefix('@') {
        Some(path) => Source::File(Path::new(path)),
        None => Source::Value(value),
    }
}

fn names(inputs: &[TensorMeta]) -> String {
    let all: Vec<String> = inputs.iter().map(|t| format!("{} ({})", t.name, t.datatype)).collect();
    all.join(", ")
}

/// What a name before `=` can look like; anything else (`[[1,2]]`, `a b=c`) is a bare value.
fn looks_like_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
}

impl RequestArgs {
    pub fn model_path(&self) -> String {
        match &self.version {
            Some(v) => format!("/v2/models/{}/versions/{v}", self.name),
            None => format!("/v2/models/{}", self.name),
        }
    }

    /// The V2 request body, from the command line and the model's metadata.
    pub async fn body(&self, client: &Client) -> anyhow::Result<Value> {
        let meta = client.get(&self.model_path()).await?;
        let inputs = tensor_metas(&meta, "inputs");
        let outputs = tensor_metas(&meta, "outputs");
        let mut tensors = Vec::new();
        for (meta, src) in self.assign(&inputs)? {
            tensors.push(input_tensor(meta, &src).with_context(|| format!("input '{}'", meta.name))?);
        }
        let mut body = json!({ "inputs": tensors });
        if let Some(id) = &self.id {
            body["id"] = json!(id);
        }
        let mut wanted = self.outputs.clone();
        if wanted.is_empty() && self.classification.is_some() {
            wanted.extend(outputs.first().map(|o| o.name.clone()));
        }
        if !wanted.is_empty() {
            let outs: Vec<Value> = wanted
                .iter()
                .map(|name| match self.classification {
                    Some(k) => json!({ "name": name, "parameters": { "classification": k } }),
                    None => json!({ "name": name }),
                })
                .collect();
            body["outputs"] = Value::Array(outs);
        }
        Ok(body)
    }

    /// Pairs each value of the command line with the model input it is for.
    fn assign<'a>(&'a self, inputs: &'a [TensorMeta]) -> anyhow::Result<Vec<(&'a TensorMeta, Source<'a>)>> {
        let only = || match inputs {
            [one] => Ok(one),
            _ => Err(usage(format!(
                "model '{}' has {} inputs, {}: name each with --input NAME=VALUE",
                self.name,
                inputs.len(),
                names(inputs)
            ))),
        };
        let lone_text = matches!(inputs, [one] if one.datatype == "BYTES");
        if let Some(text) = &self.text {
            if !lone_text {
                return Err(usage(format!(
                    "--text is for a model whose only input is BYTES; '{}' has {}: use --input NAME=VALUE",
                    self.name,
                    names(inputs)
                )));
            }
            return Ok(vec![(&inputs[0], Source::Value(text))]);
        }
        // A lone text input takes `a=b` as its text; otherwise a NAME= must name an input.
        let mut out: Vec<(&TensorMeta, Source)> = Vec::new();
        for raw in self.value.iter().chain(&self.inputs) {
            let split = raw.split_once('=');
            let named = split.and_then(|(name, value)| inputs.iter().find(|t| t.name == name).map(|t| (t, value)));
            let (meta, value) = match (named, split) {
                (Some(found), _) => found,
                (None, Some((name, _))) if looks_like_name(name) && !lone_text => {
                    return Err(usage(format!(
                        "model '{}' has no input '{name}'; its inputs: {}",
                        self.name,
                        names(inputs)
                    )))
                }
                _ => (only()?, raw.as_str()),
            };
            if out.iter().any(|(m, _)| m.name == meta.name) {
                return Err(usage(format!("input '{}' is given twice", meta.name)));
            }
            out.push((meta, source(value)));
        }
        if out.is_empty() {
            return Err(usage(format!(
                "no inputs given: model '{}' takes {} (--input NAME=VALUE{})",
                self.name,
                names(inputs),
                if lone_text { ", or --text" } else { "" }
            )));
        }
        Ok(out)
    }
}

/// The V2 JSON tensor for one input.
fn input_tensor(meta: &TensorMeta, src: &Source) -> anyhow::Result<Value> {
    let bytes_input = meta.datatype == "BYTES";
    match src {
        Source::Value(v) => value_tensor(meta, v),
        Source::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            if npy::is_npy(&bytes) {
                let array = npy::parse(&bytes).map_err(|e| usage(format!("{}: {e}", path.display())))?;
                return Ok(npy_tensor(meta, array));
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| usage(format!("{} is neither an .npy file nor UTF-8 text", path.display())))?;
            if bytes_input {
                let shape = fit_shape(&[], &meta.shape);
                return Ok(json!({ "name": meta.name, "datatype": meta.datatype, "shape": shape, "data": [text] }));
            }
            value_tensor(meta, &text)
        }
    }
}

/// JSON (or, for a BYTES input, text) from the command line as a tensor.
fn value_tensor(meta: &TensorMeta, v: &str) -> anyhow::Result<Value> {
    let parsed: Option<Value> = serde_json::from_str(v).ok();
    let value = if meta.datatype == "BYTES" {
        // Text is taken as it is unless it is JSON strings (`"a"`, `["a","b"]`): `--input TEXT=42`
        // is the text "42".
        match parsed {
            Some(p) if is_strings(&p) => p,
            _ => Value::String(v.to_string()),
        }
    } else {
        parsed.ok_or_else(|| {
            let e = serde_json::from_str::<Value>(v).err().map(|e| e.to_string()).unwrap_or_default();
            usage(format!("not valid JSON ({e}): give a number or a nested array, e.g. [[1.0, 2.0]]"))
        })?
    };
    let (shape, data) = nested(&value).map_err(usage)?;
    let shape = fit_shape(&shape, &meta.shape);
    Ok(json!({ "name": meta.name, "datatype": meta.datatype, "shape": shape, "data": data }))
}

fn is_strings(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(a) => a.iter().all(is_strings),
        _ => false,
    }
}

/// An .npy array as a tensor: its own dtype, or the model's datatype where both are floats or
/// both integers (np.save writes float64 by default; models mostly take FP32).
fn npy_tensor(meta: &TensorMeta, array: npy::Npy) -> Value {
    let model = DataType::parse(&meta.datatype);
    let kind = |t: DataType| match t {
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => 1,
        DataType::Bool | DataType::Bytes => 0,
        _ => 2,
    };
    let datatype = match model {
        Some(m) if kind(m) != 0 && kind(m) == kind(array.datatype) => m,
        _ => array.datatype,
    };
    let shape = fit_shape(&array.shape, &meta.shape);
    json!({ "name": meta.name, "datatype": datatype.as_str(), "shape": shape, "data": array.data })
}

/// The shape of a nested JSON array and its elements in order. A scalar has shape [].
pub fn nested(v: &Value) -> Result<(Vec<usize>, Vec<Value>), String> {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, data: &mut Vec<Value>) -> Result<(), String> {
        match v {
            Value::Array(a) => {
                if depth == shape.len() {
                    if !data.is_empty() {
                        return Err("ragged array: a number where a list was expected".into());
                    }
                    shape.push(a.len());
                } else if depth > shape.len() || shape[depth] != a.len() {
                    return Err(format!(
                        "ragged array: lists at depth {} have lengths {} and {}",
                        depth + 1,
                        shape.get(depth).copied().unwrap_or(0),
                        a.len()
                    ));
                }
                a.iter().try_for_each(|x| walk(x, depth + 1, shape, data))
            }
            Value::Object(_) => Err("expected numbers, booleans, strings or lists of them, got an object".into()),
            scalar => {
                if depth != shape.len() {
                    return Err("ragged array: a number where a list was expected".into());
                }
                data.push(scalar.clone());
                Ok(())
            }
        }
    }
    let (mut shape, mut data) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut data)?;
    Ok((shape, data))
}

fn fits(shape: &[i64], model: &[i64]) -> bool {
    shape.len() == model.len() && shape.iter().zip(model).all(|(s, m)| *m < 0 || s == m)
}

/// The shape to send: `shape` itself, unless it does not fit the model's and adding a leading
/// (batch) or trailing dimension of 1 makes it fit; a scalar fills a model shape of ones.
/// When nothing fits, `shape` goes as it is and the server says what it expected.
pub fn fit_shape(shape: &[usize], model: &[i64]) -> Vec<i64> {
    let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    if model.is_empty() || fits(&s, model) {
        return s;
    }
    let ones: Vec<i64> = model.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
    let mut candidates = vec![[&[1], &s[..]].concat(), [&s[..], &[1]].concat()];
    if s.is_empty() && ones.iter().product::<i64>() == 1 {
        candidates.push(ones);
    }
    candidates.into_iter().find(|c| fits(c, model)).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn t(name: &str, datatype: &str, shape: &[i64]) -> TensorMeta {
        TensorMeta { name: name.into(), datatype: datatype.into(), shape: shape.to_vec() }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        r: RequestArgs,
    }

    fn args(a: &[&str]) -> RequestArgs {
        Cli::try_parse_from(std::iter::once("infer").chain(a.iter().copied())).unwrap().r
    }

    #[test]
    fn nesting_is_the_shape() {
        assert_eq!(nested(&json!([[1, 2, 3], [4, 5, 6]])).unwrap(), (vec![2, 3], (1..=6).map(|i| json!(i)).collect()));
        assert_eq!(nested(&json!(2.5)).unwrap(), (vec![], vec![json!(2.5)]));
        assert_eq!(nested(&json!([])).unwrap(), (vec![0], vec![]));
        assert_eq!(nested(&json!([[true], [false]])).unwrap().0, vec![2, 1]);
        assert!(nested(&json!([[1, 2], [3]])).unwrap_err().contains("lengths 2 and 1"));
        assert!(nested(&json!([[1, 2], 3])).unwrap_err().contains("ragged"));
        assert!(nested(&json!([1, [2]])).unwrap_err().contains("ragged"));
        assert!(nested(&json!({"a": 1})).unwrap_err().contains("object"));
    }

    #[test]
    fn a_missing_batch_dimension_is_added_only_when_it_fits() {
        assert_eq!(fit_shape(&[1, 16], &[-1, 16]), [1, 16]);
        assert_eq!(fit_shape(&[16], &[-1, 16]), [1, 16]);
        assert_eq!(fit_shape(&[3, 224, 224], &[-1, 3, 224, 224]), [1, 3, 224, 224]);
        assert_eq!(fit_shape(&[2], &[-1, 1]), [2, 1]);
        assert_eq!(fit_shape(&[], &[-1, 1]), [1, 1]);
        assert_eq!(fit_shape(&[], &[1]), [1]);
        // Nothing fits: sent as given, for the server to explain.
        assert_eq!(fit_shape(&[3], &[-1, 16]), [3]);
        assert_eq!(fit_shape(&[], &[-1, 4]), Vec::<i64>::new());
        assert_eq!(fit_shape(&[5], &[]), [5]);
    }

    #[test]
    fn values_become_tensors() {
        let v = value_tensor(&t("X", "FP32", &[-1, 2]), "[[1, 2.5]]").unwrap();
        assert_eq!(v, json!({"name": "X", "datatype": "FP32", "shape": [1, 2], "data": [1, 2.5]}));
        let text = t("TEXT", "BYTES", &[-1, 1]);
        assert_eq!(value_tensor(&text, "hello world").unwrap()["data"], json!(["hello world"]));
        assert_eq!(value_tensor(&text, "hello world").unwrap()["shape"], json!([1, 1]));
        assert_eq!(value_tensor(&text, "42").unwrap()["data"], json!(["42"]));
        assert_eq!(value_tensor(&text, r#"["a", "b"]"#).unwrap()["shape"], json!([2, 1]));
        let e = value_tensor(&t("X", "FP32", &[-1, 2]), "[[1, 2]").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = value_tensor(&t("X", "FP32", &[-1, 2]), "[[1, 2], [3]]").unwrap_err().to_string();
        assert!(e.contains("ragged"), "{e}");
    }

    #[test]
    fn npy_dtypes_follow_the_model_within_their_kind() {
        let a = || npy::Npy { datatype: DataType::Fp64, shape: vec![4], data: vec![json!(1.0); 4] };
        assert_eq!(npy_tensor(&t("x", "FP32", &[-1, 4]), a())["datatype"], "FP32");
        assert_eq!(npy_tensor(&t("x", "FP32", &[-1, 4]), a())["shape"], json!([1, 4]));
        assert_eq!(npy_tensor(&t("x", "INT64", &[4]), a())["datatype"], "FP64");
        let i = npy::Npy { datatype: DataType::Int32, shape: vec![2], data: vec![json!(1); 2] };
        assert_eq!(npy_tensor(&t("x", "INT64", &[2]), i)["datatype"], "INT64");
    }

    #[test]
    fn values_are_paired_with_inputs() {
        let two = [t("INPUT0", "FP32", &[-1, 2]), t("INPUT1", "FP32", &[-1, 2])];
        let r = args(&["add_sub", "-i", "INPUT1=[1,2]", "--input", "INPUT0=@x.npy"]);
        let pairs = r.assign(&two).unwrap();
        assert_eq!(pairs[0], (&two[1], Source::Value("[1,2]")));
        assert_eq!(pairs[1], (&two[0], Source::File(Path::new("x.npy"))));
        let e = args(&["add_sub", "-i", "INPUT2=[1]"]).assign(&two).unwrap_err().to_string();
        assert!(e.contains("no input 'INPUT2'") && e.contains("INPUT0 (FP32), INPUT1 (FP32)"), "{e}");
        let e = args(&["add_sub", "[[1,2]]"]).assign(&two).unwrap_err().to_string();
        assert!(e.contains("has 2 inputs"), "{e}");
        let e = args(&["add_sub", "-i", "INPUT0=[1]", "-i", "INPUT0=[2]"]).assign(&two).unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = args(&["add_sub"]).assign(&two).unwrap_err().to_string();
        assert!(e.contains("no inputs given"), "{e}");

        let one = [t("TEXT", "BYTES", &[-1, 1])];
        assert_eq!(args(&["spam", "--text", "a=b"]).assign(&one).unwrap()[0].1, Source::Value("a=b"));
        assert_eq!(args(&["spam", "x = y"]).assign(&one).unwrap()[0].1, Source::Value("x = y"));
        assert_eq!(args(&["spam", "-i", "TEXT=hi"]).assign(&one).unwrap()[0].1, Source::Value("hi"));
        // With one input, text that merely looks like NAME=... is the value.
        assert_eq!(args(&["spam", "-i", "a=b"]).assign(&one).unwrap()[0].1, Source::Value("a=b"));
        let e = args(&["iris", "-i", "inputs=[1]"]).assign(&[t("input", "FP32", &[-1, 4])]).unwrap_err().to_string();
        assert!(e.contains("no input 'inputs'"), "{e}");
        let e = args(&["add_sub", "--text", "hi"]).assign(&two).unwrap_err().to_string();
        assert!(e.contains("only input is BYTES"), "{e}");
    }
}
