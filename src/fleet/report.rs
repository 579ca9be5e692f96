//! The fleet report: what a person reads at the end of a run (a table), what a machine
//! reads (`--json`), and the `--slo` check on it.
//!
//! Latencies are kept in hdrhistogram `Histogram`s (microseconds, 3 significant
//! digits); the JSON carries them serialized (V2 + deflate, base64) next to the
//! percentiles, so reports of several shards can be merged exactly.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::bill::Bill;

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A latency histogram in microseconds: 1 µs to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// The histogram as base64 text (V2 + deflate).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Writing to a Vec cannot fail for an in-range histogram.
    let _ = V2DeflateSerializer::new().serialize(h, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The histogram back from [`encode_histogram`]'s text.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("not base64: {e}"))?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("not an HdrHistogram: {e:?}"))
}

/// Serialized histograms, for an exact merge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    /// Command → reply latency (µs).
    pub latency_us: String,
    /// "Attempting connection" → "Connected" (µs).
    pub connect_us: String,
}

/// One run's report (`--json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `virtual`, `embedded` or the broker URL.
    pub target: String,
    pub devices: u64,
    /// Connected at the end of the run.
    pub connected: u64,
    /// Fleet time until every device had connected once (null if some never did).
    pub connect_seconds: Option<f64>,
    /// Fleet time the run covered (virtual or real).
    pub run_seconds: f64,
    /// Wall-clock time it took.
    pub wall_seconds: f64,
    pub commands_sent: u64,
    pub commands_answered: u64,
    /// Command → reply latency.
    pub latency_us: Percentiles,
    /// Connect latency: "MQT: Attempting connection..." to "MQT: Connected".
    pub connect_latency_us: Percentiles,
    /// Group commands: (command, devices that answered).
    pub group_commands: Vec<GroupResult>,
    /// PUBLISHes the devices sent.
    pub messages_out: u64,
    /// PUBLISHes delivered to the devices (commands).
    pub messages_in: u64,
    /// Connections made (first connects and reconnects).
    pub connects: u64,
    /// Times the operator client lost its link (it connects again a second later).
    pub operator_link_losses: u64,
    /// The MQTT protocol level the operator client spoke (`--operator-protocol`: 4 is
    /// MQTT 3.1.1, 5 is MQTT 5); absent in reports from before it was recorded, and after
    /// a merge of shards that differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_protocol: Option<u8>,
    /// Connect failures by kind: `rc -2`, `rc 5`, `tls 296`...
    pub failures: BTreeMap<String, u64>,
    /// Successful connects in each second of fleet time (the reconnect storm's shape).
    pub connects_per_second: Vec<u64>,
    /// Resident memory of the process at the end, per device (bytes; 0 where unknown).
    pub rss_bytes_per_device: u64,
    /// CPU time of the process per device (µs).
    pub cpu_us_per_device: u64,
    pub aws_iot: Option<Bill>,
    /// Quotas that shaped the ramp or the workload (AWS IoT Core's, against an AWS
    /// endpoint).
    #[serde(default)]
    pub shaped_by: Vec<String>,
    /// The shards this report covers (`--shard I/N`; several after `fleet merge`; none
    /// for a whole fleet in one run).
    #[serde(default)]
    pub shards: Vec<super::merge::Shard>,
    /// Shards a `fleet merge --partial` did not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_shards: Vec<super::merge::Shard>,
    pub histograms: Histograms,
}

/// A group command and how many devices answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupResult {
    pub command: String,
    pub at_seconds: f64,
    pub answered: u64,
}

