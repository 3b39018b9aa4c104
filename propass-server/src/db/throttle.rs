//! The throttle on failed logins, shared by every instance through
//! PostgreSQL: a sliding window of attempts per key (table `login_attempts`).
//! An attempt is counted *before* its password is checked and forgiven only
//! when it succeeds, so concurrent attempts — on one instance or on several —
//! cannot race past the limit: at most `max_failures` passwords are ever
//! checked per key and window. Time is the database's, one clock for all
//! instances.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Text};
use diesel::{QueryResult, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::sync::Semaphore;

use super::PgPool;

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
    /// No database connection.
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

impl From<Refused> for crate::error::ApiError {
    fn from(e: Refused) -> Self {
        match e {
            Refused::Wait(retry_after_secs) => Self::RateLimited { retry_after_secs },
            Refused::Db(e) => e.into(),
            Refused::Pool(e) => e.into(),
        }
    }
}

/// Failed logins per key within a window.
///
/// A flood must not cost the database: a key found over its limit is
/// remembered here until its wait ends and refused from memory; at most
/// [`Self::AT_ONCE`] attempts use a database connection at a time (the
/// others wait in memory, not in the pool's queue, so they never crowd out
/// pushes); and an attempt whose key another attempt is counting right now
/// is refused at once (429, retry in a second) instead of waiting on it.
pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    /// Keys over their limit, until when (this instance's view).
    blocked: Mutex<HashMap<String, Instant>>,
    at_once: Semaphore,
    /// When this instance last deleted every expired row (a spray of made-up
    /// usernames leaves rows no later attempt on their key would prune).
    last_sweep: Mutex<Option<Instant>>,
}

/// Advisory-lock class of the throttle's keys (the two-integer key space,
/// apart from the migrations' single-bigint lock).
const LOCK_CLASS: i32 = 0x7072_7468; // "prth"

#[derive(QueryableByName)]
struct Over {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Double)]
    wait: f64,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

impl LoginThrottle {
    /// Attempts using a database connection at once.
    pub const AT_ONCE: usize = 4;
    /// Blocked keys remembered before expired ones are dropped.
    const MAX_BLOCKED: usize = 100_000;

    /// A throttle allowing `max_failures` per key within `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            blocked: Mutex::new(HashMap::new()),
            at_once: Semaphore::new(Self::AT_ONCE),
            last_sweep: Mutex::new(None),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The wait of a key known blocked, from memory.
    fn known_wait(&self, keys: &[String], now: Instant) -> Option<u64> {
        let blocked = self.blocked();
        keys.iter()
            .filter_map(|k| blocked.get(k))
            .filter_map(|until| until.checked_duration_since(now))
            .max()
            .map(|d| d.as_secs().max(1))
    }

    fn remember_blocked(&self, over: &[Over], now: Instant) {
        let mut blocked = self.blocked();
        if blocked.len() >= Self::MAX_BLOCKED {
            blocked.retain(|_, until| *until > now);
        }
        for o in over {
            blocked.insert(o.key.clone(), now + Duration::from_secs(seconds(o.wait)));
        }
    }

    fn window_secs(&self) -> f64 {
        self.window.as_secs_f64()
    }

    /// Counts an attempt on every key, unless one of them is over its limit
    /// (nothing is counted then). The attempt stays counted as a failure
    /// until [`Self::forgive`] forgives it.
    pub async fn begin(
        &self,
        pool: &PgPool,
        keys: &[ThrottleKey],
        now: Instant,
    ) -> Result<Attempt, Refused> {
        let mut keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
        // Locks taken in one order: two attempts sharing keys never deadlock.
        keys.sort_unstable();
        keys.dedup();
        if let Some(wait) = self.known_wait(&keys, now) {
            return Err(Refused::Wait(wait));
        }
        let _slot = self.at_once.acquire().await.map_err(|_| Refused::Wait(1))?;
        let mut conn = pool.get().await?;
        let counted = conn
            .transaction(async |conn| self.count_tx(conn, &keys, now).await)
            .await?;
        self.sweep(&mut conn, now).await;
        counted.map_err(Refused::Wait)
    }

