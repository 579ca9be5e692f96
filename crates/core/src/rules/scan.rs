//! The rules' sensor walk: `RulesEvery100ms` -> `GetNextSensor` (xdrv_10_rules.ino and
//! support.ino of 14.2.0, s-hadinger/Tasmota 43a8e2464).
//!
//! On every 100 ms tick, while a rule set is on, the engine is idle and uptime is past
//! 4 s, `GetNextSensor` takes one step: with `sensor_set` 0 it waits for `start_time` and
//! then sets it a second on (`SetNextTimeInterval`); with 1 it calls the next xsns
//! driver's `FUNC_JSON_APPEND` and the rules get `{"AM2301":{...}}` as an event (no
//! `Tele-`), or, past the last driver, moves to 2; with 2 it walks the xdrv drivers (none
//! of the simulated hardware appends) and goes back to 0.
//!
//! The walk's position is a function of time alone while it runs, so the device does not
//! wake for steps that cannot be seen: [`Scan::catch_up`] replays them (whole seconds at a
//! time) when the device next looks, and only a step that hands the rules a driver some
//! enabled rule names is a deadline. A device without an enabled rule or without sensors
//! has no deadline at all.

use crate::time::Instant;

/// Uptime must be past 4 s (`TasmotaGlobal.uptime > 4`); the 1 s tick that makes it 5
/// runs after the 100 ms tick of the same instant, so the first step is at 5.1 s.
const FIRST_STEP_MS: u64 = 5100;

/// `GetNextSensor`'s statics and the next 100 ms tick not yet applied.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scan {
    /// `sensor_set`.
    set: u8,
    /// `start_time`.
    start: Instant,
    /// `xsns_index`, as a place in the device's driver list.
    next: u8,
    /// The first 100 ms tick not yet applied.
    tick: Instant,
}

impl Default for Scan {
    fn default() -> Self {
        Scan { set: 0, start: Instant::from_millis(0), next: 0, tick: Instant::from_millis(0) }
    }
}

/// The first tick of the boot-time 100 ms grid at or after `t`.
fn on_grid(boot: Instant, t: Instant) -> Instant {
    boot.plus_millis(t.millis_since(boot).div_ceil(100) * 100)
}

impl Scan {
    /// The next tick at which a step does something (the ticks waiting for `start_time`
    /// do nothing).
    fn next_step(&self, boot: Instant) -> Instant {
        let mut t = on_grid(boot, self.tick.max(boot.plus_millis(FIRST_STEP_MS)));
        if self.set == 0 {
            t = t.max(on_grid(boot, self.start));
        }
        t
    }

    /// Applies the step at tick `t`; the driver (a place in the list of `drivers`)
    /// whose JSON this step hands to the rules, if any.
    fn step(&mut self, t: Instant, drivers: usize) -> Option<usize> {
        self.tick = t.plus_millis(1);
        match self.set {
            0 => {
                if t >= self.start {
                    // SetNextTimeInterval(start_time, 1000).
                    let next = self.start.plus_millis(1000);
                    self.start = if next > t {
                        next
                    } else if t.millis_since(next) > 1000 {
                        t.plus_millis(1000)
                    } else {
                        t.plus_millis(1000 - t.millis_since(next))
                    };
                    self.set = 1;
                }
                None
            }
            1 => {
                let i = usize::from(self.next);
                if i < drivers {
                    self.next += 1;
                    Some(i)
                } else {
                    self.next = 0;
                    self.set = 2;
                    None
                }
            }
            _ => {
                self.set = 0;
                None
            }
        }
    }

    /// Applies every step before `until` (the walk ran all that time).
    pub fn catch_up(&mut self, boot: Instant, until: Instant, drivers: usize) {
        loop {
            let t = self.next_step(boot);
            if t >= until {
                return;
            }
            // A whole second from a start on the grid comes back to the same state a
            // second later (the walk takes drivers + 3 < 10 ticks): skip such seconds.
            if self.set == 0 && t == self.start {
                let seconds = until.millis_since(t) / 1000;
                if seconds > 1 {
                    self.start = self.start.plus_millis(1000 * (seconds - 1));
                    self.tick = self.start;
                    continue;
                }
            }
            self.step(t, drivers);
        }
    }

    /// The next tick at which the walk hands the rules a driver `wanted` says matters,
    /// and that driver; `None` when a whole walk has none.
    pub fn next_event(
        &self,
        boot: Instant,
        drivers: usize,
        wanted: impl Fn(usize) -> bool,
    ) -> Option<(Instant, usize)> {
        let mut scan = *self;
        // From wherever it is, two starts cover a whole walk.
        let mut starts = 0;
        while starts < 3 {
            let t = scan.next_step(boot);
            if scan.set == 0 {
                starts += 1;
            }
            if let Some(i) = scan.step(t, drivers) {
                if wanted(i) {
                    return Some((t, i));
                }
            }
        }
        None
    }

    /// Applies the step at `t` (a tick [`Scan::next_event`] gave, the steps before it
    /// caught up); the driver it hands the rules, if any.
    pub fn step_at(&mut self, boot: Instant, t: Instant, drivers: usize) -> Option<usize> {
        self.catch_up(boot, t, drivers);
        (self.next_step(boot) == t).then(|| self.step(t, drivers)).flatten()
    }

    /// The walk starts (again) at `now`: the ticks before did not run it.
    pub fn resume(&mut self, now: Instant) {
        self.tick = self.tick.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Tick by tick, as the firmware runs it.
    fn every_tick(until: u64, drivers: usize) -> (Scan, alloc::vec::Vec<(u64, usize)>) {
        let mut s = Scan::default();
        let mut seen = alloc::vec::Vec::new();
        let mut t = FIRST_STEP_MS;
        while t < until {
            if s.next_step(at(0)) == at(t) {
                if let Some(i) = s.step(at(t), drivers) {
                    seen.push((t, i));
                }
            }
            t += 100;
        }
        (s, seen)
    }

    #[test]
    fn one_driver_per_tick_after_each_start() {
        let (_, seen) = every_tick(7_000, 2);
        assert_eq!(seen, [(5_200, 0), (5_300, 1), (6_200, 0), (6_300, 1)]);
    }

    #[test]
    fn catching_up_lands_where_ticking_does() {
        for drivers in 0..4 {
            for until in [5_000, 5_150, 5_300, 6_100, 6_250, 17_400, 3_600_050] {
                let (ticked, _) = every_tick(until, drivers);
                let mut jumped = Scan::default();
                jumped.catch_up(at(0), at(until), drivers);
                assert_eq!(
                    (jumped.set, jumped.start, jumped.next, jumped.next_step(at(0))),
                    (ticked.set, ticked.start, ticked.next, ticked.next_step(at(0))),
                    "{drivers} drivers until {until}"
                );
            }
        }
        let s = Scan::default();
        assert_eq!(s.next_event(at(0), 3, |i| i == 2), Some((at(5_400), 2)));
        assert_eq!(s.next_event(at(0), 3, |_| false), None);
    }
}
