//! The device's timers, as one table, and the scheduling built on it.
//!
//! Every deadline the device keeps is a [`Timer`]; [`Timer::spec`] says, in one `match`,
//! when each is due, what runs then and whether it means work is under way.
//! [`Device::poll_timeout`] is the table's minimum, [`Device::handle_timeout`] runs what
//! is due, and [`Device::is_busy`] and the quiet-tick check read the table too; nothing
//! else lists timers. Adding a timer is a variant here, its place in [`Timer::VALUES`] and
//! its arm in [`Timer::spec`] (a variant missing from `VALUES` is never constructed, which
//! the `dead_code` lint turns into a build error under `-D warnings`).

use super::{next_interval, Device};
use crate::setoption as so;
use crate::telemetry::TELE_PERIOD_UNSET;
use crate::time::Instant;

/// How far ahead [`Device::poll_timeout`] looks for a visible tick, in seconds.
const QUIET_LOOKAHEAD_S: u32 = 3600;

/// A deadline the device keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The next Backlog entry (`backlog_timer`).
    Backlog,
    /// The rules' 50 ms tick, while it has an event to give (`RulesEvery50ms`).
    Rules,
    /// A PulseTime runs out, on the 100 ms ticks (`pulse_timer`).
    Pulse,
    /// The next blink step, on the 100 ms ticks (`blink_timer`).
    Blink,
    /// The rules' sensor walk on the 100 ms ticks, while a set is on and the device has
    /// sensors (`RulesEvery100ms`, after `Every100mSeconds`).
    RulesSensors,
    /// The multi-press window of a button closes (`DOUBLE_CLICK_WINDOW`).
    ButtonWindow,
    /// The MQTT client's CONNACK, keepalive or ping deadline (PubSubClient's `loop()`).
    MqttClient,
    /// The 250 ms tick of the main loop (`Every250mSeconds`).
    Tick,
}

/// What a [`Timer`] is.
struct Spec {
    /// When the timer is next due; `None` while it is not armed.
    due: fn(&Device) -> Option<Instant>,
    /// What runs when it is due, with the device's clock at the deadline.
    run: fn(&mut Device),
    /// Whether the timer, while armed, is work under way ([`Device::is_busy`]): the 250 ms
    /// tick and the MQTT client's deadlines run forever and are not.
    busy: bool,
}

impl Timer {
    /// Every timer, in the order timers due at the same instant run: the firmware's loop
    /// order, which the transcripts depend on.
    pub(crate) const VALUES: [Timer; 8] = [
        Timer::Backlog,
        Timer::Rules,
        Timer::Pulse,
        Timer::Blink,
        Timer::RulesSensors,
        Timer::ButtonWindow,
        Timer::MqttClient,
        Timer::Tick,
    ];

    /// The timer table.
    fn spec(self) -> Spec {
        match self {
            Timer::Backlog => Spec {
                due: |d| (!d.backlog.is_empty()).then_some(d.backlog.timer),
                run: Device::backlog_loop,
                busy: true,
            },
            Timer::Rules => Spec { due: Device::rules_50ms_due, run: Device::rules_every_50ms, busy: true },
            Timer::Pulse => Spec {
                due: Device::pulse_due,
                run: |d| {
                    d.scheduled_at = Some(d.now);
                    d.pulse_loop();
                },
                busy: true,
            },
            Timer::Blink => {
                let run = |d: &mut Device| {
                    d.scheduled_at = Some(d.now);
                    d.blink_loop();
                };
                Spec { due: |d| (d.blink.mask != 0).then(|| d.blink_due()), run, busy: true }
            }
            Timer::RulesSensors => Spec {
                due: Device::rules_100ms_due,
                run: |d| {
                    d.scheduled_at = Some(d.now);
                    d.rules_every_100ms();
                },
                busy: false,
            },
            Timer::ButtonWindow => Spec { due: Device::button_due, run: Device::button_window_closed, busy: true },
            Timer::MqttClient => Spec {
                due: |d| d.mqtt.client.poll_timeout(),
                run: |d| {
                    let now = d.now;
                    d.mqtt.client.handle_timeout(now);
                    d.drain_client();
                },
                busy: false,
            },
            Timer::Tick => Spec {
                due: |d| Some(d.next_tick),
                run: |d| {
                    d.next_tick = next_interval(d.next_tick, 250);
                    d.scheduled_at = Some(d.now);
                    d.every_250ms();
                },
                busy: false,
            },
        }
    }
}

impl Device {
    /// When `timer` is next due; `None` while it is not armed.
    pub(crate) fn deadline(&self, timer: Timer) -> Option<Instant> {
        (timer.spec().due)(self)
    }

