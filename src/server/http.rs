//! Serving a router on a listener with hyper, with the limits axum::serve
//! does not expose (header count and size, header read timeout) and a
//! graceful drain on shutdown.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::{Arc, LazyLock};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Limits put on every connection before a request reaches a handler.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Hard cap on header fields; handlers refuse well below it with a
    /// problem body, hyper's own plain 431 is the backstop.
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// From a connection's start, or the end of its previous answer, until
    /// a whole request head is in: slow clients (slowloris) and idle
    /// keep-alive connections are closed after it.
    pub header_read_timeout: Duration,
    /// Connections open at once; past it, new ones get a 503 at once.
    pub max_connections: usize,
}

/// What a connection past the cap is told before it is closed.
static OVERLOADED: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"type":"urn:spool:problem:overloaded","title":"Service Unavailable","status":503,"detail":"too many connections are open; retry shortly"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// How often a failing accept (out of file descriptors) is logged.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

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
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => break,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                accept_errors.failed(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&OVERLOADED))
                    .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte_within = limits.header_read_timeout;
        let stopping = cancel.clone();
        tokio::spawn(async move {
            // hyper's header timer starts only once the protocol is known,
            // which takes a first byte: a connection that never sends one
            // would be held for ever. Nor may it hold up a shutdown, which
            // waits for every watcher.
            let mut byte = [0u8; 1];
            let first_byte = tokio::time::timeout(first_byte_within, stream.peek(&mut byte));
            tokio::select! {
                peeked = first_byte => match peeked {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                },
                () = stopping.cancelled() => return,
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(connection.into_owned()).await;
            drop(permit);
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

/// Accept failures, logged at most once per ACCEPT_ERROR_LOG_EVERY with the
/// number left unlogged: at the descriptor limit they come 10 times a
/// second, and the log must not drown what caused them.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, error: &std::io::Error) {
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now - at < ACCEPT_ERROR_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(error = %error, since_last_logged = self.unlogged,
            "cannot accept connections (at the open-file limit? see `ulimit -n`)");
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}
