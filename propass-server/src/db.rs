//! PostgreSQL: the pool, the embedded migrations, the schema and every query.
//!
//! The ledger invariant lives here: [`record_batch`] writes a whole push in
//! one transaction with set-based statements, inserts each operation at most
//! once (unique idempotency key, `ON CONFLICT DO NOTHING`), and charges the
//! quota only for rows it actually inserted, in the same transaction.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use propass_protocol::{ClientId, DeviceId, QueueItem, QuotaUpdated, Role};

/// The connection pool.
pub type PgPool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;
/// Why no connection could be had from the pool.
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

/// The schema's migrations, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Diesel's view of the schema (see `migrations/` for the SQL).
pub mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            username -> Text,
            password_hash -> Text,
            role -> Text,
            created_at -> Timestamptz,
        }
    }
    diesel::table! {
        devices (device_id) {
            device_id -> Text,
            first_seen -> Timestamptz,
            last_seen -> Timestamptz,
            revoked -> Bool,
            revoked_at -> Nullable<Timestamptz>,
        }
    }
    diesel::table! {
        clients (id) {
            id -> BigInt,
            name -> Text,
            created_at -> Timestamptz,
        }
    }
    diesel::table! {
        quotas (client_id) {
            client_id -> BigInt,
                        total -> BigInt,
            used -> BigInt,
            updated_at -> Timestamptz,
            version -> BigInt,
        }
    }
    diesel::table! {
        copies (id) {
            id -> BigInt,
            idempotency_key -> Text,
            op_id -> Nullable<Uuid>,
            device_id -> Text,
            local_id -> BigInt,
            client_id -> BigInt,
            uid -> Text,
            kind -> Text,
            occurred_at -> Timestamptz,
            received_at -> Timestamptz,
            overdraft -> Bool,
        }
    }
    diesel::joinable!(quotas -> clients (client_id));
    diesel::allow_tables_to_appear_in_same_query!(users, devices, clients, quotas, copies);
}

use schema::{clients, devices, quotas, users};

/// Builds the pool. Connections are verified before reuse, so a database
/// restart costs one failed checkout, not a dead pool.
pub fn build_pool(database_url: &str, size: usize, timeout: Duration) -> PgPool {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    PgPool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime and timeouts always builds")
}

/// Runs the pending migrations. Blocking: call it outside the async runtime
/// (it starts its own).
pub fn run_migrations(database_url: &str) -> Result<Vec<String>, String> {
    let url = database_url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move { rt_spawn_migrations(url).await })
    })
    .join()
    .map_err(|_| "the migration thread panicked".to_string())?
}

