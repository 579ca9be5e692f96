//! `tasmota-sim fleet`: many devices, one workload, one report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tasmota_core::Mac;
use tasmota_sim::broker::ProfileName;
use tasmota_sim::duration::parse_duration;
use tasmota_sim::fleet::{self, report, GroupCommand, Target};
use tasmota_sim::scenario::BrokerUrl;

pub const EXAMPLES: &str = "\
Examples:
  # 500 Sonoff Basics for an hour of fleet time on the virtual clock (a few seconds),
  # toggled by 10 commands a second, every device told 'Power ON' at 30 min
  tasmota-sim fleet --devices 500 --virtual --for 1h --commands-per-second 10 \\
    --group-command 'Power ON@30m' --json fleet.json --html fleet.html

  # 2,000 devices against the embedded broker on a loopback socket, in real time,
  # booted 500 a second; fail (exit 1) unless p99 < 5 ms and every command is answered
  tasmota-sim fleet --devices 2000 --embedded --connect-rate 500 --for 30s \\
    --commands-per-second 200 --slo 'p99<5ms,unanswered=0'

  # Against your own Mosquitto, with a login
  tasmota-sim fleet --devices 300 --broker mqtt://127.0.0.1:1883 --user bob --password secret --for 20s

  # The same workload from an MQTT 5 operator client (the devices stay MQTT 3.1.1)
  tasmota-sim fleet --devices 500 --virtual --for 10m --commands-per-second 10 --operator-protocol 5

  # The reconnect storm: the embedded broker goes away at 2 min for 30 s
  tasmota-sim fleet --devices 1000 --virtual --for 10m --broker-outage 2m/30s

  # 200 devices in AWS IoT light mode (TLS on 443, ALPN mqtt, TasmotaAuth) against the
  # embedded aws-iot broker, on the virtual clock
  tasmota-sim fleet --devices 200 --virtual aws-iot --for 5m --commands-per-second 5

  # 25,000 devices in worker processes of this program (each under the open-file
  # limit), with one progress line and one report
  tasmota-sim fleet --devices 25000 --embedded --processes auto --for 60s --json fleet.json

  # Shard 1 of 4 (one machine of four, or a pod of a Kubernetes Indexed Job with
  # --shards 4), merged later with 'tasmota-sim fleet merge'
  tasmota-sim fleet --devices 4000 --virtual --for 10m --shard 1/4 --json r1.json

MACs count up from --mac-base (default 5C:CF:7F:00:00:00: topics tasmota_000000,
tasmota_000001, ...). Exit codes: 0 ok, 1 an --slo term missed or the run failed (the
broker cannot be reached or refuses the operator's CONNECT, no device connected, or a
worker died), 2 bad input, 130 stopped by Ctrl-C or SIGTERM.";

