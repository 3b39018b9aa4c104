//! Kiosk heartbeats that came over WebSockets, waiting to be stored. Each
//! stored alone would cost two writes and a commit — at 10,000 kiosks every
//! 30 s, hundreds of commits a second for what is only the latest state of
//! each kiosk. So sessions only note the latest heartbeat per device here,
//! and one writer (`changes::store_heartbeats`) stores whatever accumulated
//! while its previous write was in flight, in one transaction — under load,
//! many kiosks per write; when idle, one right away. A leaf: no I/O.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use propass_protocol::{DeviceId, KioskHeartbeat};
use tokio::sync::Notify;

/// A heartbeat and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub device: DeviceId,
    pub heartbeat: KioskHeartbeat,
    pub at: DateTime<Utc>,
}

/// The latest heartbeat of each device not stored yet: at most one per
/// connected kiosk, whatever the rate.
#[derive(Default)]
pub struct Heartbeats {
    pending: Mutex<HashMap<DeviceId, Received>>,
    wake: Notify,
}

impl Heartbeats {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, Received>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a heartbeat; it replaces one of the same device not stored yet.
    pub fn offer(&self, received: Received) {
        self.lock().insert(received.device.clone(), received);
        self.wake.notify_one();
    }

    /// Takes everything pending (possibly nothing).
    pub fn take(&self) -> Vec<Received> {
        self.lock().drain().map(|(_, r)| r).collect()
    }

    /// Waits for heartbeats to store and takes them all.
    pub async fn next(&self) -> Vec<Received> {
        loop {
            let taken = self.take();
            if !taken.is_empty() {
                return taken;
            }
            self.wake.notified().await;
        }
    }

    /// Puts back heartbeats that could not be stored, unless a newer one of
    /// the same device came meanwhile.
    pub fn restore(&self, batch: Vec<Received>) {
        let mut pending = self.lock();
        for r in batch {
            pending.entry(r.device.clone()).or_insert(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use propass_protocol::ReaderHealth;

    fn beat(device: &str, pending: i64) -> Received {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        Received {
            device: DeviceId::parse(device).unwrap(),
            heartbeat: KioskHeartbeat {
                agent_version: "0.1.0".into(),
                pending,
                failed: 0,
                oldest_pending_at: None,
                last_sync_at: None,
                last_error: None,
                reader: ReaderHealth::Ok,
                blanks_written: 0,
                blanks_failed: 0,
                storage_error: None,
                clock: at,
            },
            at,
        }
    }

    fn pending_of(batch: &[Received]) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = batch
            .iter()
            .map(|r| (r.device.to_string(), r.heartbeat.pending))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn the_latest_heartbeat_of_each_kiosk_is_taken_once() {
        let h = Heartbeats::default();
        h.offer(beat("K1", 1));
        h.offer(beat("K2", 5));
        h.offer(beat("K1", 2));
        let batch = h.next().await;
        assert_eq!(
            pending_of(&batch),
            [("K1".into(), 2), ("K2".into(), 5)],
            "one per kiosk, the latest"
        );
        assert!(h.take().is_empty(), "taken once");
    }

    #[test]
    fn a_failed_write_is_put_back_unless_a_newer_heartbeat_came() {
        let h = Heartbeats::default();
        h.offer(beat("K1", 1));
        h.offer(beat("K2", 5));
        let failed = h.take();
        h.offer(beat("K1", 3));
        h.restore(failed);
        assert_eq!(pending_of(&h.take()), [("K1".into(), 3), ("K2".into(), 5)]);
    }
}
