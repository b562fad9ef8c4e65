//! The `spark` sink: the server side of Spark's Flume polling protocol (`SparkFlumeProtocol`),
//! byte-compatible with `FlumeUtils.createPollingStream` and with weir's `spark_pull` source.
//!
//! `getEventBatch(n)` takes up to `n` events from the channel in a take transaction and hands
//! them out under a fresh sequence number; `ack(seq)` commits that transaction, `nack(seq)`
//! rolls it back, and a transaction left unanswered for `transaction_timeout` rolls back by
//! itself. Differences from Spark's sink, on purpose:
//! * an empty channel is waited on for at most `empty_wait`, then answered with the error
//!   batch Spark's sink uses when it finds nothing, which Spark's poller treats as "no batch
//!   yet" — so a poller never hangs on an idle agent;
//! * when the connection that received a batch closes before answering, the batch is rolled
//!   back at once instead of at the timeout: Spark's poller acks on the connection it polled
//!   on, so nobody can ack it any more and waiting would only delay redelivery. A late ack
//!   from elsewhere is ignored like one after a timeout (at-least-once either way);
//! * `n ≤ 0` gets an error batch instead of an open transaction; `n` is capped at `max_batch`
//!   (and by the channel's transaction capacity) rather than failing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_avro_rpc::datum::{self, Reader};
use weir_avro_rpc::listener::{self, ListenerSettings};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::server::{ConnectionInfo, Responder, RpcServer};
use weir_avro_rpc::transport::{Compression, Layering};
use weir_core::metrics::{Counter, MetricName};
use weir_core::tls::TlsServerSettings;
use weir_core::{
    ByteSize, Channel, ComponentError, ConfigDuration, Sink, SinkContext, TakeTransaction,
};

/// What Spark's sink answers when stopped.
pub const STOPPED: &str = "Spark sink has been stopped!";
/// What Spark's sink answers when it found no events; pollers retry.
pub const NOTHING: &str = "Tried several times, but did not get any events from the channel!";

/// `[sinks.NAME] type = "spark"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SparkSinkConfig {
    /// Address pollers connect to (Spark's sink `hostname` + `port`).
    pub bind: SocketAddr,
    /// Most batches handed out and not yet acked, nacked or timed out (Spark's `threads`).
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Roll back a handed-out batch not answered within this (Spark's `timeout`, 60 s).
    #[serde(default = "default_transaction_timeout")]
    pub transaction_timeout: ConfigDuration,
    /// How long `getEventBatch` waits for a first event before answering "nothing yet".
    #[serde(default = "default_empty_wait")]
    pub empty_wait: ConfigDuration,
    /// Cap on `n` in `getEventBatch(n)`.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Most poller connections at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// TLS with a PEM certificate and key: `tls = { cert = "…", key = "…" }`.
    #[serde(default)]
    pub tls: Option<TlsServerSettings>,
    /// `"deflate"` for pollers built with `enableDecompression`-style zlib (Spark's poller has none).
    #[serde(default)]
    pub compression: Compression,
    /// Flume's `ipFilterRules` syntax; unset = accept all.
    #[serde(default)]
    pub ip_filter: Option<String>,
    /// Largest accepted request pack (pollers send small ones); a larger one closes its
    /// connection before any of it is buffered.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: ByteSize,
    /// Request bytes read from all poller connections and not yet answered; when spent,
    /// connections wait before reading more (at least `max_frame_bytes`).
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: ByteSize,
    /// Close a poller connection that sends no request for this long. Unset = never: Spark's
    /// pollers keep their connections between polls.
    #[serde(default)]
    pub idle_timeout: Option<ConfigDuration>,
    /// Close a connection whose request is not complete this long after its first byte,
    /// however steadily it trickles in (also the TLS handshake limit).
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout: ConfigDuration,
}

const fn default_threads() -> usize {
    10
}
const fn default_transaction_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
const fn default_empty_wait() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
const fn default_max_batch() -> usize {
    10_000
}
const fn default_max_connections() -> usize {
    64
}
const fn default_max_frame_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}
const fn default_max_in_flight_bytes() -> ByteSize {
    ByteSize(16 * 1024 * 1024)
}
const fn default_frame_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

impl SparkSinkConfig {
    pub fn from_address(bind: SocketAddr) -> Self {
        SparkSinkConfig {
            bind,
            threads: default_threads(),
            transaction_timeout: default_transaction_timeout(),
            empty_wait: default_empty_wait(),
            max_batch: default_max_batch(),
            max_connections: default_max_connections(),
            tls: None,
            compression: Compression::None,
            ip_filter: None,
            max_frame_bytes: default_max_frame_bytes(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            idle_timeout: None,
            frame_timeout: default_frame_timeout(),
        }
    }

    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.threads == 0 {
            errors.push(("threads", "must be at least 1".into()));
        }
        if self.max_batch == 0 {
            errors.push(("max_batch", "must be at least 1".into()));
        }
        errors.extend(self.listener().check());
        errors
    }

