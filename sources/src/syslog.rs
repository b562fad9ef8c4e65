//! The `syslog` source: RFC 3164 and RFC 5424 messages over TCP or UDP (`mode`), compatible
//! with Flume's `syslogtcp` and `syslogudp` sources.
//!
//! * Parsing uses the `syslog_loose` crate (both RFCs, RFC 5424 tried first). Headers are named
//!   as Flume names them: `Facility`, `Severity` (decimal), `priority` (the PRI digits),
//!   `version` (RFC 5424 only), `timestamp` (epoch milliseconds; RFC 3164 has no year: the
//!   current year is assumed, the previous one for a December message read in January; no zone:
//!   the machine's local zone, as Flume's JVM would), `host`.
//! * Body: the text after the hostname (Flume's body), or the whole raw message with
//!   `keep_fields = "all"`.
//! * Invalid messages are delivered, never dropped: no valid `<PRI>` (Flume's rule) gives
//!   `Facility = 0`, `Severity = 0`, `flume.syslog.status = Invalid` and the raw bytes as body.
//!   A valid PRI whose rest parses as neither RFC (no timestamp) is flagged `Invalid` too, with
//!   `Facility`/`Severity` from its PRI (Flume would leave that unflagged).
//! * TCP framing (RFC 6587): `"auto"` (default) reads each frame as octet-counted
//!   (`LEN SP MSG`) when it starts with a digit and as newline-terminated otherwise; or fixed
//!   `"octet_counting"` / `"newline"`. A newline-terminated message reaching
//!   `max_message_bytes` is cut there and flagged `flume.syslog.status = Incomplete` (Flume's
//!   `eventSize`); an octet-counted frame longer than `max_message_bytes` is skipped (counted,
//!   logged) and the connection goes on; a broken length prefix closes the connection.
//! * UDP: one message per datagram (trailing newlines removed); the kernel's drops are
//!   counted as in the `udp` source.
//! * Syslog has no acknowledgement. Unlike Flume (which drops an event the channel refuses),
//!   weir retries a refused batch with backoff and stops reading meanwhile: TCP senders are
//!   pushed back; for UDP the kernel buffer absorbs, then drops (counted).
//!
//! Config `type = "syslog"` with `mode = "tcp"` or `mode = "udp"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use chrono::Datelike;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_avro_rpc::transport::BoxStream;
use weir_core::budget::{Budgeted, InFlightBudget};
use weir_core::metrics::{ComponentMetrics, Counter, MetricName};
use weir_core::tls::TlsServerSettings;
use weir_core::{
    ByteSize, ChannelProcessor, ComponentError, ConfigDuration, Event, HeaderText, Source,
    SourceContext, ToCompactString,
};

use crate::accept::Gate;
use crate::udp::{
    bind_udp, put_with_retry, recv_batch, spawn_drop_watch, DatagramFilter, UdpStats,
};

