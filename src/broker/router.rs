//! The broker's shared state: sessions (connected or kept for a persistent client),
//! the subscription index, and retained messages. Routing a PUBLISH happens here, under
//! one lock, and hands deliveries to each connection's [`Mailbox`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::profile::Profile;
use super::topic;

/// Mosquitto's `max_queued_messages` default: messages queued for one client (offline
/// persistent, or online but not reading fast enough); more are dropped.
pub const MAX_QUEUED: usize = 1000;

/// Deliveries waiting for one connected client before the excess is dropped (a slow
/// reader must not grow the broker without bound).
pub const MAILBOX_CAP: usize = 10_000;

/// An application message as routed: topic and payload, shared by every delivery.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 properties from the publisher (none from a 3.1.1 one).
    pub props: Option<Box<MessageProps>>,
}

impl Message {
    /// A message with no MQTT 5 properties.
    pub fn new(topic: String, payload: Bytes) -> Message {
        Message { topic, payload, props: None }
    }

    /// True once the message's expiry interval has passed (MQTT 5 §3.3.2.3.3: not
    /// delivered then).
    pub fn expired(&self, now: Instant) -> bool {
        self.props.as_ref().and_then(|p| p.expires).is_some_and(|e| e <= now)
    }
}

/// The MQTT 5 properties a message carries from publisher to subscribers (§3.3.2.3):
/// payload format, content type, response topic, correlation data, user properties.
/// The topic alias and subscription identifiers are per link, not here; the message
/// expiry interval is kept as the instant it expires.
#[derive(Debug, Default)]
pub struct MessageProps {
    pub properties: PublishProperties,
    pub expires: Option<Instant>,
}

/// One subscription's options (MQTT 5 §3.8.3.1; a 3.1.1 subscription is QoS only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: QoS,
    /// Not delivered to the connection that published it.
    pub no_local: bool,
    /// Deliveries keep the publisher's RETAIN flag (else RETAIN=0 except for retained
    /// messages sent on SUBSCRIBE).
    pub retain_as_published: bool,
    /// Subscription identifier (§3.8.2.1.2), 0 for none.
    pub id: u32,
}

impl SubOptions {
    pub fn qos(qos: QoS) -> SubOptions {
        SubOptions { qos, no_local: false, retain_as_published: false, id: 0 }
    }
}

/// A shared subscription `$share/<group>/<filter>` (MQTT 5 §4.8.2): each message goes to
/// one member, in turn.
struct SharedGroup {
    group: String,
    filter: String,
    members: Vec<(Arc<str>, SubOptions)>,
    next: usize,
}

/// `$share/<group>/<filter>` → (group, filter); `None` for an ordinary filter.
pub fn shared_parts(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

/// One message on its way to one client.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// Packet id already used for it (a redelivery), or 0.
    pub pkid: u16,
    pub dup: bool,
    /// QoS 2 only: PUBREC was received, so what is owed is PUBREL (also after a
    /// reconnect, MQTT-4.4.0-1), not the PUBLISH.
    pub released: bool,
    /// The identifiers of the subscriptions that matched (MQTT 5 §3.3.2.3.8).
    pub sub_ids: Vec<u32>,
}

impl Delivery {
    /// A first delivery (no packet id yet).
    pub fn new(msg: Arc<Message>, qos: QoS, retain: bool) -> Delivery {
        Delivery { msg, qos, retain, pkid: 0, dup: false, released: false, sub_ids: Vec::new() }
    }
}

/// What other parts of the broker tell a connection.
#[derive(Debug)]
pub enum ToConn {
    Deliver(Delivery),
    /// Close the link (will published).
    Kick(Kick),
}

/// Why another part of the broker closes a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A new connection with the same client id took the session over.
    TakenOver,
    /// The broker restarts.
    Restart,
    /// `Broker::drop_client`.
    Request,
}

impl Kick {
    /// The close reason in the record.
    pub fn reason(self) -> &'static str {
        match self {
            Kick::TakenOver => "session taken over by a new connection with the same client id",
            Kick::Restart => "broker restart",
            Kick::Request => "dropped by request",
        }
    }
}

/// A connection's inbox. A `VecDeque` allocates nothing until used, which keeps an idle
/// connection small (a tokio mpsc channel preallocates a block of slots). It holds at most
/// [`MAILBOX_CAP`] deliveries: a client that does not read fast enough loses the excess, as
/// with Mosquitto ("Outgoing messages are being dropped"), instead of the broker growing
/// without bound.
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<ToConn>>,
    notify: Notify,
    dropped: AtomicU64,
}

