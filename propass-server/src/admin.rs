//! What operators and admins change, as use cases shared by the admin HTTP
//! API and the command line: each checks its input, makes the change and
//! writes its audit entry in one transaction — the change and its trace
//! commit together, or neither does. Reads for the dashboard live in `db`.
//!
//! Every audit entry is announced at commit (`db::audit::AUDIT_CHANNEL`), and
//! that announcement is what refreshes open dashboards on every server.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};
use propass_protocol::{ClientId, DeviceId, DeviceStatus, ReaderKey, Role};

use crate::auth::secrets;
use crate::db;
use crate::db::clients::ClientOverview;
use crate::db::devices::DeviceChangeError;

/// Longest validity of an enrollment code, in hours (a code is a key to the fleet).
pub const MAX_CODE_HOURS: u32 = 24 * 30;
/// Longest reason kept with a quota change or a void.
pub const MAX_REASON_CHARS: usize = 500;
/// Largest quota change at once (a typo guard, not a business rule).
pub const MAX_QUOTA_DELTA: i64 = 1_000_000_000;

/// Why an operator's change was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The record named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts the record's state.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

impl From<DeviceChangeError> for AdminError {
    fn from(e: DeviceChangeError) -> Self {
        match e {
            DeviceChangeError::Db(e) => Self::Db(e),
            DeviceChangeError::Exists(_) => Self::Conflict(e.to_string()),
            DeviceChangeError::UnknownDevice(_) | DeviceChangeError::UnknownClient(_) => {
                Self::NotFound(e.to_string())
            }
        }
    }
}

impl From<db::corrections::VoidError> for AdminError {
    fn from(e: db::corrections::VoidError) -> Self {
        use db::corrections::VoidError as V;
        match e {
            V::Db(e) => Self::Db(e),
            V::NoSuchCopy(_) => Self::NotFound(e.to_string()),
            V::NoReason => Self::Invalid(e.to_string()),
            V::Verified(_) | V::AlreadyVoid(_) => Self::Conflict(e.to_string()),
        }
    }
}

/// Result of a use case.
pub type AdminResult<T> = Result<T, AdminError>;

/// Who makes a change, as the audit log names it: `user:NAME` for a person
/// in the dashboard, `cli:LOGIN` for the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// A person logged in to the dashboard.
    pub fn user(name: &str) -> Self {
        Self(format!("user:{name}"))
    }
    /// Someone at the server's command line.
    pub fn cli(login: &str) -> Self {
        Self(format!("cli:{login}"))
    }
    /// As the audit log shows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Runs `change` and appends `(action, subject, detail)` to the audit log in
/// one transaction.
///
/// The transaction is driven by hand, not by `conn.transaction`: that one
/// wants a `Send` future, which an `AsyncFnOnce` taken generically cannot
/// promise on stable Rust.
async fn audited<T>(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
    change: impl AsyncFnOnce(&mut AsyncPgConnection) -> AdminResult<T>,
) -> AdminResult<T> {
    audited_outcome(conn, actor, action, subject, async move |conn| {
        Ok((change(conn).await?, detail))
    })
    .await
}

/// [`audited`], for a change whose entry says what it did (known only once
/// done): `change` answers its outcome and the entry's detail.
async fn audited_outcome<T>(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    action: &str,
    subject: &str,
    change: impl AsyncFnOnce(&mut AsyncPgConnection) -> AdminResult<(T, serde_json::Value)>,
) -> AdminResult<T> {
    type Tm = AnsiTransactionManager;
    Tm::begin_transaction(conn).await?;
    let done = async {
        let (out, detail) = change(conn).await?;
        db::audit::record(conn, actor.as_str(), action, subject, detail).await?;
        Ok(out)
    }
    .await;
    match done {
        Ok(out) => {
            Tm::commit_transaction(conn).await?;
            Ok(out)
        }
        Err(e) => {
            if let Err(rollback) = Tm::rollback_transaction(conn).await {
                tracing::warn!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

/// A name shown to people: 1 to 128 printable characters, trimmed.
fn display_name(what: &str, name: &str) -> AdminResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!(
            "a {what} name is 1 to 128 printable characters"
        )));
    }
    Ok(name.to_owned())
}

