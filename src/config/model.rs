//! The shape of spool.toml. Every section has defaults, so an empty file is a
//! valid (if route-less) configuration; `deny_unknown_fields` everywhere so a
//! typo is an error rather than a silently ignored setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration, as validated at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub dispatch: DispatchConfig,
    #[serde(default)]
    pub read_cache: ReadCacheConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Environment variables set aside as Kubernetes' Service variables
    /// (`SPOOL_PORT=tcp://...`): not settings, logged at debug at start.
    #[serde(skip)]
    pub ignored_vars: Vec<String>,
}

/// `[server]`: the two listeners and the limits put on every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Largest request body accepted on a write, in bytes.
    pub max_body_bytes: u64,
    /// Largest total size of a request's header names and values.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Bearer token for /admin. Prefer `SPOOL_ADMIN_TOKEN` to the file.
    pub admin_token: Option<String>,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace_ms: u64,
    /// From a connection's start (or its previous answer) until a whole
    /// request head is in; also how long an idle keep-alive connection is
    /// kept.
    pub header_read_timeout_ms: u64,
    /// How long a request body may take to arrive (408 past it).
    pub body_read_timeout_ms: u64,
    /// Connections open at once on each port; past it, new ones are
    /// answered 503 with Retry-After and closed.
    pub max_connections: usize,
    /// Request body bytes held in memory at once across all writes; past
    /// it, writes are answered 503 with Retry-After.
    pub max_body_bytes_in_flight: u64,
    /// Host names the admin port answers for, besides IP literals and
    /// `localhost` (others get 421: no DNS rebinding).
    pub admin_hosts: Vec<String>,
    /// Origins whose web pages may write and read through the data port;
    /// a request with any other `Origin` is refused 403.
    pub allowed_origins: Vec<String>,
    /// Whether `/readyz` fails while the write path does. Off: a sidecar's
    /// readiness is its pod's, and a database outage would take every pod
    /// of the service out of rotation, reads that could be served stale
    /// included.
    pub ready_requires_outbox: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 4000).into(),
            admin_listen: ([127, 0, 0, 1], 4001).into(),
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            admin_token: None,
            shutdown_grace_ms: 10_000,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 30_000,
            max_connections: 4096,
            max_body_bytes_in_flight: 64 * 1024 * 1024,
            admin_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            ready_requires_outbox: false,
        }
    }
}

/// `[database]`: where the outbox lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://` URL. Unset: spool runs its own Postgres in `embedded_dir`.
    pub url: Option<String>,
    /// Whether an unset `url` means the embedded Postgres. The container
    /// image sets it false: it has no Postgres binaries, and a sidecar that
    /// kept its outbox in the pod would lose it with the pod.
    pub embedded: bool,
    /// Where the embedded Postgres keeps its cluster when `url` is unset.
    pub embedded_dir: PathBuf,
    /// Directory of initdb, pg_ctl and postgres; searched for when unset.
    pub embedded_bin_dir: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Bound on opening one connection.
    pub connect_timeout_ms: u64,
    /// PEM file of CA certificates trusted for the database's certificate
    /// (with `sslmode=require`), besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept writes although the database's settings could lose a commit
    /// in a crash (fsync, full_page_writes or synchronous_commit off): for
    /// throwaway test databases only.
    pub allow_non_durable: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            embedded: true,
            embedded_dir: PathBuf::from(".spool/postgres"),
            embedded_bin_dir: None,
            pool_size: 16,
            connect_timeout_ms: 2_000,
            ca_file: None,
            allow_non_durable: false,
        }
    }
}

/// `[ingest]`: how writes are gathered into group commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most writes committed in one transaction.
    pub batch_max: usize,
    /// Tasks committing batches at once (each holds one connection). One is
    /// fastest against a local Postgres: concurrent inserters contend on
    /// the same index pages, and a single committer's batches are bigger.
    pub committers: usize,
    /// Writes waiting for a committer; past this, 503 at once.
    pub queue_capacity: usize,
    /// Longest a write waits for its commit before it is answered 503.
    pub commit_timeout_ms: u64,
    /// When the answer to a COMMIT is lost (Postgres crashed or the network
    /// broke after it was sent), how much longer spool asks Postgres what
    /// became of the transaction before it answers that it does not know.
    pub outcome_lookup_ms: u64,
    /// How long an Idempotency-Key is remembered.
    pub idempotency_retention_s: u64,
    /// Retry-After sent with a 503.
    pub retry_after_s: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max: 256,
            committers: 1,
            queue_capacity: 8192,
            commit_timeout_ms: 2_000,
            outcome_lookup_ms: 5_000,
            idempotency_retention_s: 24 * 3600,
            retry_after_s: 1,
        }
    }
}

