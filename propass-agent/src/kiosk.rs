//! The kiosk flow at the reader: read the customer's badge — every sector
//! the key dictionary opens —, decide whether it may be copied (a badge with
//! protected sectors only for a client that accepts a partial copy), ask for
//! a blank, write and verify it sector by sector, and only then record the
//! copy — one operation in the queue with the UID and the sector map, never
//! the keys or the data (the dump lives in memory for the flow and is zeroed
//! after). A failed or unverified copy records nothing and says why.
//! Progress goes to local listeners as `card_progress` events.

use std::sync::Arc;
use std::time::Duration;

use propass_nfc::mifare::{Dump, KeyDictionary, SectorMap as ReadMap};
use propass_nfc::{build_block0, BadgeRead, BlankKind, NfcError, TagInfo};
use propass_protocol::{BadgeUid, ClientId, OpType, SectorMap};

use crate::agent::Agent;
use crate::events::{AgentEvent, CardStep};
use crate::store::{LocalQuota, NewRecording, QueuedOp, QuotaPolicy, StoreError};

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
/// card; its quota (with its copy policy).
async fn precheck(agent: &Agent, client: ClientId) -> Result<LocalQuota, KioskError> {
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
    Ok(q)
}

/// `copy`: badge → its sectors → policy → blank → write → verify → record.
pub async fn copy(agent: &Arc<Agent>, client: ClientId) -> Result<MadeCard, KioskError> {
    let quota = precheck(agent, client)
        .await
        .map_err(|e| failed(agent, None, e))?;
    agent.reader.begin();
    progress(agent, CardStep::WaitingForSource, None);
    let (source, read) = read_source(agent)
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
async fn read_source(agent: &Agent) -> Result<(TagInfo, BadgeRead), KioskError> {
    let timeout = agent.config.card_timeout();
    let keys = KeyDictionary::with_extra(&agent.config.reader_keys.0);
    let (tag, read) = agent
        .reader
        .run(move |r, cancel| {
            let tag = r.wait_for_tag(timeout, cancel)?;
            let read = copyable(&tag).then(|| r.read_badge(&tag, &keys));
            r.release();
            Ok((tag, read.transpose()?))
        })
        .await?;
    match read {
        Some(read) => Ok((tag, read)),
        None => Err(KioskError::Unsupported(format!(
            "badge {} is a {} card with a {}-byte UID: only MIFARE Classic badges (1K or 4K, 4- or 7-byte UID) can be copied onto our blanks",
            tag.uid_hex(),
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
    agent.reader.begin();
    let block0 = build_block0(uid.as_bytes(), 0x08, [0x00, 0x04], None)
        .map_err(|e| KioskError::Unsupported(e.to_string()))?;
    write_and_record(agent, client, OpType::Write, uid, Job::Uid(block0), None).await
}

async fn write_and_record(
    agent: &Arc<Agent>,
    client: ClientId,
    op_type: OpType,
    uid: BadgeUid,
    job: Job,
    sectors: Option<SectorMap>,
) -> Result<MadeCard, KioskError> {
    progress(agent, CardStep::WaitingForBlank, Some(uid.to_hex()));
    let blank = write_blank(agent, &uid, job)
        .await
        .map_err(|e| failed(agent, Some(uid.to_hex()), e.into()))?;
    let (operation, remaining) = record_verified(agent, client, op_type, &uid, sectors).await?;
    progress(agent, CardStep::Verified, Some(uid.to_hex()));
    agent.emit(AgentEvent::Recorded(operation.clone()));
    agent.emit(AgentEvent::QuotaUpdated {
        client_id: client,
        remaining,
    });
    agent.kick.notify_one();
    // No UID at info level: a badge's UID is what it takes to clone a UID-only badge.
    tracing::info!(op_id = %operation.op_id, client = %client, ?blank, "card made and verified");
    Ok(MadeCard {
        operation,
        remaining,
        blank,
    })
}

/// Waits for a blank (not the badge), writes and verifies it. The dump is
/// dropped — zeroed — with the job, on the reader thread.
async fn write_blank(agent: &Agent, uid: &BadgeUid, job: Job) -> Result<BlankKind, NfcError> {
    let timeout = agent.config.card_timeout();
    let events = agent.events.clone();
    let hex = uid.to_hex();
    agent
        .reader
        .run(move |r, cancel| {
            let not = match &job {
                Job::Badge { source, .. } => Some(source.uid.clone()),
                Job::Uid(_) => None,
            };
            let blank = r.wait_for_other_tag(not.as_deref(), timeout, cancel)?;
            let _ = events.send(AgentEvent::CardProgress {
                step: CardStep::Writing,
                uid: Some(hex),
                message: None,
            });
            let kind = match &job {
                Job::Uid(block0) => r.write_block0(&blank, block0),
                Job::Badge { source, dump } => r.write_badge(&blank, source, dump),
            };
            r.release();
            kind
        })
        .await
}

/// Records a verified card: it exists, so it is never refused; a failing
/// disk is retried a few times before the person is told to call an operator.
async fn record_verified(
    agent: &Agent,
    client: ClientId,
    op_type: OpType,
    uid: &BadgeUid,
    sectors: Option<SectorMap>,
) -> Result<(QueuedOp, i64), KioskError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now = agent.clock.now_utc();
        let new = NewRecording {
            sectors: sectors.clone(),
            op_type,
            client,
            uid: uid.clone(),
            occurred_at: now,
            recorded_at: now,
            op_id: agent.rng.new_op_id(),
        };
        match agent.store.record(new, QuotaPolicy::CardExists).await {
            Ok(r) => return Ok((r.operation, r.remaining)),
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, uid = %uid, attempt, "cannot record a verified card yet; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, uid = %uid, client = %client, "a verified card could NOT be recorded");
                agent.emit(AgentEvent::CardProgress {
                    step: CardStep::Failed,
                    uid: Some(uid.to_hex()),
                    message: Some(format!("card {uid} was made and verified but could not be recorded ({e}): tell an operator")),
                });
                return Err(e.into());
            }
        }
    }
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
    use crate::store::{ServerQuota, Store};
    use crate::upstream::HttpServerClient;

    const BADGE: [u8; 4] = [0x04, 0xAB, 0x12, 0xCD];
    const BLANK: [u8; 4] = [0x01, 0x02, 0x03, 0x04];

    /// What the fake reader will do, and what it was asked.
    struct Script {
        taps: VecDeque<TagInfo>,
        write: NfcResult<BlankKind>,
        waits: usize,
        /// Sectors of the badge no key opens.
        locked: Vec<u8>,
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
            self.0.lock().unwrap().write.clone()
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
            self.0.lock().unwrap().write.clone()
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
            locked,
        }));
        let s = script.clone();
        let reader = ReaderThread::spawn_with(move || {
            Ok(Box::new(FakeReader(s.clone())) as Box<dyn CardReader>)
        })
        .unwrap();
        let store = Store::open(&crate::store::tests::temp("agent.db")).unwrap();
        let quota = ServerQuota {
            partial_copy,
            client: client(),
            name: None,
            remaining,
            version: None,
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
    async fn a_failed_verification_records_nothing() {
        let not_verified = Err(NfcError::VerifyFailed {
            expected: "04AB12CD".into(),
            got: "01020304".into(),
        });
        let (agent, _) = agent_at(2, vec![classic(BADGE), classic(BLANK)], not_verified).await;
        let mut rx = agent.events.subscribe();
        let err = copy(&agent, client()).await.unwrap_err();
        assert!(matches!(
            err,
            KioskError::Nfc(NfcError::VerifyFailed { .. })
        ));
        assert_eq!(agent.store.counts().await.unwrap().pending, 0);
        assert_eq!(steps(&mut rx).last(), Some(&CardStep::Failed));
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
