//! Scenarios: a TOML file says what is typed, sent and broken, and what must be seen; the
//! runner carries it out on a virtual clock (embedded brokers over in-memory links) or in
//! real time (`--real-time`, or `--broker URL` for a real broker), compares the device's
//! console with its golden transcript and reports a verdict (human, JSON, JUnit).
//!
//! - [`file`]: the language, checked with file:line:column errors.
//! - [`step`]: the one table of step kinds and what each is checked into.
//! - [`world`]: devices, brokers and operators on one event loop.
//! - [`run`]: steps and expectations.
//! - [`transcript`]: golden transcripts and `--bless`.
//! - [`report`]: human, JSON and JUnit output.

pub mod file;
pub mod operator;
pub mod report;
pub mod rules;
pub mod run;
pub mod step;
pub mod transcript;
pub mod world;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use file::line_col;
pub use file::{FileError, Scenario};

use crate::broker::Record;
use crate::link::Resolve;

/// How scenarios are run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run on the wall clock even with embedded brokers.
    pub real_time: bool,
    /// A real broker standing in for the scenario's one broker (implies real time).
    pub broker: Option<BrokerUrl>,
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
    pub resolve: Vec<Resolve>,
    /// Where golden transcripts live (default: `fixtures/transcripts` next to a library
    /// scenario's folder, else beside the scenario; see [`transcript::golden_dir`]).
    pub transcripts: Option<PathBuf>,
    /// Write transcripts instead of comparing.
    pub bless: bool,
    /// Where the embedded brokers' self-signed CA is kept between runs.
    pub tls_dir: PathBuf,
}

impl Options {
    pub fn new(tls_dir: PathBuf) -> Options {
        Options {
            real_time: false,
            broker: None,
            ca_file: None,
            insecure: false,
            resolve: Vec::new(),
            transcripts: None,
            bless: false,
            tls_dir,
        }
    }
}

/// The default home of the embedded brokers' CA: `$XDG_CACHE_HOME/tasmota-sim/tls`,
/// `~/.cache/tasmota-sim/tls`, or the temp directory.
pub fn default_tls_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tasmota-sim").join("tls")
}

/// `--broker mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", if self.tls { "mqtts" } else { "mqtt" }, self.host, self.port)
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!("'{s}': expected mqtt://HOST:PORT or mqtts://HOST:PORT"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("'{s}': '{p}' is not a port number"))?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("'{s}': no host"));
        }
        Ok(BrokerUrl { tls, host: host.to_string(), port })
    }
}

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// `step`: its number (1-based), line and column; `None` for the transcript or setup.
    Failed {
        step: Option<(usize, usize, usize)>,
        message: String,
    },
    /// The scenario cannot be run as given (exit code 2).
    Invalid(String),
    /// Not run here: its broker is external and no `--broker` was given.
    Skipped(String),
}

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub file: PathBuf,
    pub verdict: Verdict,
    /// The device console, as golden transcripts hold it.
    pub transcript: Vec<String>,
    /// Time the scenario covered (virtual or real), in ms.
    pub virtual_ms: u64,
    pub wall: Duration,
    pub steps_run: usize,
    pub steps_total: usize,
    /// Each embedded broker's record.
    pub records: Vec<Vec<Record>>,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn invalid(s: &Scenario, message: String) -> Outcome {
        Outcome { verdict: Verdict::Invalid(message), ..Outcome::empty(&s.name, &s.file, s.steps.len()) }
    }

    pub fn failed(s: &Scenario, step: Option<(usize, usize, usize)>, message: String) -> Outcome {
        Outcome { verdict: Verdict::Failed { step, message }, ..Outcome::empty(&s.name, &s.file, s.steps.len()) }
    }

    pub fn empty(name: &str, file: &std::path::Path, steps_total: usize) -> Outcome {
        Outcome {
            name: name.to_string(),
            file: file.to_path_buf(),
            verdict: Verdict::Passed,
            transcript: Vec::new(),
            virtual_ms: 0,
            wall: Duration::ZERO,
            steps_run: 0,
            steps_total,
            records: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// Loads and runs one scenario file; a file that does not load is an `Invalid` outcome.
pub fn run_file(path: &std::path::Path, opts: &Options) -> Outcome {
    match Scenario::load(path) {
        Ok(s) => run::run(&s, opts),
        Err(e) => {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            Outcome { verdict: Verdict::Invalid(e.to_string()), ..Outcome::empty(&name, path, 0) }
        }
    }
}
