//! Around every request: the body's read deadline, then one log line and
//! the `/metrics` counters once it is answered — method, path (never the
//! query string: it may hold a token), status, latency, route pattern.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use super::body_deadline;
use crate::state::AppState;

/// The middleware (`from_fn`).
pub async fn middleware<B: MessageBody>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next.call(req).await;
    };
    body_deadline::apply(&mut req, state.config.body_read_timeout);
    let method = req.method().clone();
    let path = req.path().to_owned();
    let start = state.clock.instant();
    let res = next.call(req).await;
    let secs = state.clock.instant().duration_since(start).as_secs_f64();
    let ms = secs * 1000.0;
    match &res {
        Ok(r) => {
            let route = r
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into());
            let status = r.status().as_u16();
            state.metrics.request(&route, method.as_str(), status, secs);
            tracing::info!(%method, %path, status, latency_ms = format_args!("{ms:.1}"), "request");
        }
        Err(e) => {
            tracing::warn!(%method, %path, error = %e, latency_ms = format_args!("{ms:.1}"), "request failed")
        }
    }
    res
}
