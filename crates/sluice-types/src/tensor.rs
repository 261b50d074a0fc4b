//! Tensors as they travel through the server: a datatype, a shape and row-major data, either
//! fixed-size little-endian bytes or a list of byte strings (BYTES).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::Value;

use crate::json::{self, DataJson, JsonData};
use crate::{DataType, ServeError};

/// Row-major tensor contents.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, little-endian, no padding (BOOL is one byte, 0 or 1).
    Fixed(Bytes),
    /// One entry per element of a BYTES tensor.
    Bytes(Vec<Bytes>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// Elements that can be stored in a fixed-size tensor.
pub trait Element: bytemuck::Pod {
    const DATATYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DATATYPE: DataType = DataType::$d; })* };
}
element!(u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64, i8 => Int8, i16 => Int16,
    i32 => Int32, i64 => Int64, f32 => Fp32, f64 => Fp64, half::f16 => Fp16, half::bf16 => Bf16);

/// Number of elements a shape holds; errors on negative dims or overflow.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, ServeError> {
    let mut n: usize = 1;
    for &d in shape {
        if d < 0 {
            return Err(ServeError::invalid(format!("tensor '{name}': shape {shape:?} has a negative dimension")));
        }
        n = n
            .checked_mul(d as usize)
            .ok_or_else(|| ServeError::invalid(format!("tensor '{name}': shape {shape:?} is too large")))?;
    }
    Ok(n)
}

