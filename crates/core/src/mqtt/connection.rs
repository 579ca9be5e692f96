//! The MQTT driver of the firmware (`xdrv_02_9_mqtt.ino`, spec §2): the once-a-second
//! `MqttCheck`, `MqttReconnect` with its retry counter and linear backoff,
//! `MqttDisconnected`, `MqttConnected` (LWT, the empty POWER, subscriptions, INFO1..3)
//! and `MqttDataHandler`, which hands commands to the same dispatcher as the console.
//!
//! The firmware connects synchronously: the main loop stands still until the CONNACK
//! or a timeout. Here the driver opens the link while the device keeps running, and
//! `MqttCheck` skips its turn while a connect is under way, which gives the same
//! retry arithmetic.

use alloc::format;
use alloc::string::String;

use super::client::{Client, ClientOutput, MAX_PACKET_SIZE, MQTT_CONNECT_FAILED};
use super::packet::{Connect, Will};
use super::tls::{self, TlsRequest, Validation};
use crate::console::LogLevel;
use crate::device::{Device, Output, TlsLink};
use crate::json::escape;
use crate::setoption as so;
use crate::time::Instant;
use crate::topic::{Prefix, TopicKind, TOPSZ};

/// `MQTT_LWT_ONLINE`, `MQTT_LWT_OFFLINE`.
pub const LWT_ONLINE: &str = "Online";
pub const LWT_OFFLINE: &str = "Offline";

/// The firmware's `struct MQTT`, plus the client it drives.
#[derive(Debug)]
pub(crate) struct Mqtt {
    pub connect_count: u16,
    pub retry_counter: u16,
    retry_counter_delay: u16,
    initial_connection_state: u8,
    allowed: bool,
    /// SetOption103 as read at boot.
    pub tls: bool,
    /// MqttHost is an AWS IoT endpoint (read at boot).
    pub aws_iot: bool,
    attempt_at: Instant,
    /// The link of this attempt failed before MQTT and said so (`TLS connection error`
    /// logged, or a DNS failure, which logs none).
    link_failure_logged: bool,
    /// [`Device::drain_client`] is running.
    draining: bool,
    pub client: Client,
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            connect_count: 0,
            retry_counter: 1,
            retry_counter_delay: 1,
            initial_connection_state: 2,
            allowed: false,
            tls: false,
            aws_iot: false,
            attempt_at: Instant::default(),
            link_failure_logged: false,
            draining: false,
            client: Client::default(),
        }
    }
}

/// Where to connect, as the firmware would; the driver opens the link and reports back
/// with [`Device::handle_link_up`] or [`Device::handle_link_failed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// MqttHost as configured (a name or an address).
    pub host: String,
    pub port: u16,
    /// `None` for plain TCP.
    pub tls: Option<TlsRequest>,
    /// How long opening the link may take: `MqttWifiTimeout` for plain TCP; the TLS
    /// client's own 5 s otherwise.
    pub timeout_ms: u32,
}

/// Why the driver could not open a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFailure {
    /// The host name did not resolve (rc -5).
    Dns,
    /// TCP did not connect (rc -2; TLS error -1002 with TLS).
    Tcp,
    /// The TLS handshake failed with this code (spec §7 numbering), rc -2.
    Tls(i32),
}

/// `MQTT_DNS_FAILED`-style rc of the spec's §2 table.
const RC_DNS: i8 = -5;
/// `WiFiClientSecure_light`'s connect and handshake timeout.
const TLS_TIMEOUT_MS: u32 = 5_000;

impl Device {
    /// `MqttInit()`: TLS and the AWS IoT defaults, decided once at boot.
    pub(crate) fn mqtt_init(&mut self) {
        // FUNC_MQTT_INIT -> TasDiscoverInit: discovery on again, due in 10 s.
        self.settings.set_option(so::HASS_DISCOVERY, 0);
        self.rediscover(crate::discovery::FIRST_DELAY_S);
        self.mqtt.tls = self.settings.flag(so::MQTT_TLS);
        if tls::is_aws_iot_host(&self.settings.mqtt_host) {
            self.settings.set_option(so::MQTT_NO_RETAIN, 1);
            self.mqtt.aws_iot = true;
        }
        self.mqtt.client.set_timing(self.settings.mqtt_keepalive, self.settings.mqtt_socket_timeout);
    }

    /// `MqttIsConnected()`.
    /// `Mqtt.initial_connection_state`: 0 once MqttCheck no longer needs to run.
    pub(crate) fn initial_connection_state(&self) -> u8 {
        self.mqtt.initial_connection_state
    }

    pub(crate) fn mqtt_is_connected(&self) -> bool {
        self.mqtt.client.connected()
    }

