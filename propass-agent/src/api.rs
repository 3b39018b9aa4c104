//! The local API for the kiosk UI, on a Unix socket (and optionally a
//! loopback TCP port). JSON in and out; errors are
//! `{"success": false, "error": {"code", "message"}}` with a
//! [`LocalErrorCode`]. See `docs/agent-api.md`.
//!
//! [`types`] holds the bodies (shared with the CLI and the tests), [`error`]
//! the codes and their HTTP statuses.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::agent::{Agent, LinkState};
use crate::store::{ItemStatus, NewRecording, QueueCounts};

pub mod error;
pub mod types;

pub use error::{ApiError, ErrorBody, ErrorDetail, LocalErrorCode};
pub use types::*;

type ApiResult<T> = Result<T, ApiError>;
type AgentData = web::Data<Arc<Agent>>;

pub async fn status_view(agent: &Agent) -> ApiResult<StatusView> {
    let LinkState {
        online,
        ws_connected,
        login_required,
        last_error,
    } = agent.link();
    let QueueCounts {
        pending,
        synced,
        failed,
        oldest_pending_at,
    } = agent.store.counts().await?;
    let session = agent.store.session().await?;
    let now = agent.clock.now_utc();
    Ok(StatusView {
        device_id: agent.device_id.to_string(),
        server_url: agent.server_url().await?,
        online,
        ws_connected,
        logged_in: session.is_some() && login_required.is_none(),
        login_required: match session {
            None => Some("never logged in".into()),
            Some(_) => login_required,
        },
        username: session.as_ref().and_then(|s| s.username.clone()),
        token_expires_at: session.and_then(|s| s.token_expires_at),
        queue: QueueCountsView {
            pending,
            synced,
            failed,
        },
        oldest_pending_age_secs: oldest_pending_at.map(|t| (now - t).num_seconds().max(0)),
        last_sync_at: agent.store.last_sync_at().await?,
        last_error,
        storage_error: agent.storage.error(),
        quotas: quota_views(agent).await?,
    })
}

async fn quota_views(agent: &Agent) -> ApiResult<Vec<QuotaView>> {
    let quotas = agent.store.quotas().await?;
    Ok(quotas.into_iter().map(QuotaView::from).collect())
}

async fn status(agent: AgentData) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(status_view(&agent).await?))
}

/// Whether this kiosk can record a card now: it tries a write (as the
/// systemd watchdog does), so a full or read-only disk answers 503.
async fn health(agent: AgentData) -> ApiResult<HttpResponse> {
    crate::kiosk::check_storage(&agent).await.map_err(|e| {
        ApiError::new(
            LocalErrorCode::RecordingUnavailable,
            format!("this kiosk cannot save its records ({e}): it makes no card until its disk takes writes; call an operator"),
        )
    })?;
    Ok(HttpResponse::Ok().json(HealthView {
        ok: true,
        reader: agent.reader_stats.health(),
        pending: agent.store.counts().await?.pending,
    }))
}

async fn quotas(agent: AgentData) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(quota_views(&agent).await?))
}

async fn queue(agent: AgentData, req: HttpRequest) -> ApiResult<HttpResponse> {
    let invalid = |e: String| ApiError::new(LocalErrorCode::InvalidRequest, e);
    let q = web::Query::<QueueQuery>::from_query(req.query_string())
        .map_err(|e| invalid(e.to_string()))?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<ItemStatus>)
        .transpose()
        .map_err(invalid)?;
    let limit = q.limit.unwrap_or(1000).min(100_000);
    Ok(HttpResponse::Ok().json(agent.store.list(status, limit).await?))
}

async fn retry(agent: AgentData) -> ApiResult<HttpResponse> {
    let retried = agent.store.retry_failed().await?;
    agent.kick.notify_one();
    Ok(HttpResponse::Ok().json(RetryResponse { retried }))
}

async fn record(agent: AgentData, body: web::Json<RecordRequest>) -> ApiResult<HttpResponse> {
    let RecordRequest {
        op_type,
        client_id,
        uid,
        occurred_at,
        op_id,
    } = body.into_inner();
    let now = agent.clock.now_utc();
    let new = NewRecording {
        sectors: None,
        op_type,
        client: client_id,
        uid,
        occurred_at: occurred_at.unwrap_or(now),
        recorded_at: now,
        op_id: op_id.unwrap_or_else(|| agent.rng.new_op_id()),
        unverified: false,
    };
    let recorded = crate::kiosk::record_reported(&agent, new)
        .await
        .inspect_err(|e| agent.note_storage(Err(e)))?;
    let answer = RecordResponse {
        success: true,
        operation: recorded.operation,
        remaining: recorded.remaining,
        duplicate: recorded.duplicate,
    };
    if answer.duplicate {
        // A retry of an operation already recorded: the same answer, nothing more.
        return Ok(HttpResponse::Ok().json(answer));
    }
    let op = &answer.operation;
    tracing::info!(id = op.id, op_id = %op.op_id, client = %client_id, "recorded");
    agent.emit(crate::events::AgentEvent::Recorded(op.clone()));
    agent.emit(crate::events::AgentEvent::QuotaUpdated {
        client_id,
        remaining: answer.remaining,
    });
    agent.kick.notify_one();
    Ok(HttpResponse::Created().json(answer))
}

async fn sync_now(agent: AgentData) -> ApiResult<HttpResponse> {
    let summary = agent.sync_once().await?;
    Ok(HttpResponse::Ok().json(SyncResponse {
        success: true,
        synced: summary.synced,
        failed: summary.failed,
        pending: summary.pending,
    }))
}

