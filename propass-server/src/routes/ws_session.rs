//! One WebSocket session: the upgrade (authentication, origin, per-device
//! cap) and the actix-ws loop — one `select!` over incoming frames, the
//! connection's hub queue, and a heartbeat tick. Inbound messages are
//! rate-limited per connection, and a connection that sends nothing (not even
//! a pong to the server's pings) for the configured timeout is closed.

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use propass_protocol::{WsMessage, ACCEPT_SYNC_REQUESTED};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::{bearer_token, ensure_standing_on_active_device, Claims, Purpose};
use crate::db;
use crate::device::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::ws::hub::{coalesce, Delivery, Outbound};

/// How many queued events are looked at together for coalescing.
const COALESCE_WINDOW: usize = 64;

/// How long a closing handshake may take: a peer that stopped reading must not hold the session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Query parameters of the upgrade: the seed client's, and `accept` (the
/// server messages beyond the seed's that the client understands,
/// comma-separated; our agent sends `sync_requested`).
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    device_id: Option<String>,
    accept: Option<String>,
}

/// `GET /`: the seed client's WebSocket (its default `wsUrl` is the server's
/// bare address); a plain request — a person's browser — is sent to the
/// dashboard.
pub async fn root(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if req.headers().contains_key(header::UPGRADE) {
        return upgrade(req, body, state).await;
    }
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin"))
        .finish())
}

/// `GET /ws`, and `GET /` because the seed client's default `wsUrl` is the
/// server's bare address (`ws://localhost:5000`): authenticates, then upgrades.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state.config.ws_allowed_origins)?;
    // Before authenticating: in a reconnect storm, a socket this server
    // cannot hold costs no database query.
    if state.hub.connections() >= state.config.ws_max_connections {
        return Err(ApiError::Busy {
            why: "this server holds the most WebSockets it allows (ws_max_connections); HTTP sync still works".into(),
            retry_after_secs: 30,
        });
    }
    let (claims, clients, accepts_sync) = authenticate(&req, &state).await?;
    if state.hub.device_connections(&claims.device_id) >= state.config.ws_max_per_device {
        return Err(ApiError::TooManyConnections(claims.device_id.clone()));
    }

    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::InvalidRequest(format!("expected a WebSocket upgrade: {e}")))?;
    let stream = stream
        .max_frame_size(state.config.ws_max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(state.config.ws_max_frame_bytes);
    let user = claims.user().map(|(uid, _, _)| uid);
    let device_epoch = match claims.caller() {
        Caller::Device { epoch } => Some(epoch),
        Caller::Login => None,
    };
    let (id, rx) = state
        .hub
        .register(claims.device_id.clone(), user, device_epoch, clients);
    if accepts_sync {
        state.hub.accept_sync_requests(id);
    }
    tracing::info!(conn = id, device = %claims.device_id, "websocket connected");
    let state = state.into_inner();
    mark_socket(&state, &claims.device_id, true).await;
    actix_web::rt::spawn(async move {
        let reason = run_session(&state, &claims, session, stream, rx).await;
        state.hub.unregister(id);
        if !state.hub.is_connected(&claims.device_id) {
            Box::pin(mark_socket(&state, &claims.device_id, false)).await;
        }
        tracing::info!(conn = id, device = %claims.device_id, reason, "websocket closed");
    });
    Ok(response)
}

/// Browsers send an `Origin`; kiosk agents and Electron's main process do not
/// and are always allowed.
fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed.iter().any(|o| o == origin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "origin {origin:?} is not allowed to open the WebSocket"
        )))
    }
}

/// The token comes in the query (the seed client) or the `Authorization`
/// header (our agent). Answers the claims, the clients the device serves and
/// whether the client accepts `sync_requested`.
async fn authenticate(
    req: &HttpRequest,
    state: &AppState,
) -> Result<(Claims, Vec<i64>, bool), ApiError> {
    let query = web::Query::<WsQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::InvalidRequest("invalid query string".into()))?
        .into_inner();
    let token = query
        .token
        .filter(|t| !t.is_empty())
        .or_else(|| bearer_token(req))
        .ok_or(ApiError::MissingToken)?;
    let claims = state.jwt.verify(&token, state.clock.now())?;
    if let Some(requested) = query.device_id.as_deref() {
        claims.ensure_device(requested)?;
    }
    ensure_standing_on_active_device(&state.pool, &claims, Purpose::KioskCall).await?;
    let clients =
        db::devices::served_clients(&mut *state.pool.get().await?, &claims.device_id).await?;
    let accepts_sync = query
        .accept
        .as_deref()
        .is_some_and(|a| a.split(',').any(|t| t.trim() == ACCEPT_SYNC_REQUESTED));
    Ok((claims, clients, accepts_sync))
}

