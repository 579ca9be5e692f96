//! Running one scenario: build its world, carry out its steps in order, check its
//! expectations, compare its transcript.

use std::sync::Arc;
use std::time::Duration;

use tasmota_core::BootReason;

use super::file::{Action, Expect, Matcher, PublishPattern, RecordPattern, Role, Scenario, Step};
use super::step::{AckPattern, Since};
use super::world::{EmbeddedBroker, EmbeddedNet, Net, Trouble, World};
use super::{operator, transcript, BrokerUrl, Options, Outcome, Verdict};
use crate::broker::{self, Broker, Record, TlsListen};
use crate::link::{Connector, TlsCompat, Trust};

/// Read positions in every stream expectations read: per device console, per operator,
/// per broker record.
///
/// An action step moves every position to the streams' ends at the instant it acts
/// (what it sets off is read; what came before is not), and a match moves its own
/// stream's position past the matched item. Advancing time moves nothing.
#[derive(Default, Clone)]
struct Cursors {
    console: Vec<usize>,
    received: Vec<usize>,
    /// Per operator: its CONNACKs, SUBACKs and PUBACKs.
    acks: Vec<usize>,
    records: Vec<usize>,
}

impl Cursors {
    /// Every stream's end now.
    fn ends(world: &World, brokers: &[Broker]) -> Cursors {
        Cursors {
            console: (0..world.device_count()).map(|i| world.console(i).len()).collect(),
            received: world.operators.iter().map(|o| o.received.len()).collect(),
            acks: world.operators.iter().map(|o| o.acks.len()).collect(),
            records: brokers.iter().map(Broker::record_count).collect(),
        }
    }

    /// Each stream's later position.
    fn max(&self, other: &Cursors) -> Cursors {
        let later = |a: &[usize], b: &[usize]| a.iter().zip(b).map(|(x, y)| *x.max(y)).collect();
        Cursors {
            console: later(&self.console, &other.console),
            received: later(&self.received, &other.received),
            acks: later(&self.acks, &other.acks),
            records: later(&self.records, &other.records),
        }
    }
}

/// The read positions a run keeps: the current ones, and those at each step's start
/// (for `since = "step N"`).
struct Reading {
    now: Cursors,
    start: Cursors,
    steps: Vec<Cursors>,
}

impl Reading {
    /// Where `e` starts reading.
    fn from(&self, e: &Expect) -> &Cursors {
        match e.since {
            Since::LastAction => &self.now,
            Since::Start => &self.start,
            Since::Step(n) => self.steps.get(n - 1).unwrap_or(&self.start),
        }
    }

    /// After `e` matched with `next`: a look-back match never moves a position back.
    fn matched(&mut self, next: &Cursors) {
        self.now = self.now.max(next);
    }
}

/// Runs `s` on a fresh runtime (paused unless `opts.real_time`), to the end.
pub fn run(s: &Scenario, opts: &Options) -> Outcome {
    if opts.broker.is_none() {
        if let Some(b) = s.brokers.iter().find(|b| b.external) {
            let why =
                format!("broker '{}' is external: run with --broker URL (for example mqtt://127.0.0.1:1883)", b.name);
            return Outcome { verdict: Verdict::Skipped(why), ..Outcome::empty(&s.name, &s.file, s.steps.len()) };
        }
    }
    let started = std::time::Instant::now();
    let virtual_clock = !opts.real_time && opts.broker.is_none();
    let runtime = match crate::host::runtime(virtual_clock) {
        Ok(r) => r,
        Err(e) => return Outcome::invalid(s, format!("cannot start the runtime: {e}")),
    };
    let mut outcome = runtime.block_on(run_steps(s, opts, virtual_clock));
    outcome.wall = started.elapsed();
    let golden = transcript::golden_dir(&s.file, &s.name, s.transcript, opts.transcripts.as_deref(), opts.bless);
    if let (Some(dir), true, Verdict::Passed) = (golden, virtual_clock, &outcome.verdict) {
        match transcript::check(&dir, &s.name, &outcome.transcript, opts.bless) {
            Ok(transcript::Checked::Same) => {}
            Ok(transcript::Checked::Written(path)) => {
                outcome.notes.push(format!("transcript written to {}", path.display()))
            }
            Err(failure) => outcome.verdict = Verdict::Failed { step: None, message: failure },
        }
    }
    outcome
}

