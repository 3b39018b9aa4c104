//! `GET /metrics` on the metrics address (`metrics_bind`): the counters,
//! and gauges read now — connections, the pool, each kiosk's last heartbeat
//! and each client's quota, for alerting (docs/operations.md has rules).

use actix_web::{web, HttpResponse};

use crate::db;
use crate::error::ApiResult;
use crate::metrics::{render, Gauge};
use crate::state::AppState;

fn gauge(
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
) -> Gauge {
    Gauge {
        name,
        help,
        samples,
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn f(n: i64) -> f64 {
    n as f64
}

/// `GET /metrics`.
pub async fn metrics(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let now = state.clock.now();
    let (health, clients) = {
        let mut conn = state.pool.get().await?;
        let inactive = db::devices::inactive(&mut conn).await?;
        let mut health = db::fleet::health(&mut conn, state.config.fleet, now, None).await?;
        // A revoked or unapproved kiosk is not expected to be heard from.
        health.retain(|device, _| !inactive.contains(device));
        (health, db::clients::overview(&mut conn, None, false).await?)
    };
    let mut gauges = process_gauges(&state);
    gauges.extend(device_gauges(health, now));
    gauges.extend(client_gauges(&clients, state.config.client_low_quota));
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render(&state.metrics, &gauges)))
}

/// Connections, dashboard streams and the database pool of this process.
fn process_gauges(state: &AppState) -> Vec<Gauge> {
    let pool = state.pool.status();
    vec![
        gauge(
            "propass_ws_connections",
            "Open kiosk WebSockets.",
            vec![(vec![], state.hub.connections() as f64)],
        ),
        gauge(
            "propass_admin_streams",
            "Open dashboard live streams.",
            vec![(vec![], state.live.len() as f64)],
        ),
        gauge(
            "propass_db_pool_connections",
            "Database pool connections: max, open, idle, and requests waiting for one.",
            vec![
                (vec![("state", "max".into())], pool.max_size as f64),
                (vec![("state", "open".into())], pool.size as f64),
                (vec![("state", "idle".into())], pool.available as f64),
                (vec![("state", "waiting".into())], pool.waiting as f64),
            ],
        ),
    ]
}

/// Each kiosk's health at `now`, by device id.
fn device_gauges(
    health: std::collections::HashMap<propass_protocol::DeviceId, db::fleet::Health>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Gauge> {
    let mut out = Vec::new();
    let mut health: Vec<_> = health.into_iter().collect();
    health.sort_by(|a, b| a.0.cmp(&b.0));
    let per_device = |value: &dyn Fn(&db::fleet::Health) -> Option<f64>| {
        health
            .iter()
            .filter_map(|(d, h)| Some((vec![("device", d.to_string())], value(h)?)))
            .collect::<Vec<_>>()
    };
    out.push(gauge(
        "propass_device_online",
        "1 when the kiosk was heard from recently.",
        per_device(&|h| Some(f64::from(u8::from(h.online)))),
    ));
    out.push(gauge(
        "propass_device_backlog",
        "Operations the kiosk has not synced yet (its last heartbeat).",
        per_device(&|h| h.pending.map(f)),
    ));
    out.push(gauge(
        "propass_device_oldest_pending_age_seconds",
        "Age of the kiosk's oldest unsynced operation (0: none).",
        per_device(&|h| {
            Some(
                h.oldest_pending_at
                    .map_or(0.0, |t| f((now - t).num_seconds().max(0))),
            )
        }),
    ));
    out.push(gauge(
        "propass_device_reader_ok",
        "1 when the kiosk's last heartbeat said its reader is present and healthy, 0 when absent or failing (no sample while the kiosk does not know yet).",
        per_device(&|h| {
            h.reader
                .as_deref()
                .filter(|r| *r != "unknown")
                .map(|r| f64::from(u8::from(r == "ok")))
        }),
    ));
    out.push(gauge(
        "propass_device_can_record",
        "1 when the kiosk's database took its last write (0: full or read-only disk, it makes no card).",
        per_device(&|h| h.heartbeat_at.map(|_| f64::from(u8::from(h.storage_error.is_none())))),
    ));
    out.push(gauge(
        "propass_device_write_failures",
        "Failed blank writes since the kiosk's agent started.",
        per_device(&|h| h.blanks_failed.map(f)),
    ));
    out.push(gauge(
        "propass_device_clock_skew_seconds",
        "The kiosk's clock minus the server's at its last heartbeat.",
        per_device(&|h| h.clock_skew_ms.map(|ms| f(ms) / 1000.0)),
    ));
    out
}

/// Each client's quota and flags; `low` is `client_low_quota`.
fn client_gauges(clients: &[db::clients::ClientOverview], low: i64) -> Vec<Gauge> {
    let mut out = Vec::new();
    let per_client = |value: &dyn Fn(&db::clients::ClientOverview) -> f64| {
        clients
            .iter()
            .map(|c| {
                (
                    vec![("client", c.id.to_string()), ("name", c.name.clone())],
                    value(c),
                )
            })
            .collect::<Vec<_>>()
    };
    out.push(gauge(
        "propass_client_remaining",
        "Units of the client's quota no kiosk holds (negative after an overdraft).",
        per_client(&|c| f(c.remaining)),
    ));
    out.push(gauge(
        "propass_client_leased",
        "Units of the client's quota held by kiosks in lease.",
        per_client(&|c| f(c.leased)),
    ));
    out.push(gauge(
        "propass_client_overdrafts",
        "Copies recorded past the client's quota.",
        per_client(&|c| f(c.overdrafts)),
    ));
    out.push(gauge(
        "propass_client_low_quota",
        "1 when the client has client_low_quota free units or fewer.",
        per_client(&|c| f64::from(u8::from(c.remaining <= low))),
    ));
    out
}
