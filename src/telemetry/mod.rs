//! Logs and metrics: what an operator sees at 3 a.m.

mod logging;
mod metrics;

pub use logging::init_logging;
pub use metrics::{Metrics, TargetMetrics};
