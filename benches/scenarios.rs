//! The scenario runner on the virtual clock, in one run on this machine, through the library
//! (`tasmota_sim::scenario::run_file` with `Options::new`, as `tasmota-sim scenario` runs them):
//!
//! - the whole library: every `scenarios/*.toml` (enumerated when the bench starts), one after
//!   the other, 5 times; median and fastest pass;
//! - `scenarios/telemetry-day.toml` (25 h of device time) 20 times: median, fastest, slowest,
//!   against the target of under 100 ms;
//! - steps per second over the library (its steps over the runner's wall time) and the
//!   device-time speed-up (device time over wall time).
//!
//! Scenarios whose broker is external (they need `--broker URL`) are skipped and listed. Any
//! other scenario that does not pass makes the bench print why and exit non-zero: a number for
//! a scenario that fails means nothing.
//!
//! `cargo bench --bench scenarios` runs it all and writes the results into BENCHMARKS.md
//! between `<!-- scenarios-bench:start -->` and `<!-- scenarios-bench:end -->` (appended at
//! the end the first time). `-- --quick` runs fewer passes and only prints. Without `--bench`
//! (that is, under `cargo test --benches`) it does nothing.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::shell;
use tasmota_sim::scenario::{run_file, Options, Outcome, Verdict};

const START: &str = "<!-- scenarios-bench:start -->";
const END: &str = "<!-- scenarios-bench:end -->";
/// The scenario the target is about: a day of telemetry (25 h of device time).
const DAY: &str = "telemetry-day.toml";
/// Target for one run of `DAY`, end to end (load, run, transcript check), median of the runs.
const DAY_TARGET: Duration = Duration::from_millis(100);

/// How many passes: `--quick` or the full run.
struct Plan {
    quick: bool,
    library_passes: usize,
    day_runs: usize,
}

/// The library's scenario files, sorted by name.
fn library(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no scenarios in {}", dir.display()));
    }
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// `Some(why)` when the scenario was not run because its broker is external.
fn needs_external_broker(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Skipped(why) => Some(why),
        Verdict::Invalid(why) if why.contains("--broker") => Some(why),
        _ => None,
    }
}

/// `Err` with the file and the reason for anything but a pass.
fn passed(path: &Path, o: &Outcome) -> Result<(), String> {
    match &o.verdict {
        Verdict::Passed => Ok(()),
        Verdict::Failed { step: Some((n, line, col)), message } => {
            Err(format!("{}: FAILED at step {n} ({line}:{col}): {message}", path.display()))
        }
        Verdict::Failed { step: None, message } => Err(format!("{}: FAILED: {message}", path.display())),
        Verdict::Invalid(m) => Err(format!("{}: INVALID: {m}", path.display())),
        Verdict::Skipped(m) => Err(format!("{}: SKIPPED: {m}", path.display())),
    }
}

/// The library split by the warm-up pass.
struct Split {
    /// The files that run (and pass) here.
    runnable: Vec<PathBuf>,
    /// File name and why, for the files that need `--broker URL`.
    skipped: Vec<(String, String)>,
}

