//! The ledger as operators read it: filtered pages, newest first, by keyset
//! — `(received_at, id)` below the previous page's last row — so that a page
//! deep in a ledger of millions costs one index descent, not a scan of the
//! rows before it (the indexes are in migration 10). Rows inserted while
//! someone pages land above the first page and never shift the ones below.

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use propass_protocol::DeviceId;

use super::schema::copies;

/// Which copies, all optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub client: Option<i64>,
    pub device: Option<String>,
    /// `received_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// `received_at < to`.
    pub to: Option<DateTime<Utc>>,
    /// Only overdrafts.
    pub overdraft: bool,
    /// Only unverified copies.
    pub unverified: bool,
}

/// Where a page starts: just below this row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub received_at: DateTime<Utc>,
    pub id: i64,
}

impl Cursor {
    /// The opaque form handed to clients.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.received_at.timestamp_micros(), self.id)
    }

    /// Parses [`Cursor::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        let (micros, id) = s.split_once('.')?;
        Some(Self {
            received_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

/// One copy, as operators see it.
#[derive(Debug, Clone, Queryable, serde::Serialize)]
pub struct CopyRow {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
    #[diesel(deserialize_as = super::columns::DeviceIdColumn)]
    pub device_id: DeviceId,
    pub client_id: i64,
    pub kind: String,
    pub uid: String,
    pub overdraft: bool,
    pub unverified: bool,
    /// An operator voided it (an unverified card that did not work).
    pub voided: bool,
}

impl CopyRow {
    /// Where the page after this row starts.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            received_at: self.received_at,
            id: self.id,
        }
    }
}

/// Up to `limit` copies matching `filter`, newest first, below `after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    filter: &Filter,
    after: Option<Cursor>,
    limit: i64,
) -> QueryResult<Vec<CopyRow>> {
    let mut q = copies::table
        .select((
            copies::id,
            copies::received_at,
            copies::occurred_at,
            copies::device_id,
            copies::client_id,
            copies::kind,
            copies::uid,
            copies::overdraft,
            copies::unverified,
            sql::<Bool>("EXISTS (SELECT 1 FROM copy_voids v WHERE v.copy_id = copies.id)"),
        ))
        .into_boxed();
    if let Some(c) = filter.client {
        q = q.filter(copies::client_id.eq(c));
    }
    if let Some(d) = &filter.device {
        q = q.filter(copies::device_id.eq(d.clone()));
    }
    if let Some(from) = filter.from {
        q = q.filter(copies::received_at.ge(from));
    }
    if let Some(to) = filter.to {
        q = q.filter(copies::received_at.lt(to));
    }
    if filter.overdraft {
        q = q.filter(copies::overdraft.eq(true));
    }
    if filter.unverified {
        q = q.filter(copies::unverified.eq(true));
    }
    if let Some(c) = after {
        // A row comparison, which PostgreSQL turns into an index bound (an
        // `a < x OR (a = x AND b < y)` would be a filter over every row above).
        q = q.filter(
            sql::<Bool>("(copies.received_at, copies.id) < (")
                .bind::<Timestamptz, _>(c.received_at)
                .sql(", ")
                .bind::<BigInt, _>(c.id)
                .sql(")"),
        );
    }
    q.order((copies::received_at.desc(), copies::id.desc()))
        .limit(limit)
        .load(conn)
        .await
}

/// Copies per client and hour since `from`.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct HourlyCount {
    #[diesel(sql_type = BigInt)]
    pub client_id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub hour: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    pub copies: i64,
}

/// Copies received per client and hour since `from` (voided ones left out),
/// by client then hour.
pub async fn hourly(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
) -> QueryResult<Vec<HourlyCount>> {
    diesel::sql_query(
        "SELECT client_id, date_trunc('hour', received_at) AS hour, count(*) AS copies \
         FROM copies c WHERE received_at >= $1 \
           AND NOT EXISTS (SELECT 1 FROM copy_voids v WHERE v.copy_id = c.id) \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind::<Timestamptz, _>(from)
    .load(conn)
    .await
}

/// A client's quota changes (top-ups and corrections, from the audit log)
/// summed per hour since `from`, by client then hour: with the hourly
/// copies, what the quota burn-down is drawn from.
#[derive(Debug, QueryableByName)]
pub struct HourlyDelta {
    #[diesel(sql_type = BigInt)]
    pub client_id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub hour: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    pub delta: i64,
}

pub async fn hourly_quota_changes(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
) -> QueryResult<Vec<HourlyDelta>> {
    diesel::sql_query(
        "SELECT substr(subject, 8)::bigint AS client_id, date_trunc('hour', at) AS hour, \
                coalesce(sum((detail->>'delta')::bigint), 0)::bigint AS delta \
         FROM audit_log WHERE at >= $1 AND action = 'quota.add' AND subject ~ '^client:[0-9]+$' \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind::<Timestamptz, _>(from)
    .load(conn)
    .await
}

/// The header of [`csv_line`]'s rows.
pub const CSV_HEADER: &str =
    "id,received_at,occurred_at,device_id,client_id,kind,uid,overdraft,unverified,voided\n";

/// One row as a CSV line; fields a kiosk chose (its id) are quoted, and a
/// leading `=`, `+`, `-` or `@` is defused so that a spreadsheet does not
/// run it as a formula.
pub fn csv_line(r: &CopyRow) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{}\n",
        r.id,
        r.received_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        csv_field(r.device_id.as_str()),
        r.client_id,
        csv_field(&r.kind),
        csv_field(&r.uid),
        r.overdraft,
        r.unverified,
        r.voided
    )
}

/// A text field, quoted, with formula triggers defused.
pub fn csv_field(s: &str) -> String {
    let defused = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    format!("\"{}\"", defused.replace('"', "\"\""))
}

/// The NOTIFY channel announcing to the other server instances what one
/// saw: JSON of the instance, per pushing device the range its new ledger
/// ids lie in, and the kiosks whose socket or heartbeat changed (see
/// `crate::announce`; the sending instance skips its own).
pub const COPY_CHANNEL: &str = "propass_copies";

/// Sends one notification on [`COPY_CHANNEL`] (see `crate::announce`).
pub async fn announce(conn: &mut AsyncPgConnection, payload: &str) -> QueryResult<()> {
    diesel::sql_query(format!("SELECT pg_notify('{COPY_CHANNEL}', $1)"))
        .bind::<diesel::sql_types::Text, _>(payload)
        .execute(conn)
        .await
        .map(drop)
}

/// A new copy as the live events carry it.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct Announced {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub local_id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub op_id: Option<uuid::Uuid>,
    #[diesel(sql_type = BigInt)]
    pub client_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub uid: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub kind: String,
    #[diesel(sql_type = Timestamptz)]
    pub occurred_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    pub overdraft: bool,
    #[diesel(sql_type = Bool)]
    pub unverified: bool,
}

/// `device`'s copies with ids in `min..=max` (an announcement), by id.
pub async fn announced(
    conn: &mut AsyncPgConnection,
    device: &str,
    min: i64,
    max: i64,
) -> QueryResult<Vec<Announced>> {
    diesel::sql_query(
        "SELECT id, local_id, op_id, client_id, uid, kind, occurred_at, received_at, overdraft, unverified \
         FROM copies WHERE id BETWEEN $2 AND $3 AND device_id = $1 ORDER BY id",
    )
    .bind::<diesel::sql_types::Text, _>(device)
    .bind::<BigInt, _>(min)
    .bind::<BigInt, _>(max)
    .load(conn)
    .await
}
