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
use tasmota_core::sensors::Quantity;
use tasmota_core::{Hardware, Mac, Settings};
use toml::Spanned;

use crate::broker::auth::{Authorizer, PasswordList};
use crate::broker::fault::FaultRule;
use crate::broker::profile::{Limits, ProfileName};
use crate::duration::parse_duration;
use crate::profile::Profile;

/// A scenario file that cannot be run, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct FileError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
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
    /// Compare the console transcript with `fixtures/transcripts/<name>.log`.
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    device: Option<String>,
    broker: Option<String>,
    operator: Option<String>,
    // Actions: exactly one per step.
    console: Option<String>,
    mqtt_publish: Option<RawPublish>,
    advance: Option<Spanned<String>>,
    restart: Option<bool>,
    power_off: Option<bool>,
    power_on: Option<bool>,
    fault: Option<Spanned<String>>,
    device_fault: Option<Spanned<String>>,
    broker_restart: Option<Spanned<String>>,
    expect: Option<RawExpect>,
    expect_not: Option<RawExpect>,
    expect_order: Option<Vec<RawExpect>>,
    button_press: Option<Spanned<u8>>,
    switch: Option<Spanned<RawSwitch>>,
    sensor: Option<Spanned<RawSensorSet>>,
    http: Option<Spanned<RawHttp>>,
    /// For `expect_order`.
    within: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawSwitch {
    index: u8,
    on: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSensorSet {
    #[serde(default = "first")]
    index: u8,
    temperature: Option<f64>,
    humidity: Option<f64>,
    voltage: Option<f64>,
    power: Option<f64>,
}

fn first() -> u8 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    cmnd: Option<String>,
    user: Option<String>,
    password: Option<String>,
    /// The exact body expected.
    body: Option<String>,
    #[serde(default = "ok_status")]
    status: u16,
}

fn ok_status() -> u16 {
    200
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    operator: Option<String>,
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    qos: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    device: Option<String>,
    operator: Option<String>,
    broker: Option<String>,
    console: Option<String>,
    console_regex: Option<String>,
    publish: Option<RawSeenPublish>,
    record: Option<RawRecord>,
    setting: Option<RawSetting>,
    within: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeenPublish {
    topic: Option<String>,
    payload: Option<String>,
    payload_regex: Option<String>,
    json: Option<toml::Value>,
    retain: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    kind: Option<String>,
    client: Option<String>,
    topic: Option<String>,
    payload: Option<String>,
    retain: Option<bool>,
    codes: Option<Vec<u8>>,
    detail_regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetting {
    name: String,
    value: toml::Value,
}

// ---- the checked scenario ---------------------------------------------------------------

/// A scenario ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub transcript: bool,
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
}

/// One step, where it is in the file, and what it does.
#[derive(Debug, Clone)]
pub struct Step {
    pub line: usize,
    pub column: usize,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub enum Action {
    Console {
        device: usize,
        line: String,
    },
    MqttPublish {
        operator: usize,
        topic: String,
        payload: String,
        retain: bool,
        qos: u8,
    },
    Advance(Duration),
    Restart {
        device: usize,
    },
    PowerOff {
        device: usize,
    },
    PowerOn {
        device: usize,
    },
    Fault {
        broker: usize,
        rule: FaultRule,
    },
    DeviceFault {
        device: usize,
        fault: DeviceFault,
    },
    BrokerRestart {
        broker: usize,
        down: Duration,
    },
    ButtonPress {
        device: usize,
        button: u8,
    },
    Switch {
        device: usize,
        index: u8,
        on: bool,
    },
    Sensor {
        device: usize,
        index: u8,
        quantity: Quantity,
        milli: i32,
    },
    /// A `/cm` request answered in-process; `body` `None` accepts any body.
    Http {
        device: usize,
        cmnd: Option<String>,
        user: Option<String>,
        password: Option<String>,
        status: u16,
        body: Option<String>,
    },
    Expect(Expect),
    ExpectNot(Expect),
    ExpectOrder {
        items: Vec<Expect>,
        within: Duration,
    },
}

/// Something wrong on the device's side of the link, from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFault {
    /// Offer this ALPN protocol instead of the one the firmware chose (`None`: none).
    Alpn(Option<&'static str>),
    /// Every lookup of the broker's name fails.
    DnsFail,
    /// Back to normal.
    Clear,
}

impl std::str::FromStr for DeviceFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some(("alpn", "none")) => Ok(DeviceFault::Alpn(None)),
            Some(("alpn", p)) => match ["mqtt", "x-amzn-mqtt-ca", "h2", "http/1.1"].into_iter().find(|k| *k == p) {
                Some(known) => Ok(DeviceFault::Alpn(Some(known))),
                None => Err(format!("'{s}': the ALPN protocols are mqtt, x-amzn-mqtt-ca, h2, http/1.1 and none")),
            },
            None if s == "dns-fail" => Ok(DeviceFault::DnsFail),
            None if s == "clear" => Ok(DeviceFault::Clear),
            _ => Err(format!("'{s}': expected alpn=PROTOCOL, alpn=none, dns-fail or clear")),
        }
    }
}

