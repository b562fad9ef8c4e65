//! The `kafka` output of jobs: a request-count job reading a topic with the direct input and
//! writing its counts to another topic.
//!
//! On librdkafka's mock cluster: the records (key, value, `batch_time` header), one
//! transaction per batch, the idempotent mode, and a transaction that fails being invisible
//! to `read_committed` readers and written once on the restart. The mock acknowledges
//! transactional offset commits without storing them, so the restart after a committed
//! transaction — the replay that must not write again — runs against noida-db (a real broker
//! with transactions, `weir_tests::kafka::Broker`): a crash at every failure point of a batch,
//! and a group whose offsets are ahead of the job's checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use weir_core::Event;
use weir_kafka::direct::KafkaDirectConfig;
use weir_kafka::output::{KafkaOutputConfig, OffsetsGroup};
use weir_kafka::source::StartFrom;
use weir_streaming::{FailPoint, Job, JobError, JobMetrics, JobOptions, StreamingContext};

const INTERVAL: Duration = Duration::from_millis(300);
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const GROUP: &str = "counts-job";

/// Produces `n` request lines `"GET <user> /<i>"` (user `i % 4`) to each of `partitions`.
fn produce(brokers: &str, topic: &str, partitions: i32, from: usize, n: usize) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for i in from..from + n {
        for p in 0..partitions {
            let body = format!("GET {} /{i}", USERS[i % 4]);
            producer
                .send(BaseRecord::<(), _>::to(topic).payload(&body).partition(p))
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn input(brokers: &str, topic: &str, rate: Option<u64>) -> KafkaDirectConfig {
    KafkaDirectConfig {
        brokers: vec![brokers.to_string()],
        topics: vec![topic.to_string()],
        starting: StartFrom::Earliest,
        max_rate_per_partition: rate,
        group: None,
        properties: [("group.id".to_string(), GROUP.to_string())].into(),
    }
}

fn output(brokers: &str, topic: &str, transactional_id: Option<&str>) -> KafkaOutputConfig {
    KafkaOutputConfig {
        brokers: vec![brokers.to_string()],
        topic: topic.to_string(),
        transactional_id: transactional_id.map(str::to_string),
        compression: Default::default(),
        linger: weir_core::ConfigDuration(Duration::from_millis(5)),
        timeout: weir_core::ConfigDuration(Duration::from_secs(10)),
        properties: BTreeMap::new(),
    }
}

/// The request-count job: `(user, count)` per batch, written by the `kafka` output.
fn count_job(
    input: &KafkaDirectConfig,
    output: &KafkaOutputConfig,
    data: &Path,
    stop: &CancellationToken,
) -> Job {
    let mut opts = JobOptions::new(INTERVAL);
    opts.data_dir = Some(data.to_path_buf());
    let mut ctx = StreamingContext::new("count", opts);
    let mut direct = input.build(INTERVAL, stop.clone()).unwrap();
    if output.transactional_id.is_some() {
        direct.leave_commits_to_output();
    }
    let group = (input.properties.get("group.id")).map(|g| OffsetsGroup::Named(g.clone()));
    let send = output.build(group).unwrap();
    let out = ctx
        .input(Box::new(direct))
        .map(|e| {
            let line = String::from_utf8_lossy(&e.body).into_owned();
            line.split(' ').nth(1).unwrap_or_default().to_string()
        })
        .count_by_value()
        .transactional(send, |_, (user, n)| {
            Event::new(n.to_string()).with_header("key", user)
        });
    ctx.add_output(out);
    ctx.build(stop.clone()).unwrap()
}

/// A record of the output topic: (batch time, key, value).
type Count = (i64, String, u64);

/// Every record of `topic` from its start to its end, `read_committed` when `committed`.
fn read_all(brokers: &str, topic: &str, committed: bool) -> Vec<Count> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while at_end.len() < partitions.len() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let header = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "batch_time"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).parse::<i64>().unwrap())
                    .expect("a batch_time header");
                let key = String::from_utf8_lossy(m.key().expect("a key")).into_owned();
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default())
                    .parse::<u64>()
                    .expect("a count");
                out.push((header, key, value));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Each batch's count of a user at most once, and the counts sum to `lines_per_user`.
fn assert_counted_once(records: &[Count], lines_per_user: u64) {
    let mut per_batch: BTreeMap<(i64, &str), u64> = BTreeMap::new();
    for (t, key, n) in records {
        assert_eq!(t % INTERVAL.as_millis() as i64, 0, "batch time {t}");
        let before = per_batch.insert((*t, key), *n);
        assert!(before.is_none(), "batch {t}: {key} written twice");
    }
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for ((_, key), n) in per_batch {
        *totals.entry(key).or_default() += n;
    }
    let want: BTreeMap<&str, u64> = USERS.iter().map(|u| (*u, lines_per_user)).collect();
    assert_eq!(totals, want);
}

