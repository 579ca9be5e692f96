//! Backlog (spec §4, `CmndBacklog` and `BacklogLoop`): a FIFO of commands run one per
//! main-loop pass, SetOption34 milliseconds apart unless in no-delay mode.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use crate::time::Instant;

/// Splits Backlog data into entries exactly as `CmndBacklog` does: on `;` (empty entries
/// vanish), except that a `;` inside unbalanced `{}` does not split; each entry trimmed
/// of blanks; leading `Backlog` words stripped (so nested Backlogs flatten); entries that
/// start with `Reset` dropped.
pub fn split(data: &str) -> Vec<String> {
    let pieces: Vec<&str> = data.split(';').filter(|p| !p.is_empty()).collect();
    let mut entries = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let mut entry = String::from(pieces[i]);
        i += 1;
        while i < pieces.len() && entry.matches('{').count() != entry.matches('}').count() {
            entry.push(';');
            entry.push_str(pieces[i]);
            i += 1;
        }
        let mut text = trim_blank(&entry);
        while starts_with_ignore_case(text, "Backlog") {
            text = trim_blank(&text["Backlog".len()..]);
        }
        if !text.is_empty() && !starts_with_ignore_case(text, "Reset") {
            entries.push(String::from(text));
        }
    }
    entries
}

fn trim_blank(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// `strncasecmp(s, prefix, strlen(prefix)) == 0`.
pub fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The Backlog queue and its timer.
#[derive(Clone, Debug, Default)]
pub struct Backlog {
    queue: VecDeque<String>,
    /// `backlog_timer`: the next entry may run at or after this instant.
    pub timer: Instant,
    /// Backlog0 and Backlog2 run their entries with no delay.
    pub nodelay: bool,
    /// Backlog2 and Backlog3 publish no command responses.
    pub no_mqtt_response: bool,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Appends entries to the end of the queue.
    pub fn extend(&mut self, entries: Vec<String>) {
        self.queue.extend(entries);
    }

    /// Empties the queue and gives its memory back; returns whether it held anything.
    pub fn clear(&mut self) -> bool {
        let had = !self.queue.is_empty();
        self.queue = VecDeque::new();
        had
    }

    /// Takes the next command to run, skipping `NoDelay` pseudo-entries. Returns the
    /// command and whether a `NoDelay` came before it.
    pub fn pop(&mut self) -> Option<(String, bool)> {
        let mut nodelay = false;
        let mut next = None;
        while let Some(entry) = self.queue.pop_front() {
            if starts_with_ignore_case(&entry, "NoDelay") {
                nodelay = true;
                continue;
            }
            next = Some((entry, nodelay));
            break;
        }
        if self.queue.is_empty() {
            // Drained: the queue's memory goes back until the next Backlog.
            self.queue = VecDeque::new();
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_trims_and_flattens() {
        assert_eq!(
            split(" Power ON ;;  backlog Backlog Power OFF;Reset 1;ResetX;Delay 10;"),
            ["Power ON", "Power OFF", "Delay 10"]
        );
    }

    #[test]
    fn braces_keep_semicolons() {
        assert_eq!(split("Rule1 ON x DO {a;b} ENDON; Power 1"), ["Rule1 ON x DO {a;b} ENDON", "Power 1"]);
        assert_eq!(split("Json {a;b"), ["Json {a;b"]);
    }

    #[test]
    fn nodelay_entries_are_skipped() {
        let mut b = Backlog::default();
        b.extend(split("NoDelay; Power 1; Power 2"));
        assert_eq!(b.pop(), Some(("Power 1".into(), true)));
        assert_eq!(b.pop(), Some(("Power 2".into(), false)));
        assert_eq!(b.pop(), None);
    }
}
