//! The `console` sink: one line per event on standard output, like Flume's `logger` sink but
//! with the whole body as text. Valid UTF-8 is printed as is (control characters escaped);
//! other bytes as `\xNN`.

use std::fmt::Write as _;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use weir_core::metrics::MetricName;
use weir_core::{ComponentError, Event, Sink, SinkContext};

/// `[sinks.NAME] type = "console"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSinkConfig {
    /// Most events taken from the channel per transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Print at most this many body bytes per event (Flume's `maxBytesToLog`); unset = all.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
}

const fn default_batch_size() -> usize {
    100
}

impl Default for ConsoleSinkConfig {
    fn default() -> Self {
        ConsoleSinkConfig {
            batch_size: default_batch_size(),
            max_body_bytes: None,
        }
    }
}

impl ConsoleSinkConfig {
    pub fn check(&self) -> Vec<(&'static str, String)> {
        if self.batch_size == 0 {
            return vec![("batch_size", "must be at least 1".into())];
        }
        Vec::new()
    }

    pub fn build(&self) -> ConsoleSink {
        ConsoleSink {
            config: self.clone(),
        }
    }
}

pub struct ConsoleSink {
    config: ConsoleSinkConfig,
}

/// `Event: { headers:{k=v, k2=v2} body: text }`.
pub fn format_event(event: &Event, max_body_bytes: Option<usize>, out: &mut String) {
    out.push_str("Event: { headers:{");
    for (i, (k, v)) in event.headers.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_escaped(out, k.as_bytes());
        out.push('=');
        push_escaped(out, v.as_bytes());
    }
    out.push_str("} body: ");
    let body = &event.body[..max_body_bytes.unwrap_or(usize::MAX).min(event.body.len())];
    push_escaped(out, body);
    if body.len() < event.body.len() {
        let _ = write!(out, "... ({} bytes)", event.body.len());
    }
    out.push_str(" }\n");
}

fn push_escaped(out: &mut String, mut bytes: &[u8]) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                push_text(out, s);
                return;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                // valid_up_to guarantees this prefix is UTF-8.
                push_text(out, std::str::from_utf8(valid).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    let _ = write!(out, "\\x{b:02x}");
                }
                bytes = &rest[bad..];
            }
        }
    }
}

fn push_text(out: &mut String, s: &str) {
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

#[async_trait]
impl Sink for ConsoleSink {
    async fn run(self: Box<Self>, cx: SinkContext) -> Result<(), ComponentError> {
        let sent = cx.metrics.counter(MetricName::EventsSentTotal);
        let mut stdout = tokio::io::stdout();
        let mut text = String::new();
        while let Some(txn) = cx.next_batch(self.config.batch_size).await? {
            text.clear();
            for event in txn.events() {
                format_event(event, self.config.max_body_bytes, &mut text);
            }
            // Standard output going away is a failure: the batch rolls back (drop) and the
            // agent restarts the sink.
            stdout.write_all(text.as_bytes()).await?;
            stdout.flush().await?;
            let n = txn.len() as u64;
            txn.commit().await?;
            sent.inc(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(e: &Event, max: Option<usize>) -> String {
        let mut s = String::new();
        format_event(e, max, &mut s);
        s
    }

    #[test]
    fn prints_headers_and_text_body() {
        let e = Event::new("hello world")
            .with_header("host", "web01")
            .with_header("a", "b");
        assert_eq!(
            fmt(&e, None),
            "Event: { headers:{a=b, host=web01} body: hello world }\n"
        );
    }

    #[test]
    fn escapes_invalid_utf8_and_control_characters() {
        let e = Event::new(&b"caf\xc3\xa9 \xff\x00\tend\n"[..]);
        assert_eq!(
            fmt(&e, None),
            "Event: { headers:{} body: café \\xff\\u{0}\\tend\\n }\n"
        );
    }

    #[test]
    fn truncates_long_bodies_when_asked() {
        let e = Event::new("0123456789");
        assert_eq!(
            fmt(&e, Some(4)),
            "Event: { headers:{} body: 0123... (10 bytes) }\n"
        );
    }
}
