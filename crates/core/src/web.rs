//! The HTTP command API (`HandleHttpCommand`, spec §9): what `/cm?cmnd=...` answers.
//!
//! The host serves HTTP; the core decides who may run a command and builds the body
//! the way the firmware does: it runs the command at once and joins the JSON of every
//! INFO log line logged meanwhile.

use alloc::format;
use alloc::string::String;

use crate::console::LogLevel;
use crate::device::{Device, Output};
use crate::time::Instant;

/// The web user name (`WEB_USERNAME`).
pub const WEB_USERNAME: &str = "admin";

/// The body of a 401 answer.
pub const NEED_USER_AND_PASSWORD: &str = "{\"WARNING\":\"Need user=<username>&password=<password>\"}";

/// The body when `cmnd` is missing or empty.
pub const ENTER_COMMAND: &str = "{\"WARNING\":\"Enter command cmnd=\"}";

/// What `/cm` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebResponse {
    /// 200 or 401.
    pub status: u16,
    /// `application/json` body.
    pub body: String,
}

impl Device {
    /// Whether a request with these credentials may use the web server: always when no
    /// WebPassword is set, else user `admin` with the password.
    pub fn web_authorized(&self, user: Option<&str>, password: Option<&str>) -> bool {
        let pwd = &self.settings.web_password;
        pwd.is_empty() || (user == Some(WEB_USERNAME) && password == Some(pwd.as_str()))
    }

    /// Whether the web server is on (`WebServer` 1 or 2).
    pub fn web_enabled(&self) -> bool {
        self.settings.webserver != 0
    }

    /// `Every250mSeconds` (state 3, network up) calls `StartWebserver(Settings->webserver)`
    /// or, with `WebServer 0`, `StopWebserver()` (xdrv_01_9_webserver.ino of 14.2.0).
    /// Starting logs `HTP: Web server active on <hostname> with IP address <ip>` whenever
    /// the mode differs from `Web.state` (at the first tick with the network up, and
    /// after `WebServer 1`/`2` changes the mode); stopping a running server logs
    /// `HTP: Web server stopped`. Each start raises the rules' `HTTP#Initialized`. The hostname gains `.local` only once mDNS has begun
    /// (SetOption55 with `USE_DISCOVERY`), which the simulator does not model.
    pub(crate) fn web_server_check(&mut self) {
        let mode = self.settings.webserver;
        if mode != 0 {
            if self.web_state != mode {
                let line = format!("HTP: Web server active on {} with IP address {}", self.hostname, self.ip_address());
                self.log(LogLevel::Info, line);
                // `TasmotaGlobal.rules_flag.http_init = 1`: the rules see HTTP#Initialized.
                self.rules_flag |= crate::rules::flag::HTTP_INIT;
                self.web_state = mode;
            }
        } else if self.web_state != 0 {
            self.web_state = 0;
            self.log(LogLevel::Info, String::from("HTP: Web server stopped"));
        }
    }

    /// `HandleHttpCommand`: runs `cmnd` (`None` when the request had no `cmnd`) from
    /// `from` (the client's address, for the debug log) and answers.
    pub fn handle_web_command(
        &mut self,
        cmnd: Option<&str>,
        user: Option<&str>,
        password: Option<&str>,
        from: &str,
        now: Instant,
    ) -> WebResponse {
        self.catch_up(now);
        self.log(LogLevel::Debug, String::from("HTP: Command"));
        if !self.web_authorized(user, password) {
            return WebResponse { status: 401, body: String::from(NEED_USER_AND_PASSWORD) };
        }
        let cmnd = cmnd.unwrap_or("");
        if cmnd.is_empty() || cmnd.len() >= crate::mqtt::client::MAX_PACKET_SIZE {
            return WebResponse { status: 200, body: String::from(ENTER_COMMAND) };
        }
        let first = self.outputs_len();
        self.log(LogLevel::Debug, format!("SRC: WebCommand from {from}"));
        self.execute_command(cmnd);
        let mut body = String::from("{");
        let mut any = false;
        for out in self.outputs_from(first) {
            let Output::Log(line) = out else { continue };
            if line.level > LogLevel::Info {
                continue;
            }
            let Some(at) = line.text.find('{') else { continue };
            let inner = &line.text[at + 1..];
            let inner = inner.strip_suffix('}').unwrap_or(inner);
            if any {
                body.push(',');
            }
            body.push_str(inner);
            any = true;
        }
        body.push('}');
        WebResponse { status: 200, body }
    }
}
