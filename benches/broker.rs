//! The embedded broker (`tasmota-sim broker --profile plain`) against Mosquitto, in one run
//! on this machine, both on loopback:
//!
//! - publish throughput: 1, 100 and 1000 publishers fanning in to one subscriber of
//!   `bench/ROW/#`, QoS 0 and QoS 1, 64-byte payloads, counted where the subscriber receives them;
//!   the fan-in of 100 also with every client speaking MQTT 5;
//! - connect rate: TCP connect, CONNECT, CONNACK, DISCONNECT, one client at a time and 50 at
//!   a time, plain and TLS (the same certificate on both brokers, full handshakes);
//! - memory per idle plain connection: the broker's VmRSS before and after N idle clients.
//!
//! `cargo bench --bench broker` runs it all and writes the table into BENCHMARKS.md between
//! `<!-- broker-bench:begin -->` and `<!-- broker-bench:end -->`. `-- --quick` runs short
//! windows and only prints. Any other argument keeps the rows whose name contains it, as
//! libtest filters do (`-- --quick TLS`). `TASMOTA_SIM_BIN=PATH` benchmarks another build of
//! the binary in place of this one. Without `--bench` (that is, under
//! `cargo test --benches`) it does nothing.
//!
//! The load comes from this process: raw MQTT 3.1.1 (or 5) encoded and decoded with rumqttc's
//! `mqttbytes`, publishers on a two-worker tokio runtime, the subscriber on a thread of its
//! own so it is never what limits the count. The machine's cores are shared by the load and
//! the broker, the same way for both brokers.

mod common;
mod websocket;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode};
use rumqttc::mqttbytes::{Error as WireError, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use common::process::{cpu_seconds, die_with_bench, free_port, log_tail, rss_kib};
use common::shell;

/// Largest packet the load generator accepts from a broker.
const MAX_PACKET: usize = 64 * 1024;
/// Any single step with a broker (connect, CONNACK, SUBACK, a write) that takes longer has failed.
const STEP: Duration = Duration::from_secs(5);
const PAYLOAD: [u8; 64] = [b'x'; 64];
/// QoS 1 messages a publisher keeps unacknowledged.
const QOS1_WINDOW: usize = 10;
/// QoS 0 messages a publisher writes per call.
const QOS0_BATCH: usize = 16;
/// Clients connecting at once while the publishers or idle clients are set up.
const SETUP_CONCURRENCY: usize = 50;
/// Clients looping connect/disconnect in the concurrent connect-rate rows.
const CONNECT_WORKERS: usize = 50;
/// After a row, the broker has settled when it uses less than this share of one core.
const QUIET_CPU: f64 = 0.05;

const BEGIN: &str = "<!-- broker-bench:begin -->";
const END: &str = "<!-- broker-bench:end -->";

/// How long and how big: `--quick` or the full run.
struct Plan {
    quick: bool,
    warmup: Duration,
    window: Duration,
    idle_clients: usize,
    filters: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// The brokers

/// A broker process under test, killed when dropped (and, on Linux, when this process dies).
struct Broker {
    name: &'static str,
    child: Child,
    port: u16,
    tls_port: u16,
    /// Where its stderr goes, quoted when it fails.
    log: PathBuf,
    /// Set once it failed to go idle after a row: later waits for it are short.
    stuck: AtomicBool,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the reason (and the end of its log) once the process has exited.
    fn alive(&self) -> Result<(), String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        match state {
            Some("Z" | "X") | None => Err(format!("{} has exited{}", self.name, log_tail(&self.log))),
            Some(_) => Ok(()),
        }
    }
}

/// `tasmota-sim broker --profile plain` with a plain and a TLS listener; `--tls-self-signed`
/// writes the certificate that Mosquitto then serves too.
fn start_ours(dir: &Path, certs: &Path) -> Result<Broker, String> {
    // TASMOTA_SIM_BIN: another build of the binary, to compare two versions of our broker.
    let exe = std::env::var_os("TASMOTA_SIM_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tasmota-sim")), PathBuf::from);
    if !exe.exists() {
        return Err(format!("{} is missing: run `cargo build --release`", exe.display()));
    }
    let (port, tls_port) = (free_port()?, free_port()?);
    let log = dir.join("tasmota-sim.log");
    let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(&exe);
    cmd.args(["broker", "-q", "--profile", "plain", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-listen", &format!("127.0.0.1:{tls_port}"), "--tls-self-signed"])
        .arg(certs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    die_with_bench(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let stdout = child.stdout.take();
    let broker = Broker { name: "tasmota-sim", child, port, tls_port, log, stuck: AtomicBool::new(false) };
    let stdout = stdout.ok_or("no stdout")?;
    // A thread reads stdout for the broker's whole life, so it never writes into a closed
    // pipe, and reports the "listening on" lines.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let want =
        [format!("listening on mqtt://127.0.0.1:{port} "), format!("listening on mqtts://127.0.0.1:{tls_port} ")];
    let mut seen = [false, false];
    // Generating two RSA keys the first time can take a few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen != [true, true] {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                for (i, w) in want.iter().enumerate() {
                    seen[i] |= line.starts_with(w.as_str());
                }
            }
            Err(_) => {
                broker.alive()?;
                return Err(format!("tasmota-sim did not print both 'listening on' lines{}", log_tail(&broker.log)));
            }
        }
    }
    Ok(broker)
}

