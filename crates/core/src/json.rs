//! JSON text the way the firmware writes it: by hand, with `EscapeJSONString`.

use alloc::string::String;

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
    #[test]
    fn escapes_like_the_firmware() {
        assert_eq!(super::escape("a\"b\\c\n\x01"), "a\\\"b\\\\c\\n\x01");
    }
}
