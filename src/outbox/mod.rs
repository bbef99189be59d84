//! The Postgres outbox: the connection pool, the schema and the statements
//! that turn accepted writes into rows. Nothing above this module writes SQL.

mod backlog;
mod commit;
mod dead_letters;
mod due;
mod durability;
mod insert;
mod migrate;
mod outcomes;
mod pool;
mod shards;
pub mod sql;
pub mod stored_headers;
mod tls;

pub use backlog::{TargetBacklog, backlog_by_target};
pub use commit::{BatchCommit, Incarnation, TransactionStatus, commit_batch, transaction_status};
pub use dead_letters::{
    DeadLetter, DeadLetterQuery, DeadLetterSelection, delete_dead, list_dead, replay_dead,
};
pub use due::{DueDelivery, ReadPosition, ShardSet, read_due, read_lane};
pub use durability::{Durability, DurabilitySettings, check_durability, watch_durability};
pub use insert::{Inserted, MESSAGE_FORMAT_VERSION, NewMessage, Stored, insert_batch};
pub use migrate::{MigrateError, migrate};
pub use outcomes::{Fate, Outcome, OutcomeBatch};
pub use pool::{
    DbError, LARGE_TRANSFER, connect_pool, heartbeat, with_connection, with_connection_sized,
};
pub use shards::{
    ShardLease, ShardOwner, ensure_shards, forget_members, heartbeat_members, leave,
    release_shards, renew_shards, shard_owners, take_shards,
};
pub use tls::{DbAddress, DbAddressError};