async fn rt_spawn_migrations(url: String) -> Result<Vec<String>, String> {
    tokio::spawn(async move {
        let conn = AsyncPgConnection::establish(&url)
            .await
            .map_err(|e| format!("cannot connect to the database: {e}"))?;
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        let done = harness
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| format!("migration failed: {e}"))?;
        Ok(done.iter().map(|v| v.to_string()).collect())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A user row, as login needs it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRow {
    /// Id.
    pub id: i64,
    /// Name.
    pub username: String,
    /// PHC string of the Argon2id hash.
    pub password_hash: String,
    /// `admin` or `operator`.
    pub role: String,
}

/// Finds a user by name.
pub async fn find_user(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(users::username.eq(name))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Creates a user (or fails on a duplicate name); returns the id.
pub async fn create_user(
    conn: &mut AsyncPgConnection,
    name: &str,
    hash: &str,
    role: Role,
) -> QueryResult<i64> {
    diesel::insert_into(users::table)
        .values((
            users::username.eq(name),
            users::password_hash.eq(hash),
            users::role.eq(role.as_str()),
        ))
        .returning(users::id)
        .get_result(conn)
        .await
}

/// Replaces a user's password and role (for `user add` on an existing name with `--update`).
pub async fn update_user(
    conn: &mut AsyncPgConnection,
    name: &str,
    hash: &str,
    role: Role,
) -> QueryResult<i64> {
    diesel::update(users::table.filter(users::username.eq(name)))
        .set((users::password_hash.eq(hash), users::role.eq(role.as_str())))
        .returning(users::id)
        .get_result(conn)
        .await
}

/// Records that a device was seen (creating it on first sight); returns
/// whether it is revoked.
pub async fn touch_device(conn: &mut AsyncPgConnection, device: &DeviceId) -> QueryResult<bool> {
    diesel::insert_into(devices::table)
        .values(devices::device_id.eq(device.as_str()))
        .on_conflict(devices::device_id)
        .do_update()
        .set(devices::last_seen.eq(diesel::dsl::now))
        .returning(devices::revoked)
        .get_result(conn)
        .await
}

/// Whether a device is revoked (an unknown device is not).
pub async fn device_revoked(conn: &mut AsyncPgConnection, device: &str) -> QueryResult<bool> {
    Ok(devices::table
        .filter(devices::device_id.eq(device))
        .select(devices::revoked)
        .first::<bool>(conn)
        .await
        .optional()?
        .unwrap_or(false))
}

/// Revokes or restores a device; `false` when no such device exists.
pub async fn set_device_revoked(
    conn: &mut AsyncPgConnection,
    device: &str,
    revoked: bool,
) -> QueryResult<bool> {
    let at: Option<DateTime<Utc>> = revoked.then(Utc::now);
    let n = diesel::update(devices::table.filter(devices::device_id.eq(device)))
        .set((devices::revoked.eq(revoked), devices::revoked_at.eq(at)))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// A device row.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = devices)]
pub struct DeviceRow {
    /// Id.
    pub device_id: String,
    /// First contact.
    pub first_seen: DateTime<Utc>,
    /// Last contact.
    pub last_seen: DateTime<Utc>,
    /// Revoked by an operator.
    pub revoked: bool,
}

/// Every device, most recently seen first.
pub async fn list_devices(conn: &mut AsyncPgConnection) -> QueryResult<Vec<DeviceRow>> {
    devices::table
        .select(DeviceRow::as_select())
        .order(devices::last_seen.desc())
        .load(conn)
        .await
}

/// A client with its quota.
#[derive(Debug, Clone, Queryable, serde::Serialize)]
pub struct ClientRow {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Copies bought.
    pub total: i64,
    /// Copies made.
    pub used: i64,
    /// Bumped by every change.
    pub version: i64,
}

impl ClientRow {
    /// `total - used`; negative after an overdraft.
    pub fn remaining(&self) -> i64 {
        self.total - self.used
    }
}

/// Creates a client with an initial quota; returns its id.
pub async fn create_client(
    conn: &mut AsyncPgConnection,
    name: &str,
    quota: i64,
) -> QueryResult<i64> {
    let name = name.to_owned();
    conn.transaction(async |conn| {
        let id: i64 = diesel::insert_into(clients::table)
            .values(clients::name.eq(&name))
            .returning(clients::id)
            .get_result(conn)
            .await?;
        diesel::insert_into(quotas::table)
            .values((quotas::client_id.eq(id), quotas::total.eq(quota)))
            .execute(conn)
            .await?;
        Ok(id)
    })
    .await
}

/// Every client with its quota, by id. The clients a kiosk may serve: today
/// every kiosk of the fleet serves every client.
pub async fn list_clients(conn: &mut AsyncPgConnection) -> QueryResult<Vec<ClientRow>> {
    clients::table
        .inner_join(quotas::table)
        .select((
            clients::id,
            clients::name,
            quotas::total,
            quotas::used,
            quotas::version,
        ))
        .order(clients::id)
        .load(conn)
        .await
}

/// Adds `n` copies (negative to correct a mistake, never below zero bought)
/// to a client's quota; returns the new remaining, `None` for an unknown client.
pub async fn add_quota(
    conn: &mut AsyncPgConnection,
    client: ClientId,
    n: i64,
) -> QueryResult<Option<i64>> {
    conn.transaction(async |conn| {
        let remaining = diesel::update(quotas::table.filter(quotas::client_id.eq(client.get())))
            .set((
                quotas::total.eq(quotas::total + n),
                quotas::version.eq(quotas::version + 1),
                quotas::updated_at.eq(diesel::dsl::now),
            ))
            .returning(quotas::total - quotas::used)
            .get_result::<i64>(conn)
            .await
            .optional()?;
        if remaining.is_some() {
            // Delivered at COMMIT to every server listening: they push
            // `quota_updated` to the kiosks.
            diesel::sql_query(format!("NOTIFY {QUOTA_CHANNEL}, '{}'", client.get()))
                .execute(conn)
                .await?;
        }
        Ok(remaining)
    })
    .await
}

/// The NOTIFY channel announcing quota changes made outside a push (operator
/// top-ups); the payload is the client id.
pub const QUOTA_CHANNEL: &str = "propass_quota";

/// The remaining quota of one client, with the row's version.
pub async fn remaining_of(
    conn: &mut AsyncPgConnection,
    client: ClientId,
) -> QueryResult<Option<(i64, i64)>> {
    quotas::table
        .filter(quotas::client_id.eq(client.get()))
        .select((quotas::total - quotas::used, quotas::version))
        .first(conn)
        .await
        .optional()
}

/// Answers when the database does.
pub async fn ping(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT 1")
        .execute(conn)
        .await
        .map(|_| ())
}

/// One valid operation of a push, with its idempotency key.
#[derive(Debug, Clone)]
pub struct NewOp {
    /// The item as the kiosk sent it.
    pub item: QueueItem,
    /// `op:<uuid>` or `dev:<device>:<local id>`.
    pub key: String,
}

impl NewOp {
    /// Computes the idempotency key of an item pushed by `device`.
    pub fn new(device: &DeviceId, item: QueueItem) -> Self {
        let key = match item.op_id {
            Some(op) => format!("op:{op}"),
            None => format!("dev:{device}:{}", item.id),
        };
        Self { item, key }
    }
}

/// What happened to one operation of a batch.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// In the ledger.
    Recorded {
        /// Ledger row id.
        ledger_id: i64,
        /// Already there before this push (not counted again).
        duplicate: bool,
        /// This copy took its client past the quota.
        overdraft: bool,
        /// When it happened.
        occurred_at: DateTime<Utc>,
    },
    /// Not recorded.
    Failed(String),
}

/// The result of [`record_batch`].
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// One per input op, same order.
    pub outcomes: Vec<Outcome>,
    /// New remaining of every client charged by this batch (broadcast).
    pub quotas: Vec<QuotaUpdated>,
    /// Remaining of every known client the batch names, charged or not (answered to the pusher).
    pub remaining: Vec<QuotaUpdated>,
}

#[derive(QueryableByName)]
struct InsertedRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = Timestamptz)]
    occurred_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct ExistingRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = BigInt)]
    client_id: i64,
    #[diesel(sql_type = Text)]
    uid: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Timestamptz)]
    occurred_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    overdraft: bool,
}

