//! Real clients against the binary's broker on loopback: AWS's IoT Device SDK v2 for
//! Python (awsiotsdk) through its custom-authorizer builders (direct TLS with ALPN `mqtt`,
//! and WSS), with its MQTT 3.1.1 client and its MQTT 5 client; and paho-mqtt over
//! WebSockets (`--ws-listen`, `--wss-listen`). The scripts are tests/py/*.py; they print
//! one line per step and these tests assert the lines.
//!
//! Python: `$TASMOTA_SIM_PYTHON`, else target/py-venv/bin/python (made by .ci/run with
//! the pinned packages). Without it a test prints SKIPPED and passes, unless CI=true.
//!
//! The broker serves the endpoint `localhost`: the SDK sends its endpoint as SNI and
//! custom auth needs the SNI to be the endpoint; localhost reaches 127.0.0.1 (the CRT
//! tries IPv6 and IPv4 and keeps the first that connects; nothing listens on ::1).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::BrokerProcess;

const PASS: &str = "YknLuSd2tBY2HodwI/7RqA==";
const ENDPOINT: &str = "localhost";

/// The venv's Python with awsiotsdk and paho-mqtt, or `None` (SKIPPED) when missing.
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TASMOTA_SIM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python"));
    let usable = Command::new(&path)
        .args(["-c", "import awsiot, awscrt, paho.mqtt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Some(path);
    }
    let why = format!("{} cannot import awsiot and paho.mqtt", path.display());
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} and CI=true: .ci/run makes target/py-venv");
    }
    // Straight to stderr, past libtest's capture (see common::have).
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let line = format!(
        "\nSKIPPED {test}: {why} (python3 -m venv target/py-venv && target/py-venv/bin/pip install \
         awsiotsdk==1.31.0 paho-mqtt==2.1.0, or set TASMOTA_SIM_PYTHON)\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    None
}

