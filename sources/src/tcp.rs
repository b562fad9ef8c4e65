//! The `tcp` source: newline-delimited lines over TCP, compatible with Flume's netcat source.
//!
//! Differences from Flume, on purpose:
//! * complete lines already buffered are put as one batch (one channel transaction) instead of
//!   one transaction per line; with `ack = true` each line still gets its own `OK` after the
//!   batch committed, so a netcat client sees exactly what Flume would send;
//! * with `ack = false` a full channel is retried with backoff (the connection stops being read,
//!   which pushes back on the sender) instead of dropping the line;
//! * a last line without a newline is delivered when the client closes, not dropped;
//! * connections are bounded (`max_connections`); idle ones, and ones whose line is not
//!   complete `idle_timeout` after its first byte, are closed;
//! * optional TLS (`tls`) and Flume's `ipFilterRules` (`ip_filter`), which Flume's netcat
//!   source does not have.
//!
//! Like Flume, a line of `max_line_length` bytes or more (the newline counts) is refused with
//! `FAILED: Event exceeds the maximum length (N chars, including newline)` and the connection is
//! closed: a sender whose framing is broken should not have the rest of its stream
//! reinterpreted as lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept::Gate;
use tracing::{debug, info, warn};
use weir_avro_rpc::transport::BoxStream;
use weir_core::budget::{Budgeted, InFlightBudget};
use weir_core::component::Backoff;
use weir_core::metrics::{ComponentMetrics, Counter, MetricName};
use weir_core::tls::TlsServerSettings;
use weir_core::{
    ByteSize, ChannelProcessor, ComponentError, ConfigDuration, Event, PutError, Source,
    SourceContext,
};

/// `[sources.NAME] type = "tcp"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpSourceConfig {
    /// Address to listen on, e.g. `"127.0.0.1:44444"`; port 0 picks a free port (logged).
    pub bind: SocketAddr,
    /// Longest accepted line in bytes, counting the newline (Flume's `max-line-length`).
    #[serde(default = "default_max_line_length")]
    pub max_line_length: usize,
    /// Reply `OK` to each line once it is committed to the channels, and `FAILED: …` when they
    /// refuse it (Flume's `ack-every-event`).
    #[serde(default)]
    pub ack: bool,
    /// Most connections served at once; further ones are closed at accept and logged.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed, and so is one whose line is
    /// not complete this long after its first byte.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Bytes read from all connections and not yet committed to the channels; when spent,
    /// connections wait before reading more (at least `max_line_length`).
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: ByteSize,
    /// Most lines put into the channels as one transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// TLS with a PEM certificate chain and key: `tls = { cert = "cert.pem", key = "key.pem" }`.
    /// The handshake must finish within `idle_timeout`.
    #[serde(default)]
    pub tls: Option<TlsServerSettings>,
    /// Flume's `ipFilterRules` syntax: `allow:ip:10.*,deny:ip:*`, first match wins, no match =
    /// accept. Unset = accept everyone.
    #[serde(default)]
    pub ip_filter: Option<String>,
}

const fn default_max_line_length() -> usize {
    512
}
const fn default_max_connections() -> usize {
    1024
}
const fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
const fn default_max_in_flight_bytes() -> ByteSize {
    ByteSize(16 * 1024 * 1024)
}
const fn default_batch_size() -> usize {
    100
}

impl TcpSourceConfig {
    pub fn from_address(bind: SocketAddr) -> Self {
        TcpSourceConfig {
            bind,
            max_line_length: default_max_line_length(),
            ack: false,
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            batch_size: default_batch_size(),
            tls: None,
            ip_filter: None,
        }
    }

    /// Settings that deserialize but make no sense, with the key they belong to.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.max_line_length < 2 {
            errors.push((
                "max_line_length",
                "must be at least 2 (one byte and the newline)".into(),
            ));
        }
        if self.max_connections == 0 {
            errors.push(("max_connections", "must be at least 1".into()));
        }
        if self.batch_size == 0 {
            errors.push(("batch_size", "must be at least 1".into()));
        }
        errors.extend(Gate::check(self.ip_filter.as_deref(), self.tls.as_ref()));
        if self.max_in_flight_bytes.0 < self.max_line_length as u64 {
            errors.push((
                "max_in_flight_bytes",
                "must be at least max_line_length".into(),
            ));
        }
        errors
    }

    pub fn build(&self) -> TcpSource {
        TcpSource {
            config: self.clone(),
        }
    }
}

pub struct TcpSource {
    config: TcpSourceConfig,
}

#[derive(Clone)]
struct ConnectionCounters {
    received: Counter,
    accepted: Counter,
    bytes: Counter,
    refused: Counter,
}

impl ConnectionCounters {
    fn new(m: &ComponentMetrics) -> Self {
        ConnectionCounters {
            received: m.counter(MetricName::EventsReceivedTotal),
            accepted: m.counter(MetricName::EventsAcceptedTotal),
            bytes: m.counter(MetricName::BytesReceivedTotal),
            refused: m.counter(MetricName::BatchesRefusedTotal),
        }
    }
}

