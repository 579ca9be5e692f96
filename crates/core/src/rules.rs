//! Tasmota Rules as the default `tasmota` build of 14.2.0 runs them (`xdrv_10_rules.ino`,
//! `USE_RULES` without `USE_EXPRESSION`, `SUPPORT_IF_STATEMENT` or `SUPPORT_MQTT_EVENT`).
//!
//! A rule set is `ON <trigger> DO <commands> ENDON` (or `BREAK`) repeated. An event is a
//! JSON object the firmware hands the engine (`RulesProcessEvent`): a command's answer,
//! a telemetry message, or one the engine makes itself on its 50 ms tick
//! (`RulesEvery50ms`: `Power1#State`, `Event#…`, `Var1#State`, `System#Boot`, …) or its
//! second tick (`RulesEverySecond`: `Time#Minute`, `Rules#Timer`). Every rule of every
//! enabled set whose trigger matches runs its commands at once, through `ExecuteCommand`,
//! while the engine is busy, so what those commands publish does not start rules again
//! (the firmware's loop protection).
//!
//! Also here: `SetRule` with Unishox (`crate::unishox`), the sensor walk of
//! `RulesEvery100ms` (`rules/scan.rs`), `Time#Initialized`/`Time#Set` from `Time <epoch>`.
//! Not simulated: `Timer`/`%SUNRISE%` values (the device has no timers; `%TIMERn%` is the
//! stock `0`) and NTP.

use alloc::format;
use alloc::string::String;

use crate::console::LogLevel;
use crate::device::Device;
use crate::json::{parse_object, Value};
use crate::time::Instant;

mod scan;

/// `MAX_RULE_SETS` (tasmota.h).
pub const MAX_RULE_SETS: usize = 3;
/// `MAX_RULE_SIZE` (tasmota.h): a set holds 511 characters and its NUL.
pub const MAX_RULE_SIZE: usize = 512;
/// `SetRule`'s Unishox output buffer: `MAX_RULE_SIZE + 8` ("take some margin").
const COMPRESS_BUFFER: usize = MAX_RULE_SIZE + 8;

/// A compressed set is stored as `0, (length + 7) / 8, bytes…, 0` (`SetRule`): the
/// length byte holds at most 255, so 2040 characters.
pub const MAX_COMPRESSED_RULE_LEN: usize = 255 * 8;

/// The Unishox size of a set that does not fit as it is (512 characters or more), when
/// `SetRule` can store it: compressed (escapes counted) to less than `MAX_RULE_SIZE - 2`.
pub fn compressed_rule_size(text: &str) -> Option<usize> {
    if text.len() > MAX_COMPRESSED_RULE_LEN {
        return None;
    }
    let mut out = alloc::vec::Vec::new();
    crate::unishox::compress(text.as_bytes(), Some(&mut out), COMPRESS_BUFFER).filter(|&n| n < MAX_RULE_SIZE - 2)
}

/// Whether `Rule<n> <text>` could store `text` (for files that give rule sets).
pub fn storable(text: &str) -> Result<(), String> {
    if text.contains('\0') {
        return Err(String::from("holds a NUL, which ends a rule set in the firmware"));
    }
    if text.len() < MAX_RULE_SIZE || compressed_rule_size(text).is_some() {
        return Ok(());
    }
    if text.len() > MAX_COMPRESSED_RULE_LEN {
        return Err(format!(
            "{} bytes; a set over 511 is stored compressed with its length / 8 in one byte, so at most {MAX_COMPRESSED_RULE_LEN}",
            text.len()
        ));
    }
    Err(format!(
        "{} bytes, and Unishox does not compress it below {} bytes (SetRule: MAX_RULE_SIZE - 2)",
        text.len(),
        MAX_RULE_SIZE - 2
    ))
}

/// `GetRuleLenStorage`: the bytes a set takes in `Settings->rules[i]`, its NULs included
/// (a compressed one: its first NUL, the length byte, the bytes and the last NUL, counted
/// as `2 + strlen(&rules[i][1])`).
pub fn rule_storage_len(text: &str) -> usize {
    if text.len() < MAX_RULE_SIZE {
        1 + text.len()
    } else {
        3 + compressed_rule_size(text).unwrap_or(0)
    }
}

/// `100 - changeUIntScale(compressed, 0, len, 0, 100)` of `SetRule`'s log lines (a failed
/// dry run's -1 is 65535 as the `uint16_t` argument).
pub(crate) fn percent_saved(compressed: Option<usize>, len: usize) -> u32 {
    let num = compressed.map_or(u16::MAX, |n| n.min(usize::from(u16::MAX)) as u16);
    100 - u32::from(change_uint_scale(num, 0, len.min(usize::from(u16::MAX)) as u16, 0, 100))
}

/// `changeUIntScale` (support_float.ino) for `to_min < to_max`.
fn change_uint_scale(inum: u16, from_min: u16, from_max: u16, to_min: u16, to_max: u16) -> u16 {
    if from_min >= from_max {
        return to_min.min(to_max);
    }
    let (num, from_min, from_max, to_min, to_max) =
        (u32::from(inum), u32::from(from_min), u32::from(from_max), u32::from(to_min), u32::from(to_max));
    let num = num.clamp(from_min, from_max);
    if num == from_min {
        return to_min as u16;
    }
    if num == from_max {
        return to_max as u16;
    }
    let result = if num - from_min < 0x8000 {
        if to_max - to_min > from_max - from_min {
            let numerator = (num - from_min) * (to_max - to_min) * 2;
            (numerator / (from_max - from_min)).div_ceil(2) + to_min
        } else {
            let numerator = ((num - from_min) * 2 + 1) * (to_max - to_min + 1);
            numerator / ((from_max - from_min + 1) * 2) + to_min
        }
    } else {
        (num - from_min) * (to_max - to_min + 1) / (from_max - from_min) + to_min
    };
    result.clamp(to_min, to_max) as u16
}

