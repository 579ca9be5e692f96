//! The MQTT driver's command table (`kMqttCommands` in `xdrv_02_9_mqtt.ino`). These
//! commands answer only while SetOption3 is on.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Mailbox, Table};
use crate::device::Device;
use crate::grammar::Shortcut;
use crate::limits::{self, range};
use crate::setoption as so;
use crate::settings::{
    DEFAULT_CLIENT, DEFAULT_FULLTOPIC, DEFAULT_GROUPTOPIC, DEFAULT_MQTT_PASS, DEFAULT_MQTT_PORT, DEFAULT_MQTT_USER,
    DEFAULT_PREFIXES, DEFAULT_TOPIC,
};
use crate::topic::Prefix;

pub(crate) static TABLE: Table = Table {
    synonyms: &[
        ("MqttJSONOnly", 90),
        ("MqttTLS", 103),
        ("MqttTLSFingerprint", 132),
        ("MqttNoRetain", 104),
        ("MqttDetachRelay", 114),
        // The discovery driver's (xdrv_12), also only with SetOption3 on.
        ("DiscoverOff", 19),
        ("DiscoverButton", 73),
        ("DiscoverSwitch", 114),
    ],
    commands: &[
        ("MqttFingerprint", cmnd_mqtt_fingerprint),
        ("MqttUser", cmnd_mqtt_user),
        ("MqttPassword", cmnd_mqtt_password),
        ("MqttKeepAlive", cmnd_mqtt_keepalive),
        ("MqttTimeout", cmnd_mqtt_timeout),
        ("MqttWifiTimeout", cmnd_mqtt_wifi_timeout),
        ("MqttHost", cmnd_mqtt_host),
        ("MqttPort", cmnd_mqtt_port),
        ("MqttRetry", cmnd_mqtt_retry),
        ("StateText", cmnd_state_text),
        ("MqttClient", cmnd_mqtt_client),
        ("FullTopic", cmnd_fulltopic),
        ("Prefix", cmnd_prefix),
        ("GroupTopic", cmnd_grouptopic),
        ("Topic", cmnd_topic),
        ("Publish", cmnd_publish),
        ("MqttLog", cmnd_mqttlog),
        ("ButtonTopic", cmnd_button_topic),
        ("SwitchTopic", cmnd_switch_topic),
        ("ButtonRetain", cmnd_button_retain),
        ("SwitchRetain", cmnd_switch_retain),
        ("PowerRetain", cmnd_power_retain),
        ("SensorRetain", cmnd_sensor_retain),
        ("InfoRetain", cmnd_info_retain),
        ("StateRetain", cmnd_state_retain),
        ("StatusRetain", cmnd_status_retain),
        ("Discover", cmnd_discover),
    ],
};

/// The default TLS fingerprints: slot 1 learns on first use, slot 2 is SHA1("").
pub const DEFAULT_FINGERPRINTS: [[u8; 20]; 2] = [
    [0; 20],
    [
        0xDA, 0x39, 0xA3, 0xEE, 0x5E, 0x6B, 0x4B, 0x0D, 0x32, 0x55, 0xBF, 0xEF, 0x95, 0x60, 0x18, 0x90, 0xAF, 0xD8,
        0x07, 0x09,
    ],
];

/// `MakeValidMqtt(0, ..)`: `+`, `#` and space become `_`.
fn valid_mqtt_replace(s: &str) -> String {
    s.chars().map(|c| if matches!(c, '+' | '#' | ' ') { '_' } else { c }).collect()
}

/// `MakeValidMqtt(1, ..)`: `+`, `#` and space are deleted.
fn valid_mqtt_delete(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '+' | '#' | ' ')).collect()
}

/// A string setting with the clear and default shortcuts.
fn text_value<'a>(mb: &'a Mailbox, default: &'a str) -> &'a str {
    match mb.shortcut() {
        Shortcut::Clear => "",
        Shortcut::Default => default,
        _ => &mb.data,
    }
}

fn cmnd_mqtt_host(d: &mut Device, mb: &mut Mailbox) {
    if mb.data_len > 0 {
        d.settings.mqtt_host = String::from(text_value(mb, ""));
        d.restart_flag = 2;
    }
    let v = d.settings.mqtt_host.clone();
    d.reply_text(mb, &v);
}