#[async_trait]
impl Source for TcpSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let cfg = Arc::new(self.config);
        let gate = Gate::new(
            cfg.ip_filter.as_deref(),
            cfg.tls.as_ref(),
            cfg.idle_timeout.0,
        )?;
        let listener = TcpListener::bind(cfg.bind)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
        let addr = listener.local_addr()?;
        info!(
            message = "tcp source listening",
            %addr,
            tls = cfg.tls.is_some(),
            hint = %format!("send a line with: echo hello > /dev/tcp/{}/{}", addr.ip(), addr.port()),
        );
        cx.ready.set();
        let counters = ConnectionCounters::new(&cx.metrics);
        let budget =
            InFlightBudget::new(usize::try_from(cfg.max_in_flight_bytes.0).unwrap_or(usize::MAX));
        let (conn_cfg, output, shutdown) = (cfg.clone(), cx.output.clone(), cx.shutdown.clone());
        crate::accept::serve_connections(
            listener,
            cfg.max_connections,
            gate,
            &cx.shutdown,
            &cx.metrics,
            move |stream, peer| {
                let conn = Connection {
                    budget: budget.clone(),
                    cfg: conn_cfg.clone(),
                    output: output.clone(),
                    shutdown: shutdown.clone(),
                    counters: counters.clone(),
                    peer,
                };
                async move { conn.serve(stream).await }
            },
        )
        .await;
        info!("tcp source stopped");
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("line of {length}+ bytes exceeds max_line_length {limit}")]
    LineTooLong { length: usize, limit: usize },
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("line not complete {0:?} after its first byte")]
    LineTimeout(Duration),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

struct Connection {
    budget: InFlightBudget,
    cfg: Arc<TcpSourceConfig>,
    output: Arc<ChannelProcessor>,
    shutdown: CancellationToken,
    counters: ConnectionCounters,
    peer: SocketAddr,
}

/// Splits complete lines off the front of a buffer, remembering how far it already looked
/// so a long partial line is not rescanned on every read.
struct LineSplitter {
    scanned: usize,
}

impl LineSplitter {
    /// The next complete line (without its `\n`), sharing the buffer's memory.
    fn next_line(&mut self, buf: &mut BytesMut) -> Option<Bytes> {
        let pos = buf[self.scanned..].iter().position(|&b| b == b'\n')?;
        let end = self.scanned + pos;
        self.scanned = 0;
        let mut line = buf.split_to(end + 1).freeze();
        line.truncate(end);
        Some(line)
    }

    fn mark_scanned(&mut self, buf: &BytesMut) {
        self.scanned = buf.len();
    }
}

