//! Combining the inputs of several requests into one execution along the batch dimension, and
//! handing each request its rows of the outputs. Pure functions over tensors.
//!
//! Requests share an execution when their inputs agree in name, datatype and non-batch dims
//! ([`shape_key`]). An input marked `allow_ragged_batch: true` in the model config relaxes this:
//! its variable (-1) dims may differ between requests, and [`merge_inputs`] pads every request to
//! the longest one of the batch (never to a fixed maximum) with the input's pad value (model
//! config parameter `pad_value:<input>`, default 0 or the empty string). [`split_outputs`] then
//! trims outputs that came back at the padded length to each request's own length.

use bytes::{Bytes, BytesMut};
use sluice_types::{DataType, ModelConfig, ServeError, Tensor, TensorData};

/// Prefix of the model config parameters that set an input's pad value.
pub const PAD_VALUE_PARAMETER: &str = "pad_value:";

/// What the model config says about padding, worked out once per model version so that the
/// request path only looks it up.
#[derive(Clone, Debug, Default)]
pub struct Padding {
    inputs: Vec<RaggedInput>,
    /// Per configured output: the positions of its model-side shape (0 = batch) that the config
    /// declares fixed; those are never trimmed.
    fixed_output_dims: Vec<(String, usize, Vec<usize>)>,
}

#[derive(Clone, Debug)]
struct RaggedInput {
    name: String,
    /// Positions of the variable dims in the shape the scheduler sees (0 = batch, never listed).
    variable: Vec<usize>,
    /// One element of the pad value: little-endian bytes, or the string for BYTES.
    pad: Bytes,
}

impl Padding {
    /// Reads `allow_ragged_batch` and the `pad_value:<input>` parameters. Errors on a pad value
    /// that is not a number of the input's datatype, and on a `pad_value:` parameter that names
    /// no ragged input (a typo would otherwise pad with 0 silently).
    pub fn from_config(config: &ModelConfig) -> Result<Padding, ServeError> {
        let bad = |key: &str, why: String| {
            ServeError::invalid(format!("model '{}': config parameter '{key}': {why}", config.name))
        };
        for key in config.parameters.keys() {
            let Some(name) = key.strip_prefix(PAD_VALUE_PARAMETER) else { continue };
            if !config.input.iter().any(|c| c.name == name && c.allow_ragged_batch) {
                let ragged: Vec<&str> =
                    config.input.iter().filter(|c| c.allow_ragged_batch).map(|c| c.name.as_str()).collect();
                return Err(bad(
                    key,
                    format!("names no input with allow_ragged_batch: true (ragged inputs: [{}])", ragged.join(", ")),
                ));
            }
        }
        if config.max_batch_size == 0 {
            // Requests never share an execution, so nothing is ever padded.
            return Ok(Padding::default());
        }
        let mut inputs = Vec::new();
        for c in config.input.iter().filter(|c| c.allow_ragged_batch) {
            let dims = c.reshape.as_ref().map_or(&c.dims, |r| &r.shape);
            let variable: Vec<usize> = dims.iter().enumerate().filter(|(_, &d)| d < 0).map(|(i, _)| i + 1).collect();
            if variable.is_empty() {
                continue;
            }
            let dt = c.datatype().ok_or_else(|| {
                ServeError::Internal(format!("input '{}': config has unknown data_type '{}'", c.name, c.data_type))
            })?;
            let key = format!("{PAD_VALUE_PARAMETER}{}", c.name);
            let pad = match config.parameter(&key) {
                None => default_pad(dt),
                Some(v) => pad_element(dt, v).map_err(|why| bad(&key, why))?,
            };
            inputs.push(RaggedInput { name: c.name.clone(), variable, pad });
        }
        let fixed_output_dims = if inputs.is_empty() {
            Vec::new()
        } else {
            config
                .output
                .iter()
                .map(|c| {
                    let dims = c.reshape.as_ref().map_or(&c.dims, |r| &r.shape);
                    let fixed = dims.iter().enumerate().filter(|(_, &d)| d >= 0).map(|(i, _)| i + 1).collect();
                    (c.name.clone(), dims.len() + 1, fixed)
                })
                .collect()
        };
        Ok(Padding { inputs, fixed_output_dims })
    }

