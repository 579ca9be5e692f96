//! Command dispatch (`ExecuteCommand`, `CommandHandler`, `DecodeCommand`): the same path
//! for the serial console, Backlog, MQTT (`MqttDataHandler`) and the web API (`/cm`).
//!
//! Tables are searched in the firmware's order: the core commands (`kTasmotaCommands`)
//! first, then the MQTT driver's (`kMqttCommands`), which only answer while SetOption3
//! is on. A name matches case-insensitively and the reply uses the table's spelling.

#[cfg(test)]
mod ledger;
mod mqtt;
mod rules;
mod status;
mod tasmota;

pub use mqtt::DEFAULT_FINGERPRINTS;
pub(crate) use status::START_VALID_TIME;

use alloc::format;
use alloc::string::String;

use crate::device::{Device, RESPONSE_ERROR};
use crate::grammar;
use crate::json::escape;
use crate::setoption as so;
use crate::topic::Prefix;

/// The command being handled (`XdrvMailbox`).
#[derive(Clone, Debug)]
pub(crate) struct Mailbox {
    /// The reply key: the table's spelling of the command (handlers may rename it).
    pub command: String,
    pub index: u32,
    pub usridx: bool,
    pub data: String,
    pub data_len: usize,
    pub payload: i32,
    /// The command arrived on a group topic.
    pub grpflg: bool,
}

impl Mailbox {
    pub fn shortcut(&self) -> grammar::Shortcut {
        grammar::shortcut(&self.data)
    }

    /// `SetShortcutDefault`: turns the data into the `1` shortcut.
    pub fn set_shortcut_default(&mut self) {
        if !self.data.is_empty() {
            self.data = String::from("1");
        }
    }
}

pub(crate) type Handler = fn(&mut Device, &mut Mailbox);

/// A command table: SetOption synonyms first, then commands.
pub(crate) struct Table {
    pub synonyms: &'static [(&'static str, u32)],
    pub commands: &'static [(&'static str, Handler)],
}

impl Table {
    fn find(&self, name: &str) -> Option<Found> {
        if let Some((canon, n)) = self.synonyms.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
            return Some(Found::Synonym(canon, *n));
        }
        self.commands.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)).map(|(c, h)| Found::Command(c, *h))
    }
}

