//! spool: a write de-synchronizing sidecar. Writes are committed to a
//! Postgres outbox before they are acknowledged, then forwarded.
// No unsafe code but the one call into the C allocator (memory.rs).
#![deny(unsafe_code)]

pub mod admin;
pub mod breaker;
pub mod config;
pub mod ctl;
pub mod data_port;
pub mod dispatch;
pub mod embedded_pg;
pub mod flow;
pub mod ingest;
pub mod janitor;
pub mod memory;
pub mod outbox;
pub mod problem;
pub mod read;
pub mod request_path;
pub mod retry;
pub mod server;
pub mod telemetry;
pub mod upstream;

pub use server::Spool;
