//! One client connection, from the first byte to the close: CONNECT and the profile's
//! checks (auth, limits, faults), then packets in and deliveries out until DISCONNECT,
//! an error, a keepalive timeout or a kick; then the will and the session's leftovers.
//! Generic over the stream, so TCP, TLS and in-memory duplex links run the same code.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, PubComp, PubRec, PubRel, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

use super::auth::{AwsUsername, Effect};
use super::fault::{Fault, Phase};
use super::log::LogLevel;
use super::profile::RetainPolicy;
use super::record::{Dir, Record};
use super::router::{lock, Attached, Delivery, Kick, Leftovers, Mailbox, Message, ToConn};
use super::{forgotten, topic, Shared};

/// How long a new link may take to send CONNECT.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long an AWS link with the wrong ALPN is held after its unanswered CONNECT.
const NEVER_ANSWER_HOLD: Duration = Duration::from_secs(10);
/// MQTT's largest remaining length.
const MQTT_MAX_REMAINING: usize = 268_435_455;
/// TasmotaAuth answers `disconnectAfterInSeconds: 86400`.
const AWS_DISCONNECT_AFTER: Duration = Duration::from_secs(86_400);

/// What the link looked like below MQTT.
#[derive(Debug, Clone, Default)]
pub struct LinkInfo {
    /// Peer address, for logs.
    pub peer: String,
    /// `None` for plain TCP and in-memory links.
    pub tls: Option<TlsInfo>,
}

/// What the TLS handshake told us.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    /// The client presented a certificate that verified against the client CA.
    pub client_cert: bool,
    /// The listener is an mTLS one (AWS's 8883): a client certificate is the only way in.
    pub mtls_listener: bool,
}

/// How an AWS IoT connection is authenticated (spec/aws-iot.md §1 port/ALPN table).
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `plain` profile: the password list.
    Passwords,
    /// ALPN `mqtt` on 443 (or a plain link to the aws-iot profile): the custom authorizer.
    CustomAuth { sni: Option<String> },
    /// A verified client certificate (8883, or 443 with ALPN `x-amzn-mqtt-ca`).
    ClientCert,
    /// AWS reads CONNECT and never answers (wrong or missing ALPN on 443).
    NeverAnswer(String),
}

/// Why the connection ended.
#[derive(Debug)]
enum End {
    /// DISCONNECT from the client: no will.
    Disconnect,
    /// Refused before the session started: no will (there is none yet).
    Refused(String),
    /// The password list refused the login (CONNACK 5): no will.
    BadLogin,
    /// AWS's custom authorizer refused (no CONNACK): no will.
    NotAuthorised(String),
    /// The client closed the link without DISCONNECT: the will is published.
    ClientClosed,
    /// Nothing received for 1.5 x keepalive: the will is published.
    KeepaliveTimeout,
    /// Another part of the broker closed the link: the will is published.
    Kicked(Kick),
    /// Anything else after CONNACK: the will is published.
    Lost(String),
}

impl End {
    /// Why, as the `close` record says it.
    fn reason(&self) -> String {
        match self {
            End::Disconnect => "DISCONNECT".into(),
            End::BadLogin => "bad user name or password".into(),
            End::NotAuthorised(why) => format!("custom authorizer: {why}"),
            End::ClientClosed => "client closed the link".into(),
            End::KeepaliveTimeout => "keepalive timeout (1.5 x keepalive with nothing received)".into(),
            End::Kicked(k) => k.reason().into(),
            End::Refused(r) | End::Lost(r) => r.clone(),
        }
    }

    /// Whether the will is published (every close after CONNACK but DISCONNECT).
    fn publishes_will(&self) -> bool {
        match self {
            End::Disconnect | End::Refused(_) | End::BadLogin | End::NotAuthorised(_) => false,
            End::ClientClosed | End::KeepaliveTimeout | End::Kicked(_) | End::Lost(_) => true,
        }
    }

    /// The foreground log line, as Mosquitto 2.0's `do_disconnect()` (src/loop.c) words it;
    /// `None` where it prints none (the old link of a taken-over session).
    fn log_line(&self, id: &str) -> Option<String> {
        Some(match self {
            // "Client %s disconnected."
            End::Disconnect => format!("Client {id} disconnected."),
            // MOSQ_ERR_AUTH: "Client %s disconnected, not authorised."
            End::BadLogin => format!("Client {id} disconnected, not authorised."),
            // AWS: the same, with the authorizer's reason (AWS itself says nothing).
            End::NotAuthorised(why) => format!("Client {id} disconnected, not authorised: {why}."),
            // MOSQ_ERR_CONN_LOST: "Client %s closed its connection."
            End::ClientClosed => format!("Client {id} closed its connection."),
            // MOSQ_ERR_KEEPALIVE: "Client %s has exceeded timeout, disconnecting."
            End::KeepaliveTimeout => format!("Client {id} has exceeded timeout, disconnecting."),
            // Mosquitto logs the takeover at the new connection ("already connected").
            End::Kicked(Kick::TakenOver) => return None,
            // MOSQ_ERR_ADMINISTRATIVE_ACTION: "Client %s been disconnected by administrative action."
            End::Kicked(Kick::Restart | Kick::Request) => {
                format!("Client {id} been disconnected by administrative action.")
            }
            // MOSQ_ERR_ERRNO's shape: "Client %s disconnected: %s."
            End::Refused(why) | End::Lost(why) => format!("Client {id} disconnected: {why}."),
        })
    }
}

