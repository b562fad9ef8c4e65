//! The `kafka` channel (Flume's KafkaChannel): the queue is a Kafka topic, so what a source
//! put is replicated by Kafka before the source is answered.
//!
//! * A put produces every event (`acks = all`, idempotent producer) and returns `Ok` only once
//!   every record is acknowledged. A failed put may have stored part of its batch: the source
//!   retries it, so those events are there twice (at-least-once, as in Flume).
//! * Events are records in Flume's `parseAsFlumeEvent` encoding by default (the Avro
//!   `AvroFlumeEvent` datum: headers and body, no container), so Flume's KafkaChannel reads
//!   them and weir reads Flume's; with `parse_as_flume_event = false` the value is the body and
//!   the headers are Kafka record headers. The record key is the `key` header (as in Flume).
//! * Takes read as a member of a consumer group. Committing a take commits the group's offsets
//!   synchronously up to the first offset not yet committed by any take of that partition
//!   (commits of concurrent takes land in offset order, never past an open or failed take).
//!   A rollback hands the same events out again, first, from memory; a restart re-reads from
//!   the committed offsets, so uncommitted takes come back and committed ones do not.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::Producer;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{info, warn};
use weir_avro_rpc::datum::{encode_event, Reader};
use weir_core::channel::wait_readable;
use weir_core::{
    Channel, ChannelStats, CommitError, ConfigDuration, Event, PutError, TakeError, TakeHandle,
    TakeTransaction,
};

use crate::client::{
    ack_producer, check_common, client_config, flume_headers, kafka_headers, AckProducer, InFlight,
    Record,
};
use crate::sink::Compression;

/// `[channels.NAME] type = "kafka"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaChannelConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic that is the queue.
    pub topic: String,
    /// The consumer group whose committed offsets mark what was taken for good (Flume's
    /// `kafka.consumer.group.id`); `weir-<channel name>` when unset.
    #[serde(default)]
    pub group: Option<String>,
    /// Records are Avro `AvroFlumeEvent` datums (Flume's `parseAsFlumeEvent`, default there
    /// too); `false`: the value is the body and headers are Kafka record headers.
    #[serde(default = "default_true")]
    pub parse_as_flume_event: bool,
    /// Most events per put; larger puts are refused, larger takes are capped.
    #[serde(default = "default_transaction_capacity")]
    pub transaction_capacity: usize,
    /// librdkafka's `linger.ms` for puts.
    #[serde(default = "default_linger")]
    pub linger: ConfigDuration,
    #[serde(default)]
    pub compression: Compression,
    /// librdkafka's `message.timeout.ms`: a put whose records are not all acknowledged by
    /// then fails (and is retried by its source).
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: ConfigDuration,
    /// librdkafka properties for both the producer and the consumer (e.g. security).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka producer properties (Flume's `kafka.producer.*`), after `properties`.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka consumer properties (Flume's `kafka.consumer.*`), after `properties`.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
}

const fn default_true() -> bool {
    true
}
const fn default_transaction_capacity() -> usize {
    10_000
}
const fn default_linger() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(1))
}
const fn default_delivery_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

/// librdkafka's default `queue.buffering.max.messages`: one put must fit in its queue.
const MAX_TRANSACTION: usize = 100_000;
/// The record key, from the event header of this name (Flume's KafkaChannel uses `key`).
const KEY_HEADER: &str = "key";

impl KafkaChannelConfig {
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = check_common(&self.brokers, "topic", std::slice::from_ref(&self.topic));
        if self.transaction_capacity == 0 || self.transaction_capacity > MAX_TRANSACTION {
            problems.push((
                "transaction_capacity",
                format!("must be between 1 and {MAX_TRANSACTION}"),
            ));
        }
        if self.group.as_ref().is_some_and(String::is_empty) {
            problems.push(("group", "must not be empty".into()));
        }
        if self.delivery_timeout.0 < Duration::from_millis(1) {
            problems.push(("delivery_timeout", "must be at least 1ms".into()));
        }
        problems
    }

    fn properties(&self, specific: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut all = self.properties.clone();
        all.extend(specific.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
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
        ack_producer(&client_config(
            &self.brokers,
            &defaults,
            &self.properties(&self.producer_properties),
        ))
    }

    fn consumer(&self, group: &str, lag: Arc<AtomicU64>) -> Result<ChannelConsumer, KafkaError> {
        let defaults = [
            ("group.id", group.to_string()),
            ("enable.auto.commit", "false".to_string()),
            // A group that never committed must see what was put before it joined.
            ("auto.offset.reset", "earliest".to_string()),
            // The source of the channel's fill (consumer lag).
            ("statistics.interval.ms", "1000".to_string()),
            // A topic the first put creates, or partitions added later, are found this soon
            // (librdkafka's default is 5 minutes).
            ("topic.metadata.refresh.interval.ms", "10000".to_string()),
        ];
        let context = LagContext {
            topic: self.topic.clone(),
            lag,
        };
        client_config(
            &self.brokers,
            &defaults,
            &self.properties(&self.consumer_properties),
        )
        .create_with_context(context)
    }
}

