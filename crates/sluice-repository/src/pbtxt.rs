//! Protobuf text format, as Triton's `config.pbtxt` uses it, parsed into `serde_json::Value`.
//!
//! The parser knows no schema. A message becomes a JSON object; a field that appears more than
//! once, or is written with list syntax (`dims: [ -1, 16 ]`), becomes an array; a field that
//! appears once stays a single value (the lenient deserializers of
//! [`sluice_types::config`] accept a single value where a list is expected). Map fields are
//! repeated `{ key, value }` messages in text format, so they arrive as a list of
//! `{"key": .., "value": ..}` objects (or one such object when the map has one entry).
//! Bare identifiers become strings (`TYPE_FP32`, `KIND_GPU`), except `true`/`false`, which
//! become booleans.
//!
//! Errors carry the 1-based line and column (in characters) of the offending token.

use std::fmt;

use serde_json::{Map, Number, Value};

/// Messages nested deeper than this are refused (the parser recurses once per level).
pub const MAX_DEPTH: usize = 64;

/// A syntax error in a text-format document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbtxtError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for PbtxtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for PbtxtError {}

/// Parses a whole text-format document (the fields of the top-level message) into a JSON
/// object.
pub fn parse(text: &str) -> Result<Value, PbtxtError> {
    let toks = lex(text)?;
    let mut p = Parser { text, toks, i: 0 };
    let fields = p.fields(None, 0)?;
    Ok(Value::Object(fields))
}

// --- lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Str(String),
    Punct(char),
    Eof,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    /// Byte offset of the token's first character.
    pos: usize,
}

fn position(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    // `pos` is always a char boundary (tokens start at ASCII bytes, or at the end).
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn error_at(text: &str, pos: usize, message: impl Into<String>) -> PbtxtError {
    let (line, column) = position(text, pos);
    PbtxtError { line, column, message: message.into() }
}

fn lex(text: &str) -> Result<Vec<Token>, PbtxtError> {
    let b = text.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                toks.push(Token { tok: Tok::Ident(text[start..i].to_string()), pos: start });
            }
            b'0'..=b'9' => {
                let start = i;
                i = number_end(b, i);
                toks.push(Token { tok: Tok::Num(text[start..i].to_string()), pos: start });
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i;
                i = number_end(b, i);
                toks.push(Token { tok: Tok::Num(text[start..i].to_string()), pos: start });
            }
            b'"' | b'\'' => {
                let start = i;
                let (s, end) = lex_string(text, i)?;
                i = end;
                toks.push(Token { tok: Tok::Str(s), pos: start });
            }
            b'{' | b'}' | b'[' | b']' | b'<' | b'>' | b':' | b',' | b';' | b'-' | b'.' | b'/' => {
                toks.push(Token { tok: Tok::Punct(c as char), pos: i });
                i += 1;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(error_at(text, i, format!("unexpected character {ch:?}")));
            }
        }
    }
    toks.push(Token { tok: Tok::Eof, pos: text.len() });
    Ok(toks)
}

