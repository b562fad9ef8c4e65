//! The `avro` source: a Flume `AvroSource`-compatible server (push mode). Stock Flume
//! `AvroSink`s, `flume-ng avro-client` and any `NettyAvroRpcClient` deliver to it unchanged.
//!
//! `appendBatch` answers `OK` only after the whole batch is committed to every channel it routes
//! to, and `FAILED` when a channel refuses it (full, or an error) so the sender retries — the
//! backpressure path to upstream Flume agents. As in Flume, an undecodable `appendBatch` is also
//! answered `FAILED`, while an undecodable `append` is an Avro system error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use weir_avro_rpc::datum::{decode_event, decode_events, Status};
use weir_avro_rpc::listener::{self, ListenerSettings};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::server::{ConnectionInfo, Responder, RpcServer};
use weir_avro_rpc::transport::{Compression, Layering};
use weir_core::metrics::{ComponentMetrics, Counter, MetricName};
use weir_core::tls::TlsServerSettings;
use weir_core::{
    ByteSize, ChannelProcessor, ComponentError, ConfigDuration, Event, Source, SourceContext,
};

/// `[sources.NAME] type = "avro"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AvroSourceConfig {
    /// Address to listen on (Flume's `bind` + `port`), e.g. `"0.0.0.0:41414"`.
    pub bind: SocketAddr,
    /// `"deflate"` compresses the whole connection with zlib, exactly like Flume's
    /// `compression-type = deflate`; it must match the sender's setting.
    #[serde(default)]
    pub compression: Compression,
    /// zlib level for replies when `compression = "deflate"` (Flume uses 6).
    #[serde(default = "default_compression_level")]
    pub compression_level: u32,
    /// TLS with a PEM certificate chain and key (Flume's `ssl = true` clients connect):
    /// `tls = { cert = "cert.pem", key = "key.pem" }`.
    #[serde(default)]
    pub tls: Option<TlsServerSettings>,
    /// With both TLS and deflate: `"tls-outside"` (Flume ≤ 1.9, default) or
    /// `"deflate-outside"` (Flume 1.10+, whose pipelines put zlib under TLS).
    #[serde(default)]
    pub layering: Layering,
    /// Flume's `ipFilterRules` syntax: `allow:ip:10.*,deny:name:localhost`, first match wins,
    /// no match = accept. Unset = accept everyone.
    #[serde(default)]
    pub ip_filter: Option<String>,
    /// Most connections served at once; further ones are closed at accept, logged.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest accepted request pack; a larger one closes its connection before any of it is
    /// buffered.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: ByteSize,
    /// Request bytes read from all connections and not yet answered; when spent, connections
    /// wait before reading more (at least `max_frame_bytes`).
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: ByteSize,
    /// Close a connection that sends no request for this long. Unset = never, like Flume:
    /// Flume sinks keep their connection open between batches.
    #[serde(default)]
    pub idle_timeout: Option<ConfigDuration>,
    /// Close a connection whose request is not complete this long after its first byte,
    /// however steadily it trickles in (also the TLS handshake limit).
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout: ConfigDuration,
}

const fn default_compression_level() -> u32 {
    6
}
const fn default_max_connections() -> usize {
    1024
}
const fn default_max_frame_bytes() -> ByteSize {
    ByteSize(64 * 1024 * 1024)
}
const fn default_max_in_flight_bytes() -> ByteSize {
    ByteSize(256 * 1024 * 1024)
}
const fn default_frame_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

