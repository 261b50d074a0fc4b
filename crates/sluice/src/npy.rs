//! Reading NumPy `.npy` files (format versions 1 to 3) for `--input NAME=@file.npy`: the dtype
//! and shape come from the header, the values become JSON numbers for a V2 request.
//!
//! Format: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.

use serde_json::Value;
use sluice_types::DataType;

const MAGIC: &[u8] = b"\x93NUMPY";

/// An array read from a `.npy` file.
#[derive(Debug, PartialEq)]
pub struct Npy {
    pub datatype: DataType,
    pub shape: Vec<usize>,
    /// Flat, in C order.
    pub data: Vec<Value>,
}

pub fn is_npy(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

pub fn parse(bytes: &[u8]) -> Result<Npy, String> {
    if !is_npy(bytes) {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let major = *bytes.get(6).ok_or("truncated header")?;
    let (len_bytes, start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let len_field = bytes.get(8..8 + len_bytes).ok_or("truncated header")?;
    let header_len = len_field.iter().rev().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let header = bytes.get(start..start + header_len).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the header is not text")?;
    let descr = quoted_value(header, "descr")?;
    let fortran = match raw_value(header, "fortran_order")? {
        v if v.starts_with("True") => true,
        v if v.starts_with("False") => false,
        v => return Err(format!("fortran_order is neither True nor False: {v}")),
    };
    if fortran {
        return Err("the array is in Fortran order; save it C-contiguous (np.ascontiguousarray)".into());
    }
    let shape = shape_value(header)?;
    let (datatype, endian, size) = dtype(&descr)?;
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("the shape is too large")?;
    let body = &bytes[start + header_len..];
    let needed = count.checked_mul(size).ok_or("the shape is too large")?;
    if body.len() != needed {
        return Err(format!("shape {shape:?} of {descr} needs {needed} bytes of data, the file has {}", body.len()));
    }
    let data = body.chunks_exact(size).map(|c| element(datatype, endian, c)).collect::<Result<Vec<_>, _>>()?;
    Ok(Npy { datatype, shape, data })
}

/// The text after `'key':` in the header dict, up to the end.
fn raw_value<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))
        .ok_or_else(|| format!("the header has no '{key}'"))?;
    let rest = &header[at + key.len() + 2..];
    let colon = rest.find(':').ok_or_else(|| format!("the header's '{key}' has no value"))?;
    Ok(rest[colon + 1..].trim_start())
}

fn quoted_value(header: &str, key: &str) -> Result<String, String> {
    let v = raw_value(header, key)?;
    let quote =
        v.chars().next().filter(|c| *c == '\'' || *c == '"').ok_or_else(|| {
            format!("'{key}' is not a simple dtype string (structured arrays are not supported): {v}")
        })?;
    let end = v[1..].find(quote).ok_or_else(|| format!("'{key}' is not closed"))?;
    Ok(v[1..1 + end].to_string())
}

fn shape_value(header: &str) -> Result<Vec<usize>, String> {
    let v = raw_value(header, "shape")?;
    let inner = v.strip_prefix('(').and_then(|v| v.split(')').next()).ok_or("'shape' is not a tuple")?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<usize>().map_err(|_| format!("'shape' has a bad dimension '{d}'")))
        .collect()
}

/// V2 datatype, byte order and element size of a simple dtype such as `<f4` or `|b1`.
fn dtype(descr: &str) -> Result<(DataType, Endian, usize), String> {
    let (order, code) = descr.split_at(descr.len().min(1));
    let endian = match order {
        "<" | "|" => Endian::Little,
        ">" => Endian::Big,
        "=" if cfg!(target_endian = "little") => Endian::Little,
        "=" => Endian::Big,
        _ => return Err(format!("unsupported dtype '{descr}'")),
    };
    let t = match code {
        "b1" => DataType::Bool,
        "u1" => DataType::Uint8,
        "u2" => DataType::Uint16,
        "u4" => DataType::Uint32,
        "u8" => DataType::Uint64,
        "i1" => DataType::Int8,
        "i2" => DataType::Int16,
        "i4" => DataType::Int32,
        "i8" => DataType::Int64,
        "f4" => DataType::Fp32,
        "f8" => DataType::Fp64,
        _ => return Err(format!("unsupported dtype '{descr}' (supported: bool, int8-64, uint8-64, float32, float64)")),
    };
    let size = code[1..].parse::<usize>().map_err(|_| format!("unsupported dtype '{descr}'"))?;
    Ok((t, endian, size))
}

fn element(t: DataType, endian: Endian, b: &[u8]) -> Result<Value, String> {
    let mut buf = [0u8; 8];
    let b = match endian {
        Endian::Little => b,
        Endian::Big => {
            let n = b.len();
            buf[..n].copy_from_slice(b);
            buf[..n].reverse();
            &buf[..n]
        }
    };
    let array = |b: &[u8]| {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        a
    };
    Ok(match t {
        DataType::Bool => Value::Bool(b[0] != 0),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 | DataType::Uint64 => {
            Value::from(u64::from_le_bytes(array(b)))
        }
        DataType::Int8 => Value::from(b[0] as i8),
        DataType::Int16 => Value::from(i16::from_le_bytes([b[0], b[1]])),
        DataType::Int32 => Value::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Int64 => Value::from(i64::from_le_bytes(array(b))),
        DataType::Fp32 => finite(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)?,
        DataType::Fp64 => finite(f64::from_le_bytes(array(b)))?,
        DataType::Fp16 | DataType::Bf16 | DataType::Bytes => unreachable!("not produced by dtype()"),
    })
}

