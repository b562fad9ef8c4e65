//! The in-flight bytes budget of one listener: request bytes read from all its connections
//! and not yet answered (or, for the line sources, not yet committed). A per-connection limit
//! (`max_frame_bytes`, `max_line_length`, `max_message_bytes`) bounds one connection; this
//! bounds their sum, so many peers sending large requests at once cannot take unbounded
//! memory.
//!
//! A connection charges every read to the budget. When the budget is spent it stops reading
//! (TCP pushes back on the sender) until answered requests give bytes back; a peer stuck
//! waiting longer than the server's `frame_timeout` (`idle_timeout` for the line sources) is
//! closed, and the client retries its unacknowledged request. Reads are charged after they
//! happen, so the budget can be overdrawn by at most one [`READ_CHUNK`] per connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use crate::accept::{LogEvery, LOG_INTERVAL};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, Take};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tracing::warn;

/// The most one read takes from a connection.
pub const READ_CHUNK: usize = 8 * 1024;

/// A listener's budget; clones share it.
#[derive(Debug, Clone)]
pub struct InFlightBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    exhausted_log: Arc<Mutex<LogEvery>>,
}

impl InFlightBudget {
    pub fn new(total: usize) -> Self {
        // A semaphore holds at most `Semaphore::MAX_PERMITS`.
        let total = total.min(Semaphore::MAX_PERMITS);
        InFlightBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            exhausted_log: Arc::new(Mutex::new(LogEvery::new(LOG_INTERVAL))),
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not charged to any connection now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// A connection whose reads are charged to an [`InFlightBudget`] (or to nothing).
pub struct Budgeted<S> {
    inner: Take<S>,
    budget: Option<(InFlightBudget, PollSemaphore)>,
    /// Charged bytes; `held.num_permits() < read` while waiting for the budget.
    held: Option<OwnedSemaphorePermit>,
    /// Bytes read and not yet given back.
    read: usize,
}

impl<S: AsyncRead> Budgeted<S> {
    pub fn new(inner: S, budget: Option<&InFlightBudget>) -> Self {
        Budgeted {
            inner: tokio::io::AsyncReadExt::take(inner, READ_CHUNK as u64),
            budget: budget.map(|b| (b.clone(), PollSemaphore::new(b.bytes.clone()))),
            held: None,
            read: 0,
        }
    }
}

impl<S: AsyncRead> Budgeted<S> {
    fn held(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Only `still_buffered` bytes read so far are still in memory (the rest were answered):
    /// give the others back to the budget.
    pub fn release_to(&mut self, still_buffered: usize) {
        self.read = still_buffered.min(self.read);
        let surplus = self.held().saturating_sub(self.read);
        if surplus > 0 {
            if let Some(p) = self.held.as_mut() {
                drop(p.split(surplus));
            }
        }
    }

    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((budget, sem)) = this.budget.as_mut() {
            // Settle what was read before reading more.
            let held = this.held.as_ref().map_or(0, |p| p.num_permits());
            let debt = this.read.saturating_sub(held);
            if debt > 0 && held < budget.total {
                // Never wait for more than the budget can ever give this connection.
                let want = u32::try_from(debt.min(budget.total - held)).unwrap_or(u32::MAX);
                let got = match sem.poll_acquire_many(cx, want) {
                    Poll::Ready(p) => p,
                    Poll::Pending => {
                        let first = budget
                            .exhausted_log
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .ready();
                        if let Some(not_logged) = first {
                            warn!(
                                message = "in-flight bytes budget exhausted; connections wait before reading more",
                                max_in_flight_bytes = budget.total,
                                waits_not_logged = not_logged,
                            );
                        }
                        return Poll::Pending;
                    }
                };
                let Some(got) = got else {
                    return Poll::Ready(Err(io::Error::other("in-flight budget closed")));
                };
                match this.held.as_mut() {
                    Some(h) => h.merge(got),
                    None => this.held = Some(got),
                }
            }
        }
        let room = buf.remaining().min(READ_CHUNK);
        this.inner.set_limit(room as u64);
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read += buf.filled().len() - before;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_wait_for_the_budget_and_resume_when_bytes_are_given_back() {
        let budget = InFlightBudget::new(8);
        let (mut a_peer, a) = tokio::io::duplex(64);
        let (mut b_peer, b) = tokio::io::duplex(64);
        let mut a = Budgeted::new(a, Some(&budget));
        let mut b = Budgeted::new(b, Some(&budget));
        a_peer.write_all(b"aaaaa").await.unwrap();
        b_peer.write_all(b"bbbbbb").await.unwrap();
        let mut buf = [0u8; 16];
        // Charged after the fact: each connection may read one chunk before paying.
        assert_eq!(a.read(&mut buf).await.unwrap(), 5);
        assert_eq!(b.read(&mut buf).await.unwrap(), 6);
        // a pays its 5 of 8; b cannot pay 6 and must not read.
        a_peer.write_all(b"A").await.unwrap();
        assert_eq!(a.read(&mut buf).await.unwrap(), 1);
        b_peer.write_all(b"B").await.unwrap();
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut buf));
        assert!(blocked.await.is_err(), "b reads with the budget spent");
        // a's requests were answered: its bytes come back and b goes on.
        a.release_to(0);
        assert_eq!(a.held(), 0);
        assert_eq!(b.read(&mut buf).await.unwrap(), 1);
        assert_eq!(budget.available(), 2);
        b.release_to(0);
        assert_eq!(budget.available(), 8);
    }

    #[tokio::test]
    async fn no_budget_reads_freely() {
        let (mut peer, s) = tokio::io::duplex(64 * 1024);
        let mut s = Budgeted::new(s, None);
        peer.write_all(&[7u8; 20_000]).await.unwrap();
        drop(peer);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 20_000);
    }
}