fn cmnd_mqtt_port(d: &mut Device, mb: &mut Mailbox) {
    if range::MQTT_PORT.contains(&mb.payload) {
        d.settings.mqtt_port = if mb.payload == 1 { DEFAULT_MQTT_PORT } else { mb.payload as u16 };
        d.restart_flag = 2;
    }
    d.reply_number(mb, i64::from(d.settings.mqtt_port));
}

fn cmnd_mqtt_user(d: &mut Device, mb: &mut Mailbox) {
    if mb.data_len > 0 {
        d.settings.mqtt_user = String::from(text_value(mb, DEFAULT_MQTT_USER));
        d.restart_flag = 2;
    }
    let v = d.settings.mqtt_user.clone();
    d.reply_text(mb, &v);
}

/// `MqttPassword <p>` echoes the password in clear; a query and `MqttPassword2` answer
/// `****` (spec §5: the firmware's own behaviour).
fn cmnd_mqtt_password(d: &mut Device, mb: &mut Mailbox) {
    let mut asterisk = mb.index == 2;
    if mb.data_len > 0 {
        d.settings.mqtt_pwd = String::from(text_value(mb, DEFAULT_MQTT_PASS));
        if !asterisk {
            let v = d.settings.mqtt_pwd.clone();
            d.reply_text(mb, &v);
        }
        d.restart_flag = 2;
    } else {
        asterisk = true;
    }
    if asterisk {
        d.response = format!("{{\"{}\":\"****\"}}", mb.command);
    }
}

fn cmnd_mqtt_keepalive(d: &mut Device, mb: &mut Mailbox) {
    if range::MQTT_KEEPALIVE.contains(&mb.payload) {
        d.settings.mqtt_keepalive = mb.payload as u16;
    }
    d.reply_number(mb, i64::from(d.settings.mqtt_keepalive));
}

fn cmnd_mqtt_timeout(d: &mut Device, mb: &mut Mailbox) {
    if range::MQTT_TIMEOUT.contains(&mb.payload) {
        d.settings.mqtt_socket_timeout = mb.payload as u16;
    }
    d.reply_number(mb, i64::from(d.settings.mqtt_socket_timeout));
}

fn cmnd_mqtt_wifi_timeout(d: &mut Device, mb: &mut Mailbox) {
    if range::MQTT_WIFI_TIMEOUT_MS.contains(&mb.payload) {
        d.settings.mqtt_wifi_timeout = (mb.payload / 100) as u8;
    }
    d.reply_number(mb, i64::from(d.settings.mqtt_wifi_timeout) * 100);
}

fn cmnd_mqtt_retry(d: &mut Device, mb: &mut Mailbox) {
    if range::MQTT_RETRY.contains(&mb.payload) {
        d.settings.mqtt_retry = mb.payload as u16;
        d.mqtt.retry_counter = d.settings.mqtt_retry;
    }
    d.reply_number(mb, i64::from(d.settings.mqtt_retry));
}

fn cmnd_mqttlog(d: &mut Device, mb: &mut Mailbox) {
    super::log_level(d, mb, |s| &mut s.mqttlog_level);
}

/// `CmndStateText` (in both the core and the MQTT table; the core one answers).
pub(crate) fn cmnd_state_text(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index > 4 {
        return;
    }
    if !mb.usridx {
        let all = d.settings.state_text.clone();
        d.reply_all(mb, &all);
        return;
    }
    let i = mb.index as usize - 1;
    if mb.data_len > 0 {
        d.settings.state_text[i] = mb.data.replace(' ', "_");
    }
    let v = d.settings.state_text[i].clone();
    d.reply_idx_text(mb, &v);
}

fn cmnd_mqtt_client(d: &mut Device, mb: &mut Mailbox) {
    if !mb.grpflg && mb.data_len > 0 {
        d.settings.mqtt_client =
            String::from(if mb.shortcut() == Shortcut::Default { DEFAULT_CLIENT } else { mb.data.as_str() });
        d.restart_flag = 2;
    }
    let v = d.settings.mqtt_client.clone();
    d.reply_text(mb, &v);
}

