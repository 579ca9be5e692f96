//! Tasmota discovery (spec §10): the config and sensors payloads of every shipped profile
//! checked against what Home Assistant's Tasmota integration (hatasmota) reads, key by
//! key with types and lengths; and, on a Mosquitto the test starts, a consumer playing
//! Home Assistant's part adopts `device --profile sonoff-4ch` and switches it.

mod common;

use std::time::Duration;

use serde_json::Value;
use tasmota_core::{BootReason, Device, Instant, Mac};
use tasmota_sim::profile::{Profile, BUILT_IN};

/// The config keys in the firmware's order (xdrv_12_discovery.ino `TasDiscoverMessage`).
const CONFIG_KEYS: &[&str] = &[
    "ip", "dn", "fn", "hn", "mac", "md", "ty", "if", "ofln", "onln", "state", "sw", "t", "ft", "tp", "rl", "swc",
    "swn", "btn", "so", "lk", "lt_st", "bat", "dslp", "sho", "sht", "ver",
];
const SO_KEYS: &[&str] = &["4", "11", "13", "17", "20", "30", "68", "73", "82", "114", "117"];

fn device_for(profile: &Profile) -> Device {
    let mut d = Device::boot(
        profile.hardware.clone(),
        profile.initial_settings(),
        BootReason::PowerOn,
        Instant::from_millis(0),
    );
    while d.poll_output().is_some() {}
    d
}

fn ints(v: &Value, key: &str, len: usize) -> Vec<i64> {
    let a = v[key].as_array().unwrap_or_else(|| panic!("{key} is not an array: {v}"));
    assert_eq!(a.len(), len, "{key} has {} items, the integration reads {len}", a.len());
    a.iter().map(|x| x.as_i64().unwrap_or_else(|| panic!("{key}: {x} is not an integer"))).collect()
}

/// Checks one config payload; returns it parsed.
fn check_config(name: &str, text: &str, d: &Device) -> Value {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: config is not JSON ({e}): {text}"));
    let obj = v.as_object().unwrap();
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    // serde_json's map is sorted; the order is checked on the text.
    let mut sorted = CONFIG_KEYS.to_vec();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "{name}: config keys");
    let mut at = 0;
    for key in CONFIG_KEYS {
        let found = text[at..].find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{name}: '{key}' out of order"));
        at += found;
    }
    let hw = d.hardware();
    for key in ["ip", "dn", "hn", "mac", "md", "ofln", "onln", "sw", "t", "ft"] {
        assert!(v[key].is_string(), "{name}: {key} must be a string: {}", v[key]);
    }
    assert_eq!(v["mac"], hw.mac.unique_id(), "{name}: mac is the 12 hex digits");
    assert_eq!(v["md"], hw.module.as_str());
    assert_eq!(v["t"], d.topic());
    assert_eq!(v["hn"], d.hostname());
    assert_eq!((v["ofln"].as_str(), v["onln"].as_str()), (Some("Offline"), Some("Online")));
    assert_eq!(v["tp"], serde_json::json!(["cmnd", "stat", "tele"]));
    assert_eq!(v["state"], serde_json::json!(["OFF", "ON", "TOGGLE", "HOLD"]));
    assert_eq!(v["ver"], 1);
    for key in ["ty", "if", "lk", "lt_st", "bat", "dslp"] {
        assert!(v[key].is_i64(), "{name}: {key} must be an integer");
    }
    let fns = v["fn"].as_array().unwrap();
    assert_eq!(fns.len(), 8, "{name}: fn has 8 entries");
    for (i, f) in fns.iter().enumerate() {
        if i < usize::from(hw.relays) {
            assert!(f.is_string(), "{name}: fn[{i}] names relay {}", i + 1);
        } else {
            assert!(f.is_null(), "{name}: fn[{i}] is null beyond the relays");
        }
    }
    let rl = ints(&v, "rl", 32);
    assert!(rl.iter().all(|r| (0..=3).contains(r)));
    assert_eq!(rl.iter().filter(|r| **r == 1).count(), usize::from(hw.relays), "{name}: one 1 per relay");
    assert!(ints(&v, "swc", 28).iter().all(|m| (-1..=16).contains(m)));
    let swn = v["swn"].as_array().unwrap();
    assert_eq!(swn.len(), 28);
    assert!(swn.iter().all(|s| s.is_null() || s.is_string()));
    assert!(ints(&v, "btn", 32).iter().all(|b| (0..=1).contains(b)));
    let so = v["so"].as_object().unwrap();
    let mut so_keys: Vec<&str> = so.keys().map(String::as_str).collect();
    so_keys.sort_unstable();
    let mut want = SO_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(so_keys, want, "{name}: so keys");
    assert!(so.values().all(|x| x.as_i64().is_some_and(|n| (0..=1).contains(&n))));
    assert_eq!(ints(&v, "sho", 4), vec![0; 4]);
    let sht = v["sht"].as_array().unwrap();
    assert_eq!(sht.len(), 4);
    assert!(sht.iter().all(|s| s.as_array().is_some_and(|a| a.len() == 3)));
    v
}

