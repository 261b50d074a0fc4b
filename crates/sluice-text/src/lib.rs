//! Text in and labels out. A model whose config declares a text input gets its BYTES strings
//! tokenized on the server ([`TextInput`]: Hugging Face `tokenizer.json`, truncation to the
//! model's length, token ids / attention mask / token type ids as the model's inputs want them,
//! padded to the longest sequence of the request; the scheduler then pads batches to their
//! longest). Triton's `classification` output parameter turns a score tensor into its top-k
//! `"score:index:label"` strings ([`classify`]).
//!
//! Declaring it, in `config.pbtxt`:
//!
//! ```text
//! parameters { key: "text_input" value: { string_value: "TEXT" } }
//! parameters { key: "tokenizer" value: { string_value: "tokenizer.json" } }   # the default
//! parameters { key: "max_sequence_length" value: { string_value: "128" } }    # else the tokenizer's
//! ```

use std::path::Path;

use bytes::Bytes;
use sluice_types::config::TensorConfig;
use sluice_types::{DataType, InferRequest, ModelConfig, ServeError, Tensor, TensorData};
use tokenizers::{Tokenizer, TruncationParams};

const IDS: &str = "input_ids";
const MASK: &str = "attention_mask";
const TYPES: &str = "token_type_ids";
/// Truncation when neither the config nor the tokenizer says.
const DEFAULT_MAX_LENGTH: usize = 512;

