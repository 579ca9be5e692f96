//! `tasmota-sim device`: one [`HostDevice`] on the real clock, its serial console on
//! stdin/stdout, its flash in a [`StateDir`], its web server on `--http`.
//!
//! Console lines print exactly as the firmware prints them. A restart boots a new core
//! from what was last saved (as flash would hold it); SIGINT/SIGTERM is a power loss.
//! The MQTT link is opened, fed and closed as the core asks ([`crate::host`]); a
//! restart or power loss drops it with no DISCONNECT, so the broker sends the will.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tasmota_core::{BootReason, Hardware, LogLine, Settings};
use tokio::io::AsyncReadExt;

use crate::host::{Console, HostDevice, HostSetup, LinkEvent};
use crate::link::Connector;
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
    /// What the device is built from (its profile, with its MAC).
    pub hardware: Hardware,
    pub settings: Settings,
    pub state: StateDir,
    pub commands: Vec<String>,
    pub run_for: Option<Duration>,
    pub connector: Connector,
    /// The web server's socket (`--http`), if any.
    pub http: Option<tokio::net::TcpListener>,
}

/// How many console lines the web page shows.
const WEB_CONSOLE_LINES: usize = 50;

/// The terminal: console lines on stdout, the last few kept for the web page.
#[derive(Default)]
pub struct Terminal {
    recent: VecDeque<String>,
    /// Writing to stdout failed (e.g. its reader went away): the run ends with it.
    failed: Option<std::io::Error>,
}

impl Console for Terminal {
    fn line(&mut self, line: &LogLine, _at: Duration) {
        let shown = line.to_string();
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, "{shown}").and_then(|_| stdout.flush()) {
            self.failed.get_or_insert(e);
        }
        if self.recent.len() == WEB_CONSOLE_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(shown);
    }
}

/// Runs the device until a signal or `--for` ends it.
pub async fn run(opts: Options) -> Result<Ending> {
    let start = tokio::time::Instant::now();
    let (web_tx, mut web_rx) = tokio::sync::mpsc::channel::<crate::http::WebRequest>(16);
    if let Some(listener) = opts.http {
        tokio::spawn(crate::http::serve(listener, web_tx));
    } else {
        drop(web_tx);
    }
    let (link_tx, mut link_rx) = tokio::sync::mpsc::unbounded_channel::<LinkEvent>();
    let mut device = HostDevice::new(HostSetup {
        index: 0,
        name: opts.hardware.mac.to_string(),
        hardware: opts.hardware,
        flash: crate::host::Flash::new(&opts.settings),
        store: Some(opts.state),
        console: Terminal::default(),
        network: Arc::new(opts.connector),
        events: Arc::new(move |ev| {
            let _ = link_tx.send(ev);
        }),
        t0: start,
        tls_time: Duration::ZERO,
    });
    device.power_on(BootReason::PowerOn);
    for cmd in &opts.commands {
        let now = device.now();
        if let Some(core) = device.running_mut() {
            core.handle_serial_line(cmd, now);
        }
    }

    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = true;
    let deadline = opts.run_for.map(|d| start + d);
    let mut signals = crate::signal::Shutdown::new()?;

    loop {
        device.carry_out().await;
        if let Some(e) = device.console_mut().failed.take() {
            return Err(e.into());
        }
        let running = device.running_mut().is_some();
        // A halted device asks for no timeout and reads no input.
        let sleep_until = device.poll_timeout();
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open && running => {
                let now = device.now();
                match (n, device.running_mut()) {
                    // EOF does not stop the device: it keeps running until a signal.
                    (Ok(0) | Err(_), _) => stdin_open = false,
                    (Ok(n), Some(core)) => core.handle_serial(&buf[..n], now),
                    (Ok(_), None) => {}
                }
            }
            Some(event) = link_rx.recv() => device.handle_link_event(event),
            Some((call, reply)) = web_rx.recv() => {
                let answer = web_answer(&mut device, call);
                let _ = reply.send(answer);
            }
            _ = sleep_opt(sleep_until) => device.handle_timeout(),
            _ = sleep_opt(deadline) => return Ok(Ending::TimeUp),
            _ = signals.recv() => return Ok(Ending::PowerLoss),
        }
    }
}

/// Answers a web request from the device (`HandleHttpCommand`, the root page).
fn web_answer(host: &mut HostDevice<Terminal>, call: crate::http::WebCall) -> crate::http::WebAnswer {
    use crate::http::{page, plain, WebAnswer, WebCall};
    let now = host.now();
    let lines: Vec<String> = host.console().recent.iter().cloned().collect();
    let Some(device) = host.running_mut() else {
        return plain(503, "the device is halted");
    };
    // WebServer 0: the firmware serves nothing; the socket stays open here and says why.
    if !device.web_enabled() {
        return plain(503, "the web server is off (WebServer 0)");
    }
    match call {
        WebCall::Command { cmnd, credentials, from } => {
            let (user, password) = credentials.pick(|u, p| device.web_authorized(u, p));
            let r = device.handle_web_command(cmnd.as_deref(), user, password, &from, now);
            WebAnswer::json(r.status, r.body)
        }
        WebCall::Page { basic, command, .. } => {
            let (user, password) =
                basic.as_ref().map(|(u, p)| (Some(u.as_str()), Some(p.as_str()))).unwrap_or_default();
            if !device.web_authorized(user, password) {
                return WebAnswer::need_basic_auth();
            }
            if let Some(c) = command {
                // The web console logs what was typed, as the serial console does; then
                // back to the page, so a reload does not run it again.
                if !c.is_empty() {
                    device.handle_serial_line(&c, now);
                }
                return WebAnswer::see_other("/");
            }
            let s = device.settings();
            let name = if s.devicename.is_empty() { s.friendlyname[0].clone() } else { s.devicename.clone() };
            let relays: Vec<bool> = (0..device.hardware().relays).map(|i| device.power() >> i & 1 == 1).collect();
            WebAnswer::html(page(&name, &relays, &lines))
        }
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
