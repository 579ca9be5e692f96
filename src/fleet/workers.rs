//! `tasmota-sim fleet --processes K|auto`: the fleet as K worker processes of this same
//! binary on this machine, each one shard (`--shard I/K`), with one progress line and one
//! report.
//!
//! Why processes: one process holds at most its open-file limit of sockets (20,000 here,
//! a hard limit), and a device holds one (two with `--embedded`, whose broker holds the
//! other end). Each worker writes its report to a file of a temporary directory and tells
//! its progress as JSON lines on stdout ([`super::ProgressLine`]); the parent adds the
//! lines up for its progress line and merges the reports exactly ([`super::merge`]).
//!
//! Workers never outlive the parent: each asks the kernel for SIGKILL when its parent
//! dies (`prctl(PR_SET_PDEATHSIG)`), and on SIGINT or SIGTERM the parent stops them all
//! (SIGTERM, then SIGKILL after 2 s). A worker that dies is reported with its shard, its
//! exit status and the end of its stderr, and the report merges the others (its shard
//! listed as missing); the run then fails (exit 1).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::merge::{read_reports, Input, Shard};
use super::ProgressLine;

/// Sockets a device needs in a process, per target.
pub fn sockets_per_device(embedded: bool, virtual_clock: bool) -> u64 {
    match (virtual_clock, embedded) {
        (true, _) => 0,
        (false, true) => 2,
        (false, false) => 1,
    }
}

/// Sockets and files a fleet process holds besides its devices' (runtime, operator,
/// listener, stdio).
pub const SPARE_FILES: u64 = 64;

/// `--processes auto`: enough workers that none needs more open files than `limit`; on
/// the virtual clock (no sockets), one per CPU.
pub fn auto_processes(devices: u64, per_device: u64, limit: u64, cpus: u64) -> u32 {
    if per_device == 0 {
        return cpus.clamp(1, devices.max(1)) as u32;
    }
    let room = limit.saturating_sub(SPARE_FILES).max(per_device) / per_device;
    devices.div_ceil(room).max(1) as u32
}

/// A worker that did not finish its run.
#[derive(Debug)]
pub struct Died {
    pub shard: Shard,
    pub status: String,
    /// The last lines it wrote on stderr.
    pub stderr_tail: String,
}

impl std::fmt::Display for Died {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker of shard {} {}", self.shard, self.status)?;
        if !self.stderr_tail.is_empty() {
            write!(f, "; its stderr ended with:\n{}", self.stderr_tail)?;
        }
        Ok(())
    }
}

/// What the workers left.
pub struct Outcome {
    pub reports: Vec<Input>,
    pub died: Vec<Died>,
    /// A signal stopped the run (the parent stopped the workers).
    pub stopped: bool,
}

/// The arguments a worker runs with: the parent's fleet arguments without the ones the
/// parent keeps (`--processes`, `--json`, `--html`, `--slo`, `--quiet`), plus its shard, its
/// report file and progress lines.
pub fn worker_args(parent: &[OsString], shard: Shard, report: &Path) -> Vec<OsString> {
    const WITH_VALUE: [&str; 4] = ["--processes", "--json", "--html", "--slo"];
    const ALONE: [&str; 2] = ["--quiet", "-q"];
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in parent {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let text = a.to_string_lossy();
        if WITH_VALUE.contains(&text.as_ref()) {
            skip_next = true;
            continue;
        }
        if WITH_VALUE.iter().any(|f| text.starts_with(&format!("{f}="))) || ALONE.contains(&text.as_ref()) {
            continue;
        }
        out.push(a.clone());
    }
    out.extend([
        "--shard".into(),
        shard.to_string().into(),
        "--json".into(),
        report.as_os_str().to_owned(),
        "--quiet".into(),
        "--progress-lines".into(),
    ]);
    out
}

