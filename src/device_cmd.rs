//! `tasmota-sim device`: one device with its serial console on stdin/stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tasmota_core::Mac;
use tasmota_sim::duration::parse_duration;
use tasmota_sim::state::{self, StateDir};
use tasmota_sim::{driver, link};

pub const EXAMPLES: &str = "\
Examples:
  # A device with its console on this terminal; settings kept in ./plug
  tasmota-sim device --state ./plug

  # Configure it the way Tasmota's AWS IoT guide does, then keep running
  tasmota-sim device --state ./plug --cmd 'BackLog SetOption3 1; SetOption103 1; MqttHost a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com; MqttPort 443; MqttUser tasmota?x-amz-customauthorizer-name=TasmotaAuth; MqttPassword YknLuSd2tBY2HodwI/7RqA=='

  # Another device (topic tasmota_010203), scripted, powered off after 5 s
  printf 'Power ON\\nStatus\\n' | tasmota-sim device --state ./d2 --mac AA:BB:CC:01:02:03 --for 5s

  # Point it at a local Mosquitto (the Backlog restarts the device, which then connects)
  tasmota-sim device --state ./plug --cmd 'Backlog MqttHost 127.0.0.1; MqttPort 1883; MqttUser bob; MqttPassword secret'

  # A Sonoff 4CH with its web server: toggle relay 2 over the HTTP API
  tasmota-sim device --state ./4ch --profile sonoff-4ch --http 127.0.0.1:8080
  curl 'http://127.0.0.1:8080/cm?cmnd=Power2%20TOGGLE'        # answers {\"POWER2\":\"ON\"}

  # AWS IoT light mode against a local TLS broker standing in for the endpoint
  tasmota-sim device --state ./plug \\
    --resolve a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com:443:127.0.0.1 --ca-file ./ca.pem

Each line typed is a console command, as on the device's serial port; console lines print
exactly as the firmware prints them. Ctrl-C (SIGINT) or SIGTERM removes the power.";

/// Flags of `tasmota-sim device`.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// Directory holding the device's settings (its flash); created if missing.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// The WiFi MAC; the topic is tasmota_<last 6 hex digits>. Default for a new
    /// state directory: 5C:CF:7F:4B:33:16 (topic tasmota_4B3316).
    #[arg(long, value_name = "MAC")]
    mac: Option<Mac>,
    /// A command typed once when the process starts (repeatable; not again after a
    /// restart).
    #[arg(long = "cmd", value_name = "COMMAND")]
    commands: Vec<String>,
    /// Power the device off after this long (e.g. 500ms, 5s, 2m, 1h).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    run_for: Option<Duration>,
    /// What the device is built from: a built-in profile (sonoff-basic, sonoff-4ch,
    /// sonoff-pow-r2, esp32-climate, wall-switch-2gang) or a profile file
    /// (fixtures/devices/*.toml shows the format). A new state directory starts
    /// from the profile's settings.
    #[arg(long, value_name = "NAME|PATH", default_value = tasmota_sim::profile::DEFAULT)]
    profile: String,
    /// Serve the web server on ADDR:PORT: the HTTP command API /cm?cmnd=... and a
    /// page with the relays and the console at /.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How a device reaches its broker (also flattened into `tasmota-sim fleet`).
#[derive(clap::Args)]
pub struct TlsArgs {
    /// Trust only the certificates in this PEM file instead of the firmware's trust
    /// anchors (Amazon Root CA 1, ISRG Root X1).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Accept any broker certificate (a warning is printed on every connect).
    #[arg(long, conflicts_with = "ca_file")]
    insecure: bool,
    /// Connect to ADDR when the device connects to HOST:PORT; SNI and the certificate
    /// check still use HOST (curl's --resolve). Repeatable.
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    resolve: Vec<link::Resolve>,
    /// Connect to CONNECT_HOST:CONNECT_PORT when the device connects to HOST:PORT; SNI,
    /// ALPN and the certificate check still use HOST and PORT (curl's --connect-to).
    /// Repeatable.
    #[arg(long, value_name = "HOST:PORT:CONNECT_HOST:CONNECT_PORT")]
    connect_to: Vec<link::ConnectTo>,
    /// TLS offered: 'firmware' (TLS 1.2, ECDHE-RSA-AES128-GCM-SHA256 only, as the device)
    /// or 'modern' (TLS 1.2 and 1.3, all rustls suites).
    #[arg(long, value_enum, default_value_t = link::TlsCompat::Firmware)]
    tls_compat: link::TlsCompat,
}

impl TlsArgs {
    pub fn connector(self) -> Result<link::Connector, String> {
        let trust = if self.insecure {
            link::Trust::Insecure
        } else if let Some(path) = &self.ca_file {
            link::Trust::Roots(std::sync::Arc::new(link::load_ca_file(path)?))
        } else {
            link::Trust::Roots(std::sync::Arc::new(link::firmware_roots()))
        };
        let resolve = self.resolve.into_iter().map(|r| ((r.host, r.port), r.addr)).collect();
        let connect_to = self.connect_to.into_iter().map(|c| ((c.host, c.port), (c.to_host, c.to_port))).collect();
        Ok(link::Connector { resolve, connect_to, trust, compat: self.tls_compat })
    }
}

pub fn run(args: DeviceArgs) -> ExitCode {
    let DeviceArgs { state, mac, commands, run_for, profile, http, tls } = args;
    let profile = match tasmota_sim::profile::Profile::load(&profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tasmota-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let connector = match tls.connector() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tasmota-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let store = StateDir::new(&state);
    let (mac, settings) = match store.load() {
        Ok(Some((stored, settings))) => match mac {
            Some(m) if m != stored => {
                eprintln!(
                    "tasmota-sim: {}",
                    state::StateError::OtherDevice { path: store.path(), stored, requested: m }
                );
                return ExitCode::from(2);
            }
            _ => (stored, settings),
        },
        Ok(None) => {
            let mac = mac.unwrap_or(profile.hardware.mac);
            let settings = profile.initial_settings();
            if let Err(e) = store.save(&mac, &settings) {
                eprintln!("tasmota-sim: {e}");
                return ExitCode::from(1);
            }
            (mac, settings)
        }
        Err(e) => {
            eprintln!("tasmota-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tasmota_sim::host::runtime(false) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tasmota-sim: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let http = match http {
        None => None,
        Some(addr) => match runtime.block_on(tokio::net::TcpListener::bind(addr)) {
            Ok(l) => {
                let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                eprintln!("tasmota-sim: web server on http://{bound}/ (API: http://{bound}/cm?cmnd=Status)");
                Some(l)
            }
            Err(e) => {
                eprintln!("tasmota-sim: --http {addr}: cannot listen: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let hardware = profile.with_mac(mac).hardware;
    let opts = driver::Options { hardware, settings, state: store, commands, run_for, connector, http };
    match runtime.block_on(driver::run(opts)) {
        Ok(ending) => {
            tracing::info!(?ending, "device stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tasmota-sim: {e:#}");
            ExitCode::from(1)
        }
    }
}
