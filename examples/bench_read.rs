//! Read benchmark: spool's read path next to nginx, against the same local
//! upstream, in one run.
//!
//! One machine, one **upstream**: an HTTP/1.1 server on 127.0.0.1, in this
//! process on its own runtime and threads (named `upstream`), answering every
//! GET with `200`, a JSON body of `--body-bytes` (1 KiB) and `Cache-Control:
//! max-age=1` (an answer both spool and nginx keep), or, once switched, with
//! `500`. In front of it, on 127.0.0.1 only:
//!
//! * **spool**, in this process (its runtime has as many worker threads as
//!   the machine has cores, as the `spool` binary's), with one route whose
//!   single target is the upstream, and a throwaway durable Postgres (spool
//!   needs one; reads touch it only to copy kept answers, at most one write
//!   per URL every 10 s);
//! * **nginx** from the distribution, as a foreground child (`daemon off`)
//!   whose config, pid file, logs, temp paths and cache all live in a temp
//!   directory; `worker_processes` is the number of cores (what `auto`
//!   gives, and the same as spool's worker threads), access log off. One
//!   server block is a plain `proxy_pass` to an `upstream` block with
//!   `keepalive 64` (`proxy_http_version 1.1`, `proxy_set_header Connection
//!   ""`), so that nginx, like spool's pooled client, keeps its upstream
//!   connections open; another adds `proxy_cache` with `proxy_cache_valid
//!   200 1s` and `proxy_cache_use_stale error timeout http_500`, exactly the
//!   issue's directive (and `proxy_cache_lock on`, which only matters for a
//!   first miss): without `updating`, every request for an expired
//!   entry asks the upstream, and only then falls back to the kept copy, as
//!   spool does (spool collapses concurrent requests for one URL into one
//!   upstream request; nginx with `updating` goes further and serves the
//!   stale copy at once while one request updates it: `--updating` measures
//!   that too, for information). `keepalive_requests` is raised so that
//!   nginx does not close connections every 1,000 requests.
//!
//! wrk (`-t2 -c64 --latency`) GETs one URL (or `--urls N`, round-robin),
//! a warm-up then a measured run per phase, one phase at a time:
//!
//! 1. **spool, fresh**: the upstream healthy; answers `Spool-Cache: fresh`.
//! 2. **nginx, proxy_pass**: the same, through nginx.
//! 3. the nginx cache is primed (a `HIT` seen for every URL), the upstream
//!    is switched to `500`, and a single request checks that each proxy
//!    really serves its kept copy: spool with `Spool-Cache: stale`, nginx
//!    with `X-Cache-Status: STALE` (`add_header X-Cache-Status
//!    $upstream_cache_status`);
//! 4. **spool, stale**: every answer is the kept copy, after the upstream's
//!    500;
//! 5. **nginx, proxy_cache_use_stale**: the same through nginx (and, with
//!    `--updating`, through the server block that adds `updating`).
//!
//! With one URL, spool's single flight answers most concurrent fresh reads
//! from the one upstream request in flight (`upstream req/s` shows how
//! many went out); `--uncollapsed` also measures spool with a `Cookie` on
//! every request, which it never collapses, so that every request is
//! proxied as nginx's proxy_pass does (for information, no target).
//!
//! The checks are repeated after the stale phases. Since the upstream only
//! answers 500 by then, every 2xx wrk counts in a stale phase is a kept copy;
//! non-2xx answers and socket errors are reported per phase. For each
//! measured window the upstream's own request and new-connection counts and
//! the CPU time of spool, the upstream, nginx, wrk and Postgres (from /proc)
//! are printed, to show where the machine's cores went. Targets from the
//! issue: spool's requests/s at 1.0x nginx's or better, fresh and stale.
//!
//! Run with `scripts/bench-read` (or `cargo run --release --example
//! bench_read -- --help`). Needs nginx and wrk (`apt-get install nginx
//! wrk`) and the Postgres server binaries; as root, Postgres runs as
//! `postgres` and nginx's workers as nginx's default user.

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode, Uri, header};
use spool::Spool;

use common::cpu::{self, cores};
use common::{
    BoxError, HttpClient, finish, http_client, ms, parse_field, serve_http1, spool_toml, verdict,
    with_durable_postgres, wrk,
};

