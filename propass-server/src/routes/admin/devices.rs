//! `/api/admin/devices…` and `/api/admin/enrollment-codes`: the kiosk fleet.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use propass_protocol::{ClientId, DeviceId};
use serde::Deserialize;

use super::access::OperatorSession;
use super::input;
use crate::admin::{self, StatusChange};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `GET /api/admin/devices`.
pub async fn list(_: OperatorSession, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let mut conn = state.pool.get().await?;
    let devices = admin::devices(&mut conn, None, state.config.fleet, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "devices": devices })))
}

fn device_id(raw: &str) -> ApiResult<DeviceId> {
    DeviceId::parse(raw).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// The kiosk as it is now, as the answer to a change.
async fn answer(state: &AppState, id: &DeviceId) -> ApiResult<HttpResponse> {
    let mut conn = state.pool.get().await?;
    let device = admin::device(&mut conn, id, state.config.fleet, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(device))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    name: String,
}

/// `PATCH /api/admin/devices/{id}`.
pub async fn rename(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let id = device_id(input::param(&req, "id"))?;
    let body: RenameBody = input::json(&req, &body)?;
    {
        let mut conn = state.pool.get().await?;
        admin::rename_device(&mut conn, &session.actor(), &id, &body.name).await?;
    }
    answer(&state, &id).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    #[serde(default)]
    clients: Vec<i64>,
}

/// `POST /api/admin/devices/{id}/approve`.
pub async fn approve(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let id = device_id(input::param(&req, "id"))?;
    let clients = input::json_or_default::<ApproveBody>(&req, &body)?.clients;
    {
        let mut conn = state.pool.get().await?;
        admin::approve_device(
            &mut conn,
            &session.actor(),
            &id,
            &clients,
            state.clock.now(),
        )
        .await?;
    }
    answer(&state, &id).await
}

async fn status(
    session: OperatorSession,
    state: web::Data<AppState>,
    id: &str,
    change: StatusChange,
) -> ApiResult<HttpResponse> {
    let id = device_id(id)?;
    {
        let mut conn = state.pool.get().await?;
        admin::set_device_status(&mut conn, &session.actor(), &id, change, state.clock.now())
            .await?;
    }
    answer(&state, &id).await
}

/// `POST /api/admin/devices/{id}/revoke`.
pub async fn revoke(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    status(
        session,
        state,
        input::param(&req, "id"),
        StatusChange::Revoke,
    )
    .await
}

/// `POST /api/admin/devices/{id}/reinstate`.
pub async fn reinstate(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    status(
        session,
        state,
        input::param(&req, "id"),
        StatusChange::Reinstate,
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    #[serde(default)]
    add: Vec<i64>,
    #[serde(default)]
    remove: Vec<i64>,
}

/// `POST /api/admin/devices/{id}/clients`.
pub async fn assign(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let id = device_id(input::param(&req, "id"))?;
    let body: AssignBody = input::json(&req, &body)?;
    {
        let mut conn = state.pool.get().await?;
        admin::assign_device(&mut conn, &session.actor(), &id, &body.add, &body.remove).await?;
    }
    answer(&state, &id).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReclaimBody {
    /// Only this client's lease; all of them when absent.
    client: Option<i64>,
}

/// `POST /api/admin/devices/{id}/reclaim`: for a kiosk that will not come
/// back (a connected one is asked to pull, and refills from the free units).
pub async fn reclaim(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let id = device_id(input::param(&req, "id"))?;
    let client = input::json_or_default::<ReclaimBody>(&req, &body)?
        .client
        .map(ClientId::new)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let mut conn = state.pool.get().await?;
    let returned = admin::reclaim_leases(&mut conn, &session.actor(), &id, client).await?;
    let device = admin::device(&mut conn, &id, state.config.fleet, state.clock.now()).await?;
    let returned: Vec<_> = returned
        .into_iter()
        .map(|(client_id, units)| serde_json::json!({"client_id": client_id, "units": units}))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"returned": returned, "device": device})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// Absent: the kiosk's clients' sizes again.
    target: Option<u32>,
    /// Absent: half the target.
    low_water: Option<u32>,
}

/// `PUT /api/admin/devices/{id}/lease`.
pub async fn lease(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let id = device_id(input::param(&req, "id"))?;
    let body: LeaseBody = input::json(&req, &body)?;
    let sizes = match (body.target, body.low_water) {
        (None, Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "low_water needs a target (no target: the clients' sizes again)".into(),
            ))
        }
        (target, low_water) => target
            .map(|t| crate::db::leases::LeasePolicy::parse(t, low_water))
            .transpose()
            .map_err(ApiError::InvalidRequest)?,
    };
    {
        let mut conn = state.pool.get().await?;
        admin::size_device_leases(&mut conn, &session.actor(), &id, sizes).await?;
    }
    answer(&state, &id).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    name: Option<String>,
    #[serde(default)]
    clients: Vec<i64>,
    device_id: Option<String>,
    valid_hours: Option<u32>,
}

/// `POST /api/admin/enrollment-codes`.
pub async fn enrollment_code(
    session: OperatorSession,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let body: CodeBody = input::json(&req, &body)?;
    let device = body.device_id.as_deref().map(device_id).transpose()?;
    let req = admin::CodeRequest {
        name: body.name.as_deref(),
        clients: &body.clients,
        device: device.as_ref(),
        valid_hours: body.valid_hours.unwrap_or(24),
    };
    let mut conn = state.pool.get().await?;
    let code = admin::create_enrollment_code(
        &mut conn,
        &session.actor(),
        req,
        state.rng.secret_bytes(),
        state.clock.now(),
    )
    .await?;
    Ok(crate::routes::auth::no_store().json(code))
}
