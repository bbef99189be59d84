//! Prometheus metrics, all named `spool_*`, labelled by route, target and
//! outcome only: nothing a client sends becomes a label.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
        for collector in [
            Box::new(ingest_requests.clone()) as Box<dyn prometheus::core::Collector>,
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
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
