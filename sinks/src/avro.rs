//! The `avro` sink: forwards batches to Flume `AvroSource`s (or Spark's push receiver, or
//! another weir) with Flume's `AvroSink` wire behaviour, over one or more hosts.
//!
//! A batch is committed only after a host answered `OK`; `FAILED`, an error reply, a timeout or
//! a broken connection drop that connection and try the next host. When every host failed the
//! batch is rolled back and retried after a backoff. Host choice follows Flume's sink
//! processors: `failover` (hosts in order, a failed host sits out a growing penalty) or
//! `round_robin` / `random` (Flume's `load_balance` with backoff).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use tracing::{debug, info, warn};
use weir_avro_rpc::client::{ClientOptions, RpcClient};
use weir_avro_rpc::datum::Status;
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::transport::{BoxStream, ClientLayers, Compression, Layering};
use weir_core::component::Backoff;
use weir_core::metrics::MetricName;
use weir_core::tls::TlsClientSettings;
use weir_core::{ComponentError, ConfigDuration, Event, Sink, SinkContext};

/// `[sinks.NAME] type = "avro"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AvroSinkConfig {
    /// Targets as `"host:port"`, tried according to `selection`.
    pub hosts: Vec<String>,
    /// Events per `appendBatch` call and per channel transaction (Flume's `batch-size`).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `"failover"` (first healthy host in list order), `"round_robin"` or `"random"`.
    #[serde(default)]
    pub selection: Selection,
    /// Longest a failed host is skipped; penalties double from 1 s up to this (Flume's
    /// `maxpenalty` / `selector.maxTimeOut`).
    #[serde(default = "default_max_penalty")]
    pub max_penalty: ConfigDuration,
    /// `"deflate"` to match a Flume source with `compression-type = deflate`.
    #[serde(default)]
    pub compression: Compression,
    /// zlib level 0–9 (Flume's `compression-level`).
    #[serde(default = "default_compression_level")]
    pub compression_level: u32,
    /// TLS to the hosts (Flume's `ssl = true`): `tls = { ca = "ca.pem" }` or
    /// `tls = { trust_all = true }`, optionally `server_name`.
    #[serde(default)]
    pub tls: Option<TlsClientSettings>,
    /// With both TLS and deflate: `"tls-outside"` (Flume ≤ 1.9) or `"deflate-outside"` (1.10+).
    #[serde(default)]
    pub layering: Layering,
    /// TCP connect (and TLS handshake) limit (Flume's `connect-timeout`).
    #[serde(default = "default_timeout")]
    pub connect_timeout: ConfigDuration,
    /// Wait for each reply at most this long (Flume's `request-timeout`).
    #[serde(default = "default_timeout")]
    pub request_timeout: ConfigDuration,
    /// Reconnect after this long even when healthy, e.g. to rebalance behind a load balancer
    /// (Flume's `reset-connection-interval`). Unset = never.
    #[serde(default)]
    pub reset_connection_interval: Option<ConfigDuration>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    Failover,
    RoundRobin,
    Random,
}

const fn default_batch_size() -> usize {
    100
}
const fn default_max_penalty() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
const fn default_compression_level() -> u32 {
    6
}
const fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(20)
}

impl AvroSinkConfig {
    pub fn from_hosts(hosts: Vec<String>) -> Self {
        AvroSinkConfig {
            hosts,
            batch_size: default_batch_size(),
            selection: Selection::default(),
            max_penalty: default_max_penalty(),
            compression: Compression::None,
            compression_level: default_compression_level(),
            tls: None,
            layering: Layering::default(),
            connect_timeout: default_timeout(),
            request_timeout: default_timeout(),
            reset_connection_interval: None,
        }
    }

    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.hosts.is_empty() {
            errors.push(("hosts", "name at least one \"host:port\"".to_string()));
        }
        for h in &self.hosts {
            if split_host_port(h).is_none() {
                errors.push(("hosts", format!("`{h}` is not \"host:port\"")));
            }
        }
        if self.batch_size == 0 {
            errors.push(("batch_size", "must be at least 1".into()));
        }
        if self.compression_level > 9 {
            errors.push(("compression_level", "must be 0 to 9".into()));
        }
        if let Err(e) = self.layers() {
            errors.push(("tls.ca", e.to_string()));
        }
        errors
    }

    fn layers(&self) -> Result<ClientLayers, weir_core::tls::TlsError> {
        ClientLayers::from_settings(
            self.tls.as_ref(),
            self.compression,
            self.compression_level,
            self.layering,
        )
    }

    pub fn build(&self) -> AvroSink {
        AvroSink {
            config: self.clone(),
        }
    }
}

fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some(())?;
    Some((host, port.parse().ok()?))
}

pub struct AvroSink {
    config: AvroSinkConfig,
}

/// One target and its connection state.
struct Target {
    addr: String,
    client: Option<(RpcClient<BoxStream>, Instant)>,
    penalty: Backoff,
    retry_at: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} answered {status:?}")]
    NotOk { addr: String, status: Status },
    #[error("call to {addr} failed: {reason}")]
    Call { addr: String, reason: String },
}

