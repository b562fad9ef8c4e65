//! The `kafka` source against librdkafka's in-process mock cluster (3 brokers), with every
//! broker down mid-stream: every record reaches the channel, duplicates are counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use weir_core::metrics::{ComponentMetrics, Registry};
use weir_core::{
    Channel, ChannelProcessor, ConfigDuration, MemoryChannel, MemoryChannelConfig, SelectorConfig,
    Source, SourceContext,
};
use weir_kafka::source::{KafkaSourceConfig, StartFrom};

fn produce(brokers: &str, from: usize, to: usize) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for i in from..to {
        let body = i.to_string();
        let key = format!("k{}", i % 5);
        producer
            .send(BaseRecord::to("in").payload(&body).key(&key))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Drains what the channel holds: body → times seen.
async fn drain(channel: &MemoryChannel, seen: &mut HashMap<usize, usize>) {
    while let Some(txn) = channel.take(1000).await.unwrap() {
        for e in txn.events() {
            let i: usize = std::str::from_utf8(&e.body).unwrap().parse().unwrap();
            assert_eq!(e.headers.get("topic"), Some("in"));
            assert_eq!(e.headers.get("key"), Some(format!("k{}", i % 5).as_str()));
            assert!(e.headers.contains_key("offset") && e.headers.contains_key("partition"));
            *seen.entry(i).or_default() += 1;
        }
        txn.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_survives_all_brokers_down() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("in", 2, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, 0, 1000);

    let channel = Arc::new(MemoryChannel::new("c", MemoryChannelConfig::default()));
    let output = ChannelProcessor::new(vec![channel.clone()], &SelectorConfig::default()).unwrap();
    let shutdown = CancellationToken::new();
    let cx = SourceContext {
        id: "k".into(),
        output: Arc::new(output),
        shutdown: shutdown.clone(),
        metrics: ComponentMetrics::new(Registry::default(), "source", "k"),
        ready: Default::default(),
    };
    let mut properties = BTreeMap::new();
    properties.insert("session.timeout.ms".to_string(), "6000".to_string());
    let source = Box::new(
        KafkaSourceConfig {
            brokers: vec![brokers.clone()],
            topics: vec!["in".into()],
            group: "g".into(),
            batch_size: 100,
            batch_duration: ConfigDuration(Duration::from_millis(50)),
            start_from: StartFrom::Earliest,
            properties,
        }
        .build(),
    );
    let task = tokio::spawn(async move { source.run(cx).await.map_err(|e| e.to_string()) });

    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 1000 {
        assert!(
            Instant::now() < deadline,
            "only {} of the first 1000",
            seen.len()
        );
        drain(&channel, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    produce(&brokers, 1000, 2000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2000 {
        assert!(
            Instant::now() < deadline,
            "only {} of 2000 after the outage",
            seen.len()
        );
        drain(&channel, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    drain(&channel, &mut seen).await;
    assert!((0..2000).all(|i| seen.contains_key(&i)));
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("outage: {duplicates} duplicates");
}
