//! Scenario file text into the scenario loader (`Scenario::parse`): TOML, then every
//! check of steps, matchers, durations, regexes and device specs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasmota_fuzz::scratch_dir;
use tasmota_sim::scenario::file::Scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Scenario::parse(&scratch_dir().join("fuzz.toml"), text);
});
