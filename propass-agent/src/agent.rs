//! The running agent's context, shared by its tasks and its local API: the
//! store, the configuration, the device id, the event channel, the reader
//! thread, the server client, and the clock and random source. It holds the
//! connectivity state; the work itself lives in `sync`, `ws`, `kiosk` and
//! `api`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use propass_nfc::ReaderThread;
use propass_protocol::{ClientId, DeviceId, OpId, ReaderHealth};
use serde::Serialize;
use tokio::sync::{broadcast, Notify};

use crate::config::AgentConfig;
use crate::events::AgentEvent;
use crate::seams::{Clock, Rng, SystemClock, SystemRng};
use crate::store::{Ending, Store, StoreError};
use crate::upstream::{HttpServerClient, ServerClient};
use crate::write_gate::WriteGate;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentStartError {
    /// The local database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client (TLS or resolver set-up).
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    /// The reader thread.
    #[error("cannot start the reader thread: {0}")]
    Reader(std::io::Error),
}

/// Connectivity as last observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkState {
    /// The last request to the server got an answer.
    pub online: bool,
    pub ws_connected: bool,
    /// Set when the server refused our token: a login is needed.
    pub login_required: Option<String>,
    /// The last sync error.
    pub last_error: Option<String>,
}

/// Where the next pull starts: the version the last one answered, from
/// which server, and when the last complete one was (a complete pull every
/// `full_pull_interval_secs` bounds what a missed change could cost).
#[derive(Debug, Clone)]
pub(crate) struct PullCursor {
    pub server: String,
    pub version: i64,
    pub complete_at: chrono::DateTime<chrono::Utc>,
}

/// The reader as the kiosk last met it, and its writes since the agent
/// started (for the heartbeat).
#[derive(Default)]
pub struct ReaderStats {
    health: Mutex<Option<ReaderHealth>>,
    pub written: AtomicU64,
    pub failed: AtomicU64,
}

impl ReaderStats {
    /// Notes how a reader operation went.
    pub fn saw<T>(&self, result: &Result<T, propass_nfc::NfcError>) {
        use propass_nfc::NfcError;
        let health = match result {
            Err(NfcError::NoReader(_)) => ReaderHealth::Absent,
            Err(NfcError::ReaderUnplugged(_)) => ReaderHealth::Failing,
            _ => ReaderHealth::Ok,
        };
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = Some(health);
    }

    pub fn health(&self) -> ReaderHealth {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(ReaderHealth::Unknown)
    }
}

/// Whether the database takes writes: a kiosk whose disk is full or
/// read-only makes no card (it could not record it), and says why in its
/// status and heartbeat. A refused write sets it; only `kiosk::check_storage`
/// clears it, once a write went through and every card waiting for the disk
/// is recorded.
#[derive(Default)]
pub struct StorageHealth {
    error: Mutex<Option<String>>,
}

impl StorageHealth {
    /// Notes a write's outcome (`Err`: why the database refused it);
    /// whether the storage went from working to failing or back.
    fn saw(&self, result: Result<(), &StoreError>) -> bool {
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        let was_failing = error.is_some();
        *error = result.err().map(|e| e.to_string());
        error.is_some() != was_failing
    }

    /// Why the last write failed; `None` once one went through.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A card's intent whose ending the disk refused (see `kiosk::settle`):
/// settled once a write goes through again, or at the next start.
#[derive(Debug, Clone)]
pub struct Unsettled {
    pub id: i64,
    pub op_id: OpId,
    pub client_id: ClientId,
    pub ending: Ending,
}

/// What the agent is made of; [`Agent::new`] uses the real ones, tests and a
/// simulation their own.
pub struct Parts {
    pub store: Store,
    pub config: AgentConfig,
    pub reader: ReaderThread,
    pub server: Arc<dyn ServerClient>,
    /// TLS for the WebSocket (the server client has its own copy).
    pub tls: Arc<rustls::ClientConfig>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Rng>,
}

/// The running agent.
pub struct Agent {
    pub store: Store,
    pub config: AgentConfig,
    /// This kiosk's identity (generated once, kept in the database).
    pub device_id: DeviceId,
    /// Local listeners.
    pub events: broadcast::Sender<AgentEvent>,
    /// Wakes the sync loop (new operation, login, server reachable).
    pub kick: Notify,
    /// Wakes the WebSocket loop (login).
    pub ws_kick: Notify,
    /// A sync error or the storage came or went: the WebSocket session
    /// sends a heartbeat now, not at its next tick.
    pub health_changed: Notify,
    /// The NFC reader, on its own thread (opened at first use).
    pub reader: ReaderThread,
    pub server: Arc<dyn ServerClient>,
    /// TLS for links to the server.
    pub tls: Arc<rustls::ClientConfig>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Rng>,
    /// Cards being written: shutdown waits for them, and refuses new ones.
    pub writes: WriteGate,
    /// What the heartbeat says of the reader and the writes since start.
    pub reader_stats: ReaderStats,
    /// What the status and heartbeat say of the database's last write.
    pub storage: StorageHealth,
    /// Cards whose record waits for the disk; held by the one check that
    /// settles them (see `kiosk::check_storage`).
    pub unsettled: tokio::sync::Mutex<Vec<Unsettled>>,
    link: Mutex<LinkState>,
    /// Serializes sync cycles; holds where the next pull starts.
    pub(crate) sync_lock: tokio::sync::Mutex<Option<PullCursor>>,
}

impl Agent {
    /// The production agent: libnfc reader, reqwest client, system clock and
    /// random source.
    pub async fn new(store: Store, config: AgentConfig) -> Result<Arc<Self>, AgentStartError> {
        let reader = ReaderThread::spawn(config.reader.clone()).map_err(AgentStartError::Reader)?;
        let tls = crate::tls::client_config(config.server_ca_file.as_deref())
            .map_err(AgentStartError::Http)?;
        let server = HttpServerClient::new(config.max_answer_bytes, tls.clone())
            .map_err(|e| AgentStartError::Http(e.to_string()))?;
        Self::from_parts(Parts {
            store,
            config,
            reader,
            tls,
            server: Arc::new(server),
            clock: Arc::new(SystemClock),
            rng: Arc::new(SystemRng),
        })
        .await
    }

