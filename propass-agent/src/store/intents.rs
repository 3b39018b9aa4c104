//! Write-ahead intents: the durable record of a card being made, written
//! before any blank is touched.
//!
//! An intent is `reserved` (a unit of the client's quota set aside, the
//! badge named) before the kiosk asks for a blank, and `writing` (the blank
//! named) before the first write command reaches it; both are commits with
//! `synchronous=FULL`. It ends in one transaction as `recorded` (verified:
//! queued for sync), `in_doubt` (the blank may hold the copy: queued as an
//! unverified copy, charged and flagged) or `void` (nothing was written: the
//! unit is released). [`settle_interrupted`] ends what a crash left open:
//! `reserved` → `void`, `writing` → `in_doubt`. An intent is never deleted.

use chrono::{DateTime, Utc};
use propass_protocol::{BadgeUid, ClientId, OpId, OpType, SectorMap};
use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;

use super::queue::{self, NewRecording, QueuedOp};
use super::quotas;
use super::{parse_ts, ts, StoreError, StoreResult};

/// Where an intent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A unit is reserved; no blank has been touched.
    Reserved,
    /// The write to the blank has begun (or is about to).
    Writing,
    /// Verified and queued for sync.
    Recorded,
    /// Written, not verified: queued as an unverified copy.
    InDoubt,
    /// Nothing was written: the unit went back.
    Void,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Writing => "writing",
            Self::Recorded => "recorded",
            Self::InDoubt => "in_doubt",
            Self::Void => "void",
        }
    }

    fn parse(s: &str) -> StoreResult<Self> {
        Ok(match s {
            "reserved" => Self::Reserved,
            "writing" => Self::Writing,
            "recorded" => Self::Recorded,
            "in_doubt" => Self::InDoubt,
            "void" => Self::Void,
            other => return Err(StoreError::Invalid(format!("intent step {other:?}"))),
        })
    }
}

/// A card about to be made.
#[derive(Debug, Clone)]
pub struct NewIntent {
    pub op_id: OpId,
    pub op_type: OpType,
    pub client: ClientId,
    /// The UID the blank will get.
    pub uid: BadgeUid,
    /// A whole-badge copy's sector map.
    pub sectors: Option<SectorMap>,
    pub at: DateTime<Utc>,
}

/// A stored intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Intent {
    pub id: i64,
    /// Becomes the queued operation's op_id.
    pub op_id: OpId,
    #[serde(rename = "type")]
    pub op_type: OpType,
    pub client_id: ClientId,
    pub uid: BadgeUid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sectors: Option<SectorMap>,
    /// The blank's UID before the write, once it was on the reader.
    pub blank_uid: Option<String>,
    pub step: Step,
    /// Why it ended in doubt or void.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How a write ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// Read back as written.
    Verified,
    /// The blank may hold the copy; why it is not verified.
    InDoubt(String),
    /// Nothing was written; why.
    Void(String),
}

/// Reserves a unit of the client's quota and names the card, in one
/// `BEGIN IMMEDIATE`: refused (nothing stored) for an unknown client or
/// one with nothing left here.
pub fn reserve(conn: &mut Connection, new: &NewIntent) -> StoreResult<Intent> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let quota = quotas::quota_of(&tx, new.client)?;
    queue::check_quota(new.client, quota.as_ref())?;
    let at = ts(new.at);
    tx.execute(
        "INSERT INTO intents (op_id, type, client_id, uid, sectors, step, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'reserved', ?6, ?6)",
        params![
            new.op_id.to_string(),
            new.op_type.as_str(),
            new.client.get(),
            new.uid.to_hex(),
            new.sectors.as_ref().map(SectorMap::as_str),
            at
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Intent {
        id,
        op_id: new.op_id,
        op_type: new.op_type,
        client_id: new.client,
        uid: new.uid.clone(),
        sectors: new.sectors.clone(),
        blank_uid: None,
        step: Step::Reserved,
        reason: None,
        created_at: new.at,
        updated_at: new.at,
    })
}

/// Notes that the write to `blank_uid` begins; only from `reserved`.
pub fn begin_writing(
    conn: &mut Connection,
    id: i64,
    blank_uid: &str,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    let n = conn.execute(
        "UPDATE intents SET step = 'writing', blank_uid = ?2, updated_at = ?3 WHERE id = ?1 AND step = 'reserved'",
        params![id, blank_uid, ts(at)],
    )?;
    if n != 1 {
        return Err(StoreError::Invalid(format!(
            "intent {id} is not reserved: cannot begin writing"
        )));
    }
    Ok(())
}