    /// The check and the count of [`Self::begin`], in its transaction:
    /// `Err(seconds)` when a key is over its limit or held by another
    /// attempt right now.
    async fn count_tx(
        &self,
        conn: &mut AsyncPgConnection,
        keys: &[String],
        now: Instant,
    ) -> QueryResult<Result<Attempt, u64>> {
        if !lock_keys(conn, keys).await? {
            return Ok(Err(1));
        }
        let (max, window) = (i64::from(self.max_failures), self.window_secs());
        let over = over_limit(conn, keys, window, max).await?;
        if !over.is_empty() {
            self.remember_blocked(&over, now);
            let wait = over.iter().map(|o| o.wait).fold(0.0, f64::max);
            return Ok(Err(seconds(wait)));
        }
        let ids: Vec<Id> = diesel::sql_query(
            "INSERT INTO login_attempts (key, at) \
             SELECT k, statement_timestamp() FROM unnest($1::text[]) k RETURNING id",
        )
        .bind::<Array<Text>, _>(keys)
        .load(conn)
        .await?;
        Ok(Ok(Attempt {
            ids: ids.into_iter().map(|i| i.id).collect(),
        }))
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
            "DELETE FROM login_attempts WHERE at <= statement_timestamp() - make_interval(secs => $1)",
        )
        .bind::<Double, _>(self.window_secs())
        .execute(conn)
        .await;
        if let Err(e) = swept {
            tracing::debug!(error = %e, "cannot sweep expired login attempts");
        }
    }

    /// The attempt succeeded (a login, an enrollment, a device refresh): it
    /// is forgiven on every key. Earlier failures stay counted until they
    /// age out of the window — were a success to wipe an account's failures,
    /// guesses from many addresses interleaved with a shared kiosk account's
    /// logins would get `max_failures` more checks after each one. Best
    /// effort: a database that cannot take it leaves the attempt counted
    /// (logged), and the success stands.
    pub async fn forgive(&self, pool: &PgPool, attempt: Attempt) {
        let forgiven = async {
            let mut conn = pool.get().await?;
            diesel::sql_query("DELETE FROM login_attempts WHERE id = ANY($1)")
                .bind::<Array<BigInt>, _>(&attempt.ids)
                .execute(&mut conn)
                .await?;
            Ok::<_, Refused>(())
        };
        if let Err(e) = forgiven.await {
            tracing::warn!(error = %e, "cannot forgive a successful attempt in the throttle");
        }
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

/// Serializes the check and the count per key, across instances: no
/// attempt slips between them. Each lock is taken or refused, never waited
/// for while holding a connection; whether all were taken.
async fn lock_keys(conn: &mut AsyncPgConnection, keys: &[String]) -> QueryResult<bool> {
    for key in keys {
        let got: Locked =
            diesel::sql_query("SELECT pg_try_advisory_xact_lock($1, hashtext($2)) AS locked")
                .bind::<Integer, _>(LOCK_CLASS)
                .bind::<Text, _>(key)
                .get_result(conn)
                .await?;
        if !got.locked {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Forgets the keys' attempts older than the window, then names the keys
/// with `max` failures or more in it, and when their oldest one expires.
async fn over_limit(
    conn: &mut AsyncPgConnection,
    keys: &[String],
    window: f64,
    max: i64,
) -> QueryResult<Vec<Over>> {
    diesel::sql_query(
        "DELETE FROM login_attempts WHERE key = ANY($1) \
         AND at <= statement_timestamp() - make_interval(secs => $2)",
    )
    .bind::<Array<Text>, _>(keys)
    .bind::<Double, _>(window)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "SELECT key, EXTRACT(EPOCH FROM min(at) + make_interval(secs => $2) - statement_timestamp())::float8 AS wait \
         FROM login_attempts WHERE key = ANY($1) GROUP BY key HAVING count(*) >= $3",
    )
    .bind::<Array<Text>, _>(keys)
    .bind::<Double, _>(window)
    .bind::<BigInt, _>(max)
    .load(conn)
    .await
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