/// A token bucket: `rate` per second, bursts of `2 * rate`.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32, now: Instant) -> Self {
        let rate = f64::from(per_sec);
        Self {
            rate,
            tokens: rate * 2.0,
            last: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
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

/// Why a session ended: a word for the log, and the close frame to send.
type Ending = (&'static str, Option<CloseReason>);

fn close(why: &'static str, code: CloseCode, description: &str) -> Ending {
    let reason = CloseReason {
        code,
        description: Some(description.to_owned()),
    };
    (why, Some(reason))
}

/// How a notice from the hub ends the session: a policy close for a device
/// or user that lost its standing, "going away" when the server stops.
fn ending(notice: &Delivery) -> Ending {
    match notice {
        Delivery::Close(why) => close(why, CloseCode::Policy, why),
        Delivery::GoingAway => close("server stopping", CloseCode::Away, "server restarting"),
        Delivery::Event(_) => ("unexpected event", None),
    }
}

/// Records that a kiosk's socket opened or its last one closed, and tells
/// dashboards; a database that cannot take it costs operators a stale view only.
async fn mark_socket(state: &AppState, device: &propass_protocol::DeviceId, connected: bool) {
    let stored = match state.pool.get().await {
        Ok(mut conn) => db::fleet::socket(&mut conn, device, connected, state.clock.now())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = stored {
        tracing::warn!(%device, error = %e, "socket state not stored");
    }
    crate::changes::publish_device(state, device);
    state.announcements.device_changed(device);
}

/// The session loop. A state machine in one `select!`: each arm either
/// continues or ends the session with a reason.
async fn run_session(
    state: &AppState,
    claims: &Claims,
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut rx: mpsc::Receiver<Delivery>,
) -> &'static str {
    let cfg = &state.config;
    let mut heartbeat = tokio::time::interval(cfg.ws_heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = state.clock.instant();
    let mut limit = RateLimit::new(cfg.ws_inbound_per_sec, last_heard);
    let mut standing = Standing {
        checked_at: last_heard,
        generation: state.hub.recheck_generation(),
    };

    // The handlers are boxed: their database futures are large, and inline
    // they would make every idle session's task that large (kilobytes per
    // socket, times 10,000 sockets).
    let (why, close_reason) = loop {
        let step = tokio::select! {
            msg = stream.recv() => {
                let Some(Ok(msg)) = msg else { break ("stream ended", None) };
                last_heard = state.clock.instant();
                Box::pin(on_inbound(state, claims, &mut session, msg, &mut limit, last_heard)).await
            }
            out = rx.recv() => match out {
                Some(Delivery::Event(first)) => Box::pin(on_outbound(&mut session, first, &mut rx, cfg.ws_client_timeout)).await,
                Some(notice @ (Delivery::Close(_) | Delivery::GoingAway)) => Err(ending(&notice)),
                // The hub dropped us: our queue was full.
                None => Err(close("too slow", CloseCode::Policy, "consumer too slow: outgoing queue full")),
            },
            _ = heartbeat.tick() => Box::pin(on_heartbeat(state, claims, &mut session, last_heard, &mut standing)).await,
        };
        if let Err(ending) = step {
            break ending;
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(close_reason)).await;
    why
}

async fn on_inbound(
    state: &AppState,
    claims: &Claims,
    session: &mut actix_ws::Session,
    msg: AggregatedMessage,
    limit: &mut RateLimit,
    now: Instant,
) -> Result<(), Ending> {
    let send_timeout = state.config.ws_client_timeout;
    if matches!(msg, AggregatedMessage::Close(_)) {
        return Err(("client closed", None));
    }
    if matches!(msg, AggregatedMessage::Pong(_)) {
        return Ok(());
    }
    // Pings count too: a client flooding pings costs us a pong each.
    if !limit.allow(now) {
        return Err(close(
            "rate limited",
            CloseCode::Policy,
            "rate limit exceeded",
        ));
    }
    let sent = match msg {
        AggregatedMessage::Text(text) => match serde_json::from_str::<WsMessage>(&text) {
            Ok(WsMessage::Ping) => {
                let pong = serde_json::to_string(&WsMessage::Pong).unwrap_or_default();
                send(session, pong, send_timeout).await
            }
            Ok(WsMessage::Heartbeat(hb)) => {
                // Stored with the other kiosks' (crate::heartbeats).
                state.heartbeats.offer(crate::heartbeats::Received {
                    device: claims.device_id.clone(),
                    heartbeat: hb,
                    at: state.clock.now(),
                });
                true
            }
            Ok(other) => {
                tracing::debug!(?other, "ignoring client message");
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "ignoring unparsable client message");
                true
            }
        },
        AggregatedMessage::Ping(bytes) => session.pong(&bytes).await.is_ok(),
        _ => true,
    };
    if sent {
        Ok(())
    } else {
        Err(("send failed", None))
    }
}

async fn on_outbound(
    session: &mut actix_ws::Session,
    first: crate::ws::hub::Group,
    rx: &mut mpsc::Receiver<Delivery>,
    send_timeout: Duration,
) -> Result<(), Ending> {
    let mut batch: Vec<Outbound> = first.iter().cloned().collect();
    let mut closing = None;
    while batch.len() < COALESCE_WINDOW && closing.is_none() {
        match rx.try_recv() {
            Ok(Delivery::Event(g)) => batch.extend(g.iter().cloned()),
            Ok(notice) => closing = Some(ending(&notice)),
            Err(_) => break,
        }
    }
    for m in coalesce(batch) {
        if !send(session, m.text.to_string(), send_timeout).await {
            return Err(("send failed", None));
        }
    }
    match closing {
        Some(ending) => Err(ending),
        None => Ok(()),
    }
}

/// When a session last re-checked its standing in PostgreSQL, and the
/// hub's recheck request it answered.
struct Standing {
    checked_at: Instant,
    generation: u64,
}

async fn on_heartbeat(
    state: &AppState,
    claims: &Claims,
    session: &mut actix_ws::Session,
    last_heard: Instant,
    standing: &mut Standing,
) -> Result<(), Ending> {
    if state.clock.instant().duration_since(last_heard) > state.config.ws_client_timeout {
        return Err(close(
            "heartbeat timeout",
            CloseCode::Away,
            "heartbeat timeout",
        ));
    }
    if claims.expired_at(state.clock.now()) {
        return Err(close(
            "token expired",
            CloseCode::Policy,
            "token expired: refresh it and reconnect",
        ));
    }
    // Revocations arrive by event; the database is asked only every
    // `ws_recheck` (or when the hub asks, after lost events), not per ping.
    let now = state.clock.instant();
    let generation = state.hub.recheck_generation();
    let lost_events = generation != standing.generation;
    standing.generation = generation;
    if lost_events {
        // What only a pull tells (a client's terms, this kiosk's lease) may
        // have changed unheard: asked at each socket's own next ping, a
        // fleet's pulls spread over a heartbeat instead of coming at once.
        state.hub.request_sync(&claims.device_id);
    }
    // The rest of a request after lost events concerns login tokens' users
    // only: the listener re-read every connected device itself.
    let asked = lost_events && claims.user().is_some();
    if now.duration_since(standing.checked_at) < state.config.ws_recheck && !asked {
        return ping(session).await;
    }
    standing.checked_at = now;
    check_standing(state, claims).await?;
    ping(session).await
}

/// Re-reads whether the session's token and device still stand, and ends
/// the session when they do not. A database that does not answer keeps the
/// socket: the check runs again next time.
async fn check_standing(state: &AppState, claims: &Claims) -> Result<(), Ending> {
    state
        .metrics
        .ws_standing_checks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match ensure_standing_on_active_device(&state.pool, claims, Purpose::KioskCall).await {
        Err(ApiError::DeviceRevoked(_)) => {
            Err(close("device revoked", CloseCode::Policy, "device revoked"))
        }
        Err(ApiError::DevicePending(_)) => Err(close(
            "device not active",
            CloseCode::Policy,
            "device not active",
        )),
        Err(
            e @ (ApiError::InvalidToken(_) | ApiError::Forbidden(_) | ApiError::DeviceEnrolled(_)),
        ) => {
            tracing::info!(device = %claims.device_id, error = %e, "closing a websocket whose token no longer stands");
            Err(close(
                "token revoked",
                CloseCode::Policy,
                "token revoked: log in again",
            ))
        }
        _ => Ok(()),
    }
}

async fn ping(session: &mut actix_ws::Session) -> Result<(), Ending> {
    if session.ping(b"").await.is_err() {
        return Err(("send failed", None));
    }
    Ok(())
}

/// Sends one text frame, giving up after `limit`: a peer that stopped
/// reading fills actix-ws's bounded buffer and must not block the session.
async fn send(session: &mut actix_ws::Session, text: String, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, session.text(text)).await,
        Ok(Ok(()))
    )
}
