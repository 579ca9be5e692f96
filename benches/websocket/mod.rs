//! Fan-in 100 → 1 over WebSockets (`ws://127.0.0.1:PORT/mqtt`, subprotocol `mqtt`):
//! tasmota-sim's `--ws-listen` against its own plain TCP listener with the same client
//! code, and against a Mosquitto `protocol websockets` listener when this Mosquitto was
//! built with websockets (Debian/Ubuntu's 2.0.11 here is not: it prints "Unable to start
//! any listening sockets", and the row says so). Same load as the TCP rows: 64-byte
//! payloads, QoS 0 publishers write 16 at a time, QoS 1 keep 10 unacknowledged, one
//! subscriber on its own thread; each row under a fresh topic.
//!
//! Written into BENCHMARKS.md between `<!-- broker-ws-bench:begin -->` and
//! `<!-- broker-ws-bench:end -->` by a full run; `cargo bench --bench broker -- WebSockets`
//! runs only these rows and prints them.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Packet, Publish, Subscribe, SubscribeReasonCode};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::common::process::{die_with_bench, free_port, log_tail};
use super::{encode, fresh_prefix, mqtt_handshake, read_packet, Plan, MAX_PACKET, PAYLOAD, QOS0_BATCH, QOS1_WINDOW};

pub const BEGIN: &str = "<!-- broker-ws-bench:begin -->";
pub const END: &str = "<!-- broker-ws-bench:end -->";
const PUBLISHERS: usize = 100;
const STEP: Duration = Duration::from_secs(5);

/// Whether these rows run under `plan`'s filters.
pub fn wanted(plan: &Plan) -> bool {
    plan.filters.is_empty() || plan.filters.iter().any(|f| "publish 100 → 1 over WebSockets".contains(f.as_str()))
}

/// A broker process killed on drop.
struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a client reaches a broker.
#[derive(Clone, Copy)]
enum Via {
    Tcp(u16),
    Ws(u16),
}

type Io = Box<dyn Io2>;
trait Io2: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io2 for T {}

async fn open(via: Via, id: &str) -> Result<(Io, BytesMut), String> {
    let port = match via {
        Via::Tcp(p) | Via::Ws(p) => p,
    };
    let tcp = tokio::time::timeout(STEP, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| "TCP connect took over 5 s".to_string())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut s: Io = match via {
        Via::Tcp(_) => Box::new(tcp),
        Via::Ws(_) => {
            let mut req = format!("ws://127.0.0.1:{port}/mqtt").into_client_request().map_err(|e| e.to_string())?;
            req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().map_err(|_| "header")?);
            let (ws, _) = tokio::time::timeout(STEP, async_tungstenite::tokio::client_async(req, tcp))
                .await
                .map_err(|_| "no WebSocket upgrade within 5 s".to_string())?
                .map_err(|e| format!("WebSocket upgrade: {e}"))?;
            Box::new(ws_stream_tungstenite::WsStream::new(ws))
        }
    };
    let mut buf = BytesMut::with_capacity(4096);
    mqtt_handshake(&mut s, &mut buf, id, 0, super::Mqtt::V311).await?;
    Ok((s, buf))
}

async fn publish_loop(mut s: Io, mut buf: BytesMut, topic: String, qos: QoS) -> Result<(), String> {
    let payload = Bytes::from_static(&PAYLOAD);
    if qos == QoS::AtMostOnce {
        let mut batch = BytesMut::new();
        for _ in 0..QOS0_BATCH {
            let _ = Publish::from_bytes(topic.as_str(), qos, payload.clone()).write(&mut batch);
        }
        loop {
            s.write_all(&batch).await.map_err(|e| format!("PUBLISH: {e}"))?;
            s.flush().await.map_err(|e| format!("PUBLISH: {e}"))?;
        }
    }
    let mut publish = Publish::from_bytes(topic, qos, payload);
    let mut out = BytesMut::new();
    let mut inflight = 0;
    loop {
        while inflight < QOS1_WINDOW {
            publish.pkid = publish.pkid.checked_add(1).unwrap_or(1);
            let _ = publish.write(&mut out);
            inflight += 1;
        }
        if !out.is_empty() {
            s.write_all(&out).await.map_err(|e| format!("PUBLISH: {e}"))?;
            s.flush().await.map_err(|e| format!("PUBLISH: {e}"))?;
            out.clear();
        }
        let mut packet = Some(read_packet(&mut s, &mut buf).await?);
        while let Some(p) = packet {
            if let Packet::PubAck(_) = p {
                inflight -= 1;
            }
            packet = Packet::read(&mut buf, MAX_PACKET).ok();
        }
    }
}

