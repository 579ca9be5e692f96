//! The wire between the broker and its clients across MQTT 3.1, 3.1.1 and 5.0.
//!
//! The broker works in MQTT 5's terms (OASIS MQTT 5.0): every packet a client sends is
//! read into rumqttc's `v5::mqttbytes` types, a 3.1/3.1.1 packet by way of rumqttc's `v4`
//! codec and a lossless conversion (5.0 is a superset), and every packet the broker sends
//! is built as a 5.0 packet and, for a 3.1.1 client, converted back (reason codes fold to
//! 3.1.1's return codes, properties are dropped). One connection code serves both.
//!
//! Where rumqttc 0.25.1's v5 codec is wrong or missing something, it is worked around
//! here, narrowly:
//! - a DISCONNECT with remaining length 0 fails with `PayloadRequired` (MQTT 5 §3.14.2.1:
//!   DISCONNECT may omit its reason code, meaning 0x00), and one with remaining length 1
//!   (a reason code, no property length, §3.14.2.2.1) fails as if bytes were missing;
//!   both are read here;
//! - an inner `InsufficientBytes` after the frame was cut (a property length past the
//!   end) would look like "wait for more bytes"; it is a malformed packet here;
//! - writing a CONNACK with a 3.1.1-only code panics (`unreachable!`); those are mapped
//!   to their 5.0 codes before writing ([`connack_code_v5`]);
//! - the reserved bits 6-7 of a subscription's options byte are not checked
//!   (§3.8.3.1 makes them a malformed packet); checked here ([`reserved_option_bits`]);
//! - MQTT 3.1 (`MQIsdp`, level 3) is not read by the v4 codec; its CONNECT is rewritten
//!   to a 3.1.1 one ([`mqisdp_as_311`]), as Mosquitto serves both with the same code.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, LastWill, Login, Packet, PingReq,
    PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish,
    RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};

use super::profile::AckCodes;
use rumqttc::v5::mqttbytes::QoS;

/// Which MQTT a client speaks, from its CONNECT's protocol name and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `MQIsdp`, level 3.
    Mqtt31,
    /// `MQTT`, level 4.
    Mqtt311,
    /// `MQTT`, level 5.
    Mqtt5,
}

impl Protocol {
    pub fn of(name: &str, level: u8) -> Option<Protocol> {
        match (name, level) {
            ("MQIsdp", 3) => Some(Protocol::Mqtt31),
            ("MQTT", 4) => Some(Protocol::Mqtt311),
            ("MQTT", 5) => Some(Protocol::Mqtt5),
            _ => None,
        }
    }

    pub fn is_v5(self) -> bool {
        self == Protocol::Mqtt5
    }

    /// Mosquitto's `p` in "New client connected ... (p2, ...)": its `mosq_p_*` number.
    pub fn log_number(self) -> u8 {
        match self {
            Protocol::Mqtt31 => 1,
            Protocol::Mqtt311 => 2,
            Protocol::Mqtt5 => 5,
        }
    }
}

/// Why no packet could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// This many more bytes are needed for the packet at the front.
    Need(usize),
    /// The bytes are not a packet of this protocol (MQTT 5: reason code 0x81).
    Malformed(String),
    /// The packet is larger than the broker takes (MQTT 5: reason code 0x95).
    TooLarge(String),
}

/// Reads the packet at the front of `buf` (at most `max` bytes of remaining length).
pub fn read(buf: &mut BytesMut, max: usize, proto: Protocol) -> Result<Packet, ReadError> {
    if proto.is_v5() {
        read_v5(buf, max)
    } else {
        read_v4(buf, max)
    }
}