/// The end of a number token starting at `i`: letters, digits and dots, and a sign right
/// after the exponent of a decimal float.
fn number_end(b: &[u8], mut i: usize) -> usize {
    let start = i;
    let hex = b.len() > i + 1 && b[i] == b'0' && (b[i + 1] == b'x' || b[i + 1] == b'X');
    while i < b.len() {
        let c = b[i];
        let sign_after_exponent = (c == b'+' || c == b'-') && !hex && i > start && matches!(b[i - 1], b'e' | b'E');
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || sign_after_exponent {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// A quoted string starting at the quote at `start`; returns the unescaped text and the offset
/// after the closing quote.
fn lex_string(text: &str, start: usize) -> Result<(String, usize), PbtxtError> {
    let b = text.as_bytes();
    let quote = b[start];
    let mut out: Vec<u8> = Vec::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(error_at(text, start, format!("unterminated string: expected a closing {}", quote as char)));
        };
        match c {
            _ if c == quote => {
                i += 1;
                break;
            }
            b'\n' => {
                return Err(error_at(
                    text,
                    start,
                    format!("unterminated string: expected a closing {} before the end of the line", quote as char),
                ))
            }
            b'\\' => {
                let esc_pos = i;
                let Some(&e) = b.get(i + 1) else {
                    return Err(error_at(text, esc_pos, "unterminated escape sequence at end of input"));
                };
                i += 2;
                match e {
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'a' => out.push(0x07),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'v' => out.push(0x0b),
                    b'\\' | b'\'' | b'"' | b'?' => out.push(e),
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        let mut n = 1;
                        while n < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                            v = v * 8 + u32::from(b[i] - b'0');
                            i += 1;
                            n += 1;
                        }
                        let byte = u8::try_from(v).map_err(|_| {
                            error_at(text, esc_pos, format!("octal escape \\{v:o} is larger than \\377"))
                        })?;
                        out.push(byte);
                    }
                    b'x' | b'X' => {
                        let digits = hex_digits(b, i, 2);
                        if digits == 0 {
                            return Err(error_at(text, esc_pos, "expected hex digits after \\x"));
                        }
                        let v = u8::from_str_radix(&text[i..i + digits], 16).unwrap_or(0);
                        i += digits;
                        out.push(v);
                    }
                    b'u' | b'U' => {
                        let want = if e == b'u' { 4 } else { 8 };
                        if hex_digits(b, i, want) != want {
                            return Err(error_at(
                                text,
                                esc_pos,
                                format!("expected {want} hex digits after \\{}", e as char),
                            ));
                        }
                        let v = u32::from_str_radix(&text[i..i + want], 16).unwrap_or(u32::MAX);
                        let ch = char::from_u32(v).ok_or_else(|| {
                            error_at(
                                text,
                                esc_pos,
                                format!("\\{}{:0want$x} is not a Unicode scalar value", e as char, v),
                            )
                        })?;
                        i += want;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => {
                        let ch = text[i - 1..].chars().next().unwrap_or('?');
                        return Err(error_at(text, esc_pos, format!("unknown escape sequence \\{ch}")));
                    }
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Ok((s, i)),
        Err(_) => Err(error_at(text, start, "string is not valid UTF-8 after unescaping")),
    }
}

fn hex_digits(b: &[u8], i: usize, max: usize) -> usize {
    b[i.min(b.len())..].iter().take(max).take_while(|c| c.is_ascii_hexdigit()).count()
}

// --- parser

struct Parser<'a> {
    text: &'a str,
    toks: Vec<Token>,
    i: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("identifier `{s}`"),
        Tok::Num(s) => format!("number {s}"),
        Tok::Str(s) => {
            let short: String = s.chars().take(40).collect();
            format!("string {short:?}")
        }
        Tok::Punct(c) => format!("'{c}'"),
        Tok::Eof => "end of input".to_string(),
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].tok
    }

    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].pos
    }

    fn bump(&mut self) -> Token {
        let t = self.toks[self.i.min(self.toks.len() - 1)].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn is_punct(&self, c: char) -> bool {
        *self.peek() == Tok::Punct(c)
    }

    /// An error at the current token: "expected {what}, found {token}".
    fn expected(&self, what: &str) -> PbtxtError {
        error_at(self.text, self.pos(), format!("expected {what}, found {}", describe(self.peek())))
    }

    /// The fields of a message up to `close` (or the end of input at the top level).
    fn fields(&mut self, close: Option<char>, depth: usize) -> Result<Map<String, Value>, PbtxtError> {
        let mut map = Map::new();
        loop {
            let name = match self.peek().clone() {
                Tok::Eof if close.is_none() => break,
                Tok::Punct(c) if Some(c) == close => {
                    self.bump();
                    break;
                }
                Tok::Ident(name) => {
                    self.bump();
                    name
                }
                Tok::Punct('[') => self.extension_name()?,
                _ => {
                    return Err(match close {
                        Some(c) => self.expected(&format!("a field name or '{c}'")),
                        None => self.expected("a field name"),
                    })
                }
            };
            let value = self.field_value(&name, depth)?;
            insert(&mut map, name, value);
            if self.is_punct(',') || self.is_punct(';') {
                self.bump();
            }
        }
        Ok(map)
    }

    /// `[some.extension]` or `[type.googleapis.com/pkg.Type]`, kept as written.
    fn extension_name(&mut self) -> Result<String, PbtxtError> {
        self.bump(); // '['
        let mut name = String::new();
        loop {
            match self.peek().clone() {
                Tok::Ident(s) => name.push_str(&s),
                Tok::Punct(c @ ('.' | '/')) => name.push(c),
                Tok::Punct(']') if !name.is_empty() => {
                    self.bump();
                    return Ok(format!("[{name}]"));
                }
                _ => return Err(self.expected("an extension name and ']'")),
            }
            self.bump();
        }
    }

    fn field_value(&mut self, name: &str, depth: usize) -> Result<Value, PbtxtError> {
        let colon = self.is_punct(':');
        if colon {
            self.bump();
        }
        match self.peek() {
            Tok::Punct('{' | '<') => self.message(depth),
            Tok::Punct('[') => self.list(name, depth),
            _ if colon => self.scalar(name),
            _ => Err(self.expected(&format!("':', '{{' or '[' after field name `{name}`"))),
        }
    }

    fn message(&mut self, depth: usize) -> Result<Value, PbtxtError> {
        if depth >= MAX_DEPTH {
            return Err(error_at(
                self.text,
                self.pos(),
                format!("messages are nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        let close = match self.bump().tok {
            Tok::Punct('<') => '>',
            _ => '}',
        };
        Ok(Value::Object(self.fields(Some(close), depth + 1)?))
    }

    fn list(&mut self, name: &str, depth: usize) -> Result<Value, PbtxtError> {
        self.bump(); // '['
        let mut items = Vec::new();
        if self.is_punct(']') {
            self.bump();
            return Ok(Value::Array(items));
        }
        loop {
            let item = match self.peek() {
                Tok::Punct('{' | '<') => self.message(depth)?,
                _ => self.scalar(name)?,
            };
            items.push(item);
            match self.peek() {
                Tok::Punct(',') => {
                    self.bump();
                    // Tolerate a trailing comma.
                    if self.is_punct(']') {
                        self.bump();
                        break;
                    }
                }
                Tok::Punct(']') => {
                    self.bump();
                    break;
                }
                _ => return Err(self.expected(&format!("',' or ']' in the list of field `{name}`"))),
            }
        }
        Ok(Value::Array(items))
    }

    fn scalar(&mut self, name: &str) -> Result<Value, PbtxtError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Punct('-') => {
                self.bump();
                match self.peek().clone() {
                    Tok::Num(s) => {
                        self.bump();
                        number(&s, true).map_err(|m| error_at(self.text, pos, m))
                    }
                    Tok::Ident(s) if is_special_float(&s) => {
                        self.bump();
                        Ok(Value::String(format!("-{}", s.to_ascii_lowercase())))
                    }
                    _ => Err(self.expected(&format!("a number after '-' for field `{name}`"))),
                }
            }
            Tok::Num(s) => {
                self.bump();
                number(&s, false).map_err(|m| error_at(self.text, pos, m))
            }
            Tok::Str(s) => {
                self.bump();
                let mut s = s;
                // Adjacent string literals concatenate, as in C.
                while let Tok::Str(more) = self.peek() {
                    s.push_str(more);
                    self.bump();
                }
                Ok(Value::String(s))
            }
            Tok::Ident(s) => {
                self.bump();
                Ok(match s.as_str() {
                    "true" | "True" => Value::Bool(true),
                    "false" | "False" => Value::Bool(false),
                    _ => Value::String(s),
                })
            }
            _ => Err(self.expected(&format!("a value for field `{name}`"))),
        }
    }
}

fn is_special_float(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "inf" | "infinity" | "nan")
}

