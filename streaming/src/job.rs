//! The engine: a [`StreamingContext`] collects inputs and outputs, [`StreamingContext::build`]
//! checks them and opens the checkpoint directory, and [`Job::run`] is the job's single task:
//! strictly one batch at a time, in batch-time order (see the crate docs for the ordering
//! and crash invariants).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_core::{Channel, Event};

use crate::checkpoint::{
    BatchRecord, CheckpointDir, CheckpointError, Manifest, NodeState, StateFile, CHECKPOINT_VERSION,
};
use crate::clock::{next_tick, SharedClock, SystemClock};
use crate::input::{ChannelInput, InputBatch, InputError, InputPosition, JobInput};
use crate::metrics::{BatchInfo, JobMetrics};
use crate::output::{Output, OutputError};
use crate::rate::{PidConfig, RateController};
use crate::stream::{BatchCx, EventStream, StateError};

/// Most extra batches a stopping job runs to drain non-durable inputs.
const DRAIN_BATCHES_MAX: usize = 100;

/// Engine settings of one job (the declarative [`crate::JobConfig`] fills these in).
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// `B`: batch times are multiples of it since the Unix epoch.
    pub batch_interval: Duration,
    /// How often state is checkpointed; `None` = after every batch. Inputs are committed only
    /// after a checkpoint covering them, so a longer interval keeps more events uncommitted
    /// in the channels (they must have room for them).
    pub checkpoint_interval: Option<Duration>,
    /// Enables the PID rate estimator.
    pub backpressure: bool,
    pub pid: PidConfig,
    /// Records/s allowed before the first estimate (Spark's `backpressure.initialRate`).
    pub initial_rate: Option<u64>,
    /// Hard cap in records/s per input (Spark's `receiver.maxRate`).
    pub max_rate: Option<u64>,
    /// Most events one batch takes from one input.
    pub max_batch_events: usize,
    /// Events per chunk: a batch is taken, run through the per-element operators and folded
    /// into the aggregations this many events at a time, so its memory is one chunk plus the
    /// aggregation state (see [`crate::stream`]).
    pub chunk_events: usize,
    /// Batches kept in [`JobMetrics`].
    pub retained_batches: usize,
    /// After a restart, ticks missed while down are run back to back (as Spark does) unless
    /// there are more than this many; then the job resumes at the next tick.
    pub max_catch_up_batches: u64,
    /// Checkpoints go to `<data_dir>/jobs/<name>/`; `None` runs without checkpoints (inputs
    /// are committed after each batch's outputs; state is lost on restart).
    pub data_dir: Option<PathBuf>,
    /// Record into this handle instead of a new one, so that the agent's view of a job's
    /// batches survives the job being restarted.
    pub metrics: Option<JobMetrics>,
}

