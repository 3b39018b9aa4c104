//! Text columns read back as the protocol's types. Every writer stores a
//! parsed value (and the role and status columns have CHECK constraints), so
//! a stored value that does not parse is a schema bug: it fails the read with
//! a deserialization error rather than turning into some default.
//!
//! The wrappers exist because of the orphan rule: diesel's `FromSql` cannot
//! be implemented here for the protocol crate's types, so a field says
//! `#[diesel(sql_type = Text, deserialize_as = columns::DeviceIdColumn)]` and
//! is a `DeviceId` in the row type.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::{Array, Text};
use propass_protocol::{DeviceId, ReaderKey, Role};

macro_rules! parsed_column {
    ($(#[$doc:meta])* $wrapper:ident => $ty:ty) => {
        $(#[$doc])*
        #[derive(Debug, FromSqlRow)]
        pub struct $wrapper($ty);

        impl FromSql<Text, Pg> for $wrapper {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                text.parse::<$ty>().map(Self).map_err(|e| {
                    format!("stored {} {text:?} does not parse: {e}", stringify!($ty)).into()
                })
            }
        }

        impl From<$wrapper> for $ty {
            fn from(column: $wrapper) -> Self {
                column.0
            }
        }
    };
}

parsed_column!(
    /// A `device_id` column.
    DeviceIdColumn => DeviceId
);
parsed_column!(
    /// A `role` column.
    RoleColumn => Role
);

/// A `reader_keys` column (`text[]`): secrets, which print as `ReaderKey(..)`.
#[derive(Debug, FromSqlRow)]
pub struct ReaderKeysColumn(Vec<ReaderKey>);

impl FromSql<Array<Text>, Pg> for ReaderKeysColumn {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let texts = <Vec<String> as FromSql<Array<Text>, Pg>>::from_sql(bytes)?;
        texts
            .iter()
            .map(|k| ReaderKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
            // The value is a secret: only that it does not parse is said.
            .map_err(|_| "a stored reader key does not parse".into())
    }
}

impl From<ReaderKeysColumn> for Vec<ReaderKey> {
    fn from(column: ReaderKeysColumn) -> Self {
        column.0
    }
}
