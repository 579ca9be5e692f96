//! The core's footprint per device: how many bytes one `tasmota_core::Device` holds,
//! inline (`size_of::<Device>()`) and on the heap, booted and then connected and idle.
//!
//! A counting global allocator keeps the live heap bytes (alloc, dealloc, realloc). The
//! benchmark boots 10,000 devices of the default profile (`sonoff-basic`, MACs from
//! `5C:CF:7F:00:00:00` upward, MqttHost `broker.lan`) into one `Vec`, drains their boot
//! outputs and measures; then it drives each through a connected session on a fake link
//! (WiFi up at 3.5 s, the link opens at once, CONNACK `20 02 00 00`, a SUBACK for each
//! SUBSCRIBE, a PINGRESP for each PINGREQ) up to `--secs` of device time (default 330:
//! discovery at 10 s, keepalive pings every 30 s, the first TelePeriod STATE at 300 s),
//! drains every output and measures again. Then the broker sends each a Backlog of
//! `Status 0; Power TOGGLE; Power TOGGLE`, the device runs another minute, and a third
//! measurement says whether what the commands grew was given back. The fake link's own
//! bytes are freed before each measurement, so the heap counted is what the devices hold.
//!
//! `cargo bench --bench footprint` prints the table (`-- --devices N --secs S` to change
//! the run). Without `--bench` (under `cargo test --benches`) it does nothing.
//! Results: BENCHMARKS.md, "Core footprint".

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use tasmota_core::mqtt::packet::{self, Packet};
use tasmota_core::{BootReason, Device, Instant, Mac, Output};
use tasmota_sim::profile::{Profile, DEFAULT};

/// Counts the bytes the program holds on the heap now.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` with the caller's arguments; the counter only
// follows the sizes that went through.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The fake link of one device: bytes the device wrote, and what the broker answers.
#[derive(Default)]
struct Link {
    sent: Vec<u8>,
    answers: Vec<u8>,
    connects: usize,
}

impl Link {
    /// Drains the device's outputs: opens the link at once, answers CONNECT, SUBSCRIBE and
    /// PINGREQ as a broker does; repeats until the device has nothing more to say.
    fn drain(&mut self, d: &mut Device, now: Instant) {
        loop {
            while let Some(out) = d.poll_output() {
                match out {
                    Output::Connect(_) => {
                        self.connects += 1;
                        d.handle_link_up(now);
                    }
                    Output::Transmit(bytes) => self.sent.extend_from_slice(&bytes),
                    Output::Close => self.sent.clear(),
                    _ => {}
                }
            }
            while let Ok(Some((p, n))) = packet::decode(&self.sent, 1 << 20) {
                self.sent.drain(..n);
                match p {
                    Packet::Connect(_) => self.answers.extend_from_slice(&[0x20, 2, 0, 0]),
                    Packet::Subscribe { packet_id, .. } => {
                        let [hi, lo] = packet_id.to_be_bytes();
                        self.answers.extend_from_slice(&[0x90, 3, hi, lo, 0]);
                    }
                    Packet::Pingreq => self.answers.extend_from_slice(&[0xD0, 0]),
                    _ => {}
                }
            }
            if self.answers.is_empty() {
                return;
            }
            let answers = std::mem::take(&mut self.answers);
            d.handle_received(&answers, now);
        }
    }
}

/// Runs one device from where it is to `until_ms`, answering on the fake link.
fn run_session(d: &mut Device, until_ms: u64) -> usize {
    let mut link = Link::default();
    link.drain(d, d.now());
    run_to(d, &mut link, until_ms);
    link.connects
}

fn run_to(d: &mut Device, link: &mut Link, until_ms: u64) {
    while let Some(t) = d.poll_timeout().filter(|t| t.as_millis() <= until_ms) {
        d.handle_timeout(t);
        link.drain(d, t);
    }
}

/// The broker delivers `cmnd/<topic>/Backlog` with a Status 0 (the biggest answer) and
/// two power toggles; the device runs on for a minute.
fn run_commands(d: &mut Device) {
    let mut link = Link::default();
    let now = d.now();
    let cmd = Packet::Publish(packet::Publish {
        topic: format!("cmnd/{}/Backlog", d.topic()),
        payload: b"Status 0; Power TOGGLE; Power TOGGLE".to_vec(),
        qos: 0,
        retain: false,
        dup: false,
        packet_id: None,
    });
    d.handle_received(&cmd.encode(), now);
    link.drain(d, now);
    run_to(d, &mut link, now.as_millis() + 60_000);
}

struct Args {
    devices: usize,
    secs: u64,
}

fn args() -> Result<Option<Args>, String> {
    let mut a = Args { devices: 10_000, secs: 330 };
    let mut bench = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => bench = true,
            "--devices" | "--secs" => {
                let v = it.next().ok_or_else(|| format!("{arg} needs a number"))?;
                let n: u64 = v.parse().map_err(|_| format!("{arg}: '{v}' is not a number"))?;
                if arg == "--devices" {
                    a.devices = n.max(1) as usize;
                } else {
                    a.secs = n;
                }
            }
            _ => {}
        }
    }
    Ok(bench.then_some(a))
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("footprint: {e}");
            return ExitCode::from(2);
        }
    };
    let profile = match Profile::load(DEFAULT) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("footprint: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut settings = profile.initial_settings();
    settings.mqtt_host = "broker.lan".into();
    let mut devices: Vec<Device> = Vec::with_capacity(a.devices);
    let base = live();
    let start = std::time::Instant::now();
    for i in 0..a.devices {
        let mut hw = profile.hardware.clone();
        let [_, b3, b4, b5] = (i as u32).to_be_bytes();
        hw.mac = Mac([0x5C, 0xCF, 0x7F, b3, b4, b5]);
        let mut d = Device::boot(hw, settings.clone(), BootReason::PowerOn, Instant::from_millis(0));
        while d.poll_output().is_some() {}
        devices.push(d);
    }
    let booted = live() - base;
    let mut connects = 0;
    for d in &mut devices {
        connects += run_session(d, a.secs * 1000);
    }
    let connected = live() - base;
    for d in &mut devices {
        run_commands(d);
    }
    let commanded = live() - base;
    let wall = start.elapsed();
    if connects != a.devices {
        eprintln!("footprint: {connects} connects for {} devices: a session did not go as planned", a.devices);
        return ExitCode::FAILURE;
    }

    let n = a.devices;
    let inline = std::mem::size_of::<Device>();
    println!(
        "Core footprint: {n} devices ({DEFAULT}), connected and idle after {} s of device time ({:.1} s wall)",
        a.secs,
        wall.as_secs_f64()
    );
    println!();
    println!("| per device            | inline B | heap B | total B | total KiB |");
    println!("|-----------------------|---------:|-------:|--------:|----------:|");
    for (what, heap) in [("booted", booted), ("connected and idle", connected), ("idle after commands", commanded)] {
        let per = heap / n;
        let total = inline + per;
        println!("| {what:<21} | {inline:>8} | {per:>6} | {total:>7} | {:>9.2} |", total as f64 / 1024.0);
    }
    ExitCode::SUCCESS
}
