//! `POST /api/devices/enroll` and `POST /api/devices/token`: our agent's
//! way in. Enrollment trades a one-time code an operator created for a device
//! record and the first refresh credential; the token endpoint trades a
//! refresh credential (single use, rotating) for a short-lived access token
//! and the next credential. Callers: anyone holding a code or a credential —
//! no bearer token, no user. Failed attempts count against the caller's
//! address in the login throttle.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use propass_protocol::{DeviceTokenRequest, DeviceTokenResponse, EnrollRequest};

use super::auth::no_store;
use super::client_addr::client_ip;
use crate::auth::secrets;
use crate::db::enrollment::{self, CredentialError, Issued, Redemption};
use crate::db::throttle::{Attempt, ThrottleKey};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Longest agent version string kept.
const MAX_VERSION_LEN: usize = 64;

/// Counts the attempt against the caller's address (when known).
async fn begin(req: &HttpRequest, state: &AppState) -> ApiResult<Option<Attempt>> {
    let Some(ip) = client_ip(
        req,
        &state.config.trusted_proxies,
        state.config.proxy_header,
    ) else {
        return Ok(None);
    };
    Ok(Some(
        state
            .throttle
            .begin(&state.pool, &[ThrottleKey::Ip(ip)], state.clock.instant())
            .await?,
    ))
}

/// Forgives a successful attempt (best effort).
async fn forgive(state: &AppState, attempt: Option<Attempt>) {
    if let Some(a) = attempt {
        state.throttle.forgive(&state.pool, a).await;
    }
}

fn version(v: Option<&str>) -> ApiResult<Option<&str>> {
    match v {
        Some(v) if v.len() > MAX_VERSION_LEN || v.chars().any(char::is_control) => {
            Err(ApiError::InvalidRequest(format!(
                "agent_version must be printable and at most {MAX_VERSION_LEN} bytes"
            )))
        }
        other => Ok(other),
    }
}

fn credential_error(e: CredentialError) -> ApiError {
    match e {
        CredentialError::Refused(why) => ApiError::InvalidCredential(why),
        CredentialError::Revoked(d) => ApiError::DeviceRevoked(d),
        CredentialError::Reused(d) => {
            // Alert-worthy: a copy of the kiosk's credential exists.
            tracing::error!(device = %d, "refresh credential reused: the device's credentials are revoked; re-enroll it after checking the kiosk");
            ApiError::InvalidCredential(CredentialError::Reused(d).to_string())
        }
        CredentialError::Db(e) => e.into(),
    }
}

/// The answer for a newly issued credential.
fn answer(state: &AppState, issued: Issued, credential: String) -> ApiResult<HttpResponse> {
    let (token, expires_at) = state.jwt.issue_device(
        &issued.device,
        issued.token_epoch,
        state.clock.now(),
        state.rng.token_id(),
    )?;
    Ok(no_store().json(DeviceTokenResponse {
        success: true,
        device_id: issued.device,
        name: issued.name,
        token,
        expires_at,
        credential,
        credential_expires_at: issued.chain_expires_at,
    }))
}

fn chain_end(state: &AppState, now: DateTime<Utc>) -> DateTime<Utc> {
    chrono::Duration::from_std(state.config.device_credential_lifetime)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `POST /api/devices/enroll`.
pub async fn enroll(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<EnrollRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let agent_version = version(body.agent_version.as_deref())?;
    let attempt = begin(&req, &state).await?;
    let code = secrets::normalize_code(&body.code).ok_or_else(|| {
        ApiError::InvalidCredential(
            "that is not an enrollment code (20 letters and digits, as propass-server device enroll printed it)".into(),
        )
    })?;
    let credential = secrets::credential(state.rng.secret_bytes());
    let now = state.clock.now();
    let issued = {
        let mut conn = state.pool.get().await?;
        enrollment::redeem(
            &mut conn,
            Redemption {
                code_hash: &secrets::digest(&code),
                device: &body.device_id,
                agent_version,
                credential_hash: &secrets::digest(&credential),
                now,
                chain_expires_at: chain_end(&state, now),
            },
        )
        .await
        .map_err(credential_error)?
    };
    forgive(&state, attempt).await;
    tracing::info!(device = %issued.device, "device enrolled");
    answer(&state, issued, credential)
}

/// `POST /api/devices/token`.
pub async fn token(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<DeviceTokenRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let agent_version = version(body.agent_version.as_deref())?;
    let attempt = begin(&req, &state).await?;
    if !secrets::looks_like_credential(&body.credential) {
        return Err(ApiError::InvalidCredential(
            "that is not a device refresh credential".into(),
        ));
    }
    let next = secrets::credential(state.rng.secret_bytes());
    let issued = {
        let mut conn = state.pool.get().await?;
        enrollment::rotate(
            &mut conn,
            &secrets::digest(&body.credential),
            &secrets::digest(&next),
            agent_version,
            state.clock.now(),
        )
        .await
        .map_err(credential_error)?
    };
    forgive(&state, attempt).await;
    answer(&state, issued, next)
}

/// `POST /api/devices/heartbeat`: a kiosk's heartbeat while its WebSocket is
/// down (its sync loop sends it with each pull). Kiosk calls only, for the
/// caller's own device; `{"success": true}`, or 503 when it could not be
/// stored.
pub async fn heartbeat(
    state: web::Data<AppState>,
    token: super::extract::KioskTokenOfActiveDevice,
    body: web::Json<propass_protocol::KioskHeartbeat>,
) -> ApiResult<HttpResponse> {
    // Stored with whatever else is pending (`crate::heartbeats`), answered
    // once stored: the kiosk is told when it could not be.
    let device = token.0.device_id.clone();
    let ticket = state.heartbeats.offer(crate::heartbeats::Received {
        device: device.clone(),
        heartbeat: body.into_inner(),
        at: state.clock.now(),
    });
    if !state
        .heartbeats
        .wait_stored(ticket, state.config.db_timeout)
        .await
    {
        tracing::warn!(%device, "heartbeat not stored in time");
        return Err(ApiError::Unavailable(
            "the heartbeat could not be stored".into(),
        ));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"success": true})))
}
