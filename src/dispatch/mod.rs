//! Forwarding: every acknowledged write reaches every target of its route.
//!
//! Each (route, target) is split into shards, each dispatched by one spool
//! at a time under a lease with an epoch (the ownership task). One
//! dispatcher task per (route, target) reads the due deliveries of the
//! shards this spool owns and sends them, keyed ones in per-key lanes; a
//! recorder writes the outcomes back under the epoch fence; LISTEN/NOTIFY
//! and a slow poll wake the dispatchers; the backlog is read into the
//! metrics. Each target has its own breaker and flow control, so a dead
//! target never delays another.

mod attempt;
mod backlog;
mod forward;
mod held;
mod ownership;
mod recorder;
mod supervise;
mod wakeup;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use forward::{AttemptResult, Forwarder};
pub use wakeup::Wakeups;

use crate::breaker::Breaker;
use crate::config::Config;
use crate::flow::FlowControl;
use crate::outbox::DbAddress;
use crate::retry::RetryPolicy;
use crate::telemetry::Metrics;

/// A target's live controls, for the read path and the admin API.
#[derive(Clone)]
pub struct TargetHandle {
    pub breaker: Arc<Breaker>,
    pub flow: Arc<FlowControl>,
}

/// The running forwarder.
pub struct Dispatcher {
    /// By (route, target).
    pub targets: HashMap<(String, String), TargetHandle>,
    pub wakeups: Arc<Wakeups>,
    workers: JoinSet<()>,
    background: JoinSet<()>,
    recorder: JoinHandle<()>,
    ownership: JoinHandle<()>,
    cancel: CancellationToken,
    /// Stops the ownership task, which hands the leases back: last, once
    /// every outcome is recorded.
    stop_owning: CancellationToken,
}

impl Dispatcher {
    /// Starts a dispatcher for every target of every route, the recorder,
    /// the LISTEN connection (to `address`) and the NOTIFY announcer.
    pub fn start(
        config: &Config,
        pool: Pool,
        address: DbAddress,
        owner: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let dispatch = &config.dispatch;
        let mut wakeups = Wakeups::default();
        let mut targets = Vec::new();
        let mut owned = Vec::new();
        let mut views = Vec::new();
        for route in &config.routes {
            for target in &route.targets {
                let timeout = Duration::from_millis(route.timeout_ms);
                let name = format!("{}/{}", route.name, target.name);
                let labels = [route.name.as_str(), target.name.as_str()];
                metrics.breaker_state.with_label_values(&labels).set(0);
                metrics
                    .rate_limit
                    .with_label_values(&labels)
                    .set(route.rate.per_second);
                let (view, watcher) = watch::channel(ownership::ShardView::default());
                owned.push(ownership::OwnedTarget {
                    route: route.name.as_str().into(),
                    target: target.name.as_str().into(),
                    configured: dispatch.shards as i32,
                    drain: timeout,
                    view,
                });
                views.push(watcher);
                targets.push(Arc::new(worker::Target {
                    route: route.name.as_str().into(),
                    name: target.name.as_str().into(),
                    sole_target: route.targets.len() == 1,
                    forwarder: Forwarder::new(&target.url, timeout, route.rate.concurrency),
                    policy: RetryPolicy::from_config(&route.retry),
                    breaker: Arc::new(Breaker::new(
                        name,
                        route.breaker.failure_threshold,
                        Duration::from_millis(route.breaker.open_ms),
                    )),
                    flow: Arc::new(FlowControl::new(
                        route.rate.per_second,
                        route.rate.burst,
                        route.rate.concurrency,
                    )),
                    wake: wakeups.register(&route.name),
                    next_due: Mutex::new(None),
                    metrics: metrics.target(&route.name, &target.name),
                }));
            }
        }
        let wakeups = Arc::new(wakeups);
        let owner: Arc<str> = owner.into();
        let (records, receiver) = mpsc::channel(dispatch.record_batch_max * 4);
        let recorder = tokio::spawn(recorder::run(
            receiver,
            pool.clone(),
            Arc::clone(&owner),
            dispatch.record_batch_max,
            cancel.clone(),
        ));
        let max_timeout = config
            .routes
            .iter()
            .map(|r| r.timeout_ms)
            .max()
            .unwrap_or(0);
        let stop_owning = CancellationToken::new();
        let ownership = tokio::spawn(ownership::run(
            owned,
            ownership::Settings {
                pool: pool.clone(),
                owner: Arc::clone(&owner),
                // Long enough for the slowest attempt and its recording;
                // after it, another spool may take a dead one's shards.
                ttl: Duration::from_millis(max_timeout + dispatch.lease_margin_ms),
            },
            stop_owning.clone(),
        ));
        let settings = worker::DispatchSettings {
            pool: pool.clone(),
            read_batch: dispatch.claim_batch,
            poll: Duration::from_millis(dispatch.poll_interval_ms),
            records,
            cancel: cancel.clone(),
        };
        let mut workers = JoinSet::new();
        let handles = targets
            .iter()
            .map(|t| {
                let handle = TargetHandle {
                    breaker: Arc::clone(&t.breaker),
                    flow: Arc::clone(&t.flow),
                };
                ((t.route.to_string(), t.name.to_string()), handle)
            })
            .collect();
        let gauged = targets
            .iter()
            .map(|t| backlog::Gauged {
                route: Arc::clone(&t.route),
                target: Arc::clone(&t.name),
                metrics: t.metrics.clone(),
            })
            .collect();
        for (target, view) in targets.into_iter().zip(views) {
            let name = format!("{}/{}", target.route, target.name);
            let restarted = Arc::clone(&target);
            let settings = settings.clone();
            workers.spawn(supervise::supervise(
                name,
                cancel.clone(),
                move || worker::run(Arc::clone(&target), view.clone(), settings.clone()),
                // The panicked worker's attempts were dropped with it.
                move || {
                    restarted.flow.forget_in_flight();
                    restarted.breaker.return_probe();
                },
            ));
        }
        drop(settings);
        let mut background = JoinSet::new();
        background.spawn(wakeup::listen(
            Arc::clone(&wakeups),
            address,
            cancel.clone(),
        ));
        background.spawn(backlog::run(
            pool.clone(),
            gauged,
            Arc::clone(&owner),
            Duration::from_millis(dispatch.backlog_interval_ms),
            cancel.clone(),
        ));
        background.spawn(wakeup::announce(Arc::clone(&wakeups), pool, cancel.clone()));
        Dispatcher {
            targets: handles,
            wakeups,
            workers,
            background,
            recorder,
            ownership,
            cancel,
            stop_owning,
        }
    }

    /// Stops reading, lets attempts in flight finish, records their
    /// outcomes, hands the shard leases back, then stops.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.workers.join_next().await.is_some() {}
        // The workers held the last record senders: the recorder drains.
        let _ = self.recorder.await;
        self.stop_owning.cancel();
        let _ = self.ownership.await;
        while self.background.join_next().await.is_some() {}
    }
}
