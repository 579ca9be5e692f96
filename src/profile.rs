//! Device profiles: `fixtures/devices/*.toml`, chosen with `--profile NAME|PATH`.
//!
//! A profile says what the device is built from (module, chip and clock, relays,
//! buttons, switches, LEDs, sensors with their value models, an energy monitor, free
//! heap and the cost of TLS) and, optionally, the settings a fresh device starts with.
//! The shipped profiles are compiled in, so `--profile sonoff-4ch` works from any
//! directory; a path (anything with a `/` or ending in `.toml`) reads a file.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Deserialize;
use tasmota_core::hardware::{EnergySpec, HeapModel, Model, SensorKind, SensorSpec};
use tasmota_core::telemetry::Wifi;
use tasmota_core::{Chip, Hardware, Mac, Settings};

use crate::duration::parse_duration;

/// The profiles shipped in `fixtures/devices/`, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("sonoff-basic", include_str!("../fixtures/devices/sonoff-basic.toml")),
    ("sonoff-4ch", include_str!("../fixtures/devices/sonoff-4ch.toml")),
    ("sonoff-pow-r2", include_str!("../fixtures/devices/sonoff-pow-r2.toml")),
    ("esp32-climate", include_str!("../fixtures/devices/esp32-climate.toml")),
    ("wall-switch-2gang", include_str!("../fixtures/devices/wall-switch-2gang.toml")),
];

/// Trace files the built-in profiles name, as they name them.
const BUILT_IN_TRACES: &[(&str, &str)] =
    &[("../traces/boiler-temperature.csv", include_str!("../fixtures/traces/boiler-temperature.csv"))];

/// The profile used when none is named.
pub const DEFAULT: &str = "sonoff-basic";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile '{name}'; built in: {known} (or give a path to a .toml file)")]
    Unknown { name: String, known: String },
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A loaded profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub hardware: Hardware,
    settings: Settings,
}

