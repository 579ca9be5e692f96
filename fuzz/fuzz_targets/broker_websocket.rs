//! Bytes from a WebSocket client through the broker's WebSocket path (`broker::ws::serve`:
//! the HTTP upgrade, then frames, then MQTT into one real connection task) over an
//! in-memory duplex, on a paused current-thread runtime with at most two minutes of
//! virtual time per input.
//!
//! Input: a flags byte, then the chunk-size byte and the client's bytes (see
//! `tasmota_fuzz::chunks`). Flags: bit 0, the aws-iot profile with the TasmotaAuth
//! authorizer instead of plain; bits 1-2, what the bytes are:
//! - 0: everything the client sends, the upgrade request included;
//! - 1: WebSocket frames, sent after a valid upgrade (`GET /mqtt`, subprotocol `mqtt`)
//!   was answered;
//! - 2: MQTT bytes, each chunk sent in one masked binary frame after that upgrade;
//! - 3: as 1, the upgrade naming the authorizer in `x-amz-customauthorizer-name`.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tasmota_fuzz::{chunks, exchange, run_bounded};
use tasmota_sim::broker::{ws, Broker, Config, ProfileName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The aws-iot profile's authorizer: the README's TasmotaAuth with its password.
const AWS_AUTHORIZER: &str = "TasmotaAuth:YknLuSd2tBY2HodwI/7RqA==";

/// A valid upgrade request for MQTT over WebSocket (RFC 6455 §4.1, MQTT 5 §6).
fn upgrade(authorizer_header: bool) -> Vec<u8> {
    let mut r = String::from(
        "GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n",
    );
    if authorizer_header {
        r.push_str("x-amz-customauthorizer-name: TasmotaAuth\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One masked binary frame (FIN, opcode 2) holding `payload`; the mask key is zero, so
/// the payload goes as it is.
fn binary_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x82);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else { return };
    let config = if flags & 1 == 0 {
        Config::new(ProfileName::Plain)
    } else {
        let mut c = Config::new(ProfileName::AwsIot);
        c.authorizers.push(AWS_AUTHORIZER.parse().expect("an authorizer spec"));
        c
    };
    let mode = (flags >> 1) & 3;
    run_bounded(Duration::from_secs(120), async move {
        let broker = Broker::new(config);
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let b = broker.clone();
        tokio::spawn(async move { ws::serve(&b, server, "fuzz".into(), None).await });
        if mode == 0 {
            exchange(client, input).await;
            return;
        }
        // The upgrade first, and its answer read to the blank line, as a client does.
        if client.write_all(&upgrade(mode == 3)).await.is_err() {
            return;
        }
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte).await {
                Ok(1..) => head.push(byte[0]),
                _ => return,
            }
        }
        if mode == 2 {
            // Each chunk of MQTT in a frame of its own; the frames written in one go.
            let mut framed = vec![0u8];
            for chunk in chunks(input) {
                binary_frame(chunk, &mut framed);
            }
            exchange(client, &framed).await;
        } else {
            exchange(client, input).await;
        }
    });
});