impl Connection {
    async fn serve(&self, stream: BoxStream) -> Result<(), ConnectionError> {
        let mut stream = Budgeted::new(stream, Some(&self.budget));
        let idle = self.cfg.idle_timeout.0;
        let limit = self.cfg.max_line_length;
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut splitter = LineSplitter { scanned: 0 };
        let mut batch: Vec<Event> = Vec::with_capacity(self.cfg.batch_size);
        // When the partial line at the end of `buf` began (as first seen here).
        let mut line_started: Option<tokio::time::Instant> = None;
        loop {
            while let Some(line) = splitter.next_line(&mut buf) {
                line_started = None;
                if line.len() + 1 > limit {
                    self.flush(&mut stream, &mut batch).await?;
                    return self.refuse_long_line(&mut stream, line.len() + 1).await;
                }
                batch.push(Event::new(line));
                if batch.len() >= self.cfg.batch_size {
                    self.flush(&mut stream, &mut batch).await?;
                }
            }
            splitter.mark_scanned(&buf);
            // The newline would make a partial line this long too long as well.
            if buf.len() >= limit {
                self.flush(&mut stream, &mut batch).await?;
                return self.refuse_long_line(&mut stream, buf.len()).await;
            }
            self.flush(&mut stream, &mut batch).await?;
            // Every complete line is committed: only the partial one stays charged.
            stream.release_to(buf.len());
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            // A started line must be complete within `idle_timeout` of its first byte, so a
            // client trickling bytes cannot hold its place forever.
            let wait = match buf.is_empty() {
                true => idle,
                false => idle.saturating_sub(
                    line_started
                        .get_or_insert_with(tokio::time::Instant::now)
                        .elapsed(),
                ),
            };
            let n = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                res = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => match res {
                    Err(_) if buf.is_empty() => return Err(ConnectionError::Idle(idle)),
                    Err(_) => return Err(ConnectionError::LineTimeout(idle)),
                    Ok(res) => res?,
                },
            };
            self.counters.bytes.inc(n as u64);
            if n == 0 {
                if !buf.is_empty() {
                    // A last line without a newline: deliver it rather than drop it.
                    batch.push(Event::new(buf.split().freeze()));
                    self.flush(&mut stream, &mut batch).await?;
                }
                return Ok(());
            }
        }
    }

    async fn refuse_long_line(
        &self,
        stream: &mut Budgeted<BoxStream>,
        length: usize,
    ) -> Result<(), ConnectionError> {
        self.counters.received.inc(1);
        let reply = format!(
            "FAILED: Event exceeds the maximum length ({} chars, including newline)\n",
            self.cfg.max_line_length
        );
        // Best effort: the client may already be gone.
        let _ = stream.write_all(reply.as_bytes()).await;
        Err(ConnectionError::LineTooLong {
            length,
            limit: self.cfg.max_line_length,
        })
    }

    /// Puts the batch; answers each line when `ack` is on.
    async fn flush(
        &self,
        stream: &mut Budgeted<BoxStream>,
        batch: &mut Vec<Event>,
    ) -> Result<(), ConnectionError> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len();
        self.counters.received.inc(n as u64);
        let events = std::mem::replace(batch, Vec::with_capacity(self.cfg.batch_size));
        let result = if self.cfg.ack {
            self.output.put(events).await
        } else {
            self.put_with_retry(events).await
        };
        match result {
            Ok(()) => {
                self.counters.accepted.inc(n as u64);
                if self.cfg.ack {
                    stream.write_all(&b"OK\n".repeat(n)).await?;
                }
            }
            Err(e) => {
                self.counters.refused.inc(1);
                warn!(message = "lines refused by channel", lines = n, error = %e, peer = %self.peer);
                let reply = format!("FAILED: {e}\n");
                stream.write_all(reply.repeat(n).as_bytes()).await?;
            }
        }
        Ok(())
    }

    /// Without acks the client cannot resend, so a refused batch is retried until it fits,
    /// not reading further meanwhile. Only shutdown ends the wait (the lines are then lost,
    /// which is logged).
    async fn put_with_retry(&self, events: Vec<Event>) -> Result<(), PutError> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match self.output.put(events.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.counters.refused.inc(1);
                    if self.shutdown.is_cancelled() {
                        tracing::error!(message = "lines lost at shutdown: channel kept refusing them", lines = events.len(), error = %e);
                        return Ok(());
                    }
                    debug!(message = "channel refused lines; retrying", error = %e);
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[test]
    fn splitter_keeps_carriage_returns_and_waits_for_newline() {
        let mut buf = BytesMut::from(&b"a\r\nbb\npart"[..]);
        let mut s = LineSplitter { scanned: 0 };
        assert_eq!(s.next_line(&mut buf).unwrap(), Bytes::from_static(b"a\r"));
        assert_eq!(s.next_line(&mut buf).unwrap(), Bytes::from_static(b"bb"));
        assert!(s.next_line(&mut buf).is_none());
        s.mark_scanned(&buf);
        buf.extend_from_slice(b"ial\n");
        assert_eq!(
            s.next_line(&mut buf).unwrap(),
            Bytes::from_static(b"partial")
        );
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn a_full_channel_is_answered_with_failed_per_line() {
        use tokio::io::{AsyncBufReadExt, BufReader};
        use weir_core::metrics::{ComponentMetrics, Registry};
        use weir_core::{Channel, MemoryChannel, MemoryChannelConfig, SelectorConfig};

        let channel = Arc::new(MemoryChannel::new(
            "c",
            MemoryChannelConfig {
                max_events: 2,
                ..Default::default()
            },
        ));
        let output = Arc::new(
            ChannelProcessor::new(vec![channel.clone()], &SelectorConfig::default()).unwrap(),
        );
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let mut config = TcpSourceConfig::from_address(addr);
        config.ack = true;
        let shutdown = CancellationToken::new();
        let cx = SourceContext {
            id: "t".into(),
            output,
            shutdown: shutdown.clone(),
            metrics: ComponentMetrics::new(Registry::default(), "source", "t"),
            ready: Default::default(),
        };
        let task = tokio::spawn(Box::new(config.build()).run(cx));
        let stream = loop {
            match TcpStream::connect(addr).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (read, mut write) = stream.into_split();
        let mut replies = BufReader::new(read).lines();
        write.write_all(b"a\nb\nc\nd\n").await.unwrap();
        let mut ok = 0;
        let mut failed = 0;
        for _ in 0..4 {
            let reply = replies.next_line().await.unwrap().unwrap();
            if reply == "OK" {
                ok += 1;
            } else {
                assert!(reply.starts_with("FAILED: channel `c` is full"), "{reply}");
                failed += 1;
            }
        }
        assert!(failed >= 2, "at most two of four lines fit");
        assert_eq!(channel.stats().events, ok);
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let err =
            toml::from_str::<TcpSourceConfig>("bind = \"127.0.0.1:1\"\nbindd = 3").unwrap_err();
        assert!(err.to_string().contains("unknown field `bindd`"), "{err}");
    }
}
