//! A minimal JSON value: enough to write the report and to read the peers' one-line results.

use std::fmt::Write as _;

/// A JSON value. Objects keep their keys in insertion order so the report reads top-down.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

/// Builds an object from `(key, value)` pairs.
pub fn obj<const N: usize>(pairs: [(&str, Json); N]) -> Json {
    Json::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

impl From<f64> for Json {
    fn from(v: f64) -> Json {
        Json::Num(v)
    }
}

impl From<u64> for Json {
    fn from(v: u64) -> Json {
        Json::Num(v as f64)
    }
}

impl From<usize> for Json {
    fn from(v: usize) -> Json {
        Json::Num(v as f64)
    }
}

impl From<bool> for Json {
    fn from(v: bool) -> Json {
        Json::Bool(v)
    }
}

impl From<&str> for Json {
    fn from(v: &str) -> Json {
        Json::Str(v.to_string())
    }
}

impl From<String> for Json {
    fn from(v: String) -> Json {
        Json::Str(v)
    }
}

impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Json {
        v.map_or(Json::Null, Into::into)
    }
}

impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(v: Vec<T>) -> Json {
        Json::Arr(v.into_iter().map(Into::into).collect())
    }
}

impl Json {
    /// Indented text, two spaces per level; arrays of scalars stay on one line.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    /// The number at `key` of an object.
    pub fn num(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// The value at `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn is_scalar(&self) -> bool {
        !matches!(self, Json::Arr(_) | Json::Obj(_))
    }

    fn write(&self, out: &mut String, level: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => write_num(out, *n),
            Json::Str(s) => write_str(out, s),
            Json::Arr(items) if items.iter().all(Json::is_scalar) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.write(out, level);
                }
                out.push(']');
            }
            Json::Arr(items) => {
                write_block(out, level, '[', ']', items.iter().map(|v| (None, v)));
            }
            Json::Obj(pairs) => {
                let items = pairs.iter().map(|(k, v)| (Some(k.as_str()), v));
                write_block(out, level, '{', '}', items);
            }
        }
    }
}

fn write_block<'a>(
    out: &mut String,
    level: usize,
    open: char,
    close: char,
    items: impl Iterator<Item = (Option<&'a str>, &'a Json)>,
) {
    out.push(open);
    let mut empty = true;
    for (i, (key, v)) in items.enumerate() {
        out.push_str(if i > 0 { ",\n" } else { "\n" });
        out.push_str(&"  ".repeat(level + 1));
        if let Some(k) = key {
            write_str(out, k);
            out.push_str(": ");
        }
        v.write(out, level + 1);
        empty = false;
    }
    if !empty {
        out.push('\n');
        out.push_str(&"  ".repeat(level));
    }
    out.push(close);
}

fn write_num(out: &mut String, n: f64) {
    if !n.is_finite() {
        out.push_str("null");
    } else if n.fract() == 0.0 && n.abs() < 1e15 {
        let _ = write!(out, "{}", n as i64);
    } else {
        let _ = write!(out, "{n}");
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses a JSON text (the peers' result line; the smoke test reads the report with it too).
pub fn parse(text: &str) -> Result<Json, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.value()?;
    match p.peek() {
        None => Ok(v),
        Some(_) => Err(p.error("trailing text")),
    }
}

/// Deepest nesting accepted (the report is 5 levels deep).
const DEPTH_MAX: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn error(&self, what: &str) -> String {
        format!("bad JSON at byte {}: {what}", self.i)
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {:?}", c as char)))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|_| self.error("not UTF-8")),
                b'\\' => self.escape(&mut out)?,
                c => out.push(c),
            }
        }
        Err(self.error("unterminated string"))
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let e = *self.s.get(self.i).ok_or_else(|| self.error("bad escape"))?;
        self.i += 1;
        let c = match e {
            b'n' => '\n',
            b't' => '\t',
            b'r' => '\r',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'u' => {
                let hex = self
                    .s
                    .get(self.i..self.i + 4)
                    .ok_or_else(|| self.error("bad \\u"))?;
                self.i += 4;
                let code = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .ok_or_else(|| self.error("bad \\u"))?;
                // Surrogate pairs never occur in what the bench reads.
                char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
            }
            other => other as char,
        };
        let mut buf = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }

    fn value(&mut self) -> Result<Json, String> {
        match self.peek() {
            Some(b'{') | Some(b'[') => {
                self.depth += 1;
                if self.depth > DEPTH_MAX {
                    return Err(self.error("nested too deep"));
                }
                let v = self.container();
                self.depth -= 1;
                v
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(_) => self.word(),
            None => Err(self.error("missing value")),
        }
    }

    fn container(&mut self) -> Result<Json, String> {
        let object = self.next() == Some(b'{');
        let close = if object { b'}' } else { b']' };
        let (mut pairs, mut items) = (Vec::new(), Vec::new());
        if self.peek() == Some(close) {
            self.i += 1;
        } else {
            loop {
                if object {
                    let key = self.string()?;
                    self.expect(b':')?;
                    pairs.push((key, self.value()?));
                } else {
                    items.push(self.value()?);
                }
                match self.next() {
                    Some(b',') => continue,
                    Some(c) if c == close => break,
                    _ => return Err(self.error("expected , or a closing bracket")),
                }
            }
        }
        Ok(if object {
            Json::Obj(pairs)
        } else {
            Json::Arr(items)
        })
    }

    fn word(&mut self) -> Result<Json, String> {
        let start = self.i;
        while self.i < self.s.len() && !b",}] \t\r\n".contains(&self.s[self.i]) {
            self.i += 1;
        }
        let word =
            std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.error("not UTF-8"))?;
        match word {
            "true" => Ok(Json::Bool(true)),
            "false" => Ok(Json::Bool(false)),
            "null" => Ok(Json::Null),
            w => w
                .parse::<f64>()
                .map(Json::Num)
                .map_err(|_| self.error(&format!("not a value: {w:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_peer_line() {
        let line = r#"{"system":"etcd","concurrency":64,"writes_per_s":7773.8,"p50_us":7479.4,"errors":0,"ok":true}"#;
        let v = parse(line).unwrap();
        assert_eq!(v.get("system"), Some(&Json::Str("etcd".into())));
        assert_eq!(v.num("concurrency"), Some(64.0));
        assert_eq!(v.num("writes_per_s"), Some(7773.8));
        assert_eq!(v.get("ok"), Some(&Json::Bool(true)));
        assert!(parse("{\"a\":1").is_err());
        assert!(parse("{\"a\":x}").is_err());
    }

    #[test]
    fn writes_what_it_reads() {
        let v = obj([
            ("s", "a\"b\n\u{1}".into()),
            ("n", 1.5.into()),
            ("i", 3u64.into()),
            ("none", Json::Null),
            ("nan", f64::NAN.into()),
        ]);
        let text = v.pretty();
        let back = parse(&text).unwrap();
        let nested = parse(&obj([("a", vec![obj([("b", 1u64.into())])].into())]).pretty()).unwrap();
        assert_eq!(
            nested.get("a"),
            Some(&Json::Arr(vec![obj([("b", 1u64.into())])]))
        );
        assert!(parse("[1, 2").is_err());
        assert_eq!(back.get("s"), Some(&Json::Str("a\"b\n\u{1}".into())));
        assert_eq!(back.num("n"), Some(1.5));
        assert_eq!(back.num("i"), Some(3.0));
        assert_eq!(back.get("nan"), Some(&Json::Null));
    }
}