/// Flags of `tasmota-sim fleet`.
#[derive(clap::Args)]
pub struct FleetArgs {
    /// How many devices (one group; see --fleet for several).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000), required_unless_present = "fleet")]
    devices: Option<u32>,
    /// Groups of devices from a fleet file (count, profile, mac_base, tele_period,
    /// settings, setoptions, and the rules shorthand rules, rules_enabled, rules_once,
    /// rules_stop_on_error, vars, mems per [[group]]; see the README's "Fleets").
    #[arg(long, value_name = "FILE.toml", conflicts_with_all = ["devices", "profile", "mac_base", "tele_period"])]
    fleet: Option<PathBuf>,
    /// What every device is built from: a built-in profile or a profile file.
    #[arg(long, value_name = "NAME|PATH")]
    profile: Option<String>,
    /// The first device's MAC; the others count up from it (default 5C:CF:7F:00:00:00).
    #[arg(long, value_name = "MAC")]
    mac_base: Option<Mac>,
    /// Devices and an embedded broker (plain, or aws-iot: TLS on 443, ALPN mqtt,
    /// TasmotaAuth) over in-memory links, on the virtual clock.
    #[arg(long = "virtual", value_name = "PROFILE", group = "target", num_args = 0..=1, default_missing_value = "plain")]
    virtual_clock: Option<ProfileName>,
    /// An embedded broker (plain, or aws-iot) in this process, on a loopback socket, in
    /// real time.
    #[arg(long, value_name = "PROFILE", group = "target", num_args = 0..=1, default_missing_value = "plain")]
    embedded: Option<ProfileName>,
    /// A broker at URL (mqtt://HOST:PORT or mqtts://HOST:PORT), in real time. Several
    /// (repeated, or a comma-separated list): device i connects to broker i mod their
    /// number, and the fleet has an operator on each.
    #[arg(long, value_name = "URL", env = "TASMOTA_SIM_BROKER", value_delimiter = ',')]
    broker: Vec<BrokerUrl>,
    /// The MQTT the operator client speaks: 4 (MQTT 3.1.1) or 5 (MQTT 5). The devices
    /// always speak MQTT 3.1.1, as Tasmota does.
    #[arg(long, value_name = "LEVEL", default_value = "4", value_parser = parse_protocol)]
    operator_protocol: tasmota_sim::scenario::operator::Protocol,
    /// MqttUser for every device and the operator.
    #[arg(long, value_name = "NAME", env = "TASMOTA_SIM_USER")]
    user: Option<String>,
    /// MqttPassword for every device and the operator (never printed).
    #[arg(long, value_name = "PASSWORD", env = "TASMOTA_SIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Run only shard I of N (0-based): the I-th slice of the device index range (MACs
    /// and topics from the global index, so shards never collide), with its share of
    /// --connect-rate and --commands-per-second; only shard 0 publishes the group
    /// commands. Merge the shards' reports with `fleet merge`.
    #[arg(long, value_name = "I/N", conflicts_with_all = ["shards", "processes"])]
    shard: Option<fleet::merge::Shard>,
    /// This process is shard JOB_COMPLETION_INDEX (what Kubernetes sets in an Indexed
    /// Job) of N.
    #[arg(long, value_name = "N", conflicts_with = "processes", value_parser = clap::value_parser!(u32).range(1..))]
    shards: Option<u32>,
    /// Run the fleet as K worker processes of this binary (each a shard), with one
    /// progress line and one merged report; 'auto': enough that none needs more sockets
    /// than the open-file limit allows (one per CPU with --virtual).
    #[arg(long, value_name = "K|auto")]
    processes: Option<Processes>,
    /// (For --processes' workers.) Progress as JSON lines on stdout.
    #[arg(long, hide = true)]
    progress_lines: bool,
    #[command(flatten)]
    tls: crate::device_cmd::TlsArgs,
    /// Devices booted per second (default: all at once).
    #[arg(long, value_name = "R")]
    connect_rate: Option<f64>,
    /// At most K device links between the start of their connect and the broker's
    /// CONNACK at once (0: no cap). A link waits for its turn before its TCP connect
    /// starts, so a broker's full accept queue does not fail the firmware's 200 ms
    /// connect; the wait counts in the connect latency. The default stays below
    /// Mosquitto's accept backlog of 100.
    #[arg(long, value_name = "K", default_value_t = 64)]
    in_flight: usize,
    /// 'Power TOGGLE' commands per second, each to a random connected device; every
    /// answer on stat/<topic>/RESULT is matched to its command.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    commands_per_second: f64,
    /// When the commands start (fleet time, e.g. 30s): after the connect storm and the
    /// devices' first discovery and telemetry, for steady-state latency.
    #[arg(long, value_name = "TIME", default_value = "0s", value_parser = parse_duration)]
    commands_from: Duration,
    /// A command on the group topic at a point of the run: 'Power ON@30s' (repeatable).
    #[arg(long, value_name = "CMD@TIME")]
    group_command: Vec<GroupCommand>,
    /// How long the fleet runs (fleet time: virtual with --virtual).
    #[arg(long = "for", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    run_for: Duration,
    /// TelePeriod of every device, in seconds (0, or 10..3600).
    #[arg(long, value_name = "SECONDS")]
    tele_period: Option<u16>,
    /// The embedded broker restarts at AT and refuses connections for DOWN: 'AT/DOWN'.
    #[arg(long, value_name = "AT/DOWN", value_parser = parse_outage)]
    broker_outage: Option<(Duration, Duration)>,
    /// A SetOption for every device: N=VALUE, like 59=1 (repeatable; see --fleet for
    /// groups with settings).
    #[arg(long = "setoption", value_name = "N=VALUE", conflicts_with = "fleet")]
    setoptions: Vec<fleet::plan::SetOption>,
    /// Against an AWS IoT endpoint (*.amazonaws.com), go past AWS IoT Core's quotas
    /// (500 CONNECT/s per account; 100 publishes/s per connection).
    #[arg(long)]
    exceed_aws_quotas: bool,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Region whose AWS IoT Core prices the bill uses (us-east-1, eu-central-1).
    #[arg(long, value_name = "REGION", default_value = "us-east-1")]
    aws_region: String,
    #[command(flatten)]
    out: Outputs,
    #[command(subcommand)]
    command: Option<FleetCommand>,
}

