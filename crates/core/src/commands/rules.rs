//! The Rules' command table (`kRulesCommands` in `xdrv_10_rules.ino`, searched after the
//! MQTT driver's): Rule, RuleTimer, Event, Var, Mem, Add, Sub, Mult, Scale, CalcRes. The
//! default build has no `If` (`SUPPORT_IF_STATEMENT`) and no `Subscribe`/`Unsubscribe`
//! (`SUPPORT_MQTT_EVENT`), and `Var`/`Mem`/`RuleTimer` take no `=` expression
//! (`USE_EXPRESSION`); `BREAK` is a rule keyword, not a command.

use alloc::format;
use alloc::string::String;

use super::{Mailbox, Table};
use crate::console::LogLevel;
use crate::device::Device;
use crate::json::escape;
use crate::rules::{
    char_to_float, compressed_rule_size, cut, dtostrfd, percent_saved, rule_storage_len, MAX_RULE_MEMS, MAX_RULE_SETS,
    MAX_RULE_SIZE, MAX_RULE_TIMERS, MAX_RULE_VARS,
};
use crate::topic::Prefix;

pub(crate) static TABLE: Table = Table {
    synonyms: &[],
    commands: &[
        ("Rule", cmnd_rule),
        ("RuleTimer", cmnd_rule_timer),
        ("Event", cmnd_event),
        ("Var", cmnd_variable),
        ("Mem", cmnd_memory),
        ("Add", cmnd_addition),
        ("Sub", cmnd_subtract),
        ("Mult", cmnd_multiply),
        ("Scale", cmnd_scale),
        ("CalcRes", cmnd_calc_resolution),
    ],
};

/// `CmndRule`. `Rule0` acts on (or shows) all three sets, one publish each.
fn cmnd_rule(d: &mut Device, mb: &mut Mailbox) {
    if mb.index == 0 {
        let flags = (0..=10).contains(&mb.payload);
        let clear = mb.data_len > 0 && !flags && mb.data.starts_with('"');
        if mb.data_len > 0 && !flags && !clear {
            mb.data_len = 0; // Discard any additional text: show all.
        }
        mb.data = String::from(if clear { "\"" } else { "" });
        for i in 1..=MAX_RULE_SETS as u32 {
            mb.index = i;
            cmnd_rule(d, mb);
            // MqttPublishPrefixTopicRulesProcess_P(RESULT_OR_STAT, XdrvMailbox.command).
            let payload = core::mem::take(&mut d.response);
            d.publish_prefix_topic(Prefix::Stat, true, &mb.command, payload.clone(), false);
            d.rules_process(false, &payload);
        }
        d.response.clear();
        return;
    }
    let index = mb.index as usize;
    if index > MAX_RULE_SETS {
        return;
    }
    let set = index - 1;
    if mb.data_len > 0 {
        // The sensor walk ran while a set was on (RulesEvery100ms).
        let was_enabled = d.rules_enabled() != 0;
        d.rules_scan_sync(was_enabled);
        let bit = 1u8 << set;
        if (0..=10).contains(&mb.payload) {
            let r = d.settings.rules_mut();
            match mb.payload {
                0 | 1 => r.enabled = (r.enabled & !bit) | (mb.payload as u8) << set,
                2 => r.enabled ^= bit,
                4 | 5 => r.once = (r.once & !bit) | ((mb.payload & 1) as u8) << set,
                6 => r.once ^= bit,
                8 | 9 => r.stop = (r.stop & !bit) | ((mb.payload & 1) as u8) << set,
                10 => r.stop ^= bit,
                _ => {}
            }
        } else {
            // '+' appends, with at least one space in between.
            let (append, content) = match mb.data.strip_prefix('+') {
                Some(rest) => (true, format!(" {rest}")),
                None if mb.data.starts_with('"') => (false, String::new()),
                None => (false, mb.data.clone()),
            };
            if set_rule(d, set, &content, append).is_none() {
                d.log(LogLevel::Error, String::from("RUL: Not enough space"));
            }
        }
        d.rule_engine().reset_triggers(set);
        if !was_enabled && d.rules_enabled() != 0 {
            d.rules_scan_sync(false);
        }
        d.rules_scan_refresh();
    }
    let (rule, enabled, once, stop) = match d.settings.rules.as_ref() {
        Some(r) => (r.rules[set].clone(), r.enabled, r.once, r.stop),
        None => (String::new(), 0, 0, 0),
    };
    let len = rule.len();
    if len > MAX_RULE_SIZE - 3 {
        log_rule_chunks(d, index, &rule);
    }
    let state = |bits: u8| String::from(d.settings.state_text(u32::from((bits >> set) & 1)));
    d.response = format!(
        "{{\"{}{index}\":{{\"State\":\"{}\",\"Once\":\"{}\",\"StopOnError\":\"{}\",\"Length\":{len},\"Free\":{},\"Rules\":\"{}\"}}}}",
        mb.command,
        state(enabled),
        state(once),
        state(stop),
        MAX_RULE_SIZE - rule_storage_len(&rule),
        escape(&rule)
    );
}

