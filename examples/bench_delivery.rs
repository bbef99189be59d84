//! Delivery benchmark: how fast spool forwards what it has acknowledged,
//! next to what a load generator does against the same target.
//!
//! One run, one machine, one throwaway but *durable* Postgres (fsync on, as
//! in production), and one **sink**: an HTTP/1.1 server on 127.0.0.1, in
//! this process on its own runtime and threads, that reads each request and
//! answers `200` with an empty body at once. Phases, one at a time:
//!
//! 1. **wrk**: `wrk -c64` POSTs the same 512-byte JSON body, with the same
//!    headers spool adds, straight to the sink. Its `Requests/sec` is the
//!    baseline: the most this machine gets through that sink at 64 in
//!    flight.
//! 2. **spool, 10,000 backlog**: spool runs in this process with one route
//!    whose single target is the sink (`rate.concurrency` 64, a rate of
//!    1,000,000/s that never binds). With its target paused, 10,000
//!    deliveries are loaded by SQL, shaped as spool's ingest writes them;
//!    then the target is resumed until the sink has seen all 10,000. The
//!    rate is taken over the middle 80% of the arrivals (so that the first
//!    claim and the trickle at the end, which a window in a big backlog
//!    does not have, do not count); the time from the resume to the last
//!    arrival is shown too. Repeated for a few rounds: half of them before
//!    the large backlog below, half after, so that drift weighs on both.
//! 3. **spool, 1,000,000 backlog**: the same with 1,000,000 deliveries,
//!    measured over a fixed window after a warm-up (draining it all would
//!    take minutes). The ratio of the two rates says whether a big backlog
//!    slows spool down.
//! 4. **latency, idle**: empty tables; writes sent one at a time through
//!    spool's data port with a pause between them. For each: when it was
//!    sent, when its 202 was read, and when the sink saw it (matched by
//!    `Spool-Message-Id`).
//!
//! After each spool window the target is paused again and the tables are
//! counted, to confirm that delivered rows are deleted and nothing else is.
//! For each window the CPU time of spool, the sink, Postgres and everything
//! else is read from /proc, to show where the machine's two cores went.
//! Targets from the issue: deliveries/s at 0.5 of wrk's rate or better; the
//! 1,000,000 backlog within 10% of the 10,000 one; p50 from acknowledgement
//! to delivery under 5 ms.
//!
//! Run with `scripts/bench-delivery` (or `cargo run --release --example
//! bench_delivery -- --help`). Needs the Postgres server binaries and wrk
//! (`apt-get install postgresql wrk`); as root, Postgres runs as `postgres`.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri, header};
use spool::Spool;
use spool::dispatch::TargetHandle;
use spool::embedded_pg::EmbeddedPostgres;

use common::cpu::{self, cores};
use common::{
    BODY_BYTES, BoxError, HttpClient, connect, describe_server, finish, http_client, json_body, ms,
    percentile, secs, serve_http1, spool_toml, verdict, with_durable_postgres, wrk,
};

/// The route and target spool forwards to the sink.
const ROUTE: &str = "bench";
const TARGET: &str = "sink";

/// Rows of a preload inserted per statement, so that progress can be shown.
const LOAD_CHUNK: i64 = 100_000;

/// spool's ingest commits up to this many writes at once (`ingest.batch_max`),
/// and each commit gives its rows one `now()`: the preload stamps its rows
/// in groups of this size, one millisecond apart, as a backlog built by
/// real writes would be.
const INGEST_BATCH: i64 = 256;

#[derive(Debug, Parser)]
/// spool's deliveries/s to a local sink beside wrk's, backlog independence,
/// and ack-to-delivery latency.
#[command()]
struct Args {
    /// Measured seconds of the wrk run and of the 1,000,000-backlog window.
    #[arg(long, env = "BENCH_SECS", default_value_t = 10)]
    secs: u64,
    /// Uncounted warm-up seconds before those two.
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 2)]
    warmup: u64,
    /// Deliveries in flight: spool's rate.concurrency and wrk's connections.
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// spool's dispatch.claim_batch.
    #[arg(long, env = "BENCH_CLAIM_BATCH", default_value_t = 256)]
    claim_batch: usize,
    /// The small backlog, drained completely in each round.
    #[arg(long, default_value_t = 10_000)]
    small_backlog: i64,
    /// Rounds of the small backlog.
    #[arg(long, default_value_t = 5)]
    small_rounds: usize,
    /// Ordering keys of the keyed drain, beside the unkeyed small backlog.
    #[arg(long, default_value_t = 64)]
    keys: i64,
    /// The backlog of the one-key drain (one delivery at a time).
    #[arg(long, default_value_t = 3_000)]
    one_key_backlog: i64,
    /// The large backlog, measured over a window.
    #[arg(long, default_value_t = 1_000_000)]
    large_backlog: i64,
    /// Writes sent one at a time in the latency phase.
    #[arg(long, default_value_t = 500)]
    latency_writes: usize,
    /// Pause between two of those writes, in milliseconds.
    #[arg(long, default_value_t = 10)]
    latency_gap_ms: u64,
    /// How the preloaded deliveries' due times are stamped: `one` shows
    /// what a backlog whose rows are all due at one instant costs.
    #[arg(long, value_enum, default_value_t = Stamps::Ingest)]
    stamps: Stamps,
    /// The wrk program.
    #[arg(long, env = "WRK", default_value = "wrk")]
    wrk: PathBuf,
}

// ---------------------------------------------------------------------------
// The sink

/// What the sink has seen. Shared between its threads and the benchmark.
struct SinkState {
    requests: AtomicU64,
    /// When set, the arrival of every request is logged, in no set order.
    logging: AtomicBool,
    log: Mutex<Vec<Instant>>,
    /// When set, the arrival of every request is kept by `Spool-Message-Id`.
    recording: AtomicBool,
    arrivals: Mutex<HashMap<String, Instant>>,
}

