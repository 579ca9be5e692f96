//! `tasmota-sim broker --ws-listen`: MQTT over WebSocket (ws://HOST:PORT/mqtt, subprotocol
//! mqtt, binary frames; MQTT 3.1.1 section 6.0) sharing topics and retained messages with
//! plain TCP clients; another path, a text frame and a missing subprotocol refused. Runs
//! the binary on loopback ports.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::Message;
use bytes::BytesMut;
use common::packets::{connect, Peer};
use common::{BrokerProcess, Operator};
use futures_util::StreamExt;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, Subscribe};
use rumqttc::mqttbytes::QoS;
use tokio::net::TcpStream;
use ws_stream_tungstenite::WsStream;

const WAIT: Duration = Duration::from_secs(10);

/// The broker with a plain and a WebSocket listener on free ports: (broker, tcp, ws).
fn broker(extra: &[&str]) -> (BrokerProcess, u16, u16) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let b = BrokerProcess::start(&args);
    let port = |scheme: &str| -> u16 {
        let l = b.listening.iter().find(|l| l.starts_with(scheme)).expect("listener printed");
        let addr = l.trim_start_matches(scheme).trim_end_matches("/mqtt");
        addr.rsplit(':').next().unwrap().parse().unwrap()
    };
    let (tcp, ws) = (port("mqtt://"), port("ws://"));
    assert_eq!(b.listening[1], format!("ws://127.0.0.1:{ws}/mqtt"));
    (b, tcp, ws)
}

/// A WebSocket client link to `path` offering `protocol`, as a byte stream.
async fn ws_link(
    port: u16,
    path: &str,
    protocol: Option<&str>,
) -> async_tungstenite::WebSocketStream<async_tungstenite::tokio::TokioAdapter<TcpStream>> {
    let mut req = format!("ws://127.0.0.1:{port}{path}").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (ws, resp) = async_tungstenite::tokio::client_async(req, tcp).await.expect("upgrade");
    let answered = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(answered.as_deref(), protocol.filter(|p| p.split(',').any(|p| p.trim() == "mqtt")).map(|_| "mqtt"));
    ws
}

fn encode(p: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.write(&mut out, 1 << 28).unwrap();
    out.to_vec()
}

#[test]
fn a_websocket_client_and_a_tcp_client_share_topics_and_retained_messages() {
    let (_b, tcp, ws) = broker(&[]);
    let over_tcp = Operator::connect(tcp, None, "#");
    let over_ws = Operator::connect_ws(ws, "back/#");
    // WS -> TCP
    over_ws.publish("fwd/1", "from ws");
    assert_eq!(over_tcp.expect("fwd/1", WAIT).payload, "from ws");
    // TCP -> WS
    over_tcp.publish("back/1", "from tcp");
    assert_eq!(over_ws.expect("back/1", WAIT).payload, "from tcp");
    // A retained message set over TCP (seen back by its sender: it is stored) reaches a
    // WebSocket client that subscribes later, flagged retained.
    over_tcp.client.publish("ret/x", rumqttc::QoS::AtLeastOnce, true, b"kept".to_vec()).unwrap();
    over_tcp.expect("ret/x", WAIT);
    let late = Operator::connect_ws(ws, "ret/#");
    let seen = late.expect("ret/x", WAIT);
    assert_eq!((seen.payload.as_str(), seen.retain), ("kept", true));
}

#[tokio::test]
async fn packets_split_over_frames_and_packed_into_one_frame() {
    let (_b, _tcp, ws) = broker(&[]);
    let mut link = ws_link(ws, "/mqtt", Some("mqttv3.1, mqtt")).await;
    let connect = encode(Packet::Connect(connect("split", None, true, 30)));
    let subscribe = encode(Packet::Subscribe(Subscribe::new("s/#", QoS::AtMostOnce)));
    let publish = encode(Packet::Publish(rumqttc::mqttbytes::v4::Publish::new("s/1", QoS::AtMostOnce, "p")));
    // CONNECT in two frames; the rest of it, SUBSCRIBE and PUBLISH in one.
    link.send(Message::binary(connect[..5].to_vec())).await.unwrap();
    let mut rest = connect[5..].to_vec();
    rest.extend_from_slice(&subscribe);
    rest.extend_from_slice(&publish);
    link.send(Message::binary(rest)).await.unwrap();
    let mut peer = Peer::new(WsStream::new(link));
    assert_eq!(peer.expect(WAIT).await, Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)));
    assert!(matches!(peer.expect(WAIT).await, Packet::SubAck(_)));
    let p = peer.expect_publish(WAIT).await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("s/1", &b"p"[..]));
}

#[tokio::test]
async fn a_text_frame_closes_the_link_with_1003() {
    let (_b, _tcp, ws) = broker(&[]);
    let mut link = ws_link(ws, "/mqtt", Some("mqtt")).await;
    let connect = encode(Packet::Connect(connect("texter", None, true, 30)));
    link.send(Message::text(String::from_utf8_lossy(&connect).into_owned())).await.unwrap();
    match tokio::time::timeout(WAIT, link.next()).await.expect("an answer") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Unsupported),
        other => panic!("expected a close frame 1003, got {other:?}"),
    }
    // Nothing after the close: no CONNACK.
    match tokio::time::timeout(WAIT, link.next()).await.expect("the link ends") {
        None | Some(Err(_)) => {}
        Some(Ok(m)) => panic!("expected the end of the link, got {m:?}"),
    }
}

