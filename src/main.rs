//! The `spool` command: run the sidecar, check a configuration, or speak to
//! a running spool's admin port (`spool ctl`).

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
    /// Ask a running spool's admin port (the one in the configuration,
    /// with its token) about its routes, flow control and dead letters.
    Ctl {
        /// The admin port's base URL, if not the configuration's
        /// `server.admin_listen`.
        #[arg(long)]
        admin: Option<String>,
        /// The bearer token, if not the configuration's `server.admin_token`
        /// (SPOOL_ADMIN_TOKEN).
        #[arg(long)]
        token: Option<String>,
        #[command(subcommand)]
        action: spool::ctl::Action,
    },
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
            // Checking a file that is not there checks nothing: say so.
            if !cli.config.exists() {
                eprintln!(
                    "spool: no configuration file {} (name one with --config); \
                     the defaults and SPOOL_* variables alone give no routes",
                    cli.config.display()
                );
                return ExitCode::from(2);
            }
            let routes = config.routes.len();
            println!(
                "{}: configuration is valid ({routes} route{})",
                cli.config.display(),
                if routes == 1 { "" } else { "s" }
            );
            if routes == 0 {
                println!("note: no routes are configured, so spool accepts no writes or reads");
            }
            ExitCode::SUCCESS
        }
        Command::Run => run(config),
        Command::Ctl {
            admin,
            token,
            action,
        } => ctl(&config, admin, token, action),
    }
}

fn ctl(
    config: &spool::config::Config,
    admin: Option<String>,
    token: Option<String>,
    action: spool::ctl::Action,
) -> ExitCode {
    let base = admin.unwrap_or_else(|| {
        let mut addr = config.server.admin_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    });
    let token = token.or_else(|| config.server.admin_token.clone());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("spool ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(spool::ctl::run(
        base.trim_end_matches('/'),
        token.as_deref(),
        action,
    )) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spool ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: spool::config::Config) -> ExitCode {
    spool::telemetry::init_logging(&config.log);
    for var in &config.ignored_vars {
        tracing::debug!(var, "ignored: a variable Kubernetes sets for a Service");
    }
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
