//! The Kafka direct input of streaming jobs (Spark's `createDirectStream`, receiver-less):
//! `[jobs.NAME] input = { kafka = { brokers, topics, … } }`.
//!
//! Each batch is one offset range `[from, until)` per topic-partition: from where the last
//! batch ended to the partition's latest offset at cut time (the last stable offset under
//! the default `read_committed`), capped by `max_rate_per_partition` × the batch interval and
//! by the job's batch limit (backpressure): the job takes a batch chunk by chunk, each chunk
//! shared evenly between the partitions with records left, and the ranges end where the
//! batch stopped. The ranges are the batch's [`InputPosition::Kafka`]: the job journals them before any output
//! runs and records where the input resumes in its checkpoint, together with the state, once
//! the batch's outputs are written. After a crash [`JobInput::recut`] reads exactly the same
//! ranges again, so outputs that are idempotent per batch time (the `file` output) come out
//! exactly once.
//!
//! One librdkafka consumer is assigned every partition (no group membership; see group mode
//! below for sharing partitions between instances): librdkafka
//! fetches from every partition leader in parallel, one thread per broker. Each partition is
//! read from its own queue (a chunk takes exactly its share of each, whatever order the
//! broker's fetches come in), and the next chunk of a batch is read while the job processes
//! the current one; a chunk read ahead and not taken is given back. Topic metadata is
//! read at every cut, so partitions added while running (and topics created late) are picked
//! up, read from their first offset. A broker that is down makes the cut wait and retry,
//! logged; offsets are never skipped (`auto.offset.reset = error`: data deleted by retention
//! before it was read fails the job instead of being passed over).
//!
//! With `group.id` in `properties`, each batch's end offsets are also committed to that
//! consumer group once the batch is committed, for lag monitoring (or, with a transactional
//! `kafka` output, by the output in the batch's transaction); the job itself resumes
//! from its checkpoint. A job that has no checkpoint yet starts from the group's committed
//! offsets when there are any, else from `starting`.
//!
//! # Consumer-group mode (`group = "…"`, Spark's `ConsumerStrategies.Subscribe`)
//!
//! Several instances of a job share the topics' partitions through Kafka's group protocol.
//! A third client, the [`GroupMember`], subscribes to the topics and holds the instance's
//! partitions without reading them (they are paused when assigned); the reading client is
//! assigned only the owned partitions, as above. The member is polled only when a batch is
//! cut, so its rebalance callbacks — and with the eager protocol the group's whole rebalance,
//! which waits for every member to rejoin — happen between batches: a batch never loses a
//! partition halfway through. The job runs one batch at a time and commits each batch's end
//! offsets to the group synchronously once its outputs and checkpoint are written, so at a
//! revocation everything read from the partition is committed.
//!
//! The source of truth for offsets is the group's committed offsets (a local checkpoint
//! cannot be shared by instances): a partition newly owned starts at the group's offset; one
//! the group has no offset for starts at `starting` (its first offset when it appeared while
//! running), and that start is committed at once so that no later owner skips records before
//! it. The checkpoint's positions are not restored, and a journaled batch is not replayed
//! after a crash: the partitions may belong to another instance by then, which reads the
//! batch again from the group's offsets. So: exactly once across the instances' `file`
//! outputs through rebalances and clean stops; after a crash, the crashed instance's
//! uncommitted batch is read again (at-least-once). Each commit carries the epoch of the
//! assignment its ranges were read under and is dropped for partitions revoked since, so a
//! late commit never moves a new owner's offset back. For a transactional output,
//! [`GroupMember::group_metadata`] gives the member's generation, with which the broker
//! fences a member that lost its partitions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata,
    DefaultConsumerContext, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weir_core::{CommitError, Event};
use weir_streaming::{InputBatch, InputChunk, InputError, InputPosition, JobInput, OffsetRange};

use crate::client::{check_common, client_config};
use crate::source::{to_event, StartFrom};

/// Timeout of one metadata or offsets request; a failed one is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits without progress before it logs (and checks positions again).
const STALL_LOG: Duration = Duration::from_secs(5);
/// Attempts of one group-mode offset commit.
const COMMIT_ATTEMPTS: u32 = 3;
/// Group mode: most time a cut waits for a partition assignment while a rebalance is on.
const REBALANCE_WAIT_MAX: Duration = Duration::from_secs(5);

