//! Buttons, switches, sensors and the energy monitor: inputs the driver sets and what
//! `tele/<t>/SENSOR` (`MqttShowSensor`) reports of them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::console::LogLevel;
use crate::device::Device;
use crate::hardware::{Model, SensorKind};
use crate::json::escape;
use crate::setoption as so;
use crate::telemetry::iso_time;
use crate::time::Instant;

/// Input and sensor state a device keeps (small: a few words per sensor).
#[derive(Clone, Debug, Default)]
pub(crate) struct Inputs {
    /// Switch states as the switch handler last acted on them (`Switch.last_state`),
    /// bit n for Switch n+1 (1 = closed/ON).
    pub switches: u32,
    /// The switch pins now. They differ from `switches` only during the hold-off after
    /// boot ([`GPIO_HOLD_OFF_S`]), until the handler catches up.
    pub switch_pins: u32,
    /// Per sensor: the walk state of temperature and humidity, and overrides set by the
    /// driver (`sensor` scenario step).
    pub sensors: Vec<SensorState>,
    pub energy: EnergyState,
    /// An open multi-press window: button, presses so far, when it closes.
    pub button_window: Option<(u8, u8, Instant)>,
    /// `IndexSeparator()` when `DhtInit` named the DHT sensors at boot.
    pub index_separator: u8,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SensorState {
    walk: [(u32, i32); 2],
    set: [Option<i32>; 2],
    /// DHT: the driver made reads fail (a wiring fault, a dead sensor).
    read_error: bool,
    /// DHT: a read has succeeded and not been given up since (`Dht[i].t`/`.h` not NAN).
    /// Off at boot: `DhtInit` starts with NAN until the first read, at uptime 4.
    dht_valid: bool,
    /// DHT: failed reads since the last good one (`Dht[i].lastresult`).
    dht_misses: u8,
}

/// `DHT_MAX_RETRY` (xsns_06_dht_v6.ino): after more failed reads than this the values
/// turn NAN, which `%*_f` prints as `null`.
pub(crate) const DHT_MAX_RETRY: u8 = 8;

/// Energy counted since boot, in milliwatt-seconds, and at the last TelePeriod.
#[derive(Clone, Debug, Default)]
pub(crate) struct EnergyState {
    pub counted_mws: u64,
    pub at_last_tele_mws: u64,
    walk: [(u32, i32); 2],
    set: [Option<i32>; 2],
}

/// A sensor driver of the simulated hardware (`xsns_03`, `xsns_05`, `xsns_06`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SensorDriver {
    Energy = 0,
    Ds18x20 = 1,
    Dht = 2,
}

/// `DOUBLE_CLICK_WINDOW`: presses closer than this count as one multi-press.
pub const DOUBLE_CLICK_WINDOW_MS: u64 = 500;

/// Which value of a sensor the driver sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    Temperature,
    Humidity,
    Voltage,
    /// The load's power while the relay is on, watts.
    Power,
}

/// Why [`Device::handle_sensor`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoSuchSensor(pub String);

/// `TaylorLog()` of `support_float.ino`: the firmware's own ln(x), ten terms.
fn taylor_log(x: f32) -> f32 {
    if x <= 0.0 {
        return f32::NAN;
    }
    if x == 1.0 {
        return 0.0;
    }
    let mut z = (x + 1.0) / (x - 1.0);
    let step = ((x - 1.0) * (x - 1.0)) / ((x + 1.0) * (x + 1.0));
    let mut total = 0.0f32;
    let mut powe = 1.0f32;
    for _ in 0..10 {
        z *= step;
        total += (1.0 / powe) * z;
        powe += 2.0;
    }
    total * 2.0
}

/// `CalcTempHumToDew()` (Magnus formula with TaylorLog), °C.
pub fn dew_point(t: f32, h: f32) -> f32 {
    let gamma = taylor_log(h / 100.0) + 17.62 * t / (243.5 + t);
    243.5 * gamma / (17.62 - gamma)
}

/// A thousandths value rounded (half away from zero) to `decimals` digits, as an integer
/// count of 10^-decimals.
fn rounded(milli: i64, decimals: u32) -> i64 {
    let scale = 10i64.pow(3 - decimals.min(3));
    let r = (milli.abs() + scale / 2) / scale;
    if milli < 0 {
        -r
    } else {
        r
    }
}

