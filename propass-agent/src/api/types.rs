//! The local API's request and response bodies, shared by the handlers, the
//! CLI and the tests. docs/agent-api.md shows them.

use chrono::{DateTime, Utc};
use propass_nfc::{BlankKind, TagInfo};
use propass_protocol::{BadgeUid, ClientId, DeviceId, OpId, OpType, Role};
use serde::{Deserialize, Serialize};

use crate::store::{LocalQuota, QueuedOp};

/// `POST /v1/operations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    #[serde(rename = "type")]
    pub op_type: OpType,
    pub client_id: ClientId,
    pub uid: BadgeUid,
    /// When the card was made (default: now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// The caller's own id for this operation (a UUID): makes a retry safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<OpId>,
}

/// The answer to `POST /v1/operations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordResponse {
    pub success: bool,
    pub operation: QueuedOp,
    /// The client's local remaining after it.
    pub remaining: i64,
    /// A retry of an operation already recorded (answered 200, not 201).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `POST /v1/copy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    /// The client paying for the copy.
    pub client_id: ClientId,
}

/// `POST /v1/write-card`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteCardRequest {
    /// The client paying for the card.
    pub client_id: ClientId,
    /// The UID to put on the blank.
    pub uid: BadgeUid,
}

/// The answer to `POST /v1/copy` and `POST /v1/write-card`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MadeResponse {
    pub success: bool,
    pub operation: QueuedOp,
    pub remaining: i64,
    pub blank: BlankKind,
}

/// `POST /v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Default: the known one.
    pub server_url: Option<String>,
    pub username: String,
    pub password: String,
}

/// The answer to `POST /v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub success: bool,
    pub username: String,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    /// The device the token is bound to.
    pub device_id: DeviceId,
}

/// `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Default: the known one.
    pub server_url: Option<String>,
    /// The operator's one-time code.
    pub code: String,
}

/// The answer to `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub success: bool,
    pub device_id: DeviceId,
    /// The name the operator gave this kiosk.
    pub name: Option<String>,
    /// When the credential chain ends (enroll again before).
    pub credential_expires_at: DateTime<Utc>,
}

/// The answer to `GET /v1/health` when the kiosk can record (else the
/// error `recording_unavailable`, 503).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthView {
    pub ok: bool,
    /// The reader as last met: `unknown` before first use, `ok`, `absent`,
    /// `failing` (a copy needs it, the health does not).
    pub reader: propass_protocol::ReaderHealth,
    /// Operations waiting to be pushed.
    pub pending: i64,
}

/// The answer to `POST /v1/sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse {
    pub success: bool,
    pub synced: usize,
    pub failed: usize,
    pub pending: i64,
}

/// The answer to `POST /v1/queue/retry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryResponse {
    /// Failed operations made pending again.
    pub retried: usize,
}

/// `GET /v1/queue` query string.
#[derive(Debug, Clone, Deserialize)]
pub struct QueueQuery {
    pub status: Option<String>,
    pub limit: Option<usize>,
}

/// The answer to `GET /v1/nfc/readers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadersResponse {
    /// libnfc connection strings.
    pub readers: Vec<String>,
}

/// The answer to `POST /v1/nfc/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelResponse {
    pub success: bool,
}

/// A tag as the API shows it (`POST /v1/nfc/read`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagView {
    /// Upper-case hex.
    pub uid: String,
    /// Hex, most significant byte first.
    pub atqa: String,
    /// Hex.
    pub sak: String,
    /// `mifare_classic_1k`, `mifare_classic_4k`, `mifare_ultralight` or `iso14443a`.
    pub family: String,
}

impl From<&TagInfo> for TagView {
    fn from(t: &TagInfo) -> Self {
        Self {
            uid: t.uid_hex(),
            atqa: format!("{:02X}{:02X}", t.atqa[0], t.atqa[1]),
            sak: format!("{:02X}", t.sak),
            family: t.family.as_str().into(),
        }
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub device_id: String,
    /// The server in use.
    pub server_url: Option<String>,
    /// The last request to the server got an answer.
    pub online: bool,
    pub ws_connected: bool,
    /// Holds a token the server has not refused.
    pub logged_in: bool,
    /// Why a login is needed, when it is.
    pub login_required: Option<String>,
    /// Who logged in.
    pub username: Option<String>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub queue: QueueCountsView,
    /// Age of the oldest pending item, in seconds.
    pub oldest_pending_age_secs: Option<i64>,
    /// The last successful sync.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// The last sync error.
    pub last_error: Option<String>,
    /// Why the database refused a write (full or read-only disk): a copy
    /// is refused before any blank for as long as writes fail. `null` again
    /// once a check (heartbeat, watchdog, `GET /v1/health`, or every
    /// `heartbeat_secs` while it is set) finds writes go through.
    pub storage_error: Option<String>,
    pub quotas: Vec<QuotaView>,
}

/// Queue depth by status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueCountsView {
    pub pending: i64,
    pub synced: i64,
    pub failed: i64,
}

/// One client's quota (`GET /v1/quotas`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaView {
    pub client_id: i64,
    pub name: Option<String>,
    /// What this kiosk may still make.
    pub remaining: i64,
    /// Recorded here, not yet synced.
    pub unsynced: i64,
    /// Held by cards being made right now.
    #[serde(default)]
    pub reserved: i64,
    /// The units the server set aside for this kiosk, as of its last answer
    /// (`null`: no lease; the kiosk spends the free units optimistically).
    #[serde(default)]
    pub lease: Option<i64>,
    /// The client accepts copies that leave out protected sectors.
    #[serde(default)]
    pub partial_copy: bool,
}

impl From<LocalQuota> for QuotaView {
    fn from(q: LocalQuota) -> Self {
        Self {
            client_id: q.client_id.get(),
            name: q.name,
            remaining: q.remaining,
            unsynced: q.unsynced,
            reserved: q.reserved,
            lease: q.lease,
            partial_copy: q.partial_copy,
        }
    }
}
