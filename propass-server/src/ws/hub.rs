//! The hub's core: every open connection's outgoing queue, who gets which
//! event, and the coalescing of superseded messages. A leaf: no actix, no
//! database, no application state; connections are visited in id order, so a
//! run is reproducible.
//!
//! The hub never waits on a connection: when a queue is full its consumer
//! has stopped reading, and the hub drops it (its session closes the socket)
//! rather than let the server's memory grow.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use propass_protocol::{DeviceId, WsMessage};
use tokio::sync::mpsc;

/// A message on its way to connections, serialized once for all of them.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The JSON text frame.
    pub text: Arc<str>,
    /// `Some(client)` for a `quota_updated`, which a later one for the same client supersedes.
    quota_client: Option<i64>,
}

impl Outbound {
    fn new(msg: &WsMessage) -> Self {
        let quota_client = match msg {
            WsMessage::QuotaUpdated(q) => Some(q.client_id.get()),
            _ => None,
        };
        let text = serde_json::to_string(msg).unwrap_or_default().into();
        Self { text, quota_client }
    }
}

/// What one connection's queue holds: the messages of one event (e.g. every
/// `copy_completed` of one push), so that the queue bound counts events, not
/// copies, and a big push cannot overflow it by itself.
pub type Group = Arc<[Outbound]>;

/// Drops every `quota_updated` that a later one for the same client in
/// `batch` supersedes; keeps everything else in order.
pub fn coalesce(batch: Vec<Outbound>) -> Vec<Outbound> {
    let mut latest: HashMap<i64, usize> = HashMap::new();
    for (i, m) in batch.iter().enumerate() {
        if let Some(c) = m.quota_client {
            latest.insert(c, i);
        }
    }
    batch
        .into_iter()
        .enumerate()
        .filter(|(i, m)| m.quota_client.is_none_or(|c| latest.get(&c) == Some(i)))
        .map(|(_, m)| m)
        .collect()
}

struct Conn {
    device_id: DeviceId,
    tx: mpsc::Sender<Group>,
}

/// Identifies one registered connection.
pub type ConnId = u64;

/// The open connections, and an index of them by device.
#[derive(Default)]
struct Conns {
    all: BTreeMap<ConnId, Conn>,
    /// So that a device's messages cost its own connections, not everyone's.
    by_device: HashMap<DeviceId, BTreeSet<ConnId>>,
}

impl Conns {
    fn remove(&mut self, id: ConnId) {
        let Some(conn) = self.all.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_device.get_mut(&conn.device_id) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_device.remove(&conn.device_id);
            }
        }
    }

    /// Queues the event on the connections `ids` (in id order), dropping
    /// those whose queue is full (or whose session is gone).
    fn deliver(&mut self, ids: &[ConnId], out: &Group) {
        let mut dropped = Vec::new();
        for id in ids {
            let Some(conn) = self.all.get(id) else {
                continue;
            };
            match conn.tx.try_send(out.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(conn = id, device = %conn.device_id, "websocket consumer too slow; dropping it");
                    dropped.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(*id),
            }
        }
        for id in dropped {
            self.remove(id);
        }
    }
}

/// Every open WebSocket connection.
pub struct Hub {
    conns: Mutex<Conns>,
    next_id: AtomicU64,
    queue_len: usize,
}

impl Hub {
    /// A hub whose connections each queue at most `queue_len` events.
    pub fn new(queue_len: usize) -> Self {
        Self {
            conns: Mutex::new(Conns::default()),
            next_id: AtomicU64::new(1),
            queue_len,
        }
    }

    /// Adds a connection of `device_id`; the receiver is its queue.
    pub fn register(&self, device_id: DeviceId) -> (ConnId, mpsc::Receiver<Group>) {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.lock();
        conns
            .by_device
            .entry(device_id.clone())
            .or_default()
            .insert(id);
        conns.all.insert(id, Conn { device_id, tx });
        (id, rx)
    }

    /// Removes a connection.
    pub fn unregister(&self, id: ConnId) {
        self.lock().remove(id);
    }

    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections of one device.
    pub fn device_connections(&self, device_id: &DeviceId) -> usize {
        self.lock()
            .by_device
            .get(device_id)
            .map_or(0, BTreeSet::len)
    }

    /// Sends to every connection allowed to see the message. Today every
    /// authenticated kiosk serves every client, so that is every connection.
    pub fn broadcast(&self, msg: &WsMessage) {
        self.broadcast_all(std::slice::from_ref(msg));
    }

    /// Sends several messages as one event (one slot of each queue),
    /// serialized once for all connections.
    pub fn broadcast_all(&self, msgs: &[WsMessage]) {
        if msgs.is_empty() {
            return;
        }
        let out: Group = msgs.iter().map(Outbound::new).collect();
        let mut conns = self.lock();
        let ids: Vec<ConnId> = conns.all.keys().copied().collect();
        conns.deliver(&ids, &out);
    }

    /// Sends several messages as one event to the connections of one device:
    /// the cost is that device's connections, however many others are open.
    pub fn send_all_to_device(&self, device_id: &DeviceId, msgs: &[WsMessage]) {
        if msgs.is_empty() {
            return;
        }
        let out: Group = msgs.iter().map(Outbound::new).collect();
        let mut conns = self.lock();
        let ids: Vec<ConnId> = conns
            .by_device
            .get(device_id)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        conns.deliver(&ids, &out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use propass_protocol::{ClientId, QuotaUpdated};

    fn quota(client: i64, remaining: i64) -> WsMessage {
        WsMessage::QuotaUpdated(QuotaUpdated {
            client_id: ClientId::new(client).unwrap(),
            remaining,
            version: Some(remaining),
        })
    }

    #[test]
    fn coalescing_keeps_the_latest_quota_per_client_and_everything_else() {
        let batch: Vec<Outbound> = [quota(1, 10), WsMessage::Pong, quota(2, 5), quota(1, 9)]
            .iter()
            .map(Outbound::new)
            .collect();
        let kept: Vec<String> = coalesce(batch).iter().map(|m| m.text.to_string()).collect();
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert!(kept[0].contains("pong"), "{kept:?}");
        assert!(kept[1].contains("\"remaining\":5"), "{kept:?}");
        assert!(kept[2].contains("\"remaining\":9"), "{kept:?}");
    }

    #[test]
    fn a_devices_messages_reach_its_connections_only() {
        let hub = Hub::new(4);
        let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
        let (id_a, mut rx_a) = hub.register(a.clone());
        let (_, mut rx_b) = hub.register(b.clone());
        hub.send_all_to_device(&a, &[WsMessage::Pong]);
        assert!(rx_a.try_recv().is_ok());
        assert!(rx_b.try_recv().is_err(), "b is not a");
        hub.unregister(id_a);
        assert_eq!(
            (hub.device_connections(&a), hub.device_connections(&b)),
            (0, 1)
        );
    }

    #[test]
    fn a_full_queue_drops_its_connection_and_spares_the_others() {
        let hub = Hub::new(1);
        let a = DeviceId::parse("a").unwrap();
        let (_slow, _rx_slow) = hub.register(a.clone());
        let (_fast, mut rx_fast) = hub.register(DeviceId::parse("b").unwrap());
        hub.broadcast(&WsMessage::Pong);
        assert!(rx_fast.try_recv().is_ok());
        hub.broadcast(&WsMessage::Pong);
        assert_eq!(hub.device_connections(&a), 0);
        assert!(rx_fast.try_recv().is_ok());
    }
}
