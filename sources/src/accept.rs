//! The accept loop of the line-oriented TCP sources (`tcp`, `syslog` over TCP): a connection
//! limit and accept-error backoff ([`Acceptor`]), one task per connection in the source's
//! span, counted and logged the same way, and an orderly stop that waits for every connection
//! to finish its batch.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};
use weir_core::accept::{Accepted, Acceptor};
use weir_core::metrics::{ComponentMetrics, MetricName};

/// Accepts until `shutdown`, runs `serve` for each connection (at most `max_connections` at
/// once; further ones are closed at accept, logged once per interval), then waits for the
/// running ones.
pub async fn serve_connections<F, Fut, E>(
    listener: TcpListener,
    max_connections: usize,
    shutdown: &CancellationToken,
    metrics: &ComponentMetrics,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    let accepted = metrics.counter(MetricName::ConnectionsAcceptedTotal);
    let errors = metrics.counter(MetricName::ErrorsTotal);
    let open = metrics.gauge(MetricName::ConnectionsOpen);
    let mut acceptor = Acceptor::new(listener, max_connections, metrics);
    let tracker = TaskTracker::new();
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
        let connection = serve(stream, peer);
        let (errors, open) = (errors.clone(), open.clone());
        tracker.spawn(
            async move {
                open.add(1);
                debug!("connection opened");
                match connection.await {
                    Ok(()) => debug!("connection closed"),
                    Err(e) => {
                        errors.inc(1);
                        warn!(message = "connection closed", reason = %e);
                    }
                }
                open.add(-1);
                drop(permit);
            }
            .instrument(tracing::info_span!("connection", %peer)),
        );
    }
    drop(acceptor);
    tracker.close();
    tracker.wait().await;
}
