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

/// Upper bounds (ms) of the delay histograms' buckets, as Prometheus `le` labels in seconds.
pub const DELAY_BUCKETS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// A cumulative histogram of one delay since the job started (Prometheus semantics: bucket
/// `i` counts observations `<= DELAY_BUCKETS_MS[i]`; `count` includes those above every bound).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DelayHistogram {
    pub buckets: [u64; DELAY_BUCKETS_MS.len()],
    pub count: u64,
    pub sum_ms: u64,
}

impl DelayHistogram {
    fn observe(&mut self, ms: i64) {
        let ms = ms.max(0) as u64;
        for (bound, n) in DELAY_BUCKETS_MS.iter().zip(self.buckets.iter_mut()) {
            if ms <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum_ms += ms;
    }
}

/// Scheduling delay, processing time and total delay of every batch since the job started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DelayHistograms {
    pub scheduling_delay: DelayHistogram,
    pub processing_time: DelayHistogram,
    pub total_delay: DelayHistogram,
}

#[derive(Debug)]
struct Inner {
    retained: usize,
    batches: VecDeque<BatchInfo>,
    completed_total: u64,
    events_total: u64,
    malformed_total: u64,
    histograms: DelayHistograms,
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
                histograms: DelayHistograms::default(),
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
        g.histograms
            .scheduling_delay
            .observe(info.scheduling_delay_ms);
        g.histograms
            .processing_time
            .observe(info.processing_time_ms);
        g.histograms.total_delay.observe(info.total_delay_ms);
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

    pub fn histograms(&self) -> DelayHistograms {
        self.lock().histograms.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_outlive_the_retained_window() {
        let m = JobMetrics::new(2);
        for (i, delay) in [3i64, 40, 700, 400_000].into_iter().enumerate() {
            m.record(BatchInfo {
                batch_time_ms: i as i64 * 1000,
                input_events: 1,
                malformed: 0,
                submission_time_ms: 0,
                processing_start_ms: 0,
                processing_end_ms: delay,
                scheduling_delay_ms: 0,
                processing_time_ms: delay,
                total_delay_ms: delay,
                batch_limit: 10,
                replayed: false,
            });
        }
        assert_eq!(m.batches().len(), 2);
        let h = m.histograms().processing_time;
        assert_eq!(h.count, 4);
        assert_eq!(h.sum_ms, 3 + 40 + 700 + 400_000);
        assert_eq!(h.buckets[0], 1, "<= 5 ms");
        assert_eq!(h.buckets[3], 2, "<= 50 ms");
        assert_eq!(h.buckets[7], 3, "<= 1 s");
        assert_eq!(h.buckets[13], 3, "400 s is above every bound");
        assert_eq!(m.histograms().scheduling_delay.buckets[0], 4);
    }
}
