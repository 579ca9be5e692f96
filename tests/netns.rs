//! Several machines, simulated on one: three "hosts" as Linux network namespaces on one
//! private LAN (10.213.0.0/24, a bridge in the broker's namespace, a veth to each fleet
//! host), the embedded broker on the broker host's address, one fleet shard on each of
//! the other two, and `fleet merge` of their reports. A fourth namespace with no link to
//! the LAN shows that the shards' traffic crosses only the links this test made.
//!
//! Needs root and iproute2 (`ip netns`); without them the test says it skipped, unless
//! `CI=true`, where it fails.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{read_lines, BIN};
use serde_json::Value;

const DEVICES: u64 = 100;
const BROKER_ADDR: &str = "10.213.0.1";
const BROKER_PORT: u16 = 1883;

/// The namespaces and processes of one run; dropped (even on a failed assertion), it
/// kills the processes and deletes the namespaces, which takes their veths along.
struct Hosts {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Hosts {
    fn new() -> Hosts {
        Hosts { prefix: format!("tsim-{}", std::process::id()), namespaces: vec![], children: vec![] }
    }

    /// Adds namespace `<prefix>-<host>` with its loopback up; its full name.
    fn add(&mut self, host: &str) -> Result<String, String> {
        let name = format!("{}-{host}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Starts `tasmota-sim ARGS` in namespace `ns`, stdout and stderr read line by line.
    fn spawn(&mut self, ns: &str, args: &[&str]) -> (usize, Receiver<String>, Receiver<String>) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ip netns exec");
        let out = read_lines(child.stdout.take().unwrap());
        let err = read_lines(child.stderr.take().unwrap());
        self.children.push(child);
        (self.children.len() - 1, out, err)
    }

    /// Waits until child `k` has closed its stderr (it ended), then for its exit; its exit
    /// code and stderr.
    fn finish(&mut self, k: usize, err: &Receiver<String>, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let mut lines = vec![];
        loop {
            match err.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("child {k} still runs after {timeout:?}; stderr so far:\n{}", lines.join("\n"))
                }
            }
        }
        let status = self.children[k].wait().expect("wait for a child");
        (status.code(), lines.join("\n"))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("\nnetns.rs: {e}\n").as_bytes());
            }
        }
    }
}

