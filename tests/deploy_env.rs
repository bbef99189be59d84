//! spool as Kubernetes starts it: beside the variables Kubernetes injects
//! for a Service named `spool`, with its secrets read from mounted files.

mod support;

use support::{SpoolProcess, TestPg};

#[tokio::test]
async fn starts_with_service_variables_and_secrets_from_files() {
    let pg = TestPg::start().await;
    let dir = tempfile::tempdir().unwrap();
    // As a Secret volume holds them: one file per key, often with a newline.
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, format!("{}\n", pg.url)).unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "t0ken-from-a-file\n").unwrap();
    // No database url in the file: it comes only from the Secret's file.
    let config = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[database]
# The test cluster runs with fsync off, for speed.
allow_non_durable = true
[log]
level = "warn,spool=debug"
format = "text"
"#
    .to_owned()
        + support::ORDERS_ROUTE;
    let spool = SpoolProcess::start_with_env(
        dir.path(),
        &config,
        &[
            ("SPOOL_PORT", "tcp://10.0.0.1:4000"),
            ("SPOOL_PORT_4000_TCP", "tcp://10.0.0.1:4000"),
            ("SPOOL_PORT_4000_TCP_ADDR", "10.0.0.1"),
            ("SPOOL_PORT_4000_TCP_PORT", "4000"),
            ("SPOOL_PORT_4000_TCP_PROTO", "tcp"),
            ("SPOOL_SERVICE_HOST", "10.0.0.1"),
            ("SPOOL_SERVICE_PORT", "4000"),
            ("SPOOL_SERVICE_PORT_DATA", "4000"),
            ("SPOOL_DATABASE_URL_FILE", url_file.to_str().unwrap()),
            ("SPOOL_ADMIN_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    )
    .await;
    let client = spool.client();
    assert_eq!(client.post("/orders/1", "{}").await.status, 202);
    // The write is in the database the file named: nothing embedded started.
    assert_eq!(pg.scalar("SELECT count(*) FROM spool_message").await, 1);
    assert!(
        !dir.path().join(".spool").exists(),
        "an embedded Postgres was started"
    );

    // The token from its file guards the admin calls.
    let routes = |token| client.admin(http::Method::GET, "/admin/routes", token, "");
    assert_eq!(routes(None).await.status, 401);
    assert_eq!(routes(Some("t0ken-from-a-file")).await.status, 200);

    let log = spool.log_text();
    assert!(
        log.contains("SPOOL_PORT_4000_TCP_ADDR") && log.contains("ignored"),
        "the ignored variables are not in the debug log:\n{log}"
    );
    assert!(
        !log.contains("t0ken-from-a-file"),
        "the token was logged:\n{log}"
    );
}

#[test]
fn the_images_setting_requires_a_database_url() {
    // The Dockerfile sets SPOOL_DATABASE__EMBEDDED=false: no URL is an error
    // naming the key and the variables, not an attempt at an embedded Postgres.
    let out = std::process::Command::new(support::process::spool_binary())
        .args(["--config", "/dev/null", "run"])
        .env_remove("SPOOL_DATABASE_URL")
        .env_remove("SPOOL_DATABASE_URL_FILE")
        .env("SPOOL_DATABASE__EMBEDDED", "false")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("database.url"), "{stderr}");
    assert!(stderr.contains("SPOOL_DATABASE_URL_FILE"), "{stderr}");
}
