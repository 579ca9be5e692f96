//! The device against a real Mosquitto the test starts on a free loopback port:
//! password auth, LWT, INFO1..3, commands over MQTT, backoff while the broker is down,
//! reconnect and re-subscribe, a wrong password, a TLS listener with a test CA, and the
//! will on power loss. Skips (loudly) without Mosquitto, fails without it when CI=true.

mod common;

use std::time::Duration;

use common::{have, password_file, test_ca, DeviceProcess, Mosquitto, Operator};

const S: Duration = Duration::from_secs(1);
const T: &str = "tasmota_4B3316";

/// Mosquitto on a free port, accepting only `bob` / `secret`.
fn password_broker(dir: &std::path::Path) -> Mosquitto {
    let pw = password_file(dir, "bob", "secret");
    Mosquitto::start(dir, common::free_port(), &format!("allow_anonymous false\npassword_file {}", pw.display()))
}

fn backlog(port: u16, password: &str) -> String {
    format!("Backlog MqttHost 127.0.0.1; MqttPort {port}; MqttUser bob; MqttPassword {password}")
}

/// Its name is the summary `cargo test` shows: without Mosquitto it prints on stderr
/// (past libtest's capture) which tests skipped and why, and fails when CI=true.
#[test]
fn mosquitto_is_installed_or_the_tests_in_this_file_skip() {
    if !have("mosquitto") {
        let names = "connects_with_a_password_and_behaves_like_the_firmware, a_wrong_password_is_refused_and_backs_off, tls_listener_with_a_test_ca";
        let line = format!("\nSKIPPED in tests/mosquitto.rs: {names}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
}

#[test]
fn connects_with_a_password_and_behaves_like_the_firmware() {
    if !have("mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut broker = password_broker(dir.path());
    let port = broker.port;
    let op = Operator::connect(port, Some(("bob", "secret")), "#");

    let state = dir.path().join("plug");
    let mut dev = DeviceProcess::start(&["--state", state.to_str().unwrap(), "--cmd", &backlog(port, "secret")]);
    dev.expect_line("APP: Restarting", 5 * S);
    dev.expect_line("MQT: Attempting connection...", 6 * S);
    dev.expect_line("MQT: Connected", 5 * S);
    dev.expect_line(&format!("MQT: tele/{T}/LWT = Online (retained)"), S);
    dev.expect_line(&format!("MQT: cmnd/{T}/POWER = "), S);

    let info1 = r#"{"Info1":{"Module":"Sonoff Basic","Version":"14.2.0(release-tasmota)","FallbackTopic":"cmnd/DVES_4B3316_fb/","GroupTopic":"cmnd/tasmotas/"}}"#;
    let info2 = r#"{"Info2":{"WebServerMode":"Admin","Hostname":"tasmota-4B3316-4886","IPAddress":"10.75.51.22"}}"#;
    let info3 = r#"{"Info3":{"RestartReason":"Software/System restart","BootCount":2}}"#;
    assert_eq!(op.expect(&format!("tele/{T}/LWT"), 5 * S).payload, "Online");
    assert_eq!(op.expect(&format!("cmnd/{T}/POWER"), S).payload, "");
    assert_eq!(op.expect(&format!("tele/{T}/INFO1"), S).payload, info1);
    assert_eq!(op.expect(&format!("tele/{T}/INFO2"), S).payload, info2);
    assert_eq!(op.expect(&format!("tele/{T}/INFO3"), S).payload, info3);
    assert_eq!(op.expect(&format!("stat/{T}/RESULT"), S).payload, r#"{"POWER":"OFF"}"#);
    assert_eq!(op.expect(&format!("stat/{T}/POWER"), S).payload, "OFF");
    dev.expect_line(&format!("MQT: tele/{T}/INFO1 = {info1}"), S);

    // The LWT is retained: a late subscriber gets it with the retain flag.
    let late = Operator::connect(port, Some(("bob", "secret")), &format!("tele/{T}/LWT"));
    let lwt = late.expect(&format!("tele/{T}/LWT"), 5 * S);
    assert_eq!((lwt.payload.as_str(), lwt.retain), ("Online", true));

    // Power TOGGLE over MQTT: answered on stat/<t>/RESULT and stat/<t>/POWER.
    op.publish(&format!("cmnd/{T}/Power"), "TOGGLE");
    assert_eq!(op.expect(&format!("stat/{T}/RESULT"), 5 * S).payload, r#"{"POWER":"ON"}"#);
    assert_eq!(op.expect(&format!("stat/{T}/POWER"), S).payload, "ON");
    dev.expect_line(&format!("MQT: stat/{T}/RESULT = {{\"POWER\":\"ON\"}}"), S);
    // The group topic works too.
    op.publish("cmnd/tasmotas/Power", "OFF");
    assert_eq!(op.expect(&format!("stat/{T}/POWER"), 5 * S).payload, "OFF");

    // The broker goes away: the device notices, then backs off 10, 20 s.
    broker.stop();
    dev.expect_line("MQT: Attempting connection...", 5 * S);
    dev.expect_line(&format!("MQT: Connect failed to 127.0.0.1:{port}, rc -2. Retry in 10 sec"), S);
    dev.expect_line("MQT: Attempting connection...", 13 * S);
    dev.expect_line(&format!("MQT: Connect failed to 127.0.0.1:{port}, rc -2. Retry in 20 sec"), S);
    // Back up: the device reconnects (about 21 s later) and subscribes again.
    broker.restart();
    let op = Operator::connect(port, Some(("bob", "secret")), "#");
    dev.expect_line("MQT: Attempting connection...", 24 * S);
    dev.expect_line("MQT: Connected", 5 * S);
    dev.expect_line(&format!("MQT: tele/{T}/LWT = Online (retained)"), S);
    let rest = dev.lines_for(S / 2);
    assert!(!rest.iter().any(|l| l.contains("INFO1")), "INFO only after boot: {rest:?}");
    op.publish(&format!("cmnd/{T}/Power"), "ON");
    assert_eq!(op.expect(&format!("stat/{T}/POWER"), 5 * S).payload, "ON");

    // Power loss (SIGTERM): no DISCONNECT, so the broker publishes the will.
    dev.power_off();
    let will = op.expect(&format!("tele/{T}/LWT"), 5 * S);
    assert_eq!(will.payload, "Offline");
}

#[test]
fn a_wrong_password_is_refused_and_backs_off() {
    if !have("mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = password_broker(dir.path());
    let port = broker.port;
    let state = dir.path().join("plug");
    let mut dev = DeviceProcess::start(&["--state", state.to_str().unwrap(), "--cmd", &backlog(port, "wrong")]);
    dev.expect_line("APP: Restarting", 5 * S);
    dev.expect_line("MQT: Attempting connection...", 6 * S);
    // Mosquitto answers a bad password with CONNACK 5 (MQTT 3.1.1 "not authorized").
    let failed = dev.expect("Connect failed", 5 * S, |t| t.starts_with("MQT: Connect failed"));
    assert!(
        failed == format!("MQT: Connect failed to 127.0.0.1:{port}, rc 5. Retry in 10 sec")
            || failed == format!("MQT: Connect failed to 127.0.0.1:{port}, rc 4. Retry in 10 sec"),
        "{failed}"
    );
    dev.expect_line("MQT: Attempting connection...", 13 * S);
    dev.expect("second refusal", 5 * S, |t| t.ends_with("Retry in 20 sec"));
}

#[test]
fn tls_listener_with_a_test_ca() {
    if !have("mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca(dir.path(), &["mqtt.test"]);
    let port = common::free_port();
    let conf = format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
        ca.ca.display(),
        ca.cert.display(),
        ca.key.display()
    );
    let _broker = Mosquitto::start(dir.path(), port, &conf);
    let state = dir.path().join("plug");
    let setup = format!("Backlog SetOption103 1; MqttHost mqtt.test; MqttPort {port}; MqttUser 0; MqttPassword 0");
    let resolve = format!("mqtt.test:{port}:127.0.0.1");
    let args = ["--state", state.to_str().unwrap(), "--cmd", &setup, "--resolve", &resolve, "--ca-file"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(ca.ca.to_str().unwrap());
    let mut dev = DeviceProcess::start(&args);
    dev.expect_line("APP: Restarting", 5 * S);
    dev.expect_line("MQT: Attempting connection...", 6 * S);
    let tls = dev.expect("TLS connected", 5 * S, |t| t.starts_with("MQT: TLS connected in "));
    assert!(tls.ends_with(" ms, max ThunkStack used 4596"), "{tls}");
    dev.expect_line("MQT: Connected", S);

    // Without the CA, the firmware's trust anchors reject the test certificate: 62.
    drop(dev);
    let state2 = dir.path().join("plug2");
    let mut dev = DeviceProcess::start(&["--state", state2.to_str().unwrap(), "--cmd", &setup, "--resolve", &resolve]);
    dev.expect_line("MQT: Attempting connection...", 10 * S);
    dev.expect_line("MQT: TLS connection error: 62", 5 * S);
    dev.expect_line(&format!("MQT: Connect failed to mqtt.test:{port}, rc -2. Retry in 10 sec"), S);
}
