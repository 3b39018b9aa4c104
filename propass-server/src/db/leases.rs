//! Leases: units of a client's quota set aside for one kiosk (escrow), so
//! that kiosks cut off from the server together can never spend the same
//! units twice.
//!
//! Every change of a lease locks the client's quota row first, in client-id
//! order (as pushes do), and keeps `quotas.leased` equal to the sum of the
//! client's leases in the same statement. A grant takes at most the free
//! units, `total - used - leased`, read after the lock: concurrent grants
//! queue on the row, so none is ever granted twice. Pushed copies of a kiosk
//! consume its lease first (`consume`, called by the ledger); what a lease
//! does not cover is charged to the free units and may be an overdraft.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use propass_protocol::{ClientId, DeviceId};

use super::clients::QUOTA_CHANNEL;
use super::prepared::Prepare;

/// Lease sizes: the server's defaults, a client's, or a kiosk's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// A lease is refilled up to this many units.
    pub target: i64,
    /// ... when it holds fewer than this.
    pub low_water: i64,
}

impl LeasePolicy {
    /// Sizes an operator asked for: the low-water mark defaults to half the
    /// target (rounded up) and may not exceed it (a lease would be refilled
    /// at every sync).
    pub fn parse(target: u32, low_water: Option<u32>) -> Result<Self, String> {
        let low_water = low_water.unwrap_or(target.div_ceil(2));
        if low_water > target {
            return Err(format!(
                "low-water mark {low_water} is above the target {target}: a lease would be refilled at every sync"
            ));
        }
        Ok(Self {
            target: i64::from(target),
            low_water: i64::from(low_water),
        })
    }
}

/// Sets a kiosk's own lease sizes (`None`: its clients' again); whether the
/// kiosk exists.
pub async fn set_device_sizes(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    sizes: Option<LeasePolicy>,
) -> diesel::QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE devices SET lease_target = $2, lease_low_water = $3 WHERE device_id = $1",
    )
    .bind::<Text, _>(device.as_str())
    .bind::<Nullable<BigInt>, _>(sizes.map(|s| s.target))
    .bind::<Nullable<BigInt>, _>(sizes.map(|s| s.low_water))
    .execute(conn)
    .await?;
    Ok(n == 1)
}

#[derive(QueryableByName)]
struct Sizes {
    #[diesel(sql_type = Nullable<BigInt>)]
    lease_target: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    lease_low_water: Option<i64>,
}

/// A kiosk's own lease sizes, when it has some.
pub async fn device_sizes(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
) -> diesel::QueryResult<Option<LeasePolicy>> {
    let row: Option<Sizes> =
        diesel::sql_query("SELECT lease_target, lease_low_water FROM devices WHERE device_id = $1")
            .bind::<Text, _>(device.as_str())
            .prepared()
            .get_result(conn)
            .await
            .optional()?;
    Ok(row.and_then(|r| {
        Some(LeasePolicy {
            target: r.lease_target?,
            low_water: r.lease_low_water?,
        })
    }))
}

/// Locks the quota rows of `clients`, in id order: the one order every
/// writer of quotas and leases takes them in.
pub async fn lock_quotas(
    conn: &mut &AsyncPgConnection,
    clients: &[i64],
) -> diesel::QueryResult<()> {
    if clients.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "SELECT client_id FROM quotas WHERE client_id = ANY($1) ORDER BY client_id FOR UPDATE",
    )
    .bind::<Array<BigInt>, _>(clients)
    .prepared()
    .execute(conn)
    .await?;
    Ok(())
}

