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
//! - `--wss-listen` runs the same over TLS ([`super::tls::Acceptors::accept_https`]).
//! - On aws-iot every WebSocket link takes the custom authorizer, as AWS IoT takes MQTT
//!   over WebSockets without SigV4 (docs.aws.amazon.com/iot/latest/developerguide/
//!   custom-auth.html, "MQTT over WebSockets"): the authorizer is named by the upgrade
//!   request's `x-amz-customauthorizer-name` header or query parameter (the name of the
//!   parameter in any case: AWS's JavaScript SDK v1 sends `X-Amz-CustomAuthorizer-Name`,
//!   aws-iot-device-sdk-js#410), else by the CONNECT username's query string, else the
//!   default authorizer. The authorizer runs at CONNECT with the CONNECT's password
//!   (one Lambda event carries both `protocolData.http` and `protocolData.mqtt`), so a
//!   refusal is the MQTT one: the upgrade gets 101, CONNECT gets no CONNACK and the link
//!   is closed (aws-iot-device-sdk-python-v2#219, massi-ang/aws-iot-custom-authorizer-sample#17:
//!   "HTTP Status codes are all 101"). Over WSS the SNI must be the endpoint; over plain
//!   WS (AWS has none) it is not checked.
//! - A query string that does not decode (a bad %-escape, not UTF-8) or a header value
//!   that is not text gets HTTP 400 and is closed; its text is never echoed (it may
//!   carry a token).

use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use ws_stream_tungstenite::WsStream;

use super::auth::AwsUsername;
use super::{Broker, LinkInfo, TlsInfo};

/// The path MQTT clients ask for (Mosquitto's, AWS IoT's and the clients' default).
pub const PATH: &str = "/mqtt";
/// The WebSocket subprotocol of MQTT 3.1.1 (section 6.0).
pub const SUBPROTOCOL: &str = "mqtt";

/// The AWS custom-auth parameter that names the authorizer (header or query).
pub const AUTHORIZER_NAME: &str = "x-amz-customauthorizer-name";

/// What the upgrade request carried for AWS IoT's custom authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upgrade {
    /// `x-amz-customauthorizer-name`: the header's, else the query parameter's.
    pub authorizer: Option<String>,
}

impl Upgrade {
    /// Reads the request; `Err` is the HTTP 400 answer's text (never the query itself).
    fn read(req: &Request) -> Result<Upgrade, String> {
        if let Some(v) = req.headers().get(AUTHORIZER_NAME) {
            let name = v.to_str().map_err(|_| format!("the {AUTHORIZER_NAME} header is not visible ASCII"))?;
            return Ok(Upgrade { authorizer: Some(name.to_string()) });
        }
        let Some(query) = req.uri().query() else { return Ok(Upgrade::default()) };
        let parsed = AwsUsername::parse(&format!("?{query}"))
            .map_err(|_| "the query string does not decode (a bad %-escape, or not UTF-8)".to_string())?;
        let authorizer =
            parsed.params.into_iter().find(|(k, _)| k.eq_ignore_ascii_case(AUTHORIZER_NAME)).map(|(_, v)| v);
        Ok(Upgrade { authorizer })
    }
}

/// What the handshake saw: the subprotocol offer and the custom-auth parameters.
#[derive(Debug, Default)]
struct Seen {
    offer: Offer,
    upgrade: Upgrade,
}

/// What the client's `Sec-WebSocket-Protocol` offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Offer {
    Mqtt,
    #[default]
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

/// The upgrade's answer: 404 off [`PATH`], 400 for custom-auth parameters that do not
/// decode, the `mqtt` subprotocol if offered.
// The result type is tungstenite's `Callback`'s; its error is the HTTP answer it writes.
#[allow(clippy::result_large_err)]
fn answer(req: &Request, mut resp: Response, seen: &mut Seen) -> Result<Response, ErrorResponse> {
    if req.uri().path() != PATH {
        let mut not_found =
            ErrorResponse::new(Some(format!("no WebSocket endpoint at {}; use {PATH}\n", req.uri().path())));
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        return Err(not_found);
    }
    seen.upgrade = Upgrade::read(req).map_err(|why| {
        let mut bad = ErrorResponse::new(Some(format!("{why}\n")));
        *bad.status_mut() = StatusCode::BAD_REQUEST;
        bad
    })?;
    seen.offer = offer(req);
    if seen.offer == Offer::Mqtt {
        resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    }
    Ok(resp)
}

/// Runs the WebSocket handshake on `io`, then serves MQTT over it. `peer` names it in logs;
/// `tls` is what the TLS handshake below it told (WSS), `None` for plain WS.
pub async fn serve<IO: AsyncRead + AsyncWrite + Unpin + Send>(
    broker: &Broker,
    io: IO,
    peer: String,
    tls: Option<TlsInfo>,
) {
    let shared = &broker.shared;
    let mut seen = Seen::default();
    #[allow(clippy::result_large_err)] // tungstenite's `Callback` type, as on `answer`
    let callback = |req: &Request, resp| answer(req, resp, &mut seen);
    let handshake = async_tungstenite::tokio::accept_hdr_async(io, callback);
    let ws = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return shared.event("websocket", format!("{peer}: upgrade refused: {e}")),
        Err(_) => return shared.event("websocket", format!("{peer}: no WebSocket upgrade within 10 s")),
    };
    let mut stream = WsStream::new(ws);
    match seen.offer {
        Offer::Mqtt => broker.serve_link(stream, LinkInfo { peer, tls }, Some(seen.upgrade)).await,
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
        let mut seen = Seen::default();
        let err = answer(&req("/other", &["mqtt"]), Response::new(()), &mut seen).unwrap_err();
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        let ok = answer(&req("/mqtt?x-amz-customauthorizer-name=A", &["mqtt"]), Response::new(()), &mut seen).unwrap();
        assert_eq!(ok.headers().get("sec-websocket-protocol").unwrap(), "mqtt");
        assert_eq!(seen.offer, Offer::Mqtt);
        let bare = answer(&req("/mqtt", &[]), Response::new(()), &mut seen).unwrap();
        assert!(bare.headers().get("sec-websocket-protocol").is_none());
        assert_eq!(seen.offer, Offer::Nothing);
    }

    #[test]
    fn the_authorizer_is_named_by_header_first_then_query_in_any_case() {
        let named = |r: Request| Upgrade::read(&r).map(|u| u.authorizer);
        assert_eq!(named(req("/mqtt", &[])), Ok(None));
        assert_eq!(named(req("/mqtt?x-amz-customauthorizer-name=Tasmota%41uth", &[])), Ok(Some("TasmotaAuth".into())));
        assert_eq!(named(req("/mqtt?a=b&X-Amz-CustomAuthorizer-Name=J", &[])), Ok(Some("J".into())));
        let header = Request::builder()
            .uri("/mqtt?x-amz-customauthorizer-name=Q")
            .header("X-Amz-CustomAuthorizer-Name", "H")
            .body(())
            .unwrap();
        assert_eq!(named(header), Ok(Some("H".into())));
        // A bad escape: 400, and the answer does not echo the query (it may hold a token).
        let mut seen = Seen::default();
        let err = answer(&req("/mqtt?tok=secret%zz", &["mqtt"]), Response::new(()), &mut seen).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(!err.body().as_deref().unwrap_or("").contains("secret"));
    }
}
