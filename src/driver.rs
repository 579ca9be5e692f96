//! The real-time device driver: one core [`Device`] on a tokio clock, its serial console
//! on stdin/stdout, its flash in a [`StateDir`].
//!
//! Console lines print exactly as the firmware prints them. A restart boots a new core
//! from what was last saved (as flash would hold it); SIGINT/SIGTERM is a power loss.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use tasmota_core::{BootReason, Device, Hardware, Instant, Mac, Output, RestartKind, Settings};
use tokio::io::AsyncReadExt;

use crate::state::StateDir;

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// SIGINT or SIGTERM: power removed.
    PowerLoss,
    /// `--for` elapsed.
    TimeUp,
}

pub struct Options {
    pub mac: Mac,
    pub settings: Settings,
    pub state: StateDir,
    pub commands: Vec<String>,
    pub run_for: Option<Duration>,
}

/// Runs the device until a signal or `--for` ends it.
pub async fn run(opts: Options) -> Result<Ending> {
    let start = tokio::time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    let hw = Hardware { mac: opts.mac, ..Hardware::default() };
    let mut flash = opts.settings;
    let mut device = Device::boot(hw.clone(), flash.clone(), BootReason::PowerOn, now());
    let mut stdout = std::io::stdout();
    let mut pending_restart = false;

    for cmd in &opts.commands {
        device.type_line(cmd, now());
    }

    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = true;
    let deadline = opts.run_for.map(|d| start + d);
    let mut signals = Signals::new()?;

    loop {
        // Carry out what the device asked for.
        while let Some(out) = device.poll_output() {
            match out {
                Output::Log(line) => {
                    writeln!(stdout, "{line}")?;
                }
                Output::Publish(p) => {
                    tracing::debug!(topic = %p.topic, retain = p.retain, sent = p.sent, "publish");
                }
                Output::Relays(bits) => tracing::debug!(relays = format!("{bits:b}"), "relays"),
                Output::SaveSettings => {
                    flash = device.settings().clone();
                    if let Err(e) = opts.state.save(&hw.mac, &flash) {
                        eprintln!("tasmota-sim: {e}");
                    }
                }
                Output::Restart(RestartKind::Restart) => pending_restart = true,
                Output::Restart(kind) => tracing::info!(?kind, "the device is halted; Ctrl-C powers it off"),
            }
        }
        stdout.flush()?;
        if pending_restart {
            pending_restart = false;
            device = Device::boot(hw.clone(), flash.clone(), BootReason::Restart, now());
            continue;
        }

        // A halted device asks for no timeout and reads no input.
        let sleep_until = device.poll_timeout().map(|t| start + Duration::from_millis(t.as_millis()));
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open && !device.is_stopped() => {
                match n {
                    // EOF does not stop the device: it keeps running until a signal.
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => device.handle_serial(&buf[..n], now()),
                }
            }
            _ = sleep_opt(sleep_until) => device.handle_timeout(now()),
            _ = sleep_opt(deadline) => return Ok(Ending::TimeUp),
            _ = signals.recv() => return Ok(Ending::PowerLoss),
        }
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGINT and SIGTERM.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
