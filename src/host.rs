//! The one host driver: a core [`Device`] with its link, its flash and its console, on
//! tokio's clock.
//!
//! Every way the simulator runs a device goes through [`HostDevice`]: `tasmota-sim
//! device` (real clock, real sockets, console on the terminal, flash in a state
//! directory), the scenario world (tokio's paused clock, in-memory links to embedded
//! brokers, console into a transcript) and the fleet (thousands of devices, a console
//! that counts, links of any kind). What differs between them
//! is only the clock (real, or tokio's paused one), where links go (a [`Network`]) and
//! where console lines go (a [`Console`]).
//!
//! The core's [`Output`](tasmota_core::Output)s are carried out in exactly one place,
//! the core's own [`drive`], into [`HostIo`], this driver's [`Platform`]: it is
//! synchronous, so link work is queued as [`LinkOp`]s and done by
//! [`HostDevice::carry_out`] in the order the core asked (bytes queued before a
//! `Close` or a `Connect` are written to the old link first), as the ESP32-C3 firmware
//! does with its outbox.
//!
//! Links: a `Connect` spawns a task that opens the link (DNS, TCP, TLS, or an in-memory
//! duplex) and, once open, a reader task; both report [`LinkEvent`]s tagged with the
//! device's index and the link's generation, so an event from a link that was closed
//! since (a restart, a newer connect) is dropped. Closing aborts both tasks and drops the
//! writer: a TCP close with no MQTT DISCONNECT, so the broker sends the will.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tasmota_core::platform::{drive, Platform};
use tasmota_core::{
    BootReason, ConnectRequest, Device, Hardware, Instant, LinkFailure, LogLine, Publish, RestartKind, Settings,
};
use tokio::io::{AsyncRead, AsyncWriteExt, WriteHalf};
use tokio::task::JoinHandle;

use crate::link::{BoxStream, Connector};
use crate::state::StateDir;

mod timers;
pub use timers::Timers;

/// The runtime every host driver runs on: one thread, and for the virtual clock tokio's
/// clock paused (it jumps to the next timer whenever every task waits).
pub fn runtime(virtual_clock: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if virtual_clock {
        builder.start_paused(true);
    }
    builder.build()
}

/// How long a link read may be: one TCP segment's worth is plenty for MQTT 3.1.1.
const READ_BUFFER: usize = 4096;

std::thread_local! {
    /// The one read buffer of this thread's links: a link waiting for bytes holds none
    /// (ten thousand idle links would otherwise hold 40 MB of empty buffers).
    static READ_SPACE: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; READ_BUFFER].into_boxed_slice());
}

/// A link being opened, as a future that resolves to the open stream or the firmware's
/// failure code.
pub type Opening = Pin<Box<dyn Future<Output = Result<BoxStream, LinkFailure>> + Send>>;

/// What a device's flash holds: its settings as bytes, in the ESP32-C3 firmware's
/// encoding (postcard, `firmware/esp32c3/src/store.rs`): about 300 bytes for a
/// device near its defaults, against about 1.2 KB for a decoded [`Settings`]. Devices
/// may share one until they save (a fleet's group starts from one).
#[derive(Clone, Debug)]
pub struct Flash(Arc<[u8]>);

impl Flash {
    pub fn new(settings: &Settings) -> Flash {
        // Settings has no map, no untagged enum and no unknown-length sequence: postcard
        // cannot fail on it.
        Flash(postcard::to_allocvec(settings).expect("postcard encodes every Settings").into())
    }