/// A reason kept in the audit log: not blank, at most [`MAX_REASON_CHARS`].
pub fn reason(text: &str) -> AdminResult<String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(AdminError::Invalid(
            "a reason is required (an order number, a correction…): it is kept in the audit log"
                .into(),
        ));
    }
    if text.chars().count() > MAX_REASON_CHARS || text.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!(
            "a reason is at most {MAX_REASON_CHARS} printable characters"
        )));
    }
    Ok(text.to_owned())
}

/// A client with what needs an operator's look: `overdrafts` (copies past
/// what it paid for were recorded), `low_quota` (at most `low_quota` units
/// left that no kiosk holds), `exhausted` (none left).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientView {
    #[serde(flatten)]
    pub client: ClientOverview,
    pub flags: Vec<&'static str>,
}

/// `client` with its flags, `low_quota` being the threshold.
pub fn flagged(client: ClientOverview, low_quota: i64) -> ClientView {
    let mut flags = Vec::new();
    if client.overdrafts > 0 {
        flags.push("overdrafts");
    }
    if client.remaining <= 0 {
        flags.push("exhausted");
    } else if client.remaining <= low_quota {
        flags.push("low_quota");
    }
    ClientView { client, flags }
}

/// One client as operators see it.
pub async fn client(conn: &mut AsyncPgConnection, id: i64) -> AdminResult<ClientOverview> {
    db::clients::overview(conn, Some(&[id]), true)
        .await?
        .pop()
        .ok_or_else(|| AdminError::NotFound(format!("no client with id {id}")))
}

/// Creates a client with an initial quota.
pub async fn create_client(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    name: &str,
    quota: i64,
    partial_copy: bool,
) -> AdminResult<ClientOverview> {
    let name = display_name("client", name)?;
    if !(0..=MAX_QUOTA_DELTA).contains(&quota) {
        return Err(AdminError::Invalid(format!(
            "an initial quota is 0 to {MAX_QUOTA_DELTA}"
        )));
    }
    let detail = serde_json::json!({"name": name, "quota": quota, "partial_copy": partial_copy});
    let id = audited(
        conn,
        actor,
        "client.add",
        &format!("client-name:{name}"),
        detail,
        async |conn| {
            db::clients::create(conn, &name, quota, partial_copy)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        AdminError::Conflict(format!("a client named {name:?} already exists"))
                    } else {
                        e.into()
                    }
                })
        },
    )
    .await?;
    client(conn, id).await
}

/// What an operator changes of a client (`None`: unchanged).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientChange<'a> {
    pub name: Option<&'a str>,
    pub archived: Option<bool>,
    /// Accept copies that leave out sectors the kiosk cannot read (kiosks
    /// learn it at their next pull).
    pub partial_copy: Option<bool>,
}