/// Tells every server that these clients' free units changed (their
/// kiosks get `quota_updated`). Delivered at COMMIT.
async fn announce(conn: &mut AsyncPgConnection, clients: &[i64]) -> diesel::QueryResult<()> {
    for c in clients {
        diesel::sql_query(format!("NOTIFY {QUOTA_CHANNEL}, '{c}'"))
            .execute(conn)
            .await?;
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Granted {
    #[diesel(sql_type = BigInt)]
    client_id: i64,
}

/// Refills `device`'s lease of each of `clients` that holds fewer than its
/// low-water mark, up to its target, from the free units: the kiosk's `own`
/// sizes when it has some, else the client's, else `policy` (the server's).
/// Run inside the caller's transaction.
pub async fn refill(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    clients: &[i64],
    policy: LeasePolicy,
    own: Option<LeasePolicy>,
) -> diesel::QueryResult<()> {
    let mut clients = clients.to_vec();
    clients.sort_unstable();
    clients.dedup();
    lock_quotas(&mut &*conn, &clients).await?;
    // A new statement after the lock: its snapshot sees every grant and
    // charge committed before the lock was ours.
    let granted: Vec<Granted> = diesel::sql_query(
        "WITH want AS ( \
           SELECT q.client_id, COALESCE(l.units, 0) AS units, \
                  LEAST(COALESCE($5, c.lease_target, $2) - COALESCE(l.units, 0), q.total - q.used - q.leased) AS g \
           FROM quotas q JOIN clients c ON c.id = q.client_id \
           LEFT JOIN leases l ON l.client_id = q.client_id AND l.device_id = $1 \
           WHERE q.client_id = ANY($4) AND COALESCE(l.units, 0) < COALESCE($6, c.lease_low_water, $3) \
         ), given AS ( \
           INSERT INTO leases (device_id, client_id, units) \
           SELECT $1, client_id, units + g FROM want WHERE g > 0 \
           ON CONFLICT (device_id, client_id) DO UPDATE SET units = excluded.units, updated_at = now() \
           RETURNING client_id \
         ) \
         UPDATE quotas q SET leased = q.leased + w.g, version = q.version + 1, updated_at = now() \
         FROM want w WHERE q.client_id = w.client_id AND w.g > 0 \
         RETURNING q.client_id",
    )
    .bind::<Text, _>(device.as_str())
    .bind::<BigInt, _>(policy.target)
    .bind::<BigInt, _>(policy.low_water)
    .bind::<Array<BigInt>, _>(&clients)
    .bind::<Nullable<BigInt>, _>(own.map(|o| o.target))
    .bind::<Nullable<BigInt>, _>(own.map(|o| o.low_water))
    .prepared()
    .load(conn)
    .await?;
    let granted: Vec<i64> = granted.into_iter().map(|g| g.client_id).collect();
    if !granted.is_empty() {
        tracing::info!(%device, clients = ?granted, "leases refilled");
    }
    announce(conn, &granted).await
}

#[derive(QueryableByName)]
struct Held {
    #[diesel(sql_type = BigInt)]
    client_id: i64,
    #[diesel(sql_type = BigInt)]
    units: i64,
}

/// The units `device` holds, by client (only the clients with a lease row;
/// `clients` narrows it).
pub async fn held(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    clients: Option<&[i64]>,
) -> diesel::QueryResult<HashMap<i64, i64>> {
    let rows: Vec<Held> = diesel::sql_query(
        "SELECT client_id, units FROM leases WHERE device_id = $1 \
         AND ($2::int8[] IS NULL OR client_id = ANY($2))",
    )
    .bind::<Text, _>(device.as_str())
    .bind::<Nullable<Array<BigInt>>, _>(clients)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.client_id, r.units)).collect())
}

#[derive(QueryableByName)]
struct Consumed {
    #[diesel(sql_type = BigInt)]
    client_id: i64,
    #[diesel(sql_type = BigInt)]
    take: i64,
    #[diesel(sql_type = BigInt)]
    units: i64,
}

/// What a push did to one of the device's leases.
#[derive(Debug, Clone, Copy)]
pub struct LeaseUse {
    /// Units the lease covered.
    pub taken: i64,
    /// Units left in it.
    pub left: i64,
}