fn mosquitto_version() -> Option<String> {
    let out = Command::new("mosquitto").arg("-h").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or("mosquitto (unknown version)").trim().to_string())
}

/// Mosquitto on two free ports: plain, and TLS with the files our broker wrote.
fn start_mosquitto(dir: &Path, certs: &Path) -> Result<Broker, String> {
    let (port, tls_port) = (free_port()?, free_port()?);
    let conf = dir.join("mosquitto.conf");
    // `user root`: when the bench runs as root Mosquitto would otherwise switch to the
    // `mosquitto` user, which can read neither the 0600 key nor keep the parent-death signal.
    // It has no effect for other users.
    let text = format!(
        "per_listener_settings false\nallow_anonymous true\npersistence false\nuser root\n\
         log_dest stderr\nlog_type error\nlog_type warning\nmax_connections -1\nset_tcp_nodelay true\n\
         listener {port} 127.0.0.1\n\
         listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        certs.join("ca.pem").display(),
        certs.join("server.pem").display(),
        certs.join("server-key.pem").display()
    );
    std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
    let log = dir.join("mosquitto.log");
    let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(&conf).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
    die_with_bench(&mut cmd);
    let child = cmd.spawn().map_err(|e| format!("cannot start mosquitto: {e}"))?;
    let broker = Broker { name: "Mosquitto", child, port, tls_port, log, stuck: AtomicBool::new(false) };
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in [port, tls_port] {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            broker.alive()?;
            if Instant::now() > deadline {
                return Err(format!("mosquitto did not listen on {p}{}", log_tail(&broker.log)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(broker)
}

/// Stand-in certificates (ECDSA P-256) for Mosquitto's TLS listener when our broker could
/// not start and write its own.
fn make_certs(certs: &Path) -> Result<(), String> {
    let e = |e: rcgen::Error| format!("rcgen: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "broker bench CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(e)?
        .signed_by(&key, &issuer)
        .map_err(e)?;
    std::fs::create_dir_all(certs).map_err(|e| e.to_string())?;
    for (name, pem) in [("ca.pem", ca_cert.pem()), ("server.pem", cert.pem()), ("server-key.pem", key.serialize_pem())]
    {
        std::fs::write(certs.join(name), pem).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Waits until the broker is idle again after a row, so one row's leftovers do not slow the
/// next: up to 60 s, or 3 s once it has failed to go idle before.
async fn settle(broker: &Broker) -> Result<(), String> {
    let start = Instant::now();
    let patience = if broker.stuck.load(Ordering::Relaxed) { 3 } else { 60 };
    let deadline = start + Duration::from_secs(patience);
    let mut last = cpu_seconds(broker.pid());
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker.alive()?;
        let now = cpu_seconds(broker.pid());
        let used = match (last, now) {
            (Some(a), Some(b)) => (b - a) / 0.5,
            _ => return Ok(()),
        };
        if used < QUIET_CPU {
            broker.stuck.store(false, Ordering::Relaxed);
            return Ok(());
        }
        if Instant::now() > deadline {
            let secs = start.elapsed().as_secs();
            broker.stuck.store(true, Ordering::Relaxed);
            return Err(format!("still using {:.0}% CPU {secs} s after its last load", used * 100.0));
        }
        last = now;
    }
}

// ---------------------------------------------------------------------------------------
// MQTT on the wire

fn encode(packet: &Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    // Every packet the bench builds is far below MAX_PACKET.
    let _ = packet.write(&mut buf, MAX_PACKET);
    buf
}

/// The next packet from `s`, using what is already in `buf` first.
async fn read_packet<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Result<Packet, String> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(WireError::InsufficientBytes(n)) => buf.reserve(n.max(4096)),
            Err(e) => return Err(format!("bad packet from the broker: {e}")),
        }
        match s.read_buf(buf).await {
            Ok(0) => return Err("the broker closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Which MQTT the load speaks. MQTT 5 differs from 3.1.1 in the load only at CONNECT,
/// SUBSCRIBE and PUBLISH (a property length); a 3.1.1 reader counts MQTT 5 PUBLISHes and
/// PUBACKs the same (the property length reads as payload, a 2-byte PUBACK is both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mqtt {
    V311,
    V5,
}

impl Mqtt {
    fn label(self) -> &'static str {
        match self {
            Mqtt::V311 => "",
            Mqtt::V5 => ", MQTT 5",
        }
    }
}

fn encode_v5(packet: &rumqttc::v5::mqttbytes::v5::Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    let _ = packet.write(&mut buf, None);
    buf
}

/// The next whole packet's first byte and what follows its remaining length, raw.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Result<(u8, Bytes), String> {
    loop {
        if let Ok(h) = rumqttc::mqttbytes::check(buf.iter(), MAX_PACKET) {
            let frame = buf.split_to(h.frame_length()).freeze();
            // The remaining length's bytes end at the first one without bit 7.
            let body = frame.iter().skip(1).position(|b| b & 0x80 == 0).map_or(frame.len(), |i| i + 2);
            return Ok((frame[0], frame.slice(body.min(frame.len())..)));
        }
        buf.reserve(4096);
        match s.read_buf(buf).await {
            Ok(0) => return Err("the broker closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// CONNECT (clean session) and CONNACK 0 on any stream, within `STEP`.
async fn mqtt_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    id: &str,
    keep_alive: u16,
    mqtt: Mqtt,
) -> Result<(), String> {
    if mqtt == Mqtt::V5 {
        use rumqttc::v5::mqttbytes::v5;
        let connect = v5::Connect { keep_alive, client_id: id.into(), clean_start: true, properties: None };
        let step = async {
            s.write_all(&encode_v5(&v5::Packet::Connect(connect, None, None)))
                .await
                .map_err(|e| format!("CONNECT: {e}"))?;
            match read_frame(s, buf).await? {
                (0x20, body) if body.get(1) == Some(&0) => Ok(()),
                (0x20, body) => Err(format!("CONNACK reason {:?}", body.get(1))),
                (first, _) => Err(format!("expected CONNACK, got packet type {}", first >> 4)),
            }
        };
        return tokio::time::timeout(STEP, step).await.map_err(|_| "no CONNACK within 5 s".to_string())?;
    }
    let mut connect = Connect::new(id);
    connect.keep_alive = keep_alive;
    let step = async {
        s.write_all(&encode(&Packet::Connect(connect))).await.map_err(|e| format!("CONNECT: {e}"))?;
        match read_packet(s, buf).await? {
            Packet::ConnAck(a) if a.code == ConnectReturnCode::Success => Ok(()),
            Packet::ConnAck(a) => Err(format!("CONNACK {:?}", a.code)),
            p => Err(format!("expected CONNACK, got {p:?}")),
        }
    };
    tokio::time::timeout(STEP, step).await.map_err(|_| "no CONNACK within 5 s".to_string())?
}

/// A connected plain client and what it has read past the CONNACK.
async fn connect_plain(port: u16, id: &str, keep_alive: u16, mqtt: Mqtt) -> Result<(TcpStream, BytesMut), String> {
    let tcp = tokio::time::timeout(STEP, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| "TCP connect took over 5 s".to_string())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut s = tcp;
    let mut buf = BytesMut::with_capacity(4096);
    mqtt_handshake(&mut s, &mut buf, id, keep_alive, mqtt).await?;
    Ok((s, buf))
}

/// `n` plain clients connected `SETUP_CONCURRENCY` at a time, in the order of their index.
async fn connect_many(port: u16, prefix: &str, n: usize, mqtt: Mqtt) -> Result<Vec<(TcpStream, BytesMut)>, String> {
    let limit = Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (limit, id) = (limit.clone(), format!("{prefix}-{i}"));
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (i, connect_plain(port, &id, 0, mqtt).await.map_err(|e| format!("client {id}: {e}")))
        });
    }
    let mut out: Vec<Option<(TcpStream, BytesMut)>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| format!("connect task: {e}"))?;
        out[i] = Some(r?);
    }
    Ok(out.into_iter().flatten().collect())
}

/// A prefix for client ids no earlier row used, so a closing client never meets a takeover.
fn fresh_prefix(what: &str) -> String {
    static ROW: AtomicU64 = AtomicU64::new(0);
    format!("bench{}-{what}", ROW.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// Row 1: publish throughput, fan-in to one subscriber

/// The one subscriber, on a thread and runtime of its own: counts PUBLISH packets and
/// acknowledges QoS 1 ones.
struct Subscriber {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    done: tokio::sync::oneshot::Receiver<Result<(), String>>,
}

async fn start_subscriber(port: u16, filter: String, qos: QoS, id: String, mqtt: Mqtt) -> Result<Subscriber, String> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (c, st) = (count.clone(), stop.clone());
    std::thread::Builder::new()
        .name("subscriber".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("subscriber runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match subscribe(port, &filter, qos, &id, mqtt).await {
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Ok((s, buf)) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = done_tx.send(count_deliveries(s, buf, &c, &st).await);
                    }
                }
            });
        })
        .map_err(|e| format!("subscriber thread: {e}"))?;
    match tokio::time::timeout(STEP * 3, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(Subscriber { count, stop, done: done_rx }),
        Ok(Ok(Err(e))) => Err(format!("subscriber: {e}")),
        _ => Err("subscriber: not subscribed within 15 s".into()),
    }
}

