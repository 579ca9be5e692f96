//! AWS IoT light mode on the wire: a TLS endpoint in the test records the device's
//! ClientHello (SNI, ALPN, version, cipher suites) and reads its MQTT packets with an
//! independent codec (rumqttc's mqttbytes).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{test_ca, DeviceProcess};
use rumqttc::mqttbytes::v4::Packet;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com";
const USER: &str = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";
const PASSWORD: &str = "YknLuSd2tBY2HodwI/7RqA==";

struct Hello {
    sni: Option<String>,
    alpn: Option<Vec<Vec<u8>>>,
    suites: Vec<rustls::CipherSuite>,
}

/// Accepts one TLS connection, records its ClientHello, completes the handshake (TLS
/// 1.2 or 1.3, ALPN `mqtt` if offered) and hands back the stream.
async fn accept(
    listener: &tokio::net::TcpListener,
    ca: &common::TestCa,
) -> (Hello, tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    let (tcp, _) = listener.accept().await.unwrap();
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = acceptor.await.unwrap();
    let ch = start.client_hello();
    let hello = Hello {
        sni: ch.server_name().map(String::from),
        alpn: ch.alpn().map(|a| a.map(|p| p.to_vec()).collect()),
        suites: ch.cipher_suites().to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(ca.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.key_der.clone())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    let stream = start.into_stream(Arc::new(config)).await.unwrap();
    (hello, stream)
}

async fn read_packet(stream: &mut (impl AsyncReadExt + Unpin), buf: &mut BytesMut) -> Packet {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(p) => return p,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("bad packet from the device: {e:?}"),
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "the device closed the link");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn run_device(dir: &std::path::Path, port: u16, listen: u16, ca: &common::TestCa) -> DeviceProcess {
    let setup = format!(
        "BackLog SetOption3 1; SetOption103 1; MqttHost {HOST}; MqttPort {port}; MqttUser {USER}; MqttPassword {PASSWORD}"
    );
    let connect_to = format!("{HOST}:{port}:127.0.0.1:{listen}");
    let state = dir.join(format!("plug{port}"));
    DeviceProcess::start(&[
        "--state",
        state.to_str().unwrap(),
        "--cmd",
        &setup,
        "--connect-to",
        &connect_to,
        "--ca-file",
        ca.ca.to_str().unwrap(),
    ])
}

/// A stand-in for the AWS endpoint: a test CA with a certificate for the region's
/// wildcard, and a listener on a free loopback port.
async fn endpoint(dir: &std::path::Path) -> (common::TestCa, tokio::net::TcpListener, u16) {
    let ca = test_ca(dir, &["*.iot.eu-west-1.amazonaws.com"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (ca, listener, port)
}

#[tokio::test(flavor = "current_thread")]
async fn port_443_sends_sni_alpn_mqtt_tls12_and_no_retain() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, listener, listen) = endpoint(dir.path()).await;
    let mut dev = run_device(dir.path(), 443, listen, &ca);

    let (hello, mut tls) = tokio::time::timeout(Duration::from_secs(15), accept(&listener, &ca)).await.unwrap();
    assert_eq!(hello.sni.as_deref(), Some(HOST));
    assert_eq!(hello.alpn, Some(vec![b"mqtt".to_vec()]));
    // The firmware's single suite (rustls adds the renegotiation-info SCSV marker).
    let suites: Vec<_> =
        hello.suites.iter().filter(|s| **s != rustls::CipherSuite::TLS_EMPTY_RENEGOTIATION_INFO_SCSV).collect();
    assert_eq!(suites, [&rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]);
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(conn.alpn_protocol(), Some(&b"mqtt"[..]));

    let mut buf = BytesMut::new();
    let Packet::Connect(connect) = read_packet(&mut tls, &mut buf).await else { panic!("no CONNECT first") };
    assert_eq!(connect.client_id, "DVES_4B3316");
    assert!(connect.clean_session);
    assert_eq!(connect.keep_alive, 30);
    let login = connect.login.expect("user and password");
    assert_eq!((login.username.as_str(), login.password.as_str()), (USER, PASSWORD));
    let will = connect.last_will.expect("a will");
    assert_eq!(will.topic, "tele/tasmota_4B3316/LWT");
    assert_eq!(&will.message[..], b"Offline");
    assert_eq!(will.qos, rumqttc::QoS::AtLeastOnce);
    assert!(!will.retain, "will retain is off on AWS IoT");

    tls.write_all(&[0x20, 2, 0, 0]).await.unwrap();
    let Packet::Publish(lwt) = read_packet(&mut tls, &mut buf).await else { panic!("LWT first") };
    assert_eq!((lwt.topic.as_str(), &lwt.payload[..], lwt.retain), ("tele/tasmota_4B3316/LWT", &b"Online"[..], false));
    let Packet::Publish(power) = read_packet(&mut tls, &mut buf).await else { panic!("POWER second") };
    assert_eq!((power.topic.as_str(), power.payload.len()), ("cmnd/tasmota_4B3316/POWER", 0));
    for filter in ["cmnd/tasmota_4B3316/#", "cmnd/tasmotas/#", "cmnd/DVES_4B3316_fb/#"] {
        let Packet::Subscribe(sub) = read_packet(&mut tls, &mut buf).await else { panic!("SUBSCRIBE") };
        assert_eq!(sub.filters[0].path, filter);
    }
    for _ in 0..5 {
        let Packet::Publish(p) = read_packet(&mut tls, &mut buf).await else { panic!("INFO and power state") };
        assert!(!p.retain, "{} retained on AWS", p.topic);
    }

    let tls_line = tokio::task::spawn_blocking(move || {
        let line = dev.expect("TLS connected", Duration::from_secs(5), |t| t.starts_with("MQT: TLS connected in "));
        dev.expect_line("MQT: MFLN not supported by TLS server", Duration::from_secs(1));
        dev.expect_line("MQT: Connected", Duration::from_secs(1));
        dev.expect_line("MQT: tele/tasmota_4B3316/LWT = Online", Duration::from_secs(1));
        dev.expect_line("MQT: cmnd/tasmota_4B3316/POWER = ", Duration::from_secs(1));
        line
    })
    .await
    .unwrap();
    assert!(tls_line.ends_with(" ms, max ThunkStack used 4596"), "{tls_line}");
}

#[tokio::test(flavor = "current_thread")]
async fn port_8883_offers_no_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, listener, listen) = endpoint(dir.path()).await;
    let _dev = run_device(dir.path(), 8883, listen, &ca);
    let (hello, _tls) = tokio::time::timeout(Duration::from_secs(15), accept(&listener, &ca)).await.unwrap();
    assert_eq!(hello.sni.as_deref(), Some(HOST));
    assert_eq!(hello.alpn, None);
}
