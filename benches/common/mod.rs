//! What every benchmark shares: machine facts for the report, and writing its marked
//! section of BENCHMARKS.md.

// Only the benches that start processes use it.
#[allow(dead_code)]
pub mod process;

use std::path::PathBuf;
use std::process::Command;

/// A command's trimmed stdout, if it ran and printed something.
pub fn shell(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// `/proc/cpuinfo`: the CPU model and the number of processors.
pub fn cpu() -> (String, Option<usize>) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    (model, (cores > 0).then_some(cores))
}

/// Replaces the section of BENCHMARKS.md between `begin` and the first `end` after it
/// (or appends `section`, creating the file), atomically.
pub fn write_benchmarks_md(begin: &str, end: &str, section: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let new = match old.find(begin).and_then(|a| old[a..].find(end).map(|b| (a, a + b))) {
        Some((a, b)) => {
            let rest = old[b + end.len()..].strip_prefix('\n').unwrap_or(&old[b + end.len()..]);
            format!("{}{section}{rest}", &old[..a])
        }
        None => format!("{}\n\n{section}", old.trim_end()),
    };
    // One temp name per process, so two benches never write over each other's temp file.
    let tmp = path.with_extension(format!("md.{}.tmp", std::process::id()));
    std::fs::write(&tmp, new)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
