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
mod tests;
