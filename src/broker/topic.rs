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

/// Subscriptions indexed by topic level (a trie), so that routing a PUBLISH costs what
/// its topic's levels touch, not the number of subscriptions: with ten thousand devices
/// subscribed to `cmnd/<topic>/#` each, a publish visits a handful of nodes instead of
/// matching thirty thousand filters. Matching is exactly [`matches`] (a property test
/// checks the two agree).
pub struct FilterIndex<T> {
    root: Node<T>,
}

impl<T> Default for FilterIndex<T> {
    fn default() -> Self {
        FilterIndex { root: Node::default() }
    }
}

struct Node<T> {
    children: std::collections::HashMap<Box<str>, Node<T>>,
    plus: Option<Box<Node<T>>>,
    /// Subscribers whose filter ends at this level.
    here: Vec<(std::sync::Arc<str>, T)>,
    /// Subscribers of this level's `#`.
    hash: Vec<(std::sync::Arc<str>, T)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { children: Default::default(), plus: None, here: Vec::new(), hash: Vec::new() }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.here.is_empty() && self.hash.is_empty() && self.plus.is_none() && self.children.is_empty()
    }
}

impl<T: Copy> FilterIndex<T> {
    /// Adds `client`'s subscription to `filter` (a valid filter), replacing its value if
    /// the client already has this filter.
    pub fn insert(&mut self, filter: &str, client: &std::sync::Arc<str>, value: T) {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return upsert(&mut node.hash, client, value);
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        upsert(&mut node.here, client, value);
    }

    /// Removes `client`'s subscription to `filter`, pruning levels left empty.
    pub fn remove(&mut self, filter: &str, client: &std::sync::Arc<str>) {
        let levels: Vec<&str> = filter.split('/').collect();
        remove_at(&mut self.root, &levels, client);
    }

    /// Calls `found` for every subscription whose filter matches `topic` (one call per
    /// matching filter; a client with two matching filters is found twice).
    pub fn matching(&self, topic: &str, hash_matches_parent: bool, mut found: impl FnMut(&std::sync::Arc<str>, T)) {
        let levels: Vec<&str> = topic.split('/').collect();
        // §4.7.2: a filter starting with a wildcard does not match a `$` topic.
        let dollar = topic.starts_with('$');
        walk(&self.root, &levels, hash_matches_parent, dollar, &mut found);
    }
}

fn upsert<T>(list: &mut Vec<(std::sync::Arc<str>, T)>, client: &std::sync::Arc<str>, value: T) {
    match list.iter_mut().find(|(c, _)| c == client) {
        Some((_, v)) => *v = value,
        None => list.push((client.clone(), value)),
    }
}

/// Removes the subscription below `node`; returns whether `node` is now empty.
fn remove_at<T>(node: &mut Node<T>, levels: &[&str], client: &std::sync::Arc<str>) -> bool {
    match levels {
        [] => node.here.retain(|(c, _)| c != client),
        ["#"] => node.hash.retain(|(c, _)| c != client),
        ["+", rest @ ..] => {
            if let Some(child) = node.plus.as_deref_mut() {
                if remove_at(child, rest, client) {
                    node.plus = None;
                }
            }
        }
        [level, rest @ ..] => {
            if let Some(child) = node.children.get_mut(*level) {
                if remove_at(child, rest, client) {
                    node.children.remove(*level);
                }
            }
        }
    }
    node.is_empty()
}

fn walk<T: Copy>(
    node: &Node<T>,
    levels: &[&str],
    hash_matches_parent: bool,
    dollar: bool,
    found: &mut impl FnMut(&std::sync::Arc<str>, T),
) {
    // `a/#` matches `a/...` always and `a` itself where the parent rule holds.
    if !dollar && (!levels.is_empty() || hash_matches_parent) {
        for (c, v) in &node.hash {
            found(c, *v);
        }
    }
    let Some((level, rest)) = levels.split_first() else {
        for (c, v) in &node.here {
            found(c, *v);
        }
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, rest, hash_matches_parent, false, found);
    }
    if let (false, Some(plus)) = (dollar, &node.plus) {
        walk(plus, rest, hash_matches_parent, false, found);
    }
}

/// Topic names indexed by level, for the retained messages a new subscription gets: a
/// filter visits only the levels it can match, not every retained topic.
#[derive(Default)]
pub struct TopicTree {
    root: TopicNode,
}

#[derive(Default)]
struct TopicNode {
    children: std::collections::BTreeMap<Box<str>, TopicNode>,
    /// A topic ends here.
    present: bool,
}

impl TopicTree {
    pub fn insert(&mut self, topic: &str) {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.present = true;
    }

