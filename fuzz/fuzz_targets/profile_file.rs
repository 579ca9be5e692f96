//! Device profile text into the profile loader (`Profile::parse`, built-in traces only);
//! a profile that loads then boots a device that lives for a minute.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tasmota_fuzz::boot_and_run;
use tasmota_sim::profile::Profile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = Profile::parse(text, Path::new("fuzz.toml"), None) {
        boot_and_run(p.hardware.clone(), p.initial_settings());
    }
});