impl AvroSourceConfig {
    pub fn from_address(bind: SocketAddr) -> Self {
        AvroSourceConfig {
            bind,
            compression: Compression::None,
            compression_level: default_compression_level(),
            tls: None,
            layering: Layering::default(),
            ip_filter: None,
            max_connections: default_max_connections(),
            max_frame_bytes: default_max_frame_bytes(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            idle_timeout: None,
            frame_timeout: default_frame_timeout(),
        }
    }

    fn listener(&self) -> ListenerSettings<'_> {
        ListenerSettings {
            ip_filter: self.ip_filter.as_deref(),
            max_connections: self.max_connections,
            tls: self.tls.as_ref(),
            compression: self.compression,
            compression_level: self.compression_level,
            layering: self.layering,
            handshake_timeout: self.frame_timeout.0,
            max_frame_bytes: self.max_frame_bytes.0,
            max_in_flight_bytes: self.max_in_flight_bytes.0,
            idle_timeout: self.idle_timeout.map(Duration::from),
            frame_timeout: self.frame_timeout.0,
        }
    }

    /// Problems serde cannot see, with their key: bad filter rules, unreadable TLS files.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        self.listener().check()
    }

    pub fn build(&self) -> AvroSource {
        AvroSource {
            config: self.clone(),
        }
    }
}

pub struct AvroSource {
    config: AvroSourceConfig,
}

struct Counters {
    received: Counter,
    accepted: Counter,
    refused: Counter,
    errors: Counter,
}

impl Counters {
    fn new(m: &ComponentMetrics) -> Self {
        Counters {
            received: m.counter(MetricName::EventsReceivedTotal),
            accepted: m.counter(MetricName::EventsAcceptedTotal),
            refused: m.counter(MetricName::BatchesRefusedTotal),
            errors: m.counter(MetricName::ErrorsTotal),
        }
    }
}

/// Flume's `AvroSourceProtocol` behind the RPC server.
struct FlumeResponder {
    output: Arc<ChannelProcessor>,
    counters: Counters,
}

impl FlumeResponder {
    async fn put(&self, events: Vec<Event>, conn: &ConnectionInfo) -> Status {
        let n = events.len() as u64;
        self.counters.received.inc(n);
        match self.output.put(events).await {
            Ok(()) => {
                self.counters.accepted.inc(n);
                Status::Ok
            }
            Err(e) => {
                self.counters.refused.inc(1);
                debug!(message = "batch refused; answering FAILED", events = n, error = %e, peer = ?conn.peer);
                Status::Failed
            }
        }
    }
}

#[async_trait]
impl Responder for FlumeResponder {
    async fn call(
        &self,
        message: &str,
        params: Bytes,
        conn: &ConnectionInfo,
    ) -> Result<Bytes, String> {
        match message {
            "appendBatch" => match decode_events(params) {
                Ok(events) => Ok(self.put(events, conn).await.encode()),
                Err(e) => {
                    self.counters.errors.inc(1);
                    warn!(message = "undecodable appendBatch; answering FAILED", error = %e, peer = ?conn.peer);
                    Ok(Status::Failed.encode())
                }
            },
            "append" => match decode_event(params) {
                Ok(event) => Ok(self.put(vec![event], conn).await.encode()),
                Err(e) => {
                    self.counters.errors.inc(1);
                    Err(format!("org.apache.avro.AvroRuntimeException: {e}"))
                }
            },
            other => Err(format!(
                "org.apache.avro.AvroRuntimeException: No such remote message: {other}"
            )),
        }
    }
}

#[async_trait]
impl Source for AvroSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let cfg = self.config;
        let options = cfg.listener().options()?;
        let listener = TcpListener::bind(cfg.bind)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
        let addr = listener.local_addr()?;
        info!(message = "avro source listening", %addr, compression = ?cfg.compression, tls = cfg.tls.is_some());
        cx.ready.set();
        let server = Arc::new(RpcServer::new(
            Protocol::flume(),
            cfg.listener().server_options(),
        ));
        let responder = Arc::new(FlumeResponder {
            output: cx.output.clone(),
            counters: Counters::new(&cx.metrics),
        });
        listener::serve(
            listener,
            options,
            server,
            responder,
            cx.shutdown.clone(),
            &cx.metrics,
        )
        .await;
        info!("avro source stopped");
        Ok(())
    }
}
