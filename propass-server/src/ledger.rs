//! The ledger's vocabulary: an operation to record with its idempotency key,
//! what became of it, and the [`LedgerStore`] port the push use case records
//! through (its PostgreSQL implementation is `db::copies`). No I/O here.
//!
//! The invariant the store keeps: a whole push is recorded in one
//! transaction, each operation at most once (unique idempotency key), and a
//! client is charged only for the rows actually inserted.

use std::fmt;

use chrono::{DateTime, Utc};
use propass_protocol::{ClientId, DeviceId, QueueItem, QuotaUpdated};

use crate::device::Caller;
use crate::error::ApiError;

/// What makes an operation unique in the ledger: `op:<op_id>` when the kiosk
/// sent a UUID (our agent always does), else `dev:<device>:<local id>` (the
/// seed client's SQLite row id, unique per device).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of `item` pushed by `device`.
    pub fn of(device: &DeviceId, item: &QueueItem) -> Self {
        Self(match item.op_id {
            Some(op) => format!("op:{op}"),
            None => format!("dev:{device}:{}", item.id),
        })
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One valid operation of a push.
#[derive(Debug, Clone)]
pub struct NewOp<'a> {
    /// The item as the kiosk sent it.
    pub item: &'a QueueItem,
    /// Its key in the ledger.
    pub key: IdempotencyKey,
}

impl<'a> NewOp<'a> {
    /// The operation of `item` pushed by `device`.
    pub fn new(device: &DeviceId, item: &'a QueueItem) -> Self {
        Self {
            key: IdempotencyKey::of(device, item),
            item,
        }
    }
}

/// Why one item of a push was not recorded. Rendered to the seed client's
/// error string only at the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemFailure {
    /// Not a valid queue item (the parser's sentence).
    Malformed(String),
    /// `occurred_at` outside what a kiosk's clock can plausibly say.
    OccurredOutOfRange {
        /// What the item said.
        occurred_at: DateTime<Utc>,
    },
    /// No such client.
    UnknownClient(ClientId),
    /// The client exists, but the pushing device is not assigned to it.
    NotServed(ClientId),
    /// The key is in the ledger for another operation (a seed kiosk whose
    /// database was rebuilt and reuses local ids). The fields are for the
    /// server's log, never for the answer.
    Conflict {
        /// The row already holding the key.
        ledger_id: i64,
        /// Its operation type.
        kind: String,
        /// Its badge UID.
        uid: String,
        /// Its client.
        client_id: i64,
    },
}

impl fmt::Display for ItemFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => f.write_str(why),
            Self::OccurredOutOfRange { occurred_at } => write!(
                f,
                "occurred_at {} is not plausible (too far in the future or the past for this server): check the kiosk's clock",
                occurred_at.to_rfc3339()
            ),
            Self::UnknownClient(c) => write!(f, "unknown client {c}"),
            Self::NotServed(c) => write!(f, "client {c} is not served by this kiosk"),
            // Says nothing of the other operation: its badge UID and client
            // are not this caller's to read.
            Self::Conflict { .. } => f.write_str(
                "conflict: this operation's key was already recorded for another operation; \
                 send a unique op_id",
            ),
        }
    }
}

/// What became of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In the ledger.
    Recorded {
        /// Ledger row id.
        ledger_id: i64,
        /// Already there before this operation (not counted again).
        duplicate: bool,
        /// This copy took its client past the quota.
        overdraft: bool,
        /// When it happened.
        occurred_at: DateTime<Utc>,
    },
    /// Not recorded.
    Failed(ItemFailure),
}

/// What the ledger answers for a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// One per operation given, in the same order.
    pub outcomes: Vec<Outcome>,
    /// New remaining of every client charged by this batch, by client id (broadcast).
    pub charged: Vec<QuotaUpdated>,
    /// Remaining of every known client the batch names, charged or not, by
    /// client id (answered to the pusher).
    pub named: Vec<QuotaUpdated>,
    /// `(client id, units)` the pushing device still holds in lease for the
    /// named clients it holds one of, after this batch (answered to the pusher).
    pub leases: Vec<(i64, i64)>,
}

/// Where pushes are recorded.
// The handlers run on actix's single-threaded workers: the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait LedgerStore {
    /// Records `ops` pushed by `device` at `now` (the time of copies that
    /// carry none), all or nothing; notes the device's contact even for an
    /// empty batch. A device that does not admit `caller`'s push (see
    /// [`crate::device::admit`]: revoked, pending, stale credentials) gets
    /// that error and records nothing. An operation for a client the device
    /// does not serve fails alone.
    async fn record_batch(
        &mut self,
        device: &DeviceId,
        caller: Caller,
        ops: &[NewOp<'_>],
        now: DateTime<Utc>,
    ) -> Result<BatchOutcome, ApiError>;
}