async fn run_steps(s: &Scenario, opts: &Options, virtual_clock: bool) -> Outcome {
    let net = match build_net(s, opts) {
        Ok(n) => n,
        Err(e) => return Outcome::invalid(s, e),
    };
    let brokers: Vec<Broker> = match &net {
        Net::Embedded(n) => n.brokers.iter().map(|b| b.broker.clone()).collect(),
        Net::External { .. } => Vec::new(),
    };
    let mut world = match World::new(s, net, virtual_clock).await {
        Ok(w) => w,
        Err(e) => return Outcome::failed(s, None, format!("before the first step: {e}")),
    };
    world.boot_devices();
    let start = Cursors {
        console: vec![0; s.devices.len()],
        received: vec![0; s.operators.len()],
        acks: vec![0; s.operators.len()],
        records: vec![0; brokers.len()],
    };
    let mut reading = Reading { now: start.clone(), start, steps: Vec::new() };
    let mut verdict = Verdict::Passed;
    let mut steps_run = 0;
    let mut troubles = Troubles::default();
    troubles.take(&mut world, None);
    for (index, step) in s.steps.iter().enumerate() {
        steps_run += 1;
        if step.role == Role::Act {
            // What was sent before the action arrives first, and stays behind the cursors.
            world.settle().await;
            troubles.take(&mut world, index.checked_sub(1));
            if let Some(v) = troubles.verdict(s) {
                verdict = v;
                break;
            }
        }
        let ends = Cursors::ends(&world, &brokers);
        if step.role == Role::Act {
            reading.now = ends.clone();
        }
        reading.steps.push(ends);
        let result = run_step(&mut world, &brokers, &mut reading, step).await;
        troubles.take(&mut world, Some(index));
        if let Err(message) = result {
            let message = format!("{message}{}", troubles.meanwhile(s));
            verdict = Verdict::Failed { step: Some((index + 1, step.line, step.column)), message };
            break;
        }
        troubles.acknowledge(&step.action, s);
    }
    // Let what the last step set off finish printing (a few ms of the device's time).
    let settle = world.now_plus(Duration::from_millis(1));
    world.run_until(settle, |_| false).await;
    if verdict == Verdict::Passed {
        troubles.take(&mut world, s.steps.len().checked_sub(1));
        if let Some(v) = troubles.verdict(s) {
            verdict = v;
        }
    }
    let transcript: Vec<String> = if s.devices.len() == 1 {
        world.console(0).iter().map(|l| l.line.clone()).collect()
    } else {
        let mut all: Vec<_> = (0..world.device_count()).flat_map(|i| world.console(i).iter()).collect();
        all.sort_by_key(|l| l.at_ms);
        all.into_iter().map(|l| l.line.clone()).collect()
    };
    let records = brokers.iter().map(Broker::records).collect();
    Outcome {
        name: s.name.clone(),
        file: s.file.clone(),
        verdict,
        transcript,
        virtual_ms: world.now_ms(),
        wall: Duration::ZERO,
        steps_run,
        steps_total: s.steps.len(),
        records,
        notes: Vec::new(),
    }
}

/// What went wrong for the operators and the scenario has not (yet) expected.
#[derive(Default)]
struct Troubles {
    /// (operator, the step during or after which it was noticed (0-based; `None`:
    /// before the first), what happened)
    pending: Vec<(usize, Option<usize>, Trouble)>,
}

impl Troubles {
    fn take(&mut self, world: &mut World, step: Option<usize>) {
        for (i, op) in world.operators.iter_mut().enumerate() {
            self.pending.extend(op.troubles.drain(..).map(|t| (i, step, t)));
        }
    }

