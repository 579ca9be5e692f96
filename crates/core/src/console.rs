//! The device console: log lines in Tasmota's format and serial line assembly.
//!
//! A console line is `HH:MM:SS.mmm <TAG>: <text>` (spec §8). Before NTP the RTC counts
//! from 00:00:00 at boot, so the time shown is the device's uptime, wrapping every 24 h.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Tasmota's log levels (`LogLevel`, `SerialLog`, `WebLog`, `MqttLog`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LogLevel {
    None = 0,
    Error = 1,
    Info = 2,
    Debug = 3,
    DebugMore = 4,
}

/// One line the firmware logs: what the serial console and the web console show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Device uptime when the line was logged, in milliseconds.
    pub uptime_ms: u64,
    pub level: LogLevel,
    /// The text after the timestamp, tag included (`MQT: Connected`).
    pub text: String,
    /// The serial console shows it: `level <= SerialLog` (`AddLog` compares with
    /// `TasmotaGlobal.seriallog_level`). Drivers print exactly these lines and filter
    /// nothing themselves, so `SerialLog 0` silences the console as on the device.
    pub serial: bool,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_timestamp(f, self.uptime_ms)?;
        f.write_str(" ")?;
        f.write_str(&self.text)
    }
}

/// Writes `HH:MM:SS.mmm` for a time of day given in milliseconds (wraps at 24 h).
pub fn write_timestamp(f: &mut impl fmt::Write, ms: u64) -> fmt::Result {
    let day_ms = ms % 86_400_000;
    let h = day_ms / 3_600_000;
    let m = (day_ms / 60_000) % 60;
    let s = (day_ms / 1000) % 60;
    let milli = day_ms % 1000;
    write!(f, "{h:02}:{m:02}:{s:02}.{milli:03}")
}

/// `INPUT_BUFFER_SIZE`: the serial line buffer holds at most 799 characters.
pub const INPUT_BUFFER_SIZE: usize = 800;

/// What a byte typed on the serial console completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialEvent {
    /// A line ended with `\n`; it is logged as `CMD: <line>` and executed.
    Line(String),
    /// A line longer than the buffer ended; it is logged as `CMD: Serial buffer overrun`
    /// and not executed.
    Overrun,
}

/// Assembles serial console bytes into lines exactly as `SerialInput()` does on an
/// ESP8266: printable ASCII is collected, other control bytes are dropped, a byte above
/// 127 discards what was collected so far, and a line that outgrows the buffer is
/// reported as an overrun when its newline arrives.
#[derive(Clone, Debug, Default)]
pub struct SerialInput {
    buf: Vec<u8>,
    overrun: bool,
}

impl SerialInput {
    /// Feeds one byte; returns the event it completes, if any.
    pub fn push(&mut self, byte: u8) -> Option<SerialEvent> {
        if self.buf.is_empty() {
            self.overrun = false;
        }
        if byte > 127 {
            self.buf = Vec::new();
            return None;
        }
        if (0x20..0x7f).contains(&byte) {
            if self.buf.len() < INPUT_BUFFER_SIZE - 1 {
                self.buf.push(byte);
            } else {
                self.overrun = true;
            }
            return None;
        }
        if byte == b'\n' {
            let overrun = self.overrun;
            let line: Vec<u8> = core::mem::take(&mut self.buf);
            self.overrun = false;
            if overrun {
                return Some(SerialEvent::Overrun);
            }
            // Only printable ASCII was collected, so this cannot fail.
            let text = String::from_utf8(line).unwrap_or_default();
            return Some(SerialEvent::Line(text));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn feed(input: &[u8]) -> Vec<SerialEvent> {
        let mut s = SerialInput::default();
        input.iter().filter_map(|b| s.push(*b)).collect()
    }

    #[test]
    fn timestamp_format_wraps_at_a_day() {
        let l = LogLine { uptime_ms: 3_745, level: LogLevel::Info, text: "MQT: Connected".to_string(), serial: true };
        assert_eq!(l.to_string(), "00:00:03.745 MQT: Connected");
        let l = LogLine { uptime_ms: 86_400_000 + 41_324_100, level: LogLevel::Info, text: "X".into(), serial: true };
        assert_eq!(l.to_string(), "11:28:44.100 X");
    }

    #[test]
    fn serial_drops_control_bytes_and_carriage_returns() {
        assert_eq!(feed(b"Power\t ON\r\n"), [SerialEvent::Line("Power ON".into())]);
    }

    #[test]
    fn serial_high_byte_discards_what_came_before() {
        assert_eq!(feed(b"abc\xffPower\n"), [SerialEvent::Line("Power".into())]);
    }

    #[test]
    fn serial_overrun_at_799_characters() {
        let mut line = [b'a'; 799].to_vec();
        line.push(b'\n');
        assert_eq!(feed(&line), [SerialEvent::Line("a".repeat(799))]);
        let mut line = [b'a'; 800].to_vec();
        line.push(b'\n');
        line.extend_from_slice(b"State\n");
        assert_eq!(feed(&line), [SerialEvent::Overrun, SerialEvent::Line("State".into())]);
    }
}
