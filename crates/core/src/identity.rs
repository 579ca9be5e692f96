//! The hardware identity: the WiFi station MAC and what the firmware derives from it.
//!
//! `%06X` in Topic and MqttClient, the chip id in the Hostname and `%id%` all come from
//! the MAC (spec §1; `Format()`, `NetworkUniqueId()`, `ESP.getChipId()`).

use alloc::format;
use alloc::string::String;
use core::fmt;
use core::str::FromStr;

/// A WiFi station MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// `5C:CF:7F:4B:33:16`, an Espressif MAC; its topic is `tasmota_4B3316`.
    pub const DEFAULT: Mac = Mac([0x5C, 0xCF, 0x7F, 0x4B, 0x33, 0x16]);

    /// `NetworkUniqueId()`: the twelve uppercase hex digits, no colons (`%id%`).
    pub fn unique_id(&self) -> String {
        let b = self.0;
        format!("{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}", b[0], b[1], b[2], b[3], b[4], b[5])
    }

    /// `ESP.getChipId()` on an ESP8266: the last three MAC bytes as a number.
    pub fn chip_id(&self) -> u32 {
        (u32::from(self.0[3]) << 16) | (u32::from(self.0[4]) << 8) | u32::from(self.0[5])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

/// Why a MAC address did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacParseError;

impl fmt::Display for MacParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected six hex byte pairs separated by ':' or '-', like 5C:CF:7F:4B:33:16")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for MacParseError {}

impl FromStr for Mac {
    type Err = MacParseError;

    /// Parses `5C:CF:7F:4B:33:16`, `5c-cf-7f-4b-33-16` or `5CCF7F4B3316`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
        let separators = s.len() - hex.len();
        if hex.len() != 12 || !(separators == 0 || separators == 5) {
            return Err(MacParseError);
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(hex.get(i * 2..i * 2 + 2).ok_or(MacParseError)?, 16).map_err(|_| MacParseError)?;
        }
        Ok(Mac(out))
    }
}

/// `Format()`: expands the one `%` token of a setting such as `tasmota_%06X`.
///
/// As in the firmware, only the text before the first `%` survives, followed by the
/// expansion: `%0NX` the last N hex digits of the MAC (N up to 12), `%0Nd` the chip id
/// masked to 13 bits and zero padded, `%d` the full chip id. The token is recognised as
/// decimal whenever a `d` appears anywhere after the `%`. Without a valid token the input
/// is returned unchanged.
pub fn format_token(input: &str, mac: &Mac) -> String {
    let Some(pct) = input.find('%') else {
        return String::from(input);
    };
    let head = &input[..pct];
    let token = input[pct..].trim_start_matches('%');
    let digits = atoi(token);
    let decimal = token.contains('d');
    if digits > 0 {
        if decimal {
            let width = digits as usize;
            format!("{head}{:0width$}", mac.chip_id() & 0x1FFF)
        } else {
            let n = (digits as usize).min(12);
            let id = mac.unique_id();
            format!("{head}{}", &id[12 - n..])
        }
    } else if decimal {
        format!("{head}{}", mac.chip_id())
    } else {
        String::from(input)
    }
}

/// C `atoi` on an unsigned prefix: leading digits, saturating, zero when there are none.
fn atoi(s: &str) -> u32 {
    s.bytes().take_while(u8::is_ascii_digit).fold(0u32, |n, d| n.saturating_mul(10).saturating_add(u32::from(d - b'0')))
}

/// The WiFi hostname rule: every character other than a letter, a digit or `.` becomes
/// `-`, and a leading `-` becomes `x`.
pub fn sanitize_hostname(raw: &str) -> String {
    let mut out: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    if out.starts_with('-') {
        out.replace_range(0..1, "x");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_macs() {
        let m: Mac = "5c-cf-7f-4b-33-16".parse().unwrap();
        assert_eq!(m, Mac::DEFAULT);
        assert_eq!(m.to_string(), "5C:CF:7F:4B:33:16");
        assert_eq!("5CCF7F4B3316".parse::<Mac>(), Ok(Mac::DEFAULT));
        assert!("5C:CF:7F:4B:33".parse::<Mac>().is_err());
        assert!("5C:CF:7F:4B:33:GG".parse::<Mac>().is_err());
        assert!("5C:CF7F:4B:33:16".parse::<Mac>().is_err());
    }

    #[test]
    fn expands_tokens_like_format() {
        let m = Mac::DEFAULT;
        assert_eq!(format_token("tasmota_%06X", &m), "tasmota_4B3316");
        assert_eq!(format_token("DVES_%06X", &m), "DVES_4B3316");
        assert_eq!(format_token("x_%12X", &m), "x_5CCF7F4B3316");
        assert_eq!(format_token("x_%20X", &m), "x_5CCF7F4B3316");
        assert_eq!(format_token("%04d", &m), "4886");
        assert_eq!(format_token("n%d", &m), "n4928278");
        // Only the text before the token survives.
        assert_eq!(format_token("a_%06X_b", &m), "a_4B3316");
        assert_eq!(format_token("plain", &m), "plain");
        assert_eq!(format_token("50%", &m), "50%");
    }

    #[test]
    fn hostname_rule() {
        assert_eq!(sanitize_hostname("tasmota_4B3316-4886"), "tasmota-4B3316-4886");
        assert_eq!(sanitize_hostname("_x y"), "xx-y");
    }
}
