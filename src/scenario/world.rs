//! The world a scenario runs in: its devices (core [`Device`]s), its brokers (embedded,
//! over in-memory links, or one real broker over the network) and its operators, driven
//! by one event loop on tokio's clock.
//!
//! On the virtual clock the runtime's time is paused: whenever every task waits, tokio
//! jumps to the next timer, so a day of keepalives and telemetry passes in milliseconds
//! and the same scenario gives the same transcript on every run. Nothing here reads the
//! wall clock.

use std::sync::Arc;
use std::time::Duration;

use tasmota_core::mqtt::tls::TlsRequest;
use tasmota_core::{BootReason, ConnectRequest, Device, Hardware, LinkFailure, Output, RestartKind, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::file::{BrokerSpec, DeviceFault, Scenario};
use super::operator::{self, OperatorEvent, Received};
use crate::broker::{self, Broker, LinkInfo, TlsInfo, TlsListen};
use crate::link::{BoxStream, Connector};

/// A console line with the world time it was printed at.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    pub at_ms: u64,
    /// As the console shows it: `HH:MM:SS.mmm TEXT` (device uptime).
    pub line: String,
    /// Without the timestamp.
    pub text: String,
}

/// A message an operator received, with the world time.
#[derive(Debug, Clone)]
pub struct Message {
    pub at_ms: u64,
    pub msg: Received,
}

/// How devices reach brokers.
#[derive(Clone)]
pub enum Net {
    /// Embedded brokers over in-memory links, addressed by the host and ports in the file.
    Embedded(Arc<EmbeddedNet>),
    /// One real broker: every device link goes through this connector (whose
    /// `--connect-to` sends the scenario's broker host there).
    External { connector: Connector, url: super::BrokerUrl },
}

pub struct EmbeddedNet {
    pub brokers: Vec<EmbeddedBroker>,
    /// The device side of TLS: trusts the embedded brokers' CA.
    pub client: Connector,
}

pub struct EmbeddedBroker {
    pub spec: BrokerSpec,
    pub broker: Broker,
    pub tls: Option<TlsListen>,
}

/// Everything that reaches the event loop from other tasks.
enum Event {
    Opened { device: usize, gen: u64, result: Result<BoxStream, LinkFailure> },
    Bytes { device: usize, gen: u64, bytes: Vec<u8> },
    Closed { device: usize, gen: u64 },
    Operator { operator: usize, event: OperatorEvent },
}

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
}

/// One simulated device and its flash.
pub struct SimDevice {
    pub name: String,
    hw: Hardware,
    pub core: Option<Device>,
    pub flash: Settings,
    link: Link,
    gen: u64,
    fault_alpn: Option<Option<&'static str>>,
    fault_dns: bool,
    tls_handshake: Duration,
    pub console: Vec<ConsoleLine>,
}

pub struct OperatorSlot {
    pub name: String,
    pub commands: Option<mpsc::UnboundedSender<operator::Command>>,
    pub ready: bool,
    pub down: Option<String>,
    pub received: Vec<Message>,
    /// What went wrong for the operator (a lost link, a refused subscription) that the
    /// runner has not yet taken.
    pub troubles: Vec<String>,
    task: Option<JoinHandle<()>>,
}

pub struct World {
    pub net: Net,
    pub devices: Vec<SimDevice>,
    pub operators: Vec<OperatorSlot>,
    /// Virtual (or real) time zero.
    t0: Instant,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    /// Whether the clock is virtual (TLS handshakes take the device's modelled time).
    virtual_clock: bool,
    /// Prefix transcript lines with the device name.
    named_lines: bool,
}