type ChannelConsumer = StreamConsumer<LagContext>;

/// Keeps the group's lag on the topic (last stable offset minus committed offset, summed over
/// the partitions this member has; from the earliest offset where nothing is committed yet)
/// from librdkafka's periodic statistics.
struct LagContext {
    topic: String,
    lag: Arc<AtomicU64>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.topic) {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired)
                .map(|p| {
                    if p.committed_offset >= 0 {
                        p.consumer_lag.max(0)
                    } else {
                        // Nothing committed on this partition yet: librdkafka reports the lag
                        // as unknown, but the group starts at the earliest offset, so all of
                        // it is still to be taken.
                        (p.ls_offset.max(0) - p.lo_offset.max(0)).max(0)
                    }
                })
                .sum();
            self.lag.store(lag as u64, Ordering::Relaxed);
        }
    }
}

impl ConsumerContext for LagContext {}

/// Offsets of one partition that were read but whose take is not committed yet.
#[derive(Default)]
struct PartitionState {
    unfinished: BTreeSet<i64>,
    /// One past the last offset read.
    next: i64,
    /// The last offset committed to the group by this channel.
    committed: i64,
}

impl PartitionState {
    /// Where the group may resume without skipping an event not yet taken for good.
    fn committable(&self) -> i64 {
        self.unfinished.first().copied().unwrap_or(self.next)
    }
}

/// An event and where it came from: (partition, offset).
type Positioned = ((i32, i64), Event);

#[derive(Default)]
struct State {
    /// Rolled-back events, handed out again before anything newer, in offset order.
    redeliver: BTreeMap<(i32, i64), Event>,
    /// Read ahead while waiting for events, not yet taken.
    read_ahead: VecDeque<Positioned>,
    partitions: HashMap<i32, PartitionState>,
}

impl State {
    fn read(&mut self, (partition, offset): (i32, i64)) {
        let p = self.partitions.entry(partition).or_default();
        p.unfinished.insert(offset);
        p.next = offset + 1;
    }
}

struct Inner {
    name: String,
    config: KafkaChannelConfig,
    /// Replaced when an idempotent producer hits a fatal error (it cannot continue).
    producer: Mutex<Arc<AckProducer>>,
    consumer: Arc<ChannelConsumer>,
    state: Mutex<State>,
    readable: Notify,
    /// Offset commits go out one at a time, so they reach Kafka in increasing order.
    commit_lock: tokio::sync::Mutex<()>,
    lag: Arc<AtomicU64>,
    closed: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is updated in single steps; a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn producer(&self) -> Arc<AckProducer> {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record<'a>(&'a self, batch: &InFlight, event: &'a Event, value: &'a [u8]) -> Record<'a> {
        let mut record = batch.record(&self.config.topic).payload(value);
        if let Some(key) = event.headers.get(KEY_HEADER) {
            record = record.key(key.as_bytes());
        }
        if !self.config.parse_as_flume_event && !event.headers.is_empty() {
            record = record.headers(kafka_headers(&event.headers));
        }
        record
    }

    fn event(&self, m: &BorrowedMessage<'_>) -> Positioned {
        let payload = m.payload().unwrap_or_default();
        let event = if self.config.parse_as_flume_event {
            let mut reader = Reader::new(Bytes::copy_from_slice(payload));
            match reader
                .read_event()
                .and_then(|e| reader.finish().map(|()| e))
            {
                Ok(event) => event,
                Err(e) => {
                    // Someone else wrote to the topic: keep the record rather than lose it.
                    warn!(message = "kafka channel record is not a Flume event; delivered as its raw value", channel = %self.name, partition = m.partition(), offset = m.offset(), error = %e);
                    Event::new(Bytes::copy_from_slice(payload))
                }
            }
        } else {
            Event {
                headers: flume_headers(m.headers()),
                body: Bytes::copy_from_slice(payload),
            }
        };
        ((m.partition(), m.offset()), event)
    }

    /// A record read now without waiting, if librdkafka has one fetched.
    async fn try_read(&self) -> Option<Positioned> {
        // `recv` is cancel-safe and polls librdkafka's queue before the zero timeout fires.
        match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
            Ok(Ok(m)) => Some(self.event(&m)),
            Ok(Err(e)) => {
                warn!(message = "kafka channel consume error", channel = %self.name, error = %e);
                None
            }
            Err(_) => None,
        }
    }
}

