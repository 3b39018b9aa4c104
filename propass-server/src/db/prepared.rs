//! Raw SQL that PostgreSQL prepares once per connection. diesel treats every
//! `sql_query` as possibly built at run time and prepares it again at each
//! execution — a round trip and a plan per statement. The hot statements of
//! the push path are constant text: [`Prepare::prepared`] marks one safe to
//! cache, so diesel keeps the prepared statement (keyed by its text and bind
//! types) and PostgreSQL may reuse its plan. Only for constant SQL: a
//! statement built with `format!` would grow each connection's cache.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A statement diesel may keep prepared.
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(Q);

/// Marks a constant raw statement as safe to keep prepared.
pub trait Prepare: Sized {
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q> Prepare for Q {}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q: QueryId> QueryId for Prepared<Q> {
    type QueryId = Q::QueryId;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}
