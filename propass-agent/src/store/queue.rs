//! The queue of recorded operations: recording (quota check and insert in
//! one `BEGIN IMMEDIATE`), listing, attempts, and applying a push's
//! outcomes. Items move `pending → synced` or `pending → failed → pending`;
//! none is ever deleted.

use chrono::{DateTime, Utc};
use propass_protocol::{BadgeUid, ClientId, OpId, OpType, SectorMap};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::quotas::{self, LocalQuota, ServerQuota};
use super::{parse_ts, ts, StoreError, StoreResult};

/// Status of a queued operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The stored (and shown) name.
    pub fn as_str(self) -> &'static str {
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

/// One queued operation as stored (and as the local API shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedOp {
    /// Device-local id (never reused).
    pub id: i64,
    /// Global id, the server's idempotency key.
    pub op_id: OpId,
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// The client charged.
    pub client_id: ClientId,
    /// The UID on the card.
    pub uid: BadgeUid,
    /// When the card was made.
    pub occurred_at: DateTime<Utc>,
    pub status: ItemStatus,
    /// Push attempts that included this item.
    pub attempts: i64,
    /// The server's reason when failed.
    pub last_error: Option<String>,
    /// When recorded.
    pub created_at: DateTime<Utc>,
    /// When the server acknowledged it.
    pub synced_at: Option<DateTime<Utc>>,
    /// A whole-badge copy's sector map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sectors: Option<SectorMap>,
    /// Written but not verified (an in-doubt card): charged, and flagged
    /// for an operator.
    #[serde(default)]
    pub unverified: bool,
}

/// Queue depth by status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueCounts {
    pub pending: i64,
    pub synced: i64,
    pub failed: i64,
    /// When the oldest pending item was recorded.
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

/// An operation to record. The caller supplies the time and the id: a
/// caller's own `op_id` makes the recording idempotent.
#[derive(Debug, Clone)]
pub struct NewRecording {
    pub op_type: OpType,
    pub client: ClientId,
    pub uid: BadgeUid,
    /// When the card was made.
    pub occurred_at: DateTime<Utc>,
    /// Now: the item's `created_at`.
    pub recorded_at: DateTime<Utc>,
    pub op_id: OpId,
    /// A whole-badge copy's sector map; `None` for a UID-only operation.
    pub sectors: Option<SectorMap>,
    /// Written but not verified (see [`QueuedOp::unverified`]).
    pub unverified: bool,
}

/// Whether the local quota may refuse a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPolicy {
    /// Refuse an unknown client or one with nothing left (an operation
    /// reported by the UI, not yet done).
    Enforce,
    /// Never refuse: the card was made and verified, it exists (an overdraft
    /// is the server's to flag).
    CardExists,
}

/// What [`record`] did.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub operation: QueuedOp,
    /// The client's local remaining after it.
    pub remaining: i64,
    /// The op_id was already recorded for this same operation: nothing new.
    pub duplicate: bool,
}

/// The server's verdict on one pushed item, matched by local id and op_id.
#[derive(Debug, Clone)]
pub struct ItemOutcome {
    /// Local id.
    pub id: i64,
    /// When echoed by the server: must match the stored item's.
    pub op_id: Option<OpId>,
    /// `Err(reason)` when refused.
    pub result: Result<(), String>,
}

/// How many pushed items a push's answer settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushApplied {
    pub synced: usize,
    pub failed: usize,
}

/// Records one operation: the replay check, the quota check and the insert
/// in one `BEGIN IMMEDIATE`, committed before it returns.
pub fn record(
    conn: &mut Connection,
    new: &NewRecording,
    policy: QuotaPolicy,
) -> StoreResult<Recorded> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let quota = quotas::quota_of(&tx, new.client)?;
    if let Some(existing) = find(&tx, new.op_id)? {
        let same = existing.op_type == new.op_type
            && existing.client_id == new.client
            && existing.uid == new.uid;
        if !same {
            return Err(StoreError::OpIdConflict(new.op_id));
        }
        return Ok(Recorded {
            operation: existing,
            remaining: quota.map(|q| q.remaining).unwrap_or(0),
            duplicate: true,
        });
    }
    if policy == QuotaPolicy::Enforce {
        check_quota(new.client, quota.as_ref())?;
    }
    let operation = insert(&tx, new)?;
    tx.commit()?;
    Ok(Recorded {
        operation,
        remaining: quota.map(|q| q.remaining).unwrap_or(0) - 1,
        duplicate: false,
    })
}

