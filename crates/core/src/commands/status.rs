//! `Status`, `State` and the system commands a monitoring tool reads (`CmndStatus`,
//! `CmndState`, `CmndModule`, `CmndTime`, `CmndTimezone`, the log levels, `WebServer`,
//! `WebPassword`, `SwitchMode`, `StatusRetain`), spec §5 and §5a.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::Mailbox;
use crate::device::{Device, IMAGE_NAME, VERSION};
use crate::json::escape;
use crate::limits::range;
use crate::setoption as so;
use crate::telemetry::{duration_text, iso_time};
use crate::topic::Prefix;

/// `START_VALID_TIME` (tasmota.h): 2016-01-01; the RTC is "set" only past it.
pub(crate) const START_VALID_TIME: u64 = 1_451_602_800;

/// The firmware's fixed figures of a stock `tasmota` build, by chip.
struct Build {
    core: &'static str,
    sdk: &'static str,
    program_kb: u32,
    free_kb: u32,
    flash_kb: u32,
    flash_chip_id: &'static str,
    flash_mode: &'static str,
}

fn build(d: &Device) -> Build {
    if d.hw.chip.is_esp32() {
        Build {
            core: "3_0_4",
            sdk: "5.1.4.240724",
            program_kb: 1864,
            free_kb: 1016,
            flash_kb: 4096,
            flash_chip_id: "164020",
            flash_mode: "DIO",
        }
    } else {
        Build {
            core: "2_7_7",
            sdk: "2.2.2-dev(38a443e)",
            program_kb: 629,
            free_kb: 372,
            flash_kb: 1024,
            flash_chip_id: "14405E",
            flash_mode: "DOUT",
        }
    }
}

fn json_list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[{}]", items.join(","))
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

impl Device {
    /// Free heap now, in bytes: the profile's, less what TLS holds.
    pub fn free_heap(&self) -> u32 {
        let h = &self.hw.heap;
        let taken = match self.tls_link {
            crate::device::TlsLink::None => 0,
            crate::device::TlsLink::Handshake => h.tls_session + h.tls_handshake,
            crate::device::TlsLink::Up => h.tls_session,
        };
        h.free.saturating_sub(taken)
    }

    /// `"Status":{...}` (Status with no payload, or 0).
    fn status0_json(&self) -> String {
        let s = &self.settings;
        let relays = usize::from(self.hw.relays.max(1));
        let names = json_list(s.friendlyname.iter().take(relays).map(|n| quoted(n)));
        // `%*_b`: the relay bits as a binary number of `relays` digits, relay 1 last.
        let power: String = (0..relays).rev().map(|i| if (self.power >> i) & 1 != 0 { '1' } else { '0' }).collect();
        let modes = json_list(s.switchmode.iter().map(|m| format!("{m}")));
        format!(
            "\"Status\":{{\"Module\":{},\"DeviceName\":{},\"FriendlyName\":{names},\"Topic\":{},\"ButtonTopic\":{},\"Power\":\"{power}\",\"PowerLock\":\"{}\",\"PowerOnState\":{},\"LedState\":{},\"LedMask\":\"FFFF\",\"SaveData\":{},\"SaveState\":{},\"SwitchTopic\":{},\"SwitchMode\":{modes},\"ButtonRetain\":{},\"SwitchRetain\":{},\"SensorRetain\":{},\"PowerRetain\":{},\"InfoRetain\":{},\"StateRetain\":{},\"StatusRetain\":{}}}",
            self.hw.module_number,
            quoted(&s.devicename),
            quoted(&self.mqtt_topic),
            quoted(&s.button_topic),
            super::tasmota::binary_digits(s.power_lock, relays as u32),
            s.poweronstate,
            s.ledstate,
            s.save_data,
            s.option(so::SAVE_STATE),
            quoted(&s.switch_topic),
            s.option(so::MQTT_BUTTON_RETAIN),
            s.option(so::MQTT_SWITCH_RETAIN),
            s.option(so::MQTT_SENSOR_RETAIN),
            s.option(so::MQTT_POWER_RETAIN),
            s.option(so::MQTT_INFO_RETAIN),
            s.option(so::MQTT_STATE_RETAIN),
            s.option(so::MQTT_STATUS_RETAIN),
        )
    }

