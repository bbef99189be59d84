//! Ingest benchmark: how fast spool acknowledges writes, next to what the
//! same Postgres does for plain single-row INSERTs.
//!
//! One run, one machine, one throwaway but *durable* Postgres (fsync on, as
//! in production), used by one phase at a time:
//!
//! 1. **pgbench**: 64 clients, each transaction one `INSERT` of the same
//!    512-byte JSON body into `bench_pgbench`, a table shaped like spool's
//!    `spool_message` (uuid key, identity sequence, jsonb headers, bytea
//!    body). Its `tps` is the baseline.
//! 2. **spool, peak**: spool runs in this process with its default ingest
//!    settings; 64 keep-alive HTTP/1.1 connections each send
//!    `POST /bench/orders` with that body as fast as answers come back
//!    (closed loop). Only 202 answers count as acknowledged writes; anything
//!    else is reported as an error. Each acknowledged write is a committed
//!    `spool_message` row *and* a `spool_delivery` row, so spool does more
//!    work per write than pgbench does per transaction.
//! 3. **spool, half peak**: the same connections send at a fixed rate, half
//!    of the peak measured in phase 2 (open loop). A request's latency runs
//!    from the time it was *scheduled* to be sent, so that a slow answer
//!    cannot hide the requests it delayed (coordinated omission); that
//!    includes the timer's slack, up to about 1 ms, so it errs high.
//!
//! Before each phase the tables are truncated and a CHECKPOINT is taken, so
//! every phase starts from the same state; each phase runs a warm-up that is
//! not counted. Targets from the issue: spool at 2x pgbench's TPS or better,
//! and p99 under 10 ms at half of spool's peak rate.
//!
//! Run with `scripts/bench-ingest` (or `cargo run --release --example
//! bench_ingest -- --help`). Needs the Postgres server binaries (initdb,
//! pg_ctl, postgres) and pgbench; as root, Postgres runs as `postgres`.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri, header};
use spool::Spool;
use tokio::task::JoinSet;
use tokio::time::Instant;

use common::{
    BODY_BYTES, BoxError, HttpClient, connect, describe_server, finish, http_client, json_body, ms,
    parse_field, percentile, secs, spool_toml, verdict, with_durable_postgres,
};

/// A request still unanswered after this counts as an error rather than
/// stalling the run. spool itself answers 503 after its 2 s commit timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The table pgbench inserts into: the columns spool fills in `spool_message`
/// for a write, with the same types, keys and defaults.
const CREATE_PGBENCH_TABLE: &str = "
CREATE TABLE bench_pgbench (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    format_version smallint NOT NULL,
    route          text NOT NULL,
    method         text NOT NULL,
    path           text NOT NULL,
    headers        jsonb NOT NULL DEFAULT '[]',
    body           bytea NOT NULL,
    extra          jsonb NOT NULL DEFAULT '{}',
    accepted_at    timestamptz NOT NULL DEFAULT now()
)";

/// The tables spool writes on ingest (TRUNCATE needs both: a foreign key).
const SPOOL_TABLES: &str = "spool_message, spool_delivery";

#[derive(Debug, Parser)]
#[command(
    about = "Acknowledged writes/s and latency of spool next to pgbench single-row INSERT TPS"
)]
struct Args {
    /// Measured seconds of each phase (pgbench, spool peak, spool half peak).
    #[arg(long, env = "BENCH_SECS", default_value_t = 10)]
    secs: u64,
    /// Uncounted warm-up seconds before each phase.
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 2)]
    warmup: u64,
    /// HTTP connections to spool, and pgbench clients.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 64)]
    connections: usize,
    /// The pgbench program; `pgbench` on PATH, or the newest
    /// /usr/lib/postgresql/*/bin/pgbench, when unset.
    #[arg(long, env = "PGBENCH")]
    pgbench: Option<PathBuf>,
    /// spool's ingest.committers (group-commit tasks, one connection each);
    /// spool's default when unset. The pool grows to fit.
    #[arg(long, env = "BENCH_COMMITTERS")]
    committers: Option<usize>,
    /// Also print acknowledged writes and p50/p99/max latency for each
    /// second of both spool phases: tells a steady tail from a few stalls.
    #[arg(long)]
    timeline: bool,
}