/// `MAX_RULE_VARS` and `MAX_RULE_MEMS` (tasmota.h).
pub const MAX_RULE_VARS: usize = 16;
pub const MAX_RULE_MEMS: usize = 16;
/// `MAX_RULE_TIMERS` (tasmota.h).
pub const MAX_RULE_TIMERS: usize = 8;
/// `RULE_MAX_EVENTSZ`: the `Event` command keeps 99 characters; the 50 ms tick builds its
/// events in `char json_event[RULE_MAX_EVENTSZ + 16]`.
const RULE_MAX_EVENTSZ: usize = 100;
const JSON_EVENT_SIZE: usize = RULE_MAX_EVENTSZ + 16;

/// `TasmotaGlobal.rules_flag` bits, in the order `RulesEvery50ms` drains them.
pub(crate) mod flag {
    pub const SYSTEM_INIT: u16 = 1 << 0;
    pub const SYSTEM_BOOT: u16 = 1 << 1;
    pub const TIME_INIT: u16 = 1 << 2;
    pub const TIME_SET: u16 = 1 << 3;
    pub const MQTT_CONNECTED: u16 = 1 << 4;
    pub const MQTT_DISCONNECTED: u16 = 1 << 5;
    pub const WIFI_CONNECTED: u16 = 1 << 6;
    pub const WIFI_DISCONNECTED: u16 = 1 << 7;
    pub const HTTP_INIT: u16 = 1 << 8;
}

/// The events of the `rules_flag` bits, in drain order.
const FLAG_EVENTS: [(u16, &str); 9] = [
    (flag::SYSTEM_INIT, "{\"System\":{\"Init\":1}}"),
    (flag::SYSTEM_BOOT, "{\"System\":{\"Boot\":1}}"),
    (flag::TIME_INIT, "{\"Time\":{\"Initialized\":%d}}"),
    (flag::TIME_SET, "{\"Time\":{\"Set\":%d}}"),
    (flag::MQTT_CONNECTED, "{\"MQTT\":{\"Connected\":1}}"),
    (flag::MQTT_DISCONNECTED, "{\"MQTT\":{\"Disconnected\":1}}"),
    (flag::WIFI_CONNECTED, "{\"WIFI\":{\"Connected\":1}}"),
    (flag::WIFI_DISCONNECTED, "{\"WIFI\":{\"Disconnected\":1}}"),
    (flag::HTTP_INIT, "{\"HTTP\":{\"Initialized\":1}}"),
];

/// `Settings->light_dimmer` of a stock device (SettingsDefaultSet2): the first 50 ms
/// tick after the power events reports it as `Dimmer#Boot`.
const DEFAULT_LIGHT_DIMMER: u8 = 10;

/// The engine's run-time state (the firmware's `struct RULES` and `rules_vars`), made
/// when a rule command or a rule first needs it.
#[derive(Clone, Debug)]
pub(crate) struct RuleEngine {
    pub vars: [String; MAX_RULE_VARS],
    /// `Rules.timer`: when each RuleTimer runs out.
    pub timers: [Option<Instant>; MAX_RULE_TIMERS],
    /// `Rules.triggers`: bit n, the n-th rule of the set matched last time (Once).
    triggers: [u32; MAX_RULE_SETS],
    /// `Rules.new_power` / `old_power` (-1: not yet seen).
    pub new_power: i64,
    old_power: i64,
    /// `Rules.old_dimm` has been reported (`Dimmer#Boot`).
    dimmer_seen: bool,
    /// `Rules.last_minute` (60: none yet).
    last_minute: u8,
    pub vars_event: u16,
    pub mems_event: u16,
    /// `Rules.event_data`: the pending `Event`.
    pub event_data: String,
    /// `Rules.busy`.
    busy: bool,
    /// `Rules.teleperiod`: the event is a TelePeriod message (triggers need `Tele-`).
    teleperiod: bool,
    /// The 50 ms tick after the last one that ran (`state_50msecond`).
    next_tick: Instant,
    /// `GetNextSensor`'s walk over the sensor drivers (`RulesEvery100ms`).
    scan: scan::Scan,
    /// Bit n: an enabled set names the JSON key of sensor driver n (energy, DS18x20,
    /// DHT), as [`Device::rules_scan_refresh`] last found.
    scan_names: u8,
}

impl Default for RuleEngine {
    fn default() -> Self {
        RuleEngine {
            vars: Default::default(),
            timers: [None; MAX_RULE_TIMERS],
            triggers: [0; MAX_RULE_SETS],
            new_power: -1,
            old_power: -1,
            dimmer_seen: false,
            last_minute: 60,
            vars_event: 0,
            mems_event: 0,
            event_data: String::new(),
            busy: false,
            teleperiod: false,
            next_tick: Instant::from_millis(0),
            scan: scan::Scan::default(),
            scan_names: 0,
        }
    }
}

impl RuleEngine {
    /// Once flags restart after a set changes (`Rules.triggers[index] = 0`).
    pub fn reset_triggers(&mut self, set: usize) {
        self.triggers[set] = 0;
    }
}

/// Arduino `String::substring(left, right)`: swapped when `left > right`, clamped to the
/// text; "" where a bound is not on a character boundary (the bounds come from ASCII
/// searches, so they always are).
fn substring(s: &str, left: usize, right: usize) -> &str {
    let (a, b) = if left > right { (right, left) } else { (left, right) };
    let b = b.min(s.len());
    s.get(a.min(b)..b).unwrap_or("")
}

