//! How the client subcommands print: aligned tables, and tensors summarized to fit a line.

use std::fmt::Write as _;

use serde_json::Value;

use crate::client::str_of;

/// A table with a header and columns as wide as their widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let all = std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>()).chain(rows.iter().cloned());
    for r in all {
        let last = r.len().saturating_sub(1);
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| if i == last { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// `[1,16]`
pub fn shape(v: &Value) -> String {
    let dims: Vec<String> = v.as_array().into_iter().flatten().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// Elements shown at each end of a dimension longer than `2 * EDGE`, as numpy prints.
const EDGE: usize = 3;

/// The tensor's data nested as its shape, each dimension longer than six cut to its first and
/// last three: `[[1, 2, 3, …, 14, 15, 16]]`. Data that does not fit the shape is shown flat.
pub fn tensor_data(shape: &[usize], data: &Value) -> String {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let mut out = String::new();
    if shape.iter().product::<usize>() == flat.len() {
        nested(shape, &flat, &mut out);
    } else {
        nested(&[flat.len()], &flat, &mut out);
    }
    out
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

fn nested(shape: &[usize], data: &[&Value], out: &mut String) {
    let Some((&n, inner)) = shape.split_first() else {
        scalar(data.first().copied().unwrap_or(&Value::Null), out);
        return;
    };
    let stride: usize = inner.iter().product();
    out.push('[');
    let cut = n > 2 * EDGE;
    for i in 0..n {
        if cut && i == EDGE {
            out.push_str("…, ");
        }
        if cut && (EDGE..n - EDGE).contains(&i) {
            continue;
        }
        nested(inner, &data[i * stride..(i + 1) * stride], out);
        if i + 1 < n {
            out.push_str(", ");
        }
    }
    out.push(']');
}

fn scalar(v: &Value, out: &mut String) {
    match v {
        // Six significant digits at most; very small and very large ones in exponent form, so
        // that a probability of 1e-8 does not take a dozen zeros.
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let short: f64 = format!("{f:.5e}").parse().unwrap_or(f);
            if short != 0.0 && !(1e-4..1e9).contains(&short.abs()) {
                let _ = write!(out, "{short:e}");
            } else {
                let _ = write!(out, "{short}");
            }
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// The outputs of a V2 inference response as a table: NAME, DATATYPE, SHAPE, DATA.
pub fn outputs_table(response: &Value) -> String {
    let rows: Vec<Vec<String>> = response["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let dims: Vec<usize> =
                o["shape"].as_array().into_iter().flatten().map(|d| d.as_u64().unwrap_or(0) as usize).collect();
            vec![
                str_of(o, "name").to_string(),
                str_of(o, "datatype").to_string(),
                shape(&o["shape"]),
                tensor_data(&dims, &o["data"]),
            ]
        })
        .collect();
    table(&["NAME", "DATATYPE", "SHAPE", "DATA"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_pads_all_but_the_last_column() {
        let rows = vec![vec!["add_sub".into(), "1".into(), "READY".into()], vec!["b".into(), "-".into(), "".into()]];
        assert_eq!(
            table(&["NAME", "VERSION", "STATE"], &rows),
            "NAME     VERSION  STATE\nadd_sub  1        READY\nb        -\n"
        );
    }

    #[test]
    fn small_tensors_are_shown_whole_and_nested() {
        assert_eq!(tensor_data(&[2, 3], &json!([1, 2, 3, 4, 5, 6])), "[[1, 2, 3], [4, 5, 6]]");
        assert_eq!(tensor_data(&[], &json!([7])), "7");
        assert_eq!(tensor_data(&[1, 1], &json!(["0.99:1:spam"])), r#"[["0.99:1:spam"]]"#);
        assert_eq!(tensor_data(&[2], &json!([[true], [false]])), "[true, false]");
        assert_eq!(tensor_data(&[0], &json!([])), "[]");
    }

    #[test]
    fn long_dimensions_keep_their_ends() {
        let data: Vec<i32> = (1..=16).collect();
        assert_eq!(tensor_data(&[1, 16], &json!(data)), "[[1, 2, 3, …, 14, 15, 16]]");
        let data: Vec<i32> = (0..80).collect();
        assert_eq!(
            tensor_data(&[8, 10], &json!(data)),
            "[[0, 1, 2, …, 7, 8, 9], [10, 11, 12, …, 17, 18, 19], [20, 21, 22, …, 27, 28, 29], …, \
             [50, 51, 52, …, 57, 58, 59], [60, 61, 62, …, 67, 68, 69], [70, 71, 72, …, 77, 78, 79]]"
        );
    }

    #[test]
    fn floats_are_cut_to_six_digits_and_a_bad_shape_shows_flat() {
        assert_eq!(tensor_data(&[3], &json!([0.10000000149011612, 1.5, -2.0])), "[0.1, 1.5, -2]");
        assert_eq!(tensor_data(&[1], &json!([123456789.0])), "[123457000]");
        assert_eq!(tensor_data(&[3], &json!([1.4592445e-8, 0.0, 2.5e12])), "[1.45924e-8, 0, 2.5e12]");
        assert_eq!(tensor_data(&[2, 2], &json!([1, 2, 3])), "[1, 2, 3]");
    }

    #[test]
    fn outputs_become_rows() {
        let resp = json!({"model_name": "m", "outputs": [
            {"name": "OUT", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.25]},
            {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}]});
        assert_eq!(
            outputs_table(&resp),
            "NAME   DATATYPE  SHAPE  DATA\nOUT    FP32      [1,2]  [[0.5, 0.25]]\nlabel  INT64     [1]    [1]\n"
        );
    }
}
