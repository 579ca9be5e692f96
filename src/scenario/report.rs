//! Reporting outcomes: one human line per scenario (with the failing step, what was
//! expected and seen, and the transcript tail), JSON, and JUnit XML for CI.

use std::fmt::Write as _;

use super::{Outcome, Verdict};

/// How many transcript lines a failure shows.
const TAIL: usize = 15;

/// The human report of one outcome.
pub fn human(o: &Outcome, with_transcript: bool) -> String {
    let mut s = String::new();
    if with_transcript && !o.transcript.is_empty() {
        for l in &o.transcript {
            let _ = writeln!(s, "{l}");
        }
        s.push('\n');
    }
    let timing = format!(
        "{} steps, {} of device time in {:.0} ms",
        o.steps_total,
        device_time(o.virtual_ms),
        o.wall.as_secs_f64() * 1000.0
    );
    match &o.verdict {
        Verdict::Passed => {
            let _ = writeln!(s, "PASS {} ({timing})", o.name);
        }
        Verdict::Failed { step, message } => {
            let at = match step {
                Some((n, line, col)) => format!(" at step {n} ({}:{line}:{col})", o.file.display()),
                None => String::new(),
            };
            let _ = writeln!(s, "FAIL {}{at} ({timing})", o.name);
            for l in message.lines() {
                let _ = writeln!(s, "  {l}");
            }
            if !with_transcript && !o.transcript.is_empty() {
                let skip = o.transcript.len().saturating_sub(TAIL);
                let _ = writeln!(s, "  console (last {} lines):", o.transcript.len() - skip);
                for l in &o.transcript[skip..] {
                    let _ = writeln!(s, "    {l}");
                }
            }
        }
        Verdict::Invalid(message) => {
            let _ = writeln!(s, "INVALID {}: {message}", o.name);
        }
        Verdict::Skipped(why) => {
            let _ = writeln!(s, "SKIP {}: {why}", o.name);
        }
    }
    for n in &o.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    s
}

/// A span of device time as Go prints durations: `500ms`, `10.701s`, `5m0s`,
/// `2h11m14.501s`.
pub fn device_time(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, sec, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let seconds =
        if milli == 0 { format!("{sec}s") } else { format!("{sec}.{}s", format!("{milli:03}").trim_end_matches('0')) };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// The JSON report: one object per scenario.
pub fn json(outcomes: &[Outcome]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let (verdict, step, message) = match &o.verdict {
                Verdict::Passed => ("passed", None, None),
                Verdict::Failed { step, message } => ("failed", *step, Some(message.clone())),
                Verdict::Invalid(m) => ("invalid", None, Some(m.clone())),
                Verdict::Skipped(m) => ("skipped", None, Some(m.clone())),
            };
            serde_json::json!({
                "name": o.name,
                "file": o.file.display().to_string(),
                "verdict": verdict,
                "failed_step": step.map(|(n, line, column)| serde_json::json!({"index": n, "line": line, "column": column})),
                "message": message,
                "steps_run": o.steps_run,
                "steps_total": o.steps_total,
                "device_time_ms": o.virtual_ms,
                "wall_ms": o.wall.as_secs_f64() * 1000.0,
                "transcript": o.transcript,
                "notes": o.notes,
            })
        })
        .collect();
    let passed = outcomes.iter().filter(|o| o.verdict == Verdict::Passed).count();
    let skipped = outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Skipped(_))).count();
    serde_json::json!({ "passed": passed, "skipped": skipped, "total": outcomes.len(), "scenarios": list })
}

/// JUnit XML (the Ant/Jenkins schema that GitLab, GitHub and Jenkins read).
pub fn junit(outcomes: &[Outcome]) -> String {
    let failures = outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Failed { .. })).count();
    let errors = outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Invalid(_))).count();
    let skipped = outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Skipped(_))).count();
    let time: f64 = outcomes.iter().map(|o| o.wall.as_secs_f64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"tasmota-sim scenarios\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time:.3}\">",
        outcomes.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"scenarios\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time:.3}\">",
        outcomes.len()
    );
    for o in outcomes {
        let _ = write!(
            x,
            "    <testcase classname=\"scenarios\" name=\"{}\" file=\"{}\" time=\"{:.3}\">",
            esc(&o.name),
            esc(&o.file.display().to_string()),
            o.wall.as_secs_f64()
        );
        match &o.verdict {
            Verdict::Passed => {}
            Verdict::Failed { step, message } => {
                let first = message.lines().next().unwrap_or_default();
                let at = step.map(|(n, line, _)| format!("step {n} (line {line}): ")).unwrap_or_default();
                let _ = write!(
                    x,
                    "\n      <failure message=\"{}\" type=\"expectation\">{}</failure>",
                    esc(&format!("{at}{first}")),
                    esc(message)
                );
            }
            Verdict::Skipped(m) => {
                let _ = write!(x, "\n      <skipped message=\"{}\"/>", esc(m));
            }
            Verdict::Invalid(m) => {
                let _ = write!(x, "\n      <error message=\"{}\" type=\"invalid\">{}</error>", esc(m), esc(m));
            }
        }
        if !o.transcript.is_empty() {
            let _ = write!(x, "\n      <system-out>{}</system-out>", esc(&o.transcript.join("\n")));
        }
        let _ = writeln!(x, "\n    </testcase>");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// XML text and attribute escaping; characters XML 1.0 cannot carry become U+FFFD.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn device_time_reads_like_a_duration() {
        assert_eq!(device_time(7_874_501), "2h11m14.501s");
        assert_eq!(device_time(10_701), "10.701s");
        assert_eq!(device_time(3_608_000), "1h0m8s");
        assert_eq!(device_time(300_500), "5m0.5s");
        assert_eq!(device_time(999), "999ms");
    }

    #[test]
    fn junit_has_one_testcase_per_scenario_and_escapes() {
        let mut ok = Outcome::empty("ok", Path::new("scenarios/ok.toml"), 1);
        ok.transcript = vec!["00:00:00.000 CMD: Power <on> & \"x\"".into()];
        let bad = Outcome {
            verdict: Verdict::Failed { step: Some((2, 7, 1)), message: "expected console \"MQT: Connected\"".into() },
            ..Outcome::empty("bad", Path::new("scenarios/bad.toml"), 3)
        };
        let x = junit(&[ok, bad]);
        assert!(x.contains("tests=\"2\" failures=\"1\" errors=\"0\""), "{x}");
        assert!(x.contains("CMD: Power &lt;on&gt; &amp; &quot;x&quot;"), "{x}");
        assert!(x.contains("<failure message=\"step 2 (line 7): expected console &quot;MQT: Connected&quot;\""), "{x}");
    }
}
