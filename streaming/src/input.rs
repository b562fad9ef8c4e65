//! Job inputs. At each batch time the engine *cuts* one [`InputBatch`] from every input; the
//! batch is committed only after its outputs are written and the state that includes it is
//! checkpointed. Each batch carries an [`InputPosition`] that the checkpoint journal records
//! before any output is written, so that after a crash the very same batch can be cut again.
//!
//! * Channel input: the position is implicit in the channel — uncommitted takes are delivered
//!   again, first and in order — so the journal records the event count plus a fingerprint,
//!   and [`JobInput::recut`] takes that many events and checks the fingerprint.
//! * Kafka direct input (`weir_kafka::direct`): the position is explicit — one offset range
//!   per topic-partition — so [`JobInput::recut`] re-reads exactly those offsets, and the
//!   checkpoint records where the input resumes ([`InputPosition::resume_after`],
//!   [`JobInput::restore`]) together with the state.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use weir_core::{Channel, CommitError, Event, TakeError, TakeTransaction};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input `{input}`: {source}")]
    Take {
        input: String,
        #[source]
        source: TakeError,
    },
    #[error("input `{input}`: a journaled batch of {expected} events is no longer there ({found} found)")]
    Changed {
        input: String,
        expected: u64,
        found: u64,
    },
    #[error("input `{input}`: {source}")]
    Commit {
        input: String,
        #[source]
        source: CommitError,
    },
    /// Any other input's failure (e.g. Kafka).
    #[error("input `{input}`: {source}")]
    Source {
        input: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where a batch came from, as recorded in the checkpoint journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputPosition {
    /// The first `events` uncommitted events of a channel, identified by `fingerprint`
    /// (see [`fingerprint`]).
    Channel { events: u64, fingerprint: u64 },
    /// Kafka offset ranges, one per topic-partition (empty ranges included), sorted by topic
    /// and partition.
    Kafka { ranges: Vec<OffsetRange> },
}

/// Records `[from, until)` of one topic-partition (Spark's `OffsetRange`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OffsetRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

impl OffsetRange {
    pub fn count(&self) -> u64 {
        (self.until - self.from).max(0) as u64
    }
}

impl InputPosition {
    /// Where an input with explicit positions resumes once `batch` is committed, given where
    /// it resumed before (`None` for a channel, which resumes by itself). For Kafka: an empty
    /// range at the next offset of every partition seen so far.
    pub fn resume_after(
        before: Option<&InputPosition>,
        batch: &InputPosition,
    ) -> Option<InputPosition> {
        match batch {
            InputPosition::Channel { .. } => None,
            InputPosition::Kafka { ranges } => {
                let mut next = std::collections::BTreeMap::new();
                if let Some(InputPosition::Kafka { ranges: prev }) = before {
                    for r in prev {
                        next.insert((r.topic.clone(), r.partition), r.until);
                    }
                }
                for r in ranges {
                    next.insert((r.topic.clone(), r.partition), r.until);
                }
                Some(InputPosition::Kafka {
                    ranges: next
                        .into_iter()
                        .map(|((topic, partition), at)| OffsetRange {
                            topic,
                            partition,
                            from: at,
                            until: at,
                        })
                        .collect(),
                })
            }
        }
    }
}

/// A piece of a batch (a channel take transaction). The job runs a chunk through the
/// operators, releases its events, and commits all of a batch's chunks together later.
#[async_trait]
pub trait InputChunk: Send + Sync {
    /// The chunk's events; empty once released.
    fn events(&self) -> &[Event];
    /// Events in the chunk, released or not.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drops the chunk's events while keeping it uncommitted, if the input can deliver them
    /// again without this copy; returns whether it did.
    fn release(&mut self) -> bool;
    async fn commit(self: Box<Self>) -> Result<(), CommitError>;
}

#[async_trait]
impl InputChunk for TakeTransaction {
    fn events(&self) -> &[Event] {
        TakeTransaction::events(self)
    }
    fn len(&self) -> usize {
        TakeTransaction::len(self)
    }
    fn release(&mut self) -> bool {
        self.release_events()
    }
    async fn commit(self: Box<Self>) -> Result<(), CommitError> {
        (*self).commit().await
    }
}

/// One input's share of one batch. Dropping it without [`InputBatch::commit`] rolls it back.
pub struct InputBatch {
    pub(crate) input: String,
    pub(crate) chunks: Vec<Box<dyn InputChunk>>,
    pub(crate) position: InputPosition,
}

impl InputBatch {
    pub fn new(input: String, chunks: Vec<Box<dyn InputChunk>>, position: InputPosition) -> Self {
        InputBatch {
            input,
            chunks,
            position,
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn position(&self) -> &InputPosition {
        &self.position
    }

    /// Commits every chunk, all at once so that a channel can make them durable together
    /// (the file channel: one group write); a failed chunk rolls back.
    pub async fn commit(self) -> Result<(), InputError> {
        let results = join_all(self.chunks.into_iter().map(|c| c.commit())).await;
        match results.into_iter().find_map(Result::err) {
            Some(source) => Err(InputError::Commit {
                input: self.input,
                source,
            }),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for InputBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputBatch")
            .field("input", &self.input)
            .field("events", &self.len())
            .field("position", &self.position)
            .finish()
    }
}

/// What a job reads from. A batch is cut chunk by chunk: [`JobInput::take_chunk`] until the
/// batch limit or the input has nothing more now, then [`JobInput::end_cut`].
#[async_trait]
pub trait JobInput: Send {
    fn name(&self) -> &str;

    /// The next chunk of the batch being cut: up to `max` events available now, or `None`.
    async fn take_chunk(&mut self, max: usize) -> Result<Option<Box<dyn InputChunk>>, InputError>;

    /// Where the chunks taken since the previous call came from (for the journal); the next
    /// chunk starts a new batch.
    fn end_cut(&mut self) -> InputPosition;

    /// Checks that the input still starts with the batch at `position`: takes it again
    /// (chunk by chunk, releasing the events) and returns it, or returns `None` (after rolling
    /// back whatever it took) when the input no longer starts with it — for a channel, because
    /// it was committed before the crash.
    async fn recut(&mut self, position: &InputPosition) -> Result<Option<InputBatch>, InputError>;

    /// Sets where the input resumes, as recorded by the checkpoint (inputs with explicit
    /// positions only; see [`InputPosition::resume_after`]). Called before any `recut`.
    fn restore(&mut self, _position: &InputPosition) {}

    /// Events waiting in the input, if known (for logs and backpressure tests).
    fn backlog(&self) -> Option<u64> {
        None
    }

    /// True when the input keeps uncommitted data across a restart; a job drains the
    /// others before it stops.
    fn is_durable(&self) -> bool {
        true
    }
}

/// A channel as a job input. The job is the channel's only consumer.
pub struct ChannelInput {
    channel: Arc<dyn Channel>,
    /// The batch being cut.
    cut: Fingerprint,
    /// What the channel held when the cut began and the cut may still take: the batch ends
    /// there even if events keep arriving while it runs.
    cut_remaining: Option<u64>,
    cutting: bool,
}

impl ChannelInput {
    pub fn new(channel: Arc<dyn Channel>) -> Self {
        ChannelInput {
            channel,
            cut: Fingerprint::new(None),
            cut_remaining: None,
            cutting: false,
        }
    }

    async fn take(&self, max: usize) -> Result<Option<TakeTransaction>, InputError> {
        // A channel caps each take at its transaction capacity, so a batch spans several take
        // transactions.
        self.channel
            .take(max)
            .await
            .map_err(|source| InputError::Take {
                input: self.channel.name().to_string(),
                source,
            })
    }
}

#[async_trait]
impl JobInput for ChannelInput {
    fn name(&self) -> &str {
        self.channel.name()
    }

    async fn take_chunk(&mut self, max: usize) -> Result<Option<Box<dyn InputChunk>>, InputError> {
        if !self.cutting {
            self.cutting = true;
            self.cut_remaining = self.channel.queued();
        }
        let max = match self.cut_remaining {
            Some(left) => max.min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => max,
        };
        if max == 0 {
            return Ok(None);
        }
        let Some(t) = self.take(max).await? else {
            return Ok(None);
        };
        if let Some(left) = &mut self.cut_remaining {
            *left = left.saturating_sub(t.len() as u64);
        }
        self.cut.add(t.events());
        Ok(Some(Box::new(t)))
    }

    fn end_cut(&mut self) -> InputPosition {
        self.cutting = false;
        self.cut_remaining = None;
        let fp = std::mem::replace(&mut self.cut, Fingerprint::new(None));
        let (events, fingerprint, _) = fp.finish();
        InputPosition::Channel {
            events,
            fingerprint,
        }
    }

    async fn recut(&mut self, position: &InputPosition) -> Result<Option<InputBatch>, InputError> {
        let InputPosition::Channel {
            events,
            fingerprint,
        } = position
        else {
            return Err(InputError::Source {
                input: self.channel.name().to_string(),
                source: format!("the checkpoint holds a non-channel position for it: {position:?}")
                    .into(),
            });
        };
        let mut fp = Fingerprint::new(Some(*events));
        let mut chunks: Vec<Box<dyn InputChunk>> = Vec::new();
        let mut got = 0u64;
        while got < *events {
            let max = usize::try_from(*events - got).unwrap_or(usize::MAX);
            let Some(mut t) = self.take(max).await? else {
                break;
            };
            got += t.len() as u64;
            fp.add(t.events());
            t.release_events();
            chunks.push(Box::new(t));
        }
        let (n, found, legacy) = fp.finish();
        if n == *events && (found == *fingerprint || legacy == Some(*fingerprint)) {
            Ok(Some(InputBatch::new(
                self.channel.name().to_string(),
                chunks,
                position.clone(),
            )))
        } else {
            // Dropping the chunks rolls them back, ahead of newer events, in order.
            Ok(None)
        }
    }

    fn backlog(&self) -> Option<u64> {
        Some(self.channel.stats().events)
    }

    fn is_durable(&self) -> bool {
        self.channel.is_durable()
    }
}

/// A stable (FNV) fingerprint of a run of events, computed chunk by chunk: every event's
/// body length and header count in order (a word at a time), then the count, and the full bytes of the first
/// and last events. Cheap on the hot path (one mix per event plus two events' bytes) yet
/// enough to tell "the channel still starts with this batch" from "this batch was committed
/// and these are newer events"; streams of identical events are the blind spot (see the crate
/// docs).
///
/// Checkpoints written before batches were cut in chunks hold the older form (the count
/// first, see [`fingerprint`]); when the count is known in advance (a re-cut) that one is
/// computed alongside.
pub struct Fingerprint {
    h: Fnv,
    legacy: Option<Fnv>,
    n: u64,
    first: Option<Event>,
    last: Option<Event>,
}

impl Fingerprint {
    pub fn new(known_count: Option<u64>) -> Self {
        Fingerprint {
            h: Fnv::new(),
            legacy: known_count.map(|n| {
                let mut h = Fnv::new();
                h.write_u64(n);
                h
            }),
            n: 0,
            first: None,
            last: None,
        }
    }

    pub fn add(&mut self, events: &[Event]) {
        for e in events {
            // A word at a time: this runs once per event of every batch.
            self.h.mix_u64(e.body.len() as u64);
            self.h.mix_u64(e.headers.len() as u64);
            if let Some(h) = self.legacy.as_mut() {
                h.write_u64(e.body.len() as u64);
                h.write_u64(e.headers.len() as u64);
            }
        }
        self.n += events.len() as u64;
        if let Some(e) = events.first() {
            // Clones share the body; two events are kept, not the batch.
            self.first.get_or_insert_with(|| e.clone());
        }
        if let Some(e) = events.last() {
            self.last = Some(e.clone());
        }
    }

    /// `(events, fingerprint, legacy fingerprint if the count was known)`.
    pub fn finish(mut self) -> (u64, u64, Option<u64>) {
        self.h.write_u64(self.n);
        for h in std::iter::once(&mut self.h).chain(self.legacy.as_mut()) {
            for e in self.first.iter().chain(&self.last) {
                write_event(h, e);
            }
        }
        (self.n, self.h.0, self.legacy.map(|h| h.0))
    }
}

fn write_event(h: &mut Fnv, e: &Event) {
    h.write(&e.body);
    for (k, v) in &e.headers {
        h.write(k.as_bytes());
        h.write(&[0]);
        h.write(v.as_bytes());
        h.write(&[0]);
    }
}

/// The fingerprint of batches journaled before batches were cut in chunks: the count, every
/// event's body length and header count, the first and last events' bytes.
pub fn fingerprint(events: &[&Event]) -> u64 {
    let mut h = Fnv::new();
    h.write_u64(events.len() as u64);
    for e in events {
        h.write_u64(e.body.len() as u64);
        h.write_u64(e.headers.len() as u64);
    }
    for e in events.first().into_iter().chain(events.last()) {
        write_event(&mut h, e);
    }
    h.0
}

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
    /// FNV's step over a whole word (not FNV-1a over its bytes).
    fn mix_u64(&mut self, v: u64) {
        self.0 ^= v;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<Event> {
        (0..10)
            .map(|i| Event::new(format!("line {i}")).with_header("h", "v"))
            .collect()
    }

    #[test]
    fn a_fingerprint_does_not_depend_on_the_chunking_and_knows_the_older_form() {
        let evs = events();
        let mut whole = Fingerprint::new(None);
        whole.add(&evs);
        let mut chunked = Fingerprint::new(Some(10));
        for c in evs.chunks(3) {
            chunked.add(c);
        }
        let (n, fp, none) = whole.finish();
        let (m, fp2, legacy) = chunked.finish();
        assert_eq!((n, none), (10, None));
        assert_eq!((m, fp2), (10, fp));
        let refs: Vec<&Event> = evs.iter().collect();
        assert_eq!(legacy, Some(fingerprint(&refs)));
        let mut other = Fingerprint::new(None);
        other.add(&evs[1..]);
        assert_ne!(other.finish().1, fp, "a different run of events");
    }

    #[tokio::test]
    async fn a_channel_cut_ends_at_what_the_channel_held_when_it_began() {
        use weir_core::memory::{MemoryChannel, MemoryChannelConfig};
        let ch = Arc::new(MemoryChannel::new("c", MemoryChannelConfig::default()));
        ch.put(events()).await.unwrap();
        let mut input = ChannelInput::new(ch.clone());
        let first = input.take_chunk(4).await.unwrap().unwrap();
        // Arrives while the batch runs: belongs to the next batch.
        ch.put(events()).await.unwrap();
        let rest = input.take_chunk(100).await.unwrap().unwrap();
        assert_eq!((first.len(), rest.len()), (4, 6));
        assert!(input.take_chunk(100).await.unwrap().is_none());
        let InputPosition::Channel { events: n, .. } = input.end_cut() else {
            panic!("a channel position");
        };
        assert_eq!(n, 10);
        let next = input.take_chunk(100).await.unwrap().unwrap();
        assert_eq!(next.len(), 10);
    }
}