    /// A passed expectation on a broker's record means the scenario saw what happened
    /// there: its operators' troubles so far were expected.
    fn acknowledge(&mut self, action: &Action, s: &Scenario) {
        let expects: Vec<&Expect> = match action {
            Action::Expect(e) => vec![e],
            Action::ExpectOrder { items, .. } => items.iter().collect(),
            _ => Vec::new(),
        };
        for e in expects {
            match &e.what {
                Matcher::Record { broker, .. } => {
                    self.pending.retain(|(op, _, _)| s.operators[*op].broker != *broker);
                }
                // An `ack` that names a refusal's code says the scenario meant that kind of
                // refusal for that operator; one without codes says nothing about it.
                Matcher::Ack { operator, pattern: AckPattern { kind, codes: Some(codes), .. } }
                    if codes.iter().any(|c| *c >= 0x80) =>
                {
                    self.pending.retain(|(op, _, t)| !(*op == *operator && t.refused == Some(*kind)));
                }
                _ => {}
            }
        }
    }

    fn describe(s: &Scenario, op: usize, what: &str) -> String {
        format!("operator '{}' {what}", s.operators[op].name)
    }

    /// The failure for the first trouble not expected.
    fn verdict(&self, s: &Scenario) -> Option<Verdict> {
        let (op, step, what) = self.pending.first()?;
        let spec = &s.operators[*op];
        let before = if step.is_none() { "before the first step: " } else { "" };
        let hint = match what.refused {
            Some(kind) => format!(
                "expect it from the operator, e.g. expect = {{ ack = {{ packet = \"{}\", codes = [...] }}, operator = \"{}\" }}",
                kind.name(),
                spec.name
            ),
            None => format!(
                "expect it on the broker's record, e.g. expect = {{ record = {{ kind = \"close\", client = \"{}\" }} }}",
                spec.client_id
            ),
        };
        let message =
            format!("{before}{}\n  if the scenario means it, {hint}", Troubles::describe(s, *op, &what.what),);
        let step = step.map(|i| (i + 1, s.steps[i].line, s.steps[i].column));
        Some(Verdict::Failed { step, message })
    }

    /// What went wrong for the operators, as a note under another failure.
    fn meanwhile(&self, s: &Scenario) -> String {
        self.pending.iter().map(|(op, _, t)| format!("\n(meanwhile {})", Troubles::describe(s, *op, &t.what))).collect()
    }
}

fn build_net(s: &Scenario, opts: &Options) -> Result<Net, String> {
    if let Some(url) = &opts.broker {
        for (i, step) in s.steps.iter().enumerate() {
            if matches!(step.action, Action::Fault { .. } | Action::BrokerRestart { .. }) {
                return Err(format!(
                    "step {} (line {}) needs the embedded broker: faults and broker restarts cannot be run against {url}",
                    i + 1,
                    step.line
                ));
            }
        }
        if s.brokers.len() > 1 {
            return Err(format!("the scenario has {} brokers; --broker stands in for one", s.brokers.len()));
        }
        return Ok(Net::External { connector: external_connector(s, opts, url)?, url: url.clone() });
    }
    // A broker has a certificate when it has a TLS port or an operator reaches it by WSS.
    let has_tls = |i: usize| {
        s.brokers[i].tls_port.is_some()
            || s.operators.iter().any(|o| o.broker == i && o.websocket.is_some_and(|w| w.tls))
    };
    let tls_names: Vec<String> = {
        let mut n: Vec<String> =
            s.brokers.iter().enumerate().filter(|(i, _)| has_tls(*i)).map(|(_, b)| b.host.clone()).collect();
        n.sort();
        n.dedup();
        n
    };
    let (acceptors, roots) = if tls_names.is_empty() {
        (None, rustls::RootCertStore::empty())
    } else {
        let dir = opts.tls_dir.join(names_key(&tls_names));
        let material = broker::tls::self_signed(&dir, &tls_names).map_err(|e| format!("TLS setup: {e}"))?;
        let roots = material.client_ca.clone().unwrap_or_else(rustls::RootCertStore::empty);
        let acceptors = broker::tls::Acceptors::new(&material).map_err(|e| format!("TLS setup: {e}"))?;
        (Some(Arc::new(acceptors)), roots)
    };
    let mut brokers = Vec::new();
    for (i, spec) in s.brokers.iter().enumerate() {
        let mut config = broker::Config::new(spec.profile);
        for (u, p) in &spec.users {
            config.users.add(&format!("{u}:{p}")).map_err(|e| format!("broker '{}': {e}", spec.name))?;
        }
        config.authorizers = spec.authorizers.clone();
        config.default_authorizer = spec.default_authorizer.clone();
        if let Some(e) = &spec.endpoint {
            config.endpoint = e.clone();
        }
        if spec.allow_retain {
            config.profile.retain = broker::RetainPolicy::Allow;
        }
        for l in &spec.limits {
            config.profile.limits.set(l).map_err(|e| format!("broker '{}': {e}", spec.name))?;
        }
        config.faults = spec.faults.clone();
        config.record_in_memory = true;
        let tls = match &acceptors {
            Some(a) if has_tls(i) => Some(TlsListen { acceptors: a.clone(), mtls: false }),
            _ => None,
        };
        brokers.push(EmbeddedBroker { spec: spec.clone(), broker: Broker::new(config), tls });
    }
    let client = Connector {
        resolve: Default::default(),
        connect_to: Default::default(),
        trust: Trust::Roots(Arc::new(roots)),
        compat: TlsCompat::Firmware,
    };
    Ok(Net::Embedded(Arc::new(EmbeddedNet { brokers, client })))
}

