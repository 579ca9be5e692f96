//! One client connection, from the first byte to the close: CONNECT and the profile's
//! checks (auth, limits, faults), then packets in and deliveries out until DISCONNECT,
//! an error, a keepalive timeout or a kick; then the will and the session's leftovers.
//! Generic over the stream, so TCP, TLS and in-memory duplex links run the same code.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectProperties, DisconnectReasonCode,
    LastWill, Login, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel,
    PubRelReason, Publish, PublishProperties, RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

use super::auth::{AwsUsername, Effect};
use super::fault::{Fault, Phase};
use super::log::LogLevel;
use super::profile::{AssignedClientId, RetainPolicy};
use super::record::{Dir, Record};
use super::router::{
    lock, shared_parts, Attached, Delivery, Expiry, Kick, Leftovers, Mailbox, Message, MessageProps, SubOptions, ToConn,
};
use super::v5::{self as wire, Protocol, ReadError};
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
    /// The client broke a rule: an MQTT 5 client gets DISCONNECT with this reason code
    /// (§4.13), then the close; the will is published.
    Violation(DisconnectReasonCode, String),
    /// MQTT 5 DISCONNECT with reason 0x04 "Disconnect with Will Message".
    DisconnectWithWill,
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
            End::Violation(code, r) => format!("{r} (reason code 0x{:02X})", *code as u8),
            End::DisconnectWithWill => "DISCONNECT with will (0x04)".into(),
        }
    }

    /// The DISCONNECT an MQTT 5 client gets before the close, if any.
    fn disconnect_code(&self, takeover_disconnect: bool) -> Option<DisconnectReasonCode> {
        match self {
            End::Violation(code, _) => Some(*code),
            End::Kicked(Kick::TakenOver) if takeover_disconnect => Some(DisconnectReasonCode::SessionTakenOver),
            End::Kicked(Kick::Restart) => Some(DisconnectReasonCode::ServerShuttingDown),
            End::Kicked(Kick::Request) => Some(DisconnectReasonCode::AdministrativeAction),
            _ => None,
        }
    }

    /// Whether the will is published (every close after CONNACK but DISCONNECT).
    fn publishes_will(&self) -> bool {
        match self {
            End::Disconnect | End::Refused(_) | End::BadLogin | End::NotAuthorised(_) => false,
            End::ClientClosed
            | End::KeepaliveTimeout
            | End::Kicked(_)
            | End::Lost(_)
            | End::Violation(..)
            | End::DisconnectWithWill => true,
        }
    }

    /// The foreground log line, as Mosquitto 2.0's `do_disconnect()` (src/loop.c) words it;
    /// `None` where it prints none (the old link of a taken-over session).
    fn log_line(&self, id: &str) -> Option<String> {
        Some(match self {
            // "Client %s disconnected."
            End::Disconnect | End::DisconnectWithWill => format!("Client {id} disconnected."),
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
            End::Refused(why) | End::Lost(why) | End::Violation(_, why) => format!("Client {id} disconnected: {why}."),
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

/// What an MQTT 5 client asked for at CONNECT, and the link's topic aliases.
#[derive(Default)]
struct LinkV5 {
    /// The client's Maximum Packet Size (§3.1.2.11.4): larger packets are not sent to it.
    max_packet: Option<u32>,
    /// Topic aliases the client set on its PUBLISHes (§3.3.2.3.4), alias → topic.
    aliases_in: HashMap<u16, String>,
    /// Session expiry interval in force, seconds (§3.1.2.11.2).
    session_expiry: u32,
    /// Will delay interval, seconds (§3.1.3.2.2).
    will_delay: u32,
    /// The will's properties, published with it.
    will_props: Option<MessageProps>,
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
    /// Boxed: an MQTT 5 will with its properties is large, and most links have none.
    will: Option<Box<LastWill>>,
    attached: bool,
    /// The MQTT the client speaks (3.1.1 until its CONNECT says otherwise).
    proto: Protocol,
    /// MQTT 5 state of the link; `None` for 3.1/3.1.1 clients.
    v5: Option<Box<LinkV5>>,
    /// Outgoing QoS 1/2 messages not yet acknowledged (`released`: PUBREC came).
    inflight: VecDeque<Delivery>,
    waiting: VecDeque<Delivery>,
    next_pkid: u16,
    qos2_in: HashMap<u16, (Arc<Message>, bool)>,
    /// Unacknowledged QoS 1/2 messages to the client at most (the profile's in-flight
    /// limit, lowered to an MQTT 5 client's Receive Maximum).
    send_quota: usize,
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
            proto: Protocol::Mqtt311,
            v5: None,
            inflight: VecDeque::new(),
            waiting: VecDeque::new(),
            next_pkid: 1,
            qos2_in: HashMap::new(),
            send_quota: 1024,
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
        let payload = self.shared.profile.limits.payload_bytes.map_or(MQTT_MAX_REMAINING, |p| p + 2 + 65_535 + 2);
        // An MQTT 5 client was told the Maximum Packet Size in CONNACK (§3.2.2.3.6): the
        // whole packet, so the remaining length is that less the fixed header.
        match (self.proto.is_v5(), self.shared.profile.mqtt5.maximum_packet_size) {
            (true, Some(max)) => payload.min(remaining_within(max as usize)),
            _ => payload,
        }
    }

    /// DISCONNECT for a packet over one of the broker's size limits (the profile's code).
    fn too_large(&self, why: String) -> End {
        End::Violation(wire::disconnect_reason(self.shared.profile.mqtt5.packet_too_large), why)
    }

    // ---- CONNECT ----

    async fn connect(&mut self) -> Result<(), End> {
        let deadline = Instant::now() + CONNECT_WAIT;
        // Read until one whole packet is buffered.
        loop {
            match rumqttc::mqttbytes::check(self.rbuf.iter(), self.max_remaining()) {
                Ok(_) => break,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(n)) => self.need = n,
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
            match Protocol::of(&name, level) {
                Some(p) => self.proto = p,
                None => {
                    let known = name == "MQTT" || name == "MQIsdp";
                    // Mosquitto 2.0 src/handle_connect.c: "Invalid protocol version %d in CONNECT
                    // from %s." / "Invalid protocol \"%s\" in CONNECT from %s."
                    self.shared.log.print(LogLevel::Notice, || match known {
                        true => format!("Invalid protocol version {level} in CONNECT from {}.", self.link.peer),
                        false => format!("Invalid protocol \"{name}\" in CONNECT from {}.", self.link.peer),
                    });
                    self.record(Record::event(
                        "refused",
                        format!("protocol {name} level {level}: MQTT 3.1, 3.1.1 and 5 are served"),
                    ));
                    if known {
                        self.send_connack(ConnectReturnCode::RefusedProtocolVersion, false, None);
                    }
                    return Err(End::Refused(format!("unsupported protocol {name} level {level}")));
                }
            }
        }
        if self.proto == Protocol::Mqtt31 {
            let len = rumqttc::mqttbytes::check(self.rbuf.iter(), self.max_remaining())
                .map(|h| h.frame_length())
                .unwrap_or(self.rbuf.len());
            let rewritten = wire::mqisdp_as_311(&self.rbuf[..len])
                .ok_or_else(|| End::Refused("malformed MQTT 3.1 CONNECT".into()))?;
            let rest = self.rbuf.split_off(len);
            self.rbuf = rewritten;
            self.rbuf.unsplit(rest);
        }
        let max = self.max_remaining();
        let packet = match wire::read(&mut self.rbuf, max, self.proto) {
            Ok(p) => p,
            Err(ReadError::Need(_)) => return Err(End::Refused("malformed CONNECT".into())),
            Err(ReadError::Malformed(e) | ReadError::TooLarge(e)) => {
                return Err(End::Refused(format!("malformed CONNECT: {e}")))
            }
        };
        self.packets_in += 1;
        self.record_packet(Dir::In, &packet);
        match packet {
            Packet::Connect(connect, will, login) => self.accept(connect, will, login).await,
            _ => Err(End::Refused("first packet is not CONNECT".into())),
        }
    }

    /// A CONNECT read: the checks in the order the profile's broker makes them, then the
    /// session and CONNACK.
    async fn accept(&mut self, mut c: Connect, will: Option<LastWill>, login: Option<Login>) -> Result<(), End> {
        if self.proto.is_v5() {
            self.read_connect_properties(&c, will.as_ref())?;
        }
        let assigned = c.client_id.is_empty();
        let client = self.identify(&mut c)?;
        self.connect_faults(&client).await?;
        self.throttle_connects(&client)?;
        self.check_will(will.as_ref())?;
        self.authenticate(&c, login.as_ref()).await?;
        self.start_session(c, will, login, client, assigned);
        Ok(())
    }

    /// An MQTT 5 CONNECT's properties (§3.1.2.11) and will properties (§3.1.3.2).
    fn read_connect_properties(&mut self, c: &Connect, will: Option<&LastWill>) -> Result<(), End> {
        let mut v5 = LinkV5::default();
        if let Some(p) = &c.properties {
            if p.authentication_method.is_some() {
                // No enhanced authentication here (Mosquitto without an auth plugin: 0x8C).
                self.send_connack(ConnectReturnCode::BadAuthenticationMethod, false, None);
                return Err(End::Refused("enhanced authentication is not served".into()));
            }
            if p.receive_maximum == Some(0) || p.max_packet_size == Some(0) {
                // §3.1.2.11.3/4: a value of 0 is a Protocol Error.
                self.send_connack(ConnectReturnCode::ProtocolError, false, None);
                return Err(End::Refused("receive maximum or maximum packet size of 0".into()));
            }
            v5.session_expiry = p.session_expiry_interval.unwrap_or(0);
            v5.max_packet = p.max_packet_size;
            if let Some(rm) = p.receive_maximum {
                self.send_quota = rm as usize;
            }
        }
        if let Some(w) = will {
            if let Some(wp) = &w.properties {
                v5.will_delay = wp.delay_interval.unwrap_or(0);
                let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    payload_format_indicator: wp.payload_format_indicator,
                    content_type: wp.content_type.clone(),
                    response_topic: wp.response_topic.clone(),
                    correlation_data: wp.correlation_data.clone(),
                    user_properties: wp.user_properties.clone(),
                    ..Default::default()
                };
                v5.will_props = Some(MessageProps {
                    properties,
                    expires: wp.message_expiry_interval.map(|s| Instant::now() + Duration::from_secs(s as u64)),
                });
            }
        }
        self.v5 = Some(Box::new(v5));
        Ok(())
    }

    /// The client identifier: an empty one gets a generated id if the session is clean
    /// (3.1.1 MQTT-3.1.3-6/7: else CONNACK 2; MQTT 5 §3.1.3.1: always, and CONNACK
    /// carries it as the Assigned Client Identifier; MQTT 3.1 never); AWS refuses ids
    /// over its limit.
    fn identify(&mut self, c: &mut Connect) -> Result<Arc<str>, End> {
        if c.client_id.is_empty() {
            if self.proto == Protocol::Mqtt31 || (self.proto == Protocol::Mqtt311 && !c.clean_start) {
                self.send_connack(ConnectReturnCode::BadClientId, false, None);
                return Err(End::Refused("empty client id with a persistent session".into()));
            }
            c.client_id = match self.shared.profile.mqtt5.assigned_client_id {
                AssignedClientId::ConnectionNumber => format!("auto-{:08X}", self.id),
                AssignedClientId::GenUuid => format!("$GEN/{}", random_uuid()),
            };
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
                    self.send_connack(wire::connack_code_of(rc), false, None);
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
        let will_topic = String::from_utf8_lossy(&will.topic);
        if std::str::from_utf8(&will.topic).is_err() || topic::validate_name(&will_topic).is_err() {
            return Err(End::Refused(format!("invalid will topic '{will_topic}'")));
        }
        if will.qos == QoS::ExactlyOnce && !profile.qos2 {
            return Err(End::Refused("will with QoS 2".into()));
        }
        if will.retain && profile.retain == RetainPolicy::Close {
            return Err(End::Refused("retained will without iot:RetainPublish".into()));
        }
        if let Err(e) = profile.check_topic_limits(&will_topic) {
            return Err(End::Refused(format!("will topic: {e}")));
        }
        Ok(())
    }

    /// Who may connect: the password list (Mosquitto), or on AWS the route the port and
    /// ALPN choose (custom authorizer, client certificate, or never answered).
    async fn authenticate(&mut self, c: &Connect, login: Option<&Login>) -> Result<(), End> {
        match self.route() {
            Route::Passwords => {
                let login = login.map(|l| (l.username.as_str(), l.password.as_str()));
                if !self.shared.users.check(login) {
                    // Mosquitto answers a bad login with CONNACK 5 (MQTT 5: 0x87) and closes.
                    self.send_connack(ConnectReturnCode::NotAuthorized, false, None);
                    return Err(End::BadLogin);
                }
            }
            Route::CustomAuth { sni } => {
                if let Err(why) = self.custom_auth(login, sni.as_deref()) {
                    // AWS closes with no CONNACK on a 3.1.1 custom-auth failure; an MQTT 5
                    // client gets the profile's reason code.
                    if let (true, Some(code)) = (self.proto.is_v5(), self.shared.profile.mqtt5.custom_auth_refusal) {
                        let code = connack_reason(code);
                        self.send_connack(code, false, None);
                    }
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
    fn start_session(
        &mut self,
        c: Connect,
        will: Option<LastWill>,
        login: Option<Login>,
        client: Arc<str>,
        assigned: bool,
    ) {
        let profile = &self.shared.profile;
        let served = profile.keepalive(c.keep_alive);
        self.keepalive = (served > 0).then(|| Duration::from_millis(served as u64 * 1500));
        if served != c.keep_alive {
            self.record(Record::event("keepalive", format!("asked {} s, served {} s", c.keep_alive, served)));
        }
        self.send_quota = self.send_quota.min(profile.limits.inflight.unwrap_or(usize::MAX)).min(1024);
        // When the session ends: 3.1.1's clean session flag, or MQTT 5's session expiry
        // interval (0: with the connection; 0xFFFFFFFF: never; §3.1.2.11.2), capped by the
        // profile.
        let mut expiry_served = None;
        let ends = match self.v5.as_deref_mut() {
            None => Expiry { at_close: c.clean_start, after: profile.session_expiry() },
            Some(v5) => {
                // AWS: "If the value you set exceeds the maximum of your account, AWS IoT
                // Core will return the adjusted value in the CONNACK" (D#mqtt-persistent-sessions).
                if let Some(max) = profile.limits.session_expiry {
                    if v5.session_expiry > max {
                        v5.session_expiry = max;
                        expiry_served = Some(max);
                    }
                }
                Expiry { at_close: v5.session_expiry == 0, after: expiry_after(v5.session_expiry) }
            }
        };
        let attach = {
            let mut state = lock(&self.shared.state);
            // AWS: MQTT 3 and 5 sessions do not resume each other (D#mqtt-persistent-sessions).
            let family = (!profile.mqtt5.sessions_cross_protocol).then_some(self.proto.is_v5());
            state.attach(
                &client,
                c.clean_start,
                ends,
                Attached { conn: self.id, mailbox: self.mailbox.clone() },
                Instant::now(),
                family,
            )
        };
        self.attached = true;
        self.log_connected(&c, will.as_ref(), login.as_ref(), &client, attach.taken_over);
        self.next_pkid = attach.next_pkid;
        self.qos2_in = attach.qos2_in;
        self.will = will.map(Box::new);
        let properties = self.proto.is_v5().then(|| {
            let rules = &self.shared.profile.mqtt5;
            ConnAckProperties {
                session_expiry_interval: expiry_served,
                receive_max: rules.receive_maximum,
                max_qos: (!self.shared.profile.qos2).then_some(1),
                retain_available: (self.shared.profile.retain == RetainPolicy::Close
                    && rules.retain_refusal == wire::disconnect_code(DisconnectReasonCode::RetainNotSupported))
                .then_some(0),
                max_packet_size: rules.maximum_packet_size,
                assigned_client_identifier: assigned.then(|| client.to_string()),
                topic_alias_max: (rules.topic_alias_maximum > 0).then_some(rules.topic_alias_maximum),
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: (!rules.subscription_identifiers).then_some(0),
                shared_subscription_available: (!rules.shared_subscriptions).then_some(0),
                server_keep_alive: (served != c.keep_alive).then_some(served),
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }
        });
        self.send_connack(ConnectReturnCode::Success, attach.session_present, properties);
        self.last_in = Instant::now();
        for d in attach.pending {
            self.deliver(d);
        }
    }

    fn send_connack(&mut self, code: ConnectReturnCode, session_present: bool, properties: Option<ConnAckProperties>) {
        self.send(&Packet::ConnAck(ConnAck { session_present, code, properties }));
    }

    /// Mosquitto 2.0's lines for an accepted CONNECT (src/handle_connect.c,
    /// `connect__on_authorised()`): the user name, never the password.
    fn log_connected(
        &self,
        c: &Connect,
        will: Option<&LastWill>,
        login: Option<&Login>,
        client: &str,
        taken_over: bool,
    ) {
        let log = self.shared.log;
        if taken_over {
            // "Client %s already connected, closing old connection."
            log.print(LogLevel::Notice, || format!("Client {client} already connected, closing old connection."));
        }
        // "New client connected from %s:%d as %s (p%d, c%d, k%d, u'%s')." (p1 MQTT 3.1, p2
        // 3.1.1, p5 5.0)
        log.print(LogLevel::Notice, || {
            let user = login.map(|l| format!(", u'{}'", l.username)).unwrap_or_default();
            format!(
                "New client connected from {} as {client} (p{}, c{}, k{}{user}).",
                self.link.peer,
                self.proto.log_number(),
                c.clean_start as u8,
                c.keep_alive
            )
        });
        match will {
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
                log.print(LogLevel::Debug, || format!("\t{}", String::from_utf8_lossy(&w.topic)));
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
    fn custom_auth(&self, login: Option<&Login>, sni: Option<&str>) -> Result<(), String> {
        if let Some(sni) = sni {
            if sni != self.shared.endpoint {
                return Err(format!("SNI '{sni}' is not the endpoint '{}'", self.shared.endpoint));
            }
        }
        let username = login.map(|l| l.username.as_str()).unwrap_or("");
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
        match authorizer.decide(login.map(|l| l.password.as_bytes()))? {
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
                // The packet is read and handled in a block that ends before any await: an
                // MQTT 5 `Packet` is several hundred bytes, and a value alive across an
                // await would sit in every idle connection's future.
                let handled = match wire::read(&mut self.rbuf, max, self.proto) {
                    Ok(p) => self.on_packet(p),
                    Err(ReadError::Need(n)) => {
                        self.need = n;
                        break;
                    }
                    Err(ReadError::Malformed(e)) => {
                        return End::Violation(DisconnectReasonCode::MalformedPacket, format!("malformed packet: {e}"))
                    }
                    Err(ReadError::TooLarge(e)) => return self.too_large(format!("packet too large: {e}")),
                };
                if let Err(end) = handled {
                    let _ = self.flush().await;
                    return end;
                }
                // Tokio's cooperative budget: a client flooding us yields now and then, so
                // the clients it publishes to get their turn.
                tokio::task::consume_budget().await;
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
            || matches!(p, Packet::Publish(_) | Packet::Subscribe(_) | Packet::PingReq(_) | Packet::PubAck(_));
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
            Packet::Connect(..) => {
                return Err(End::Violation(DisconnectReasonCode::ProtocolError, "second CONNECT".into()))
            }
            Packet::Publish(p) => self.on_publish(p)?,
            Packet::PubAck(a) => self.acked(a.pkid, false),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_)
                if self.proto.is_v5() && !self.shared.profile.mqtt5.qos2_flow =>
            {
                // AWS: no PUBREC, PUBREL or PUBCOMP in MQTT 5 (D#mqtt-differences).
                return Err(End::Violation(
                    DisconnectReasonCode::ProtocolError,
                    "PUBREC, PUBREL or PUBCOMP: QoS 2 is not served".into(),
                ));
            }
            Packet::PubRec(r) => {
                let failed = !matches!(r.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers);
                if failed {
                    // §4.3.3: a PUBREC reason code >= 0x80 ends the exchange; no PUBREL.
                    self.acked_failed(r.pkid);
                    return Ok(());
                }
                if let Some(d) = self.inflight.iter_mut().find(|d| d.pkid == r.pkid && !d.released) {
                    d.released = true;
                }
                // Mosquitto answers an unknown id with PUBREL 0x00 too (§3.6.2.1 would allow 0x92).
                self.send(&Packet::PubRel(PubRel { pkid: r.pkid, reason: PubRelReason::Success, properties: None }));
            }
            Packet::PubComp(c) => self.acked(c.pkid, true),
            Packet::PubRel(r) => {
                let reason = match self.qos2_in.remove(&r.pkid) {
                    Some((msg, retain)) => {
                        self.forward(msg, QoS::ExactlyOnce, retain);
                        PubCompReason::Success
                    }
                    // Mosquitto 2.0.11 answers 0x00 (tests/conformance_v5.rs ack_reason_codes).
                    None => PubCompReason::Success,
                };
                self.send(&Packet::PubComp(PubComp { pkid: r.pkid, reason, properties: None }));
            }
            Packet::Subscribe(s) => self.on_subscribe(s)?,
            Packet::Unsubscribe(u) => {
                let client = self.client_id();
                let mut state = lock(&self.shared.state);
                let reasons: Vec<UnsubAckReason> = u
                    .filters
                    .iter()
                    .map(|f| match state.unsubscribe(&client, f) {
                        true => UnsubAckReason::Success,
                        false => UnsubAckReason::NoSubscriptionExisted,
                    })
                    .collect();
                drop(state);
                self.send(&Packet::UnsubAck(UnsubAck { pkid: u.pkid, reasons, properties: None }));
            }
            Packet::PingReq(_) => {
                if self.faults.no_pingresp {
                    self.fault_event("NoPingresp", "PINGREQ not answered");
                } else {
                    self.send(&Packet::PingResp(PingResp));
                }
            }
            Packet::Disconnect(d) => return Err(self.on_disconnect(d)),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp(_) | Packet::Auth(_) => {
                return Err(End::Violation(
                    DisconnectReasonCode::ProtocolError,
                    "client sent a server-only packet".into(),
                ))
            }
        }
        Ok(())
    }

    /// A QoS 2 delivery the client refused at PUBREC: it is done with.
    fn acked_failed(&mut self, pkid: u16) {
        if let Some(pos) = self.inflight.iter().position(|d| d.pkid == pkid) {
            self.inflight.remove(pos);
        }
        self.refill();
    }

    /// The client's DISCONNECT (MQTT 5 §3.14): its reason code says whether the will is
    /// published; its Session Expiry Interval replaces the CONNECT's (0 → non-zero is a
    /// Protocol Error, §3.14.2.2.2).
    fn on_disconnect(&mut self, d: Disconnect) -> End {
        let asked = d.properties.as_ref().and_then(|p| p.session_expiry_interval);
        if let (Some(asked), Some(v5)) = (asked, self.v5.as_deref_mut()) {
            if v5.session_expiry == 0 && asked != 0 {
                return End::Violation(
                    DisconnectReasonCode::ProtocolError,
                    "DISCONNECT sets a session expiry on a session that had none".into(),
                );
            }
            let asked = self.shared.profile.limits.session_expiry.map_or(asked, |m| asked.min(m));
            v5.session_expiry = asked;
            let client = self.client_id();
            lock(&self.shared.state).set_expiry(&client, Expiry { at_close: asked == 0, after: expiry_after(asked) });
        }
        match d.reason_code {
            DisconnectReasonCode::DisconnectWithWillMessage => End::DisconnectWithWill,
            _ => End::Disconnect,
        }
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<(), End> {
        let shared = self.shared.clone();
        let profile = &shared.profile;
        let mut props = p.properties.take();
        let topic = self.publish_topic(&p, props.as_mut())?;
        if let Err(e) = topic::validate_name(&topic) {
            return Err(End::Violation(
                DisconnectReasonCode::TopicNameInvalid,
                format!("PUBLISH to an invalid topic '{topic}': {e}"),
            ));
        }
        if profile.dollar_topics_reserved && topic.starts_with('$') && !topic.starts_with("$aws/") {
            return Err(End::Violation(
                DisconnectReasonCode::TopicNameInvalid,
                format!("PUBLISH to the reserved topic '{topic}'"),
            ));
        }
        if let Err(e) = profile.check_topic_limits(&topic) {
            return Err(End::Violation(DisconnectReasonCode::TopicNameInvalid, format!("PUBLISH: {e}")));
        }
        if let Some(max) = profile.limits.payload_bytes {
            if p.payload.len() > max {
                return Err(self.too_large(format!("payload of {} bytes (limit {max})", p.payload.len())));
            }
        }
        if p.qos == QoS::ExactlyOnce && !profile.qos2 {
            return Err(End::Violation(DisconnectReasonCode::QoSNotSupported, "PUBLISH with QoS 2".into()));
        }
        if p.retain && profile.retain == RetainPolicy::Close {
            return Err(End::Violation(
                wire::disconnect_reason(profile.mqtt5.retain_refusal),
                "retained PUBLISH without iot:RetainPublish".into(),
            ));
        }
        if p.qos == QoS::ExactlyOnce && self.proto.is_v5() && !self.qos2_in.contains_key(&p.pkid) {
            // §3.3.4: more unacknowledged QoS 2 PUBLISHes than the Receive Maximum we sent.
            let max = profile.mqtt5.receive_maximum.unwrap_or(u16::MAX) as usize;
            if self.qos2_in.len() >= max {
                return Err(End::Violation(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                    format!("more than {max} QoS 2 PUBLISHes unacknowledged"),
                ));
            }
        }
        let msg_props = match props {
            Some(props) => Some(Box::new(self.message_props(props)?)),
            None => None,
        };
        if !self.within_rate() {
            self.record(Record::event("dropped", format!("PUBLISH to {topic}: over the publish rate limit")));
            return Ok(());
        }
        let (qos, retain, pkid) = (p.qos, p.retain, p.pkid);
        let msg = Arc::new(Message { topic, payload: p.payload, props: msg_props });
        if qos == QoS::ExactlyOnce {
            // Stored now, routed on PUBREL: a re-sent PUBLISH is not delivered twice.
            self.qos2_in.entry(pkid).or_insert((msg, retain));
            self.send(&Packet::PubRec(PubRec { pkid, reason: PubRecReason::Success, properties: None }));
        } else {
            let reached = self.forward(msg, qos, retain);
            if qos == QoS::AtLeastOnce {
                // 0x10 where the profile's PUBACK codes have it (AWS's do not: 0x00).
                let reason = if reached == 0 { PubAckReason::NoMatchingSubscribers } else { PubAckReason::Success };
                self.send(&Packet::PubAck(PubAck { pkid, reason, properties: None }));
            }
        }
        Ok(())
    }

    /// The topic of a PUBLISH: its topic name, or the one its Topic Alias stands for
    /// (MQTT 5 §3.3.2.3.4).
    fn publish_topic(
        &mut self,
        p: &Publish,
        props: Option<&mut rumqttc::v5::mqttbytes::v5::PublishProperties>,
    ) -> Result<String, End> {
        let Ok(name) = std::str::from_utf8(&p.topic) else {
            return Err(End::Violation(DisconnectReasonCode::MalformedPacket, "PUBLISH topic is not UTF-8".into()));
        };
        let alias = props.and_then(|p| p.topic_alias.take());
        let max = self.shared.profile.mqtt5.topic_alias_maximum;
        let Some(v5) = self.v5.as_deref_mut() else { return Ok(name.to_string()) };
        match alias {
            None if name.is_empty() => Err(End::Violation(
                DisconnectReasonCode::ProtocolError,
                "PUBLISH with an empty topic and no topic alias".into(),
            )),
            None => Ok(name.to_string()),
            Some(a) if a == 0 || a > max => Err(End::Violation(
                DisconnectReasonCode::TopicAliasInvalid,
                format!("topic alias {a} (the broker's maximum is {max})"),
            )),
            Some(a) if name.is_empty() => v5.aliases_in.get(&a).cloned().ok_or_else(|| {
                End::Violation(DisconnectReasonCode::ProtocolError, format!("topic alias {a} was never set"))
            }),
            Some(a) => {
                v5.aliases_in.insert(a, name.to_string());
                Ok(name.to_string())
            }
        }
    }

    /// What a PUBLISH's properties pass on to subscribers (§3.3.2.3): all but the topic
    /// alias; the message expiry interval becomes an instant. A client may not send
    /// subscription identifiers (§3.3.4).
    fn message_props(&self, mut p: rumqttc::v5::mqttbytes::v5::PublishProperties) -> Result<MessageProps, End> {
        if !p.subscription_identifiers.is_empty() {
            return Err(End::Violation(
                DisconnectReasonCode::ProtocolError,
                "PUBLISH from a client carries a subscription identifier".into(),
            ));
        }
        if let Some(max) = self.shared.profile.mqtt5.user_properties_bytes {
            let size: usize = p.user_properties.iter().map(|(k, v)| k.len() + v.len()).sum();
            if size > max {
                return Err(self.too_large(format!("user properties of {size} bytes (limit {max})")));
            }
        }
        p.topic_alias = None;
        let expires = p
            .message_expiry_interval
            .take()
            .map(|s| Instant::now() + Duration::from_secs(self.shared.profile.message_expiry(s) as u64));
        Ok(MessageProps { properties: p, expires })
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let shared = self.shared.clone();
        let profile = &shared.profile;
        if let Some(max) = profile.limits.filters_per_subscribe {
            if s.filters.len() > max {
                return Err(End::Violation(
                    DisconnectReasonCode::QuotaExceeded,
                    format!("SUBSCRIBE with {} filters (limit {max})", s.filters.len()),
                ));
            }
        }
        let id = s.properties.as_ref().and_then(|p| p.id).unwrap_or(0);
        if id != 0 && !profile.mqtt5.subscription_identifiers {
            return Err(End::Violation(
                DisconnectReasonCode::SubscriptionIdentifiersNotSupported,
                "SUBSCRIBE with a subscription identifier".into(),
            ));
        }
        let v5 = self.proto.is_v5();
        let client = self.client_id();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            for f in &s.filters {
                let mut qos = f.qos;
                if qos == QoS::ExactlyOnce && !profile.qos2 {
                    if !v5 {
                        return Err(End::Lost("SUBSCRIBE with QoS 2".into()));
                    }
                    // MQTT 5 §3.9.3: the broker may grant a lower QoS (its Maximum QoS).
                    qos = QoS::AtLeastOnce;
                }
                let share = shared_parts(&f.path);
                let inner = share.map_or(f.path.as_str(), |(_, inner)| inner);
                // A shared subscription's limits are its filter's: AWS does not count the
                // `$share/<name>/` prefix (D#mqtt5-shared-subscription).
                if let Err(e) = profile.check_topic_limits(inner) {
                    return Err(End::Violation(DisconnectReasonCode::TopicFilterInvalid, format!("SUBSCRIBE: {e}")));
                }
                let group_ok = share.is_none_or(|(g, _)| !g.is_empty() && !g.contains(['+', '#']));
                if let (Err(e), _) | (Ok(()), Err(e)) = (
                    topic::validate_filter(inner),
                    if group_ok { Ok(()) } else { Err(topic::TopicError::MisplacedPlus) },
                ) {
                    // Mosquitto closes the link on an invalid filter rather than SUBACK 0x80
                    // (MQTT 5: DISCONNECT 0x81 first).
                    return Err(End::Violation(
                        DisconnectReasonCode::MalformedPacket,
                        format!("SUBSCRIBE to an invalid filter '{}': {e}", f.path),
                    ));
                }
                if let Some((group, _)) = share {
                    if !profile.mqtt5.shared_subscriptions {
                        codes.push(SubscribeReasonCode::SharedSubscriptionsNotSupported);
                        continue;
                    }
                    if profile.mqtt5.share_name_chars.is_some_and(|max| group.chars().count() > max) {
                        codes.push(SubscribeReasonCode::TopicFilterInvalid);
                        continue;
                    }
                    if f.nolocal && v5 {
                        // MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
                        return Err(End::Violation(
                            DisconnectReasonCode::ProtocolError,
                            "No Local on a shared subscription".into(),
                        ));
                    }
                }
                if let Some(max) = profile.limits.subscriptions {
                    if !state.is_subscribed(&client, &f.path) && state.subscription_count(&client) >= max {
                        codes.push(if v5 { SubscribeReasonCode::QuotaExceeded } else { SubscribeReasonCode::Failure });
                        continue;
                    }
                }
                let options =
                    SubOptions { qos, no_local: f.nolocal, retain_as_published: f.preserve_retain, id: id as u32 };
                let existed = state.subscribe(&client, &f.path, options);
                codes.push(SubscribeReasonCode::Success(qos));
                // Retain handling (§3.8.3.1): 0 always, 1 only for a new subscription, 2
                // never; shared subscriptions get no retained messages (§4.8.2).
                let send_retained = share.is_none()
                    && match f.retain_forward_rule {
                        RetainForwardRule::OnEverySubscribe => true,
                        RetainForwardRule::OnNewSubscribe => !existed,
                        RetainForwardRule::Never => false,
                    };
                if send_retained {
                    for (msg, rqos) in state.retained_for(profile, &f.path) {
                        let mut d = Delivery::new(msg, super::router::min_qos(rqos, qos), true);
                        if id != 0 {
                            d.sub_ids.push(id as u32);
                        }
                        retained.push(d);
                    }
                }
            }
        }
        self.send(&Packet::SubAck(SubAck { pkid: s.pkid, return_codes: codes, properties: None }));
        for d in retained {
            self.deliver(d);
        }
        Ok(())
    }

    /// Routes an application message to its subscribers (and the retained store);
    /// returns how many clients it went to.
    fn forward(&self, msg: Arc<Message>, qos: QoS, retain: bool) -> usize {
        let origin = self.client.as_ref();
        self.shared.expire_retained_later(&msg, retain);
        lock(&self.shared.state).publish(&self.shared.profile, msg, qos, retain, origin)
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
        self.refill();
    }

    /// Sends waiting messages while the in-flight window has room.
    fn refill(&mut self) {
        while self.inflight_has_room() {
            match self.waiting.pop_front() {
                Some(d) => self.send_inflight(d),
                None => break,
            }
        }
    }

    fn inflight_has_room(&self) -> bool {
        // Even with the limit off, packet ids are 16 bits (1..=65535) and must stay unique.
        // An MQTT 5 client's Receive Maximum lowers it (§4.9).
        self.inflight.len() < self.send_quota
    }

    /// Sends (or queues, when the in-flight window is full) one message to the client.
    fn deliver(&mut self, d: Delivery) {
        if d.msg.props.is_some() && d.msg.expired(Instant::now()) {
            // MQTT 5 §3.3.2.3.3: an expired message is not delivered.
            self.record(Record::event("expired", format!("{}: message expiry interval passed", d.msg.topic)));
            return;
        }
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
            self.send(&Packet::PubRel(PubRel { pkid: d.pkid, reason: PubRelReason::Success, properties: None }));
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
        let folded = match (self.proto.is_v5(), &self.shared.profile.mqtt5.codes) {
            (true, Some(codes)) => wire::fold_codes(p, codes),
            _ => None,
        };
        let p = folded.as_ref().unwrap_or(p);
        let start = self.out.len();
        match wire::write(p, self.proto, &mut self.out) {
            // Recorded only when it goes on the wire (a 3.1.1 client gets no DISCONNECT).
            Ok(true) => self.record_packet(Dir::Out, p),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(conn = self.id, "cannot encode {p:?}: {e}");
                self.out.truncate(start);
                return;
            }
        }
        self.sent(start);
    }

    /// PUBLISH encoded here rather than through an owned `Publish` (no topic copy per
    /// delivery on the hot path). An MQTT 5 client gets the message's properties, its
    /// remaining expiry interval (§3.3.2.3.3) and the matching subscription identifiers.
    fn send_publish(&mut self, d: &Delivery, pkid: u16, dup: bool) {
        let mut props = BytesMut::new();
        if self.proto.is_v5() {
            let mut p = d.msg.props.as_ref().map(|m| m.properties.clone()).unwrap_or_default();
            if let Some(expires) = d.msg.props.as_ref().and_then(|m| m.expires) {
                let left = expires.saturating_duration_since(Instant::now());
                p.message_expiry_interval = Some(left.as_secs_f64().ceil() as u32);
            }
            p.subscription_identifiers = d.sub_ids.iter().map(|&id| id as usize).collect();
            if p != Default::default() {
                if let Err(e) = p.write(&mut props) {
                    tracing::warn!(conn = self.id, "cannot encode the properties of a PUBLISH: {e}");
                    return;
                }
            } else {
                props.put_u8(0);
            }
        }
        if self.shared.recorder.enabled() || self.shared.log >= LogLevel::Debug {
            // The record shows the user properties an MQTT 5 client gets.
            let user_properties = match (self.proto.is_v5(), d.msg.props.as_deref()) {
                (true, Some(m)) if !m.properties.user_properties.is_empty() => Some(PublishProperties {
                    user_properties: m.properties.user_properties.clone(),
                    ..Default::default()
                }),
                _ => None,
            };
            let mut p = Publish::new(d.msg.topic.clone(), d.qos, d.msg.payload.clone(), user_properties);
            p.pkid = pkid;
            p.retain = d.retain;
            p.dup = dup;
            self.record_packet(Dir::Out, &Packet::Publish(p));
        }
        let topic = d.msg.topic.as_bytes();
        let payload = &d.msg.payload;
        let len = 2 + topic.len() + if d.qos == QoS::AtMostOnce { 0 } else { 2 } + props.len() + payload.len();
        if let Some(max) = self.v5.as_ref().and_then(|v| v.max_packet) {
            // §3.1.2.11.4: a packet over the client's Maximum Packet Size is not sent (the
            // message counts as delivered).
            if 1 + remaining_length_len(len) + len > max as usize {
                self.record(Record::event(
                    "dropped",
                    format!("PUBLISH to {}: over the client's maximum packet size of {max} bytes", d.msg.topic),
                ));
                return;
            }
        }
        let start = self.out.len();
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
        self.out.put_slice(&props);
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
        if self.proto.is_v5() && self.attached {
            if let Some(code) = end.disconnect_code(self.shared.profile.mqtt5.takeover_disconnect) {
                let properties = None::<DisconnectProperties>;
                self.send(&Packet::Disconnect(Disconnect { reason_code: code, properties }));
            }
        }
        tracing::debug!(conn = self.id, client = ?self.client, "closed: {reason}");
        if let Some(line) = end.log_line(self.client.as_deref().unwrap_or("<unknown>")) {
            self.shared.log.print(LogLevel::Notice, || line);
        }
        self.record(Record::event("close", reason));
        if self.attached {
            let client = self.client_id();
            let now = Instant::now();
            let will = if will { self.will.take().map(|w| *w) } else { None };
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
            state.detach(&client, self.id, left, now);
            if let Some(w) = will {
                let (delay, session) = match self.v5.as_deref() {
                    Some(v5) => (v5.will_delay, v5.session_expiry),
                    None => (0, 0),
                };
                // §3.1.3.2.2: the will waits for its delay or the session's end, whichever
                // comes first; a new connection for the client cancels it.
                let delay = delay.min(session);
                let props = self.v5.as_mut().and_then(|v| v.will_props.take()).map(Box::new);
                let msg = Arc::new(Message {
                    topic: String::from_utf8_lossy(&w.topic).into_owned(),
                    payload: w.message,
                    props,
                });
                if delay > 0 {
                    state.delayed_wills.insert(client.clone(), self.id);
                    drop(state);
                    self.record(Record::event("will", format!("{} s will delay for {}", delay, msg.topic)));
                    let shared = self.shared.clone();
                    let conn = self.id;
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(delay as u64)).await;
                        let mut state = lock(&shared.state);
                        if state.delayed_wills.get(&client) == Some(&conn) {
                            state.delayed_wills.remove(&client);
                            shared.expire_retained_later(&msg, w.retain);
                            state.publish(&shared.profile, msg, w.qos, w.retain, Some(&client));
                        }
                    });
                } else {
                    drop(state);
                    self.record(Record::event("will", format!("published to {}", msg.topic)));
                    // Mosquitto says nothing here; this broker's own line.
                    self.shared
                        .log
                        .print(LogLevel::Notice, || format!("Will of client {client} published to '{}'.", msg.topic));
                    self.forward(msg, w.qos, w.retain);
                }
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
            // The codes as they go on the wire for this client (3.1.1's fold, or none).
            self.record(Record::packet_as(dir, p, self.proto));
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
                String::from_utf8_lossy(&m.topic),
                m.payload.len()
            ),
            // src/send_connack.c: "Sending CONNACK to %s (%d, %d)"
            Packet::ConnAck(a) => format!(
                "Sending CONNACK to {id} ({}, {})",
                a.session_present as u8,
                if self.proto.is_v5() { wire::connack_byte(a.code) } else { wire::connack_byte_v4(a.code) }
            ),
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

/// A 5.0 CONNACK reason code from its byte (the profile keeps it as a number).
fn connack_reason(code: u8) -> ConnectReturnCode {
    match code {
        0x80 => ConnectReturnCode::UnspecifiedError,
        0x86 => ConnectReturnCode::BadUserNamePassword,
        0x88 => ConnectReturnCode::ServerUnavailable,
        0x89 => ConnectReturnCode::ServerBusy,
        0x8A => ConnectReturnCode::Banned,
        0x8C => ConnectReturnCode::BadAuthenticationMethod,
        0x9F => ConnectReturnCode::ConnectionRateExceeded,
        _ => ConnectReturnCode::NotAuthorized,
    }
}

/// Seconds of MQTT 5 session expiry as the session keeps them (0xFFFFFFFF: no limit).
fn expiry_after(seconds: u32) -> Option<Duration> {
    (seconds != u32::MAX).then(|| Duration::from_secs(seconds as u64))
}

/// The largest remaining length of a packet of at most `max` bytes in all.
fn remaining_within(max: usize) -> usize {
    // The fixed header is 1 byte and 1..=4 of remaining length: at most 3 steps down.
    let mut len = max.saturating_sub(2);
    while len > 0 && 1 + remaining_length_len(len) + len > max {
        len -= 1;
    }
    len
}

/// A random version 4 UUID (RFC 9562 §5.4), from the standard library's per-process
/// random hash keys (no dependency for one assigned client id).
fn random_uuid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.finish()
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let (a, b) = (word(nanos), word(!nanos));
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000; // variant 10
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000; // version 4
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

/// How many bytes the remaining length `len` takes.
fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Broker, Config, Dir, LinkInfo, ProfileName, Record};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A broker keeping its records in memory, `bob:secret` its one user when `users`.
    fn broker(users: bool, shared_subscriptions: bool) -> Broker {
        let mut config = Config::new(ProfileName::Plain);
        config.record_in_memory = true;
        config.profile.mqtt5.shared_subscriptions = shared_subscriptions;
        if users {
            config.users.add("bob:secret").unwrap();
        }
        Broker::new(config)
    }

    /// A CONNECT with client id `c`, keepalive 60, clean, and `bob`'s login if given.
    fn connect(level: u8, password: Option<&str>) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, if password.is_some() { 0xC2 } else { 0x02 }, 0, 60];
        if level == 5 {
            body.push(0); // no properties
        }
        body.extend_from_slice(&[0, 1, b'c']);
        if let Some(pw) = password {
            body.extend_from_slice(&[0, 3, b'b', b'o', b'b', 0, pw.len() as u8]);
            body.extend_from_slice(pw.as_bytes());
        }
        [vec![0x10, body.len() as u8], body].concat()
    }

    /// Writes `bytes`, then reads one packet (its first byte and remaining length under 128).
    async fn exchange(client: &mut DuplexStream, bytes: &[u8]) -> Vec<u8> {
        client.write_all(bytes).await.unwrap();
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        let mut rest = vec![0u8; head[1] as usize];
        client.read_exact(&mut rest).await.unwrap();
        [head.to_vec(), rest].concat()
    }

    fn sent(broker: &Broker, kind: &str) -> Vec<Record> {
        broker.records().into_iter().filter(|r| r.dir == Some(Dir::Out) && r.kind == kind).collect()
    }

    /// The record of a refused login holds the CONNACK code on the wire: 5 for 3.1/3.1.1
    /// (not MQTT 5's 0x87 before the fold), 0x87 for MQTT 5 (Mosquitto 2.0's codes).
    #[tokio::test]
    async fn a_refused_login_is_recorded_with_the_connack_code_on_the_wire() {
        for (level, wire, recorded) in [(4u8, vec![0x20, 2, 0, 5], 5u8), (5, vec![0x20, 3, 0, 0x87, 0], 0x87)] {
            let broker = broker(true, true);
            let (mut client, server) = tokio::io::duplex(4096);
            let serve = broker.serve(server, LinkInfo { peer: "test".into(), tls: None });
            let talk = async { exchange(&mut client, &connect(level, Some("wrongpw"))).await };
            let (_, got) = tokio::join!(serve, talk);
            assert_eq!(got, wire, "level {level}");
            let connacks = sent(&broker, "CONNACK");
            assert_eq!(connacks.len(), 1, "{connacks:?}");
            assert_eq!(connacks[0].codes, Some(vec![recorded]), "level {level}");
        }
    }

    /// A refused subscription: SUBACK 0x80 for a 3.1.1 client on the wire and in the
    /// record, 0x9E (shared subscriptions not supported) for an MQTT 5 one. A 3.1.1
    /// client's DISCONNECT carries no code, and no DISCONNECT goes to it.
    #[tokio::test]
    async fn a_refused_subscription_is_recorded_with_the_suback_code_on_the_wire() {
        for (level, recorded) in [(4u8, 0x80u8), (5, 0x9E)] {
            let broker = broker(false, false);
            let (mut client, server) = tokio::io::duplex(4096);
            let serve = broker.serve(server, LinkInfo { peer: "test".into(), tls: None });
            let talk = async {
                let connack = exchange(&mut client, &connect(level, None)).await;
                assert_eq!(connack[3], 0, "level {level}: {connack:?}");
                let mut sub = vec![0x82, 0, 0, 1];
                if level == 5 {
                    sub.push(0);
                }
                sub.extend_from_slice(b"\x00\x0a$share/g/a\x00");
                sub[1] = sub.len() as u8 - 2;
                let suback = exchange(&mut client, &sub).await;
                client.write_all(&[0xE0, 0]).await.unwrap();
                suback
            };
            let (_, suback) = tokio::join!(serve, talk);
            assert_eq!(suback.last(), Some(&recorded), "level {level}: {suback:?}");
            assert_eq!(sent(&broker, "SUBACK")[0].codes, Some(vec![recorded]), "level {level}");
            let disconnect: Vec<_> = broker.records().into_iter().filter(|r| r.kind == "DISCONNECT").collect();
            assert_eq!(disconnect.len(), 1, "level {level}: {disconnect:?}");
            assert_eq!(disconnect[0].codes, (level == 5).then(|| vec![0]), "level {level}");
        }
    }
}
