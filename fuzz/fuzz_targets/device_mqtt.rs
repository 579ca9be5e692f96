//! Bytes from a broker into the device's MQTT client (`Device::handle_received`) after
//! the link opened and CONNECT went out: the packet decoder, CONNACK handling, inbound
//! PUBLISH to commands, acknowledgements; then a minute of the session's life.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasmota_fuzz::{chunks, drain, linked_device, run_for, Link};

fuzz_target!(|data: &[u8]| {
    let mut d = linked_device();
    for chunk in chunks(data) {
        let now = d.now();
        d.handle_received(chunk, now);
        drain(&mut d, Link::Up);
    }
    run_for(&mut d, 60_000, Link::Up, false);
});
