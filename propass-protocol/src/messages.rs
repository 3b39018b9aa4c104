//! Request, response and WebSocket message bodies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BadgeUid, ClientId, DeviceId, OpId, ReaderKey, SectorMap};

/// A user's role on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything: users, clients, quotas, kiosks; may also run a kiosk.
    Admin,
    /// Clients, quotas and kiosks; not users, and not a kiosk's own calls.
    Operator,
    /// A kiosk account: log a device in, push, pull, WebSocket, refresh.
    Kiosk,
}

impl Role {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Kiosk => "kiosk",
        }
    }

    /// May make a kiosk's calls (push, pull, WebSocket, refresh).
    pub fn acts_as_kiosk(self) -> bool {
        matches!(self, Self::Admin | Self::Kiosk)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "operator" => Ok(Self::Operator),
            "kiosk" => Ok(Self::Kiosk),
            other => Err(format!(
                "unknown role {other:?} (expected admin, operator or kiosk)"
            )),
        }
    }
}

/// Where a kiosk device stands with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Seen (a password login) but not approved by an operator: it may
    /// refresh its token, nothing else.
    Pending,
    /// Approved or enrolled: it serves its assigned clients.
    Active,
    /// Stopped by an operator: every token and credential is dead.
    Revoked,
}

impl DeviceStatus {
    /// The status's wire (and database) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }
}

impl std::str::FromStr for DeviceStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "active" => Ok(Self::Active),
            "revoked" => Ok(Self::Revoked),
            other => Err(format!(
                "unknown device status {other:?} (expected pending, active or revoked)"
            )),
        }
    }
}

/// `POST /api/devices/enroll` body: our agent trades a one-time enrollment
/// code for a device credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The code an operator created (`propass-server device enroll`); dashes,
    /// spaces and case do not matter.
    pub code: String,
    /// The id the agent chose for itself (the server keeps it as the device's id).
    pub device_id: DeviceId,
    /// The agent's version, shown to operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// `POST /api/devices/token` body: a refresh credential, used once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTokenRequest {
    /// The refresh credential of the last answer (single use).
    pub credential: String,
    /// The agent's version, shown to operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// Answer of `POST /api/devices/enroll` and `POST /api/devices/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTokenResponse {
    /// Always `true`.
    pub success: bool,
    /// The device's id.
    pub device_id: DeviceId,
    /// The name an operator gave the device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A short-lived access token (`Authorization: Bearer …`).
    pub token: String,
    /// When `token` expires.
    pub expires_at: DateTime<Utc>,
    /// The next refresh credential: single use, replaces the one sent.
    pub credential: String,
    /// After this the chain ends and the device must be enrolled again.
    pub credential_expires_at: DateTime<Utc>,
}

/// `POST /api/auth/login` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The user's name.
    pub username: String,
    /// The user's password.
    pub password: String,
    /// The kiosk the token will be bound to.
    pub device_id: DeviceId,
}

/// The user as returned by login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Server-side user id.
    pub id: i64,
    /// The user's name.
    pub username: String,
    /// The user's role.
    pub role: Role,
}

/// `POST /api/auth/login` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// Always `true` (errors use [`crate::ErrorBody`]).
    pub success: bool,
    /// A JWT to send as `Authorization: Bearer …`.
    pub token: String,
    /// Who logged in.
    pub user: UserInfo,
    /// When the token expires (also in its `exp` claim). Optional: the seed client ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// `POST /api/auth/refresh` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshResponse {
    /// Always `true`.
    pub success: bool,
    /// The new token.
    pub token: String,
    /// When the new token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The kind of physical operation a kiosk performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpType {
    /// A customer's badge was read and cloned onto a blank card.
    Copy,
    /// A UID from the records was written onto a blank card.
    Write,
}

impl OpType {
    /// The type's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Write => "write",
        }
    }
}

