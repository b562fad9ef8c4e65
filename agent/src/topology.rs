//! Builds the graph from a validated [`Config`], runs every component under a supervisor that
//! restarts it with exponential backoff, and stops in order: sources first (they finish and
//! answer in-flight batches), then sinks (they finish their batch and drain channels that would
//! not survive the restart), bounded by `agent.shutdown_timeout`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};
use weir_core::component::Backoff;
use weir_core::metrics::{ComponentMetrics, MetricName, Registry};
use weir_core::{
    Channel, ChannelProcessor, ComponentError, Interceptor, SinkContext, SourceContext,
};

use weir_streaming::BuildContext;

use crate::config::Config;
use crate::http::{now_ms, StatusState};

/// A component that ran at least this long before failing starts again from the shortest
/// backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

pub struct Topology {
    config: Config,
    registry: Registry,
    channels: BTreeMap<String, Arc<dyn Channel>>,
}

impl Topology {
    /// Opens every channel (for durable ones this replays their log).
    pub async fn build(config: Config, registry: Registry) -> anyhow::Result<Self> {
        let mut channels = BTreeMap::new();
        for (name, c) in &config.channels {
            let channel = c
                .build(name, &config.agent.data_dir)
                .await
                .with_context(|| {
                    format!("channels.{name}: cannot open {} channel", c.type_name())
                })?;
            channels.insert(name.clone(), channel);
        }
        Ok(Topology {
            config,
            registry,
            channels,
        })
    }

    pub fn channel(&self, name: &str) -> Option<&Arc<dyn Channel>> {
        self.channels.get(name)
    }

