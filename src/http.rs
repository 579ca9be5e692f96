//! The device's web server (`--http ADDR:PORT`): the HTTP command API `/cm?cmnd=...`
//! (spec §9) and a minimal `/` page with the device name, relay buttons and console.
//!
//! Requests are parsed here and handed to the driver loop that owns the device, so a
//! web command runs between console lines and MQTT messages exactly as on the firmware.
//! The parser is small and strict: limits on the request head and body, a timeout per
//! connection, 400 on anything malformed, and it never panics on input.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest request body accepted (a form with a command).
pub const MAX_BODY: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server asks the device.
#[derive(Debug)]
pub enum WebCall {
    /// `/cm`: run a command (`None` when the request had no `cmnd`).
    Command { cmnd: Option<String>, user: Option<String>, password: Option<String>, from: String },
    /// `/`: the page; `command` is one typed in its form.
    Page { user: Option<String>, password: Option<String>, command: Option<String>, from: String },
}

/// The device's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// A request in flight: the call and where its answer goes.
pub type WebRequest = (WebCall, oneshot::Sender<WebAnswer>);

/// A parsed HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Query and (for POST forms) body parameters, decoded, in order.
    pub params: Vec<(String, String)>,
    /// Basic auth user and password.
    pub basic: Option<(String, String)>,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request was refused before reaching the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub &'static str);

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; invalid
/// escapes are kept as they are.
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_params(s: &str, into: &mut Vec<(String, String)>) {
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        into.push((url_decode(k), url_decode(v)));
    }
}

/// Parses a request head and body.
pub fn parse(head: &str, body: &[u8]) -> Result<Request, BadRequest> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(BadRequest("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(BadRequest("not HTTP/1.x"));
    }
    if method != "GET" && method != "POST" && method != "HEAD" {
        return Err(BadRequest("method not supported"));
    }
    if !target.starts_with('/') {
        return Err(BadRequest("malformed request target"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut params = Vec::new();
    parse_params(query, &mut params);
    let mut basic = None;
    let mut form = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            if line.is_empty() {
                continue;
            }
            return Err(BadRequest("malformed header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            if let Some(b64) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) {
                let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok();
                let text = decoded.and_then(|d| String::from_utf8(d).ok());
                basic = text.and_then(|t| t.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())));
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            form = value.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded");
        }
    }
    if method == "POST" && form {
        let text = std::str::from_utf8(body).map_err(|_| BadRequest("form body is not UTF-8"))?;
        parse_params(text, &mut params);
    }
    Ok(Request { method: method.to_string(), path: url_decode(path), params, basic })
}

/// Credentials: `user`/`password` parameters, else Basic auth.
fn credentials(r: &Request) -> (Option<String>, Option<String>) {
    match (r.param("user"), r.param("password")) {
        (None, None) => match &r.basic {
            Some((u, p)) => (Some(u.clone()), Some(p.clone())),
            None => (None, None),
        },
        (u, p) => (u.map(str::to_string), p.map(str::to_string)),
    }
}

/// Serves HTTP on `listener` until the driver goes away.
pub async fn serve(listener: TcpListener, device: mpsc::Sender<WebRequest>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if device.is_closed() {
            return;
        }
        let device = device.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, device).await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
}

/// Reads the head (up to the blank line) and the body of one request.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Result<(String, Vec<u8>), (u16, &'static str)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if i > MAX_HEAD {
                return Ok(Err((431, "request head too large")));
            }
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Ok(Err((431, "request head too large")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Ok(head) = String::from_utf8(buf[..head_end].to_vec()) else {
        return Ok(Err((400, "request head is not UTF-8")));
    };
    let length = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>());
    let length = match length {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(Ok(_)) => return Ok(Err((413, "request body too large"))),
        Some(Err(_)) => return Ok(Err((400, "bad Content-Length"))),
    };
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Ok((head, body)))
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, device: mpsc::Sender<WebRequest>) -> std::io::Result<()> {
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await;
    let answer = match read {
        Err(_) => plain(408, "request timeout"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Err((status, why)))) => plain(status, why),
        Ok(Ok(Ok((head, body)))) => match parse(&head, &body) {
            Err(BadRequest(why)) => plain(400, why),
            Ok(req) => route(req, peer, &device).await,
        },
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-cache\r\n",
        answer.status,
        reason(answer.status),
        answer.content_type,
        answer.body.len()
    );
    if answer.status == 401 && answer.content_type.starts_with("text/html") {
        out.push_str("WWW-Authenticate: Basic realm=\"tasmota\"\r\n");
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    stream.write_all(answer.body.as_bytes()).await?;
    stream.shutdown().await
}

