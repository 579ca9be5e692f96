//! The scenario file: TOML read into typed steps, every mistake reported with the file,
//! line and column and what was expected there.
//!
//! Parsing is two passes: serde (with `deny_unknown_fields`, so a misspelt key is named
//! with its position) into the raw tables, then [`Scenario::from_raw`], which checks
//! what serde cannot (exactly one action per step, durations, regexes, references to
//! devices, brokers and operators) and keeps each step's position for reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tasmota_core::{Hardware, Mac, Settings};
use toml::Spanned;

use super::operator::Protocol;
use super::rules::{RawList, RulesShorthand};
pub use super::step::{Action, DeviceFault, Expect, Matcher, PublishPattern, RecordPattern, Role, Step, STEP_KINDS};
use super::step::{At, RawStep, Refs};
use crate::broker::auth::{Authorizer, PasswordList};
use crate::broker::fault::FaultRule;
use crate::broker::profile::{Limits, ProfileName};
use crate::duration::parse_duration;
use crate::profile::Profile;

/// A scenario file that cannot be run, with where and why.
#[derive(Debug, thiserror::Error)]
pub struct FileError {
    pub file: PathBuf,
    /// 1-based line and column, when the mistake has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// How long an `expect` waits when the step does not say.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(10);

/// The TLS handshake time on the virtual clock when a device does not say: Tasmota's AWS
/// IoT guide measures about 1.2 s on an ESP8266 at 80 MHz.
pub const DEFAULT_TLS_HANDSHAKE: Duration = Duration::from_millis(1200);

// ---- raw TOML ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    /// Compare the console with a golden transcript (see [`Scenario::transcript`]).
    transcript: Option<bool>,
    #[serde(default, rename = "device")]
    devices: Vec<Spanned<RawDevice>>,
    #[serde(default, rename = "broker")]
    brokers: Vec<Spanned<RawBroker>>,
    #[serde(default, rename = "operator")]
    operators: Vec<Spanned<RawOperator>>,
    #[serde(default, rename = "step")]
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Option<String>,
    mac: Option<Spanned<String>>,
    settings: Option<Settings>,
    /// SetOptions on top of `settings`: `setoptions = { 103 = 1 }`.
    setoptions: Option<Spanned<BTreeMap<String, u32>>>,
    tls_handshake: Option<Spanned<String>>,
    /// A device profile: a built-in name or a path relative to the scenario file.
    profile: Option<Spanned<String>>,
    /// The rules shorthand (see [`super::rules`]): Rule1..3, their flags, Vars and Mems.
    rules: RawList,
    rules_enabled: RawList,
    rules_once: RawList,
    rules_stop_on_error: RawList,
    vars: RawList,
    mems: RawList,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    name: Option<String>,
    profile: Option<Spanned<String>>,
    host: Option<String>,
    port: Option<u16>,
    tls_port: Option<u16>,
    #[serde(default)]
    users: Vec<Spanned<String>>,
    #[serde(default)]
    authorizers: Vec<Spanned<String>>,
    default_authorizer: Option<String>,
    endpoint: Option<String>,
    #[serde(default)]
    allow_retain: bool,
    #[serde(default)]
    limits: Vec<Spanned<String>>,
    #[serde(default)]
    faults: Vec<Spanned<String>>,
    /// The broker is not embedded: it is given with `--broker URL` at run time.
    #[serde(default)]
    external: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    name: Option<String>,
    broker: Option<String>,
    client_id: Option<String>,
    user: Option<String>,
    password: Option<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    /// The MQTT protocol level the operator speaks: 4 (MQTT 3.1.1, the default) or 5.
    protocol: Option<Spanned<i64>>,
    /// Reach the broker with MQTT over WebSocket on this port (the path `/mqtt`).
    ws_port: Option<Spanned<u16>>,
    /// The same over TLS (WSS).
    wss_port: Option<Spanned<u16>>,
}

// ---- the checked scenario ---------------------------------------------------------------

