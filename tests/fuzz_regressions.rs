//! Inputs a fuzz target crashed on, committed under `fuzz/regressions/<target>/` and
//! replayed here through the entry point the target fed them to, with what the fixed
//! code must answer. FUZZING.md says how a crash gets here.

use std::path::PathBuf;

use tasmota_core::vectors;

/// The committed crash inputs of one fuzz target.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no input", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("a regression input"))).collect()
}

/// `vector_file`: `sensor am. 3012125 45` overflowed `whole * 1000` in `milli_values`;
/// `switches 62` was taken, and the device's SENSOR shifted its u32 switch states by 62.
#[test]
fn vector_file_crash_inputs_load_or_are_refused() {
    for (path, bytes) in inputs("vector_file") {
        let text = String::from_utf8_lossy(&bytes);
        let _ = vectors::parse(&text).map_err(|e| eprintln!("{}: {e}", path.display()));
    }
}

#[test]
fn a_sensor_or_energy_value_beyond_i32_thousandths_is_refused() {
    let e = vectors::parse("=== a\nsensor am2301 3012125 45\n").unwrap_err();
    assert_eq!(e.to_string(), "line 2: '3012125' is out of range");
    let e = vectors::parse("=== a\nenergy 230 -2147484\n").unwrap_err();
    assert_eq!(e.to_string(), "line 2: '-2147484' is out of range");
    let v = vectors::parse("=== a\nsensor ds18b20 -2147483.648\n").unwrap();
    assert_eq!(v.len(), 1, "i32::MIN thousandths still fits");
}

#[test]
fn more_switches_or_buttons_than_the_profile_loader_allows_are_refused() {
    let e = vectors::parse("=== a\nswitches 62\n>\n").unwrap_err();
    assert_eq!(e.to_string(), "line 2: 'switches' takes 0..28, got '62'");
    let e = vectors::parse("=== a\nbuttons 9\n").unwrap_err();
    assert_eq!(e.to_string(), "line 2: 'buttons' takes 0..8, got '9'");
    assert!(vectors::parse("=== a\nswitches 28\nbuttons 8\n").is_ok());
}