fn committed_total(brokers: &str, topic: &str) -> u64 {
    read_all(brokers, topic, true).iter().map(|r| r.2).sum()
}

async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn batch_counts(metrics: &JobMetrics) -> Vec<u64> {
    metrics.batches().iter().map(|b| b.input_events).collect()
}

/// Runs the job until `total` lines are counted in committed records and one more batch ran.
async fn run_to_total(job: Job, brokers: &str, topic: &str, total: u64, stop: &CancellationToken) {
    let metrics = job.metrics();
    let task = tokio::spawn(job.run());
    let deadline = Instant::now() + Duration::from_secs(90);
    while committed_total(brokers, topic) < total {
        if task.is_finished() {
            panic!("the job stopped: {:?}", task.await.unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for every line counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = metrics.batches().len();
    wait_for("one more batch", 30, || metrics.batches().len() > n).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_output_writes_each_batch_once_with_key_value_and_batch_time() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("requests", 3, 3).unwrap();
    mock.create_topic("counts", 2, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "requests", 3, 0, 100);
    let data = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // 100 lines/s per partition × 0.3 s: 90 lines a batch, so several batches.
    let job = count_job(
        &input(&brokers, "requests", Some(100)),
        &output(&brokers, "counts", Some("count-1")),
        data.path(),
        &stop,
    );
    let metrics = job.metrics();
    run_to_total(job, &brokers, "counts", 300, &stop).await;
    let records = read_all(&brokers, "counts", true);
    assert_counted_once(&records, 75);
    let batches: std::collections::BTreeSet<i64> = records.iter().map(|r| r.0).collect();
    let with_input = batch_counts(&metrics).iter().filter(|&&n| n > 0).count();
    assert_eq!(
        batches.len(),
        with_input,
        "one batch time per batch with input"
    );
    assert!(batches.len() >= 4, "{batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_transactional_id_the_output_is_an_idempotent_producer() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("requests", 3, 3).unwrap();
    mock.create_topic("counts", 2, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "requests", 3, 0, 40);
    let data = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let job = count_job(
        &input(&brokers, "requests", None),
        &output(&brokers, "counts", None),
        data.path(),
        &stop,
    );
    run_to_total(job, &brokers, "counts", 120, &stop).await;
    // Not transactional: a read_uncommitted reader sees the same.
    let records = read_all(&brokers, "counts", false);
    assert_counted_once(&records, 30);
}

/// The mock cluster does not tell consumers which transactions were aborted (its fetch
/// responses list none), so here the aborted records stay visible: this checks that a failed
/// transaction fails its batch and that the restarted job writes that batch again, the same.
/// That `read_committed` readers do not see an aborted batch is checked against noida-db.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_fails_its_batch_and_the_restart_writes_it_again() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("requests", 3, 3).unwrap();
    mock.create_topic("counts", 2, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "requests", 3, 0, 100);
    let data = tempfile::tempdir().unwrap();
    // The first batch's offsets are refused: its transaction, records already produced, is
    // aborted and the batch fails.
    mock.request_errors(
        RDKafkaApiKey::AddOffsetsToTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
    );
    let (inp, out) = (
        input(&brokers, "requests", Some(100)),
        output(&brokers, "counts", Some("count-1")),
    );
    let stop = CancellationToken::new();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        count_job(&inp, &out, data.path(), &stop).run(),
    )
    .await
    .expect("the batch fails")
    .unwrap_err();
    assert!(matches!(err, JobError::Output { .. }), "{err}");
    assert!(
        err.to_string().contains("send_offsets_to_transaction"),
        "{err}"
    );
    let aborted = read_all(&brokers, "counts", false);
    assert_eq!(aborted.iter().map(|r| r.2).sum::<u64>(), 90, "{aborted:?}");

    let job = count_job(&inp, &out, data.path(), &stop);
    run_to_total(job, &brokers, "counts", 300 + 90, &stop).await;
    let mut records = read_all(&brokers, "counts", true);
    // The batch again, with the same batch time and counts.
    for r in &aborted {
        let again = records.iter().filter(|x| *x == r).count();
        assert_eq!(again, 2, "{r:?} written once more");
    }
    records.retain(|r| !aborted.contains(r));
    records.extend(aborted);
    assert_counted_once(&records, 75);
}

/// Against noida-db: another producer with the job's transactional id (a second instance
/// started by mistake, or the job's restart while a zombie runs on) fences the job: its next
/// transaction fails, an open one is aborted, and the restarted job writes every batch once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noida_a_producer_with_the_same_transactional_id_fences_the_job() {
    let broker = weir_tests::kafka::Broker::start();
    let brokers = broker.bootstrap();
    broker.create_topic("requests", 3);
    broker.create_topic("counts", 2);
    produce(&brokers, "requests", 3, 0, 100);
    let data = tempfile::tempdir().unwrap();
    let (inp, out) = (
        input(&brokers, "requests", Some(100)),
        output(&brokers, "counts", Some("count-1")),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(count_job(&inp, &out, data.path(), &stop).run());
    wait_for("a first batch", 60, || {
        committed_total(&brokers, "counts") > 0
    })
    .await;
    let fencer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("transactional.id", "count-1")
        .create()
        .unwrap();
    fencer.init_transactions(Duration::from_secs(30)).unwrap();
    // Records for a next transaction, in case the job had read every earlier one already
    // (an empty batch opens none).
    produce(&brokers, "requests", 3, 100, 100);
    let err = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the fenced job fails")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, JobError::Output { .. }), "{err}");
    assert!(err.to_string().contains("fenced"), "{err}");
    drop(fencer);

    let stop = CancellationToken::new();
    let job = count_job(&inp, &out, data.path(), &stop);
    run_to_total(job, &brokers, "counts", 600, &stop).await;
    assert_counted_once(&read_all(&brokers, "counts", true), 150);
}

/// Against noida-db: a crash at each failure point of a batch, then a restart with a new
/// producer (same transactional id); a `read_committed` reader sees every batch once. The
/// crash after the output (transaction committed, checkpoint not written) is the one a
/// replay must recognise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noida_a_crash_at_any_point_writes_each_batch_once() {
    let broker = weir_tests::kafka::Broker::start();
    let brokers = broker.bootstrap();
    let points = [
        FailPoint::AfterCut,
        FailPoint::AfterTake,
        FailPoint::AfterOutput,
        FailPoint::AfterCheckpoint,
    ];
    for (n, point) in points.into_iter().enumerate() {
        let (requests, counts) = (format!("requests{n}"), format!("counts{n}"));
        broker.create_topic(&requests, 3);
        broker.create_topic(&counts, 2);
        produce(&brokers, &requests, 3, 0, 100);
        let data = tempfile::tempdir().unwrap();
        let mut inp = input(&brokers, &requests, Some(100));
        inp.properties
            .insert("group.id".into(), format!("{GROUP}-{n}"));
        let out = output(&brokers, &counts, Some(&format!("count-{n}")));
        let stop = CancellationToken::new();
        // 90 lines a batch: the crash hits the third of four batches with input.
        let mut job = count_job(&inp, &out, data.path(), &stop);
        job.inject_failure(point, 2);
        let err = tokio::time::timeout(Duration::from_secs(90), job.run())
            .await
            .expect("the job reaches the failure point")
            .unwrap_err();
        assert!(matches!(err, JobError::InjectedFailure { .. }), "{err}");
        let before: u64 = read_all(&brokers, &counts, true).iter().map(|r| r.2).sum();
        let want_before = if matches!(point, FailPoint::AfterOutput | FailPoint::AfterCheckpoint) {
            270
        } else {
            180
        };
        assert_eq!(
            before, want_before,
            "{point:?}: committed before the restart"
        );

        let job = count_job(&inp, &out, data.path(), &stop);
        run_to_total(job, &brokers, &counts, 300, &stop).await;
        let records = read_all(&brokers, &counts, true);
        assert_counted_once(&records, 75);
    }
}

/// Against noida-db: offsets committed to the job's group past where its checkpoint resumes
/// (another consumer of the group) stop the batch with an error instead of writing those
/// records twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noida_a_group_ahead_of_the_checkpoint_is_refused() {
    let broker = weir_tests::kafka::Broker::start();
    let brokers = broker.bootstrap();
    broker.create_topic("requests", 1);
    broker.create_topic("counts", 1);
    produce(&brokers, "requests", 1, 0, 40);
    let data = tempfile::tempdir().unwrap();
    let (inp, out) = (
        input(&brokers, "requests", None),
        output(&brokers, "counts", Some("count-1")),
    );
    let stop = CancellationToken::new();
    let job = count_job(&inp, &out, data.path(), &stop);
    run_to_total(job, &brokers, "counts", 40, &stop).await;

    let other: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", GROUP)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("requests", 0, Offset::Offset(50))
        .unwrap();
    other.commit(&tpl, CommitMode::Sync).unwrap();
    produce(&brokers, "requests", 1, 40, 20);
    let stop = CancellationToken::new();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        count_job(&inp, &out, data.path(), &stop).run(),
    )
    .await
    .expect("the batch fails")
    .unwrap_err();
    let text = format!("{err}");
    assert!(
        text.contains("committed offset 50") && text.contains("past the start 40"),
        "{text}"
    );
    assert_eq!(
        committed_total(&brokers, "counts"),
        40,
        "nothing more written"
    );
}