/// `--processes K|auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processes {
    Auto,
    Count(u32),
}

impl std::str::FromStr for Processes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Processes::Auto),
            n => match n.parse::<u32>() {
                Ok(k) if (1..=1024).contains(&k) => Ok(Processes::Count(k)),
                _ => Err(format!("'{s}': a number of processes from 1 to 1024, or auto")),
            },
        }
    }
}

/// A run in which no device ever connected fails (exit 1), its report written: the
/// table says so, and stderr says why it may be.
fn failed_if_nothing_connected(report: &report::Report, code: ExitCode) -> ExitCode {
    match report::nothing_connected(report) {
        Some(why) => {
            eprintln!("tasmota-sim fleet: {why}");
            ExitCode::from(1)
        }
        None => code,
    }
}

/// `tasmota-sim fleet merge`.
#[derive(clap::Subcommand)]
pub enum FleetCommand {
    /// Merge shards' reports into one fleet's: counts add, percentiles from the merged
    /// histograms, the AWS IoT bill from the merged counts.
    #[command(after_help = MERGE_EXAMPLES)]
    Merge(MergeArgs),
}

pub const MERGE_EXAMPLES: &str = "\
Examples:
  # Three shards run anywhere (three machines, or one), then one report
  tasmota-sim fleet --devices 30000 --broker mqtt://10.0.0.5:1883 --shard 0/3 --json r0.json
  tasmota-sim fleet merge r0.json r1.json r2.json --json fleet.json --html fleet.html

  # The pods of a Kubernetes Indexed Job, each printing its report as one JSON line
  kubectl logs -l job-name=tasmota-sim-fleet --tail=-1 | grep '^{' > reports.jsonl
  tasmota-sim fleet merge reports.jsonl

A REPORT file holds one report (--json FILE) or JSON lines, one report a line (--json -).
Exit codes: 0 merged, 1 an --slo term missed, 2 bad input (a line that is no report, a
shard twice, a shard missing without --partial).";

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Reports of `tasmota-sim fleet --json` (one JSON document, or one per line).
    #[arg(value_name = "REPORT", required = true)]
    reports: Vec<PathBuf>,
    /// Merge even if some shards of the fleet are missing (they are listed).
    #[arg(long)]
    partial: bool,
    #[command(flatten)]
    out: Outputs,
}

/// Where a report goes, and what it must meet.
#[derive(clap::Args)]
pub struct Outputs {
    /// Write the report as JSON (with serialized histograms) to FILE ('-': stdout, one line).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page with plots (connects per second,
    /// the latency distribution) to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Exit 1 unless every term holds: p50|p90|p99|p99.9|max<DURATION,
    /// unanswered|connect-failures|disconnected=N.
    #[arg(long, value_name = "TERMS")]
    slo: Option<report::SloTerms>,
    /// No progress line and no table (the JSON and the exit code still tell).
    #[arg(long, short)]
    quiet: bool,
}

fn parse_outage(s: &str) -> Result<(Duration, Duration), String> {
    let (at, down) = s.split_once('/').ok_or_else(|| format!("'{s}': expected AT/DOWN, like 2m/30s"))?;
    Ok((parse_duration(at)?, parse_duration(down)?))
}

fn bad(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tasmota-sim fleet: {e}");
    ExitCode::from(2)
}

/// AWS IoT Core's CONNECT requests per second per account (adjustable; the spec's
/// aws-iot.md "Rates and quotas", AWS General Reference "AWS IoT Core endpoints and quotas").
const AWS_CONNECTS_PER_SECOND: f64 = 500.0;
/// AWS IoT Core's publish requests per second per connection, in and out together.
const AWS_PUBLISHES_PER_CONNECTION: f64 = 100.0;

