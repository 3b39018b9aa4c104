//! Operators' corrections to the ledger, each with its audit entry: listing
//! the unverified copies (cards a kiosk wrote but could not verify), and
//! voiding one that did not work — its unit goes back to the client. The
//! copy's row itself never changes.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Text, Timestamptz};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use propass_protocol::DeviceId;

use super::clients::QUOTA_CHANNEL;

/// An unverified copy not voided yet.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct UnverifiedCopy {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text, deserialize_as = super::columns::DeviceIdColumn)]
    pub device_id: DeviceId,
    #[diesel(sql_type = BigInt)]
    pub client_id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub occurred_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
}

/// The unverified copies no one voided, oldest first.
pub async fn unverified(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<UnverifiedCopy>> {
    diesel::sql_query(
        "SELECT c.id, c.device_id, c.client_id, c.occurred_at, c.received_at FROM copies c \
         WHERE c.unverified AND NOT EXISTS (SELECT 1 FROM copy_voids v WHERE v.copy_id = c.id) \
         ORDER BY c.occurred_at, c.id",
    )
    .load(conn)
    .await
}

/// Why a void was refused.
#[derive(Debug, thiserror::Error)]
pub enum VoidError {
    #[error("no copy {0} in the ledger")]
    NoSuchCopy(i64),
    #[error("copy {0} was verified by its kiosk: only an unverified copy can be voided")]
    Verified(i64),
    #[error("copy {0} is already void")]
    AlreadyVoid(i64),
    #[error("a void needs a reason")]
    NoReason,
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

#[derive(QueryableByName)]
struct CopyRow {
    #[diesel(sql_type = BigInt)]
    client_id: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    unverified: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    voided: bool,
}

/// Voids an unverified copy: records who and why, gives the client its
/// unit back (its kiosks hear of it), and writes the audit entry — in one
/// transaction. Answers the client and its new remaining.
pub async fn void(
    conn: &mut AsyncPgConnection,
    copy_id: i64,
    actor: &str,
    reason: &str,
) -> Result<(i64, i64), VoidError> {
    let reason = reason.trim().to_owned();
    if reason.is_empty() {
        return Err(VoidError::NoReason);
    }
    let actor = actor.to_owned();
    conn.transaction(async |conn| {
        let row: Option<CopyRow> = diesel::sql_query(
            "SELECT client_id, unverified, EXISTS (SELECT 1 FROM copy_voids WHERE copy_id = $1) AS voided \
             FROM copies WHERE id = $1 FOR UPDATE",
        )
        .bind::<BigInt, _>(copy_id)
        .get_result(conn)
        .await
        .optional()?;
        let row = row.ok_or(VoidError::NoSuchCopy(copy_id))?;
        if !row.unverified {
            return Err(VoidError::Verified(copy_id));
        }
        if row.voided {
            return Err(VoidError::AlreadyVoid(copy_id));
        }
        diesel::sql_query("INSERT INTO copy_voids (copy_id, actor, reason) VALUES ($1, $2, $3)")
            .bind::<BigInt, _>(copy_id)
            .bind::<Text, _>(&actor)
            .bind::<Text, _>(&reason)
            .execute(conn)
            .await?;
        #[derive(QueryableByName)]
        struct Remaining {
            #[diesel(sql_type = BigInt)]
            remaining: i64,
        }
        let left: Remaining = diesel::sql_query(
            "UPDATE quotas SET used = used - 1, version = version + 1, updated_at = now() \
             WHERE client_id = $1 RETURNING total - used - leased AS remaining",
        )
        .bind::<BigInt, _>(row.client_id)
        .get_result(conn)
        .await?;
        let detail = serde_json::json!({"reason": reason, "client_id": row.client_id, "refunded": 1});
        super::audit::record(conn, &actor, "copy.void", &format!("copy:{copy_id}"), detail).await?;
        diesel::sql_query(format!("NOTIFY {QUOTA_CHANNEL}, '{}'", row.client_id))
            .execute(conn)
            .await?;
        Ok((row.client_id, left.remaining))
    })
    .await
}
