//! What a device is built from: chip, relays, buttons, switches, sensors, energy
//! monitor, heap and TLS cost. A device profile (`fixtures/devices/*.toml`, read by the
//! host) fills one [`Hardware`]; the core only reads it.
//!
//! Sensor and energy values follow seeded models so runs repeat. Values are fixed point
//! (thousandths) so a profile compares exactly and no float parsing is needed here.

use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;

use crate::identity::Mac;
use crate::telemetry::Wifi;

/// WiFi association and DHCP after boot: the first `MQT: Attempting connection...`
/// then comes at 3.5 s, as on a real ESP8266 (spec §0 A: 3.712 s).
pub const DEFAULT_WIFI_CONNECT_MS: u64 = 2_250;

/// The chip family: the `HDW:` boot line, Status 2 and 4, discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chip {
    Esp8266,
    Esp32,
    Esp32C3,
}

impl Chip {
    /// The `HDW:` boot line and `Hardware` of Status 2.
    pub fn name(self) -> &'static str {
        match self {
            Chip::Esp8266 => "ESP8266EX",
            Chip::Esp32 => "ESP32-D0WD-V3",
            Chip::Esp32C3 => "ESP32-C3",
        }
    }

    pub fn is_esp32(self) -> bool {
        !matches!(self, Chip::Esp8266)
    }
}

/// Free heap, as `ESP.getFreeHeap()` reports it, and what TLS takes from it (Tasmota's
/// AWS IoT guide: about 6.0 KB while a TLS link is up, 6.6 KB more during the handshake,
/// where a 4.8 KB secondary stack is allocated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapModel {
    /// Free bytes with no TLS link.
    pub free: u32,
    /// Taken while a TLS link is up.
    pub tls_session: u32,
    /// Taken on top of that during the handshake.
    pub tls_handshake: u32,
}

/// Below this many free bytes the device logs the low-memory warning.
pub const LOW_HEAP_BYTES: u32 = 15 * 1024;

impl Default for HeapModel {
    /// A stock ESP8266 `tasmota` build: 26 KB free (STATE `"Heap":26`).
    fn default() -> Self {
        HeapModel { free: 26 * 1024 + 512, tls_session: 6_000, tls_handshake: 6_600 }
    }
}

/// How a value changes with time. Values are thousandths (22.5 °C is 22500).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Model {
    Constant(i32),
    /// `start` plus `per_hour` each hour, held within `min..=max`.
    Ramp {
        start: i32,
        per_hour: i32,
        min: i32,
        max: i32,
    },
    /// Every `every_s` seconds a step of up to `step` either way, from a seeded
    /// generator, held within `min..=max`.
    Walk {
        start: i32,
        step: i32,
        min: i32,
        max: i32,
        every_s: u32,
        seed: u64,
    },
    /// `(seconds since boot, value)` points; the last point at or before now holds.
    Trace(Rc<Vec<(u32, i32)>>),
}

impl Model {
    /// The value at `secs` after boot. `walk` carries a walk's last step and value so
    /// evaluating in time order costs one step per period.
    pub fn value(&self, secs: u32, walk: &mut (u32, i32)) -> i32 {
        match self {
            Model::Constant(v) => *v,
            Model::Ramp { start, per_hour, min, max } => {
                let v = i64::from(*start) + i64::from(*per_hour) * i64::from(secs) / 3600;
                within(v, *min, *max)
            }
            Model::Walk { start, step, min, max, every_s, seed } => {
                let target = secs / (*every_s).max(1);
                if walk.0 == 0 || target < walk.0 - 1 {
                    *walk = (1, *start);
                }
                while walk.0 - 1 < target {
                    let r = splitmix(seed.wrapping_add(u64::from(walk.0)));
                    let span = 2 * i64::from(*step) + 1;
                    let delta = (r % span as u64) as i64 - i64::from(*step);
                    walk.1 = within(i64::from(walk.1) + delta, *min, *max);
                    walk.0 += 1;
                }
                walk.1
            }
            Model::Trace(points) => {
                let i = points.partition_point(|(t, _)| *t <= secs);
                if i == 0 {
                    points.first().map_or(0, |p| p.1)
                } else {
                    points[i - 1].1
                }
            }
        }
    }
}

/// `v` held within `min..=max`; never panics, even for `min > max` (then `max` wins).
fn within(v: i64, min: i32, max: i32) -> i32 {
    v.max(i64::from(min)).min(i64::from(max)) as i32
}

/// SplitMix64: one seeded, portable number per step (sensor walks; the fleet's
/// workload choices).
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sensor drivers a profile can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensorKind {
    /// AM2301 / DHT22: temperature and humidity (`xsns_06_dht`).
    Am2301,
    /// DHT11: temperature and humidity.
    Dht11,
    /// DS18B20 one-wire temperature (`xsns_05_ds18x20`).
    Ds18b20,
}