/// Against an AWS IoT endpoint, the ramp and the workload stay inside AWS IoT Core's
/// quotas unless told otherwise: what shaped the run, or why it cannot run as asked.
fn aws_quotas(
    target: &Target,
    connect_rate: &mut Option<f64>,
    commands: f64,
    exceed: bool,
) -> Result<Vec<String>, String> {
    let Target::Brokers(urls) = target else { return Ok(Vec::new()) };
    if !urls.iter().any(|u| u.host.to_ascii_lowercase().ends_with(".amazonaws.com")) {
        return Ok(Vec::new());
    }
    let mut notes = Vec::new();
    match *connect_rate {
        None if !exceed => {
            *connect_rate = Some(AWS_CONNECTS_PER_SECOND);
            notes.push(format!(
                "AWS IoT Core quota: devices boot at {AWS_CONNECTS_PER_SECOND}/s (CONNECT requests per second per account)"
            ));
        }
        Some(r) if r > AWS_CONNECTS_PER_SECOND && !exceed => {
            return Err(format!(
                "--connect-rate {r} is above AWS IoT Core's {AWS_CONNECTS_PER_SECOND} CONNECT requests per second per \
                 account; --exceed-aws-quotas to go past it (AWS throttles the rest)"
            ))
        }
        _ => {}
    }
    // The operator's one connection publishes each command and receives its answer.
    if 2.0 * commands > AWS_PUBLISHES_PER_CONNECTION && !exceed {
        return Err(format!(
            "--commands-per-second {commands}: the operator's connection publishes each command and receives its \
             answer, and AWS IoT Core allows {AWS_PUBLISHES_PER_CONNECTION} publishes per second per connection (in and \
             out): at most {} commands/s; --exceed-aws-quotas to go past it (AWS drops the rest)",
            AWS_PUBLISHES_PER_CONNECTION / 2.0
        ));
    }
    Ok(notes)
}

/// Raises this process's soft open-file limit to its hard limit (containers often start
/// with a soft 1,024 under a hard limit far above it), and returns the limit.
fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The shard this process runs: `--shard I/N`, or `--shards N` with JOB_COMPLETION_INDEX.
fn shard_of(args: &FleetArgs) -> Result<Option<fleet::merge::Shard>, String> {
    if let Some(s) = args.shard {
        return Ok(Some(s));
    }
    let Some(n) = args.shards else { return Ok(None) };
    let index = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
        format!("--shards {n}: JOB_COMPLETION_INDEX is not set (Kubernetes sets it in an Indexed Job); or give --shard I/{n}")
    })?;
    let shard = format!("{}/{n}", index.trim()).parse::<fleet::merge::Shard>();
    shard.map(Some).map_err(|e| format!("--shards {n} with JOB_COMPLETION_INDEX={index}: {e}"))
}