impl IngestConfig {
    pub fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.commit_timeout_ms)
    }

    pub fn outcome_lookup(&self) -> Duration {
        Duration::from_millis(self.outcome_lookup_ms)
    }
}

/// `[dispatch]`: how deliveries are claimed and their outcomes recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Most deliveries one target's dispatcher reads at once; it holds up
    /// to about twice this many ahead of sending.
    pub claim_batch: usize,
    /// Shards per target: each is dispatched by one spool at a time, so
    /// this is how many replicas can share one target's deliveries.
    pub shards: u32,
    /// The slow poll behind LISTEN/NOTIFY wake-ups.
    pub poll_interval_ms: u64,
    /// Added to the slowest route's timeout to make a shard's lease: after
    /// it, a crashed spool's shards are taken over.
    pub lease_margin_ms: u64,
    /// Most attempt outcomes written in one transaction.
    pub record_batch_max: usize,
    /// How often the backlog metrics are read from the outbox (a pass over
    /// the deliveries table).
    pub backlog_interval_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            claim_batch: 256,
            shards: 16,
            poll_interval_ms: 1_000,
            lease_margin_ms: 10_000,
            record_batch_max: 512,
            backlog_interval_ms: 10_000,
        }
    }
}

/// `[read_cache]`: the last good answers kept for reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadCacheConfig {
    /// Memory for kept answers, in bytes (bodies and headers).
    pub max_bytes: u64,
    /// Most kept answers in memory.
    pub max_entries: u64,
    /// Answers with larger bodies are streamed through and not kept.
    pub max_entry_bytes: usize,
    /// Copy kept answers to Postgres, so a restarted spool still has them.
    pub persist: bool,
}

impl Default for ReadCacheConfig {
    fn default() -> Self {
        ReadCacheConfig {
            max_bytes: 64 * 1024 * 1024,
            max_entries: 10_000,
            max_entry_bytes: 1024 * 1024,
            persist: true,
        }
    }
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, or `spool=debug,tokio_postgres=warn`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

/// JSON lines for machines (the default), or text for a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// `[[routes]]`: a name on the data port and the targets its writes go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default = "default_write_methods")]
    pub write_methods: Vec<String>,
    /// Per-attempt timeout when forwarding or reading.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Request headers stored with a write and forwarded. Case-insensitive;
    /// a trailing `*` matches a prefix (`x-*`).
    #[serde(default = "default_forward_headers")]
    pub forward_headers: Vec<String>,
    /// The target reads go to; the first target when unset.
    #[serde(default)]
    pub read_target: Option<String>,
    /// Whether paths may hold `%2F` and `%5C`; off, they are refused (400),
    /// since targets differ on whether they split on them.
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub rate: RateConfig,
    #[serde(default)]
    pub read: ReadConfig,
}

fn default_write_methods() -> Vec<String> {
    ["POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_forward_headers() -> Vec<String> {
    [
        "content-type",
        "content-encoding",
        "content-language",
        "accept",
        "accept-language",
        "user-agent",
        "x-*",
    ]
    .map(String::from)
    .to_vec()
}

/// `[[routes.targets]]`: one downstream that receives every write of the route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub url: String,
}

/// `[routes.read]`: serving kept answers when the read target fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadConfig {
    /// Oldest kept answer served in place of a failed upstream.
    pub max_stale_s: u64,
    /// Whether a 5xx from the upstream is a failure to fall back from.
    pub stale_on_5xx: bool,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            max_stale_s: 24 * 3600,
            stale_on_5xx: true,
        }
    }
}

/// `[routes.retry]`: backoff between attempts and when to give up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub max_attempts: u32,
    /// Give up on a delivery this long after its write was accepted.
    pub max_age_s: u64,
    /// 4xx statuses retried rather than dead-lettered at once.
    pub retry_statuses: Vec<u16>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_ms: 100,
            max_ms: 60_000,
            max_attempts: 20,
            max_age_s: 3 * 24 * 3600,
            retry_statuses: vec![408, 425, 429],
        }
    }
}

/// `[routes.breaker]`: when a target is considered down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_ms: 30_000,
        }
    }
}

/// `[routes.rate]`: flow control per target (0 per second stops sending).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    pub per_second: f64,
    /// Requests that may go at once after a quiet spell; `per_second` if unset.
    pub burst: Option<u32>,
    pub concurrency: usize,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            per_second: 500.0,
            burst: None,
            concurrency: 32,
        }
    }
}
