//! Bytes typed on the serial console of a connected device (`Device::handle_serial`):
//! line assembly, the command grammar, Backlog and every command handler; then a
//! minute of the device's life for what the commands scheduled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasmota_fuzz::{chunks, connected_device, drain, run_for, Link};

fuzz_target!(|data: &[u8]| {
    let mut d = connected_device();
    for chunk in chunks(data) {
        let now = d.now();
        d.handle_serial(chunk, now);
        drain(&mut d, Link::Up);
    }
    run_for(&mut d, 60_000, Link::Up, false);
});
