//! MQTT 3.1.1 control packets: encoding and decoding, byte for byte as the standard
//! (OASIS mqtt-v3.1.1, section 2 and 3) lays them out.
//!
//! Both directions of every packet type are here, so the codec can be tested by round
//! trip; the device only ever sends CONNECT, PUBLISH (QoS 0), PUBACK, SUBSCRIBE,
//! PINGREQ, PINGRESP and DISCONNECT. [`decode`] takes a byte buffer and either returns
//! one whole packet and its length, asks for more bytes, or names what is wrong.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The protocol name and level of MQTT 3.1.1 in CONNECT.
pub const PROTOCOL_NAME: &str = "MQTT";
pub const PROTOCOL_LEVEL: u8 = 4;

/// A last will carried in CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub client_id: String,
    pub clean_session: bool,
    /// Keepalive in seconds.
    pub keepalive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// Present for QoS 1 and 2.
    pub packet_id: Option<u16>,
}

/// One MQTT 3.1.1 control packet.
#[derive(Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    Connack { session_present: bool, return_code: u8 },
    Publish(Publish),
    Puback(u16),
    Pubrec(u16),
    Pubrel(u16),
    Pubcomp(u16),
    Subscribe { packet_id: u16, filters: Vec<(String, u8)> },
    Suback { packet_id: u16, return_codes: Vec<u8> },
    Unsubscribe { packet_id: u16, filters: Vec<String> },
    Unsuback(u16),
    Pingreq,
    Pingresp,
    Disconnect,
}

/// Debug output never shows a password.
impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Packet::Connect(c) => f
                .debug_struct("Connect")
                .field("client_id", &c.client_id)
                .field("clean_session", &c.clean_session)
                .field("keepalive", &c.keepalive)
                .field("username", &c.username)
                .field("password", &c.password.as_ref().map(|_| "<redacted>"))
                .field("will", &c.will)
                .finish(),
            Packet::Connack { session_present, return_code } => {
                write!(f, "Connack {{ session_present: {session_present}, return_code: {return_code} }}")
            }
            Packet::Publish(p) => f.debug_tuple("Publish").field(p).finish(),
            Packet::Puback(id) => write!(f, "Puback({id})"),
            Packet::Pubrec(id) => write!(f, "Pubrec({id})"),
            Packet::Pubrel(id) => write!(f, "Pubrel({id})"),
            Packet::Pubcomp(id) => write!(f, "Pubcomp({id})"),
            Packet::Subscribe { packet_id, filters } => write!(f, "Subscribe({packet_id}, {filters:?})"),
            Packet::Suback { packet_id, return_codes } => write!(f, "Suback({packet_id}, {return_codes:?})"),
            Packet::Unsubscribe { packet_id, filters } => write!(f, "Unsubscribe({packet_id}, {filters:?})"),
            Packet::Unsuback(id) => write!(f, "Unsuback({id})"),
            Packet::Pingreq => f.write_str("Pingreq"),
            Packet::Pingresp => f.write_str("Pingresp"),
            Packet::Disconnect => f.write_str("Disconnect"),
        }
    }
}

/// Why bytes are not a valid packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The remaining length field runs past four bytes.
    MalformedLength,
    /// The whole packet would be longer than the receiver's buffer.
    TooLarge { len: usize, max: usize },
    /// Packet type 0 or 15.
    ReservedType(u8),
    /// Fixed-header flags that the packet type does not allow.
    BadFlags { kind: u8, flags: u8 },
    /// The body ends before a field does, or goes on after the last field.
    BadLength { kind: u8 },
    /// A string that is not UTF-8.
    BadUtf8,
    /// QoS 3.
    BadQos,
    /// A CONNECT with another protocol name or level, or reserved flags.
    BadConnect,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::MalformedLength => f.write_str("remaining length longer than 4 bytes"),
            DecodeError::TooLarge { len, max } => write!(f, "packet of {len} bytes is over the {max} byte limit"),
            DecodeError::ReservedType(t) => write!(f, "reserved packet type {t}"),
            DecodeError::BadFlags { kind, flags } => write!(f, "flags {flags:#x} not allowed on packet type {kind}"),
            DecodeError::BadLength { kind } => write!(f, "packet type {kind} has a body of the wrong length"),
            DecodeError::BadUtf8 => f.write_str("string is not UTF-8"),
            DecodeError::BadQos => f.write_str("QoS 3"),
            DecodeError::BadConnect => f.write_str("CONNECT is not MQTT 3.1.1 or has reserved flags set"),
        }
    }
}

