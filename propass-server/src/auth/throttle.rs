//! The throttle on failed logins: a sliding window of attempts per key. An
//! attempt is counted *before* its password is checked and forgiven only
//! when it succeeds, so concurrent attempts cannot race past the limit: at
//! most `max_failures` passwords are ever checked per key and window. A
//! leaf: it is handed the time and never sees the application state.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// A login attempt counted by [`LoginThrottle::begin`].
#[derive(Debug)]
pub struct Attempt {
    keys: Vec<ThrottleKey>,
    at: Instant,
}

/// Failed logins per key within a window.
pub struct LoginThrottle {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<ThrottleKey, VecDeque<Instant>>>,
}

impl LoginThrottle {
    /// Keys remembered before stale ones are pruned: bounds memory under a
    /// spray of made-up usernames.
    const MAX_KEYS: usize = 100_000;

    /// A throttle allowing `max_failures` per key within `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ThrottleKey, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn over_limit(
        &self,
        map: &mut HashMap<ThrottleKey, VecDeque<Instant>>,
        keys: &[ThrottleKey],
        now: Instant,
    ) -> Result<(), u64> {
        let mut wait = None::<Duration>;
        for key in keys {
            let Some(q) = map.get_mut(key) else { continue };
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                q.pop_front();
            }
            if q.len() >= self.max_failures {
                let oldest = *q.front().unwrap_or(&now);
                let w = self.window.saturating_sub(now.duration_since(oldest));
                wait = Some(wait.map_or(w, |x| x.max(w)));
            }
        }
        match wait {
            Some(w) => Err(w.as_secs().max(1)),
            None => Ok(()),
        }
    }

    /// Bounds memory under a spray of made-up usernames.
    fn prune(map: &mut HashMap<ThrottleKey, VecDeque<Instant>>, window: Duration, now: Instant) {
        if map.len() >= Self::MAX_KEYS {
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
    }

    /// Forgets the failures of a key (after a successful login).
    pub fn success(&self, key: &ThrottleKey) {
        self.lock().remove(key);
    }

    /// Counts an attempt on every key at `now`, unless one of them is over
    /// its limit (`Err(seconds to wait)`, nothing counted). The attempt stays
    /// counted as a failure until [`Self::succeeded`] forgives it.
    pub fn begin(&self, keys: &[ThrottleKey], now: Instant) -> Result<Attempt, u64> {
        // One lock for the check and the count: no attempt slips between them.
        let mut map = self.lock();
        self.over_limit(&mut map, keys, now)?;
        Self::prune(&mut map, self.window, now);
        for key in keys {
            map.entry(key.clone()).or_default().push_back(now);
        }
        Ok(Attempt {
            keys: keys.to_vec(),
            at: now,
        })
    }

    /// The attempt succeeded: it is forgiven on every key, and the
    /// account's failures are forgotten.
    pub fn succeeded(&self, attempt: Attempt, user: &ThrottleKey) {
        let mut map = self.lock();
        Self::uncount(&mut map, &attempt);
        map.remove(user);
    }

    /// The attempt succeeded (an enrollment, a device refresh): it is
    /// forgiven on every key; earlier failures stay counted.
    pub fn forgive(&self, attempt: Attempt) {
        Self::uncount(&mut self.lock(), &attempt);
    }

    fn uncount(map: &mut HashMap<ThrottleKey, VecDeque<Instant>>, attempt: &Attempt) {
        for key in &attempt.keys {
            if let Some(q) = map.get_mut(key) {
                if let Some(i) = q.iter().rposition(|t| *t == attempt.at) {
                    q.remove(i);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_before_their_outcome_and_a_success_is_forgiven() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let (user, ip) = (
            ThrottleKey::User("a".into()),
            ThrottleKey::Ip("10.0.0.1".parse().unwrap()),
        );
        let keys = vec![user.clone(), ip.clone()];
        let first = t.begin(&keys, now).unwrap();
        let _second = t.begin(&keys, now).unwrap();
        assert!(t.begin(&keys, now).is_err(), "two in flight: a third waits");
        t.succeeded(first, &user);
        let other = vec![ThrottleKey::User("b".into()), ip];
        assert!(
            t.begin(&other, now).is_ok(),
            "the address got back the slot of the success"
        );
    }

    #[test]
    fn blocks_after_max_failures_until_the_window_passes_or_a_success() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let start = Instant::now();
        let keys = vec![ThrottleKey::User("a".into())];
        let _ = t.begin(&keys, start).unwrap();
        let _ = t.begin(&keys, start).unwrap();
        assert_eq!(
            t.begin(&keys, start + Duration::from_secs(20)).unwrap_err(),
            40
        );
        assert!(t.begin(&keys, start + Duration::from_secs(60)).is_ok());
        t.success(&keys[0]);
        assert!(t.begin(&keys, start).is_ok());
    }
}
