//! Starting and stopping a whole spool: database (embedded or not), schema,
//! committers and both listeners, in that order, and the reverse on stop.

pub mod framing;
mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminPort, AdminTarget};
use crate::config::Config;
use crate::data_port::{self, DataPort};
use crate::dispatch::Dispatcher;
use crate::embedded_pg::{Durability, EmbeddedError, EmbeddedPostgres};
use crate::ingest::{GroupCommit, WritePath, route_table};
use crate::outbox::{self, DbError, MigrateError};
use crate::read::ReadPath;
use crate::telemetry::Metrics;

pub use self::http::ConnectionLimits;

/// How long a starting spool keeps trying to reach its database.
const STARTUP_DB_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("embedded Postgres: {0}")]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("schema migration: {0}")]
    Migrate(#[from] MigrateError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
}

/// A running spool. Dropping it does not stop it: call `shutdown`.
pub struct Spool {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    committers: JoinSet<()>,
    dispatcher: Option<Dispatcher>,
    embedded: Option<EmbeddedPostgres>,
}

impl Spool {
    /// Starts everything; returns once both ports are listening.
    pub async fn start(config: Config) -> Result<Spool, StartError> {
        let (url, embedded) = match &config.database.url {
            Some(url) => (url.clone(), None),
            None => {
                let pg = EmbeddedPostgres::new(
                    &config.database.embedded_dir,
                    config.database.embedded_bin_dir.as_deref(),
                    Durability::Durable,
                )?;
                tracing::info!(dir = %pg.dir().display(), "no database.url set: using the embedded Postgres");
                (pg.start().await?, Some(pg))
            }
        };
        let address = outbox::DbAddress::parse(&url, &config.database)
            .map_err(|e| outbox::DbError::Config(e.to_string()))?;
        let pool = outbox::connect_pool(&address, &config.database)?;
        migrate_with_patience(&pool).await?;

        let metrics = Arc::new(Metrics::new());
        // Read before the first write is taken, so that none is
        // acknowledged on a database that could lose it.
        let durability = Arc::new(outbox::Durability::default());
        let allow_non_durable = config.database.allow_non_durable;
        outbox::check_durability(
            &pool,
            &durability,
            allow_non_durable,
            &metrics.outbox_durable,
            config.ingest.commit_timeout(),
        )
        .await;
        let instance = instance_name();
        let owner = format!("{instance}/{}", uuid::Uuid::now_v7());
        let dispatcher =
            Dispatcher::start(&config, pool.clone(), address, &owner, Arc::clone(&metrics));
        let (commit, committers) = GroupCommit::start(
            pool.clone(),
            &config.ingest,
            Arc::clone(&metrics),
            Arc::clone(&dispatcher.wakeups),
        );
        let breakers = |route: &str, target: &str| {
            let key = (route.to_owned(), target.to_owned());
            dispatcher.targets.get(&key).map(|t| Arc::clone(&t.breaker))
        };
        let (reads, persist) =
            ReadPath::new(&config, Some(pool.clone()), breakers, Arc::clone(&metrics));
        if let Some(persist) = persist {
            // Ends when the data port (the last holder of its queue) is gone.
            tokio::spawn(persist.run());
        }
        let data = Arc::new(DataPort {
            routes: route_table(&config.routes),
            writes: WritePath::new(
                commit.clone(),
                &config,
                Arc::clone(&metrics),
                Arc::clone(&durability),
            ),
            reads,
            max_headers: config.server.max_headers,
            max_header_bytes: config.server.max_header_bytes,
            allowed_origins: config.server.allowed_origins.clone(),
        });
        let admin_targets = config
            .routes
            .iter()
            .flat_map(|route| route.targets.iter().map(move |t| (route, t)))
            .filter_map(|(route, target)| {
                let key = (route.name.clone(), target.name.clone());
                let handle = dispatcher.targets.get(&key)?.clone();
                Some(AdminTarget {
                    route: key.0,
                    target: key.1,
                    handle,
                })
            })
            .collect();
        let admin = Arc::new(AdminPort {
            pool,
            metrics: Arc::clone(&metrics),
            instance,
            owner: owner.clone(),
            check_timeout: config.ingest.commit_timeout(),
            token: config.server.admin_token.clone(),
            hosts: config.server.admin_hosts.clone(),
            targets: admin_targets,
            wakeups: Arc::clone(&dispatcher.wakeups),
            durability: Arc::clone(&durability),
            allow_non_durable,
            commit_health: commit.health(),
            ready_requires_outbox: config.server.ready_requires_outbox,
        });
        drop(commit);

        let data_listener = bind(config.server.listen, "server.listen").await?;
        let admin_listener = bind(config.server.admin_listen, "server.admin_listen").await?;
        let data_addr = data_listener.local_addr().expect("bound");
        let admin_addr = admin_listener.local_addr().expect("bound");
        let limits = ConnectionLimits {
            max_headers: config.server.max_headers,
            max_header_bytes: config.server.max_header_bytes,
            header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
            max_connections: config.server.max_connections,
        };
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let retention = crate::janitor::Retention {
            idempotency_keys: Duration::from_secs(config.ingest.idempotency_retention_s),
            read_cache: Duration::from_secs(
                config
                    .routes
                    .iter()
                    .map(|r| r.read.max_stale_s)
                    .max()
                    .unwrap_or(0),
            ),
        };
        tasks.spawn(outbox::watch_durability(
            admin.pool.clone(),
            durability,
            allow_non_durable,
            metrics.outbox_durable.clone(),
            Duration::from_secs(60),
            cancel.clone(),
        ));
        tasks.spawn(crate::memory::give_back_freed_memory(
            Duration::from_secs(5),
            cancel.clone(),
        ));
        tasks.spawn(crate::janitor::run(
            admin.pool.clone(),
            retention,
            Duration::from_secs(60),
            cancel.clone(),
        ));
        tasks.spawn(http::serve(
            data_listener,
            data_port::router(data),
            limits,
            cancel.clone(),
            grace,
        ));
        tasks.spawn(http::serve(
            admin_listener,
            admin::router(admin),
            limits,
            cancel.clone(),
            grace,
        ));
        tracing::info!(data = %data_addr, admin = %admin_addr, routes = config.routes.len(), "spool listening");
        Ok(Spool {
            data_addr,
            admin_addr,
            metrics,
            cancel,
            tasks,
            committers,
            dispatcher: Some(dispatcher),
            embedded,
        })
    }

