//! Broker profiles: what Mosquitto does (`plain`) and what AWS IoT Core does (`aws-iot`,
//! spec/aws-iot.md §1, §2, §4, §8). A profile is data; the connection code asks it
//! questions and never branches on the profile's name.

use std::time::Duration;

/// Which broker to behave like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileName {
    /// Mosquitto with a password file.
    Plain,
    /// AWS IoT Core with the TasmotaAuth custom authorizer.
    AwsIot,
}

/// What happens to a PUBLISH (or Will) with RETAIN=1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainPolicy {
    /// Stored and delivered to later subscribers (Mosquitto; AWS with `iot:RetainPublish`).
    Allow,
    /// The connection is closed (AWS under TasmotaAuth's policy, which has no
    /// `iot:RetainPublish`; also AWS before Aug 2021 for everyone).
    Close,
}

/// AWS IoT's limits (spec/aws-iot.md §4), each switchable with `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest topic name or filter in bytes (AWS: 256); longer closes the connection.
    pub topic_bytes: Option<usize>,
    /// Most `/` in a topic, not counting a `$aws/rules/<rule>/` prefix (AWS: 7).
    pub topic_slashes: Option<usize>,
    /// Largest PUBLISH payload and CONNECT packet in bytes (AWS: 128 KiB); larger closes.
    pub payload_bytes: Option<usize>,
    /// Longest client id in bytes (AWS: 128); longer closes with no CONNACK.
    pub client_id_bytes: Option<usize>,
    /// Most topic filters in one SUBSCRIBE (AWS: 8); more closes the connection.
    pub filters_per_subscribe: Option<usize>,
    /// Most subscriptions per connection (AWS: 50); further filters get SUBACK 0x80.
    pub subscriptions: Option<usize>,
    /// Publishes per second per connection, in plus out (AWS: 100); excess is dropped.
    pub publishes_per_second: Option<u32>,
    /// CONNECTs per second per client id (AWS: 1); excess closes with no CONNACK.
    pub connects_per_second: Option<u32>,
    /// Keepalive clamp `(min, max)`; 0 is served as max (AWS: 30..1200).
    pub keepalive: Option<(u16, u16)>,
    /// Unacknowledged QoS 1/2 messages to one client (AWS: 100, Mosquitto: 20); more
    /// wait. Off still means at most 1024 (the linear scans stay short).
    pub inflight: Option<usize>,
    /// The account's persistent-session expiry, seconds: a 3.1.1 persistent session left
    /// alone this long is discarded, and an MQTT 5 Session Expiry Interval above it is
    /// served as this (sent back in CONNACK). AWS: "maximum of 7 days, with a default
    /// maximum of one hour. If the value you set exceeds the maximum of your account, AWS
    /// IoT Core will return the adjusted value in the CONNACK"
    /// (https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html#mqtt-persistent-sessions);
    /// so 3600 by default, settable up to [`SESSION_EXPIRY_MAX`] as an account can be.
    pub session_expiry: Option<u32>,
}

/// AWS IoT Core's largest persistent-session expiry an account can be given: 7 days.
pub const SESSION_EXPIRY_MAX: u32 = 7 * 24 * 3600;

impl Limits {
    /// No limits at all (Mosquitto's defaults, for what we model).
    pub const NONE: Limits = Limits {
        topic_bytes: None,
        topic_slashes: None,
        payload_bytes: None,
        client_id_bytes: None,
        filters_per_subscribe: None,
        subscriptions: None,
        publishes_per_second: None,
        connects_per_second: None,
        keepalive: None,
        inflight: None,
        session_expiry: None,
    };

    /// AWS IoT Core's documented limits.
    pub const AWS: Limits = Limits {
        topic_bytes: Some(256),
        topic_slashes: Some(7),
        payload_bytes: Some(128 * 1024),
        client_id_bytes: Some(128),
        filters_per_subscribe: Some(8),
        subscriptions: Some(50),
        publishes_per_second: Some(100),
        connects_per_second: Some(1),
        keepalive: Some((30, 1200)),
        inflight: Some(100),
        session_expiry: Some(3600),
    };

