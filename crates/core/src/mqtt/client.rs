//! The device's MQTT 3.1.1 client, as Tasmota's PubSubClient behaves: one connection
//! over a link the driver holds, a CONNACK wait of `MqttTimeout` seconds, keepalive
//! pings, QoS 0 publishes out, QoS 0 and 1 in, and a 1200-byte packet limit.
//!
//! `state` follows PubSubClient's `state()` codes (spec §2): -4 timeout, -3 connection
//! lost, -2 connect failed, -1 disconnected, 0 connected, 1..5 a CONNACK's refusal.
//! The client never reads a clock or a socket; [`Client::poll`] hands out what to do.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use super::packet::{self, Connect, Packet, Publish};
use crate::time::Instant;

/// `MQTT_MAX_PACKET_SIZE` in Tasmota (v8.1.0.8 and later).
pub const MAX_PACKET_SIZE: usize = 1200;

pub const MQTT_CONNECTION_TIMEOUT: i8 = -4;
pub const MQTT_CONNECTION_LOST: i8 = -3;
pub const MQTT_CONNECT_FAILED: i8 = -2;
pub const MQTT_DISCONNECTED: i8 = -1;
pub const MQTT_CONNECTED: i8 = 0;

/// What the client asks of the device and its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutput {
    /// Bytes to write on the link.
    Transmit(Vec<u8>),
    /// Close the link (TCP close, no DISCONNECT).
    Close,
    /// A CONNACK accepted the connection.
    Connected,
    /// The connection attempt failed; `state` says why.
    ConnectFailed(i8),
    /// An established connection ended; `state` says why.
    Lost(i8),
    /// A PUBLISH arrived; a QoS 1 one is acknowledged with [`Client::puback`] once the
    /// device has handled it, as PubSubClient does after its callback.
    Message { topic: String, payload: Vec<u8>, puback: Option<u16> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// The driver is opening the link (TCP, TLS).
    Linking,
    /// CONNECT sent at `since`, waiting for CONNACK.
    AwaitConnack {
        since: Instant,
    },
    Connected,
}

/// PubSubClient.
#[derive(Debug)]
pub struct Client {
    phase: Phase,
    state: i8,
    keepalive_ms: u64,
    socket_timeout_ms: u64,
    last_in: Instant,
    last_out: Instant,
    ping_outstanding: bool,
    next_msg_id: u16,
    connect: Option<Connect>,
    rx: Vec<u8>,
    out: VecDeque<ClientOutput>,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            phase: Phase::Idle,
            state: MQTT_DISCONNECTED,
            keepalive_ms: 30_000,
            socket_timeout_ms: 4_000,
            last_in: Instant::default(),
            last_out: Instant::default(),
            ping_outstanding: false,
            next_msg_id: 0,
            connect: None,
            rx: Vec::new(),
            out: VecDeque::new(),
        }
    }
}

impl Client {
    /// `state()`.
    pub fn state(&self) -> i8 {
        self.state
    }

