//! Bytes typed on the serial console of a connected device (`Device::handle_serial`):
//! line assembly, the command grammar, Backlog and every command handler; then a
//! minute of the device's life for what the commands scheduled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasmota_core::Device;
use tasmota_fuzz::{connected_device, feed_and_run};

fuzz_target!(|data: &[u8]| feed_and_run(connected_device(), data, Device::handle_serial));