/// Arduino `String::trim`: C `isspace` at both ends.
fn trim(s: &str) -> &str {
    s.trim_matches(crate::grammar::is_c_space)
}

/// A copy cut to at most `max` bytes on a character boundary (`strlcpy` into a buffer
/// of `max + 1`).
pub(crate) fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    String::from(&s[..end])
}

/// `CharToFloat`: an optional sign, digits, `.` and up to 8 decimals; what follows is
/// ignored; the text is read from its first 23 characters.
pub(crate) fn char_to_float(s: &str) -> f32 {
    let b = s.as_bytes();
    let b = &b[..b.len().min(23)];
    let mut i = 0;
    while i < b.len() && crate::grammar::is_c_space(b[i] as char) {
        i += 1;
    }
    let negative = b.get(i) == Some(&b'-');
    if matches!(b.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let mut left: i32 = 0;
    if b.get(i) != Some(&b'.') {
        // atoi: digits only (the sign was taken above).
        while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
            left = left.wrapping_mul(10).wrapping_add(i32::from(d - b'0'));
            i += 1;
        }
    }
    let mut right = 0f32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let mut digits: i32 = 0;
        let mut n = 0;
        while n < 8 && b.get(i + n).is_some_and(u8::is_ascii_digit) {
            digits = digits * 10 + i32::from(b[i + n] - b'0');
            n += 1;
        }
        right = digits as f32;
        for _ in 0..n {
            right /= 10.0;
        }
    }
    let result = left as f32 + right;
    if negative {
        -result
    } else {
        result
    }
}

/// `dtostrfd(number, prec)` with the ESP8266 core's `dtostrf`: `null` for NaN and
/// infinities; otherwise a `-` for negatives, then half a unit of the last decimal added
/// and the digits cut.
pub(crate) fn dtostrfd(number: f64, prec: u8) -> String {
    if number.is_nan() || number.is_infinite() {
        return String::from("null");
    }
    let mut out = String::new();
    let mut n = number;
    if n < 0.0 {
        out.push('-');
        n = -n;
    }
    let mut rounding = 0.5;
    for _ in 0..prec {
        rounding /= 10.0;
    }
    n += rounding;
    let int_part = if n >= 4_294_967_295.0 { u32::MAX } else { n as u32 };
    let mut remainder = n - f64::from(int_part);
    out.push_str(&format!("{int_part}"));
    if prec > 0 {
        out.push('.');
    }
    for _ in 0..prec {
        remainder *= 10.0;
        let digit = (remainder as u32).min(9);
        out.push((b'0' + digit as u8) as char);
        remainder -= f64::from(digit);
    }
    out
}

/// `parseCompareExpression`: the operators `$^ $! $| $< $> <= >= != == | < > =` are
/// tried in that order; the first found after the start splits the trigger.
fn parse_compare(expr: &str) -> (Option<usize>, &str, &str) {
    const OPERATORS: [&str; 13] = ["=", ">", "<", "|", "==", "!=", ">=", "<=", "$>", "$<", "$|", "$!", "$^"];
    for i in (0..OPERATORS.len()).rev() {
        if let Some(pos) = expr.find(OPERATORS[i]).filter(|&p| p > 0) {
            return (Some(i), trim(&expr[..pos]), trim(&expr[pos + OPERATORS[i].len()..]));
        }
    }
    (None, expr, "")
}

/// Finds `key` among an object's members (keys compare case-insensitively, as the
/// firmware's parser does).
fn member<'a>(members: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    members.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
}

/// `RulesVarReplace`: every occurrence of `find` (uppercase), in any case, replaced.
fn var_replace(commands: &mut String, find: &str, replace: &str) {
    if !commands.to_ascii_uppercase().contains(find) {
        return;
    }
    let upper = commands.to_ascii_uppercase();
    let mut out = String::with_capacity(commands.len());
    let mut last = 0;
    for (at, _) in upper.match_indices(find) {
        out.push_str(&commands[last..at]);
        out.push_str(replace);
        last = at + find.len();
    }
    out.push_str(&commands[last..]);
    *commands = out;
}

/// Truncates an event built in `char json_event[…]` by `snprintf`.
fn json_event(text: String) -> String {
    cut(&text, JSON_EVENT_SIZE - 1)
}

impl Device {
    /// The rule engine, made on first use.
    pub(crate) fn rule_engine(&mut self) -> &mut RuleEngine {
        self.rules.get_or_insert_with(Default::default)
    }

    /// Sets `Var1..` to what a scenario or fleet says the device starts with, as if the
    /// firmware had them in `rules_vars` (RAM: gone at the next boot). Each keeps 32
    /// characters (`char rules_vars[MAX_RULE_VARS][33]`); no `Var<n>#State` event is raised.
    pub fn preset_rule_vars(&mut self, vars: &[String]) {
        if vars.iter().all(String::is_empty) {
            return;
        }
        let r = self.rule_engine();
        for (slot, v) in r.vars.iter_mut().zip(vars) {
            *slot = cut(v, 32);
        }
    }

    /// `Var1..16` now (empty until a rule or command sets them).
    pub fn rule_vars(&self) -> [&str; MAX_RULE_VARS] {
        let mut out = [""; MAX_RULE_VARS];
        if let Some(r) = self.rules.as_ref() {
            for (o, v) in out.iter_mut().zip(&r.vars) {
                *o = v.as_str();
            }
        }
        out
    }

    /// `Settings->rule_enabled`.
    pub(crate) fn rules_enabled(&self) -> u8 {
        self.settings.rules.as_ref().map_or(0, |r| r.enabled)
    }

