//! Memory benchmark: the resident memory of a spool process (the release
//! binary, run as a child so that the load generator's own memory is not
//! counted) after reads of 50,000 distinct URLs with 1 KiB answers fill the
//! read cache, then while 256 connections send 1 MiB writes at once, and
//! ten seconds after they stop. Printed beside the limits that should bound
//! them (`server.max_body_bytes_in_flight`, `read_cache.max_bytes`), on a
//! durable Postgres.
//!
//! Run with `scripts/bench-memory` (it builds the binary and this program).

#[path = "common/mod.rs"]
mod common;

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BoxError, HttpClient, http_client};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

const WRITERS: usize = 256;
const WRITE_BYTES: usize = 1024 * 1024;
const WRITE_SECS: u64 = 10;
const READ_URLS: usize = 50_000;
const READ_BYTES: usize = 1024;
const READERS: usize = 64;
const MIB: f64 = 1024.0 * 1024.0;
const IN_FLIGHT_LIMIT: u64 = 64 * 1024 * 1024;
const CACHE_LIMIT: u64 = 64 * 1024 * 1024;

struct Report {
    server: String,
    idle: u64,
    peak_writing: u64,
    after_writes: u64,
    accepted: u64,
    refused: u64,
    after_reads: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let spool = match std::env::args().skip_while(|a| a != "--spool").nth(1) {
        Some(path) => path,
        None => {
            eprintln!("bench_memory: --spool PATH (the release binary) is required");
            return ExitCode::FAILURE;
        }
    };
    let outcome =
        common::with_durable_postgres("bench_memory", async |_, url| measure(&spool, url).await)
            .await;
    common::finish("bench_memory", outcome, print)
}

fn print(r: &Report) {
    let mib = |b: u64| b as f64 / MIB;
    println!(
        "spool memory benchmark ({}), resident set of the spool process:",
        r.server
    );
    println!(
        "  idle                               {:8.1} MiB",
        mib(r.idle)
    );
    println!(
        "  after {READ_URLS} distinct read URLs     {:8.1} MiB  (read_cache.max_bytes {:.0} MiB; {:.1} MiB above idle)",
        mib(r.after_reads),
        mib(CACHE_LIMIT),
        mib(r.after_reads.saturating_sub(r.idle))
    );
    println!(
        "  peak, {WRITERS} connections x 1 MiB writes {:8.1} MiB  (max_body_bytes_in_flight {:.0} MiB; {} accepted, {} refused 503)",
        mib(r.peak_writing),
        mib(IN_FLIGHT_LIMIT),
        r.accepted,
        r.refused
    );
    println!(
        "  10 s after the writes stopped      {:8.1} MiB",
        mib(r.after_writes)
    );
}

async fn measure(spool_binary: &str, url: &str) -> Result<Report, BoxError> {
    let admin = common::connect(url).await?;
    let server = common::describe_server(&admin).await?;
    let sink = serve(|_| Response::new(Full::new(Bytes::new()))).await?;
    let upstream = serve(|_| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(vec![b'x'; READ_BYTES])))
            .expect("valid answer")
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let data = free_port()?;
    let admin_port = free_port()?;
    let config = common::spool_toml(
        url,
        &format!(
            r#"
[read_cache]
max_bytes = {CACHE_LIMIT}
max_entries = 10000000

[[routes]]
name = "writes"
  [[routes.targets]]
  name = "sink"
  url = "http://{sink}/"

[[routes]]
name = "reads"
  [[routes.targets]]
  name = "upstream"
  url = "http://{upstream}/"
"#
        ),
    )
    .replacen("127.0.0.1:0", &data.to_string(), 1)
    .replacen("127.0.0.1:0", &admin_port.to_string(), 1)
    .replacen(
        "[server]\n",
        &format!("[server]\nmax_body_bytes = {WRITE_BYTES}\nmax_body_bytes_in_flight = {IN_FLIGHT_LIMIT}\nmax_connections = 4096\n"),
        1,
    );
    let path = dir.path().join("spool.toml");
    std::fs::write(&path, config)?;
    let mut child = Command::new(spool_binary)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()?;
    let outcome = run(&child, data, admin_port, server).await;
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

async fn run(
    child: &Child,
    data: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    server: String,
) -> Result<Report, BoxError> {
    let pid = child.id();
    wait_ready(admin).await?;
    let idle = resident(pid)?;

    let next = Arc::new(AtomicU64::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..READERS {
        let next = Arc::clone(&next);
        readers.spawn(async move {
            let client = http_client();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= READ_URLS as u64 {
                    return;
                }
                let _ = send(
                    &client,
                    data,
                    "GET",
                    &format!("/reads/item/{n}"),
                    Bytes::new(),
                )
                .await;
            }
        });
    }
    while readers.join_next().await.is_some() {}
    // The cache evicts in the background: let it settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_reads = resident(pid)?;

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let body = Bytes::from(vec![b'w'; WRITE_BYTES]);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (stop, accepted, refused, body) = (
            Arc::clone(&stop),
            Arc::clone(&accepted),
            Arc::clone(&refused),
            body.clone(),
        );
        writers.spawn(async move {
            let client = http_client();
            while !stop.load(Ordering::Relaxed) {
                match send(&client, data, "POST", "/writes/x", body.clone()).await {
                    Ok(202) => accepted.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    let started = Instant::now();
    let mut peak_writing = 0;
    while started.elapsed() < Duration::from_secs(WRITE_SECS) {
        peak_writing = peak_writing.max(resident(pid)?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while writers.join_next().await.is_some() {
        peak_writing = peak_writing.max(resident(pid)?);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after_writes = resident(pid)?;

    Ok(Report {
        server,
        idle,
        peak_writing,
        after_writes,
        accepted: accepted.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        after_reads,
    })
}

async fn send(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<u16, BoxError> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

async fn wait_ready(admin: std::net::SocketAddr) -> Result<(), BoxError> {
    let client = http_client();
    for _ in 0..600 {
        if let Ok(200) = send(&client, admin, "GET", "/readyz", Bytes::new()).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("spool did not become ready within a minute".into())
}

/// VmRSS of `pid`, in bytes.
fn resident(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("no VmRSS in /proc/PID/status")?
        .parse()?;
    Ok(kib * 1024)
}

fn free_port() -> Result<std::net::SocketAddr, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A loopback HTTP/1.1 server answering every request with `answer`.
async fn serve(
    answer: fn(&Request<hyper::body::Incoming>) -> Response<Full<Bytes>>,
) -> Result<std::net::SocketAddr, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    tokio::spawn(common::serve_http1(
        listener,
        Arc::new(answer),
        |_| {},
        |answer, request| async move {
            let response = answer(&request);
            // Read the request body to its end, as a real service does.
            request.into_body().collect().await?;
            Ok::<_, hyper::Error>(response)
        },
    ));
    Ok(addr)
}
