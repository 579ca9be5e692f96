//! The device's persistent settings, with the firmware's defaults (spec §1,
//! `SettingsDefaultSet2`). The host driver serialises them to its `--state` directory;
//! the ESP32 driver keeps them in flash.

use alloc::string::{String, ToString};
use serde::{Deserialize, Serialize};

/// `MQTT_TOPIC`
pub const DEFAULT_TOPIC: &str = "tasmota_%06X";
/// `MQTT_CLIENT_ID`
pub const DEFAULT_CLIENT: &str = "DVES_%06X";
/// `MQTT_FULLTOPIC`
pub const DEFAULT_FULLTOPIC: &str = "%prefix%/%topic%/";
/// `MQTT_GRPTOPIC`
pub const DEFAULT_GROUPTOPIC: &str = "tasmotas";
/// `WIFI_HOSTNAME`
pub const DEFAULT_HOSTNAME: &str = "%s-%04d";
/// `MQTT_USER`
pub const DEFAULT_MQTT_USER: &str = "DVES_USER";
/// `MQTT_PASS`
pub const DEFAULT_MQTT_PASS: &str = "DVES_PASS";
/// `SUB_PREFIX`, `PUB_PREFIX`, `PUB_PREFIX2`
pub const DEFAULT_PREFIXES: [&str; 3] = ["cmnd", "stat", "tele"];
/// `MQTT_STATUS_OFF`, `MQTT_STATUS_ON`, `MQTT_CMND_TOGGLE`, `MQTT_CMND_HOLD`
pub const DEFAULT_STATE_TEXTS: [&str; 4] = ["OFF", "ON", "TOGGLE", "HOLD"];
/// `FRIENDLY_NAME`
pub const DEFAULT_FRIENDLY_NAME: &str = "Tasmota";
/// `MQTT_PORT`
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// `TELE_PERIOD`
pub const DEFAULT_TELE_PERIOD: u16 = 300;
/// `APP_TIMEZONE` (my_user_config.h): +1 hour (Amsterdam).
pub const DEFAULT_TIMEZONE: i8 = 1;
/// `MAX_PULSETIMERS` (tasmota.h): PulseTime1..32.
pub const MAX_PULSETIMERS: usize = 32;
/// `MQTT_RETRY_SECS`, also the smallest MqttRetry allowed.
pub const MQTT_RETRY_SECS: u16 = 10;
/// Number of SetOptions the firmware stores (SetOption0 .. SetOption177).
pub const SETOPTION_COUNT: u32 = 178;
/// SetOption32 .. SetOption49 are byte parameters rather than flags.
pub const PARAM_COUNT: usize = 18;

/// Fixed-size arrays as serde writes them (a tuple of N elements, so the JSON and postcard
/// bytes are the same), read with one loop per element type: serde's own `[T; N]` reader
/// is unrolled N times per array type, which cost the ESP32-C3 image kilobytes.
mod fixed {
    use alloc::vec::Vec;
    use core::marker::PhantomData;
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::{SerializeTuple, Serializer};
    use serde::{Deserialize, Serialize};

    pub fn serialize<S: Serializer, T: Serialize, const N: usize>(v: &[T; N], s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(N)?;
        for x in v {
            t.serialize_element(x)?;
        }
        t.end()
    }