/// Renames, archives a client or changes its copy policy, audited. A client
/// kiosks still serve cannot be archived: take it off them first (their
/// unused leases come back then).
pub async fn update_client(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: i64,
    change: ClientChange<'_>,
) -> AdminResult<ClientOverview> {
    let ClientChange {
        name,
        archived,
        partial_copy,
    } = change;
    let name = name.map(|n| display_name("client", n)).transpose()?;
    if name.is_none() && archived.is_none() && partial_copy.is_none() {
        return Err(AdminError::Invalid(
            "nothing to change: give a name, archived or partial_copy".into(),
        ));
    }
    let detail =
        serde_json::json!({"name": name, "archived": archived, "partial_copy": partial_copy});
    audited(conn, actor, "client.update", &format!("client:{id}"), detail, async |conn| {
        let before = client(conn, id).await?;
        if archived == Some(true) && !before.kiosks.is_empty() {
            return Err(AdminError::Conflict(format!(
                "client {id} is served by {} kiosk(s) ({}): remove it from them before archiving it",
                before.kiosks.len(),
                before.kiosks.join(", ")
            )));
        }
        if let Some(name) = &name {
            db::clients::rename(conn, id, name).await.map_err(|e| {
                if is_unique_violation(&e) {
                    AdminError::Conflict(format!("a client named {name:?} already exists"))
                } else {
                    e.into()
                }
            })?;
        }
        if let Some(archived) = archived {
            db::clients::set_archived(conn, id, archived).await?;
        }
        if let Some(allow) = partial_copy {
            let client = ClientId::new(id).map_err(|e| AdminError::Invalid(e.to_string()))?;
            db::clients::set_partial_copy(conn, client, allow).await?;
        }
        Ok(())
    })
    .await?;
    client(conn, id).await
}

/// Replaces the keys of a client's badges (none: clears them), each once,
/// at most `max`; audited with their number, never the keys themselves.
/// The kiosks serving the client read them at their next pull.
pub async fn set_reader_keys(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: ClientId,
    keys: &[ReaderKey],
    max: usize,
) -> AdminResult<ClientOverview> {
    let mut seen = std::collections::HashSet::new();
    let keys: Vec<ReaderKey> = keys.iter().copied().filter(|k| seen.insert(*k)).collect();
    if keys.len() > max {
        return Err(AdminError::Invalid(format!(
            "{} keys: at most {max} per client (client_reader_keys_max)",
            keys.len()
        )));
    }
    let detail = serde_json::json!({"count": keys.len()});
    audited(
        conn,
        actor,
        "client.reader_keys",
        &format!("client:{id}"),
        detail,
        async |conn| match db::clients::set_reader_keys(conn, id, &keys).await? {
            Some(_) => Ok(()),
            None => Err(AdminError::NotFound(format!("no client with id {id}"))),
        },
    )
    .await?;
    client(conn, id.get()).await
}

/// Adds `delta` copies to a client's quota (negative to correct a mistake),
/// with the reason kept in its history; the kiosks serving it hear of it.
pub async fn adjust_quota(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: ClientId,
    delta: i64,
    why: &str,
) -> AdminResult<ClientOverview> {
    let why = reason(why)?;
    if delta == 0 || delta.abs() > MAX_QUOTA_DELTA {
        return Err(AdminError::Invalid(format!(
            "a quota change is a non-zero number of copies, at most {MAX_QUOTA_DELTA} either way"
        )));
    }
    let detail = serde_json::json!({"delta": delta, "reason": why});
    audited(
        conn,
        actor,
        "quota.add",
        &format!("client:{id}"),
        detail,
        async |conn| {
            use db::clients::QuotaChange;
            match db::clients::add_quota(conn, id, delta).await {
                Ok(QuotaChange::Applied(remaining)) => Ok(remaining),
                Ok(QuotaChange::UnknownClient) => {
                    Err(AdminError::NotFound(format!("no client with id {id}")))
                }
                Ok(QuotaChange::NotFree { free, leased }) => Err(AdminError::Conflict(format!(
                    "cannot remove {} copies from client {id}: only {free} are free ({leased} more are set aside for kiosks, which spend them offline: reclaim those leases first)",
                    -delta
                ))),
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::CheckViolation,
                    _,
                )) => Err(AdminError::Conflict(format!(
                    "cannot remove {} copies: client {id} would have bought fewer than zero",
                    -delta
                ))),
                Err(other) => Err(other.into()),
            }
        },
    )
    .await?;
    client(conn, id.get()).await
}

/// One quota change, from the audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuotaChange {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub delta: i64,
    pub reason: String,
}

