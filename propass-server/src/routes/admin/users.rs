//! `/api/admin/users…`: people's accounts. Admins only.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use propass_protocol::Role;
use serde::Deserialize;

use super::access::AdminSession;
use super::input;
use crate::admin::{self, UserChange};
use crate::auth;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `GET /api/admin/users`.
pub async fn list(_: AdminSession, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let mut conn = state.pool.get().await?;
    let users = db::users::summaries(&mut conn, None).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "users": users })))
}

/// Hashes off the async threads, within the server's bound on concurrent
/// Argon2 runs.
async fn hash(state: &AppState, password: String) -> ApiResult<String> {
    admin::check_password(&password)?;
    let _permit = state
        .password_checks
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    web::block(move || auth::password::hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    username: String,
    password: String,
    role: Role,
}

/// `POST /api/admin/users`.
pub async fn create(
    session: AdminSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let CreateBody {
        username,
        password,
        role,
    } = input::json(&req, &body)?;
    let hash = hash(&state, password).await?;
    let mut conn = state.pool.get().await?;
    let user = admin::create_user(&mut conn, &session.0.actor(), &username, &hash, role).await?;
    Ok(HttpResponse::Created().json(user))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    role: Option<Role>,
    disabled: Option<bool>,
    password: Option<String>,
}

/// `PATCH /api/admin/users/{name}`: ends the user's tokens, sessions and
/// open dashboards.
pub async fn update(
    session: AdminSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let name = input::param(&req, "name");
    let UpdateBody {
        role,
        disabled,
        password,
    } = input::json(&req, &body)?;
    let hash = match password {
        Some(p) => Some(hash(&state, p).await?),
        None => None,
    };
    let change = UserChange {
        role,
        disabled,
        password_hash: hash.as_deref(),
    };
    let mut conn = state.pool.get().await?;
    let user = admin::update_user(&mut conn, &session.0.actor(), name, change).await?;
    Ok(HttpResponse::Ok().json(user))
}