fn read_v5(buf: &mut BytesMut, max: usize) -> Result<Packet, ReadError> {
    use rumqttc::v5::mqttbytes::Error;
    let header = match rumqttc::v5::mqttbytes::v5::check(buf.iter(), Some(max.min(u32::MAX as usize) as u32)) {
        Ok(h) => h,
        Err(Error::InsufficientBytes(n)) => return Err(ReadError::Need(n)),
        Err(e @ Error::PayloadSizeLimitExceeded { .. }) => return Err(ReadError::TooLarge(e.to_string())),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    // DISCONNECT with no reason code (§3.14.2.1: reason 0x00), or with a reason code and
    // no property length (§3.14.2.2.1: properties absent).
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        buf.advance(2);
        return Ok(Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)));
    }
    if buf.len() >= 3 && buf[0] == 0xE0 && buf[1] == 1 {
        let code = DisconnectReasonCode::try_from(buf[2]).map_err(|e| ReadError::Malformed(e.to_string()));
        buf.advance(3);
        return code.map(|c| Packet::Disconnect(Disconnect::new(c)));
    }
    if buf[0] >> 4 == 8 {
        if let Some(bad) = reserved_option_bits(&buf[..header.frame_length()]) {
            buf.advance(header.frame_length());
            return Err(ReadError::Malformed(bad));
        }
    }
    let len = header.frame_length();
    let mut frame = buf.split_to(len);
    match Packet::read(&mut frame, None) {
        Ok(p) => Ok(p),
        Err(e) => Err(ReadError::Malformed(e.to_string())),
    }
}

fn read_v4(buf: &mut BytesMut, max: usize) -> Result<Packet, ReadError> {
    use rumqttc::mqttbytes::Error;
    let header = match rumqttc::mqttbytes::check(buf.iter(), max) {
        Ok(h) => h,
        Err(Error::InsufficientBytes(n)) => return Err(ReadError::Need(n)),
        Err(e @ Error::PayloadSizeLimitExceeded(_)) => return Err(ReadError::TooLarge(e.to_string())),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    let mut frame = buf.split_to(header.frame_length());
    match v4::Packet::read(&mut frame, max) {
        Ok(p) => from_v4(p),
        Err(e) => Err(ReadError::Malformed(e.to_string())),
    }
}

/// A SUBSCRIBE frame whose options bytes set the reserved bits 6-7 (§3.8.3.1, malformed).
fn reserved_option_bits(frame: &[u8]) -> Option<String> {
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1 + 2; // remaining length's last byte, packet id
    let (props_len_len, props_len) = varint(frame.get(i..)?)?;
    i += props_len_len + props_len;
    while i < frame.len() {
        let len = u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]) as usize;
        let options = *frame.get(i + 2 + len)?;
        if options & 0xC0 != 0 {
            return Some(format!("subscription options 0x{options:02X} set reserved bits"));
        }
        i += 3 + len;
    }
    None
}

/// A variable byte integer (§1.5.5): (bytes used, value).
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, b) in bytes.iter().take(4).enumerate() {
        value |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((i + 1, value));
        }
    }
    None
}

/// An MQTT 3.1 CONNECT (`MQIsdp`, level 3) as the same CONNECT in 3.1.1 (`MQTT`, level 4):
/// the variable header is otherwise the same (MQTT 3.1 §3.1, 3.1.1 §3.1.2).
pub fn mqisdp_as_311(frame: &[u8]) -> Option<BytesMut> {
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let (_, remaining) = varint(frame.get(1..)?)?;
    let body = frame.get(i + 1..i + 1 + remaining)?;
    // 00 06 'MQIsdp' 03
    if body.get(..9)? != b"\x00\x06MQIsdp\x03" {
        return None;
    }
    let rest = &body[9..];
    let mut out = BytesMut::with_capacity(frame.len());
    out.put_u8(0x10);
    let mut x = rest.len() + 7;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if x == 0 {
            break;
        }
    }
    out.put_slice(b"\x00\x04MQTT\x04");
    out.put_slice(rest);
    Some(out)
}

