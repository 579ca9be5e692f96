//! The `aws-iot` profile, rule by rule (spec/aws-iot.md §8), each shown with a plain
//! client. Links are in-memory duplexes (TLS over them where the rule is about TLS) and the
//! tokio clock is paused, so "a second", "45 s" and "an hour" are exact and cost nothing.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::packets::{connect, in_memory, with_will, Peer, Recv};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck};
use rumqttc::mqttbytes::QoS;
use tasmota_sim::broker::{self, tls, Broker, Config, ProfileName, RetainPolicy, TlsListen};
use tokio::io::DuplexStream;
use tokio::time::Instant;

const PASS: &str = "YknLuSd2tBY2HodwI/7RqA==";
const USER: &str = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";
const S: Duration = Duration::from_secs(1);

fn config() -> Config {
    let mut c = Config::new(ProfileName::AwsIot);
    c.authorizers.push(format!("TasmotaAuth:{PASS},second-secret").parse().unwrap());
    c.record_in_memory = true;
    c
}

fn aws() -> Broker {
    Broker::new(config())
}

async fn online(b: &Broker, id: &str) -> Peer<DuplexStream> {
    let mut p = in_memory(b);
    let ack = p.connect(connect(id, Some((USER, PASS)), true, 30)).await.unwrap();
    assert_eq!(ack, ConnAck::new(ConnectReturnCode::Success, false));
    p
}

fn connack_ok(session_present: bool) -> ConnAck {
    ConnAck::new(ConnectReturnCode::Success, session_present)
}

#[tokio::test(start_paused = true)]
async fn custom_auth_takes_the_tasmota_password_and_sdk_style_usernames() {
    let b = aws();
    online(&b, "a").await;
    let mut p = in_memory(&b);
    let sdk_user =
        "tasmota?x-amz-customauthorizer-name=TasmotaAuth&SDK=Python&Version=1.11.0&Platform=linux&Metadata=(a=b)";
    assert_eq!(p.connect(connect("b", Some((sdk_user, PASS)), true, 30)).await, Ok(connack_ok(false)));
    let mut p = in_memory(&b);
    assert_eq!(p.connect(connect("c", Some((USER, "second-secret")), true, 30)).await, Ok(connack_ok(false)));
}

#[tokio::test(start_paused = true)]
async fn failed_custom_auth_closes_with_no_connack() {
    let b = aws();
    let cases = [
        ("wrong", Some((USER, "wrong"))),
        ("no-login", None),
        ("no-name", Some(("tasmota", PASS))),
        ("other-name", Some(("tasmota?x-amz-customauthorizer-name=Other", PASS))),
        ("two-qmarks", Some(("tasmota?x-amz-customauthorizer-name=TasmotaAuth?SDK=x", PASS))),
    ];
    for (id, login) in cases {
        let mut p = in_memory(&b);
        assert_eq!(p.connect(connect(id, login, true, 30)).await, Err(Recv::Closed), "{id}");
    }
    let records = b.records();
    let closes: Vec<&str> =
        records.iter().filter(|r| r.kind == "close").map(|r| r.detail.as_deref().unwrap_or("")).collect();
    assert_eq!(
        closes,
        [
            "custom authorizer: TasmotaAuth denied iot:Connect (wrong password)",
            "custom authorizer: no x-amz-customauthorizer-name in the username and no default authorizer",
            "custom authorizer: no x-amz-customauthorizer-name in the username and no default authorizer",
            "custom authorizer: no authorizer named 'Other'",
            "custom authorizer: the username has a second '?'; AWS IoT cannot parse its query string",
        ]
    );
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(PASS), "a password reached the recording");
    assert!(records.iter().all(|r| r.kind != "CONNACK"));
}

#[tokio::test(start_paused = true)]
async fn a_default_authorizer_serves_usernames_that_name_none() {
    let mut c = config();
    c.default_authorizer = Some("TasmotaAuth".into());
    let b = Broker::new(c);
    let mut p = in_memory(&b);
    assert_eq!(p.connect(connect("d", Some(("tasmota", PASS)), true, 30)).await, Ok(connack_ok(false)));
}

