//! Crash recovery, simulated in-process: the job returns at an injected failure point
//! (dropping its take transactions, as a killed process would leave them uncommitted), then a
//! new job is opened on the same data dir and channel. File outputs and stateful results must
//! be exactly those of an uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use weir_core::{Channel, Event, MemoryChannel};
use weir_streaming::clock::SharedClock;
use weir_streaming::config::BuildContext;
use weir_streaming::{
    field, FailPoint, Job, JobConfig, JobError, JobOptions, StreamingContext, TokioClock,
};

fn input() -> Vec<Vec<Event>> {
    let words = ["alice", "bob", "carol", "dave"];
    (0..8)
        .map(|i| {
            (0..(i * 3 % 7))
                .map(|j| Event::new(format!("h - {} x", words[(i * 5 + j * 3) % 4])))
                .collect()
        })
        .collect()
}

/// Declarative: windowed counts (window state) to files.
fn declarative(
    ch: &MemoryChannel,
    data: &Path,
    out: &Path,
    ckpt: Option<&str>,
    clock: SharedClock,
    stop: CancellationToken,
) -> Job {
    let ckpt = ckpt
        .map(|c| format!("checkpoint_interval = \"{c}\"\n"))
        .unwrap_or_default();
    let job: JobConfig = toml::from_str(&format!(
        r#"
        input = "in"
        {ckpt}
        steps = [{{ split = " ", field = 2 }}, {{ count_by_value = {{}} }}]
        window = {{ length = "6s", slide = "2s", inverse = true }}
        output = {{ type = "file", dir = "{}", prefix = "win", suffix = "txt" }}
        "#,
        out.display()
    ))
    .unwrap();
    let mut cx = BuildContext::new(vec![as_dyn(ch)], data.to_path_buf(), stop);
    cx.clock = Some(clock);
    job.build("win", cx).unwrap()
}

/// Rust API: per-key windowed counts feeding `update_state_by_key` (the most each key was
/// seen in a window) — two state nodes — to files.
fn rust_api(
    ch: &MemoryChannel,
    data: &Path,
    out: &Path,
    ckpt: Option<&str>,
    clock: SharedClock,
    stop: CancellationToken,
) -> Job {
    let mut opts = JobOptions::new(Duration::from_secs(2));
    opts.data_dir = Some(data.to_path_buf());
    opts.checkpoint_interval = ckpt
        .map(|c| c.trim_end_matches('s').parse::<u64>().unwrap())
        .map(Duration::from_secs);
    let mut ctx = StreamingContext::new("state", opts).with_clock(clock);
    let lines = ctx.channel(as_dyn(ch));
    let out = out.to_path_buf();
    ctx.add_output(
        lines
            .count_by_slice(|e| field(&e.body, b' ', 2))
            .reduce_by_key_and_window(
                |a, b| a + b,
                None,
                Duration::from_secs(4),
                Duration::from_secs(2),
            )
            .update_state_by_key(|_k, vals: Vec<u64>, old: Option<u64>| {
                Some(vals.into_iter().chain(old).max().unwrap_or(0))
            })
            .file(out, "max", None),
    );
    ctx.build(stop).unwrap()
}

type Builder =
    fn(&MemoryChannel, &Path, &Path, Option<&str>, SharedClock, CancellationToken) -> Job;

fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "temp file left behind: {name}");
        m.insert(name, std::fs::read_to_string(e.path()).unwrap());
    }
    m
}

async fn uninterrupted(build: Builder, ckpt: Option<&str>) -> BTreeMap<String, String> {
    let ch = channel("in", 10_000);
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock: SharedClock = Arc::new(TokioClock::new(EPOCH));
    let stop = CancellationToken::new();
    let job = build(&ch, data.path(), out.path(), ckpt, clock, stop.clone());
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    feed(&ch, &metrics, &input(), 0).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(ch.stats().events, 0);
    files(out.path())
}

async fn crashed(
    build: Builder,
    ckpt: Option<&str>,
    point: FailPoint,
    at: usize,
) -> BTreeMap<String, String> {
    let batches = input();
    let ch = channel("in", 10_000);
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock: SharedClock = Arc::new(TokioClock::new(EPOCH));
    let stop = CancellationToken::new();
    let mut job = build(
        &ch,
        data.path(),
        out.path(),
        ckpt,
        clock.clone(),
        stop.clone(),
    );
    job.inject_failure(point, at as u64);
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    feed(&ch, &metrics, &batches[..at], 0).await;
    if !batches[at].is_empty() {
        ch.put(batches[at].clone()).await.unwrap();
    }
    let err = tokio::time::timeout(Duration::from_secs(600), task)
        .await
        .expect("the job reaches the failure point")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, JobError::InjectedFailure { .. }), "{err}");

    // Batches the restarted job replays before taking new input.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            data.path()
                .join("jobs")
                .join(job_name(build))
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let replays = manifest["pending"].as_array().unwrap().len() as u64;

    let job = build(&ch, data.path(), out.path(), ckpt, clock, stop.clone());
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    // A batch that crashed before its journal entry is not replayed: its events were rolled
    // back and the restarted job takes them at the same (missed) tick, as a normal batch.
    let base = if point == FailPoint::AfterCut {
        replays + 1
    } else {
        replays
    };
    feed(&ch, &metrics, &batches[at + 1..], base).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(ch.stats().events, 0, "everything committed in the end");
    files(out.path())
}

fn job_name(build: Builder) -> &'static str {
    if build as usize == declarative as Builder as usize {
        "win"
    } else {
        "state"
    }
}

#[tokio::test(start_paused = true)]
async fn crash_at_any_point_gives_the_uninterrupted_results() {
    let builders: [(Builder, &str); 2] = [(declarative, "declarative"), (rust_api, "rust_api")];
    for (build, label) in builders {
        for ckpt in [None, Some("6s")] {
            let want = uninterrupted(build, ckpt).await;
            assert_eq!(want.len(), input().len(), "a file per batch");
            for point in [
                FailPoint::AfterCut,
                FailPoint::AfterTake,
                FailPoint::AfterOutput,
                FailPoint::AfterCheckpoint,
            ] {
                for at in 0..input().len() {
                    // With a 6 s interval the state is checkpointed at batches 2 and 5 (the fresh
                    // job's empty state counts as a checkpoint just before batch 0).
                    if point == FailPoint::AfterCheckpoint && ckpt.is_some() && at % 3 != 2 {
                        continue;
                    }
                    let got = crashed(build, ckpt, point, at).await;
                    assert_eq!(got, want, "{label} ckpt={ckpt:?} {point:?} at batch {at}");
                }
            }
        }
    }
}
