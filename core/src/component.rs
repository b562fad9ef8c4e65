//! What a source and a sink are to the agent: a task that runs until its shutdown token is
//! cancelled, and fails by returning an error (the agent restarts it with backoff).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::channel::{Channel, TakeError, TakeTransaction};
use crate::metrics::ComponentMetrics;
use crate::processor::ChannelProcessor;

pub type ComponentError = Box<dyn std::error::Error + Send + Sync>;

pub struct SourceContext {
    /// The component id (the config table name).
    pub id: String,
    pub output: Arc<ChannelProcessor>,
    /// Cancelled when the agent stops: stop accepting input, finish and answer in-flight
    /// batches, then return.
    pub shutdown: CancellationToken,
    pub metrics: ComponentMetrics,
    /// A listening source calls [`Ready::set`] once its socket is bound.
    pub ready: Ready,
}

/// Tells the agent a component accepts input (its listener is bound), so that the agent's
/// `READY=1` to systemd means every listener accepts. Cloning shares the flag; the default
/// flag is watched by no one.
#[derive(Clone, Debug)]
pub struct Ready(Arc<tokio::sync::watch::Sender<bool>>);

impl Ready {
    /// A flag and the receiver the agent waits on.
    pub fn new() -> (Ready, tokio::sync::watch::Receiver<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Ready(Arc::new(tx)), rx)
    }

    pub fn set(&self) {
        self.0.send_replace(true);
    }
}

impl Default for Ready {
    fn default() -> Self {
        Ready::new().0
    }
}

#[async_trait]
pub trait Source: Send {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError>;
}

pub struct SinkContext {
    pub id: String,
    pub channel: Arc<dyn Channel>,
    /// Cancelled once every source has stopped. A sink then finishes its batch and, for a
    /// channel that does not survive a restart, drains what is left before returning.
    pub shutdown: CancellationToken,
    pub metrics: ComponentMetrics,
    /// A listening sink (`spark`) calls [`Ready::set`] once its socket is bound.
    pub ready: Ready,
}

impl SinkContext {
    /// The next batch to deliver, waiting for events; `None` when the sink should return
    /// because the agent is stopping and nothing is left that would be lost.
    pub async fn next_batch(&self, max: usize) -> Result<Option<TakeTransaction>, TakeError> {
        loop {
            let stopping = self.shutdown.is_cancelled();
            if stopping && self.channel.is_durable() {
                return Ok(None);
            }
            if let Some(t) = self.channel.take(max).await? {
                return Ok(Some(t));
            }
            if stopping {
                return Ok(None);
            }
            tokio::select! {
                _ = self.channel.wait_for_events() => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }
}

#[async_trait]
pub trait Sink: Send {
    async fn run(self: Box<Self>, cx: SinkContext) -> Result<(), ComponentError>;
}

/// Exponential backoff between retries: `initial`, doubling, capped at `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; the following one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let seq: Vec<u64> = (0..4).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seq, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
