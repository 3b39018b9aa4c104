//! `POST /api/auth/login` and `POST /api/auth/refresh`.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};
use propass_protocol::{
    DeviceId, DeviceStatus, LoginRequest, LoginResponse, RefreshResponse, UserInfo,
};

use super::client_addr::client_ip;
use crate::auth::{self, bearer_token, ensure_standing_on_active_device, Purpose, Subject};
use crate::db::{self, throttle::ThrottleKey, users::User};
use crate::device::{self, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// An answer carrying a credential: no cache along the way may keep it.
pub(super) fn no_store() -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    res.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
    res
}

/// Longest username or password accepted (Argon2 on megabytes is a DoS).
const MAX_CREDENTIAL_LEN: usize = 1024;

/// `POST /api/auth/login`: a token bound to the named device.
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
    let user = check_credentials(&req, &state, username, password).await?;
    if user.disabled {
        return Err(ApiError::Forbidden(format!(
            "account {:?} is disabled",
            user.username
        )));
    }

    let device = {
        let mut conn = state.pool.get().await?;
        db::devices::touch_or_register(&mut conn, &device_id).await?
    };
    // A pending device gets its token (the seed client keeps it while an
    // operator approves); an enrolled or revoked one gets nothing.
    device::admit(&device_id, Caller::Login, Some(device), Purpose::Refresh)?;
    if device.status == DeviceStatus::Pending {
        tracing::warn!(user = ?user.username, device = %device_id, "login from a device waiting for approval: propass-server device approve");
    }
    let (token, exp) = issue(&state, &user, &device_id)?;
    // `?`: Debug escapes whatever the user typed (no forged log lines).
    tracing::info!(user = ?user.username, device = %device_id, "login");
    Ok(no_store().json(LoginResponse {
        success: true,
        token,
        user: UserInfo {
            id: user.id,
            username: user.username,
            role: user.role,
        },
        expires_at: Some(exp),
    }))
}

/// The user, if the password is right and neither the name nor the address
/// is throttled. A wrong name costs as long as a wrong password.
pub(super) async fn check_credentials(
    req: &HttpRequest,
    state: &AppState,
    username: String,
    password: String,
) -> ApiResult<User> {
    let mut keys = vec![ThrottleKey::User(username.clone())];
    if let Some(ip) = client_ip(
        req,
        &state.config.trusted_proxies,
        state.config.proxy_header,
    ) {
        keys.push(ThrottleKey::Ip(ip));
    }
    // Counted before the password is checked: concurrent attempts cannot
    // race past the limit.
    let attempt = state
        .throttle
        .begin(&state.pool, &keys, state.clock.instant())
        .await?;
    let user = {
        let mut conn = state.pool.get().await?;
        db::users::find(&mut conn, &username).await?
    };
    let hash = match &user {
        Some(u) => u.password_hash.clone(),
        None => auth::password::dummy_hash().to_owned(),
    };
    let _permit = state
        .password_checks
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    state
        .metrics
        .password_checks
        .fetch_add(1, Ordering::Relaxed);
    let ok = web::block(move || auth::password::verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::Internal(format!("password check failed: {e}")))?;
    match user.filter(|_| ok) {
        Some(user) => {
            state.throttle.forgive(&state.pool, attempt).await;
            Ok(user)
        }
        None => {
            // Already counted by `begin`.
            state.metrics.login_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user = ?username, "login failed");
            Err(ApiError::InvalidCredentials)
        }
    }
}

fn issue(
    state: &AppState,
    user: &User,
    device: &DeviceId,
) -> ApiResult<(String, chrono::DateTime<chrono::Utc>)> {
    let who = Subject {
        uid: user.id,
        username: &user.username,
        role: user.role,
        device,
        epoch: user.token_epoch,
    };
    state
        .jwt
        .issue(who, state.clock.now(), state.rng.token_id())
}

/// `POST /api/auth/refresh`: a new token for the bearer of a current one, or
/// of one expired within the grace period.
pub async fn refresh(req: HttpRequest, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let token = bearer_token(&req).ok_or(ApiError::MissingToken)?;
    let claims = state.jwt.verify_for_refresh(&token, state.clock.now())?;
    let user = ensure_standing_on_active_device(&state.pool, &claims, Purpose::Refresh)
        .await?
        .ok_or_else(|| ApiError::InvalidToken("a login token names its user".into()))?;
    let (token, exp) = issue(&state, &user, &claims.device_id)?;
    Ok(no_store().json(RefreshResponse {
        success: true,
        token,
        expires_at: Some(exp),
    }))
}
