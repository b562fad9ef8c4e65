//! The `spark_pull` source: polls one or more Spark-protocol sinks (weir's `spark` sink or a
//! Flume agent running Spark's `SparkSink`) like Spark's `FlumePollingInputDStream`, and acks
//! a batch only after it is committed to this agent's channels (nack if the put fails).
//!
//! Unlike Spark's poller, an error batch ("nothing yet", "stopped") is followed by a short,
//! growing pause instead of an immediate retry, so a stopped sink is not polled in a tight loop.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};
use weir_avro_rpc::client::{ClientOptions, RpcClient};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::transport::{BoxStream, ClientLayers, Compression, Layering};
use weir_core::component::Backoff;
use weir_core::metrics::{Counter, MetricName};
use weir_core::tls::TlsClientSettings;
use weir_core::{ComponentError, ConfigDuration, Source, SourceContext};

/// `[sources.NAME] type = "spark_pull"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SparkPullSourceConfig {
    /// Sinks to poll, `"host:port"`.
    pub hosts: Vec<String>,
    /// `n` in `getEventBatch(n)` (Spark's `maxBatchSize`, 1000).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Concurrent pollers per host, each on its own connection (Spark's `parallelism`).
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Longest wait for one reply; a sink holds `getEventBatch` while its channel is empty, so
    /// keep this above the sink's empty wait.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: ConfigDuration,
    /// TLS to the sinks: `tls = { ca = "ca.pem" }` or `tls = { trust_all = true }`.
    #[serde(default)]
    pub tls: Option<TlsClientSettings>,
    #[serde(default)]
    pub compression: Compression,
}

const fn default_batch_size() -> usize {
    1000
}
const fn default_parallelism() -> usize {
    1
}
const fn default_request_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(120)
}

impl SparkPullSourceConfig {
    pub fn from_hosts(hosts: Vec<String>) -> Self {
        SparkPullSourceConfig {
            hosts,
            batch_size: default_batch_size(),
            parallelism: default_parallelism(),
            request_timeout: default_request_timeout(),
            tls: None,
            compression: Compression::None,
        }
    }

    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.hosts.is_empty() {
            errors.push(("hosts", "name at least one \"host:port\"".to_string()));
        }
        if self.batch_size == 0 || self.batch_size > i32::MAX as usize {
            errors.push(("batch_size", "must be between 1 and 2147483647".into()));
        }
        if self.parallelism == 0 {
            errors.push(("parallelism", "must be at least 1".into()));
        }
        if let Err(e) = self.layers() {
            errors.push(("tls.ca", e.to_string()));
        }
        errors
    }

    fn layers(&self) -> Result<ClientLayers, weir_core::tls::TlsError> {
        ClientLayers::from_settings(self.tls.as_ref(), self.compression, 6, Layering::default())
    }

    pub fn build(&self) -> SparkPullSource {
        SparkPullSource {
            config: self.clone(),
        }
    }
}

pub struct SparkPullSource {
    config: SparkPullSourceConfig,
}

#[derive(Clone)]
struct Counters {
    received: Counter,
    accepted: Counter,
    nacked: Counter,
    errors: Counter,
}

#[async_trait]
impl Source for SparkPullSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let layers = self.config.layers()?;
        let counters = Counters {
            received: cx.metrics.counter(MetricName::EventsReceivedTotal),
            accepted: cx.metrics.counter(MetricName::EventsAcceptedTotal),
            nacked: cx.metrics.counter(MetricName::BatchesRefusedTotal),
            errors: cx.metrics.counter(MetricName::ErrorsTotal),
        };
        let tracker = TaskTracker::new();
        for host in &self.config.hosts {
            for poller in 0..self.config.parallelism {
                let span = tracing::info_span!("poller", host = %host, poller);
                let job = Poller {
                    host: host.clone(),
                    config: self.config.clone(),
                    layers: layers.clone(),
                    counters: counters.clone(),
                };
                tracker.spawn(
                    job.run(cx.output.clone(), cx.shutdown.clone())
                        .instrument(span),
                );
            }
        }
        tracker.close();
        tracker.wait().await;
        info!("spark_pull source stopped");
        Ok(())
    }
}

struct Poller {
    host: String,
    config: SparkPullSourceConfig,
    layers: ClientLayers,
    counters: Counters,
}

impl Poller {
    async fn connect(&self) -> Result<RpcClient<BoxStream>, String> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::net::TcpStream::connect(&self.host),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = self
            .host
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .unwrap_or(&self.host);
        let stream = self
            .layers
            .wrap(tcp, name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(RpcClient::new(
            stream,
            Protocol::spark(),
            ClientOptions {
                request_timeout: self.config.request_timeout.0,
                ..ClientOptions::default()
            },
        ))
    }

    async fn run(
        self,
        output: std::sync::Arc<weir_core::ChannelProcessor>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut reconnect = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut idle = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let mut client: Option<RpcClient<BoxStream>> = None;
        let n = self.config.batch_size as i32;
        while !shutdown.is_cancelled() {
            let c = match client.as_mut() {
                Some(c) => c,
                None => match self.connect().await {
                    Ok(c) => {
                        info!(message = "connected to spark sink");
                        reconnect.reset();
                        client.insert(c)
                    }
                    Err(e) => {
                        self.counters.errors.inc(1);
                        let delay = reconnect.next_delay();
                        warn!(message = "cannot connect to spark sink", error = %e, retry_in = ?delay);
                        pause(&shutdown, delay).await;
                        continue;
                    }
                },
            };
            // A poll in progress is not interrupted by shutdown: the batch it returns is put
            // and acked (or nacked) before the poller stops.
            let batch = match c.get_event_batch(n).await {
                Ok(b) => b,
                Err(e) => {
                    self.counters.errors.inc(1);
                    warn!(message = "getEventBatch failed; reconnecting", error = %e);
                    client = None;
                    continue;
                }
            };
            if batch.is_error() {
                debug!(message = "no batch", reason = %batch.error_msg);
                pause(&shutdown, idle.next_delay()).await;
                continue;
            }
            idle.reset();
            let events = batch.events.len() as u64;
            self.counters.received.inc(events);
            let result = output.put(batch.events).await;
            let answer = match &result {
                Ok(()) => c.ack(&batch.sequence_number).await,
                Err(_) => c.nack(&batch.sequence_number).await,
            };
            match result {
                Ok(()) => self.counters.accepted.inc(events),
                Err(e) => {
                    self.counters.nacked.inc(1);
                    warn!(message = "channels refused a polled batch; nacked", events, error = %e);
                    pause(&shutdown, reconnect.next_delay()).await;
                }
            }
            if let Err(e) = answer {
                // The sink rolls the batch back (timeout or disconnect): delivered again later.
                self.counters.errors.inc(1);
                warn!(message = "ack/nack failed; the sink will redeliver", seq = %batch.sequence_number, error = %e);
                client = None;
            }
        }
    }
}

async fn pause(shutdown: &tokio_util::sync::CancellationToken, delay: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
    }
}