/// `SetRule` of the default build (`USE_UNISHOX_COMPRESSION`): what fits in 511
/// characters is stored as it is, with the size a dry run of Unishox would give logged;
/// what does not is compressed and stored if that is below `MAX_RULE_SIZE - 2` bytes.
/// `None` (nothing stored) when it is not.
fn set_rule(d: &mut Device, set: usize, content: &str, append: bool) -> Option<usize> {
    let old = d.settings.rules.as_ref().map_or(String::new(), |r| r.rules[set].clone());
    let len_in = content.len();
    // A set of 512 characters or more is a compressed one.
    let mut needs_compress = len_in >= MAX_RULE_SIZE;
    let mut offset = 0;
    if append {
        if old.len() < MAX_RULE_SIZE {
            offset = old.len();
            needs_compress |= len_in + offset >= MAX_RULE_SIZE;
        } else {
            needs_compress = true;
        }
    }
    let text = if append { format!("{old}{content}") } else { String::from(content) };
    if !needs_compress {
        if !text.is_empty() {
            // The dry run (no output buffer) does not count the escapes.
            let dry = crate::unishox::compress(text.as_bytes(), None, MAX_RULE_SIZE + 8);
            log_compression(d, "Stored uncompressed, would compress", text.len(), dry);
        }
        d.settings.rules_mut().rules[set] = text;
        return Some(len_in + offset);
    }
    let compressed = compressed_rule_size(&text)?;
    log_compression(d, "Compressed", text.len(), Some(compressed));
    d.settings.rules_mut().rules[set] = text;
    Some(compressed)
}

/// `RUL: Stored uncompressed, would compress from %d to %d (-%d%%)` and `RUL: Compressed
/// from %d to %d (-%d%%)` (`SetRule`, INFO); a failed dry run shows -1.
fn log_compression(d: &mut Device, what: &str, len: usize, size: Option<usize>) {
    let shown = size.map_or(-1, |n| n as i64);
    d.log(LogLevel::Info, format!("RUL: {what} from {len} to {shown} (-{}%)", percent_saved(size, len)));
}

/// A set longer than 509 characters is also logged in pieces cut at spaces (`CmndRule`).
fn log_rule_chunks(d: &mut Device, index: usize, rule: &str) {
    let len = rule.len();
    let mut start = 0;
    while start < len {
        let mut last = start + MAX_RULE_SIZE - 3;
        if last < len {
            // lastIndexOf(" ", last): the last space at or before `last`.
            if let Some(space) = rule.get(..=last).and_then(|s| s.rfind(' ')).filter(|&s| s > start) {
                last = space;
            }
        } else {
            last = len;
        }
        let piece = rule.get(start..last).unwrap_or("");
        let plus = if start == 0 { "" } else { "+" };
        d.log(LogLevel::Info, format!("RUL: Rule{index} {plus}{piece}"));
        start = last + 1;
    }
}

/// `CmndRuleTimer` (no `USE_EXPRESSION`): `RuleTimer<n> <seconds>` arms timer n (0: all),
/// 0 stops it; the reply lists what is left of each, in whole seconds.
fn cmnd_rule_timer(d: &mut Device, mb: &mut Mailbox) {
    let index = mb.index as usize;
    if index > MAX_RULE_TIMERS {
        return;
    }
    let (first, last) = if index == 0 { (1, MAX_RULE_TIMERS) } else { (index, index) };
    let now = d.now;
    let at = (mb.payload > 0).then(|| now.plus_millis(1000 * mb.payload as u64));
    if mb.data_len > 0 {
        let r = d.rule_engine();
        for t in &mut r.timers[first - 1..last] {
            *t = at;
        }
    }
    let timers = d.rules.as_ref().map_or([None; MAX_RULE_TIMERS], |r| r.timers);
    let mut out = String::new();
    for (i, t) in timers.iter().enumerate() {
        let left = t.map_or(0, |at| at.millis_since(now) / 1000);
        out.push_str(&format!("{}\"T{}\":{left}", if i == 0 { '{' } else { ',' }, i + 1));
    }
    out.push('}');
    d.response = out;
}

/// `CmndEvent`: keeps the event (99 characters) for the rules' next 50 ms tick.
fn cmnd_event(d: &mut Device, mb: &mut Mailbox) {
    if mb.data_len > 0 {
        d.rule_engine().event_data = cut(&mb.data, 99);
    }
    d.reply_text(mb, "Done");
}

/// The text a Var or Mem is set to: `"` clears.
fn stored(mb: &Mailbox) -> &str {
    if mb.data.starts_with('"') {
        ""
    } else {
        &mb.data
    }
}

