//! The kiosk flow at the reader: read the customer's badge — every sector
//! the key dictionary opens —, decide whether it may be copied (a badge with
//! protected sectors only for a client that accepts a partial copy), ask for
//! a blank, write and verify it sector by sector, and record the copy — one
//! operation in the queue with the UID and the sector map, never the keys or
//! the data (the dump lives in memory for the flow and is zeroed after).
//!
//! Before a blank is asked for, a write-ahead intent reserves the unit (see
//! [`crate::store::intents`]); it is marked `writing` before the first write
//! command. A verified card is queued; a write whose outcome is uncertain is
//! queued as an unverified copy (the card may work: it is charged and
//! flagged); a flow that wrote nothing releases its unit. A database that
//! cannot take the intent stops the flow before any card is touched.
//! Progress goes to local listeners as `card_progress` events.

use std::sync::Arc;
use std::time::Duration;

use propass_nfc::mifare::{Dump, KeyDictionary, SectorMap as ReadMap};
use propass_nfc::{build_block0, BadgeRead, BlankKind, NfcError, TagInfo};
use propass_protocol::{BadgeUid, ClientId, OpType, ReaderKey, SectorMap};

use crate::agent::{Agent, Unsettled};
use crate::events::{AgentEvent, CardStep};
use zeroize::Zeroize;

use crate::store::{
    Ending, Intent, LocalQuota, NewIntent, NewRecording, QueuedOp, QuotaPolicy, Recorded,
    StoreError, StoreResult,
};

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
    /// The local database cannot take the card's intent: nothing was touched.
    #[error("this kiosk cannot save its records ({0}): no card was written; call an operator")]
    CannotRecord(StoreError),
    /// The agent is stopping: the flow ended before writing.
    #[error("the kiosk is restarting: no card was written; try again in a moment")]
    Stopping,
    /// Written, not verified: recorded as an unverified copy.
    #[error("{cause} — the card may hold the copy: it was recorded as unverified (operation {op_id}, charged, flagged for an operator who can void it); set the card aside for an operator")]
    Unverified {
        /// What went wrong at the reader.
        cause: NfcError,
        op_id: propass_protocol::OpId,
    },
    /// A card was written but the database refused its record even after
    /// retries: the agent records it as soon as a write goes through again
    /// (see [`check_storage`]), or at its next start.
    #[error("the card was written but this kiosk cannot record it now ({cause}); it will be recorded (operation {op_id}) as soon as its disk takes writes again: call an operator")]
    NotRecordedYet {
        cause: StoreError,
        op_id: propass_protocol::OpId,
    },
    /// Sectors no key opened, for a client that wants whole copies only.
    #[error("this badge has {locked} protected sector(s) of {total} this kiosk cannot copy, and this client does not accept a partial copy: nothing was written (add the badge's keys to reader_keys, or ask an operator to allow partial copies for the client)")]
    Protected {
        /// Sectors left locked.
        locked: usize,
        /// Sectors on the badge.
        total: usize,
    },
}

/// A made, verified and recorded card.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MadeCard {
    pub operation: QueuedOp,
    /// The client's remaining after it.
    pub remaining: i64,
    pub blank: BlankKind,
}

fn progress(agent: &Agent, step: CardStep, uid: Option<String>) {
    progress_saying(agent, step, uid, None);
}

fn progress_saying(agent: &Agent, step: CardStep, uid: Option<String>, message: Option<String>) {
    agent.emit(AgentEvent::CardProgress { step, uid, message });
}

/// Announces the failure and passes the error on.
fn failed(agent: &Agent, uid: Option<String>, e: KioskError) -> KioskError {
    agent.emit(AgentEvent::CardProgress {
        step: CardStep::Failed,
        uid,
        message: Some(e.to_string()),
    });
    e
}

/// Checks, before any card is touched, that the client may get one more
/// card; its quota (with its copy policy). A kiosk whose lease is spent asks
/// the server for more first when it can reach it.
async fn precheck(agent: &Agent, client: ClientId) -> Result<LocalQuota, KioskError> {
    // A disk known to refuse writes is tried again now; if it still does,
    // the person is told before the badge is even read.
    if agent.storage.error().is_some() {
        check_storage(agent)
            .await
            .map_err(KioskError::CannotRecord)?;
    }
    match agent.store.spendable(client).await {
        Err(StoreError::LeaseExhausted { .. }) if agent.link().online => {
            if let Err(e) = agent.sync_once().await {
                tracing::info!(error = %e, "could not ask the server for more units");
            }
            match agent.store.spendable(client).await {
                // The server was asked and had nothing to set aside.
                Err(StoreError::LeaseExhausted { .. }) if agent.link().online => {
                    let q = agent.store.quota(client).await?;
                    Err(StoreError::QuotaExhausted {
                        client,
                        remaining: q.map_or(0, |q| q.server_remaining.min(0)),
                    }
                    .into())
                }
                other => Ok(other?),
            }
        }
        other => Ok(other?),
    }
}

