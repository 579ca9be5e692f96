//! `tasmota-sim`: simulate Tasmota devices on the wire.

//!
//! Each subcommand lives in its own module (flags, examples, what it runs); this file
//! only parses the command line and hands over.

mod broker_cmd;
mod device_cmd;
mod fleet_cmd;
mod scenario_cmd;

use std::process::ExitCode;

/// mimalloc gives freed pages back to the system: after a fleet's connect storm the
/// process shrinks to what its idle devices hold (glibc's malloc kept the peak).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tasmota-sim",
    version,
    about = "Simulate Tasmota devices on the wire: console, settings, MQTT topics"
)]
#[command(
    after_help = "Run 'tasmota-sim device --help' for examples.\nExit codes: 0 ok, 1 runtime failure, 2 bad arguments or bad input files."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one device with its serial console on stdin/stdout.
    #[command(after_help = device_cmd::EXAMPLES)]
    Device(Box<device_cmd::DeviceArgs>),
    /// Run scenario files (TOML): steps, expectations, golden transcripts, a verdict.
    #[command(after_help = scenario_cmd::EXAMPLES)]
    Scenario(Box<scenario_cmd::ScenarioArgs>),
    /// Run the embedded MQTT broker (plain = Mosquitto, aws-iot = AWS IoT Core) until Ctrl-C.
    #[command(after_help = broker_cmd::EXAMPLES)]
    Broker(Box<broker_cmd::BrokerArgs>),
    /// Run a fleet of devices with a command workload; report latency, failures and the
    /// AWS IoT bill.
    #[command(after_help = fleet_cmd::EXAMPLES, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Fleet(Box<fleet_cmd::FleetArgs>),
}

/// Crates whose `trace` level prints what crosses a link: tungstenite's frame trace
/// ("received frame ... payload: 0x...", "Received message ...") shows a WebSocket frame's
/// bytes, a client's CONNECT with its password or token among them. Their `debug` level
/// prints no payload (handshake done, close frames, errors). rustls and tokio-rustls trace
/// handshake messages only (no application data, no secrets) and rumqttc packet ids and
/// sizes, so they are not capped.
const PAYLOAD_TRACING: &[&str] = &["tungstenite", "async_tungstenite", "ws_stream_tungstenite"];

/// Whether a diagnostic may be printed whatever RUST_LOG says: not the trace of a crate
/// in [`PAYLOAD_TRACING`] (`design.md`: diagnostics never print a password).
fn printable(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() < tracing::Level::TRACE
        || !PAYLOAD_TRACING
            .iter()
            .any(|c| meta.target().strip_prefix(c).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
}

fn main() -> ExitCode {
    use tracing_subscriber::prelude::*;
    let env = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(tracing_subscriber::filter::filter_fn(printable));
    tracing_subscriber::registry().with(env).with(fmt).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Broker(args) => broker_cmd::run(*args),
        Command::Scenario(args) => scenario_cmd::run(*args),
        Command::Fleet(args) => fleet_cmd::run(*args),
        Command::Device(args) => device_cmd::run(*args),
    }
}

#[cfg(test)]
mod tests {
    /// clap checks every flag's definition against how it is read (types, groups,
    /// conflicts) here instead of at a user's first run.
    #[test]
    fn the_command_line_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
