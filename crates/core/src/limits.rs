//! The firmware's sizes and ranges for every setting, in one place: the commands take
//! their ranges and text sizes from here, and a settings file or a profile's
//! `[settings]` is checked against the same table ([`check`]), so a value a command could
//! never store is refused when it comes from a file, and a value a command stores is
//! always read back.
//!
//! Tasmota 14.2.0 keeps every text setting in one pool, `char text_pool[699]`
//! (`settings_text_size`, tasmota_types.h), each text ending in a NUL. There is no fixed
//! size per text (the per-field arrays of `mqtt_host[33]` and friends went with v8).
//! `SettingsUpdateText` (settings.ino) refuses a text that would overflow the pool: it
//! logs `CFG: Text overflow by N char(s)` and keeps the old text. A few commands cut a
//! text first: `Topic` and `FullTopic` copy it into `char stemp1[TOPSZ]`, so at most 150
//! characters are kept.
//!
//! A file is not a command: nothing in it is cut. A text over its size, texts that do not
//! fit the pool, or a number outside what the commands accept, is an error that names the
//! field and the limit.

use alloc::format;
use alloc::string::String;
use core::ops::RangeInclusive;

use crate::settings::Settings;

use crate::topic::TOPSZ;

/// `settings_text_size` (tasmota_types.h): the text pool every text setting lives in.
pub const TEXT_POOL_SIZE: usize = 699;
/// Pool bytes a stock ESP8266 build spends on texts the simulator does not model, at
/// their defaults: `OtaUrl` (`http://ota.tasmota.com/tasmota/release/tasmota.bin.gz`, 53
/// characters and its NUL) and the NUL of each of the other 48 texts (NTP servers,
/// button and switch texts, device group names, ...). An estimate from the
/// `SettingsTextIndex` enum; a real device may have a few bytes more or fewer.
pub const UNMODELLED_TEXT_BYTES: usize = 54 + 48;

/// The size of one text setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextLimit {
    /// Most bytes kept (the NUL not counted); `None`: only the pool limits it.
    pub max: Option<usize>,
    /// No command can make it empty, so an empty value cannot come from the firmware.
    pub required: bool,
    /// The firmware code that sets the limit.
    pub source: &'static str,
}

/// `Topic`: `CmndTopic` copies into `char stemp1[TOPSZ]` (xdrv_02_9_mqtt.ino).
pub const TOPIC: TextLimit =
    TextLimit { max: Some(TOPSZ - 1), required: true, source: "CmndTopic: char stemp1[TOPSZ]" };
/// `FullTopic`: `CmndFullTopic` copies into `char stemp1[TOPSZ]`.
pub const FULLTOPIC: TextLimit =
    TextLimit { max: Some(TOPSZ - 1), required: true, source: "CmndFullTopic: char stemp1[TOPSZ]" };
/// A text only the pool limits; `required` when no command can clear it.
const fn pool(required: bool, source: &'static str) -> TextLimit {
    TextLimit { max: None, required, source }
}

/// The numbers the commands accept, as `XdrvMailbox.payload` ranges.
pub mod range {
    use super::RangeInclusive;

