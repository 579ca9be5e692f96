//! Steps: the one table of step kinds, what each kind is checked into (an [`Action`]),
//! and the expectations steps carry.
//!
//! Adding a step kind is one line in [`step_kinds!`]'s table (its TOML key, its raw
//! type, its role and the [`Checker`] method that checks it) plus that method and what
//! the runner does with the new [`Action`]; the raw TOML fields, the "one action per
//! step" check, the lists in error messages and the dispatch all come from the table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tasmota_core::sensors::Quantity;
use tasmota_core::Settings;
use toml::Spanned;

use super::file::{BrokerSpec, Checker, DeviceSpec, OperatorSpec, Span, DEFAULT_WITHIN};
use super::operator::{AckKind, Protocol, PublishProperties};
use crate::broker::fault::FaultRule;

/// What a step kind does to the scenario's time and read positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Does something to a device, broker or operator.
    Act,
    /// Lets time pass.
    Wait,
    /// Looks at what happened.
    Check,
}

/// Generates, from one list of `ROLE key: RawType => handler`, the raw step table
/// ([`RawStep`]), the list of kinds ([`STEP_KINDS`]) and the dispatch to the handlers.
macro_rules! step_kinds {
    ($($role:ident $kind:ident: $ty:ty => $handler:ident,)*) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawStep {
            device: Option<String>,
            broker: Option<String>,
            operator: Option<String>,
            $($kind: Option<$ty>,)*
            /// For `expect_order`.
            within: Option<Spanned<String>>,
        }

        /// Every step kind with its role, in the table's order.
        pub const STEP_KINDS: &[(&str, Role)] = &[$((stringify!($kind), Role::$role)),*];

        impl RawStep {
            /// The kinds this step sets, in the table's order.
            fn kinds(&self) -> Vec<(&'static str, Role)> {
                let mut set = Vec::new();
                $(if self.$kind.is_some() {
                    set.push((stringify!($kind), Role::$role));
                })*
                set
            }

            /// Hands the one kind this step sets to its handler.
            fn dispatch(self, c: &mut Checker, at: &mut At) -> Option<Action> {
                let RawStep { device, broker, operator, within, $($kind),* } = self;
                (at.device, at.broker, at.operator, at.within) = (device, broker, operator, within);
                $(if let Some(v) = $kind {
                    return c.$handler(v, at);
                })*
                None
            }
        }
    };
}

// The order is the order of `RawStep`'s fields (serde lists them in that order).
step_kinds! {
    Act console: String => step_console,
    Act mqtt_publish: RawPublish => step_mqtt_publish,
    Wait advance: Spanned<String> => step_advance,
    Act restart: bool => step_restart,
    Act power_off: bool => step_power_off,
    Act power_on: bool => step_power_on,
    Act fault: Spanned<String> => step_fault,
    Act device_fault: Spanned<String> => step_device_fault,
    Act broker_restart: Spanned<String> => step_broker_restart,
    Check expect: RawExpect => step_expect,
    Check expect_not: RawExpect => step_expect_not,
    Check expect_order: Vec<RawExpect> => step_expect_order,
    Act button_press: Spanned<u8> => step_button_press,
    Act switch: Spanned<RawSwitch> => step_switch,
    Act sensor: Spanned<RawSensorSet> => step_sensor,
    Act http: Spanned<RawHttp> => step_http,
}

/// "a, b, c or d"
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// A step's own keys besides its kind, and what it may refer to.
pub(super) struct At<'a> {
    pub span: Span,
    /// The step's number (1-based).
    pub number: usize,
    device: Option<String>,
    broker: Option<String>,
    operator: Option<String>,
    within: Option<Spanned<String>>,
    pub refs: Refs<'a>,
}

impl<'a> At<'a> {
    pub fn new(span: Span, number: usize, refs: Refs<'a>) -> At<'a> {
        At { span, number, device: None, broker: None, operator: None, within: None, refs }
    }
}

pub(super) struct Refs<'a> {
    pub devices: &'a [DeviceSpec],
    pub brokers: &'a [BrokerSpec],
    pub operators: &'a [OperatorSpec],
}

