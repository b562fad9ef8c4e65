//! The accept loop of the line-oriented TCP sources (`tcp`, `syslog` over TCP): the IP filter,
//! a connection limit and accept-error backoff ([`Acceptor`]), TLS, one task per connection in
//! the source's span, counted and logged the same way, and an orderly stop that waits for every
//! connection to finish its batch.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};
use weir_avro_rpc::transport::BoxStream;
use weir_core::accept::{Accepted, Acceptor};
use weir_core::ipfilter::IpFilter;
use weir_core::metrics::{ComponentMetrics, MetricName};
use weir_core::tls::{self, TlsAcceptor, TlsServerSettings};

/// Who may connect and how: Flume's `ipFilterRules` and TLS.
#[derive(Clone, Default)]
pub struct Gate {
    pub ip_filter: Option<IpFilter>,
    pub tls: Option<TlsAcceptor>,
    /// Most time a new connection gets to complete its TLS handshake.
    pub handshake_timeout: Duration,
}

impl Gate {
    /// Problems with the `ip_filter` and `tls` settings, by config key (for `check()`).
    pub fn check(
        ip_filter: Option<&str>,
        tls: Option<&TlsServerSettings>,
    ) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(Err(e)) = ip_filter.map(IpFilter::parse) {
            problems.push(("ip_filter", e.to_string()));
        }
        if let Some(t) = tls {
            problems.extend(t.check());
        }
        problems
    }

    /// Parses the rules and loads the TLS files; the error names the key and the file.
    pub fn new(
        ip_filter: Option<&str>,
        tls: Option<&TlsServerSettings>,
        handshake_timeout: Duration,
    ) -> Result<Gate, String> {
        if let Some((key, problem)) = Gate::check(ip_filter, tls).into_iter().next() {
            return Err(format!("{key}: {problem}"));
        }
        Ok(Gate {
            ip_filter: ip_filter
                .map(IpFilter::parse)
                .transpose()
                .map_err(|e| format!("ip_filter: {e}"))?,
            tls: tls
                .map(TlsServerSettings::acceptor)
                .transpose()
                .map_err(|e| format!("tls: {e}"))?,
            handshake_timeout,
        })
    }
}

/// Accepts until `shutdown`, runs `serve` for each connection let in by the gate (at most
/// `max_connections` at once; further ones are closed at accept, logged once per interval),
/// then waits for the running ones.
pub async fn serve_connections<F, Fut, E>(
    listener: TcpListener,
    max_connections: usize,
    gate: Gate,
    shutdown: &CancellationToken,
    metrics: &ComponentMetrics,
    serve: F,
) where
    F: Fn(BoxStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    let accepted = metrics.counter(MetricName::ConnectionsAcceptedTotal);
    let errors = metrics.counter(MetricName::ErrorsTotal);
    let open = metrics.gauge(MetricName::ConnectionsOpen);
    let mut acceptor =
        Acceptor::new(listener, max_connections, metrics).with_ip_filter(gate.ip_filter.clone());
    let tracker = TaskTracker::new();
    let serve = Arc::new(serve);
    loop {
        let Accepted {
            stream,
            peer,
            slot: permit,
        } = tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = acceptor.accept() => conn,
        };
        accepted.inc(1);
        let _ = stream.set_nodelay(true);
        let (errors, open, serve) = (errors.clone(), open.clone(), serve.clone());
        let (tls, timeout) = (gate.tls.clone(), gate.handshake_timeout);
        tracker.spawn(
            async move {
                open.add(1);
                // The handshake runs in the connection's task so a slow one holds up nobody.
                let stream: BoxStream = match &tls {
                    None => Box::new(stream),
                    Some(acceptor) => match tls::accept(acceptor, stream, timeout).await {
                        Ok(s) => Box::new(s),
                        Err(e) => {
                            errors.inc(1);
                            warn!(message = "connection refused: TLS handshake", %peer, error_type = e.kind(), error = %e);
                            open.add(-1);
                            return;
                        }
                    },
                };
                debug!(message = "connection opened", %peer);
                match serve(stream, peer).await {
                    Ok(()) => debug!(message = "connection closed", %peer),
                    Err(e) => {
                        errors.inc(1);
                        warn!(message = "connection closed", %peer, reason = %e);
                    }
                }
                open.add(-1);
                drop(permit);
            }
            // tokio does not carry spans into tasks: keep the component's (kind, id) on every
            // line, with the peer as a field.
            .instrument(tracing::Span::current()),
        );
    }
    drop(acceptor);
    tracker.close();
    tracker.wait().await;
}