pub(super) fn check_quota(client: ClientId, quota: Option<&LocalQuota>) -> StoreResult<()> {
    let q = quota.ok_or(StoreError::UnknownClient(client))?;
    if q.remaining > 0 {
        return Ok(());
    }
    if q.lease.is_some() {
        return Err(StoreError::LeaseExhausted {
            client,
            name: q.name.clone().unwrap_or_else(|| format!("client {client}")),
        });
    }
    Err(StoreError::QuotaExhausted {
        client,
        remaining: q.remaining,
    })
}

pub(super) fn insert(tx: &Transaction<'_>, new: &NewRecording) -> StoreResult<QueuedOp> {
    tx.execute(
        "INSERT INTO queue (op_id, type, client_id, uid, occurred_at, created_at, sectors, unverified) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            new.op_id.to_string(),
            new.op_type.as_str(),
            new.client.get(),
            new.uid.to_hex(),
            ts(new.occurred_at),
            ts(new.recorded_at),
            new.sectors.as_ref().map(SectorMap::as_str),
            new.unverified
        ],
    )?;
    Ok(QueuedOp {
        id: tx.last_insert_rowid(),
        op_id: new.op_id,
        op_type: new.op_type,
        client_id: new.client,
        uid: new.uid.clone(),
        occurred_at: new.occurred_at,
        status: ItemStatus::Pending,
        attempts: 0,
        last_error: None,
        created_at: new.recorded_at,
        synced_at: None,
        sectors: new.sectors.clone(),
        unverified: new.unverified,
    })
}

const SELECT_OPS: &str = "SELECT id, op_id, type, client_id, uid, occurred_at, status, attempts, \
                          last_error, created_at, synced_at, sectors, unverified FROM queue";

/// The operation with this op_id.
pub fn find(conn: &Connection, op_id: OpId) -> StoreResult<Option<QueuedOp>> {
    let sql = format!("{SELECT_OPS} WHERE op_id = ?1");
    Ok(select(conn, &sql, params![op_id.to_string()])?.pop())
}

/// Items, oldest first, optionally of one status.
pub fn list(
    conn: &Connection,
    status: Option<ItemStatus>,
    limit: usize,
) -> StoreResult<Vec<QueuedOp>> {
    let limit = limit as i64;
    match status {
        Some(st) => {
            let sql = format!("{SELECT_OPS} WHERE status = ?1 ORDER BY id LIMIT ?2");
            select(conn, &sql, params![st.as_str(), limit])
        }
        None => select(
            conn,
            &format!("{SELECT_OPS} ORDER BY id LIMIT ?1"),
            params![limit],
        ),
    }
}

/// What a kiosk holds that the server has not recorded: every operation not
/// synced (pending or failed), oldest first, and how many card writes were
/// interrupted and not settled yet (the next start records them).
pub fn unsynced(conn: &Connection) -> StoreResult<(Vec<QueuedOp>, i64)> {
    let ops = select(
        conn,
        &format!("{SELECT_OPS} WHERE status IN ('pending', 'failed') ORDER BY id"),
        [],
    )?;
    let open: i64 = conn.query_row(
        "SELECT count(*) FROM intents WHERE step = 'writing'",
        [],
        |r| r.get(0),
    )?;
    Ok((ops, open))
}

/// A queue row as SQLite holds it, before its values are parsed.
struct Row {
    id: i64,
    op_id: String,
    op_type: String,
    client: i64,
    uid: String,
    occurred: String,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    created: String,
    synced: Option<String>,
    sectors: Option<String>,
    unverified: bool,
}

fn select(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> StoreResult<Vec<QueuedOp>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| {
        Ok(Row {
            id: r.get(0)?,
            op_id: r.get(1)?,
            op_type: r.get(2)?,
            client: r.get(3)?,
            uid: r.get(4)?,
            occurred: r.get(5)?,
            status: r.get(6)?,
            attempts: r.get(7)?,
            last_error: r.get(8)?,
            created: r.get(9)?,
            synced: r.get(10)?,
            sectors: r.get(11)?,
            unverified: r.get(12)?,
        })
    })?;
    rows.map(|row| parse_row(row?)).collect()
}

