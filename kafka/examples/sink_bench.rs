//! The `kafka` sink's rate against librdkafka's raw producer, in one run on one broker:
//! `cargo run --release -p weir-kafka --example sink_bench -- BROKERS [EVENTS] [BATCH_SIZE] [IN_FLIGHT]`
//! (IN_FLIGHT: the sink's `max_batches_in_flight`, its default when left out).
//! Both send EVENTS records of 200 bytes with `acks = all`, idempotence, `linger.ms = 5`:
//! first the raw producer (records queued as fast as librdkafka takes them, then flushed),
//! then the sink draining a memory channel pre-filled with the same count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use weir_core::metrics::{ComponentMetrics, Registry};
use weir_core::{
    Channel, ConfigDuration, Event, MemoryChannel, MemoryChannelConfig, Sink, SinkContext,
};
use weir_kafka::sink::{Compression, KafkaSinkConfig, DEFAULT_MAX_BATCHES_IN_FLIGHT};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn raw(brokers: &str, topic: &str, n: usize, body: &[u8]) -> f64 {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("raw producer");
    let start = Instant::now();
    for _ in 0..n {
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(body);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => panic!("raw produce: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brokers = args
        .get(1)
        .expect("usage: sink_bench BROKERS [EVENTS] [BATCH_SIZE] [IN_FLIGHT]")
        .clone();
    let n: usize = args.get(2).map_or(500_000, |s| s.parse().expect("EVENTS"));
    let batch_size: usize = args.get(3).map_or(1000, |s| s.parse().expect("BATCH_SIZE"));
    let in_flight: Option<usize> = args.get(4).map(|s| s.parse().expect("IN_FLIGHT"));
    let body = vec![b'x'; 200];

    let raw_rate = raw(&brokers, "bench-raw", n, &body);
    let raw_rss = peak_rss_mib();

    let channel = Arc::new(MemoryChannel::new(
        "c",
        MemoryChannelConfig {
            max_events: n as u64,
            max_bytes: weir_core::ByteSize(n as u64 * 1024),
            transaction_capacity: batch_size.max(1000),
        },
    ));
    let event = Event::new(body.clone());
    for _ in 0..n / 1000 {
        channel.put(vec![event.clone(); 1000]).await.expect("fill");
    }
    let registry = Registry::default();
    let shutdown = CancellationToken::new();
    let cx = SinkContext {
        id: "k".into(),
        channel: channel.clone(),
        shutdown: shutdown.clone(),
        metrics: ComponentMetrics::new(registry, "sink", "k"),
        ready: Default::default(),
    };
    let k = in_flight.unwrap_or(DEFAULT_MAX_BATCHES_IN_FLIGHT);
    let sink = Box::new(
        KafkaSinkConfig {
            brokers: vec![brokers.clone()],
            topic: "bench-sink".into(),
            batch_size,
            key_header: "key".into(),
            forward_headers: true,
            linger: ConfigDuration(Duration::from_millis(5)),
            compression: Compression::None,
            delivery_timeout: ConfigDuration(Duration::from_secs(30)),
            max_batches_in_flight: k,
            properties: BTreeMap::new(),
        }
        .build(),
    );
    let start = Instant::now();
    shutdown.cancel(); // a memory channel is drained before the sink returns
    sink.run(cx).await.expect("sink");
    let sink_rate = (n / 1000 * 1000) as f64 / start.elapsed().as_secs_f64();
    println!(
        "events={n} batch_size={batch_size} in_flight={k} raw={raw_rate:.0}/s sink={sink_rate:.0}/s ratio={:.2} peak_rss_raw={raw_rss:.0}MiB peak_rss_total={:.0}MiB",
        sink_rate / raw_rate,
        peak_rss_mib()
    );
}
