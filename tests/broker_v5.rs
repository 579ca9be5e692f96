//! MQTT 5 on the embedded broker beyond the Mosquitto comparison (tests/conformance_v5.rs):
//! Mosquitto's own MQTT 5 clients against `tasmota-sim broker`, the aws-iot profile's
//! MQTT 5 rules (README, "The embedded broker"), and malformed MQTT 5 input closing only
//! the client that sent it.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{free_port, have, read_lines, BrokerProcess};
use proptest::prelude::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, Login, Packet,
    Publish, Subscribe, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use tasmota_sim::broker::{Broker, Config, LinkInfo, ProfileName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const S: Duration = Duration::from_secs(2);

// ---- Mosquitto's clients ----

#[test]
fn mosquitto_sub_and_pub_speak_mqtt5_to_the_broker() {
    if !have("mosquitto_sub") {
        return;
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let broker = BrokerProcess::start(&["--profile", "plain", "--listen", &listen]);
    let port = broker.listening[0].rsplit(':').next().unwrap().to_string();
    let publish = |topic: &str, msg: &str, retain: bool| {
        let mut cmd = std::process::Command::new("mosquitto_pub");
        cmd.args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic, "-m", msg]);
        cmd.args(["-D", "publish", "user-property", "origin", "pub"]);
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.output().expect("run mosquitto_pub");
        assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    };
    // Retained first, so the subscriber cannot miss it.
    publish("v5/first", "hello", true);
    let mut sub = std::process::Command::new("mosquitto_sub")
        .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &port, "-t", "#", "-C", "2", "-F", "%t %p %P"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    let lines = read_lines(sub.stdout.take().unwrap());
    let first = lines.recv_timeout(Duration::from_secs(10)).expect("the retained message");
    assert_eq!(first, "v5/first hello origin:pub");
    publish("v5/second", "world", false);
    let second = lines.recv_timeout(Duration::from_secs(10)).expect("the live message");
    assert_eq!(second, "v5/second world origin:pub");
    let status = sub.wait().expect("mosquitto_sub ends after -C 2");
    assert!(status.success());
    // Clear the retained message so a rerun on the same broker starts clean.
    publish("v5/first", "", true);
}

// ---- a raw MQTT 5 peer over an in-memory link ----

