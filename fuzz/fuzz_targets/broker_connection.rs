//! Bytes from an MQTT client through one real broker connection task (`Broker::serve`
//! over an in-memory duplex), on a paused current-thread runtime with at most two
//! minutes of virtual time per input.
//!
//! Input: a flags byte (bit 0: the aws-iot profile, with the TasmotaAuth authorizer,
//! instead of plain; bit 1: a second client subscribed to `#` is connected first, so
//! publishes are routed to it; bit 2, plain: a password list with `bob:s3cret`; bit 3: that
//! second client speaks MQTT 5, so deliveries go through the MQTT 5 encoder), then the
//! chunk-size byte and the client's bytes (see `tasmota_fuzz::chunks`).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tasmota_fuzz::{exchange, run_bounded};
use tasmota_sim::broker::{Broker, Config, LinkInfo, ProfileName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The plain profile's user (bit 2 of the flags).
const PLAIN_USER: &str = "bob:s3cret";
/// The aws-iot profile's authorizer: the README's TasmotaAuth with its password.
const AWS_AUTHORIZER: &str = "TasmotaAuth:YknLuSd2tBY2HodwI/7RqA==";

/// CONNECT (client id `watcher`, clean session, no keepalive), then SUBSCRIBE `#` at QoS 1.
const WATCHER: &[u8] = &[
    0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 7, b'w', b'a', b't', b'c', b'h', b'e', b'r', //
    0x82, 6, 0, 1, 0, 1, b'#', 1,
];

/// The same as MQTT 5: CONNECT (level 5, no properties), SUBSCRIBE `#` (no properties,
/// options QoS 1).
const WATCHER_V5: &[u8] = &[
    0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 0, 0, 0, 7, b'w', b'a', b't', b'c', b'h', b'e', b'r', //
    0x82, 7, 0, 1, 0, 0, 1, b'#', 1,
];

fn link(broker: &Broker, peer: &str) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(1 << 16);
    let b = broker.clone();
    let link = LinkInfo { peer: peer.into(), tls: None };
    tokio::spawn(async move { b.serve(server, link).await });
    client
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else { return };
    let config = if flags & 1 == 0 {
        let mut c = Config::new(ProfileName::Plain);
        if flags & 4 != 0 {
            c.users.add(PLAIN_USER).expect("a user spec");
        }
        c
    } else {
        let mut c = Config::new(ProfileName::AwsIot);
        c.authorizers.push(AWS_AUTHORIZER.parse().expect("an authorizer spec"));
        c
    };
    run_bounded(Duration::from_secs(120), async move {
        let broker = Broker::new(config);
        if flags & 2 != 0 {
            let mut watcher = link(&broker, "watcher");
            tokio::spawn(async move {
                let hello = if flags & 8 != 0 { WATCHER_V5 } else { WATCHER };
                if watcher.write_all(hello).await.is_ok() {
                    let mut buf = [0u8; 4096];
                    while let Ok(1..) = watcher.read(&mut buf).await {}
                }
            });
        }
        exchange(link(&broker, "fuzz"), input).await;
    });
});
