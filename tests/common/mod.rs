//! Helpers shared by the integration tests: the device binary as a child process,
//! Mosquitto started on a free loopback port, an operator MQTT client (rumqttc), and a
//! test CA made at test time.
#![allow(dead_code)]

pub mod packets;
pub mod packets_v5;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tasmota-sim");

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether a test that needs `program` runs: yes if it is installed; if not, the test
/// says it skipped, unless `CI=true`, where a missing program fails the test.
///
/// The SKIPPED line goes straight to the process's stderr: libtest captures only what
/// `print!`/`eprint!` write, and shows it only for failing tests, so an `eprintln!` here
/// would hide the skip behind a plain `ok`.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{program} is not installed and CI=true: .ci/run must install it");
        }
        let test = std::thread::current().name().unwrap_or("a test").to_string();
        let line = format!("\nSKIPPED {test}: {program} not found (apt-get install mosquitto mosquitto-clients)\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
    found
}

/// Starts `cmd` with stdout read line by line on a thread (stderr passes through).
fn spawn_with_lines(cmd: &mut Command) -> (Child, Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start tasmota-sim");
    let stdout = child.stdout.take().unwrap();
    (child, read_lines(stdout))
}

/// Reads `from` line by line on a thread (a child's stdout or stderr).
pub fn read_lines(from: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The device binary, its console read line by line.
pub struct DeviceProcess {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl DeviceProcess {
    pub fn start(args: &[&str]) -> DeviceProcess {
        let (child, rx) = spawn_with_lines(Command::new(BIN).arg("device").args(args).stdin(Stdio::piped()));
        DeviceProcess { child, lines: rx, seen: vec![] }
    }

    /// Waits for a console line whose text (after the timestamp) satisfies `pred`.
    pub fn expect(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let text = line.get(13..).unwrap_or("");
                    if pred(text) {
                        return text.to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!("no console line {what} within {timeout:?}; console so far:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Waits for a console line whose text is exactly `text`.
    pub fn expect_line(&mut self, text: &str, timeout: Duration) {
        self.expect(&format!("{text:?}"), timeout, |t| t == text);
    }

    /// Every console line printed from now until `dur` passes.
    pub fn lines_for(&mut self, dur: Duration) -> Vec<String> {
        let deadline = Instant::now() + dur;
        let mut out = vec![];
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line.clone());
            out.push(line.get(13..).unwrap_or("").to_string());
        }
        out
    }

    /// SIGTERM: the device loses power.
    pub fn power_off(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Mosquitto broker on a free loopback port, with a config the test wrote.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts `mosquitto -c <dir>/mosquitto.conf` with `listener <port> 127.0.0.1` and
    /// the given extra lines.
    pub fn start(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\n{extra}\n")).unwrap();
        let mut m = Mosquitto { child: None, port, conf };
        m.restart();
        m
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a Mosquitto password file with one user.
pub fn password_file(dir: &Path, user: &str, pass: &str) -> PathBuf {
    let path = dir.join("passwd");
    let ok = Command::new("mosquitto_passwd").arg("-b").arg("-c").arg(&path).args([user, pass]).status().unwrap();
    assert!(ok.success(), "mosquitto_passwd failed");
    path
}

/// A message the operator saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// An operator's MQTT client (rumqttc), subscribed to `filter`.
pub struct Operator {
    pub client: rumqttc::Client,
    rx: Receiver<Seen>,
}

impl Operator {
    pub fn connect(port: u16, login: Option<(&str, &str)>, filter: &str) -> Operator {
        let mut opts = rumqttc::MqttOptions::new(format!("operator-{}", free_port()), "127.0.0.1", port);
        if let Some((u, p)) = login {
            opts.set_credentials(u, p);
        }
        Operator::with_options(opts, filter)
    }

    /// The same over MQTT over WebSocket, to `ws://127.0.0.1:PORT/mqtt` (rumqttc sends the
    /// subprotocol `mqtt` and refuses an answer without it).
    pub fn connect_ws(port: u16, filter: &str) -> Operator {
        let url = format!("ws://127.0.0.1:{port}/mqtt");
        let mut opts = rumqttc::MqttOptions::new(format!("ws-operator-{}", free_port()), url, port);
        opts.set_transport(rumqttc::Transport::Ws);
        Operator::with_options(opts, filter)
    }

    fn with_options(mut opts: rumqttc::MqttOptions, filter: &str) -> Operator {
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = rumqttc::Client::new(opts, 64);
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let seen = Seen {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        client.subscribe(filter, rumqttc::QoS::AtMostOnce).unwrap();
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("operator subscribed");
        Operator { client, rx }
    }

    /// Waits for a message on `topic`.
    pub fn expect(&self, topic: &str, timeout: Duration) -> Seen {
        let deadline = Instant::now() + timeout;
        let mut other = vec![];
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(seen) if seen.topic == topic => return seen,
                Ok(seen) => other.push(seen),
                Err(_) => panic!("no message on {topic} within {timeout:?}; seen: {other:?}"),
            }
        }
    }

    pub fn publish(&self, topic: &str, payload: &str) {
        self.client.publish(topic, rumqttc::QoS::AtMostOnce, false, payload.as_bytes().to_vec()).unwrap();
    }
}

/// A test CA and a server certificate for `names`, RSA 2048 as the firmware needs
/// (ECDHE-RSA only), written as PEM files into `dir`: `ca.pem`, `server.pem`,
/// `server.key`.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn test_ca(dir: &Path, names: &[&str]) -> TestCa {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let mut rng = rand_core_os();
    let rsa_key = |rng: &mut _| {
        let key = rsa::RsaPrivateKey::new(rng, 2048).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        (der.as_bytes().to_vec(), pem)
    };
    let (ca_der, _) = rsa_key(&mut rng);
    let ca_key = rcgen::KeyPair::try_from(ca_der.as_slice()).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "tasmota-sim test CA");
    let ca_cert = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let (srv_der, srv_pem) = rsa_key(&mut rng);
    let srv_key = rcgen::KeyPair::try_from(srv_der.as_slice()).unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let srv_params = rcgen::CertificateParams::new(names).unwrap();
    let srv_cert = srv_params.signed_by(&srv_key, &ca_cert).unwrap();
    let ca = dir.join("ca.pem");
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&cert, srv_cert.pem()).unwrap();
    std::fs::write(&key, srv_pem).unwrap();
    TestCa { ca, cert, key, cert_der: srv_cert.der().to_vec(), key_der: srv_der }
}

fn rand_core_os() -> rsa::rand_core::OsRng {
    rsa::rand_core::OsRng
}

/// The embedded broker as a child process (`tasmota-sim broker ...`), ready once it has
/// printed a `listening on` line per listener; killed on drop.
pub struct BrokerProcess {
    child: Child,
    /// `mqtt://127.0.0.1:PORT`-style addresses, in the order printed.
    pub listening: Vec<String>,
}

impl BrokerProcess {
    pub fn start(args: &[&str]) -> BrokerProcess {
        // -q: its connection log would fill the test output (tests/broker_log.rs reads it).
        let (child, rx) = spawn_with_lines(Command::new(BIN).args(["broker", "-q"]).args(args));
        let expected = args.iter().filter(|a| a.ends_with("listen")).count();
        let mut listening = vec![];
        while listening.len() < expected {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        listening.push(rest.split(' ').next().unwrap_or("").to_string());
                    }
                }
                Err(_) => panic!("the broker did not print its listeners; got {listening:?}"),
            }
        }
        BrokerProcess { child, listening }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on 127.0.0.1:`port` with a raw HTTP/1.1 request; the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}
