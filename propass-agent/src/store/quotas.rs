//! The quota cache: what the server last said of each client (with its
//! version), and the local remaining derived from it — the server's value
//! minus the items not yet synced and the units reserved by open intents, so
//! a pull never erases local work. Both counts go through partial or
//! status indexes: their cost does not grow with a kiosk's history.

use chrono::{DateTime, Utc};
use propass_protocol::{ClientId, ReaderKey};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{ts, StoreError, StoreResult};

/// What an answer said of this kiosk's lease of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWord {
    /// Nothing (a live update; a push's quota without a lease entry): the
    /// stored lease stands.
    Unsaid,
    /// No lease: the kiosk spends the client's free units optimistically
    /// (an older server, or leases turned off).
    NoLease,
    /// The kiosk holds this many units, as of the answer.
    Units(i64),
}

/// A client's quota as this kiosk sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalQuota {
    pub client_id: ClientId,
    /// Its name, when the server gave one.
    pub name: Option<String>,
    /// What the server last said: the units no kiosk holds in lease.
    pub server_remaining: i64,
    /// The units the server set aside for this kiosk, as of its last answer
    /// (`None`: no lease).
    pub lease: Option<i64>,
    /// Operations recorded here and not yet synced (pending or failed).
    pub unsynced: i64,
    /// Units reserved by cards being made right now (open intents).
    pub reserved: i64,
    /// What this kiosk may still make: its lease (else the server's
    /// remaining) minus the operations not yet synced and the reservations.
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
    /// Pulls and pushes of a kiosk with a lease carry it.
    pub lease: LeaseWord,
    /// Only pulls carry them (every key of the client's badges); `None`
    /// keeps the stored keys.
    pub reader_keys: Option<Vec<ReaderKey>>,
}

/// Stores what the server said, unless it is older (lower version) than
/// what is stored: updates may arrive out of order.
pub fn set_server_remaining(conn: &Connection, q: &ServerQuota, at: &str) -> StoreResult<()> {
    set_remaining(conn, q, at, false)
}

/// Like [`set_server_remaining`]; `authoritative` (a pull: a fresh read of
/// the server's rows) replaces whatever is stored, older version included —
/// a server restored from a backup, or another server, counts versions
/// anew, and a kiosk that kept the highest one would ignore it forever.
fn set_remaining(
    conn: &Connection,
    q: &ServerQuota,
    at: &str,
    authoritative: bool,
) -> StoreResult<()> {
    let keys = q.reader_keys.as_ref().map(|keys| {
        keys.iter()
            .map(ReaderKey::to_hex)
            .collect::<Vec<_>>()
            .join(",")
    });
    conn.execute(
        "INSERT INTO quotas (client_id, name, server_remaining, server_version, updated_at, partial_copy, reader_keys) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8) \
         ON CONFLICT (client_id) DO UPDATE SET server_remaining = excluded.server_remaining, \
             server_version = coalesce(excluded.server_version, quotas.server_version), \
             name = coalesce(excluded.name, quotas.name), updated_at = excluded.updated_at, \
             partial_copy = coalesce(excluded.partial_copy, quotas.partial_copy), \
             reader_keys = coalesce(excluded.reader_keys, quotas.reader_keys) \
         WHERE ?7 OR excluded.server_version IS NULL OR quotas.server_version IS NULL \
               OR excluded.server_version >= quotas.server_version",
        params![q.client.get(), q.name, q.remaining, q.version, at, q.partial_copy, authoritative, keys],
    )?;
    Ok(())
}