/// Runs every file once (this also writes the embedded brokers' CA into the TLS directory the
/// first time), and splits the library into what can run here and what needs `--broker`.
fn warm_up(files: &[PathBuf], opts: &Options) -> Result<Split, String> {
    let (mut run, mut skipped, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for path in files {
        let o = run_file(path, opts);
        if let Some(why) = needs_external_broker(&o.verdict) {
            skipped.push((file_name(path), why.to_string()));
        } else {
            match passed(path, &o) {
                Ok(()) => run.push(path.clone()),
                Err(e) => failures.push(e),
            }
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("\n"));
    }
    Ok(Split { runnable: run, skipped })
}

/// One scenario's numbers over the library passes.
struct PerScenario {
    name: String,
    steps: usize,
    virtual_ms: u64,
    walls: Vec<Duration>,
}

/// What the library passes measured.
struct LibraryRun {
    /// Each pass end to end: every file loaded, run and its transcript checked.
    passes: Vec<Duration>,
    per_scenario: Vec<PerScenario>,
    /// Over all passes: the steps, the device time and the runner's wall time (`Outcome::wall`).
    steps: usize,
    virtual_ms: u64,
    wall: Duration,
}

fn run_library(files: &[PathBuf], opts: &Options, passes: usize) -> Result<LibraryRun, String> {
    let mut per_scenario: Vec<PerScenario> =
        files.iter().map(|p| PerScenario { name: file_name(p), steps: 0, virtual_ms: 0, walls: Vec::new() }).collect();
    let mut run =
        LibraryRun { passes: Vec::new(), per_scenario: Vec::new(), steps: 0, virtual_ms: 0, wall: Duration::ZERO };
    for pass in 0..passes {
        let mut outcomes = Vec::with_capacity(files.len());
        let started = Instant::now();
        for path in files {
            outcomes.push(run_file(path, opts));
        }
        let took = started.elapsed();
        for ((path, o), s) in files.iter().zip(&outcomes).zip(&mut per_scenario) {
            passed(path, o)?;
            s.steps = o.steps_total;
            s.virtual_ms = o.virtual_ms;
            s.walls.push(o.wall);
            run.steps += o.steps_total;
            run.virtual_ms += o.virtual_ms;
            run.wall += o.wall;
        }
        eprintln!("  library pass {}/{passes}: {}", pass + 1, ms(took));
        run.passes.push(took);
    }
    run.per_scenario = per_scenario;
    Ok(run)
}

/// `DAY` end to end, `runs` times.
fn run_day(path: &Path, opts: &Options, runs: usize) -> Result<(Vec<Duration>, u64), String> {
    let mut walls = Vec::with_capacity(runs);
    let mut virtual_ms = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let o = run_file(path, opts);
        let took = started.elapsed();
        passed(path, &o)?;
        virtual_ms = o.virtual_ms;
        walls.push(took);
    }
    Ok((walls, virtual_ms))
}

/// Median (mean of the middle two for an even count), min and max.
fn stats(samples: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = samples.to_vec();
    s.sort();
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2 };
    (median, s[0], s[n - 1])
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn device_time(virtual_ms: u64) -> String {
    let s = virtual_ms / 1000;
    if s >= 3600 {
        format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", virtual_ms as f64 / 1000.0)
    }
}

/// CPU model and core count, from /proc/cpuinfo.
fn machine() -> String {
    let (cpu, cores) = common::cpu();
    let cores = cores.map_or_else(|| "?".into(), |n| n.to_string());
    format!("{cpu}, {cores} cores")
}

struct Results {
    library_files: usize,
    skipped: Vec<(String, String)>,
    library: LibraryRun,
    day_walls: Vec<Duration>,
    day_virtual_ms: u64,
}

