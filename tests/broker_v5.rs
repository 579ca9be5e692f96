//! MQTT 5 on the embedded broker beyond the Mosquitto comparison (tests/conformance_v5.rs):
//! Mosquitto's own MQTT 5 clients against `tasmota-sim broker`, the aws-iot profile's
//! MQTT 5 rules (README, "The embedded broker"), and malformed MQTT 5 input closing only
//! the client that sent it.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::packets::Recv;
use common::packets_v5::Peer5;
use common::{free_port, have, read_lines, BrokerProcess};
use proptest::prelude::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, DisconnectReasonCode, Filter, Login, Packet, PubAckReason,
    PubRel, Publish, PublishProperties, Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAckReason,
    Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use tasmota_sim::broker::{Broker, Config, Dir, LinkInfo, ProfileName, RetainPolicy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, DuplexStream};

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

/// `--record` holds the codes that went on the wire for the client's protocol: a 3.1.1
/// `mosquitto_pub` with a wrong password gets CONNACK 5 and the record says 5 (not MQTT 5's
/// 0x87 before the fold to 3.1.1); an MQTT 5 one gets 0x87, as Mosquitto 2.0.11 sends.
#[test]
fn the_record_holds_the_connack_code_each_protocol_got_on_the_wire() {
    if !have("mosquitto_pub") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.jsonl");
    let listen = format!("127.0.0.1:{}", free_port());
    let broker = BrokerProcess::start(&[
        "--profile",
        "plain",
        "--listen",
        &listen,
        "--user",
        "bob:secret",
        "--record",
        record.to_str().unwrap(),
    ]);
    let port = broker.listening[0].rsplit(':').next().unwrap().to_string();
    for (version, id, code) in [("mqttv311", "pub311", 5u64), ("mqttv5", "pub5", 0x87)] {
        let out = std::process::Command::new("mosquitto_pub")
            .args(["-V", version, "-h", "127.0.0.1", "-p", &port, "-i", id, "-u", "bob", "-P", "wrongpw"])
            .args(["-t", "t", "-m", "x"])
            .output()
            .expect("run mosquitto_pub");
        assert!(!out.status.success(), "{version}: a wrong password is refused");
        // The CONNACK is recorded before it is flushed to the client, so it is in the file.
        let text = std::fs::read_to_string(&record).unwrap();
        let connack = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["kind"] == "CONNACK" && r["client"] == id)
            .unwrap_or_else(|| panic!("{version}: no CONNACK for {id} in\n{text}"));
        assert_eq!(connack["codes"], serde_json::json!([code]), "{version}: {connack}");
    }
}

// ---- a raw MQTT 5 peer over an in-memory link ----

struct Peer<S> {
    raw: Peer5<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    async fn send(&mut self, p: Packet) {
        self.raw.send(p).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.raw.send_raw(bytes).await;
    }

    /// The next packet, or `None` when the link closed or nothing came in time; bytes
    /// that are not MQTT 5 fail the test.
    async fn recv(&mut self, timeout: Duration) -> Option<Packet> {
        match self.raw.recv(timeout).await {
            Ok(p) => Some(p),
            Err(Recv::Malformed(e)) => panic!("the broker sent bytes that are not MQTT 5: {e}"),
            Err(Recv::Closed | Recv::Timeout) => None,
        }
    }

    async fn expect(&mut self) -> Packet {
        self.recv(S).await.expect("a packet")
    }

    async fn connect(&mut self, id: &str, props: Option<ConnectProperties>, login: Option<(&str, &str)>) -> ConnAck {
        self.connect_with(id, 60, true, props, login).await
    }