    /// Whether something is still under way: a pending restart, a busy timer armed (a
    /// Backlog, a blink, a button's multi-press window), or a switch that moved during
    /// the hold-off after boot.
    pub fn is_busy(&self) -> bool {
        !self.halted
            && (self.restart_flag != 0
                || self.switch_pending()
                || self.rule_timer_armed()
                || Timer::VALUES.into_iter().any(|t| t.spec().busy && self.deadline(t).is_some()))
    }

    /// When the device next needs [`Device::handle_timeout`]: the earliest deadline of its
    /// timers, never before [`Device::now`]; `None` once it has stopped
    /// ([`Device::is_stopped`]: after [`Output::Restart`](crate::Output::Restart)).
    ///
    /// Read it again after every input and every `handle_timeout`, once the outputs are
    /// drained: any input can arm, move or disarm a timer. When it equals `now()` (timers
    /// due at the instant of an input run after that input), call `handle_timeout` at once.
    ///
    /// The 250 ms ticks that can give the driver nothing (see `next_visible_tick`) are left
    /// out: they still run, in order and each at its own instant, when the driver next calls
    /// in, so skipping them changes only the number of wake-ups.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted {
            return None;
        }
        let wake = |timer| match timer {
            Timer::Tick => Some(self.next_visible_tick()),
            timer => self.deadline(timer),
        };
        Some(self.earliest(wake))
    }

    /// Runs every timer due at or before `now`, each at its own instant, one main-loop
    /// pass at a time; then the device's time is `now`.
    ///
    /// Call it at or after the instant [`Device::poll_timeout`] gave, then drain
    /// [`Device::poll_output`] and read `poll_timeout` again. Calling late is fine: what
    /// was due in between runs with the device's clock at each deadline, so the console
    /// lines and bytes are the same (only they reach the driver later). Calling early is
    /// harmless: nothing runs, the clock moves to `now`. A `now` before [`Device::now`]
    /// runs nothing and leaves the clock where it is.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_due(now);
        self.advance(now);
    }

    /// The earliest of the timers' instants as `wake` gives them, never before the
    /// device's time.
    fn earliest(&self, wake: impl Fn(Timer) -> Option<Instant>) -> Instant {
        Timer::VALUES.into_iter().filter_map(wake).min().map_or(self.now, |t| t.max(self.now))
    }

    /// Runs every timer due at or before `until` in time order, with the device's clock
    /// set to each timer's instant, so a driver that calls in late (or skips the quiet
    /// ticks [`Device::poll_timeout`] leaves out) gets the same transcript. Timers due at
    /// one instant run in [`Timer::VALUES`] order, each checked just before it runs.
    pub(crate) fn run_due(&mut self, until: Instant) {
        // Passes at one instant are bounded only to turn a bug into a stop, not a hang.
        let mut passes_here = 0u32;
        while !self.halted {
            let at = self.earliest(|timer| self.deadline(timer));
            if at > until {
                return;
            }
            if at > self.now {
                self.now = at;
                passes_here = 0;
            }
            passes_here += 1;
            if passes_here > 100_000 {
                return;
            }
            for timer in Timer::VALUES {
                if self.deadline(timer).is_some_and(|t| t <= self.now) {
                    (timer.spec().run)(self);
                }
            }
        }
    }

    /// The first 250 ms tick that may give the driver something (an output). In the
    /// steady state (network and MQTT up, nothing under way, settings saved) the ticks in
    /// between only count (uptime, TelePeriod, the save countdown): they run, in order,
    /// when the driver next calls in, so a day of idle device needs a few thousand
    /// wake-ups instead of 345,600.
    fn next_visible_tick(&self) -> Instant {
        let steady = self.network_up
            && !self.is_busy()
            && !self.settings_dirty
            && self.discovery_in == 0
            && self.tele_period < TELE_PERIOD_UNSET
            && !self.rules_need_seconds()
            && if self.settings.flag(so::MQTT_ENABLED) {
                self.mqtt.client.connected()
            } else {
                self.initial_connection_state() == 0
            };
        if !steady {
            return self.next_tick;
        }
        // Only phase-1 ticks (once a second) can publish STATE: the m-th from now does.
        let phase = (self.tick_phase + 1) & 3;
        let first = self.next_tick.plus_millis(250 * u64::from((5 - phase) & 3));
        let seconds = match u32::from(self.settings.tele_period) {
            0 => QUIET_LOOKAHEAD_S,
            period => period.saturating_sub(self.tele_period).clamp(1, QUIET_LOOKAHEAD_S + 1) - 1,
        };
        first.plus_millis(1000 * u64::from(seconds))
    }

    /// Runs the timers due strictly before an input at `now` (ticks a driver skipped),
    /// then moves the clock to `now`. Timers due at `now` itself run after the input, on
    /// the driver's next [`Device::handle_timeout`], as they always have.
    pub(crate) fn catch_up(&mut self, now: Instant) {
        if now.as_millis() > 0 {
            self.run_due(Instant::from_millis(now.as_millis() - 1));
        }
        self.advance(now);
    }

    pub(crate) fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }
}
