//! The command grammar (spec §3): how a typed line or an MQTT topic and payload become a
//! command name, an index and data (`ExecuteCommand`, `CommandHandler`, `GetStateNumber`,
//! `Shortcut` in the firmware).

use alloc::string::String;

/// `ExecuteCommand`: splits a typed line into its command token and the rest.
///
/// Leading spaces are skipped; the token is the longest run of letters, digits, `_` and
/// `/`, and every `/` restarts it, so `cmnd/x/Power on` names `Power`. Returns `None`
/// when there is no token (the firmware then does nothing at all).
pub fn split_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start_matches(is_c_space);
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '/')).unwrap_or(rest.len());
    let token = &rest[..end];
    let start = token.rfind('/').map_or(0, |i| i + 1);
    let name = &token[start..];
    if name.is_empty() {
        return None;
    }
    Some((name, &rest[end..]))
}

/// C `isspace`.
pub fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r')
}

/// A command as `CommandHandler` sees it after parsing (the `XdrvMailbox`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The command name uppercased, without its index digits or leading `_`
    /// (`type` in the firmware; also the subtopic used with SetOption4).
    pub name: String,
    /// The trailing number of the name; 1 when there is none.
    pub index: u32,
    /// Whether the name carried an index (`usridx`).
    pub usridx: bool,
    /// A leading `_` suppresses the MQTT response.
    pub no_response: bool,
    /// The data, leading white space removed (kept as is for binary data, index > 299).
    pub data: String,
    /// Length of the data; 0 for a query (`?` counts as empty).
    pub data_len: usize,
    /// The data as a number (`strtol` base 0, or a state word); -99 when not numeric.
    pub payload: i32,
}

/// The payload value of data that is neither a number nor a state word.
pub const NO_PAYLOAD: i32 = -99;

/// `CommandHandler`'s parsing of a command name (the last topic segment) and its data.
pub fn parse(name: &str, data: &str) -> Parsed {
    let upper = name.to_ascii_uppercase();
    let digits_at = upper.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (mut stem, digits) = upper.split_at(digits_at);
    let (index, usridx) = if digits.is_empty() { (1, false) } else { (atoi_u32(digits), true) };
    let mut no_response = false;
    if stem.len() > 1 && stem.starts_with('_') {
        stem = &stem[1..];
        no_response = true;
    }
    let binary = index > 299;
    let data = if binary { data } else { data.trim_start_matches(is_c_space) };
    let mut data_len = data.len();
    let mut payload = NO_PAYLOAD;
    if !binary {
        if data == "?" {
            data_len = 0;
        }
        payload = strtol(data).unwrap_or(NO_PAYLOAD);
        if let Some(state) = state_number(data) {
            payload = state;
        }
    }
    Parsed { name: String::from(stem), index, usridx, no_response, data: String::from(data), data_len, payload }
}

/// `atoi` of a run of digits on a 32-bit device, saturating at `INT_MAX`.
fn atoi_u32(digits: &str) -> u32 {
    digits.bytes().fold(0u32, |n, d| n.saturating_mul(10).saturating_add(u32::from(d - b'0'))).min(i32::MAX as u32)
}

/// C `strtol(s, &end, 0)` with a 32-bit `long`: optional sign, `0x` hex, leading-zero
/// octal, else decimal; clamps on overflow. `None` when no digit was read.
pub fn strtol(s: &str) -> Option<i32> {
    let s = s.trim_start_matches(is_c_space);
    let b = s.as_bytes();
    let mut i = 0;
    let negative = match b.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let mut radix = 10;
    if b.get(i) == Some(&b'0') {
        if matches!(b.get(i + 1), Some(b'x' | b'X')) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit) {
            radix = 16;
            i += 2;
        } else {
            radix = 8;
        }
    }
    let mut value: i64 = 0;
    let mut any = false;
    while let Some(d) = b.get(i).and_then(|c| (*c as char).to_digit(radix)) {
        any = true;
        value = (value * i64::from(radix) + i64::from(d)).min(1 << 32);
        i += 1;
    }
    if !any {
        return None;
    }
    let value = if negative { -value } else { value };
    Some(value.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
}

