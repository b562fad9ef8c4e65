//! Kafka interop through the noida-db broker fixture, with independent clients only:
//! kcat produces, Debian's python3-confluent-kafka consumes.

use std::time::Duration;

use weir_tests::kafka::{confluent_python, Broker};
use weir_tests::{python, send_lines, wait_until, weir, Agent};

#[test]
fn kcat_to_confluent_kafka_through_noida_db() {
    let broker = Broker::start();
    broker.create_topic("smoke", 2);
    let lines: Vec<String> = (0..20).map(|i| format!("k{i}\tvalue-{i}")).collect();
    broker.kcat_produce("smoke", &lines, true);

    let script = format!(
        "from confluent_kafka import Consumer\n\
         c = Consumer({{'bootstrap.servers': '{}', 'group.id': 'smoke', \
         'auto.offset.reset': 'earliest', 'enable.auto.commit': False}})\n\
         c.subscribe(['smoke'])\n\
         got = []\n\
         for _ in range(200):\n\
         \x20   m = c.poll(0.2)\n\
         \x20   if m is not None and m.error() is None: got.append((m.key() or b'').decode() + '=' + m.value().decode())\n\
         \x20   if len(got) >= 20: break\n\
         c.close()\n\
         print('\\n'.join(sorted(got)))\n",
        broker.bootstrap()
    );
    let out = confluent_python().args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want: Vec<String> = (0..20).map(|i| format!("k{i}=value-{i}")).collect();
    want.sort();
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want);

    // And kcat reads back what kcat wrote, across both partitions.
    let mut read: Vec<String> = broker
        .kcat_consume("smoke", "%k=%s\n", false)
        .lines()
        .map(str::to_owned)
        .collect();
    read.sort();
    assert_eq!(read, want);
}

fn sink_pipeline(brokers: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]

[channels.c]
type = "memory"

[sinks.out]
type = "kafka"
channel = "c"
brokers = ["{brokers}"]
topic = "from-weir"
batch_size = 50
compression = "gzip"
"#
    )
}

