//! `tasmota-sim fleet`: many devices, one workload, one report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tasmota_core::Mac;
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

  # The reconnect storm: the embedded broker goes away at 2 min for 30 s
  tasmota-sim fleet --devices 1000 --virtual --for 10m --broker-outage 2m/30s

MACs count up from --mac-base (default 5C:CF:7F:00:00:00: topics tasmota_000000,
tasmota_000001, ...). Exit codes: 0 ok, 1 an --slo term missed or the run failed,
2 bad input.";

/// Flags of `tasmota-sim fleet`.
#[derive(clap::Args)]
pub struct FleetArgs {
    /// How many devices.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    devices: u32,
    /// What every device is built from: a built-in profile or a profile file.
    #[arg(long, value_name = "NAME|PATH", default_value = tasmota_sim::profile::DEFAULT)]
    profile: String,
    /// The first device's MAC; the others count up from it.
    #[arg(long, value_name = "MAC", default_value = "5C:CF:7F:00:00:00")]
    mac_base: Mac,
    /// Devices and an embedded plain broker over in-memory links, on the virtual clock.
    #[arg(long = "virtual", group = "target")]
    virtual_clock: bool,
    /// An embedded plain broker in this process, on a loopback socket, in real time.
    #[arg(long, group = "target")]
    embedded: bool,
    /// A broker at URL (mqtt://HOST:PORT or mqtts://HOST:PORT), in real time.
    #[arg(long, value_name = "URL", group = "target")]
    broker: Option<BrokerUrl>,
    /// MqttUser for every device and the operator.
    #[arg(long, value_name = "NAME", requires = "password")]
    user: Option<String>,
    /// MqttPassword for every device and the operator (never printed).
    #[arg(long, value_name = "PASSWORD", requires = "user")]
    password: Option<String>,
    #[command(flatten)]
    tls: crate::device_cmd::TlsArgs,
    /// Devices booted per second (default: all at once).
    #[arg(long, value_name = "R")]
    connect_rate: Option<f64>,
    /// At most K devices booted and not yet connected at once (0: no cap). A device
    /// counts from its boot, so WiFi association (3.5 s on a Sonoff Basic) is inside the
    /// window: K devices per WiFi time. Use --connect-rate to pace a large fleet.
    #[arg(long, value_name = "K", default_value_t = 0)]
    in_flight: usize,
    /// 'Power TOGGLE' commands per second, each to a random connected device; every
    /// answer on stat/<topic>/RESULT is matched to its command.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    commands_per_second: f64,
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
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Region whose AWS IoT Core prices the bill uses (us-east-1, eu-central-1).
    #[arg(long, value_name = "REGION", default_value = "us-east-1")]
    aws_region: String,
    /// Write the report as JSON (with serialized histograms) to FILE ('-': stdout).
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

/// The open-file limit of this process (soft), from /proc.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub fn run(args: FleetArgs) -> ExitCode {
    let target = match (&args.broker, args.embedded, args.virtual_clock) {
        (Some(url), _, _) => Target::Broker(url.clone()),
        (None, true, _) => Target::Embedded,
        (None, false, true) => Target::Virtual,
        (None, false, false) => return bad("say where the devices connect: --virtual, --embedded or --broker URL"),
    };
    if let Some(tp) = args.tele_period {
        if tp != 0 && !(10..=3600).contains(&tp) {
            return bad(format!("--tele-period {tp}: TelePeriod is 0 or 10..3600 seconds"));
        }
    }
    if !(args.commands_per_second >= 0.0 && args.commands_per_second.is_finite()) {
        return bad("--commands-per-second: a rate of 0 or more");
    }
    if let Some(r) = args.connect_rate {
        if !(r > 0.0 && r.is_finite()) {
            return bad("--connect-rate: a rate above 0");
        }
    }
    // Each device holds one socket; the embedded broker holds the other end in this process.
    let sockets = match target {
        Target::Virtual => 0,
        Target::Embedded => 2 * u64::from(args.devices),
        Target::Broker(_) => u64::from(args.devices),
    };
    if let Some(limit) = open_file_limit() {
        if sockets + 64 > limit {
            return bad(format!(
                "{} devices need about {} open sockets here, over this process's open-file limit of {limit}: \
                 use fewer devices, --virtual, or split the fleet over several processes",
                args.devices,
                sockets + 64
            ));
        }
    }
    let profile = match tasmota_sim::profile::Profile::load(&args.profile) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let connector = match args.tls.connector() {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    if tasmota_sim::fleet::bill::Pricing::builtin().region(&args.aws_region).is_err() {
        return bad(tasmota_sim::fleet::bill::Pricing::builtin().region(&args.aws_region).unwrap_err());
    }
    let virtual_clock = matches!(target, Target::Virtual);
    let opts = fleet::Options {
        devices: args.devices as usize,
        profile,
        mac_base: args.mac_base,
        target,
        connector,
        login: args.user.zip(args.password),
        connect_rate: args.connect_rate,
        in_flight: if args.in_flight == 0 { usize::MAX } else { args.in_flight },
        commands_per_second: args.commands_per_second,
        group_commands: args.group_command,
        run_for: args.run_for,
        tele_period: args.tele_period,
        broker_outage: args.broker_outage,
        progress: !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        seed: args.seed,
        aws_region: args.aws_region,
    };
    let runtime = match tasmota_sim::host::runtime(virtual_clock) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tasmota-sim fleet: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(fleet::run(opts));
    // Tasks of the devices and the broker end with the runtime.
    drop(runtime);
    let report = match result {
        Ok(r) => r,
        Err(fleet::FleetError::Input(e)) => return bad(e),
        Err(fleet::FleetError::Run(e)) => {
            eprintln!("tasmota-sim fleet: {e}");
            return ExitCode::from(1);
        }
    };
    if !args.quiet {
        print!("{}", report.human());
    }
    if let Some(path) = &args.json {
        let text = match serde_json::to_string_pretty(&report) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("tasmota-sim fleet: cannot write the report: {e}");
                return ExitCode::from(1);
            }
        };
        let written = if path.as_os_str() == "-" {
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
    if let Some(path) = &args.html {
        if let Err(e) = std::fs::write(path, report.html()) {
            eprintln!("tasmota-sim fleet: --html {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(slo) = &args.slo {
        let missed = report::check_slo(&report, &slo.0);
        if !missed.is_empty() {
            for m in &missed {
                eprintln!("tasmota-sim fleet: SLO missed: {m}");
            }
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
