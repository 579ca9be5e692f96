//! Traffic recording: every packet in and out, and every broker event (connection
//! opened/closed, fault fired, will published), as one JSON object per line in a file
//! and/or kept in memory for assertions. Passwords are never recorded.

use std::io::Write;
use std::sync::Mutex;

use base64::Engine as _;
use rumqttc::v5::mqttbytes::v5::Packet;
use serde::Serialize;

use super::v5::Protocol;

/// Which way a packet went, or an event of the broker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    In,
    Out,
    Event,
}

/// One line of the recording.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the broker started (virtual time under a paused tokio clock).
    pub t_ms: u64,
    pub dir: Option<Dir>,
    /// Connection number, from 1 in accept order.
    pub conn: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Packet type (`CONNECT`, `PUBLISH`, ...) or event name (`open`, `close`, `fault`,
    /// `will`, `restart`).
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkid: Option<u16>,
    /// Reason codes as they went on the wire for the client's protocol: for an MQTT 5
    /// client CONNACK's, SUBACK's, PUBACK's, PUBREC's, PUBREL's, PUBCOMP's, UNSUBACK's and
    /// DISCONNECT's reason codes; for a 3.1/3.1.1 client CONNACK's return code (0..5) and
    /// SUBACK's return codes (granted QoS or 0x80), and none for the others, which carry
    /// none in 3.1.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<u8>>,
    /// An MQTT 5 PUBLISH's user properties, in order (`[name, value]` pairs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_properties: Option<Vec<(String, String)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_present: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Always `"<redacted>"` when the CONNECT carried a password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_session: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub will: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<String>>,
    /// Free text: why a connection closed, which fault fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    /// The record of one packet as an MQTT 5 client sends or gets it (the password
    /// replaced by `<redacted>`).
    pub fn packet(dir: Dir, packet: &Packet) -> Record {
        Record::packet_as(dir, packet, Protocol::Mqtt5)
    }

    /// The record of one packet as a client speaking `proto` sends or gets it: the broker
    /// works in MQTT 5's terms and folds to 3.1.1 on the wire ([`super::v5::write`]), and
    /// the record shows the folded codes, those on the wire.
    pub fn packet_as(dir: Dir, packet: &Packet, proto: Protocol) -> Record {
        let mut r = Record::packet_v5(dir, packet);
        if !proto.is_v5() {
            r.codes = codes_v4(packet);
        }
        r
    }

    fn packet_v5(dir: Dir, packet: &Packet) -> Record {
        let mut r = Record { dir: Some(dir), ..Record::default() };
        let (kind, pkid) = match packet {
            Packet::Connect(c, will, login) => {
                r.client = Some(c.client_id.clone());
                r.keep_alive = Some(c.keep_alive);
                r.clean_session = Some(c.clean_start);
                if let Some(login) = login {
                    r.username = Some(login.username.clone());
                    r.password = Some("<redacted>".into());
                }
                if let Some(w) = will {
                    r.will = Some(String::from_utf8_lossy(&w.topic).into_owned());
                    set_payload(&mut r, &w.message);
                    r.qos = Some(w.qos as u8);
                    r.retain = Some(w.retain);
                }
                ("CONNECT", None)
            }
            Packet::ConnAck(c) => {
                r.codes = Some(vec![super::v5::connack_byte(c.code)]);
                r.session_present = Some(c.session_present);
                ("CONNACK", None)
            }
            Packet::Publish(p) => {
                r.topic = Some(String::from_utf8_lossy(&p.topic).into_owned());
                set_payload(&mut r, &p.payload);
                r.qos = Some(p.qos as u8);
                r.retain = Some(p.retain);
                r.dup = Some(p.dup);
                let props = p.properties.as_ref().filter(|p| !p.user_properties.is_empty());
                r.user_properties = props.map(|p| p.user_properties.clone());
                ("PUBLISH", (p.pkid != 0).then_some(p.pkid))
            }
            Packet::PubAck(p) => {
                r.codes = super::v5::ack_codes(packet);
                ("PUBACK", Some(p.pkid))
            }
            Packet::PubRec(p) => {
                r.codes = super::v5::ack_codes(packet);
                ("PUBREC", Some(p.pkid))
            }
            Packet::PubRel(p) => {
                r.codes = super::v5::ack_codes(packet);
                ("PUBREL", Some(p.pkid))
            }
            Packet::PubComp(p) => {
                r.codes = super::v5::ack_codes(packet);
                ("PUBCOMP", Some(p.pkid))
            }
            Packet::Subscribe(s) => {
                r.filters = Some(s.filters.iter().map(|f| format!("{} (QoS {})", f.path, f.qos as u8)).collect());
                ("SUBSCRIBE", Some(s.pkid))
            }
            Packet::SubAck(s) => {
                r.codes = Some(s.return_codes.iter().map(super::v5::suback_code).collect());
                ("SUBACK", Some(s.pkid))
            }
            Packet::Unsubscribe(u) => {
                r.filters = Some(u.filters.clone());
                ("UNSUBSCRIBE", Some(u.pkid))
            }
            Packet::UnsubAck(u) => {
                r.codes = super::v5::ack_codes(packet);
                ("UNSUBACK", Some(u.pkid))
            }
            Packet::PingReq(_) => ("PINGREQ", None),
            Packet::PingResp(_) => ("PINGRESP", None),
            Packet::Disconnect(d) => {
                r.codes = Some(vec![d.reason_code as u8]);
                ("DISCONNECT", None)
            }
            Packet::Auth(_) => ("AUTH", None),
        };
        r.kind = kind.into();
        r.pkid = pkid;
        r
    }

    /// The record of a broker event.
    pub fn event(kind: &str, detail: impl Into<String>) -> Record {
        Record { dir: Some(Dir::Event), kind: kind.into(), detail: Some(detail.into()), ..Record::default() }
    }
}