/// A thousandths value with `decimals` digits, as `dtostrfd` prints it.
pub fn fixed(milli: i64, decimals: u32) -> String {
    let signed = rounded(milli, decimals);
    let rounded = signed.abs();
    let sign = if signed < 0 { "-" } else { "" };
    if decimals == 0 {
        return format!("{sign}{rounded}");
    }
    let unit = 10i64.pow(decimals.min(3));
    format!("{sign}{}.{:0width$}", rounded / unit, rounded % unit, width = decimals as usize)
}

/// `KEY_BUTTON` / `KEY_SWITCH` of `SendKey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Button,
    Switch,
}

/// `ButtonHandler`, `ButtonProbe`, `SwitchHandler` and `SwitchProbe` (support_button.ino,
/// support_switch.ino) return at once while `TasmotaGlobal.uptime < 4` ("Block GPIO for 4
/// seconds after poweron to workaround Wemos D1 / Obi RTS circuit"): a press in that time
/// is never seen, and a switch's new level is acted on only once uptime reaches 4 s,
/// against its level at boot (`SwitchInit` set `last_state` from the pin).
pub(crate) const GPIO_HOLD_OFF_S: u32 = 4;

/// `CLEAR_RETAIN`: SendKey publishes an empty message (ButtonRetain/SwitchRetain 0).
pub(crate) const CLEAR_RETAIN: u32 = 9;

impl Device {
    /// A button was pressed (and released), as `ButtonHandler` sees it: a single press
    /// goes to an active ButtonTopic while MQTT is connected ([`Device::send_key`]);
    /// otherwise presses within 0.5 s of each other (`DOUBLE_CLICK_WINDOW`) count together, and when
    /// the window closes a single press toggles relay n (`ExecuteCommandPower(n,
    /// POWER_TOGGLE, SRC_BUTTON)`), a k-fold press relay n+k-1 if the device has it.
    /// SetOption13 acts at once, single presses only.
    pub fn handle_button(&mut self, button: u8, now: Instant) -> Result<(), NoSuchSensor> {
        self.catch_up(now);
        if button == 0 || button > self.hw.buttons {
            return Err(NoSuchSensor(format!("Button{button} (the device has {})", self.hw.buttons)));
        }
        if self.is_stopped() || self.uptime_s < GPIO_HOLD_OFF_S {
            return Ok(());
        }
        if self.settings.flag(so::BUTTON_SINGLE) {
            self.log(LogLevel::Debug, format!("BTN: Button{button} immediate"));
            self.button_action(button, 1);
            return Ok(());
        }
        let count = match self.inputs.button_window {
            Some((b, c, _)) if b == button => c.saturating_add(1),
            Some((b, c, _)) => {
                // Another button's window closes first.
                self.inputs.button_window = None;
                self.button_action(b, c);
                1
            }
            None => 1,
        };
        self.log(LogLevel::Debug, format!("BTN: Button{button} multi-press {count}"));
        self.inputs.button_window = Some((button, count, self.now.plus_millis(DOUBLE_CLICK_WINDOW_MS)));
        Ok(())
    }

    /// When the multi-press window closes, if one is open.
    pub(crate) fn button_due(&self) -> Option<Instant> {
        self.inputs.button_window.map(|(_, _, at)| at)
    }

    /// The multi-press window closed.
    pub(crate) fn button_window_closed(&mut self) {
        if let Some((button, count, _)) = self.inputs.button_window.take() {
            self.button_action(button, count);
        }
    }

    fn button_action(&mut self, button: u8, count: u8) {
        if count >= 6 {
            return;
        }
        // ButtonHandler: a single press goes out as a command to an active ButtonTopic
        // first (SendKey); only when it did not is the relay toggled here.
        if count == 1 && !self.settings.flag(so::MQTT_BUTTONS) && self.send_key(Key::Button, u32::from(button), 2) {
            return;
        }
        let relay = u32::from(button) + u32::from(count) - 1;
        if relay <= u32::from(self.hw.relays) {
            self.execute_command_power(relay, 2);
        }
    }

