//! Tensors as they travel through the server: a datatype, a shape and row-major data, either
//! fixed-size little-endian bytes or a list of byte strings (BYTES).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::Value;

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
        let n = element_count(&name, &shape)?;
        let mut flat: Vec<&Value> = Vec::with_capacity(n);
        flatten(data, &mut flat);
        if flat.len() != n {
            return Err(ServeError::invalid(format!(
                "input '{name}': shape {shape:?} needs {n} elements, got {}",
                flat.len()
            )));
        }
        let data = json_to_data(&name, datatype, &flat)?;
        Ok(Tensor { name, datatype, shape, data })
    }

    /// Encodes the data as a flat JSON array. FP16/BF16 become numbers; BYTES become strings
    /// (invalid UTF-8 is replaced, as JSON cannot carry it; use binary output for raw bytes).
    pub fn to_json(&self) -> Value {
        match &self.data {
            TensorData::Bytes(v) => {
                Value::Array(v.iter().map(|e| Value::String(String::from_utf8_lossy(e).into_owned())).collect())
            }
            TensorData::Fixed(b) => fixed_to_json(self.datatype, b),
        }
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn json_to_data(name: &str, dt: DataType, flat: &[&Value]) -> Result<TensorData, ServeError> {
    let bad = |i: usize, v: &Value| {
        ServeError::invalid(format!("input '{name}': element {i} is {v}, which is not a valid {dt} value"))
    };
    macro_rules! ints {
        ($t:ty) => {{
            let mut out: Vec<$t> = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                let x = v
                    .as_i64()
                    .and_then(|x| <$t>::try_from(x).ok())
                    .or_else(|| v.as_u64().and_then(|x| <$t>::try_from(x).ok()))
                    .ok_or_else(|| bad(i, v))?;
                out.push(x);
            }
            TensorData::Fixed(Bytes::from(bytemuck::cast_slice::<$t, u8>(&out).to_vec()))
        }};
    }
    macro_rules! floats {
        ($t:ty, $conv:expr) => {{
            let mut out: Vec<$t> = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                let x = v.as_f64().ok_or_else(|| bad(i, v))?;
                out.push($conv(x));
            }
            TensorData::Fixed(Bytes::from(bytemuck::cast_slice::<$t, u8>(&out).to_vec()))
        }};
    }
    Ok(match dt {
        DataType::Bool => {
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                let b = match v {
                    Value::Bool(b) => *b,
                    Value::Number(n) if n.as_u64() == Some(0) => false,
                    Value::Number(n) if n.as_u64() == Some(1) => true,
                    _ => return Err(bad(i, v)),
                };
                out.push(b as u8);
            }
            TensorData::Fixed(out.into())
        }
        DataType::Uint8 => ints!(u8),
        DataType::Uint16 => ints!(u16),
        DataType::Uint32 => ints!(u32),
        DataType::Uint64 => ints!(u64),
        DataType::Int8 => ints!(i8),
        DataType::Int16 => ints!(i16),
        DataType::Int32 => ints!(i32),
        DataType::Int64 => ints!(i64),
        DataType::Fp16 => floats!(half::f16, half::f16::from_f64),
        DataType::Bf16 => floats!(half::bf16, half::bf16::from_f64),
        DataType::Fp32 => floats!(f32, |x: f64| x as f32),
        DataType::Fp64 => floats!(f64, |x: f64| x),
        DataType::Bytes => {
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                match v {
                    Value::String(s) => out.push(Bytes::copy_from_slice(s.as_bytes())),
                    _ => return Err(bad(i, v)),
                }
            }
            TensorData::Bytes(out)
        }
    })
}

fn fixed_to_json(dt: DataType, b: &[u8]) -> Value {
    fn nums<T: bytemuck::Pod, F: Fn(T) -> Value>(b: &[u8], f: F) -> Value {
        Value::Array(bytemuck::pod_collect_to_vec::<u8, T>(b).into_iter().map(f).collect())
    }
    let float = |x: f64| serde_json::Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null);
    match dt {
        DataType::Bool => Value::Array(b.iter().map(|&x| Value::Bool(x != 0)).collect()),
        DataType::Uint8 => nums::<u8, _>(b, Value::from),
        DataType::Uint16 => nums::<u16, _>(b, Value::from),
        DataType::Uint32 => nums::<u32, _>(b, Value::from),
        DataType::Uint64 => nums::<u64, _>(b, Value::from),
        DataType::Int8 => nums::<i8, _>(b, Value::from),
        DataType::Int16 => nums::<i16, _>(b, Value::from),
        DataType::Int32 => nums::<i32, _>(b, Value::from),
        DataType::Int64 => nums::<i64, _>(b, Value::from),
        DataType::Fp16 => nums::<half::f16, _>(b, |x| float(x.to_f64())),
        DataType::Bf16 => nums::<half::bf16, _>(b, |x| float(x.to_f64())),
        DataType::Fp32 => nums::<f32, _>(b, |x| float(x as f64)),
        DataType::Fp64 => nums::<f64, _>(b, float),
        DataType::Bytes => Value::Null,
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
