//! The HTTP status server (`[http] bind = "…"`, off unless configured):
//! * `GET /health` — `{"status":"ok",…}` once the agent runs;
//! * `GET /metrics` — Prometheus text format, every counter and gauge labelled by component,
//!   plus channel fill;
//! * `GET /flume/metrics` — the JSON document Flume serves with `flume.monitoring.type=http`
//!   (`{"SOURCE.r1":{"Type":"SOURCE","EventReceivedCount":"10",…},…}`, every value a string),
//!   so existing Flume monitoring keeps working when pointed at this path.
//!
//! With `tls = { cert, key }` it serves HTTPS only; `ip_filter` (Flume's `ipFilterRules`)
//! closes refused peers at accept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use weir_avro_rpc::transport::BoxStream;
use weir_core::accept::{Accepted, Acceptor, IdleTimeout};
use weir_core::ipfilter::IpFilter;
use weir_core::metrics::{ComponentMetrics, MetricName, Registry, Sample};
use weir_core::tls::{self, TlsAcceptor, TlsServerSettings};
use weir_core::{Channel, ConfigDuration, Ready};
use weir_streaming::{BatchInfo, DelayHistogram, DelayHistograms, JobMetrics, DELAY_BUCKETS_MS};

/// `[http]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the status server, e.g. `"127.0.0.1:8080"`; port 0 picks one (logged).
    pub bind: SocketAddr,
    /// Most connections served at once; further ones are closed at accept (logged once per
    /// interval).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that moves no byte either way for this long is closed (a scraper between
    /// scrapes, a client that connected and went away).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// A request's headers must be complete within this time of its first byte (on a kept-
    /// alive connection: of the previous response), however steadily they trickle in.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: ConfigDuration,
    /// HTTPS with a PEM certificate chain and key: `tls = { cert = "cert.pem", key = "key.pem" }`.
    /// The handshake must finish within `idle_timeout`.
    #[serde(default)]
    pub tls: Option<TlsServerSettings>,
    /// Flume's `ipFilterRules` syntax: `allow:ip:127.*,deny:ip:*`, first match wins, no match =
    /// accept. Unset = accept everyone.
    #[serde(default)]
    pub ip_filter: Option<String>,
}

const fn default_max_connections() -> usize {
    1024
}
const fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
const fn default_header_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

impl HttpConfig {
    pub fn from_address(bind: SocketAddr) -> Self {
        HttpConfig {
            bind,
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            header_timeout: default_header_timeout(),
            tls: None,
            ip_filter: None,
        }
    }

    /// Settings that deserialize but make no sense, with the key they belong to.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.max_connections == 0 {
            errors.push(("max_connections", "must be at least 1".into()));
        }
        if self.idle_timeout.0.is_zero() {
            errors.push(("idle_timeout", "must be more than 0".into()));
        }
        if self.header_timeout.0.is_zero() {
            errors.push(("header_timeout", "must be more than 0".into()));
        }
        if let Some(Err(e)) = self.ip_filter.as_deref().map(IpFilter::parse) {
            errors.push(("ip_filter", e.to_string()));
        }
        if let Some(t) = &self.tls {
            errors.extend(t.check());
        }
        errors
    }
}

/// The status server's connections: the IP filter and `max_connections` at accept, then each
/// TLS handshake in a task of its own (a slow or silent client must not hold up the others);
/// hyper gets only connections ready to speak HTTP, each closed when idle.
struct GatedListener {
    ready: mpsc::Receiver<(LimitedConnection, SocketAddr)>,
}

/// A connection and its place under `max_connections`, freed when the connection ends.
struct LimitedConnection {
    io: IdleTimeout<BoxStream>,
    _slot: OwnedSemaphorePermit,
}

impl GatedListener {
    fn spawn(
        mut acceptor: Acceptor,
        tls: Option<TlsAcceptor>,
        idle_timeout: Duration,
        shutdown: CancellationToken,
    ) -> std::io::Result<GatedListener> {
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(
            async move {
                loop {
                    let Accepted { stream, peer, slot } = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        conn = acceptor.accept() => conn,
                    };
                    let _ = stream.set_nodelay(true);
                    let tx = tx.clone();
                    let Some(tls) = tls.clone() else {
                        // hyper's header timer starts when it waits for a request, so a new
                        // connection goes to it at its first byte: a silent one is left to
                        // `idle_timeout`, a slow one to `header_timeout`.
                        tokio::spawn(
                            async move {
                                // `readable()` may wake without data (tokio documents spurious
                                // readiness), which handed silent connections to hyper's header
                                // timer: peek waits for a real first byte.
                                let mut byte = [0u8; 1];
                                let first =
                                    tokio::time::timeout(idle_timeout, stream.peek(&mut byte));
                                if matches!(first.await, Ok(Ok(n)) if n > 0) {
                                    let io = IdleTimeout::new(
                                        Box::new(stream) as BoxStream,
                                        idle_timeout,
                                    );
                                    let conn = LimitedConnection { io, _slot: slot };
                                    let _ = tx.send((conn, peer)).await;
                                }
                            }
                            .in_current_span(),
                        );
                        continue;
                    };
                    tokio::spawn(
                        async move {
                            if let Some(s) = https_handshake(&tls, stream, peer, idle_timeout).await
                            {
                                let io = IdleTimeout::new(s, idle_timeout);
                                let _ =
                                    tx.send((LimitedConnection { io, _slot: slot }, peer)).await;
                            }
                        }
                        .in_current_span(),
                    );
                }
            }
            .in_current_span(),
        );
        Ok(GatedListener { ready })
    }
}

