//! The web server of `tasmota-sim device --http` (spec §9), curl-style: the real binary,
//! raw HTTP/1.1 on loopback, the firmware's exact bodies.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{free_port, DeviceProcess};

const S: Duration = Duration::from_secs(1);

/// Sends `raw` and returns (status, headers, body).
fn request(port: u16, raw: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(10 * S)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status line: {head}"));
    (status, head.to_string(), body.to_string())
}

fn get(port: u16, target: &str, extra: &str) -> (u16, String, String) {
    request(port, &format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"))
}

/// A device with its web server on a free port; waits until it answers.
fn device(extra: &[&str]) -> (tempfile::TempDir, DeviceProcess, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let state = dir.path().join("d");
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--state", state.to_str().unwrap(), "--http", addr.as_str()];
    args.extend_from_slice(extra);
    let dev = DeviceProcess::start(&args);
    let deadline = std::time::Instant::now() + 10 * S;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the web server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, dev, port)
}

#[test]
fn power_toggle_answers_the_firmware_json_and_the_console_shows_it() {
    let (_dir, mut dev, port) = device(&[]);
    let (status, head, body) = get(port, "/cm?cmnd=Power%20TOGGLE", "");
    assert_eq!((status, body.as_str()), (200, r#"{"POWER":"ON"}"#));
    assert!(head.contains("Content-Type: application/json"), "{head}");
    dev.expect_line(r#"RSL: RESULT = {"POWER":"ON"}"#, 5 * S);
    dev.expect_line("RSL: POWER = ON", S);

    // Status 0 joins the twelve objects into one.
    let (_, _, body) = get(port, "/cm?cmnd=Status%200", "");
    assert!(body.starts_with(r#"{"Status":{"Module":1,"#), "{body}");
    for key in ["\"StatusPRM\":", "\"StatusFWR\":", "\"StatusNET\":", "\"StatusSTS\":"] {
        assert!(body.contains(key), "{key} in {body}");
    }
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "valid JSON: {body}");

    // No cmnd, an empty one, an unknown one.
    assert_eq!(get(port, "/cm", "").2, r#"{"WARNING":"Enter command cmnd="}"#);
    assert_eq!(get(port, "/cm?cmnd=", "").2, r#"{"WARNING":"Enter command cmnd="}"#);
    assert_eq!(get(port, "/cm?cmnd=Bogus", "").2, r#"{"Command":"Unknown"}"#);
    dev.power_off();
}

#[test]
fn a_backlog_answers_empty_and_runs_later() {
    let (_dir, mut dev, port) = device(&[]);
    let (status, _, body) = get(port, "/cm?cmnd=Backlog%20Power%20ON%3B%20Power%20OFF", "");
    assert_eq!((status, body.as_str()), (200, "{}"));
    dev.expect_line(r#"RSL: RESULT = {"POWER":"ON"}"#, 5 * S);
    dev.expect_line(r#"RSL: RESULT = {"POWER":"OFF"}"#, 5 * S);

    // POST with a form body does the same as GET.
    let form = "cmnd=Power2%20ON";
    let raw = format!(
        "POST /cm HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    assert_eq!(request(port, &raw).2, r#"{"Command":"Error"}"#, "Power2 on a one-relay device");
    let form = "cmnd=Power%20ON";
    let raw = format!(
        "POST /cm HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    assert_eq!(request(port, &raw).2, r#"{"POWER":"ON"}"#);
    dev.power_off();
}

#[test]
fn a_web_password_is_required_once_set() {
    let (_dir, mut dev, port) = device(&["--cmd", "WebPassword secret"]);
    dev.expect_line(r#"RSL: RESULT = {"WebPassword":"secret"}"#, 5 * S);
    let need = r#"{"WARNING":"Need user=<username>&password=<password>"}"#;
    let (status, _, body) = get(port, "/cm?cmnd=Power%20ON", "");
    assert_eq!((status, body.as_str()), (401, need));
    let (status, _, body) = get(port, "/cm?cmnd=Power%20ON&user=admin&password=wrong", "");
    assert_eq!((status, body.as_str()), (401, need));
    let (status, _, body) = get(port, "/cm?cmnd=Power%20ON&user=admin&password=secret", "");
    assert_eq!((status, body.as_str()), (200, r#"{"POWER":"ON"}"#));
    // HTTP Basic: admin:secret.
    let (status, _, body) = get(port, "/cm?cmnd=Power%20OFF", "Authorization: Basic YWRtaW46c2VjcmV0\r\n");
    assert_eq!((status, body.as_str()), (200, r#"{"POWER":"OFF"}"#));
    // As HandleHttpCommand: wrong parameters, right Basic auth -> the Basic auth counts.
    let (status, _, body) =
        get(port, "/cm?cmnd=Power&user=admin&password=wrong", "Authorization: Basic YWRtaW46c2VjcmV0\r\n");
    assert_eq!((status, body.as_str()), (200, r#"{"POWER":"OFF"}"#));
    // Wrong Basic auth (admin:wrong).
    let (status, _, body) = get(port, "/cm?cmnd=Power", "Authorization: Basic YWRtaW46d3Jvbmc=\r\n");
    assert_eq!((status, body.as_str()), (401, need));
    // The page asks for Basic auth, and takes it.
    let (status, head, _) = get(port, "/", "");
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Basic realm=\"tasmota\""), "{head}");
    assert_eq!(get(port, "/", "Authorization: Basic YWRtaW46c2VjcmV0\r\n").0, 200);
    // The password is never echoed back by a query.
    assert_eq!(get(port, "/cm?cmnd=WebPassword&user=admin&password=secret", "").2, r#"{"WebPassword":"****"}"#);
    dev.power_off();
}

#[test]
fn malformed_requests_get_4xx_and_the_server_keeps_serving() {
    let (_dir, mut dev, port) = device(&[]);
    assert_eq!(request(port, "GARBAGE\r\n\r\n").0, 400);
    assert_eq!(request(port, "GET /cm HTTP/2\r\n\r\n").0, 400);
    assert_eq!(request(port, "GET / HTTP/1.1\r\nno colon here\r\n\r\n").0, 400);
    assert_eq!(request(port, "GET /cm?cmnd=%ff%fe HTTP/1.1\r\nX: \u{e9}\r\n\r\n").0, 200, "UTF-8 in a header is fine");
    let (status, head, _) = request(port, "DELETE / HTTP/1.1\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, POST, HEAD"), "{head}");
    assert_eq!(request(port, "POST /cm HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").0, 413);
    let big = format!("POST /cm HTTP/1.1\r\nContent-Length: 20000\r\n\r\n{}", "x".repeat(20_000));
    assert_eq!(request(port, &big).0, 413, "answered though the body was sent");
    assert_eq!(request(port, "POST /cm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").0, 400);
    assert_eq!(request(port, "POST /cm HTTP/1.1\r\nContent-Length: -1\r\n\r\n").0, 400);
    assert_eq!(request(port, "POST /cm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").0, 501);
    assert_eq!(request(port, &format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000))).0, 431);
    assert_eq!(request(port, &format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(2_000))).0, 431);
    // Bytes that are not UTF-8 in the head.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /\xff HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert_eq!(get(port, "/nope", "").0, 404);
    // A client that hangs up half-way through its request.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"POST /cm HTTP/1.1\r\nContent-Length: 100\r\n\r\ncmnd=").unwrap();
    drop(s);
    // Still serving, and a request in flight does not hold up the others.
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (status, _, body) = get(port, "/", "");
    assert_eq!(status, 200);
    assert!(body.contains("<h2>Tasmota</h2>"), "{body}");
    assert!(body.contains("Power1%20TOGGLE"), "{body}");
    assert!(body.contains("<b id=\"s1\">OFF</b>"), "{body}");
    // The page's console form runs a command like the web console, then goes back to
    // the page, which shows the new state and the console lines.
    let (status, head, _) = get(port, "/?c1=Power%20ON", "");
    assert_eq!(status, 303);
    assert!(head.contains("\r\nLocation: /"), "{head}");
    dev.expect_line("CMD: Power ON", 5 * S);
    let (_, _, body) = get(port, "/", "");
    assert!(body.contains("<b id=\"s1\">ON</b>"), "{body}");
    assert!(
        body.contains("CMD: Power ON\n") && body.contains("RSL: RESULT = {&quot;POWER&quot;:&quot;ON&quot;}"),
        "{body}"
    );
    dev.power_off();
}

#[test]
fn lenient_where_http_clients_differ() {
    let (_dir, mut dev, port) = device(&["--cmd", "DeviceName Kitchen"]);
    dev.expect_line(r#"RSL: RESULT = {"DeviceName":"Kitchen"}"#, 5 * S);
    // Bare LF line ends (printf | nc), HTTP/1.0, no Host.
    let (status, _, body) = request(port, "GET /cm?cmnd=Power%20ON HTTP/1.0\n\n");
    assert_eq!((status, body.as_str()), (200, r#"{"POWER":"ON"}"#));
    // HEAD: the head only.
    let (status, head, body) = request(port, "HEAD / HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(head.contains("Content-Type: text/html"), "{head}");
    // curl sends Expect: 100-continue before a large body and waits for the interim answer.
    let form = format!("cmnd=Power%20OFF&pad={}", "x".repeat(2_000));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(10 * S)).unwrap();
    let head = format!(
        "POST /cm HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        form.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(form.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n{\"POWER\":\"OFF\"}"), "{text}");
    // The page is named after DeviceName.
    let (_, _, body) = get(port, "/", "");
    assert!(body.contains("<title>Kitchen</title>") && body.contains("<h2>Kitchen</h2>"), "{body}");
    dev.power_off();
}

#[test]
fn port_0_listens_on_a_free_port_and_says_which() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("d");
    let mut child = Command::new(common::BIN)
        .args(["device", "--profile", "sonoff-4ch", "--state", state.to_str().unwrap(), "--http", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("tasmota-sim: web server on http://")
        .and_then(|l| l.split_once('/'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_else(|| panic!("the bound address on stderr: {line:?}"));
    let port: u16 = addr.strip_prefix("127.0.0.1:").and_then(|p| p.parse().ok()).unwrap();
    assert_ne!(port, 0);
    // The issue's example: relay 2 of a 4CH.
    assert_eq!(get(port, "/cm?cmnd=Power2%20TOGGLE", "").2, r#"{"POWER2":"ON"}"#);
    let (_, _, body) = get(port, "/", "");
    for n in 1..=4 {
        assert!(body.contains(&format!("/?c1=Power{n}%20TOGGLE")), "{body}");
    }
    assert!(body.contains("<b id=\"s2\">ON</b>") && body.contains("<b id=\"s3\">OFF</b>"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_web_server_off_answers_503() {
    let (_dir, mut dev, port) = device(&["--cmd", "WebServer 0"]);
    dev.expect_line(r#"RSL: RESULT = {"Webserver":"OFF"}"#, 5 * S);
    assert_eq!(get(port, "/cm?cmnd=Power", "").0, 503);
    dev.power_off();
}
