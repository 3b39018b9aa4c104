//! The kiosk flow at the reader: read the customer's badge, ask for a blank,
//! clone, verify, and only then record the copy — one operation in the queue
//! with the UID. A failed or unverified clone records nothing and says why.
//! Progress goes to local listeners as `card_progress` events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use propass_nfc::{build_block0, BlankKind, NfcError, TagInfo};
use propass_protocol::{BadgeUid, ClientId, OpType};

use crate::agent::Agent;
use crate::events::AgentEvent;
use crate::store::{NewRecording, QueuedOp, QuotaPolicy, StoreError};

/// Why the flow stopped.
#[derive(Debug, thiserror::Error)]
pub enum KioskError {
    /// The reader or a card said no.
    #[error(transparent)]
    Nfc(#[from] NfcError),
    /// The local database (quota, recording).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A badge that cannot be copied onto our blanks.
    #[error("{0}")]
    Unsupported(String),
}

/// A made, verified and recorded card.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MadeCard {
    /// The queued operation.
    pub operation: QueuedOp,
    /// The client's remaining after it.
    pub remaining: i64,
    /// gen1a or gen2.
    pub blank: &'static str,
}

fn progress(agent: &Agent, step: &'static str, uid: Option<String>, message: Option<String>) {
    agent.emit(AgentEvent::CardProgress { step, uid, message });
}

/// Checks, before any card is touched, that the client may get one more card.
async fn precheck(agent: &Agent, client: ClientId) -> Result<(), KioskError> {
    let q = agent
        .store
        .quota(client)
        .await?
        .ok_or(StoreError::UnknownClient(client))?;
    if q.remaining <= 0 {
        return Err(StoreError::QuotaExhausted {
            client,
            remaining: q.remaining,
        }
        .into());
    }
    Ok(())
}

/// Waits for a card whose UID differs from `not` (the badge must leave the
/// reader before the blank is placed).
fn wait_for_other(
    reader: &mut propass_nfc::Reader,
    not: Option<&[u8]>,
    timeout: Duration,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<TagInfo, NfcError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let tag = reader.wait_for_tag(left, cancel)?;
        if not.is_none_or(|uid| tag.uid != uid) {
            return Ok(tag);
        }
        reader.release();
        if Instant::now() >= deadline {
            return Err(NfcError::NoTag);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

fn blank_name(k: BlankKind) -> &'static str {
    match k {
        BlankKind::Gen1a => "gen1a",
        BlankKind::Gen2 => "gen2",
    }
}

/// `copy`: badge → blank → verify → record.
pub async fn copy(agent: &Arc<Agent>, client: ClientId) -> Result<MadeCard, KioskError> {
    if let Err(e) = precheck(agent, client).await {
        progress(agent, "failed", None, Some(e.to_string()));
        return Err(e);
    }
    agent.reader.begin();
    let timeout = agent.config.card_timeout;
    progress(agent, "waiting_for_source", None, None);
    let source = agent
        .reader
        .run(move |r, cancel| {
            let tag = r.wait_for_tag(timeout, cancel)?;
            // The badge's own block 0 when its keys are the factory ones; else
            // rebuilt from UID, SAK and ATQA.
            let block0 = r.read_block0(&tag).ok();
            r.release();
            Ok((tag, block0))
        })
        .await;
    let (source, src_block0) = match source {
        Ok(s) => s,
        Err(e) => {
            progress(agent, "failed", None, Some(e.to_string()));
            return Err(e.into());
        }
    };
    let uid_hex = source.uid_hex();
    if !source.family.is_classic() || source.uid.len() != 4 {
        let why = format!(
            "badge {uid_hex} is a {} card with a {}-byte UID: only 4-byte MIFARE Classic badges can be copied onto our blanks",
            source.family.as_str(),
            source.uid.len()
        );
        progress(agent, "failed", Some(uid_hex), Some(why.clone()));
        return Err(KioskError::Unsupported(why));
    }
    progress(agent, "source_read", Some(uid_hex.clone()), None);
    let manufacturer = src_block0.map(|b| b[8..16].try_into().expect("8 bytes"));
    let block0 = match build_block0(&source.uid, source.sak, source.atqa, manufacturer) {
        Ok(b) => b,
        Err(e) => {
            progress(agent, "failed", Some(uid_hex), Some(e.to_string()));
            return Err(KioskError::Unsupported(e.to_string()));
        }
    };
    let uid =
        BadgeUid::from_bytes(&source.uid).map_err(|e| KioskError::Unsupported(e.to_string()))?;
    write_and_record(agent, client, OpType::Copy, uid, block0, Some(source.uid)).await
}

/// `write`: a UID from the records onto a blank → verify → record.
pub async fn write(
    agent: &Arc<Agent>,
    client: ClientId,
    uid: BadgeUid,
) -> Result<MadeCard, KioskError> {
    if let Err(e) = precheck(agent, client).await {
        progress(agent, "failed", None, Some(e.to_string()));
        return Err(e);
    }
    agent.reader.begin();
    let block0 = build_block0(uid.as_bytes(), 0x08, [0x00, 0x04], None)
        .map_err(|e| KioskError::Unsupported(e.to_string()))?;
    write_and_record(agent, client, OpType::Write, uid, block0, None).await
}

async fn write_and_record(
    agent: &Arc<Agent>,
    client: ClientId,
    op_type: OpType,
    uid: BadgeUid,
    block0: [u8; 16],
    source_uid: Option<Vec<u8>>,
) -> Result<MadeCard, KioskError> {
    let timeout = agent.config.card_timeout;
    progress(agent, "waiting_for_blank", Some(uid.to_hex()), None);
    let events = agent.events.clone();
    let hex = uid.to_hex();
    let written = agent
        .reader
        .run(move |r, cancel| {
            let blank = wait_for_other(r, source_uid.as_deref(), timeout, cancel)?;
            let _ = events.send(AgentEvent::CardProgress {
                step: "writing",
                uid: Some(hex),
                message: None,
            });
            let kind = r.write_block0(&blank, &block0);
            r.release();
            kind
        })
        .await;
    let kind = match written {
        Ok(k) => k,
        Err(e) => {
            progress(agent, "failed", Some(uid.to_hex()), Some(e.to_string()));
            return Err(e.into());
        }
    };
    // Verified: the card exists. Record it, never refusing; retry a failing disk.
    let mut attempt = 0;
    let (operation, remaining) = loop {
        attempt += 1;
        let now = agent.clock.now_utc();
        let new = NewRecording {
            op_type,
            client,
            uid: uid.clone(),
            occurred_at: now,
            recorded_at: now,
            op_id: agent.rng.new_op_id(),
        };
        match agent.store.record(new, QuotaPolicy::CardExists).await {
            Ok(r) => break (r.operation, r.remaining),
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, uid = %uid, attempt, "cannot record a verified card yet; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, uid = %uid, client = %client, "a verified card could NOT be recorded");
                let why = format!("card {uid} was made and verified but could not be recorded ({e}): tell an operator");
                progress(agent, "failed", Some(uid.to_hex()), Some(why));
                return Err(e.into());
            }
        }
    };
    progress(agent, "verified", Some(uid.to_hex()), None);
    agent.emit(AgentEvent::Recorded(operation.clone()));
    agent.emit(AgentEvent::QuotaUpdated {
        client_id: client,
        remaining,
    });
    agent.kick.notify_one();
    tracing::info!(uid = %uid, client = %client, blank = blank_name(kind), "card made and verified");
    Ok(MadeCard {
        operation,
        remaining,
        blank: blank_name(kind),
    })
}
