//! JSON text the way the firmware writes it: by hand, with `EscapeJSONString`.

use alloc::string::String;
use alloc::vec::Vec;

/// A value of [`parse_object`]'s object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string, unescaped.
    Str(String),
    /// A number, `true` or `false`, as written.
    Raw(String),
    Null,
    Array(Vec<Value>),
    /// An object's members, in order (the rules walk `#` paths into them).
    Object(Vec<(String, Value)>),
}

impl Value {
    /// `JsonParserToken::getStr()`: a string's text, a number or boolean as written, and
    /// "" for null, arrays and objects.
    pub fn text(&self) -> &str {
        match self {
            Value::Str(s) | Value::Raw(s) => s,
            _ => "",
        }
    }
}

/// How deep arrays and objects may nest before the text counts as not JSON (the
/// firmware's parser has a fixed token budget; this keeps the recursion bounded).
const MAX_DEPTH: usize = 32;

/// Parses `text` as one JSON object (what `JsonParser::getRootObject` accepts) and
/// returns its members in order, or `None` when it is not a JSON object.
pub fn parse_object(text: &str) -> Option<Vec<(String, Value)>> {
    let mut p = Parser { b: text.as_bytes(), i: 0 };
    p.ws();
    let members = p.object(0)?;
    p.ws();
    (p.i == p.b.len()).then_some(members)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            return true;
        }
        false
    }

    fn object(&mut self, depth: usize) -> Option<Vec<(String, Value)>> {
        if depth > MAX_DEPTH || !self.eat(b'{') {
            return None;
        }
        let mut out = Vec::new();
        if self.eat(b'}') {
            return Some(out);
        }
        loop {
            self.ws();
            let key = self.string()?;
            if !self.eat(b':') {
                return None;
            }
            let value = self.value(depth + 1)?;
            out.push((key, value));
            if self.eat(b'}') {
                return Some(out);
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => self.string().map(Value::Str),
            b'{' => self.object(depth).map(Value::Object),
            b'[' => {
                if depth > MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Value::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            _ => {
                let start = self.i;
                while self.b.get(self.i).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.')) {
                    self.i += 1;
                }
                let raw = core::str::from_utf8(&self.b[start..self.i]).ok()?;
                match raw {
                    "" => None,
                    "null" => Some(Value::Null),
                    "true" | "false" => Some(Value::Raw(String::from(raw))),
                    _ if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                        Some(Value::Raw(String::from(raw)))
                    }
                    _ => None,
                }
            }
        }
    }

    /// A string at the cursor, unescaped (`\uXXXX` kept as written).
    fn string(&mut self) -> Option<String> {
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.b.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => out.extend_from_slice(b"\\u"),
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

/// `EscapeJSONString`: backslash-escapes `"`, `\`, newline, tab, carriage return, form
/// feed and backspace. Other control characters pass through unchanged, as on the device.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{0c}' => out.push_str("\\f"),
            '\u{08}' => out.push_str("\\b"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{parse_object, Value};

    #[test]
    fn parses_objects_and_refuses_the_rest() {
        let m = parse_object(r#"{"a":"x\"y","b":[1,true],"c":null,"d":{"e":1}}"#).unwrap();
        assert_eq!(m[0], ("a".into(), Value::Str("x\"y".into())));
        assert_eq!(m[1].1, Value::Array(alloc::vec![Value::Raw("1".into()), Value::Raw("true".into())]));
        assert_eq!(m[2].1.text(), "");
        assert_eq!(m[3].1, Value::Object(alloc::vec![("e".into(), Value::Raw("1".into()))]));
        for bad in ["", "[1]", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{} x", "abc", "{\"a\":x}"] {
            assert_eq!(parse_object(bad), None, "{bad}");
        }
        let deep = alloc::format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(parse_object(&deep), None);
    }

    #[test]
    fn escapes_like_the_firmware() {
        assert_eq!(super::escape("a\"b\\c\n\x01"), "a\\\"b\\\\c\\n\x01");
    }
}