/// spool's route for the upstream: reads are `GET /bench/...`.
const ROUTE: &str = "bench";
/// The path (below the route, for spool) that wrk requests.
const ITEM_PATH: &str = "/item";
/// How the upstream marks a cacheable answer: nginx caches it for 1 s,
/// spool keeps it (it keeps any 200 without no-store, private or cookies).
const CACHE_CONTROL: &str = "max-age=1";
/// Sent with `--uncollapsed`: spool never collapses requests that carry a
/// cookie (their answers may differ per user), so each one is proxied.
const COOKIE: &str = "Cookie: bench=1";
/// What the checks wait for at most: nginx's cached entry to expire after
/// the switch to 500 (max-age=1, with nginx's whole-second clock).
const STALE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    about = "spool's read requests/s and p99 beside nginx proxy_pass, and its stale-serving \
             beside nginx proxy_cache_use_stale, against one local upstream"
)]
struct Args {
    /// Measured seconds of each phase.
    #[arg(long, env = "BENCH_SECS", default_value_t = 10)]
    secs: u64,
    /// Uncounted warm-up seconds before each phase (a wrk run of its own).
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 2)]
    warmup: u64,
    /// wrk connections.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 64)]
    connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    wrk_threads: usize,
    /// Distinct URLs, requested round-robin by a wrk Lua script when more
    /// than one (with one, spool's single flight collapses most fresh reads).
    #[arg(long, default_value_t = 1)]
    urls: usize,
    /// Size of the upstream's 200 body, in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Worker threads of spool's runtime; the number of cores (as the spool
    /// binary has) when unset.
    #[arg(long)]
    spool_threads: Option<usize>,
    /// nginx `worker_processes`; the number of cores (what `auto` gives)
    /// when unset.
    #[arg(long)]
    nginx_workers: Option<usize>,
    /// Threads of the upstream's runtime; the number of cores when unset.
    #[arg(long)]
    upstream_threads: Option<usize>,
    /// Also measure nginx with `proxy_cache_use_stale ... updating` (for
    /// information: it serves the stale copy without waiting for the
    /// upstream while one request updates the entry).
    #[arg(long)]
    updating: bool,
    /// Also measure spool with a `Cookie` header on every request, which
    /// spool never collapses into another's upstream request: every request
    /// is proxied, as nginx's proxy_pass does (for information).
    #[arg(long)]
    uncollapsed: bool,
    /// The wrk program.
    #[arg(long, env = "WRK", default_value = "wrk")]
    wrk: PathBuf,
    /// The nginx program; `nginx` on PATH, else /usr/sbin/nginx, when unset.
    #[arg(long, env = "NGINX")]
    nginx: Option<PathBuf>,
}

impl Args {
    /// The paths wrk requests, below spool's route or at nginx's root.
    fn paths(&self) -> Vec<String> {
        if self.urls == 1 {
            vec![ITEM_PATH.to_owned()]
        } else {
            (0..self.urls).map(|i| format!("{ITEM_PATH}/{i}")).collect()
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args.spool_threads.unwrap_or_else(cores);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("spool")
        .enable_all()
        .build();
    let outcome = match runtime {
        Ok(runtime) => runtime.block_on(run(&args)),
        Err(e) => Err(format!("cannot start the async runtime: {e}").into()),
    };
    finish("bench_read", outcome, |report| print_report(&args, report))
}

// ---------------------------------------------------------------------------
// The upstream

struct UpstreamState {
    /// Answer 500 instead of 200.
    failing: AtomicBool,
    requests: AtomicU64,
    connections: AtomicU64,
    body: Bytes,
}

struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
}

impl Upstream {
    /// Serves on 127.0.0.1 (any free port) from a runtime of its own with
    /// `threads` threads named `upstream`, so that its CPU time can be told
    /// apart from spool's; the same upstream for spool and for nginx.
    fn start(threads: usize, body_bytes: usize) -> Result<Upstream, BoxError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("upstream")
            .enable_all()
            .build()?;
        let state = Arc::new(UpstreamState {
            failing: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            body: Bytes::from(item_body(body_bytes)),
        });
        let served = Arc::clone(&state);
        // Lives until the process exits.
        std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                if let Err(e) = runtime.block_on(serve_upstream(listener, served)) {
                    eprintln!("bench_read: upstream stopped: {e}");
                }
            })?;
        Ok(Upstream { addr, state })
    }

    fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// (requests, connections) so far.
    fn counts(&self) -> (u64, u64) {
        (
            self.state.requests.load(Ordering::Relaxed),
            self.state.connections.load(Ordering::Relaxed),
        )
    }
}

/// A JSON document of exactly `size` bytes (at least a few dozen).
fn item_body(size: usize) -> String {
    let head = r#"{"id":"item-1042","name":"bench item","padding":""#;
    let tail = r#""}"#;
    let padding = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(padding))
}

async fn serve_upstream(
    listener: std::net::TcpListener,
    state: Arc<UpstreamState>,
) -> std::io::Result<()> {
    let accepted = |state: &UpstreamState| {
        state.connections.fetch_add(1, Ordering::Relaxed);
    };
    serve_http1(listener, state, accepted, answer).await
}

/// 200 with the cacheable body, or 500 once switched.
async fn answer(
    state: Arc<UpstreamState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    request.into_body().collect().await?;
    state.requests.fetch_add(1, Ordering::Relaxed);
    let response = if state.failing.load(Ordering::Relaxed) {
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"error":"the benchmark's upstream is failing on purpose"}"#,
            )))?
    } else {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, CACHE_CONTROL)
            .body(Full::new(state.body.clone()))?
    };
    Ok(response)
}

