//! Spark's `StreamingRequestCount` with weir's Rust API: every 2 seconds, take the log lines,
//! key each by its 3rd space-separated field, count per key, print.
//!
//! ```text
//! cargo run -p weir-streaming --example request_count < access.log
//! ```
//! Lines come from standard input through a memory channel (in the agent they come from any
//! source through any channel). The same job declaratively: `conf/request-count.toml`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use weir_core::{Channel, Event, MemoryChannel, MemoryChannelConfig};
use weir_streaming::{field, JobOptions, StreamingContext};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = MemoryChannel::new("lines", MemoryChannelConfig::default());
    let stop = CancellationToken::new();

    let mut ctx = StreamingContext::new("request_count", JobOptions::new(Duration::from_secs(2)));
    let lines = ctx.channel(Arc::new(channel.clone()));
    // `field` borrows the key from the event body; only distinct keys become Strings.
    ctx.add_output(lines.count_by_slice(|e| field(&e.body, b' ', 2)).print(10));
    let job = ctx.build(stop.clone())?;
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut batch = Vec::new();
    while let Some(line) = stdin.next_line().await? {
        batch.push(Event::new(line));
        if batch.len() == 1000 {
            put(&channel, std::mem::take(&mut batch)).await;
        }
    }
    put(&channel, batch).await;
    // Let the last lines go through one more batch, then stop.
    let done = metrics.totals().0;
    while metrics.totals().0 < done + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await??;
    Ok(())
}

/// Puts with retry: a full channel refuses, and the job drains it every batch.
async fn put(channel: &MemoryChannel, batch: Vec<Event>) {
    while let Err(e) = channel.put(batch.clone()).await {
        if !e.is_full() {
            eprintln!("{e}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