#[tokio::test(start_paused = true)]
async fn retained_publish_and_retained_will_close_under_tasmota_auth() {
    let b = aws();
    let mut p = online(&b, "r").await;
    p.publish("tele/x/LWT", "Online", QoS::AtMostOnce, true, 0).await;
    p.expect_closed(S).await;
    let mut p = in_memory(&b);
    let c = with_will(connect("w", Some((USER, PASS)), true, 30), "tele/w/LWT", "Offline", QoS::AtMostOnce, true);
    assert_eq!(p.connect(c).await, Err(Recv::Closed));
    // Not retained: fine.
    let mut p = in_memory(&b);
    let c = with_will(connect("w2", Some((USER, PASS)), true, 30), "tele/w/LWT", "Offline", QoS::AtMostOnce, false);
    assert_eq!(p.connect(c).await, Ok(connack_ok(false)));
}

#[tokio::test(start_paused = true)]
async fn with_retain_publish_allowed_only_exact_filters_get_the_retained_message() {
    let mut c = config();
    c.profile.retain = RetainPolicy::Allow;
    let b = Broker::new(c);
    let mut p = online(&b, "pub").await;
    p.publish("stat/plug/POWER", "ON", QoS::AtMostOnce, true, 0).await;
    p.expect_silence(S).await;
    let mut s = online(&b, "sub").await;
    assert_eq!(s.subscribe(1, &[("stat/plug/+", QoS::AtLeastOnce), ("stat/#", QoS::AtMostOnce)]).await, [1, 0]);
    s.expect_silence(S).await;
    assert_eq!(s.subscribe(2, &[("stat/plug/POWER", QoS::AtMostOnce)]).await, [0]);
    let got = s.expect_publish(S).await;
    assert_eq!((got.topic.as_str(), &got.payload[..], got.retain), ("stat/plug/POWER", &b"ON"[..], true));
    // Live copies carry RETAIN=0, and a subscriber with three matching filters gets one.
    p.publish("stat/plug/POWER", "OFF", QoS::AtMostOnce, true, 0).await;
    let got = s.expect_publish(S).await;
    assert_eq!((&got.payload[..], got.retain), (&b"OFF"[..], false));
    s.expect_silence(S).await;
    // An empty retained payload deletes, and is still forwarded.
    p.publish("stat/plug/POWER", "", QoS::AtMostOnce, true, 0).await;
    assert_eq!(s.expect_publish(S).await.payload.len(), 0);
    assert_eq!(b.retained("stat/plug/POWER"), None);
}

#[tokio::test(start_paused = true)]
async fn qos_2_closes_publish_subscribe_and_will() {
    let b = aws();
    let mut p = online(&b, "q1").await;
    p.publish("a/b", "x", QoS::ExactlyOnce, false, 1).await;
    p.expect_closed(S).await;
    let mut p = online(&b, "q2").await;
    p.send(Packet::Subscribe(rumqttc::mqttbytes::v4::Subscribe::new("a/b", QoS::ExactlyOnce))).await;
    p.expect_closed(S).await;
    let mut p = in_memory(&b);
    let c = with_will(connect("q3", Some((USER, PASS)), true, 30), "a/w", "x", QoS::ExactlyOnce, false);
    assert_eq!(p.connect(c).await, Err(Recv::Closed));
}