/// A raw upgrade request for `path` with `extra` header lines: the whole answer, up to the
/// broker's close.
fn raw_upgrade(port: u16, path: &str, extra: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("the broker closes the link");
    answer
}

#[test]
fn another_path_gets_404_and_is_closed() {
    let (_b, _tcp, ws) = broker(&[]);
    let answer = raw_upgrade(ws, "/other", "Sec-WebSocket-Protocol: mqtt\r\n");
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(answer.ends_with("no WebSocket endpoint at /other; use /mqtt\n"), "{answer}");
}

#[tokio::test]
async fn without_the_mqtt_subprotocol_mqtt_is_not_served_as_in_mosquitto() {
    let (_b, _tcp, ws) = broker(&[]);
    // No Sec-WebSocket-Protocol: upgraded, then no CONNACK (Mosquitto 2.0.11 does the same).
    let link = ws_link(ws, "/mqtt", None).await;
    let mut peer = Peer::new(WsStream::new(link));
    peer.send(Packet::Connect(connect("bare", None, true, 30))).await;
    peer.expect_silence(Duration::from_secs(1)).await;
}

#[test]
fn offering_only_other_subprotocols_ends_the_link_after_the_upgrade() {
    let (_b, _tcp, ws) = broker(&[]);
    let answer = raw_upgrade(ws, "/mqtt", "Sec-WebSocket-Protocol: mqttv3.1\r\n");
    assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("sec-websocket-protocol"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "nothing after the 101 but the close: {answer:?}");
}

#[tokio::test]
async fn without_ws_listen_no_port_speaks_websocket() {
    let b = BrokerProcess::start(&["--listen", "127.0.0.1:0"]);
    assert_eq!(b.listening.len(), 1, "{:?}", b.listening);
    let port: u16 = b.listening[0].rsplit(':').next().unwrap().parse().unwrap();
    // The MQTT port reads the upgrade request as a malformed packet and closes.
    let req = format!("ws://127.0.0.1:{port}/mqtt").into_client_request().unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let upgrade = tokio::time::timeout(WAIT, async_tungstenite::tokio::client_async(req, tcp)).await;
    match upgrade {
        Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("the plain MQTT port upgraded to WebSocket"),
        Err(_) => panic!("the plain MQTT port neither upgraded nor refused within {WAIT:?}"),
    }
}

#[tokio::test]
async fn on_aws_iot_a_websocket_link_takes_custom_auth_as_the_plain_port_does() {
    let pass = "YknLuSd2tBY2HodwI/7RqA==";
    let user = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";
    let auth = format!("TasmotaAuth:{pass}");
    let (_b, _tcp, ws) = broker(&["--profile", "aws-iot", "--authorizer", &auth]);
    let mut good = Peer::new(WsStream::new(ws_link(ws, "/mqtt", Some("mqtt")).await));
    let ack = good.connect(connect("thing", Some((user, pass)), true, 30)).await.unwrap();
    assert_eq!(ack, ConnAck::new(ConnectReturnCode::Success, false));
    // A wrong password: closed with no CONNACK, as on the plain port (and at AWS).
    let mut bad = Peer::new(WsStream::new(ws_link(ws, "/mqtt", Some("mqtt")).await));
    bad.send(Packet::Connect(connect("thing2", Some((user, "wrong")), true, 30))).await;
    bad.expect_closed(WAIT).await;
}

/// `RUST_LOG=trace` must not print a client's password: tungstenite's frame trace
/// ("received frame", "Received message") shows a frame's payload, a CONNECT with its
/// login, so the WebSocket crates are capped at `debug` (which prints no payload)
/// whatever RUST_LOG says. The password is looked for as text and as the hex the frame
/// trace prints.
#[tokio::test]
async fn a_trace_log_does_not_print_a_websocket_clients_password() {
    const PASSWORD: &str = "hunter2-ws-secret";
    let hex: String = PASSWORD.bytes().map(|b| format!("{b:02x}")).collect();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tasmota-sim"))
        .args(["broker", "-q", "--ws-listen", "127.0.0.1:0", "--user", &format!("bob:{PASSWORD}")])
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tasmota-sim");
    let stdout = common::read_lines(child.stdout.take().unwrap());
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr_pipe.read_to_string(&mut all);
        all
    });
    let listening = stdout.recv_timeout(WAIT).expect("the broker prints its listener");
    let ws: u16 = listening
        .strip_prefix("listening on ws://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{listening}"));
    let mut link = ws_link(ws, "/mqtt", Some("mqtt")).await;
    link.send(Message::binary(encode(Packet::Connect(connect("tracer", Some(("bob", PASSWORD)), true, 30)))))
        .await
        .unwrap();
    let mut peer = Peer::new(WsStream::new(link));
    assert_eq!(peer.expect(WAIT).await, Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)));
    drop(peer);
    let _ = child.kill();
    let _ = child.wait();
    let log = stderr.join().unwrap();
    // RUST_LOG reached the WebSocket crates, which still log at debug.
    assert!(log.contains("DEBUG tungstenite::handshake::server: Server handshake done."), "{log}");
    assert!(!log.contains(PASSWORD), "the password in the trace log:\n{log}");
    assert!(!log.to_lowercase().contains(&hex), "the password (hex) in the trace log:\n{log}");
}
