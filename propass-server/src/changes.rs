//! Changes made outside a request's own answer reach the live parts here: a
//! dedicated PostgreSQL connection LISTENs on four channels —
//! quota changes (top-ups, voids, leases) become `quota_updated` for the
//! kiosks serving the client and a `client` event for dashboards; device
//! changes (status, assignment) update the hub's client index or close the
//! device's sockets; a user whose tokens ended (disabled, password or role
//! changed) has its sockets and dashboards closed; every audit entry is shown
//! on dashboards, with a refresh of the client or kiosk it names.
//! Reconnects forever; a notification sent while it was disconnected is lost
//! (kiosks also pull, each socket's heartbeat re-checks its standing, and a
//! dashboard refetches when its stream reconnects), so it is a hint, not
//! the truth.

use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use propass_protocol::{ClientId, DeviceId, DeviceStatus, QuotaUpdated};

use crate::db;
use crate::error::ApiError;
use crate::live;
use crate::state::AppState;

/// Pause before reconnecting a lost listener connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Listens until the task is aborted; `state.metrics.listening` says
/// whether it is LISTENing now.
pub async fn listen_for_changes(database_url: String, state: &AppState) {
    loop {
        let outcome = listen_once(&database_url, state).await;
        state.metrics.listening.store(false, Ordering::Relaxed);
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "change listener disconnected; reconnecting");
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn listen_once(database_url: &str, state: &AppState) -> Result<(), String> {
    let mut conn = db::connect::connect(database_url)
        .await
        .map_err(|e| e.to_string())?;
    for channel in [
        db::clients::QUOTA_CHANNEL,
        db::devices::DEVICE_CHANNEL,
        db::users::USER_CHANNEL,
        db::audit::AUDIT_CHANNEL,
    ] {
        diesel::sql_query(format!("LISTEN {channel}"))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    state.metrics.listening.store(true, Ordering::Relaxed);
    tracing::debug!("listening for changes");
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(n) = stream.next().await {
        let n = n.map_err(|e| e.to_string())?;
        let outcome = match n.channel.as_str() {
            db::clients::QUOTA_CHANNEL => on_quota(state, &n.payload).await,
            db::devices::DEVICE_CHANNEL => on_device(state, &n.payload).await,
            db::users::USER_CHANNEL => {
                if let Ok(uid) = n.payload.parse::<i64>() {
                    state.hub.close_user(uid, "token revoked: log in again");
                    state.live.end_user(
                        uid,
                        "your account changed (disabled, new password or role): log in again",
                    );
                }
                Ok(())
            }
            db::audit::AUDIT_CHANNEL => on_audit(state, &n.payload).await,
            _ => Ok(()),
        };
        if let Err(e) = outcome {
            tracing::warn!(channel = %n.channel, error = %e, "cannot apply a change notification");
        }
    }
    Ok(())
}

async fn on_quota(state: &AppState, payload: &str) -> Result<(), ApiError> {
    let Ok(client) = payload.parse::<ClientId>() else {
        return Ok(());
    };
    let mut conn = state.pool.get().await?;
    if let Some((remaining, version)) = db::clients::remaining_of(&mut conn, client).await? {
        state.hub.send_quota_updates(&[QuotaUpdated {
            client_id: client,
            remaining,
            version: Some(version),
        }]);
    }
    drop(conn);
    publish_clients(state, &[client.get()]).await
}

/// Sends dashboards the `client` event of each of `clients` as they are now
/// (nothing, and no query, when no dashboard is open).
pub async fn publish_clients(state: &AppState, clients: &[i64]) -> Result<(), ApiError> {
    if state.live.is_empty() || clients.is_empty() {
        return Ok(());
    }
    let mut conn = state.pool.get().await?;
    for id in clients {
        if let Some(c) = db::clients::overview(&mut conn, Some(*id), true)
            .await?
            .pop()
        {
            let c = crate::admin::flagged(c, state.config.client_low_quota);
            state.live.publish(&live::frame("client", &c));
        }
    }
    Ok(())
}

/// Tells dashboards that something about `device` changed (they refetch).
pub fn publish_device(state: &AppState, device: &DeviceId) {
    if !state.live.is_empty() {
        state.live.publish(&live::frame(
            "device",
            &serde_json::json!({"device_id": device}),
        ));
    }
}

async fn on_device(state: &AppState, payload: &str) -> Result<(), ApiError> {
    let Ok(device) = DeviceId::parse(payload) else {
        return Ok(());
    };
    publish_device(state, &device);
    if !state.hub.is_connected(&device) {
        return Ok(());
    }
    let mut conn = state.pool.get().await?;
    let status = db::devices::state(&mut conn, &device).await?;
    match status.map(|s| s.status) {
        Some(DeviceStatus::Active) => {
            let clients = db::devices::served_clients(&mut conn, &device).await?;
            state.hub.set_assignment(&device, clients);
        }
        Some(DeviceStatus::Revoked) | None => state.hub.close_device(&device, "device revoked"),
        Some(DeviceStatus::Pending) => state.hub.close_device(&device, "device not active"),
    }
    Ok(())
}

async fn on_audit(state: &AppState, payload: &str) -> Result<(), ApiError> {
    if state.live.is_empty() {
        return Ok(());
    }
    let Ok(id) = payload.parse::<i64>() else {
        return Ok(());
    };
    let entry = {
        let mut conn = state.pool.get().await?;
        db::audit::get(&mut conn, id).await?
    };
    let Some(entry) = entry else {
        return Ok(());
    };
    state.live.publish(&live::frame("audit", &entry));
    // A rename or an archive changes no quota: the entry is what tells pages.
    if let Some(id) = entry
        .subject
        .strip_prefix("client:")
        .and_then(|c| c.parse().ok())
    {
        publish_clients(state, &[id]).await?;
    }
    if let Some(d) = entry
        .subject
        .strip_prefix("device:")
        .and_then(|d| DeviceId::parse(d).ok())
    {
        publish_device(state, &d);
    }
    Ok(())
}
