//! Kept answers: in memory, bounded by bytes and entries (moka), and copied
//! to Postgres off the request path so that a restarted spool (crash-only)
//! still has its fallbacks. Reads from Postgres happen only on a fallback
//! that memory cannot serve.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use deadpool_postgres::Pool;
use http::{HeaderMap, HeaderName, HeaderValue};
use moka::sync::Cache;
use tokio::sync::mpsc;

use super::rules::vary_names;
use crate::outbox::{sql, with_connection};

/// What one cached URL costs besides its answers: moka's entry (its
/// node, timers, hash and frequency slots), the key's and the variant
/// list's allocations. Measured, not derived: 50,000 small answers cost
/// about this much each beyond their counted bytes.
const ENTRY_OVERHEAD: u64 = 320;

/// Most variants (distinct Vary values) kept per URL.
const MAX_VARIANTS: usize = 16;
/// A kept answer is not copied to Postgres again within this time unless
/// its body changed: a hot URL costs one write per interval, not per read.
const PERSIST_INTERVAL: Duration = Duration::from_secs(10);

/// One kept answer.
#[derive(Debug)]
pub struct KeptAnswer {
    pub status: u16,
    /// End-to-end headers only.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: SystemTime,
    /// The upstream's own `Age` when it was kept.
    pub upstream_age: u64,
}

impl KeptAnswer {
    /// Seconds since the upstream made it (RFC 9111 section 4.2.3, simplified).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.stored_at).unwrap_or_default()
            + Duration::from_secs(self.upstream_age)
    }

    /// The bytes this answer holds in memory, bookkeeping included, so that
    /// `read_cache.max_bytes` bounds what the process holds, not only the
    /// bodies: a header map's slots and each entry's allocations cost far
    /// more than a small header's bytes.
    fn weight(&self) -> usize {
        const ANSWER: usize = std::mem::size_of::<KeptAnswer>() + 16;
        const HEADER_MAP: usize = 192;
        const HEADER: usize = 96;
        ANSWER
            + HEADER_MAP
            + self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + HEADER)
                .sum::<usize>()
    }
}

/// The kept variants of one URL of one route.
#[derive(Debug, Default, Clone)]
struct Variants {
    /// Request headers the answers vary on (from the latest answer).
    names: Vec<String>,
    entries: Vec<(Vec<Option<String>>, Arc<KeptAnswer>)>,
}

impl Variants {
    fn find(&self, request: &HeaderMap) -> Option<Arc<KeptAnswer>> {
        let values = values_of(&self.names, request);
        self.entries
            .iter()
            .find(|(v, _)| *v == values)
            .map(|(_, a)| Arc::clone(a))
    }
}

