//! The canonical `StreamingRequestCount` job, declarative and through the Rust API, over a
//! known input: exactly the known counts per batch. Also bad input and config errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use weir_core::{Channel, Event};
use weir_streaming::config::BuildContext;
use weir_streaming::{field, JobConfig, JobOptions, StreamingContext, TokioClock};

fn input_batches() -> Vec<Vec<Event>> {
    vec![
        lines(&[
            "10.0.0.1 - alice [x] GET /a",
            "10.0.0.2 - bob [x] GET /b",
            "10.0.0.1 - alice [x] GET /c",
        ]),
        vec![],
        lines(&["10.0.0.3 - carol [x] GET /", "10.0.0.4 - alice [x] POST /"]),
    ]
}

fn expected_print() -> String {
    let t1 = EPOCH + 2000;
    let t2 = EPOCH + 4000;
    let t3 = EPOCH + 6000;
    let bar = "-------------------------------------------";
    format!(
        "{bar}\nTime: {t1} ms\n{bar}\n(alice,2)\n(bob,1)\n\n\
         {bar}\nTime: {t2} ms\n{bar}\n\n\
         {bar}\nTime: {t3} ms\n{bar}\n(alice,1)\n(carol,1)\n\n"
    )
}

#[tokio::test(start_paused = true)]
async fn declarative_request_count_gives_known_counts_per_batch() {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf/request-count.toml"
    ))
    .unwrap();
    let doc: toml::Table = toml::from_str(&conf).unwrap();
    let job: JobConfig = doc["jobs"]["request_count"].clone().try_into().unwrap();
    assert!(job.check().is_empty(), "{:?}", job.check());
    assert_eq!(job.input_names(), vec!["to_job".to_string()]);

    let ch = channel("to_job", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let (buf, target) = print_buffer();
    let stop = CancellationToken::new();
    let mut cx = BuildContext::new(vec![as_dyn(&ch)], dir.path().to_path_buf(), stop.clone());
    cx.clock = Some(Arc::new(TokioClock::new(EPOCH)));
    cx.print_target = Some(target);
    let job = job.build("request_count", cx).unwrap();
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    feed(&ch, &metrics, &input_batches(), 0).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let printed = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert_eq!(printed, expected_print());
    let b = metrics.batches();
    let sizes: Vec<u64> = b.iter().map(|b| b.input_events).collect();
    assert_eq!(sizes, vec![3, 0, 2]);
    assert!(b
        .iter()
        .all(|b| b.scheduling_delay_ms == 0 && b.malformed == 0));
    assert_eq!(ch.stats().events, 0, "all committed");
}

#[tokio::test(start_paused = true)]
async fn rust_api_request_count_gives_the_same_output() {
    let ch = channel("to_job", 10_000);
    let (buf, target) = print_buffer();
    let stop = CancellationToken::new();
    let mut ctx = StreamingContext::new("rc", JobOptions::new(Duration::from_secs(2)))
        .with_clock(Arc::new(TokioClock::new(EPOCH)));
    let lines = ctx.channel(as_dyn(&ch));
    ctx.add_output(
        lines
            .count_by_slice(|e| field(&e.body, b' ', 2))
            .print_to(10, target),
    );
    let job = ctx.build(stop.clone()).unwrap();
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    feed(&ch, &metrics, &input_batches(), 0).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(buf.lock().unwrap().clone()).unwrap(),
        expected_print()
    );
}

