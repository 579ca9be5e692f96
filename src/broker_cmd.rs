//! `tasmota-sim broker`: the embedded broker on real sockets until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tasmota_sim::broker::{self, tls, Authorizer, Broker, Config, FaultRule, ProfileName, RetainPolicy, TlsListen};

pub const EXAMPLES: &str = "\
Examples:
  # Mosquitto-like broker with one user, for the device's 'MqttUser bob; MqttPassword secret'
  tasmota-sim broker --listen 127.0.0.1:1883 --user bob:secret

  # AWS IoT Core stand-in: TLS on 8443 as the endpoint's 443, TasmotaAuth with one secret,
  # self-signed certificates kept in ./aws-certs (give ./aws-certs/ca.pem to the device)
  tasmota-sim broker --profile aws-iot --listen 127.0.0.1:1883 --tls-listen 127.0.0.1:8443 \\
    --tls-self-signed ./aws-certs --authorizer TasmotaAuth:YknLuSd2tBY2HodwI/7RqA==
  # ... and the device pointed at it:
  tasmota-sim device --state ./plug --ca-file ./aws-certs/ca.pem \\
    --connect-to a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com:443:127.0.0.1:8443

  # Misbehave: refuse the first two CONNECTs with rc 3, stop answering PINGREQ, restart
  # after a minute with 10 s of downtime, and record every packet
  tasmota-sim broker --listen 127.0.0.1:1883 --fault connack-rc=3,times=2 \\
    --fault no-pingresp --fault restart-at=1m/10s --record traffic.jsonl

