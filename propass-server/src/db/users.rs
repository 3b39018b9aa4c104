//! People who log in: operators, admins (and, today, kiosk accounts).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use propass_protocol::Role;

use super::schema::users;

/// The NOTIFY channel announcing that a user's tokens stopped (disabled,
/// password or role changed); the payload is the user id. Every server
/// closes the user's open sockets.
pub const USER_CHANNEL: &str = "propass_user";

/// NOTIFYs [`USER_CHANNEL`] for the user `name` (after the caller's change,
/// in its transaction or alone).
async fn notify_tokens_ended(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<()> {
    diesel::sql_query(format!(
        "SELECT pg_notify('{USER_CHANNEL}', id::text) FROM users WHERE username = $1"
    ))
    .bind::<diesel::sql_types::Text, _>(name)
    .execute(conn)
    .await
    .map(drop)
}

/// A user, as login needs it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub username: String,
    /// PHC string of the Argon2id hash.
    pub password_hash: String,
    /// What the user may do.
    #[diesel(deserialize_as = super::columns::RoleColumn)]
    pub role: Role,
    /// Refused at login, its tokens dead.
    pub disabled: bool,
    /// Bumped by a password change or a disable: older tokens stop working.
    pub token_epoch: i64,
}

/// The one user `query` selects, if any.
async fn one(
    conn: &mut AsyncPgConnection,
    query: users::BoxedQuery<'_, diesel::pg::Pg>,
) -> QueryResult<Option<User>> {
    query.select(User::as_select()).first(conn).await.optional()
}

/// Finds a user by name.
pub async fn find(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<User>> {
    one(
        conn,
        users::table.filter(users::username.eq(name)).into_boxed(),
    )
    .await
}

/// Creates a user (or fails on a duplicate name); returns the id.
pub async fn create(
    conn: &mut AsyncPgConnection,
    name: &str,
    hash: &str,
    role: Role,
) -> QueryResult<i64> {
    diesel::insert_into(users::table)
        .values((
            users::username.eq(name),
            users::password_hash.eq(hash),
            users::role.eq(role.as_str()),
        ))
        .returning(users::id)
        .get_result(conn)
        .await
}

/// The user with id `uid`, as a token check needs it.
pub async fn by_id(conn: &mut AsyncPgConnection, uid: i64) -> QueryResult<Option<User>> {
    one(conn, users::table.filter(users::id.eq(uid)).into_boxed()).await
}

/// Changes a user's role, ending its tokens; whether the user exists.
pub async fn set_role(conn: &mut AsyncPgConnection, name: &str, role: Role) -> QueryResult<bool> {
    let n = diesel::update(users::table.filter(users::username.eq(name)))
        .set((
            users::role.eq(role.as_str()),
            users::token_epoch.eq(users::token_epoch + 1),
        ))
        .execute(conn)
        .await?;
    notify_tokens_ended(conn, name).await?;
    Ok(n == 1)
}

/// Disables (or enables) a user; disabling also ends its tokens. Returns
/// whether the user exists.
pub async fn set_disabled(
    conn: &mut AsyncPgConnection,
    name: &str,
    disabled: bool,
) -> QueryResult<bool> {
    let epoch_bump: i64 = disabled.into();
    let n = diesel::update(users::table.filter(users::username.eq(name)))
        .set((
            users::disabled.eq(disabled),
            users::token_epoch.eq(users::token_epoch + epoch_bump),
        ))
        .execute(conn)
        .await?;
    if disabled {
        notify_tokens_ended(conn, name).await?;
    }
    Ok(n == 1)
}

/// Replaces a user's password and role — which ends its tokens; returns the id.
pub async fn update(
    conn: &mut AsyncPgConnection,
    name: &str,
    hash: &str,
    role: Role,
) -> QueryResult<i64> {
    let id = diesel::update(users::table.filter(users::username.eq(name)))
        .set((
            users::password_hash.eq(hash),
            users::role.eq(role.as_str()),
            users::token_epoch.eq(users::token_epoch + 1),
        ))
        .returning(users::id)
        .get_result(conn)
        .await?;
    notify_tokens_ended(conn, name).await?;
    Ok(id)
}

/// A user as admins see it (never the hash).
#[derive(Debug, Clone, diesel::QueryableByName, serde::Serialize)]
pub struct UserSummary {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub username: String,
    #[diesel(sql_type = diesel::sql_types::Text, deserialize_as = super::columns::RoleColumn)]
    pub role: Role,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub disabled: bool,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Every user (or the one named), by name.
pub async fn summaries(
    conn: &mut AsyncPgConnection,
    only: Option<&str>,
) -> QueryResult<Vec<UserSummary>> {
    diesel::sql_query(
        "SELECT id, username, role, disabled, created_at FROM users \
         WHERE ($1::text IS NULL OR username = $1) ORDER BY username",
    )
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(only)
    .load(conn)
    .await
}

/// Replaces a user's password, ending its tokens and sessions; whether it exists.
pub async fn set_password(
    conn: &mut AsyncPgConnection,
    name: &str,
    hash: &str,
) -> QueryResult<bool> {
    let n = diesel::update(users::table.filter(users::username.eq(name)))
        .set((
            users::password_hash.eq(hash),
            users::token_epoch.eq(users::token_epoch + 1),
        ))
        .execute(conn)
        .await?;
    notify_tokens_ended(conn, name).await?;
    Ok(n == 1)
}
