//! Live updates over WebSocket: the broadcast [`Hub`] and one session task
//! per connection.
//!
//! Each connection has a bounded outgoing queue. The hub never waits on a
//! connection: when a queue is full the consumer has stopped reading, and the
//! hub drops it (its session closes the socket) rather than let the server's
//! memory grow. Bursts of `quota_updated` for one client that are still
//! queued are coalesced to the latest value. Inbound messages are
//! rate-limited per connection, and a connection that sends nothing (not even
//! a pong to the server's pings) for the configured timeout is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use propass_protocol::WsMessage;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::{bearer_token, ensure_device_active};
use crate::error::ApiError;
use crate::startup::AppState;

/// A message on its way to one connection, serialized once for everyone.
#[derive(Debug, Clone)]
pub struct Outbound {
    text: Arc<str>,
    /// `Some(client)` for a `quota_updated`, which a later one for the same client supersedes.
    quota_client: Option<i64>,
}

impl Outbound {
    fn new(msg: &WsMessage) -> Self {
        let quota_client = match msg {
            WsMessage::QuotaUpdated(q) => Some(q.client_id.get()),
            _ => None,
        };
        let text = serde_json::to_string(msg).unwrap_or_default().into();
        Self { text, quota_client }
    }
}

/// What one connection's queue holds: the messages of one event (e.g. every
/// `copy_completed` of one push), so that the queue bound counts events, not
/// copies, and a big push cannot overflow it by itself.
type Group = Arc<[Outbound]>;

struct Conn {
    device_id: String,
    tx: mpsc::Sender<Group>,
}

/// Every open WebSocket connection.
pub struct Hub {
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    queue_len: usize,
}

impl Hub {
    /// A hub whose connections each queue at most `queue_len` messages.
    pub fn new(queue_len: usize) -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue_len,
        }
    }

    fn register(&self, device_id: String) -> (u64, mpsc::Receiver<Group>) {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Conn { device_id, tx });
        (id, rx)
    }

    fn unregister(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections of one device.
    pub fn device_connections(&self, device_id: &str) -> usize {
        self.lock()
            .values()
            .filter(|c| c.device_id == device_id)
            .count()
    }

    /// Sends to every connection allowed to see the message. Today every
    /// authenticated kiosk serves every client, so that is every connection.
    pub fn broadcast(&self, msg: &WsMessage) {
        self.deliver(std::slice::from_ref(msg), |_| true);
    }

    /// Sends several messages as one event (one slot of each queue).
    pub fn broadcast_all(&self, msgs: &[WsMessage]) {
        if !msgs.is_empty() {
            self.deliver(msgs, |_| true);
        }
    }

    /// Sends to the connections of one device.
    pub fn send_to_device(&self, device_id: &str, msg: &WsMessage) {
        self.deliver(std::slice::from_ref(msg), |c| c.device_id == device_id);
    }

    fn deliver(&self, msgs: &[WsMessage], wanted: impl Fn(&Conn) -> bool) {
        let out: Group = msgs.iter().map(Outbound::new).collect();
        let mut conns = self.lock();
        conns.retain(|id, conn| {
            if !wanted(conn) {
                return true;
            }
            match conn.tx.try_send(out.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(conn = id, device = %conn.device_id, "websocket consumer too slow; dropping it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// Query parameters of the upgrade, as the seed client sends them.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    device_id: Option<String>,
}

/// `GET /ws` (and `GET /`): authenticates, then upgrades.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !state.config.ws_allowed_origins.iter().any(|o| o == origin) {
            return Err(ApiError::Forbidden(format!(
                "origin {origin:?} is not allowed to open the WebSocket"
            )));
        }
    }
    let query = web::Query::<WsQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::InvalidRequest("invalid query string".into()))?
        .into_inner();
    let token = query
        .token
        .filter(|t| !t.is_empty())
        .or_else(|| bearer_token(&req))
        .ok_or(ApiError::MissingToken)?;
    let claims = state.jwt.verify(&token)?;
    if let Some(requested) = query.device_id.as_deref() {
        if requested != claims.device_id {
            return Err(ApiError::DeviceMismatch {
                token_device: claims.device_id,
                requested: requested.to_owned(),
            });
        }
    }
    ensure_device_active(&state, &claims.device_id).await?;
    if state.hub.device_connections(&claims.device_id) >= MAX_CONNECTIONS_PER_DEVICE {
        return Err(ApiError::TooManyConnections(claims.device_id.clone()));
    }

    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::InvalidRequest(format!("expected a WebSocket upgrade: {e}")))?;
    let stream = stream
        .max_frame_size(64 * 1024)
        .aggregate_continuations()
        .max_continuation_size(64 * 1024);
    let (id, rx) = state.hub.register(claims.device_id.clone());
    tracing::info!(conn = id, device = %claims.device_id, "websocket connected");
    let state = state.into_inner();
    actix_web::rt::spawn(async move {
        let reason = run_session(&state, &claims, session, stream, rx).await;
        state.hub.unregister(id);
        tracing::info!(conn = id, device = %claims.device_id, reason, "websocket closed");
    });
    Ok(response)
}

