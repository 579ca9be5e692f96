//! MQTT session checks on a fake clock and a fake link, as a table of plain functions so
//! the host (`cargo test`) and the QEMU RV32 run (`crates/rv32-tests`) run the same
//! checks. They drive the device through [`crate::platform::drive`], as the firmware does.
//!
//! Each check returns `Err(why)` instead of panicking, so a bare-metal runner can report
//! it and go on.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::console::LogLine;
use crate::device::{BootReason, Device, Publish, RestartKind};
use crate::hardware::Hardware;
use crate::mqtt::packet::{self, Packet};
use crate::mqtt::{ConnectRequest, LinkFailure};
use crate::platform::{drive, Platform};
use crate::setoption as so;
use crate::settings::Settings;
use crate::time::Instant;

/// One check: its name and its body.
pub type Check = (&'static str, fn() -> Result<(), String>);

/// Every session check.
pub const CHECKS: &[Check] = &[
    ("connect_bytes_and_first_publishes", connect_bytes_and_first_publishes),
    ("refused_connack_backs_off_10_20_30", refused_connack_backs_off),
    ("keepalive_ping_and_timeout", keepalive_ping_and_timeout),
    ("failures_have_the_firmware_rc", failures_have_the_firmware_rc),
    ("command_over_mqtt_answers_on_stat", command_over_mqtt_answers_on_stat),
    ("tls_aws_iot_request", tls_aws_iot_request),
    ("restart_closes_without_disconnect", restart_closes_without_disconnect),
    ("status0_json_is_one_message", status0_json_is_one_message),
];

/// How the fake link answers a connect request.
#[derive(Clone, Copy, PartialEq)]
pub enum LinkMode {
    Up,
    Fail(LinkFailure),
}

/// The fake platform: records what the device did.
#[derive(Default)]
pub struct Fake {
    /// Console lines at INFO and above, with their time.
    pub lines: Vec<String>,
    /// Bytes written on the link.
    pub sent: Vec<u8>,
    pub connects: Vec<ConnectRequest>,
    pub closes: usize,
    pub restarts: Vec<RestartKind>,
    pub saves: usize,
}

impl Platform for Fake {
    fn console(&mut self, line: &LogLine) {
        if line.serial {
            self.lines.push(line.to_string());
        }
    }
    fn connect(&mut self, request: &ConnectRequest) {
        self.connects.push(request.clone());
    }
    fn transmit(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.closes += 1;
    }
    fn relays(&mut self, _bits: u32) {}
    fn save_settings(&mut self, _settings: &Settings) {
        self.saves += 1;
    }
    fn restart(&mut self, kind: RestartKind) {
        self.restarts.push(kind);
    }
    fn published(&mut self, _p: &Publish) {}
}

/// A device with MqttHost `broker.lan`, user `bob`, password `s3cret`, on a fake clock
/// (`now`, ms) and a fake link; `p` records what it did. The host's session tests use it
/// too.
pub struct Bench {
    pub d: Device,
    pub now: u64,
    pub p: Fake,
    pub link: LinkMode,
}

impl Bench {
    pub fn new(configure: impl FnOnce(&mut Settings)) -> Bench {
        let mut s = Settings {
            mqtt_host: "broker.lan".into(),
            mqtt_user: "bob".into(),
            mqtt_pwd: "s3cret".into(),
            ..Settings::default()
        };
        configure(&mut s);
        let d = Device::boot(Hardware::default(), s, BootReason::PowerOn, Instant::from_millis(0));
        let mut b = Bench { d, now: 0, p: Fake::default(), link: LinkMode::Up };
        b.drain();
        b.p.lines.clear();
        b
    }

    /// Drives the device; answers a connect request as the link mode says.
    pub fn drain(&mut self) {
        loop {
            let before = self.p.connects.len();
            drive(&mut self.d, &mut self.p);
            if self.p.connects.len() == before {
                return;
            }
            let now = Instant::from_millis(self.now);
            match self.link {
                LinkMode::Up => self.d.handle_link_up(now),
                LinkMode::Fail(f) => self.d.handle_link_failed(f, now),
            }
        }
    }

    pub fn run_to(&mut self, until: u64) {
        while let Some(t) = self.d.poll_timeout().filter(|t| t.as_millis() <= until) {
            self.now = t.as_millis();
            self.d.handle_timeout(t);
            self.drain();
        }
        self.now = until;
    }

    pub fn broker_sends(&mut self, bytes: &[u8]) {
        self.d.handle_received(bytes, Instant::from_millis(self.now));
        self.drain();
    }

    pub fn packets(&mut self) -> Result<Vec<Packet>, String> {
        let mut out = vec![];
        loop {
            match packet::decode(&self.p.sent, 1 << 20) {
                Ok(Some((p, n))) => {
                    self.p.sent.drain(..n);
                    out.push(p);
                }
                Ok(None) if self.p.sent.is_empty() => return Ok(out),
                other => return Err(format!("the device sent a bad or partial packet: {other:?}")),
            }
        }
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        core::mem::take(&mut self.p.lines)
    }

    pub fn connected() -> Result<Bench, String> {
        let mut b = Bench::new(|_| {});
        b.run_to(3500);
        b.packets()?;
        b.broker_sends(&[0x20, 2, 0, 0]);
        b.packets()?;
        b.take_lines();
        Ok(b)
    }
}

/// The CONNECT a [`Bench`] device sends, byte for byte: MQTT 3.1.1, clean session, will
/// `tele/tasmota_4B3316/LWT` = `Offline` QoS 1 retained, keepalive 30, client
/// `DVES_4B3316`, user `bob`, password `s3cret`.
pub fn bench_connect_bytes() -> Vec<u8> {
    // Fixed header (remaining length 70), protocol name and level, flags 0xEE, keepalive.
    let mut want = vec![0x10, 70, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 30];
    for text in [&b"DVES_4B3316"[..], b"tele/tasmota_4B3316/LWT", b"Offline", b"bob", b"s3cret"] {
        want.extend_from_slice(&[0, text.len() as u8]);
        want.extend_from_slice(text);
    }
    want
}

fn same<T: PartialEq + core::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// StartWebserver's line at the first Every250mSeconds state 3 with the network up.
const HTP_ACTIVE: &str = "00:00:02.500 HTP: Web server active on tasmota-4B3316-4886 with IP address 10.75.51.22";

fn connect_bytes_and_first_publishes() -> Result<(), String> {
    let mut b = Bench::new(|_| {});
    b.run_to(3499);
    same("connects before 3.5 s", b.p.connects.len(), 0)?;
    b.run_to(3500);
    same(
        "lines",
        b.take_lines(),
        vec![HTP_ACTIVE.to_string(), "00:00:03.500 MQT: Attempting connection...".to_string()],
    )?;
    same("CONNECT bytes", &b.p.sent, &bench_connect_bytes())?;
    b.p.sent.clear();
    b.broker_sends(&[0x20, 2, 0, 0]);
    let lines = b.take_lines();
    same("first line", lines.first().map(String::as_str), Some("00:00:03.500 MQT: Connected"))?;
    same(
        "LWT line",
        lines.get(1).map(String::as_str),
        Some("00:00:03.500 MQT: tele/tasmota_4B3316/LWT = Online (retained)"),
    )?;
    let packets = b.packets()?;
    same(
        "empty POWER publish",
        packets.get(1).map(Packet::encode),
        Some(b"\x30\x1b\x00\x19cmnd/tasmota_4B3316/POWER".to_vec()),
    )?;
    let subs = packets.iter().filter(|p| matches!(p, Packet::Subscribe { .. })).count();
    same("subscriptions", subs, 3)
}

fn refused_connack_backs_off() -> Result<(), String> {
    let mut b = Bench::new(|_| {});
    let mut waits = vec![];
    let mut t = 3500;
    for _ in 0..3 {
        b.run_to(t);
        b.p.sent.clear();
        b.broker_sends(&[0x20, 2, 0, 5]);
        let lines = b.take_lines();
        let last = lines.last().cloned().unwrap_or_default();
        let secs: u64 = last
            .rsplit("Retry in ")
            .next()
            .and_then(|r| r.strip_suffix(" sec"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no retry line: {lines:?}"))?;
        if !last.contains("rc 5.") {
            return Err(format!("expected rc 5: {last}"));
        }
        waits.push(secs);
        t += secs * 1000 + 1000;
    }
    same("backoff", waits, vec![10, 20, 30])
}

fn keepalive_ping_and_timeout() -> Result<(), String> {
    let mut b = Bench::connected()?;
    let pings = |b: &mut Bench| -> Result<usize, String> {
        Ok(b.packets()?.iter().filter(|p| matches!(p, Packet::Pingreq)).count())
    };
    // Last packet in at 3.5 s (CONNACK); keepalive 30 s.
    b.run_to(33_500);
    same("pings at 33.500 s", pings(&mut b)?, 0)?;
    b.run_to(33_501);
    same("pings at 33.501 s", pings(&mut b)?, 1)?;
    b.broker_sends(&[0xD0, 0]);
    b.run_to(63_502);
    same("pings at 63.502 s", pings(&mut b)?, 1)?;
    // No PINGRESP: the link is dropped one keepalive later, the next MqttCheck reconnects.
    b.run_to(93_503);
    same("closes", b.p.closes, 1)?;
    b.run_to(94_500);
    same(
        "reconnect line",
        b.take_lines().last().cloned(),
        Some("00:01:34.500 MQT: Attempting connection...".to_string()),
    )
}

fn failures_have_the_firmware_rc() -> Result<(), String> {
    let mut b = Bench::new(|_| {});
    b.run_to(7500);
    same(
        "no CONNACK in 4 s",
        b.take_lines(),
        vec![
            HTP_ACTIVE.to_string(),
            "00:00:03.500 MQT: Attempting connection...".to_string(),
            "00:00:07.500 MQT: Connect failed to broker.lan:1883, rc -4. Retry in 10 sec".to_string(),
        ],
    )?;
    for (failure, rc) in [(LinkFailure::Tcp, -2), (LinkFailure::Dns, -5)] {
        let mut b = Bench::new(|_| {});
        b.link = LinkMode::Fail(failure);
        b.run_to(3500);
        let want = format!("00:00:03.500 MQT: Connect failed to broker.lan:1883, rc {rc}. Retry in 10 sec");
        let attempt = "00:00:03.500 MQT: Attempting connection...".to_string();
        same("failure line", b.take_lines(), vec![HTP_ACTIVE.to_string(), attempt, want])?;
    }
    Ok(())
}

fn command_over_mqtt_answers_on_stat() -> Result<(), String> {
    let mut b = Bench::connected()?;
    let cmd = Packet::Publish(packet::Publish {
        topic: "cmnd/tasmota_4B3316/Power".into(),
        payload: b"TOGGLE".to_vec(),
        qos: 0,
        retain: false,
        dup: false,
        packet_id: None,
    });
    b.broker_sends(&cmd.encode());
    same(
        "lines",
        b.take_lines(),
        vec![
            "00:00:03.500 MQT: stat/tasmota_4B3316/RESULT = {\"POWER\":\"ON\"}".to_string(),
            "00:00:03.500 MQT: stat/tasmota_4B3316/POWER = ON".to_string(),
        ],
    )?;
    let packets = b.packets()?;
    same("two publishes", packets.len(), 2)
}

fn tls_aws_iot_request() -> Result<(), String> {
    let mut b = Bench::new(|s| {
        s.mqtt_host = "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com".into();
        s.mqtt_port = 443;
        s.mqtt_user = "tasmota?x-amz-customauthorizer-name=TasmotaAuth".into();
        s.set_option(so::MQTT_TLS, 1);
    });
    b.run_to(3500);
    let req = b.p.connects.first().ok_or("no connect request")?;
    let tls = req.tls.as_ref().ok_or("no TLS request")?;
    same("SNI", tls.server_name.as_str(), "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com")?;
    same("ALPN", tls.alpn, Some("mqtt"))?;
    same("retain forced off (SO104)", b.d.settings().flag(so::MQTT_NO_RETAIN), true)?;
    same("timeout", req.timeout_ms, 5000)
}

fn restart_closes_without_disconnect() -> Result<(), String> {
    let mut b = Bench::connected()?;
    b.d.handle_serial_line("Restart 1", Instant::from_millis(b.now));
    b.drain();
    b.run_to(b.now + 3000);
    let packets = b.packets()?;
    same("no DISCONNECT", packets.iter().any(|p| matches!(p, Packet::Disconnect)), false)?;
    same("restart", b.p.restarts.clone(), vec![RestartKind::Restart])?;
    same("closed", b.p.closes, 1)
}

fn status0_json_is_one_message() -> Result<(), String> {
    let mut b = Bench::new(|s| s.mqtt_host.clear());
    b.d.handle_serial_line("Status0", Instant::from_millis(0));
    b.drain();
    let lines = b.take_lines();
    let line = lines.get(1).ok_or("no reply")?;
    let body = line.strip_prefix("00:00:00.000 RSL: STATUS0 = ").ok_or_else(|| format!("reply: {line}"))?;
    for key in [
        "{\"Status\":{\"Module\":1,",
        "\"StatusPRM\":",
        "\"StatusFWR\":",
        "\"StatusLOG\":",
        "\"StatusMEM\":",
        "\"StatusNET\":",
        "\"StatusMQT\":",
        "\"StatusTIM\":",
        "\"StatusSNS\":",
        "\"StatusSTS\":",
    ] {
        if !body.contains(key) {
            return Err(format!("{key} missing in {body}"));
        }
    }
    same("messages", lines.len(), 2)
}