#[test]
fn every_profile_publishes_a_config_and_sensors_the_integration_reads() {
    for (name, _) in BUILT_IN {
        let profile = Profile::load(name).unwrap();
        let mut d = device_for(&profile);
        check_config(name, &d.discovery_config(), &d);
        let sensors: Value = serde_json::from_str(&d.discovery_sensors()).unwrap();
        assert_eq!(sensors["ver"], 1, "{name}");
        let sn = sensors["sn"].as_object().unwrap_or_else(|| panic!("{name}: sn is an object"));
        assert!(sn["Time"].is_string(), "{name}: sn.Time");
        let hw = &profile.hardware;
        for s in &hw.sensors {
            assert!(sn.contains_key(s.kind.name()), "{name}: sn has {}", s.kind.name());
        }
        assert_eq!(sn.contains_key("ENERGY"), hw.energy.is_some(), "{name}: ENERGY");
        for i in 1..=hw.switches {
            assert!(sn.contains_key(&format!("Switch{i}")), "{name}: sn has Switch{i}");
        }
        if !hw.sensors.is_empty() {
            assert_eq!(sn["TempUnit"], "C");
        }
    }
}

#[test]
fn the_sonoff_4ch_config_is_exact() {
    let profile = Profile::load("sonoff-4ch").unwrap().with_mac(Mac::DEFAULT);
    let d = device_for(&profile);
    let zeros = |n: usize| vec!["0"; n].join(",");
    let want = format!(
        concat!(
            r#"{{"ip":"10.75.51.22","dn":"Tasmota","fn":["Tasmota","Tasmota2","Tasmota3","Tasmota4",null,null,null,null],"#,
            r#""hn":"tasmota-4B3316-4886","mac":"5CCF7F4B3316","md":"Sonoff 4CH","ty":0,"if":0,"ofln":"Offline","onln":"Online","#,
            r#""state":["OFF","ON","TOGGLE","HOLD"],"sw":"14.2.0","t":"tasmota_4B3316","ft":"%prefix%/%topic%/","tp":["cmnd","stat","tele"],"#,
            r#""rl":[1,1,1,1,{}],"swc":[{}],"swn":[{}],"btn":[{}],"#,
            r#""so":{{"4":0,"11":0,"13":0,"17":0,"20":0,"30":0,"68":0,"73":0,"82":0,"114":0,"117":0}},"#,
            r#""lk":0,"lt_st":0,"bat":0,"dslp":0,"sho":[0,0,0,0],"sht":[[0,0,0],[0,0,0],[0,0,0],[0,0,0]],"ver":1}}"#
        ),
        zeros(28),
        vec!["-1"; 28].join(","),
        vec!["null"; 28].join(","),
        zeros(32),
    );
    assert_eq!(d.discovery_config(), want);
}

