//! Throughput of the request-count hot path inside the engine: preload a channel with
//! `N` log lines, run one 2 s batch of the declarative job and of the Rust API job, and
//! report events/s from the batch's processing time (cut + operators + output + checkpoint
//! + commit).
//!
//! ```text
//! cargo run --release -p weir-streaming --example request_count_bench -- 2000000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use weir_core::{Channel, Event, MemoryChannel, MemoryChannelConfig};
use weir_streaming::config::BuildContext;
use weir_streaming::{field, JobConfig, JobMetrics, JobOptions, StreamingContext};

fn line(i: u64) -> Event {
    // Common log format; 1000 distinct users.
    Event::new(format!(
        "10.1.{}.{} - user{} [23/Nov/2026:10:00:00 +0000] \"GET /index.html HTTP/1.1\" 200 {}",
        i % 256,
        i % 200,
        i % 1000,
        i % 5000
    ))
}

async fn preload(n: u64) -> MemoryChannel {
    let ch = MemoryChannel::new(
        "in",
        MemoryChannelConfig {
            max_events: n,
            max_bytes: weir_core::ByteSize(u64::MAX / 2),
            transaction_capacity: 10_000,
        },
    );
    let mut i = 0;
    while i < n {
        let batch: Vec<Event> = (i..(i + 10_000).min(n)).map(line).collect();
        i += batch.len() as u64;
        ch.put(batch).await.unwrap();
    }
    ch
}

async fn one_batch(
    label: &str,
    ch: &MemoryChannel,
    metrics: JobMetrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), weir_streaming::JobError>>,
) {
    while metrics.totals().0 < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let b = metrics.last().unwrap();
    println!(
        "{label}: {} events in {} ms processing → {:.0} events/s (total delay {} ms, left in channel {})",
        b.input_events,
        b.processing_time_ms,
        b.input_events as f64 * 1000.0 / b.processing_time_ms.max(1) as f64,
        b.total_delay_ms,
        ch.stats().events
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let data = std::env::temp_dir().join(format!("weir-rc-bench-{}", std::process::id()));

    let t = Instant::now();
    let ch = preload(n).await;
    println!("preloaded {n} events in {:?}", t.elapsed());
    let job: JobConfig = toml::from_str(
        r#"
        input = "in"
        batch_interval = "2s"
        max_batch_events = 100000000
        steps = [{ split = " ", field = 2 }, { count_by_value = {} }]
        output = { type = "print", n = 10 }
        "#,
    )
    .unwrap();
    let stop = CancellationToken::new();
    let mut cx = BuildContext::new(vec![Arc::new(ch.clone())], data.clone(), stop.clone());
    // A print target that discards, so the measurement is the engine, not the terminal.
    cx.print_target = Some(Arc::new(std::sync::Mutex::new(std::io::sink())));
    let job = job.build("rc", cx).unwrap();
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    one_batch("declarative", &ch, metrics, stop, task).await;

    let ch = preload(n).await;
    let stop = CancellationToken::new();
    let mut opts = JobOptions::new(Duration::from_secs(2));
    opts.max_batch_events = usize::MAX;
    opts.data_dir = Some(data.clone());
    let mut ctx = StreamingContext::new("rc_api", opts);
    let lines = ctx.channel(Arc::new(ch.clone()));
    ctx.add_output(
        lines
            .count_by_slice(|e| field(&e.body, b' ', 2))
            .print_to(10, Arc::new(std::sync::Mutex::new(std::io::sink()))),
    );
    let job = ctx.build(stop.clone()).unwrap();
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    one_batch("rust api", &ch, metrics, stop, task).await;
    let _ = std::fs::remove_dir_all(&data);
}
