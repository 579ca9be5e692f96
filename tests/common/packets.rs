//! A raw MQTT 3.1.1 peer over any async stream (TCP, TLS, an in-memory duplex): send
//! packets or bytes, read packets one at a time with a timeout, see the close. Encoding and
//! decoding are rumqttc's `mqttbytes`, so tests see exactly what went over the wire.
//! Under a paused tokio clock a timeout costs no real time.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, LastWill, Login, Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What reading a packet ended with, other than a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// EOF or a reset: the other side closed.
    Closed,
    /// Nothing whole arrived in time.
    Timeout,
    /// Bytes that are not MQTT.
    Malformed(String),
}

pub struct Peer<S> {
    stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    pub fn new(stream: S) -> Peer<S> {
        Peer { stream, buf: BytesMut::new() }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, 1 << 28).expect("encodable packet");
        self.send_raw(&out).await;
    }

    /// Writes bytes; a write to a closed link is ignored (the read says Closed).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    pub async fn recv(&mut self, timeout: Duration) -> Result<Packet, Recv> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Packet::read(&mut self.buf, 1 << 28) {
                Ok(p) => return Ok(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(Recv::Malformed(e.to_string())),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(Recv::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Recv::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet, which must come within `timeout`.
    pub async fn expect(&mut self, timeout: Duration) -> Packet {
        match self.recv(timeout).await {
            Ok(p) => p,
            Err(e) => panic!("expected a packet within {timeout:?}, got {e:?}"),
        }
    }

    /// The next PUBLISH (acknowledged if QoS 1), which must come within `timeout`.
    pub async fn expect_publish(&mut self, timeout: Duration) -> Publish {
        match self.expect(timeout).await {
            Packet::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    self.send(Packet::PubAck(PubAck::new(p.pkid))).await;
                }
                p
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// The link must close within `timeout` with no packet before.
    pub async fn expect_closed(&mut self, timeout: Duration) {
        match self.recv(timeout).await {
            Err(Recv::Closed) => {}
            other => panic!("expected the link closed within {timeout:?} with no packet, got {other:?}"),
        }
    }

    /// Nothing may arrive for `dur` (the link may stay open or close).
    pub async fn expect_silence(&mut self, dur: Duration) {
        match self.recv(dur).await {
            Err(Recv::Timeout) | Err(Recv::Closed) => {}
            other => panic!("expected nothing for {dur:?}, got {other:?}"),
        }
    }

    /// Sends CONNECT and returns the CONNACK (or why there was none within 5 s).
    pub async fn connect(&mut self, c: Connect) -> Result<ConnAck, Recv> {
        self.send(Packet::Connect(c)).await;
        match self.recv(Duration::from_secs(5)).await? {
            Packet::ConnAck(a) => Ok(a),
            other => Err(Recv::Malformed(format!("expected CONNACK, got {other:?}"))),
        }
    }

    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, QoS)]) -> Vec<u8> {
        let filters = filters.iter().map(|(f, q)| SubscribeFilter::new(f.to_string(), *q)).collect();
        self.send(Packet::Subscribe(Subscribe { pkid, filters })).await;
        match self.expect(Duration::from_secs(5)).await {
            Packet::SubAck(a) if a.pkid == pkid => a
                .return_codes
                .iter()
                .map(|c| match c {
                    rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(q) => *q as u8,
                    rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
            other => panic!("expected SUBACK {pkid}, got {other:?}"),
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &str, qos: QoS, retain: bool, pkid: u16) {
        let mut p = Publish::new(topic, qos, payload.as_bytes().to_vec());
        p.retain = retain;
        p.pkid = pkid;
        self.send(Packet::Publish(p)).await;
    }
}

/// A plain in-memory link to `broker` (the aws-iot profile serves it as 443 + ALPN
/// `mqtt`), its server side served on a task of the current runtime.
pub fn in_memory(broker: &tasmota_sim::broker::Broker) -> Peer<tokio::io::DuplexStream> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let b = broker.clone();
    let link = tasmota_sim::broker::LinkInfo { peer: "test".into(), tls: None };
    tokio::spawn(async move { b.serve(server, link).await });
    Peer::new(client)
}

/// A CONNECT packet.
pub fn connect(client_id: &str, login: Option<(&str, &str)>, clean: bool, keep_alive: u16) -> Connect {
    let mut c = Connect::new(client_id);
    c.clean_session = clean;
    c.keep_alive = keep_alive;
    c.login = login.map(|(u, p)| Login::new(u, p));
    c
}

/// A CONNECT with a will.
pub fn with_will(mut c: Connect, topic: &str, payload: &str, qos: QoS, retain: bool) -> Connect {
    c.last_will = Some(LastWill::new(topic, payload, qos, retain));
    c
}