/// avro (`weir send`) → memory channel → kafka sink → noida-db; kcat reads back exactly the
/// bodies sent, with the `key` header as record key and every header as a Kafka header.
#[test]
fn kafka_sink_delivers_what_kcat_reads() {
    let broker = Broker::start();
    broker.create_topic("from-weir", 3);
    let agent = Agent::start(&sink_pipeline(&broker.bootstrap()));
    let addr = agent.listen_addr("in");
    let lines: String = (0..300).map(|i| format!("line {i}\n")).collect();
    let (code, err) = send_lines(
        addr,
        &lines,
        &["--header", "key=k1", "--header", "origin=test"],
    );
    assert_eq!(code, 0, "{err}");

    let mut got = Vec::new();
    wait_until(Duration::from_secs(30), "300 records in from-weir", || {
        got = broker
            .kcat_consume("from-weir", "%k|%s|%h\n", false)
            .lines()
            .map(str::to_owned)
            .collect();
        got.len() >= 300
    });
    // One key, so one partition, in the order sent.
    let want: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    let bodies: Vec<String> = got
        .iter()
        .map(|l| l.split('|').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(bodies, want);
    for line in &got {
        assert!(line.starts_with("k1|"), "{line}");
        assert!(
            line.contains("key=k1") && line.contains("origin=test"),
            "{line}"
        );
    }
}

#[test]
fn kafka_sink_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = sink_pipeline("127.0.0.1:9");
    let cases = [
        (
            base.replace("batch_size = 50", "batch_size = 0"),
            "sinks.out.batch_size",
        ),
        (
            base.replace("topic = \"from-weir\"", "topic = \"\""),
            "sinks.out.topic",
        ),
        (
            base.replace("brokers = [\"127.0.0.1:9\"]", "brokers = []"),
            "sinks.out.brokers",
        ),
        (
            base.replace("compression = \"gzip\"", "compression = \"brotli\""),
            "sinks.out.compression",
        ),
        (base.replace("topic = \"from-weir\"\n", ""), "topic"),
    ];
    for (config, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let (code, _, err) = weir(&["validate", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{key}: {err}");
        assert!(err.contains(key), "expected {key} in:\n{err}");
    }
}

/// kcat produces → kafka source (group `g`) → file channel → console sink: every record
/// arrives once with its Kafka metadata as headers, and the group's committed offsets then
/// cover them all (read back with confluent-kafka).
#[test]
fn kafka_source_receives_what_kcat_produced() {
    let broker = Broker::start();
    broker.create_topic("to-weir", 2);
    let lines: Vec<String> = (0..200).map(|i| format!("k{}\tmsg {i}", i % 4)).collect();
    broker.kcat_produce("to-weir", &lines, true);
    let agent = Agent::start(&format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[sources.in]
type = "kafka"
brokers = ["{}"]
topics = ["to-weir"]
group = "g"
start_from = "earliest"
batch_size = 64
batch_duration = "100ms"
channels = ["c"]

[channels.c]
type = "file"

[sinks.out]
type = "console"
channel = "c"
"#,
        broker.bootstrap()
    ));
    let out = agent.wait_stdout(200, Duration::from_secs(30));
    let mut bodies: Vec<String> = Vec::new();
    for line in &out {
        let body = line.rsplit_once("body: ").unwrap().1.trim_end_matches(" }");
        let i: usize = body.strip_prefix("msg ").unwrap().parse().unwrap();
        assert!(line.contains(&format!("key=k{}", i % 4)), "{line}");
        assert!(
            line.contains("topic=to-weir")
                && line.contains("offset=")
                && line.contains("partition=")
                && line.contains("timestamp="),
            "{line}"
        );
        bodies.push(body.to_owned());
    }
    bodies.sort();
    let mut want: Vec<String> = (0..200).map(|i| format!("msg {i}")).collect();
    want.sort();
    assert_eq!(bodies, want);

    let script = format!(
        "from confluent_kafka import Consumer, TopicPartition\n\
         c = Consumer({{'bootstrap.servers': '{}', 'group.id': 'g'}})\n\
         print(sum(max(tp.offset, 0) for tp in c.committed([TopicPartition('to-weir', 0), TopicPartition('to-weir', 1)], timeout=10)))\n",
        broker.bootstrap()
    );
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while last != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "committed offsets sum to {last}, not 200"
        );
        let out = confluent_python().args(["-c", &script]).output().unwrap();
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kafka_source_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
[sources.in]
type = "kafka"
brokers = ["127.0.0.1:9"]
topics = ["t"]
batch_size = 10
start_from = "earliest"
channels = ["c"]

[channels.c]
type = "memory"

[sinks.out]
type = "null"
channel = "c"
"#;
    let cases = [
        (
            base.replace("topics = [\"t\"]", "topics = []"),
            "sources.in.topics",
        ),
        (
            base.replace("batch_size = 10", "batch_size = 0"),
            "sources.in.batch_size",
        ),
        (
            base.replace("\"earliest\"", "\"middle\""),
            "sources.in.start_from",
        ),
        (base.replace("brokers = [\"127.0.0.1:9\"]\n", ""), "brokers"),
    ];
    for (config, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let (code, _, err) = weir(&["validate", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{key}: {err}");
        assert!(err.contains(key), "expected {key} in:\n{err}");
    }
}

fn channel_pipeline(brokers: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]

[channels.c]
type = "kafka"
brokers = ["{brokers}"]
topic = "weir-queue"
consumer_properties = {{ "session.timeout.ms" = "6000" }}

[sinks.out]
type = "console"
channel = "c"
"#
    )
}