/// A client's quota changes, newest first (at most `limit`).
pub async fn quota_history(
    conn: &mut AsyncPgConnection,
    id: i64,
    limit: i64,
) -> AdminResult<Vec<QuotaChange>> {
    client(conn, id).await?;
    let subject = format!("client:{id}");
    let filter = db::audit::Filter {
        action: Some("quota.add"),
        subject: Some(&subject),
        before: None,
    };
    Ok(db::audit::list(conn, filter, limit)
        .await?
        .into_iter()
        .map(|e| QuotaChange {
            delta: e.detail["delta"].as_i64().unwrap_or(0),
            reason: e.detail["reason"].as_str().unwrap_or_default().to_owned(),
            at: e.at,
            actor: e.actor,
        })
        .collect())
}

/// A kiosk as operators see it: its record, its health, and the units it
/// holds in lease (spendable offline; `device reclaim` takes them back).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub device: db::devices::DeviceRow,
    pub health: Option<db::fleet::Health>,
    pub leases: Vec<db::leases::LeaseRow>,
}

/// Every kiosk (or those named) with its health at `now`.
pub async fn devices(
    conn: &mut AsyncPgConnection,
    only: Option<&[DeviceId]>,
    fleet: db::fleet::FleetPolicy,
    now: DateTime<Utc>,
) -> AdminResult<Vec<DeviceView>> {
    let rows = db::devices::list(conn, only).await?;
    let mut health = db::fleet::health(conn, fleet, now, only).await?;
    let mut leases: HashMap<DeviceId, Vec<db::leases::LeaseRow>> = HashMap::new();
    for l in db::leases::list(conn, only).await? {
        leases.entry(l.device_id.clone()).or_default().push(l);
    }
    Ok(rows
        .into_iter()
        .map(|device| DeviceView {
            health: health.remove(&device.device_id),
            leases: leases.remove(&device.device_id).unwrap_or_default(),
            device,
        })
        .collect())
}

/// One kiosk with its health.
pub async fn device(
    conn: &mut AsyncPgConnection,
    id: &DeviceId,
    fleet: db::fleet::FleetPolicy,
    now: DateTime<Utc>,
) -> AdminResult<DeviceView> {
    devices(conn, Some(std::slice::from_ref(id)), fleet, now)
        .await?
        .pop()
        .ok_or_else(|| AdminError::NotFound(format!("no device {id}")))
}

/// Refuses to give a kiosk an archived client.
async fn no_archived(conn: &mut AsyncPgConnection, clients: &[i64]) -> AdminResult<()> {
    match db::clients::archived_among(conn, clients).await?.first() {
        Some(c) => Err(AdminError::Conflict(format!(
            "client {c} is archived: take it out of the archive first"
        ))),
        None => Ok(()),
    }
}

/// Registers a seed-client kiosk ahead of its first login: active, named,
/// serving `clients`.
pub async fn add_device(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: &DeviceId,
    name: Option<&str>,
    clients: &[i64],
) -> AdminResult<()> {
    let name = name.map(|n| display_name("device", n)).transpose()?;
    let detail = serde_json::json!({"name": name, "clients": clients});
    audited(
        conn,
        actor,
        "device.add",
        &format!("device:{id}"),
        detail,
        async |conn| {
            no_archived(conn, clients).await?;
            Ok(db::devices::register(conn, id, name.as_deref(), clients).await?)
        },
    )
    .await
}

/// Approves a kiosk waiting after a password login (pending → active),
/// adding `clients` to those it serves.
pub async fn approve_device(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: &DeviceId,
    clients: &[i64],
    now: DateTime<Utc>,
) -> AdminResult<()> {
    let detail = serde_json::json!({"clients": clients});
    audited(
        conn,
        actor,
        "device.approve",
        &format!("device:{id}"),
        detail,
        async |conn| {
            let state = db::devices::state(conn, id).await?.ok_or_else(|| {
                AdminError::NotFound(format!(
                "no device {id}: it has not logged in yet (or register it ahead with `device add`)"
            ))
            })?;
            if state.status != DeviceStatus::Pending {
                return Err(AdminError::Conflict(format!(
                    "device {id} is {}, not pending",
                    state.status.as_str()
                )));
            }
            no_archived(conn, clients).await?;
            db::devices::assign(conn, id, clients, &[]).await?;
            status_change(
                conn,
                id,
                DeviceStatus::Active,
                &[DeviceStatus::Pending],
                now,
            )
            .await
        },
    )
    .await
}

