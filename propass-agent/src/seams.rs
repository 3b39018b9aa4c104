//! Time and randomness, the two inputs a deterministic simulation of the
//! agent has to replace. The agent's logic reads them only through the
//! [`Clock`] and [`Rng`] its context holds; the system implementations here
//! are the only code that calls the real clock or generator.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use propass_protocol::OpId;

/// Where the agent reads the time.
pub trait Clock: Send + Sync {
    /// Wall-clock time: timestamps stored and shown.
    fn now_utc(&self) -> DateTime<Utc>;
    /// Monotonic time: deadlines.
    fn now_instant(&self) -> Instant;
}

/// Where the agent draws random values.
pub trait Rng: Send + Sync {
    /// A fresh time-ordered (UUIDv7) operation id.
    fn new_op_id(&self) -> OpId;
    /// Uniform in `0..=max`.
    fn up_to(&self, max: u64) -> u64;
    /// A uniform `u32`.
    fn next_u32(&self) -> u32;

    /// A uniform wait in `0..=max`, at millisecond resolution (full jitter).
    fn jitter(&self, max: Duration) -> Duration {
        Duration::from_millis(self.up_to(max.as_millis().max(1) as u64))
    }
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now_utc(&self) -> DateTime<Utc> {
        Utc::now()
    }

    #[allow(clippy::disallowed_methods)]
    fn now_instant(&self) -> Instant {
        Instant::now()
    }
}

/// The thread-local generator of the `rand` crate.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRng;

impl Rng for SystemRng {
    #[allow(clippy::disallowed_methods)]
    fn new_op_id(&self) -> OpId {
        OpId(uuid::Uuid::now_v7())
    }

    #[allow(clippy::disallowed_methods)]
    fn up_to(&self, max: u64) -> u64 {
        rand::RngExt::random_range(&mut rand::rng(), 0..=max)
    }

    #[allow(clippy::disallowed_methods)]
    fn next_u32(&self) -> u32 {
        rand::RngExt::random(&mut rand::rng())
    }
}