/// Reads the fixed header: `Some((first byte, remaining length, header length))`, or
/// `None` while the length field is still incomplete.
pub fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((first, len, 2 + i)));
        }
    }
    Err(DecodeError::MalformedLength)
}

/// Decodes the first packet in `buf`: `Ok(None)` if more bytes are needed, otherwise the
/// packet and how many bytes it used. A packet longer than `max` bytes is an error as
/// soon as its header says so.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some((first, len, header)) = fixed_header(buf)? else { return Ok(None) };
    let total = header + len;
    if total > max {
        return Err(DecodeError::TooLarge { len: total, max });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let packet = parse(first, &buf[header..total])?;
    Ok(Some((packet, total)))
}

struct Reader<'a> {
    buf: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::BadLength { kind: self.kind });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        core::str::from_utf8(b).map(String::from).map_err(|_| DecodeError::BadUtf8)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::BadLength { kind: self.kind })
        }
    }
}

fn parse(first: u8, body: &[u8]) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    let mut r = Reader { buf: body, kind };
    let expect_flags = |want: u8| if flags == want { Ok(()) } else { Err(DecodeError::BadFlags { kind, flags }) };
    let packet = match kind {
        1 => {
            expect_flags(0)?;
            if r.string()? != PROTOCOL_NAME || r.u8()? != PROTOCOL_LEVEL {
                return Err(DecodeError::BadConnect);
            }
            let cf = r.u8()?;
            let will_flag = cf & 0x04 != 0;
            let will_qos = (cf >> 3) & 3;
            let will_retain = cf & 0x20 != 0;
            if cf & 0x01 != 0 || will_qos == 3 || (!will_flag && (will_qos != 0 || will_retain)) {
                return Err(DecodeError::BadConnect);
            }
            if cf & 0x80 == 0 && cf & 0x40 != 0 {
                return Err(DecodeError::BadConnect);
            }
            let keepalive = r.u16()?;
            let client_id = r.string()?;
            let will = if will_flag {
                let topic = r.string()?;
                let payload = r.bytes()?.to_vec();
                Some(Will { topic, payload, qos: will_qos, retain: will_retain })
            } else {
                None
            };
            let username = if cf & 0x80 != 0 { Some(r.string()?) } else { None };
            let password = if cf & 0x40 != 0 { Some(r.bytes()?.to_vec()) } else { None };
            Packet::Connect(Connect { client_id, clean_session: cf & 0x02 != 0, keepalive, username, password, will })
        }
        2 => {
            expect_flags(0)?;
            let ack = r.u8()?;
            let return_code = r.u8()?;
            if ack & 0xFE != 0 {
                return Err(DecodeError::BadLength { kind });
            }
            Packet::Connack { session_present: ack & 1 != 0, return_code }
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(DecodeError::BadQos);
            }
            let topic = r.string()?;
            let packet_id = if qos > 0 { Some(r.u16()?) } else { None };
            let payload = r.buf.to_vec();
            r.buf = &[];
            Packet::Publish(Publish { topic, payload, qos, retain: flags & 1 != 0, dup: flags & 8 != 0, packet_id })
        }
        4 => {
            expect_flags(0)?;
            Packet::Puback(r.u16()?)
        }
        5 => {
            expect_flags(0)?;
            Packet::Pubrec(r.u16()?)
        }
        6 => {
            expect_flags(2)?;
            Packet::Pubrel(r.u16()?)
        }
        7 => {
            expect_flags(0)?;
            Packet::Pubcomp(r.u16()?)
        }
        8 => {
            expect_flags(2)?;
            let packet_id = r.u16()?;
            let mut filters = Vec::new();
            while !r.buf.is_empty() {
                let filter = r.string()?;
                let qos = r.u8()?;
                if qos > 2 {
                    return Err(DecodeError::BadQos);
                }
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return Err(DecodeError::BadLength { kind });
            }
            Packet::Subscribe { packet_id, filters }
        }
        9 => {
            expect_flags(0)?;
            let packet_id = r.u16()?;
            let return_codes = r.buf.to_vec();
            r.buf = &[];
            Packet::Suback { packet_id, return_codes }
        }
        10 => {
            expect_flags(2)?;
            let packet_id = r.u16()?;
            let mut filters = Vec::new();
            while !r.buf.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::BadLength { kind });
            }
            Packet::Unsubscribe { packet_id, filters }
        }
        11 => {
            expect_flags(0)?;
            Packet::Unsuback(r.u16()?)
        }
        12 => {
            expect_flags(0)?;
            Packet::Pingreq
        }
        13 => {
            expect_flags(0)?;
            Packet::Pingresp
        }
        14 => {
            expect_flags(0)?;
            Packet::Disconnect
        }
        t => return Err(DecodeError::ReservedType(t)),
    };
    r.end()?;
    Ok(packet)
}

