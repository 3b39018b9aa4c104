//! The agent's durable state: one SQLite database (WAL, `synchronous=FULL`).
//!
//! # Guarantees
//!
//! - **Recorded means durable.** [`Store::record`] returns only after its
//!   transaction committed with `synchronous=FULL`: the operation survives a
//!   crash or a power cut from that moment on. Nothing is ever deleted from the
//!   queue; items only move `pending → synced` or `pending → failed → pending`
//!   (`queue retry`).
//! - **One transaction per recording**: the local quota check and the insert of
//!   the queue item happen under one `BEGIN IMMEDIATE`. The local remaining is
//!   derived — what the server last said minus the items not yet synced — so it
//!   can never drift from the queue (a crash cannot leave a decrement without
//!   its item, or the other way round).
//! - **Exactly once upstream**: every item gets a UUIDv7 `op_id` when recorded.
//!   The server deduplicates on it, so pushing an item again after a lost
//!   answer is safe.
//! - **A pull never erases local work**: pulls store the server's remaining;
//!   what is shown and checked subtracts the items still queued here.
//! - **Foreign or corrupt files are never touched**: the database is marked
//!   with an `application_id`; a file that is not SQLite, belongs to another
//!   program, comes from a newer agent or fails `quick_check` makes
//!   [`Store::open`] refuse, without writing to it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use propass_protocol::{
    BadgeUid, ClientId, OpId, OpPayload, OpType, PushItemResult, PushStatus, QueueItem, QuotaEntry,
    QuotaUpdated,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

/// `PRPS`, stored in the SQLite header to recognise our databases.
pub const APPLICATION_ID: i32 = 0x5052_5053;

/// Schema migrations, applied in order; `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id       TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL CHECK (type IN ('copy', 'write')),
    client_id   INTEGER NOT NULL,
    uid         TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'synced', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    created_at  TEXT NOT NULL,
    synced_at   TEXT
);
CREATE INDEX queue_status ON queue (status, id);
CREATE TABLE quotas (
    client_id        INTEGER PRIMARY KEY,
    name             TEXT,
    server_remaining INTEGER NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
CREATE INDEX queue_client_status ON queue (client_id, status);
"#,
    r#"
ALTER TABLE quotas ADD COLUMN server_version INTEGER;
"#,
];

/// What can go wrong with the local database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not a SQLite database.
    #[error("{0} is not a SQLite database; refusing to touch it (move it aside to start afresh)")]
    NotSqlite(PathBuf),
    /// The file is a SQLite database of another program.
    #[error("{0} belongs to another application (application_id {1:#x}); refusing to touch it")]
    Foreign(PathBuf, i32),
    /// Written by a newer agent.
    #[error("{0} has schema version {1}, newer than this agent knows ({2}); upgrade the agent")]
    TooNew(PathBuf, i64, i64),
    /// SQLite's integrity check failed.
    #[error("{0} is corrupt ({1}); refusing to start: restore it from a backup or move it aside")]
    Corrupt(PathBuf, String),
    /// The state directory or the file cannot be created or opened.
    #[error("cannot open {0}: {1}")]
    Io(PathBuf, String),
    /// No quota is known for this client (never synced with the server).
    #[error("client {0} is unknown on this kiosk; sync with the server first")]
    UnknownClient(ClientId),
    /// The client's quota is used up.
    #[error("client {client} has no copies left (remaining {remaining}); ask an operator to top up the quota")]
    QuotaExhausted {
        /// The client.
        client: ClientId,
        /// Its local remaining.
        remaining: i64,
    },
    /// Any other SQLite failure.
    #[error("local database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The caller's op_id is already used by a different operation.
    #[error("op_id {0} is already used by a different operation")]
    OpIdConflict(OpId),
    /// A stored value does not parse (the file was edited by hand).
    #[error("local database holds an invalid value: {0}")]
    Invalid(String),
}

/// Result of the store's operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Status of a queued operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Not yet acknowledged by the server.
    Pending,
    /// In the server's ledger.
    Synced,
    /// Refused by the server; see `last_error`; `queue retry` makes it pending again.
    Failed,
}

