//! Bytes from a broker into the device's MQTT client (`Device::handle_received`) after
//! the link opened and CONNECT went out: the packet decoder, CONNACK handling, inbound
//! PUBLISH to commands, acknowledgements; then a minute of the session's life.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasmota_core::Device;
use tasmota_fuzz::{feed_and_run, linked_device};

fuzz_target!(|data: &[u8]| feed_and_run(linked_device(), data, Device::handle_received));
