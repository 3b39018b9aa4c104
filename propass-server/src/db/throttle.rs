//! The throttle on failed logins, shared by every instance through
//! PostgreSQL: a sliding window of attempts per key (table `login_attempts`).
//! An attempt is counted *before* its password is checked and forgiven only
//! when it succeeds, so concurrent attempts — on one instance or on several —
//! cannot race past the limit: at most `max_failures` passwords are ever
//! checked per key and window. Time is the database's, one clock for all
//! instances.

use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::sql_types::{Array, BigInt, Double, Integer, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// What failures are counted against: the account tried, and the address
/// trying (so that neither guessing one account from many addresses nor many
/// accounts from one address goes unchecked).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// A username (whether or not it exists).
    User(String),
    /// A peer address.
    Ip(IpAddr),
}

impl fmt::Display for ThrottleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(name) => write!(f, "user:{name}"),
            Self::Ip(addr) => write!(f, "ip:{addr}"),
        }
    }
}

/// A login attempt counted by [`LoginThrottle::begin`]: its rows.
#[derive(Debug)]
pub struct Attempt {
    ids: Vec<i64>,
}

/// Why [`LoginThrottle::begin`] counted nothing.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A key is over its limit: retry after this many seconds.
    #[error("too many failed attempts: retry in {0} s")]
    Wait(u64),
    /// The database did not answer.
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

impl From<Refused> for crate::error::ApiError {
    fn from(e: Refused) -> Self {
        match e {
            Refused::Wait(retry_after_secs) => Self::RateLimited { retry_after_secs },
            Refused::Db(e) => e.into(),
        }
    }
}

/// Failed logins per key within a window.
pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    /// When this instance last deleted every expired row (a spray of made-up
    /// usernames leaves rows no later attempt on their key would prune).
    last_sweep: Mutex<Option<Instant>>,
}

/// Advisory-lock class of the throttle's keys (the two-integer key space,
/// apart from the migrations' single-bigint lock).
const LOCK_CLASS: i32 = 0x7072_7468; // "prth"

#[derive(QueryableByName)]
struct Over {
    #[diesel(sql_type = Double)]
    wait: f64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

impl LoginThrottle {
    /// A throttle allowing `max_failures` per key within `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            last_sweep: Mutex::new(None),
        }
    }

    fn window_secs(&self) -> f64 {
        self.window.as_secs_f64()
    }

    /// Counts an attempt on every key, unless one of them is over its limit
    /// (nothing is counted then). The attempt stays counted as a failure
    /// until [`Self::succeeded`] or [`Self::forgive`] forgives it.
    pub async fn begin(
        &self,
        conn: &mut AsyncPgConnection,
        keys: &[ThrottleKey],
        now: Instant,
    ) -> Result<Attempt, Refused> {
        let mut keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
        // Locks taken in one order: two attempts sharing keys never deadlock.
        keys.sort_unstable();
        keys.dedup();
        let (max, window) = (i64::from(self.max_failures), self.window_secs());
        let attempt = conn
            .transaction(async |conn| {
                for key in &keys {
                    // Serializes the check and the count per key, across
                    // instances: no attempt slips between them.
                    diesel::sql_query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                        .bind::<Integer, _>(LOCK_CLASS)
                        .bind::<Text, _>(key)
                        .execute(conn)
                        .await?;
                }
                diesel::sql_query(
                    "DELETE FROM login_attempts WHERE key = ANY($1) \
                     AND at <= now() - make_interval(secs => $2)",
                )
                .bind::<Array<Text>, _>(&keys)
                .bind::<Double, _>(window)
                .execute(conn)
                .await?;
                let over: Vec<Over> = diesel::sql_query(
                    "SELECT EXTRACT(EPOCH FROM min(at) + make_interval(secs => $2) - now())::float8 AS wait \
                     FROM login_attempts WHERE key = ANY($1) GROUP BY key HAVING count(*) >= $3",
                )
                .bind::<Array<Text>, _>(&keys)
                .bind::<Double, _>(window)
                .bind::<BigInt, _>(max)
                .load(conn)
                .await?;
                if let Some(wait) = over.iter().map(|o| o.wait).reduce(f64::max) {
                    return Err(Refused::Wait(seconds(wait)));
                }
                let ids: Vec<Id> = diesel::sql_query(
                    "INSERT INTO login_attempts (key, at) SELECT k, now() FROM unnest($1::text[]) k \
                     RETURNING id",
                )
                .bind::<Array<Text>, _>(&keys)
                .load(conn)
                .await?;
                Ok(Attempt {
                    ids: ids.into_iter().map(|i| i.id).collect(),
                })
            })
            .await?;
        self.sweep(conn, now).await;
        Ok(attempt)
    }

    /// Deletes every expired row, at most once per window and instance; a
    /// failure only delays it.
    async fn sweep(&self, conn: &mut AsyncPgConnection, now: Instant) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now.saturating_duration_since(t) < self.window) {
                return;
            }
            *last = Some(now);
        }
        let swept = diesel::sql_query(
            "DELETE FROM login_attempts WHERE at <= now() - make_interval(secs => $1)",
        )
        .bind::<Double, _>(self.window_secs())
        .execute(conn)
        .await;
        if let Err(e) = swept {
            tracing::debug!(error = %e, "cannot sweep expired login attempts");
        }
    }

    /// The attempt succeeded: it is forgiven on every key, and the
    /// account's failures are forgotten.
    pub async fn succeeded(
        &self,
        conn: &mut AsyncPgConnection,
        attempt: Attempt,
        user: &ThrottleKey,
    ) -> diesel::QueryResult<()> {
        diesel::sql_query("DELETE FROM login_attempts WHERE id = ANY($1) OR key = $2")
            .bind::<Array<BigInt>, _>(&attempt.ids)
            .bind::<Text, _>(user.to_string())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The attempt succeeded (an enrollment, a device refresh): it is
    /// forgiven on every key; earlier failures stay counted.
    pub async fn forgive(
        &self,
        conn: &mut AsyncPgConnection,
        attempt: Attempt,
    ) -> diesel::QueryResult<()> {
        diesel::sql_query("DELETE FROM login_attempts WHERE id = ANY($1)")
            .bind::<Array<BigInt>, _>(&attempt.ids)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Whole seconds to wait, at least one.
fn seconds(wait: f64) -> u64 {
    if wait.is_finite() && wait > 1.0 {
        // Bounded by the window, which is a configured u64 of seconds.
        wait.ceil() as u64
    } else {
        1
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_whole_seconds_and_never_zero() {
        assert_eq!(seconds(39.2), 40);
        assert_eq!(seconds(0.001), 1);
        assert_eq!(seconds(-3.0), 1);
        assert_eq!(seconds(f64::NAN), 1);
    }

    #[test]
    fn keys_name_their_kind() {
        assert_eq!(ThrottleKey::User("a".into()).to_string(), "user:a");
        assert_eq!(
            ThrottleKey::Ip("10.0.0.1".parse().unwrap()).to_string(),
            "ip:10.0.0.1"
        );
    }
}