impl ItemStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Synced => "synced",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for ItemStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(Self::Pending),
            "synced" => Ok(Self::Synced),
            "failed" => Ok(Self::Failed),
            other => Err(format!(
                "unknown status {other:?} (pending, synced or failed)"
            )),
        }
    }
}

/// One queued operation as stored.
#[derive(Debug, Clone, Serialize)]
pub struct QueuedOp {
    /// Device-local id (never reused).
    pub id: i64,
    /// Global id, the server's idempotency key.
    pub op_id: OpId,
    /// copy or write.
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// The client charged.
    pub client_id: ClientId,
    /// The UID on the card.
    pub uid: BadgeUid,
    /// When the card was made.
    pub occurred_at: DateTime<Utc>,
    /// pending / synced / failed.
    pub status: ItemStatus,
    /// Push attempts that included this item.
    pub attempts: i64,
    /// The server's reason when failed.
    pub last_error: Option<String>,
    /// When recorded.
    pub created_at: DateTime<Utc>,
    /// When the server acknowledged it.
    pub synced_at: Option<DateTime<Utc>>,
}

impl QueuedOp {
    /// The wire form for a push.
    pub fn to_queue_item(&self) -> QueueItem {
        QueueItem {
            id: self.id,
            op_id: Some(self.op_id),
            op_type: self.op_type,
            payload: OpPayload {
                client_id: self.client_id,
                uid: self.uid.clone(),
                occurred_at: Some(self.occurred_at),
            },
        }
    }
}

/// A client's quota as this kiosk sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalQuota {
    /// The client.
    pub client_id: ClientId,
    /// Its name, when the server gave one.
    pub name: Option<String>,
    /// What the server last said.
    pub server_remaining: i64,
    /// Operations recorded here and not yet synced (pending or failed).
    pub unsynced: i64,
    /// `server_remaining - unsynced`: what this kiosk may still make.
    pub remaining: i64,
}

/// Queue depth by status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueCounts {
    /// Waiting for the server.
    pub pending: i64,
    /// In the ledger.
    pub synced: i64,
    /// Refused by the server.
    pub failed: i64,
    /// When the oldest pending item was recorded.
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

/// The database, shared by the agent's tasks. Every call runs on a blocking
/// thread; one connection, one writer.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Invalid(format!("timestamp {s:?}: {e}")))
}