    fn status1_json(&self) -> String {
        let s = &self.settings;
        format!(
            "\"StatusPRM\":{{\"Baudrate\":115200,\"SerialConfig\":\"8N1\",\"GroupTopic\":{},\"OtaUrl\":\"http://ota.tasmota.com/tasmota{}/release/tasmota{}.bin.gz\",\"RestartReason\":{},\"Uptime\":\"{}\",\"StartupUTC\":\"{}\",\"Sleep\":50,\"CfgHolder\":4617,\"BootCount\":{},\"BCResetTime\":\"{}\",\"SaveCount\":{}{}}}",
            quoted(&s.mqtt_grp_topic[0]),
            if self.hw.chip.is_esp32() { "32" } else { "" },
            if self.hw.chip.is_esp32() { "32" } else { "" },
            quoted(self.restart_reason()),
            duration_text(u64::from(self.uptime_s)),
            iso_time(self.utc_secs().saturating_sub(u64::from(self.uptime_s))),
            s.bootcount,
            iso_time(0),
            s.save_count,
            if self.hw.chip.is_esp32() { String::new() } else { format!(",\"SaveAddress\":\"{}\"", "F5000") },
        )
    }

    fn status2_json(&self) -> String {
        let b = build(self);
        let boot = if self.hw.chip.is_esp32() { String::new() } else { String::from("\"Boot\":31,") };
        format!(
            "\"StatusFWR\":{{\"Version\":\"{VERSION}{IMAGE_NAME}\",\"BuildDateTime\":\"{}\",{boot}\"Core\":\"{}\",\"SDK\":\"{}\",\"CpuFrequency\":{},\"Hardware\":\"{}\",\"CR\":\"{}\"}}",
            crate::device::BUILD_DATE_TIME,
            b.core,
            b.sdk,
            self.hw.cpu_mhz,
            self.hw.chip.name(),
            "378/699",
        )
    }

    fn status3_json(&self) -> String {
        let s = &self.settings;
        let flags = &s.flags;
        let params: String = s.param.iter().map(|p| format!("{p:02X}")).collect();
        format!(
            "\"StatusLOG\":{{\"SerialLog\":{},\"WebLog\":{},\"MqttLog\":{},\"SysLog\":0,\"LogHost\":\"\",\"LogPort\":514,\"SSId\":[{},\"\"],\"TelePeriod\":{},\"Resolution\":\"558180C0\",\"SetOption\":[\"{:08X}\",\"{params}\",\"{:08X}\",\"{:08X}\",\"{:08X}\",\"{:08X}\"]}}",
            s.seriallog_level,
            s.weblog_level,
            s.mqttlog_level,
            quoted(&self.hw.wifi.ssid),
            s.tele_period,
            flags[0],
            flags[1],
            flags[2],
            flags[3],
            flags[4],
        )
    }

    fn status4_json(&self) -> String {
        let b = build(self);
        let sensors: Vec<String> = self.hw.sensors.iter().map(|s| String::from(s.kind.name())).collect();
        let esp32 = if self.hw.chip.is_esp32() { ",\"StackLowMark\":3,\"PsrMax\":0,\"PsrFree\":0" } else { "" };
        format!(
            "\"StatusMEM\":{{\"ProgramSize\":{},\"Free\":{},\"Heap\":{}{esp32},\"ProgramFlashSize\":{},\"FlashSize\":{},\"FlashChipId\":\"{}\",\"FlashFrequency\":40,\"FlashMode\":\"{}\",\"Features\":[\"00000809\",\"8F9AC787\",\"04368001\",\"000000CF\",\"010013C0\",\"C000F981\",\"00004004\",\"00001000\",\"04000020\"],\"Drivers\":\"1,2,3,4,5,6,7,8,9,10,12,16,18,19,20,21,22,24,26,27,29,30,35,37,45,62\",\"Sensors\":\"1,2,3,4,5,6{}\",\"I2CDriver\":\"7,8,9,10,11,12,13,14,15,17,18,20,24,29,31,36,41,42,44,46,48,58,62\"}}",
            b.program_kb,
            b.free_kb,
            self.free_heap() / 1024,
            b.flash_kb,
            b.flash_kb,
            b.flash_chip_id,
            b.flash_mode,
            if sensors.is_empty() { String::new() } else { format!(",{}", sensors.join(",")) },
        )
    }

