//! The rules shorthand of a scenario `[[device]]` and a fleet `[[group]]`: the rule sets a
//! device starts with, their flags, and its `Var`s and `Mem`s, without spelling out the
//! settings' `rules` table.
//!
//! ```toml
//! rules = ["ON Power1#State=1 DO Publish stat/%topic%/on 1 ENDON"]   # Rule1..3, in order
//! rules_enabled = [true]          # default: every non-empty set given is on
//! rules_once = [true]             # Rule<n> 5 (default off)
//! rules_stop_on_error = [false]   # Rule<n> 9 (default off)
//! vars = ["5", "", "x"]           # Var1..16 at boot (RAM: a restart clears them)
//! mems = ["22"]                   # Mem1..16 (settings: they persist)
//! ```
//!
//! Each applies on top of the `settings` table (and a profile's settings). A set is
//! stored as `Rule<n> <text>` stores it (`SetRule` of xdrv_10_rules.ino, 14.2.0): up to
//! 511 characters as they are, a longer one only if Unishox compresses it below 510
//! bytes. Every mistake names its place in the file.

use tasmota_core::rules::{MAX_RULE_MEMS, MAX_RULE_SETS, MAX_RULE_VARS};
use tasmota_core::Settings;
use toml::Spanned;

/// A list of the shorthand as TOML gave it (values checked here, so a wrong type is
/// named in the shorthand's words).
pub type RawList = Option<Spanned<Vec<Spanned<toml::Value>>>>;

/// The shorthand fields of a device or group, as read (the raw device and group tables
/// carry the same six fields: `deny_unknown_fields` and toml's `Spanned` do not go
/// through `#[serde(flatten)]`).
#[derive(Default)]
pub struct RulesShorthand {
    pub rules: RawList,
    pub rules_enabled: RawList,
    pub rules_once: RawList,
    pub rules_stop_on_error: RawList,
    pub vars: RawList,
    pub mems: RawList,
}

/// A mistake in the shorthand: where (a byte range of the file) and what.
pub type ShorthandError = (std::ops::Range<usize>, String);

/// `Var1..16` a device starts with.
pub type StartVars = Vec<String>;

impl RulesShorthand {
    /// Applies the shorthand to `settings`; returns the `Var`s the device starts with.
    pub fn apply(self, settings: &mut Settings) -> Result<StartVars, ShorthandError> {
        let texts = strings(&self.rules, "rules", MAX_RULE_SETS, "rule sets (Rule1..3)")?;
        let enabled = flags(&self.rules_enabled, "rules_enabled")?;
        let once = flags(&self.rules_once, "rules_once")?;
        let stop = flags(&self.rules_stop_on_error, "rules_stop_on_error")?;
        let vars = strings(&self.vars, "vars", MAX_RULE_VARS, "Vars (Var1..16)")?;
        let mems = strings(&self.mems, "mems", MAX_RULE_MEMS, "Mems (Mem1..16)")?;
        if let Some(texts) = &texts {
            let r = settings.rules_mut();
            for (i, slot) in r.rules.iter_mut().enumerate() {
                let (text, span) = texts.get(i).cloned().unwrap_or_default();
                if let Err(problem) = tasmota_core::rules::storable(&text) {
                    return Err((span, format!("rules[{i}] (Rule{}): {problem}", i + 1)));
                }
                *slot = text;
            }
            // Without rules_enabled every set given with text is on.
            if enabled.is_none() {
                r.enabled = mask(texts.iter().map(|(t, _)| !t.is_empty()));
            }
        }
        let any_flags = enabled.is_some() || once.is_some() || stop.is_some();
        if any_flags {
            let r = settings.rules_mut();
            for (bits, given) in [(&mut r.enabled, &enabled), (&mut r.once, &once), (&mut r.stop, &stop)] {
                if let Some(list) = given {
                    *bits = mask(list.iter().copied());
                }
            }
        }
        for (field, list) in [("rules_enabled", &self.rules_enabled), ("rules_once", &self.rules_once)] {
            if let Some(l) = list.as_ref().filter(|l| l.get_ref().len() > MAX_RULE_SETS) {
                return Err((
                    l.span(),
                    format!("{field}: {} flags; there are {MAX_RULE_SETS} rule sets", l.get_ref().len()),
                ));
            }
        }
        if let Some(l) = self.rules_stop_on_error.as_ref().filter(|l| l.get_ref().len() > MAX_RULE_SETS) {
            return Err((
                l.span(),
                format!("rules_stop_on_error: {} flags; there are {MAX_RULE_SETS} rule sets", l.get_ref().len()),
            ));
        }
        if let Some(mems) = mems {
            let r = settings.rules_mut();
            for (slot, (text, _)) in r.mems.iter_mut().zip(mems) {
                *slot = text;
            }
        }
        let vars = match vars {
            Some(vars) => {
                for (i, (text, span)) in vars.iter().enumerate() {
                    if text.len() > 32 {
                        return Err((
                            span.clone(),
                            format!(
                                "vars[{i}] (Var{}): {} bytes; a Var keeps at most 32 (char rules_vars[16][33])",
                                i + 1,
                                text.len()
                            ),
                        ));
                    }
                }
                vars.into_iter().map(|(t, _)| t).collect()
            }
            None => Vec::new(),
        };
        Ok(vars)
    }
}

