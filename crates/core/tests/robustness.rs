//! Property tests: outside input never panics the core, and every line typed gets the
//! firmware's treatment (an echo, then a reply or nothing), whatever it holds.

use proptest::prelude::*;
use tasmota_core::{BootReason, Device, Hardware, Instant, Output, Settings};

fn boot() -> Device {
    Device::boot(Hardware::default(), Settings::default(), BootReason::PowerOn, Instant::from_millis(0))
}

/// Runs the device until idle (or stopped) and returns every console line.
fn settle(d: &mut Device, mut now: u64, out: &mut Vec<String>) -> u64 {
    drain(d, out);
    let limit = now + 3_600_000;
    while d.is_busy() && now < limit {
        let Some(t) = d.poll_timeout() else { break };
        assert!(t.as_millis() >= now, "poll_timeout went back in time: {} < {now}", t.as_millis());
        now = t.as_millis();
        d.handle_timeout(t);
        drain(d, out);
    }
    now
}

fn drain(d: &mut Device, out: &mut Vec<String>) {
    while let Some(o) = d.poll_output() {
        if let Output::Log(l) = o {
            out.push(l.text);
        }
    }
}

/// Words that make random lines hit real commands often.
fn command_line() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "Backlog",
        "Backlog0",
        "Backlog2",
        "Power",
        "Power0",
        "Power2",
        "SetOption",
        "SO",
        "MqttHost",
        "MqttPort",
        "MqttPassword",
        "MqttPassword2",
        "Topic",
        "FullTopic",
        "GroupTopic",
        "Prefix",
        "Delay",
        "FriendlyName",
        "DeviceName",
        "Hostname",
        "StateText",
        "MqttFingerprint",
        "Publish",
        "TelePeriod",
        "Restart",
        "Reset",
        "_Power",
        "Bogus",
        "PowerRetain",
        "BlinkTime",
        "NoDelay",
    ]);
    let index = prop::option::of(0u32..300);
    let data = "[ -~]{0,40}";
    (names, index, data).prop_map(|(n, i, d)| match i {
        Some(i) => format!("{n}{i} {d}"),
        None => format!("{n} {d}"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..300), 0u64..5000), 1..8)) {
        let mut d = boot();
        let mut now = 0;
        let mut out = Vec::new();
        for (bytes, gap) in chunks {
            now += gap;
            d.handle_serial(&bytes, Instant::from_millis(now));
            now = settle(&mut d, now, &mut out);
            if d.is_stopped() {
                break;
            }
        }
    }

    #[test]
    fn every_typed_line_is_echoed(lines in prop::collection::vec(command_line(), 1..6)) {
        let mut d = boot();
        let mut out = Vec::new();
        drain(&mut d, &mut out);
        out.clear();
        for line in &lines {
            if d.is_stopped() {
                break;
            }
            let before = out.len();
            d.handle_serial(format!("{line}\n").as_bytes(), Instant::from_millis(0));
            drain(&mut d, &mut out);
            prop_assert_eq!(&out[before], &format!("CMD: {line}"));
            // A reply, when there is one, is well-formed JSON-ish: {"Key":...}
            for l in &out[before + 1..] {
                if let Some(payload) = l.strip_prefix("RSL: RESULT = ") {
                    prop_assert!(payload.starts_with("{\"") && payload.ends_with('}'), "bad reply {}", payload);
                }
            }
        }
        settle(&mut d, 0, &mut out);
    }

    #[test]
    fn long_and_binary_lines_never_run(len in 800usize..2500, junk in prop::collection::vec(128u8..=255, 1..20)) {
        let mut d = boot();
        let mut out = Vec::new();
        drain(&mut d, &mut out);
        out.clear();
        let mut line = "Power ON".as_bytes().to_vec();
        line.extend(std::iter::repeat_n(b'x', len));
        line.push(b'\n');
        d.handle_serial(&line, Instant::from_millis(0));
        drain(&mut d, &mut out);
        prop_assert_eq!(out, vec!["CMD: Serial buffer overrun".to_string()]);
        prop_assert_eq!(d.power(), 0);
        // Bytes above 127 discard what came before them on the line.
        let mut line = b"Power ON".to_vec();
        line.extend(&junk);
        line.extend(b"Power\n");
        let mut out = Vec::new();
        d.handle_serial(&line, Instant::from_millis(0));
        drain(&mut d, &mut out);
        prop_assert_eq!(&out[0], "CMD: Power");
        prop_assert_eq!(d.power(), 0);
    }
}

#[test]
fn settings_are_saved_once_a_second_after_a_change_and_before_a_restart() {
    let mut d = boot();
    let mut saves = Vec::new();
    let collect = |d: &mut Device, saves: &mut Vec<u64>, t: u64| {
        while let Some(o) = d.poll_output() {
            if let Output::SaveSettings(_) = o {
                saves.push(t);
            }
        }
    };
    // The boot count changed: saved on the first once-a-second tick, at boot.
    collect(&mut d, &mut saves, 0);
    d.handle_timeout(Instant::from_millis(1000));
    collect(&mut d, &mut saves, 1000);
    d.handle_serial(b"FriendlyName1 Lamp\n", Instant::from_millis(1500));
    for t in [1750, 2000, 2250, 3000] {
        d.handle_timeout(Instant::from_millis(t));
        collect(&mut d, &mut saves, t);
    }
    assert_eq!(saves, vec![0, 2000]);
    assert_eq!(d.settings().friendlyname[0], "Lamp");
    // A restart saves, then restarts a second later.
    d.handle_serial(b"MqttHost broker\n", Instant::from_millis(3100));
    let mut restarted = None;
    for t in [4000, 5000] {
        d.handle_timeout(Instant::from_millis(t));
        while let Some(o) = d.poll_output() {
            match o {
                Output::SaveSettings(_) => saves.push(t),
                Output::Restart(k) => restarted = Some((t, k)),
                _ => {}
            }
        }
    }
    assert_eq!(saves, vec![0, 2000, 4000]);
    assert_eq!(restarted, Some((5000, tasmota_core::RestartKind::Restart)));
    assert!(d.is_stopped());
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn a_save_carries_the_settings_as_they_were_when_it_was_decided() {
    // A driver that drains late must persist what the device saved, not what a later
    // command changed (that change is saved by its own SettingsSave a second later).
    let mut d = boot();
    while d.poll_output().is_some() {}
    d.handle_serial(b"FriendlyName1 Lamp\n", Instant::from_millis(1500));
    d.handle_timeout(Instant::from_millis(2000));
    d.handle_serial(b"FriendlyName1 Desk\n", Instant::from_millis(2100));
    let saved: Vec<String> = std::iter::from_fn(|| d.poll_output())
        .filter_map(|o| match o {
            Output::SaveSettings(s) => Some(s.friendlyname[0].clone()),
            _ => None,
        })
        .collect();
    assert_eq!(saved, ["Lamp"]);
    assert_eq!(d.settings().friendlyname[0], "Desk");
}

#[test]
fn boot_prints_the_banner_and_counts_boots() {
    let mut d = boot();
    let mut out = Vec::new();
    drain(&mut d, &mut out);
    assert_eq!(
        out,
        vec!["HDW: ESP8266EX", "Project tasmota - Tasmota Version 14.2.0(release-tasmota)-2_7_7(2024-08-15T08:00:00)"]
    );
    assert_eq!(d.settings().bootcount, 1);
    assert_eq!(d.topic(), "tasmota_4B3316");
    assert_eq!(d.client_id(), "DVES_4B3316");
    assert_eq!(d.hostname(), "tasmota-4B3316-4886");
}