pub fn run(args: FleetArgs) -> ExitCode {
    if let Some(FleetCommand::Merge(m)) = args.command {
        return merge(m);
    }
    // An explicit --virtual or --embedded wins over TASMOTA_SIM_BROKER from the
    // environment; against --broker on the command line it is a contradiction.
    let broker_flag = std::env::args_os().any(|a| a == "--broker" || a.to_string_lossy().starts_with("--broker="));
    let target = match (args.broker.is_empty(), args.embedded, args.virtual_clock) {
        (false, Some(_), _) | (false, _, Some(_)) if broker_flag => {
            return bad("--broker and --virtual/--embedded say different places: give one")
        }
        (_, Some(p), _) => Target::Embedded(p),
        (_, None, Some(p)) => Target::Virtual(p),
        (false, None, None) => Target::Brokers(args.broker.clone()),
        (true, None, None) => return bad("say where the devices connect: --virtual, --embedded or --broker URL"),
    };
    if args.user.is_some() != args.password.is_some() {
        return bad("--user and --password go together (or TASMOTA_SIM_USER and TASMOTA_SIM_PASSWORD)");
    }
    let shard = match shard_of(&args) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let groups = match (&args.fleet, args.devices) {
        (Some(path), _) => match fleet::plan::load(path) {
            Ok(g) => g,
            Err(e) => return bad(e),
        },
        (None, Some(n)) => {
            let profile = match tasmota_sim::profile::Profile::load(
                args.profile.as_deref().unwrap_or(tasmota_sim::profile::DEFAULT),
            ) {
                Ok(p) => p,
                Err(e) => return bad(e),
            };
            let base = args.mac_base.unwrap_or(Mac([0x5C, 0xCF, 0x7F, 0, 0, 0]));
            match fleet::plan::single(n as usize, profile, base, args.tele_period, &args.setoptions) {
                Ok(g) => vec![g],
                Err(e) => return bad(e),
            }
        }
        (None, None) => return bad("--devices N or --fleet FILE.toml"),
    };
    let fleet_devices: u64 = groups.iter().map(|g| g.count as u64).sum();
    if !(args.commands_per_second >= 0.0 && args.commands_per_second.is_finite()) {
        return bad("--commands-per-second: a rate of 0 or more");
    }
    let mut connect_rate = args.connect_rate;
    if let Some(r) = args.connect_rate {
        if !(r > 0.0 && r.is_finite()) {
            return bad("--connect-rate: a rate above 0");
        }
    }
    let limit = raise_open_file_limit();
    let per_device =
        fleet::workers::sockets_per_device(matches!(target, Target::Embedded(_)), matches!(target, Target::Virtual(_)));
    if let Some(p) = args.processes {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let k = match p {
            Processes::Count(k) => k,
            Processes::Auto => fleet::workers::auto_processes(fleet_devices, per_device, limit.unwrap_or(1024), cpus),
        };
        return run_workers(&args.out, k, fleet_devices);
    }
    let devices = fleet::shard_range(fleet_devices as usize, shard).len() as u64;
    // Each device holds one socket; the embedded broker holds the other end in this process.
    let sockets = per_device * devices;
    if let Some(limit) = limit {
        if sockets + fleet::workers::SPARE_FILES > limit {
            return bad(format!(
                "{} devices need about {} open sockets here, over this process's open-file limit of {limit}: \
                 use --processes auto (workers of this process), --virtual, or fewer devices",
                devices,
                sockets + fleet::workers::SPARE_FILES
            ));
        }
    }
    let connector = match args.tls.connector() {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    if let Err(e) = fleet::bill::Pricing::builtin().region(&args.aws_region) {
        return bad(e);
    }
    let shaped_by = match aws_quotas(&target, &mut connect_rate, args.commands_per_second, args.exceed_aws_quotas) {
        Ok(notes) => notes,
        Err(e) => return bad(e),
    };
    if !args.out.quiet {
        for note in &shaped_by {
            eprintln!("tasmota-sim fleet: {note}");
        }
    }
    // The ramp and the workload are the fleet's: a shard does its share.
    let share = shard.map_or(1.0, |s| f64::from(s.count));
    let virtual_clock = matches!(target, Target::Virtual(_));
    let opts = fleet::Options {
        groups,
        target,
        connector,
        login: args.user.zip(args.password),
        connect_rate: connect_rate.map(|r| r / share),
        in_flight: (args.in_flight > 0).then_some(args.in_flight),
        commands_per_second: args.commands_per_second / share,
        commands_from: args.commands_from,
        group_commands: args.group_command,
        run_for: args.run_for,
        broker_outage: args.broker_outage,
        progress: if args.progress_lines {
            fleet::Progress::Lines
        } else if !args.out.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            fleet::Progress::Bar
        } else {
            fleet::Progress::Off
        },
        seed: args.seed.wrapping_add(shard.map_or(0, |s| u64::from(s.index))),
        aws_region: args.aws_region,
        shaped_by,
        shard,
        operator_protocol: args.operator_protocol,
    };
    let runtime = match runtime(virtual_clock) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(fleet::run(opts));
    // Tasks of the devices and the broker end with the runtime.
    drop(runtime);
    match result {
        // A worker's parent judges the merged report.
        Ok(r) if args.progress_lines => finish(&r, &args.out),
        Ok(r) => failed_if_nothing_connected(&r, finish(&r, &args.out)),
        Err(fleet::FleetError::Input(e)) => bad(e),
        Err(fleet::FleetError::Run(e)) => {
            eprintln!("tasmota-sim fleet: {e}");
            ExitCode::from(1)
        }
    }
}

