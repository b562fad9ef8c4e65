//! Backpressure: input at twice the processing rate. With the PID estimator the per-batch
//! limit converges to the processing rate, scheduling delay stops growing, and memory stays
//! flat because the bounded channel holds the rest and refuses the producer when full.
//! Run with `--nocapture` to see the series.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use weir_core::{Channel, Event};
use weir_streaming::output::EventsFn;
use weir_streaming::{JobOptions, StreamingContext, TokioClock};

const PROCESS_US_PER_EVENT: u64 = 100; // 10,000 events/s
const INPUT_PER_TICK: usize = 1_000; // every 50 ms: 20,000 events/s (the channel caps puts at 1,000)
const CAPACITY: u64 = 60_000;

async fn run(backpressure: bool, batches: u64) -> (Vec<weir_streaming::BatchInfo>, u64, u64) {
    let ch = channel("in", CAPACITY);
    let stop = CancellationToken::new();
    let mut opts = JobOptions::new(Duration::from_secs(1));
    opts.backpressure = backpressure;
    let mut ctx = StreamingContext::new("bp", opts).with_clock(Arc::new(TokioClock::new(EPOCH)));
    let events = ctx.channel(as_dyn(&ch));
    // The output costs 100 µs of (paused) tokio time per event.
    let send: EventsFn = Arc::new(|evs: Vec<Event>| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_micros(
                PROCESS_US_PER_EVENT * evs.len() as u64,
            ))
            .await;
            Ok(())
        })
    });
    ctx.add_output(events.cloned().events(send, |_, e| e));
    let job = ctx.build(stop.clone()).unwrap();
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());

    let refused = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let producer = {
        let (ch, refused, peak, stop) = (ch.clone(), refused.clone(), peak.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.is_cancelled() {
                tick.tick().await;
                let batch: Vec<Event> = (0..INPUT_PER_TICK)
                    .map(|i| Event::new(format!("e{i}")))
                    .collect();
                if ch.put(batch).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                peak.fetch_max(ch.stats().events, Ordering::Relaxed);
            }
        })
    };
    wait_until(Duration::from_secs(3600), "batches", || {
        metrics.totals().0 >= batches
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    producer.await.unwrap();
    (
        metrics.batches(),
        refused.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed),
    )
}

fn show(label: &str, series: &[weir_streaming::BatchInfo]) {
    println!("{label}: batch  limit/batch  input  processing_ms  scheduling_delay_ms");
    for (i, b) in series.iter().enumerate() {
        println!(
            "{label}: {i:>5}  {:>11}  {:>5}  {:>13}  {:>19}",
            b.batch_limit, b.input_events, b.processing_time_ms, b.scheduling_delay_ms
        );
    }
}

#[tokio::test(start_paused = true)]
async fn pid_rate_converges_to_the_processing_rate_and_memory_stays_flat() {
    let (series, refused, peak) = run(true, 40).await;
    show("backpressure", &series);
    // Batches 30..40; the ones after are the drain at stop (the channel is a memory one).
    let tail = &series[30..40];
    for b in tail {
        assert!(
            (8_000..=12_000).contains(&b.input_events),
            "batch {} took {} events; expected ≈ 10,000 (the processing rate × 1 s)",
            b.batch_time_ms,
            b.input_events
        );
        assert!(
            b.scheduling_delay_ms < 1000,
            "scheduling delay {} ms",
            b.scheduling_delay_ms
        );
    }
    assert!(
        peak <= CAPACITY,
        "channel never holds more than its capacity ({peak})"
    );
    assert!(refused > 0, "the channel refused the producer once full");
    println!("backpressure: producer refused {refused} puts; channel peak {peak} events");
}

#[tokio::test(start_paused = true)]
async fn without_backpressure_scheduling_delay_grows() {
    let (series, _, peak) = run(false, 12).await;
    show("no-backpressure", &series);
    let d: Vec<i64> = series.iter().map(|b| b.scheduling_delay_ms).collect();
    assert!(d[d.len() - 1] > d[2] + 5_000, "delays {d:?}");
    assert!(peak <= CAPACITY);
}