    /// A switch changed to `on` (`SwitchHandler`): SwitchMode 0 toggles the relay on every
    /// change, 1 makes it follow, 2 follow inverted; with SetOption114 the relay is left
    /// alone and `{"Switch<n>":{"Action":"ON|OFF"}}` is published instead. In the first
    /// [`GPIO_HOLD_OFF_S`] seconds of uptime only the pin changes; the handler acts when
    /// the hold-off ends ([`Device::switch_hold_off_ended`]).
    pub fn handle_switch(&mut self, switch: u8, on: bool, now: Instant) -> Result<(), NoSuchSensor> {
        self.catch_up(now);
        if switch == 0 || switch > self.hw.switches {
            return Err(NoSuchSensor(format!("Switch{switch} (the device has {})", self.hw.switches)));
        }
        let bit = 1u32 << (switch - 1);
        self.inputs.switch_pins = if on { self.inputs.switch_pins | bit } else { self.inputs.switch_pins & !bit };
        if self.uptime_s < GPIO_HOLD_OFF_S {
            return Ok(());
        }
        self.switch_handler(switch, on);
        Ok(())
    }

    /// Whether a switch moved during the hold-off and waits for the handler.
    pub(crate) fn switch_pending(&self) -> bool {
        self.uptime_s < GPIO_HOLD_OFF_S && self.inputs.switch_pins != self.inputs.switches
    }

    /// Uptime reached [`GPIO_HOLD_OFF_S`]: the handler sees each switch whose pin differs
    /// from its state at boot, in switch order.
    pub(crate) fn switch_hold_off_ended(&mut self) {
        for n in 1..=self.hw.switches {
            let on = (self.inputs.switch_pins >> (n - 1)) & 1 != 0;
            self.switch_handler(n, on);
        }
    }

    /// `SwitchState`: the switch's state as SENSOR, `%switchN%` and `Switch<n>#Boot` show
    /// it, inverted for the `_INV` switch modes (FOLLOW_INV 2, PUSHBUTTON_INV 4,
    /// PUSHBUTTONHOLD_INV 6, FOLLOWMULTI_INV 10, PUSHHOLDMULTI_INV 12, PUSHON_INV 14,
    /// PUSH_IGNORE_INV 16; support_switch.ino of 14.2.0).
    pub(crate) fn switch_state(&self, i: u8) -> u32 {
        let on = (self.inputs.switches >> i) & 1;
        match self.settings.switchmode.get(usize::from(i)) {
            Some(2 | 4 | 6 | 10 | 12 | 14 | 16) => on ^ 1,
            _ => on,
        }
    }

    /// `SwitchHandler` for one switch whose debounced state is `on`.
    fn switch_handler(&mut self, switch: u8, on: bool) {
        let bit = 1u32 << (switch - 1);
        let was = self.inputs.switches & bit != 0;
        if was == on || self.is_stopped() {
            return;
        }
        self.inputs.switches ^= bit;
        let mode = self.settings.switchmode[usize::from(switch - 1)];
        let state = match mode {
            0 => 2,
            1 => i32::from(on),
            2 => i32::from(!on),
            // PUSHBUTTON toggles on one edge, PUSHBUTTON_INV on the other (SwitchHandler:
            // `PRESSED == button` after NOT_PRESSED, and the reverse).
            3 if on => 2,
            4 if !on => 2,
            _ => return,
        };
        if self.settings.flag(so::MQTT_SWITCHES) {
            let text = String::from(self.settings.state_text(u32::from(on)));
            let payload = format!("{{\"Switch{switch}\":{{\"Action\":\"{}\"}}}}", escape(&text));
            self.publish_prefix_topic(crate::topic::Prefix::Stat, true, "RESULT", payload, false);
            return;
        }
        // SwitchHandler: SendKey first; the relay changes here only when no SwitchTopic
        // took the command.
        if self.send_key(Key::Switch, u32::from(switch), state as u32) {
            return;
        }
        if u32::from(switch) <= u32::from(self.hw.relays) {
            self.execute_command_power(u32::from(switch), state);
        }
    }

