//! The operator: an MQTT client standing where a person with `mosquitto_sub`/`_pub` or
//! the AWS console's MQTT test client would stand. It subscribes, publishes commands and
//! reports every message it receives to the scenario runner.
//!
//! It speaks MQTT 3.1.1 through rumqttc's codec (not the device's), over any byte stream:
//! an in-memory link to an embedded broker, or TCP/TLS to a real one.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::link::BoxStream;

/// The keepalive the operator asks for; it pings on time.
const KEEPALIVE_S: u16 = 60;
const MAX_PACKET: usize = 256 * 1024;

/// A message the operator received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Received {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// What the operator tells the runner.
#[derive(Debug)]
pub enum OperatorEvent {
    /// Connected and subscribed.
    Ready,
    Message(Received),
    /// The link ended; why.
    Down(String),
    /// The broker refused something without ending the link (a subscription).
    Refused(String),
}

/// What the runner asks of the operator.
#[derive(Debug)]
pub struct Command {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    pub qos: u8,
}

/// Runs one operator session on `stream` until the link ends or `commands` closes
/// (then it returns without a `Down` event).
pub async fn run(
    mut stream: BoxStream,
    client_id: String,
    login: Option<(String, String)>,
    filters: Vec<String>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &impl Fn(OperatorEvent),
) {
    let mut connect = Connect::new(client_id);
    connect.keep_alive = KEEPALIVE_S;
    connect.login = login.map(|(u, p)| Login::new(u, p));
    let mut out = BytesMut::new();
    let mut rbuf = BytesMut::new();
    let mut next_pkid: u16 = 0;
    let mut pkid = || {
        next_pkid = next_pkid % u16::MAX + 1;
        next_pkid
    };
    if let Err(e) = Packet::Connect(connect).write(&mut out, MAX_PACKET) {
        return events(OperatorEvent::Down(format!("cannot encode CONNECT: {e}")));
    }
    let mut subscribed = filters.is_empty();
    // The topic of the last PUBLISH sent, to say what the broker may have closed the link for.
    let mut last_publish: Option<String> = None;
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
                    let packet = match Packet::read(&mut rbuf, MAX_PACKET) {
                        Ok(p) => p,
                        Err(mqttbytes::Error::InsufficientBytes(_)) => break,
                        Err(e) => return events(OperatorEvent::Down(format!("malformed packet from the broker: {e}"))),
                    };
                    match packet {
                        Packet::ConnAck(ack) => {
                            if ack.code != rumqttc::mqttbytes::v4::ConnectReturnCode::Success {
                                return events(OperatorEvent::Down(format!("CONNACK {:?}", ack.code)));
                            }
                            connected = true;
                            if subscribed {
                                events(OperatorEvent::Ready);
                            } else {
                                let subs: Vec<SubscribeFilter> = filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtMostOnce)).collect();
                                let mut s = Subscribe::new_many(subs);
                                s.pkid = pkid();
                                if let Err(e) = Packet::Subscribe(s).write(&mut out, MAX_PACKET) {
                                    return events(OperatorEvent::Down(format!("cannot encode SUBSCRIBE: {e}")));
                                }
                            }
                        }
                        Packet::SubAck(ack) if !subscribed => {
                            subscribed = true;
                            for (filter, code) in filters.iter().zip(&ack.return_codes) {
                                if *code == rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure {
                                    events(OperatorEvent::Refused(format!("had its subscription to '{filter}' refused (SUBACK 0x80)")));
                                }
                            }
                            events(OperatorEvent::Ready);
                        }
                        Packet::Publish(p) => {
                            if p.qos == QoS::AtLeastOnce {
                                let _ = Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(p.pkid)).write(&mut out, MAX_PACKET);
                            }
                            events(OperatorEvent::Message(Received {
                                topic: p.topic.clone(),
                                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                                retain: p.retain,
                            }));
                        }
                        _ => {}
                    }
                }
            }
            cmd = commands.recv(), if connected => {
                let Some(cmd) = cmd else { return };
                let qos = if cmd.qos == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                last_publish = Some(cmd.topic.clone());
                let mut p = Publish::new(cmd.topic, qos, cmd.payload.into_bytes());
                p.retain = cmd.retain;
                if qos == QoS::AtLeastOnce {
                    p.pkid = pkid();
                }
                if let Err(e) = Packet::Publish(p).write(&mut out, MAX_PACKET) {
                    tracing::warn!("operator: cannot encode PUBLISH: {e}");
                }
            }
            _ = ping.tick(), if connected => {
                let _ = Packet::PingReq.write(&mut out, MAX_PACKET);
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
            run(
                Box::pin(client),
                "tasmota-sim-operator".into(),
                Some(("bob".into(), "secret".into())),
                vec!["#".into(), "stat/+/RESULT".into()],
                &mut rx,
                &events,
            )
            .await
        });
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut seen = Vec::new();
        seen.push(hex(&packet(&mut server).await));
        server.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        seen.push(hex(&packet(&mut server).await));
        server.write_all(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x00]).await.unwrap();
        assert!(matches!(erx.recv().await, Some(OperatorEvent::Ready)));
        tx.send(Command { topic: "cmnd/t/Power".into(), payload: "ON".into(), retain: true, qos: 0 }).unwrap();
        seen.push(hex(&packet(&mut server).await));
        tx.send(Command { topic: "cmnd/t/Power".into(), payload: "OFF".into(), retain: false, qos: 1 }).unwrap();
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
}