    /// `CmndTeleperiod`: 0 (off) or 10..3600; 1 means the default and 2..9 become 10.
    pub const TELE_PERIOD: RangeInclusive<i32> = 10..=3600;
    /// `CmndSavedata`.
    pub const SAVE_DATA: RangeInclusive<i32> = 0..=3600;
    /// `CmndPowerOnState` (`POWER_ALL_OFF` .. `POWER_ALL_OFF_PULSETIME_ON`).
    pub const POWER_ON_STATE: RangeInclusive<i32> = 0..=5;
    /// `CmndBlinktime` (`payload > 1 && payload <= 3600`).
    pub const BLINK_TIME: RangeInclusive<i32> = 2..=3600;
    /// `CmndBlinkcount`.
    pub const BLINK_COUNT: RangeInclusive<i32> = 0..=32000;
    /// `CmndMqttPort` (`payload > 0 && payload < 65536`).
    pub const MQTT_PORT: RangeInclusive<i32> = 1..=65535;
    /// `CmndMqttRetry` (`MQTT_RETRY_SECS` .. `< 32001`).
    pub const MQTT_RETRY: RangeInclusive<i32> = crate::settings::MQTT_RETRY_SECS as i32..=32000;
    /// `CmndMqttKeepAlive`.
    pub const MQTT_KEEPALIVE: RangeInclusive<i32> = 1..=100;
    /// `CmndMqttTimeout`.
    pub const MQTT_TIMEOUT: RangeInclusive<i32> = 1..=100;
    /// `CmndMqttWifiTimeout` in ms; the setting keeps it divided by 100.
    pub const MQTT_WIFI_TIMEOUT_MS: RangeInclusive<i32> = 100..=20000;
    /// `SerialLog`, `WebLog`, `MqttLog` (`LOG_LEVEL_NONE` .. `LOG_LEVEL_DEBUG_MORE`).
    pub const LOG_LEVEL: RangeInclusive<i32> = 0..=4;
    /// `CmndWebServer`.
    pub const WEB_SERVER: RangeInclusive<i32> = 0..=2;
    /// `CmndTime` formats.
    pub const TIME_FORMAT: RangeInclusive<i32> = 1..=4;
    /// `CmndTimezone` hours; 99 (the DST rules) is allowed too.
    pub const TIMEZONE: RangeInclusive<i32> = -13..=14;
    /// `CmndTimezone`: the value for "use TimeStd/TimeDst".
    pub const TIMEZONE_RULES: i32 = 99;
    /// `CmndTimezone` minutes (`if (timezone_minutes > 59) timezone_minutes = 59`).
    pub const TIMEZONE_MINUTES: RangeInclusive<i32> = 0..=59;
    /// `CmndSwitchMode` (`< MAX_SWITCH_OPTION`).
    pub const SWITCH_MODE: RangeInclusive<i32> = 0..=16;
    /// `CmndLedState` (`< MAX_LED_OPTION`).
    pub const LED_STATE: RangeInclusive<i32> = 0..=7;
    /// `CmndAp`: which of the two networks is active (`sta_active`).
    pub const STA_ACTIVE: RangeInclusive<i32> = 0..=1;
    /// `CmndSetoptionBase`: SetOption32 (hold time), 33 (power retry) and 45 (bistable
    /// pulse); every other parameter takes 0..255.
    pub const PARAM_NARROW: RangeInclusive<i32> = 1..=250;
    /// The `param` indexes (SetOption32 + index) with [`PARAM_NARROW`].
    pub const PARAM_NARROW_INDEXES: [usize; 3] = [0, 1, 13];
}

/// A setting outside the firmware's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitError {
    /// The field as the settings file spells it, e.g. `mqtt_grp_topic[1]`.
    pub field: String,
    /// What is wrong, naming the limit and the firmware code behind it.
    pub problem: String,
}

impl core::fmt::Display for LimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "field {}: {}", self.field, self.problem)
    }
}

/// The commands that store a text setting (the `command` each text names in
/// [`each_text`]; a test keeps the two in step): only these can overflow the text pool.
const TEXT_COMMANDS: [&str; 19] = [
    "MqttHost",
    "MqttUser",
    "MqttPassword",
    "MqttClient",
    "Topic",
    "FullTopic",
    "ButtonTopic",
    "SwitchTopic",
    "Hostname",
    "DeviceName",
    "WebPassword",
    "GroupTopic",
    "Prefix",
    "StateText",
    "FriendlyName",
    "FN",
    "SSId",
    "Password",
    "Mem",
];

/// Whether the command (its canonical name) stores a text setting.
pub fn stores_text(command: &str) -> bool {
    TEXT_COMMANDS.contains(&command)
}