fn check_url_scheme(server_url: Option<&str>) -> ApiResult<()> {
    match server_url.map(crate::upstream::parse_server_url) {
        Some(Err(why)) => Err(ApiError::new(LocalErrorCode::InvalidRequest, why)),
        _ => Ok(()),
    }
}

async fn enroll(agent: AgentData, body: web::Json<EnrollRequest>) -> ApiResult<HttpResponse> {
    let EnrollRequest { server_url, code } = body.into_inner();
    check_url_scheme(server_url.as_deref())?;
    let res = agent.enroll(server_url, &code).await?;
    Ok(HttpResponse::Ok().json(EnrollResponse {
        success: true,
        device_id: res.device_id,
        name: res.name,
        credential_expires_at: res.credential_expires_at,
    }))
}

async fn login(agent: AgentData, body: web::Json<LoginRequest>) -> ApiResult<HttpResponse> {
    let LoginRequest {
        server_url,
        username,
        password,
    } = body.into_inner();
    check_url_scheme(server_url.as_deref())?;
    let res = agent.login(server_url, &username, &password).await?;
    Ok(HttpResponse::Ok().json(LoginResponse {
        success: true,
        username: res.user.username,
        role: res.user.role,
        expires_at: res.expires_at,
        device_id: agent.device_id.clone(),
    }))
}

async fn events(agent: AgentData) -> HttpResponse {
    use tokio::sync::broadcast::error::RecvError;
    let rx = agent.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = match rx.recv().await {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                line
            }
            Err(RecvError::Lagged(n)) => {
                format!("{{\"type\":\"lagged\",\"data\":{{\"missed\":{n}}}}}\n").into_bytes()
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, actix_web::Error>(web::Bytes::from(line)), rx))
    });
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(stream.boxed_local())
}

async fn nfc_readers() -> ApiResult<HttpResponse> {
    let readers = tokio::task::spawn_blocking(propass_nfc::list_readers)
        .await
        .map_err(|e| ApiError::new(LocalErrorCode::Internal, e.to_string()))??;
    Ok(HttpResponse::Ok().json(ReadersResponse { readers }))
}

async fn nfc_read(agent: AgentData) -> ApiResult<HttpResponse> {
    let timeout = agent.config.card_timeout();
    agent.reader.begin();
    let tag = agent
        .reader
        .run(move |r, cancel| {
            let t = r.wait_for_tag(timeout, cancel);
            r.release();
            t
        })
        .await;
    agent.reader_stats.saw(&tag);
    Ok(HttpResponse::Ok().json(TagView::from(&tag?)))
}

async fn nfc_cancel(agent: AgentData) -> HttpResponse {
    agent.reader.cancel();
    HttpResponse::Ok().json(CancelResponse { success: true })
}

fn made(card: crate::kiosk::MadeCard) -> HttpResponse {
    HttpResponse::Created().json(MadeResponse {
        success: true,
        operation: card.operation,
        remaining: card.remaining,
        blank: card.blank,
    })
}

/// A flow runs in its own task: a client that goes away (or a server
/// stopping) does not cut it short between the write and its record.
async fn in_own_task<F>(flow: F) -> ApiResult<HttpResponse>
where
    F: std::future::Future<Output = Result<crate::kiosk::MadeCard, crate::kiosk::KioskError>>
        + Send
        + 'static,
{
    let card = tokio::spawn(flow).await.map_err(|e| {
        ApiError::new(
            LocalErrorCode::Internal,
            format!("the copy task failed: {e}"),
        )
    })??;
    Ok(made(card))
}

async fn copy_card(agent: AgentData, body: web::Json<CopyRequest>) -> ApiResult<HttpResponse> {
    let agent = Arc::clone(&agent);
    let client = body.client_id;
    in_own_task(async move { crate::kiosk::copy(&agent, client).await }).await
}

async fn write_card(
    agent: AgentData,
    body: web::Json<WriteCardRequest>,
) -> ApiResult<HttpResponse> {
    let WriteCardRequest { client_id, uid } = body.into_inner();
    let agent = Arc::clone(&agent);
    in_own_task(async move { crate::kiosk::write(&agent, client_id, uid).await }).await
}

async fn not_found() -> ApiResult<HttpResponse> {
    Err(ApiError::new(LocalErrorCode::NotFound, "no such endpoint"))
}

/// Routes, for `App::configure`, with bodies of at most `max_body` bytes.
pub fn routes(max_body: usize) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| configure(cfg, max_body)
}

fn configure(cfg: &mut web::ServiceConfig, max_body: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body)
            .error_handler(error::json_error),
    )
    .app_data(web::PayloadConfig::default().limit(max_body))
    .route("/v1/status", web::get().to(status))
    .route("/v1/health", web::get().to(health))
    .route("/v1/quotas", web::get().to(quotas))
    .route("/v1/queue", web::get().to(queue))
    .route("/v1/queue/retry", web::post().to(retry))
    .route("/v1/operations", web::post().to(record))
    .route("/v1/sync", web::post().to(sync_now))
    .route("/v1/login", web::post().to(login))
    .route("/v1/enroll", web::post().to(enroll))
    .route("/v1/events", web::get().to(events))
    .route("/v1/nfc/readers", web::get().to(nfc_readers))
    .route("/v1/nfc/read", web::post().to(nfc_read))
    .route("/v1/nfc/cancel", web::post().to(nfc_cancel))
    .route("/v1/copy", web::post().to(copy_card))
    .route("/v1/write-card", web::post().to(write_card))
    .default_service(web::to(not_found));
}