    fn status5_json(&self) -> String {
        let ip = self.ip_address();
        let gw = gateway_of(&ip);
        format!(
            "\"StatusNET\":{{\"Hostname\":{},\"IPAddress\":\"{ip}\",\"Gateway\":\"{gw}\",\"Subnetmask\":\"255.255.255.0\",\"DNSServer1\":\"{gw}\",\"DNSServer2\":\"0.0.0.0\",\"Mac\":\"{}\",\"Webserver\":{},\"HTTP_API\":1,\"WifiConfig\":4,\"WifiPower\":17.0}}",
            quoted(&self.hostname),
            self.hw.mac,
            self.settings.webserver,
        )
    }

    fn status6_json(&self) -> String {
        let s = &self.settings;
        format!(
            "\"StatusMQT\":{{\"MqttHost\":{},\"MqttPort\":{},\"MqttClientMask\":{},\"MqttClient\":{},\"MqttUser\":{},\"MqttCount\":{},\"MAX_PACKET_SIZE\":{},\"KEEPALIVE\":{},\"SOCKET_TIMEOUT\":{}}}",
            quoted(&s.mqtt_host),
            s.mqtt_port,
            quoted(&s.mqtt_client),
            quoted(&self.mqtt_client),
            quoted(&s.mqtt_user),
            self.mqtt.connect_count,
            crate::mqtt::client::MAX_PACKET_SIZE,
            s.mqtt_keepalive,
            s.mqtt_socket_timeout,
        )
    }

    fn status7_json(&self) -> String {
        let utc = self.utc_secs();
        format!(
            "\"StatusTIM\":{{\"UTC\":\"{}Z\",\"Local\":\"{}\",\"StartDST\":\"{}\",\"EndDST\":\"{}\",\"Timezone\":{},\"Sunrise\":\"06:54\",\"Sunset\":\"17:35\"}}",
            iso_time(utc),
            iso_time(self.local_secs()),
            iso_time(86_400 * 87 + 7200),
            iso_time(86_400 * 297 + 10_800),
            self.timezone_json(),
        )
    }

    /// `"StatusSNS":{...}` is the SENSOR JSON; `"StatusSTS":{...}` the STATE JSON.
    fn status_json(&mut self, n: u32) -> String {
        match n {
            0 => self.status0_json(),
            1 => self.status1_json(),
            2 => self.status2_json(),
            3 => self.status3_json(),
            4 => self.status4_json(),
            5 => self.status5_json(),
            6 => self.status6_json(),
            7 => self.status7_json(),
            8 | 10 => format!("\"StatusSNS\":{}", self.sensor_json()),
            // EnergyMarginStatus (xdrv_03_energy.ino; xdrv_03_esp32_energy.ino prints the
            // same for one phase): PowerDelta is a plain number with one phase, and
            // USE_ENERGY_POWER_LIMIT (on in my_user_config.h) adds the five limits. Margins
            // are not modelled, so they are the SettingsDefaultSet2 values: 0, and
            // MAX_POWER_HOLD 10 / MAX_POWER_WINDOW 30 (tasmota.h).
            9 => String::from("\"StatusPTH\":{\"PowerDelta\":0,\"PowerLow\":0,\"PowerHigh\":0,\"VoltageLow\":0,\"VoltageHigh\":0,\"CurrentLow\":0,\"CurrentHigh\":0,\"MaxPower\":0,\"MaxPowerHold\":10,\"MaxPowerWindow\":30,\"MaxEnergy\":0,\"MaxEnergyStart\":0}"),
            _ => format!("\"StatusSTS\":{}", self.mqtt_show_state()),
        }
    }

