//! The Postgres outbox: the connection pool, the schema and the statements
//! that turn accepted writes into rows. Nothing above this module writes SQL.

mod backlog;
mod claims;
mod dead_letters;
mod insert;
mod migrate;
mod outcomes;
mod pool;
pub mod sql;
mod tls;

pub use backlog::{TargetBacklog, backlog_by_target};
pub use claims::{ClaimPosition, ClaimedDelivery, claim_due, release_leases, sweep_expired_leases};
pub use dead_letters::{
    DeadLetter, DeadLetterQuery, DeadLetterSelection, delete_dead, list_dead, replay_dead,
};
pub use insert::{MESSAGE_FORMAT_VERSION, NewMessage, Stored, insert_batch};
pub use migrate::{MigrateError, migrate};
pub use outcomes::{Fate, Outcome, OutcomeBatch};
pub use pool::{DbError, connect_pool, heartbeat, with_connection};
pub use tls::{DbAddress, DbAddressError};
