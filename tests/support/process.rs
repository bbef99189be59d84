//! spool as a child process: for kill -9, exit codes and the embedded default.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::TestClient;

pub struct SpoolProcess {
    pub child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn spool_binary() -> &'static str {
    env!("CARGO_BIN_EXE_spool")
}

impl SpoolProcess {
    /// Starts `spool --config <dir>/spool.toml` with `config` (whose listen
    /// addresses are replaced by free ports) and waits until it is ready.
    pub async fn start(dir: &Path, config: &str) -> Self {
        Self::start_with_env(dir, config, &[]).await
    }

    /// As `start`, with `envs` added to spool's environment.
    pub async fn start_with_env(dir: &Path, config: &str, envs: &[(&str, &str)]) -> Self {
        let data = free_port();
        let admin = free_port();
        let config = config
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{data}\""),
                1,
            )
            .replacen(
                "admin_listen = \"127.0.0.1:0\"",
                &format!("admin_listen = \"{admin}\""),
                1,
            );
        let path = dir.join("spool.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("spool-{}.log", uuid::Uuid::now_v7()));
        let child = Command::new(spool_binary())
            .arg("--config")
            .arg(&path)
            .envs(envs.iter().copied())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn spool");
        let process = SpoolProcess {
            child,
            data,
            admin,
            log,
        };
        process.wait_ready().await;
        process
    }

    pub fn client(&self) -> TestClient {
        TestClient::new(self.data, self.admin)
    }

    async fn wait_ready(&self) {
        let client = self.client();
        let ready = super::eventually(Duration::from_secs(60), || async {
            client
                .try_send(
                    self.admin,
                    http::Method::GET,
                    "/readyz",
                    &[],
                    bytes::Bytes::new(),
                )
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        assert!(
            ready,
            "spool did not become ready; its log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap().success()
    }
}

impl Drop for SpoolProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