// ---------------------------------------------------------------------------
// nginx

/// A running nginx, stopped (and its directory removed) when dropped.
struct Nginx {
    program: PathBuf,
    dir: tempfile::TempDir,
    child: std::process::Child,
    workers: usize,
    version: String,
    /// Plain proxy_pass.
    proxy: SocketAddr,
    /// proxy_cache_use_stale error timeout http_500.
    stale: SocketAddr,
    /// The same plus `updating`.
    updating: SocketAddr,
}

/// The nginx config: two (three) server blocks on 127.0.0.1, everything
/// nginx writes inside `dir`.
fn nginx_conf(dir: &Path, workers: usize, upstream: SocketAddr, ports: [SocketAddr; 3]) -> String {
    let dir = dir.display();
    let [proxy, stale, updating] = ports;
    let cached = |zone: &str, extra: &str| {
        format!(
            r#"        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache {zone};
            proxy_cache_valid 200 1s;
            proxy_cache_use_stale error timeout http_500{extra};
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}"#
        )
    };
    let stale_location = cached("stale", "");
    let updating_location = cached("updating", " updating");
    format!(
        r#"# Written by bench_read: a throwaway nginx on 127.0.0.1 only.
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    proxy_cache_path {dir}/cache_stale levels=1:2 keys_zone=stale:10m inactive=10m use_temp_path=off;
    proxy_cache_path {dir}/cache_updating levels=1:2 keys_zone=updating:10m inactive=10m use_temp_path=off;

    upstream origin {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}

    # (a) a plain reverse proxy, keeping its upstream connections open.
    server {{
        listen {proxy};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}

    # (b) the same, serving its cached copy when the upstream fails.
    server {{
        listen {stale};
{stale_location}
    }}

    # (c) as (b), and serving the cached copy while one request updates it.
    server {{
        listen {updating};
{updating_location}
    }}
}}
"#
    )
}

/// A port free on 127.0.0.1 right now (nginx binds it a moment later).
fn free_port() -> Result<SocketAddr, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// `explicit`, else `nginx` on PATH, else /usr/sbin/nginx (not on every
/// user's PATH); with its version line.
fn find_nginx(explicit: Option<&Path>) -> Result<(PathBuf, String), BoxError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path.to_owned()],
        None => vec!["nginx".into(), "/usr/sbin/nginx".into()],
    };
    for candidate in candidates {
        // `nginx version: nginx/1.22.1`, on standard error.
        if let Ok(out) = std::process::Command::new(&candidate).arg("-v").output()
            && out.status.success()
        {
            let text = String::from_utf8_lossy(&out.stderr);
            let version = text.trim().trim_start_matches("nginx version: ").to_owned();
            return Ok((candidate, version));
        }
    }
    Err("nginx not found: apt-get install nginx (or name it with --nginx / NGINX)".into())
}

impl Nginx {
    fn start(args: &Args, upstream: SocketAddr) -> Result<Nginx, BoxError> {
        let (program, version) = find_nginx(args.nginx.as_deref())?;
        let workers = args.nginx_workers.unwrap_or_else(cores);
        let dir = tempfile::Builder::new()
            .prefix("spool-bench-nginx-")
            .tempdir_in("/tmp")?;
        // As root, nginx's workers run as an unprivileged user: they must
        // be able to reach the cache and temp paths nginx creates in here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let ports = [free_port()?, free_port()?, free_port()?];
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir.path(), workers, upstream, ports))?;
        let output = std::fs::File::create(dir.path().join("output.log"))?;
        let child = std::process::Command::new(&program)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(std::process::Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()?;
        let mut nginx = Nginx {
            program,
            dir,
            child,
            workers,
            version,
            proxy: ports[0],
            stale: ports[1],
            updating: ports[2],
        };
        nginx.wait_listening(&ports)?;
        Ok(nginx)
    }

    fn wait_listening(&mut self, ports: &[SocketAddr]) -> Result<(), BoxError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("nginx exited with {status}:\n{}", self.logs()).into());
            }
            if ports.iter().all(|addr| TcpStream::connect(addr).is_ok()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("nginx is not listening after 10 s:\n{}", self.logs()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        ["output.log", "error.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default())
            .collect()
    }

    /// The master process: it and its children are nginx's CPU time.
    fn master_pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Fast shutdown through the pid file: the master stops its workers
        // (a SIGKILL to the master alone would leave them running).
        let dir = self.dir.path();
        let _ = std::process::Command::new(&self.program)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-s", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "bench_read: nginx (pid {}) did not stop; killing its master",
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// wrk

/// What one measured wrk run printed.
#[derive(Debug, Default)]
struct WrkRun {
    per_second: f64,
    requests: u64,
    p50: Duration,
    p99: Duration,
    non_2xx: u64,
    /// `connect 0, read 3, write 0, timeout 0`, when wrk saw any.
    socket_errors: Option<String>,
}

/// The Lua script for several URLs: the URL's path followed by `/0`,
/// `/1`, ..., round-robin in each wrk thread.
fn wrk_script(urls: usize) -> String {
    format!(
        r#"local n = 0
request = function()
    local path = wrk.path .. "/" .. (n % {urls})
    n = n + 1
    return wrk.format(nil, path)
end
"#
    )
}

struct Wrk<'a> {
    args: &'a Args,
    script: Option<PathBuf>,
}

impl Wrk<'_> {
    /// `header`: one more request header (`-H`).
    async fn run(&self, url: &str, seconds: u64, header: Option<&str>) -> Result<String, BoxError> {
        let mut command = wrk::command(
            &self.args.wrk,
            self.args.wrk_threads,
            self.args.connections,
            seconds,
        );
        command.arg("--latency");
        if let Some(script) = &self.script {
            command.arg("-s").arg(script);
        }
        if let Some(header) = header {
            command.arg("-H").arg(header);
        }
        command.arg(url);
        wrk::output(command).await
    }
}

