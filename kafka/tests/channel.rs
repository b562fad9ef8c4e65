//! The `kafka` channel against librdkafka's in-process mock cluster (3 brokers, the topic
//! replicated 3 times): put/take/commit/rollback, restart, and every broker down during puts
//! and during takes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_core::{Channel, ConfigDuration, Event};
use weir_kafka::channel::{KafkaChannel, KafkaChannelConfig};
use weir_kafka::sink::Compression;

mod common;
use common::Mock;

fn config(brokers: &str, topic: &str, parse_as_flume_event: bool) -> KafkaChannelConfig {
    let mut consumer = BTreeMap::new();
    consumer.insert("session.timeout.ms".to_string(), "6000".to_string());
    KafkaChannelConfig {
        brokers: vec![brokers.to_string()],
        topic: topic.to_string(),
        group: Some("g".into()),
        parse_as_flume_event,
        transaction_capacity: 1000,
        linger: ConfigDuration(Duration::from_millis(1)),
        compression: Compression::Lz4,
        // Generous: on a loaded machine a healthy put can take more than a second.
        delivery_timeout: ConfigDuration(Duration::from_secs(15)),
        properties: BTreeMap::new(),
        producer_properties: BTreeMap::new(),
        consumer_properties: consumer,
    }
}

fn events(from: usize, to: usize) -> Vec<Event> {
    (from..to)
        .map(|i| {
            Event::new(format!("e{i}"))
                .with_header("key", format!("k{}", i % 5))
                .with_header("n", i.to_string())
        })
        .collect()
}

fn number(e: &Event) -> usize {
    let i: usize = std::str::from_utf8(&e.body)
        .unwrap()
        .strip_prefix('e')
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        e.headers.get("n"),
        Some(i.to_string().as_str()),
        "headers kept"
    );
    assert_eq!(e.headers.get("key"), Some(format!("k{}", i % 5).as_str()));
    i
}

/// Takes one transaction, waiting (bounded) for events to arrive.
async fn take(channel: &KafkaChannel, max: usize) -> weir_core::TakeTransaction {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(txn) = channel.take(max).await.unwrap() {
            return txn;
        }
        assert!(Instant::now() < deadline, "no events to take within 30 s");
        let _ = tokio::time::timeout(Duration::from_millis(200), channel.wait_for_events()).await;
    }
}

/// Takes and commits until `want` distinct events were seen or `within` passed; returns
/// how often each was seen.
async fn drain(channel: &KafkaChannel, want: usize, within: Duration) -> HashMap<usize, usize> {
    let mut seen = HashMap::new();
    let deadline = Instant::now() + within;
    while seen.len() < want && Instant::now() < deadline {
        match channel.take(100).await.unwrap() {
            Some(txn) => {
                let numbers: Vec<usize> = txn.events().iter().map(number).collect();
                if txn.commit().await.is_ok() {
                    for i in numbers {
                        *seen.entry(i).or_default() += 1;
                    }
                }
            }
            None => {
                let _ = tokio::time::timeout(Duration::from_millis(100), channel.wait_for_events())
                    .await;
            }
        }
    }
    seen
}