/// The return codes a 3.1/3.1.1 packet carries: CONNACK's and SUBACK's (3.1.1 §3.2.2.3,
/// §3.9.3); PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK and DISCONNECT have none.
fn codes_v4(packet: &Packet) -> Option<Vec<u8>> {
    match packet {
        Packet::ConnAck(c) => Some(vec![super::v5::connack_byte_v4(c.code)]),
        Packet::SubAck(s) => Some(s.return_codes.iter().map(super::v5::suback_code_v4).collect()),
        _ => None,
    }
}

fn set_payload(r: &mut Record, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(text) => r.payload = Some(text.to_string()),
        Err(_) => r.payload_b64 = Some(base64::engine::general_purpose::STANDARD.encode(payload)),
    }
}

/// Where records go. Recording costs nothing when both sinks are off.
#[derive(Default)]
pub struct Recorder {
    file: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    memory: Option<Mutex<Vec<Record>>>,
}

impl Recorder {
    pub fn new(file: Option<std::fs::File>, in_memory: bool) -> Recorder {
        Recorder {
            file: file.map(|f| Mutex::new(std::io::BufWriter::new(f))),
            memory: in_memory.then(|| Mutex::new(Vec::new())),
        }
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.memory.is_some()
    }

    pub fn push(&self, record: Record) {
        if let Some(file) = &self.file {
            if let Ok(mut f) = file.lock() {
                if let Ok(line) = serde_json::to_string(&record) {
                    // A full disk must not stop the broker; the diagnostic says so once per line.
                    if writeln!(f, "{line}").and_then(|_| f.flush()).is_err() {
                        tracing::warn!("cannot write the traffic record");
                    }
                }
            }
        }
        if let Some(memory) = &self.memory {
            if let Ok(mut m) = memory.lock() {
                m.push(record);
            }
        }
    }

    /// Everything recorded in memory so far.
    pub fn snapshot(&self) -> Vec<Record> {
        self.since(0)
    }

    /// The records in memory from index `start` on (none if there are fewer).
    pub fn since(&self, start: usize) -> Vec<Record> {
        let memory = self.memory.as_ref().and_then(|m| m.lock().ok());
        memory.map(|m| m.get(start..).map(<[Record]>::to_vec).unwrap_or_default()).unwrap_or_default()
    }

    /// How many records are in memory.
    pub fn count(&self) -> usize {
        self.memory.as_ref().and_then(|m| m.lock().ok().map(|m| m.len())).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Connect, LastWill, Login};
    use rumqttc::v5::mqttbytes::QoS;

    #[test]
    fn connect_record_redacts_the_password() {
        let c = Connect { keep_alive: 10, client_id: "dev1".into(), clean_start: true, properties: None };
        let login =
            Login { username: "tasmota?x-amz-customauthorizer-name=TasmotaAuth".into(), password: "hunter2".into() };
        let will = LastWill::new("tele/t/LWT", "Offline", QoS::AtMostOnce, false, None);
        let line =
            serde_json::to_string(&Record::packet(Dir::In, &Packet::Connect(c, Some(will), Some(login)))).unwrap();
        assert!(!line.contains("hunter2"), "{line}");
        assert_eq!(
            line,
            r#"{"t_ms":0,"dir":"in","conn":0,"client":"dev1","kind":"CONNECT","payload":"Offline","qos":0,"retain":false,"username":"tasmota?x-amz-customauthorizer-name=TasmotaAuth","password":"<redacted>","keep_alive":10,"clean_session":true,"will":"tele/t/LWT"}"#
        );
    }

