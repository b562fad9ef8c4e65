//! The `kafka` sink: drains a channel into a Kafka topic. Each channel batch is produced
//! record by record and its take commits only once the broker acknowledged every record
//! (`acks = all`, idempotent producer by default); a failed record rolls the whole batch
//! back and it is sent again after a backoff, so an outage loses nothing (records already
//! acknowledged in a failed batch are sent twice: at-least-once).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::Deserialize;
use tracing::{info, warn};
use weir_core::component::Backoff;
use weir_core::metrics::MetricName;
use weir_core::{ComponentError, ConfigDuration, Event, Sink, SinkContext};

use crate::client::{check_common, client_config};

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
    fn codec(self) -> &'static str {
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

    fn producer(&self) -> Result<FutureProducer, KafkaError> {
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
        client_config(&self.brokers, &defaults, &self.properties).create()
    }
}

pub struct KafkaSink {
    config: KafkaSinkConfig,
}

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("record not acknowledged: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the producer dropped a record")]
    Canceled,
}

impl KafkaSink {
    fn record<'a>(&'a self, event: &'a Event) -> FutureRecord<'a, [u8], [u8]> {
        let mut record = FutureRecord::to(&self.config.topic).payload(&event.body[..]);
        if let Some(key) = event.headers.get(&self.config.key_header) {
            record = record.key(key.as_bytes());
        }
        if self.config.forward_headers && !event.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(event.headers.len());
            for (key, value) in event.headers.iter() {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            record = record.headers(headers);
        }
        record
    }

    /// Produces every event and waits for every acknowledgement; the first failure fails
    /// the batch (the remaining records are still awaited, so none is left in flight).
    async fn deliver(
        &self,
        producer: &FutureProducer,
        events: &[Event],
    ) -> Result<(), DeliveryError> {
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(events.len());
        let mut failure = None;
        for event in events {
            let mut record = self.record(event);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full of other batches' records: let it drain.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        failure = Some(DeliveryError::Kafka(e));
                        break;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        for delivery in pending {
            let outcome = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => DeliveryError::Kafka(e),
                Err(_) => DeliveryError::Canceled,
            };
            failure.get_or_insert(outcome);
        }
        failure.map_or(Ok(()), Err)
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
        while let Some(txn) = cx.next_batch(self.config.batch_size).await? {
            match self.deliver(&producer, txn.events()).await {
                Ok(()) => {
                    let n = txn.len() as u64;
                    txn.commit().await?;
                    sent.inc(n);
                    backoff.reset();
                    if std::mem::take(&mut failing) {
                        info!(message = "kafka delivery resumed", topic = %self.config.topic);
                    }
                }
                Err(e) => {
                    errors.inc(1);
                    failing = true;
                    let n = txn.len();
                    drop(txn); // rolled back: delivered again, first, so order is kept
                    let delay = backoff.next_delay();
                    warn!(message = "kafka delivery failed; batch rolled back", topic = %self.config.topic, events = n, error = %e, retry_in = ?delay);
                    // An idempotent producer may have stopped with a fatal error (its
                    // sequence numbers cannot continue): a new one starts clean.
                    if producer.client().fatal_error().is_some() {
                        producer = self.config.producer()?;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cx.shutdown.cancelled() => {}
                    }
                }
            }
        }
        // Everything taken was acknowledged already; nothing is left queued.
        let _ = producer.flush(Duration::from_secs(5));
        Ok(())
    }
}