    /// The live breaker and flow control of one target.
    pub fn target(&self, route: &str, target: &str) -> Option<crate::dispatch::TargetHandle> {
        let dispatcher = self.dispatcher.as_ref()?;
        dispatcher
            .targets
            .get(&(route.to_owned(), target.to_owned()))
            .cloned()
    }

    /// Stops accepting, lets requests in flight finish (their writes are
    /// committed or refused, never dropped), lets attempts in flight finish
    /// and records them, then stops the embedded Postgres.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        // The routers held the last senders: the committers drain and stop.
        while self.committers.join_next().await.is_some() {}
        if let Some(dispatcher) = self.dispatcher.take() {
            dispatcher.shutdown().await;
        }
        if let Some(pg) = self.embedded.take() {
            match pg.stop("fast").await {
                Ok(()) => tracing::info!(dir = %pg.dir().display(), "embedded Postgres stopped"),
                Err(e) => tracing::warn!(error = %e, "could not stop the embedded Postgres"),
            }
        }
        tracing::info!("spool stopped");
    }
}

/// Postgres may still be starting (a pod's database, a restarted machine):
/// keep trying for a while, saying so, before giving up.
async fn migrate_with_patience(pool: &deadpool_postgres::Pool) -> Result<(), StartError> {
    let deadline = tokio::time::Instant::now() + STARTUP_DB_WAIT;
    loop {
        let attempt = async {
            let mut client = pool.get().await.map_err(DbError::from)?;
            let applied = outbox::migrate(&mut client).await?;
            Ok::<_, StartError>(applied)
        };
        match attempt.await {
            Ok(applied) => {
                if !applied.is_empty() {
                    tracing::info!(?applied, "schema migrations applied");
                }
                return Ok(());
            }
            Err(e @ StartError::Database(_)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, key, source })
}

/// A name for this spool's heartbeat row: the host (the pod, in Kubernetes),
/// so that restarts reuse one row.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    host.trim().to_owned()
}
