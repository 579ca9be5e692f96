//! Golden transcripts: `fixtures/transcripts/<name>.log` holds the device console of a
//! library scenario run on the virtual clock, one line per console line (a scenario
//! elsewhere keeps its `<name>.log` beside it, see [`golden_dir`]). A run compares line
//! by line; `--bless` writes the file instead.

use std::path::{Path, PathBuf};

/// `fixtures/transcripts` beside the scenario's folder (`scenarios/x.toml` →
/// `fixtures/transcripts`).
pub fn default_dir(scenario: &Path) -> PathBuf {
    folder(scenario).join("..").join("fixtures").join("transcripts")
}

/// Where a scenario's golden transcript lives, or `None` when it is not compared.
///
/// In the library (a scenario whose folder has `../fixtures/transcripts` beside it) every
/// scenario has one unless it says `transcript = false`. Elsewhere a scenario is compared
/// only when it says `transcript = true` or a `<name>.log` already exists beside it (or in
/// `explicit`, from `--transcripts DIR`); `--bless` writes there.
pub fn golden_dir(
    scenario: &Path,
    name: &str,
    wanted: Option<bool>,
    explicit: Option<&Path>,
    bless: bool,
) -> Option<PathBuf> {
    if wanted == Some(false) {
        return None;
    }
    let library = default_dir(scenario);
    let in_library = library.is_dir();
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None if in_library => library,
        None => folder(scenario).to_path_buf(),
    };
    let compare = bless || wanted == Some(true) || in_library || dir.join(format!("{name}.log")).is_file();
    compare.then_some(dir)
}

/// The folder a scenario file is in (`.` for a bare file name).
fn folder(scenario: &Path) -> &Path {
    match scenario.parent() {
        Some(f) if !f.as_os_str().is_empty() => f,
        _ => Path::new("."),
    }
}

pub enum Checked {
    Same,
    Written(PathBuf),
}

/// Compares `lines` with `<dir>/<name>.log` (or writes it when `bless`). The error is
/// the failure message: a missing file, or a diff.
pub fn check(dir: &Path, name: &str, lines: &[String], bless: bool) -> Result<Checked, String> {
    let path = dir.join(format!("{name}.log"));
    let mut text = lines.join("\n");
    text.push('\n');
    if bless {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".{name}.log.tmp"));
        std::fs::write(&tmp, &text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        return Ok(Checked::Written(path));
    }
    let golden = match std::fs::read_to_string(&path) {
        Ok(g) => g,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "no golden transcript {} (run with --bless to write it, after checking the output)",
                path.display()
            ))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let want: Vec<&str> = golden.lines().collect();
    let got: Vec<&str> = lines.iter().map(String::as_str).collect();
    if want == got {
        return Ok(Checked::Same);
    }
    Err(format!("the console differs from {} (- golden, + this run):\n{}", path.display(), diff(&want, &got)))
}

/// A unified-style diff around the first difference (at most 30 lines shown).
pub fn diff(want: &[&str], got: &[&str]) -> String {
    let first = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    // Common tail, to show only the changed middle.
    let mut tail = 0;
    while tail < want.len() - first
        && tail < got.len() - first
        && want[want.len() - 1 - tail] == got[got.len() - 1 - tail]
    {
        tail += 1;
    }
    let mut out = Vec::new();
    let ctx = first.saturating_sub(3);
    out.push(format!("@@ line {} @@", first + 1));
    for l in &want[ctx..first] {
        out.push(format!("  {l}"));
    }
    for l in &want[first..want.len() - tail] {
        out.push(format!("- {l}"));
    }
    for l in &got[first..got.len() - tail] {
        out.push(format!("+ {l}"));
    }
    for l in want[want.len() - tail..].iter().take(3) {
        out.push(format!("  {l}"));
    }
    if out.len() > 30 {
        let more = out.len() - 30;
        out.truncate(30);
        out.push(format!("... {more} more diff lines"));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_the_changed_middle() {
        let d = diff(&["a", "b", "c", "d"], &["a", "x", "c", "d"]);
        assert_eq!(d, "@@ line 2 @@\n  a\n- b\n+ x\n  c\n  d");
        let d = diff(&["a"], &["a", "b"]);
        assert_eq!(d, "@@ line 2 @@\n  a\n+ b");
    }

    #[test]
    fn bless_then_compare() {
        let dir = tempfile::tempdir().unwrap();
        let lines = vec!["00:00:00.000 HDW: ESP8266EX".to_string()];
        let e = match check(dir.path(), "x", &lines, false) {
            Err(e) => e,
            Ok(_) => panic!("a missing transcript must fail"),
        };
        assert!(e.contains("--bless"), "{e}");
        assert!(matches!(check(dir.path(), "x", &lines, true), Ok(Checked::Written(_))));
        assert!(matches!(check(dir.path(), "x", &lines, false), Ok(Checked::Same)));
        let other = vec!["00:00:00.000 HDW: ESP32".to_string()];
        let e = match check(dir.path(), "x", &other, false) {
            Err(e) => e,
            Ok(_) => panic!("a different transcript must fail"),
        };
        assert!(e.contains("- 00:00:00.000 HDW: ESP8266EX\n+ 00:00:00.000 HDW: ESP32"), "{e}");
    }
}
