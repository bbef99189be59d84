//! Fake downstream targets on 127.0.0.1: they record every request and
//! answer as the test says (healthy, failing, hanging, resetting, slow,
//! 429 with Retry-After), and can be stopped and started on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request as the target saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn message_id(&self) -> uuid::Uuid {
        self.header("spool-message-id").unwrap().parse().unwrap()
    }

    pub fn attempt(&self) -> u32 {
        self.header("spool-attempt").unwrap().parse().unwrap()
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// 429 (or another status) with a Retry-After in seconds.
    RetryAfter(u16, u64),
    /// Answers after a delay.
    Slow(Duration, u16),
    /// Never answers.
    Hang,
    /// Closes the connection without an answer.
    Reset,
    /// A status with these headers and body.
    Full(u16, Vec<(&'static str, String)>, Bytes),
    /// 200 with the first chunk at once and the rest after `gate` is
    /// notified: shows whether a proxy streams.
    Streamed(Vec<Bytes>, Arc<tokio::sync::Notify>),
}

type Rule = dyn Fn(&Received, &[Received]) -> Answer + Send + Sync;

/// A fake target. `rule` sees the request and every earlier one.
#[derive(Clone)]
pub struct FakeTarget {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    rule: Arc<Mutex<Arc<Rule>>>,
    server: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl FakeTarget {
    pub async fn healthy() -> Self {
        Self::start(|_, _| Answer::Status(200)).await
    }

    pub async fn start(
        rule: impl Fn(&Received, &[Received]) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = FakeTarget {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            rule: Arc::new(Mutex::new(Arc::new(rule))),
            server: Arc::default(),
        };
        target.serve(listener);
        target
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how later requests are answered.
    pub fn set_rule(
        &self,
        rule: impl Fn(&Received, &[Received]) -> Answer + Send + Sync + 'static,
    ) {
        *self.rule.lock().unwrap() = Arc::new(rule);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Stops listening: connections are refused.
    pub fn stop(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let mut listener = TcpListener::bind(self.addr).await;
        for _ in 0..50 {
            if listener.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            listener = TcpListener::bind(self.addr).await;
        }
        self.serve(listener.expect("rebind the target's port"));
    }

    fn serve(&self, listener: TcpListener) {
        let this = self.clone();
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let this = this.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let this = this.clone();
                        async move { this.answer(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        *self.server.lock().unwrap() = Some(server);
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<BoxBody<Bytes, std::io::Error>>, std::io::Error> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let received = Received {
            method: parts.method.to_string(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers,
            body,
            at: Instant::now(),
        };
        let answer = {
            let rule = Arc::clone(&self.rule.lock().unwrap());
            let mut all = self.received.lock().unwrap();
            let answer = rule(&received, &all);
            all.push(received);
            answer
        };
        let status = match answer {
            Answer::Status(status) => status,
            Answer::RetryAfter(status, seconds) => {
                let mut response = Response::new(full(Bytes::from_static(b"slow down")));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                response.headers_mut().insert("retry-after", seconds.into());
                return Ok(response);
            }
            Answer::Full(status, headers, body) => {
                let mut response = Response::new(full(body));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                for (name, value) in headers {
                    response.headers_mut().append(name, value.parse().unwrap());
                }
                return Ok(response);
            }
            Answer::Streamed(chunks, gate) => {
                let (sender, receiver) = tokio::sync::mpsc::channel::<
                    Result<hyper::body::Frame<Bytes>, std::io::Error>,
                >(4);
                tokio::spawn(async move {
                    let mut chunks = chunks.into_iter();
                    if let Some(first) = chunks.next() {
                        let _ = sender.send(Ok(hyper::body::Frame::data(first))).await;
                    }
                    gate.notified().await;
                    for chunk in chunks {
                        if sender
                            .send(Ok(hyper::body::Frame::data(chunk)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                let stream = tokio_stream_from(receiver);
                return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
            }
            Answer::Slow(delay, status) => {
                tokio::time::sleep(delay).await;
                status
            }
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                200
            }
            // An error from the service makes hyper drop the connection.
            Answer::Reset => return Err(std::io::Error::other("reset")),
        };
        let mut response = Response::new(full(Bytes::from(format!("status {status}"))));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(response)
    }
}

fn full(body: Bytes) -> BoxBody<Bytes, std::io::Error> {
    Full::new(body).map_err(|never| match never {}).boxed()
}

/// An mpsc receiver as a stream of body frames.
fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
