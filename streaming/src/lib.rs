//! weir's built-in micro-batch engine, with Spark Streaming's semantics
//! (`/work/shared/spec/spark-streaming-semantics.md`).
//!
//! A job has inputs (channels, or Kafka offset ranges through `weir_kafka::direct`), a batch interval `B`,
//! operators ([`EventStream`], [`Stream`]) and outputs ([`Output`]). Batch times are the
//! multiples of `B` since the Unix epoch. The job is one task running strictly one batch at
//! a time, in batch-time order; a late batch delays the next (scheduling delay), ticks are
//! never skipped or merged, empty batches are real batches.
//!
//! # One batch `T`
//! 1. **cut**: take up to the batch limit from every input, in chunks of `chunk_events`
//!    (one take transaction each); every chunk runs through the per-element operators and is
//!    folded into the aggregations, then its events are released (the file channel re-reads
//!    them from its log if the take is rolled back), so a batch's memory is one chunk plus
//!    the aggregation state ([`stream`] lists the operators that hold a whole batch);
//! 2. **journal**: append `{T, input positions}` to `pending` in the manifest (durable);
//! 3. **outputs**, in definition order, from the batch's results; stateful operators update
//!    in memory;
//! 4. **checkpoint** when due (every batch by default, or every `checkpoint_interval`):
//!    write `state-T.json`, then the manifest naming it with the held batches moved from
//!    `pending` to `covered`;
//! 5. **commit** the held batches' inputs, oldest first (a batch's chunks together).
//!
//! # Invariants
//! * **I1** — an input batch is committed only after a checkpoint whose state includes it
//!   is durable. So a crash never loses a batch's effect on state.
//! * **I2** — a batch is journaled (time + input positions) before any of its outputs run.
//!   So every output written by a batch that is not in the state checkpoint can be
//!   reproduced: same batch time, same events.
//! * **I3** — the checkpointed state is the state after exactly the batches up to
//!   `checkpoint_time_ms`; `pending` batches come after it, in order.
//!
//! # Recovery (start of [`Job::run`])
//! * Load the state named by the manifest: the state *before* every `pending` batch.
//! * `covered` batches are in that state; if an input still starts with one (crash between
//!   the checkpoint and the commit), it is committed now without being processed again.
//! * `pending` batches are re-cut (same event count and fingerprint; the check takes the
//!   events and rolls them back) and run again with their original batch times, from that
//!   state; outputs are re-written (idempotent for `file`; a `transactional` output that
//!   committed the batch's input positions with its results finds them committed and does
//!   not write again), state ends up exactly as without the crash.
//! * Then batches continue on the grid right after the last batch done: ticks missed while
//!   down are run at once, back to back (Spark re-runs them too), so batch times have no
//!   holes and a batch cut but not journaled before the crash gets its original time
//!   (beyond `max_catch_up_batches` missed ticks the job resumes at the next tick instead).
//!
//! Result: exactly-once state, exactly-once files for idempotent outputs and exactly-once
//! records for transactional ones (the Kafka output with a transactional id, whose
//! transactions carry the Kafka input offsets); `print`, `events` and `for_each_batch` may
//! repeat a batch (at-least-once).
//!
//! **Channel positions are implicit**: a channel redelivers uncommitted events first and in
//! order, so a batch is identified by its event count plus a [fingerprint](input::Fingerprint).
//! The blind spot: if a `covered` batch was committed *and* the next events have the same
//! count and fingerprint (e.g. a stream of identical lines), recovery would take the newer
//! events for the old batch and commit them unprocessed. It needs a crash in the window
//! between the manifest write and the commit; Kafka inputs carry exact offsets instead, and
//! the manifest records where they resume (`resume`), written together with the state.
//! A memory channel loses uncommitted events on a real crash; the journaled batches are then
//! skipped with a warning.
//!
//! # Backpressure
//! With `backpressure`, Spark's PID estimator ([`rate`]) sets the next batch's limit to
//! `rate × B` events per input (capped by `max_rate` and `max_batch_events`); the channel
//! keeps the rest and, when full, its sources refuse upstream.

#![forbid(unsafe_code)]

//! # For the agent: running a `[jobs.NAME]` job
//! ```ignore
//! let cfg: JobConfig = /* the [jobs.NAME] table */;
//! for (path, problem) in cfg.check() { /* report as jobs.NAME.<path>: <problem> */ }
//! let inputs: Vec<Arc<dyn Channel>> = cfg.input_names().iter().map(|n| channels[n].clone()).collect();
//! let mut cx = BuildContext::new(inputs, data_dir.clone(), shutdown.child_token());
//! // One input per `{ kafka = … }` entry (`cfg.kafka_inputs()`), built by `weir_kafka::direct`:
//! cx.kafka_inputs = kafka_tables.map(|t| Box::new(kafka_config(t).build(interval, stop)?));
//! cx.events_output = avro_client_for(&cfg.output); // only for output.type = "avro"
//! let job = cfg.build(&name, cx)?;                  // validates and opens <data_dir>/jobs/NAME/
//! let metrics: JobMetrics = job.metrics();          // keep for the status/metrics endpoint
//! tracker.spawn(job.run().instrument(span));        // Result<(), JobError>
//! ```
//! The job is the only consumer of its input channels (no sink may share them). On error,
//! restart it with backoff by building it again from the same config and data dir: recovery
//! replays the journaled batches.

pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod input;
pub mod job;
pub mod metrics;
pub mod output;
pub mod rate;
pub mod stream;

pub use checkpoint::{CheckpointError, CHECKPOINT_VERSION};
pub use clock::{Clock, SystemClock, TokioClock};
pub use config::{BuildContext, JobConfig};
pub use input::{
    ChannelInput, Fingerprint, InputBatch, InputChunk, InputError, InputPosition, JobInput,
    OffsetRange,
};
pub use job::{FailPoint, Job, JobError, JobOptions, StreamingContext};
pub use metrics::{BatchInfo, DelayHistogram, DelayHistograms, JobMetrics, DELAY_BUCKETS_MS};
pub use output::{
    format_print, text_event, EventsFn, Output, OutputError, OutputFmt, TransactionalFn,
};
pub use rate::{PidConfig, PidRateEstimator, RateController};
pub use stream::{field, BatchCx, Data, EventStream, Key, Stream};

#[cfg(test)]
mod stream_tests;
