//! The Postgres outbox: the connection pool, the schema and the statements
//! that turn accepted writes into rows. Nothing above this module writes SQL.

mod insert;
mod migrate;
mod pool;
pub mod sql;

pub use insert::{MESSAGE_FORMAT_VERSION, NewMessage, Stored, insert_batch};
pub use migrate::{MigrateError, migrate};
pub use pool::{DbError, connect_pool, heartbeat};