#[tokio::test(start_paused = true)]
async fn bad_lines_are_counted_as_malformed_not_fatal() {
    let ch = channel("to_job", 10_000);
    let (buf, target) = print_buffer();
    let stop = CancellationToken::new();
    let job: JobConfig = toml::from_str(
        r#"
        input = "to_job"
        steps = [{ split = " ", field = 2 }, { count_by_value = {} }]
        output = { type = "print", n = 1 }
        "#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cx = BuildContext::new(vec![as_dyn(&ch)], dir.path().to_path_buf(), stop.clone());
    cx.clock = Some(Arc::new(TokioClock::new(EPOCH)));
    cx.print_target = Some(target);
    let job = job.build("rc", cx).unwrap();
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    let batch = vec![
        Event::new("only two"),
        Event::new(&b"a b \xff\xfe c"[..]),
        Event::new(&b"\xff ok x"[..]), // invalid UTF-8 outside the key is fine
        Event::new(""),
        Event::new("a b y"),
    ];
    feed(&ch, &metrics, &[batch], 0).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let b = metrics.last().unwrap();
    assert_eq!((b.input_events, b.malformed), (5, 3));
    let printed = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert!(printed.contains("(x,1)\n...\n"), "{printed}");
}

#[test]
fn config_errors_name_their_key_path() {
    let job: JobConfig = toml::from_str(
        r#"
        input = "in"
        batch_interval = "2s"
        steps = [{ split = " ", field = 2 }, { regex = "([a-z" }, { key_by = [{ filter = "(" }] }, { count_by_value = {} }]
        window = { length = "3s", slide = "2s", inverse = true }
        output = { type = "file", dir = "/tmp/x", prefix = "a/b" }
        "#,
    )
    .unwrap();
    let problems = job.check();
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "steps[1].regex",
            "steps[2].key_by[0].filter",
            "window.length",
            "output.prefix"
        ],
        "{problems:?}"
    );
    assert!(problems[0].1.contains("invalid regex"));

    let e = toml::from_str::<JobConfig>("input = \"x\"\nstepz = []\noutput = { type = \"print\" }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("stepz"), "{e}");
    let e = toml::from_str::<JobConfig>("input = \"x\"\noutput = { type = \"print\", m = 1 }")
        .unwrap_err()
        .to_string();
    assert!(e.contains('m'), "{e}");

    let job: JobConfig = toml::from_str(
        "input = \"x\"\nsteps = [{ split = \" \" }, { reduce_by_key = \"sum\" }, { header = \"h\", json = \"a\" }]\noutput = { type = \"print\" }",
    )
    .unwrap();
    let problems = job.check();
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec!["steps[0].field", "steps[1].reduce_by_key", "steps[2]"],
        "{problems:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_per_host_per_minute_with_header_filter_and_window() {
    let ch = channel("logs", 10_000);
    let (buf, target) = print_buffer();
    let stop = CancellationToken::new();
    let job: JobConfig = toml::from_str(
        r#"
        input = "logs"
        batch_interval = "20s"
        steps = [{ filter = "\\bERROR\\b" }, { header = "host" }, { count_by_value = {} }]
        window = { length = "60s", slide = "60s", inverse = true }
        output = { type = "print" }
        "#,
    )
    .unwrap();
    assert!(job.check().is_empty(), "{:?}", job.check());
    let dir = tempfile::tempdir().unwrap();
    let mut cx = BuildContext::new(vec![as_dyn(&ch)], dir.path().to_path_buf(), stop.clone());
    // Start on a minute boundary: ticks at +20 s, +40 s, +60 s…, so minute results come at
    // batches 3 and 6.
    let minute = EPOCH - EPOCH % 60_000;
    cx.clock = Some(Arc::new(TokioClock::new(minute)));
    cx.print_target = Some(target);
    let job = job.build("errors", cx).unwrap();
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    let e = |host: &str, line: &str| Event::new(line.to_string()).with_header("host", host);
    let batches = vec![
        vec![e("h1", "ERROR x"), e("h2", "INFO y"), e("h2", "ERROR z")],
        vec![e("h1", "ERROR again")],
        vec![Event::new("ERROR without host")],
        vec![e("h2", "ERROR")],
        vec![],
        vec![],
    ];
    feed(&ch, &metrics, &batches, 0).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let printed = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    let bar = "-------------------------------------------";
    assert_eq!(
        printed,
        format!(
            "{bar}\nTime: {} ms\n{bar}\n(h1,2)\n(h2,1)\n\n{bar}\nTime: {} ms\n{bar}\n(h2,1)\n\n",
            minute + 60_000,
            minute + 120_000
        )
    );
    assert_eq!(
        metrics.totals().2,
        1,
        "the line without a host header is malformed"
    );
}