#[test]
fn switches_and_buttons_show_once_their_setoptions_are_on() {
    let profile = Profile::load("wall-switch-2gang").unwrap();
    let mut settings = profile.initial_settings();
    settings.set_option(114, 1);
    let d = Device::boot(profile.hardware.clone(), settings, BootReason::PowerOn, Instant::from_millis(0));
    let v = check_config("wall-switch-2gang", &d.discovery_config(), &d);
    assert_eq!(ints(&v, "swc", 28)[..3], [1, 1, -1]);
    assert_eq!(v["swn"][0], "Switch1");
    assert_eq!(v["swn"][2], Value::Null);
    assert_eq!(v["so"]["114"], 1);

    let profile = Profile::load("sonoff-basic").unwrap();
    let mut settings = profile.initial_settings();
    settings.set_option(73, 1);
    let d = Device::boot(profile.hardware.clone(), settings, BootReason::PowerOn, Instant::from_millis(0));
    let v = check_config("sonoff-basic", &d.discovery_config(), &d);
    assert_eq!(ints(&v, "btn", 32)[..2], [1, 0]);
}

/// Home Assistant's part, on a real broker: read the retained config of
/// `device --profile sonoff-4ch`, subscribe to the topics it names, switch relay 1 on
/// through the command topic it names, see the state change; and the HTTP API changes
/// relay 2 with the MQTT side seeing it.
#[test]
fn a_home_assistant_style_consumer_adopts_the_sonoff_4ch() {
    if !common::have("mosquitto") {
        return;
    }
    const S: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Mosquitto::start(dir.path(), common::free_port(), "allow_anonymous true");
    let port = broker.port;
    let http = common::free_port();
    let state = dir.path().join("4ch");
    let setup = format!("Backlog MqttHost 127.0.0.1; MqttPort {port}; TelePeriod 10");
    let mut dev = common::DeviceProcess::start(&[
        "--state",
        state.to_str().unwrap(),
        "--profile",
        "sonoff-4ch",
        "--http",
        &format!("127.0.0.1:{http}"),
        "--cmd",
        &setup,
    ]);
    dev.expect_line("MQT: Connected", 15 * S);

    // Discovery comes 10 s after the first connect; a consumer that subscribes later gets
    // the retained message.
    std::thread::sleep(11 * S);
    let ha = common::Operator::connect(port, None, "tasmota/discovery/+/config");
    let config = ha.expect("tasmota/discovery/5CCF7F4B3316/config", 5 * S);
    assert!(config.retain, "the config is retained");
    let v: Value = serde_json::from_str(&config.payload).unwrap();
    assert_eq!(v["md"], "Sonoff 4CH");
    let relays = v["rl"].as_array().unwrap().iter().filter(|r| **r == 1).count();
    assert_eq!(relays, 4);
    // The topics, built the way the integration builds them from t, ft and tp.
    let topic = |prefix: &Value, sub: &str| {
        let ft = v["ft"].as_str().unwrap();
        let t = v["t"].as_str().unwrap();
        format!("{}{sub}", ft.replace("%prefix%", prefix.as_str().unwrap()).replace("%topic%", t))
    };
    let cmnd_power1 = topic(&v["tp"][0], "POWER1");
    let stat_result = topic(&v["tp"][1], "RESULT");
    let tele_state = topic(&v["tp"][2], "STATE");
    let lwt = topic(&v["tp"][2], "LWT");
    assert_eq!(cmnd_power1, "cmnd/tasmota_4B3316/POWER1");

    let states = common::Operator::connect(port, None, "+/tasmota_4B3316/#");
    assert_eq!(states.expect(&lwt, 5 * S).payload, v["onln"].as_str().unwrap());
    states.publish(&cmnd_power1, "ON");
    assert_eq!(states.expect(&stat_result, 5 * S).payload, r#"{"POWER1":"ON"}"#);

    // The HTTP API: the firmware's body, and MQTT sees the same change.
    let body = common::http_get(http, "/cm?cmnd=Power2%20TOGGLE");
    assert_eq!(body, r#"{"POWER2":"ON"}"#);
    assert_eq!(states.expect(&stat_result, 5 * S).payload, r#"{"POWER2":"ON"}"#);

    // STATE flows every TelePeriod, with the four relays.
    let st: Value = serde_json::from_str(&states.expect(&tele_state, 12 * S).payload).unwrap();
    assert_eq!(
        (st["POWER1"].as_str(), st["POWER2"].as_str(), st["POWER3"].as_str()),
        (Some("ON"), Some("ON"), Some("OFF"))
    );
    dev.power_off();
}
