//! The MQTT session and connection state machine on a fake clock and a fake link: the
//! exact bytes the device sends, the console lines it prints, the backoff, timeouts,
//! keepalive, inbound commands, and random broker bytes. The bench is the one the shared
//! session checks (`tasmota_core::selftest`, also run under QEMU) use.

use proptest::prelude::*;
use tasmota_core::mqtt::packet::{Packet, Publish};
use tasmota_core::selftest::{bench_connect_bytes, Bench, LinkMode};
use tasmota_core::setoption as so;
use tasmota_core::{BootReason, Device, Hardware, Instant, LinkFailure, Output};

fn publish(topic: &str, payload: &str, qos: u8, id: Option<u16>) -> Vec<u8> {
    Packet::Publish(Publish {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        qos,
        retain: false,
        dup: false,
        packet_id: id,
    })
    .encode()
}

/// StartWebserver's line at the first Every250mSeconds state 3 with the network up.
const HTP_ACTIVE: &str = "00:00:02.500 HTP: Web server active on tasmota-4B3316-4886 with IP address 10.75.51.22";

fn pubs(packets: &[Packet]) -> Vec<(String, String, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned(), p.retain)),
            _ => None,
        })
        .collect()
}

fn connected_bench() -> Bench {
    Bench::connected().unwrap()
}

#[test]
fn first_connect_sends_connect_then_lwt_power_subscriptions_and_info() {
    let mut b = Bench::new(|_| {});
    b.run_to(3499);
    assert!(b.p.connects.is_empty(), "no attempt before the second MqttCheck after WiFi");
    b.run_to(3500);
    assert_eq!(b.take_lines(), [HTP_ACTIVE, "00:00:03.500 MQT: Attempting connection..."]);
    let req = &b.p.connects[0];
    assert_eq!((req.host.as_str(), req.port, req.tls.is_none(), req.timeout_ms), ("broker.lan", 1883, true, 200));

    // CONNECT, byte for byte.
    assert_eq!(b.p.sent, bench_connect_bytes());
    b.p.sent.clear();

    b.broker_sends(&[0x20, 2, 0, 0]);
    assert_eq!(
        b.take_lines(),
        [
            "00:00:03.500 MQT: Connected",
            "00:00:03.500 MQT: tele/tasmota_4B3316/LWT = Online (retained)",
            "00:00:03.500 MQT: cmnd/tasmota_4B3316/POWER = ",
            "00:00:03.500 MQT: tele/tasmota_4B3316/INFO1 = {\"Info1\":{\"Module\":\"Sonoff Basic\",\"Version\":\"14.2.0(release-tasmota)\",\"FallbackTopic\":\"cmnd/DVES_4B3316_fb/\",\"GroupTopic\":\"cmnd/tasmotas/\"}}",
            "00:00:03.500 MQT: tele/tasmota_4B3316/INFO2 = {\"Info2\":{\"WebServerMode\":\"Admin\",\"Hostname\":\"tasmota-4B3316-4886\",\"IPAddress\":\"10.75.51.22\"}}",
            "00:00:03.500 MQT: tele/tasmota_4B3316/INFO3 = {\"Info3\":{\"RestartReason\":\"Power On\",\"BootCount\":1}}",
            "00:00:03.500 MQT: stat/tasmota_4B3316/RESULT = {\"POWER\":\"OFF\"}",
            "00:00:03.500 MQT: stat/tasmota_4B3316/POWER = OFF",
        ]
    );
    let packets = b.packets().unwrap();
    assert_eq!(
        packets[0],
        Packet::Publish(Publish {
            topic: "tele/tasmota_4B3316/LWT".into(),
            payload: b"Online".to_vec(),
            qos: 0,
            retain: true,
            dup: false,
            packet_id: None,
        })
    );
    assert_eq!(&packets[1].encode(), b"\x30\x1b\x00\x19cmnd/tasmota_4B3316/POWER");
    let subs: Vec<_> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Subscribe { packet_id, filters } => Some((*packet_id, filters.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        subs,
        [
            (1, vec![("cmnd/tasmota_4B3316/#".to_string(), 0)]),
            (2, vec![("cmnd/tasmotas/#".to_string(), 0)]),
            (3, vec![("cmnd/DVES_4B3316_fb/#".to_string(), 0)]),
        ]
    );
    assert_eq!(pubs(&packets).len(), 7);

    // STATE about 5 s later, at the 8 s PerformEverySecond.
    b.run_to(8000);
    let lines = b.take_lines();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("00:00:08.000 MQT: tele/tasmota_4B3316/STATE = {\"Time\":\"1970-01-01T00:00:08\",\"Uptime\":\"0T00:00:08\",\"UptimeSec\":8,"), "{}", lines[0]);
    assert!(lines[0].contains("\"MqttCount\":1,\"POWER\":\"OFF\",\"Wifi\":{"), "{}", lines[0]);
}

