//! MQTT over WebSocket for the operator: the HTTP upgrade on `/mqtt` offering the
//! subprotocol `mqtt` (MQTT 3.1.1 §6, MQTT 5 §6; what Mosquitto, AWS IoT and browser
//! clients use), then the MQTT bytes in binary frames. async-tungstenite does the
//! handshake and ws_stream_tungstenite turns the frames back into a byte stream, so the
//! operator's session runs over it unchanged. The devices never use WebSockets
//! (Tasmota does not).

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use ws_stream_tungstenite::WsStream;

use crate::link::BoxStream;

/// The path asked for (Mosquitto's, AWS IoT's and the clients' default).
pub const PATH: &str = "/mqtt";

/// Runs the WebSocket upgrade over `stream` (TCP, TLS or an in-memory link) to
/// `host:port` and returns the MQTT byte stream inside it. `tls` only picks the URL's
/// scheme (`wss`); the TLS, if any, is already in `stream`.
pub async fn upgrade(stream: BoxStream, host: &str, port: u16, tls: bool) -> Result<BoxStream, String> {
    let scheme = if tls { "wss" } else { "ws" };
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let url = format!("{scheme}://{host}:{port}{PATH}");
    let mut req = url.as_str().into_client_request().map_err(|e| format!("WebSocket request to {url}: {e}"))?;
    req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let upgrade = async_tungstenite::tokio::client_async(req, stream);
    match tokio::time::timeout(std::time::Duration::from_secs(10), upgrade).await {
        Ok(Ok((ws, _response))) => Ok(Box::pin(WsStream::new(ws))),
        Ok(Err(e)) => Err(format!("WebSocket upgrade at {url} failed: {e}")),
        Err(_) => Err(format!("no WebSocket upgrade at {url} within 10 s")),
    }
}
