//! PostgreSQL, split by role: [`connect`] (every connection, with the URL's
//! TLS settings), the [`pool`] and migrations, the [`schema`],
//! [`users`] and the login [`throttle`], [`devices`] and their [`enrollment`], [`clients`] and their quotas, and the ledger of
//! [`copies`] (where the exactly-once invariant is enforced; see its header).
//! Rows are this module's own types, converted by hand to and from the wire.

pub mod audit;
pub mod clients;
pub mod columns;
pub mod connect;
pub mod copies;
pub mod corrections;
pub mod devices;
pub mod enrollment;
pub mod fleet;
pub mod leases;
pub mod ledger_view;
pub mod pool;
pub mod prepared;
pub mod schema;
pub mod sessions;
pub mod throttle;
pub mod users;

pub use pool::{
    build_pool, pending_migrations, ping, run_migrations, PgPool, PoolError, MIGRATIONS,
};