/// A plain HTTP request on the HTTPS port gets a 400 that says so (as nginx and Go do), so a
/// curl user sees the reason; anything else that is not TLS is just closed. Both are logged.
async fn https_handshake(
    acceptor: &TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<BoxStream> {
    if let Ok(Ok(Some(first))) = tokio::time::timeout(timeout, tls::first_byte(&tcp)).await {
        if first.is_ascii_uppercase() {
            warn!(message = "connection refused: plain HTTP request on the HTTPS port", %peer);
            let body = "This port speaks HTTPS only: use https://\n";
            let reply = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
            let _ = tcp.shutdown().await;
            return None;
        }
    }
    match tls::accept(acceptor, tcp, timeout).await {
        Ok(s) => Some(Box::new(s)),
        Err(e) => {
            warn!(message = "connection refused: TLS handshake", %peer, error_type = e.kind(), error = %e);
            None
        }
    }
}

impl GatedListener {
    /// The next connection ready to speak HTTP; `None` once the accept task stopped.
    async fn accept(&mut self) -> Option<(LimitedConnection, SocketAddr)> {
        self.ready.recv().await
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
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
    pub jobs: BTreeMap<String, JobView>,
}

/// A job as the status pages show it.
#[derive(Clone)]
pub struct JobView {
    pub metrics: JobMetrics,
    pub batch_interval_ms: u64,
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
    let filter = config
        .ip_filter
        .as_deref()
        .map(IpFilter::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("http.ip_filter: {e}"))?;
    let tls = config
        .tls
        .as_ref()
        .map(TlsServerSettings::acceptor)
        .transpose()
        .map_err(|e| anyhow::anyhow!("http.tls: {e}"))?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("http.bind: cannot listen on {}: {e}", config.bind))?;
    let addr = listener.local_addr()?;
    info!(
        message = "http status server listening",
        %addr,
        tls = tls.is_some(),
        max_connections = config.max_connections,
        idle_timeout = %config.idle_timeout,
        header_timeout = %config.header_timeout,
    );
    let metrics = ComponentMetrics::new(state.registry.clone(), "http", "http");
    let acceptor = Acceptor::new(listener, config.max_connections, &metrics).with_ip_filter(filter);
    let listener = GatedListener::spawn(acceptor, tls, config.idle_timeout.0, shutdown.clone())?;
    ready.set();
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/flume/metrics", get(flume_json))
        .route("/", get(streaming_page))
        .route("/api/jobs", get(jobs_json))
        .route("/api/components", get(components_json))
        .with_state(state);
    // hyper directly rather than `axum::serve`, which has no way to set a header timeout.
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout.0);
    let mut listener = listener;
    loop {
        let (io, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = listener.accept() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let conn = http1.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = shutdown.cancelled() => {
                        // Finish the request in progress, take no more.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    let reason = if e.is_timeout() { "header_timeout" } else { "http" };
                    debug!(message = "http connection closed on error", %peer, error_type = reason, error = %e);
                }
            }
            .in_current_span(),
        );
    }
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
    let inventory = state.inventory();
    let mut text = render_prometheus(&state.registry.snapshot(), &inventory.channels);
    render_job_metrics(&mut text, &inventory.jobs);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
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

