//! HTTP handlers. Each returns [`ApiResult`]; errors become the wire error
//! body in `error.rs`.

use actix_web::error::JsonPayloadError;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use propass_protocol::{
    ClientId, CopyCompleted, DeviceId, HealthResponse, LoginRequest, LoginResponse, PullResponse,
    PushItemResult, PushResponse, PushStatus, QueueItem, QuotaEntry, RefreshResponse, Role,
    SyncCompleted, UserInfo, WsMessage,
};
use serde::Deserialize;

use crate::auth::{self, bearer_token, ensure_device_active, Authed, SignedToken};
use crate::db::{self, NewOp, Outcome};
use crate::error::{ApiError, ApiResult};
use crate::startup::AppState;

/// Longest username or password accepted (Argon2 on megabytes is a DoS).
const MAX_CREDENTIAL_LEN: usize = 1024;

/// Maps body-parsing failures to the wire error body (never an HTML page).
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::PayloadTooLarge(
            format!("request body is larger than the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(e) => {
            ApiError::MalformedJson(format!("invalid JSON body: {e}"))
        }
        other => ApiError::MalformedJson(format!("cannot read the JSON body: {other}")),
    };
    api.into()
}

/// Unknown routes.
pub async fn not_found() -> ApiResult<HttpResponse> {
    Err(ApiError::NotFound)
}