/// Records an operation the kiosk screen reports (`POST /v1/operations`)
/// under the quota; a kiosk whose lease for the client is spent asks the
/// server for more first when it can reach it, as the reader flows do.
pub async fn record_reported(agent: &Agent, new: NewRecording) -> StoreResult<Recorded> {
    match agent.store.record(new.clone(), QuotaPolicy::Enforce).await {
        Err(StoreError::LeaseExhausted { .. }) if agent.link().online => {
            if let Err(e) = agent.sync_once().await {
                tracing::info!(error = %e, "could not ask the server for more units");
            }
            agent.store.record(new, QuotaPolicy::Enforce).await
        }
        other => other,
    }
}

/// Starts a flow at the reader, unless the agent is stopping. The stop
/// closes the gate before it cancels the reader, so a flow that begins
/// after the cancel (and would forget it) sees the closed gate.
fn begin(agent: &Agent) -> Result<(), KioskError> {
    agent.reader.begin();
    if agent.writes.is_closed() {
        return Err(KioskError::Stopping);
    }
    Ok(())
}

/// `copy`: badge → its sectors → policy → blank → write → verify → record.
pub async fn copy(agent: &Arc<Agent>, client: ClientId) -> Result<MadeCard, KioskError> {
    let quota = precheck(agent, client)
        .await
        .map_err(|e| failed(agent, None, e))?;
    begin(agent).map_err(|e| failed(agent, None, e))?;
    progress(agent, CardStep::WaitingForSource, None);
    let (source, read) = read_source(agent, client)
        .await
        .map_err(|e| failed(agent, None, e))?;
    let uid_hex = source.uid_hex();
    check_sectors(&read.map, quota.partial_copy)
        .map_err(|e| failed(agent, Some(uid_hex.clone()), e))?;
    let note = sector_note(&read.map);
    progress_saying(agent, CardStep::SourceRead, Some(uid_hex), Some(note));
    let uid =
        BadgeUid::from_bytes(&source.uid).map_err(|e| KioskError::Unsupported(e.to_string()))?;
    let sectors = SectorMap::parse(&read.map.summary()).ok();
    let job = Job::Badge {
        source,
        dump: read.dump,
    };
    write_and_record(agent, client, OpType::Copy, uid, job, sectors).await
}

/// The badge and its sectors. The dump leaves the reader thread only to go
/// back into it for the write.
async fn read_source(agent: &Agent, client: ClientId) -> Result<(TagInfo, BadgeRead), KioskError> {
    let timeout = agent.config.card_timeout();
    // The client's own keys first (this kiosk's configuration, then what
    // the server gave), then the kiosk's, then the well-known ones.
    let mut extra = agent.config.client_reader_keys.of(client.get()).to_vec();
    extra.extend(
        agent
            .store
            .reader_keys(client)
            .await?
            .iter()
            .map(ReaderKey::bytes),
    );
    extra.extend_from_slice(&agent.config.reader_keys.0);
    let keys = KeyDictionary::with_extra(&extra);
    extra.zeroize();
    let result = agent
        .reader
        .run(move |r, cancel| {
            let tag = r.wait_for_tag(timeout, cancel)?;
            let read = copyable(&tag).then(|| r.read_badge(&tag, &keys));
            r.release();
            Ok((tag, read.transpose()?))
        })
        .await;
    agent.reader_stats.saw(&result);
    let (tag, read) = result?;
    match read {
        Some(read) => Ok((tag, read)),
        None => Err(KioskError::Unsupported(format!(
            "this badge is a {} card with a {}-byte UID: only MIFARE Classic badges (1K or 4K, 4- or 7-byte UID) can be copied onto our blanks",
            tag.family.as_str(),
            tag.uid.len()
        ))),
    }
}

/// MIFARE Classic 1K or 4K with a 4- or 7-byte UID: what our blanks can become.
fn copyable(tag: &TagInfo) -> bool {
    tag.family.is_classic() && matches!(tag.uid.len(), 4 | 7)
}

/// A badge with sectors no key opened is copied only for a client that
/// accepts a partial copy; the person is told before a blank is touched.
fn check_sectors(map: &ReadMap, partial_copy: bool) -> Result<(), KioskError> {
    if map.is_complete() || partial_copy {
        return Ok(());
    }
    Err(KioskError::Protected {
        locked: map.locked().len(),
        total: map.opened.len(),
    })
}

/// What the person at the kiosk reads once the badge is read.
fn sector_note(map: &ReadMap) -> String {
    let (total, locked) = (map.opened.len(), map.locked().len());
    if locked == 0 {
        format!("all {total} sectors read")
    } else {
        format!(
            "{} of {total} sectors read; {locked} protected sector(s) will be left out (the client accepts a partial copy)",
            total - locked
        )
    }
}