/// The request's values of the `names` headers (absent is a value too).
fn values_of(names: &[String], request: &HeaderMap) -> Vec<Option<String>> {
    names
        .iter()
        .map(|n| {
            let values: Vec<&str> = request
                .get_all(n.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        })
        .collect()
}

/// Memory limits of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

/// A row on its way to Postgres.
struct Persist {
    route: Arc<str>,
    key: String,
    variant: String,
    answer: Arc<KeptAnswer>,
}

#[derive(Clone)]
pub struct KeptStore {
    memory: Cache<(Arc<str>, String), Arc<Variants>>,
    persist: Option<mpsc::Sender<Persist>>,
    pool: Option<Pool>,
}

impl KeptStore {
    /// `pool` None keeps answers in memory only. Each entry weighs at least
    /// max_bytes / max_entries, so both limits hold with one capacity.
    pub fn new(limits: StoreLimits, pool: Option<Pool>) -> (Self, Option<PersistTask>) {
        let floor = (limits.max_bytes / limits.max_entries.max(1)).max(1);
        let memory = Cache::builder()
            .max_capacity(limits.max_bytes)
            .weigher(move |key: &(Arc<str>, String), variants: &Arc<Variants>| {
                let bytes: u64 = ENTRY_OVERHEAD
                    + key.1.len() as u64
                    + variants
                        .names
                        .iter()
                        .map(|n| n.len() as u64 + 24)
                        .sum::<u64>()
                    + variants
                        .entries
                        .iter()
                        .map(|(values, answer)| {
                            answer.weight() as u64
                                + values
                                    .iter()
                                    .map(|v| v.as_ref().map_or(24, |v| v.len() as u64 + 24))
                                    .sum::<u64>()
                        })
                        .sum::<u64>();
                u32::try_from(bytes.max(floor * variants.entries.len().max(1) as u64))
                    .unwrap_or(u32::MAX)
            })
            .build();
        let (persist, task) = match &pool {
            Some(pool) => {
                let (sender, receiver) = mpsc::channel(1024);
                (
                    Some(sender),
                    Some(PersistTask {
                        receiver,
                        pool: pool.clone(),
                    }),
                )
            }
            None => (None, None),
        };
        (
            KeptStore {
                memory,
                persist,
                pool,
            },
            task,
        )
    }

    /// The kept answer for this request, from memory.
    pub fn get(&self, route: &Arc<str>, key: &str, request: &HeaderMap) -> Option<Arc<KeptAnswer>> {
        self.memory
            .get(&(Arc::clone(route), key.to_owned()))?
            .find(request)
    }

    /// Vary names known for a URL (to key single flights by variant).
    pub fn vary_names(&self, route: &Arc<str>, key: &str) -> Vec<String> {
        self.memory
            .get(&(Arc::clone(route), key.to_owned()))
            .map(|v| v.names.clone())
            .unwrap_or_default()
    }

    /// Keeps `answer` for requests like `request`, and queues it for Postgres.
    pub fn keep(&self, route: &Arc<str>, key: &str, request: &HeaderMap, answer: KeptAnswer) {
        let names = vary_names(&answer.headers);
        let values = values_of(&names, request);
        let answer = Arc::new(answer);
        let cache_key = (Arc::clone(route), key.to_owned());
        let mut variants = self
            .memory
            .get(&cache_key)
            .map(|v| (*v).clone())
            .unwrap_or_default();
        if variants.names != names {
            variants = Variants {
                names: names.clone(),
                entries: Vec::new(),
            };
        }
        let previous = variants.entries.iter().position(|(v, _)| *v == values);
        let unchanged = previous.is_some_and(|i| {
            let old = &variants.entries[i].1;
            old.body == answer.body
                && old.status == answer.status
                && answer
                    .stored_at
                    .duration_since(old.stored_at)
                    .unwrap_or_default()
                    < PERSIST_INTERVAL
        });
        if unchanged {
            return;
        }
        match previous {
            Some(i) => variants.entries[i] = (values.clone(), Arc::clone(&answer)),
            None => {
                if variants.entries.len() >= MAX_VARIANTS {
                    variants.entries.remove(0);
                }
                variants.entries.push((values.clone(), Arc::clone(&answer)));
            }
        }
        self.memory.insert(cache_key, Arc::new(variants));
        if let Some(persist) = &self.persist {
            // A full queue drops the copy: memory still has it, and the next
            // good answer is queued again.
            let _ = persist.try_send(Persist {
                route: Arc::clone(route),
                key: key.to_owned(),
                variant: variant_text(&names, &values),
                answer,
            });
        }
    }

    /// On a fallback that memory cannot serve: the variants kept in
    /// Postgres, loaded into memory, then matched.
    pub async fn load(
        &self,
        route: &Arc<str>,
        key: &str,
        request: &HeaderMap,
        wait: Duration,
    ) -> Option<Arc<KeptAnswer>> {
        let pool = self.pool.as_ref()?;
        let rows = with_connection(pool, wait, async |client| {
            client.query(sql::LOAD_READ_CACHE, &[&&**route, &key]).await
        })
        .await
        .ok()?;
        let mut variants = Variants::default();
        for row in rows {
            let (names, values) = parse_variant(row.get(0));
            let headers_json: String = row.get(2);
            let answer = KeptAnswer {
                status: row.get::<_, i16>(1) as u16,
                headers: headers_from_json(&headers_json),
                body: Bytes::from(row.get::<_, Vec<u8>>(3)),
                stored_at: row.get(4),
                upstream_age: row.get::<_, i64>(5) as u64,
            };
            variants.names = names;
            variants.entries.push((values, Arc::new(answer)));
        }
        if variants.entries.is_empty() {
            return None;
        }
        let found = variants.find(request);
        self.memory
            .insert((Arc::clone(route), key.to_owned()), Arc::new(variants));
        found
    }
}

/// Writes kept answers to Postgres, one at a time, in the background.
pub struct PersistTask {
    receiver: mpsc::Receiver<Persist>,
    pool: Pool,
}

impl PersistTask {
    pub async fn run(mut self) {
        // Logged once per outage, not once per answer.
        let mut failing = false;
        while let Some(row) = self.receiver.recv().await {
            let written = with_connection(&self.pool, Duration::from_secs(5), async |client| {
                let answer = &row.answer;
                let headers = headers_to_json(&answer.headers);
                let status = answer.status as i16;
                let age = answer.upstream_age as i64;
                client
                    .execute(
                        sql::UPSERT_READ_CACHE,
                        &[
                            &&*row.route,
                            &row.key,
                            &row.variant,
                            &status,
                            &headers,
                            &&answer.body[..],
                            &answer.stored_at,
                            &age,
                        ],
                    )
                    .await
            });
            match written.await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("kept answers are copied to Postgres again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot copy kept answers to Postgres; a restart would lose them");
                }
                Err(_) => {}
            }
        }
    }
}

fn variant_text(names: &[String], values: &[Option<String>]) -> String {
    let pairs: Vec<(&String, &Option<String>)> = names.iter().zip(values).collect();
    serde_json::to_string(&pairs).expect("strings serialize")
}

fn parse_variant(text: String) -> (Vec<String>, Vec<Option<String>>) {
    let pairs: Vec<(String, Option<String>)> = serde_json::from_str(&text).unwrap_or_default();
    pairs.into_iter().unzip()
}

fn headers_to_json(headers: &HeaderMap) -> String {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    serde_json::to_string(&pairs).expect("strings serialize")
}

fn headers_from_json(text: &str) -> HeaderMap {
    let pairs: Vec<(String, String)> = serde_json::from_str(text).unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(n, v);
        }
    }
    headers
}
