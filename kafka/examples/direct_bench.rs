//! The two librdkafka sides of `scripts/bench-kafka-direct` (the direct input feeding the
//! request-count job, against librdkafka's raw consumer on the same topic and broker):
//!
//! * `direct_bench produce BROKERS TOPIC EVENTS` writes EVENTS request-log lines of 200 bytes
//!   (`10.0.0.N - userN [...] "GET /..." 200 ...`, 1000 distinct users) round-robin over the
//!   topic's partitions, idempotent, `acks = all`.
//! * `direct_bench consume BROKERS TOPIC` reads every partition from its first offset to the
//!   high watermark with a plain `BaseConsumer` (librdkafka's defaults, `read_committed` like
//!   the direct input; `receive.message.max.bytes` raised, see [`RECEIVE_MAX`]), as fast as
//!   it can, touching each payload; prints records/s and the process's peak RSS.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const BODY_LEN: usize = 200;
/// noida-db 0.2.3 ignores `fetch.max.bytes` / `max.partition.fetch.bytes` and answers a fetch
/// with everything up to the end of the partitions: librdkafka's default 100 MB response
/// limit would refuse it. The script sets the same on the direct input.
const RECEIVE_MAX: &str = "1000000000";

/// CPU time (user + system) of this process so far, in seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A request-log line of exactly `BODY_LEN` bytes whose third field (`split " " field 2`)
/// is one of 1000 users.
fn line(i: usize) -> Vec<u8> {
    let mut l = format!(
        "10.0.{}.{} - user{} [24/Nov/2026:06:00:00 +0000] \"GET /items/{i} HTTP/1.1\" 200 5120 \"-\" \"curl/8.0\" ",
        (i / 250) % 250,
        i % 250,
        i % 1000
    )
    .into_bytes();
    l.resize(BODY_LEN, b'x');
    l
}

fn produce(brokers: &str, topic: &str, n: usize) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let start = Instant::now();
    for i in 0..n {
        let body = line(i);
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(&body);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    println!(
        "produced={n} rate={:.0}/s",
        n as f64 / start.elapsed().as_secs_f64()
    );
}

fn consume(brokers: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "raw-bench")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("receive.message.max.bytes", RECEIVE_MAX)
        .create()
        .expect("consumer");
    let start = Instant::now();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut total = 0i64;
    let mut ends = std::collections::HashMap::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        total += high - low;
        ends.insert(p.id(), high);
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let (mut got, mut bytes) = (0i64, 0usize);
    let mut open = ends.values().filter(|&&h| h > 0).count();
    let deadline = Instant::now() + Duration::from_secs(600);
    while open > 0 && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                got += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
                if ends.get(&m.partition()) == Some(&(m.offset() + 1)) {
                    open -= 1;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => eprintln!("consume error: {e}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs();
    println!(
        "raw_consumer records={got} of={total} bytes={bytes} secs={secs:.2} rate={:.0}/s cpu_secs={cpu:.2} per_cpu_sec={:.0} peak_rss={:.0}MiB",
        got as f64 / secs,
        got as f64 / cpu.max(0.01),
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: direct_bench produce BROKERS TOPIC EVENTS | consume BROKERS TOPIC";
    match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("produce"), Some(brokers), Some(topic)) => {
            let n = args.get(4).and_then(|s| s.parse().ok()).expect("EVENTS");
            produce(brokers, topic, n)
        }
        (Some("consume"), Some(brokers), Some(topic)) => consume(brokers, topic),
        _ => panic!("{usage}"),
    }
}