/// What one spool load phase saw.
#[derive(Debug, Default)]
struct Phase {
    /// Requests answered 202 within the measured window.
    acked: u64,
    /// Everything else within the window, by kind: `503`, `timeout`, ...
    errors: BTreeMap<String, u64>,
    /// (second of the window, latency) of every write acknowledged there.
    samples: Vec<(u64, Duration)>,
    /// The same latencies, sorted, once the phase is over.
    latencies: Vec<Duration>,
    window: Duration,
    /// Mean writes per group commit during the phase (warm-up included).
    mean_batch: f64,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.acked as f64 / self.window.as_secs_f64()
    }

    fn percentile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }

    /// `second` is the second of the measured window the request counts in.
    fn record(&mut self, outcome: Result<StatusCode, String>, latency: Duration, second: u64) {
        match outcome {
            Ok(StatusCode::ACCEPTED) => {
                self.acked += 1;
                self.samples.push((second, latency));
            }
            Ok(status) => *self.errors.entry(status.as_u16().to_string()).or_default() += 1,
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Phase) {
        self.acked += other.acked;
        self.samples.extend(other.samples);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }
}

/// Everything printed at the end.
struct Report {
    server: String,
    pgbench_version: String,
    pgbench_tps: f64,
    pgbench_failed: String,
    spool_settings: String,
    peak: Phase,
    half_rate: f64,
    half: Phase,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    finish("bench_ingest", run(&args).await, |report| {
        print_report(&args, report)
    })
}

/// Starts the throwaway Postgres, runs every phase, and stops Postgres.
async fn run(args: &Args) -> Result<Report, BoxError> {
    if args.secs == 0 || args.connections == 0 || args.committers == Some(0) {
        return Err("--secs, --connections and --committers must be at least 1".into());
    }
    let pgbench = find_pgbench(args.pgbench.as_deref()).await?;
    with_durable_postgres("bench_ingest", async |pg, url| {
        measure(args, &pgbench, pg.dir(), url).await
    })
    .await
}

/// The three phases, one after another, on the cluster at `url`.
async fn measure(args: &Args, pgbench: &Path, dir: &Path, url: &str) -> Result<Report, BoxError> {
    let admin = connect(url).await?;
    let server = describe_server(&admin).await?;
    let body = json_body();

    admin.batch_execute(CREATE_PGBENCH_TABLE).await?;
    let script = dir.join("insert.sql");
    std::fs::write(&script, pgbench_script(&body))?;
    reset(&admin, "bench_pgbench").await?;
    eprintln!(
        "pgbench: {} clients, {} s warm-up + {} s",
        args.connections, args.warmup, args.secs
    );
    let pgbench_cmd = PgbenchRun {
        program: pgbench,
        script: &script,
        socket_dir: dir,
        clients: args.connections,
    };
    if args.warmup > 0 {
        pgbench_cmd.run(args.warmup).await?;
    }
    let measured = pgbench_cmd.run(args.secs).await?;
    let pgbench_tps = parse_field(&measured, "tps = ")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no `tps = ` in pgbench's output:\n{measured}"))?;
    let pgbench_failed = parse_field(&measured, "number of failed transactions: ")
        .unwrap_or("0")
        .to_owned();
    let pgbench_version = pgbench_cmd.version().await?;
    admin.batch_execute("TRUNCATE bench_pgbench").await?;

    let config = spool_config(url, args.committers)?;
    let spool_settings = format!(
        "{} committers{}, batch_max {}, pool {}",
        config.ingest.committers,
        if args.committers.is_some() {
            ""
        } else {
            " (default)"
        },
        config.ingest.batch_max,
        config.database.pool_size
    );
    let spool = Spool::start(config).await?;
    let phases = spool_phases(args, &spool, &admin, Bytes::from(body)).await;
    spool.shutdown().await;
    let (peak, half_rate, half) = phases?;
    Ok(Report {
        server,
        pgbench_version,
        pgbench_tps,
        pgbench_failed,
        spool_settings,
        peak,
        half_rate,
        half,
    })
}

