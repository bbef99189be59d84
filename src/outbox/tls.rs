//! TLS to Postgres. Off unless `database.url` asks for it with
//! `sslmode=require` (or libpq's `verify-ca` / `verify-full`, which mean the
//! same here); then the server's certificate is always verified, against
//! the system's roots (else Mozilla's) and the CAs in `database.ca_file`.
//! Unlike libpq, `require` does not mean "encrypt but trust anyone": a
//! sidecar that carries every write must not hand them to whoever answers.
//! `prefer` (tokio-postgres's default) connects without TLS, as before, so
//! a local Postgres with a self-signed certificate keeps working.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::DatabaseConfig;

/// Where the outbox lives and how to reach it: the parsed `database.url`
/// with spool's connection settings, and the TLS it asks for.
#[derive(Clone)]
pub struct DbAddress {
    pub config: tokio_postgres::Config,
    /// None: plain TCP or a Unix socket.
    pub tls: Option<MakeRustlsConnect>,
}

/// What is wrong with the database settings, and under which key.
#[derive(Debug, thiserror::Error)]
#[error("{key} {message}")]
pub struct DbAddressError {
    pub key: &'static str,
    pub message: String,
}

impl DbAddress {
    /// Parses `url`, reading libpq's verifying `sslmode`s as `require`.
    pub fn parse(url: &str, database: &DatabaseConfig) -> Result<Self, DbAddressError> {
        let url = url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        // The URL may hold a password: describe the problem, never echo it.
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| DbAddressError {
            key: "database.url",
            message: format!("is not a valid Postgres URL: {e}"),
        })?;
        config
            .connect_timeout(Duration::from_millis(database.connect_timeout_ms))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15));
        if config.get_application_name().is_none() {
            config.application_name("spool");
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Require => {
                let connector =
                    connector(database.ca_file.as_deref()).map_err(|message| DbAddressError {
                        key: "database.ca_file",
                        message,
                    })?;
                Some(connector)
            }
            _ => None,
        };
        Ok(DbAddress { config, tls })
    }
}

fn connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot be read ({}): {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("holds no PEM certificate ({})", path.display()));
        }
        let (_, rejected) = roots.add_parsable_certificates(certs);
        if rejected > 0 {
            return Err(format!(
                "holds {rejected} certificate(s) that are not valid CA certificates ({})",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot be used for TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
