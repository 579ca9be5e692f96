//! The device's web server (`--http ADDR:PORT`): the HTTP command API `/cm?cmnd=...`
//! (spec §9) and a minimal `/` page with the device name, relay buttons and console.
//!
//! Requests are parsed here and handed to the driver loop that owns the device, so a
//! web command runs between console lines and MQTT messages exactly as on the firmware.
//! The parser is small and strict: limits on the request head and body, a timeout per
//! connection, 400 on anything malformed, and it never panics on input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest request body accepted (a form with a command).
pub const MAX_BODY: usize = 8 * 1024;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request, and to take the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, and how much, unread input is drained after answering.
const LINGER: Duration = Duration::from_secs(1);
const MAX_LINGER_BYTES: usize = 64 * 1024;

/// Who a request says it is: the `user`/`password` parameters and HTTP Basic auth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
    pub basic: Option<(String, String)>,
}

impl Credentials {
    /// The pair `HandleHttpCommand` goes by: it accepts the request if either Basic auth
    /// or the `user`/`password` parameters pass. Returns whichever passes (the parameters
    /// first), else the parameters, which then fail.
    pub fn pick(&self, authorized: impl Fn(Option<&str>, Option<&str>) -> bool) -> (Option<&str>, Option<&str>) {
        let params = (self.user.as_deref(), self.password.as_deref());
        if authorized(params.0, params.1) {
            return params;
        }
        match &self.basic {
            Some((u, p)) if authorized(Some(u), Some(p)) => (Some(u), Some(p)),
            _ => params,
        }
    }
}

/// What the server asks the device.
#[derive(Debug)]
pub enum WebCall {
    /// `/cm`: run a command (`None` when the request had no `cmnd`).
    Command { cmnd: Option<String>, credentials: Credentials, from: String },
    /// `/`: the page; `command` is one typed in its form or sent by a relay button. Pages
    /// take Basic auth only, as the firmware's `WebAuthenticate`.
    Page { basic: Option<(String, String)>, command: Option<String>, from: String },
}

/// The device's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// One more response header (`Location`, `WWW-Authenticate`, `Allow`).
    pub header: Option<(&'static str, String)>,
}

impl WebAnswer {
    /// A `/cm` answer: the body `handle_web_command` built.
    pub fn json(status: u16, body: String) -> WebAnswer {
        WebAnswer { status, content_type: "application/json", body, header: None }
    }

    /// A page.
    pub fn html(body: String) -> WebAnswer {
        WebAnswer { status: 200, content_type: "text/html; charset=utf-8", body, header: None }
    }

    /// 401 for a page: the browser asks for the WebPassword.
    pub fn need_basic_auth() -> WebAnswer {
        WebAnswer {
            header: Some(("WWW-Authenticate", String::from("Basic realm=\"tasmota\""))),
            ..plain(401, "Unauthorized")
        }
    }

    /// 303 back to `location` (after a page ran a command, so a reload does not run it again).
    pub fn see_other(location: &str) -> WebAnswer {
        WebAnswer { header: Some(("Location", location.to_string())), ..plain(303, "See Other") }
    }
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

    /// The `user`/`password` parameters and Basic auth.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            user: self.param("user").map(str::to_string),
            password: self.param("password").map(str::to_string),
            basic: self.basic.clone(),
        }
    }
}

/// Why a request was refused before reaching the device: the status and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub u16, pub &'static str);

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

/// The lines of a request head; CRLF or a bare LF ends a line (RFC 9112 §2.2).
fn head_lines(head: &str) -> impl Iterator<Item = &str> {
    head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// The value of header `name` (the first one).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head_lines(head)
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Where the head ends in `buf`: (end of the head, start of the body). Empty lines before
/// the request line are skipped (RFC 9112 §2.2).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    let mut seen_request_line = false;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            let empty = line.is_empty() || line == b"\r";
            if empty && seen_request_line {
                return Some((line_start, i + 1));
            }
            seen_request_line |= !empty;
            line_start = i + 1;
        }
    }
    None
}