impl Report {
    /// The table a person reads at the end of a run.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let connect =
            self.connect_seconds.map_or("never (not every device connected)".to_string(), |t| format!("{t:.3} s"));
        let _ = writeln!(s, "fleet: {} devices on {}", self.devices, self.target);
        if !self.shards.is_empty() {
            let list: Vec<String> = self.shards.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "  shards               {}", list.join(", "));
        }
        if !self.missing_shards.is_empty() {
            let list: Vec<String> = self.missing_shards.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "  MISSING shards       {} (a partial merge)", list.join(", "));
        }
        let mut operator: Vec<String> = Vec::new();
        match self.operator_protocol {
            Some(4) => operator.push("MQTT 3.1.1".into()),
            Some(5) => operator.push("MQTT 5 (--operator-protocol 5)".into()),
            Some(level) => operator.push(format!("protocol level {level}")),
            None => {}
        }
        if self.operator_link_losses > 0 {
            let n = self.operator_link_losses;
            operator.push(format!(
                "link lost {n} time{} (commands and answers while it was down show as unanswered or slow)",
                if n == 1 { "" } else { "s" }
            ));
        }
        if !operator.is_empty() {
            let _ = writeln!(s, "  operator             {}", operator.join(", "));
        }
        if self.connects == 0 && self.devices > 0 {
            let _ = writeln!(s, "  connected            0 of {}: NO DEVICE CONNECTED during the run", self.devices);
        } else {
            let _ = writeln!(
                s,
                "  connected            {} of {} (all connected after {connect})",
                self.connected, self.devices
            );
        }
        let failed: u64 = self.failures.values().sum();
        let _ = writeln!(s, "  connects             {} made, {failed} attempts failed", self.connects);
        for (kind, n) in &self.failures {
            let _ = writeln!(s, "    {kind:<18} {n}");
        }
        let c = &self.connect_latency_us;
        if c.count == 0 {
            let _ = writeln!(s, "  connect latency      n/a (no connect measured)");
        } else {
            let _ = writeln!(s, "  connect latency      p50 {} p99 {} max {}", ms(c.p50), ms(c.p99), ms(c.max));
        }
        let _ = writeln!(s, "  commands             {} sent, {} answered", self.commands_sent, self.commands_answered);
        let l = &self.latency_us;
        if l.count == 0 {
            let _ = writeln!(s, "  command -> reply     n/a (no reply measured)");
        } else {
            let _ = writeln!(
                s,
                "  command -> reply     p50 {} p90 {} p99 {} p99.9 {} max {}",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            );
        }
        for g in &self.group_commands {
            let _ = writeln!(
                s,
                "  group '{}' at {:.1} s  {} of {} answered",
                g.command, g.at_seconds, g.answered, self.devices
            );
        }
        let _ =
            writeln!(s, "  messages             {} from devices, {} to devices", self.messages_out, self.messages_in);
        if self.rss_bytes_per_device > 0 {
            let _ = writeln!(
                s,
                "  memory               {:.1} KiB RSS per device",
                self.rss_bytes_per_device as f64 / 1024.0
            );
        }
        let _ =
            writeln!(s, "  time                 {:.1} s of fleet time in {:.2} s", self.run_seconds, self.wall_seconds);
        if let Some(b) = &self.aws_iot {
            let _ = writeln!(
                s,
                "  AWS IoT ({})    {} messages, {} connection-minutes: ${:.2}/day, ${:.2}/month{}",
                b.region,
                b.messages,
                b.connection_minutes,
                b.usd_per_day,
                b.usd_per_month,
                if b.within_free_tier { " (within the Free Tier)" } else { "" }
            );
        }
        s
    }
}

impl Report {
    /// One self-contained HTML page: the numbers, connects per second over the run (the
    /// reconnect storm's shape) and the command latency distribution (percentile curve
    /// from the histogram), as inline SVG; no script, no outside file.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>tasmota-sim fleet: {} devices</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}pre{{background:#f4f4f4;padding:1em}}\
             svg{{background:#fafafa;border:1px solid #ddd}}h2{{margin-top:1.5em}}</style></head><body>\
             <h1>tasmota-sim fleet: {} devices on {}</h1><pre>{}</pre>",
            self.devices,
            self.devices,
            esc(&self.target),
            esc(&self.human())
        );
        let cps: Vec<f64> = self.connects_per_second.iter().map(|n| *n as f64).collect();
        h.push_str("<h2>Connects per second of fleet time</h2>");
        h.push_str(&svg_bars(&cps, "s", "connects"));
        h.push_str("<h2>Command → reply latency</h2>");
        match decode_histogram(&self.histograms.latency_us) {
            Ok(hist) if !hist.is_empty() => {
                // The latency at each percentile, 0 .. 99.99 on a log-like axis.
                let qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999];
                let points: Vec<(String, f64)> = qs
                    .iter()
                    .map(|q| (format!("p{}", q * 100.0), hist.value_at_quantile(*q) as f64 / 1000.0))
                    .collect();
                h.push_str(&svg_labelled_bars(&points, "ms"));
            }
            _ => h.push_str("<p>No command was answered.</p>"),
        }
        if self.target.starts_with("virtual") {
            h.push_str("<p>On the virtual clock links are in memory and take no time: a reply comes at the instant of its command.</p>");
        }
        h.push_str("</body></html>\n");
        h
    }
}