    async fn connect_with(
        &mut self,
        id: &str,
        keep_alive: u16,
        clean_start: bool,
        props: Option<ConnectProperties>,
        login: Option<(&str, &str)>,
    ) -> ConnAck {
        let c = Connect { keep_alive, client_id: id.into(), clean_start, properties: props };
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
    Peer { raw: Peer5::new(client) }
}

// ---- aws-iot ----

const PASS: &str = "YknLuSd2tBY2HodwI/7RqA==";
const USER: &str = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";

fn aws_config() -> Config {
    let mut c = Config::new(ProfileName::AwsIot);
    c.authorizers.push(format!("TasmotaAuth:{PASS}").parse().unwrap());
    c.record_in_memory = true;
    c
}

fn aws() -> Broker {
    Broker::new(aws_config())
}

/// The reason codes AWS IoT Core lists for each ack, copied from
/// https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html#mqtt5-reason-codes
/// (kept apart from the profile's lists, so a wrong profile list fails here).
const AWS_CONNACK: &[u8] = &[0x00, 0x80, 0x85, 0x86, 0x87, 0x90, 0x97, 0x9B];
const AWS_PUBACK: &[u8] = &[0x00, 0x80, 0x87, 0x90, 0x91, 0x97];
const AWS_SUBACK: &[u8] = &[0x00, 0x01, 0x80, 0x87, 0x8F, 0x91, 0x97];
const AWS_UNSUBACK: &[u8] = &[0x00, 0x80, 0x8F, 0x91];

/// Every CONNACK, PUBACK, SUBACK and UNSUBACK the broker sent carries only codes AWS
/// lists (the broker records what it sends, after the profile's folding); returns how
/// many acks were checked.
fn assert_aws_codes(b: &Broker) -> usize {
    let mut checked = 0;
    for r in b.records().iter().filter(|r| r.dir == Some(Dir::Out)) {
        let allowed = match r.kind.as_str() {
            "CONNACK" => AWS_CONNACK,
            "PUBACK" => AWS_PUBACK,
            "SUBACK" => AWS_SUBACK,
            "UNSUBACK" => AWS_UNSUBACK,
            _ => continue,
        };
        let codes = r.codes.as_ref().unwrap_or_else(|| panic!("{} recorded with no codes: {r:?}", r.kind));
        for c in codes {
            assert!(allowed.contains(c), "{} 0x{c:02X} is not among AWS's {} codes {allowed:02X?}", r.kind, r.kind);
        }
        checked += 1;
    }
    checked
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
    assert_eq!(a.max_packet_size, Some(131_072), "128 KB");
    assert_eq!(a.subscription_identifiers_available, Some(0));
    assert_eq!(a.shared_subscription_available, None, "shared subscriptions are served");
    assert_eq!(a.wildcard_subscription_available, None, "wildcard subscriptions are served");
    assert_eq!(a.retain_available, None, "AWS serves retain (Retain Available 1)");
    assert_eq!(a.session_expiry_interval, Some(3600), "7200 s asked, the 1 h account maximum served");
    assert_eq!(a.server_keep_alive, None, "60 s is within 30..1200");
    assert_eq!(a.assigned_client_identifier, None);
    assert_eq!(assert_aws_codes(&b), 1);
}

#[tokio::test(start_paused = true)]
async fn aws_session_expiry_is_clamped_to_the_account_maximum() {
    let b = aws();
    let mut p = in_memory(&b);
    let props = ConnectProperties { session_expiry_interval: Some(3600), ..ConnectProperties::new() };
    let a = p.connect("aws5-1h", Some(props), Some((USER, PASS))).await.properties.unwrap();
    assert_eq!(a.session_expiry_interval, None, "3600 s asked is served as asked");
    let mut p = in_memory(&b);
    let props = ConnectProperties { session_expiry_interval: Some(3601), ..ConnectProperties::new() };
    let a = p.connect("aws5-1h1s", Some(props), Some((USER, PASS))).await.properties.unwrap();
    assert_eq!(a.session_expiry_interval, Some(3600), "the default account maximum is 1 h");

    // An account raised to AWS's 7-day maximum.
    let mut c = aws_config();
    c.profile.limits.set("session-expiry=604800").unwrap();
    let b = Broker::new(c);
    let mut p = in_memory(&b);
    let props = ConnectProperties { session_expiry_interval: Some(u32::MAX), ..ConnectProperties::new() };
    let a = p.connect("aws5-7d", Some(props), Some((USER, PASS))).await.properties.unwrap();
    assert_eq!(a.session_expiry_interval, Some(604_800));
    assert!(Config::new(ProfileName::AwsIot).profile.limits.set("session-expiry=604801").is_err());
}

#[tokio::test(start_paused = true)]
async fn aws_server_keep_alive_is_sent_when_the_keepalive_is_adjusted() {
    let b = aws();
    for (asked, served) in [(10, Some(30)), (0, Some(1200)), (5000, Some(1200)), (30, None), (1200, None)] {
        let mut p = in_memory(&b);
        let id = format!("aws5-k{asked}");
        let a = p.connect_with(&id, asked, true, None, Some((USER, PASS))).await;
        assert_eq!(a.properties.unwrap().server_keep_alive, served, "keepalive {asked}");
    }
    assert_aws_codes(&b);
}

#[tokio::test(start_paused = true)]
async fn aws_assigns_gen_client_ids() {
    let b = aws();
    let mut p = in_memory(&b);
    let a = p.connect("", None, Some((USER, PASS))).await;
    let id = a.properties.unwrap().assigned_client_identifier.expect("an assigned id");
    let uuid = id.strip_prefix("$GEN/").unwrap_or_else(|| panic!("'{id}' is not $GEN/<uuid>"));
    let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
    assert!(uuid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{uuid}");
    assert_eq!(&uuid[14..15], "4", "version 4: {uuid}");
}

#[tokio::test(start_paused = true)]
async fn aws_refuses_packets_over_128_kib_with_disconnect_0x97() {
    let b = aws();
    // PUBLISH QoS 0 to "a/b": fixed header 1 + 3 bytes, topic 5, properties 1, payload.
    let publish = |payload: usize| Publish::new("a/b", QoS::AtMostOnce, vec![b'x'; payload], None);
    let mut p = aws_online(&b, "aws5-big").await;
    let mut out = BytesMut::new();
    Packet::Publish(publish(131_072 - 10)).write(&mut out, None).unwrap();
    assert_eq!(out.len(), 131_072, "the largest packet AWS takes");
    p.send_raw(&out).await;
    p.send(Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq)).await;
    assert!(matches!(p.expect().await, Packet::PingResp(_)), "a 131,072-byte packet is served");
    p.send(Packet::Publish(publish(131_072 - 9))).await;
    p.expect_disconnect(DisconnectReasonCode::QuotaExceeded).await;
    assert_aws_codes(&b);
}

#[tokio::test(start_paused = true)]
async fn aws_folds_codes_it_does_not_list() {
    let b = aws();
    let mut p = aws_online(&b, "aws5-codes").await;
    // PUBACK 0x10 No matching subscribers → 0x00.
    let mut m = Publish::new("nobody/here", QoS::AtLeastOnce, "x", None);
    m.pkid = 7;
    p.send(Packet::Publish(m)).await;
    match p.expect().await {
        Packet::PubAck(a) => assert_eq!((a.pkid, a.reason), (7, PubAckReason::Success)),
        other => panic!("{other:?}"),
    }
    // UNSUBACK 0x11 No subscription existed → 0x00.
    p.send(Packet::Unsubscribe(Unsubscribe { pkid: 8, filters: vec!["never/subscribed".into()], properties: None }))
        .await;
    match p.expect().await {
        Packet::UnsubAck(a) => assert_eq!(a.reasons, vec![UnsubAckReason::Success]),
        other => panic!("{other:?}"),
    }
    // CONNACK 0x8C Bad authentication method and 0x82 Protocol Error → 0x80.
    let mut q = in_memory(&b);
    let props = ConnectProperties { authentication_method: Some("SCRAM".into()), ..ConnectProperties::new() };
    assert_eq!(q.connect("aws5-auth", Some(props), Some((USER, PASS))).await.code, ConnectReturnCode::UnspecifiedError);
    let mut q = in_memory(&b);
    let props = ConnectProperties { receive_maximum: Some(0), ..ConnectProperties::new() };
    assert_eq!(q.connect("aws5-rm0", Some(props), Some((USER, PASS))).await.code, ConnectReturnCode::UnspecifiedError);
    assert_eq!(assert_aws_codes(&b), 5);
}

#[tokio::test(start_paused = true)]
async fn aws_has_no_qos2_flow_in_mqtt5() {
    let b = aws();
    let mut p = aws_online(&b, "aws5-rel").await;
    p.send(Packet::PubRel(PubRel::new(3, None))).await;
    p.expect_disconnect(DisconnectReasonCode::ProtocolError).await;
    assert_aws_codes(&b);
}

#[tokio::test(start_paused = true)]
async fn aws_adjusts_message_expiry_into_1_to_604800() {
    let b = aws();
    let mut sub = aws_online(&b, "aws5-exp-sub").await;
    sub.send(Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![Filter::new("exp/+", QoS::AtMostOnce)],
        properties: None,
    }))
    .await;
    assert!(matches!(sub.expect().await, Packet::SubAck(_)));
    let mut publisher = aws_online(&b, "aws5-exp-pub").await;
    for (asked, served) in [(0, 1), (60, 60), (700_000, 604_800)] {
        let props = PublishProperties { message_expiry_interval: Some(asked), ..Default::default() };
        publisher.send(Packet::Publish(Publish::new(format!("exp/{asked}"), QoS::AtMostOnce, "x", Some(props)))).await;
        match sub.expect().await {
            Packet::Publish(m) => {
                let got = m.properties.and_then(|p| p.message_expiry_interval);
                assert_eq!(got, Some(served), "message expiry {asked} s");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_aws_codes(&b);
}

/// A persistent session for `id` at protocol 5 or 3.1.1; returns session present.
async fn persistent_connect(b: &Broker, id: &str, v5: bool, login: Option<(&str, &str)>) -> bool {
    let mut p = in_memory(b);
    let present = if v5 {
        let props = ConnectProperties { session_expiry_interval: Some(600), ..ConnectProperties::new() };
        p.connect_with(id, 60, false, Some(props), login).await.session_present
    } else {
        let mut c = rumqttc::mqttbytes::v4::Connect::new(id);
        c.clean_session = false;
        c.keep_alive = 60;
        if let Some((u, pw)) = login {
            c.set_login(u, pw);
        }
        let mut out = BytesMut::new();
        c.write(&mut out).unwrap();
        p.send_raw(&out).await;
        let mut ack = [0u8; 4];
        tokio::time::timeout(S, p.raw.stream.read_exact(&mut ack)).await.expect("CONNACK in time").expect("CONNACK");
        assert_eq!(&ack[..2], &[0x20, 2]);
        assert_eq!(ack[3], 0, "accepted");
        ack[2] == 1
    };
    // Close the link; the session stays (600 s, or 3.1.1's persistent session). The
    // next CONNECT for the id comes after AWS's one per second.
    drop(p);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    present
}

#[tokio::test(start_paused = true)]
async fn aws_sessions_do_not_cross_mqtt_versions() {
    let b = aws();
    let login = Some((USER, PASS));
    assert!(!persistent_connect(&b, "aws5-s", true, login).await);
    assert!(persistent_connect(&b, "aws5-s", true, login).await, "MQTT 5 resumes its own session");
    assert!(!persistent_connect(&b, "aws5-s", false, login).await, "MQTT 3.1.1 does not resume an MQTT 5 session");
    assert!(persistent_connect(&b, "aws5-s", false, login).await, "MQTT 3.1.1 resumes its own session");
    assert!(!persistent_connect(&b, "aws5-s", true, login).await, "MQTT 5 does not resume an MQTT 3.1.1 session");
    // Mosquitto shares sessions across versions.
    let plain = Broker::new(Config::new(ProfileName::Plain));
    assert!(!persistent_connect(&plain, "m-s", true, None).await);
    assert!(persistent_connect(&plain, "m-s", false, None).await);
    assert_aws_codes(&b);
}

#[tokio::test(start_paused = true)]
async fn aws_shared_subscription_limits() {
    let b = aws();
    let mut p = aws_online(&b, "aws5-share").await;
    let long_filter = format!("{}/x", "f".repeat(254));
    assert_eq!(long_filter.len(), 256);
    let filters = vec![
        Filter::new(format!("$share/{}/a/b", "g".repeat(128)), QoS::AtLeastOnce),
        Filter::new(format!("$share/{}/a/b", "g".repeat(129)), QoS::AtLeastOnce),
        // 256 bytes after the prefix, and 7 '/' after it: within the limits.
        Filter::new(format!("$share/g/{long_filter}"), QoS::AtMostOnce),
        Filter::new("$share/g/a/b/c/d/e/f/g/h", QoS::AtMostOnce),
    ];
    p.send(Packet::Subscribe(Subscribe { pkid: 1, filters, properties: None })).await;
    match p.expect().await {
        Packet::SubAck(s) => assert_eq!(
            s.return_codes,
            vec![
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::TopicFilterInvalid,
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                SubscribeReasonCode::Success(QoS::AtMostOnce),
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert_aws_codes(&b);
}

#[tokio::test(start_paused = true)]
async fn aws_retained_messages_reach_exact_filters_only() {
    let mut c = aws_config();
    c.profile.retain = RetainPolicy::Allow; // --allow-retain: iot:RetainPublish granted
    let b = Broker::new(c);
    let mut publisher = aws_online(&b, "aws5-r-pub").await;
    let mut m = Publish::new("r/a", QoS::AtLeastOnce, "kept", None);
    m.retain = true;
    m.pkid = 1;
    publisher.send(Packet::Publish(m)).await;
    assert!(matches!(publisher.expect().await, Packet::PubAck(_)));
    let mut sub = aws_online(&b, "aws5-r-sub").await;
    for (pkid, filter, gets) in [(1, "r/+", false), (2, "$share/g/r/a", false), (3, "r/#", false), (4, "r/a", true)] {
        sub.send(Packet::Subscribe(Subscribe {
            pkid,
            filters: vec![Filter::new(filter, QoS::AtLeastOnce)],
            properties: None,
        }))
        .await;
        assert!(matches!(sub.expect().await, Packet::SubAck(_)));
        match sub.recv(Duration::from_millis(100)).await {
            Some(Packet::Publish(m)) => {
                assert!(gets, "{filter} got the retained message");
                assert!(m.retain);
                assert_eq!(&m.payload[..], b"kept");
            }
            None => assert!(!gets, "{filter} did not get the retained message"),
            other => panic!("{other:?}"),
        }
    }
    assert_aws_codes(&b);
}

#[tokio::test(start_paused = true)]
async fn aws_retained_publish_without_retain_permission_is_not_authorized() {
    let b = aws();
    let mut p = aws_online(&b, "aws5-r-denied").await;
    let mut m = Publish::new("r/a", QoS::AtMostOnce, "x", None);
    m.retain = true;
    p.send(Packet::Publish(m)).await;
    p.expect_disconnect(DisconnectReasonCode::NotAuthorized).await;
    assert_aws_codes(&b);
}

// ---- retained messages and message expiry (both profiles) ----

#[tokio::test(start_paused = true)]
async fn an_expired_retained_message_is_dropped_from_the_store() {
    let b = Broker::new(Config::new(ProfileName::Plain));
    let mut p = in_memory(&b);
    p.send_raw(&connect_bytes("retainer")).await;
    assert!(matches!(p.expect().await, Packet::ConnAck(_)));
    for (topic, expiry) in [("exp/short", Some(10)), ("exp/none", None)] {
        let props = PublishProperties { message_expiry_interval: expiry, ..Default::default() };
        let mut m = Publish::new(topic, QoS::AtMostOnce, "x", Some(props));
        m.retain = true;
        p.send(Packet::Publish(m)).await;
    }
    // Replaced before it expires: the new message has its own (longer) lifetime.
    let props = PublishProperties { message_expiry_interval: Some(5), ..Default::default() };
    let mut m = Publish::new("exp/replaced", QoS::AtMostOnce, "old", Some(props));
    m.retain = true;
    p.send(Packet::Publish(m)).await;
    let props = PublishProperties { message_expiry_interval: Some(60), ..Default::default() };
    let mut m = Publish::new("exp/replaced", QoS::AtMostOnce, "new", Some(props));
    m.retain = true;
    p.send(Packet::Publish(m)).await;
    p.send(Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq)).await;
    assert!(matches!(p.expect().await, Packet::PingResp(_)));
    assert!(b.retained("exp/short").is_some());
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(b.retained("exp/short").is_some(), "not expired at 9 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.retained("exp/short"), None, "dropped once its 10 s passed");
    assert!(b.retained("exp/none").is_some(), "no expiry: kept");
    assert_eq!(
        b.retained("exp/replaced").as_deref(),
        Some(&b"new"[..]),
        "the old message's expiry does not drop the new one"
    );
}

#[tokio::test(start_paused = true)]
async fn aws_refuses_a_wrong_password_with_connack_0x87() {
    let b = aws();
    let mut p = in_memory(&b);
    let ack = p.connect("aws5-bad", None, Some((USER, "wrong"))).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    assert_eq!(p.recv(S).await, None);
    assert_aws_codes(&b);
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

    // Topic Alias Maximum 8: alias 8 is served, 9 is DISCONNECT 0x94.
    let mut p = aws_online(&b, "aws5-ta").await;
    let props = PublishProperties { topic_alias: Some(8), ..Default::default() };
    p.send(Packet::Publish(Publish::new("a/b", QoS::AtMostOnce, "x", Some(props)))).await;
    p.send(Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq)).await;
    assert!(matches!(p.expect().await, Packet::PingResp(_)), "alias 8 is served");
    let props = PublishProperties { topic_alias: Some(9), ..Default::default() };
    p.send(Packet::Publish(Publish::new("a/b", QoS::AtMostOnce, "x", Some(props)))).await;
    p.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid).await;
    assert_aws_codes(&b);
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
    assert_aws_codes(&b);
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
