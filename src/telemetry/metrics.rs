//! Prometheus metrics, all named `spool_*`, labelled by route, target and
//! outcome only: nothing a client sends becomes a label.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric spool exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Writes answered, by route and outcome (accepted, replayed, conflict, rejected, unavailable).
    pub ingest_requests: IntCounterVec,
    /// Time from request to answer for writes, by route and outcome.
    pub ingest_seconds: HistogramVec,
    /// Writes per group commit.
    pub commit_batch_size: Histogram,
    /// Time of one group commit, by outcome (ok, error, timeout).
    pub commit_seconds: HistogramVec,
    /// Writes waiting for a committer.
    pub commit_queue: IntGauge,
    /// Attempt outcomes, by route, target and outcome (delivered, retry, dead).
    pub deliveries: IntCounterVec,
    /// Time of one attempt, by route and target.
    pub attempt_seconds: HistogramVec,
    /// From acceptance to delivery, by route and target.
    pub delivery_lag_seconds: HistogramVec,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// Configured sends per second (0: stopped).
    pub rate_limit: GaugeVec,
    /// Deliveries not yet delivered nor dead, by route and target.
    pub backlog: IntGaugeVec,
    /// How long the oldest of those has waited since acceptance.
    pub oldest_pending_seconds: GaugeVec,
    /// Dead letters kept, by route and target.
    pub dead_letters: IntGaugeVec,
    /// Reads answered, by route and result (fresh, stale, miss).
    pub reads: IntCounterVec,
    /// 1 while the database's settings keep commits through a crash.
    pub outbox_durable: IntGauge,
    /// Shards of a target with no live owner, as the lease table says.
    pub shards_unowned: IntGaugeVec,
    /// Shards of a target this spool holds.
    pub shards_held: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency = vec![
            0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0,
            5.0,
        ];
        let ingest_requests = IntCounterVec::new(
            Opts::new(
                "spool_ingest_requests_total",
                "Writes answered, by route and outcome.",
            ),
            &["route", "outcome"],
        )
        .expect("valid metric");
        let ingest_seconds = HistogramVec::new(
            HistogramOpts::new("spool_ingest_duration_seconds", "Time to answer a write.")
                .buckets(latency.clone()),
            &["route", "outcome"],
        )
        .expect("valid metric");
        let commit_batch_size = Histogram::with_opts(
            HistogramOpts::new("spool_commit_batch_size", "Writes per group commit.").buckets(
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
        )
        .expect("valid metric");
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new("spool_commit_duration_seconds", "Time of one group commit.")
                .buckets(latency),
            &["outcome"],
        )
        .expect("valid metric");
        let commit_queue = IntGauge::new("spool_commit_queue", "Writes waiting for a committer.")
            .expect("valid metric");
        let deliveries = IntCounterVec::new(
            Opts::new(
                "spool_deliveries_total",
                "Attempt outcomes: delivered, retry, dead.",
            ),
            &["route", "target", "outcome"],
        )
        .expect("valid metric");
        let attempt_seconds = HistogramVec::new(
            HistogramOpts::new(
                "spool_delivery_attempt_duration_seconds",
                "Time of one attempt.",
            )
            .buckets(latency_buckets()),
            &["route", "target"],
        )
        .expect("valid metric");
        let delivery_lag_seconds = HistogramVec::new(
            HistogramOpts::new(
                "spool_delivery_lag_seconds",
                "Time from a write's acceptance to its delivery.",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
                3600.0,
            ]),
            &["route", "target"],
        )
        .expect("valid metric");
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "spool_breaker_state",
                "Circuit breaker: 0 closed, 1 open, 2 half-open.",
            ),
            &["route", "target"],
        )
        .expect("valid metric");
        let rate_limit = GaugeVec::new(
            Opts::new(
                "spool_rate_limit",
                "Sends per second allowed to a target (0: stopped).",
            ),
            &["route", "target"],
        )
        .expect("valid metric");
        let backlog = IntGaugeVec::new(
            Opts::new(
                "spool_backlog",
                "Deliveries not yet delivered nor dead (every spool on a database reports the same).",
            ),
            &["route", "target"],
        )
        .expect("valid metric");
        let oldest_pending_seconds = GaugeVec::new(
            Opts::new(
                "spool_oldest_pending_age_seconds",
                "Age of the oldest delivery not yet delivered nor dead.",
            ),
            &["route", "target"],
        )
        .expect("valid metric");
        let dead_letters = IntGaugeVec::new(
            Opts::new("spool_dead_letters", "Dead letters kept, awaiting replay."),
            &["route", "target"],
        )
        .expect("valid metric");
        let reads = IntCounterVec::new(
            Opts::new(
                "spool_reads_total",
                "Reads answered: fresh, stale (kept copy) or miss.",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let outbox_durable = IntGauge::new(
            "spool_outbox_durable",
            "1 while the database keeps commits through a crash (fsync, full_page_writes, synchronous_commit), 0 while not.",
        )
        .expect("valid metric");
        let shards_unowned = IntGaugeVec::new(
            Opts::new(
                "spool_shards_unowned",
                "Shards of a target with no live owner: nobody sends their deliveries (the same on every spool of a database).",
            ),
            &["route", "target"],
        )
        .expect("valid metric");
        let shards_held = IntGaugeVec::new(
            Opts::new(
                "spool_shards_held",
                "Shards of a target this spool dispatches.",
            ),
            &["route", "target"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(reads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(shards_unowned.clone()),
            Box::new(shards_held.clone()),
            Box::new(outbox_durable.clone()),
            Box::new(deliveries.clone()),
            Box::new(attempt_seconds.clone()),
            Box::new(delivery_lag_seconds.clone()),
            Box::new(breaker_state.clone()),
            Box::new(rate_limit.clone()),
            Box::new(backlog.clone()),
            Box::new(oldest_pending_seconds.clone()),
            Box::new(dead_letters.clone()),
            Box::new(ingest_requests.clone()),
            Box::new(ingest_seconds.clone()),
            Box::new(commit_batch_size.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(commit_queue.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Metrics {
            registry,
            ingest_requests,
            ingest_seconds,
            commit_batch_size,
            commit_seconds,
            commit_queue,
            deliveries,
            attempt_seconds,
            delivery_lag_seconds,
            breaker_state,
            rate_limit,
            backlog,
            oldest_pending_seconds,
            dead_letters,
            reads,
            outbox_durable,
            shards_unowned,
            shards_held,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// Half a millisecond to five seconds, doubling.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
    ]
}

/// One target's delivery series, looked up once when its dispatcher
/// starts: hashing the labels on every attempt shows at thousands of
/// deliveries per second.
#[derive(Clone)]
pub struct TargetMetrics {
    pub attempt_seconds: Histogram,
    pub delivery_lag_seconds: Histogram,
    pub breaker_state: IntGauge,
    pub delivered: IntCounter,
    pub retried: IntCounter,
    pub dead: IntCounter,
    pub backlog: IntGauge,
    pub oldest_pending_seconds: Gauge,
    pub dead_letters: IntGauge,
    pub shards_unowned: IntGauge,
    pub shards_held: IntGauge,
}

impl Metrics {
    pub fn target(&self, route: &str, target: &str) -> TargetMetrics {
        let labels = [route, target];
        let outcome = |o: &str| self.deliveries.with_label_values(&[route, target, o]);
        TargetMetrics {
            attempt_seconds: self.attempt_seconds.with_label_values(&labels),
            delivery_lag_seconds: self.delivery_lag_seconds.with_label_values(&labels),
            breaker_state: self.breaker_state.with_label_values(&labels),
            delivered: outcome("delivered"),
            retried: outcome("retry"),
            dead: outcome("dead"),
            backlog: self.backlog.with_label_values(&labels),
            oldest_pending_seconds: self.oldest_pending_seconds.with_label_values(&labels),
            dead_letters: self.dead_letters.with_label_values(&labels),
            shards_unowned: self.shards_unowned.with_label_values(&labels),
            shards_held: self.shards_held.with_label_values(&labels),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
