//! Runs the core's test-vector table (`fixtures/vectors/*.vec`): the same table the
//! ESP32 QEMU run checks. `BLESS=1 cargo test --test core_vectors` rewrites the expected
//! transcripts from what the core produces (review the diff before committing).

use std::path::Path;

use tasmota_core::vectors::{self, FILES};

#[test]
fn every_vector_matches_its_transcript() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut total = 0;
    let mut failures = Vec::new();
    for (file, text) in FILES {
        let parsed = vectors::parse(text).unwrap_or_else(|e| panic!("fixtures/vectors/{file}: {e}"));
        total += parsed.len();
        if bless {
            bless_file(file, text, &parsed);
            continue;
        }
        for v in &parsed {
            if let Err(f) = vectors::check(v) {
                failures.push(format!("fixtures/vectors/{file}: {f}"));
            }
        }
    }
    assert!(total >= 150, "the table must hold at least 150 vectors, it holds {total}");
    assert!(failures.is_empty(), "{} of {total} vectors failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn vector_names_are_unique() {
    let mut seen = std::collections::HashSet::new();
    for (file, text) in FILES {
        for v in vectors::parse(text).unwrap() {
            assert!(
                seen.insert(v.name.clone()),
                "fixtures/vectors/{file}:{}: duplicate vector name '{}'",
                v.line,
                v.name
            );
        }
    }
}

#[test]
fn malformed_vector_files_are_reported_with_their_line() {
    let e = vectors::parse("=== a\n> Power\nwait soon\n").unwrap_err();
    assert_eq!(e.to_string(), "line 3: 'wait' needs milliseconds, got 'soon'");
    let e = vectors::parse("> Power\n").unwrap_err();
    assert_eq!(e.line, 1);
    let e = vectors::parse("=== a\nbogus\n").unwrap_err();
    assert!(e.message.contains("got 'bogus'"), "{e}");
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() {
    let v = &vectors::parse("=== q\n> MqttPort\n00:00:00.000 CMD: MqttPort\n00:00:00.000 RSL: RESULT = {\"MqttPort\":1884}\n-> stat/tasmota_4B3316/RESULT\n").unwrap()[0];
    let f = vectors::check(v).unwrap_err();
    let text = f.to_string();
    assert!(text.contains("  - 00:00:00.000 RSL: RESULT = {\"MqttPort\":1884}"), "{text}");
    assert!(text.contains("  + 00:00:00.000 RSL: RESULT = {\"MqttPort\":1883}"), "{text}");
}

/// Rewrites a vector file with each vector's inputs followed by its actual transcript.
fn bless_file(file: &str, text: &str, parsed: &[vectors::Vector]) {
    let mut out = String::new();
    let mut index = None::<usize>;
    let flush = |out: &mut String, index: Option<usize>| {
        if let Some(i) = index {
            for line in vectors::run(&parsed[i]) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    };
    let mut pending_blank = 0;
    for line in text.lines() {
        if line.starts_with("=== ") {
            flush(&mut out, index);
            for _ in 0..pending_blank.max(1) {
                out.push('\n');
            }
            pending_blank = 0;
            index = Some(index.map_or(0, |i| i + 1));
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if line.trim().is_empty() {
            pending_blank += 1;
            continue;
        }
        let is_expectation = line.starts_with("-> ")
            || line.starts_with("error: ")
            || (line.len() > 12 && line.as_bytes()[2] == b':' && line.as_bytes()[8] == b'.');
        if is_expectation {
            continue;
        }
        if index.is_none() {
            for _ in 0..pending_blank {
                out.push('\n');
            }
        }
        pending_blank = 0;
        out.push_str(line);
        out.push('\n');
    }
    flush(&mut out, index);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vectors").join(file);
    std::fs::write(&path, out.trim_start_matches('\n')).unwrap();
}
