//! What this instance saw that the others' kiosks and dashboards must hear
//! (`propass_copies`): the pushes it took (their new ledger ids, merged per
//! device, and the `sync_completed` of a push whose kiosk has no socket
//! here: a load balancer may send its push and its socket to different
//! instances), and the kiosks whose socket opened or closed or whose heartbeat
//! came in here (dashboards elsewhere get their rows). A NOTIFY costs a commit
//! of its own, and PostgreSQL serializes notifying commits on one lock: one
//! per push or heartbeat would cap the fleet. So requests only note what
//! happened here, and one sender (`changes::announce`) sends whatever
//! accumulated while its previous NOTIFY was in flight — under load, many
//! events per notification; when idle, one right away. A leaf: the payload
//! format and the pending set, no I/O.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use propass_protocol::{DeviceId, SyncCompleted};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;

/// Ledger ids a device's pushes added: every new row of that device with
/// an id in `min..=max` (other devices' rows in the range are not its).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub device: DeviceId,
    pub min: i64,
    pub max: i64,
}

/// What accumulated: push ranges, push summaries, and kiosks whose state
/// changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ranges: Vec<Range>,
    pub syncs: Vec<SyncCompleted>,
    pub devices: Vec<DeviceId>,
}

/// One notification: the instance that saw the events, and the events.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    instance: String,
    #[serde(default)]
    ranges: Vec<Range>,
    #[serde(default)]
    syncs: Vec<SyncCompleted>,
    #[serde(default)]
    devices: Vec<DeviceId>,
}

#[derive(Default)]
struct Pending {
    /// Per device, disjoint ranges: only overlapping or adjacent ones merge
    /// (ids between two of a device's pushes here may be its pushes taken by
    /// another instance, which announces them itself).
    ranges: HashMap<DeviceId, Vec<(i64, i64)>>,
    /// In the order the pushes committed here.
    syncs: Vec<SyncCompleted>,
    devices: HashSet<DeviceId>,
}

/// Events not announced yet: a device's ranges merged, each kiosk once.
#[derive(Default)]
pub struct Announcements {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Announcements {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a push's new ledger ids and wakes the sender.
    pub fn add(&self, device: &DeviceId, min: i64, max: i64) {
        let mut p = self.lock();
        let ranges = p.ranges.entry(device.clone()).or_default();
        let (mut lo, mut hi) = (min, max);
        ranges.retain(|&(a, b)| {
            let touches = a <= hi.saturating_add(1) && lo <= b.saturating_add(1);
            if touches {
                (lo, hi) = (lo.min(a), hi.max(b));
            }
            !touches
        });
        ranges.push((lo, hi));
        drop(p);
        self.wake.notify_one();
    }

    /// Notes a push's summary for its kiosk's sockets on other instances.
    pub fn synced(&self, summary: SyncCompleted) {
        self.lock().syncs.push(summary);
        self.wake.notify_one();
    }

    /// Puts back what could not be sent (the next batch carries it).
    pub fn restore(&self, batch: Batch) {
        for r in batch.ranges {
            self.add(&r.device, r.min, r.max);
        }
        if !batch.syncs.is_empty() {
            // Older than what came since: they go first.
            let mut p = self.lock();
            let newer = std::mem::replace(&mut p.syncs, batch.syncs);
            p.syncs.extend(newer);
        }
        for d in batch.devices {
            self.device_changed(&d);
        }
    }

    /// Notes that a kiosk's socket opened or closed, or its heartbeat came.
    pub fn device_changed(&self, device: &DeviceId) {
        self.lock().devices.insert(device.clone());
        self.wake.notify_one();
    }

