//! Fault injection: the broker misbehaving on purpose. A [`FaultRule`] is a fault, the
//! clients it applies to and how many times it may fire; the CLI takes them as
//! `KIND[=VALUE][,client=ID][,times=N]`, code builds them directly.
//!
//! Each fault says through [`Fault::phase`] (one exhaustive `match`) when it acts, and each
//! [`Phase`] has one place in the broker that carries its faults out. Adding a fault means
//! adding its variant, its arm in `phase`, its spec in the parser, and its arm in the one
//! place of its phase (named on each [`Phase`] variant).

use std::time::Duration;

use crate::duration::parse_duration;

/// One way to misbehave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Close the link after this many packets from the client (CONNECT counts).
    DropAfterPackets(u32),
    /// Close the client's link this long after the broker started.
    DropAt(Duration),
    /// Answer CONNECT with this return code (1..5) and close.
    ConnackRc(u8),
    /// Answer CONNECT this much later than normal.
    LateConnack(Duration),
    /// Never answer PINGREQ.
    NoPingresp,
    /// Answer the TLS ClientHello with a fatal alert of this description (40 =
    /// handshake_failure) and close. Applies to TLS links; the client id is not known yet.
    TlsAlert(u8),
    /// Read CONNECT and never answer it.
    SilentOnConnect,
    /// Send the Nth packet to the client (1 = CONNACK) with its packet type set to the
    /// reserved value 0.
    Corrupt(u32),
    /// Delay every packet sent to the client.
    Latency(Duration),
    /// Restart the broker this long after it started: every link dropped (wills published),
    /// retained messages and persistent sessions kept, listeners closed for `down`.
    RestartAt { at: Duration, down: Duration },
}

/// When a fault acts, and so which part of the broker carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// In the TLS handshake, before the client id is known (`Broker::serve_tls`).
    Tls,
    /// On the client's CONNECT, before CONNACK (`Conn::connect_faults`).
    Connect,
    /// On the link after CONNACK: picked at CONNECT for that client's link, acting on its
    /// packets and timers (`LinkFaults::arm` in connection.rs).
    Link,
    /// At a time measured from the broker's start, on the whole broker (`Broker::schedule`).
    /// A rule added at run time is scheduled as one from the start; a time already past
    /// fires at once.
    Scheduled,
}

impl Fault {
    /// When this fault acts.
    pub fn phase(&self) -> Phase {
        match self {
            Fault::TlsAlert(_) => Phase::Tls,
            Fault::ConnackRc(_) | Fault::LateConnack(_) | Fault::SilentOnConnect => Phase::Connect,
            Fault::DropAfterPackets(_)
            | Fault::DropAt(_)
            | Fault::NoPingresp
            | Fault::Corrupt(_)
            | Fault::Latency(_) => Phase::Link,
            Fault::RestartAt { .. } => Phase::Scheduled,
        }
    }
}

/// A fault, whom it hits, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub fault: Fault,
    /// Client id to hit (`*` at the end: a prefix); `None` hits every client.
    pub client: Option<String>,
    /// How many times it may fire; `None` is every time.
    pub times: Option<u32>,
}

impl FaultRule {
    pub fn new(fault: Fault) -> FaultRule {
        FaultRule { fault, client: None, times: None }
    }

    pub fn for_client(mut self, client: &str) -> FaultRule {
        self.client = Some(client.to_string());
        self
    }

    pub fn times(mut self, n: u32) -> FaultRule {
        self.times = Some(n);
        self
    }

    pub fn applies_to(&self, client_id: &str) -> bool {
        match &self.client {
            None => true,
            Some(c) => match c.strip_suffix('*') {
                Some(prefix) => client_id.starts_with(prefix),
                None => c == client_id,
            },
        }
    }

    /// A short name for logs and the recording.
    pub fn describe(&self) -> String {
        let who = self.client.as_deref().map(|c| format!(" client={c}")).unwrap_or_default();
        format!("{:?}{who}", self.fault)
    }
}

