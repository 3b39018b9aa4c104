//! Enrollment: one-time codes an operator creates, traded by an agent for a
//! device record and the first of a chain of rotating refresh credentials.
//! Only digests are stored (see `auth::secrets`); the caller hashes.
//!
//! A credential is single use: using it marks it used and issues its
//! successor. Presented again while its successor is still unused, it is a
//! retry whose answer was lost (a network cut mid-refresh), and the unused
//! successor is replaced. Presented again after the successor was used — or
//! a replaced one presented at all — it is a reuse: one of the two holders
//! is not the kiosk, and the device's whole chain is revoked and its access
//! tokens stopped (the device must be enrolled again).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use propass_protocol::{DeviceId, DeviceStatus};

use super::devices::{self as device_rows, DeviceChangeError};
use super::schema::{device_clients, device_credentials, devices, enrollment_codes};

/// What an operator puts in a code.
#[derive(Debug, Clone)]
pub struct NewCode<'a> {
    pub code_hash: &'a str,
    /// The new device's name.
    pub device_name: Option<&'a str>,
    /// Re-enrolls this known device (and no other).
    pub device_id: Option<&'a DeviceId>,
    /// The clients the device will serve.
    pub clients: &'a [i64],
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Stores a new code.
pub async fn create_code(
    conn: &mut AsyncPgConnection,
    code: NewCode<'_>,
) -> Result<(), DeviceChangeError> {
    conn.transaction(async |conn| {
        if let Some(d) = code.device_id {
            if device_rows::state(conn, d).await?.is_none() {
                return Err(DeviceChangeError::UnknownDevice(d.clone()));
            }
        }
        let known: i64 = super::schema::clients::table
            .filter(super::schema::clients::id.eq_any(code.clients))
            .count()
            .get_result(conn)
            .await?;
        if usize::try_from(known).ok() != Some(code.clients.len()) {
            let missing = first_unknown_client(conn, code.clients).await?;
            return Err(DeviceChangeError::UnknownClient(missing));
        }
        diesel::insert_into(enrollment_codes::table)
            .values((
                enrollment_codes::code_hash.eq(code.code_hash),
                enrollment_codes::device_name.eq(code.device_name),
                enrollment_codes::device_id.eq(code.device_id.map(DeviceId::as_str)),
                enrollment_codes::client_ids.eq(code.clients),
                enrollment_codes::created_at.eq(code.now),
                enrollment_codes::expires_at.eq(code.expires_at),
            ))
            .execute(conn)
            .await?;
        Ok(())
    })
    .await
}

async fn first_unknown_client(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<i64> {
    let known: Vec<i64> = super::schema::clients::table
        .filter(super::schema::clients::id.eq_any(ids))
        .select(super::schema::clients::id)
        .load(conn)
        .await?;
    Ok(ids
        .iter()
        .copied()
        .find(|c| !known.contains(c))
        .unwrap_or_default())
}

/// Why an enrollment or a refresh was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Unknown, used, expired: the sentence says which, without helping a guesser.
    #[error("{0}")]
    Refused(String),
    #[error("device {0} has been revoked by an operator")]
    Revoked(DeviceId),
    /// A used credential came back: the chain is now revoked.
    #[error("this refresh credential was already used: the device's credentials are revoked; enroll it again")]
    Reused(DeviceId),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// An enrolled device's new credential and what its access token needs.
#[derive(Debug, Clone)]
pub struct Issued {
    pub device: DeviceId,
    pub name: Option<String>,
    pub token_epoch: i64,
    pub chain_expires_at: DateTime<Utc>,
}

/// What an agent sends to enroll.
#[derive(Debug, Clone, Copy)]
pub struct Redemption<'a> {
    pub code_hash: &'a str,
    pub device: &'a DeviceId,
    pub agent_version: Option<&'a str>,
    /// The digest of the first credential of the chain.
    pub credential_hash: &'a str,
    pub now: DateTime<Utc>,
    pub chain_expires_at: DateTime<Utc>,
}