    struct Elements<T> {
        n: usize,
        t: PhantomData<T>,
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Elements<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
            write!(f, "an array of length {}", self.n)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(self.n);
            while out.len() < self.n {
                match seq.next_element()? {
                    Some(x) => out.push(x),
                    None => return Err(A::Error::invalid_length(out.len(), &self)),
                }
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>, const N: usize>(
        d: D,
    ) -> Result<[T; N], D::Error> {
        let v = d.deserialize_tuple(N, Elements::<T> { n: N, t: PhantomData })?;
        v.try_into().map_err(|_| D::Error::custom("array length"))
    }
}

/// One device's settings. Field names follow Tasmota's `Settings` struct.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub mqtt_user: String,
    pub mqtt_pwd: String,
    pub mqtt_client: String,
    pub mqtt_topic: String,
    #[serde(with = "fixed")]
    pub mqtt_grp_topic: [String; 4],
    pub mqtt_fulltopic: String,
    #[serde(with = "fixed")]
    pub mqtt_prefix: [String; 3],
    pub button_topic: String,
    pub switch_topic: String,
    #[serde(with = "fixed")]
    pub state_text: [String; 4],
    pub hostname: String,
    #[serde(with = "fixed")]
    pub friendlyname: [String; 8],
    pub devicename: String,
    pub mqtt_retry: u16,
    pub mqtt_keepalive: u16,
    pub mqtt_socket_timeout: u16,
    /// `MqttWifiTimeout` divided by 100.
    pub mqtt_wifi_timeout: u8,
    pub mqttlog_level: u8,
    pub tele_period: u16,
    pub save_data: u16,
    pub poweronstate: u8,
    /// Saved relay state (bit n = relay n+1), restored by PowerOnState 3.
    pub power: u32,
    /// `PowerLock`: a set bit n keeps relay n+1 as it is (`Settings->power_lock`).
    pub power_lock: u32,
    /// `PulseTime1..32` (`Settings->pulse_timer`): 0 off, 1..111 tenths of a second,
    /// 112.. seconds + 100. Kept without trailing zeros, so a device that never sets
    /// one holds no memory for them; read and write through [`Settings::pulse_time`].
    pub pulse_timer: alloc::vec::Vec<u16>,
    pub blinktime: u16,
    pub blinkcount: u16,
    pub bootcount: u16,
    /// `WebServer`: 0 off, 1 user, 2 admin.
    pub webserver: u8,
    /// `SerialLog` and `WebLog` levels (0..4).
    pub seriallog_level: u8,
    pub weblog_level: u8,
    /// `LedState` (Status 0).
    pub ledstate: u8,
    /// How many times settings were saved (Status 1 `SaveCount`).
    pub save_count: u32,
    /// `Time` format 1..4 (Status and STATE show format 1 unless changed).
    pub time_format: u8,
    /// `Timezone` hours (-13..14, or 99 for the DST rules) and minutes.
    pub timezone: i8,
    pub timezone_minutes: u8,
    /// `SSId1`/`SSId2` and `Password1`/`Password2`: the WiFi networks (the simulator's
    /// WiFi is the profile's; the ESP32-C3 firmware connects with these).
    #[serde(with = "fixed")]
    pub sta_ssid: [String; 2],
    #[serde(with = "fixed")]
    pub sta_pwd: [String; 2],
    /// Which of the two is in use (`Settings->sta_active`).
    pub sta_active: u8,
    /// `IPAddress1..5`: static address, gateway, subnet mask, DNS 1 and 2 (0.0.0.0: DHCP).
    #[serde(with = "fixed")]
    pub ipv4_address: [[u8; 4]; 5],
    /// `SwitchMode<n>` of Switch1..28.
    #[serde(with = "fixed")]
    pub switchmode: [u8; 28],
    /// `WebPassword`: empty means no authentication.
    pub web_password: String,
    /// SetOption0..31 (`flag`), 50..81 (`flag3`), 82..113 (`flag4`), 114..145 (`flag5`),
    /// 146..177 (`flag6`), one bit each.
    #[serde(with = "fixed")]
    pub flags: [u32; 5],
    /// SetOption32..49 (`param`).
    #[serde(with = "fixed")]
    pub param: [u8; PARAM_COUNT],
    /// `MqttFingerprint1` and `MqttFingerprint2` (SetOption132 validation).
    #[serde(with = "fixed")]
    pub mqtt_fingerprint: [[u8; 20]; 2],
    /// Rule1..3, their flags, Mem1..16 and CalcRes ([`RuleSettings`]). `None` until a
    /// rule command stores something, so a device without rules pays one pointer in
    /// memory and one byte on flash.
    pub rules: Option<alloc::boxed::Box<RuleSettings>>,
}

/// What the Rules keep in settings (`Settings->rules[3][512]`, `rule_enabled`,
/// `rule_once`, `rule_stop`, the `SET_MEM1..16` texts and `flag2.calc_resolution`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSettings {
    /// The text of Rule1..3, at most `MAX_RULE_SIZE - 1` (511) characters each.
    #[serde(with = "fixed")]
    pub rules: [String; 3],
    /// Bit n: Rule<n+1> is on (`Rule<n> 1`).
    pub enabled: u8,
    /// Bit n: Rule<n+1> fires once until its trigger stops matching (`Rule<n> 5`).
    pub once: u8,
    /// Bit n: Rule<n+1> StopOnError (`Rule<n> 9`; kept and reported only).
    pub stop: u8,
    /// `Mem1..16`: texts in the settings' text pool.
    #[serde(with = "fixed")]
    pub mems: [String; 16],
    /// `CalcRes` 0..7: decimals of Add, Sub, Mult and Scale results.
    pub calc_resolution: u8,
}

