//! Flume's event: a map of string headers and an opaque body (`org.apache.flume.Event`).

use std::collections::BTreeMap;

use bytes::Bytes;

/// Event headers. Flume's are an unordered `Map<String,String>`; an ordered map keeps output
/// and tests deterministic. Duplicate keys on the wire: the last one wins, as in Java.
pub type Headers = BTreeMap<String, String>;

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
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Sum of [`Event::size_bytes`] over a batch.
pub fn batch_bytes(events: &[Event]) -> usize {
    events.iter().map(Event::size_bytes).sum()
}
