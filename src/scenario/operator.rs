//! The operator: an MQTT client standing where a person with `mosquitto_sub`/`_pub` or
//! the AWS console's MQTT test client would stand. It subscribes, publishes commands and
//! reports every message it receives, and every acknowledgement's reason codes, to the
//! scenario runner (and to the fleet).
//!
//! It speaks MQTT 3.1.1 through rumqttc's `v4` codec or MQTT 5 through rumqttc's
//! `v5::mqttbytes` (never the device's codec; see [`wire`]), over any byte stream: an
//! in-memory link to an embedded broker, TCP/TLS to a real one, or either carrying
//! MQTT over WebSocket ([`websocket`]).

pub mod websocket;
pub mod wire;

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::link::BoxStream;
use wire::{Incoming, Read};

/// The keepalive the operator asks for; it pings on time.
const KEEPALIVE_S: u16 = 60;
const MAX_PACKET: usize = 256 * 1024;

/// Which MQTT the operator speaks: the protocol level of its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 3.1.1 (level 4), what the operator always spoke.
    #[default]
    Mqtt311,
    /// MQTT 5 (level 5).
    Mqtt5,
}

impl Protocol {
    /// From the protocol level a scenario file or a flag gives (4 or 5).
    pub fn from_level(level: i64) -> Result<Protocol, String> {
        match level {
            4 => Ok(Protocol::Mqtt311),
            5 => Ok(Protocol::Mqtt5),
            3 => Err("3 (MQTT 3.1) is not spoken by the operator: 4 (MQTT 3.1.1, the default) or 5 (MQTT 5)".into()),
            n => Err(format!("{n} is not an MQTT protocol level: 4 (MQTT 3.1.1, the default) or 5 (MQTT 5)")),
        }
    }

    pub fn level(self) -> u8 {
        match self {
            Protocol::Mqtt311 => 4,
            Protocol::Mqtt5 => 5,
        }
    }

    pub fn is_v5(self) -> bool {
        self == Protocol::Mqtt5
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Mqtt311 => "MQTT 3.1.1",
            Protocol::Mqtt5 => "MQTT 5",
        })
    }
}

/// Who the operator is to the broker: its CONNECT and its subscriptions.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub client_id: String,
    pub login: Option<(String, String)>,
    pub subscribe: Vec<String>,
    pub protocol: Protocol,
}

/// The MQTT 5 properties of a PUBLISH the operator sends or receives (none in 3.1.1).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct PublishProperties {
    /// In order, a key may repeat (MQTT 5 §3.3.2.3.7).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
    /// Message Expiry Interval, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_expiry: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl PublishProperties {
    /// The properties as reports show them, each after a space: ` [key=value]`,
    /// ` (expiry N s)`, ` (response topic T)`, ` (correlation D)`, ` (content type C)`;
    /// empty without any. Expectations and received messages both use it.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.user_properties {
            s.push_str(&format!(" [{k}={v}]"));
        }
        if let Some(e) = self.message_expiry {
            s.push_str(&format!(" (expiry {e} s)"));
        }
        if let Some(t) = &self.response_topic {
            s.push_str(&format!(" (response topic {t})"));
        }
        if let Some(c) = &self.correlation_data {
            s.push_str(&format!(" (correlation {})", String::from_utf8_lossy(c)));
        }
        if let Some(c) = &self.content_type {
            s.push_str(&format!(" (content type {c})"));
        }
        s
    }
}

impl PublishProperties {
    pub fn is_empty(&self) -> bool {
        *self == PublishProperties::default()
    }
}

/// A message the operator received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Received {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    /// Its MQTT 5 properties (empty for a 3.1.1 operator).
    #[serde(skip_serializing_if = "PublishProperties::is_empty")]
    pub properties: PublishProperties,
}

/// The acknowledgements the operator reads reason codes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    ConnAck,
    SubAck,
    PubAck,
}

impl AckKind {
    pub const ALL: [AckKind; 3] = [AckKind::ConnAck, AckKind::SubAck, AckKind::PubAck];

    /// The packet's name as MQTT writes it.
    pub fn name(self) -> &'static str {
        match self {
            AckKind::ConnAck => "CONNACK",
            AckKind::SubAck => "SUBACK",
            AckKind::PubAck => "PUBACK",
        }
    }
}