#[tokio::test(start_paused = true)]
async fn json_regex_key_by_and_reduce_sum_min_max() {
    for (op, want) in [
        ("sum", "(/a,15)\n(/b,7)\n"),
        ("min", "(/a,5)\n(/b,7)\n"),
        ("max", "(/a,10)\n(/b,7)\n"),
    ] {
        let ch = channel("in", 10_000);
        let (buf, target) = print_buffer();
        let stop = CancellationToken::new();
        let job: JobConfig = toml::from_str(&format!(
            r#"
            input = "in"
            steps = [
              {{ regex = "^\\S+ (\\{{.*\\}})$" }},
              {{ key_by = [{{ json = "req.path" }}] }},
              {{ json = "bytes" }},
              {{ reduce_by_key = "{op}" }},
            ]
            output = {{ type = "print" }}
            "#
        ))
        .unwrap();
        assert!(job.check().is_empty(), "{:?}", job.check());
        let dir = tempfile::tempdir().unwrap();
        let mut cx = BuildContext::new(vec![as_dyn(&ch)], dir.path().to_path_buf(), stop.clone());
        cx.clock = Some(Arc::new(TokioClock::new(EPOCH)));
        cx.print_target = Some(target);
        let job = job.build("j", cx).unwrap();
        let metrics = job.metrics();
        let task = tokio::spawn(job.run());
        let batch = lines(&[
            r#"h1 {"req":{"path":"/a"},"bytes":10}"#,
            r#"h2 {"req":{"path":"/b"},"bytes":"7"}"#,
            r#"h1 {"req":{"path":"/a"},"bytes":5}"#,
            r#"h1 {"req":{"path":"/a"},"bytes":"many"}"#,
            r#"h1 {"req":{},"bytes":5}"#,
            r#"h1 {not json}"#,
            "no json at all",
        ]);
        feed(&ch, &metrics, &[batch], 0).await;
        stop.cancel();
        task.await.unwrap().unwrap();
        let printed = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(
            printed.ends_with(&format!(
                "ms\n-------------------------------------------\n{want}\n"
            )),
            "{op}: {printed}"
        );
        assert_eq!(metrics.last().unwrap().malformed, 4, "{op}");
    }
}

#[tokio::test(start_paused = true)]
async fn stopping_drains_a_memory_channel_in_extra_batches() {
    let ch = channel("in", 10_000);
    let (buf, target) = print_buffer();
    let stop = CancellationToken::new();
    let mut opts = JobOptions::new(Duration::from_secs(2));
    opts.max_batch_events = 2;
    let mut ctx = StreamingContext::new("d", opts).with_clock(Arc::new(TokioClock::new(EPOCH)));
    let lines_in = ctx.channel(as_dyn(&ch));
    ctx.add_output(lines_in.count().print_to(10, target));
    let job = ctx.build(stop.clone()).unwrap();
    let metrics = job.metrics();
    ch.put(lines(&["a", "b", "c", "d", "e"])).await.unwrap();
    stop.cancel();
    job.run().await.unwrap();
    assert_eq!(ch.stats().events, 0);
    let sizes: Vec<u64> = metrics.batches().iter().map(|b| b.input_events).collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    assert!(String::from_utf8(buf.lock().unwrap().clone())
        .unwrap()
        .contains("\n1\n"));
}