/// Calls `each` with every text setting: its field name, the command that sets it, its
/// value and its limit.
pub fn each_text(s: &Settings, mut each: impl FnMut(String, &'static str, &str, TextLimit)) {
    let mut one = |field: &str, command: &'static str, value: &str, limit: TextLimit| {
        each(String::from(field), command, value, limit)
    };
    one("mqtt_host", "MqttHost", &s.mqtt_host, pool(false, "CmndMqttHost"));
    one("mqtt_user", "MqttUser", &s.mqtt_user, pool(false, "CmndMqttUser"));
    one("mqtt_pwd", "MqttPassword", &s.mqtt_pwd, pool(false, "CmndMqttPassword"));
    one("mqtt_client", "MqttClient", &s.mqtt_client, pool(true, "CmndMqttClient has no clear shortcut"));
    one("mqtt_topic", "Topic", &s.mqtt_topic, TOPIC);
    one("mqtt_fulltopic", "FullTopic", &s.mqtt_fulltopic, FULLTOPIC);
    one("button_topic", "ButtonTopic", &s.button_topic, pool(false, "CmndButtonTopic"));
    one("switch_topic", "SwitchTopic", &s.switch_topic, pool(false, "CmndSwitchTopic"));
    one("hostname", "Hostname", &s.hostname, pool(true, "CmndHostname has no clear shortcut"));
    one("devicename", "DeviceName", &s.devicename, pool(false, "CmndDevicename"));
    one("web_password", "WebPassword", &s.web_password, pool(false, "CmndWebPassword"));
    let mut many = |field: &str, command: &'static str, values: &[String], limit: &dyn Fn(usize) -> TextLimit| {
        for (i, v) in values.iter().enumerate() {
            each(format!("{field}[{i}]"), command, v, limit(i));
        }
    };
    // CmndGroupTopic keeps at least one group topic, filled from index 1.
    many("mqtt_grp_topic", "GroupTopic", &s.mqtt_grp_topic, &|i| pool(i == 0, "CmndGroupTopic keeps GroupTopic1"));
    many("mqtt_prefix", "Prefix", &s.mqtt_prefix, &|_| pool(true, "CmndPrefix has no clear shortcut"));
    many("state_text", "StateText", &s.state_text, &|_| pool(true, "CmndStateText has no clear shortcut"));
    many("friendlyname", "FriendlyName", &s.friendlyname, &|_| pool(false, "CmndFriendlyname"));
    many("sta_ssid", "SSId", &s.sta_ssid, &|_| pool(false, "CmndSsid"));
    many("sta_pwd", "Password", &s.sta_pwd, &|_| pool(false, "CmndPassword"));
    // SET_MEM1..16 (CmndMemory): empty ones still take their NUL.
    let empty: [String; 16] = Default::default();
    let mems = s.rules.as_ref().map_or(&empty, |r| &r.mems);
    many("rules.mems", "Mem", mems, &|_| pool(false, "CmndMemory"));
}

/// Bytes the settings' texts take in the firmware's text pool: each text and its NUL,
/// plus [`UNMODELLED_TEXT_BYTES`].
pub fn text_pool_used(s: &Settings) -> usize {
    let mut used = UNMODELLED_TEXT_BYTES;
    each_text(s, |_, _, v, _| used += v.len() + 1);
    used
}

/// By how many bytes the texts overflow the pool (0: they fit). `SettingsUpdateText`
/// refuses a change that makes this non-zero.
pub fn text_pool_overflow(s: &Settings) -> usize {
    text_pool_used(s).saturating_sub(TEXT_POOL_SIZE)
}

fn number(field: &str, value: i64, range: &RangeInclusive<i32>, source: &str) -> Result<(), LimitError> {
    if (i64::from(*range.start())..=i64::from(*range.end())).contains(&value) {
        return Ok(());
    }
    Err(LimitError {
        field: String::from(field),
        problem: format!("{value} is outside {}..={} ({source})", range.start(), range.end()),
    })
}

