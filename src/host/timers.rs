//! The devices' timers as one queue, so that waking a device costs what that device's
//! timer costs, not what the whole fleet or world holds.
//!
//! Each device has at most one due time (its core's `poll_timeout`, re-read after every
//! input it had). The heap keeps `(due, device)` entries earliest first, the lower
//! device index first at the same instant; an entry whose device has since been given
//! another due time (or none) is stale and skipped when it surfaces. When stale entries
//! outnumber the devices, the heap is rebuilt from the due times.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

/// Every device's next timer, earliest first.
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Each device's due time as last set (`None`: no timer, or it was taken).
    due: Vec<Option<Instant>>,
}

impl Timers {
    /// Timers for `devices` devices, none of them set.
    pub fn new(devices: usize) -> Timers {
        Timers { heap: BinaryHeap::new(), due: vec![None; devices] }
    }

    /// Device `device` next needs its timer handled `at` (`None`: never, until set again).
    pub fn set(&mut self, device: usize, at: Option<Instant>) {
        if self.due[device] == at {
            return;
        }
        self.due[device] = at;
        if let Some(t) = at {
            self.heap.push(Reverse((t, device)));
            if self.heap.len() > 2 * self.due.len() + 64 {
                self.compact();
            }
        }
    }

    /// The earliest due time of any device.
    pub fn earliest(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, d))) = self.heap.peek().copied() {
            if self.due[d] == Some(t) {
                return Some(t);
            }
            self.heap.pop();
        }
        None
    }

    /// A device whose timer is due at `now` (the earliest first, then by index), taken
    /// off the queue: set it again after handling it.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let t = self.earliest()?;
        if t > now {
            return None;
        }
        let Reverse((_, d)) = self.heap.pop()?;
        self.due[d] = None;
        Some(d)
    }

    /// Drops every stale entry.
    fn compact(&mut self) {
        self.heap = self.due.iter().enumerate().filter_map(|(d, t)| t.map(|t| Reverse((t, d)))).collect();
    }

    /// How many entries the heap holds, stale ones included.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn all_due(t: &mut Timers, now: Instant) -> Vec<usize> {
        std::iter::from_fn(|| t.pop_due(now)).collect()
    }

    #[test]
    fn a_stale_entry_is_skipped() {
        let t0 = Instant::now();
        let mut t = Timers::new(2);
        t.set(0, Some(t0 + Duration::from_secs(1)));
        // Device 0's timer moves later: its entry at 1 s is stale.
        t.set(0, Some(t0 + Duration::from_secs(5)));
        t.set(1, Some(t0 + Duration::from_secs(3)));
        assert_eq!(t.earliest(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(all_due(&mut t, t0 + Duration::from_secs(2)), Vec::<usize>::new());
        assert_eq!(all_due(&mut t, t0 + Duration::from_secs(3)), [1]);
        // A timer cleared is never due.
        t.set(0, None);
        assert_eq!(t.earliest(), None);
        assert_eq!(all_due(&mut t, t0 + Duration::from_secs(60)), Vec::<usize>::new());
    }

    #[test]
    fn devices_due_at_one_instant_all_run_in_device_order() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_millis(3500);
        let mut t = Timers::new(4);
        for d in [3, 1, 0, 2] {
            t.set(d, Some(at));
        }
        t.set(2, Some(t0 + Duration::from_millis(3000)));
        assert_eq!(all_due(&mut t, at), [2, 0, 1, 3]);
        // Taken off the queue: not due again until set again.
        assert_eq!(t.earliest(), None);
        t.set(1, Some(at));
        assert_eq!(all_due(&mut t, at), [1]);
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let t0 = Instant::now();
        let mut t = Timers::new(3);
        // One busy device whose timer moves on every input, far in the future.
        for ms in 0..10_000u64 {
            t.set(0, Some(t0 + Duration::from_millis(100_000 + ms)));
        }
        t.set(2, Some(t0 + Duration::from_millis(50)));
        assert!(t.entries() <= 2 * 3 + 64 + 1, "{} entries", t.entries());
        assert_eq!(all_due(&mut t, t0 + Duration::from_secs(1_000)), [2, 0]);
    }
}
