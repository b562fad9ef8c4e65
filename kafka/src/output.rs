//! The `kafka` output of streaming jobs: `output = { type = "kafka", brokers, topic,
//! transactional_id, … }` writes each batch's results as records of `topic`.
//!
//! # Records
//! * key: the result's key — the key of a `count_by_value` / `reduce_by_key` pair — and no
//!   key for plain values;
//! * value: the count, number or text as UTF-8 text (`3`, `2.5`, `GET`);
//! * header `batch_time`: the batch time, ms since the Unix epoch, as text.
//!
//! From the Rust API ([`weir_streaming::Stream::transactional`]), an event's `key` header is
//! the key, its body the value, its other headers become record headers.
//!
//! # Exactly-once: `transactional_id`
//! With a `transactional_id` every batch is one Kafka transaction: `begin_transaction`, the
//! records, `send_offsets_to_transaction` with the end offsets of the batch's Kafka direct
//! input ranges (committed to the input's consumer group, its `group.id`),
//! `commit_transaction`. A `read_committed` reader sees a batch's records all at once or not
//! at all; the job checkpoints after its outputs as usual. After a crash:
//!
//! * `init_transactions` with the same id, started as soon as the output is built, aborts the
//!   transaction the dead process left open and fences that producer off.
//! * The job replays its journaled, uncheckpointed batches with the same ranges and batch
//!   times. A replayed batch whose transaction had committed — the crash hit between
//!   `commit_transaction` and the checkpoint — must not be written again. Each transaction
//!   therefore also commits its batch time, as the metadata of the offsets
//!   (`weir-batch=<ms>`), and a batch at or before the group's committed batch time is done:
//!   not written, `Ok`. The replay still rebuilds the job's state from it.
//! * A batch that is written must start exactly where the group's committed offsets are
//!   (Spark's "verify that the stored offset equals fromOffset"). Committed offsets past a
//!   batch's start mean its records were already written by transactions the job's
//!   checkpoint does not know about (a restored older checkpoint, a group shared with
//!   another job): the output refuses with an error rather than write them twice. A job with
//!   no checkpoint starts from its group's committed offsets, so removing the checkpoint
//!   (`<data_dir>/jobs/<name>`) resumes exactly where the transactions left off. Committed
//!   offsets behind a batch's start (records skipped) are only logged: the input's
//!   `starting = "latest"` does that on purpose.
//!
//! The group's offsets are read from the broker once per partition after a start; after
//! that this output is their only writer (every other producer with its transactional id is
//! fenced, and the direct input leaves its commits to the output), so it tracks them itself.
//!
//! Exactly-once therefore needs a Kafka direct input with `group.id` (or in group mode,
//! below), and one transactional id per running job instance, kept across restarts.
//!
//! # Exactly-once in consumer-group mode
//! With a direct input in group mode ([`OffsetsGroup::Member`]) several instances share the
//! partitions, each with its own transactional id. The offsets go into each transaction
//! with the *member's* group metadata (member id and generation), so the broker refuses the
//! offsets — and the transaction aborts — of an instance whose partitions were given to
//! another member (KIP-447 fencing). The group's committed offsets are read again for every
//! batch (another instance may have committed a partition since), and the batch-time rule
//! above does not apply: group mode never replays a journaled batch, its partitions resume
//! from the group's committed offsets, which the transactions move together with the
//! records. A batch that starts behind the group's offsets (its partition was read and
//! committed by another member meanwhile) fails without writing, and the restarted job
//! resumes from the group. So each record's results commit exactly once across the
//! instances, through rebalances and crashes. A job whose inputs are channels has
//! no offsets to commit: its transactions keep each batch atomic for `read_committed`
//! readers, but a batch replayed after a crash is written again (at-least-once).
//!
//! # At-least-once: no `transactional_id`
//! An idempotent producer (`acks = all`, `enable.idempotence`); a batch counts as written
//! once every record is acknowledged. A replayed batch is written again.
//!
//! A failure (broker down, records refused, a transaction that does not commit) fails the
//! batch: the job stops, is restarted by the agent, and replays the batch; nothing is
//! skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::{info, warn};
use weir_core::{ConfigDuration, Event};
use weir_streaming::output::BoxError;
use weir_streaming::{InputPosition, OffsetRange, TransactionalFn};

use crate::client::{
    ack_producer, check_common, client_config, AckProducer, DeliveryError, InFlight, Record,
};
use crate::direct::GroupMember;
use crate::sink::Compression;