fn section(command: &str, plan: &Plan, r: &Results) -> String {
    let date = shell("date", &["-u", "+%F"]).unwrap_or_else(|| "unknown date".into());
    let rustc = shell("rustc", &["--version"]).unwrap_or_else(|| "rustc (unknown version)".into());
    let lib = &r.library;
    let (lib_median, lib_min, _) = stats(&lib.passes);
    let (day_median, day_min, day_max) = stats(&r.day_walls);
    let wall_s = lib.wall.as_secs_f64();
    let steps_per_s = if wall_s > 0.0 { lib.steps as f64 / wall_s } else { 0.0 };
    let speed_up = if wall_s > 0.0 { lib.virtual_ms as f64 / (wall_s * 1000.0) } else { 0.0 };
    let met = if day_median < DAY_TARGET { "met" } else { "MISSED" };
    let run = lib.per_scenario.len();
    let one_pass_steps: usize = lib.per_scenario.iter().map(|s| s.steps).sum();
    let one_pass_virtual: u64 = lib.per_scenario.iter().map(|s| s.virtual_ms).sum();

    let mut t = String::new();
    let _ = write!(
        t,
        "{START}\n## Scenario runner\n\n\
         `{command}` on {date}, tasmota-sim {}, {rustc}.\n\
         Machine: {}.\n\n\
         Through the library (`scenario::run_file` with `Options::new`: virtual clock, embedded \
         brokers over in-memory links, golden transcripts checked), one scenario after the other \
         on one thread. Library: every `scenarios/*.toml` found when the bench started ({} files; \
         {run} run, {} skipped), {} passes after one warm-up pass; a pass is timed end to end \
         (load, run, transcript check). `{DAY}`: {} runs, each timed end to end; the target is \
         met when the median is under {} ms. Steps per second and speed-up are over all the \
         library passes: the scenarios' steps and device time over the runner's own wall time \
         (`Outcome::wall`, which leaves out loading the file and checking the transcript).\n\n",
        env!("CARGO_PKG_VERSION"),
        machine(),
        r.library_files,
        r.skipped.len(),
        plan.library_passes,
        plan.day_runs,
        DAY_TARGET.as_millis(),
    );
    t.push_str("| row | result | target |\n|---|---:|---|\n");
    let _ = writeln!(
        t,
        "| library, {run} scenarios ({one_pass_steps} steps, {} of device time), median of {} passes | {} | |",
        device_time(one_pass_virtual),
        plan.library_passes,
        ms(lib_median)
    );
    let _ = writeln!(t, "| library, fastest pass | {} | |", ms(lib_min));
    let _ = writeln!(
        t,
        "| `{DAY}` ({} of device time), median of {} runs | {} | < {} ms: {met} |",
        device_time(r.day_virtual_ms),
        plan.day_runs,
        ms(day_median),
        DAY_TARGET.as_millis()
    );
    let _ = writeln!(t, "| `{DAY}`, fastest run | {} | |", ms(day_min));
    let _ = writeln!(t, "| `{DAY}`, slowest run | {} | |", ms(day_max));
    let _ = writeln!(t, "| library, scenario steps per second | {steps_per_s:.0} | |");
    let _ = writeln!(t, "| library, device time / wall time | {speed_up:.0}× | |");

    t.push_str("\nEach scenario, median of the library passes (runner wall time, `Outcome::wall`):\n\n");
    t.push_str("| scenario | steps | device time | wall (median) |\n|---|---:|---:|---:|\n");
    for s in &lib.per_scenario {
        let (median, _, _) = stats(&s.walls);
        let _ = writeln!(t, "| `{}` | {} | {} | {} |", s.name, s.steps, device_time(s.virtual_ms), ms(median));
    }
    if !r.skipped.is_empty() {
        t.push_str("\nSkipped (an external broker, `--broker URL`):\n\n");
        for (name, why) in &r.skipped {
            let _ = writeln!(t, "- `{name}`: {why}");
        }
    }
    t.push_str(END);
    t.push('\n');
    t
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("scenarios bench: skipped outside `cargo bench` (run `cargo bench --bench scenarios [-- --quick]`)");
        return ExitCode::SUCCESS;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let plan = Plan { quick, library_passes: if quick { 2 } else { 5 }, day_runs: if quick { 5 } else { 20 } };
    let command = format!("cargo bench --bench scenarios{}", if quick { " -- --quick" } else { "" });

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = match library(&root.join("scenarios")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("scenarios bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = Options::new(std::env::temp_dir().join("tasmota-sim-bench-tls"));

    eprintln!("scenarios bench: warm-up pass over {} scenarios ...", files.len());
    let Split { runnable, skipped } = match warm_up(&files, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scenarios bench: the library does not pass:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, why) in &skipped {
        eprintln!("  skipped {name}: {why}");
    }
    if runnable.is_empty() {
        eprintln!("scenarios bench: every scenario needs an external broker: nothing to measure");
        return ExitCode::FAILURE;
    }
    let day = root.join("scenarios").join(DAY);
    if !runnable.contains(&day) {
        eprintln!("scenarios bench: {} is not in the library (or needs an external broker)", day.display());
        return ExitCode::FAILURE;
    }

    eprintln!("scenarios bench: library, {} passes over {} scenarios ...", plan.library_passes, runnable.len());
    let library = match run_library(&runnable, &opts, plan.library_passes) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scenarios bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("scenarios bench: {DAY}, {} runs ...", plan.day_runs);
    let (day_walls, day_virtual_ms) = match run_day(&day, &opts, plan.day_runs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scenarios bench: {e}");
            return ExitCode::FAILURE;
        }
    };

    let results = Results { library_files: files.len(), skipped, library, day_walls, day_virtual_ms };
    let section = section(&command, &plan, &results);
    println!("\n{section}");
    if plan.quick {
        eprintln!("scenarios bench: a quick run: BENCHMARKS.md left as it was");
    } else {
        match common::write_benchmarks_md(START, END, &section) {
            Ok(path) => eprintln!("scenarios bench: wrote {}", path.display()),
            Err(e) => {
                eprintln!("scenarios bench: cannot write BENCHMARKS.md: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