    /// Runs until `stop` completes, then shuts down in order.
    pub async fn run(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let source_stop = CancellationToken::new();
        let sink_stop = CancellationToken::new();
        let mut sinks = JoinSet::new();
        let mut sources = JoinSet::new();

        for (id, def) in &self.config.sinks {
            let channel = self.channels[&def.channel].clone();
            let config = def.config.clone();
            let metrics = ComponentMetrics::new(self.registry.clone(), "sink", id.clone());
            let stop = sink_stop.clone();
            let id2 = id.clone();
            let span = tracing::error_span!("component", kind = "sink", id = %id, r#type = def.config.type_name());
            sinks.spawn(
                supervise(
                    "sink",
                    id.clone(),
                    metrics.clone(),
                    stop.clone(),
                    move || {
                        let cx = SinkContext {
                            id: id2.clone(),
                            channel: channel.clone(),
                            shutdown: stop.clone(),
                            metrics: metrics.clone(),
                        };
                        config.build().run(cx)
                    },
                )
                .instrument(span),
            );
        }

        for (id, job) in &self.config.jobs {
            let inputs: Vec<Arc<dyn Channel>> = job
                .input_names()
                .iter()
                .map(|c| self.channels[c].clone())
                .collect();
            let config = job.clone();
            let metrics = ComponentMetrics::new(self.registry.clone(), "job", id.clone());
            let stop = sink_stop.clone();
            let (id2, data_dir) = (id.clone(), self.config.agent.data_dir.clone());
            let events_output = match &job.output {
                weir_streaming::config::OutputConfig::Avro { hostname, port } => {
                    Some(crate::jobs::avro_events_output(hostname.clone(), *port))
                }
                _ => None,
            };
            let span = tracing::error_span!("component", kind = "job", id = %id);
            sinks.spawn(
                supervise("job", id.clone(), metrics, stop.clone(), move || {
                    let mut cx = BuildContext::new(inputs.clone(), data_dir.clone(), stop.clone());
                    cx.events_output = events_output.clone();
                    let built = config.build(&id2, cx);
                    async move { Ok(built?.run().await?) }
                })
                .instrument(span),
            );
        }

        for (id, def) in &self.config.sources {
            let channels: Vec<Arc<dyn Channel>> = def
                .channels
                .iter()
                .map(|c| self.channels[c].clone())
                .collect();
            let output = Arc::new(
                ChannelProcessor::new(channels, &def.selector)
                    .with_context(|| format!("sources.{id}.selector"))?
                    .with_interceptors(def.interceptors.iter().map(Interceptor::build).collect()),
            );
            let config = def.config.clone();
            let metrics = ComponentMetrics::new(self.registry.clone(), "source", id.clone());
            let stop = source_stop.clone();
            let id2 = id.clone();
            let data_dir = self.config.agent.data_dir.clone();
            let span = tracing::error_span!("component", kind = "source", id = %id, r#type = def.config.type_name());
            sources.spawn(
                supervise(
                    "source",
                    id.clone(),
                    metrics.clone(),
                    stop.clone(),
                    move || {
                        let cx = SourceContext {
                            id: id2.clone(),
                            output: output.clone(),
                            shutdown: stop.clone(),
                            metrics: metrics.clone(),
                        };
                        let built = config.build(&data_dir, &id2);
                        async move { built?.run(cx).await }
                    },
                )
                .instrument(span),
            );
        }

        let http_stop = CancellationToken::new();
        let http =
            self.config.http.clone().map(|cfg| {
                let mut components: Vec<(&'static str, String)> = self
                    .config
                    .sources
                    .keys()
                    .map(|id| ("source", id.clone()))
                    .collect();
                components.extend(self.config.sinks.keys().map(|id| ("sink", id.clone())));
                let state = StatusState {
                    registry: self.registry.clone(),
                    channels: Arc::new(self.channels.clone()),
                    components: Arc::new(components),
                    started_ms: now_ms(),
                };
                let stop = http_stop.clone();
                tokio::spawn(
                async move {
                    if let Err(e) = crate::http::serve(cfg, state, stop).await {
                        error!(message = "http status server failed", error = %format!("{e:#}"));
                    }
                }
                .instrument(tracing::error_span!("component", kind = "http", id = "http")),
            )
            });

        info!(message = "agent started", agent = %self.config.agent.name, components = %self.config.summary());
        stop.await;

        let deadline = Instant::now() + self.config.agent.shutdown_timeout.0;
        info!("stopping: closing sources");
        source_stop.cancel();
        if !join_until(&mut sources, deadline).await {
            warn!("sources did not stop in time; aborted (their unanswered batches were not acknowledged)");
        }
        info!("sources stopped; sinks finishing their batches");
        sink_stop.cancel();
        if !join_until(&mut sinks, deadline).await {
            warn!("sinks did not finish in time; aborted (uncommitted batches were rolled back)");
        }
        for (name, channel) in &self.channels {
            let left = channel.stats().events;
            if left > 0 && !channel.is_durable() {
                error!(message = "events lost at shutdown: memory channel not drained", channel = %name, events = left);
            }
            channel.close().await;
        }
        http_stop.cancel();
        if let Some(task) = http {
            let _ = task.await;
        }
        info!("stopped");
        Ok(())
    }
}

/// Waits for every task until `deadline`; aborts the rest. True if all finished in time.
async fn join_until(set: &mut JoinSet<()>, deadline: Instant) -> bool {
    let all = async { while set.join_next().await.is_some() {} };
    let in_time = tokio::time::timeout_at(deadline.into(), all).await.is_ok();
    if !in_time {
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
    in_time
}

/// Runs a component until `stop`; a failure (or an unexpected return) restarts it after an
/// exponential backoff, logged and counted.
async fn supervise<F, Fut>(
    kind: &'static str,
    id: String,
    metrics: ComponentMetrics,
    stop: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ComponentError>>,
{
    let restarts = metrics.counter(MetricName::ComponentRestartsTotal);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        let result = start().await;
        if stop.is_cancelled() {
            if let Err(e) = result {
                error!(message = "component failed while stopping", error = %e);
            }
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match result {
            Ok(()) => {
                warn!(message = "component exited unexpectedly; restarting", kind, id = %id, retry_in = ?delay)
            }
            Err(e) => {
                error!(message = "component failed; restarting", kind, id = %id, error = %e, retry_in = ?delay)
            }
        }
        restarts.inc(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}
