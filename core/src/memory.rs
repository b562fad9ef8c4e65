//! The `memory` channel: a bounded in-RAM queue. Fast, and lossy on crash or `kill -9` by
//! design (Flume's MemoryChannel is the same); use the `file` channel where acknowledged
//! events must survive the process.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::channel::{
    wait_readable, Channel, ChannelFull, ChannelStats, CommitError, PutError, TakeError,
    TakeHandle, TakeTransaction,
};
use crate::event::{batch_bytes, Event};
use crate::units::ByteSize;

/// `[channels.NAME] type = "memory"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemoryChannelConfig {
    /// Most events held at once, counting taken-but-uncommitted ones (Flume's `capacity`).
    #[serde(default = "default_max_events")]
    pub max_events: u64,
    /// Most bytes (bodies plus header text) held at once (Flume's `byteCapacity`).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Most events in one put; larger puts are refused, larger takes are capped
    /// (Flume's `transactionCapacity`, whose default of 100 is too small for Spark's pollers).
    #[serde(default = "default_transaction_capacity")]
    pub transaction_capacity: usize,
}

const fn default_max_events() -> u64 {
    100_000
}
const fn default_max_bytes() -> ByteSize {
    ByteSize(64 * 1024 * 1024)
}
const fn default_transaction_capacity() -> usize {
    10_000
}

impl Default for MemoryChannelConfig {
    fn default() -> Self {
        MemoryChannelConfig {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            transaction_capacity: default_transaction_capacity(),
        }
    }
}

/// Events carry the sequence number of their put so a rollback puts them back exactly where
/// they were, whatever order concurrent transactions roll back in.
struct State {
    queue: VecDeque<(u64, Event)>,
    next_seq: u64,
    held_events: u64,
    held_bytes: u64,
}

struct Inner {
    name: String,
    config: MemoryChannelConfig,
    state: Mutex<State>,
    readable: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the process, so recover the guard instead of propagating.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
pub struct MemoryChannel {
    inner: Arc<Inner>,
}

impl MemoryChannel {
    pub fn new(name: impl Into<String>, config: MemoryChannelConfig) -> Self {
        MemoryChannel {
            inner: Arc::new(Inner {
                name: name.into(),
                config,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    next_seq: 0,
                    held_events: 0,
                    held_bytes: 0,
                }),
                readable: Notify::new(),
            }),
        }
    }
}

#[async_trait]
impl Channel for MemoryChannel {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn put(&self, events: Vec<Event>) -> Result<(), PutError> {
        if events.is_empty() {
            return Ok(());
        }
        let cfg = &self.inner.config;
        if events.len() > cfg.transaction_capacity {
            return Err(PutError::TooLarge {
                channel: self.inner.name.clone(),
                events: events.len(),
                limit: cfg.transaction_capacity,
            });
        }
        let bytes = batch_bytes(&events) as u64;
        {
            let mut st = self.inner.lock();
            let n = events.len() as u64;
            if st.held_events + n > cfg.max_events || st.held_bytes + bytes > cfg.max_bytes.0 {
                return Err(ChannelFull {
                    channel: self.inner.name.clone(),
                    events: st.held_events,
                    max_events: cfg.max_events,
                    bytes: st.held_bytes,
                    max_bytes: cfg.max_bytes.0,
                    batch_events: n,
                    batch_bytes: bytes,
                }
                .into());
            }
            st.held_events += n;
            st.held_bytes += bytes;
            let first = st.next_seq;
            st.next_seq += n;
            st.queue.extend(
                events
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| (first + i as u64, e)),
            );
        }
        self.inner.readable.notify_waiters();
        Ok(())
    }

    async fn take(&self, max: usize) -> Result<Option<TakeTransaction>, TakeError> {
        let max = max.min(self.inner.config.transaction_capacity);
        let mut st = self.inner.lock();
        let n = max.min(st.queue.len());
        if n == 0 {
            return Ok(None);
        }
        let mut seqs = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        for (seq, event) in st.queue.drain(..n) {
            seqs.push(seq);
            events.push(event);
        }
        drop(st);
        let bytes = batch_bytes(&events) as u64;
        let handle = MemoryTake {
            inner: self.inner.clone(),
            seqs,
            bytes,
        };
        Ok(Some(TakeTransaction::new(events, Box::new(handle))))
    }

    async fn wait_for_events(&self) {
        wait_readable(&self.inner.readable, || !self.inner.lock().queue.is_empty()).await
    }

    fn stats(&self) -> ChannelStats {
        let st = self.inner.lock();
        ChannelStats {
            events: st.held_events,
            bytes: st.held_bytes,
            max_events: self.inner.config.max_events,
            max_bytes: self.inner.config.max_bytes.0,
        }
    }

    fn queued(&self) -> Option<u64> {
        Some(self.inner.lock().queue.len() as u64)
    }

    fn is_durable(&self) -> bool {
        false
    }
}

struct MemoryTake {
    inner: Arc<Inner>,
    seqs: Vec<u64>,
    bytes: u64,
}

#[async_trait]
impl TakeHandle for MemoryTake {
    async fn commit(self: Box<Self>, _events: Vec<Event>) -> Result<(), CommitError> {
        let mut st = self.inner.lock();
        st.held_events -= self.seqs.len() as u64;
        st.held_bytes -= self.bytes;
        Ok(())
    }

