//! `propass-agent run`: opens the database, serves the local API, runs the
//! sync and WebSocket loops, tells systemd when it is ready, pings its
//! watchdog from a loop that touches the database, and stops cleanly on
//! SIGTERM/SIGINT (the transaction in flight completes: database work runs on
//! blocking threads that the runtime waits for).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::agent::Agent;
use crate::config::AgentConfig;
use crate::store::Store;
use crate::{api, ws};

/// The local API socket is the agent user's alone (0600), or shared with
/// `group` (0660) — the kiosk screen's — when one is configured.
fn share_socket(path: &Path, group: Option<&str>) -> Result<(), String> {
    let mode = match group {
        None => 0o600,
        Some(g) => {
            let gid = group_id(g)?;
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(|e| format!("cannot give {} to group {g}: {e}", path.display()))?;
            0o660
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))
}

/// A group's id, from a number or a name in /etc/group.
fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group: {e}"))?;
    groups
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(group)).then(|| f.nth(1)?.parse().ok())?
        })
        .ok_or_else(|| format!("socket_group: no group named {group:?}"))
}

/// Removes a socket left by a previous run; refuses to remove anything else
/// or a socket some process still answers on.
fn clear_stale_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "another agent is already listening on {}",
                    path.display()
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))
        }
        Ok(_) => Err(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )),
    }
}

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(config: AgentConfig) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(serve(config));
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn serve(config: AgentConfig) -> Result<(), String> {
    if let Some(why) = config.server_url_problem() {
        tracing::error!(
            "{why}: the agent does not use it (a server it logged in to is used instead)"
        );
    }
    let db_path = config.db_path();
    let store = Store::open(&db_path).map_err(|e| e.to_string())?;
    tracing::info!(db = %db_path.display(), "database open");
    let agent = Agent::new(store, config.clone())
        .await
        .map_err(|e| e.to_string())?;

    // Whether a reader is there, told before any card is asked for.
    tokio::spawn({
        let agent = agent.clone();
        async move { agent.look_for_reader().await }
    });
    let server = local_api(&agent, &config)?;
    let handle = server.handle();
    let server_task = tokio::spawn(server);

    let (stop_tx, stop_rx) = watch::channel(false);
    let sync_task = tokio::spawn(agent.clone().run_sync_loop(stop_rx.clone()));
    let ws_task = tokio::spawn(ws::run_ws_loop(agent.clone(), stop_rx.clone()));
    let watchdog_task = tokio::spawn(watchdog(agent.clone(), stop_rx));

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(device = %agent.device_id, socket = %config.socket.display(), http = ?config.http_bind, "propass-agent ready");

    wait_for_signal().await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    finish_cards(&agent, &config).await;
    let _ = stop_tx.send(true);
    handle.stop(true).await;
    give_leases_back(&agent).await;
    let _ = tokio::time::timeout(Duration::from_secs(4), async {
        let _ = sync_task.await;
        let _ = ws_task.await;
        let _ = watchdog_task.await;
        let _ = server_task.await;
    })
    .await;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("propass-agent stopped");
    Ok(())
}

/// The local API on the Unix socket (and `http_bind`), not yet running.
fn local_api(agent: &Arc<Agent>, config: &AgentConfig) -> Result<actix_web::dev::Server, String> {
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    clear_stale_socket(&config.socket)?;
    let data = actix_web::web::Data::new(agent.clone());
    let routes = api::routes(config.api_max_body_bytes);
    let mut server =
        HttpServer::new(move || App::new().app_data(data.clone()).configure(routes.clone()))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(3)
            .bind_uds(&config.socket)
            .map_err(|e| format!("cannot listen on {}: {e}", config.socket.display()))?;
    if let Some(addr) = config.http_bind {
        server = server
            .bind(addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    }
    share_socket(&config.socket, config.socket_group.as_deref())?;
    Ok(server.run())
}

async fn wait_for_signal() -> Result<(), String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}

/// A flow waiting for a card ends now (its unit goes back); one writing a
/// blank finishes and records it, within the grace.
async fn finish_cards(agent: &Agent, config: &AgentConfig) {
    agent.writes.close();
    agent.reader.cancel();
    if !agent.writes.drained(config.stop_grace()).await {
        tracing::error!(grace_secs = config.stop_grace_secs, "a card is still being written; stopping anyway: the next start records it as unverified");
    }
}

/// Units set aside for this kiosk go back for other kiosks to spend — once
/// the flows have answered, only when everything is pushed, and without
/// holding the stop up.
async fn give_leases_back(agent: &Agent) {
    match tokio::time::timeout(Duration::from_secs(3), agent.release_leases()).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::info!("leases kept: work is still queued (or none is held)"),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "leases not given back: this kiosk spends none of them until its next pull; the server has them back when an operator reclaims them or this kiosk returns")
        }
        Err(_) => tracing::info!(
            "leases not given back in time: this kiosk spends none of them until its next pull"
        ),
    }
}

/// Pings systemd's watchdog only while the database takes writes: a kiosk
/// whose disk is full or read-only must not make cards it cannot record, so
/// systemd restarts it (and the failure shows) instead. Without a watchdog,
/// it tries the disk every `heartbeat_secs` while it fails, so the cards
/// waiting for it are recorded once it is fixed — offline too, when no
/// heartbeat goes out.
async fn watchdog(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let systemd = sd_notify::watchdog_enabled();
    let period = systemd.map_or(agent.config.heartbeat(), |timeout| {
        (timeout / 2).max(Duration::from_millis(100))
    });
    loop {
        let failing = agent.storage.error().is_some() || !agent.unsettled.lock().await.is_empty();
        if systemd.is_some() || failing {
            let writes = crate::kiosk::check_storage(&agent).await.is_ok();
            if writes && systemd.is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}
