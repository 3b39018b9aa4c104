//! The agent's own values in the `meta` table: its device id, the session
//! (server, token, expiry, user) read and written as one [`Session`], why a
//! login is required, and the last successful sync. The keys are the
//! on-disk format of earlier agents and stay as they are.

use chrono::{DateTime, Utc};
use propass_protocol::DeviceId;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{StoreError, StoreResult};

const DEVICE_ID: &str = "device_id";
const SERVER_URL: &str = "server_url";
const TOKEN: &str = "token";
const TOKEN_EXP: &str = "token_expires_at";
const USERNAME: &str = "username";
const LAST_SYNC: &str = "last_sync_at";
const LOGIN_REQUIRED: &str = "login_required";
const CREDENTIAL: &str = "device_credential";

/// What a login leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The server logged in to (no trailing slash).
    pub server_url: String,
    pub token: String,
    /// `None` when neither the server nor the token said.
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Who logged in (a password login).
    pub username: Option<String>,
    /// The device's refresh credential (an enrollment): single use, replaced
    /// by every renewal.
    pub credential: Option<String>,
}

fn get(conn: &Connection, key: &str) -> StoreResult<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Sets (or, with `None`, removes) values, atomically.
fn set(conn: &mut Connection, pairs: &[(&str, Option<String>)]) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (k, v) in pairs {
        match v {
            Some(v) => tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )?,
            None => tx.execute("DELETE FROM meta WHERE key = ?1", [k])?,
        };
    }
    tx.commit()?;
    Ok(())
}

/// A stored timestamp; an unreadable one counts as absent (it is advisory).
fn get_time(conn: &Connection, key: &str) -> StoreResult<Option<DateTime<Utc>>> {
    Ok(get(conn, key)?
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// The device id, stored as `candidate` on first start.
pub fn device_id(conn: &mut Connection, candidate: DeviceId) -> StoreResult<DeviceId> {
    match get(conn, DEVICE_ID)? {
        Some(id) => DeviceId::parse(&id).map_err(|e| StoreError::Invalid(e.to_string())),
        None => {
            set(conn, &[(DEVICE_ID, Some(candidate.to_string()))])?;
            Ok(candidate)
        }
    }
}

/// The session of the last login, if any.
pub fn session(conn: &Connection) -> StoreResult<Option<Session>> {
    let (Some(server_url), Some(token)) = (get(conn, SERVER_URL)?, get(conn, TOKEN)?) else {
        return Ok(None);
    };
    Ok(Some(Session {
        server_url,
        token,
        token_expires_at: get_time(conn, TOKEN_EXP)?,
        username: get(conn, USERNAME)?,
        credential: get(conn, CREDENTIAL)?,
    }))
}

/// The server chosen at the last login, even without a token.
pub fn server_url(conn: &Connection) -> StoreResult<Option<String>> {
    get(conn, SERVER_URL)
}

/// Stores a new login's session and clears "login required", atomically.
pub fn save_login(conn: &mut Connection, s: &Session) -> StoreResult<()> {
    set(
        conn,
        &[
            (SERVER_URL, Some(s.server_url.clone())),
            (TOKEN, Some(s.token.clone())),
            (TOKEN_EXP, s.token_expires_at.map(|t| t.to_rfc3339())),
            (USERNAME, s.username.clone()),
            (CREDENTIAL, s.credential.clone()),
            (LOGIN_REQUIRED, None),
        ],
    )
}

/// Stores a refreshed token, and the credential that replaces the one just
/// used (an enrolled device), in one transaction: a crash leaves either the
/// old pair or the new one.
pub fn save_token(
    conn: &mut Connection,
    token: &str,
    expires_at: Option<DateTime<Utc>>,
    credential: Option<&str>,
) -> StoreResult<()> {
    let mut pairs = vec![
        (TOKEN, Some(token.to_owned())),
        (TOKEN_EXP, expires_at.map(|t| t.to_rfc3339())),
    ];
    if let Some(c) = credential {
        pairs.push((CREDENTIAL, Some(c.to_owned())));
    }
    set(conn, &pairs)
}

/// Why a login is required, kept across restarts.
pub fn login_required(conn: &Connection) -> StoreResult<Option<String>> {
    get(conn, LOGIN_REQUIRED)
}

pub fn set_login_required(conn: &mut Connection, reason: &str) -> StoreResult<()> {
    set(conn, &[(LOGIN_REQUIRED, Some(reason.to_owned()))])
}

pub fn last_sync_at(conn: &Connection) -> StoreResult<Option<DateTime<Utc>>> {
    get_time(conn, LAST_SYNC)
}

pub fn set_last_sync_at(conn: &mut Connection, at: DateTime<Utc>) -> StoreResult<()> {
    set(conn, &[(LAST_SYNC, Some(at.to_rfc3339()))])
}
