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
        DataType::Fp16 => {
            s.parse::<f32>().map(|x| Bytes::copy_from_slice(&f32_to_f16_bits(x).to_le_bytes())).map_err(|_| not())
        }
        DataType::Bf16 => {
            s.parse::<f32>().map(|x| Bytes::copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes())).map_err(|_| not())
        }
        DataType::Bytes => Ok(Bytes::copy_from_slice(v.as_bytes())),
    }
}

/// IEEE binary16 bits of `x`, rounded to nearest even (overflow gives infinity).
fn f32_to_f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let round = |m: u32, shift: u32| -> u32 {
        let kept = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        if rem > half || (rem == half && kept & 1 == 1) {
            kept + 1
        } else {
            kept
        }
    };
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e >= 1 {
        // A carry out of the mantissa moves into the exponent, up to infinity: still right.
        return sign | ((e as u32) << 10).wrapping_add(round(man, 13)).min(0x7c00) as u16;
    }
    // Subnormal: units of 2^-24.
    let shift = (14 - e) as u32;
    if shift > 24 {
        return sign;
    }
    sign | round(man | 0x80_0000, shift) as u16
}

/// bfloat16 bits of `x`, rounded to nearest even.
fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
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
mod tests {
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
        let e = split_outputs(vec![Tensor::from_vec("y", vec![2], vec![1f32, 2.0])], &[1, 2], &no_padding(), None)
            .unwrap_err();
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

    #[test]
    fn half_precision_conversions() {
        for (x, want) in [
            (0.0f32, 0x0000u16),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.5, 0x3800),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00),
            (1e6, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
            (6.0e-8, 0x0001),
            (1e-7, 0x0002),
            (2f32.powi(-14), 0x0400),
            (1.0 + 2f32.powi(-10), 0x3c01),
            (1.0 + 2f32.powi(-11), 0x3c00), // halfway: to even
        ] {
            assert_eq!(f32_to_f16_bits(x), want, "{x}");
        }
        assert_eq!(f32_to_f16_bits(f32::NAN) & 0x7c00, 0x7c00);
        assert_ne!(f32_to_f16_bits(f32::NAN) & 0x3ff, 0);
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        assert_eq!(f32_to_bf16_bits(-2.0), 0xc000);
        assert_eq!(f32_to_bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80); // halfway: to even
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82); // halfway: to even (up)
    }
}
