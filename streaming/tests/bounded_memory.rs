//! A batch's memory is one chunk plus the aggregation state, not the batch: the request-count
//! job drains a 200,000-event backlog of a `file` channel in one batch while a counting global
//! allocator records the heap's peak. Taken in chunks of 1,000 the peak stays far below one
//! copy of the batch's events; the same job in one chunk per batch (the control) holds them
//! all, which shows the measurement sees what it claims to bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_core::{ByteSize, Channel, Event};
use weir_streaming::{field, JobOptions, StreamingContext};
use weir_wal::{FileChannel, FileChannelConfig};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// `unsafe` allowed (the workspace denies it): a global allocator is an `unsafe impl` by
// definition. Each method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract, and only adds relaxed counter updates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const EVENTS: u64 = 200_000;
const KEYS: u64 = 1000;
/// Bytes of one event's body.
const BODY: usize = 120;

fn line(i: u64) -> Event {
    let mut s = format!(
        "10.0.{}.{} - user{} [23/Nov/2026:10:00:00 +0000] \"GET /index.html HTTP/1.1\" 200 5120",
        i % 200,
        i % 250,
        i % KEYS
    );
    s.extend(std::iter::repeat_n('x', BODY.saturating_sub(s.len())));
    Event::new(s)
}

fn config() -> FileChannelConfig {
    FileChannelConfig {
        max_events: EVENTS + 10,
        transaction_capacity: EVENTS as usize,
        // Nothing kept decoded from the puts: every take reads back from the segments.
        cache_bytes: ByteSize(0),
        ..FileChannelConfig::default()
    }
}

/// Fills a fresh channel in `dir` with the backlog, then reopens it so that nothing from the
/// puts is left in memory.
async fn backlog(dir: &Path) -> FileChannel {
    let ch = FileChannel::open("in", dir, config()).await.unwrap();
    for b in 0..EVENTS / 1000 {
        ch.put((b * 1000..(b + 1) * 1000).map(line).collect())
            .await
            .unwrap();
    }
    ch.close().await;
    drop(ch);
    FileChannel::open("in", dir, config()).await.unwrap()
}

type Counts = Vec<(String, u64)>;

/// Runs the request-count job over the backlog in one batch with `chunk_events`; returns the
/// heap's growth at its peak during the job, and the counts the job produced.
async fn run_job(dir: &Path, chunk_events: usize) -> (usize, Counts) {
    let ch: Arc<dyn Channel> = Arc::new(backlog(&dir.join("channel")).await);
    let mut opts = JobOptions::new(Duration::from_millis(200));
    opts.max_batch_events = EVENTS as usize;
    opts.chunk_events = chunk_events;
    opts.data_dir = Some(dir.join("data"));
    let mut ctx = StreamingContext::new("request_count", opts);
    let lines = ctx.channel(ch.clone());
    let results: Arc<Mutex<Vec<Counts>>> = Arc::default();
    let sink = results.clone();
    ctx.add_output(
        lines
            .count_by_slice(|e| field(&e.body, b' ', 2))
            .for_each_batch(move |_, v| {
                if !v.is_empty() {
                    sink.lock().unwrap().push(v);
                }
                Ok(())
            }),
    );
    let stop = CancellationToken::new();
    let job = ctx.build(stop.clone()).unwrap();
    let metrics = job.metrics();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let task = tokio::spawn(job.run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metrics.totals().1 < EVENTS {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let peak = PEAK.load(Ordering::Relaxed);
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(ch.stats().events, 0, "the batch is committed");
    let mut batches = results.lock().unwrap().clone();
    assert_eq!(batches.len(), 1, "one batch took the whole backlog");
    (peak.saturating_sub(base), batches.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holds_one_chunk_of_events_not_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (chunked, counts) = run_job(&tmp.path().join("chunked"), 1000).await;
    assert_eq!(counts.len(), KEYS as usize);
    assert!(
        counts.iter().all(|(_, n)| *n == EVENTS / KEYS),
        "{counts:?}"
    );
    let (whole, whole_counts) = run_job(&tmp.path().join("whole"), EVENTS as usize).await;
    assert_eq!(whole_counts, counts);
    let batch_bodies = EVENTS as usize * BODY;
    eprintln!(
        "heap growth at peak: {chunked} B in chunks of 1000, {whole} B in one chunk; \
         the batch's bodies alone are {batch_bodies} B"
    );
    assert!(
        whole > batch_bodies,
        "control: one chunk per batch holds every event ({whole} B)"
    );
    // What stays per taken event until the commit: the file channel's 8-byte sequence number.
    assert!(
        chunked < batch_bodies / 4,
        "chunked: {chunked} B at peak, not bounded by a chunk"
    );
}
