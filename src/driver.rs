//! The real-time device driver: one core [`Device`] on a tokio clock, its serial console
//! on stdin/stdout, its flash in a [`StateDir`].
//!
//! Console lines print exactly as the firmware prints them. A restart boots a new core
//! from what was last saved (as flash would hold it); SIGINT/SIGTERM is a power loss.
//! The MQTT link is opened, fed and closed as the core asks ([`crate::link`]); a
//! restart or power loss drops it with no DISCONNECT, so the broker sends the will.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use tasmota_core::{BootReason, Device, Hardware, Instant, LinkFailure, Output, RestartKind, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

use crate::link::{BoxStream, Connector};
use crate::state::StateDir;

/// The device's MQTT link as the driver holds it.
enum Link {
    None,
    Opening(JoinHandle<Result<BoxStream, LinkFailure>>),
    Open { reader: ReadHalf<BoxStream>, writer: WriteHalf<BoxStream> },
}

impl Link {
    fn close(&mut self) {
        if let Link::Opening(task) = self {
            task.abort();
        }
        *self = Link::None;
    }
}

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

/// Runs the device until a signal or `--for` ends it.
pub async fn run(opts: Options) -> Result<Ending> {
    let start = tokio::time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    let hw = opts.hardware.clone();
    let (web_tx, mut web_rx) = tokio::sync::mpsc::channel::<crate::http::WebRequest>(16);
    if let Some(listener) = opts.http {
        tokio::spawn(crate::http::serve(listener, web_tx));
    } else {
        drop(web_tx);
    }
    let mut recent: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut flash = opts.settings;
    let mut device = Device::boot(hw.clone(), flash.clone(), BootReason::PowerOn, now());
    let mut stdout = std::io::stdout();
    let mut pending_restart = false;

    for cmd in &opts.commands {
        device.handle_serial_line(cmd, now());
    }

    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = true;
    let deadline = opts.run_for.map(|d| start + d);
    let mut signals = Signals::new()?;
    let mut link = Link::None;
    let mut rbuf = vec![0u8; 2048];

    loop {
        // Carry out what the device asked for.
        while let Some(out) = device.poll_output() {
            match out {
                Output::Log(line) if line.serial => {
                    writeln!(stdout, "{line}")?;
                    if recent.len() == WEB_CONSOLE_LINES {
                        recent.pop_front();
                    }
                    recent.push_back(line.to_string());
                }
                Output::Log(line) => tracing::debug!(target: "tasmota_sim::console", "{line}"),
                Output::Connect(req) => {
                    link.close();
                    tracing::debug!(host = %req.host, port = req.port, tls = req.tls.is_some(), "opening the MQTT link");
                    let connector = opts.connector.clone();
                    link = Link::Opening(tokio::spawn(async move { connector.open(&req).await }));
                }
                Output::Transmit(bytes) => {
                    if let Link::Open { writer, .. } = &mut link {
                        if let Err(e) = writer.write_all(&bytes).await {
                            tracing::debug!(error = %e, "write failed; the link is closed");
                            link.close();
                            device.handle_link_closed(now());
                        }
                    }
                }
                Output::Close => link.close(),
                Output::Publish(p) => {
                    tracing::debug!(topic = %p.topic, retain = p.retain, sent = p.sent, "publish");
                }
                Output::Relays(bits) => tracing::debug!(relays = format!("{bits:b}"), "relays"),
                Output::SaveSettings(settings) => {
                    flash = *settings;
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
            link.close();
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
            event = link_event(&mut link, &mut rbuf) => match event {
                LinkEvent::Opened(Ok(stream)) => {
                    let (reader, writer) = tokio::io::split(stream);
                    link = Link::Open { reader, writer };
                    device.handle_link_up(now());
                }
                LinkEvent::Opened(Err(failure)) => {
                    link = Link::None;
                    device.handle_link_failed(failure, now());
                }
                LinkEvent::Read(Ok(n)) if n > 0 => device.handle_received(&rbuf[..n], now()),
                LinkEvent::Read(_) => {
                    link.close();
                    device.handle_link_closed(now());
                }
            },
            Some((call, reply)) = web_rx.recv() => {
                let answer = web_answer(&mut device, call, &recent, now());
                let _ = reply.send(answer);
            }
            _ = sleep_opt(sleep_until) => device.handle_timeout(now()),
            _ = sleep_opt(deadline) => return Ok(Ending::TimeUp),
            _ = signals.recv() => return Ok(Ending::PowerLoss),
        }
    }
}

/// Answers a web request from the device (`HandleHttpCommand`, the root page).
fn web_answer(
    device: &mut Device,
    call: crate::http::WebCall,
    recent: &std::collections::VecDeque<String>,
    now: Instant,
) -> crate::http::WebAnswer {
    use crate::http::{page, plain, WebAnswer, WebCall};
    if device.is_stopped() {
        return plain(503, "the device is halted");
    }
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
            let lines: Vec<String> = recent.iter().cloned().collect();
            WebAnswer::html(page(&name, &relays, &lines))
        }
    }
}

enum LinkEvent {
    Opened(Result<BoxStream, LinkFailure>),
    Read(std::io::Result<usize>),
}

/// The next thing that happens on the link: opened (or failed), or bytes read (0 or an
/// error when it closed). Never resolves while there is no link.
async fn link_event(link: &mut Link, buf: &mut [u8]) -> LinkEvent {
    match link {
        Link::Opening(task) => LinkEvent::Opened(task.await.unwrap_or(Err(LinkFailure::Tcp))),
        Link::Open { reader, .. } => LinkEvent::Read(reader.read(buf).await),
        Link::None => std::future::pending().await,
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