/// `input = { kafka = { … } }` of a job.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaDirectConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    /// Where partitions start when the job has no checkpoint and the group (if any) no
    /// committed offsets: `"earliest"` or `"latest"` (Spark's `auto.offset.reset`).
    #[serde(default)]
    pub starting: StartFrom,
    /// Most records per second read from one partition (Spark's
    /// `kafka.maxRatePerPartition`): a batch takes at most this × the batch interval.
    #[serde(default)]
    pub max_rate_per_partition: Option<u64>,
    /// Consumer-group mode: instances running the job with the same `group` share the
    /// topics' partitions through Kafka's group protocol, and the group's committed offsets
    /// (not the local checkpoint) are where each partition resumes. See the module docs.
    #[serde(default)]
    pub group: Option<String>,
    /// Any librdkafka consumer property, passed through (`group.id`, `isolation.level`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaDirectConfig {
    /// Problems as `(key, message)`, keys relative to the `kafka` table.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = check_common(&self.brokers, "topics", &self.topics);
        if self.max_rate_per_partition == Some(0) {
            problems.push(("max_rate_per_partition", "must be at least 1".into()));
        }
        if self.properties.contains_key("enable.auto.commit") {
            problems.push((
                "properties",
                "`enable.auto.commit` cannot be set: the job commits offsets itself".into(),
            ));
        }
        if let Some(group) = &self.group {
            if group.trim().is_empty() {
                problems.push(("group", "must name a consumer group".into()));
            }
            if self.properties.contains_key("group.id") {
                problems.push((
                    "properties",
                    "`group.id` cannot be set together with `group`, which names the group".into(),
                ));
            }
        }
        problems
    }

    /// The input of a job with batch interval `batch_interval`; `shutdown` interrupts a cut
    /// that waits for brokers.
    pub fn build(
        &self,
        batch_interval: Duration,
        shutdown: CancellationToken,
    ) -> KafkaResult<KafkaDirectInput> {
        let defaults = [
            // librdkafka assigns partitions only with a group id; nothing is committed to
            // this one unless `group.id` is given in `properties`.
            ("group.id", "weir-direct".to_string()),
            ("enable.auto.commit", "false".to_string()),
            ("enable.auto.offset.store", "false".to_string()),
            ("auto.offset.reset", "error".to_string()),
            ("enable.partition.eof", "true".to_string()),
            ("isolation.level", "read_committed".to_string()),
        ];
        let mut config = client_config(&self.brokers, &defaults, &self.properties);
        if let Some(group) = &self.group {
            config.set("group.id", group);
        }
        // Static membership (`group.instance.id`) belongs to the group member alone: the
        // reading clients never join the group.
        let member_config = config.clone();
        config.remove("group.instance.id");
        let consumer: BaseConsumer = config.create()?;
        // Offsets and metadata go through a second client: on the reading one they would
        // queue behind fetches the broker holds for up to `fetch.wait.max.ms`.
        let offsets: BaseConsumer = config.create()?;
        let per_batch_cap = self.max_rate_per_partition.map(|rate| {
            let cap = rate as u128 * batch_interval.as_millis() / 1000;
            (cap as u64).max(1)
        });
        let member = match &self.group {
            Some(group) => Some(GroupMember::join(&member_config, group, &self.topics)?),
            None => None,
        };
        Ok(KafkaDirectInput {
            name: format!("kafka:{}", self.topics.join(",")),
            topics: self.topics.clone(),
            starting: self.starting,
            per_batch_cap,
            group: self.properties.contains_key("group.id"),
            commit_to_group: true,
            member,
            owned: BTreeMap::new(),
            rebalance_wait: batch_interval.min(REBALANCE_WAIT_MAX),
            consumer: Arc::new(consumer),
            offsets: Arc::new(offsets),
            reader: Arc::new(Mutex::new(Reader::default())),
            next: BTreeMap::new(),
            positioned: false,
            cut: None,
            replay: None,
            ahead: None,
            stale_ahead: None,
            shutdown,
        })
    }
}

type Tp = (String, i32);

/// A job input reading offset ranges of Kafka partitions.
pub struct KafkaDirectInput {
    name: String,
    topics: Vec<String>,
    starting: StartFrom,
    per_batch_cap: Option<u64>,
    /// `group.id` in `properties`: batch ends are committed to it for monitoring.
    group: bool,
    /// Whether committed batches commit their offsets to the group (see
    /// [`KafkaDirectInput::leave_commits_to_output`]).
    commit_to_group: bool,
    /// Consumer-group mode: this instance's member of the group.
    member: Option<GroupMember>,
    /// Group mode: the partitions this instance owned at the last cut, with the epoch of
    /// their assignment.
    owned: BTreeMap<Tp, u64>,
    /// Group mode: how long a cut waits for an assignment during a rebalance.
    rebalance_wait: Duration,
    consumer: Arc<BaseConsumer>,
    offsets: Arc<BaseConsumer>,
    reader: Arc<Mutex<Reader>>,
    /// Where the next batch starts, per partition (Spark's `currentOffsets`): advanced as
    /// soon as a batch is cut, since the next batch follows it whether or not it has run.
    next: BTreeMap<Tp, i64>,
    /// True once `next` came from a checkpoint or a cut; partitions unknown after that are
    /// new ones, read from their beginning.
    positioned: bool,
    /// The batch being cut, between the first `take_chunk` and `end_cut`.
    cut: Option<Cut>,
    /// The ranges of a journaled batch `recut` set up for the next cut.
    replay: Option<Vec<OffsetRange>>,
    /// The next chunk of the batch being cut, read while the job processes the last one.
    ahead: Option<ReadAhead>,
    /// A chunk read ahead that its batch did not take, given back at the next cut.
    stale_ahead: Option<ReadAhead>,
    shutdown: CancellationToken,
}

/// A chunk being read in the background.
struct ReadAhead {
    sub: Vec<OffsetRange>,
    read: tokio::task::JoinHandle<Result<Taken, String>>,
}

/// The records of one read: per range (in order) `counts[i]` of them, with their offsets.
struct Taken {
    events: Vec<Event>,
    offsets: Vec<i64>,
    counts: Vec<usize>,
}

/// The reading consumer's assigned partitions, each read from its own queue, so that a
/// range takes exactly its records: from one shared queue, a broker that answers a fetch
/// with a whole partition (noida-db does) would make every chunk convert and hold the other
/// partitions' records first.
#[derive(Default)]
struct Reader {
    partitions: BTreeMap<Tp, PartitionReader>,
}

struct PartitionReader {
    queue: PartitionQueue<DefaultConsumerContext>,
    /// The offset the next record handed out must have.
    at: i64,
    /// Records already taken off a queue, in offset order: the one past a range's end (the
    /// rest of the range was transaction markers), and any the shared queue still held
    /// from before the split.
    carry: VecDeque<(i64, Event)>,
}

impl KafkaDirectInput {
    fn err(&self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> InputError {
        InputError::Source {
            input: self.name.clone(),
            source: source.into(),
        }
    }

    /// Runs a blocking librdkafka call off the runtime threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Arc<BaseConsumer>, &Mutex<Reader>, &CancellationToken) -> Result<T, String>
            + Send
            + 'static,
    ) -> Result<T, InputError> {
        let (consumer, reader, shutdown) = (
            self.consumer.clone(),
            self.reader.clone(),
            self.shutdown.clone(),
        );
        tokio::task::spawn_blocking(move || f(&consumer, &reader, &shutdown))
            .await
            .map_err(|e| self.err(e.to_string()))?
            .map_err(|e| self.err(e))
    }

    /// Reads `sub` now.
    async fn read(&self, sub: Vec<OffsetRange>) -> Result<Taken, InputError> {
        self.blocking(move |c, r, stop| read_ranges(c, r, &sub, stop))
            .await
    }

