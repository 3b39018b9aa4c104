//! The audit log: every change an operator or admin makes, append-only —
//! who, when, what, on what, and the details (a reason among them). Written
//! in the transaction of the change it records.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Appends one entry.
pub async fn record(
    conn: &mut AsyncPgConnection,
    actor: &str,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO audit_log (actor, action, subject, detail) VALUES ($1, $2, $3, $4)",
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

/// The latest `limit` entries, newest first, of one action when given.
pub async fn list(
    conn: &mut AsyncPgConnection,
    action: Option<&str>,
    limit: i64,
) -> diesel::QueryResult<Vec<Entry>> {
    diesel::sql_query(
        "SELECT id, at, actor, action, subject, detail FROM audit_log \
         WHERE ($1::text IS NULL OR action = $1) ORDER BY id DESC LIMIT $2",
    )
    .bind::<Nullable<Text>, _>(action)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}
