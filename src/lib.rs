//! tasmota-sim as a library: the device driver, its network link, its settings store
//! and the embedded MQTT broker. The `tasmota-sim` binary is a CLI over these; tests and
//! (later) scenarios use them in-process.

pub mod broker;
pub mod driver;
pub mod duration;
pub mod fleet;
pub mod host;
pub mod http;
pub mod link;
pub mod profile;
pub mod scenario;
pub mod signal;
pub mod state;
