//! The test-vector table runner, shared by the host tests and the QEMU run.
//!
//! A vector file (`fixtures/vectors/*.vec`) holds vectors, each a heading, inputs and
//! the exact transcript the device must produce:
//!
//! ```text
//! === aws-iot-setup-line            a vector's name
//! # free text                       a comment
//! mac 5C:CF:7F:4B:33:16             the device's MAC (optional)
//! relays 4                          the number of relays (optional, default 1)
//! given SetOption4 1                typed in an earlier boot; the device then boots again
//! > Power TOGGLE                    typed on the serial console now
//! wait 1500                         let 1500 ms pass
//! temperature 1 26.5                temperature sensor 1 reads 26.5 °C from now on
//! 00:00:00.000 CMD: Power TOGGLE    an expected console line
//! -> stat/tasmota_4B3316/RESULT     the full topic of the publish logged just above,
//!                                   with " (retained)" when it carries the retain flag
//! ```
//!
//! Each vector boots a fresh device at uptime 0 (boot lines are not part of the
//! transcript), runs its inputs in order, then lets time pass until the device is idle
//! (nothing under way: no Backlog, restart, blink or button window pending, see
//! [`Device::is_busy`](crate::Device::is_busy)). The transcript is every console line and
//! publish topic, in order; it must equal the expected lines exactly.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::device::{BootReason, Device, Hardware, Output};
use crate::hardware::{Chip, EnergySpec, Model, SensorKind, SensorSpec};
use crate::identity::Mac;
use crate::mqtt::LinkFailure;
use crate::settings::Settings;
use crate::time::Instant;

/// One vector of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vector {
    pub name: String,
    /// Line number of the heading in its file.
    pub line: usize,
    pub hardware: Hardware,
    pub given: Vec<String>,
    pub steps: Vec<Step>,
    pub expected: Vec<String>,
}

/// An input of a vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A line typed on the serial console (a newline is added).
    Type(String),
    /// Let this many milliseconds pass.
    Wait(u64),
    /// Press (and release) a button.
    Button(u8),
    /// Set a switch on or off.
    Switch(u8, bool),
    /// Make the reads of DHT sensor n fail (`on`) or work again (`off`).
    SensorError(u8, bool),
    /// Temperature sensor n reads this many thousandths of a °C from now on.
    Temperature(u8, i32),
}

/// A vector file that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a vector file.
pub fn parse(text: &str) -> Result<Vec<Vector>, ParseError> {
    let mut out: Vec<Vector> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| ParseError { line, message };
        if let Some(name) = raw.strip_prefix("=== ") {
            out.push(Vector {
                name: name.trim().to_string(),
                line,
                hardware: Hardware::default(),
                given: Vec::new(),
                steps: Vec::new(),
                expected: Vec::new(),
            });
            continue;
        }
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let Some(v) = out.last_mut() else {
            return Err(err("text before the first '=== name' heading".to_string()));
        };
        if let Some(cmd) = raw.strip_prefix("> ") {
            v.steps.push(Step::Type(cmd.to_string()));
        } else if raw == ">" {
            v.steps.push(Step::Type(String::new()));
        } else if let Some(cmd) = raw.strip_prefix("given ") {
            v.given.push(cmd.to_string());
        } else if let Some(ms) = raw.strip_prefix("wait ") {
            let ms = ms.trim().parse().map_err(|_| err(format!("'wait' needs milliseconds, got '{ms}'")))?;
            v.steps.push(Step::Wait(ms));
        } else if let Some(mac) = raw.strip_prefix("mac ") {
            v.hardware.mac = mac.trim().parse::<Mac>().map_err(|e| err(format!("bad mac '{mac}': {e}")))?;
        } else if let Some(n) = raw.strip_prefix("relays ") {
            v.hardware.relays = match n.trim().parse() {
                Ok(n @ 1..=28) => n,
                _ => return Err(err(format!("'relays' takes 1..28, got '{n}'"))),
            };
        } else if let Some(n) = raw.strip_prefix("buttons ") {
            // The profile loader's limits: the device keeps switch states in a u32.
            v.hardware.buttons = match n.trim().parse() {
                Ok(n @ 0..=8) => n,
                _ => return Err(err(format!("'buttons' takes 0..8, got '{n}'"))),
            };
        } else if let Some(n) = raw.strip_prefix("switches ") {
            v.hardware.switches = match n.trim().parse() {
                Ok(n @ 0..=28) => n,
                _ => return Err(err(format!("'switches' takes 0..28, got '{n}'"))),
            };
        } else if let Some(spec) = raw.strip_prefix("sensor ") {
            v.hardware.sensors.push(parse_sensor(spec).map_err(err)?);
        } else if let Some(spec) = raw.strip_prefix("energy ") {
            let vals = milli_values(spec).map_err(err)?;
            let [volts, watts] = vals[..] else {
                return Err(err(format!("'energy' takes volts and watts, got '{spec}'")));
            };
            v.hardware.energy = Some(EnergySpec {
                voltage: Model::Constant(volts),
                load: Model::Constant(watts),
                factor: 950,
                total_wh: 0,
            });
        } else if let Some(chip) = raw.strip_prefix("chip ") {
            v.hardware.chip = match chip.trim() {
                "esp8266" => Chip::Esp8266,
                "esp32" => Chip::Esp32,
                "esp32c3" => Chip::Esp32C3,
                other => return Err(err(format!("'chip' takes esp8266, esp32 or esp32c3, got '{other}'"))),
            };
        } else if let Some(n) = raw.strip_prefix("button ") {
            let n = n.trim().parse().map_err(|_| err(format!("'button' takes a number, got '{n}'")))?;
            v.steps.push(Step::Button(n));
        } else if let Some(rest) = raw.strip_prefix("temperature ") {
            let bad = || err(format!("'temperature' takes a sensor number and °C, got '{rest}'"));
            let (n, value) = rest.trim().split_once(' ').ok_or_else(bad)?;
            let n = n.parse().map_err(|_| bad())?;
            let milli = milli_values(value).map_err(&err)?;
            let [milli] = milli[..] else { return Err(bad()) };
            v.steps.push(Step::Temperature(n, milli));
        } else if let Some(rest) = raw.strip_prefix("sensor-error ") {
            let (n, state) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
            let n = n.parse().map_err(|_| err(format!("'sensor-error' takes a number and on|off, got '{rest}'")))?;
            let on = match state {
                "on" => true,
                "off" => false,
                _ => return Err(err(format!("'sensor-error' takes a number and on|off, got '{rest}'"))),
            };
            v.steps.push(Step::SensorError(n, on));
        } else if let Some(rest) = raw.strip_prefix("switch ") {
            let (n, state) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
            let n = n.parse().map_err(|_| err(format!("'switch' takes a number and on|off, got '{rest}'")))?;
            let on = match state {
                "on" => true,
                "off" => false,
                _ => return Err(err(format!("'switch' takes a number and on|off, got '{rest}'"))),
            };
            v.steps.push(Step::Switch(n, on));
        } else if raw.starts_with("-> ") || raw.starts_with("error: ") || looks_like_console_line(raw) {
            v.expected.push(raw.to_string());
        } else {
            return Err(err(format!("expected '=== name', '> input', 'wait MS', 'given CMD', 'mac', 'relays', a console line 'HH:MM:SS.mmm ...' or '-> topic', got '{raw}'")));
        }
    }
    Ok(out)
}

