//! The embedded MQTT broker (3.1, 3.1.1 and 5.0, see [`v5`]): a `plain` profile that behaves like Mosquitto with a
//! password file, and an `aws-iot` profile that behaves like AWS IoT Core with the
//! TasmotaAuth custom authorizer; with fault injection and traffic recording.
//!
//! - [`Broker`] is the handle: serve a stream ([`Broker::serve`]) or a listener
//!   ([`Broker::listen`], [`Broker::listen_ws`], [`Broker::listen_wss`]), inject faults, restart, read the recording.
//! - [`connection`] runs one client link, generic over `AsyncRead + AsyncWrite`.
//! - [`router`] holds sessions, subscriptions and retained messages.
//! - [`profile`] is the data that makes `plain` and `aws-iot` differ.
//! - Packets are parsed with rumqttc's `mqttbytes`, not the device's codec, so a codec bug
//!   on one side cannot hide behind the same bug on the other.

pub mod auth;
pub mod connection;
pub mod fault;
pub mod log;
pub mod profile;
pub mod record;
pub mod router;
pub mod tls;
pub mod topic;
pub mod v5;
pub mod ws;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

pub use auth::{Authorizer, PasswordList};
pub use connection::{LinkInfo, TlsInfo};
pub use fault::{Fault, FaultRule, Phase};
pub use log::LogLevel;
pub use profile::{Limits, Profile, ProfileName, RetainPolicy};
pub use record::{Dir, Record};

use router::{lock, Kick, State, ToConn};

/// The AWS IoT data endpoint the `aws-iot` profile serves unless told otherwise (the name
/// used in the README's examples).
pub const DEFAULT_ENDPOINT: &str = "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com";

/// How to build a broker.
pub struct Config {
    pub profile: Profile,
    /// `plain`: the password list (empty: anonymous clients allowed).
    pub users: PasswordList,
    /// `aws-iot`: custom authorizers by name.
    pub authorizers: Vec<Authorizer>,
    /// `aws-iot`: the authorizer used when the username names none.
    pub default_authorizer: Option<String>,
    /// `aws-iot`: the data endpoint; custom auth needs SNI equal to it.
    pub endpoint: String,
    pub faults: Vec<FaultRule>,
    /// Write every packet and event as a JSON line here.
    pub record_file: Option<std::fs::File>,
    /// Keep every packet and event in memory ([`Broker::records`]).
    pub record_in_memory: bool,
    /// Mosquitto-style lines on stderr (`tasmota-sim broker`); off by default.
    pub log: LogLevel,
}

impl Config {
    pub fn new(profile: ProfileName) -> Config {
        Config {
            profile: Profile::new(profile),
            users: PasswordList::default(),
            authorizers: Vec::new(),
            default_authorizer: None,
            endpoint: DEFAULT_ENDPOINT.to_string(),
            faults: Vec::new(),
            record_file: None,
            record_in_memory: false,
            log: LogLevel::Off,
        }
    }
}

pub(crate) struct Shared {
    profile: Profile,
    users: PasswordList,
    authorizers: Vec<Authorizer>,
    default_authorizer: Option<String>,
    endpoint: String,
    state: Mutex<State>,
    faults: Mutex<Vec<FaultRule>>,
    recorder: record::Recorder,
    log: LogLevel,
    started: Instant,
    next_conn: AtomicU64,
    /// Restart count and the downtime of the latest restart, watched by the listeners.
    restart: watch::Sender<(u64, Duration)>,
    down_until: Mutex<Option<Instant>>,
    timers_started: AtomicBool,
}