impl Mailbox {
    pub fn push(&self, m: ToConn) {
        let was_empty = match self.queue.lock() {
            Ok(mut q) => {
                if matches!(m, ToConn::Deliver(_)) && q.len() >= MAILBOX_CAP {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                q.push_back(m);
                q.len() == 1
            }
            Err(_) => return,
        };
        // The connection takes everything on each wake-up, so only the first item of a
        // batch needs to wake it.
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Waits until something is in the box (a permit is stored if `push` came first).
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    pub fn take(&self) -> VecDeque<ToConn> {
        self.queue.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
    }

    /// Deliveries dropped because the box was full, since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// The connection currently attached to a session.
#[derive(Clone)]
pub struct Attached {
    pub conn: u64,
    pub mailbox: Arc<Mailbox>,
}

/// A client's session: its subscriptions, and while it is offline (persistent only) the
/// QoS 1/2 messages kept for it.
pub struct Session {
    pub attached: Option<Attached>,
    /// The session ends when its connection closes (3.1.1 clean session, MQTT 5 session
    /// expiry interval 0).
    pub clean: bool,
    /// How long the session outlives its connection (`None`: until the broker forgets it).
    pub expiry: Option<Duration>,
    pub subscriptions: HashMap<String, SubOptions>,
    pub queue: VecDeque<Delivery>,
    /// Packet ids continue across reconnects of a persistent session.
    pub next_pkid: u16,
    /// Made by an MQTT 5 client (else 3.1/3.1.1); matters where sessions do not cross
    /// protocols (AWS).
    pub v5: bool,
    /// Incoming QoS 2 messages received (PUBREC sent) and waiting for PUBREL.
    pub qos2_in: HashMap<u16, (Arc<Message>, bool)>,
    pub expires: Option<Instant>,
}

impl Session {
    fn new(clean: bool) -> Session {
        Session {
            attached: None,
            clean,
            expiry: None,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            next_pkid: 1,
            v5: false,
            qos2_in: HashMap::new(),
            expires: None,
        }
    }
}

/// A retained message.
pub struct Retained {
    pub msg: Arc<Message>,
    pub qos: QoS,
}

/// What attaching a connection to a session gives back.
pub struct Attach {
    pub session_present: bool,
    /// Another connection held the session and was kicked.
    pub taken_over: bool,
    /// Messages kept while offline and unacknowledged ones to redeliver, in order.
    pub pending: VecDeque<Delivery>,
    pub next_pkid: u16,
    pub qos2_in: HashMap<u16, (Arc<Message>, bool)>,
}

/// Everything shared by the connections.
#[derive(Default)]
pub struct State {
    pub sessions: HashMap<Arc<str>, Session>,
    /// Every session's subscriptions, by topic level.
    filters: topic::FilterIndex<SubOptions>,
    /// Shared subscriptions, by group and filter.
    shared: Vec<SharedGroup>,
    /// Wills waiting for their delay (MQTT 5 §3.1.3.2.2), by client: the connection they
    /// came from. A new connection for the client cancels its will.
    pub delayed_wills: HashMap<Arc<str>, u64>,
    pub retained: HashMap<String, Retained>,
    /// The retained topics by level, for wildcard subscriptions.
    retained_topics: topic::TopicTree,
    pub last_connect: HashMap<Arc<str>, Instant>,
}

impl State {
    /// Attaches connection `conn` to the session of `client`, kicking the connection that
    /// held it (its will is published). `clean` discards any old session. `family`:
    /// `Some(v5)` when only a session of the same protocol family (MQTT 5, or 3.1/3.1.1)
    /// is resumed; `None` when any is.
    pub fn attach(
        &mut self,
        client: &Arc<str>,
        clean_start: bool,
        ends: Expiry,
        conn: Attached,
        now: Instant,
        family: Option<bool>,
    ) -> Attach {
        self.delayed_wills.remove(client);
        let mut present = false;
        let mut taken_over = false;
        if let Some(old) = self.sessions.get_mut(client) {
            if let Some(prev) = old.attached.take() {
                prev.mailbox.push(ToConn::Kick(Kick::TakenOver));
                taken_over = true;
            }
            let expired = old.expires.is_some_and(|e| e <= now);
            // A session that ends with its connection (3.1.1 clean session, MQTT 5
            // expiry 0) is over once that connection is kicked or gone, even if its
            // detach has not run yet: a client reconnecting at once gets no session.
            let other_protocol = family.is_some_and(|v5| v5 != old.v5);
            if clean_start || expired || old.clean || other_protocol {
                self.discard(client);
            } else {
                present = true;
            }
        }
        let session = self.sessions.entry(client.clone()).or_insert_with(|| Session::new(ends.at_close));
        session.clean = ends.at_close;
        session.expiry = ends.after;
        session.expires = None;
        session.attached = Some(conn);
        session.v5 = family.unwrap_or(session.v5);
        Attach {
            session_present: present,
            taken_over,
            pending: std::mem::take(&mut session.queue),
            next_pkid: session.next_pkid,
            qos2_in: std::mem::take(&mut session.qos2_in),
        }
    }

    /// Connection `conn` of `client` is gone. A clean session is dropped; a persistent one
    /// keeps `unacked` (to redeliver first) and its incoming QoS 2 state. If another
    /// connection took the session over, the unacknowledged messages go to it.
    pub fn detach(&mut self, client: &Arc<str>, conn: u64, left: Leftovers, now: Instant) {
        let Some(session) = self.sessions.get_mut(client) else { return };
        match &session.attached {
            Some(a) if a.conn == conn => {
                session.attached = None;
                if session.clean {
                    self.discard(client);
                    return;
                }
                let mut queue: VecDeque<Delivery> = left.unacked;
                // QoS 0 is not kept for an offline client.
                queue.extend(left.waiting.into_iter().filter(|d| d.qos != QoS::AtMostOnce));
                queue.append(&mut session.queue);
                session.queue = queue;
                session.next_pkid = left.next_pkid;
                session.qos2_in = left.qos2_in;
                session.expires = session.expiry.map(|d| now + d);
            }
            Some(other) if !session.clean => {
                for d in left.unacked.into_iter().chain(left.waiting) {
                    other.mailbox.push(ToConn::Deliver(d));
                }
            }
            _ => {}
        }
    }

    /// Changes when the session of `client` ends (MQTT 5 DISCONNECT's session expiry).
    pub fn set_expiry(&mut self, client: &Arc<str>, ends: Expiry) {
        if let Some(s) = self.sessions.get_mut(client) {
            s.clean = ends.at_close;
            s.expiry = ends.after;
        }
    }

    fn discard(&mut self, client: &Arc<str>) {
        if let Some(session) = self.sessions.remove(client) {
            for filter in session.subscriptions.keys() {
                Self::unindex(&mut self.filters, &mut self.shared, filter, client);
            }
        }
    }

    /// Adds or replaces a subscription; true if it replaced one.
    pub fn subscribe(&mut self, client: &Arc<str>, filter: &str, options: SubOptions) -> bool {
        let Some(session) = self.sessions.get_mut(client) else { return false };
        let existed = session.subscriptions.insert(filter.to_string(), options).is_some();
        match shared_parts(filter) {
            Some((group, inner)) => {
                let pos = self.shared.iter().position(|g| g.group == group && g.filter == inner);
                let g = match pos {
                    Some(i) => &mut self.shared[i],
                    None => {
                        self.shared.push(SharedGroup {
                            group: group.to_string(),
                            filter: inner.to_string(),
                            members: Vec::new(),
                            next: 0,
                        });
                        let last = self.shared.len() - 1;
                        &mut self.shared[last]
                    }
                };
                match g.members.iter_mut().find(|(c, _)| c == client) {
                    Some((_, o)) => *o = options,
                    None => g.members.push((client.clone(), options)),
                }
            }
            None => self.filters.insert(filter, client, options),
        }
        existed
    }

    /// Removes a subscription; false if there was none.
    pub fn unsubscribe(&mut self, client: &Arc<str>, filter: &str) -> bool {
        let Some(session) = self.sessions.get_mut(client) else { return false };
        if session.subscriptions.remove(filter).is_some() {
            Self::unindex(&mut self.filters, &mut self.shared, filter, client);
            return true;
        }
        false
    }

    pub fn is_subscribed(&self, client: &Arc<str>, filter: &str) -> bool {
        self.sessions.get(client).is_some_and(|s| s.subscriptions.contains_key(filter))
    }

    pub fn subscription_count(&self, client: &Arc<str>) -> usize {
        self.sessions.get(client).map_or(0, |s| s.subscriptions.len())
    }

    fn unindex(
        filters: &mut topic::FilterIndex<SubOptions>,
        shared: &mut Vec<SharedGroup>,
        filter: &str,
        client: &Arc<str>,
    ) {
        match shared_parts(filter) {
            Some((group, inner)) => {
                if let Some(i) = shared.iter().position(|g| g.group == group && g.filter == inner) {
                    shared[i].members.retain(|(c, _)| c != client);
                    if shared[i].members.is_empty() {
                        shared.remove(i);
                    }
                }
            }
            None => filters.remove(filter, client),
        }
    }

    /// Routes one PUBLISH: stores or deletes the retained copy, then hands a delivery to
    /// every subscribed client (one per client, at the highest QoS of its matching
    /// subscriptions, capped at the publish QoS, with every matching subscription
    /// identifier), and to one member of each matching shared group. `origin` is the
    /// publishing client (no-local subscriptions skip it). Offline persistent clients keep
    /// QoS 1/2 messages. Returns how many clients it went to.
    pub fn publish(
        &mut self,
        profile: &Profile,
        msg: Arc<Message>,
        qos: QoS,
        retain: bool,
        origin: Option<&Arc<str>>,
    ) -> usize {
        if retain {
            if msg.payload.is_empty() {
                if self.retained.remove(&msg.topic).is_some() {
                    self.retained_topics.remove(&msg.topic);
                }
            } else if self.retained.insert(msg.topic.clone(), Retained { msg: msg.clone(), qos }).is_none() {
                self.retained_topics.insert(&msg.topic);
            }
        }
        // One delivery per client, in the order the index finds them.
        let mut targets: Vec<(Arc<str>, SubOptions, Vec<u32>, bool)> = Vec::new();
        let mut seen: HashMap<Arc<str>, usize> = HashMap::new();
        self.filters.matching(&msg.topic, profile.hash_matches_parent, |client, o| {
            if o.no_local && origin == Some(client) {
                return;
            }
            let i = match seen.get(client) {
                Some(&i) => {
                    targets[i].1.qos = max_qos(targets[i].1.qos, o.qos);
                    i
                }
                None => {
                    seen.insert(client.clone(), targets.len());
                    targets.push((client.clone(), o, Vec::new(), false));
                    targets.len() - 1
                }
            };
            if o.id != 0 {
                targets[i].2.push(o.id);
            }
            targets[i].3 |= o.retain_as_published;
        });
        let mut count = targets.len();
        for (client, o, ids, rap) in targets {
            let mut d = Delivery::new(msg.clone(), min_qos(qos, o.qos), retain && rap);
            d.sub_ids = ids;
            self.deliver(&client, d);
        }
        // Shared groups: the next member in turn, preferring one that is connected.
        let mut picked: Vec<(Arc<str>, SubOptions)> = Vec::new();
        for g in &mut self.shared {
            if g.members.is_empty() || !topic::matches(&g.filter, &msg.topic, profile.hash_matches_parent) {
                continue;
            }
            let n = g.members.len();
            let online = |c: &Arc<str>| self.sessions.get(c).is_some_and(|s| s.attached.is_some());
            let pick = (0..n).map(|k| (g.next + k) % n).find(|&i| online(&g.members[i].0)).unwrap_or(g.next % n);
            g.next = (pick + 1) % n;
            picked.push(g.members[pick].clone());
        }
        count += picked.len();
        for (client, o) in picked {
            let mut d = Delivery::new(msg.clone(), min_qos(qos, o.qos), retain && o.retain_as_published);
            if o.id != 0 {
                d.sub_ids.push(o.id);
            }
            self.deliver(&client, d);
        }
        count
    }

    /// Drops the retained copy of `msg` once its Message Expiry Interval has passed (MQTT
    /// 5 §3.3.2.3.3: an expired retained message is no longer stored); a newer retained
    /// message on the topic stays. True if it was dropped.
    pub fn expire_retained(&mut self, msg: &Arc<Message>) -> bool {
        let current = self.retained.get(&msg.topic).is_some_and(|r| Arc::ptr_eq(&r.msg, msg));
        if current {
            self.retained.remove(&msg.topic);
            self.retained_topics.remove(&msg.topic);
        }
        current
    }

    /// Hands a delivery to the client's connection, or keeps it for an offline persistent
    /// session (QoS 1/2 only, at most [`MAX_QUEUED`]).
    pub fn deliver(&mut self, client: &Arc<str>, d: Delivery) {
        let Some(session) = self.sessions.get_mut(client) else { return };
        match &session.attached {
            Some(a) => a.mailbox.push(ToConn::Deliver(d)),
            None if !session.clean && d.qos != QoS::AtMostOnce && session.queue.len() < MAX_QUEUED => {
                session.queue.push_back(d)
            }
            None => {}
        }
    }

    /// Retained messages a new subscription to `filter` receives.
    pub fn retained_for(&self, profile: &Profile, filter: &str) -> Vec<(Arc<Message>, QoS)> {
        if !topic::is_wildcard(filter) {
            return self.retained.get(filter).map(|r| (r.msg.clone(), r.qos)).into_iter().collect();
        }
        if !profile.retained_to_wildcards {
            return Vec::new();
        }
        let mut found: Vec<_> = self
            .retained_topics
            .matching(filter, profile.hash_matches_parent)
            .iter()
            .filter_map(|t| self.retained.get(t))
            .map(|r| (r.msg.clone(), r.qos))
            .collect();
        found.sort_by(|a, b| a.0.topic.cmp(&b.0.topic));
        found
    }

    /// Every attached connection's mailbox (for a broker restart).
    pub fn attached(&self) -> Vec<(Arc<str>, Arc<Mailbox>)> {
        self.sessions.iter().filter_map(|(c, s)| s.attached.as_ref().map(|a| (c.clone(), a.mailbox.clone()))).collect()
    }
}

/// When a session ends (MQTT 5 §3.1.2.11.2; 3.1.1's clean session is `at_close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// The session ends with its connection.
    pub at_close: bool,
    /// Otherwise it is kept this long after (`None`: no limit).
    pub after: Option<Duration>,
}

/// What a closing connection leaves for its persistent session.
#[derive(Default)]
pub struct Leftovers {
    /// Sent, not acknowledged (redelivered first, with their packet ids).
    pub unacked: VecDeque<Delivery>,
    /// Not sent yet (the in-flight window was full).
    pub waiting: VecDeque<Delivery>,
    pub next_pkid: u16,
    pub qos2_in: HashMap<u16, (Arc<Message>, bool)>,
}

pub fn max_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) {
        a
    } else {
        b
    }
}

pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// A shared lock that survives a panicking holder (the state stays usable).
pub fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: u64) -> Attached {
        Attached { conn: n, mailbox: Arc::new(Mailbox::default()) }
    }

    /// A clean session's client reconnects (persistent) before its old connection's
    /// detach ran: the old session ended with that connection, so nothing is present.
    #[test]
    fn a_clean_session_taken_over_before_its_detach_is_not_present() {
        let mut state = State::default();
        let client: Arc<str> = Arc::from("c");
        let now = Instant::now();
        let clean = Expiry { at_close: true, after: None };
        let kept = Expiry { at_close: false, after: None };
        assert!(!state.attach(&client, true, clean, conn(1), now, None).session_present);
        let again = state.attach(&client, false, kept, conn(2), now, None);
        assert!(again.taken_over);
        assert!(!again.session_present, "the clean session ended with its connection");
        // A persistent one is still resumed.
        let third = state.attach(&client, false, kept, conn(3), now, None);
        assert!(third.session_present);
    }

    /// Where sessions do not cross protocols (AWS), the other protocol's CONNECT starts a
    /// new session; where they do (Mosquitto), it resumes it.
    #[test]
    fn a_session_is_resumed_by_its_own_protocol_only_where_the_profile_says() {
        let mut state = State::default();
        let client: Arc<str> = Arc::from("c");
        let now = Instant::now();
        let kept = Expiry { at_close: false, after: None };
        state.attach(&client, false, kept, conn(1), now, Some(true));
        state.detach(&client, 1, Leftovers::default(), now);
        assert!(!state.attach(&client, false, kept, conn(2), now, Some(false)).session_present);
        state.detach(&client, 2, Leftovers::default(), now);
        assert!(state.attach(&client, false, kept, conn(3), now, Some(false)).session_present);
        state.detach(&client, 3, Leftovers::default(), now);
        assert!(state.attach(&client, false, kept, conn(4), now, None).session_present);
    }
}
