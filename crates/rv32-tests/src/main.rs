//! The core's tests on an RV32 CPU (QEMU `virt`, bare metal, semihosting).
//!
//! Runs every vector of `fixtures/vectors/*.vec` (`vectors::FILES`, listed from the
//! directory by the core's build script) and every MQTT session check of
//! `tasmota_core::selftest`, prints `test NAME ... ok` or
//! `test NAME ... FAILED: why` for each and one line `N passed, N failed`, then the
//! budget lines (heap, instructions per command), and exits 0 only if nothing failed.
//! A panic exits 101 (semihosting's panic handler), so a hang or crash never passes.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

use embedded_alloc::LlffHeap;
use semihosting::{println, process};
use tasmota_core::mqtt::ConnectRequest;
use tasmota_core::platform::{drive, Platform};
use tasmota_core::{selftest, vectors, BootReason, Device, Hardware, Instant, LogLine, RestartKind, Settings};

/// The heap, with a count of bytes in use and the peak. One hart and no interrupts, so
/// plain loads and stores are enough (the C3 has no atomic read-modify-write either).
struct Counting {
    heap: LlffHeap,
    used: AtomicUsize,
    peak: AtomicUsize,
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.heap.alloc(layout) };
        if !p.is_null() {
            let used = self.used.load(Ordering::Relaxed) + layout.size();
            self.used.store(used, Ordering::Relaxed);
            if used > self.peak.load(Ordering::Relaxed) {
                self.peak.store(used, Ordering::Relaxed);
            }
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.heap.dealloc(ptr, layout) };
        let used = self.used.load(Ordering::Relaxed);
        self.used.store(used.saturating_sub(layout.size()), Ordering::Relaxed);
    }
}

#[global_allocator]
static HEAP: Counting = Counting { heap: LlffHeap::empty(), used: AtomicUsize::new(0), peak: AtomicUsize::new(0) };

const HEAP_SIZE: usize = 4 * 1024 * 1024;
static mut HEAP_MEM: [u8; HEAP_SIZE] = [0; HEAP_SIZE];

fn heap_used() -> usize {
    HEAP.used.load(Ordering::Relaxed)
}

fn reset_peak() {
    HEAP.peak.store(heap_used(), Ordering::Relaxed);
}

fn heap_peak() -> usize {
    HEAP.peak.load(Ordering::Relaxed)
}

/// Instructions retired so far. Under QEMU this is the guest's instruction count only
/// with `-icount` (the runner passes `-icount shift=0`); without it, the host's TSC.
fn instret() -> u64 {
    loop {
        let hi = riscv::register::minstreth::read();
        let lo = riscv::register::minstret::read();
        if hi == riscv::register::minstreth::read() {
            return (u64::from(hi as u32) << 32) | u64::from(lo as u32);
        }
    }
}

#[riscv_rt::entry]
fn main() -> ! {
    // SAFETY: called once, before any allocation; the region is only used by the heap.
    unsafe { HEAP.heap.init(core::ptr::addr_of_mut!(HEAP_MEM) as usize, HEAP_SIZE) };

    // Budgets first, on a fresh heap: after the vector run the allocator's free list is
    // fragmented and the instruction counts would move with every vector added.
    let budget_lines = budgets();
    let (mut passed, mut failed) = (0u32, 0u32);
    for (file, text) in vectors::FILES {
        let table = match vectors::parse(text) {
            Ok(t) => t,
            Err(e) => {
                println!("test {file} ... FAILED: {e}");
                failed += 1;
                continue;
            }
        };
        for v in &table {
            match vectors::check(v) {
                Ok(()) => {
                    println!("test {file}:{} ... ok", v.name);
                    passed += 1;
                }
                Err(f) => {
                    println!("test {file}:{} ... FAILED: {f}", v.name);
                    failed += 1;
                }
            }
        }
    }
    for (name, check) in selftest::CHECKS {
        match check() {
            Ok(()) => {
                println!("test session:{name} ... ok");
                passed += 1;
            }
            Err(why) => {
                println!("test session:{name} ... FAILED: {why}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    for line in &budget_lines {
        println!("{line}");
    }
    process::exit(if failed == 0 { 0 } else { 1 })
}

/// A platform that answers connects at once and counts nothing else.
#[derive(Default)]
struct Quiet {
    connects: usize,
    sent: usize,
}

impl Platform for Quiet {
    fn console(&mut self, _line: &LogLine) {}
    fn connect(&mut self, _request: &ConnectRequest) {
        self.connects += 1;
    }
    fn transmit(&mut self, bytes: &[u8]) {
        self.sent += bytes.len();
    }
    fn close(&mut self) {}
    fn relays(&mut self, _bits: u32) {}
    fn save_settings(&mut self, _settings: &Settings) {}
    fn restart(&mut self, _kind: RestartKind) {}
}

fn run(d: &mut Device, p: &mut Quiet, until: u64) {
    while let Some(t) = d.poll_timeout().filter(|t| t.as_millis() <= until) {
        d.handle_timeout(t);
        let before = p.connects;
        drive(d, p);
        if p.connects != before {
            d.handle_link_up(t);
            drive(d, p);
        }
    }
}

/// The core's heap at rest and during a connect, and instructions per command, as
/// `budget ...` lines (printed after the test summary).
fn budgets() -> Vec<String> {
    let mut lines = Vec::new();
    let base = heap_used();
    let settings = Settings {
        mqtt_host: String::from("a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com"),
        mqtt_port: 443,
        mqtt_user: String::from("tasmota?x-amz-customauthorizer-name=TasmotaAuth"),
        mqtt_pwd: String::from("YknLuSd2tBY2HodwI/7RqA=="),
        ..Settings::default()
    };
    reset_peak();
    let mut d = Device::boot(Hardware::default(), settings, BootReason::PowerOn, Instant::from_millis(0));
    let mut p = Quiet::default();
    drive(&mut d, &mut p);
    run(&mut d, &mut p, 3_000);
    let booted = heap_used() - base;
    reset_peak();
    run(&mut d, &mut p, 3_500);
    d.handle_received(&[0x20, 2, 0, 0], Instant::from_millis(3_500));
    drive(&mut d, &mut p);
    let connect_peak = heap_peak() - base;
    run(&mut d, &mut p, 60_000);
    let steady = heap_used() - base;
    lines.push(format!("budget core_device_struct_bytes {}", core::mem::size_of::<Device>()));
    lines.push(format!("budget core_heap_booted_bytes {booted}"));
    lines.push(format!("budget core_heap_connect_peak_bytes {connect_peak}"));
    lines.push(format!("budget core_heap_steady_connected_bytes {steady}"));

    // Instructions per console command, averaged over 200 (reply published over MQTT).
    let commands = ["Power TOGGLE", "Status 11", "MqttHost", "Backlog Power ON; Power OFF"];
    let mut now = 60_000;
    for cmd in commands {
        let start = instret();
        for _ in 0..200 {
            now += 1;
            d.handle_serial_line(cmd, Instant::from_millis(now));
            drive(&mut d, &mut p);
        }
        let per = (instret() - start) / 200;
        let key: Vec<u8> = cmd.bytes().map(|b| if b.is_ascii_alphanumeric() { b } else { b'_' }).collect();
        lines.push(format!("budget instructions_per_command {} {per}", core::str::from_utf8(&key).unwrap_or("?")));
    }
    core::hint::black_box(p.sent);
    lines
}
