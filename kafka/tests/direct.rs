//! The Kafka direct input of jobs against librdkafka's in-process mock cluster (3 brokers):
//! exact offset ranges per batch, resuming from the job's checkpoint, file output exactly
//! once across crashes at every failure point, brokers down, a topic created while running.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use weir_kafka::direct::{GroupMember, KafkaDirectConfig};
use weir_kafka::source::StartFrom;
use weir_streaming::{FailPoint, Job, JobError, JobMetrics, JobOptions, StreamingContext};

const INTERVAL: Duration = Duration::from_millis(300);

/// Produces `n` records `"<topic>/<partition>/<i>"` to each of `partitions`, `i` from `from`.
fn produce(brokers: &str, topic: &str, partitions: i32, from: usize, n: usize) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for i in from..from + n {
        for p in 0..partitions {
            let body = format!("{topic}/{p}/{i}");
            producer
                .send(BaseRecord::<(), _>::to(topic).payload(&body).partition(p))
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn config(
    brokers: &str,
    topics: &[&str],
    starting: StartFrom,
    rate: Option<u64>,
) -> KafkaDirectConfig {
    KafkaDirectConfig {
        brokers: vec![brokers.to_string()],
        topics: topics.iter().map(|t| t.to_string()).collect(),
        starting,
        max_rate_per_partition: rate,
        group: None,
        properties: BTreeMap::new(),
    }
}

/// Batch time → the records' bodies, as the job's `for_each_batch` output saw them (a replayed
/// batch replaces its earlier run, like an idempotent output).
type Seen = Arc<Mutex<BTreeMap<i64, Vec<String>>>>;

fn collecting_job(
    cfg: &KafkaDirectConfig,
    data: &Path,
    seen: &Seen,
    stop: &CancellationToken,
) -> Job {
    collecting_job_with(cfg, JobOptions::new(INTERVAL), data, seen, stop)
}

fn collecting_job_with(
    cfg: &KafkaDirectConfig,
    mut opts: JobOptions,
    data: &Path,
    seen: &Seen,
    stop: &CancellationToken,
) -> Job {
    opts.data_dir = Some(data.to_path_buf());
    let mut ctx = StreamingContext::new("direct", opts);
    let input = cfg.build(INTERVAL, stop.clone()).unwrap();
    let seen = seen.clone();
    let out = ctx
        .input(Box::new(input))
        .map(|e| String::from_utf8_lossy(&e.body).into_owned())
        .for_each_batch(move |t, bodies| {
            seen.lock().unwrap().insert(t, bodies);
            Ok(())
        });
    ctx.add_output(out);
    ctx.build(stop.clone()).unwrap()
}

fn total(seen: &Seen) -> usize {
    seen.lock().unwrap().values().map(Vec::len).sum()
}

async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every expected record exactly once.
fn assert_exactly_once(bodies: impl IntoIterator<Item = String>, expected: &[String]) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for b in bodies {
        *count.entry(b).or_default() += 1;
    }
    let dup: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "records seen more than once: {dup:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !count.contains_key(*e))
        .collect();
    assert!(missing.is_empty(), "records never seen: {missing:?}");
    assert_eq!(count.len(), expected.len(), "unexpected records");
}

fn expected(topic: &str, partitions: i32, from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .flat_map(|i| (0..partitions).map(move |p| format!("{topic}/{p}/{i}")))
        .collect()
}

fn manifest(data: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data.join("jobs/direct/manifest.json")).unwrap()).unwrap()
}

