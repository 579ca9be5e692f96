//! `Device::poll_timeout` leaves out the ticks that can give the driver nothing. A driver
//! that wakes only when asked must see exactly what a driver waking on every 250 ms tick
//! sees: the same console lines at the same timestamps, the same bytes, in the same order,
//! with far fewer wake-ups.

use tasmota_core::mqtt::packet::{self, Packet};
use tasmota_core::{BootReason, Device, Hardware, Instant, Output, Settings};

/// A device on a fake link whose broker answers CONNECT and PINGREQ at once; `script`
/// types lines at given times. Returns what the driver saw and how often it woke.
fn run(every_tick: bool, until_ms: u64, script: &[(u64, &str)]) -> (Vec<String>, usize) {
    let settings = Settings { mqtt_host: "broker.lan".into(), tele_period: 60, ..Settings::default() };
    let mut d = Device::boot(Hardware::default(), settings, BootReason::PowerOn, Instant::from_millis(0));
    let mut seen = Vec::new();
    let mut wakes = 0;
    let mut now = 0u64;
    let mut script = script.iter().peekable();
    let mut inbox: Vec<u8> = Vec::new();
    loop {
        // Drain, answering the link as a broker would.
        while let Some(out) = d.poll_output() {
            match out {
                Output::Log(l) if l.serial => seen.push(l.to_string()),
                Output::Connect(_) => {
                    seen.push(format!("{now} connect"));
                    d.handle_link_up(Instant::from_millis(now));
                }
                Output::Transmit(bytes) => {
                    seen.push(format!("{now} tx {bytes:02x?}"));
                    inbox.extend_from_slice(&bytes);
                    while let Ok(Some((p, used))) = packet::decode(&inbox, 4096) {
                        inbox.drain(..used);
                        let reply: &[u8] = match p {
                            Packet::Connect(_) => &[0x20, 2, 0, 0],
                            Packet::Pingreq => &[0xd0, 0],
                            _ => &[],
                        };
                        if !reply.is_empty() {
                            d.handle_received(reply, Instant::from_millis(now));
                        }
                    }
                }
                Output::Log(_) => {}
                other => seen.push(format!("{now} {other:?}")),
            }
        }
        let next_tick = if every_tick { (now / 250 + 1) * 250 } else { u64::MAX };
        let timer = d.poll_timeout().map_or(u64::MAX, |t| t.as_millis()).min(next_tick);
        let typed = script.peek().map_or(u64::MAX, |(t, _)| *t);
        now = timer.min(typed);
        if now > until_ms {
            return (seen, wakes);
        }
        wakes += 1;
        if typed == now {
            let (_, line) = script.next().unwrap();
            d.handle_serial_line(line, Instant::from_millis(now));
        } else {
            d.handle_timeout(Instant::from_millis(now));
        }
    }
}

#[test]
fn skipping_quiet_ticks_changes_nothing_but_the_wakeups() {
    // Two hours: connect, keepalive pings, STATE every minute, commands typed between ticks
    // (Status shows the uptime the skipped ticks counted), a TelePeriod change, a save.
    let script = [
        (600_123, "Status"),
        (1_800_001, "TelePeriod 10"),
        (2_400_050, "Power ON"),
        (3_000_999, "Uptime"),
        (5_000_000, "MqttKeepAlive 60"),
    ];
    let (every, every_wakes) = run(true, 7_200_000, &script);
    let (skipping, skipping_wakes) = run(false, 7_200_000, &script);
    assert_eq!(every.len(), skipping.len());
    for (i, (a, b)) in every.iter().zip(&skipping).enumerate() {
        assert_eq!(a, b, "line {i} differs");
    }
    assert!(every.iter().any(|l| l.contains("tele/tasmota_4B3316/STATE")), "STATE published");
    assert!(every.iter().any(|l| l.contains("\"UptimeSec\":600")), "Status shows the counted uptime: {every:#?}");
    assert!(every_wakes >= 28_800 + script.len(), "{every_wakes} wake-ups");
    eprintln!("wake-ups over 2 h: every tick {every_wakes}, skipping {skipping_wakes}");
    assert!(skipping_wakes < every_wakes / 10, "{skipping_wakes} wake-ups");
}