#[tokio::test(start_paused = true)]
async fn topic_limits_and_reserved_topics_close() {
    let b = aws();
    let long = "t".repeat(257);
    for (id, topic) in [("l1", long.as_str()), ("l2", "a/b/c/d/e/f/g/h/i"), ("l3", "$SYS/broker/x")] {
        let mut p = online(&b, id).await;
        p.publish(topic, "x", QoS::AtLeastOnce, false, 1).await;
        p.expect_closed(S).await;
    }
    let exactly = "t".repeat(256);
    for (id, topic) in [("k1", exactly.as_str()), ("k2", "a/b/c/d/e/f/g/h"), ("k3", "$aws/rules/r/a/b/c/d/e/f/g/h")] {
        let mut p = online(&b, id).await;
        p.publish(topic, "x", QoS::AtLeastOnce, false, 7).await;
        assert_eq!(p.expect(S).await, Packet::PubAck(PubAck::new(7)), "{topic}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_101st_publish_in_a_second_is_dropped() {
    let b = aws();
    let mut sub = online(&b, "sub").await;
    sub.subscribe(1, &[("load/#", QoS::AtMostOnce)]).await;
    let mut p = online(&b, "pub").await;
    for pkid in 1..=101u16 {
        p.publish("load/x", &pkid.to_string(), QoS::AtLeastOnce, false, pkid).await;
    }
    for pkid in 1..=100u16 {
        assert_eq!(p.expect(S).await, Packet::PubAck(PubAck::new(pkid)));
    }
    // The 101st: no PUBACK, not forwarded, and the link stays up.
    p.expect_silence(Duration::from_millis(500)).await;
    for n in 1..=100 {
        assert_eq!(sub.expect_publish(S).await.payload, n.to_string());
    }
    sub.expect_silence(Duration::from_millis(100)).await;
    // The next second has a fresh budget.
    tokio::time::sleep(S).await;
    p.publish("load/x", "again", QoS::AtLeastOnce, false, 200).await;
    assert_eq!(p.expect(S).await, Packet::PubAck(PubAck::new(200)));
    assert_eq!(sub.expect_publish(S).await.payload, "again");
    assert!(b.records().iter().any(|r| r.kind == "dropped"));
}

#[tokio::test(start_paused = true)]
async fn keepalive_5_is_served_as_30_and_the_link_dies_at_45_s() {
    let b = aws();
    let mut p = in_memory(&b);
    assert_eq!(p.connect(connect("ka", Some((USER, PASS)), true, 5)).await, Ok(connack_ok(false)));
    // Silent for 40 s: AWS's 30 s (x 1.5) still holds the link.
    tokio::time::sleep(Duration::from_secs(40)).await;
    p.send(Packet::PingReq).await;
    assert_eq!(p.expect(S).await, Packet::PingResp);
    let last = Instant::now();
    p.expect_closed(Duration::from_secs(120)).await;
    assert_eq!(last.elapsed(), Duration::from_secs(45));
    assert!(b.records().iter().any(|r| r.detail.as_deref() == Some("asked 5 s, served 30 s")));
    // 0 means the maximum, 1200.
    let mut p = in_memory(&b);
    assert_eq!(p.connect(connect("ka0", Some((USER, PASS)), true, 0)).await, Ok(connack_ok(false)));
    let start = Instant::now();
    p.expect_closed(Duration::from_secs(3600)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1800));
}

#[tokio::test(start_paused = true)]
async fn hash_does_not_match_the_parent_level() {
    let b = aws();
    let mut s = online(&b, "s").await;
    s.subscribe(1, &[("sensor/#", QoS::AtMostOnce)]).await;
    let mut p = online(&b, "p").await;
    p.publish("sensor", "parent", QoS::AtMostOnce, false, 0).await;
    p.publish("sensor/", "empty level", QoS::AtMostOnce, false, 0).await;
    p.publish("sensor/t", "child", QoS::AtMostOnce, false, 0).await;
    assert_eq!(s.expect_publish(S).await.payload, "empty level");
    assert_eq!(s.expect_publish(S).await.payload, "child");
    s.expect_silence(S).await;
}

#[tokio::test(start_paused = true)]
async fn one_connect_per_second_per_client_id_and_takeover_publishes_the_old_will() {
    let b = aws();
    let mut watcher = online(&b, "watcher").await;
    watcher.subscribe(1, &[("tele/+/LWT", QoS::AtMostOnce)]).await;
    let c =
        || with_will(connect("dev", Some((USER, PASS)), true, 30), "tele/dev/LWT", "Offline", QoS::AtMostOnce, false);
    let mut first = in_memory(&b);
    assert_eq!(first.connect(c()).await, Ok(connack_ok(false)));
    // Same client id in the same second: throttled, no CONNACK, the first stays.
    let mut second = in_memory(&b);
    assert_eq!(second.connect(c()).await, Err(Recv::Closed));
    first.send(Packet::PingReq).await;
    assert_eq!(first.expect(S).await, Packet::PingResp);
    // A second later it takes over: the old link is closed and its will published.
    tokio::time::sleep(S).await;
    let mut third = in_memory(&b);
    assert_eq!(third.connect(c()).await, Ok(connack_ok(false)));
    first.expect_closed(S).await;
    let will = watcher.expect_publish(S).await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("tele/dev/LWT", &b"Offline"[..]));
    // No will after DISCONNECT.
    third.send(Packet::Disconnect).await;
    third.expect_closed(S).await;
    watcher.expect_silence(S).await;
}