impl Default for RuleSettings {
    fn default() -> Self {
        RuleSettings {
            rules: Default::default(),
            enabled: 0,
            once: 0,
            stop: 0,
            mems: Default::default(),
            // `CALC_RESOLUTION` (tasmota.h): 1, set by SettingsDefaultSet2.
            calc_resolution: 1,
        }
    }
}

/// Where a SetOption is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionSlot {
    /// A flag bit: word index into [`Settings::flags`] and bit number.
    Flag { word: usize, bit: u32 },
    /// A byte parameter: index into [`Settings::param`].
    Param(usize),
}

impl OptionSlot {
    /// `SetoptionDecode`: where SetOption `n` lives, or `None` for n >= 178.
    pub fn of(n: u32) -> Option<OptionSlot> {
        match n {
            0..=31 => Some(OptionSlot::Flag { word: 0, bit: n }),
            32..=49 => Some(OptionSlot::Param((n - 32) as usize)),
            50..=81 => Some(OptionSlot::Flag { word: 1, bit: n - 50 }),
            82..=113 => Some(OptionSlot::Flag { word: 2, bit: n - 82 }),
            114..=145 => Some(OptionSlot::Flag { word: 3, bit: n - 114 }),
            146..=177 => Some(OptionSlot::Flag { word: 4, bit: n - 146 }),
            _ => None,
        }
    }
}

fn texts<const N: usize>(values: [&str; N]) -> [String; N] {
    values.map(ToString::to_string)
}