/// A directory name for one set of TLS names, so scenarios with different broker names
/// do not remake each other's certificates.
fn names_key(names: &[String]) -> String {
    let joined = names.join(",");
    let mut h: u64 = 0xcbf29ce484222325;
    for b in joined.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn external_connector(s: &Scenario, opts: &Options, url: &BrokerUrl) -> Result<Connector, String> {
    let trust = if opts.insecure {
        Trust::Insecure
    } else if let Some(path) = &opts.ca_file {
        Trust::Roots(Arc::new(crate::link::load_ca_file(path)?))
    } else {
        Trust::Roots(Arc::new(crate::link::firmware_roots()))
    };
    let mut connect_to = std::collections::HashMap::new();
    for b in &s.brokers {
        for port in [b.port, b.tls_port].into_iter().flatten() {
            connect_to.insert((b.host.clone(), port), (url.host.clone(), url.port));
        }
    }
    let resolve = opts.resolve.iter().map(|r| ((r.host.clone(), r.port), r.addr)).collect();
    Ok(Connector { resolve, connect_to, trust, compat: TlsCompat::Firmware })
}

/// Carries out what an input set off at this instant before the next step.
async fn settle_now(world: &mut World) {
    let now = world.now_plus(Duration::ZERO);
    world.run_until(now, |_| false).await;
}

async fn run_step(world: &mut World, brokers: &[Broker], reading: &mut Reading, step: &Step) -> Result<(), String> {
    match &step.action {
        Action::Console { device, line } => {
            let (core, now) = world.core_mut(*device).map_err(|e| format!("{e}: nothing can be typed"))?;
            core.handle_serial_line(line, now);
            // What the line sets off at this instant is carried out before the next step.
            settle_now(world).await;
        }
        Action::MqttPublish { operator, topic, payload, retain, qos, properties } => {
            let cmd = operator::Command {
                topic: topic.clone(),
                payload: payload.clone(),
                retain: *retain,
                qos: *qos,
                properties: properties.clone(),
            };
            world.operator_publish(*operator, cmd)?;
            // What the broker does with it (including closing the link) belongs to this step.
            world.settle().await;
        }
        Action::Advance(d) => {
            let until = world.now_plus(*d);
            world.run_until(until, |_| false).await;
        }
        Action::Restart { device } => world.power_on(*device, BootReason::Restart),
        Action::PowerOff { device } => world.power_off(*device),
        Action::PowerOn { device } => {
            if world.is_powered(*device) {
                return Err(format!("device '{}' is already on", world.device_name(*device)));
            }
            world.power_on(*device, BootReason::PowerOn);
        }
        Action::Fault { broker, rule } => brokers[*broker].add_fault(rule.clone()),
        Action::DeviceFault { device, fault } => world.set_device_fault(*device, fault),
        Action::BrokerRestart { broker, down } => brokers[*broker].restart(*down),
        Action::ButtonPress { device, button } => {
            let (core, now) = world.core_mut(*device)?;
            core.handle_button(*button, now).map_err(|e| e.0)?;
            settle_now(world).await;
        }
        Action::Switch { device, index, on } => {
            let (core, now) = world.core_mut(*device)?;
            core.handle_switch(*index, *on, now).map_err(|e| e.0)?;
            settle_now(world).await;
        }
        Action::Sensor { device, index, quantity, milli } => {
            let (core, now) = world.core_mut(*device)?;
            core.handle_sensor(*index, *quantity, *milli, now).map_err(|e| e.0)?;
        }
        Action::SensorError { device, index, failing } => {
            let (core, now) = world.core_mut(*device)?;
            core.handle_sensor_read_error(*index, *failing, now).map_err(|e| e.0)?;
        }
        Action::Http { device, cmnd, user, password, status, body } => {
            let (core, now) = world.core_mut(*device)?;
            let r = core.handle_web_command(cmnd.as_deref(), user.as_deref(), password.as_deref(), "127.0.0.1", now);
            settle_now(world).await;
            if r.status != *status || body.as_ref().is_some_and(|b| *b != r.body) {
                let want = body.as_deref().unwrap_or("(any body)");
                return Err(format!("http: expected {status} {want}\n  got      {} {}", r.status, r.body));
            }
        }
        Action::Expect(e @ Expect { what: Matcher::Shared { members, reference, topic }, .. }) => {
            // What is on its way arrives first; then the share is counted once, over what
            // the reference had by now. In real time a copy may still be on the wire:
            // the members get a second more, so a message delivered twice is seen twice.
            world.settle().await;
            let cutoff_ms = world.now_ms();
            if !world.virtual_clock {
                let grace = world.now_plus(Duration::from_secs(1));
                world.run_until(grace, |_| false).await;
            }
            let from = reading.from(e).clone();
            let next = shared_split(world, &from, e.since, cutoff_ms, *reference, members, topic.as_deref())?;
            reading.matched(&next);
        }
        Action::Expect(e) => {
            let from = reading.from(e).clone();
            match wait_for(world, brokers, &from, e, e.within).await {
                Some(next) => reading.matched(&next),
                None => return Err(not_seen(world, brokers, &from, e)),
            }
        }
        Action::ExpectNot(e) => {
            // Only what happens from now on counts, unless it looks back.
            let from = match e.since {
                Since::LastAction => Cursors::ends(world, brokers),
                _ => reading.from(e).clone(),
            };
            let start_ms = world.now_ms();
            if let Some(seen) = wait_for(world, brokers, &from, e, e.within).await {
                let what = describe_hit(world, brokers, &seen, &e.what);
                return Err(format!(
                    "expected no {} within {}, but {what} {} ms after the step began",
                    e.text,
                    show(e.within),
                    world.now_ms() - start_ms
                ));
            }
            // The cursors stay: what an expect_not window saw can still be expected next.
        }
        Action::ExpectOrder { items, within } => {
            let deadline = world.now_plus(*within);
            let mut previous: Option<Cursors> = None;
            for (n, e) in items.iter().enumerate() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                // Each item is looked for after the previous one; the first item's `since`
                // is where the whole list starts reading.
                let from = previous.clone().unwrap_or_else(|| reading.from(e).clone());
                match wait_for(world, brokers, &from, e, left).await {
                    Some(next) => {
                        reading.matched(&next);
                        previous = Some(next);
                    }
                    None => {
                        return Err(format!(
                            "expect_order item {} of {}: {}",
                            n + 1,
                            items.len(),
                            not_seen(world, brokers, &from, &Expect { within: *within, ..e.clone() })
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs the world until `e` is seen after `from` (then returns the cursors just past the
/// match) or `within` passes.
async fn wait_for(
    world: &mut World,
    brokers: &[Broker],
    from: &Cursors,
    e: &Expect,
    within: Duration,
) -> Option<Cursors> {
    let deadline = world.now_plus(within);
    let mut hit = None;
    world
        .run_until(deadline, |w| {
            hit = find(w, brokers, from, &e.what);
            hit.is_some()
        })
        .await;
    hit
}

fn find(w: &World, brokers: &[Broker], from: &Cursors, m: &Matcher) -> Option<Cursors> {
    let mut next = from.clone();
    match m {
        Matcher::Console { device, text } => {
            let lines = w.console(*device);
            let full = has_timestamp(text);
            let i = lines[from.console[*device]..].iter().position(|l| {
                if full {
                    strip_name(&l.line) == text
                } else {
                    l.text == *text
                }
            })?;
            next.console[*device] += i + 1;
        }
        Matcher::ConsoleRegex { device, re } => {
            let lines = w.console(*device);
            let i = lines[from.console[*device]..].iter().position(|l| re.is_match(&l.text))?;
            next.console[*device] += i + 1;
        }
        Matcher::Publish { operator, pattern } => {
            let got = &w.operators[*operator].received;
            let i = got[from.received[*operator]..].iter().position(|m| publish_matches(pattern, &m.msg))?;
            next.received[*operator] += i + 1;
        }
        Matcher::Record { broker, pattern } => {
            let new = brokers[*broker].records_since(from.records[*broker]);
            let i = new.iter().position(|r| record_matches(pattern, r))?;
            next.records[*broker] += i + 1;
        }
        Matcher::Setting { device, name, value } => {
            let settings = w.device_settings(*device);
            let now = serde_json::to_value(settings).ok()?;
            if now.get(name) != Some(value) {
                return None;
            }
        }
        Matcher::Ack { operator, pattern } => {
            let got = &w.operators[*operator].acks;
            let i = got[from.acks[*operator]..].iter().position(|a| ack_matches(pattern, &a.ack))?;
            next.acks[*operator] += i + 1;
        }
        // Checked once by `shared_split`, never waited for.
        Matcher::Shared { .. } => return None,
    }
    Some(next)
}

fn ack_matches(p: &AckPattern, a: &operator::Ack) -> bool {
    p.kind == a.kind
        && p.codes.as_ref().is_none_or(|c| *c == a.codes)
        && p.topic.as_ref().is_none_or(|t| a.topics.contains(t))
}

/// A shared subscription's split: every message `reference` received on `topic` (a
/// filter) since `from` reached exactly one of `members`, and the members received
/// nothing there that the reference did not. Messages are told apart by topic and
/// payload (and counted, so one sent twice must arrive twice). Returns the cursors past
/// everything read, or what was wrong.
fn shared_split(
    w: &World,
    from: &Cursors,
    since: Since,
    cutoff_ms: u64,
    reference: usize,
    members: &[usize],
    topic: Option<&str>,
) -> Result<Cursors, String> {
    use std::collections::BTreeMap;
    let on_topic = |m: &operator::Received| {
        topic.is_none_or(|t| crate::broker::topic::matches(t, &m.topic, false) || t == m.topic)
    };
    let name = |i: usize| format!("'{}'", w.operators[i].name);
    let what = topic.unwrap_or("any topic");
    let seen = |i: usize| w.operators[i].received[from.received[i]..].iter().filter(move |m| on_topic(&m.msg));
    // (topic, payload) -> how many times the reference got it, and each member.
    let mut count: BTreeMap<(&str, &str), (usize, Vec<usize>)> = BTreeMap::new();
    for m in seen(reference).filter(|m| m.at_ms <= cutoff_ms) {
        count.entry((&m.msg.topic, &m.msg.payload)).or_insert_with(|| (0, vec![0; members.len()])).0 += 1;
    }
    if count.is_empty() {
        return Err(format!(
            "expected messages on {what} to compare, but operator {} received none since {} (let time pass with advance first)",
            name(reference),
            since
        ));
    }
    let mut per_member = vec![0usize; members.len()];
    for (k, &m) in members.iter().enumerate() {
        for seen_msg in seen(m) {
            let msg = &seen_msg.msg;
            per_member[k] += 1;
            match count.get_mut(&(msg.topic.as_str(), msg.payload.as_str())) {
                Some(c) => c.1[k] += 1,
                // Sent after the cutoff (real time): the reference's copy was not counted.
                None if seen_msg.at_ms > cutoff_ms => {}
                None => {
                    return Err(format!(
                        "operator {} received {} = {} on {what}, which operator {} did not",
                        name(m),
                        msg.topic,
                        msg.payload,
                        name(reference)
                    ))
                }
            }
        }
    }
    let split: Vec<String> = members.iter().zip(&per_member).map(|(m, n)| format!("{} {n}", name(*m))).collect();
    for ((t, p), (times, got)) in &count {
        let total: usize = got.iter().sum();
        if total != *times {
            let reached: Vec<String> =
                members.iter().zip(got).filter(|(_, n)| **n > 0).map(|(m, n)| format!("{} {n}x", name(*m))).collect();
            let reached = if reached.is_empty() { "none of them".to_string() } else { reached.join(", ") };
            return Err(format!(
                "expected each of the {} messages on {what} operator {} received to reach exactly one of {}; \
                 {t} = {p} reached {reached}{}",
                count.values().map(|c| c.0).sum::<usize>(),
                name(reference),
                members.iter().map(|m| name(*m)).collect::<Vec<_>>().join(", "),
                if *times > 1 { format!(" (sent {times}x)") } else { String::new() }
            ));
        }
    }
    tracing::debug!(split = %split.join(", "), "shared subscription split");
    let mut next = from.clone();
    for &i in members.iter().chain([reference].iter()) {
        next.received[i] = w.operators[i].received.len();
    }
    Ok(next)
}

fn has_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() > 13 && b[2] == b':' && b[5] == b':' && b[8] == b'.' && b[12] == b' '
}

/// A transcript line without its `[device] ` prefix.
fn strip_name(line: &str) -> &str {
    match line.strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or(line, |(_, l)| l),
        None => line,
    }
}

fn publish_matches(p: &PublishPattern, m: &operator::Received) -> bool {
    p.topic.as_ref().is_none_or(|t| crate::broker::topic::matches(t, &m.topic, false) || *t == m.topic)
        && p.payload.as_ref().is_none_or(|x| *x == m.payload)
        && p.payload_regex.as_ref().is_none_or(|re| re.is_match(&m.payload))
        && p.retain.is_none_or(|r| r == m.retain)
        && p.json.as_ref().is_none_or(|want| {
            serde_json::from_str::<serde_json::Value>(&m.payload).is_ok_and(|got| json_contains(&got, want))
        })
        && p.user_properties.iter().all(|pair| m.properties.user_properties.contains(pair))
        && p.message_expiry.is_none_or(|e| m.properties.message_expiry == Some(e))
        && p.response_topic.as_ref().is_none_or(|t| m.properties.response_topic.as_ref() == Some(t))
        && p.correlation_data.as_ref().is_none_or(|c| m.properties.correlation_data.as_deref() == Some(c.as_bytes()))
        && p.content_type.as_ref().is_none_or(|c| m.properties.content_type.as_ref() == Some(c))
}

/// A received message as failures show it: `topic = payload`, then its properties.
fn show_received(m: &operator::Received) -> String {
    let retained = if m.retain { " (retained)" } else { "" };
    format!("{} = {}{retained}{}", m.topic, m.payload, m.properties.describe())
}

/// Whether `got` has every key of `want` with the same value (objects recursively).
pub fn json_contains(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (got, want) {
        (serde_json::Value::Object(g), serde_json::Value::Object(w)) => {
            w.iter().all(|(k, wv)| g.get(k).is_some_and(|gv| json_contains(gv, wv)))
        }
        _ => got == want,
    }
}

fn record_matches(p: &RecordPattern, r: &Record) -> bool {
    p.kind.as_ref().is_none_or(|k| *k == r.kind)
        && p.client.as_ref().is_none_or(|c| r.client.as_ref() == Some(c))
        && p.topic.as_ref().is_none_or(|t| r.topic.as_ref() == Some(t))
        && p.payload.as_ref().is_none_or(|x| r.payload.as_ref() == Some(x))
        && p.retain.is_none_or(|x| r.retain == Some(x))
        && p.codes.as_ref().is_none_or(|c| r.codes.as_ref() == Some(c))
        && p.detail_regex.as_ref().is_none_or(|re| r.detail.as_deref().is_some_and(|d| re.is_match(d)))
}

fn describe_hit(w: &World, brokers: &[Broker], seen: &Cursors, m: &Matcher) -> String {
    match m {
        Matcher::Console { device, .. } | Matcher::ConsoleRegex { device, .. } => {
            let i = seen.console[*device] - 1;
            format!("the console printed '{}'", w.console(*device)[i].line)
        }
        Matcher::Publish { operator, .. } => {
            let m = &w.operators[*operator].received[seen.received[*operator] - 1].msg;
            format!("the operator received {}", show_received(m))
        }
        Matcher::Ack { operator, .. } => {
            let a = &w.operators[*operator].acks[seen.acks[*operator] - 1].ack;
            format!("the operator received {a}")
        }
        Matcher::Shared { .. } => "the share was as expected".to_string(),
        Matcher::Record { broker, .. } => {
            let r = brokers[*broker].records_since(seen.records[*broker] - 1);
            format!("the broker recorded {}", r.first().and_then(|r| serde_json::to_string(r).ok()).unwrap_or_default())
        }
        Matcher::Setting { .. } => "the setting had that value".to_string(),
    }
}

/// The failure message of an expectation not met, with what was seen instead.
fn not_seen(w: &World, brokers: &[Broker], from: &Cursors, e: &Expect) -> String {
    let mut msg = format!("expected {} within {}; not seen", e.text, show(e.within));
    let tail = |items: Vec<String>| -> String {
        if items.is_empty() {
            return format!(" (nothing since {})", e.since);
        }
        let skip = items.len().saturating_sub(12);
        let mut s = format!(". Seen since {}:", e.since);
        if skip > 0 {
            s.push_str(&format!("\n    ... {skip} earlier"));
        }
        for i in &items[skip..] {
            s.push_str("\n    ");
            s.push_str(i);
        }
        s
    };
    match &e.what {
        Matcher::Console { device, .. } | Matcher::ConsoleRegex { device, .. } => {
            let lines = &w.console(*device)[from.console[*device]..];
            msg.push_str(&tail(lines.iter().map(|l| l.line.clone()).collect()));
        }
        Matcher::Publish { operator, .. } => {
            let op = &w.operators[*operator];
            let got = &op.received[from.received[*operator]..];
            msg.push_str(&tail(got.iter().map(|m| show_received(&m.msg)).collect()));
            if let Some(why) = &op.down {
                msg.push_str(&format!("\n    (the operator's link ended: {why})"));
            }
        }
        Matcher::Record { broker, .. } => {
            let new = brokers[*broker].records_since(from.records[*broker]);
            msg.push_str(&tail(new.iter().map(|r| serde_json::to_string(r).unwrap_or_default()).collect()));
        }
        Matcher::Setting { device, name, .. } => {
            let settings = w.device_settings(*device);
            let now = serde_json::to_value(settings).ok().and_then(|v| v.get(name).cloned());
            msg.push_str(&format!(": {name} is {}", now.unwrap_or_default()));
        }
        Matcher::Ack { operator, .. } => {
            let op = &w.operators[*operator];
            let got = &op.acks[from.acks[*operator]..];
            msg.push_str(&tail(got.iter().map(|a| a.ack.to_string()).collect()));
            if let Some(why) = &op.down {
                msg.push_str(&format!("\n    (the operator's link ended: {why})"));
            }
        }
        Matcher::Shared { .. } => {}
    }
    msg
}

/// A duration as scenario files write it.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
