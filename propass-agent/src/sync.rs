//! The sync engine: pushes pending items oldest first in batches, applies the
//! server's per-item results, pulls quotas, keeps the token fresh, and runs
//! the sync loop. It decides on the server's error codes (see `Refusal`),
//! never on HTTP numbers; [`wire`] converts between wire and store types.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use propass_protocol::{
    DeviceTokenRequest, DeviceTokenResponse, EnrollRequest, ErrorCode, LeaseEntry, LoginRequest,
    LoginResponse, PushResponse,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::agent::{Agent, PullCursor};
use crate::backoff::Backoff;
use crate::events::AgentEvent;
use crate::store::{Session, StoreError};
use crate::upstream::UpstreamError;
use crate::upstream::{check_server_url, normalize_server_url};

pub mod wire;

/// Why a sync cycle stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No server URL configured and no login done yet.
    #[error("no server configured: run `propass-agent enroll --server URL --code CODE`")]
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
    /// The server refused this device's pushes for now (its per-device
    /// limits): wait this many seconds before the next cycle.
    #[error("server busy: {message}")]
    Throttled {
        /// The server's `Retry-After`.
        retry_after_secs: u64,
        message: String,
    },
    /// Changing server would strand operations not yet synced with the current one.
    #[error("{0}")]
    UnsyncedWork(String),
    /// A server the agent will not talk to (plain http over the network).
    #[error("{0}")]
    Insecure(String),
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

/// What a server's refusal means for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The token is missing, invalid or expired: a refresh may help.
    Token,
    /// This device may not use the server any more: only a login helps.
    Device,
    /// The batch is too big.
    TooLarge,
    /// The server is there but cannot work: like being offline.
    ServerDown,
    /// Over a limit; retry after the seconds given.
    Throttled(u64),
    /// Anything else.
    Other,
}

impl Refusal {
    fn of(code: ErrorCode) -> Self {
        match code {
            ErrorCode::MissingToken
            | ErrorCode::InvalidToken
            | ErrorCode::TokenExpired
            | ErrorCode::InvalidCredentials
            | ErrorCode::InvalidCredential => Self::Token,
            ErrorCode::DeviceMismatch
            | ErrorCode::DeviceRevoked
            | ErrorCode::DeviceEnrolled
            | ErrorCode::Forbidden => Self::Device,
            ErrorCode::PayloadTooLarge => Self::TooLarge,
            ErrorCode::Unavailable | ErrorCode::Internal => Self::ServerDown,
            _ => Self::Other,
        }
    }

    fn ends_session(self) -> bool {
        matches!(self, Self::Token | Self::Device)
    }
}

/// The server and token a cycle works with.
struct Credentials {
    server: String,
    token: String,
    /// An enrolled device's refresh credential (a password login has none).
    credential: Option<String>,
}

fn upstream_error(what: &str, e: UpstreamError) -> SyncError {
    match e {
        UpstreamError::Unreachable(m) => SyncError::Offline(m),
        UpstreamError::Refused {
            status, message, ..
        } => SyncError::Server(format!("{what} refused ({status}): {message}")),
        UpstreamError::Unreadable(m) => SyncError::Server(format!("unreadable {what} answer: {m}")),
    }
}

