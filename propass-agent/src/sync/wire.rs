//! The one serialization boundary: wire types of `propass-protocol` to the
//! store's local types and back.

use propass_protocol::{
    DeviceId, LeaseEntry, OpPayload, PushItemResult, PushRequest, PushStatus, QueueItem,
    QuotaEntry, QuotaUpdated,
};

use crate::store::{ItemOutcome, LeaseWord, QueuedOp, ServerQuota};

/// A push of `batch`, oldest first.
pub fn push_request(device_id: &DeviceId, batch: &[QueuedOp]) -> PushRequest {
    PushRequest {
        device_id: device_id.clone(),
        queue: batch.iter().map(queue_item).collect(),
    }
}

fn queue_item(op: &QueuedOp) -> QueueItem {
    QueueItem {
        id: op.id,
        op_id: Some(op.op_id),
        op_type: op.op_type,
        payload: OpPayload {
            client_id: op.client_id,
            uid: op.uid.clone(),
            occurred_at: Some(op.occurred_at),
            sectors: op.sectors.clone(),
            unverified: op.unverified.then_some(true),
        },
    }
}

/// A push's per-item results; one without a local id cannot be ours.
pub fn outcomes(results: Vec<PushItemResult>) -> Vec<ItemOutcome> {
    results
        .into_iter()
        .filter_map(|r| {
            Some(ItemOutcome {
                id: r.id?,
                op_id: r.op_id,
                result: match r.status {
                    PushStatus::Synced => Ok(()),
                    PushStatus::Failed => {
                        Err(r.error.unwrap_or_else(|| "refused by the server".into()))
                    }
                },
            })
        })
        .collect()
}

/// A pull's entry (with the kiosk's lease, or the word that it holds none).
pub fn listed_quota(q: QuotaEntry) -> ServerQuota {
    ServerQuota {
        client: q.client_id,
        name: q.name,
        remaining: q.remaining,
        version: q.version,
        partial_copy: q.partial_copy,
        lease: match q.lease {
            Some(units) => LeaseWord::Units(units),
            None => LeaseWord::NoLease,
        },
        reader_keys: q.reader_keys,
    }
}

/// A push's quotas, each with the kiosk's lease when the answer gives one.
pub fn pushed_quotas(quotas: Vec<QuotaUpdated>, leases: &[LeaseEntry]) -> Vec<ServerQuota> {
    quotas
        .into_iter()
        .map(|q| {
            let lease = leases
                .iter()
                .find(|l| l.client_id == q.client_id)
                .map_or(LeaseWord::Unsaid, |l| LeaseWord::Units(l.units));
            ServerQuota {
                lease,
                ..updated_quota(q)
            }
        })
        .collect()
}

/// A push's quota or a live `quota_updated`.
pub fn updated_quota(q: QuotaUpdated) -> ServerQuota {
    ServerQuota {
        client: q.client_id,
        name: None,
        remaining: q.remaining,
        version: q.version,
        partial_copy: None,
        lease: LeaseWord::Unsaid,
        reader_keys: None,
    }
}
