//! Settings every Kafka component shares: the brokers, and librdkafka properties passed
//! through unchanged (like Flume's `kafka.producer.*` / `kafka.consumer.*`), applied after
//! weir's own defaults so they can override any of them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use weir_core::Headers;

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
            let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
            out.insert(h.key.to_owned(), value);
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("record not acknowledged: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the producer dropped a record")]
    Canceled,
}

/// Records handed to librdkafka and the acknowledgements still to come.
pub(crate) struct InFlight {
    pending: Vec<DeliveryFuture>,
    /// A record librdkafka refused outright; the records before it are still awaited.
    refused: Option<DeliveryError>,
}

impl InFlight {
    /// Hands every record to the producer in order; a full librdkafka queue is waited out
    /// (it drains as earlier records are acknowledged or time out), any other refusal stops.
    pub(crate) async fn send<'a>(
        producer: &FutureProducer,
        records: Vec<FutureRecord<'a, [u8], [u8]>>,
    ) -> InFlight {
        let mut pending = Vec::with_capacity(records.len());
        for mut record in records {
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        return InFlight {
                            pending,
                            refused: Some(DeliveryError::Kafka(e)),
                        };
                    }
                }
            }
        }
        InFlight {
            pending,
            refused: None,
        }
    }

    /// Waits for every acknowledgement, also after a failure (so nothing is left in flight
    /// when the caller retries); the first failure is the result.
    pub(crate) async fn acknowledged(self) -> Result<(), DeliveryError> {
        let mut failure = self.refused;
        for delivery in self.pending {
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