    /// `MqttCheck()`: once a second while the network is up.
    pub(crate) fn mqtt_check(&mut self) {
        if self.settings.flag(so::MQTT_ENABLED) {
            if !self.mqtt_is_connected() {
                if self.mqtt.client.connecting() {
                    return;
                }
                if self.mqtt.retry_counter == 0 {
                    self.mqtt_reconnect();
                } else {
                    self.mqtt.retry_counter -= 1;
                }
            }
        } else if self.mqtt.initial_connection_state != 0 {
            self.mqtt_reconnect();
        }
    }

    /// `MqttReconnect()`.
    fn mqtt_reconnect(&mut self) {
        let s = &self.settings;
        self.mqtt.allowed =
            s.flag(so::MQTT_ENABLED) && self.restart_flag == 0 && !s.mqtt_host.is_empty() && s.mqtt_port != 0;
        if !self.mqtt.allowed {
            self.mqtt_connected();
            return;
        }
        self.mqtt.retry_counter = self.settings.mqtt_retry.saturating_mul(self.mqtt.retry_counter_delay);
        self.log(LogLevel::Info, String::from("MQT: Attempting connection..."));
        if self.mqtt.initial_connection_state == 2 {
            self.mqtt.initial_connection_state = 1;
        }
        if self.mqtt.client.connected() {
            self.mqtt.client.disconnect();
        }
        let s = &self.settings;
        let will_topic = self.own_topic(Prefix::Tele, "LWT");
        let connect = Connect {
            client_id: self.mqtt_client.clone(),
            clean_session: !s.flag(so::MQTT_PERSISTENT),
            keepalive: s.mqtt_keepalive,
            username: (!s.mqtt_user.is_empty()).then(|| s.mqtt_user.clone()),
            password: (!s.mqtt_pwd.is_empty()).then(|| s.mqtt_pwd.as_bytes().to_vec()),
            will: Some(Will {
                topic: will_topic,
                payload: LWT_OFFLINE.into(),
                qos: 1,
                retain: !s.flag(so::MQTT_NO_RETAIN),
            }),
        };
        let tls = self.mqtt.tls.then(|| TlsRequest {
            server_name: s.mqtt_host.clone(),
            alpn: (s.mqtt_port == 443 && self.mqtt.aws_iot).then_some(tls::ALPN_MQTT),
            validation: if s.flag(so::TLS_USE_FINGERPRINT) {
                Validation::Fingerprints(s.mqtt_fingerprint)
            } else {
                Validation::TrustAnchors
            },
        });
        let timeout_ms = if tls.is_some() { TLS_TIMEOUT_MS } else { u32::from(s.mqtt_wifi_timeout) * 100 };
        let request = ConnectRequest { host: s.mqtt_host.clone(), port: s.mqtt_port, tls, timeout_ms };
        self.drain_client();
        self.mqtt.attempt_at = self.now;
        let tls_fits = request.tls.is_none() || self.check_heap();
        self.mqtt.client.start_connect(connect);
        if tls_fits {
            if request.tls.is_some() {
                self.tls_link = TlsLink::Handshake;
            }
            self.push_output(Output::Connect(request));
        } else {
            let now = self.now;
            self.handle_link_failed(LinkFailure::Tls(tls::error::OUT_OF_MEMORY), now);
        }
    }

    /// Before a TLS handshake: logs the low-memory warning below 15 KB free, and says
    /// whether the handshake's buffers and secondary stack fit at all.
    fn check_heap(&mut self) -> bool {
        let free = self.free_heap();
        if free < crate::hardware::LOW_HEAP_BYTES {
            self.log(LogLevel::Info, format!("MQT: Low memory, free heap {free} bytes before TLS handshake"));
        }
        let h = self.hw.heap;
        free >= h.tls_session + h.tls_handshake
    }

    /// `MqttDisconnected(state)`.
    fn mqtt_disconnected(&mut self, state: i8) {
        let retry = self.settings.mqtt_retry;
        self.mqtt.retry_counter = retry.saturating_mul(self.mqtt.retry_counter_delay);
        if u32::from(retry) * u32::from(self.mqtt.retry_counter_delay) < 120 {
            self.mqtt.retry_counter_delay += 1;
        }
        self.mqtt.client.disconnect();
        self.drain_client();
        self.rules_flag |= crate::rules::flag::MQTT_DISCONNECTED;
        let text = format!(
            "MQT: Connect failed to {}:{}, rc {}. Retry in {} sec",
            self.settings.mqtt_host, self.settings.mqtt_port, state, self.mqtt.retry_counter
        );
        self.log(LogLevel::Info, text);
    }