/// A token bucket: `rate` per second, bursts of `2 * rate`.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec);
        Self {
            rate,
            tokens: rate * 2.0,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How many queued messages are looked at together for coalescing.
const COALESCE_WINDOW: usize = 64;

/// WebSockets one device may hold open at once.
pub const MAX_CONNECTIONS_PER_DEVICE: usize = 8;

async fn run_session(
    state: &AppState,
    claims: &crate::auth::Claims,
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut rx: mpsc::Receiver<Group>,
) -> &'static str {
    let cfg = &state.config;
    let mut heartbeat = tokio::time::interval(cfg.ws_heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut limit = RateLimit::new(cfg.ws_inbound_per_sec);
    let close = |code: CloseCode, why: &str| {
        Some(CloseReason {
            code,
            description: Some(why.to_owned()),
        })
    };

    let reason = loop {
        tokio::select! {
            msg = stream.recv() => {
                let Some(Ok(msg)) = msg else { break ("stream ended", None) };
                last_heard = Instant::now();
                match msg {
                    AggregatedMessage::Text(text) => {
                        if !limit.allow() {
                            break ("rate limited", close(CloseCode::Policy, "rate limit exceeded"));
                        }
                        match serde_json::from_str::<WsMessage>(&text) {
                            Ok(WsMessage::Ping) => {
                                let pong = serde_json::to_string(&WsMessage::Pong).unwrap_or_default();
                                if !send(&mut session, pong, cfg.ws_client_timeout).await { break ("send failed", None) }
                            }
                            Ok(other) => tracing::debug!(?other, "ignoring client message"),
                            Err(e) => tracing::debug!(error = %e, "ignoring unparsable client message"),
                        }
                    }
                    AggregatedMessage::Binary(_) => {
                        if !limit.allow() {
                            break ("rate limited", close(CloseCode::Policy, "rate limit exceeded"));
                        }
                    }
                    AggregatedMessage::Ping(bytes) => {
                        if !limit.allow() {
                            break ("rate limited", close(CloseCode::Policy, "rate limit exceeded"));
                        }
                        if session.pong(&bytes).await.is_err() { break ("send failed", None) }
                    }
                    AggregatedMessage::Pong(_) => {}
                    AggregatedMessage::Close(_) => break ("client closed", None),
                }
            }
            out = rx.recv() => {
                let Some(first) = out else {
                    break ("too slow", close(CloseCode::Policy, "consumer too slow: outgoing queue full"));
                };
                let mut batch: Vec<Outbound> = first.iter().cloned().collect();
                while batch.len() < COALESCE_WINDOW {
                    match rx.try_recv() { Ok(g) => batch.extend(g.iter().cloned()), Err(_) => break }
                }
                let mut latest: HashMap<i64, usize> = HashMap::new();
                for (i, m) in batch.iter().enumerate() {
                    if let Some(c) = m.quota_client { latest.insert(c, i); }
                }
                let mut failed = false;
                for (i, m) in batch.into_iter().enumerate() {
                    if m.quota_client.is_some_and(|c| latest.get(&c) != Some(&i)) { continue }
                    if !send(&mut session, m.text.to_string(), cfg.ws_client_timeout).await { failed = true; break }
                }
                if failed { break ("send failed", None) }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > cfg.ws_client_timeout {
                    break ("heartbeat timeout", close(CloseCode::Away, "heartbeat timeout"));
                }
                if claims.exp < chrono::Utc::now().timestamp() {
                    break ("token expired", close(CloseCode::Policy, "token expired: refresh it and reconnect"));
                }
                if matches!(ensure_device_active(state, &claims.device_id).await, Err(ApiError::DeviceRevoked(_))) {
                    break ("device revoked", close(CloseCode::Policy, "device revoked"));
                }
                if session.ping(b"").await.is_err() { break ("send failed", None) }
            }
        }
    };
    let (why, close_reason) = reason;
    // A bounded wait: a peer that stopped reading must not hold the session.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        session.close(close_reason),
    )
    .await;
    why
}

/// Sends one text frame, giving up after `limit`: a peer that stopped
/// reading fills actix-ws's bounded buffer and must not block the session.
async fn send(session: &mut actix_ws::Session, text: String, limit: std::time::Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, session.text(text)).await,
        Ok(Ok(()))
    )
}