/// A scenario ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// `transcript = true/false`; unset: compared in the library, or when a golden file
    /// exists (see [`super::transcript::golden_dir`]).
    pub transcript: Option<bool>,
    pub devices: Vec<DeviceSpec>,
    pub brokers: Vec<BrokerSpec>,
    pub operators: Vec<OperatorSpec>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    pub mac: Mac,
    pub settings: Settings,
    pub tls_handshake: Duration,
    /// What the device is built from (its profile; the Sonoff Basic by default).
    pub hardware: Hardware,
    /// `Var1..` at the first boot (`vars = [...]`; RAM, so a restart clears them).
    pub vars: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BrokerSpec {
    pub name: String,
    pub profile: ProfileName,
    /// The name or address devices use for it (MqttHost).
    pub host: String,
    /// Plain MQTT port, if it has one.
    pub port: Option<u16>,
    /// TLS port, if it has one.
    pub tls_port: Option<u16>,
    /// `NAME`, `PASSWORD` pairs, in file order (the first is the operator's login).
    pub users: Vec<(String, String)>,
    pub authorizers: Vec<Authorizer>,
    pub default_authorizer: Option<String>,
    pub endpoint: Option<String>,
    pub allow_retain: bool,
    pub limits: Vec<String>,
    pub faults: Vec<FaultRule>,
    pub external: bool,
}

#[derive(Debug, Clone)]
pub struct OperatorSpec {
    pub name: String,
    /// Index into [`Scenario::brokers`].
    pub broker: usize,
    pub client_id: String,
    pub login: Option<(String, String)>,
    pub subscribe: Vec<String>,
    /// MQTT 3.1.1 (`protocol = 4`, the default) or MQTT 5 (`protocol = 5`).
    pub protocol: Protocol,
    /// MQTT over WebSocket (`ws_port`/`wss_port`) instead of MQTT on the link.
    pub websocket: Option<WebSocketPort>,
}

/// An operator's `ws_port` (`tls` false) or `wss_port` (`tls` true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocketPort {
    pub port: u16,
    pub tls: bool,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            // "No such file or directory", without the "(os error 2)" tail.
            let why = e.to_string();
            let why = why.split(" (os error").next().unwrap_or_default().to_string();
            FileError { file: path.to_path_buf(), at: None, message: format!("cannot read: {why}") }
        })?;
        Scenario::parse(path, &text)
    }

    /// Checks scenario `text` (from `path`, for messages and the default name).
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, FileError> {
        let err = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            FileError { file: path.to_path_buf(), at: Some((line, column)), message }
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            err(e.span().unwrap_or(0..0), message)
        })?;
        let mut c = Checker { text, path, errors: Vec::new() };
        let s = c.scenario(raw);
        match c.errors.into_iter().next() {
            Some((span, message)) => Err(err(span, message)),
            None => {
                let s = s.expect("a scenario without errors was built");
                if s.steps.is_empty() {
                    let message = "no [[step]]: a scenario without steps checks nothing".to_string();
                    return Err(FileError { file: path.to_path_buf(), at: None, message });
                }
                Ok(s)
            }
        }
    }

    pub fn device_index(&self, name: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.name == name)
    }
}

/// 1-based line and column of a byte offset.
/// Line and column (1-based, in characters) of a byte offset into a TOML text; the fleet
/// file's errors use it too.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

pub(super) type Span = std::ops::Range<usize>;

/// The second pass: checks the raw tables and collects every mistake with its span.
pub(super) struct Checker<'a> {
    text: &'a str,
    path: &'a Path,
    errors: Vec<(Span, String)>,
}