impl std::str::FromStr for OpType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "copy" => Ok(Self::Copy),
            "write" => Ok(Self::Write),
            other => Err(format!(
                "unknown operation type {other:?} (expected copy or write)"
            )),
        }
    }
}

/// What was done, for whom. Unknown fields (the seed client sends
/// `"status": "pending"`) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpPayload {
    /// The customer whose quota pays for the card.
    pub client_id: ClientId,
    /// The UID now on the new card.
    pub uid: BadgeUid,
    /// When the kiosk made the card. Absent from the seed client; the server
    /// then uses the arrival time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// A whole-badge copy: which sectors it carries (see [`SectorMap`]).
    /// Absent for a UID-only operation and from the seed client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sectors: Option<SectorMap>,
    /// `true`: the kiosk wrote the card but could not verify it (the card
    /// was lifted, the reader failed, the kiosk crashed mid-write): the card
    /// may work, so it is charged like any copy and flagged in the ledger
    /// for an operator. Absent (or false) for a verified card and from the
    /// seed client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified: Option<bool>,
}

/// One queued operation in a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    /// The kiosk's own local integer id (the seed client's SQLite row id),
    /// echoed in the result.
    pub id: i64,
    /// Globally unique operation id (our agent always sends one). When present
    /// it is the idempotency key; otherwise `(device_id, id)` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<OpId>,
    /// `copy` or `write`.
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// What was done.
    pub payload: OpPayload,
}

/// Why one queue item of a push cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// The item's `id`, when it has a usable one.
    pub id: Option<i64>,
    /// A sentence saying what is wrong.
    pub message: String,
}

impl QueueItem {
    /// Parses one item of a push leniently: a bad item is reported with its
    /// own id (when it has one) so that the rest of the batch still goes in.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ItemError> {
        let id = value.get("id").and_then(serde_json::Value::as_i64);
        let fail = |message: String| ItemError { id, message };
        if !value.is_object() {
            return Err(fail("queue item must be a JSON object".into()));
        }
        if id.is_none() {
            return Err(fail("queue item needs an integer \"id\"".into()));
        }
        match value.get("type").and_then(serde_json::Value::as_str) {
            Some(t) => {
                t.parse::<OpType>().map_err(fail)?;
            }
            None => return Err(fail("queue item needs a \"type\" (copy or write)".into())),
        }
        let payload = value
            .get("payload")
            .ok_or_else(|| fail("queue item needs a \"payload\" object".into()))?;
        if let Some(cid) = payload.get("client_id") {
            if !cid.is_i64() {
                return Err(fail("payload.client_id must be an integer".into()));
            }
        }
        serde_json::from_value::<Self>(value.clone())
            .map_err(|e| fail(format!("invalid queue item: {e}")))
    }

    /// [`Self::from_json`] on an item's JSON text, parsing it once: a
    /// well-formed object goes straight into its type; anything else takes
    /// the lenient path, which answers exactly what `from_json` answers
    /// (an array, a duplicated key — the last one wins there — and every
    /// error message).
    pub fn from_raw(raw: &serde_json::value::RawValue) -> Result<Self, ItemError> {
        let text = raw.get();
        if text.starts_with('{') {
            if let Ok(item) = serde_json::from_str::<Self>(text) {
                return Ok(item);
            }
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => Self::from_json(&value),
            // Unreachable for a RawValue (it is valid JSON), kept total.
            Err(e) => Err(ItemError {
                id: None,
                message: format!("invalid queue item: {e}"),
            }),
        }
    }
}

/// `POST /api/sync/push` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The pushing kiosk; must be the device its token was issued to.
    pub device_id: DeviceId,
    /// Operations, oldest first.
    pub queue: Vec<QueueItem>,
}

/// Outcome of one pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushStatus {
    /// Recorded in the ledger (now, or by an earlier push of the same item).
    Synced,
    /// Not recorded; `error` says why. Retrying unchanged will fail again.
    Failed,
}

