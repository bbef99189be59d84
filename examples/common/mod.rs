//! What the benchmark programs share: the throwaway durable Postgres, the
//! 512-byte JSON body, an HTTP/1.1 client and server loop, percentiles and
//! report helpers;
//! CPU accounting from /proc (`cpu`) and running wrk (`wrk`).
//!
//! Each example compiles its own copy of this module (`#[path =
//! "common/mod.rs"] mod common;`), so an item one of them does not use would
//! be dead code there; hence the `allow` below.
#![allow(dead_code)]

pub mod cpu;
pub mod wrk;

use std::error::Error;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use spool::embedded_pg::{Durability, EmbeddedPostgres};
use tokio_postgres::NoTls;

pub type BoxError = Box<dyn Error + Send + Sync>;

/// Size of every request body the benchmarks send or store.
pub const BODY_BYTES: usize = 512;

/// A directory Postgres (running as `postgres` when we are root) can use,
/// with a path short enough for a Unix socket. Removed when dropped.
fn scratch_dir() -> Result<tempfile::TempDir, BoxError> {
    Ok(tempfile::Builder::new()
        .prefix("spool-bench-")
        .tempdir_in("/tmp")?)
}

/// Creates and starts a throwaway but *durable* Postgres (fsync on, as in
/// production), runs `measure` with its directory (where its socket is) and
/// its URL, and stops it whatever happened, Ctrl-C included, so that no
/// cluster is left behind. `program` names the benchmark in messages.
pub async fn with_durable_postgres<T>(
    program: &str,
    measure: impl AsyncFnOnce(&EmbeddedPostgres, &str) -> Result<T, BoxError>,
) -> Result<T, BoxError> {
    let dir = scratch_dir()?;
    eprintln!("starting a durable Postgres in {}", dir.path().display());
    let pg = EmbeddedPostgres::new(dir.path(), None, Durability::Durable)?;
    let url = pg.start().await?;
    let outcome = until_interrupted(measure(&pg, &url)).await;
    if let Err(e) = pg.stop("fast").await {
        eprintln!(
            "{program}: could not stop Postgres in {}: {e}",
            dir.path().display()
        );
    }
    outcome
}

/// A benchmark's exit: the report printed on success, else the error after
/// the program's name.
pub fn finish<R>(program: &str, outcome: Result<R, BoxError>, print: impl FnOnce(&R)) -> ExitCode {
    match outcome {
        Ok(report) => {
            print(&report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn until_interrupted<T>(
    work: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    tokio::select! {
        outcome = work => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    }
}

/// A plain connection for the benchmark's own SQL (set-up, resets, checks).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("benchmark: admin connection: {e}");
        }
    });
    Ok(client)
}

/// The TOML of an in-process spool on the benchmark's cluster at `url`: any
/// free ports, warnings only in the log, then `rest` (its routes and any
/// other sections).
pub fn spool_toml(url: &str, rest: &str) -> String {
    // toml's own quoting: the URL holds single quotes around the socket path.
    let url = toml::Value::String(url.to_owned());
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[database]
url = {url}

[log]
level = "warn"
{rest}"#
    )
}

/// Version and the settings that make commits durable, shown in the report
/// so that a reader can see the comparison was not run with fsync off.
pub async fn describe_server(admin: &tokio_postgres::Client) -> Result<String, BoxError> {
    let row = admin
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
             current_setting('synchronous_commit'), current_setting('full_page_writes')",
            &[],
        )
        .await?;
    let (version, fsync, sync_commit, fpw): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(format!(
        "Postgres {version}, fsync={fsync}, synchronous_commit={sync_commit}, full_page_writes={fpw}"
    ))
}

/// A realistic-looking order, padded to exactly `BODY_BYTES` bytes of JSON.
/// Plain ASCII without quotes or backslashes inside values, so it can sit in
/// an SQL literal or a Lua string as is.
pub fn json_body() -> String {
    let head = r#"{"order_id":"4f1c2a9e-7b3d-4e21-9c55-0d8e6f7a1b2c","customer":{"id":"cus_81723","email":"buyer@example.com"},"items":[{"sku":"SKU-1042","qty":2,"price_cents":1999},{"sku":"SKU-2210","qty":1,"price_cents":4550}],"currency":"EUR","note":""#;
    let tail = r#""}"#;
    let padding = BODY_BYTES - head.len() - tail.len();
    let body = format!("{head}{}{tail}", "x".repeat(padding));
    assert_eq!(body.len(), BODY_BYTES);
    body
}

/// The value after `key` on the first line of a tool's output that has it:
/// `tps = 1234.5 (without initial connection time)` gives `1234.5`, and
/// `Requests/sec:  81234.56` gives `81234.56`.
pub fn parse_field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    let line = output.lines().find(|l| l.trim_start().starts_with(key))?;
    line.trim_start()[key.len()..].split_whitespace().next()
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted latencies; zero for none.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Serves HTTP/1.1 on `listener` for ever: `accepted` is told of each new
/// connection, and `answer` answers each request with the shared `state`.
pub async fn serve_http1<T, F, B, E>(
    listener: std::net::TcpListener,
    state: Arc<T>,
    accepted: impl Fn(&T),
    answer: fn(Arc<T>, Request<Incoming>) -> F,
) -> std::io::Result<()>
where
    T: Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        // An answer is one small write: no Nagle delay on it.
        stream.set_nodelay(true)?;
        accepted(&state);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(Arc::clone(&state), request));
            // A connection closed by its client ends here; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client that keeps one keep-alive connection (its user never has two
/// requests out at once).
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    // As spool's side does: no Nagle delay on small writes.
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_512_bytes_of_json() {
        let body = json_body();
        assert_eq!(body.len(), BODY_BYTES);
        serde_json::from_str::<serde_json::Value>(&body).expect("valid JSON");
    }

    #[test]
    fn reads_pgbench_tps_and_wrk_rate() {
        let out =
            "latency average = 12.3 ms\ntps = 5190.412345 (without initial connection time)\n";
        assert_eq!(parse_field(out, "tps = "), Some("5190.412345"));
        let out = "  Latency   1.00ms\nRequests/sec:  81234.56\nTransfer/sec:  5.2MB\n";
        assert_eq!(parse_field(out, "Requests/sec:"), Some("81234.56"));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
