//! `POST /api/sync/push` and `GET /api/sync/pull`.

use actix_web::{web, HttpRequest, HttpResponse};
use propass_protocol::{ClientId, DeviceId, PullResponse, QuotaEntry};
use serde::Deserialize;

use super::extract::{KioskToken, KioskTokenOfActiveDevice};
use super::push_body::{self, PushBody};
use crate::db::{
    self,
    copies::{DeviceLimits, PgLedger},
};
use crate::error::{ApiError, ApiResult};
use crate::push;
use crate::state::AppState;

/// `POST /api/sync/push`. The device's revocation is checked inside the push
/// transaction, hence [`KioskToken`]. The body is read under its limits
/// (see [`push_body`]); items are parsed one by one by the use case.
pub async fn push(
    state: web::Data<AppState>,
    token: KioskToken,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let cfg = &state.config;
    let PushBody { device_id, queue } =
        push_body::read(&req, payload, cfg.max_body_bytes, cfg.max_batch_items).await?;
    let device =
        DeviceId::parse(&device_id).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    token.0.ensure_device(device.as_str())?;
    let done = {
        let mut conn = state.pool.get().await?;
        let now = state.clock.now();
        let window = push::OccurredWindow::around(now, cfg.max_backdate, cfg.max_future_skew);
        let caller = token.0.caller();
        let mut ledger = PgLedger {
            conn: &mut conn,
            limits: DeviceLimits {
                pushes_per_minute: cfg.device_pushes_per_minute,
                items_per_day: cfg.device_items_per_day,
            },
        };
        push::push(&mut ledger, &device, caller, &queue, now, &window).await?
    };
    state.hub.send_quota_updates(&done.quota_updates);
    state.hub.send_all_to_device(&device, &done.to_pusher);
    Ok(HttpResponse::Ok().json(done.response))
}

/// Optional query of `GET /api/sync/pull`.
#[derive(Debug, Deserialize)]
pub struct PullQuery {
    device_id: Option<String>,
}

/// `GET /api/sync/pull`: the quotas of the clients this kiosk serves.
pub async fn pull(
    state: web::Data<AppState>,
    token: KioskTokenOfActiveDevice,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query = web::Query::<PullQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::InvalidRequest("invalid query string".into()))?;
    if let Some(d) = query.device_id.as_deref() {
        token.0.ensure_device(d)?;
    }
    let rows = {
        let mut conn = state.pool.get().await?;
        db::clients::served_by(&mut conn, &token.0.device_id).await?
    };
    let quotas = rows
        .into_iter()
        .filter_map(|r| {
            Some(QuotaEntry {
                remaining: r.remaining(),
                client_id: ClientId::new(r.id).ok()?,
                name: Some(r.name),
                version: Some(r.version),
                partial_copy: Some(r.partial_copy),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(PullResponse {
        success: true,
        quotas,
        server_time: Some(state.clock.now()),
    }))
}
