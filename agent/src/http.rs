//! The HTTP status server (`[http] bind = "…"`, off unless configured):
//! * `GET /health` — `{"status":"ok",…}` once the agent runs;
//! * `GET /metrics` — Prometheus text format, every counter and gauge labelled by component,
//!   plus channel fill;
//! * `GET /flume/metrics` — the JSON document Flume serves with `flume.monitoring.type=http`
//!   (`{"SOURCE.r1":{"Type":"SOURCE","EventReceivedCount":"10",…},…}`, every value a string),
//!   so existing Flume monitoring keeps working when pointed at this path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weir_core::metrics::{MetricName, Registry, Sample};
use weir_core::{Channel, Ready};

/// `[http]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the status server, e.g. `"127.0.0.1:8080"`; port 0 picks one (logged).
    pub bind: SocketAddr,
}

/// What the endpoints read.
#[derive(Clone)]
pub struct StatusState {
    pub registry: Registry,
    /// Replaced by a config reload.
    pub inventory: Arc<RwLock<Inventory>>,
    pub started_ms: u64,
}

/// The running channels and components.
#[derive(Clone, Default)]
pub struct Inventory {
    pub channels: BTreeMap<String, Arc<dyn Channel>>,
    /// (kind, id) of every source and sink, for Flume's document.
    pub components: Vec<(&'static str, String)>,
}

impl StatusState {
    pub fn new(registry: Registry, inventory: Inventory) -> Self {
        StatusState {
            registry,
            inventory: Arc::new(RwLock::new(inventory)),
            started_ms: now_ms(),
        }
    }

    pub fn inventory(&self) -> Inventory {
        self.inventory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_inventory(&self, inventory: Inventory) {
        *self.inventory.write().unwrap_or_else(|p| p.into_inner()) = inventory;
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn serve(
    config: HttpConfig,
    state: StatusState,
    shutdown: CancellationToken,
    ready: Ready,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("http.bind: cannot listen on {}: {e}", config.bind))?;
    let addr = listener.local_addr()?;
    info!(message = "http status server listening", %addr);
    ready.set();
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/flume/metrics", get(flume_json))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn health(State(state): State<StatusState>) -> impl IntoResponse {
    let inventory = state.inventory();
    let body = format!(
        "{{\"status\":\"ok\",\"uptime_ms\":{},\"components\":{},\"channels\":{}}}",
        now_ms().saturating_sub(state.started_ms),
        inventory.components.len(),
        inventory.channels.len()
    );
    ([(header::CONTENT_TYPE, "application/json")], body)
}

fn metric_type(name: MetricName) -> &'static str {
    if name.as_str().ends_with("_total") {
        "counter"
    } else {
        "gauge"
    }
}

/// Label values are component ids from the config; escape what Prometheus requires.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render_prometheus(
    samples: &[Sample],
    channels: &BTreeMap<String, Arc<dyn Channel>>,
) -> String {
    let mut by_name: BTreeMap<MetricName, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_name.entry(s.name).or_default().push(s);
    }
    let mut out = String::new();
    for (name, list) in by_name {
        let _ = writeln!(out, "# TYPE {} {}", name.as_str(), metric_type(name));
        for s in list {
            let _ = writeln!(
                out,
                "{}{{component_kind=\"{}\",component_id=\"{}\"}} {}",
                name.as_str(),
                s.component_kind,
                escape_label(&s.component_id),
                s.value
            );
        }
    }
    type Gauge = fn(&weir_core::ChannelStats) -> f64;
    let gauges: [(&str, Gauge); 5] = [
        ("weir_channel_events", |s| s.events as f64),
        ("weir_channel_bytes", |s| s.bytes as f64),
        ("weir_channel_capacity_events", |s| s.max_events as f64),
        ("weir_channel_capacity_bytes", |s| s.max_bytes as f64),
        ("weir_channel_fill_ratio", |s| fill(s) / 100.0),
    ];
    let stats: Vec<(&String, weir_core::ChannelStats)> =
        channels.iter().map(|(n, c)| (n, c.stats())).collect();
    for (metric, value) in gauges {
        let _ = writeln!(out, "# TYPE {metric} gauge");
        for (name, s) in &stats {
            let _ = writeln!(
                out,
                "{metric}{{component_kind=\"channel\",component_id=\"{}\"}} {}",
                escape_label(name),
                value(s)
            );
        }
    }
    out
}

/// Percent of the tighter of the two bounds.
fn fill(s: &weir_core::ChannelStats) -> f64 {
    let by_events = if s.max_events == 0 {
        0.0
    } else {
        s.events as f64 / s.max_events as f64
    };
    let by_bytes = if s.max_bytes == 0 {
        0.0
    } else {
        s.bytes as f64 / s.max_bytes as f64
    };
    by_events.max(by_bytes) * 100.0
}

async fn prometheus(State(state): State<StatusState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_prometheus(&state.registry.snapshot(), &state.inventory().channels),
    )
}

