//! The scenario runner through the binary: the whole library on the virtual clock, the
//! README's main job, invalid and failing scenarios with their exit codes, golden
//! transcript diffs, JUnit/JSON output, and the Mosquitto scenario in real time against a
//! Mosquitto this test starts.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn sim(args: &[&str], tls_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tasmota-sim"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("scenario")
        .args(args)
        .arg("--tls-dir")
        .arg(tls_dir)
        .output()
        .expect("run tasmota-sim")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn the_whole_library_passes_on_the_virtual_clock_with_junit_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("scenarios.xml");
    let o = sim(&["scenarios/", "--junit", junit.to_str().unwrap(), "--json"], dir.path());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let total = report["total"].as_u64().unwrap();
    assert!(total >= 15, "{total} scenarios");
    // Only the external-broker scenario is skipped; it runs in the Mosquitto test below.
    assert_eq!(report["skipped"], 1, "{out}");
    assert_eq!(report["passed"].as_u64().unwrap(), total - 1, "{out}");
    for s in report["scenarios"].as_array().unwrap() {
        if s["verdict"] == "passed" {
            assert_eq!(s["steps_run"], s["steps_total"], "{}", s["name"]);
        }
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(&format!("tests=\"{total}\" failures=\"0\" errors=\"0\" skipped=\"1\"")), "{xml}");
    assert_eq!(xml.matches("<testcase ").count() as u64, total);
    assert!(xml.contains("<testcase classname=\"scenarios\" name=\"aws-iot-light\""), "{xml}");
}

#[test]
fn the_main_job_prints_the_aws_guide_transcript_and_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let o = sim(&["scenarios/aws-iot-light.toml"], dir.path());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}");
    for line in [
        "00:00:03.500 CMD: BackLog SetOption3 1; SetOption103 1; MqttHost a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com; MqttPort 443; MqttUser tasmota?x-amz-customauthorizer-name=TasmotaAuth; MqttPassword YknLuSd2tBY2HodwI/7RqA==",
        "00:00:03.500 MQT: stat/tasmota_4B3316/RESULT = {\"SetOption3\":\"ON\"}",
        "00:00:03.700 MQT: stat/tasmota_4B3316/RESULT = {\"SetOption103\":\"ON\"}",
        "00:00:03.900 MQT: stat/tasmota_4B3316/RESULT = {\"MqttHost\":\"a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com\"}",
        "00:00:04.100 MQT: stat/tasmota_4B3316/RESULT = {\"MqttPort\":443}",
        "00:00:04.300 MQT: stat/tasmota_4B3316/RESULT = {\"MqttUser\":\"tasmota?x-amz-customauthorizer-name=TasmotaAuth\"}",
        "00:00:04.500 MQT: stat/tasmota_4B3316/RESULT = {\"MqttPassword\":\"YknLuSd2tBY2HodwI/7RqA==\"}",
        "00:00:06.000 APP: Restarting",
        "00:00:04.700 MQT: TLS connected in 1200 ms, max ThunkStack used 4596",
        "00:00:04.700 MQT: tele/tasmota_4B3316/LWT = Online",
        "00:00:04.700 MQT: stat/tasmota_4B3316/RESULT = {\"POWER\":\"ON\"}",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
    assert!(out.lines().any(|l| l.starts_with("PASS aws-iot-light (9 steps, 10.701s of device time in ")), "{out}");
}

#[test]
fn a_bad_file_is_invalid_with_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "name = \"bad\"\n\n[[step]]\nadvance = \"ten\"\n").unwrap();
    let o = sim(&[f.to_str().unwrap()], dir.path());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(&format!("INVALID bad: {}:4:11: advance: 'ten': expected a number and a unit", f.display())),
        "{out}"
    );
}

#[test]
fn a_failing_expectation_shows_expected_and_seen_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("fails.toml");
    std::fs::write(
        &f,
        "transcript = false\n[[step]]\nconsole = \"Power ON\"\n[[step]]\nexpect = { console = 'RSL: RESULT = {\"POWER\":\"OFF\"}', within = \"1s\" }\n",
    )
    .unwrap();
    let o = sim(&[f.to_str().unwrap(), "-q"], dir.path());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("FAIL fails at step 2 ({}:4:1)", f.display())), "{out}");
    assert!(
        out.contains("expected console \"RSL: RESULT = {\\\"POWER\\\":\\\"OFF\\\"}\" within 1s; not seen."),
        "{out}"
    );
    assert!(out.contains("00:00:00.000 RSL: RESULT = {\"POWER\":\"ON\"}"), "{out}");
}

