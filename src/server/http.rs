//! Serving a router on a listener with hyper, with the limits axum::serve
//! does not expose (header count and size, header read timeout) and a
//! graceful drain on shutdown.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Limits put on every connection before a request reaches a handler.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Hard cap on header fields; handlers refuse well below it with a
    /// problem body, hyper's own plain 431 is the backstop.
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// Slow clients (slowloris) lose their connection after this.
    pub header_read_timeout: Duration,
}

/// Accepts connections until `cancel`, then waits up to `grace` for the
/// requests in flight to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    cancel: CancellationToken,
    grace: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper keeps up to 100 header slots inline; a larger cap costs two
        // heap arrays per request. 100 leaves room above the handlers' own
        // limit (64 by default) for their problem+json answer.
        .max_headers(limits.max_headers.saturating_add(1).max(100))
        .max_buf_size(limits.max_header_bytes.saturating_mul(2).max(16 * 1024));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "requests still in flight after the shutdown grace period; closing them");
        }
    }
}