/// The sum of group `group`'s committed offsets on `topic`'s `partitions`, read with
/// confluent-kafka (`-1001` = nothing committed counts as 0).
fn committed_sum(broker: &Broker, group: &str, topic: &str, partitions: u32) -> String {
    let script = format!(
        "from confluent_kafka import Consumer, TopicPartition\n\
         c = Consumer({{'bootstrap.servers': '{}', 'group.id': '{group}'}})\n\
         tps = [TopicPartition('{topic}', p) for p in range({partitions})]\n\
         print(sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10)))\n",
        broker.bootstrap()
    );
    let out = confluent_python().args(["-c", &script]).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Flume's `AvroFlumeEvent` schema for python3-avro, as `schema`.
const FLUME_EVENT_SCHEMA: &str = "import avro.schema, avro.io\n\
    schema = avro.schema.parse('{\"type\": \"record\", \"name\": \"AvroFlumeEvent\", \
    \"namespace\": \"org.apache.flume.source.avro\", \"fields\": [{\"name\": \"headers\", \
    \"type\": {\"type\": \"map\", \"values\": \"string\"}}, {\"name\": \"body\", \"type\": \"bytes\"}]}')";

/// The first `n` records of `topic` (in partition and offset order), read with
/// confluent-kafka and decoded as whole `AvroFlumeEvent` datums with python3-avro:
/// `k=v,k=v|body` per record (headers sorted).
fn flume_events(broker: &Broker, topic: &str, n: usize) -> Vec<String> {
    let script = format!(
        "{FLUME_EVENT_SCHEMA}\n\
         import io\n\
         from confluent_kafka import Consumer\n\
         c = Consumer({{'bootstrap.servers': '{}', 'group.id': 'flume-reader', \
         'auto.offset.reset': 'earliest', 'enable.auto.commit': False}})\n\
         c.subscribe(['{topic}'])\n\
         got = []\n\
         for _ in range(300):\n\
         \x20   m = c.poll(0.2)\n\
         \x20   if m is None or m.error() is not None: continue\n\
         \x20   raw = io.BytesIO(m.value())\n\
         \x20   e = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(raw))\n\
         \x20   assert raw.read() == b'', 'trailing bytes after the datum'\n\
         \x20   h = ','.join(k + '=' + v for k, v in sorted(e['headers'].items()))\n\
         \x20   got.append((m.partition(), m.offset(), h + '|' + e['body'].decode()))\n\
         \x20   if len(got) >= {n}: break\n\
         c.close()\n\
         print('\\n'.join(x[2] for x in sorted(got)))\n",
        broker.bootstrap()
    );
    let out = python().args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Bodies of console-sink lines (`… body: line N }`).
fn console_bodies(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            l.rsplit_once("body: ")
                .unwrap()
                .1
                .trim_end_matches(" }")
                .to_owned()
        })
        .collect()
}