/// Result of one pushed item, matched to it by the echoed `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushItemResult {
    /// The item's own `id`, echoed (`null` only when the item had none).
    pub id: Option<i64>,
    /// `synced` or `failed`.
    pub status: PushStatus,
    /// Why it failed, as a plain string; `null` when synced.
    pub error: Option<String>,
    /// The item's `op_id`, echoed when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<OpId>,
    /// `true` when the ledger already held this item (a retried push); it was
    /// not counted again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// `true` when this copy took its client past the quota. It is recorded
    /// and counted anyway: the card exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdraft: bool,
    /// The ledger row id of the recorded copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_id: Option<i64>,
}

impl PushItemResult {
    /// A failed result.
    pub fn failed(id: Option<i64>, op_id: Option<OpId>, error: impl Into<String>) -> Self {
        Self {
            id,
            status: PushStatus::Failed,
            error: Some(error.into()),
            op_id,
            duplicate: false,
            overdraft: false,
            ledger_id: None,
        }
    }
}

/// `POST /api/sync/push` answer (HTTP 200 even when some items failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    /// `true`: the batch was processed (look at each item's status).
    pub success: bool,
    /// One result per item, in the order of the request.
    pub data: Vec<PushItemResult>,
    /// Optional: the remaining quota, as of this batch's commit, of every
    /// known client the batch names (duplicates included). Lets a kiosk
    /// update its cache in the same step that marks the items synced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaUpdated>,
    /// Optional: the units the pushing kiosk still holds in lease for each
    /// client the batch names, after this batch consumed its copies. Only
    /// for a kiosk that holds leases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<LeaseEntry>,
}

/// `DELETE /api/sync/lease` answer: the units given back, by client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReleaseResponse {
    /// Always `true`.
    pub success: bool,
    /// What the kiosk held and gave back.
    pub released: Vec<LeaseEntry>,
}

/// The units of a client's quota set aside for one kiosk: it may make that
/// many copies with no server in reach, and no other kiosk can spend them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    /// The client whose units they are.
    pub client_id: ClientId,
    /// Units the kiosk holds (0: none).
    pub units: i64,
}

/// One client's quota as a kiosk sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaEntry {
    /// The client.
    pub client_id: ClientId,
    /// Copies left that no kiosk holds in lease (what a kiosk without a
    /// lease may spend); negative after an overdraft.
    pub remaining: i64,
    /// The client's name, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Optional: the quota row's version, bumped by every change; a kiosk
    /// ignores a value older than one it already has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Optional: the client accepts a copy that leaves out sectors the kiosk
    /// cannot read (absent: it does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_copy: Option<bool>,
    /// Optional: the units this kiosk holds in lease for the client (asked
    /// for with `?lease=true`, refilled in the same answer when low). A
    /// kiosk with a lease spends only from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
    /// Optional: every key an operator gave for this client's badges (asked
    /// for with `?reader_keys=true`; an empty list when there are none). A
    /// kiosk tries them, with its own, on the badges it copies for the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_keys: Option<Vec<ReaderKey>>,
}

/// `GET /api/sync/pull` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Always `true`.
    pub success: bool,
    /// The quotas of the clients this kiosk may serve.
    pub quotas: Vec<QuotaEntry>,
    /// The server's clock when the quotas were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<DateTime<Utc>>,
    /// Optional: the highest local `id` of this device's operations in the
    /// ledger (0: none). A kiosk sends again the operations it holds as
    /// synced above it: the server was restored from a backup, or is
    /// another server (retries are deduplicated on `op_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_through: Option<i64>,
    /// Optional: this answer's version. A kiosk sends it back as
    /// `?since_version=` and gets only the clients changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Optional: `true` when `quotas` lists only the clients changed since
    /// the `since_version` asked (the others are as that answer said);
    /// absent or `false`: every client the kiosk serves, the others are
    /// no longer its.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<bool>,
    /// Optional (with `?lease=true`): the units of this kiosk's leases above
    /// their target, by client — an operator lowered it. The kiosk gives
    /// back those it has not spent (`DELETE /api/sync/lease?client_id=…&units=…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lease_excess: Vec<LeaseEntry>,
}