/// Bars for a series indexed by second.
fn svg_bars(values: &[f64], x_unit: &str, y_unit: &str) -> String {
    let (w, hgt) = (800.0, 200.0);
    let max = values.iter().cloned().fold(0.0, f64::max).max(1.0);
    let n = values.len().max(1) as f64;
    let bw = w / n;
    let mut s = format!("<svg width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\">", hgt + 20.0, hgt + 20.0);
    for (i, v) in values.iter().enumerate() {
        let bh = v / max * hgt;
        let _ = write!(
            s,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"#3a7\"><title>{i} {x_unit}: {v} {y_unit}</title></rect>",
            i as f64 * bw,
            hgt - bh,
            bw.max(1.0),
            bh
        );
    }
    let _ = write!(
        s,
        "<text x=\"0\" y=\"{}\" font-size=\"12\">0 {x_unit}</text><text x=\"{w}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{} {x_unit}; highest bar {max} {y_unit}</text></svg>",
        hgt + 16.0,
        hgt + 16.0,
        values.len()
    );
    s
}

/// Labelled bars (the latency at each percentile).
fn svg_labelled_bars(points: &[(String, f64)], unit: &str) -> String {
    let (w, hgt) = (800.0, 200.0);
    let max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001);
    let bw = w / points.len().max(1) as f64;
    let mut s = format!("<svg width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\">", hgt + 40.0, hgt + 40.0);
    for (i, (label, v)) in points.iter().enumerate() {
        let bh = v / max * hgt;
        let x = i as f64 * bw;
        let _ = write!(
            s,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"#37a\"/>\
             <text x=\"{:.2}\" y=\"{:.2}\" font-size=\"11\" text-anchor=\"middle\">{v:.2} {unit}</text>\
             <text x=\"{:.2}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{label}</text>",
            x + 4.0,
            hgt - bh + 14.0,
            bw - 8.0,
            bh,
            x + bw / 2.0,
            (hgt - bh + 10.0).max(10.0),
            x + bw / 2.0,
            hgt + 30.0
        );
    }
    s.push_str("</svg>");
    s
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} ms", us as f64 / 1000.0)
    }
}

/// Why a run in which no device ever connected measured nothing (`None`: some device
/// connected, or there were none to connect). Such a run fails (exit 1) with its report.
pub fn nothing_connected(report: &Report) -> Option<String> {
    if report.connects > 0 || report.devices == 0 {
        return None;
    }
    let failed: u64 = report.failures.values().sum();
    let why = if failed > 0 {
        let kinds: Vec<String> = report.failures.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        format!("every connect attempt failed ({})", kinds.join(", "))
    } else if report.operator_link_losses > 0 {
        format!(
            "the devices boot once the fleet's operator client has connected and subscribed, and it lost its \
             link {} times",
            report.operator_link_losses
        )
    } else {
        "no connect attempt failed either: --for may end before the devices' first connect (about 3.5 s after \
         boot)"
            .to_string()
    };
    Some(format!(
        "no device connected in {:.1} s of fleet time ({} devices): nothing was measured; {why}",
        report.run_seconds, report.devices
    ))
}

/// One `--slo` term.
#[derive(Debug, Clone, PartialEq)]
pub enum Slo {
    /// A latency percentile below a bound: `p99<5ms`.
    Latency { quantile: &'static str, below_us: u64 },
    /// A count at most a bound: `unanswered=0`, `connect-failures<=3`.
    AtMost { what: &'static str, limit: u64 },
}

/// An `--slo` value: its terms, all of which must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct SloTerms(pub Vec<Slo>);

impl std::str::FromStr for SloTerms {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_slo(s).map(SloTerms)
    }
}

/// Parses `p99<5ms,unanswered=0,connect-failures=0`.
pub fn parse_slo(text: &str) -> Result<Vec<Slo>, String> {
    let mut out = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let bad = |why: &str| format!("--slo '{term}': {why}");
        if let Some((q, bound)) = term.split_once('<') {
            let quantile = match q {
                "p50" => "p50",
                "p90" => "p90",
                "p99" => "p99",
                "p99.9" | "p999" => "p999",
                "max" => "max",
                _ => return Err(bad("a latency bound is p50|p90|p99|p99.9|max<DURATION")),
            };
            let d = crate::duration::parse_duration(bound.trim_start_matches('=')).map_err(|e| bad(&e))?;
            out.push(Slo::Latency { quantile, below_us: d.as_micros() as u64 });
        } else if let Some((what, n)) = term.split_once('=') {
            let what = match what {
                "unanswered" => "unanswered",
                "connect-failures" => "connect-failures",
                "disconnected" => "disconnected",
                _ => return Err(bad("a count is unanswered|connect-failures|disconnected=N")),
            };
            let limit = n.parse().map_err(|_| bad("the count is a whole number"))?;
            out.push(Slo::AtMost { what, limit });
        } else {
            return Err(bad("expected p99<5ms or unanswered=0"));
        }
    }
    if out.is_empty() {
        return Err("--slo: empty".into());
    }
    Ok(out)
}