impl Default for Settings {
    /// `SettingsDefault()` for a stock `tasmota` build.
    fn default() -> Self {
        let mut s = Settings {
            mqtt_host: String::new(),
            mqtt_port: DEFAULT_MQTT_PORT,
            mqtt_user: DEFAULT_MQTT_USER.to_string(),
            mqtt_pwd: DEFAULT_MQTT_PASS.to_string(),
            mqtt_client: DEFAULT_CLIENT.to_string(),
            mqtt_topic: DEFAULT_TOPIC.to_string(),
            mqtt_grp_topic: texts([DEFAULT_GROUPTOPIC, "", "", ""]),
            mqtt_fulltopic: DEFAULT_FULLTOPIC.to_string(),
            mqtt_prefix: texts(DEFAULT_PREFIXES),
            button_topic: "0".to_string(),
            switch_topic: "0".to_string(),
            state_text: texts(DEFAULT_STATE_TEXTS),
            hostname: DEFAULT_HOSTNAME.to_string(),
            friendlyname: texts(["Tasmota", "Tasmota2", "Tasmota3", "Tasmota4", "", "", "", ""]),
            devicename: DEFAULT_FRIENDLY_NAME.to_string(),
            mqtt_retry: MQTT_RETRY_SECS,
            mqtt_keepalive: 30,
            mqtt_socket_timeout: 4,
            mqtt_wifi_timeout: 2,
            mqttlog_level: 0,
            tele_period: DEFAULT_TELE_PERIOD,
            save_data: 1,
            poweronstate: 3,
            power: 0,
            power_lock: 0,
            pulse_timer: alloc::vec::Vec::new(),
            blinktime: 10,
            blinkcount: 10,
            bootcount: 0,
            webserver: 2,
            web_password: String::new(),
            switchmode: [0; 28],
            ipv4_address: [[0; 4]; 5],
            sta_ssid: [String::new(), String::new()],
            sta_pwd: [String::new(), String::new()],
            sta_active: 0,
            seriallog_level: 2,
            weblog_level: 2,
            ledstate: 1,
            save_count: 0,
            time_format: 1,
            timezone: DEFAULT_TIMEZONE,
            timezone_minutes: 0,
            flags: [0; 5],
            param: [0; PARAM_COUNT],
            mqtt_fingerprint: crate::commands::DEFAULT_FINGERPRINTS,
            rules: None,
        };
        // SetOption0 SaveState, 3 MQTT, 15 PWM control, 57 WiFi rescan,
        // 112/113 network_wifi/network_ethernet.
        for n in [0, 3, 15, 57, 112, 113] {
            s.set_option(n, 1);
        }
        // SetOption32 hold time 40, 33 power retry 5, 34 Backlog delay 200 ms, 36 boot loop
        // offset 1, 38 IR threshold 6, 41 ARP 60 s, 42 over-temperature 90, 43 rotary 10,
        // 44 IR tolerance 25, 45 bistable pulse 40.
        for (n, v) in [(32, 40), (33, 5), (34, 200), (36, 1), (38, 6), (41, 60), (42, 90), (43, 10), (44, 25), (45, 40)]
        {
            s.set_option(n, v);
        }
        s
    }
}

impl Settings {
    /// The value of SetOption `n` (0 for options the firmware does not have).
    pub fn option(&self, n: u32) -> u32 {
        match OptionSlot::of(n) {
            Some(OptionSlot::Flag { word, bit }) => (self.flags[word] >> bit) & 1,
            Some(OptionSlot::Param(i)) => u32::from(self.param[i]),
            None => 0,
        }
    }

    /// Whether flag SetOption `n` is on.
    pub fn flag(&self, n: u32) -> bool {
        self.option(n) != 0
    }

    /// Stores SetOption `n`; flags keep only bit 0, parameters the low byte.
    pub fn set_option(&mut self, n: u32, value: u32) {
        match OptionSlot::of(n) {
            Some(OptionSlot::Flag { word, bit }) => {
                self.flags[word] = (self.flags[word] & !(1 << bit)) | ((value & 1) << bit);
            }
            Some(OptionSlot::Param(i)) => self.param[i] = value as u8,
            None => {}
        }
    }

    /// `GetStateText`: StateText1..4 for 0..3, and StateText2 for anything above.
    pub fn state_text(&self, state: u32) -> &str {
        let i = if state >= 4 { 1 } else { state as usize };
        &self.state_text[i]
    }

    /// `Settings->pulse_timer[i]` (0 beyond what was ever set).
    pub fn pulse_time(&self, i: usize) -> u16 {
        self.pulse_timer.get(i).copied().unwrap_or(0)
    }

    /// Stores `PulseTime<i+1>`; `i` must be below [`MAX_PULSETIMERS`].
    pub fn set_pulse_time(&mut self, i: usize, value: u16) {
        if i >= MAX_PULSETIMERS {
            return;
        }
        if self.pulse_timer.len() <= i {
            self.pulse_timer.resize(i + 1, 0);
        }
        self.pulse_timer[i] = value;
        while self.pulse_timer.last() == Some(&0) {
            self.pulse_timer.pop();
        }
        if self.pulse_timer.is_empty() {
            self.pulse_timer = alloc::vec::Vec::new();
        }
    }

