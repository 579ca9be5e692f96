//! A raw MQTT 5 peer over any async stream: send packets or bytes, read packets one at a
//! time with a timeout, see the close. Encoding and decoding are rumqttc's v5
//! `mqttbytes` (not the broker's reader), with the two DISCONNECT forms rumqttc 0.25.1
//! cannot read taken here. Its read errors are [`super::packets::Recv`]'s.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{Disconnect, DisconnectReasonCode, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::packets::Recv;

pub struct Peer5<S> {
    pub stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer5<S> {
    pub fn new(stream: S) -> Peer5<S> {
        Peer5 { stream, buf: BytesMut::new() }
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, None).expect("encodable");
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
            if self.buf.len() >= 2 && self.buf[0] == 0xE0 && self.buf[1] == 0 {
                // rumqttc 0.25.1 cannot read a DISCONNECT with remaining length 0.
                let _ = self.buf.split_to(2);
                return Ok(Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)));
            }
            if self.buf.len() >= 3 && self.buf[0] == 0xE0 && self.buf[1] == 1 {
                // ... nor one with a reason code and no property length (§3.14.2.2.1).
                let Ok(code) = DisconnectReasonCode::try_from(self.buf[2]) else {
                    return Err(Recv::Malformed(format!("DISCONNECT reason code 0x{:02X}", self.buf[2])));
                };
                let _ = self.buf.split_to(3);
                return Ok(Packet::Disconnect(Disconnect::new(code)));
            }
            match Packet::read(&mut self.buf, None) {
                Ok(p) => return Ok(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
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
}
