//! The sans-IO Tasmota device core.
//!
//! Everything a Tasmota device decides, with no socket, clock or file: the command
//! grammar and Backlog, the settings and their defaults, the topic scheme, the MQTT
//! client and its connection state machine, telemetry, discovery and the console's exact
//! lines. Drivers (the tokio host driver, the ESP32-C3 firmware, the QEMU test runner)
//! feed it inputs and carry out its [`Output`]s, as the run loop below says.
//!
//! `no_std` + `alloc`: it builds for `riscv32imc-unknown-none-elf` and uses no atomics.
//!
//! # Run loop
//!
//! A driver owns one [`Device`], a clock and whatever carries out the outputs (a link to
//! the broker, a console, a place to keep the settings). The device never reads a clock:
//! every input takes `now`, an [`Instant`] on the driver's monotonic clock in
//! milliseconds, which must never go back. Real time and a virtual clock are the same to
//! the device, so a virtual clock gives the same transcript on every run.
//!
//! ## Inputs
//!
//! [`Device::boot`] makes a device from the saved settings and queues its boot lines.
//! After that, every input is a `handle_*` method of [`Device`]:
//!
//! - [`Device::handle_timeout`]: the time has come, at or after the instant
//!   [`Device::poll_timeout`] gave (see there for when to call it again).
//! - [`Device::handle_serial`], [`Device::handle_serial_line`]: bytes or a line typed on
//!   the serial console.
//! - [`Device::handle_link_up`], [`Device::handle_link_failed`]: the answer to
//!   [`Output::Connect`]: the link is open (TCP connected, TLS handshake done), or could
//!   not be opened.
//! - [`Device::handle_received`]: bytes arrived on the open link.
//! - [`Device::handle_link_closed`]: the peer closed the link, or reading or writing it
//!   failed.
//! - [`Device::handle_button`], [`Device::handle_switch`], [`Device::handle_sensor`],
//!   [`Device::handle_sensor_read_error`]: the hardware changed.
//! - [`Device::handle_web_command`]: a `/cm?cmnd=...` request; it returns the HTTP answer.
//!
//! An input first runs the timers due strictly before `now`, so a driver that calls in
//! late still gets every tick at its own instant; timers due at `now` itself run on the
//! next `handle_timeout`.
//!
//! ## After every input
//!
//! 1. Drain [`Device::poll_output`] until it returns `None`, carrying out each output, in
//!    the order given, before taking the next. An output may call for an input at once
//!    (a connect that fails on the spot is answered with `handle_link_failed`); its
//!    outputs join the queue and the same drain takes them.
//! 2. Read [`Device::poll_timeout`] again and wait until that instant or the next input,
//!    whichever comes first; then call `handle_timeout`, or the input's `handle_*`. An
//!    instant at or before now means: call `handle_timeout` now. `None` means the device
//!    has stopped and takes no more input.
//!
//! ## What each output obliges the driver to do
//!
//! - [`Output::Log`]: print the line on the serial console if [`LogLine::serial`] is set
//!   (the device's `SerialLog` decided it); print nothing else there. Other sinks (a
//!   debug trace, a web console) may keep every line.
//! - [`Output::Publish`]: nothing. It reports a publish for observers (its bytes, when
//!   MQTT carried it, come as `Transmit`).
//! - [`Output::Connect`]: close any open link, open a new one to the
//!   [`ConnectRequest`]'s host and port (with TLS if it asks, within its timeout), and
//!   answer with `handle_link_up` once open or `handle_link_failed` if it cannot be. The
//!   device keeps running meanwhile: keep feeding it timeouts and input.
//! - [`Output::Transmit`]: write the bytes on the open link, after all earlier ones. If
//!   the write fails, close the link and call `handle_link_closed`.
//! - [`Output::Close`]: close the link as a TCP close, with no MQTT DISCONNECT (the broker
//!   then publishes the will). Do not report it with `handle_link_closed`: the device
//!   already counts it closed.
//! - [`Output::Relays`]: set the relays (bit n is relay n+1).
//! - [`Output::SaveSettings`]: persist these settings, atomically (a power cut leaves the
//!   old or the new ones); they are what the next boot starts from.
//! - [`Output::Restart`]: the device has stopped. For [`RestartKind::Restart`] drop it
//!   (close its link) and boot a new one from the last saved settings with
//!   [`BootReason::Restart`]; `Halt` and `DeepSleep` stay stopped until power is cycled.
//!
//! A synchronous driver can let [`platform::drive`] do step 1 through the
//! [`platform::Platform`] trait.
//!
//! ## Example
//!
//! A driver on a virtual clock whose network is down: every connect fails at once.
//!
//! ```
//! use tasmota_core::{BootReason, Device, Hardware, Instant, LinkFailure, Output, RestartKind, Settings};
//!
//! let mut flash = Settings { mqtt_host: "broker.lan".into(), ..Settings::default() };
//! let mut now = Instant::from_millis(0);
//! let mut device = Device::boot(Hardware::default(), flash.clone(), BootReason::PowerOn, now);
//! device.handle_serial_line("Restart 1", now);
//! let mut console = Vec::new();
//! loop {
//!     // 1. Drain every output, in order.
//!     while let Some(output) = device.poll_output() {
//!         match output {
//!             Output::Log(line) if line.serial => console.push(line.to_string()),
//!             Output::Log(_) | Output::Publish(_) | Output::Relays(_) => {}
//!             Output::Connect(_request) => device.handle_link_failed(LinkFailure::Tcp, now),
//!             Output::Transmit(_bytes) => unreachable!("no link was ever up"),
//!             Output::Close => {}
//!             Output::SaveSettings(settings) => flash = *settings,
//!             Output::Restart(RestartKind::Restart) => {
//!                 device = Device::boot(Hardware::default(), flash.clone(), BootReason::Restart, now);
//!             }
//!             Output::Restart(_) => {}
//!         }
//!     }
//!     // 2. Wait for the next timeout (a real driver also wakes on input); stop after 60 s.
//!     match device.poll_timeout() {
//!         Some(at) if at.as_millis() <= 60_000 => {
//!             now = at;
//!             device.handle_timeout(now);
//!         }
//!         _ => break,
//!     }
//! }
//! assert!(console.iter().any(|line| line.ends_with("APP: Restarting")));
//! assert_eq!(console.iter().filter(|line| line.contains("HDW: ")).count(), 2);
//! ```

#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod backlog;
mod commands;
mod console;
pub mod device;
pub mod discovery;
mod grammar;
pub mod hardware;
mod identity;
mod json;
pub mod limits;
pub mod mqtt;
pub mod platform;
pub mod rules;
#[cfg(feature = "vectors")]
pub mod selftest;
pub mod sensors;
pub mod setoption;
pub mod settings;
pub mod telemetry;
pub mod time;
mod topic;
pub mod unishox;
#[cfg(feature = "vectors")]
pub mod vectors;
pub mod web;

pub use commands::DEFAULT_FINGERPRINTS;
pub use console::{LogLevel, LogLine};
pub use device::{BootReason, Device, Output, Publish, RestartKind};
pub use hardware::{Chip, Hardware};
pub use identity::{Mac, MacParseError};
pub use mqtt::{ConnectRequest, LinkFailure};
pub use settings::Settings;
pub use time::Instant;