    /// Waits for events to announce and takes them all.
    pub async fn next(&self) -> Batch {
        loop {
            let taken = {
                let mut p = self.lock();
                Batch {
                    ranges: p
                        .ranges
                        .drain()
                        .flat_map(|(device, rs)| {
                            rs.into_iter().map(move |(min, max)| Range {
                                device: device.clone(),
                                min,
                                max,
                            })
                        })
                        .collect(),
                    syncs: std::mem::take(&mut p.syncs),
                    devices: p.devices.drain().collect(),
                }
            };
            if taken != Batch::default() {
                return taken;
            }
            self.wake.notified().await;
        }
    }
}

/// A device id's cost in a payload: escaped at most 6× per byte, plus room
/// for two numbers and the punctuation.
fn cost(device: &DeviceId) -> usize {
    device.as_str().len() * 6 + 64
}

/// The notifications announcing `batch` for `instance`, each under
/// PostgreSQL's payload limit.
pub fn encode(instance: &str, batch: Batch) -> Vec<String> {
    let budget = MAX_PAYLOAD - instance.len() - 64;
    let mut out = Vec::new();
    let mut chunk = Batch::default();
    let mut size = 0;
    let flush = |chunk: &mut Batch, size: &mut usize, out: &mut Vec<String>| {
        if *chunk != Batch::default() {
            out.extend(render(instance, std::mem::take(chunk)));
        }
        *size = 0;
    };
    for r in batch.ranges {
        if size + cost(&r.device) > budget {
            flush(&mut chunk, &mut size, &mut out);
        }
        size += cost(&r.device);
        chunk.ranges.push(r);
    }
    for s in batch.syncs {
        // Three counts and a time besides the device: under 100 bytes.
        let c = cost(&s.device_id) + 96;
        if size + c > budget {
            flush(&mut chunk, &mut size, &mut out);
        }
        size += c;
        chunk.syncs.push(s);
    }
    for d in batch.devices {
        if size + cost(&d) > budget {
            flush(&mut chunk, &mut size, &mut out);
        }
        size += cost(&d);
        chunk.devices.push(d);
    }
    flush(&mut chunk, &mut size, &mut out);
    out
}

fn render(instance: &str, batch: Batch) -> Option<String> {
    serde_json::to_string(&Payload {
        instance: instance.to_owned(),
        ranges: batch.ranges,
        syncs: batch.syncs,
        devices: batch.devices,
    })
    .ok()
}

/// The instance and events of a notification; `None` for one this version
/// cannot read (it is a hint: dropped).
pub fn decode(payload: &str) -> Option<(String, Batch)> {
    let p: Payload = serde_json::from_str(payload).ok()?;
    Some((
        p.instance,
        Batch {
            ranges: p.ranges,
            syncs: p.syncs,
            devices: p.devices,
        },
    ))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn device(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_devices_adjacent_pushes_merge_and_gaps_stay() {
        let a = Announcements::default();
        a.add(&device("K1"), 10, 12);
        a.add(&device("K2"), 13, 13);
        a.add(&device("K1"), 13, 20);
        a.add(&device("K1"), 30, 31);
        a.device_changed(&device("K3"));
        a.device_changed(&device("K3"));
        let Batch {
            ranges: mut taken,
            devices,
            ..
        } = a.next().await;
        taken.sort_by(|x, y| x.device.as_str().cmp(y.device.as_str()));
        assert_eq!(devices, [device("K3")], "each kiosk once");
        taken.sort_by_key(|r| r.min);
        assert_eq!(
            taken,
            [
                Range {
                    device: device("K1"),
                    min: 10,
                    max: 20
                },
                Range {
                    device: device("K2"),
                    min: 13,
                    max: 13
                },
                Range {
                    device: device("K1"),
                    min: 30,
                    max: 31
                }
            ],
            "ids 21-29 may be K1's pushes on another instance: not claimed"
        );
    }

    #[tokio::test]
    async fn summaries_that_could_not_be_sent_go_before_newer_ones() {
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let sync = |synced| SyncCompleted {
            device_id: device("K1"),
            synced,
            failed: 0,
            duplicates: 0,
            at,
        };
        let a = Announcements::default();
        a.synced(sync(1));
        let first = a.next().await;
        a.synced(sync(2));
        a.restore(first);
        assert_eq!(a.next().await.syncs, [sync(1), sync(2)]);
    }

    #[test]
    fn payloads_stay_under_the_limit_and_read_back() {
        // Device ids of any printable characters, separators included.
        let ranges: Vec<Range> = (0..500)
            .map(|i| Range {
                device: device(&format!("K|{i};\"{}", "x".repeat(40))),
                min: i,
                max: i + 1,
            })
            .collect();
        let devices: Vec<DeviceId> = (0..300)
            .map(|i| device(&format!("\\{i}{}", "\"".repeat(60))))
            .collect();
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let syncs: Vec<SyncCompleted> = (0..200)
            .map(|i| SyncCompleted {
                device_id: device(&format!("\\\"{i}{}", "<".repeat(100))),
                synced: u32::MAX,
                failed: u32::MAX,
                duplicates: u32::MAX,
                at,
            })
            .collect();
        let payloads = encode(
            "inst",
            Batch {
                ranges: ranges.clone(),
                syncs: syncs.clone(),
                devices: devices.clone(),
            },
        );
        assert!(payloads.len() > 1);
        let mut back = Batch::default();
        for p in &payloads {
            assert!(p.len() < 8000, "{} bytes", p.len());
            let (instance, b) = decode(p).unwrap();
            assert_eq!(instance, "inst");
            back.ranges.extend(b.ranges);
            back.syncs.extend(b.syncs);
            back.devices.extend(b.devices);
        }
        assert_eq!(
            back,
            Batch {
                ranges,
                syncs,
                devices
            }
        );
        assert_eq!(decode("inst|K1|1|2"), None, "the old format is dropped");
    }
}
