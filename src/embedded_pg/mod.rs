//! The embedded default: with no database URL, spool runs its own Postgres
//! from the machine's binaries, in its state directory.
//!
//! The cluster outlives a crashed spool (crash-only: a restarted spool finds
//! it running and reuses it) and is stopped on a clean exit. As root, every
//! Postgres program runs as the `postgres` user, since Postgres refuses root.

mod binaries;

use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

pub use binaries::BinariesNotFound;

/// The OS user Postgres runs as when spool is root.
const POSTGRES_USER: &str = "postgres";

/// Longest Unix socket path the kernel accepts (sun_path less the NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(transparent)]
    NotFound(#[from] BinariesNotFound),
    #[error("{action} in {dir}: {detail}")]
    Command {
        action: &'static str,
        dir: PathBuf,
        detail: String,
    },
    #[error("{0}")]
    Setup(String),
}

/// How tests and spool differ: tests trade durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on: what spool's embedded default uses.
    Durable,
    /// fsync off, small buffers: for throwaway test clusters.
    Throwaway,
}

/// A Postgres cluster in `dir` (data in `dir/data`, socket and log in `dir`).
#[derive(Debug, Clone)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    bin_dir: PathBuf,
    as_postgres_user: bool,
    durability: Durability,
}

impl EmbeddedPostgres {
    /// Locates the binaries; touches nothing yet.
    pub fn new(
        dir: &Path,
        bin_dir: Option<&Path>,
        durability: Durability,
    ) -> Result<Self, EmbeddedError> {
        let bin_dir = binaries::locate(bin_dir)?;
        let dir = std::path::absolute(dir)
            .map_err(|e| EmbeddedError::Setup(format!("{}: {e}", dir.display())))?;
        let socket = dir.join(".s.PGSQL.5432");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EmbeddedError::Setup(format!(
                "database.embedded_dir {} is too long for a Unix socket path ({} bytes at most); choose a shorter one",
                dir.display(),
                MAX_SOCKET_PATH - ".s.PGSQL.5432".len() - 1
            )));
        }
        Ok(EmbeddedPostgres {
            dir,
            bin_dir,
            as_postgres_user: running_as_root(),
            durability,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A connection string for the cluster's Unix socket.
    pub fn url(&self) -> String {
        let host = self
            .dir
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('\'', "\\'");
        format!("host='{host}' port=5432 user=postgres dbname=postgres")
    }

    /// Creates the cluster if there is none, and starts it unless it is
    /// already running (left by a spool that was killed). Returns the URL.
    pub async fn start(&self) -> Result<String, EmbeddedError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            EmbeddedError::Setup(format!("cannot create {}: {e}", self.dir.display()))
        })?;
        if self.as_postgres_user {
            // As root itself: the postgres user may not own the parent.
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&self.dir);
            self.run(chown, "chown", "giving the directory to the postgres user")
                .await?;
        }
        if !self.data_dir().join("PG_VERSION").exists() {
            self.initdb().await?;
        }
        self.write_settings()?;
        if self.is_running().await {
            tracing::info!(dir = %self.dir.display(), "embedded Postgres already running; reusing it");
        } else {
            self.pg_ctl(
                &["start", "-w", "-t", "60", "-l", &self.log_file()],
                "starting Postgres",
            )
            .await?;
            tracing::info!(dir = %self.dir.display(), log = %self.log_file(), "embedded Postgres started");
        }
        Ok(self.url())
    }

    /// Stops the cluster: `fast` rolls back open transactions and exits
    /// cleanly; `immediate` is a crash, recovered from on the next start.
    pub async fn stop(&self, mode: &str) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", mode], "stopping Postgres")
            .await
    }

    pub async fn is_running(&self) -> bool {
        let data = self.data_dir().display().to_string();
        self.postgres_command("pg_ctl", &["status", "-D", &data])
            .output()
            .await
            .is_ok_and(|out| out.status.success())
    }

    /// The postmaster's process id, from its pid file.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    async fn initdb(&self) -> Result<(), EmbeddedError> {
        let data = self.data_dir().display().to_string();
        let mut args = vec![
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ];
        if self.durability == Durability::Throwaway {
            args.push("--no-sync");
        }
        self.run(
            self.postgres_command("initdb", &args),
            "initdb",
            "creating the Postgres cluster",
        )
        .await?;
        tracing::info!(dir = %data, "embedded Postgres cluster created");
        Ok(())
    }

    /// spool's settings, rewritten at every start so that they follow the
    /// directory if it moves: Unix socket only, no TCP port.
    fn write_settings(&self) -> Result<(), EmbeddedError> {
        let mut settings = format!(
            "# Written by spool at every start.\nlisten_addresses = ''\nunix_socket_directories = '{}'\nport = 5432\nmax_connections = 200\n",
            self.dir.display().to_string().replace('\'', "''")
        );
        if self.durability == Durability::Throwaway {
            settings.push_str("fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\n");
        }
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .map_err(|e| EmbeddedError::Setup(format!("cannot read {}: {e}", conf.display())))?;
        let include = "include_if_exists = 'spool.conf'";
        if !text.contains(include) {
            text.push_str(&format!("\n{include}\n"));
            std::fs::write(&conf, text).map_err(|e| {
                EmbeddedError::Setup(format!("cannot write {}: {e}", conf.display()))
            })?;
        }
        let spool_conf = self.data_dir().join("spool.conf");
        std::fs::write(&spool_conf, settings).map_err(|e| {
            EmbeddedError::Setup(format!("cannot write {}: {e}", spool_conf.display()))
        })
    }

    fn log_file(&self) -> String {
        self.dir.join("postgres.log").display().to_string()
    }

    fn bin(&self, name: &str) -> String {
        self.bin_dir.join(name).display().to_string()
    }

    async fn pg_ctl(&self, args: &[&str], action: &'static str) -> Result<(), EmbeddedError> {
        let data = self.data_dir().display().to_string();
        let mut all = vec!["-D", &data];
        all.extend_from_slice(args);
        self.run(self.postgres_command("pg_ctl", &all), "pg_ctl", action)
            .await
            .map(drop)
    }

    /// Runs `command` (named `program` in errors) to its end.
    async fn run(
        &self,
        mut command: Command,
        program: &str,
        action: &'static str,
    ) -> Result<Output, EmbeddedError> {
        command
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = command.output().await.map_err(|e| EmbeddedError::Command {
            action,
            dir: self.dir.clone(),
            detail: format!("cannot run {program}: {e}"),
        })?;
        if output.status.success() {
            return Ok(output);
        }
        let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        Err(EmbeddedError::Command {
            action,
            dir: self.dir.clone(),
            detail: format!(
                "{program} exited with {}: {detail} (see {})",
                output.status,
                self.log_file()
            ),
        })
    }

    /// One of the Postgres programs with `args`, as the postgres user when
    /// spool is root (Postgres refuses to run as root).
    fn postgres_command(&self, program: &str, args: &[&str]) -> Command {
        let path = self.bin(program);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", POSTGRES_USER, "--", &path]);
            c
        } else {
            Command::new(&path)
        };
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }
}

/// Whether this process is root, read without unsafe code: /proc/self is
/// owned by the process's effective user.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
