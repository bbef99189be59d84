//! A throwaway Postgres cluster per test, from the machine's binaries, that
//! tests can stop, crash, freeze and thaw.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use spool::embedded_pg::{Durability, EmbeddedPostgres};
use tempfile::TempDir;

pub struct TestPg {
    pub pg: EmbeddedPostgres,
    pub url: String,
    _dir: TempDir,
}

impl TestPg {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("spool-test-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // The postgres user (when tests run as root) must reach the cluster.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pg = EmbeddedPostgres::new(&dir.path().join("pg"), None, Durability::Throwaway)
            .expect("PostgreSQL binaries (apt-get install postgresql)");
        let url = pg.start().await.expect("test Postgres starts");
        TestPg { pg, url, _dir: dir }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to test Postgres");
        tokio::spawn(connection);
        client
    }

    /// A pool as spool makes it, for calling the outbox's functions.
    pub fn pool(&self) -> deadpool_postgres::Pool {
        let database = spool::config::DatabaseConfig::default();
        let address = spool::outbox::DbAddress::parse(&self.url, &database).unwrap();
        spool::outbox::connect_pool(&address, &database).unwrap()
    }

    /// One number from `sql` (a count, usually).
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// A crash: `pg_ctl stop -m immediate`, recovered from at the next start.
    pub async fn crash(&self) {
        self.pg.stop("immediate").await.expect("immediate stop");
    }

    pub async fn restart(&self) {
        self.pg.start().await.expect("restart");
    }

    /// SIGSTOP to the postmaster and every backend: connections are
    /// accepted by the kernel but nothing answers.
    pub fn freeze(&self) {
        // The postmaster first, so that no backend is forked after the scan.
        let postmaster = self.pg.postmaster_pid().expect("postmaster running");
        signal_cluster(&[postmaster], "STOP");
        signal_cluster(&children_of(postmaster), "STOP");
    }

    pub fn thaw(&self) {
        signal_cluster(&self.processes(), "CONT");
    }

    fn processes(&self) -> Vec<u32> {
        let pid = self.pg.postmaster_pid().expect("postmaster running");
        let mut pids = vec![pid];
        pids.extend(children_of(pid));
        pids
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        // Immediate shutdown (SIGQUIT), after a thaw in case a test froze it.
        if let Some(pid) = self.pg.postmaster_pid() {
            let mut pids = vec![pid];
            pids.extend(children_of(pid));
            signal_cluster(&pids, "CONT");
            signal_cluster(&[pid], "QUIT");
        }
    }
}

fn signal_cluster(pids: &[u32], signal: &str) {
    let mut kill = Command::new("kill");
    kill.arg(format!("-{signal}"));
    kill.args(pids.iter().map(u32::to_string));
    let _ = kill.status();
}

/// Direct children of `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The fields after the parenthesised command name: state, ppid.
                    let after = &stat[stat.rfind(')')? + 2..];
                    after.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
