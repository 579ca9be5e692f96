//! `tasmota-sim fleet merge`: several shards' reports as one fleet's.
//!
//! Exact, not averaged: counts add; the percentiles come from the shards' histograms
//! added together (hdrhistogram `Histogram::add`), never from the shards' percentiles;
//! connects per second add second by second; group commands add their answers; the AWS
//! IoT bill is computed again from the added counts. Memory and CPU per device are the
//! shards' totals over all devices. A fleet's time until all connected is the last
//! shard's (and "never" if one shard never got there).
//!
//! A report counted twice would double its devices, so a shard may appear once; when the
//! reports say they are shards of N, every one of the N must be there (or `--partial`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bill::{self, Metered};
use super::report::{decode_histogram, encode_histogram, new_histogram, Histograms, Percentiles, Report};

/// Which slice of a fleet a report covers: shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    /// `I/N`, 0 ≤ I < N.
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("'{s}': expected I/N with 0 <= I < N, like 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// One report read from a file, and where it came from (for errors).
pub struct Input {
    pub report: Report,
    /// `FILE:LINE`.
    pub place: String,
}

/// Reads every report in `text`: one JSON document, or JSON lines (one report a line, as
/// `kubectl logs` of an Indexed Job's pods gives them). A line that is not a report is an
/// error naming it.
pub fn read_reports(text: &str, file: &str) -> Result<Vec<Input>, String> {
    if let Ok(report) = serde_json::from_str::<Report>(text) {
        return Ok(vec![Input { report, place: format!("{file}:1") }]);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let place = format!("{file}:{}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let report = serde_json::from_str::<Report>(line)
            .map_err(|e| format!("{place}: not a fleet report (tasmota-sim fleet --json): {e}"))?;
        out.push(Input { report, place });
    }
    if out.is_empty() {
        return Err(format!("{file}: no report in it"));
    }
    Ok(out)
}

/// Merges shards' reports into one. `partial`: a set of shards with some missing is
/// merged anyway (and says which are missing).
pub fn merge(inputs: &[Input], partial: bool) -> Result<Report, String> {
    let first = inputs.first().ok_or("no report to merge")?;
    // Which shards are here, each once.
    let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
    let mut count = None;
    let mut unsharded = 0;
    for input in inputs {
        if input.report.shards.is_empty() {
            unsharded += 1;
        }
        for s in &input.report.shards {
            match count {
                None => count = Some(s.count),
                Some(n) if n != s.count => {
                    return Err(format!(
                        "{}: shard {s} is one of {} shards, the others are of {n}: reports of different fleets",
                        input.place, s.count
                    ))
                }
                Some(_) => {}
            }
            if let Some(other) = seen.insert(s.index, &input.place) {
                return Err(format!(
                    "{}: shard {s} is already in {other}: a report merged twice counts its devices twice",
                    input.place
                ));
            }
        }
    }
    if unsharded > 0 && count.is_some() {
        return Err(format!(
            "{}: some reports are shards (--shard) and {unsharded} are whole fleets: they cannot be added up",
            first.place
        ));
    }
    let mut missing = Vec::new();
    if let Some(n) = count {
        missing = (0..n).filter(|i| !seen.contains_key(i)).map(|i| Shard { index: i, count: n }).collect();
        if !missing.is_empty() && !partial {
            let list: Vec<String> = missing.iter().map(Shard::to_string).collect();
            return Err(format!("shards {} of {n} are missing (--partial merges what is there)", list.join(", ")));
        }
    }

    let reports: Vec<&Report> = inputs.iter().map(|i| &i.report).collect();
    let sum = |f: fn(&Report) -> u64| reports.iter().map(|r| f(r)).sum::<u64>();
    let devices = sum(|r| r.devices);
    let mut latency = new_histogram();
    let mut connect = new_histogram();
    for input in inputs {
        let h = &input.report.histograms;
        for (text, into, what) in
            [(&h.latency_us, &mut latency, "latency_us"), (&h.connect_us, &mut connect, "connect_us")]
        {
            let hist = decode_histogram(text).map_err(|e| format!("{}: histograms.{what}: {e}", input.place))?;
            into.add(&hist).map_err(|e| format!("{}: histograms.{what}: {e:?}", input.place))?;
        }
    }
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut connects_per_second: Vec<u64> = Vec::new();
    let mut groups: Vec<super::report::GroupResult> = Vec::new();
    let mut shaped_by: Vec<String> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    for r in &reports {
        for (k, v) in &r.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
        if connects_per_second.len() < r.connects_per_second.len() {
            connects_per_second.resize(r.connects_per_second.len(), 0);
        }
        for (i, n) in r.connects_per_second.iter().enumerate() {
            connects_per_second[i] += n;
        }
        for g in &r.group_commands {
            match groups.iter_mut().find(|m| m.command == g.command && m.at_seconds == g.at_seconds) {
                Some(m) => m.answered += g.answered,
                None => groups.push(g.clone()),
            }
        }
        for s in &r.shaped_by {
            if !shaped_by.contains(s) {
                shaped_by.push(s.clone());
            }
        }
        if !targets.contains(&r.target) {
            targets.push(r.target.clone());
        }
    }
    let run_seconds = reports.iter().map(|r| r.run_seconds).fold(0.0, f64::max);
    let per_device = |f: fn(&Report) -> u64| {
        let total: u64 = reports.iter().map(|r| f(r) * r.devices).sum();
        total.checked_div(devices).unwrap_or(0)
    };
    let aws_iot = match reports.iter().find_map(|r| r.aws_iot.as_ref()) {
        Some(b) => {
            let pricing = bill::Pricing::builtin();
            let region = pricing.region(&b.region)?;
            let metered = Metered {
                messages: reports.iter().filter_map(|r| r.aws_iot.as_ref()).map(|b| b.messages).sum(),
                connection_minutes: reports
                    .iter()
                    .filter_map(|r| r.aws_iot.as_ref())
                    .map(|b| b.connection_minutes)
                    .sum(),
            };
            Some(bill::bill(&pricing, region, metered, run_seconds))
        }
        None => None,
    };
    let mut shards: Vec<Shard> = reports.iter().flat_map(|r| r.shards.iter().copied()).collect();
    shards.sort();
    Ok(Report {
        target: targets.join(", "),
        devices,
        connected: sum(|r| r.connected),
        connect_seconds: reports
            .iter()
            .map(|r| r.connect_seconds)
            .try_fold(0.0f64, |acc, c| c.map(|c| acc.max(c)))
            .filter(|_| missing.is_empty()),
        run_seconds,
        wall_seconds: reports.iter().map(|r| r.wall_seconds).fold(0.0, f64::max),
        commands_sent: sum(|r| r.commands_sent),
        commands_answered: sum(|r| r.commands_answered),
        latency_us: Percentiles::of(&latency),
        connect_latency_us: Percentiles::of(&connect),
        group_commands: groups,
        messages_out: sum(|r| r.messages_out),
        messages_in: sum(|r| r.messages_in),
        connects: sum(|r| r.connects),
        operator_link_losses: sum(|r| r.operator_link_losses),
        // The shards' operators spoke one protocol, or the merge cannot say which.
        operator_protocol: match reports.first().map(|r| r.operator_protocol) {
            Some(p) if reports.iter().all(|r| r.operator_protocol == p) => p,
            _ => None,
        },
        failures,
        connects_per_second,
        rss_bytes_per_device: per_device(|r| r.rss_bytes_per_device),
        cpu_us_per_device: per_device(|r| r.cpu_us_per_device),
        aws_iot,
        shaped_by,
        shards,
        missing_shards: missing,
        histograms: Histograms { latency_us: encode_histogram(&latency), connect_us: encode_histogram(&connect) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard's report holding these latency samples (µs).
    fn shard(index: u32, count: u32, samples: &[u64]) -> Input {
        let mut h = new_histogram();
        for s in samples {
            h.record(*s).unwrap();
        }
        let report = Report {
            target: "mqtt://127.0.0.1:1883".into(),
            devices: 10,
            connected: 10,
            connect_seconds: Some(3.5 + f64::from(index)),
            commands_sent: samples.len() as u64,
            commands_answered: samples.len() as u64,
            latency_us: Percentiles::of(&h),
            connects_per_second: vec![0, 0, 0, 10],
            rss_bytes_per_device: 5_000 + 1_000 * u64::from(index),
            shards: vec![Shard { index, count }],
            histograms: Histograms { latency_us: encode_histogram(&h), connect_us: encode_histogram(&new_histogram()) },
            ..Report::default()
        };
        Input { report, place: format!("r{index}.json:1") }
    }

    #[test]
    fn the_merged_p99_is_the_p99_of_all_samples_in_one_histogram() {
        // Three shards with very different latencies: averaging their p99s (or taking the
        // largest) gives neither the fleet's p99 nor its median.
        let a: Vec<u64> = (1..=1000).map(|i| i * 10).collect(); // 10 µs .. 10 ms
        let b: Vec<u64> = (1..=500).map(|i| 50_000 + i).collect(); // about 50 ms
        let c: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect(); // 1 s .. 100 s
        let merged = merge(&[shard(0, 3, &a), shard(1, 3, &b), shard(2, 3, &c)], false).unwrap();
        let mut all = new_histogram();
        for s in a.iter().chain(&b).chain(&c) {
            all.record(*s).unwrap();
        }
        assert_eq!(merged.latency_us, Percentiles::of(&all));
        assert_eq!(merged.latency_us.count, 1600);
        // What an average of the shards' p99s would have said is far from it.
        let avg = [&a, &b, &c]
            .iter()
            .map(|s| {
                let mut h = new_histogram();
                s.iter().for_each(|v| h.record(*v).unwrap());
                h.value_at_quantile(0.99)
            })
            .sum::<u64>()
            / 3;
        assert!(avg.abs_diff(merged.latency_us.p99) > merged.latency_us.p99 / 2, "avg {avg}");
        assert_eq!((merged.devices, merged.connected, merged.commands_sent), (30, 30, 1600));
        assert_eq!(merged.connects_per_second, [0, 0, 0, 30]);
        assert_eq!(merged.connect_seconds, Some(5.5));
        assert_eq!(merged.rss_bytes_per_device, 6_000);
        assert_eq!(merged.shards.len(), 3);
    }

    #[test]
    fn a_shard_twice_or_one_missing_is_refused() {
        let e = merge(&[shard(0, 2, &[5]), shard(0, 2, &[5])], false).err().unwrap();
        assert!(e.contains("shard 0/2 is already in r0.json:1"), "{e}");
        let e = merge(&[shard(0, 3, &[5]), shard(2, 3, &[5])], false).err().unwrap();
        assert_eq!(e, "shards 1/3 of 3 are missing (--partial merges what is there)");
        let partial = merge(&[shard(0, 3, &[5]), shard(2, 3, &[5])], true).unwrap();
        assert_eq!(partial.missing_shards, [Shard { index: 1, count: 3 }]);
        // Not all connected as far as anyone knows.
        assert_eq!(partial.connect_seconds, None);
        let e = merge(&[shard(0, 2, &[5]), shard(1, 3, &[5])], false).err().unwrap();
        assert!(e.contains("reports of different fleets"), "{e}");
    }

    #[test]
    fn reports_are_read_from_json_lines_and_a_stray_line_is_named() {
        let one = serde_json::to_string(&shard(0, 2, &[5]).report).unwrap();
        let two = serde_json::to_string(&shard(1, 2, &[7]).report).unwrap();
        let read = read_reports(&format!("{one}\n{two}\n"), "pods.jsonl").unwrap();
        assert_eq!(read.iter().map(|i| i.place.as_str()).collect::<Vec<_>>(), ["pods.jsonl:1", "pods.jsonl:2"]);
        let pretty = serde_json::to_string_pretty(&shard(0, 2, &[5]).report).unwrap();
        assert_eq!(read_reports(&pretty, "r.json").unwrap().len(), 1);
        let e = read_reports(&format!("{one}\nfleet: 10 devices on ...\n"), "pods.jsonl").err().unwrap();
        assert!(e.starts_with("pods.jsonl:2: not a fleet report"), "{e}");
    }

    #[test]
    fn shards_parse() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["4/4", "1/0", "a/2", "3"] {
            assert!(bad.parse::<Shard>().unwrap_err().contains("expected I/N"), "{bad}");
        }
    }
}