impl Checker<'_> {
    pub(super) fn fail(&mut self, span: Span, message: impl Into<String>) {
        self.errors.push((span, message.into()));
    }

    pub(super) fn duration(&mut self, s: &Spanned<String>, what: &str) -> Duration {
        match parse_duration(s.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.fail(s.span(), format!("{what}: {e}"));
                Duration::ZERO
            }
        }
    }

    fn scenario(&mut self, raw: RawScenario) -> Option<Scenario> {
        let name = raw.name.unwrap_or_else(|| {
            self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "scenario".into())
        });
        let mut devices = Vec::new();
        // Names seen so far: a file with thousands of devices is checked in linear time.
        let mut device_names = std::collections::HashSet::new();
        for (i, d) in raw.devices.into_iter().enumerate() {
            let span = d.span();
            let d = d.into_inner();
            let name = d.name.unwrap_or_else(|| if i == 0 { "device".into() } else { format!("device{}", i + 1) });
            let mac = match d.mac {
                Some(m) => match m.get_ref().parse::<Mac>() {
                    Ok(mac) => mac,
                    Err(e) => {
                        self.fail(m.span(), format!("mac: {e}"));
                        Mac::DEFAULT
                    }
                },
                None if i == 0 => Mac::DEFAULT,
                None => {
                    self.fail(span.clone(), "mac: every device after the first needs its own MAC");
                    Mac::DEFAULT
                }
            };
            let profile = match &d.profile {
                Some(p) => {
                    let name = p.get_ref();
                    let is_path = name.contains('/') || name.ends_with(".toml");
                    let target = if is_path {
                        self.path.parent().unwrap_or(Path::new(".")).join(name).display().to_string()
                    } else {
                        name.clone()
                    };
                    match Profile::load(&target) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            self.fail(p.span(), format!("profile: {e}"));
                            None
                        }
                    }
                }
                None => None,
            };
            let tls_handshake = match (&d.tls_handshake, &profile) {
                (Some(t), _) => self.duration(t, "tls_handshake"),
                (None, Some(p)) => Duration::from_millis(u64::from(p.hardware.tls_handshake_ms)),
                (None, None) => DEFAULT_TLS_HANDSHAKE,
            };
            if !device_names.insert(name.clone()) {
                self.fail(span.clone(), format!("a second device named '{name}'"));
            }
            let mut settings = match (d.settings, &profile) {
                (Some(s), _) => s,
                (None, Some(p)) => p.initial_settings(),
                (None, None) => Settings::default(),
            };
            let hardware = Hardware { mac, ..profile.map(|p| p.hardware).unwrap_or_default() };
            if let Some(opts) = &d.setoptions {
                for (k, v) in opts.get_ref() {
                    match k.parse::<u32>() {
                        Ok(n) if tasmota_core::settings::OptionSlot::of(n).is_some() => settings.set_option(n, *v),
                        _ => self.fail(opts.span(), format!("setoptions: '{k}' is not a SetOption number (0..177)")),
                    }
                }
            }
            let shorthand = RulesShorthand {
                rules: d.rules,
                rules_enabled: d.rules_enabled,
                rules_once: d.rules_once,
                rules_stop_on_error: d.rules_stop_on_error,
                vars: d.vars,
                mems: d.mems,
            };
            let vars = shorthand.apply(&mut settings).unwrap_or_else(|(at, message)| {
                self.fail(at, format!("device '{name}': {message}"));
                Vec::new()
            });
            // The firmware could not hold what a command could never store (core limits.rs).
            if let Err(e) = tasmota_core::limits::check(&settings) {
                self.fail(span.clone(), format!("device '{name}': settings: {e}"));
            }
            devices.push(DeviceSpec { name, mac, settings, tls_handshake, hardware, vars });
        }
        if devices.is_empty() {
            devices.push(DeviceSpec {
                name: "device".into(),
                mac: Mac::DEFAULT,
                settings: Settings::default(),
                tls_handshake: DEFAULT_TLS_HANDSHAKE,
                hardware: Hardware::default(),
                vars: Vec::new(),
            });
        }

        let mut brokers = Vec::new();
        for (i, b) in raw.brokers.into_iter().enumerate() {
            let span = b.span();
            if let Some(spec) = self.broker(i, b.into_inner(), span.clone()) {
                if brokers.iter().any(|o: &BrokerSpec| o.name == spec.name) {
                    self.fail(span, format!("a second broker named '{}'", spec.name));
                }
                brokers.push(spec);
            }
        }

        let mut operators = Vec::new();
        let mut operator_names = std::collections::HashSet::new();
        for (i, o) in raw.operators.into_iter().enumerate() {
            let span = o.span();
            let o = o.into_inner();
            let name = o.name.unwrap_or_else(|| if i == 0 { "operator".into() } else { format!("operator{}", i + 1) });
            if !operator_names.insert(name.clone()) {
                self.fail(span.clone(), format!("a second operator named '{name}'"));
            }
            let Some(broker) = self.broker_ref(&brokers, o.broker.as_deref(), span.clone()) else { continue };
            let login = match (o.user, o.password) {
                (Some(u), p) => Some((u, p.unwrap_or_default())),
                (None, Some(_)) => {
                    self.fail(span.clone(), "operator: password without user");
                    None
                }
                // On a broker with a password list, the operator logs in as its first user.
                (None, None) => brokers[broker].users.first().cloned(),
            };
            let client_id = o.client_id.unwrap_or_else(|| format!("tasmota-sim-{name}"));
            let protocol = match &o.protocol {
                None => Protocol::Mqtt311,
                Some(p) => Protocol::from_level(*p.get_ref()).unwrap_or_else(|e| {
                    self.fail(p.span(), format!("protocol: {e}"));
                    Protocol::Mqtt311
                }),
            };
            let websocket = self.operator_websocket(&o.ws_port, &o.wss_port, &brokers[broker]);
            // AWS IoT takes a WebSocket client through the custom authorizer only (no client
            // certificate on WSS): without a login the CONNACK would refuse it at run time.
            if websocket.is_some() && login.is_none() && brokers[broker].profile == ProfileName::AwsIot {
                self.fail(
                    span.clone(),
                    format!(
                        "operator '{name}' reaches the aws-iot broker over WebSocket, which takes a client \
                         through the custom authorizer only: give it user (e.g. \
                         'tasmota?x-amz-customauthorizer-name=TasmotaAuth') and password"
                    ),
                );
            }
            operators.push(OperatorSpec {
                name,
                broker,
                client_id,
                login,
                subscribe: o.subscribe,
                protocol,
                websocket,
            });
        }
        // Without a declared operator, one watches everything on the first broker.
        if operators.is_empty() && !brokers.is_empty() {
            let login = brokers[0].users.first().cloned();
            operators.push(OperatorSpec {
                name: "operator".into(),
                broker: 0,
                client_id: "tasmota-sim-operator".into(),
                login,
                subscribe: vec!["#".into()],
                protocol: Protocol::Mqtt311,
                websocket: None,
            });
        }

        let mut steps = Vec::new();
        for (i, s) in raw.steps.into_iter().enumerate() {
            let span = s.span();
            let (line, column) = line_col(self.text, span.start);
            let refs = Refs { devices: &devices, brokers: &brokers, operators: &operators };
            if let Some((role, action)) = self.step(s.into_inner(), &mut At::new(span, i + 1, refs)) {
                steps.push(Step { line, column, role, action });
            }
        }
        Some(Scenario {
            file: self.path.to_path_buf(),
            name,
            description: raw.description.unwrap_or_default(),
            tags: raw.tags,
            transcript: raw.transcript,
            devices,
            brokers,
            operators,
            steps,
        })
    }

    fn broker(&mut self, i: usize, b: RawBroker, span: Span) -> Option<BrokerSpec> {
        let profile = match &b.profile {
            None => ProfileName::Plain,
            Some(p) => match p.get_ref().as_str() {
                "plain" => ProfileName::Plain,
                "aws-iot" => ProfileName::AwsIot,
                other => {
                    self.fail(
                        p.span(),
                        format!("profile: '{other}' is not a broker profile (expected plain or aws-iot)"),
                    );
                    return None;
                }
            },
        };
        let aws = profile == ProfileName::AwsIot;
        let endpoint = b.endpoint.clone();
        let host = b
            .host
            .or_else(|| aws.then(|| endpoint.clone().unwrap_or_else(|| crate::broker::DEFAULT_ENDPOINT.to_string())));
        let Some(host) = host else {
            self.fail(span, "host: a plain broker needs the name or address devices use for it (MqttHost)");
            return None;
        };
        let (port, tls_port) = match (b.port, b.tls_port) {
            (None, None) if aws => (None, Some(443)),
            (None, None) => (Some(1883), None),
            other => other,
        };
        let mut users = Vec::new();
        for u in &b.users {
            match PasswordList::default().add(u.get_ref()) {
                Ok(()) => {
                    let (name, password) = u.get_ref().split_once(':').unwrap_or_default();
                    users.push((name.to_string(), password.to_string()));
                }
                Err(e) => self.fail(u.span(), format!("users: {e}")),
            }
        }
        let mut authorizers = Vec::new();
        for a in &b.authorizers {
            match a.get_ref().parse::<Authorizer>() {
                Ok(a) => authorizers.push(a),
                Err(e) => self.fail(a.span(), format!("authorizers: {e}")),
            }
        }
        let mut limits = Vec::new();
        for l in &b.limits {
            if let Err(e) = Limits::AWS.clone().set(l.get_ref()) {
                self.fail(l.span(), format!("limits: {e}"));
            }
            limits.push(l.get_ref().clone());
        }
        let mut faults = Vec::new();
        for f in &b.faults {
            match f.get_ref().parse::<FaultRule>() {
                Ok(r) => faults.push(r),
                Err(e) => self.fail(f.span(), format!("faults: {e}")),
            }
        }
        Some(BrokerSpec {
            name: b.name.unwrap_or_else(|| if i == 0 { "broker".into() } else { format!("broker{}", i + 1) }),
            profile,
            host: host.to_ascii_lowercase(),
            port,
            tls_port,
            users,
            authorizers,
            default_authorizer: b.default_authorizer,
            endpoint,
            allow_retain: b.allow_retain,
            limits,
            faults,
            external: b.external,
        })
    }

    /// An operator's `ws_port` or `wss_port` (not both), on a port the broker does not
    /// use for plain MQTT or MQTT over TLS.
    fn operator_websocket(
        &mut self,
        ws: &Option<Spanned<u16>>,
        wss: &Option<Spanned<u16>>,
        broker: &BrokerSpec,
    ) -> Option<WebSocketPort> {
        let (given, tls) = match (ws, wss) {
            (None, None) => return None,
            (Some(_), Some(w)) => {
                self.fail(w.span(), "wss_port: an operator takes ws_port or wss_port, not both");
                return None;
            }
            (Some(p), None) => (p, false),
            (None, Some(p)) => (p, true),
        };
        let key = if tls { "wss_port" } else { "ws_port" };
        let port = *given.get_ref();
        if port == 0 {
            self.fail(given.span(), format!("{key}: 0 is not a port"));
            return None;
        }
        for (other, what) in [(broker.port, "port (plain MQTT)"), (broker.tls_port, "tls_port (MQTT over TLS)")] {
            if other == Some(port) {
                self.fail(
                    given.span(),
                    format!(
                        "{key}: {port} is broker '{}''s {what}; its WebSocket listener needs a port of its own",
                        broker.name
                    ),
                );
                return None;
            }
        }
        Some(WebSocketPort { port, tls })
    }

    pub(super) fn broker_ref(&mut self, brokers: &[BrokerSpec], name: Option<&str>, span: Span) -> Option<usize> {
        let names: Vec<&str> = brokers.iter().map(|b| b.name.as_str()).collect();
        self.pick("broker", &names, name, span, "this needs a broker, and the scenario has no [[broker]]")
    }

    pub(super) fn device_ref(&mut self, devices: &[DeviceSpec], name: Option<&str>, span: Span) -> Option<usize> {
        // There is always a device: without [[device]] the scenario gets a default one.
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        self.pick("device", &names, name, span, "")
    }

    pub(super) fn operator_ref(&mut self, operators: &[OperatorSpec], name: Option<&str>, span: Span) -> Option<usize> {
        let names: Vec<&str> = operators.iter().map(|o| o.name.as_str()).collect();
        self.pick("operator", &names, name, span, "this needs an operator, and the scenario has no broker for one")
    }

    /// The index of the `kind` named `wanted` (the first when no name is given), or an
    /// error listing the declared names (`none_declared` when there are none).
    fn pick(
        &mut self,
        kind: &str,
        names: &[&str],
        wanted: Option<&str>,
        span: Span,
        none_declared: &str,
    ) -> Option<usize> {
        match wanted {
            None if names.is_empty() => {
                self.fail(span, none_declared);
                None
            }
            None => Some(0),
            Some(n) => {
                let found = names.iter().position(|k| *k == n);
                if found.is_none() {
                    self.fail(span, format!("{kind} '{n}' is not declared ({kind}s: {})", names.join(", ")));
                }
                found
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, FileError> {
        Scenario::parse(Path::new("s.toml"), text)
    }

    /// 300 characters of Latin-1 letters in no order (600 bytes): every byte is Unishox's
    /// binary code, so it does not compress below 510 bytes.
    pub(crate) fn incompressible() -> String {
        let mut x = 0x2545_f491u32;
        (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                char::from_u32(0xC0 + (x >> 26)).unwrap_or('x')
            })
            .collect()
    }

    #[test]
    fn errors_have_line_column_and_what_was_expected() {
        let e = parse("name = \"x\"\n[[step]]\nconsole = \"Power\"\nadvance = \"1s\"\n").unwrap_err();
        assert_eq!(e.at.unwrap(), (2, 1));
        assert!(e.message.contains("console and advance"), "{e}");

        let e = parse("[[step]]\nadvance = \"ten seconds\"\n").unwrap_err();
        assert_eq!(e.at.unwrap(), (2, 11), "{e}");
        assert!(e.to_string().starts_with("s.toml:2:11: advance:"), "{e}");

        let e = parse("[[step]]\nconsol = \"Power\"\n").unwrap_err();
        assert_eq!(e.at.unwrap().0, 2, "{e}");
        assert!(e.message.contains("unknown field `consol`"), "{e}");

        let e = parse("[[step]]\nexpect = { console_regex = \"(\" }\n").unwrap_err();
        assert!(e.message.starts_with("console_regex:"), "{e}");

        let e = parse("[[step]]\nmqtt_publish = { topic = \"t\" }\n").unwrap_err();
        assert!(e.message.contains("no broker for one"), "{e}");
        assert_eq!(e.at.unwrap().0, 1, "{e}");

        let e = parse("[[broker]]\nhost = \"h\"\nfaults = [\"drop-after=x\"]\n").unwrap_err();
        assert_eq!(e.at.unwrap(), (3, 11), "{e}");

        let e = parse("[[device]]\nsettings = { mqtt_hots = \"x\" }\n").unwrap_err();
        assert!(e.message.contains("mqtt_hots"), "{e}");

        let e = parse("[[device]]\nsettings = { mqtt_topic = \"\" }\n[[step]]\nadvance = \"1s\"\n").unwrap_err();
        assert!(e.message.starts_with("device 'device': settings: field mqtt_topic: is empty"), "{e}");
        assert_eq!(e.at.unwrap().0, 1, "{e}");

        let e = parse("[[step]]\nexpect = { setting = { name = \"nope\", value = 1 } }\n").unwrap_err();
        assert!(e.message.contains("'nope' is not a settings field"), "{e}");

        let e = parse("[[step]]\nexpect = { setting = { name = \"mqtt_prot\", value = 1 } }\n").unwrap_err();
        assert!(e.message.starts_with("setting: 'mqtt_prot' is not a settings field; did you mean mqtt_port"), "{e}");

        let e = parse("[[step]]\nexpect = { console_regex = \"(\" }\n").unwrap_err();
        assert_eq!(e.at, Some((2, 28)), "{e}");

        let e = parse("[[step]]\nconsole = \"x\"\n[[step]]\nexpect = { console = \"y\", since = \"step 2\" }\n")
            .unwrap_err();
        assert_eq!(e.message, "since: step 2 is not before this step (step 2)");
    }

    #[test]
    fn step_kind_errors_come_from_the_table() {
        let e = parse("[[step]]\ndevice = \"device\"\n").unwrap_err();
        assert_eq!(
            e.message,
            "a step needs one action: console, mqtt_publish, advance, restart, power_off, power_on, fault, \
             device_fault, broker_restart, button_press, switch, sensor, http, expect, expect_not or expect_order"
        );
        let e = parse("[[step]]\nhttp = { cmnd = \"Power\" }\nexpect = { console = \"x\" }\n").unwrap_err();
        assert_eq!(e.message, "a step has one action, this one has expect and http");
        let e = parse("[[step]]\nrestart = false\n").unwrap_err();
        assert_eq!(e.message, "restart, power_off and power_on take 'true'");
        assert_eq!(STEP_KINDS.len(), 16);
    }

    #[test]
    fn rules_shorthand_and_its_mistakes() {
        let s = parse(
            "[[device]]\nrules = [\"ON System#Boot DO Power 1 ENDON\"]\nrules_once = [true]\nvars = [\"7\"]\n\
             mems = [\"m\"]\n[[step]]\nadvance = \"1s\"\n",
        )
        .unwrap();
        let r = s.devices[0].settings.rules.as_ref().unwrap();
        assert_eq!(
            (r.rules[0].as_str(), r.enabled, r.once, r.mems[0].as_str()),
            ("ON System#Boot DO Power 1 ENDON", 1, 1, "m")
        );
        assert_eq!(s.devices[0].vars, vec!["7".to_string()]);

        let e = parse("[[device]]\nrules = [\"a\", \"b\",\n  \"c\", \"d\"]\n[[step]]\nadvance = \"1s\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.toml:3:8: device 'device': rules: at most 3 rule sets (Rule1..3); this is number 4"
        );
        let e = parse("[[device]]\nrules = [true]\n[[step]]\nadvance = \"1s\"\n").unwrap_err();
        assert_eq!(e.to_string(), "s.toml:2:10: device 'device': rules[0]: expected a string, found boolean");
        let long = incompressible();
        let e = parse(&format!("[[device]]\nrules = [\"{long}\"]\n[[step]]\nadvance = \"1s\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.toml:2:10: device 'device': rules[0] (Rule1): 600 bytes, and Unishox does not compress it below 510 bytes (SetRule: MAX_RULE_SIZE - 2)"
        );
        let e = parse(&format!("[[device]]\nrules = [\"{}\"]\n[[step]]\nadvance = \"1s\"\n", "x".repeat(2041)))
            .unwrap_err();
        assert!(
            e.message.ends_with(
                "2041 bytes; a set over 511 is stored compressed with its length / 8 in one byte, so at most 2040"
            ),
            "{e}"
        );
        // Over 511 characters, but Unishox stores it in 12 bytes: SetRule keeps it.
        let ok = format!("on a do b endon {}", "a".repeat(500));
        assert!(parse(&format!("[[device]]\nrules = [\"{ok}\"]\n[[step]]\nadvance = \"1s\"\n")).is_ok());
    }

    #[test]
    fn defaults() {
        let s = parse(
            "[[broker]]\nprofile = \"aws-iot\"\n[[step]]\nmqtt_publish = { topic = \"cmnd/t/Power\" }\n\
             [[step]]\nexpect = { publish = { topic = \"stat/t/RESULT\", json = { POWER = \"ON\" } } }\n",
        )
        .unwrap();
        assert_eq!(s.name, "s");
        assert_eq!(s.devices[0].name, "device");
        assert_eq!(s.brokers[0].host, crate::broker::DEFAULT_ENDPOINT);
        assert_eq!((s.brokers[0].port, s.brokers[0].tls_port), (None, Some(443)));
        assert_eq!(s.operators[0].subscribe, vec!["#".to_string()]);
        match &s.steps[1].action {
            Action::Expect(e) => {
                assert_eq!(e.within, DEFAULT_WITHIN);
                assert_eq!(e.text, "operator 'operator' receives stat/t/RESULT ⊇ {\"POWER\":\"ON\"}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.steps[1].line, 5);
    }
}