#[tokio::test(start_paused = true)]
async fn client_id_and_subscription_limits() {
    let b = aws();
    let mut p = in_memory(&b);
    assert_eq!(p.connect(connect(&"c".repeat(129), Some((USER, PASS)), true, 30)).await, Err(Recv::Closed));
    let mut p = in_memory(&b);
    assert_eq!(p.connect(connect(&"c".repeat(128), Some((USER, PASS)), true, 30)).await, Ok(connack_ok(false)));

    let mut p = online(&b, "nine").await;
    let nine: Vec<String> = (0..9).map(|i| format!("f/{i}")).collect();
    let filters =
        nine.iter().map(|f| rumqttc::mqttbytes::v4::SubscribeFilter::new(f.clone(), QoS::AtMostOnce)).collect();
    p.send(Packet::Subscribe(rumqttc::mqttbytes::v4::Subscribe { pkid: 1, filters })).await;
    p.expect_closed(S).await;

    let mut p = online(&b, "fifty").await;
    for batch in 0..6u16 {
        let names: Vec<String> = (0..8).map(|i| format!("s/{batch}/{i}")).collect();
        let f: Vec<(&str, QoS)> = names.iter().map(|n| (n.as_str(), QoS::AtMostOnce)).collect();
        assert_eq!(p.subscribe(batch + 1, &f).await, [0; 8]);
    }
    // 48 so far; the 49th and 50th are granted, the 51st refused.
    assert_eq!(
        p.subscribe(9, &[("s/x/1", QoS::AtMostOnce), ("s/x/2", QoS::AtMostOnce), ("s/x/3", QoS::AtMostOnce)]).await,
        [0, 0, 0x80]
    );
    // Re-subscribing to an existing filter is not a new subscription.
    assert_eq!(p.subscribe(10, &[("s/0/0", QoS::AtLeastOnce)]).await, [1]);
}

