//! The `udp` source: one event per datagram (or per line of a datagram), compatible with
//! Flume's `netcatudp` source.
//!
//! * The socket's kernel receive buffer can be set (`receive_buffer`, `SO_RCVBUF`); the kernel
//!   drops datagrams when it is full. Those drops are visible on Linux in `/proc/net/udp*`
//!   (the `drops` column of this socket): they are read every `drop_check_interval`, logged
//!   and counted (`weir_errors_total`, and [`UdpStats::kernel_drops`]).
//! * Datagrams waiting in the socket are gathered into one batch of at most `batch_size`
//!   events, one channel transaction. A refused batch is retried with backoff while the socket
//!   is not read (the kernel buffer absorbs, then drops and counts): UDP has no way to push
//!   back on a sender. Flume drops the event at once instead.
//! * A datagram longer than `max_datagram_bytes` is dropped and counted, never cut silently.
//!
//! Differences from Flume: `mode = "datagram"` delivers the whole datagram (one trailing
//! `\n` or `\r\n` removed) where Flume keeps only the bytes before the first `\n`;
//! `mode = "line"` gives one event per line.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use weir_core::component::Backoff;
use weir_core::ipfilter::IpFilter;
use weir_core::metrics::{ComponentMetrics, Counter, MetricName};
use weir_core::{
    ByteSize, ChannelProcessor, ComponentError, ConfigDuration, Event, Source, SourceContext,
};

/// `[sources.NAME] type = "udp"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UdpSourceConfig {
    /// Address to listen on, e.g. `"0.0.0.0:5140"`; port 0 picks a free port (logged).
    pub bind: SocketAddr,
    /// `"datagram"`: one event per datagram; `"line"`: one event per `\n`-terminated line.
    #[serde(default = "default_mode")]
    pub mode: UdpMode,
    /// Longest datagram accepted; longer ones are dropped and counted.
    #[serde(default = "default_max_datagram_bytes")]
    pub max_datagram_bytes: ByteSize,
    /// Kernel receive buffer (`SO_RCVBUF`); unset keeps the system default
    /// (`net.core.rmem_default`; the kernel caps it at `net.core.rmem_max`).
    #[serde(default = "default_receive_buffer")]
    pub receive_buffer: Option<ByteSize>,
    /// Most events put into the channels as one transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Header carrying the sender's address as Flume writes it (`/127.0.0.1:5140`); `""`
    /// adds none (Flume's `remoteAddressHeader`).
    #[serde(default = "default_remote_address_header")]
    pub remote_address_header: String,
    /// How often the kernel's drop counter for this socket is read.
    #[serde(default = "default_drop_check_interval")]
    pub drop_check_interval: ConfigDuration,
    /// Flume's `ipFilterRules` syntax: `allow:ip:10.*,deny:ip:*`, first match wins, no match =
    /// accept. Datagrams from refused senders are dropped and counted
    /// (`weir_datagrams_rejected_total`). Unset = everyone.
    #[serde(default)]
    pub ip_filter: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UdpMode {
    Datagram,
    Line,
}

const fn default_mode() -> UdpMode {
    UdpMode::Datagram
}
const fn default_max_datagram_bytes() -> ByteSize {
    ByteSize(65_536)
}
const fn default_receive_buffer() -> Option<ByteSize> {
    None
}
const fn default_batch_size() -> usize {
    100
}
fn default_remote_address_header() -> String {
    "REMOTE_ADDRESS".into()
}
const fn default_drop_check_interval() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

impl UdpSourceConfig {
    pub fn from_address(bind: SocketAddr) -> Self {
        UdpSourceConfig {
            bind,
            mode: default_mode(),
            max_datagram_bytes: default_max_datagram_bytes(),
            receive_buffer: default_receive_buffer(),
            batch_size: default_batch_size(),
            remote_address_header: default_remote_address_header(),
            drop_check_interval: default_drop_check_interval(),
            ip_filter: None,
        }
    }