#[derive(Queryable)]
struct CodeRow {
    device_name: Option<String>,
    device_id: Option<String>,
    client_ids: Vec<i64>,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
}

/// Trades a code for a device record and a first credential, in one
/// transaction: the code is used once, whoever races for it.
pub async fn redeem(
    conn: &mut AsyncPgConnection,
    r: Redemption<'_>,
) -> Result<Issued, CredentialError> {
    conn.transaction(async |conn| {
        let (code, known) = claim_code(conn, &r).await?;
        let token_epoch = activate(conn, &r, known).await?;
        apply_code(conn, &r, &code).await?;
        insert_credential(conn, r.device, r.credential_hash, r.now, r.chain_expires_at).await?;
        Ok(Issued {
            device: r.device.clone(),
            name: devices_name(conn, r.device).await?,
            token_epoch,
            chain_expires_at: r.chain_expires_at,
        })
    })
    .await
}

/// Locks the code, checks it may enroll this device, and marks it used;
/// answers it and whether the device is already known.
async fn claim_code(
    conn: &mut AsyncPgConnection,
    r: &Redemption<'_>,
) -> Result<(CodeRow, bool), CredentialError> {
    let code: Option<CodeRow> = enrollment_codes::table
        .find(r.code_hash)
        .select((
            enrollment_codes::device_name,
            enrollment_codes::device_id,
            enrollment_codes::client_ids,
            enrollment_codes::expires_at,
            enrollment_codes::used_at,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let refused = |why: &str| Err(CredentialError::Refused(why.to_owned()));
    let Some(code) = code else {
        return refused("unknown enrollment code: check it, or ask an operator for a new one");
    };
    if code.used_at.is_some() {
        return refused("this enrollment code was already used: ask an operator for a new one");
    }
    if code.expires_at <= r.now {
        return refused("this enrollment code has expired: ask an operator for a new one");
    }
    let known = device_rows::state(conn, r.device).await?.is_some();
    match (&code.device_id, known) {
        (Some(for_device), _) if for_device != r.device.as_str() => {
            return refused(&format!(
                "this enrollment code is for device {for_device}, not {}",
                r.device
            ));
        }
        // A new code for a known id would let anyone take a kiosk's
        // place: re-enrolling names the device in the code.
        (None, true) => {
            return refused(&format!(
                "device id {} is already known: an operator re-enrolls it with `propass-server device enroll --device {}`",
                r.device, r.device
            ));
        }
        _ => {}
    }
    diesel::update(enrollment_codes::table.find(r.code_hash))
        .set((
            enrollment_codes::used_at.eq(r.now),
            enrollment_codes::used_by.eq(r.device.as_str()),
        ))
        .execute(conn)
        .await?;
    Ok((code, known))
}

/// The device, active and enrolled: a new record, or — re-enrollment — a
/// fresh chain, the old one and its tokens ended. Answers its token epoch.
async fn activate(
    conn: &mut AsyncPgConnection,
    r: &Redemption<'_>,
    known: bool,
) -> Result<i64, CredentialError> {
    if !known {
        return Ok(diesel::insert_into(devices::table)
            .values((
                devices::device_id.eq(r.device.as_str()),
                devices::status.eq(DeviceStatus::Active.as_str()),
                devices::enrolled.eq(true),
            ))
            .returning(devices::token_epoch)
            .get_result(conn)
            .await?);
    }
    revoke_chain(conn, r.device).await?;
    let epoch = diesel::update(devices::table.find(r.device.as_str()))
        .set((
            devices::status.eq(DeviceStatus::Active.as_str()),
            devices::enrolled.eq(true),
            devices::revoked_at.eq(None::<DateTime<Utc>>),
            devices::last_seen.eq(r.now),
            devices::token_epoch.eq(devices::token_epoch + 1),
        ))
        .returning(devices::token_epoch)
        .get_result(conn)
        .await?;
    // The old tokens' open sockets close on every server (their epoch).
    super::devices::notify(conn, r.device).await?;
    Ok(epoch)
}

/// What the code says of the device: its name, its clients (replacing
/// any it had); and the agent version it reported.
async fn apply_code(
    conn: &mut AsyncPgConnection,
    r: &Redemption<'_>,
    code: &CodeRow,
) -> Result<(), CredentialError> {
    if let Some(n) = &code.device_name {
        device_rows::rename(conn, r.device, n).await?;
    }
    if let Some(v) = r.agent_version {
        device_rows::set_agent_version(conn, r.device, v).await?;
    }
    if !code.client_ids.is_empty() {
        diesel::delete(
            device_clients::table.filter(device_clients::device_id.eq(r.device.as_str())),
        )
        .execute(conn)
        .await?;
        device_rows::insert_assignments(conn, r.device, &code.client_ids)
            .await
            .map_err(|e| match e {
                DeviceChangeError::Db(e) => CredentialError::Db(e),
                other => CredentialError::Refused(other.to_string()),
            })?;
    }
    Ok(())
}

async fn devices_name(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
) -> QueryResult<Option<String>> {
    devices::table
        .find(device.as_str())
        .select(devices::name)
        .first(conn)
        .await
}

async fn insert_credential(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    hash: &str,
    now: DateTime<Utc>,
    chain_expires_at: DateTime<Utc>,
) -> QueryResult<i64> {
    diesel::insert_into(device_credentials::table)
        .values((
            device_credentials::device_id.eq(device.as_str()),
            device_credentials::secret_hash.eq(hash),
            device_credentials::issued_at.eq(now),
            device_credentials::chain_expires_at.eq(chain_expires_at),
        ))
        .returning(device_credentials::id)
        .get_result(conn)
        .await
}

/// Revokes every credential of `device` (in the caller's transaction).
async fn revoke_chain(conn: &mut AsyncPgConnection, device: &DeviceId) -> QueryResult<()> {
    diesel::update(
        device_credentials::table.filter(device_credentials::device_id.eq(device.as_str())),
    )
    .set(device_credentials::revoked.eq(true))
    .execute(conn)
    .await
    .map(drop)
}

#[derive(Queryable)]
struct CredentialRow {
    id: i64,
    #[diesel(deserialize_as = super::columns::DeviceIdColumn)]
    device_id: DeviceId,
    chain_expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    successor: Option<i64>,
    revoked: bool,
}

/// How a presented credential was judged.
enum Judged {
    /// First use.
    Fresh,
    /// A retry: its successor (this id) was never used and is replaced.
    Retry(i64),
    /// A second use: the chain goes.
    Reuse,
}

/// Uses the credential whose digest is `presented` and stores its successor
/// `next_hash`, in one transaction. A detected reuse commits the chain's
/// revocation (and the device's token epoch bump) before answering
/// [`CredentialError::Reused`].
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    presented: &str,
    next_hash: &str,
    agent_version: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Issued, CredentialError> {
    let outcome = conn
        .transaction(async |conn| rotate_tx(conn, presented, next_hash, agent_version, now).await)
        .await?;
    outcome
}

/// The transaction's result is the inner one: a reuse must commit.
async fn rotate_tx(
    conn: &mut AsyncPgConnection,
    presented: &str,
    next_hash: &str,
    agent_version: Option<&str>,
    now: DateTime<Utc>,
) -> QueryResult<Result<Issued, CredentialError>> {
    let Some(row) = lock_credential(conn, presented).await? else {
        return Ok(Err(CredentialError::Refused(
            "unknown refresh credential: enroll the device again".into(),
        )));
    };
    let device = row.device_id.clone();
    // Lock the device row too: concurrent refreshes of one chain queue here.
    let Some(state) = super::devices::state_for_update(conn, &device).await? else {
        return Ok(Err(CredentialError::Refused("unknown device".into())));
    };
    if state.status == DeviceStatus::Revoked {
        return Ok(Err(CredentialError::Revoked(device)));
    }
    let judged = judge(conn, &row).await?;
    if matches!(judged, Judged::Reuse) {
        cut_off(conn, &device).await?;
        return Ok(Err(CredentialError::Reused(device)));
    }
    if row.chain_expires_at <= now {
        return Ok(Err(CredentialError::Refused(
            "the device's credential chain has reached its absolute lifetime: enroll the device again"
                .into(),
        )));
    }
    advance_chain(conn, &row, &device, judged, next_hash, now).await?;
    diesel::update(devices::table.find(device.as_str()))
        .set(devices::last_seen.eq(now))
        .execute(conn)
        .await?;
    if let Some(v) = agent_version {
        device_rows::set_agent_version(conn, &device, v).await?;
    }
    Ok(Ok(Issued {
        name: devices_name(conn, &device).await?,
        device,
        token_epoch: state.token_epoch,
        chain_expires_at: row.chain_expires_at,
    }))
}

/// The credential whose digest is `presented`, locked; `None` when unknown.
async fn lock_credential(
    conn: &mut AsyncPgConnection,
    presented: &str,
) -> QueryResult<Option<CredentialRow>> {
    device_credentials::table
        .filter(device_credentials::secret_hash.eq(presented))
        .select((
            device_credentials::id,
            device_credentials::device_id,
            device_credentials::chain_expires_at,
            device_credentials::used_at,
            device_credentials::successor,
            device_credentials::revoked,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// A reused credential (a copied state directory): the device's chain is
/// revoked and its tokens' epoch moves, which ends its access tokens and —
/// by the notification — its open sockets on every server; otherwise a
/// copied token's socket would go on hearing this kiosk's events until its
/// next recheck.
async fn cut_off(conn: &mut AsyncPgConnection, device: &DeviceId) -> QueryResult<()> {
    revoke_chain(conn, device).await?;
    diesel::update(devices::table.find(device.as_str()))
        .set(devices::token_epoch.eq(devices::token_epoch + 1))
        .execute(conn)
        .await?;
    super::devices::notify(conn, device).await
}

/// A credential presented: its first use, the retry of a use whose answer
/// was lost (its successor never used), or a reuse.
async fn judge(conn: &mut AsyncPgConnection, row: &CredentialRow) -> QueryResult<Judged> {
    if row.revoked {
        return Ok(Judged::Reuse);
    }
    if row.used_at.is_none() {
        return Ok(Judged::Fresh);
    }
    Ok(match row.successor {
        Some(next) if !successor_used(conn, next).await? => Judged::Retry(next),
        _ => Judged::Reuse,
    })
}

/// The next link: a retry replaces the successor it never used; the
/// presented credential is used and points at the new one.
async fn advance_chain(
    conn: &mut AsyncPgConnection,
    row: &CredentialRow,
    device: &DeviceId,
    judged: Judged,
    next_hash: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    if let Judged::Retry(replaced) = judged {
        diesel::update(device_credentials::table.find(replaced))
            .set(device_credentials::revoked.eq(true))
            .execute(conn)
            .await?;
    }
    let next = insert_credential(conn, device, next_hash, now, row.chain_expires_at).await?;
    diesel::update(device_credentials::table.find(row.id))
        .set((
            device_credentials::used_at.eq(row.used_at.unwrap_or(now)),
            device_credentials::successor.eq(next),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

async fn successor_used(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<bool> {
    let (used, revoked): (Option<DateTime<Utc>>, bool) = device_credentials::table
        .find(id)
        .select((device_credentials::used_at, device_credentials::revoked))
        .first(conn)
        .await?;
    Ok(used.is_some() || revoked)
}
