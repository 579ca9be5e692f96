//! Topic names and topic filters (MQTT 3.1.1 §4.7): validation, and matching with the
//! `$` rule. One profile flag changes matching: on AWS IoT `a/#` does not match `a`.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("wildcard in a topic name")]
    WildcardInName,
    #[error("'#' not alone in the last level")]
    MisplacedHash,
    #[error("'+' not alone in its level")]
    MisplacedPlus,
    #[error("NUL character in topic")]
    Nul,
}

/// A topic name a client may PUBLISH to: not empty, no wildcards, no NUL.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A topic filter a client may SUBSCRIBE to: `#` only as the whole last level, `+` only
/// as a whole level.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

/// True when the filter has a wildcard (so it cannot be looked up by exact name).
pub fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Does `filter` match `topic`? Both are assumed valid. Topics starting with `$` are not
/// matched by a filter starting with a wildcard (§4.7.2). `hash_matches_parent`: whether
/// `a/#` matches `a` (MQTT and Mosquitto: yes; AWS IoT: no).
pub fn matches(filter: &str, topic: &str, hash_matches_parent: bool) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), Some(_)) => return true,
            (Some("#"), None) => return hash_matches_parent,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_the_spec() {
        for ok in ["a", "#", "+", "a/+/c", "a/#", "+/+", "/", "a//b", "$SYS/#"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::MisplacedHash));
        assert_eq!(validate_filter("a#"), Err(TopicError::MisplacedHash));
        assert_eq!(validate_filter("a+"), Err(TopicError::MisplacedPlus));
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/b"), Ok(()));
    }

    #[test]
    fn matching_with_the_dollar_rule_and_the_aws_parent_rule() {
        assert!(matches("a/+/c", "a/b/c", true));
        assert!(matches("a/+/c", "a//c", true));
        assert!(!matches("a/+/c", "a/b/c/d", true));
        assert!(matches("a/#", "a/b/c", true));
        assert!(matches("a/#", "a", true));
        assert!(!matches("a/#", "a", false));
        assert!(matches("a/#", "a/", false));
        assert!(matches("#", "a/b", true));
        assert!(!matches("#", "$SYS/x", true));
        assert!(!matches("+/x", "$y/x", true));
        assert!(matches("$SYS/#", "$SYS/x", true));
        assert!(matches("a", "a", true));
        assert!(!matches("a", "a/b", true));
        assert!(!matches("a/b", "a", true));
        assert!(matches("+", "", true));
        assert!(!matches("+", "a/b", true));
    }
}
