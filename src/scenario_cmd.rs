//! `tasmota-sim scenario`: run scenario files and report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use tasmota_sim::link::Resolve;
use tasmota_sim::scenario::{self, report, BrokerUrl, Options, Outcome, Verdict};

pub const EXAMPLES: &str = "\
Examples:
  # Tasmota's AWS IoT guide, end to end, on the embedded aws-iot broker (virtual clock)
  tasmota-sim scenario scenarios/aws-iot-light.toml

  # The whole library, with a JUnit report for CI
  tasmota-sim scenario scenarios/ --junit target/scenarios.xml

  # Accept a changed console after checking it (rewrites fixtures/transcripts/<name>.log)
  tasmota-sim scenario scenarios/backoff-growth.toml --bless

  # MQTT 5 operators: user properties, reason codes, a shared subscription
  tasmota-sim scenario scenarios/mqtt5-shared-subscription.toml scenarios/mqtt5-operator.toml

  # The same steps in real time against a real Mosquitto with TLS
  tasmota-sim scenario scenarios/mosquitto-tls-password.toml --broker mqtts://127.0.0.1:8883 --ca-file ca.pem

Scenario files are documented in scenarios/README.md. Exit codes: 0 every scenario
passed, 1 a scenario failed, 2 a scenario is invalid (or bad arguments).";

#[derive(clap::Args)]
pub struct ScenarioArgs {
    /// Scenario files, or folders whose *.toml files are all run (in name order).
    #[arg(required = true, value_name = "FILE|DIR")]
    paths: Vec<PathBuf>,
    /// Write the console transcripts instead of comparing them.
    #[arg(long)]
    bless: bool,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Print a JSON report on stdout instead of the human one.
    #[arg(long)]
    json: bool,
    /// Only the verdict lines (no transcript for a single scenario).
    #[arg(long, short)]
    quiet: bool,
    /// Run on the wall clock even with the embedded brokers.
    #[arg(long)]
    real_time: bool,
    /// Run in real time against this broker instead of the scenario's embedded one
    /// (mqtt://HOST:PORT or mqtts://HOST:PORT; the devices never use WebSockets: an
    /// operator with ws_port or wss_port reaches that port on HOST over WebSocket).
    #[arg(long, value_name = "URL")]
    broker: Option<BrokerUrl>,
    /// With --broker: trust the certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// With --broker: accept any broker certificate.
    #[arg(long, conflicts_with = "ca_file")]
    insecure: bool,
    /// With --broker: connect to ADDR for HOST:PORT (curl's --resolve).
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    resolve: Vec<Resolve>,
    /// Golden transcripts folder (default: fixtures/transcripts beside the scenario's folder
    /// when that exists, else the scenario's own folder).
    #[arg(long, value_name = "DIR")]
    transcripts: Option<PathBuf>,
    /// Where the embedded brokers' self-signed CA is kept (default ~/.cache/tasmota-sim/tls).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

pub fn run(args: ScenarioArgs) -> ExitCode {
    // A report that cannot be written is bad input, said before any scenario runs.
    if let Some(path) = &args.junit {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
            eprintln!("tasmota-sim: --junit {}: the folder {} does not exist", path.display(), dir.display());
            return ExitCode::from(2);
        }
    }
    let mut files = Vec::new();
    for p in &args.paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = match std::fs::read_dir(p) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                    .collect(),
                Err(e) => {
                    eprintln!("tasmota-sim: {}: {e}", p.display());
                    return ExitCode::from(2);
                }
            };
            found.sort();
            if found.is_empty() {
                eprintln!("tasmota-sim: {}: no *.toml scenario files", p.display());
                return ExitCode::from(2);
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let opts = Options {
        real_time: args.real_time || args.broker.is_some(),
        broker: args.broker,
        ca_file: args.ca_file,
        insecure: args.insecure,
        resolve: args.resolve,
        transcripts: args.transcripts,
        bless: args.bless,
        tls_dir: args.tls_dir.unwrap_or_else(scenario::default_tls_dir),
    };
    let bar = (files.len() > 1 && std::io::stderr().is_terminal() && !args.json).then(|| {
        let bar = indicatif::ProgressBar::new(files.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let single = files.len() == 1;
    let mut outcomes: Vec<Outcome> = Vec::new();
    for f in &files {
        if let Some(b) = &bar {
            b.set_message(f.display().to_string());
        }
        let o = scenario::run_file(f, &opts);
        if !args.json {
            let text = report::human(&o, single && !args.quiet);
            match &bar {
                Some(b) => b.suspend(|| out(&text)),
                None => out(&text),
            }
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
        outcomes.push(o);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&report::json(&outcomes)).unwrap_or_default()));
    } else if !single {
        let passed = outcomes.iter().filter(|o| o.verdict == Verdict::Passed).count();
        let skipped = outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Skipped(_))).count();
        let wall: f64 = outcomes.iter().map(|o| o.wall.as_secs_f64()).sum();
        out(&format!("{passed} of {} scenarios passed ({skipped} skipped) in {:.2} s\n", outcomes.len(), wall));
    }
    if let Some(path) = &args.junit {
        let xml = report::junit(&outcomes);
        let tmp = path.with_extension("xml.tmp");
        if let Err(e) = std::fs::write(&tmp, xml).and_then(|()| std::fs::rename(&tmp, path)) {
            eprintln!("tasmota-sim: cannot write --junit {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if outcomes.iter().any(|o| matches!(o.verdict, Verdict::Invalid(_))) {
        ExitCode::from(2)
    } else if outcomes.iter().any(|o| matches!(o.verdict, Verdict::Failed { .. })) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes to stdout. A reader that went away (`| head`) does not stop the run or panic:
/// the exit code and `--junit` still tell the verdict.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