#[test]
fn a_changed_console_fails_with_a_diff_until_blessed() {
    let dir = tempfile::tempdir().unwrap();
    let scen = dir.path().join("scenarios");
    let golden = dir.path().join("fixtures/transcripts");
    std::fs::create_dir_all(&scen).unwrap();
    std::fs::create_dir_all(&golden).unwrap();
    std::fs::write(scen.join("p.toml"), "[[step]]\nconsole = \"Power ON\"\n").unwrap();
    let file = scen.join("p.toml");
    let file = file.to_str().unwrap();
    let o = sim(&[file, "-q"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no golden transcript"), "{}", text(&o));
    let o = sim(&[file, "-q", "--bless"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let written = std::fs::read_to_string(golden.join("p.log")).unwrap();
    assert!(written.contains("00:00:00.000 RSL: RESULT = {\"POWER\":\"ON\"}\n"), "{written}");
    std::fs::write(golden.join("p.log"), written.replace("\"ON\"", "\"OFF\"")).unwrap();
    let o = sim(&[file, "-q"], dir.path());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "- 00:00:00.000 RSL: RESULT = {\"POWER\":\"OFF\"}\n  + 00:00:00.000 RSL: RESULT = {\"POWER\":\"ON\"}"
        ),
        "{out}"
    );
}

#[test]
fn the_same_run_twice_gives_the_same_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let a = sim(&["scenarios/broker-restart.toml", "--json"], dir.path());
    let b = sim(&["scenarios/broker-restart.toml", "--json"], dir.path());
    let ta: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let tb: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(ta["scenarios"][0]["transcript"], tb["scenarios"][0]["transcript"]);
    assert_eq!(ta["scenarios"][0]["verdict"], "passed");
}

#[test]
fn the_mosquitto_scenario_runs_in_real_time_against_mosquitto_with_tls_and_a_password() {
    if !common::have("mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = common::test_ca(dir.path(), &["localhost"]);
    let pw = common::password_file(dir.path(), "bob", "secret");
    let port = common::free_port();
    let conf = format!(
        "allow_anonymous false\npassword_file {}\ncafile {}\ncertfile {}\nkeyfile {}\ntls_version tlsv1.2",
        pw.display(),
        ca.ca.display(),
        ca.cert.display(),
        ca.key.display()
    );
    let _broker = common::Mosquitto::start(dir.path(), port, &conf);
    let url = format!("mqtts://localhost:{port}");
    let o = sim(
        &["scenarios/mosquitto-tls-password.toml", "--broker", &url, "--ca-file", ca.ca.to_str().unwrap()],
        dir.path(),
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("MQT: Connected"), "{out}");
    assert!(out.contains("PASS mosquitto-tls-password"), "{out}");
}

/// A broker fault added by a step (`fault = "restart-at=..."`) is scheduled like one in the
/// broker's `faults` list: the broker restarts at the asked time (measured from the broker's
/// start: the fault record comes within a millisecond of 30 s), the device notices the
/// lost link at its next second tick (30.5 s), finds the port closed (rc -2) and reconnects
/// after the 5 s downtime on its 10 s retry.
#[test]
fn a_restart_at_step_restarts_the_broker_at_the_asked_time() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("restart-at-step.toml");
    std::fs::write(
        &f,
        r#"transcript = false
[[device]]
settings = { mqtt_host = "mqtt.lan" }
[[broker]]
host = "mqtt.lan"

[[step]]
expect = { console = "00:00:03.500 MQT: Connected" }
[[step]]
fault = "restart-at=30s/5s"
[[step]]
expect_not = { record = { kind = "restart" }, within = "26499ms" }
[[step]]
expect = { record = { kind = "fault", detail_regex = '^RestartAt: restart, down 5000 ms$' }, within = "2ms" }
[[step]]
expect = { record = { kind = "restart", detail_regex = "^all links dropped, down 5000 ms$" } }
[[step]]
expect_order = [
  { console = "00:00:30.500 MQT: Attempting connection..." },
  { console = "00:00:30.500 MQT: Connect failed to mqtt.lan:1883, rc -2. Retry in 10 sec" },
  { console = "00:00:41.500 MQT: Attempting connection..." },
  { console = "00:00:41.500 MQT: Connected" },
]
within = "30s"
"#,
    )
    .unwrap();
    let o = sim(&[f.to_str().unwrap()], dir.path());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("PASS restart-at-step"), "{out}");
}

/// Writes `name` in `dir` with the text and runs it (quiet); (exit code, output).
fn run_text(dir: &Path, name: &str, toml: &str, extra: &[&str]) -> (Option<i32>, String) {
    let f = dir.join(name);
    std::fs::write(&f, toml).unwrap();
    let mut args = vec![f.to_str().unwrap(), "-q"];
    args.extend_from_slice(extra);
    let o = sim(&args, dir);
    (o.status.code(), text(&o))
}

