//! Flume's event: a map of string headers and an opaque body (`org.apache.flume.Event`).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

/// Event headers: Flume's `Map<String,String>`, kept as a vector sorted by key.
///
/// Events carry a handful of headers, so a sorted vector beats a tree: one allocation for the
/// table instead of a ~550-byte B-tree node per event, binary-search lookups, and the same
/// deterministic key order a `BTreeMap` gives (output and tests stay stable). Inserting an
/// existing key replaces its value, so duplicate keys on the wire end as in Java: last wins.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        Headers(Vec::with_capacity(n))
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// Sets `key`, returning the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        // Decoders see keys in order (they were written from a `Headers`): append.
        if self
            .0
            .last()
            .is_none_or(|(last, _)| last.as_str() < key.as_str())
        {
            self.0.push((key, value));
            return None;
        }
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> + DoubleEndedIterator {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(_, v)| v)
    }

    /// `entry(key).or_insert_with(f)`, as on a map.
    pub fn entry(&mut self, key: String) -> HeaderEntry<'_> {
        HeaderEntry { headers: self, key }
    }

    /// Bytes of header text (keys plus values).
    pub fn text_bytes(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// A header that may or may not be set yet; see [`Headers::entry`].
pub struct HeaderEntry<'a> {
    headers: &'a mut Headers,
    key: String,
}

impl<'a> HeaderEntry<'a> {
    pub fn or_insert_with(self, value: impl FnOnce() -> String) -> &'a mut String {
        let i = match self.headers.find(&self.key) {
            Ok(i) => i,
            Err(i) => {
                self.headers.0.insert(i, (self.key, value()));
                i
            }
        };
        &mut self.headers.0[i].1
    }

    pub fn or_insert(self, value: String) -> &'a mut String {
        self.or_insert_with(|| value)
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Extend<(String, String)> for Headers {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl FromIterator<(String, String)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut h = Headers::new();
        h.extend(iter);
        h
    }
}

impl<const N: usize> From<[(String, String); N]> for Headers {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Headers {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Already sorted and unique.
        Headers(map.into_iter().collect())
    }
}

impl IntoIterator for Headers {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// One event. The body is a `Bytes` so that decoding, routing and re-encoding share one buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub headers: Headers,
    pub body: Bytes,
}

impl Event {
    pub fn new(body: impl Into<Bytes>) -> Self {
        Event {
            headers: Headers::new(),
            body: body.into(),
        }
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Bytes this event accounts for in channel capacity: body plus header text.
    pub fn size_bytes(&self) -> usize {
        self.body.len() + self.headers.text_bytes()
    }
}

/// Sum of [`Event::size_bytes`] over a batch.
pub fn batch_bytes(events: &[Event]) -> usize {
    events.iter().map(Event::size_bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_behave_like_a_sorted_map() {
        let mut h = Headers::new();
        assert_eq!(h.insert("b".into(), "1".into()), None);
        assert_eq!(h.insert("a".into(), "2".into()), None);
        assert_eq!(
            h.insert("b".into(), "3".into()),
            Some("1".into()),
            "last value wins"
        );
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            vec![
                (&"a".to_string(), &"2".to_string()),
                (&"b".to_string(), &"3".to_string())
            ]
        );
        assert_eq!(h.get("b").map(String::as_str), Some("3"));
        assert!(h.contains_key("a") && !h.contains_key("c"));
        assert_eq!(h.remove("a"), Some("2".into()));
        assert_eq!(h.len(), 1);
        assert_eq!(format!("{h:?}"), r#"{"b": "3"}"#);
        let from_map: Headers = BTreeMap::from([
            ("z".to_string(), "1".to_string()),
            ("y".to_string(), "2".to_string()),
        ])
        .into();
        assert_eq!(from_map.keys().collect::<Vec<_>>(), vec!["y", "z"]);
    }
}
