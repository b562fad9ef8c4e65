//! The accept loop shared by every Avro-speaking server component (the `avro` source, the
//! `spark` sink): IP filter, connection limit, TLS/deflate layers, one task per connection,
//! metrics, and a shutdown that stops accepting and lets each connection finish its current
//! call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};
use weir_core::accept::{Accepted, Acceptor};
use weir_core::budget::InFlightBudget;
use weir_core::ipfilter::IpFilter;
use weir_core::metrics::{ComponentMetrics, MetricName};
use weir_core::tls::{self, TlsServerSettings};

use crate::server::{ConnectionInfo, Responder, RpcServer, ServerOptions};
use crate::transport::ServerLayers;

/// How [`serve`] accepts connections.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Flume's `ipFilterRules`; `None` accepts everyone.
    pub ip_filter: Option<IpFilter>,
    /// Connections served at once; further ones are closed right after accept (logged once
    /// per interval).
    pub max_connections: usize,
    pub layers: ServerLayers,
    /// Max time for a new connection's TLS handshake.
    pub handshake_timeout: Duration,
}

/// The listening settings the `avro` source and the `spark` sink share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings<'a> {
    pub ip_filter: Option<&'a str>,
    pub max_connections: usize,
    pub tls: Option<&'a TlsServerSettings>,
    pub compression: crate::transport::Compression,
    pub compression_level: u32,
    pub layering: crate::transport::Layering,
    pub handshake_timeout: Duration,
    /// Largest request pack of one connection.
    pub max_frame_bytes: u64,
    /// Request bytes read from all connections and not yet answered.
    pub max_in_flight_bytes: u64,
    /// Close a connection that sends no request for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose request is not complete this long after its first byte.
    pub frame_timeout: Duration,
}

impl ListenerSettings<'_> {
    /// What is wrong with these settings, by config key (for `weir validate`).
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(rules) = self.ip_filter {
            if let Err(e) = IpFilter::parse(rules) {
                problems.push(("ip_filter", e.to_string()));
            }
        }
        if let Some(t) = self.tls {
            problems.extend(t.check());
        }
        if self.max_connections == 0 {
            problems.push(("max_connections", "must be at least 1".into()));
        }
        if self.compression_level > 9 {
            problems.push(("compression_level", "must be 0 to 9".into()));
        }
        if self.max_frame_bytes < 1024 {
            problems.push(("max_frame_bytes", "must be at least 1KiB".into()));
        }
        if self.max_in_flight_bytes < self.max_frame_bytes {
            problems.push((
                "max_in_flight_bytes",
                format!(
                    "must be at least max_frame_bytes ({} bytes), or a request of that size could never be read",
                    self.max_frame_bytes
                ),
            ));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            problems.push((
                "idle_timeout",
                "must be more than 0 (leave it out for none)".into(),
            ));
        }
        if self.frame_timeout.is_zero() {
            problems.push(("frame_timeout", "must be more than 0".into()));
        }
        problems
    }

    /// The per-connection limits, with one in-flight budget for all connections of the
    /// listener (call once per listener).
    pub fn server_options(&self) -> ServerOptions {
        let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        ServerOptions {
            max_frame_bytes: bytes(self.max_frame_bytes),
            idle_timeout: self.idle_timeout,
            frame_timeout: self.frame_timeout,
            in_flight: Some(InFlightBudget::new(bytes(self.max_in_flight_bytes))),
            ..ServerOptions::default()
        }
    }

    /// Ready-to-use options: filter parsed, TLS files loaded.
    pub fn options(&self) -> Result<ListenerOptions, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListenerOptions {
            ip_filter: self.ip_filter.map(IpFilter::parse).transpose()?,
            max_connections: self.max_connections,
            layers: ServerLayers::from_settings(
                self.tls,
                self.compression,
                self.compression_level,
                self.layering,
            )?,
            handshake_timeout: self.handshake_timeout,
        })
    }
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            ip_filter: None,
            max_connections: 1024,
            layers: ServerLayers::plain(),
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// Accept connections on `listener` and serve each with `server` + `responder` until
/// `shutdown` is cancelled; then stop accepting, let every connection finish the call it is
/// in, and return once all connection tasks ended. Errors are logged and counted
/// (`weir_errors_total`), never returned: one bad peer must not stop the listener.
pub async fn serve<R: Responder + 'static>(
    listener: TcpListener,
    options: ListenerOptions,
    server: Arc<RpcServer>,
    responder: Arc<R>,
    shutdown: CancellationToken,
    metrics: &ComponentMetrics,
) {
    let accepted = metrics.counter(MetricName::ConnectionsAcceptedTotal);
    let open = metrics.gauge(MetricName::ConnectionsOpen);
    let errors = metrics.counter(MetricName::ErrorsTotal);
    let mut acceptor = Acceptor::new(listener, options.max_connections, metrics)
        .with_ip_filter(options.ip_filter.clone());
    let options = Arc::new(options);
    let next_id = AtomicU64::new(1);
    let mut tasks = JoinSet::new();
    loop {
        let Accepted {
            stream: tcp,
            peer,
            slot: permit,
        } = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // Reap finished tasks so the set does not grow with the connection count.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            conn = acceptor.accept() => conn,
        };
        let local = tcp.local_addr().ok();
        accepted.inc(1);
        open.add(1);
        let conn = ConnectionInfo {
            id: next_id.fetch_add(1, Ordering::Relaxed),
            peer: Some(peer),
            local,
        };
        let (server, responder, options) = (server.clone(), responder.clone(), options.clone());
        let (open, errors, stop) = (open.clone(), errors.clone(), shutdown.clone());
        // tokio::spawn does not inherit spans: carry the component's span (kind, id) along.
        tasks.spawn(
            async move {
                let _permit = permit;
                connection(
                    tcp,
                    peer,
                    &conn,
                    &options,
                    &server,
                    &*responder,
                    &stop,
                    &errors,
                )
                .await;
                responder.connection_closed(&conn);
                open.add(-1);
            }
            .instrument(tracing::Span::current()),
        );
    }
    drop(acceptor);
    debug!(
        message = "listener stopped accepting; waiting for connections",
        open = tasks.len()
    );
    while tasks.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments)]