    fn rules_busy(&self) -> bool {
        self.rules.as_ref().is_some_and(|r| r.busy)
    }

    /// `RulesInit` (FUNC_PRE_INIT): an empty set is off and not Once.
    pub(crate) fn rules_init(&mut self) {
        if let Some(r) = self.settings.rules.as_mut() {
            for i in 0..MAX_RULE_SETS {
                if r.rules[i].is_empty() {
                    r.enabled &= !(1 << i);
                    r.once &= !(1 << i);
                }
            }
        }
        if self.rules_enabled() != 0 {
            self.rule_engine();
            self.rules_scan_refresh();
        }
    }

    /// `RulesSetPower` (FUNC_SET_POWER from `SetDevicePower`).
    pub(crate) fn rules_set_power(&mut self, rpower: u32) {
        if let Some(r) = self.rules.as_mut() {
            r.new_power = i64::from(rpower);
        }
    }

    /// `XdrvRulesProcess(teleperiod, event)` (`RulesProcess`): runs the rules on an event
    /// when any set is on and the engine is not busy; returns whether a rule ran.
    pub(crate) fn rules_process(&mut self, teleperiod: bool, event: &str) -> bool {
        if self.rules_enabled() == 0 || self.rules_busy() {
            return false;
        }
        self.rule_engine().teleperiod = teleperiod;
        let serviced = self.rules_process_event(event);
        self.rule_engine().teleperiod = false;
        serviced
    }

    /// `RulesProcessEvent`.
    fn rules_process_event(&mut self, json: &str) -> bool {
        if self.rules_busy() {
            return false;
        }
        if json.is_empty() {
            return true;
        }
        self.rule_engine().busy = true;
        // {"SerialReceived":"on"} (one colon) becomes {"SerialReceived":{"Data":"on"}}.
        let mut event = String::from(json);
        if json.matches(':').count() == 1 {
            event = event.replace(':', ":{\"Data\":");
            event.push('}');
        }
        let event = event.to_ascii_uppercase();
        let mut serviced = false;
        for set in 0..MAX_RULE_SETS {
            let on =
                self.settings.rules.as_ref().is_some_and(|r| !r.rules[set].is_empty() && r.enabled & (1 << set) != 0);
            if on && self.rule_set_process(set, &event) {
                serviced = true;
            }
        }
        self.rule_engine().busy = false;
        serviced
    }

    /// `RuleSetProcess`: every `ON … DO … ENDON|BREAK` of a set, in order.
    fn rule_set_process(&mut self, set: usize, event: &str) -> bool {
        let Some(text) = self.settings.rules.as_ref().map(|r| r.rules[set].clone()) else {
            return false;
        };
        let mut serviced = false;
        let mut rules: &str = &text;
        let mut plen = 0usize;
        let mut trigger_count = 0u32;
        let mut stop_all_rules = false;
        loop {
            rules = trim(substring(rules, plen, rules.len()));
            if rules.is_empty() {
                return serviced;
            }
            let rule = rules.to_ascii_uppercase();
            if !rule.starts_with("ON ") {
                return serviced;
            }
            let Some(pevt) = rule.find(" DO ") else {
                return serviced;
            };
            let trigger = String::from(trim(substring(&rule, 3, pevt)));
            let endon = rule.find(" ENDON");
            let brk = rule.find(" BREAK");
            if endon.is_none() && brk.is_none() {
                return serviced;
            }
            let (endon, brk) = (endon.unwrap_or(9999), brk.unwrap_or(9999));
            plen = endon.min(brk);
            let commands = substring(rules, pevt + 4, plen);
            if !trigger.starts_with("FILE#") {
                if let Some(value) = self.rule_match(set, trigger_count, event, &trigger, stop_all_rules) {
                    if plen == brk {
                        stop_all_rules = true;
                    }
                    let command = self.rule_commands(trim(commands), &value);
                    self.log(LogLevel::Info, format!("RUL: {trigger} performs '{command}'"));
                    self.execute_command(&command);
                    serviced = true;
                }
            }
            plen += 6;
            trigger_count += 1;
        }
    }

    /// The DO part with `Backlog` added where the firmware adds it and every `%…%`
    /// replaced (`RuleSetProcess`).
    fn rule_commands(&self, commands: &str, value: &str) -> String {
        let upper = commands.to_ascii_uppercase();
        let mut out = String::new();
        // Backlog with Event prevents a rule event loop (unless IF is used).
        if !upper.contains("IF ") && upper.contains("EVENT ") && !upper.contains("BACKLOG") {
            out.push_str("backlog ");
        }
        out.push_str(commands);
        var_replace(&mut out, "%VALUE%", value);
        for i in 0..MAX_RULE_VARS {
            let v = self.rules.as_ref().map_or("", |r| r.vars[i].as_str());
            var_replace(&mut out, &format!("%VAR{}%", i + 1), v);
        }
        for i in 0..MAX_RULE_MEMS {
            let m = self.settings.rules.as_ref().map_or("", |r| r.mems[i].as_str());
            var_replace(&mut out, &format!("%MEM{}%", i + 1), m);
        }
        for i in 0..u32::from(self.hw.relays) {
            let bit = if i < 32 { (self.power >> i) & 1 } else { 0 };
            var_replace(&mut out, &format!("%POWER{}%", i + 1), &format!("{bit}"));
        }
        for i in 0..self.hw.switches {
            var_replace(&mut out, &format!("%SWITCH{}%", i + 1), &format!("{}", self.switch_state(i)));
        }
        var_replace(&mut out, "%TIME%", &format!("{}", self.minutes_past_midnight()));
        var_replace(&mut out, "%UTCTIME%", &format!("{}", self.utc_secs()));
        var_replace(&mut out, "%UPTIME%", &format!("{}", self.uptime_s / 60));
        var_replace(&mut out, "%TIMESTAMP%", &crate::telemetry::iso_time(self.local_secs()));
        var_replace(&mut out, "%TOPIC%", &self.mqtt_topic.clone());
        var_replace(&mut out, "%DEVICEID%", &format!("{:06X}", self.hw.mac.chip_id()));
        var_replace(&mut out, "%MACADDR%", &self.unique_id.clone());
        // USE_TIMERS: TimerGetTimeOfDay of the (never set) Timer1..16 is 0.
        for i in 0..16 {
            var_replace(&mut out, &format!("%TIMER{}%", i + 1), "0");
        }
        out
    }