/// A channel whose queue is a Kafka topic; see the module documentation.
pub struct KafkaChannel {
    inner: Arc<Inner>,
}

impl KafkaChannel {
    /// Creates the producer and joins the consumer group; brokers are contacted in the
    /// background, so an unreachable cluster makes puts fail, not the opening.
    pub fn open(name: &str, config: KafkaChannelConfig) -> Result<Self, KafkaError> {
        let group = config
            .group
            .clone()
            .unwrap_or_else(|| format!("weir-{name}"));
        let lag = Arc::new(AtomicU64::new(0));
        let producer = config.producer()?;
        let consumer = config.consumer(&group, lag.clone())?;
        consumer.subscribe(&[&config.topic])?;
        info!(message = "kafka channel opened", channel = %name, topic = %config.topic, group = %group);
        Ok(KafkaChannel {
            inner: Arc::new(Inner {
                name: name.to_string(),
                config,
                producer: Mutex::new(Arc::new(producer)),
                consumer: Arc::new(consumer),
                state: Mutex::new(State::default()),
                readable: Notify::new(),
                commit_lock: tokio::sync::Mutex::new(()),
                lag,
                closed: AtomicBool::new(false),
            }),
        })
    }

    fn closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}

fn io_error(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(e)
}

#[async_trait]
impl Channel for KafkaChannel {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn put(&self, events: Vec<Event>) -> Result<(), PutError> {
        let inner = &self.inner;
        if events.is_empty() {
            return Ok(());
        }
        if self.closed() {
            return Err(PutError::Closed {
                channel: inner.name.clone(),
            });
        }
        if events.len() > inner.config.transaction_capacity {
            return Err(PutError::TooLarge {
                channel: inner.name.clone(),
                events: events.len(),
                limit: inner.config.transaction_capacity,
            });
        }
        let values: Vec<Bytes> = if inner.config.parse_as_flume_event {
            events.iter().map(encode_event).collect()
        } else {
            events.iter().map(|e| e.body.clone()).collect()
        };
        let producer = inner.producer();
        let batch = InFlight::new();
        let records = events
            .iter()
            .zip(&values)
            .map(|(e, v)| inner.record(&batch, e, v))
            .collect();
        let result = batch.send(&producer, records).await.acknowledged().await;
        if let Err(e) = result {
            if producer.client().fatal_error().is_some() {
                match inner.config.producer() {
                    Ok(fresh) => {
                        *inner.producer.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh)
                    }
                    Err(e) => {
                        warn!(message = "kafka channel cannot recreate its producer", channel = %inner.name, error = %e)
                    }
                }
            }
            return Err(PutError::Io {
                channel: inner.name.clone(),
                source: io_error(e),
            });
        }
        Ok(())
    }

    async fn take(&self, max: usize) -> Result<Option<TakeTransaction>, TakeError> {
        let inner = &self.inner;
        if self.closed() {
            return Err(TakeError::Closed {
                channel: inner.name.clone(),
            });
        }
        let max = max.clamp(1, inner.config.transaction_capacity);
        let mut taken: Vec<Positioned> = Vec::new();
        {
            let mut st = inner.lock();
            while taken.len() < max {
                let Some(e) = st.redeliver.pop_first() else {
                    break;
                };
                taken.push(e);
            }
            while taken.len() < max {
                let Some(e) = st.read_ahead.pop_front() else {
                    break;
                };
                taken.push(e);
            }
        }
        while taken.len() < max {
            let Some(e) = inner.try_read().await else {
                break;
            };
            inner.lock().read(e.0);
            taken.push(e);
        }
        if taken.is_empty() {
            return Ok(None);
        }
        let (positions, events): (Vec<_>, Vec<_>) = taken.into_iter().unzip();
        Ok(Some(TakeTransaction::new(
            events,
            Box::new(KafkaTake {
                inner: inner.clone(),
                positions,
            }),
        )))
    }

    async fn wait_for_events(&self) {
        let inner = &self.inner;
        let available = || {
            let st = inner.lock();
            !st.redeliver.is_empty() || !st.read_ahead.is_empty()
        };
        tokio::select! {
            _ = wait_readable(&inner.readable, available) => {}
            m = inner.consumer.recv() => match m {
                Ok(m) => {
                    let e = inner.event(&m);
                    let mut st = inner.lock();
                    st.read(e.0);
                    st.read_ahead.push_back(e);
                }
                Err(e) => {
                    warn!(message = "kafka channel consume error", channel = %inner.name, error = %e);
                    // Errors come once per broker state change; do not spin on them.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }

    /// Fill is the group's lag behind the topic's end (taken-but-uncommitted included),
    /// refreshed every second; 0 until the group has committed once. There is no capacity:
    /// the topic's retention bounds it.
    fn stats(&self) -> ChannelStats {
        ChannelStats {
            events: self.inner.lag.load(Ordering::Relaxed),
            ..ChannelStats::default()
        }
    }

    fn is_durable(&self) -> bool {
        true
    }

    async fn close(&self) {
        let inner = self.inner.clone();
        inner.closed.store(true, Ordering::Release);
        // Puts waited for their acknowledgements, so nothing is queued; open takes roll back
        // to memory and are re-read from the committed offsets by the next owner.
        let closing = tokio::task::spawn_blocking(move || {
            let _ = inner.producer().flush(Duration::from_secs(5));
            inner.consumer.unsubscribe();
        });
        let _ = closing.await;
        info!(message = "kafka channel closed", channel = %self.inner.name);
    }
}

struct KafkaTake {
    inner: Arc<Inner>,
    positions: Vec<(i32, i64)>,
}

#[async_trait]
impl TakeHandle for KafkaTake {
    async fn commit(self: Box<Self>, events: Vec<Event>) -> Result<(), CommitError> {
        let inner = self.inner.clone();
        let _one_at_a_time = inner.commit_lock.lock().await;
        let mut offsets = TopicPartitionList::new();
        let mut advanced = Vec::new();
        {
            let mut st = inner.lock();
            for (partition, offset) in &self.positions {
                if let Some(p) = st.partitions.get_mut(partition) {
                    p.unfinished.remove(offset);
                }
            }
            let touched: BTreeSet<i32> = self.positions.iter().map(|(p, _)| *p).collect();
            for partition in touched {
                let Some(p) = st.partitions.get(&partition) else {
                    continue;
                };
                let next = p.committable();
                if next > p.committed {
                    advanced.push((partition, next));
                }
            }
        }
        for (partition, next) in &advanced {
            if let Err(e) =
                offsets.add_partition_offset(&inner.config.topic, *partition, Offset::Offset(*next))
            {
                self.rollback(events);
                return Err(CommitError::Io {
                    channel: inner.name.clone(),
                    source: io_error(e),
                });
            }
        }
        if advanced.is_empty() {
            // An earlier take of these partitions is still open: its commit covers these.
            return Ok(());
        }
        let consumer = inner.consumer.clone();
        // A synchronous commit blocks its thread until the coordinator answers.
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync)).await;
        let failure = match committed {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(io_error(e)),
            Err(e) => Some(io_error(e)),
        };
        match failure {
            None => {
                let mut st = inner.lock();
                for (partition, next) in advanced {
                    if let Some(p) = st.partitions.get_mut(&partition) {
                        p.committed = p.committed.max(next);
                    }
                }
                Ok(())
            }
            Some(source) => {
                warn!(message = "kafka channel offset commit failed; the take is rolled back", channel = %inner.name, error = %source);
                self.rollback(events);
                Err(CommitError::Io {
                    channel: inner.name.clone(),
                    source,
                })
            }
        }
    }

    fn rollback(self: Box<Self>, events: Vec<Event>) {
        {
            let mut st = self.inner.lock();
            for ((partition, offset), event) in self.positions.into_iter().zip(events) {
                st.partitions
                    .entry(partition)
                    .or_default()
                    .unfinished
                    .insert(offset);
                st.redeliver.insert((partition, offset), event);
            }
        }
        self.inner.readable.notify_waiters();
    }
}