/// What an operator does to a kiosk's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// Its tokens and open sockets stop at once; its unused leases come back.
    Revoke,
    /// Undoes a revocation (revoked → active).
    Reinstate,
}

/// Revokes or reinstates a kiosk.
pub async fn set_device_status(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: &DeviceId,
    change: StatusChange,
    now: DateTime<Utc>,
) -> AdminResult<()> {
    let (action, to, from): (_, _, &[DeviceStatus]) = match change {
        StatusChange::Revoke => (
            "device.revoke",
            DeviceStatus::Revoked,
            &[DeviceStatus::Active, DeviceStatus::Pending],
        ),
        StatusChange::Reinstate => (
            "device.restore",
            DeviceStatus::Active,
            &[DeviceStatus::Revoked],
        ),
    };
    audited(
        conn,
        actor,
        action,
        &format!("device:{id}"),
        serde_json::json!({}),
        async |conn| status_change(conn, id, to, from, now).await,
    )
    .await
}

async fn status_change(
    conn: &mut AsyncPgConnection,
    id: &DeviceId,
    to: DeviceStatus,
    from: &[DeviceStatus],
    now: DateTime<Utc>,
) -> AdminResult<()> {
    match db::devices::set_status(conn, id, to, from, now).await? {
        None => Err(AdminError::NotFound(format!("no device {id}"))),
        Some(Err(was)) => Err(AdminError::Conflict(format!(
            "device {id} is {}; nothing changed",
            was.as_str()
        ))),
        Some(Ok(())) => Ok(()),
    }
}

/// Names a kiosk.
pub async fn rename_device(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: &DeviceId,
    name: &str,
) -> AdminResult<()> {
    let name = display_name("device", name)?;
    let detail = serde_json::json!({"name": name});
    audited(
        conn,
        actor,
        "device.rename",
        &format!("device:{id}"),
        detail,
        async |conn| {
            if db::devices::rename(conn, id, &name).await? {
                Ok(())
            } else {
                Err(AdminError::NotFound(format!("no device {id}")))
            }
        },
    )
    .await
}

/// Changes the clients a kiosk serves; a client taken off it gets the
/// kiosk's unused units back.
pub async fn assign_device(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: &DeviceId,
    add: &[i64],
    remove: &[i64],
) -> AdminResult<Vec<i64>> {
    if add.iter().any(|c| remove.contains(c)) {
        return Err(AdminError::Invalid(
            "a client cannot be both added and removed".into(),
        ));
    }
    let detail = serde_json::json!({"add": add, "remove": remove});
    audited(
        conn,
        actor,
        "device.assign",
        &format!("device:{id}"),
        detail,
        async |conn| {
            no_archived(conn, add).await?;
            db::devices::assign(conn, id, add, remove).await?;
            Ok(db::devices::served_clients(conn, id).await?)
        },
    )
    .await
}

/// Takes back a kiosk's unused lease (one client's, or all): for a kiosk
/// that will not come back. Answers (client, units) returned.
pub async fn reclaim_leases(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: &DeviceId,
    client: Option<ClientId>,
) -> AdminResult<Vec<(i64, i64)>> {
    // The entry keeps what the kiosk held: a kiosk that never came back is
    // accounted for in the audit log.
    audited_outcome(
        conn,
        actor,
        "device.reclaim",
        &format!("device:{id}"),
        async |conn| {
            if db::devices::state(conn, id).await?.is_none() {
                return Err(AdminError::NotFound(format!("no device {id}")));
            }
            let returned = db::leases::release(conn, id, client).await?;
            if !returned.is_empty() {
                // The kiosk, if connected, learns at once (it pulls).
                db::devices::notify(conn, id).await?;
            }
            let held: Vec<_> = returned
                .iter()
                .map(|(c, units)| serde_json::json!({"client": c, "units": units}))
                .collect();
            let detail = serde_json::json!({"client": client.map(ClientId::get), "returned": held});
            Ok((returned, detail))
        },
    )
    .await
}

