//! The push use case, free of HTTP: parse a batch leniently (one bad item
//! does not sink the others), key each operation, record them through the
//! [`LedgerStore`], answer every item in input order, and compose the live
//! events the push causes. The handler only moves bytes in and events out.

use chrono::{DateTime, Utc};
use propass_protocol::{
    ClientId, CopyCompleted, DeviceId, LeaseEntry, OpId, PushItemResult, PushResponse, PushStatus,
    QueueItem, QuotaUpdated, SyncCompleted, WsMessage,
};
use serde_json::value::RawValue;

use crate::device::Caller;
use crate::error::ApiError;
use crate::ledger::{ItemFailure, LedgerStore, NewOp, Outcome};

/// Everything a push produces.
#[derive(Debug)]
pub struct PushDone {
    /// The answer to the kiosk.
    pub response: PushResponse,
    /// The charged quotas: each for the kiosks serving its client.
    pub quota_updates: Vec<QuotaUpdated>,
    /// For the pushing device's own WebSockets only: its new copies (a
    /// badge UID is what it takes to clone a UID-only badge: no other kiosk
    /// sees it) and the push's summary.
    pub to_pusher: Vec<WsMessage>,
    /// The ledger ids of the new copies the kiosk could not verify.
    pub unverified: Vec<i64>,
}

/// An item as read from the batch.
enum Parsed {
    Valid(QueueItem),
    Invalid {
        id: Option<i64>,
        op_id: Option<OpId>,
        failure: ItemFailure,
    },
}

/// The span of plausible `occurred_at` values around the server's clock.
#[derive(Debug, Clone, Copy)]
pub struct OccurredWindow {
    /// Earliest accepted.
    pub earliest: DateTime<Utc>,
    /// Latest accepted.
    pub latest: DateTime<Utc>,
}

