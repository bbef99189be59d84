//! No secret reaches a log line, at any level, nor `check-config`'s output:
//! a canary in every place a secret can be (the database URL, the admin
//! token, `Authorization`, `Cookie`, `X-Api-Key`; a target URL's user-info
//! is refused at load, without printing it), spool run at trace level, and
//! the whole log searched.

mod support;

use support::process::spool_binary;
use support::{Answer, FakeTarget, SpoolProcess, TestPg};

const CANARY: &str = "canary7f3a";

fn secret(place: &str) -> String {
    format!("{CANARY}-{place}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_at_trace_level() {
    let pg = TestPg::start().await;
    let dir = tempfile::tempdir().unwrap();
    let failing = FakeTarget::start(|_, _| Answer::Status(500)).await;
    let healthy = FakeTarget::healthy().await;
    let database_url = format!("{} password={}", pg.url, secret("database-url"));
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[database]
url = "{}"
allow_non_durable = true

[log]
level = "trace"
format = "json"

[[routes]]
name = "orders"
timeout_ms = 500
forward_headers = ["authorization", "cookie", "x-api-key", "content-type"]
  [routes.retry]
  initial_ms = 50
  max_ms = 100
  [[routes.targets]]
  name = "sink"
  url = "{}"
  [[routes.targets]]
  name = "broken"
  url = "{}"

[[routes]]
name = "plain"
  [[routes.targets]]
  name = "sink"
  url = "{}"
"#,
        database_url.replace('\\', "\\\\").replace('"', "\\\""),
        healthy.url(),
        failing.url(),
        healthy.url(),
    );
    let token = secret("admin-token");
    let spool =
        SpoolProcess::start_with_env(dir.path(), &config, &[("SPOOL_ADMIN_TOKEN", &token)]).await;
    let client = spool.client();
    let headers = [
        (
            "authorization",
            format!("Bearer {}", secret("authorization")),
        ),
        ("cookie", format!("session={}", secret("cookie"))),
        ("x-api-key", secret("x-api-key")),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    for route in ["orders", "plain"] {
        let reply = client
            .send(http::Method::POST, &format!("/{route}/x"), &headers, "{}")
            .await;
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        // A read through, with the same credentials.
        client
            .send(http::Method::GET, &format!("/{route}/x"), &headers, "")
            .await;
    }
    for offered in [Some(token.as_str()), Some("wrong"), None] {
        client
            .admin(http::Method::GET, "/admin/routes", offered, "")
            .await;
    }
    let wrong = format!("Bearer {}", secret("wrong-token"));
    client
        .try_send(
            spool.admin,
            http::Method::GET,
            "/admin/routes",
            &[("authorization", wrong.as_str())],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eventually!(!healthy.received().is_empty() && failing.received().len() >= 2);
    let log = spool.log_text();
    assert!(log.lines().count() > 50, "trace logging is not on:\n{log}");
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(CANARY)).collect();
    assert!(
        leaks.is_empty(),
        "secrets in the log:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn check_config_never_prints_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.toml");
    let cases = [
        // Invalid elsewhere, so the URL is printed next to an error.
        format!(
            "[database]\nurl = \"postgres://u:{}@db.example/x?sslmode=sometimes\"\n",
            secret("url")
        ),
        format!(
            "[database]\nurl = \"host=db.example password={} sslmode=sometimes\"\n",
            secret("keyword")
        ),
        format!(
            "[[routes]]\nname = \"r\"\n  [[routes.targets]]\n  name = \"t\"\n  url = \"http://u:{}@127.0.0.1:9/?q=1\"\n",
            secret("target")
        ),
        // User-info alone is refused, and not printed either.
        format!(
            "[[routes]]\nname = \"r\"\n  [[routes.targets]]\n  name = \"t\"\n  url = \"http://u:{}@127.0.0.1:9/\"\n",
            secret("userinfo")
        ),
    ];
    for text in cases {
        std::fs::write(&path, &text).unwrap();
        for command in ["check-config", "run"] {
            let out = std::process::Command::new(spool_binary())
                .args(["--config", path.to_str().unwrap(), command])
                .env("SPOOL_ADMIN_TOKEN", secret("token"))
                .output()
                .unwrap();
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{text} was accepted");
            assert!(
                !printed.contains(CANARY),
                "{command} printed a secret for {text}:\n{printed}"
            );
        }
    }
}