/// Checks every setting against the firmware's limits: each text within its size and
/// without a NUL, required texts not empty, all texts together within the pool, and every
/// number within the range its command accepts.
pub fn check(s: &Settings) -> Result<(), LimitError> {
    if let Some(r) = s.rules.as_ref() {
        for (i, text) in r.rules.iter().enumerate() {
            if let Err(problem) = crate::rules::storable(text) {
                return Err(LimitError { field: format!("rules.rules[{i}]"), problem: format!("{problem} (SetRule)") });
            }
        }
        if r.calc_resolution > 7 {
            return Err(LimitError {
                field: String::from("rules.calc_resolution"),
                problem: format!("{} is outside 0..=7 (CmndCalcResolution)", r.calc_resolution),
            });
        }
    }
    let mut first: Option<LimitError> = None;
    let mut longest: (usize, String) = (0, String::new());
    each_text(s, |field, command, value, limit| {
        if first.is_some() {
            return;
        }
        let problem = if value.contains('\0') {
            Some(String::from("contains a NUL character, which ends a text in the firmware's pool"))
        } else if limit.required && value.is_empty() {
            Some(format!("is empty, which no {command} command can store ({})", limit.source))
        } else {
            limit
                .max
                .filter(|max| value.len() > *max)
                .map(|max| format!("is {} bytes; the firmware keeps at most {max} ({})", value.len(), limit.source))
        };
        if let Some(problem) = problem {
            first = Some(LimitError { field: field.clone(), problem });
        }
        if value.len() > longest.0 {
            longest = (value.len(), field);
        }
    });
    if let Some(e) = first {
        return Err(e);
    }
    let used = text_pool_used(s);
    if used > TEXT_POOL_SIZE {
        let (len, field) = longest;
        let room = TEXT_POOL_SIZE - (used - len);
        return Err(LimitError {
            field,
            problem: format!(
                "is {len} bytes; beside the other texts at most {room} fit: all texts take {used} bytes of the firmware's \
                 {TEXT_POOL_SIZE}-byte text pool (settings_text_size; SettingsUpdateText refuses: Text overflow by {} char(s))",
                used - TEXT_POOL_SIZE
            ),
        });
    }
    if s.tele_period != 0 {
        number("tele_period", i64::from(s.tele_period), &range::TELE_PERIOD, "CmndTeleperiod; or 0 for off")?;
    }
    number("save_data", i64::from(s.save_data), &range::SAVE_DATA, "CmndSavedata")?;
    number("poweronstate", i64::from(s.poweronstate), &range::POWER_ON_STATE, "CmndPowerOnState")?;
    number("blinktime", i64::from(s.blinktime), &range::BLINK_TIME, "CmndBlinktime")?;
    number("blinkcount", i64::from(s.blinkcount), &range::BLINK_COUNT, "CmndBlinkcount")?;
    number("mqtt_port", i64::from(s.mqtt_port), &range::MQTT_PORT, "CmndMqttPort")?;
    number("mqtt_retry", i64::from(s.mqtt_retry), &range::MQTT_RETRY, "CmndMqttRetry")?;
    number("mqtt_keepalive", i64::from(s.mqtt_keepalive), &range::MQTT_KEEPALIVE, "CmndMqttKeepAlive")?;
    number("mqtt_socket_timeout", i64::from(s.mqtt_socket_timeout), &range::MQTT_TIMEOUT, "CmndMqttTimeout")?;
    let wifi_timeout = range::MQTT_WIFI_TIMEOUT_MS;
    let wifi_timeout = *wifi_timeout.start() / 100..=*wifi_timeout.end() / 100;
    number(
        "mqtt_wifi_timeout",
        i64::from(s.mqtt_wifi_timeout),
        &wifi_timeout,
        "CmndMqttWifiTimeout 100..20000 ms, kept divided by 100",
    )?;
    number("mqttlog_level", i64::from(s.mqttlog_level), &range::LOG_LEVEL, "CmndMqttlog")?;
    number("seriallog_level", i64::from(s.seriallog_level), &range::LOG_LEVEL, "CmndSeriallog")?;
    number("weblog_level", i64::from(s.weblog_level), &range::LOG_LEVEL, "CmndWeblog")?;
    number("webserver", i64::from(s.webserver), &range::WEB_SERVER, "CmndWebServer")?;
    number("ledstate", i64::from(s.ledstate), &range::LED_STATE, "CmndLedState")?;
    number("time_format", i64::from(s.time_format), &range::TIME_FORMAT, "CmndTime")?;
    if i32::from(s.timezone) != range::TIMEZONE_RULES {
        number("timezone", i64::from(s.timezone), &range::TIMEZONE, "CmndTimezone; or 99 for TimeStd/TimeDst")?;
    }
    number("timezone_minutes", i64::from(s.timezone_minutes), &range::TIMEZONE_MINUTES, "CmndTimezone")?;
    number("sta_active", i64::from(s.sta_active), &range::STA_ACTIVE, "CmndAp")?;
    if s.pulse_timer.len() > crate::settings::MAX_PULSETIMERS {
        return Err(LimitError {
            field: String::from("pulse_timer"),
            problem: format!(
                "has {} values; the firmware keeps {} (MAX_PULSETIMERS, CmndPulsetime)",
                s.pulse_timer.len(),
                crate::settings::MAX_PULSETIMERS
            ),
        });
    }
    for (i, mode) in s.switchmode.iter().enumerate() {
        number(&format!("switchmode[{i}]"), i64::from(*mode), &range::SWITCH_MODE, "CmndSwitchMode")?;
    }
    for i in range::PARAM_NARROW_INDEXES {
        let field = format!("param[{i}] (SetOption{})", 32 + i);
        number(&field, i64::from(s.param[i]), &range::PARAM_NARROW, "CmndSetoptionBase")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_within_the_limits() {
        let s = Settings::default();
        assert_eq!(check(&s), Ok(()));
        assert!(text_pool_used(&s) < TEXT_POOL_SIZE);
    }

    #[test]
    fn each_limit_is_named() {
        let s = Settings { mqtt_topic: "x".repeat(151), ..Settings::default() };
        let e = check(&s).unwrap_err().to_string();
        assert_eq!(e, "field mqtt_topic: is 151 bytes; the firmware keeps at most 150 (CmndTopic: char stemp1[TOPSZ])");
        let s = Settings { mqtt_topic: String::new(), ..Settings::default() };
        assert!(check(&s).unwrap_err().to_string().starts_with("field mqtt_topic: is empty"));
        let s = Settings { mqtt_host: "h".repeat(500), ..Settings::default() };
        let e = check(&s).unwrap_err();
        assert_eq!(e.field, "mqtt_host");
        assert!(e.problem.contains("699-byte text pool"), "{e}");
        let s = Settings { tele_period: 5, ..Settings::default() };
        assert_eq!(
            check(&s).unwrap_err().to_string(),
            "field tele_period: 5 is outside 10..=3600 (CmndTeleperiod; or 0 for off)"
        );
        let s = Settings { tele_period: 0, timezone: 99, ..Settings::default() };
        assert_eq!(check(&s), Ok(()));
        let mut s = Settings::default();
        s.param[13] = 0;
        assert!(check(&s).unwrap_err().to_string().starts_with("field param[13] (SetOption45): 0 is outside 1..=250"));
    }

    #[test]
    fn a_command_cannot_store_what_a_file_may_not_hold() {
        use crate::{BootReason, Device, Hardware, Instant, Output};
        let t = Instant::from_millis(0);
        let mut d = Device::boot(Hardware::default(), Settings::default(), BootReason::PowerOn, t);
        d.handle_serial_line(&alloc::format!("MqttHost {}", "h".repeat(500)), t);
        d.handle_serial_line(&alloc::format!("Topic {}", "t".repeat(200)), t);
        let mut overflow = false;
        while let Some(o) = d.poll_output() {
            if let Output::Log(l) = o {
                overflow |= l.text.starts_with("CFG: Text overflow by ");
            }
        }
        assert!(overflow, "SettingsUpdateText refuses a text the pool cannot hold");
        assert_eq!(d.settings().mqtt_host, "");
        assert_eq!(d.settings().mqtt_topic.len(), 150, "Topic keeps the first 150 characters");
        assert_eq!(check(d.settings()), Ok(()));
    }
}