async fn route(req: Request, peer: SocketAddr, device: &mpsc::Sender<WebRequest>) -> WebAnswer {
    let (user, password) = credentials(&req);
    let from = peer.ip().to_string();
    let call = match req.path.as_str() {
        "/cm" => WebCall::Command { cmnd: req.param("cmnd").map(str::to_string), user, password, from },
        "/" => WebCall::Page { user, password, command: req.param("c1").map(str::to_string), from },
        _ => return plain(404, "not found"),
    };
    let (tx, rx) = oneshot::channel();
    if device.send((call, tx)).await.is_err() {
        return plain(503, "the device is off");
    }
    rx.await.unwrap_or_else(|_| plain(503, "the device is off"))
}

/// A plain-text answer from the server itself (not from the device).
pub fn plain(status: u16, text: &str) -> WebAnswer {
    WebAnswer { status, content_type: "text/plain", body: format!("{text}\n") }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// HTML text escaping.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The `/` page: device name, one toggle button per relay with its state, the console.
pub fn page(name: &str, relays: &[bool], console: &[String]) -> String {
    let mut buttons = String::new();
    for (i, on) in relays.iter().enumerate() {
        let n = i + 1;
        let label = if relays.len() == 1 { String::from("Toggle") } else { format!("Toggle {n}") };
        buttons.push_str(&format!(
            "<p><b id=\"s{n}\">{}</b> <a href=\"/?c1=Power{n}%20TOGGLE\"><button>{label}</button></a></p>\n",
            if *on { "ON" } else { "OFF" }
        ));
    }
    let lines: Vec<String> = console.iter().map(|l| html_escape(l)).collect();
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{n}</title></head>\n<body>\n<h2>{n}</h2>\n{buttons}<h3>Console</h3>\n<pre id=\"console\">{}</pre>\n<form action=\"/\" method=\"get\"><input name=\"c1\" placeholder=\"Enter command\" autofocus> <button>Send</button></form>\n</body></html>\n",
        lines.join("\n"),
        n = html_escape(name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_refused() {
        let r = parse("GET /cm?cmnd=Power%20TOGGLE&user=admin&password=a+b HTTP/1.1\r\nHost: x", b"").unwrap();
        assert_eq!(r.param("cmnd"), Some("Power TOGGLE"));
        assert_eq!(credentials(&r), (Some("admin".into()), Some("a b".into())));
        let r = parse(
            "POST /cm HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: Basic YWRtaW46c2VjcmV0",
            b"cmnd=Backlog%20Power%20ON%3B%20Power%20OFF",
        )
        .unwrap();
        assert_eq!(r.param("cmnd"), Some("Backlog Power ON; Power OFF"));
        assert_eq!(credentials(&r), (Some("admin".into()), Some("secret".into())));
        assert_eq!(parse("GARBAGE", b""), Err(BadRequest("malformed request line")));
        assert_eq!(parse("GET /cm HTTP/2", b""), Err(BadRequest("not HTTP/1.x")));
        assert_eq!(parse("DELETE / HTTP/1.1", b""), Err(BadRequest("method not supported")));
        assert_eq!(parse("GET cm HTTP/1.1", b""), Err(BadRequest("malformed request target")));
        assert_eq!(parse("GET / HTTP/1.1\r\nno colon", b""), Err(BadRequest("malformed header")));
        assert_eq!(url_decode("%zz%4"), "%zz%4");
        assert_eq!(url_decode("a%2"), "a%2");
        assert_eq!(url_decode("%E2%9C%93"), "✓");
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let p = page("<Kitchen>", &[true, false], &["00:00:00.000 CMD: <b>".into()]);
        assert!(p.contains("<h2>&lt;Kitchen&gt;</h2>"));
        assert!(p.contains("CMD: &lt;b&gt;"));
        assert!(p.contains("Power2%20TOGGLE"));
    }
}
