//! A small in-process metrics registry: monotonic counters and gauges labelled by component.
//! Exporters (Prometheus text, Flume's JSON) read [`Registry::snapshot`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Metric names, snake_case with a unit; counters end in `_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricName {
    EventsReceivedTotal,
    EventsAcceptedTotal,
    EventsSentTotal,
    BytesReceivedTotal,
    BatchesRefusedTotal,
    ConnectionsAcceptedTotal,
    ConnectionsRejectedTotal,
    ConnectionsOpen,
    /// UDP datagrams dropped because the IP filter refuses their sender.
    DatagramsRejectedTotal,
    ErrorsTotal,
    ComponentRestartsTotal,
    TransactionTimeoutsTotal,
    ChannelEvents,
}

impl MetricName {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::EventsReceivedTotal => "weir_events_received_total",
            MetricName::EventsAcceptedTotal => "weir_events_accepted_total",
            MetricName::EventsSentTotal => "weir_events_sent_total",
            MetricName::BytesReceivedTotal => "weir_bytes_received_total",
            MetricName::BatchesRefusedTotal => "weir_batches_refused_total",
            MetricName::ConnectionsAcceptedTotal => "weir_connections_accepted_total",
            MetricName::ConnectionsRejectedTotal => "weir_connections_rejected_total",
            MetricName::ConnectionsOpen => "weir_connections_open",
            MetricName::DatagramsRejectedTotal => "weir_datagrams_rejected_total",
            MetricName::ErrorsTotal => "weir_errors_total",
            MetricName::ComponentRestartsTotal => "weir_component_restarts_total",
            MetricName::TransactionTimeoutsTotal => "weir_transaction_timeouts_total",
            MetricName::ChannelEvents => "weir_channel_events",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
enum Value {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Clone, Debug)]
struct Entry {
    name: MetricName,
    kind: &'static str,
    id: String,
    value: Value,
}

/// One sample of [`Registry::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub name: MetricName,
    pub component_kind: &'static str,
    pub component_id: String,
    pub value: i64,
}

#[derive(Clone, Debug, Default)]
pub struct Registry {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Registry {
    fn find_or_insert(
        &self,
        name: MetricName,
        kind: &'static str,
        id: &str,
        make: impl FnOnce() -> Value,
    ) -> Value {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries
            .iter()
            .find(|e| e.name == name && e.kind == kind && e.id == id)
        {
            return e.value.clone();
        }
        let value = make();
        entries.push(Entry {
            name,
            kind,
            id: id.to_string(),
            value: value.clone(),
        });
        value
    }

    /// The counter for this name and component, created at zero on first use; a restarted
    /// component gets the same counter back, so totals survive restarts.
    pub fn counter(&self, name: MetricName, kind: &'static str, id: &str) -> Counter {
        match self.find_or_insert(name, kind, id, || Value::Counter(Counter::default())) {
            Value::Counter(c) => c,
            Value::Gauge(_) => Counter::default(),
        }
    }

    pub fn gauge(&self, name: MetricName, kind: &'static str, id: &str) -> Gauge {
        match self.find_or_insert(name, kind, id, || Value::Gauge(Gauge::default())) {
            Value::Gauge(g) => g,
            Value::Counter(_) => Gauge::default(),
        }
    }

    pub fn snapshot(&self) -> Vec<Sample> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|e| Sample {
                name: e.name,
                component_kind: e.kind,
                component_id: e.id.clone(),
                value: match &e.value {
                    Value::Counter(c) => c.get() as i64,
                    Value::Gauge(g) => g.get(),
                },
            })
            .collect()
    }
}

/// A component's handle on the registry, with its kind and id filled in.
#[derive(Clone, Debug)]
pub struct ComponentMetrics {
    registry: Registry,
    kind: &'static str,
    id: String,
}

impl ComponentMetrics {
    pub fn new(registry: Registry, kind: &'static str, id: impl Into<String>) -> Self {
        ComponentMetrics {
            registry,
            kind,
            id: id.into(),
        }
    }
    pub fn counter(&self, name: MetricName) -> Counter {
        self.registry.counter(name, self.kind, &self.id)
    }
    pub fn gauge(&self, name: MetricName) -> Gauge {
        self.registry.gauge(name, self.kind, &self.id)
    }
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_per_name_and_component() {
        let r = Registry::default();
        let a = r.counter(MetricName::EventsReceivedTotal, "source", "s1");
        let b = r.counter(MetricName::EventsReceivedTotal, "source", "s1");
        let c = r.counter(MetricName::EventsReceivedTotal, "source", "s2");
        a.inc(2);
        b.inc(3);
        c.inc(1);
        assert_eq!(a.get(), 5);
        let snap = r.snapshot();
        assert_eq!(snap.len(), 2);
    }
}