async fn subscribe(port: u16, filter: &str, qos: QoS, id: &str, mqtt: Mqtt) -> Result<(TcpStream, BytesMut), String> {
    let (mut s, mut buf) = connect_plain(port, id, 0, mqtt).await?;
    if mqtt == Mqtt::V5 {
        use rumqttc::v5::mqttbytes::v5;
        let q = match qos {
            QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        };
        let sub = v5::Subscribe { pkid: 1, filters: vec![v5::Filter::new(filter, q)], properties: None };
        let step = async {
            s.write_all(&encode_v5(&v5::Packet::Subscribe(sub))).await.map_err(|e| format!("SUBSCRIBE: {e}"))?;
            // SUBACK: packet id, property length (0 from both brokers), one reason code.
            match read_frame(&mut s, &mut buf).await? {
                (0x90, body) if body.last() == Some(&(qos as u8)) => Ok(()),
                (first, body) => Err(format!("expected SUBACK granting {qos:?}, got {first:02X} {body:02X?}")),
            }
        };
        tokio::time::timeout(STEP, step).await.map_err(|_| "no SUBACK within 5 s".to_string())??;
        return Ok((s, buf));
    }
    let mut sub = Subscribe::new(filter, qos);
    sub.pkid = 1;
    let step = async {
        s.write_all(&encode(&Packet::Subscribe(sub))).await.map_err(|e| format!("SUBSCRIBE: {e}"))?;
        match read_packet(&mut s, &mut buf).await? {
            Packet::SubAck(a) if a.return_codes == [SubscribeReasonCode::Success(qos)] => Ok(()),
            p => Err(format!("expected SUBACK granting {qos:?}, got {p:?}")),
        }
    };
    tokio::time::timeout(STEP, step).await.map_err(|_| "no SUBACK within 5 s".to_string())??;
    Ok((s, buf))
}