#[derive(QueryableByName)]
struct QuotaRow {
    #[diesel(sql_type = BigInt)]
    client_id: i64,
    #[diesel(sql_type = BigInt)]
    remaining: i64,
    #[diesel(sql_type = BigInt)]
    version: i64,
}

/// Records a batch of operations pushed by `device` in ONE transaction:
/// device upsert, one multi-row insert that skips known keys (in key order, so
/// that concurrent batches take index locks in one order), one lookup of the
/// skipped keys, the charged quota rows locked in id order, one quota update
/// for all of them, one overdraft flag update. A deadlock or serialization
/// failure reruns the whole transaction (up to 4 attempts). Every row inserted is charged exactly once; a key already in
/// the ledger is answered as a duplicate (or a conflict if it names another
/// operation) and charged nothing.
pub async fn record_batch(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    ops: Vec<NewOp>,
) -> Result<BatchOutcome, PushError> {
    let device = device.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match conn
            .transaction(async |conn| record_batch_tx(conn, &device, &ops).await)
            .await
        {
            Err(PushError::Db(e)) if attempt < 4 && is_retryable(&e) => {
                tracing::warn!(attempt, error = %e, "push transaction conflicted; retrying");
            }
            other => return other,
        }
    }
}

/// Serialization failures and deadlocks: the transaction rolled back and may simply be run again.
fn is_retryable(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        Error::DatabaseError(_, info) => info.message().contains("deadlock detected"),
        _ => false,
    }
}