/// The link-phase faults picked for this client at CONNECT; the session loop, `on_packet`,
/// `sent` and `flush` read them.
#[derive(Default)]
struct LinkFaults {
    drop_after: Option<u32>,
    drop_at: Option<Instant>,
    no_pingresp: bool,
    corrupt: Option<u32>,
    latency: Option<Duration>,
}

impl LinkFaults {
    /// The faults of the link phase act from here: each arms what the session checks.
    fn arm(&mut self, fault: Fault, started: Instant) {
        match fault {
            Fault::DropAfterPackets(n) => self.drop_after = Some(n),
            Fault::DropAt(at) => self.drop_at = Some(started + at),
            Fault::NoPingresp => self.no_pingresp = true,
            Fault::Corrupt(n) => self.corrupt = Some(n),
            Fault::Latency(d) => self.latency = Some(d),
            other => forgotten(&other, Phase::Link),
        }
    }
}

pub(super) struct Conn<S> {
    shared: Arc<Shared>,
    id: u64,
    stream: S,
    link: LinkInfo,
    rbuf: BytesMut,
    out: BytesMut,
    /// Bytes still missing for the packet at the front of `rbuf`.
    need: usize,
    client: Option<Arc<str>>,
    mailbox: Arc<Mailbox>,
    keepalive: Option<Duration>,
    last_in: Instant,
    disconnect_at: Option<Instant>,
    will: Option<LastWill>,
    attached: bool,
    /// Outgoing QoS 1/2 messages not yet acknowledged (`released`: PUBREC came).
    inflight: VecDeque<Delivery>,
    waiting: VecDeque<Delivery>,
    next_pkid: u16,
    qos2_in: HashMap<u16, (Arc<Message>, bool)>,
    faults: LinkFaults,
    packets_in: u32,
    packets_out: u32,
    rate_window: Instant,
    rate_count: u32,
    /// MQTT over WebSocket: what the upgrade request carried (boxed: most links have none).
    websocket: Option<Box<super::ws::Upgrade>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(shared: Arc<Shared>, stream: S, link: LinkInfo) -> Conn<S> {
        let id = shared.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let now = Instant::now();
        Conn {
            shared,
            id,
            stream,
            link,
            rbuf: BytesMut::new(),
            out: BytesMut::new(),
            need: 0,
            client: None,
            mailbox: Arc::new(Mailbox::default()),
            keepalive: None,
            last_in: now,
            disconnect_at: None,
            will: None,
            attached: false,
            inflight: VecDeque::new(),
            waiting: VecDeque::new(),
            next_pkid: 1,
            qos2_in: HashMap::new(),
            faults: LinkFaults::default(),
            packets_in: 0,
            packets_out: 0,
            rate_window: now,
            rate_count: 0,
            websocket: None,
        }
    }

    /// A link that came through a WebSocket upgrade (see [`super::ws`]).
    pub(super) fn websocket(mut self, upgrade: Option<super::ws::Upgrade>) -> Conn<S> {
        self.websocket = upgrade.map(Box::new);
        self
    }

    /// Serves the link to its end.
    pub(super) async fn run(mut self) {
        self.record(Record::event("open", self.describe_link()));
        // The short-lived phases run boxed so their state is not part of every idle
        // connection's future.
        let end = match Box::pin(self.connect()).await {
            Ok(()) => self.session().await,
            Err(end) => end,
        };
        Box::pin(self.finish(end)).await;
    }

    fn describe_link(&self) -> String {
        match &self.link.tls {
            None => format!("{} (tcp)", self.link.peer),
            Some(t) => format!(
                "{} (tls, sni {}, alpn {}, client cert {})",
                self.link.peer,
                t.sni.as_deref().unwrap_or("-"),
                t.alpn.as_ref().map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_else(|| "-".into()),
                t.client_cert
            ),
        }
    }

    fn max_remaining(&self) -> usize {
        // The payload limit plus room for the topic and packet id.
        self.shared.profile.limits.payload_bytes.map_or(MQTT_MAX_REMAINING, |p| p + 2 + 65_535 + 2)
    }

    // ---- CONNECT ----

