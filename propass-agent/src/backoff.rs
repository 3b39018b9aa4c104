//! Capped exponential backoff with full jitter that never gives up: the
//! sync and WebSocket loops wait this long between attempts while the server
//! is unreachable.

use std::time::Duration;

use crate::seams::Rng;

/// Attempt counter and bounds; the randomness comes from the caller's [`Rng`].
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at `base`, never waits more than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            attempt: 0,
            base,
            cap,
        }
    }

    /// The next wait: uniform below a ceiling that doubles per attempt up to `cap`.
    pub fn next_delay(&mut self, rng: &dyn Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        rng.jitter(ceiling)
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::SystemRng;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            assert!(b.next_delay(&SystemRng) <= Duration::from_secs(2));
        }
    }
}
