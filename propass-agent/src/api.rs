//! The local API for the kiosk UI, on a Unix socket (and optionally a
//! loopback TCP port). JSON in and out; errors are
//! `{"success": false, "error": {"code", "message"}}`. See `docs/agent-api.md`.

use std::sync::Arc;

use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use propass_protocol::{BadgeUid, ClientId, OpType};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agent::{Agent, LinkState};
use crate::events::AgentEvent;
use crate::store::{
    ItemStatus, LocalQuota, NewRecording, QueueCounts, QueuedOp, QuotaPolicy, StoreError,
};
use crate::sync::SyncError;

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Local API errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// Bad value.
    #[error("{0}")]
    InvalidRequest(String),
    /// Body too big.
    #[error("request body larger than {MAX_BODY} bytes")]
    PayloadTooLarge,
    /// Not JSON.
    #[error("send JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The client has no quota cached here.
    #[error("{0}")]
    UnknownClient(String),
    /// No copies left.
    #[error("{0}")]
    QuotaExhausted(String),
    /// The request contradicts what is recorded (op_id reuse, unsynced work on a server change).
    #[error("{0}")]
    Conflict(String),
    /// The server is unreachable.
    #[error("{0}")]
    ServerUnreachable(String),
    /// The server refused (login, …).
    #[error("{0}")]
    ServerRefused(String),
    /// A login is needed first.
    #[error("{0}")]
    LoginRequired(String),
    /// The reader or a card said no (the code says which).
    #[error("{1}")]
    Card(&'static str, String),
    /// Local failure.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidRequest(_) => "invalid_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound => "not_found",
            Self::UnknownClient(_) => "unknown_client",
            Self::QuotaExhausted(_) => "quota_exhausted",
            Self::Conflict(_) => "conflict",
            Self::ServerUnreachable(_) => "server_unreachable",
            Self::ServerRefused(_) => "server_refused",
            Self::LoginRequired(_) => "login_required",
            Self::Card(code, _) => code,
            Self::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::UnknownClient(_)
            | Self::QuotaExhausted(_)
            | Self::LoginRequired(_)
            | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::ServerUnreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::ServerRefused(_) => StatusCode::BAD_GATEWAY,
            Self::Card("no_reader" | "reader_unplugged", _) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Card("no_tag", _) => StatusCode::REQUEST_TIMEOUT,
            Self::Card(..) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(e) = self {
            tracing::error!(error = %e, "local API internal error");
        }
        HttpResponse::build(self.status_code()).json(
            json!({"success": false, "error": {"code": self.code(), "message": self.to_string()}}),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownClient(_) => Self::UnknownClient(e.to_string()),
            StoreError::QuotaExhausted { .. } => Self::QuotaExhausted(e.to_string()),
            StoreError::OpIdConflict(_) => Self::Conflict(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<SyncError> for ApiError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Offline(_) => Self::ServerUnreachable(e.to_string()),
            SyncError::Server(_) => Self::ServerRefused(e.to_string()),
            SyncError::LoggedOut(_) | SyncError::NoServer => Self::LoginRequired(e.to_string()),
            SyncError::UnsyncedWork(_) => Self::Conflict(e.to_string()),
            SyncError::Store(s) => s.into(),
        }
    }
}

impl From<propass_nfc::NfcError> for ApiError {
    fn from(e: propass_nfc::NfcError) -> Self {
        use propass_nfc::NfcError as N;
        let code = match &e {
            N::NoReader(_) => "no_reader",
            N::ReaderUnplugged(_) => "reader_unplugged",
            N::NoTag => "no_tag",
            N::TwoTags => "two_tags",
            N::NotWritable(_) => "card_not_writable",
            N::AuthFailed => "auth_failed",
            N::TagRemoved => "tag_removed",
            N::VerifyFailed { .. } => "verify_failed",
            N::InvalidBlock0(_) => "unsupported_badge",
            N::Cancelled => "cancelled",
        };
        Self::Card(code, e.to_string())
    }
}