/// The terms `report` misses, each with what was measured.
pub fn check_slo(report: &Report, slo: &[Slo]) -> Vec<String> {
    let mut missed = Vec::new();
    for term in slo {
        match term {
            Slo::Latency { quantile, below_us } => {
                let l = &report.latency_us;
                let got = match *quantile {
                    "p50" => l.p50,
                    "p90" => l.p90,
                    "p99" => l.p99,
                    "p999" => l.p999,
                    _ => l.max,
                };
                if got >= *below_us || l.count == 0 {
                    missed.push(format!(
                        "{quantile} command latency {} is not below {} ({} replies measured)",
                        ms(got),
                        ms(*below_us),
                        l.count
                    ));
                }
            }
            Slo::AtMost { what, limit } => {
                let got = match *what {
                    "unanswered" => report.commands_sent - report.commands_answered.min(report.commands_sent),
                    "connect-failures" => report.failures.values().sum(),
                    _ => report.devices - report.connected.min(report.devices),
                };
                if got > *limit {
                    missed.push(format!("{what} is {got}, more than {limit}"));
                }
            }
        }
    }
    missed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_exactly() {
        let mut h = new_histogram();
        for v in [120u64, 450, 451, 9_000, 1_200_000] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(Percentiles::of(&back), Percentiles::of(&h));
        assert!(decode_histogram("!!").unwrap_err().contains("base64"));
    }

    #[test]
    fn slo_terms_parse_and_fail_when_missed() {
        let slo = parse_slo("p99<5ms,unanswered=0,connect-failures=0").unwrap();
        let mut r = Report { devices: 10, connected: 10, commands_sent: 5, commands_answered: 5, ..Report::default() };
        r.latency_us = Percentiles { count: 5, p50: 100, p90: 200, p99: 4_000, p999: 4_000, max: 4_000 };
        assert!(check_slo(&r, &slo).is_empty());
        r.latency_us.p99 = 5_000;
        r.commands_answered = 4;
        let missed = check_slo(&r, &slo);
        assert_eq!(missed.len(), 2, "{missed:?}");
        assert!(missed[0].starts_with("p99 command latency 5.00 ms is not below 5.00 ms"), "{missed:?}");
        assert_eq!(missed[1], "unanswered is 1, more than 0");
        // No replies at all cannot meet a latency bound.
        r.latency_us = Percentiles::default();
        assert_eq!(check_slo(&r, &slo[..1]).len(), 1);
        assert!(parse_slo("p98<5ms").unwrap_err().contains("p50|p90|p99"));
        assert!(parse_slo("lost=x").unwrap_err().contains("unanswered"));
        assert!(parse_slo("").is_err());
    }

    #[test]
    fn the_html_page_is_self_contained_and_shows_both_plots() {
        let mut h = new_histogram();
        for v in [300u64, 400, 2_000] {
            h.record(v).unwrap();
        }
        let r = Report {
            target: "virtual <x>".into(),
            devices: 3,
            connects_per_second: vec![0, 0, 0, 3],
            histograms: Histograms { latency_us: encode_histogram(&h), connect_us: String::new() },
            ..Report::default()
        };
        let page = r.html();
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("virtual &lt;x&gt;"), "the target is escaped");
        assert_eq!(page.matches("<svg").count(), 2);
        assert!(page.contains("<title>3 s: 3 connects</title>"), "{page}");
        assert!(page.contains(">p50</text>") && page.contains(">p99.99</text>"), "{page}");
        assert!(!page.contains("<script") && !page.contains("http"), "no script, no outside file");
        let empty = Report::default().html();
        assert!(empty.contains("No command was answered."));
    }
}
