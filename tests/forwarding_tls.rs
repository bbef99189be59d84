//! https targets are reached through rustls with certificate verification
//! on: a target whose certificate no trusted authority signed gets nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::TestEnv;
use tokio::net::TcpListener;

/// An https server with a self-signed certificate that counts the TLS
/// handshakes that succeeded (none should, from spool).
async fn self_signed_target() -> (String, Arc<AtomicUsize>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let key = rustls_key(&cert);
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&handshakes);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                if acceptor.accept(stream).await.is_ok() {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (url, handshakes)
}

fn rustls_key(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> tokio_rustls::rustls::pki_types::PrivateKeyDer<'static> {
    tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let (url, handshakes) = self_signed_target().await;
    let routes = format!(
        "[[routes]]\nname = \"secure\"\n  [[routes.targets]]\n  name = \"t\"\n  url = \"{url}\"\n  [routes.retry]\n  initial_ms = 50\n  max_ms = 100\n"
    );
    let env = TestEnv::start_routes(&routes).await;
    assert_eq!(env.client.post("/secure/x", "{}").await.status, 202);
    let error_sql = "SELECT count(*) FROM spool_delivery WHERE last_error ILIKE '%certificate%'";
    assert_eventually!(env.pg.scalar(error_sql).await == 1);
    assert_eq!(
        handshakes.load(Ordering::Relaxed),
        0,
        "a TLS session was set up with an untrusted server"
    );
    env.stop().await;
}
