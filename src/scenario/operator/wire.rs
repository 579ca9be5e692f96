//! The operator's packets in MQTT 3.1.1 (rumqttc's `mqttbytes::v4`) and MQTT 5 (rumqttc's
//! `v5::mqttbytes`): what it writes, and what it reads turned into one [`Incoming`].
//!
//! The 3.1.1 side writes exactly the bytes the operator always wrote. The MQTT 5 side
//! reads the frame first (the fixed header says how long it is) and then the packet from
//! that frame alone, so a property running past the frame's end is a malformed packet,
//! never "wait for more bytes"; a DISCONNECT with no reason code or no property length
//! (MQTT 5 §3.14.2.1, which rumqttc 0.25.1 does not read) is read here.

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};

use super::{Command, Protocol, PublishProperties, Received, Session};

/// A packet from the broker, in the terms the operator needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// `refused`: why the broker did not accept the CONNECT (`None`: it did).
    ConnAck {
        code: u8,
        refused: Option<String>,
    },
    SubAck {
        codes: Vec<u8>,
        reason_string: Option<String>,
    },
    /// `code`: `None` in 3.1.1 (no reason code on the wire).
    PubAck {
        pkid: u16,
        code: Option<u8>,
        reason_string: Option<String>,
    },
    /// `ack`: the packet id to acknowledge (QoS 1).
    Publish {
        received: Received,
        ack: Option<u16>,
    },
    Disconnect {
        code: u8,
        reason_string: Option<String>,
    },
    Other,
}

/// What [`read`] found at the front of the buffer.
#[derive(Debug)]
pub enum Read {
    Packet(Incoming),
    /// Not a whole packet yet.
    Need,
    Malformed(String),
}

pub fn connect(protocol: Protocol, s: &Session, keep_alive: u16, out: &mut BytesMut) -> Result<(), String> {
    match protocol {
        Protocol::Mqtt311 => {
            let mut c = v4::Connect::new(s.client_id.clone());
            c.keep_alive = keep_alive;
            c.login = s.login.clone().map(|(u, p)| v4::Login::new(u, p));
            v4::Packet::Connect(c).write(out, super::MAX_PACKET).map(drop).map_err(|e| e.to_string())
        }
        Protocol::Mqtt5 => {
            let c = v5::Connect { keep_alive, client_id: s.client_id.clone(), clean_start: true, properties: None };
            let login = s.login.clone().map(|(u, p)| v5::Login::new(u, p));
            v5::Packet::Connect(c, None, login).write(out, None).map(drop).map_err(|e| e.to_string())
        }
    }
}

/// One SUBSCRIBE for every filter, at QoS 0.
pub fn subscribe(protocol: Protocol, pkid: u16, filters: &[String], out: &mut BytesMut) -> Result<(), String> {
    match protocol {
        Protocol::Mqtt311 => {
            let subs = filters.iter().map(|f| v4::SubscribeFilter::new(f.clone(), m4::QoS::AtMostOnce));
            let mut s = v4::Subscribe::new_many(subs);
            s.pkid = pkid;
            v4::Packet::Subscribe(s).write(out, super::MAX_PACKET).map(drop).map_err(|e| e.to_string())
        }
        Protocol::Mqtt5 => {
            let subs = filters.iter().map(|f| v5::Filter::new(f.clone(), m5::QoS::AtMostOnce));
            let mut s = v5::Subscribe::new_many(subs, None);
            s.pkid = pkid;
            v5::Packet::Subscribe(s).write(out, None).map(drop).map_err(|e| e.to_string())
        }
    }
}

/// A PUBLISH at QoS 0 (`pkid` 0) or 1.
pub fn publish(protocol: Protocol, cmd: Command, pkid: u16, out: &mut BytesMut) -> Result<(), String> {
    match protocol {
        Protocol::Mqtt311 => {
            let qos = if cmd.qos == 1 { m4::QoS::AtLeastOnce } else { m4::QoS::AtMostOnce };
            let mut p = v4::Publish::new(cmd.topic, qos, cmd.payload.into_bytes());
            p.retain = cmd.retain;
            p.pkid = pkid;
            v4::Packet::Publish(p).write(out, super::MAX_PACKET).map(drop).map_err(|e| e.to_string())
        }
        Protocol::Mqtt5 => {
            let qos = if cmd.qos == 1 { m5::QoS::AtLeastOnce } else { m5::QoS::AtMostOnce };
            let props = (!cmd.properties.is_empty()).then(|| {
                let p = cmd.properties;
                v5::PublishProperties {
                    payload_format_indicator: None,
                    message_expiry_interval: p.message_expiry,
                    topic_alias: None,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data.map(bytes::Bytes::from),
                    user_properties: p.user_properties,
                    subscription_identifiers: Vec::new(),
                    content_type: p.content_type,
                }
            });
            let mut p = v5::Publish::new(cmd.topic, qos, cmd.payload.into_bytes(), props);
            p.retain = cmd.retain;
            p.pkid = pkid;
            v5::Packet::Publish(p).write(out, None).map(drop).map_err(|e| e.to_string())
        }
    }
}

