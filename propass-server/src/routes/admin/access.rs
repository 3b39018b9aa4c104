//! Who may call an operator route: the session extractors. A request
//! carrying a bearer token is a kiosk's (or a script's posing as one) and is
//! refused outright — kiosk credentials never open the operator plane. A
//! browser proves its session with the HttpOnly cookie, and a request that
//! changes something also with the session's CSRF token in a header, which
//! a page of another site can neither read nor send.

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};
use propass_protocol::Role;

use crate::admin::Actor;
use crate::auth::secrets;
use crate::db;
use crate::error::ApiError;
use crate::state::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "propass_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A live session of an admin or an operator.
#[derive(Debug, Clone)]
pub struct OperatorSession {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    pub csrf_token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The digest of the session id (what the database keeps).
    pub id_hash: String,
}

impl OperatorSession {
    /// Who the audit log names.
    pub fn actor(&self) -> Actor {
        Actor::user(&self.username)
    }
}

/// The digest of the request's session cookie, if it has one of the right shape.
pub fn session_hash(req: &HttpRequest) -> Option<String> {
    let cookie = req.cookie(SESSION_COOKIE)?;
    secrets::looks_like_session_token(cookie.value()).then(|| secrets::digest(cookie.value()))
}

/// How long a session may go without a request (`admin_session_idle_secs`).
pub fn idle_limit(state: &AppState) -> chrono::Duration {
    chrono::Duration::from_std(state.config.admin_session_idle)
        .unwrap_or(chrono::Duration::hours(1))
}

/// Compares without stopping at the first difference (no timing oracle).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn check(req: HttpRequest) -> Result<OperatorSession, ApiError> {
    if req
        .headers()
        .contains_key(actix_web::http::header::AUTHORIZATION)
    {
        return Err(ApiError::Forbidden(
            "operator routes do not take tokens: kiosk credentials never open them; log in to the dashboard as a person".into(),
        ));
    }
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))?;
    let id_hash =
        session_hash(&req).ok_or_else(|| ApiError::SessionRequired("log in first".into()))?;
    let live = {
        let mut conn = state.pool.get().await?;
        db::sessions::touch(&mut conn, &id_hash, state.clock.now(), idle_limit(&state)).await?
    };
    let live = live.ok_or_else(|| {
        ApiError::SessionRequired(
            "your session has ended (expired, logged out, or your account changed): log in again"
                .into(),
        )
    })?;
    if super::changes(req.method()) {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same(sent, &live.csrf_token) {
            return Err(ApiError::CsrfRejected);
        }
    }
    Ok(OperatorSession {
        user_id: live.user_id,
        role: live.role,
        username: live.username,
        csrf_token: live.csrf_token,
        expires_at: live.expires_at,
        id_hash,
    })
}

type Checked<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

impl FromRequest for OperatorSession {
    type Error = ApiError;
    type Future = Checked<Self>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Box::pin(check(req.clone()))
    }
}

/// A live session of an admin.
#[derive(Debug, Clone)]
pub struct AdminSession(pub OperatorSession);

impl FromRequest for AdminSession {
    type Error = ApiError;
    type Future = Checked<Self>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let s = check(req).await?;
            if s.role != Role::Admin {
                return Err(ApiError::Forbidden(format!(
                    "only an admin manages users; {} is an {}",
                    s.username,
                    s.role.as_str()
                )));
            }
            Ok(Self(s))
        })
    }
}
