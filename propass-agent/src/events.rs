//! Events the agent streams to local listeners (the kiosk UI), as NDJSON
//! lines `{"type": "...", "data": {...}}` on `GET /v1/events`.

use propass_protocol::{ClientId, CopyCompleted, SyncCompleted};
use serde::Serialize;

use crate::store::QueuedOp;

/// A step of the kiosk flow, as `card_progress` events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardStep {
    /// Waiting for the customer's badge.
    WaitingForSource,
    /// The badge was read; it may leave the reader.
    SourceRead,
    /// Waiting for a blank (a card other than the badge).
    WaitingForBlank,
    /// Writing and verifying the blank.
    Writing,
    /// The card reads back as written and is recorded.
    Verified,
    /// The flow stopped; `message` says why. Nothing was recorded.
    Failed,
}

/// One event.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum AgentEvent {
    /// An operation was recorded locally.
    Recorded(QueuedOp),
    /// A client's remaining changed (server update, or local recording).
    QuotaUpdated {
        client_id: ClientId,
        /// What this kiosk may still make.
        remaining: i64,
    },
    /// A sync cycle finished.
    SyncResult {
        /// Items acknowledged.
        synced: usize,
        /// Items refused.
        failed: usize,
        /// Items still waiting.
        pending: i64,
    },
    /// The server became reachable or unreachable.
    Connectivity { online: bool },
    /// The server refused the token: someone must log in again.
    LoginRequired { reason: String },
    /// A step of the kiosk flow at the reader (copy or write).
    CardProgress {
        step: CardStep,
        /// The UID concerned, when known.
        uid: Option<String>,
        /// What went wrong, for `failed`.
        message: Option<String>,
    },
    /// Forwarded from the server: this kiosk's push committed.
    SyncCompleted(SyncCompleted),
    /// Forwarded from the server: a copy reached the ledger.
    CopyCompleted(CopyCompleted),
}