/// Peak (closed loop), then half of the peak (open loop), each from empty tables.
async fn spool_phases(
    args: &Args,
    spool: &Spool,
    admin: &tokio_postgres::Client,
    body: Bytes,
) -> Result<(Phase, f64, Phase), BoxError> {
    let uri: Uri = format!("http://{}/bench/orders", spool.data_addr).parse()?;
    let load = Load {
        uri,
        body,
        connections: args.connections,
        warmup: secs(args.warmup),
        window: secs(args.secs),
    };

    reset(admin, SPOOL_TABLES).await?;
    eprintln!(
        "spool peak: {} connections, closed loop, {} s warm-up + {} s",
        args.connections, args.warmup, args.secs
    );
    let batches = BatchSizes::now(spool);
    let mut peak = load.closed_loop().await;
    peak.mean_batch = batches.mean_since(spool);
    if peak.acked == 0 {
        return Err(format!(
            "spool acknowledged no write at peak; errors: {:?}",
            peak.errors
        )
        .into());
    }

    reset(admin, SPOOL_TABLES).await?;
    let half_rate = peak.per_second() / 2.0;
    eprintln!(
        "spool at {half_rate:.0}/s: open loop, {} s warm-up + {} s",
        args.warmup, args.secs
    );
    let batches = BatchSizes::now(spool);
    let mut half = load.open_loop(half_rate).await;
    half.mean_batch = batches.mean_since(spool);
    Ok((peak, half_rate, half))
}

/// Empties `tables` and checkpoints, so that each phase starts from empty
/// tables and pays the same full-page writes after a checkpoint.
async fn reset(admin: &tokio_postgres::Client, tables: &str) -> Result<(), BoxError> {
    admin
        .batch_execute(&format!("TRUNCATE {tables}; CHECKPOINT"))
        .await?;
    Ok(())
}

/// One INSERT per transaction, filling what spool fills for a write: route,
/// method, path, the headers it keeps, and the body.
fn pgbench_script(body: &str) -> String {
    format!(
        "INSERT INTO bench_pgbench (format_version, route, method, path, headers, body) \
         VALUES (1, 'bench', 'POST', '/orders', '[[\"content-type\", \"application/json\"]]', \
         convert_to('{body}', 'UTF8'));\n"
    )
}

/// `explicit`, else `pgbench` on PATH, else the newest one Debian installs
/// beside the server. Checked before anything starts.
async fn find_pgbench(explicit: Option<&Path>) -> Result<PathBuf, BoxError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    match explicit {
        Some(path) => candidates.push(path.to_owned()),
        None => {
            candidates.push("pgbench".into());
            let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path().join("bin/pgbench"))
                .filter(|p| p.exists())
                .collect();
            versioned.sort_by_key(|p| std::cmp::Reverse(major_version(p)));
            candidates.extend(versioned);
        }
    }
    for candidate in candidates {
        let ok = tokio::process::Command::new(&candidate)
            .arg("--version")
            .output()
            .await
            .is_ok_and(|out| out.status.success());
        if ok {
            return Ok(candidate);
        }
    }
    Err("pgbench not found: on Debian it comes with the server package (apt-get install postgresql), \
         or name it with --pgbench / PGBENCH"
        .into())
}

/// 15 for /usr/lib/postgresql/15/bin/pgbench.
fn major_version(path: &Path) -> u32 {
    path.iter()
        .filter_map(|part| part.to_str()?.parse().ok())
        .next()
        .unwrap_or(0)
}

/// pgbench against the cluster's Unix socket.
struct PgbenchRun<'a> {
    program: &'a Path,
    script: &'a Path,
    socket_dir: &'a Path,
    clients: usize,
}

