//! Integration tests of `tasmota-sim device`: the real binary, a real clock, stdin/stdout.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tasmota-sim");
const AWS_LINE: &str = "BackLog SetOption3 1; SetOption103 1; MqttHost a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com; MqttPort 443; MqttUser tasmota?x-amz-customauthorizer-name=TasmotaAuth; MqttPassword YknLuSd2tBY2HodwI/7RqA==";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn run(args: &[&str], stdin: &str) -> Run {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tasmota-sim");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        elapsed: start.elapsed(),
    }
}

/// Console lines without their `HH:MM:SS.mmm ` timestamps (real time jitters), after
/// checking each has one.
fn texts(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| {
            let (ts, text) = l.split_at(13);
            let b = ts.as_bytes();
            assert!(b[2] == b':' && b[5] == b':' && b[8] == b'.' && b[12] == b' ', "no timestamp on {l:?}");
            text.to_string()
        })
        .collect()
}

#[test]
fn aws_setup_line_then_restart_keeps_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("plug");
    let state = state.to_str().unwrap();
    let r = run(&["device", "--state", state, "--for", "3500ms"], &format!("{AWS_LINE}\n"));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let banner = "Project tasmota - Tasmota Version 14.2.0(release-tasmota)-2_7_7(2024-08-15T08:00:00)";
    assert_eq!(
        texts(&r.stdout),
        [
            "HDW: ESP8266EX",
            banner,
            &format!("CMD: {AWS_LINE}"),
            r#"RSL: RESULT = {"SetOption3":"ON"}"#,
            r#"RSL: RESULT = {"SetOption103":"ON"}"#,
            r#"RSL: RESULT = {"MqttHost":"a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com"}"#,
            r#"RSL: RESULT = {"MqttPort":443}"#,
            r#"RSL: RESULT = {"MqttUser":"tasmota?x-amz-customauthorizer-name=TasmotaAuth"}"#,
            r#"RSL: RESULT = {"MqttPassword":"YknLuSd2tBY2HodwI/7RqA=="}"#,
            "HTP: Web server active on tasmota-4B3316-4886 with IP address 10.75.51.22",
            "APP: Restarting",
            "HDW: ESP8266EX",
            banner,
        ]
    );
    // The replies come at least SetOption34 (200 ms) apart on the real clock too; no upper
    // bound, a loaded machine may wake the driver late.
    let stamps: Vec<u64> = r
        .stdout
        .lines()
        .skip(3)
        .take(6)
        .map(|l| {
            let ms = |a: usize, b: usize| l[a..b].parse::<u64>().unwrap();
            ms(6, 8) * 1000 + ms(9, 12)
        })
        .collect();
    for pair in stamps.windows(2) {
        assert!(pair[1] - pair[0] >= 200, "spacing {stamps:?}");
    }

    let r = run(&["device", "--state", state, "--for", "300ms", "--cmd", "MqttHost", "--cmd", "MqttPassword"], "");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let t = texts(&r.stdout);
    assert_eq!(
        t[2..],
        [
            "CMD: MqttHost",
            r#"RSL: RESULT = {"MqttHost":"a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com"}"#,
            "CMD: MqttPassword",
            r#"RSL: RESULT = {"MqttPassword":"****"}"#,
        ]
    );
    let file = std::fs::read_to_string(dir.path().join("plug/settings.json")).unwrap();
    assert!(file.contains("\"format\": \"tasmota-sim/settings\""), "{file}");
}

#[test]
fn cmd_runs_once_not_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let r = run(&["device", "--state", state, "--for", "3500ms", "--cmd", "Backlog FriendlyName1 Lamp; Restart 1"], "");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let t = texts(&r.stdout);
    assert_eq!(t.iter().filter(|l| l.starts_with("CMD: Backlog")).count(), 1, "{t:?}");
    assert_eq!(t.iter().filter(|l| *l == "APP: Restarting").count(), 1, "{t:?}");
    assert_eq!(t.iter().filter(|l| *l == "HDW: ESP8266EX").count(), 2, "{t:?}");
}

#[test]
fn eof_on_stdin_does_not_stop_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(&["device", "--state", dir.path().to_str().unwrap(), "--for", "1200ms"], "Power ON\n");
    assert_eq!(r.code, Some(0));
    assert!(r.elapsed >= Duration::from_millis(1200), "stopped after {:?}", r.elapsed);
    assert!(texts(&r.stdout).contains(&"RSL: POWER = ON".to_string()));
}

#[test]
fn sigterm_is_a_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["device", "--state", dir.path().to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn corrupt_or_foreign_state_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.json");
    std::fs::write(&file, "{ not json").unwrap();
    let r = run(&["device", "--state", dir.path().to_str().unwrap(), "--for", "100ms"], "");
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains(
            "settings.json: not a tasmota-sim settings file (not JSON: key must be a string at line 1 column 3)"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{ not json");
    assert_eq!(r.stdout, "");
}

#[test]
fn state_of_another_mac_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let r = run(&["device", "--state", state, "--mac", "AA:BB:CC:01:02:03", "--for", "100ms", "--cmd", "Power"], "");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("RSL: POWER = OFF"));
    let r = run(&["device", "--state", state, "--mac", "5C:CF:7F:4B:33:16", "--for", "100ms"], "");
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("belongs to the device with MAC AA:BB:CC:01:02:03, not 5C:CF:7F:4B:33:16"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let r = run(&["device", "--state", "/tmp/x", "--mac", "nope"], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("invalid value 'nope' for '--mac <MAC>': expected six hex byte pairs"), "{}", r.stderr);
    let r = run(&["device", "--state", "/tmp/x", "--for", "5 parsecs"], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("unknown unit"), "{}", r.stderr);
    let r = run(&["device", "--state", "/tmp/x", "--profile", "sonoff-99ch"], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("unknown profile 'sonoff-99ch'; built in: sonoff-basic, sonoff-4ch"), "{}", r.stderr);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nmodule = \"m\"\nmodule_number = 1\nchip = \"esp8266\"\nrelays = 0\n").unwrap();
    let r = run(&["device", "--state", "/tmp/x", "--profile", bad.to_str().unwrap()], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("bad.toml: relays: 0 is out of range 1..=8"), "{}", r.stderr);
}

