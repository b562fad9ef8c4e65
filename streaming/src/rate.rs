//! Backpressure: Spark's PID rate estimator (`PIDRateEstimator.scala`) and how its estimate
//! limits the next batch.

/// Gains and floor of the estimator; the defaults are Spark's
/// (`spark.streaming.backpressure.pid.*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PidConfig {
    pub proportional: f64,
    pub integral: f64,
    pub derived: f64,
    /// Lower bound of any estimate, records/s (must be > 0).
    pub min_rate: f64,
}

impl Default for PidConfig {
    fn default() -> Self {
        PidConfig {
            proportional: 1.0,
            integral: 0.2,
            derived: 0.0,
            min_rate: 100.0,
        }
    }
}

/// The PID estimator, formula for formula as in the spec (§5.2). The first qualifying batch
/// only seeds it; batches with no records or zero processing time leave it unchanged.
#[derive(Clone, Debug)]
pub struct PidRateEstimator {
    batch_interval_ms: f64,
    cfg: PidConfig,
    first_run: bool,
    latest_time: i64,
    latest_rate: f64,
    latest_error: f64,
}

impl PidRateEstimator {
    pub fn new(batch_interval_ms: i64, cfg: PidConfig) -> Self {
        PidRateEstimator {
            batch_interval_ms: batch_interval_ms as f64,
            cfg,
            first_run: true,
            latest_time: -1,
            latest_rate: -1.0,
            latest_error: -1.0,
        }
    }

    /// `time_ms` = processing end, `elements` = records in the batch, `processing_ms` and
    /// `scheduling_ms` = the batch's delays. Returns the new rate (records/s) or `None`.
    pub fn compute(
        &mut self,
        time_ms: i64,
        elements: u64,
        processing_ms: i64,
        scheduling_ms: i64,
    ) -> Option<f64> {
        if !(time_ms > self.latest_time && elements > 0 && processing_ms > 0) {
            return None;
        }
        let dt = (time_ms - self.latest_time) as f64 / 1000.0;
        let processing_rate = elements as f64 / processing_ms as f64 * 1000.0;
        let error = self.latest_rate - processing_rate;
        let hist_error = scheduling_ms as f64 * processing_rate / self.batch_interval_ms;
        let d_error = (error - self.latest_error) / dt;
        let new_rate = (self.latest_rate
            - self.cfg.proportional * error
            - self.cfg.integral * hist_error
            - self.cfg.derived * d_error)
            .max(self.cfg.min_rate);
        self.latest_time = time_ms;
        if self.first_run {
            self.latest_rate = processing_rate;
            self.latest_error = 0.0;
            self.first_run = false;
            None
        } else {
            self.latest_rate = new_rate;
            self.latest_error = error;
            Some(new_rate)
        }
    }
}

/// Decides how many events the next batch may take.
#[derive(Clone, Debug)]
pub struct RateController {
    estimator: Option<PidRateEstimator>,
    /// Latest published estimate, rounded down (Spark publishes a long).
    latest: Option<u64>,
    initial_rate: Option<u64>,
    max_rate: Option<u64>,
    max_batch_events: usize,
    batch_interval_ms: i64,
}

impl RateController {
    pub fn new(
        backpressure: bool,
        pid: PidConfig,
        initial_rate: Option<u64>,
        max_rate: Option<u64>,
        max_batch_events: usize,
        batch_interval_ms: i64,
    ) -> Self {
        RateController {
            estimator: backpressure.then(|| PidRateEstimator::new(batch_interval_ms, pid)),
            latest: None,
            initial_rate,
            max_rate: max_rate.filter(|r| *r > 0),
            max_batch_events: max_batch_events.max(1),
            batch_interval_ms,
        }
    }

    /// Feeds a completed batch to the estimator (no-op without backpressure).
    pub fn on_batch_completed(
        &mut self,
        end_ms: i64,
        elements: u64,
        processing_ms: i64,
        scheduling_ms: i64,
    ) {
        if let Some(est) = self.estimator.as_mut() {
            if let Some(rate) = est.compute(end_ms, elements, processing_ms, scheduling_ms) {
                self.latest = Some(rate.floor() as u64);
            }
        }
    }

    /// The current rate limit in records/s, if any: the estimate (or the initial rate before
    /// the first one) capped by `max_rate`; without backpressure just `max_rate`.
    pub fn rate_limit(&self) -> Option<u64> {
        let estimate = if self.estimator.is_some() {
            self.latest.or(self.initial_rate)
        } else {
            None
        };
        match (estimate, self.max_rate) {
            (Some(e), Some(m)) => Some(e.min(m)),
            (Some(e), None) => Some(e),
            (None, m) => m,
        }
    }

    /// Most events the next batch may take: rate × interval, at least 1, at most
    /// `max_batch_events`.
    pub fn next_batch_limit(&self) -> usize {
        match self.rate_limit() {
            Some(rate) => {
                let n = (rate as u128 * self.batch_interval_ms as u128 / 1000) as usize;
                n.clamp(1, self.max_batch_events)
            }
            None => self.max_batch_events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_batch_only_seeds_and_empty_batches_are_ignored() {
        let mut e = PidRateEstimator::new(1000, PidConfig::default());
        assert_eq!(e.compute(1000, 0, 10, 0), None);
        assert_eq!(e.compute(1000, 100, 0, 0), None);
        assert_eq!(e.compute(1000, 1000, 500, 0), None); // seeds at 2000/s
                                                         // Same processing rate, no scheduling delay: error 0 → rate stays.
        assert_eq!(e.compute(2000, 1000, 500, 0), Some(2000.0));
        // Out-of-order time: no update.
        assert_eq!(e.compute(1500, 1000, 500, 0), None);
    }

    #[test]
    fn matches_hand_computed_formula() {
        let mut e = PidRateEstimator::new(2000, PidConfig::default());
        e.compute(10_000, 4000, 1000, 0); // seed: latestRate 4000
                                          // procRate = 3000/1500*1000 = 2000; error = 4000-2000 = 2000;
                                          // hist = 500*2000/2000 = 500; new = 4000 - 2000 - 0.2*500 = 1900
        assert_eq!(e.compute(12_000, 3000, 1500, 500), Some(1900.0));
        // floor at min_rate
        assert_eq!(e.compute(14_000, 10, 1000, 100_000), Some(100.0));
    }

    #[test]
    fn limit_is_rate_times_interval_capped() {
        let mut c = RateController::new(
            true,
            PidConfig::default(),
            None,
            Some(5000),
            1_000_000,
            2000,
        );
        assert_eq!(c.next_batch_limit(), 10_000); // max_rate before any estimate
        c.on_batch_completed(2000, 1000, 100, 0);
        c.on_batch_completed(4000, 1000, 1000, 0);
        // estimate = 10000 - 1*(10000-1000) = 1000/s → 2000 per 2 s batch
        assert_eq!(c.rate_limit(), Some(1000));
        assert_eq!(c.next_batch_limit(), 2000);
        let off = RateController::new(false, PidConfig::default(), None, None, 777, 2000);
        assert_eq!(off.next_batch_limit(), 777);
    }
}