impl World {
    /// Builds the world and connects its operators (waiting until they are subscribed).
    /// The devices are booted at time zero by [`World::boot_devices`].
    pub async fn new(s: &Scenario, net: Net, virtual_clock: bool) -> Result<World, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let devices = s
            .devices
            .iter()
            .map(|d| SimDevice {
                name: d.name.clone(),
                hw: d.hardware.clone(),
                core: None,
                flash: d.settings.clone(),
                link: Link::None,
                gen: 0,
                fault_alpn: None,
                fault_dns: false,
                tls_handshake: d.tls_handshake,
                console: Vec::new(),
            })
            .collect();
        let mut world = World {
            net,
            devices,
            operators: Vec::new(),
            t0: Instant::now(),
            tx,
            rx,
            virtual_clock,
            named_lines: s.devices.len() > 1,
        };
        for (i, spec) in s.operators.iter().enumerate() {
            let (ctx, mut crx) = mpsc::unbounded_channel();
            let tx = world.tx.clone();
            let net = world.net.clone();
            let name = spec.name.clone();
            let spec = spec.clone();
            // Like mosquitto_sub, the operator connects again (a second later) when its
            // link ends, e.g. across a broker restart.
            let task = tokio::spawn(async move {
                let events = move |event| {
                    let _ = tx.send(Event::Operator { operator: i, event });
                };
                loop {
                    match operator_link(&net, spec.broker, &spec.name).await {
                        Ok(stream) => {
                            let (id, login, filters) =
                                (spec.client_id.clone(), spec.login.clone(), spec.subscribe.clone());
                            operator::run(stream, id, login, filters, &mut crx, &events).await;
                            if crx.is_closed() {
                                return;
                            }
                        }
                        Err(e) => events(OperatorEvent::Down(e)),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            world.operators.push(OperatorSlot {
                name,
                commands: Some(ctx),
                ready: false,
                down: None,
                received: Vec::new(),
                troubles: Vec::new(),
                task: Some(task),
            });
        }
        let ready =
            world.run_until(world.now_plus(Duration::from_secs(10)), |w| w.operators.iter().all(|o| o.ready)).await;
        if !ready {
            let why: Vec<String> = world
                .operators
                .iter()
                .filter(|o| !o.ready)
                .map(|o| format!("operator '{}': {}", o.name, o.down.as_deref().unwrap_or("no answer within 10 s")))
                .collect();
            return Err(why.join("; "));
        }
        Ok(world)
    }

    /// Powers on every device.
    pub fn boot_devices(&mut self) {
        for i in 0..self.devices.len() {
            self.power_on(i, BootReason::PowerOn);
        }
    }

    /// Milliseconds since time zero.
    pub fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.t0).as_millis() as u64
    }

    pub fn now_plus(&self, d: Duration) -> Instant {
        Instant::now() + d
    }

    fn core_now(&self) -> tasmota_core::Instant {
        tasmota_core::Instant::from_millis(self.now_ms())
    }

    // ---- device power ------------------------------------------------------------------

    pub fn power_on(&mut self, i: usize, reason: BootReason) {
        let now = self.core_now();
        let d = &mut self.devices[i];
        d.link.close();
        d.core = Some(Device::boot(d.hw.clone(), d.flash.clone(), reason, now));
    }

    /// Power removed: the link drops with no DISCONNECT (the broker sends the will).
    pub fn power_off(&mut self, i: usize) {
        let d = &mut self.devices[i];
        d.link.close();
        d.core = None;
    }

    pub fn set_device_fault(&mut self, i: usize, fault: &DeviceFault) {
        let d = &mut self.devices[i];
        match fault {
            DeviceFault::Alpn(p) => d.fault_alpn = Some(*p),
            DeviceFault::DnsFail => d.fault_dns = true,
            DeviceFault::Clear => {
                d.fault_alpn = None;
                d.fault_dns = false;
            }
        }
    }

    /// The running core of device `i`, or why there is none.
    pub fn core_mut(&mut self, i: usize) -> Result<(&mut Device, tasmota_core::Instant), String> {
        let now = self.core_now();
        let d = &mut self.devices[i];
        match &mut d.core {
            Some(core) if !core.is_stopped() => Ok((core, now)),
            _ => Err(format!("device '{}' is off or halted", d.name)),
        }
    }

    pub fn operator_publish(&mut self, i: usize, cmd: operator::Command) -> Result<(), String> {
        // Sent as soon as the operator is connected (at once, unless it is reconnecting).
        let op = &self.operators[i];
        match &op.commands {
            Some(tx) => tx.send(cmd).map_err(|_| format!("operator '{}' has stopped", op.name)),
            None => Err(format!("operator '{}' has stopped", op.name)),
        }
    }

    // ---- the event loop ----------------------------------------------------------------

    /// Runs the world until `deadline` or until `done` holds (checked after every event);
    /// returns whether `done` held.
    pub async fn run_until(&mut self, deadline: Instant, mut done: impl FnMut(&World) -> bool) -> bool {
        loop {
            self.pump().await;
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let timer = self.next_device_timer().map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                biased;
                ev = self.rx.recv() => {
                    if let Some(ev) = ev {
                        self.on_event(ev);
                    }
                }
                _ = tokio::time::sleep_until(timer) => self.on_timers(),
            }
        }
    }

    /// Lets what is already under way at this instant arrive (bytes between the tasks,
    /// messages on their way to an operator) without letting time pass, so that an
    /// action's read positions start after everything sent before it.
    pub async fn settle(&mut self) {
        loop {
            self.pump().await;
            // Each round lets every ready task (brokers, links, operators) run a little.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let mut any = false;
            while let Ok(ev) = self.rx.try_recv() {
                self.on_event(ev);
                any = true;
            }
            if !any {
                return;
            }
        }
    }