#[test]
fn a_profile_gives_the_device_its_relays_module_and_sensors() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("climate");
    let r = run(
        &["device", "--state", state.to_str().unwrap(), "--profile", "esp32-climate", "--for", "1500ms"],
        "Module\nStatus 10\nPower2 ON\n",
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines = texts(&r.stdout);
    assert_eq!(lines[0], "HDW: ESP32-D0WD-V3");
    assert!(lines.contains(&r#"RSL: RESULT = {"Module":{"1":"ESP32-DevKit"}}"#.to_string()), "{lines:?}");
    let sns = lines.iter().find(|l| l.starts_with("RSL: STATUS10 = ")).expect("Status 10");
    // DS18x20 (xsns_05) before DHT (xsns_06); the AM2301 is null until its first read at
    // uptime 4 (DhtInit starts with NAN).
    assert!(
        sns.contains(
            r#""DS18B20":{"Id":"01144B2C3AAA","Temperature":45.0},"AM2301":{"Temperature":null,"Humidity":null,"DewPoint":null},"TempUnit":"C""#
        ),
        "{sns}"
    );
    // One relay: Power2 is an error, as on the firmware.
    assert!(lines.contains(&r#"RSL: RESULT = {"Command":"Error"}"#.to_string()), "{lines:?}");
}

#[test]
fn help_shows_examples() {
    let r = run(&["device", "--help"], "");
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.contains("Examples:") && r.stdout.contains("--cmd 'BackLog SetOption3 1;"), "{}", r.stdout);
}

#[test]
fn the_password_never_reaches_the_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("plug");
    // A port nothing listens on: the device connects (and fails) with the password.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let setup = format!("Backlog MqttHost 127.0.0.1; MqttPort {port}; MqttPassword hunter2-secret");
    let out = Command::new(BIN)
        .args(["device", "--state", state.to_str().unwrap(), "--for", "6500ms", "--cmd", &setup])
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stdout.contains(&format!("MQT: Connect failed to 127.0.0.1:{port}, rc -2. Retry in 10 sec")), "{stdout}");
    assert!(stderr.contains("opening the MQTT link"), "trace output is on: {stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A settings file as `tasmota-sim device` writes it, with one settings field replaced.
fn settings_file(dir: &std::path::Path, field: &str, value: &str) -> std::path::PathBuf {
    let fresh = tempfile::tempdir().unwrap();
    let r = run(&["device", "--state", fresh.path().to_str().unwrap(), "--for", "10ms"], "");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let text = std::fs::read_to_string(fresh.path().join("settings.json")).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with(&format!("\"{field}\":"))).unwrap();
    let indent = &line[..line.len() - line.trim_start().len()];
    let comma = if line.ends_with(',') { "," } else { "" };
    let text = text.replacen(line, &format!("{indent}\"{field}\": {value}{comma}"), 1);
    let file = dir.join("settings.json");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn settings_outside_the_firmware_limits_exit_2_and_are_left_alone() {
    let long = format!("\"{}\"", "h".repeat(500));
    let cases = [
        ("mqtt_host", long.as_str(), "field settings.mqtt_host: is 500 bytes; beside the other texts at most"),
        ("mqtt_topic", "\"\"", "field settings.mqtt_topic: is empty, which no Topic command can store"),
        ("mqtt_port", "\"abc\"", "field settings.mqtt_port: invalid type: string \"abc\", expected u16"),
        ("tele_period", "5", "field settings.tele_period: 5 is outside 10..=3600"),
    ];
    for (field, value, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = settings_file(dir.path(), field, value);
        let before = std::fs::read_to_string(&file).unwrap();
        let at = before.lines().position(|l| l.contains(&format!("\"{field}\""))).unwrap() + 1;
        let r = run(&["device", "--state", dir.path().to_str().unwrap(), "--for", "100ms"], "");
        assert_eq!(r.code, Some(2), "{field}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{}", r.stderr);
        assert!(r.stderr.contains(&format!("settings.json:{at}:")), "line {at}: {}", r.stderr);
        assert!(r.stderr.contains("(it is left as it is)"), "{}", r.stderr);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before, "a refused file is never rewritten");
        assert_eq!(r.stdout, "");
    }
}

#[test]
fn a_profile_with_settings_outside_the_limits_is_refused_naming_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = "name = \"x\"\nmodule = \"m\"\nmodule_number = 1\nchip = \"esp8266\"\n\n[settings]\nmqtt_topic = \"\"\n";
    std::fs::write(&bad, text).unwrap();
    let state = dir.path().join("state");
    let r = run(&["device", "--state", state.to_str().unwrap(), "--profile", bad.to_str().unwrap()], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("bad.toml: line 7, column 1: settings.mqtt_topic: is empty"), "{}", r.stderr);
    assert!(!state.exists(), "nothing is written for a refused profile");
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), text);
}
