//! The `--state DIR` settings store: one JSON file per device, written atomically.
//!
//! The file names its format and the device's MAC, so a file that is not ours, or that
//! belongs to another device, is refused with an error naming it, and never overwritten.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tasmota_core::{Mac, Settings};

/// The `format` field of a settings file.
pub const FORMAT: &str = "tasmota-sim/settings";
/// The version written; files of a later version are refused.
pub const VERSION: u32 = 1;
const FILE_NAME: &str = "settings.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a tasmota-sim settings file ({detail}); move it away or choose another --state directory")]
    Foreign { path: PathBuf, detail: String },
    #[error("{path}:{line}:{column}: corrupt settings: {detail}; fix or remove the file (it is left as it is)")]
    Corrupt { path: PathBuf, line: usize, column: usize, detail: String },
    #[error("{path}: written by a newer tasmota-sim (version {found}, this one reads {VERSION})")]
    Newer { path: PathBuf, found: u32 },
    #[error(
        "{path}: belongs to the device with MAC {stored}, not {requested}; use another --state directory or drop --mac"
    )]
    OtherDevice { path: PathBuf, stored: Mac, requested: Mac },
    #[error("{path}: cannot write settings: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    version: u32,
    mac: String,
    settings: Settings,
}

/// A device's settings directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Loads the stored device, or `None` when the directory holds none yet.
    pub fn load(&self) -> Result<Option<(Mac, Settings)>, StateError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(StateError::Foreign { path, detail: "not UTF-8 text".into() })
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| StateError::Foreign { path: path.clone(), detail: format!("not JSON: {e}") })?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => return Err(StateError::Foreign { path, detail: format!("its format is '{other}'") }),
            None => return Err(StateError::Foreign { path, detail: format!("no \"format\": \"{FORMAT}\" field") }),
        }
        let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if found > u64::from(VERSION) {
            return Err(StateError::Newer { path, found: found as u32 });
        }
        // From the text, not the Value, so that errors keep their line and column.
        let file: File =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text)).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let message = inner.to_string();
                let suffix = format!(" at line {} column {}", inner.line(), inner.column());
                let message = message.strip_suffix(&suffix).unwrap_or(&message);
                let (line, column) = (inner.line(), inner.column());
                StateError::Corrupt { path: path.clone(), line, column, detail: format!("field {field}: {message}") }
            })?;
        let corrupt = |key: &str, detail: String| {
            let (line, column) = locate_json_key(&text, key);
            StateError::Corrupt { path: path.clone(), line, column, detail }
        };
        let mac = file.mac.parse::<Mac>().map_err(|e| corrupt("mac", format!("field mac '{}': {e}", file.mac)))?;
        tasmota_core::limits::check(&file.settings).map_err(|e| {
            let key = e.field.split(['[', ' ']).next().unwrap_or_default().to_string();
            corrupt(&key, format!("field settings.{}: {}", e.field, e.problem))
        })?;
        Ok(Some((mac, file.settings)))
    }

    /// Writes the settings atomically: a temporary file in the same directory, flushed
    /// to disk, then renamed over the old one.
    pub fn save(&self, mac: &Mac, settings: &Settings) -> Result<(), StateError> {
        let path = self.path();
        let write_err = |source| StateError::Write { path: path.clone(), source };
        fs::create_dir_all(&self.dir).map_err(write_err)?;
        let file = File { format: FORMAT.into(), version: VERSION, mac: mac.to_string(), settings: settings.clone() };
        let mut text = serde_json::to_string_pretty(&file).expect("settings serialise");
        text.push('\n');
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let mut f = fs::File::create(&tmp).map_err(write_err)?;
        f.write_all(text.as_bytes()).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(write_err)?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Line and column (1-based) of the first `"key"` in a JSON text, or of its start.
fn locate_json_key(text: &str, key: &str) -> (usize, usize) {
    let at = text.find(&format!("\"{key}\"")).unwrap_or(0);
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateDir::new(tmp.path());
        assert!(store.load().unwrap().is_none());
        let s = Settings { mqtt_host: "broker".into(), ..Settings::default() };
        store.save(&Mac::DEFAULT, &s).unwrap();
        let (mac, loaded) = store.load().unwrap().unwrap();
        assert_eq!((mac, loaded), (Mac::DEFAULT, s));

        fs::write(store.path(), "{\"hello\": 1}").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("settings.json: not a tasmota-sim settings file (no \"format\""), "{e}");

        fs::write(store.path(), "garbage").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("not JSON: expected value at line 1 column 1"), "{e}");

        let corrupt = format!("{{\"format\":\"{FORMAT}\",\"version\":1,\"mac\":\"5C:CF:7F:4B:33:16\",\"settings\":{{\"mqtt_port\":\"x\"}}}}");
        fs::write(store.path(), &corrupt).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.ends_with(
                "settings.json:1:98: corrupt settings: field settings.mqtt_port: invalid type: string \"x\", expected u16; fix or remove the file (it is left as it is)"
            ),
            "{e}"
        );
        assert_eq!(fs::read_to_string(store.path()).unwrap(), corrupt, "a corrupt file is left as it is");

        fs::write(store.path(), format!("{{\"format\":\"{FORMAT}\",\"version\":9}}")).unwrap();
        assert!(matches!(store.load().unwrap_err(), StateError::Newer { found: 9, .. }));
    }

    /// A settings file as `save` writes it, with `edit` applied to its settings.
    fn file_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let file = File {
            format: FORMAT.into(),
            version: VERSION,
            mac: Mac::DEFAULT.to_string(),
            settings: Settings::default(),
        };
        let mut value = serde_json::to_value(&file).unwrap();
        edit(&mut value["settings"]);
        serde_json::to_string_pretty(&value).unwrap()
    }

    #[test]
    fn values_outside_the_firmware_limits_are_refused_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateDir::new(tmp.path());
        let cases = [
            (file_with(|s| s["mqtt_host"] = "h".repeat(500).into()), "field settings.mqtt_host: is 500 bytes; beside the other texts at most "),
            (file_with(|s| s["mqtt_topic"] = "".into()), "field settings.mqtt_topic: is empty, which no Topic command can store"),
            (file_with(|s| s["mqtt_topic"] = "t".repeat(151).into()), "field settings.mqtt_topic: is 151 bytes; the firmware keeps at most 150 (CmndTopic: char stemp1[TOPSZ])"),
            (file_with(|s| s["tele_period"] = 5.into()), "field settings.tele_period: 5 is outside 10..=3600"),
            (file_with(|s| s["mqtt_grp_topic"][0] = "".into()), "field settings.mqtt_grp_topic[0]: is empty"),
        ];
        for (text, want) in cases {
            fs::write(store.path(), &text).unwrap();
            let e = store.load().unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nwants {want}");
            assert!(e.contains("settings.json:"), "{e}");
            assert_eq!(fs::read_to_string(store.path()).unwrap(), text, "a refused file is left as it is");
        }
        // The line and column point at the field.
        fs::write(store.path(), file_with(|s| s["mqtt_host"] = "h".repeat(500).into())).unwrap();
        let e = store.load().unwrap_err().to_string();
        let at =
            fs::read_to_string(store.path()).unwrap().lines().position(|l| l.contains("\"mqtt_host\"")).unwrap() + 1;
        assert!(e.contains(&format!("settings.json:{at}:5: ")), "{e}");
        // The longest texts that fit are accepted.
        fs::write(store.path(), file_with(|s| s["mqtt_topic"] = "t".repeat(150).into())).unwrap();
        assert!(store.load().is_ok());
    }
}