pub fn puback(protocol: Protocol, pkid: u16, out: &mut BytesMut) -> Result<(), String> {
    match protocol {
        Protocol::Mqtt311 => {
            v4::Packet::PubAck(v4::PubAck::new(pkid)).write(out, super::MAX_PACKET).map(drop).map_err(|e| e.to_string())
        }
        Protocol::Mqtt5 => {
            v5::Packet::PubAck(v5::PubAck::new(pkid, None)).write(out, None).map(drop).map_err(|e| e.to_string())
        }
    }
}

pub fn pingreq(protocol: Protocol, out: &mut BytesMut) -> Result<(), String> {
    match protocol {
        Protocol::Mqtt311 => v4::Packet::PingReq.write(out, super::MAX_PACKET).map(drop).map_err(|e| e.to_string()),
        Protocol::Mqtt5 => v5::Packet::PingReq(v5::PingReq).write(out, None).map(drop).map_err(|e| e.to_string()),
    }
}

/// Reads the packet at the front of `buf`.
pub fn read(protocol: Protocol, buf: &mut BytesMut, max: usize) -> Read {
    match protocol {
        Protocol::Mqtt311 => read_v4(buf, max),
        Protocol::Mqtt5 => read_v5(buf, max),
    }
}

fn read_v4(buf: &mut BytesMut, max: usize) -> Read {
    let packet = match v4::Packet::read(buf, max) {
        Ok(p) => p,
        Err(m4::Error::InsufficientBytes(_)) => return Read::Need,
        Err(e) => return Read::Malformed(e.to_string()),
    };
    Read::Packet(match packet {
        v4::Packet::ConnAck(ack) => {
            let refused = (ack.code != v4::ConnectReturnCode::Success).then(|| format!("CONNACK {:?}", ack.code));
            Incoming::ConnAck { code: ack.code as u8, refused }
        }
        v4::Packet::SubAck(ack) => Incoming::SubAck {
            codes: ack
                .return_codes
                .iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => *q as u8,
                    v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
            reason_string: None,
        },
        v4::Packet::PubAck(ack) => Incoming::PubAck { pkid: ack.pkid, code: None, reason_string: None },
        v4::Packet::Publish(p) => Incoming::Publish {
            ack: (p.qos == m4::QoS::AtLeastOnce).then_some(p.pkid),
            received: Received {
                topic: p.topic.clone(),
                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                retain: p.retain,
                properties: PublishProperties::default(),
            },
        },
        _ => Incoming::Other,
    })
}

fn read_v5(buf: &mut BytesMut, max: usize) -> Read {
    let header = match v5::check(buf.iter(), Some(max as u32)) {
        Ok(h) => h,
        Err(m5::Error::InsufficientBytes(_)) => return Read::Need,
        Err(e) => return Read::Malformed(e.to_string()),
    };
    let mut frame = buf.split_to(header.frame_length());
    // DISCONNECT with no reason code (0x00) or with a reason code and no properties.
    if frame[0] == 0xE0 && frame.len() <= 3 {
        let code = frame.get(2).copied().unwrap_or(0);
        frame.advance(frame.len());
        return Read::Packet(Incoming::Disconnect { code, reason_string: None });
    }
    let packet = match v5::Packet::read(&mut frame, None) {
        Ok(p) => p,
        Err(e) => return Read::Malformed(e.to_string()),
    };
    Read::Packet(match packet {
        v5::Packet::ConnAck(ack) => {
            let code = connack_code(ack.code);
            let reason = ack.properties.and_then(|p| p.reason_string).map(|r| format!(", {r:?}")).unwrap_or_default();
            let refused = (code != 0).then(|| format!("CONNACK 0x{code:02X} ({:?}{reason})", ack.code));
            Incoming::ConnAck { code, refused }
        }
        v5::Packet::SubAck(ack) => Incoming::SubAck {
            codes: ack.return_codes.iter().map(|c| suback_code(*c)).collect(),
            reason_string: ack.properties.and_then(|p| p.reason_string),
        },
        v5::Packet::PubAck(ack) => Incoming::PubAck {
            pkid: ack.pkid,
            code: Some(puback_code(ack.reason)),
            reason_string: ack.properties.and_then(|p| p.reason_string),
        },
        v5::Packet::Publish(p) => {
            let props = p.properties.map(|q| PublishProperties {
                user_properties: q.user_properties,
                message_expiry: q.message_expiry_interval,
                response_topic: q.response_topic,
                correlation_data: q.correlation_data.map(|b| b.to_vec()),
                content_type: q.content_type,
            });
            Incoming::Publish {
                ack: (p.qos == m5::QoS::AtLeastOnce).then_some(p.pkid),
                received: Received {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: String::from_utf8_lossy(&p.payload).into_owned(),
                    retain: p.retain,
                    properties: props.unwrap_or_default(),
                },
            }
        }
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            code: d.reason_code as u8,
            reason_string: d.properties.and_then(|p| p.reason_string),
        },
        _ => Incoming::Other,
    })
}

