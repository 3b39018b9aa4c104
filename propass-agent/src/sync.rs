//! The sync engine: pushes pending items oldest first in batches, applies the
//! server's per-item results, pulls quotas, keeps the token fresh, and
//! reconnects with capped, jittered exponential backoff that never gives up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use propass_protocol::{
    DeviceId, ErrorBody, ErrorCode, LoginResponse, PullResponse, PushRequest, PushResponse,
    RefreshResponse,
};
use rand::Rng;
use serde::Serialize;
use tokio::sync::{broadcast, watch, Notify};

use crate::config::AgentConfig;
use crate::events::AgentEvent;
use crate::store::{Store, StoreError};

/// Connectivity as last observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkState {
    /// The last request to the server got an answer.
    pub online: bool,
    /// The WebSocket is open.
    pub ws_connected: bool,
    /// Set when the server refused our token: a login is needed.
    pub login_required: Option<String>,
    /// The last sync error.
    pub last_error: Option<String>,
}

/// Why a sync cycle stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No server URL configured and no login done yet.
    #[error("no server configured: run `propass-agent login --server URL --username NAME`")]
    NoServer,
    /// No usable token.
    #[error("login required: {0}")]
    LoggedOut(String),
    /// The server cannot be reached.
    #[error("server unreachable: {0}")]
    Offline(String),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(String),
    /// Changing server would strand operations not yet synced with the current one.
    #[error("{0}")]
    UnsyncedWork(String),
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of one successful cycle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncSummary {
    /// Items acknowledged.
    pub synced: usize,
    /// Items refused.
    pub failed: usize,
    /// Items left pending.
    pub pending: i64,
}

/// The running agent, shared by its tasks and its local API.
pub struct Agent {
    /// Durable state.
    pub store: Store,
    /// Configuration.
    pub config: AgentConfig,
    /// This kiosk's identity (generated once, kept in the database).
    pub device_id: DeviceId,
    /// Local listeners.
    pub events: broadcast::Sender<AgentEvent>,
    /// Wakes the sync loop (new operation, login, server reachable).
    pub kick: Notify,
    /// Wakes the WebSocket loop (login).
    pub ws_kick: Notify,
    /// The NFC reader, on its own thread (opened at first use).
    pub reader: propass_nfc::ReaderThread,
    state: Mutex<LinkState>,
    http: reqwest::Client,
    sync_lock: tokio::sync::Mutex<()>,
}

/// `meta` keys.
pub mod keys {
    /// Device id.
    pub const DEVICE_ID: &str = "device_id";
    /// Server URL chosen at login.
    pub const SERVER_URL: &str = "server_url";
    /// Current token.
    pub const TOKEN: &str = "token";
    /// Its expiry (RFC 3339).
    pub const TOKEN_EXP: &str = "token_expires_at";
    /// Who logged in.
    pub const USERNAME: &str = "username";
    /// Last successful sync (RFC 3339).
    pub const LAST_SYNC: &str = "last_sync_at";
    /// Why a login is required (persisted across restarts).
    pub const LOGIN_REQUIRED: &str = "login_required";
}

/// Generates a device id from the hostname and random bits.
fn new_device_id() -> DeviceId {
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
    let suffix: u32 = rand::rng().random();
    let id = format!(
        "{}_{suffix:08X}",
        if host.is_empty() {
            "KIOSK".into()
        } else {
            host
        }
    );
    DeviceId::parse(&id)
        .unwrap_or_else(|_| DeviceId::parse(&format!("KIOSK_{suffix:08X}")).expect("valid id"))
}

/// Capped exponential backoff with full jitter; never gives up.
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
    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let ms = rand::rng().random_range(0..=ceiling.as_millis().max(1) as u64);
        Duration::from_millis(ms)
    }
    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn ws_url(server: &str) -> String {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/ws")
}

/// Reads an error body's message, or the status line.
async fn error_of(res: reqwest::Response) -> (u16, Option<ErrorCode>, String) {
    let status = res.status().as_u16();
    match res.json::<ErrorBody>().await {
        Ok(body) => (status, Some(body.error.code), body.error.message),
        Err(_) => (status, None, format!("HTTP {status}")),
    }
}