async fn put_take_commit_rollback_restart(parse_as_flume_event: bool) {
    let topic = "q";
    let mock = Mock::start(topic, 3);
    let brokers = mock.brokers();
    let channel = KafkaChannel::open("c", config(&brokers, topic, parse_as_flume_event)).unwrap();
    assert!(channel.is_durable());
    for chunk in (0..300).step_by(100) {
        channel.put(events(chunk, chunk + 100)).await.unwrap();
    }

    // A rollback hands the same events out again, each partition in offset order.
    let first = take(&channel, 50).await;
    let taken: Vec<usize> = first.events().iter().map(number).collect();
    first.rollback();
    let second = take(&channel, taken.len()).await;
    let again: Vec<usize> = second.events().iter().map(number).collect();
    second.rollback();
    let mut a = taken.clone();
    let mut b = again.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "a rollback gives back the same events");
    for key in 0..5 {
        let of_key: Vec<usize> = again.iter().copied().filter(|i| i % 5 == key).collect();
        assert!(
            of_key.windows(2).all(|w| w[0] < w[1]),
            "key {key}: {of_key:?}"
        );
    }

    // Commit 150 events, then leave one take open and stop: only the committed ones are gone.
    let mut committed = Vec::new();
    while committed.len() < 150 {
        let txn = take(&channel, 150 - committed.len()).await;
        committed.extend(txn.events().iter().map(number));
        txn.commit().await.unwrap();
    }
    // Fill is the group's lag: 300 put, 150 committed.
    // librdkafka reports the lag in its statistics once a second; under a loaded CI machine the
    // first reports after the commits can be late.
    let deadline = Instant::now() + Duration::from_secs(60);
    while channel.stats().events != 150 {
        assert!(
            Instant::now() < deadline,
            "fill is {}, not the lag of 150",
            channel.stats().events
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), channel.wait_for_events()).await;
    }
    let open = take(&channel, 30).await;
    assert!(!open.is_empty());
    drop(open);
    channel.close().await;
    assert!(channel.put(events(0, 1)).await.is_err(), "closed");
    drop(channel);

    let channel = KafkaChannel::open("c", config(&brokers, topic, parse_as_flume_event)).unwrap();
    let seen = drain(&channel, 150, Duration::from_secs(30)).await;
    let mut rest: Vec<usize> = seen.keys().copied().collect();
    rest.sort_unstable();
    let mut want: Vec<usize> = (0..300).filter(|i| !committed.contains(i)).collect();
    want.sort_unstable();
    assert_eq!(
        rest, want,
        "after a restart: every uncommitted event, no committed one"
    );
    assert!(seen.values().all(|&n| n == 1));
    channel.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_take_commit_rollback_restart_flume_encoding() {
    put_take_commit_rollback_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_take_commit_rollback_restart_kafka_headers() {
    put_take_commit_rollback_restart(false).await;
}

/// Every broker down during puts: the put fails (no hang past `delivery_timeout`), the
/// source retries the same batch until it is stored, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_fails_during_an_outage_and_the_retried_batch_loses_nothing() {
    let mock = Arc::new(Mock::start("q", 3));
    let brokers = mock.brokers();
    let mut cfg = config(&brokers, "q", true);
    // Short, so each put during the outage fails quickly.
    cfg.delivery_timeout = ConfigDuration(Duration::from_millis(800));
    let channel = KafkaChannel::open("c", cfg).unwrap();
    channel.put(events(0, 100)).await.unwrap();

    mock.all_brokers(false);
    let started = Instant::now();
    let failed = channel.put(events(100, 200)).await;
    assert!(failed.is_err(), "a put with every broker down must fail");
    assert!(
        !failed.unwrap_err().is_full(),
        "an outage is not a full channel"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "put hung");

    // The brokers come back while the source retries the same batch until it is stored.
    let recovery = {
        let mock = mock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            mock.all_brokers(true);
        })
    };
    let mut failures = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = channel.put(events(100, 200)).await {
        assert!(
            Instant::now() < deadline,
            "puts never succeeded after the outage: {e}"
        );
        failures += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    recovery.await.unwrap();
    channel.put(events(200, 300)).await.unwrap();

    let seen = drain(&channel, 300, Duration::from_secs(30)).await;
    let lost: Vec<usize> = (0..300).filter(|i| !seen.contains_key(i)).collect();
    assert!(lost.is_empty(), "lost {lost:?}");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("put outage: {failures} failed puts, {duplicates} duplicates");
    channel.close().await;
}

/// Every broker down while events are taken: commits that fail roll their take back, and
/// after the outage every event is taken and committed; a restart then finds nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_across_an_outage_lose_nothing_and_commit_everything() {
    let mock = Mock::start("q", 3);
    let brokers = mock.brokers();
    let channel = KafkaChannel::open("c", config(&brokers, "q", true)).unwrap();
    for chunk in (0..600).step_by(200) {
        channel.put(events(chunk, chunk + 200)).await.unwrap();
    }
    let mut seen = drain(&channel, 100, Duration::from_secs(30)).await;
    assert!(seen.len() >= 100);

    mock.all_brokers(false);
    // Takes go on from what was fetched; their commits fail (rolled back) or wait for the
    // coordinator, which comes back below.
    let txn = take(&channel, 100).await;
    let numbers: Vec<usize> = txn.events().iter().map(number).collect();
    let commit = tokio::spawn(async move { txn.commit().await.map_err(|e| e.to_string()) });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mock.all_brokers(true);
    let outcome = tokio::time::timeout(Duration::from_secs(60), commit)
        .await
        .expect("a commit must end once the brokers are back")
        .unwrap();
    if outcome.is_ok() {
        for i in numbers {
            *seen.entry(i).or_default() += 1;
        }
    }
    eprintln!("commit during the outage: {outcome:?}");

    let rest = drain(&channel, 600 - seen.len(), Duration::from_secs(60)).await;
    for (i, n) in rest {
        *seen.entry(i).or_default() += n;
    }
    let lost: Vec<usize> = (0..600).filter(|i| !seen.contains_key(i)).collect();
    assert!(lost.is_empty(), "lost {} events: {lost:?}", lost.len());
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("take outage: {duplicates} duplicates");
    channel.close().await;
    drop(channel);

    // Everything was committed: a new member of the group finds nothing to take.
    let channel = KafkaChannel::open("c", config(&brokers, "q", true)).unwrap();
    let again = drain(&channel, 1, Duration::from_secs(5)).await;
    assert!(again.is_empty(), "committed events came back: {again:?}");
    channel.close().await;
}