    /// `RulesRuleMatch`: whether the trigger matches the event, and `%value%` if so.
    fn rule_match(&mut self, set: usize, count: u32, event: &str, trigger: &str, stop_all: bool) -> Option<String> {
        let mut expr = trigger;
        if self.rules.as_ref().is_some_and(|r| r.teleperiod) {
            // The rule must name a TELE- message; its first five characters go.
            if !trigger.contains("TELE-") {
                return None;
            }
            expr = substring(trigger, 5, trigger.len());
        }
        let (operator, name, param) = parse_compare(expr);
        let mut rule_svalue = String::new();
        let mut rule_value = 0f32;
        if operator.is_some() {
            let mut param = String::from(param);
            for i in 0..MAX_RULE_VARS {
                if param.starts_with(&format!("%VAR{}%", i + 1)) {
                    param = self.rules.as_ref().map_or(String::new(), |r| r.vars[i].clone());
                    break;
                }
            }
            for i in 0..MAX_RULE_MEMS {
                if param.starts_with(&format!("%MEM{}%", i + 1)) {
                    param = self.settings.rules.as_ref().map_or(String::new(), |r| r.mems[i].clone());
                    break;
                }
            }
            if param.starts_with("%TIME%") {
                param = format!("{}", self.minutes_past_midnight());
            }
            if param.starts_with("%UPTIME%") {
                param = format!("{}", self.uptime_s / 60);
            }
            if param.starts_with("%TIMESTAMP%") {
                param = crate::telemetry::iso_time(self.local_secs());
            }
            if param.starts_with("%TIMER") {
                param = String::from("0");
            }
            rule_svalue = cut(&param.to_ascii_uppercase(), 79);
            rule_value = match crate::grammar::state_number(&rule_svalue).filter(|n| *n > -1) {
                Some(n) => n as f32,
                None => char_to_float(&rule_svalue),
            };
        }
        // "SUBTYPE1#CURRENT[1]": an index 1..6 into an array.
        let mut name = name;
        let mut name_idx = 0usize;
        if let Some(pos) = name.find('[').filter(|&p| p > 0) {
            let n = crate::grammar::strtol(&name[pos + 1..]).unwrap_or(0);
            name_idx = if (1..=6).contains(&n) { n as usize } else { 1 };
            name = &name[..pos];
        }
        let Some(root) = parse_object(event) else {
            self.log(LogLevel::Debug, format!("RUL: No valid JSON ({event})"));
            return None;
        };
        let mut members: &[(String, Value)] = &root;
        let mut depth = 0;
        while let Some(pos) = name.find('#').filter(|&p| p > 0) {
            match member(members, &name[..pos]) {
                Some(Value::Object(inner)) => members = inner,
                _ => return None,
            }
            name = &name[pos + 1..];
            depth += 1;
            if depth > 11 {
                return None;
            }
        }
        let val = member(members, name)?;
        let str_value = match (name_idx, val) {
            (i, Value::Array(items)) if i > 0 => items.get(i - 1).map_or("", Value::text),
            (_, v) => v.text(),
        };
        let str_value = String::from(str_value);
        let value = char_to_float(&str_value);
        let int_value = value as i32;
        let int_rule_value = rule_value as i32;
        let mut matched = match operator {
            Some(3) => int_rule_value != 0 && int_value.wrapping_rem(int_rule_value) == 0,
            Some(0) => str_value.eq_ignore_ascii_case(&rule_svalue),
            Some(1) => value > rule_value,
            Some(2) => value < rule_value,
            Some(4) => value == rule_value,
            Some(5) => value != rule_value,
            Some(6) => value >= rule_value,
            Some(7) => value <= rule_value,
            Some(8) => str_value.ends_with(&rule_svalue),
            Some(9) => str_value.starts_with(&rule_svalue),
            Some(10) => str_value.contains(&rule_svalue),
            Some(11) => !str_value.eq_ignore_ascii_case(&rule_svalue),
            Some(12) => !str_value.contains(&rule_svalue),
            _ => true,
        };
        if stop_all {
            matched = false;
        }
        let once = self.settings.rules.as_ref().is_some_and(|r| r.once & (1 << set) != 0);
        if once {
            let bit = 1u32.checked_shl(count).unwrap_or(0);
            let triggers = &mut self.rule_engine().triggers[set];
            if matched {
                if *triggers & bit == 0 {
                    *triggers |= bit;
                } else {
                    matched = false;
                }
            } else {
                *triggers &= !bit;
            }
        }
        matched.then_some(str_value)
    }

    /// `MinutesPastMidnight`: local hours × 60 + minutes.
    fn minutes_past_midnight(&self) -> u64 {
        (self.local_secs() % 86_400) / 60
    }

