//! Wall-clock time for the batch grid. Batch times are milliseconds since the Unix epoch
//! (Spark's `RecurringTimer`), but waiting uses tokio time, so a test that pauses tokio time
//! gets a deterministic grid: [`TokioClock`] maps tokio's paused `Instant` onto a fixed epoch.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch "now". Implementations must be monotonic enough that
/// waiting `d` of tokio time moves `now_ms` forward by about `d`.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system clock (production).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// `epoch_ms` at creation plus the tokio time elapsed since: with `start_paused = true` the
/// whole grid is deterministic and auto-advances as the runtime idles.
#[derive(Clone, Debug)]
pub struct TokioClock {
    epoch_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(epoch_ms: i64) -> Self {
        TokioClock {
            epoch_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.epoch_ms + self.start.elapsed().as_millis() as i64
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The first grid tick strictly after `now_ms`: `(floor(now/B) + 1) × B` (Spark's
/// `getStartTime`; after a restart the same formula keeps the original grid because the grid
/// is anchored at the epoch).
pub fn next_tick(now_ms: i64, interval_ms: i64) -> i64 {
    (now_ms.div_euclid(interval_ms) + 1) * interval_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_multiples_of_the_interval_after_now() {
        assert_eq!(next_tick(0, 2000), 2000);
        assert_eq!(next_tick(1999, 2000), 2000);
        assert_eq!(next_tick(2000, 2000), 4000);
        assert_eq!(next_tick(1_700_000_000_123, 2000), 1_700_000_002_000);
    }
}