/// `[sources.NAME] type = "syslog"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyslogSourceConfig {
    /// `"tcp"` (Flume's `syslogtcp`) or `"udp"` (Flume's `syslogudp`).
    pub mode: SyslogMode,
    /// Address to listen on, e.g. `"0.0.0.0:5140"`; port 0 picks a free port (logged).
    pub bind: SocketAddr,
    /// TCP only: `"auto"`, `"octet_counting"` or `"newline"` (RFC 6587).
    #[serde(default = "default_framing")]
    pub framing: SyslogFraming,
    /// Longest message (Flume's `eventSize`, default there 2500).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: ByteSize,
    /// `"none"`: body is the text after the hostname; `"all"`: body is the raw message
    /// (Flume's `keepFields`).
    #[serde(default = "default_keep_fields")]
    pub keep_fields: KeepFields,
    /// Header that receives the sender's IP address (Flume's `clientIPHeader`); unset: none.
    #[serde(default = "default_client_ip_header")]
    pub client_ip_header: Option<String>,
    /// Most events put into the channels as one transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// TCP only: most connections served at once; further ones are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// TCP only: a connection that sends nothing for this long is closed, and so is one whose
    /// message is not complete this long after its first byte.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// TCP only: bytes read from all connections and not yet committed to the channels; when
    /// spent, connections wait before reading more (at least `max_message_bytes`).
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: ByteSize,
    /// UDP only: kernel receive buffer (`SO_RCVBUF`); unset keeps the system default.
    #[serde(default = "default_receive_buffer")]
    pub receive_buffer: Option<ByteSize>,
    /// TCP only: TLS with a PEM certificate chain and key (RFC 5425 syslog over TLS):
    /// `tls = { cert = "cert.pem", key = "key.pem" }`. The handshake must finish within
    /// `idle_timeout`.
    #[serde(default)]
    pub tls: Option<TlsServerSettings>,
    /// Flume's `ipFilterRules` syntax: `allow:ip:10.*,deny:ip:*`, first match wins, no match =
    /// accept. TCP: refused connections are closed at accept; UDP: datagrams from refused
    /// senders are dropped and counted (`weir_datagrams_rejected_total`). Unset = everyone.
    #[serde(default)]
    pub ip_filter: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyslogMode {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFraming {
    Auto,
    OctetCounting,
    Newline,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeepFields {
    None,
    All,
}

const fn default_framing() -> SyslogFraming {
    SyslogFraming::Auto
}
const fn default_max_message_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}
const fn default_keep_fields() -> KeepFields {
    KeepFields::None
}
const fn default_client_ip_header() -> Option<String> {
    None
}
const fn default_batch_size() -> usize {
    100
}
const fn default_max_connections() -> usize {
    1024
}
const fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
const fn default_max_in_flight_bytes() -> ByteSize {
    ByteSize(64 * 1024 * 1024)
}
const fn default_receive_buffer() -> Option<ByteSize> {
    None
}

impl SyslogSourceConfig {
    pub fn new(mode: SyslogMode, bind: SocketAddr) -> Self {
        SyslogSourceConfig {
            mode,
            bind,
            framing: default_framing(),
            max_message_bytes: default_max_message_bytes(),
            keep_fields: default_keep_fields(),
            client_ip_header: default_client_ip_header(),
            batch_size: default_batch_size(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            receive_buffer: default_receive_buffer(),
            tls: None,
            ip_filter: None,
        }
    }

    /// Settings that deserialize but make no sense, with the key they belong to.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.max_message_bytes.0 < 10 || self.max_message_bytes.0 > (16 << 20) {
            errors.push((
                "max_message_bytes",
                "must be between 10 bytes and 16MiB".into(),
            ));
        }
        if self.mode == SyslogMode::Udp && self.max_message_bytes.0 > 65_536 {
            errors.push((
                "max_message_bytes",
                "must be at most 65536 with mode = \"udp\" (the largest datagram)".into(),
            ));
        }
        if self.batch_size == 0 {
            errors.push(("batch_size", "must be at least 1".into()));
        }
        if self.max_connections == 0 {
            errors.push(("max_connections", "must be at least 1".into()));
        }
        if self.mode == SyslogMode::Udp && self.tls.is_some() {
            errors.push((
                "tls",
                "only with mode = \"tcp\" (DTLS is not supported)".into(),
            ));
        }
        errors.extend(Gate::check(self.ip_filter.as_deref(), self.tls.as_ref()));
        if self.max_in_flight_bytes.0 < self.max_message_bytes.0 {
            errors.push((
                "max_in_flight_bytes",
                "must be at least max_message_bytes".into(),
            ));
        }
        errors
    }

    /// Binds the socket, so a busy port fails at startup and in `weir validate`.
    pub fn build(&self) -> Result<SyslogSource, std::io::Error> {
        let socket = match self.mode {
            SyslogMode::Tcp => {
                let l = std::net::TcpListener::bind(self.bind)?;
                l.set_nonblocking(true)?;
                Bound::Tcp(l)
            }
            SyslogMode::Udp => Bound::Udp(bind_udp(self.bind, self.receive_buffer)?),
        };
        Ok(SyslogSource {
            config: self.clone(),
            socket,
            stats: Arc::new(UdpStats::default()),
        })
    }
}

enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

pub struct SyslogSource {
    config: SyslogSourceConfig,
    socket: Bound,
    stats: Arc<UdpStats>,
}

impl SyslogSource {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.socket {
            Bound::Tcp(l) => l.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }

    /// Kernel drops and oversize datagrams (UDP mode).
    pub fn stats(&self) -> Arc<UdpStats> {
        self.stats.clone()
    }
}

