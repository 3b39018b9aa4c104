//! The pushes this instance took, waiting to be announced to the others
//! (`propass_copies`). A NOTIFY costs a commit of its own, and PostgreSQL
//! serializes notifying commits on one lock: one per push would cap the
//! whole fleet's push rate. So pushes only note their new ledger ids here,
//! merged per device, and one sender (`changes::announce_pushes`) sends
//! whatever accumulated while its previous NOTIFY was in flight — under load,
//! many pushes per notification; when idle, one right away. A leaf: the
//! payload format and the pending set, no I/O.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use propass_protocol::DeviceId;
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

/// One notification: the instance that took the pushes, and their ranges.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    instance: String,
    ranges: Vec<Range>,
}

/// Pushes not announced yet, one range per device.
#[derive(Default)]
pub struct Announcements {
    pending: Mutex<HashMap<DeviceId, (i64, i64)>>,
    wake: Notify,
}

impl Announcements {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, (i64, i64)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a push's new ledger ids and wakes the sender.
    pub fn add(&self, device: &DeviceId, min: i64, max: i64) {
        self.lock()
            .entry(device.clone())
            .and_modify(|r| *r = (r.0.min(min), r.1.max(max)))
            .or_insert((min, max));
        self.wake.notify_one();
    }

    /// Waits for pushes to announce and takes them all.
    pub async fn next(&self) -> Vec<Range> {
        loop {
            let taken: Vec<Range> = self
                .lock()
                .drain()
                .map(|(device, (min, max))| Range { device, min, max })
                .collect();
            if !taken.is_empty() {
                return taken;
            }
            self.wake.notified().await;
        }
    }
}

/// The notifications announcing `ranges` for `instance`, each under
/// PostgreSQL's payload limit.
pub fn encode(instance: &str, ranges: Vec<Range>) -> Vec<String> {
    let mut out = Vec::new();
    let mut chunk: Vec<Range> = Vec::new();
    let mut size = 0;
    for r in ranges {
        // A range's JSON: its device (escaped at most 6×) and two numbers.
        let cost = r.device.as_str().len() * 6 + 64;
        if size + cost > MAX_PAYLOAD - instance.len() - 32 && !chunk.is_empty() {
            out.extend(render(instance, std::mem::take(&mut chunk)));
            size = 0;
        }
        size += cost;
        chunk.push(r);
    }
    if !chunk.is_empty() {
        out.extend(render(instance, chunk));
    }
    out
}

fn render(instance: &str, ranges: Vec<Range>) -> Option<String> {
    serde_json::to_string(&Payload {
        instance: instance.to_owned(),
        ranges,
    })
    .ok()
}

/// The instance and ranges of a notification; `None` for one this version
/// cannot read (it is a hint: dropped).
pub fn decode(payload: &str) -> Option<(String, Vec<Range>)> {
    let p: Payload = serde_json::from_str(payload).ok()?;
    Some((p.instance, p.ranges))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn device(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn pushes_of_one_device_merge_into_one_range() {
        let a = Announcements::default();
        a.add(&device("K1"), 10, 12);
        a.add(&device("K2"), 13, 13);
        a.add(&device("K1"), 14, 20);
        let mut taken = a.next().await;
        taken.sort_by(|x, y| x.device.as_str().cmp(y.device.as_str()));
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
                }
            ]
        );
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
        let payloads = encode("inst", ranges.clone());
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() < 8000, "{} bytes", p.len());
            let (instance, r) = decode(p).unwrap();
            assert_eq!(instance, "inst");
            back.extend(r);
        }
        assert_eq!(back, ranges);
        assert_eq!(decode("inst|K1|1|2"), None, "the old format is dropped");
    }
}