/// The host runtime, or the exit code that says it could not start.
fn runtime(virtual_clock: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    tasmota_sim::host::runtime(virtual_clock).map_err(|e| {
        eprintln!("tasmota-sim fleet: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

/// `--operator-protocol 4|5`.
fn parse_protocol(s: &str) -> Result<tasmota_sim::scenario::operator::Protocol, String> {
    let level = s.parse::<i64>().map_err(|_| format!("'{s}': 4 (MQTT 3.1.1) or 5 (MQTT 5)"))?;
    tasmota_sim::scenario::operator::Protocol::from_level(level)
}

/// `--processes K`: K workers of this binary, one merged report.
fn run_workers(out: &Outputs, k: u32, devices: u64) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tasmota-sim fleet: cannot find this program to start workers: {e}");
            return ExitCode::from(1);
        }
    };
    // The parent's own arguments after `fleet`.
    let all: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let Some(at) = all.iter().position(|a| a == "fleet") else {
        return bad("--processes: cannot find 'fleet' in this program's arguments");
    };
    let parent_args = &all[at + 1..];
    if !out.quiet {
        eprintln!("tasmota-sim fleet: {devices} devices in {k} worker processes (shards 0/{k} .. {}/{k})", k - 1);
    }
    let bar =
        (!out.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| fleet::progress_bar(devices));
    let runtime = match runtime(false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(fleet::workers::run(&exe, parent_args, k, bar));
    drop(runtime);
    if outcome.stopped {
        // Ctrl-C reaches the workers too (one process group): their deaths are the stop.
        eprintln!("tasmota-sim fleet: stopped by a signal; every worker was stopped");
        return ExitCode::from(130);
    }
    for d in &outcome.died {
        eprintln!("tasmota-sim fleet: {d}");
    }
    if outcome.reports.is_empty() {
        eprintln!("tasmota-sim fleet: no worker finished its run");
        return ExitCode::from(1);
    }
    let merged = match fleet::merge::merge(&outcome.reports, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tasmota-sim fleet: cannot merge the workers' reports: {e}");
            return ExitCode::from(1);
        }
    };
    let code = failed_if_nothing_connected(&merged, finish(&merged, out));
    if outcome.died.is_empty() {
        code
    } else {
        eprintln!(
            "tasmota-sim fleet: {} of {k} workers did not finish: the report lacks their shards",
            outcome.died.len()
        );
        ExitCode::from(1)
    }
}

/// `tasmota-sim fleet merge`.
fn merge(args: MergeArgs) -> ExitCode {
    let mut inputs = Vec::new();
    for path in &args.reports {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return bad(format!("{shown}: {e}")),
        };
        match fleet::merge::read_reports(&text, &shown) {
            Ok(r) => inputs.extend(r),
            Err(e) => return bad(e),
        }
    }
    match fleet::merge::merge(&inputs, args.partial) {
        Ok(r) => finish(&r, &args.out),
        Err(e) => bad(e),
    }
}

/// The report where it was asked for, and the SLO's verdict.
fn finish(report: &report::Report, out: &Outputs) -> ExitCode {
    let json_to_stdout = out.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !out.quiet {
        // With the JSON on stdout, the table goes to stderr.
        if json_to_stdout {
            eprint!("{}", report.human());
        } else {
            print!("{}", report.human());
        }
    }
    if let Some(path) = &out.json {
        let text = if json_to_stdout { serde_json::to_string(report) } else { serde_json::to_string_pretty(report) };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                eprintln!("tasmota-sim fleet: cannot write the report: {e}");
                return ExitCode::from(1);
            }
        };
        let written = if json_to_stdout {
            use std::io::Write as _;
            writeln!(std::io::stdout(), "{text}")
        } else {
            std::fs::write(path, text + "\n")
        };
        if let Err(e) = written {
            eprintln!("tasmota-sim fleet: --json {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &out.html {
        if let Err(e) = std::fs::write(path, report.html()) {
            eprintln!("tasmota-sim fleet: --html {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(slo) = &out.slo {
        let missed = report::check_slo(report, &slo.0);
        if !missed.is_empty() {
            for m in &missed {
                eprintln!("tasmota-sim fleet: SLO missed: {m}");
            }
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws() -> Target {
        Target::Brokers(vec!["mqtts://a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com:443".parse().unwrap()])
    }

    #[test]
    fn aws_quotas_shape_the_ramp_and_refuse_the_workload_past_them() {
        let mut rate = None;
        let notes = aws_quotas(&aws(), &mut rate, 50.0, false).unwrap();
        assert_eq!(rate, Some(500.0));
        assert_eq!(notes, ["AWS IoT Core quota: devices boot at 500/s (CONNECT requests per second per account)"]);
        let e = aws_quotas(&aws(), &mut Some(501.0), 0.0, false).unwrap_err();
        assert!(e.starts_with("--connect-rate 501 is above AWS IoT Core's 500 CONNECT"), "{e}");
        let e = aws_quotas(&aws(), &mut None, 51.0, false).unwrap_err();
        assert!(e.contains("at most 50 commands/s"), "{e}");
        // Past them only when asked; other brokers have no such quotas here.
        let mut rate = Some(2000.0);
        assert!(aws_quotas(&aws(), &mut rate, 1000.0, true).unwrap().is_empty());
        assert_eq!(rate, Some(2000.0));
        let mosquitto = Target::Brokers(vec!["mqtt://127.0.0.1:1883".parse().unwrap()]);
        assert!(aws_quotas(&mosquitto, &mut None, 1000.0, false).unwrap().is_empty());
    }
}
