//! The `spool` command: run the sidecar, or check a configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A write de-synchronizing sidecar: writes sent to it are committed to a
/// Postgres outbox before they are acknowledged, then forwarded to their
/// targets with retries, backoff and a circuit breaker.
#[derive(Debug, Parser)]
#[command(name = "spool", version, about)]
struct Cli {
    /// The TOML configuration file. Every key can be overridden by an
    /// environment variable: SPOOL_SECTION__KEY, or SPOOL_DATABASE_URL,
    /// SPOOL_LISTEN, SPOOL_ADMIN_LISTEN, SPOOL_ADMIN_TOKEN.
    #[arg(long, short, env = "SPOOL_CONFIG", default_value = "spool.toml")]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run spool (the default when no command is given).
    Run,
    /// Load and validate the configuration, print every problem, and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The default file may be absent (everything from defaults and the
    // environment); a file named on the command line must exist.
    let explicit = cli.config != Path::new("spool.toml");
    let config = match spool::config::load(&cli.config, explicit, std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("spool: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!(
                "{}: configuration is valid ({} routes)",
                cli.config.display(),
                config.routes.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run => run(config),
    }
}

fn run(config: spool::config::Config) -> ExitCode {
    spool::telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("spool: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let spool = match spool::Spool::start(config).await {
            Ok(spool) => spool,
            Err(e) => {
                tracing::error!(error = %e, "spool could not start");
                eprintln!("spool: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        spool.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
