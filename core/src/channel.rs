//! The transactional channel contract shared by every channel type.
//!
//! * `put(batch)` is all-or-nothing and returns only once the batch is stored as durably as the
//!   channel type promises (memory: in RAM; file: fdatasync'd). A full channel fails at once with
//!   [`PutError::Full`]; it never blocks waiting for room, so sources can refuse upstream.
//! * `take(max)` hands out up to `max` events inside a [`TakeTransaction`]. Committing removes
//!   them for good; rolling back — or dropping the transaction without committing — makes them
//!   deliverable again, ahead of newer events and in their original order.
//! * Several take transactions may be open at once (the `spark` sink serves several pollers),
//!   but a channel has exactly one consuming component.

use async_trait::async_trait;

use crate::event::Event;

/// What a channel holds right now; taken-but-uncommitted events still count, so a rollback
/// always fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub events: u64,
    pub bytes: u64,
    pub max_events: u64,
    pub max_bytes: u64,
}

/// A put refused because the channel lacks room for the whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "channel `{channel}` is full: {events}/{max_events} events, {bytes}/{max_bytes} bytes held, \
     batch of {batch_events} events ({batch_bytes} bytes) refused"
)]
pub struct ChannelFull {
    pub channel: String,
    pub events: u64,
    pub max_events: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub batch_events: u64,
    pub batch_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error(transparent)]
    Full(#[from] ChannelFull),
    #[error("channel `{channel}` cannot take a batch of {events} events: its transaction capacity is {limit}")]
    TooLarge {
        channel: String,
        events: usize,
        limit: usize,
    },
    #[error("channel `{channel}` is closed")]
    Closed { channel: String },
    #[error("channel `{channel}` failed to store the batch: {source}")]
    Io {
        channel: String,
        #[source]
        source: std::io::Error,
    },
}

impl PutError {
    /// Full and too-large refusals are the client's cue to retry later; the others are faults.
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("channel `{channel}` is closed")]
    Closed { channel: String },
    #[error("channel `{channel}` failed to read: {source}")]
    Io {
        channel: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(
        "channel `{channel}` failed to commit a take; its events will be delivered again: {source}"
    )]
    Io {
        channel: String,
        #[source]
        source: std::io::Error,
    },
}

#[async_trait]
pub trait Channel: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// Stores the whole batch or nothing; `Ok` is the ack point for sources.
    async fn put(&self, events: Vec<Event>) -> Result<(), PutError>;

    /// Up to `max` events in a take transaction, or `None` when nothing is available now.
    async fn take(&self, max: usize) -> Result<Option<TakeTransaction>, TakeError>;

    /// Completes when a `take` may find events. Spurious wake-ups are allowed; a put that
    /// lands after this future was created is never missed.
    async fn wait_for_events(&self);

    fn stats(&self) -> ChannelStats;

    /// At most how many events a take could return now (held, not in an open take), when the
    /// channel knows it cheaply. A job cuts its batch at this count, so events that arrive
    /// while the batch runs go to the next batch, as in Spark.
    fn queued(&self) -> Option<u64> {
        None
    }

    /// True when the channel keeps its events across a restart (the file and kafka channels),
    /// so shutdown need not drain it.
    fn is_durable(&self) -> bool;

    /// Called once at shutdown, after the channel's producers and consumer stopped: write out
    /// and sync whatever is pending.
    async fn close(&self) {}
}

/// The body of [`Channel::wait_for_events`] for channels that signal puts on a `Notify`:
/// registers for the wake-up before checking, so a put between the check and the wait is
/// never missed.
pub async fn wait_readable(readable: &tokio::sync::Notify, available: impl FnOnce() -> bool) {
    let notified = readable.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if available() {
        return;
    }
    notified.await;
}

/// The channel-specific half of a take transaction.
#[async_trait]
pub trait TakeHandle: Send + Sync {
    /// Removes the taken events for good. On error the events count as rolled back.
    async fn commit(self: Box<Self>, events: Vec<Event>) -> Result<(), CommitError>;
    /// Makes the events deliverable again, ahead of newer ones. Synchronous so that dropping a
    /// transaction can roll it back.
    fn rollback(self: Box<Self>, events: Vec<Event>);
    /// Whether the channel can deliver these events again without the transaction's copies
    /// (the file channel re-reads them from its log). If it returns true, `commit` and
    /// `rollback` may then get an empty `events`.
    fn release(&mut self) -> bool {
        false
    }
}

/// Events taken from a channel, owned by the consumer until it commits or rolls back.
/// Dropping it without a commit is a rollback: a consumer that fails or is cancelled mid-batch
/// never loses the batch.
pub struct TakeTransaction {
    events: Vec<Event>,
    /// Events taken, also after [`TakeTransaction::release_events`].
    taken: usize,
    handle: Option<Box<dyn TakeHandle>>,
}

impl TakeTransaction {
    pub fn new(events: Vec<Event>, handle: Box<dyn TakeHandle>) -> Self {
        TakeTransaction {
            taken: events.len(),
            events,
            handle: Some(handle),
        }
    }

    /// The taken events; empty once released.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Events taken (released or not).
    pub fn len(&self) -> usize {
        self.taken
    }

    pub fn is_empty(&self) -> bool {
        self.taken == 0
    }

    /// Drops the transaction's decoded events while keeping it open, when the channel can
    /// deliver them again on rollback without them (the file channel can; the memory channel
    /// cannot, the events being its only copy). A consumer that has processed the events calls
    /// this so an open transaction does not hold them until commit. Returns whether they were
    /// dropped.
    pub fn release_events(&mut self) -> bool {
        let released = self.handle.as_mut().is_some_and(|h| h.release());
        if released {
            self.events = Vec::new();
        }
        released
    }

    pub async fn commit(mut self) -> Result<(), CommitError> {
        let events = std::mem::take(&mut self.events);
        match self.handle.take() {
            Some(handle) => handle.commit(events).await,
            None => Ok(()),
        }
    }

    pub fn rollback(self) {
        // Drop does the work.
    }
}

impl Drop for TakeTransaction {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.rollback(std::mem::take(&mut self.events));
        }
    }
}

impl std::fmt::Debug for TakeTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakeTransaction")
            .field("events", &self.events.len())
            .finish()
    }
}
