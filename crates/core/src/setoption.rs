//! The SetOption bits the core reads, by their names in Tasmota's `tasmota_types.h`
//! (`SOBitfield` .. `SOBitfield5`): read them as `settings.flag(setoption::MQTT_ENABLED)`,
//! never as a bare number. [`Settings::option`](crate::Settings::option) maps a number to
//! where the firmware stores it (`SetoptionDecode`).
//!
//! The options the firmware also sets through a command of its own say so (`PowerRetain`
//! is SetOption5); reading one through either gives the same bit.

/// SetOption0 `save_state`: save the power state and use it after a restart.
pub const SAVE_STATE: u32 = 0;
/// SetOption3 `mqtt_enabled`: MQTT on.
pub const MQTT_ENABLED: u32 = 3;
/// SetOption4 `mqtt_response`: reply on `stat/<topic>/<COMMAND>` (1) instead of `RESULT`.
pub const MQTT_RESPONSE: u32 = 4;
/// SetOption5 `mqtt_power_retain` (`PowerRetain`).
pub const MQTT_POWER_RETAIN: u32 = 5;
/// SetOption6 `mqtt_button_retain` (`ButtonRetain`).
pub const MQTT_BUTTON_RETAIN: u32 = 6;
/// SetOption7 `mqtt_switch_retain` (`SwitchRetain`).
pub const MQTT_SWITCH_RETAIN: u32 = 7;
/// SetOption9 `mqtt_sensor_retain` (`SensorRetain`).
pub const MQTT_SENSOR_RETAIN: u32 = 9;
/// SetOption10 `mqtt_offline`: on a `Topic` change the old LWT gets `Offline` (1) or is
/// cleared (0).
pub const MQTT_OFFLINE: u32 = 10;
/// SetOption11 `button_swap`: swap single and double press.
pub const BUTTON_SWAP: u32 = 11;
/// SetOption13 `button_single`: single press only, acted on at once.
pub const BUTTON_SINGLE: u32 = 13;
/// SetOption17 `decimal_text`: light colours as decimals.
pub const DECIMAL_TEXT: u32 = 17;
/// SetOption19 `hass_discovery`: Home Assistant discovery instead of Tasmota's own.
pub const HASS_DISCOVERY: u32 = 19;
/// SetOption20 `not_power_linked`: dimmer changes do not switch power.
pub const NOT_POWER_LINKED: u32 = 20;
/// SetOption26 `device_index_enable`: `POWER1` even with one relay.
pub const DEVICE_INDEX_ENABLE: u32 = 26;
/// SetOption30 `hass_light`: discovery announces relays as lights.
pub const HASS_LIGHT: u32 = 30;
/// SetOption59 `hass_tele_on_power`: a power change also sends `tele/<topic>/STATE`.
pub const HASS_TELE_ON_POWER: u32 = 59;
/// SetOption61 `button_switch_force_local`: a ButtonTopic/SwitchTopic press also acts
/// locally.
pub const BUTTON_SWITCH_FORCE_LOCAL: u32 = 61;
/// SetOption62 `no_hold_retain`: HOLD messages of buttons and switches are not retained.
pub const NO_HOLD_RETAIN: u32 = 62;
/// SetOption64 `use_underscore`: `IndexSeparator()` gives '_' instead of '-' (sensor names).
pub const INDEX_SEPARATOR: u32 = 64;
/// SetOption68 `pwm_multi_channels`: PWM channels as separate lights.
pub const PWM_MULTI_CHANNELS: u32 = 68;
/// SetOption73 `mqtt_buttons`: buttons detached from relays, announced in discovery.
pub const MQTT_BUTTONS: u32 = 73;
/// SetOption75 `grouptopic_mode`: GroupTopic is the fixed `cmnd/<grouptopic>/` (1).
pub const GROUPTOPIC_MODE: u32 = 75;
/// SetOption82 `alexa_ct_range`: reduced CT range.
pub const ALEXA_CT_RANGE: u32 = 82;
/// SetOption90 `only_json_message`: no non-JSON MQTT responses (`stat/<topic>/POWER`).
pub const ONLY_JSON_MESSAGE: u32 = 90;
/// SetOption103 `mqtt_tls`: MQTT over TLS.
pub const MQTT_TLS: u32 = 103;
/// SetOption104 `mqtt_no_retain`: no retained messages at all (AWS IoT).
pub const MQTT_NO_RETAIN: u32 = 104;
/// SetOption114 `mqtt_switches`: switches detached from relays, announced in discovery.
pub const MQTT_SWITCHES: u32 = 114;
/// SetOption117 `fade_fixed_duration`: light fading at a fixed duration.
pub const FADE_FIXED_DURATION: u32 = 117;
/// SetOption121 `mqtt_state_retain` (`StateRetain`).
pub const MQTT_STATE_RETAIN: u32 = 121;
/// SetOption122 `mqtt_info_retain` (`InfoRetain`).
pub const MQTT_INFO_RETAIN: u32 = 122;
/// `mqtt_status_retain` (`StatusRetain`), kept at SetOption123 as the core always has.
pub const MQTT_STATUS_RETAIN: u32 = 123;
/// SetOption132 `tls_use_fingerprint`: check the broker by fingerprint, not by CA.
pub const TLS_USE_FINGERPRINT: u32 = 132;
/// SetOption140 `mqtt_persistent`: a persistent session (clean session off).
pub const MQTT_PERSISTENT: u32 = 140;