/// Parses a request head and body.
pub fn parse(head: &str, body: &[u8]) -> Result<Request, BadRequest> {
    let head = head.trim_start_matches(['\r', '\n']);
    let mut lines = head_lines(head);
    let request_line = lines.next().ok_or(BadRequest(400, "empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(BadRequest(400, "not HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(BadRequest(400, "malformed method"));
    }
    if method != "GET" && method != "POST" && method != "HEAD" {
        return Err(BadRequest(405, "method not allowed; use GET or POST"));
    }
    if !target.starts_with('/') {
        return Err(BadRequest(400, "malformed request target"));
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
            return Err(BadRequest(400, "malformed header"));
        };
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(BadRequest(400, "malformed header"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            let (scheme, b64) = value.split_once(' ').unwrap_or((value, ""));
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok();
                let text = decoded.and_then(|d| String::from_utf8(d).ok());
                basic = text.and_then(|t| t.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())));
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            form = value.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded");
        }
    }
    if method == "POST" && form {
        let text = std::str::from_utf8(body).map_err(|_| BadRequest(400, "form body is not UTF-8"))?;
        parse_params(text, &mut params);
    }
    Ok(Request { method: method.to_string(), path: url_decode(path), params, basic })
}

/// Serves HTTP on `listener` until the driver goes away.
pub async fn serve(listener: TcpListener, device: mpsc::Sender<WebRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of file descriptors and the like: wait, do not spin.
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
            drop(slot);
        });
    }
}

/// Reads the head (up to the empty line) and the body of one request.
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<Result<(String, Vec<u8>), BadRequest>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let (head_end, body_start) = loop {
        if let Some((end, body)) = find_head_end(&buf) {
            if end > MAX_HEAD {
                return Ok(Err(BadRequest(431, "request head too large")));
            }
            break (end, body);
        }
        if buf.len() > MAX_HEAD {
            return Ok(Err(BadRequest(431, "request head too large")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Ok(head) = String::from_utf8(buf[..head_end].to_vec()) else {
        return Ok(Err(BadRequest(400, "request head is not UTF-8")));
    };
    if header(&head, "transfer-encoding").is_some() {
        return Ok(Err(BadRequest(501, "Transfer-Encoding is not supported; send Content-Length")));
    }
    let lengths: Vec<&str> = head_lines(&head)
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim())
        .collect();
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Ok(Err(BadRequest(400, "conflicting Content-Length headers")));
    }
    let length = match lengths.first().map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(Ok(_)) => return Ok(Err(BadRequest(413, "request body too large"))),
        Some(Err(_)) => return Ok(Err(BadRequest(400, "bad Content-Length"))),
    };
    let mut body = buf[body_start..].to_vec();
    let expects_continue = header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue && body.len() < length {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
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
    let mut head_only = false;
    let answer = match read {
        Err(_) => plain(408, "request timeout"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Err(refused))) => refusal(refused),
        Ok(Ok(Ok((head, body)))) => match parse(&head, &body) {
            Err(refused) => refusal(refused),
            Ok(req) => {
                head_only = req.method == "HEAD";
                route(req, peer, &device).await
            }
        },
    };
    tracing::debug!(%peer, status = answer.status, "HTTP answer");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-cache\r\n",
        answer.status,
        reason(answer.status),
        answer.content_type,
        answer.body.len()
    );
    if let Some((name, value)) = &answer.header {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&answer.body);
    }
    let write = async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, write).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
    // Lingering close: a socket closed with unread input sends a reset, which can destroy
    // the answer before the client reads it (a refused oversized request, say).
    let _ = tokio::time::timeout(LINGER, drain(&mut stream)).await;
    Ok(())
}

/// Reads and drops what the client still sends, until it closes or [`MAX_LINGER_BYTES`].
async fn drain(stream: &mut TcpStream) {
    let mut chunk = [0u8; 2048];
    let mut left = MAX_LINGER_BYTES;
    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
        left = left.saturating_sub(n);
        if left == 0 {
            return;
        }
    }
}

fn refusal(BadRequest(status, why): BadRequest) -> WebAnswer {
    let mut answer = plain(status, why);
    if status == 405 {
        answer.header = Some(("Allow", String::from("GET, POST, HEAD")));
    }
    answer
}