#[tokio::test(start_paused = true)]
async fn persistent_sessions_as_the_sdks_use_them() {
    let b = aws();
    let sdk = |clean| connect("sdk-thing", Some((USER, PASS)), clean, 1200);
    let mut dev = in_memory(&b);
    assert_eq!(dev.connect(sdk(false)).await, Ok(connack_ok(false)));
    assert_eq!(dev.subscribe(1, &[("cmnd/thing/#", QoS::AtLeastOnce)]).await, [1]);
    dev.send(Packet::Disconnect).await;
    dev.expect_closed(S).await;

    let mut op = online(&b, "operator").await;
    op.publish("cmnd/thing/POWER", "ON", QoS::AtLeastOnce, false, 1).await;
    op.publish("cmnd/thing/POWER", "qos0 is not kept", QoS::AtMostOnce, false, 0).await;
    op.publish("cmnd/thing/POWER", "OFF", QoS::AtLeastOnce, false, 2).await;
    assert_eq!(op.expect(S).await, Packet::PubAck(PubAck::new(1)));
    assert_eq!(op.expect(S).await, Packet::PubAck(PubAck::new(2)));

    tokio::time::sleep(S).await;
    let mut dev = in_memory(&b);
    assert_eq!(dev.connect(sdk(false)).await, Ok(connack_ok(true)));
    let first = dev.expect(S).await;
    let Packet::Publish(first) = first else { panic!("{first:?}") };
    assert_eq!((&first.payload[..], first.qos, first.dup), (&b"ON"[..], QoS::AtLeastOnce, false));
    // Not acknowledged: the link drops, and the reconnect gets it again, without DUP
    // (AWS does not support DUP), before the next one.
    drop(dev);
    tokio::time::sleep(S).await;
    let mut dev = in_memory(&b);
    assert_eq!(dev.connect(sdk(false)).await, Ok(connack_ok(true)));
    let again = dev.expect_publish(S).await;
    assert_eq!((&again.payload[..], again.dup, again.pkid), (&b"ON"[..], false, first.pkid));
    assert_eq!(dev.expect_publish(S).await.payload, "OFF");
    dev.expect_silence(S).await;
    dev.send(Packet::Disconnect).await;

    // An hour alone and the session is gone.
    tokio::time::sleep(Duration::from_secs(3601)).await;
    let mut dev = in_memory(&b);
    assert_eq!(dev.connect(sdk(false)).await, Ok(connack_ok(false)));
    op.publish("cmnd/thing/POWER", "lost", QoS::AtLeastOnce, false, 3).await;
    dev.expect_silence(S).await;
}

// ---- over TLS ----

struct Pki {
    acceptors: Arc<tls::Acceptors>,
    roots: rustls::RootCertStore,
    client_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    client_key: rustls::pki_types::PrivateKeyDer<'static>,
}

/// One self-signed set for the whole test binary (RSA key generation is slow).
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap().keep();
        let names =
            [broker::DEFAULT_ENDPOINT.to_string(), "*.iot.eu-central-1.amazonaws.com".into(), "localhost".into()];
        let material = tls::self_signed(&dir, &names).unwrap();
        let roots = tls::client_ca(&dir.join("ca.pem")).unwrap();
        Pki {
            acceptors: Arc::new(tls::Acceptors::new(&material).unwrap()),
            roots,
            client_chain: rustls::pki_types::CertificateDer::pem_file_iter(dir.join("client.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
            client_key: rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap(),
        }
    })
}

type TlsPeer = Peer<tokio_rustls::client::TlsStream<DuplexStream>>;

/// A TLS link over a duplex, as a client offering `alpn` with SNI `sni`.
async fn tls_link(b: &Broker, sni: &str, alpn: &[&[u8]], client_cert: bool, mtls: bool) -> TlsPeer {
    let pki = pki();
    let (client, server) = tokio::io::duplex(1 << 20);
    let b = b.clone();
    let listen = TlsListen { acceptors: pki.acceptors.clone(), mtls };
    tokio::spawn(async move { b.serve_tls(server, "tls-test".into(), listen).await });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots.clone());
    let mut config = if client_cert {
        builder.with_client_auth_cert(pki.client_chain.clone(), pki.client_key.clone_key()).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, client).await.expect("TLS handshake");
    Peer::new(stream)
}

#[tokio::test(start_paused = true)]
async fn port_443_routes_on_alpn() {
    let b = aws();
    let ep = broker::DEFAULT_ENDPOINT;
    // ALPN mqtt + the endpoint's name: custom auth.
    let mut p = tls_link(&b, ep, &[b"mqtt"], false, false).await;
    assert_eq!(p.stream().get_ref().1.alpn_protocol(), Some(&b"mqtt"[..]));
    assert_eq!(p.connect(connect("t1", Some((USER, PASS)), true, 30)).await, Ok(connack_ok(false)));
    // Any other ALPN, or none: the handshake succeeds, CONNECT is never answered, then the
    // link is closed.
    for (id, alpn) in [("t2", &[&b"h2"[..]][..]), ("t3", &[][..])] {
        let mut p = tls_link(&b, ep, alpn, false, false).await;
        assert_eq!(p.stream().get_ref().1.alpn_protocol(), None);
        p.send(Packet::Connect(connect(id, Some((USER, PASS)), true, 30))).await;
        p.expect_silence(Duration::from_secs(9)).await;
        p.expect_closed(Duration::from_secs(2)).await;
    }
    // SNI that is not the endpoint (the certificate still covers it): closed, no CONNACK.
    let mut p = tls_link(&b, "localhost", &[b"mqtt"], false, false).await;
    assert_eq!(p.connect(connect("t4", Some((USER, PASS)), true, 30)).await, Err(Recv::Closed));
    assert!(b.records().iter().any(|r| r.detail.as_deref()
        == Some("custom authorizer: SNI 'localhost' is not the endpoint 'a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com'")));
}

