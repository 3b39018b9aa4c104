//! `GET /api/admin/events`: a dashboard's live stream, as server-sent events.
//! Every 15 s the stream re-checks its session (which also keeps an open
//! dashboard from idling out) and sends a comment line, so that proxies keep
//! the connection and a dead session ends the stream with `session_ended`.

use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use futures_util::stream;

use super::access::OperatorSession;
use crate::db;
use crate::error::ApiError;
use crate::live::{self, Subscription};
use crate::state::AppState;

/// How often an open stream re-checks its session and sends a keep-alive.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Unsubscribes when the response stream is dropped (the page went away).
struct Open {
    state: web::Data<AppState>,
    sub: Subscription,
    id_hash: String,
    ticker: tokio::time::Interval,
    /// Set once `session_ended` was sent: the stream ends after it.
    ended: bool,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.state.live.unsubscribe(self.sub.id);
    }
}

/// Whether the session is still alive (and marks it used).
async fn alive(state: &AppState, id_hash: &str) -> Result<bool, ApiError> {
    let idle = super::access::idle_limit(state);
    let mut conn = state.pool.get().await?;
    Ok(
        db::sessions::touch(&mut conn, id_hash, state.clock.now(), idle)
            .await?
            .is_some(),
    )
}

/// The next frame of an open stream; `None` ends it.
async fn next(mut open: Open) -> Option<(Result<Bytes, ApiError>, Open)> {
    if open.ended {
        return None;
    }
    loop {
        tokio::select! {
            frame = open.sub.rx.recv() => {
                let frame = frame?;
                open.ended = frame.starts_with("event: session_ended");
                return Some((Ok(Bytes::copy_from_slice(frame.as_bytes())), open));
            }
            _ = open.ticker.tick() => {
                match alive(&open.state, &open.id_hash).await {
                    Ok(true) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), open)),
                    Ok(false) => {
                        open.ended = true;
                        let last = live::frame("session_ended", &serde_json::json!({"message": "your session has ended: log in again"}));
                        return Some((Ok(Bytes::copy_from_slice(last.as_bytes())), open));
                    }
                    // The database is away: keep the stream, check again later.
                    Err(e) => tracing::debug!(error = %e, "cannot re-check a dashboard's session"),
                }
            }
        }
    }
}

/// `GET /api/admin/events`.
pub async fn stream(
    session: OperatorSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sub = state
        .live
        .subscribe(session.user_id, &session.id_hash)
        .ok_or(ApiError::Busy {
            why: "too many dashboards are open on this server (admin_streams_max)".into(),
            retry_after_secs: 5,
        })?;
    let mut ticker = tokio::time::interval(KEEPALIVE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    let open = Open {
        state: state.clone(),
        sub,
        id_hash: session.id_hash,
        ticker,
        ended: false,
    };
    let hello = live::frame("hello", &serde_json::json!({}));
    let first =
        stream::once(async move { Ok::<_, ApiError>(Bytes::copy_from_slice(hello.as_bytes())) });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        // nginx buffers responses unless told not to.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures_util::StreamExt::chain(
            first,
            stream::unfold(open, next),
        )))
}