    async fn connect(&mut self) -> Result<(), End> {
        let deadline = Instant::now() + CONNECT_WAIT;
        // Read until one whole packet is buffered.
        loop {
            match mqttbytes::check(self.rbuf.iter(), self.max_remaining()) {
                Ok(_) => break,
                Err(mqttbytes::Error::InsufficientBytes(n)) => self.need = n,
                Err(e) => return Err(End::Refused(format!("malformed first packet: {e}"))),
            }
            self.rbuf.reserve(self.need.max(256));
            tokio::select! {
                r = self.stream.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => return Err(End::Refused("closed before CONNECT".into())),
                    Ok(_) => {}
                    Err(e) => return Err(End::Refused(format!("read error before CONNECT: {e}"))),
                },
                _ = sleep_until(deadline) => return Err(End::Refused("no CONNECT within 10 s".into())),
            }
        }
        if self.rbuf[0] >> 4 != 1 {
            return Err(End::Refused(format!("first packet is not CONNECT (type {})", self.rbuf[0] >> 4)));
        }
        if let Some((name, level)) = protocol_of(&self.rbuf) {
            if !(name == "MQTT" && level == 4) {
                let known = name == "MQTT" || name == "MQIsdp";
                // Mosquitto 2.0 src/handle_connect.c: "Invalid protocol version %d in CONNECT
                // from %s." / "Invalid protocol \"%s\" in CONNECT from %s."
                self.shared.log.print(LogLevel::Notice, || match known {
                    true => format!("Invalid protocol version {level} in CONNECT from {}.", self.link.peer),
                    false => format!("Invalid protocol \"{name}\" in CONNECT from {}.", self.link.peer),
                });
                self.record(Record::event(
                    "refused",
                    format!("protocol {name} level {level}: only MQTT 3.1.1 is served"),
                ));
                if known {
                    self.send(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false)));
                }
                return Err(End::Refused(format!("unsupported protocol {name} level {level}")));
            }
        }
        let max = self.max_remaining();
        let packet = Packet::read(&mut self.rbuf, max).map_err(|e| End::Refused(format!("malformed CONNECT: {e}")))?;
        self.packets_in += 1;
        self.record_packet(Dir::In, &packet);
        match packet {
            Packet::Connect(connect) => self.accept(connect).await,
            _ => Err(End::Refused("first packet is not CONNECT".into())),
        }
    }

    /// A CONNECT read: the checks in the order the profile's broker makes them, then the
    /// session and CONNACK.
    async fn accept(&mut self, mut c: Connect) -> Result<(), End> {
        let client = self.identify(&mut c)?;
        self.connect_faults(&client).await?;
        self.throttle_connects(&client)?;
        self.check_will(c.last_will.as_ref())?;
        self.authenticate(&c).await?;
        self.start_session(c, client);
        Ok(())
    }

    /// The client identifier: an empty one gets a generated id if the session is clean
    /// (MQTT-3.1.3-6/7: else CONNACK 2); AWS refuses ids over its limit.
    fn identify(&mut self, c: &mut Connect) -> Result<Arc<str>, End> {
        if c.client_id.is_empty() {
            if !c.clean_session {
                self.send(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::BadClientId, false)));
                return Err(End::Refused("empty client id with a persistent session".into()));
            }
            c.client_id = format!("auto-{:08X}", self.id);
        }
        let client: Arc<str> = Arc::from(c.client_id.as_str());
        self.client = Some(client.clone());
        if let Some(max) = self.shared.profile.limits.client_id_bytes {
            if c.client_id.len() > max {
                return Err(End::Refused(format!("client id of {} bytes (limit {max})", c.client_id.len())));
            }
        }
        Ok(client)
    }

    /// The faults of the connect phase act here; the link phase's are armed for the session.
    async fn connect_faults(&mut self, client: &str) -> Result<(), End> {
        // Both taken before any acts, so a refusing fault still uses up the others' times.
        let link = self.shared.take_faults(Phase::Link, Some(client));
        let connect = self.shared.take_faults(Phase::Connect, Some(client));
        for rule in link {
            self.faults.arm(rule.fault, self.shared.started);
        }
        for rule in connect {
            let fired = |conn: &mut Self, what: &str| conn.fault_event(&rule.describe(), what);
            match rule.fault {
                Fault::SilentOnConnect => {
                    fired(self, "CONNECT not answered");
                    return Err(self.hold_silent(None).await);
                }
                Fault::ConnackRc(rc) => {
                    fired(self, &format!("CONNACK {rc}"));
                    self.send(&Packet::ConnAck(ConnAck::new(return_code(rc), false)));
                    return Err(End::Refused(format!("fault: CONNACK return code {rc}")));
                }
                Fault::LateConnack(d) => {
                    fired(self, &format!("CONNACK delayed {} ms", d.as_millis()));
                    tokio::time::sleep(d).await;
                }
                ref other => forgotten(other, Phase::Connect),
            }
        }
        Ok(())
    }

    /// AWS's one CONNECT per second per client id (the limit `connects-per-second`).
    fn throttle_connects(&self, client: &Arc<str>) -> Result<(), End> {
        let Some(per_second) = self.shared.profile.limits.connects_per_second else { return Ok(()) };
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        let min_gap = Duration::from_secs(1) / per_second.max(1);
        let throttled = state.last_connect.get(client).is_some_and(|t| now.duration_since(*t) < min_gap);
        state.last_connect.insert(client.clone(), now);
        if throttled {
            return Err(End::Refused(format!("more than {per_second} CONNECT per second for this client id")));
        }
        Ok(())
    }

    /// The will must be one the client could publish: a valid topic, and for AWS no QoS 2,
    /// no retain without iot:RetainPublish, within the topic limits.
    fn check_will(&self, will: Option<&LastWill>) -> Result<(), End> {
        let Some(will) = will else { return Ok(()) };
        let profile = &self.shared.profile;
        if topic::validate_name(&will.topic).is_err() {
            return Err(End::Refused(format!("invalid will topic '{}'", will.topic)));
        }
        if will.qos == QoS::ExactlyOnce && !profile.qos2 {
            return Err(End::Refused("will with QoS 2".into()));
        }
        if will.retain && profile.retain == RetainPolicy::Close {
            return Err(End::Refused("retained will without iot:RetainPublish".into()));
        }
        if let Err(e) = profile.check_topic_limits(&will.topic) {
            return Err(End::Refused(format!("will topic: {e}")));
        }
        Ok(())
    }

    /// Who may connect: the password list (Mosquitto), or on AWS the route the port and
    /// ALPN choose (custom authorizer, client certificate, or never answered).
    async fn authenticate(&mut self, c: &Connect) -> Result<(), End> {
        match self.route() {
            Route::Passwords => {
                let login = c.login.as_ref().map(|l| (l.username.as_str(), l.password.as_str()));
                if !self.shared.users.check(login) {
                    // Mosquitto answers a bad login with CONNACK 5 and closes.
                    self.send(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false)));
                    return Err(End::BadLogin);
                }
            }
            Route::CustomAuth { sni } => {
                if let Err(why) = self.custom_auth(c, sni.as_deref()) {
                    // AWS closes with no CONNACK on any custom-auth failure.
                    return Err(End::NotAuthorised(why));
                }
                self.disconnect_at = Some(Instant::now() + AWS_DISCONNECT_AFTER);
            }
            Route::ClientCert => {}
            Route::NeverAnswer(why) => {
                self.shared
                    .log
                    .print(LogLevel::Notice, || format!("Client {} CONNECT not answered: {why}.", c.client_id));
                self.record(Record::event("unanswered", why.clone()));
                return Err(self.hold_silent(Some(NEVER_ANSWER_HOLD)).await);
            }
        }
        Ok(())
    }

    /// The keepalive served, the will kept, the session attached (taken over from another
    /// link or resumed), then CONNACK and the messages the session kept.
    fn start_session(&mut self, mut c: Connect, client: Arc<str>) {
        let served = self.shared.profile.keepalive(c.keep_alive);
        self.keepalive = (served > 0).then(|| Duration::from_millis(served as u64 * 1500));
        if served != c.keep_alive {
            self.record(Record::event("keepalive", format!("asked {} s, served {} s", c.keep_alive, served)));
        }
        let attach = {
            let mut state = lock(&self.shared.state);
            state.attach(
                &client,
                c.clean_session,
                Attached { conn: self.id, mailbox: self.mailbox.clone() },
                Instant::now(),
            )
        };
        self.attached = true;
        self.log_connected(&c, &client, attach.taken_over);
        self.next_pkid = attach.next_pkid;
        self.qos2_in = attach.qos2_in;
        self.will = c.last_will.take();
        self.send(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, attach.session_present)));
        self.last_in = Instant::now();
        for d in attach.pending {
            self.deliver(d);
        }
    }

    /// Mosquitto 2.0's lines for an accepted CONNECT (src/handle_connect.c,
    /// `connect__on_authorised()`): the user name, never the password.
    fn log_connected(&self, c: &Connect, client: &str, taken_over: bool) {
        let log = self.shared.log;
        if taken_over {
            // "Client %s already connected, closing old connection."
            log.print(LogLevel::Notice, || format!("Client {client} already connected, closing old connection."));
        }
        // "New client connected from %s:%d as %s (p%d, c%d, k%d, u'%s')." (p2 is MQTT 3.1.1)
        log.print(LogLevel::Notice, || {
            let user = c.login.as_ref().map(|l| format!(", u'{}'", l.username)).unwrap_or_default();
            format!(
                "New client connected from {} as {client} (p2, c{}, k{}{user}).",
                self.link.peer, c.clean_session as u8, c.keep_alive
            )
        });
        match &c.last_will {
            // "Will message specified (%ld bytes) (r%d, q%d)." then "\t%s" (the topic)
            Some(w) => {
                log.print(LogLevel::Debug, || {
                    format!(
                        "Will message specified ({} bytes) (r{}, q{}).",
                        w.message.len(),
                        w.retain as u8,
                        w.qos as u8
                    )
                });
                log.print(LogLevel::Debug, || format!("\t{}", w.topic));
            }
            // "No will message specified."
            None => log.print(LogLevel::Debug, || "No will message specified.".into()),
        }
    }

    fn route(&self) -> Route {
        if !self.shared.profile.custom_auth {
            return Route::Passwords;
        }
        if self.websocket.is_some() {
            // MQTT over WSS (or WS) on aws-iot: the custom authorizer; SNI checked on WSS.
            return Route::CustomAuth { sni: self.link.tls.as_ref().map(|t| t.sni.clone().unwrap_or_default()) };
        }
        let Some(tls) = &self.link.tls else {
            // A plain link to the aws-iot profile: served as 443 + ALPN mqtt, no SNI check.
            return Route::CustomAuth { sni: None };
        };
        if tls.mtls_listener {
            return if tls.client_cert {
                Route::ClientCert
            } else {
                Route::NeverAnswer("no client certificate on the mTLS port".into())
            };
        }
        match tls.alpn.as_deref() {
            Some(b"mqtt") => Route::CustomAuth { sni: Some(tls.sni.clone().unwrap_or_default()) },
            Some(b"x-amzn-mqtt-ca") if tls.client_cert => Route::ClientCert,
            Some(b"x-amzn-mqtt-ca") => Route::NeverAnswer("ALPN x-amzn-mqtt-ca without a client certificate".into()),
            Some(other) => Route::NeverAnswer(format!("ALPN '{}' on 443", String::from_utf8_lossy(other))),
            None => Route::NeverAnswer("no ALPN on 443".into()),
        }
    }

    /// AWS's custom authentication: SNI, the authorizer named in the username's query
    /// string (or the default one), then the authorizer's policy.
    fn custom_auth(&self, c: &Connect, sni: Option<&str>) -> Result<(), String> {
        if let Some(sni) = sni {
            if sni != self.shared.endpoint {
                return Err(format!("SNI '{sni}' is not the endpoint '{}'", self.shared.endpoint));
            }
        }
        let username = c.login.as_ref().map(|l| l.username.as_str()).unwrap_or("");
        let parsed = AwsUsername::parse(username)?;
        let upgrade = self.websocket.as_ref().and_then(|w| w.authorizer.as_deref());
        let name = match upgrade.or(parsed.authorizer_name()) {
            Some(n) => n.to_string(),
            None => self
                .shared
                .default_authorizer
                .clone()
                .ok_or("no x-amz-customauthorizer-name in the username and no default authorizer")?,
        };
        let authorizer = self
            .shared
            .authorizers
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| format!("no authorizer named '{name}'"))?;
        match authorizer.decide(c.login.as_ref().map(|l| l.password.as_bytes()))? {
            Effect::Allow => Ok(()),
            Effect::Deny => Err(format!("{name} denied iot:Connect (wrong password)")),
        }
    }

    /// Reads and discards until the client closes (or `hold` passes).
    async fn hold_silent(&mut self, hold: Option<Duration>) -> End {
        let _ = self.flush().await;
        let until = hold.map(|h| Instant::now() + h);
        loop {
            self.rbuf.clear();
            self.rbuf.reserve(256);
            tokio::select! {
                r = self.stream.read_buf(&mut self.rbuf) => if !matches!(r, Ok(n) if n > 0) {
                    return End::Refused("client closed (CONNECT never answered)".into());
                },
                _ = sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => {
                    return End::Refused("CONNECT never answered".into());
                }
            }
        }
    }

    // ---- the session ----

    async fn session(&mut self) -> End {
        let mailbox = self.mailbox.clone();
        let max = self.max_remaining();
        loop {
            // Every whole packet already buffered.
            loop {
                match Packet::read(&mut self.rbuf, max) {
                    Ok(p) => {
                        if let Err(end) = self.on_packet(p) {
                            let _ = self.flush().await;
                            return end;
                        }
                        // Tokio's cooperative budget: a client flooding us yields now and
                        // then, so the clients it publishes to get their turn.
                        tokio::task::consume_budget().await;
                    }
                    Err(mqttbytes::Error::InsufficientBytes(n)) => {
                        self.need = n;
                        break;
                    }
                    Err(e) => return End::Lost(format!("malformed packet: {e}")),
                }
            }
            if let Err(e) = self.flush().await {
                return End::Lost(format!("write error: {e}"));
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 16 * 1024 {
                self.rbuf = BytesMut::new();
            }
            self.rbuf.reserve(self.need.max(if self.rbuf.capacity() > 1024 { 4096 } else { 256 }));
            let keepalive_at = self.keepalive.map(|k| self.last_in + k);
            let next = [keepalive_at, self.faults.drop_at, self.disconnect_at].into_iter().flatten().min();
            tokio::select! {
                r = self.stream.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => return End::ClientClosed,
                    Ok(_) => {}
                    Err(e) => return End::Lost(format!("read error: {e}")),
                },
                _ = mailbox.wait() => {
                    let mut kicked: Option<Kick> = None;
                    for m in mailbox.take() {
                        match m {
                            ToConn::Deliver(d) if kicked.is_none() => self.deliver(d),
                            // After a kick, deliveries stay with the session.
                            ToConn::Deliver(d) => self.waiting.push_back(d),
                            ToConn::Kick(why) => kicked = kicked.or(Some(why)),
                        }
                    }
                    let dropped = mailbox.take_dropped();
                    if dropped > 0 {
                        tracing::debug!(conn = self.id, "{dropped} messages dropped: the client does not read fast enough");
                        self.record(Record::event("dropped", format!("{dropped} messages: the client does not read fast enough")));
                    }
                    if let Some(why) = kicked {
                        let _ = self.flush().await;
                        return End::Kicked(why);
                    }
                }
                // One timer for the earliest deadline keeps an idle connection small.
                _ = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    if keepalive_at.is_some_and(|t| t <= now) {
                        return End::KeepaliveTimeout;
                    }
                    if self.faults.drop_at.is_some_and(|t| t <= now) {
                        self.fault_event("DropAt", "link dropped");
                        return End::Lost("fault: dropped at its time".into());
                    }
                    if self.disconnect_at.is_some_and(|t| t <= now) {
                        return End::Lost("disconnectAfterInSeconds reached".into());
                    }
                }
            }
        }
    }

    fn on_packet(&mut self, p: Packet) -> Result<(), End> {
        self.packets_in += 1;
        self.record_packet(Dir::In, &p);
        let resets_keepalive = self.shared.profile.keepalive_reset_by_any
            || matches!(p, Packet::Publish(_) | Packet::Subscribe(_) | Packet::PingReq | Packet::PubAck(_));
        if resets_keepalive {
            self.last_in = Instant::now();
        }
        if let Some(n) = self.faults.drop_after {
            if self.packets_in >= n {
                self.fault_event("DropAfterPackets", &format!("link dropped after {n} packets"));
                return Err(End::Lost(format!("fault: dropped after {n} packets")));
            }
        }
        match p {
            Packet::Connect(_) => return Err(End::Lost("second CONNECT".into())),
            Packet::Publish(p) => self.on_publish(p)?,
            Packet::PubAck(a) => self.acked(a.pkid, false),
            Packet::PubRec(r) => {
                if let Some(d) = self.inflight.iter_mut().find(|d| d.pkid == r.pkid && !d.released) {
                    d.released = true;
                }
                self.send(&Packet::PubRel(PubRel::new(r.pkid)));
            }
            Packet::PubComp(c) => self.acked(c.pkid, true),
            Packet::PubRel(r) => {
                if let Some((msg, retain)) = self.qos2_in.remove(&r.pkid) {
                    self.forward(msg, QoS::ExactlyOnce, retain);
                }
                self.send(&Packet::PubComp(PubComp::new(r.pkid)));
            }
            Packet::Subscribe(s) => self.on_subscribe(s)?,
            Packet::Unsubscribe(u) => {
                let client = self.client_id();
                let mut state = lock(&self.shared.state);
                for f in &u.topics {
                    state.unsubscribe(&client, f);
                }
                drop(state);
                self.send(&Packet::UnsubAck(UnsubAck::new(u.pkid)));
            }
            Packet::PingReq => {
                if self.faults.no_pingresp {
                    self.fault_event("NoPingresp", "PINGREQ not answered");
                } else {
                    self.send(&Packet::PingResp);
                }
            }
            Packet::Disconnect => return Err(End::Disconnect),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(End::Lost("client sent a server-only packet".into()))
            }
        }
        Ok(())
    }

    fn on_publish(&mut self, p: rumqttc::mqttbytes::v4::Publish) -> Result<(), End> {
        let profile = &self.shared.profile;
        if let Err(e) = topic::validate_name(&p.topic) {
            return Err(End::Lost(format!("PUBLISH to an invalid topic '{}': {e}", p.topic)));
        }
        if profile.dollar_topics_reserved && p.topic.starts_with('$') && !p.topic.starts_with("$aws/") {
            return Err(End::Lost(format!("PUBLISH to the reserved topic '{}'", p.topic)));
        }
        if let Err(e) = profile.check_topic_limits(&p.topic) {
            return Err(End::Lost(format!("PUBLISH: {e}")));
        }
        if let Some(max) = profile.limits.payload_bytes {
            if p.payload.len() > max {
                return Err(End::Lost(format!("payload of {} bytes (limit {max})", p.payload.len())));
            }
        }
        if p.qos == QoS::ExactlyOnce && !profile.qos2 {
            return Err(End::Lost("PUBLISH with QoS 2".into()));
        }
        if p.retain && profile.retain == RetainPolicy::Close {
            return Err(End::Lost("retained PUBLISH without iot:RetainPublish".into()));
        }
        if !self.within_rate() {
            self.record(Record::event("dropped", format!("PUBLISH to {}: over the publish rate limit", p.topic)));
            return Ok(());
        }
        let (qos, retain, pkid) = (p.qos, p.retain, p.pkid);
        let msg = Arc::new(Message { topic: p.topic, payload: p.payload });
        if qos == QoS::ExactlyOnce {
            // Stored now, routed on PUBREL: a re-sent PUBLISH is not delivered twice.
            self.qos2_in.entry(pkid).or_insert((msg, retain));
            self.send(&Packet::PubRec(PubRec::new(pkid)));
        } else {
            self.forward(msg, qos, retain);
            if qos == QoS::AtLeastOnce {
                self.send(&Packet::PubAck(PubAck::new(pkid)));
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: rumqttc::mqttbytes::v4::Subscribe) -> Result<(), End> {
        let shared = self.shared.clone();
        let profile = &shared.profile;
        if let Some(max) = profile.limits.filters_per_subscribe {
            if s.filters.len() > max {
                return Err(End::Lost(format!("SUBSCRIBE with {} filters (limit {max})", s.filters.len())));
            }
        }
        let client = self.client_id();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            for f in &s.filters {
                if f.qos == QoS::ExactlyOnce && !profile.qos2 {
                    return Err(End::Lost("SUBSCRIBE with QoS 2".into()));
                }
                if let Err(e) = profile.check_topic_limits(&f.path) {
                    return Err(End::Lost(format!("SUBSCRIBE: {e}")));
                }
                if let Err(e) = topic::validate_filter(&f.path) {
                    // Mosquitto closes the link on an invalid filter rather than SUBACK 0x80.
                    return Err(End::Lost(format!("SUBSCRIBE to an invalid filter '{}': {e}", f.path)));
                }
                if let Some(max) = profile.limits.subscriptions {
                    if !state.is_subscribed(&client, &f.path) && state.subscription_count(&client) >= max {
                        codes.push(SubscribeReasonCode::Failure);
                        continue;
                    }
                }
                state.subscribe(&client, &f.path, f.qos);
                codes.push(SubscribeReasonCode::Success(f.qos));
                for (msg, qos) in state.retained_for(profile, &f.path) {
                    retained.push(Delivery::new(msg, super::router::min_qos(qos, f.qos), true));
                }
            }
        }
        self.send(&Packet::SubAck(SubAck::new(s.pkid, codes)));
        for d in retained {
            self.deliver(d);
        }
        Ok(())
    }

    /// Routes an application message to its subscribers (and the retained store).
    fn forward(&self, msg: Arc<Message>, qos: QoS, retain: bool) {
        lock(&self.shared.state).publish(&self.shared.profile, msg, qos, retain);
    }

    /// A PUBACK (`comp` false) or PUBCOMP (`comp` true) for `pkid`.
    fn acked(&mut self, pkid: u16, comp: bool) {
        let pos = self
            .inflight
            .iter()
            .position(|d| d.pkid == pkid && if comp { d.released } else { d.qos == QoS::AtLeastOnce });
        if let Some(pos) = pos {
            self.inflight.remove(pos);
        }
        while self.inflight_has_room() {
            match self.waiting.pop_front() {
                Some(d) => self.send_inflight(d),
                None => break,
            }
        }
    }

    fn inflight_has_room(&self) -> bool {
        // Even with the limit off, packet ids are 16 bits (1..=65535) and must stay unique.
        let max = self.shared.profile.limits.inflight.unwrap_or(usize::MAX).min(1024);
        self.inflight.len() < max
    }

    /// Sends (or queues, when the in-flight window is full) one message to the client.
    fn deliver(&mut self, d: Delivery) {
        if !self.within_rate() {
            self.record(Record::event("dropped", format!("delivery of {}: over the publish rate limit", d.msg.topic)));
            return;
        }
        if d.qos == QoS::AtMostOnce {
            self.send_publish(&d, 0, false);
        } else if self.inflight_has_room() && self.waiting.is_empty() {
            self.send_inflight(d);
        } else if self.waiting.len() < super::router::MAX_QUEUED {
            self.waiting.push_back(d);
        } else {
            self.record(Record::event(
                "dropped",
                format!("{}: more than {} messages queued", d.msg.topic, super::router::MAX_QUEUED),
            ));
        }
    }

    fn send_inflight(&mut self, mut d: Delivery) {
        let redelivery = d.pkid != 0;
        if d.pkid == 0 || self.inflight.iter().any(|o| o.pkid == d.pkid) {
            d.pkid = self.alloc_pkid();
        }
        if redelivery && d.released {
            self.send(&Packet::PubRel(PubRel::new(d.pkid)));
            self.inflight.push_back(d);
            return;
        }
        let dup = redelivery && d.dup && self.shared.profile.dup_on_redelivery;
        self.send_publish(&d, d.pkid, dup);
        self.inflight.push_back(d);
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|d| d.pkid == id) {
                return id;
            }
        }
    }

    /// AWS's 100 publishes per second per connection, in and out together.
    fn within_rate(&mut self) -> bool {
        let Some(max) = self.shared.profile.limits.publishes_per_second else { return true };
        let now = Instant::now();
        if now.duration_since(self.rate_window) >= Duration::from_secs(1) {
            self.rate_window = now;
            self.rate_count = 0;
        }
        self.rate_count += 1;
        self.rate_count <= max
    }

    // ---- output ----

    fn send(&mut self, p: &Packet) {
        self.record_packet(Dir::Out, p);
        let start = self.out.len();
        if let Err(e) = p.write(&mut self.out, MQTT_MAX_REMAINING) {
            tracing::warn!(conn = self.id, "cannot encode {p:?}: {e}");
            self.out.truncate(start);
            return;
        }
        self.sent(start);
    }

    /// PUBLISH encoded here rather than through an owned `Publish` (no topic copy per
    /// delivery on the hot path).
    fn send_publish(&mut self, d: &Delivery, pkid: u16, dup: bool) {
        if self.shared.recorder.enabled() || self.shared.log >= LogLevel::Debug {
            let mut p = rumqttc::mqttbytes::v4::Publish::from_bytes(d.msg.topic.clone(), d.qos, d.msg.payload.clone());
            p.pkid = pkid;
            p.retain = d.retain;
            p.dup = dup;
            self.record_packet(Dir::Out, &Packet::Publish(p));
        }
        let start = self.out.len();
        let topic = d.msg.topic.as_bytes();
        let payload = &d.msg.payload;
        let len = 2 + topic.len() + if d.qos == QoS::AtMostOnce { 0 } else { 2 } + payload.len();
        self.out.reserve(5 + len);
        self.out.put_u8(0x30 | (dup as u8) << 3 | (d.qos as u8) << 1 | d.retain as u8);
        let mut x = len;
        loop {
            let mut byte = (x % 128) as u8;
            x /= 128;
            if x > 0 {
                byte |= 0x80;
            }
            self.out.put_u8(byte);
            if x == 0 {
                break;
            }
        }
        self.out.put_u16(topic.len() as u16);
        self.out.put_slice(topic);
        if d.qos != QoS::AtMostOnce {
            self.out.put_u16(pkid);
        }
        self.out.put_slice(payload);
        self.sent(start);
    }

    /// Counts a packet just encoded at `start`, corrupting it if a fault says so.
    fn sent(&mut self, start: usize) {
        self.packets_out += 1;
        if self.faults.corrupt == Some(self.packets_out) {
            self.out[start] &= 0x0f;
            self.fault_event("Corrupt", &format!("packet {} sent with packet type 0", self.packets_out));
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if let Some(d) = self.faults.latency {
            tokio::time::sleep(d).await;
        }
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    // ---- the end ----

    async fn finish(mut self, end: End) {
        let (reason, will) = (end.reason(), end.publishes_will());
        tracing::debug!(conn = self.id, client = ?self.client, "closed: {reason}");
        if let Some(line) = end.log_line(self.client.as_deref().unwrap_or("<unknown>")) {
            self.shared.log.print(LogLevel::Notice, || line);
        }
        self.record(Record::event("close", reason));
        if self.attached {
            let client = self.client_id();
            let now = Instant::now();
            let will = if will { self.will.take() } else { None };
            let mut left = Leftovers {
                unacked: self.inflight.drain(..).map(|d| Delivery { dup: true, ..d }).collect(),
                waiting: std::mem::take(&mut self.waiting),
                next_pkid: self.next_pkid,
                qos2_in: std::mem::take(&mut self.qos2_in),
            };
            let mut state = lock(&self.shared.state);
            // Deliveries that reached the mailbox after the session loop ended stay with
            // the session (pushes happen under the state lock, so none can follow).
            for m in self.mailbox.take() {
                if let ToConn::Deliver(d) = m {
                    left.waiting.push_back(d);
                }
            }
            state.detach(&self.shared.profile, &client, self.id, left, now);
            if let Some(w) = will {
                drop(state);
                self.record(Record::event("will", format!("published to {}", w.topic)));
                // Mosquitto says nothing here; this broker's own line.
                self.shared
                    .log
                    .print(LogLevel::Notice, || format!("Will of client {client} published to '{}'.", w.topic));
                self.forward(Arc::new(Message { topic: w.topic, payload: w.message }), w.qos, w.retain);
            }
        }
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    // ---- records ----

    fn client_id(&self) -> Arc<str> {
        self.client.clone().unwrap_or_else(|| Arc::from(""))
    }

    fn record_packet(&self, dir: Dir, p: &Packet) {
        self.shared.log.print(LogLevel::Debug, || self.packet_line(dir, p));
        if self.shared.recorder.enabled() {
            self.record(Record::packet(dir, p));
        }
    }

    /// Mosquitto 2.0's debug line for a packet in or out (`-v`).
    fn packet_line(&self, dir: Dir, p: &Packet) -> String {
        let id = self.client.as_deref().unwrap_or("<unknown>");
        let (verb, prep) = if dir == Dir::In { ("Received", "from") } else { ("Sending", "to") };
        match p {
            // src/handle_publish.c, src/send_publish.c:
            // "Received PUBLISH from %s (d%d, q%d, r%d, m%d, '%s', ... (%ld bytes))"
            Packet::Publish(m) => format!(
                "{verb} PUBLISH {prep} {id} (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                m.dup as u8,
                m.qos as u8,
                m.retain as u8,
                m.pkid,
                m.topic,
                m.payload.len()
            ),
            // src/send_connack.c: "Sending CONNACK to %s (%d, %d)"
            Packet::ConnAck(a) => format!("Sending CONNACK to {id} ({}, {})", a.session_present as u8, a.code as u8),
            // "Received PINGREQ from %s", "Sending SUBACK to %s", ...
            _ => format!("{verb} {} {prep} {id}", Record::packet(dir, p).kind),
        }
    }

    fn record(&self, mut r: Record) {
        if self.shared.recorder.enabled() {
            r.conn = self.id;
            if r.client.is_none() {
                r.client = self.client.as_deref().map(str::to_string);
            }
            self.push_record(r);
        }
    }

    fn push_record(&self, mut r: Record) {
        r.t_ms = self.shared.elapsed_ms();
        self.shared.recorder.push(r);
    }

    fn fault_event(&self, fault: &str, what: &str) {
        tracing::info!(conn = self.id, client = ?self.client, "fault {fault}: {what}");
        self.shared.log.print(LogLevel::Notice, || {
            format!("Fault {fault}: {what} (client {}).", self.client.as_deref().unwrap_or("<unknown>"))
        });
        self.record(Record::event("fault", format!("{fault}: {what}")));
    }
}

/// The protocol name and level of a buffered CONNECT, if readable.
fn protocol_of(frame: &[u8]) -> Option<(String, u8)> {
    let mut i = 1;
    while frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let len = u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]) as usize;
    let name = frame.get(i + 2..i + 2 + len)?;
    let level = *frame.get(i + 2 + len)?;
    Some((String::from_utf8_lossy(name).into_owned(), level))
}

fn return_code(rc: u8) -> ConnectReturnCode {
    match rc {
        1 => ConnectReturnCode::RefusedProtocolVersion,
        2 => ConnectReturnCode::BadClientId,
        3 => ConnectReturnCode::ServiceUnavailable,
        4 => ConnectReturnCode::BadUserNamePassword,
        _ => ConnectReturnCode::NotAuthorized,
    }
}
