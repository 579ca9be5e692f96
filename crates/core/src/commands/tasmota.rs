//! The core command table (`kTasmotaCommands` in `support_command.ino`): Backlog, Delay,
//! Power, SetOption, Restart, Reset and the naming and timing commands.

use alloc::format;
use alloc::string::String;

use super::{Mailbox, Table};
use crate::backlog;
use crate::device::{Device, RestartKind};
use crate::grammar::Shortcut;
use crate::limits::range;
use crate::settings::{OptionSlot, DEFAULT_HOSTNAME, DEFAULT_TELE_PERIOD, MAX_PULSETIMERS};

pub(crate) static TABLE: Table = Table {
    synonyms: &[("WifiNoSleep", 127)],
    commands: &[
        ("Restart", cmnd_restart),
        ("Backlog", cmnd_backlog),
        ("Delay", cmnd_delay),
        ("Power", cmnd_power),
        ("PowerLock", cmnd_power_lock),
        ("PowerOnState", cmnd_power_on_state),
        ("PulseTime", cmnd_pulsetime),
        ("BlinkTime", cmnd_blinktime),
        ("BlinkCount", cmnd_blinkcount),
        ("StateText", super::mqtt::cmnd_state_text),
        ("SaveData", cmnd_savedata),
        ("SO", cmnd_setoption),
        ("SetOption", cmnd_setoption),
        ("Hostname", cmnd_hostname),
        ("DeviceName", cmnd_devicename),
        ("FN", cmnd_friendlyname),
        ("FriendlyName", cmnd_friendlyname),
        ("TelePeriod", cmnd_teleperiod),
        ("Status", super::status::cmnd_status),
        ("State", super::status::cmnd_state),
        ("Module", super::status::cmnd_module),
        ("Time", super::status::cmnd_time),
        ("Timezone", super::status::cmnd_timezone),
        ("SerialLog", super::status::cmnd_seriallog),
        ("WebLog", super::status::cmnd_weblog),
        ("Webserver", super::status::cmnd_webserver),
        ("WebPassword", super::status::cmnd_webpassword),
        ("SwitchMode", super::status::cmnd_switchmode),
        ("IPAddress", super::status::cmnd_ipaddress),
        ("SSId", super::status::cmnd_ssid),
        ("Password", super::status::cmnd_wifi_password),
        ("Reset", cmnd_reset),
        ("Json", cmnd_json),
    ],
};

/// `CmndBacklog`: queue entries, or with no data abort the queue.
fn cmnd_backlog(d: &mut Device, mb: &mut Mailbox) {
    if mb.data_len > 0 {
        d.backlog.nodelay = mb.index & 1 == 0;
        d.backlog.no_mqtt_response = mb.index & 2 == 2;
        d.backlog.extend(backlog::split(&mb.data));
        d.response.clear();
        d.backlog.timer = d.now;
    } else {
        let was_empty = !d.backlog.clear();
        d.reply_text(mb, if was_empty { "Empty" } else { "Aborted" });
    }
}

/// `CmndDelay`: `Delay -1` waits for the next whole second, 2..3600 that many 100 ms.
fn cmnd_delay(d: &mut Device, mb: &mut Mailbox) {
    if mb.payload == -1 {
        let rtc_ms = d.uptime_ms() % 1000;
        d.backlog.timer = d.now.plus_millis(1000 - rtc_ms);
    } else if (2..=3600).contains(&mb.payload) {
        d.backlog.timer = d.now.plus_millis(100 * mb.payload as u64);
    }
    let remaining = d.backlog.timer.millis_since(d.now) / 100;
    d.reply_number(mb, remaining as i64);
}

/// `CmndPower`: Power1..n act on one relay, Power0 on all; anything but a state word
/// shows the state. A relay number beyond the device's answers Error.
fn cmnd_power(d: &mut Device, mb: &mut Mailbox) {
    let relays = u32::from(d.hw.relays);
    if mb.index > 0 && mb.index <= relays {
        let state = if (0..=4).contains(&mb.payload) { mb.payload } else { 16 };
        d.execute_command_power(mb.index, state);
        d.response.clear();
    } else if mb.index == 0 {
        let state = if (0..=2).contains(&mb.payload) { mb.payload } else { 16 };
        d.set_all_power(state);
        d.response.clear();
    }
}