    /// Starts reading `sub` in the background.
    fn read_ahead(&self, sub: Vec<OffsetRange>) -> ReadAhead {
        let (consumer, reader, shutdown) = (
            self.consumer.clone(),
            self.reader.clone(),
            self.shutdown.clone(),
        );
        let ranges = sub.clone();
        let read = tokio::task::spawn_blocking(move || {
            read_ranges(&consumer, &reader, &ranges, &shutdown)
        });
        ReadAhead { sub, read }
    }

    async fn join(&self, ahead: ReadAhead) -> Result<(Vec<OffsetRange>, Taken), InputError> {
        let taken = ahead
            .read
            .await
            .map_err(|e| self.err(e.to_string()))?
            .map_err(|e| self.err(e))?;
        Ok((ahead.sub, taken))
    }

    /// Gives a chunk read ahead and not delivered back to its partitions, which hand its
    /// records out again, in order, before reading on.
    fn take_back(&self, sub: &[OffsetRange], taken: Taken) -> Result<(), InputError> {
        let mut reader =
            (self.reader.lock()).map_err(|_| self.err("the reader panicked earlier"))?;
        let mut records = taken.offsets.into_iter().zip(taken.events);
        for (r, &n) in sub.iter().zip(&taken.counts) {
            let back: Vec<(i64, Event)> = records.by_ref().take(n).collect();
            // A partition no longer assigned is re-assigned at its next read anyway.
            if let Some(part) = reader.partitions.get_mut(&(r.topic.clone(), r.partition)) {
                if r.count() > 0 {
                    for record in back.into_iter().rev() {
                        part.carry.push_front(record);
                    }
                    part.at = r.from;
                }
            }
        }
        Ok(())
    }

    /// At a new cut: gives back what the last batch read ahead and did not take.
    async fn take_back_read_ahead(&mut self) -> Result<(), InputError> {
        if let Some(ahead) = self.stale_ahead.take() {
            let (sub, taken) = self.join(ahead).await?;
            self.take_back(&sub, taken)?;
        }
        Ok(())
    }

    /// For a job whose transactional `kafka` output commits this input's offsets in each
    /// batch's transaction: the input's own commit, made later, after the checkpoint, could
    /// move the group back behind a newer transaction.
    pub fn leave_commits_to_output(&mut self) {
        self.commit_to_group = false;
    }

    /// The next batch's ranges: every partition from where the last batch ended to its
    /// latest offset, at most `max_rate_per_partition` × the batch interval.
    async fn plan(&mut self) -> Result<Vec<OffsetRange>, InputError> {
        if let Some(member) = self.member.clone() {
            return self.plan_group(member).await;
        }
        let topics = self.topics.clone();
        let known = self.next.clone();
        let (positioned, starting, group) = (self.positioned, self.starting, self.group);
        let offsets = self.offsets.clone();
        let ends = self
            .blocking(move |_, _, stop| {
                latest_offsets(&offsets, &topics, &known, positioned, starting, group, stop)
            })
            .await?;
        Ok(plan_ranges(&ends, self.per_batch_cap))
    }

    /// Group mode: serves the group's rebalances (only here, between batches, so that a batch
    /// never loses a partition halfway through), then plans ranges over the partitions this
    /// instance owns. A partition newly owned (or owned again after a rebalance) starts at the
    /// group's committed offset: whoever owned it before committed exactly what its outputs
    /// and checkpoint covered.
    async fn plan_group(&mut self, member: GroupMember) -> Result<Vec<OffsetRange>, InputError> {
        let wait = self.rebalance_wait;
        let serving = member.clone();
        let owned = self
            .blocking(move |_, _, stop| Ok(serving.serve(wait, stop)))
            .await?;
        let before = std::mem::take(&mut self.next);
        self.next = before
            .into_iter()
            .filter(|(tp, _)| owned.contains_key(tp) && owned.get(tp) == self.owned.get(tp))
            .collect();
        self.owned = owned.clone();
        let known = self.next.clone();
        let (positioned, starting) = (self.positioned, self.starting);
        let offsets = self.offsets.clone();
        let ends = self
            .blocking(move |_, _, stop| {
                group_offsets(
                    &offsets, &member, &owned, &known, positioned, starting, stop,
                )
            })
            .await?;
        Ok(plan_ranges(&ends, self.per_batch_cap))
    }

    /// Group mode: this instance's member of the consumer group (`None` otherwise). A
    /// transactional output commits the batch's offsets with its
    /// [`GroupMember::group_metadata`], which fences this member once it lost its partitions.
    pub fn group_member(&self) -> Option<GroupMember> {
        self.member.clone()
    }
}

#[async_trait]
impl JobInput for KafkaDirectInput {
    fn name(&self) -> &str {
        &self.name
    }