    /// The rule settings, made on first use.
    pub fn rules_mut(&mut self) -> &mut RuleSettings {
        self.rules.get_or_insert_with(Default::default)
    }

    /// The Backlog delay in milliseconds (SetOption34).
    pub fn backlog_delay_ms(&self) -> u64 {
        u64::from(self.param[2])
    }
}

/// What the device remembers of the settings it last saved, to tell whether they changed
/// (`SettingsSave` writes only then): 16 bytes instead of a second ~1 KB `Settings`.
///
/// It is taken over the stream `#[derive(Hash)]` feeds a hasher, every field in order:
/// integers at their full width, each string's bytes followed by `0xFF` (a byte no UTF-8
/// text contains, so no two string lists run together the same way), each array's length
/// first. Two settings that differ therefore give two different streams, and the
/// fingerprint keeps two things of that stream:
///
/// - its length: a change that makes any text longer or shorter is always seen;
/// - its FNV-1a 64-bit hash. Each step, `h = (h ^ byte) * P` with `P` odd, is a bijection
///   of `h` for a given byte and gives different `h` for different bytes, so two streams
///   of the same length that differ in one byte (a flag, a number, a same-length text with
///   one character changed) always hash differently. Streams that differ in several bytes
///   and have the same length collide with a chance of about 2^-64 unless made to on
///   purpose, and whoever can type commands on a device can already change what it saves.
///
/// FNV rather than a faster word hash: it runs at most once a second, only after a
/// command, power change or reset marked the settings dirty, and only needs `core`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    len: usize,
    hash: u64,
}

impl Fingerprint {
    pub(crate) fn of(settings: &Settings) -> Fingerprint {
        let mut h = Fnv1a { len: 0, hash: Fnv1a::OFFSET };
        core::hash::Hash::hash(settings, &mut h);
        Fingerprint { len: h.len, hash: h.hash }
    }
}

/// FNV-1a, 64 bits, counting the bytes it is fed.
struct Fnv1a {
    len: usize,
    hash: u64,
}

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
}

impl core::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        for &b in bytes {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(Fnv1a::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_firmware() {
        let s = Settings::default();
        assert_eq!(s.option(3), 1);
        assert_eq!(s.option(4), 0);
        assert_eq!(s.option(34), 200);
        assert_eq!(s.option(103), 0);
        assert_eq!(s.option(177), 0);
        assert_eq!(s.flags[0], 0x0000_8009);
        assert_eq!(s.flags[1], 0x0000_0080);
    }

    #[test]
    fn fingerprint_sees_every_kind_of_change() {
        let base = Settings::default();
        let fp = Fingerprint::of(&base);
        assert_eq!(fp, Fingerprint::of(&base.clone()));
        let changes: [fn(&mut Settings); 8] = [
            |s| s.set_option(103, 1),
            |s| s.param[2] = 201,
            |s| s.mqtt_host.push('x'),
            |s| s.mqtt_user = "DVES_USEr".into(),
            // Text moved from one field to the next: the 0xFF after each string keeps
            // the streams apart.
            |s| {
                s.button_topic.clear();
                s.switch_topic = "00".into();
            },
            |s| s.friendlyname.swap(0, 1),
            |s| s.ipv4_address[4][3] = 1,
            |s| s.bootcount += 1,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut s = base.clone();
            change(&mut s);
            assert_ne!(Fingerprint::of(&s), fp, "change {i} not seen");
        }
    }

    #[test]
    fn option_slots() {
        assert_eq!(OptionSlot::of(49), Some(OptionSlot::Param(17)));
        assert_eq!(OptionSlot::of(103), Some(OptionSlot::Flag { word: 2, bit: 21 }));
        assert_eq!(OptionSlot::of(178), None);
        let mut s = Settings::default();
        s.set_option(103, 1);
        assert!(s.flag(103));
        s.set_option(103, 0);
        assert!(!s.flag(103));
    }
}