/// `GET /health` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// `ok` or `unavailable`.
    pub status: String,
    /// `up` or `down`.
    pub database: String,
    /// The server's version.
    pub version: String,
}

/// `quota_updated`: a client's remaining quota changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUpdated {
    /// The client.
    pub client_id: ClientId,
    /// Copies left now; negative after an overdraft.
    pub remaining: i64,
    /// Optional: the quota row's version (see [`QuotaEntry::version`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// `sync_completed`: sent to the kiosk that pushed, after its push committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCompleted {
    /// The kiosk that pushed.
    pub device_id: DeviceId,
    /// Items recorded (including duplicates already recorded).
    pub synced: u32,
    /// Items refused.
    pub failed: u32,
    /// Of `synced`, how many were already in the ledger.
    pub duplicates: u32,
    /// When the push committed.
    pub at: DateTime<Utc>,
}

/// `copy_completed`: a new operation reached the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyCompleted {
    /// Ledger row id.
    pub ledger_id: i64,
    /// The client charged.
    pub client_id: ClientId,
    /// The UID on the new card.
    pub uid: BadgeUid,
    /// `copy` or `write`.
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// The kiosk that made it.
    pub device_id: DeviceId,
    /// The kiosk's local id of the operation.
    pub id: i64,
    /// The operation's global id, when the kiosk sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<OpId>,
    /// When the card was made.
    pub occurred_at: DateTime<Utc>,
    /// Whether it took the client past the quota.
    pub overdraft: bool,
}

/// Every WebSocket message, both directions: `{"type": "...", "data": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum WsMessage {
    /// Client → server liveness probe (answered `pong`).
    Ping,
    /// Server → client answer to `ping`.
    Pong,
    /// A client's quota changed.
    QuotaUpdated(QuotaUpdated),
    /// The receiving kiosk's push committed.
    SyncCompleted(SyncCompleted),
    /// A new operation reached the ledger.
    CopyCompleted(CopyCompleted),
    /// Kiosk → server: how the kiosk is doing (also `POST
    /// /api/devices/heartbeat` while its socket is down).
    Heartbeat(KioskHeartbeat),
    /// Server → kiosk: what the server keeps of this kiosk changed — the
    /// clients it serves, or a lease an operator took back — so pull now.
    /// Sent only on a socket whose upgrade asked for it
    /// (`accept=sync_requested`): the seed client does not know it.
    SyncRequested,
}

/// What a kiosk puts in its WebSocket upgrade's `accept` query parameter to
/// be sent [`WsMessage::SyncRequested`].
pub const ACCEPT_SYNC_REQUESTED: &str = "sync_requested";

/// What the reader looked like at the kiosk's last use of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaderHealth {
    /// Not used since the agent started.
    Unknown,
    /// Answered.
    Ok,
    /// Not found (unplugged, or the driver holds it).
    Absent,
    /// Found, but it stopped answering.
    Failing,
}

/// A kiosk's heartbeat: the server keeps the latest of each device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KioskHeartbeat {
    /// The agent's version.
    pub agent_version: String,
    /// Operations waiting to be pushed.
    pub pending: i64,
    /// Operations the server refused (waiting for `queue retry`).
    pub failed: i64,
    /// When the oldest pending operation was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// The last successful sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<DateTime<Utc>>,
    /// The last sync error, if the last sync failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The reader.
    pub reader: ReaderHealth,
    /// Blanks written and verified since the agent started.
    pub blanks_written: u64,
    /// Writes that failed since the agent started (nothing written, or in doubt).
    pub blanks_failed: u64,
    /// Why the kiosk's database refuses writes (disk full, read-only, I/O
    /// error) — absent while it takes them. A kiosk that cannot record
    /// makes no card until this is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    /// The kiosk's clock when it sent this.
    pub clock: DateTime<Utc>,
}