struct Peer<S> {
    stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, None).expect("encodable");
        self.send_raw(&out).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or `None` when the link closed or nothing came in time.
    async fn recv(&mut self, timeout: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 3 && self.buf[0] == 0xE0 && self.buf[1] == 1 {
                let code = DisconnectReasonCode::try_from(self.buf[2]).ok()?;
                let _ = self.buf.split_to(3);
                return Some(Packet::Disconnect(Disconnect::new(code)));
            }
            match Packet::read(&mut self.buf, None) {
                Ok(p) => return Some(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the broker sent bytes that are not MQTT 5: {e}"),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn expect(&mut self) -> Packet {
        self.recv(S).await.expect("a packet")
    }

    async fn connect(&mut self, id: &str, props: Option<ConnectProperties>, login: Option<(&str, &str)>) -> ConnAck {
        let c = Connect { keep_alive: 60, client_id: id.into(), clean_start: true, properties: props };
        let login = login.map(|(u, p)| Login { username: u.into(), password: p.into() });
        self.send(Packet::Connect(c, None, login)).await;
        match self.expect().await {
            Packet::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn expect_disconnect(&mut self, code: DisconnectReasonCode) {
        match self.expect().await {
            Packet::Disconnect(d) => assert_eq!(d.reason_code, code),
            other => panic!("expected DISCONNECT {code:?}, got {other:?}"),
        }
        assert_eq!(self.recv(S).await, None, "closed after the DISCONNECT");
    }
}

fn in_memory(broker: &Broker) -> Peer<DuplexStream> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let b = broker.clone();
    tokio::spawn(async move { b.serve(server, LinkInfo { peer: "test".into(), tls: None }).await });
    Peer { stream: client, buf: BytesMut::new() }
}

// ---- aws-iot ----

const PASS: &str = "YknLuSd2tBY2HodwI/7RqA==";
const USER: &str = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";

fn aws() -> Broker {
    let mut c = Config::new(ProfileName::AwsIot);
    c.authorizers.push(format!("TasmotaAuth:{PASS}").parse().unwrap());
    Broker::new(c)
}

async fn aws_online(b: &Broker, id: &str) -> Peer<DuplexStream> {
    let mut p = in_memory(b);
    assert_eq!(p.connect(id, None, Some((USER, PASS))).await.code, ConnectReturnCode::Success);
    p
}

#[tokio::test(start_paused = true)]
async fn aws_connack_announces_its_mqtt5_limits() {
    let b = aws();
    let mut p = in_memory(&b);
    let props = ConnectProperties { session_expiry_interval: Some(7200), ..ConnectProperties::new() };
    let ack = p.connect("aws5", Some(props), Some((USER, PASS))).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let a = ack.properties.expect("CONNACK properties");
    assert_eq!(a.receive_max, Some(100));
    assert_eq!(a.topic_alias_max, Some(8));
    assert_eq!(a.max_qos, Some(1));
    assert_eq!(a.max_packet_size, Some(149_504));
    assert_eq!(a.subscription_identifiers_available, Some(0));
    assert_eq!(a.shared_subscription_available, None, "shared subscriptions are served");
    assert_eq!(a.retain_available, Some(0), "TasmotaAuth's policy has no iot:RetainPublish");
    assert_eq!(a.session_expiry_interval, Some(3600), "7200 s asked, the 1 h cap served");
    assert_eq!(a.server_keep_alive, None, "60 s is within 30..1200");
}

#[tokio::test(start_paused = true)]
async fn aws_refuses_a_wrong_password_with_connack_0x87() {
    let b = aws();
    let mut p = in_memory(&b);
    let ack = p.connect("aws5-bad", None, Some((USER, "wrong"))).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    assert_eq!(p.recv(S).await, None);
}

#[tokio::test(start_paused = true)]
async fn aws_refuses_qos2_and_subscription_identifiers_with_reason_codes() {
    let b = aws();
    let mut p = aws_online(&b, "aws5-q2").await;
    let mut m = Publish::new("a/b", QoS::ExactlyOnce, "x", None);
    m.pkid = 1;
    p.send(Packet::Publish(m)).await;
    p.expect_disconnect(DisconnectReasonCode::QoSNotSupported).await;

    let mut p = aws_online(&b, "aws5-sid").await;
    let properties = Some(SubscribeProperties { id: Some(3), user_properties: vec![] });
    p.send(Packet::Subscribe(Subscribe { pkid: 1, filters: vec![Filter::new("a/b", QoS::AtMostOnce)], properties }))
        .await;
    p.expect_disconnect(DisconnectReasonCode::SubscriptionIdentifiersNotSupported).await;

    let mut p = aws_online(&b, "aws5-ta").await;
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties { topic_alias: Some(9), ..Default::default() };
    p.send(Packet::Publish(Publish::new("a/b", QoS::AtMostOnce, "x", Some(props)))).await;
    p.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid).await;
}

#[tokio::test(start_paused = true)]
async fn aws_grants_qos1_for_qos2_and_serves_shared_subscriptions() {
    let b = aws();
    let mut a = aws_online(&b, "aws5-a").await;
    let mut c = aws_online(&b, "aws5-c").await;
    for p in [&mut a, &mut c] {
        p.send(Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![Filter::new("$share/workers/tele/+/STATE", QoS::ExactlyOnce)],
            properties: None,
        }))
        .await;
        match p.expect().await {
            Packet::SubAck(s) => assert_eq!(s.return_codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]),
            other => panic!("{other:?}"),
        }
    }
    let mut publisher = aws_online(&b, "aws5-pub").await;
    for i in 0..4 {
        publisher.send(Packet::Publish(Publish::new(format!("tele/d{i}/STATE"), QoS::AtMostOnce, "{}", None))).await;
    }
    let mut counts = [0, 0];
    for (i, p) in [&mut a, &mut c].into_iter().enumerate() {
        while let Some(Packet::Publish(_)) = p.recv(Duration::from_millis(200)).await {
            counts[i] += 1;
        }
    }
    assert_eq!(counts, [2, 2], "each message to one member, in turn");
}

// ---- malformed input ----

/// A valid MQTT 5 CONNECT for client `id` (no login: the plain profile with no users).
fn connect_bytes(id: &str) -> Vec<u8> {
    let c = Connect { keep_alive: 60, client_id: id.into(), clean_start: true, properties: None };
    let mut out = BytesMut::new();
    Packet::Connect(c, None, None).write(&mut out, None).unwrap();
    out.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// After a good CONNECT, any bytes: the broker never panics, answers only with
    /// well-formed MQTT 5, and a second client still publishes and receives.
    #[test]
    fn malformed_mqtt5_closes_only_that_client(
        first in 0u8..16,
        flags in 0u8..16,
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let b = Broker::new(Config::new(ProfileName::Plain));
            let mut bad = in_memory(&b);
            bad.send_raw(&connect_bytes("fuzzed")).await;
            assert!(matches!(bad.expect().await, Packet::ConnAck(_)));
            let mut frame = vec![first << 4 | flags];
            let mut len = body.len();
            loop {
                let byte = (len % 128) as u8;
                len /= 128;
                frame.push(if len > 0 { byte | 0x80 } else { byte });
                if len == 0 { break; }
            }
            frame.extend_from_slice(&body);
            bad.send_raw(&frame).await;
            // Whatever comes back must parse (Peer::recv panics otherwise).
            while bad.recv(Duration::from_millis(50)).await.is_some() {}

            let mut good = in_memory(&b);
            good.send_raw(&connect_bytes("good")).await;
            assert!(matches!(good.expect().await, Packet::ConnAck(_)));
            good.send(Packet::Subscribe(Subscribe { pkid: 1, filters: vec![Filter::new("ok", QoS::AtMostOnce)], properties: None })).await;
            assert!(matches!(good.expect().await, Packet::SubAck(_)));
            good.send(Packet::Publish(Publish::new("ok", QoS::AtMostOnce, "still", None))).await;
            match good.expect().await {
                Packet::Publish(p) => assert_eq!(&p.payload[..], b"still"),
                other => panic!("{other:?}"),
            }
        });
    }
}
