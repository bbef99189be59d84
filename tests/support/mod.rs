//! Test harness: a real throwaway Postgres per test, spool in-process or as
//! a child process, an HTTP client, and `assert_eventually!`.
#![allow(dead_code, unused_imports)]

pub mod http;
pub mod pg;
pub mod pg_proxy;
pub mod process;
pub mod target;

use std::time::Duration;

pub use self::http::{Reply, TestClient};
pub use self::pg::TestPg;
pub use self::process::SpoolProcess;
pub use self::target::{Answer, FakeTarget, Received};

/// One route, `orders`, with two targets that nothing listens on (writes
/// are only stored in these tests).
pub const ORDERS_ROUTE: &str = r#"
[[routes]]
name = "orders"
  [[routes.targets]]
  name = "billing"
  url = "http://127.0.0.1:9"
  [[routes.targets]]
  name = "analytics"
  url = "http://127.0.0.1:9"
"#;

/// A spool config for `url`, listening on free loopback ports, with the
/// `orders` route, plus `extra`.
pub fn config_text(url: &str, extra: &str) -> String {
    base_config(url, &format!("{ORDERS_ROUTE}\n{extra}"))
}

/// A spool config for `url`, listening on free loopback ports, with only
/// the routes (and other sections) in `rest`.
pub fn base_config(url: &str, rest: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body_bytes = 65536

[database]
url = "{}"
# The test clusters run with fsync off, for speed.
allow_non_durable = true

[ingest]
commit_timeout_ms = 1000

[dispatch]
poll_interval_ms = 200
lease_margin_ms = 1000

[log]
level = "warn"
format = "text"
{rest}
"#,
        url.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// A started spool on a fresh Postgres, with a client for it.
pub struct TestEnv {
    pub pg: TestPg,
    pub spool: Option<spool::Spool>,
    pub client: TestClient,
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    pub async fn start_with(extra: &str) -> Self {
        Self::start_config(|url| config_text(url, extra)).await
    }

    /// A spool whose whole config is `base_config(url, rest)`.
    pub async fn start_routes(rest: &str) -> Self {
        Self::start_config(|url| base_config(url, rest)).await
    }

    /// A spool whose whole config is `text(url)`.
    pub async fn start_config(text: impl FnOnce(&str) -> String) -> Self {
        Self::start_on(TestPg::start().await, text).await
    }

    /// A spool on `pg` whose whole config is `text(pg's url)`.
    pub async fn start_on(pg: TestPg, text: impl FnOnce(&str) -> String) -> Self {
        let config = spool::config::from_toml(&text(&pg.url)).expect("test config is valid");
        let spool = spool::Spool::start(config).await.expect("spool starts");
        let client = TestClient::new(spool.data_addr, spool.admin_addr);
        TestEnv {
            pg,
            spool: Some(spool),
            client,
        }
    }

    /// The live breaker and flow control of one configured target.
    pub fn target(&self, route: &str, target: &str) -> spool::dispatch::TargetHandle {
        let spool = self.spool.as_ref().expect("spool running");
        spool.target(route, target).expect("target configured")
    }

    pub async fn stop(mut self) {
        if let Some(spool) = self.spool.take() {
            spool.shutdown().await;
        }
    }
}

/// The config `text` with `line` added to its `[section]` table.
pub fn set_in(text: &str, section: &str, line: &str) -> String {
    let header = format!("[{section}]\n");
    assert!(text.contains(&header), "the config has no [{section}]");
    text.replacen(&header, &format!("{header}{line}\n"), 1)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that an async condition becomes true within a timeout (10 s by default).
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        $crate::assert_eventually!($cond, std::time::Duration::from_secs(10))
    };
    ($cond:expr, $timeout:expr) => {
        assert!(
            $crate::support::eventually($timeout, || async { $cond }).await,
            "condition did not become true within {:?}: {}",
            $timeout,
            stringify!($cond)
        )
    };
}

/// A `[[routes]]` table named `name` sending to `targets`, with `extra`
/// lines (retry, breaker, rate tables) appended.
pub fn route(name: &str, targets: &[(&str, &FakeTarget)], extra: &str) -> String {
    let mut text = format!("\n[[routes]]\nname = \"{name}\"\ntimeout_ms = 1000\n");
    for (target, fake) in targets {
        text.push_str(&format!(
            "  [[routes.targets]]\n  name = \"{target}\"\n  url = \"{}\"\n",
            fake.url()
        ));
    }
    text.push_str(extra);
    text
}