    /// `connected()`: a CONNACK accepted the link and it is still up.
    pub fn connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// A connect is under way (link opening or CONNACK awaited).
    pub fn connecting(&self) -> bool {
        matches!(self.phase, Phase::Linking | Phase::AwaitConnack { .. })
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    /// Gives back the memory of the output queue and the receive buffer while they are
    /// empty (the device calls it once its driver has taken every output).
    pub fn release_idle(&mut self) {
        if self.out.is_empty() && self.out.capacity() != 0 {
            self.out = VecDeque::new();
        }
        if self.rx.is_empty() && self.rx.capacity() != 0 {
            self.rx = Vec::new();
        }
    }

    /// `setKeepAlive`, `setSocketTimeout` (both in seconds).
    pub fn set_timing(&mut self, keepalive_s: u16, socket_timeout_s: u16) {
        self.keepalive_ms = u64::from(keepalive_s) * 1000;
        self.socket_timeout_ms = u64::from(socket_timeout_s) * 1000;
    }

    /// `disconnect()` without a DISCONNECT packet: closes whatever link there is.
    pub fn disconnect(&mut self) {
        if self.phase != Phase::Idle {
            self.out.push_back(ClientOutput::Close);
        }
        self.phase = Phase::Idle;
        self.state = MQTT_DISCONNECTED;
        self.connect = None;
        self.rx.clear();
    }

    /// `connect(...)`, first half: the driver opens the link; CONNECT goes out once it
    /// is up.
    pub fn start_connect(&mut self, connect: Connect) {
        self.rx.clear();
        self.connect = Some(connect);
        self.phase = Phase::Linking;
    }

    /// The driver opened the link: send CONNECT and wait for CONNACK.
    pub fn link_up(&mut self, now: Instant) {
        if self.phase != Phase::Linking {
            return;
        }
        let Some(connect) = self.connect.take() else { return };
        self.out.push_back(ClientOutput::Transmit(Packet::Connect(connect).encode()));
        self.last_in = now;
        self.last_out = now;
        self.phase = Phase::AwaitConnack { since: now };
    }

    /// The driver could not open the link (DNS, TCP or TLS); `state` is the rc the
    /// failure reports.
    pub fn link_failed(&mut self, state: i8) {
        if self.phase != Phase::Linking {
            return;
        }
        self.connect = None;
        self.phase = Phase::Idle;
        self.state = state;
        self.out.push_back(ClientOutput::ConnectFailed(self.state));
    }

    /// The link closed under us (peer close, I/O error).
    pub fn link_closed(&mut self) {
        match self.phase {
            // PubSubClient keeps polling `available()` until the socket timeout.
            Phase::AwaitConnack { .. } | Phase::Idle => {}
            Phase::Linking => self.link_failed(MQTT_CONNECT_FAILED),
            Phase::Connected => self.lose(MQTT_CONNECTION_LOST),
        }
    }

    fn lose(&mut self, state: i8) {
        self.out.push_back(ClientOutput::Close);
        self.phase = Phase::Idle;
        self.state = state;
        self.rx.clear();
        self.out.push_back(ClientOutput::Lost(state));
    }

    /// The connect failed; `None` keeps the state as it was (PubSubClient leaves
    /// `_state` alone when the CONNACK is malformed).
    fn fail_connect(&mut self, state: Option<i8>) {
        self.out.push_back(ClientOutput::Close);
        self.phase = Phase::Idle;
        if let Some(state) = state {
            self.state = state;
        }
        self.rx.clear();
        self.out.push_back(ClientOutput::ConnectFailed(self.state));
    }

    /// Bytes read from the link; [`Client::process`] handles them a packet at a time.
    pub fn receive(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::AwaitConnack { .. } | Phase::Connected) {
            self.rx.extend_from_slice(bytes);
        }
    }

    /// Handles the next whole packet received; false when there is none (yet).
    pub fn process(&mut self, now: Instant) -> bool {
        if !matches!(self.phase, Phase::AwaitConnack { .. } | Phase::Connected) {
            return false;
        }
        match packet::decode(&self.rx, MAX_PACKET_SIZE) {
            Ok(None) => false,
            Ok(Some((packet, used))) => {
                let raw_connack = used == 4 && self.rx[0] == 0x20 && self.rx[1] == 2;
                self.rx.drain(..used);
                self.last_in = now;
                self.handle_packet(packet, raw_connack, now);
                true
            }
            Err(_) => {
                match self.phase {
                    // Not `20 02 xx rc`: the connect fails with the state as it was.
                    Phase::AwaitConnack { .. } => self.fail_connect(None),
                    _ => self.lose(MQTT_CONNECTION_LOST),
                }
                true
            }
        }
    }

    /// PUBACK for a QoS 1 message the device has handled.
    pub fn puback(&mut self, packet_id: u16, now: Instant) {
        if self.connected() {
            self.send(Packet::Puback(packet_id), now);
        }
    }