/// Sets a kiosk's own lease sizes (`None`: its clients' again). A connected
/// kiosk pulls at once: it is refilled up to a raised target, and gives
/// back what it holds above a lowered one as far as it has not spent it
/// (the server cannot take those units itself: the kiosk may have spent
/// them offline; `reclaim_leases` takes a lease whatever was spent).
pub async fn size_device_leases(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: &DeviceId,
    sizes: Option<db::leases::LeasePolicy>,
) -> AdminResult<()> {
    let detail = serde_json::json!({
        "target": sizes.map(|s| s.target),
        "low_water": sizes.map(|s| s.low_water),
    });
    audited(
        conn,
        actor,
        "device.lease",
        &format!("device:{id}"),
        detail,
        async |conn| {
            if !db::leases::set_device_sizes(conn, id, sizes).await? {
                return Err(AdminError::NotFound(format!("no device {id}")));
            }
            db::devices::notify(conn, id).await?;
            Ok(())
        },
    )
    .await
}

/// A new enrollment code, shown once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnrollmentCode {
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// What an enrollment code carries.
#[derive(Debug, Clone, Default)]
pub struct CodeRequest<'a> {
    /// The new kiosk's name.
    pub name: Option<&'a str>,
    /// The clients it will serve.
    pub clients: &'a [i64],
    /// Re-enrolls this known device (only it may use the code).
    pub device: Option<&'a DeviceId>,
    /// Hours the code stays valid (1 to [`MAX_CODE_HOURS`]).
    pub valid_hours: u32,
}

/// Creates a one-time enrollment code from `secret` (random bytes).
pub async fn create_enrollment_code(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    req: CodeRequest<'_>,
    secret: [u8; 32],
    now: DateTime<Utc>,
) -> AdminResult<EnrollmentCode> {
    let name = req.name.map(|n| display_name("device", n)).transpose()?;
    if req.valid_hours == 0 || req.valid_hours > MAX_CODE_HOURS {
        return Err(AdminError::Invalid(format!(
            "an enrollment code is valid 1 to {MAX_CODE_HOURS} hours"
        )));
    }
    let code = secrets::enrollment_code(secret);
    let canonical = secrets::normalize_code(&code)
        .ok_or_else(|| AdminError::Invalid("generated an unreadable code".into()))?;
    let expires_at = now + Duration::hours(i64::from(req.valid_hours));
    let subject = match (req.device, &name) {
        (Some(d), _) => format!("device:{d}"),
        (None, Some(n)) => format!("device-name:{n}"),
        (None, None) => "device:new".into(),
    };
    // Never the code itself: the audit log is read by more people than the kiosk's installer.
    let detail = serde_json::json!({"name": name, "clients": req.clients, "valid_hours": req.valid_hours, "expires_at": expires_at});
    audited(
        conn,
        actor,
        "device.enroll",
        &subject,
        detail,
        async |conn| {
            no_archived(conn, req.clients).await?;
            Ok(db::enrollment::create_code(
                conn,
                db::enrollment::NewCode {
                    code_hash: &secrets::digest(&canonical),
                    device_name: name.as_deref(),
                    device_id: req.device,
                    clients: req.clients,
                    now,
                    expires_at,
                },
            )
            .await?)
        },
    )
    .await?;
    Ok(EnrollmentCode { code, expires_at })
}