    /// Sets one limit by its CLI name (`topic-bytes=256`, `publishes-per-second=off`).
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (name, value) = spec.split_once('=').ok_or_else(|| format!("'{spec}': expected NAME=VALUE or NAME=off"))?;
        let num = |v: &str| -> Result<Option<u64>, String> {
            if v == "off" {
                Ok(None)
            } else {
                v.parse().map(Some).map_err(|_| format!("'{spec}': '{v}' is not a number or 'off'"))
            }
        };
        let n = if name == "keepalive" { None } else { num(value)? };
        let usize_of = |n: Option<u64>| n.map(|n| n as usize);
        match name {
            "topic-bytes" => self.topic_bytes = usize_of(n),
            "topic-slashes" => self.topic_slashes = usize_of(n),
            "payload-bytes" => self.payload_bytes = usize_of(n),
            "client-id-bytes" => self.client_id_bytes = usize_of(n),
            "filters-per-subscribe" => self.filters_per_subscribe = usize_of(n),
            "subscriptions" => self.subscriptions = usize_of(n),
            "publishes-per-second" => self.publishes_per_second = n.map(|n| n.min(u32::MAX as u64) as u32),
            "connects-per-second" => self.connects_per_second = n.map(|n| n.min(u32::MAX as u64) as u32),
            "inflight" => self.inflight = usize_of(n),
            "session-expiry" => {
                if n.is_some_and(|n| n > SESSION_EXPIRY_MAX as u64) {
                    return Err(format!(
                        "'{spec}': AWS IoT Core keeps a persistent session at most 7 days ({SESSION_EXPIRY_MAX} s)"
                    ));
                }
                self.session_expiry = n.map(|n| n as u32)
            }
            "keepalive" => {
                self.keepalive = match value {
                    "off" => None,
                    v => {
                        let (lo, hi) = v
                            .split_once("..")
                            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                            .ok_or_else(|| format!("'{spec}': keepalive takes MIN..MAX seconds or 'off'"))?;
                        Some((lo, hi))
                    }
                }
            }
            _ => {
                return Err(format!(
                    "'{spec}': unknown limit '{name}' (topic-bytes, topic-slashes, payload-bytes, client-id-bytes, \
                     filters-per-subscribe, subscriptions, publishes-per-second, connects-per-second, inflight, keepalive, \
                     session-expiry)"
                ))
            }
        }
        Ok(())
    }
}

/// Everything that makes one broker behave unlike another.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: ProfileName,
    pub retain: RetainPolicy,
    /// QoS 2 (publish, subscribe or Will) is served; otherwise it closes the connection.
    pub qos2: bool,
    /// `a/#` matches `a`.
    pub hash_matches_parent: bool,
    /// Retained messages are sent on SUBSCRIBE to wildcard filters too (AWS: exact only).
    pub retained_to_wildcards: bool,
    /// A redelivered PUBLISH carries DUP=1 (AWS does not support DUP).
    pub dup_on_redelivery: bool,
    /// Publishing to a `$` topic other than `$aws/...` closes the connection.
    pub dollar_topics_reserved: bool,
    /// Which packets reset the keepalive timer: all (Mosquitto) or only PUBLISH,
    /// SUBSCRIBE, PINGREQ and PUBACK (AWS).
    pub keepalive_reset_by_any: bool,
    /// The custom authorizer route (AWS): authorizer names, SNI, ALPN.
    pub custom_auth: bool,
    pub limits: Limits,
    /// What an MQTT 5 client sees.
    pub mqtt5: Mqtt5Rules,
}