/// Consumes `device`'s leases for its newly recorded copies (`cids[i]`:
/// `ns[i]` copies); answers, for every lease the device holds of those
/// clients, the units it covered and the units left. The caller holds the
/// quota rows' locks and moves `quotas.leased` by the same amounts.
pub async fn consume(
    conn: &mut &AsyncPgConnection,
    device: &DeviceId,
    cids: &[i64],
    ns: &[i64],
) -> diesel::QueryResult<HashMap<i64, LeaseUse>> {
    // The outer SELECT reads the statement's snapshot (before the update):
    // a lease the update changed is answered from its RETURNING.
    let rows: Vec<Consumed> = diesel::sql_query(
        "WITH old AS ( \
           SELECT l.client_id, LEAST(l.units, c.n) AS take \
           FROM leases l JOIN unnest($2::int8[], $3::int8[]) AS c(client_id, n) ON c.client_id = l.client_id \
           WHERE l.device_id = $1 AND l.units > 0 \
         ), used AS ( \
           UPDATE leases l SET units = l.units - old.take, updated_at = now() \
           FROM old WHERE l.device_id = $1 AND l.client_id = old.client_id \
           RETURNING l.client_id, old.take, l.units \
         ) \
         SELECT l.client_id, coalesce(used.take, 0) AS take, coalesce(used.units, l.units) AS units \
         FROM leases l LEFT JOIN used ON used.client_id = l.client_id \
         WHERE l.device_id = $1 AND l.client_id = ANY($2)",
    )
    .bind::<Text, _>(device.as_str())
    .bind::<Array<BigInt>, _>(cids)
    .bind::<Array<BigInt>, _>(ns)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.client_id,
                LeaseUse {
                    taken: r.take,
                    left: r.units,
                },
            )
        })
        .collect())
}

#[derive(QueryableByName)]
struct Returned {
    #[diesel(sql_type = BigInt)]
    client_id: i64,
    #[diesel(sql_type = BigInt)]
    units: i64,
}

/// Gives `device`'s unused units back to the free pool — of one client, or
/// of all — and forgets the lease: a revoked device, a client no longer
/// assigned, an operator's reclaim, a kiosk shutting down cleanly. Answers
/// the units returned, by client. Run inside the caller's transaction.
pub async fn release(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    client: Option<ClientId>,
) -> diesel::QueryResult<Vec<(i64, i64)>> {
    let only = client.map(ClientId::get);
    let mut clients: Vec<i64> = held(conn, device, None)
        .await?
        .into_keys()
        .filter(|c| only.is_none_or(|o| o == *c))
        .collect();
    clients.sort_unstable();
    lock_quotas(&mut &*conn, &clients).await?;
    let rows: Vec<Returned> = diesel::sql_query(
        "WITH gone AS ( \
           DELETE FROM leases WHERE device_id = $1 AND client_id = ANY($2) RETURNING client_id, units \
         ) \
         UPDATE quotas q SET leased = q.leased - g.units, version = q.version + 1, updated_at = now() \
         FROM gone g WHERE q.client_id = g.client_id \
         RETURNING g.client_id, g.units",
    )
    .bind::<Text, _>(device.as_str())
    .bind::<Array<BigInt>, _>(&clients)
    .load(conn)
    .await?;
    let changed: Vec<i64> = rows
        .iter()
        .filter(|r| r.units > 0)
        .map(|r| r.client_id)
        .collect();
    announce(conn, &changed).await?;
    Ok(rows.into_iter().map(|r| (r.client_id, r.units)).collect())
}

