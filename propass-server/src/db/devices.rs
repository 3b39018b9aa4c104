//! Kiosk devices as first-class records: status (pending / active /
//! revoked), name, the clients each serves, agent version, contact times,
//! and whether it holds a device credential. Every change that a connected
//! kiosk must feel (status, assignment) NOTIFYs [`DEVICE_CHANNEL`] in its
//! transaction, so that every server instance updates its open sockets.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use propass_protocol::{DeviceId, DeviceStatus};

use super::columns::DeviceIdColumn;
use super::prepared::Prepare;
use super::schema::{clients, device_clients, devices};
pub use crate::device::DeviceState;

/// The NOTIFY channel announcing a change of a device's status or
/// assignment; the payload is the device id.
pub const DEVICE_CHANNEL: &str = "propass_device";

type StateColumns = (devices::status, devices::enrolled, devices::token_epoch);
const STATE: StateColumns = (devices::status, devices::enrolled, devices::token_epoch);

fn state_of((status, enrolled, token_epoch): (String, bool, i64)) -> QueryResult<DeviceState> {
    // The column has a CHECK constraint; a value outside it is a schema bug.
    let status = status
        .parse::<DeviceStatus>()
        .map_err(|e| diesel::result::Error::DeserializationError(e.into()))?;
    Ok(DeviceState {
        status,
        enrolled,
        token_epoch,
    })
}

#[derive(diesel::QueryableByName)]
struct PushStanding {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    enrolled: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    token_epoch: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    pushes_this_minute: Option<i32>,
}

/// A device's standing for a push, under a share lock held to COMMIT (see
/// `copies`), and the pushes it made in the clock minute of `now` so far
/// (read without a lock: the count that refuses is taken at the end of the
/// push); `None` when the device is unknown.
pub async fn standing_for_push(
    conn: &mut &AsyncPgConnection,
    device: &DeviceId,
    now: DateTime<Utc>,
) -> QueryResult<Option<(DeviceState, u32)>> {
    let row: Option<PushStanding> = diesel::sql_query(
        "SELECT d.status, d.enrolled, d.token_epoch, \
                (SELECT u.minute_pushes FROM device_usage u WHERE u.device_id = d.device_id \
                   AND u.minute_start = date_trunc('minute', $2)) AS pushes_this_minute \
         FROM devices d WHERE d.device_id = $1 FOR SHARE",
    )
    .bind::<diesel::sql_types::Text, _>(device.as_str())
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .prepared()
    .get_result(conn)
    .await
    .optional()?;
    row.map(|r| {
        let pushes = u32::try_from(r.pushes_this_minute.unwrap_or(0)).unwrap_or(0);
        Ok((state_of((r.status, r.enrolled, r.token_epoch))?, pushes))
    })
    .transpose()
}

/// Notes a contact at `now`, unless one was noted in the last 10 seconds
/// (a kiosk pushing hard does not rewrite its row every push).
pub async fn seen(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE devices SET last_seen = $2 WHERE device_id = $1 \
         AND last_seen < $2 - interval '10 seconds'",
    )
    .bind::<diesel::sql_types::Text, _>(device.as_str())
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .prepared()
    .execute(conn)
    .await
    .map(drop)
}

/// Notes a password login's device, creating it as pending on first sight:
/// the seed client chooses its own id, and an operator approves it.
pub async fn touch_or_register(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
) -> QueryResult<DeviceState> {
    let row = diesel::insert_into(devices::table)
        .values((
            devices::device_id.eq(device.as_str()),
            devices::status.eq(DeviceStatus::Pending.as_str()),
        ))
        .on_conflict(devices::device_id)
        .do_update()
        .set(devices::last_seen.eq(diesel::dsl::now))
        .returning(STATE)
        .get_result(conn)
        .await?;
    state_of(row)
}

/// A device's state; `None` when unknown.
pub async fn state(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
) -> QueryResult<Option<DeviceState>> {
    devices::table
        .find(device.as_str())
        .select(STATE)
        .first(conn)
        .await
        .optional()?
        .map(state_of)
        .transpose()
}

/// [`state`], the row locked to the end of the transaction.
pub async fn state_for_update(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
) -> QueryResult<Option<DeviceState>> {
    devices::table
        .find(device.as_str())
        .select(STATE)
        .for_update()
        .first(conn)
        .await
        .optional()?
        .map(state_of)
        .transpose()
}

/// Tells every server that `device` changed (delivered at COMMIT): its
/// sockets' client index is re-read and the kiosk asked to pull.
pub async fn notify(conn: &mut AsyncPgConnection, device: &DeviceId) -> QueryResult<()> {
    // Device ids are printable ASCII; quote doubling keeps the literal whole.
    diesel::sql_query(format!(
        "NOTIFY {DEVICE_CHANNEL}, '{}'",
        device.as_str().replace('\'', "''")
    ))
    .execute(conn)
    .await
    .map(drop)
}

