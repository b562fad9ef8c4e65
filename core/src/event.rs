//! Flume's event: a map of string headers and an opaque body (`org.apache.flume.Event`).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

/// Header keys and values: strings of up to 24 bytes are kept inline, without an allocation
/// (`topic`, `offset`, `timestamp`, host names, most Flume header values), longer ones on the heap.
pub type HeaderText = compact_str::CompactString;
pub use compact_str::ToCompactString;

/// Event headers: Flume's `Map<String,String>`, kept as a vector sorted by key.
///
/// Events carry a handful of headers, so a sorted vector beats a tree: one allocation for the
/// table instead of a ~550-byte B-tree node per event, binary-search lookups, and the same
/// deterministic key order a `BTreeMap` gives (output and tests stay stable). Inserting an
/// existing key replaces its value, so duplicate keys on the wire end as in Java: last wins.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers(Vec<(HeaderText, HeaderText)>);

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
    pub fn insert(
        &mut self,
        key: impl Into<HeaderText>,
        value: impl Into<HeaderText>,
    ) -> Option<HeaderText> {
        let (key, value) = (key.into(), value.into());
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

    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    pub fn remove(&mut self, key: &str) -> Option<HeaderText> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + DoubleEndedIterator {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(_, v)| v.as_str())
    }

    /// `entry(key).or_insert_with(f)`, as on a map.
    pub fn entry(&mut self, key: impl Into<HeaderText>) -> HeaderEntry<'_> {
        HeaderEntry {
            headers: self,
            key: key.into(),
        }
    }

    /// Bytes of header text (keys plus values).
    pub fn text_bytes(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// A header that may or may not be set yet; see [`Headers::entry`].
pub struct HeaderEntry<'a> {
    headers: &'a mut Headers,
    key: HeaderText,
}

impl<'a> HeaderEntry<'a> {
    pub fn or_insert_with<V: Into<HeaderText>>(
        self,
        value: impl FnOnce() -> V,
    ) -> &'a mut HeaderText {
        let i = match self.headers.find(&self.key) {
            Ok(i) => i,
            Err(i) => {
                self.headers.0.insert(i, (self.key, value().into()));
                i
            }
        };
        &mut self.headers.0[i].1
    }

    pub fn or_insert(self, value: impl Into<HeaderText>) -> &'a mut HeaderText {
        self.or_insert_with(|| value)
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<HeaderText>, V: Into<HeaderText>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Into<HeaderText>, V: Into<HeaderText>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        h.extend(iter);
        h
    }
}

impl<K: Into<HeaderText>, V: Into<HeaderText>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Headers {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Already sorted and unique.
        Headers(map.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl IntoIterator for Headers {
    type Item = (HeaderText, HeaderText);
    type IntoIter = std::vec::IntoIter<(HeaderText, HeaderText)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (HeaderText, HeaderText)>,
        fn(&'a (HeaderText, HeaderText)) -> (&'a str, &'a str),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
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

    pub fn with_header(mut self, key: impl Into<HeaderText>, value: impl Into<HeaderText>) -> Self {
        self.headers.insert(key, value);
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
        assert_eq!(h.insert("b", "1"), None);
        assert_eq!(h.insert("a", "2"), None);
        assert_eq!(h.insert("b", "3"), Some("1".into()), "last value wins");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("a", "2"), ("b", "3")]);
        assert_eq!(h.get("b"), Some("3"));
        assert!(h.contains_key("a") && !h.contains_key("c"));
        assert_eq!(h.remove("a"), Some("2".into()));
        assert_eq!(h.len(), 1);
        assert_eq!(format!("{h:?}"), r#"{"b": "3"}"#);
        let long = "a value longer than the twenty-four bytes kept inline";
        h.insert("long", long.to_compact_string());
        assert_eq!(h.get("long"), Some(long));
        let from_map: Headers = BTreeMap::from([
            ("z".to_string(), "1".to_string()),
            ("y".to_string(), "2".to_string()),
        ])
        .into();
        assert_eq!(from_map.keys().collect::<Vec<_>>(), vec!["y", "z"]);
    }
}
