//! `tasmota-sim fleet` as a user runs it: a virtual fleet on the embedded broker, a
//! broker outage and the firmware's backoff, a real-socket fleet against a Mosquitto the
//! test starts, and bad input.

mod common;

use std::process::{Command, Output};

use common::{have, Mosquitto, BIN};
use serde_json::Value;

fn fleet(args: &[&str]) -> Output {
    Command::new(BIN).arg("fleet").args(args).output().expect("run tasmota-sim fleet")
}

/// Runs a fleet that must succeed and returns its JSON report.
fn report(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut all = args.to_vec();
    all.extend(["--json", json.to_str().unwrap()]);
    let out = fleet(&all);
    assert!(out.status.success(), "{:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

/// The report without what depends on the machine (wall time, memory, CPU).
fn without_machine(mut r: Value) -> Value {
    for key in ["wall_seconds", "rss_bytes_per_device", "cpu_us_per_device"] {
        r.as_object_mut().unwrap().remove(key);
    }
    r
}

#[test]
fn a_virtual_fleet_of_500_connects_and_answers_every_command() {
    let args = [
        "--devices",
        "500",
        "--virtual",
        "--for",
        "2m",
        "--commands-per-second",
        "5",
        "--group-command",
        "Power ON@60s",
        "--quiet",
    ];
    let r = report(&args);
    assert_eq!(r["devices"], 500);
    assert_eq!(r["connected"], 500);
    assert_eq!(r["connects"], 500);
    assert_eq!(r["failures"], serde_json::json!({}));
    // WiFi is up 3.5 s after boot and the first attempt connects: on the virtual clock
    // every link opens and hears its CONNACK in the same instant, so the in-flight cap (64)
    // holds none back for long.
    assert_eq!(r["connect_seconds"], 3.5);
    let per_second = r["connects_per_second"].as_array().unwrap();
    assert_eq!(per_second[3].as_u64(), Some(500));
    let sent = r["commands_sent"].as_u64().unwrap();
    assert!(sent > 400, "{sent} commands in 2 minutes at 5/s");
    assert_eq!(r["commands_answered"].as_u64().unwrap(), sent);
    assert_eq!(r["latency_us"]["count"].as_u64().unwrap(), sent);
    assert_eq!(r["group_commands"][0]["answered"], 500);
    assert_eq!(r["group_commands"][0]["command"], "Power ON");
    // 500 devices for 2 minutes: 1,000 connection-minutes.
    assert_eq!(r["aws_iot"]["connection_minutes"], 1000);
    assert!(r["histograms"]["latency_us"].as_str().unwrap().starts_with("HISTF"));
    // The virtual clock gives the same fleet on every run.
    assert_eq!(without_machine(report(&args)), without_machine(r));
}

#[test]
fn a_broker_outage_shows_the_firmware_backoff() {
    // The broker goes away at 60 s for 25 s. Every device fails to reconnect at once
    // (rc -2, "Retry in 10 sec"), again 10 s later ("Retry in 20 sec"), and connects 20 s
    // after that: the storm comes at 92 s, all in one second.
    let r = report(&["--devices", "50", "--virtual", "--for", "3m", "--broker-outage", "60s/25s", "--quiet"]);
    let per_second: Vec<(usize, u64)> = r["connects_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(s, n)| (s, n.as_u64().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(per_second, [(3, 50), (92, 50)]);
    assert_eq!(r["failures"], serde_json::json!({"rc -2": 100}));
    assert_eq!(r["connected"], 50);
}

#[test]
fn a_real_socket_fleet_against_mosquitto() {
    if !have("mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), common::free_port(), "allow_anonymous true\nmax_connections -1");
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let r = report(&[
        "--devices",
        "300",
        "--broker",
        &url,
        "--for",
        "8s",
        "--commands-per-second",
        "40",
        "--connect-rate",
        "1000",
        "--quiet",
    ]);
    assert_eq!(r["connected"], 300);
    assert_eq!(r["failures"], serde_json::json!({}));
    let sent = r["commands_sent"].as_u64().unwrap();
    assert!(sent > 50, "{sent}");
    assert_eq!(r["commands_answered"].as_u64().unwrap(), sent);
    assert!(r["latency_us"]["p99"].as_u64().unwrap() > 0);
}

#[test]
fn slo_terms_decide_the_exit_code() {
    let ok = fleet(&["--devices", "5", "--virtual", "--for", "20s", "--slo", "unanswered=0,disconnected=0", "-q"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    // No command was sent, so no reply can be under 5 ms: the term is missed.
    let missed = fleet(&["--devices", "5", "--virtual", "--for", "20s", "--slo", "p99<5ms", "-q"]);
    assert_eq!(missed.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missed.stderr);
    assert!(err.contains("SLO missed: p99 command latency"), "{err}");
}

#[test]
fn bad_input_exits_2_naming_it() {
    let cases: [(&[&str], &str); 6] = [
        (&["--devices", "5"], "--virtual, --embedded or --broker URL"),
        (&["--devices", "0", "--virtual"], "--devices"),
        (&["--devices", "5", "--virtual", "--slo", "p98<1ms"], "--slo 'p98<1ms'"),
        (&["--devices", "5", "--virtual", "--tele-period", "5"], "--tele-period 5"),
        (&["--devices", "5", "--broker", "mqtt://127.0.0.1:1", "--broker-outage", "1s/1s"], "--broker-outage"),
        (&["--devices", "5", "--virtual", "--group-command", "Power@soon"], "--group-command"),
    ];
    for (args, named) in cases {
        let out = fleet(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?} should name {named}: {err}");
    }
}

/// A broker nobody listens on: exit 1, the OS's reason in words (not `Tcp`), no report.
#[test]
fn a_broker_nobody_listens_on_is_named_with_the_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let url = format!("mqtt://127.0.0.1:{port}");
    let out = fleet(&["--devices", "2", "--broker", &url, "--for", "2s", "-q", "--json", json.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!("cannot reach 127.0.0.1:{port}: TCP connect failed: Connection refused");
    assert!(err.contains(&want), "want {want:?} in: {err}");
    assert!(!json.exists(), "a fleet that never reached its broker wrote a report");
}

#[test]
fn a_fleet_file_makes_groups_of_devices() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[[group]]\ncount = 3\ntele_period = 60\n\n[[group]]\ncount = 2\nprofile = \"sonoff-4ch\"\nmac_base = \"5C:CF:7F:10:00:00\"\n",
    )
    .unwrap();
    let r = report(&[
        "--fleet",
        file.to_str().unwrap(),
        "--virtual",
        "--for",
        "90s",
        "--group-command",
        "Power1 ON@30s",
        "-q",
    ]);
    assert_eq!(r["devices"], 5);
    assert_eq!(r["connected"], 5);
    assert_eq!(r["group_commands"][0]["answered"], 5);
    // A bad group names the file, the line and the column.
    std::fs::write(&file, "[[group]]\ncount = 2\n\n[[group]]\ncount = -1\n").unwrap();
    let out = fleet(&["--fleet", file.to_str().unwrap(), "--virtual"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fleet.toml:5:9: count -1: a group has at least 1 device"), "{err}");
    // --fleet and --devices do not mix.
    let out = fleet(&["--fleet", file.to_str().unwrap(), "--devices", "3", "--virtual"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn aws_quotas_refuse_a_workload_past_them_before_any_connect() {
    let aws = "mqtts://a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com:443";
    let out = fleet(&["--devices", "5", "--broker", aws, "--commands-per-second", "80"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("100 publishes per second per connection"));
    let out = fleet(&["--devices", "5", "--broker", aws, "--connect-rate", "900"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("500 CONNECT requests per second per account"));
}

#[test]
fn setoptions_reach_every_device() {
    // SetOption59: a power change also publishes tele/<topic>/STATE, so the same commands
    // (same seed) make more device messages with it than without.
    let base = ["--devices", "5", "--virtual", "--for", "30s", "--commands-per-second", "2", "-q"];
    let plain = report(&base);
    let mut with = base.to_vec();
    with.extend(["--setoption", "59=1"]);
    let so59 = report(&with);
    assert_eq!(so59["commands_answered"], plain["commands_answered"]);
    let answered = plain["commands_answered"].as_u64().unwrap();
    assert!(answered > 0);
    assert_eq!(
        so59["messages_out"].as_u64().unwrap(),
        plain["messages_out"].as_u64().unwrap() + answered,
        "one STATE per toggle"
    );
    let out = fleet(&["--devices", "5", "--virtual", "--setoption", "300=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--setoption"));
}

#[test]
fn an_aws_iot_fleet_takes_the_firmware_aws_path_through_the_custom_authorizer() {
    // TLS on 443 with ALPN mqtt, SNI the endpoint, TasmotaAuth: every device connects,
    // answers, and its retained LWT is no problem (the firmware turns retain off).
    let args = ["--devices", "40", "--virtual", "aws-iot", "--for", "90s", "--commands-per-second", "2"];
    let r = report(&[&args[..], &["--group-command", "Power ON@60s", "-q"]].concat());
    assert_eq!(
        (r["devices"].as_u64(), r["connected"].as_u64(), r["connects"].as_u64()),
        (Some(40), Some(40), Some(40))
    );
    assert_eq!(r["failures"], serde_json::json!({}));
    assert_eq!(r["commands_answered"], r["commands_sent"]);
    assert_eq!(r["group_commands"][0]["answered"], 40);
    assert!(r["target"].as_str().unwrap().contains("aws-iot"), "{}", r["target"]);
    // Naming an authorizer the endpoint does not have: AWS closes every connect after the
    // handshake with no CONNACK, which the firmware logs as TLS error 0 (the handshake
    // worked) and rc -4 (MQTT_CONNECTION_TIMEOUT), every attempt.
    let out = fleet(
        &[&args[..], &["--user", "tasmota?x-amz-customauthorizer-name=Other", "--password", "x", "-q", "--json", "-"]]
            .concat(),
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["connected"], 0, "{r}");
    let failures = r["failures"].as_object().unwrap();
    assert_eq!(failures.keys().collect::<Vec<_>>(), ["rc -4", "tls 0"], "{r}");
    assert_eq!(failures["rc -4"], failures["tls 0"]);
}

/// The processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        if after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

/// Starts a fleet of workers and waits until all `k` workers run. The caller waits for
/// the fleet it gets back (clippy cannot see that through the return).
#[allow(clippy::zombie_processes)]
fn start_workers(args: &[&str], k: usize) -> (std::process::Child, Vec<u32>) {
    let mut parent = Command::new(BIN)
        .arg("fleet")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let workers = children_of(parent.id());
        if workers.len() == k {
            return (parent, workers);
        }
        if std::time::Instant::now() > deadline {
            let _ = parent.kill();
            let _ = parent.wait();
            panic!("{} of {k} workers after 20 s", workers.len());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn wait_gone(pids: &[u32]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids.iter().any(|p| running(*p)) {
        assert!(std::time::Instant::now() < deadline, "workers still running: {pids:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn three_shards_merged_count_what_one_run_counts() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--devices", "90", "--virtual", "--for", "90s", "--group-command", "Power ON@60s", "-q"];
    let whole = report(&args);
    let mut files = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let r = report(&[&args[..], &["--shard", &shard]].concat());
        assert_eq!(r["devices"], 30);
        assert_eq!(r["shards"], serde_json::json!([{"index": i, "count": 3}]));
        let f = dir.path().join(format!("r{i}.json"));
        std::fs::write(&f, r.to_string()).unwrap();
        files.push(f.to_str().unwrap().to_string());
    }
    let out = fleet(
        &[&["merge"], &files.iter().map(String::as_str).collect::<Vec<_>>()[..], &["--json", "-", "-q"]].concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let merged: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["devices", "connected", "connects", "messages_out", "group_commands", "failures"] {
        assert_eq!(merged[key], whole[key], "{key}");
    }
    // Shards never collide: every device of the fleet connected once, under its own MAC.
    assert_eq!(merged["connects"], 90);
    // A report merged twice, or a shard missing, is refused (exit 2), naming the file.
    let twice = fleet(&["merge", &files[0], &files[0], &files[1], &files[2]]);
    assert_eq!(twice.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("is already in"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );
    let missing = fleet(&["merge", &files[0], &files[2]]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("shards 1/3 of 3 are missing"));
    // JSON lines (as `kubectl logs` gives them) with a stray line: the line is named.
    let lines = dir.path().join("pods.jsonl");
    let one_line = |f: &str| serde_json::from_str::<Value>(&std::fs::read_to_string(f).unwrap()).unwrap().to_string();
    std::fs::write(&lines, format!("{}\n{}\nfleet: 30 devices\n", one_line(&files[0]), one_line(&files[1]))).unwrap();
    let stray = fleet(&["merge", lines.to_str().unwrap()]);
    assert_eq!(stray.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&stray.stderr).contains("pods.jsonl:3: not a fleet report"));
}

#[test]
fn an_explicit_target_wins_over_the_broker_in_the_environment() {
    let out = Command::new(BIN)
        .args(["fleet", "--devices", "3", "--virtual", "--for", "10s", "-q", "--json", "-"])
        .env("TASMOTA_SIM_BROKER", "mqtt://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["target"].as_str().unwrap().starts_with("virtual"), "{}", r["target"]);
    // Both on the command line: bad input.
    let out = fleet(&["--devices", "3", "--virtual", "--broker", "mqtt://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--broker and --virtual/--embedded"));
}

#[test]
fn the_shard_comes_from_job_completion_index() {
    let out = Command::new(BIN)
        .args(["fleet", "--devices", "10", "--virtual", "--for", "10s", "--shards", "5", "-q", "--json", "-"])
        .env("JOB_COMPLETION_INDEX", "4")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["devices"].as_u64(), &r["shards"]), (Some(2), &serde_json::json!([{"index": 4, "count": 5}])));
    let out = Command::new(BIN)
        .args(["fleet", "--devices", "10", "--virtual", "--shards", "5"])
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JOB_COMPLETION_INDEX is not set"));
    let out = Command::new(BIN)
        .args(["fleet", "--devices", "10", "--virtual", "--shards", "5"])
        .env("JOB_COMPLETION_INDEX", "5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "index 5 of 5 is no shard");
}

#[test]
fn worker_processes_make_one_report() {
    let r = report(&[
        "--devices",
        "120",
        "--virtual",
        "--for",
        "90s",
        "--processes",
        "3",
        "--group-command",
        "Power ON@60s",
        "-q",
    ]);
    assert_eq!((r["devices"].as_u64(), r["connected"].as_u64()), (Some(120), Some(120)));
    assert_eq!(r["shards"].as_array().unwrap().len(), 3);
    assert_eq!(r["group_commands"][0]["answered"], 120);
}

#[test]
fn a_signal_to_the_fleet_stops_every_worker() {
    let (mut parent, workers) =
        start_workers(&["--devices", "40", "--embedded", "--for", "5m", "--processes", "2", "-q"], 2);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(parent.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = parent.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_gone(&workers);
}

#[test]
fn workers_die_with_a_killed_fleet() {
    let (mut parent, workers) =
        start_workers(&["--devices", "40", "--embedded", "--for", "5m", "--processes", "2", "-q"], 2);
    parent.kill().unwrap();
    parent.wait().unwrap();
    // No orphans: the kernel kills each worker when its parent dies (PDEATHSIG).
    wait_gone(&workers);
}

#[test]
fn a_worker_that_dies_is_reported_and_its_shard_missing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let (parent, workers) = start_workers(
        &["--devices", "40", "--embedded", "--for", "4s", "--processes", "2", "-q", "--json", json.to_str().unwrap()],
        2,
    );
    // Which shard is which: the worker's own arguments say.
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", workers[0])).unwrap();
    let shard = cmdline.split('\0').skip_while(|a| *a != "--shard").nth(1).unwrap().to_string();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(workers[0] as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = parent.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("worker of shard {shard} was killed by signal 9 (SIGKILL)")), "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["devices"], 20, "the other shard's devices only");
    let (i, n) = shard.split_once('/').unwrap();
    assert_eq!(
        r["missing_shards"],
        serde_json::json!([{"index": i.parse::<u32>().unwrap(), "count": n.parse::<u32>().unwrap()}])
    );
}

#[test]
fn a_shard_started_late_still_counts_the_group_answers_of_its_devices() {
    // Shard 0 publishes the group command at its 8 s; shard 1, started 2 s later, sees its
    // devices answer at its own 6 s, before its clock reaches the command.
    let broker = common::BrokerProcess::start(&["--profile", "plain", "--listen", "127.0.0.1:0"]);
    let url = broker.listening[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let shard = |i: u32| {
        let json = dir.path().join(format!("r{i}.json"));
        let child = Command::new(BIN)
            .args(["fleet", "--devices", "20", "--broker", &url, "--for", "12s", "--group-command", "Power ON@8s"])
            .args(["--shard", &format!("{i}/2"), "-q", "--json", json.to_str().unwrap()])
            .spawn()
            .unwrap();
        (child, json)
    };
    let (mut first, first_json) = shard(0);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (mut second, second_json) = shard(1);
    assert!(first.wait().unwrap().success());
    assert!(second.wait().unwrap().success());
    for json in [first_json, second_json] {
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(r["group_commands"][0]["answered"], 10, "{}: {}", json.display(), r["group_commands"]);
    }
}

/// `--operator-protocol 5`: the fleet's operator client speaks MQTT 5 (the devices stay
/// MQTT 3.1.1); the report is the same fleet's as with the 3.1.1 operator.
#[test]
fn an_mqtt5_operator_gives_the_same_report() {
    let args = [
        "--devices",
        "50",
        "--virtual",
        "--for",
        "90s",
        "--commands-per-second",
        "5",
        "--group-command",
        "Power ON@60s",
        "--quiet",
    ];
    // The same but for the protocol the report says the operator spoke.
    let protocol = |mut r: Value, level: u64| {
        assert_eq!(r.as_object_mut().unwrap().remove("operator_protocol"), Some(level.into()), "{r}");
        r
    };
    let v4 = protocol(without_machine(report(&args)), 4);
    let v5 = protocol(without_machine(report(&[&args[..], &["--operator-protocol", "5"]].concat())), 5);
    assert!(v5["commands_answered"].as_u64().unwrap() > 300, "{v5}");
    assert_eq!(v5["group_commands"][0]["answered"], 50);
    assert_eq!(v5, v4);
    let explicit = protocol(without_machine(report(&[&args[..], &["--operator-protocol", "4"]].concat())), 4);
    assert_eq!(explicit, v4);
    for bad in ["3", "6", "five"] {
        let out = fleet(&["--devices", "5", "--virtual", "--operator-protocol", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--operator-protocol"), "{bad}: {err}");
        assert!(err.contains("4 (MQTT 3.1.1") && err.contains("5 (MQTT 5)"), "{bad}: {err}");
    }
}

/// What the broker saw: `tasmota-sim broker`'s connection log names each client's
/// protocol as Mosquitto does (p2 MQTT 3.1.1, p5 MQTT 5).
#[test]
fn the_fleet_operator_connects_with_the_protocol_asked_for() {
    for (level, p) in [("4", "p2"), ("5", "p5")] {
        let port = common::free_port();
        let mut broker = Command::new(BIN)
            .args(["broker", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = common::read_lines(broker.stdout.take().unwrap());
        let log = common::read_lines(broker.stderr.take().unwrap());
        let listening = lines.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        assert!(listening.starts_with("listening on "), "{listening}");
        let url = format!("mqtt://127.0.0.1:{port}");
        let out = fleet(&["--devices", "2", "--broker", &url, "--for", "6s", "--operator-protocol", level, "--quiet"]);
        let _ = broker.kill();
        let _ = broker.wait();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let log: Vec<String> = log.try_iter().collect();
        let operator: Vec<&String> = log.iter().filter(|l| l.contains("as tasmota-sim-fleet-operator (")).collect();
        assert_eq!(operator.len(), 1, "{log:#?}");
        assert!(operator[0].contains(&format!("as tasmota-sim-fleet-operator ({p}, c1, k60")), "{}", operator[0]);
        // The devices speak MQTT 3.1.1 either way.
        assert!(log.iter().any(|l| l.contains("as DVES_000000 (p2, ")), "{log:#?}");
    }
}

/// A broker that refuses the operator's CONNECT (a wrong password) is the user's error,
/// like a broker nobody listens on: the fleet stops at once (not at `--for`), names the
/// broker and the refusal in words, never prints the password, writes no report and
/// exits 1; with several brokers and worker processes too. The right password still runs.
#[test]
fn a_refused_operator_stops_the_fleet_naming_the_broker_and_the_refusal() {
    let broker = common::BrokerProcess::start(&["--listen", "127.0.0.1:0", "--user", "bob:secret"]);
    let url = broker.listening[0].clone();
    let at = url.trim_start_matches("mqtt://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let two = format!("{url},{url}");
    let cases: [(&[&str], String); 3] = [
        (&["--broker", &url], format!("refused by {at}: CONNACK 5 (not authorised); check --user/--password")),
        (
            &["--broker", &url, "--operator-protocol", "5"],
            format!("refused by {at}: CONNACK 0x87 (Not authorized), MQTT 5; check --user/--password"),
        ),
        (&["--broker", &two, "--processes", "2"], format!("refused by {at}: CONNACK 5 (not authorised)")),
    ];
    for (args, want) in cases {
        let started = std::time::Instant::now();
        #[rustfmt::skip]
        let base = ["--devices", "3", "--user", "bob", "--password", "badpw99", "--for", "60s", "--json", json.to_str().unwrap()];
        let out = fleet(&[&base[..], args].concat());
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!("the fleet's operator client was {want}")),
            "{args:?}: want {want:?} in: {stderr}"
        );
        assert!(
            !stdout.contains("badpw99") && !stderr.contains("badpw99"),
            "{args:?} printed the password: {stdout}{stderr}"
        );
        assert!(!json.exists(), "{args:?}: a fleet whose operator was refused wrote a report");
        assert!(started.elapsed() < std::time::Duration::from_secs(40), "{args:?} ran to --for 60s");
    }
    let r = report(&["--devices", "3", "--broker", &url, "--user", "bob", "--password", "secret", "--for", "6s", "-q"]);
    assert_eq!((r["connected"].as_u64(), r["operator_link_losses"].as_u64()), (Some(3), Some(0)), "{r}");
    assert_eq!(r["operator_protocol"], 4);
}

/// A broker that accepts the operator's TCP link and closes it before any CONNACK (as AWS
/// IoT answers a refused custom-auth login) stops the run after three tries, not at --for.
#[test]
fn an_operator_closed_before_its_connack_stops_the_fleet() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let url = format!("mqtt://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    #[rustfmt::skip]
    let out = fleet(&["--devices", "2", "--broker", &url, "--password", "badpw99", "--user", "u", "--for", "60s", "--json", json.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let want = format!("never got a session from 127.0.0.1:{port}: its link ended 3 times before it was subscribed");
    assert!(stderr.contains(&want), "want {want:?} in: {stderr}");
    assert!(!stdout.contains("badpw99") && !stderr.contains("badpw99"), "{stdout}{stderr}");
    assert!(!json.exists(), "a fleet whose operator never had a session wrote a report");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "it ran to --for 60s");
}

/// A run in which no device ever connected measured nothing: the table says so, stderr
/// says what may be why, the report is written, and the run fails (exit 1); also merged
/// from worker processes.
#[test]
fn a_run_where_no_device_connected_fails_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    // The devices' first connect comes 3.5 s after boot.
    for workers in [&[][..], &["--processes", "2"]] {
        let base = ["--devices", "4", "--virtual", "--for", "2s", "--json", json.to_str().unwrap()];
        let out = fleet(&[&base[..], workers].concat());
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{workers:?}: {stdout}{stderr}");
        assert!(stdout.contains("connected            0 of 4: NO DEVICE CONNECTED during the run"), "{stdout}");
        assert!(stdout.contains("connect latency      n/a (no connect measured)"), "{stdout}");
        let want = "no device connected in 2.0 s of fleet time (4 devices): nothing was measured; no connect attempt \
                    failed either: --for may end before";
        assert!(stderr.contains(want), "{workers:?}: {stderr}");
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!((r["devices"].as_u64(), r["connects"].as_u64()), (Some(4), Some(0)), "{r}");
        std::fs::remove_file(&json).unwrap();
    }
}

/// The table names the operator's protocol, shows a latency with nothing measured as
/// n/a (not 0.00 ms), and the operator's link losses; the JSON has the protocol too.
#[test]
fn the_table_shows_the_operator_and_what_was_not_measured() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = fleet(&[
        "--devices",
        "3",
        "--virtual",
        "--for",
        "20s",
        "--operator-protocol",
        "5",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\n  operator             MQTT 5 (--operator-protocol 5)\n"), "{stdout}");
    assert!(stdout.contains("\n  command -> reply     n/a (no reply measured)\n"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["operator_protocol"], 5);
    assert_eq!(r["latency_us"]["count"], 0, "the JSON keeps its zeros: {r}");

    // The broker restarts: the operator loses its link too (once, then once a second of
    // the downtime); the table says how often.
    let out = fleet(&[
        "--devices",
        "3",
        "--virtual",
        "--for",
        "2m",
        "--broker-outage",
        "60s/25s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let lost = r["operator_link_losses"].as_u64().unwrap();
    assert!(lost > 0, "{r}");
    assert!(stdout.contains(&format!("\n  operator             MQTT 3.1.1, link lost {lost} times (")), "{stdout}");
}