/// The record header holding the batch time.
pub const BATCH_TIME_HEADER: &str = "batch_time";
/// The event header (Rust API) whose value becomes the record key.
pub const KEY_HEADER: &str = "key";
/// Prefix of the committed offsets' metadata: `weir-batch=<batch time ms>`.
const BATCH_MARK: &str = "weir-batch=";

/// `output = { type = "kafka", … }` of a job.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaOutputConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub topic: String,
    /// Turns on exactly-once (one transaction per batch, see the module docs). Unique per
    /// running job instance and kept across its restarts: a restarted producer with the same
    /// id aborts what the old one left open.
    #[serde(default)]
    pub transactional_id: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    /// librdkafka's `linger.ms`.
    #[serde(default = "default_linger")]
    pub linger: ConfigDuration,
    /// How long one transaction step (init, offsets, commit) or the wait for a batch's
    /// acknowledgements may take before the batch fails.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Any librdkafka producer property, passed through (and overriding weir's defaults).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

const fn default_linger() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(5))
}
const fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaOutputError {
    #[error("kafka output to `{topic}`: {step}: {source}")]
    Kafka {
        topic: String,
        step: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("kafka output to `{topic}`: {source}")]
    Delivery {
        topic: String,
        #[source]
        source: DeliveryError,
    },
    #[error(
        "kafka output to `{topic}`: consumer group `{group}` has committed offset {committed} \
         for {input_topic}/{partition}, past the start {from} of batch {batch_time_ms}: those \
         records were written by transactions this job's checkpoint does not include; not \
         writing them twice (remove the job's checkpoint to resume from the group's offsets)"
    )]
    AheadOfCheckpoint {
        topic: String,
        group: String,
        input_topic: String,
        partition: i32,
        committed: i64,
        from: i64,
        batch_time_ms: i64,
    },
    #[error(
        "kafka output to `{topic}`: consumer group `{group}` has committed offset {committed} \
         for {input_topic}/{partition}, past the start {from} of batch {batch_time_ms}: \
         another member read and committed the partition since this instance was assigned \
         it; not writing the batch (the restarted job resumes from the group's offsets)"
    )]
    MovedOn {
        topic: String,
        group: String,
        input_topic: String,
        partition: i32,
        committed: i64,
        from: i64,
        batch_time_ms: i64,
    },
    #[error("kafka output to `{topic}`: the producer stopped: {reason}")]
    Fatal { topic: String, reason: String },
    #[error("kafka output to `{topic}`: {problem}")]
    Internal { topic: String, problem: String },
}

impl KafkaOutputConfig {
    /// Problems as `(key, message)`, keys relative to the output table.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = check_common(&self.brokers, "topic", std::slice::from_ref(&self.topic));
        if self.transactional_id.as_deref().is_some_and(str::is_empty) {
            problems.push(("transactional_id", "must not be empty".into()));
        }
        if self.timeout.0 < Duration::from_millis(1) {
            problems.push(("timeout", "must be at least 1ms".into()));
        }
        for key in ["transactional.id", "enable.idempotence"] {
            if self.properties.contains_key(key) {
                problems.push((
                    "properties",
                    format!("`{key}` cannot be set here: use `transactional_id`"),
                ));
            }
        }
        problems
    }

    /// The output function a job calls once per batch. `group` is the consumer group its
    /// transactions commit the Kafka inputs' offsets to (`None`: the job has no Kafka
    /// input). Starts `init_transactions` at once.
    pub fn build(&self, group: Option<OffsetsGroup>) -> KafkaResult<TransactionalFn> {
        let output = Arc::new(Mutex::new(KafkaOutput::new(self, group)?));
        Ok(Arc::new(move |time_ms, events, positions| {
            let output = output.clone();
            Box::pin(async move {
                output
                    .lock()
                    .await
                    .write(time_ms, events, positions)
                    .await
                    .map_err(BoxError::from)
            })
        }))
    }
}

/// The consumer group a transactional output commits its Kafka input's offsets to.
#[derive(Clone)]
pub enum OffsetsGroup {
    /// The direct input's `group.id`: this job is the group's only writer, so the output
    /// reads the group's offsets once per partition and then tracks them.
    Named(String),
    /// The direct input's member in consumer-group mode
    /// ([`crate::direct::KafkaDirectInput::group_member`]): see the module docs.
    Member(GroupMember),
}