Faults (--fault KIND[=VALUE][,client=ID][,times=N]; ID may end in '*'):
  drop-after=N        close the link after N packets from the client (CONNECT counts)
  drop-at=TIME        close the client's link TIME after the broker started
  connack-rc=RC       answer CONNECT with return code RC (1..5) and close
  late-connack=DELAY  answer CONNECT DELAY late (past the device's MqttTimeout: rc -4)
  no-pingresp         never answer PINGREQ
  tls-alert[=DESC]    answer the ClientHello with fatal alert DESC (default 40)
  silent-connect      read CONNECT, never answer
  corrupt[=N]         send the Nth packet (1 = CONNACK) with packet type 0
  latency=DELAY       delay everything sent to the client
  restart-at=TIME[/DOWN]  drop every link (wills published), refuse connections for DOWN

Limits of the aws-iot profile (--limit NAME=VALUE or NAME=off): topic-bytes (256),
topic-slashes (7), payload-bytes (131072), client-id-bytes (128), filters-per-subscribe (8),
subscriptions (50), publishes-per-second (100), connects-per-second (1), inflight (100),
keepalive (30..1200).

Prints 'listening on mqtt://ADDR:PORT (profile NAME)' per listener once ready.";

/// Flags of `tasmota-sim broker`.
#[derive(clap::Args)]
pub struct BrokerArgs {
    /// Which broker to behave like.
    #[arg(long, value_enum, default_value_t = ProfileName::Plain)]
    profile: ProfileName,
    /// Plain MQTT listener (port 0 picks a free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:1883")]
    listen: SocketAddr,
    /// TLS listener; for aws-iot it routes on ALPN as the endpoint's port 443 does.
    #[arg(long, value_name = "ADDR:PORT", requires = "tls_source")]
    tls_listen: Option<SocketAddr>,
    /// TLS listener that requires a client certificate (AWS's port 8883).
    #[arg(long, value_name = "ADDR:PORT", requires = "tls_source")]
    mtls_listen: Option<SocketAddr>,
    /// Make (once, then reuse) a CA, a server certificate and a client certificate in DIR;
    /// DIR/ca.pem is what the device's --ca-file needs.
    #[arg(long, value_name = "DIR", group = "tls_source", conflicts_with_all = ["cert", "key"])]
    tls_self_signed: Option<PathBuf>,
    /// Server certificate chain (PEM), with --key.
    #[arg(long, value_name = "PEM", group = "tls_source", requires = "key")]
    cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// CA for client certificates (PEM) on --mtls-listen and ALPN x-amzn-mqtt-ca.
    #[arg(long, value_name = "PEM")]
    client_ca: Option<PathBuf>,
    /// A user of the plain profile's password list (repeatable). None: anonymous allowed.
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// A TasmotaAuth custom authorizer of the aws-iot profile (repeatable).
    #[arg(long = "authorizer", value_name = "NAME:SECRET[,SECRET2]")]
    authorizers: Vec<Authorizer>,
    /// The authorizer for usernames that name none (AWS's default authorizer).
    #[arg(long, value_name = "NAME")]
    default_authorizer: Option<String>,
    /// The AWS IoT data endpoint served (custom auth needs SNI equal to it).
    #[arg(long, value_name = "HOST", default_value = broker::DEFAULT_ENDPOINT)]
    endpoint: String,
    /// aws-iot: accept retained publishes (a policy with iot:RetainPublish).
    #[arg(long)]
    allow_retain: bool,
    /// Change one aws-iot limit (repeatable): NAME=VALUE or NAME=off.
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// Inject a fault (repeatable); see below.
    #[arg(long = "fault", value_name = "SPEC")]
    faults: Vec<FaultRule>,
    /// Write every packet and event as one JSON line to FILE (passwords redacted).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

pub fn run(mut args: BrokerArgs) -> ExitCode {
    let mut config = Config::new(args.profile);
    for u in &args.users {
        if let Err(e) = config.users.add(u) {
            return usage(&format!("--user '{}': {e}", redact_user(u)));
        }
    }
    for l in &args.limits {
        if let Err(e) = config.profile.limits.set(l) {
            return usage(&format!("--limit {e}"));
        }
    }
    if args.allow_retain {
        config.profile.retain = RetainPolicy::Allow;
    }
    config.authorizers = std::mem::take(&mut args.authorizers);
    config.default_authorizer = args.default_authorizer.take();
    config.endpoint = args.endpoint.clone();
    config.faults = std::mem::take(&mut args.faults);
    if args.profile == ProfileName::AwsIot && config.authorizers.is_empty() {
        eprintln!("tasmota-sim: warning: no --authorizer: every custom-auth CONNECT will be refused");
    }
    if let Some(path) = &args.record {
        match std::fs::File::create(path) {
            Ok(f) => config.record_file = Some(f),
            Err(e) => return usage(&format!("--record {}: {e}", path.display())),
        }
    }
    let acceptors = match tls_acceptors(&args) {
        Ok(a) => a.map(Arc::new),
        Err(e) => return usage(&e.to_string()),
    };
    if args.mtls_listen.is_some() && !acceptors.as_ref().is_some_and(|a| a.has_mtls()) {
        return usage("--mtls-listen needs a client CA: --tls-self-signed DIR, or --client-ca PEM");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tasmota-sim: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let profile_name =
        clap::ValueEnum::to_possible_value(&args.profile).map(|v| v.get_name().to_string()).unwrap_or_default();
    runtime.block_on(async move {
        let broker = Broker::new(config);
        let mut listeners = vec![(args.listen, None, "mqtt")];
        if let (Some(addr), Some(a)) = (args.tls_listen, &acceptors) {
            listeners.push((addr, Some(TlsListen { acceptors: a.clone(), mtls: false }), "mqtts"));
        }
        if let (Some(addr), Some(a)) = (args.mtls_listen, &acceptors) {
            listeners.push((addr, Some(TlsListen { acceptors: a.clone(), mtls: true }), "mqtts+mtls"));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (addr, tls, scheme) in listeners {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("tasmota-sim: cannot listen on {addr}: {e}");
                    return ExitCode::from(1);
                }
            };
            let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string());
            println!("listening on {scheme}://{bound} (profile {profile_name})");
            let broker = broker.clone();
            tasks.spawn(async move { broker.listen(listener, tls).await });
        }
        if let Some(dir) = &args.tls_self_signed {
            println!("CA for clients: {}", dir.join("ca.pem").display());
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tasmota_sim::signal::shutdown() => ExitCode::SUCCESS,
            Some(r) = tasks.join_next() => {
                match r {
                    Ok(Err(e)) => eprintln!("tasmota-sim: listener stopped: {e}"),
                    Ok(Ok(())) => {}
                    Err(e) => eprintln!("tasmota-sim: listener failed: {e}"),
                }
                ExitCode::from(1)
            }
        }
    })
}

/// The TLS server side the flags ask for, if any.
fn tls_acceptors(args: &BrokerArgs) -> Result<Option<tls::Acceptors>, tls::TlsError> {
    let mut material = if let Some(dir) = &args.tls_self_signed {
        tls::self_signed(dir, &server_names(args.profile, &args.endpoint))?
    } else if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls::from_files(cert, key)?
    } else {
        return Ok(None);
    };
    if let Some(ca) = &args.client_ca {
        material.client_ca = Some(tls::client_ca(ca)?);
    }
    tls::Acceptors::new(&material).map(Some)
}

/// The names the self-signed server certificate covers.
fn server_names(profile: ProfileName, endpoint: &str) -> Vec<String> {
    let mut names = Vec::new();
    if profile == ProfileName::AwsIot {
        names.push(endpoint.to_string());
        // `<prefix>-ats.iot.<region>.amazonaws.com` → also `*.iot.<region>.amazonaws.com`.
        if let Some((_, rest)) = endpoint.split_once('.') {
            if rest.starts_with("iot.") && rest.ends_with(".amazonaws.com") {
                names.push(format!("*.{rest}"));
            }
        }
    }
    names.extend(["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()]);
    names
}

fn redact_user(spec: &str) -> String {
    match spec.split_once(':') {
        Some((name, _)) => format!("{name}:***"),
        None => spec.to_string(),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("tasmota-sim: {msg}");
    ExitCode::from(2)
}