#[test]
fn refused_connack_backs_off_linearly_to_120_s() {
    let mut b = Bench::new(|_| {});
    let mut retry = vec![];
    let mut attempts_at = vec![];
    for _ in 0..14 {
        let before = b.p.connects.len();
        while b.p.connects.len() == before {
            let t = b.d.poll_timeout().unwrap();
            b.run_to(t.as_millis());
        }
        attempts_at.push(b.now);
        b.broker_sends(&[0x20, 2, 0, 5]);
        let lines = b.take_lines();
        let last = lines.last().unwrap();
        let tail = last.split("rc 5. Retry in ").nth(1).unwrap_or_else(|| panic!("{lines:?}"));
        assert!(last.contains("MQT: Connect failed to broker.lan:1883, rc 5. Retry in "), "{last}");
        retry.push(tail.trim_end_matches(" sec").parse::<u64>().unwrap());
    }
    assert_eq!(retry, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 120, 120]);
    // The real wait is the logged one plus about a second (the counter runs once a
    // second and the attempt comes when it reaches zero).
    let gaps: Vec<u64> = attempts_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(&gaps[..3], &[11_000, 21_000, 31_000]);
    assert_eq!(b.p.closes, 14, "every refused CONNACK closes the link");
}

#[test]
fn failures_have_the_firmware_rc() {
    // No CONNACK within MqttTimeout (4 s): rc -4.
    let mut b = Bench::new(|_| {});
    b.run_to(7499);
    assert_eq!(b.take_lines(), [HTP_ACTIVE, "00:00:03.500 MQT: Attempting connection..."]);
    b.run_to(7500);
    assert_eq!(b.take_lines(), ["00:00:07.500 MQT: Connect failed to broker.lan:1883, rc -4. Retry in 10 sec"]);

    // TCP refused: rc -2; DNS: rc -5.
    for (failure, rc) in [(LinkFailure::Tcp, -2), (LinkFailure::Dns, -5)] {
        let mut b = Bench::new(|_| {});
        b.link = LinkMode::Fail(failure);
        b.run_to(3500);
        let want = format!("00:00:03.500 MQT: Connect failed to broker.lan:1883, rc {rc}. Retry in 10 sec");
        assert_eq!(
            b.take_lines(),
            [HTP_ACTIVE.to_string(), "00:00:03.500 MQT: Attempting connection...".to_string(), want]
        );
    }

    // A CONNACK that is not exactly `20 02 xx rc` fails with the state as it was (-1).
    let mut b = Bench::new(|_| {});
    b.run_to(3500);
    b.take_lines();
    b.broker_sends(&[0x20, 3, 0, 0, 0]);
    assert_eq!(b.take_lines(), ["00:00:03.500 MQT: Connect failed to broker.lan:1883, rc -1. Retry in 10 sec"]);
}

#[test]
fn keepalive_pings_and_ping_timeout_reconnects() {
    let mut b = connected_bench();
    let pings = |b: &mut Bench| b.packets().unwrap().into_iter().filter(|p| *p == Packet::Pingreq).count();
    // Last packet in at 3.5 s (CONNACK); keepalive 30 s.
    b.run_to(33_500);
    assert_eq!(pings(&mut b), 0);
    b.run_to(33_501);
    assert_eq!(pings(&mut b), 1);
    b.broker_sends(&[0xD0, 0]);
    b.run_to(63_502);
    assert_eq!(pings(&mut b), 1);
    // No PINGRESP this time: the link is dropped one keepalive later and the next
    // MqttCheck reconnects at once, with no "Connect failed" line.
    b.run_to(93_503);
    assert_eq!(b.p.closes, 1);
    b.run_to(94_500);
    assert_eq!(b.take_lines().last().unwrap(), "00:01:34.500 MQT: Attempting connection...");
    b.broker_sends(&[0x20, 2, 0, 0]);
    let lines = b.take_lines();
    assert_eq!(
        lines,
        [
            "00:01:34.500 MQT: Connected",
            "00:01:34.500 MQT: tele/tasmota_4B3316/LWT = Online (retained)",
            "00:01:34.500 MQT: cmnd/tasmota_4B3316/POWER = ",
        ],
        "no INFO after a reconnect"
    );
    let subs = b.packets().unwrap().iter().filter(|p| matches!(p, Packet::Subscribe { .. })).count();
    assert_eq!(subs, 3, "subscriptions are made again on every reconnect");
}