impl AvroSink {
    async fn connect(
        &self,
        addr: &str,
        layers: &ClientLayers,
    ) -> Result<RpcClient<BoxStream>, DeliveryError> {
        let fail = |reason: String| DeliveryError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let timeout = self.config.connect_timeout.0;
        let host = split_host_port(addr)
            .map(|(h, _)| h.to_string())
            .unwrap_or_default();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            layers.wrap(tcp, &host).await.map_err(|e| e.to_string())
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| fail(format!("no connection within {timeout:?}")))?
            .map_err(fail)?;
        Ok(RpcClient::new(
            stream,
            Protocol::flume(),
            ClientOptions {
                request_timeout: self.config.request_timeout.0,
                ..ClientOptions::default()
            },
        ))
    }

    async fn send(
        &self,
        target: &mut Target,
        events: &[Event],
        layers: &ClientLayers,
    ) -> Result<(), DeliveryError> {
        if let (Some(interval), Some((_, since))) =
            (self.config.reset_connection_interval, &target.client)
        {
            if since.elapsed() >= interval.0 {
                debug!(message = "resetting connection", host = %target.addr);
                target.client = None;
            }
        }
        let client = match target.client.as_mut() {
            Some((client, _)) => client,
            None => {
                let client = self.connect(&target.addr, layers).await?;
                info!(message = "connected", host = %target.addr);
                &mut target.client.insert((client, Instant::now())).0
            }
        };
        let result = client.append_batch(events).await;
        match result {
            Ok(Status::Ok) => Ok(()),
            Ok(status) => {
                // Flume drops the client on any non-OK answer; a fresh connection costs little.
                target.client = None;
                Err(DeliveryError::NotOk {
                    addr: target.addr.clone(),
                    status,
                })
            }
            Err(e) => {
                target.client = None;
                Err(DeliveryError::Call {
                    addr: target.addr.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Targets to try for the next batch, in order: healthy ones per `selection`, then (if all
    /// are penalised) the one whose penalty ends first, so a batch is always attempted.
    fn order(&self, targets: &[Target], rr: &mut usize, now: Instant) -> Vec<usize> {
        let n = targets.len();
        let start = match self.config.selection {
            Selection::Failover => 0,
            Selection::RoundRobin => {
                *rr = (*rr + 1) % n;
                *rr
            }
            Selection::Random => random_index(n),
        };
        let mut healthy: Vec<usize> = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| targets[i].retry_at.is_none_or(|t| t <= now))
            .collect();
        if healthy.is_empty() {
            if let Some(i) = (0..n).min_by_key(|&i| targets[i].retry_at) {
                healthy.push(i);
            }
        }
        healthy
    }
}

fn random_index(n: usize) -> usize {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(Instant::now()) % n as u64) as usize
}

#[async_trait]
impl Sink for AvroSink {
    async fn run(self: Box<Self>, cx: SinkContext) -> Result<(), ComponentError> {
        let sent = cx.metrics.counter(MetricName::EventsSentTotal);
        let errors = cx.metrics.counter(MetricName::ErrorsTotal);
        let layers = self.config.layers()?;
        let max_penalty = self.config.max_penalty.0;
        let mut targets: Vec<Target> = self
            .config
            .hosts
            .iter()
            .map(|h| Target {
                addr: h.clone(),
                client: None,
                penalty: Backoff::new(Duration::from_secs(1), max_penalty),
                retry_at: None,
            })
            .collect();
        let mut rr = targets.len().saturating_sub(1);
        let mut batch_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while let Some(txn) = cx.next_batch(self.config.batch_size).await? {
            let mut delivered = false;
            for i in self.order(&targets, &mut rr, Instant::now()) {
                let target = &mut targets[i];
                match self.send(target, txn.events(), &layers).await {
                    Ok(()) => {
                        if target.retry_at.take().is_some() {
                            info!(message = "host is back", host = %target.addr);
                        }
                        target.penalty.reset();
                        delivered = true;
                        break;
                    }
                    Err(e) => {
                        errors.inc(1);
                        let penalty = target.penalty.next_delay();
                        target.retry_at = Some(Instant::now() + penalty);
                        warn!(message = "delivery failed; trying the next host", error = %e, penalty = ?penalty);
                    }
                }
            }
            if delivered {
                let n = txn.len() as u64;
                txn.commit().await?;
                sent.inc(n);
                batch_backoff.reset();
            } else {
                let n = txn.len();
                drop(txn); // rolled back: delivered again, first
                let delay = batch_backoff.next_delay();
                warn!(message = "no host took the batch; rolled back", events = n, retry_in = ?delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cx.shutdown.cancelled() => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(split_host_port("flume1:41414"), Some(("flume1", 41414)));
        assert_eq!(split_host_port("[::1]:4141"), Some(("::1", 4141)));
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port(":1"), None);
    }
}
