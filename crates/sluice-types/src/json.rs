//! Tensor data as V2 JSON carries it (`"data": [..]`, flat or nested rows), read and written
//! straight from and to the wire: no intermediate `serde_json::Value` tree, which cost an
//! allocation per array and most of the JSON path's time on small requests.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{DataType, ServeError, Tensor, TensorData};

/// One element of a `data` array, as JSON wrote it.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// null or an object: never a valid element.
    Other(&'static str),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(x) => write!(f, "{x}"),
            Scalar::UInt(x) => write!(f, "{x}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "{}", Value::String(s.clone())),
            Scalar::Other(what) => f.write_str(what),
        }
    }
}

impl Scalar {
    fn as_i64(&self) -> Option<i64> {
        match *self {
            Scalar::Int(x) => Some(x),
            Scalar::UInt(x) => i64::try_from(x).ok(),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match *self {
            Scalar::Int(x) => u64::try_from(x).ok(),
            Scalar::UInt(x) => Some(x),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match *self {
            Scalar::Int(x) => Some(x as f64),
            Scalar::UInt(x) => Some(x as f64),
            Scalar::Float(x) => Some(x),
            _ => None,
        }
    }
}

/// A `data` field, its nesting flattened in row-major order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonData(pub Vec<Scalar>);

impl From<&Value> for JsonData {
    fn from(v: &Value) -> JsonData {
        fn walk(v: &Value, out: &mut Vec<Scalar>) {
            out.push(match v {
                Value::Array(items) => return items.iter().for_each(|i| walk(i, out)),
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => Scalar::Int(i),
                    (None, Some(u), _) => Scalar::UInt(u),
                    (None, None, f) => Scalar::Float(f.unwrap_or(f64::NAN)),
                },
                Value::Bool(b) => Scalar::Bool(*b),
                Value::String(s) => Scalar::Str(s.clone()),
                Value::Null => Scalar::Other("null"),
                Value::Object(_) => Scalar::Other("an object"),
            })
        }
        let mut out = Vec::new();
        walk(v, &mut out);
        JsonData(out)
    }
}

/// Appends every scalar of a (possibly nested) array to the vector.
struct Flatten<'a>(&'a mut Vec<Scalar>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tensor elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.0.reserve(n);
        }
        while seq.next_element_seed(Flatten(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(Scalar::Int(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(i64::try_from(v).map_or(Scalar::UInt(v), Scalar::Int));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(Scalar::Float(v));
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(Scalar::Bool(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(Scalar::Str(v.to_owned()));
        Ok(())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.0.push(Scalar::Str(v));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push(Scalar::Other("null"));
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
        self.0.push(Scalar::Other("an object"));
        Ok(())
    }
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JsonData, D::Error> {
        let mut out = Vec::new();
        Flatten(&mut out).deserialize(d)?;
        Ok(JsonData(out))
    }
}

/// Converts flattened JSON elements to a tensor's data.
pub(crate) fn to_data(name: &str, dt: DataType, flat: &[Scalar]) -> Result<TensorData, ServeError> {
    let bad = |i: usize, v: &Scalar| {
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
                    Scalar::Bool(b) => *b,
                    v if v.as_u64() == Some(0) => false,
                    v if v.as_u64() == Some(1) => true,
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
                    Scalar::Str(s) => out.push(Bytes::copy_from_slice(s.as_bytes())),
                    _ => return Err(bad(i, v)),
                }
            }
            TensorData::Bytes(out)
        }
    })
}

/// A tensor's data as a flat JSON array, written element by element. FP16/BF16 become numbers;
/// BYTES become strings (invalid UTF-8 is replaced, as JSON cannot carry it); a non-finite float
/// becomes null (JSON has no NaN).
pub struct DataJson<'a>(pub &'a Tensor);

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn each<S: Serializer, T: bytemuck::Pod, U: Serialize>(
            s: S,
            b: &[u8],
            f: impl Fn(T) -> U,
        ) -> Result<S::Ok, S::Error> {
            let size = std::mem::size_of::<T>();
            let mut seq = s.serialize_seq(Some(b.len() / size))?;
            for chunk in b.chunks_exact(size) {
                seq.serialize_element(&f(bytemuck::pod_read_unaligned::<T>(chunk)))?;
            }
            seq.end()
        }
        let b = match &self.0.data {
            TensorData::Bytes(v) => return s.collect_seq(v.iter().map(|e| String::from_utf8_lossy(e))),
            TensorData::Fixed(b) => &b[..],
        };
        let finite = |x: f64| x.is_finite().then_some(x);
        match self.0.datatype {
            DataType::Bool => s.collect_seq(b.iter().map(|&x| x != 0)),
            DataType::Uint8 => each(s, b, |x: u8| x),
            DataType::Uint16 => each(s, b, |x: u16| x),
            DataType::Uint32 => each(s, b, |x: u32| x),
            DataType::Uint64 => each(s, b, |x: u64| x),
            DataType::Int8 => each(s, b, |x: i8| x),
            DataType::Int16 => each(s, b, |x: i16| x),
            DataType::Int32 => each(s, b, |x: i32| x),
            DataType::Int64 => each(s, b, |x: i64| x),
            DataType::Fp16 => each(s, b, |x: half::f16| finite(x.to_f64())),
            DataType::Bf16 => each(s, b, |x: half::bf16| finite(x.to_f64())),
            DataType::Fp32 => each(s, b, |x: f32| x.is_finite().then_some(x)),
            DataType::Fp64 => each(s, b, finite),
            // A BYTES tensor always holds `TensorData::Bytes`.
            DataType::Bytes => s.serialize_unit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_rows_flatten_in_row_major_order() {
        let d: JsonData = serde_json::from_str(r#"[[1, -2], [3.5, "x"], [true, null]]"#).unwrap();
        assert_eq!(
            d.0,
            vec![
                Scalar::Int(1),
                Scalar::Int(-2),
                Scalar::Float(3.5),
                Scalar::Str("x".into()),
                Scalar::Bool(true),
                Scalar::Other("null")
            ]
        );
        assert_eq!(d, JsonData::from(&serde_json::json!([[1, -2], [3.5, "x"], [true, null]])));
    }

    #[test]
    fn floats_are_written_as_their_own_type() {
        let t = Tensor::from_vec("y", vec![3], vec![0.1f32, f32::NAN, 2.0]);
        assert_eq!(serde_json::to_string(&DataJson(&t)).unwrap(), "[0.1,null,2.0]");
    }
}
