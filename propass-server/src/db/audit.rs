//! The audit log: every change an operator or admin makes, append-only —
//! who, when, what, on what, and the details (a reason among them). Written
//! in the transaction of the change it records.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// The NOTIFY channel announcing a new entry (payload: its id): every
/// server shows it on its open dashboards.
pub const AUDIT_CHANNEL: &str = "propass_audit";

/// Appends one entry (announced at commit on [`AUDIT_CHANNEL`]).
pub async fn record(
    conn: &mut AsyncPgConnection,
    actor: &str,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "WITH e AS (INSERT INTO audit_log (actor, action, subject, detail) VALUES ($1, $2, $3, $4) RETURNING id) \
         SELECT pg_notify('propass_audit', e.id::text) FROM e", // AUDIT_CHANNEL
    )
    .bind::<Text, _>(actor)
    .bind::<Text, _>(action)
    .bind::<Text, _>(subject)
    .bind::<Jsonb, _>(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// One entry.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct Entry {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub actor: String,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Text)]
    pub subject: String,
    #[diesel(sql_type = Jsonb)]
    pub detail: serde_json::Value,
}

/// Which entries, all optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    /// Only this action (`quota.add`, …).
    pub action: Option<&'a str>,
    /// Only this subject (`client:7`, …).
    pub subject: Option<&'a str>,
    /// Only entries older than this id (the previous page's last).
    pub before: Option<i64>,
}

/// The latest `limit` entries matching `filter`, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: Filter<'_>,
    limit: i64,
) -> diesel::QueryResult<Vec<Entry>> {
    diesel::sql_query(
        "SELECT id, at, actor, action, subject, detail FROM audit_log \
         WHERE ($1::text IS NULL OR action = $1) AND ($2::text IS NULL OR subject = $2) \
           AND ($3::bigint IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4",
    )
    .bind::<Nullable<Text>, _>(filter.action)
    .bind::<Nullable<Text>, _>(filter.subject)
    .bind::<Nullable<BigInt>, _>(filter.before)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// One entry by id.
pub async fn get(conn: &mut AsyncPgConnection, id: i64) -> diesel::QueryResult<Option<Entry>> {
    let mut rows: Vec<Entry> = diesel::sql_query(
        "SELECT id, at, actor, action, subject, detail FROM audit_log WHERE id = $1",
    )
    .bind::<BigInt, _>(id)
    .load(conn)
    .await?;
    Ok(rows.pop())
}
