//! `tasmota-sim broker` in the foreground: the Mosquitto-style lines it prints on stderr
//! (connects, refusals, disconnects, wills; `-v`, `-q`; never a password), and the flags it
//! refuses because they could not act (exit 2). Runs the binary on loopback ports.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::packets::{connect, with_will, Peer};
use common::BIN;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};
use rumqttc::mqttbytes::QoS;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// The broker with stdout read up to its listener line and stderr collected line by line.
struct Logged {
    child: Child,
    port: u16,
    stderr: Receiver<String>,
    seen: Vec<String>,
}

impl Logged {
    fn start(args: &[&str]) -> Logged {
        let mut child = Command::new(BIN)
            .args(["broker", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tasmota-sim broker");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .strip_prefix("listening on mqtt://127.0.0.1:")
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no listener line: {line:?}"));
        let stderr = common::read_lines(child.stderr.take().unwrap());
        Logged { child, port, stderr, seen: Vec::new() }
    }

    async fn client(&self) -> (Peer<TcpStream>, String) {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let me = tcp.local_addr().unwrap().to_string();
        (Peer::new(tcp), me)
    }

    /// Waits for `line` (without its `SECONDS: ` timestamp), keeping every line read.
    fn expect(&mut self, line: &str) {
        if self.seen.iter().any(|l| l == line) {
            return;
        }
        loop {
            let raw = self.stderr.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no {line:?} in {:#?}", self.seen));
            let (secs, text) = raw.split_once(": ").unwrap_or_else(|| panic!("no timestamp: {raw:?}"));
            assert!(secs.parse::<u64>().is_ok_and(|s| s > 1_600_000_000), "{raw:?}");
            self.seen.push(text.to_string());
            if text == line {
                return;
            }
        }
    }

    /// Stops the broker and returns everything it printed on stderr.
    fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        self.seen
    }
}

#[tokio::test]
async fn plain_logs_connects_refusals_disconnects_and_wills_like_mosquitto_and_never_a_password() {
    let mut b = Logged::start(&["--user", "DVES_USER:s3cr3t-pw"]);
    let port = b.port;

    let (mut dev, me) = b.client().await;
    let c = with_will(
        connect("DVES_4B3316", Some(("DVES_USER", "s3cr3t-pw")), true, 30),
        "tele/tasmota_4B3316/LWT",
        "Offline",
        QoS::AtLeastOnce,
        true,
    );
    assert_eq!(dev.connect(c).await.unwrap().code, ConnectReturnCode::Success);
    b.expect(&format!("New connection from {me} on port {port}."));
    b.expect(&format!("New client connected from {me} as DVES_4B3316 (p2, c1, k30, u'DVES_USER')."));
    drop(dev);
    b.expect("Client DVES_4B3316 closed its connection.");
    b.expect("Will of client DVES_4B3316 published to 'tele/tasmota_4B3316/LWT'.");

    let (mut bad, me) = b.client().await;
    let c = connect("intruder", Some(("DVES_USER", "wrong-pw-123")), true, 60);
    assert_eq!(bad.connect(c).await.unwrap().code, ConnectReturnCode::NotAuthorized);
    b.expect(&format!("New connection from {me} on port {port}."));
    b.expect("Client intruder disconnected, not authorised.");

    let (mut anon, me) = b.client().await;
    assert_eq!(anon.connect(connect("no-login", None, false, 0)).await.unwrap().code, ConnectReturnCode::NotAuthorized);
    b.expect(&format!("New connection from {me} on port {port}."));
    b.expect("Client no-login disconnected, not authorised.");

    let (mut ok, me) = b.client().await;
    assert!(ok.connect(connect("tidy", Some(("DVES_USER", "s3cr3t-pw")), false, 0)).await.is_ok());
    ok.send(Packet::Disconnect).await;
    b.expect(&format!("New client connected from {me} as tidy (p2, c0, k0, u'DVES_USER')."));
    b.expect("Client tidy disconnected.");

    let all = b.finish().join("\n");
    assert!(!all.contains("s3cr3t-pw") && !all.contains("wrong-pw-123"), "a password in the log:\n{all}");
    // Only the lines above: nothing at debug level without -v.
    assert!(!all.contains("Sending CONNACK") && !all.contains("Will message specified"), "{all}");
}

#[tokio::test]
async fn verbose_adds_wills_and_packets_and_quiet_prints_nothing() {
    let mut b = Logged::start(&["-v"]);
    let (mut dev, _) = b.client().await;
    let c = with_will(connect("DVES_4B3316", None, true, 30), "tele/t/LWT", "Offline", QoS::AtLeastOnce, true);
    assert!(dev.connect(c).await.is_ok());
    dev.publish("tele/t/STATE", "{}", QoS::AtMostOnce, false, 0).await;
    dev.send(Packet::PingReq).await;
    assert_eq!(dev.expect(WAIT).await, Packet::PingResp);
    b.expect("Will message specified (7 bytes) (r1, q1).");
    b.expect("\ttele/t/LWT");
    b.expect("Sending CONNACK to DVES_4B3316 (0, 0)");
    b.expect("Received PUBLISH from DVES_4B3316 (d0, q0, r0, m0, 'tele/t/STATE', ... (2 bytes))");
    b.expect("Received PINGREQ from DVES_4B3316");
    b.expect("Sending PINGRESP to DVES_4B3316");
    b.finish();

    let b = Logged::start(&["-q"]);
    let (mut dev, _) = b.client().await;
    assert!(dev.connect(connect("DVES_4B3316", None, true, 30)).await.is_ok());
    dev.send(Packet::Disconnect).await;
    dev.expect_closed(WAIT).await;
    assert_eq!(b.finish(), Vec::<String>::new());
}

#[tokio::test]
async fn an_aws_iot_refusal_says_why_and_keeps_the_secret() {
    let secret = "YknLuSd2tBY2HodwI/7RqA==";
    let authorizer = format!("TasmotaAuth:{secret}");
    let mut b = Logged::start(&["--profile", "aws-iot", "--authorizer", &authorizer]);
    let (mut dev, _) = b.client().await;
    let user = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";
    dev.send(Packet::Connect(connect("DVES_4B3316", Some((user, "not-the-secret")), true, 30))).await;
    dev.expect_closed(WAIT).await;
    b.expect("Client DVES_4B3316 disconnected, not authorised: TasmotaAuth denied iot:Connect (wrong password).");

    // Another id: AWS takes one CONNECT per second per client id.
    let (mut dev, me) = b.client().await;
    assert!(dev.connect(connect("DVES_000001", Some((user, secret)), true, 30)).await.is_ok());
    b.expect(&format!("New client connected from {me} as DVES_000001 (p2, c1, k30, u'{user}')."));
    let all = b.finish().join("\n");
    assert!(!all.contains(secret) && !all.contains("not-the-secret"), "a password in the log:\n{all}");
}

fn broker(args: &[&str]) -> Output {
    Command::new(BIN).arg("broker").args(args).output().expect("run tasmota-sim broker")
}

#[test]
fn flags_that_cannot_act_exit_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().to_str().unwrap();
    for (args, reason) in [
        (
            &["--profile", "plain", "--limit", "topic-bytes=10"][..],
            "--limit: the limits are AWS IoT Core's quotas; only --profile aws-iot has them",
        ),
        (&["--allow-retain"][..], "--allow-retain: plain always accepts retained messages; only aws-iot refuses them"),
        (&["--endpoint", "example.com"][..], "--endpoint: only --profile aws-iot serves a data endpoint"),
        (
            &["--authorizer", "TasmotaAuth:x"][..],
            "--authorizer/--default-authorizer: custom authorizers are AWS IoT's; use --profile aws-iot (plain checks --user)",
        ),
        (
            &["--profile", "aws-iot", "--user", "bob:secret"][..],
            "--user: aws-iot does not read a password list; it signs in with --authorizer (custom auth) or client certificates",
        ),
        (
            &["--profile", "aws-iot", "--authorizer", "A:x", "--default-authorizer", "B"][..],
            "--default-authorizer B: no --authorizer has that name",
        ),
        (
            &["--tls-self-signed", certs][..],
            "--tls-self-signed/--cert: no TLS listener to use them; add --tls-listen, --mtls-listen or --wss-listen",
        ),
        (
            &["--fault", "tls-alert"][..],
            "--fault tls-alert: it acts in the TLS handshake; add --tls-listen, --mtls-listen or --wss-listen",
        ),
        (
            &["--listen", "no-such-host.invalid:1883"][..],
            "--listen 'no-such-host.invalid:1883': ",
        ),
    ] {
        let o = broker(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with(&format!("tasmota-sim: {reason}")), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} listened");
    }
    // The secret of a refused --user never shows either.
    let o = broker(&["--user", "bob"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_tls_only_broker_binds_only_its_tls_port_and_listen_takes_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().to_str().unwrap();
    let mut child = Command::new(BIN)
        .args(["broker", "--tls-listen", "localhost:0", "--tls-self-signed", certs, "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let mut printed = Vec::new();
    for l in lines.by_ref() {
        let done = l.starts_with("CA for clients: ");
        printed.push(l);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(printed.len(), 2, "{printed:#?}");
    assert!(printed[0].starts_with("listening on mqtts://"), "{printed:#?}");
    assert!(printed[0].ends_with(" (profile plain)"), "{printed:#?}");
    assert!(!printed.iter().any(|l| l.starts_with("listening on mqtt://")), "{printed:#?}");

    let mut child = Command::new(BIN)
        .args(["broker", "--listen", "localhost:0", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.starts_with("listening on mqtt://"), "{first}");
}
