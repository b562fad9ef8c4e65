//! Shared helpers for the job tests (included with `mod common;`).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_core::{Channel, Event, MemoryChannel, MemoryChannelConfig};
use weir_streaming::JobMetrics;

/// A grid-aligned epoch for paused-time tests (a multiple of every interval used).
pub const EPOCH: i64 = 1_700_000_000_000;

pub fn channel(name: &str, max_events: u64) -> MemoryChannel {
    MemoryChannel::new(
        name,
        MemoryChannelConfig {
            max_events,
            max_bytes: weir_core::ByteSize(1 << 30),
            transaction_capacity: 1000,
        },
    )
}

/// Polls `cond` every 10 ms of (paused) tokio time; panics after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Puts `batches[i]` once `i` batches have completed (`done()` counts them), so batch `i`
/// of the job sees exactly `batches[i]`. Returns when all have been processed.
pub async fn feed(ch: &MemoryChannel, metrics: &JobMetrics, batches: &[Vec<Event>], base: u64) {
    for (i, b) in batches.iter().enumerate() {
        let need = base + i as u64;
        wait_until(Duration::from_secs(60), "batch", || {
            metrics.totals().0 >= need
        })
        .await;
        if !b.is_empty() {
            ch.put(b.clone()).await.unwrap();
        }
    }
    let need = base + batches.len() as u64;
    wait_until(Duration::from_secs(60), "last batch", || {
        metrics.totals().0 >= need
    })
    .await;
}

pub fn lines(v: &[&str]) -> Vec<Event> {
    v.iter().map(|l| Event::new(l.to_string())).collect()
}

/// A `print` target the test can read.
pub fn print_buffer() -> (Arc<Mutex<Vec<u8>>>, weir_streaming::output::PrintTarget) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let target: weir_streaming::output::PrintTarget = buf.clone();
    (buf, target)
}

pub fn as_dyn(ch: &MemoryChannel) -> Arc<dyn Channel> {
    Arc::new(ch.clone())
}
