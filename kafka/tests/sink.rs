//! The `kafka` sink against librdkafka's in-process mock cluster (3 brokers), including all
//! brokers going down mid-stream: nothing is lost, order per key holds, duplicates counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use weir_core::metrics::{ComponentMetrics, MetricName, Registry};
use weir_core::{
    Channel, ConfigDuration, Event, MemoryChannel, MemoryChannelConfig, Sink, SinkContext,
};
use weir_kafka::sink::{Compression, KafkaSinkConfig};

const PARTITIONS: i32 = 3;

fn sink_config(brokers: String) -> KafkaSinkConfig {
    KafkaSinkConfig {
        brokers: vec![brokers],
        topic: "out".into(),
        batch_size: 100,
        key_header: "key".into(),
        forward_headers: true,
        linger: ConfigDuration(Duration::from_millis(2)),
        compression: Compression::Lz4,
        delivery_timeout: ConfigDuration(Duration::from_millis(400)),
        max_batches_in_flight: 8,
        properties: BTreeMap::new(),
    }
}

/// One consumed record: (partition, key, body, headers).
type Record = (i32, String, String, Vec<(String, String)>);

/// Every record of `out`, in partition order.
fn read_all(brokers: &str, expected_at_least: usize) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("out", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.partition(),
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    headers,
                ));
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None if out.len() >= expected_at_least => break,
            None => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_survives_all_brokers_down_without_loss_or_reordering() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("out", PARTITIONS, 3).unwrap();
    let brokers = mock.bootstrap_servers();

    const N: usize = 3000;
    let channel = Arc::new(MemoryChannel::new("c", MemoryChannelConfig::default()));
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let events = chunk
            .iter()
            .map(|i| {
                Event::new(format!("{i}"))
                    .with_header("key", format!("k{}", i % 7))
                    .with_header("n", i.to_string())
            })
            .collect();
        channel.put(events).await.unwrap();
    }

    let registry = Registry::default();
    let shutdown = CancellationToken::new();
    let cx = SinkContext {
        id: "k".into(),
        channel: channel.clone(),
        shutdown: shutdown.clone(),
        metrics: ComponentMetrics::new(registry.clone(), "sink", "k"),
        ready: Default::default(),
    };
    let sink = Box::new(sink_config(brokers.clone()).build());
    let task = tokio::spawn(async move { sink.run(cx).await.map_err(|e| e.to_string()) });

    let sent = registry.counter(MetricName::EventsSentTotal, "sink", "k");
    let errors = registry.counter(MetricName::ErrorsTotal, "sink", "k");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.get() < 500 {
        assert!(Instant::now() < deadline, "sink never started sending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while errors.get() == 0 {
        assert!(Instant::now() < deadline, "the outage never failed a batch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while channel.stats().events > 0 {
        assert!(
            Instant::now() < deadline,
            "channel never drained after the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(sent.get(), N as u64);

    let records = read_all(&brokers, N);
    // Nothing lost; each key lives on one partition, and in the order of first delivery its
    // events keep the channel's order (a retried batch may repeat a suffix, never reorder).
    let mut first_seen: HashMap<String, Vec<usize>> = HashMap::new();
    let mut seen = vec![0usize; N];
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (partition, key, body, headers) in &records {
        let i: usize = body.parse().unwrap();
        assert_eq!(key, &format!("k{}", i % 7));
        assert!(
            headers.contains(&("n".into(), i.to_string())),
            "headers {headers:?}"
        );
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*partition),
            *partition
        );
        if seen[i] == 0 {
            first_seen.entry(key.clone()).or_default().push(i);
        }
        seen[i] += 1;
    }
    let lost: Vec<usize> = (0..N).filter(|&i| seen[i] == 0).collect();
    assert!(
        lost.is_empty(),
        "lost {} events, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    for (key, order) in &first_seen {
        assert!(order.windows(2).all(|w| w[0] < w[1]), "key {key} reordered");
    }
    let duplicates = records.len() - N;
    eprintln!(
        "outage: {} failed batches, {duplicates} duplicates",
        errors.get()
    );
}

/// Produce requests refused mid-stream while up to 8 small batches are in flight: the failed
/// batch and every later one roll back and are sent again, so nothing is lost and, in the
/// order of first delivery, every key keeps the channel's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_roll_back_in_order_after_a_refused_produce() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("out", PARTITIONS, 3).unwrap();
    let brokers = mock.bootstrap_servers();

    const N: usize = 2000;
    let channel = Arc::new(MemoryChannel::new("c", MemoryChannelConfig::default()));
    let events = (0..N)
        .map(|i| {
            Event::new(format!("{i}"))
                .with_header("key", format!("k{}", i % 7))
                .with_header("n", i.to_string())
        })
        .collect();
    channel.put(events).await.unwrap();

    let registry = Registry::default();
    let shutdown = CancellationToken::new();
    let cx = SinkContext {
        id: "k".into(),
        channel: channel.clone(),
        shutdown: shutdown.clone(),
        metrics: ComponentMetrics::new(registry.clone(), "sink", "k"),
        ready: Default::default(),
    };
    let mut config = sink_config(brokers.clone());
    config.batch_size = 25;
    config.linger = ConfigDuration(Duration::from_millis(20));
    config.delivery_timeout = ConfigDuration(Duration::from_secs(5));
    let sink = Box::new(config.build());
    let task = tokio::spawn(async move { sink.run(cx).await.map_err(|e| e.to_string()) });

    let sent = registry.counter(MetricName::EventsSentTotal, "sink", "k");
    let errors = registry.counter(MetricName::ErrorsTotal, "sink", "k");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.get() < 200 {
        assert!(Instant::now() < deadline, "sink never started sending");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Not retriable: librdkafka fails the records instead of retrying them itself.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 2],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while channel.stats().events > 0 {
        assert!(Instant::now() < deadline, "channel never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(errors.get() > 0, "the refused produce never failed a batch");
    assert_eq!(sent.get(), N as u64);

    let records = read_all(&brokers, N);
    let mut seen = vec![0usize; N];
    let mut first_seen: HashMap<String, Vec<usize>> = HashMap::new();
    for (_, key, body, _) in &records {
        let i: usize = body.parse().unwrap();
        if seen[i] == 0 {
            first_seen.entry(key.clone()).or_default().push(i);
        }
        seen[i] += 1;
    }
    let lost: Vec<usize> = (0..N).filter(|&i| seen[i] == 0).collect();
    assert!(lost.is_empty(), "lost {} events: {lost:?}", lost.len());
    for (key, order) in &first_seen {
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key {key} reordered: {order:?}"
        );
    }
    eprintln!(
        "refused produce: {} failed batches, {} duplicates",
        errors.get(),
        records.len() - N
    );
}