impl PgbenchRun<'_> {
    /// One timed run; returns its standard output. Prepared statements, as
    /// spool uses: pgbench's best case, so the baseline is not understated.
    async fn run(&self, seconds: u64) -> Result<String, BoxError> {
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(self.clients);
        let output = tokio::process::Command::new(self.program)
            .args([
                "-n",
                "-M",
                "prepared",
                "-c",
                &self.clients.to_string(),
                "-j",
                &threads.to_string(),
            ])
            .args(["-T", &seconds.to_string(), "-f"])
            .arg(self.script)
            .arg("-h")
            .arg(self.socket_dir)
            .args(["-p", "5432", "-U", "postgres", "postgres"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!("pgbench exited with {}:\n{stdout}{stderr}", output.status).into());
        }
        Ok(stdout)
    }

    async fn version(&self) -> Result<String, BoxError> {
        let output = tokio::process::Command::new(self.program)
            .arg("--version")
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// A config for an in-process spool on the benchmark's cluster: any free
/// ports, one route whose single target is never contacted, every ingest
/// setting at its default but `committers` when given. The target's rate is
/// 0 (stopped) so that forwarding, once spool has it, does not take a share
/// of the machine: this measures acknowledgement alone.
fn spool_config(url: &str, committers: Option<usize>) -> Result<spool::config::Config, BoxError> {
    let text = spool_toml(
        url,
        r#"
[[routes]]
name = "bench"

  [[routes.targets]]
  name = "sink"
  url = "http://127.0.0.1:9"

  [routes.rate]
  per_second = 0
"#,
    );
    let mut config = spool::config::from_toml(&text)?;
    if let Some(n) = committers {
        config.ingest.committers = n;
        // spool keeps two connections beyond the committers' (validated at load).
        config.database.pool_size = config.database.pool_size.max(n + 2);
    }
    Ok(config)
}

/// Group-commit batch sizes from spool's metrics, to tell how many writes
/// shared each commit during a phase.
struct BatchSizes {
    sum: f64,
    count: u64,
}

impl BatchSizes {
    fn now(spool: &Spool) -> Self {
        let histogram = &spool.metrics.commit_batch_size;
        BatchSizes {
            sum: histogram.get_sample_sum(),
            count: histogram.get_sample_count(),
        }
    }

    fn mean_since(&self, spool: &Spool) -> f64 {
        let later = BatchSizes::now(spool);
        let commits = later.count.saturating_sub(self.count);
        if commits == 0 {
            0.0
        } else {
            (later.sum - self.sum) / commits as f64
        }
    }
}

/// The HTTP load: `connections` tasks, each with a client of its own and so
/// one keep-alive connection of its own (it never has two requests out).
#[derive(Clone)]
struct Load {
    uri: Uri,
    body: Bytes,
    connections: usize,
    warmup: Duration,
    window: Duration,
}

impl Load {
    /// Each connection sends its next request as soon as the previous one is
    /// answered. Counted: requests answered inside the measured window.
    async fn closed_loop(&self) -> Phase {
        let start = Instant::now();
        let (from, until) = (start + self.warmup, start + self.warmup + self.window);
        let mut tasks = JoinSet::new();
        for _ in 0..self.connections {
            let load = self.clone();
            tasks.spawn(async move {
                let client = http_client();
                let mut phase = Phase::default();
                while Instant::now() < until {
                    let sent = Instant::now();
                    let outcome = load.post(&client).await;
                    let done = Instant::now();
                    if done >= from && done <= until {
                        phase.record(outcome, done - sent, (done - from).as_secs());
                    }
                }
                phase
            });
        }
        self.collect(tasks).await
    }

    /// Requests are scheduled every `1 / rate` seconds, dealt round-robin to
    /// the connections. A connection still busy at its next slot sends as
    /// soon as it is free, and that wait counts in the latency. Counted:
    /// requests scheduled inside the measured window.
    async fn open_loop(&self, rate: f64) -> Phase {
        let start = Instant::now();
        let (from, until) = (start + self.warmup, start + self.warmup + self.window);
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut tasks = JoinSet::new();
        for connection in 0..self.connections {
            let load = self.clone();
            tasks.spawn(async move {
                let client = http_client();
                let mut phase = Phase::default();
                for slot in (connection..).step_by(load.connections) {
                    let scheduled = start + interval.mul_f64(slot as f64);
                    if scheduled >= until {
                        break;
                    }
                    tokio::time::sleep_until(scheduled).await;
                    let outcome = load.post(&client).await;
                    if scheduled >= from {
                        let second = (scheduled - from).as_secs();
                        phase.record(outcome, scheduled.elapsed(), second);
                    }
                }
                phase
            });
        }
        self.collect(tasks).await
    }

    async fn collect(&self, mut tasks: JoinSet<Phase>) -> Phase {
        let mut total = Phase {
            window: self.window,
            ..Phase::default()
        };
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(phase) => total.merge(phase),
                Err(e) => {
                    *total
                        .errors
                        .entry(format!("load task failed: {e}"))
                        .or_default() += 1
                }
            }
        }
        total.latencies = total.samples.iter().map(|&(_, latency)| latency).collect();
        total.latencies.sort_unstable();
        total
    }

    /// One write; the status, or what kind of failure it was. The answer's
    /// body is read to the end so that the connection can be reused.
    async fn post(&self, client: &HttpClient) -> Result<StatusCode, String> {
        let request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("http: {e}"))?;
            let status = response.status();
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok(status)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err("timeout".to_owned()))
    }
}

