//! Builds the graph from a validated [`Config`], runs every component under a supervisor that
//! restarts it with exponential backoff, and stops in order: sources first (they finish and
//! answer in-flight batches), then sinks (they finish their batch and drain channels that would
//! not survive the restart), bounded by `agent.shutdown_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};
use weir_core::component::Backoff;
use weir_core::metrics::{ComponentMetrics, MetricName, Registry};
use weir_core::{
    Channel, ChannelProcessor, ComponentError, Interceptor, Ready, SinkContext, SourceContext,
};

use weir_kafka::output::OffsetsGroup;
use weir_streaming::{BuildContext, JobInput, JobMetrics};

use crate::config::Config;
use crate::http::{Inventory, JobView, StatusState};
use crate::systemd::SystemdNotifier;

/// A component that ran at least this long before failing starts again from the shortest
/// backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// After a reload, how long `READY=1` waits for newly added listeners to bind before it is
/// sent anyway (with the ones still missing in `STATUS=`).
const RELOAD_READY_WAIT: Duration = Duration::from_secs(10);

pub struct Topology {
    config: Config,
    registry: Registry,
    channels: BTreeMap<String, Arc<dyn Channel>>,
    /// Each job's batch metrics, kept across its restarts and reloads.
    job_metrics: BTreeMap<String, JobMetrics>,
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
            job_metrics: BTreeMap::new(),
        })
    }

    pub fn channel(&self, name: &str) -> Option<&Arc<dyn Channel>> {
        self.channels.get(name)
    }

    /// Runs until `stop` completes, then shuts down in order.
    pub async fn run(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (_keep, reloads) = mpsc::channel(1);
        self.run_with_reloads(stop, reloads).await
    }

    /// Runs until `stop` completes, applying each config received on `reloads` (already
    /// validated): only the components whose definition changed, or whose channel changed,
    /// are stopped and started again; the others keep running.
    pub async fn run_with_reloads(
        mut self,
        stop: impl Future<Output = ()>,
        mut reloads: mpsc::Receiver<Config>,
    ) -> anyhow::Result<()> {
        let notifier = SystemdNotifier::from_env();
        notifier.status("starting");
        let mut running = Running::default();
        self.start_missing(&mut running)?;

        let http_stop = CancellationToken::new();
        let status = StatusState::new(self.registry.clone(), self.inventory());
        let mut http_ready = None;
        let http =
            self.config.http.clone().map(|cfg| {
                let (ready, flag) = Ready::new();
                http_ready = Some(flag);
                let (state, stop) = (status.clone(), http_stop.clone());
                tokio::spawn(
                async move {
                    if let Err(e) = crate::http::serve(cfg, state, stop, ready).await {
                        error!(message = "http status server failed", error = %format!("{e:#}"));
                    }
                }
                .instrument(tracing::error_span!("component", kind = "http", id = "http")),
            )
            });
        let watchdog = notifier.spawn_watchdog(http_stop.clone());

        info!(message = "agent started", agent = %self.config.agent.name, components = %self.config.summary());
        let mut readiness = CancellationToken::new();
        let mut flags = running.ready_flags();
        flags.extend(http_ready.clone().map(|f| ("http".to_string(), f)));
        notifier.spawn_ready_when(flags, self.status_line(), readiness.clone(), None);

        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(new) = reloads.recv() => {
                    readiness.cancel();
                    notifier.reloading();
                    self.reload(new, &mut running).await;
                    status.set_inventory(self.inventory());
                    readiness = CancellationToken::new();
                    let mut flags = running.ready_flags();
                    flags.extend(http_ready.clone().map(|f| ("http".to_string(), f)));
                    notifier.spawn_ready_when(flags, self.status_line(), readiness.clone(), Some(RELOAD_READY_WAIT));
                }
            }
        }
        readiness.cancel();
        notifier.stopping();

        let deadline = Instant::now() + self.config.agent.shutdown_timeout.0;
        info!("stopping: closing sources");
        if !stop_tasks(std::mem::take(&mut running.sources).into_values(), deadline).await {
            warn!("sources did not stop in time; aborted (their unanswered batches were not acknowledged)");
        }
        info!("sources stopped; sinks finishing their batches");
        if !stop_tasks(
            std::mem::take(&mut running.consumers).into_values(),
            deadline,
        )
        .await
        {
            warn!("sinks did not finish in time; aborted (uncommitted batches were rolled back)");
        }
        for (name, channel) in std::mem::take(&mut self.channels) {
            close_channel(&name, channel).await;
        }
        http_stop.cancel();
        if let Some(task) = http {
            let _ = task.await;
        }
        if let Some(task) = watchdog {
            let _ = task.await;
        }
        info!("stopped");
        Ok(())
    }

    fn status_line(&self) -> String {
        format!("running: {}", self.config.summary())
    }

    fn inventory(&self) -> Inventory {
        let mut components: Vec<(&'static str, String)> = self
            .config
            .sources
            .keys()
            .map(|id| ("source", id.clone()))
            .collect();
        components.extend(self.config.sinks.keys().map(|id| ("sink", id.clone())));
        let jobs = self
            .config
            .jobs
            .iter()
            .filter_map(|(id, job)| {
                let metrics = self.job_metrics.get(id)?.clone();
                let batch_interval_ms = job.batch_interval.0.as_millis() as u64;
                Some((
                    id.clone(),
                    JobView {
                        metrics,
                        batch_interval_ms,
                    },
                ))
            })
            .collect();
        Inventory {
            channels: self.channels.clone(),
            components,
            jobs,
        }
    }

    /// Applies a new config: stops what changed (sources first, then consumers), swaps the
    /// changed channels, starts what is missing (consumers first, then sources).
    /// Failures to open a channel or start a component are logged, never fatal: whatever can
    /// run keeps running.
    async fn reload(&mut self, mut new: Config, running: &mut Running) {
        let old = &self.config;
        if new.agent != old.agent {
            warn!(
                "config reload: the [agent] section changed; it takes effect at the next restart"
            );
            new.agent = old.agent.clone();
        }
        if new.http != old.http {
            warn!("config reload: the [http] section changed; it takes effect at the next restart");
            new.http = old.http.clone();
        }
        let changed_channels: BTreeSet<String> = old
            .channels
            .keys()
            .chain(new.channels.keys())
            .filter(|n| old.channels.get(*n) != new.channels.get(*n))
            .cloned()
            .collect();
        let touches = |names: &[String]| names.iter().any(|n| changed_channels.contains(n));
        let stop_sources: Vec<String> = old
            .sources
            .iter()
            .filter(|(id, def)| new.sources.get(*id) != Some(def) || touches(&def.channels))
            .map(|(id, _)| id.clone())
            .collect();
        let mut stop_consumers: Vec<ConsumerId> = old
            .sinks
            .iter()
            .filter(|(id, def)| {
                new.sinks.get(*id) != Some(def) || touches(std::slice::from_ref(&def.channel))
            })
            .map(|(id, _)| ("sink", id.clone()))
            .collect();
        // JobConfig has no PartialEq; its Debug rendering is the whole definition.
        stop_consumers.extend(
            old.jobs
                .iter()
                .filter(|(id, job)| {
                    new.jobs.get(*id).map(|j| format!("{j:?}")) != Some(format!("{job:?}"))
                        || touches(&job.input_names())
                })
                .map(|(id, _)| ("job", id.clone())),
        );
        info!(
            message = "reloading config",
            sources_restarted = stop_sources.len(),
            consumers_restarted = stop_consumers.len(),
            channels_changed = changed_channels.len(),
            components = %new.summary(),
        );

        let deadline = Instant::now() + old.agent.shutdown_timeout.0;
        let sources: Vec<Task> = stop_sources
            .iter()
            .filter_map(|id| running.sources.remove(id))
            .collect();
        if !stop_tasks(sources, deadline).await {
            warn!("config reload: sources did not stop in time; aborted");
        }
        let consumers: Vec<Task> = stop_consumers
            .iter()
            .filter_map(|id| running.consumers.remove(id))
            .collect();
        if !stop_tasks(consumers, deadline).await {
            warn!("config reload: sinks did not finish in time; aborted (uncommitted batches were rolled back)");
        }
        for name in &changed_channels {
            if let Some(channel) = self.channels.remove(name) {
                close_channel(name, channel).await;
            }
        }
        for name in &changed_channels {
            let Some(c) = new.channels.get(name).cloned() else {
                continue;
            };
            match c.build(name, &new.agent.data_dir).await {
                Ok(channel) => {
                    self.channels.insert(name.clone(), channel);
                }
                Err(e) => {
                    error!(message = "config reload: cannot open channel; keeping its previous definition", key = %format!("channels.{name}"), r#type = c.type_name(), error = %format!("{e:#}"));
                    self.keep_old_channel(name, &mut new).await;
                }
            }
        }
        self.config = new;
        if let Err(e) = self.start_missing(running) {
            error!(message = "config reload: some components could not start", error = %format!("{e:#}"));
        }
        info!(message = "config reloaded", components = %self.config.summary());
    }

    /// After `name`'s new definition failed to open: reopens the previous one, or, when there
    /// is none (or it fails too), leaves out of `new` every component that uses the channel,
    /// so that they stay stopped and a later reload starts them.
    async fn keep_old_channel(&mut self, name: &str, new: &mut Config) {
        if let Some(c) = self.config.channels.get(name).cloned() {
            match c.build(name, &self.config.agent.data_dir).await {
                Ok(channel) => {
                    self.channels.insert(name.to_string(), channel);
                    new.channels.insert(name.to_string(), c);
                    return;
                }
                Err(e) => {
                    error!(message = "config reload: cannot reopen channel with its previous definition either", key = %format!("channels.{name}"), error = %format!("{e:#}"))
                }
            }
        }
        new.channels.remove(name);
        let uses = |names: &[String]| names.iter().any(|n| n == name);
        let mut left_out: Vec<String> = Vec::new();
        new.sources.retain(|id, def| {
            let keep = !uses(&def.channels);
            if !keep {
                left_out.push(format!("sources.{id}"));
            }
            keep
        });
        new.sinks.retain(|id, def| {
            let keep = def.channel != name;
            if !keep {
                left_out.push(format!("sinks.{id}"));
            }
            keep
        });
        new.jobs.retain(|id, job| {
            let keep = !uses(&job.input_names());
            if !keep {
                left_out.push(format!("jobs.{id}"));
            }
            keep
        });
        error!(message = "config reload: components left stopped until a reload can open their channel", channel = %name, components = %left_out.join(", "));
    }

    /// Starts every configured component that is not running: sinks and jobs first, so that
    /// sources never fill a channel nobody drains.
    /// A source that cannot be wired is skipped (and reported in the error); the rest start.
    fn start_missing(&mut self, running: &mut Running) -> anyhow::Result<()> {
        let mut failed: Vec<String> = Vec::new();
        for (id, def) in &self.config.sinks {
            if running.consumers.contains_key(&("sink", id.clone())) {
                continue;
            }
            let channel = self.channels[&def.channel].clone();
            let config = def.config.clone();
            let metrics = ComponentMetrics::new(self.registry.clone(), "sink", id.clone());
            let stop = CancellationToken::new();
            let listens = !def.config.listens().is_empty();
            let (ready, flag) = Ready::new();
            let id2 = id.clone();
            let span = tracing::error_span!("component", kind = "sink", id = %id, r#type = def.config.type_name());
            let cx_stop = stop.clone();
            let handle = tokio::spawn(
                supervise(
                    "sink",
                    id.clone(),
                    metrics.clone(),
                    stop.clone(),
                    move || {
                        let cx = SinkContext {
                            id: id2.clone(),
                            channel: channel.clone(),
                            shutdown: cx_stop.clone(),
                            metrics: metrics.clone(),
                            ready: ready.clone(),
                        };
                        config.build().run(cx)
                    },
                )
                .instrument(span),
            );
            running.consumers.insert(
                ("sink", id.clone()),
                Task {
                    stop,
                    handle,
                    ready: listens.then_some(flag),
                },
            );
        }

        for (id, job) in &self.config.jobs {
            if running.consumers.contains_key(&("job", id.clone())) {
                continue;
            }
            let inputs: Vec<Arc<dyn Channel>> = job
                .input_names()
                .iter()
                .map(|c| self.channels[c].clone())
                .collect();
            let config = job.clone();
            // Checked when the config was loaded.
            let kafka: Vec<_> = job
                .kafka_inputs()
                .into_iter()
                .filter_map(|(_, table)| crate::components::kafka_input(table).ok())
                .collect();
            let metrics = ComponentMetrics::new(self.registry.clone(), "job", id.clone());
            let stop = CancellationToken::new();
            let (id2, data_dir) = (id.clone(), self.config.agent.data_dir.clone());
            // Checked when the config was loaded.
            let kafka_output = crate::jobs::kafka_output(job).ok().flatten();
            let events_output = match &job.output {
                weir_streaming::config::OutputConfig::Avro { hostname, port } => {
                    Some(crate::jobs::avro_events_output(hostname.clone(), *port))
                }
                _ => None,
            };
            let job_metrics = self
                .job_metrics
                .entry(id.clone())
                .or_insert_with(|| JobMetrics::new(job.retained_batches))
                .clone();
            let span = tracing::error_span!("component", kind = "job", id = %id);
            let cx_stop = stop.clone();
            let handle = tokio::spawn(
                supervise("job", id.clone(), metrics, stop.clone(), move || {
                    let mut cx =
                        BuildContext::new(inputs.clone(), data_dir.clone(), cx_stop.clone());
                    cx.events_output = events_output.clone();
                    cx.metrics = Some(job_metrics.clone());
                    // A new producer per (re)start: its `init_transactions` aborts what the
                    // failed run left open.
                    let transactional = kafka_output
                        .as_ref()
                        .is_some_and(|k| k.config.transactional_id.is_some());
                    let mut members = Vec::new();
                    let built = kafka
                        .iter()
                        .map(|k| {
                            let mut input = k.build(config.batch_interval.0, cx_stop.clone())?;
                            if transactional {
                                input.leave_commits_to_output();
                            }
                            members.extend(input.group_member());
                            Ok(Box::new(input) as Box<dyn JobInput>)
                        })
                        .collect::<Result<Vec<_>, ComponentError>>()
                        .and_then(|inputs| {
                            cx.kafka_inputs = inputs;
                            if let Some(k) = &kafka_output {
                                // Checked at load: group mode has exactly one Kafka input.
                                let group = match (&k.group, members.pop()) {
                                    (Some(_), Some(member)) if k.group_mode => {
                                        Some(OffsetsGroup::Member(member))
                                    }
                                    (Some(id), _) => Some(OffsetsGroup::Named(id.clone())),
                                    (None, _) => None,
                                };
                                cx.transactional_output = Some(k.config.build(group)?);
                            }
                            Ok(config.build(&id2, cx)?)
                        });
                    async move { Ok(built?.run().await?) }
                })
                .instrument(span),
            );
            running.consumers.insert(
                ("job", id.clone()),
                Task {
                    stop,
                    handle,
                    ready: None,
                },
            );
        }

        for (id, def) in &self.config.sources {
            if running.sources.contains_key(id) {
                continue;
            }
            let channels: Vec<Arc<dyn Channel>> = def
                .channels
                .iter()
                .map(|c| self.channels[c].clone())
                .collect();
            let processor = match ChannelProcessor::new(channels, &def.selector)
                .with_context(|| format!("sources.{id}.selector"))
            {
                Ok(p) => p,
                Err(e) => {
                    failed.push(format!("{e:#}"));
                    continue;
                }
            };
            let output = Arc::new(
                processor
                    .with_interceptors(def.interceptors.iter().map(Interceptor::build).collect()),
            );
            let config = def.config.clone();
            let metrics = ComponentMetrics::new(self.registry.clone(), "source", id.clone());
            let stop = CancellationToken::new();
            let listens = !def.config.listens().is_empty();
            let (ready, flag) = Ready::new();
            let id2 = id.clone();
            let data_dir = self.config.agent.data_dir.clone();
            let span = tracing::error_span!("component", kind = "source", id = %id, r#type = def.config.type_name());
            let cx_stop = stop.clone();
            let handle = tokio::spawn(
                supervise(
                    "source",
                    id.clone(),
                    metrics.clone(),
                    stop.clone(),
                    move || {
                        let cx = SourceContext {
                            id: id2.clone(),
                            output: output.clone(),
                            shutdown: cx_stop.clone(),
                            metrics: metrics.clone(),
                            ready: ready.clone(),
                        };
                        let built = config.build(&data_dir, &id2);
                        async move { built?.run(cx).await }
                    },
                )
                .instrument(span),
            );
            running.sources.insert(
                id.clone(),
                Task {
                    stop,
                    handle,
                    ready: listens.then_some(flag),
                },
            );
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!("{}", failed.join("; "))),
        }
    }
}

/// `("sink" | "job", id)`.
type ConsumerId = (&'static str, String);

/// A supervised component: its own stop token, so a reload can stop it alone.
struct Task {
    stop: CancellationToken,
    handle: JoinHandle<()>,
    /// Set once a listening component's socket is bound; `None` for the others.
    ready: Option<watch::Receiver<bool>>,
}

#[derive(Default)]
struct Running {
    sources: BTreeMap<String, Task>,
    consumers: BTreeMap<ConsumerId, Task>,
}

impl Running {
    fn ready_flags(&self) -> Vec<(String, watch::Receiver<bool>)> {
        let sources = self.sources.iter().map(|(id, t)| (id.clone(), t));
        let consumers = self.consumers.iter().map(|((_, id), t)| (id.clone(), t));
        sources
            .chain(consumers)
            .filter_map(|(id, t)| t.ready.clone().map(|f| (id, f)))
            .collect()
    }
}

/// Closes (syncs) a channel that is being dropped; a memory channel's leftovers are lost and
/// said so.
async fn close_channel(name: &str, channel: Arc<dyn Channel>) {
    let left = channel.stats().events;
    if left > 0 && !channel.is_durable() {
        error!(message = "events lost: memory channel closed before it was drained", channel = %name, events = left);
    }
    channel.close().await;
}

/// Cancels every task, then waits for them until `deadline` and aborts the rest. True if all
/// finished in time.
async fn stop_tasks(tasks: impl IntoIterator<Item = Task>, deadline: Instant) -> bool {
    let mut set = JoinSet::new();
    for task in tasks {
        task.stop.cancel();
        set.spawn(async move {
            let _ = task.handle.await;
        });
    }
    join_until(&mut set, deadline).await
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