    /// Settings that deserialize but make no sense, with the key they belong to.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.max_datagram_bytes.0 == 0 || self.max_datagram_bytes.0 > 65_536 {
            errors.push((
                "max_datagram_bytes",
                "must be between 1 and 65536 (the largest UDP payload)".into(),
            ));
        }
        if self.batch_size == 0 {
            errors.push(("batch_size", "must be at least 1".into()));
        }
        if let Some(b) = self.receive_buffer {
            if b.0 == 0 || b.0 > i32::MAX as u64 {
                errors.push(("receive_buffer", "must be between 1 byte and 2GiB".into()));
            }
        }
        if self.drop_check_interval.0.is_zero() {
            errors.push(("drop_check_interval", "must be more than 0s".into()));
        }
        if let Some(Err(e)) = self.ip_filter.as_deref().map(IpFilter::parse) {
            errors.push(("ip_filter", e.to_string()));
        }
        errors
    }

    /// Binds the socket (so `weir validate` and startup catch a busy port).
    pub fn build(&self) -> Result<UdpSource, std::io::Error> {
        let socket = bind_udp(self.bind, self.receive_buffer)?;
        Ok(UdpSource {
            config: self.clone(),
            socket,
            stats: Arc::new(UdpStats::default()),
        })
    }
}

/// Counters readable while the source runs.
#[derive(Debug, Default)]
pub struct UdpStats {
    /// Datagrams the kernel dropped for this socket since the source started.
    pub kernel_drops: AtomicU64,
    /// Datagrams dropped for exceeding `max_datagram_bytes`.
    pub oversize: AtomicU64,
}

pub struct UdpSource {
    config: UdpSourceConfig,
    socket: std::net::UdpSocket,
    stats: Arc<UdpStats>,
}

impl UdpSource {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn stats(&self) -> Arc<UdpStats> {
        self.stats.clone()
    }
}

/// A non-blocking UDP socket bound to `addr`, with `SO_RCVBUF` set when asked.
pub(crate) fn bind_udp(
    addr: SocketAddr,
    receive_buffer: Option<ByteSize>,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(usize::try_from(size.0).unwrap_or(usize::MAX))?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Flume's rendering of a peer address (`InetSocketAddress.toString()`): `/ip:port`.
pub(crate) fn flume_address(peer: &SocketAddr) -> String {
    format!("/{}:{}", peer.ip(), peer.port())
}

/// The inode of a socket, which names it in `/proc/net/udp*`.
pub(crate) fn socket_inode(fd: &impl std::os::fd::AsRawFd) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|m| m.ino())
}

/// The kernel's drop counter for the socket with this inode, from `/proc/net/udp` and
/// `/proc/net/udp6`. `None` where not visible (not Linux, no procfs).
pub(crate) fn kernel_drops(inode: u64) -> Option<u64> {
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:tm retrnsmt uid timeout inode ref pointer drops
            if cols.len() >= 13 && cols[9].parse::<u64>().ok() == Some(inode) {
                return cols[12].parse().ok();
            }
        }
    }
    None
}

/// Reads the socket's kernel drop counter every `every` until `stop` is cancelled (or its
/// drop guard dropped) and reports increases: a warning, `weir_errors_total`,
/// [`UdpStats::kernel_drops`]. Runs beside the receive loop, so drops are seen even while that
/// loop waits for a full channel.
pub(crate) fn spawn_drop_watch(
    socket: &UdpSocket,
    every: Duration,
    errors: Counter,
    stats: Arc<UdpStats>,
    stop: CancellationToken,
) {
    let Some(inode) = socket_inode(socket) else {
        return;
    };
    let Some(mut last) = kernel_drops(inode) else {
        debug!("kernel drop counter not visible here");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(every) => {}
            }
            let Some(now) = kernel_drops(inode) else {
                return;
            };
            let delta = now.saturating_sub(last);
            last = now;
            if delta > 0 {
                stats.kernel_drops.fetch_add(delta, Ordering::Relaxed);
                errors.inc(delta);
                warn!(
                    message = "datagrams dropped by the kernel: receive buffer full",
                    dropped = delta,
                    hint = "raise receive_buffer (and net.core.rmem_max) or speed up the channels"
                );
            }
            if stop.is_cancelled() {
                return;
            }
        }
    });
}

