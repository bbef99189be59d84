//! tracing output: JSON lines by default, plain text for a terminal.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. A second call (tests start several
/// spools in one process) keeps the first and is not an error.
pub fn init_logging(config: &LogConfig) {
    // Postgres's NOTICEs ("relation already exists, skipping" at every
    // start) are not news to an operator; a level that names
    // tokio_postgres itself is taken as it is.
    let level = if config.level.contains("tokio_postgres") {
        config.level.clone()
    } else {
        format!("{},tokio_postgres=warn", config.level)
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