/// What must (or must not) be seen.
#[derive(Debug, Clone)]
pub struct Expect {
    pub what: Matcher,
    pub within: Duration,
    /// How the step reads in reports.
    pub text: String,
}

#[derive(Debug, Clone)]
pub enum Matcher {
    /// A console line, exact (with or without its timestamp).
    Console {
        device: usize,
        text: String,
    },
    ConsoleRegex {
        device: usize,
        re: regex::Regex,
    },
    /// A message an operator received.
    Publish {
        operator: usize,
        pattern: PublishPattern,
    },
    /// A line in a broker's record.
    Record {
        broker: usize,
        pattern: RecordPattern,
    },
    /// A settings value now.
    Setting {
        device: usize,
        name: String,
        value: serde_json::Value,
    },
}

#[derive(Debug, Clone, Default)]
pub struct PublishPattern {
    pub topic: Option<String>,
    pub payload: Option<String>,
    pub payload_regex: Option<regex::Regex>,
    pub json: Option<serde_json::Value>,
    pub retain: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct RecordPattern {
    pub kind: Option<String>,
    pub client: Option<String>,
    pub topic: Option<String>,
    pub payload: Option<String>,
    pub retain: Option<bool>,
    pub codes: Option<Vec<u8>>,
    pub detail_regex: Option<regex::Regex>,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Scenario::parse(path, &text)
    }

    /// Checks scenario `text` (from `path`, for messages and the default name).
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, FileError> {
        let err = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            FileError { file: path.to_path_buf(), line, column, message }
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            err(e.span().unwrap_or(0..0), message)
        })?;
        let mut c = Checker { text, path, errors: Vec::new() };
        let s = c.scenario(raw);
        match c.errors.into_iter().next() {
            Some((span, message)) => Err(err(span, message)),
            None => Ok(s.expect("a scenario without errors was built")),
        }
    }

    pub fn device_index(&self, name: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.name == name)
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

type Span = std::ops::Range<usize>;

struct Checker<'a> {
    text: &'a str,
    path: &'a Path,
    errors: Vec<(Span, String)>,
}

