//! The device: one simulated Tasmota, driven by inputs and read through outputs.
//!
//! Drivers feed it inputs through its `handle_*` methods (the console, the MQTT link,
//! buttons, switches, sensors, the web API, and the time: [`Device::handle_timeout`] at
//! the instant [`Device::poll_timeout`] asked for) and drain [`Output`]s: console lines,
//! publishes, link requests and bytes, relays, settings to save, restarts. The crate's
//! "Run loop" section says what a driver must do with each. The device never reads a
//! clock, so a virtual clock gives the same transcript on every run.
//!
//! The scheduling follows the firmware's main loop, with every deadline in one timer
//! table (`device/timer.rs`): Backlog entries run at most one per loop pass once
//! `backlog_timer` is reached; blink runs on the 100 ms ticks; the 250 ms ticks cycle
//! through four phases, phase 1 (once a second) saving settings and counting down a
//! pending restart.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::backlog::Backlog;
use crate::console::{LogLevel, LogLine, SerialEvent, SerialInput};
use crate::identity::{format_token, sanitize_hostname};
use crate::mqtt::{ConnectRequest, Mqtt};
use crate::setoption as so;
use crate::settings::{Fingerprint, Settings, DEFAULT_HOSTNAME, MAX_PULSETIMERS};
use crate::telemetry::TELE_PERIOD_UNSET;
use crate::time::Instant;
use crate::topic::{Prefix, TopicContext, TopicKind};

/// The firmware this device reports (`TasmotaGlobal.version` and `image_name`).
pub const VERSION: &str = "14.2.0";
pub const IMAGE_NAME: &str = "(release-tasmota)";
const CORE_RELEASE: &str = "2_7_7";
pub(crate) const BUILD_DATE_TIME: &str = "2024-08-15T08:00:00";

pub use crate::hardware::{Hardware, DEFAULT_WIFI_CONNECT_MS};

mod timer;

/// Why the device booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootReason {
    /// Power was applied: PowerOnState decides the relays.
    PowerOn,
    /// A software restart: the relays keep their saved state.
    Restart,
}

/// How a restart ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartKind {
    /// `Restart 1` and every restart a setting asks for: the device boots again.
    Restart,
    /// `Restart 2`: the device halts until power is cycled.
    Halt,
    /// `Restart 9`: the device goes into deep sleep.
    DeepSleep,
}

/// A message the device publishes (`MqttPublishPayload`). It is reported whether or not
/// MQTT carried it, so observers can check the full topic of an `RSL:` line too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: String,
    /// The retain flag the message carries (SetOption104 already applied).
    pub retain: bool,
    /// Whether MQTT was connected and the message went out.
    pub sent: bool,
}

/// What the device asks its driver to do or show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A console line.
    Log(LogLine),
    /// A publish; its console line is the `Log` just before it.
    Publish(Publish),
    /// Open the MQTT link (closing any other first); answer with
    /// [`Device::handle_link_up`] or [`Device::handle_link_failed`].
    Connect(ConnectRequest),
    /// Bytes to write on the open link.
    Transmit(Vec<u8>),
    /// Close the link: TCP close with no MQTT DISCONNECT, so the broker sends the will.
    Close,
    /// The relays changed: bit n is relay n+1.
    Relays(u32),
    /// Settings changed and must be written now: these, as they were when the device
    /// decided to save (`SettingsSave`), not as they are when the driver drains. Boxed:
    /// settings are about 1 KB, and every queued output would be that big.
    SaveSettings(Box<Settings>),
    /// The device restarts: drop it and boot a new one from the saved settings.
    Restart(RestartKind),
}

/// Blink state (`blink_mask`, `blink_timer`, ...).
#[derive(Clone, Debug, Default)]
struct Blink {
    mask: u32,
    power: bool,
    powersave: u32,
    timer: Instant,
    counter: u32,
}