/// CONNACK reason codes (MQTT 5 §3.2.2.2).
fn connack_code(c: v5::ConnectReturnCode) -> u8 {
    use v5::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
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
        // 3.1.1's return codes; rumqttc's v5 reader never makes them.
        C::RefusedProtocolVersion => 0x01,
        C::BadClientId => 0x02,
        C::ServiceUnavailable => 0x03,
    }
}

/// SUBACK reason codes (MQTT 5 §3.9.3).
fn suback_code(c: v5::SubscribeReasonCode) -> u8 {
    use v5::SubscribeReasonCode as S;
    match c {
        S::Success(q) => q as u8,
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

/// PUBACK reason codes (MQTT 5 §3.4.2.1).
fn puback_code(r: v5::PubAckReason) -> u8 {
    use v5::PubAckReason as P;
    match r {
        P::Success => 0x00,
        P::NoMatchingSubscribers => 0x10,
        P::UnspecifiedError => 0x80,
        P::ImplementationSpecificError => 0x83,
        P::NotAuthorized => 0x87,
        P::TopicNameInvalid => 0x90,
        P::PacketIdentifierInUse => 0x91,
        P::QuotaExceeded => 0x97,
        P::PayloadFormatInvalid => 0x99,
    }
}

/// The specification's name of a SUBACK reason code.
pub fn suback_name(code: u8) -> &'static str {
    match code {
        0x00 => "Granted QoS 0",
        0x01 => "Granted QoS 1",
        0x02 => "Granted QoS 2",
        0x83 => "Implementation specific error",
        0x87 => "Not authorized",
        0x8F => "Topic Filter invalid",
        0x91 => "Packet Identifier in use",
        0x97 => "Quota exceeded",
        0x9E => "Shared Subscriptions not supported",
        0xA1 => "Subscription Identifiers not supported",
        0xA2 => "Wildcard Subscriptions not supported",
        _ => "Unspecified error",
    }
}

/// The specification's name of a PUBACK reason code.
pub fn puback_name(code: u8) -> &'static str {
    match code {
        0x00 => "Success",
        0x10 => "No matching subscribers",
        0x83 => "Implementation specific error",
        0x87 => "Not authorized",
        0x90 => "Topic Name invalid",
        0x91 => "Packet identifier in use",
        0x97 => "Quota exceeded",
        0x99 => "Payload format invalid",
        _ => "Unspecified error",
    }
}

/// The specification's name of a DISCONNECT reason code (§3.14.2.1).
pub fn disconnect_name(code: u8) -> String {
    match v5::DisconnectReasonCode::try_from(code) {
        Ok(c) => format!("{c:?}"),
        Err(_) => "an unknown reason code".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_disconnects_and_cut_properties() {
        let mut b = BytesMut::from(&[0xE0u8, 0x00, 0xE0, 0x01, 0x8E][..]);
        assert!(matches!(read(Protocol::Mqtt5, &mut b, 1024), Read::Packet(Incoming::Disconnect { code: 0, .. })));
        assert!(matches!(read(Protocol::Mqtt5, &mut b, 1024), Read::Packet(Incoming::Disconnect { code: 0x8E, .. })));
        assert!(b.is_empty());
        // A SUBACK whose property length runs past its frame is malformed, not "more bytes".
        let mut b = BytesMut::from(&[0x90u8, 0x04, 0x00, 0x01, 0x09, 0x00, 0x90, 0x04][..]);
        assert!(matches!(read(Protocol::Mqtt5, &mut b, 1024), Read::Malformed(_)), "{b:?}");
        // Half a packet waits.
        let mut b = BytesMut::from(&[0x90u8, 0x04, 0x00][..]);
        assert!(matches!(read(Protocol::Mqtt5, &mut b, 1024), Read::Need));
    }

    #[test]
    fn suback_and_puback_codes_are_the_bytes_on_the_wire() {
        let mut b =
            BytesMut::from(&[0x90u8, 0x05, 0x00, 0x01, 0x00, 0x00, 0x97, 0x40, 0x04, 0x00, 0x02, 0x10, 0x00][..]);
        assert_eq!(
            format!("{:?}", read(Protocol::Mqtt5, &mut b, 1024)),
            "Packet(SubAck { codes: [0, 151], reason_string: None })"
        );
        assert_eq!(
            format!("{:?}", read(Protocol::Mqtt5, &mut b, 1024)),
            "Packet(PubAck { pkid: 2, code: Some(16), reason_string: None })"
        );
    }
}