    /// `SendKey(key, device, state)`: with MQTT connected and the key's topic active
    /// (ButtonTopic/SwitchTopic neither empty nor `0`, after `Format`), publishes the
    /// state text to `cmnd/<key topic>/POWER<n>` (empty with [`CLEAR_RETAIN`]) and says
    /// whether that replaces the local action (not with SetOption61). A TOGGLE to the
    /// device's own topic or its first GroupTopic is sent as the state it toggles to.
    pub(crate) fn send_key(&mut self, key: Key, device: u32, state: u32) -> bool {
        let raw = match key {
            Key::Button => &self.settings.button_topic,
            Key::Switch => &self.settings.switch_topic,
        };
        let key_topic = crate::identity::format_token(raw, &self.hw.mac);
        if !self.settings.flag(so::MQTT_ENABLED)
            || !self.mqtt_is_connected()
            || key_topic.is_empty()
            || key_topic == "0"
        {
            // SendKey: the rules get {"Button1":{"State":2}} instead, and a rule that
            // ran replaces the local action.
            let name = match key {
                Key::Button => "Button",
                Key::Switch => "Switch",
            };
            return self.rules_process(false, &format!("{{\"{name}{device}\":{{\"State\":{state}}}}}"));
        }
        let mut device = device;
        if key == Key::Button && device > u32::from(self.hw.relays) {
            device = 1;
        }
        let option = u32::from(key == Key::Switch) + self.settings.option(so::DEVICE_INDEX_ENABLE);
        let command =
            if u32::from(self.hw.relays) + option > 1 { format!("POWER{device}") } else { String::from("POWER") };
        let topic =
            self.topic_context().topic(crate::topic::Prefix::Cmnd, crate::topic::TopicKind::Full(&key_topic), &command);
        let mut state = state;
        let payload = if state == CLEAR_RETAIN {
            String::new()
        } else {
            let local = self.settings.flag(so::BUTTON_SWITCH_FORCE_LOCAL)
                || key_topic == self.mqtt_topic
                || key_topic == self.settings.mqtt_grp_topic[0];
            if local && state == 2 {
                state = !(self.power >> ((device - 1) % 32)) & 1;
            }
            String::from(self.settings.state_text(state))
        };
        let flag = match key {
            Key::Button => so::MQTT_BUTTON_RETAIN,
            Key::Switch => so::MQTT_SWITCH_RETAIN,
        };
        let retain = self.settings.flag(flag) && (state != 3 || !self.settings.flag(so::NO_HOLD_RETAIN));
        self.publish(topic, payload, retain);
        !self.settings.flag(so::BUTTON_SWITCH_FORCE_LOCAL)
    }

