//! MQTT over WebSocket (`--ws-listen`): the HTTP upgrade on path `/mqtt` with the
//! subprotocol `mqtt`, then the MQTT bytes in binary frames (MQTT 3.1.1 section 6.0), served
//! by [`Broker::serve`] like any other link.
//!
//! - The handshake is async-tungstenite's; ws_stream_tungstenite turns the frames into a
//!   byte stream, so a frame may hold part of a packet or several packets. A text frame
//!   gets a close frame (1003, "Text messages are not supported") and ends the link.
//! - Another path gets HTTP 404 and is closed (Mosquitto 2.0.11 serves any path).
//! - A client that offers no `mqtt` subprotocol is treated as Mosquitto 2.0.11 with
//!   libwebsockets treats it: with no `Sec-WebSocket-Protocol` at all the upgrade succeeds
//!   (101, no protocol header) and MQTT is never served; offering only other subprotocols
//!   ends the link (Mosquitto closes without an HTTP answer; here it closes after the 101).
//! - The link has no TLS: on aws-iot it is routed as the plain TCP listener's links are
//!   (custom auth, no SNI check).

use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use ws_stream_tungstenite::WsStream;

use super::{Broker, LinkInfo};

/// The path MQTT clients ask for (Mosquitto's, AWS IoT's and the clients' default).
pub const PATH: &str = "/mqtt";
/// The WebSocket subprotocol of MQTT 3.1.1 (section 6.0).
pub const SUBPROTOCOL: &str = "mqtt";

/// What the client's `Sec-WebSocket-Protocol` offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    Mqtt,
    Nothing,
    Others,
}

fn offer(req: &Request) -> Offer {
    let mut offered = false;
    for value in req.headers().get_all("sec-websocket-protocol") {
        for p in value.to_str().unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
            offered = true;
            if p == SUBPROTOCOL {
                return Offer::Mqtt;
            }
        }
    }
    if offered {
        Offer::Others
    } else {
        Offer::Nothing
    }
}

/// The upgrade's answer: 404 off [`PATH`], the `mqtt` subprotocol if offered.
// The result type is tungstenite's `Callback`'s; its error is the HTTP answer it writes.
#[allow(clippy::result_large_err)]
fn answer(req: &Request, mut resp: Response, seen: &mut Offer) -> Result<Response, ErrorResponse> {
    if req.uri().path() != PATH {
        let mut not_found =
            ErrorResponse::new(Some(format!("no WebSocket endpoint at {}; use {PATH}\n", req.uri().path())));
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        return Err(not_found);
    }
    *seen = offer(req);
    if *seen == Offer::Mqtt {
        resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    }
    Ok(resp)
}

/// Runs the WebSocket handshake on `io`, then serves MQTT over it. `peer` names it in logs.
pub async fn serve<IO: AsyncRead + AsyncWrite + Unpin + Send>(broker: &Broker, io: IO, peer: String) {
    let shared = &broker.shared;
    let mut seen = Offer::Nothing;
    #[allow(clippy::result_large_err)] // tungstenite's `Callback` type, as on `answer`
    let callback = |req: &Request, resp| answer(req, resp, &mut seen);
    let handshake = async_tungstenite::tokio::accept_hdr_async(io, callback);
    let ws = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return shared.event("websocket", format!("{peer}: upgrade refused: {e}")),
        Err(_) => return shared.event("websocket", format!("{peer}: no WebSocket upgrade within 10 s")),
    };
    let mut stream = WsStream::new(ws);
    match seen {
        Offer::Mqtt => broker.serve(stream, LinkInfo { peer, tls: None }).await,
        Offer::Nothing => {
            shared.event("websocket", format!("{peer}: no subprotocol offered; MQTT is not served (as Mosquitto)"));
            // Read (and answer pings) until the client goes; nothing is served.
            let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
        }
        Offer::Others => shared.event("websocket", format!("{peer}: subprotocol mqtt not offered; closed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, protocols: &[&str]) -> Request {
        let mut b = Request::builder().uri(path);
        for p in protocols {
            b = b.header("Sec-WebSocket-Protocol", *p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn mqtt_is_found_in_any_header_and_list_position() {
        assert_eq!(offer(&req("/mqtt", &["mqtt"])), Offer::Mqtt);
        assert_eq!(offer(&req("/mqtt", &["mqttv3.1, mqtt"])), Offer::Mqtt);
        assert_eq!(offer(&req("/mqtt", &["chat", "mqtt"])), Offer::Mqtt);
        assert_eq!(offer(&req("/mqtt", &["mqttv3.1"])), Offer::Others);
        assert_eq!(offer(&req("/mqtt", &[])), Offer::Nothing);
    }

    #[test]
    fn another_path_gets_404_and_mqtt_is_answered() {
        let mut seen = Offer::Nothing;
        let err = answer(&req("/other", &["mqtt"]), Response::new(()), &mut seen).unwrap_err();
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        let ok = answer(&req("/mqtt?x-amz-customauthorizer-name=A", &["mqtt"]), Response::new(()), &mut seen).unwrap();
        assert_eq!(ok.headers().get("sec-websocket-protocol").unwrap(), "mqtt");
        assert_eq!(seen, Offer::Mqtt);
        let bare = answer(&req("/mqtt", &[]), Response::new(()), &mut seen).unwrap();
        assert!(bare.headers().get("sec-websocket-protocol").is_none());
        assert_eq!(seen, Offer::Nothing);
    }
}