/// The keys the server gave for `client`'s badges (none when it gave none
/// or never named the client). A stored key that does not parse is left
/// out: it cannot open anything.
pub fn reader_keys_of(conn: &Connection, client: ClientId) -> StoreResult<Vec<ReaderKey>> {
    let stored: Option<Option<String>> = conn
        .query_row(
            "SELECT reader_keys FROM quotas WHERE client_id = ?1",
            [client.get()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(stored
        .flatten()
        .unwrap_or_default()
        .split(',')
        .filter_map(|k| ReaderKey::parse(k).ok())
        .collect())
}

/// One client's quota, `None` when the server never named it.
pub fn quota_of(conn: &Connection, client: ClientId) -> StoreResult<Option<LocalQuota>> {
    let sql = format!("{SELECT_LOCAL} WHERE q.client_id = ?1");
    Ok(select(conn, &sql, [client.get()])?.pop())
}

/// Every known client's quota.
pub fn quotas(conn: &Connection) -> StoreResult<Vec<LocalQuota>> {
    let sql = format!("{SELECT_LOCAL} ORDER BY q.client_id");
    select(conn, &sql, [])
}

/// A client's row with the counts its local remaining is derived from: the
/// items not yet synced (the (client_id, status) index answers it without
/// walking the synced history) and the units held by open intents (a
/// partial index).
const SELECT_LOCAL: &str = "SELECT q.client_id, q.name, q.server_remaining, q.partial_copy, q.server_lease, \
       (SELECT count(*) FROM queue WHERE client_id = q.client_id AND status IN ('pending', 'failed')), \
       (SELECT count(*) FROM intents WHERE client_id = q.client_id AND step IN ('reserved', 'writing')) \
     FROM quotas q";

fn select(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> StoreResult<Vec<LocalQuota>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<bool>>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, server_remaining, partial_copy, lease, unsynced, reserved) = row?;
        out.push(LocalQuota {
            client_id: ClientId::new(id).map_err(|e| StoreError::Invalid(e.to_string()))?,
            name,
            server_remaining,
            lease,
            unsynced,
            reserved,
            // With a lease the kiosk spends only its own units: what the
            // server set aside, less what it made since the server counted.
            remaining: lease.unwrap_or(server_remaining) - unsynced - reserved,
            partial_copy: partial_copy.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Stores what an answer said of the kiosk's lease of `q.client` (the row
/// exists: [`set_server_remaining`] ran first). Not versioned: leases change
/// only in this kiosk's own pushes and pulls, which run one at a time, or
/// by an operator, which the next answer tells.
fn set_lease(conn: &Connection, q: &ServerQuota) -> StoreResult<()> {
    let units = match q.lease {
        LeaseWord::Unsaid => return Ok(()),
        LeaseWord::NoLease => None,
        LeaseWord::Units(n) => Some(n),
    };
    conn.execute(
        "UPDATE quotas SET server_lease = ?2 WHERE client_id = ?1",
        params![q.client.get(), units],
    )?;
    Ok(())
}

/// Stores a push answer's word on a client: its remaining (unless older
/// than what is stored) and this kiosk's lease.
pub fn apply_server_quota(conn: &Connection, q: &ServerQuota, at: &str) -> StoreResult<()> {
    set_server_remaining(conn, q, at)?;
    set_lease(conn, q)
}

/// After a clean shutdown gave the leases back: nothing is held, and
/// nothing may be spent offline until the server sets units aside again.
pub fn leases_returned(conn: &Connection) -> StoreResult<()> {
    conn.execute(
        "UPDATE quotas SET server_lease = 0 WHERE server_lease IS NOT NULL",
        [],
    )?;
    Ok(())
}

/// Lets go of up to `asked` units of the lease of `client` that this kiosk
/// has not spent (its lease, less the copies not yet synced and the units
/// reserved by cards being made): the server asks for what it holds above a
/// lowered target. Answers the units let go, which the kiosk then gives
/// back. Let go before asking, as at shutdown: an answer lost after the
/// server took them must not leave the kiosk spending them; one the server
/// did not take comes back with the next complete pull.
pub fn let_go(conn: &Connection, client: ClientId, asked: i64) -> StoreResult<i64> {
    let Some(q) = quota_of(conn, client)? else {
        return Ok(0);
    };
    let Some(lease) = q.lease else {
        return Ok(0);
    };
    let unspent = lease - q.unsynced - q.reserved;
    let give = asked.min(unspent).max(0);
    if give > 0 {
        conn.execute(
            "UPDATE quotas SET server_lease = server_lease - ?2 WHERE client_id = ?1",
            params![client.get(), give],
        )?;
    }
    Ok(give)
}

/// Stores a pull — authoritative, whatever its versions say (see
/// [`set_remaining`]): the server's remaining for every client it listed.
/// A complete pull lists every client the kiosk serves: those it no longer
/// lists are forgotten unless work is queued for them. A delta (`complete`
/// false) lists only what changed; the others stay as they are.
///
/// `recorded_through` (the highest local id of this kiosk's operations the
/// server's ledger holds) makes the operations held as synced above it
/// pending again: the server lost them (restored from a backup, or another
/// server). Returns how many.
pub fn apply_pull(
    conn: &mut Connection,
    listed: &[ServerQuota],
    complete: bool,
    recorded_through: Option<i64>,
    now: DateTime<Utc>,
) -> StoreResult<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let resent = match recorded_through {
        Some(through) => tx.execute(
            "UPDATE queue SET status = 'pending', synced_at = NULL WHERE status = 'synced' AND id > ?1",
            [through],
        )?,
        None => 0,
    };
    let at = ts(now);
    for q in listed {
        set_remaining(&tx, q, &at, true)?;
        set_lease(&tx, q)?;
    }
    if !complete {
        tx.commit()?;
        return Ok(resent);
    }
    let ids: Vec<String> = listed.iter().map(|q| q.client.get().to_string()).collect();
    // No client listed: `NOT IN (NULL)` would match no row and keep every
    // client (and its lease) of a kiosk that serves none any more; no
    // client id is 0.
    let ids = if ids.is_empty() {
        "0".to_string()
    } else {
        ids.join(",")
    };
    tx.execute(
        &format!(
            "DELETE FROM quotas WHERE client_id NOT IN ({ids}) \
             AND client_id NOT IN (SELECT client_id FROM queue WHERE status IN ('pending', 'failed')) \
             AND client_id NOT IN (SELECT client_id FROM intents WHERE step IN ('reserved', 'writing'))"
        ),
        [],
    )?;
    // A client kept for its unsynced work is no longer this kiosk's: its
    // keys go (the secrets of clients a kiosk does not serve stay off it).
    tx.execute(
        &format!("UPDATE quotas SET reader_keys = NULL WHERE client_id NOT IN ({ids})"),
        [],
    )?;
    tx.commit()?;
    Ok(resent)
}

/// A live update of one client's quota; returns its local view.
pub fn apply_update(
    conn: &mut Connection,
    q: &ServerQuota,
    now: DateTime<Utc>,
) -> StoreResult<LocalQuota> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A client not known here is not added by an update: it comes with a
    // pull, which also says whether this kiosk holds a lease of it (a row
    // without one would let the kiosk spend the client's free units).
    let known: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM quotas WHERE client_id = ?1)",
        [q.client.get()],
        |r| r.get(0),
    )?;
    if !known {
        return Err(StoreError::UnknownClient(q.client));
    }
    set_server_remaining(&tx, q, &ts(now))?;
    let local = quota_of(&tx, q.client)?.ok_or(StoreError::UnknownClient(q.client))?;
    tx.commit()?;
    Ok(local)
}