/// The units `device` holds above its target, by client: what an operator
/// lowering a target (the kiosk's own, the client's, or the server's
/// `policy`) wants back. Only the kiosk knows how many of them it has
/// spent offline and not pushed yet, so it gives back itself
/// ([`give_back`]) what it has not.
pub async fn over_target(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    policy: LeasePolicy,
    own: Option<LeasePolicy>,
) -> diesel::QueryResult<Vec<(i64, i64)>> {
    let rows: Vec<Returned> = diesel::sql_query(
        "SELECT l.client_id, l.units - COALESCE($3, c.lease_target, $2) AS units \
         FROM leases l JOIN clients c ON c.id = l.client_id \
         WHERE l.device_id = $1 AND l.units > COALESCE($3, c.lease_target, $2) \
         ORDER BY l.client_id",
    )
    .bind::<Text, _>(device.as_str())
    .bind::<BigInt, _>(policy.target)
    .bind::<Nullable<BigInt>, _>(own.map(|o| o.target))
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.client_id, r.units)).collect())
}

/// Gives up to `units` of `device`'s lease of `client` back to the free
/// pool (the kiosk's word that it has not spent them); the lease stays,
/// smaller. Answers the units given back (0: it held none). Run inside the
/// caller's transaction.
pub async fn give_back(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    client: ClientId,
    units: i64,
) -> diesel::QueryResult<i64> {
    lock_quotas(&mut &*conn, &[client.get()]).await?;
    let rows: Vec<Returned> = diesel::sql_query(
        "WITH held AS ( \
           SELECT client_id, units FROM leases WHERE device_id = $1 AND client_id = $2 \
         ), cut AS ( \
           UPDATE leases l SET units = l.units - LEAST(h.units, $3), updated_at = now() \
           FROM held h WHERE l.device_id = $1 AND l.client_id = h.client_id AND h.units > 0 \
           RETURNING l.client_id, LEAST(h.units, $3) AS units \
         ) \
         UPDATE quotas q SET leased = q.leased - c.units, version = q.version + 1, updated_at = now() \
         FROM cut c WHERE q.client_id = c.client_id \
         RETURNING c.client_id, c.units",
    )
    .bind::<Text, _>(device.as_str())
    .bind::<BigInt, _>(client.get())
    .bind::<BigInt, _>(units.max(0))
    .load(conn)
    .await?;
    let given: i64 = rows.iter().map(|r| r.units).sum();
    if given > 0 {
        tracing::info!(%device, client = client.get(), units = given, "lease units given back");
        announce(conn, &[client.get()]).await?;
    }
    Ok(given)
}

/// One lease, for operators.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct LeaseRow {
    #[diesel(sql_type = Text, deserialize_as = super::columns::DeviceIdColumn)]
    pub device_id: DeviceId,
    #[diesel(sql_type = BigInt)]
    pub client_id: i64,
    #[diesel(sql_type = BigInt)]
    pub units: i64,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// Every lease (of `only`, when given), by device then client.
pub async fn list(
    conn: &mut AsyncPgConnection,
    only: Option<&[DeviceId]>,
) -> diesel::QueryResult<Vec<LeaseRow>> {
    diesel::sql_query(
        "SELECT device_id, client_id, units, updated_at FROM leases \
         WHERE $1::text[] IS NULL OR device_id = ANY($1) ORDER BY device_id, client_id",
    )
    .bind::<Nullable<Array<Text>>, _>(only.map(super::devices::id_strs))
    .load(conn)
    .await
}

/// Sets a client's lease sizes (`None`: the server's defaults); whether the
/// client exists. The kiosks serving it are asked to pull now: refilled up
/// to a raised target, told what they hold above a lowered one.
pub async fn set_policy(
    conn: &mut AsyncPgConnection,
    client: ClientId,
    target: Option<i64>,
    low_water: Option<i64>,
) -> diesel::QueryResult<bool> {
    use diesel_async::AsyncConnection;
    conn.transaction(async |conn| {
        let n = diesel::sql_query(
            "UPDATE clients SET lease_target = $2, lease_low_water = $3 WHERE id = $1",
        )
        .bind::<BigInt, _>(client.get())
        .bind::<Nullable<BigInt>, _>(target)
        .bind::<Nullable<BigInt>, _>(low_water)
        .execute(conn)
        .await?;
        if n == 1 {
            super::clients::announce_policy(conn, client).await?;
        }
        Ok(n == 1)
    })
    .await
}