/// The profile's MQTT 5 (OASIS MQTT 5.0): the CONNACK properties it announces and how it
/// answers what it does not serve. Numbers are in the spec's units (counts, bytes,
/// seconds); `None` means "not announced" (the spec's default applies).
///
/// The AWS values come from the AWS IoT Core developer guide's MQTT page,
/// https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html (cited below as
/// "D#<section>"), its quotas page and AWS's own MQTT 5 client (aws-c-mqtt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt5Rules {
    /// CONNACK Receive Maximum (§3.2.2.3.3): QoS 1/2 PUBLISHes a client may have
    /// unacknowledged toward the broker; one more closes with DISCONNECT 0x93.
    pub receive_maximum: Option<u16>,
    /// CONNACK Topic Alias Maximum (§3.2.2.3.8): highest alias a client may use (0 = none);
    /// a higher one closes with DISCONNECT 0x94.
    pub topic_alias_maximum: u16,
    /// CONNACK Maximum Packet Size (§3.2.2.3.6), bytes of a whole packet; a larger packet
    /// from an MQTT 5 client closes with DISCONNECT [`Self::packet_too_large`].
    pub maximum_packet_size: Option<u32>,
    /// The DISCONNECT reason code for a packet over the broker's size limits (Maximum
    /// Packet Size, payload, user properties).
    pub packet_too_large: u8,
    /// Subscription identifiers are served (CONNACK 0x29 omitted); else a SUBSCRIBE
    /// carrying one closes with DISCONNECT 0xA1 (§3.8.2.1.2).
    pub subscription_identifiers: bool,
    /// Shared subscriptions (`$share/<group>/<filter>`, §4.8.2) are served; else SUBACK 0x9E.
    pub shared_subscriptions: bool,
    /// Longest ShareName of a shared subscription, characters; longer gets SUBACK 0x8F.
    pub share_name_chars: Option<usize>,
    /// Most bytes of user properties (names and values) in one PUBLISH; more closes with
    /// DISCONNECT [`Self::packet_too_large`].
    pub user_properties_bytes: Option<usize>,
    /// A PUBLISH's Message Expiry Interval is served within `(min, max)` seconds: lower is
    /// raised, higher lowered (subscribers see the adjusted interval).
    pub message_expiry: Option<(u32, u32)>,
    /// A session made by an MQTT 3.1/3.1.1 client can be resumed by an MQTT 5 client and
    /// the reverse (Mosquitto); else the other protocol starts a new session.
    pub sessions_cross_protocol: bool,
    /// How a client id the broker assigns looks (§3.2.2.3.7).
    pub assigned_client_id: AssignedClientId,
    /// A connection taken over by a new one with the same client id gets DISCONNECT 0x8E
    /// before the close (Mosquitto 2.0.11 closes without it).
    pub takeover_disconnect: bool,
    /// The CONNACK reason code an MQTT 5 client gets when the custom authorizer refuses
    /// it; `None`: closed with no CONNACK, as for 3.1.1.
    pub custom_auth_refusal: Option<u8>,
    /// The DISCONNECT reason code of a retained PUBLISH under [`RetainPolicy::Close`]:
    /// 0x9A "Retain not supported" (CONNACK then says Retain Available 0), or 0x87 "Not
    /// authorized" (retain is served, the client's policy denies it; CONNACK says
    /// nothing, i.e. Retain Available 1).
    pub retain_refusal: u8,
    /// The QoS 2 packets PUBREC, PUBREL and PUBCOMP from a client are answered (else, with
    /// QoS 2 not served, they close with DISCONNECT 0x82 Protocol Error).
    pub qos2_flow: bool,
    /// The reason codes the broker may send in each ack; another code is folded into one
    /// the list has (below 0x80 → 0x00 Success, else → 0x80 Unspecified error). `None`:
    /// every MQTT 5 code.
    pub codes: Option<AckCodes>,
}

/// How an assigned client identifier looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignedClientId {
    /// `auto-` and the connection number in hex (Mosquitto: `auto-` and a UUID).
    ConnectionNumber,
    /// `$GEN/` and a random UUID, as AWS IoT Core assigns them (aws-c-mqtt
    /// source/v5/mqtt5_options_storage.c recognises that prefix as an assigned id).
    GenUuid,
}

/// The reason codes an ack may carry (MQTT 5 §2.4), per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckCodes {
    pub connack: &'static [u8],
    pub puback: &'static [u8],
    pub suback: &'static [u8],
    pub unsuback: &'static [u8],
}

impl AckCodes {
    /// AWS IoT Core's lists, D#mqtt5-reason-codes.
    pub const AWS: AckCodes = AckCodes {
        connack: &[0x00, 0x80, 0x85, 0x86, 0x87, 0x90, 0x97, 0x9B],
        puback: &[0x00, 0x80, 0x87, 0x90, 0x91, 0x97],
        suback: &[0x00, 0x01, 0x80, 0x87, 0x8F, 0x91, 0x97],
        unsuback: &[0x00, 0x80, 0x8F, 0x91],
    };

    /// `code` if `allowed` has it, else the code it folds to.
    pub fn fold(allowed: &[u8], code: u8) -> u8 {
        match code {
            c if allowed.contains(&c) => c,
            c if c < 0x80 => 0x00,
            _ => 0x80,
        }
    }
}

