//! The operators' live stream: every open dashboard's queue, and the events
//! they get. A leaf: no actix, no database. An event is serialized once, as
//! the server-sent-events frame every dashboard receives.
//!
//! Like the kiosks' hub, it never waits on a page: a dashboard whose queue is
//! full has stopped reading; it is dropped, and its `EventSource` reconnects
//! and refetches what it shows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use propass_protocol::DeviceId;
use serde::Serialize;
use tokio::sync::mpsc;

/// One server-sent-events frame (`event: NAME`, `data: JSON`).
pub type Frame = Arc<str>;

/// Builds the frame of event `name` with `data`.
pub fn frame(name: &str, data: &impl Serialize) -> Frame {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    format!("event: {name}\ndata: {json}\n\n").into()
}

/// Kiosks whose row on the dashboards changed (a socket, a heartbeat, an
/// operator's change), not yet sent: one sender reads whatever accumulated
/// while its previous read was in flight, in one query, and sends each row
/// once to every page — so a big fleet's heartbeats cost the database one
/// read per batch, not one fleet list per page.
#[derive(Default)]
pub struct ChangedDevices {
    pending: Mutex<std::collections::BTreeSet<DeviceId>>,
    wake: tokio::sync::Notify,
}

impl ChangedDevices {
    fn lock(&self) -> MutexGuard<'_, std::collections::BTreeSet<DeviceId>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a kiosk whose row changed.
    pub fn note(&self, device: &DeviceId) {
        self.lock().insert(device.clone());
        self.wake.notify_one();
    }

    /// Puts back kiosks whose rows could not be read.
    pub fn restore(&self, devices: Vec<DeviceId>) {
        self.lock().extend(devices);
    }

    /// Waits for changed kiosks and takes them all, in id order.
    pub async fn next(&self) -> Vec<DeviceId> {
        loop {
            let taken: Vec<DeviceId> = std::mem::take(&mut *self.lock()).into_iter().collect();
            if !taken.is_empty() {
                return taken;
            }
            self.wake.notified().await;
        }
    }
}

struct Subscriber {
    user_id: i64,
    /// The digest of the session it was opened under.
    session: String,
    tx: mpsc::Sender<Frame>,
}

/// The open dashboards.
pub struct LiveFeed {
    queue_len: usize,
    /// Most streams open at once.
    max: usize,
    next_id: AtomicU64,
    subscribers: Mutex<BTreeMap<u64, Subscriber>>,
}

/// A dashboard's subscription: its frames, and its id to unsubscribe.
pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<Frame>,
}

impl LiveFeed {
    /// A feed of at most `max` dashboards, each queueing at most
    /// `queue_len` frames.
    pub fn new(queue_len: usize, max: usize) -> Self {
        Self {
            queue_len: queue_len.max(1),
            max: max.max(1),
            next_id: AtomicU64::new(1),
            subscribers: Mutex::new(BTreeMap::new()),
        }
    }

    fn subscribers(&self) -> MutexGuard<'_, BTreeMap<u64, Subscriber>> {
        // A panic while holding the lock leaves the map consistent.
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a dashboard's stream for `user_id`'s session `session`;
    /// `None` when the most streams allowed are open.
    pub fn subscribe(&self, user_id: i64, session: &str) -> Option<Subscription> {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subscribers = self.subscribers();
        if subscribers.len() >= self.max {
            return None;
        }
        subscribers.insert(
            id,
            Subscriber {
                user_id,
                session: session.to_owned(),
                tx,
            },
        );
        Some(Subscription { id, rx })
    }

    /// Closes a dashboard's stream.
    pub fn unsubscribe(&self, id: u64) {
        self.subscribers().remove(&id);
    }

    /// How many dashboards are open (work for them is skipped when none is).
    pub fn len(&self) -> usize {
        self.subscribers().len()
    }

    /// Whether no dashboard is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `frame` to every dashboard, dropping those that stopped reading.
    pub fn publish(&self, frame: &Frame) {
        self.subscribers()
            .retain(|_, s| s.tx.try_send(frame.clone()).is_ok());
    }

    /// Ends every stream (the server is stopping; pages reconnect).
    pub fn close_all(&self) {
        self.subscribers().clear();
    }

    /// Ends the streams of `user_id` (its sessions ended: disabled, password
    /// or role changed), telling each page why.
    pub fn end_user(&self, user_id: i64, why: &str) {
        self.end_where(|s| s.user_id == user_id, why);
    }

    /// Ends the streams opened under the session `session` (logged out).
    pub fn end_session(&self, session: &str, why: &str) {
        self.end_where(|s| s.session == session, why);
    }

    fn end_where(&self, which: impl Fn(&Subscriber) -> bool, why: &str) {
        let last = frame("session_ended", &serde_json::json!({ "message": why }));
        self.subscribers().retain(|_, s| {
            if which(s) {
                // Dropping the sender ends the stream after this frame.
                let _ = s.tx.try_send(last.clone());
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kiosk_that_changed_many_times_is_read_once() {
        let changed = ChangedDevices::default();
        let id = |s: &str| DeviceId::parse(s).unwrap();
        for d in ["K2", "K1", "K2", "K2"] {
            changed.note(&id(d));
        }
        let taken = changed.next().await;
        assert_eq!(taken, [id("K1"), id("K2")]);
        changed.note(&id("K3"));
        changed.restore(taken);
        assert_eq!(changed.next().await, [id("K1"), id("K2"), id("K3")]);
    }

    #[test]
    fn streams_past_the_cap_are_refused_until_one_closes() {
        let feed = LiveFeed::new(4, 2);
        let first = feed.subscribe(1, "a").unwrap();
        let _second = feed.subscribe(1, "a").unwrap();
        assert!(feed.subscribe(2, "b").is_none());
        feed.unsubscribe(first.id);
        assert!(feed.subscribe(2, "b").is_some());
    }

    #[test]
    fn a_full_queue_drops_that_dashboard_only() {
        let feed = LiveFeed::new(1, 10);
        let mut slow = feed.subscribe(1, "a").unwrap();
        let mut fast = feed.subscribe(2, "b").unwrap();
        feed.publish(&frame("copy", &1));
        assert!(fast.rx.try_recv().is_ok());
        feed.publish(&frame("copy", &2));
        assert_eq!(feed.len(), 1, "the page that did not read is dropped");
        assert!(slow.rx.try_recv().is_ok());
        assert!(fast.rx.try_recv().is_ok());
    }

    #[test]
    fn ending_a_user_tells_its_pages_and_closes_them() {
        let feed = LiveFeed::new(4, 10);
        let mut gone = feed.subscribe(1, "a").unwrap();
        let mut kept = feed.subscribe(2, "b").unwrap();
        feed.end_user(1, "disabled");
        let last = gone.rx.try_recv().expect("a last frame");
        assert!(last.starts_with("event: session_ended\n"), "{last}");
        assert!(last.contains("disabled"));
        assert!(gone.rx.try_recv().is_err(), "closed after it");
        feed.publish(&frame("copy", &1));
        assert!(kept.rx.try_recv().is_ok());
        assert_eq!(feed.len(), 1);
    }
}
