//! The world a scenario runs in: its devices ([`HostDevice`]s, the one host driver), its
//! brokers (embedded, over in-memory links, or one real broker over the network) and its
//! operators, driven by one event loop on tokio's clock.
//!
//! On the virtual clock the runtime's time is paused: whenever every task waits, tokio
//! jumps to the next timer, so a day of keepalives and telemetry passes in milliseconds
//! and the same scenario gives the same transcript on every run. Nothing here reads the
//! wall clock.
//!
//! Cost follows events, not the number of devices (as in the fleet): devices wake from a
//! timer queue keyed by their `poll_timeout`, a link event goes to the device it belongs
//! to, and only devices that had an input (a link event, a timer, a console line or
//! other step, power, a restart) are asked for their outputs and have their timer read
//! again. Those are carried out in device order, as one pass over every device would.

use std::sync::Arc;
use std::time::Duration;

use tasmota_core::{BootReason, ConnectRequest, Device, LinkFailure, LogLine, Settings};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::file::{BrokerSpec, DeviceFault, OperatorSpec, Scenario};
use super::operator::{self, Ack, AckKind, OperatorEvent, Received};
use crate::broker::{self, Broker, LinkInfo, TlsInfo, TlsListen};
use crate::host::{Console, HostDevice, HostSetup, LinkEvent, Network, Opening, Timers};
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

/// An acknowledgement an operator received, with the world time.
#[derive(Debug, Clone)]
pub struct SeenAck {
    pub at_ms: u64,
    pub ack: Ack,
}

