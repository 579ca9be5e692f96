//! `tasmota-sim broker --wss-listen`: MQTT over WebSocket over TLS (wss://HOST:PORT/mqtt)
//! on both profiles; on aws-iot the custom authorizer as AWS IoT takes it over WebSockets
//! (named in the upgrade's header or query string, or in the CONNECT username; the SNI
//! must be the endpoint; a refusal is 101 then no CONNACK); malformed upgrades and frames
//! close that client only. Runs the binary on loopback ports.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use common::packets::{connect, Peer};
use common::BrokerProcess;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet};
use rumqttc::mqttbytes::QoS;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws_stream_tungstenite::WsStream;

const WAIT: Duration = Duration::from_secs(10);
const ENDPOINT: &str = "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com";
const PASS: &str = "YknLuSd2tBY2HodwI/7RqA==";
const USER: &str = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";

type Tls = tokio_rustls::client::TlsStream<TcpStream>;
type WssPeer = Peer<WsStream<async_tungstenite::tokio::TokioAdapter<Tls>>>;

struct Wss {
    _broker: BrokerProcess,
    _dir: tempfile::TempDir,
    port: u16,
    config: Arc<rustls::ClientConfig>,
}

/// The broker with only a WSS listener on a free port, certificates made in a temp dir.
fn broker(profile: &str, extra: &[&str]) -> Wss {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut args = vec!["--profile", profile, "--wss-listen", "127.0.0.1:0", "--tls-self-signed"];
    args.push(certs.to_str().unwrap());
    args.extend_from_slice(extra);
    let b = BrokerProcess::start(&args);
    assert_eq!(b.listening.len(), 1, "{:?}", b.listening);
    let l = &b.listening[0];
    assert!(l.starts_with("wss://127.0.0.1:") && l.ends_with("/mqtt"), "{l}");
    let port = l.trim_end_matches("/mqtt").rsplit(':').next().unwrap().parse().unwrap();
    Wss { config: client_config(&certs.join("ca.pem"), &[]), _broker: b, _dir: dir, port }
}

fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

impl Wss {
    async fn tls(&self, sni: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
    }

    /// TLS with SNI `sni`, then the upgrade to `path` with subprotocol mqtt and `headers`.
    async fn link(&self, sni: &str, path: &str, headers: &[(&str, &str)]) -> WssPeer {
        let tls = self.tls(sni, self.config.clone()).await.expect("TLS handshake");
        let mut req = format!("wss://{sni}{path}").into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        for (k, v) in headers {
            let name = async_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            req.headers_mut().insert(name, v.parse().unwrap());
        }
        let (ws, resp) = async_tungstenite::tokio::client_async(req, tls).await.expect("upgrade");
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "mqtt");
        Peer::new(WsStream::new(ws))
    }
}

fn ok() -> ConnAck {
    ConnAck::new(ConnectReturnCode::Success, false)
}

#[tokio::test]
async fn plain_profile_serves_mqtt_over_wss() {
    let b = broker("plain", &[]);
    let mut sub = b.link("localhost", "/mqtt", &[]).await;
    assert_eq!(sub.connect(connect("wss-sub", None, true, 30)).await.unwrap(), ok());
    assert_eq!(sub.subscribe(1, &[("wss/#", QoS::AtLeastOnce)]).await, vec![1]);
    let mut publisher = b.link("127.0.0.1", "/mqtt", &[]).await;
    assert_eq!(publisher.connect(connect("wss-pub", None, true, 30)).await.unwrap(), ok());
    publisher.publish("wss/1", "over tls", QoS::AtMostOnce, false, 0).await;
    let p = sub.expect_publish(WAIT).await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("wss/1", &b"over tls"[..]));
}

#[tokio::test]
async fn aws_iot_takes_the_authorizer_from_the_username_the_header_or_the_query() {
    let b = broker("aws-iot", &["--authorizer", &format!("TasmotaAuth:{PASS}")]);
    // In the CONNECT username (AWS's Device SDK v2 websockets_with_custom_authorizer).
    let mut by_user = b.link(ENDPOINT, "/mqtt", &[]).await;
    assert_eq!(by_user.connect(connect("by-user", Some((USER, PASS)), true, 30)).await.unwrap(), ok());
    // In the upgrade's header; the username is a bare user.
    let mut by_header = b.link(ENDPOINT, "/mqtt", &[("x-amz-customauthorizer-name", "TasmotaAuth")]).await;
    assert_eq!(by_header.connect(connect("by-header", Some(("tasmota", PASS)), true, 30)).await.unwrap(), ok());
    // In the query string, spelled as AWS's JavaScript SDK v1 spells it.
    let mut by_query = b.link(ENDPOINT, "/mqtt?X-Amz-CustomAuthorizer-Name=TasmotaAuth", &[]).await;
    assert_eq!(by_query.connect(connect("by-query", Some(("tasmota", PASS)), true, 30)).await.unwrap(), ok());
    // They share topics.
    assert_eq!(by_user.subscribe(1, &[("t/#", QoS::AtMostOnce)]).await, vec![0]);
    by_query.publish("t/1", "x", QoS::AtMostOnce, false, 0).await;
    assert_eq!(by_user.expect_publish(WAIT).await.topic, "t/1");
}