    fn next_device_timer(&self) -> Option<Instant> {
        self.devices
            .iter()
            .filter_map(|d| d.core.as_ref()?.poll_timeout())
            .min()
            .map(|t| self.t0 + Duration::from_millis(t.as_millis()))
    }

    fn on_timers(&mut self) {
        let now = self.core_now();
        for d in &mut self.devices {
            if let Some(core) = &mut d.core {
                if core.poll_timeout().is_some_and(|t| t <= now) {
                    core.handle_timeout(now);
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = self.core_now();
        let at_ms = self.now_ms();
        match ev {
            Event::Opened { device, gen, result } => {
                let d = &mut self.devices[device];
                if !matches!(d.link, Link::Opening { gen: g, .. } if g == gen) {
                    return;
                }
                let Some(core) = &mut d.core else { return };
                match result {
                    Ok(stream) => {
                        let (mut reader, writer) = tokio::io::split(stream);
                        let tx = self.tx.clone();
                        let task = tokio::spawn(async move {
                            let mut buf = vec![0u8; 4096];
                            loop {
                                match reader.read(&mut buf).await {
                                    Ok(n) if n > 0 => {
                                        let _ = tx.send(Event::Bytes { device, gen, bytes: buf[..n].to_vec() });
                                    }
                                    _ => {
                                        let _ = tx.send(Event::Closed { device, gen });
                                        return;
                                    }
                                }
                            }
                        });
                        d.link = Link::Open { gen, writer, reader: task };
                        core.handle_link_up(now);
                    }
                    Err(failure) => {
                        d.link = Link::None;
                        core.handle_link_failed(failure, now);
                    }
                }
            }
            Event::Bytes { device, gen, bytes } => {
                let d = &mut self.devices[device];
                if let (Link::Open { gen: g, .. }, Some(core)) = (&d.link, &mut d.core) {
                    if *g == gen {
                        core.handle_received(&bytes, now);
                    }
                }
            }
            Event::Closed { device, gen } => {
                let d = &mut self.devices[device];
                if matches!(d.link, Link::Open { gen: g, .. } if g == gen) {
                    d.link.close();
                    if let Some(core) = &mut d.core {
                        core.handle_link_closed(now);
                    }
                }
            }
            Event::Operator { operator, event } => {
                let op = &mut self.operators[operator];
                match event {
                    OperatorEvent::Ready => {
                        op.ready = true;
                        op.down = None;
                    }
                    OperatorEvent::Message(msg) => op.received.push(Message { at_ms, msg }),
                    OperatorEvent::Refused(what) => op.troubles.push(what),
                    OperatorEvent::Down(why) => {
                        tracing::debug!(operator = %op.name, %why, "operator link ended");
                        if op.ready {
                            op.troubles.push(format!("lost its link: {why}"));
                        }
                        op.ready = false;
                        op.down = Some(why);
                    }
                }
            }
        }
    }

    /// Carries out every output the devices have, until none has more.
    async fn pump(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.devices.len() {
                while let Some(out) = self.devices[i].core.as_mut().and_then(Device::poll_output) {
                    any = true;
                    self.carry_out(i, out).await;
                }
            }
            if !any {
                return;
            }
        }
    }

    async fn carry_out(&mut self, i: usize, out: Output) {
        let at_ms = self.now_ms();
        let now = self.core_now();
        let named = self.named_lines;
        let d = &mut self.devices[i];
        match out {
            Output::Log(l) if l.serial => {
                let shown = l.to_string();
                let line = if named { format!("[{}] {shown}", d.name) } else { shown };
                d.console.push(ConsoleLine { at_ms, line, text: l.text });
            }
            Output::Log(l) => tracing::debug!(target: "tasmota_sim::console", device = %d.name, "{l}"),
            Output::Connect(req) => {
                d.link.close();
                d.gen += 1;
                let gen = d.gen;
                let tx = self.tx.clone();
                let open = self.opener(i, req);
                let task = tokio::spawn(async move {
                    let result = open.await;
                    let _ = tx.send(Event::Opened { device: i, gen, result });
                });
                self.devices[i].link = Link::Opening { gen, task };
            }
            Output::Transmit(bytes) => {
                if let Link::Open { writer, .. } = &mut d.link {
                    if writer.write_all(&bytes).await.is_err() {
                        d.link.close();
                        if let Some(core) = &mut d.core {
                            core.handle_link_closed(now);
                        }
                    }
                }
            }
            Output::Close => d.link.close(),
            Output::Publish(_) | Output::Relays(_) => {}
            Output::SaveSettings(settings) => d.flash = settings,
            Output::Restart(RestartKind::Restart) => {
                // What is left of the old boot's output is gone with it.
                self.power_on(i, BootReason::Restart);
            }
            Output::Restart(_) => d.link.close(),
        }
    }

    /// The future that opens device `i`'s link as `req` asks.
    fn opener(
        &self,
        i: usize,
        mut req: ConnectRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<BoxStream, LinkFailure>> + Send>> {
        let d = &self.devices[i];
        if let (Some(alpn), Some(tls)) = (d.fault_alpn, &mut req.tls) {
            tls.alpn = alpn;
        }
        if d.fault_dns {
            return Box::pin(async { Err(LinkFailure::Dns) });
        }
        let peer = format!("device {}", d.name);
        match &self.net {
            Net::External { connector, .. } => {
                let connector = connector.clone();
                Box::pin(async move { connector.open(&req).await })
            }
            Net::Embedded(net) => {
                let net = net.clone();
                let delay = if self.virtual_clock { d.tls_handshake } else { Duration::ZERO };
                Box::pin(async move { net.open(&req, peer, delay).await })
            }
        }
    }
}

/// A fresh link for an operator to its broker.
async fn operator_link(net: &Net, broker: usize, name: &str) -> Result<BoxStream, String> {
    match net {
        Net::Embedded(net) => {
            let b = &net.brokers[broker];
            let (client, server) = tokio::io::duplex(1 << 16);
            // On AWS IoT the console's MQTT client is signed in with IAM: here a link
            // that presents a verified client certificate on the ALPN that allows it.
            let tls = (b.spec.profile == broker::ProfileName::AwsIot).then(|| TlsInfo {
                sni: Some(b.spec.host.clone()),
                alpn: Some(b"x-amzn-mqtt-ca".to_vec()),
                client_cert: true,
                mtls_listener: false,
            });
            let link = LinkInfo { peer: format!("operator {name}"), tls };
            let broker = b.broker.clone();
            tokio::spawn(async move { broker.serve(server, link).await });
            Ok(Box::pin(client))
        }
        Net::External { connector, url } => {
            let tls = url.tls.then(|| TlsRequest {
                server_name: url.host.clone(),
                alpn: None,
                validation: tasmota_core::mqtt::tls::Validation::TrustAnchors,
            });
            let req = ConnectRequest { host: url.host.clone(), port: url.port, tls, timeout_ms: 10_000 };
            connector.open(&req).await.map_err(|f| format!("operator '{name}' cannot reach {url}: {f:?}"))
        }
    }
}

impl EmbeddedNet {
    /// An in-memory link to the embedded broker at `req.host:req.port`: an unknown name
    /// fails as DNS does, an unknown address or port as a refused TCP connect.
    async fn open(&self, req: &ConnectRequest, peer: String, tls_time: Duration) -> Result<BoxStream, LinkFailure> {
        let host = req.host.to_ascii_lowercase();
        let Some(b) = self.brokers.iter().find(|b| b.spec.host == host) else {
            return Err(if host.parse::<std::net::IpAddr>().is_ok() { LinkFailure::Tcp } else { LinkFailure::Dns });
        };
        if b.broker.is_down() {
            // A restarting broker's port is closed: connection refused.
            return Err(LinkFailure::Tcp);
        }
        let (client, server) = tokio::io::duplex(1 << 16);
        let broker = b.broker.clone();
        if b.spec.tls_port == Some(req.port) {
            let Some(listen) = b.tls.clone() else { return Err(LinkFailure::Tcp) };
            tokio::spawn(async move { broker.serve_tls(server, peer, listen).await });
        } else if b.spec.port == Some(req.port) {
            let link = LinkInfo { peer, tls: None };
            tokio::spawn(async move { broker.serve(server, link).await });
        } else {
            return Err(LinkFailure::Tcp);
        }
        match &req.tls {
            None => Ok(Box::pin(client)),
            Some(tls) => {
                // The handshake's CPU time on the device's chip, on the virtual clock.
                tokio::time::sleep(tls_time).await;
                let timeout = Duration::from_millis(u64::from(req.timeout_ms));
                match tokio::time::timeout(timeout, self.client.handshake(tls, client)).await {
                    Ok(r) => r,
                    Err(_) => Err(LinkFailure::Tls(tasmota_core::mqtt::tls::error::HANDSHAKE_TIMEOUT)),
                }
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for d in &mut self.devices {
            d.link.close();
        }
        for o in &mut self.operators {
            if let Some(t) = o.task.take() {
                t.abort();
            }
        }
    }
}