fn finite(f: f64) -> Result<Value, String> {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| format!("the array holds {f}, which JSON cannot carry"))
}

/// An `.npy` file's bytes as `np.save` writes them (version 1.0, header padded to 64 bytes).
#[cfg(test)]
pub fn write(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|v| to(*v)).collect()
    }

    fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        [&bytes[..at], to, &bytes[at + from.len()..]].concat()
    }

    #[test]
    fn reads_the_common_dtypes() {
        let f = parse(&write("<f4", &[2, 2], &bytes(&[1.5f32, -2.0, 0.25, 8.0], f32::to_le_bytes))).unwrap();
        assert_eq!((f.datatype, f.shape.clone()), (DataType::Fp32, vec![2, 2]));
        assert_eq!(f.data, vec![json!(1.5), json!(-2.0), json!(0.25), json!(8.0)]);
        let d = parse(&write("<f8", &[1], &bytes(&[0.1f64], f64::to_le_bytes))).unwrap();
        assert_eq!((d.datatype, d.data), (DataType::Fp64, vec![json!(0.1)]));
        let i = parse(&write("<i4", &[3], &bytes(&[-1i32, 0, 7], i32::to_le_bytes))).unwrap();
        assert_eq!((i.datatype, i.data), (DataType::Int32, vec![json!(-1), json!(0), json!(7)]));
        let l = parse(&write("<i8", &[2], &bytes(&[i64::MIN, 5], i64::to_le_bytes))).unwrap();
        assert_eq!((l.datatype, l.data), (DataType::Int64, vec![json!(i64::MIN), json!(5)]));
        let u = parse(&write("|u1", &[1, 3], &[0, 128, 255])).unwrap();
        assert_eq!(
            (u.datatype, u.shape, u.data),
            (DataType::Uint8, vec![1, 3], vec![json!(0), json!(128), json!(255)])
        );
        let b = parse(&write("|b1", &[2], &[1, 0])).unwrap();
        assert_eq!((b.datatype, b.data), (DataType::Bool, vec![json!(true), json!(false)]));
    }

    #[test]
    fn big_endian_and_scalars() {
        let be = parse(&write(">i4", &[2], &bytes(&[1i32, -2], i32::to_be_bytes))).unwrap();
        assert_eq!(be.data, vec![json!(1), json!(-2)]);
        let be = parse(&write(">f8", &[1], &bytes(&[3.25f64], f64::to_be_bytes))).unwrap();
        assert_eq!(be.data, vec![json!(3.25)]);
        let s = parse(&write("<f4", &[], &bytes(&[2.5f32], f32::to_le_bytes))).unwrap();
        assert_eq!((s.shape, s.data), (vec![], vec![json!(2.5)]));
    }

    #[test]
    fn a_version_2_header_is_read() {
        let v1 = write("<i2", &[2], &bytes(&[3i16, -4], i16::to_le_bytes));
        let header_len = u16::from_le_bytes([v1[8], v1[9]]) as u32;
        let mut v2 = MAGIC.to_vec();
        v2.extend_from_slice(&[2, 0]);
        v2.extend_from_slice(&header_len.to_le_bytes());
        v2.extend_from_slice(&v1[10..]);
        assert_eq!(parse(&v2).unwrap().data, vec![json!(3), json!(-4)]);
    }

    #[test]
    fn bad_files_say_why() {
        let err = |b: &[u8]| parse(b).unwrap_err();
        assert!(err(b"PK\x03\x04").contains("not a .npy"));
        assert!(err(MAGIC).contains("truncated"));
        assert!(err(&write("<f4", &[3], &[0; 8])).contains("needs 12 bytes"), "{}", err(&write("<f4", &[3], &[0; 8])));
        assert!(err(&write("<c16", &[1], &[0; 16])).contains("unsupported dtype '<c16'"));
        assert!(err(&write("<U5", &[1], &[0; 20])).contains("unsupported dtype"));
        assert!(err(&write("<f4", &[1], &bytes(&[f32::NAN], f32::to_le_bytes))).contains("JSON cannot carry"));
        let fortran = replace(&write("<f4", &[2, 2], &[0; 16]), b"False", b"True ");
        assert!(err(&fortran).contains("Fortran order"));
        let structured = replace(&write("<f4", &[1], &[0; 4]), b"'<f4'", b"[('a', '<f4')]");
        assert!(err(&structured).contains("structured"), "{}", err(&structured));
        assert!(err(&write("<f4", &[usize::MAX, 4], &[])).contains("too large"));
    }
}