    async fn take_chunk(&mut self, max: usize) -> Result<Option<Box<dyn InputChunk>>, InputError> {
        if self.cut.is_none() {
            self.take_back_read_ahead().await?;
            let plan = match self.replay.take() {
                Some(ranges) => ranges,
                None => self.plan().await?,
            };
            let delivered = plan.iter().map(|r| r.from).collect();
            self.cut = Some(Cut { plan, delivered });
        }
        let Some(cut) = &self.cut else {
            return Ok(None);
        };
        let remaining: Vec<u64> = (cut.plan.iter().zip(&cut.delivered))
            .map(|(r, &d)| (r.until - d).max(0) as u64)
            .collect();
        if max == 0 || remaining.iter().all(|&n| n == 0) {
            return Ok(None);
        }
        let quota = share(max as u64, &remaining);
        let sub: Vec<OffsetRange> = (cut.plan.iter().zip(&cut.delivered).zip(&quota))
            .map(|((r, &d), &q)| OffsetRange {
                topic: r.topic.clone(),
                partition: r.partition,
                from: d,
                until: d + q as i64,
            })
            .collect();
        let taken = match self.ahead.take() {
            Some(ahead) if ahead.sub == sub => self.join(ahead).await?.1,
            Some(ahead) => {
                // Read for a chunk of another size: give it back, then read this one.
                let (ahead_sub, ahead_taken) = self.join(ahead).await?;
                self.take_back(&ahead_sub, ahead_taken)?;
                self.read(sub.clone()).await?
            }
            None => self.read(sub.clone()).await?,
        };
        let events = taken.events;
        let mut next_remaining = Vec::new();
        if let Some(cut) = &mut self.cut {
            for ((d, r), plan) in cut.delivered.iter_mut().zip(&sub).zip(&cut.plan) {
                *d = r.until;
                next_remaining.push((plan.until - *d).max(0) as u64);
            }
        }
        // The job asks for chunks of one size: the next one is read while it processes
        // this one.
        if next_remaining.iter().any(|&n| n > 0) {
            if let Some(cut) = &self.cut {
                let quota = share(max as u64, &next_remaining);
                let next: Vec<OffsetRange> = (cut.plan.iter().zip(&cut.delivered).zip(&quota))
                    .map(|((r, &d), &q)| OffsetRange {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        from: d,
                        until: d + q as i64,
                    })
                    .collect();
                self.ahead = Some(self.read_ahead(next));
            }
        }
        let ends: Vec<OffsetRange> = sub.iter().filter(|r| r.count() > 0).cloned().collect();
        let commit = match &self.member {
            // A transactional output commits the offsets in the batch's transaction.
            _ if !self.commit_to_group => None,
            Some(member) => Some(Committer::Group {
                member: member.clone(),
                ends: (ends.into_iter())
                    .map(|r| {
                        let epoch = self.owned.get(&(r.topic.clone(), r.partition)).copied();
                        (r, epoch.unwrap_or(0))
                    })
                    .collect(),
            }),
            None => self.group.then(|| Committer::Monitor {
                consumer: self.consumer.clone(),
                ends,
            }),
        };
        Ok(Some(Box::new(KafkaChunk {
            len: events.len(),
            events,
            commit,
        })))
    }

    fn end_cut(&mut self) -> InputPosition {
        // A chunk read ahead that the batch did not take: given back at the next cut.
        if let Some(ahead) = self.ahead.take() {
            self.stale_ahead = Some(ahead);
        }
        let ranges: Vec<OffsetRange> = match self.cut.take() {
            Some(cut) => (cut.plan.into_iter().zip(cut.delivered))
                .map(|(r, d)| OffsetRange { until: d, ..r })
                .collect(),
            // Nothing was taken (a batch limit of 0): an empty range where each partition is.
            None => (self.next.iter())
                .map(|((topic, partition), &at)| OffsetRange {
                    topic: topic.clone(),
                    partition: *partition,
                    from: at,
                    until: at,
                })
                .collect(),
        };
        for r in &ranges {
            self.next.insert((r.topic.clone(), r.partition), r.until);
        }
        // In group mode the input is positioned once it owned partitions: before that, a
        // partition the group has no offsets for starts at `starting`.
        self.positioned |= self.member.is_none() || !ranges.is_empty();
        InputPosition::Kafka { ranges }
    }

    /// Sets up the replay of a journaled batch: the next cut reads exactly its ranges. (The
    /// job does not ask about `covered` batches: [`JobInput::restore`] resumes after them.)
    async fn recut(&mut self, position: &InputPosition) -> Result<Option<InputBatch>, InputError> {
        let InputPosition::Kafka { ranges } = position else {
            return Err(self.err(format!(
                "the checkpoint holds a non-Kafka position for it: {position:?}"
            )));
        };
        if self.member.is_some() {
            // The partitions may belong to another instance by now, which resumes them from
            // the group's committed offsets: replaying here could count them twice.
            info!(message = "kafka direct input (group mode): a journaled batch is not replayed; its partitions resume from the group's committed offsets", input = %self.name, records = ranges.iter().map(OffsetRange::count).sum::<u64>());
            return Ok(None);
        }
        self.replay = Some(ranges.clone());
        self.cut = None;
        info!(message = "kafka direct input replays a journaled batch", input = %self.name, records = ranges.iter().map(OffsetRange::count).sum::<u64>());
        Ok(Some(InputBatch::new(
            self.name.clone(),
            Vec::new(),
            position.clone(),
        )))
    }

    /// Not in group mode, where the group's committed offsets are where partitions resume.
    fn restore(&mut self, position: &InputPosition) {
        if self.member.is_some() {
            return;
        }
        if let InputPosition::Kafka { ranges } = position {
            for r in ranges {
                self.next.insert((r.topic.clone(), r.partition), r.until);
            }
            self.positioned = true;
        }
    }
}

/// The batch being cut: its planned ranges and, per range, the next offset to deliver.
struct Cut {
    plan: Vec<OffsetRange>,
    delivered: Vec<i64>,
}

/// Shares `max` records between partitions with `remaining` records each, evenly, a
/// partition's unused share going to the others.
fn share(max: u64, remaining: &[u64]) -> Vec<u64> {
    let mut quota = vec![0u64; remaining.len()];
    let mut left = max;
    let mut open: Vec<usize> = (0..remaining.len()).filter(|&i| remaining[i] > 0).collect();
    while left > 0 && !open.is_empty() {
        let each = (left / open.len() as u64).max(1);
        for &i in &open {
            let give = each.min(remaining[i] - quota[i]).min(left);
            quota[i] += give;
            left -= give;
        }
        open.retain(|&i| quota[i] < remaining[i]);
    }
    quota
}

/// A chunk of a batch's records. Committing it commits its end offsets to the consumer
/// group: in group mode, where they are where the partitions resume; with `group.id` in
/// `properties`, for monitoring only (the checkpoint is what the job resumes from).
struct KafkaChunk {
    events: Vec<Event>,
    len: usize,
    commit: Option<Committer>,
}

enum Committer {
    Monitor {
        consumer: Arc<BaseConsumer>,
        ends: Vec<OffsetRange>,
    },
    /// Each range with the epoch of the assignment it was read under.
    Group {
        member: GroupMember,
        ends: Vec<(OffsetRange, u64)>,
    },
}

#[async_trait]
impl InputChunk for KafkaChunk {
    fn events(&self) -> &[Event] {
        &self.events
    }