/// Flume's counter names for ours (`flume-sources-and-config.md` §E).
fn flume_name(kind: &str, name: MetricName) -> Option<&'static str> {
    Some(match (kind, name) {
        ("source", MetricName::EventsReceivedTotal) => "EventReceivedCount",
        ("source", MetricName::EventsAcceptedTotal) => "EventAcceptedCount",
        ("source", MetricName::ConnectionsOpen) => "OpenConnectionCount",
        ("source", MetricName::BatchesRefusedTotal) => "ChannelWriteFail",
        ("source", MetricName::ErrorsTotal) => "EventReadFail",
        ("sink", MetricName::EventsSentTotal) => "EventDrainSuccessCount",
        ("sink", MetricName::ErrorsTotal) => "ConnectionFailedCount",
        _ => return None,
    })
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn render_flume(state: &StatusState) -> String {
    let samples = state.registry.snapshot();
    let mut groups: BTreeMap<String, BTreeMap<&'static str, String>> = BTreeMap::new();
    let start = state.started_ms.to_string();
    let inventory = state.inventory();
    for (kind, id) in inventory.components.iter() {
        let ty = if *kind == "source" { "SOURCE" } else { "SINK" };
        let g = groups.entry(format!("{ty}.{id}")).or_default();
        g.insert("Type", ty.to_string());
        g.insert("StartTime", start.clone());
        g.insert("StopTime", "0".into());
        let zero: &[&str] = if ty == "SOURCE" {
            &[
                "EventReceivedCount",
                "EventAcceptedCount",
                "OpenConnectionCount",
                "ChannelWriteFail",
                "EventReadFail",
            ]
        } else {
            &["EventDrainSuccessCount", "ConnectionFailedCount"]
        };
        for k in zero {
            g.insert(k, "0".into());
        }
    }
    for s in &samples {
        if let Some(flume) = flume_name(s.component_kind, s.name) {
            let ty = if s.component_kind == "source" {
                "SOURCE"
            } else {
                "SINK"
            };
            if let Some(g) = groups.get_mut(&format!("{ty}.{}", s.component_id)) {
                g.insert(flume, s.value.to_string());
            }
        }
    }
    for (name, ch) in inventory.channels.iter() {
        let st = ch.stats();
        let g = groups.entry(format!("CHANNEL.{name}")).or_default();
        g.insert("Type", "CHANNEL".into());
        g.insert("StartTime", start.clone());
        g.insert("StopTime", "0".into());
        g.insert("ChannelSize", st.events.to_string());
        g.insert("ChannelCapacity", st.max_events.to_string());
        // Java's Double.toString: always a decimal point.
        let pct = fill(&st);
        g.insert(
            "ChannelFillPercentage",
            if pct.fract() == 0.0 {
                format!("{pct:.1}")
            } else {
                pct.to_string()
            },
        );
    }
    let mut out = String::from("{");
    for (i, (group, attrs)) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(group));
        out.push_str(":{");
        for (j, (k, v)) in attrs.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}:{}", json_string(k), json_string(v));
        }
        out.push('}');
    }
    out.push('}');
    out
}

async fn flume_json(State(state): State<StatusState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        render_flume(&state),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::{Event, MemoryChannel, MemoryChannelConfig};

    #[tokio::test]
    async fn prometheus_and_flume_documents_carry_counters_and_fill() {
        let registry = Registry::default();
        registry
            .counter(MetricName::EventsReceivedTotal, "source", "in")
            .inc(7);
        registry
            .counter(MetricName::EventsSentTotal, "sink", "out")
            .inc(5);
        let ch: Arc<dyn Channel> = Arc::new(MemoryChannel::new(
            "c",
            MemoryChannelConfig {
                max_events: 8,
                ..Default::default()
            },
        ));
        ch.put(vec![Event::new("a"), Event::new("b")])
            .await
            .unwrap();
        let mut state = StatusState::new(
            registry,
            Inventory {
                channels: BTreeMap::from([("c".to_string(), ch)]),
                components: vec![("source", "in".to_string()), ("sink", "out".to_string())],
            },
        );
        state.started_ms = 1700000000000;
        let prom = render_prometheus(&state.registry.snapshot(), &state.inventory().channels);
        assert!(prom.contains("# TYPE weir_events_received_total counter\nweir_events_received_total{component_kind=\"source\",component_id=\"in\"} 7\n"), "{prom}");
        assert!(
            prom.contains("weir_channel_events{component_kind=\"channel\",component_id=\"c\"} 2\n"),
            "{prom}"
        );
        assert!(
            prom.contains(
                "weir_channel_fill_ratio{component_kind=\"channel\",component_id=\"c\"} 0.25\n"
            ),
            "{prom}"
        );
        let flume = render_flume(&state);
        assert!(flume.contains("\"CHANNEL.c\":{\"ChannelCapacity\":\"8\",\"ChannelFillPercentage\":\"25.0\",\"ChannelSize\":\"2\""), "{flume}");
        assert!(flume.contains("\"SOURCE.in\":{\"ChannelWriteFail\":\"0\",\"EventAcceptedCount\":\"0\",\"EventReadFail\":\"0\",\"EventReceivedCount\":\"7\""), "{flume}");
        assert!(
            flume.contains(
                "\"SINK.out\":{\"ConnectionFailedCount\":\"0\",\"EventDrainSuccessCount\":\"5\""
            ),
            "{flume}"
        );
    }
}
