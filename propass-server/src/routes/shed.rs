//! Load shedding. In a reconnect storm every kiosk calls at once; past the
//! pool, requests queue for a database connection and, once the queue is
//! long, all of them would wait `db_timeout_secs` and fail together. When
//! `db_queue_max` requests already wait, a new one is answered 503 with a
//! jittered `Retry-After` at once: the server keeps answering the ones it
//! can, and the fleet comes back spread out. Never shed: `/health`, and the
//! operators' dashboard and admin API — the people handling the incident
//! must get in (they are few; their requests wait their turn).

use std::sync::atomic::Ordering;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

use crate::error::{ApiError, UNAVAILABLE_RETRY_SECS};
use crate::state::AppState;

/// The middleware (`from_fn`): a refusal answered at once, or the request.
pub async fn middleware<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let refused = req
        .app_data::<web::Data<AppState>>()
        .and_then(|state| refusal(&req, state));
    match refused {
        Some(e) => Ok(req.into_response(e.error_response()).map_into_right_body()),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

/// The refusal for `req` when the server is saturated.
pub fn refusal(req: &ServiceRequest, state: &AppState) -> Option<ApiError> {
    let max = state.config.db_queue_max;
    let path = req.path();
    if max == 0
        || path == "/health"
        || path == "/admin"
        || path.starts_with("/admin/")
        || path.starts_with("/api/admin")
    {
        return None;
    }
    let waiting = state.pool.status().waiting;
    if waiting < max {
        return None;
    }
    state.metrics.shed.fetch_add(1, Ordering::Relaxed);
    // Between one and two times the base wait: refused together, the
    // kiosks do not all come back in the same second.
    let jitter = state.rng.token_id().as_u128() % u128::from(UNAVAILABLE_RETRY_SECS + 1);
    Some(ApiError::Busy {
        why: format!("the server is saturated ({waiting} requests wait for the database)"),
        retry_after_secs: UNAVAILABLE_RETRY_SECS + u64::try_from(jitter).unwrap_or(0),
    })
}