    /// UTC seconds since 1970 (the RTC runs from 0 at boot until `Time <epoch>` sets it).
    pub(crate) fn utc_secs(&self) -> u64 {
        (i64::from(self.uptime_s) + self.rtc_offset_s).max(0) as u64
    }

    /// Local time (`RtcSecond`): UTC plus the Timezone, but only once the clock holds a
    /// valid time (after 2016-01-01, `START_VALID_TIME`); before that local is UTC. 99
    /// (DST rules) is treated as +00:00.
    pub(crate) fn local_secs(&self) -> u64 {
        let utc = self.utc_secs();
        if utc <= START_VALID_TIME {
            return utc;
        }
        (utc as i64 + self.timezone_offset_s()).max(0) as u64
    }

    fn timezone_offset_s(&self) -> i64 {
        let s = &self.settings;
        if s.timezone == 99 {
            return 0;
        }
        let sign = if s.timezone < 0 { -1 } else { 1 };
        i64::from(s.timezone) * 3600 + sign * i64::from(s.timezone_minutes) * 60
    }

    fn timezone_json(&self) -> String {
        let s = &self.settings;
        if s.timezone == 99 {
            return String::from("99");
        }
        let sign = if s.timezone < 0 { '-' } else { '+' };
        format!("\"{sign}{:02}:{:02}\"", s.timezone.unsigned_abs(), s.timezone_minutes)
    }
}

/// The `.1` address of the device's /24.
fn gateway_of(ip: &str) -> String {
    match ip.rsplit_once('.') {
        Some((net, _)) => format!("{net}.1"),
        None => String::from("0.0.0.0"),
    }
}

/// `CmndStatus`: `Status` one message, `Status n` one message `STATUS<n>`, `Status 0`
/// one message per part (STATUS9 too on an energy device), `Status0` one merged
/// `STATUS0` (spec §5a; support_command.ino CmndStatus and CmndStatusResponse).
pub(super) fn cmnd_status(d: &mut Device, mb: &mut Mailbox) {
    let payload = mb.payload;
    let merged = mb.usridx && mb.index == 0;
    let mqtt_on = d.settings.flag(so::MQTT_ENABLED);
    // Status 6 needs MQTT, 9 an energy monitor (with thresholds), 12 a crash dump, 13
    // shutters; beyond 13 there is nothing.
    let unavailable = match payload {
        6 => !mqtt_on,
        9 => d.hw.energy.is_none(),
        12 | 13 => true,
        n => n > 13,
    };
    if unavailable {
        return;
    }
    let retain = d.settings.flag(so::MQTT_STATUS_RETAIN);
    d.response.clear();
    // CmndStatus's order: 0..7, 9 (EnergyMarginStatus, only with an energy driver), 10
    // (8 is 10's sensor JSON under another name), 11.
    let energy = d.hw.energy.is_some();
    let all: Vec<u32> = [0u32, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11]
        .into_iter()
        .filter(|n| (*n != 6 || mqtt_on) && (*n != 9 || energy))
        .collect();
    if merged {
        let parts: Vec<String> = all.iter().map(|n| d.status_json(*n)).collect();
        let body = format!("{{{}}}", parts.join(","));
        d.publish_prefix_topic(Prefix::Stat, false, "STATUS0", body, retain);
        return;
    }
    let list: Vec<u32> = match payload {
        p if p < 0 => Vec::from([0]),
        0 => all,
        p => Vec::from([p as u32]),
    };
    for n in list {
        let body = d.status_json(n);
        let sub = if n == 0 { String::from("STATUS") } else { format!("STATUS{n}") };
        d.publish_prefix_topic(Prefix::Stat, false, &sub, format!("{{{body}}}"), retain);
    }
}

/// `CmndState`: the STATE JSON as the reply; with SetOption59 also `tele/<t>/STATE`.
pub(super) fn cmnd_state(d: &mut Device, _mb: &mut Mailbox) {
    d.response = d.mqtt_show_state();
    if d.settings.flag(so::HASS_TELE_ON_POWER) {
        d.mqtt_publish_tele_state();
    }
}

