//! Tasmota discovery for Home Assistant (`xdrv_12_discovery.ino`, spec §10): retained
//! `tasmota/discovery/<MAC>/config` and `/sensors`, 10 s after boot (`TasDiscoverInit`
//! at MqttInit; spec §10 says "about 10 s after the first connect", which is the same on
//! a device that connects within 10 s) and 1 s after later reconnects and the Discover
//! commands. The keys follow the firmware's `TasDiscoverMessage`, with `tp` from the
//! configured Prefix1..3.

use alloc::format;
use alloc::string::String;

use crate::console::LogLevel;
use crate::device::{Device, VERSION};
use crate::json::escape;
use crate::setoption as so;

/// `MAX_FRIENDLYNAMES`, `MAX_RELAYS_SET`, `MAX_SWITCHES_SET`, `MAX_KEYS_SET`,
/// `MAX_SHUTTERS`.
const MAX_FRIENDLYNAMES: usize = 8;
const MAX_RELAYS_SET: usize = 32;
const MAX_SWITCHES_SET: usize = 28;
const MAX_KEYS_SET: usize = 32;
const MAX_SHUTTERS: usize = 4;

/// Seconds from boot (`TasDiscoverInit` at MqttInit) to the first discovery, and from a
/// reconnect or a Discover command (`TasRediscover`).
pub(crate) const FIRST_DELAY_S: u8 = 10;
pub(crate) const AGAIN_DELAY_S: u8 = 1;

impl Device {
    /// The discovery topic of this device.
    pub fn discovery_topic(&self, kind: &str) -> String {
        format!("tasmota/discovery/{}/{kind}", self.unique_id)
    }

    /// `TasDiscoverMessage()`: the config JSON, keys in the firmware's order.
    pub fn discovery_config(&self) -> String {
        let s = &self.settings;
        let relays = usize::from(self.hw.relays);
        let maxfn = relays.clamp(1, MAX_FRIENDLYNAMES);
        let mut out = format!("{{\"ip\":\"{}\",\"dn\":\"{}\",\"fn\":[", self.ip_address(), escape(&s.devicename));
        for i in 0..MAX_FRIENDLYNAMES {
            if i > 0 {
                out.push(',');
            }
            if i < maxfn {
                out.push_str(&format!("\"{}\"", escape(&s.friendlyname[i])));
            } else {
                out.push_str("null");
            }
        }
        out.push_str(&format!(
            "],\"hn\":\"{}\",\"mac\":\"{}\",\"md\":\"{}\",\"ty\":0,\"if\":0,\"ofln\":\"Offline\",\"onln\":\"Online\",\"state\":[\"{}\",\"{}\",\"{}\",\"{}\"],\"sw\":\"{VERSION}\",\"t\":\"{}\",\"ft\":\"{}\",\"tp\":[\"{}\",\"{}\",\"{}\"],\"rl\":[",
            escape(&self.hostname),
            self.unique_id,
            escape(&self.hw.module),
            escape(s.state_text(0)),
            escape(s.state_text(1)),
            escape(s.state_text(2)),
            escape(s.state_text(3)),
            escape(&self.mqtt_topic),
            escape(&s.mqtt_fulltopic),
            escape(&s.mqtt_prefix[0]),
            escape(&s.mqtt_prefix[1]),
            escape(&s.mqtt_prefix[2]),
        ));
        push_list(&mut out, MAX_RELAYS_SET, |i| if i < relays { String::from("1") } else { String::from("0") });
        out.push_str("],\"swc\":[");
        let switches = usize::from(self.hw.switches);
        let show_switches = s.flag(so::MQTT_SWITCHES);
        push_list(&mut out, MAX_SWITCHES_SET, |i| {
            if i < switches && show_switches {
                format!("{}", s.switchmode[i])
            } else {
                String::from("-1")
            }
        });
        out.push_str("],\"swn\":[");
        push_list(&mut out, MAX_SWITCHES_SET, |i| {
            if i < switches && show_switches {
                format!("\"Switch{}\"", i + 1)
            } else {
                String::from("null")
            }
        });
        out.push_str("],\"btn\":[");
        let buttons = usize::from(self.hw.buttons);
        let show_buttons = s.flag(so::MQTT_BUTTONS);
        push_list(&mut out, MAX_KEYS_SET, |i| String::from(if i < buttons && show_buttons { "1" } else { "0" }));
        out.push_str(&format!(
            "],\"so\":{{\"4\":{},\"11\":{},\"13\":{},\"17\":{},\"20\":{},\"30\":{},\"68\":{},\"73\":{},\"82\":{},\"114\":{},\"117\":{}}},\"lk\":0,\"lt_st\":0,\"bat\":0,\"dslp\":0,\"sho\":[",
            s.option(so::MQTT_RESPONSE),
            s.option(so::BUTTON_SWAP),
            s.option(so::BUTTON_SINGLE),
            s.option(so::DECIMAL_TEXT),
            s.option(so::NOT_POWER_LINKED),
            s.option(so::HASS_LIGHT),
            s.option(so::PWM_MULTI_CHANNELS),
            s.option(so::MQTT_BUTTONS),
            s.option(so::ALEXA_CT_RANGE),
            s.option(so::MQTT_SWITCHES),
            s.option(so::FADE_FIXED_DURATION),
        ));
        push_list(&mut out, MAX_SHUTTERS, |_| String::from("0"));
        out.push_str("],\"sht\":[");
        push_list(&mut out, MAX_SHUTTERS, |_| String::from("[0,0,0]"));
        out.push_str("],\"ver\":1}");
        out
    }

    /// The sensors JSON: `{"sn":<SENSOR JSON>,"ver":1}`.
    pub fn discovery_sensors(&mut self) -> String {
        format!("{{\"sn\":{},\"ver\":1}}", self.sensor_json())
    }

    /// `TasDiscovery()`: config and sensors, retained, logged at DEBUG_MORE; with
    /// SetOption19 on, empty retained payloads clear what was published.
    pub(crate) fn tas_discovery(&mut self) {
        let off = self.settings.flag(so::HASS_DISCOVERY);
        let config = if off { String::new() } else { self.discovery_config() };
        let topic = self.discovery_topic("config");
        self.publish_at(LogLevel::DebugMore, topic, config, true);
        let sensors = if off { String::new() } else { self.discovery_sensors() };
        let topic = self.discovery_topic("sensors");
        self.publish_at(LogLevel::DebugMore, topic, sensors, true);
    }

    /// Called once a second (`FUNC_EVERY_SECOND`, only while SetOption3 is on): counts
    /// down to the next discovery. As on the firmware, a discovery due while MQTT is down
    /// is lost (its publishes fail) until the next reconnect rediscovers.
    pub(crate) fn discovery_every_second(&mut self) {
        if self.discovery_in == 0 || !self.settings.flag(so::MQTT_ENABLED) {
            return;
        }
        self.discovery_in -= 1;
        if self.discovery_in == 0 {
            self.tas_discovery();
        }
    }

    /// Schedules a discovery `secs` from now.
    pub(crate) fn rediscover(&mut self, secs: u8) {
        self.discovery_in = secs;
    }
}

fn push_list(out: &mut String, n: usize, item: impl Fn(usize) -> String) {
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item(i));
    }
}