impl SensorKind {
    /// The JSON key and the name in Status 4's `Sensors`.
    pub fn name(self) -> &'static str {
        match self {
            SensorKind::Am2301 => "AM2301",
            SensorKind::Dht11 => "DHT11",
            SensorKind::Ds18b20 => "DS18B20",
        }
    }

    pub fn has_humidity(self) -> bool {
        matches!(self, SensorKind::Am2301 | SensorKind::Dht11)
    }

    /// Read by the DHT driver (`xsns_06_dht`).
    pub fn is_dht(self) -> bool {
        matches!(self, SensorKind::Am2301 | SensorKind::Dht11)
    }
}

/// One sensor of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorSpec {
    pub kind: SensorKind,
    pub temperature: Model,
    pub humidity: Option<Model>,
    /// The DS18B20's 64-bit ROM id as 12 hex digits (family and CRC left out).
    pub id: Option<String>,
    /// The GPIO a DHT sensor is wired to: with more than one DHT, `DhtInit` names each
    /// `<type><IndexSeparator><gpio %02d>` and `DhtPinState` orders them by GPIO.
    pub gpio: Option<u8>,
}

/// The energy monitor of a power-monitoring plug (HLW8012 / BL0937 / CSE7766).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnergySpec {
    /// Mains voltage, volts.
    pub voltage: Model,
    /// What the load draws while the relay is on, watts (thousandths).
    pub load: Model,
    /// Power factor, thousandths.
    pub factor: i32,
    /// Energy counted before this boot, Wh.
    pub total_wh: u32,
}

/// The hardware a device is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hardware {
    pub mac: Mac,
    /// Number of relays (`devices_present`), 1..=28.
    pub relays: u8,
    /// The module name INFO1 and `Module` report.
    pub module: String,
    /// The module number `Module` reports (0 = user template).
    pub module_number: u8,
    /// Buttons (`Button1..`): a press toggles the relay of the same number.
    pub buttons: u8,
    /// Switches (`Switch1..`), read through SwitchMode.
    pub switches: u8,
    /// Status LEDs.
    pub leds: u8,
    pub sensors: Vec<SensorSpec>,
    pub energy: Option<EnergySpec>,
    pub chip: Chip,
    pub cpu_mhz: u16,
    /// How long a TLS handshake takes on this chip (AWS IoT guide: about 1.2 s on an
    /// ESP8266 at 80 MHz, 0.7 s at 160 MHz).
    pub tls_handshake_ms: u32,
    pub heap: HeapModel,
    /// How long after boot WiFi is connected and the network is up.
    pub wifi_connect_ms: u64,
    /// The access point STATE reports.
    pub wifi: Wifi,
    /// The address DHCP gives the device; `None` derives `10.x.y.z` from the MAC.
    pub ip: Option<[u8; 4]>,
}

impl Default for Hardware {
    /// A Sonoff Basic: one relay, one button, one LED, an ESP8266 at 80 MHz.
    fn default() -> Self {
        Hardware {
            mac: Mac::DEFAULT,
            relays: 1,
            module: String::from("Sonoff Basic"),
            module_number: 1,
            buttons: 1,
            switches: 0,
            leds: 1,
            sensors: Vec::new(),
            energy: None,
            chip: Chip::Esp8266,
            cpu_mhz: 80,
            tls_handshake_ms: 1_200,
            heap: HeapModel::default(),
            wifi_connect_ms: DEFAULT_WIFI_CONNECT_MS,
            wifi: Wifi::default(),
            ip: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_repeat_and_stay_in_range() {
        let walk = Model::Walk { start: 20_000, step: 300, min: 19_000, max: 21_000, every_s: 60, seed: 7 };
        let mut a = (0, 0);
        let first: Vec<i32> = (0..5000).step_by(30).map(|s| walk.value(s, &mut a)).collect();
        let mut b = (0, 0);
        // Evaluating only some instants gives the same values at those instants.
        let v = walk.value(4980, &mut b);
        assert_eq!(v, *first.last().unwrap());
        assert!(first.iter().all(|v| (19_000..=21_000).contains(v)));
        assert!(first.windows(2).any(|w| w[0] != w[1]));
        let ramp = Model::Ramp { start: 1000, per_hour: 600, min: 0, max: 1500 };
        assert_eq!(ramp.value(1800, &mut a), 1300);
        assert_eq!(ramp.value(36_000, &mut a), 1500);
        // A model built in code with min above max does not panic.
        let odd = Model::Ramp { start: 0, per_hour: 1000, min: 10, max: 5 };
        assert_eq!(odd.value(0, &mut a), 5);
        let trace = Model::Trace(Rc::new(alloc::vec![(0, 5), (10, 6), (20, 7)]));
        assert_eq!([0, 9, 10, 25].map(|s| trace.value(s, &mut a)), [5, 5, 6, 7]);
    }
}
