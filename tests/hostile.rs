//! Hostile input on both ports, grouped: each case sends bytes a careless
//! or malicious client could send and asserts the status, the problem type,
//! that nothing was stored, and for accepted input exactly what the target
//! received.

mod support;

#[path = "hostile/admin.rs"]
mod admin;
#[path = "hostile/browser.rs"]
mod browser;
#[path = "hostile/framing.rs"]
mod framing;
#[path = "hostile/headers.rs"]
mod headers;
#[path = "hostile/limits.rs"]
mod limits;
#[path = "hostile/paths.rs"]
mod paths;

use std::net::SocketAddr;
use std::time::Duration;

use support::{FakeTarget, TestEnv, base_config, route, set_in};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer read off a raw socket.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The problem type's last part, when the answer is problem JSON.
    pub fn problem_type(&self) -> Option<String> {
        if self.header("content-type") != Some("application/problem+json") {
            return None;
        }
        let body: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        let kind = body["type"].as_str()?;
        Some(kind.rsplit(':').next()?.to_owned())
    }
}

/// Sends `bytes` on a fresh connection and reads until the server closes
/// it (or 10 s pass); the request should say `connection: close`.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawAnswer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    parse_answer(&answer)
}

pub fn parse_answer(bytes: &[u8]) -> RawAnswer {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawAnswer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// A spool with route `orders` sending to a healthy target whose URL has a
/// base path, `/base/`, so that escaping it would show.
pub struct Hostile {
    pub env: TestEnv,
    pub target: FakeTarget,
    /// Writes this test expects the target to receive (`delivered`).
    expected: std::sync::atomic::AtomicUsize,
}

impl Hostile {
    pub async fn start() -> Self {
        Self::start_with("", "").await
    }

    /// `route_extra` goes into the route's table, `extra` after it.
    pub async fn start_with(route_extra: &str, extra: &str) -> Self {
        Self::start_full(route_extra, extra, "").await
    }

    /// Also with `server` lines added to `[server]`.
    pub async fn start_full(route_extra: &str, extra: &str, server: &str) -> Self {
        let target = FakeTarget::healthy().await;
        let base = format!("{}/base/", target.url());
        // Route keys go before the targets' tables.
        let routes = route("orders", &[("billing", &target)], "")
            .replace(&target.url(), &base)
            .replacen(
                "timeout_ms = 1000\n",
                &format!("timeout_ms = 1000\n{route_extra}"),
                1,
            );
        let rest = format!("{routes}\n{extra}");
        let env =
            TestEnv::start_config(|url| set_in(&base_config(url, &rest), "server", server)).await;
        Hostile {
            env,
            target,
            expected: Default::default(),
        }
    }

    pub async fn messages(&self) -> i64 {
        self.env
            .pg
            .scalar("SELECT count(*) FROM spool_message")
            .await
    }

    /// Asserts that `request` is refused with `status` and problem `kind`
    /// and leaves no message behind.
    pub async fn refused(
        &self,
        case: &str,
        addr: SocketAddr,
        request: &[u8],
        status: u16,
        kind: &str,
    ) {
        let before = self.messages().await;
        let answer = send_raw(addr, request).await;
        assert_eq!(answer.status, status, "{case}: {answer:?}");
        assert_eq!(
            answer.problem_type().as_deref(),
            Some(kind),
            "{case}: {answer:?}"
        );
        assert_eq!(
            self.messages().await,
            before,
            "{case}: a message was stored"
        );
    }

    /// Asserts that `request` is accepted (202) on the data port; returns
    /// what the target received for it.
    /// Stops spool once every refused write has had the time to reach the
    /// target had it been stored (a stored write can be delivered and its
    /// row deleted before a count of rows sees it): the target must have
    /// received exactly the writes the test accepted.
    pub async fn stop(self) {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let received = self
            .target
            .received()
            .iter()
            .filter(|r| r.method != "GET" && r.method != "HEAD")
            .count();
        let expected = self.expected.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            received, expected,
            "the target received writes that were refused"
        );
        self.env.stop().await;
    }

    /// Counts a write the test sent itself as one the target should get.
    pub fn expect_write(&self) {
        self.expected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn delivered(&self, case: &str, request: &[u8]) -> support::Received {
        self.expected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = send_raw(self.env.client.data, request).await;
        assert_eq!(answer.status, 202, "{case}: {answer:?}");
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        let id: uuid::Uuid = body["id"].as_str().unwrap().parse().unwrap();
        let mut found = None;
        for _ in 0..200 {
            found = self
                .target
                .received()
                .into_iter()
                .find(|r| r.message_id() == id);
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        found.unwrap_or_else(|| panic!("{case}: not delivered"))
    }
}

/// A write request with `connection: close` and a body.
pub fn write(path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A GET with `connection: close`.
pub fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n{headers}\r\n")
        .into_bytes()
}
