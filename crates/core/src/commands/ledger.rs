//! The check of `COMMANDS.md`, the command ledger, against the dispatch tables: every
//! command the ledger marks implemented is dispatched, every dispatched name is in the
//! ledger as implemented, and (with the `vectors` feature) each names a test vector that
//! types it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// One row of the ledger: `| `Name` | yes|no | vector or reason |`.
#[derive(Debug, PartialEq, Eq)]
struct Row<'a> {
    line: usize,
    name: &'a str,
    implemented: bool,
    /// The vector of an implemented command (the third cell, without backticks).
    vector: &'a str,
}

/// The rows of the ledger's tables; a row that does not parse is reported.
fn parse(text: &str) -> Result<Vec<Row<'_>>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
        let (Some(name), Some(flag), Some(third)) = (cells.first(), cells.get(1), cells.get(2)) else {
            return Err(format!("COMMANDS.md:{}: a row needs a command, yes|no and a vector or reason", i + 1));
        };
        let implemented = match *flag {
            "yes" => true,
            "no" => false,
            other => return Err(format!("COMMANDS.md:{}: 'yes' or 'no', got '{other}'", i + 1)),
        };
        rows.push(Row { line: i + 1, name: name.trim_end_matches('`'), implemented, vector: third.trim_matches('`') });
    }
    Ok(rows)
}

/// What differs between the ledger and the dispatched names, one message each.
fn mismatches(rows: &[Row<'_>], dispatched: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if rows[..i].iter().any(|r| r.name.eq_ignore_ascii_case(row.name)) {
            out.push(format!("COMMANDS.md:{}: {} is listed twice", row.line, row.name));
        }
        let in_table = dispatched.contains(&row.name);
        if row.implemented && !in_table {
            out.push(format!(
                "COMMANDS.md:{}: {} is marked implemented but no dispatch table has it",
                row.line, row.name
            ));
        }
        if !row.implemented && dispatched.iter().any(|d| d.eq_ignore_ascii_case(row.name)) {
            out.push(format!("COMMANDS.md:{}: {} is dispatched but marked 'no'", row.line, row.name));
        }
    }
    for name in dispatched {
        if !rows.iter().any(|r| r.implemented && r.name == *name) {
            out.push(format!("{name} is in a dispatch table but not in COMMANDS.md as implemented"));
        }
    }
    out
}

/// Every name the simulator dispatches: both tables' SetOption synonyms and commands.
fn dispatched() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for table in [&super::tasmota::TABLE, &super::mqtt::TABLE, &super::rules::TABLE] {
        let all = table.synonyms.iter().map(|(n, _)| *n).chain(table.commands.iter().map(|(n, _)| *n));
        for n in all {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// `CommandHandler`'s name of a typed line: the command word, uppercased, without its
/// index digits.
#[cfg(feature = "vectors")]
fn typed_command(line: &str) -> Option<String> {
    let (name, _) = crate::grammar::split_line(line)?;
    let upper = name.to_ascii_uppercase();
    Some(String::from(upper.trim_end_matches(|c: char| c.is_ascii_digit())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEDGER: &str = include_str!("../../../../COMMANDS.md");

    #[test]
    fn the_ledger_matches_the_dispatch_tables_both_ways() {
        let rows = parse(LEDGER).unwrap();
        assert!(rows.len() > 150, "the ledger has {} rows", rows.len());
        let problems = mismatches(&rows, &dispatched());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// The check itself: a command added to a table but not to the ledger, one the ledger
    /// marks implemented that no table has, one dispatched but marked 'no', and a
    /// duplicate are each reported.
    #[test]
    fn a_ledger_out_of_step_with_its_table_fails() {
        let ledger = "| `Foo` | yes | `foo-vector` |\n| `Baz` | yes | `baz` |\n| `Qux` | no | not modelled |\n| `foo` | no | twice |\n";
        let rows = parse(ledger).unwrap();
        let problems = mismatches(&rows, &["Foo", "Bar", "Qux"]);
        let text = problems.join("\n");
        assert!(text.contains("Bar is in a dispatch table but not in COMMANDS.md"), "{text}");
        assert!(text.contains("Baz is marked implemented but no dispatch table has it"), "{text}");
        assert!(text.contains("Qux is dispatched but marked 'no'"), "{text}");
        assert!(text.contains("foo is listed twice"), "{text}");
        assert_eq!(problems.len(), 6, "{text}");
        assert!(mismatches(&parse("| `Foo` | yes | `v` |\n").unwrap(), &["Foo"]).is_empty());
        assert!(parse("| `Foo` | maybe | x |\n").is_err());
    }

    /// Each implemented command names a vector that exists and types that command.
    #[cfg(feature = "vectors")]
    #[test]
    fn each_implemented_command_has_a_vector_that_types_it() {
        let mut vectors = Vec::new();
        for (_, text) in crate::vectors::FILES {
            vectors.extend(crate::vectors::parse(text).unwrap());
        }
        let mut problems = Vec::new();
        for row in parse(LEDGER).unwrap().iter().filter(|r| r.implemented) {
            let Some(v) = vectors.iter().find(|v| v.name == row.vector) else {
                problems.push(format!("COMMANDS.md:{}: no vector '{}'", row.line, row.vector));
                continue;
            };
            let typed = v.given.iter().map(String::as_str).chain(v.steps.iter().filter_map(|s| match s {
                crate::vectors::Step::Type(l) => Some(l.as_str()),
                _ => None,
            }));
            let want = row.name.to_ascii_uppercase();
            if !typed.filter_map(typed_command).any(|c| c == want) {
                problems.push(format!("COMMANDS.md:{}: vector '{}' never types {}", row.line, row.vector, row.name));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
