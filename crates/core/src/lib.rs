//! The sans-IO Tasmota device core.
//!
//! Everything a Tasmota device decides, with no socket, clock or file: the command
//! grammar and Backlog, the settings and their defaults, the topic scheme and the
//! console's exact lines. Drivers (the tokio host driver, the ESP32-C3 firmware) feed it
//! inputs and carry out its [`Output`]s; see [`Device`].
//!
//! `no_std` + `alloc`: it builds for `riscv32imc-unknown-none-elf` and uses no atomics.

#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backlog;
mod commands;
pub mod console;
pub mod device;
pub mod discovery;
pub mod grammar;
pub mod hardware;
pub mod identity;
pub mod json;
pub mod limits;
pub mod mqtt;
pub mod platform;
#[cfg(feature = "vectors")]
pub mod selftest;
pub mod sensors;
pub mod settings;
pub mod telemetry;
pub mod time;
pub mod topic;
#[cfg(feature = "vectors")]
pub mod vectors;
pub mod web;

pub use commands::DEFAULT_FINGERPRINTS;
pub use console::{LogLevel, LogLine};
pub use device::{BootReason, Device, Output, Publish, RestartKind};
pub use hardware::{Chip, Hardware};
pub use identity::Mac;
pub use mqtt::{ConnectRequest, LinkFailure};
pub use settings::Settings;
pub use time::Instant;