/// `n` devices `d0`, `d1`, ... on one plain broker (as `scripts/scenario-world` writes).
fn world(n: usize) -> String {
    let mut t = String::from("transcript = false\n[[broker]]\nhost = \"mqtt.lan\"\n");
    for i in 0..n {
        t.push_str(&format!(
            "[[device]]\nname = \"d{i}\"\nmac = \"5C:CF:7F:00:00:{i:02X}\"\nsettings = {{ mqtt_host = \"mqtt.lan\" }}\n"
        ));
    }
    t
}

#[test]
fn each_of_many_devices_wakes_on_its_own_timer() {
    // The world wakes devices from a timer queue and reads a device's timer again only
    // after it had an input: a console line that moves one device's TelePeriod must move
    // that device's next wake-up, and every other device still wakes on its own.
    let dir = tempfile::tempdir().unwrap();
    let n = 60;
    let state = |i: usize| format!("console_regex = \"^MQT: tele/tasmota_{i:06X}/STATE = \"");
    let mut t = world(n);
    t.push_str(&format!("[[step]]\nexpect = {{ device = \"d{}\", console = \"MQT: Connected\" }}\n", n - 1));
    // Past the STATE every device sends just after it connected.
    t.push_str("[[step]]\nadvance = \"10s\"\n[[step]]\ndevice = \"d7\"\nconsole = \"TelePeriod 10\"\n");
    t.push_str(&format!("[[step]]\nexpect = {{ device = \"d7\", {}, within = \"11s\" }}\n", state(7)));
    t.push_str(&format!("[[step]]\nexpect_not = {{ device = \"d8\", {}, within = \"1m\" }}\n", state(8)));
    t.push_str("[[step]]\nadvance = \"11m\"\n");
    for i in 0..n {
        t.push_str(&format!("[[step]]\nexpect = {{ device = \"d{i}\", {}, since = \"step 6\" }}\n", state(i)));
    }
    let (code, out) = run_text(dir.path(), "world.toml", &t, &[]);
    assert_eq!(code, Some(0), "{out}");
}