/// `CmndModule`: `{"Module":{"1":"Sonoff Basic"}}`. Only the profile's module exists
/// here, so setting it to its own number restarts and anything else shows it.
pub(super) fn cmnd_module(d: &mut Device, mb: &mut Mailbox) {
    if mb.payload >= 0 && mb.payload as u32 == u32::from(d.hw.module_number) && mb.data_len > 0 {
        d.restart_flag = 2;
    }
    d.response = format!("{{\"Module\":{{\"{}\":\"{}\"}}}}", d.hw.module_number, escape(&d.hw.module));
}

/// `CmndTime`: 1..4 choose the format; an epoch (>= 1451602800, 2016) sets the clock and
/// is answered with Time and Epoch (`format = 1` in CmndTime of 14.2.0).
pub(super) fn cmnd_time(d: &mut Device, mb: &mut Mailbox) {
    if range::TIME_FORMAT.contains(&mb.payload) {
        d.settings.time_format = mb.payload as u8;
    } else if mb.payload >= 1_451_602_800 {
        // RtcSetTime -> RtcSync("Time") -> RtcSecond: the rules get Time#Initialized when
        // the local time was not yet valid, Time#Set when it was (support_rtc.ino, 14.2.0).
        let was_valid = d.local_secs() >= START_VALID_TIME;
        d.rtc_offset_s = i64::from(mb.payload) - i64::from(d.uptime_s);
        d.rules_flag |= if was_valid { crate::rules::flag::TIME_SET } else { crate::rules::flag::TIME_INIT };
    }
    // An epoch answers in format 1 of the firmware (`Time 2` here: Time and Epoch),
    // whatever is set (CmndTime: `format = 1` before RtcSetTime).
    let format = if mb.payload >= 1_451_602_800 { 2 } else { d.settings.time_format };
    d.response = d.response_time(format);
    d.response.push('}');
}

/// `CmndTimezone`: any number from -13 sets it; below 15 the minutes after a `:` are
/// taken (capped at 59), 15 and above store 99 (the TimeStd/TimeDst rules).
pub(super) fn cmnd_timezone(d: &mut Device, mb: &mut Mailbox) {
    if mb.data_len > 0 && mb.payload >= *range::TIMEZONE.start() {
        d.settings.timezone_minutes = 0;
        if mb.payload < 15 {
            d.settings.timezone = mb.payload as i8;
            // strtok(data, ":") then strtol(next token, 10).
            if let Some(mm) = mb.data.split(':').filter(|t| !t.is_empty()).nth(1) {
                d.settings.timezone_minutes = c_strtol10(mm).clamp(0, 59) as u8;
            }
        } else {
            d.settings.timezone = range::TIMEZONE_RULES as i8;
        }
    }
    d.response = format!("{{\"Timezone\":{}}}", d.timezone_json());
}

/// `strtol(s, nullptr, 10)`: leading spaces, a sign, digits; 0 when there are none.
fn c_strtol10(s: &str) -> i64 {
    let t = s.trim_start_matches(crate::grammar::is_c_space);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let n =
        digits.bytes().take_while(u8::is_ascii_digit).fold(0i64, |n, b| (n * 10 + i64::from(b - b'0')).min(1 << 40));
    if neg {
        -n
    } else {
        n
    }
}

/// `SerialLog`, `WebLog` (and `MqttLog`, in the MQTT table): 0..4.
pub(super) fn cmnd_seriallog(d: &mut Device, mb: &mut Mailbox) {
    super::log_level(d, mb, |s| &mut s.seriallog_level);
}

pub(super) fn cmnd_weblog(d: &mut Device, mb: &mut Mailbox) {
    super::log_level(d, mb, |s| &mut s.weblog_level);
}

/// `CmndWebServer`: 0 off, 1 user, 2 admin; the reply names the mode.
pub(super) fn cmnd_webserver(d: &mut Device, mb: &mut Mailbox) {
    if range::WEB_SERVER.contains(&mb.payload) {
        d.settings.webserver = mb.payload as u8;
    }
    let text = match d.settings.webserver {
        0 => String::from("OFF"),
        1 => String::from("Active for User on"),
        _ => String::from("Active for Admin on"),
    };
    if d.settings.webserver == 0 {
        d.reply_text(mb, &text);
    } else {
        let value = format!("{text} {} with IP address {}", d.hostname, d.ip_address());
        d.reply_text(mb, &value);
    }
}

