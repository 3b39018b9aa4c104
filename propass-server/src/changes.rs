//! Changes made outside a request's own answer reach the live parts here: a
//! dedicated PostgreSQL connection LISTENs on six channels — what another
//! instance saw: the new copies of its pushes (`copy_completed` and, for a
//! pusher with no socket there, `sync_completed` for the pushing device's
//! sockets here, `quota_updated` for the kiosks serving the charged clients,
//! and the copies and clients on dashboards) and the kiosks whose socket
//! opened or closed or whose heartbeat came there (dashboards get their
//! rows); a client's terms changed (its kiosks are asked to pull);
//! quota changes (top-ups, voids, leases) become `quota_updated` for the
//! kiosks serving the client and a `client` event for dashboards; device
//! changes (status, assignment) update the hub's client index or close the
//! device's sockets; a user whose tokens ended (disabled, password or role
//! changed) has its sockets and dashboards closed; every audit entry is shown
//! on dashboards, with a refresh of the client or kiosk it names.
//! Reconnects forever. A notification sent while it was disconnected is
//! lost, so after a reconnect it catches up from the database: every open
//! socket re-checks its standing and asks its kiosk to pull at its next
//! ping, the quotas of every
//! client a connected kiosk serves are sent again, and open dashboards are
//! told to refetch (`hello`). Notifications are hints; PostgreSQL is
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
    let mut first = true;
    loop {
        let outcome = listen_once(&database_url, state, first).await;
        first = false;
        state.metrics.listening.store(false, Ordering::Relaxed);
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "change listener disconnected; reconnecting");
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn listen_once(database_url: &str, state: &AppState, first: bool) -> Result<(), String> {
    let mut conn = db::connect::connect(database_url)
        .await
        .map_err(|e| e.to_string())?;
    for channel in [
        db::clients::QUOTA_CHANNEL,
        db::clients::CLIENT_CHANNEL,
        db::devices::DEVICE_CHANNEL,
        db::users::USER_CHANNEL,
        db::audit::AUDIT_CHANNEL,
        db::ledger_view::COPY_CHANNEL,
    ] {
        diesel::sql_query(format!("LISTEN {channel}"))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    state.metrics.listening.store(true, Ordering::Relaxed);
    tracing::debug!("listening for changes");
    if !first {
        if let Err(e) = catch_up(state).await {
            tracing::warn!(error = %e, "cannot catch up after the listener reconnected");
        }
    }
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(n) = stream.next().await {
        let n = n.map_err(|e| e.to_string())?;
        let outcome = match n.channel.as_str() {
            db::clients::QUOTA_CHANNEL => on_quota(state, &n.payload).await,
            db::devices::DEVICE_CHANNEL => on_device(state, &n.payload).await,
            db::clients::CLIENT_CHANNEL => {
                if let Ok(client) = n.payload.parse::<i64>() {
                    state.hub.request_sync_of_client(client);
                }
                Ok(())
            }
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
            db::ledger_view::COPY_CHANNEL => on_announcement(state, &n.payload).await,
            _ => Ok(()),
        };
        if let Err(e) = outcome {
            tracing::warn!(channel = %n.channel, error = %e, "cannot apply a change notification");
        }
    }
    Ok(())
}

/// What the listener may have missed while it was away: every connected
/// kiosk's standing and clients are read again (two queries for all of
/// them) and applied as an event would have; at its next ping every socket
/// asks its kiosk to pull (what only a pull tells: a client's terms, the
/// kiosk's lease) and sockets of login tokens re-check their user (a
/// disable may have been missed); every client a connected kiosk serves
/// gets its quota sent again, and dashboards refetch.
async fn catch_up(state: &AppState) -> Result<(), ApiError> {
    state.hub.request_recheck();
    let devices = state.hub.connected_devices();
    if !devices.is_empty() {
        let standings = {
            let mut conn = state.pool.get().await?;
            db::devices::standings(&mut conn, &devices).await?
        };
        for device in &devices {
            match standings.get(device) {
                Some((standing, clients)) => {
                    if apply_standing(state, device, standing, clients.clone()) {
                        state.hub.request_sync(device);
                    }
                }
                None => state.hub.close_device(device, "device revoked"),
            }
        }
    }
    send_quotas(state, &state.hub.served_clients()).await?;
    state
        .live
        .publish(&live::frame("hello", &serde_json::json!({"resync": true})));
    Ok(())
}

/// Sends the kiosks serving each of `clients` its quota as it is now.
async fn send_quotas(state: &AppState, clients: &[i64]) -> Result<(), ApiError> {
    if clients.is_empty() {
        return Ok(());
    }
    let mut conn = state.pool.get().await?;
    let mut updates = Vec::with_capacity(clients.len());
    for c in clients {
        let Ok(client) = ClientId::new(*c) else {
            continue;
        };
        if let Some((remaining, version)) = db::clients::remaining_of(&mut conn, client).await? {
            updates.push(QuotaUpdated {
                client_id: client,
                remaining,
                version: Some(version),
            });
        }
    }
    state.hub.send_quota_updates(&updates);
    Ok(())
}

/// The dashboards' `copy` event of a new copy (never its badge UID).
pub fn copy_frame(
    c: &propass_protocol::CopyCompleted,
    received_at: chrono::DateTime<chrono::Utc>,
    unverified: bool,
) -> live::Frame {
    live::frame(
        "copy",
        &serde_json::json!({
            "id": c.ledger_id,
            "device_id": c.device_id,
            "client_id": c.client_id,
            "kind": c.op_type,
            "occurred_at": c.occurred_at,
            "received_at": received_at,
            "overdraft": c.overdraft,
            "unverified": unverified,
        }),
    )
}

/// Sends what this instance saw (pushes, kiosks' sockets and heartbeats)
/// to the others, as it accumulates (see [`crate::announce`]), until the
/// task is aborted. A notification that cannot be sent is lost (logged):
/// events are hints.
pub async fn announce(state: &AppState) {
    loop {
        let batch = state.announcements.next().await;
        let payloads = crate::announce::encode(&state.instance, batch);
        let mut sent = 0;
        let sending = async {
            let mut conn = state.pool.get().await?;
            for payload in &payloads {
                db::ledger_view::announce(&mut conn, payload).await?;
                sent += 1;
            }
            Ok::<_, ApiError>(())
        };
        if let Err(e) = sending.await {
            // Put back for the next batch; the pause spares a database that
            // is away a tight loop.
            tracing::warn!(error = %e, "cannot announce to the other instances; retrying");
            for p in &payloads[sent..] {
                if let Some((_, b)) = crate::announce::decode(p) {
                    state.announcements.restore(b);
                }
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }
}

/// Stores the kiosks' heartbeats (over WebSockets and HTTP alike): whatever
/// accumulated while the previous write was in flight, in one transaction (see
/// [`crate::heartbeats`]); then dashboards here and on the other instances
/// get those kiosks' rows. A write that fails is put back and retried. Once
/// the queue is closed (the server stops), it stores what is pending, once,
/// and ends.
pub async fn store_heartbeats(state: &AppState) {
    loop {
        let Some(batch) = state.heartbeats.next().await else {
            return;
        };
        match write_heartbeats(state, &batch.beats).await {
            Ok(()) => state.heartbeats.stored(&batch),
            Err(e) if state.heartbeats.is_closed() => {
                tracing::warn!(error = %e, kiosks = batch.beats.len(), "heartbeats not stored at shutdown");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, kiosks = batch.beats.len(), "cannot store heartbeats; retrying");
                state.heartbeats.restore(batch);
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Stores `batch` in one transaction; then dashboards here and elsewhere
/// get those kiosks' rows.
async fn write_heartbeats(
    state: &AppState,
    batch: &[crate::heartbeats::Received],
) -> Result<(), ApiError> {
    if batch.is_empty() {
        return Ok(());
    }
    let beats: Vec<_> = batch
        .iter()
        .map(|r| (&r.device, &r.heartbeat, r.at))
        .collect();
    let mut conn = state.pool.get().await?;
    db::fleet::record_many(&mut conn, &beats).await?;
    state
        .metrics
        .heartbeat_writes
        .fetch_add(1, Ordering::Relaxed);
    let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    state
        .metrics
        .heartbeats_stored
        .fetch_add(n, Ordering::Relaxed);
    for r in batch {
        publish_device(state, &r.device);
        state.announcements.device_changed(&r.device);
    }
    Ok(())
}

/// What another instance saw: its pushes' copies for the pushing devices'
/// sockets here and for dashboards, the charged clients' quotas, and the
/// kiosks whose rows dashboards here should get (socket opened or closed
/// there, heartbeat), and the push summaries for pushers' sockets here.
async fn on_announcement(state: &AppState, payload: &str) -> Result<(), ApiError> {
    let Some((instance, batch)) = crate::announce::decode(payload) else {
        return Ok(());
    };
    if instance == state.instance {
        return Ok(());
    }
    for d in &batch.devices {
        publish_device(state, d);
    }
    for r in batch.ranges {
        // One range that cannot be read does not lose the others.
        if let Err(e) = on_copy_range(state, r.device, r.min, r.max).await {
            tracing::warn!(error = %e, "cannot relay another instance's push");
        }
    }
    // After the copies, as the pushing instance sends them.
    for s in batch.syncs {
        if state.hub.is_connected(&s.device_id) {
            let device = s.device_id.clone();
            let msg = [propass_protocol::WsMessage::SyncCompleted(s)];
            state.hub.send_all_to_device(&device, &msg);
        }
    }
    Ok(())
}

/// One device's new copies with ids in `min..=max`.
async fn on_copy_range(
    state: &AppState,
    device: DeviceId,
    min: i64,
    max: i64,
) -> Result<(), ApiError> {
    if !state.hub.is_connected(&device) && state.live.is_empty() && !state.hub.any_serving() {
        return Ok(());
    }
    let rows = {
        let mut conn = state.pool.get().await?;
        db::ledger_view::announced(&mut conn, device.as_str(), min, max).await?
    };
    let mut msgs = Vec::with_capacity(rows.len());
    let mut clients: Vec<i64> = Vec::new();
    for r in &rows {
        let (Ok(client_id), Ok(uid), Ok(op_type)) = (
            ClientId::new(r.client_id),
            propass_protocol::BadgeUid::parse(&r.uid),
            r.kind.parse::<propass_protocol::OpType>(),
        ) else {
            continue;
        };
        let copy = propass_protocol::CopyCompleted {
            ledger_id: r.id,
            client_id,
            uid,
            op_type,
            device_id: device.clone(),
            id: r.local_id,
            op_id: r.op_id.map(propass_protocol::OpId),
            occurred_at: r.occurred_at,
            overdraft: r.overdraft,
        };
        if !state.live.is_empty() {
            state
                .live
                .publish(&copy_frame(&copy, r.received_at, r.unverified));
        }
        if !clients.contains(&r.client_id) {
            clients.push(r.client_id);
        }
        msgs.push(propass_protocol::WsMessage::CopyCompleted(copy));
    }
    state.hub.send_all_to_device(&device, &msgs);
    send_quotas(state, &clients).await?;
    publish_clients(state, &clients).await
}

async fn on_quota(state: &AppState, payload: &str) -> Result<(), ApiError> {
    let Ok(client) = payload.parse::<ClientId>() else {
        return Ok(());
    };
    send_quotas(state, &[client.get()]).await?;
    publish_clients(state, &[client.get()]).await
}

/// Sends dashboards the `client` event of each of `clients` as they are now,
/// read in one query (nothing, and no query, when no dashboard is open).
pub async fn publish_clients(state: &AppState, clients: &[i64]) -> Result<(), ApiError> {
    if state.live.is_empty() || clients.is_empty() {
        return Ok(());
    }
    let rows = {
        let mut conn = state.pool.get().await?;
        db::clients::overview(&mut conn, Some(clients), true).await?
    };
    for c in rows {
        let c = crate::admin::flagged(c, state.config.client_low_quota);
        state.live.publish(&live::frame("client", &c));
    }
    Ok(())
}

/// Notes that `device`'s row on the dashboards changed: [`publish_devices`]
/// sends it (nothing when no dashboard is open).
pub fn publish_device(state: &AppState, device: &DeviceId) {
    if !state.live.is_empty() {
        state.changed_devices.note(device);
    }
}

/// Kiosk rows in one `devices` event at most: a storm of changes (a fleet
/// reconnecting) is a few frames, not one per kiosk in every page's queue.
const DEVICES_PER_FRAME: usize = 500;

/// Sends open dashboards the rows of the kiosks that changed (see
/// [`live::ChangedDevices`]), as the fleet list shows them, read for all of
/// them in one go and sent in `devices` events of up to
/// [`DEVICES_PER_FRAME`] rows. Rows that cannot be read are put back and
/// tried again; runs until the task is aborted.
pub async fn publish_devices(state: &AppState) {
    loop {
        let ids = state.changed_devices.next().await;
        if state.live.is_empty() {
            continue;
        }
        let read = async {
            let mut conn = state.pool.get().await?;
            let now = state.clock.now();
            Ok::<_, ApiError>(
                crate::admin::devices(&mut conn, Some(&ids), state.config.fleet, now).await?,
            )
        };
        match read.await {
            Ok(rows) => {
                for chunk in rows.chunks(DEVICES_PER_FRAME) {
                    let frame = live::frame("devices", &serde_json::json!({ "devices": chunk }));
                    state.live.publish(&frame);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read kiosks for the dashboards; retrying");
                state.changed_devices.restore(ids);
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// How often open dashboards get the rows that changed by time alone.
const AGING_TICK: Duration = Duration::from_secs(5);

/// Sends open dashboards the rows of kiosks that changed by time alone (one
/// silent past `device_offline_after` goes offline, a backlog passes
/// `device_backlog_age_secs`): no socket closes and no heartbeat arrives to
/// announce those. Every [`AGING_TICK`], what aged since the last look is
/// handed to [`publish_devices`]; each instance does this for its own
/// dashboards. Runs until the task is aborted.
pub async fn publish_aging(state: &AppState) {
    let mut since = state.clock.now();
    loop {
        tokio::time::sleep(AGING_TICK).await;
        let until = state.clock.now();
        if state.live.is_empty() {
            since = until;
            continue;
        }
        let aged = async {
            let mut conn = state.pool.get().await?;
            Ok::<_, ApiError>(db::fleet::aging(&mut conn, state.config.fleet, since, until).await?)
        };
        match aged.await {
            Ok(ids) => {
                for device in &ids {
                    state.changed_devices.note(device);
                }
                since = until;
            }
            // `since` stays: the next look covers this one's span too.
            Err(e) => tracing::warn!(error = %e, "cannot look for aged kiosk rows; retrying"),
        }
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
    let Some(standing) = db::devices::state(&mut conn, &device).await? else {
        state.hub.close_device(&device, "device revoked");
        return Ok(());
    };
    let clients = match standing.status {
        DeviceStatus::Active => db::devices::served_clients(&mut conn, &device).await?,
        _ => Vec::new(),
    };
    drop(conn);
    apply_standing(state, &device, &standing, clients);
    // Its clients or its leases changed: the kiosk pulls now rather than at
    // its next safety-net pull.
    state.hub.request_sync(&device);
    Ok(())
}

/// Applies what the database says of a connected device to its sockets:
/// closes them when it is no longer active, closes those of a token epoch
/// it left behind, and indexes the clients it serves; whether its clients
/// changed.
fn apply_standing(
    state: &AppState,
    device: &DeviceId,
    standing: &db::devices::DeviceState,
    clients: Vec<i64>,
) -> bool {
    match standing.status {
        DeviceStatus::Revoked => state.hub.close_device(device, "device revoked"),
        DeviceStatus::Pending => state.hub.close_device(device, "device not active"),
        DeviceStatus::Active => {
            state.hub.close_stale_device_tokens(
                device,
                standing.token_epoch,
                "device credentials revoked",
            );
            return state.hub.set_assignment(device, clients);
        }
    }
    false
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

/// What follows a committed push: the charged quotas to the kiosks serving
/// those clients, its answers' events to the pushing device, its new copies
/// and charged clients on open dashboards (they see the badge UID in the
/// ledger, not in the feed), and the copies and the push's summary
/// announced to the other instances (their kiosks and dashboards).
pub async fn after_push(state: &AppState, device: &DeviceId, done: &crate::push::PushDone) {
    state.hub.send_quota_updates(&done.quota_updates);
    state.hub.send_all_to_device(device, &done.to_pusher);
    let copies: Vec<&propass_protocol::CopyCompleted> = done
        .to_pusher
        .iter()
        .filter_map(|m| match m {
            propass_protocol::WsMessage::CopyCompleted(c) => Some(c),
            _ => None,
        })
        .collect();
    let ids = copies.iter().map(|c| c.ledger_id);
    if let (Some(min), Some(max)) = (ids.clone().min(), ids.max()) {
        state.announcements.add(device, min, max);
    }
    // A kiosk keeps one socket: when it is here, the summary went out above
    // and the other instances need not carry it.
    if !state.hub.is_connected(device) {
        for m in &done.to_pusher {
            if let propass_protocol::WsMessage::SyncCompleted(s) = m {
                state.announcements.synced(s.clone());
            }
        }
    }
    if state.live.is_empty() {
        return;
    }
    let received_at = state.clock.now();
    for c in copies {
        let unverified = done.unverified.contains(&c.ledger_id);
        state.live.publish(&copy_frame(c, received_at, unverified));
    }
    let clients: Vec<i64> = done
        .quota_updates
        .iter()
        .map(|q| q.client_id.get())
        .collect();
    if let Err(e) = publish_clients(state, &clients).await {
        tracing::debug!(error = %e, "cannot show charged clients on dashboards");
    }
}