async fn count_deliveries<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut buf: BytesMut,
    count: &AtomicU64,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut acks = BytesMut::new();
    while !stop.load(Ordering::Relaxed) {
        let mut seen = 0;
        loop {
            match Packet::read(&mut buf, MAX_PACKET) {
                Ok(Packet::Publish(p)) => {
                    seen += 1;
                    if p.qos == QoS::AtLeastOnce {
                        let _ = PubAck::new(p.pkid).write(&mut acks);
                    }
                }
                Ok(_) => {}
                Err(WireError::InsufficientBytes(_)) => break,
                Err(e) => return Err(format!("bad packet from the broker: {e}")),
            }
        }
        count.fetch_add(seen, Ordering::Relaxed);
        if !acks.is_empty() {
            // The flush is a no-op on TCP; a WebSocket stream sends its frame on it.
            let written = async {
                s.write_all(&acks).await?;
                s.flush().await
            };
            match tokio::time::timeout(STEP, written).await {
                Ok(Ok(())) => acks.clear(),
                Ok(Err(e)) => return Err(format!("PUBACK: {e}")),
                Err(_) => return Err("PUBACK write blocked for 5 s".into()),
            }
        }
        buf.reserve(64 * 1024);
        match tokio::time::timeout(Duration::from_millis(200), s.read_buf(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) => return Err("the broker closed the subscriber's connection".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("subscriber read: {e}")),
        }
    }
    Ok(())
}

/// One publisher, until it is aborted: QoS 0 writes as fast as the broker reads; QoS 1 keeps
/// `QOS1_WINDOW` messages unacknowledged. `sent` counts messages written (QoS 0) or
/// acknowledged (QoS 1).
async fn publish_loop(
    mut s: TcpStream,
    mut buf: BytesMut,
    topic: String,
    qos: QoS,
    sent: Arc<AtomicU64>,
    mqtt: Mqtt,
) -> Result<(), String> {
    let payload = Bytes::from_static(&PAYLOAD);
    // An MQTT 5 PUBLISH: the 3.1.1 one with a property length of 0 before the payload.
    let write_publish = |p: &Publish, out: &mut BytesMut| {
        if mqtt == Mqtt::V311 {
            let _ = p.write(out);
            return;
        }
        let q = if p.qos == QoS::AtMostOnce {
            rumqttc::v5::mqttbytes::QoS::AtMostOnce
        } else {
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce
        };
        let mut v = rumqttc::v5::mqttbytes::v5::Publish::new(p.topic.as_str(), q, p.payload.clone(), None);
        v.pkid = p.pkid;
        let _ = v.write(out);
    };
    if qos == QoS::AtMostOnce {
        let mut batch = BytesMut::new();
        for _ in 0..QOS0_BATCH {
            write_publish(&Publish::from_bytes(topic.as_str(), qos, payload.clone()), &mut batch);
        }
        loop {
            s.write_all(&batch).await.map_err(|e| format!("PUBLISH: {e}"))?;
            sent.fetch_add(QOS0_BATCH as u64, Ordering::Relaxed);
        }
    }
    let mut publish = Publish::from_bytes(topic, qos, payload);
    let mut out = BytesMut::new();
    let mut inflight = 0;
    loop {
        while inflight < QOS1_WINDOW {
            publish.pkid = publish.pkid.checked_add(1).unwrap_or(1);
            write_publish(&publish, &mut out);
            inflight += 1;
        }
        if !out.is_empty() {
            s.write_all(&out).await.map_err(|e| format!("PUBLISH: {e}"))?;
            out.clear();
        }
        // At least one packet, then whatever else is already buffered.
        let mut packet = Some(read_packet(&mut s, &mut buf).await?);
        while let Some(p) = packet {
            if let Packet::PubAck(_) = p {
                inflight = inflight.saturating_sub(1);
                sent.fetch_add(1, Ordering::Relaxed);
            }
            packet = Packet::read(&mut buf, MAX_PACKET).ok();
        }
    }
}