    fn len(&self) -> usize {
        self.len
    }

    /// A replay reads the offsets again, so the records need not be kept.
    fn release(&mut self) -> bool {
        self.events = Vec::new();
        true
    }

    async fn commit(self: Box<Self>) -> Result<(), CommitError> {
        match self.commit {
            None => {}
            Some(Committer::Monitor { consumer, ends }) => {
                let tpl = offsets_list(ends.iter());
                if tpl.count() > 0 {
                    // Async: only lag monitoring reads these; a lost commit is overwritten
                    // next batch.
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                        warn!(message = "kafka direct input: group offset commit failed", error = %e);
                    }
                }
            }
            Some(Committer::Group { member, ends }) => {
                // Blocking: this commit is what the next owner of the partitions resumes from.
                let committed = tokio::task::spawn_blocking(move || member.commit(&ends)).await;
                if let Err(e) = committed {
                    warn!(message = "kafka direct input: group offset commit did not run", error = %e);
                }
            }
        }
        Ok(())
    }
}

/// `ranges`' ends as a commit list.
fn offsets_list<'a>(ranges: impl Iterator<Item = &'a OffsetRange>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for r in ranges {
        if let Err(e) = tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.until)) {
            warn!(message = "kafka direct input: bad offset to commit", error = %e);
        }
    }
    tpl
}

/// Group mode: this instance's member of the consumer group, shared by the input and its
/// chunks. Its consumer reads nothing (its partitions are paused as soon as they are
/// assigned: a second, group-less client reads the ranges); it is polled only when a batch is
/// cut, so rebalances happen between batches; and it commits each batch's end offsets once
/// the batch's outputs and checkpoint are written.
#[derive(Clone)]
pub struct GroupMember {
    inner: Arc<BaseConsumer<MemberContext>>,
}

/// The partitions the member owns, each with the epoch of its assignment: a commit for a
/// partition read under an older epoch is dropped, since it may belong to someone else now.
#[derive(Default)]
struct Owned {
    partitions: BTreeMap<Tp, u64>,
    epoch: u64,
    /// False from a revocation (or the start) until the next assignment.
    assigned: bool,
    /// Per partition, the last offset this member committed (or found committed)...
    committed: BTreeMap<Tp, i64>,
    /// ... and a later batch end whose commit failed (a broker may refuse commits while a
    /// rebalance is on): committed when the partition comes back to this member untouched.
    uncommitted: BTreeMap<Tp, i64>,
}

struct MemberContext {
    group: String,
    owned: Mutex<Owned>,
}

impl MemberContext {
    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut owned = self.owned();
                for e in tpl.elements() {
                    owned
                        .partitions
                        .remove(&(e.topic().to_string(), e.partition()));
                }
                owned.assigned = false;
                info!(message = "kafka direct input: partitions revoked", group = %self.group, revoked = tpl.count(), owned = owned.partitions.len());
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                warn!(message = "kafka direct input: rebalance failed", group = %self.group, error = %e);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // The member only holds the partitions; the reader client fetches them.
            if let Err(e) = consumer.pause(tpl) {
                warn!(message = "kafka direct input: cannot pause the member's partitions", group = %self.group, error = %e);
            }
            let mut owned = self.owned();
            owned.epoch += 1;
            let epoch = owned.epoch;
            for e in tpl.elements() {
                owned
                    .partitions
                    .insert((e.topic().to_string(), e.partition()), epoch);
            }
            owned.assigned = true;
            info!(message = "kafka direct input: partitions assigned", group = %self.group, assigned = tpl.count(), owned = owned.partitions.len());
        }
    }
}

impl GroupMember {
    fn join(config: &ClientConfig, group: &str, topics: &[String]) -> KafkaResult<GroupMember> {
        let mut config = config.clone();
        config
            .set("group.id", group)
            .set("enable.partition.eof", "false")
            // Paused partitions are not fetched; these keep what slips through small.
            .set("auto.offset.reset", "latest")
            .set("queued.max.messages.kbytes", "1024");
        let consumer: BaseConsumer<MemberContext> = config.create_with_context(MemberContext {
            group: group.to_string(),
            owned: Mutex::new(Owned::default()),
        })?;
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(GroupMember {
            inner: Arc::new(consumer),
        })
    }

    /// Serves the member's pending rebalance events; when it owns nothing assigned (at the
    /// start, or after a revocation) waits up to `wait` for an assignment, since the other
    /// members rejoin at their own next cut. Returns what it owns.
    fn serve(&self, wait: Duration, stop: &CancellationToken) -> BTreeMap<Tp, u64> {
        let deadline = Instant::now() + wait;
        loop {
            // `poll` returns after serving one event, or after the timeout.
            for _ in 0..100 {
                match self.inner.poll(Duration::from_millis(20)) {
                    None => break,
                    Some(Ok(_)) => {} // fetched before the pause took effect: not ours to read
                    Some(Err(e)) => {
                        warn!(message = "kafka direct input: group member error", group = %self.inner.context().group, error = %e);
                    }
                }
            }
            let owned = self.inner.context().owned();
            if owned.assigned || Instant::now() >= deadline || stop.is_cancelled() {
                return owned.partitions.clone();
            }
        }
    }