impl OffsetsGroup {
    fn id(&self) -> String {
        match self {
            OffsetsGroup::Named(id) => id.clone(),
            OffsetsGroup::Member(member) => member.group().to_string(),
        }
    }
}

type Tp = (String, i32);

/// What a consumer group holds for one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Committed {
    offset: i64,
    /// The batch time a transaction of this output committed with the offset.
    batch_time_ms: Option<i64>,
}

struct KafkaOutput {
    topic: String,
    producer: Arc<AckProducer>,
    timeout: Duration,
    /// `Some` with a transactional id.
    tx: Option<Transactions>,
}

struct Transactions {
    /// `init_transactions`, run on its own thread from the start (a restarted job's input
    /// may be waiting for the offsets of the transaction it aborts); joined by the first write.
    init: Option<JoinHandle<KafkaResult<()>>>,
    group: Option<Group>,
}

struct Group {
    id: String,
    /// Not a member of the group: it reads the committed offsets, and supplies the group
    /// metadata for the transactions when there is no `member`.
    consumer: Arc<BaseConsumer>,
    /// Group mode: the input's member, whose metadata fences the transactions.
    member: Option<GroupMember>,
    /// Per partition seen so far, what the group holds (`None`: nothing committed).
    committed: BTreeMap<Tp, Option<Committed>>,
}

impl KafkaOutput {
    fn new(config: &KafkaOutputConfig, group: Option<OffsetsGroup>) -> KafkaResult<KafkaOutput> {
        let mut defaults = vec![
            ("acks", "all".to_string()),
            ("enable.idempotence", "true".to_string()),
            ("linger.ms", config.linger.0.as_millis().to_string()),
            ("compression.codec", config.compression.codec().to_string()),
        ];
        if let Some(id) = &config.transactional_id {
            defaults.push(("transactional.id", id.clone()));
        }
        let producer = Arc::new(ack_producer(&client_config(
            &config.brokers,
            &defaults,
            &config.properties,
        ))?);
        let timeout = config.timeout.0;
        let tx = match &config.transactional_id {
            None => None,
            Some(_) => {
                let group = match group {
                    None => None,
                    Some(group) => {
                        let id = group.id();
                        let consumer: BaseConsumer = client_config(
                            &config.brokers,
                            &[
                                ("group.id", id.to_string()),
                                ("enable.auto.commit", "false".into()),
                                // Committed offsets as of finished transactions only.
                                ("isolation.level", "read_committed".into()),
                            ],
                            &BTreeMap::new(),
                        )
                        .create()?;
                        Some(Group {
                            id,
                            consumer: Arc::new(consumer),
                            member: match group {
                                OffsetsGroup::Member(m) => Some(m),
                                OffsetsGroup::Named(_) => None,
                            },
                            committed: BTreeMap::new(),
                        })
                    }
                };
                let p = producer.clone();
                let init = std::thread::Builder::new()
                    .name("kafka-output-init".into())
                    .spawn(move || p.init_transactions(timeout))
                    .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
                Some(Transactions {
                    init: Some(init),
                    group,
                })
            }
        };
        Ok(KafkaOutput {
            topic: config.topic.clone(),
            producer,
            timeout,
            tx,
        })
    }

    fn kafka_err(&self, step: &'static str) -> impl FnOnce(KafkaError) -> KafkaOutputError {
        let topic = self.topic.clone();
        move |source| KafkaOutputError::Kafka {
            topic,
            step,
            source,
        }
    }

    fn internal(&self, problem: impl Into<String>) -> KafkaOutputError {
        KafkaOutputError::Internal {
            topic: self.topic.clone(),
            problem: problem.into(),
        }
    }