/// Something that went wrong for an operator: a lost link (`refused` `None`), or a
/// refusal in a SUBACK or PUBACK.
#[derive(Debug, Clone)]
pub struct Trouble {
    pub refused: Option<AckKind>,
    pub what: String,
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

/// Everything that reaches the event loop from other tasks, in the order it happened.
enum Event {
    Link(LinkEvent),
    Operator { operator: usize, event: OperatorEvent },
}

/// A scenario device's console: every line with its world time, for expectations and
/// the golden transcript.
pub struct Transcript {
    /// `[name] ` before each line when the scenario has several devices.
    prefix: Option<String>,
    pub lines: Vec<ConsoleLine>,
}

impl Console for Transcript {
    fn line(&mut self, l: &LogLine, at: Duration) {
        let shown = l.to_string();
        let line = match &self.prefix {
            Some(name) => format!("[{name}] {shown}"),
            None => shown,
        };
        self.lines.push(ConsoleLine { at_ms: at.as_millis() as u64, line, text: l.text.clone() });
    }
}

/// One simulated device: the host driver with its console kept as a transcript.
pub type SimDevice = HostDevice<Transcript>;

pub struct OperatorSlot {
    pub name: String,
    pub commands: Option<mpsc::UnboundedSender<operator::Command>>,
    pub ready: bool,
    pub down: Option<String>,
    pub received: Vec<Message>,
    /// Every CONNACK, SUBACK and PUBACK it received, in order.
    pub acks: Vec<SeenAck>,
    /// What went wrong for the operator (a lost link, a refused subscription) that the
    /// runner has not yet taken.
    pub troubles: Vec<Trouble>,
    /// Its broker (index into the scenario's brokers).
    broker: usize,
    /// The broker's restart count when the operator last became ready: a link lost to a
    /// restart the scenario asked for (a fault, a `broker_restart` step) is no trouble.
    restarts_at_ready: u64,
    task: Option<JoinHandle<()>>,
}

pub struct World {
    pub net: Net,
    devices: Vec<SimDevice>,
    /// Each device's next timer, as of its last input.
    timers: Timers,
    /// Devices that had an input since their outputs were last carried out.
    touched: Vec<usize>,
    is_touched: Vec<bool>,
    pub operators: Vec<OperatorSlot>,
    /// Each device's `Var1..` at its first boot (the scenario's `vars`).
    start_vars: Vec<Vec<String>>,
    /// Virtual (or real) time zero.
    t0: Instant,
    /// Whether time is tokio's paused clock (else the wall clock).
    pub virtual_clock: bool,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl World {
    /// Builds the world and connects its operators (waiting until they are subscribed).
    /// The devices are booted at time zero by [`World::boot_devices`].
    pub async fn new(s: &Scenario, net: Net, virtual_clock: bool) -> Result<World, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        let network: Arc<dyn Network> = match &net {
            Net::Embedded(net) => Arc::new(net.clone()),
            Net::External { connector, .. } => Arc::new(connector.clone()),
        };
        let named = s.devices.len() > 1;
        let devices = s
            .devices
            .iter()
            .enumerate()
            .map(|(index, d)| {
                let tx = tx.clone();
                HostDevice::new(HostSetup {
                    index,
                    name: d.name.clone(),
                    hardware: d.hardware.clone(),
                    flash: crate::host::Flash::new(&d.settings),
                    store: None,
                    console: Transcript { prefix: named.then(|| d.name.clone()), lines: Vec::new() },
                    network: network.clone(),
                    events: Arc::new(move |ev| {
                        let _ = tx.send(Event::Link(ev));
                    }),
                    t0,
                    // The handshake's CPU time on the device's chip, on the virtual clock.
                    tls_time: if virtual_clock { d.tls_handshake } else { Duration::ZERO },
                })
            })
            .collect::<Vec<_>>();
        let n = devices.len();
        let mut world = World {
            net,
            devices,
            timers: Timers::new(n),
            touched: Vec::new(),
            is_touched: vec![false; n],
            operators: Vec::new(),
            start_vars: s.devices.iter().map(|d| d.vars.clone()).collect(),
            t0,
            virtual_clock,
            tx,
            rx,
        };
        for (i, spec) in s.operators.iter().enumerate() {
            let (ctx, mut crx) = mpsc::unbounded_channel();
            let tx = world.tx.clone();
            let net = world.net.clone();
            let name = spec.name.clone();
            let spec_broker = spec.broker;
            let spec = spec.clone();
            // Like mosquitto_sub, the operator connects again (a second later) when its
            // link ends, e.g. across a broker restart.
            let task = tokio::spawn(async move {
                let events = move |event| {
                    let _ = tx.send(Event::Operator { operator: i, event });
                };
                let session = operator::Session {
                    client_id: spec.client_id.clone(),
                    login: spec.login.clone(),
                    subscribe: spec.subscribe.clone(),
                    protocol: spec.protocol,
                };
                loop {
                    match operator_link(&net, &spec).await {
                        Ok(stream) => {
                            operator::run(stream, &session, &mut crx, &events).await;
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
                acks: Vec::new(),
                troubles: Vec::new(),
                broker: spec_broker,
                restarts_at_ready: 0,
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
            // The Vars the scenario gives: in RAM from the first boot on.
            if let (Some(core), Some(vars)) = (self.devices[i].running_mut(), self.start_vars.get(i)) {
                core.preset_rule_vars(vars);
            }
        }
    }

    /// How many devices the world has.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Milliseconds since time zero.
    pub fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.t0).as_millis() as u64
    }

    pub fn now_plus(&self, d: Duration) -> Instant {
        Instant::now() + d
    }

    // ---- device power ------------------------------------------------------------------

    pub fn power_on(&mut self, i: usize, reason: BootReason) {
        self.devices[i].power_on(reason);
        self.touch(i);
    }

    /// Power removed: the link drops with no DISCONNECT (the broker sends the will).
    pub fn power_off(&mut self, i: usize) {
        self.devices[i].power_off();
        self.touch(i);
    }

    pub fn set_device_fault(&mut self, i: usize, fault: &DeviceFault) {
        let faults = &mut self.devices[i].faults;
        match fault {
            DeviceFault::Alpn(p) => faults.alpn = Some(*p),
            DeviceFault::DnsFail => faults.dns_fail = true,
            DeviceFault::Clear => *faults = Default::default(),
        }
    }

    /// The running core of device `i` for an input, or why there is none. Its outputs are
    /// carried out when the world next runs.
    pub fn core_mut(&mut self, i: usize) -> Result<(&mut Device, tasmota_core::Instant), String> {
        self.touch(i);
        let d = &mut self.devices[i];
        let now = d.now();
        let name = d.name().to_string();
        d.running_mut().map(|core| (core, now)).ok_or_else(|| format!("device '{name}' is off or halted"))
    }

    /// Device `i`'s console so far.
    pub fn console(&self, i: usize) -> &[ConsoleLine] {
        &self.devices[i].console().lines
    }

    pub fn device_name(&self, i: usize) -> &str {
        self.devices[i].name()
    }

    /// Whether device `i` has power (running or halted).
    pub fn is_powered(&self, i: usize) -> bool {
        self.devices[i].core().is_some()
    }

    /// Device `i`'s settings: the running core's, or what its flash holds.
    pub fn device_settings(&self, i: usize) -> std::borrow::Cow<'_, Settings> {
        let d = &self.devices[i];
        d.core().map_or_else(|| std::borrow::Cow::Owned(d.flash()), |c| std::borrow::Cow::Borrowed(c.settings()))
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

    fn next_device_timer(&mut self) -> Option<Instant> {
        self.timers.earliest()
    }

    /// Runs the timers of the devices that are due now.
    fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(i) = self.timers.pop_due(now) {
            self.devices[i].handle_timeout();
            self.touch(i);
        }
    }

    /// Device `i` had an input: its outputs are carried out and its timer read again.
    fn touch(&mut self, i: usize) {
        if !self.is_touched[i] {
            self.is_touched[i] = true;
            self.touched.push(i);
        }
    }

    /// How many times embedded broker `i` has restarted (a real broker: never, as far as
    /// we know).
    fn broker_restarts(&self, i: usize) -> u64 {
        match &self.net {
            Net::Embedded(net) => net.brokers.get(i).map_or(0, |b| b.broker.restart_count()),
            Net::External { .. } => 0,
        }
    }

    fn on_event(&mut self, ev: Event) {
        let at_ms = self.now_ms();
        match ev {
            Event::Link(ev) => {
                let i = ev.device;
                self.devices[i].handle_link_event(ev);
                self.touch(i);
            }
            Event::Operator { operator, event } => {
                let restarts = self.broker_restarts(self.operators[operator].broker);
                let op = &mut self.operators[operator];
                match event {
                    OperatorEvent::Ready => {
                        op.ready = true;
                        op.restarts_at_ready = restarts;
                        op.down = None;
                    }
                    OperatorEvent::Message(msg) => op.received.push(Message { at_ms, msg }),
                    OperatorEvent::Ack(ack) => op.acks.push(SeenAck { at_ms, ack }),
                    OperatorEvent::Refused { kind, what } => op.troubles.push(Trouble { refused: Some(kind), what }),
                    OperatorEvent::Down(why) => {
                        tracing::debug!(operator = %op.name, %why, "operator link ended");
                        if op.ready && restarts == op.restarts_at_ready {
                            op.troubles.push(Trouble { refused: None, what: format!("lost its link: {why}") });
                        }
                        op.ready = false;
                        op.down = Some(why);
                    }
                }
            }
        }
    }

    /// Carries out every output the devices have: those of the devices that had an input
    /// (no other has any), in device order, then reads their timers again. One pass is
    /// enough: a device's `carry_out` runs until that device asks nothing more, and one
    /// device's outputs reach another only through the link tasks, as events.
    async fn pump(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        for &i in &touched {
            self.is_touched[i] = false;
            let d = &mut self.devices[i];
            d.carry_out().await;
            self.timers.set(i, d.poll_timeout());
        }
        // The list's allocation is kept for the next inputs.
        touched.clear();
        self.touched = touched;
    }
}

/// A fresh link for an operator to its broker: MQTT straight on the link, or inside a
/// WebSocket (`ws_port`, `wss_port`).
///
/// To an embedded broker the link is in memory: a WebSocket link goes through the
/// broker's WebSocket code path (the HTTP upgrade on `/mqtt`, subprotocol `mqtt`, binary
/// frames; over TLS with the broker's certificate for `wss_port`), as a socket on that
/// port would; the port itself only names the listener. To a real broker (`--broker`)
/// the operator connects to that port on the broker's host.
async fn operator_link(net: &Net, spec: &OperatorSpec) -> Result<BoxStream, String> {
    let name = &spec.name;
    match net {
        Net::Embedded(net) => {
            let b = &net.brokers[spec.broker];
            let (client, server) = tokio::io::duplex(1 << 16);
            let broker = b.broker.clone();
            let peer = match spec.websocket {
                None => format!("operator {name}"),
                Some(ws) => format!("operator {name} over {}", if ws.tls { "WSS" } else { "WebSocket" }),
            };
            let Some(ws) = spec.websocket else {
                // On AWS IoT the console's MQTT client is signed in with IAM: here a link
                // that presents a verified client certificate on the ALPN that allows it.
                let tls = (b.spec.profile == broker::ProfileName::AwsIot).then(|| TlsInfo {
                    sni: Some(b.spec.host.clone()),
                    alpn: Some(b"x-amzn-mqtt-ca".to_vec()),
                    client_cert: true,
                    mtls_listener: false,
                });
                let link = LinkInfo { peer, tls };
                tokio::spawn(async move { broker.serve(server, link).await });
                return Ok(Box::pin(client));
            };
            let stream: BoxStream = if ws.tls {
                let Some(listen) = b.tls.clone() else {
                    return Err(format!("operator '{name}': broker '{}' has no TLS certificate", b.spec.name));
                };
                tokio::spawn(async move { broker.serve_wss(server, peer, &listen.acceptors).await });
                let req = tasmota_core::mqtt::tls::TlsRequest {
                    server_name: b.spec.host.clone(),
                    alpn: None,
                    validation: tasmota_core::mqtt::tls::Validation::TrustAnchors,
                };
                net.client.handshake(&req, client).await.map_err(|f| {
                    format!("operator '{name}': TLS handshake with broker '{}' failed: {f:?}", b.spec.name)
                })?
            } else {
                tokio::spawn(async move { broker::ws::serve(&broker, server, peer, None).await });
                Box::pin(client)
            };
            operator::websocket::upgrade(stream, &b.spec.host, ws.port, ws.tls)
                .await
                .map_err(|e| format!("operator '{name}': {e}"))
        }
        Net::External { connector, url } => {
            let (port, tls) = spec.websocket.map_or((url.port, url.tls), |ws| (ws.port, ws.tls));
            let scheme = match (spec.websocket.is_some(), tls) {
                (false, false) => "mqtt",
                (false, true) => "mqtts",
                (true, false) => "ws",
                (true, true) => "wss",
            };
            let stream = connector
                .open_client(&url.host, port, tls)
                .await
                .map_err(|f| format!("operator '{name}' cannot reach {scheme}://{}:{port}: {f}", url.host))?;
            match spec.websocket {
                None => Ok(stream),
                Some(ws) => operator::websocket::upgrade(stream, &url.host, ws.port, ws.tls)
                    .await
                    .map_err(|e| format!("operator '{name}': {e}")),
            }
        }
    }
}

/// The devices' side of the embedded brokers.
impl Network for Arc<EmbeddedNet> {
    fn open(&self, req: ConnectRequest, peer: String, tls_time: Duration) -> Opening {
        let net = self.clone();
        Box::pin(async move { net.open_link(&req, peer, tls_time).await })
    }
}

impl EmbeddedNet {
    /// An in-memory link to the embedded broker at `req.host:req.port`: an unknown name
    /// fails as DNS does, an unknown address or port as a refused TCP connect.
    async fn open_link(
        &self,
        req: &ConnectRequest,
        peer: String,
        tls_time: Duration,
    ) -> Result<BoxStream, LinkFailure> {
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
        for o in &mut self.operators {
            if let Some(t) = o.task.take() {
                t.abort();
            }
        }
    }
}
