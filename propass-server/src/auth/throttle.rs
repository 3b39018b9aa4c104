//! The throttle on failed logins: a sliding window of failures per key. A
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

    /// `Err(seconds to wait)` when any key is over its limit at `now`.
    pub fn check(&self, keys: &[ThrottleKey], now: Instant) -> Result<(), u64> {
        let mut map = self.lock();
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

    /// Records one failure at `now` for every key.
    pub fn failure(&self, keys: &[ThrottleKey], now: Instant) {
        let mut map = self.lock();
        if map.len() >= Self::MAX_KEYS {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for key in keys {
            let q = map.entry(key.clone()).or_default();
            q.push_back(now);
            while q.len() > self.max_failures {
                q.pop_front();
            }
        }
    }

    /// Forgets the failures of a key (after a successful login).
    pub fn success(&self, key: &ThrottleKey) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_until_the_window_passes_or_a_success() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let start = Instant::now();
        let keys = vec![ThrottleKey::User("a".into())];
        assert!(t.check(&keys, start).is_ok());
        t.failure(&keys, start);
        t.failure(&keys, start);
        assert_eq!(t.check(&keys, start + Duration::from_secs(20)), Err(40));
        assert!(t.check(&keys, start + Duration::from_secs(60)).is_ok());
        t.success(&keys[0]);
        assert!(t.check(&keys, start).is_ok());
    }
}