/// Publishes the LWT of the current topic before a Topic or FullTopic change: `Offline`
/// with SetOption10, else an empty retained message that clears it.
fn publish_old_lwt(d: &mut Device) {
    let payload = String::from(if d.settings.flag(so::MQTT_OFFLINE) { "Offline" } else { "" });
    d.publish_prefix_topic(Prefix::Tele, false, "LWT", payload, true);
}

fn cmnd_fulltopic(d: &mut Device, mb: &mut Mailbox) {
    if mb.data_len > 0 {
        mb.data = valid_mqtt_delete(&mb.data);
        let new = String::from(if mb.shortcut() == Shortcut::Default { DEFAULT_FULLTOPIC } else { mb.data.as_str() });
        let new = String::from(crate::topic::truncate(&new, limits::FULLTOPIC.max.unwrap_or(usize::MAX)));
        if new != d.settings.mqtt_fulltopic {
            publish_old_lwt(d);
            d.settings.mqtt_fulltopic = new;
            d.restart_flag = 2;
        }
    }
    let v = d.settings.mqtt_fulltopic.clone();
    d.reply_text(mb, &v);
}

fn cmnd_prefix(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index > 3 {
        return;
    }
    if !mb.usridx {
        let all = d.settings.mqtt_prefix.clone();
        d.reply_all(mb, &all);
        return;
    }
    let i = mb.index as usize - 1;
    if mb.data_len > 0 {
        let data = valid_mqtt_replace(&mb.data);
        d.settings.mqtt_prefix[i] =
            if mb.shortcut() == Shortcut::Default { String::from(DEFAULT_PREFIXES[i]) } else { data };
        d.restart_flag = 2;
    }
    let v = d.settings.mqtt_prefix[i].clone();
    d.reply_idx_text(mb, &v);
}

/// `CmndPublish`: the topic is the text up to the first space (at most 150 characters,
/// `#` standing for a space), the payload everything after that space (none: an empty
/// message); `Publish2` retains. It answers nothing, and with no argument at all leaves
/// the `{"Command":"Error"}` preset.
fn cmnd_publish(d: &mut Device, mb: &mut Mailbox) {
    if mb.data_len == 0 {
        return;
    }
    // strtok_r(data, " "): leading spaces skipped, the token ends at the next space.
    let data = mb.data.trim_start_matches(' ');
    let (topic, payload) = match data.find(' ') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, ""),
    };
    if !topic.is_empty() {
        let topic = String::from(crate::topic::truncate(topic, crate::topic::TOPSZ - 1)).replace('#', " ");
        d.publish(topic, String::from(payload), mb.index == 2);
    }
    d.response.clear();
}

fn cmnd_grouptopic(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index > 4 {
        return;
    }
    if mb.data_len > 0 {
        mb.data = valid_mqtt_replace(&mb.data);
        // CmndGroupTopic: a group topic equal to the device's (expanded) Topic would
        // make every group command arrive twice.
        if mb.data == d.mqtt_topic {
            d.log(crate::LogLevel::Info, String::from("MQT: Error: GroupTopic must differ from Topic"));
            mb.set_shortcut_default();
        }
        let value = String::from(text_value(mb, DEFAULT_GROUPTOPIC));
        d.settings.mqtt_grp_topic[mb.index as usize - 1] = value;
        // Eliminate duplicates (topics are case-sensitive), keep at least one, fill from 1.
        let mut unique: Vec<String> = Vec::new();
        for g in d.settings.mqtt_grp_topic.iter() {
            if !g.is_empty() && !unique.contains(g) {
                unique.push(g.clone());
            }
        }
        if unique.is_empty() {
            d.settings.mqtt_grp_topic[0] = String::from(DEFAULT_GROUPTOPIC);
        } else {
            for (i, slot) in d.settings.mqtt_grp_topic.iter_mut().enumerate() {
                *slot = unique.get(i).cloned().unwrap_or_default();
            }
        }
        d.restart_flag = 2;
    }
    let all = d.settings.mqtt_grp_topic.clone();
    d.reply_all(mb, &all);
}