/// `GET /health`: 200 when the database answers, 503 when it does not.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let check = async {
        let mut conn = state.pool.get().await.map_err(|e| e.to_string())?;
        db::ping(&mut conn).await.map_err(|e| e.to_string())
    };
    let up = match tokio::time::timeout(state.config.db_timeout, check).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: database down");
            false
        }
        Err(_) => {
            tracing::warn!("health check: database timed out");
            false
        }
    };
    let body = HealthResponse {
        status: if up { "ok" } else { "unavailable" }.into(),
        database: if up { "up" } else { "down" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `POST /api/auth/login`.
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> ApiResult<HttpResponse> {
    let LoginRequest {
        username,
        password,
        device_id,
    } = body.into_inner();
    if username.len() > MAX_CREDENTIAL_LEN || password.len() > MAX_CREDENTIAL_LEN {
        return Err(ApiError::InvalidRequest(format!(
            "username and password are limited to {MAX_CREDENTIAL_LEN} bytes"
        )));
    }
    let user_key = format!("user:{username}");
    let mut keys = vec![user_key.clone()];
    if let Some(addr) = req.peer_addr() {
        keys.push(format!("ip:{}", addr.ip()));
    }
    state
        .throttle
        .check(&keys)
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;

    let user = {
        let mut conn = state.pool.get().await?;
        db::find_user(&mut conn, &username).await?
    };
    let (hash, found) = match &user {
        Some(u) => (u.password_hash.clone(), true),
        None => (auth::dummy_hash().to_owned(), false),
    };
    let _permit = state
        .password_checks
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let ok = web::block(move || auth::verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::Internal(format!("password check failed: {e}")))?;
    let user = match (user, ok && found) {
        (Some(u), true) => u,
        _ => {
            state.throttle.failure(&keys);
            tracing::info!(user = %username, "login failed");
            return Err(ApiError::InvalidCredentials);
        }
    };
    state.throttle.success(&user_key);
    let role: Role = user.role.parse().map_err(ApiError::Internal)?;

    let revoked = {
        let mut conn = state.pool.get().await?;
        db::touch_device(&mut conn, &device_id).await?
    };
    if revoked {
        return Err(ApiError::DeviceRevoked(device_id.to_string()));
    }
    let (token, exp) = state.jwt.issue(user.id, &user.username, role, &device_id)?;
    tracing::info!(user = %user.username, device = %device_id, "login");
    Ok(HttpResponse::Ok().json(LoginResponse {
        success: true,
        token,
        user: UserInfo {
            id: user.id,
            username: user.username,
            role,
        },
        expires_at: Some(exp),
    }))
}

/// `POST /api/auth/refresh`: a new token for the bearer of a current one, or
/// of one expired within the grace period.
pub async fn refresh(req: HttpRequest, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let token = bearer_token(&req).ok_or(ApiError::MissingToken)?;
    let claims = state.jwt.verify_for_refresh(&token)?;
    ensure_device_active(&state, &claims.device_id).await?;
    let user = {
        let mut conn = state.pool.get().await?;
        db::find_user(&mut conn, &claims.sub).await?
    }
    .filter(|u| u.id == claims.uid)
    .ok_or_else(|| ApiError::InvalidToken("the token's user no longer exists".into()))?;
    let role: Role = user.role.parse().map_err(ApiError::Internal)?;
    let device =
        DeviceId::parse(&claims.device_id).map_err(|e| ApiError::InvalidToken(e.to_string()))?;
    let (token, exp) = state.jwt.issue(user.id, &user.username, role, &device)?;
    Ok(HttpResponse::Ok().json(RefreshResponse {
        success: true,
        token,
        expires_at: Some(exp),
    }))
}

/// The push body, read leniently so that one bad item does not sink the batch.
#[derive(Debug, Deserialize)]
pub struct RawPush {
    device_id: String,
    queue: Vec<serde_json::Value>,
}

/// `POST /api/sync/push`.
pub async fn push(
    state: web::Data<AppState>,
    token: SignedToken,
    body: web::Json<RawPush>,
) -> ApiResult<HttpResponse> {
    let SignedToken(authed) = token;
    let RawPush { device_id, queue } = body.into_inner();
    let device =
        DeviceId::parse(&device_id).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    authed.ensure_device(device.as_str())?;
    let max = state.config.max_batch_items;
    if queue.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "batch has {} items; the limit is {max}: push in smaller batches",
            queue.len()
        )));
    }

    let mut results: Vec<Option<PushItemResult>> = vec![None; queue.len()];
    let mut ops: Vec<NewOp> = Vec::with_capacity(queue.len());
    let mut slots: Vec<usize> = Vec::with_capacity(queue.len());
    for (i, value) in queue.iter().enumerate() {
        match QueueItem::from_json(value) {
            Ok(item) => {
                ops.push(NewOp::new(&device, item));
                slots.push(i);
            }
            Err(e) => {
                let op_id = value
                    .get("op_id")
                    .and_then(|v| serde_json::from_value(v.clone()).ok());
                results[i] = Some(PushItemResult::failed(e.id, op_id, e.message));
            }
        }
    }

    let mut conn = state.pool.get().await?;
    let outcome = if ops.is_empty() {
        if db::touch_device(&mut conn, &device).await? {
            return Err(ApiError::DeviceRevoked(device.to_string()));
        }
        db::BatchOutcome::default()
    } else {
        match db::record_batch(&mut conn, &device, ops.clone()).await {
            Ok(outcome) => outcome,
            Err(db::PushError::DeviceRevoked) => {
                return Err(ApiError::DeviceRevoked(device.to_string()))
            }
            Err(db::PushError::Db(e)) => return Err(e.into()),
        }
    };
    drop(conn);

    let mut new_copies = Vec::new();
    for ((op, slot), result) in ops.iter().zip(&slots).zip(outcome.outcomes) {
        let item = &op.item;
        results[*slot] = Some(match result {
            Outcome::Recorded {
                ledger_id,
                duplicate,
                overdraft,
                occurred_at,
            } => {
                if !duplicate {
                    new_copies.push(CopyCompleted {
                        ledger_id,
                        client_id: item.payload.client_id,
                        uid: item.payload.uid.clone(),
                        op_type: item.op_type,
                        device_id: device.clone(),
                        id: item.id,
                        op_id: item.op_id,
                        occurred_at,
                        overdraft,
                    });
                }
                PushItemResult {
                    id: Some(item.id),
                    status: PushStatus::Synced,
                    error: None,
                    op_id: item.op_id,
                    duplicate,
                    overdraft,
                    ledger_id: Some(ledger_id),
                }
            }
            Outcome::Failed(msg) => PushItemResult::failed(Some(item.id), item.op_id, msg),
        });
    }
    let data: Vec<PushItemResult> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| PushItemResult::failed(None, None, "internal: not processed")))
        .collect();

    let synced = data
        .iter()
        .filter(|r| r.status == PushStatus::Synced)
        .count() as u32;
    let duplicates = data.iter().filter(|r| r.duplicate).count() as u32;
    let failed = data.len() as u32 - synced;
    tracing::info!(device = %device, items = data.len(), synced, duplicates, failed, "push");

    let events: Vec<WsMessage> = new_copies
        .into_iter()
        .map(WsMessage::CopyCompleted)
        .chain(outcome.quotas.iter().cloned().map(WsMessage::QuotaUpdated))
        .collect();
    state.hub.broadcast_all(&events);
    state.hub.send_to_device(
        device.as_str(),
        &WsMessage::SyncCompleted(SyncCompleted {
            device_id: device.clone(),
            synced,
            failed,
            duplicates,
            at: Utc::now(),
        }),
    );
    Ok(HttpResponse::Ok().json(PushResponse {
        success: true,
        data,
        quotas: outcome.remaining,
    }))
}

/// Optional query of `GET /api/sync/pull`.
#[derive(Debug, Deserialize)]
pub struct PullQuery {
    device_id: Option<String>,
}

/// `GET /api/sync/pull`: the quotas of the clients this kiosk may serve.
pub async fn pull(
    state: web::Data<AppState>,
    authed: Authed,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query = web::Query::<PullQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::InvalidRequest("invalid query string".into()))?;
    if let Some(d) = query.device_id.as_deref() {
        authed.ensure_device(d)?;
    }
    let mut conn = state.pool.get().await?;
    let rows = db::list_clients(&mut conn).await?;
    let quotas = rows
        .into_iter()
        .filter_map(|r| {
            let remaining = r.remaining();
            Some(QuotaEntry {
                client_id: ClientId::new(r.id).ok()?,
                remaining,
                name: Some(r.name),
                version: Some(r.version),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(PullResponse {
        success: true,
        quotas,
        server_time: Some(Utc::now()),
    }))
}