/// What goes onto the blank.
enum Job {
    /// Block 0 only (a UID from the records).
    Uid([u8; 16]),
    /// A whole badge as read.
    Badge { source: TagInfo, dump: Dump },
}

/// `write`: a UID from the records onto a blank → verify → record.
pub async fn write(
    agent: &Arc<Agent>,
    client: ClientId,
    uid: BadgeUid,
) -> Result<MadeCard, KioskError> {
    precheck(agent, client)
        .await
        .map_err(|e| failed(agent, None, e))?;
    begin(agent).map_err(|e| failed(agent, None, e))?;
    let block0 = build_block0(uid.as_bytes(), 0x08, [0x00, 0x04], None)
        .map_err(|e| KioskError::Unsupported(e.to_string()))?;
    write_and_record(agent, client, OpType::Write, uid, Job::Uid(block0), None).await
}

/// Reserve → wait for a blank → (point of no return) → write and verify
/// → settle the intent. Every step that can fail says what became of the
/// unit and of the card.
async fn write_and_record(
    agent: &Arc<Agent>,
    client: ClientId,
    op_type: OpType,
    uid: BadgeUid,
    job: Job,
    sectors: Option<SectorMap>,
) -> Result<MadeCard, KioskError> {
    let hex = uid.to_hex();
    let intent = reserve(agent, client, op_type, &uid, sectors)
        .await
        .map_err(|e| failed(agent, Some(hex.clone()), e))?;
    crash_point("reserved");
    progress(agent, CardStep::WaitingForBlank, Some(hex.clone()));
    let not = match &job {
        Job::Badge { source, .. } => Some(source.uid.clone()),
        Job::Uid(_) => None,
    };
    let blank = match wait_for_blank(agent, not).await {
        Ok(blank) => blank,
        // The stop cancelled the wait: say so, not "cancelled".
        Err(NfcError::Cancelled) if agent.writes.is_closed() => {
            return Err(void(agent, &intent, &hex, KioskError::Stopping).await)
        }
        Err(e) => return Err(void(agent, &intent, &hex, e.into()).await),
    };
    // The point of no return: shutdown waits for what is past it.
    let Some(_writing) = agent.writes.enter() else {
        return Err(void(agent, &intent, &hex, KioskError::Stopping).await);
    };
    let blank_hex = blank.uid_hex();
    if let Err(e) = agent
        .store
        .begin_writing(intent.id, blank_hex, agent.clock.now_utc())
        .await
    {
        return Err(void(agent, &intent, &hex, KioskError::CannotRecord(e)).await);
    }
    crash_point("writing");
    progress(agent, CardStep::Writing, Some(hex.clone()));
    let written = write_blank(agent, blank, job).await;
    crash_point("written");
    let ending = match &written {
        Ok(_) => Ending::Verified,
        Err(e) if may_hold_the_copy(e) => Ending::InDoubt(e.to_string()),
        Err(e) => Ending::Void(e.to_string()),
    };
    let (operation, remaining) = settle(agent, &intent, ending).await?;
    conclude(agent, client, hex, written, operation, remaining)
}

