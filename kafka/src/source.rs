//! The `kafka` source in receiver mode (Flume's Kafka source, Spark's receiver-based input):
//! a consumer-group member that puts batches of records into its channels and commits the
//! batch's Kafka offsets only after the channel put committed. A full channel makes it wait
//! and put the same batch again; a crash before the commit re-delivers the batch
//! (at-least-once, and nothing lost with a `file` channel).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tracing::{info, warn};
use weir_core::component::Backoff;
use weir_core::metrics::MetricName;
use weir_core::{
    ComponentError, ConfigDuration, Event, HeaderText, Source, SourceContext, ToCompactString,
};

use crate::client::{check_common, client_config};

/// `[sources.NAME] type = "kafka"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    /// The consumer group (Flume's `kafka.consumer.group.id`, default `flume` there).
    #[serde(default = "default_group")]
    pub group: String,
    /// Most records per channel put (Flume's `batchSize`).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest a batch waits to fill before it is put (Flume's `batchDurationMillis`).
    #[serde(default = "default_batch_duration")]
    pub batch_duration: ConfigDuration,
    /// Where a group without committed offsets starts: `"earliest"` or `"latest"`.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Any librdkafka consumer property, passed through (Flume's `kafka.consumer.*`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Earliest,
    #[default]
    Latest,
}

fn default_group() -> String {
    "weir".into()
}
const fn default_batch_size() -> usize {
    1000
}
const fn default_batch_duration() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}

impl KafkaSourceConfig {
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = check_common(&self.brokers, "topics", &self.topics);
        if self.batch_size == 0 {
            problems.push(("batch_size", "must be at least 1".into()));
        }
        if self.group.is_empty() {
            problems.push(("group", "must not be empty".into()));
        }
        problems
    }

    pub fn build(&self) -> KafkaSource {
        KafkaSource {
            config: self.clone(),
        }
    }
}

pub struct KafkaSource {
    config: KafkaSourceConfig,
}

/// A record as an event: the value is the body; Kafka record headers plus `topic`,
/// `partition`, `offset`, `key` (when present, lossy UTF-8) and `timestamp` (ms).
pub(crate) fn to_event(m: &BorrowedMessage<'_>) -> Event {
    let mut event = Event::new(bytes::Bytes::copy_from_slice(
        m.payload().unwrap_or_default(),
    ));
    let record_headers = m.headers();
    // Sized once, and weir's own headers inserted in key order (appends, no shifting): this
    // runs for every record the direct input reads.
    event.headers = weir_core::Headers::with_capacity(record_headers.map_or(0, |h| h.count()) + 5);
    if let Some(headers) = record_headers {
        for h in headers.iter() {
            let value = HeaderText::from_utf8_lossy(h.value.unwrap_or_default());
            event.headers.insert(h.key, value);
        }
    }
    // Keys and these values fit inline in a `HeaderText`: no allocation per header.
    if let Some(key) = m.key() {
        event
            .headers
            .insert("key", HeaderText::from_utf8_lossy(key));
    }
    event
        .headers
        .insert("offset", m.offset().to_compact_string());
    event
        .headers
        .insert("partition", m.partition().to_compact_string());
    if let Some(ts) = m.timestamp().to_millis() {
        event.headers.insert("timestamp", ts.to_compact_string());
    }
    event.headers.insert("topic", m.topic());
    event
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let c = &self.config;
        let received = cx.metrics.counter(MetricName::EventsReceivedTotal);
        let accepted = cx.metrics.counter(MetricName::EventsAcceptedTotal);
        let refused = cx.metrics.counter(MetricName::BatchesRefusedTotal);
        let start = match c.start_from {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        };
        let defaults = [
            ("group.id", c.group.clone()),
            ("enable.auto.commit", "false".to_string()),
            ("auto.offset.reset", start.to_string()),
        ];
        let consumer: StreamConsumer =
            client_config(&c.brokers, &defaults, &c.properties).create()?;
        let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        cx.ready.set();
        info!(message = "kafka source subscribed", topics = ?c.topics, group = %c.group);

        loop {
            // Gather one batch: up to batch_size records, or what came within batch_duration.
            let mut events = Vec::new();
            let mut next_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
            let deadline = tokio::time::Instant::now() + c.batch_duration.0;
            while events.len() < c.batch_size {
                tokio::select! {
                    m = consumer.recv() => match m {
                        Ok(m) => {
                            next_offsets.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                            events.push(to_event(&m));
                        }
                        Err(e) => warn!(message = "kafka consume error", error = %e),
                    },
                    _ = tokio::time::sleep_until(deadline), if !events.is_empty() => break,
                    _ = cx.shutdown.cancelled() => break,
                }
            }
            if events.is_empty() {
                if cx.shutdown.is_cancelled() {
                    return Ok(());
                }
                continue;
            }
            let n = events.len() as u64;
            received.inc(n);
            // The same batch until a channel takes it: never skip offsets.
            let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
            loop {
                match cx.output.put(events.clone()).await {
                    Ok(()) => break,
                    Err(e) if e.is_full() => {
                        refused.inc(1);
                        if cx.shutdown.is_cancelled() {
                            // Not committed: the group re-delivers it after a restart.
                            return Ok(());
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            accepted.inc(n);
            let mut offsets = TopicPartitionList::new();
            for ((topic, partition), next) in &next_offsets {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            }
            // Async: a lost commit only re-delivers what the channel already holds.
            if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                warn!(message = "kafka offset commit failed; the batch may be delivered again", error = %e);
            }
            if cx.shutdown.is_cancelled() {
                let _ = consumer.commit(&offsets, CommitMode::Sync);
                return Ok(());
            }
        }
    }
}