    /// True when no input of the model can be padded.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    fn ragged(&self, name: &str) -> Option<&RaggedInput> {
        self.inputs.iter().find(|r| r.name == name)
    }

    /// May dim `pos` of output `name` (of rank `rank`) be trimmed? Not when the config declares
    /// it fixed; outputs the config does not describe (or describes with another rank) may.
    fn trimmable(&self, name: &str, rank: usize, pos: usize) -> bool {
        match self.fixed_output_dims.iter().find(|(n, r, _)| n == name && *r == rank) {
            Some((_, _, fixed)) => !fixed.contains(&pos),
            None => true,
        }
    }
}

fn default_pad(dt: DataType) -> Bytes {
    match dt.size() {
        Some(n) => Bytes::from(vec![0u8; n]),
        None => Bytes::new(),
    }
}

/// One element of datatype `dt` from its text form (BYTES: the string itself).
fn pad_element(dt: DataType, v: &str) -> Result<Bytes, String> {
    let s = v.trim();
    let not = || format!("'{v}' is not a {dt} value");
    macro_rules! num {
        ($t:ty) => {
            s.parse::<$t>().map(|x| Bytes::copy_from_slice(&x.to_le_bytes())).map_err(|_| not())
        };
    }
    match dt {
        DataType::Bool => match s {
            "0" | "false" => Ok(Bytes::from_static(&[0])),
            "1" | "true" => Ok(Bytes::from_static(&[1])),
            _ => Err(not()),
        },
        DataType::Uint8 => num!(u8),
        DataType::Uint16 => num!(u16),
        DataType::Uint32 => num!(u32),
        DataType::Uint64 => num!(u64),
        DataType::Int8 => num!(i8),
        DataType::Int16 => num!(i16),
        DataType::Int32 => num!(i32),
        DataType::Int64 => num!(i64),
        DataType::Fp32 => num!(f32),
        DataType::Fp64 => num!(f64),
        DataType::Fp16 => s.parse::<f32>().map(|x| half_bytes(half::f16::from_f32(x).to_bits())).map_err(|_| not()),
        DataType::Bf16 => s.parse::<f32>().map(|x| half_bytes(half::bf16::from_f32(x).to_bits())).map_err(|_| not()),
        DataType::Bytes => Ok(Bytes::copy_from_slice(v.as_bytes())),
    }
}

fn half_bytes(bits: u16) -> Bytes {
    Bytes::copy_from_slice(&bits.to_le_bytes())
}

/// A key that is equal for requests that can share an execution: same inputs, datatypes and
/// non-batch dims, except the variable dims of ragged inputs (see [`Padding`]). No allocation:
/// each input hashes on its own and the hashes are summed, so input order does not matter.
pub fn shape_key(inputs: &[Tensor], padding: &Padding) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut key = 0u64;
    for t in inputs {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        t.name.hash(&mut h);
        t.datatype.as_str().hash(&mut h);
        let dims = t.shape.get(1..).unwrap_or(&[]);
        match padding.ragged(&t.name) {
            None => dims.hash(&mut h),
            Some(r) => {
                dims.len().hash(&mut h);
                for (i, d) in dims.iter().enumerate() {
                    let d = if r.variable.contains(&(i + 1)) { -1 } else { *d };
                    d.hash(&mut h);
                }
            }
        }
        key = key.wrapping_add(h.finish());
    }
    key
}

/// A batch ready to execute, and what padding did to it.
#[derive(Debug)]
pub struct Merged {
    pub inputs: Vec<Tensor>,
    /// `Some` only when some request was padded; [`split_outputs`] needs it to trim.
    pub padded: Option<Padded>,
}

/// The lengths padding produced: for each padded length, each request's own length.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Padded {
    lengths: Vec<(i64, Vec<i64>)>,
}

impl Padded {
    fn record(&mut self, padded: i64, own: Vec<i64>) {
        match self.lengths.iter_mut().find(|(l, _)| *l == padded) {
            // Two dims padded to the same length: keep each request's longer own length, so
            // that trimming never drops real data.
            Some((_, prev)) => prev.iter_mut().zip(own).for_each(|(p, o)| *p = (*p).max(o)),
            None => self.lengths.push((padded, own)),
        }
    }

