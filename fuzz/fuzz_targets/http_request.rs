//! Bytes from an HTTP client into the web server's request reader and parser
//! (`http::read_request` over an in-memory duplex, then `http::parse`): head framing,
//! Content-Length, Expect, the request line, headers, Basic auth, query and form
//! decoding. At most 30 s of virtual time per input (the server's timeout is 10 s).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tasmota_fuzz::{exchange, run_bounded};
use tasmota_sim::http;

fuzz_target!(|data: &[u8]| {
    run_bounded(Duration::from_secs(30), async {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let serve = async move {
            if let Ok(Ok((head, body))) = http::read_request(&mut server).await {
                if let Ok(req) = http::parse(&head, &body) {
                    let _ = req.credentials();
                }
            }
        };
        tokio::join!(serve, exchange(client, data));
    });
});