impl Store {
    /// Opens (or creates) the database at `path`, refusing foreign, newer or
    /// corrupt files without writing to them.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.into(), e.to_string()))?;
        }
        let existing = path.exists();
        if existing {
            let mut header = [0u8; 16];
            let mut f = std::fs::File::open(path)
                .map_err(|e| StoreError::Io(path.into(), e.to_string()))?;
            let n = std::io::Read::read(&mut f, &mut header)
                .map_err(|e| StoreError::Io(path.into(), e.to_string()))?;
            if n > 0 && (n < 16 || &header != b"SQLite format 3\0") {
                return Err(StoreError::NotSqlite(path.into()));
            }
        }
        let conn =
            Connection::open(path).map_err(|e| StoreError::Io(path.into(), e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let app_id: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| map_open_err(path, e))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| map_open_err(path, e))?;
        if app_id != APPLICATION_ID && !(app_id == 0 && version == 0 && tables == 0) {
            return Err(StoreError::Foreign(path.into(), app_id));
        }
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew(path.into(), version, known));
        }
        if existing && tables > 0 {
            let check: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| map_open_err(path, e))?;
            if check != "ok" {
                return Err(StoreError::Corrupt(path.into(), check));
            }
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Io(
                path.into(),
                format!("cannot switch to WAL mode (got {mode})"),
            ));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        let mut store = Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.into(),
        };
        store.migrate(version)?;
        Ok(store)
    }

    fn migrate(&mut self, from: i64) -> StoreResult<()> {
        let mut conn = self.lock();
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(sql)?;
            tx.execute_batch(&format!(
                "PRAGMA user_version = {}; PRAGMA application_id = {APPLICATION_ID};",
                i + 1
            ))?;
            tx.commit()?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn with<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("store task failed: {e}")))?
    }

    /// Records one operation: checks the local quota and enqueues the item in
    /// one transaction. Returns the item and the client's remaining after it.
    ///
    /// With an `op_id` chosen by the caller, recording is idempotent: a retry
    /// (the caller never saw the answer) returns the operation already
    /// recorded, with `true`, and records nothing more.
    pub async fn record(
        &self,
        op_type: OpType,
        client: ClientId,
        uid: BadgeUid,
        occurred_at: Option<DateTime<Utc>>,
        op_id: Option<OpId>,
    ) -> StoreResult<(QueuedOp, i64, bool)> {
        if let Some(op) = op_id {
            if let Some(existing) = self.find(op).await? {
                if existing.op_type != op_type
                    || existing.client_id != client
                    || existing.uid != uid
                {
                    return Err(StoreError::OpIdConflict(op));
                }
                let remaining = self.remaining_of(client).await?;
                return Ok((existing, remaining, true));
            }
        }
        match self
            .insert_op(op_type, client, uid.clone(), occurred_at, true, op_id)
            .await
        {
            Ok((op, remaining)) => Ok((op, remaining, false)),
            // Two identical requests raced past the lookup: the second is the replay.
            Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)))
                if op_id.is_some() && f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let op = op_id.expect("checked");
                let existing = self.find(op).await?.ok_or(StoreError::OpIdConflict(op))?;
                if existing.op_type != op_type
                    || existing.client_id != client
                    || existing.uid != uid
                {
                    return Err(StoreError::OpIdConflict(op));
                }
                let remaining = self.remaining_of(client).await?;
                Ok((existing, remaining, true))
            }
            Err(e) => Err(e),
        }
    }

    /// The local remaining of one client (0 when unknown).
    async fn remaining_of(&self, client: ClientId) -> StoreResult<i64> {
        Ok(self
            .quotas()
            .await?
            .into_iter()
            .find(|q| q.client_id == client)
            .map(|q| q.remaining)
            .unwrap_or(0))
    }

    /// The operation with this op_id.
    pub async fn find(&self, op_id: OpId) -> StoreResult<Option<QueuedOp>> {
        let all = self.list_where("op_id = ?1", op_id.to_string(), 1).await?;
        Ok(all.into_iter().next())
    }

    /// Records a card the reader has already made and verified: it exists, so
    /// it is never refused — no quota check (the caller checked before
    /// cloning; an overdraft is flagged by the server).
    pub async fn record_made(
        &self,
        op_type: OpType,
        client: ClientId,
        uid: BadgeUid,
    ) -> StoreResult<(QueuedOp, i64)> {
        self.insert_op(op_type, client, uid, None, false, None)
            .await
    }

    async fn insert_op(
        &self,
        op_type: OpType,
        client: ClientId,
        uid: BadgeUid,
        occurred_at: Option<DateTime<Utc>>,
        enforce_quota: bool,
        op_id: Option<OpId>,
    ) -> StoreResult<(QueuedOp, i64)> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let quota = quota_of(&tx, client)?;
            if enforce_quota {
                let q = quota.as_ref().ok_or(StoreError::UnknownClient(client))?;
                if q.remaining <= 0 {
                    return Err(StoreError::QuotaExhausted { client, remaining: q.remaining });
                }
            }
            let remaining_before = quota.map(|q| q.remaining).unwrap_or(0);
            let op_id = op_id.unwrap_or_else(OpId::new_v7);
            let created = now();
            let occurred = occurred_at.unwrap_or(created);
            tx.execute(
                "INSERT INTO queue (op_id, type, client_id, uid, occurred_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![op_id.to_string(), op_type.as_str(), client.get(), uid.to_hex(), ts(occurred), ts(created)],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            let op = QueuedOp {
                id,
                op_id,
                op_type,
                client_id: client,
                uid,
                occurred_at: occurred,
                status: ItemStatus::Pending,
                attempts: 0,
                last_error: None,
                created_at: created,
                synced_at: None,
            };
            Ok((op, remaining_before - 1))
        })
        .await
    }

    /// The oldest `limit` pending items, oldest first.
    pub async fn pending(&self, limit: usize) -> StoreResult<Vec<QueuedOp>> {
        self.list(Some(ItemStatus::Pending), limit).await
    }

    /// Items, oldest first, optionally of one status.
    pub async fn list(
        &self,
        status: Option<ItemStatus>,
        limit: usize,
    ) -> StoreResult<Vec<QueuedOp>> {
        match status {
            Some(st) => {
                self.list_where("status = ?1", st.as_str().to_owned(), limit)
                    .await
            }
            None => self.list_where("?1 = ?1", String::new(), limit).await,
        }
    }

    async fn list_where(
        &self,
        filter: &'static str,
        arg: String,
        limit: usize,
    ) -> StoreResult<Vec<QueuedOp>> {
        self.with(move |conn| {
            let sql = format!(
                "SELECT id, op_id, type, client_id, uid, occurred_at, status, attempts, last_error, created_at, synced_at \
                 FROM queue WHERE {filter} ORDER BY id LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![arg, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, op_id, t, client, uid, occurred, status, attempts, last_error, created, synced) = row?;
                let bad = |what: &str, e: String| StoreError::Invalid(format!("queue item {id}: {what}: {e}"));
                out.push(QueuedOp {
                    id,
                    op_id: OpId(op_id.parse().map_err(|e: uuid::Error| bad("op_id", e.to_string()))?),
                    op_type: t.parse().map_err(|e| bad("type", e))?,
                    client_id: ClientId::new(client).map_err(|e| bad("client_id", e.to_string()))?,
                    uid: BadgeUid::parse(&uid).map_err(|e| bad("uid", e.to_string()))?,
                    occurred_at: parse_ts(&occurred)?,
                    status: status.parse().map_err(|e| bad("status", e))?,
                    attempts,
                    last_error,
                    created_at: parse_ts(&created)?,
                    synced_at: synced.as_deref().map(parse_ts).transpose()?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Counts attempts for items about to be pushed.
    pub async fn note_attempt(&self, ids: Vec<i64>) -> StoreResult<()> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE queue SET attempts = attempts + 1 WHERE id = ?1")?;
                for id in ids {
                    stmt.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Applies a push's per-item results and the server's remaining quotas in
    /// one transaction. Results are matched by local id and checked against
    /// the op_id. Returns (synced, failed).
    pub async fn apply_push(
        &self,
        results: Vec<PushItemResult>,
        quotas: Vec<QuotaUpdated>,
    ) -> StoreResult<(usize, usize)> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (mut synced, mut failed) = (0, 0);
            let at = ts(now());
            for r in &results {
                let Some(id) = r.id else { continue };
                let stored: Option<String> =
                    tx.query_row("SELECT op_id FROM queue WHERE id = ?1 AND status = 'pending'", [id], |row| row.get(0)).optional()?;
                let Some(op) = stored else { continue };
                if r.op_id.is_some_and(|o| o.to_string() != op) {
                    continue;
                }
                match r.status {
                    PushStatus::Synced => {
                        tx.execute("UPDATE queue SET status = 'synced', synced_at = ?2, last_error = NULL WHERE id = ?1", params![id, at])?;
                        synced += 1;
                    }
                    PushStatus::Failed => {
                        let why = r.error.clone().unwrap_or_else(|| "refused by the server".into());
                        tx.execute("UPDATE queue SET status = 'failed', last_error = ?2 WHERE id = ?1", params![id, why])?;
                        failed += 1;
                    }
                }
            }
            for q in &quotas {
                set_server_remaining(&tx, q.client_id, None, q.remaining, q.version, &at)?;
            }
            tx.commit()?;
            Ok((synced, failed))
        })
        .await
    }

    /// Stores a pull: the server's remaining for every client it listed;
    /// clients it no longer lists are forgotten unless work is queued for them.
    pub async fn apply_pull(&self, quotas: Vec<QuotaEntry>) -> StoreResult<()> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let at = ts(now());
            let ids: Vec<String> = quotas
                .iter()
                .map(|q| q.client_id.get().to_string())
                .collect();
            for q in &quotas {
                set_server_remaining(
                    &tx,
                    q.client_id,
                    q.name.as_deref(),
                    q.remaining,
                    q.version,
                    &at,
                )?;
            }
            tx.execute(
                &format!(
                    "DELETE FROM quotas WHERE client_id NOT IN ({}) \
                     AND client_id NOT IN (SELECT client_id FROM queue WHERE status != 'synced')",
                    if ids.is_empty() {
                        "NULL".to_string()
                    } else {
                        ids.join(",")
                    }
                ),
                [],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// A live `quota_updated` from the server.
    pub async fn apply_quota_update(&self, q: QuotaUpdated) -> StoreResult<LocalQuota> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            set_server_remaining(&tx, q.client_id, None, q.remaining, q.version, &ts(now()))?;
            let local =
                quota_of(&tx, q.client_id)?.ok_or(StoreError::UnknownClient(q.client_id))?;
            tx.commit()?;
            Ok(local)
        })
        .await
    }

    /// Every known client's quota.
    pub async fn quotas(&self) -> StoreResult<Vec<LocalQuota>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT q.client_id, q.name, q.server_remaining, \
                        (SELECT count(*) FROM queue WHERE client_id = q.client_id AND status != 'synced') \
                 FROM quotas q ORDER BY q.client_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, server_remaining, unsynced) = row?;
                let client_id = ClientId::new(id).map_err(|e| StoreError::Invalid(e.to_string()))?;
                out.push(LocalQuota { client_id, name, server_remaining, unsynced, remaining: server_remaining - unsynced });
            }
            Ok(out)
        })
        .await
    }

    /// Makes every failed item pending again; returns how many.
    pub async fn retry_failed(&self) -> StoreResult<usize> {
        self.with(|conn| {
            Ok(conn.execute(
                "UPDATE queue SET status = 'pending' WHERE status = 'failed'",
                [],
            )?)
        })
        .await
    }

    /// Queue depth by status.
    pub async fn counts(&self) -> StoreResult<QueueCounts> {
        self.with(|conn| {
            let mut c = QueueCounts::default();
            let mut stmt =
                conn.prepare_cached("SELECT status, count(*) FROM queue GROUP BY status")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (s, n) = row?;
                match s.as_str() {
                    "pending" => c.pending = n,
                    "synced" => c.synced = n,
                    _ => c.failed = n,
                }
            }
            let oldest: Option<String> = conn
                .query_row(
                    "SELECT created_at FROM queue WHERE status = 'pending' ORDER BY id LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            c.oldest_pending_at = oldest.as_deref().map(parse_ts).transpose()?;
            Ok(c)
        })
        .await
    }

    /// A value of the `meta` table.
    pub async fn meta(&self, key: &'static str) -> StoreResult<Option<String>> {
        self.with(move |conn| {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    /// Sets (or, with `None`, removes) values of the `meta` table, atomically.
    pub async fn set_meta(&self, pairs: Vec<(&'static str, Option<String>)>) -> StoreResult<()> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (k, v) in pairs {
                match v {
                    Some(v) => tx.execute(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![k, v],
                    )?,
                    None => tx.execute("DELETE FROM meta WHERE key = ?1", [k])?,
                };
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

fn map_open_err(path: &Path, e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            StoreError::NotSqlite(path.into())
        }
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::DatabaseCorrupt =>
        {
            StoreError::Corrupt(
                path.into(),
                msg.unwrap_or_else(|| "database disk image is malformed".into()),
            )
        }
        other => StoreError::Sqlite(other),
    }
}

/// Stores what the server said of a client's quota, unless it is older
/// (lower version) than what is stored: updates may arrive out of order.
fn set_server_remaining(
    tx: &rusqlite::Transaction<'_>,
    client: ClientId,
    name: Option<&str>,
    remaining: i64,
    version: Option<i64>,
    at: &str,
) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO quotas (client_id, name, server_remaining, server_version, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (client_id) DO UPDATE SET server_remaining = excluded.server_remaining, \
             server_version = coalesce(excluded.server_version, quotas.server_version), \
             name = coalesce(excluded.name, quotas.name), updated_at = excluded.updated_at \
         WHERE excluded.server_version IS NULL OR quotas.server_version IS NULL \
               OR excluded.server_version >= quotas.server_version",
        params![client.get(), name, remaining, version, at],
    )?;
    Ok(())
}

fn quota_of(conn: &Connection, client: ClientId) -> StoreResult<Option<LocalQuota>> {
    let row: Option<(Option<String>, i64)> = conn
        .query_row(
            "SELECT name, server_remaining FROM quotas WHERE client_id = ?1",
            [client.get()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((name, server_remaining)) = row else {
        return Ok(None);
    };
    let unsynced: i64 = conn.query_row(
        "SELECT count(*) FROM queue WHERE client_id = ?1 AND status != 'synced'",
        [client.get()],
        |r| r.get(0),
    )?;
    Ok(Some(LocalQuota {
        client_id: client,
        name,
        server_remaining,
        unsynced,
        remaining: server_remaining - unsynced,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "propass-store-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// A pull in which the server says the client has 2 copies left.
    async fn pull_two(store: &Store, c: ClientId) {
        let entry = QuotaEntry {
            client_id: c,
            remaining: 2,
            name: None,
            version: None,
        };
        store.apply_pull(vec![entry]).await.unwrap();
    }

    #[tokio::test]
    async fn record_checks_quota_and_pull_keeps_local_work() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        let uid = BadgeUid::parse("04AB12CD").unwrap();
        assert!(matches!(
            store.record(OpType::Copy, c, uid.clone(), None, None).await,
            Err(StoreError::UnknownClient(_))
        ));
        pull_two(&store, c).await;
        let (_, left, _) = store
            .record(OpType::Copy, c, uid.clone(), None, None)
            .await
            .unwrap();
        assert_eq!(left, 1);
        // A pull from a server that has not seen the pending copy: still 1 locally.
        pull_two(&store, c).await;
        assert_eq!(store.quotas().await.unwrap()[0].remaining, 1);
        store
            .record(OpType::Copy, c, uid.clone(), None, None)
            .await
            .unwrap();
        assert!(matches!(
            store.record(OpType::Copy, c, uid, None, None).await,
            Err(StoreError::QuotaExhausted { .. })
        ));
        assert_eq!(store.counts().await.unwrap().pending, 2);
    }

    #[tokio::test]
    async fn an_older_quota_update_does_not_overwrite_a_newer_one() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        let q = |remaining, version| QuotaUpdated {
            client_id: c,
            remaining,
            version: Some(version),
        };
        store.apply_quota_update(q(10, 5)).await.unwrap();
        store.apply_quota_update(q(12, 4)).await.unwrap(); // late, older
        assert_eq!(store.quotas().await.unwrap()[0].remaining, 10);
        store.apply_quota_update(q(9, 6)).await.unwrap();
        assert_eq!(store.quotas().await.unwrap()[0].remaining, 9);
    }

    #[test]
    fn refuses_foreign_and_garbage_files() {
        let garbage = temp("garbage.db");
        std::fs::write(&garbage, b"this is not a database at all, not even close!").unwrap();
        assert!(matches!(
            Store::open(&garbage),
            Err(StoreError::NotSqlite(_))
        ));
        assert_eq!(
            std::fs::read(&garbage).unwrap(),
            b"this is not a database at all, not even close!"
        );

        let foreign = temp("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        assert!(matches!(
            Store::open(&foreign),
            Err(StoreError::Foreign(_, 0))
        ));
    }
}
