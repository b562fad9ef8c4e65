//! Job inputs. At each batch time the engine *cuts* one [`InputBatch`] from every input; the
//! batch is committed only after its outputs are written and the state that includes it is
//! checkpointed. Each batch carries an [`InputPosition`] that the checkpoint journal records
//! before any output is written, so that after a crash the very same batch can be cut again.
//!
//! * Channel input: the position is implicit in the channel — uncommitted takes are delivered
//!   again, first and in order — so the journal records the event count plus a fingerprint,
//!   and [`JobInput::recut`] takes that many events and checks the fingerprint.
//! * Kafka direct input (later): the position will be explicit offset ranges
//!   ([`InputPosition`] is an enum so that variant slots in).

use std::sync::Arc;

use async_trait::async_trait;
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
    #[error("input `{input}`: {source}")]
    Commit {
        input: String,
        #[source]
        source: CommitError,
    },
}

/// Where a batch came from, as recorded in the checkpoint journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputPosition {
    /// The first `events` uncommitted events of a channel, identified by `fingerprint`
    /// (see [`fingerprint`]).
    Channel { events: u64, fingerprint: u64 },
}

/// A piece of a batch that is committed as a unit (a channel take transaction).
#[async_trait]
pub trait InputChunk: Send + Sync {
    fn events(&self) -> &[Event];
    async fn commit(self: Box<Self>) -> Result<(), CommitError>;
}

#[async_trait]
impl InputChunk for TakeTransaction {
    fn events(&self) -> &[Event] {
        TakeTransaction::events(self)
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
        self.chunks.iter().map(|c| c.events().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn position(&self) -> &InputPosition {
        &self.position
    }

    /// Borrowed slices of the batch's events, in order.
    pub fn slices(&self) -> Vec<&[Event]> {
        self.chunks.iter().map(|c| c.events()).collect()
    }

    /// Commits the chunks in order; a failure leaves the rest to roll back on drop.
    pub async fn commit(self) -> Result<(), InputError> {
        for chunk in self.chunks {
            chunk.commit().await.map_err(|source| InputError::Commit {
                input: self.input.clone(),
                source,
            })?;
        }
        Ok(())
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

/// What a job reads from.
#[async_trait]
pub trait JobInput: Send {
    fn name(&self) -> &str;

    /// Cuts the next batch: up to `max_events` events available now (possibly none — empty
    /// batches are real batches).
    async fn cut(&mut self, max_events: usize) -> Result<InputBatch, InputError>;

    /// Cuts exactly the batch described by `position` again, or returns `None` (after rolling
    /// back whatever it took) when the input no longer starts with that batch — for a channel,
    /// because it was committed before the crash.
    async fn recut(&mut self, position: &InputPosition) -> Result<Option<InputBatch>, InputError>;

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
}

impl ChannelInput {
    pub fn new(channel: Arc<dyn Channel>) -> Self {
        ChannelInput { channel }
    }

    async fn take_up_to(&self, max: usize) -> Result<Vec<Box<dyn InputChunk>>, InputError> {
        let mut chunks: Vec<Box<dyn InputChunk>> = Vec::new();
        let mut got = 0usize;
        // A channel caps each take at its transaction capacity, so a batch may span several
        // take transactions; stop when the channel has nothing more right now.
        while got < max {
            match self.channel.take(max - got).await {
                Ok(Some(t)) => {
                    got += t.len();
                    chunks.push(Box::new(t));
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(InputError::Take {
                        input: self.channel.name().to_string(),
                        source,
                    })
                }
            }
        }
        Ok(chunks)
    }
}

#[async_trait]
impl JobInput for ChannelInput {
    fn name(&self) -> &str {
        self.channel.name()
    }

    async fn cut(&mut self, max_events: usize) -> Result<InputBatch, InputError> {
        let chunks = self.take_up_to(max_events).await?;
        let position = channel_position(&chunks);
        Ok(InputBatch::new(
            self.channel.name().to_string(),
            chunks,
            position,
        ))
    }

    async fn recut(&mut self, position: &InputPosition) -> Result<Option<InputBatch>, InputError> {
        let InputPosition::Channel { events, .. } = position;
        let max = usize::try_from(*events).unwrap_or(usize::MAX);
        let chunks = self.take_up_to(max).await?;
        let found = channel_position(&chunks);
        if &found == position {
            Ok(Some(InputBatch::new(
                self.channel.name().to_string(),
                chunks,
                found,
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

fn channel_position(chunks: &[Box<dyn InputChunk>]) -> InputPosition {
    let events: Vec<&Event> = chunks.iter().flat_map(|c| c.events().iter()).collect();
    InputPosition::Channel {
        events: events.len() as u64,
        fingerprint: fingerprint(&events),
    }
}

/// A stable (FNV-1a) fingerprint of a run of events: the count, every event's body length
/// and header count, and the full bytes of the first and last events. Cheap on the hot path
/// (one mix per event plus two events' bytes) yet enough to tell "the channel still starts
/// with this batch" from "this batch was committed and these are newer events"; streams of
/// identical events are the blind spot (see the crate docs).
pub fn fingerprint(events: &[&Event]) -> u64 {
    let mut h = Fnv::new();
    h.write_u64(events.len() as u64);
    for e in events {
        h.write_u64(e.body.len() as u64);
        h.write_u64(e.headers.len() as u64);
    }
    for e in events.first().into_iter().chain(events.last()) {
        h.write(&e.body);
        for (k, v) in &e.headers {
            h.write(k.as_bytes());
            h.write(&[0]);
            h.write(v.as_bytes());
            h.write(&[0]);
        }
    }
    h.0
}

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
}