/// Per job: batch counters, last-batch gauges and cumulative delay histograms (seconds).
pub fn render_job_metrics(out: &mut String, jobs: &BTreeMap<String, JobView>) {
    if jobs.is_empty() {
        return;
    }
    type View<'a> = (
        &'a String,
        (u64, u64, u64),
        Option<BatchInfo>,
        DelayHistograms,
    );
    let views: Vec<View> = jobs
        .iter()
        .map(|(id, j)| {
            (
                id,
                j.metrics.totals(),
                j.metrics.last(),
                j.metrics.histograms(),
            )
        })
        .collect();
    type Total = fn(&(u64, u64, u64)) -> u64;
    let totals: [(&str, Total); 3] = [
        ("weir_job_batches_total", |t| t.0),
        ("weir_job_input_events_total", |t| t.1),
        ("weir_job_malformed_total", |t| t.2),
    ];
    for (metric, get) in totals {
        let _ = writeln!(out, "# TYPE {metric} counter");
        for (id, t, _, _) in &views {
            let _ = writeln!(
                out,
                "{metric}{{component_kind=\"job\",component_id=\"{}\"}} {}",
                escape_label(id),
                get(t)
            );
        }
    }
    type Last = fn(&BatchInfo) -> f64;
    let last: [(&str, Last); 4] = [
        ("weir_job_last_batch_input_events", |b| {
            b.input_events as f64
        }),
        ("weir_job_last_batch_scheduling_delay_seconds", |b| {
            b.scheduling_delay_ms as f64 / 1000.0
        }),
        ("weir_job_last_batch_processing_time_seconds", |b| {
            b.processing_time_ms as f64 / 1000.0
        }),
        ("weir_job_last_batch_total_delay_seconds", |b| {
            b.total_delay_ms as f64 / 1000.0
        }),
    ];
    for (metric, get) in last {
        let _ = writeln!(out, "# TYPE {metric} gauge");
        for (id, _, batch, _) in &views {
            if let Some(b) = batch {
                let _ = writeln!(
                    out,
                    "{metric}{{component_kind=\"job\",component_id=\"{}\"}} {}",
                    escape_label(id),
                    get(b)
                );
            }
        }
    }
    type Hist = fn(&DelayHistograms) -> &DelayHistogram;
    let hists: [(&str, Hist); 3] = [
        ("weir_job_scheduling_delay_seconds", |h| &h.scheduling_delay),
        ("weir_job_processing_time_seconds", |h| &h.processing_time),
        ("weir_job_total_delay_seconds", |h| &h.total_delay),
    ];
    for (metric, get) in hists {
        let _ = writeln!(out, "# TYPE {metric} histogram");
        for (id, _, _, h) in &views {
            let h = get(h);
            let labels = format!(
                "component_kind=\"job\",component_id=\"{}\"",
                escape_label(id)
            );
            for (bound, n) in DELAY_BUCKETS_MS.iter().zip(h.buckets.iter()) {
                let le = *bound as f64 / 1000.0;
                let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{metric}_sum{{{labels}}} {}", h.sum_ms as f64 / 1000.0);
            let _ = writeln!(out, "{metric}_count{{{labels}}} {}", h.count);
        }
    }
}

fn json_response(value: serde_json::Value) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

/// `GET /api/jobs`: every job's retained batches (oldest first) and totals.
async fn jobs_json(State(state): State<StatusState>) -> impl IntoResponse {
    let inventory = state.inventory();
    let jobs: serde_json::Map<String, serde_json::Value> = inventory
        .jobs
        .iter()
        .map(|(id, j)| {
            let (batches_total, events_total, malformed_total) = j.metrics.totals();
            (
                id.clone(),
                serde_json::json!({
                    "batch_interval_ms": j.batch_interval_ms,
                    "batches_total": batches_total,
                    "input_events_total": events_total,
                    "malformed_total": malformed_total,
                    "batches": j.metrics.batches(),
                }),
            )
        })
        .collect();
    json_response(serde_json::json!({ "now_ms": now_ms(), "jobs": jobs }))
}

/// `GET /api/components`: every component's counters and every channel's fill.
async fn components_json(State(state): State<StatusState>) -> impl IntoResponse {
    let inventory = state.inventory();
    let mut components: BTreeMap<(String, String), serde_json::Map<String, serde_json::Value>> =
        BTreeMap::new();
    for (kind, id) in &inventory.components {
        components.insert((kind.to_string(), id.clone()), Default::default());
    }
    for id in inventory.jobs.keys() {
        components.insert(("job".into(), id.clone()), Default::default());
    }
    for s in state.registry.snapshot() {
        components
            .entry((s.component_kind.to_string(), s.component_id.clone()))
            .or_default()
            .insert(s.name.as_str().to_string(), s.value.into());
    }
    let components: Vec<serde_json::Value> = components
        .into_iter()
        .map(|((kind, id), counters)| serde_json::json!({ "kind": kind, "id": id, "counters": counters }))
        .collect();
    let channels: Vec<serde_json::Value> = inventory
        .channels
        .iter()
        .map(|(name, ch)| {
            let st = ch.stats();
            serde_json::json!({
                "name": name,
                "events": st.events,
                "bytes": st.bytes,
                "max_events": st.max_events,
                "fill_percent": fill(&st),
                "durable": ch.is_durable(),
            })
        })
        .collect();
    json_response(serde_json::json!({
        "uptime_ms": now_ms().saturating_sub(state.started_ms),
        "components": components,
        "channels": channels,
    }))
}

/// `GET /`: the streaming page (charts drawn in the browser from the two JSON documents).
async fn streaming_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status_page.html"),
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
                jobs: BTreeMap::new(),
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