fn cmnd_topic(d: &mut Device, mb: &mut Mailbox) {
    if !mb.grpflg && mb.data_len > 0 {
        mb.data = valid_mqtt_replace(&mb.data);
        let new = String::from(if mb.shortcut() == Shortcut::Default { DEFAULT_TOPIC } else { mb.data.as_str() });
        let new = String::from(crate::topic::truncate(&new, limits::TOPIC.max.unwrap_or(usize::MAX)));
        if new != d.settings.mqtt_topic {
            publish_old_lwt(d);
            d.settings.mqtt_topic = new;
            d.restart_flag = 2;
        }
    }
    let v = d.settings.mqtt_topic.clone();
    d.reply_text(mb, &v);
}

/// ButtonTopic and SwitchTopic: `0` clears, `1` is the device's own topic, `2` is `0`.
fn key_topic(d: &Device, mb: &mut Mailbox) -> Option<String> {
    if mb.grpflg || mb.data_len == 0 {
        return None;
    }
    mb.data = valid_mqtt_replace(&mb.data);
    Some(match mb.shortcut() {
        Shortcut::Clear => String::new(),
        Shortcut::Default => d.mqtt_topic.clone(),
        Shortcut::User => String::from("0"),
        Shortcut::None => mb.data.clone(),
    })
}

fn cmnd_button_topic(d: &mut Device, mb: &mut Mailbox) {
    if let Some(v) = key_topic(d, mb) {
        d.settings.button_topic = v;
    }
    let v = d.settings.button_topic.clone();
    d.reply_text(mb, &v);
}

fn cmnd_switch_topic(d: &mut Device, mb: &mut Mailbox) {
    if let Some(v) = key_topic(d, mb) {
        d.settings.switch_topic = v;
    }
    let v = d.settings.switch_topic.clone();
    d.reply_text(mb, &v);
}

/// `MAX_KEYS` / `MAX_SWITCHES` of the build: 8 on ESP8266, 28 on ESP32 (tasmota.h).
fn max_keys(d: &Device) -> u32 {
    if d.hw.chip.is_esp32() {
        28
    } else {
        8
    }
}

/// The `*Retain` commands: 0 or 1 sets the flag, anything else shows it. Setting 0 first
/// runs `clear` (the firmware's empty retained publishes), while the flag is still as it
/// was.
fn retain_command(d: &mut Device, mb: &mut Mailbox, option: u32, clear: fn(&mut Device)) {
    if (0..=1).contains(&mb.payload) {
        if mb.payload == 0 {
            clear(d);
        }
        d.settings.set_option(option, mb.payload as u32);
    }
    d.reply_state_text(mb, d.settings.option(option));
}

/// An empty retained message to `<prefix>/<topic>/<subtopic>` (`MqttPublishPrefixTopic_P`
/// with the response cleared and retain set).
fn clear_retained(d: &mut Device, prefix: Prefix, subtopic: &str) {
    d.publish_prefix_topic(prefix, false, subtopic, String::new(), true);
}

/// `CmndButtonRetain`: 0 sends `SendKey(KEY_BUTTON, 1..MAX_KEYS, CLEAR_RETAIN)`, which
/// publishes only to an active ButtonTopic while connected, retained only if ButtonRetain
/// was on.
fn cmnd_button_retain(d: &mut Device, mb: &mut Mailbox) {
    retain_command(d, mb, so::MQTT_BUTTON_RETAIN, |d| {
        for i in 1..=max_keys(d) {
            d.send_key(crate::sensors::Key::Button, i, crate::sensors::CLEAR_RETAIN);
        }
    });
}

/// `CmndSwitchRetain`: as ButtonRetain, for `SendKey(KEY_SWITCH, 1..MAX_SWITCHES, ..)`.
fn cmnd_switch_retain(d: &mut Device, mb: &mut Mailbox) {
    retain_command(d, mb, so::MQTT_SWITCH_RETAIN, |d| {
        for i in 1..=max_keys(d) {
            d.send_key(crate::sensors::Key::Switch, i, crate::sensors::CLEAR_RETAIN);
        }
    });
}

