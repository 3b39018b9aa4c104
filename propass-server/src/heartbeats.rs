//! Kiosk heartbeats waiting to be stored. Each stored alone would cost two
//! writes and a commit — at 10,000 kiosks every 30 s, hundreds of commits a
//! second for what is only the latest state of each kiosk. So requests only
//! note the latest heartbeat per device here, and one writer
//! (`changes::store_heartbeats`) stores whatever accumulated while its
//! previous write was in flight, in one transaction — under load, many
//! kiosks per write; when idle, one right away. A heartbeat over a
//! WebSocket is not answered; one over HTTP is answered once it is stored
//! (group commit: each offer gets a ticket, each write says which tickets
//! it covered). A leaf: no I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use propass_protocol::{DeviceId, KioskHeartbeat};
use tokio::sync::{watch, Notify};

/// A heartbeat and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub device: DeviceId,
    pub heartbeat: KioskHeartbeat,
    pub at: DateTime<Utc>,
}

/// What was taken to be stored: the heartbeats, and the last ticket offered
/// before they were taken (a write of them covers every ticket up to it).
#[derive(Debug, Default)]
pub struct Batch {
    pub beats: Vec<Received>,
    pub through: u64,
}

#[derive(Default)]
struct Pending {
    beats: HashMap<DeviceId, Received>,
    /// The last ticket handed out.
    ticket: u64,
}

/// The latest heartbeat of each device not stored yet: at most one per
/// connected kiosk, whatever the rate.
pub struct Heartbeats {
    pending: Mutex<Pending>,
    wake: Notify,
    /// Every ticket up to this one is stored.
    stored: watch::Sender<u64>,
    /// The server is stopping: the writer ends once nothing is pending.
    closed: AtomicBool,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            wake: Notify::new(),
            stored: watch::Sender::new(0),
            closed: AtomicBool::new(false),
        }
    }
}

impl Heartbeats {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a heartbeat (it replaces one of the same device not stored
    /// yet); its ticket, for [`Self::wait_stored`].
    pub fn offer(&self, received: Received) -> u64 {
        let mut p = self.lock();
        p.ticket += 1;
        p.beats.insert(received.device.clone(), received);
        let ticket = p.ticket;
        drop(p);
        self.wake.notify_one();
        ticket
    }

    /// Takes everything pending (possibly nothing).
    pub fn take(&self) -> Batch {
        let mut p = self.lock();
        Batch {
            beats: p.beats.drain().map(|(_, r)| r).collect(),
            through: p.ticket,
        }
    }

    /// Waits for heartbeats to store and takes them all; `None` once
    /// [`Self::close`]d with nothing pending.
    pub async fn next(&self) -> Option<Batch> {
        loop {
            let taken = self.take();
            if !taken.beats.is_empty() {
                return Some(taken);
            }
            if self.is_closed() {
                return None;
            }
            self.wake.notified().await;
        }
    }

    /// The server is stopping: the writer stores what is pending and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether [`Self::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Puts back heartbeats that could not be stored, unless a newer one of
    /// the same device came meanwhile.
    pub fn restore(&self, batch: Batch) {
        let mut p = self.lock();
        for r in batch.beats {
            p.beats.entry(r.device.clone()).or_insert(r);
        }
    }

    /// `batch` is stored: its offers' waiters are answered.
    pub fn stored(&self, batch: &Batch) {
        self.stored.send_if_modified(|through| {
            let newer = batch.through > *through;
            if newer {
                *through = batch.through;
            }
            newer
        });
    }

    /// Whether the heartbeat of `ticket` was stored within `within`.
    pub async fn wait_stored(&self, ticket: u64, within: Duration) -> bool {
        let mut stored = self.stored.subscribe();
        let answered = tokio::time::timeout(within, stored.wait_for(|t| *t >= ticket))
            .await
            .is_ok_and(|r| r.is_ok());
        answered
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
        let batch = h.next().await.unwrap().beats;
        assert_eq!(
            pending_of(&batch),
            [("K1".into(), 2), ("K2".into(), 5)],
            "one per kiosk, the latest"
        );
        assert!(h.take().beats.is_empty(), "taken once");
    }

    /// Closed, the writer gets what is pending, then the end.
    #[tokio::test]
    async fn a_closed_queue_gives_what_is_pending_then_ends() {
        let h = Heartbeats::default();
        h.offer(beat("K1", 1));
        h.close();
        assert_eq!(
            pending_of(&h.next().await.unwrap().beats),
            [("K1".into(), 1)]
        );
        assert!(h.next().await.is_none());
    }

    /// An offer's waiter is answered by the write of a batch taken after
    /// it, not by one taken before it; without a write it times out.
    #[tokio::test]
    async fn a_waiter_is_answered_by_the_write_that_covers_its_ticket() {
        let h = Heartbeats::default();
        h.offer(beat("K1", 1));
        let early = h.take();
        let ticket = h.offer(beat("K2", 1));
        h.stored(&early);
        assert!(
            !h.wait_stored(ticket, Duration::from_millis(50)).await,
            "an earlier batch"
        );
        let late = h.take();
        assert_eq!(pending_of(&late.beats), [("K2".into(), 1)]);
        h.stored(&late);
        assert!(h.wait_stored(ticket, Duration::from_millis(50)).await);
    }

    #[test]
    fn a_failed_write_is_put_back_unless_a_newer_heartbeat_came() {
        let h = Heartbeats::default();
        h.offer(beat("K1", 1));
        h.offer(beat("K2", 5));
        let failed = h.take();
        h.offer(beat("K1", 3));
        h.restore(failed);
        assert_eq!(
            pending_of(&h.take().beats),
            [("K1".into(), 3), ("K2".into(), 5)]
        );
    }
}