enum Found {
    Synonym(&'static str, u32),
    Command(&'static str, Handler),
}

impl Device {
    /// `ExecuteCommand`: runs one command line (console, Backlog, rules).
    pub(crate) fn execute_command(&mut self, line: &str) {
        let Some((name, data)) = grammar::split_line(line) else {
            return;
        };
        let topic = format!("/{name}");
        self.command_handler(&topic, data);
    }

    /// `CommandHandler`: `topic` is `/<command>` for typed commands or the full topic of
    /// an MQTT command; `data` is the rest of the line or the payload.
    pub(crate) fn command_handler(&mut self, topic: &str, data: &str) {
        self.settings_dirty = true;
        let grpflg = self.settings.mqtt_grp_topic.iter().any(|g| !g.is_empty() && topic.contains(g.as_str()));
        let fallback = self.topic_context().topic(Prefix::Cmnd, crate::topic::TopicKind::Fallback, "");
        self.fallback_topic_flag = topic.starts_with(&fallback);
        let last = topic.rsplit('/').next().unwrap_or(topic);
        let parsed = grammar::parse(last, data);
        if parsed.no_response {
            self.no_mqtt_response = true;
        }
        self.response = String::from(RESPONSE_ERROR);
        // CommandHandler sets backlog_timer for every command: SetOption34 spacing.
        self.backlog.timer = self.now.plus_millis(self.settings.backlog_delay_ms());
        let mut mb = Mailbox {
            command: String::new(),
            index: parsed.index,
            usridx: parsed.usridx,
            data: parsed.data,
            data_len: parsed.data_len,
            payload: parsed.payload,
            grpflg,
        };
        let mut subtopic = parsed.name;
        let found = if subtopic.is_empty() { None } else { self.find_command(&subtopic) };
        match found {
            Some(Found::Command(canon, handler)) => {
                mb.command = String::from(canon);
                // Only a command that stores a text (not a query) can overflow the text
                // pool: the others run without a copy of the settings.
                let before = (mb.data_len > 0 && crate::limits::stores_text(canon)).then(|| self.settings.clone());
                handler(self, &mut mb);
                if let Some(before) = before {
                    self.refuse_text_overflow(before);
                }
            }
            Some(Found::Synonym(canon, n)) => {
                mb.command = String::from(canon);
                mb.index = n;
                self.setoption_base(&mut mb, false);
            }
            None => {
                self.response = String::from("{\"Command\":\"Unknown\"}");
                subtopic = String::from("Command");
            }
        }
        // The answer is published (unless no_mqtt_response), then the rules see it
        // (MqttPublishPrefixTopicRulesProcess_P, or XdrvRulesProcess(0) alone).
        if !self.response.is_empty() {
            let payload = core::mem::take(&mut self.response);
            if self.no_mqtt_response {
                self.rules_process(false, &payload);
            } else if self.rules_enabled() != 0 {
                self.publish_prefix_topic(Prefix::Stat, true, &subtopic, payload.clone(), false);
                self.rules_process(false, &payload);
            } else {
                self.publish_prefix_topic(Prefix::Stat, true, &subtopic, payload, false);
            }
        }
        // Empty, and holding no memory between commands.
        self.response = String::new();
        self.fallback_topic_flag = false;
        self.no_mqtt_response = false;
    }

    /// `SettingsUpdateText`: a text that would overflow the firmware's text pool is not
    /// stored (the settings as they were before the command are kept), and
    /// `CFG: Text overflow by N char(s)` is logged.
    fn refuse_text_overflow(&mut self, before: crate::Settings) {
        let over = crate::limits::text_pool_overflow(&self.settings);
        if over > 0 && crate::limits::text_pool_overflow(&before) == 0 {
            self.settings = before;
            self.log(crate::LogLevel::Info, format!("CFG: Text overflow by {over} char(s)"));
        }
    }

    fn find_command(&self, name: &str) -> Option<Found> {
        if let Some(found) = tasmota::TABLE.find(name) {
            return Some(found);
        }
        if self.settings.flag(so::MQTT_ENABLED) {
            if let Some(found) = mqtt::TABLE.find(name) {
                return Some(found);
            }
        }
        // XdrvCall(FUNC_COMMAND): xdrv_10_rules after xdrv_02_mqtt.
        rules::TABLE.find(name)
    }

    // ---- responses (`ResponseCmnd*`) ----------------------------------------------------

    pub(crate) fn reply_number(&mut self, mb: &Mailbox, value: i64) {
        self.response = format!("{{\"{}\":{value}}}", mb.command);
    }

    pub(crate) fn reply_idx_number(&mut self, mb: &Mailbox, value: i64) {
        self.response = format!("{{\"{}{}\":{value}}}", mb.command, mb.index);
    }

    pub(crate) fn reply_text(&mut self, mb: &Mailbox, value: &str) {
        self.response = format!("{{\"{}\":\"{}\"}}", mb.command, escape(value));
    }

    pub(crate) fn reply_idx_text(&mut self, mb: &Mailbox, value: &str) {
        self.response = format!("{{\"{}{}\":\"{}\"}}", mb.command, mb.index, escape(value));
    }

    pub(crate) fn reply_state_text(&mut self, mb: &Mailbox, state: u32) {
        let text = String::from(self.settings.state_text(state));
        self.reply_text(mb, &text);
    }

    /// `ResponseCmndAll`: `{"<Cmd>1":"..","<Cmd>2":".."}`.
    pub(crate) fn reply_all(&mut self, mb: &Mailbox, values: &[String]) {
        let mut out = String::from("{");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("\"{}{}\":\"{}\"", mb.command, i + 1, escape(v)));
        }
        out.push('}');
        self.response = out;
    }
}

/// The log-level commands (`SerialLog`, `WebLog`, `MqttLog`): 0..4 sets, anything else
/// shows; the reply is the level.
pub(crate) fn log_level(d: &mut Device, mb: &mut Mailbox, level: fn(&mut crate::Settings) -> &mut u8) {
    if crate::limits::range::LOG_LEVEL.contains(&mb.payload) {
        *level(&mut d.settings) = mb.payload as u8;
    }
    let now = *level(&mut d.settings);
    d.reply_number(mb, i64::from(now));
}

#[cfg(test)]
mod tests {
    use crate::device::{BootReason, Device};
    use crate::{Hardware, Instant, Settings};

    /// Every command not in `limits::TEXT_COMMANDS` runs without a copy of the settings
    /// for the text-pool check, so none may change a text setting: each command of both
    /// tables, given a long text (plain and indexed), leaves the texts as they were.
    #[test]
    fn only_the_text_commands_change_texts() {
        let long = "x".repeat(300);
        for table in [&super::tasmota::TABLE, &super::mqtt::TABLE] {
            for (name, _) in table.commands {
                if crate::limits::stores_text(name) || *name == "Reset" {
                    continue;
                }
                for typed in [format!("{name} {long}"), format!("{name}1 {long}"), format!("{name}2 {long}")] {
                    let settings = Settings { mqtt_host: "broker.lan".into(), ..Settings::default() };
                    let mut d =
                        Device::boot(Hardware::default(), settings, BootReason::PowerOn, Instant::from_millis(0));
                    let mut texts_before = alloc::vec::Vec::new();
                    crate::limits::each_text(d.settings(), |f, _, v, _| {
                        texts_before.push((f, alloc::string::String::from(v)))
                    });
                    d.handle_serial_line(&typed, Instant::from_millis(10));
                    let mut texts_after = alloc::vec::Vec::new();
                    crate::limits::each_text(d.settings(), |f, _, v, _| {
                        texts_after.push((f, alloc::string::String::from(v)))
                    });
                    assert_eq!(texts_before, texts_after, "{typed} changed a text but is not in limits::TEXT_COMMANDS");
                }
            }
        }
    }
}
