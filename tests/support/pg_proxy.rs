//! A TCP proxy in front of a test Postgres that reads the client's side of
//! the wire protocol and breaks a connection at the worst moment: just as a
//! `COMMIT` goes by. That is the one instant when a client cannot tell
//! whether its transaction committed, and a crash hits it only by chance;
//! this hits it every time it is armed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// What the proxy does at the next `COMMIT` it sees, on any connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtCommit {
    /// Passes everything.
    Pass,
    /// Closes both sides without sending the COMMIT on: Postgres aborts.
    DropIt,
    /// Sends the COMMIT on, lets Postgres commit, and closes both sides
    /// before its answer can reach the client.
    LoseTheAnswer,
    /// As `LoseTheAnswer`, and then cuts Postgres off (`PgProxy::cut_off`)
    /// so that nobody can ask it what became of the transaction.
    LoseTheAnswerThenCutOff,
}

#[derive(Default)]
struct Plan {
    next_commit: Option<AtCommit>,
    /// While set, new connections are closed at once and open ones at their
    /// next message: Postgres looks unreachable.
    cut_off: bool,
    commits_broken: usize,
}

pub struct PgProxy {
    pub addr: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    accept: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    /// Proxies TCP on a free loopback port to the Unix socket of the
    /// cluster in `pg_dir`.
    pub async fn start(pg_dir: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = pg_dir.join(".s.PGSQL.5432");
        let plan = Arc::new(Mutex::new(Plan::default()));
        let shared = Arc::clone(&plan);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.lock().unwrap().cut_off {
                    continue;
                }
                let Ok(server) = UnixStream::connect(&socket).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, Arc::clone(&shared)));
            }
        });
        PgProxy { addr, plan, accept }
    }

    /// A libpq connection string through the proxy.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.addr.port()
        )
    }

    /// What to do at the next COMMIT (once; then everything passes again).
    pub fn at_next_commit(&self, action: AtCommit) {
        self.plan.lock().unwrap().next_commit = Some(action);
    }

    pub fn cut_off(&self, cut: bool) {
        self.plan.lock().unwrap().cut_off = cut;
    }

    /// How many COMMITs the proxy has broken so far.
    pub fn commits_broken(&self) -> usize {
        self.plan.lock().unwrap().commits_broken
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The startup packet codes that are not followed by typed messages.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// What identifies spool's batch insert among the statements it prepares.
const WRITE_BATCH: &[u8] = b"INSERT INTO spool_message";

async fn relay(client: TcpStream, server: UnixStream, plan: Arc<Mutex<Plan>>) {
    let (mut from_server, mut to_server) = server.into_split();
    let (mut from_client, mut to_client) = client.into_split();
    let mut answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let _ = forward_requests(&mut from_client, &mut to_server, &mut answers, &plan).await;
    answers.abort();
}

/// Copies the client's messages to the server until either side closes or
/// a COMMIT of a write batch meets an armed plan.
async fn forward_requests(
    from_client: &mut tokio::net::tcp::OwnedReadHalf,
    to_server: &mut tokio::net::unix::OwnedWriteHalf,
    answers: &mut tokio::task::JoinHandle<()>,
    plan: &Mutex<Plan>,
) -> std::io::Result<()> {
    // Startup: untyped packets, an SSL or GSSAPI request before the real one.
    loop {
        let len = from_client.read_u32().await?;
        let mut payload = vec![0u8; len as usize - 4];
        from_client.read_exact(&mut payload).await?;
        to_server.write_all(&len.to_be_bytes()).await?;
        to_server.write_all(&payload).await?;
        let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
        if code != SSL_REQUEST && code != GSSENC_REQUEST {
            break;
        }
    }
    let mut batch_statements: Vec<Vec<u8>> = Vec::new();
    let mut in_write_batch = false;
    loop {
        let tag = from_client.read_u8().await?;
        let len = from_client.read_u32().await?;
        let mut payload = vec![0u8; len as usize - 4];
        from_client.read_exact(&mut payload).await?;
        if plan.lock().unwrap().cut_off {
            return Ok(());
        }
        match tag {
            // Parse: statement name, then its SQL.
            b'P' => {
                let mut fields = payload.split(|&b| b == 0);
                let name = fields.next().unwrap_or_default().to_vec();
                let text = fields.next().unwrap_or_default();
                if text.windows(WRITE_BATCH.len()).any(|w| w == WRITE_BATCH) {
                    batch_statements.push(name);
                }
            }
            // Bind: portal name, then statement name.
            b'B' => {
                let statement = payload.split(|&b| b == 0).nth(1).unwrap_or_default();
                if batch_statements.iter().any(|name| name == statement) {
                    in_write_batch = true;
                }
            }
            b'Q' if payload.starts_with(b"COMMIT") && in_write_batch => {
                in_write_batch = false;
                let action = plan.lock().unwrap().next_commit.take();
                match action {
                    None | Some(AtCommit::Pass) => {}
                    Some(AtCommit::DropIt) => {
                        answers.abort();
                        plan.lock().unwrap().commits_broken += 1;
                        return Ok(());
                    }
                    Some(lose @ (AtCommit::LoseTheAnswer | AtCommit::LoseTheAnswerThenCutOff)) => {
                        // Stop the answers first, so not one byte of the
                        // COMMIT's answer gets through.
                        answers.abort();
                        let _ = (&mut *answers).await;
                        {
                            let mut plan = plan.lock().unwrap();
                            plan.commits_broken += 1;
                            plan.cut_off = lose == AtCommit::LoseTheAnswerThenCutOff;
                        }
                        to_server.write_all(&[tag]).await?;
                        to_server.write_all(&len.to_be_bytes()).await?;
                        to_server.write_all(&payload).await?;
                        // Time for Postgres to commit before the close.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
        to_server.write_all(&[tag]).await?;
        to_server.write_all(&len.to_be_bytes()).await?;
        to_server.write_all(&payload).await?;
    }
}