/// Messages per second the subscriber received over the window, after the warm-up.
async fn throughput(broker: &Broker, publishers: usize, qos: QoS, mqtt: Mqtt, plan: &Plan) -> Result<Measured, String> {
    // Each row publishes under a topic of its own, so what a broker still holds from an
    // earlier row never reaches this row's subscriber.
    let prefix = fresh_prefix("pub");
    let mut sub =
        start_subscriber(broker.port, format!("bench/{prefix}/#"), qos, format!("{prefix}-sub"), mqtt).await?;
    let clients = connect_many(broker.port, &prefix, publishers, mqtt).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for (i, (s, buf)) in clients.into_iter().enumerate() {
        // Closed with RST at the end: the kernel drops what the broker has not read yet.
        let _ = s.set_zero_linger();
        set.spawn(publish_loop(s, buf, format!("bench/{prefix}/{i}"), qos, sent.clone(), mqtt));
    }
    tokio::time::sleep(plan.warmup).await;
    let (c0, s0, t0) = (sub.count.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(plan.window).await;
    let (c1, s1, t1) = (sub.count.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), Instant::now());
    sub.stop.store(true, Ordering::Relaxed);
    // Publishers that stopped on their own did so because of an error.
    let mut failed = Vec::new();
    while let Some(r) = set.try_join_next() {
        if let Ok(Err(e)) = r {
            failed.push(e);
        }
    }
    set.abort_all();
    let subscriber_end = sub.done.try_recv();
    if let Ok(Err(e)) = subscriber_end {
        return Err(format!("subscriber: {e}"));
    }
    let secs = (t1 - t0).as_secs_f64();
    let mut m = Measured::new((c1 - c0) as f64 / secs);
    // What QoS 0 publishers wrote is mostly kernel buffering; a PUBACK says the broker took it.
    if qos == QoS::AtLeastOnce {
        let acked = (s1 - s0) as f64 / secs;
        m.acked = Some(acked);
        m.detail = Some(format!("{acked:.0} msg/s acknowledged to the publishers"));
    }
    if !failed.is_empty() {
        m.notes.push(format!("{} of {publishers} publishers failed, first: {}", failed.len(), failed[0]));
    }
    while set.join_next().await.is_some() {}
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// Row 2: connect rate

fn tls_client(certs: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let ca = certs.join("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots.add(c.map_err(|e| format!("{}: {e}", ca.display()))?).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connect is a full handshake, as it is for a fleet of distinct devices.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// TCP connect, (TLS), CONNECT, CONNACK, DISCONNECT, and the broker's close.
async fn connect_cycle(port: u16, tls: Option<&Arc<rustls::ClientConfig>>, id: &str) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => connect_disconnect(tcp, id).await,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let s = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            connect_disconnect(s, id).await
        }
    }
}

