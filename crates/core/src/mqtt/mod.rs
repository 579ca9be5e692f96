//! MQTT: the 3.1.1 codec ([`packet`]), the PubSubClient-like client ([`client`]), the
//! firmware's connection state machine (`xdrv_02_9_mqtt.ino`) and its TLS choices
//! ([`tls`]).

pub mod client;
mod connection;
pub mod packet;
pub mod tls;

pub(crate) use connection::Mqtt;
pub use connection::{ConnectRequest, LinkFailure, LWT_OFFLINE, LWT_ONLINE};