/// One simulated Tasmota device.
#[derive(Debug)]
pub struct Device {
    pub(crate) settings: Settings,
    /// The settings last saved (on flash), as a fingerprint: enough to tell a change.
    saved: Fingerprint,
    pub(crate) hw: Hardware,
    // Derived at boot, as `TasmotaGlobal.mqtt_client`, `.mqtt_topic`, `.hostname`.
    pub(crate) mqtt_client: String,
    pub(crate) mqtt_topic: String,
    pub(crate) hostname: String,
    pub(crate) unique_id: String,
    pub(crate) boot_at: Instant,
    pub(crate) now: Instant,
    next_tick: Instant,
    /// The last instant the Scheduler's 100 ms or 250 ms ticks ran: its 50 ms tick
    /// (`RulesEvery50ms`) ran before them at that instant, so an event they raise waits
    /// for the next one.
    pub(crate) scheduled_at: Option<Instant>,
    tick_phase: u8,
    pub(crate) backlog: Backlog,
    pub(crate) restart_flag: u8,
    pub(crate) restart_halt: bool,
    pub(crate) restart_deepsleep: bool,
    halted: bool,
    save_data_counter: u16,
    serial: SerialInput,
    pub(crate) power: u32,
    /// Settings may differ from `saved`: set by commands, power changes and resets, so
    /// the once-a-second save check compares only then.
    pub(crate) settings_dirty: bool,
    blink: Blink,
    /// Running pulse timers (`TasmotaGlobal.pulse_timer`): index and deadline, only the
    /// armed ones.
    pulse: Vec<(u8, Instant)>,
    boot_reason: BootReason,
    pub(crate) network_up: bool,
    /// `Web.state`: the web server mode that last started (0 before the network is up or
    /// after `WebServer 0`).
    pub(crate) web_state: u8,
    /// `TasmotaGlobal.uptime` in seconds.
    pub(crate) uptime_s: u32,
    /// `TasmotaGlobal.tele_period`: seconds since the last STATE.
    pub(crate) tele_period: u32,
    pub(crate) mqtt: Mqtt,
    pub(crate) fallback_topic_flag: bool,
    pub(crate) no_mqtt_response: bool,
    /// The response buffer (`ResponseData()`).
    pub(crate) response: String,
    outputs: VecDeque<Output>,
    pub(crate) inputs: crate::sensors::Inputs,
    /// What TLS holds of the heap now.
    pub(crate) tls_link: TlsLink,
    /// UTC seconds minus uptime seconds: 0 until `Time <epoch>` sets the clock.
    pub(crate) rtc_offset_s: i64,
    /// Seconds until the next Tasmota discovery (0: none pending).
    pub(crate) discovery_in: u8,
    /// A log line is being sent to `stat/<topic>/LOGGING`.
    mirroring: bool,
    /// The address in use: IPAddress1 if set at boot, else what DHCP gives.
    ip: [u8; 4],
    /// The Rules engine's state (`struct RULES`, `rules_vars`): made when a rule or a
    /// rule command first needs it, so a device without rules pays one pointer.
    pub(crate) rules: Option<Box<crate::rules::RuleEngine>>,
    /// `TasmotaGlobal.rules_flag`: system events waiting for the rules' 50 ms tick.
    pub(crate) rules_flag: u16,
}

/// The TLS link's share of the heap (spec: about 6.0 KB while up, 6.6 KB more during
/// the handshake).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TlsLink {
    #[default]
    None,
    Handshake,
    Up,
}

/// Outputs the queue makes room for when the first one comes after a drain: a command's
/// answer over MQTT (`CMD:` line, two publishes with their lines and bytes, relays).
const OUTPUTS_FIRST_CAPACITY: usize = 8;

/// `ERROR` preset of every command response.
pub(crate) const RESPONSE_ERROR: &str = "{\"Command\":\"Error\"}";

