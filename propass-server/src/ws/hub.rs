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

use propass_protocol::{DeviceId, QuotaUpdated, WsMessage};
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

/// What a connection's queue carries.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// One event's messages.
    Event(Group),
    /// The server ends the session (device revoked, user disabled): the
    /// sentence for the close frame.
    Close(&'static str),
    /// The server is shutting down: the client reconnects, to this instance
    /// once it is back or to another one.
    GoingAway,
}

struct Conn {
    device_id: DeviceId,
    /// The user of a login token; `None` for an enrolled device's token.
    user: Option<i64>,
    /// The device's token epoch of a device token; `None` for a login token.
    device_epoch: Option<i64>,
    /// Its upgrade asked for `sync_requested` (our agent; the seed client
    /// does not know the message).
    accepts_sync: bool,
    tx: mpsc::Sender<Delivery>,
}

/// Identifies one registered connection.
pub type ConnId = u64;

/// The open connections, and their indexes: by device, by user, and the
/// clients each connected device serves — so that an event costs the
/// connections that should get it, not every open one.
#[derive(Default)]
struct Conns {
    all: BTreeMap<ConnId, Conn>,
    by_device: HashMap<DeviceId, BTreeSet<ConnId>>,
    by_user: HashMap<i64, BTreeSet<ConnId>>,
    /// Client id → the connected devices serving it.
    serving: HashMap<i64, BTreeSet<DeviceId>>,
    /// Connected device → the clients it serves (the inverse of `serving`).
    served_by: HashMap<DeviceId, Vec<i64>>,
}