    fn own_lengths(&self, padded: i64) -> Option<&[i64]> {
        self.lengths.iter().find(|(l, _)| *l == padded).map(|(_, v)| v.as_slice())
    }
}

/// Concatenates each input over the requests (which share a [`shape_key`]). Where the requests'
/// ragged inputs differ in a variable dim, each request's rows are padded up to the batch's
/// longest in that dim with the pad value; where they agree, the data is plainly concatenated.
pub fn merge_inputs(requests: Vec<Vec<Tensor>>, padding: &Padding) -> Result<Merged, ServeError> {
    let mut requests = requests.into_iter();
    let Some(mut merged) = requests.next() else { return Ok(Merged { inputs: vec![], padded: None }) };
    let rest: Vec<Vec<Tensor>> = requests.collect();
    if rest.is_empty() {
        return Ok(Merged { inputs: merged, padded: None });
    }
    let mut padded: Option<Padded> = None;
    for (i, t) in merged.iter_mut().enumerate() {
        let mut parts = Vec::with_capacity(rest.len());
        for r in &rest {
            let other = match r.get(i) {
                Some(o) if o.name == t.name => o,
                _ => r
                    .iter()
                    .find(|o| o.name == t.name)
                    .ok_or_else(|| ServeError::Internal(format!("batched requests disagree on input '{}'", t.name)))?,
            };
            parts.push(other);
        }
        let rows: i64 = t.shape.first().copied().unwrap_or(1) + parts.iter().map(|p| p.shape[0]).sum::<i64>();
        if let Some(r) = padding.ragged(&t.name) {
            if let Some(target) = padded_shape(t, &parts, r)? {
                let all: Vec<&Tensor> = std::iter::once(&*t).chain(parts.iter().copied()).collect();
                for &pos in &r.variable {
                    if all.iter().any(|p| p.shape[pos] < target[pos]) {
                        let own = all.iter().map(|p| p.shape[pos]).collect();
                        padded.get_or_insert_with(Padded::default).record(target[pos], own);
                    }
                }
                t.data = pad_concat(&all, &target, &r.pad)?;
                t.shape = target;
                t.shape[0] = rows;
                continue;
            }
        }
        t.data = match &t.data {
            TensorData::Fixed(first) => {
                let mut buf = BytesMut::with_capacity(first.len() * (parts.len() + 1));
                buf.extend_from_slice(first);
                for p in &parts {
                    match &p.data {
                        TensorData::Fixed(b) => buf.extend_from_slice(b),
                        TensorData::Bytes(_) => return Err(mixed(&t.name)),
                    }
                }
                TensorData::Fixed(buf.freeze())
            }
            TensorData::Bytes(first) => {
                let mut all = first.clone();
                for p in &parts {
                    match &p.data {
                        TensorData::Bytes(v) => all.extend(v.iter().cloned()),
                        TensorData::Fixed(_) => return Err(mixed(&t.name)),
                    }
                }
                TensorData::Bytes(all)
            }
        };
        t.shape[0] = rows;
    }
    Ok(Merged { inputs: merged, padded })
}

fn mixed(name: &str) -> ServeError {
    ServeError::Internal(format!("input '{name}': mixed storage"))
}

/// The shape every request of a ragged input is padded to (batch dim: the first request's), or
/// `None` when all requests already have it. Checks that the fixed dims agree.
fn padded_shape(first: &Tensor, rest: &[&Tensor], r: &RaggedInput) -> Result<Option<Vec<i64>>, ServeError> {
    let mut target = first.shape.clone();
    let mut differ = false;
    for p in rest {
        if p.shape.len() != target.len() || p.datatype != first.datatype {
            return Err(ServeError::Internal(format!(
                "input '{}': batched requests disagree: {} {:?} and {} {:?}",
                first.name, first.datatype, first.shape, p.datatype, p.shape
            )));
        }
        for (pos, (want, &got)) in target.iter_mut().zip(&p.shape).enumerate().skip(1) {
            if *want == got {
                continue;
            }
            if !r.variable.contains(&pos) {
                return Err(ServeError::Internal(format!(
                    "input '{}': batched requests disagree in fixed dim {pos}: {:?} and {:?}",
                    first.name, first.shape, p.shape
                )));
            }
            differ = true;
            *want = (*want).max(got);
        }
    }
    Ok(differ.then_some(target))
}