/// `CmndPowerLock`: `PowerLock<n> 0|1` unlocks or locks relay n, `PowerLock0` all of
/// them; the reply is the lock bits as a binary number of one digit per relay.
fn cmnd_power_lock(d: &mut Device, mb: &mut Mailbox) {
    let relays = u32::from(d.hw.relays);
    if mb.index > relays {
        return;
    }
    if mb.payload >= 0 {
        let on = mb.payload & 1 == 1;
        if mb.index == 0 {
            d.settings.power_lock = if on { relays_bits(relays) } else { 0 };
        } else {
            let bit = 1u32 << (mb.index - 1);
            d.settings.power_lock = if on { d.settings.power_lock | bit } else { d.settings.power_lock & !bit };
        }
    }
    let bits = binary_digits(d.settings.power_lock, relays);
    d.reply_text(mb, &bits);
}

/// `%*_b` of `ext_snprintf_P`: `value` in binary, `width` digits (relay 1 last).
pub(crate) fn binary_digits(value: u32, width: u32) -> String {
    (0..width.max(1)).rev().map(|i| if i < 32 && (value >> i) & 1 != 0 { '1' } else { '0' }).collect()
}

fn relays_bits(relays: u32) -> u32 {
    if relays >= 32 {
        u32::MAX
    } else {
        (1u32 << relays) - 1
    }
}

/// `CmndPulsetime`: `PulseTime<n> <v>` sets timer n (0 off, 1..111 tenths of a second,
/// 112..65535 seconds + 100) and starts it; `PulseTime` alone lists all 32.
fn cmnd_pulsetime(d: &mut Device, mb: &mut Mailbox) {
    if mb.index < 1 || mb.index as usize > MAX_PULSETIMERS {
        return;
    }
    if !mb.usridx && mb.data_len == 0 {
        let mut out = String::from("{\"PulseTime\":{\"Set\":[");
        for i in 0..MAX_PULSETIMERS {
            out.push_str(&format!("{}{}", if i > 0 { "," } else { "" }, d.settings.pulse_time(i)));
        }
        out.push_str("],\"Remaining\":[");
        for i in 0..MAX_PULSETIMERS {
            out.push_str(&format!("{}{}", if i > 0 { "," } else { "" }, d.pulse_remaining(i)));
        }
        out.push_str("]}}");
        d.response = out;
        return;
    }
    let i = mb.index as usize - 1;
    if (0..65536).contains(&mb.payload) {
        d.settings.set_pulse_time(i, mb.payload as u16);
        d.set_pulse_timer(i, mb.payload as u16);
    }
    d.response = format!(
        "{{\"{}{}\":{{\"Set\":{},\"Remaining\":{}}}}}",
        mb.command,
        mb.index,
        d.settings.pulse_time(i),
        d.pulse_remaining(i)
    );
}

/// `CmndJson`: `{"cmd":value,...}` runs as a `Backlog0` of `cmd value` entries (an
/// array `[a,b]` gives `cmd1 a;cmd2 b`, a nested object becomes the text of its JSON); a
/// value holding `;` runs at once instead. Anything but a JSON object answers `Empty`.
fn cmnd_json(d: &mut Device, mb: &mut Mailbox) {
    let data = escape_second_level(if mb.data_len == 0 { "" } else { &mb.data });
    let Some(members) = crate::json::parse_object(&data) else {
        d.reply_text(mb, "Empty");
        return;
    };
    let mut backlog = String::new();
    let add = |entry: &str, backlog: &mut String| {
        if !backlog.is_empty() {
            backlog.push(';');
        }
        backlog.push_str(entry);
    };
    for (command, value) in members {
        match value {
            crate::json::Value::Array(items) => {
                for (n, item) in items.iter().enumerate() {
                    add(&format!("{command}{} {}", n + 1, item.text()), &mut backlog);
                }
            }
            crate::json::Value::Object(_) => {}
            value => {
                let entry = format!("{command} {}", value.text());
                if entry.contains(';') {
                    d.execute_command(&entry);
                } else {
                    add(&entry, &mut backlog);
                }
            }
        }
    }
    if !backlog.is_empty() {
        mb.data = backlog;
        mb.data_len = 1;
        mb.index = 0;
        cmnd_backlog(d, mb);
    }
}

