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
//! One librdkafka consumer is assigned every partition (no group membership): librdkafka
//! fetches from every partition leader in parallel, one thread per broker. Topic metadata is
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

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
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
        let config = client_config(&self.brokers, &defaults, &self.properties);
        let consumer: BaseConsumer = config.create()?;
        // Offsets and metadata go through a second client: on the reading one they would
        // queue behind fetches the broker holds for up to `fetch.wait.max.ms`.
        let offsets: BaseConsumer = config.create()?;
        let per_batch_cap = self.max_rate_per_partition.map(|rate| {
            let cap = rate as u128 * batch_interval.as_millis() / 1000;
            (cap as u64).max(1)
        });
        Ok(KafkaDirectInput {
            name: format!("kafka:{}", self.topics.join(",")),
            topics: self.topics.clone(),
            starting: self.starting,
            per_batch_cap,
            group: self.properties.contains_key("group.id"),
            commit_to_group: true,
            consumer: Arc::new(consumer),
            offsets: Arc::new(offsets),
            reader: Arc::new(Mutex::new(Reader::default())),
            next: BTreeMap::new(),
            positioned: false,
            cut: None,
            replay: None,
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
    group: bool,
    /// Whether committed batches commit their offsets to the group (see
    /// [`KafkaDirectInput::leave_commits_to_output`]).
    commit_to_group: bool,
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
    shutdown: CancellationToken,
}

/// What the consumer will deliver next, per partition: records fetched past the end of a
/// range wait in `carry` for the next batch, so consecutive batches need no re-assignment.
#[derive(Default)]
struct Reader {
    /// Per assigned partition, the offset the next record handed out must have.
    at: BTreeMap<Tp, i64>,
    carry: BTreeMap<Tp, VecDeque<(i64, Event)>>,
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
        f: impl FnOnce(&BaseConsumer, &Mutex<Reader>, &CancellationToken) -> Result<T, String>
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

    /// For a job whose transactional `kafka` output commits this input's offsets in each
    /// batch's transaction: the input's own commit, made later, after the checkpoint, could
    /// move the group back behind a newer transaction.
    pub fn leave_commits_to_output(&mut self) {
        self.commit_to_group = false;
    }

    /// The next batch's ranges: every partition from where the last batch ended to its
    /// latest offset, at most `max_rate_per_partition` × the batch interval.
    async fn plan(&self) -> Result<Vec<OffsetRange>, InputError> {
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
}

#[async_trait]
impl JobInput for KafkaDirectInput {
    fn name(&self) -> &str {
        &self.name
    }

    async fn take_chunk(&mut self, max: usize) -> Result<Option<Box<dyn InputChunk>>, InputError> {
        if self.cut.is_none() {
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
        let events = {
            let sub = sub.clone();
            self.blocking(move |c, r, stop| read_ranges(c, r, &sub, stop))
                .await?
        };
        if let Some(cut) = &mut self.cut {
            for (d, r) in cut.delivered.iter_mut().zip(&sub) {
                *d = r.until;
            }
        }
        let commit = (self.group && self.commit_to_group).then(|| {
            let ends = sub.iter().filter(|r| r.count() > 0).cloned().collect();
            (self.consumer.clone(), ends)
        });
        Ok(Some(Box::new(KafkaChunk {
            len: events.len(),
            events,
            commit,
        })))
    }

    fn end_cut(&mut self) -> InputPosition {
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
        self.positioned = true;
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
        self.replay = Some(ranges.clone());
        self.cut = None;
        info!(message = "kafka direct input replays a journaled batch", input = %self.name, records = ranges.iter().map(OffsetRange::count).sum::<u64>());
        Ok(Some(InputBatch::new(
            self.name.clone(),
            Vec::new(),
            position.clone(),
        )))
    }

    fn restore(&mut self, position: &InputPosition) {
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

/// A chunk of a batch's records; committing it commits its end offsets to the consumer
/// group when there is one (informational: the checkpoint is what the job resumes from).
struct KafkaChunk {
    events: Vec<Event>,
    len: usize,
    commit: Option<(Arc<BaseConsumer>, Vec<OffsetRange>)>,
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
        if let Some((consumer, ranges)) = self.commit {
            let mut tpl = TopicPartitionList::new();
            for r in &ranges {
                if let Err(e) =
                    tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.until))
                {
                    warn!(message = "kafka direct input: bad offset to commit", error = %e);
                }
            }
            if tpl.count() > 0 {
                // Async: only lag monitoring reads these; a lost commit is overwritten next batch.
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    warn!(message = "kafka direct input: group offset commit failed", error = %e);
                }
            }
        }
        Ok(())
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
    consumer: &BaseConsumer,
    reader: &Mutex<Reader>,
    ranges: &[OffsetRange],
    stop: &CancellationToken,
) -> Result<Vec<Event>, String> {
    let mut reader = reader
        .lock()
        .map_err(|_| "the reader panicked earlier".to_string())?;
    let Reader { at, carry } = &mut *reader;
    let wanted: BTreeMap<Tp, (i64, i64)> = ranges
        .iter()
        .filter(|r| r.count() > 0)
        .map(|r| ((r.topic.clone(), r.partition), (r.from, r.until)))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    // Re-assign only when the consumer is not already where the ranges start (a replay, a
    // new partition), so consecutive batches keep librdkafka's prefetched records.
    let in_place = wanted
        .iter()
        .all(|(tp, (from, _))| at.get(tp) == Some(from));
    if !in_place {
        let mut tpl = TopicPartitionList::new();
        at.clear();
        carry.clear();
        for r in ranges {
            tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.from))
                .map_err(|e| e.to_string())?;
            at.insert((r.topic.clone(), r.partition), r.from);
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
    }
    let mut got: BTreeMap<Tp, Vec<Event>> = BTreeMap::new();
    let mut open = 0usize;
    for (tp, &(_, until)) in &wanted {
        let out = got.entry(tp.clone()).or_default();
        let queue = carry.entry(tp.clone()).or_default();
        while queue.front().is_some_and(|(o, _)| *o < until) {
            if let Some((o, e)) = queue.pop_front() {
                out.push(e);
                at.insert(tp.clone(), o + 1);
            }
        }
        // Records past the end already fetched mean every offset before them is read
        // (the gaps are transaction markers or aborted records).
        if !queue.is_empty() || at.get(tp).is_some_and(|&a| a >= until) {
            at.insert(tp.clone(), until.max(at.get(tp).copied().unwrap_or(until)));
        } else {
            open += 1;
        }
    }
    let mut last_progress = Instant::now();
    while open > 0 {
        if stop.is_cancelled() {
            return Err("stopped while reading a batch".into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let tp = (m.topic().to_string(), m.partition());
                let Some(&(_, until)) = wanted.get(&tp) else {
                    // An assigned partition with nothing to read in this batch.
                    let queue = carry.entry(tp.clone()).or_default();
                    if at.get(&tp).is_some_and(|&a| m.offset() >= a)
                        && queue.back().is_none_or(|(o, _)| m.offset() > *o)
                    {
                        queue.push_back((m.offset(), to_event(&m)));
                    }
                    continue;
                };
                let expected = at.get(&tp).copied().unwrap_or(0);
                if m.offset() < expected {
                    continue;
                }
                last_progress = Instant::now();
                if expected < until && m.offset() < until {
                    got.entry(tp.clone()).or_default().push(to_event(&m));
                    at.insert(tp.clone(), m.offset() + 1);
                    if m.offset() + 1 >= until {
                        open -= 1;
                    }
                } else {
                    if expected < until {
                        // First record past the end: the rest of the range was markers.
                        at.insert(tp.clone(), until);
                        open -= 1;
                    }
                    carry
                        .entry(tp)
                        .or_default()
                        .push_back((m.offset(), to_event(&m)));
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                // At the end of what the broker has: a range that ends in transaction
                // markers is complete once the consumer's position passed them.
                if last_progress.elapsed() >= Duration::from_millis(200) {
                    open = settle_by_position(consumer, &wanted, at)?;
                    if open > 0 && last_progress.elapsed() >= STALL_LOG {
                        warn!(
                            message = "kafka direct input: batch still waiting for records",
                            partitions_open = open
                        );
                        last_progress = Instant::now();
                    }
                }
            }
            Some(Err(e)) => {
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::OffsetOutOfRange)
                ) {
                    return Err(format!(
                        "offsets of the batch are gone from the broker: {e}"
                    ));
                }
                warn!(message = "kafka direct input: consume error; the batch waits and retries", error = %e);
            }
        }
    }
    Ok(got.into_values().flatten().collect())
}

/// Marks ranges whose partition position passed their end as read; returns how many are open.
fn settle_by_position(
    consumer: &BaseConsumer,
    wanted: &BTreeMap<Tp, (i64, i64)>,
    at: &mut BTreeMap<Tp, i64>,
) -> Result<usize, String> {
    let positions = consumer.position().map_err(|e| e.to_string())?;
    let mut open = 0;
    for (tp, &(_, until)) in wanted {
        if at.get(tp).is_some_and(|&a| a >= until) {
            continue;
        }
        let pos = positions
            .find_partition(&tp.0, tp.1)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        if pos.is_some_and(|p| p >= until) {
            at.insert(tp.clone(), until);
        } else {
            open += 1;
        }
    }
    Ok(open)
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
