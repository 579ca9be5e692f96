//! MQTT topics the way `GetTopic_P` builds them (spec §1): FullTopic with `%prefix%`,
//! `%topic%`, `%hostname%` and `%id%`, the fallback topic, and the `#` and `//` rules.

use alloc::string::String;

use crate::settings::DEFAULT_PREFIXES;

/// `TOPSZ`: a topic holds at most 150 characters.
pub const TOPSZ: usize = 151;
/// `CMDSZ`: the subtopic is cut to 23 characters.
pub const CMDSZ: usize = 24;

/// The three topic prefixes (Prefix1..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    Cmnd = 0,
    Stat = 1,
    Tele = 2,
}

/// Which form of topic to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicKind<'a> {
    /// Through FullTopic, with `%topic%` = the given topic.
    Full(&'a str),
    /// `<cmnd|stat|tele>/<MqttClient>_fb`, ignoring FullTopic and Prefix1..3.
    Fallback,
    /// `cmnd/<group>` (group topics with SetOption75 1).
    Fixed(&'a str),
}

/// What the topic builder reads from the device.
#[derive(Clone, Copy, Debug)]
pub struct TopicContext<'a> {
    pub fulltopic: &'a str,
    pub prefixes: &'a [String; 3],
    /// The expanded MqttClient (`DVES_4B3316`).
    pub mqtt_client: &'a str,
    /// The expanded hostname, for `%hostname%`.
    pub hostname: &'a str,
    /// Twelve hex digits of the MAC, for `%id%`.
    pub unique_id: &'a str,
}

impl TopicContext<'_> {
    /// `GetTopic_P(prefix, topic, subtopic)`.
    pub fn topic(&self, prefix: Prefix, kind: TopicKind<'_>, subtopic: &str) -> String {
        let p = prefix as usize;
        let mut full = match kind {
            TopicKind::Fallback => {
                let mut t = String::from(DEFAULT_PREFIXES[p]);
                t.push('/');
                t.push_str(self.mqtt_client);
                t.push_str("_fb");
                t
            }
            TopicKind::Fixed(group) => {
                let mut t = String::from(DEFAULT_PREFIXES[p]);
                t.push('/');
                t.push_str(group);
                t
            }
            TopicKind::Full(topic) => {
                let mut t = String::from(self.fulltopic);
                if prefix == Prefix::Cmnd && !t.contains("%prefix%") {
                    t.push_str("/%prefix%");
                }
                let prefix_text = match self.prefixes[p].as_str() {
                    "" => DEFAULT_PREFIXES[p],
                    text => text,
                };
                t = t.replace("%prefix%", prefix_text);
                t = t.replace("%topic%", topic);
                t = t.replace("%hostname%", self.hostname);
                t.replace("%id%", self.unique_id)
            }
        };
        full.retain(|c| c != '#');
        let mut full = full.replace("//", "/");
        if !full.ends_with('/') {
            full.push('/');
        }
        full.push_str(truncate(subtopic, CMDSZ - 1));
        let cut = truncate(&full, TOPSZ - 1).len();
        full.truncate(cut);
        full
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn prefixes() -> [String; 3] {
        DEFAULT_PREFIXES.map(ToString::to_string)
    }

    fn ctx<'a>(fulltopic: &'a str, prefixes: &'a [String; 3]) -> TopicContext<'a> {
        TopicContext {
            fulltopic,
            prefixes,
            mqtt_client: "DVES_4B3316",
            hostname: "tasmota-4B3316-4886",
            unique_id: "5CCF7F4B3316",
        }
    }

    #[test]
    fn default_fulltopic() {
        let p = prefixes();
        let c = ctx("%prefix%/%topic%/", &p);
        assert_eq!(c.topic(Prefix::Stat, TopicKind::Full("tasmota_4B3316"), "RESULT"), "stat/tasmota_4B3316/RESULT");
        assert_eq!(c.topic(Prefix::Cmnd, TopicKind::Full("tasmota_4B3316"), "#"), "cmnd/tasmota_4B3316/#");
        assert_eq!(c.topic(Prefix::Cmnd, TopicKind::Full("tasmotas"), ""), "cmnd/tasmotas/");
        assert_eq!(c.topic(Prefix::Cmnd, TopicKind::Fallback, ""), "cmnd/DVES_4B3316_fb/");
        assert_eq!(c.topic(Prefix::Stat, TopicKind::Fallback, "RESULT"), "stat/DVES_4B3316_fb/RESULT");
        assert_eq!(c.topic(Prefix::Cmnd, TopicKind::Fixed("tasmotas"), "#"), "cmnd/tasmotas/#");
    }

    #[test]
    fn fulltopic_without_prefix_token() {
        let p = prefixes();
        let c = ctx("%topic%/", &p);
        assert_eq!(c.topic(Prefix::Cmnd, TopicKind::Full("t"), "POWER"), "t/cmnd/POWER");
        assert_eq!(c.topic(Prefix::Stat, TopicKind::Full("t"), "POWER"), "t/POWER");
    }

    #[test]
    fn hostname_id_hash_and_double_slash() {
        let p = prefixes();
        let c = ctx("home/%hostname%/%id%/%prefix%", &p);
        assert_eq!(
            c.topic(Prefix::Tele, TopicKind::Full("t"), "LWT"),
            "home/tasmota-4B3316-4886/5CCF7F4B3316/tele/LWT"
        );
        let c = ctx("a//b///%prefix%#/%topic%", &p);
        assert_eq!(c.topic(Prefix::Stat, TopicKind::Full("t"), "X"), "a/b//stat/t/X");
    }

    #[test]
    fn subtopic_and_topic_are_cut() {
        let p = prefixes();
        let c = ctx("%prefix%/%topic%/", &p);
        let t = c.topic(Prefix::Stat, TopicKind::Full("t"), "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        assert_eq!(t, "stat/t/ABCDEFGHIJKLMNOPQRSTUVW");
        let long = "x".repeat(200);
        assert_eq!(c.topic(Prefix::Stat, TopicKind::Full(&long), "R").len(), 150);
    }
}
