//! `/api/admin/clients…`: clients, their quotas and quota history.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use propass_protocol::{ClientId, ParseError, ReaderKey};
use serde::Deserialize;

use super::access::OperatorSession;
use super::input;
use crate::admin;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    archived: Option<bool>,
}

/// `GET /api/admin/clients`.
pub async fn list(
    _: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query: ListQuery = input::query(&req)?;
    let mut conn = state.pool.get().await?;
    let low = state.config.client_low_quota;
    let clients: Vec<_> = db::clients::overview(&mut conn, None, query.archived.unwrap_or(false))
        .await?
        .into_iter()
        .map(|c| admin::flagged(c, low))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "clients": clients })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    #[serde(default)]
    quota: i64,
    #[serde(default)]
    partial_copy: bool,
}

/// `POST /api/admin/clients`.
pub async fn create(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let body: CreateBody = input::json(&req, &body)?;
    let mut conn = state.pool.get().await?;
    let client = admin::create_client(
        &mut conn,
        &session.actor(),
        &body.name,
        body.quota,
        body.partial_copy,
    )
    .await?;
    Ok(HttpResponse::Created().json(admin::flagged(client, state.config.client_low_quota)))
}

/// A client id from the path.
fn client_id(raw: &str) -> ApiResult<ClientId> {
    raw.parse::<ClientId>()
        .map_err(|_| ApiError::InvalidRequest(format!("{raw:?} is not a client id")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    name: Option<String>,
    archived: Option<bool>,
    partial_copy: Option<bool>,
}

/// `PATCH /api/admin/clients/{id}`.
pub async fn update(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let id = client_id(input::param(&req, "id"))?;
    let body: UpdateBody = input::json(&req, &body)?;
    let mut conn = state.pool.get().await?;
    let client = admin::update_client(
        &mut conn,
        &session.actor(),
        id.get(),
        admin::ClientChange {
            name: body.name.as_deref(),
            archived: body.archived,
            partial_copy: body.partial_copy,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(admin::flagged(client, state.config.client_low_quota)))
}

/// No Debug: the keys are secrets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderKeysBody {
    keys: Vec<String>,
}

/// `PUT /api/admin/clients/{id}/reader-keys`: the keys of the client's
/// badges, replaced; the answer counts them and never shows them.
pub async fn set_reader_keys(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let id = client_id(input::param(&req, "id"))?;
    let body: ReaderKeysBody = input::secret_json(&req, &body)?;
    let keys = ReaderKey::parse_all(body.keys.iter().map(String::as_str))
        .map_err(|i| ApiError::InvalidRequest(format!("keys[{i}]: {}", ParseError::ReaderKey)))?;
    let mut conn = state.pool.get().await?;
    let client = admin::set_reader_keys(
        &mut conn,
        &session.actor(),
        id,
        &keys,
        state.config.client_reader_keys_max,
    )
    .await?;
    Ok(HttpResponse::Ok().json(admin::flagged(client, state.config.client_low_quota)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    delta: i64,
    reason: String,
}

/// `POST /api/admin/clients/{id}/quota`.
pub async fn adjust_quota(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let id = client_id(input::param(&req, "id"))?;
    let body: QuotaBody = input::json(&req, &body)?;
    let mut conn = state.pool.get().await?;
    let client =
        admin::adjust_quota(&mut conn, &session.actor(), id, body.delta, &body.reason).await?;
    Ok(HttpResponse::Ok().json(admin::flagged(client, state.config.client_low_quota)))
}

/// `GET /api/admin/clients/{id}/quota-history`.
pub async fn quota_history(
    _: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let id = client_id(input::param(&req, "id"))?;
    let mut conn = state.pool.get().await?;
    let limit = i64::try_from(state.config.admin_page_max).unwrap_or(500);
    let entries = admin::quota_history(&mut conn, id.get(), limit).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "entries": entries })))
}