/// Numbers with up to three decimals, as thousandths.
fn milli_values(text: &str) -> Result<Vec<i32>, String> {
    text.split_whitespace()
        .map(|t| {
            let (int, frac) = t.split_once('.').unwrap_or((t, ""));
            let neg = int.starts_with('-');
            let whole: i32 = int.parse().map_err(|_| format!("'{t}' is not a number"))?;
            if frac.len() > 3 || !frac.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!("'{t}' is not a number with at most 3 decimals"));
            }
            let f: i32 = format!("{frac:0<3}").parse().unwrap_or(0);
            let milli = whole.checked_mul(1000).and_then(|w| w.checked_add(if neg { -f } else { f }));
            milli.ok_or_else(|| format!("'{t}' is out of range"))
        })
        .collect()
}

/// `am2301|dht11 <temp> <hum> [gpio <n>]`, `ds18b20 <temp>`: a sensor with constant values.
fn parse_sensor(spec: &str) -> Result<SensorSpec, String> {
    let (kind, values) = spec.trim().split_once(' ').unwrap_or((spec.trim(), ""));
    let (values, gpio) = match values.split_once(" gpio ") {
        Some((v, g)) => (v, Some(g.trim().parse::<u8>().map_err(|_| format!("'gpio' takes a number, got '{g}'"))?)),
        None => (values, None),
    };
    let vals = milli_values(values)?;
    match (kind, &vals[..]) {
        ("am2301", [t, h]) => Ok(SensorSpec {
            kind: SensorKind::Am2301,
            temperature: Model::Constant(*t),
            humidity: Some(Model::Constant(*h)),
            id: None,
            gpio,
        }),
        ("dht11", [t, h]) => Ok(SensorSpec {
            kind: SensorKind::Dht11,
            temperature: Model::Constant(*t),
            humidity: Some(Model::Constant(*h)),
            id: None,
            gpio,
        }),
        ("ds18b20", [t]) => Ok(SensorSpec {
            kind: SensorKind::Ds18b20,
            temperature: Model::Constant(*t),
            humidity: None,
            id: Some(String::from("01144B2C3AAA")),
            gpio: None,
        }),
        _ => Err(format!("'sensor' takes 'am2301|dht11 TEMP HUM [gpio N]' or 'ds18b20 TEMP', got '{spec}'")),
    }
}

fn looks_like_console_line(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 13
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b'.'
        && b[12] == b' '
        && [0, 1, 3, 4, 6, 7, 9, 10, 11].iter().all(|&i| b[i].is_ascii_digit())
}

/// How long a vector may run before it counts as stuck.
const MAX_RUN_MS: u64 = 3_600_000;