impl Shared {
    /// A retained message with a Message Expiry Interval is dropped from the store when
    /// it expires (MQTT 5 §3.3.2.3.3), not kept until someone subscribes.
    fn expire_retained_later(self: &Arc<Shared>, msg: &Arc<router::Message>, retain: bool) {
        let Some(at) = msg.props.as_ref().and_then(|p| p.expires) else { return };
        if !retain || msg.payload.is_empty() {
            return;
        }
        let (shared, msg) = (Arc::downgrade(self), Arc::downgrade(msg));
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let (Some(shared), Some(msg)) = (shared.upgrade(), msg.upgrade()) else { return };
            if lock(&shared.state).expire_retained(&msg) && shared.recorder.enabled() {
                let mut r = Record::event("expired", format!("retained {}: message expiry interval passed", msg.topic));
                r.t_ms = shared.elapsed_ms();
                shared.recorder.push(r);
            }
        });
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The faults that act in `phase` on this client (`None`: the client id is not known
    /// yet, every rule applies), each used up by one firing, in the order they were given.
    fn take_faults(&self, phase: Phase, client: Option<&str>) -> Vec<FaultRule> {
        let mut rules = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for r in rules.iter_mut() {
            if r.fault.phase() == phase && client.is_none_or(|c| r.applies_to(c)) && r.times != Some(0) {
                if let Some(n) = &mut r.times {
                    *n -= 1;
                }
                out.push(r.clone());
            }
        }
        out
    }

    fn event(&self, kind: &str, detail: String) {
        tracing::info!("broker {kind}: {detail}");
        // This broker's own lines (Mosquitto has no faults); worded like its notices.
        self.log.print(LogLevel::Notice, || match kind {
            "fault" => format!("Fault {detail}."),
            "restart" => format!("Broker restart: {detail}."),
            "tls" => format!("TLS handshake failed: {detail}."),
            "refused" => format!("Connection refused: {detail}."),
            _ => format!("{kind}: {detail}."),
        });
        if self.recorder.enabled() {
            let mut r = Record::event(kind, detail);
            r.t_ms = self.elapsed_ms();
            self.recorder.push(r);
        }
    }

    fn is_down(&self) -> bool {
        self.down_until.lock().map(|d| d.is_some_and(|t| Instant::now() < t)).unwrap_or(false)
    }
}

/// A TLS listener's setup.
#[derive(Clone)]
pub struct TlsListen {
    pub acceptors: Arc<tls::Acceptors>,
    /// The mTLS port (AWS's 8883): a client certificate is required.
    pub mtls: bool,
}