fn unindex<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, BTreeSet<V>>, key: &K, value: &V) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Conns {
    fn remove(&mut self, id: ConnId) {
        let Some(conn) = self.all.remove(&id) else {
            return;
        };
        unindex(&mut self.by_device, &conn.device_id, &id);
        if let Some(uid) = conn.user {
            unindex(&mut self.by_user, &uid, &id);
        }
        if !self.by_device.contains_key(&conn.device_id) {
            self.set_served(&conn.device_id, Vec::new());
        }
    }

    /// Replaces what `device` serves in the client index.
    fn set_served(&mut self, device: &DeviceId, clients: Vec<i64>) {
        for c in self.served_by.remove(device).unwrap_or_default() {
            unindex(&mut self.serving, &c, device);
        }
        if clients.is_empty() {
            return;
        }
        for c in &clients {
            self.serving.entry(*c).or_default().insert(device.clone());
        }
        self.served_by.insert(device.clone(), clients);
    }

    /// The connections of `devices` that understand `sync_requested`.
    fn accepting_sync<'a>(&self, devices: impl Iterator<Item = &'a DeviceId>) -> Vec<ConnId> {
        devices
            .flat_map(|d| self.by_device.get(d).into_iter().flatten())
            .copied()
            .filter(|id| self.all.get(id).is_some_and(|c| c.accepts_sync))
            .collect()
    }

    /// Sends `sync_requested` to the connections `ids`.
    fn ask_to_sync(&mut self, ids: &[ConnId]) {
        if !ids.is_empty() {
            let out = Delivery::Event(vec![Outbound::new(&WsMessage::SyncRequested)].into());
            self.deliver(ids, &out);
        }
    }

    /// Queues `what` on the connections `ids` (in id order), dropping those
    /// whose queue is full (or whose session is gone).
    fn deliver(&mut self, ids: &[ConnId], what: &Delivery) {
        let mut dropped = Vec::new();
        for id in ids {
            let Some(conn) = self.all.get(id) else {
                continue;
            };
            match conn.tx.try_send(what.clone()) {
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

    /// Tells the connections `ids` to close, and forgets them.
    fn close(&mut self, ids: Vec<ConnId>, notice: Delivery) {
        for id in ids {
            if let Some(conn) = self.all.get(&id) {
                // A full queue cannot take the notice: dropping the sender
                // below still ends the session.
                let _ = conn.tx.try_send(notice.clone());
            }
            self.remove(id);
        }
    }
}

/// Every open WebSocket connection.
pub struct Hub {
    conns: Mutex<Conns>,
    next_id: AtomicU64,
    queue_len: usize,
    /// Bumped when every session must re-check its standing at its next ping.
    recheck: AtomicU64,
}

impl Hub {
    /// A hub whose connections each queue at most `queue_len` events.
    pub fn new(queue_len: usize) -> Self {
        Self {
            conns: Mutex::new(Conns::default()),
            next_id: AtomicU64::new(1),
            queue_len,
            recheck: AtomicU64::new(0),
        }
    }

    /// Asks every session, at its next ping, to have its kiosk pull and
    /// (login tokens) to re-check its standing: events may have been lost.
    pub fn request_recheck(&self) {
        self.recheck.fetch_add(1, Ordering::Relaxed);
    }

    /// Which recheck request is the latest (sessions compare it with theirs).
    pub fn recheck_generation(&self) -> u64 {
        self.recheck.load(Ordering::Relaxed)
    }

    /// Adds a connection of `device_id` (for the user `user` of a login
    /// token), whose device serves `clients` (read when it connected; later
    /// changes come through [`Self::set_assignment`]). The receiver is its queue.
    pub fn register(
        &self,
        device_id: DeviceId,
        user: Option<i64>,
        device_epoch: Option<i64>,
        clients: Vec<i64>,
    ) -> (ConnId, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.lock();
        conns
            .by_device
            .entry(device_id.clone())
            .or_default()
            .insert(id);
        if let Some(uid) = user {
            conns.by_user.entry(uid).or_default().insert(id);
        }
        conns.set_served(&device_id, clients);
        conns.all.insert(
            id,
            Conn {
                device_id,
                user,
                device_epoch,
                accepts_sync: false,
                tx,
            },
        );
        (id, rx)
    }

    /// Marks connection `id` as one that understands `sync_requested`.
    pub fn accept_sync_requests(&self, id: ConnId) {
        if let Some(conn) = self.lock().all.get_mut(&id) {
            conn.accepts_sync = true;
        }
    }

    /// Tells the connections of `device_id` that asked for it to pull now:
    /// what the server keeps of the device changed (its clients, a lease).
    pub fn request_sync(&self, device_id: &DeviceId) {
        let mut conns = self.lock();
        let ids = conns.accepting_sync(std::iter::once(device_id));
        conns.ask_to_sync(&ids);
    }

    /// Asks the devices serving `client` to pull (their connections that
    /// understand `sync_requested`): its copy policy or keys changed.
    pub fn request_sync_of_client(&self, client: i64) {
        let mut conns = self.lock();
        let Some(devices) = conns.serving.get(&client) else {
            return;
        };
        let ids = conns.accepting_sync(devices.iter());
        conns.ask_to_sync(&ids);
    }

    /// Removes a connection.
    pub fn unregister(&self, id: ConnId) {
        self.lock().remove(id);
    }

    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clients some connected kiosk serves, in id order (the index is
    /// a hash map; callers get a defined order).
    pub fn served_clients(&self) -> Vec<i64> {
        let mut clients: Vec<i64> = self.lock().serving.keys().copied().collect();
        clients.sort_unstable();
        clients
    }

    /// Whether some connected kiosk serves some client.
    pub fn any_serving(&self) -> bool {
        !self.lock().serving.is_empty()
    }

    /// Open connections in all.
    pub fn connections(&self) -> usize {
        self.lock().all.len()
    }

    /// Open connections of one device.
    pub fn device_connections(&self, device_id: &DeviceId) -> usize {
        self.lock()
            .by_device
            .get(device_id)
            .map_or(0, BTreeSet::len)
    }

    /// Whether `device_id` has open connections (an assignment change of a
    /// device without any needs no database read).
    pub fn is_connected(&self, device_id: &DeviceId) -> bool {
        self.lock().by_device.contains_key(device_id)
    }

    /// The clients a connected device now serves; whether that changed.
    pub fn set_assignment(&self, device_id: &DeviceId, clients: Vec<i64>) -> bool {
        let mut conns = self.lock();
        if !conns.by_device.contains_key(device_id) {
            return false;
        }
        let before = conns.served_by.get(device_id).cloned().unwrap_or_default();
        let changed = before != clients;
        conns.set_served(device_id, clients);
        changed
    }

    /// The devices with open connections, in id order.
    pub fn connected_devices(&self) -> Vec<DeviceId> {
        let mut ids: Vec<DeviceId> = self.lock().by_device.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Sends each quota update to the connections of the devices serving its
    /// client, one event per connection, each message serialized once.
    pub fn send_quota_updates(&self, updates: &[QuotaUpdated]) {
        if updates.is_empty() {
            return;
        }
        let mut conns = self.lock();
        let mut per_conn: BTreeMap<ConnId, Vec<Outbound>> = BTreeMap::new();
        for u in updates {
            let Some(devices) = conns.serving.get(&u.client_id.get()) else {
                continue;
            };
            let out = Outbound::new(&WsMessage::QuotaUpdated(u.clone()));
            for d in devices {
                for id in conns.by_device.get(d).into_iter().flatten() {
                    per_conn.entry(*id).or_default().push(out.clone());
                }
            }
        }
        for (id, msgs) in per_conn {
            conns.deliver(&[id], &Delivery::Event(msgs.into()));
        }
    }

    /// Sends several messages as one event to the connections of one device:
    /// the cost is that device's connections, however many others are open.
    pub fn send_all_to_device(&self, device_id: &DeviceId, msgs: &[WsMessage]) {
        if msgs.is_empty() {
            return;
        }
        let out = Delivery::Event(msgs.iter().map(Outbound::new).collect());
        let mut conns = self.lock();
        let ids: Vec<ConnId> = conns
            .by_device
            .get(device_id)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        conns.deliver(&ids, &out);
    }

    /// Closes every connection of a device (revoked, or no longer active).
    pub fn close_device(&self, device_id: &DeviceId, why: &'static str) {
        let mut conns = self.lock();
        let ids = conns
            .by_device
            .get(device_id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        conns.close(ids, Delivery::Close(why));
    }

    /// Closes the connections of a device opened with a device token of
    /// another epoch than `epoch` (re-enrolled, or its credential reused).
    pub fn close_stale_device_tokens(&self, device_id: &DeviceId, epoch: i64, why: &'static str) {
        let mut conns = self.lock();
        let ids = conns
            .by_device
            .get(device_id)
            .map(|s| {
                s.iter()
                    .copied()
                    .filter(|id| {
                        conns
                            .all
                            .get(id)
                            .and_then(|c| c.device_epoch)
                            .is_some_and(|e| e != epoch)
                    })
                    .collect()
            })
            .unwrap_or_default();
        conns.close(ids, Delivery::Close(why));
    }

    /// Closes every connection opened with a login token of user `uid`
    /// (disabled, password or role changed).
    pub fn close_user(&self, uid: i64, why: &'static str) {
        let mut conns = self.lock();
        let ids = conns
            .by_user
            .get(&uid)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        conns.close(ids, Delivery::Close(why));
    }

    /// Tells every connection the server is going away, so that kiosks
    /// reconnect at once instead of holding a graceful shutdown open.
    pub fn close_all(&self) {
        let mut conns = self.lock();
        let ids = conns.all.keys().copied().collect();
        conns.close(ids, Delivery::GoingAway);
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
        let (id_a, mut rx_a) = hub.register(a.clone(), None, None, vec![]);
        let (_, mut rx_b) = hub.register(b.clone(), None, None, vec![]);
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
    fn a_sync_request_reaches_only_the_devices_connections_that_asked() {
        let hub = Hub::new(4);
        let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
        let (agent, mut rx_agent) = hub.register(a.clone(), None, None, vec![1]);
        let (_, mut rx_seed) = hub.register(a.clone(), Some(7), None, vec![1]);
        let (other, mut rx_other) = hub.register(b.clone(), None, None, vec![1]);
        hub.accept_sync_requests(agent);
        hub.accept_sync_requests(other);
        hub.request_sync(&a);
        match rx_agent.try_recv() {
            Ok(Delivery::Event(msgs)) => {
                assert_eq!(msgs.len(), 1);
                assert_eq!(&*msgs[0].text, r#"{"type":"sync_requested"}"#);
            }
            _ => panic!("the agent's socket got no sync request"),
        }
        assert!(
            rx_seed.try_recv().is_err(),
            "a socket that did not ask gets none"
        );
        assert!(rx_other.try_recv().is_err(), "another device gets none");
    }

    fn update(client: i64, remaining: i64) -> QuotaUpdated {
        QuotaUpdated {
            client_id: ClientId::new(client).unwrap(),
            remaining,
            version: Some(remaining),
        }
    }

    #[test]
    fn a_full_queue_drops_its_connection_and_spares_the_others() {
        let hub = Hub::new(1);
        let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
        let (_slow, _rx_slow) = hub.register(a.clone(), None, None, vec![1]);
        let (_fast, mut rx_fast) = hub.register(b.clone(), None, None, vec![1]);
        hub.send_quota_updates(&[update(1, 5)]);
        assert!(rx_fast.try_recv().is_ok());
        hub.send_quota_updates(&[update(1, 4)]);
        assert_eq!(hub.device_connections(&a), 0);
        assert!(rx_fast.try_recv().is_ok());
    }

    fn texts(rx: &mut mpsc::Receiver<Delivery>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(d) = rx.try_recv() {
            match d {
                Delivery::Event(g) => out.extend(g.iter().map(|m| m.text.to_string())),
                Delivery::Close(why) => out.push(format!("close: {why}")),
                Delivery::GoingAway => out.push("going away".into()),
            }
        }
        out
    }

    #[test]
    fn quota_updates_reach_the_devices_serving_the_client_only() {
        let hub = Hub::new(8);
        let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
        let (_, mut rx_a) = hub.register(a.clone(), None, None, vec![1, 2]);
        let (_, mut rx_b) = hub.register(b.clone(), None, None, vec![2]);
        hub.send_quota_updates(&[update(1, 10), update(2, 20), update(3, 30)]);
        let (got_a, got_b) = (texts(&mut rx_a), texts(&mut rx_b));
        assert_eq!(got_a.len(), 2, "{got_a:?}");
        assert!(got_a[0].contains("\"client_id\":1") && got_a[1].contains("\"client_id\":2"));
        assert_eq!(got_b.len(), 1, "{got_b:?}");
        assert!(got_b[0].contains("\"client_id\":2"), "{got_b:?}");

        hub.set_assignment(&b, vec![1]);
        hub.send_quota_updates(&[update(2, 19)]);
        assert!(texts(&mut rx_b).is_empty(), "b no longer serves client 2");
        assert_eq!(texts(&mut rx_a).len(), 1);
    }

    #[test]
    fn closing_a_device_or_a_user_ends_their_connections_only() {
        let hub = Hub::new(8);
        let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
        let (_, mut rx_a) = hub.register(a.clone(), Some(7), None, vec![1]);
        let (_, mut rx_b) = hub.register(b.clone(), None, None, vec![1]);
        hub.close_user(7, "user disabled");
        assert_eq!(texts(&mut rx_a), ["close: user disabled"]);
        assert_eq!(
            (hub.device_connections(&a), hub.device_connections(&b)),
            (0, 1)
        );
        hub.send_quota_updates(&[update(1, 1)]);
        assert_eq!(texts(&mut rx_b).len(), 1, "the index forgot a, not b");
        hub.close_device(&b, "device revoked");
        assert_eq!(texts(&mut rx_b), ["close: device revoked"]);
        assert!(!hub.is_connected(&b));
    }
}