    async fn write(
        &mut self,
        time_ms: i64,
        events: Vec<Event>,
        positions: Vec<InputPosition>,
    ) -> Result<(), KafkaOutputError> {
        let ranges: Vec<OffsetRange> = positions
            .into_iter()
            .flat_map(|p| match p {
                InputPosition::Kafka { ranges } => ranges,
                InputPosition::Channel { .. } => Vec::new(),
            })
            .collect();
        if self.tx.is_none() {
            return self.produce(time_ms, &events).await;
        }
        if events.is_empty() && ranges.iter().all(|r| r.count() == 0) {
            // Nothing to write and no offset moved: a replay of it has nothing to repeat.
            return Ok(());
        }
        self.initialized().await?;
        if self.group().is_some() && !ranges.is_empty() {
            if let Some(group) = self.group_mut().filter(|g| g.member.is_some()) {
                // Another instance may have committed these partitions since.
                group.committed.clear();
            }
            self.load_committed(&ranges).await?;
            let group = self.group().ok_or_else(|| self.internal("no group"))?;
            let replays = group.member.is_none();
            match decide(time_ms, &ranges, &group.committed, replays) {
                Decision::Done { committed_batch_ms } => {
                    info!(message = "kafka output: batch committed before a restart; not written again", topic = %self.topic, batch_time_ms = time_ms, committed_batch_ms);
                    return Ok(());
                }
                Decision::Ahead { range, committed } if !replays => {
                    return Err(KafkaOutputError::MovedOn {
                        topic: self.topic.clone(),
                        group: group.id.clone(),
                        input_topic: range.topic,
                        partition: range.partition,
                        committed,
                        from: range.from,
                        batch_time_ms: time_ms,
                    });
                }
                Decision::Ahead { range, committed } => {
                    return Err(KafkaOutputError::AheadOfCheckpoint {
                        topic: self.topic.clone(),
                        group: group.id.clone(),
                        input_topic: range.topic,
                        partition: range.partition,
                        committed,
                        from: range.from,
                        batch_time_ms: time_ms,
                    });
                }
                Decision::Write { behind } => {
                    for (range, committed) in behind {
                        warn!(message = "kafka output: the batch starts past the group's committed offset; records in between were not read by this job", topic = %self.topic, group = %group.id, input_topic = %range.topic, partition = range.partition, committed, from = range.from);
                    }
                }
            }
        }
        if let Err(e) = self.transaction(time_ms, &events, &ranges).await {
            // Releases the records' hold on `read_committed` readers now rather than when the
            // restarted job's producer aborts the transaction.
            let p = self.producer.clone();
            let timeout = self.timeout;
            let aborted = tokio::task::spawn_blocking(move || p.abort_transaction(timeout)).await;
            if let Ok(Err(abort)) = aborted {
                warn!(message = "kafka output: abort failed", topic = %self.topic, error = %abort);
            }
            return Err(e);
        }
        if let Some(group) = self.group_mut() {
            for r in &ranges {
                group.committed.insert(
                    (r.topic.clone(), r.partition),
                    Some(Committed {
                        offset: r.until,
                        batch_time_ms: Some(time_ms),
                    }),
                );
            }
        }
        Ok(())
    }

    fn group(&self) -> Option<&Group> {
        self.tx.as_ref().and_then(|t| t.group.as_ref())
    }

    fn group_mut(&mut self) -> Option<&mut Group> {
        self.tx.as_mut().and_then(|t| t.group.as_mut())
    }

    /// Waits for `init_transactions` (once).
    async fn initialized(&mut self) -> Result<(), KafkaOutputError> {
        let Some(init) = self.tx.as_mut().and_then(|t| t.init.take()) else {
            return Ok(());
        };
        let joined = tokio::task::spawn_blocking(move || init.join())
            .await
            .map_err(|e| self.internal(e.to_string()))?;
        match joined {
            Ok(result) => result.map_err(self.kafka_err("init_transactions")),
            Err(_) => Err(self.internal("init_transactions panicked")),
        }
    }

