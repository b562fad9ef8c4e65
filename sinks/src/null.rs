//! The `null` sink: takes, counts and discards (Flume's `null` sink). Useful for benchmarks.

use async_trait::async_trait;
use serde::Deserialize;
use weir_core::metrics::MetricName;
use weir_core::{ComponentError, Sink, SinkContext};

/// `[sinks.NAME] type = "null"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {
    /// Most events taken per transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

const fn default_batch_size() -> usize {
    100
}

impl NullSinkConfig {
    pub fn check(&self) -> Vec<(&'static str, String)> {
        if self.batch_size == 0 {
            return vec![("batch_size", "must be at least 1".into())];
        }
        Vec::new()
    }

    pub fn build(&self) -> NullSink {
        NullSink {
            batch_size: self.batch_size,
        }
    }
}

pub struct NullSink {
    batch_size: usize,
}

#[async_trait]
impl Sink for NullSink {
    async fn run(self: Box<Self>, cx: SinkContext) -> Result<(), ComponentError> {
        let sent = cx.metrics.counter(MetricName::EventsSentTotal);
        while let Some(txn) = cx.next_batch(self.batch_size).await? {
            let n = txn.len() as u64;
            txn.commit().await?;
            sent.inc(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use tokio_util::sync::CancellationToken;
    use weir_core::metrics::{ComponentMetrics, Registry};
    use weir_core::{Channel, Event, MemoryChannel, MemoryChannelConfig};

    #[tokio::test]
    async fn drains_the_channel_on_shutdown() {
        let ch = Arc::new(MemoryChannel::new("c", MemoryChannelConfig::default()));
        ch.put((0..250).map(|i| Event::new(i.to_string())).collect())
            .await
            .unwrap();
        let registry = Registry::default();
        let cx = SinkContext {
            id: "n".into(),
            channel: ch.clone(),
            shutdown: CancellationToken::new(),
            metrics: ComponentMetrics::new(registry.clone(), "sink", "n"),
            ready: Default::default(),
        };
        cx.shutdown.cancel();
        Box::new(NullSinkConfig { batch_size: 100 }.build())
            .run(cx)
            .await
            .unwrap();
        assert_eq!(ch.stats().events, 0);
        assert_eq!(
            registry
                .counter(MetricName::EventsSentTotal, "sink", "n")
                .get(),
            250
        );
    }
}