/// Runs `k` workers of `exe fleet ARGS` and waits for them; `bar` shows their sum.
pub async fn run(exe: &Path, parent_args: &[OsString], k: u32, bar: Option<indicatif::ProgressBar>) -> Outcome {
    let dir = scratch_dir();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, ProgressLine)>();
    let mut children: Vec<(Shard, Option<Child>, PathBuf, PathBuf)> = Vec::new();
    let mut died = Vec::new();
    for index in 0..k {
        let shard = Shard { index, count: k };
        let report = dir.join(format!("shard-{index}.json"));
        let stderr_path = dir.join(format!("shard-{index}.stderr"));
        match spawn(exe, &worker_args(parent_args, shard, &report), &stderr_path) {
            Ok(mut child) => {
                if let Some(out) = child.stdout.take() {
                    let tx = tx.clone();
                    let slot = index as usize;
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(out).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if let Ok(p) = serde_json::from_str::<ProgressLine>(&line) {
                                let _ = tx.send((slot, p));
                            }
                        }
                    });
                }
                children.push((shard, Some(child), report, stderr_path));
            }
            Err(e) => {
                died.push(Died { shard, status: format!("could not start: {e}"), stderr_tail: String::new() });
                children.push((shard, None, report, stderr_path));
            }
        }
    }
    drop(tx);
    let mut lines = vec![ProgressLine::default(); k as usize];
    let mut shutdown = crate::signal::Shutdown::new().ok();
    let mut stopped = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        // Reap the workers that ended.
        for (shard, slot, _, stderr_path) in &mut children {
            let Some(child) = slot else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                *slot = None;
                if !status.success() && !stopped {
                    died.push(Died { shard: *shard, status: describe(status), stderr_tail: tail(stderr_path, 12) });
                }
            }
        }
        if children.iter().all(|c| c.1.is_none()) {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            Some((slot, line)) = rx.recv() => {
                lines[slot] = line;
                if let Some(bar) = &bar {
                    super::show_progress(bar, &sum(&lines));
                }
            }
            _ = async { match &mut shutdown { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                stopped = true;
                stop_all(&mut children).await;
            }
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let mut reports = Vec::new();
    for (shard, _, report, stderr_path) in &children {
        if died.iter().any(|d| d.shard == *shard) || stopped {
            continue;
        }
        match std::fs::read_to_string(report) {
            Ok(text) => match read_reports(&text, &report.display().to_string()) {
                Ok(r) => reports.extend(r),
                Err(e) => died.push(Died {
                    shard: *shard,
                    status: format!("left a bad report: {e}"),
                    stderr_tail: tail(stderr_path, 12),
                }),
            },
            Err(e) => died.push(Died {
                shard: *shard,
                status: format!("exited 0 but wrote no report: {e}"),
                stderr_tail: tail(stderr_path, 12),
            }),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Outcome { reports, died, stopped }
}

fn sum(lines: &[ProgressLine]) -> ProgressLine {
    lines.iter().fold(ProgressLine::default(), |a, l| ProgressLine {
        devices: a.devices + l.devices,
        connected: a.connected + l.connected,
        messages_out: a.messages_out + l.messages_out,
        sent: a.sent + l.sent,
        answered: a.answered + l.answered,
        // The workers' p99s cannot be added; the largest is shown until the merge.
        p99_us: a.p99_us.max(l.p99_us),
    })
}

fn spawn(exe: &Path, args: &[OsString], stderr_path: &Path) -> std::io::Result<Child> {
    let stderr = std::fs::File::create(stderr_path)?;
    let mut cmd = Command::new(exe);
    cmd.arg("fleet").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(stderr));
    cmd.kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}

/// SIGTERM to every worker still running, SIGKILL to those still there 2 s later.
async fn stop_all(children: &mut [(Shard, Option<Child>, PathBuf, PathBuf)]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for (_, child, _, _) in children.iter() {
        if let Some(pid) = child.as_ref().and_then(Child::id) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for (_, slot, _, _) in children.iter_mut() {
        if let Some(child) = slot {
            if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        *slot = None;
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!(
            "was killed by signal {sig} ({})",
            nix::sys::signal::Signal::try_from(sig).map_or("unknown", |s| s.as_str())
        ),
        _ => format!("ended: {status}"),
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A fresh directory for the workers' reports.
fn scratch_dir() -> PathBuf {
    let base = std::env::temp_dir();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = base.join(format!("tasmota-sim-fleet-{}-{stamp}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_enough_workers_for_the_open_file_limit() {
        // 25,000 devices against the embedded broker: two sockets each, 20,000 files a
        // process: 9,968 devices a worker, three workers.
        assert_eq!(auto_processes(25_000, 2, 20_000, 2), 3);
        assert_eq!(auto_processes(19_936, 1, 20_000, 2), 1);
        assert_eq!(auto_processes(19_937, 1, 20_000, 2), 2);
        assert_eq!(auto_processes(100_000, 1, 20_000, 2), 6);
        // No sockets on the virtual clock: a worker per CPU, never more than devices.
        assert_eq!(auto_processes(1_000, 0, 20_000, 8), 8);
        assert_eq!(auto_processes(3, 0, 20_000, 8), 3);
    }

    #[test]
    fn a_worker_gets_the_parent_arguments_but_its_own_output() {
        let parent: Vec<OsString> = [
            "--devices",
            "100",
            "--processes",
            "auto",
            "--json",
            "r.json",
            "--html=r.html",
            "-q",
            "--slo",
            "p99<5ms",
            "--embedded",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let args = worker_args(&parent, Shard { index: 1, count: 3 }, Path::new("/tmp/x/shard-1.json"));
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--devices",
                "100",
                "--embedded",
                "--shard",
                "1/3",
                "--json",
                "/tmp/x/shard-1.json",
                "--quiet",
                "--progress-lines"
            ]
        );
    }
}
