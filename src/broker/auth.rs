//! Who may connect: Mosquitto's password list (`plain`), and AWS IoT's custom
//! authorizer as TasmotaAuth.yaml implements it (spec/aws-iot.md §2, §3).

use std::collections::HashMap;

use base64::Engine as _;

/// `--user NAME:PASSWORD` entries. No entries: anonymous clients are let in.
#[derive(Debug, Clone, Default)]
pub struct PasswordList {
    users: HashMap<String, String>,
}

impl PasswordList {
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        let (name, password) = spec.split_once(':').ok_or_else(|| "expected NAME:PASSWORD".to_string())?;
        if name.is_empty() {
            return Err("the user name is empty".into());
        }
        self.users.insert(name.to_string(), password.to_string());
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Mosquitto's check: with a password file, a known user with the right password.
    pub fn check(&self, login: Option<(&str, &str)>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        match login {
            Some((user, password)) => self.users.get(user).is_some_and(|p| p == password),
            None => false,
        }
    }
}

/// One custom authorizer with TasmotaAuth's Lambda: the password (base64-encoded by AWS
/// on the way in, decoded by the Lambda) compared with `PASSWD` or `PASSWD2`.
#[derive(Clone)]
pub struct Authorizer {
    pub name: String,
    secrets: Vec<String>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("name", &self.name).field("secrets", &self.secrets.len()).finish()
    }
}

impl std::str::FromStr for Authorizer {
    type Err = String;

    /// `NAME:SECRET[,SECRET2]`.
    fn from_str(spec: &str) -> Result<Authorizer, String> {
        let (name, secrets) = spec.split_once(':').ok_or_else(|| "expected NAME:SECRET[,SECRET2]".to_string())?;
        let secrets: Vec<String> = secrets.split(',').map(str::to_string).collect();
        if name.is_empty() || secrets.iter().any(String::is_empty) || secrets.len() > 2 {
            return Err("expected NAME:SECRET[,SECRET2] with a non-empty name and one or two non-empty secrets".into());
        }
        Ok(Authorizer { name: name.to_string(), secrets })
    }
}

/// The policy effect the authorizer returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

impl Authorizer {
    /// What TasmotaAuth's Lambda decides for this MQTT password. `Err` is a Lambda error
    /// (the password is not base64 of UTF-8 text), which AWS treats as a failure too.
    pub fn decide(&self, password: Option<&[u8]>) -> Result<Effect, String> {
        // AWS IoT hands the Lambda the password base64-encoded ...
        let event_password = base64::engine::general_purpose::STANDARD.encode(password.unwrap_or_default());
        // ... and the Lambda decodes it: passwd = base64.b64decode(pwd).decode('utf-8').
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(event_password)
            .map_err(|e| format!("Lambda error: {e}"))?;
        let passwd = String::from_utf8(decoded).map_err(|_| "Lambda error: password is not UTF-8".to_string())?;
        Ok(if self.secrets.contains(&passwd) { Effect::Allow } else { Effect::Deny })
    }
}

/// The parts of an MQTT username AWS IoT reads: the user before `?` and the query string
/// after it (`x-amz-customauthorizer-name`, and whatever the SDKs append: `SDK`,
/// `Platform`, `Metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsUsername {
    pub user: String,
    pub params: Vec<(String, String)>,
}

impl AwsUsername {
    pub fn parse(username: &str) -> Result<AwsUsername, String> {
        let (user, query) = username.split_once('?').unwrap_or((username, ""));
        if query.contains('?') {
            // aws-iot-device-sdk-java-v2#154: a second '?' and AWS never invokes the
            // authorizer.
            return Err("the username has a second '?'; AWS IoT cannot parse its query string".into());
        }
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Ok((percent_decode(k)?, percent_decode(v)?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(AwsUsername { user: user.to_string(), params })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn authorizer_name(&self) -> Option<&str> {
        self.param("x-amz-customauthorizer-name")
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    // Not the text itself: it may be a token.
                    .ok_or_else(|| "a bad %-escape in the username's query string".to_string())?;
                out.push(byte);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "the username's query string is not UTF-8 once decoded".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_query_is_parsed_not_compared() {
        let u = AwsUsername::parse(
            "tasmota?x-amz-customauthorizer-name=TasmotaAuth&SDK=Python&Version=1.2&Platform=linux&Metadata=(a=b)",
        )
        .unwrap();
        assert_eq!(u.user, "tasmota");
        assert_eq!(u.authorizer_name(), Some("TasmotaAuth"));
        assert_eq!(u.param("SDK"), Some("Python"));
        let u = AwsUsername::parse("?SDK=x&x-amz-customauthorizer-name=My%20Auth").unwrap();
        assert_eq!(u.user, "");
        assert_eq!(u.authorizer_name(), Some("My Auth"));
        assert_eq!(AwsUsername::parse("plain").unwrap().authorizer_name(), None);
        assert!(AwsUsername::parse("t?x-amz-customauthorizer-name=A?SDK=1").is_err());
        let e = AwsUsername::parse("t?x-amz-customauthorizer-name=A&tok=secret%zz").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn tasmota_auth_compares_the_password_with_either_secret() {
        let a: Authorizer = "TasmotaAuth:YknLuSd2tBY2HodwI/7RqA==,second".parse().unwrap();
        assert_eq!(a.decide(Some(b"YknLuSd2tBY2HodwI/7RqA==")), Ok(Effect::Allow));
        assert_eq!(a.decide(Some(b"second")), Ok(Effect::Allow));
        assert_eq!(a.decide(Some(b"wrong")), Ok(Effect::Deny));
        assert_eq!(a.decide(None), Ok(Effect::Deny));
        assert!(a.decide(Some(&[0xff, 0xfe])).is_err());
        assert!(format!("{a:?}").contains("secrets: 2") && !format!("{a:?}").contains("second"));
        assert!("x".parse::<Authorizer>().is_err());
        assert!("x:a,b,c".parse::<Authorizer>().is_err());
    }

    #[test]
    fn password_list() {
        let mut l = PasswordList::default();
        assert!(l.check(None));
        l.add("bob:secret").unwrap();
        assert!(l.check(Some(("bob", "secret"))));
        assert!(!l.check(Some(("bob", "nope"))));
        assert!(!l.check(Some(("eve", "secret"))));
        assert!(!l.check(None));
        assert!(l.add("nocolon").is_err());
    }
}
