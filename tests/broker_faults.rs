//! Fault injection, broker restarts, the traffic record, and robustness against garbage,
//! on in-memory links with a paused clock (times are exact), plus one real-socket test
//! for the listener's downtime.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::packets::{connect, in_memory, with_will, Peer, Recv};
use proptest::prelude::*;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet};
use rumqttc::mqttbytes::QoS;
use tasmota_sim::broker::{Broker, Config, Fault, FaultRule, LinkInfo, ProfileName};
use tokio::io::DuplexStream;
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);

fn plain(faults: Vec<FaultRule>) -> Broker {
    let mut c = Config::new(ProfileName::Plain);
    c.faults = faults;
    c.record_in_memory = true;
    Broker::new(c)
}

async fn online(b: &Broker, id: &str, clean: bool) -> Peer<DuplexStream> {
    let mut p = in_memory(b);
    assert!(p.connect(connect(id, None, clean, 0)).await.is_ok_and(|a| a.code == ConnectReturnCode::Success));
    p
}

fn fault_details(b: &Broker) -> Vec<String> {
    b.records().into_iter().filter(|r| r.kind == "fault").filter_map(|r| r.detail).collect()
}

#[tokio::test(start_paused = true)]
async fn connack_refused_with_a_return_code_then_served() {
    let b = plain(vec![FaultRule::new(Fault::ConnackRc(3)).for_client("dev*").times(1)]);
    let mut p = in_memory(&b);
    assert_eq!(
        p.connect(connect("dev1", None, true, 60)).await,
        Ok(ConnAck::new(ConnectReturnCode::ServiceUnavailable, false))
    );
    p.expect_closed(S).await;
    online(&b, "dev1", true).await;
    online(&b, "other", true).await;
    assert_eq!(fault_details(&b), ["ConnackRc(3) client=dev*: CONNACK 3"]);
}