impl JobOptions {
    pub fn new(batch_interval: Duration) -> Self {
        JobOptions {
            batch_interval,
            checkpoint_interval: None,
            backpressure: false,
            pid: PidConfig::default(),
            initial_rate: None,
            max_rate: None,
            max_batch_events: 2_000_000,
            chunk_events: 8192,
            retained_batches: 1000,
            max_catch_up_batches: 1000,
            data_dir: None,
            metrics: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job `{job}`: {problem}")]
    Config { job: String, problem: String },
    #[error("job `{job}`: {source}")]
    Input {
        job: String,
        #[source]
        source: InputError,
    },
    #[error("job `{job}`, batch {batch_time_ms}: {source}")]
    Output {
        job: String,
        batch_time_ms: i64,
        #[source]
        source: OutputError,
    },
    #[error("job `{job}`: {source}")]
    Checkpoint {
        job: String,
        #[source]
        source: CheckpointError,
    },
    #[error("job `{job}`: {source}")]
    State {
        job: String,
        #[source]
        source: StateError,
    },
    #[error("job `{job}`: injected failure {point:?} (test hook)")]
    InjectedFailure { job: String, point: FailPoint },
}

/// Test hook: where [`Job::run`] stops as if the process died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// Inputs taken, not yet journaled.
    AfterCut,
    /// Inputs taken (and journaled), no output written.
    AfterTake,
    /// Outputs written, state not checkpointed, inputs not committed.
    AfterOutput,
    /// Checkpoint written, inputs not committed.
    AfterCheckpoint,
}

/// Builder of a job: inputs, the operator graph (built with the stream API) and outputs.
pub struct StreamingContext {
    name: String,
    options: JobOptions,
    clock: SharedClock,
    inputs: Vec<Box<dyn JobInput>>,
    outputs: Vec<Output>,
}

impl StreamingContext {
    pub fn new(name: impl Into<String>, options: JobOptions) -> Self {
        StreamingContext {
            name: name.into(),
            options,
            clock: Arc::new(SystemClock),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Replaces the wall clock (tests: [`crate::TokioClock`] under paused tokio time).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Adds a channel input; the job becomes the channel's only consumer.
    pub fn channel(&mut self, channel: Arc<dyn Channel>) -> EventStream {
        self.input(Box::new(ChannelInput::new(channel)))
    }

    pub fn input(&mut self, input: Box<dyn JobInput>) -> EventStream {
        self.inputs.push(input);
        EventStream::input(self.inputs.len() - 1)
    }

    /// Registers an output; outputs run in the order added.
    pub fn add_output(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// Checks the graph (window durations, at least one input and output) and opens the
    /// checkpoint directory; nothing is read or taken until [`Job::run`].
    pub fn build(mut self, shutdown: CancellationToken) -> Result<Job, JobError> {
        let config_err = |problem: String| JobError::Config {
            job: self.name.clone(),
            problem,
        };
        let interval_ms = self.options.batch_interval.as_millis() as i64;
        if interval_ms <= 0 {
            return Err(config_err("batch_interval must be at least 1ms".into()));
        }
        if self.inputs.is_empty() {
            return Err(config_err("a job needs at least one input".into()));
        }
        if self.outputs.is_empty() {
            return Err(config_err("a job needs at least one output".into()));
        }
        let mut problems = Vec::new();
        let mut stateful = 0usize;
        for o in &mut self.outputs {
            o.runner.visit_state(&mut |n| {
                stateful += 1;
                if let Err(p) = n.check_interval(interval_ms) {
                    problems.push(p);
                }
            });
        }
        if let Some(p) = problems.into_iter().next() {
            return Err(config_err(p));
        }
        let checkpoints =
            match &self.options.data_dir {
                Some(d) => Some(CheckpointDir::open(d, &self.name).map_err(|source| {
                    JobError::Checkpoint {
                        job: self.name.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        let rate = RateController::new(
            self.options.backpressure,
            self.options.pid,
            self.options.initial_rate,
            self.options.max_rate,
            self.options.max_batch_events,
            interval_ms,
        );
        let manifest = Manifest {
            version: CHECKPOINT_VERSION,
            job: self.name.clone(),
            batch_interval_ms: interval_ms,
            checkpoint_time_ms: None,
            state_file: None,
            covered: Vec::new(),
            pending: Vec::new(),
            resume: Vec::new(),
        };
        Ok(Job {
            metrics: self
                .options
                .metrics
                .clone()
                .unwrap_or_else(|| JobMetrics::new(self.options.retained_batches)),
            name: self.name,
            interval_ms,
            checkpoint_interval_ms: self
                .options
                .checkpoint_interval
                .map(|d| d.as_millis() as i64),
            stateful: stateful > 0,
            max_catch_up_batches: self.options.max_catch_up_batches,
            chunk_events: self.options.chunk_events.max(1),
            clock: self.clock,
            inputs: self.inputs,
            outputs: self.outputs,
            checkpoints,
            manifest,
            held: Vec::new(),
            rate,
            shutdown,
            fail: None,
            batches_run: 0,
        })
    }
}

/// A built job. Run it as one task: `tokio::spawn(job.run())`.
pub struct Job {
    name: String,
    interval_ms: i64,
    checkpoint_interval_ms: Option<i64>,
    stateful: bool,
    max_catch_up_batches: u64,
    chunk_events: usize,
    clock: SharedClock,
    inputs: Vec<Box<dyn JobInput>>,
    outputs: Vec<Output>,
    checkpoints: Option<CheckpointDir>,
    /// The manifest as last written (plus `covered` cleared after a successful commit).
    manifest: Manifest,
    /// Processed, uncommitted batches since the last checkpoint, oldest first.
    held: Vec<Vec<InputBatch>>,
    rate: RateController,
    shutdown: CancellationToken,
    metrics: JobMetrics,
    fail: Option<(FailPoint, u64)>,
    batches_run: u64,
}

impl Job {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job's batch metrics; clone it before `run` consumes the job.
    pub fn metrics(&self) -> JobMetrics {
        self.metrics.clone()
    }

    /// Test hook: make `run` return [`JobError::InjectedFailure`] at `point` of the
    /// `batch_index`th batch this `Job` runs (replays included, 0-based), dropping everything
    /// in flight like a crash would.
    #[doc(hidden)]
    pub fn inject_failure(&mut self, point: FailPoint, batch_index: u64) {
        self.fail = Some((point, batch_index));
    }

    fn check_fail(&self, point: FailPoint) -> Result<(), JobError> {
        match self.fail {
            Some((p, i)) if p == point && i == self.batches_run => Err(JobError::InjectedFailure {
                job: self.name.clone(),
                point,
            }),
            _ => Ok(()),
        }
    }

    fn ck_err(&self, source: CheckpointError) -> JobError {
        JobError::Checkpoint {
            job: self.name.clone(),
            source,
        }
    }

    fn input_err(&self, source: InputError) -> JobError {
        JobError::Input {
            job: self.name.clone(),
            source,
        }
    }

    /// Runs until `shutdown` is cancelled: recovers from the checkpoint, replays the
    /// journaled batches, then one batch per tick. On shutdown the batch in flight finishes,
    /// non-durable inputs are drained by extra batches (at the following tick times, run at
    /// once), a final checkpoint commits whatever is held, and `run` returns `Ok`. Any error leaves
    /// uncommitted inputs to roll back; running the job again (same data dir) resumes
    /// exactly-once for idempotent outputs.
    pub async fn run(mut self) -> Result<(), JobError> {
        let last = self.recover().await?;
        // After a restart, every tick missed while down is run too (Spark re-runs them), so
        // the grid has no holes: a batch that crashed before being journaled still gets its
        // own batch time. A fresh job starts at the next tick.
        let next_fresh = next_tick(self.clock.now_ms(), self.interval_ms);
        let mut next = match last {
            Some(last) => last + self.interval_ms,
            None => next_fresh,
        };
        if last.is_none() {
            if let Some(ck) = &self.checkpoints {
                // A fresh job: record that the (empty) state covers everything before its
                // first tick, so a crash in the very first batch, even before it is
                // journaled, resumes on that same tick.
                self.manifest.checkpoint_time_ms = Some(next - self.interval_ms);
                ck.write_manifest(&self.manifest)
                    .await
                    .map_err(|e| self.ck_err(e))?;
            }
        }
        let missed = (next_fresh - next) / self.interval_ms;
        if missed > self.max_catch_up_batches as i64 {
            // Down for long: thousands of empty back-to-back batches would help nobody.
            tracing::warn!(message = "Skipping ticks missed while the job was down.", job = %self.name, skipped = missed, resume_ms = next_fresh);
            next = next_fresh;
        }
        tracing::info!(message = "Job started.", job = %self.name, first_batch_ms = next);
        loop {
            let now = self.clock.now_ms();
            if now < next {
                let wait = Duration::from_millis((next - now) as u64);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.shutdown.cancelled() => break,
                }
            }
            if self.shutdown.is_cancelled() {
                break;
            }
            self.run_batch(next, None).await?;
            // Never skip or merge ticks: a late batch makes the next one start late
            // (scheduling delay) rather than overlap or vanish.
            next += self.interval_ms;
        }
        // Graceful stop: what a non-durable input (a memory channel) still holds would be
        // lost, so run further batches at the following tick times, without waiting, until
        // it is empty (bounded, in case a source keeps filling it).
        for _ in 0..DRAIN_BATCHES_MAX {
            // A channel's count includes the events this job holds uncommitted.
            let backlog: u64 = self
                .inputs
                .iter()
                .enumerate()
                .filter(|(_, input)| !input.is_durable())
                .map(|(i, input)| {
                    let held: u64 = self
                        .held
                        .iter()
                        .filter_map(|b| b.get(i))
                        .map(|b| b.len() as u64)
                        .sum();
                    input.backlog().unwrap_or(0).saturating_sub(held)
                })
                .sum();
            if backlog == 0 {
                break;
            }
            self.run_batch(next, None).await?;
            next += self.interval_ms;
            // Stop once a batch finds nothing new (the backlog may count events of other
            // consumers' open takes).
            if self.metrics.last().is_some_and(|b| b.input_events == 0) {
                break;
            }
        }
        if !self.held.is_empty() {
            if let Some(t) = self.manifest.pending.last().map(|r| r.time_ms) {
                self.checkpoint_and_commit(t).await?;
            }
        }
        tracing::info!(message = "Job stopped.", job = %self.name);
        Ok(())
    }

    /// Loads the checkpoint, settles `covered` batches and replays `pending` ones. Returns
    /// the newest batch time already done.
    async fn recover(&mut self) -> Result<Option<i64>, JobError> {
        let Some(ck) = self.checkpoints.clone() else {
            return Ok(None);
        };
        let Some(m) = ck.read_manifest().map_err(|e| self.ck_err(e))? else {
            return Ok(None);
        };
        let incompatible = |problem: String| CheckpointError::Incompatible {
            path: ck.path().to_path_buf(),
            problem,
        };
        if m.batch_interval_ms != self.interval_ms {
            // The journaled batch times sit on the old grid; replaying them on a new one
            // would break window alignment.
            return Err(self.ck_err(incompatible(format!(
                "it was written with batch_interval {} ms, the job now has {} ms",
                m.batch_interval_ms, self.interval_ms
            ))));
        }
        for r in m.covered.iter().chain(&m.pending) {
            if r.inputs.len() != self.inputs.len() {
                return Err(self.ck_err(incompatible(format!(
                    "batch {} has {} inputs, the job now has {}",
                    r.time_ms,
                    r.inputs.len(),
                    self.inputs.len()
                ))));
            }
        }
        if !m.resume.is_empty() && m.resume.len() != self.inputs.len() {
            return Err(self.ck_err(incompatible(format!(
                "it records resume positions for {} inputs, the job now has {}",
                m.resume.len(),
                self.inputs.len()
            ))));
        }
        for (input, position) in self.inputs.iter_mut().zip(&m.resume) {
            if let Some(position) = position {
                input.restore(position);
            }
        }
        if let Some(name) = &m.state_file {
            let state = ck.read_state(name).map_err(|e| self.ck_err(e))?;
            self.load_state(state)
                .map_err(|p| self.ck_err(incompatible(p)))??;
        }
        // Covered batches are in the state already; if their events are still in an input
        // (the crash hit between the checkpoint and the commit), commit them now.
        for r in &m.covered {
            for (i, pos) in r.inputs.iter().enumerate() {
                if let InputPosition::Kafka { .. } = pos {
                    // Explicit offsets: `resume` already starts after this batch.
                    continue;
                }
                if let Some(b) = self.inputs[i]
                    .recut(pos)
                    .await
                    .map_err(|e| self.input_err(e))?
                {
                    b.commit().await.map_err(|e| self.input_err(e))?;
                    tracing::info!(message = "Committed a checkpointed batch left uncommitted by a crash.", job = %self.name, batch_time_ms = r.time_ms);
                }
            }
        }
        let mut last = m.checkpoint_time_ms;
        let pending = m.pending.clone();
        self.manifest = Manifest {
            covered: Vec::new(),
            pending: Vec::new(),
            ..m
        };
        // Pending batches: re-cut exactly the same events and run them again with their
        // original batch times, from the state before them, so outputs come out the same.
        for r in pending {
            let mut batches = Vec::with_capacity(r.inputs.len());
            let mut lost = false;
            for (i, pos) in r.inputs.iter().enumerate() {
                match self.inputs[i]
                    .recut(pos)
                    .await
                    .map_err(|e| self.input_err(e))?
                {
                    Some(b) => batches.push(b),
                    None => lost = true,
                }
            }
            // Roll the checked batch back; the replay takes the same events again, chunk by
            // chunk (the job is the inputs' only consumer).
            drop(batches);
            if lost {
                // Only possible when the input lost uncommitted events (a memory channel
                // after a real crash): nothing to replay; later batches follow from here.
                tracing::warn!(message = "A journaled batch's events are no longer in its input; not replaying it.", job = %self.name, batch_time_ms = r.time_ms);
                continue;
            }
            self.manifest.pending.push(r.clone());
            self.run_batch(r.time_ms, Some(&r.inputs)).await?;
            last = Some(r.time_ms);
        }
        Ok(last)
    }

    fn load_state(&mut self, state: StateFile) -> Result<Result<(), JobError>, String> {
        let mut nodes = state.nodes.into_iter();
        let mut problem = None;
        let mut err = None;
        for o in &mut self.outputs {
            o.runner.visit_state(&mut |n| {
                if problem.is_some() || err.is_some() {
                    return;
                }
                match nodes.next() {
                    Some(ns) if ns.kind == n.kind() => {
                        if let Err(e) = n.load(ns.value) {
                            err = Some(e);
                        }
                    }
                    Some(ns) => {
                        problem = Some(format!(
                            "its state holds a `{}` operator where the job has a `{}`",
                            ns.kind,
                            n.kind()
                        ))
                    }
                    None => {
                        problem = Some("it holds state for fewer operators than the job has".into())
                    }
                }
            });
        }
        if problem.is_none() && nodes.next().is_some() {
            problem = Some("it holds state for more operators than the job has".into());
        }
        if let Some(p) = problem {
            return Err(p);
        }
        Ok(match err {
            Some(source) => Err(JobError::State {
                job: self.name.clone(),
                source,
            }),
            None => Ok(()),
        })
    }

    fn save_state(&mut self, time_ms: i64) -> Result<StateFile, JobError> {
        let mut nodes = Vec::new();
        let mut err = None;
        for o in &mut self.outputs {
            o.runner.visit_state(&mut |n| match n.save() {
                Ok(value) => nodes.push(NodeState {
                    kind: n.kind().to_string(),
                    value,
                }),
                Err(e) => err = err.take().or(Some(e)),
            });
        }
        if let Some(source) = err {
            return Err(JobError::State {
                job: self.name.clone(),
                source,
            });
        }
        Ok(StateFile {
            version: CHECKPOINT_VERSION,
            job: self.name.clone(),
            time_ms,
            nodes,
        })
    }

    /// One batch: cut it chunk by chunk (or take the journaled cut again), running every
    /// chunk through the operators; journal; outputs; then checkpoint and commit when due.
    /// Outputs write only after the journal (I2): the chunks only fold into per-batch
    /// accumulators, and operator state changes at the end of the batch.
    async fn run_batch(
        &mut self,
        time_ms: i64,
        replay: Option<&[InputPosition]>,
    ) -> Result<(), JobError> {
        let start = self.clock.now_ms();
        let limit = self.rate.next_batch_limit();
        let replayed = replay.is_some();
        let mut malformed = 0u64;
        let mut batches = Vec::with_capacity(self.inputs.len());
        for i in 0..self.inputs.len() {
            // A replayed channel batch is its first `events` events; a replayed Kafka batch is
            // exactly the ranges `recut` set up, however many records they hold.
            let journaled_events = match replay.and_then(|p| p.get(i)) {
                Some(InputPosition::Channel { events, .. }) => Some(*events),
                Some(InputPosition::Kafka { .. }) | None => None,
            };
            let want = match (journaled_events, replayed) {
                (Some(events), _) => usize::try_from(events).unwrap_or(usize::MAX),
                (None, true) => usize::MAX,
                (None, false) => limit,
            };
            let mut chunks = Vec::new();
            let mut got = 0usize;
            while got < want {
                let max = (want - got).min(self.chunk_events);
                let taken = self.inputs[i]
                    .take_chunk(max)
                    .await
                    .map_err(|e| self.input_err(e))?;
                let Some(mut chunk) = taken else {
                    break;
                };
                got += chunk.len();
                {
                    let mut slices: Vec<Vec<&[Event]>> = vec![Vec::new(); self.inputs.len()];
                    slices[i].push(chunk.events());
                    let cx = BatchCx::new(time_ms, self.interval_ms, &slices);
                    for o in &mut self.outputs {
                        o.runner.chunk(&cx);
                    }
                    malformed += cx.malformed();
                }
                // Processed: the open take need not hold the events until the commit.
                chunk.release();
                chunks.push(chunk);
            }
            let position = self.inputs[i].end_cut();
            let position = match replay.and_then(|p| p.get(i)) {
                Some(journaled) => {
                    if journaled_events.is_some() && got != want {
                        return Err(self.input_err(InputError::Changed {
                            input: self.inputs[i].name().to_string(),
                            expected: want as u64,
                            found: got as u64,
                        }));
                    }
                    journaled.clone()
                }
                None => position,
            };
            batches.push(InputBatch::new(
                self.inputs[i].name().to_string(),
                chunks,
                position,
            ));
        }
        if !replayed {
            self.check_fail(FailPoint::AfterCut)?;
            if let Some(ck) = &self.checkpoints {
                // I2: the batch is journaled before any of its outputs run.
                self.manifest.pending.push(BatchRecord {
                    time_ms,
                    inputs: batches.iter().map(|b| b.position().clone()).collect(),
                });
                ck.write_manifest(&self.manifest)
                    .await
                    .map_err(|e| self.ck_err(e))?;
            }
        }
        self.check_fail(FailPoint::AfterTake)?;
        let input_events: u64 = batches.iter().map(|b| b.len() as u64).sum();
        {
            let positions: Vec<InputPosition> =
                batches.iter().map(|b| b.position().clone()).collect();
            let cx = BatchCx::new(time_ms, self.interval_ms, &[]).with_positions(&positions);
            for o in &mut self.outputs {
                if let Err(source) = o.runner.finish(&cx).await {
                    return Err(JobError::Output {
                        job: self.name.clone(),
                        batch_time_ms: time_ms,
                        source,
                    });
                }
            }
            malformed += cx.malformed();
        }
        self.check_fail(FailPoint::AfterOutput)?;
        self.held.push(batches);
        let due = match (&self.checkpoints, self.checkpoint_interval_ms) {
            (None, _) => true,
            // Stateless jobs checkpoint every batch: the state file is empty, so it costs
            // little and keeps nothing uncommitted.
            (Some(_), _) if !self.stateful => true,
            (Some(_), None) => true,
            (Some(_), Some(iv)) => match self.manifest.checkpoint_time_ms {
                None => true,
                Some(last) => time_ms - last >= iv,
            },
        };
        if due {
            self.checkpoint_and_commit(time_ms).await?;
        }
        let end = self.clock.now_ms();
        let info = BatchInfo {
            batch_time_ms: time_ms,
            input_events,
            malformed,
            submission_time_ms: time_ms,
            processing_start_ms: start,
            processing_end_ms: end,
            scheduling_delay_ms: (start - time_ms).max(0),
            processing_time_ms: end - start,
            total_delay_ms: (start - time_ms).max(0) + (end - start),
            batch_limit: limit as u64,
            replayed,
        };
        self.rate.on_batch_completed(
            end,
            input_events,
            info.processing_time_ms,
            info.scheduling_delay_ms,
        );
        tracing::info!(
            message = "Batch completed.",
            job = %self.name,
            batch_time_ms = time_ms,
            input_events,
            malformed,
            scheduling_delay_ms = info.scheduling_delay_ms,
            processing_time_ms = info.processing_time_ms,
            total_delay_ms = info.total_delay_ms,
            batch_limit = limit,
            replayed,
        );
        self.metrics.record(info);
        self.batches_run += 1;
        Ok(())
    }

    /// I1: state covering the held batches becomes durable (state file, then the manifest
    /// naming it and moving the batches to `covered`), and only then are inputs committed.
    async fn checkpoint_and_commit(&mut self, time_ms: i64) -> Result<(), JobError> {
        if let Some(ck) = self.checkpoints.clone() {
            let state = self.save_state(time_ms)?;
            let name = ck.write_state(&state).await.map_err(|e| self.ck_err(e))?;
            // Inputs with explicit positions resume after the batches this state includes.
            let mut resume = std::mem::take(&mut self.manifest.resume);
            resume.resize(self.inputs.len(), None);
            for batch in &self.held {
                for (at, b) in resume.iter_mut().zip(batch) {
                    *at = InputPosition::resume_after(at.as_ref(), b.position());
                }
            }
            if resume.iter().any(Option::is_some) {
                self.manifest.resume = resume;
            }
            let mut covered = std::mem::take(&mut self.manifest.covered);
            covered.append(&mut self.manifest.pending);
            self.manifest.covered = covered;
            self.manifest.checkpoint_time_ms = Some(time_ms);
            self.manifest.state_file = Some(name.clone());
            ck.write_manifest(&self.manifest)
                .await
                .map_err(|e| self.ck_err(e))?;
            self.check_fail(FailPoint::AfterCheckpoint)?;
            for batch in self.held.drain(..) {
                for b in batch {
                    b.commit().await.map_err(|source| JobError::Input {
                        job: self.name.clone(),
                        source,
                    })?;
                }
            }
            // Committed: the next manifest write drops them from `covered`.
            self.manifest.covered.clear();
            ck.remove_old_states(&name);
        } else {
            for batch in self.held.drain(..) {
                for b in batch {
                    b.commit().await.map_err(|source| JobError::Input {
                        job: self.name.clone(),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }
}