#[test]
fn commands_over_mqtt_run_and_answer_on_stat() {
    let mut b = connected_bench();
    b.broker_sends(&publish("cmnd/tasmota_4B3316/Power", "TOGGLE", 0, None));
    assert_eq!(
        b.take_lines(),
        [
            "00:00:03.500 MQT: stat/tasmota_4B3316/RESULT = {\"POWER\":\"ON\"}",
            "00:00:03.500 MQT: stat/tasmota_4B3316/POWER = ON",
        ]
    );
    assert_eq!(b.d.power(), 1);
    // QoS 1 is acknowledged after the command ran.
    b.packets().unwrap();
    b.broker_sends(&publish("cmnd/tasmotas/Power", "OFF", 1, Some(77)));
    let packets = b.packets().unwrap();
    assert_eq!(packets.last(), Some(&Packet::Puback(77)));
    assert_eq!(pubs(&packets)[0], ("stat/tasmota_4B3316/RESULT".into(), "{\"POWER\":\"OFF\"}".into(), false));
    // The fallback topic answers on the fallback topic.
    b.broker_sends(&publish("cmnd/DVES_4B3316_fb/Power", "", 0, None));
    assert_eq!(pubs(&b.packets().unwrap())[0].0, "stat/DVES_4B3316_fb/RESULT");
    // An unknown command.
    b.broker_sends(&publish("cmnd/tasmota_4B3316/Nope", "", 0, None));
    assert_eq!(
        b.take_lines().last().unwrap(),
        "00:00:03.500 MQT: stat/tasmota_4B3316/RESULT = {\"Command\":\"Unknown\"}"
    );
    b.packets().unwrap();
    // A broker PINGREQ gets a PINGRESP.
    b.broker_sends(&[0xC0, 0]);
    assert_eq!(b.packets().unwrap(), [Packet::Pingresp]);
    // QoS 2 drops the link.
    b.broker_sends(&publish("cmnd/tasmota_4B3316/Power", "ON", 2, Some(1)));
    assert_eq!(b.p.closes, 1);
    assert_eq!(b.d.power(), 0, "the QoS 2 command did not run");
}

#[test]
fn oversized_packets_close_and_big_payloads_are_ignored() {
    let mut b = connected_bench();
    // 1200 bytes or more in all: the client closes the link.
    let big = publish("cmnd/tasmota_4B3316/Power", &"x".repeat(1180), 0, None);
    assert!(big.len() >= 1200);
    b.broker_sends(&big);
    assert_eq!(b.p.closes, 1);
    // The next MqttCheck reconnects and the session goes on.
    b.run_to(4500);
    b.broker_sends(&[0x20, 2, 0, 0]);
    assert!(b.d.power() == 0 && b.take_lines().iter().any(|l| l.ends_with("MQT: Connected")));
}

#[test]
fn restart_closes_without_disconnect_and_reconnects_with_new_settings() {
    let mut b = connected_bench();
    b.d.handle_serial_line("Backlog MqttHost other.lan; MqttPort 1884", Instant::from_millis(b.now));
    b.run_to(6000);
    let packets = b.packets().unwrap();
    assert!(!packets.contains(&Packet::Disconnect), "no DISCONNECT on restart: {packets:?}");
    assert_eq!(b.p.closes, 1);
    assert!(b.d.is_stopped());
    let settings = b.d.settings().clone();
    let mut d = Device::boot(Hardware::default(), settings, BootReason::Restart, Instant::from_millis(0));
    let mut reqs = vec![];
    for t in (0..=3500).step_by(250) {
        d.handle_timeout(Instant::from_millis(t));
        while let Some(o) = d.poll_output() {
            if let Output::Connect(r) = o {
                reqs.push(r);
            }
        }
    }
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].host.as_str(), reqs[0].port), ("other.lan", 1884));
}