struct Writer {
    body: Vec<u8>,
}

impl Writer {
    fn u16(&mut self, v: u16) {
        self.body.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Fields longer than 65535 bytes cannot be encoded; callers cap them first.
        let n = b.len().min(usize::from(u16::MAX));
        self.u16(n as u16);
        self.body.extend_from_slice(&b[..n]);
    }
    fn finish(self, first: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 5);
        out.push(first);
        let mut len = self.body.len();
        loop {
            let mut b = (len & 0x7F) as u8;
            len >>= 7;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(&self.body);
        out
    }
}

impl Packet {
    /// The packet's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer { body: Vec::new() };
        let first = match self {
            Packet::Connect(c) => {
                w.bytes(PROTOCOL_NAME.as_bytes());
                w.body.push(PROTOCOL_LEVEL);
                let mut cf = 0u8;
                if c.clean_session {
                    cf |= 0x02;
                }
                if let Some(will) = &c.will {
                    cf |= 0x04 | (will.qos & 3) << 3;
                    if will.retain {
                        cf |= 0x20;
                    }
                }
                if c.username.is_some() {
                    cf |= 0x80;
                }
                if c.password.is_some() {
                    cf |= 0x40;
                }
                w.body.push(cf);
                w.u16(c.keepalive);
                w.bytes(c.client_id.as_bytes());
                if let Some(will) = &c.will {
                    w.bytes(will.topic.as_bytes());
                    w.bytes(&will.payload);
                }
                if let Some(user) = &c.username {
                    w.bytes(user.as_bytes());
                }
                if let Some(pass) = &c.password {
                    w.bytes(pass);
                }
                0x10
            }
            Packet::Connack { session_present, return_code } => {
                w.body.push(u8::from(*session_present));
                w.body.push(*return_code);
                0x20
            }
            Packet::Publish(p) => {
                w.bytes(p.topic.as_bytes());
                if p.qos > 0 {
                    w.u16(p.packet_id.unwrap_or(0));
                }
                w.body.extend_from_slice(&p.payload);
                0x30 | u8::from(p.dup) << 3 | (p.qos & 3) << 1 | u8::from(p.retain)
            }
            Packet::Puback(id) => {
                w.u16(*id);
                0x40
            }
            Packet::Pubrec(id) => {
                w.u16(*id);
                0x50
            }
            Packet::Pubrel(id) => {
                w.u16(*id);
                0x62
            }
            Packet::Pubcomp(id) => {
                w.u16(*id);
                0x70
            }
            Packet::Subscribe { packet_id, filters } => {
                w.u16(*packet_id);
                for (filter, qos) in filters {
                    w.bytes(filter.as_bytes());
                    w.body.push(*qos);
                }
                0x82
            }
            Packet::Suback { packet_id, return_codes } => {
                w.u16(*packet_id);
                w.body.extend_from_slice(return_codes);
                0x90
            }
            Packet::Unsubscribe { packet_id, filters } => {
                w.u16(*packet_id);
                for filter in filters {
                    w.bytes(filter.as_bytes());
                }
                0xA2
            }
            Packet::Unsuback(id) => {
                w.u16(*id);
                0xB0
            }
            Packet::Pingreq => 0xC0,
            Packet::Pingresp => 0xD0,
            Packet::Disconnect => 0xE0,
        };
        w.finish(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn round_trip(p: Packet, bytes: &[u8]) {
        assert_eq!(p.encode(), bytes, "{p:?}");
        assert_eq!(decode(bytes, 1 << 20), Ok(Some((p, bytes.len()))));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn connect_as_tasmota_sends_it() {
        let c = Connect {
            client_id: "DVES_4B3316".into(),
            clean_session: true,
            keepalive: 30,
            username: Some("DVES_USER".into()),
            password: Some(b"pw".to_vec()),
            will: Some(Will {
                topic: "tele/tasmota_4B3316/LWT".into(),
                payload: b"Offline".to_vec(),
                qos: 1,
                retain: true,
            }),
        };
        let mut want = vec![0x10, 72, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 30, 0, 11];
        want.extend_from_slice(b"DVES_4B3316");
        want.extend_from_slice(&[0, 23]);
        want.extend_from_slice(b"tele/tasmota_4B3316/LWT");
        want.extend_from_slice(&[0, 7]);
        want.extend_from_slice(b"Offline");
        want.extend_from_slice(&[0, 9]);
        want.extend_from_slice(b"DVES_USER");
        want.extend_from_slice(&[0, 2, b'p', b'w']);
        assert_eq!(usize::from(want[1]), want.len() - 2);
        round_trip(Packet::Connect(c), &want);
    }

    #[test]
    fn connect_without_credentials_or_will() {
        let c = Connect {
            client_id: "c".into(),
            clean_session: false,
            keepalive: 1200,
            username: None,
            password: None,
            will: None,
        };
        round_trip(Packet::Connect(c), &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0x04, 0xB0, 0, 1, b'c']);
    }

    #[test]
    fn every_other_packet_type() {
        round_trip(Packet::Connack { session_present: false, return_code: 5 }, &[0x20, 2, 0, 5]);
        round_trip(Packet::Connack { session_present: true, return_code: 0 }, &[0x20, 2, 1, 0]);
        let p =
            Publish { topic: "a/b".into(), payload: b"ON".to_vec(), qos: 0, retain: true, dup: false, packet_id: None };
        round_trip(Packet::Publish(p), &[0x31, 7, 0, 3, b'a', b'/', b'b', b'O', b'N']);
        let p = Publish { topic: "t".into(), payload: vec![], qos: 1, retain: false, dup: true, packet_id: Some(258) };
        round_trip(Packet::Publish(p), &[0x3A, 5, 0, 1, b't', 1, 2]);
        round_trip(Packet::Puback(7), &[0x40, 2, 0, 7]);
        round_trip(Packet::Pubrec(7), &[0x50, 2, 0, 7]);
        round_trip(Packet::Pubrel(7), &[0x62, 2, 0, 7]);
        round_trip(Packet::Pubcomp(7), &[0x70, 2, 0, 7]);
        round_trip(
            Packet::Subscribe { packet_id: 2, filters: vec![("c/#".into(), 0), ("x".into(), 1)] },
            &[0x82, 12, 0, 2, 0, 3, b'c', b'/', b'#', 0, 0, 1, b'x', 1],
        );
        round_trip(Packet::Suback { packet_id: 2, return_codes: vec![0, 0x80] }, &[0x90, 4, 0, 2, 0, 0x80]);
        round_trip(Packet::Unsubscribe { packet_id: 3, filters: vec!["x".into()] }, &[0xA2, 5, 0, 3, 0, 1, b'x']);
        round_trip(Packet::Unsuback(3), &[0xB0, 2, 0, 3]);
        round_trip(Packet::Pingreq, &[0xC0, 0]);
        round_trip(Packet::Pingresp, &[0xD0, 0]);
        round_trip(Packet::Disconnect, &[0xE0, 0]);
    }

    #[test]
    fn multi_byte_remaining_length() {
        let p =
            Publish { topic: "t".into(), payload: vec![b'x'; 200], qos: 0, retain: false, dup: false, packet_id: None };
        let bytes = Packet::Publish(p.clone()).encode();
        assert_eq!(&bytes[..3], &[0x30, 203 & 0x7F | 0x80, 1]);
        assert_eq!(decode(&bytes, 1200), Ok(Some((Packet::Publish(p), 206))));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(decode(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], 1200), Err(DecodeError::MalformedLength));
        assert_eq!(decode(&[0x30, 0xB0, 0x09], 1200), Err(DecodeError::TooLarge { len: 1203, max: 1200 }));
        assert_eq!(decode(&[0x00, 0], 1200), Err(DecodeError::ReservedType(0)));
        assert_eq!(decode(&[0xF0, 0], 1200), Err(DecodeError::ReservedType(15)));
        assert_eq!(decode(&[0x21, 2, 0, 0], 1200), Err(DecodeError::BadFlags { kind: 2, flags: 1 }));
        assert_eq!(decode(&[0x20, 3, 0, 0, 0], 1200), Err(DecodeError::BadLength { kind: 2 }));
        assert_eq!(decode(&[0x36, 3, 0, 1, b't'], 1200), Err(DecodeError::BadQos));
        assert_eq!(decode(&[0x30, 3, 0, 1, 0xFF], 1200), Err(DecodeError::BadUtf8));
        assert_eq!(decode(&[0xC0, 1, 0], 1200), Err(DecodeError::BadLength { kind: 12 }));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Connect {
            client_id: "c".into(),
            clean_session: true,
            keepalive: 30,
            username: Some("u".into()),
            password: Some(b"hunter2".to_vec()),
            will: None,
        };
        let text = alloc::format!("{:?}", Packet::Connect(c));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"));
    }
}
