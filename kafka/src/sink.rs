//! The `kafka` sink: drains a channel into a Kafka topic. Each channel batch is produced
//! record by record and its take commits only once the broker acknowledged every record
//! (`acks = all`, idempotent producer by default). Up to `max_batches_in_flight` batches are
//! sent before the oldest is acknowledged (one batch at a time costs a linger and a round trip
//! each); takes commit in take order. A failed record rolls its batch and every later one
//! back, and they are sent again after a backoff, so an outage loses and reorders nothing
//! (records already acknowledged in a failed batch are sent twice: at-least-once).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use serde::Deserialize;
use tracing::{info, warn};
use weir_core::component::Backoff;
use weir_core::metrics::MetricName;
use weir_core::{
    ComponentError, ConfigDuration, Event, Sink, SinkContext, TakeError, TakeTransaction,
};

use crate::client::{
    ack_producer, check_common, client_config, kafka_headers, AckProducer, InFlight, Record,
};

/// `[sinks.NAME] type = "kafka"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub topic: String,
    /// Most events taken from the channel (and acknowledged together) per transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The event header whose value becomes the record key (none: no key, librdkafka
    /// spreads records over partitions).
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// Send the event headers as Kafka record headers.
    #[serde(default = "default_true")]
    pub forward_headers: bool,
    /// librdkafka's `linger.ms`: how long it waits to fill a produce request.
    #[serde(default = "default_linger")]
    pub linger: ConfigDuration,
    #[serde(default)]
    pub compression: Compression,
    /// librdkafka's `message.timeout.ms`: how long a record may wait for its
    /// acknowledgement before the batch counts as failed, is rolled back and retried.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: ConfigDuration,
    /// Most batches sent and not yet acknowledged: the next batch is taken and sent while
    /// earlier ones are being acknowledged; takes still commit in order.
    #[serde(default = "default_max_batches_in_flight")]
    pub max_batches_in_flight: usize,
    /// Any librdkafka producer property, passed through (and overriding weir's defaults).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl Compression {
    pub(crate) fn codec(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

const fn default_batch_size() -> usize {
    1000
}
fn default_key_header() -> String {
    "key".into()
}
const fn default_true() -> bool {
    true
}
/// The sink's `max_batches_in_flight` when not configured.
pub const DEFAULT_MAX_BATCHES_IN_FLIGHT: usize = 8;

const fn default_max_batches_in_flight() -> usize {
    DEFAULT_MAX_BATCHES_IN_FLIGHT
}
const fn default_linger() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(5))
}
const fn default_delivery_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

/// librdkafka's default `queue.buffering.max.messages`: one batch must fit in its queue.
const MAX_BATCH: usize = 100_000;

impl KafkaSinkConfig {
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = check_common(&self.brokers, "topic", std::slice::from_ref(&self.topic));
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            problems.push(("batch_size", format!("must be between 1 and {MAX_BATCH}")));
        }
        if self.max_batches_in_flight == 0 {
            problems.push(("max_batches_in_flight", "must be at least 1".into()));
        }
        if self.delivery_timeout.0 < Duration::from_millis(1) {
            problems.push(("delivery_timeout", "must be at least 1ms".into()));
        }
        problems
    }

    pub fn build(&self) -> KafkaSink {
        KafkaSink {
            config: self.clone(),
        }
    }

    fn producer(&self) -> Result<AckProducer, KafkaError> {
        let defaults = [
            ("acks", "all".to_string()),
            ("enable.idempotence", "true".to_string()),
            ("linger.ms", self.linger.0.as_millis().to_string()),
            ("compression.codec", self.compression.codec().to_string()),
            (
                "message.timeout.ms",
                self.delivery_timeout.0.as_millis().to_string(),
            ),
        ];
        ack_producer(&client_config(&self.brokers, &defaults, &self.properties))
    }
}

pub struct KafkaSink {
    config: KafkaSinkConfig,
}