/// Runs `ip ARGS`; on failure, the command and what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether this machine can make network namespaces: root, `ip`, and `ip netns add`
/// works (checked by the first namespace). If not, the test says it skipped (straight to
/// stderr, as `common::have` does, so libtest does not hide it) or, with `CI=true`, fails.
fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("network namespaces cannot be made here and CI=true: {why} (CI must run as root with iproute2)");
    }
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let line = format!("\nSKIPPED {test}: {why} (needs root and iproute2's `ip netns`)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn have_ip() -> bool {
    Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn read_report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

#[test]
fn two_shards_on_two_hosts_reach_a_broker_on_a_third_and_merge() {
    if !have_ip() {
        return skip("`ip` (iproute2) not found");
    }
    if !is_root() {
        return skip("not root");
    }
    let mut hosts = Hosts::new();
    let broker = match hosts.add("broker") {
        Ok(ns) => ns,
        Err(e) => return skip(&e),
    };
    // The LAN: a bridge on the broker host, a veth from it to each fleet host.
    let lan = |hosts: &mut Hosts| -> Result<[String; 3], String> {
        let shard0 = hosts.add("shard0")?;
        let shard1 = hosts.add("shard1")?;
        // No link at all: only its loopback.
        let alone = hosts.add("alone")?;
        ip(&["-n", &broker, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &broker, "addr", "add", &format!("{BROKER_ADDR}/24"), "dev", "br0"])?;
        ip(&["-n", &broker, "link", "set", "br0", "up"])?;
        for (i, ns) in [&shard0, &shard1].into_iter().enumerate() {
            let port = format!("lan{i}");
            ip(&["-n", &broker, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            ip(&["-n", &broker, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &broker, "link", "set", &port, "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("10.213.0.{}/24", i + 2), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok([shard0, shard1, alone])
    };
    let [shard0, shard1, alone] = lan(&mut hosts).unwrap_or_else(|e| panic!("the LAN between the namespaces: {e}"));

    // The broker listens on its host's LAN address only: not on a loopback.
    let listen = format!("{BROKER_ADDR}:{BROKER_PORT}");
    let (_, broker_out, _broker_err) = hosts.spawn(&broker, &["broker", "-q", "--listen", &listen]);
    let url = format!("mqtt://{listen}");
    match broker_out.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => assert_eq!(line, format!("listening on {url} (profile plain)")),
        Err(e) => panic!("the broker in {broker} did not print its listener: {e:?}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let devices = DEVICES.to_string();
    let mut shards = vec![];
    for (i, ns) in [&shard0, &shard1].into_iter().enumerate() {
        let json = dir.path().join(format!("r{i}.json"));
        let shard = format!("{i}/2");
        #[rustfmt::skip]
        let args = [
            "fleet", "--devices", &devices, "--broker", &url, "--shard", &shard, "--for", "15s",
            "--commands-per-second", "4", "--commands-from", "5s", "--group-command", "Power ON@10s",
            "--json", json.to_str().unwrap(), "-q",
        ];
        let (k, _, err) = hosts.spawn(ns, &args);
        shards.push((k, err, json));
    }
    // The host with no link, at the same time: to the broker's address (no route), and to
    // 127.0.0.1:1883 (its own loopback, where nothing listens: not the machine's).
    let mut lonely = vec![];
    for (i, target) in [url.clone(), format!("mqtt://127.0.0.1:{BROKER_PORT}")].into_iter().enumerate() {
        let json = dir.path().join(format!("alone{i}.json"));
        #[rustfmt::skip]
        let args = ["fleet", "--devices", "4", "--broker", &target, "--for", "3s", "--json", json.to_str().unwrap(), "-q"];
        let (k, _, err) = hosts.spawn(&alone, &args);
        lonely.push((k, err, json, target));
    }
    for (k, err, json, target) in lonely {
        let (code, stderr) = hosts.finish(k, &err, Duration::from_secs(20));
        assert_eq!(code, Some(1), "a fleet in {alone} reached {target}: {stderr}");
        let host_port = target.trim_start_matches("mqtt://");
        assert!(stderr.contains(&format!("cannot reach {host_port}")), "{stderr}");
        assert!(!json.exists(), "a fleet in {alone} wrote a report");
    }

    let mut files = vec![];
    for (i, (k, err, json)) in shards.into_iter().enumerate() {
        let (code, stderr) = hosts.finish(k, &err, Duration::from_secs(40));
        assert_eq!(code, Some(0), "shard {i}/2: {stderr}");
        // Each shard counts its half, and only its half.
        let r = read_report(&json);
        let half = DEVICES / 2;
        assert_eq!(r["target"], url.as_str());
        assert_eq!(r["shards"], serde_json::json!([{"index": i, "count": 2}]), "{r}");
        for key in ["devices", "connected", "connects"] {
            assert_eq!(r[key], half, "shard {i}/2 {key}: {r}");
        }
        assert_eq!(r["failures"], serde_json::json!({}), "shard {i}/2: {r}");
        assert_eq!(r["commands_answered"], r["commands_sent"], "shard {i}/2: {r}");
        assert_eq!(r["group_commands"][0]["answered"], half, "shard {i}/2: {r}");
        files.push(json.to_str().unwrap().to_string());
    }

    let out = Command::new(BIN)
        .args(["fleet", "merge", &files[0], &files[1], "--json", "-", "-q"])
        .output()
        .expect("run tasmota-sim fleet merge");
    assert!(out.status.success(), "fleet merge: {}", String::from_utf8_lossy(&out.stderr));
    let merged: Value = serde_json::from_slice(&out.stdout).expect("fleet merge --json - prints one report");
    for key in ["devices", "connected", "connects"] {
        assert_eq!(merged[key], DEVICES, "merged {key}: {merged}");
    }
    assert_eq!(merged["failures"], serde_json::json!({}), "{merged}");
    let sent = merged["commands_sent"].as_u64().unwrap();
    assert!(sent > 0, "no command was sent: {merged}");
    assert_eq!(merged["commands_answered"], sent, "{merged}");
    assert_eq!(merged["latency_us"]["count"], sent, "{merged}");
    assert_eq!(merged["group_commands"][0]["command"], "Power ON");
    assert_eq!(merged["group_commands"][0]["answered"], DEVICES, "{merged}");
    assert_eq!(merged["shards"].as_array().map(Vec::len), Some(2), "{merged}");
}