    pub fn remove(&mut self, topic: &str) {
        fn remove_at(node: &mut TopicNode, levels: &[&str]) -> bool {
            match levels.split_first() {
                None => node.present = false,
                Some((level, rest)) => {
                    if let Some(child) = node.children.get_mut(*level) {
                        if remove_at(child, rest) {
                            node.children.remove(*level);
                        }
                    }
                }
            }
            !node.present && node.children.is_empty()
        }
        let levels: Vec<&str> = topic.split('/').collect();
        remove_at(&mut self.root, &levels);
    }

    /// Every topic `filter` matches (as [`matches`] decides), in no particular order.
    pub fn matching(&self, filter: &str, hash_matches_parent: bool) -> Vec<String> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        let mut path = Vec::new();
        collect(&self.root, &levels, hash_matches_parent, true, &mut path, &mut out);
        out
    }
}

fn collect<'a>(
    node: &'a TopicNode,
    filter: &[&str],
    hash_matches_parent: bool,
    first: bool,
    path: &mut Vec<&'a str>,
    out: &mut Vec<String>,
) {
    // §4.7.2: at the first level, a wildcard does not match a `$` topic.
    let wild_ok = |name: &str| !(first && name.starts_with('$'));
    match filter.split_first() {
        None => {
            if node.present {
                out.push(path.join("/"));
            }
        }
        Some((&"#", _)) => {
            if hash_matches_parent && node.present && !first {
                out.push(path.join("/"));
            }
            for (name, child) in node.children.iter().filter(|(n, _)| wild_ok(n)) {
                path.push(name);
                everything(child, path, out);
                path.pop();
            }
        }
        Some((&"+", rest)) => {
            for (name, child) in node.children.iter().filter(|(n, _)| wild_ok(n)) {
                path.push(name);
                collect(child, rest, hash_matches_parent, false, path, out);
                path.pop();
            }
        }
        Some((level, rest)) => {
            if let Some((name, child)) = node.children.get_key_value(*level) {
                path.push(name);
                collect(child, rest, hash_matches_parent, false, path, out);
                path.pop();
            }
        }
    }
}

fn everything<'a>(node: &'a TopicNode, path: &mut Vec<&'a str>, out: &mut Vec<String>) {
    if node.present {
        out.push(path.join("/"));
    }
    for (name, child) in &node.children {
        path.push(name);
        everything(child, path, out);
        path.pop();
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

    proptest::proptest! {
        /// The index finds exactly the filters [`matches`] accepts, with both parent rules.
        #[test]
        fn the_index_agrees_with_matches(
            filters in proptest::collection::vec("(\\$?[ab+#]{0,1})(/[ab+#]{0,1}){0,3}", 1..12),
            topic in "\\$?[ab]{0,1}(/[ab]{0,1}){0,3}",
            parent in proptest::bool::ANY,
        ) {
            let filters: Vec<String> = filters.into_iter().filter(|f| validate_filter(f).is_ok()).collect();
            let mut index = FilterIndex::default();
            for (i, f) in filters.iter().enumerate() {
                let client: std::sync::Arc<str> = format!("c{i}").into();
                index.insert(f, &client, i);
            }
            let mut found = Vec::new();
            index.matching(&topic, parent, |_, i| found.push(i));
            found.sort();
            let want: Vec<usize> = (0..filters.len()).filter(|i| matches(&filters[*i], &topic, parent)).collect();
            proptest::prop_assert_eq!(found, want, "filters {:?} topic {:?}", filters, topic);
            // Removing every subscription leaves an empty index.
            for (i, f) in filters.iter().enumerate() {
                index.remove(f, &format!("c{i}").into());
            }
            proptest::prop_assert!(index.root.is_empty());
        }
    }

    proptest::proptest! {
        /// The retained-topic tree finds exactly the topics [`matches`] accepts.
        #[test]
        fn the_topic_tree_agrees_with_matches(
            topics in proptest::collection::vec("\\$?[ab]{0,1}(/[ab]{0,1}){0,3}", 1..12),
            filter in "(\\$?[ab+#]{0,1})(/[ab+#]{0,1}){0,3}",
            parent in proptest::bool::ANY,
        ) {
            proptest::prop_assume!(validate_filter(&filter).is_ok());
            let mut tree = TopicTree::default();
            for t in &topics {
                tree.insert(t);
            }
            let mut found = tree.matching(&filter, parent);
            found.sort();
            let mut want: Vec<String> = topics.iter().filter(|t| matches(&filter, t, parent)).cloned().collect();
            want.sort();
            want.dedup();
            proptest::prop_assert_eq!(found, want, "filter {:?}", filter);
            for t in &topics {
                tree.remove(t);
            }
            proptest::prop_assert!(tree.root.children.is_empty() && !tree.root.present);
        }
    }
}