impl Mqtt5Rules {
    /// Mosquitto 2.0.11's defaults, read off its CONNACK (`max_inflight_messages 20`,
    /// `max_topic_alias 10`) and its answers (src/handle_publish.c, handle_unsubscribe.c).
    pub const MOSQUITTO: Mqtt5Rules = Mqtt5Rules {
        receive_maximum: Some(20),
        topic_alias_maximum: 10,
        maximum_packet_size: None,
        packet_too_large: 0x95,
        subscription_identifiers: true,
        shared_subscriptions: true,
        share_name_chars: None,
        user_properties_bytes: None,
        message_expiry: None,
        sessions_cross_protocol: true,
        assigned_client_id: AssignedClientId::ConnectionNumber,
        takeover_disconnect: false,
        custom_auth_refusal: None,
        retain_refusal: 0x9A,
        qos2_flow: true,
        codes: None,
    };

    /// AWS IoT Core's MQTT 5 (see the README's aws-iot MQTT 5 section for each source).
    pub const AWS: Mqtt5Rules = Mqtt5Rules {
        // Quotas page (https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits):
        // "Maximum inbound unacknowledged QoS 1 publish requests" 100; aws-c-mqtt
        // source/v5/mqtt5_client.c: "AWS IoT Core limits of 100 in-flight".
        receive_maximum: Some(100),
        // D#mqtt5-topic-alias: "default limit of 8 topic aliases".
        topic_alias_maximum: 8,
        // D#mqtt5-properties, Maximum Packet Size: "Cannot exceed 128 KB". Read as 128 x
        // 1024 bytes: AWS writes its byte quotas in binary units (the 128 KB payload quota
        // is enforced at 131,072 bytes, spec/aws-iot.md §4), and the larger reading is the
        // one that never refuses a packet AWS would take.
        maximum_packet_size: Some(128 * 1024),
        // 0x95 Packet too large is not among the codes D#mqtt5-reason-codes lists; 0x97
        // Quota exceeded is (CONNACK, PUBACK, SUBACK), and the size limit is a quota.
        packet_too_large: 0x97,
        // D#mqtt5-reason-codes: 0xA1 Subscription Identifiers not supported.
        subscription_identifiers: false,
        // D#mqtt5-shared-subscription: ShareName at most 128 characters (the filter after
        // it at most 256 bytes: the topic limit, applied to the filter without its prefix).
        shared_subscriptions: true,
        share_name_chars: Some(128),
        // User properties 8 KB in total per message: kept from the first version of this
        // profile, recalled from AWS's MQTT 5 pages and not found in what was read for this
        // one (unverified; `None` switches it off).
        user_properties_bytes: Some(8 * 1024),
        // D#mqtt5-message-expiry: at least 1 s (0 is adjusted to 1), at most 604,800 s
        // (7 days; longer is adjusted down).
        message_expiry: Some((1, 604_800)),
        // D#mqtt-persistent-sessions: an MQTT 3 session cannot be resumed by an MQTT 5
        // client, nor the reverse.
        sessions_cross_protocol: false,
        assigned_client_id: AssignedClientId::GenUuid,
        takeover_disconnect: true,
        // Not documented for MQTT 5 custom authorizers; 0x87 Not authorized is our choice
        // (it is in AWS's CONNACK list and is what a denied policy means).
        custom_auth_refusal: Some(0x87),
        // D#mqtt5-properties: Retain Available 1. Under TasmotaAuth's policy (no
        // iot:RetainPublish) a retained PUBLISH is a policy denial: 0x87.
        retain_refusal: 0x87,
        // D#mqtt-differences: no PUBREC, PUBREL, PUBCOMP (nor AUTH) in MQTT 5 on AWS.
        qos2_flow: false,
        codes: Some(AckCodes::AWS),
    };
}

impl Profile {
    pub fn new(name: ProfileName) -> Profile {
        match name {
            ProfileName::Plain => Profile {
                name,
                retain: RetainPolicy::Allow,
                qos2: true,
                hash_matches_parent: true,
                retained_to_wildcards: true,
                dup_on_redelivery: true,
                dollar_topics_reserved: false,
                keepalive_reset_by_any: true,
                custom_auth: false,
                // Mosquitto's max_inflight_messages default.
                limits: Limits { inflight: Some(20), ..Limits::NONE },
                mqtt5: Mqtt5Rules::MOSQUITTO,
            },
            ProfileName::AwsIot => Profile {
                name,
                retain: RetainPolicy::Close,
                qos2: false,
                hash_matches_parent: false,
                retained_to_wildcards: false,
                dup_on_redelivery: false,
                dollar_topics_reserved: true,
                keepalive_reset_by_any: false,
                custom_auth: true,
                limits: Limits::AWS,
                mqtt5: Mqtt5Rules::AWS,
            },
        }
    }