/// Why a device change was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeviceChangeError {
    #[error("no device {0}")]
    UnknownDevice(DeviceId),
    #[error("device {0} already exists")]
    Exists(DeviceId),
    #[error("no client {0}")]
    UnknownClient(i64),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Registers a device ahead of its first password login (the seed client's
/// pre-assigned state): active, named, serving `clients`.
pub async fn register(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    name: Option<&str>,
    clients: &[i64],
) -> Result<(), DeviceChangeError> {
    conn.transaction(async |conn| {
        let n = diesel::insert_into(devices::table)
            .values((
                devices::device_id.eq(device.as_str()),
                devices::status.eq(DeviceStatus::Active.as_str()),
                devices::name.eq(name),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        if n == 0 {
            return Err(DeviceChangeError::Exists(device.clone()));
        }
        insert_assignments(conn, device, clients).await
    })
    .await
}

/// Adds `clients` to what `device` serves (in the caller's transaction).
pub(crate) async fn insert_assignments(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    clients: &[i64],
) -> Result<(), DeviceChangeError> {
    let known: Vec<i64> = clients::table
        .filter(clients::id.eq_any(clients))
        .select(clients::id)
        .load(conn)
        .await?;
    if let Some(missing) = clients.iter().find(|c| !known.contains(c)) {
        return Err(DeviceChangeError::UnknownClient(*missing));
    }
    let rows: Vec<_> = clients
        .iter()
        .map(|c| {
            (
                device_clients::device_id.eq(device.as_str()),
                device_clients::client_id.eq(*c),
            )
        })
        .collect();
    diesel::insert_into(device_clients::table)
        .values(rows)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// Changes what `device` serves: adds `add`, removes `remove`.
pub async fn assign(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    add: &[i64],
    remove: &[i64],
) -> Result<(), DeviceChangeError> {
    conn.transaction(async |conn| {
        if state(conn, device).await?.is_none() {
            return Err(DeviceChangeError::UnknownDevice(device.clone()));
        }
        insert_assignments(conn, device, add).await?;
        diesel::delete(
            device_clients::table
                .filter(device_clients::device_id.eq(device.as_str()))
                .filter(device_clients::client_id.eq_any(remove)),
        )
        .execute(conn)
        .await?;
        // A client the kiosk no longer serves gets its unused units back.
        for c in remove {
            if let Ok(c) = propass_protocol::ClientId::new(*c) {
                super::leases::release(conn, device, Some(c)).await?;
            }
        }
        notify(conn, device).await?;
        Ok(())
    })
    .await
}

/// The clients `device` serves, by id.
pub async fn served_clients(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
) -> QueryResult<Vec<i64>> {
    device_clients::table
        .filter(device_clients::device_id.eq(device.as_str()))
        .select(device_clients::client_id)
        .order(device_clients::client_id)
        .load(conn)
        .await
}

/// Moves a device to `to` (at `now`) if its status is one of `from`:
/// approve (pending → active), revoke, reinstate (revoked → active).
/// `None` for an unknown device, `Some(Err(status))` when it was in none of
/// `from`. A revocation stops the device's tokens at once (every call checks
/// the status) and closes its sockets (by NOTIFY).
pub async fn set_status(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    to: DeviceStatus,
    from: &[DeviceStatus],
    now: DateTime<Utc>,
) -> QueryResult<Option<Result<(), DeviceStatus>>> {
    conn.transaction(async |conn| {
        let Some(before) = devices::table
            .find(device.as_str())
            .select(STATE)
            .for_update()
            .first(conn)
            .await
            .optional()?
            .map(state_of)
            .transpose()?
        else {
            return Ok(None);
        };
        if !from.contains(&before.status) {
            return Ok(Some(Err(before.status)));
        }
        let revoked_at = (to == DeviceStatus::Revoked).then_some(now);
        diesel::update(devices::table.find(device.as_str()))
            .set((
                devices::status.eq(to.as_str()),
                devices::revoked_at.eq(revoked_at),
            ))
            .execute(conn)
            .await?;
        if to == DeviceStatus::Revoked {
            // A revoked kiosk spends nothing more: its unused units go back.
            super::leases::release(conn, device, None).await?;
        }
        notify(conn, device).await?;
        Ok(Some(Ok(())))
    })
    .await
}

/// The highest local id of `device`'s operations in the ledger (0: none);
/// the (device_id, local_id) index answers it.
pub async fn recorded_through(conn: &mut AsyncPgConnection, device: &DeviceId) -> QueryResult<i64> {
    use super::schema::copies;
    copies::table
        .filter(copies::device_id.eq(device.as_str()))
        .select(diesel::dsl::max(copies::local_id))
        .first::<Option<i64>>(conn)
        .await
        .map(|m| m.unwrap_or(0))
}

/// Records the agent version a device reported.
pub async fn set_agent_version(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    version: &str,
) -> QueryResult<()> {
    diesel::update(devices::table.find(device.as_str()))
        .set(devices::agent_version.eq(version))
        .execute(conn)
        .await
        .map(drop)
}

/// Names a device; whether it exists.
pub async fn rename(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    name: &str,
) -> QueryResult<bool> {
    let n = diesel::update(devices::table.find(device.as_str()))
        .set(devices::name.eq(name))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// A device as operators see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceRow {
    pub device_id: DeviceId,
    pub name: Option<String>,
    pub status: DeviceStatus,
    /// Holds a device credential (enrolled with a code).
    pub enrolled: bool,
    /// The clients it serves, by id.
    pub clients: Vec<i64>,
    pub agent_version: Option<String>,
    /// First contact.
    pub first_seen: DateTime<Utc>,
    /// Last contact.
    pub last_seen: DateTime<Utc>,
    /// Its own lease sizes (`device lease`); `null`: its clients'.
    pub lease_target: Option<i64>,
    pub lease_low_water: Option<i64>,
}

/// Device ids as PostgreSQL takes them.
pub fn id_strs(ids: &[DeviceId]) -> Vec<&str> {
    ids.iter().map(DeviceId::as_str).collect()
}

/// The clients each device (or each of `only`) serves, in id order.
async fn clients_by_device(
    conn: &mut AsyncPgConnection,
    only: Option<&[DeviceId]>,
) -> QueryResult<std::collections::HashMap<DeviceId, Vec<i64>>> {
    let mut pairs = device_clients::table.into_boxed();
    if let Some(ids) = only {
        pairs = pairs.filter(device_clients::device_id.eq_any(id_strs(ids)));
    }
    let pairs: Vec<(DeviceIdColumn, i64)> = pairs
        .select((device_clients::device_id, device_clients::client_id))
        .order((device_clients::device_id, device_clients::client_id))
        .load(conn)
        .await?;
    let mut served: std::collections::HashMap<DeviceId, Vec<i64>> = Default::default();
    for (d, c) in pairs {
        served.entry(d.into()).or_default().push(c);
    }
    Ok(served)
}

/// Every device (or only those in `only`), most recently seen first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    only: Option<&[DeviceId]>,
) -> QueryResult<Vec<DeviceRow>> {
    #[derive(diesel::Queryable)]
    struct Listed {
        #[diesel(deserialize_as = DeviceIdColumn)]
        device_id: DeviceId,
        name: Option<String>,
        status: String,
        enrolled: bool,
        agent_version: Option<String>,
        first_seen: DateTime<Utc>,
        last_seen: DateTime<Utc>,
        lease_target: Option<i64>,
        lease_low_water: Option<i64>,
    }
    let mut query = devices::table.into_boxed();
    if let Some(ids) = only {
        query = query.filter(devices::device_id.eq_any(id_strs(ids)));
    }
    let rows: Vec<Listed> = query
        .select((
            devices::device_id,
            devices::name,
            devices::status,
            devices::enrolled,
            devices::agent_version,
            devices::first_seen,
            devices::last_seen,
            devices::lease_target,
            devices::lease_low_water,
        ))
        .order(devices::last_seen.desc())
        .load(conn)
        .await?;
    let mut served = clients_by_device(conn, only).await?;
    rows.into_iter()
        .map(|r| {
            Ok(DeviceRow {
                status: state_of((r.status, r.enrolled, 0))?.status,
                clients: served.remove(&r.device_id).unwrap_or_default(),
                device_id: r.device_id,
                name: r.name,
                enrolled: r.enrolled,
                agent_version: r.agent_version,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
                lease_target: r.lease_target,
                lease_low_water: r.lease_low_water,
            })
        })
        .collect()
}

/// The ids of devices that are not active (pending approval, or revoked):
/// their silence is no alert.
pub async fn inactive(
    conn: &mut AsyncPgConnection,
) -> QueryResult<std::collections::HashSet<DeviceId>> {
    Ok(devices::table
        .filter(devices::status.ne(DeviceStatus::Active.as_str()))
        .select(devices::device_id)
        .load::<DeviceIdColumn>(conn)
        .await?
        .into_iter()
        .map(DeviceId::from)
        .collect())
}

/// The standing and clients of each of `ids` that exists (a listener that
/// was away re-reads what it may have missed for every connected kiosk, in
/// two queries rather than one per socket).
pub async fn standings(
    conn: &mut AsyncPgConnection,
    ids: &[DeviceId],
) -> QueryResult<std::collections::HashMap<DeviceId, (DeviceState, Vec<i64>)>> {
    let names: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
    let rows: Vec<(DeviceIdColumn, String, bool, i64)> = devices::table
        .filter(devices::device_id.eq_any(&names))
        .select((
            devices::device_id,
            devices::status,
            devices::enrolled,
            devices::token_epoch,
        ))
        .load(conn)
        .await?;
    let assigned: Vec<(DeviceIdColumn, i64)> = device_clients::table
        .filter(device_clients::device_id.eq_any(&names))
        .select((device_clients::device_id, device_clients::client_id))
        .order((device_clients::device_id, device_clients::client_id))
        .load(conn)
        .await?;
    let mut out = std::collections::HashMap::with_capacity(rows.len());
    for (id, status, enrolled, epoch) in rows {
        out.insert(
            id.into(),
            (state_of((status, enrolled, epoch))?, Vec::new()),
        );
    }
    for (id, client) in assigned {
        if let Some((_, clients)) = out.get_mut(&DeviceId::from(id)) {
            clients.push(client);
        }
    }
    Ok(out)
}
