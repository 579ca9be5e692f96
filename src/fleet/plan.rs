//! What a fleet is made of: groups of devices, from `--devices N` (one group) or a fleet
//! file (`--fleet FILE.toml`).
//!
//! ```toml
//! [[group]]
//! count = 900                       # how many devices
//! profile = "sonoff-basic"          # built-in name, or a profile file (relative to this file)
//! tele_period = 300                 # TelePeriod, seconds (0, or 10..3600)
//!
//! [[group]]
//! count = 100
//! profile = "sonoff-4ch"
//! mac_base = "5C:CF:7F:10:00:00"    # default: right after the previous group's MACs
//! setoptions = { 59 = 1 }           # SetOptions on top of the settings
//! settings = { friendlyname = ["Hall", "", "", "", "", "", "", ""] }  # settings-file fields
//!
//! [[group]]                          # every device of a group runs the same rules
//! count = 50
//! rules = ["ON Mqtt#Connected DO Publish stat/%topic%/up %var1% ENDON"]  # Rule1..3; on unless
//! rules_once = [false]              # rules_enabled = [false, ...] says otherwise
//! vars = ["1"]                      # Var1..16 from boot; mems = [...] for Mem1..16
//! ```
//!
//! The rules shorthand is the scenario device's (`crate::scenario::rules`); the settings'
//! `rules = { rules = [...], enabled = 1, once = 0, stop = 0, mems = [...] }` works too.
//!
//! Every error names the file, the line and column, and the problem.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tasmota_core::{Mac, Settings};

use super::mac_number;
use crate::profile::Profile;
use crate::scenario::line_col;
use crate::scenario::rules::{RawList, RulesShorthand};

/// One group of alike devices.
#[derive(Clone, Debug)]
pub struct Group {
    pub count: usize,
    pub profile: Profile,
    /// The first device's MAC; the group's others count up from it.
    pub mac_base: Mac,
    /// The settings each device starts from (the broker fields are set by the fleet).
    pub settings: Settings,
    /// `Var1..` each device has from its first boot (`vars = [...]`).
    pub vars: Vec<String>,
}

/// The Vars the `global`-th device of the fleet starts with (its group's `vars`).
pub fn start_vars(groups: &[Group], global: usize) -> &[String] {
    let mut first = 0;
    for g in groups {
        if global < first + g.count {
            return &g.vars;
        }
        first += g.count;
    }
    &[]
}

/// The largest fleet one process plans.
pub const MAX_DEVICES: usize = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    group: Vec<toml::Spanned<RawGroup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    count: toml::Spanned<i64>,
    profile: Option<toml::Spanned<String>>,
    mac_base: Option<toml::Spanned<String>>,
    tele_period: Option<toml::Spanned<i64>>,
    settings: Option<toml::Spanned<Settings>>,
    setoptions: Option<toml::Spanned<std::collections::BTreeMap<String, u32>>>,
    /// The rules shorthand, as a scenario device has it (`crate::scenario::rules`).
    rules: RawList,
    rules_enabled: RawList,
    rules_once: RawList,
    rules_stop_on_error: RawList,
    vars: RawList,
    mems: RawList,
}

/// A fleet file that cannot be used: the file, where, and why.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct PlanError {
    pub path: PathBuf,
    pub at: Option<(usize, usize)>,
    pub message: String,
}

/// One group from the command line's `--devices`, `--profile`, `--mac-base`, `--tele-period`.
pub fn single(
    count: usize,
    profile: Profile,
    mac_base: Mac,
    tele_period: Option<u16>,
    setoptions: &[SetOption],
) -> Result<Group, String> {
    let mut settings = profile.initial_settings();
    if let Some(tp) = tele_period {
        check_tele_period(i64::from(tp)).map_err(|e| format!("--tele-period {tp}: {e}"))?;
        settings.tele_period = tp;
    }
    for o in setoptions {
        settings.set_option(o.number, o.value);
    }
    tasmota_core::limits::check(&settings).map_err(|e| format!("--setoption: {e}"))?;
    Ok(Group { count, profile, mac_base, settings, vars: Vec::new() })
}

/// A `--setoption N=V`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOption {
    pub number: u32,
    pub value: u32,
}

