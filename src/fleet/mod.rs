//! `tasmota-sim fleet`: many real-core devices in one process, a workload from an
//! operator client, and a report with latency percentiles and the AWS IoT bill.
//!
//! Every device is a [`HostDevice`] (the one host driver): the same console, topics,
//! backoff, will and telemetry as `tasmota-sim device`. Cost follows events, not the
//! fleet's size: devices wake from a timer heap keyed by their `poll_timeout`, link
//! events go to the device they belong to, and only devices that had an input are asked
//! for their outputs.
//!
//! What the report says comes from the firmware's own console lines (`MQT: Attempting
//! connection...`, `MQT: Connected`, `MQT: Connect failed to HOST:PORT, rc N. Retry in
//! S sec`, `MQT: TLS connection error: N`, `MQT: TOPIC = PAYLOAD`) and from the
//! operator's view of the broker (`stat/<topic>/RESULT`, `tele/<topic>/INFO1`).
//!
//! Targets: `--virtual` runs an embedded `plain` broker over in-memory links on tokio's
//! paused clock (an hour of fleet life in seconds); `--embedded` runs it in this process
//! on a loopback socket in real time; `--broker URL` uses any MQTT 3.1.1 broker (MQTT 5
//! too with `--operator-protocol 5`: the operator client speaks it, the devices never do).

pub mod bill;
pub mod embedded;
pub mod gate;
pub mod merge;
pub mod plan;
pub mod report;
pub mod workers;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tasmota_core::{BootReason, LogLine, Mac, Settings};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::broker::ProfileName;
use crate::host::{Console, Flash, HostDevice, HostSetup, LinkEvent, Network, Timers};
use crate::link::{BoxStream, Connector};
use crate::scenario::operator::{self, AckKind, OperatorEvent};
use crate::scenario::BrokerUrl;
use embedded::FleetBroker;
use report::{encode_histogram, new_histogram, GroupResult, Histograms, Percentiles, Report};

/// How many devices a command tries before it is skipped (all busy or down).
const PICKS: usize = 8;

/// How far apart the shards of one fleet may start: a device's answer to a group
/// command another shard published counts this long before the command's time here.
const SHARD_SKEW: Duration = Duration::from_secs(10);

/// A command not answered within this time is counted unanswered for good.
const UNANSWERED_AFTER: Duration = Duration::from_secs(10);

/// Where the fleet's devices connect.
#[derive(Clone, Debug)]
pub enum Target {
    /// An embedded broker of this profile over in-memory links, on the virtual clock.
    Virtual(ProfileName),
    /// An embedded broker of this profile on a loopback socket, in real time.
    Embedded(ProfileName),
    /// Brokers at these URLs (mqtt:// or mqtts://), in real time: device `i` (global
    /// index) connects to broker `i % len`.
    Brokers(Vec<BrokerUrl>),
}

/// A command published on the group topic at a point of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCommand {
    /// `Power ON`: published as `cmnd/<group>/Power` with payload `ON`.
    pub command: String,
    pub at: Duration,
}

impl std::str::FromStr for GroupCommand {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (command, at) = match s.rsplit_once('@') {
            Some((c, t)) => (c, crate::duration::parse_duration(t).map_err(|e| format!("--group-command '{s}': {e}"))?),
            None => (s, Duration::from_secs(30)),
        };
        if command.trim().is_empty() {
            return Err(format!("--group-command '{s}': no command (e.g. 'Power ON@30s')"));
        }
        Ok(GroupCommand { command: command.trim().to_string(), at })
    }
}

/// Everything a fleet run needs.
pub struct Options {
    /// The devices, group by group (`--devices` is one group).
    pub groups: Vec<plan::Group>,
    pub target: Target,
    /// Device and operator links to a `--broker` (trust, `--resolve`).
    pub connector: Connector,
    /// MqttUser / MqttPassword every device gets.
    pub login: Option<(String, String)>,
    /// Devices booted per second (`None`: all at once).
    pub connect_rate: Option<f64>,
    /// At most this many device links between connect and CONNACK at once
    /// ([`gate`]; `None`: no cap).
    pub in_flight: Option<usize>,
    pub commands_per_second: f64,
    /// When the commands start (fleet time): after the connect storm, for steady-state
    /// latency.
    pub commands_from: Duration,
    pub group_commands: Vec<GroupCommand>,
    pub run_for: Duration,
    /// `--broker-outage AT/DOWNTIME` (embedded brokers only).
    pub broker_outage: Option<(Duration, Duration)>,
    /// How the run shows its progress.
    pub progress: Progress,
    /// Seed of the command workload's choices.
    pub seed: u64,
    pub aws_region: String,
    /// Which quotas shaped the run (AWS IoT Core's, against an AWS endpoint).
    pub shaped_by: Vec<String>,
    /// Run only this slice of the fleet's devices (`--shard I/N`): MACs and topics come
    /// from the global index; only shard 0 publishes the group commands.
    pub shard: Option<merge::Shard>,
    /// What the operator client speaks (`--operator-protocol`; the devices always speak
    /// MQTT 3.1.1, as Tasmota does).
    pub operator_protocol: operator::Protocol,
}

