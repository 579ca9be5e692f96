//! Vector file text into the vector-file loader (`tasmota_core::vectors::parse`); the
//! hardware of the first vectors that load (relays, sensors, energy) then boots a device
//! that lives for a minute.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasmota_core::{vectors, Settings};
use tasmota_fuzz::boot_and_run;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(table) = vectors::parse(text) {
        for v in table.into_iter().take(2) {
            boot_and_run(v.hardware, Settings::default());
        }
    }
});