/// The text step of one model version.
pub struct TextInput {
    /// The BYTES input clients send.
    pub name: String,
    tokenizer: Tokenizer,
    /// (model input, datatype, what it carries).
    feeds: Vec<(String, DataType, Feed)>,
    pad_id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Feed {
    Ids,
    Mask,
    TypeIds,
}

impl TextInput {
    /// The text step a config declares (`None` when it declares none). The tokenizer file is
    /// looked for in the version directory, then the model directory.
    pub fn from_config(
        config: &ModelConfig,
        model_dir: &Path,
        version_dir: &Path,
    ) -> Result<Option<TextInput>, ServeError> {
        let Some(name) = config.parameter("text_input").filter(|n| !n.is_empty()) else { return Ok(None) };
        let bad = |m: String| ServeError::invalid(format!("model {}: text_input: {m}", config.name));
        let file = config.parameter("tokenizer").filter(|f| !f.is_empty()).unwrap_or("tokenizer.json");
        if file.contains("..") || Path::new(file).is_absolute() {
            return Err(bad(format!("tokenizer '{file}' must be a file name inside the model directory")));
        }
        let path = [version_dir.join(file), model_dir.join(file)].into_iter().find(|p| p.is_file());
        let path =
            path.ok_or_else(|| bad(format!("no {file} in {} or {}", version_dir.display(), model_dir.display())))?;
        let mut tokenizer =
            Tokenizer::from_file(&path).map_err(|e| bad(format!("cannot load {}: {e}", path.display())))?;
        let max_length = match config.parameter("max_sequence_length") {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("max_sequence_length must be a positive integer, got '{v}'")))?,
            None => tokenizer.get_truncation().map_or(DEFAULT_MAX_LENGTH, |t| t.max_length),
        };
        let pad_id = tokenizer.get_padding().map_or(0, |p| p.pad_id);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| bad(format!("truncation: {e}")))?;
        let mut feeds = Vec::new();
        for input in &config.input {
            let feed = match input.name.as_str() {
                IDS => Feed::Ids,
                MASK => Feed::Mask,
                TYPES => Feed::TypeIds,
                other => return Err(bad(format!("the model also has input '{other}', which text cannot feed"))),
            };
            let dt = input.datatype().filter(|d| matches!(d, DataType::Int64 | DataType::Int32)).ok_or_else(|| {
                bad(format!("input '{}' must be INT64 or INT32, not {}", input.name, input.data_type))
            })?;
            feeds.push((input.name.clone(), dt, feed));
        }
        if !feeds.iter().any(|(_, _, f)| *f == Feed::Ids) {
            return Err(bad("the model has no input_ids input".into()));
        }
        Ok(Some(TextInput { name: name.to_string(), tokenizer, feeds, pad_id }))
    }

    /// The config the scheduler runs with: token inputs batch raggedly (each batch padded to
    /// its longest sequence with the tokenizer's pad id; masks with 0).
    pub fn runner_config(&self, config: &ModelConfig) -> ModelConfig {
        let mut c = config.clone();
        for input in &mut c.input {
            input.allow_ragged_batch = true;
            let pad = if input.name == IDS { self.pad_id } else { 0 };
            let entry = c.parameters.entry(format!("pad_value:{}", input.name)).or_default();
            if entry.string_value.is_empty() {
                entry.string_value = pad.to_string();
            }
        }
        c
    }

    /// What clients see as the model's inputs: the text input alone, one string per row.
    pub fn public_input(&self) -> TensorConfig {
        TensorConfig { name: self.name.clone(), data_type: "TYPE_STRING".into(), dims: vec![1], ..Default::default() }
    }

    /// Replaces the text input of a request by the token tensors the model takes. A request
    /// of `b` strings (shape `[b, 1]`, or `[b]`) becomes `[b, longest]` tensors.
    pub fn apply(&self, req: &mut InferRequest, batching: bool) -> Result<(), ServeError> {
        let Some(pos) = req.inputs.iter().position(|t| t.name == self.name) else {
            let names: Vec<&str> = req.inputs.iter().map(|t| t.name.as_str()).collect();
            return Err(ServeError::invalid(format!(
                "model {} takes text in input '{}' (BYTES); the request has {names:?}",
                req.model, self.name
            )));
        };
        if req.inputs.len() > 1 {
            return Err(ServeError::invalid(format!(
                "model {} takes one input, '{}'; the request has {}",
                req.model,
                self.name,
                req.inputs.len()
            )));
        }
        let t = req.inputs.remove(pos);
        let TensorData::Bytes(strings) = &t.data else {
            return Err(ServeError::invalid(format!(
                "input '{}': expected BYTES (UTF-8 text), got {}",
                self.name, t.datatype
            )));
        };
        let rows = strings.len();
        let shape_ok = match t.shape.as_slice() {
            [n] | [n, 1] => *n as usize == rows,
            _ => false,
        };
        if !shape_ok || rows == 0 || (!batching && rows != 1) {
            let want = if batching { "[batch, 1] or [batch]" } else { "[1]" };
            return Err(ServeError::invalid(format!(
                "input '{}': expected shape {want} with one string per row, got {:?}",
                self.name, t.shape
            )));
        }
        let mut texts = Vec::with_capacity(rows);
        for (i, s) in strings.iter().enumerate() {
            texts.push(std::str::from_utf8(s).map_err(|e| {
                ServeError::invalid(format!("input '{}': element {i} is not UTF-8 text ({e})", self.name))
            })?);
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| ServeError::invalid(format!("input '{}': cannot tokenize: {e}", self.name)))?;
        let longest = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        for (name, dt, feed) in &self.feeds {
            let mut values: Vec<i64> = Vec::with_capacity(rows * longest);
            for e in &encodings {
                let (src, pad) = match feed {
                    Feed::Ids => (e.get_ids(), self.pad_id),
                    Feed::Mask => (e.get_attention_mask(), 0),
                    Feed::TypeIds => (e.get_type_ids(), 0),
                };
                values.extend(src.iter().map(|&v| v as i64));
                values.extend(std::iter::repeat_n(pad as i64, longest - src.len()));
            }
            let mut shape = vec![rows as i64, longest as i64];
            if !batching {
                shape.remove(0);
            }
            req.inputs.push(match dt {
                DataType::Int32 => {
                    Tensor::from_vec(name.as_str(), shape, values.into_iter().map(|v| v as i32).collect::<Vec<_>>())
                }
                _ => Tensor::from_vec(name.as_str(), shape, values),
            });
        }
        Ok(())
    }
}

/// Labels of an output: its `label_filename`, else `labels.txt` in the model directory.
pub fn labels_for(config: &ModelConfig, output: &str, model_dir: &Path) -> Result<Option<Vec<String>>, ServeError> {
    let declared = config.output.iter().find(|o| o.name == output).map(|o| o.label_filename.as_str()).unwrap_or("");
    let file = if declared.is_empty() { "labels.txt" } else { declared };
    let path = model_dir.join(file);
    if !path.is_file() {
        return if declared.is_empty() {
            Ok(None)
        } else {
            Err(ServeError::invalid(format!("model {}: label_filename {} not found", config.name, path.display())))
        };
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ServeError::invalid(format!("model {}: cannot read {}: {e}", config.name, path.display())))?;
    Ok(Some(text.lines().map(|l| l.trim_end().to_string()).collect()))
}