/// Voids an unverified copy that did not work: the client gets its unit back.
pub async fn void_copy(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    copy_id: i64,
    why: &str,
) -> AdminResult<(i64, i64)> {
    let why = reason(why)?;
    Ok(db::corrections::void(conn, copy_id, actor.as_str(), &why).await?)
}

/// The password rule: 8 to 1024 bytes.
pub fn check_password(password: &str) -> AdminResult<()> {
    if password.len() < 8 || password.len() > 1024 {
        return Err(AdminError::Invalid("a password is 8 to 1024 bytes".into()));
    }
    Ok(())
}

/// A username: 1 to 128 printable characters without spaces.
fn check_username(name: &str) -> AdminResult<()> {
    if name.is_empty()
        || name.chars().count() > 128
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AdminError::Invalid(
            "a username is 1 to 128 printable characters without spaces".into(),
        ));
    }
    Ok(())
}

/// One user as admins see it.
pub async fn user(conn: &mut AsyncPgConnection, name: &str) -> AdminResult<db::users::UserSummary> {
    db::users::summaries(conn, Some(name))
        .await?
        .pop()
        .ok_or_else(|| AdminError::NotFound(format!("no user named {name:?}")))
}

/// Creates a user with an Argon2id `hash` of its password (hashed by the
/// caller, off the async threads).
pub async fn create_user(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    name: &str,
    hash: &str,
    role: Role,
) -> AdminResult<db::users::UserSummary> {
    check_username(name)?;
    let detail = serde_json::json!({"role": role.as_str()});
    audited(
        conn,
        actor,
        "user.add",
        &format!("user:{name}"),
        detail,
        async |conn| {
            db::users::create(conn, name, hash, role)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        AdminError::Conflict(format!("user {name:?} already exists"))
                    } else {
                        e.into()
                    }
                })
        },
    )
    .await?;
    user(conn, name).await
}

/// What an admin changes about a user; each change ends its tokens and sessions.
#[derive(Debug, Clone, Default)]
pub struct UserChange<'a> {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// The new password's Argon2id hash.
    pub password_hash: Option<&'a str>,
}

/// Changes a user. The last enabled admin cannot be disabled or demoted:
/// nobody could manage users any more.
pub async fn update_user(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    name: &str,
    change: UserChange<'_>,
) -> AdminResult<db::users::UserSummary> {
    if change.role.is_none() && change.disabled.is_none() && change.password_hash.is_none() {
        return Err(AdminError::Invalid(
            "nothing to change: give a role, disabled or a password".into(),
        ));
    }
    let detail = serde_json::json!({
        "role": change.role.map(Role::as_str),
        "disabled": change.disabled,
        "password_reset": change.password_hash.is_some(),
    });
    audited(
        conn,
        actor,
        "user.update",
        &format!("user:{name}"),
        detail,
        async |conn| {
            let before = user(conn, name).await?;
            let stops_admin = before.role == Role::Admin
                && !before.disabled
                && (change.disabled == Some(true) || change.role.is_some_and(|r| r != Role::Admin));
            if stops_admin && enabled_admins(conn).await? <= 1 {
                return Err(AdminError::Conflict(format!(
                    "{name:?} is the last enabled admin: make another admin first"
                )));
            }
            if let Some(role) = change.role {
                db::users::set_role(conn, name, role).await?;
            }
            if let Some(disabled) = change.disabled {
                db::users::set_disabled(conn, name, disabled).await?;
            }
            if let Some(hash) = change.password_hash {
                db::users::set_password(conn, name, hash).await?;
            }
            Ok(())
        },
    )
    .await?;
    user(conn, name).await
}

async fn enabled_admins(conn: &mut AsyncPgConnection) -> AdminResult<usize> {
    Ok(db::users::summaries(conn, None)
        .await?
        .iter()
        .filter(|u| u.role == Role::Admin && !u.disabled)
        .count())
}

impl From<AdminError> for String {
    fn from(e: AdminError) -> Self {
        e.to_string()
    }
}