fn dims(name: &str, shape: &[i64]) -> Result<Vec<usize>, ServeError> {
    shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| ServeError::Internal(format!("'{name}': negative dim in {shape:?}"))))
        .collect()
}

/// Concatenates `parts` along the batch dim, each padded to `target`'s non-batch dims.
fn pad_concat(parts: &[&Tensor], target: &[i64], pad: &Bytes) -> Result<TensorData, ServeError> {
    let name = &parts[0].name;
    let row: usize = dims(name, &target[1..])?.iter().product();
    let rows: usize = parts.iter().map(|p| p.shape[0].max(0) as usize).sum();
    let short =
        |p: &Tensor| ServeError::Internal(format!("input '{}': data does not fill its shape {:?}", p.name, p.shape));
    match &parts[0].data {
        TensorData::Fixed(_) => {
            let esz = parts[0].datatype.size().ok_or_else(|| mixed(name))?;
            let zero = pad.iter().all(|&b| b == 0);
            let mut buf = BytesMut::with_capacity(rows * row * esz);
            for p in parts {
                let TensorData::Fixed(src) = &p.data else { return Err(mixed(name)) };
                let own = dims(name, &p.shape)?;
                let start = buf.len();
                let len = own[0] * row * esz;
                if src.len() != own.iter().product::<usize>() * esz {
                    return Err(short(p));
                }
                if p.shape[1..] == target[1..] {
                    buf.extend_from_slice(src);
                    continue;
                }
                if zero {
                    buf.resize(start + len, 0);
                } else {
                    for _ in 0..own[0] * row {
                        buf.extend_from_slice(pad);
                    }
                }
                let full: Vec<usize> = std::iter::once(own[0]).chain(dims(name, &target[1..])?).collect();
                copy_into_padded(src, &own, &full, esz, &mut buf[start..start + len]);
            }
            Ok(TensorData::Fixed(buf.freeze()))
        }
        TensorData::Bytes(_) => {
            let mut all: Vec<Bytes> = Vec::with_capacity(rows * row);
            for p in parts {
                let TensorData::Bytes(src) = &p.data else { return Err(mixed(name)) };
                let own = dims(name, &p.shape)?;
                if src.len() != own.iter().product::<usize>() {
                    return Err(short(p));
                }
                if p.shape[1..] == target[1..] {
                    all.extend(src.iter().cloned());
                    continue;
                }
                let start = all.len();
                all.resize(start + own[0] * row, pad.clone());
                let full: Vec<usize> = std::iter::once(own[0]).chain(dims(name, &target[1..])?).collect();
                copy_into_padded(src, &own, &full, 1, &mut all[start..]);
            }
            Ok(TensorData::Bytes(all))
        }
    }
}

/// Places the innermost rows of `src` (row-major, shape `own`) where they belong in `dst`
/// (row-major, shape `full`: same rank, no dim smaller), which already holds the pad value.
/// `unit`: storage items per element (bytes for fixed-size data, 1 for BYTES).
fn copy_into_padded<T: Clone>(src: &[T], own: &[usize], full: &[usize], unit: usize, dst: &mut [T]) {
    let rank = own.len();
    let inner = own[rank - 1] * unit;
    let outer: usize = own[..rank - 1].iter().product();
    if inner == 0 || outer == 0 {
        return;
    }
    let strides = strides(full, unit);
    let mut idx = vec![0usize; rank - 1];
    for r in 0..outer {
        let d: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        dst[d..d + inner].clone_from_slice(&src[r * inner..(r + 1) * inner]);
        advance(&mut idx, own);
    }
}

/// The inverse: the block of shape `own` out of `src` of shape `full`.
fn copy_out_of_padded<T: Clone>(src: &[T], full: &[usize], own: &[usize], unit: usize) -> Vec<T> {
    let rank = own.len();
    let inner = own[rank - 1] * unit;
    let outer: usize = own[..rank - 1].iter().product();
    let mut out = Vec::with_capacity(inner * outer);
    if inner == 0 {
        return out;
    }
    let strides = strides(full, unit);
    let mut idx = vec![0usize; rank - 1];
    for _ in 0..outer {
        let s: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&src[s..s + inner]);
        advance(&mut idx, own);
    }
    out
}