    /// Whether the 50 ms tick has an event to give (`RulesEvery50ms`).
    fn rules_50ms_pending(&self) -> bool {
        let Some(r) = self.rules.as_ref() else {
            return false;
        };
        self.rules_enabled() != 0
            && !r.busy
            && (r.new_power != r.old_power
                || r.old_power == -1
                || !r.dimmer_seen
                || !r.event_data.is_empty()
                || r.vars_event != 0
                || r.mems_event != 0
                || self.rules_flag != 0)
    }

    /// When the next 50 ms tick with work is (ticks are 50 ms apart from boot).
    pub(crate) fn rules_50ms_due(&self) -> Option<Instant> {
        if !self.rules_50ms_pending() {
            return None;
        }
        let since = self.now.millis_since(self.boot_at);
        let mut grid = self.boot_at.plus_millis(since.div_ceil(50) * 50);
        // Scheduler(): the 50 ms tick runs before the 100 ms and 250 ms ones of the same
        // instant, so what they raised (Wifi#Connected, HTTP#Initialized, a pulse's
        // Power#State) waits 50 ms.
        if Some(grid) == self.scheduled_at {
            grid = grid.plus_millis(50);
        }
        Some(grid.max(self.rules.as_ref().map_or(grid, |r| r.next_tick)))
    }

    /// `RulesEvery50ms`: one source of events per tick, in the firmware's order.
    pub(crate) fn rules_every_50ms(&mut self) {
        if !self.rules_50ms_pending() {
            return;
        }
        let next = self.now.plus_millis(50);
        self.rule_engine().next_tick = next;
        let power = i64::from(self.power);
        let relays = u32::from(self.hw.relays);
        let r = self.rule_engine();
        if r.new_power == -1 {
            r.new_power = power;
        }
        let (new_power, old_power) = (r.new_power, r.old_power);
        if new_power != old_power {
            if old_power != -1 {
                for i in 0..relays.min(32) {
                    let state = (new_power >> i) & 1;
                    if state != (old_power >> i) & 1 {
                        self.rules_process_event(&format!("{{\"Power{}\":{{\"State\":{state}}}}}", i + 1));
                    }
                }
            } else {
                for i in 0..relays.min(32) {
                    let state = (new_power >> i) & 1;
                    self.rules_process_event(&format!("{{\"Power{}\":{{\"Boot\":{state}}}}}", i + 1));
                }
                for i in 0..self.hw.switches {
                    let state = self.switch_state(i);
                    self.rules_process_event(&format!("{{\"Switch{}\":{{\"Boot\":{state}}}}}", i + 1));
                }
            }
            self.rule_engine().old_power = new_power;
            return;
        }
        if !r.dimmer_seen {
            r.dimmer_seen = true;
            self.rules_process_event(&format!("{{\"Dimmer\":{{\"Boot\":{DEFAULT_LIGHT_DIMMER}}}}}"));
            return;
        }
        if !r.event_data.is_empty() {
            let data = core::mem::take(&mut r.event_data);
            // strtok_r(event_data, "="): leading '=' are skipped, the name ends at the next.
            let rest = data.trim_start_matches('=');
            if rest.is_empty() {
                return;
            }
            let (name, parameter) = rest.split_once('=').unwrap_or((rest, ""));
            let (name, parameter) = (trim(name), trim(parameter));
            let q = if parameter.starts_with('{') { "" } else { "\"" };
            self.rules_process_event(&json_event(format!("{{\"Event\":{{\"{name}\":{q}{parameter}{q}}}}}")));
            return;
        }
        if r.vars_event != 0 || r.mems_event != 0 {
            if r.vars_event != 0 {
                let i = r.vars_event.trailing_zeros() as usize;
                r.vars_event &= !(1 << i);
                let event = json_event(format!("{{\"Var{}\":{{\"State\":\"{}\"}}}}", i + 1, r.vars[i]));
                self.rules_process_event(&event);
            }
            let r = self.rule_engine();
            if r.mems_event != 0 {
                let i = r.mems_event.trailing_zeros() as usize;
                r.mems_event &= !(1 << i);
                let mem = self.settings.rules.as_ref().map_or(String::new(), |s| s.mems[i].clone());
                let event = json_event(format!("{{\"Mem{}\":{{\"State\":\"{mem}\"}}}}", i + 1));
                self.rules_process_event(&event);
            }
            return;
        }
        if let Some(&(bit, text)) = FLAG_EVENTS.iter().find(|(bit, _)| self.rules_flag & bit != 0) {
            self.rules_flag &= !bit;
            let event = text.replace("%d", &format!("{}", self.minutes_past_midnight()));
            self.rules_process_event(&event);
        }
    }

    /// Whether the sensor walk runs (`RulesEvery100ms`: a set on, the engine idle; the
    /// uptime condition is the walk's own) and over how many drivers.
    fn scan_drivers(&self) -> Option<([crate::sensors::SensorDriver; 3], usize)> {
        let r = self.rules.as_ref()?;
        let (drivers, count) = self.sensor_drivers();
        (self.rules_enabled() != 0 && !r.busy && count > 0).then_some((drivers, count))
    }