fn batch_counts(metrics: &JobMetrics) -> Vec<u64> {
    metrics.batches().iter().map(|b| b.input_events).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batch_is_one_capped_range_per_partition() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("in", 3, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "in", 3, 0, 100);
    let data = tempfile::tempdir().unwrap();
    let (seen, stop) = (Seen::default(), CancellationToken::new());
    // 100 records/s per partition × 0.3 s: 30 per partition and batch.
    let cfg = config(&brokers, &["in"], StartFrom::Earliest, Some(100));
    let job = collecting_job(&cfg, data.path(), &seen, &stop);
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    wait_for("every record", 60, || total(&seen) >= 300).await;
    wait_for("an empty batch after them", 30, || {
        batch_counts(&metrics).last() == Some(&0)
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let counts: Vec<u64> = batch_counts(&metrics)
        .into_iter()
        .skip_while(|&n| n == 0)
        .collect();
    assert_eq!(&counts[..5], &[90, 90, 90, 30, 0], "{counts:?}");
    assert!(counts[5..].iter().all(|&n| n == 0), "{counts:?}");
    assert_exactly_once(
        seen.lock().unwrap().values().flatten().cloned(),
        &expected("in", 3, 0, 100),
    );
    // The checkpoint resumes every partition after its last record.
    let resume = &manifest(data.path())["resume"][0];
    assert_eq!(resume["type"], "kafka");
    for (p, r) in resume["ranges"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            (r["topic"].as_str(), r["partition"].as_i64()),
            (Some("in"), Some(p as i64))
        );
        assert_eq!(
            (r["from"].as_i64(), r["until"].as_i64()),
            (Some(100), Some(100))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_limit_ends_the_ranges_where_the_batch_stopped() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("in", 3, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "in", 3, 0, 100);
    let data = tempfile::tempdir().unwrap();
    let (seen, stop) = (Seen::default(), CancellationToken::new());
    let mut opts = JobOptions::new(INTERVAL);
    opts.max_batch_events = 50;
    let cfg = config(&brokers, &["in"], StartFrom::Earliest, None);
    let job = collecting_job_with(&cfg, opts, data.path(), &seen, &stop);
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    wait_for("every record", 60, || total(&seen) >= 300).await;
    wait_for("an empty batch after them", 30, || {
        batch_counts(&metrics).last() == Some(&0)
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let counts: Vec<u64> = batch_counts(&metrics)
        .into_iter()
        .skip_while(|&n| n == 0)
        .collect();
    assert_eq!(&counts[..7], &[50, 50, 50, 50, 50, 50, 0], "{counts:?}");
    // Shared evenly: every partition advanced in every full batch.
    let first = seen
        .lock()
        .unwrap()
        .values()
        .find(|b| !b.is_empty())
        .cloned()
        .unwrap();
    for p in 0..3 {
        let n = first
            .iter()
            .filter(|b| b.starts_with(&format!("in/{p}/")))
            .count();
        assert!((16..=17).contains(&n), "partition {p}: {n} of the first 50");
    }
    assert_exactly_once(
        seen.lock().unwrap().values().flatten().cloned(),
        &expected("in", 3, 0, 100),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunks_up_to_the_batch_limit_stay_exact_and_in_order() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("in", 3, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "in", 3, 0, 100);
    let data = tempfile::tempdir().unwrap();
    let (seen, stop) = (Seen::default(), CancellationToken::new());
    let mut opts = JobOptions::new(INTERVAL);
    // Chunks of 7 records, the last one of each batch cut short at its 50.
    opts.chunk_events = 7;
    opts.max_batch_events = 50;
    let cfg = config(&brokers, &["in"], StartFrom::Earliest, None);
    let job = collecting_job_with(&cfg, opts, data.path(), &seen, &stop);
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    wait_for("every record", 60, || total(&seen) >= 300).await;
    wait_for("an empty batch after them", 30, || {
        batch_counts(&metrics).last() == Some(&0)
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let counts: Vec<u64> = batch_counts(&metrics)
        .into_iter()
        .skip_while(|&n| n == 0)
        .collect();
    assert_eq!(&counts[..7], &[50, 50, 50, 50, 50, 50, 0], "{counts:?}");
    // Within a partition, in offset order.
    for batch in seen.lock().unwrap().values() {
        for p in 0..3 {
            let offsets: Vec<usize> = (batch.iter())
                .filter_map(|b| b.strip_prefix(&format!("in/{p}/")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
        }
    }
    assert_exactly_once(
        seen.lock().unwrap().values().flatten().cloned(),
        &expected("in", 3, 0, 100),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_job_resumes_from_its_checkpoint() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("in", 2, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "in", 2, 0, 100);
    let data = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let cfg = config(&brokers, &["in"], StartFrom::Earliest, None);
    let stop = CancellationToken::new();
    let task = tokio::spawn(collecting_job(&cfg, data.path(), &seen, &stop).run());
    wait_for("the first 200", 60, || total(&seen) >= 200).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    // Produced while the job is down; `latest` must not apply: the checkpoint says where.
    produce(&brokers, "in", 2, 100, 150);
    let cfg = config(&brokers, &["in"], StartFrom::Latest, None);
    let stop = CancellationToken::new();
    let task = tokio::spawn(collecting_job(&cfg, data.path(), &seen, &stop).run());
    wait_for("all 500", 60, || total(&seen) >= 500).await;
    tokio::time::sleep(INTERVAL * 3).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_exactly_once(
        seen.lock().unwrap().values().flatten().cloned(),
        &expected("in", 2, 0, 250),
    );
}

fn file_job(cfg: &KafkaDirectConfig, data: &Path, out: &Path, stop: &CancellationToken) -> Job {
    let mut opts = JobOptions::new(INTERVAL);
    opts.data_dir = Some(data.to_path_buf());
    let mut ctx = StreamingContext::new("direct", opts);
    let input = cfg.build(INTERVAL, stop.clone()).unwrap();
    let out = ctx
        .input(Box::new(input))
        .map(|e| String::from_utf8_lossy(&e.body).into_owned())
        .file(out.to_path_buf(), "batch", None);
    ctx.add_output(out);
    ctx.build(stop.clone()).unwrap()
}

fn file_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_output_is_exactly_once_across_a_crash_at_any_point() {
    let mock = MockCluster::new(3).unwrap();
    let brokers = mock.bootstrap_servers();
    let points = [
        FailPoint::AfterCut,
        FailPoint::AfterTake,
        FailPoint::AfterOutput,
        FailPoint::AfterCheckpoint,
    ];
    for (n, point) in points.into_iter().enumerate() {
        let topic = format!("in{n}");
        mock.create_topic(&topic, 3, 3).unwrap();
        produce(&brokers, &topic, 3, 0, 100);
        let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // 30 per partition and batch: the crash hits the third of four non-empty batches.
        let cfg = config(&brokers, &[&topic], StartFrom::Earliest, Some(100));
        let stop = CancellationToken::new();
        let mut job = file_job(&cfg, data.path(), out.path(), &stop);
        job.inject_failure(point, 2);
        let err = tokio::time::timeout(Duration::from_secs(60), job.run())
            .await
            .expect("the job reaches the failure point")
            .unwrap_err();
        assert!(matches!(err, JobError::InjectedFailure { .. }), "{err}");

        let job = file_job(&cfg, data.path(), out.path(), &stop);
        let metrics = job.metrics();
        let task = tokio::spawn(job.run());
        let want = expected(&topic, 3, 0, 100);
        wait_for("every record in the files", 60, || {
            file_lines(out.path()).len() >= want.len()
        })
        .await;
        wait_for("an empty batch after them", 30, || {
            batch_counts(&metrics).last() == Some(&0)
        })
        .await;
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_exactly_once(file_lines(out.path()), &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_make_the_batch_wait_never_skip() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("in", 3, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "in", 3, 0, 100);
    let data = tempfile::tempdir().unwrap();
    let (seen, stop) = (Seen::default(), CancellationToken::new());
    let cfg = config(&brokers, &["in"], StartFrom::Earliest, Some(100));
    let job = collecting_job(&cfg, data.path(), &seen, &stop);
    let task = tokio::spawn(job.run());
    wait_for("a first batch", 60, || total(&seen) > 0).await;
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    let before = total(&seen);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    produce(&brokers, "in", 3, 100, 50);
    wait_for("every record after the outage", 60, || total(&seen) >= 450).await;
    tokio::time::sleep(INTERVAL * 3).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(
        before < 300,
        "the outage began mid-stream ({before} of 300 seen before it)"
    );
    assert_exactly_once(
        seen.lock().unwrap().values().flatten().cloned(),
        &expected("in", 3, 0, 150),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_while_running_is_read_from_its_start() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("in", 1, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "in", 1, 0, 20);
    let data = tempfile::tempdir().unwrap();
    let (seen, stop) = (Seen::default(), CancellationToken::new());
    // `latest` applies only to what exists at the first batch.
    let cfg = config(&brokers, &["in", "late"], StartFrom::Latest, None);
    let job = collecting_job(&cfg, data.path(), &seen, &stop);
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    wait_for("two batches", 30, || metrics.batches().len() >= 2).await;
    produce(&brokers, "in", 1, 20, 10);
    mock.create_topic("late", 2, 3).unwrap();
    produce(&brokers, "late", 2, 0, 40);
    wait_for("the new topic's records", 60, || total(&seen) >= 90).await;
    tokio::time::sleep(INTERVAL * 3).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let mut want = expected("in", 1, 20, 10);
    want.extend(expected("late", 2, 0, 40));
    assert_exactly_once(seen.lock().unwrap().values().flatten().cloned(), &want);
}

mod common;

/// Group mode on a mock cluster whose initial rebalance delay is 0; a short session timeout.
fn group_config(brokers: &str, topic: &str) -> KafkaDirectConfig {
    let mut cfg = config(brokers, &[topic], StartFrom::Earliest, Some(200));
    cfg.group = Some("g".into());
    cfg.properties
        .insert("session.timeout.ms".into(), "6000".into());
    cfg.properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    cfg
}

fn bodies(seen: &Seen) -> Vec<String> {
    seen.lock().unwrap().values().flatten().cloned().collect()
}

/// The group's committed offset of each of `partitions` partitions of `topic`.
fn committed(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "g")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let list = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    list.elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

/// A group-mode collecting job and its group member.
fn group_job(
    cfg: &KafkaDirectConfig,
    data: &Path,
    seen: &Seen,
    stop: &CancellationToken,
    fail: Option<(FailPoint, u64)>,
) -> (Job, GroupMember) {
    let mut opts = JobOptions::new(INTERVAL);
    opts.data_dir = Some(data.to_path_buf());
    let mut ctx = StreamingContext::new("direct", opts);
    let input = cfg.build(INTERVAL, stop.clone()).unwrap();
    let member = input.group_member().expect("group mode");
    let seen = seen.clone();
    let out = ctx
        .input(Box::new(input))
        .map(|e| String::from_utf8_lossy(&e.body).into_owned())
        .for_each_batch(move |t, bodies| {
            seen.lock().unwrap().insert(t, bodies);
            Ok(())
        });
    ctx.add_output(out);
    let mut job = ctx.build(stop.clone()).unwrap();
    if let Some((point, batch)) = fail {
        job.inject_failure(point, batch);
    }
    (job, member)
}

fn owned(members: &[&GroupMember]) -> Vec<usize> {
    members.iter().map(|m| m.assignment().len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_group_members_share_the_partitions_and_read_each_record_once() {
    let mock = common::Mock::start("in", 4);
    let brokers = mock.brokers();
    produce(&brokers, "in", 4, 0, 100);
    let cfg = group_config(&brokers, "in");
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (seen_a, seen_b) = (Seen::default(), Seen::default());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (job_a, a) = group_job(&cfg, data_a.path(), &seen_a, &stop_a, None);
    let task_a = tokio::spawn(job_a.run());
    wait_for("A reading everything", 60, || total(&seen_a) >= 400).await;
    let (job_b, b) = group_job(&cfg, data_b.path(), &seen_b, &stop_b, None);
    let task_b = tokio::spawn(job_b.run());
    wait_for("two partitions each", 60, || owned(&[&a, &b]) == [2, 2]).await;
    let (mine_a, mine_b) = (a.assignment(), b.assignment());
    assert!(
        mine_a.iter().all(|p| !mine_b.contains(p)),
        "{mine_a:?} {mine_b:?}"
    );
    drop(a); // the handle would keep A's member in the group after A's job stopped
    let shared_at = total(&seen_b);
    let mut produced = 100;
    for _ in 0..8 {
        produce(&brokers, "in", 4, produced, 25);
        produced += 25;
        tokio::time::sleep(INTERVAL).await;
    }
    wait_for("every record by A or B", 60, || {
        total(&seen_a) + total(&seen_b) >= 4 * produced
    })
    .await;
    // B read exactly the new records of its own partitions.
    let of_b: Vec<String> = bodies(&seen_b);
    assert_eq!(shared_at, 0, "B read records before the new ones: {of_b:?}");
    for (topic, p) in &mine_b {
        let want: Vec<String> = (100..produced)
            .map(|i| format!("{topic}/{p}/{i}"))
            .collect();
        let got: Vec<String> = (of_b.iter())
            .filter(|r| r.starts_with(&format!("{topic}/{p}/")))
            .cloned()
            .collect();
        assert_eq!(got, want, "partition {p} as read by B");
    }
    let mut union = bodies(&seen_a);
    union.extend(of_b);
    assert_exactly_once(union, &expected("in", 4, 0, produced));

    // A leaves cleanly: B takes its partitions over from the group's committed offsets.
    stop_a.cancel();
    task_a.await.unwrap().unwrap();
    wait_for("B owning every partition", 60, || owned(&[&b]) == [4]).await;
    produce(&brokers, "in", 4, produced, 50);
    produced += 50;
    wait_for("every record after A left", 60, || {
        total(&seen_a) + total(&seen_b) >= 4 * produced
    })
    .await;
    tokio::time::sleep(INTERVAL * 3).await;
    stop_b.cancel();
    task_b.await.unwrap().unwrap();
    let mut union = bodies(&seen_a);
    union.extend(bodies(&seen_b));
    assert_exactly_once(union, &expected("in", 4, 0, produced));
    assert_eq!(committed(&brokers, "in", 4), vec![produced as i64; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_fails_mid_batch_has_only_its_uncommitted_batch_read_again() {
    let mock = common::Mock::start("in", 4);
    let brokers = mock.brokers();
    let cfg = group_config(&brokers, "in");
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (seen_a, seen_b) = (Seen::default(), Seen::default());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (job_b, b) = group_job(&cfg, data_b.path(), &seen_b, &stop_b, None);
    let task_b = tokio::spawn(job_b.run());
    wait_for("B in the group", 60, || owned(&[&b]) == [4]).await;
    // A's outputs of its 31st batch (some after the split) are written, its offsets never
    // committed.
    let (job_a, a) = group_job(
        &cfg,
        data_a.path(),
        &seen_a,
        &stop_a,
        Some((FailPoint::AfterOutput, 30)),
    );
    let task_a = tokio::spawn(job_a.run());
    wait_for("two partitions each", 60, || owned(&[&a, &b]) == [2, 2]).await;
    drop(a);
    // Produced once the group is stable (the mock refuses commits while a rebalance is on,
    // which would replay more than the failed batch), a backlog of 50 batches (60 records
    // per partition and batch) that outlasts A's 31st batch, so that A fails with records.
    let produced = 3000;
    produce(&brokers, "in", 4, 0, produced);
    let failed = tokio::time::timeout(Duration::from_secs(60), task_a)
        .await
        .expect("A reaches its failure point")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(failed, JobError::InjectedFailure { .. }),
        "{failed}"
    );
    wait_for("every record, B taking A's partitions over", 60, || {
        let mut all: Vec<String> = bodies(&seen_a);
        all.extend(bodies(&seen_b));
        all.sort();
        all.dedup();
        all.len() >= 4 * produced
    })
    .await;
    tokio::time::sleep(INTERVAL * 3).await;
    stop_b.cancel();
    task_b.await.unwrap().unwrap();

    let last_of_a: Vec<String> = seen_a
        .lock()
        .unwrap()
        .values()
        .next_back()
        .cloned()
        .unwrap();
    assert!(!last_of_a.is_empty(), "A failed in an empty batch");
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in bodies(&seen_a).into_iter().chain(bodies(&seen_b)) {
        *count.entry(r).or_default() += 1;
    }
    let want = expected("in", 4, 0, produced);
    let missing: Vec<_> = want.iter().filter(|w| !count.contains_key(*w)).collect();
    assert!(missing.is_empty(), "records never read: {missing:?}");
    assert_eq!(count.len(), want.len(), "unexpected records");
    // At least once: exactly the failed batch comes again, nothing else.
    let twice: Vec<&String> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(r, _)| r)
        .collect();
    assert!(count.values().all(|&n| n <= 2), "read more than twice");
    let mut replayed: Vec<&String> = last_of_a.iter().collect();
    replayed.sort();
    assert_eq!(twice, replayed, "read twice: not the failed batch");
    assert_eq!(committed(&brokers, "in", 4), vec![produced as i64; 4]);
}