/// CmndJson's first pass: every object below the top level becomes a string (quoted,
/// its quotes escaped), so `{"Template":{"NAME":..}}` passes the template's JSON on.
fn escape_second_level(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 8);
    let mut bracket: u32 = 0;
    for c in data.chars() {
        if c == '{' {
            bracket = bracket.wrapping_add(1);
            if bracket == 2 {
                out.push('"');
            }
        }
        if bracket > 1 && c == '"' {
            out.push('\\');
        }
        out.push(c);
        if c == '}' {
            bracket = bracket.wrapping_sub(1);
            if bracket == 1 {
                out.push('"');
            }
        }
    }
    out
}

fn cmnd_power_on_state(d: &mut Device, mb: &mut Mailbox) {
    if range::POWER_ON_STATE.contains(&mb.payload) {
        d.settings.poweronstate = mb.payload as u8;
        if mb.payload == 4 {
            for device in 1..=u32::from(d.hw.relays) {
                d.execute_command_power(device, 1);
            }
        }
    }
    d.reply_number(mb, i64::from(d.settings.poweronstate));
}

fn cmnd_blinktime(d: &mut Device, mb: &mut Mailbox) {
    if range::BLINK_TIME.contains(&mb.payload) {
        d.settings.blinktime = mb.payload as u16;
    }
    d.reply_number(mb, i64::from(d.settings.blinktime));
}

fn cmnd_blinkcount(d: &mut Device, mb: &mut Mailbox) {
    if range::BLINK_COUNT.contains(&mb.payload) {
        d.settings.blinkcount = mb.payload as u16;
    }
    d.reply_number(mb, i64::from(d.settings.blinkcount));
}

fn cmnd_savedata(d: &mut Device, mb: &mut Mailbox) {
    if range::SAVE_DATA.contains(&mb.payload) {
        d.settings.save_data = mb.payload as u16;
    }
    d.settings_save_all();
    let v = d.settings.save_data;
    if v > 1 {
        d.reply_text(mb, &format!("Every {v} seconds"));
    } else {
        d.reply_state_text(mb, u32::from(v));
    }
}

/// `CmndSetoption`: `SO<n>` answers as `SetOption<n>`.
fn cmnd_setoption(d: &mut Device, mb: &mut Mailbox) {
    mb.command = String::from("SetOption");
    d.setoption_base(mb, true);
}

impl Device {
    /// `CmndSetoptionBase`: set or show SetOption `mb.index`; synonyms answer without
    /// the index.
    pub(crate) fn setoption_base(&mut self, mb: &mut Mailbox, indexed: bool) {
        let n = mb.index;
        let Some(slot) = OptionSlot::of(n) else {
            return;
        };
        if mb.payload >= 0 {
            let ok = match slot {
                OptionSlot::Param(i) => {
                    let range = if range::PARAM_NARROW_INDEXES.contains(&i) { range::PARAM_NARROW } else { 0..=255 };
                    let ok = range.contains(&mb.payload);
                    if ok {
                        self.settings.set_option(n, mb.payload as u32);
                        if n == 37 {
                            self.restart_flag = 2;
                        }
                    }
                    ok
                }
                OptionSlot::Flag { .. } => {
                    let value = mb.payload as u32;
                    let ok = value <= 1 && !matches!(n, 5 | 6 | 7 | 9 | 14 | 22 | 23 | 25 | 27);
                    if ok {
                        self.settings.set_option(n, value);
                        if matches!(n, 19 | 73 | 114) {
                            self.rediscover(crate::discovery::AGAIN_DELAY_S);
                        }
                        let restart = matches!(
                            n,
                            3 | 15 | 68 | 75 | 85 | 88 | 97 | 102 | 103 | 104 | 106 | 107 | 132 | 151..=153
                        ) || (matches!(n, 55 | 115) && value == 0);
                        if restart {
                            self.restart_flag = 2;
                        }
                    }
                    ok
                }
            };
            if !ok {
                return;
            }
        }
        let value = self.settings.option(n);
        match (slot, indexed) {
            (OptionSlot::Param(_), true) => self.reply_idx_number(mb, i64::from(value)),
            (OptionSlot::Param(_), false) => self.reply_number(mb, i64::from(value)),
            (OptionSlot::Flag { .. }, true) => {
                let text = String::from(self.settings.state_text(value));
                self.reply_idx_text(mb, &text);
            }
            (OptionSlot::Flag { .. }, false) => self.reply_state_text(mb, value),
        }
    }
}