impl Device {
    /// Boots a device at `now` from saved settings.
    pub fn boot(hw: Hardware, mut settings: Settings, reason: BootReason, now: Instant) -> Device {
        // What is on flash; the boot count below makes the first tick save again.
        let saved = Fingerprint::of(&settings);
        settings.bootcount = settings.bootcount.wrapping_add(1);
        let mqtt_client = format_token(&settings.mqtt_client, &hw.mac);
        let topic = format_token(&settings.mqtt_topic, &hw.mac);
        if settings.hostname.contains('%') {
            settings.hostname = String::from(DEFAULT_HOSTNAME);
        }
        let hostname = if settings.hostname == DEFAULT_HOSTNAME {
            format!("{}-{:04}", topic, hw.mac.chip_id() & 0x1FFF)
        } else {
            settings.hostname.clone()
        };
        let hostname = sanitize_hostname(&hostname);
        let unique_id = hw.mac.unique_id();
        let mqtt_topic = topic.replace("%hostname%", &hostname).replace("%id%", &unique_id);
        let relays_mask = relays_mask(hw.relays);
        let saved_power = settings.power & relays_mask;
        let power = match (reason, settings.poweronstate) {
            (_, 4) => relays_mask,
            (BootReason::PowerOn, 0 | 5) => 0,
            (BootReason::PowerOn, 1) => relays_mask,
            (BootReason::PowerOn, 2) if settings.flag(so::SAVE_STATE) => (saved_power ^ u32::MAX) & relays_mask,
            _ if settings.flag(so::SAVE_STATE) => saved_power,
            _ => 0,
        };
        let save_data_counter = settings.save_data;
        let mut device = Device {
            saved,
            settings,
            hw,
            mqtt_client,
            mqtt_topic,
            hostname,
            unique_id,
            boot_at: now,
            now,
            next_tick: now,
            scheduled_at: None,
            tick_phase: 0,
            backlog: Backlog::default(),
            restart_flag: 0,
            restart_halt: false,
            restart_deepsleep: false,
            halted: false,
            save_data_counter,
            serial: SerialInput::default(),
            power,
            settings_dirty: true,
            blink: Blink::default(),
            pulse: Vec::new(),
            boot_reason: reason,
            network_up: false,
            web_state: 0,
            uptime_s: 0,
            tele_period: TELE_PERIOD_UNSET,
            mqtt: Mqtt::default(),
            fallback_topic_flag: false,
            no_mqtt_response: false,
            response: String::new(),
            outputs: VecDeque::new(),
            inputs: crate::sensors::Inputs::default(),
            tls_link: TlsLink::None,
            rtc_offset_s: 0,
            discovery_in: 0,
            mirroring: false,
            ip: [0; 4],
            rules: None,
            // setup(): rules_flag.system_init after FUNC_PRE_INIT cleared the flags.
            rules_flag: crate::rules::flag::SYSTEM_INIT,
        };
        device.rules_init();
        let m = device.hw.mac.0;
        let fixed = device.settings.ipv4_address[0];
        device.ip = if fixed != [0; 4] { fixed } else { device.hw.ip.unwrap_or([10, m[3], m[4], m[5]]) };
        device.inputs.sensors = alloc::vec![Default::default(); device.hw.sensors.len()];
        // DhtInit (FUNC_INIT) names the sensors once, with the IndexSeparator of this boot.
        device.inputs.index_separator = if device.settings.flag(so::INDEX_SEPARATOR) { b'_' } else { b'-' };
        let hdw = format!("HDW: {}", device.hw.chip.name());
        device.log(LogLevel::Info, hdw);
        let banner = format!(
            "Project tasmota - {} Version {}{}-{}({})",
            device.settings.devicename, VERSION, IMAGE_NAME, CORE_RELEASE, BUILD_DATE_TIME
        );
        device.log(LogLevel::Info, banner);
        // SetPowerOnState: the pulse timer of every relay that is on (of all with
        // PowerOnState 5) starts at boot.
        for i in 0..u32::from(device.hw.relays) {
            if (power >> i) & 1 != 0 || device.settings.poweronstate == POWER_ALL_OFF_PULSETIME_ON {
                let index = (i as usize) % MAX_PULSETIMERS;
                device.set_pulse_timer(index, device.settings.pulse_time(index));
            }
        }
        device.mqtt_init();
        device.push_output(Output::Relays(power));
        device.handle_timeout(now);
        device
    }

    /// The settings as they are now.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The hardware this device was built with.
    pub fn hardware(&self) -> &Hardware {
        &self.hw
    }

    /// The expanded topic (`tasmota_4B3316`).
    pub fn topic(&self) -> &str {
        &self.mqtt_topic
    }

    /// The expanded MQTT client id (`DVES_4B3316`).
    pub fn client_id(&self) -> &str {
        &self.mqtt_client
    }

    /// The WiFi hostname (`tasmota-4B3316-4886`).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The relay states, bit n for relay n+1.
    pub fn power(&self) -> u32 {
        self.power
    }

    /// Whether the device has restarted, halted or gone to sleep and takes no more input.
    pub fn is_stopped(&self) -> bool {
        self.halted
    }