/// `CmndVariable`: `Var` lists all sixteen; `Var<n> <text>` sets one (32 characters).
fn cmnd_variable(d: &mut Device, mb: &mut Mailbox) {
    let index = mb.index as usize;
    if index == 0 || index > MAX_RULE_VARS {
        return;
    }
    if !mb.usridx {
        let mut out = String::new();
        for i in 0..MAX_RULE_VARS {
            let v = d.rules.as_ref().map_or("", |r| r.vars[i].as_str());
            out.push_str(&format!("{}\"Var{}\":\"{}\"", if i == 0 { '{' } else { ',' }, i + 1, v));
        }
        out.push('}');
        d.response = out;
        return;
    }
    if mb.data_len > 0 {
        let text = cut(stored(mb), 32);
        let r = d.rule_engine();
        r.vars[index - 1] = text;
        r.vars_event |= 1 << (index - 1);
    }
    reply_var(d, mb);
}

fn reply_var(d: &mut Device, mb: &Mailbox) {
    let v = d.rules.as_ref().map_or(String::new(), |r| r.vars[mb.index as usize - 1].clone());
    d.reply_idx_text(mb, &v);
}

/// `CmndMemory`: `Mem` lists all sixteen; `Mem<n> <text>` stores one in the settings'
/// text pool (`SettingsUpdateText` refuses what overflows it).
fn cmnd_memory(d: &mut Device, mb: &mut Mailbox) {
    let index = mb.index as usize;
    if index == 0 || index > MAX_RULE_MEMS {
        return;
    }
    if !mb.usridx {
        let mems = d.settings.rules.as_ref().map(|r| r.mems.clone()).unwrap_or_default();
        d.reply_all(mb, &mems);
        return;
    }
    if mb.data_len > 0 {
        let text = String::from(stored(mb));
        let old = core::mem::replace(&mut d.settings.rules_mut().mems[index - 1], text);
        let over = crate::limits::text_pool_overflow(&d.settings);
        if over > 0 {
            d.settings.rules_mut().mems[index - 1] = old;
            d.log(LogLevel::Info, format!("CFG: Text overflow by {over} char(s)"));
        }
        d.rule_engine().mems_event |= 1 << (index - 1);
    }
    let m = d.settings.rules.as_ref().map_or(String::new(), |r| r.mems[index - 1].clone());
    d.reply_idx_text(mb, &m);
}

/// `Settings->flag2.calc_resolution`.
fn calc_resolution(d: &Device) -> u8 {
    d.settings.rules.as_ref().map_or(1, |r| r.calc_resolution)
}

/// `CmndCalcResolution`: 0..7 decimals.
fn cmnd_calc_resolution(d: &mut Device, mb: &mut Mailbox) {
    if (0..=7).contains(&mb.payload) {
        d.settings.rules_mut().calc_resolution = mb.payload as u8;
    }
    let n = calc_resolution(d);
    d.reply_number(mb, i64::from(n));
}

/// Add, Sub and Mult: `Var<n> = Var<n> op <number>`, with CalcRes decimals.
fn calculate(d: &mut Device, mb: &mut Mailbox, op: fn(f32, f32) -> f32) {
    let index = mb.index as usize;
    if index == 0 || index > MAX_RULE_VARS {
        return;
    }
    if mb.data_len > 0 {
        let res = calc_resolution(d);
        let r = d.rule_engine();
        let value = op(char_to_float(&r.vars[index - 1]), char_to_float(&mb.data));
        r.vars[index - 1] = dtostrfd(f64::from(value), res);
        r.vars_event |= 1 << (index - 1);
    }
    reply_var(d, mb);
}

/// `CmndAddition`.
fn cmnd_addition(d: &mut Device, mb: &mut Mailbox) {
    calculate(d, mb, |a, b| a + b);
}

/// `CmndSubtract`.
fn cmnd_subtract(d: &mut Device, mb: &mut Mailbox) {
    calculate(d, mb, |a, b| a - b);
}

/// `CmndMultiply`.
fn cmnd_multiply(d: &mut Device, mb: &mut Mailbox) {
    calculate(d, mb, |a, b| a * b);
}

/// `CmndScale`: `Scale<n> value,fromLow,fromHigh,toLow,toHigh` (`map_float`); any other
/// number of arguments answers Error.
fn cmnd_scale(d: &mut Device, mb: &mut Mailbox) {
    let index = mb.index as usize;
    if index == 0 || index > MAX_RULE_VARS {
        return;
    }
    if mb.data_len > 0 {
        let args: alloc::vec::Vec<f32> = mb.data.split(',').map(char_to_float).collect();
        let [x, in_min, in_max, out_min, out_max] = args[..] else {
            return;
        };
        let value = (x - in_min) * (out_max - out_min) / (in_max - in_min) + out_min;
        let res = calc_resolution(d);
        let r = d.rule_engine();
        r.vars[index - 1] = dtostrfd(f64::from(value), res);
        r.vars_event |= 1 << (index - 1);
    }
    reply_var(d, mb);
}