/// An acknowledgement the broker sent the operator, with its reason codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub kind: AckKind,
    /// CONNACK: its return code (3.1.1) or reason code (5); SUBACK: one per filter, in
    /// order; PUBACK: its reason code (5), none in 3.1.1 (which has none).
    pub codes: Vec<u8>,
    /// SUBACK: the filters subscribed; PUBACK: the topic of the PUBLISH it answers.
    pub topics: Vec<String>,
    /// MQTT 5's Reason String, if the broker gave one.
    pub reason_string: Option<String>,
}

impl std::fmt::Display for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codes: Vec<String> = self.codes.iter().map(|c| format!("0x{c:02X}")).collect();
        write!(f, "{} [{}]", self.kind.name(), codes.join(", "))?;
        if !self.topics.is_empty() {
            write!(f, " for {}", self.topics.join(", "))?;
        }
        if let Some(r) = &self.reason_string {
            write!(f, " ({r:?})")?;
        }
        Ok(())
    }
}

/// What the operator tells the runner.
#[derive(Debug)]
pub enum OperatorEvent {
    /// Connected and subscribed.
    Ready,
    Message(Received),
    /// A CONNACK, SUBACK or PUBACK arrived (before the `Ready`, `Refused` or `Down` it
    /// leads to).
    Ack(Ack),
    /// The link ended; why.
    Down(String),
    /// The broker refused something without ending the link: a subscription (SUBACK
    /// 0x80 and up), or in MQTT 5 a PUBLISH (PUBACK 0x80 and up).
    Refused {
        kind: AckKind,
        what: String,
    },
}

/// What the runner asks of the operator.
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    pub qos: u8,
    /// MQTT 5 only (the scenario file refuses them for a 3.1.1 operator).
    pub properties: PublishProperties,
}

