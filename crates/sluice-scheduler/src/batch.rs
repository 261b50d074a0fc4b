//! Combining the inputs of several requests into one execution along the batch dimension, and
//! handing each request its rows of the outputs. Pure functions over tensors.

use bytes::{Bytes, BytesMut};
use sluice_types::{ServeError, Tensor, TensorData};

/// A key that is equal for requests that can share an execution: same inputs, datatypes and
/// non-batch dimensions.
pub fn shape_key(inputs: &[Tensor]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut parts: Vec<(&str, &str, &[i64])> =
        inputs.iter().map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.get(1..).unwrap_or(&[]))).collect();
    parts.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Concatenates each input over the requests (which share a [`shape_key`]).
pub fn merge_inputs(requests: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>, ServeError> {
    let mut requests = requests.into_iter();
    let Some(mut merged) = requests.next() else { return Ok(vec![]) };
    let rest: Vec<Vec<Tensor>> = requests.collect();
    if rest.is_empty() {
        return Ok(merged);
    }
    for t in merged.iter_mut() {
        let mut parts = Vec::with_capacity(rest.len());
        for r in &rest {
            let other = r
                .iter()
                .find(|o| o.name == t.name)
                .ok_or_else(|| ServeError::Internal(format!("batched requests disagree on input '{}'", t.name)))?;
            parts.push(other);
        }
        let rows: i64 = t.shape.first().copied().unwrap_or(1) + parts.iter().map(|p| p.shape[0]).sum::<i64>();
        t.data = match &t.data {
            TensorData::Fixed(first) => {
                let mut buf = BytesMut::with_capacity(first.len() * (parts.len() + 1));
                buf.extend_from_slice(first);
                for p in &parts {
                    match &p.data {
                        TensorData::Fixed(b) => buf.extend_from_slice(b),
                        TensorData::Bytes(_) => {
                            return Err(ServeError::Internal(format!("input '{}': mixed storage", t.name)))
                        }
                    }
                }
                TensorData::Fixed(buf.freeze())
            }
            TensorData::Bytes(first) => {
                let mut all = first.clone();
                for p in &parts {
                    match &p.data {
                        TensorData::Bytes(v) => all.extend(v.iter().cloned()),
                        TensorData::Fixed(_) => {
                            return Err(ServeError::Internal(format!("input '{}': mixed storage", t.name)))
                        }
                    }
                }
                TensorData::Bytes(all)
            }
        };
        t.shape[0] = rows;
    }
    Ok(merged)
}

/// Splits batched outputs into per-request outputs by the requests' batch sizes.
pub fn split_outputs(outputs: Vec<Tensor>, sizes: &[u64]) -> Result<Vec<Vec<Tensor>>, ServeError> {
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
        let row_elems: usize = t.shape[1..].iter().map(|&d| d.max(0) as usize).product();
        let mut offset = 0usize;
        for (i, &b) in sizes.iter().enumerate() {
            let n = b as usize * row_elems;
            let data = match &t.data {
                TensorData::Fixed(bytes) => {
                    let size = t.datatype.size().unwrap_or(1);
                    TensorData::Fixed(slice(bytes, offset * size, n * size)?)
                }
                TensorData::Bytes(v) => TensorData::Bytes(
                    v.get(offset..offset + n)
                        .ok_or_else(|| ServeError::Backend(format!("output '{}' is shorter than its shape", t.name)))?
                        .to_vec(),
                ),
            };
            let mut shape = t.shape.clone();
            shape[0] = b as i64;
            per[i].push(Tensor { name: t.name.clone(), datatype: t.datatype, shape, data });
            offset += n;
        }
    }
    Ok(per)
}

fn slice(b: &Bytes, start: usize, len: usize) -> Result<Bytes, ServeError> {
    if start + len > b.len() {
        return Err(ServeError::Backend("output data is shorter than its shape".into()));
    }
    Ok(b.slice(start..start + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_split_round_trip() {
        let a = vec![Tensor::from_vec("x", vec![1, 2], vec![1f32, 2.0]), Tensor::from_strings("s", vec![1, 1], &["a"])];
        let b = vec![
            Tensor::from_strings("s", vec![2, 1], &["b", "c"]),
            Tensor::from_vec("x", vec![2, 2], vec![3f32, 4.0, 5.0, 6.0]),
        ];
        assert_eq!(shape_key(&a), shape_key(&b));
        let merged = merge_inputs(vec![a.clone(), b]).unwrap();
        assert_eq!(merged[0].shape, vec![3, 2]);
        assert_eq!(merged[0].to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(merged[1].shape, vec![3, 1]);
        let parts = split_outputs(merged, &[1, 2]).unwrap();
        assert_eq!(parts[0], a);
        assert_eq!(parts[1][0].to_vec::<f32>().unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
        assert_eq!(parts[1][1].data, TensorData::Bytes(vec![Bytes::from("b"), Bytes::from("c")]));
    }

    #[test]
    fn different_dims_have_different_keys() {
        let a = vec![Tensor::from_vec("x", vec![1, 2], vec![1f32, 2.0])];
        let b = vec![Tensor::from_vec("x", vec![1, 3], vec![1f32, 2.0, 3.0])];
        assert_ne!(shape_key(&a), shape_key(&b));
    }

    #[test]
    fn split_checks_the_batch_dimension() {
        let e = split_outputs(vec![Tensor::from_vec("y", vec![2], vec![1f32, 2.0])], &[1, 2]).unwrap_err();
        assert!(e.to_string().contains("'y'"), "{e}");
    }
}