    /// Sets a sensor value (thousandths) from now on, overriding its model. `index` is
    /// 1-based among the sensors that have the quantity (Power and Voltage: the energy
    /// monitor).
    pub fn handle_sensor(&mut self, index: u8, what: Quantity, milli: i32, now: Instant) -> Result<(), NoSuchSensor> {
        self.catch_up(now);
        match what {
            Quantity::Voltage | Quantity::Power => {
                if self.hw.energy.is_none() {
                    return Err(NoSuchSensor(String::from("the device has no energy monitor")));
                }
                self.inputs.energy.set[usize::from(what == Quantity::Power)] = Some(milli);
            }
            Quantity::Temperature | Quantity::Humidity => {
                let humidity = what == Quantity::Humidity;
                let found = self
                    .hw
                    .sensors
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !humidity || s.humidity.is_some())
                    .nth(usize::from(index.max(1)) - 1)
                    .map(|(i, _)| i);
                let Some(i) = found else {
                    let kind = if humidity { "humidity" } else { "temperature" };
                    return Err(NoSuchSensor(format!("no {kind} sensor {index}")));
                };
                self.inputs.sensors[i].set[usize::from(humidity)] = Some(milli);
            }
        }
        Ok(())
    }

    /// Makes the reads of DHT sensor `index` (1-based among the DHT sensors) fail from now
    /// on, or work again. A failing DHT keeps its last values for `DHT_MAX_RETRY` (8) reads
    /// (4 s apart), then reports `null` (`DhtEverySecond`).
    pub fn handle_sensor_read_error(&mut self, index: u8, failing: bool, now: Instant) -> Result<(), NoSuchSensor> {
        self.catch_up(now);
        let found = self
            .hw
            .sensors
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind.is_dht())
            .nth(usize::from(index.max(1)) - 1)
            .map(|(i, _)| i);
        let Some(i) = found else {
            return Err(NoSuchSensor(format!("no DHT sensor {index}")));
        };
        self.inputs.sensors[i].read_error = failing;
        Ok(())
    }

    /// `DhtEverySecond()` (xsns_06_dht_v6.ino, xsns_06_esp32_dht.ino), called after
    /// `PerformEverySecond` as `FUNC_EVERY_SECOND`: every 4 s of uptime each DHT is read; a
    /// good read makes its values valid and clears `lastresult`, a failed one counts and
    /// after more than `DHT_MAX_RETRY` sets them NAN.
    pub(crate) fn dht_every_second(&mut self) {
        if !self.uptime_s.is_multiple_of(4) {
            return;
        }
        for (spec, st) in self.hw.sensors.iter().zip(self.inputs.sensors.iter_mut()) {
            if !spec.kind.is_dht() {
                continue;
            }
            if st.read_error {
                st.dht_misses = st.dht_misses.saturating_add(1);
                if st.dht_misses > DHT_MAX_RETRY {
                    st.dht_valid = false;
                }
            } else {
                st.dht_misses = 0;
                st.dht_valid = true;
            }
        }
    }

    /// The value of a model at the device's uptime, unless overridden.
    fn model_value(model: &Model, set: Option<i32>, walk: &mut (u32, i32), secs: u32) -> i32 {
        set.unwrap_or_else(|| model.value(secs, walk))
    }

    /// Whether SENSOR has anything to report.
    pub(crate) fn has_sensor_data(&self) -> bool {
        self.hw.switches > 0 || !self.hw.sensors.is_empty() || self.hw.energy.is_some()
    }

    /// The body of a SENSOR message after `"Time":...` (`MqttShowSensor`): switches, then
    /// sensors, then ENERGY, then TempUnit.
    pub(crate) fn sensor_json(&mut self) -> String {
        // ResponseAppendTime(): the Time in the format `Time` chose.
        let mut s = self.response_time(self.settings.time_format);
        for n in 0..self.hw.switches {
            let on = self.switch_state(n);
            s.push_str(&format!(",\"Switch{}\":\"{}\"", n + 1, escape(self.settings.state_text(on))));
        }
        // XsnsCall order: xsns_05 (DS18x20) before xsns_06 (DHT).
        self.sensor_driver_json(SensorDriver::Ds18x20, &mut s);
        self.sensor_driver_json(SensorDriver::Dht, &mut s);
        if self.hw.energy.is_some() {
            s.push_str(&self.energy_json());
        }
        if !self.hw.sensors.is_empty() {
            s.push_str(",\"TempUnit\":\"C\"");
        }
        s.push('}');
        s
    }

    /// The sensor drivers the device has, in `XsnsCall` order: xsns_03 (energy), xsns_05
    /// (DS18x20), xsns_06 (DHT). Each appends its sensors on `FUNC_JSON_APPEND`.
    pub(crate) fn sensor_drivers(&self) -> ([SensorDriver; 3], usize) {
        let mut list = [SensorDriver::Energy; 3];
        let mut n = 0;
        let has = |dht: bool| self.hw.sensors.iter().any(|s| s.kind.is_dht() == dht);
        for (driver, present) in [
            (SensorDriver::Energy, self.hw.energy.is_some()),
            (SensorDriver::Ds18x20, has(false)),
            (SensorDriver::Dht, has(true)),
        ] {
            if present {
                list[n] = driver;
                n += 1;
            }
        }
        (list, n)
    }

    /// What one driver appends on `FUNC_JSON_APPEND` (`,"AM2301":{...}` for each of its
    /// sensors): DS18x20s in sensor order, DHTs in GPIO order (`DhtPinState` is called pin
    /// by pin), ENERGY (`EnergyShow(true)`).
    pub(crate) fn sensor_driver_json(&mut self, driver: SensorDriver, s: &mut String) {
        if driver == SensorDriver::Energy {
            if self.hw.energy.is_some() {
                s.push_str(&self.energy_json());
            }
            return;
        }
        let dht = driver == SensorDriver::Dht;
        let sensors = &self.hw.sensors;
        // (At most 4 DHTs: an insertion sort keeps the stable sort's code out of the image.)
        let mut order: Vec<usize> = Vec::new();
        for i in (0..sensors.len()).filter(|&i| sensors[i].kind.is_dht() == dht) {
            let gpio = if dht { sensors[i].gpio.unwrap_or(0) } else { 0 };
            let at = order.iter().position(|&j| dht && sensors[j].gpio.unwrap_or(0) > gpio);
            order.insert(at.unwrap_or(order.len()), i);
        }
        let secs = self.uptime_s;
        let dhts = self.hw.sensors.iter().filter(|s| s.kind.is_dht()).count();
        let separator = char::from(self.inputs.index_separator);
        for i in order {
            let spec = &self.hw.sensors[i];
            let st = &mut self.inputs.sensors[i];
            let t = Device::model_value(&spec.temperature, st.set[0], &mut st.walk[0], secs);
            match spec.kind {
                SensorKind::Am2301 | SensorKind::Dht11 => {
                    // DhtInit: with more than one DHT the name carries the GPIO,
                    // `"%s%c%02d"` with IndexSeparator() ('-', '_' with SetOption64) as
                    // it was at boot.
                    let name = if dhts > 1 {
                        format!("{}{separator}{:02}", spec.kind.name(), spec.gpio.unwrap_or(0))
                    } else {
                        String::from(spec.kind.name())
                    };
                    if !st.dht_valid {
                        // TempHumDewShow -> ResponseAppendTHD: NAN temperature and humidity
                        // (CalcTempHumToDew returns NAN too) print as `null` (ext_vsnprintf_P
                        // `%_f`: "if (isnan(number) || isinf(number)) new_val_str = \"null\"").
                        s.push_str(&format!(
                            ",\"{name}\":{{\"Temperature\":null,\"Humidity\":null,\"DewPoint\":null}}"
                        ));
                        continue;
                    }
                    let h =
                        spec.humidity.as_ref().map_or(0, |m| Device::model_value(m, st.set[1], &mut st.walk[1], secs));
                    // TempHumDewShow: the values are rounded to the resolution first.
                    let t1 = fixed(i64::from(t), 1);
                    let h1 = fixed(i64::from(h), 1);
                    let tf = rounded(i64::from(t), 1) as f32 / 10.0;
                    let hf = rounded(i64::from(h), 1) as f32 / 10.0;
                    let dew = (dew_point(tf, hf) * 1000.0) as i64;
                    s.push_str(&format!(
                        ",\"{name}\":{{\"Temperature\":{t1},\"Humidity\":{h1},\"DewPoint\":{}}}",
                        fixed(dew, 1)
                    ));
                }
                SensorKind::Ds18b20 => {
                    let id = spec.id.as_deref().unwrap_or("000000000000");
                    s.push_str(&format!(",\"DS18B20\":{{\"Id\":\"{id}\",\"Temperature\":{}}}", fixed(i64::from(t), 1)));
                }
            }
        }
    }

    /// The energy monitor's readings now: (volts, watts, power factor), thousandths.
    fn energy_now(&mut self) -> (i64, i64, i64) {
        let secs = self.uptime_s;
        let on = self.power & 1 != 0;
        let Some(spec) = &self.hw.energy else { return (0, 0, 0) };
        let e = &mut self.inputs.energy;
        let volts = Device::model_value(&spec.voltage, e.set[0], &mut e.walk[0], secs);
        let load = Device::model_value(&spec.load, e.set[1], &mut e.walk[1], secs);
        (i64::from(volts), if on { i64::from(load.max(0)) } else { 0 }, i64::from(spec.factor))
    }

    /// Counts one second of energy (`EnergyEverySecond`).
    pub(crate) fn energy_every_second(&mut self) {
        if self.hw.energy.is_some() {
            let (_, watts, _) = self.energy_now();
            self.inputs.energy.counted_mws += watts as u64;
        }
    }

    /// `,"ENERGY":{...}` (`EnergyShow(true)`).
    fn energy_json(&mut self) -> String {
        let (volts, watts, factor) = self.energy_now();
        let total_wh = self.hw.energy.as_ref().map_or(0, |e| e.total_wh);
        let counted = self.inputs.energy.counted_mws;
        // Wh in thousandths of a kWh: mWs / 3600 = mWh.
        let today_mwh = (counted / 3600) as i64;
        let total_mkwh = i64::from(total_wh) + today_mwh / 1000;
        let period_wh = ((counted - self.inputs.energy.at_last_tele_mws) / 3_600_000) as i64;
        let apparent = if factor > 0 { watts * 1000 / factor } else { 0 };
        let reactive = isqrt(i128::from(apparent) * i128::from(apparent) - i128::from(watts) * i128::from(watts));
        let current = if volts > 0 { apparent * 1000 / volts } else { 0 };
        let (factor_shown, apparent_shown) = if watts == 0 { (0, 0) } else { (factor, apparent) };
        format!(
            ",\"ENERGY\":{{\"TotalStartTime\":\"{}\",\"Total\":{},\"Yesterday\":{},\"Today\":{},\"Period\":{},\"Power\":{},\"ApparentPower\":{},\"ReactivePower\":{},\"Factor\":{},\"Voltage\":{},\"Current\":{}}}",
            iso_time(0),
            fixed(total_mkwh, 3),
            fixed(0, 3),
            fixed(today_mwh / 1000, 3),
            period_wh,
            fixed(watts, 0),
            fixed(apparent_shown, 0),
            fixed(if watts == 0 { 0 } else { reactive }, 0),
            fixed(factor_shown, 2),
            fixed(volts, 0),
            fixed(if watts == 0 { 0 } else { current }, 3)
        )
    }
}