    #[test]
    fn mqtt5_records_carry_user_properties_and_ack_codes() {
        use rumqttc::v5::mqttbytes::v5::{PubAck, PubAckReason, PublishProperties, UnsubAck, UnsubAckReason};
        let props = PublishProperties {
            user_properties: vec![("origin".into(), "pub".into()), ("origin".into(), "again".into())],
            ..Default::default()
        };
        let p = rumqttc::v5::mqttbytes::v5::Publish::new("a", QoS::AtMostOnce, "x", Some(props));
        let line = serde_json::to_string(&Record::packet(Dir::In, &Packet::Publish(p))).unwrap();
        assert!(line.contains(r#""user_properties":[["origin","pub"],["origin","again"]]"#), "{line}");
        let ack = PubAck { pkid: 3, reason: PubAckReason::NoMatchingSubscribers, properties: None };
        assert_eq!(Record::packet(Dir::Out, &Packet::PubAck(ack)).codes, Some(vec![0x10]));
        let reasons = vec![UnsubAckReason::Success, UnsubAckReason::NoSubscriptionExisted];
        let ack = UnsubAck { pkid: 4, reasons, properties: None };
        assert_eq!(Record::packet(Dir::Out, &Packet::UnsubAck(ack)).codes, Some(vec![0x00, 0x11]));
    }

    /// The record holds the codes that went on the wire: a 3.1.1 client's CONNACK and
    /// SUBACK fold (v5::write), its other acks and DISCONNECT carry none.
    #[test]
    fn records_carry_the_codes_of_the_clients_protocol() {
        use rumqttc::v5::mqttbytes::v5::{
            ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, PubAck, PubAckReason, PubComp, PubCompReason,
            PubRec, PubRecReason, PubRel, PubRelReason, SubAck, SubscribeReasonCode as S, UnsubAck, UnsubAckReason,
        };
        let connack = |code| Packet::ConnAck(ConnAck { session_present: false, code, properties: None });
        let suback = Packet::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![
                S::Success(QoS::AtLeastOnce),
                S::NotAuthorized,
                S::QuotaExceeded,
                S::SharedSubscriptionsNotSupported,
                S::Failure,
            ],
            properties: None,
        });
        let acks = [
            Packet::PubAck(PubAck { pkid: 2, reason: PubAckReason::NotAuthorized, properties: None }),
            Packet::PubRec(PubRec { pkid: 3, reason: PubRecReason::QuotaExceeded, properties: None }),
            Packet::PubRel(PubRel { pkid: 4, reason: PubRelReason::PacketIdentifierNotFound, properties: None }),
            Packet::PubComp(PubComp { pkid: 5, reason: PubCompReason::Success, properties: None }),
            Packet::UnsubAck(UnsubAck { pkid: 6, reasons: vec![UnsubAckReason::Success], properties: None }),
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
        ];
        for proto in [Protocol::Mqtt31, Protocol::Mqtt311] {
            let codes = |p: &Packet| Record::packet_as(Dir::Out, p, proto).codes;
            assert_eq!(codes(&connack(ConnectReturnCode::NotAuthorized)), Some(vec![5]), "{proto:?}");
            assert_eq!(codes(&connack(ConnectReturnCode::BadUserNamePassword)), Some(vec![4]), "{proto:?}");
            assert_eq!(codes(&connack(ConnectReturnCode::RefusedProtocolVersion)), Some(vec![1]), "{proto:?}");
            assert_eq!(codes(&connack(ConnectReturnCode::Success)), Some(vec![0]), "{proto:?}");
            assert_eq!(codes(&suback), Some(vec![1, 0x80, 0x80, 0x80, 0x80]), "{proto:?}");
            for ack in &acks {
                assert_eq!(codes(ack), None, "{proto:?} {ack:?}");
                assert_eq!(Record::packet_as(Dir::In, ack, proto).codes, None, "{proto:?} {ack:?}");
            }
        }
        let codes = |p: &Packet| Record::packet_as(Dir::Out, p, Protocol::Mqtt5).codes;
        assert_eq!(codes(&connack(ConnectReturnCode::NotAuthorized)), Some(vec![0x87]));
        assert_eq!(codes(&connack(ConnectReturnCode::RefusedProtocolVersion)), Some(vec![0x84]));
        assert_eq!(codes(&suback), Some(vec![1, 0x87, 0x97, 0x9E, 0x80]));
        let v5: Vec<_> = acks.iter().map(codes).collect();
        let expected = [vec![0x87], vec![0x97], vec![0x92], vec![0x00], vec![0x00], vec![0x00]];
        assert_eq!(v5, expected.map(Some));
    }

    #[test]
    fn binary_payloads_are_base64() {
        let p = rumqttc::v5::mqttbytes::v5::Publish::new("a", QoS::AtLeastOnce, vec![0xff, 0x00], None);
        let r = Record::packet(Dir::Out, &Packet::Publish(p));
        assert_eq!(r.payload_b64.as_deref(), Some("/wA="));
        assert_eq!(r.payload, None);
    }
}