    /// Commits `ends` (synchronously) for the partitions still owned under the epoch they
    /// were read in; a failure is logged: the next batch's commit covers it, and meanwhile a
    /// new owner would replay (at-least-once).
    fn commit(&self, ends: &[(OffsetRange, u64)]) {
        let owned = self.owned_now();
        let (mine, lost): (Vec<_>, Vec<_>) = ends
            .iter()
            .partition(|(r, epoch)| owned.get(&(r.topic.clone(), r.partition)) == Some(epoch));
        if !lost.is_empty() {
            warn!(message = "kafka direct input: not committing offsets of partitions revoked since they were read; their new owner reads them again", group = %self.inner.context().group, partitions = lost.len());
        }
        let tpl = offsets_list(mine.iter().map(|(r, _)| r));
        if tpl.count() == 0 {
            return;
        }
        let mut delay = Duration::from_millis(100);
        let mut done = false;
        for attempt in 1..=COMMIT_ATTEMPTS {
            match self.inner.commit(&tpl, CommitMode::Sync) {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(e) => {
                    warn!(message = "kafka direct input: group offset commit failed", group = %self.inner.context().group, attempt, error = %e);
                }
            }
            if attempt < COMMIT_ATTEMPTS {
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
        let mut owned = self.inner.context().owned();
        for (r, _) in mine {
            let tp = (r.topic.clone(), r.partition);
            if done {
                owned.uncommitted.remove(&tp);
                owned.committed.insert(tp, r.until);
            } else {
                owned.uncommitted.insert(tp, r.until);
            }
        }
    }

    /// For a partition owned again whose group offset is still `committed`, the end of a
    /// batch this member read after it but failed to commit.
    fn uncommitted_end(&self, tp: &Tp, committed: Option<i64>) -> Option<i64> {
        let owned = self.inner.context().owned();
        match (owned.uncommitted.get(tp), owned.committed.get(tp)) {
            (Some(&end), Some(&last)) if committed == Some(last) => Some(end),
            _ => None,
        }
    }

    fn found_committed(&self, tp: &Tp, offset: i64) {
        let mut owned = self.inner.context().owned();
        owned.uncommitted.remove(tp);
        owned.committed.insert(tp.clone(), offset);
    }

    /// The consumer group's id.
    pub fn group(&self) -> &str {
        &self.inner.context().group
    }

    /// The partitions the member owns now.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        (self.inner.context().owned().partitions.keys())
            .cloned()
            .collect()
    }

    fn owned_now(&self) -> BTreeMap<Tp, u64> {
        self.inner.context().owned().partitions.clone()
    }

    /// Whether the member owns `topic`/`partition` now.
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        (self.inner.context().owned().partitions).contains_key(&(topic.to_string(), partition))
    }

    /// The member's group metadata (group, generation, member id) for
    /// `send_offsets_to_transaction`: the broker refuses the offsets of a member that is no
    /// longer in the group's current generation (a zombie instance).
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.inner.group_metadata()
    }
}

/// Retries `op` until it succeeds, logging each failure, or until `stop`.
fn retry<T>(
    what: &str,
    stop: &CancellationToken,
    mut op: impl FnMut() -> KafkaResult<T>,
) -> Result<T, String> {
    let mut delay = Duration::from_millis(100);
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) => {
                warn!(message = "kafka direct input: request failed; the batch waits and retries", request = what, error = %e, retry_in_ms = delay.as_millis() as u64);
            }
        }
        if stop.is_cancelled() {
            return Err(format!("stopped while waiting for the brokers ({what})"));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Per partition of `topics`: `(from, latest)`, where `from` is where the next batch starts.
fn latest_offsets(
    consumer: &BaseConsumer,
    topics: &[String],
    known: &BTreeMap<Tp, i64>,
    positioned: bool,
    starting: StartFrom,
    group: bool,
    stop: &CancellationToken,
) -> Result<BTreeMap<Tp, (i64, i64)>, String> {
    let mut ends = BTreeMap::new();
    let mut fresh: Vec<Tp> = Vec::new();
    for topic in topics {
        let md = retry("metadata", stop, || {
            consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            continue;
        };
        if t.error().is_some() {
            // Typically a topic that does not exist (yet): no partitions to read.
            continue;
        }
        for p in t.partitions() {
            let tp = (topic.clone(), p.id());
            let (low, high) = retry("watermarks", stop, || {
                consumer.fetch_watermarks(topic, p.id(), REQUEST_TIMEOUT)
            })?;
            let from = match known.get(&tp) {
                Some(&from) => from,
                None if positioned => {
                    info!(message = "kafka direct input: new partition, read from its first offset", topic = %tp.0, partition = tp.1, offset = low);
                    low
                }
                None => {
                    fresh.push(tp.clone());
                    match starting {
                        StartFrom::Earliest => low,
                        StartFrom::Latest => high,
                    }
                }
            };
            if from < low {
                return Err(format!(
                    "{}/{}: offsets {from}..{low} were deleted (retention) before the job read them",
                    tp.0, tp.1
                ));
            }
            if from > high {
                return Err(format!(
                    "{}/{}: the job resumes at offset {from}, past the partition's end {high} (was the topic re-created?)",
                    tp.0, tp.1
                ));
            }
            ends.insert(tp, (from, high));
        }
    }
    if group && !fresh.is_empty() {
        // A job without a checkpoint starts where its consumer group left off, if anywhere.
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &fresh {
            tpl.add_partition(topic, *partition);
        }
        let committed = retry("committed offsets", stop, || {
            consumer.committed_offsets(tpl.clone(), REQUEST_TIMEOUT)
        })?;
        for e in committed.elements() {
            if let (Offset::Offset(o), Some(end)) = (
                e.offset(),
                ends.get_mut(&(e.topic().to_string(), e.partition())),
            ) {
                if o <= end.1 {
                    end.0 = o;
                }
            }
        }
    }
    Ok(ends)
}

/// Group mode, per partition `owned`: `(from, latest)`. `known` partitions continue where the
/// last batch ended; the others start at the group's committed offset, or, when the group has
/// none, at `starting` (the first offset for a partition added while this input runs), which
/// is committed at once so that a later owner starts there too and never skips records.
fn group_offsets(
    offsets: &BaseConsumer,
    member: &GroupMember,
    owned: &BTreeMap<Tp, u64>,
    known: &BTreeMap<Tp, i64>,
    positioned: bool,
    starting: StartFrom,
    stop: &CancellationToken,
) -> Result<BTreeMap<Tp, (i64, i64)>, String> {
    let mut ends = BTreeMap::new();
    for tp in owned.keys() {
        let (low, high) = retry("watermarks", stop, || {
            offsets.fetch_watermarks(&tp.0, tp.1, REQUEST_TIMEOUT)
        })?;
        ends.insert(tp.clone(), (known.get(tp).copied(), low, high));
    }
    let mut fresh = TopicPartitionList::new();
    for (tp, _) in ends.iter().filter(|(_, (from, _, _))| from.is_none()) {
        fresh.add_partition(&tp.0, tp.1);
    }
    let mut committed = BTreeMap::new();
    if fresh.count() > 0 {
        let list = retry("committed offsets", stop, || {
            offsets.committed_offsets(fresh.clone(), REQUEST_TIMEOUT)
        })?;
        for e in list.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed.insert((e.topic().to_string(), e.partition()), o);
            }
        }
    }
    let mut pinned = Vec::new();
    let mut out = BTreeMap::new();
    for (tp, (from, low, high)) in ends {
        let group_at = committed.get(&tp).copied();
        let mine = from
            .is_none()
            .then(|| member.uncommitted_end(&tp, group_at))
            .flatten();
        let from = match (from, mine, group_at) {
            (Some(from), _, _) => from,
            // Back to this member untouched: what it read before is its to commit.
            (None, Some(end), _) => {
                info!(message = "kafka direct input: partition owned again; committing the batch end its commit failed for", topic = %tp.0, partition = tp.1, offset = end);
                pinned.push((
                    OffsetRange {
                        topic: tp.0.clone(),
                        partition: tp.1,
                        from: end,
                        until: end,
                    },
                    owned.get(&tp).copied().unwrap_or(0),
                ));
                end
            }
            (None, None, Some(o)) => {
                info!(message = "kafka direct input: resuming a partition from the group's committed offset", topic = %tp.0, partition = tp.1, offset = o);
                member.found_committed(&tp, o);
                o
            }
            (None, None, None) => {
                let from = match (positioned, starting) {
                    (true, _) | (false, StartFrom::Earliest) => low,
                    (false, StartFrom::Latest) => high,
                };
                info!(message = "kafka direct input: the group has no offset for a partition; starting it", topic = %tp.0, partition = tp.1, offset = from);
                pinned.push((
                    OffsetRange {
                        topic: tp.0.clone(),
                        partition: tp.1,
                        from,
                        until: from,
                    },
                    owned.get(&tp).copied().unwrap_or(0),
                ));
                from
            }
        };
        if from < low {
            return Err(format!(
                "{}/{}: offsets {from}..{low} were deleted (retention) before the group read them",
                tp.0, tp.1
            ));
        }
        if from > high {
            return Err(format!(
                "{}/{}: the group resumes at offset {from}, past the partition's end {high} (was the topic re-created?)",
                tp.0, tp.1
            ));
        }
        out.insert(tp, (from, high));
    }
    if !pinned.is_empty() {
        member.commit(&pinned);
    }
    Ok(out)
}