/// Why a batch was not recorded at all.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The pushing device is revoked (checked inside the transaction).
    #[error("device revoked")]
    DeviceRevoked,
    /// The database failed; nothing was recorded.
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

async fn record_batch_tx(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    ops: &[NewOp],
) -> Result<BatchOutcome, PushError> {
    let now = Utc::now();
    if touch_device(conn, device).await? {
        return Err(PushError::DeviceRevoked);
    }

    let mut outcomes: Vec<Option<Outcome>> = vec![None; ops.len()];
    let keys: Vec<&str> = ops.iter().map(|o| o.key.as_str()).collect();
    let op_ids: Vec<Option<uuid::Uuid>> = ops.iter().map(|o| o.item.op_id.map(|x| x.0)).collect();
    let local_ids: Vec<i64> = ops.iter().map(|o| o.item.id).collect();
    let client_ids: Vec<i64> = ops.iter().map(|o| o.item.payload.client_id.get()).collect();
    let uids: Vec<String> = ops.iter().map(|o| o.item.payload.uid.to_hex()).collect();
    let kinds: Vec<&str> = ops.iter().map(|o| o.item.op_type.as_str()).collect();
    let occurred: Vec<DateTime<Utc>> = ops
        .iter()
        .map(|o| o.item.payload.occurred_at.unwrap_or(now))
        .collect();

    let inserted: Vec<InsertedRow> = if ops.is_empty() {
        Vec::new()
    } else {
        diesel::sql_query(
            "INSERT INTO copies (idempotency_key, op_id, device_id, local_id, client_id, uid, kind, occurred_at) \
             SELECT k, o, $3, l, c, u, t, w \
             FROM unnest($1::text[], $2::uuid[], $4::int8[], $5::int8[], $6::text[], $7::text[], $8::timestamptz[]) \
                  AS x(k, o, l, c, u, t, w) \
             JOIN clients ON clients.id = x.c \
             ORDER BY k \
             ON CONFLICT (idempotency_key) DO NOTHING \
             RETURNING id, idempotency_key, occurred_at",
        )
        .bind::<Array<Text>, _>(&keys)
        .bind::<Array<Nullable<diesel::sql_types::Uuid>>, _>(&op_ids)
        .bind::<Text, _>(device.as_str())
        .bind::<Array<BigInt>, _>(&local_ids)
        .bind::<Array<BigInt>, _>(&client_ids)
        .bind::<Array<Text>, _>(&uids)
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Timestamptz>, _>(&occurred)
        .load(conn)
        .await?
    };
    let mut fresh: HashMap<String, (i64, DateTime<Utc>)> = inserted
        .into_iter()
        .map(|r| (r.idempotency_key, (r.id, r.occurred_at)))
        .collect();

    // The first op of the batch holding a freshly inserted key is new; every
    // other op is a duplicate of something already in the ledger.
    let mut new_by_client: HashMap<i64, Vec<(usize, i64)>> = HashMap::new();
    let mut seen_again: Vec<usize> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match fresh.remove(&op.key) {
            Some((ledger_id, occurred_at)) => {
                new_by_client
                    .entry(ops[i].item.payload.client_id.get())
                    .or_default()
                    .push((i, ledger_id));
                outcomes[i] = Some(Outcome::Recorded {
                    ledger_id,
                    duplicate: false,
                    overdraft: false,
                    occurred_at,
                });
            }
            None => seen_again.push(i),
        }
    }

    if !seen_again.is_empty() {
        let again_keys: Vec<&str> = seen_again.iter().map(|&i| ops[i].key.as_str()).collect();
        let existing: HashMap<String, ExistingRow> = diesel::sql_query(
            "SELECT id, idempotency_key, client_id, uid, kind, occurred_at, overdraft FROM copies WHERE idempotency_key = ANY($1)",
        )
        .bind::<Array<Text>, _>(&again_keys)
        .load::<ExistingRow>(conn)
        .await?
        .into_iter()
        .map(|r| (r.idempotency_key.clone(), r))
        .collect();
        for i in seen_again {
            let item = &ops[i].item;
            outcomes[i] = Some(match existing.get(&ops[i].key) {
                Some(row)
                    if row.client_id == item.payload.client_id.get()
                        && row.uid == item.payload.uid.to_hex()
                        && row.kind == item.op_type.as_str() =>
                {
                    Outcome::Recorded {
                        ledger_id: row.id,
                        duplicate: true,
                        overdraft: row.overdraft,
                        occurred_at: row.occurred_at,
                    }
                }
                Some(row) => Outcome::Failed(format!(
                    "conflict: this operation's key was already recorded for another operation \
                     (ledger #{}: {} of {} for client {}); send a unique op_id",
                    row.id, row.kind, row.uid, row.client_id
                )),
                // Neither inserted nor already there: the join found no such client.
                None => Outcome::Failed(format!("unknown client {}", item.payload.client_id)),
            });
        }
    }

    let mut quotas = Vec::new();
    if !new_by_client.is_empty() {
        let mut cids: Vec<i64> = new_by_client.keys().copied().collect();
        cids.sort_unstable();
        if cids.len() > 1 {
            // Lock the quota rows in one global order (by id) so that concurrent
            // pushes charging several of the same clients never deadlock; the
            // locks are held only from here to COMMIT.
            diesel::sql_query("SELECT client_id AS id FROM quotas WHERE client_id = ANY($1) ORDER BY client_id FOR UPDATE")
                .bind::<Array<BigInt>, _>(&cids)
                .execute(conn)
                .await?;
        }
        let counts: Vec<i64> = cids.iter().map(|c| new_by_client[c].len() as i64).collect();
        let rows: Vec<QuotaRow> = diesel::sql_query(
            "UPDATE quotas AS q SET used = q.used + c.n, version = q.version + 1, updated_at = now() \
             FROM unnest($1::int8[], $2::int8[]) AS c(client_id, n) \
             WHERE q.client_id = c.client_id \
             RETURNING q.client_id, q.total - q.used AS remaining, q.version",
        )
        .bind::<Array<BigInt>, _>(&cids)
        .bind::<Array<BigInt>, _>(&counts)
        .load(conn)
        .await?;

        let mut overdrawn: Vec<i64> = Vec::new();
        for row in rows {
            let new_ops = &new_by_client[&row.client_id];
            let n = new_ops.len() as i64;
            // The k-th new copy (1-based) left `remaining + n - k` copies.
            for (k, &(i, ledger_id)) in new_ops.iter().enumerate() {
                if row.remaining + n - (k as i64 + 1) < 0 {
                    overdrawn.push(ledger_id);
                    if let Some(Outcome::Recorded { overdraft, .. }) = outcomes[i].as_mut() {
                        *overdraft = true;
                    }
                }
            }
            let client_id = ClientId::new(row.client_id).map_err(|e| {
                PushError::Db(diesel::result::Error::DeserializationError(e.into()))
            })?;
            quotas.push(QuotaUpdated {
                client_id,
                remaining: row.remaining,
                version: Some(row.version),
            });
        }
        if !overdrawn.is_empty() {
            diesel::sql_query("UPDATE copies SET overdraft = TRUE WHERE id = ANY($1)")
                .bind::<Array<BigInt>, _>(&overdrawn)
                .execute(conn)
                .await?;
        }
    }

    let outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Failed("internal: operation not processed".into())))
        .collect();
    // The remaining of every client the batch names — duplicates included — so
    // that a kiosk whose retry comes back all-duplicate still learns the truth
    // in the same answer that marks its items synced.
    let mut named: Vec<i64> = ops.iter().map(|o| o.item.payload.client_id.get()).collect();
    named.sort_unstable();
    named.dedup();
    let remaining = diesel::sql_query(
        "SELECT client_id, total - used AS remaining, version FROM quotas WHERE client_id = ANY($1)",
    )
    .bind::<Array<BigInt>, _>(&named)
    .load::<QuotaRow>(conn)
    .await?
    .into_iter()
    .filter_map(|r| {
                Some(QuotaUpdated {
            client_id: ClientId::new(r.client_id).ok()?,
            remaining: r.remaining,
            version: Some(r.version),
        })
    })
    .collect();
    Ok(BatchOutcome {
        outcomes,
        quotas,
        remaining,
    })
}