/// Test builds only (debug assertions): `PROPASS_TEST_CRASH_AT=<point>`
/// ends the agent at once at that point of the copy flow — `reserved`
/// (intent written, nothing touched), `writing` (the blank is about to be
/// written), `written` (written and verified, not yet recorded) — so the
/// crash tests can prove the next start finishes what it finds. Nothing
/// runs after it, as after a SIGKILL or a power cut. Release builds (the
/// packages) have no such point.
fn crash_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("PROPASS_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::warn!(point, "PROPASS_TEST_CRASH_AT: the agent dies here");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// What the person is told of a settled card, and what listeners hear.
fn conclude(
    agent: &Agent,
    client: ClientId,
    hex: String,
    written: Result<BlankKind, NfcError>,
    operation: Option<QueuedOp>,
    remaining: i64,
) -> Result<MadeCard, KioskError> {
    match (written, operation) {
        (Ok(blank), Some(operation)) => {
            progress(agent, CardStep::Verified, Some(hex));
            announce(agent, &operation, remaining);
            // No UID at info level: a badge's UID is what it takes to clone a UID-only badge.
            tracing::info!(op_id = %operation.op_id, client = %client, ?blank, "card made and verified");
            Ok(MadeCard {
                operation,
                remaining,
                blank,
            })
        }
        (Err(cause), Some(operation)) => {
            announce(agent, &operation, remaining);
            tracing::warn!(op_id = %operation.op_id, client = %client, error = %cause, "card written but not verified: recorded as unverified");
            Err(failed(
                agent,
                Some(hex),
                KioskError::Unverified {
                    cause,
                    op_id: operation.op_id,
                },
            ))
        }
        (Err(cause), None) => Err(failed(agent, Some(hex), cause.into())),
        (Ok(_), None) => Err(KioskError::Store(StoreError::Invalid(
            "a verified card was settled without an operation".into(),
        ))),
    }
}

/// Whether a blank may hold (part of) the copy after this error: once a
/// write command may have reached it, the card is in doubt, never "nothing
/// happened". The reader reports a failure after writing began as
/// `SectorFailed` or `VerifyFailed`; a reader lost mid-write may have
/// written too.
fn may_hold_the_copy(e: &NfcError) -> bool {
    matches!(
        e,
        NfcError::VerifyFailed { .. }
            | NfcError::SectorFailed { .. }
            | NfcError::ReaderUnplugged(_)
    )
}

/// Reserves the unit and names the card, durably, before any blank is
/// touched: a database that cannot take it stops the flow here.
async fn reserve(
    agent: &Agent,
    client: ClientId,
    op_type: OpType,
    uid: &BadgeUid,
    sectors: Option<SectorMap>,
) -> Result<Intent, KioskError> {
    let new = NewIntent {
        op_id: agent.rng.new_op_id(),
        op_type,
        client,
        uid: uid.clone(),
        sectors,
        at: agent.clock.now_utc(),
    };
    agent
        .store
        .reserve(new)
        .await
        .map_err(|e| match e {
            e @ (StoreError::UnknownClient(_)
            | StoreError::QuotaExhausted { .. }
            | StoreError::LeaseExhausted { .. }) => e.into(),
            e => {
                tracing::error!(error = %e, "cannot write a card's intent: no card is made until the database takes writes");
                agent.note_storage(Err(&e));
                KioskError::CannotRecord(e)
            }
        })
}

/// Ends an intent whose blank was never written (the unit goes back), and
/// passes the flow's error on.
async fn void(agent: &Agent, intent: &Intent, hex: &str, e: KioskError) -> KioskError {
    if let Err(store) = agent
        .store
        .settle(
            intent.id,
            Ending::Void(e.to_string()),
            agent.clock.now_utc(),
        )
        .await
    {
        // Still `reserved` (or `writing` before any write): released once
        // a write goes through, or at the next start.
        tracing::error!(error = %store, op_id = %intent.op_id, "cannot release a reserved unit now; it is released once the disk takes writes");
        wait_for_the_disk(agent, intent, Ending::Void(e.to_string()), &store).await;
    }
    failed(agent, Some(hex.to_owned()), e)
}

/// Settles the intent, retrying a failing disk a few times: a card that
/// exists must be recorded. If the disk does not recover meanwhile, the
/// intent is settled once a write goes through (see [`check_storage`]), or
/// the next start records it as unverified.
async fn settle(
    agent: &Agent,
    intent: &Intent,
    ending: Ending,
) -> Result<(Option<QueuedOp>, i64), KioskError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cause = match agent
            .store
            .settle(intent.id, ending.clone(), agent.clock.now_utc())
            .await
        {
            Ok(settled) => return Ok(settled),
            Err(cause) => cause,
        };
        // An earlier attempt's commit reported a failure but went through.
        if attempt > 1 && matches!(cause, StoreError::Invalid(_)) {
            if let Some(settled) = settled_already(agent, intent).await {
                return Ok(settled);
            }
        }
        if attempt < 5 {
            tracing::warn!(error = %cause, op_id = %intent.op_id, attempt, "cannot record the card yet; retrying");
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            continue;
        }
        tracing::error!(error = %cause, op_id = %intent.op_id, client = %intent.client_id, "a written card could NOT be recorded now; it is recorded once the disk takes writes");
        wait_for_the_disk(agent, intent, ending, &cause).await;
        return Err(failed(
            agent,
            Some(intent.uid.to_hex()),
            KioskError::NotRecordedYet {
                cause,
                op_id: intent.op_id,
            },
        ));
    }
}

/// Leaves an intent to [`check_storage`], and says the storage fails: both
/// under its lock, so no check in between says the storage works while the
/// card is not recorded.
async fn wait_for_the_disk(agent: &Agent, intent: &Intent, ending: Ending, cause: &StoreError) {
    let mut waiting = agent.unsettled.lock().await;
    waiting.push(Unsettled {
        id: intent.id,
        op_id: intent.op_id,
        client_id: intent.client_id,
        ending,
    });
    agent.note_storage(Err(cause));
}

/// What an intent already settled came to: its queued operation (none if
/// void) and the client's remaining.
async fn settled_already(agent: &Agent, intent: &Intent) -> Option<(Option<QueuedOp>, i64)> {
    let operation = agent.store.find(intent.op_id).await.ok()?;
    let remaining = agent.store.quota(intent.client_id).await.ok()??.remaining;
    Some((operation, remaining))
}