    /// `MqttConnected()`.
    fn mqtt_connected(&mut self) {
        if self.mqtt.allowed {
            self.log(LogLevel::Info, String::from("MQT: Connected"));
            self.mqtt.retry_counter = 0;
            self.mqtt.retry_counter_delay = 1;
            self.mqtt.connect_count = self.mqtt.connect_count.wrapping_add(1);

            let lwt = self.own_topic(Prefix::Tele, "LWT");
            self.publish(lwt, String::from(LWT_ONLINE), true);
            if !self.settings.flag(so::ONLY_JSON_MESSAGE) {
                self.publish_prefix_topic(Prefix::Cmnd, false, "POWER", String::new(), false);
            }
            let own = self.own_topic(Prefix::Cmnd, "#");
            self.mqtt_subscribe(&own);
            // FUNC_MQTT_SUBSCRIBE: discovery again a second after a reconnect.
            if self.mqtt.initial_connection_state == 0 {
                self.rediscover(crate::discovery::AGAIN_DELAY_S);
            }
            if self.settings.mqtt_fulltopic.contains("%topic%") {
                for i in 0..4 {
                    if !self.settings.mqtt_grp_topic[i].is_empty() {
                        let group = self.group_topic(i, "#");
                        self.mqtt_subscribe(&group);
                    }
                }
                let fallback = self.topic_context().topic(Prefix::Cmnd, TopicKind::Fallback, "#");
                self.mqtt_subscribe(&fallback);
            }
        }
        if self.mqtt.initial_connection_state != 0 {
            self.publish_info();
            for device in 1..=u32::from(self.hw.relays) {
                self.publish_power_state(device);
            }
            if self.settings.tele_period != 0 {
                self.tele_period = u32::from(self.settings.tele_period).saturating_sub(5);
            }
            self.rules_flag |= crate::rules::flag::SYSTEM_BOOT;
        }
        self.mqtt.initial_connection_state = 0;
        if self.settings.flag(so::MQTT_ENABLED) {
            self.rules_flag |= crate::rules::flag::MQTT_CONNECTED;
        }
    }

    /// INFO1, INFO2 and INFO3 of the first connection after boot.
    fn publish_info(&mut self) {
        let retain = self.settings.flag(so::MQTT_INFO_RETAIN);
        let fallback = self.topic_context().topic(Prefix::Cmnd, TopicKind::Fallback, "");
        let group = self.group_topic(0, "");
        let info1 = format!(
            "{{\"Info1\":{{\"Module\":\"{}\",\"Version\":\"{}{}\",\"FallbackTopic\":\"{}\",\"GroupTopic\":\"{}\"}}}}",
            escape(&self.hw.module),
            crate::device::VERSION,
            crate::device::IMAGE_NAME,
            escape(&fallback),
            escape(&group)
        );
        self.publish_prefix_topic_rules(Prefix::Tele, "INFO1", info1, retain, false);
        if self.settings.webserver != 0 {
            let mode = if self.settings.webserver == 2 { "Admin" } else { "User" };
            let info2 = format!(
                "{{\"Info2\":{{\"WebServerMode\":\"{mode}\",\"Hostname\":\"{}\",\"IPAddress\":\"{}\"}}}}",
                escape(&self.hostname),
                self.ip_address()
            );
            self.publish_prefix_topic_rules(Prefix::Tele, "INFO2", info2, retain, false);
        }
        let info3 = format!(
            "{{\"Info3\":{{\"RestartReason\":\"{}\",\"BootCount\":{}}}}}",
            self.restart_reason(),
            self.settings.bootcount
        );
        self.publish_prefix_topic_rules(Prefix::Tele, "INFO3", info3, retain, false);
    }

    /// `GetGroupTopic_P`: SetOption75 0 puts the group where `%topic%` is, 1 gives the
    /// fixed `cmnd/<group>`.
    pub(crate) fn group_topic(&self, index: usize, subtopic: &str) -> String {
        let group = &self.settings.mqtt_grp_topic[index];
        let kind =
            if self.settings.flag(so::GROUPTOPIC_MODE) { TopicKind::Fixed(group) } else { TopicKind::Full(group) };
        self.topic_context().topic(Prefix::Cmnd, kind, subtopic)
    }

    /// `MqttSubscribe()`.
    fn mqtt_subscribe(&mut self, filter: &str) {
        self.log(LogLevel::Debug, format!("MQT: Subscribe to {filter}"));
        let now = self.now;
        self.mqtt.client.subscribe(filter, now);
        self.drain_client();
    }

    /// `MqttPublishLib()`: true when the message went out on the link.
    pub(crate) fn mqtt_publish_lib(&mut self, topic: &str, payload: &str, retain: bool) -> bool {
        let now = self.now;
        let sent = self.mqtt.client.publish(topic, payload.as_bytes(), retain, now);
        self.drain_client();
        sent
    }

