//! Starting spool: configuration errors name their key, migrations are safe
//! to race, and the embedded default starts and stops its own Postgres.

mod support;

use std::process::Command;
use std::time::Duration;

use support::process::spool_binary;
use support::{SpoolProcess, TestPg, config_text};

fn run_spool(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(spool_binary());
    command.args(args).env_remove("SPOOL_DATABASE_URL");
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn help_explains_every_flag() {
    let (code, text) = run_spool(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "check-config",
        "ctl",
        "SPOOL_DATABASE_URL",
        "--version",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn configuration_errors_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.toml");
    // (file text, environment, what the error must name)
    let cases: &[Case] = &[
        ("[server]\nlisen = \"127.0.0.1:1\"\n", &[], "server.lisen"),
        ("[ingest]\nbatch_max = \"many\"\n", &[], "ingest.batch_max"),
        (
            "[[routes]]\nname = \"a\"\ntargets = []\n",
            &[],
            "routes[0].targets",
        ),
        (
            "",
            &[("SPOOL_SERVER__MAX_BODY_BYTES", "huge")],
            "SPOOL_SERVER__MAX_BODY_BYTES",
        ),
        ("", &[("SPOOL_LISTEN", "not-an-address")], "server.listen"),
        (
            "[database]\nurl = \"postgres://u@db.example/x?sslmode=require\"\nca_file = \"/nonexistent/ca.pem\"\n",
            &[],
            "database.ca_file",
        ),
        (
            "[database]\nurl = \"postgres://u:secret@db.example/x?sslmode=sometimes\"\n",
            &[],
            "database.url",
        ),
        (
            "",
            &[("SPOOL_ADMIN_LISTEN", "0.0.0.0:4001")],
            "server.admin_token",
        ),
        ("", &[("SPOOL_NO_SUCH_THING", "1")], "SPOOL_NO_SUCH_THING"),
    ];
    for (text, envs, key) in cases {
        std::fs::write(&path, text).unwrap();
        let (code, out) = run_spool(&["--config", path.to_str().unwrap(), "check-config"], envs);
        assert_eq!(code, 2, "{text:?} {envs:?} was accepted:\n{out}");
        assert!(
            out.contains(key),
            "error for {text:?} {envs:?} does not name {key}:\n{out}"
        );
    }
    let (code, out) = run_spool(
        &["--config", "/nonexistent/spool.toml", "check-config"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(out.contains("/nonexistent/spool.toml"), "{out}");
}

#[test]
fn the_design_example_is_a_valid_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/spool.toml");
    let (code, out) = run_spool(&["--config", example, "check-config"], &[]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spools_starting_together_on_an_empty_database_both_come_up() {
    let pg = TestPg::start().await;
    let config = || spool::config::from_toml(&config_text(&pg.url, "")).unwrap();
    let (a, b) = tokio::join!(spool::Spool::start(config()), spool::Spool::start(config()));
    let (a, b) = (a.expect("first spool"), b.expect("second spool"));
    // Each migration applied once, although both spools raced for them.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .filter(|entry| {
            let path = entry.as_ref().unwrap().path();
            path.extension().is_some_and(|ext| ext == "sql")
        })
        .count() as i64;
    assert_eq!(
        pg.scalar("SELECT count(*) FROM spool_schema_migrations")
            .await,
        migrations
    );
    assert_eq!(
        pg.scalar("SELECT count(DISTINCT version) FROM spool_schema_migrations")
            .await,
        migrations
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn embedded_default_starts_and_stops_its_own_postgres() {
    let dir = tempfile::Builder::new()
        .prefix("spool-embedded-")
        .tempdir_in("/tmp")
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // No [database] url: spool runs Postgres in .spool/postgres under its directory.
    let config = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[log]
level = "info"
"#
    .to_owned()
        + support::ORDERS_ROUTE;
    let mut spool = SpoolProcess::start(dir.path(), &config).await;
    assert_eq!(spool.client().post("/orders/x", "{}").await.status, 202);
    let pg_dir = dir.path().join(".spool/postgres");
    let pid_file = pg_dir.join("data/postmaster.pid");
    assert!(
        pid_file.exists(),
        "embedded Postgres not in the state directory"
    );
    let log = spool.log_text();
    assert!(
        log.contains("embedded Postgres started") && log.contains(".spool/postgres"),
        "{log}"
    );

    assert!(
        spool.terminate(),
        "spool did not exit cleanly:\n{}",
        spool.log_text()
    );
    assert!(
        !pid_file.exists(),
        "embedded Postgres still running after spool stopped"
    );

    // The cluster is kept: a second start reuses it and finds the write.
    let spool = SpoolProcess::start(dir.path(), &config).await;
    assert_eq!(spool.client().post("/orders/x", "{}").await.status, 202);
    let url = format!(
        "host={} port=5432 user=postgres dbname=postgres",
        pg_dir.display()
    );
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let count: i64 = db
        .query_one("SELECT count(*) FROM spool_message", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    drop(spool);
    // Killed (not stopped) spools leave Postgres running; stop it for the next test.
    let pg = spool::embedded_pg::EmbeddedPostgres::new(
        &pg_dir,
        None,
        spool::embedded_pg::Durability::Durable,
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), pg.stop("immediate"))
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn missing_postgres_binaries_name_the_package() {
    let (code, out) = run_spool(
        &["--config", "/dev/null"],
        &[
            ("SPOOL_DATABASE__EMBEDDED_BIN_DIR", "/nonexistent"),
            ("SPOOL_LOG__FORMAT", "text"),
        ],
    );
    assert_ne!(code, 0);
    assert!(out.contains("apt-get install postgresql"), "{out}");
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"x\"\nbogus = 1\n[ingest]\nbatch_max = \"many\"\n[loggg]\nlevel = \"info\"\n[[routes]]\nname = \"r\"\n",
    )
    .unwrap();
    let (code, out) = run_spool(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, 2, "{out}");
    for key in [
        "`server.listen`",
        "`server.bogus`",
        "`ingest.batch_max`",
        "`loggg`",
        "`routes[0]`: missing field `targets`",
    ] {
        assert!(out.contains(key), "{key} not reported:\n{out}");
    }
}

#[test]
fn check_config_without_a_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(spool_binary())
        .arg("check-config")
        .current_dir(dir.path())
        .env_remove("SPOOL_DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("no configuration file spool.toml"), "{text}");
}
