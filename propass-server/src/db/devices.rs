//! Kiosk devices: first and last contact, revocation.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use propass_protocol::DeviceId;

use super::schema::devices;

/// Records that a device was seen (creating it on first sight); returns
/// whether it is revoked.
pub async fn touch(conn: &mut AsyncPgConnection, device: &DeviceId) -> QueryResult<bool> {
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
pub async fn is_revoked(conn: &mut AsyncPgConnection, device: &DeviceId) -> QueryResult<bool> {
    Ok(devices::table
        .filter(devices::device_id.eq(device.as_str()))
        .select(devices::revoked)
        .first::<bool>(conn)
        .await
        .optional()?
        .unwrap_or(false))
}

/// Revokes (at `now`) or restores a device; `false` when no such device exists.
pub async fn set_revoked(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    revoked: bool,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let at = revoked.then_some(now);
    let n = diesel::update(devices::table.filter(devices::device_id.eq(device.as_str())))
        .set((devices::revoked.eq(revoked), devices::revoked_at.eq(at)))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// A device row.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = devices)]
pub struct DeviceRow {
    pub device_id: String,
    /// First contact.
    pub first_seen: DateTime<Utc>,
    /// Last contact.
    pub last_seen: DateTime<Utc>,
    /// Revoked by an operator.
    pub revoked: bool,
}

/// Every device, most recently seen first.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<DeviceRow>> {
    devices::table
        .select(DeviceRow::as_select())
        .order(devices::last_seen.desc())
        .load(conn)
        .await
}
