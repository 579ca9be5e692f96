//! The session checks of `tasmota_core::selftest` on the host: the same table the QEMU
//! RV32 run (`crates/rv32-tests`) runs.

#[test]
fn every_session_check_passes() {
    let mut failed = Vec::new();
    for (name, check) in tasmota_core::selftest::CHECKS {
        if let Err(why) = check() {
            failed.push(format!("{name}: {why}"));
        }
    }
    assert!(tasmota_core::selftest::CHECKS.len() >= 7);
    assert!(failed.is_empty(), "{} failed:\n{}", failed.len(), failed.join("\n"));
}