    /// Reads the group's committed offsets (and batch times) of the partitions not seen yet.
    async fn load_committed(&mut self, ranges: &[OffsetRange]) -> Result<(), KafkaOutputError> {
        let timeout = self.timeout;
        let err = self.kafka_err("reading the group's committed offsets");
        let topic = self.topic.clone();
        let internal = move |problem: String| KafkaOutputError::Internal { topic, problem };
        let Some(group) = self.group_mut() else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        for r in ranges {
            if !group
                .committed
                .contains_key(&(r.topic.clone(), r.partition))
            {
                tpl.add_partition(&r.topic, r.partition);
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = group.consumer.clone();
        let read = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(tpl, timeout).map(|list| {
                list.elements()
                    .iter()
                    .map(|e| {
                        let committed = match e.offset() {
                            Offset::Offset(offset) => Some(Committed {
                                offset,
                                batch_time_ms: e
                                    .metadata()
                                    .strip_prefix(BATCH_MARK)
                                    .and_then(|t| t.parse().ok()),
                            }),
                            _ => None,
                        };
                        ((e.topic().to_string(), e.partition()), committed)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await;
        let read = match read {
            Ok(r) => r.map_err(err)?,
            Err(e) => return Err(internal(e.to_string())),
        };
        for (tp, committed) in read {
            info!(message = "kafka output: the group's committed offset", group = %group.id, input_topic = %tp.0, partition = tp.1, offset = committed.map(|c| c.offset), batch_time_ms = committed.and_then(|c| c.batch_time_ms));
            group.committed.insert(tp, committed);
        }
        Ok(())
    }

    /// One batch as one transaction: records, the input offsets, commit.
    async fn transaction(
        &self,
        time_ms: i64,
        events: &[Event],
        ranges: &[OffsetRange],
    ) -> Result<(), KafkaOutputError> {
        self.producer
            .begin_transaction()
            .map_err(self.kafka_err("begin_transaction"))?;
        self.produce(time_ms, events).await?;
        if let Some(group) = self.group().filter(|_| !ranges.is_empty()) {
            let mut offsets = TopicPartitionList::new();
            for r in ranges {
                let mut e = offsets.add_partition(&r.topic, r.partition);
                e.set_offset(Offset::Offset(r.until))
                    .map_err(self.kafka_err("offsets"))?;
                e.set_metadata(format!("{BATCH_MARK}{time_ms}"));
            }
            let (p, consumer, member, timeout) = (
                self.producer.clone(),
                group.consumer.clone(),
                group.member.clone(),
                self.timeout,
            );
            let sent = tokio::task::spawn_blocking(move || {
                let meta = match &member {
                    Some(member) => member.group_metadata(),
                    None => consumer.group_metadata(),
                };
                meta.map(|meta| p.send_offsets_to_transaction(&offsets, &meta, timeout))
            })
            .await
            .map_err(|e| self.internal(e.to_string()))?;
            match sent {
                Some(result) => result.map_err(self.kafka_err("send_offsets_to_transaction"))?,
                None => return Err(self.internal("librdkafka has no group metadata")),
            }
        }
        let (p, timeout) = (self.producer.clone(), self.timeout);
        tokio::task::spawn_blocking(move || p.commit_transaction(timeout))
            .await
            .map_err(|e| self.internal(e.to_string()))?
            .map_err(self.kafka_err("commit_transaction"))
    }

    /// Hands every record to the producer and waits for all acknowledgements.
    async fn produce(&self, time_ms: i64, events: &[Event]) -> Result<(), KafkaOutputError> {
        if events.is_empty() {
            return Ok(());
        }
        let time = time_ms.to_string();
        let batch = InFlight::new();
        let records: Vec<Record<'_>> = events
            .iter()
            .map(|e| record(&batch, &self.topic, &time, e))
            .collect();
        let delivery = batch.send(&self.producer, records).await;
        match tokio::time::timeout(self.timeout, delivery.acknowledged()).await {
            Ok(Ok(())) => Ok(()),
            // A fatal error (e.g. fenced by a newer producer with the transactional id)
            // purges the records: it is the cause worth reporting.
            Ok(Err(source)) => Err(match self.producer.client().fatal_error() {
                Some((_, reason)) => KafkaOutputError::Fatal {
                    topic: self.topic.clone(),
                    reason,
                },
                None => KafkaOutputError::Delivery {
                    topic: self.topic.clone(),
                    source,
                },
            }),
            Err(_) => Err(self.internal(format!(
                "records not acknowledged within {:?}",
                self.timeout
            ))),
        }
    }
}

/// An element as a record: the `key` header as key, the body as value, the batch time and
/// the other headers as headers.
fn record<'a>(batch: &InFlight, topic: &'a str, time: &str, e: &'a Event) -> Record<'a> {
    let mut headers = OwnedHeaders::new_with_capacity(e.headers.len() + 1).insert(Header {
        key: BATCH_TIME_HEADER,
        value: Some(time.as_bytes()),
    });
    let mut record = batch.record(topic).payload(&e.body[..]);
    for (key, value) in e.headers.iter() {
        if key == KEY_HEADER {
            record = record.key(value.as_bytes());
        } else {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
    }
    record.headers(headers)
}

/// What to do with a batch, given what its group holds.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// A transaction committed this batch (or a later one) before: skip it.
    Done { committed_batch_ms: i64 },
    /// The group is past the batch's start without having committed it: refuse.
    Ahead { range: OffsetRange, committed: i64 },
    /// Write it; the group is behind these ranges' starts (records never read by the job).
    Write { behind: Vec<(OffsetRange, i64)> },
}

/// `replays`: the input replays journaled batches after a crash (not in group mode, whose
/// partitions resume from the group's offsets), so a batch the group holds as committed is a
/// replay of one already written.
fn decide(
    time_ms: i64,
    ranges: &[OffsetRange],
    committed: &BTreeMap<Tp, Option<Committed>>,
    replays: bool,
) -> Decision {
    let of = |r: &OffsetRange| {
        committed
            .get(&(r.topic.clone(), r.partition))
            .copied()
            .flatten()
    };
    // Transactions commit every range of a batch together, so any partition's batch time
    // tells; the newest one is the group's.
    let committed_batch_ms = ranges
        .iter()
        .filter_map(|r| of(r).and_then(|c| c.batch_time_ms))
        .max();
    if let Some(t) = committed_batch_ms.filter(|&t| replays && t >= time_ms) {
        return Decision::Done {
            committed_batch_ms: t,
        };
    }
    let mut behind = Vec::new();
    for r in ranges {
        match of(r) {
            Some(c) if c.offset > r.from => {
                return Decision::Ahead {
                    range: r.clone(),
                    committed: c.offset,
                }
            }
            Some(c) if c.offset < r.from => behind.push((r.clone(), c.offset)),
            _ => {}
        }
    }
    Decision::Write { behind }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(p: i32, from: i64, until: i64) -> OffsetRange {
        OffsetRange {
            topic: "in".into(),
            partition: p,
            from,
            until,
        }
    }

    fn held(v: &[(i32, i64, Option<i64>)]) -> BTreeMap<Tp, Option<Committed>> {
        v.iter()
            .map(|&(p, offset, batch_time_ms)| {
                (
                    ("in".to_string(), p),
                    Some(Committed {
                        offset,
                        batch_time_ms,
                    }),
                )
            })
            .collect()
    }

    #[test]
    fn a_batch_at_or_before_the_committed_batch_time_is_done() {
        let committed = held(&[(0, 50, Some(2000)), (1, 7, Some(2000))]);
        // The replay of the committed batch, and of an older one journaled before it.
        for (t, ranges) in [
            (2000, vec![range(0, 40, 50), range(1, 7, 7)]),
            (1000, vec![range(0, 30, 40), range(1, 5, 7)]),
        ] {
            assert_eq!(
                decide(t, &ranges, &committed, true),
                Decision::Done {
                    committed_batch_ms: 2000
                }
            );
        }
    }

    #[test]
    fn the_next_batch_starts_where_the_group_is() {
        let committed = held(&[(0, 50, Some(2000)), (1, 7, Some(2000))]);
        let ranges = [range(0, 50, 60), range(1, 7, 7)];
        assert_eq!(
            decide(3000, &ranges, &committed, true),
            Decision::Write { behind: vec![] }
        );
        // A partition the group has nothing for, and a group with nothing at all.
        let ranges = [range(0, 50, 60), range(2, 0, 4)];
        assert_eq!(
            decide(3000, &ranges, &committed, true),
            Decision::Write { behind: vec![] }
        );
        assert_eq!(
            decide(3000, &ranges, &BTreeMap::new(), true),
            Decision::Write { behind: vec![] }
        );
    }

    #[test]
    fn in_group_mode_an_earlier_batch_time_of_another_member_is_no_replay() {
        // Another instance committed partition 0 at batch time 3000 (clocks differ, or a
        // batch later on the same grid); this member now owns it from offset 50.
        let committed = held(&[(0, 50, Some(3000))]);
        let ranges = [range(0, 50, 60)];
        assert_eq!(
            decide(2700, &ranges, &committed, false),
            Decision::Write { behind: vec![] }
        );
        assert_eq!(
            decide(2700, &[range(0, 40, 60)], &committed, false),
            Decision::Ahead {
                range: range(0, 40, 60),
                committed: 50
            }
        );
    }

    #[test]
    fn a_group_past_the_batch_start_is_refused_and_one_behind_reported() {
        // Offsets committed past this batch's start by a transaction with an older batch
        // time, or by someone else (no batch time): written before, not by this batch.
        for batch_time in [Some(1000), None] {
            let committed = held(&[(0, 55, batch_time)]);
            assert_eq!(
                decide(3000, &[range(0, 50, 60)], &committed, true),
                Decision::Ahead {
                    range: range(0, 50, 60),
                    committed: 55
                }
            );
        }
        let committed = held(&[(0, 45, Some(1000))]);
        assert_eq!(
            decide(3000, &[range(0, 50, 60)], &committed, true),
            Decision::Write {
                behind: vec![(range(0, 50, 60), 45)]
            }
        );
    }
}