#[tokio::test(start_paused = true)]
async fn client_certificates_on_443_with_x_amzn_mqtt_ca_and_on_the_mtls_port() {
    let b = aws();
    let ep = broker::DEFAULT_ENDPOINT;
    // Certificate auth needs no username or password (Tasmota sends none).
    let mut p = tls_link(&b, ep, &[b"x-amzn-mqtt-ca"], true, false).await;
    assert_eq!(p.connect(connect("cert1", None, true, 30)).await, Ok(connack_ok(false)));
    let mut p = tls_link(&b, ep, &[b"x-amzn-mqtt-ca"], false, false).await;
    p.send(Packet::Connect(connect("cert2", None, true, 30))).await;
    p.expect_silence(Duration::from_secs(5)).await;
    // 8883: no ALPN needed.
    let mut p = tls_link(&b, ep, &[], true, true).await;
    assert_eq!(p.connect(connect("cert3", None, true, 30)).await, Ok(connack_ok(false)));
}

#[tokio::test(start_paused = true)]
async fn tls_offers_1_2_with_the_firmware_suite_and_no_tickets() {
    let b = aws();
    let pki = pki();
    let (client, server) = tokio::io::duplex(1 << 20);
    let bb = b.clone();
    let listen = TlsListen { acceptors: pki.acceptors.clone(), mtls: false };
    tokio::spawn(async move { bb.serve_tls(server, "fw".into(), listen).await });
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(pki.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(broker::DEFAULT_ENDPOINT).unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, client).await.unwrap();
    let conn = stream.get_ref().1;
    assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
    );
    let mut p = Peer::new(stream);
    assert_eq!(p.connect(connect("fw", Some((USER, PASS)), true, 30)).await, Ok(connack_ok(false)));
}

/// What AWS's device SDKs do (rumqttc is what the Rust SDK wraps): a persistent session
/// with keepalive 1200, SDK metadata in the username, QoS 1 both ways, over a real socket.
#[tokio::test]
async fn an_sdk_style_client_connects_subscribes_publishes_and_receives() {
    let b = aws();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bb = b.clone();
    tokio::spawn(async move { bb.listen(listener, None).await });
    let mut opts = rumqttc::MqttOptions::new("sdk-client", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(1200));
    opts.set_clean_session(false);
    opts.set_credentials(format!("{USER}&SDK=Rust&Version=0.1&Platform=linux"), PASS);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
    client.subscribe("sdk/echo", rumqttc::QoS::AtLeastOnce).await.unwrap();
    client.publish("sdk/echo", rumqttc::QoS::AtLeastOnce, false, "hello").await.unwrap();
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => seen.push(format!("CONNACK {:?}", a.code)),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a))) => {
                    seen.push(format!("SUBACK {:?}", a.return_codes))
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => seen.push("PUBACK".into()),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    seen.push(format!("PUBLISH {} {:?}", p.topic, p.payload));
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!("connection error: {e}; seen {seen:?}"),
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no message back; seen {seen:?}");
    assert_eq!(seen[0], "CONNACK Success");
    assert!(seen.contains(&"SUBACK [Success(AtLeastOnce)]".to_string()), "{seen:?}");
    assert_eq!(seen.last().unwrap(), "PUBLISH sdk/echo b\"hello\"");
    assert_eq!(b.connected(), ["sdk-client"]);
}
