//! Quota changes made outside a push (the operator CLI's `quota add`
//! NOTIFYs) reach the hub here: a dedicated PostgreSQL connection LISTENs,
//! and each notification becomes a `quota_updated` for every WebSocket.
//! Reconnects forever; a notification sent while it was disconnected is lost
//! (kiosks also pull), so it is a hint, not the truth.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use propass_protocol::{ClientId, QuotaUpdated, WsMessage};

use super::hub::Hub;
use crate::db::{self, PgPool};

/// Pause before reconnecting a lost listener connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Listens until the task is aborted.
pub async fn listen_for_quota_changes(database_url: String, pool: PgPool, hub: &Hub) {
    loop {
        if let Err(e) = listen_once(&database_url, &pool, hub).await {
            tracing::warn!(error = %e, "quota listener disconnected; reconnecting");
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn listen_once(database_url: &str, pool: &PgPool, hub: &Hub) -> Result<(), String> {
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .map_err(|e| e.to_string())?;
    diesel::sql_query(format!("LISTEN {}", db::clients::QUOTA_CHANNEL))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!("listening for quota changes");
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(n) = stream.next().await {
        let n = n.map_err(|e| e.to_string())?;
        let Ok(client) = n.payload.parse::<ClientId>() else {
            continue;
        };
        let remaining = match pool.get().await {
            Ok(mut c) => db::clients::remaining_of(&mut c, client)
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        if let Some((remaining, version)) = remaining {
            hub.broadcast(&WsMessage::QuotaUpdated(QuotaUpdated {
                client_id: client,
                remaining,
                version: Some(version),
            }));
        }
    }
    Ok(())
}