/// The IP filter of a UDP listener: datagrams from refused senders are dropped and counted
/// (`weir_datagrams_rejected_total`).
pub(crate) struct DatagramFilter {
    pub rules: IpFilter,
    /// The bound address, for `name:localhost` rules.
    pub local: Option<IpAddr>,
    pub rejected: Counter,
}

impl DatagramFilter {
    /// The filter `rules` ask for on a socket bound to `local`; `None` without rules.
    pub fn new(
        rules: Option<&str>,
        local: SocketAddr,
        metrics: &ComponentMetrics,
    ) -> Result<Option<DatagramFilter>, String> {
        rules
            .map(|r| {
                Ok(DatagramFilter {
                    rules: IpFilter::parse(r).map_err(|e| format!("ip_filter: {e}"))?,
                    local: Some(local.ip()),
                    rejected: metrics.counter(MetricName::DatagramsRejectedTotal),
                })
            })
            .transpose()
    }
}

/// Receives what is waiting (at least one datagram, at most `max` of them), each as a
/// `Bytes` of a shared buffer. Oversize datagrams are dropped and counted.
pub(crate) async fn recv_batch(
    socket: &UdpSocket,
    buf: &mut BytesMut,
    limit: usize,
    max: usize,
    filter: Option<&DatagramFilter>,
    stats: &UdpStats,
    out: &mut Vec<(Bytes, SocketAddr)>,
) -> std::io::Result<()> {
    let mut first = true;
    while out.len() < max {
        if buf.capacity() - buf.len() < limit + 1 {
            buf.reserve((limit + 1).max(256 * 1024));
        }
        let res = if first {
            socket.recv_buf_from(buf).await.map(Some)
        } else {
            match socket.try_recv_buf_from(buf) {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        };
        first = false;
        let Some((n, peer)) = res? else {
            break;
        };
        let data = buf.split_to(n).freeze();
        if let Some(filter) = filter {
            if !filter.rules.allows(peer.ip(), filter.local) {
                filter.rejected.inc(1);
                debug!(message = "datagram refused by ip filter", %peer);
                continue;
            }
        }
        if n > limit {
            stats.oversize.fetch_add(1, Ordering::Relaxed);
            warn!(message = "datagram too large; dropped", %peer, limit);
            continue;
        }
        out.push((data, peer));
    }
    Ok(())
}

fn strip_newline(mut b: Bytes) -> Bytes {
    if b.last() == Some(&b'\n') {
        b.truncate(b.len() - 1);
        if b.last() == Some(&b'\r') {
            b.truncate(b.len() - 1);
        }
    }
    b
}

/// Puts a batch, retrying refusals with backoff until it fits or shutdown (then it is lost,
/// logged).
pub(crate) async fn put_with_retry(
    output: &ChannelProcessor,
    events: Vec<Event>,
    shutdown: &CancellationToken,
    refused: &Counter,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match output.put(events.clone()).await {
            Ok(()) => return true,
            Err(e) => {
                refused.inc(1);
                if shutdown.is_cancelled() {
                    error!(message = "events lost at shutdown: channel kept refusing them", events = events.len(), error = %e);
                    return false;
                }
                debug!(message = "channel refused events; retrying", error = %e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
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
impl Source for UdpSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let cfg = self.config;
        let socket = UdpSocket::from_std(self.socket)?;
        let local = socket.local_addr()?;
        let filter = DatagramFilter::new(cfg.ip_filter.as_deref(), local, &cx.metrics)?;
        info!(message = "udp source listening", addr = %local);
        cx.ready.set();
        let c = Counters::new(&cx.metrics);
        let stop_watch = CancellationToken::new();
        let _stop_watch_on_drop = stop_watch.clone().drop_guard();
        spawn_drop_watch(
            &socket,
            cfg.drop_check_interval.0,
            c.errors.clone(),
            self.stats.clone(),
            stop_watch,
        );
        let limit = cfg.max_datagram_bytes.0 as usize;
        let mut buf = BytesMut::new();
        let mut datagrams = Vec::with_capacity(cfg.batch_size);
        loop {
            datagrams.clear();
            tokio::select! {
                _ = cx.shutdown.cancelled() => break,
                res = recv_batch(&socket, &mut buf, limit, cfg.batch_size, filter.as_ref(), &self.stats, &mut datagrams) => {
                    if let Err(e) = res {
                        c.errors.inc(1);
                        warn!(message = "receive failed", error = %e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
            let mut events = Vec::with_capacity(datagrams.len());
            for (data, peer) in datagrams.drain(..) {
                c.bytes.inc(data.len() as u64);
                let addr = (!cfg.remote_address_header.is_empty()).then(|| flume_address(&peer));
                let mut push = |body: Bytes| {
                    let mut e = Event::new(body);
                    if let Some(a) = &addr {
                        e.headers
                            .insert(cfg.remote_address_header.clone(), a.clone());
                    }
                    events.push(e);
                };
                match cfg.mode {
                    UdpMode::Datagram => push(strip_newline(data)),
                    UdpMode::Line => {
                        let mut start = 0;
                        for nl in memchr::memchr_iter(b'\n', &data) {
                            push(strip_newline(data.slice(start..nl + 1)));
                            start = nl + 1;
                        }
                        if start < data.len() {
                            push(data.slice(start..));
                        }
                    }
                }
            }
            let n = events.len() as u64;
            c.received.inc(n);
            if put_with_retry(&cx.output, events, &cx.shutdown, &c.refused).await {
                c.accepted.inc(n);
            }
        }
        info!("udp source stopped");
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;
    use weir_core::metrics::Registry;
    use weir_core::{Channel, MemoryChannel, MemoryChannelConfig, SelectorConfig};

    pub(crate) struct Running {
        pub channel: Arc<MemoryChannel>,
        pub shutdown: CancellationToken,
        pub task: tokio::task::JoinHandle<Result<(), ComponentError>>,
        pub metrics: ComponentMetrics,
    }

    pub(crate) fn run_source(src: Box<dyn Source>, max_events: u64) -> Running {
        let channel = Arc::new(MemoryChannel::new(
            "c",
            MemoryChannelConfig {
                max_events,
                ..Default::default()
            },
        ));
        let output = Arc::new(
            ChannelProcessor::new(vec![channel.clone()], &SelectorConfig::default()).unwrap(),
        );
        let shutdown = CancellationToken::new();
        let metrics = ComponentMetrics::new(Registry::default(), "source", "t");
        let cx = SourceContext {
            id: "t".into(),
            output,
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
            ready: Default::default(),
        };
        let task = tokio::spawn(src.run(cx));
        Running {
            channel,
            shutdown,
            task,
            metrics,
        }
    }

    /// Takes events until `n` arrived (panics after 10 s).
    pub(crate) async fn take_n(channel: &MemoryChannel, n: usize) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out: {} of {n} events",
                got.len()
            );
            match channel.take(1000).await.unwrap() {
                Some(tx) => {
                    got.extend(tx.events().iter().cloned());
                    tx.commit().await.unwrap();
                }
                None => {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), channel.wait_for_events())
                            .await;
                }
            }
        }
        got
    }

    #[tokio::test]
    async fn one_event_per_datagram_with_flume_address_header() {
        let cfg = UdpSourceConfig::from_address("127.0.0.1:0".parse().unwrap());
        let src = cfg.build().unwrap();
        let addr = src.local_addr().unwrap();
        let r = run_source(Box::new(src), 1000);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"hello\n", addr).unwrap();
        client.send_to(b"two\nlines", addr).unwrap();
        client.send_to(b"", addr).unwrap();
        let got = take_n(&r.channel, 3).await;
        assert_eq!(&got[0].body[..], b"hello");
        assert_eq!(&got[1].body[..], b"two\nlines");
        assert_eq!(&got[2].body[..], b"");
        assert_eq!(
            got[0].headers.get("REMOTE_ADDRESS").unwrap(),
            format!("/127.0.0.1:{}", client.local_addr().unwrap().port())
        );
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn datagrams_from_peers_the_ip_filter_refuses_are_dropped_and_counted() {
        let mut cfg = UdpSourceConfig::from_address("127.0.0.1:0".parse().unwrap());
        cfg.ip_filter = Some("deny:ip:127.0.0.2,allow:ip:*".into());
        let src = cfg.build().unwrap();
        let addr = src.local_addr().unwrap();
        let r = run_source(Box::new(src), 1000);
        let denied = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let allowed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The refused datagrams are queued first: without the filter they would come first.
        for _ in 0..3 {
            denied.send_to(b"denied", addr).unwrap();
        }
        allowed.send_to(b"allowed", addr).unwrap();
        let got = take_n(&r.channel, 1).await;
        assert_eq!(&got[0].body[..], b"allowed");
        let rejected = r.metrics.counter(MetricName::DatagramsRejectedTotal);
        assert_eq!(rejected.get(), 3);
        allowed.send_to(b"again", addr).unwrap();
        let got = take_n(&r.channel, 1).await;
        assert_eq!(&got[0].body[..], b"again", "nothing else was put");
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn line_mode_splits_datagrams_and_oversize_ones_are_counted() {
        let mut cfg = UdpSourceConfig::from_address("127.0.0.1:0".parse().unwrap());
        cfg.mode = UdpMode::Line;
        cfg.max_datagram_bytes = ByteSize(16);
        cfg.remote_address_header = String::new();
        let src = cfg.build().unwrap();
        let addr = src.local_addr().unwrap();
        let stats = src.stats();
        let r = run_source(Box::new(src), 1000);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&[b'x'; 100], addr).unwrap();
        client.send_to(b"a\r\nb\nc", addr).unwrap();
        let got = take_n(&r.channel, 3).await;
        let bodies: Vec<&[u8]> = got.iter().map(|e| &e.body[..]).collect();
        assert_eq!(bodies, vec![&b"a"[..], b"b", b"c"]);
        assert!(got[0].headers.is_empty());
        assert_eq!(stats.oversize.load(Ordering::Relaxed), 1);
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn kernel_drops_are_counted_when_the_buffer_overflows() {
        let mut cfg = UdpSourceConfig::from_address("127.0.0.1:0".parse().unwrap());
        cfg.receive_buffer = Some(ByteSize(4096));
        cfg.drop_check_interval = ConfigDuration::from_millis(10);
        let src = cfg.build().unwrap();
        let addr = src.local_addr().unwrap();
        let stats = src.stats();
        // A one-event channel that is never drained: the source stops reading.
        let r = run_source(Box::new(src), 1);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut sent = 0;
        while stats.kernel_drops.load(Ordering::Relaxed) == 0 {
            if socket_inode(&client).and_then(kernel_drops).is_none() {
                eprintln!("no /proc/net/udp here; drop counting not visible");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no drops seen after {sent} datagrams"
            );
            for _ in 0..100 {
                let _ = client.send_to(&[b'd'; 1000], addr);
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
    }

    #[test]
    fn config_rejects_unknown_keys_and_bad_values() {
        let err =
            toml::from_str::<UdpSourceConfig>("bind = \"127.0.0.1:1\"\nport = 3").unwrap_err();
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
        let cfg: UdpSourceConfig =
            toml::from_str("bind = \"127.0.0.1:1\"\nmax_datagram_bytes = \"1MiB\"\nbatch_size = 0")
                .unwrap();
        let keys: Vec<_> = cfg.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["max_datagram_bytes", "batch_size"]);
    }
}