    /// The next output, if any. Once they are all taken the device gives back the
    /// memory of its queues: a burst (a connect, Status 0) grows them to dozens of
    /// entries, and an idle device should not keep that.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front();
        if out.is_none() {
            if self.outputs.capacity() != 0 {
                self.outputs = VecDeque::new();
            }
            self.mqtt.client.release_idle();
        }
        out
    }

    /// Bytes typed on the serial console.
    pub fn handle_serial(&mut self, bytes: &[u8], now: Instant) {
        self.catch_up(now);
        for &b in bytes {
            if self.halted {
                return;
            }
            match self.serial.push(b) {
                Some(SerialEvent::Line(line)) => {
                    self.log(LogLevel::Info, format!("CMD: {line}"));
                    self.execute_command(&line);
                }
                Some(SerialEvent::Overrun) => {
                    self.log(LogLevel::Info, String::from("CMD: Serial buffer overrun"));
                }
                None => {}
            }
        }
    }

    /// A whole line typed on the serial console (the newline is added).
    pub fn handle_serial_line(&mut self, line: &str, now: Instant) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.handle_serial(&bytes, now);
    }

    /// The latest time the device has seen.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Device uptime in milliseconds.
    pub fn uptime_ms(&self) -> u64 {
        self.now.millis_since(self.boot_at)
    }

    pub(crate) fn log(&mut self, level: LogLevel, text: String) {
        let uptime_ms = self.uptime_ms();
        let serial = level as u8 <= self.settings.seriallog_level;
        let line = LogLine { uptime_ms, level, text, serial };
        // MqttLog: lines up to its level also go to stat/<topic>/LOGGING, as they are
        // shown (with the time), without a log line of their own.
        if level as u8 <= self.settings.mqttlog_level && !self.mirroring && self.mqtt.client.connected() {
            self.mirroring = true;
            let topic = self.own_topic(crate::topic::Prefix::Stat, "LOGGING");
            let payload = alloc::string::ToString::to_string(&line);
            self.mqtt_publish_lib(&topic, &payload, false);
            self.mirroring = false;
        }
        self.push_output(Output::Log(line));
    }

    pub(crate) fn outputs_len(&self) -> usize {
        self.outputs.len()
    }

    /// The outputs queued since [`Device::outputs_len`] was `first`.
    pub(crate) fn outputs_from(&self, first: usize) -> impl Iterator<Item = &Output> {
        self.outputs.iter().skip(first)
    }

    pub(crate) fn push_output(&mut self, output: Output) {
        if self.outputs.capacity() == 0 {
            // The queue starts empty after every drain: room for a command's answer at
            // once rather than growing 4, 8, 16.
            self.outputs.reserve(OUTPUTS_FIRST_CAPACITY);
        }
        self.outputs.push_back(output);
    }

    /// The device's IPv4 address as text.
    pub(crate) fn ip_address(&self) -> String {
        let [a, b, c, d] = self.ip;
        format!("{a}.{b}.{c}.{d}")
    }

    /// `GetResetReason()` (ESP8266 `getResetReason()` wording).
    pub(crate) fn restart_reason(&self) -> &'static str {
        match self.boot_reason {
            BootReason::PowerOn => "Power On",
            BootReason::Restart => "Software/System restart",
        }
    }

    // ---- scheduling ------------------------------------------------------------------

    fn backlog_loop(&mut self) {
        let Some((cmd, nodelay)) = self.backlog.pop() else {
            return;
        };
        self.no_mqtt_response = self.backlog.no_mqtt_response;
        self.execute_command(&cmd);
        if nodelay || self.backlog.nodelay {
            self.backlog.timer = self.now;
        }
        if self.backlog.is_empty() {
            self.backlog.nodelay = false;
            self.backlog.no_mqtt_response = false;
        }
    }

    /// The first 100 ms tick at or after the blink timer.
    fn blink_due(&self) -> Instant {
        let since = self.blink.timer.millis_since(self.boot_at);
        self.boot_at.plus_millis(since.div_ceil(100) * 100)
    }

    fn blink_loop(&mut self) {
        let step = 100 * u64::from(self.settings.blinktime);
        self.blink.timer = next_interval(self.blink.timer, step);
        self.blink.counter = self.blink.counter.saturating_sub(1);
        if self.blink.counter == 0 {
            self.stop_all_power_blink();
        } else {
            self.blink.power = !self.blink.power;
            let on = if self.blink.power { self.blink.mask } else { 0 };
            let now_power = (self.power & !self.blink.mask) | on;
            self.set_device_power_to(now_power);
        }
    }

    fn every_250ms(&mut self) {
        self.tick_phase = (self.tick_phase + 1) & 3;
        match self.tick_phase {
            1 => {
                if self.uptime_ms() >= 1000 {
                    self.perform_every_second();
                    // FUNC_EVERY_SECOND after PerformEverySecond: a TelePeriod due this
                    // second reports what the DHT read 4 s earlier.
                    self.rules_every_second();
                    self.dht_every_second();
                }
                self.save_data_tick();
                self.restart_tick();
            }
            // WifiCheck: the network comes up once WiFi has associated.
            2 if !self.network_up && self.uptime_ms() >= self.hw.wifi_connect_ms => {
                self.network_up = true;
                // WifiCheckIp: the first time the link has an address.
                self.rules_flag |= crate::rules::flag::WIFI_CONNECTED;
            }
            // Every250mSeconds, state 3 with the network up: the web server, then MQTT.
            3 if self.network_up => {
                self.web_server_check();
                self.mqtt_check();
            }
            _ => {}
        }
    }

    fn save_data_tick(&mut self) {
        if self.save_data_counter == 0 || !self.backlog.is_empty() {
            return;
        }
        self.save_data_counter -= 1;
        if self.save_data_counter == 0 {
            self.update_saved_power();
            if self.restart_flag == 0 {
                self.settings_save();
            }
            self.save_data_counter = self.settings.save_data;
        }
    }

    fn update_saved_power(&mut self) {
        self.settings.power = if self.settings.flag(so::SAVE_STATE) { self.power } else { 0 };
    }

    /// `SettingsSave(0)`: writes only when something changed.
    pub(crate) fn settings_save(&mut self) {
        if !self.settings_dirty {
            return;
        }
        self.settings_dirty = false;
        let now = Fingerprint::of(&self.settings);
        if now != self.saved {
            self.saved = now;
            self.push_output(Output::SaveSettings(Box::new(self.settings.clone())));
        }
    }

    /// `SettingsSaveAll()`: FUNC_SAVE_BEFORE_RESTART (`System#Save`) first.
    pub(crate) fn settings_save_all(&mut self) {
        self.update_saved_power();
        self.rules_save_before_restart();
        self.settings_save();
    }

    fn restart_tick(&mut self) {
        if self.restart_flag == 0 || !self.backlog.is_empty() {
            return;
        }
        self.settings_dirty = true;
        match self.restart_flag {
            214..=216 => {
                let keep = self.settings.clone();
                self.settings = Settings::default();
                if self.restart_flag == 216 {
                    self.settings.mqtt_host = keep.mqtt_host;
                    self.settings.mqtt_port = keep.mqtt_port;
                    self.settings.mqtt_user = keep.mqtt_user;
                    self.settings.mqtt_pwd = keep.mqtt_pwd;
                    self.settings.mqtt_topic = keep.mqtt_topic;
                }
                self.restart_flag = 3;
            }
            213 => self.restart_flag = 2,
            212 => self.restart_flag = 211,
            _ => {}
        }
        if self.restart_flag == 211 {
            self.settings = Settings::default();
            self.restart_flag = 3;
        }
        if self.restart_flag == 2 {
            self.settings_save_all();
        }
        self.restart_flag -= 1;
        if self.restart_flag == 0 {
            let kind = if self.restart_halt {
                RestartKind::Halt
            } else if self.restart_deepsleep {
                RestartKind::DeepSleep
            } else {
                RestartKind::Restart
            };
            self.restart_now(kind);
        }
    }

    /// `EspRestart()`: logs and stops; the driver boots a new device.
    pub(crate) fn restart_now(&mut self, kind: RestartKind) {
        let word = match kind {
            RestartKind::Restart => "Restarting",
            RestartKind::Halt => "Halted",
            RestartKind::DeepSleep => "Sleeping",
        };
        self.log(LogLevel::Info, format!("APP: {word}"));
        // WifiShutdown -> MqttDisconnect: TCP close, no DISCONNECT.
        self.mqtt.client.disconnect();
        self.drain_client();
        self.push_output(Output::Restart(kind));
        self.halted = true;
    }

    // ---- publishing ------------------------------------------------------------------

    pub(crate) fn topic_context(&self) -> TopicContext<'_> {
        TopicContext {
            fulltopic: &self.settings.mqtt_fulltopic,
            prefixes: &self.settings.mqtt_prefix,
            mqtt_client: &self.mqtt_client,
            hostname: &self.hostname,
            unique_id: &self.unique_id,
        }
    }

    /// `GetTopic_P(prefix, mqtt_topic, subtopic)`, honouring the fallback flag.
    pub(crate) fn own_topic(&self, prefix: Prefix, subtopic: &str) -> String {
        let kind = if self.fallback_topic_flag { TopicKind::Fallback } else { TopicKind::Full(&self.mqtt_topic) };
        self.topic_context().topic(prefix, kind, subtopic)
    }

    /// `MqttPublishPayload`.
    pub(crate) fn publish(&mut self, topic: String, payload: String, retain: bool) {
        self.publish_at(LogLevel::Info, topic, payload, retain);
    }

    /// `MqttPublishPayload` with the log line at `level` (discovery logs at DEBUG_MORE).
    pub(crate) fn publish_at(&mut self, level: LogLevel, topic: String, payload: String, retain: bool) {
        let retain = retain && !self.settings.flag(so::MQTT_NO_RETAIN);
        let sent = self.settings.flag(so::MQTT_ENABLED) && self.mqtt_publish_lib(&topic, &payload, retain);
        let text = if sent {
            format!("MQT: {topic} = {payload}{}", if retain { " (retained)" } else { "" })
        } else {
            let last = topic.rsplit('/').next().unwrap_or(&topic);
            format!("RSL: {last} = {payload}")
        };
        self.log(level, text);
        self.push_output(Output::Publish(Publish { topic, payload, retain, sent }));
    }

    /// `MqttPublishPayloadPrefixTopic_P`: `RESULT` replaces the subtopic of a result
    /// publish unless SetOption4 is on.
    pub(crate) fn publish_prefix_topic(
        &mut self,
        prefix: Prefix,
        result_or: bool,
        subtopic: &str,
        payload: String,
        retain: bool,
    ) {
        let sub = if result_or && !self.settings.flag(so::MQTT_RESPONSE) {
            String::from("RESULT")
        } else {
            subtopic.to_ascii_uppercase()
        };
        let topic = self.own_topic(prefix, &sub);
        self.publish(topic, payload, retain);
    }

    /// `MqttPublishPrefixTopicRulesProcess_P` (`teleperiod` false) and the TelePeriod
    /// publishes followed by `XdrvRulesProcess(1)`: the publish, then the rules see it.
    pub(crate) fn publish_prefix_topic_rules(
        &mut self,
        prefix: Prefix,
        subtopic: &str,
        payload: String,
        retain: bool,
        teleperiod: bool,
    ) {
        if self.rules_enabled() == 0 {
            self.publish_prefix_topic(prefix, prefix == Prefix::Stat, subtopic, payload, retain);
            return;
        }
        self.publish_prefix_topic(prefix, prefix == Prefix::Stat, subtopic, payload.clone(), retain);
        self.rules_process(teleperiod, &payload);
    }

    // ---- power -------------------------------------------------------------------------

    /// `GetPowerDevice`: `POWER`, or `POWER<n>` with several relays or SetOption26.
    pub(crate) fn power_key(&self, device: u32) -> String {
        if u32::from(self.hw.relays) + self.settings.option(so::DEVICE_INDEX_ENABLE) > 1 {
            format!("POWER{device}")
        } else {
            String::from("POWER")
        }
    }

    /// `MqttPublishPowerState`.
    pub(crate) fn publish_power_state(&mut self, device: u32) {
        let device = if device < 1 || device > u32::from(self.hw.relays) { 1 } else { device };
        let key = self.power_key(device);
        let state = String::from(self.settings.state_text((self.power >> (device - 1)) & 1));
        let sub = if self.settings.flag(so::MQTT_RESPONSE) { key.clone() } else { String::from("RESULT") };
        let topic = self.own_topic(Prefix::Stat, &sub);
        self.publish(topic, format!("{{\"{key}\":\"{state}\"}}"), false);
        if !self.settings.flag(so::ONLY_JSON_MESSAGE) {
            let topic = self.own_topic(Prefix::Stat, &key);
            let retain = self.settings.flag(so::MQTT_POWER_RETAIN);
            self.publish(topic, state, retain);
        }
    }

    /// `MqttPublishPowerBlinkState`.
    fn publish_power_blink_state(&mut self, device: u32) {
        let key = self.power_key(device);
        let state = String::from(self.settings.state_text((self.blink.mask >> (device - 1)) & 1));
        let payload = format!("{{\"{key}\":\"Blink {state}\"}}");
        self.publish_prefix_topic_rules(Prefix::Stat, "POWER", payload, false, false);
    }

    /// `SetDevicePower(TasmotaGlobal.power)`.
    fn set_device_power(&mut self) {
        self.settings_dirty = true;
        self.set_device_power_to(self.power);
    }

    /// `SetDevicePower(rpower)`: PowerOnState 4 ("always on") turns every relay on
    /// whatever was asked, and keeps the power state so.
    fn set_device_power_to(&mut self, rpower: u32) {
        let rpower = if self.settings.poweronstate == POWER_ALL_ALWAYS_ON {
            self.power = relays_mask(self.hw.relays);
            self.power
        } else {
            rpower
        };
        self.push_output(Output::Relays(rpower));
        // XdrvCall(FUNC_SET_POWER): the rules see the new state on their next 50 ms tick.
        self.rules_set_power(rpower);
    }

    /// `ExecuteCommandPower(device, state)` for 0 off, 1 on, 2 toggle, 3 blink,
    /// 4 blink off and anything else to show the state. A relay locked by PowerLock only
    /// shows its state (`CMD: Power<n> is LOCKED`); every change restarts the relay's
    /// PulseTime.
    pub(crate) fn execute_command_power(&mut self, device: u32, state: i32) {
        let device = if device < 1 || device > u32::from(self.hw.relays) { 1 } else { device };
        let mask = 1u32 << (device - 1);
        let mut state = state;
        if self.settings.power_lock & mask != 0 {
            self.log(LogLevel::Info, format!("CMD: Power{device} is LOCKED"));
            state = POWER_SHOW_STATE;
        }
        let pulse_index = (device as usize - 1) % MAX_PULSETIMERS;
        if state != POWER_SHOW_STATE {
            self.set_pulse_timer(pulse_index, 0);
        }
        match state {
            0..=2 => {
                if self.blink.mask & mask != 0 {
                    self.blink.mask &= !mask;
                    self.publish_power_blink_state(device);
                }
                match state {
                    0 => self.power &= !mask,
                    1 => self.power |= mask,
                    _ => self.power ^= mask,
                }
                self.set_device_power();
                // Restart PulseTime if powered on (off, with PowerOnState 5).
                let on =
                    if self.settings.poweronstate == POWER_ALL_OFF_PULSETIME_ON { !self.power } else { self.power };
                let time = if on & mask != 0 { self.settings.pulse_time(pulse_index) } else { 0 };
                self.set_pulse_timer(pulse_index, time);
            }
            3 => {
                if self.blink.mask & mask == 0 {
                    self.blink.powersave = (self.blink.powersave & !mask) | (self.power & mask);
                    self.blink.power = (self.power >> (device - 1)) & 1 != 0;
                }
                self.blink.timer = self.now.plus_millis(100);
                let count = u32::from(self.settings.blinkcount);
                self.blink.counter = if count == 0 { 64_000 } else { count * 2 } + 1;
                self.blink.mask |= mask;
                self.publish_power_blink_state(device);
                return;
            }
            4 => {
                let was = self.blink.mask & mask != 0;
                self.blink.mask &= !mask;
                self.publish_power_blink_state(device);
                if was {
                    let restore = ((self.blink.powersave >> (device - 1)) & 1) as i32;
                    self.execute_command_power(device, restore);
                }
                return;
            }
            _ => {}
        }
        self.publish_power_state(device);
        // SetOption59: a power change also sends tele/<topic>/STATE.
        if (0..=2).contains(&state) && self.settings.flag(so::HASS_TELE_ON_POWER) {
            self.mqtt_publish_tele_state();
        }
    }

    /// `SetPulseTimer(index, time)`: `time` 1..111 is tenths of a second, above that
    /// seconds + 100; 0 stops the timer.
    pub(crate) fn set_pulse_timer(&mut self, index: usize, time: u16) {
        self.pulse.retain(|(i, _)| usize::from(*i) != index);
        let ms = match u64::from(time) {
            0 => return,
            t @ 1..=111 => 100 * t,
            t => 1000 * (t - 100),
        };
        if self.pulse.capacity() == 0 {
            self.pulse.reserve_exact(1);
        }
        self.pulse.push((index as u8, self.now.plus_millis(ms)));
    }

    /// `GetPulseTimer(index)`: what is left, in the unit PulseTime was given in.
    pub(crate) fn pulse_remaining(&self, index: usize) -> u32 {
        let Some((_, at)) = self.pulse.iter().find(|(i, _)| usize::from(*i) == index) else {
            return 0;
        };
        let left = at.millis_since(self.now);
        (if left > 11_100 { left / 1000 + 100 } else { left / 100 }) as u32
    }

    /// The first 100 ms tick (`Every100mSeconds`) at or after the earliest pulse timer.
    fn pulse_due(&self) -> Option<Instant> {
        let at = self.pulse.iter().map(|(_, at)| *at).min()?;
        let since = at.millis_since(self.boot_at);
        Some(self.boot_at.plus_millis(since.div_ceil(100) * 100))
    }

    /// `Every100mSeconds`: each pulse timer that ran out switches its relay off (on, with
    /// PowerOnState 5), lowest index first.
    fn pulse_loop(&mut self) {
        let now = self.now;
        // Bit i: timer i ran out (MAX_PULSETIMERS is 32).
        let due = self.pulse.iter().filter(|(_, at)| *at <= now).fold(0u32, |bits, (i, _)| bits | (1 << (i & 31)));
        self.pulse.retain(|(_, at)| *at > now);
        if self.pulse.is_empty() {
            self.pulse = Vec::new();
        }
        let state = if self.settings.poweronstate == POWER_ALL_OFF_PULSETIME_ON { 1 } else { 0 };
        for i in (0..MAX_PULSETIMERS as u32).filter(|i| due & (1 << i) != 0) {
            let mut device = i + 1;
            while device <= u32::from(self.hw.relays) {
                self.execute_command_power(device, state);
                device += MAX_PULSETIMERS as u32;
            }
        }
    }

    fn stop_all_power_blink(&mut self) {
        for device in 1..=u32::from(self.hw.relays) {
            let mask = 1u32 << (device - 1);
            if self.blink.mask & mask != 0 {
                self.blink.mask &= !mask;
                self.publish_power_blink_state(device);
                let restore = ((self.blink.powersave >> (device - 1)) & 1) as i32;
                self.execute_command_power(device, restore);
            }
        }
    }

    /// `SetAllPower(state)` for Power0: 0 off, 1 on, 2 toggle, else show. Relays locked
    /// by PowerLock keep their state.
    pub(crate) fn set_all_power(&mut self, state: i32) {
        let all = relays_mask(self.hw.relays);
        let lock = self.settings.power_lock;
        match state {
            0 => self.power &= lock,
            1 => self.power = (self.power & lock) | (all & !lock),
            2 => self.power ^= !lock & all,
            _ => {}
        }
        if (0..=2).contains(&state) {
            self.set_device_power();
        }
        for device in 1..=u32::from(self.hw.relays) {
            self.publish_power_state(device);
        }
    }
}

/// `POWER_SHOW_STATE`: ExecuteCommandPower only reports.
pub(crate) const POWER_SHOW_STATE: i32 = 16;
/// PowerOnState 4 (`POWER_ALL_ALWAYS_ON`): every relay on, whatever asks otherwise.
pub(crate) const POWER_ALL_ALWAYS_ON: u8 = 4;
/// PowerOnState 5 (`POWER_ALL_OFF_PULSETIME_ON`): PulseTime switches relays on.
pub(crate) const POWER_ALL_OFF_PULSETIME_ON: u8 = 5;

fn relays_mask(relays: u8) -> u32 {
    if relays >= 32 {
        u32::MAX
    } else {
        (1u32 << relays) - 1
    }
}

/// `SetNextTimeInterval`: one step after the previous deadline. The firmware skips ahead
/// when its loop stalled; a simulated loop never stalls (a driver that jumps the clock
/// means time passed with the loop running), so every tick runs.
fn next_interval(timer: Instant, step: u64) -> Instant {
    timer.plus_millis(step)
}