impl Profile {
    /// A built-in profile by name, or a profile file by path.
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        let is_path = name_or_path.contains('/') || name_or_path.ends_with(".toml");
        if !is_path {
            let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) else {
                let known = BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
                return Err(ProfileError::Unknown { name: name_or_path.to_string(), known });
            };
            let path = PathBuf::from(format!("fixtures/devices/{name_or_path}.toml"));
            return Profile::parse(text, &path, None);
        }
        let path = PathBuf::from(name_or_path);
        let text =
            std::fs::read_to_string(&path).map_err(|source| ProfileError::Read { path: path.clone(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Profile::parse(&text, &path, Some(&base))
    }

    /// Parses profile text; `path` names it in errors and `base` is where relative trace
    /// files are looked up (`None`: a built-in profile, whose traces are compiled in).
    pub fn parse(text: &str, path: &Path, base: Option<&Path>) -> Result<Profile, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid { path: path.to_path_buf(), message };
        let raw: RawProfile = toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        if let Some(settings) = &raw.settings {
            tasmota_core::limits::check(settings.get_ref()).map_err(|e| {
                let key = e.field.split(['[', ' ']).next().unwrap_or_default();
                let (line, column) = locate_toml_key(text, settings.span().start, key);
                invalid(format!("line {line}, column {column}: settings.{}: {}", e.field, e.problem))
            })?;
        }
        raw.build(base).map_err(invalid)
    }

    /// The settings a device with no saved settings starts from.
    pub fn initial_settings(&self) -> Settings {
        self.settings.clone()
    }

    /// The same profile with another MAC.
    pub fn with_mac(mut self, mac: Mac) -> Profile {
        self.hardware.mac = mac;
        self
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    module: String,
    module_number: u8,
    chip: String,
    cpu_mhz: Option<u16>,
    #[serde(default = "one")]
    relays: u8,
    #[serde(default)]
    buttons: u8,
    #[serde(default)]
    switches: u8,
    #[serde(default)]
    leds: u8,
    mac: Option<String>,
    /// Free heap in bytes with no TLS link.
    heap_free: Option<u32>,
    /// A TLS handshake's duration on the virtual clock, e.g. "1200ms".
    tls_handshake: Option<String>,
    /// When WiFi is up after boot, e.g. "2250ms".
    wifi_connect: Option<String>,
    wifi: Option<RawWifi>,
    #[serde(default, rename = "sensor")]
    sensors: Vec<RawSensor>,
    energy: Option<RawEnergy>,
    /// Settings a fresh device starts with (the fields of the settings file), typed here
    /// so that a wrong value is reported at its line and column.
    settings: Option<toml::Spanned<Settings>>,
}

fn one() -> u8 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWifi {
    ssid: String,
    bssid: String,
    channel: u8,
    rssi: u8,
    signal: i8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSensor {
    kind: String,
    temperature: RawModel,
    humidity: Option<RawModel>,
    id: Option<String>,
    /// The GPIO of a DHT sensor; needed when a profile has more than one (their JSON keys
    /// carry it).
    gpio: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnergy {
    voltage: RawModel,
    load: RawModel,
    #[serde(default = "unity")]
    factor: f64,
    #[serde(default)]
    total_wh: u32,
}

fn unity() -> f64 {
    1.0
}

/// `{ model = "constant", value = 22.5 }`, `{ model = "ramp", start, per_hour, min, max }`,
/// `{ model = "walk", start, step, min, max, every = "60s", seed }`,
/// `{ model = "trace", file = "traces/x.csv" }` (lines `seconds,value`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: String,
    value: Option<f64>,
    start: Option<f64>,
    per_hour: Option<f64>,
    step: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    every: Option<String>,
    seed: Option<u64>,
    file: Option<String>,
}

/// A value in thousandths.
fn milli(v: f64) -> i32 {
    (v * 1000.0).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

fn millis_of(text: &str, what: &str) -> Result<u64, String> {
    parse_duration(text).map(|d| d.as_millis() as u64).map_err(|e| format!("{what}: {e}"))
}

impl RawModel {
    fn build(&self, what: &str, base: Option<&Path>, seed: u64) -> Result<Model, String> {
        let need = |v: Option<f64>, key: &str| v.ok_or_else(|| format!("{what}: model '{}' needs '{key}'", self.model));
        match self.model.as_str() {
            "constant" => Ok(Model::Constant(milli(need(self.value, "value")?))),
            "ramp" => {
                let min = self.min.unwrap_or(f64::from(i32::MIN) / 1000.0);
                let max = self.max.unwrap_or(f64::from(i32::MAX) / 1000.0);
                if min > max {
                    return Err(format!("{what}: min {min} is above max {max}"));
                }
                Ok(Model::Ramp {
                    start: milli(need(self.start, "start")?),
                    per_hour: milli(need(self.per_hour, "per_hour")?),
                    min: milli(min),
                    max: milli(max),
                })
            }
            "walk" => {
                let every = millis_of(self.every.as_deref().unwrap_or("60s"), what)? / 1000;
                if every == 0 {
                    return Err(format!("{what}: 'every' must be at least 1s"));
                }
                let (min, max) = (need(self.min, "min")?, need(self.max, "max")?);
                if min > max {
                    return Err(format!("{what}: min {min} is above max {max}"));
                }
                Ok(Model::Walk {
                    start: milli(need(self.start, "start")?),
                    step: milli(need(self.step, "step")?.abs()),
                    min: milli(min),
                    max: milli(max),
                    every_s: every as u32,
                    seed: self.seed.unwrap_or(seed),
                })
            }
            "trace" => {
                let file = self.file.as_deref().ok_or_else(|| format!("{what}: model 'trace' needs 'file'"))?;
                let (name, text) = match base {
                    Some(base) => {
                        let path = base.join(file);
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| format!("{what}: cannot read trace {}: {e}", path.display()))?;
                        (path.display().to_string(), text)
                    }
                    None => match BUILT_IN_TRACES.iter().find(|(n, _)| *n == file) {
                        Some((_, text)) => (file.to_string(), text.to_string()),
                        None => return Err(format!("{what}: no built-in trace '{file}'")),
                    },
                };
                Ok(Model::Trace(Rc::new(parse_trace(&text).map_err(|e| format!("{name}: {e}"))?)))
            }
            other => Err(format!("{what}: unknown model '{other}' (constant, ramp, walk, trace)")),
        }
    }
}

/// Line and column (1-based) of the line that sets `key` at or after byte `from` of a
/// TOML text (the start of `from`'s line when there is none).
fn locate_toml_key(text: &str, from: usize, key: &str) -> (usize, usize) {
    let from = from.min(text.len());
    let line_start = text[..from].rfind('\n').map_or(0, |n| n + 1);
    let mut at = line_start;
    for line in text[line_start..].split_inclusive('\n') {
        let rest = line.trim_start();
        if rest.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('=')) {
            at += line.len() - rest.len();
            break;
        }
        at += line.len();
    }
    if at >= text.len() {
        at = line_start;
    }
    let line = text[..at].matches('\n').count() + 1;
    (line, at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1)
}

/// `seconds,value` lines; `#` comments, blank lines and one header line are allowed.
/// The seconds must not go down.
pub fn parse_trace(text: &str) -> Result<Vec<(u32, i32)>, String> {
    let mut points: Vec<(u32, i32)> = Vec::new();
    let mut first = true;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (t, v) = line.split_once(',').ok_or_else(|| format!("line {}: expected 'seconds,value'", n + 1))?;
        let (Ok(t), Ok(v)) = (t.trim().parse::<u32>(), v.trim().parse::<f64>()) else {
            if std::mem::take(&mut first) {
                continue; // a header
            }
            return Err(format!("line {}: expected 'seconds,value', got '{line}'", n + 1));
        };
        first = false;
        if points.last().is_some_and(|(last, _)| t < *last) {
            return Err(format!("line {}: time {t} goes back", n + 1));
        }
        points.push((t, milli(v)));
    }
    if points.is_empty() {
        return Err(String::from("no points"));
    }
    Ok(points)
}