impl OccurredWindow {
    /// From `now`, `max_backdate` back to `max_future_skew` ahead.
    pub fn around(
        now: DateTime<Utc>,
        max_backdate: std::time::Duration,
        max_future_skew: std::time::Duration,
    ) -> Self {
        let span =
            |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Self {
            earliest: now
                .checked_sub_signed(span(max_backdate))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            latest: now
                .checked_add_signed(span(max_future_skew))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }
}

/// A push's items, parsed (each once, from its text) before the ledger is
/// asked: the parse holds no database connection.
pub struct Batch(Vec<Parsed>);

impl Batch {
    /// Parses every item of `queue` on its own: a bad one fails alone.
    pub fn parse(queue: &[Box<RawValue>], window: &OccurredWindow) -> Self {
        Self(queue.iter().map(|raw| parse(raw, window)).collect())
    }
}

fn parse(raw: &RawValue, window: &OccurredWindow) -> Parsed {
    match QueueItem::from_raw(raw) {
        Ok(item) => match item.payload.occurred_at {
            Some(t) if t < window.earliest || t > window.latest => Parsed::Invalid {
                id: Some(item.id),
                op_id: item.op_id,
                failure: ItemFailure::OccurredOutOfRange { occurred_at: t },
            },
            _ => Parsed::Valid(item),
        },
        Err(e) => Parsed::Invalid {
            id: e.id,
            // Echoed when readable, so that our agent can match the failure.
            op_id: echoed_op_id(raw),
            failure: ItemFailure::Malformed(e.message),
        },
    }
}

/// The `op_id` of an item that failed to parse, when it has a readable one.
fn echoed_op_id(raw: &RawValue) -> Option<OpId> {
    let value: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    serde_json::from_value(value.get("op_id")?.clone()).ok()
}

/// Units by client (as the ledger reads them) as the wire carries them.
pub fn lease_entries(units: Vec<(i64, i64)>) -> Vec<LeaseEntry> {
    units
        .into_iter()
        .filter_map(|(c, units)| {
            Some(LeaseEntry {
                client_id: ClientId::new(c).ok()?,
                units,
            })
        })
        .collect()
}

/// Records the `items` pushed by `device` at `now`.
pub async fn push(
    ledger: &mut impl LedgerStore,
    device: &DeviceId,
    caller: Caller,
    items: &Batch,
    now: DateTime<Utc>,
) -> Result<PushDone, ApiError> {
    let parsed = &items.0;
    let ops: Vec<NewOp<'_>> = parsed
        .iter()
        .filter_map(|p| match p {
            Parsed::Valid(item) => Some(NewOp::new(device, item)),
            Parsed::Invalid { .. } => None,
        })
        .collect();
    let batch = ledger.record_batch(device, caller, &ops, now).await?;
    if batch.outcomes.len() != ops.len() {
        return Err(ApiError::Internal(format!(
            "the ledger answered {} outcomes for {} operations",
            batch.outcomes.len(),
            ops.len()
        )));
    }

    let (data, new_copies, unverified) = answers(device, parsed, &ops, batch.outcomes);
    let summary = summarize(device, &data, now);
    let quota_updates = batch.charged;
    let to_pusher = new_copies
        .into_iter()
        .map(WsMessage::CopyCompleted)
        .chain(std::iter::once(WsMessage::SyncCompleted(summary)))
        .collect();
    Ok(PushDone {
        response: PushResponse {
            success: true,
            data,
            quotas: batch.named,
            leases: lease_entries(batch.leases),
        },
        quota_updates,
        to_pusher,
        unverified,
    })
}

/// Every item's answer, in the order of the request (the parse failures in
/// their places), the `copy_completed` of each newly recorded copy, and the
/// ledger ids of those among them that are unverified.
fn answers(
    device: &DeviceId,
    parsed: &[Parsed],
    ops: &[NewOp<'_>],
    outcomes: Vec<Outcome>,
) -> (Vec<PushItemResult>, Vec<CopyCompleted>, Vec<i64>) {
    let mut new_copies = Vec::new();
    let mut unverified = Vec::new();
    let mut recorded = ops.iter().zip(outcomes).map(|(op, outcome)| {
        if let Some(copy) = copy_event(device, op.item, &outcome) {
            if op.item.payload.unverified == Some(true) {
                unverified.push(copy.ledger_id);
            }
            new_copies.push(copy);
        }
        item_result(op.item, outcome)
    });
    let data = parsed
        .iter()
        .filter_map(|p| match p {
            Parsed::Valid(_) => recorded.next(),
            Parsed::Invalid { id, op_id, failure } => {
                Some(PushItemResult::failed(*id, *op_id, failure.to_string()))
            }
        })
        .collect();
    drop(recorded);
    (data, new_copies, unverified)
}

/// The wire answer for one recorded or refused operation.
fn item_result(item: &QueueItem, outcome: Outcome) -> PushItemResult {
    match outcome {
        Outcome::Recorded {
            ledger_id,
            duplicate,
            overdraft,
            ..
        } => PushItemResult {
            id: Some(item.id),
            status: PushStatus::Synced,
            error: None,
            op_id: item.op_id,
            duplicate,
            overdraft,
            ledger_id: Some(ledger_id),
        },
        Outcome::Failed(failure) => {
            PushItemResult::failed(Some(item.id), item.op_id, failure.to_string())
        }
    }
}

/// The `copy_completed` of an operation this push newly recorded; none for a
/// duplicate (it was announced when first recorded) or a failure.
fn copy_event(device: &DeviceId, item: &QueueItem, outcome: &Outcome) -> Option<CopyCompleted> {
    match *outcome {
        Outcome::Recorded {
            ledger_id,
            duplicate: false,
            overdraft,
            occurred_at,
        } => Some(CopyCompleted {
            ledger_id,
            client_id: item.payload.client_id,
            uid: item.payload.uid.clone(),
            op_type: item.op_type,
            device_id: device.clone(),
            id: item.id,
            op_id: item.op_id,
            occurred_at,
            overdraft,
        }),
        _ => None,
    }
}

fn summarize(device: &DeviceId, data: &[PushItemResult], now: DateTime<Utc>) -> SyncCompleted {
    let synced = data
        .iter()
        .filter(|r| r.status == PushStatus::Synced)
        .count() as u32;
    let duplicates = data.iter().filter(|r| r.duplicate).count() as u32;
    let failed = data.len() as u32 - synced;
    tracing::info!(device = %device, items = data.len(), synced, duplicates, failed, "push");
    SyncCompleted {
        device_id: device.clone(),
        synced,
        failed,
        duplicates,
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::ledger::{BatchOutcome, IdempotencyKey};

    /// A ledger in memory: enough to check the use case without PostgreSQL.
    #[derive(Default)]
    struct MemoryLedger {
        rows: HashMap<IdempotencyKey, i64>,
    }

    impl LedgerStore for MemoryLedger {
        async fn record_batch(
            &mut self,
            _device: &DeviceId,
            _caller: Caller,
            ops: &[NewOp<'_>],
            now: DateTime<Utc>,
        ) -> Result<BatchOutcome, ApiError> {
            let outcomes = ops
                .iter()
                .map(|op| {
                    if op.item.payload.client_id.get() != 1 {
                        return Outcome::Failed(ItemFailure::UnknownClient(
                            op.item.payload.client_id,
                        ));
                    }
                    let next = self.rows.len() as i64 + 1;
                    let duplicate = self.rows.contains_key(&op.key);
                    let ledger_id = *self.rows.entry(op.key.clone()).or_insert(next);
                    Outcome::Recorded {
                        ledger_id,
                        duplicate,
                        overdraft: false,
                        occurred_at: now,
                    }
                })
                .collect();
            Ok(BatchOutcome {
                outcomes,
                ..BatchOutcome::default()
            })
        }
    }

    fn copy(id: i64, op: &str, client: i64) -> Box<RawValue> {
        raw(
            json!({"id": id, "op_id": op, "type": "copy", "payload": {"client_id": client, "uid": "04AB12CD"}}),
        )
    }

    fn raw(v: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    #[tokio::test]
    async fn answers_every_item_in_input_order_and_announces_only_new_copies() {
        let device = DeviceId::parse("kiosk-1").unwrap();
        let op = "0190a6b0-0000-7000-8000-000000000001";
        let queue = vec![
            copy(1, op, 1),
            raw(
                json!({"id": 2, "op_id": "0190a6b0-0000-7000-8000-000000000002", "type": "teleport"}),
            ),
            copy(3, op, 1),
            copy(4, "0190a6b0-0000-7000-8000-000000000004", 99),
        ];
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let window = OccurredWindow::around(
            now,
            std::time::Duration::from_secs(86_400),
            std::time::Duration::from_secs(3600),
        );
        let done = push(
            &mut MemoryLedger::default(),
            &device,
            Caller::Login,
            &Batch::parse(&queue, &window),
            now,
        )
        .await
        .unwrap();
        let data = &done.response.data;
        assert_eq!(
            data.iter().map(|r| r.id).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(3), Some(4)]
        );
        assert_eq!(
            (data[0].status, data[0].duplicate),
            (PushStatus::Synced, false)
        );
        assert_eq!(data[1].status, PushStatus::Failed);
        assert_eq!(
            data[1].op_id.map(|o| o.to_string()).as_deref(),
            Some("0190a6b0-0000-7000-8000-000000000002"),
            "a failed item's op_id is echoed"
        );
        assert!(
            data[1].error.as_deref().unwrap().contains("teleport"),
            "{:?}",
            data[1]
        );
        assert_eq!(
            (data[2].status, data[2].duplicate, data[2].ledger_id),
            (PushStatus::Synced, true, Some(1))
        );
        assert_eq!(data[3].error.as_deref(), Some("unknown client 99"));
        assert!(
            done.quota_updates.is_empty(),
            "the memory ledger charged no quota"
        );
        assert_eq!(
            done.to_pusher.len(),
            2,
            "one copy_completed for the one new copy, then the summary"
        );
        assert!(matches!(done.to_pusher[0], WsMessage::CopyCompleted(_)));
        match &done.to_pusher[1] {
            WsMessage::SyncCompleted(s) => {
                assert_eq!((s.synced, s.failed, s.duplicates, s.at), (2, 2, 1, now));
            }
            other => panic!("expected sync_completed, got {other:?}"),
        }
    }
}