    /// The keepalive the broker serves for the one the client asked for (seconds, 0 =
    /// none).
    pub fn keepalive(&self, asked: u16) -> u16 {
        match self.limits.keepalive {
            None => asked,
            Some((_, hi)) if asked == 0 || asked > hi => hi,
            Some((lo, _)) => asked.max(lo),
        }
    }

    /// How long a persistent session outlives its connection (`None`: no limit).
    pub fn session_expiry(&self) -> Option<Duration> {
        self.limits.session_expiry.map(|s| Duration::from_secs(s as u64))
    }

    /// The Message Expiry Interval served for the one a PUBLISH carries (seconds).
    pub fn message_expiry(&self, asked: u32) -> u32 {
        match self.mqtt5.message_expiry {
            Some((lo, hi)) => asked.clamp(lo, hi),
            None => asked,
        }
    }

    /// Checks a topic name or filter against the topic limits.
    pub fn check_topic_limits(&self, topic: &str) -> Result<(), String> {
        if let Some(max) = self.limits.topic_bytes {
            if topic.len() > max {
                return Err(format!("topic of {} bytes is over the {max}-byte limit", topic.len()));
            }
        }
        if let Some(max) = self.limits.topic_slashes {
            let counted = strip_rules_prefix(topic);
            let slashes = counted.matches('/').count();
            if slashes > max {
                return Err(format!("topic has {slashes} '/' (limit {max})"));
            }
        }
        Ok(())
    }
}

/// `$aws/rules/<rule>/rest` → `rest`: AWS does not count the Basic Ingest prefix.
fn strip_rules_prefix(topic: &str) -> &str {
    if let Some(rest) = topic.strip_prefix("$aws/rules/") {
        if let Some((_rule, tail)) = rest.split_once('/') {
            return tail;
        }
    }
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_keepalive_clamp() {
        let p = Profile::new(ProfileName::AwsIot);
        assert_eq!(p.keepalive(0), 1200);
        assert_eq!(p.keepalive(5), 30);
        assert_eq!(p.keepalive(30), 30);
        assert_eq!(p.keepalive(600), 600);
        assert_eq!(p.keepalive(5000), 1200);
        assert_eq!(Profile::new(ProfileName::Plain).keepalive(5), 5);
    }

    #[test]
    fn ack_codes_fold_into_the_list() {
        let puback = AckCodes::AWS.puback;
        assert_eq!(AckCodes::fold(puback, 0x10), 0x00);
        assert_eq!(AckCodes::fold(puback, 0x87), 0x87);
        assert_eq!(AckCodes::fold(AckCodes::AWS.connack, 0x8C), 0x80);
        let p = Profile::new(ProfileName::AwsIot);
        assert_eq!((p.message_expiry(0), p.message_expiry(700_000), p.message_expiry(5)), (1, 604_800, 5));
        assert_eq!(Profile::new(ProfileName::Plain).message_expiry(0), 0);
    }

    #[test]
    fn aws_topic_limits() {
        let p = Profile::new(ProfileName::AwsIot);
        assert!(p.check_topic_limits("a/b/c/d/e/f/g/h").is_ok());
        assert!(p.check_topic_limits("a/b/c/d/e/f/g/h/i").is_err());
        assert!(p.check_topic_limits("$aws/rules/r/a/b/c/d/e/f/g/h").is_ok());
        assert!(p.check_topic_limits(&"x".repeat(256)).is_ok());
        assert!(p.check_topic_limits(&"x".repeat(257)).is_err());
    }

    #[test]
    fn limits_switch_by_name() {
        let mut l = Limits::AWS;
        l.set("publishes-per-second=off").unwrap();
        assert_eq!(l.publishes_per_second, None);
        l.set("topic-bytes=64").unwrap();
        assert_eq!(l.topic_bytes, Some(64));
        l.set("keepalive=10..60").unwrap();
        assert_eq!(l.keepalive, Some((10, 60)));
        l.set("session-expiry=604800").unwrap();
        assert_eq!(l.session_expiry, Some(604_800));
        assert!(l.set("session-expiry=604801").unwrap_err().contains("7 days"));
        assert!(l.set("nope=1").unwrap_err().contains("unknown limit 'nope'"));
        assert!(l.set("topic-bytes=x").unwrap_err().contains("not a number"));
    }
}
