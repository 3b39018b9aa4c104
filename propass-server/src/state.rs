//! What every handler shares. A module of its own (not the composition root
//! in `startup.rs`), so that the modules handlers use never import the code
//! that assembles them.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::announce::Announcements;
use crate::auth::JwtKeys;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::db::throttle::LoginThrottle;
use crate::db::{self, PgPool};
use crate::heartbeats::Heartbeats;
use crate::live::LiveFeed;
use crate::metrics::Metrics;
use crate::rng::{OsRng, Rng};
use crate::ws::Hub;

/// When this instance last noted each kiosk's contact in PostgreSQL: a
/// kiosk pushing hard costs its row one write per [`Contacts::EVERY`], not
/// one per push.
#[derive(Default)]
pub struct Contacts {
    last:
        std::sync::Mutex<std::collections::HashMap<propass_protocol::DeviceId, std::time::Instant>>,
}

impl Contacts {
    /// How stale a noted contact may get.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);
    /// Devices remembered before stale entries are dropped.
    const MAX: usize = 100_000;

    /// Whether `device`'s contact at `now` should be written (and, if so,
    /// counts it as written).
    pub fn due(&self, device: &propass_protocol::DeviceId, now: std::time::Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last
            .get(device)
            .is_some_and(|t| now.saturating_duration_since(*t) < Self::EVERY)
        {
            return false;
        }
        if last.len() >= Self::MAX {
            last.retain(|_, t| now.saturating_duration_since(*t) < Self::EVERY);
        }
        last.insert(device.clone(), now);
        true
    }
}

/// The shared state of one server.
pub struct AppState {
    pub config: Config,
    pub pool: PgPool,
    pub jwt: JwtKeys,
    /// Failed-login throttle (its counts are in PostgreSQL).
    pub throttle: LoginThrottle,
    /// WebSocket connections.
    pub hub: Hub,
    /// Bounds concurrent Argon2 checks (`password_checks` in the configuration).
    pub password_checks: Semaphore,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Where token ids come from.
    pub rng: Arc<dyn Rng>,
    /// Counters of what the server did.
    pub metrics: Metrics,
    /// The operators' open dashboards.
    pub live: LiveFeed,
    /// Kiosks whose dashboard row is to be sent to the open dashboards.
    pub changed_devices: crate::live::ChangedDevices,
    /// This process among the instances sharing the database (it skips its
    /// own announcements).
    pub instance: String,
    /// Pushes taken here, waiting to be announced to the other instances.
    pub announcements: Announcements,
    /// Kiosks' last contacts noted by this instance.
    pub contacts: Contacts,
    /// Heartbeats that came over WebSockets, waiting to be stored.
    pub heartbeats: Heartbeats,
}

impl AppState {
    /// State for `config`, on the system clock and random source.
    pub fn new(config: Config) -> Self {
        Self::with_world(config, Arc::new(SystemClock), Arc::new(OsRng))
    }

    /// State for `config` with the given clock and random source.
    pub fn with_world(config: Config, clock: Arc<dyn Clock>, rng: Arc<dyn Rng>) -> Self {
        let instance = rng.token_id().simple().to_string();
        Self {
            pool: db::build_pool(&config.database_url, config.db_pool_size, config.db_timeout),
            jwt: JwtKeys::new(
                config.jwt_secret.expose(),
                config.token_ttl,
                config.device_token_ttl,
                config.refresh_grace,
            ),
            throttle: LoginThrottle::new(config.login_max_failures, config.login_window),
            hub: Hub::new(config.ws_outbound_queue),
            password_checks: Semaphore::new(config.password_checks),
            clock,
            rng,
            metrics: Metrics::default(),
            live: LiveFeed::new(config.admin_events_queue, config.admin_streams_max),
            changed_devices: Default::default(),
            instance,
            announcements: Announcements::default(),
            contacts: Contacts::default(),
            heartbeats: Heartbeats::default(),
            config,
        }
    }
}
