//! The connection pool and the embedded migrations.

use std::time::Duration;

use std::sync::Arc;

use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::connect::PgTarget;

/// The connection pool.
pub type PgPool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;
/// Why no connection could be had from the pool.
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

/// The schema's migrations, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Builds the pool. Connections are verified before reuse, so a database
/// restart costs one failed checkout, not a dead pool.
pub fn build_pool(database_url: &str, size: usize, timeout: Duration) -> PgPool {
    // Parsed once; a URL that does not parse fails every connection with
    // its reason (`Application::build` refuses it before that).
    let target = Arc::new(PgTarget::parse(database_url));
    let mut config = ManagerConfig::default();
    // No `SELECT 1` before every checkout (a round trip per request): a
    // connection the server closed is known closed and replaced; one that
    // died silently fails its first query, answered 503, and is dropped.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |_url| {
        let target = target.clone();
        Box::pin(async move {
            match &*target {
                Ok(t) => t.connect().await,
                Err(e) => Err(diesel::ConnectionError::BadConnection(e.clone())),
            }
        })
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    PgPool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime and timeouts always builds")
}

/// Runs the pending migrations; returns the versions applied. Blocking: it
/// runs on a thread with its own runtime, so call it outside any runtime.
pub fn run_migrations(database_url: &str) -> Result<Vec<String>, String> {
    on_own_runtime(migrate(database_url.to_owned()))
}

/// Runs `work` on a thread with a runtime of its own, and waits for it. The
/// migration harness blocks inside async code: spawning keeps it off the
/// runtime's driver.
fn on_own_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move { tokio::spawn(work).await.map_err(|e| e.to_string())? })
    })
    .join()
    .map_err(|_| "the migration thread panicked".to_string())?
}

/// The advisory lock key migrations run under ("PROPASS" in ASCII): two
/// servers starting together migrate one after the other, and the second
/// finds nothing left to do.
const MIGRATION_LOCK: i64 = 0x0050_524F_5041_5353;

async fn migrate(url: String) -> Result<Vec<String>, String> {
    let mut conn = super::connect::connect(&url)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    // Session-level: released when this connection closes, even if a
    // migration fails half-way.
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("cannot take the migration lock: {e}"))?;
    let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
    let done = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| format!("migration failed: {e}"))?;
    Ok(done.iter().map(|v| v.to_string()).collect())
}

/// The migrations this binary knows that the database has not run (for
/// `serve --no-migrate`, which refuses to start on a schema behind it).
/// Blocking, like [`run_migrations`].
pub fn pending_migrations(database_url: &str) -> Result<Vec<String>, String> {
    let url = database_url.to_owned();
    on_own_runtime(async move {
        let conn = super::connect::connect(&url)
            .await
            .map_err(|e| format!("cannot connect to the database: {e}"))?;
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        let pending = harness
            .pending_migrations(MIGRATIONS)
            .map_err(|e| format!("cannot read the applied migrations: {e}"))?;
        Ok(pending.iter().map(|m| m.name().to_string()).collect())
    })
}

/// Answers when the database does.
pub async fn ping(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel::sql_query("SELECT 1")
        .execute(conn)
        .await
        .map(|_| ())
}