// ---- raw TOML of the step kinds ------------------------------------------------------------

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
    /// DHT `index` (among the DHT sensors) fails its reads from now on (`true`) or reads
    /// again (`false`).
    read_error: Option<bool>,
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
    user_properties: Option<Spanned<RawUserProperties>>,
    /// MQTT 5 PUBLISH properties (see [`RawProperties`]).
    message_expiry: Option<Spanned<String>>,
    response_topic: Option<String>,
    correlation_data: Option<String>,
    content_type: Option<String>,
}

/// The MQTT 5 properties of a PUBLISH, sent (`mqtt_publish`) or looked for (`publish`);
/// both take these keys.
struct RawProperties {
    user_properties: Option<Spanned<RawUserProperties>>,
    /// A duration in whole seconds (`"30s"`, `"1h"`).
    message_expiry: Option<Spanned<String>>,
    response_topic: Option<String>,
    /// As text; its UTF-8 bytes are the Correlation Data.
    correlation_data: Option<String>,
    content_type: Option<String>,
}

/// `{ key = "value", ... }` (in key order), or `[["key", "value"], ...]` (in this order;
/// a key may repeat).
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "user_properties must be a table of strings ({ key = \"value\" }) or a list of [key, value] pairs"
)]
enum RawUserProperties {
    Table(BTreeMap<String, String>),
    Pairs(Vec<(String, String)>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAck {
    packet: Spanned<String>,
    codes: Option<Vec<u8>>,
    /// PUBACK: the topic of the PUBLISH it answers; SUBACK: one of the filters.
    topic: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    members: Vec<String>,
    reference: String,
    topic: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    device: Option<String>,
    operator: Option<String>,
    broker: Option<String>,
    console: Option<String>,
    console_regex: Option<Spanned<String>>,
    publish: Option<RawSeenPublish>,
    record: Option<RawRecord>,
    setting: Option<RawSetting>,
    ack: Option<RawAck>,
    shared: Option<RawShared>,
    within: Option<Spanned<String>>,
    /// Where to read from: the last action (default), `start` or `step N`.
    since: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeenPublish {
    topic: Option<String>,
    payload: Option<String>,
    payload_regex: Option<Spanned<String>>,
    json: Option<toml::Value>,
    retain: Option<bool>,
    user_properties: Option<Spanned<RawUserProperties>>,
    /// MQTT 5 PUBLISH properties (see [`RawProperties`]).
    message_expiry: Option<Spanned<String>>,
    response_topic: Option<String>,
    correlation_data: Option<String>,
    content_type: Option<String>,
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
    detail_regex: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetting {
    name: String,
    value: toml::Value,
}

// ---- the checked steps -------------------------------------------------------------------

/// One step, where it is in the file, and what it does.
#[derive(Debug, Clone)]
pub struct Step {
    pub line: usize,
    pub column: usize,
    /// Whether it acts, lets time pass or checks (from [`STEP_KINDS`]).
    pub role: Role,
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
        properties: PublishProperties,
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
    SensorError {
        device: usize,
        index: u8,
        failing: bool,
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

/// Where an expectation starts reading the streams it looks at (device consoles,
/// operators' messages, broker records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Since {
    /// After the last action step, or after the previous match in the same stream if
    /// that came later (the default).
    #[default]
    LastAction,
    /// From the scenario's start (`since = "start"`).
    Start,
    /// From the instant step N (1-based) began (`since = "step N"`).
    Step(usize),
}

impl std::fmt::Display for Since {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Since::LastAction => f.write_str("the last action or match"),
            Since::Start => f.write_str("the start"),
            Since::Step(n) => write!(f, "step {n}"),
        }
    }
}

/// What must (or must not) be seen.
#[derive(Debug, Clone)]
pub struct Expect {
    pub what: Matcher,
    pub within: Duration,
    /// Where in each stream it starts reading.
    pub since: Since,
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
    /// A CONNACK, SUBACK or PUBACK an operator received.
    Ack {
        operator: usize,
        pattern: AckPattern,
    },
    /// Every message `reference` received on `topic` reached exactly one of `members`
    /// (a shared subscription's group), and they received nothing else there. Checked
    /// once, when the step runs.
    Shared {
        members: Vec<usize>,
        reference: usize,
        topic: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct AckPattern {
    pub kind: AckKind,
    pub codes: Option<Vec<u8>>,
    pub topic: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PublishPattern {
    pub topic: Option<String>,
    pub payload: Option<String>,
    pub payload_regex: Option<regex::Regex>,
    pub json: Option<serde_json::Value>,
    pub retain: Option<bool>,
    /// MQTT 5: each of these user properties is among the message's.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5: the rest of the properties, each as given when given.
    pub message_expiry: Option<u32>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<String>,
    pub content_type: Option<String>,
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

// ---- checking each kind --------------------------------------------------------------------

impl Checker<'_> {
    /// Checks one `[[step]]`: exactly one kind, then that kind's handler.
    pub(super) fn step(&mut self, s: RawStep, at: &mut At) -> Option<(Role, Action)> {
        let span = at.span.clone();
        let kinds = s.kinds();
        let role = match kinds[..] {
            [] => {
                // Actions first, then expectations.
                let (checks, acts): (Vec<_>, Vec<_>) = STEP_KINDS.iter().partition(|(_, r)| *r == Role::Check);
                let names: Vec<&str> = acts.iter().chain(&checks).map(|(k, _)| *k).collect();
                self.fail(span, format!("a step needs one action: {}", one_of(&names)));
                return None;
            }
            [(_, role)] => role,
            _ => {
                let names: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
                self.fail(span, format!("a step has one action, this one has {}", names.join(" and ")));
                return None;
            }
        };
        if s.within.is_some() && s.expect_order.is_none() {
            self.fail(span, "within: at step level only for expect_order (put it inside expect = { ... })");
        }
        s.dispatch(self, at).map(|a| (role, a))
    }

    fn at_device(&mut self, at: &At) -> Option<usize> {
        self.device_ref(at.refs.devices, at.device.as_deref(), at.span.clone())
    }

    fn at_broker(&mut self, at: &At) -> Option<usize> {
        self.broker_ref(at.refs.brokers, at.broker.as_deref(), at.span.clone())
    }

    fn step_console(&mut self, line: String, at: &mut At) -> Option<Action> {
        Some(Action::Console { device: self.at_device(at)?, line })
    }

    fn step_mqtt_publish(&mut self, p: RawPublish, at: &mut At) -> Option<Action> {
        let name = p.operator.as_deref().or(at.operator.as_deref());
        let operator = self.operator_ref(at.refs.operators, name, at.span.clone())?;
        if p.qos > 1 {
            self.fail(at.span.clone(), "mqtt_publish: qos is 0 or 1");
            return None;
        }
        let raw = RawProperties {
            user_properties: p.user_properties,
            message_expiry: p.message_expiry,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            content_type: p.content_type,
        };
        let properties = self.properties(raw, &at.refs.operators[operator], "mqtt_publish", at.span.clone())?;
        Some(Action::MqttPublish {
            operator,
            topic: p.topic,
            payload: p.payload,
            retain: p.retain,
            qos: p.qos,
            properties,
        })
    }

    fn step_advance(&mut self, d: Spanned<String>, _: &mut At) -> Option<Action> {
        Some(Action::Advance(self.duration(&d, "advance")))
    }

    /// `restart`, `power_off` and `power_on` take `true`: the device they act on.
    fn power_flag(&mut self, on: bool, at: &At) -> Option<usize> {
        if !on {
            self.fail(at.span.clone(), "restart, power_off and power_on take 'true'");
            return None;
        }
        self.at_device(at)
    }

    fn step_restart(&mut self, on: bool, at: &mut At) -> Option<Action> {
        Some(Action::Restart { device: self.power_flag(on, at)? })
    }

    fn step_power_off(&mut self, on: bool, at: &mut At) -> Option<Action> {
        Some(Action::PowerOff { device: self.power_flag(on, at)? })
    }

    fn step_power_on(&mut self, on: bool, at: &mut At) -> Option<Action> {
        Some(Action::PowerOn { device: self.power_flag(on, at)? })
    }

    /// `v` parsed as a `T`, or an error at `v` named `what`.
    fn parsed<T: std::str::FromStr<Err: std::fmt::Display>>(&mut self, v: &Spanned<String>, what: &str) -> Option<T> {
        match v.get_ref().parse::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                self.fail(v.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    fn step_fault(&mut self, f: Spanned<String>, at: &mut At) -> Option<Action> {
        let broker = self.at_broker(at)?;
        Some(Action::Fault { broker, rule: self.parsed(&f, "fault")? })
    }

    fn step_device_fault(&mut self, f: Spanned<String>, at: &mut At) -> Option<Action> {
        let device = self.at_device(at)?;
        Some(Action::DeviceFault { device, fault: self.parsed(&f, "device_fault")? })
    }

    fn step_broker_restart(&mut self, d: Spanned<String>, at: &mut At) -> Option<Action> {
        let broker = self.at_broker(at)?;
        let down = self.duration(&d, "broker_restart (the downtime)");
        Some(Action::BrokerRestart { broker, down })
    }

    fn step_button_press(&mut self, b: Spanned<u8>, at: &mut At) -> Option<Action> {
        let device = self.at_device(at)?;
        let have = at.refs.devices[device].hardware.buttons;
        if *b.get_ref() == 0 || *b.get_ref() > have {
            self.fail(b.span(), format!("button_press: the device has buttons 1..={have}"));
            return None;
        }
        Some(Action::ButtonPress { device, button: *b.get_ref() })
    }

    fn step_switch(&mut self, sw: Spanned<RawSwitch>, at: &mut At) -> Option<Action> {
        let device = self.at_device(at)?;
        let have = at.refs.devices[device].hardware.switches;
        let RawSwitch { index, on } = *sw.get_ref();
        if index == 0 || index > have {
            self.fail(sw.span(), format!("switch: the device has switches 1..={have}"));
            return None;
        }
        Some(Action::Switch { device, index, on })
    }

    fn step_sensor(&mut self, set: Spanned<RawSensorSet>, at: &mut At) -> Option<Action> {
        let device = self.at_device(at)?;
        let r = set.get_ref();
        if let Some(failing) = r.read_error {
            if r.temperature.is_some() || r.humidity.is_some() || r.voltage.is_some() || r.power.is_some() {
                self.fail(set.span(), "sensor: read_error goes alone (no temperature, humidity, voltage, power)");
                return None;
            }
            return Some(Action::SensorError { device, index: r.index, failing });
        }
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
            self.fail(set.span(), "sensor: give exactly one of temperature, humidity, voltage, power, read_error");
            return None;
        };
        let milli = (value * 1000.0).round() as i32;
        Some(Action::Sensor { device, index: r.index, quantity, milli })
    }

    fn step_http(&mut self, h: Spanned<RawHttp>, at: &mut At) -> Option<Action> {
        let device = self.at_device(at)?;
        let h = h.into_inner();
        Some(Action::Http { device, cmnd: h.cmnd, user: h.user, password: h.password, status: h.status, body: h.body })
    }

    fn step_expect(&mut self, e: RawExpect, at: &mut At) -> Option<Action> {
        self.expect(e, at).map(Action::Expect)
    }

    fn step_expect_not(&mut self, e: RawExpect, at: &mut At) -> Option<Action> {
        let e = self.expect(e, at)?;
        if let Matcher::Shared { .. } = e.what {
            self.fail(at.span.clone(), "shared: only in expect (not expect_not or expect_order)");
            return None;
        }
        Some(Action::ExpectNot(e))
    }

    fn step_expect_order(&mut self, items: Vec<RawExpect>, at: &mut At) -> Option<Action> {
        let within = match &at.within {
            Some(w) => self.duration(w, "within"),
            None => DEFAULT_WITHIN,
        };
        if items.is_empty() {
            self.fail(at.span.clone(), "expect_order: an empty list");
            return None;
        }
        if let Some(since) = items.iter().skip(1).find_map(|e| e.since.as_ref()) {
            self.fail(since.span(), "since: in expect_order only the first item looks back (the others read after it)");
            return None;
        }
        let items: Vec<Expect> = items.into_iter().filter_map(|e| self.expect(e, at)).collect();
        if items.iter().any(|e| matches!(e.what, Matcher::Shared { .. })) {
            self.fail(at.span.clone(), "shared: only in expect (not expect_not or expect_order)");
            return None;
        }
        Some(Action::ExpectOrder { items, within })
    }

    fn expect(&mut self, e: RawExpect, at: &At) -> Option<Expect> {
        let (span, r) = (at.span.clone(), &at.refs);
        let set = [
            e.console.is_some(),
            e.console_regex.is_some(),
            e.publish.is_some(),
            e.record.is_some(),
            e.setting.is_some(),
            e.ack.is_some(),
            e.shared.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            self.fail(
                span,
                "an expectation names one of: console, console_regex, publish, record, setting, ack, shared",
            );
            return None;
        }
        if let (Some(_), Some(w)) = (&e.shared, &e.within) {
            self.fail(
                w.span(),
                "shared: checks what was received when the step runs (let time pass with advance first); it takes no within",
            );
            return None;
        }
        let within = match &e.within {
            Some(w) => self.duration(w, "within"),
            None => DEFAULT_WITHIN,
        };
        let since = match &e.since {
            Some(v) => self.since(v, at.number)?,
            None => Since::LastAction,
        };
        let (what, mut text) = if let Some(text) = e.console {
            let device = self.device_ref(r.devices, e.device.as_deref(), span)?;
            let shown = format!("console {text:?}");
            (Matcher::Console { device, text }, shown)
        } else if let Some(re) = e.console_regex {
            let device = self.device_ref(r.devices, e.device.as_deref(), span.clone())?;
            let shown = format!("console matching /{}/", re.get_ref());
            (Matcher::ConsoleRegex { device, re: self.regex(&re, "console_regex")? }, shown)
        } else if let Some(p) = e.publish {
            let operator = self.operator_ref(r.operators, e.operator.as_deref(), span.clone())?;
            let payload_regex = match &p.payload_regex {
                Some(re) => Some(self.regex(re, "payload_regex")?),
                None => None,
            };
            let json = p.json.map(|v| serde_json::to_value(v).unwrap_or(serde_json::Value::Null));
            let raw = RawProperties {
                user_properties: p.user_properties,
                message_expiry: p.message_expiry,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                content_type: p.content_type,
            };
            let props = self.properties(raw, &r.operators[operator], "publish", span.clone())?;
            let mut shown = describe_publish(&p.topic, &p.payload, &payload_regex, &json, p.retain);
            shown.push_str(&props.describe());
            let pattern = PublishPattern {
                topic: p.topic,
                payload: p.payload,
                payload_regex,
                json,
                retain: p.retain,
                user_properties: props.user_properties,
                message_expiry: props.message_expiry,
                response_topic: props.response_topic,
                correlation_data: props.correlation_data.map(|b| String::from_utf8_lossy(&b).into_owned()),
                content_type: props.content_type,
            };
            (
                Matcher::Publish { operator, pattern },
                format!("operator '{}' receives {shown}", r.operators[operator].name),
            )
        } else if let Some(rec) = e.record {
            let broker = self.broker_ref(r.brokers, e.broker.as_deref(), span.clone())?;
            let detail_regex = match &rec.detail_regex {
                Some(re) => Some(self.regex(re, "detail_regex")?),
                None => None,
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
            let fields: Vec<&str> =
                known.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            if !fields.contains(&s.name.as_str()) {
                self.fail(
                    span,
                    format!("setting: '{}' is not a settings field; {}", s.name, closest(&s.name, &fields)),
                );
                return None;
            }
            let value = serde_json::to_value(&s.value).unwrap_or(serde_json::Value::Null);
            let shown = format!("setting {} = {value}", s.name);
            (Matcher::Setting { device, name: s.name, value }, shown)
        } else if let Some(a) = e.ack {
            let operator = self.operator_ref(r.operators, e.operator.as_deref(), span.clone())?;
            let spec = &r.operators[operator];
            let Some(kind) = AckKind::ALL.into_iter().find(|k| k.name() == a.packet.get_ref().as_str()) else {
                self.fail(
                    a.packet.span(),
                    format!("ack: '{}': the packet is CONNACK, SUBACK or PUBACK", a.packet.get_ref()),
                );
                return None;
            };
            if kind == AckKind::PubAck && a.codes.is_some() && spec.protocol == Protocol::Mqtt311 {
                self.fail(
                    a.packet.span(),
                    format!(
                        "ack: an MQTT 3.1.1 PUBACK has no reason code; operator '{}' needs protocol = 5 for codes",
                        spec.name
                    ),
                );
                return None;
            }
            let mut shown = format!("operator '{}' receives {}", spec.name, kind.name());
            if let Some(codes) = &a.codes {
                let codes: Vec<String> = codes.iter().map(|c| format!("0x{c:02X}")).collect();
                shown.push_str(&format!(" [{}]", codes.join(", ")));
            }
            if let Some(t) = &a.topic {
                shown.push_str(&format!(" for {t}"));
            }
            (Matcher::Ack { operator, pattern: AckPattern { kind, codes: a.codes, topic: a.topic } }, shown)
        } else if let Some(sh) = e.shared {
            let reference = self.operator_ref(r.operators, Some(&sh.reference), span.clone())?;
            let mut members = Vec::new();
            for m in &sh.members {
                let i = self.operator_ref(r.operators, Some(m), span.clone())?;
                if members.contains(&i) || i == reference {
                    self.fail(
                        span,
                        format!("shared: operator '{m}' named twice (members and reference are all different)"),
                    );
                    return None;
                }
                members.push(i);
            }
            if members.len() < 2 {
                self.fail(span, "shared: members names the operators of one share group, at least two");
                return None;
            }
            let broker = r.operators[reference].broker;
            if let Some(&other) = members.iter().find(|&&m| r.operators[m].broker != broker) {
                self.fail(
                    span,
                    format!("shared: operator '{}' is on another broker than the reference", r.operators[other].name),
                );
                return None;
            }
            let shown = format!(
                "every {} operator '{}' receives reaches exactly one of {}",
                sh.topic.as_deref().unwrap_or("message"),
                sh.reference,
                sh.members.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", ")
            );
            (Matcher::Shared { members, reference, topic: sh.topic }, shown)
        } else {
            return None;
        };
        if since != Since::LastAction {
            text.push_str(&format!(" (since {since})"));
        }
        Some(Expect { what, within, since, text })
    }

    /// The MQTT 5 properties of a PUBLISH, for `operator`: none at all for a 3.1.1 one.
    fn properties(
        &mut self,
        raw: RawProperties,
        operator: &OperatorSpec,
        what: &str,
        span: Span,
    ) -> Option<PublishProperties> {
        let user_properties = match raw.user_properties {
            None => Vec::new(),
            Some(u) => match u.into_inner() {
                RawUserProperties::Table(t) => t.into_iter().collect(),
                RawUserProperties::Pairs(p) => p,
            },
        };
        let message_expiry = match &raw.message_expiry {
            None => None,
            Some(d) => {
                let t = self.duration(d, &format!("{what}: message_expiry"));
                if t.subsec_millis() != 0 || t.is_zero() || t.as_secs() > u64::from(u32::MAX) {
                    self.fail(d.span(), format!("{what}: message_expiry: whole seconds, 1s to 4294967295s"));
                    return None;
                }
                Some(t.as_secs() as u32)
            }
        };
        let p = PublishProperties {
            user_properties,
            message_expiry,
            response_topic: raw.response_topic,
            correlation_data: raw.correlation_data.map(String::into_bytes),
            content_type: raw.content_type,
        };
        if !p.is_empty() && operator.protocol == Protocol::Mqtt311 {
            self.fail(
                span,
                format!(
                    "{what}: MQTT 3.1.1 has no PUBLISH properties (user_properties, message_expiry, response_topic, \
                     correlation_data, content_type); operator '{}' needs protocol = 5",
                    operator.name
                ),
            );
            return None;
        }
        Some(p)
    }

    /// A regex, or an error at the regex's own line and column.
    fn regex(&mut self, re: &Spanned<String>, what: &str) -> Option<regex::Regex> {
        self.parsed(re, what)
    }

    /// `since = "start"` or `since = "step N"` with N before step `number`.
    fn since(&mut self, v: &Spanned<String>, number: usize) -> Option<Since> {
        let text = v.get_ref().trim();
        let n = match text.strip_prefix("step") {
            None if text == "start" => return Some(Since::Start),
            None => None,
            Some(n) => n.trim().parse::<usize>().ok(),
        };
        match n {
            Some(n) if n >= 1 && n < number => Some(Since::Step(n)),
            Some(n) => {
                self.fail(v.span(), format!("since: step {n} is not before this step (step {number})"));
                None
            }
            None => {
                self.fail(
                    v.span(),
                    format!("since: '{text}': expected \"start\" or \"step N\" (an earlier step's number)"),
                );
                None
            }
        }
    }
}

/// "did you mean ...?" from the names nearest to `wanted` (by edit distance), or the
/// whole list when none is near.
pub(super) fn closest(wanted: &str, names: &[&str]) -> String {
    let mut near: Vec<(usize, &str)> =
        names.iter().map(|n| (edit_distance(wanted, n), *n)).filter(|(d, _)| *d <= 3).collect();
    near.sort();
    match near.len() {
        0 => format!("the fields are {}", names.join(", ")),
        _ => format!("did you mean {}?", one_of(&near.iter().take(3).map(|(_, n)| *n).collect::<Vec<_>>())),
    }
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
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