#[test]
fn setoption3_off_logs_rsl_and_never_connects() {
    let mut b = Bench::new(|s| s.set_option(so::MQTT_ENABLED, 0));
    b.run_to(10_000);
    assert!(b.p.connects.is_empty());
    let lines = b.take_lines();
    // MqttCheck calls MqttReconnect at once (not allowed: the INFO part only).
    assert_eq!(lines[0], HTP_ACTIVE);
    assert!(lines[1].starts_with("00:00:02.500 RSL: INFO1 = "), "{lines:?}");
    assert!(lines.iter().any(|l| l == "00:00:02.500 RSL: POWER = OFF"));
}

#[test]
fn aws_iot_light_mode() {
    let mut b = Bench::new(|s| {
        s.set_option(so::MQTT_TLS, 1);
        s.mqtt_host = "a1b2c3-ats.iot.eu-west-1.amazonaws.com".into();
        s.mqtt_port = 443;
        s.mqtt_user = "tasmota?x-amz-customauthorizer-name=TasmotaAuth".into();
        s.mqtt_pwd = "YknLuSd2tBY2HodwI/7RqA==".into();
    });
    assert!(b.d.settings().flag(so::MQTT_NO_RETAIN), "an AWS endpoint forces SetOption104");
    b.run_to(3500);
    let tls = b.p.connects[0].tls.clone().expect("TLS");
    assert_eq!(tls.server_name, "a1b2c3-ats.iot.eu-west-1.amazonaws.com");
    assert_eq!(tls.alpn, Some("mqtt"));
    assert_eq!(b.p.connects[0].timeout_ms, 5000);
    let connect = b.packets().unwrap();
    let Packet::Connect(c) = &connect[0] else { panic!("{connect:?}") };
    assert_eq!(c.username.as_deref(), Some("tasmota?x-amz-customauthorizer-name=TasmotaAuth"));
    assert!(!c.will.as_ref().unwrap().retain, "will retain off on AWS");
    b.now = 4753;
    b.broker_sends(&[0x20, 2, 0, 0]);
    let lines = b.take_lines();
    assert_eq!(lines[0], HTP_ACTIVE);
    assert_eq!(
        &lines[2..6],
        [
            "00:00:04.753 MQT: TLS connected in 1253 ms, max ThunkStack used 4596",
            "00:00:04.753 MQT: MFLN not supported by TLS server",
            "00:00:04.753 MQT: Connected",
            "00:00:04.753 MQT: tele/tasmota_4B3316/LWT = Online",
        ]
    );
    assert!(pubs(&b.packets().unwrap()).iter().all(|(_, _, retain)| !retain), "nothing retained on AWS");

    // Port 8883 to the same host: TLS, no ALPN. A TLS failure logs its code first.
    let mut b = Bench::new(|s| {
        s.set_option(so::MQTT_TLS, 1);
        s.mqtt_host = "a1b2c3-ats.iot.eu-west-1.amazonaws.com".into();
        s.mqtt_port = 8883;
    });
    b.link = LinkMode::Fail(LinkFailure::Tls(296));
    b.run_to(3500);
    assert_eq!(b.p.connects[0].tls.as_ref().unwrap().alpn, None);
    assert_eq!(
        b.take_lines()[2..],
        [
            "00:00:03.500 MQT: TLS connection error: 296",
            "00:00:03.500 MQT: Connect failed to a1b2c3-ats.iot.eu-west-1.amazonaws.com:8883, rc -2. Retry in 10 sec",
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes from the broker, before or after CONNACK, never panic the device;
    /// a session that cannot make sense of them closes the link.
    #[test]
    fn random_broker_bytes_never_panic(after_connack in any::<bool>(), chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8)) {
        let mut b = Bench::new(|_| {});
        b.run_to(3500);
        if after_connack {
            b.broker_sends(&[0x20, 2, 0, 0]);
        }
        for c in &chunks {
            b.broker_sends(c);
            b.now += 50;
        }
        b.run_to(b.now + 100_000);
        // Still alive: it answers the console.
        b.d.handle_serial_line("MqttRetry", Instant::from_millis(b.now));
        b.drain();
        prop_assert!(b.p.lines.iter().any(|l| l.ends_with("{\"MqttRetry\":10}")), "{:?}", b.p.lines);
    }
}