#[tokio::test]
async fn aws_iot_refusals_are_101_then_no_connack() {
    let b = broker("aws-iot", &["--authorizer", &format!("TasmotaAuth:{PASS}")]);
    // The wrong password.
    let mut wrong = b.link(ENDPOINT, "/mqtt", &[]).await;
    wrong.send(Packet::Connect(connect("wrong", Some((USER, "wrong")), true, 30))).await;
    wrong.expect_closed(WAIT).await;
    // An authorizer that does not exist, named by the header (it wins over the username).
    let mut unknown = b.link(ENDPOINT, "/mqtt", &[("x-amz-customauthorizer-name", "Nope")]).await;
    unknown.send(Packet::Connect(connect("unknown", Some((USER, PASS)), true, 30))).await;
    unknown.expect_closed(WAIT).await;
    // No authorizer named anywhere and no default authorizer.
    let mut unnamed = b.link(ENDPOINT, "/mqtt", &[]).await;
    unnamed.send(Packet::Connect(connect("unnamed", Some(("tasmota", PASS)), true, 30))).await;
    unnamed.expect_closed(WAIT).await;
    // The SNI is not the endpoint (custom auth needs it to be).
    let mut by_ip = b.link("localhost", "/mqtt", &[]).await;
    by_ip.send(Packet::Connect(connect("sni", Some((USER, PASS)), true, 30))).await;
    by_ip.expect_closed(WAIT).await;
    // And the right one still gets in.
    let mut good = b.link(ENDPOINT, "/mqtt", &[]).await;
    assert_eq!(good.connect(connect("good", Some((USER, PASS)), true, 30)).await.unwrap(), ok());
}

#[tokio::test]
async fn alpn_mqtt_on_the_wss_port_fails_the_handshake_and_http_1_1_is_taken() {
    let b = broker("plain", &[]);
    let ca = b._dir.path().join("certs/ca.pem");
    let err = b.tls("localhost", client_config(&ca, &[b"mqtt"])).await.expect_err("ALPN mqtt refused");
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
    let tls = b.tls("localhost", client_config(&ca, &[b"http/1.1"])).await.expect("ALPN http/1.1 taken");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

/// A TLS link that sends `first` raw, then (once the HTTP answer's head has come) `then`;
/// everything the broker sent until it closed the link.
async fn raw_over_tls(b: &Wss, first: &[u8], then: &[u8]) -> Vec<u8> {
    let mut tls = b.tls("localhost", b.config.clone()).await.unwrap();
    tls.write_all(first).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut sent = then.is_empty();
    // Until the broker closes (cleanly or not: a reset ends it too).
    while let Ok(n @ 1..) = tokio::time::timeout(WAIT, tls.read(&mut chunk)).await.expect("the broker closes the link")
    {
        out.extend_from_slice(&chunk[..n]);
        if !sent && out.windows(4).any(|w| w == b"\r\n\r\n") {
            tls.write_all(then).await.unwrap();
            sent = true;
        }
    }
    out
}

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n";

#[tokio::test]
async fn malformed_upgrades_and_frames_close_that_client_only() {
    let b = broker("plain", &[]);
    let mut bystander = b.link("localhost", "/mqtt", &[]).await;
    assert_eq!(bystander.connect(connect("bystander", None, true, 30)).await.unwrap(), ok());
    assert_eq!(bystander.subscribe(1, &[("b/#", QoS::AtMostOnce)]).await, vec![0]);

    // Not HTTP at all.
    let answer = raw_over_tls(&b, b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e\x00\x00", b"").await;
    assert!(!answer.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&answer));
    // A frame sent before the 101 (RFC 6455 section 4.1: the client waits for the answer).
    let mut eager = format!("{UPGRADE}\r\n").into_bytes();
    eager.extend_from_slice(&[0x82, 0x02, 0x10, 0x00]);
    assert_eq!(raw_over_tls(&b, &eager, b"").await, b"");
    // A query string that does not decode: 400, the query not echoed.
    let bad_query = UPGRADE.replace("/mqtt", "/mqtt?token=s3cr3t%zz") + "\r\n";
    let answer = String::from_utf8_lossy(&raw_over_tls(&b, bad_query.as_bytes(), b"").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(!answer.contains("s3cr3t"), "{answer}");
    // Upgraded, then frames a server must refuse (RFC 6455 sections 5.1, 5.2): unmasked,
    // a reserved opcode (0x3), RSV bits set, a 2^63-byte length.
    let upgrade = format!("{UPGRADE}\r\n");
    for frame in [
        &[0x82u8, 0x02, 0x10, 0x00][..],
        &[0x83, 0x80, 1, 2, 3, 4][..],
        &[0xf2, 0x80, 1, 2, 3, 4][..],
        &[0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4][..],
    ] {
        let answer = raw_over_tls(&b, upgrade.as_bytes(), frame).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"), "frame {frame:?}: {text:?}");
        // Nothing MQTT came back: no binary frame holding a CONNACK.
        assert!(!answer.windows(3).any(|w| w == [0x82, 0x04, 0x20]), "frame {frame:?}: {text:?}");
    }
    // A raw TCP client that never speaks TLS, and one that hangs up mid-ClientHello.
    let mut junk = std::net::TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    junk.write_all(b"GET /mqtt HTTP/1.1\r\n\r\n").unwrap();
    junk.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = Vec::new();
    let _ = junk.read_to_end(&mut sink);
    drop(std::net::TcpStream::connect(("127.0.0.1", b.port)).unwrap());

    // The bystander's link is untouched.
    let mut publisher = b.link("localhost", "/mqtt", &[]).await;
    assert_eq!(publisher.connect(connect("after", None, true, 30)).await.unwrap(), ok());
    publisher.publish("b/1", "still here", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&bystander.expect_publish(WAIT).await.payload[..], b"still here");
}