pub fn qos_from_v4(q: rumqttc::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to_v4(q: QoS) -> rumqttc::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

/// A 3.1.1 packet from a client as the 5.0 packet it equals (no properties, reason codes
/// 0x00; subscription options: 3.1.1's behaviour, retain handling 0).
fn from_v4(p: v4::Packet) -> Result<Packet, ReadError> {
    Ok(match p {
        v4::Packet::Connect(c) => Packet::Connect(
            Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                clean_start: c.clean_session,
                properties: None,
            },
            c.last_will.map(|w| LastWill {
                topic: Bytes::from(w.topic),
                message: w.message,
                qos: qos_from_v4(w.qos),
                retain: w.retain,
                properties: None,
            }),
            c.login.map(|l| Login { username: l.username, password: l.password }),
        ),
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos_from_v4(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(a) => {
            Packet::PubAck(PubAck { pkid: a.pkid, reason: PubAckReason::Success, properties: None })
        }
        v4::Packet::PubRec(a) => {
            Packet::PubRec(PubRec { pkid: a.pkid, reason: PubRecReason::Success, properties: None })
        }
        v4::Packet::PubRel(a) => {
            Packet::PubRel(PubRel { pkid: a.pkid, reason: PubRelReason::Success, properties: None })
        }
        v4::Packet::PubComp(a) => {
            Packet::PubComp(PubComp { pkid: a.pkid, reason: PubCompReason::Success, properties: None })
        }
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Filter {
                    path: f.path,
                    qos: qos_from_v4(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => {
            Packet::Unsubscribe(Unsubscribe { pkid: u.pkid, filters: u.topics, properties: None })
        }
        v4::Packet::PingReq => Packet::PingReq(PingReq),
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
        v4::Packet::PingResp => Packet::PingResp(PingResp),
        v4::Packet::ConnAck(a) => Packet::ConnAck(ConnAck {
            session_present: a.session_present,
            code: ConnectReturnCode::Success,
            properties: None,
        }),
        v4::Packet::SubAck(a) => Packet::SubAck(SubAck { pkid: a.pkid, return_codes: Vec::new(), properties: None }),
        v4::Packet::UnsubAck(a) => Packet::UnsubAck(UnsubAck { pkid: a.pkid, reasons: Vec::new(), properties: None }),
    })
}

/// A 3.1.1 CONNACK return code for a 5.0 reason code (MQTT 5 §3.2.2.2 lists both; codes
/// 3.1.1 has no word for fold to "not authorised", as Mosquitto folds them).
fn connack_code_v4(code: ConnectReturnCode) -> v4::ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success => v4::ConnectReturnCode::Success,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
        C::BadClientId | C::ClientIdentifierNotValid => v4::ConnectReturnCode::BadClientId,
        C::ServiceUnavailable | C::ServerUnavailable | C::ServerBusy => v4::ConnectReturnCode::ServiceUnavailable,
        C::BadUserNamePassword => v4::ConnectReturnCode::BadUserNamePassword,
        _ => v4::ConnectReturnCode::NotAuthorized,
    }
}

/// The 5.0 code for a CONNACK code (rumqttc panics writing 3.1.1's codes in a 5.0 CONNACK).
pub fn connack_code_v5(code: ConnectReturnCode) -> ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::RefusedProtocolVersion => C::UnsupportedProtocolVersion,
        C::BadClientId => C::ClientIdentifierNotValid,
        C::ServiceUnavailable => C::ServerUnavailable,
        other => other,
    }
}

/// The CONNACK code a fault's 3.1.1 return code (1..5) stands for.
pub fn connack_code_of(rc: u8) -> ConnectReturnCode {
    match rc {
        1 => ConnectReturnCode::RefusedProtocolVersion,
        2 => ConnectReturnCode::BadClientId,
        3 => ConnectReturnCode::ServiceUnavailable,
        4 => ConnectReturnCode::BadUserNamePassword,
        _ => ConnectReturnCode::NotAuthorized,
    }
}