    /// Whether an enabled set names the driver's JSON key (`ENERGY`, `DS18B20`, `AM2301`,
    /// `DHT11`) other than after `TELE-`: a rule that does not cannot match its event
    /// (`RulesRuleMatch` returns before the Once bits when the name is not in the JSON).
    fn rules_name(&self, driver: crate::sensors::SensorDriver) -> bool {
        use crate::sensors::SensorDriver;
        let Some(r) = self.settings.rules.as_ref() else { return false };
        let mut names = [""; 2];
        match driver {
            SensorDriver::Energy => names[0] = "ENERGY",
            SensorDriver::Ds18x20 => names[0] = "DS18B20",
            SensorDriver::Dht => {
                for (slot, kind) in
                    names.iter_mut().zip([crate::hardware::SensorKind::Am2301, crate::hardware::SensorKind::Dht11])
                {
                    if self.hw.sensors.iter().any(|s| s.kind == kind) {
                        *slot = kind.name();
                    }
                }
            }
        }
        // A trigger that could match starts with the name; after `TELE-` it is another
        // name (`TELE-AM2301` is not in the walk's JSON).
        let contains = |text: &str, name: &str| {
            let (t, n) = (text.as_bytes(), name.as_bytes());
            !n.is_empty()
                && (0..t.len().saturating_sub(n.len() - 1)).any(|at| {
                    t[at..at + n.len()].eq_ignore_ascii_case(n)
                        && !(at >= 5 && t[at - 5..at].eq_ignore_ascii_case(b"TELE-"))
                })
        };
        (0..MAX_RULE_SETS).any(|i| r.enabled & (1 << i) != 0 && names.iter().any(|n| contains(&r.rules[i], n)))
    }

    /// When `RulesEvery100ms` next hands the rules a sensor's JSON that an enabled rule
    /// names (see `rules/scan.rs`); `None` for a device without rules or sensors.
    pub(crate) fn rules_100ms_due(&self) -> Option<Instant> {
        let (drivers, count) = self.scan_drivers()?;
        let names = self.rules.as_ref()?.scan_names;
        let mut wanted = [false; 3];
        for (w, d) in wanted.iter_mut().zip(&drivers[..count]) {
            *w = names & (1 << *d as u8) != 0;
        }
        if !wanted.contains(&true) {
            return None;
        }
        let r = self.rules.as_ref()?;
        let mut scan = r.scan;
        scan.catch_up(self.boot_at, self.now, count);
        scan.next_event(self.boot_at, count, |i| wanted[i]).map(|(t, _)| t)
    }

    /// `RulesEvery100ms` -> `GetNextSensor` at a tick [`Device::rules_100ms_due`] gave:
    /// the driver's JSON (`{"AM2301":{…}}`) goes to the rules as an event of its own.
    pub(crate) fn rules_every_100ms(&mut self) {
        let Some((drivers, count)) = self.scan_drivers() else { return };
        let (now, boot) = (self.now, self.boot_at);
        let Some(i) = self.rule_engine().scan.step_at(boot, now, count) else { return };
        let mut json = String::new();
        self.sensor_driver_json(drivers[i], &mut json);
        // ResponseJsonStart: the leading ',' becomes '{'.
        let event = format!("{{{}}}", json.get(1..).unwrap_or(""));
        self.rules_process_event(&event);
    }

    /// Finds again which sensor drivers the enabled sets name (after a set or its flags
    /// changed, and at boot).
    pub(crate) fn rules_scan_refresh(&mut self) {
        use crate::sensors::SensorDriver;
        let mut names = 0u8;
        for d in [SensorDriver::Energy, SensorDriver::Ds18x20, SensorDriver::Dht] {
            if self.rules_name(d) {
                names |= 1 << d as u8;
            }
        }
        if let Some(r) = self.rules.as_mut() {
            r.scan_names = names;
        }
    }

    /// Brings the sensor walk up to `now` before the rules go off or on (the walk ran up
    /// to here while they were on; it did not while they were off).
    pub(crate) fn rules_scan_sync(&mut self, was_enabled: bool) {
        let (now, boot) = (self.now, self.boot_at);
        let count = self.sensor_drivers().1;
        if let Some(r) = self.rules.as_mut() {
            if was_enabled {
                r.scan.catch_up(boot, now, count);
            } else {
                r.scan.resume(now);
            }
        }
    }

    /// `RulesEverySecond`: `Time#Minute` once a minute (from a minute after boot, with a
    /// valid clock), then the RuleTimers that ran out.
    pub(crate) fn rules_every_second(&mut self) {
        if self.rules.is_none() {
            return;
        }
        let active = self.rules_enabled() != 0 && !self.rules_busy();
        let valid = self.utc_secs() > crate::commands::START_VALID_TIME;
        if active && valid && self.uptime_s > 60 {
            let minute = ((self.local_secs() / 60) % 60) as u8;
            if self.rule_engine().last_minute != minute {
                self.rule_engine().last_minute = minute;
                let event = format!("{{\"Time\":{{\"Minute\":{}}}}}", self.minutes_past_midnight());
                self.rules_process_event(&event);
            }
        }
        for i in 0..MAX_RULE_TIMERS {
            let now = self.now;
            let r = self.rule_engine();
            if r.timers[i].is_some_and(|at| at <= now) {
                r.timers[i] = None;
                if self.rules_enabled() != 0 && !self.rules_busy() {
                    self.rules_process_event(&format!("{{\"Rules\":{{\"Timer\":{}}}}}", i + 1));
                }
            }
        }
    }

    /// Whether the second tick has rule work: a RuleTimer armed, or `Time#Minute` due.
    pub(crate) fn rules_need_seconds(&self) -> bool {
        self.rules.as_ref().is_some_and(|r| {
            r.timers.iter().any(Option::is_some)
                || (self.rules_enabled() != 0 && self.utc_secs() > crate::commands::START_VALID_TIME)
        })
    }

    /// Whether a RuleTimer is armed.
    pub(crate) fn rule_timer_armed(&self) -> bool {
        self.rules.as_ref().is_some_and(|r| r.timers.iter().any(Option::is_some))
    }