/// Integer square root of a non-negative value (i128 in, so no square overflows).
fn isqrt(v: i128) -> i64 {
    if v <= 0 {
        return 0;
    }
    let mut x = v;
    let mut y = (x + 1) / 2;
    while y < x {
        x = y;
        y = (x + v / x) / 2;
    }
    x as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_the_firmware_prints_them() {
        assert_eq!(fixed(21_500, 1), "21.5");
        assert_eq!(fixed(21_549, 1), "21.5");
        assert_eq!(fixed(21_550, 1), "21.6");
        assert_eq!(fixed(-250, 1), "-0.3");
        assert_eq!(fixed(-40, 1), "0.0");
        assert_eq!(fixed(230_400, 0), "230");
        assert_eq!(fixed(950, 2), "0.95");
        assert_eq!(fixed(12_345, 3), "12.345");
        assert_eq!(isqrt(63_157 * 63_157), 63_157);
        assert_eq!(isqrt(i128::from(i64::MAX) * 4), 6_074_000_999);
        // 21.5 °C at 45 %: gamma = ln(0.45) + 17.62 * 21.5 / 265 = 0.6311, dew point
        // 243.5 * 0.6311 / (17.62 - 0.6311) = 9.05 °C.
        assert_eq!(fixed((dew_point(21.5, 45.0) * 1000.0) as i64, 1), "9.0");
    }

    #[test]
    fn extreme_profile_values_do_not_panic() {
        use crate::hardware::{EnergySpec, Hardware, Model, SensorKind, SensorSpec};
        let hw = Hardware {
            sensors: alloc::vec![SensorSpec {
                kind: SensorKind::Am2301,
                temperature: Model::Constant(i32::MIN),
                humidity: Some(Model::Constant(i32::MAX)),
                id: None,
                gpio: None,
            }],
            energy: Some(EnergySpec {
                voltage: Model::Constant(0),
                load: Model::Constant(i32::MAX),
                factor: 1,
                total_wh: u32::MAX,
            }),
            ..Hardware::default()
        };
        let mut d = Device::boot(hw, crate::Settings::default(), crate::BootReason::PowerOn, Instant::from_millis(0));
        d.handle_serial_line("Power ON", Instant::from_millis(0));
        d.handle_serial_line("Status 10", Instant::from_millis(5000));
        let mut seen = false;
        while let Some(o) = d.poll_output() {
            if let crate::Output::Log(l) = o {
                seen |= l.text.starts_with("RSL: STATUS10 = {\"StatusSNS\":");
            }
        }
        assert!(seen);
    }
}