    fn listener(&self) -> ListenerSettings<'_> {
        ListenerSettings {
            ip_filter: self.ip_filter.as_deref(),
            max_connections: self.max_connections,
            tls: self.tls.as_ref(),
            compression: self.compression,
            compression_level: 6,
            layering: Layering::default(),
            handshake_timeout: self.frame_timeout.0,
            max_frame_bytes: self.max_frame_bytes.0,
            max_in_flight_bytes: self.max_in_flight_bytes.0,
            idle_timeout: self.idle_timeout.map(Duration::from),
            frame_timeout: self.frame_timeout.0,
        }
    }

    pub fn build(&self) -> SparkSink {
        SparkSink {
            config: self.clone(),
        }
    }
}

pub struct SparkSink {
    config: SparkSinkConfig,
}

/// 8 random characters from `[A-Za-z0-9]`, once per sink start (Spark's `seqBase`), so an ack
/// from before a restart cannot commit a new transaction.
fn sequence_base() -> String {
    use std::hash::{BuildHasher, RandomState};
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut seed = RandomState::new().hash_one(std::time::SystemTime::now());
    (0..8)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ALPHABET[(seed >> 33) as usize % ALPHABET.len()] as char
        })
        .collect()
}

struct Pending {
    txn: TakeTransaction,
    peer: Option<SocketAddr>,
    _slot: OwnedSemaphorePermit,
    timer: tokio::task::JoinHandle<()>,
}

struct Counters {
    sent: Counter,
    timeouts: Counter,
    nacks: Counter,
    errors: Counter,
}

/// The transactions handed out and not yet answered, by sequence number.
struct SparkResponder {
    channel: Arc<dyn Channel>,
    config: SparkSinkConfig,
    base: String,
    counter: AtomicU64,
    slots: Arc<Semaphore>,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
    stopped: CancellationToken,
    counters: Arc<Counters>,
}

fn lock(
    pending: &Mutex<HashMap<String, Pending>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode_batch(error: &str, seq: &str, events: &[weir_core::Event]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + seq.len() + datum::events_encoded_len(events));
    datum::put_str(&mut b, error);
    datum::put_str(&mut b, seq);
    datum::put_events(&mut b, events);
    b.freeze()
}

fn error_batch(msg: &str) -> Bytes {
    encode_batch(msg, "", &[])
}

impl SparkResponder {
    async fn get_event_batch(&self, n: i32, conn: &ConnectionInfo) -> Bytes {
        if self.stopped.is_cancelled() {
            return error_batch(STOPPED);
        }
        if n <= 0 {
            return error_batch("n must be positive");
        }
        let n = (n as usize).min(self.config.max_batch);
        let wait = self.config.empty_wait.0;
        let deadline = tokio::time::Instant::now() + wait;
        // A free transaction slot, waited for like Spark's pool thread, but not forever.
        let slot = tokio::select! {
            s = self.slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return error_batch(STOPPED),
            },
            _ = tokio::time::sleep_until(deadline) => {
                return error_batch(&format!("all {} transaction slots are held by unacknowledged batches", self.config.threads));
            }
            _ = self.stopped.cancelled() => return error_batch(STOPPED),
        };
        let txn = loop {
            match self.channel.take(n).await {
                Ok(Some(txn)) => break txn,
                Ok(None) => {}
                Err(e) => {
                    self.counters.errors.inc(1);
                    return error_batch(&e.to_string());
                }
            }
            tokio::select! {
                _ = self.channel.wait_for_events() => {}
                _ = tokio::time::sleep_until(deadline) => return error_batch(NOTHING),
                _ = self.stopped.cancelled() => return error_batch(STOPPED),
            }
        };
        let seq = format!(
            "{}{}",
            self.base,
            self.counter.fetch_add(1, Ordering::Relaxed) + 1
        );
        let reply = encode_batch("", &seq, txn.events());
        let timer = {
            let pending = self.pending.clone();
            let seq = seq.clone();
            let timeout = self.config.transaction_timeout.0;
            let counters = self.counters.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                if let Some(p) = lock(&pending).remove(&seq) {
                    counters.timeouts.inc(1);
                    warn!(message = "batch not acknowledged in time; rolled back", seq = %seq, events = p.txn.len(), timeout = ?timeout);
                }
            })
        };
        debug!(message = "batch handed out", seq = %seq, events = txn.len());
        lock(&self.pending).insert(
            seq,
            Pending {
                txn,
                peer: conn.peer,
                _slot: slot,
                timer,
            },
        );
        reply
    }

    /// Like Spark's sink, the reply does not wait for the commit: the poller already holds
    /// the batch, and a commit lost to a crash only means the batch is delivered again. This
    /// keeps the channel's fdatasync off the poller's critical path.
    fn ack(&self, seq: &str) {
        let Some(p) = lock(&self.pending).remove(seq) else {
            info!(message = "ack for an unknown or expired batch ignored", seq = %seq);
            return;
        };
        p.timer.abort();
        let n = p.txn.len() as u64;
        let (counters, seq) = (self.counters.clone(), seq.to_string());
        tokio::spawn(async move {
            match p.txn.commit().await {
                Ok(()) => counters.sent.inc(n),
                Err(e) => {
                    counters.errors.inc(1);
                    warn!(message = "commit after ack failed; the batch will be delivered again", seq = %seq, error = %e);
                }
            }
        });
    }

    fn nack(&self, seq: &str) {
        match lock(&self.pending).remove(seq) {
            Some(p) => {
                p.timer.abort();
                self.counters.nacks.inc(1);
                debug!(message = "batch nacked; rolled back", seq = %seq, events = p.txn.len());
            }
            None => info!(message = "nack for an unknown or expired batch ignored", seq = %seq),
        }
    }

    /// Rolls back what a closed connection held (see the module doc).
    fn connection_closed(&self, conn: &ConnectionInfo) {
        let mut pending = lock(&self.pending);
        let orphaned: Vec<String> = pending
            .iter()
            .filter(|(_, p)| p.peer == conn.peer)
            .map(|(s, _)| s.clone())
            .collect();
        for seq in orphaned {
            if let Some(p) = pending.remove(&seq) {
                p.timer.abort();
                warn!(message = "poller disconnected holding a batch; rolled back", seq = %seq, events = p.txn.len(), peer = ?conn.peer);
            }
        }
    }
}

