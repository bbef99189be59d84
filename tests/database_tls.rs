//! TLS to Postgres: with `sslmode=require` spool reaches a real Postgres
//! (ssl = on, a certificate from a test CA) over TLS, pool and LISTEN
//! connection alike, and refuses a server whose certificate it cannot
//! verify.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{FakeTarget, TestEnv, TestPg, base_config, route};

/// A test Postgres serving TLS on a loopback address of its own (so that
/// tests side by side do not share port 5432), and its CA's PEM file.
struct TlsPg {
    pg: TestPg,
    host: Ipv4Addr,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsPg {
    async fn start() -> Self {
        let pg = TestPg::start().await;
        let host = Ipv4Addr::new(127, fastrand::u8(10..250), fastrand::u8(1..250), 2);
        let (ca_pem, cert_pem, key_pem) = certificates(&host.to_string());
        let data = pg.pg.data_dir();
        let cert_file = data.join("spool-test.crt");
        let key_file = data.join("spool-test.key");
        std::fs::write(&cert_file, cert_pem).unwrap();
        std::fs::write(&key_file, key_pem).unwrap();
        for file in [&cert_file, &key_file] {
            give_to_postgres(file);
        }
        let settings = [
            ("ssl", "on".to_owned()),
            ("ssl_cert_file", cert_file.display().to_string()),
            ("ssl_key_file", key_file.display().to_string()),
            ("listen_addresses", host.to_string()),
        ];
        let client = pg.client().await;
        for (name, value) in settings {
            client
                .execute(&format!("ALTER SYSTEM SET {name} = '{value}'"), &[])
                .await
                .unwrap();
        }
        drop(client);
        pg.pg.stop("fast").await.unwrap();
        pg.restart().await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        TlsPg {
            pg,
            host,
            ca_file,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@{}:5432/postgres?sslmode=require",
            self.host
        )
    }
}

/// (CA certificate, server certificate for `host`, server key), as PEM.
fn certificates(host: &str) -> (String, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "spool test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    (ca_cert.pem(), server_cert.pem(), server_key.serialize_pem())
}

/// Postgres reads its key only if the postgres user owns it, mode 0600.
fn give_to_postgres(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // As root the cluster runs as postgres; otherwise as this user, who
    // owns the file already.
    let _ = Command::new("chown")
        .arg("postgres:postgres")
        .arg(file)
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_writes_and_delivers_over_verified_tls() {
    let tls = TlsPg::start().await;
    let target = FakeTarget::healthy().await;
    let rest = route("orders", &[("t", &target)], "");
    let ca_line = format!("ca_file = \"{}\"", tls.ca_file.display());
    let url = tls.url();
    let env = TestEnv::start_on(tls.pg, |_| {
        support::set_in(&base_config(&url, &rest), "database", &ca_line)
    })
    .await;

    assert_eq!(env.client.post("/orders/x", "{}").await.status, 202);
    assert_eventually!(target.received().len() == 1);
    // Every connection spool holds is encrypted: the pool's and LISTEN's.
    let connections = "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                       WHERE a.application_name = 'spool'";
    assert!(env.pg.scalar(&format!("{connections} AND s.ssl")).await >= 2);
    assert_eq!(
        env.pg.scalar(&format!("{connections} AND NOT s.ssl")).await,
        0
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_no_trusted_ca_signed_is_refused() {
    let tls = TlsPg::start().await;
    let database = spool::config::DatabaseConfig::default();
    // libpq's verify-full reads as require: verified, hostname included.
    let url = tls.url().replace("require", "verify-full");
    let address = spool::outbox::DbAddress::parse(&url, &database).unwrap();
    let pool = spool::outbox::connect_pool(&address, &database).unwrap();
    let Err(error) = pool.get().await else {
        panic!("connected to an unverified server");
    };
    // As the log and /readyz show it.
    let chain = spool::outbox::DbError::from(error).to_string();
    assert!(
        chain.contains("UnknownIssuer"),
        "refused for another reason: {chain}"
    );
}