impl std::str::FromStr for SetOption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}': expected N=VALUE with a SetOption number 0..177, like 59=1");
        let (n, v) = s.split_once('=').ok_or_else(bad)?;
        let number: u32 = n.trim().trim_start_matches("SetOption").parse().map_err(|_| bad())?;
        if tasmota_core::settings::OptionSlot::of(number).is_none() {
            return Err(bad());
        }
        let value = v.trim().parse().map_err(|_| format!("'{s}': '{v}' is not a whole number"))?;
        Ok(SetOption { number, value })
    }
}

fn check_tele_period(tp: i64) -> Result<u16, String> {
    match tp {
        0 | 10..=3600 => Ok(tp as u16),
        _ => Err("TelePeriod is 0 or 10..3600 seconds (CmndTeleperiod)".into()),
    }
}

/// Reads a fleet file.
pub fn load(path: &Path) -> Result<Vec<Group>, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError {
        path: path.to_path_buf(),
        at: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// Parses fleet-file text; `path` names it in errors and is where relative profile
/// paths are looked up.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Group>, PlanError> {
    let err = |span: Option<std::ops::Range<usize>>, message: String| PlanError {
        path: path.to_path_buf(),
        at: span.map(|s| line_col(text, s.start)),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| err(e.span(), e.message().trim_end().to_string()))?;
    if raw.group.is_empty() {
        return Err(err(None, "no [[group]]: a fleet needs at least one group".into()));
    }
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut groups: Vec<Group> = Vec::new();
    let mut next_mac = Mac([0x5C, 0xCF, 0x7F, 0, 0, 0]);
    let mut total = 0usize;
    for g in raw.group {
        let span = g.span();
        let g = g.into_inner();
        let count = *g.count.get_ref();
        if count < 1 {
            return Err(err(Some(g.count.span()), format!("count {count}: a group has at least 1 device")));
        }
        total = total.saturating_add(count as usize);
        if total > MAX_DEVICES {
            return Err(err(Some(g.count.span()), format!("more than {MAX_DEVICES} devices in all")));
        }
        let profile = match &g.profile {
            None => Profile::load(crate::profile::DEFAULT),
            Some(p) => {
                let name = p.get_ref();
                let is_path = name.contains('/') || name.ends_with(".toml");
                let target = if is_path { base_dir.join(name).to_string_lossy().into_owned() } else { name.clone() };
                Profile::load(&target)
            }
        }
        .map_err(|e| err(g.profile.as_ref().map(|p| p.span()), format!("profile: {e}")))?;
        let mac_base = match &g.mac_base {
            Some(m) => m.get_ref().parse::<Mac>().map_err(|e| err(Some(m.span()), format!("mac_base: {e}")))?,
            None => next_mac,
        };
        let first = mac_number(mac_base);
        let last = first + count as u64 - 1;
        if last >= 1 << 48 {
            return Err(err(Some(span), "the group's MACs run past FF:FF:FF:FF:FF:FF".into()));
        }
        if let Some(other) = groups.iter().position(|o| {
            let (a, b) = (mac_number(o.mac_base), mac_number(o.mac_base) + o.count as u64 - 1);
            first <= b && a <= last
        }) {
            return Err(err(
                Some(span),
                format!("its MACs overlap group {}'s: two devices would share a MAC and a topic", other + 1),
            ));
        }
        next_mac = super::mac_of(mac_base, count as usize);
        let mut settings = match g.settings {
            Some(s) => s.into_inner(),
            None => profile.initial_settings(),
        };
        if let Some(opts) = &g.setoptions {
            for (k, v) in opts.get_ref() {
                match k.parse::<u32>() {
                    Ok(n) if tasmota_core::settings::OptionSlot::of(n).is_some() => settings.set_option(n, *v),
                    _ => {
                        return Err(err(
                            Some(opts.span()),
                            format!("setoptions: '{k}' is not a SetOption number (0..177)"),
                        ))
                    }
                }
            }
        }
        if let Some(tp) = &g.tele_period {
            settings.tele_period =
                check_tele_period(*tp.get_ref()).map_err(|e| err(Some(tp.span()), format!("tele_period: {e}")))?;
        }
        let shorthand = RulesShorthand {
            rules: g.rules,
            rules_enabled: g.rules_enabled,
            rules_once: g.rules_once,
            rules_stop_on_error: g.rules_stop_on_error,
            vars: g.vars,
            mems: g.mems,
        };
        let vars = shorthand.apply(&mut settings).map_err(|(at, message)| err(Some(at), message))?;
        tasmota_core::limits::check(&settings).map_err(|e| err(Some(span.clone()), format!("settings: {e}")))?;
        groups.push(Group { count: count as usize, profile, mac_base, settings, vars });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Group>, PlanError> {
        parse(text, Path::new("fleet.toml"))
    }

    #[test]
    fn setoptions_from_the_command_line() {
        assert_eq!("59=1".parse::<SetOption>(), Ok(SetOption { number: 59, value: 1 }));
        assert!("200=1".parse::<SetOption>().unwrap_err().contains("0..177"));
        assert!("59".parse::<SetOption>().is_err());
        let g =
            single(2, Profile::load("sonoff-basic").unwrap(), Mac::DEFAULT, None, &["59=1".parse().unwrap()]).unwrap();
        assert!(g.settings.flag(59));
    }

    #[test]
    fn groups_follow_one_another() {
        let g = parse_str(
            "[[group]]\ncount = 3\ntele_period = 60\n\n[[group]]\ncount = 2\nprofile = \"sonoff-4ch\"\nsetoptions = { 59 = 1 }\n",
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].settings.tele_period, 60);
        assert_eq!(g[1].mac_base.to_string(), "5C:CF:7F:00:00:03");
        assert_eq!(g[1].profile.hardware.relays, 4);
        assert!(g[1].settings.flag(59));
    }

    #[test]
    fn a_group_carries_rules_and_a_rule_too_long_is_refused() {
        let g = parse_str(
            "[[group]]\ncount = 2\nsettings = { rules = { rules = [\"ON System#Boot DO Var1 1 ENDON\", \"\", \"\"], enabled = 1, once = 1 } }\n",
        )
        .unwrap();
        let r = g[0].settings.rules.as_ref().expect("rules");
        assert_eq!((r.rules[0].as_str(), r.enabled, r.once), ("ON System#Boot DO Var1 1 ENDON", 1, 1));
        // 600 bytes that Unishox cannot squeeze below 510: SetRule would refuse them.
        let long = crate::scenario::file::tests::incompressible();
        let e = parse_str(&format!(
            "[[group]]\ncount = 1\nsettings = {{ rules = {{ rules = [\"{long}\", \"\", \"\"] }} }}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("rules.rules[0]"), "{e}");
    }

    #[test]
    fn errors_name_the_line_column_and_problem() {
        let e = parse_str("[[group]]\ncount = 0\n").unwrap_err();
        assert_eq!(e.to_string(), "fleet.toml:2:9: count 0: a group has at least 1 device");
        let e = parse_str("[[group]]\ncount = 2\ntele_period = 5\n").unwrap_err();
        assert!(e.to_string().starts_with("fleet.toml:3:15: tele_period: TelePeriod is 0 or 10..3600"), "{e}");
        let e = parse_str("[[group]]\ncount = 2\nprofile = \"toaster\"\n").unwrap_err();
        assert!(e.to_string().starts_with("fleet.toml:3:11: profile: "), "{e}");
        let e = parse_str("[[group]]\ncount = 2\ncolour = 1\n").unwrap_err();
        assert!(e.to_string().starts_with("fleet.toml:3:1: unknown field `colour`"), "{e}");
        let e =
            parse_str("[[group]]\ncount = 5\n[[group]]\ncount = 1\nmac_base = \"5C:CF:7F:00:00:04\"\n").unwrap_err();
        assert!(e.to_string().contains("overlap group 1's"), "{e}");
        let e = parse_str("[[group]]\ncount = 1\nsettings = { mqtt_topic = \"\" }\n").unwrap_err();
        assert!(e.to_string().contains("settings: field mqtt_topic: is empty"), "{e}");
        assert_eq!(parse_str("").unwrap_err().message, "no [[group]]: a fleet needs at least one group");
        let missing = load(Path::new("/nonexistent/fleet.toml")).unwrap_err();
        assert!(missing.to_string().starts_with("/nonexistent/fleet.toml: cannot read: "), "{missing}");
    }
}