/// A device on a plain broker, connected, with an operator on `stat/+/RESULT`.
const CONNECTED: &str = "transcript = false
[[device]]
settings = { mqtt_host = \"mqtt.lan\" }
[[broker]]
host = \"mqtt.lan\"
[[operator]]
subscribe = [\"stat/+/RESULT\"]
[[step]]
expect = { console = \"MQT: Connected\" }
";

#[test]
fn an_expectation_does_not_match_what_came_before_the_action() {
    // Issue 16's false PASS: the boot-time {"POWER":"OFF"} must not answer the TOGGLE.
    let dir = tempfile::tempdir().unwrap();
    let steps = "[[step]]\nmqtt_publish = { topic = \"cmnd/tasmota_4B3316/Power\", payload = \"TOGGLE\" }\n\
                 [[step]]\nexpect = { publish = { topic = \"stat/tasmota_4B3316/RESULT\", json = { POWER = \"OFF\" } }, within = \"2s\" }\n";
    let (code, out) = run_text(dir.path(), "toggle.toml", &format!("{CONNECTED}{steps}"), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL toggle at step 3"), "{out}");
    assert!(
        out.contains(
            "not seen. Seen since the last action or match:\n      stat/tasmota_4B3316/RESULT = {\"POWER\":\"ON\"}\n"
        ),
        "{out}"
    );
    // Looking back on purpose finds the boot-time message.
    let back = steps.replace("within = \"2s\" }", "within = \"2s\", since = \"start\" }");
    let (code, out) = run_text(dir.path(), "back.toml", &format!("{CONNECTED}{back}"), &[]);
    assert_eq!(code, Some(0), "{out}");
    // Advancing time is not an action: what the press set off stays visible. (The press
    // waits for uptime 4 s: ButtonHandler ignores the button before that.)
    let press = "[[step]]\nadvance = \"1s\"\n[[step]]\nbutton_press = 1\n[[step]]\nadvance = \"2s\"\n\
                 [[step]]\nexpect = { publish = { topic = \"stat/tasmota_4B3316/RESULT\", json = { POWER = \"ON\" } } }\n";
    let (code, out) = run_text(dir.path(), "press.toml", &format!("{CONNECTED}{press}"), &[]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn an_operator_publish_the_broker_refuses_fails_its_step_unless_expected() {
    let dir = tempfile::tempdir().unwrap();
    for topic in ["a/#", ""] {
        let steps = format!("[[step]]\nmqtt_publish = {{ topic = \"{topic}\" }}\n[[step]]\nconsole = \"Power ON\"\n");
        let (code, out) = run_text(dir.path(), "refused.toml", &format!("{CONNECTED}{steps}"), &[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("FAIL refused at step 2"), "{out}");
        assert!(
            out.contains(&format!(
                "operator 'operator' lost its link: the broker closed the link after its PUBLISH to '{topic}'"
            )),
            "{out}"
        );
    }
    let steps = "[[step]]\nmqtt_publish = { topic = \"a/#\" }\n\
                 [[step]]\nexpect = { record = { kind = \"close\", client = \"tasmota-sim-operator\" } }\n\
                 [[step]]\nconsole = \"Power ON\"\n";
    let (code, out) = run_text(dir.path(), "expected.toml", &format!("{CONNECTED}{steps}"), &[]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn a_lost_operator_link_and_a_refused_subscription_fail() {
    let dir = tempfile::tempdir().unwrap();
    let dropped = CONNECTED.replace(
        "host = \"mqtt.lan\"\n",
        "host = \"mqtt.lan\"\nfaults = [\"drop-at=10s,client=tasmota-sim-operator\"]\n",
    ) + "[[step]]\nadvance = \"10s\"\n";
    let (code, out) = run_text(dir.path(), "dropped.toml", &dropped, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("operator 'operator' lost its link: the broker closed the link"), "{out}");

    let refused = "transcript = false\n[[broker]]\nprofile = \"aws-iot\"\nlimits = [\"subscriptions=1\"]\n\
                   [[operator]]\nsubscribe = [\"stat/#\", \"tele/#\"]\n[[step]]\nadvance = \"5s\"\n";
    let (code, out) = run_text(dir.path(), "suback.toml", refused, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "before the first step: operator 'operator' had its subscription to 'tele/#' refused (SUBACK 0x80)"
        ),
        "{out}"
    );
    let seen = refused.replace("advance = \"5s\"", "expect = { record = { kind = \"SUBACK\", codes = [0, 0x80] } }");
    let (code, out) = run_text(dir.path(), "suback-expected.toml", &seen, &[]);
    assert_eq!(code, Some(0), "{out}");
}

/// A device (MQTT 3.1.1) with a wrong password gets CONNACK 5 and prints rc 5; the record
/// holds 5 too, the code on its wire, not MQTT 5's 0x87 before the fold to 3.1.1.
#[test]
fn a_refused_device_login_is_recorded_with_its_311_connack_code() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "transcript = false\n[[broker]]\nhost = \"mqtt.lan\"\nusers = [\"bob:secret\"]\n\
                [[device]]\nsettings = { mqtt_host = \"mqtt.lan\", mqtt_user = \"bob\", mqtt_pwd = \"wrongpw\" }\n\
                [[step]]\nexpect = { console = \"MQT: Connect failed to mqtt.lan:1883, rc 5. Retry in 10 sec\" }\n\
                [[step]]\nexpect = { record = { kind = \"CONNACK\", codes = [5] }, since = \"start\" }\n";
    let (code, out) = run_text(dir.path(), "wrong-password.toml", toml, &[]);
    assert_eq!(code, Some(0), "{out}");
    let mqtt5 = toml.replace("codes = [5]", "codes = [0x87]");
    let (code, out) = run_text(dir.path(), "wrong-password-0x87.toml", &mqtt5, &[]);
    assert_eq!(code, Some(1), "{out}");
}

#[test]
fn a_new_scenario_outside_the_library_needs_no_transcript_and_blesses_beside_itself() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[[step]]\nconsole = \"Power ON\"\n";
    let (code, out) = run_text(dir.path(), "my-toggle.toml", toml, &[]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run_text(dir.path(), "my-toggle.toml", toml, &["--bless"]);
    assert_eq!(code, Some(0), "{out}");
    let beside = dir.path().join("my-toggle.log");
    let written = std::fs::read_to_string(&beside).unwrap();
    assert!(written.contains("00:00:00.000 RSL: RESULT = {\"POWER\":\"ON\"}\n"), "{written}");
    // Once it exists it is compared.
    std::fs::write(&beside, written.replace("\"ON\"", "\"OFF\"")).unwrap();
    let (code, out) = run_text(dir.path(), "my-toggle.toml", toml, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("the console differs from"), "{out}");
    // `transcript = true` asks for one.
    let (code, out) = run_text(dir.path(), "wants.toml", &format!("transcript = true\n{toml}"), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no golden transcript"), "{out}");
}

#[test]
fn empty_and_missing_scenarios_are_invalid_without_a_made_up_position() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_text(dir.path(), "empty.toml", "name = \"empty\"\n", &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("INVALID empty: "), "{out}");
    assert!(out.contains("empty.toml: no [[step]]"), "{out}");
    let o = sim(&["nonexist.toml"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("INVALID nonexist: nonexist.toml: cannot read: No such file or directory\n"),
        "{}",
        text(&o)
    );
}

/// `tasmota-sim scenario scenarios/ | head -1`: the reader goes away after one line; the
/// run neither panics nor changes its verdict.
#[test]
fn a_closed_stdout_does_not_panic_or_change_the_verdict() {
    use std::io::{BufRead, BufReader};
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tasmota-sim"))
        .args(["scenario", lib])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("PASS ") || first.starts_with("SKIP "), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

// ---- MQTT 5 and WebSocket operators ------------------------------------------------------

/// A device and two MQTT 5 operators on one plain broker: `cloud` (commands, answers)
/// and `watch` (`cmnd/#` and `stat/#`).
const MQTT5: &str = "transcript = false
[[device]]
settings = { mqtt_host = \"mqtt.lan\" }
[[broker]]
host = \"mqtt.lan\"
[[operator]]
name = \"cloud\"
protocol = 5
subscribe = [\"stat/+/RESULT\"]
[[operator]]
name = \"watch\"
protocol = 5
subscribe = [\"cmnd/#\", \"stat/#\"]
[[step]]
expect = { console = \"MQT: Connected\" }
";

/// Runs `MQTT5` + `steps`; (exit code, output).
fn mqtt5(dir: &Path, name: &str, steps: &str) -> (Option<i32>, String) {
    run_text(dir, name, &format!("{MQTT5}{steps}"), &[])
}

#[test]
fn operator_fields_with_bad_values_are_invalid_with_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[[broker]]\nhost = \"mqtt.lan\"\n[[operator]]\n";
    let cases: &[(&str, &str)] = &[
        ("protocol = 3\n", ":4:12: protocol: 3 (MQTT 3.1) is not spoken by the operator: 4 (MQTT 3.1.1, the default) or 5 (MQTT 5)"),
        ("protocol = 6\n", ":4:12: protocol: 6 is not an MQTT protocol level: 4 (MQTT 3.1.1, the default) or 5 (MQTT 5)"),
        ("protocol = \"5\"\n", ":4:12: invalid type: string \"5\", expected i64"),
        ("ws_port = 1883\n", ":4:11: ws_port: 1883 is broker 'broker''s port (plain MQTT); its WebSocket listener needs a port of its own"),
        ("ws_port = 8080\nwss_port = 8081\n", ":5:12: wss_port: an operator takes ws_port or wss_port, not both"),
        ("wss_port = 0\n", ":4:12: wss_port: 0 is not a port"),
    ];
    for (fields, want) in cases {
        let (code, out) = run_text(dir.path(), "bad.toml", &format!("{base}{fields}[[step]]\nadvance = \"1s\"\n"), &[]);
        assert_eq!(code, Some(2), "{fields}: {out}");
        assert!(out.contains(&format!("bad.toml{want}")), "{fields}: {out}");
    }
    let steps: &[(&str, &str)] = &[
        (
            "[[step]]\nmqtt_publish = { topic = \"t\", user_properties = { a = \"b\" } }\n",
            ":5:1: mqtt_publish: MQTT 3.1.1 has no PUBLISH properties (user_properties, message_expiry, response_topic, correlation_data, content_type); operator 'operator' needs protocol = 5",
        ),
        (
            "[[step]]\nexpect = { publish = { topic = \"t\", response_topic = \"r\" } }\n",
            ":5:1: publish: MQTT 3.1.1 has no PUBLISH properties",
        ),
        (
            "[[step]]\nexpect = { ack = { packet = \"PUBACK\", codes = [0x10] } }\n",
            ":6:29: ack: an MQTT 3.1.1 PUBACK has no reason code; operator 'operator' needs protocol = 5 for codes",
        ),
        ("[[step]]\nexpect = { ack = { packet = \"UNSUBACK\" } }\n", ":6:29: ack: 'UNSUBACK': the packet is CONNACK, SUBACK or PUBACK"),
    ];
    for (step, want) in steps {
        let (code, out) = run_text(dir.path(), "bad.toml", &format!("{base}name = \"operator\"\n{step}"), &[]);
        assert_eq!(code, Some(2), "{step}: {out}");
        assert!(out.contains(&format!("bad.toml{want}")), "{step}: {out}");
    }
    let v5 = format!("{base}protocol = 5\n[[step]]\n");
    let (code, out) = run_text(
        dir.path(),
        "bad.toml",
        &format!("{v5}mqtt_publish = {{ topic = \"t\", message_expiry = \"1500ms\" }}\n"),
        &[],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("bad.toml:6:48: mqtt_publish: message_expiry: whole seconds, 1s to 4294967295s"), "{out}");
    let shared = format!(
        "{base}name = \"a\"\n[[operator]]\nname = \"b\"\n[[operator]]\nname = \"c\"\n[[step]]\n\
         expect_not = {{ shared = {{ members = [\"a\", \"b\"], reference = \"c\" }} }}\n"
    );
    let (code, out) = run_text(dir.path(), "bad.toml", &shared, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("bad.toml:9:1: shared: only in expect (not expect_not or expect_order)"), "{out}");
    let within = shared.replace("expect_not", "expect").replace("\"c\" }", "\"c\" }, within = \"5s\"");
    let (code, out) = run_text(dir.path(), "bad.toml", &within, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("shared: checks what was received when the step runs (let time pass with advance first); it takes no within"), "{out}");
    let one = shared.replace("expect_not", "expect").replace("[\"a\", \"b\"]", "[\"a\", \"a\"]");
    let (code, out) = run_text(dir.path(), "bad.toml", &one, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("shared: operator 'a' named twice"), "{out}");
}

#[test]
fn user_properties_and_the_other_publish_properties_pass_through_and_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let publish = "[[step]]\nmqtt_publish = { operator = \"cloud\", topic = \"cmnd/tasmota_4B3316/Power\", payload = \"ON\", \
                   user_properties = [[\"k\", \"1\"], [\"k\", \"2\"], [\"from\", \"cloud\"]], response_topic = \"cloud/r\", \
                   correlation_data = \"c-1\", message_expiry = \"1h\", content_type = \"text/plain\" }\n";
    let expect = |what: &str| {
        format!("[[step]]\nexpect = {{ publish = {{ topic = \"cmnd/tasmota_4B3316/Power\", {what} }}, operator = \"watch\" }}\n")
    };
    let good = [
        "user_properties = { from = \"cloud\" }",
        "user_properties = [[\"k\", \"2\"], [\"k\", \"1\"]]",
        "response_topic = \"cloud/r\", correlation_data = \"c-1\"",
        "message_expiry = \"60m\", content_type = \"text/plain\"",
    ];
    for what in good {
        let (code, out) = mqtt5(dir.path(), "props.toml", &format!("{publish}{}", expect(what)));
        assert_eq!(code, Some(0), "{what}: {out}");
    }
    // Each property that is not as given fails, naming what was received.
    let bad = [
        ("user_properties = { from = \"device\" }", "[from=device]"),
        ("user_properties = { k = \"3\" }", "[k=3]"),
        ("user_properties = { missing = \"1\" }", "[missing=1]"),
        ("response_topic = \"cloud/x\"", "(response topic cloud/x)"),
        ("correlation_data = \"c-2\"", "(correlation c-2)"),
        ("message_expiry = \"59m\"", "(expiry 3540 s)"),
        ("content_type = \"application/json\"", "(content type application/json)"),
    ];
    for (what, shown) in bad {
        let (code, out) = mqtt5(dir.path(), "props.toml", &format!("{publish}{}", expect(what)));
        assert_eq!(code, Some(1), "{what}: {out}");
        assert!(out.contains("FAIL props at step 3"), "{what}: {out}");
        assert!(
            out.contains(&format!(
                "expected operator 'watch' receives cmnd/tasmota_4B3316/Power {shown} within 10s; not seen"
            )),
            "{what}: {out}"
        );
        assert!(
            out.contains("cmnd/tasmota_4B3316/Power = ON [k=1] [k=2] [from=cloud] (expiry 3600 s) (response topic cloud/r) (correlation c-1) (content type text/plain)"),
            "{what}: {out}"
        );
    }
    // The device's answer (an MQTT 3.1.1 publisher) carries no user properties.
    let answer = "[[step]]\nexpect = { publish = { topic = \"stat/tasmota_4B3316/RESULT\", user_properties = { from = \"cloud\" } }, operator = \"watch\" }\n";
    let (code, out) = mqtt5(dir.path(), "props.toml", &format!("{publish}{answer}"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("stat/tasmota_4B3316/RESULT = {\"POWER\":\"ON\"}\n"), "{out}");
}

#[test]
fn reason_codes_of_connack_suback_and_puback_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let ok = "[[step]]\nexpect = { ack = { packet = \"CONNACK\", codes = [0] }, operator = \"cloud\", since = \"start\" }\n\
              [[step]]\nexpect = { ack = { packet = \"SUBACK\", codes = [0, 0] }, operator = \"watch\", since = \"start\" }\n\
              [[step]]\nmqtt_publish = { operator = \"cloud\", topic = \"nobody/listens\", qos = 1 }\n\
              [[step]]\nexpect = { ack = { packet = \"PUBACK\", codes = [0x10], topic = \"nobody/listens\" }, operator = \"cloud\" }\n";
    let (code, out) = mqtt5(dir.path(), "acks.toml", ok);
    assert_eq!(code, Some(0), "{out}");
    for (from, to, step, seen) in [
        ("codes = [0] }", "codes = [0x86] }", 2, "CONNACK [0x00]"),
        ("codes = [0, 0] }", "codes = [0] }", 3, "SUBACK [0x00, 0x00] for cmnd/#, stat/#"),
        ("codes = [0x10], topic", "codes = [0x00], topic", 5, "PUBACK [0x10] for nobody/listens"),
        (
            "topic = \"nobody/listens\" }, operator",
            "topic = \"other\" }, operator",
            5,
            "PUBACK [0x10] for nobody/listens",
        ),
    ] {
        let (code, out) = mqtt5(dir.path(), "acks.toml", &ok.replace(from, to));
        assert_eq!(code, Some(1), "{to}: {out}");
        assert!(out.contains(&format!("FAIL acks at step {step}")), "{to}: {out}");
        assert!(out.contains(&format!("\n      {seen}\n")), "{to}: {out}");
    }
    // A refused subscription fails the scenario, unless an ack expectation names its code.
    let refused = "transcript = false\n[[broker]]\nprofile = \"aws-iot\"\nlimits = [\"subscriptions=1\"]\n\
                   [[operator]]\nprotocol = 5\nsubscribe = [\"stat/#\", \"tele/#\"]\n[[step]]\nadvance = \"5s\"\n";
    let (code, out) = run_text(dir.path(), "suback5.toml", refused, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("before the first step: operator 'operator' had its subscription to 'tele/#' refused (SUBACK 0x97 Quota exceeded)"),
        "{out}"
    );
    assert!(
        out.contains("expect = { ack = { packet = \"SUBACK\", codes = [...] }, operator = \"operator\" }"),
        "{out}"
    );
    let named = refused.replace("advance = \"5s\"", "expect = { ack = { packet = \"SUBACK\", codes = [0x00, 0x97] } }");
    let (code, out) = run_text(dir.path(), "suback5-expected.toml", &named, &[]);
    assert_eq!(code, Some(0), "{out}");
    // An ack expectation that does not name the refusal's code says nothing about it.
    let unnamed = refused.replace("advance = \"5s\"", "expect = { ack = { packet = \"SUBACK\" } }");
    let (code, out) = run_text(dir.path(), "suback5-unnamed.toml", &unnamed, &[]);
    assert_eq!(code, Some(1), "{out}");
}

#[test]
fn a_shared_subscription_split_is_checked_against_a_reference_and_fails_when_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let library =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/mqtt5-shared-subscription.toml"))
            .unwrap()
            .replace("name = \"mqtt5-shared-subscription\"", "transcript = false");
    let (code, out) = run_text(dir.path(), "share.toml", &library, &[]);
    assert_eq!(code, Some(0), "{out}");
    // worker2 not in the group: every message reaches both.
    let both = library.replacen(
        "ws://mqtt.lan:8080/mqtt)\nsubscribe = [\"$share/workers/tele/+/STATE\"]",
        "ws://mqtt.lan:8080/mqtt)\nsubscribe = [\"tele/+/STATE\"]",
        1,
    );
    assert_ne!(both, library);
    let (code, out) = run_text(dir.path(), "share.toml", &both, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL share at step 5"), "{out}");
    assert!(
        out.contains("expected each of the 18 messages on tele/+/STATE operator 'everything' received to reach exactly one of 'worker1', 'worker2'; tele/tasmota_000001/STATE = {\"Time\":\"1970-01-01T00:00:08\""),
        "{out}"
    );
    assert!(out.contains(" reached 'worker1' 1x, 'worker2' 1x"), "{out}");
    // Neither worker subscribed to the telemetry: it reaches none of them.
    let none = library.replace("$share/workers/tele/+/STATE", "$share/workers/stat/#");
    let (code, out) = run_text(dir.path(), "share.toml", &none.replace("[[step]]\nexpect = { publish", "#"), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(" reached none of them"), "{out}");
    // A member that gets what the reference did not (here: the reference listens elsewhere).
    let extra = library.replace(
        "name = \"everything\"\nsubscribe = [\"tele/+/STATE\"]",
        "name = \"everything\"\nsubscribe = [\"tele/tasmota_000001/STATE\"]",
    );
    let (code, out) = run_text(dir.path(), "share.toml", &extra.replace("topic = \"tele/+/STATE\" } }", "} }"), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("which operator 'everything' did not"), "{out}");
    // Nothing to compare: no time has passed since the action.
    let early = library.replace("advance = \"60s\"", "console = \"Power\"");
    let (code, out) = run_text(dir.path(), "share.toml", &early, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("expected messages on tele/+/STATE to compare, but operator 'everything' received none since the last action or match"), "{out}");
}

#[test]
fn operators_reach_the_embedded_broker_over_websocket_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    for (field, over) in [("ws_port = 8080", "WebSocket"), ("wss_port = 8443", "WSS")] {
        for protocol in [4, 5] {
            let t = format!(
                "transcript = false\n[[device]]\nsettings = {{ mqtt_host = \"mqtt.lan\" }}\n[[broker]]\nhost = \"mqtt.lan\"\n\
                 [[operator]]\nprotocol = {protocol}\n{field}\nsubscribe = [\"stat/+/RESULT\"]\n\
                 [[step]]\nexpect = {{ record = {{ kind = \"open\", detail_regex = '^operator operator over {over} ' }}, since = \"start\" }}\n\
                 [[step]]\nexpect = {{ console = \"MQT: Connected\" }}\n\
                 [[step]]\nmqtt_publish = {{ topic = \"cmnd/tasmota_4B3316/Power\", payload = \"ON\" }}\n\
                 [[step]]\nexpect = {{ publish = {{ topic = \"stat/tasmota_4B3316/RESULT\", json = {{ POWER = \"ON\" }} }} }}\n"
            );
            let (code, out) = run_text(dir.path(), "ws.toml", &t, &[]);
            assert_eq!(code, Some(0), "{field} {protocol}: {out}");
            // The broker's record tells the link apart: an operator on plain MQTT fails it.
            let plain = t.replace(&format!("{field}\n"), "");
            let (code, out) = run_text(dir.path(), "ws.toml", &plain, &[]);
            assert_eq!(code, Some(1), "{field} {protocol}: {out}");
        }
    }
}

/// The operator over WebSocket to a real broker (`tasmota-sim broker --ws-listen`), in
/// real time with `--broker`; the device takes plain MQTT.
#[test]
fn an_operator_reaches_a_real_broker_over_websocket_with_broker_url() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, ws) = (common::free_port(), common::free_port());
    let _broker = common::BrokerProcess::start(&[
        "--listen",
        &format!("127.0.0.1:{mqtt}"),
        "--ws-listen",
        &format!("127.0.0.1:{ws}"),
    ]);
    let t = format!(
        "transcript = false\n[[device]]\nsettings = {{ mqtt_host = \"mqtt.lan\" }}\n[[broker]]\nhost = \"mqtt.lan\"\nexternal = true\n\
         [[operator]]\nprotocol = 5\nws_port = {ws}\nsubscribe = [\"stat/+/RESULT\"]\n\
         [[step]]\nexpect = {{ console = \"MQT: Connected\" }}\n\
         [[step]]\nadvance = \"1s\"\n\
         [[step]]\nmqtt_publish = {{ topic = \"cmnd/tasmota_4B3316/Power\", payload = \"ON\", user_properties = {{ a = \"b\" }} }}\n\
         [[step]]\nexpect = {{ publish = {{ topic = \"stat/tasmota_4B3316/RESULT\", json = {{ POWER = \"ON\" }} }} }}\n"
    );
    let url = format!("mqtt://127.0.0.1:{mqtt}");
    let (code, out) = run_text(dir.path(), "ws-real.toml", &t, &["--broker", &url]);
    assert_eq!(code, Some(0), "{out}");
    // The same operator on a port with no WebSocket listener fails before the first step.
    let (code, out) = run_text(
        dir.path(),
        "ws-real.toml",
        &t.replace(&format!("ws_port = {ws}"), &format!("ws_port = {mqtt}")),
        &["--broker", &url],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("before the first step: operator 'operator'"), "{out}");
}

/// The files `scenario --help` names in its examples exist (one example named a file that
/// had been renamed).
#[test]
fn the_help_examples_name_files_that_exist() {
    let out = Command::new(env!("CARGO_BIN_EXE_tasmota-sim"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["scenario", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let mut named = 0;
    for line in help.lines().map(str::trim).filter(|l| l.starts_with("tasmota-sim scenario ")) {
        for arg in line.split_whitespace().filter(|a| a.starts_with("scenarios/")) {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(arg).exists(),
                "`{line}` names {arg}, which does not exist"
            );
            named += 1;
        }
    }
    assert!(named >= 4, "the examples name {named} scenario paths:\n{help}");
}

/// Two operators with one name, and a WebSocket operator with no login on the aws-iot
/// broker, are bad input (exit 2, the file, line and problem), not a failure at run time.
#[test]
fn operator_mistakes_are_caught_when_the_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let twice = "transcript = false\n[[broker]]\nhost = \"mqtt.lan\"\n\
                 [[operator]]\nname = \"w1\"\n[[operator]]\nname = \"w1\"\n\
                 [[step]]\nadvance = \"1s\"\n";
    let (code, out) = run_text(dir.path(), "twice.toml", twice, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("twice.toml:6:") && out.contains("a second operator named 'w1'"), "{out}");

    let aws = "transcript = false\n[[broker]]\nprofile = \"aws-iot\"\n\
               [[operator]]\nname = \"dash\"\nprotocol = 5\nwss_port = 8443\n\
               [[step]]\nadvance = \"1s\"\n";
    let (code, out) = run_text(dir.path(), "aws.toml", aws, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("aws.toml:4:") && out.contains("custom authorizer only"), "{out}");
}

/// A JUnit report with nowhere to go is bad input before anything runs.
#[test]
fn a_junit_path_in_a_missing_folder_exits_2_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("no-such-folder/x.xml");
    let o = sim(&["scenarios/mqttlog.toml", "--junit", junit.to_str().unwrap()], dir.path());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("--junit") && out.contains("does not exist"), "{out}");
    assert!(!out.contains("PASS"), "it ran the scenario first: {out}");
}