struct Sink {
    addr: SocketAddr,
    state: Arc<SinkState>,
}

impl Sink {
    /// Serves on 127.0.0.1 (any free port) from a runtime of its own with
    /// `workers` threads named `sink`, so that its CPU time can be told
    /// apart from spool's, and it is the same sink for wrk and for spool.
    fn start(workers: usize) -> Result<Sink, BoxError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("sink")
            .enable_all()
            .build()?;
        let state = Arc::new(SinkState {
            requests: AtomicU64::new(0),
            logging: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            recording: AtomicBool::new(false),
            arrivals: Mutex::new(HashMap::new()),
        });
        let served = Arc::clone(&state);
        // Lives until the process exits.
        std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || {
                if let Err(e) = runtime.block_on(serve_http1(listener, served, |_| {}, answer)) {
                    eprintln!("bench_delivery: sink stopped: {e}");
                }
            })?;
        Ok(Sink { addr, state })
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Starts logging the arrival of every request.
    fn log_arrivals(&self) {
        self.state.log.lock().expect("sink lock").clear();
        self.state.logging.store(true, Ordering::Relaxed);
    }

    /// Stops logging; the arrivals logged, in order.
    fn take_log(&self) -> Vec<Instant> {
        self.state.logging.store(false, Ordering::Relaxed);
        let mut log = std::mem::take(&mut *self.state.log.lock().expect("sink lock"));
        log.sort_unstable();
        log
    }

    fn record_arrivals(&self, on: bool) {
        self.state.arrivals.lock().expect("sink lock").clear();
        self.state.recording.store(on, Ordering::Relaxed);
    }

    fn arrival(&self, message_id: &str) -> Option<Instant> {
        let arrivals = self.state.arrivals.lock().expect("sink lock");
        arrivals.get(message_id).copied()
    }
}