    /// The settings a boot reads.
    pub fn settings(&self) -> Settings {
        postcard::from_bytes(&self.0).expect("Flash holds only what Flash::new wrote")
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where a device's links go: real sockets through a [`Connector`], or the embedded
/// brokers over in-memory duplexes (`scenario::world::EmbeddedNet`).
pub trait Network: Send + Sync {
    /// Opens the link `req` asks for. `peer` names the device in the broker's logs;
    /// `tls_time` is the handshake's CPU time on the device's chip, spent on the virtual
    /// clock only (a real handshake takes what it takes).
    fn open(&self, req: ConnectRequest, peer: String, tls_time: Duration) -> Opening;
}

impl Network for Connector {
    fn open(&self, req: ConnectRequest, _peer: String, _tls_time: Duration) -> Opening {
        let connector = self.clone();
        Box::pin(async move { connector.open(&req).await })
    }
}

/// Where a device's serial console lines go.
pub trait Console {
    /// A line the serial console shows (`SerialLog` already decided), logged `at` after
    /// the host's time zero.
    fn line(&mut self, line: &LogLine, at: Duration);
}

/// Something that happened on a device's link, reported from the link's tasks.
pub struct LinkEvent {
    /// The device's index (as given to [`HostDevice::new`]).
    pub device: usize,
    /// The link's generation: events of an older link are dropped.
    pub gen: u64,
    pub kind: LinkEventKind,
}

pub enum LinkEventKind {
    /// The link opened, or failed with the firmware's code.
    Opened(Result<BoxStream, LinkFailure>),
    /// Bytes arrived.
    Bytes(Vec<u8>),
    /// The peer closed the link, or reading failed.
    Closed,
}

/// Where link events go: the owner's event loop.
pub type EventSink = Arc<dyn Fn(LinkEvent) + Send + Sync>;

/// Faults injected on the device side (the scenario's `device_fault` step).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFaults {
    /// Offer this ALPN instead of the one the core chose (`None`: offer none).
    pub alpn: Option<Option<&'static str>>,
    /// Every DNS lookup fails.
    pub dns_fail: bool,
}

/// Link work the core asked for, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkOp {
    /// Close any link and open this one.
    Connect(ConnectRequest),
    /// Write these bytes on the open link.
    Write(Vec<u8>),
    /// Close the link (no DISCONNECT).
    Close,
}

/// The device's link as the host holds it.
enum Link {
    None,
    Opening { gen: u64, task: JoinHandle<()> },
    Open { gen: u64, writer: WriteHalf<BoxStream>, reader: JoinHandle<()> },
}

impl Link {
    fn close(&mut self) {
        match std::mem::replace(self, Link::None) {
            Link::Opening { task, .. } => task.abort(),
            Link::Open { reader, .. } => reader.abort(),
            Link::None => {}
        }
    }

    fn is_opening(&self, gen: u64) -> bool {
        matches!(self, Link::Opening { gen: g, .. } if *g == gen)
    }

    fn is_open(&self, gen: u64) -> bool {
        matches!(self, Link::Open { gen: g, .. } if *g == gen)
    }
}

/// The host's [`Platform`]: what the core's outputs do here. Console lines and saves
/// happen at once; link work is queued for [`HostDevice::carry_out`].
pub struct HostIo<C> {
    /// The device's name in diagnostics.
    name: String,
    console: C,
    t0: tokio::time::Instant,
    /// What flash holds: the settings of the last save (a restart boots from these).
    flash: Flash,
    /// Where saves are also written (`--state DIR`), with the device's MAC.
    store: Option<(StateDir, tasmota_core::Mac)>,
    ops: Vec<LinkOp>,
    restart: Option<RestartKind>,
}

impl<C: Console> Platform for HostIo<C> {
    fn console(&mut self, line: &LogLine) {
        if line.serial {
            let at = tokio::time::Instant::now().saturating_duration_since(self.t0);
            self.console.line(line, at);
        } else {
            tracing::debug!(target: "tasmota_sim::console", device = %self.name, "{line}");
        }
    }

    fn connect(&mut self, request: &ConnectRequest) {
        self.ops.push(LinkOp::Connect(request.clone()));
    }

    fn transmit(&mut self, bytes: &[u8]) {
        match self.ops.last_mut() {
            Some(LinkOp::Write(queued)) => queued.extend_from_slice(bytes),
            _ => self.ops.push(LinkOp::Write(bytes.to_vec())),
        }
    }

