//! Time, behind a trait, so that a deterministic simulation (or a test) can
//! drive it. [`SystemClock`] is the only place in the server that reads the
//! system clock: `clippy.toml` disallows `Utc::now` and `Instant::now`
//! everywhere else.

use std::time::Instant;

use chrono::{DateTime, Utc};

/// Where the server's logic gets the time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time: timestamps on the wire, token lifetimes.
    fn now(&self) -> DateTime<Utc>;
    /// Monotonic time: rate limits, throttles, timeouts.
    fn instant(&self) -> Instant;
}

/// The operating system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    #[allow(clippy::disallowed_methods)]
    fn instant(&self) -> Instant {
        Instant::now()
    }
}
