//! A minimal JSON writer for the documented text outputs (`kvr_members`, `kvr_stats`).

use std::fmt::Write;

/// Builds one JSON value into a string.
#[derive(Default)]
pub struct Json {
    out: String,
    /// Per open container: whether an element was written (so the next needs a comma).
    need_comma: Vec<bool>,
    after_key: bool,
}

impl Json {
    /// An empty writer.
    pub fn new() -> Json {
        Json::default()
    }

    fn sep(&mut self) {
        if std::mem::take(&mut self.after_key) {
            return;
        }
        if let Some(c) = self.need_comma.last_mut() {
            if *c {
                self.out.push(',');
            }
            *c = true;
        }
    }

    /// Opens an object (as a value, or after `key`).
    pub fn begin_object(&mut self) -> &mut Self {
        self.sep();
        self.out.push('{');
        self.need_comma.push(false);
        self
    }

    /// Closes the innermost object.
    pub fn end_object(&mut self) -> &mut Self {
        self.need_comma.pop();
        self.out.push('}');
        self
    }

    /// Opens an array.
    pub fn begin_array(&mut self) -> &mut Self {
        self.sep();
        self.out.push('[');
        self.need_comma.push(false);
        self
    }

    /// Closes the innermost array.
    pub fn end_array(&mut self) -> &mut Self {
        self.need_comma.pop();
        self.out.push(']');
        self
    }

    /// Writes a key; the next call writes its value.
    pub fn key(&mut self, k: &str) -> &mut Self {
        self.sep();
        string(&mut self.out, k);
        self.out.push(':');
        self.after_key = true;
        self
    }

    /// Writes a string value.
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.sep();
        string(&mut self.out, v);
        self
    }

    /// Writes an unsigned number.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.sep();
        let _ = write!(self.out, "{v}");
        self
    }

    /// Writes a float (finite; NaN and infinities are written as 0).
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.sep();
        let v = if v.is_finite() { v } else { 0.0 };
        let _ = write!(self.out, "{v:.3}");
        self
    }

    /// Writes `null`.
    pub fn null(&mut self) -> &mut Self {
        self.sep();
        self.out.push_str("null");
        self
    }

    /// Writes a boolean.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.sep();
        self.out.push_str(if v { "true" } else { "false" });
        self
    }

    /// `"key": "value"`.
    pub fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k).str(v)
    }

    /// `"key": number`.
    pub fn kv_u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k).u64(v)
    }

    /// The JSON text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn string(out: &mut String, s: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_values() {
        let mut j = Json::new();
        j.begin_object()
            .kv_u64("a", 1)
            .kv_str("b", "x\"y\n")
            .key("c")
            .begin_array();
        j.begin_object().kv_u64("id", 2).end_object();
        j.begin_object()
            .key("ok")
            .bool(true)
            .key("r")
            .f64(1.5)
            .end_object();
        j.end_array().end_object();
        assert_eq!(
            j.finish(),
            r#"{"a":1,"b":"x\"y\n","c":[{"id":2},{"ok":true,"r":1.500}]}"#
        );
    }
}