fn parse_row(row: Row) -> StoreResult<QueuedOp> {
    let id = row.id;
    let bad = |what: &str, e: String| StoreError::Invalid(format!("queue item {id}: {what}: {e}"));
    Ok(QueuedOp {
        id,
        op_id: OpId(
            row.op_id
                .parse()
                .map_err(|e: uuid::Error| bad("op_id", e.to_string()))?,
        ),
        op_type: row.op_type.parse().map_err(|e| bad("type", e))?,
        client_id: ClientId::new(row.client).map_err(|e| bad("client_id", e.to_string()))?,
        uid: BadgeUid::parse(&row.uid).map_err(|e| bad("uid", e.to_string()))?,
        occurred_at: parse_ts(&row.occurred)?,
        status: row.status.parse().map_err(|e| bad("status", e))?,
        attempts: row.attempts,
        last_error: row.last_error,
        created_at: parse_ts(&row.created)?,
        synced_at: row.synced.as_deref().map(parse_ts).transpose()?,
        sectors: row
            .sectors
            .as_deref()
            .map(SectorMap::parse)
            .transpose()
            .map_err(|e| bad("sectors", e.to_string()))?,
        unverified: row.unverified,
    })
}

/// Counts an attempt for each item about to be pushed.
pub fn note_attempt(conn: &mut Connection, ids: &[i64]) -> StoreResult<()> {
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
}

/// Applies a push's outcomes and the server's remaining quotas in one
/// transaction. An outcome for an item that is not pending, or whose op_id
/// differs from the stored one, is ignored.
pub fn apply_push(
    conn: &mut Connection,
    outcomes: &[ItemOutcome],
    server_quotas: &[ServerQuota],
    now: DateTime<Utc>,
) -> StoreResult<PushApplied> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let at = ts(now);
    let mut applied = PushApplied::default();
    for outcome in outcomes {
        let stored: Option<String> = tx
            .query_row(
                "SELECT op_id FROM queue WHERE id = ?1 AND status = 'pending'",
                [outcome.id],
                |row| row.get(0),
            )
            .optional()?;
        let Some(stored) = stored else { continue };
        if outcome.op_id.is_some_and(|o| o.to_string() != stored) {
            continue;
        }
        match &outcome.result {
            Ok(()) => {
                tx.execute(
                    "UPDATE queue SET status = 'synced', synced_at = ?2, last_error = NULL WHERE id = ?1",
                    params![outcome.id, at],
                )?;
                applied.synced += 1;
            }
            Err(why) => {
                tx.execute(
                    "UPDATE queue SET status = 'failed', last_error = ?2 WHERE id = ?1",
                    params![outcome.id, why],
                )?;
                applied.failed += 1;
            }
        }
    }
    for q in server_quotas {
        quotas::apply_server_quota(&tx, q, &at)?;
    }
    tx.commit()?;
    Ok(applied)
}

/// Makes every failed item pending again; returns how many.
pub fn retry_failed(conn: &Connection) -> StoreResult<usize> {
    Ok(conn.execute(
        "UPDATE queue SET status = 'pending' WHERE status = 'failed'",
        [],
    )?)
}

/// Queue depth by status, without walking the history: pending and failed
/// are index ranges (a few rows), and synced is what is left of every row
/// ever recorded — rows are never deleted (the queue is the kiosk's
/// history), so the last id is their number. A `GROUP BY status` walked a
/// million synced rows on a kiosk a year old, at every sync round.
pub fn counts(conn: &Connection) -> StoreResult<QueueCounts> {
    let mut c = QueueCounts::default();
    let mut stmt = conn.prepare_cached(
        "SELECT (SELECT count(*) FROM queue WHERE status = 'pending'), \
                (SELECT count(*) FROM queue WHERE status = 'failed'), \
                (SELECT coalesce(max(id), 0) FROM queue)",
    )?;
    let (pending, failed, recorded): (i64, i64, i64) =
        stmt.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    c.pending = pending;
    c.failed = failed;
    c.synced = (recorded - pending - failed).max(0);
    let oldest: Option<String> = conn
        .query_row(
            "SELECT created_at FROM queue WHERE status = 'pending' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    c.oldest_pending_at = oldest.as_deref().map(parse_ts).transpose()?;
    Ok(c)
}
