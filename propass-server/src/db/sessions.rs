//! Operators' browser sessions. The cookie carries a random id; only its
//! digest is kept here. A session is alive while it is neither past its
//! absolute expiry nor idle too long, its user is enabled, still an admin or
//! operator, and its token epoch (bumped by a password, role or disable
//! change) is the one the session was opened under.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use propass_protocol::Role;

/// A new session.
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    pub id_hash: &'a str,
    pub user_id: i64,
    pub user_epoch: i64,
    pub csrf_token: &'a str,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Opens a session.
pub async fn create(conn: &mut AsyncPgConnection, s: NewSession<'_>) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO admin_sessions (id_hash, user_id, user_epoch, csrf_token, created_at, expires_at, last_seen_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $5)",
    )
    .bind::<Text, _>(s.id_hash)
    .bind::<BigInt, _>(s.user_id)
    .bind::<BigInt, _>(s.user_epoch)
    .bind::<Text, _>(s.csrf_token)
    .bind::<Timestamptz, _>(s.now)
    .bind::<Timestamptz, _>(s.expires_at)
    .execute(conn)
    .await
    .map(drop)
}

/// A live session and its user as they are now.
#[derive(Debug, Clone, QueryableByName)]
pub struct LiveSession {
    #[diesel(sql_type = BigInt)]
    pub user_id: i64,
    #[diesel(sql_type = Text)]
    pub username: String,
    #[diesel(sql_type = Text, deserialize_as = super::columns::RoleColumn)]
    pub role: Role,
    #[diesel(sql_type = Text)]
    pub csrf_token: String,
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
}

/// The session `id_hash` if it is alive at `now` (see the module header),
/// marking it used; `None` otherwise.
pub async fn touch(
    conn: &mut AsyncPgConnection,
    id_hash: &str,
    now: DateTime<Utc>,
    idle: chrono::Duration,
) -> diesel::QueryResult<Option<LiveSession>> {
    let mut rows: Vec<LiveSession> = diesel::sql_query(
        "UPDATE admin_sessions s SET last_seen_at = $2 FROM users u \
         WHERE s.id_hash = $1 AND u.id = s.user_id AND s.expires_at > $2 AND s.last_seen_at > $2 - $3 \
           AND NOT u.disabled AND u.token_epoch = s.user_epoch AND u.role IN ('admin', 'operator') \
         RETURNING s.user_id, u.username, u.role, s.csrf_token, s.expires_at",
    )
    .bind::<Text, _>(id_hash)
    .bind::<Timestamptz, _>(now)
    .bind::<diesel::sql_types::Interval, _>(
        diesel::pg::data_types::PgInterval::from_microseconds(idle.num_microseconds().unwrap_or(i64::MAX)),
    )
    .load(conn)
    .await?;
    Ok(rows.pop())
}

/// Ends a session (logout); whether it existed.
pub async fn delete(conn: &mut AsyncPgConnection, id_hash: &str) -> diesel::QueryResult<bool> {
    let n = diesel::sql_query("DELETE FROM admin_sessions WHERE id_hash = $1")
        .bind::<Text, _>(id_hash)
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Forgets sessions that ended before `now` (expired or idle); how many.
pub async fn sweep(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    idle: chrono::Duration,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM admin_sessions WHERE expires_at <= $1 OR last_seen_at <= $1 - $2",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<diesel::sql_types::Interval, _>(diesel::pg::data_types::PgInterval::from_microseconds(
        idle.num_microseconds().unwrap_or(i64::MAX),
    ))
    .execute(conn)
    .await
}