/// Writes `p` as `proto` speaks it. A 3.1.1 client gets no DISCONNECT (3.1.1 has no
/// server DISCONNECT) nor AUTH: `Ok(false)`, nothing written.
pub fn write(p: &Packet, proto: Protocol, out: &mut BytesMut) -> Result<bool, String> {
    if proto.is_v5() {
        return match p {
            Packet::ConnAck(a) if connack_code_v5(a.code) != a.code => {
                let a = ConnAck { code: connack_code_v5(a.code), ..a.clone() };
                Packet::ConnAck(a).write(out, None).map(|_| true).map_err(|e| e.to_string())
            }
            _ => p.write(out, None).map(|_| true).map_err(|e| e.to_string()),
        };
    }
    let v4 = match p {
        Packet::ConnAck(a) => v4::Packet::ConnAck(v4::ConnAck::new(connack_code_v4(a.code), a.session_present)),
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
        Packet::SubAck(a) => v4::Packet::SubAck(v4::SubAck::new(
            a.pkid,
            a.return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => v4::SubscribeReasonCode::Success(qos_to_v4(*q)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::UnsubAck(a) => v4::Packet::UnsubAck(v4::UnsubAck::new(a.pkid)),
        Packet::PingResp(_) => v4::Packet::PingResp,
        Packet::Publish(p) => {
            let mut v = v4::Publish::from_bytes(String::from_utf8_lossy(&p.topic), qos_to_v4(p.qos), p.payload.clone());
            v.pkid = p.pkid;
            v.dup = p.dup;
            v.retain = p.retain;
            v4::Packet::Publish(v)
        }
        Packet::Disconnect(_) | Packet::Auth(_) => return Ok(false),
        other => return Err(format!("not a packet a broker sends: {other:?}")),
    };
    v4.write(out, 268_435_455).map(|_| true).map_err(|e| e.to_string())
}

/// The reason code of a 5.0 ack or DISCONNECT as its byte (for records and log lines).
pub fn disconnect_code(code: DisconnectReasonCode) -> u8 {
    code as u8
}

/// A DISCONNECT reason code from its byte (§3.14.2.1); unknown bytes are 0x80.
pub fn disconnect_reason(code: u8) -> DisconnectReasonCode {
    DisconnectReasonCode::try_from(code).unwrap_or(DisconnectReasonCode::UnspecifiedError)
}

/// The SUBACK reason code byte (§3.9.3).
pub fn suback_code(c: &SubscribeReasonCode) -> u8 {
    use SubscribeReasonCode as S;
    match c {
        S::Success(q) => *q as u8,
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

/// A 3.1.1 client's SUBACK return code byte (3.1.1 §3.9.3: the granted QoS, or 0x80 for
/// any refusal), as [`write`] folds it.
pub fn suback_code_v4(c: &SubscribeReasonCode) -> u8 {
    match c {
        SubscribeReasonCode::Success(q) => *q as u8,
        _ => 0x80,
    }
}

/// The CONNACK reason code byte (§3.2.2.2) as a 5.0 client sees it.
pub fn connack_byte(code: ConnectReturnCode) -> u8 {
    use ConnectReturnCode as C;
    match connack_code_v5(code) {
        C::Success => 0,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
        C::RefusedProtocolVersion | C::BadClientId | C::ServiceUnavailable => 0x80,
    }
}

/// The PUBACK reason code byte (§3.4.2.1).
pub fn puback_code(r: PubAckReason) -> u8 {
    use PubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

/// The PUBREC reason code byte (§3.5.2.1: PUBACK's codes).
fn pubrec_code(r: PubRecReason) -> u8 {
    use PubRecReason as R;
    puback_code(match r {
        R::Success => PubAckReason::Success,
        R::NoMatchingSubscribers => PubAckReason::NoMatchingSubscribers,
        R::UnspecifiedError => PubAckReason::UnspecifiedError,
        R::ImplementationSpecificError => PubAckReason::ImplementationSpecificError,
        R::NotAuthorized => PubAckReason::NotAuthorized,
        R::TopicNameInvalid => PubAckReason::TopicNameInvalid,
        R::PacketIdentifierInUse => PubAckReason::PacketIdentifierInUse,
        R::QuotaExceeded => PubAckReason::QuotaExceeded,
        R::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
    })
}

/// The UNSUBACK reason code byte (§3.11.3).
pub fn unsuback_code(r: UnsubAckReason) -> u8 {
    use UnsubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoSubscriptionExisted => 0x11,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicFilterInvalid => 0x8F,
        R::PacketIdentifierInUse => 0x91,
    }
}

/// The PUBREC/PUBREL/PUBCOMP and ack reason codes of `p` as its record shows them.
pub fn ack_codes(p: &Packet) -> Option<Vec<u8>> {
    Some(match p {
        Packet::PubAck(a) => vec![puback_code(a.reason)],
        Packet::UnsubAck(a) => a.reasons.iter().map(|r| unsuback_code(*r)).collect(),
        Packet::PubRec(a) => vec![pubrec_code(a.reason)],
        Packet::PubRel(a) => vec![if a.reason == PubRelReason::Success { 0x00 } else { 0x92 }],
        Packet::PubComp(a) => vec![if a.reason == PubCompReason::Success { 0x00 } else { 0x92 }],
        _ => return None,
    })
}

/// `p` with every reason code its ack list lacks folded into one it has (see
/// [`AckCodes::fold`]); `None` when nothing changes. The folded codes are all Success
/// (0x00) or Unspecified error (0x80), which every MQTT 5 ack has.
pub fn fold_codes(p: &Packet, codes: &AckCodes) -> Option<Packet> {
    let unspecified = |c: u8, allowed: &[u8]| AckCodes::fold(allowed, c) != c;
    match p {
        Packet::ConnAck(a) if unspecified(connack_byte(a.code), codes.connack) => {
            let code = match AckCodes::fold(codes.connack, connack_byte(a.code)) {
                0 => ConnectReturnCode::Success,
                _ => ConnectReturnCode::UnspecifiedError,
            };
            Some(Packet::ConnAck(ConnAck { code, ..a.clone() }))
        }
        Packet::PubAck(a) if unspecified(puback_code(a.reason), codes.puback) => {
            let reason = match AckCodes::fold(codes.puback, puback_code(a.reason)) {
                0 => PubAckReason::Success,
                _ => PubAckReason::UnspecifiedError,
            };
            Some(Packet::PubAck(PubAck { reason, ..a.clone() }))
        }
        Packet::SubAck(a) if a.return_codes.iter().any(|c| unspecified(suback_code(c), codes.suback)) => {
            let return_codes = a
                .return_codes
                .iter()
                .map(|c| match AckCodes::fold(codes.suback, suback_code(c)) {
                    f if f == suback_code(c) => *c,
                    0 => SubscribeReasonCode::Success(QoS::AtMostOnce),
                    _ => SubscribeReasonCode::Unspecified,
                })
                .collect();
            Some(Packet::SubAck(SubAck { return_codes, ..a.clone() }))
        }
        Packet::UnsubAck(a) if a.reasons.iter().any(|r| unspecified(unsuback_code(*r), codes.unsuback)) => {
            let reasons = a
                .reasons
                .iter()
                .map(|r| match AckCodes::fold(codes.unsuback, unsuback_code(*r)) {
                    f if f == unsuback_code(*r) => *r,
                    0 => UnsubAckReason::Success,
                    _ => UnsubAckReason::UnspecifiedError,
                })
                .collect();
            Some(Packet::UnsubAck(UnsubAck { reasons, ..a.clone() }))
        }
        _ => None,
    }
}

/// A 3.1.1 client's CONNACK return code byte.
pub fn connack_byte_v4(code: ConnectReturnCode) -> u8 {
    connack_code_v4(code) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_disconnect_is_normal_disconnection() {
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        let p = read(&mut buf, 1 << 20, Protocol::Mqtt5).unwrap();
        assert_eq!(p, Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)));
        assert!(buf.is_empty());
    }

    #[test]
    fn disconnect_with_only_a_reason_code() {
        let mut buf = BytesMut::from(&[0xE0u8, 0x01, 0x04][..]);
        let p = read(&mut buf, 1 << 20, Protocol::Mqtt5).unwrap();
        assert_eq!(p, Packet::Disconnect(Disconnect::new(DisconnectReasonCode::DisconnectWithWillMessage)));
    }

    #[test]
    fn property_length_past_the_end_is_malformed_not_short() {
        // PUBLISH QoS 0, topic "a", property length 5 but nothing follows.
        let mut buf = BytesMut::from(&[0x30u8, 0x04, 0x00, 0x01, b'a', 0x05][..]);
        assert!(matches!(read(&mut buf, 1 << 20, Protocol::Mqtt5), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn reserved_subscription_option_bits_are_malformed() {
        // SUBSCRIBE pkid 1, no properties, "a" options 0xC0.
        let mut buf = BytesMut::from(&[0x82u8, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0xC0][..]);
        assert!(matches!(read(&mut buf, 1 << 20, Protocol::Mqtt5), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn mqisdp_connect_reads_as_311() {
        // CONNECT MQIsdp 3, clean, keepalive 60, client id "c".
        let frame = [0x10u8, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'c'];
        let mut buf = mqisdp_as_311(&frame).unwrap();
        match read(&mut buf, 1 << 20, Protocol::Mqtt311).unwrap() {
            Packet::Connect(c, None, None) => {
                assert_eq!((c.client_id.as_str(), c.keep_alive, c.clean_start), ("c", 60, true))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connack_codes_fold_for_311() {
        let mut out = BytesMut::new();
        write(
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized,
                properties: None,
            }),
            Protocol::Mqtt311,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], &[0x20, 2, 0, 5]);
        out.clear();
        write(
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::BadClientId,
                properties: None,
            }),
            Protocol::Mqtt5,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], &[0x20, 3, 0, 0x85, 0]);
    }
}