/// A taken batch whose records are with librdkafka, awaiting their acknowledgements.
struct Pending {
    txn: TakeTransaction,
    delivery: InFlight,
}

impl KafkaSink {
    fn record<'a>(&'a self, batch: &InFlight, event: &'a Event) -> Record<'a> {
        let mut record = batch.record(&self.config.topic).payload(&event.body[..]);
        if let Some(key) = event.headers.get(&self.config.key_header) {
            record = record.key(key.as_bytes());
        }
        if self.config.forward_headers && !event.headers.is_empty() {
            record = record.headers(kafka_headers(&event.headers));
        }
        record
    }

    /// The next batch to send: waits for events only when nothing is in flight (otherwise
    /// the oldest batch's acknowledgements are what to wait for).
    async fn next_batch(
        &self,
        cx: &SinkContext,
        in_flight: usize,
    ) -> Result<Option<TakeTransaction>, TakeError> {
        if in_flight == 0 {
            return cx.next_batch(self.config.batch_size).await;
        }
        if cx.shutdown.is_cancelled() && cx.channel.is_durable() {
            return Ok(None);
        }
        cx.channel.take(self.config.batch_size).await
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn run(self: Box<Self>, cx: SinkContext) -> Result<(), ComponentError> {
        let sent = cx.metrics.counter(MetricName::EventsSentTotal);
        let errors = cx.metrics.counter(MetricName::ErrorsTotal);
        let mut producer = self.config.producer()?;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut failing = false;
        // Batches in take order; each commits only after it and every batch before it was
        // acknowledged, so the channel's order is kept.
        let mut pipeline: VecDeque<Pending> = VecDeque::new();
        let mut drained = false;
        loop {
            while !drained && pipeline.len() < self.config.max_batches_in_flight {
                match self.next_batch(&cx, pipeline.len()).await? {
                    Some(txn) => {
                        let batch = InFlight::new();
                        let records: Vec<Record<'_>> = txn
                            .events()
                            .iter()
                            .map(|e| self.record(&batch, e))
                            .collect();
                        let delivery = batch.send(&producer, records).await;
                        pipeline.push_back(Pending { txn, delivery });
                    }
                    // Nothing to take now: with batches in flight, take again after the
                    // oldest is acknowledged; with none, the sink is done.
                    None if pipeline.is_empty() => drained = true,
                    None => break,
                }
            }
            let Some(oldest) = pipeline.pop_front() else {
                break;
            };
            match oldest.delivery.acknowledged().await {
                Ok(()) => {
                    let n = oldest.txn.len() as u64;
                    oldest.txn.commit().await?;
                    sent.inc(n);
                    backoff.reset();
                    if std::mem::take(&mut failing) {
                        info!(message = "kafka delivery resumed", topic = %self.config.topic);
                    }
                }
                Err(e) => {
                    errors.inc(1);
                    failing = true;
                    // Every later batch is rolled back too, after its records settled (none
                    // left in flight), newest first: all come back in the channel's order.
                    let mut rolled_back = vec![oldest.txn];
                    for later in std::mem::take(&mut pipeline) {
                        let _ = later.delivery.acknowledged().await;
                        rolled_back.push(later.txn);
                    }
                    let batches = rolled_back.len();
                    let events: usize = rolled_back.iter().map(TakeTransaction::len).sum();
                    while let Some(txn) = rolled_back.pop() {
                        txn.rollback();
                    }
                    let delay = backoff.next_delay();
                    warn!(message = "kafka delivery failed; batches rolled back", topic = %self.config.topic, batches, events, error = %e, retry_in = ?delay);
                    // An idempotent producer may have stopped with a fatal error (its
                    // sequence numbers cannot continue): a new one starts clean.
                    if producer.client().fatal_error().is_some() {
                        producer = self.config.producer()?;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cx.shutdown.cancelled() => {}
                    }
                    drained = false;
                }
            }
        }
        // Everything taken was acknowledged already; nothing is left queued.
        let _ = producer.flush(Duration::from_secs(5));
        Ok(())
    }
}
