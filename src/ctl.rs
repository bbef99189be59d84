//! `spool ctl`: the admin API from a shell, for operators. It reaches the
//! admin port named in the configuration (or `--admin`) with its token, and
//! prints the answer as indented JSON; a refusal prints the problem's detail.

use std::time::Duration;

use bytes::Bytes;
use clap::Subcommand;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What to ask the admin port.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Every route and target: backlog, oldest pending age, dead letters,
    /// in flight, breaker, rate, paused.
    Routes,
    /// Change a target's rate (0 stops sending) until spool restarts.
    Rate {
        route: String,
        target: String,
        per_second: f64,
        #[arg(long)]
        burst: Option<u32>,
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Stop sending to a target; its backlog waits in Postgres.
    Pause { route: String, target: String },
    /// Send to a paused target again.
    Resume { route: String, target: String },
    /// List dead letters, newest first.
    DeadLetters {
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// The `next` of the previous page.
        #[arg(long)]
        after: Option<String>,
    },
    /// Put dead letters back to pending, attempts reset.
    Replay {
        /// One message's dead letters.
        #[arg(long, conflicts_with = "all")]
        message: Option<uuid::Uuid>,
        /// Every dead letter of a route.
        #[arg(long, conflicts_with = "all")]
        route: Option<String>,
        /// Only this target's.
        #[arg(long)]
        target: Option<String>,
        /// Every dead letter of every route.
        #[arg(long)]
        all: bool,
    },
    /// Delete one message's dead letters.
    Delete {
        message: uuid::Uuid,
        /// Only this target's.
        #[arg(long)]
        target: Option<String>,
    },
}

/// Sends `action` to the admin port at `base` (`http://host:port`).
/// Returns the answer's JSON, indented, or what went wrong, for people.
pub async fn run(base: &str, token: Option<&str>, action: Action) -> Result<String, String> {
    let (method, path, body) = request_for(action);
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let exchange = async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts.status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("spool's admin port at {base} did not answer within 30 s"))?
        .map_err(|e| {
            format!(
                "cannot reach spool's admin port at {base}: {}",
                crate::upstream::error_chain(&*e)
            )
        })?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    if status.is_success() {
        Ok(serde_json::to_string_pretty(&json).expect("JSON prints"))
    } else {
        let detail = json["detail"].as_str().unwrap_or_default();
        Err(format!("{status}: {detail}"))
    }
}

/// The admin call for `action`: method, path and query, JSON body.
fn request_for(action: Action) -> (Method, String, Option<serde_json::Value>) {
    let target_path = |route: &str, target: &str, what: &str| {
        format!(
            "/admin/routes/{}/targets/{}/{what}",
            encode(route),
            encode(target)
        )
    };
    match action {
        Action::Routes => (Method::GET, "/admin/routes".into(), None),
        Action::Rate {
            route,
            target,
            per_second,
            burst,
            concurrency,
        } => (
            Method::PUT,
            target_path(&route, &target, "rate"),
            Some(serde_json::json!({
                "per_second": per_second, "burst": burst, "concurrency": concurrency,
            })),
        ),
        Action::Pause { route, target } => {
            (Method::POST, target_path(&route, &target, "pause"), None)
        }
        Action::Resume { route, target } => {
            (Method::POST, target_path(&route, &target, "resume"), None)
        }
        Action::DeadLetters {
            route,
            target,
            limit,
            after,
        } => {
            let query: Vec<String> = [
                ("route", route),
                ("target", target),
                ("limit", limit.map(|l| l.to_string())),
                ("after", after),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some(format!("{name}={}", encode(&value?))))
            .collect();
            let path = format!("/admin/dead-letters?{}", query.join("&"));
            (Method::GET, path, None)
        }
        Action::Replay {
            message,
            route,
            target,
            all,
        } => (
            Method::POST,
            "/admin/dead-letters/replay".into(),
            Some(serde_json::json!({
                "message_id": message, "route": route, "target": target, "all": all,
            })),
        ),
        Action::Delete { message, target } => {
            let query = target
                .map(|t| format!("?target={}", encode(&t)))
                .unwrap_or_default();
            (
                Method::DELETE,
                format!("/admin/dead-letters/{message}{query}"),
                None,
            )
        }
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_cursors_are_encoded_in_paths() {
        let (method, path, body) = request_for(Action::Pause {
            route: "or ders".into(),
            target: "a/b".into(),
        });
        assert_eq!(method, Method::POST);
        assert_eq!(path, "/admin/routes/or%20ders/targets/a%2Fb/pause");
        assert!(body.is_none());
        let (_, path, _) = request_for(Action::DeadLetters {
            route: None,
            target: Some("t".into()),
            limit: Some(5),
            after: Some("17:abc:t".into()),
        });
        assert_eq!(
            path,
            "/admin/dead-letters?target=t&limit=5&after=17%3Aabc%3At"
        );
    }
}