/// TLS handshake time by chip and clock (Tasmota's AWS IoT guide: ESP8266 1.2 s at
/// 80 MHz, 0.7 s at 160 MHz; ESP32 figures scaled from the 160 MHz one).
fn default_tls_ms(chip: Chip, mhz: u16) -> u32 {
    match (chip, mhz) {
        (Chip::Esp8266, m) if m >= 160 => 700,
        (Chip::Esp8266, _) => 1_200,
        (_, m) => (700 * 160 / u32::from(m.max(80))).max(300),
    }
}

impl RawProfile {
    fn build(self, base: Option<&Path>) -> Result<Profile, String> {
        let chip = match self.chip.to_ascii_lowercase().as_str() {
            "esp8266" => Chip::Esp8266,
            "esp32" => Chip::Esp32,
            "esp32c3" | "esp32-c3" => Chip::Esp32C3,
            other => return Err(format!("chip: unknown chip '{other}' (esp8266, esp32, esp32c3)")),
        };
        let cpu_mhz = self.cpu_mhz.unwrap_or(match chip {
            Chip::Esp8266 => 80,
            Chip::Esp32 => 240,
            Chip::Esp32C3 => 160,
        });
        let max_relays = if chip.is_esp32() { 28 } else { 8 };
        if !(1..=max_relays).contains(&self.relays) {
            return Err(format!("relays: {} is out of range 1..={max_relays}", self.relays));
        }
        if self.buttons > 8 || self.switches > 28 || self.leds > 4 {
            return Err(String::from("at most 8 buttons, 28 switches and 4 LEDs"));
        }
        let mut hw = Hardware {
            relays: self.relays,
            module: self.module,
            module_number: self.module_number,
            buttons: self.buttons,
            switches: self.switches,
            leds: self.leds,
            chip,
            cpu_mhz,
            ..Hardware::default()
        };
        if let Some(mac) = &self.mac {
            hw.mac = mac.parse().map_err(|_| format!("mac: '{mac}' is not a MAC address"))?;
        }
        hw.tls_handshake_ms = match &self.tls_handshake {
            Some(t) => millis_of(t, "tls_handshake")? as u32,
            None => default_tls_ms(chip, cpu_mhz),
        };
        if let Some(t) = &self.wifi_connect {
            hw.wifi_connect_ms = millis_of(t, "wifi_connect")?;
        }
        hw.heap = HeapModel {
            free: self.heap_free.unwrap_or(if chip.is_esp32() { 150 * 1024 } else { HeapModel::default().free }),
            ..HeapModel::default()
        };
        if let Some(w) = self.wifi {
            hw.wifi =
                Wifi { ssid: w.ssid, bssid: w.bssid, channel: w.channel, rssi: w.rssi.min(100), signal: w.signal };
        }
        let seed =
            u64::from_be_bytes([0, 0, hw.mac.0[0], hw.mac.0[1], hw.mac.0[2], hw.mac.0[3], hw.mac.0[4], hw.mac.0[5]]);
        for (i, s) in self.sensors.iter().enumerate() {
            let what = format!("sensor {}", i + 1);
            let kind = match s.kind.to_ascii_uppercase().as_str() {
                "AM2301" | "DHT22" => SensorKind::Am2301,
                "DHT11" => SensorKind::Dht11,
                "DS18B20" => SensorKind::Ds18b20,
                other => return Err(format!("{what}: unknown kind '{other}' (AM2301, DHT22, DHT11, DS18B20)")),
            };
            let humidity = match (&s.humidity, kind.has_humidity()) {
                (Some(m), true) => Some(m.build(&format!("{what} humidity"), base, seed ^ (2 * i as u64 + 1))?),
                (None, true) => return Err(format!("{what}: a {} needs 'humidity'", kind.name())),
                (Some(_), false) => return Err(format!("{what}: a {} has no humidity", kind.name())),
                (None, false) => None,
            };
            let id = match (&s.id, kind) {
                (Some(id), SensorKind::Ds18b20) if id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                    Some(id.to_ascii_uppercase())
                }
                (Some(id), SensorKind::Ds18b20) => return Err(format!("{what}: id '{id}' is not 12 hex digits")),
                (None, SensorKind::Ds18b20) => {
                    Some(format!("{:012X}", seed.wrapping_mul(0x9E37_79B9) & 0xFFFF_FFFF_FFFF))
                }
                (Some(_), _) => return Err(format!("{what}: only a DS18B20 has an 'id'")),
                (None, _) => None,
            };
            let gpio = match (s.gpio, kind.is_dht()) {
                (Some(g), true) if g <= 39 => Some(g),
                (Some(g), true) => return Err(format!("{what}: gpio {g} is out of range 0..39")),
                (Some(_), false) => return Err(format!("{what}: only a DHT sensor (AM2301, DHT11) has a 'gpio'")),
                (None, _) => None,
            };
            hw.sensors.push(SensorSpec {
                kind,
                temperature: s.temperature.build(&format!("{what} temperature"), base, seed ^ (2 * i as u64))?,
                humidity,
                id,
                gpio,
            });
        }
        // xsns_06_dht DhtInit: several DHTs are told apart by their GPIO in the JSON key.
        let dhts: Vec<Option<u8>> = hw.sensors.iter().filter(|s| s.kind.is_dht()).map(|s| s.gpio).collect();
        if dhts.len() > 4 {
            return Err(format!("{} DHT sensors: the firmware reads at most 4 (DHT_MAX_SENSORS)", dhts.len()));
        }
        if dhts.len() > 1 {
            if dhts.iter().any(Option::is_none) {
                return Err(String::from(
                    "more than one DHT sensor: each needs 'gpio' (the firmware names them by it)",
                ));
            }
            let mut pins: Vec<u8> = dhts.iter().flatten().copied().collect();
            pins.sort_unstable();
            if pins.windows(2).any(|w| w[0] == w[1]) {
                return Err(String::from("two DHT sensors on the same 'gpio'"));
            }
        }
        if let Some(e) = self.energy {
            if !(0.0..=1.0).contains(&e.factor) {
                return Err(format!("energy: factor {} is out of range 0..1", e.factor));
            }
            hw.energy = Some(EnergySpec {
                voltage: e.voltage.build("energy voltage", base, seed ^ 0x100)?,
                load: e.load.build("energy load", base, seed ^ 0x101)?,
                factor: milli(e.factor),
                total_wh: e.total_wh,
            });
        }
        let settings = self.settings.map(toml::Spanned::into_inner).unwrap_or_default();
        Ok(Profile { name: self.name, description: self.description, hardware: hw, settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_profile_loads() {
        for (name, _) in BUILT_IN {
            let p = Profile::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.name, *name);
        }
        let p = Profile::load("sonoff-4ch").unwrap();
        assert_eq!((p.hardware.relays, p.hardware.buttons, p.hardware.module.as_str()), (4, 4, "Sonoff 4CH"));
        let p = Profile::load("wall-switch-2gang").unwrap();
        assert_eq!(&p.initial_settings().switchmode[..3], &[1, 1, 0]);
    }

    #[test]
    fn errors_name_the_input() {
        let e = Profile::load("nope").unwrap_err().to_string();
        assert!(e.contains("unknown profile 'nope'") && e.contains("sonoff-4ch"), "{e}");
        let bad = "name = \"x\"\nmodule = \"m\"\nmodule_number = 1\nchip = \"esp8266\"\nrelays = 9\n";
        let e = Profile::parse(bad, Path::new("x.toml"), None).unwrap_err().to_string();
        assert_eq!(e, "x.toml: relays: 9 is out of range 1..=8");
        let bad = "name = \"x\"\nmodule = \"m\"\nmodule_number = 1\nchip = \"esp8266\"\nrelay = 2\n";
        let e = Profile::parse(bad, Path::new("x.toml"), None).unwrap_err().to_string();
        assert!(e.starts_with("x.toml: TOML parse error at line 5"), "{e}");
        assert!(parse_trace("t,v\n0,1\n5,x\n").unwrap_err().contains("line 3"));
        let ramp = "name = \"x\"\nmodule = \"m\"\nmodule_number = 1\nchip = \"esp32\"\n[[sensor]]\nkind = \"DS18B20\"\ntemperature = { model = \"ramp\", start = 1, per_hour = 1, min = 5, max = 2 }\n";
        let e = Profile::parse(ramp, Path::new("x.toml"), None).unwrap_err().to_string();
        assert_eq!(e, "x.toml: sensor 1 temperature: min 5 is above max 2");
        assert_eq!(parse_trace("t,v\n0,1.5\n60,2\n").unwrap(), vec![(0, 1500), (60, 2000)]);
    }

    #[test]
    fn several_dht_sensors_need_distinct_gpios() {
        let head = "name = \"x\"\nmodule = \"m\"\nmodule_number = 1\nchip = \"esp32\"\n";
        let dht = |gpio: &str| {
            format!("[[sensor]]\nkind = \"AM2301\"\n{gpio}temperature = {{ model = \"constant\", value = 20 }}\nhumidity = {{ model = \"constant\", value = 50 }}\n")
        };
        let parse = |text: String| Profile::parse(&text, Path::new("x.toml"), None).map_err(|e| e.to_string());
        let two = format!("{head}{}{}", dht("gpio = 14\n"), dht(""));
        assert!(parse(two).unwrap_err().contains("each needs 'gpio'"));
        let same = format!("{head}{}{}", dht("gpio = 14\n"), dht("gpio = 14\n"));
        assert!(parse(same).unwrap_err().contains("same 'gpio'"));
        let ok = parse(format!("{head}{}{}", dht("gpio = 14\n"), dht("gpio = 4\n"))).unwrap();
        assert_eq!(ok.hardware.sensors.iter().map(|s| s.gpio).collect::<Vec<_>>(), vec![Some(14), Some(4)]);
        let ds = format!(
            "{head}[[sensor]]\nkind = \"DS18B20\"\ngpio = 4\ntemperature = {{ model = \"constant\", value = 20 }}\n"
        );
        assert!(parse(ds).unwrap_err().contains("only a DHT sensor"));
    }

    #[test]
    fn settings_are_checked_against_the_firmware_limits() {
        let head = "name = \"x\"\nmodule = \"m\"\nmodule_number = 1\nchip = \"esp8266\"\n[settings]\nmqtt_retry = 10\n";
        let e = Profile::parse(&format!("{head}tele_period = 5\n"), Path::new("p.toml"), None).unwrap_err().to_string();
        assert_eq!(
            e,
            "p.toml: line 7, column 1: settings.tele_period: 5 is outside 10..=3600 (CmndTeleperiod; or 0 for off)"
        );
        let e =
            Profile::parse(&format!("{head}mqtt_topic = \"\"\n"), Path::new("p.toml"), None).unwrap_err().to_string();
        assert!(e.starts_with("p.toml: line 7, column 1: settings.mqtt_topic: is empty"), "{e}");
        let long = "h".repeat(500);
        let e = Profile::parse(&format!("{head}  mqtt_host = \"{long}\"\n"), Path::new("p.toml"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml: line 7, column 3: settings.mqtt_host: is 500 bytes;"), "{e}");
        let e =
            Profile::parse(&format!("{head}mqtt_port = \"abc\"\n"), Path::new("p.toml"), None).unwrap_err().to_string();
        assert!(e.starts_with("p.toml: TOML parse error at line"), "{e}");
        assert!(e.contains("invalid type: string \"abc\", expected u16"), "{e}");
    }
}