#[tokio::test(start_paused = true)]
async fn late_connack_arrives_exactly_that_late() {
    let b = plain(vec![FaultRule::new(Fault::LateConnack(Duration::from_secs(5)))]);
    let mut p = in_memory(&b);
    let start = Instant::now();
    p.send(Packet::Connect(connect("late", None, true, 60))).await;
    assert_eq!(
        p.expect(Duration::from_secs(10)).await,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn silent_connect_and_no_pingresp() {
    let b = plain(vec![
        FaultRule::new(Fault::SilentOnConnect).for_client("mute"),
        FaultRule::new(Fault::NoPingresp).for_client("deaf"),
    ]);
    let mut p = in_memory(&b);
    p.send(Packet::Connect(connect("mute", None, true, 60))).await;
    p.expect_silence(Duration::from_secs(60)).await;
    let mut p = online(&b, "deaf", true).await;
    p.send(Packet::PingReq).await;
    p.expect_silence(Duration::from_secs(30)).await;
    assert_eq!(
        fault_details(&b),
        ["SilentOnConnect client=mute: CONNECT not answered", "NoPingresp: PINGREQ not answered"]
    );
}

#[tokio::test(start_paused = true)]
async fn drop_after_packets_and_drop_at_publish_the_will() {
    let t0 = Instant::now();
    let b = plain(vec![
        FaultRule::new(Fault::DropAfterPackets(3)).for_client("counted"),
        FaultRule::new(Fault::DropAt(Duration::from_secs(100))).for_client("timed"),
    ]);
    let mut watch = online(&b, "watch", true).await;
    watch.subscribe(1, &[("lwt/#", QoS::AtMostOnce)]).await;
    let will =
        |id: &str| with_will(connect(id, None, true, 600), &format!("lwt/{id}"), "Offline", QoS::AtMostOnce, false);

    let mut p = in_memory(&b);
    assert!(p.connect(will("counted")).await.is_ok());
    assert_eq!(p.subscribe(1, &[("x", QoS::AtMostOnce)]).await, [0]);
    p.send(Packet::PingReq).await; // the third packet: dropped, no PINGRESP
    p.expect_closed(S).await;
    assert_eq!(watch.expect_publish(S).await.topic, "lwt/counted");

    let mut p = in_memory(&b);
    assert!(p.connect(will("timed")).await.is_ok());
    p.expect_closed(Duration::from_secs(200)).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(100));
    assert_eq!(watch.expect_publish(S).await.topic, "lwt/timed");
}

#[tokio::test(start_paused = true)]
async fn corrupt_and_latency() {
    let b = plain(vec![
        FaultRule::new(Fault::Corrupt(2)).for_client("bent"),
        FaultRule::new(Fault::Latency(Duration::from_millis(250))).for_client("slow"),
    ]);
    let mut p = online(&b, "bent", true).await;
    p.send(Packet::PingReq).await;
    // PINGRESP is D0 00; with the packet type set to 0 it is 00 00, which is no packet.
    assert!(matches!(p.recv(S).await, Err(Recv::Malformed(_))));

    let mut p = in_memory(&b);
    let start = Instant::now();
    assert!(p.connect(connect("slow", None, true, 60)).await.is_ok());
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    let start = Instant::now();
    p.send(Packet::PingReq).await;
    assert_eq!(p.expect(S).await, Packet::PingResp);
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn restart_drops_every_link_publishes_wills_and_keeps_retained_and_sessions() {
    let b = plain(vec![]);
    let mut keeper = in_memory(&b);
    assert!(keeper.connect(connect("keeper", None, false, 60)).await.is_ok());
    keeper.subscribe(1, &[("lwt/#", QoS::AtLeastOnce)]).await;
    let mut dev = in_memory(&b);
    let c = with_will(connect("dev", None, true, 60), "lwt/dev", "Offline", QoS::AtLeastOnce, false);
    assert!(dev.connect(c).await.is_ok());
    dev.publish("stat/dev/POWER", "ON", QoS::AtMostOnce, true, 0).await;
    dev.send(Packet::PingReq).await;
    assert_eq!(dev.expect(S).await, Packet::PingResp);

    b.restart(Duration::ZERO);
    keeper.expect_closed(S).await;
    dev.expect_closed(S).await;
    assert_eq!(b.connected(), Vec::<String>::new());

    // The persistent session kept the will published while it was offline.
    let mut keeper = in_memory(&b);
    assert_eq!(
        keeper.connect(connect("keeper", None, false, 60)).await,
        Ok(ConnAck::new(ConnectReturnCode::Success, true))
    );
    let will = keeper.expect_publish(S).await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("lwt/dev", &b"Offline"[..]));
    // Retained messages survive.
    let mut late = online(&b, "late", true).await;
    late.subscribe(1, &[("stat/#", QoS::AtMostOnce)]).await;
    let r = late.expect_publish(S).await;
    assert_eq!((r.topic.as_str(), &r.payload[..], r.retain), ("stat/dev/POWER", &b"ON"[..], true));
    assert!(b.records().iter().any(|r| r.kind == "restart"));
}

#[tokio::test]
async fn restart_with_downtime_closes_the_listener_for_that_long() {
    let b = plain(vec![]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bb = b.clone();
    tokio::spawn(async move { bb.listen(listener, None).await });
    let mut p = Peer::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert!(p.connect(connect("before", None, true, 60)).await.is_ok());
    b.restart(Duration::from_millis(800));
    p.expect_closed(Duration::from_secs(5)).await;
    // While down: connection refused (retry briefly in case the listener is still closing).
    let mut refused = false;
    for _ in 0..20 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener kept accepting during the downtime");
    // Back after the downtime.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the listener did not come back: {e}"),
        }
    };
    let mut p = Peer::new(stream);
    assert!(p.connect(connect("after", None, true, 60)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn tls_alert_fault_fails_the_handshake_with_that_alert() {
    let dir = tempfile::tempdir().unwrap();
    let material = tasmota_sim::broker::tls::self_signed(dir.path(), &["localhost".to_string()]).unwrap();
    let acceptors = Arc::new(tasmota_sim::broker::tls::Acceptors::new(&material).unwrap());
    let b = plain(vec![FaultRule::new(Fault::TlsAlert(40)).times(1)]);
    let roots = tasmota_sim::broker::tls::client_ca(&dir.path().join("ca.pem")).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    for expect_alert in [true, false] {
        let (client, server) = tokio::io::duplex(1 << 16);
        let bb = b.clone();
        let listen = tasmota_sim::broker::TlsListen { acceptors: acceptors.clone(), mtls: false };
        tokio::spawn(async move { bb.serve_tls(server, "t".into(), listen).await });
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let r = tokio_rustls::TlsConnector::from(config.clone()).connect(name, client).await;
        if expect_alert {
            let Err(e) = r else { panic!("the handshake must fail") };
            assert!(e.to_string().contains("HandshakeFailure"), "{e}");
        } else {
            let mut p = Peer::new(r.expect("second handshake succeeds"));
            assert!(p.connect(connect("tls", None, true, 60)).await.is_ok());
        }
    }
    assert_eq!(fault_details(&b), ["TlsAlert: alert 40 sent to t"]);
}

#[tokio::test(start_paused = true)]
async fn fault_rules_added_at_run_time_and_drop_client() {
    let b = plain(vec![]);
    let mut p = online(&b, "one", true).await;
    b.add_fault(FaultRule::new(Fault::ConnackRc(5)).for_client("two"));
    let mut q = in_memory(&b);
    assert_eq!(q.connect(connect("two", None, true, 60)).await.map(|a| a.code), Ok(ConnectReturnCode::NotAuthorized));
    assert!(b.drop_client("one"));
    assert!(!b.drop_client("nobody"));
    p.expect_closed(S).await;
}

/// A `restart-at` added at run time is scheduled as one from the config: its time counts
/// from the broker's start; a time already past fires at once.
#[tokio::test(start_paused = true)]
async fn restart_at_added_at_run_time_fires_at_its_time_from_the_broker_start() {
    let b = plain(vec![]);
    let start = Instant::now();
    let mut p = online(&b, "dev", true).await;
    tokio::time::sleep(10 * S).await;
    b.add_fault("restart-at=30s/5s".parse().unwrap());
    p.expect_closed(30 * S).await;
    assert_eq!(start.elapsed(), 30 * S);
    assert_eq!(fault_details(&b), ["RestartAt: restart, down 5000 ms"]);
    let restart = b.records().into_iter().find(|r| r.kind == "restart").expect("a restart record");
    assert_eq!(restart.t_ms, 30_000);
    assert!(b.is_down());

    tokio::time::sleep(10 * S).await;
    let mut p = online(&b, "dev", true).await;
    b.add_fault("restart-at=20s".parse().unwrap());
    p.expect_closed(S).await;
    assert_eq!(start.elapsed(), 40 * S);
    assert_eq!(fault_details(&b).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn unknown_protocol_levels_get_connack_1() {
    let b = plain(vec![]);
    let mut p = in_memory(&b);
    // A CONNECT for protocol level 6 (no such MQTT; 3.1, 3.1.1 and 5 are served).
    p.send_raw(&[0x10, 0x11, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0, 4, b'm', b'q', b'6', b'!']).await;
    assert_eq!(p.expect(S).await, Packet::ConnAck(ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false)));
    p.expect_closed(S).await;
    let mut p = in_memory(&b);
    p.send_raw(&[0x82, 0x05, 0, 1, 0, 1, b'a']).await; // SUBSCRIBE first
    p.expect_closed(S).await;
}

/// Runs one client that sends `garbage` (after a valid CONNECT if `connect_first`) next to a
/// well-behaved one; the broker must not panic and must keep serving the good client.
fn garbage_case(garbage: Vec<u8>, connect_first: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async move {
        let b = plain(vec![]);
        let mut good = online(&b, "good", true).await;
        good.subscribe(1, &[("echo", QoS::AtLeastOnce)]).await;
        let (client, server) = tokio::io::duplex(1 << 20);
        let bb = b.clone();
        let task = tokio::spawn(async move { bb.serve(server, LinkInfo { peer: "bad".into(), tls: None }).await });
        let mut bad = Peer::new(client);
        if connect_first {
            bad.send(Packet::Connect(connect("bad", None, true, 60))).await;
        }
        bad.send_raw(&garbage).await;
        let _ = bad.recv(Duration::from_secs(1)).await;
        drop(bad);
        let joined = tokio::time::timeout(Duration::from_secs(30), task).await;
        prop_assert!(joined.is_ok(), "the bad link never ended");
        prop_assert!(!joined.unwrap().is_err_and(|e| e.is_panic()), "the broker panicked");
        good.publish("echo", "still here", QoS::AtLeastOnce, false, 9).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(good.expect(S).await);
        }
        prop_assert!(got.iter().any(|p| matches!(p, Packet::Publish(p) if p.payload == "still here")));
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn garbage_from_one_client_never_hurts_the_others(
        garbage in prop::collection::vec(any::<u8>(), 0..512),
        connect_first in any::<bool>(),
    ) {
        garbage_case(garbage, connect_first)?;
    }

    #[test]
    fn mangled_packets_after_connect_never_hurt_the_others(
        kind in 0u8..16, flags in 0u8..16,
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![kind << 4 | flags, body.len() as u8];
        bytes.extend(body);
        garbage_case(bytes, true)?;
    }
}