/// Bit n set where the n-th item is true.
fn mask(items: impl Iterator<Item = bool>) -> u8 {
    items.take(MAX_RULE_SETS).enumerate().fold(0, |m, (i, on)| m | (u8::from(on) << i))
}

/// The strings of a list (at most `max`), each with its place.
#[allow(clippy::type_complexity)]
fn strings(
    list: &RawList,
    field: &str,
    max: usize,
    what: &str,
) -> Result<Option<Vec<(String, std::ops::Range<usize>)>>, ShorthandError> {
    let Some(list) = list else { return Ok(None) };
    let mut out = Vec::new();
    for (i, v) in list.get_ref().iter().enumerate() {
        if i == max {
            return Err((v.span(), format!("{field}: at most {max} {what}; this is number {}", i + 1)));
        }
        match v.get_ref() {
            toml::Value::String(s) if s.contains('\0') => {
                return Err((v.span(), format!("{field}[{i}]: holds a NUL, which ends a text in the firmware")));
            }
            toml::Value::String(s) => out.push((s.clone(), v.span())),
            other => {
                return Err((v.span(), format!("{field}[{i}]: expected a string, found {}", other.type_str())));
            }
        }
    }
    Ok(Some(out))
}

/// The booleans of a flag list.
fn flags(list: &RawList, field: &str) -> Result<Option<Vec<bool>>, ShorthandError> {
    let Some(list) = list else { return Ok(None) };
    let mut out = Vec::new();
    for (i, v) in list.get_ref().iter().enumerate() {
        match v.get_ref() {
            toml::Value::Boolean(b) => out.push(*b),
            other => {
                return Err((
                    v.span(),
                    format!("{field}[{i}]: expected true or false (Rule1..3 in order), found {}", other.type_str()),
                ));
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Doc {
        rules: RawList,
        rules_enabled: RawList,
        rules_once: RawList,
        rules_stop_on_error: RawList,
        vars: RawList,
        mems: RawList,
    }

    fn apply(text: &str) -> Result<(Settings, StartVars), (usize, String)> {
        let d: Doc = toml::from_str(text).expect("toml");
        let s = RulesShorthand {
            rules: d.rules,
            rules_enabled: d.rules_enabled,
            rules_once: d.rules_once,
            rules_stop_on_error: d.rules_stop_on_error,
            vars: d.vars,
            mems: d.mems,
        };
        let mut settings = Settings::default();
        s.apply(&mut settings).map(|v| (settings, v)).map_err(|(span, m)| (span.start, m))
    }

    #[test]
    fn rules_flags_vars_and_mems() {
        let (s, vars) = apply(
            "rules = [\"ON System#Boot DO Var2 1 ENDON\", \"\", \"ON Event#x DO Power 1 ENDON\"]\n\
             rules_once = [true]\nvars = [\"5\", \"on\"]\nmems = [\"22\"]\n",
        )
        .unwrap();
        let r = s.rules.as_ref().unwrap();
        assert_eq!(r.rules[0], "ON System#Boot DO Var2 1 ENDON");
        assert_eq!(r.rules[2], "ON Event#x DO Power 1 ENDON");
        assert_eq!((r.enabled, r.once, r.stop), (0b101, 0b001, 0));
        assert_eq!(r.mems[0], "22");
        assert_eq!(vars, vec!["5".to_string(), "on".to_string()]);

        let (s, _) =
            apply("rules = [\"on a do b endon\"]\nrules_enabled = [false]\nrules_stop_on_error = [true]\n").unwrap();
        let r = s.rules.as_ref().unwrap();
        assert_eq!((r.enabled, r.stop), (0, 1));
    }

    #[test]
    fn mistakes_are_named_where_they_are() {
        let text = "rules = [\"a\", \"b\", \"c\", \"d\"]\n";
        let (at, m) = apply(text).unwrap_err();
        assert_eq!(&text[at..at + 3], "\"d\"");
        assert_eq!(m, "rules: at most 3 rule sets (Rule1..3); this is number 4");

        let (_, m) = apply("rules = [\"x\", 5]\n").unwrap_err();
        assert_eq!(m, "rules[1]: expected a string, found integer");

        let (_, m) = apply("rules_enabled = [1]\n").unwrap_err();
        assert_eq!(m, "rules_enabled[0]: expected true or false (Rule1..3 in order), found integer");

        let (_, m) = apply(&format!("vars = [\"{}\"]\n", "v".repeat(33))).unwrap_err();
        assert_eq!(m, "vars[0] (Var1): 33 bytes; a Var keeps at most 32 (char rules_vars[16][33])");

        let (_, m) = apply(&format!("mems = [{}]\n", vec!["\"m\""; 17].join(","))).unwrap_err();
        assert_eq!(m, "mems: at most 16 Mems (Mem1..16); this is number 17");
    }
}