impl std::str::FromStr for FaultRule {
    type Err = String;

    fn from_str(spec: &str) -> Result<FaultRule, String> {
        let mut parts = spec.split(',');
        let head = parts.next().unwrap_or_default();
        let (kind, value) = match head.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (head, None),
        };
        let need = |what: &str| value.ok_or_else(|| format!("'{spec}': {kind} needs ={what}"));
        let dur = |v: &str| parse_duration(v).map_err(|e| format!("'{spec}': {e}"));
        let num = |v: &str| v.parse::<u32>().map_err(|_| format!("'{spec}': '{v}' is not a number"));
        let fault = match kind {
            "drop-after" => Fault::DropAfterPackets(num(need("PACKETS")?)?),
            "drop-at" => Fault::DropAt(dur(need("TIME")?)?),
            "connack-rc" => {
                let rc = num(need("RC")?)?;
                if !(1..=5).contains(&rc) {
                    return Err(format!("'{spec}': CONNACK return codes that refuse are 1..5"));
                }
                Fault::ConnackRc(rc as u8)
            }
            "late-connack" => Fault::LateConnack(dur(need("DELAY")?)?),
            "no-pingresp" => Fault::NoPingresp,
            "tls-alert" => {
                let d = num(value.unwrap_or("40"))?;
                Fault::TlsAlert(u8::try_from(d).map_err(|_| format!("'{spec}': alert descriptions are 0..255"))?)
            }
            "silent-connect" => Fault::SilentOnConnect,
            "corrupt" => Fault::Corrupt(num(value.unwrap_or("1"))?.max(1)),
            "latency" => Fault::Latency(dur(need("DELAY")?)?),
            "restart-at" => {
                let v = need("TIME[/DOWNTIME]")?;
                let (at, down) = v.split_once('/').unwrap_or((v, "0ms"));
                Fault::RestartAt { at: dur(at)?, down: dur(down)? }
            }
            _ => {
                return Err(format!(
                    "'{spec}': unknown fault '{kind}' (drop-after=N, drop-at=T, connack-rc=RC, late-connack=T, \
                     no-pingresp, tls-alert[=DESC], silent-connect, corrupt[=N], latency=T, restart-at=T[/DOWN])"
                ))
            }
        };
        let mut rule = FaultRule::new(fault);
        for p in parts {
            match p.split_once('=') {
                Some(("client", c)) if !c.is_empty() => rule.client = Some(c.to_string()),
                Some(("times", n)) => rule.times = Some(num(n)?),
                _ => return Err(format!("'{spec}': unknown option '{p}' (client=ID, times=N)")),
            }
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_specs() {
        let r: FaultRule = "connack-rc=5,client=tasmota_*,times=2".parse().unwrap();
        assert_eq!(r.fault, Fault::ConnackRc(5));
        assert!(r.applies_to("tasmota_4B3316") && !r.applies_to("other"));
        assert_eq!(r.times, Some(2));
        assert_eq!("late-connack=15s".parse::<FaultRule>().unwrap().fault, Fault::LateConnack(Duration::from_secs(15)));
        assert_eq!(
            "restart-at=1m/10s".parse::<FaultRule>().unwrap().fault,
            Fault::RestartAt { at: Duration::from_secs(60), down: Duration::from_secs(10) }
        );
        assert_eq!("tls-alert".parse::<FaultRule>().unwrap().fault, Fault::TlsAlert(40));
        assert_eq!("corrupt".parse::<FaultRule>().unwrap().fault, Fault::Corrupt(1));
        assert!("connack-rc=0".parse::<FaultRule>().unwrap_err().contains("1..5"));
        assert!("explode".parse::<FaultRule>().unwrap_err().contains("unknown fault 'explode'"));
        assert!("drop-after".parse::<FaultRule>().unwrap_err().contains("needs =PACKETS"));
        assert!("no-pingresp,who=x".parse::<FaultRule>().unwrap_err().contains("unknown option"));
    }
}