async fn connection<R: Responder + ?Sized>(
    tcp: TcpStream,
    peer: SocketAddr,
    conn: &ConnectionInfo,
    options: &ListenerOptions,
    server: &RpcServer,
    responder: &R,
    shutdown: &CancellationToken,
    errors: &weir_core::metrics::Counter,
) {
    // Java sets TCP_NODELAY on both sides; replies are small and latency matters.
    let _ = tcp.set_nodelay(true);
    let setup = async {
        if options.layers.tls_outermost() {
            tls::expect_tls_client(&tcp)
                .await
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        }
        options.layers.wrap(tcp).await
    };
    let stream = match tokio::time::timeout(options.handshake_timeout, setup).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            errors.inc(1);
            warn!(message = "connection setup failed (TLS?)", %peer, error = %e);
            return;
        }
        Err(_) => {
            errors.inc(1);
            warn!(message = "connection setup timed out (TLS handshake)", %peer, timeout = ?options.handshake_timeout);
            return;
        }
    };
    debug!(message = "connection open", %peer, id = conn.id);
    match server
        .serve_connection_until(stream, responder, conn, shutdown)
        .await
    {
        Ok(()) => debug!(message = "connection closed", %peer, id = conn.id),
        Err(e) => {
            errors.inc(1);
            warn!(message = "connection closed on error", %peer, id = conn.id, error_type = e.kind(), error = %e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientOptions, Protocol, RpcClient, ServerOptions, Status};
    use bytes::Bytes;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weir_core::metrics::Registry;
    use weir_core::Event;

    #[derive(Default)]
    struct Rec {
        closed: Mutex<Vec<u64>>,
    }
    #[async_trait::async_trait]
    impl Responder for Rec {
        async fn call(&self, _: &str, _: Bytes, _: &ConnectionInfo) -> Result<Bytes, String> {
            Ok(Status::Ok.encode())
        }
        fn connection_closed(&self, conn: &ConnectionInfo) {
            self.closed.lock().expect("lock").push(conn.id);
        }
    }

    async fn start(
        options: ListenerOptions,
    ) -> (
        SocketAddr,
        CancellationToken,
        Arc<Rec>,
        tokio::task::JoinHandle<()>,
        ComponentMetrics,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let rec = Arc::new(Rec::default());
        let metrics = ComponentMetrics::new(Registry::default(), "source", "test");
        let server = Arc::new(RpcServer::new(Protocol::flume(), ServerOptions::default()));
        let (s2, r2, m2) = (stop.clone(), rec.clone(), metrics.clone());
        let task = tokio::spawn(async move { serve(l, options, server, r2, s2, &m2).await });
        (addr, stop, rec, task, metrics)
    }

    async fn client(addr: SocketAddr) -> RpcClient<TcpStream> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        RpcClient::new(tcp, Protocol::flume(), ClientOptions::default())
    }

    #[tokio::test]
    async fn serves_and_shuts_down_cleanly() {
        let (addr, stop, rec, task, metrics) = start(ListenerOptions::default()).await;
        let mut c = client(addr).await;
        assert_eq!(
            c.append_batch(&[Event::new("x")]).await.expect("rpc"),
            Status::Ok
        );
        // An idle open connection must not block shutdown.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("shutdown hangs")
            .expect("join");
        assert_eq!(*rec.closed.lock().expect("lock"), [1]);
        assert_eq!(
            metrics.counter(MetricName::ConnectionsAcceptedTotal).get(),
            1
        );
        assert_eq!(metrics.gauge(MetricName::ConnectionsOpen).get(), 0);
        assert!(
            c.append_batch(&[Event::new("x")]).await.is_err(),
            "server side closed"
        );
    }

    /// The filter comes before the connection limit: refused peers neither take the one
    /// place nor reach the server, and count only as refused.
    #[tokio::test]
    async fn refused_peers_take_no_place_under_the_connection_limit() {
        let (addr, stop, _rec, task, metrics) = start(ListenerOptions {
            ip_filter: Some(IpFilter::parse("deny:ip:127.0.0.2,allow:ip:*").expect("rules")),
            max_connections: 1,
            ..Default::default()
        })
        .await;
        let mut denied = Vec::new();
        for _ in 0..3 {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind("127.0.0.2:0".parse().expect("addr"))
                .expect("bind");
            denied.push(socket.connect(addr).await.expect("connect"));
        }
        let mut allowed = client(addr).await;
        assert_eq!(allowed.append_batch(&[]).await.expect("rpc"), Status::Ok);
        for mut d in denied {
            let mut buf = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(10), d.read_to_end(&mut buf))
                .await
                .expect("closed promptly");
            assert!(n.map_or(true, |n| n == 0), "refused: no reply");
        }
        assert_eq!(
            metrics.counter(MetricName::ConnectionsRejectedTotal).get(),
            3
        );
        assert_eq!(
            metrics.counter(MetricName::ConnectionsAcceptedTotal).get(),
            1
        );
        stop.cancel();
        task.await.expect("join");
    }

    #[tokio::test]
    async fn ip_filter_and_connection_limit() {
        let (addr, stop, _rec, task, metrics) = start(ListenerOptions {
            ip_filter: Some(IpFilter::parse("deny:ip:127.0.0.*").expect("rules")),
            ..Default::default()
        })
        .await;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
            .await
            .expect("closed promptly");
        assert!(
            n.map_or(true, |n| n == 0),
            "filtered: closed before any data"
        );
        stop.cancel();
        task.await.expect("join");
        assert_eq!(
            metrics.counter(MetricName::ConnectionsRejectedTotal).get(),
            1
        );

        let (addr, stop, _rec, task, metrics) = start(ListenerOptions {
            max_connections: 1,
            ..Default::default()
        })
        .await;
        let mut first = client(addr).await;
        assert_eq!(first.append_batch(&[]).await.expect("rpc"), Status::Ok);
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let _ = second.write_all(b"x").await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut buf))
            .await
            .expect("closed promptly");
        assert_eq!(
            metrics.counter(MetricName::ConnectionsRejectedTotal).get(),
            1
        );
        stop.cancel();
        task.await.expect("join");
    }
}