pub const STATUS_HEADER: &str = "flume.syslog.status";

/// `<PRI>` at the start: its digits and value, when valid (1–3 digits, at most 191).
fn pri(raw: &[u8]) -> Option<(&[u8], u8)> {
    if raw.first() != Some(&b'<') {
        return None;
    }
    let digits = raw[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    if !(1..=3).contains(&digits) || raw.get(1 + digits) != Some(&b'>') {
        return None;
    }
    let d = &raw[1..1 + digits];
    let v = d.iter().fold(0u32, |a, b| a * 10 + u32::from(b - b'0'));
    (v <= 191).then_some((d, v as u8))
}

/// Where `inner` (a slice of `outer`) starts in `outer`.
fn offset_in(outer: &str, inner: &str) -> Option<usize> {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    (i >= o && i + inner.len() <= o + outer.len()).then(|| i - o)
}

/// RFC 3164 timestamps carry no year: this one, or last year for a message from a later
/// month (a December line read in January).
fn assumed_year((month, ..): syslog_loose::IncompleteDate) -> i32 {
    let now = chrono::Local::now();
    if month > now.month() + 1 {
        now.year() - 1
    } else {
        now.year()
    }
}

/// Turns one message (framing removed) into an event with Flume's headers.
pub fn parse_message(raw: Bytes, keep_all: bool, incomplete: bool) -> Event {
    let mut raw = raw;
    while matches!(raw.last(), Some(b'\n' | b'\r')) {
        raw.truncate(raw.len() - 1);
    }
    let mut event = Event::new(raw.clone());
    let Some((digits, value)) = pri(&raw) else {
        event.headers.insert("Facility", "0");
        event.headers.insert("Severity", "0");
        event.headers.insert(
            STATUS_HEADER,
            if incomplete { "Incomplete" } else { "Invalid" },
        );
        return event;
    };
    let h = &mut event.headers;
    h.insert("Facility", (value / 8).to_compact_string());
    h.insert("Severity", (value % 8).to_compact_string());
    h.insert("priority", HeaderText::from_utf8_lossy(digits));
    if incomplete {
        h.insert(STATUS_HEADER, "Incomplete");
    }
    // Header fields are ASCII; a message with invalid UTF-8 is parsed up to the first bad byte.
    let text = match std::str::from_utf8(&raw) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default(),
    };
    let parsed = syslog_loose::parse_message_with_year_exact(
        text,
        assumed_year,
        syslog_loose::Variant::Either,
    );
    let msg = match parsed {
        Ok(m)
            if m.timestamp.is_some()
                || matches!(m.protocol, syslog_loose::Protocol::RFC5424(_)) =>
        {
            m
        }
        _ => {
            if !h.contains_key(STATUS_HEADER) {
                h.insert(STATUS_HEADER, "Invalid");
            }
            return event;
        }
    };
    if let syslog_loose::Protocol::RFC5424(v) = msg.protocol {
        h.insert("version", v.to_compact_string());
    }
    if let Some(ts) = msg.timestamp {
        h.insert("timestamp", ts.timestamp_millis().to_compact_string());
    }
    if let Some(host) = msg.hostname {
        h.insert("host", host);
    }
    if keep_all {
        return event;
    }
    let start = match msg
        .hostname
        .and_then(|host| offset_in(text, host).map(|o| o + host.len()))
    {
        Some(end) => end,
        None => offset_in(text, msg.msg).unwrap_or(0),
    };
    let start = if raw.get(start) == Some(&b' ') {
        start + 1
    } else {
        start
    };
    event.body = raw.slice(start.min(raw.len())..);
    event
}

struct Counters {
    received: Counter,
    accepted: Counter,
    bytes: Counter,
    refused: Counter,
    errors: Counter,
}

impl Counters {
    fn new(m: &ComponentMetrics) -> Self {
        Counters {
            received: m.counter(MetricName::EventsReceivedTotal),
            accepted: m.counter(MetricName::EventsAcceptedTotal),
            bytes: m.counter(MetricName::BytesReceivedTotal),
            refused: m.counter(MetricName::BatchesRefusedTotal),
            errors: m.counter(MetricName::ErrorsTotal),
        }
    }
}

