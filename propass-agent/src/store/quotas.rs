//! The quota cache: what the server last said of each client (with its
//! version), and the local remaining derived from it — the server's value
//! minus the items not yet synced and the units reserved by open intents, so
//! a pull never erases local work. Both counts go through partial or
//! status indexes: their cost does not grow with a kiosk's history.

use chrono::{DateTime, Utc};
use propass_protocol::ClientId;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{ts, StoreError, StoreResult};

/// A client's quota as this kiosk sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalQuota {
    pub client_id: ClientId,
    /// Its name, when the server gave one.
    pub name: Option<String>,
    /// What the server last said.
    pub server_remaining: i64,
    /// Operations recorded here and not yet synced (pending or failed).
    pub unsynced: i64,
    /// Units reserved by cards being made right now (open intents).
    pub reserved: i64,
    /// `server_remaining - unsynced - reserved`: what this kiosk may still make.
    pub remaining: i64,
    /// The client accepts a copy that leaves out sectors this kiosk cannot read.
    pub partial_copy: bool,
}

/// What the server said of a client's quota (a pull, a push's answer, a
/// live update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerQuota {
    pub client: ClientId,
    /// Only pulls carry it; `None` keeps the stored name.
    pub name: Option<String>,
    pub remaining: i64,
    /// `None` from an older server: always applied.
    pub version: Option<i64>,
    /// Only pulls carry it; `None` keeps the stored policy.
    pub partial_copy: Option<bool>,
}

/// Stores what the server said, unless it is older (lower version) than
/// what is stored: updates may arrive out of order.
pub fn set_server_remaining(conn: &Connection, q: &ServerQuota, at: &str) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO quotas (client_id, name, server_remaining, server_version, updated_at, partial_copy) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (client_id) DO UPDATE SET server_remaining = excluded.server_remaining, \
             server_version = coalesce(excluded.server_version, quotas.server_version), \
             name = coalesce(excluded.name, quotas.name), updated_at = excluded.updated_at, \
             partial_copy = coalesce(excluded.partial_copy, quotas.partial_copy) \
         WHERE excluded.server_version IS NULL OR quotas.server_version IS NULL \
               OR excluded.server_version >= quotas.server_version",
        params![q.client.get(), q.name, q.remaining, q.version, at, q.partial_copy],
    )?;
    Ok(())
}

/// One client's quota, `None` when the server never named it.
pub fn quota_of(conn: &Connection, client: ClientId) -> StoreResult<Option<LocalQuota>> {
    let row: Option<(Option<String>, i64, Option<bool>)> = conn
        .query_row(
            "SELECT name, server_remaining, partial_copy FROM quotas WHERE client_id = ?1",
            [client.get()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((name, server_remaining, partial_copy)) = row else {
        return Ok(None);
    };
    let (unsynced, reserved): (i64, i64) = conn.query_row(
        &format!("SELECT {UNSYNCED}, {RESERVED} FROM (SELECT ?1 AS client_id) q"),
        [client.get()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Some(LocalQuota {
        client_id: client,
        name,
        server_remaining,
        unsynced,
        reserved,
        remaining: server_remaining - unsynced - reserved,
        partial_copy: partial_copy.unwrap_or(false),
    }))
}

/// Items of `q.client_id` not yet synced: the (client_id, status) index
/// answers it without walking the synced history.
const UNSYNCED: &str =
    "(SELECT count(*) FROM queue WHERE client_id = q.client_id AND status IN ('pending', 'failed'))";

/// Units of `q.client_id` held by open intents (the partial index).
const RESERVED: &str = "(SELECT count(*) FROM intents WHERE client_id = q.client_id AND step IN ('reserved', 'writing'))";

/// Every known client's quota.
pub fn quotas(conn: &Connection) -> StoreResult<Vec<LocalQuota>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT q.client_id, q.name, q.server_remaining, {UNSYNCED}, q.partial_copy, {RESERVED} \
         FROM quotas q ORDER BY q.client_id"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<bool>>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, server_remaining, unsynced, partial_copy, reserved) = row?;
        out.push(LocalQuota {
            client_id: ClientId::new(id).map_err(|e| StoreError::Invalid(e.to_string()))?,
            name,
            server_remaining,
            unsynced,
            reserved,
            remaining: server_remaining - unsynced - reserved,
            partial_copy: partial_copy.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Stores a pull: the server's remaining for every client it listed;
/// clients it no longer lists are forgotten unless work is queued for them.
pub fn apply_pull(
    conn: &mut Connection,
    listed: &[ServerQuota],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let at = ts(now);
    for q in listed {
        set_server_remaining(&tx, q, &at)?;
    }
    let ids: Vec<String> = listed.iter().map(|q| q.client.get().to_string()).collect();
    let ids = if ids.is_empty() {
        "NULL".to_string()
    } else {
        ids.join(",")
    };
    tx.execute(
        &format!(
            "DELETE FROM quotas WHERE client_id NOT IN ({ids}) \
             AND client_id NOT IN (SELECT client_id FROM queue WHERE status != 'synced')"
        ),
        [],
    )?;
    tx.commit()?;
    Ok(())
}

/// A live update of one client's quota; returns its local view.
pub fn apply_update(
    conn: &mut Connection,
    q: &ServerQuota,
    now: DateTime<Utc>,
) -> StoreResult<LocalQuota> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    set_server_remaining(&tx, q, &ts(now))?;
    let local = quota_of(&tx, q.client)?.ok_or(StoreError::UnknownClient(q.client))?;
    tx.commit()?;
    Ok(local)
}