/// The global device indices of `shard` among `total` devices: `[lo, hi)`, the shards'
/// slices cover every device once and differ in size by at most one.
pub fn shard_range(total: usize, shard: Option<merge::Shard>) -> std::ops::Range<usize> {
    match shard {
        None => 0..total,
        Some(s) => {
            let at = |i: u32| (total as u128 * u128::from(i) / u128::from(s.count)) as usize;
            at(s.index)..at(s.index + 1)
        }
    }
}

/// Where devices find a broker: MqttHost, MqttPort, and whether TLS (SetOption103).
type BrokerAt = (String, u16, bool);

/// How a run shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Off,
    /// A progress line on stderr (indicatif).
    Bar,
    /// A [`ProgressLine`] as JSON on stdout, at most every 250 ms of wall time: what a
    /// worker of `--processes` tells its parent.
    Lines,
}

/// Where a run is, as a worker tells its parent (one JSON line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgressLine {
    pub devices: u64,
    pub connected: u64,
    pub messages_out: u64,
    pub sent: u64,
    pub answered: u64,
    /// Command → reply p99 so far (µs).
    pub p99_us: u64,
}

/// The MAC of device `index`: `base + index` as a 48-bit number.
pub fn mac_of(base: Mac, index: usize) -> Mac {
    let n = mac_number(base).wrapping_add(index as u64);
    let mut out = [0u8; 6];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (n >> (8 * (5 - i))) as u8;
    }
    Mac(out)
}

/// A MAC as a 48-bit number.
pub fn mac_number(m: Mac) -> u64 {
    m.0.iter().fold(0u64, |acc, x| acc << 8 | u64::from(*x))
}

/// What the devices' console lines told, for the whole fleet.
struct Tally {
    attempt_at: Vec<Option<Duration>>,
    connected_since: Vec<Option<Duration>>,
    ever: Vec<bool>,
    ever_count: usize,
    all_connected_at: Option<Duration>,
    connected_now: usize,
    connects: u64,
    connects_per_second: Vec<u64>,
    failures: BTreeMap<String, u64>,
    connect_us: Histogram<u64>,
    messages_out: u64,
    message_units: u64,
    connection_minutes: u64,
}

impl Tally {
    fn new(devices: usize) -> Tally {
        Tally {
            attempt_at: vec![None; devices],
            connected_since: vec![None; devices],
            ever: vec![false; devices],
            ever_count: 0,
            all_connected_at: None,
            connected_now: 0,
            connects: 0,
            connects_per_second: Vec::new(),
            failures: BTreeMap::new(),
            connect_us: new_histogram(),
            messages_out: 0,
            message_units: 0,
            connection_minutes: 0,
        }
    }

    fn line(&mut self, device: usize, text: &str, at: Duration) {
        let Some(rest) = text.strip_prefix("MQT: ") else { return };
        if rest == "Attempting connection..." {
            self.attempt_at[device] = Some(at);
        } else if rest == "Connected" {
            self.connects += 1;
            let second = at.as_secs() as usize;
            if self.connects_per_second.len() <= second {
                self.connects_per_second.resize(second + 1, 0);
            }
            self.connects_per_second[second] += 1;
            if let Some(start) = self.attempt_at[device].take() {
                let _ = self.connect_us.record((at.saturating_sub(start).as_micros() as u64).max(1));
            }
            if self.connected_since[device].replace(at).is_none() {
                self.connected_now += 1;
            }
            if !self.ever[device] {
                self.ever[device] = true;
                self.ever_count += 1;
                if self.ever_count == self.ever.len() {
                    self.all_connected_at = Some(at);
                }
            }
        } else if let Some(failed) = rest.strip_prefix("Connect failed to ") {
            let rc = failed.split(", rc ").nth(1).and_then(|r| r.split('.').next()).unwrap_or("?");
            *self.failures.entry(format!("rc {rc}")).or_default() += 1;
            self.disconnected(device, at);
        } else if let Some(code) = rest.strip_prefix("TLS connection error: ") {
            *self.failures.entry(format!("tls {code}")).or_default() += 1;
        } else if let Some((topic, payload)) = rest.split_once(" = ") {
            let payload = payload.strip_suffix(" (retained)").unwrap_or(payload);
            self.messages_out += 1;
            self.message_units += bill::message_units((topic.len() + payload.len()) as u64);
        }
    }

