//! Per-batch metrics with Spark's definitions (spec §7), kept for the last N batches behind a
//! cheap shared handle the agent can read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One completed batch. Times are milliseconds since the Unix epoch (the job's clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchInfo {
    /// The grid tick `T` identifying the batch.
    pub batch_time_ms: i64,
    /// Events cut from all inputs.
    pub input_events: u64,
    /// Records the operators could not interpret (missing field, invalid UTF-8, …).
    pub malformed: u64,
    /// When the batch was due (the tick); weir submits at the tick like Spark's timer.
    pub submission_time_ms: i64,
    pub processing_start_ms: i64,
    pub processing_end_ms: i64,
    /// processing start − submission time.
    pub scheduling_delay_ms: i64,
    /// processing end − processing start.
    pub processing_time_ms: i64,
    /// scheduling delay + processing time.
    pub total_delay_ms: i64,
    /// The most events this batch was allowed to take.
    pub batch_limit: u64,
    /// True for a batch re-run from the checkpoint journal after a restart.
    pub replayed: bool,
}

#[derive(Debug)]
struct Inner {
    retained: usize,
    batches: VecDeque<BatchInfo>,
    completed_total: u64,
    events_total: u64,
    malformed_total: u64,
}

/// Shared, cloneable view of a job's recent batches.
#[derive(Clone, Debug)]
pub struct JobMetrics {
    inner: Arc<Mutex<Inner>>,
}

impl JobMetrics {
    pub fn new(retained: usize) -> Self {
        JobMetrics {
            inner: Arc::new(Mutex::new(Inner {
                retained: retained.max(1),
                batches: VecDeque::new(),
                completed_total: 0,
                events_total: 0,
                malformed_total: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, info: BatchInfo) {
        let mut g = self.lock();
        g.completed_total += 1;
        g.events_total += info.input_events;
        g.malformed_total += info.malformed;
        if g.batches.len() == g.retained {
            g.batches.pop_front();
        }
        g.batches.push_back(info);
    }

    /// The retained batches, oldest first.
    pub fn batches(&self) -> Vec<BatchInfo> {
        self.lock().batches.iter().cloned().collect()
    }

    pub fn last(&self) -> Option<BatchInfo> {
        self.lock().batches.back().cloned()
    }

    /// (completed batches, input events, malformed records) since the job started.
    pub fn totals(&self) -> (u64, u64, u64) {
        let g = self.lock();
        (g.completed_total, g.events_total, g.malformed_total)
    }
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics::new(1000)
    }
}