#[tokio::test(start_paused = true)]
async fn damaged_or_newer_checkpoints_fail_the_job_with_the_path() {
    for (content, expect) in [
        ("{ not json", "damaged"),
        (r#"{"version": 99}"#, "format version 99"),
    ] {
        let ch = channel("in", 10);
        let dir = tempfile::tempdir().unwrap();
        let jobdir = dir.path().join("jobs").join("rc");
        std::fs::create_dir_all(&jobdir).unwrap();
        std::fs::write(jobdir.join("manifest.json"), content).unwrap();
        let job: JobConfig =
            toml::from_str("input = \"in\"\noutput = { type = \"print\" }").unwrap();
        let stop = CancellationToken::new();
        let job = job
            .build(
                "rc",
                BuildContext::new(vec![as_dyn(&ch)], dir.path().to_path_buf(), stop),
            )
            .unwrap();
        let err = job.run().await.unwrap_err().to_string();
        assert!(
            err.contains(expect) && err.contains("manifest.json"),
            "{err}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn two_inputs_are_unioned_and_for_each_batch_sees_every_batch() {
    let (a, b) = (channel("a", 100), channel("b", 100));
    let (buf, target) = print_buffer();
    let stop = CancellationToken::new();
    let job: JobConfig = toml::from_str(
        "inputs = [\"a\", \"b\"]\nsteps = [{ split = \",\", field = 1 }, { count_by_value = {} }]\noutput = { type = \"print\" }",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cx = BuildContext::new(
        vec![as_dyn(&a), as_dyn(&b)],
        dir.path().to_path_buf(),
        stop.clone(),
    );
    cx.clock = Some(Arc::new(TokioClock::new(EPOCH)));
    cx.print_target = Some(target);
    let job = job.build("u", cx).unwrap();
    let metrics = job.metrics();
    a.put(lines(&["1,x", "2,y"])).await.unwrap();
    b.put(lines(&["3,x"])).await.unwrap();
    let task = tokio::spawn(job.run());
    wait_until(Duration::from_secs(10), "a batch", || {
        metrics.totals().0 >= 1
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(String::from_utf8(buf.lock().unwrap().clone())
        .unwrap()
        .contains("(x,2)\n(y,1)\n"));
    assert_eq!(metrics.last().unwrap().input_events, 3);

    // The Rust API's for_each_batch gets the batch time and the whole batch.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let mut ctx = StreamingContext::new("fe", JobOptions::new(Duration::from_secs(2)))
        .with_clock(Arc::new(TokioClock::new(EPOCH)));
    let s = ctx.channel(as_dyn(&a)).union(ctx.channel(as_dyn(&b)));
    let seen2 = seen.clone();
    ctx.add_output(s.map(|e| e.body.len()).for_each_batch(move |t, v| {
        seen2.lock().unwrap().push((t, v));
        Ok(())
    }));
    let job = ctx.build(stop.clone()).unwrap();
    let metrics = job.metrics();
    a.put(lines(&["aa"])).await.unwrap();
    b.put(lines(&["bbb"])).await.unwrap();
    let task = tokio::spawn(job.run());
    wait_until(Duration::from_secs(10), "two batches", || {
        metrics.totals().0 >= 2
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[..2],
        [(EPOCH + 2000, vec![2, 3]), (EPOCH + 4000, vec![])]
    );
}

#[tokio::test(start_paused = true)]
async fn restart_runs_missed_ticks_unless_down_for_long() {
    let ch = channel("in", 100);
    let dir = tempfile::tempdir().unwrap();
    let clock: weir_streaming::clock::SharedClock = Arc::new(TokioClock::new(EPOCH));
    let job_cfg: JobConfig =
        toml::from_str("input = \"in\"\noutput = { type = \"print\" }").unwrap();
    let start = |stop: CancellationToken| {
        let (_, target) = print_buffer();
        let mut cx = BuildContext::new(vec![as_dyn(&ch)], dir.path().to_path_buf(), stop);
        cx.clock = Some(clock.clone());
        cx.print_target = Some(target);
        job_cfg.build("m", cx).unwrap()
    };
    let times = |m: &weir_streaming::JobMetrics| -> Vec<i64> {
        m.batches()
            .iter()
            .map(|b| (b.batch_time_ms - EPOCH) / 1000)
            .collect()
    };

    let stop = CancellationToken::new();
    let job = start(stop.clone());
    let m = job.metrics();
    let task = tokio::spawn(job.run());
    wait_until(Duration::from_secs(10), "one batch", || m.totals().0 >= 1).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(times(&m), vec![2]);

    // Down ~5 s: the missed ticks 4 and 6 run at once, then 8 on time.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let stop = CancellationToken::new();
    let job = start(stop.clone());
    let m = job.metrics();
    let task = tokio::spawn(job.run());
    wait_until(Duration::from_secs(10), "three batches", || {
        m.totals().0 >= 3
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(times(&m), vec![4, 6, 8]);
    assert!(m.batches()[0].scheduling_delay_ms > 0);

    // Down an hour (1800 ticks > 1000): resume at the next tick.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let stop = CancellationToken::new();
    let job = start(stop.clone());
    let m = job.metrics();
    let task = tokio::spawn(job.run());
    wait_until(Duration::from_secs(10), "a batch", || m.totals().0 >= 1).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(times(&m), vec![3610]);
}
