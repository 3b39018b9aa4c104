//! People who log in: operators, admins (and, today, kiosk accounts).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use propass_protocol::Role;

use super::schema::users;

/// A user, as login needs it.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    /// PHC string of the Argon2id hash.
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = users)]
struct UserRow {
    id: i64,
    username: String,
    password_hash: String,
    role: String,
}

impl TryFrom<UserRow> for User {
    type Error = diesel::result::Error;

    fn try_from(r: UserRow) -> Result<Self, Self::Error> {
        // The column has a CHECK constraint; a value outside it is a schema bug.
        let role = r
            .role
            .parse::<Role>()
            .map_err(|e| diesel::result::Error::DeserializationError(e.into()))?;
        Ok(Self {
            id: r.id,
            username: r.username,
            password_hash: r.password_hash,
            role,
        })
    }
}

/// Finds a user by name.
pub async fn find(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<User>> {
    users::table
        .filter(users::username.eq(name))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(User::try_from)
        .transpose()
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

/// Replaces a user's password and role; returns the id.
pub async fn update(
    conn: &mut AsyncPgConnection,
    name: &str,
    hash: &str,
    role: Role,
) -> QueryResult<i64> {
    diesel::update(users::table.filter(users::username.eq(name)))
        .set((users::password_hash.eq(hash), users::role.eq(role.as_str())))
        .returning(users::id)
        .get_result(conn)
        .await
}