impl From<crate::kiosk::KioskError> for ApiError {
    fn from(e: crate::kiosk::KioskError) -> Self {
        match e {
            crate::kiosk::KioskError::Nfc(n) => n.into(),
            crate::kiosk::KioskError::Store(s) => s.into(),
            crate::kiosk::KioskError::Unsupported(m) => Self::Card("unsupported_badge", m),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Body parsing errors as API errors.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(e) => {
            ApiError::MalformedJson(format!("invalid JSON body: {e}"))
        }
        other => ApiError::MalformedJson(other.to_string()),
    }
    .into()
}

/// `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// This kiosk.
    pub device_id: String,
    /// The server in use.
    pub server_url: Option<String>,
    /// Last request to the server got an answer.
    pub online: bool,
    /// WebSocket open.
    pub ws_connected: bool,
    /// Holds a token the server has not refused.
    pub logged_in: bool,
    /// Why a login is needed, when it is.
    pub login_required: Option<String>,
    /// Who logged in.
    pub username: Option<String>,
    /// Token expiry.
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Queue depth.
    pub queue: QueueCountsView,
    /// Age of the oldest pending item, in seconds.
    pub oldest_pending_age_secs: Option<i64>,
    /// Last successful sync.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// Last sync error.
    pub last_error: Option<String>,
    /// Quotas.
    pub quotas: Vec<QuotaView>,
}

/// Queue depth by status.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueCountsView {
    /// Waiting.
    pub pending: i64,
    /// Acknowledged.
    pub synced: i64,
    /// Refused.
    pub failed: i64,
}

/// One client's quota.
#[derive(Debug, Serialize, Deserialize)]
pub struct QuotaView {
    /// Client.
    pub client_id: i64,
    /// Name.
    pub name: Option<String>,
    /// What this kiosk may still make.
    pub remaining: i64,
    /// Recorded here, not yet synced.
    pub unsynced: i64,
}

impl From<LocalQuota> for QuotaView {
    fn from(q: LocalQuota) -> Self {
        Self {
            client_id: q.client_id.get(),
            name: q.name,
            remaining: q.remaining,
            unsynced: q.unsynced,
        }
    }
}

/// Builds the status.
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
        login_required: if session.is_none() {
            Some("never logged in".into())
        } else {
            login_required
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
        quotas: agent
            .store
            .quotas()
            .await?
            .into_iter()
            .map(QuotaView::from)
            .collect(),
    })
}

async fn status(agent: web::Data<Arc<Agent>>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(status_view(&agent).await?))
}

async fn quotas(agent: web::Data<Arc<Agent>>) -> ApiResult<HttpResponse> {
    let q: Vec<QuotaView> = agent
        .store
        .quotas()
        .await?
        .into_iter()
        .map(QuotaView::from)
        .collect();
    Ok(HttpResponse::Ok().json(q))
}

#[derive(Debug, Deserialize)]
struct QueueQuery {
    status: Option<String>,
    limit: Option<usize>,
}

async fn queue(agent: web::Data<Arc<Agent>>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let q = web::Query::<QueueQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<ItemStatus>)
        .transpose()
        .map_err(ApiError::InvalidRequest)?;
    let items: Vec<QueuedOp> = agent
        .store
        .list(status, q.limit.unwrap_or(1000).min(100_000))
        .await?;
    Ok(HttpResponse::Ok().json(items))
}

async fn retry(agent: web::Data<Arc<Agent>>) -> ApiResult<HttpResponse> {
    let n = agent.store.retry_failed().await?;
    agent.kick.notify_one();
    Ok(HttpResponse::Ok().json(json!({"retried": n})))
}

/// `POST /v1/operations` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    /// copy or write.
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// Client charged.
    pub client_id: ClientId,
    /// UID on the card.
    pub uid: BadgeUid,
    /// When the card was made (default: now).
    pub occurred_at: Option<DateTime<Utc>>,
    /// The caller's own id for this operation (a UUID): makes a retry safe.
    pub op_id: Option<propass_protocol::OpId>,
}

async fn record(
    agent: web::Data<Arc<Agent>>,
    body: web::Json<RecordRequest>,
) -> ApiResult<HttpResponse> {
    let RecordRequest {
        op_type,
        client_id,
        uid,
        occurred_at,
        op_id,
    } = body.into_inner();
    let now = agent.clock.now_utc();
    let new = NewRecording {
        op_type,
        client: client_id,
        uid,
        occurred_at: occurred_at.unwrap_or(now),
        recorded_at: now,
        op_id: op_id.unwrap_or_else(|| agent.rng.new_op_id()),
    };
    let recorded = agent.store.record(new, QuotaPolicy::Enforce).await?;
    let (op, remaining) = (recorded.operation, recorded.remaining);
    if recorded.duplicate {
        // A retry of an operation already recorded: the same answer, nothing more.
        return Ok(HttpResponse::Ok().json(
            json!({"success": true, "operation": op, "remaining": remaining, "duplicate": true}),
        ));
    }
    tracing::info!(id = op.id, op_id = %op.op_id, client = %client_id, "recorded");
    agent.emit(AgentEvent::Recorded(op.clone()));
    agent.emit(AgentEvent::QuotaUpdated {
        client_id,
        remaining,
    });
    agent.kick.notify_one();
    Ok(HttpResponse::Created()
        .json(json!({"success": true, "operation": op, "remaining": remaining})))
}