/// Ends an open intent: a verified or in-doubt card is queued (with the
/// intent's op_id, charged) in the same transaction; a void one releases
/// its unit. Returns the queued operation, if any, and the client's
/// remaining after it.
pub fn settle(
    conn: &mut Connection,
    id: i64,
    ending: &Ending,
    at: DateTime<Utc>,
) -> StoreResult<(Option<QueuedOp>, i64)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let intent = get(&tx, id)?.ok_or_else(|| StoreError::Invalid(format!("no intent {id}")))?;
    if !matches!(intent.step, Step::Reserved | Step::Writing) {
        return Err(StoreError::Invalid(format!(
            "intent {id} is already {}",
            intent.step.as_str()
        )));
    }
    let (step, reason, unverified) = match ending {
        Ending::Verified => (Step::Recorded, None, Some(false)),
        Ending::InDoubt(why) => (Step::InDoubt, Some(why.as_str()), Some(true)),
        Ending::Void(why) => (Step::Void, Some(why.as_str()), None),
    };
    let operation = match unverified {
        Some(unverified) => Some(queue::insert(
            &tx,
            &NewRecording {
                op_type: intent.op_type,
                client: intent.client_id,
                uid: intent.uid.clone(),
                // When the blank was written (settled later when the disk
                // refused it at first, or at a restart), not when recorded.
                occurred_at: if intent.step == Step::Writing {
                    intent.updated_at
                } else {
                    at
                },
                recorded_at: at,
                op_id: intent.op_id,
                sectors: intent.sectors.clone(),
                unverified,
            },
        )?),
        None => None,
    };
    tx.execute(
        "UPDATE intents SET step = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, step.as_str(), reason, ts(at)],
    )?;
    let remaining = quotas::quota_of(&tx, intent.client_id)?
        .map(|q| q.remaining)
        .unwrap_or(0);
    tx.commit()?;
    Ok((operation, remaining))
}

/// Settles what a crash left open: a `reserved` intent never touched a
/// blank (void); a `writing` one may have (in doubt, queued unverified).
/// Returns the intents as they were found.
pub fn settle_interrupted(conn: &mut Connection, at: DateTime<Utc>) -> StoreResult<Vec<Intent>> {
    let open = select(
        conn,
        "WHERE step IN ('reserved', 'writing') ORDER BY id",
        params![],
    )?;
    for intent in &open {
        let ending = match intent.step {
            Step::Writing => Ending::InDoubt(
                "the agent stopped while writing this card: it may hold the copy".into(),
            ),
            _ => Ending::Void("the agent stopped before a blank was written".into()),
        };
        settle(conn, intent.id, &ending, at)?;
    }
    Ok(open)
}

/// The latest intents, newest first.
pub fn recent(conn: &Connection, limit: usize) -> StoreResult<Vec<Intent>> {
    select(conn, "ORDER BY id DESC LIMIT ?1", params![limit as i64])
}

fn get(conn: &Connection, id: i64) -> StoreResult<Option<Intent>> {
    Ok(select(conn, "WHERE id = ?1", params![id])?.pop())
}

fn select(conn: &Connection, tail: &str, args: impl rusqlite::Params) -> StoreResult<Vec<Intent>> {
    let sql = format!(
        "SELECT id, op_id, type, client_id, uid, sectors, blank_uid, step, reason, created_at, updated_at \
         FROM intents {tail}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    type Raw = (
        i64,
        String,
        String,
        i64,
        String,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        String,
        String,
    );
    let rows = stmt.query_map(args, |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, op_id, op_type, client, uid, sectors, blank_uid, step, reason, created, updated): Raw =
            row?;
        let bad = |what: &str, e: String| StoreError::Invalid(format!("intent {id}: {what}: {e}"));
        out.push(Intent {
            id,
            op_id: OpId(
                op_id
                    .parse()
                    .map_err(|e: uuid::Error| bad("op_id", e.to_string()))?,
            ),
            op_type: op_type.parse().map_err(|e| bad("type", e))?,
            client_id: ClientId::new(client).map_err(|e| bad("client_id", e.to_string()))?,
            uid: BadgeUid::parse(&uid).map_err(|e| bad("uid", e.to_string()))?,
            sectors: sectors
                .as_deref()
                .map(SectorMap::parse)
                .transpose()
                .map_err(|e| bad("sectors", e.to_string()))?,
            blank_uid,
            step: Step::parse(&step)?,
            reason,
            created_at: parse_ts(&created)?,
            updated_at: parse_ts(&updated)?,
        });
    }
    Ok(out)
}

/// Proves the database takes a write, as a card's intent needs: a health
/// check that only reads passes on a read-only or full disk.
pub fn probe_write(conn: &mut Connection, at: DateTime<Utc>) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('write_probe', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [ts(at)],
    )?;
    tx.commit()?;
    Ok(())
}
