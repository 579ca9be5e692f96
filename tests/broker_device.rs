//! The device against the embedded broker, both as the binaries a user runs: the README's
//! AWS IoT light Backlog, over TLS, to the `aws-iot` profile standing in for the endpoint
//! (`--connect-to`, `--ca-file`), with the traffic recorded.

mod common;

use std::time::Duration;

use common::{free_port, BrokerProcess, DeviceProcess, Operator};

const S: Duration = Duration::from_secs(1);
const EP: &str = "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com";
const USER: &str = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";
const PASS: &str = "YknLuSd2tBY2HodwI/7RqA==";
const T: &str = "tasmota_4B3316";

fn aws_broker(dir: &std::path::Path) -> (BrokerProcess, u16, u16) {
    let (plain, tls) = (free_port(), free_port());
    let b = BrokerProcess::start(&[
        "--profile",
        "aws-iot",
        "--listen",
        &format!("127.0.0.1:{plain}"),
        "--tls-listen",
        &format!("127.0.0.1:{tls}"),
        "--tls-self-signed",
        dir.join("certs").to_str().unwrap(),
        "--authorizer",
        &format!("TasmotaAuth:{PASS}"),
        "--record",
        dir.join("traffic.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(b.listening, [format!("mqtt://127.0.0.1:{plain}"), format!("mqtts://127.0.0.1:{tls}")]);
    (b, plain, tls)
}

fn aws_device(dir: &std::path::Path, tls_port: u16, password: &str) -> DeviceProcess {
    let backlog = format!(
        "BackLog SetOption3 1; SetOption103 1; MqttHost {EP}; MqttPort 443; MqttUser {USER}; MqttPassword {password}"
    );
    DeviceProcess::start(&[
        "--state",
        dir.join("plug").to_str().unwrap(),
        "--cmd",
        &backlog,
        "--ca-file",
        dir.join("certs/ca.pem").to_str().unwrap(),
        "--connect-to",
        &format!("{EP}:443:127.0.0.1:{tls_port}"),
    ])
}

#[test]
fn the_aws_iot_light_backlog_connects_to_the_aws_profile() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, plain, tls) = aws_broker(dir.path());
    let op = Operator::connect(plain, Some((USER, PASS)), "#");
    let mut dev = aws_device(dir.path(), tls, PASS);
    dev.expect_line("APP: Restarting", 5 * S);
    dev.expect_line("MQT: Attempting connection...", 6 * S);
    dev.expect("TLS connected", 10 * S, |t| t.starts_with("MQT: TLS connected in "));
    dev.expect_line("MQT: Connected", 5 * S);
    // SO104 (forced on AWS): the LWT is not retained, so the broker keeps the link.
    let lwt = op.expect(&format!("tele/{T}/LWT"), 5 * S);
    assert_eq!((lwt.payload.as_str(), lwt.retain), ("Online", false));
    // The relay state after the first connection, then a command from the cloud side.
    assert_eq!(op.expect(&format!("stat/{T}/POWER"), 5 * S).payload, "OFF");
    op.publish(&format!("cmnd/{T}/POWER"), "ON");
    let power = op.expect(&format!("stat/{T}/POWER"), 5 * S);
    assert_eq!(power.payload, "ON");
    dev.power_off();

    let record = std::fs::read_to_string(dir.path().join("traffic.jsonl")).unwrap();
    assert!(!record.contains(PASS), "the password reached the recording");
    let connect = record.lines().find(|l| l.contains("\"kind\":\"CONNECT\"") && l.contains("DVES_")).unwrap();
    assert!(connect.contains(&format!("\"username\":\"{}\"", USER)), "{connect}");
    assert!(connect.contains("\"password\":\"<redacted>\""), "{connect}");
    assert!(record.contains("sni a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com, alpn mqtt"), "{record}");
}

#[test]
fn a_wrong_password_gets_no_connack() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _plain, tls) = aws_broker(dir.path());
    let mut dev = aws_device(dir.path(), tls, "wrong-password");
    dev.expect_line("MQT: Attempting connection...", 10 * S);
    let failed = dev.expect("Connect failed", 10 * S, |t| t.starts_with("MQT: Connect failed"));
    assert_eq!(failed, format!("MQT: Connect failed to {EP}:443, rc -4. Retry in 10 sec"));
    let record = std::fs::read_to_string(dir.path().join("traffic.jsonl")).unwrap();
    assert!(record.contains("custom authorizer: TasmotaAuth denied iot:Connect (wrong password)"), "{record}");
    assert!(!record.contains("\"kind\":\"CONNACK\""), "{record}");
    assert!(!record.contains("wrong-password"));
}