    /// A connection ended: its minutes are metered, rounded up.
    fn disconnected(&mut self, device: usize, at: Duration) {
        if let Some(since) = self.connected_since[device].take() {
            self.connected_now -= 1;
            self.connection_minutes += (at.saturating_sub(since).as_millis() as u64).div_ceil(60_000).max(1);
        }
    }
}

/// A fleet device's console: counted, not kept.
struct FleetConsole {
    index: usize,
    tally: Rc<RefCell<Tally>>,
}

impl Console for FleetConsole {
    fn line(&mut self, line: &LogLine, at: Duration) {
        self.tally.borrow_mut().line(self.index, &line.text, at);
    }
}

enum Event {
    Link(LinkEvent),
    /// From the operator of broker `.0`.
    Operator(usize, OperatorEvent),
}

/// SplitMix64: the workload's choices, the same for the same `--seed`.
struct Choices(u64);

impl Choices {
    fn below(&mut self, n: usize) -> usize {
        let z = tasmota_core::hardware::splitmix(self.0);
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (z % n as u64) as usize
    }
}

/// A fleet that cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Run(String),
}

/// Runs the fleet to the end and reports. Call inside a current-thread runtime, paused
/// for [`Target::Virtual`].
pub async fn run(opts: Options) -> Result<Report, FleetError> {
    let wall = std::time::Instant::now();
    let t0 = Instant::now();
    let range = shard_range(opts.groups.iter().map(|g| g.count).sum(), opts.shard);
    let n = range.len();
    // The broker, and where devices and the operator reach it.
    let token = opts.login.as_ref().map_or(embedded::DEFAULT_TOKEN, |l| l.1.as_str());
    // Where each broker is (the devices' MqttHost, MqttPort and TLS): several only with
    // `--broker` given several times.
    let (own, network, brokers): (Option<FleetBroker>, Arc<dyn Network>, Vec<BrokerAt>) = match &opts.target {
        Target::Brokers(urls) => {
            (None, Arc::new(opts.connector.clone()), urls.iter().map(|u| (u.host.clone(), u.port, u.tls)).collect())
        }
        Target::Virtual(p) => {
            let b = FleetBroker::new(*p, token).map_err(FleetError::Input)?;
            let net: Arc<dyn Network> = Arc::new(Arc::new(b.virtual_net(&opts.connector)));
            let at = vec![(b.host.clone(), b.port, b.tls.is_some())];
            (Some(b), net, at)
        }
        Target::Embedded(p) => {
            let b = FleetBroker::new(*p, token).map_err(FleetError::Input)?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| FleetError::Run(format!("cannot listen on 127.0.0.1: {e}")))?;
            let bound = listener.local_addr().map_err(|e| FleetError::Run(e.to_string()))?.port();
            let (server, listen) = (b.broker.clone(), b.tls.clone());
            tokio::spawn(async move { server.listen(listener, listen).await });
            if b.tls.is_some() {
                // Devices keep the endpoint's name (SNI, the certificate, the firmware's
                // AWS path) and port 443; the connector sends them to the listener.
                let mut client = b.client(&opts.connector);
                client.connect_to.insert((b.host.to_ascii_lowercase(), b.port), ("127.0.0.1".into(), bound));
                let at = vec![(b.host.clone(), b.port, true)];
                (Some(b), Arc::new(client), at)
            } else {
                (Some(b), Arc::new(opts.connector.clone()), vec![("127.0.0.1".into(), bound, false)])
            }
        }
    };
    let broker = own.as_ref().map(|b| b.broker.clone());
    if opts.broker_outage.is_some() && broker.is_none() {
        return Err(FleetError::Input(
            "--broker-outage needs --embedded or --virtual (a real broker is not ours to restart)".into(),
        ));
    }

    let network: Arc<dyn Network> = match opts.in_flight {
        Some(k) => Arc::new(gate::Gate::new(network, k)),
        None => network,
    };
    let tally = Rc::new(RefCell::new(Tally::new(n)));
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    // Each group's settings, pointed at each broker.
    let group_settings: Vec<Vec<Settings>> = opts
        .groups
        .iter()
        .map(|g| {
            brokers
                .iter()
                .map(|(host, port, tls)| {
                    let mut settings = g.settings.clone();
                    settings.mqtt_host = host.clone();
                    settings.mqtt_port = *port;
                    if let Some((user, password)) = &opts.login {
                        settings.mqtt_user = user.clone();
                        settings.mqtt_pwd = password.clone();
                    }
                    if *tls {
                        settings.set_option(103, 1);
                    }
                    if let Some(b) = &own {
                        b.configure(&mut settings, opts.login.as_ref());
                    }
                    settings
                })
                .collect()
        })
        .collect();
    // Every group topic in use (GroupTopic1), each told the group commands once.
    let mut group_topics: Vec<String> = group_settings.iter().map(|s| s[0].mqtt_grp_topic[0].clone()).collect();
    group_topics.sort();
    group_topics.dedup();
    let group_flash: Vec<Vec<Flash>> = group_settings.iter().map(|b| b.iter().map(Flash::new).collect()).collect();
    let members = opts.groups.iter().zip(&group_flash).flat_map(|(g, s)| (0..g.count).map(move |j| (g, s, j)));
    // This shard's slice of the fleet; `index` is the device's place in it, `global` its
    // place in the whole fleet (its MAC, its broker).
    let mut devices: Vec<HostDevice<FleetConsole>> = members
        .enumerate()
        .skip(range.start)
        .take(n)
        .enumerate()
        .map(|(index, (global, (group, flash, j)))| {
            let tx = tx.clone();
            let hardware = group.profile.clone().with_mac(mac_of(group.mac_base, j)).hardware;
            HostDevice::new(HostSetup {
                index,
                name: format!("{global}"),
                hardware,
                flash: flash[global % flash.len()].clone(),
                store: None,
                console: FleetConsole { index, tally: tally.clone() },
                network: network.clone(),
                events: Arc::new(move |ev| {
                    let _ = tx.send(Event::Link(ev));
                }),
                t0,
                tls_time: Duration::ZERO,
            })
        })
        .collect();

    // The operators, one per broker: send the commands, see the answers.
    let mut op_txs = Vec::new();
    let mut operator_tasks = Vec::new();
    for (k, (host, port, tls)) in brokers.iter().enumerate() {
        let (op_tx, mut op_rx) = mpsc::unbounded_channel::<operator::Command>();
        op_txs.push(op_tx);
        let route = OperatorRoute {
            // In memory, except to a plain broker on a socket (the commands then take the
            // devices' path).
            own: match (&opts.target, &own) {
                (Target::Embedded(ProfileName::Plain), _) => None,
                (_, own) => own.clone(),
            },
            connector: opts.connector.clone(),
            host: host.clone(),
            port: *port,
            tls: *tls,
        };
        // The first link must open: a broker the operator cannot reach is the user's error.
        let first = route.open().await?;
        // Shards of one fleet on one broker each have their own client id (one would
        // take the other's session over).
        let id = match opts.shard {
            Some(s) => format!("tasmota-sim-fleet-operator-{}", s.index),
            None => "tasmota-sim-fleet-operator".to_string(),
        };
        let tx = tx.clone();
        let login = opts.login.clone();
        let protocol = opts.operator_protocol;
        operator_tasks.push(tokio::spawn(async move {
            let events = move |e| {
                let _ = tx.send(Event::Operator(k, e));
            };
            let session = operator::Session {
                client_id: id,
                login,
                subscribe: vec!["stat/+/RESULT".to_string(), "tele/+/INFO1".to_string()],
                protocol,
            };
            let mut link = Some(first);
            // Like mosquitto_sub, it connects again a second after its link ends (a
            // broker outage), until the run ends.
            loop {
                let stream = match link.take() {
                    Some(s) => Ok(s),
                    None => route.open().await,
                };
                match stream {
                    Ok(stream) => {
                        operator::run(stream, &session, &mut op_rx, &events).await;
                        if op_rx.is_closed() {
                            return;
                        }
                    }
                    Err(e) => events(OperatorEvent::Down(e.to_string())),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    let mut operators_ready = vec![false; brokers.len()];
    // Links an operator lost before it was ever ready (subscribed).
    let mut lost_before_ready = vec![0u32; brokers.len()];

    let mut timers = Timers::new(n);
    let mut dirty: Vec<usize> = Vec::new();
    let mut is_dirty = vec![false; n];
    let mut topics: HashMap<String, usize> = HashMap::with_capacity(n);
    let mut ready: Vec<usize> = Vec::new();
    let mut is_ready = vec![false; n];
    let mut pending: Vec<Option<Instant>> = vec![None; n];
    let mut pending_count = 0usize;
    let mut latency = new_histogram();
    let (mut sent, mut answered, mut delivered) = (0u64, 0u64, 0u64);
    let mut group_plan = opts.group_commands.clone();
    group_plan.sort_by_key(|g| g.at);
    // Every group command with the devices that answered it. A shard that does not
    // publish them (another shard does, on a broker they share) may see its devices
    // answer before its own clock reaches the command's time (shards start apart), so
    // each answer that matches no command of ours goes to the first group command the
    // device has not answered yet, up to SHARD_SKEW before its time.
    let mut groups: Vec<(GroupCommand, HashSet<usize>)> =
        group_plan.iter().map(|g| (g.clone(), HashSet::new())).collect();
    // How many of them have come due on this shard's clock.
    let mut groups_due = 0usize;
    let mut group_plan = group_plan.into_iter().peekable();
    let mut outage = opts.broker_outage;
    let mut choices = Choices(opts.seed);
    let mut booted = 0usize;
    let boot_gap = opts.connect_rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-9)));
    let command_gap = (opts.commands_per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.commands_per_second));
    let mut next_command = command_gap.map(|g| t0 + opts.commands_from + g);
    let mut operator_ready = false;
    let mut operator_down = 0u64;
    let end = t0 + opts.run_for;
    let progress = (opts.progress == Progress::Bar).then(|| progress_bar(n as u64));
    let mut next_progress = t0;
    let mut next_line = std::time::Instant::now();

    macro_rules! touch {
        ($i:expr) => {{
            let i = $i;
            if !is_dirty[i] {
                is_dirty[i] = true;
                dirty.push(i);
            }
        }};
    }

    loop {
        // Outputs of every device that had an input, then their next timers.
        while let Some(i) = dirty.pop() {
            is_dirty[i] = false;
            devices[i].carry_out().await;
            timers.set(i, devices[i].poll_timeout());
        }
        let now = Instant::now();
        // After `--for`, commands still in flight get UNANSWERED_AFTER to be answered.
        let in_flight = pending_count > 0;
        if now >= end && (!in_flight || now >= end + UNANSWERED_AFTER) {
            break;
        }
        // Boot the next devices as the ramp allows.
        while booted < n && operator_ready {
            let due = boot_gap.map_or(t0, |g| t0 + g.mul_f64(booted as f64));
            if due > now {
                break;
            }
            devices[booted].power_on(BootReason::PowerOn);
            let vars = plan::start_vars(&opts.groups, range.start + booted);
            if let Some(core) = devices[booted].running_mut() {
                core.preset_rule_vars(vars);
            }
            if let Some(core) = devices[booted].core() {
                topics.insert(core.topic().to_string(), booted);
            }
            touch!(booted);
            booted += 1;
        }
        if !dirty.is_empty() {
            continue;
        }
        if let Some((at, down)) = outage {
            if now >= t0 + at {
                if let Some(b) = &broker {
                    b.restart(down);
                }
                outage = None;
            }
        }
        while let Some(g) = group_plan.next_if(|g| now >= t0 + g.at) {
            let (cmd, payload) = g.command.split_once(' ').unwrap_or((&g.command, ""));
            // One publish per broker reaches every shard's devices on it: on brokers the
            // shards share, shard 0 sends it; every shard counts its own devices' answers.
            // A shard's own embedded broker has only its devices.
            if own.is_some() || opts.shard.is_none_or(|s| s.index == 0) {
                for (group_topic, op_tx) in group_topics.iter().flat_map(|t| op_txs.iter().map(move |o| (t, o))) {
                    let _ = op_tx.send(operator::Command {
                        topic: format!("cmnd/{group_topic}/{cmd}"),
                        payload: payload.to_string(),
                        retain: false,
                        qos: 0,
                        properties: Default::default(),
                    });
                }
            }
            delivered += tally.borrow().connected_now as u64;
            groups_due += 1;
        }
        if let (Some(at), Some(gap)) = (next_command, command_gap) {
            if now >= at && now < end {
                next_command = Some(at + gap);
                // A random connected device; a few more tries when the first is busy.
                for _ in 0..if ready.is_empty() { 0 } else { PICKS } {
                    let i = ready[choices.below(ready.len())];
                    // A command unanswered for 10 s stays unanswered; the device may get
                    // another.
                    if pending[i].is_some_and(|at| now.saturating_duration_since(at) > UNANSWERED_AFTER) {
                        pending[i] = None;
                        pending_count -= 1;
                    }
                    // Not to a device whose link is down (it would be lost), nor one that has not
                    // answered the last group command yet.
                    let busy = pending[i].is_some()
                        || tally.borrow().connected_since[i].is_none()
                        || groups[..groups_due].last().is_some_and(|(_, a)| !a.contains(&i));
                    if busy {
                        continue;
                    }
                    let topic = devices[i].core().map(|c| c.topic().to_string()).unwrap_or_default();
                    let _ = op_txs[(range.start + i) % op_txs.len()].send(operator::Command {
                        topic: format!("cmnd/{topic}/Power"),
                        payload: "TOGGLE".into(),
                        retain: false,
                        qos: 0,
                        properties: Default::default(),
                    });
                    pending[i] = Some(now);
                    pending_count += 1;
                    sent += 1;
                    delivered += 1;
                    break;
                }
            }
        }
        if now >= next_progress {
            let t = tally.borrow();
            let line = ProgressLine {
                devices: n as u64,
                connected: t.connected_now as u64,
                messages_out: t.messages_out,
                sent,
                answered,
                p99_us: if latency.is_empty() { 0 } else { latency.value_at_quantile(0.99) },
            };
            if let Some(bar) = &progress {
                show_progress(bar, &line);
            }
            if opts.progress == Progress::Lines && std::time::Instant::now() >= next_line {
                use std::io::Write as _;
                if let Ok(text) = serde_json::to_string(&line) {
                    let _ = writeln!(std::io::stdout().lock(), "{text}");
                }
                next_line = std::time::Instant::now() + Duration::from_millis(250);
            }
            next_progress = now + Duration::from_millis(250);
        }

        let mut wake = if now < end { end } else { end + UNANSWERED_AFTER }.min(next_progress);
        if let Some(t) = timers.earliest() {
            wake = wake.min(t);
        }
        if let Some(at) = next_command {
            wake = wake.min(at);
        }
        if let Some(g) = group_plan.peek() {
            wake = wake.min(t0 + g.at);
        }
        if let Some((at, _)) = outage {
            wake = wake.min(t0 + at);
        }
        if booted < n && operator_ready {
            if let Some(g) = boot_gap {
                wake = wake.min(t0 + g.mul_f64(booted as f64));
            }
        }
        tokio::select! {
            biased;
            ev = rx.recv() => match ev {
                Some(Event::Link(ev)) => {
                    let i = ev.device;
                    devices[i].handle_link_event(ev);
                    touch!(i);
                }
                Some(Event::Operator(k, OperatorEvent::Ready)) => {
                    operators_ready[k] = true;
                    operator_ready = operators_ready.iter().all(|r| *r);
                }
                Some(Event::Operator(k, OperatorEvent::Ack(ack))) => {
                    // A CONNACK refusing the operator's first session is the user's error, like
                    // a broker it cannot reach: no device boots before every operator is
                    // subscribed, so the run would measure nothing. (Refused later, after a good
                    // start, it is a link loss like any other: a broker restarting or busy.)
                    let refused = ack.codes.first().copied().filter(|c| *c != 0);
                    if let (AckKind::ConnAck, Some(code), false) = (ack.kind, refused, operators_ready[k]) {
                        let (host, port, _) = &brokers[k];
                        let why = connack_refusal(opts.operator_protocol, code, opts.login.is_some());
                        if let Some(bar) = &progress {
                            bar.finish_and_clear();
                        }
                        return Err(FleetError::Run(format!(
                            "the fleet's operator client was refused by {host}:{port}: {why}"
                        )));
                    }
                }
                Some(Event::Operator(_, OperatorEvent::Refused { what, .. })) => {
                    // Without its subscriptions the operator sees no answer: nothing to measure.
                    if let Some(bar) = &progress {
                        bar.finish_and_clear();
                    }
                    return Err(FleetError::Run(format!("the fleet's operator client {what}")));
                }
                Some(Event::Operator(k, OperatorEvent::Down(why))) => {
                    let (host, port, _) = &brokers[k];
                    // A broker that closes the operator's link before it was ever subscribed,
                    // again and again, refuses it without a CONNACK (AWS IoT closes a refused
                    // custom-auth login so): the run would measure nothing.
                    if !operators_ready[k] {
                        lost_before_ready[k] += 1;
                        if lost_before_ready[k] >= FIRST_SESSION_TRIES {
                            if let Some(bar) = &progress {
                                bar.finish_and_clear();
                            }
                            return Err(FleetError::Run(format!(
                                "the fleet's operator client never got a session from {host}:{port}: its link \
                                 ended {FIRST_SESSION_TRIES} times before it was subscribed (last: {why}); a \
                                 broker that closes a refused login without a CONNACK, as AWS IoT does, looks \
                                 like this: check --user/--password"
                            )));
                        }
                    }
                    tracing::info!(%why, "the fleet's operator lost its link to {host}:{port}; it connects again in 1 s");
                    operator_down += 1;
                }
                Some(Event::Operator(_, OperatorEvent::Message(m))) => {
                    let mut parts = m.topic.split('/');
                    let (prefix, topic, last) = (parts.next(), parts.next().unwrap_or(""), parts.next());
                    let Some(&i) = topics.get(topic) else { continue };
                    match (prefix, last) {
                        (Some("tele"), Some("INFO1")) if !is_ready[i] => {
                            is_ready[i] = true;
                            ready.push(i);
                        }
                        (Some("stat"), Some("RESULT")) => {
                            let now = Instant::now();
                            if let Some(at) = pending[i].take() {
                                pending_count -= 1;
                                answered += 1;
                                let _ = latency.record((now.saturating_duration_since(at).as_micros() as u64).max(1));
                            } else if let Some((_, answers)) = groups
                                .iter_mut()
                                .find(|(g, a)| !a.contains(&i) && now + SHARD_SKEW >= t0 + g.at)
                            {
                                answers.insert(i);
                            }
                        }
                        _ => {}
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                while let Some(i) = timers.pop_due(now) {
                    devices[i].handle_timeout();
                    touch!(i);
                }
            }
        }
    }

    for task in &operator_tasks {
        task.abort();
    }
    // The end: connections still up are metered to the end of `--for` (the wait for the
    // last answers is not part of the fleet's time).
    let run_time = opts.run_for;
    let mut t = tally.borrow_mut();
    let connected_at_end = t.connected_now as u64;
    for i in 0..n {
        t.disconnected(i, run_time);
    }
    let (rss, cpu_us) = process_usage();
    let pricing = bill::Pricing::builtin();
    let aws_iot = pricing.region(&opts.aws_region).ok().map(|region| {
        let metered = bill::Metered {
            messages: t.message_units + delivered + t.connects,
            connection_minutes: t.connection_minutes,
        };
        bill::bill(&pricing, region, metered, run_time.as_secs_f64())
    });
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    Ok(Report {
        target: match &opts.target {
            Target::Virtual(p) => format!("virtual, embedded {} broker", profile_name(p)),
            Target::Embedded(p) => format!("embedded {} broker on 127.0.0.1", profile_name(p)),
            Target::Brokers(urls) => urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        },
        devices: n as u64,
        connected: connected_at_end,
        connect_seconds: t.all_connected_at.map(|d| d.as_secs_f64()),
        run_seconds: run_time.as_secs_f64(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        commands_sent: sent,
        commands_answered: answered,
        latency_us: Percentiles::of(&latency),
        connect_latency_us: Percentiles::of(&t.connect_us),
        group_commands: groups
            .iter()
            .map(|(g, a)| GroupResult {
                command: g.command.clone(),
                at_seconds: g.at.as_secs_f64(),
                answered: a.len() as u64,
            })
            .collect(),
        messages_out: t.messages_out,
        messages_in: delivered + t.connects,
        connects: t.connects,
        operator_link_losses: operator_down,
        operator_protocol: Some(opts.operator_protocol.level()),
        failures: t.failures.clone(),
        // One entry per second of the run, so a plot spans the whole run.
        connects_per_second: {
            let mut cps = t.connects_per_second.clone();
            cps.resize(cps.len().max(run_time.as_secs_f64().ceil() as usize), 0);
            cps
        },
        rss_bytes_per_device: if n > 0 { rss / n as u64 } else { 0 },
        cpu_us_per_device: if n > 0 { cpu_us / n as u64 } else { 0 },
        aws_iot,
        shaped_by: opts.shaped_by.clone(),
        shards: opts.shard.into_iter().collect(),
        missing_shards: Vec::new(),
        histograms: Histograms { latency_us: encode_histogram(&latency), connect_us: encode_histogram(&t.connect_us) },
    })
}

/// The profile as `--embedded`/`--virtual` name it (clap's value names).
fn profile_name(p: &ProfileName) -> String {
    clap::ValueEnum::to_possible_value(p).map_or_else(|| format!("{p:?}"), |v| v.get_name().to_string())
}

/// A CONNACK's refusal in words (the specification's name of its code) and what to do
/// about it: `CONNACK 5 (not authorised); check --user/--password`. Never the password.
fn connack_refusal(protocol: operator::Protocol, code: u8, login: bool) -> String {
    let v5 = protocol.is_v5();
    let name = if v5 {
        match code {
            0x80 => "Unspecified error",
            0x81 => "Malformed Packet",
            0x82 => "Protocol Error",
            0x83 => "Implementation specific error",
            0x84 => "Unsupported Protocol Version",
            0x85 => "Client Identifier not valid",
            0x86 => "Bad User Name or Password",
            0x87 => "Not authorized",
            0x88 => "Server unavailable",
            0x89 => "Server busy",
            0x8A => "Banned",
            0x8C => "Bad authentication method",
            0x90 => "Topic Name invalid",
            0x95 => "Packet too large",
            0x97 => "Quota exceeded",
            0x99 => "Payload format invalid",
            0x9A => "Retain not supported",
            0x9B => "QoS not supported",
            0x9C => "Use another server",
            0x9D => "Server moved",
            0x9F => "Connection rate exceeded",
            _ => "a reason code MQTT 5 does not define for CONNACK",
        }
    } else {
        match code {
            1 => "unacceptable protocol version",
            2 => "identifier rejected",
            3 => "server unavailable",
            4 => "bad user name or password",
            5 => "not authorised",
            _ => "a return code MQTT 3.1.1 does not define",
        }
    };
    let shown = if v5 { format!("CONNACK 0x{code:02X} ({name}), MQTT 5") } else { format!("CONNACK {code} ({name})") };
    let hint = match (v5, code) {
        (false, 4 | 5) | (true, 0x86 | 0x87 | 0x8C) if login => "; check --user/--password",
        (false, 4 | 5) | (true, 0x86 | 0x87 | 0x8C) => "; the broker wants a login: --user and --password",
        (false, 1) => "; the broker does not take MQTT 3.1.1 from it",
        (true, 0x84) => "; the broker does not take MQTT 5: leave out --operator-protocol 5",
        (false, 2) | (true, 0x85) => "; the broker does not take its client id (tasmota-sim-fleet-operator...)",
        _ => "",
    };
    format!("{shown}{hint}")
}

/// How many links in a row the operator may lose before its first session is up before
/// the run stops (it connects again 1 s after each).
const FIRST_SESSION_TRIES: u32 = 3;

/// How the fleet's operator reaches the broker.
struct OperatorRoute {
    /// The fleet's own broker, over an in-memory link.
    own: Option<FleetBroker>,
    connector: Connector,
    host: String,
    port: u16,
    tls: bool,
}

impl OperatorRoute {
    async fn open(&self) -> Result<BoxStream, FleetError> {
        if let Some(b) = &self.own {
            return Ok(b.operator_link());
        }
        self.connector.open_client(&self.host, self.port, self.tls).await.map_err(|f| {
            FleetError::Run(format!("the fleet's operator client cannot reach {}:{}: {f}", self.host, self.port))
        })
    }
}

/// Shows where a run (or the sum of a fleet's workers) is.
pub fn show_progress(bar: &indicatif::ProgressBar, line: &ProgressLine) {
    bar.set_position(line.connected);
    bar.set_message(format!(
        "{} msgs out, {} commands, {} answered, p99 {:.2} ms",
        line.messages_out,
        line.sent,
        line.answered,
        line.p99_us as f64 / 1000.0
    ));
}

pub fn progress_bar(n: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n);
    let style = indicatif::ProgressStyle::with_template("{elapsed_precise} connected {pos}/{len} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Resident memory (bytes) and CPU time (µs) of this process, from /proc (0 elsewhere).
pub fn process_usage() -> (u64, u64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    // utime and stime, fields 14 and 15, in USER_HZ (100 per second on Linux).
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .map_or(0, |ticks| ticks * 10_000);
    (rss, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_count_up_from_the_base() {
        let base: Mac = "5C:CF:7F:00:00:00".parse().unwrap();
        assert_eq!(mac_of(base, 0), base);
        assert_eq!(mac_of(base, 1).to_string(), "5C:CF:7F:00:00:01");
        assert_eq!(mac_of(base, 256).to_string(), "5C:CF:7F:00:01:00");
    }

    #[test]
    fn group_commands_parse() {
        let g: GroupCommand = "Power ON@1m".parse().unwrap();
        assert_eq!(g, GroupCommand { command: "Power ON".into(), at: Duration::from_secs(60) });
        assert!("@5s".parse::<GroupCommand>().unwrap_err().contains("no command"));
        assert!("Power@soon".parse::<GroupCommand>().is_err());
    }

    #[test]
    fn the_tally_reads_the_firmware_console() {
        let mut t = Tally::new(2);
        let s = Duration::from_secs;
        t.line(0, "MQT: Attempting connection...", s(3));
        t.line(0, "MQT: Connected", Duration::from_millis(3_020));
        t.line(0, "MQT: tele/tasmota_000000/LWT = Online (retained)", s(3));
        t.line(1, "MQT: Connect failed to 127.0.0.1:1883, rc -2. Retry in 10 sec", s(4));
        t.line(1, "MQT: TLS connection error: 296", s(4));
        assert_eq!((t.connects, t.connected_now, t.ever_count), (1, 1, 1));
        assert!(t.connect_us.equivalent(t.connect_us.max(), 20_000), "{}", t.connect_us.max());
        assert_eq!(t.failures["rc -2"], 1);
        assert_eq!(t.failures["tls 296"], 1);
        assert_eq!((t.messages_out, t.message_units), (1, 1));
        // The broker went away after 61 s: two connection-minutes.
        t.line(0, "MQT: Connect failed to 127.0.0.1:1883, rc -3. Retry in 10 sec", s(64));
        assert_eq!((t.connected_now, t.connection_minutes), (0, 2));
    }
}