/// Runs tests/py/`script` with `args`; its stdout lines (the steps). Killed after 90 s.
fn run(python: &Path, script: &str, args: &[&str]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py").join(script);
    let mut child = Command::new(python)
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("wait for python").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("python's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script:?} {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// The aws-iot broker with TLS (ALPN-routed), WSS and WS listeners on free ports.
struct Aws {
    _broker: BrokerProcess,
    dir: tempfile::TempDir,
    tls: String,
    wss: String,
    ws: String,
}

fn port_of(listening: &[String], scheme: &str) -> String {
    let l = listening.iter().find(|l| l.starts_with(scheme)).expect("listener printed");
    l.trim_end_matches("/mqtt").rsplit(':').next().unwrap().to_string()
}

fn broker(profile: &str) -> Aws {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let auth = format!("TasmotaAuth:{PASS}");
    let mut args = vec!["--profile", profile, "--tls-listen", "127.0.0.1:0", "--wss-listen", "127.0.0.1:0"];
    args.extend(["--ws-listen", "127.0.0.1:0", "--tls-self-signed", certs.to_str().unwrap()]);
    if profile == "aws-iot" {
        args.extend(["--endpoint", ENDPOINT, "--authorizer", &auth]);
    }
    let b = BrokerProcess::start(&args);
    let (tls, wss, ws) =
        (port_of(&b.listening, "mqtts://"), port_of(&b.listening, "wss://"), port_of(&b.listening, "ws://"));
    Aws { _broker: b, dir, tls, wss, ws }
}

impl Aws {
    fn ca(&self) -> String {
        self.dir.path().join("certs/ca.pem").to_str().unwrap().to_string()
    }

    /// tests/py/aws_sdk.py with this client and transport, as `client_id`.
    fn sdk(&self, py: &Path, client: &str, transport: &str, password: &str, client_id: &str) -> Vec<String> {
        let port = if transport == "direct" { &self.tls } else { &self.wss };
        let ca = self.ca();
        let args = ["--client", client, "--transport", transport, "--endpoint", ENDPOINT, "--port", port];
        let mut args = args.to_vec();
        args.extend(["--ca", &ca, "--authorizer", "TasmotaAuth", "--password", password, "--client-id", client_id]);
        run(py, "aws_sdk.py", &args)
    }
}

fn pubsub_lines(client: &str, transport: &str) -> Vec<String> {
    vec![
        "CONNECTED".to_string(),
        "SUBSCRIBED 1".to_string(),
        format!("RECEIVED sdk/{client}/{transport}/hello hello from awsiotsdk"),
        "STOPPED".to_string(),
    ]
}

/// The MQTT 3.1.1 client: AWS closes the link with no CONNACK on a refused custom auth
/// (spec/aws-iot.md section 2); the CRT reports the hang-up (direct) or the closed socket
/// under the WebSocket (WSS), never a CONNACK return code.
fn assert_closed_without_connack(lines: &[String]) {
    assert!(
        lines == ["REFUSED AWS_ERROR_MQTT_UNEXPECTED_HANGUP"] || lines == ["REFUSED AWS_IO_SOCKET_CLOSED"],
        "{lines:?}"
    );
}

#[test]
fn sdk_mqtt3_direct_custom_authorizer() {
    let Some(py) = python() else { return };
    let b = broker("aws-iot");
    assert_eq!(b.sdk(&py, "mqtt3", "direct", PASS, "sdk3-direct"), pubsub_lines("mqtt3", "direct"));
    assert_closed_without_connack(&b.sdk(&py, "mqtt3", "direct", "wrong", "sdk3-direct-wrong"));
}

#[test]
fn sdk_mqtt3_wss_custom_authorizer() {
    let Some(py) = python() else { return };
    let b = broker("aws-iot");
    assert_eq!(b.sdk(&py, "mqtt3", "wss", PASS, "sdk3-wss"), pubsub_lines("mqtt3", "wss"));
    assert_closed_without_connack(&b.sdk(&py, "mqtt3", "wss", "wrong", "sdk3-wss-wrong"));
}

/// The SDK's MQTT 5 client through the custom authorizer, direct TLS with ALPN `mqtt`. A
/// wrong password gets CONNACK 0x87 Not authorized: 0x87 is among the CONNACK reason codes
/// AWS lists (docs.aws.amazon.com/iot/latest/developerguide/mqtt.html#mqtt5-reason-codes);
/// which code a custom authorizer's Deny gives is not documented, 0x87 is our choice.
#[test]
fn sdk_mqtt5_direct_custom_authorizer() {
    let Some(py) = python() else { return };
    let b = broker("aws-iot");
    assert_eq!(b.sdk(&py, "mqtt5", "direct", PASS, "sdk5-direct"), pubsub_lines("mqtt5", "direct"));
    let refused = b.sdk(&py, "mqtt5", "direct", "wrong", "sdk5-direct-wrong");
    assert!(refused.len() == 1 && refused[0].ends_with("connack=NOT_AUTHORIZED"), "{refused:?}");
}

/// As [`sdk_mqtt5_direct_custom_authorizer`], over WSS.
#[test]
fn sdk_mqtt5_wss_custom_authorizer() {
    let Some(py) = python() else { return };
    let b = broker("aws-iot");
    assert_eq!(b.sdk(&py, "mqtt5", "wss", PASS, "sdk5-wss"), pubsub_lines("mqtt5", "wss"));
    let refused = b.sdk(&py, "mqtt5", "wss", "wrong", "sdk5-wss-wrong");
    assert!(refused.len() == 1 && refused[0].ends_with("connack=NOT_AUTHORIZED"), "{refused:?}");
}

fn paho_lines(topic: &str) -> Vec<String> {
    vec![
        "CONNECTED Success".to_string(),
        "SUBSCRIBED 1".to_string(),
        format!("RECEIVED {topic}/hello hello from paho"),
        "STOPPED".to_string(),
    ]
}

#[test]
fn paho_over_ws_and_wss_on_the_plain_profile() {
    let Some(py) = python() else { return };
    let b = broker("plain");
    let ws = run(&py, "paho_ws.py", &["--port", &b.ws, "--client-id", "paho-ws", "--topic", "paho/ws"]);
    assert_eq!(ws, paho_lines("paho/ws"));
    let ca = b.ca();
    let args = ["--host", "localhost", "--port", &b.wss, "--ca", &ca, "--client-id", "paho-wss", "--topic", "paho/wss"];
    assert_eq!(run(&py, "paho_ws.py", &args), paho_lines("paho/wss"));
    // Another path: HTTP 404, paho gives up on the handshake.
    let args = ["--host", "localhost", "--port", &b.wss, "--ca", &ca, "--path", "/ws"];
    assert_eq!(run(&py, "paho_ws.py", &args), ["REFUSED WebsocketConnectionError: WebSocket handshake error"]);
}

#[test]
fn paho_over_ws_and_wss_with_the_custom_authorizer() {
    let Some(py) = python() else { return };
    let b = broker("aws-iot");
    let ca = b.ca();
    // WS: the authorizer named in the username, as the device names it.
    let user = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";
    let args = ["--port", &b.ws, "--username", user, "--password", PASS, "--client-id", "paho-ws", "--topic", "aws/ws"];
    assert_eq!(run(&py, "paho_ws.py", &args), paho_lines("aws/ws"));
    // WSS: the authorizer named by the upgrade's header, the username a bare user.
    let header = "x-amz-customauthorizer-name=TasmotaAuth";
    let wss = |password: &str, id: &str| {
        let args = ["--host", "localhost", "--port", &b.wss, "--ca", &ca, "--header", header, "--username", "tasmota"];
        let mut args = args.to_vec();
        args.extend(["--password", password, "--client-id", id, "--topic", "aws/wss"]);
        run(&py, "paho_ws.py", &args)
    };
    assert_eq!(wss(PASS, "paho-wss"), paho_lines("aws/wss"));
    // The wrong password: the upgrade succeeds, CONNECT gets no CONNACK, the link closes.
    let refused = wss("wrong", "paho-wss-wrong");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].starts_with("REFUSED closed before CONNACK"), "{refused:?}");
}