impl Agent {
    /// Opens the agent's state: the device id is generated on first start and kept.
    pub async fn new(store: Store, config: AgentConfig) -> Result<Arc<Self>, StoreError> {
        let device_id = match store.meta(keys::DEVICE_ID).await? {
            Some(id) => DeviceId::parse(&id).map_err(|e| StoreError::Invalid(e.to_string()))?,
            None => {
                let id = new_device_id();
                store
                    .set_meta(vec![(keys::DEVICE_ID, Some(id.to_string()))])
                    .await?;
                id
            }
        };
        let login_required = store.meta(keys::LOGIN_REQUIRED).await?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (events, _) = broadcast::channel(1024);
        let reader = propass_nfc::ReaderThread::spawn(config.reader.clone())
            .map_err(|e| StoreError::Invalid(format!("cannot start the reader thread: {e}")))?;
        Ok(Arc::new(Self {
            store,
            config,
            device_id,
            events,
            kick: Notify::new(),
            ws_kick: Notify::new(),
            reader,
            state: Mutex::new(LinkState {
                login_required,
                ..LinkState::default()
            }),
            http,
            sync_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// A copy of the connectivity state.
    pub fn link(&self) -> LinkState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update_link(&self, f: impl FnOnce(&mut LinkState)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let was_online = s.online;
        f(&mut s);
        if s.online != was_online {
            let _ = self
                .events
                .send(AgentEvent::Connectivity { online: s.online });
            tracing::info!(online = s.online, "connectivity changed");
        }
    }

    pub(crate) fn set_ws_connected(&self, up: bool) {
        self.update_link(|s| {
            s.ws_connected = up;
            if up {
                s.online = true;
            }
        });
    }

    /// Sends an event to local listeners (none listening is fine).
    pub fn emit(&self, e: AgentEvent) {
        let _ = self.events.send(e);
    }

    /// The server URL: the one chosen at login, else the configured one.
    pub async fn server_url(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .meta(keys::SERVER_URL)
            .await?
            .or_else(|| self.config.server_url.clone()))
    }

    /// The WebSocket URL and token, when logged in.
    pub async fn ws_target(&self) -> Result<Option<(String, String)>, StoreError> {
        let (Some(server), Some(token)) = (
            self.server_url().await?,
            self.store.meta(keys::TOKEN).await?,
        ) else {
            return Ok(None);
        };
        if self.link().login_required.is_some() {
            return Ok(None);
        }
        Ok(Some((ws_url(&server), token)))
    }

    /// Logs in to `server` (or the known one) and stores the token.
    pub async fn login(
        &self,
        server: Option<String>,
        username: &str,
        password: &str,
    ) -> Result<LoginResponse, SyncError> {
        let current = self.server_url().await?;
        let server = match server {
            Some(s) => s.trim_end_matches('/').to_owned(),
            None => current.clone().ok_or(SyncError::NoServer)?,
        };
        if current
            .as_deref()
            .is_some_and(|c| c.trim_end_matches('/') != server)
        {
            let c = self.store.counts().await?;
            if c.pending + c.failed > 0 {
                return Err(SyncError::UnsyncedWork(format!(
                    "{} operation(s) are not synced with {}: sync them (or fix the failed ones) before logging in to another server",
                    c.pending + c.failed,
                    current.unwrap_or_default()
                )));
            }
        }
        let body = serde_json::json!({"username": username, "password": password, "device_id": self.device_id});
        let res = self
            .http
            .post(format!("{server}/api/auth/login"))
            .json(&body)
            .send()
            .await
            .map_err(|e| SyncError::Offline(e.to_string()))?;
        if !res.status().is_success() {
            let (status, _, msg) = error_of(res).await;
            return Err(SyncError::Server(format!(
                "login refused ({status}): {msg}"
            )));
        }
        let login: LoginResponse = res
            .json()
            .await
            .map_err(|e| SyncError::Server(format!("unreadable login answer: {e}")))?;
        self.store
            .set_meta(vec![
                (keys::SERVER_URL, Some(server)),
                (keys::TOKEN, Some(login.token.clone())),
                (
                    keys::TOKEN_EXP,
                    login
                        .expires_at
                        .map(|t| t.to_rfc3339())
                        .or_else(|| token_exp(&login.token).map(|t| t.to_rfc3339())),
                ),
                (keys::USERNAME, Some(login.user.username.clone())),
                (keys::LOGIN_REQUIRED, None),
            ])
            .await?;
        self.update_link(|s| s.login_required = None);
        tracing::info!(user = %login.user.username, device = %self.device_id, "logged in");
        self.kick.notify_one();
        self.ws_kick.notify_one();
        Ok(login)
    }

    async fn logged_out(&self, reason: String) -> SyncError {
        tracing::warn!(%reason, "login required");
        let _ = self
            .store
            .set_meta(vec![(keys::LOGIN_REQUIRED, Some(reason.clone()))])
            .await;
        self.update_link(|s| s.login_required = Some(reason.clone()));
        self.emit(AgentEvent::LoginRequired {
            reason: reason.clone(),
        });
        SyncError::LoggedOut(reason)
    }

    /// Refreshes the token; `Ok(false)` when the server refused it.
    async fn refresh(&self, server: &str, token: &str) -> Result<Option<String>, SyncError> {
        let res = self
            .http
            .post(format!("{server}/api/auth/refresh"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| SyncError::Offline(e.to_string()))?;
        if res.status().is_success() {
            let r: RefreshResponse = res
                .json()
                .await
                .map_err(|e| SyncError::Server(e.to_string()))?;
            let exp = r.expires_at.or_else(|| token_exp(&r.token));
            self.store
                .set_meta(vec![
                    (keys::TOKEN, Some(r.token.clone())),
                    (keys::TOKEN_EXP, exp.map(|t| t.to_rfc3339())),
                ])
                .await?;
            tracing::info!("token refreshed");
            return Ok(Some(r.token));
        }
        let (status, _, msg) = error_of(res).await;
        if status == 401 || status == 403 {
            return Ok(None);
        }
        Err(SyncError::Server(format!(
            "refresh failed ({status}): {msg}"
        )))
    }

    /// One full cycle: token, push everything pending, pull. Serialized: a
    /// second caller waits for the first.
    pub async fn sync_once(&self) -> Result<SyncSummary, SyncError> {
        let _guard = self.sync_lock.lock().await;
        let result = self.sync_inner().await;
        match &result {
            Ok(summary) => {
                let now = Utc::now();
                let _ = self
                    .store
                    .set_meta(vec![(keys::LAST_SYNC, Some(now.to_rfc3339()))])
                    .await;
                self.update_link(|s| {
                    s.online = true;
                    s.last_error = None;
                });
                self.emit(AgentEvent::SyncResult {
                    synced: summary.synced,
                    failed: summary.failed,
                    pending: summary.pending,
                });
            }
            Err(SyncError::Offline(e)) => self.update_link(|s| {
                s.online = false;
                s.last_error = Some(e.clone());
            }),
            Err(e) => {
                let msg = e.to_string();
                self.update_link(|s| s.last_error = Some(msg));
            }
        }
        result
    }

    async fn sync_inner(&self) -> Result<SyncSummary, SyncError> {
        let server = self.server_url().await?.ok_or(SyncError::NoServer)?;
        if let Some(reason) = self.link().login_required {
            return Err(SyncError::LoggedOut(reason));
        }
        let mut token = self
            .store
            .meta(keys::TOKEN)
            .await?
            .ok_or_else(|| SyncError::LoggedOut("never logged in".into()))?;
        let exp = self
            .store
            .meta(keys::TOKEN_EXP)
            .await?
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc));
        let margin = chrono::Duration::from_std(self.config.refresh_margin)
            .unwrap_or(chrono::Duration::days(1));
        if exp.is_some_and(|e| e - Utc::now() < margin) {
            match self.refresh(&server, &token).await? {
                Some(t) => token = t,
                None => {
                    return Err(self
                        .logged_out("the server refused to refresh the token".into())
                        .await)
                }
            }
        }

        let mut summary = SyncSummary::default();
        let mut batch_size = self.config.batch_size;
        let mut refreshed = false;
        loop {
            let batch = self.store.pending(batch_size).await?;
            if batch.is_empty() {
                break;
            }
            let ids: Vec<i64> = batch.iter().map(|o| o.id).collect();
            self.store.note_attempt(ids).await?;
            let body = PushRequest {
                device_id: self.device_id.clone(),
                queue: batch.iter().map(|o| o.to_queue_item()).collect(),
            };
            let res = self
                .http
                .post(format!("{server}/api/sync/push"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .map_err(|e| SyncError::Offline(e.to_string()))?;
            if res.status().is_success() {
                let answer: PushResponse = res
                    .json()
                    .await
                    .map_err(|e| SyncError::Offline(format!("push answer lost: {e}")))?;
                let (synced, failed) = self
                    .store
                    .apply_push(answer.data, answer.quotas.clone())
                    .await?;
                summary.synced += synced;
                summary.failed += failed;
                tracing::info!(items = batch.len(), synced, failed, "pushed");
                if synced + failed == 0 {
                    // Pushing the same batch again would loop without end.
                    return Err(SyncError::Server(
                        "the server's answer matched none of the pushed items".into(),
                    ));
                }
                continue;
            }
            let (status, code, msg) = error_of(res).await;
            match (status, code) {
                (401, _) if !refreshed => {
                    refreshed = true;
                    match self.refresh(&server, &token).await? {
                        Some(t) => token = t,
                        None => {
                            return Err(self
                                .logged_out(format!("the server refused the token: {msg}"))
                                .await)
                        }
                    }
                }
                (401, _) | (403, _) => return Err(self.logged_out(msg).await),
                (413, _) if batch_size > 1 => {
                    batch_size = (batch_size / 2).max(1);
                    tracing::warn!(batch_size, "server refused the batch size; halving");
                }
                (s, Some(ErrorCode::Unavailable)) | (s @ 500..=599, _) => {
                    return Err(SyncError::Offline(format!("server answered {s}: {msg}")))
                }
                (s, _) => return Err(SyncError::Server(format!("push refused ({s}): {msg}"))),
            }
        }

        let res = self
            .http
            .get(format!("{server}/api/sync/pull"))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| SyncError::Offline(e.to_string()))?;
        if !res.status().is_success() {
            let (status, _, msg) = error_of(res).await;
            if status == 401 || status == 403 {
                return Err(self.logged_out(msg).await);
            }
            return Err(SyncError::Offline(format!("pull failed ({status}): {msg}")));
        }
        let pull: PullResponse = res
            .json()
            .await
            .map_err(|e| SyncError::Offline(format!("pull answer lost: {e}")))?;
        self.store.apply_pull(pull.quotas).await?;
        summary.pending = self.store.counts().await?.pending;
        Ok(summary)
    }

    /// The sync loop: runs a cycle on every kick, on the periodic timer, and,
    /// while the server is unreachable, on a jittered backoff capped at
    /// `reconnect_max` — so it resumes within a couple of seconds of the server
    /// coming back, and never gives up.
    pub async fn run_sync_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.config.reconnect_max);
        loop {
            let wait = match self.sync_once().await {
                Ok(_) => {
                    backoff.reset();
                    self.config.sync_interval
                }
                Err(SyncError::Offline(e)) => {
                    tracing::debug!(error = %e, "server unreachable");
                    backoff.next_delay()
                }
                Err(SyncError::Server(e)) => {
                    tracing::warn!(error = %e, "sync failed");
                    backoff.next_delay().max(Duration::from_secs(1))
                }
                Err(SyncError::Store(e)) => {
                    tracing::error!(error = %e, "local database error during sync");
                    backoff.next_delay().max(Duration::from_secs(1))
                }
                Err(SyncError::LoggedOut(_) | SyncError::NoServer | SyncError::UnsyncedWork(_)) => {
                    self.config.sync_interval
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.kick.notified() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// The `exp` of a JWT, read without checking it (the server checks).
pub fn token_exp(token: &str) -> Option<DateTime<Utc>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    DateTime::from_timestamp(v.get("exp")?.as_i64()?, 0)
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' => continue,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
    }

    #[test]
    fn reads_token_expiry() {
        // {"exp":1700000000}
        let t = format!("x.{}.y", "eyJleHAiOjE3MDAwMDAwMDB9");
        assert_eq!(token_exp(&t).unwrap().timestamp(), 1_700_000_000);
        assert_eq!(ws_url("http://h:5000/"), "ws://h:5000/ws");
        assert_eq!(ws_url("https://h"), "wss://h/ws");
    }
}