impl Agent {
    /// Logs in to `server` (or the known one) and stores the session.
    pub async fn login(
        &self,
        server: Option<String>,
        username: &str,
        password: &str,
    ) -> Result<LoginResponse, SyncError> {
        let server = self.next_server(server).await?;
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            device_id: self.device_id.clone(),
        };
        let login = self
            .server
            .login(&server, &body)
            .await
            .map_err(|e| upstream_error("login", e))?;
        let session = Session {
            server_url: server,
            token: login.token.clone(),
            token_expires_at: login.expires_at.or_else(|| token_exp(&login.token)),
            username: Some(login.user.username.clone()),
            credential: None,
        };
        self.store.save_login(session).await?;
        self.update_link(|s| s.login_required = None);
        tracing::info!(user = %login.user.username, device = %self.device_id, "logged in");
        self.kick.notify_one();
        self.ws_kick.notify_one();
        Ok(login)
    }

    /// Enrolls this device with `server` (or the known one) using an
    /// operator's one-time code, and stores the session: from now on the
    /// device renews its own short-lived tokens with its rotating credential.
    pub async fn enroll(
        &self,
        server: Option<String>,
        code: &str,
    ) -> Result<DeviceTokenResponse, SyncError> {
        let server = self.next_server(server).await?;
        let body = EnrollRequest {
            code: code.to_owned(),
            device_id: self.device_id.clone(),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        };
        let enrolled = self
            .server
            .enroll(&server, &body)
            .await
            .map_err(|e| upstream_error("enrollment", e))?;
        if enrolled.device_id != self.device_id {
            return Err(SyncError::Server(format!(
                "the server enrolled device {} but this agent is {}",
                enrolled.device_id, self.device_id
            )));
        }
        let session = Session {
            server_url: server,
            token: enrolled.token.clone(),
            token_expires_at: Some(enrolled.expires_at),
            username: None,
            credential: Some(enrolled.credential.clone()),
        };
        self.store.save_login(session).await?;
        self.update_link(|s| s.login_required = None);
        tracing::info!(device = %self.device_id, name = ?enrolled.name, "enrolled");
        self.kick.notify_one();
        self.ws_kick.notify_one();
        Ok(enrolled)
    }

    /// The server a login or enrollment goes to: `server`, or the known one;
    /// refused when it is not a secure address, or another server while
    /// operations are unsynced.
    async fn next_server(&self, server: Option<String>) -> Result<String, SyncError> {
        let current = self.server_url().await?;
        let server = match server {
            Some(s) => normalize_server_url(&s).map_err(SyncError::Insecure)?,
            None => current.clone().ok_or(SyncError::NoServer)?,
        };
        check_server_url(&server, self.config.allow_insecure_http).map_err(SyncError::Insecure)?;
        self.check_server_change(current.as_deref(), &server)
            .await?;
        Ok(server)
    }

    /// Refuses a login to another server while operations are unsynced.
    async fn check_server_change(
        &self,
        current: Option<&str>,
        next: &str,
    ) -> Result<(), SyncError> {
        let same = |c: &str| normalize_server_url(c).unwrap_or_else(|_| c.to_owned()) == next;
        let Some(current) = current.filter(|c| !same(c)) else {
            return Ok(());
        };
        let c = self.store.counts().await?;
        if c.pending + c.failed > 0 {
            return Err(SyncError::UnsyncedWork(format!(
                "{} operation(s) are not synced with {current}: sync them (or fix the failed ones) before logging in to another server",
                c.pending + c.failed,
            )));
        }
        Ok(())
    }

    async fn logged_out(&self, reason: String) -> SyncError {
        tracing::warn!(%reason, "login required");
        let _ = self.store.set_login_required(reason.clone()).await;
        self.update_link(|s| s.login_required = Some(reason.clone()));
        self.emit(AgentEvent::LoginRequired {
            reason: reason.clone(),
        });
        SyncError::LoggedOut(reason)
    }

    /// Refreshes the token — with the refresh credential of an enrolled
    /// device, else the token itself — and stores the new one (and the next
    /// credential) before using it; `Ok(None)` when the server refused.
    async fn refresh(&self, creds: &mut Credentials) -> Result<Option<String>, SyncError> {
        let answer = match &creds.credential {
            Some(credential) => {
                let body = DeviceTokenRequest {
                    credential: credential.clone(),
                    agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                };
                self.server
                    .device_token(&creds.server, &body)
                    .await
                    .map(|r| (r.token, Some(r.expires_at), Some(r.credential)))
            }
            None => self
                .server
                .refresh(&creds.server, &creds.token)
                .await
                .map(|r| (r.token, r.expires_at, None)),
        };
        match answer {
            Ok((token, exp, credential)) => {
                let exp = exp.or_else(|| token_exp(&token));
                self.store
                    .save_token(token.clone(), exp, credential.clone())
                    .await?;
                if credential.is_some() {
                    creds.credential = credential;
                }
                creds.token = token.clone();
                tracing::info!("token refreshed");
                Ok(Some(token))
            }
            Err(UpstreamError::Refused { code, .. }) if Refusal::of(code).ends_session() => {
                Ok(None)
            }
            Err(UpstreamError::Refused {
                status, message, ..
            }) => Err(SyncError::Server(format!(
                "refresh failed ({status}): {message}"
            ))),
            Err(UpstreamError::Unreachable(m)) => Err(SyncError::Offline(m)),
            Err(UpstreamError::Unreadable(m)) => Err(SyncError::Server(m)),
        }
    }

    /// One full cycle: token, push everything pending, pull. Serialized: a
    /// second caller waits for the first.
    pub async fn sync_once(&self) -> Result<SyncSummary, SyncError> {
        let mut cursor = self.sync_lock.lock().await;
        let result = self.sync_inner(&mut cursor).await;
        match &result {
            Ok((summary, creds)) => {
                let _ = self.store.set_last_sync_at(self.clock.now_utc()).await;
                self.update_link(|s| {
                    s.online = true;
                    s.last_error = None;
                });
                // After the link's state: the heartbeat says this sync
                // went well, not how the last one went.
                if !self.link().ws_connected {
                    self.send_heartbeat(creds).await;
                } else if summary.synced + summary.failed > 0 {
                    // The backlog changed: operators see it now, not at the
                    // next periodic heartbeat.
                    self.health_changed.notify_one();
                }
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
                // The server answered but the sync failed (a refused push,
                // a local error): operators hear why, socket or not. Not
                // when it asked for quiet (throttled) or cannot be asked.
                if matches!(e, SyncError::Server(_) | SyncError::Store(_))
                    && !self.link().ws_connected
                {
                    if let Ok(creds) = self.fresh_credentials().await {
                        self.send_heartbeat(&creds).await;
                    }
                }
            }
        }
        result.map(|(summary, _)| summary)
    }

    /// The heartbeat over HTTP, for a kiosk whose WebSocket is down: best
    /// effort (operators then see a stale view, the sync goes on).
    async fn send_heartbeat(&self, creds: &Credentials) {
        let hb = match crate::heartbeat::heartbeat(self).await {
            Ok(hb) => hb,
            Err(e) => {
                return tracing::warn!(error = %e, "cannot read the kiosk's state for its heartbeat")
            }
        };
        if let Err(e) = self
            .server
            .heartbeat(&creds.server, &creds.token, &hb)
            .await
        {
            tracing::debug!(error = %e, "heartbeat not delivered");
        }
    }

    /// On a clean shutdown: once everything is pushed, gives the units the
    /// server set aside for this kiosk back, so other kiosks can spend them;
    /// the kiosk then holds none until its next pull. With work still queued
    /// the lease stays (the queued copies were made from it).
    ///
    /// The kiosk lets go of its lease before it asks: an answer lost after
    /// the server took the units back (or a kill in between) must not leave
    /// it spending them offline at its next start. If the server did not
    /// take them, its next (complete) pull hands them back.
    pub async fn release_leases(&self) -> Result<bool, SyncError> {
        let _guard = self.sync_lock.lock().await;
        let counts = self.store.counts().await?;
        let quotas = self.store.quotas().await?;
        let held = quotas.iter().any(|q| q.lease.is_some_and(|l| l > 0));
        let making = quotas.iter().any(|q| q.reserved > 0);
        if counts.pending > 0 || making || !held {
            return Ok(false);
        }
        let creds = self.fresh_credentials().await?;
        self.store.leases_returned().await?;
        match self
            .server
            .release_leases(&creds.server, &creds.token, None)
            .await
        {
            Ok(answer) => {
                let units: i64 = answer.released.iter().map(|l| l.units).sum();
                tracing::info!(units, "leases given back to the server");
                Ok(true)
            }
            Err(UpstreamError::Unreachable(m)) => Err(SyncError::Offline(m)),
            Err(UpstreamError::Refused {
                status, message, ..
            }) => Err(SyncError::Server(format!(
                "lease release refused ({status}): {message}"
            ))),
            Err(UpstreamError::Unreadable(m)) => Err(SyncError::Server(m)),
        }
    }

    /// The cycle, and the credentials it ended with.
    async fn sync_inner(
        &self,
        cursor: &mut Option<PullCursor>,
    ) -> Result<(SyncSummary, Credentials), SyncError> {
        let mut creds = self.fresh_credentials().await?;
        let mut summary = SyncSummary::default();
        self.push_pending(&mut creds, &mut summary).await?;
        let excess = self.pull(&mut creds, cursor).await?;
        if !self.give_back(&creds, excess).await {
            // Units let go here that the server may still hold: the next
            // pull is a complete one, which says what it holds.
            *cursor = None;
        }
        summary.pending = self.store.counts().await?.pending;
        Ok((summary, creds))
    }

    /// The server and a token, refreshed first when it is about to expire.
    async fn fresh_credentials(&self) -> Result<Credentials, SyncError> {
        let server = self.server_url().await?.ok_or(SyncError::NoServer)?;
        check_server_url(&server, self.config.allow_insecure_http).map_err(SyncError::Insecure)?;
        if let Some(reason) = self.link().login_required {
            return Err(SyncError::LoggedOut(reason));
        }
        let session = self
            .store
            .session()
            .await?
            .ok_or_else(|| SyncError::LoggedOut("never logged in".into()))?;
        let mut margin = chrono::Duration::from_std(self.config.refresh_margin())
            .unwrap_or(chrono::Duration::days(1));
        // A short-lived device token is renewed once two thirds of it are
        // used, whatever the margin configured for long login tokens.
        if let Some(lifetime) = token_lifetime(&session.token) {
            margin = margin.min(lifetime / 3);
        }
        let now = self.clock.now_utc();
        let mut creds = Credentials {
            server,
            token: session.token,
            credential: session.credential,
        };
        if session.token_expires_at.is_some_and(|e| e - now < margin)
            && self.refresh(&mut creds).await?.is_none()
        {
            let why = "the server refused to refresh the token".to_string();
            return Err(self.logged_out(why).await);
        }
        Ok(creds)
    }

    /// Pushes batches until nothing is pending.
    async fn push_pending(
        &self,
        creds: &mut Credentials,
        summary: &mut SyncSummary,
    ) -> Result<(), SyncError> {
        let mut batch_size = self.config.batch_size;
        let mut refreshed = false;
        loop {
            let batch = self.store.pending(batch_size).await?;
            if batch.is_empty() {
                return Ok(());
            }
            self.store
                .note_attempt(batch.iter().map(|o| o.id).collect())
                .await?;
            let body = wire::push_request(&self.device_id, &batch);
            let answer = match self.server.push(&creds.server, &creds.token, &body).await {
                Ok(answer) => answer,
                Err(UpstreamError::Refused {
                    code,
                    status,
                    message,
                    retry_after,
                }) => {
                    let refusal = match (code, retry_after) {
                        // Over a limit, or a saturated server: it says when to come back.
                        (ErrorCode::RateLimited | ErrorCode::Unavailable, Some(secs)) => {
                            Refusal::Throttled(secs)
                        }
                        _ => Refusal::of(code),
                    };
                    match refusal {
                        Refusal::Token if !refreshed => {
                            refreshed = true;
                            self.refreshed_token(creds, message).await?;
                        }
                        Refusal::TooLarge if batch_size > 1 => {
                            batch_size = (batch_size / 2).max(1);
                            tracing::warn!(batch_size, "server refused the batch size; halving");
                        }
                        r => return Err(self.push_refused(r, status, message).await),
                    }
                    continue;
                }
                Err(UpstreamError::Unreachable(m)) => return Err(SyncError::Offline(m)),
                Err(UpstreamError::Unreadable(m)) => {
                    return Err(SyncError::Offline(format!("push answer lost: {m}")))
                }
            };
            self.apply_answer(answer, batch.len(), summary).await?;
        }
    }

    /// Settles the pushed items the answer names, and stores its quotas.
    async fn apply_answer(
        &self,
        answer: PushResponse,
        items: usize,
        summary: &mut SyncSummary,
    ) -> Result<(), SyncError> {
        let quotas = wire::pushed_quotas(answer.quotas, &answer.leases);
        let outcomes = wire::outcomes(answer.data);
        let now = self.clock.now_utc();
        let applied = self.store.apply_push(outcomes, quotas, now).await?;
        summary.synced += applied.synced;
        summary.failed += applied.failed;
        tracing::info!(items, applied.synced, applied.failed, "pushed");
        if applied.synced + applied.failed == 0 {
            // Pushing the same batch again would loop without end.
            return Err(SyncError::Server(
                "the server's answer matched none of the pushed items".into(),
            ));
        }
        Ok(())
    }

    /// A new token after the server refused ours, or the end of the session.
    async fn refreshed_token(
        &self,
        creds: &mut Credentials,
        message: String,
    ) -> Result<String, SyncError> {
        match self.refresh(creds).await? {
            Some(t) => Ok(t),
            None => Err(self
                .logged_out(format!("the server refused the token: {message}"))
                .await),
        }
    }

    async fn push_refused(&self, refusal: Refusal, status: u16, message: String) -> SyncError {
        match refusal {
            r if r.ends_session() => self.logged_out(message).await,
            Refusal::Throttled(retry_after_secs) => SyncError::Throttled {
                retry_after_secs,
                message: format!("push refused ({status}): {message}"),
            },
            Refusal::ServerDown => {
                SyncError::Offline(format!("server answered {status}: {message}"))
            }
            _ => SyncError::Server(format!("push refused ({status}): {message}")),
        }
    }

    /// Gives back what an operator's lowered target asks for (`excess`, by
    /// client), as far as this kiosk has not spent it: copies made offline
    /// and not synced yet came out of those units. Best effort: whether the
    /// server answered every ask.
    async fn give_back(&self, creds: &Credentials, excess: Vec<LeaseEntry>) -> bool {
        let mut answered = true;
        for ask in excess {
            let client = ask.client_id;
            let units = match self.store.let_go(client, ask.units).await {
                Ok(0) => continue,
                Ok(units) => units,
                Err(e) => {
                    tracing::warn!(client = client.get(), error = %e, "cannot let go of lease units");
                    continue;
                }
            };
            let part = LeaseEntry {
                client_id: client,
                units,
            };
            match self
                .server
                .release_leases(&creds.server, &creds.token, Some(part))
                .await
            {
                Ok(_) => tracing::info!(
                    client = client.get(),
                    units,
                    "lease units above the target given back"
                ),
                Err(e) => {
                    tracing::warn!(client = client.get(), units, error = %e, "lease units not given back: the next complete pull says what the server holds");
                    answered = false;
                }
            }
        }
        answered
    }

    /// Reads the quotas back — only what changed since the last pull, from
    /// the same server, unless the last complete one is older than
    /// `full_pull_interval_secs`; a refused token is renewed once, as for a
    /// push (a pull with nothing pushed first is how an idle kiosk learns the
    /// server's key changed).
    async fn pull(
        &self,
        creds: &mut Credentials,
        cursor: &mut Option<PullCursor>,
    ) -> Result<Vec<LeaseEntry>, SyncError> {
        let now = self.clock.now_utc();
        let full_every = chrono::Duration::from_std(self.config.full_pull_interval())
            .unwrap_or(chrono::Duration::MAX);
        let since = cursor
            .as_ref()
            .filter(|c| c.server == creds.server && now - c.complete_at < full_every)
            .map(|c| (c.version, c.complete_at));
        let version = since.map(|(v, _)| v);
        let mut answer = self.server.pull(&creds.server, &creds.token, version).await;
        if let Err(UpstreamError::Refused { code, message, .. }) = &answer {
            if Refusal::of(*code) == Refusal::Token {
                let message = message.clone();
                self.refreshed_token(creds, message).await?;
                answer = self.server.pull(&creds.server, &creds.token, version).await;
            }
        }
        let pull = match answer {
            Ok(pull) => pull,
            Err(e) => return Err(self.pull_failed(e).await),
        };
        // A delta only answers a question asked: an older server ignores
        // `since_version` and answers everything.
        let delta = since.filter(|_| pull.delta == Some(true));
        let listed = pull.quotas.into_iter().map(wire::listed_quota).collect();
        let lost = self
            .store
            .apply_pull_through(listed, delta.is_none(), pull.recorded_through, now)
            .await?;
        *cursor = pull
            .version
            .filter(|_| lost == 0)
            .map(|version| PullCursor {
                server: creds.server.clone(),
                version,
                complete_at: delta.map_or(now, |(_, at)| at),
            });
        if lost > 0 {
            tracing::warn!(
                lost,
                recorded_through = ?pull.recorded_through,
                "the server's ledger does not hold operations this kiosk synced (restored from a backup, or another server): sending them again"
            );
            self.kick.notify_one();
        }
        Ok(pull.lease_excess)
    }

    /// What a pull that did not answer means for the cycle: a refused
    /// session ends it (a login is needed), a server that says when to come
    /// back is waited for, anything else is the link.
    async fn pull_failed(&self, e: UpstreamError) -> SyncError {
        match e {
            UpstreamError::Refused { code, message, .. } if Refusal::of(code).ends_session() => {
                self.logged_out(message).await
            }
            // Over a limit, or a saturated server: it says when to come back.
            UpstreamError::Refused {
                code: ErrorCode::RateLimited | ErrorCode::Unavailable,
                status,
                message,
                retry_after: Some(retry_after_secs),
            } => SyncError::Throttled {
                retry_after_secs,
                message: format!("pull refused ({status}): {message}"),
            },
            UpstreamError::Refused {
                status, message, ..
            } => SyncError::Offline(format!("pull failed ({status}): {message}")),
            UpstreamError::Unreachable(m) => SyncError::Offline(m),
            UpstreamError::Unreadable(m) => SyncError::Offline(format!("pull answer lost: {m}")),
        }
    }

    /// The sync loop: runs a cycle on every kick, on the periodic timer, and,
    /// while the server is unreachable, on a jittered backoff capped at
    /// `reconnect_max` — so a fleet resumes spread over that window after the
    /// server comes back (not all at once), and never gives up; a 429 or 503
    /// with `Retry-After` waits as long as the server asks.
    pub async fn run_sync_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.config.reconnect_max());
        loop {
            let wait = match self.sync_once().await {
                Ok(_) => {
                    backoff.reset();
                    // With the socket up, changes come as events and new
                    // work kicks a sync: the periodic pull is a safety net.
                    if self.link().ws_connected {
                        self.config.sync_interval_live()
                    } else {
                        self.config.sync_interval()
                    }
                }
                Err(SyncError::Offline(e)) => {
                    tracing::debug!(error = %e, "server unreachable");
                    backoff.next_delay(&*self.rng)
                }
                Err(SyncError::Server(e)) => {
                    tracing::warn!(error = %e, "sync failed");
                    backoff.next_delay(&*self.rng).max(Duration::from_secs(1))
                }
                Err(SyncError::Throttled {
                    retry_after_secs,
                    message,
                }) => {
                    tracing::warn!(%message, retry_after_secs, "the server asks this kiosk to wait (a limit, or a saturated server)");
                    // At most an hour: a kick (a new operation) still wakes the loop.
                    Duration::from_secs(retry_after_secs.clamp(1, 3600))
                }
                Err(SyncError::Store(e)) => {
                    tracing::error!(error = %e, "local database error during sync");
                    backoff.next_delay(&*self.rng).max(Duration::from_secs(1))
                }
                Err(SyncError::Insecure(e)) => {
                    tracing::error!(error = %e, "not syncing");
                    self.config.sync_interval()
                }
                Err(SyncError::LoggedOut(_) | SyncError::NoServer | SyncError::UnsyncedWork(_)) => {
                    self.config.sync_interval()
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

/// The claims of a JWT, read without checking them (the server checks).
fn token_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    serde_json::from_slice(&bytes).ok()
}

/// The `exp` of a JWT.
pub fn token_exp(token: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(token_claims(token)?.get("exp")?.as_i64()?, 0)
}

/// How long a JWT lives (`exp - iat`).
fn token_lifetime(token: &str) -> Option<chrono::Duration> {
    let v = token_claims(token)?;
    let secs = v.get("exp")?.as_i64()? - v.get("iat")?.as_i64()?;
    (secs > 0).then(|| chrono::Duration::seconds(secs))
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
pub(crate) mod tests;