async fn sync_now(agent: web::Data<Arc<Agent>>) -> ApiResult<HttpResponse> {
    let summary = agent.sync_once().await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "synced": summary.synced, "failed": summary.failed, "pending": summary.pending})))
}

/// `POST /v1/login` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Server URL (default: the known one).
    pub server_url: Option<String>,
    /// User.
    pub username: String,
    /// Password.
    pub password: String,
}

async fn login(
    agent: web::Data<Arc<Agent>>,
    body: web::Json<LoginRequest>,
) -> ApiResult<HttpResponse> {
    let LoginRequest {
        server_url,
        username,
        password,
    } = body.into_inner();
    if let Some(url) = &server_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::InvalidRequest(format!(
                "server URL {url:?} must start with http:// or https://"
            )));
        }
    }
    let res = agent.login(server_url, &username, &password).await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "username": res.user.username, "role": res.user.role, "expires_at": res.expires_at, "device_id": agent.device_id})))
}

async fn events(agent: web::Data<Arc<Agent>>) -> HttpResponse {
    let rx = agent.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = match rx.recv().await {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                line
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                format!("{{\"type\":\"lagged\",\"data\":{{\"missed\":{n}}}}}\n").into_bytes()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
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
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(HttpResponse::Ok().json(json!({"readers": readers})))
}

/// A tag as the API shows it.
pub fn tag_json(t: &propass_nfc::TagInfo) -> serde_json::Value {
    json!({"uid": t.uid_hex(), "atqa": format!("{:02X}{:02X}", t.atqa[0], t.atqa[1]), "sak": format!("{:02X}", t.sak), "family": t.family.as_str()})
}

async fn nfc_read(agent: web::Data<Arc<Agent>>) -> ApiResult<HttpResponse> {
    let timeout = agent.config.card_timeout;
    agent.reader.begin();
    let tag = agent
        .reader
        .run(move |r, cancel| {
            let t = r.wait_for_tag(timeout, cancel);
            r.release();
            t
        })
        .await?;
    Ok(HttpResponse::Ok().json(tag_json(&tag)))
}

async fn nfc_cancel(agent: web::Data<Arc<Agent>>) -> HttpResponse {
    agent.reader.cancel();
    HttpResponse::Ok().json(json!({"success": true}))
}

/// `POST /v1/copy` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    /// The client paying for the copy.
    pub client_id: ClientId,
}

async fn copy_card(
    agent: web::Data<Arc<Agent>>,
    body: web::Json<CopyRequest>,
) -> ApiResult<HttpResponse> {
    let made = crate::kiosk::copy(&agent, body.client_id).await?;
    Ok(HttpResponse::Created().json(json!({"success": true, "operation": made.operation, "remaining": made.remaining, "blank": made.blank})))
}

/// `POST /v1/write-card` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteCardRequest {
    /// The client paying for the card.
    pub client_id: ClientId,
    /// The UID to put on the blank.
    pub uid: BadgeUid,
}

async fn write_card(
    agent: web::Data<Arc<Agent>>,
    body: web::Json<WriteCardRequest>,
) -> ApiResult<HttpResponse> {
    let WriteCardRequest { client_id, uid } = body.into_inner();
    let made = crate::kiosk::write(&agent, client_id, uid).await?;
    Ok(HttpResponse::Created().json(json!({"success": true, "operation": made.operation, "remaining": made.remaining, "blank": made.blank})))
}

async fn not_found() -> ApiResult<HttpResponse> {
    Err(ApiError::NotFound)
}

/// Routes, for `App::configure`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::default().limit(MAX_BODY))
    .route("/v1/status", web::get().to(status))
    .route("/v1/quotas", web::get().to(quotas))
    .route("/v1/queue", web::get().to(queue))
    .route("/v1/queue/retry", web::post().to(retry))
    .route("/v1/operations", web::post().to(record))
    .route("/v1/sync", web::post().to(sync_now))
    .route("/v1/login", web::post().to(login))
    .route("/v1/events", web::get().to(events))
    .route("/v1/nfc/readers", web::get().to(nfc_readers))
    .route("/v1/nfc/read", web::post().to(nfc_read))
    .route("/v1/nfc/cancel", web::post().to(nfc_cancel))
    .route("/v1/copy", web::post().to(copy_card))
    .route("/v1/write-card", web::post().to(write_card))
    .default_service(web::to(not_found));
}
