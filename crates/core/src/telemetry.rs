//! Telemetry (`PerformEverySecond`, `MqttShowState`, spec §6): the uptime counter, the
//! TelePeriod countdown and `tele/<t>/STATE`.
//!
//! The heap figure comes from the device profile's heap model (less what TLS holds);
//! sleep and load are the figures a stock ESP8266 Sonoff Basic reports.

use alloc::format;
use alloc::string::String;

use crate::device::Device;
use crate::json::escape;
use crate::setoption as so;
use crate::topic::Prefix;

/// `TasmotaGlobal.tele_period` before the network is first up ("allow 9999 to be used
/// for first run").
pub(crate) const TELE_PERIOD_UNSET: u32 = 9999;

/// What STATE reports of the WiFi link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wifi {
    pub ssid: String,
    pub bssid: String,
    pub channel: u8,
    /// Signal quality 0..100 (`RSSI` in STATE).
    pub rssi: u8,
    /// dBm (`Signal` in STATE).
    pub signal: i8,
}

impl Default for Wifi {
    fn default() -> Self {
        Wifi {
            ssid: String::from("tasmota-sim"),
            bssid: String::from("02:00:00:00:00:01"),
            channel: 6,
            rssi: 82,
            signal: -59,
        }
    }
}

/// `<d>T<HH:MM:SS>` as in Uptime and Downtime.
pub(crate) fn duration_text(secs: u64) -> String {
    format!("{}T{:02}:{:02}:{:02}", secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since 1970 (the RTC before NTP counts from 0).
pub(crate) fn iso_time(secs: u64) -> String {
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Device {
    /// `PerformEverySecond()`: uptime and the TelePeriod countdown.
    pub(crate) fn perform_every_second(&mut self) {
        self.uptime_s = self.uptime_s.wrapping_add(1);
        if self.uptime_s == crate::sensors::GPIO_HOLD_OFF_S {
            self.switch_hold_off_ended();
        }
        self.energy_every_second();
        self.discovery_every_second();
        if self.settings.tele_period == 0 {
            return;
        }
        if self.tele_period >= TELE_PERIOD_UNSET {
            if self.network_up {
                self.tele_period = 0;
            }
            return;
        }
        self.tele_period += 1;
        if self.tele_period >= u32::from(self.settings.tele_period) {
            self.tele_period = 0;
            self.publish_teleperiod();
        }
    }

    /// `MqttPublishTeleState()`.
    pub(crate) fn mqtt_publish_tele_state(&mut self) {
        let state = self.mqtt_show_state();
        let retain = self.settings.flag(so::MQTT_STATE_RETAIN);
        // MqttPublishTeleState: XdrvRulesProcess(1), so triggers name `Tele-…`.
        self.publish_prefix_topic_rules(Prefix::Tele, "STATE", state, retain, true);
    }

    /// STATE then SENSOR, as every TelePeriod (`MqttPublishTeleperiodSensor`).
    pub(crate) fn publish_teleperiod(&mut self) {
        self.mqtt_publish_tele_state();
        if self.has_sensor_data() {
            let sensor = self.sensor_json();
            // Period counts from one TelePeriod to the next.
            self.inputs.energy.at_last_tele_mws = self.inputs.energy.counted_mws;
            let retain = self.settings.flag(so::MQTT_SENSOR_RETAIN);
            // MqttPublishTeleperiodSensor: XdrvRulesProcess(1).
            self.publish_prefix_topic_rules(Prefix::Tele, "SENSOR", sensor, retain, true);
        }
    }

    /// `ResponseGetTime(format)`: the `{"Time":…` a JSON answer starts with, in the
    /// format `Time 1..4` chose (the firmware stores it as 0..3 in `flag2.time_format`):
    /// 1 local ISO time, 2 that and `"Epoch":<UTC seconds>`, 3 the UTC seconds as a
    /// number, 4 local ISO time with milliseconds (`DT_LOCAL_MILLIS`).
    pub(crate) fn response_time(&self, format: u8) -> String {
        let local = iso_time(self.local_secs());
        match format {
            2 => format!("{{\"Time\":\"{local}\",\"Epoch\":{}", self.utc_secs()),
            3 => format!("{{\"Time\":{}", self.utc_secs()),
            // RtcMillis(): the milliseconds since the last RtcSecond, on the 1 s ticks from boot.
            4 => format!("{{\"Time\":\"{local}.{:03}\"", self.uptime_ms() % 1000),
            _ => format!("{{\"Time\":\"{local}\""),
        }
    }

    /// `MqttShowState()`: the STATE JSON in the firmware's key order, after
    /// `ResponseAppendTime()`.
    pub(crate) fn mqtt_show_state(&self) -> String {
        let up = u64::from(self.uptime_s);
        let mut s = format!(
            "{},\"Uptime\":\"{}\",\"UptimeSec\":{up},\"Heap\":{},\"SleepMode\":\"Dynamic\",\"Sleep\":50,\"LoadAvg\":19,\"MqttCount\":{}",
            self.response_time(self.settings.time_format),
            duration_text(up),
            self.free_heap() / 1024,
            self.mqtt.connect_count
        );
        for device in 1..=u32::from(self.hw.relays) {
            let key = self.power_key(device);
            let text = escape(self.settings.state_text((self.power >> (device - 1)) & 1));
            s.push_str(&format!(",\"{key}\":\"{text}\""));
        }
        let w = &self.hw.wifi;
        s.push_str(&format!(
            ",\"Wifi\":{{\"AP\":1,\"SSId\":\"{}\",\"BSSId\":\"{}\",\"Channel\":{},\"Mode\":\"11n\",\"RSSI\":{},\"Signal\":{},\"LinkCount\":1,\"Downtime\":\"{}\"}}",
            escape(&w.ssid),
            escape(&w.bssid),
            w.channel,
            w.rssi,
            w.signal,
            duration_text(self.hw.wifi_connect_ms / 1000)
        ));
        s.push_str(&format!(",\"Hostname\":\"{}\",\"IPAddress\":\"{}\"}}", escape(&self.hostname), self.ip_address()));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(iso_time(8), "1970-01-01T00:00:08");
        assert_eq!(iso_time(86_400 * 59 + 3661), "1970-03-01T01:01:01");
        assert_eq!(iso_time(1_700_000_000), "2023-11-14T22:13:20");
        assert_eq!(duration_text(8), "0T00:00:08");
        assert_eq!(duration_text(90_061), "1T01:01:01");
    }
}