impl Checker<'_> {
    fn fail(&mut self, span: Span, message: impl Into<String>) {
        self.errors.push((span, message.into()));
    }

    fn duration(&mut self, s: &Spanned<String>, what: &str) -> Duration {
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
            if devices.iter().any(|o: &DeviceSpec| o.name == name) {
                self.fail(span, format!("a second device named '{name}'"));
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
            devices.push(DeviceSpec { name, mac, settings, tls_handshake, hardware });
        }
        if devices.is_empty() {
            devices.push(DeviceSpec {
                name: "device".into(),
                mac: Mac::DEFAULT,
                settings: Settings::default(),
                tls_handshake: DEFAULT_TLS_HANDSHAKE,
                hardware: Hardware::default(),
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
        for (i, o) in raw.operators.into_iter().enumerate() {
            let span = o.span();
            let o = o.into_inner();
            let name = o.name.unwrap_or_else(|| if i == 0 { "operator".into() } else { format!("operator{}", i + 1) });
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
            operators.push(OperatorSpec { name, broker, client_id, login, subscribe: o.subscribe });
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
            });
        }

        let mut steps = Vec::new();
        for s in raw.steps {
            let span = s.span();
            let (line, column) = line_col(self.text, span.start);
            if let Some(action) = self.step(s.into_inner(), span, &devices, &brokers, &operators) {
                steps.push(Step { line, column, action });
            }
        }
        Some(Scenario {
            file: self.path.to_path_buf(),
            name,
            description: raw.description.unwrap_or_default(),
            tags: raw.tags,
            transcript: raw.transcript.unwrap_or(true),
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

    fn broker_ref(&mut self, brokers: &[BrokerSpec], name: Option<&str>, span: Span) -> Option<usize> {
        let names: Vec<&str> = brokers.iter().map(|b| b.name.as_str()).collect();
        self.pick("broker", &names, name, span, "this needs a broker, and the scenario has no [[broker]]")
    }

    fn device_ref(&mut self, devices: &[DeviceSpec], name: Option<&str>, span: Span) -> Option<usize> {
        // There is always a device: without [[device]] the scenario gets a default one.
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        self.pick("device", &names, name, span, "")
    }

    fn operator_ref(&mut self, operators: &[OperatorSpec], name: Option<&str>, span: Span) -> Option<usize> {
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

    fn step(
        &mut self,
        s: RawStep,
        span: Span,
        devices: &[DeviceSpec],
        brokers: &[BrokerSpec],
        operators: &[OperatorSpec],
    ) -> Option<Action> {
        let kinds: Vec<&str> = [
            ("console", s.console.is_some()),
            ("mqtt_publish", s.mqtt_publish.is_some()),
            ("advance", s.advance.is_some()),
            ("restart", s.restart.is_some()),
            ("power_off", s.power_off.is_some()),
            ("power_on", s.power_on.is_some()),
            ("fault", s.fault.is_some()),
            ("device_fault", s.device_fault.is_some()),
            ("broker_restart", s.broker_restart.is_some()),
            ("expect", s.expect.is_some()),
            ("expect_not", s.expect_not.is_some()),
            ("expect_order", s.expect_order.is_some()),
            ("button_press", s.button_press.is_some()),
            ("switch", s.switch.is_some()),
            ("sensor", s.sensor.is_some()),
            ("http", s.http.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        match kinds.len() {
            0 => {
                self.fail(
                    span,
                    "a step needs one action: console, mqtt_publish, advance, restart, power_off, power_on, fault, \
                     device_fault, broker_restart, button_press, switch, sensor, http, expect, expect_not or \
                     expect_order",
                );
                return None;
            }
            1 => {}
            _ => {
                self.fail(span, format!("a step has one action, this one has {}", kinds.join(" and ")));
                return None;
            }
        }
        if s.within.is_some() && s.expect_order.is_none() {
            self.fail(span.clone(), "within: at step level only for expect_order (put it inside expect = { ... })");
        }
        let device = || s.device.as_deref();
        if let Some(line) = s.console {
            return Some(Action::Console { device: self.device_ref(devices, device(), span)?, line });
        }
        if let Some(p) = s.mqtt_publish {
            let name = p.operator.as_deref().or(s.operator.as_deref());
            let operator = self.operator_ref(operators, name, span.clone())?;
            if p.qos > 1 {
                self.fail(span, "mqtt_publish: qos is 0 or 1");
                return None;
            }
            return Some(Action::MqttPublish {
                operator,
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
                qos: p.qos,
            });
        }
        if let Some(d) = &s.advance {
            return Some(Action::Advance(self.duration(d, "advance")));
        }
        if s.restart == Some(true) {
            return Some(Action::Restart { device: self.device_ref(devices, device(), span)? });
        }
        if s.power_off == Some(true) {
            return Some(Action::PowerOff { device: self.device_ref(devices, device(), span)? });
        }
        if s.power_on == Some(true) {
            return Some(Action::PowerOn { device: self.device_ref(devices, device(), span)? });
        }
        if s.restart.is_some() || s.power_off.is_some() || s.power_on.is_some() {
            self.fail(span, "restart, power_off and power_on take 'true'");
            return None;
        }
        if let Some(f) = &s.fault {
            let broker = self.broker_ref(brokers, s.broker.as_deref(), span)?;
            return match f.get_ref().parse::<FaultRule>() {
                Ok(rule) => Some(Action::Fault { broker, rule }),
                Err(e) => {
                    self.fail(f.span(), format!("fault: {e}"));
                    None
                }
            };
        }
        if let Some(f) = &s.device_fault {
            let device = self.device_ref(devices, device(), span)?;
            return match f.get_ref().parse::<DeviceFault>() {
                Ok(fault) => Some(Action::DeviceFault { device, fault }),
                Err(e) => {
                    self.fail(f.span(), format!("device_fault: {e}"));
                    None
                }
            };
        }
        if let Some(d) = &s.broker_restart {
            let broker = self.broker_ref(brokers, s.broker.as_deref(), span)?;
            let down = self.duration(d, "broker_restart (the downtime)");
            return Some(Action::BrokerRestart { broker, down });
        }
        if let Some(b) = &s.button_press {
            let device = self.device_ref(devices, device(), span)?;
            let have = devices[device].hardware.buttons;
            if *b.get_ref() == 0 || *b.get_ref() > have {
                self.fail(b.span(), format!("button_press: the device has buttons 1..={have}"));
                return None;
            }
            return Some(Action::ButtonPress { device, button: *b.get_ref() });
        }
        if let Some(sw) = &s.switch {
            let device = self.device_ref(devices, device(), span)?;
            let have = devices[device].hardware.switches;
            let RawSwitch { index, on } = *sw.get_ref();
            if index == 0 || index > have {
                self.fail(sw.span(), format!("switch: the device has switches 1..={have}"));
                return None;
            }
            return Some(Action::Switch { device, index, on });
        }
        if let Some(set) = &s.sensor {
            let device = self.device_ref(devices, device(), span)?;
            let r = set.get_ref();
            let given: Vec<(Quantity, f64)> = [
                (Quantity::Temperature, r.temperature),
                (Quantity::Humidity, r.humidity),
                (Quantity::Voltage, r.voltage),
                (Quantity::Power, r.power),
            ]
            .into_iter()
            .filter_map(|(q, v)| v.map(|v| (q, v)))
            .collect();
            let [(quantity, value)] = given[..] else {
                self.fail(set.span(), "sensor: give exactly one of temperature, humidity, voltage, power");
                return None;
            };
            let milli = (value * 1000.0).round() as i32;
            return Some(Action::Sensor { device, index: r.index, quantity, milli });
        }
        if let Some(h) = s.http {
            let device = self.device_ref(devices, device(), span)?;
            let h = h.into_inner();
            return Some(Action::Http {
                device,
                cmnd: h.cmnd,
                user: h.user,
                password: h.password,
                status: h.status,
                body: h.body,
            });
        }
        let ctx = Refs { devices, brokers, operators };
        if let Some(e) = s.expect {
            return self.expect(e, span, &ctx).map(Action::Expect);
        }
        if let Some(e) = s.expect_not {
            return self.expect(e, span, &ctx).map(Action::ExpectNot);
        }
        if let Some(items) = s.expect_order {
            let within = match &s.within {
                Some(w) => self.duration(w, "within"),
                None => DEFAULT_WITHIN,
            };
            if items.is_empty() {
                self.fail(span, "expect_order: an empty list");
                return None;
            }
            let items: Vec<Expect> = items.into_iter().filter_map(|e| self.expect(e, span.clone(), &ctx)).collect();
            return Some(Action::ExpectOrder { items, within });
        }
        None
    }

    fn expect(&mut self, e: RawExpect, span: Span, r: &Refs) -> Option<Expect> {
        let set = [
            e.console.is_some(),
            e.console_regex.is_some(),
            e.publish.is_some(),
            e.record.is_some(),
            e.setting.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            self.fail(span, "an expectation names one of: console, console_regex, publish, record, setting");
            return None;
        }
        let within = match &e.within {
            Some(w) => self.duration(w, "within"),
            None => DEFAULT_WITHIN,
        };
        let (what, text) = if let Some(text) = e.console {
            let device = self.device_ref(r.devices, e.device.as_deref(), span)?;
            let shown = format!("console {text:?}");
            (Matcher::Console { device, text }, shown)
        } else if let Some(re) = e.console_regex {
            let device = self.device_ref(r.devices, e.device.as_deref(), span.clone())?;
            let shown = format!("console matching /{re}/");
            match regex::Regex::new(&re) {
                Ok(re) => (Matcher::ConsoleRegex { device, re }, shown),
                Err(err) => {
                    self.fail(span, format!("console_regex: {err}"));
                    return None;
                }
            }
        } else if let Some(p) = e.publish {
            let operator = self.operator_ref(r.operators, e.operator.as_deref(), span.clone())?;
            let payload_regex = match p.payload_regex.as_deref().map(regex::Regex::new) {
                Some(Err(err)) => {
                    self.fail(span, format!("payload_regex: {err}"));
                    return None;
                }
                other => other.and_then(Result::ok),
            };
            let json = p.json.map(|v| serde_json::to_value(v).unwrap_or(serde_json::Value::Null));
            let shown = describe_publish(&p.topic, &p.payload, &payload_regex, &json, p.retain);
            let pattern = PublishPattern { topic: p.topic, payload: p.payload, payload_regex, json, retain: p.retain };
            (
                Matcher::Publish { operator, pattern },
                format!("operator '{}' receives {shown}", r.operators[operator].name),
            )
        } else if let Some(rec) = e.record {
            let broker = self.broker_ref(r.brokers, e.broker.as_deref(), span.clone())?;
            let detail_regex = match rec.detail_regex.as_deref().map(regex::Regex::new) {
                Some(Err(err)) => {
                    self.fail(span, format!("detail_regex: {err}"));
                    return None;
                }
                other => other.and_then(Result::ok),
            };
            let mut parts = BTreeMap::new();
            for (k, v) in
                [("kind", &rec.kind), ("client", &rec.client), ("topic", &rec.topic), ("payload", &rec.payload)]
            {
                if let Some(v) = v {
                    parts.insert(k, format!("{v:?}"));
                }
            }
            if let Some(re) = &detail_regex {
                parts.insert("detail", format!("/{re}/"));
            }
            let shown: Vec<String> = parts.into_iter().map(|(k, v)| format!("{k} {v}")).collect();
            let pattern = RecordPattern {
                kind: rec.kind,
                client: rec.client,
                topic: rec.topic,
                payload: rec.payload,
                retain: rec.retain,
                codes: rec.codes,
                detail_regex,
            };
            (
                Matcher::Record { broker, pattern },
                format!("broker '{}' records {}", r.brokers[broker].name, shown.join(", ")),
            )
        } else if let Some(s) = e.setting {
            let device = self.device_ref(r.devices, e.device.as_deref(), span.clone())?;
            let known = serde_json::to_value(Settings::default()).unwrap_or_default();
            if known.get(&s.name).is_none() {
                self.fail(span, format!("setting: '{}' is not a settings field (see Settings in the core)", s.name));
                return None;
            }
            let value = serde_json::to_value(&s.value).unwrap_or(serde_json::Value::Null);
            let shown = format!("setting {} = {value}", s.name);
            (Matcher::Setting { device, name: s.name, value }, shown)
        } else {
            return None;
        };
        Some(Expect { what, within, text })
    }
}

struct Refs<'a> {
    devices: &'a [DeviceSpec],
    brokers: &'a [BrokerSpec],
    operators: &'a [OperatorSpec],
}

fn describe_publish(
    topic: &Option<String>,
    payload: &Option<String>,
    re: &Option<regex::Regex>,
    json: &Option<serde_json::Value>,
    retain: Option<bool>,
) -> String {
    let mut s = topic.clone().unwrap_or_else(|| "any topic".into());
    if let Some(p) = payload {
        s.push_str(&format!(" = {p}"));
    }
    if let Some(re) = re {
        s.push_str(&format!(" =~ /{re}/"));
    }
    if let Some(j) = json {
        s.push_str(&format!(" ⊇ {j}"));
    }
    match retain {
        Some(true) => s.push_str(" (retained)"),
        Some(false) => s.push_str(" (not retained)"),
        None => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, FileError> {
        Scenario::parse(Path::new("s.toml"), text)
    }

    #[test]
    fn errors_have_line_column_and_what_was_expected() {
        let e = parse("name = \"x\"\n[[step]]\nconsole = \"Power\"\nadvance = \"1s\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.contains("console and advance"), "{e}");

        let e = parse("[[step]]\nadvance = \"ten seconds\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 11), "{e}");
        assert!(e.to_string().starts_with("s.toml:2:11: advance:"), "{e}");

        let e = parse("[[step]]\nconsol = \"Power\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("unknown field `consol`"), "{e}");

        let e = parse("[[step]]\nexpect = { console_regex = \"(\" }\n").unwrap_err();
        assert!(e.message.starts_with("console_regex:"), "{e}");

        let e = parse("[[step]]\nmqtt_publish = { topic = \"t\" }\n").unwrap_err();
        assert!(e.message.contains("no broker for one"), "{e}");
        assert_eq!(e.line, 1, "{e}");

        let e = parse("[[broker]]\nhost = \"h\"\nfaults = [\"drop-after=x\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 11), "{e}");

        let e = parse("[[device]]\nsettings = { mqtt_hots = \"x\" }\n").unwrap_err();
        assert!(e.message.contains("mqtt_hots"), "{e}");

        let e = parse("[[step]]\nexpect = { setting = { name = \"nope\", value = 1 } }\n").unwrap_err();
        assert!(e.message.contains("'nope' is not a settings field"), "{e}");
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