/// Reads the request (as a real target would) and answers 200 at once.
async fn answer(
    state: Arc<SinkState>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let arrived = Instant::now();
    if state.recording.load(Ordering::Relaxed)
        && let Some(id) = request.headers().get("spool-message-id")
        && let Ok(id) = id.to_str()
    {
        let mut arrivals = state.arrivals.lock().expect("sink lock");
        arrivals.insert(id.to_owned(), arrived);
    }
    request.into_body().collect().await?;
    if state.logging.load(Ordering::Relaxed) {
        state.log.lock().expect("sink lock").push(arrived);
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    Ok(Response::new(Empty::new()))
}

// ---------------------------------------------------------------------------
// Where the CPU went

/// CPU time, in clock ticks, by who spent it.
#[derive(Debug, Default, Clone, Copy)]
struct CpuTicks {
    /// This process's runtime threads: spool (and the sampler of in-flight
    /// attempts, a wake-up a millisecond).
    spool: u64,
    sink: u64,
    /// This process's main thread: the benchmark's own driver.
    driver: u64,
    /// Postgres backends: the sessions that run spool's SQL.
    pg_backends: u64,
    /// The postmaster and its helpers: WAL writer, checkpointer, autovacuum.
    pg_background: u64,
    /// The whole machine, busy and idle.
    busy: u64,
    idle: u64,
}

/// Share of one core, in percent, for each spender over a window.
#[derive(Debug, Default, Clone, Copy)]
struct CpuSplit {
    spool: f64,
    sink: f64,
    driver: f64,
    pg_backends: f64,
    pg_background: f64,
    /// Everything else on the machine: wrk, or someone else's work.
    other: f64,
    idle: f64,
    /// Seconds the shares were taken over.
    seconds: f64,
}

/// Reads /proc at the start of a window and again at its end.
type CpuSampler = cpu::Sampler<CpuTicks>;

impl cpu::Ticks for CpuTicks {
    type Key = Option<u32>;
    type Split = CpuSplit;

    fn read(postmaster: Option<u32>) -> Self {
        cpu_ticks(postmaster)
    }

    fn split(s: &Self, end: &Self, window: f64) -> CpuSplit {
        let share = |end: u64, start: u64| cpu::share(end, start, window);
        let spool = share(end.spool, s.spool);
        let sink = share(end.sink, s.sink);
        let driver = share(end.driver, s.driver);
        let pg_backends = share(end.pg_backends, s.pg_backends);
        let pg_background = share(end.pg_background, s.pg_background);
        let busy = share(end.busy, s.busy);
        CpuSplit {
            spool,
            sink,
            driver,
            pg_backends,
            pg_background,
            other: (busy - spool - sink - driver - pg_backends - pg_background).max(0.0),
            idle: share(end.idle, s.idle),
            seconds: window,
        }
    }
}

fn cpu_ticks(postmaster: Option<u32>) -> CpuTicks {
    let mut ticks = CpuTicks::default();
    let main_thread = std::process::id();
    for (tid, stat) in cpu::own_threads() {
        if tid == main_thread {
            ticks.driver += stat.used;
        } else if stat.name == "sink" {
            ticks.sink += stat.used;
        } else {
            ticks.spool += stat.used;
        }
    }
    if let Some(postmaster) = postmaster {
        for (pid, used) in postgres_processes(postmaster) {
            // A backend's title is `postgres: user db [local] STATE`.
            let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if title.contains("[local]") {
                ticks.pg_backends += used;
            } else {
                ticks.pg_background += used;
            }
        }
    }
    (ticks.busy, ticks.idle) = cpu::machine_ticks();
    ticks
}

/// (pid, user + system ticks) of the postmaster and its children.
fn postgres_processes(postmaster: u32) -> Vec<(u32, u64)> {
    cpu::processes()
        .into_iter()
        .filter_map(|(pid, stat)| {
            (pid == postmaster || stat.parent == postmaster).then_some((pid, stat.used))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The direct baseline: wrk

/// What wrk measured, and what the sink and the CPU saw meanwhile.
#[derive(Debug, Default)]
struct WrkRun {
    version: String,
    threads: usize,
    per_second: f64,
    /// The sink's own count over wrk's run, as a cross-check.
    sink_per_second: f64,
    errors: String,
    cpu: CpuSplit,
}

/// The Lua script: POST the body with the headers spool adds to a forwarded
/// write, so that the sink parses requests of the same size either way.
fn wrk_script(body: &str) -> String {
    format!(
        r#"wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"
wrk.headers["Spool-Message-Id"] = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"
wrk.headers["Spool-Attempt"] = "1"
wrk.headers["traceparent"] = "00-0190a1b2c3d47e5f8a6b7c8d9e0f1a2b-3f2e1d0c4b5a6978-00"
"#
    )
}

async fn run_wrk(
    args: &Args,
    sink: &Sink,
    script: &Path,
    postmaster: Option<u32>,
) -> Result<WrkRun, BoxError> {
    let threads = cores().min(args.concurrency);
    let url = format!("http://{}/orders", sink.addr);
    let wrk_for = |seconds: u64| {
        let mut command = wrk::command(&args.wrk, threads, args.concurrency, seconds);
        command.arg("-s").arg(script).arg(&url);
        command
    };
    if args.warmup > 0 {
        wrk_for(args.warmup).output().await?;
    }
    let (before, cpu) = (sink.requests(), CpuSampler::start(postmaster));
    let started = Instant::now();
    let output = wrk::output(wrk_for(args.secs)).await;
    let elapsed = started.elapsed();
    let cpu = cpu.finish();
    let stdout = output?;
    let per_second = wrk::requests_per_second(&stdout)?;
    let errors: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Socket errors") || l.starts_with("Non-2xx"))
        .collect();
    Ok(WrkRun {
        version: wrk::version(&args.wrk).await,
        threads,
        per_second,
        sink_per_second: (sink.requests() - before) as f64 / elapsed.as_secs_f64(),
        errors: if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join("; ")
        },
        cpu,
    })
}

// ---------------------------------------------------------------------------
// spool and its backlog

/// A config for the in-process spool: any free ports, one route whose
/// single target is the sink, a rate that never binds.
fn spool_config(
    url: &str,
    sink: SocketAddr,
    args: &Args,
) -> Result<spool::config::Config, BoxError> {
    let rest = format!(
        r#"
[dispatch]
claim_batch = {claim_batch}

[[routes]]
name = "{ROUTE}"

  [[routes.targets]]
  name = "{TARGET}"
  url = "http://{sink}"

  [routes.rate]
  per_second = 1000000
  concurrency = {concurrency}
"#,
        claim_batch = args.claim_batch,
        concurrency = args.concurrency,
    );
    Ok(spool::config::from_toml(&spool_toml(url, &rest))?)
}

/// Inserts `count` messages with one pending delivery each, as spool's
/// ingest (INSERT_BATCH) writes them: format 1, the content-type header, the
/// 512-byte body, `seq` from the identity. Ids are UUIDv7-shaped and
/// ascending (a millisecond prefix, then the row number) as spool's are.
/// Rows $1..$2 of $8 are stamped $5 to a millisecond, oldest first, the
/// newest at $7 (epoch seconds, the load's start), so that all are due.
const PRELOAD: &str = "
WITH stamped AS (
    SELECT g, to_timestamp($7) - make_interval(secs => (($8::bigint - 1 - g) / $5)::float8 / 1000.0) AS at
    FROM generate_series($1::bigint, $2::bigint - 1) AS g
),
messages AS (
    INSERT INTO spool_message (id, format_version, route, method, path, headers, body, accepted_at,
                               ordering_key)
    SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || '7000' || '8' || lpad(to_hex(g), 15, '0'))::uuid,
           1, $3, 'POST', '/orders', '[[\"content-type\", \"application/json\"]]', $6, at,
           CASE WHEN $9::bigint > 0 THEN 'key-' || (g % $9::bigint) END
    FROM stamped
    RETURNING id, seq, accepted_at, ordering_key
)
INSERT INTO spool_delivery (message_id, route, target, seq, next_attempt_at, created_at, ordering_key)
SELECT id, $3, $4, seq, accepted_at, accepted_at, ordering_key FROM messages";

/// How the preloaded deliveries are stamped (`next_attempt_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stamps {
    /// `INGEST_BATCH` rows to a millisecond, as group commits leave them.
    Ingest,
    /// All rows at one instant, as a replay of many dead letters leaves
    /// them (one UPDATE, one `now()`).
    One,
}

/// Empties the tables, loads `count` pending deliveries (spread over
/// `keys` ordering keys, none when 0), and leaves them as a long-lived
/// backlog would be: vacuumed, analyzed, checkpointed.
async fn load_backlog(
    admin: &tokio_postgres::Client,
    count: i64,
    stamps: Stamps,
    keys: i64,
) -> Result<(), BoxError> {
    admin
        .batch_execute("TRUNCATE spool_message, spool_delivery")
        .await?;
    let body = json_body().into_bytes();
    let statement = admin.prepare(PRELOAD).await?;
    let per_millisecond = match stamps {
        Stamps::Ingest => INGEST_BATCH,
        Stamps::One => count,
    };
    let newest: f64 = admin
        .query_one("SELECT extract(epoch FROM now())::float8", &[])
        .await?
        .get(0);
    let started = Instant::now();
    let mut from = 0;
    while from < count {
        let to = (from + LOAD_CHUNK).min(count);
        admin
            .execute(
                &statement,
                &[
                    &from,
                    &to,
                    &ROUTE,
                    &TARGET,
                    &per_millisecond,
                    &body,
                    &newest,
                    &count,
                    &keys,
                ],
            )
            .await?;
        from = to;
        if count > LOAD_CHUNK {
            eprint!("\r  loaded {from} of {count}");
        }
    }
    let loaded = started.elapsed();
    // VACUUM refuses to run inside a (multi-statement) transaction.
    admin
        .batch_execute("VACUUM ANALYZE spool_message, spool_delivery")
        .await?;
    admin.batch_execute("CHECKPOINT").await?;
    if count > LOAD_CHUNK {
        eprintln!(
            " in {:.1} s; with VACUUM ANALYZE and CHECKPOINT, {:.1} s",
            loaded.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Rows left in (spool_delivery, spool_message).
async fn rows_left(admin: &tokio_postgres::Client) -> Result<(i64, i64), BoxError> {
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM spool_delivery), (SELECT count(*) FROM spool_message)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Stops the target and waits until every attempt in flight is over and
/// its outcome written. A paused dispatcher lets go of what it held
/// unsent, so the tables can be emptied and loaded again.
async fn pause(target: &TargetHandle, admin: &tokio_postgres::Client) -> Result<(), BoxError> {
    target.flow.set_paused(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while target.flow.in_flight() > 0 {
        if Instant::now() > deadline {
            return Err("attempts still in flight 30 s after pausing".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last outcomes are written once the rows stop changing.
    let mut last = rows_left(admin).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rows_left(admin).await?;
        if now == last {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("outcomes still being written 30 s after pausing".into());
        }
        last = now;
    }
}

/// spool-side figures over a window, from its metrics and Postgres's.
#[derive(Debug, Default, Clone, Copy)]
struct Internals {
    /// Attempts in flight, sampled every millisecond.
    mean_in_flight: f64,
    /// Mean time of one attempt (the HTTP exchange with the sink).
    mean_attempt: Duration,
    /// Postgres commits (reads and outcome batches) per delivery.
    commits_per_delivery: f64,
    /// Write-ahead log per delivery: what Postgres wrote for it, exactly.
    wal_bytes_per_delivery: f64,
}

/// Samples attempts in flight every millisecond until stopped.
struct InFlightSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl InFlightSampler {
    fn start(target: &TargetHandle) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flow, stopped) = (Arc::clone(&target.flow), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let (mut sum, mut samples) = (0usize, 0usize);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                sum += flow.in_flight();
                samples += 1;
            }
            sum as f64 / samples.max(1) as f64
        });
        InFlightSampler { stop, task }
    }

    async fn mean(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0.0)
    }
}

/// Counters read at the start of a window, to subtract at its end.
struct Counters {
    attempts: u64,
    attempt_seconds: f64,
    commits: i64,
    wal_bytes: f64,
}

impl Counters {
    async fn now(spool: &Spool, admin: &tokio_postgres::Client) -> Result<Self, BoxError> {
        let histogram = spool
            .metrics
            .attempt_seconds
            .with_label_values(&[ROUTE, TARGET]);
        // Backends report their counts at most once a second: close enough
        // over a window of several seconds, and marked as approximate.
        let row = admin
            .query_one(
                "SELECT xact_commit, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8
                 FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await?;
        Ok(Counters {
            attempts: histogram.get_sample_count(),
            attempt_seconds: histogram.get_sample_sum(),
            commits: row.get(0),
            wal_bytes: row.get(1),
        })
    }

    async fn since(
        &self,
        spool: &Spool,
        admin: &tokio_postgres::Client,
        delivered: u64,
        mean_in_flight: f64,
    ) -> Result<Internals, BoxError> {
        let later = Counters::now(spool, admin).await?;
        let attempts = later.attempts.saturating_sub(self.attempts).max(1);
        let seconds = (later.attempt_seconds - self.attempt_seconds).max(0.0);
        Ok(Internals {
            mean_in_flight,
            mean_attempt: Duration::from_secs_f64(seconds / attempts as f64),
            commits_per_delivery: (later.commits - self.commits) as f64 / delivered.max(1) as f64,
            wal_bytes_per_delivery: (later.wal_bytes - self.wal_bytes) / delivered.max(1) as f64,
        })
    }
}

/// One measured drain.
#[derive(Debug, Default, Clone)]
struct Drain {
    backlog: i64,
    /// Deliveries the sink saw during the measured time.
    delivered: u64,
    elapsed: Duration,
    /// A drain to the end: from the resume to the last delivery.
    full_drain: Option<Duration>,
    /// Deliveries while CPU time and spool's counters were sampled.
    sampled: u64,
    /// Deliveries the sink saw from resume to pause, all told.
    delivered_total: u64,
    /// (spool_delivery, spool_message) rows left after pausing.
    left: (i64, i64),
    cpu: CpuSplit,
    internals: Internals,
}

impl Drain {
    fn per_second(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    /// The whole backlog over the time from the resume to its last delivery.
    fn full_drain_per_second(&self) -> Option<f64> {
        let time = self.full_drain?;
        Some(self.backlog as f64 / time.as_secs_f64())
    }

    /// CPU time per delivery, in microseconds, for a share of one core.
    fn micros_per_delivery(&self, share: f64) -> f64 {
        share / 100.0 * self.cpu.seconds / self.sampled.max(1) as f64 * 1e6
    }

    /// Delivered rows were deleted, with their messages, and no other.
    fn rows_check(&self) -> String {
        let expected = self.backlog - self.delivered_total as i64;
        let (deliveries, messages) = self.left;
        let ok = deliveries == expected && messages == expected;
        format!(
            "{deliveries} deliveries and {messages} messages left of {} (expected {expected}: {})",
            self.backlog,
            if ok { "ok" } else { "MISMATCH" }
        )
    }
}

/// Everything a window of spool's delivery needs at hand.
struct Bench<'a> {
    stamps: Stamps,
    spool: &'a Spool,
    target: TargetHandle,
    sink: &'a Sink,
    admin: &'a tokio_postgres::Client,
    postmaster: Option<u32>,
}

/// What was seen over one measured window.
struct Window {
    /// Deliveries the sink saw in it.
    delivered: u64,
    elapsed: Duration,
    full_drain: Option<Duration>,
    /// Deliveries while the CPU and counters were sampled.
    sampled: u64,
    cpu: CpuSplit,
    mean_in_flight: f64,
}

/// The measurements running over a window, started together.
struct Watch {
    sink_before: u64,
    cpu: CpuSampler,
    in_flight: InFlightSampler,
    counters: Counters,
}

impl Bench<'_> {
    async fn watch(&self) -> Result<Watch, BoxError> {
        Ok(Watch {
            counters: Counters::now(self.spool, self.admin).await?,
            sink_before: self.sink.requests(),
            cpu: CpuSampler::start(self.postmaster),
            in_flight: InFlightSampler::start(&self.target),
        })
    }

    /// Small round `round` of `args.small_rounds`: a whole drain.
    async fn small_round(&self, args: &Args, round: usize) -> Result<Drain, BoxError> {
        eprintln!(
            "spool: round {round} of {}, draining a backlog of {}",
            args.small_rounds, args.small_backlog
        );
        self.drain_all(args.small_backlog, 0).await
    }

    /// Loads `backlog` deliveries, resumes the target, and waits for the
    /// sink to see all of them. The rate counted is that of the middle 80%
    /// of the arrivals: the first ones include the first claim, and the
    /// last ones trickle in as the backlog runs dry, neither of which a
    /// window in the middle of a big backlog has. The time from the resume
    /// to the last arrival is kept too.
    async fn drain_all(&self, backlog: i64, keys: i64) -> Result<Drain, BoxError> {
        load_backlog(self.admin, backlog, self.stamps, keys).await?;
        let watch = self.watch().await?;
        self.sink.log_arrivals();
        let resumed = Instant::now();
        self.target.flow.set_paused(false);
        let deadline = resumed + Duration::from_secs(60);
        while self.sink.requests() - watch.sink_before < backlog as u64 {
            if Instant::now() > deadline {
                return Err(format!("{backlog} deliveries not all made within 60 s").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (cpu, sampled) = (watch.cpu.finish(), self.sink.requests() - watch.sink_before);
        let log = self.sink.take_log();
        let (first, last) = (log.len() / 10, log.len() * 9 / 10);
        let window = Window {
            delivered: (last - first) as u64,
            elapsed: log[last] - log[first],
            full_drain: log.last().map(|&at| at - resumed),
            sampled,
            cpu,
            mean_in_flight: watch.in_flight.mean().await,
        };
        let resumed_at = watch.sink_before;
        self.finish(backlog, resumed_at, window, watch.counters)
            .await
    }

    /// Loads `backlog` deliveries, resumes the target, and counts what the
    /// sink sees in `window` after `warmup`.
    async fn drain_window(
        &self,
        backlog: i64,
        warmup: Duration,
        window: Duration,
    ) -> Result<Drain, BoxError> {
        load_backlog(self.admin, backlog, self.stamps, 0).await?;
        let resumed_at = self.sink.requests();
        self.target.flow.set_paused(false);
        tokio::time::sleep(warmup).await;
        let watch = self.watch().await?;
        let started = Instant::now();
        tokio::time::sleep(window).await;
        let delivered = self.sink.requests() - watch.sink_before;
        let window = Window {
            delivered,
            elapsed: started.elapsed(),
            full_drain: None,
            sampled: delivered,
            cpu: watch.cpu.finish(),
            mean_in_flight: watch.in_flight.mean().await,
        };
        self.finish(backlog, resumed_at, window, watch.counters)
            .await
    }

    /// Pauses the target, then counts what was delivered and what is left.
    async fn finish(
        &self,
        backlog: i64,
        resumed_at: u64,
        window: Window,
        counters: Counters,
    ) -> Result<Drain, BoxError> {
        let internals = counters
            .since(
                self.spool,
                self.admin,
                window.sampled,
                window.mean_in_flight,
            )
            .await?;
        pause(&self.target, self.admin).await?;
        Ok(Drain {
            backlog,
            delivered: window.delivered,
            elapsed: window.elapsed,
            full_drain: window.full_drain,
            sampled: window.sampled,
            delivered_total: self.sink.requests() - resumed_at,
            left: rows_left(self.admin).await?,
            cpu: window.cpu,
            internals,
        })
    }
}

// ---------------------------------------------------------------------------
// Latency on an idle system

/// One write's three instants.
struct Timed {
    sent: Instant,
    acked: Instant,
    message_id: String,
}

#[derive(Debug, Default)]
struct Latency {
    writes: usize,
    /// Sink arrival minus 202 read, clamped at zero; sorted.
    after_ack: Vec<Duration>,
    /// How many arrived at the sink before their 202 was read.
    before_ack: usize,
    /// Sink arrival minus request sent; sorted.
    after_send: Vec<Duration>,
    /// Writes not answered 202, or never seen by the sink.
    failed: usize,
}

async fn measure_latency(args: &Args, spool: &Spool, sink: &Sink) -> Result<Latency, BoxError> {
    let uri: Uri = format!("http://{}/{ROUTE}/orders", spool.data_addr).parse()?;
    let body = Bytes::from(json_body());
    let client = http_client();
    sink.record_arrivals(true);
    let mut timed = Vec::with_capacity(args.latency_writes);
    let mut failed = 0;
    for _ in 0..args.latency_writes {
        match post_write(&client, &uri, &body).await {
            Ok(write) => timed.push(write),
            Err(e) => {
                failed += 1;
                eprintln!("bench_delivery: latency write: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(args.latency_gap_ms)).await;
    }
    // The last few may still be on their way.
    let deadline = Instant::now() + Duration::from_secs(5);
    while timed.iter().any(|t| sink.arrival(&t.message_id).is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latency = Latency {
        writes: args.latency_writes,
        failed,
        ..Latency::default()
    };
    for write in &timed {
        let Some(arrived) = sink.arrival(&write.message_id) else {
            latency.failed += 1;
            continue;
        };
        if arrived < write.acked {
            latency.before_ack += 1;
        }
        latency
            .after_ack
            .push(arrived.saturating_duration_since(write.acked));
        latency.after_send.push(arrived - write.sent);
    }
    sink.record_arrivals(false);
    latency.after_ack.sort_unstable();
    latency.after_send.sort_unstable();
    Ok(latency)
}

/// One write through spool's data port; its id from `spool-message-id`.
async fn post_write(client: &HttpClient, uri: &Uri, body: &Bytes) -> Result<Timed, BoxError> {
    let request = Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))?;
    let sent = Instant::now();
    let response = client.request(request).await?;
    let status = response.status();
    let message_id = response
        .headers()
        .get("spool-message-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    response.into_body().collect().await?;
    let acked = Instant::now();
    match (status, message_id) {
        (StatusCode::ACCEPTED, Some(message_id)) => Ok(Timed {
            sent,
            acked,
            message_id,
        }),
        (status, _) => Err(format!("answered {status} without a message id").into()),
    }
}

// ---------------------------------------------------------------------------
// The run

struct Report {
    server: String,
    settings: String,
    wrk: WrkRun,
    small: Vec<Drain>,
    /// The small backlog over `--keys` ordering keys.
    keyed: Drain,
    /// `--one-key-backlog` deliveries of one key.
    one_key: Drain,
    large: Drain,
    latency: Latency,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    finish("bench_delivery", run(&args).await, |report| {
        print_report(&args, report)
    })
}

async fn run(args: &Args) -> Result<Report, BoxError> {
    if args.secs == 0 || args.concurrency == 0 || args.small_backlog <= 0 || args.small_rounds == 0
    {
        return Err(
            "--secs, --concurrency, --small-backlog and --small-rounds must be at least 1".into(),
        );
    }
    if args.small_backlog < 100 {
        // Its rate is taken over the middle 80% of its arrivals.
        return Err("--small-backlog must be at least 100".into());
    }
    if args.large_backlog < args.small_backlog {
        return Err("--large-backlog must be at least --small-backlog".into());
    }
    if wrk::version(&args.wrk).await == "wrk" {
        return Err(format!(
            "{} not found: apt-get install wrk (or name it with --wrk / WRK)",
            args.wrk.display()
        )
        .into());
    }
    let sink = Sink::start(cores())?;
    with_durable_postgres("bench_delivery", async |pg, url| {
        measure(args, &sink, pg, url).await
    })
    .await
}

async fn measure(
    args: &Args,
    sink: &Sink,
    pg: &EmbeddedPostgres,
    url: &str,
) -> Result<Report, BoxError> {
    let admin = connect(url).await?;
    let server = describe_server(&admin).await?;

    let script = pg.dir().join("post.lua");
    std::fs::write(&script, wrk_script(&json_body()))?;
    eprintln!(
        "wrk: {} connections straight to the sink, {} s warm-up + {} s",
        args.concurrency, args.warmup, args.secs
    );
    let wrk = run_wrk(args, sink, &script, pg.postmaster_pid()).await?;

    let config = spool_config(url, sink.addr, args)?;
    let settings = format!(
        "claim_batch {}, rate.concurrency {}, rate.per_second 1000000, record_batch_max {}, pool {}; \
         backlog due times: {}",
        config.dispatch.claim_batch,
        args.concurrency,
        config.dispatch.record_batch_max,
        config.database.pool_size,
        match args.stamps {
            Stamps::Ingest =>
                format!("{INGEST_BATCH} rows to a millisecond, as ingest leaves them"),
            Stamps::One => "all at one instant".to_owned(),
        }
    );
    let spool = Spool::start(config).await?;
    let phases = spool_phases(args, &spool, sink, &admin, pg.postmaster_pid()).await;
    spool.shutdown().await;
    let (small, (keyed, one_key), large, latency) = phases?;
    Ok(Report {
        server,
        settings,
        wrk,
        small,
        keyed,
        one_key,
        large,
        latency,
    })
}

async fn spool_phases(
    args: &Args,
    spool: &Spool,
    sink: &Sink,
    admin: &tokio_postgres::Client,
    postmaster: Option<u32>,
) -> Result<(Vec<Drain>, (Drain, Drain), Drain, Latency), BoxError> {
    let target = spool
        .target(ROUTE, TARGET)
        .ok_or("spool has no dispatcher for the bench route")?;
    let bench = Bench {
        stamps: args.stamps,
        spool,
        target,
        sink,
        admin,
        postmaster,
    };
    pause(&bench.target, admin).await?;

    // Half the small rounds before the large window and half after, so
    // that the machine drifting (it does, by 20-30%) weighs on both sides
    // of the comparison alike.
    let mut small = Vec::with_capacity(args.small_rounds);
    let before = args.small_rounds.div_ceil(2);
    for round in 1..=before {
        small.push(bench.small_round(args, round).await?);
    }
    // Keyed drains between unkeyed rounds, so that the ratios compare
    // like with like.
    eprintln!(
        "spool: draining {} deliveries over {} ordering keys",
        args.small_backlog, args.keys
    );
    let keyed = bench.drain_all(args.small_backlog, args.keys).await?;
    eprintln!(
        "spool: draining {} deliveries of one ordering key",
        args.one_key_backlog
    );
    let one_key = bench.drain_all(args.one_key_backlog, 1).await?;
    eprintln!(
        "spool: loading a backlog of {}, then {} s warm-up + {} s",
        args.large_backlog, args.warmup, args.secs
    );
    let large = bench
        .drain_window(args.large_backlog, secs(args.warmup), secs(args.secs))
        .await?;
    for round in before + 1..=args.small_rounds {
        small.push(bench.small_round(args, round).await?);
    }

    eprintln!(
        "spool idle: {} writes one at a time, {} ms apart",
        args.latency_writes, args.latency_gap_ms
    );
    admin
        .batch_execute("TRUNCATE spool_message, spool_delivery; CHECKPOINT")
        .await?;
    bench.target.flow.set_paused(false);
    let latency = measure_latency(args, spool, sink).await?;
    Ok((small, (keyed, one_key), large, latency))
}

// ---------------------------------------------------------------------------
// The report

fn print_report(args: &Args, r: &Report) {
    let small = aggregate(&r.small);
    let large_rate = r.large.per_second();
    let ratio_wrk = large_rate / r.wrk.per_second;
    let ratio_backlog = large_rate / small.per_second();
    let p50 = percentile(&r.latency.after_ack, 0.50);
    println!();
    println!(
        "spool delivery benchmark ({BODY_BYTES}-byte JSON POST, {} in flight, a sink on 127.0.0.1 answering 200 at once)",
        args.concurrency
    );
    println!("{}", r.server);
    println!("spool: {}", r.settings);
    println!(
        "{}: {} threads, {} connections; {} s per window after {} s warm-up; {} cores",
        r.wrk.version,
        r.wrk.threads,
        args.concurrency,
        args.secs,
        args.warmup,
        cores()
    );
    if let Some(warning) = interference(r, &small) {
        println!("{warning}");
    }
    println!();
    println!(
        "wrk direct POST to the sink            : {:.0}/s   (sink counted {:.0}/s; errors: {})",
        r.wrk.per_second, r.wrk.sink_per_second, r.wrk.errors
    );
    println!(
        "spool deliveries/s ({} backlog)   : {large_rate:.0}/s   ({} in {:.1} s)",
        thousands(r.large.backlog),
        r.large.delivered,
        r.large.elapsed.as_secs_f64()
    );
    println!(
        "ratio spool / wrk                      : {ratio_wrk:.2}   (target >= 0.5: {})",
        verdict(ratio_wrk >= 0.5)
    );
    println!(
        "spool drain of a {} backlog        : {:.0}/s   (middle 80% of arrivals; {} rounds, {:.0}..{:.0}/s; \
         {:.0}/s from resume to last delivery)",
        thousands(args.small_backlog),
        small.per_second(),
        r.small.len(),
        min_rate(&r.small),
        max_rate(&r.small),
        small.full_drain_per_second().unwrap_or(0.0)
    );
    let slower = if ratio_backlog < 1.0 {
        r.large.backlog
    } else {
        args.small_backlog
    };
    println!(
        "ratio {} / {} backlog         : {ratio_backlog:.2}   (target within 10%: {}; the {} one is the slower)",
        thousands(r.large.backlog),
        thousands(args.small_backlog),
        verdict((ratio_backlog - 1.0).abs() <= 0.10),
        thousands(slower)
    );
    let keyed_ratio = r.keyed.per_second() / small.per_second();
    println!(
        "spool drain over {} keys ({})       : {:.0}/s   ({keyed_ratio:.2} of unkeyed; target >= 0.8: {})",
        args.keys,
        thousands(args.small_backlog),
        r.keyed.per_second(),
        verdict(keyed_ratio >= 0.8)
    );
    let one_ratio = r.one_key.per_second() / small.per_second();
    println!(
        "spool drain of one key ({})         : {:.0}/s   ({one_ratio:.2} of unkeyed; target >= 0.1: {})",
        thousands(args.one_key_backlog),
        r.one_key.per_second(),
        verdict(one_ratio >= 0.1)
    );
    print_latency(args, &r.latency, p50);
    println!();
    println!(
        "rows after pausing: {} backlog: {}",
        thousands(args.small_backlog),
        r.small.last().map_or(String::new(), Drain::rows_check)
    );
    println!(
        "                    {} backlog: {}",
        thousands(r.large.backlog),
        r.large.rows_check()
    );
    print_cpu(args, r, &small);
}

fn print_latency(args: &Args, latency: &Latency, p50: Duration) {
    println!(
        "ack-to-delivery, idle ({} writes)     : p50 {}  p99 {}   (target p50 < 5 ms: {}); \
         {} delivered before their 202 was read (counted as 0)",
        latency.writes,
        ms(p50),
        ms(percentile(&latency.after_ack, 0.99)),
        verdict(p50 < Duration::from_millis(5) && latency.failed == 0),
        latency.before_ack
    );
    println!(
        "request-to-delivery, idle              : p50 {}  p99 {}   ({} ms between writes; failed: {})",
        ms(percentile(&latency.after_send, 0.50)),
        ms(percentile(&latency.after_send, 0.99)),
        args.latency_gap_ms,
        latency.failed
    );
}

fn print_cpu(args: &Args, r: &Report, small: &Drain) {
    println!();
    println!(
        "CPU per window, % of one core ({}% = all cores):",
        100 * cores()
    );
    println!("  window            spool   sink  driver  pg-sessions  pg-background  other   idle");
    cpu_row("wrk", &r.wrk.cpu);
    cpu_row(
        &format!("{} backlog", thousands(args.small_backlog)),
        &small.cpu,
    );
    cpu_row(
        &format!("{} backlog", thousands(r.large.backlog)),
        &r.large.cpu,
    );
    println!(
        "  (spool: the runtime's threads; driver: this benchmark's main thread; \
         other: wrk, the kernel's own threads, or anything else running)"
    );
    println!();
    println!(
        "spool side:  window            in flight  attempt  PG commits/delivery  WAL bytes/delivery  CPU µs/delivery: spool  Postgres  sink"
    );
    internals_row(&format!("{} backlog", thousands(args.small_backlog)), small);
    internals_row(&format!("{} keys", args.keys), &r.keyed);
    internals_row("1 key", &r.one_key);
    internals_row(&format!("{} backlog", thousands(r.large.backlog)), &r.large);
    println!(
        "             (in flight: mean attempts under way, of {}, sampled every ms; attempt: mean \
         HTTP exchange; commits: Postgres's xact_commit, reported by backends at most once a second)",
        args.concurrency
    );
    println!(
        "wrk window: sink {:.1} µs/request",
        r.wrk.cpu.sink / 100.0 / r.wrk.sink_per_second * 1e6
    );
    // What the CPU bounds it at: if spool, Postgres and the sink had every
    // core to themselves at their measured cost per delivery.
    let large = &r.large;
    let cpu = &large.cpu;
    let per_delivery = large.micros_per_delivery(cpu.spool)
        + large.micros_per_delivery(cpu.pg_backends + cpu.pg_background)
        + large.micros_per_delivery(cpu.sink);
    let ceiling = cores() as f64 * 1e6 / per_delivery.max(f64::MIN_POSITIVE);
    println!(
        "CPU ceiling ({} backlog): {} cores / {:.0} µs per delivery = {:.0}/s, {:.2} of wrk's rate",
        thousands(large.backlog),
        cores(),
        per_delivery,
        ceiling,
        ceiling / r.wrk.per_second.max(f64::MIN_POSITIVE)
    );
}

/// Nothing but spool, its sink and Postgres should run in a spool window:
/// CPU time spent by anything else means the figures are not to be trusted.
const OTHER_CPU_LIMIT: f64 = 20.0;

fn interference(r: &Report, small: &Drain) -> Option<String> {
    let other = small.cpu.other.max(r.large.cpu.other);
    (other > OTHER_CPU_LIMIT).then(|| {
        format!(
            "WARNING: other programs used up to {other:.0}% of a core during spool's windows \
             (see the CPU table): rerun on a quiet machine"
        )
    })
}

fn cpu_row(name: &str, cpu: &CpuSplit) {
    println!(
        "  {name:<16} {:>6.0} {:>6.0} {:>7.0} {:>12.0} {:>14.0} {:>6.0} {:>6.0}",
        cpu.spool, cpu.sink, cpu.driver, cpu.pg_backends, cpu.pg_background, cpu.other, cpu.idle
    );
}

fn internals_row(name: &str, drain: &Drain) {
    let i = &drain.internals;
    let cpu = &drain.cpu;
    println!(
        "             {name:<16} {:>9.1}  {:>7}  {:>19.3}  {:>18.0}  {:>22.0}  {:>8.0}  {:>4.0}",
        i.mean_in_flight,
        ms(i.mean_attempt),
        i.commits_per_delivery,
        i.wal_bytes_per_delivery,
        drain.micros_per_delivery(cpu.spool),
        drain.micros_per_delivery(cpu.pg_backends + cpu.pg_background),
        drain.micros_per_delivery(cpu.sink),
    );
}

/// The small-backlog rounds as one: deliveries over the summed times, and
/// the per-window figures averaged with the weight of each sampled window.
fn aggregate(rounds: &[Drain]) -> Drain {
    let seconds: f64 = rounds.iter().map(|d| d.cpu.seconds).sum();
    let mean = |f: &dyn Fn(&Drain) -> f64| {
        let weighted: f64 = rounds.iter().map(|d| f(d) * d.cpu.seconds).sum();
        weighted / seconds.max(f64::MIN_POSITIVE)
    };
    Drain {
        backlog: rounds.iter().map(|d| d.backlog).sum(),
        delivered: rounds.iter().map(|d| d.delivered).sum(),
        elapsed: rounds.iter().map(|d| d.elapsed).sum(),
        full_drain: rounds.iter().map(|d| d.full_drain).sum(),
        sampled: rounds.iter().map(|d| d.sampled).sum(),
        cpu: CpuSplit {
            spool: mean(&|d| d.cpu.spool),
            sink: mean(&|d| d.cpu.sink),
            driver: mean(&|d| d.cpu.driver),
            pg_backends: mean(&|d| d.cpu.pg_backends),
            pg_background: mean(&|d| d.cpu.pg_background),
            other: mean(&|d| d.cpu.other),
            idle: mean(&|d| d.cpu.idle),
            seconds,
        },
        internals: Internals {
            mean_in_flight: mean(&|d| d.internals.mean_in_flight),
            mean_attempt: Duration::from_secs_f64(mean(&|d| {
                d.internals.mean_attempt.as_secs_f64()
            })),
            commits_per_delivery: mean(&|d| d.internals.commits_per_delivery),
            wal_bytes_per_delivery: mean(&|d| d.internals.wal_bytes_per_delivery),
        },
        ..Drain::default()
    }
}

fn min_rate(rounds: &[Drain]) -> f64 {
    rounds
        .iter()
        .map(Drain::per_second)
        .fold(f64::INFINITY, f64::min)
}

fn max_rate(rounds: &[Drain]) -> f64 {
    rounds.iter().map(Drain::per_second).fold(0.0, f64::max)
}

/// 1000000 as `1,000,000`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(999), "999");
    }
}