/// `CmndWebPassword`: `0` clears, `1` the default (none), otherwise the password; the
/// reply shows it only when it was just set with `WebPassword` (as MqttPassword does),
/// `WebPassword2` and queries show `****`.
pub(super) fn cmnd_webpassword(d: &mut Device, mb: &mut Mailbox) {
    let show = mb.index != 2;
    if mb.data_len > 0 {
        d.settings.web_password = match mb.shortcut() {
            crate::grammar::Shortcut::Clear | crate::grammar::Shortcut::Default => String::new(),
            _ => mb.data.clone(),
        };
        if show {
            let pwd = d.settings.web_password.clone();
            d.reply_text(mb, &pwd);
            return;
        }
    }
    d.reply_text(mb, "****");
}

/// `CmndSwitchMode<n>` 0..16.
pub(super) fn cmnd_switchmode(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index > 28 {
        return;
    }
    let i = mb.index as usize - 1;
    if range::SWITCH_MODE.contains(&mb.payload) {
        d.settings.switchmode[i] = mb.payload as u8;
    }
    d.reply_idx_number(mb, i64::from(d.settings.switchmode[i]));
}

/// `CmndIpAddress<1..5>`: a dotted address sets it (and restarts); IPAddress1 also shows
/// the address in use.
pub(super) fn cmnd_ipaddress(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index > 5 {
        return;
    }
    let i = mb.index as usize - 1;
    if mb.data_len > 0 {
        if let Some(a) = parse_ipv4(&mb.data) {
            d.settings.ipv4_address[i] = a;
            d.restart_flag = 2;
        }
    }
    let [a, b, c, e] = d.settings.ipv4_address[i];
    let now = if i == 0 { format!(" ({})", d.ip_address()) } else { String::new() };
    d.response = format!("{{\"{}{}\":\"{a}.{b}.{c}.{e}{now}\"}}", mb.command, mb.index);
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.trim().split('.');
    for o in out.iter_mut() {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `CmndSsid<1|2>`: no index shows both; a value sets it (and restarts).
pub(super) fn cmnd_ssid(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index > 2 {
        return;
    }
    if !mb.usridx {
        let all = d.settings.sta_ssid.clone();
        d.reply_all(mb, &all);
        return;
    }
    let i = mb.index as usize - 1;
    if mb.data_len > 0 {
        d.settings.sta_ssid[i] = match mb.shortcut() {
            crate::grammar::Shortcut::Clear | crate::grammar::Shortcut::Default => String::new(),
            _ => mb.data.clone(),
        };
        d.settings.sta_active = i as u8;
        d.restart_flag = 2;
    }
    let v = d.settings.sta_ssid[i].clone();
    d.reply_idx_text(mb, &v);
}

/// `CmndPassword<1..4>`: 3 and 4 set 1 and 2 but answer `****`; a value must be longer
/// than 4 characters (or a 0/1 shortcut); a query answers `****`.
pub(super) fn cmnd_wifi_password(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index > 4 {
        return;
    }
    let mut asterisk = mb.index > 2;
    if asterisk {
        mb.index -= 2;
    }
    let i = mb.index as usize - 1;
    let shortcut = mb.shortcut();
    let clear = matches!(shortcut, crate::grammar::Shortcut::Clear | crate::grammar::Shortcut::Default);
    if mb.data_len > 4 || clear {
        d.settings.sta_pwd[i] = if clear { String::new() } else { mb.data.clone() };
        d.settings.sta_active = i as u8;
        d.restart_flag = 2;
        if !asterisk {
            let v = d.settings.sta_pwd[i].clone();
            d.reply_idx_text(mb, &v);
        }
    } else {
        asterisk = true;
    }
    if asterisk {
        d.reply_idx_text(mb, "****");
    }
}