/// Runs a vector and returns its transcript.
pub fn run(v: &Vector) -> Vec<String> {
    let settings = prepare(v);
    let mut device = Device::boot(v.hardware.clone(), settings, BootReason::PowerOn, Instant::from_millis(0));
    while device.poll_output().is_some() {}
    let mut transcript = Vec::new();
    let mut now = Instant::from_millis(0);
    for step in &v.steps {
        match step {
            Step::Type(line) => device.handle_serial_line(line, now),
            Step::Button(n) => {
                if let Err(e) = device.handle_button(*n, now) {
                    transcript.push(format!("error: {}", e.0));
                }
            }
            Step::Switch(n, on) => {
                if let Err(e) = device.handle_switch(*n, *on, now) {
                    transcript.push(format!("error: {}", e.0));
                }
            }
            Step::Temperature(n, milli) => {
                let what = crate::sensors::Quantity::Temperature;
                if let Err(e) = device.handle_sensor(*n, what, *milli, now) {
                    transcript.push(format!("error: {}", e.0));
                }
            }
            Step::SensorError(n, on) => {
                if let Err(e) = device.handle_sensor_read_error(*n, *on, now) {
                    transcript.push(format!("error: {}", e.0));
                }
            }
            Step::Wait(ms) => {
                now = now.plus_millis(*ms);
                run_until(&mut device, now, &mut transcript);
            }
        }
        drain(&mut device, &mut transcript);
    }
    settle(&mut device, now, &mut transcript);
    transcript
}

/// Lets time pass until the device is idle (or `MAX_RUN_MS` went by), collecting its
/// transcript; returns the time reached.
fn settle(device: &mut Device, mut now: Instant, transcript: &mut Vec<String>) -> Instant {
    let limit = now.plus_millis(MAX_RUN_MS);
    while device.is_busy() && now < limit {
        let Some(t) = device.poll_timeout() else {
            break;
        };
        now = t;
        device.handle_timeout(now);
        drain(device, transcript);
    }
    now
}

/// Types the `given` commands into an earlier boot, lets it settle (restarts included)
/// and returns the settings it ends with.
fn prepare(v: &Vector) -> Settings {
    let mut device =
        Device::boot(v.hardware.clone(), Settings::default(), BootReason::PowerOn, Instant::from_millis(0));
    let mut now = Instant::from_millis(0);
    for cmd in &v.given {
        device.handle_serial_line(cmd, now);
        now = settle(&mut device, now, &mut Vec::new());
        if device.is_stopped() {
            let settings = device.settings().clone();
            device = Device::boot(v.hardware.clone(), settings, BootReason::Restart, now);
        }
        while device.poll_output().is_some() {}
    }
    device.settings().clone()
}

/// Runs everything due up to `until`.
fn run_until(device: &mut Device, until: Instant, transcript: &mut Vec<String>) {
    while let Some(t) = device.poll_timeout().filter(|t| *t <= until) {
        device.handle_timeout(t);
        drain(device, transcript);
    }
}

fn drain(device: &mut Device, transcript: &mut Vec<String>) {
    while let Some(out) = device.poll_output() {
        match out {
            // What the serial console shows (SerialLog decides, in the core).
            Output::Log(line) if line.serial => transcript.push(line.to_string()),
            Output::Log(_) => {}
            // No broker answers in a vector: every connect fails at TCP.
            Output::Connect(_) => {
                let now = device.now();
                device.handle_link_failed(LinkFailure::Tcp, now);
            }
            Output::Transmit(_) | Output::Close => {}
            Output::Publish(p) => {
                transcript.push(format!("-> {}{}", p.topic, if p.retain { " (retained)" } else { "" }))
            }
            Output::Relays(_) | Output::SaveSettings(_) | Output::Restart(_) => {}
        }
    }
}

/// A vector whose transcript differs from what it expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub line: usize,
    pub expected: Vec<String>,
    pub actual: Vec<String>,
}

impl core::fmt::Display for Failure {
    /// The vector, then a line-by-line comparison: `-` expected only, `+` produced only.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        writeln!(f, "vector '{}' (line {}):", self.name, self.line)?;
        let n = self.expected.len().max(self.actual.len());
        for i in 0..n {
            match (self.expected.get(i), self.actual.get(i)) {
                (Some(e), Some(a)) if e == a => writeln!(f, "    {e}")?,
                (e, a) => {
                    if let Some(e) = e {
                        writeln!(f, "  - {e}")?;
                    }
                    if let Some(a) = a {
                        writeln!(f, "  + {a}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs a vector and compares its transcript.
pub fn check(v: &Vector) -> Result<(), Failure> {
    let actual = run(v);
    if actual == v.expected {
        Ok(())
    } else {
        Err(Failure { name: v.name.clone(), line: v.line, expected: v.expected.clone(), actual })
    }
}

/// Every vector file of `fixtures/vectors` (found at build time by `build.rs`), embedded,
/// so the QEMU build needs no files.
pub const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/vector_files.rs"));