fn cmnd_restart(d: &mut Device, mb: &mut Mailbox) {
    match mb.payload {
        1 => {
            d.restart_flag = 2;
            d.reply_text(mb, "Restarting");
        }
        2 => {
            d.restart_flag = 2;
            d.restart_halt = true;
            d.reply_text(mb, "Halting");
        }
        9 => {
            d.restart_flag = 2;
            d.restart_deepsleep = true;
            d.reply_text(mb, "Go to sleep");
        }
        99 => {
            d.response.clear();
            d.restart_now(RestartKind::Restart);
        }
        _ => d.reply_text(mb, "1 to restart, 2 to halt"),
    }
}

fn cmnd_reset(d: &mut Device, mb: &mut Mailbox) {
    match mb.payload {
        1 => {
            d.restart_flag = 211;
            d.reply_text(mb, "Reset and Restarting");
        }
        2..=6 => {
            d.restart_flag = 210 + mb.payload as u8;
            d.reply_text(mb, "Erase, Reset and Restarting");
        }
        99 => {
            d.settings.bootcount = 0;
            d.reply_text(mb, "Done");
        }
        _ => d.reply_text(mb, "1 to reset"),
    }
}

fn cmnd_hostname(d: &mut Device, mb: &mut Mailbox) {
    if !mb.grpflg && mb.data_len > 0 {
        let value = if mb.shortcut() == Shortcut::Default { DEFAULT_HOSTNAME } else { mb.data.as_str() };
        d.settings.hostname = if value.contains('%') { String::from(DEFAULT_HOSTNAME) } else { String::from(value) };
        d.restart_flag = 2;
    }
    let value = d.settings.hostname.clone();
    d.reply_text(mb, &value);
}

fn cmnd_devicename(d: &mut Device, mb: &mut Mailbox) {
    if !mb.grpflg && mb.data_len > 0 {
        d.settings.devicename = if mb.data.starts_with('"') {
            String::new()
        } else if mb.shortcut() == Shortcut::Default {
            d.settings.friendlyname[0].clone()
        } else {
            mb.data.clone()
        };
    }
    let value = d.settings.devicename.clone();
    d.reply_text(mb, &value);
}

fn cmnd_friendlyname(d: &mut Device, mb: &mut Mailbox) {
    mb.command = String::from("FriendlyName");
    if mb.index < 1 || mb.index > 8 {
        return;
    }
    if !mb.usridx && mb.data_len == 0 {
        let all = d.settings.friendlyname.clone();
        d.reply_all(mb, &all);
        return;
    }
    let i = mb.index as usize - 1;
    if mb.data_len > 0 {
        d.settings.friendlyname[i] = if mb.data.starts_with('"') {
            String::new()
        } else if mb.shortcut() == Shortcut::Default {
            if i == 0 {
                String::from("Tasmota")
            } else {
                format!("Tasmota{}", i + 1)
            }
        } else {
            mb.data.clone()
        };
    }
    let value = d.settings.friendlyname[i].clone();
    d.reply_idx_text(mb, &value);
}

fn cmnd_teleperiod(d: &mut Device, mb: &mut Mailbox) {
    if (0..=*range::TELE_PERIOD.end()).contains(&mb.payload) {
        let v = if mb.payload == 1 { i32::from(DEFAULT_TELE_PERIOD) } else { mb.payload };
        d.settings.tele_period = (if v > 0 { v.max(*range::TELE_PERIOD.start()) } else { v }) as u16;
    }
    // Any TelePeriod command sends STATE (and SENSOR) on the next second.
    if d.settings.tele_period != 0 {
        d.tele_period = u32::from(d.settings.tele_period);
    }
    d.reply_number(mb, i64::from(d.settings.tele_period));
}