/// avro (`weir send`) → kafka channel on noida-db → console sink: the sink prints what was
/// sent, in order, with its headers; kcat reads the topic independently (Flume's Avro event
/// values, keyed by the `key` header); the takes' commits are the group's committed offsets;
/// after a restart the committed events do not come back and new ones flow. (A restart after
/// `kill -9` waits for the group to expire the dead member; noida-db 0.2.3 did not within a
/// minute, so this restart is a clean stop. Uncommitted takes coming back after a restart are
/// tested on the mock cluster.)
#[test]
fn kafka_channel_carries_avro_events_that_kcat_reads_across_a_restart() {
    let broker = Broker::start();
    broker.create_topic("weir-queue", 3);
    let dir = tempfile::tempdir().unwrap();
    let config = channel_pipeline(&broker.bootstrap());
    let mut agent = Agent::start_in(dir.path(), &config);
    let lines: String = (0..200).map(|i| format!("line {i}\n")).collect();
    let (code, err) = send_lines(
        agent.listen_addr("in"),
        &lines,
        &["--header", "key=k1", "--header", "origin=test"],
    );
    assert_eq!(code, 0, "{err}");

    let out = agent.wait_stdout(200, Duration::from_secs(30));
    // One key, so one partition: the channel keeps the order sent.
    let want: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    assert_eq!(console_bodies(&out), want);
    assert!(out
        .iter()
        .all(|l| l.contains("key=k1") && l.contains("origin=test")));

    // kcat, as an independent reader of the topic: one record per event, key `k1`, the value
    // an AvroFlumeEvent datum (headers map, then the body as its last field).
    let records = broker.kcat_consume("weir-queue", "%k|%s<END>\n", false);
    let records: Vec<&str> = records.split("<END>\n").filter(|r| !r.is_empty()).collect();
    assert_eq!(records.len(), 200);
    for (i, record) in records.iter().enumerate() {
        let (key, value) = record.split_once('|').unwrap();
        assert_eq!(key, "k1");
        assert!(value.ends_with(&format!("line {i}")), "{value:?}");
        assert!(
            value.contains("origin") && value.contains("test"),
            "{value:?}"
        );
    }

    // Flume's KafkaChannel reads them: every value is exactly one AvroFlumeEvent datum
    // (python3-avro with Flume's schema), with the headers sent.
    let decoded = flume_events(&broker, "weir-queue", 200);
    assert_eq!(decoded.len(), 200, "{decoded:?}");
    for (i, line) in decoded.iter().enumerate() {
        assert_eq!(line, &format!("key=k1,origin=test|line {i}"));
    }

    let mut last = String::new();
    wait_until(
        Duration::from_secs(20),
        "committed offsets cover 200",
        || {
            last = committed_sum(&broker, "weir-c", "weir-queue", 3);
            last == "200"
        },
    );

    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    let agent = Agent::start_in(dir.path(), &config);
    let more: String = (200..250).map(|i| format!("line {i}\n")).collect();
    let (code, err) = send_lines(agent.listen_addr("in"), &more, &["--header", "key=k1"]);
    assert_eq!(code, 0, "{err}");
    // And weir reads what Flume's KafkaChannel writes: an AvroFlumeEvent value with headers.
    let script = format!(
        "{FLUME_EVENT_SCHEMA}\n\
         import io\n\
         from confluent_kafka import Producer\n\
         buf = io.BytesIO()\n\
         avro.io.DatumWriter(schema).write({{'headers': {{'from': 'flume'}}, 'body': b'line 250'}}, avro.io.BinaryEncoder(buf))\n\
         p = Producer({{'bootstrap.servers': '{}', 'acks': 'all'}})\n\
         p.produce('weir-queue', key=b'k1', value=buf.getvalue())\n\
         assert p.flush(30) == 0\n",
        broker.bootstrap()
    );
    let written = python().args(["-c", &script]).output().unwrap();
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let out = agent.wait_stdout(51, Duration::from_secs(30));
    assert!(out[50].contains("from=flume"), "{}", out[50]);
    std::thread::sleep(Duration::from_millis(500));
    let want: Vec<String> = (200..251).map(|i| format!("line {i}")).collect();
    assert_eq!(
        console_bodies(&agent.stdout_lines()),
        want,
        "after a restart, only the new events: committed takes do not come back ({out:?})"
    );
}

#[test]
fn kafka_channel_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = channel_pipeline("127.0.0.1:9");
    let cases = [
        (
            base.replace("topic = \"weir-queue\"", "topic = \"\""),
            "channels.c.topic",
        ),
        (
            base.replace("brokers = [\"127.0.0.1:9\"]", "brokers = []"),
            "channels.c.brokers",
        ),
        (
            base.replace(
                "topic = \"weir-queue\"",
                "topic = \"q\"\ntransaction_capacity = 0",
            ),
            "channels.c.transaction_capacity",
        ),
        (
            base.replace(
                "topic = \"weir-queue\"",
                "topic = \"q\"\ncompression = \"zip\"",
            ),
            "channels.c.compression",
        ),
        (
            base.replace(
                "topic = \"weir-queue\"",
                "topic = \"q\"\nparse_as_flume = true",
            ),
            "channels.c.parse_as_flume",
        ),
    ];
    for (config, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let (code, _, err) = weir(&["validate", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{key}: {err}");
        assert!(err.contains(key), "expected {key} in:\n{err}");
    }
}
