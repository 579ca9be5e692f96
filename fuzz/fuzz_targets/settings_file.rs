//! A settings file's bytes into the settings loader (`StateDir::load` of a
//! `settings.json` in an empty directory); settings that load then boot a device that
//! lives for a minute.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasmota_core::Hardware;
use tasmota_fuzz::{boot_and_run, scratch_dir};
use tasmota_sim::state::StateDir;

fuzz_target!(|data: &[u8]| {
    let store = StateDir::new(scratch_dir());
    std::fs::write(store.path(), data).expect("write the settings file");
    if let Ok(Some((mac, settings))) = store.load() {
        boot_and_run(Hardware { mac, ..Hardware::default() }, settings);
    }
});
