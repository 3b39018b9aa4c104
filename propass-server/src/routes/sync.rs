//! `POST /api/sync/push` and `GET /api/sync/pull`.

use actix_web::{web, HttpRequest, HttpResponse};
use diesel_async::AsyncConnection;
use propass_protocol::{ClientId, DeviceId, LeaseReleaseResponse, PullResponse, QuotaEntry};
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
/// (see [`push_body`]); items are parsed one by one, each once, before a
/// database connection is taken.
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
    let now = state.clock.now();
    let window = push::OccurredWindow::around(now, cfg.max_backdate, cfg.max_future_skew);
    // Parsed before a connection is taken: the pool is what pushes queue for.
    let batch = push::Batch::parse(&queue, &window);
    drop(queue);
    let done = {
        let mut conn = state.pool.get().await?;
        let caller = token.0.caller();
        let mut ledger = PgLedger {
            note_contact: state.contacts.due(&device, state.clock.instant()),
            conn: &mut conn,
            limits: DeviceLimits {
                pushes_per_minute: cfg.device_pushes_per_minute,
                items_per_day: cfg.device_items_per_day,
            },
        };
        push::push(&mut ledger, &device, caller, &batch, now).await?
    };
    state.metrics.count_push(&done.response);
    crate::changes::after_push(&state, &device, &done).await;
    Ok(HttpResponse::Ok().json(done.response))
}

/// Optional query of `GET /api/sync/pull`.
#[derive(Debug, Deserialize)]
pub struct PullQuery {
    device_id: Option<String>,
    /// `true`: hold leases, refilled in this answer when low.
    lease: Option<bool>,
    /// The `version` of the kiosk's last pull: list only what changed since.
    since_version: Option<i64>,
    /// `true`: each client's reader keys too (our agent; the seed client
    /// cannot use them and is not sent them).
    reader_keys: Option<bool>,
}

/// `GET /api/sync/pull`: the quotas of the clients this kiosk serves, and
/// (with `?lease=true`) the units it holds in lease, refilled first; with
/// `?since_version=`, only the clients changed since that answer (`delta`);
/// with `?reader_keys=true`, each client's reader keys.
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
    let device = token.0.device_id.clone();
    let policy = state.config.lease;
    let leasing = query.lease == Some(true);
    let with_keys = query.reader_keys == Some(true);
    let (version, since, own, rows, leases, excess, recorded_through) = {
        let mut conn = state.pool.get().await?;
        conn.transaction(async |conn| {
            let (version, since) =
                db::clients::pull_version(conn, &device, query.since_version).await?;
            let own = db::leases::device_sizes(conn, &device).await?;
            let mut excess = Vec::new();
            if leasing {
                let served = db::devices::served_clients(conn, &device).await?;
                db::leases::refill(conn, &device, &served, policy, own).await?;
                excess = db::leases::over_target(conn, &device, policy, own).await?;
            }
            let rows = db::clients::served_changed(conn, &device, since).await?;
            let leases = db::leases::held(conn, &device, None).await?;
            let through = db::devices::recorded_through(conn, &device).await?;
            Ok::<_, diesel::result::Error>((version, since, own, rows, leases, excess, through))
        })
        .await?
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
                lease: lease_word(
                    leases.get(&r.id).copied(),
                    own.map_or(r.lease_target.unwrap_or(policy.target), |o| o.target),
                    leasing,
                ),
                reader_keys: with_keys.then(|| r.reader_keys.clone()),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(PullResponse {
        success: true,
        quotas,
        server_time: Some(state.clock.now()),
        recorded_through: Some(recorded_through),
        version: Some(version),
        delta: Some(since.is_some()),
        lease_excess: crate::push::lease_entries(excess),
    }))
}

/// A pull entry's `lease`, from the units the kiosk holds (`None`: no
/// lease row) and its target: a kiosk that asked holds a lease of every
/// client with a lease size (0 when none is free); otherwise only what it
/// still holds. `None`: it spends the free units optimistically.
fn lease_word(held: Option<i64>, target: i64, leasing: bool) -> Option<i64> {
    match held {
        Some(units) if units > 0 || (leasing && target > 0) => Some(units),
        None if leasing && target > 0 => Some(0),
        _ => None,
    }
}

/// Optional query of `DELETE /api/sync/lease`: give back only `units` of
/// `client_id`'s lease (both, or neither).
#[derive(Debug, Deserialize)]
pub struct ReleaseQuery {
    client_id: Option<i64>,
    units: Option<i64>,
}

/// `DELETE /api/sync/lease`: a kiosk shutting down cleanly, with nothing
/// left to push, gives its unused units back; with `?client_id=&units=`, a
/// kiosk gives back that many units of one client's lease that it has not
/// spent (an operator lowered the target) and keeps the rest. Kiosk calls
/// only (a kiosk or admin user's login token, or a device token), for the
/// caller's own device.
pub async fn release_leases(
    state: web::Data<AppState>,
    token: KioskTokenOfActiveDevice,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let query = web::Query::<ReleaseQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::InvalidRequest("invalid query string".into()))?;
    let part = match (query.client_id, query.units) {
        (None, None) => None,
        (Some(c), Some(units)) if units > 0 => Some((
            ClientId::new(c).map_err(|e| ApiError::InvalidRequest(format!("client_id: {e}")))?,
            units,
        )),
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest("units must be at least 1".into()))
        }
        _ => {
            return Err(ApiError::InvalidRequest(
                "client_id and units go together: both, or neither (every lease)".into(),
            ))
        }
    };
    let device = token.0.device_id.clone();
    let released = {
        let mut conn = state.pool.get().await?;
        conn.transaction(async |conn| match part {
            None => db::leases::release(conn, &device, None).await,
            Some((client, units)) => {
                let given = db::leases::give_back(conn, &device, client, units).await?;
                Ok(vec![(client.get(), given)])
            }
        })
        .await?
    };
    Ok(HttpResponse::Ok().json(LeaseReleaseResponse {
        success: true,
        released: crate::push::lease_entries(released),
    }))
}