/// The subscriber on a thread and runtime of its own; counts into `count` until `stop`.
fn subscriber(via: Via, filter: String, qos: QoS, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let (mut s, mut buf) = match open(via, &format!("{filter}-sub")).await {
                Ok(x) => x,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            let mut sub = Subscribe::new(&filter, qos);
            sub.pkid = 1;
            if s.write_all(&encode(&Packet::Subscribe(sub))).await.is_err() || s.flush().await.is_err() {
                return drop(ready_tx.send(Err("SUBSCRIBE".into())));
            }
            match tokio::time::timeout(STEP, read_packet(&mut s, &mut buf)).await {
                Ok(Ok(Packet::SubAck(a))) if a.return_codes == [SubscribeReasonCode::Success(qos)] => {}
                other => return drop(ready_tx.send(Err(format!("expected SUBACK, got {other:?}")))),
            }
            let _ = ready_tx.send(Ok(()));
            // Ends quietly on an error, as the broker's close ends the row.
            let _ = super::count_deliveries(s, buf, &count, &stop).await;
        });
    });
    ready_rx.recv_timeout(STEP * 3).map_err(|_| "subscriber: not subscribed within 15 s".to_string())?
}

/// Messages per second the subscriber received, 100 publishers at `qos` through `via`.
async fn fan_in(via: Via, qos: QoS, plan: &Plan) -> Result<f64, String> {
    let prefix = fresh_prefix("ws");
    let (count, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    subscriber(via, format!("bench/{prefix}/#"), qos, count.clone(), stop.clone())?;
    let mut set = JoinSet::new();
    for i in 0..PUBLISHERS {
        let (s, buf) = open(via, &format!("{prefix}-{i}")).await?;
        set.spawn(publish_loop(s, buf, format!("bench/{prefix}/{i}"), qos));
    }
    tokio::time::sleep(plan.warmup).await;
    let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(plan.window).await;
    let (c1, t1) = (count.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    let failed = std::iter::from_fn(|| set.try_join_next()).filter_map(|r| r.ok().and_then(Result::err)).next();
    set.abort_all();
    while set.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(1)).await;
    match failed {
        Some(e) => Err(format!("a publisher failed: {e}")),
        None => Ok((c1 - c0) as f64 / (t1 - t0).as_secs_f64()),
    }
}

fn start_ours(dir: &Path, tcp: u16, ws: u16) -> Result<Process, String> {
    let exe = std::env::var_os("TASMOTA_SIM_BIN")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_tasmota-sim")), std::path::PathBuf::from);
    let log = dir.join("tasmota-sim-ws.log");
    let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&exe);
    cmd.args(["broker", "-q", "--listen", &format!("127.0.0.1:{tcp}"), "--ws-listen", &format!("127.0.0.1:{ws}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    die_with_bench(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let p = Process { child, log };
    let mut seen = 0;
    while seen < 2 {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with("listening on ") => seen += 1,
            Ok(_) => {}
            Err(_) => return Err(format!("tasmota-sim did not print its listeners{}", log_tail(&p.log))),
        }
    }
    Ok(p)
}

/// Mosquitto with one `protocol websockets` listener, or why it did not start.
fn start_mosquitto(dir: &Path, ws: u16) -> Result<Process, String> {
    let conf = dir.join("mosquitto-ws.conf");
    let text = format!(
        "allow_anonymous true\npersistence false\nuser root\nlog_dest stderr\nlog_type error\n\
         max_connections -1\nset_tcp_nodelay true\nlistener {ws} 127.0.0.1\nprotocol websockets\n"
    );
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let log = dir.join("mosquitto-ws.log");
    let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(&conf).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
    die_with_bench(&mut cmd);
    let mut p = Process { child: cmd.spawn().map_err(|e| format!("cannot start mosquitto: {e}"))?, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", ws)).is_err() {
        if let Ok(Some(status)) = p.child.try_wait() {
            let why = std::fs::read_to_string(&p.log).unwrap_or_default();
            let why = why.lines().last().unwrap_or("").trim().to_string();
            return Err(format!(
                "its `protocol websockets` listener did not start ({status}: {why:?}): this build has no websockets"
            ));
        }
        if Instant::now() > deadline {
            return Err("its websockets listener did not open within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(p)
}

/// Runs the rows; the markdown section (with its markers).
pub fn run(plan: &Plan, runtime: &tokio::runtime::Runtime, dir: &Path, command: &str) -> String {
    let date = super::shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown date".into());
    let commit =
        super::shell("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]).unwrap_or_default();
    let head = format!("{command} on {date}, tasmota-sim {commit}. Machine: {}.", super::machine());
    let ports = (free_port(), free_port(), free_port());
    let (Ok(tcp), Ok(ws), Ok(mq)) = ports else { return format!("{BEGIN}\nno free ports\n{END}\n") };
    let ours = start_ours(dir, tcp, ws);
    let mosquitto = start_mosquitto(dir, mq);
    let mut t = String::from(
        "| row | Mosquitto WS | tasmota-sim WS | tasmota-sim TCP | WS/TCP (ours) |\n|---|---:|---:|---:|---:|\n",
    );
    let mut notes = Vec::new();
    if let Err(e) = &mosquitto {
        notes.push(format!("Mosquitto: {e}."));
    }
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let name = format!("publish {PUBLISHERS} → 1 over WebSockets, QoS {}, 64 B (msg/s)", qos as u8);
        eprintln!("{name} ...");
        let mut cell = |who: &str, r: Result<f64, String>| match r {
            Ok(v) => {
                eprintln!("  {who:<16} {v:.0}");
                Some(v)
            }
            Err(e) => {
                eprintln!("  {who:<16} FAILED: {e}");
                notes.push(format!("{name}, {who}: {e}"));
                None
            }
        };
        let m = match &mosquitto {
            Ok(_) => cell("Mosquitto WS", runtime.block_on(fan_in(Via::Ws(mq), qos, plan))),
            Err(_) => None,
        };
        let (w, c) = match &ours {
            Ok(_) => (
                cell("tasmota-sim WS", runtime.block_on(fan_in(Via::Ws(ws), qos, plan))),
                cell("tasmota-sim TCP", runtime.block_on(fan_in(Via::Tcp(tcp), qos, plan))),
            ),
            Err(e) => {
                notes.push(format!("tasmota-sim: {e}"));
                (None, None)
            }
        };
        let show = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
        let ratio = match (w, c) {
            (Some(w), Some(c)) if c > 0.0 => format!("{:.2}", w / c),
            _ => "–".into(),
        };
        let mosq = if mosquitto.is_err() { "no websockets".to_string() } else { show(m) };
        let _ = writeln!(t, "| {name} | {mosq} | {} | {} | {ratio} |", show(w), show(c));
    }
    drop(ours);
    drop(mosquitto);
    let mut out = format!(
        "{BEGIN}\n## Embedded broker over WebSockets\n\n{head}\n\n\
         100 publishers fan in to one subscriber of `bench/ROW/#` through `ws://127.0.0.1:PORT/mqtt` \
         (subprotocol `mqtt`, async-tungstenite clients in the bench process), and the same client \
         code over plain TCP to the same tasmota-sim process for scale; otherwise as the TCP rows \
         above ({} s after {} s of warm-up).\n\n{t}",
        plan.window.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out.push_str(END);
    out.push('\n');
    out
}