/// One range per partition: from `from` to the latest offset, at most `per_batch_cap` long.
fn plan_ranges(ends: &BTreeMap<Tp, (i64, i64)>, per_batch_cap: Option<u64>) -> Vec<OffsetRange> {
    ends.iter()
        .map(|((topic, partition), &(from, high))| {
            let mut take = (high - from).max(0) as u64;
            if let Some(cap) = per_batch_cap {
                take = take.min(cap);
            }
            OffsetRange {
                topic: topic.clone(),
                partition: *partition,
                from,
                until: from + take as i64,
            }
        })
        .collect()
}

/// Reads exactly `ranges` (ordered by topic and partition), each in offset order. Waits for
/// brokers as long as it takes (logging), until `stop`.
fn read_ranges(
    consumer: &Arc<BaseConsumer>,
    reader: &Mutex<Reader>,
    ranges: &[OffsetRange],
    stop: &CancellationToken,
) -> Result<Taken, String> {
    let mut reader = reader
        .lock()
        .map_err(|_| "the reader panicked earlier".to_string())?;
    let mut taken = Taken {
        events: Vec::with_capacity(ranges.iter().map(|r| r.count() as usize).sum()),
        offsets: Vec::with_capacity(ranges.iter().map(|r| r.count() as usize).sum()),
        counts: vec![0; ranges.len()],
    };
    if ranges.iter().all(|r| r.count() == 0) {
        return Ok(taken);
    }
    // Re-assign only when the consumer is not already where the ranges start (a replay, a
    // new partition), so consecutive batches keep librdkafka's prefetched records.
    // (In group mode the partitions change at rebalances: the reader drops revoked ones.)
    let in_place = reader.partitions.len() == ranges.len()
        && ranges.iter().all(|r| {
            reader
                .partitions
                .get(&(r.topic.clone(), r.partition))
                .is_some_and(|p| r.count() == 0 || p.at == r.from)
        });
    if !in_place {
        assign(consumer, &mut reader, ranges)?;
    }
    for (i, r) in ranges.iter().enumerate().filter(|(_, r)| r.count() > 0) {
        let tp = (r.topic.clone(), r.partition);
        let part = reader
            .partitions
            .get_mut(&tp)
            .ok_or_else(|| format!("{}/{} is not assigned", r.topic, r.partition))?;
        let before = taken.events.len();
        read_partition(consumer, part, &tp, r.until, &mut taken, stop)?;
        taken.counts[i] = taken.events.len() - before;
    }
    Ok(taken)
}

/// Assigns the reading consumer exactly `ranges`' partitions at their starts and gives each
/// its own queue.
fn assign(
    consumer: &Arc<BaseConsumer>,
    reader: &mut Reader,
    ranges: &[OffsetRange],
) -> Result<(), String> {
    // Queues of the old assignment stop with it; drop them first.
    reader.partitions.clear();
    let mut tpl = TopicPartitionList::new();
    for r in ranges {
        tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.from))
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    for r in ranges {
        let queue = consumer
            .split_partition_queue(&r.topic, r.partition)
            .ok_or_else(|| format!("{}/{}: no partition queue", r.topic, r.partition))?;
        reader.partitions.insert(
            (r.topic.clone(), r.partition),
            PartitionReader {
                queue,
                at: r.from,
                carry: VecDeque::new(),
            },
        );
    }
    // Records fetched between the assignment and the split wait in the shared queue: take
    // them now, before any partition queue is read, so that each partition stays in order.
    while let Some(polled) = consumer.poll(Duration::ZERO) {
        match polled {
            Ok(m) => {
                if let Some(part) =
                    (reader.partitions).get_mut(&(m.topic().to_string(), m.partition()))
                {
                    if m.offset() >= part.at
                        && part.carry.back().is_none_or(|(o, _)| m.offset() > *o)
                    {
                        part.carry.push_back((m.offset(), to_event(&m)));
                    }
                }
            }
            Err(e) => note_consume_error(&e)?,
        }
    }
    Ok(())
}

