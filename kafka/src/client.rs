//! Settings every Kafka component shares: the brokers, and librdkafka properties passed
//! through unchanged (like Flume's `kafka.producer.*` / `kafka.consumer.*`), applied after
//! weir's own defaults so they can override any of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::Notify;
use weir_core::{HeaderText, Headers};

/// Builds a librdkafka configuration: `bootstrap.servers`, then `defaults`, then the
/// user's `properties` (which win).
pub fn client_config(
    brokers: &[String],
    defaults: &[(&str, String)],
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers.join(","));
    for (key, value) in defaults {
        config.set(*key, value);
    }
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// Config-check problems common to every component: `(key, message)`.
pub fn check_common(
    brokers: &[String],
    topic_key: &'static str,
    topics: &[String],
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if brokers.is_empty() || brokers.iter().any(|b| b.trim().is_empty()) {
        problems.push((
            "brokers",
            "must list at least one host:port, none empty".into(),
        ));
    }
    if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
        problems.push((topic_key, "must name a topic".into()));
    }
    problems
}

/// Flume event headers as Kafka record headers (values as UTF-8 bytes).
pub(crate) fn kafka_headers(headers: &Headers) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers.iter() {
        out = out.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    out
}

/// Kafka record headers as Flume event headers (values as lossy UTF-8; no value: empty).
pub(crate) fn flume_headers(headers: Option<&BorrowedHeaders>) -> Headers {
    let mut out = Headers::new();
    if let Some(headers) = headers {
        for h in headers.iter() {
            out.insert(
                h.key,
                HeaderText::from_utf8_lossy(h.value.unwrap_or_default()),
            );
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("record not acknowledged: {0}")]
    Kafka(#[from] KafkaError),
}

/// The acknowledgements one batch still waits for. Counting per batch (instead of a future
/// per record) costs one atomic per record and one wake-up per batch.
pub struct Acks {
    /// Records not yet acknowledged, plus one while records are still being handed over.
    remaining: AtomicUsize,
    failure: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl Acks {
    fn settle(&self, n: usize) {
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            // notify_one keeps a permit if nobody waits yet.
            self.done.notify_one();
        }
    }
}

/// Routes each record's delivery report to its batch's [`Acks`].
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        if let Err((e, _)) = result {
            acks.failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| e.clone());
        }
        acks.settle(1);
    }
}

/// The producer of the sink and the channel: librdkafka's own thread serves its delivery
/// reports.
pub type AckProducer = ThreadedProducer<AckContext>;

pub fn ack_producer(config: &ClientConfig) -> Result<AckProducer, KafkaError> {
    config.create_with_context(AckContext)
}

/// A record of a batch, before it is handed to librdkafka.
pub type Record<'a> = BaseRecord<'a, [u8], [u8], Arc<Acks>>;

/// Records handed to librdkafka and the acknowledgements still to come.
pub(crate) struct InFlight {
    acks: Arc<Acks>,
}

impl InFlight {
    /// A new batch: build its records with [`InFlight::record`], then [`InFlight::send`].
    pub(crate) fn new() -> InFlight {
        InFlight {
            acks: Arc::new(Acks {
                remaining: AtomicUsize::new(1),
                failure: Mutex::new(None),
                done: Notify::new(),
            }),
        }
    }

    pub(crate) fn record<'a>(&self, topic: &'a str) -> Record<'a> {
        BaseRecord::with_opaque_to(topic, self.acks.clone())
    }

    /// Hands every record to the producer in order; a full librdkafka queue is waited out
    /// (it drains as earlier records are acknowledged or time out), any other refusal stops
    /// (the records before it are still awaited).
    pub(crate) async fn send(self, producer: &AckProducer, records: Vec<Record<'_>>) -> InFlight {
        for mut record in records {
            self.acks.remaining.fetch_add(1, Ordering::AcqRel);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        self.acks
                            .failure
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        self.acks.settle(1);
                        self.acks.settle(1);
                        return self;
                    }
                }
            }
        }
        self.acks.settle(1);
        self
    }

    /// Waits for every acknowledgement, also after a failure (so nothing is left in flight
    /// when the caller retries); the first failure is the result.
    pub(crate) async fn acknowledged(self) -> Result<(), DeliveryError> {
        if self.acks.remaining.load(Ordering::Acquire) > 0 {
            self.acks.done.notified().await;
        }
        let failure = self
            .acks
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        failure.map_or(Ok(()), |e| Err(DeliveryError::Kafka(e)))
    }
}
