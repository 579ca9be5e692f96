//! The backend boundary: what the core needs from a platform, as one small trait.
//!
//! The core decides; a platform carries out. [`Output`] is the effect list, and
//! [`Platform`] is its receiving side: console lines out, the MQTT link (connect, bytes,
//! close), relays and LEDs, settings to persist, restarts, and (optionally) every publish.
//! Inputs go the other way through [`Device`]'s `handle_*` methods with the time the
//! platform reads from its own clock. [`drive`] drains a device into a platform, and it
//! is the one place where [`Output`]s are carried out: the ESP32-C3 firmware
//! (`firmware/esp32c3`), the QEMU test runner (`crates/rv32-tests`), the session checks
//! and the tokio host driver (`src/host.rs`) all implement [`Platform`]. A platform whose
//! link writes are asynchronous queues them in order and writes them after `drive`
//! returns, bytes before a `close` or `connect` first (the firmware's outbox, the host's
//! `LinkOp`s).
//!
//! Nothing here needs `std`, a clock, a socket or an atomic read-modify-write.

use crate::console::LogLine;
use crate::device::{Device, Output, Publish, RestartKind};
use crate::mqtt::ConnectRequest;
use crate::settings::Settings;

/// What a platform does for the core.
pub trait Platform {
    /// A log line; the serial console shows it when `line.serial` is set.
    fn console(&mut self, line: &LogLine);
    /// Open the MQTT link (closing any other first); answer later with
    /// `Device::handle_link_up` or `Device::handle_link_failed`.
    fn connect(&mut self, request: &ConnectRequest);
    /// Bytes to write on the open link.
    fn transmit(&mut self, bytes: &[u8]);
    /// Close the link (TCP close, no MQTT DISCONNECT).
    fn close(&mut self);
    /// The relays: bit n is relay n+1. The status LED follows relay 1 on a Sonoff.
    fn relays(&mut self, bits: u32);
    /// Persist these settings now (atomically: a power cut must leave the old or the new).
    fn save_settings(&mut self, settings: &Settings);
    /// The device restarts, halts or sleeps; the platform boots a new core from the
    /// saved settings for [`RestartKind::Restart`].
    fn restart(&mut self, kind: RestartKind);
    /// A publish the device made (whether MQTT carried it or not). Optional.
    fn published(&mut self, _publish: &Publish) {}
}

/// Carries out everything the device has queued, in order; returns how many outputs
/// there were.
pub fn drive<P: Platform>(device: &mut Device, platform: &mut P) -> usize {
    let mut n = 0;
    while let Some(out) = device.poll_output() {
        n += 1;
        match out {
            Output::Log(line) => platform.console(&line),
            Output::Publish(p) => platform.published(&p),
            Output::Connect(req) => platform.connect(&req),
            Output::Transmit(bytes) => platform.transmit(&bytes),
            Output::Close => platform.close(),
            Output::Relays(bits) => platform.relays(bits),
            Output::SaveSettings(settings) => platform.save_settings(&settings),
            Output::Restart(kind) => platform.restart(kind),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    use super::*;
    use crate::device::BootReason;
    use crate::hardware::Hardware;
    use crate::time::Instant;

    #[derive(Default)]
    struct Recorder {
        events: Vec<String>,
    }

    impl Platform for Recorder {
        fn console(&mut self, line: &LogLine) {
            if line.serial {
                self.events.push(line.to_string());
            }
        }
        fn connect(&mut self, r: &ConnectRequest) {
            self.events.push(alloc::format!("connect {}:{}", r.host, r.port));
        }
        fn transmit(&mut self, bytes: &[u8]) {
            self.events.push(alloc::format!("tx {} bytes", bytes.len()));
        }
        fn close(&mut self) {
            self.events.push("close".into());
        }
        fn relays(&mut self, bits: u32) {
            self.events.push(alloc::format!("relays {bits:b}"));
        }
        fn save_settings(&mut self, s: &Settings) {
            self.events.push(alloc::format!("save power={}", s.power));
        }
        fn restart(&mut self, kind: RestartKind) {
            self.events.push(alloc::format!("restart {kind:?}"));
        }
    }

    #[test]
    fn drive_hands_every_output_to_the_platform_in_order() {
        let settings = Settings { mqtt_host: "broker.lan".into(), ..Settings::default() };
        let mut d = Device::boot(Hardware::default(), settings, BootReason::PowerOn, Instant::from_millis(0));
        let mut p = Recorder::default();
        drive(&mut d, &mut p);
        assert_eq!(p.events[0], "00:00:00.000 HDW: ESP8266EX");
        assert!(p.events.contains(&"relays 0".to_string()), "{:?}", p.events);
        p.events.clear();
        d.handle_serial_line("Power ON", Instant::from_millis(10));
        drive(&mut d, &mut p);
        assert_eq!(
            p.events,
            [
                "00:00:00.010 CMD: Power ON",
                "relays 1",
                "00:00:00.010 RSL: RESULT = {\"POWER\":\"ON\"}",
                "00:00:00.010 RSL: POWER = ON",
            ]
        );
        // The connect request comes once WiFi is up (3.5 s).
        p.events.clear();
        let mut now = Instant::from_millis(10);
        while now < Instant::from_millis(4000) {
            now = d.poll_timeout().unwrap();
            d.handle_timeout(now);
            drive(&mut d, &mut p);
        }
        assert!(p.events.contains(&"connect broker.lan:1883".to_string()), "{:?}", p.events);
        assert!(p.events.contains(&"save power=1".to_string()), "{:?}", p.events);
    }
}