/// The broker. Cloning gives another handle to the same broker.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        let recorder = record::Recorder::new(config.record_file, config.record_in_memory);
        Broker {
            shared: Arc::new(Shared {
                profile: config.profile,
                users: config.users,
                authorizers: config.authorizers,
                default_authorizer: config.default_authorizer,
                endpoint: config.endpoint,
                state: Mutex::new(State::default()),
                faults: Mutex::new(config.faults),
                recorder,
                log: config.log,
                started: Instant::now(),
                next_conn: AtomicU64::new(0),
                restart: watch::channel((0, Duration::ZERO)).0,
                down_until: Mutex::new(None),
                timers_started: AtomicBool::new(false),
            }),
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.shared.profile
    }

    /// Serves one client link (TCP, TLS, or an in-memory duplex) until it ends.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S, link: LinkInfo) {
        self.serve_link(stream, link, None).await
    }

    /// [`Broker::serve`], with what a WebSocket upgrade request carried (see [`ws`]).
    async fn serve_link<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        link: LinkInfo,
        websocket: Option<ws::Upgrade>,
    ) {
        self.start_timers();
        if self.shared.is_down() {
            self.shared.event("refused", format!("{}: broker is restarting", link.peer));
            return;
        }
        connection::Conn::new(self.shared.clone(), stream, link).websocket(websocket).run().await
    }

    /// Accepts links on `listener` until the task is dropped; each link gets its own task.
    /// A restart with downtime closes the listening socket and binds it again after.
    pub async fn listen(&self, listener: TcpListener, tls: Option<TlsListen>) -> std::io::Result<()> {
        self.accept_loop(listener, move |broker, tcp, peer| {
            // Separate spawns: a plain link must not carry the TLS future's size.
            match tls.clone() {
                Some(tls) => {
                    tokio::spawn(async move { Box::pin(broker.serve_tls(tcp, peer.to_string(), tls)).await });
                }
                None => {
                    tokio::spawn(
                        async move { broker.serve(tcp, LinkInfo { peer: peer.to_string(), tls: None }).await },
                    );
                }
            }
        })
        .await
    }

    /// Accepts MQTT-over-WebSocket links on `listener` (`ws://HOST:PORT/mqtt`, subprotocol
    /// `mqtt`, see [`ws`]) as [`Broker::listen`] accepts plain ones.
    pub async fn listen_ws(&self, listener: TcpListener) -> std::io::Result<()> {
        self.accept_loop(listener, |broker, tcp, peer| {
            tokio::spawn(async move { Box::pin(ws::serve(&broker, tcp, peer.to_string(), None)).await });
        })
        .await
    }

    /// Accepts MQTT over WebSocket over TLS (`wss://HOST:PORT/mqtt`): the TLS handshake
    /// ([`tls::Acceptors::accept_https`]), then as [`Broker::listen_ws`].
    pub async fn listen_wss(&self, listener: TcpListener, acceptors: Arc<tls::Acceptors>) -> std::io::Result<()> {
        self.accept_loop(listener, move |broker, tcp, peer| {
            let acceptors = acceptors.clone();
            tokio::spawn(async move { Box::pin(broker.serve_wss(tcp, peer.to_string(), &acceptors)).await });
        })
        .await
    }

    /// The TLS handshake of a WSS link (the TLS-phase faults act here too), then the
    /// WebSocket upgrade and MQTT.
    pub async fn serve_wss<IO: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        io: IO,
        peer: String,
        acceptors: &tls::Acceptors,
    ) {
        let alert = self.tls_alert(&peer);
        match tokio::time::timeout(Duration::from_secs(10), acceptors.accept_https(io, alert)).await {
            Ok(Ok((stream, info))) => ws::serve(self, stream, peer, Some(info)).await,
            Ok(Err(e)) => self.shared.event("tls", format!("{peer}: {e}")),
            Err(_) => self.shared.event("tls", format!("{peer}: no TLS handshake within 10 s")),
        }
    }

    /// The fatal alert a `tls-alert` fault asks for on this link, if any.
    fn tls_alert(&self, peer: &str) -> Option<u8> {
        let mut alert = None;
        for rule in self.shared.take_faults(Phase::Tls, None) {
            match rule.fault {
                Fault::TlsAlert(d) => alert = alert.or(Some(d)),
                other => forgotten(&other, Phase::Tls),
            }
        }
        if let Some(d) = alert {
            self.shared.event("fault", format!("TlsAlert: alert {d} sent to {peer}"));
        }
        alert
    }

    async fn accept_loop(
        &self,
        mut listener: TcpListener,
        spawn: impl Fn(Broker, tokio::net::TcpStream, std::net::SocketAddr),
    ) -> std::io::Result<()> {
        self.start_timers();
        let addr = listener.local_addr()?;
        let mut restarts = self.shared.restart.subscribe();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: keep serving the others.
                            tracing::warn!("accept on {addr}: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    // Mosquitto 2.0 src/net.c net__socket_accept():
                    // "New connection from %s:%d on port %d."
                    self.shared.log.print(LogLevel::Notice, || format!("New connection from {peer} on port {}.", addr.port()));
                    spawn(self.clone(), tcp, peer);
                }
                changed = restarts.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let (_, down) = *restarts.borrow_and_update();
                    if !down.is_zero() {
                        drop(listener);
                        tokio::time::sleep(down).await;
                        listener = bind_again(addr).await?;
                    }
                }
            }
        }
    }

    /// Runs the server TLS handshake on `io` (a TCP stream or an in-memory duplex), then
    /// serves the link. `peer` names it in logs.
    pub async fn serve_tls<IO: AsyncRead + AsyncWrite + Unpin>(&self, io: IO, peer: String, tls: TlsListen) {
        // The faults of the TLS phase act here.
        let alert = self.tls_alert(&peer);
        let route_alpn = self.shared.profile.custom_auth;
        let handshake = tls.acceptors.accept(io, route_alpn, tls.mtls, alert);
        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
            Ok(Ok((stream, info))) => self.serve(stream, LinkInfo { peer, tls: Some(info) }).await,
            Ok(Err(e)) => self.shared.event("tls", format!("{peer}: {e}")),
            Err(_) => self.shared.event("tls", format!("{peer}: no TLS handshake within 10 s")),
        }
    }

    /// Schedules the scheduled faults of the config, once, when the broker starts serving.
    fn start_timers(&self) {
        let scheduled = {
            let mut rules = self.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
            if self.shared.timers_started.swap(true, Ordering::Relaxed) {
                return;
            }
            let (scheduled, rest) =
                std::mem::take(&mut *rules).into_iter().partition::<Vec<_>, _>(|r| r.fault.phase() == Phase::Scheduled);
            *rules = rest;
            scheduled
        };
        for rule in scheduled {
            self.schedule(rule);
        }
    }

    /// The faults of the scheduled phase act here: each at its time from the broker's
    /// start (at once if that time has passed). `times=0` never fires; a client is ignored
    /// (the whole broker is hit).
    fn schedule(&self, rule: FaultRule) {
        if rule.times == Some(0) {
            return;
        }
        match rule.fault {
            Fault::RestartAt { at, down } => {
                let broker = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(broker.shared.started + at).await;
                    broker.shared.event("fault", format!("RestartAt: restart, down {} ms", down.as_millis()));
                    broker.restart(down);
                });
            }
            other => forgotten(&other, Phase::Scheduled),
        }
    }

    /// How many times the broker has restarted (a fault or [`Broker::restart`]).
    pub fn restart_count(&self) -> u64 {
        self.shared.restart.borrow().0
    }

    /// Whether the broker is in the downtime of a restart (its listeners refuse links).
    pub fn is_down(&self) -> bool {
        self.shared.is_down()
    }

    /// Adds a fault rule. It applies to connections from now on; a scheduled one
    /// (`restart-at`) is scheduled as if it had been in the config: its time counts from the
    /// broker's start, and a time already past fires at once.
    pub fn add_fault(&self, rule: FaultRule) {
        let mut rules = self.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        // Under the rules' lock: `start_timers` either has taken the scheduled rules
        // (then this one is scheduled here) or will take this one with them.
        if rule.fault.phase() == Phase::Scheduled && self.shared.timers_started.load(Ordering::Relaxed) {
            drop(rules);
            self.schedule(rule);
        } else {
            rules.push(rule);
        }
    }

    /// Restarts the broker: every link is dropped (wills are published); retained messages
    /// and persistent sessions are kept; listeners refuse connections for `down`.
    pub fn restart(&self, down: Duration) {
        if !down.is_zero() {
            if let Ok(mut d) = self.shared.down_until.lock() {
                *d = Some(Instant::now() + down);
            }
        }
        self.shared.event("restart", format!("all links dropped, down {} ms", down.as_millis()));
        for (_, mailbox) in lock(&self.shared.state).attached() {
            mailbox.push(ToConn::Kick(Kick::Restart));
        }
        self.shared.restart.send_modify(|(n, d)| {
            *n += 1;
            *d = down;
        });
    }

    /// Drops one client's link now (its will is published). False if it is not connected.
    pub fn drop_client(&self, client_id: &str) -> bool {
        let state = lock(&self.shared.state);
        match state.attached().into_iter().find(|(c, _)| &**c == client_id) {
            Some((_, mailbox)) => {
                mailbox.push(ToConn::Kick(Kick::Request));
                true
            }
            None => false,
        }
    }

    /// Client ids with a connection attached, sorted.
    pub fn connected(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            lock(&self.shared.state).attached().into_iter().map(|(c, _)| c.to_string()).collect();
        ids.sort();
        ids
    }

    /// The retained message on `topic`, if any.
    pub fn retained(&self, topic: &str) -> Option<bytes::Bytes> {
        lock(&self.shared.state).retained.get(topic).map(|r| r.msg.payload.clone())
    }

    /// Everything recorded in memory so far (needs `record_in_memory`).
    pub fn records(&self) -> Vec<Record> {
        self.shared.recorder.snapshot()
    }

    /// The records in memory from index `start` on: what a reader that has seen `start`
    /// records has not seen yet.
    pub fn records_since(&self, start: usize) -> Vec<Record> {
        self.shared.recorder.since(start)
    }

    /// How many records are in memory.
    pub fn record_count(&self) -> usize {
        self.shared.recorder.count()
    }
}

/// A fault handed to the place of a phase it does not belong to: its variant was added to
/// [`Fault::phase`] without an arm in that phase's place.
pub(crate) fn forgotten(fault: &Fault, phase: Phase) {
    tracing::error!("fault {fault:?} has phase {:?} but is not carried out in the {phase:?} phase", fault.phase());
    debug_assert!(false, "fault {fault:?} is not carried out in the {phase:?} phase");
}

async fn bind_again(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("cannot bind again")))
}

#[cfg(test)]
mod footprint {
    /// Every idle connection is one task holding this future: what lives across its
    /// awaits is paid per connection (the MQTT 5 merge once put a whole `Packet` and an
    /// unboxed will in it: 2,448 B in a test build; 1,704 B now, 1,720 B before MQTT 5).
    #[tokio::test]
    async fn a_plain_connection_future_stays_under_2_kib() {
        let broker = super::Broker::new(super::Config::new(super::ProfileName::Plain));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let serve = broker.serve(tcp, super::LinkInfo { peer: "test".into(), tls: None });
        let size = std::mem::size_of_val(&serve);
        assert!(size <= 2048, "a connection's future is {size} B");
    }
}