async fn route(req: Request, peer: SocketAddr, device: &mpsc::Sender<WebRequest>) -> WebAnswer {
    let from = peer.ip().to_string();
    let call = match req.path.as_str() {
        "/cm" => WebCall::Command { cmnd: req.param("cmnd").map(str::to_string), credentials: req.credentials(), from },
        "/" => WebCall::Page { basic: req.basic.clone(), command: req.param("c1").map(str::to_string), from },
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
    WebAnswer { status, content_type: "text/plain; charset=utf-8", body: format!("{text}\n"), header: None }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
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
        let r = parse("GET /cm?cmnd=Power%20TOGGLE&user=admin&password=a+b HTTP/1.1\r\nHost: x\r\n", b"").unwrap();
        assert_eq!(r.param("cmnd"), Some("Power TOGGLE"));
        let c = r.credentials();
        assert_eq!((c.user.as_deref(), c.password.as_deref(), c.basic), (Some("admin"), Some("a b"), None));
        let r = parse(
            "POST /cm HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: Basic YWRtaW46c2VjcmV0",
            b"cmnd=Backlog%20Power%20ON%3B%20Power%20OFF",
        )
        .unwrap();
        assert_eq!(r.param("cmnd"), Some("Backlog Power ON; Power OFF"));
        assert_eq!(r.basic, Some(("admin".into(), "secret".into())));
        // Bare LF line ends, a leading empty line, a lower-case scheme.
        let r = parse("\r\nGET /?c1=x HTTP/1.0\nauthorization: basic YWRtaW46c2VjcmV0\n", b"").unwrap();
        assert_eq!((r.path.as_str(), r.param("c1")), ("/", Some("x")));
        assert_eq!(r.basic, Some(("admin".into(), "secret".into())));
        // A form body counts only with the form content type.
        assert_eq!(parse("POST /cm HTTP/1.1\r\n", b"cmnd=Power").unwrap().param("cmnd"), None);

        assert_eq!(parse("", b""), Err(BadRequest(400, "malformed request line")));
        assert_eq!(parse("GARBAGE", b""), Err(BadRequest(400, "malformed request line")));
        assert_eq!(parse("GET  / HTTP/1.1", b""), Err(BadRequest(400, "malformed request line")));
        assert_eq!(parse("GET /cm HTTP/2", b""), Err(BadRequest(400, "not HTTP/1.x")));
        assert_eq!(parse("get / HTTP/1.1", b""), Err(BadRequest(400, "malformed method")));
        assert_eq!(parse("DELETE / HTTP/1.1", b""), Err(BadRequest(405, "method not allowed; use GET or POST")));
        assert_eq!(parse("GET cm HTTP/1.1", b""), Err(BadRequest(400, "malformed request target")));
        assert_eq!(parse("GET / HTTP/1.1\r\nno colon", b""), Err(BadRequest(400, "malformed header")));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost : x", b""), Err(BadRequest(400, "malformed header")));
        assert_eq!(
            parse("POST /cm HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded", b"\xff"),
            Err(BadRequest(400, "form body is not UTF-8"))
        );
        assert_eq!(url_decode("%zz%4"), "%zz%4");
        assert_eq!(url_decode("a%2"), "a%2");
        assert_eq!(url_decode("%"), "%");
        assert_eq!(url_decode("%E2%9C%93"), "✓");
        assert_eq!(url_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some((25, 27)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nbody"), Some((15, 16)));
        assert_eq!(find_head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some((20, 22)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(find_head_end(b""), None);
    }

    #[test]
    fn parameters_first_then_basic_auth() {
        let ok = |u: Option<&str>, p: Option<&str>| u == Some("admin") && p == Some("secret");
        let both = |user: &str, password: &str, basic: Option<(&str, &str)>| Credentials {
            user: Some(user.into()),
            password: Some(password.into()),
            basic: basic.map(|(u, p)| (u.into(), p.into())),
        };
        assert_eq!(both("admin", "secret", None).pick(ok), (Some("admin"), Some("secret")));
        assert_eq!(both("admin", "wrong", Some(("admin", "secret"))).pick(ok), (Some("admin"), Some("secret")));
        assert_eq!(both("admin", "wrong", Some(("admin", "nope"))).pick(ok), (Some("admin"), Some("wrong")));
        let basic_only = Credentials { basic: Some(("admin".into(), "secret".into())), ..Default::default() };
        assert_eq!(basic_only.pick(ok), (Some("admin"), Some("secret")));
        assert_eq!(Credentials::default().pick(ok), (None, None));
    }

    proptest::proptest! {
        #[test]
        fn no_input_makes_the_parser_panic(head in ".{0,300}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse(&head, &body);
            let _ = find_head_end(head.as_bytes());
            let _ = url_decode(&head);
        }

        #[test]
        fn requests_with_any_bytes_parse_or_are_refused(raw in proptest::collection::vec(proptest::sample::select(b"GET POST/cm?=&%+:\r\n HTTP/1.1aZ9\xff".to_vec()), 0..120)) {
            if let Some((end, body)) = find_head_end(&raw) {
                proptest::prop_assert!(end <= body && body <= raw.len());
                if let Ok(head) = std::str::from_utf8(&raw[..end]) {
                    let _ = parse(head, &raw[body..]);
                }
            }
        }
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let p = page("<Kitchen>", &[true, false], &["00:00:00.000 CMD: <b>".into()]);
        assert!(p.contains("<h2>&lt;Kitchen&gt;</h2>"));
        assert!(p.contains("CMD: &lt;b&gt;"));
        assert!(p.contains("Power2%20TOGGLE"));
    }
}