/// Appends `part`'s records up to `until` to `out`; a record past `until` is carried over.
fn read_partition(
    consumer: &BaseConsumer,
    part: &mut PartitionReader,
    tp: &Tp,
    until: i64,
    out: &mut Taken,
    stop: &CancellationToken,
) -> Result<(), String> {
    while part.at < until {
        match part.carry.front() {
            Some(&(o, _)) if o < part.at => {
                part.carry.pop_front();
            }
            Some(&(o, _)) if o < until => {
                if let Some((o, e)) = part.carry.pop_front() {
                    out.events.push(e);
                    out.offsets.push(o);
                    part.at = o + 1;
                }
            }
            // A record past the end already taken: every offset before it is read (the
            // gap is transaction markers or aborted records).
            Some(_) => part.at = until,
            None => break,
        }
    }
    // Progress is judged when the queue runs dry (no clock read per record).
    let mut last_progress = Instant::now();
    let mut progress_at = part.at;
    let mut idle_since: Option<Instant> = None;
    while part.at < until {
        if stop.is_cancelled() {
            return Err("stopped while reading a batch".into());
        }
        let polled = match part.queue.poll(Duration::ZERO) {
            Some(polled) => Some(polled),
            None => {
                // Nothing queued for the partition now: serve the consumer's events (errors,
                // logs), then wait a little on the partition queue.
                serve_events(consumer)?;
                part.queue.poll(Duration::from_millis(50))
            }
        };
        match polled {
            Some(Ok(m)) => {
                if m.offset() < part.at {
                    continue;
                }
                idle_since = None;
                if m.offset() < until {
                    out.events.push(to_event(&m));
                    out.offsets.push(m.offset());
                    part.at = m.offset() + 1;
                } else {
                    // First record past the end: the rest of the range was markers.
                    part.carry.push_back((m.offset(), to_event(&m)));
                    part.at = until;
                }
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => note_consume_error(&e)?,
        }
        let now = Instant::now();
        if part.at != progress_at {
            progress_at = part.at;
            last_progress = now;
        }
        // At the end of what the broker has: a range that ends in transaction markers is
        // complete once the consumer's position passed them.
        let idle = *idle_since.get_or_insert(now);
        if now.duration_since(idle) >= Duration::from_millis(200) {
            idle_since = Some(now);
            if position(consumer, tp)?.is_some_and(|p| p >= until) {
                part.at = until;
            } else if now.duration_since(last_progress) >= STALL_LOG {
                warn!(
                    message = "kafka direct input: batch still waiting for records",
                    topic = %tp.0,
                    partition = tp.1,
                    at = part.at,
                    until
                );
                last_progress = now;
            }
        }
    }
    Ok(())
}

/// Serves the reading consumer's events (errors, logs). Every assigned partition has its
/// own queue, so no record should come through here; one that does fails the read (the
/// batch is read again) rather than be taken out of order.
fn serve_events(consumer: &BaseConsumer) -> Result<(), String> {
    while let Some(polled) = consumer.poll(Duration::ZERO) {
        match polled {
            Ok(m) => {
                warn!(message = "kafka direct input: a record came through the shared queue; the batch is read again", topic = m.topic(), partition = m.partition(), offset = m.offset());
                return Err("a record bypassed its partition queue".into());
            }
            Err(e) => note_consume_error(&e)?,
        }
    }
    Ok(())
}

/// A consume error: records gone from the broker fail the batch; others are logged and
/// the read goes on waiting.
fn note_consume_error(e: &KafkaError) -> Result<(), String> {
    if matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OffsetOutOfRange)
    ) {
        return Err(format!(
            "offsets of the batch are gone from the broker: {e}"
        ));
    }
    if !matches!(e, KafkaError::PartitionEOF(_)) {
        warn!(message = "kafka direct input: consume error; the batch waits and retries", error = %e);
    }
    Ok(())
}

/// The reading consumer's position in `tp` (the offset after the last record or marker it
/// consumed).
fn position(consumer: &BaseConsumer, tp: &Tp) -> Result<Option<i64>, String> {
    let positions = consumer.position().map_err(|e| e.to_string())?;
    Ok(positions
        .find_partition(&tp.0, tp.1)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(v: &[(i32, i64, i64)]) -> BTreeMap<Tp, (i64, i64)> {
        v.iter()
            .map(|&(p, f, h)| (("t".to_string(), p), (f, h)))
            .collect()
    }

    fn counts(r: &[OffsetRange]) -> Vec<u64> {
        r.iter().map(OffsetRange::count).collect()
    }

    #[test]
    fn ranges_run_to_the_latest_offset_within_the_cap() {
        let e = ends(&[(0, 10, 110), (1, 0, 0), (2, 5, 35)]);
        assert_eq!(counts(&plan_ranges(&e, None)), [100, 0, 30]);
        let r = plan_ranges(&e, Some(50));
        assert_eq!(counts(&r), [50, 0, 30]);
        assert_eq!((r[0].from, r[0].until), (10, 60));
        assert_eq!((r[1].from, r[1].until), (0, 0), "empty ranges are kept");
    }

    #[test]
    fn a_chunk_is_shared_evenly_between_partitions_with_records_left() {
        assert_eq!(share(90, &[100, 0, 30]), [60, 0, 30]);
        assert_eq!(share(65, &[100, 0, 30]), [35, 0, 30]);
        assert_eq!(share(10, &[100, 100, 100]), [4, 3, 3]);
        assert_eq!(share(1000, &[5, 7]), [5, 7]);
        assert_eq!(share(2, &[5, 7, 9]), [1, 1, 0]);
        assert_eq!(share(0, &[5]), [0]);
    }
}