    /// `RulesSaveBeforeRestart` (FUNC_SAVE_BEFORE_RESTART, from `SettingsSaveAll`).
    pub(crate) fn rules_save_before_restart(&mut self) {
        if self.rules_enabled() != 0 && !self.rules_busy() {
            self.rules_process_event("{\"System\":{\"Save\":1}}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_to_float_reads_like_the_firmware() {
        assert_eq!(char_to_float("25.5abc"), 25.5);
        assert_eq!(char_to_float(" -3"), -3.0);
        assert_eq!(char_to_float(".5"), 0.5);
        assert_eq!(char_to_float("ON"), 0.0);
        assert_eq!(char_to_float(""), 0.0);
    }

    #[test]
    fn dtostrf_rounds_half_up() {
        // 2.25 + 0.05 rounds to 2.2999…8 in double arithmetic, as on the ESP8266.
        assert_eq!(dtostrfd(2.25, 1), "2.2");
        assert_eq!(dtostrfd(2.26, 1), "2.3");
        assert_eq!(dtostrfd(-0.01, 1), "-0.0");
        assert_eq!(dtostrfd(10.0, 0), "10");
        assert_eq!(dtostrfd(1.999, 2), "2.00");
        assert_eq!(dtostrfd(f64::NAN, 1), "null");
    }

    #[test]
    fn compare_operators_in_firmware_order() {
        assert_eq!(parse_compare("A#B>=5"), (Some(6), "A#B", "5"));
        assert_eq!(parse_compare("A#B=5"), (Some(0), "A#B", "5"));
        assert_eq!(parse_compare("A#B==5"), (Some(4), "A#B", "5"));
        assert_eq!(parse_compare("TIME#MINUTE|5"), (Some(3), "TIME#MINUTE", "5"));
        assert_eq!(parse_compare("=5"), (None, "=5", ""));
    }

    #[test]
    fn var_replace_any_case() {
        let mut s = String::from("Power %value%; x %VALUE%y");
        var_replace(&mut s, "%VALUE%", "1");
        assert_eq!(s, "Power 1; x 1y");
    }

    #[test]
    fn substring_swaps_like_arduino() {
        assert_eq!(substring("abcdef", 4, 1), "bcd");
        assert_eq!(substring("abc", 5, 9), "");
    }
}

#[cfg(test)]
mod robustness {
    use crate::{BootReason, Device, Hardware, Instant, Settings};

    /// Rule text is outside input: odd rules, events and values never panic, and a rule
    /// that feeds itself events keeps running at one event per 50 ms tick.
    #[test]
    fn odd_rules_do_not_panic() {
        let mut d =
            Device::boot(Hardware::default(), Settings::default(), BootReason::PowerOn, Instant::from_millis(0));
        let lines = [
            "Rule1 on Event#a do Var1 %value% endon",
            "Rule1 1",
            "Rule1 +on Power1#State=1 do Backlog Event b; Power 0 break",
            "Rule2 on Tele-A#B[9]|0 do Add1 1e99 endon on event#b do event a endon",
            "Rule2 1",
            "Rule3 ON X DO ENDON ON ENDON DO on do endon \u{e9}\u{e9} on \u{e9}#\u{e9}>\u{e9} do x endon",
            "Rule3 1",
            "Event a=1",
            "Event =",
            "Event ====x",
            "Event b={\"x\":[1,2",
            "Rule0 5",
            "Scale1 1,1,1,1,1",
            "Mem1 \"",
            "RuleTimer0 99999999",
            "Var16 %var16%%var16%",
            "Mult16 -1e30",
            "Event a=%var16%",
        ];
        let mut now = Instant::from_millis(0);
        for line in lines {
            d.handle_serial_line(line, now);
            now = now.plus_millis(10);
        }
        let end = now.plus_millis(70_000);
        while let Some(t) = d.poll_timeout().filter(|t| *t <= end) {
            d.handle_timeout(t);
            while d.poll_output().is_some() {}
        }
    }

    /// The sensor walk wakes a device only for the steps a rule can see: none without an
    /// enabled rule naming a sensor, one a second with one.
    #[test]
    fn the_sensor_walk_wakes_only_for_rules_that_name_a_sensor() {
        use crate::hardware::{Model, SensorKind, SensorSpec};
        let wakes = |lines: &[&str]| {
            let hw = Hardware {
                sensors: alloc::vec![SensorSpec {
                    kind: SensorKind::Am2301,
                    temperature: Model::Constant(20_000),
                    humidity: Some(Model::Constant(45_000)),
                    id: None,
                    gpio: None,
                }],
                ..Hardware::default()
            };
            let mut d = Device::boot(hw, Settings::default(), BootReason::PowerOn, Instant::from_millis(0));
            for l in lines {
                d.handle_serial_line(l, Instant::from_millis(0));
            }
            let (start, end) = (Instant::from_millis(20_000), Instant::from_millis(80_000));
            d.handle_timeout(start);
            let mut n = 0;
            while let Some(t) = d.poll_timeout().filter(|t| *t <= end) {
                d.handle_timeout(t);
                while d.poll_output().is_some() {}
                n += 1;
            }
            n
        };
        // (Without a broker the device ticks every 250 ms, and with a set on its 50 ms tick
        // gives Mqtt#Disconnected after each failed attempt: the same with or without
        // the walk.)
        assert_eq!(wakes(&["Rule1 on AM2301#Temperature>25 do Power 1 endon"]), wakes(&[]));
        let tele_only = wakes(&["Rule1 on Tele-AM2301#Temperature>25 do Power 1 endon", "Rule1 1"]);
        assert_eq!(wakes(&["Rule1 on AM2301#Temperature>25 do Power 1 endon", "Rule1 1"]), tele_only + 60);
    }
}