    fn rollback(self: Box<Self>, events: Vec<Event>) {
        if self.seqs.is_empty() {
            return;
        }
        {
            let mut st = self.inner.lock();
            // The queue stays sorted by sequence number. A taken batch may have gaps (events
            // of another open transaction) that were rolled back meanwhile, so each event goes
            // to its own place; those places are near the front.
            for (seq, event) in self.seqs.iter().zip(events) {
                let at = st.queue.partition_point(|(s, _)| s < seq);
                st.queue.insert(at, (*seq, event));
            }
        }
        self.inner.readable.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    fn ev(i: u64) -> Event {
        Event::new(i.to_string())
    }

    fn ids(t: &TakeTransaction) -> Vec<u64> {
        t.events()
            .iter()
            .map(|e| std::str::from_utf8(&e.body).unwrap().parse().unwrap())
            .collect()
    }

    fn channel(max_events: u64, max_bytes: u64) -> MemoryChannel {
        MemoryChannel::new(
            "c",
            MemoryChannelConfig {
                max_events,
                max_bytes: ByteSize(max_bytes),
                transaction_capacity: 1000,
            },
        )
    }

    #[tokio::test]
    async fn full_channel_refuses_at_once_with_channel_full() {
        let ch = channel(3, 1 << 20);
        ch.put(vec![ev(1), ev(2)]).await.unwrap();
        let err = ch.put(vec![ev(3), ev(4)]).await.unwrap_err();
        match err {
            PutError::Full(full) => {
                assert_eq!((full.events, full.max_events, full.batch_events), (2, 3, 2));
            }
            other => panic!("expected Full, got {other:?}"),
        }
        // Nothing of the refused batch went in.
        assert_eq!(ch.stats().events, 2);
    }

    #[tokio::test]
    async fn byte_bound_refuses_too() {
        let ch = channel(100, 10);
        ch.put(vec![Event::new("12345678")]).await.unwrap();
        assert!(ch.put(vec![Event::new("123")]).await.unwrap_err().is_full());
    }

    #[tokio::test]
    async fn taken_events_hold_capacity_until_commit() {
        let ch = channel(2, 1 << 20);
        ch.put(vec![ev(1), ev(2)]).await.unwrap();
        let t = ch.take(2).await.unwrap().unwrap();
        assert!(ch.put(vec![ev(3)]).await.unwrap_err().is_full());
        t.commit().await.unwrap();
        ch.put(vec![ev(3)]).await.unwrap();
    }

    #[tokio::test]
    async fn rollback_redelivers_in_order_ahead_of_newer_events() {
        let ch = channel(100, 1 << 20);
        ch.put((1..=6).map(ev).collect()).await.unwrap();
        let a = ch.take(2).await.unwrap().unwrap();
        let b = ch.take(2).await.unwrap().unwrap();
        ch.put(vec![ev(7)]).await.unwrap();
        // Roll back in the "wrong" order: the channel still restores put order.
        a.rollback();
        drop(b);
        let all = ch.take(100).await.unwrap().unwrap();
        assert_eq!(ids(&all), vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[tokio::test]
    async fn oversized_put_is_too_large() {
        let ch = MemoryChannel::new(
            "c",
            MemoryChannelConfig {
                transaction_capacity: 2,
                ..Default::default()
            },
        );
        assert!(matches!(
            ch.put(vec![ev(1), ev(2), ev(3)]).await,
            Err(PutError::TooLarge { limit: 2, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_events_wakes_on_put() {
        let ch = channel(100, 1 << 20);
        let waiter = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.wait_for_events().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        ch.put(vec![ev(1)]).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8),
        Take(u8),
        Commit(u8),
        Rollback(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..8).prop_map(Op::Put),
            (1u8..8).prop_map(Op::Take),
            any::<u8>().prop_map(Op::Commit),
            any::<u8>().prop_map(Op::Rollback),
        ]
    }

    proptest! {
        /// The channel behaves like "available ids in put order; take hands out the smallest".
        #[test]
        fn behaves_like_ordered_set_model(ops in proptest::collection::vec(op(), 1..80)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let ch = channel(20, 1 << 20);
                let mut next = 0u64;
                let mut available = BTreeSet::new();
                let mut open: Vec<(TakeTransaction, Vec<u64>)> = Vec::new();
                let mut held = 0u64;
                for op in ops {
                    match op {
                        Op::Put(n) => {
                            let batch: Vec<u64> = (next..next + n as u64).collect();
                            let res = ch.put(batch.iter().copied().map(ev).collect()).await;
                            if held + n as u64 > 20 {
                                prop_assert!(res.unwrap_err().is_full());
                            } else {
                                res.unwrap();
                                held += n as u64;
                                available.extend(batch);
                                next += n as u64;
                            }
                        }
                        Op::Take(n) => {
                            let expect: Vec<u64> = available.iter().copied().take(n as usize).collect();
                            match ch.take(n as usize).await.unwrap() {
                                None => prop_assert!(expect.is_empty()),
                                Some(t) => {
                                    prop_assert_eq!(ids(&t), expect.clone());
                                    for id in &expect { available.remove(id); }
                                    open.push((t, expect));
                                }
                            }
                        }
                        Op::Commit(i) if !open.is_empty() => {
                            let (t, taken) = open.remove(i as usize % open.len());
                            t.commit().await.unwrap();
                            held -= taken.len() as u64;
                        }
                        Op::Rollback(i) if !open.is_empty() => {
                            let (t, taken) = open.remove(i as usize % open.len());
                            t.rollback();
                            available.extend(taken);
                        }
                        _ => {}
                    }
                    prop_assert_eq!(ch.stats().events, held);
                }
                Ok(())
            })?;
        }
    }
}