    /// Opens the agent's state: the device id is generated on first start
    /// and kept; the cards a crash left half made are settled first (see
    /// [`crate::store::intents`]), so that none is left behind.
    pub async fn from_parts(parts: Parts) -> Result<Arc<Self>, AgentStartError> {
        let Parts {
            store,
            config,
            reader,
            server,
            tls,
            clock,
            rng,
        } = parts;
        let device_id = store.device_id(new_device_id(&*rng)).await?;
        let login_required = store.login_required().await?;
        for intent in store.settle_interrupted(clock.now_utc()).await? {
            match intent.step {
                crate::store::Step::Writing => {
                    tracing::warn!(op_id = %intent.op_id, client = %intent.client_id, blank = ?intent.blank_uid,
                    "a card was being written when the agent stopped: recorded as unverified (charged, flagged for an operator)")
                }
                _ => tracing::info!(op_id = %intent.op_id, client = %intent.client_id,
                    "a copy had not reached the blank when the agent stopped: its unit is released"),
            }
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Self {
            store,
            config,
            device_id,
            events,
            kick: Notify::new(),
            ws_kick: Notify::new(),
            health_changed: Notify::new(),
            reader,
            server,
            tls,
            clock,
            rng,
            link: Mutex::new(LinkState {
                login_required,
                ..LinkState::default()
            }),
            writes: WriteGate::default(),
            reader_stats: ReaderStats::default(),
            storage: StorageHealth::default(),
            unsettled: tokio::sync::Mutex::default(),
            sync_lock: tokio::sync::Mutex::new(None),
        }))
    }

    /// A copy of the connectivity state.
    /// Opens the reader if it is not open and notes what was found, so that
    /// the status and heartbeat say whether a reader is there before any
    /// card is asked for, and a reader plugged in again is seen. Not while
    /// the reader is known to work: an open reader is not disturbed between
    /// flows (one unplugged while idle shows at its next use).
    pub async fn look_for_reader(&self) {
        if self.reader_stats.health() == ReaderHealth::Ok {
            return;
        }
        let found = self.reader.run(|_, _| Ok(())).await;
        self.reader_stats.saw(&found);
    }

    pub fn link(&self) -> LinkState {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the connectivity state; a change of `online` is announced.
    pub(crate) fn update_link(&self, f: impl FnOnce(&mut LinkState)) {
        let mut s = self.link.lock().unwrap_or_else(|p| p.into_inner());
        let was_online = s.online;
        let had_error = s.last_error.is_some();
        f(&mut s);
        if s.online != was_online {
            self.emit(AgentEvent::Connectivity { online: s.online });
            tracing::info!(online = s.online, "connectivity changed");
        }
        if s.last_error.is_some() != had_error {
            self.health_changed.notify_one();
        }
    }

    /// Notes whether the database takes writes (see [`StorageHealth`]); a
    /// change is told to the server at once. An error that is not the
    /// disk's (a refusal of the operation itself) changes nothing.
    pub fn note_storage(&self, result: Result<(), &StoreError>) {
        if result.is_err_and(|e| !e.is_storage_failure()) {
            return;
        }
        if self.storage.saw(result) {
            self.health_changed.notify_one();
        }
    }

    /// Notes the socket's state. A socket that went down wakes the sync
    /// loop: it may have been sleeping the long live interval, and the
    /// heartbeat goes over HTTP now.
    pub(crate) fn set_ws_connected(&self, up: bool) {
        let mut dropped = false;
        self.update_link(|s| {
            dropped = s.ws_connected && !up;
            s.ws_connected = up;
            if up {
                s.online = true;
            }
        });
        if dropped {
            self.kick.notify_one();
        }
    }

    /// Sends an event to local listeners (none listening is fine).
    pub fn emit(&self, e: AgentEvent) {
        let _ = self.events.send(e);
    }

    /// The server URL: the one chosen at login, else the configured one.
    pub async fn server_url(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .server_url()
            .await?
            .or_else(|| self.config.server_url.clone()))
    }
}

/// A device id from the hostname and random bits.
fn new_device_id(rng: &dyn Rng) -> DeviceId {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_uppercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let suffix = rng.next_u32();
    let host = if host.is_empty() {
        "KIOSK".into()
    } else {
        host
    };
    DeviceId::parse(&format!("{host}_{suffix:08X}"))
        .unwrap_or_else(|_| DeviceId::parse(&format!("KIOSK_{suffix:08X}")).expect("valid id"))
}