/// A field's value goes in once; a repeated field (or a list) accumulates into an array.
fn insert(map: &mut Map<String, Value>, key: String, value: Value) {
    match map.get_mut(&key) {
        None => {
            map.insert(key, value);
        }
        Some(existing) => {
            // Text format has no nested lists, so an existing array is always this field's
            // accumulated elements.
            let mut items = match existing.take() {
                Value::Array(items) => items,
                single => vec![single],
            };
            match value {
                Value::Array(more) => items.extend(more),
                one => items.push(one),
            }
            *existing = Value::Array(items);
        }
    }
}

/// A numeric literal: decimal, hex (`0x1F`), octal (`017`), or float (`1.5`, `2e-3`, `1.5f`).
fn number(s: &str, negative: bool) -> Result<Value, String> {
    let lower = s.to_ascii_lowercase();
    let bad = || format!("invalid number {s}");
    let magnitude: u64 = if let Some(hex) = lower.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).map_err(|_| bad())?
    } else if lower.contains(['.', 'e']) || lower.ends_with('f') {
        let body = lower.strip_suffix('f').unwrap_or(&lower);
        let f: f64 = body.parse().map_err(|_| bad())?;
        let f = if negative { -f } else { f };
        return Number::from_f64(f).map(Value::Number).ok_or_else(|| format!("number {s} is out of range"));
    } else if lower.len() > 1 && lower.starts_with('0') {
        u64::from_str_radix(&lower[1..], 8).map_err(|_| format!("invalid octal number {s}"))?
    } else {
        lower.parse().map_err(|_| {
            if lower.bytes().all(|c| c.is_ascii_digit()) {
                format!("integer {s} is out of range")
            } else {
                bad()
            }
        })?
    };
    if !negative {
        return Ok(Value::Number(magnitude.into()));
    }
    if magnitude <= i64::MAX as u64 {
        Ok(Value::Number((-(magnitude as i64)).into()))
    } else if magnitude == i64::MAX as u64 + 1 {
        Ok(Value::Number(i64::MIN.into()))
    } else {
        Err(format!("integer -{s} is out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_types::config::ModelConfig;

    fn cfg(text: &str) -> ModelConfig {
        let v = parse(text).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) const ADD_SUB: &str = r#"
name: "add_sub"
backend: "python"
max_batch_size: 8

input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]

instance_group [{ kind: KIND_CPU }]
"#;

    const ENSEMBLE: &str = r#"
name: "ensemble_model"
platform: "ensemble"
max_batch_size: 1
input [
  {
    name: "IN"
    data_type: TYPE_STRING
    dims: [ -1 ]
  }
]
output [
  {
    name: "OUT"
    data_type: TYPE_FP32
    dims: [ -1, 16 ]
  }
]
ensemble_scheduling {
  step [
    {
      model_name: "preprocess"
      model_version: -1
      input_map {
        key: "PRE_IN"
        value: "IN"
      }
      output_map {
        key: "PRE_OUT"
        value: "preprocessed"
      }
    },
    {
      model_name: "classifier"
      model_version: -1
      input_map { key: "X" value: "preprocessed" }
      input_map { key: "Y" value: "IN" }
      output_map { key: "PROB" value: "OUT" }
    }
  ]
}
"#;

    #[test]
    fn add_sub() {
        let c = cfg(ADD_SUB);
        assert_eq!(c.name, "add_sub");
        assert_eq!(c.backend, "python");
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input.len(), 2);
        assert_eq!(c.input[1].name, "INPUT1");
        assert_eq!(c.input[1].data_type, "TYPE_FP32");
        assert_eq!(c.input[1].dims, vec![4]);
        assert_eq!(c.output[0].name, "OUTPUT0");
        assert_eq!(c.instance_group[0].kind, "KIND_CPU");
    }

    #[test]
    fn ensemble() {
        let v = parse(ENSEMBLE).unwrap();
        let steps = &v["ensemble_scheduling"]["step"];
        assert_eq!(steps.as_array().unwrap().len(), 2);
        assert_eq!(steps[0]["model_version"], json!(-1));
        assert_eq!(steps[0]["input_map"], json!({"key": "PRE_IN", "value": "IN"}));
        assert_eq!(steps[1]["input_map"], json!([{"key": "X", "value": "preprocessed"}, {"key": "Y", "value": "IN"}]));
        let c = cfg(ENSEMBLE);
        assert_eq!(c.platform, "ensemble");
        assert_eq!(c.output[0].dims, vec![-1, 16]);
        assert_eq!(c.input[0].data_type, "TYPE_STRING");
        assert!(c.ensemble_scheduling.is_some());
    }

    #[test]
    fn dynamic_batching_with_priorities() {
        let c = cfg(r#"
            name: "m"
            max_batch_size: 16
            input { name: "x" data_type: TYPE_INT64 dims: 1 }
            dynamic_batching {
              preferred_batch_size: [ 4, 8 ]
              max_queue_delay_microseconds: 100
              preserve_ordering: true
              priority_levels: 2
              default_priority_level: 2
              default_queue_policy {
                timeout_action: REJECT
                default_timeout_microseconds: 1000
                allow_timeout_override: false
                max_queue_size: 10
              }
              priority_queue_policy {
                key: 1
                value: {
                  timeout_action: DELAY
                  default_timeout_microseconds: 500
                  allow_timeout_override: true
                  max_queue_size: 4
                }
              }
              priority_queue_policy [
                { key: 2 value: { max_queue_size: 8 } }
              ]
            }
        "#);
        let d = c.dynamic_batching.unwrap();
        assert_eq!(d.preferred_batch_size, vec![4, 8]);
        assert_eq!(d.max_queue_delay_microseconds, 100);
        assert!(d.preserve_ordering);
        assert_eq!(d.priority_levels, 2);
        let q = d.default_queue_policy.unwrap();
        assert_eq!(q.timeout_action, "REJECT");
        assert_eq!(q.max_queue_size, 10);
        assert_eq!(d.priority_queue_policy.len(), 2);
        let p1 = &d.priority_queue_policy["1"];
        assert_eq!(p1.timeout_action, "DELAY");
        assert!(p1.allow_timeout_override);
        assert_eq!(p1.default_timeout_microseconds, 500);
        assert_eq!(d.priority_queue_policy["2"].max_queue_size, 8);
        assert_eq!(c.input[0].dims, vec![1]);
    }

    #[test]
    fn instance_groups_version_policy_reshape() {
        let c = cfg(r#"
            name: "resnet"
            platform: "onnxruntime_onnx"
            max_batch_size: 0
            version_policy: { specific { versions: [1, 3] } }
            instance_group [
              { name: "gpu_group" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] },
              { count: 1, kind: KIND_CPU }
            ]
            input [
              { name: "data" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] }
            ]
            output [
              { name: "prob" data_type: TYPE_FP32 dims: [ 1000, 1, 1 ] reshape: { shape: [ 1, 1000 ] } label_filename: "labels.txt" },
              { name: "scalar" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } }
            ]
            parameters { key: "x" value: { string_value: "y" } }
            parameters: { key: "threads" value: { string_value: "4" } }
        "#);
        assert_eq!(c.version_policy.specific.as_ref().unwrap().versions, vec![1, 3]);
        assert_eq!(c.version_policy.select(&[1, 2, 3]), vec![1, 3]);
        assert_eq!(c.instance_group.len(), 2);
        assert_eq!(c.instance_group[0].gpus, vec![0, 1]);
        assert_eq!(c.instance_group[0].count, 2);
        assert_eq!(c.instance_group[0].name, "gpu_group");
        assert_eq!(c.instance_count(), 3);
        assert_eq!(c.output[0].reshape.as_ref().unwrap().shape, vec![1, 1000]);
        assert_eq!(c.output[0].label_filename, "labels.txt");
        assert_eq!(c.output[1].reshape.as_ref().unwrap().shape, Vec::<i64>::new());
        assert_eq!(c.parameter("x"), Some("y"));
        assert_eq!(c.parameter("threads"), Some("4"));
        let v = parse("reshape: { shape: [ ] }").unwrap();
        assert_eq!(v, json!({"reshape": {"shape": []}}));
    }

    #[test]
    fn version_policies() {
        let c = cfg("version_policy: { latest { num_versions: 2 } }");
        assert_eq!(c.version_policy.latest.unwrap().num_versions, 2);
        let c = cfg("version_policy: { all { } }");
        assert!(c.version_policy.all.is_some());
    }

    #[test]
    fn model_warmup_with_inputs_map() {
        let text = r#"
            name: "m"
            max_batch_size: 8
            model_warmup [
              {
                name: "sample"
                batch_size: 8
                inputs {
                  key: "INPUT0"
                  value: {
                    data_type: TYPE_FP32
                    dims: [ 4 ]
                    zero_data: true
                  }
                }
                inputs {
                  key: "INPUT1"
                  value: { data_type: TYPE_FP32 dims: [ 4 ] random_data: true }
                }
              }
            ]
        "#;
        let v = parse(text).unwrap();
        let inputs = &v["model_warmup"][0]["inputs"];
        assert_eq!(inputs[0]["key"], "INPUT0");
        assert_eq!(inputs[0]["value"]["zero_data"], true);
        assert_eq!(inputs[1]["value"]["dims"], json!([4]));
        let c = cfg(text);
        assert_eq!(c.model_warmup.len(), 1);
        assert_eq!(c.model_warmup[0]["batch_size"], 8);
    }

    #[test]
    fn scalars() {
        let v = parse(
            r#"a: -3 b: 2.5 c: -1e-3 d: 0x1F e: 017 f: 1.5f g: .5 h: "x\n\t\"y\"" i: 'it\'s'
               j: TYPE_FP32 k: true l: false m: "caf\u00e9 \x41\101" n: "ab" 'cd' o: -inf p: 0
               q: 18446744073709551615 r: -9223372036854775808 s: "\U0001F600""#,
        )
        .unwrap();
        assert_eq!(v["a"], json!(-3));
        assert_eq!(v["b"], json!(2.5));
        assert_eq!(v["c"], json!(-0.001));
        assert_eq!(v["d"], json!(31));
        assert_eq!(v["e"], json!(15));
        assert_eq!(v["f"], json!(1.5));
        assert_eq!(v["g"], json!(0.5));
        assert_eq!(v["h"], json!("x\n\t\"y\""));
        assert_eq!(v["i"], json!("it's"));
        assert_eq!(v["j"], json!("TYPE_FP32"));
        assert_eq!(v["k"], json!(true));
        assert_eq!(v["l"], json!(false));
        assert_eq!(v["m"], json!("café AA"));
        assert_eq!(v["n"], json!("abcd"));
        assert_eq!(v["o"], json!("-inf"));
        assert_eq!(v["p"], json!(0));
        assert_eq!(v["q"], json!(u64::MAX));
        assert_eq!(v["r"], json!(i64::MIN));
        assert_eq!(v["s"], json!("😀"));
    }

    #[test]
    fn syntax_variants() {
        // Comments, angle brackets, separators, `field: {`, repeated scalars, extension names.
        let v = parse(
            "# leading comment\n\
             m < a: 1; b: 2, > # trailing\n\
             n: { x: [1, 2,] }\n\
             r: 1 r: 2 r: [3, 4]\n\
             l [ <k: 1>, {k: 2} ]\n\
             [ext.name/x]: 5\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "m": {"a": 1, "b": 2},
                "n": {"x": [1, 2]},
                "r": [1, 2, 3, 4],
                "l": [{"k": 1}, {"k": 2}],
                "[ext.name/x]": 5,
            })
        );
        assert_eq!(parse("").unwrap(), json!({}));
        assert_eq!(parse("  # only a comment").unwrap(), json!({}));
    }

    fn err(text: &str) -> PbtxtError {
        match parse(text) {
            Ok(v) => panic!("expected an error for {text:?}, got {v}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_have_positions() {
        let e = err("name: \"m\"\nmax_batch_size 8\n");
        assert_eq!((e.line, e.column), (2, 16));
        assert!(e.message.contains("expected ':', '{' or '['"), "{e}");
        assert!(e.message.contains("max_batch_size"), "{e}");
        assert!(e.message.contains("number 8"), "{e}");

        let e = err("input {\n  name: \"x\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("expected a field name or '}'"), "{e}");
        assert!(e.message.contains("end of input"), "{e}");

        let e = err("dims: [1 2]");
        assert_eq!((e.line, e.column), (1, 10));
        assert!(e.message.contains("',' or ']'"), "{e}");

        let e = err("a: }");
        assert_eq!((e.line, e.column), (1, 4));
        assert!(e.message.contains("expected a value for field `a`"), "{e}");

        let e = err("a: \"abc\nb: 1");
        assert_eq!((e.line, e.column), (1, 4));
        assert!(e.message.contains("unterminated string"), "{e}");

        let e = err("é: 1");
        assert_eq!((e.line, e.column), (1, 1));
        assert!(e.message.contains("unexpected character"), "{e}");

        let e = err("x: \"é\" y: @");
        assert_eq!((e.line, e.column), (1, 11));

        let e = err("a: \"\\q\"");
        assert!(e.message.contains("unknown escape"), "{e}");
        let e = err("a: 09");
        assert!(e.message.contains("octal"), "{e}");
        let e = err("a: 99999999999999999999");
        assert!(e.message.contains("out of range"), "{e}");
        let e = err("a: 1 }");
        assert!(e.message.contains("expected a field name"), "{e}");
        let e = err("a: - b");
        assert!(e.message.contains("after '-'"), "{e}");
        let e = err("a: {\n b: 1 >");
        assert_eq!((e.line, e.column), (2, 7));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "a {".repeat(100_000);
        let e = err(&deep);
        assert!(e.message.contains("nested"), "{e}");
        let ok = format!("{}{}", "a {".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        parse(&ok).unwrap();
    }

    /// A tiny xorshift generator: deterministic, no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn never_panics_on_garbage_or_truncation() {
        // Every prefix of real configs.
        for text in [ADD_SUB, ENSEMBLE] {
            for (i, _) in text.char_indices() {
                let _ = parse(&text[..i]);
            }
        }
        // Random soups of syntax characters and random bytes.
        let alphabet = b"{}[]<>:,;-+./#\"'\\\n \tabexfuU0179_\x00\xc3\xa9\xff";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (rng.next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = rng.next();
                    if r.is_multiple_of(8) {
                        (r >> 8) as u8
                    } else {
                        alphabet[((r >> 8) % alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(v) = parse(&text) {
                assert!(v.is_object());
            }
        }
        // Random mutations of a real config.
        for _ in 0..5_000 {
            let mut bytes = ADD_SUB.as_bytes().to_vec();
            for _ in 0..3 {
                let at = (rng.next() % bytes.len() as u64) as usize;
                bytes[at] = alphabet[(rng.next() % alphabet.len() as u64) as usize];
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text);
        }
    }
}