fn parse_wrk(out: &str) -> Result<WrkRun, BoxError> {
    let missing = |what: &str| format!("no `{what}` in wrk's output:\n{out}");
    let per_second = wrk::requests_per_second(out)?;
    let p50 = parse_field(out, "50%")
        .and_then(parse_wrk_duration)
        .ok_or_else(|| missing("50%"))?;
    let p99 = parse_field(out, "99%")
        .and_then(parse_wrk_duration)
        .ok_or_else(|| missing("99% (--latency)"))?;
    // `  123456 requests in 10.00s, 150.00MB read`
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| missing("requests in"))?;
    let non_2xx = parse_field(out, "Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket_errors = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|s| s.trim().to_owned());
    Ok(WrkRun {
        per_second,
        requests,
        p50,
        p99,
        non_2xx,
        socket_errors,
    })
}

/// wrk's latencies: `607.00us`, `1.23ms`, `2.00s`, `1.00m`.
fn parse_wrk_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

// ---------------------------------------------------------------------------
// Where the CPU went

/// CPU time, in clock ticks, by who spent it.
#[derive(Debug, Default, Clone, Copy)]
struct CpuTicks {
    /// This process's `spool` runtime threads: spool, and the driver's
    /// single requests and waits.
    spool: u64,
    upstream: u64,
    /// nginx's master and workers.
    nginx: u64,
    /// Children this process has waited for: the measured wrk, once done.
    reaped: u64,
    /// The postmaster and its children.
    postgres: u64,
    /// The whole machine, busy and idle.
    busy: u64,
    idle: u64,
}

/// Share of one core, in percent, for each spender over a window.
#[derive(Debug, Default, Clone, Copy)]
struct CpuSplit {
    spool: f64,
    upstream: f64,
    nginx: f64,
    wrk: f64,
    postgres: f64,
    /// Everything else: the kernel's own threads, interrupts, other work.
    other: f64,
    idle: f64,
}

#[derive(Clone, Copy)]
struct Pids {
    postmaster: Option<u32>,
    nginx: u32,
}

/// Reads /proc at the start of a window and again at its end.
type CpuSampler = cpu::Sampler<CpuTicks>;

impl cpu::Ticks for CpuTicks {
    type Key = Pids;
    type Split = CpuSplit;

    fn read(pids: Pids) -> Self {
        cpu_ticks(pids)
    }

    fn split(s: &Self, end: &Self, window: f64) -> CpuSplit {
        let share = |end: u64, start: u64| cpu::share(end, start, window);
        let spool = share(end.spool, s.spool);
        let upstream = share(end.upstream, s.upstream);
        let nginx = share(end.nginx, s.nginx);
        let wrk = share(end.reaped, s.reaped);
        let postgres = share(end.postgres, s.postgres);
        let busy = share(end.busy, s.busy);
        CpuSplit {
            spool,
            upstream,
            nginx,
            wrk,
            postgres,
            other: (busy - spool - upstream - nginx - wrk - postgres).max(0.0),
            idle: share(end.idle, s.idle),
        }
    }
}

fn cpu_ticks(pids: Pids) -> CpuTicks {
    let mut ticks = CpuTicks::default();
    for (_, stat) in cpu::own_threads() {
        if stat.name.starts_with("upstream") {
            ticks.upstream += stat.used;
        } else {
            ticks.spool += stat.used;
        }
    }
    ticks.reaped = cpu::own_stat().map_or(0, |stat| stat.children);
    for (pid, stat) in cpu::processes() {
        if pid == pids.nginx || stat.parent == pids.nginx {
            ticks.nginx += stat.used;
        } else if pids
            .postmaster
            .is_some_and(|pm| pid == pm || stat.parent == pm)
        {
            ticks.postgres += stat.used;
        }
    }
    (ticks.busy, ticks.idle) = cpu::machine_ticks();
    ticks
}