    /// `MqttDataHandler()`.
    fn mqtt_data_handler(&mut self, topic: &str, payload: &[u8]) {
        if payload.len() >= MAX_PACKET_SIZE {
            return;
        }
        // The payload is used as a C string.
        let end = payload.iter().position(|&b| b == 0).unwrap_or(payload.len());
        let data = String::from_utf8_lossy(&payload[..end]).into_owned();
        let topic = crate::topic::truncate(topic, TOPSZ - 1);
        let topic = String::from(topic);
        self.command_handler(&topic, &data);
    }

    /// Turns what the client asks for into outputs and firmware reactions, in order.
    /// Handlers that publish call this again; the outer call does the work.
    pub(crate) fn drain_client(&mut self) {
        if self.mqtt.draining {
            return;
        }
        self.mqtt.draining = true;
        while let Some(out) = self.mqtt.client.poll() {
            match out {
                ClientOutput::Transmit(bytes) => self.push_output(Output::Transmit(bytes)),
                ClientOutput::Close => {
                    self.tls_link = TlsLink::None;
                    self.push_output(Output::Close)
                }
                ClientOutput::Connected => {
                    if self.mqtt.tls {
                        let ms = self.now.millis_since(self.mqtt.attempt_at);
                        let text = if self.hw.chip.is_esp32() {
                            format!("MQT: TLS connected in {ms} ms, stack low mark {}", tls::STACK_LOW_MARK)
                        } else {
                            format!("MQT: TLS connected in {ms} ms, max ThunkStack used {}", tls::THUNK_STACK_USED)
                        };
                        self.log(LogLevel::Info, text);
                        self.log(LogLevel::Info, String::from("MQT: MFLN not supported by TLS server"));
                    }
                    self.mqtt_connected();
                }
                ClientOutput::ConnectFailed(state) => {
                    // MqttReconnect: with TLS every failed connect logs the TLS client's
                    // last error first; 0 when the handshake worked and MQTT failed.
                    if self.mqtt.tls && !core::mem::take(&mut self.mqtt.link_failure_logged) {
                        self.log(LogLevel::Info, String::from("MQT: TLS connection error: 0"));
                    }
                    self.mqtt.link_failure_logged = false;
                    self.mqtt_disconnected(state)
                }
                // MqttCheck notices the lost link within a second and reconnects.
                ClientOutput::Lost(_) => {}
                ClientOutput::Message { topic, payload, puback } => {
                    self.mqtt_data_handler(&topic, &payload);
                    if let Some(id) = puback {
                        let now = self.now;
                        self.mqtt.client.puback(id, now);
                    }
                }
            }
        }
        self.mqtt.draining = false;
    }

    // ---- driver inputs -----------------------------------------------------------------

    /// The link asked for by [`Output::Connect`] is open (TCP connected, TLS handshake
    /// done): the client sends CONNECT.
    pub fn handle_link_up(&mut self, now: Instant) {
        self.catch_up(now);
        if self.tls_link == TlsLink::Handshake {
            self.tls_link = TlsLink::Up;
        }
        self.mqtt.client.link_up(now);
        self.drain_client();
    }

    /// The link could not be opened.
    pub fn handle_link_failed(&mut self, failure: LinkFailure, now: Instant) {
        self.catch_up(now);
        if !self.mqtt.client.connecting() {
            return;
        }
        let rc = match failure {
            LinkFailure::Dns => RC_DNS,
            LinkFailure::Tcp | LinkFailure::Tls(_) => MQTT_CONNECT_FAILED,
        };
        if self.mqtt.tls {
            match failure {
                LinkFailure::Tls(code) => self.log(LogLevel::Info, format!("MQT: TLS connection error: {code}")),
                LinkFailure::Tcp => {
                    self.log(LogLevel::Info, format!("MQT: TLS connection error: {}", tls::error::CANT_CONNECT))
                }
                LinkFailure::Dns => {}
            }
        }
        self.mqtt.link_failure_logged = true;
        self.tls_link = TlsLink::None;
        self.mqtt.client.link_failed(rc);
        self.drain_client();
    }

    /// Bytes arrived on the link.
    pub fn handle_received(&mut self, bytes: &[u8], now: Instant) {
        self.catch_up(now);
        if self.is_stopped() {
            return;
        }
        self.mqtt.client.receive(bytes);
        while self.mqtt.client.process(now) {
            self.drain_client();
        }
    }

    /// The link closed (peer close or I/O error).
    pub fn handle_link_closed(&mut self, now: Instant) {
        self.catch_up(now);
        self.tls_link = TlsLink::None;
        self.mqtt.client.link_closed();
        self.drain_client();
    }
}
