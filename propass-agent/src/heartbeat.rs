//! What the kiosk tells the server about itself, every `heartbeat_secs`:
//! over the WebSocket (`ws`), or with each sync while the socket is down
//! (`sync`). Operators see the latest in the fleet view.

use propass_protocol::KioskHeartbeat;

use crate::agent::Agent;
use crate::store::StoreError;

/// How long a heartbeat waits to learn whether a reader is there.
const LOOK_FOR_READER: std::time::Duration = std::time::Duration::from_secs(2);

/// The kiosk now: its queue, last sync, reader, writes since start,
/// whether its database takes writes (tried now), clock.
pub async fn heartbeat(agent: &Agent) -> Result<KioskHeartbeat, StoreError> {
    use std::sync::atomic::Ordering::Relaxed;
    // What fails is said in the heartbeat: the reads below still work on a
    // full or read-only disk.
    let _ = crate::kiosk::check_storage(agent).await;
    // Behind a flow that holds the reader, the look waits: the heartbeat does not.
    let _ = tokio::time::timeout(LOOK_FOR_READER, agent.look_for_reader()).await;
    let counts = agent.store.counts().await?;
    let link = agent.link();
    Ok(KioskHeartbeat {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        pending: counts.pending,
        failed: counts.failed,
        oldest_pending_at: counts.oldest_pending_at,
        last_sync_at: agent.store.last_sync_at().await?,
        last_error: link.last_error,
        reader: agent.reader_stats.health(),
        blanks_written: agent.reader_stats.written.load(Relaxed),
        blanks_failed: agent.reader_stats.failed.load(Relaxed),
        storage_error: agent.storage.error(),
        clock: agent.clock.now_utc(),
    })
}
