//! Changes made outside this process reach the hub here: a dedicated
//! PostgreSQL connection LISTENs on three channels —
//! quota changes (operator top-ups) become `quota_updated` for the kiosks
//! serving the client; device changes (status, assignment) update the hub's
//! client index or close the device's sockets; a user whose tokens ended
//! (disabled, password or role changed) has its sockets closed.
//! Reconnects forever; a notification sent while it was disconnected is lost
//! (kiosks also pull, and each socket's heartbeat re-checks its standing), so
//! it is a hint, not the truth.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use propass_protocol::{ClientId, DeviceId, DeviceStatus, QuotaUpdated};

use super::hub::Hub;
use crate::db::{self, PgPool};

/// Pause before reconnecting a lost listener connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Listens until the task is aborted.
/// `listening` says whether it is LISTENing now.
pub async fn listen_for_changes(
    database_url: String,
    pool: PgPool,
    hub: &Hub,
    listening: &AtomicBool,
) {
    loop {
        let outcome = listen_once(&database_url, &pool, hub, listening).await;
        listening.store(false, Ordering::Relaxed);
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "change listener disconnected; reconnecting");
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn listen_once(
    database_url: &str,
    pool: &PgPool,
    hub: &Hub,
    listening: &AtomicBool,
) -> Result<(), String> {
    let mut conn = db::connect::connect(database_url)
        .await
        .map_err(|e| e.to_string())?;
    for channel in [
        db::clients::QUOTA_CHANNEL,
        db::devices::DEVICE_CHANNEL,
        db::users::USER_CHANNEL,
    ] {
        diesel::sql_query(format!("LISTEN {channel}"))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    listening.store(true, Ordering::Relaxed);
    tracing::debug!("listening for changes");
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(n) = stream.next().await {
        let n = n.map_err(|e| e.to_string())?;
        let outcome = match n.channel.as_str() {
            db::clients::QUOTA_CHANNEL => on_quota(pool, hub, &n.payload).await,
            db::devices::DEVICE_CHANNEL => on_device(pool, hub, &n.payload).await,
            db::users::USER_CHANNEL => {
                if let Ok(uid) = n.payload.parse::<i64>() {
                    hub.close_user(uid, "token revoked: log in again");
                }
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = outcome {
            tracing::warn!(channel = %n.channel, error = %e, "cannot apply a change notification");
        }
    }
    Ok(())
}

async fn on_quota(pool: &PgPool, hub: &Hub, payload: &str) -> Result<(), String> {
    let Ok(client) = payload.parse::<ClientId>() else {
        return Ok(());
    };
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    if let Some((remaining, version)) = db::clients::remaining_of(&mut conn, client)
        .await
        .map_err(|e| e.to_string())?
    {
        hub.send_quota_updates(&[QuotaUpdated {
            client_id: client,
            remaining,
            version: Some(version),
        }]);
    }
    Ok(())
}

async fn on_device(pool: &PgPool, hub: &Hub, payload: &str) -> Result<(), String> {
    let Ok(device) = DeviceId::parse(payload) else {
        return Ok(());
    };
    if !hub.is_connected(&device) {
        return Ok(());
    }
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let state = db::devices::state(&mut conn, &device)
        .await
        .map_err(|e| e.to_string())?;
    match state.map(|s| s.status) {
        Some(DeviceStatus::Active) => {
            let clients = db::devices::served_clients(&mut conn, &device)
                .await
                .map_err(|e| e.to_string())?;
            hub.set_assignment(&device, clients);
        }
        Some(DeviceStatus::Revoked) | None => hub.close_device(&device, "device revoked"),
        Some(DeviceStatus::Pending) => hub.close_device(&device, "device not active"),
    }
    Ok(())
}
