//! Waking the dispatchers when writes commit: at once for this spool's own
//! dispatchers, and through Postgres LISTEN/NOTIFY for other spools that
//! share the database. The slow poll in each dispatcher covers the rest.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};
use tokio_util::sync::CancellationToken;

use crate::outbox::{DbAddress, sql, with_connection};

/// The NOTIFY channel; the payload is a route name.
pub const CHANNEL: &str = "spool_outbox";

/// One `Notify` per target dispatcher, by route.
#[derive(Default)]
pub struct Wakeups {
    by_route: HashMap<String, Vec<Arc<Notify>>>,
    /// Routes committed since the last NOTIFY went out.
    to_announce: Mutex<HashSet<String>>,
    announce: Notify,
}

impl Wakeups {
    pub fn register(&mut self, route: &str) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.by_route
            .entry(route.to_owned())
            .or_default()
            .push(Arc::clone(&notify));
        notify
    }

    /// Wakes every dispatcher of `route` (a stored permit if it is busy).
    pub fn wake_route(&self, route: &str) {
        for notify in self.by_route.get(route).into_iter().flatten() {
            notify.notify_one();
        }
    }

    pub fn wake_all(&self) {
        for notify in self.by_route.values().flatten() {
            notify.notify_one();
        }
    }

    /// Called after a commit: wakes local dispatchers now, and has the
    /// announcer tell other spools.
    pub fn committed<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        let mut pending = self
            .to_announce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for route in routes {
            self.wake_route(route);
            if !pending.contains(route) {
                pending.insert(route.to_owned());
            }
        }
        drop(pending);
        self.announce.notify_one();
    }
}

/// Sends NOTIFY for committed routes, outside the write transactions: a
/// NOTIFY inside them would serialize their commits on Postgres's notify
/// lock. Announcements made while one is in flight are merged.
pub async fn announce(wakeups: Arc<Wakeups>, pool: Pool, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = wakeups.announce.notified() => {}
            () = cancel.cancelled() => return,
        }
        let routes: Vec<String> = wakeups
            .to_announce
            .lock()
            .expect("wakeups lock")
            .drain()
            .collect();
        if routes.is_empty() {
            continue;
        }
        let sent = with_connection(&pool, Duration::from_secs(5), async |client| {
            client
                .execute(sql::NOTIFY_ROUTES, &[&CHANNEL, &routes])
                .await
        });
        if let Err(e) = sent.await {
            // Other spools fall back to their poll; nothing is lost.
            tracing::debug!(error = %e, "NOTIFY failed");
        }
    }
}

/// Holds a LISTEN connection and wakes dispatchers on each notification;
/// reconnects after a failure and then wakes everyone, since notifications
/// sent while it was away are lost.
pub async fn listen(wakeups: Arc<Wakeups>, address: DbAddress, cancel: CancellationToken) {
    let mut first = true;
    loop {
        let result = tokio::select! {
            result = listen_once(&wakeups, &address, &mut first) => result,
            () = cancel.cancelled() => return,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "LISTEN connection lost; polling until it is back");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn listen_once(
    wakeups: &Wakeups,
    address: &DbAddress,
    first: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    match &address.tls {
        None => {
            let (client, connection) = address.config.connect(NoTls).await?;
            listen_on(wakeups, client, connection, first).await
        }
        Some(tls) => {
            let (client, connection) = address.config.connect(tls.clone()).await?;
            listen_on(wakeups, client, connection, first).await
        }
    }
}

async fn listen_on<S, T>(
    wakeups: &Wakeups,
    client: Client,
    mut connection: Connection<S, T>,
    first: &mut bool,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listening = client.batch_execute(&statement);
    // The connection must be polled for the LISTEN to complete.
    tokio::pin!(listening);
    loop {
        tokio::select! {
            done = &mut listening => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    if !std::mem::take(first) {
        wakeups.wake_all();
    }
    // `client` lives until here: dropping it would close the connection.
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(n) = message? {
            wakeups.wake_route(n.payload());
        }
    }
    Ok(())
}