impl Tensor {
    /// A fixed-size tensor from typed values.
    pub fn from_vec<T: Element>(name: impl Into<String>, shape: Vec<i64>, values: Vec<T>) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: T::DATATYPE,
            shape,
            data: TensorData::Fixed(Bytes::from(bytemuck::cast_slice::<T, u8>(&values).to_vec())),
        }
    }

    pub fn from_bools(name: impl Into<String>, shape: Vec<i64>, values: &[bool]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: DataType::Bool,
            shape,
            data: TensorData::Fixed(values.iter().map(|&b| b as u8).collect::<Vec<u8>>().into()),
        }
    }

    pub fn from_strings<S: AsRef<[u8]>>(name: impl Into<String>, shape: Vec<i64>, values: &[S]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: DataType::Bytes,
            shape,
            data: TensorData::Bytes(values.iter().map(|s| Bytes::copy_from_slice(s.as_ref())).collect()),
        }
    }

    /// Typed copy of the elements; `None` when `T` is not this tensor's datatype.
    pub fn to_vec<T: Element>(&self) -> Option<Vec<T>> {
        match &self.data {
            TensorData::Fixed(b) if T::DATATYPE == self.datatype => Some(bytemuck::pod_collect_to_vec(b)),
            _ => None,
        }
    }

    pub fn element_count(&self) -> Result<usize, ServeError> {
        element_count(&self.name, &self.shape)
    }

    /// Checks that the data holds exactly as many elements as the shape says.
    pub fn validate(&self) -> Result<(), ServeError> {
        let n = self.element_count()?;
        match (&self.data, self.datatype.size()) {
            (TensorData::Fixed(b), Some(size)) => {
                let want = n.checked_mul(size).ok_or_else(|| {
                    ServeError::invalid(format!("input '{}': shape {:?} is too large", self.name, self.shape))
                })?;
                if b.len() != want {
                    return Err(ServeError::invalid(format!(
                        "input '{}': shape {:?} of {} needs {} bytes, got {}",
                        self.name,
                        self.shape,
                        self.datatype,
                        want,
                        b.len()
                    )));
                }
                if self.datatype == DataType::Bool && b.iter().any(|&v| v > 1) {
                    return Err(ServeError::invalid(format!("input '{}': BOOL elements must be 0 or 1", self.name)));
                }
            }
            (TensorData::Bytes(v), None) => {
                if v.len() != n {
                    return Err(ServeError::invalid(format!(
                        "input '{}': shape {:?} needs {} elements, got {}",
                        self.name,
                        self.shape,
                        n,
                        v.len()
                    )));
                }
            }
            (TensorData::Fixed(_), None) | (TensorData::Bytes(_), Some(_)) => {
                return Err(ServeError::Internal(format!(
                    "tensor '{}': data storage does not match datatype {}",
                    self.name, self.datatype
                )));
            }
        }
        Ok(())
    }

    /// Size of the tensor in the binary encoding (BYTES: 4-byte length prefix per element).
    pub fn byte_size(&self) -> usize {
        match &self.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(v) => v.iter().map(|e| 4 + e.len()).sum(),
        }
    }

    /// Decodes the binary tensor encoding (Triton binary extension, gRPC raw contents).
    pub fn from_raw(name: String, datatype: DataType, shape: Vec<i64>, raw: Bytes) -> Result<Tensor, ServeError> {
        let data = if datatype == DataType::Bytes {
            let mut items = Vec::new();
            let mut buf = raw;
            while buf.has_remaining() {
                if buf.remaining() < 4 {
                    return Err(ServeError::invalid(format!(
                        "input '{name}': BYTES data ends inside a 4-byte length prefix"
                    )));
                }
                let len = buf.get_u32_le() as usize;
                if buf.remaining() < len {
                    return Err(ServeError::invalid(format!(
                        "input '{name}': BYTES element of {len} bytes, only {} left",
                        buf.remaining()
                    )));
                }
                items.push(buf.split_to(len));
            }
            TensorData::Bytes(items)
        } else {
            TensorData::Fixed(raw)
        };
        let t = Tensor { name, datatype, shape, data };
        t.validate()?;
        Ok(t)
    }

    /// Encodes into the binary tensor encoding.
    pub fn to_raw(&self) -> Bytes {
        match &self.data {
            TensorData::Fixed(b) => b.clone(),
            TensorData::Bytes(v) => {
                let mut out = BytesMut::with_capacity(self.byte_size());
                for e in v {
                    out.put_u32_le(e.len() as u32);
                    out.put_slice(e);
                }
                out.freeze()
            }
        }
    }

    /// Decodes JSON tensor data, flat or nested, checking it against the shape.
    pub fn from_json(name: String, datatype: DataType, shape: Vec<i64>, data: &Value) -> Result<Tensor, ServeError> {
        Tensor::from_json_data(name, datatype, shape, &JsonData::from(data))
    }

    /// Builds a tensor from `data` as the request body carried it (already flattened).
    pub fn from_json_data(
        name: String,
        datatype: DataType,
        shape: Vec<i64>,
        data: &JsonData,
    ) -> Result<Tensor, ServeError> {
        let n = element_count(&name, &shape)?;
        if data.0.len() != n {
            return Err(ServeError::invalid(format!(
                "input '{name}': shape {shape:?} needs {n} elements, got {}",
                data.0.len()
            )));
        }
        let data = json::to_data(&name, datatype, &data.0)?;
        Ok(Tensor { name, datatype, shape, data })
    }

    /// The data as a flat JSON array (see [`DataJson`]).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(DataJson(self)).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_nested_and_flat_agree() {
        let a = Tensor::from_json("x".into(), DataType::Int32, vec![2, 2], &json!([[1, 2], [3, 4]])).unwrap();
        let b = Tensor::from_json("x".into(), DataType::Int32, vec![2, 2], &json!([1, 2, 3, 4])).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_vec::<i32>().unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(a.to_json(), json!([1, 2, 3, 4]));
    }

    #[test]
    fn json_errors_name_the_tensor() {
        let e = Tensor::from_json("IN".into(), DataType::Fp32, vec![3], &json!([1, 2])).unwrap_err();
        assert!(e.to_string().contains("'IN'") && e.to_string().contains("needs 3"), "{e}");
        let e = Tensor::from_json("IN".into(), DataType::Uint8, vec![1], &json!([300])).unwrap_err();
        assert!(e.to_string().contains("UINT8"), "{e}");
        let e = Tensor::from_json("IN".into(), DataType::Fp32, vec![-1], &json!([])).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
    }

    #[test]
    fn bytes_round_trip_raw() {
        let t = Tensor::from_strings("s", vec![2], &["hello", ""]);
        let raw = t.to_raw();
        assert_eq!(raw.len(), 4 + 5 + 4);
        let back = Tensor::from_raw("s".into(), DataType::Bytes, vec![2], raw).unwrap();
        assert_eq!(back, t);
        let e =
            Tensor::from_raw("s".into(), DataType::Bytes, vec![1], Bytes::from_static(&[9, 0, 0, 0, 1])).unwrap_err();
        assert!(e.to_string().contains("'s'"));
    }

    #[test]
    fn raw_size_is_checked() {
        let e = Tensor::from_raw("f".into(), DataType::Fp32, vec![2], Bytes::from_static(&[0; 7])).unwrap_err();
        assert!(e.to_string().contains("needs 8 bytes, got 7"), "{e}");
    }

    #[test]
    fn fp16_and_bool_json() {
        let t = Tensor::from_json("h".into(), DataType::Fp16, vec![2], &json!([1.5, -2])).unwrap();
        assert_eq!(t.to_json(), json!([1.5, -2.0]));
        let b = Tensor::from_json("b".into(), DataType::Bool, vec![3], &json!([true, false, 1])).unwrap();
        assert_eq!(b.to_json(), json!([true, false, true]));
    }
}