async fn connect_disconnect<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, id: &str) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(256);
    mqtt_handshake(&mut s, &mut buf, id, 60, Mqtt::V311).await?;
    s.write_all(&encode(&Packet::Disconnect)).await.map_err(|e| format!("DISCONNECT: {e}"))?;
    s.flush().await.map_err(|e| format!("DISCONNECT: {e}"))?;
    // The broker closes first (MQTT-3.14.4-1), so this side keeps no TIME_WAIT port.
    let mut rest = [0u8; 64];
    loop {
        match s.read(&mut rest).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// Connect cycles per second with `workers` clients looping at once.
async fn connect_rate(
    broker: &Broker,
    workers: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
    plan: &Plan,
) -> Result<Measured, String> {
    let port = if tls.is_some() { broker.tls_port } else { broker.port };
    let prefix = fresh_prefix("conn");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut set = JoinSet::new();
    for w in 0..workers {
        let (stop, done, errors, first_error, tls) =
            (stop.clone(), done.clone(), errors.clone(), first_error.clone(), tls.clone());
        let prefix = prefix.clone();
        set.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("{prefix}-{w}-{n}");
                let r = tokio::time::timeout(STEP, connect_cycle(port, tls.as_ref(), &id)).await;
                match r.unwrap_or_else(|_| Err("connect cycle took over 5 s".into())) {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert(e);
                        }
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    tokio::time::sleep(plan.warmup).await;
    let (c0, e0, t0) = (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(plan.window).await;
    let (c1, e1, t1) = (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    if tokio::time::timeout(STEP * 2, async { while set.join_next().await.is_some() {} }).await.is_err() {
        set.abort_all();
    }
    let first = first_error.lock().ok().and_then(|f| f.clone()).unwrap_or_default();
    if c1 == c0 {
        let failed = if e1 > e0 { format!("{} failed in it", e1 - e0) } else { "none finished in it".into() };
        return Err(format!("no connect cycle completed in the window ({failed}); first error: {first}"));
    }
    let mut m = Measured::new((c1 - c0) as f64 / (t1 - t0).as_secs_f64());
    if e1 > e0 {
        m.notes.push(format!("{} cycles failed in the window, first: {first}", e1 - e0));
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// Row 3: memory per idle connection

/// The broker's RSS growth per idle connected client, in KiB.
async fn idle_memory(broker: &Broker, plan: &Plan) -> Result<Measured, String> {
    let pid = broker.pid();
    // A few connections first, so what is allocated once (buffers, worker threads) is
    // in the baseline rather than spread over the clients.
    drop(connect_many(broker.port, &fresh_prefix("warm"), 20, Mqtt::V311).await?);
    settle(broker).await?;
    let before = stable_rss(pid).await.ok_or("cannot read VmRSS")?;
    let clients = connect_many(broker.port, &fresh_prefix("idle"), plan.idle_clients, Mqtt::V311).await?;
    settle(broker).await?;
    let after = stable_rss(pid).await.ok_or("cannot read VmRSS")?;
    broker.alive()?;
    drop(clients);
    let mut m = Measured::new(after.saturating_sub(before) as f64 / plan.idle_clients as f64);
    m.detail = Some(format!("VmRSS {before} KiB -> {after} KiB"));
    Ok(m)
}

/// VmRSS once two readings 300 ms apart agree within 0.5%.
async fn stable_rss(pid: u32) -> Option<u64> {
    let mut last = rss_kib(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = rss_kib(pid)?;
        if now.abs_diff(last) * 200 <= last {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

// ---------------------------------------------------------------------------------------
// Rows and the report

#[derive(Clone)]
enum Kind {
    Throughput { publishers: usize, qos: QoS, mqtt: Mqtt },
    Connect { workers: usize, tls: bool },
    IdleMemory,
}

struct Measured {
    value: f64,
    /// Printed while running, not in the table.
    detail: Option<String>,
    /// QoS 1 throughput rows: messages per second the broker acknowledged to the publishers.
    acked: Option<f64>,
    /// Listed under the table.
    notes: Vec<String>,
}

impl Measured {
    fn new(value: f64) -> Self {
        Measured { value, detail: None, acked: None, notes: Vec::new() }
    }
}

struct Row {
    name: String,
    kind: Kind,
    mosquitto: Result<Measured, String>,
    ours: Result<Measured, String>,
}

fn rows(plan: &Plan) -> Vec<(String, Kind)> {
    let mut rows =
        vec![(format!("memory per idle plain connection, {} clients (KiB)", plan.idle_clients), Kind::IdleMemory)];
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        for publishers in [1, 100, 1000] {
            let q = qos as u8;
            rows.push((
                format!("publish {publishers} → 1, QoS {q}, 64 B (msg/s)"),
                Kind::Throughput { publishers, qos, mqtt: Mqtt::V311 },
            ));
            // MQTT 5 next to its 3.1.1 row: the fan-in of 100 (issue 20).
            if publishers == 100 {
                let mqtt = Mqtt::V5;
                rows.push((
                    format!("publish {publishers} → 1, QoS {q}, 64 B{} (msg/s)", mqtt.label()),
                    Kind::Throughput { publishers, qos, mqtt },
                ));
            }
        }
    }
    for tls in [false, true] {
        for workers in [1, CONNECT_WORKERS] {
            let how =
                if workers == 1 { "1 client at a time".to_string() } else { format!("{workers} clients at once") };
            let name = format!("connect {}, {how} (conn/s)", if tls { "TLS" } else { "plain" });
            rows.push((name, Kind::Connect { workers, tls }));
        }
    }
    rows.retain(|(name, _)| plan.filters.is_empty() || plan.filters.iter().any(|f| name.contains(f.as_str())));
    rows
}

/// One cell: `broker` measured for `kind`, with every broker in `all` idle first.
async fn measure(
    broker: Result<&Broker, &str>,
    all: &[&Broker],
    kind: &Kind,
    plan: &Plan,
    tls: &Result<Arc<rustls::ClientConfig>, String>,
) -> Result<Measured, String> {
    let broker = broker.map_err(str::to_string)?;
    broker.alive()?;
    // The brokers share the cores: one still busy with an earlier row would slow this one.
    let mut busy = Vec::new();
    for b in all {
        if let Err(e) = settle(b).await {
            busy.push(format!("measured while {} was {e}", b.name));
        }
    }
    let budget = plan.warmup + plan.window + Duration::from_secs(90);
    let run = async {
        match kind {
            Kind::Throughput { publishers, qos, mqtt } => throughput(broker, *publishers, *qos, *mqtt, plan).await,
            Kind::Connect { workers, tls: false } => connect_rate(broker, *workers, None, plan).await,
            Kind::Connect { workers, tls: true } => connect_rate(broker, *workers, Some(tls.clone()?), plan).await,
            Kind::IdleMemory => idle_memory(broker, plan).await,
        }
    };
    let mut result = tokio::time::timeout(budget, run)
        .await
        .unwrap_or_else(|_| Err(format!("did not finish within {} s", budget.as_secs())));
    if let Err(e) = &mut result {
        if let Err(dead) = broker.alive() {
            *e = format!("{e}; {dead}");
        }
    }
    // Let it finish closing this row's connections before the next row starts.
    if let Err(e) = settle(broker).await {
        busy.push(format!("after this row {} was {e}", broker.name));
    }
    for b in busy {
        eprintln!("broker bench: WARNING: {b}");
        match &mut result {
            Ok(m) => m.notes.push(b),
            Err(r) => *r = format!("{r}; {b}"),
        }
    }
    result
}

fn cell(r: &Result<Measured, String>, kind: &Kind) -> String {
    match r {
        Ok(m) if matches!(kind, Kind::IdleMemory) => format!("{:.2}", m.value),
        Ok(m) => format!("{:.0}", m.value),
        Err(e) => format!("failed: {}", e.replace('|', "/")),
    }
}

/// ours/Mosquitto for rates, Mosquitto/ours for memory: above 1 is better for us.
fn ratio(row: &Row) -> Option<f64> {
    let (Ok(m), Ok(o)) = (&row.mosquitto, &row.ours) else { return None };
    let r = if matches!(row.kind, Kind::IdleMemory) { m.value / o.value } else { o.value / m.value };
    r.is_finite().then_some(r)
}

fn target(row: &Row) -> String {
    match (&row.kind, &row.ours) {
        (Kind::IdleMemory, Ok(o)) => format!("≤ 4 KiB: {}", if o.value <= 4.0 { "met" } else { "MISSED" }),
        (Kind::IdleMemory, Err(_)) => "≤ 4 KiB".into(),
        (_, _) => match ratio(row) {
            Some(r) => format!("≥ Mosquitto: {}", if r >= 1.0 { "met" } else { "MISSED" }),
            None => "≥ Mosquitto".into(),
        },
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from("| row | Mosquitto | tasmota-sim | ratio | target |\n|---|---:|---:|---:|---|\n");
    for r in rows {
        let ratio = ratio(r).map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into());
        let _ = writeln!(
            t,
            "| {} | {} | {} | {ratio} | {} |",
            r.name,
            cell(&r.mosquitto, &r.kind),
            cell(&r.ours, &r.kind),
            target(r)
        );
    }
    let acked = |r: &Result<Measured, String>| r.as_ref().ok().and_then(|m| m.acked);
    let acked_rows: Vec<&Row> = rows.iter().filter(|r| acked(&r.mosquitto).or(acked(&r.ours)).is_some()).collect();
    if !acked_rows.is_empty() {
        t.push_str(
            "\nThe QoS 1 rows from the publishers' side: messages per second the broker acknowledged \
             (PUBACK). Both brokers give the one subscriber 20 messages in flight and a bounded \
             queue (Mosquitto: `max_queued_messages` 1000) and drop what overflows it, so with \
             many publishers most of what they publish never reaches the subscriber.\n\n\
             | row | Mosquitto | tasmota-sim | ratio |\n|---|---:|---:|---:|\n",
        );
        for r in acked_rows {
            let (m, o) = (acked(&r.mosquitto), acked(&r.ours));
            let show = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
            let ratio = match (m, o) {
                (Some(m), Some(o)) if m > 0.0 => format!("{:.2}", o / m),
                _ => "–".into(),
            };
            let name = r.name.replace(" (msg/s)", ", acknowledged (msg/s)");
            let _ = writeln!(t, "| {name} | {} | {} | {ratio} |", show(m), show(o));
        }
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let m = r.mosquitto.as_ref().map(|m| m.notes.clone()).unwrap_or_default();
            let o = r.ours.as_ref().map(|m| m.notes.clone()).unwrap_or_default();
            let m = m.into_iter().map(move |n| (r.name.clone(), "Mosquitto", n));
            let o = o.into_iter().map(move |n| (r.name.clone(), "tasmota-sim", n));
            m.chain(o).collect::<Vec<_>>()
        })
        .map(|(row, who, n)| format!("- {row}, {who}: {n}\n"))
        .collect();
    if !notes.is_empty() {
        t.push_str("\nNotes:\n\n");
        notes.iter().for_each(|n| t.push_str(n));
    }
    t
}

fn machine() -> String {
    let (cpu, _) = common::cpu();
    let nproc = shell("nproc", &[]).unwrap_or_else(|| "?".into());
    let kernel = shell("uname", &["-r"]).unwrap_or_else(|| "?".into());
    format!("nproc {nproc}, {cpu}, Linux {kernel}")
}

fn section(command: &str, plan: &Plan, mosquitto: &str, table: &str) -> String {
    let date = shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown date".into());
    let commit =
        shell("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]).unwrap_or_default();
    format!(
        "{BEGIN}\n## Embedded broker vs Mosquitto\n\n\
         `{command}` on {date}, tasmota-sim {} {commit}, {mosquitto}.\n\
         Machine: {}.\n\n\
         Both brokers run on loopback in one run; the load comes from the bench process (raw \
         MQTT 3.1.1, or MQTT 5 in the rows that say so, publishers on two tokio workers, the \
         subscriber on its own thread), the same for both. The machine is shared with other \
         builds: absolute numbers move from run to run, the ratio in one run is what counts. Throughput: messages per second received by one subscriber of `bench/ROW/#` \
         (at the publishers' QoS; each row publishes under a fresh `bench/ROW/N` so nothing left \
         over from an earlier row counts) over {} s after {} s of warm-up; QoS 0 publishers write as fast \
         as the broker reads, QoS 1 publishers keep {QOS1_WINDOW} unacknowledged. Connect: TCP \
         connect, CONNECT, CONNACK, DISCONNECT and the broker's close, per second; TLS is a full \
         handshake (no resumption) with the same certificate on both brokers, written by \
         `tasmota-sim broker --tls-self-signed`. Memory: the broker's VmRSS after {} idle clients \
         (keepalive 0) minus before, per client. Ratio: ours/Mosquitto for rates, \
         Mosquitto/ours for memory, so above 1 is better for tasmota-sim. Mosquitto runs with \
         `allow_anonymous true`, `persistence false` and `set_tcp_nodelay true` (its default, \
         false, costs it about 40 ms per TLS handshake in Nagle and delayed-ACK waits: 23 \
         handshakes a second one at a time); tasmota-sim sets TCP_NODELAY itself. Both are \
         measured only once every broker is idle again after the previous row.\n\n{table}{END}\n",
        env!("CARGO_PKG_VERSION"),
        machine(),
        plan.window.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        plan.idle_clients,
    )
}

/// Lowers the idle-client count to what the open-file limit allows (this process holds one
/// socket per client, and so does the broker).
fn fit_to_fd_limit(wanted: usize) -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < wanted + 500 => {
            let n = soft.saturating_sub(500).max(100);
            eprintln!("broker bench: the open-file limit is {soft}: {n} idle clients instead of {wanted}");
            n
        }
        _ => wanted,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("broker bench: skipped outside `cargo bench` (run `cargo bench --bench broker [-- --quick]`)");
        return ExitCode::SUCCESS;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let filters: Vec<String> = args.iter().filter(|a| !a.starts_with("--")).cloned().collect();
    let plan = Plan {
        quick,
        warmup: Duration::from_millis(if quick { 500 } else { 1000 }),
        window: Duration::from_secs(if quick { 1 } else { 3 }),
        idle_clients: fit_to_fd_limit(if quick { 1000 } else { 5000 }),
        filters,
    };
    let command = format!(
        "cargo bench --bench broker{}",
        if args.len() > 1 {
            format!(" -- {}", args.iter().filter(|a| *a != "--bench").cloned().collect::<Vec<_>>().join(" "))
        } else {
            String::new()
        }
    );

    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("broker bench: no temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let certs = dir.path().join("certs");
    let ours = start_ours(dir.path(), &certs);
    if let Err(e) = &ours {
        eprintln!("broker bench: tasmota-sim rows FAIL: {e}");
    }
    if !certs.join("server.pem").exists() {
        if let Err(e) = make_certs(&certs) {
            eprintln!("broker bench: no certificates for Mosquitto's TLS listener either: {e}");
        }
    }
    let version = mosquitto_version();
    let mosquitto = match &version {
        None => Err("mosquitto is not installed (apt-get install mosquitto)".to_string()),
        Some(_) => start_mosquitto(dir.path(), &certs),
    };
    if let Err(e) = &mosquitto {
        eprintln!("broker bench: SKIPPING the Mosquitto rows: {e}");
    }
    let tls = tls_client(&certs);

    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("broker bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut results = Vec::new();
    let running: Vec<&Broker> = [&mosquitto, &ours].into_iter().filter_map(|b| b.as_ref().ok()).collect();
    runtime.block_on(async {
        for (name, kind) in rows(&plan) {
            let mut row = Row { name, kind, mosquitto: Err(String::new()), ours: Err(String::new()) };
            eprintln!("{} ...", row.name);
            for who in ["Mosquitto", "tasmota-sim"] {
                let broker = match who {
                    "Mosquitto" => mosquitto.as_ref().map_err(|_| "skipped: Mosquitto did not start"),
                    _ => ours.as_ref().map_err(|_| "tasmota-sim did not start"),
                };
                let r = measure(broker, &running, &row.kind, &plan, &tls).await;
                match &r {
                    Ok(m) => eprintln!(
                        "  {who:<12} {}{}",
                        cell(&r, &row.kind),
                        m.detail.as_ref().map(|d| format!("  ({d})")).unwrap_or_default()
                    ),
                    Err(e) => eprintln!("  {who:<12} FAILED: {e}"),
                }
                if who == "Mosquitto" {
                    row.mosquitto = r;
                } else {
                    row.ours = r;
                }
            }
            results.push(row);
        }
    });
    // Fan-in over WebSockets: rows of their own (benches/websocket), a section of their own.
    let ws_head = format!("`{command}`, {}", version.as_deref().unwrap_or("Mosquitto not installed"));
    let ws_section = websocket::wanted(&plan).then(|| websocket::run(&plan, &runtime, dir.path(), &ws_head));
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(running);
    drop(ours);
    drop(mosquitto);

    let table = table(&results);
    let mosquitto = version.unwrap_or_else(|| "Mosquitto not installed".into());
    let section = section(&command, &plan, &mosquitto, &table);
    println!("\n{section}");
    if let Some(ws) = ws_section.filter(|_| !plan.quick) {
        println!("\n{ws}");
        if let Err(e) = common::write_benchmarks_md(websocket::BEGIN, websocket::END, &ws) {
            eprintln!("broker bench: cannot write BENCHMARKS.md: {e}");
        }
    }
    if plan.quick || !plan.filters.is_empty() {
        eprintln!("broker bench: a quick or filtered run: BENCHMARKS.md left as it was");
    } else {
        match common::write_benchmarks_md(BEGIN, END, &section) {
            Ok(path) => eprintln!("broker bench: wrote {}", path.display()),
            Err(e) => {
                eprintln!("broker bench: cannot write BENCHMARKS.md: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
