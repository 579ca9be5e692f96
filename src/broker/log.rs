//! The broker's foreground log, worded as Mosquitto 2.0 words it (`connection_messages
//! true`, `log_dest stderr`, `log_timestamp true`): `1700000000: New client connected from
//! ...`. Only `tasmota-sim broker` turns it on; a broker embedded in a scenario or a test is
//! quiet unless its [`super::Config::log`] says otherwise. A password is never part of a
//! line: CONNECT shows the user name only, as Mosquitto does.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// How much the broker prints on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing (`-q`, and every embedded broker by default).
    #[default]
    Off,
    /// Mosquitto's notice lines: connections, refusals, disconnects, and this broker's own
    /// faults, restarts, TLS failures and wills (the foreground default).
    Notice,
    /// Also Mosquitto's debug lines (`-v`): wills at CONNECT, every packet in and out.
    Debug,
}

impl LogLevel {
    /// Writes `line` with Mosquitto's timestamp (seconds since the epoch) if `level` is on.
    pub(crate) fn print(self, level: LogLevel, line: impl FnOnce() -> String) {
        if level == LogLevel::Off || self < level {
            return;
        }
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let _ = writeln!(std::io::stderr().lock(), "{secs}: {}", line());
    }
}