#[async_trait]
impl Responder for SparkResponder {
    async fn call(
        &self,
        message: &str,
        params: Bytes,
        conn: &ConnectionInfo,
    ) -> Result<Bytes, String> {
        let mut r = Reader::new(params);
        match message {
            "getEventBatch" => {
                let n = r.read_int().map_err(|e| e.to_string())?;
                Ok(self.get_event_batch(n, conn).await)
            }
            "ack" => {
                let seq = r.read_str("sequenceNumber").map_err(|e| e.to_string())?;
                self.ack(&seq);
                Ok(Bytes::new())
            }
            "nack" => {
                let seq = r.read_str("sequenceNumber").map_err(|e| e.to_string())?;
                self.nack(&seq);
                Ok(Bytes::new())
            }
            other => Err(format!(
                "org.apache.avro.AvroRuntimeException: No such remote message: {other}"
            )),
        }
    }

    fn connection_closed(&self, conn: &ConnectionInfo) {
        SparkResponder::connection_closed(self, conn)
    }
}

#[async_trait]
impl Sink for SparkSink {
    async fn run(self: Box<Self>, cx: SinkContext) -> Result<(), ComponentError> {
        let cfg = self.config;
        let options = cfg.listener().options()?;
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
        let addr = listener.local_addr()?;
        let base = sequence_base();
        info!(message = "spark sink listening", %addr, sequence_base = %base);
        cx.ready.set();
        let stopped = CancellationToken::new();
        let responder = Arc::new(SparkResponder {
            channel: cx.channel.clone(),
            base,
            counter: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(cfg.threads)),
            pending: Arc::new(Mutex::new(HashMap::new())),
            stopped: stopped.clone(),
            counters: Arc::new(Counters {
                sent: cx.metrics.counter(MetricName::EventsSentTotal),
                timeouts: cx.metrics.counter(MetricName::TransactionTimeoutsTotal),
                nacks: cx.metrics.counter(MetricName::BatchesRefusedTotal),
                errors: cx.metrics.counter(MetricName::ErrorsTotal),
            }),
            config: cfg.clone(),
        });
        let server = Arc::new(RpcServer::new(
            Protocol::spark(),
            cfg.listener().server_options(),
        ));
        // Waiting getEventBatch calls answer "stopped" as soon as the sink stops, so their
        // connections reach a pack boundary and close.
        let stop_calls = {
            let stopped = stopped.clone();
            let shutdown = cx.shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stopped.cancel();
            })
        };
        listener::serve(
            listener,
            options,
            server,
            responder.clone(),
            cx.shutdown.clone(),
            &cx.metrics,
        )
        .await;
        stop_calls.abort();
        let left: Vec<Pending> = lock(&responder.pending).drain().map(|(_, p)| p).collect();
        if !left.is_empty() {
            warn!(
                message = "stopping with unacknowledged batches; rolled back",
                batches = left.len()
            );
        }
        for p in left {
            p.timer.abort();
        }
        info!("spark sink stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_bases_are_eight_alphanumerics() {
        let a = sequence_base();
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn error_batches_encode_like_spark() {
        // spark-pull-protocol.md vector S3.
        let expect = "38537061726b2073696e6b20686173206265656e2073746f70706564210000";
        let got: String = error_batch(STOPPED)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, expect);
    }
}