    fn close(&mut self) {
        self.ops.push(LinkOp::Close);
    }

    fn relays(&mut self, bits: u32) {
        tracing::debug!(device = %self.name, relays = format!("{bits:b}"), "relays");
    }

    fn save_settings(&mut self, settings: &Settings) {
        self.flash = Flash::new(settings);
        if let Some((store, mac)) = &self.store {
            if let Err(e) = store.save(mac, settings) {
                eprintln!("tasmota-sim: {e}");
            }
        }
    }

    fn restart(&mut self, kind: RestartKind) {
        self.restart = Some(kind);
    }

    fn published(&mut self, p: &Publish) {
        tracing::debug!(device = %self.name, topic = %p.topic, retain = p.retain, sent = p.sent, "publish");
    }
}

/// What a [`HostDevice`] is built from.
pub struct HostSetup<C> {
    /// The device's index among its owner's devices (link events carry it).
    pub index: usize,
    /// Its name in diagnostics and in the broker's logs (`device <name>`).
    pub name: String,
    pub hardware: Hardware,
    /// What flash holds at power-on (devices may share one [`Flash`]; a save gives the
    /// device its own).
    pub flash: Flash,
    /// Persist saves here too (`tasmota-sim device --state`).
    pub store: Option<StateDir>,
    pub console: C,
    pub network: Arc<dyn Network>,
    pub events: EventSink,
    /// Time zero of the host's clock (tokio's, paused or not).
    pub t0: tokio::time::Instant,
    /// The TLS handshake's time on the virtual clock (zero in real time).
    pub tls_time: Duration,
}

/// One simulated device on the host: the core, its link, its flash and its console.
pub struct HostDevice<C> {
    index: usize,
    hw: Hardware,
    core: Option<Device>,
    io: HostIo<C>,
    link: Link,
    gen: u64,
    network: Arc<dyn Network>,
    events: EventSink,
    tls_time: Duration,
    /// Device-side faults applied to every connect.
    pub faults: DeviceFaults,
}

