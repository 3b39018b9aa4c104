//! `POST /api/admin/login`, `GET /api/admin/session`, `POST /api/admin/logout`:
//! a person's browser session. The cookie is HttpOnly (no script reads it),
//! Secure (browsers send it over HTTPS, and to localhost), SameSite=Strict
//! (no other site's page makes the browser send it); the CSRF token in the
//! answer goes back in a header with every change. Logins, refused ones
//! included, are audited.

use actix_web::cookie::{time::Duration as CookieAge, Cookie, SameSite};
use actix_web::{web, HttpRequest, HttpResponse};
use propass_protocol::{Role, UserInfo};
use serde::{Deserialize, Serialize};

use super::access::{idle_limit, OperatorSession, SESSION_COOKIE};
use crate::auth::secrets;
use crate::db;
use crate::db::users::User;
use crate::error::{ApiError, ApiResult};
use crate::routes::auth::{check_credentials, no_store};
use crate::routes::client_addr::client_ip;
use crate::state::AppState;

/// Longest username or password accepted (Argon2 on megabytes is a DoS).
const MAX_CREDENTIAL_LEN: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// What a session answer says.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub user: UserInfo,
    /// Sent back in `X-CSRF-Token` with every request that changes something.
    pub csrf_token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

fn cookie(value: &str, max_age_secs: i64) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, value.to_owned())
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(CookieAge::seconds(max_age_secs))
        .finish()
}

async fn audit_login(
    state: &AppState,
    actor: &str,
    action: &str,
    username: &str,
    ip: Option<String>,
) {
    let outcome = async {
        let mut conn = state.pool.get().await?;
        db::audit::record(
            &mut conn,
            actor,
            action,
            &format!("user:{username}"),
            serde_json::json!({"ip": ip}),
        )
        .await
        .map_err(ApiError::from)
    };
    if let Err(e) = outcome.await {
        tracing::warn!(error = %e, "cannot audit a login");
    }
}

/// `POST /api/admin/login`.
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginBody>,
) -> ApiResult<HttpResponse> {
    let LoginBody { username, password } = body.into_inner();
    if username.len() > MAX_CREDENTIAL_LEN || password.len() > MAX_CREDENTIAL_LEN {
        return Err(ApiError::InvalidRequest(format!(
            "username and password are limited to {MAX_CREDENTIAL_LEN} bytes"
        )));
    }
    let ip = client_ip(
        &req,
        &state.config.trusted_proxies,
        state.config.proxy_header,
    )
    .map(|ip| ip.to_string());
    let user = match check_credentials(&req, &state, username.clone(), password).await {
        Ok(user) => user,
        Err(e @ ApiError::InvalidCredentials) => {
            audit_login(&state, "anonymous", "session.login_failed", &username, ip).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let Some(why) = refusal(&user) {
        audit_login(&state, "anonymous", "session.login_refused", &username, ip).await;
        return Err(ApiError::Forbidden(why));
    }
    let Opened {
        token,
        csrf_token,
        expires_at,
        ttl,
    } = open_session(&state, &user).await?;
    audit_login(
        &state,
        &format!("user:{}", user.username),
        "session.login",
        &user.username,
        ip,
    )
    .await;
    tracing::info!(user = ?user.username, "operator login");
    Ok(no_store()
        .cookie(cookie(&token, ttl.num_seconds()))
        .json(SessionInfo {
            user: UserInfo {
                id: user.id,
                username: user.username,
                role: user.role,
            },
            csrf_token,
            expires_at,
        }))
}

/// Why `user`, whose password was right, may not open a dashboard session.
fn refusal(user: &User) -> Option<String> {
    if user.disabled {
        Some(format!("account {:?} is disabled", user.username))
    } else if user.role == Role::Kiosk {
        Some("a kiosk account cannot open the dashboard: log in as an operator or admin".into())
    } else {
        None
    }
}

/// A new session: the cookie's value, the CSRF token, and when it ends.
struct Opened {
    token: String,
    csrf_token: String,
    expires_at: chrono::DateTime<chrono::Utc>,
    ttl: chrono::Duration,
}

/// Opens a session for `user` (forgetting the ended ones on the way).
async fn open_session(state: &AppState, user: &User) -> ApiResult<Opened> {
    let token = secrets::session_token(state.rng.secret_bytes());
    let csrf_token = secrets::session_token(state.rng.secret_bytes());
    let now = state.clock.now();
    let ttl = chrono::Duration::from_std(state.config.admin_session_ttl)
        .unwrap_or(chrono::Duration::hours(12));
    let expires_at = now + ttl;
    let mut conn = state.pool.get().await?;
    db::sessions::sweep(&mut conn, now, idle_limit(state)).await?;
    db::sessions::create(
        &mut conn,
        db::sessions::NewSession {
            id_hash: &secrets::digest(&token),
            user_id: user.id,
            user_epoch: user.token_epoch,
            csrf_token: &csrf_token,
            now,
            expires_at,
        },
    )
    .await?;
    Ok(Opened {
        token,
        csrf_token,
        expires_at,
        ttl,
    })
}

/// `GET /api/admin/session`: who is logged in, and the CSRF token (a page
/// loaded anew learns it here).
pub async fn current(session: OperatorSession) -> ApiResult<HttpResponse> {
    Ok(no_store().json(SessionInfo {
        user: UserInfo {
            id: session.user_id,
            username: session.username,
            role: session.role,
        },
        csrf_token: session.csrf_token,
        expires_at: session.expires_at,
    }))
}

/// `POST /api/admin/logout`: ends the session and its live streams.
pub async fn logout(
    session: OperatorSession,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    {
        let mut conn = state.pool.get().await?;
        db::sessions::delete(&mut conn, &session.id_hash).await?;
    }
    state.live.end_session(&session.id_hash, "logged out");
    Ok(no_store()
        .cookie(cookie("", 0))
        .json(serde_json::json!({"ok": true})))
}