/// `GetStateNumber`: the whole data, case-insensitively, as a state word.
pub fn state_number(data: &str) -> Option<i32> {
    const WORDS: &[(&str, i32)] = &[
        ("OFF", 0),
        ("FALSE", 0),
        ("STOP", 0),
        ("CELSIUS", 0),
        ("DOWN", 0),
        ("CLOSE", 0),
        ("ON", 1),
        ("TRUE", 1),
        ("START", 1),
        ("FAHRENHEIT", 1),
        ("USER", 1),
        ("TOGGLE", 2),
        ("ADMIN", 2),
        ("BLINK", 3),
        ("BLINKOFF", 4),
        ("UP", 100),
        ("OPEN", 100),
        ("ALL", 255),
    ];
    WORDS.iter().find(|(w, _)| w.eq_ignore_ascii_case(data)).map(|(_, n)| *n)
}

/// What a one-character value means for a string setting (`Shortcut()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortcut {
    /// `0` or `"`: set to empty.
    Clear,
    /// `1`: the firmware default.
    Default,
    /// `2`: the user value some commands know.
    User,
    /// Anything else: the value is taken literally.
    None,
}

/// `Shortcut()` of a command's data.
pub fn shortcut(data: &str) -> Shortcut {
    match data.as_bytes() {
        [b'0'] | [b'"'] => Shortcut::Clear,
        [b'1'] => Shortcut::Default,
        [b'2'] => Shortcut::User,
        _ => Shortcut::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_like_execute_command() {
        assert_eq!(split_line("  Power on"), Some(("Power", " on")));
        assert_eq!(split_line("cmnd/x/Power1 on"), Some(("Power1", " on")));
        assert_eq!(split_line("var1=1"), Some(("var1", "=1")));
        assert_eq!(split_line("Status"), Some(("Status", "")));
        assert_eq!(split_line(""), None);
        assert_eq!(split_line("   "), None);
        assert_eq!(split_line("!!"), None);
        assert_eq!(split_line("cmnd/"), None);
    }

    #[test]
    fn parses_index_and_prefix() {
        let p = parse("SetOption103", " 1");
        assert_eq!((p.name.as_str(), p.index, p.usridx, p.payload), ("SETOPTION", 103, true, 1));
        let p = parse("power0", "toggle");
        assert_eq!((p.name.as_str(), p.index, p.payload), ("POWER", 0, 2));
        let p = parse("_Power", "");
        assert_eq!((p.name.as_str(), p.no_response, p.index, p.usridx), ("POWER", true, 1, false));
        let p = parse("_", "");
        assert_eq!((p.name.as_str(), p.no_response), ("_", false));
        let p = parse("MqttHost", "?");
        assert_eq!((p.data.as_str(), p.data_len, p.payload), ("?", 0, NO_PAYLOAD));
        let p = parse("Power99999999999", "");
        assert_eq!(p.index, i32::MAX as u32);
    }

    #[test]
    fn strtol_matches_c() {
        assert_eq!(strtol("443"), Some(443));
        assert_eq!(strtol("0x1F"), Some(31));
        assert_eq!(strtol("010"), Some(8));
        assert_eq!(strtol("08"), Some(0));
        assert_eq!(strtol("0x"), Some(0));
        assert_eq!(strtol("-1"), Some(-1));
        assert_eq!(strtol("12abc"), Some(12));
        assert_eq!(strtol("abc"), None);
        assert_eq!(strtol("-"), None);
        assert_eq!(strtol("99999999999"), Some(i32::MAX));
        assert_eq!(strtol("-99999999999"), Some(i32::MIN));
    }

    #[test]
    fn state_words_override_numbers() {
        assert_eq!(parse("Power", "On").payload, 1);
        assert_eq!(parse("Power", "blinkoff").payload, 4);
        assert_eq!(parse("Power", "ON ").payload, NO_PAYLOAD);
        assert_eq!(parse("x", "all").payload, 255);
    }

    #[test]
    fn shortcuts() {
        assert_eq!(shortcut("0"), Shortcut::Clear);
        assert_eq!(shortcut("\""), Shortcut::Clear);
        assert_eq!(shortcut("1"), Shortcut::Default);
        assert_eq!(shortcut("2"), Shortcut::User);
        assert_eq!(shortcut("3"), Shortcut::None);
        assert_eq!(shortcut("\"\""), Shortcut::None);
    }
}