/// `CmndPowerRetain`: 0 clears `stat/<topic>/POWER<n>` of every relay; 1 also turns
/// SetOption90 off.
fn cmnd_power_retain(d: &mut Device, mb: &mut Mailbox) {
    retain_command(d, mb, so::MQTT_POWER_RETAIN, |d| {
        for device in 1..=u32::from(d.hw.relays) {
            let key = d.power_key(device);
            let topic = d.own_topic(Prefix::Stat, &key);
            d.publish(topic, String::new(), true);
        }
    });
    if mb.payload == 1 {
        d.settings.set_option(so::ONLY_JSON_MESSAGE, 0);
    }
}

/// `CmndSensorRetain`: 0 clears `tele/<topic>/SENSOR` and `ENERGY`.
fn cmnd_sensor_retain(d: &mut Device, mb: &mut Mailbox) {
    retain_command(d, mb, so::MQTT_SENSOR_RETAIN, |d| {
        clear_retained(d, Prefix::Tele, "SENSOR");
        clear_retained(d, Prefix::Tele, "ENERGY");
    });
}

/// `CmndInfoRetain`: 0 clears `tele/<topic>/INFO1..3`.
fn cmnd_info_retain(d: &mut Device, mb: &mut Mailbox) {
    retain_command(d, mb, so::MQTT_INFO_RETAIN, |d| {
        for sub in ["INFO1", "INFO2", "INFO3"] {
            clear_retained(d, Prefix::Tele, sub);
        }
    });
}

/// `CmndStateRetain`: 0 clears `stat/<topic>/STATE` (stat, as the source has it).
fn cmnd_state_retain(d: &mut Device, mb: &mut Mailbox) {
    retain_command(d, mb, so::MQTT_STATE_RETAIN, |d| clear_retained(d, Prefix::Stat, "STATE"));
}

/// `CmndStatusRetain`: 0 clears `stat/<topic>/STATUS` and `STATUS0..13`.
pub(super) fn cmnd_status_retain(d: &mut Device, mb: &mut Mailbox) {
    retain_command(d, mb, so::MQTT_STATUS_RETAIN, |d| {
        clear_retained(d, Prefix::Stat, "STATUS");
        for i in 0..=13 {
            clear_retained(d, Prefix::Stat, &format!("STATUS{i}"));
        }
    });
}

/// `CmndMqttFingerprint`: twenty hex bytes separated by spaces.
fn cmnd_mqtt_fingerprint(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index > 2 {
        return;
    }
    let i = mb.index as usize - 1;
    if mb.data_len > 0 && mb.data_len < 60 {
        d.settings.mqtt_fingerprint[i] = match mb.shortcut() {
            Shortcut::Default => DEFAULT_FINGERPRINTS[i],
            Shortcut::Clear => [0; 20],
            _ => parse_fingerprint(&mb.data),
        };
        d.restart_flag = 2;
    }
    let hex: Vec<String> = d.settings.mqtt_fingerprint[i].iter().map(|b| format!("{b:02X}")).collect();
    d.reply_idx_text(mb, &hex.join(" "));
}

/// Twenty successive `strtol(p, &p, 16)` calls, each byte truncated to 8 bits; parsing
/// stops advancing at the first non-hex text, leaving the rest zero.
fn parse_fingerprint(s: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    let mut rest = s;
    for byte in out.iter_mut() {
        let t = rest.trim_start_matches(crate::grammar::is_c_space);
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .filter(|r| r.starts_with(|c: char| c.is_ascii_hexdigit()))
            .unwrap_or(t);
        let end = t.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(t.len());
        if end == 0 {
            break;
        }
        let v = t[..end]
            .chars()
            .fold(0u64, |n, c| (n * 16 + u64::from(c.to_digit(16).unwrap_or(0))).min(u64::from(u32::MAX)));
        *byte = v as u8;
        rest = &t[end..];
    }
    out
}

/// `CmndTasDiscover`: 1 switches discovery on (SetOption19 0), 0 off; either way it is
/// published again a second later.
fn cmnd_discover(d: &mut Device, mb: &mut Mailbox) {
    if mb.payload >= 0 {
        d.settings.set_option(so::HASS_DISCOVERY, u32::from(mb.payload & 1 == 0));
        d.rediscover(crate::discovery::AGAIN_DELAY_S);
    }
    d.reply_state_text(mb, u32::from(!d.settings.flag(so::HASS_DISCOVERY)));
}