// ---------------------------------------------------------------------------
// Phases

/// One measured phase: what wrk saw, and what the upstream and the CPU saw
/// meanwhile.
#[derive(Debug)]
struct Phase {
    name: String,
    wrk: WrkRun,
    /// Requests and new connections the upstream saw in the window.
    upstream_requests: u64,
    upstream_connections: u64,
    /// spool's own count of its answers in the window, by `Spool-Cache`.
    spool_answers: Option<String>,
    window: Duration,
    cpu: CpuSplit,
}

impl Phase {
    fn upstream_per_second(&self) -> f64 {
        self.upstream_requests as f64 / self.window.as_secs_f64()
    }

    fn errors(&self) -> String {
        let mut errors = Vec::new();
        if self.wrk.non_2xx > 0 {
            errors.push(format!("{} non-2xx", self.wrk.non_2xx));
        }
        if let Some(socket) = &self.wrk.socket_errors {
            errors.push(format!("socket errors: {socket}"));
        }
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join("; ")
        }
    }
}

/// What every phase shares.
struct Bench<'a> {
    args: &'a Args,
    wrk: Wrk<'a>,
    upstream: &'a Upstream,
    spool: &'a Spool,
    nginx: &'a Nginx,
    pids: Pids,
}

impl Bench<'_> {
    fn spool_url(&self) -> String {
        format!("http://{}/{ROUTE}{ITEM_PATH}", self.spool.data_addr)
    }

    fn nginx_url(addr: SocketAddr) -> String {
        format!("http://{addr}{ITEM_PATH}")
    }

    fn spool_answers(&self) -> [u64; 3] {
        ["fresh", "stale", "miss"].map(|result| {
            self.spool
                .metrics
                .reads
                .with_label_values(&[ROUTE, result])
                .get()
        })
    }

    /// A warm-up run, then the measured one.
    /// `header`: one more request header on every request.
    async fn phase(&self, name: &str, url: &str, header: Option<&str>) -> Result<Phase, BoxError> {
        let is_spool = url.starts_with(&format!("http://{}/", self.spool.data_addr));
        eprintln!(
            "{name}: {} s warm-up + {} s, wrk -t{} -c{} {}{url}",
            self.args.warmup,
            self.args.secs,
            self.args.wrk_threads,
            self.args.connections,
            header.map(|h| format!("-H '{h}' ")).unwrap_or_default()
        );
        if self.args.warmup > 0 {
            self.wrk.run(url, self.args.warmup, header).await?;
        }
        let (requests, connections) = self.upstream.counts();
        let answers = self.spool_answers();
        let cpu = CpuSampler::start(self.pids);
        let started = Instant::now();
        let out = self.wrk.run(url, self.args.secs, header).await?;
        let window = started.elapsed();
        let cpu = cpu.finish();
        let (requests_after, connections_after) = self.upstream.counts();
        let answers_after = self.spool_answers();
        let wrk = parse_wrk(&out)?;
        let spool_answers = is_spool.then(|| {
            let names = ["fresh", "stale", "miss"];
            let counted: Vec<String> = (0..3)
                .filter(|&i| answers_after[i] > answers[i])
                .map(|i| format!("{} {}", answers_after[i] - answers[i], names[i]))
                .collect();
            if counted.is_empty() {
                "none".to_owned()
            } else {
                counted.join(", ")
            }
        });
        Ok(Phase {
            name: name.to_owned(),
            wrk,
            upstream_requests: requests_after - requests,
            upstream_connections: connections_after - connections,
            spool_answers,
            window,
            cpu,
        })
    }

    /// Every URL cached by nginx's `addr` (a HIT seen for each).
    async fn prime_nginx(&self, client: &HttpClient, addr: SocketAddr) -> Result<(), BoxError> {
        for path in self.args.paths() {
            let url = format!("http://{addr}{path}");
            let mut seen = String::new();
            for _ in 0..20 {
                let (status, headers, _) = get(client, &url).await?;
                seen = header_text(&headers, "x-cache-status");
                if status == StatusCode::OK && seen == "HIT" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if seen != "HIT" {
                return Err(format!("nginx does not cache {url}: X-Cache-Status {seen}").into());
            }
        }
        Ok(())
    }

    /// With the upstream failing: each URL answered 200 from the kept copy,
    /// by spool (`Spool-Cache: stale`) and by nginx (`X-Cache-Status:
    /// STALE`, once its entry has expired). Returns what was seen.
    async fn check_stale(
        &self,
        client: &HttpClient,
        nginx: &[SocketAddr],
    ) -> Result<String, BoxError> {
        let mut seen = Vec::new();
        for path in self.args.paths() {
            let url = format!("http://{}/{ROUTE}{path}", self.spool.data_addr);
            let (status, headers, body) = get(client, &url).await?;
            let cache = header_text(&headers, "spool-cache");
            if status != StatusCode::OK || cache != "stale" || body.len() != self.args.body_bytes {
                return Err(format!(
                    "spool does not serve its kept copy of {url}: {status}, Spool-Cache {cache:?}, \
                     Cache-Status {:?}, {} bytes",
                    header_text(&headers, "cache-status"),
                    body.len()
                )
                .into());
            }
            seen.push(format!(
                "spool {path}: 200, Spool-Cache: stale, Cache-Status: {}",
                header_text(&headers, "cache-status")
            ));
            for &addr in nginx {
                let url = format!("http://{addr}{path}");
                let deadline = Instant::now() + STALE_WAIT;
                loop {
                    let (status, headers, body) = get(client, &url).await?;
                    let cache = header_text(&headers, "x-cache-status");
                    if status == StatusCode::OK
                        && cache == "STALE"
                        && body.len() == self.args.body_bytes
                    {
                        seen.push(format!("nginx {addr}{path}: 200, X-Cache-Status: STALE"));
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "nginx does not serve its cached copy of {url}: {status}, \
                             X-Cache-Status {cache:?}, {} bytes",
                            body.len()
                        )
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(summarize(&seen, self.args.urls))
    }
}

/// The first URL's lines, and how many more were alike.
fn summarize(seen: &[String], urls: usize) -> String {
    let per_url = seen.len() / urls.max(1);
    let mut text = seen[..per_url.min(seen.len())].join("\n  ");
    if urls > 1 {
        let _ = write!(text, "\n  (and alike for the other {} URLs)", urls - 1);
    }
    text
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// One GET, its body read to the end.
async fn get(client: &HttpClient, url: &str) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
    let uri: Uri = url.parse()?;
    let request = Request::get(uri).body(Full::new(Bytes::new()))?;
    let exchange = async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, BoxError>((parts.status, parts.headers, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("GET {url}: no answer within 5 s"))?
}

// ---------------------------------------------------------------------------
// The run

/// Every measured phase.
struct Phases {
    fresh_spool: Phase,
    fresh_nginx: Phase,
    /// spool with a `Cookie` on every request: never collapsed, so every
    /// request is proxied (with `--uncollapsed`).
    fresh_spool_uncollapsed: Option<Phase>,
    stale_spool: Phase,
    stale_nginx: Phase,
    stale_spool_uncollapsed: Option<Phase>,
    /// nginx with `proxy_cache_use_stale ... updating` (with `--updating`).
    stale_nginx_updating: Option<Phase>,
    checked_before: String,
    checked_after: String,
}

struct Report {
    wrk_version: String,
    nginx_version: String,
    nginx_workers: usize,
    spool_threads: usize,
    upstream_threads: usize,
    phases: Phases,
}

async fn run(args: &Args) -> Result<Report, BoxError> {
    if args.secs == 0 || args.connections == 0 || args.wrk_threads == 0 || args.urls == 0 {
        return Err("--secs, --connections, --wrk-threads and --urls must be at least 1".into());
    }
    if args.body_bytes < 64 {
        return Err("--body-bytes must be at least 64".into());
    }
    let wrk_version = wrk::version(&args.wrk).await;
    if wrk_version == "wrk" {
        return Err(format!(
            "{} not found: apt-get install wrk (or name it with --wrk / WRK)",
            args.wrk.display()
        )
        .into());
    }
    let upstream_threads = args.upstream_threads.unwrap_or_else(cores);
    let upstream = Upstream::start(upstream_threads, args.body_bytes)?;
    let nginx = Nginx::start(args, upstream.addr)?;
    eprintln!(
        "nginx {} listening on {} (proxy_pass), {} (use_stale), {} (use_stale updating); config in {}",
        nginx.version,
        nginx.proxy,
        nginx.stale,
        nginx.updating,
        nginx.dir.path().display()
    );
    with_durable_postgres("bench_read", async |pg, url| {
        let config = spool_config(url, upstream.addr)?;
        spool::telemetry::init_logging(&config.log);
        let spool = Spool::start(config).await?;
        let script = if args.urls > 1 {
            let path = nginx.dir.path().join("urls.lua");
            std::fs::write(&path, wrk_script(args.urls))?;
            Some(path)
        } else {
            None
        };
        let bench = Bench {
            args,
            wrk: Wrk { args, script },
            upstream: &upstream,
            spool: &spool,
            nginx: &nginx,
            pids: Pids {
                postmaster: pg.postmaster_pid(),
                nginx: nginx.master_pid(),
            },
        };
        let phases = measure(&bench).await;
        spool.shutdown().await;
        Ok(Report {
            wrk_version: wrk_version.clone(),
            nginx_version: nginx.version.clone(),
            nginx_workers: nginx.workers,
            spool_threads: args.spool_threads.unwrap_or_else(cores),
            upstream_threads,
            phases: phases?,
        })
    })
    .await
}

async fn measure(bench: &Bench<'_>) -> Result<Phases, BoxError> {
    let args = bench.args;
    let nginx = bench.nginx;
    let client = http_client();
    let spool_url = bench.spool_url();
    let uncollapsed = async |name: &str| -> Result<Option<Phase>, BoxError> {
        if !args.uncollapsed {
            return Ok(None);
        }
        Ok(Some(bench.phase(name, &spool_url, Some(COOKIE)).await?))
    };

    bench.upstream.set_failing(false);
    let fresh_spool = bench
        .phase("spool, upstream healthy", &spool_url, None)
        .await?;
    let fresh_spool_uncollapsed = uncollapsed("spool + Cookie, upstream healthy").await?;
    let fresh_nginx = bench
        .phase(
            "nginx proxy_pass, upstream healthy",
            &Bench::nginx_url(nginx.proxy),
            None,
        )
        .await?;

    // spool kept the answers in the phases above; nginx caches them now.
    let mut cached = vec![nginx.stale];
    if args.updating {
        cached.push(nginx.updating);
    }
    for &addr in &cached {
        bench.prime_nginx(&client, addr).await?;
    }
    eprintln!("switching the upstream to 500; checking that both serve their kept copy");
    bench.upstream.set_failing(true);
    let checked_before = bench.check_stale(&client, &cached).await?;

    let stale_spool = bench
        .phase("spool, upstream failing", &spool_url, None)
        .await?;
    let stale_spool_uncollapsed = uncollapsed("spool + Cookie, upstream failing").await?;
    let stale_nginx = bench
        .phase(
            "nginx use_stale, upstream failing",
            &Bench::nginx_url(nginx.stale),
            None,
        )
        .await?;
    let stale_nginx_updating = if args.updating {
        let url = Bench::nginx_url(nginx.updating);
        let name = "nginx use_stale updating, upstream failing";
        Some(bench.phase(name, &url, None).await?)
    } else {
        None
    };
    let checked_after = bench.check_stale(&client, &cached).await?;
    Ok(Phases {
        fresh_spool,
        fresh_nginx,
        fresh_spool_uncollapsed,
        stale_spool,
        stale_nginx,
        stale_spool_uncollapsed,
        stale_nginx_updating,
        checked_before,
        checked_after,
    })
}

/// A config for the in-process spool: any free ports, one route whose
/// single target (and so its read target) is the upstream; every read
/// setting at its default.
fn spool_config(url: &str, upstream: SocketAddr) -> Result<spool::config::Config, BoxError> {
    let rest = format!(
        r#"
[[routes]]
name = "{ROUTE}"

  [[routes.targets]]
  name = "origin"
  url = "http://{upstream}"
"#
    );
    Ok(spool::config::from_toml(&spool_toml(url, &rest))?)
}

// ---------------------------------------------------------------------------
// The report

fn print_report(args: &Args, r: &Report) {
    let p = &r.phases;
    println!();
    println!(
        "spool read benchmark: GET of {} URL{} ({}-byte JSON body), {} -t{} -c{} --latency, \
         {} s per phase after {} s warm-up",
        args.urls,
        if args.urls == 1 { "" } else { "s" },
        args.body_bytes,
        r.wrk_version,
        args.wrk_threads,
        args.connections,
        args.secs,
        args.warmup
    );
    println!(
        "{} cores; spool in process, tokio {} worker threads; {}, worker_processes {}, \
         upstream keepalive 64; upstream: hyper HTTP/1.1, {} threads, in process",
        cores(),
        r.spool_threads,
        r.nginx_version,
        r.nginx_workers,
        r.upstream_threads
    );
    println!();
    println!(
        "{:<54}{:>10}{:>11}{:>11}{:>16}{:>11}   errors",
        "", "requests/s", "p50", "p99", "upstream req/s", "new conns"
    );
    println!("upstream healthy (200, Cache-Control: {CACHE_CONTROL})");
    phase_row("  spool (Spool-Cache: fresh)", &p.fresh_spool);
    phase_row("  nginx proxy_pass", &p.fresh_nginx);
    ratio_row(
        "  ratio spool / nginx",
        &p.fresh_spool,
        &p.fresh_nginx,
        true,
    );
    if let Some(uncollapsed) = &p.fresh_spool_uncollapsed {
        phase_row(
            "  spool, Cookie: never collapsed (information)",
            uncollapsed,
        );
        ratio_row(
            "  ratio to nginx proxy_pass",
            uncollapsed,
            &p.fresh_nginx,
            false,
        );
    }
    println!("upstream failing (500): the kept copy is served");
    phase_row("  spool (Spool-Cache: stale)", &p.stale_spool);
    phase_row(
        "  nginx proxy_cache_use_stale error timeout http_500",
        &p.stale_nginx,
    );
    ratio_row(
        "  ratio spool / nginx",
        &p.stale_spool,
        &p.stale_nginx,
        true,
    );
    if let Some(uncollapsed) = &p.stale_spool_uncollapsed {
        phase_row(
            "  spool, Cookie: never collapsed (information)",
            uncollapsed,
        );
        ratio_row(
            "  ratio to nginx use_stale",
            uncollapsed,
            &p.stale_nginx,
            false,
        );
    }
    if let Some(updating) = &p.stale_nginx_updating {
        phase_row("  nginx ... http_500 updating (information)", updating);
        ratio_row(
            "  ratio spool / nginx updating",
            &p.stale_spool,
            updating,
            false,
        );
    }
    println!();
    println!("spool's own count of its answers in each window (wrk's count beside it):");
    let mut spool_phases = vec![&p.fresh_spool];
    spool_phases.extend(&p.fresh_spool_uncollapsed);
    spool_phases.push(&p.stale_spool);
    spool_phases.extend(&p.stale_spool_uncollapsed);
    for phase in spool_phases {
        println!(
            "  {:<52}{} (wrk: {})",
            phase.name,
            phase.spool_answers.as_deref().unwrap_or("-"),
            phase.wrk.requests
        );
    }
    println!("checked before the stale phases:\n  {}", p.checked_before);
    println!("checked after them:\n  {}", p.checked_after);
    println!();
    println!(
        "CPU in each measured window, % of one core ({} = all cores; other: interrupts, \
         the kernel's threads, anything else):",
        100 * cores()
    );
    println!(
        "{:<54}{:>7}{:>9}{:>7}{:>7}{:>10}{:>7}{:>7}",
        "", "spool", "upstream", "nginx", "wrk", "postgres", "other", "idle"
    );
    let all = [
        Some(&p.fresh_spool),
        p.fresh_spool_uncollapsed.as_ref(),
        Some(&p.fresh_nginx),
        Some(&p.stale_spool),
        p.stale_spool_uncollapsed.as_ref(),
        Some(&p.stale_nginx),
        p.stale_nginx_updating.as_ref(),
    ];
    for phase in all.into_iter().flatten() {
        let c = &phase.cpu;
        println!(
            "  {:<52}{:>7.0}{:>9.0}{:>7.0}{:>7.0}{:>10.0}{:>7.0}{:>7.0}",
            phase.name, c.spool, c.upstream, c.nginx, c.wrk, c.postgres, c.other, c.idle
        );
    }
}

fn phase_row(name: &str, phase: &Phase) {
    println!(
        "{name:<54}{:>10.0}{:>11}{:>11}{:>16.0}{:>11}   {}",
        phase.wrk.per_second,
        ms(phase.wrk.p50),
        ms(phase.wrk.p99),
        phase.upstream_per_second(),
        phase.upstream_connections,
        phase.errors()
    );
}

/// requests/s of `spool` over `nginx`, with the issue's target when
/// `target`; and the p99 ratio (lower is better for spool).
fn ratio_row(name: &str, spool: &Phase, nginx: &Phase, target: bool) {
    let ratio = spool.wrk.per_second / nginx.wrk.per_second;
    let p99 = spool.wrk.p99.as_secs_f64() / nginx.wrk.p99.as_secs_f64();
    let target = if target {
        format!("   (target >= 1.0: {})", verdict(ratio >= 1.0))
    } else {
        "   (no target)".to_owned()
    };
    let clean = spool.errors() == "none" && nginx.errors() == "none";
    println!(
        "{name:<54}{ratio:>10.2}{target}; p99 spool / nginx {p99:.2}{}",
        if clean { "" } else { "; errors: see above" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 10s test @ http://127.0.0.1:8080/item
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.01ms  31.20ms   90.12%
    Req/Sec    15.55k     1.20k   18.00k    70.00%
  Latency Distribution
     50%  607.00us
     75%    2.50ms
     90%    3.10ms
     99%    6.20ms
  309512 requests in 10.00s, 376.80MB read
  Socket errors: connect 0, read 2, write 0, timeout 0
  Non-2xx or 3xx responses: 12
Requests/sec:  30946.12
Transfer/sec:     37.67MB
";

    #[test]
    fn reads_wrk_output() {
        let run = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(run.per_second, 30946.12);
        assert_eq!(run.requests, 309_512);
        assert_eq!(run.p50, Duration::from_micros(607));
        assert_eq!(run.p99, Duration::from_micros(6200));
        assert_eq!(run.non_2xx, 12);
        assert_eq!(
            run.socket_errors.as_deref(),
            Some("connect 0, read 2, write 0, timeout 0")
        );
    }

    #[test]
    fn body_has_the_asked_size() {
        let body = item_body(1024);
        assert_eq!(body.len(), 1024);
        serde_json::from_str::<serde_json::Value>(&body).expect("valid JSON");
    }
}
