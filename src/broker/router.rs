//! The broker's shared state: sessions (connected or kept for a persistent client),
//! the subscription index, and retained messages. Routing a PUBLISH happens here, under
//! one lock, and hands deliveries to each connection's [`Mailbox`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
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
}

impl Delivery {
    /// A first delivery (no packet id yet).
    pub fn new(msg: Arc<Message>, qos: QoS, retain: bool) -> Delivery {
        Delivery { msg, qos, retain, pkid: 0, dup: false, released: false }
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
    pub clean: bool,
    pub subscriptions: HashMap<String, QoS>,
    pub queue: VecDeque<Delivery>,
    /// Packet ids continue across reconnects of a persistent session.
    pub next_pkid: u16,
    /// Incoming QoS 2 messages received (PUBREC sent) and waiting for PUBREL.
    pub qos2_in: HashMap<u16, (Arc<Message>, bool)>,
    pub expires: Option<Instant>,
}

impl Session {
    fn new(clean: bool) -> Session {
        Session {
            attached: None,
            clean,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            next_pkid: 1,
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
    filters: topic::FilterIndex<QoS>,
    pub retained: HashMap<String, Retained>,
    /// The retained topics by level, for wildcard subscriptions.
    retained_topics: topic::TopicTree,
    pub last_connect: HashMap<Arc<str>, Instant>,
}

impl State {
    /// Attaches connection `conn` to the session of `client`, kicking the connection that
    /// held it (its will is published). `clean` discards any old session.
    pub fn attach(&mut self, client: &Arc<str>, clean: bool, conn: Attached, now: Instant) -> Attach {
        let mut present = false;
        let mut taken_over = false;
        if let Some(old) = self.sessions.get_mut(client) {
            if let Some(prev) = old.attached.take() {
                prev.mailbox.push(ToConn::Kick(Kick::TakenOver));
                taken_over = true;
            }
            let expired = old.expires.is_some_and(|e| e <= now);
            if clean || old.clean || expired {
                self.discard(client);
            } else {
                present = true;
            }
        }
        let session = self.sessions.entry(client.clone()).or_insert_with(|| Session::new(clean));
        session.clean = clean;
        session.expires = None;
        session.attached = Some(conn);
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
    pub fn detach(&mut self, profile: &Profile, client: &Arc<str>, conn: u64, left: Leftovers, now: Instant) {
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
                session.expires = profile.session_expiry.map(|d| now + d);
            }
            Some(other) if !session.clean => {
                for d in left.unacked.into_iter().chain(left.waiting) {
                    other.mailbox.push(ToConn::Deliver(d));
                }
            }
            _ => {}
        }
    }

    fn discard(&mut self, client: &Arc<str>) {
        if let Some(session) = self.sessions.remove(client) {
            for filter in session.subscriptions.keys() {
                self.unindex(filter, client);
            }
        }
    }

    /// Adds or replaces a subscription.
    pub fn subscribe(&mut self, client: &Arc<str>, filter: &str, qos: QoS) {
        let Some(session) = self.sessions.get_mut(client) else { return };
        session.subscriptions.insert(filter.to_string(), qos);
        self.filters.insert(filter, client, qos);
    }

    pub fn unsubscribe(&mut self, client: &Arc<str>, filter: &str) {
        let Some(session) = self.sessions.get_mut(client) else { return };
        if session.subscriptions.remove(filter).is_some() {
            self.unindex(filter, client);
        }
    }

    pub fn is_subscribed(&self, client: &Arc<str>, filter: &str) -> bool {
        self.sessions.get(client).is_some_and(|s| s.subscriptions.contains_key(filter))
    }

    pub fn subscription_count(&self, client: &Arc<str>) -> usize {
        self.sessions.get(client).map_or(0, |s| s.subscriptions.len())
    }

    fn unindex(&mut self, filter: &str, client: &Arc<str>) {
        self.filters.remove(filter, client);
    }

    /// Routes one PUBLISH: stores or deletes the retained copy, then hands a delivery to
    /// every subscribed client (one per client, at the highest QoS of its matching
    /// subscriptions, capped at the publish QoS). Offline persistent clients keep QoS 1/2
    /// messages.
    pub fn publish(&mut self, profile: &Profile, msg: Arc<Message>, qos: QoS, retain: bool) {
        if retain {
            if msg.payload.is_empty() {
                if self.retained.remove(&msg.topic).is_some() {
                    self.retained_topics.remove(&msg.topic);
                }
            } else {
                if self.retained.insert(msg.topic.clone(), Retained { msg: msg.clone(), qos }).is_none() {
                    self.retained_topics.insert(&msg.topic);
                }
            }
        }
        // One delivery per client, in the order the index finds them.
        let mut targets: Vec<(Arc<str>, QoS)> = Vec::new();
        let mut seen: HashMap<Arc<str>, usize> = HashMap::new();
        self.filters.matching(&msg.topic, profile.hash_matches_parent, |client, sub_qos| match seen.get(client) {
            Some(&i) => targets[i].1 = max_qos(targets[i].1, sub_qos),
            None => {
                seen.insert(client.clone(), targets.len());
                targets.push((client.clone(), sub_qos));
            }
        });
        for (client, sub_qos) in targets {
            self.deliver(&client, Delivery::new(msg.clone(), min_qos(qos, sub_qos), false));
        }
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