/// Runs one operator session on `stream` until the link ends or `commands` closes
/// (then it returns without a `Down` event).
pub async fn run(
    mut stream: BoxStream,
    session: &Session,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &impl Fn(OperatorEvent),
) {
    let protocol = session.protocol;
    let filters = &session.subscribe;
    let mut out = BytesMut::new();
    let mut rbuf = BytesMut::new();
    let mut next_pkid: u16 = 0;
    let mut pkid = || {
        next_pkid = next_pkid % u16::MAX + 1;
        next_pkid
    };
    if let Err(e) = wire::connect(protocol, session, KEEPALIVE_S, &mut out) {
        return events(OperatorEvent::Down(format!("cannot encode CONNECT: {e}")));
    }
    let mut subscribed = filters.is_empty();
    // The topic of the last PUBLISH sent, to say what the broker may have closed the link for.
    let mut last_publish: Option<String> = None;
    // The topics of QoS 1 PUBLISHes not yet acknowledged, by packet id.
    let mut unacked: std::collections::HashMap<u16, String> = Default::default();
    let mut connected = false;
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(u64::from(KEEPALIVE_S)),
        Duration::from_secs(u64::from(KEEPALIVE_S)),
    );
    loop {
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                return events(OperatorEvent::Down(format!("write: {e}")));
            }
            out.clear();
        }
        tokio::select! {
            n = stream.read_buf(&mut rbuf) => {
                match n {
                    Ok(0) => {
                        let after = last_publish.as_ref().map(|t| format!(" after its PUBLISH to '{t}'")).unwrap_or_default();
                        return events(OperatorEvent::Down(format!("the broker closed the link{after}")));
                    }
                    Err(e) => return events(OperatorEvent::Down(format!("read: {e}"))),
                    Ok(_) => {}
                }
                loop {
                    let packet = match wire::read(protocol, &mut rbuf, MAX_PACKET) {
                        Read::Packet(p) => p,
                        Read::Need => break,
                        Read::Malformed(e) => return events(OperatorEvent::Down(format!("malformed packet from the broker: {e}"))),
                    };
                    match packet {
                        Incoming::ConnAck { code, refused } => {
                            events(OperatorEvent::Ack(Ack { kind: AckKind::ConnAck, codes: vec![code], topics: Vec::new(), reason_string: None }));
                            if let Some(why) = refused {
                                return events(OperatorEvent::Down(why));
                            }
                            connected = true;
                            if subscribed {
                                events(OperatorEvent::Ready);
                            } else if let Err(e) = wire::subscribe(protocol, pkid(), filters, &mut out) {
                                return events(OperatorEvent::Down(format!("cannot encode SUBSCRIBE: {e}")));
                            }
                        }
                        Incoming::SubAck { codes, reason_string } if !subscribed => {
                            subscribed = true;
                            events(OperatorEvent::Ack(Ack { kind: AckKind::SubAck, codes: codes.clone(), topics: filters.clone(), reason_string }));
                            for (filter, code) in filters.iter().zip(&codes) {
                                if *code >= 0x80 {
                                    let what = match protocol {
                                        Protocol::Mqtt311 => format!("had its subscription to '{filter}' refused (SUBACK 0x80)"),
                                        Protocol::Mqtt5 => format!("had its subscription to '{filter}' refused (SUBACK 0x{code:02X} {})", wire::suback_name(*code)),
                                    };
                                    events(OperatorEvent::Refused { kind: AckKind::SubAck, what });
                                }
                            }
                            events(OperatorEvent::Ready);
                        }
                        Incoming::PubAck { pkid, code, reason_string } => {
                            let topic = unacked.remove(&pkid);
                            let topics: Vec<String> = topic.iter().cloned().collect();
                            events(OperatorEvent::Ack(Ack { kind: AckKind::PubAck, codes: code.into_iter().collect(), topics, reason_string }));
                            if let Some(code) = code.filter(|c| *c >= 0x80) {
                                let to = topic.map(|t| format!(" to '{t}'")).unwrap_or_default();
                                let what = format!("had its PUBLISH{to} refused (PUBACK 0x{code:02X} {})", wire::puback_name(code));
                                events(OperatorEvent::Refused { kind: AckKind::PubAck, what });
                            }
                        }
                        Incoming::Publish { received, ack } => {
                            if let Some(id) = ack {
                                let _ = wire::puback(protocol, id, &mut out);
                            }
                            events(OperatorEvent::Message(received));
                        }
                        Incoming::Disconnect { code, reason_string } => {
                            let why = reason_string.map(|r| format!(", {r:?}")).unwrap_or_default();
                            return events(OperatorEvent::Down(format!("the broker sent DISCONNECT 0x{code:02X} ({}{why})", wire::disconnect_name(code))));
                        }
                        Incoming::SubAck { .. } | Incoming::Other => {}
                    }
                }
            }
            cmd = commands.recv(), if connected => {
                let Some(cmd) = cmd else { return };
                last_publish = Some(cmd.topic.clone());
                let id = if cmd.qos == 1 { pkid() } else { 0 };
                if id != 0 {
                    unacked.insert(id, cmd.topic.clone());
                }
                if let Err(e) = wire::publish(protocol, cmd, id, &mut out) {
                    tracing::warn!("operator: cannot encode PUBLISH: {e}");
                }
            }
            _ = ping.tick(), if connected => {
                let _ = wire::pingreq(protocol, &mut out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads one whole packet (fixed header, remaining length) from `s`.
    async fn packet(s: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut first = [0u8; 2];
        s.read_exact(&mut first).await.unwrap();
        let mut out = first.to_vec();
        let mut len = usize::from(first[1] & 0x7F);
        let mut shift = 7;
        let mut more = first[1] & 0x80 != 0;
        while more {
            let b = s.read_u8().await.unwrap();
            out.push(b);
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            more = b & 0x80 != 0;
        }
        let mut rest = vec![0u8; len];
        s.read_exact(&mut rest).await.unwrap();
        out.extend(rest);
        out
    }

    /// The bytes a 3.1.1 operator sends, as they were before MQTT 5 came: CONNECT with
    /// its login, SUBSCRIBE, PUBLISH at QoS 0 (retained) and 1, PUBACK.
    #[tokio::test]
    async fn the_311_operator_sends_the_same_bytes() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (etx, mut erx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let events = move |e| {
                let _ = etx.send(e);
            };
            let session = Session {
                client_id: "tasmota-sim-operator".into(),
                login: Some(("bob".into(), "secret".into())),
                subscribe: vec!["#".into(), "stat/+/RESULT".into()],
                protocol: Protocol::Mqtt311,
            };
            run(Box::pin(client), &session, &mut rx, &events).await
        });
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut seen = Vec::new();
        seen.push(hex(&packet(&mut server).await));
        server.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        seen.push(hex(&packet(&mut server).await));
        server.write_all(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x00]).await.unwrap();
        assert!(matches!(erx.recv().await, Some(OperatorEvent::Ack(_))));
        assert!(matches!(erx.recv().await, Some(OperatorEvent::Ack(_))));
        assert!(matches!(erx.recv().await, Some(OperatorEvent::Ready)));
        let cmd = |payload: &str, retain, qos| Command {
            topic: "cmnd/t/Power".into(),
            payload: payload.into(),
            retain,
            qos,
            properties: Default::default(),
        };
        tx.send(cmd("ON", true, 0)).unwrap();
        seen.push(hex(&packet(&mut server).await));
        tx.send(cmd("OFF", false, 1)).unwrap();
        seen.push(hex(&packet(&mut server).await));
        // A QoS 1 message to the operator gets its PUBACK.
        server.write_all(&[0x32, 0x08, 0x00, 0x01, b'a', 0x12, 0x34, b'x', b'y', b'z']).await.unwrap();
        seen.push(hex(&packet(&mut server).await));
        drop(tx);
        task.abort();
        assert_eq!(
            seen,
            [
                "102d00044d51545404c2003c00147461736d6f74612d73696d2d6f70657261746f720003626f620006736563726574",
                "8216000100012300000d737461742f2b2f524553554c5400",
                "3110000c636d6e642f742f506f7765724f4e",
                "3213000c636d6e642f742f506f77657200024f4646",
                "40021234",
            ]
        );
    }

    /// An MQTT 5 session against a scripted broker: what it sends, and what it makes of
    /// reason codes: a refused filter and a refused PUBLISH are `Refused`, a DISCONNECT
    /// ends the link with its reason code.
    #[tokio::test]
    async fn the_mqtt5_operator_reports_reason_codes_and_sends_properties() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (etx, mut erx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let events = move |e| {
                let _ = etx.send(e);
            };
            let session = Session {
                client_id: "c".into(),
                login: None,
                subscribe: vec!["a".into(), "$share/g/b".into()],
                protocol: Protocol::Mqtt5,
            };
            run(Box::pin(client), &session, &mut rx, &events).await
        });
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // CONNECT: "MQTT", level 5, clean start, keepalive 60, no properties, id "c".
        assert_eq!(hex(&packet(&mut server).await), "100e00044d5154540502003c00000163");
        server.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00]).await.unwrap();
        assert_eq!(hex(&packet(&mut server).await), "821400010000016100000a2473686172652f672f6200");
        server.write_all(&[0x90, 0x05, 0x00, 0x01, 0x00, 0x00, 0x97]).await.unwrap();
        let mut events = Vec::new();
        for _ in 0..4 {
            events.push(format!("{:?}", erx.recv().await.unwrap()));
        }
        assert_eq!(
            events,
            [
                "Ack(Ack { kind: ConnAck, codes: [0], topics: [], reason_string: None })",
                "Ack(Ack { kind: SubAck, codes: [0, 151], topics: [\"a\", \"$share/g/b\"], reason_string: None })",
                "Refused { kind: SubAck, what: \"had its subscription to '$share/g/b' refused (SUBACK 0x97 Quota exceeded)\" }",
                "Ready",
            ]
        );
        let properties = PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            message_expiry: Some(300),
            response_topic: Some("r".into()),
            correlation_data: Some(b"x".to_vec()),
            content_type: None,
        };
        tx.send(Command { topic: "t".into(), payload: "p".into(), retain: false, qos: 1, properties }).unwrap();
        // PUBLISH QoS 1, id 2: expiry 300 (0x02), response topic (0x08), correlation (0x09),
        // user property (0x26).
        assert_eq!(hex(&packet(&mut server).await), "321b000174000214020000012c08000172090001782600016b00017670");
        server.write_all(&[0x40, 0x04, 0x00, 0x02, 0x87, 0x00]).await.unwrap();
        assert_eq!(
            format!("{:?}", erx.recv().await.unwrap()),
            "Ack(Ack { kind: PubAck, codes: [135], topics: [\"t\"], reason_string: None })"
        );
        assert_eq!(
            format!("{:?}", erx.recv().await.unwrap()),
            "Refused { kind: PubAck, what: \"had its PUBLISH to 't' refused (PUBACK 0x87 Not authorized)\" }"
        );
        server.write_all(&[0xE0, 0x02, 0x8E, 0x00]).await.unwrap();
        assert_eq!(
            format!("{:?}", erx.recv().await.unwrap()),
            "Down(\"the broker sent DISCONNECT 0x8E (SessionTakenOver)\")"
        );
        task.await.unwrap();
    }
}
