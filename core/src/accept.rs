//! Accepting TCP connections under limits, shared by every listener (`avro`, `spark`, `tcp`,
//! `syslog`, the HTTP server):
//! * peers refused by the listener's IP filter ([`crate::ipfilter`]) are closed right after
//!   accept, before they take a place;
//! * at most `max_connections` served at once; one more is closed right after accept, so the
//!   peer sees a clean close instead of a connection that hangs in the backlog;
//! * a failed `accept` (EMFILE/ENFILE: out of file descriptors) backs off, doubling up to 1 s,
//!   instead of spinning on a backlog it cannot empty;
//! * both are logged at most once per [`LOG_INTERVAL`], with how many were not logged, so a
//!   flood of connections cannot flood the log too.
//!
//! Also [`IdleTimeout`], an I/O wrapper that fails a connection with no traffic for a while,
//! for servers that do not time out idle connections themselves (the HTTP server).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{info, warn};

use crate::component::Backoff;
use crate::ipfilter::IpFilter;
use crate::metrics::{ComponentMetrics, Counter, MetricName};

/// The shortest time between two log lines about refused connections or failed accepts.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets an event through at most once per interval and counts the ones held back.
#[derive(Debug)]
pub struct LogEvery {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogEvery {
    pub fn new(interval: Duration) -> Self {
        LogEvery {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(held back since the last time)` when this occurrence should be logged.
    pub fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now - l < self.interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A connection within the limit; dropping `slot` frees its place.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: OwnedSemaphorePermit,
}

/// A listener that hands out connections within `max_connections` (see the module docs).
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    max_connections: usize,
    slots: Arc<Semaphore>,
    ip_filter: Option<IpFilter>,
    backoff: Backoff,
    filtered_log: LogEvery,
    refused_log: LogEvery,
    failed_log: LogEvery,
    rejected: Counter,
    errors: Counter,
}

impl Acceptor {
    /// Counts refused connections in `weir_connections_rejected_total` and failed accepts in
    /// `weir_errors_total` of `metrics`.
    pub fn new(listener: TcpListener, max_connections: usize, metrics: &ComponentMetrics) -> Self {
        Acceptor {
            listener,
            max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            ip_filter: None,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            filtered_log: LogEvery::new(LOG_INTERVAL),
            refused_log: LogEvery::new(LOG_INTERVAL),
            failed_log: LogEvery::new(LOG_INTERVAL),
            rejected: metrics.counter(MetricName::ConnectionsRejectedTotal),
            errors: metrics.counter(MetricName::ErrorsTotal),
        }
    }

    /// Closes connections from peers `filter` refuses (Flume's `ipFilterRules`), counted in
    /// `weir_connections_rejected_total`.
    pub fn with_ip_filter(mut self, filter: Option<IpFilter>) -> Self {
        self.ip_filter = filter;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection that fits the limit. Refused connections and failed accepts are
    /// handled (closed, counted, logged, backed off) here and never returned. Cancel-safe.
    pub async fn accept(&mut self) -> Accepted {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    if let Some(filter) = &self.ip_filter {
                        let local = stream.local_addr().ok().map(|a| a.ip());
                        if !filter.allows(peer.ip(), local) {
                            self.rejected.inc(1);
                            if let Some(not_logged) = self.filtered_log.ready() {
                                info!(
                                    message = "connection refused by ip filter",
                                    %peer,
                                    refused_not_logged = not_logged,
                                    log_interval = ?LOG_INTERVAL,
                                );
                            }
                            continue;
                        }
                    }
                    match self.slots.clone().try_acquire_owned() {
                        Ok(slot) => return Accepted { stream, peer, slot },
                        Err(_) => {
                            self.rejected.inc(1);
                            if let Some(not_logged) = self.refused_log.ready() {
                                warn!(
                                    message = "connection refused: too many connections",
                                    %peer,
                                    max_connections = self.max_connections,
                                    refused_not_logged = not_logged,
                                    log_interval = ?LOG_INTERVAL,
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    self.errors.inc(1);
                    let delay = self.backoff.next_delay();
                    if let Some(not_logged) = self.failed_log.ready() {
                        let out_of_files = matches!(e.raw_os_error(), Some(23 | 24));
                        warn!(
                            message = if out_of_files {
                                "accept failed: out of file descriptors (EMFILE/ENFILE); backing off"
                            } else {
                                "accept failed; backing off"
                            },
                            error = %e,
                            backoff = ?delay,
                            failures_not_logged = not_logged,
                            log_interval = ?LOG_INTERVAL,
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Wraps a connection so that reading fails with [`io::ErrorKind::TimedOut`] once neither
/// direction moved a byte for `timeout`. Pending reads are what notice: a server waiting for
/// a request sees the error, a server busy answering one does not.
#[derive(Debug)]
pub struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("idle for {:?}", self.timeout),
                )))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.progressed();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Registry;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn log_every_lets_one_through_per_interval_and_counts_the_rest() {
        let mut log = LogEvery::new(Duration::from_secs(10));
        assert_eq!(log.ready(), Some(0));
        assert_eq!(log.ready(), None);
        assert_eq!(log.ready(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(log.ready(), Some(2));
        assert_eq!(log.ready(), None);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = ComponentMetrics::new(Registry::default(), "source", "t");
        let mut acceptor = Acceptor::new(listener, 1, &metrics);
        let first = TcpStream::connect(addr).await.unwrap();
        let kept = acceptor.accept().await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        // The refused ones are closed while accept() waits for one that fits.
        let accept = tokio::spawn(async move {
            let next = acceptor.accept().await;
            (acceptor, next)
        });
        for refused in [&mut second, &mut third] {
            let mut buf = [0u8; 1];
            assert_eq!(refused.read(&mut buf).await.unwrap_or(0), 0, "closed");
        }
        assert_eq!(
            metrics.counter(MetricName::ConnectionsRejectedTotal).get(),
            2
        );
        drop(kept);
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        let (_acceptor, next) = accept.await.unwrap();
        fourth.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        let mut stream = next.stream;
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
        drop(first);
    }

    #[tokio::test]
    async fn peers_the_ip_filter_refuses_are_closed_before_taking_a_place() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = ComponentMetrics::new(Registry::default(), "source", "t");
        // One place only: a refused peer must not use it up.
        let filter = IpFilter::parse("deny:ip:127.0.0.2,allow:ip:*").unwrap();
        let mut acceptor = Acceptor::new(listener, 1, &metrics).with_ip_filter(Some(filter));
        let denied = tokio::net::TcpSocket::new_v4().unwrap();
        denied.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut denied = denied.connect(addr).await.unwrap();
        let mut allowed = TcpStream::connect(addr).await.unwrap();
        let next = acceptor.accept().await;
        assert_eq!(next.peer.ip().to_string(), "127.0.0.1");
        let mut buf = [0u8; 1];
        assert_eq!(denied.read(&mut buf).await.unwrap_or(0), 0, "closed");
        assert_eq!(
            metrics.counter(MetricName::ConnectionsRejectedTotal).get(),
            1
        );
        allowed.write_all(b"x").await.unwrap();
        let mut stream = next.stream;
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fails_a_silent_connection_but_not_a_talking_one() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(5));
        let mut client = client;
        let talker = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                client.write_all(b"a").await.unwrap();
            }
            client
        });
        let mut buf = [0u8; 1];
        for _ in 0..3 {
            server.read_exact(&mut buf).await.unwrap();
        }
        let _client = talker.await.unwrap();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
