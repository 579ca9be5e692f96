//! `tasmota-sim broker`: the embedded broker on real sockets until Ctrl-C.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tasmota_sim::broker::{
    self, tls, Authorizer, Broker, Config, FaultRule, LogLevel, Phase, ProfileName, RetainPolicy, TlsListen,
};

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

  # MQTT over WebSocket for browser clients (MQTTX web, a dashboard) next to plain MQTT;
  # clients connect to ws://127.0.0.1:8080/mqtt with subprotocol mqtt
  tasmota-sim broker --listen 127.0.0.1:1883 --ws-listen 127.0.0.1:8080

  # AWS IoT's WSS with the custom authorizer (AWS's Device SDK v2
  # websockets_with_custom_authorizer): wss://<endpoint>:8443/mqtt, SNI the endpoint
  tasmota-sim broker --profile aws-iot --wss-listen 127.0.0.1:8443 \\
    --tls-self-signed ./aws-certs --authorizer TasmotaAuth:YknLuSd2tBY2HodwI/7RqA==

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
keepalive (30..1200), session-expiry (3600 s, the account's persistent-session maximum;
at most 604800).

Prints 'listening on mqtt://ADDR:PORT (profile NAME)' per listener once ready, then logs
on stderr as Mosquitto does in the foreground ('1700000000: New client connected from
127.0.0.1:50000 as DVES_4B3316 (p2, c1, k30, u'DVES_USER').', refusals, disconnects);
-v adds wills and every packet, -q prints nothing. A flag that cannot act with the chosen
profile or listeners is an error (exit 2).";

/// Flags of `tasmota-sim broker`.
#[derive(clap::Args)]
pub struct BrokerArgs {
    /// Which broker to behave like.
    #[arg(long, value_enum, default_value_t = ProfileName::Plain)]
    profile: ProfileName,
    /// Plain MQTT listener (port 0 picks a free port; HOST may be a name). Default
    /// 127.0.0.1:1883, unless only TLS listeners are asked for.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// TLS listener; for aws-iot it routes on ALPN as the endpoint's port 443 does.
    #[arg(long, value_name = "HOST:PORT", requires = "tls_source")]
    tls_listen: Option<String>,
    /// MQTT over WebSocket: ws://HOST:PORT/mqtt, subprotocol mqtt, binary frames (what
    /// browser clients and Mosquitto's `protocol websockets` listener speak). Plain HTTP,
    /// no TLS.
    #[arg(long, value_name = "HOST:PORT")]
    ws_listen: Option<String>,
    /// MQTT over WebSocket over TLS: wss://HOST:PORT/mqtt with the certificates of
    /// --tls-listen (ALPN http/1.1 or none). On aws-iot the custom authorizer is named
    /// by the upgrade's x-amz-customauthorizer-name header or query parameter, or by the
    /// CONNECT username, and the SNI must be the endpoint, as AWS IoT's WSS on 443
    /// (docs.aws.amazon.com/iot/latest/developerguide/custom-auth.html); a refused
    /// custom auth gets HTTP 101, then no CONNACK and the link closed, as at AWS.
    #[arg(long, value_name = "HOST:PORT", requires = "tls_source")]
    wss_listen: Option<String>,
    /// TLS listener that requires a client certificate (AWS's port 8883).
    #[arg(long, value_name = "HOST:PORT", requires = "tls_source")]
    mtls_listen: Option<String>,
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
    #[arg(long, value_name = "PEM", requires = "tls_source")]
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
    /// The AWS IoT data endpoint served (custom auth needs SNI equal to it) [default:
    /// a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com].
    #[arg(long, value_name = "HOST")]
    endpoint: Option<String>,
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
    /// Also log wills and every packet in and out (Mosquitto's -v).
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,
    /// Log nothing on stderr.
    #[arg(short, long)]
    quiet: bool,
}

/// Flags given that would do nothing with this profile and these listeners: each with why.
fn inert_flags(args: &BrokerArgs) -> Vec<String> {
    let plain = args.profile == ProfileName::Plain;
    let tls_listener = args.tls_listen.is_some() || args.mtls_listen.is_some() || args.wss_listen.is_some();
    let mut inert = Vec::new();
    let mut say = |cond: bool, why: &str| {
        if cond {
            inert.push(why.to_string());
        }
    };
    say(
        plain && !args.limits.is_empty(),
        "--limit: the limits are AWS IoT Core's quotas; only --profile aws-iot has them",
    );
    say(
        plain && (!args.authorizers.is_empty() || args.default_authorizer.is_some()),
        "--authorizer/--default-authorizer: custom authorizers are AWS IoT's; use --profile aws-iot (plain checks --user)",
    );
    say(
        plain && args.allow_retain,
        "--allow-retain: plain always accepts retained messages; only aws-iot refuses them",
    );
    say(plain && args.endpoint.is_some(), "--endpoint: only --profile aws-iot serves a data endpoint");
    say(
        !plain && !args.users.is_empty(),
        "--user: aws-iot does not read a password list; it signs in with --authorizer (custom auth) or client certificates",
    );
    say(
        plain && args.client_ca.is_some() && args.mtls_listen.is_none(),
        "--client-ca: plain checks client certificates only on --mtls-listen",
    );
    say(
        !tls_listener && (args.tls_self_signed.is_some() || args.cert.is_some()),
        "--tls-self-signed/--cert: no TLS listener to use them; add --tls-listen, --mtls-listen or --wss-listen",
    );
    if let Some(name) = &args.default_authorizer {
        say(
            !plain && !args.authorizers.iter().any(|a| &a.name == name),
            &format!("--default-authorizer {name}: no --authorizer has that name"),
        );
    }
    say(
        !tls_listener && args.faults.iter().any(|f| f.fault.phase() == Phase::Tls),
        "--fault tls-alert: it acts in the TLS handshake; add --tls-listen, --mtls-listen or --wss-listen",
    );
    inert
}

/// `HOST:PORT` resolved (a name such as `localhost` too); binding tries each address.
fn resolve(flag: &str, spec: &str) -> Result<Vec<SocketAddr>, String> {
    match spec.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(format!("{flag} '{spec}': the name has no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(format!("{flag} '{spec}': {e} (expected HOST:PORT, e.g. 127.0.0.1:1883 or localhost:0)")),
    }
}

pub fn run(mut args: BrokerArgs) -> ExitCode {
    if let Some(why) = inert_flags(&args).first() {
        return usage(why);
    }
    // A TLS-only or WebSocket-only broker binds only what it is asked to.
    let others = [&args.tls_listen, &args.mtls_listen, &args.ws_listen, &args.wss_listen];
    let listen = match (&args.listen, others.iter().any(|l| l.is_some())) {
        (Some(l), _) => Some(l.as_str()),
        (None, true) => None,
        (None, false) => Some("127.0.0.1:1883"),
    };
    let mut listeners = Vec::new();
    for (flag, spec, scheme, mtls) in [
        ("--listen", listen, "mqtt", None),
        ("--tls-listen", args.tls_listen.as_deref(), "mqtts", Some(false)),
        ("--mtls-listen", args.mtls_listen.as_deref(), "mqtts+mtls", Some(true)),
        ("--ws-listen", args.ws_listen.as_deref(), "ws", None),
        ("--wss-listen", args.wss_listen.as_deref(), "wss", Some(false)),
    ] {
        if let Some(spec) = spec {
            match resolve(flag, spec) {
                Ok(addrs) => listeners.push((addrs, scheme, mtls)),
                Err(e) => return usage(&e),
            }
        }
    }
    let mut config = Config::new(args.profile);
    config.log = match (args.quiet, args.verbose) {
        (true, _) => LogLevel::Off,
        (false, true) => LogLevel::Debug,
        (false, false) => LogLevel::Notice,
    };
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
    if let Some(endpoint) = &args.endpoint {
        config.endpoint = endpoint.clone();
    }
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
        let mut tasks = tokio::task::JoinSet::new();
        for (addrs, scheme, mtls) in listeners {
            let tls = match (mtls, &acceptors) {
                (Some(mtls), Some(a)) => Some(TlsListen { acceptors: a.clone(), mtls }),
                _ => None,
            };
            let listener = match tokio::net::TcpListener::bind(&addrs[..]).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("tasmota-sim: cannot listen on {}: {e}", addrs[0]);
                    return ExitCode::from(1);
                }
            };
            let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addrs[0].to_string());
            let broker = broker.clone();
            if scheme == "ws" {
                println!("listening on {scheme}://{bound}{} (profile {profile_name})", broker::ws::PATH);
                tasks.spawn(async move { broker.listen_ws(listener).await });
            } else if let (true, Some(tls)) = (scheme == "wss", &tls) {
                println!("listening on {scheme}://{bound}{} (profile {profile_name})", broker::ws::PATH);
                let acceptors = tls.acceptors.clone();
                tasks.spawn(async move { broker.listen_wss(listener, acceptors).await });
            } else {
                println!("listening on {scheme}://{bound} (profile {profile_name})");
                tasks.spawn(async move { broker.listen(listener, tls).await });
            }
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
        tls::self_signed(
            dir,
            &server_names(args.profile, args.endpoint.as_deref().unwrap_or(broker::DEFAULT_ENDPOINT)),
        )?
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