/// Triton's `classification` output: the top `k` scores of each row as BYTES
/// `"score:index"` or `"score:index:label"` strings, best first. `batched`: the first dim is the
/// batch (each row classified apart); otherwise the whole tensor is one row.
pub fn classify(t: &Tensor, k: usize, labels: Option<&[String]>, batched: bool) -> Result<Tensor, ServeError> {
    let scores = as_f64(t)?;
    let rows = if batched { t.shape.first().copied().unwrap_or(1).max(1) as usize } else { 1 };
    let per = scores.len() / rows.max(1);
    if k == 0 || per == 0 {
        return Err(ServeError::invalid(format!(
            "output '{}': classification needs a count of at least 1 and a non-empty tensor",
            t.name
        )));
    }
    let k = k.min(per);
    let mut out = Vec::with_capacity(rows * k);
    for row in scores.chunks(per) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in &idx[..k] {
            let s = match labels.and_then(|l| l.get(i)) {
                Some(label) => format!("{:.6}:{i}:{label}", row[i]),
                None => format!("{:.6}:{i}", row[i]),
            };
            out.push(Bytes::from(s));
        }
    }
    let shape = if batched { vec![rows as i64, k as i64] } else { vec![k as i64] };
    Ok(Tensor { name: t.name.clone(), datatype: DataType::Bytes, shape, data: TensorData::Bytes(out) })
}

fn as_f64(t: &Tensor) -> Result<Vec<f64>, ServeError> {
    let (TensorData::Fixed(b), false) = (&t.data, t.datatype == DataType::Bytes) else {
        return Err(ServeError::invalid(format!("output '{}': classification needs numbers, not BYTES", t.name)));
    };
    fn each<T: bytemuck::Pod>(b: &[u8], f: impl Fn(T) -> f64) -> Vec<f64> {
        b.chunks_exact(std::mem::size_of::<T>()).map(|c| f(bytemuck::pod_read_unaligned(c))).collect()
    }
    Ok(match t.datatype {
        DataType::Fp32 => each(b, |x: f32| x as f64),
        DataType::Fp64 => each(b, |x: f64| x),
        DataType::Fp16 => each(b, |x: half::f16| x.to_f64()),
        DataType::Bf16 => each(b, |x: half::bf16| x.to_f64()),
        DataType::Int8 => each(b, |x: i8| x as f64),
        DataType::Int16 => each(b, |x: i16| x as f64),
        DataType::Int32 => each(b, |x: i32| x as f64),
        DataType::Int64 => each(b, |x: i64| x as f64),
        DataType::Uint8 => each(b, |x: u8| x as f64),
        DataType::Uint16 => each(b, |x: u16| x as f64),
        DataType::Uint32 => each(b, |x: u32| x as f64),
        DataType::Uint64 => each(b, |x: u64| x as f64),
        DataType::Bool | DataType::Bytes => b.iter().map(|&x| x as f64).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_per_row_with_labels() {
        let t = Tensor::from_vec("p", vec![2, 3], vec![0.1f32, 0.7, 0.2, 0.5, 0.2, 0.3]);
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let c = classify(&t, 2, Some(&labels), true).unwrap();
        assert_eq!(c.shape, vec![2, 2]);
        let TensorData::Bytes(v) = &c.data else { panic!() };
        let v: Vec<&str> = v.iter().map(|b| std::str::from_utf8(b).unwrap()).collect();
        assert_eq!(v, vec!["0.700000:1:b", "0.200000:2:c", "0.500000:0:a", "0.300000:2:c"]);
        let one = classify(&t, 9, None, false).unwrap();
        assert_eq!(one.shape, vec![6], "k is capped at the number of classes");
        assert!(classify(&Tensor::from_strings("s", vec![1], &["x"]), 1, None, true).is_err());
    }
}