impl<C: Console> HostDevice<C> {
    /// A device with its power off; [`HostDevice::power_on`] boots it.
    pub fn new(setup: HostSetup<C>) -> Self {
        let store = setup.store.map(|s| (s, setup.hardware.mac));
        HostDevice {
            index: setup.index,
            hw: setup.hardware,
            core: None,
            io: HostIo {
                name: setup.name,
                console: setup.console,
                t0: setup.t0,
                flash: setup.flash,
                store,
                ops: Vec::new(),
                restart: None,
            },
            link: Link::None,
            gen: 0,
            network: setup.network,
            events: setup.events,
            tls_time: setup.tls_time,
            faults: DeviceFaults::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.io.name
    }

    /// The console sink.
    pub fn console(&self) -> &C {
        &self.io.console
    }

    pub fn console_mut(&mut self) -> &mut C {
        &mut self.io.console
    }

    /// What flash holds: the settings of the last save.
    pub fn flash(&self) -> Settings {
        self.io.flash.settings()
    }

    /// The device's time now: milliseconds since the host's time zero.
    pub fn now(&self) -> Instant {
        let since = tokio::time::Instant::now().saturating_duration_since(self.io.t0);
        Instant::from_millis(since.as_millis() as u64)
    }

    /// Applies power: boots a new core from flash (any old link is dropped).
    pub fn power_on(&mut self, reason: BootReason) {
        self.link.close();
        self.io.ops.clear();
        self.io.restart = None;
        let now = self.now();
        self.core = Some(Device::boot(self.hw.clone(), self.io.flash.settings(), reason, now));
    }

    /// Removes power: the link drops with no DISCONNECT (the broker sends the will).
    pub fn power_off(&mut self) {
        self.link.close();
        self.io.ops.clear();
        self.core = None;
    }

    /// The core, powered or not, running or halted.
    pub fn core(&self) -> Option<&Device> {
        self.core.as_ref()
    }

    /// The core while it runs (powered and not halted), for an input.
    pub fn running_mut(&mut self) -> Option<&mut Device> {
        self.core.as_mut().filter(|c| !c.is_stopped())
    }

    /// When the core next needs [`HostDevice::handle_timeout`], on tokio's clock.
    pub fn poll_timeout(&self) -> Option<tokio::time::Instant> {
        let at = self.core.as_ref()?.poll_timeout()?;
        Some(self.io.t0 + Duration::from_millis(at.as_millis()))
    }

    /// Runs the core's timers that are due now.
    pub fn handle_timeout(&mut self) {
        let now = self.now();
        if let Some(core) = &mut self.core {
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
        }
    }

    /// Feeds a link event to the core (events of a link closed since are dropped).
    pub fn handle_link_event(&mut self, event: LinkEvent) {
        let now = self.now();
        let gen = event.gen;
        match event.kind {
            LinkEventKind::Opened(result) => {
                if !self.link.is_opening(gen) {
                    return;
                }
                let Some(core) = &mut self.core else { return };
                match result {
                    Ok(stream) => {
                        let (reader, writer) = tokio::io::split(stream);
                        let reader = tokio::spawn(read_link(reader, self.index, gen, self.events.clone()));
                        self.link = Link::Open { gen, writer, reader };
                        core.handle_link_up(now);
                    }
                    Err(failure) => {
                        self.link = Link::None;
                        core.handle_link_failed(failure, now);
                    }
                }
            }
            LinkEventKind::Bytes(bytes) => {
                if let (true, Some(core)) = (self.link.is_open(gen), &mut self.core) {
                    core.handle_received(&bytes, now);
                }
            }
            LinkEventKind::Closed => {
                if self.link.is_open(gen) {
                    self.link_lost();
                }
            }
        }
    }

    /// Carries out everything the core has asked for, until it asks nothing more: its
    /// outputs through [`drive`], then the link work in order, then a reboot if it
    /// restarted (link work and restarts come only from outputs, so a drain that finds
    /// none is the end).
    pub async fn carry_out(&mut self) {
        while let Some(core) = &mut self.core {
            if drive(core, &mut self.io) == 0 {
                break;
            }
            for op in std::mem::take(&mut self.io.ops) {
                self.do_link_op(op).await;
            }
            match self.io.restart.take() {
                // The old boot is gone: a new core starts from flash.
                Some(RestartKind::Restart) => self.power_on(BootReason::Restart),
                Some(RestartKind::Halt | RestartKind::DeepSleep) => {
                    self.link.close();
                    tracing::info!(device = %self.io.name, "the device is halted or asleep until power is cycled");
                }
                None => {}
            }
        }
    }

    async fn do_link_op(&mut self, op: LinkOp) {
        match op {
            LinkOp::Connect(mut req) => {
                self.link.close();
                self.gen += 1;
                let gen = self.gen;
                if let (Some(alpn), Some(tls)) = (self.faults.alpn, &mut req.tls) {
                    tls.alpn = alpn;
                }
                tracing::debug!(device = %self.io.name, host = %req.host, port = req.port, tls = req.tls.is_some(), "opening the MQTT link");
                let opening: Opening = if self.faults.dns_fail {
                    Box::pin(async { Err(LinkFailure::Dns) })
                } else {
                    self.network.open(req, format!("device {}", self.io.name), self.tls_time)
                };
                let (device, events) = (self.index, self.events.clone());
                let task = tokio::spawn(async move {
                    let result = opening.await;
                    events(LinkEvent { device, gen, kind: LinkEventKind::Opened(result) });
                });
                self.link = Link::Opening { gen, task };
            }
            LinkOp::Write(bytes) => {
                if let Link::Open { writer, .. } = &mut self.link {
                    // A TLS stream may keep records it could not send yet: flush, or a
                    // PINGREQ can wait there until the broker's keepalive runs out.
                    let written = async {
                        writer.write_all(&bytes).await?;
                        writer.flush().await
                    }
                    .await;
                    if let Err(e) = written {
                        tracing::debug!(device = %self.io.name, error = %e, "write failed; the link is closed");
                        self.link_lost();
                    }
                }
            }
            LinkOp::Close => self.link.close(),
        }
    }

    /// The link ended under the device: it learns it as the firmware does.
    fn link_lost(&mut self) {
        self.link.close();
        let now = self.now();
        if let Some(core) = &mut self.core {
            core.handle_link_closed(now);
        }
    }
}

impl<C> Drop for HostDevice<C> {
    fn drop(&mut self) {
        self.link.close();
    }
}

/// Reads a link until it ends, reporting what arrives. A poll borrows this thread's
/// read buffer only while the link has bytes, and copies out what it read.
async fn read_link(mut reader: tokio::io::ReadHalf<BoxStream>, device: usize, gen: u64, events: EventSink) {
    use std::task::Poll;
    loop {
        let read = std::future::poll_fn(|cx| {
            READ_SPACE.with_borrow_mut(|space| {
                let mut buf = tokio::io::ReadBuf::new(space);
                match Pin::new(&mut reader).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().to_vec())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
        })
        .await;
        match read {
            Ok(bytes) if !bytes.is_empty() => events(LinkEvent { device, gen, kind: LinkEventKind::Bytes(bytes) }),
            _ => {
                events(LinkEvent { device, gen, kind: LinkEventKind::Closed });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines(Vec<String>);

    impl Console for Lines {
        fn line(&mut self, line: &LogLine, _at: Duration) {
            self.0.push(line.to_string());
        }
    }

    fn io() -> HostIo<Lines> {
        HostIo {
            name: "d".into(),
            console: Lines::default(),
            t0: tokio::time::Instant::now(),
            flash: Flash::new(&Settings::default()),
            store: None,
            ops: Vec::new(),
            restart: None,
        }
    }

    #[tokio::test]
    async fn link_work_is_queued_in_the_order_the_core_asked() {
        let mut io = io();
        let req = ConnectRequest { host: "h".into(), port: 1, tls: None, timeout_ms: 1 };
        io.transmit(b"ab");
        io.transmit(b"c");
        io.close();
        io.connect(&req);
        io.transmit(b"d");
        assert_eq!(
            io.ops,
            [LinkOp::Write(b"abc".to_vec()), LinkOp::Close, LinkOp::Connect(req), LinkOp::Write(b"d".to_vec())]
        );
    }

    #[test]
    fn flash_gives_back_the_settings_it_was_given() {
        let mut s = Settings {
            mqtt_host: "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com".into(),
            mqtt_port: 443,
            mqtt_pwd: "YknLuSd2tBY2HodwI/7RqA==".into(),
            tele_period: 10,
            bootcount: 7,
            ..Default::default()
        };
        s.set_option(103, 1);
        // No rules: one byte on flash (postcard's None).
        let without_rules = Flash::new(&s).len();
        s.rules_mut().rules[0] = "ON System#Boot DO Power 1 ENDON".into();
        s.rules_mut().enabled = 1;
        s.rules_mut().mems[15] = "22".into();
        assert!(Flash::new(&s).len() > without_rules);
        let flash = Flash::new(&s);
        assert_eq!(flash.settings(), s);
        assert_ne!(flash.settings(), Settings::default());
        // Smaller than the decoded settings it stands for.
        assert!(flash.len() < std::mem::size_of::<Settings>(), "{} bytes", flash.len());
    }

    #[tokio::test]
    async fn only_lines_serial_log_shows_reach_the_console() {
        let mut io = io();
        let shown = LogLine { uptime_ms: 0, level: tasmota_core::LogLevel::Info, text: "A".into(), serial: true };
        let hidden = LogLine { serial: false, text: "B".into(), ..shown.clone() };
        io.console(&shown);
        io.console(&hidden);
        assert_eq!(io.console.0, ["00:00:00.000 A"]);
    }
}