/// Tries a write (the watchdog and the heartbeat ask) and, once one goes
/// through, settles the intents whose ending the disk refused: the cards
/// made meanwhile are queued, the units of those never written go back. The
/// storage is said to work only once they are all settled. One check at a
/// time: another waits, then sees what this one left.
pub async fn check_storage(agent: &Agent) -> Result<(), StoreError> {
    let mut waiting = agent.unsettled.lock().await;
    let mut result = agent.store.probe_write(agent.clock.now_utc()).await;
    if result.is_ok() {
        for stuck in std::mem::take(&mut *waiting) {
            match agent
                .store
                .settle(stuck.id, stuck.ending.clone(), agent.clock.now_utc())
                .await
            {
                Ok((Some(operation), remaining)) => {
                    tracing::info!(op_id = %stuck.op_id, "the disk takes writes again: the card is recorded");
                    announce(agent, &operation, remaining);
                }
                Ok((None, remaining)) => {
                    tracing::info!(op_id = %stuck.op_id, "the disk takes writes again: the reserved unit is released");
                    agent.emit(AgentEvent::QuotaUpdated {
                        client_id: stuck.client_id,
                        remaining,
                    });
                }
                // Settled after all (the commit that reported a failure had
                // gone through): nothing is left to do.
                Err(e @ StoreError::Invalid(_)) => {
                    tracing::warn!(error = %e, op_id = %stuck.op_id, "a card's intent waiting for the disk is settled already");
                }
                Err(e) => {
                    tracing::warn!(error = %e, op_id = %stuck.op_id, "still cannot settle a card's intent");
                    waiting.push(stuck);
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
    }
    agent.note_storage(result.as_ref().map(|_| ()));
    result
}

/// Tells local listeners about a queued card and the client's new remaining,
/// and wakes the sync loop.
fn announce(agent: &Agent, operation: &QueuedOp, remaining: i64) {
    agent.emit(AgentEvent::Recorded(operation.clone()));
    agent.emit(AgentEvent::QuotaUpdated {
        client_id: operation.client_id,
        remaining,
    });
    agent.kick.notify_one();
}

/// Waits for a blank (not the badge) and holds it on the reader.
async fn wait_for_blank(agent: &Agent, not: Option<Vec<u8>>) -> Result<TagInfo, NfcError> {
    let timeout = agent.config.card_timeout();
    let blank = agent
        .reader
        .run(move |r, cancel| r.wait_for_other_tag(not.as_deref(), timeout, cancel))
        .await;
    agent.reader_stats.saw(&blank);
    blank
}

/// Writes and verifies the blank. The dump is dropped — zeroed — with the
/// job, on the reader thread.
async fn write_blank(agent: &Agent, blank: TagInfo, job: Job) -> Result<BlankKind, NfcError> {
    let kind = agent
        .reader
        .run(move |r, _| {
            let kind = match &job {
                Job::Uid(block0) => r.write_block0(&blank, block0),
                Job::Badge { source, dump } => r.write_badge(&blank, source, dump),
            };
            r.release();
            kind
        })
        .await;
    agent.reader_stats.saw(&kind);
    let counter = match kind {
        Ok(_) => &agent.reader_stats.written,
        Err(_) => &agent.reader_stats.failed,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    kind
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use propass_nfc::iso14443a::{block0, DEFAULT_MANUFACTURER};
    use propass_nfc::mifare::{KeyType, Layout, SectorKeys};
    use propass_nfc::{CardFamily, CardReader, NfcResult, ReaderThread};

    use super::*;
    use crate::agent::Parts;
    use crate::config::AgentConfig;
    use crate::seams::{Clock, SystemClock, SystemRng};
    use crate::store::{ServerQuota, Step, Store};
    use crate::upstream::HttpServerClient;

    const BADGE: [u8; 4] = [0x04, 0xAB, 0x12, 0xCD];
    const BLANK: [u8; 4] = [0x01, 0x02, 0x03, 0x04];

    /// What the fake reader will do, and what it was asked.
    struct Script {
        taps: VecDeque<TagInfo>,
        write: NfcResult<BlankKind>,
        waits: usize,
        /// Write attempts (UID or whole badge).
        writes: usize,
        /// Sectors of the badge no key opens.
        locked: Vec<u8>,
        /// Run as a blank is written (on the reader thread).
        on_write: Option<Box<dyn FnMut() + Send>>,
    }

    struct FakeReader(Arc<Mutex<Script>>);

    impl CardReader for FakeReader {
        fn wait_for_tag(&mut self, _: Duration, _: &AtomicBool) -> NfcResult<TagInfo> {
            let mut s = self.0.lock().unwrap();
            s.waits += 1;
            s.taps.pop_front().ok_or(NfcError::NoTag)
        }
        fn read_block0(&mut self, tag: &TagInfo) -> NfcResult<[u8; 16]> {
            let uid = tag
                .uid
                .clone()
                .try_into()
                .map_err(|_| NfcError::AuthFailed)?;
            Ok(block0(uid, tag.sak, tag.atqa, DEFAULT_MANUFACTURER))
        }
        fn write_block0(&mut self, _: &TagInfo, _: &[u8; 16]) -> NfcResult<BlankKind> {
            let mut s = self.0.lock().unwrap();
            s.writes += 1;
            s.write.clone()
        }
        fn read_badge(&mut self, _: &TagInfo, _: &KeyDictionary) -> NfcResult<BadgeRead> {
            let locked = self.0.lock().unwrap().locked.clone();
            let mut dump = Dump::new(Layout::Classic1k);
            let mut opened = Vec::new();
            for sector in 0..16u8 {
                let open = !locked.contains(&sector);
                if open {
                    let keys = SectorKeys {
                        a: [0xFF; 6],
                        b: [0xFF; 6],
                    };
                    dump.put_sector(sector, keys, &[[sector; 16]; 4]);
                }
                opened.push(open.then_some(KeyType::A));
            }
            let map = dump.map(&opened);
            Ok(BadgeRead { dump, map })
        }
        fn write_badge(&mut self, _: &TagInfo, _: &TagInfo, _: &Dump) -> NfcResult<BlankKind> {
            let mut s = self.0.lock().unwrap();
            s.writes += 1;
            if let Some(hook) = s.on_write.as_mut() {
                hook();
            }
            s.write.clone()
        }
        fn release(&mut self) {}
    }

    fn classic(uid: [u8; 4]) -> TagInfo {
        TagInfo {
            uid: uid.to_vec(),
            atqa: [0x00, 0x04],
            sak: 0x08,
            family: CardFamily::MifareClassic1k,
        }
    }

    /// An agent whose client 1 has `remaining` copies left, at a fake reader
    /// that sees `taps` and answers a write with `write`.
    async fn agent_at(
        remaining: i64,
        taps: Vec<TagInfo>,
        write: NfcResult<BlankKind>,
    ) -> (Arc<Agent>, Arc<Mutex<Script>>) {
        agent_with(remaining, taps, write, Vec::new(), None).await
    }

    /// Like [`agent_at`], with `locked` sectors on the badge and the client's
    /// partial-copy policy.
    async fn agent_with(
        remaining: i64,
        taps: Vec<TagInfo>,
        write: NfcResult<BlankKind>,
        locked: Vec<u8>,
        partial_copy: Option<bool>,
    ) -> (Arc<Agent>, Arc<Mutex<Script>>) {
        let script = Arc::new(Mutex::new(Script {
            taps: taps.into(),
            write,
            waits: 0,
            writes: 0,
            locked,
            on_write: None,
        }));
        let s = script.clone();
        let reader = ReaderThread::spawn_with(move || {
            Ok(Box::new(FakeReader(s.clone())) as Box<dyn CardReader>)
        })
        .unwrap();
        let store = Store::open(&crate::store::tests::temp("agent.db")).unwrap();
        let quota = ServerQuota {
            partial_copy,
            reader_keys: None,
            client: client(),
            name: None,
            remaining,
            version: None,
            lease: crate::store::LeaseWord::NoLease,
        };
        store
            .apply_pull(vec![quota], SystemClock.now_utc())
            .await
            .unwrap();
        let parts = Parts {
            tls: crate::tls::client_config(None).unwrap(),
            store,
            config: AgentConfig::default(),
            reader,
            server: Arc::new(
                HttpServerClient::new(1 << 20, crate::tls::client_config(None).unwrap()).unwrap(),
            ),
            clock: Arc::new(SystemClock),
            rng: Arc::new(SystemRng),
        };
        (Agent::from_parts(parts).await.unwrap(), script)
    }

    fn client() -> ClientId {
        ClientId::new(1).unwrap()
    }

    fn steps(rx: &mut tokio::sync::broadcast::Receiver<AgentEvent>) -> Vec<CardStep> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|e| match e {
                AgentEvent::CardProgress { step, .. } => Some(step),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_verified_copy_is_recorded_once() {
        let (agent, _) = agent_at(
            2,
            vec![classic(BADGE), classic(BLANK)],
            Ok(BlankKind::Gen1a),
        )
        .await;
        let mut rx = agent.events.subscribe();
        let made = copy(&agent, client()).await.unwrap();
        assert_eq!((made.blank, made.remaining), (BlankKind::Gen1a, 1));
        assert_eq!(made.operation.uid.to_hex(), "04AB12CD");
        assert_eq!(
            made.operation.sectors.as_ref().map(|m| m.as_str()),
            Some("AAAAAAAAAAAAAAAA"),
            "the record carries the sector map"
        );
        let queued = agent.store.list(None, 10).await.unwrap();
        let ids: Vec<_> = queued.iter().map(|o| o.op_id).collect();
        assert_eq!(ids, [made.operation.op_id]);
        assert!(!queued[0].unverified);
        assert_eq!(intent_steps(&agent).await, [Step::Recorded]);
        use CardStep::*;
        assert_eq!(
            steps(&mut rx),
            [
                WaitingForSource,
                SourceRead,
                WaitingForBlank,
                Writing,
                Verified
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_verification_is_recorded_as_unverified_and_charged() {
        // A Gen1a blank lifted right after its write: it may work, so it is
        // never a free copy.
        let not_verified = Err(NfcError::VerifyFailed {
            what: "the card is unreadable (the card left)".into(),
        });
        let (agent, _) = agent_at(2, vec![classic(BADGE), classic(BLANK)], not_verified).await;
        let mut rx = agent.events.subscribe();
        let err = copy(&agent, client()).await.unwrap_err();
        let KioskError::Unverified { op_id, .. } = err else {
            panic!("expected an unverified copy, got {err:?}");
        };
        assert!(intent_reason_names_the_cause(&agent).await);
        let queued = agent.store.list(None, 10).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].op_id, op_id);
        assert!(queued[0].unverified, "flagged for the ledger");
        assert_eq!(remaining(&agent).await, 1, "charged");
        assert_eq!(intent_steps(&agent).await, [Step::InDoubt]);
        assert_eq!(steps(&mut rx).last(), Some(&CardStep::Failed));
    }

    /// The latest intent's reason is the reader's failure.
    async fn intent_reason_names_the_cause(agent: &Agent) -> bool {
        let intents = agent.store.recent_intents(1).await.unwrap();
        intents[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("verification failed"))
    }

    async fn remaining(agent: &Agent) -> i64 {
        agent
            .store
            .quota(client())
            .await
            .unwrap()
            .unwrap()
            .remaining
    }

    async fn intent_steps(agent: &Agent) -> Vec<Step> {
        let mut all = agent.store.recent_intents(100).await.unwrap();
        all.reverse();
        all.into_iter().map(|i| i.step).collect()
    }

    #[tokio::test]
    async fn a_write_that_wrote_nothing_releases_its_unit() {
        let refused = Err(NfcError::NotWritable("block 0 is read-only".into()));
        let (agent, script) = agent_at(2, vec![classic(BADGE), classic(BLANK)], refused).await;
        let err = copy(&agent, client()).await.unwrap_err();
        assert!(
            matches!(err, KioskError::Nfc(NfcError::NotWritable(_))),
            "{err:?}"
        );
        assert_eq!(script.lock().unwrap().writes, 1);
        assert_eq!(agent.store.counts().await.unwrap().pending, 0);
        assert_eq!(remaining(&agent).await, 2, "the reserved unit went back");
        assert_eq!(intent_steps(&agent).await, [Step::Void]);
    }

    #[tokio::test]
    async fn no_blank_in_time_releases_the_unit_and_writes_nothing() {
        let (agent, script) = agent_at(2, vec![classic(BADGE)], Ok(BlankKind::Gen1a)).await;
        let err = copy(&agent, client()).await.unwrap_err();
        assert!(matches!(err, KioskError::Nfc(NfcError::NoTag)), "{err:?}");
        assert_eq!(script.lock().unwrap().writes, 0);
        assert_eq!(remaining(&agent).await, 2);
        assert_eq!(intent_steps(&agent).await, [Step::Void]);
    }

    #[tokio::test]
    async fn a_database_that_cannot_take_the_intent_touches_no_blank() {
        let (agent, script) = agent_at(
            2,
            vec![classic(BADGE), classic(BLANK)],
            Ok(BlankKind::Gen1a),
        )
        .await;
        // As a read-only or full disk answers: every write fails.
        agent
            .store
            .with(|c| Ok(c.execute_batch("PRAGMA query_only = ON")?))
            .await
            .unwrap();
        let err = copy(&agent, client()).await.unwrap_err();
        assert!(matches!(err, KioskError::CannotRecord(_)), "{err:?}");
        assert!(err.to_string().contains("call an operator"), "{err}");
        let touched = {
            let s = script.lock().unwrap();
            (s.waits, s.writes)
        };
        assert_eq!(touched, (1, 0), "only the badge was read");
        assert!(
            agent.storage.error().is_some(),
            "the status and the heartbeat say why"
        );
        assert!(
            check_storage(&agent).await.is_err(),
            "the health probe fails too"
        );
    }

    /// The disk fills while the blank is written: the card exists, so the
    /// agent records it as soon as a write goes through again.
    #[tokio::test]
    async fn a_card_the_disk_refused_is_recorded_once_it_takes_writes() {
        let (agent, script) = agent_at(
            2,
            vec![classic(BADGE), classic(BLANK)],
            Ok(BlankKind::Gen1a),
        )
        .await;
        let store = agent.store.clone();
        let rt = tokio::runtime::Handle::current();
        script.lock().unwrap().on_write = Some(Box::new(move || {
            // As a disk that fills up answers from now on.
            rt.block_on(store.with(|c| Ok(c.execute_batch("PRAGMA query_only = ON")?)))
                .unwrap();
        }));
        let err = copy(&agent, client()).await.unwrap_err();
        let KioskError::NotRecordedYet { op_id, .. } = err else {
            panic!("{err:?}");
        };
        assert!(err.to_string().contains(&op_id.to_string()), "{err}");
        assert_eq!(intent_steps(&agent).await, [Step::Writing]);
        assert!(agent.storage.error().is_some());
        assert!(check_storage(&agent).await.is_err(), "still refused");

        agent
            .store
            .with(|c| Ok(c.execute_batch("PRAGMA query_only = OFF")?))
            .await
            .unwrap();
        check_storage(&agent).await.unwrap();
        assert_eq!(intent_steps(&agent).await, [Step::Recorded]);
        assert_eq!(agent.storage.error(), None);
        let queued = agent.store.pending(10).await.unwrap();
        assert_eq!(
            queued.iter().map(|q| q.op_id).collect::<Vec<_>>(),
            [op_id],
            "the card is queued, verified, once"
        );
        assert!(!queued[0].unverified);
        assert!(
            queued[0].created_at - queued[0].occurred_at >= chrono::Duration::seconds(1),
            "made when written, recorded (2 s of retries) later: {:?}",
            queued[0]
        );
        assert_eq!(remaining(&agent).await, 1);
        check_storage(&agent).await.unwrap();
        assert_eq!(agent.store.pending(10).await.unwrap().len(), 1);

        // A failure reported by a commit that went through: the intent is
        // settled already, and the storage is not said to fail for it.
        let intent = agent.store.recent_intents(1).await.unwrap().remove(0);
        agent.unsettled.lock().await.push(Unsettled {
            id: intent.id,
            op_id: intent.op_id,
            client_id: intent.client_id,
            ending: Ending::Verified,
        });
        check_storage(&agent).await.unwrap();
        assert!(agent.unsettled.lock().await.is_empty());
        assert_eq!(agent.store.pending(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_stopping_agent_starts_no_flow() {
        let (agent, script) = agent_at(
            2,
            vec![classic(BADGE), classic(BLANK)],
            Ok(BlankKind::Gen1a),
        )
        .await;
        agent.writes.close();
        let err = copy(&agent, client()).await.unwrap_err();
        assert!(matches!(err, KioskError::Stopping), "{err:?}");
        assert_eq!(script.lock().unwrap().waits, 0);
        assert_eq!(remaining(&agent).await, 2);
    }

    #[tokio::test]
    async fn no_quota_refuses_before_any_card_is_touched() {
        let (agent, script) = agent_at(
            0,
            vec![classic(BADGE), classic(BLANK)],
            Ok(BlankKind::Gen1a),
        )
        .await;
        let err = copy(&agent, client()).await.unwrap_err();
        assert!(matches!(
            err,
            KioskError::Store(StoreError::QuotaExhausted { .. })
        ));
        assert_eq!(agent.store.counts().await.unwrap().pending, 0);
        assert_eq!(script.lock().unwrap().waits, 0, "the reader was not used");
    }

    #[tokio::test]
    async fn an_uncopyable_badge_is_refused_before_a_blank_is_asked_for() {
        let ultralight = TagInfo {
            uid: vec![0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6],
            atqa: [0x00, 0x44],
            sak: 0x00,
            family: CardFamily::MifareUltralight,
        };
        let (agent, script) = agent_at(2, vec![ultralight], Ok(BlankKind::Gen1a)).await;
        let err = copy(&agent, client()).await.unwrap_err();
        assert!(matches!(err, KioskError::Unsupported(_)));
        assert_eq!(script.lock().unwrap().waits, 1);
        assert_eq!(agent.store.counts().await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn protected_sectors_are_refused_before_a_blank_unless_the_client_accepts_a_partial_copy()
    {
        let taps = || vec![classic(BADGE), classic(BLANK)];
        let (agent, script) = agent_with(2, taps(), Ok(BlankKind::Gen1a), vec![3, 7], None).await;
        let err = copy(&agent, client()).await.unwrap_err();
        assert!(
            matches!(
                err,
                KioskError::Protected {
                    locked: 2,
                    total: 16
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("2 protected sector(s)"), "{err}");
        assert_eq!(script.lock().unwrap().waits, 1, "no blank was asked for");
        assert_eq!(agent.store.counts().await.unwrap().pending, 0);

        let (agent, _) = agent_with(2, taps(), Ok(BlankKind::Gen2), vec![3, 7], Some(true)).await;
        let made = copy(&agent, client()).await.unwrap();
        assert_eq!(
            made.operation.sectors.as_ref().map(|m| m.as_str()),
            Some("AAA-AAA-AAAAAAAA"),
            "a partial copy is recorded with what it left out"
        );
    }

    #[test]
    fn steps_keep_their_names_on_the_event_stream() {
        let e = AgentEvent::CardProgress {
            step: CardStep::WaitingForSource,
            uid: None,
            message: None,
        };
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(v["type"], "card_progress");
        assert_eq!(v["data"]["step"], "waiting_for_source");
        assert_eq!(serde_json::to_value(BlankKind::Gen1a).unwrap(), "gen1a");
    }
}
