//! `GET /health`: 200 when the database answers within `db_timeout`, 503 when
//! it does not (load balancers and systemd watchdogs read the status).

use actix_web::{web, HttpResponse};
use propass_protocol::HealthResponse;

use crate::db;
use crate::state::AppState;

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let check = async {
        let mut conn = state.pool.get().await.map_err(|e| e.to_string())?;
        db::ping(&mut conn).await.map_err(|e| e.to_string())
    };
    let up = match tokio::time::timeout(state.config.db_timeout, check).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: database down");
            false
        }
        Err(_) => {
            tracing::warn!("health check: database timed out");
            false
        }
    };
    let body = HealthResponse {
        status: if up { "ok" } else { "unavailable" }.into(),
        database: if up { "up" } else { "down" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