fn errors(phase: &Phase) -> String {
    if phase.errors.is_empty() {
        return "none".to_owned();
    }
    let kinds: Vec<String> = phase
        .errors
        .iter()
        .map(|(kind, n)| format!("{n} x {kind}"))
        .collect();
    kinds.join(", ")
}

fn print_report(args: &Args, r: &Report) {
    let ratio = r.peak.per_second() / r.pgbench_tps;
    let half_p99 = r.half.percentile(0.99);
    println!();
    println!(
        "spool ingest benchmark ({BODY_BYTES}-byte JSON, {} connections, {} s per phase after {} s warm-up)",
        args.connections, args.secs, args.warmup
    );
    println!("{}", r.server);
    println!("{}; spool: {}", r.pgbench_version, r.spool_settings);
    println!();
    println!(
        "pgbench single-row INSERT tps          : {:.0}   (failed transactions: {})",
        r.pgbench_tps, r.pgbench_failed
    );
    println!(
        "spool acknowledged writes/s (peak)     : {:.0}   p50 {}  p99 {}",
        r.peak.per_second(),
        ms(r.peak.percentile(0.50)),
        ms(r.peak.percentile(0.99))
    );
    println!(
        "ratio spool / pgbench                  : {ratio:.2}   (target >= 2.0: {})",
        verdict(ratio >= 2.0)
    );
    println!(
        "spool at half peak ({:.0}/s offered)     : p50 {}  p99 {}   (target p99 < 10 ms: {}; achieved {:.0}/s)",
        r.half_rate,
        ms(r.half.percentile(0.50)),
        ms(half_p99),
        verdict(half_p99 < Duration::from_millis(10)),
        r.half.per_second()
    );
    println!(
        "mean group-commit batch (writes/commit): peak {:.1}, half peak {:.1}",
        r.peak.mean_batch, r.half.mean_batch
    );
    println!(
        "spool errors                           : peak {}; half peak {}",
        errors(&r.peak),
        errors(&r.half)
    );
    if args.timeline {
        print_timeline("peak", &r.peak);
        print_timeline("half peak", &r.half);
    }
}

/// Acknowledged writes and latency for each second of a phase's window.
fn print_timeline(name: &str, phase: &Phase) {
    let mut seconds: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    for &(second, latency) in &phase.samples {
        seconds.entry(second).or_default().push(latency);
    }
    println!();
    println!("{name}, per second:  second  acked  p50  p99  max");
    for (second, mut latencies) in seconds {
        latencies.sort_unstable();
        println!(
            "  {second:>3}  {:>6}  {}  {}  {}",
            latencies.len(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 1.0))
        );
    }
}