#[async_trait]
impl Source for SyslogSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let SyslogSource {
            config,
            socket,
            stats,
        } = *self;
        let cfg = Arc::new(config);
        let c = Arc::new(Counters::new(&cx.metrics));
        match socket {
            Bound::Tcp(l) => run_tcp(cfg, TcpListener::from_std(l)?, cx, c).await,
            Bound::Udp(s) => run_udp(cfg, UdpSocket::from_std(s)?, cx, c, stats).await,
        }
    }
}

async fn deliver(
    events: Vec<Event>,
    cx_out: &ChannelProcessor,
    shutdown: &CancellationToken,
    c: &Counters,
) {
    if events.is_empty() {
        return;
    }
    let n = events.len() as u64;
    c.received.inc(n);
    if put_with_retry(cx_out, events, shutdown, &c.refused).await {
        c.accepted.inc(n);
    }
}

async fn run_udp(
    cfg: Arc<SyslogSourceConfig>,
    socket: UdpSocket,
    cx: SourceContext,
    c: Arc<Counters>,
    stats: Arc<UdpStats>,
) -> Result<(), ComponentError> {
    let local = socket.local_addr()?;
    info!(message = "syslog source listening", mode = "udp", addr = %local);
    let filter = DatagramFilter::new(cfg.ip_filter.as_deref(), local, &cx.metrics)?;
    cx.ready.set();
    let stop_watch = CancellationToken::new();
    let _stop_watch_on_drop = stop_watch.clone().drop_guard();
    spawn_drop_watch(
        &socket,
        Duration::from_secs(5),
        c.errors.clone(),
        stats.clone(),
        stop_watch,
    );
    let limit = cfg.max_message_bytes.0 as usize;
    let keep_all = cfg.keep_fields == KeepFields::All;
    let mut buf = BytesMut::new();
    let mut datagrams = Vec::with_capacity(cfg.batch_size);
    loop {
        datagrams.clear();
        tokio::select! {
            _ = cx.shutdown.cancelled() => break,
            res = recv_batch(&socket, &mut buf, limit, cfg.batch_size, filter.as_ref(), &stats, &mut datagrams) => {
                if let Err(e) = res {
                    c.errors.inc(1);
                    warn!(message = "receive failed", error = %e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let events: Vec<Event> = datagrams
            .drain(..)
            .map(|(data, peer)| {
                c.bytes.inc(data.len() as u64);
                let mut e = parse_message(data, keep_all, false);
                if let Some(h) = &cfg.client_ip_header {
                    e.headers.insert(h.clone(), peer.ip().to_string());
                }
                e
            })
            .collect();
        deliver(events, &cx.output, &cx.shutdown, &c).await;
    }
    info!("syslog source stopped");
    Ok(())
}

async fn run_tcp(
    cfg: Arc<SyslogSourceConfig>,
    listener: TcpListener,
    cx: SourceContext,
    c: Arc<Counters>,
) -> Result<(), ComponentError> {
    let gate = Gate::new(
        cfg.ip_filter.as_deref(),
        cfg.tls.as_ref(),
        cfg.idle_timeout.0,
    )?;
    info!(message = "syslog source listening", mode = "tcp", addr = %listener.local_addr()?, tls = cfg.tls.is_some());
    cx.ready.set();
    let budget =
        InFlightBudget::new(usize::try_from(cfg.max_in_flight_bytes.0).unwrap_or(usize::MAX));
    let (conn_cfg, output, shutdown) = (cfg.clone(), cx.output.clone(), cx.shutdown.clone());
    crate::accept::serve_connections(
        listener,
        cfg.max_connections,
        gate,
        &cx.shutdown,
        &cx.metrics,
        move |stream, peer| {
            let (cfg, c, output, shutdown) = (
                conn_cfg.clone(),
                c.clone(),
                output.clone(),
                shutdown.clone(),
            );
            let stream = Budgeted::new(stream, Some(&budget));
            async move { serve(&cfg, stream, peer, &output, &shutdown, &c).await }
        },
    )
    .await;
    info!("syslog source stopped");
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("bad octet-count prefix {0:?}")]
    BadLength(String),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("message not complete {0:?} after its first byte")]
    MessageTimeout(Duration),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a TCP byte stream into syslog messages (RFC 6587).
struct Framer {
    framing: SyslogFraming,
    max: usize,
    /// Bytes still to drop of an oversize octet-counted frame.
    skip: usize,
    /// Bytes already searched for a newline.
    scanned: usize,
}

enum Frame {
    Message(Bytes),
    Incomplete(Bytes),
    Oversize(usize),
}

impl Framer {
    /// The next frame, `Ok(None)` when more bytes are needed.
    fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        // Leading empty lines (and stray CRs) between frames are skipped, as Flume does.
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\n' | b'\r'))
            .count();
        if blank > 0 {
            buf.advance(blank);
            self.scanned = 0;
        }
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let octet = match self.framing {
            SyslogFraming::OctetCounting => true,
            SyslogFraming::Newline => false,
            SyslogFraming::Auto => first.is_ascii_digit(),
        };
        if octet {
            let Some(sp) = buf.iter().take(12).position(|&b| b == b' ') else {
                if buf.len() >= 12 || buf.iter().any(|b| !b.is_ascii_digit()) {
                    let shown = String::from_utf8_lossy(&buf[..buf.len().min(12)]).into_owned();
                    return Err(FrameError::BadLength(shown));
                }
                return Ok(None);
            };
            let digits = &buf[..sp];
            let len: usize = std::str::from_utf8(digits)
                .ok()
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| {
                    FrameError::BadLength(String::from_utf8_lossy(digits).into_owned())
                })?;
            if len > self.max {
                buf.advance(sp + 1);
                self.skip = len;
                let n = self.skip.min(buf.len());
                buf.advance(n);
                self.skip -= n;
                return Ok(Some(Frame::Oversize(len)));
            }
            if buf.len() < sp + 1 + len {
                buf.reserve(sp + 1 + len - buf.len());
                return Ok(None);
            }
            buf.advance(sp + 1);
            return Ok(Some(Frame::Message(buf.split_to(len).freeze())));
        }
        match memchr::memchr(b'\n', &buf[self.scanned.min(buf.len())..]) {
            Some(i) => {
                let nl = self.scanned + i;
                self.scanned = 0;
                if nl > self.max {
                    let cut = buf.split_to(self.max).freeze();
                    return Ok(Some(Frame::Incomplete(cut)));
                }
                let mut line = buf.split_to(nl + 1).freeze();
                line.truncate(nl);
                Ok(Some(Frame::Message(line)))
            }
            None if buf.len() >= self.max => {
                self.scanned = 0;
                Ok(Some(Frame::Incomplete(buf.split_to(self.max).freeze())))
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }
}

async fn serve(
    cfg: &SyslogSourceConfig,
    mut stream: Budgeted<BoxStream>,
    peer: SocketAddr,
    output: &ChannelProcessor,
    shutdown: &CancellationToken,
    c: &Counters,
) -> Result<(), FrameError> {
    let keep_all = cfg.keep_fields == KeepFields::All;
    let max = cfg.max_message_bytes.0 as usize;
    let mut framer = Framer {
        framing: cfg.framing,
        max,
        skip: 0,
        scanned: 0,
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut batch: Vec<Event> = Vec::with_capacity(cfg.batch_size);
    let client_ip = cfg
        .client_ip_header
        .as_ref()
        .map(|h| (h.clone(), peer.ip().to_string()));
    let push = |batch: &mut Vec<Event>, raw: Bytes, incomplete: bool| {
        let mut e = parse_message(raw, keep_all, incomplete);
        if let Some((h, ip)) = &client_ip {
            e.headers.insert(h.clone(), ip.clone());
        }
        batch.push(e);
    };
    // When the partial message at the end of `buf` (or the rest of a skipped one) began.
    let mut message_started: Option<tokio::time::Instant> = None;
    loop {
        loop {
            let frame = match framer.next(&mut buf) {
                Ok(Some(f)) => {
                    message_started = None;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    deliver(std::mem::take(&mut batch), output, shutdown, c).await;
                    return Err(e);
                }
            };
            match frame {
                Frame::Message(m) => push(&mut batch, m, false),
                Frame::Incomplete(m) => {
                    debug!(message = "message longer than max_message_bytes cut", %peer, max);
                    push(&mut batch, m, true)
                }
                Frame::Oversize(len) => {
                    c.errors.inc(1);
                    warn!(
                        message = "octet-counted message longer than max_message_bytes skipped",
                        %peer,
                        length = len,
                        max
                    );
                }
            }
            if batch.len() >= cfg.batch_size {
                deliver(
                    std::mem::replace(&mut batch, Vec::with_capacity(cfg.batch_size)),
                    output,
                    shutdown,
                    c,
                )
                .await;
            }
        }
        deliver(
            std::mem::replace(&mut batch, Vec::with_capacity(cfg.batch_size)),
            output,
            shutdown,
            c,
        )
        .await;
        // Every complete message is committed: only a partial one stays charged.
        stream.release_to(buf.len());
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        // A started message must be complete within `idle_timeout` of its first byte, so a
        // client trickling bytes cannot hold its place forever.
        let idle = cfg.idle_timeout.0;
        let partial = !buf.is_empty() || framer.skip > 0;
        let wait = match partial {
            false => idle,
            true => idle.saturating_sub(
                message_started
                    .get_or_insert_with(tokio::time::Instant::now)
                    .elapsed(),
            ),
        };
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            res = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => match res {
                Err(_) if partial => return Err(FrameError::MessageTimeout(idle)),
                Err(_) => return Err(FrameError::Idle(idle)),
                Ok(r) => r?,
            },
        };
        c.bytes.inc(n as u64);
        if n == 0 {
            // A last message without its newline is still a message.
            if !buf.is_empty() && framer.skip == 0 {
                let rest = buf.split().freeze();
                if !rest.iter().all(|b| matches!(b, b'\n' | b'\r')) {
                    push(&mut batch, rest, false);
                }
                deliver(batch, output, shutdown, c).await;
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::tests::{run_source, take_n};
    use chrono::TimeZone;

    // Captured from util-linux 2.38.1 `logger -n 127.0.0.1 -P PORT -t myapp -p local4.notice`.
    const LOGGER_3164: &str = "<165>Nov 23 21:27:40 vm myapp: hello from logger";
    const LOGGER_5424: &str = "<165>1 2026-11-23T21:27:40.040665+00:00 vm myapp - - [timeQuality tzKnown=\"1\" isSynced=\"0\"] hello from logger";
    const LOGGER_5424_SD: &str = "<165>1 2026-11-23T21:27:40.046081+00:00 vm myapp - ID47 [timeQuality tzKnown=\"1\" isSynced=\"0\"][ex@32473 k=\"v\"] hello from logger";

    fn parse(s: &[u8]) -> Event {
        parse_message(Bytes::copy_from_slice(s), false, false)
    }

    #[test]
    fn rfc3164_from_logger() {
        let e = parse(LOGGER_3164.as_bytes());
        assert_eq!(e.headers.get("Facility").unwrap(), "20");
        assert_eq!(e.headers.get("Severity").unwrap(), "5");
        assert_eq!(e.headers.get("priority").unwrap(), "165");
        assert_eq!(e.headers.get("host").unwrap(), "vm");
        assert!(!e.headers.contains_key("version"));
        assert!(!e.headers.contains_key(STATUS_HEADER));
        let year = assumed_year((11, 23, 21, 27, 40));
        let want = chrono::Local
            .with_ymd_and_hms(year, 11, 23, 21, 27, 40)
            .unwrap()
            .timestamp_millis();
        assert_eq!(e.headers.get("timestamp").unwrap(), want.to_string());
        assert_eq!(&e.body[..], b"myapp: hello from logger");
    }

    #[test]
    fn rfc5424_from_logger() {
        let e = parse(LOGGER_5424.as_bytes());
        assert_eq!(e.headers.get("Facility").unwrap(), "20");
        assert_eq!(e.headers.get("Severity").unwrap(), "5");
        assert_eq!(e.headers.get("version").unwrap(), "1");
        assert_eq!(e.headers.get("host").unwrap(), "vm");
        let want = chrono::DateTime::parse_from_rfc3339("2026-11-23T21:27:40.040665+00:00")
            .unwrap()
            .timestamp_millis();
        assert_eq!(e.headers.get("timestamp").unwrap(), want.to_string());
        assert_eq!(
            &e.body[..],
            &b"myapp - - [timeQuality tzKnown=\"1\" isSynced=\"0\"] hello from logger"[..]
        );
        let e = parse(LOGGER_5424_SD.as_bytes());
        assert_eq!(e.headers.get("host").unwrap(), "vm");
        assert!(e.body.starts_with(b"myapp - ID47 [timeQuality"));
        let e = parse_message(Bytes::from_static(LOGGER_5424.as_bytes()), true, false);
        assert_eq!(&e.body[..], LOGGER_5424.as_bytes(), "keep_fields = all");
    }

    #[test]
    fn malformed_messages_are_kept_and_flagged() {
        for raw in [
            &b"no pri at all"[..],
            b"<999>too big",
            b"<>empty",
            b"<1234>four digits",
            b"<13",
            b"",
            b"\xff\xfe\x00binary",
        ] {
            let e = parse(raw);
            assert_eq!(e.headers.get(STATUS_HEADER).unwrap(), "Invalid", "{raw:?}");
            assert_eq!(e.headers.get("Facility").unwrap(), "0");
            assert_eq!(e.headers.get("Severity").unwrap(), "0");
            assert_eq!(&e.body[..], raw);
        }
        // A valid PRI but no timestamp: flagged, facility kept.
        let e = parse(b"<13>just text");
        assert_eq!(e.headers.get(STATUS_HEADER).unwrap(), "Invalid");
        assert_eq!(e.headers.get("Facility").unwrap(), "1");
        assert_eq!(&e.body[..], b"<13>just text");
        // Invalid UTF-8 in the message part: headers parsed, bytes kept.
        let e = parse(b"<165>Nov 23 21:27:40 vm myapp: caf\xe9");
        assert_eq!(e.headers.get("host").unwrap(), "vm");
        assert_eq!(&e.body[..], b"myapp: caf\xe9");
    }

    #[test]
    fn framer_handles_octet_counting_newlines_and_oversize() {
        let mut f = Framer {
            framing: SyslogFraming::Auto,
            max: 20,
            skip: 0,
            scanned: 0,
        };
        let mut buf =
            BytesMut::from(&b"\n5 <13>a<13>line\n30 0123456789012345678901234567893 xyz"[..]);
        let mut got = Vec::new();
        while let Some(fr) = f.next(&mut buf).unwrap() {
            got.push(match fr {
                Frame::Message(m) => format!("M:{}", String::from_utf8_lossy(&m)),
                Frame::Incomplete(m) => format!("I:{}", String::from_utf8_lossy(&m)),
                Frame::Oversize(n) => format!("O:{n}"),
            });
        }
        assert_eq!(got, vec!["M:<13>a", "M:<13>line", "O:30", "M:xyz"]);
        // Split at every byte boundary gives the same frames.
        let stream = b"5 <13>a<13>line\n4 abcd";
        for cut in 0..stream.len() {
            let mut f = Framer {
                framing: SyslogFraming::Auto,
                max: 20,
                skip: 0,
                scanned: 0,
            };
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(Frame::Message(m)) = f.next(&mut buf).unwrap() {
                got.push(m);
            }
            buf.extend_from_slice(&stream[cut..]);
            while let Some(Frame::Message(m)) = f.next(&mut buf).unwrap() {
                got.push(m);
            }
            assert_eq!(
                got,
                vec![&b"<13>a"[..], b"<13>line", b"abcd"],
                "cut at {cut}"
            );
        }
        let mut f = Framer {
            framing: SyslogFraming::Newline,
            max: 8,
            skip: 0,
            scanned: 0,
        };
        let mut buf = BytesMut::from(&b"<13>0123456789\n"[..]);
        assert!(
            matches!(f.next(&mut buf).unwrap(), Some(Frame::Incomplete(m)) if &m[..] == b"<13>0123")
        );
        assert!(
            matches!(f.next(&mut buf).unwrap(), Some(Frame::Message(m)) if &m[..] == b"456789")
        );
        let mut f = Framer {
            framing: SyslogFraming::OctetCounting,
            max: 8,
            skip: 0,
            scanned: 0,
        };
        assert!(f.next(&mut BytesMut::from(&b"12x4 abc"[..])).is_err());
    }

    fn logger(args: &[&str]) -> bool {
        match std::process::Command::new("logger").args(args).status() {
            Ok(s) => s.success(),
            Err(e) => {
                eprintln!("logger not runnable ({e}); skipping");
                false
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_receives_real_logger_output_in_both_framings() {
        let mut cfg = SyslogSourceConfig::new(SyslogMode::Tcp, "127.0.0.1:0".parse().unwrap());
        cfg.client_ip_header = Some("clientIP".into());
        let src = cfg.build().unwrap();
        let port = src.local_addr().unwrap().port().to_string();
        let r = run_source(Box::new(src), 1000);
        let base = [
            "-T",
            "-n",
            "127.0.0.1",
            "-P",
            port.as_str(),
            "-t",
            "app",
            "-p",
            "daemon.err",
        ];
        let cases: [&[&str]; 3] = [
            &["--rfc3164", "three one six four"],
            &["--rfc5424", "--octet-count", "five four two four"],
            &["--rfc5424", "newline framed"],
        ];
        let mut ran = 0;
        for extra in cases {
            let args: Vec<String> = base
                .iter()
                .chain(extra.iter())
                .map(|s| s.to_string())
                .collect();
            let ok = tokio::task::spawn_blocking(move || {
                logger(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            if !ok {
                break;
            }
            ran += 1;
        }
        let got = take_n(&r.channel, ran).await;
        for e in &got {
            assert_eq!(e.headers.get("Facility").unwrap(), "3", "{e:?}");
            assert_eq!(e.headers.get("Severity").unwrap(), "3");
            assert_eq!(e.headers.get("clientIP").unwrap(), "127.0.0.1");
            assert!(!e.headers.contains_key(STATUS_HEADER), "{e:?}");
            assert!(e.headers.contains_key("timestamp"));
        }
        if ran == 3 {
            // One connection per logger run; their events may interleave in any order.
            let find = |text: &[u8]| {
                got.iter()
                    .find(|e| e.body.ends_with(text))
                    .unwrap_or_else(|| {
                        panic!("no event ending in {:?}", String::from_utf8_lossy(text))
                    })
            };
            find(b"three one six four");
            assert_eq!(
                find(b"five four two four").headers.get("version"),
                Some("1")
            );
            find(b"newline framed");
        }
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn udp_receives_real_logger_output_and_garbage() {
        let cfg = SyslogSourceConfig::new(SyslogMode::Udp, "127.0.0.1:0".parse().unwrap());
        let src = cfg.build().unwrap();
        let addr = src.local_addr().unwrap();
        let port = addr.port().to_string();
        let r = run_source(Box::new(src), 1000);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"\x00\x01garbage\n", addr).unwrap();
        let got = take_n(&r.channel, 1).await;
        assert_eq!(got[0].headers.get(STATUS_HEADER).unwrap(), "Invalid");
        assert_eq!(&got[0].body[..], b"\x00\x01garbage");
        let mut want = 0;
        for rfc in ["--rfc3164", "--rfc5424"] {
            let args = vec![
                "-d",
                "-n",
                "127.0.0.1",
                "-P",
                port.as_str(),
                "-t",
                "app",
                rfc,
                "over udp",
            ];
            let args: Vec<String> = args.into_iter().map(String::from).collect();
            let ok = tokio::task::spawn_blocking(move || {
                logger(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            if ok {
                want += 1;
            }
        }
        let got = take_n(&r.channel, want).await;
        for e in &got {
            assert_eq!(e.headers.get("Facility").unwrap(), "1");
            assert_eq!(e.headers.get("Severity").unwrap(), "5");
            assert!(e.body.ends_with(b"over udp"), "{e:?}");
        }
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
    }

    #[test]
    fn config_parses_and_checks() {
        let cfg: SyslogSourceConfig =
            toml::from_str("mode = \"udp\"\nbind = \"0.0.0.0:5140\"\nmax_message_bytes = \"1MiB\"")
                .unwrap();
        assert_eq!(cfg.check().len(), 1);
        assert!(
            toml::from_str::<SyslogSourceConfig>("mode = \"tls\"\nbind = \"0.0.0.0:1\"").is_err()
        );
        assert!(toml::from_str::<SyslogSourceConfig>(
            "mode = \"tcp\"\nbind = \"0.0.0.0:1\"\nport = 1"
        )
        .is_err());
    }
}