/// Row-major strides in storage items.
fn strides(shape: &[usize], unit: usize) -> Vec<usize> {
    let mut s = vec![0; shape.len()];
    let mut acc = unit;
    for k in (0..shape.len()).rev() {
        s[k] = acc;
        acc *= shape[k];
    }
    s
}

/// Next index of an odometer over the leading dims of `shape`.
fn advance(idx: &mut [usize], shape: &[usize]) {
    for k in (0..idx.len()).rev() {
        idx[k] += 1;
        if idx[k] < shape[k] {
            return;
        }
        idx[k] = 0;
    }
}

/// Splits batched outputs into per-request outputs by the requests' batch sizes.
///
/// Un-padding: when [`merge_inputs`] padded the batch (`padded` is `Some`), a dim 1.. of an
/// output whose size equals a padded length is taken to follow that input dim (per-token
/// outputs such as `[batch, seq, hidden]`), and each request gets it trimmed back to its own
/// length (the padded positions are dropped). A dim the model config declares fixed for that
/// output is never trimmed, even when its size happens to equal a padded length; outputs
/// without a dim of the padded length (e.g. `probabilities [batch, 2]`) split as when nothing
/// was padded. Without padding, outputs are only cut along the batch dim (no copy).
pub fn split_outputs(
    outputs: Vec<Tensor>,
    sizes: &[u64],
    padding: &Padding,
    padded: Option<&Padded>,
) -> Result<Vec<Vec<Tensor>>, ServeError> {
    if sizes.len() == 1 {
        return Ok(vec![outputs]);
    }
    let total: u64 = sizes.iter().sum();
    let mut per: Vec<Vec<Tensor>> = (0..sizes.len()).map(|_| Vec::with_capacity(outputs.len())).collect();
    for t in outputs {
        if t.shape.first().copied() != Some(total as i64) {
            return Err(ServeError::Backend(format!(
                "output '{}' has shape {:?}; a batch of {total} needs it to start with {total}",
                t.name, t.shape
            )));
        }
        let shape = dims(&t.name, &t.shape)?;
        let row_elems: usize = shape[1..].iter().product();
        // (position, each request's own length) of the dims to trim.
        let trims: Vec<(usize, &[i64])> = match padded {
            None => Vec::new(),
            Some(p) => (1..t.shape.len())
                .filter(|&pos| padding.trimmable(&t.name, t.shape.len(), pos))
                .filter_map(|pos| p.own_lengths(t.shape[pos]).map(|own| (pos, own)))
                .collect(),
        };
        let unit = t.datatype.size().unwrap_or(1);
        let available = match &t.data {
            TensorData::Fixed(b) => b.len() / unit,
            TensorData::Bytes(v) => v.len(),
        };
        if available < total as usize * row_elems {
            return Err(ServeError::Backend(format!("output '{}' is shorter than its shape", t.name)));
        }
        let mut offset = 0usize;
        for (i, &b) in sizes.iter().enumerate() {
            let n = b as usize * row_elems;
            let mut own = t.shape.clone();
            own[0] = b as i64;
            for &(pos, lens) in &trims {
                if let Some(&len) = lens.get(i) {
                    own[pos] = own[pos].min(len);
                }
            }
            let data = if own[1..] == t.shape[1..] {
                match &t.data {
                    TensorData::Fixed(bytes) => TensorData::Fixed(bytes.slice(offset * unit..(offset + n) * unit)),
                    TensorData::Bytes(v) => TensorData::Bytes(v[offset..offset + n].to_vec()),
                }
            } else {
                let full: Vec<usize> = std::iter::once(b as usize).chain(shape[1..].iter().copied()).collect();
                let mine = dims(&t.name, &own)?;
                match &t.data {
                    TensorData::Fixed(bytes) => {
                        let src = &bytes[offset * unit..(offset + n) * unit];
                        TensorData::Fixed(copy_out_of_padded(src, &full, &mine, unit).into())
                    }
                    TensorData::Bytes(v) => {
                        TensorData::Bytes(copy_out_of_padded(&v[offset..offset + n], &full, &mine, 1))
                    }
                }
            };
            per[i].push(Tensor { name: t.name.clone(), datatype: t.datatype, shape: own, data });
            offset += n;
        }
    }
    Ok(per)
}

#[cfg(test)]
mod tests;