    fn handle_packet(&mut self, packet: Packet, raw_connack: bool, now: Instant) {
        if let Phase::AwaitConnack { .. } = self.phase {
            match packet {
                Packet::Connack { return_code: 0, .. } if raw_connack => {
                    self.phase = Phase::Connected;
                    self.ping_outstanding = false;
                    self.state = MQTT_CONNECTED;
                    self.out.push_back(ClientOutput::Connected);
                }
                Packet::Connack { return_code, .. } if raw_connack => self.fail_connect(Some(return_code as i8)),
                _ => self.fail_connect(None),
            }
            return;
        }
        match packet {
            Packet::Publish(p) => match p.qos {
                0 | 1 => {
                    let puback = p.packet_id.filter(|_| p.qos == 1);
                    self.out.push_back(ClientOutput::Message { topic: p.topic, payload: p.payload, puback });
                }
                _ => self.lose(MQTT_CONNECTION_LOST),
            },
            Packet::Pingreq => self.send(Packet::Pingresp, now),
            Packet::Pingresp => self.ping_outstanding = false,
            _ => {}
        }
    }

    fn send(&mut self, packet: Packet, now: Instant) {
        self.out.push_back(ClientOutput::Transmit(packet.encode()));
        self.last_out = now;
    }

    fn msg_id(&mut self) -> u16 {
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        if self.next_msg_id == 0 {
            self.next_msg_id = 1;
        }
        self.next_msg_id
    }

    /// `publish()` at QoS 0; false when not connected or over the packet limit (the
    /// firmware then logs the message as `RSL:`).
    pub fn publish(&mut self, topic: &str, payload: &[u8], retain: bool, now: Instant) -> bool {
        if !self.connected() {
            return false;
        }
        let p = Publish {
            topic: String::from(topic),
            payload: payload.to_vec(),
            qos: 0,
            retain,
            dup: false,
            packet_id: None,
        };
        // PubSubClient's check reserves the largest fixed header (5 bytes).
        if 5 + 2 + topic.len() + payload.len() > MAX_PACKET_SIZE {
            return false;
        }
        let bytes = Packet::Publish(p).encode();
        self.out.push_back(ClientOutput::Transmit(bytes));
        self.last_out = now;
        true
    }

    /// `subscribe(topic, 0)`.
    pub fn subscribe(&mut self, filter: &str, now: Instant) -> bool {
        if !self.connected() {
            return false;
        }
        let packet_id = self.msg_id();
        self.send(Packet::Subscribe { packet_id, filters: alloc::vec![(String::from(filter), 0)] }, now);
        true
    }

    /// When [`Client::handle_timeout`] next has work: the CONNACK deadline or the
    /// keepalive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitConnack { since } => Some(since.plus_millis(self.socket_timeout_ms)),
            Phase::Connected if self.keepalive_ms > 0 => {
                Some(self.last_in.min(self.last_out).plus_millis(self.keepalive_ms + 1))
            }
            _ => None,
        }
    }

    /// `loop()`: the CONNACK timeout, keepalive pings and the ping timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitConnack { since } if now.millis_since(since) >= self.socket_timeout_ms => {
                self.fail_connect(Some(MQTT_CONNECTION_TIMEOUT));
            }
            Phase::Connected if self.keepalive_ms > 0 => {
                let idle_in = now.millis_since(self.last_in) > self.keepalive_ms;
                let idle_out = now.millis_since(self.last_out) > self.keepalive_ms;
                if idle_in || idle_out {
                    if self.ping_outstanding {
                        self.lose(MQTT_CONNECTION_TIMEOUT);
                    } else {
                        self.send(Packet::Pingreq, now);
                        self.last_in = now;
                        self.ping_outstanding = true;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_over_the_packet_limit_are_refused() {
        let mut c = Client::default();
        let t = Instant::from_millis(0);
        c.start_connect(Connect {
            client_id: "c".into(),
            clean_session: true,
            keepalive: 30,
            username: None,
            password: None,
            will: None,
        });
        c.link_up(t);
        c.receive(&[0x20, 2, 0, 0]);
        assert!(c.process(t));
        assert!(c.connected());
        while c.poll().is_some() {}
        // 5 (largest fixed header) + 2 + 1 topic + 1192 payload = 1200: allowed.
        assert!(c.publish("t", &[b'x'; 1192], false, t));
        assert!(!c.publish("t", &[b'x'; 1193], false, t));
        assert_eq!(c.poll().map(|o| matches!(o, ClientOutput::Transmit(b) if b.len() == 1198)), Some(true));
        assert_eq!(c.poll(), None);
    }
}
