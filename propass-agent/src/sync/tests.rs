//! The sync engine against a scripted server: its decisions follow the
//! wire error codes.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use propass_nfc::{NfcError, ReaderThread};
use propass_protocol::{
    BadgeUid, ClientId, LeaseEntry, LeaseReleaseResponse, LoginRequest, LoginResponse, OpType,
    PullResponse, PushItemResult, PushRequest, PushResponse, PushStatus, QuotaEntry,
    RefreshResponse,
};

use super::*;
use crate::agent::Parts;
use crate::config::AgentConfig;
use crate::seams::{Clock, SystemClock, SystemRng};
use crate::store::{NewRecording, QuotaPolicy, Store};
use crate::upstream::{ServerClient, UpstreamResult};

#[test]
fn reads_token_expiry() {
    // {"exp":1700000000}
    let t = format!("x.{}.y", "eyJleHAiOjE3MDAwMDAwMDB9");
    assert_eq!(token_exp(&t).unwrap().timestamp(), 1_700_000_000);
}

#[test]
fn refusals_follow_the_codes() {
    assert_eq!(Refusal::of(ErrorCode::TokenExpired), Refusal::Token);
    assert_eq!(Refusal::of(ErrorCode::DeviceRevoked), Refusal::Device);
    assert_eq!(Refusal::of(ErrorCode::PayloadTooLarge), Refusal::TooLarge);
    assert_eq!(Refusal::of(ErrorCode::Unavailable), Refusal::ServerDown);
    assert_eq!(Refusal::of(ErrorCode::RateLimited), Refusal::Other);
}

/// A server that refuses pushes with the scripted codes, then accepts them.
#[derive(Default)]
pub(crate) struct ScriptedServer {
    refusals: Mutex<VecDeque<ErrorCode>>,
    /// (token, items) of every push.
    pushes: Mutex<Vec<(String, usize)>>,
    /// What the next pulls are refused with, in order.
    pull_refusals: Mutex<VecDeque<ErrorCode>>,
    /// The token of every pull.
    pulls: Mutex<Vec<String>>,
    /// What pulls say the ledger holds of this kiosk.
    recorded_through: Mutex<Option<i64>>,
    /// The `since_version` of every pull.
    sinces: Mutex<Vec<Option<i64>>>,
    /// The units pulls say are set aside for this kiosk (client 1).
    lease: Mutex<Option<i64>>,
    /// Lease releases asked for.
    releases: Mutex<usize>,
    /// The target of that lease: pulls ask for what it holds above.
    lease_target: Mutex<Option<i64>>,
    /// The units given back of it, one entry per answered ask.
    given: Mutex<Vec<i64>>,
    /// Asks to give units back get no answer (and take nothing).
    give_backs_lost: Mutex<bool>,
    /// The heartbeats sent over HTTP.
    heartbeats: Mutex<Vec<propass_protocol::KioskHeartbeat>>,
}

/// The server's refusal with `code` (rate limits say when to come back).
fn refused(code: ErrorCode) -> UpstreamError {
    UpstreamError::Refused {
        code,
        status: code.http_status(),
        message: format!("{code:?}"),
        retry_after: (code == ErrorCode::RateLimited).then_some(42),
    }
}

impl ServerClient for ScriptedServer {
    fn heartbeat<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        hb: &'a propass_protocol::KioskHeartbeat,
    ) -> BoxFuture<'a, UpstreamResult<serde_json::Value>> {
        self.heartbeats.lock().unwrap().push(hb.clone());
        Box::pin(async { Ok(serde_json::json!({"success": true})) })
    }

    fn release_leases<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        part: Option<LeaseEntry>,
    ) -> BoxFuture<'a, UpstreamResult<LeaseReleaseResponse>> {
        if let Some(part) = part {
            let answer = if *self.give_backs_lost.lock().unwrap() {
                Err(UpstreamError::Unreachable("timed out".into()))
            } else {
                let mut lease = self.lease.lock().unwrap();
                let units = part.units.min(lease.unwrap_or(0));
                *lease = lease.map(|l| l - units);
                self.given.lock().unwrap().push(units);
                Ok(LeaseReleaseResponse {
                    success: true,
                    released: vec![LeaseEntry { units, ..part }],
                })
            };
            return Box::pin(async move { answer });
        }
        // The server takes the units back; the answer is lost on the way.
        *self.releases.lock().unwrap() += 1;
        *self.lease.lock().unwrap() = None;
        Box::pin(async { Err(UpstreamError::Unreachable("connection reset".into())) })
    }

    fn login<'a>(
        &'a self,
        _: &'a str,
        _: &'a LoginRequest,
    ) -> BoxFuture<'a, UpstreamResult<LoginResponse>> {
        Box::pin(async { Err(UpstreamError::Unreachable("not in this test".into())) })
    }

    fn refresh<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, UpstreamResult<RefreshResponse>> {
        Box::pin(async {
            Ok(RefreshResponse {
                success: true,
                token: "fresh".into(),
                expires_at: None,
            })
        })
    }

    fn enroll<'a>(
        &'a self,
        _: &'a str,
        _: &'a EnrollRequest,
    ) -> BoxFuture<'a, UpstreamResult<DeviceTokenResponse>> {
        Box::pin(async { Err(UpstreamError::Unreachable("not in this test".into())) })
    }

    fn device_token<'a>(
        &'a self,
        _: &'a str,
        _: &'a DeviceTokenRequest,
    ) -> BoxFuture<'a, UpstreamResult<DeviceTokenResponse>> {
        Box::pin(async { Err(UpstreamError::Unreachable("not in this test".into())) })
    }

    fn push<'a>(
        &'a self,
        _: &'a str,
        token: &'a str,
        body: &'a PushRequest,
    ) -> BoxFuture<'a, UpstreamResult<PushResponse>> {
        self.pushes
            .lock()
            .unwrap()
            .push((token.to_owned(), body.queue.len()));
        let refusal = self.refusals.lock().unwrap().pop_front();
        let data = body.queue.iter().map(|item| PushItemResult {
            id: Some(item.id),
            status: PushStatus::Synced,
            error: None,
            op_id: item.op_id,
            duplicate: false,
            overdraft: false,
            ledger_id: None,
        });
        let answer = match refusal {
            Some(code) => Err(refused(code)),
            None => Ok(PushResponse {
                success: true,
                data: data.collect(),
                quotas: vec![],
                leases: vec![],
            }),
        };
        Box::pin(async move { answer })
    }

    fn pull<'a>(
        &'a self,
        _: &'a str,
        token: &'a str,
        since_version: Option<i64>,
    ) -> BoxFuture<'a, UpstreamResult<PullResponse>> {
        self.pulls.lock().unwrap().push(token.to_owned());
        let version = {
            let mut sinces = self.sinces.lock().unwrap();
            sinces.push(since_version);
            100 + i64::try_from(sinces.len()).unwrap()
        };
        let refusal = self.pull_refusals.lock().unwrap().pop_front();
        let recorded_through = *self.recorded_through.lock().unwrap();
        let lease = *self.lease.lock().unwrap();
        let target = *self.lease_target.lock().unwrap();
        let lease_excess = match (lease, target) {
            (Some(l), Some(t)) if l > t => vec![LeaseEntry {
                client_id: ClientId::new(1).unwrap(),
                units: l - t,
            }],
            _ => vec![],
        };
        Box::pin(async move {
            if let Some(code) = refusal {
                return Err(refused(code));
            }
            // Client 1 changes at every pull; client 2 never does.
            let entry = |id, remaining| QuotaEntry {
                client_id: ClientId::new(id).unwrap(),
                remaining,
                name: None,
                version: None,
                partial_copy: None,
                lease: None,
                reader_keys: None,
            };
            let mut quotas = vec![QuotaEntry {
                lease,
                ..entry(1, 10)
            }];
            if since_version.is_none() {
                quotas.push(entry(2, 20));
            }
            Ok(PullResponse {
                success: true,
                quotas,
                server_time: None,
                recorded_through,
                version: Some(version),
                delta: Some(since_version.is_some()),
                lease_excess,
            })
        })
    }
}

/// A logged-in agent with `items` copies pending, talking to `server`.
pub(crate) async fn agent_with(items: usize, server: Arc<ScriptedServer>) -> Arc<Agent> {
    let config = AgentConfig {
        batch_size: 4,
        ..AgentConfig::default()
    };
    agent_configured(items, server, config).await
}

async fn agent_configured(
    items: usize,
    server: Arc<ScriptedServer>,
    config: AgentConfig,
) -> Arc<Agent> {
    let store = Store::open(&crate::store::tests::temp("agent.db")).unwrap();
    let client = ClientId::new(1).unwrap();
    for _ in 0..items {
        let now = SystemClock.now_utc();
        let new = NewRecording {
            sectors: None,
            op_type: OpType::Copy,
            client,
            uid: BadgeUid::parse("04AB12CD").unwrap(),
            occurred_at: now,
            recorded_at: now,
            op_id: crate::seams::Rng::new_op_id(&SystemRng),
            unverified: false,
        };
        store.record(new, QuotaPolicy::CardExists).await.unwrap();
    }
    let session = Session {
        server_url: "https://server.test".into(),
        token: "stale".into(),
        token_expires_at: None,
        username: Some("operator1".into()),
        credential: None,
    };
    store.save_login(session).await.unwrap();
    let reader = ReaderThread::spawn_with(|| Err(NfcError::NoReader(String::new()))).unwrap();
    let parts = Parts {
        tls: crate::tls::client_config(None).unwrap(),
        store,
        config,
        reader,
        server,
        clock: Arc::new(SystemClock),
        rng: Arc::new(SystemRng),
    };
    Agent::from_parts(parts).await.unwrap()
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_the_push_retried() {
    let server = Arc::new(ScriptedServer::default());
    server
        .refusals
        .lock()
        .unwrap()
        .push_back(ErrorCode::TokenExpired);
    let agent = agent_with(2, server.clone()).await;
    let summary = agent.sync_once().await.unwrap();
    assert_eq!((summary.synced, summary.pending), (2, 0));
    let pushes = server.pushes.lock().unwrap().clone();
    assert_eq!(pushes, [("stale".into(), 2), ("fresh".into(), 2)]);
}

#[tokio::test]
async fn an_idle_kiosk_whose_token_is_refused_on_pull_refreshes_it() {
    let server = Arc::new(ScriptedServer::default());
    server
        .pull_refusals
        .lock()
        .unwrap()
        .push_back(ErrorCode::InvalidToken);
    let agent = agent_with(0, server.clone()).await;
    agent.sync_once().await.unwrap();
    let pulls = server.pulls.lock().unwrap().clone();
    assert_eq!(pulls, ["stale", "fresh"]);
    assert_eq!(agent.link().login_required, None);
    assert_eq!(agent.store.session().await.unwrap().unwrap().token, "fresh");
}

#[tokio::test]
async fn operations_the_server_lost_are_sent_again() {
    let server = Arc::new(ScriptedServer::default());
    let agent = agent_with(2, server.clone()).await;
    assert_eq!(agent.sync_once().await.unwrap().synced, 2);
    // The server comes back from a backup older than both.
    *server.recorded_through.lock().unwrap() = Some(0);
    assert_eq!(agent.sync_once().await.unwrap().pending, 2);
    *server.recorded_through.lock().unwrap() = Some(2);
    assert_eq!(agent.sync_once().await.unwrap().synced, 2);
    let pushes = server.pushes.lock().unwrap().clone();
    let sizes: Vec<usize> = pushes.iter().map(|p| p.1).collect();
    assert_eq!(sizes, [2, 2], "sent once, then once again");
    assert_eq!(agent.store.counts().await.unwrap().pending, 0);
    assert_eq!(
        *server.sinces.lock().unwrap(),
        [None, Some(101), None],
        "a server that lost operations is read again in full"
    );
}

/// The kiosk lets go of its lease before it asks the server to take it:
/// an answer lost after the server took the units back must not leave it
/// spending them offline. Units the server still holds come back with the
/// next complete pull.
#[tokio::test]
async fn a_lease_given_back_whose_answer_is_lost_is_not_spent() {
    let server = Arc::new(ScriptedServer::default());
    *server.lease.lock().unwrap() = Some(5);
    let agent = agent_with(0, server.clone()).await;
    agent.sync_once().await.unwrap();
    let lease_of_1 = || async {
        let quotas = agent.store.quotas().await.unwrap();
        let q = quotas
            .iter()
            .find(|q| q.client_id.get() == 1)
            .cloned()
            .unwrap();
        (q.lease, q.remaining)
    };
    assert_eq!(lease_of_1().await, (Some(5), 5));

    let given = agent.release_leases().await;
    assert!(matches!(given, Err(SyncError::Offline(_))), "{given:?}");
    assert_eq!(*server.releases.lock().unwrap(), 1);
    assert_eq!(
        lease_of_1().await,
        (Some(0), 0),
        "nothing left to spend offline"
    );

    // The server had not taken them after all (its answer said nothing):
    // a complete pull hands them back.
    *server.lease.lock().unwrap() = Some(5);
    agent.sync_once().await.unwrap();
    assert_eq!(lease_of_1().await, (Some(5), 5));
}

/// An operator lowered the target: the kiosk gives back what it holds
/// above it in the same sync. A give-back that got no answer makes the
/// next pull a complete one, which says what the server still holds.
#[tokio::test]
async fn units_above_a_lowered_target_are_given_back_in_the_sync() {
    let server = Arc::new(ScriptedServer::default());
    *server.lease.lock().unwrap() = Some(10);
    let agent = agent_with(0, server.clone()).await;
    let lease_of_1 = || async {
        let q = agent
            .store
            .quota(ClientId::new(1).unwrap())
            .await
            .unwrap()
            .unwrap();
        (q.lease, q.remaining)
    };
    agent.sync_once().await.unwrap();
    assert_eq!(lease_of_1().await, (Some(10), 10));

    *server.lease_target.lock().unwrap() = Some(4);
    *server.give_backs_lost.lock().unwrap() = true;
    agent.sync_once().await.unwrap();
    assert_eq!(lease_of_1().await, (Some(4), 4), "let go before asking");
    assert_eq!(*server.lease.lock().unwrap(), Some(10), "not taken");

    *server.give_backs_lost.lock().unwrap() = false;
    agent.sync_once().await.unwrap();
    assert_eq!(*server.sinces.lock().unwrap(), [None, Some(101), None]);
    assert_eq!(*server.given.lock().unwrap(), [6]);
    assert_eq!(*server.lease.lock().unwrap(), Some(4));
    assert_eq!(lease_of_1().await, (Some(4), 4));
    agent.sync_once().await.unwrap();
    assert_eq!(*server.given.lock().unwrap(), [6], "nothing more to give");
}

/// With its socket down, a kiosk tells operators why its sync fails (the
/// server answered, and refused), not only that one went well.
#[tokio::test]
async fn a_failing_sync_is_told_in_a_heartbeat_over_http() {
    let server = Arc::new(ScriptedServer::default());
    server
        .refusals
        .lock()
        .unwrap()
        .push_back(ErrorCode::Conflict);
    let agent = agent_with(2, server.clone()).await;
    assert!(agent.sync_once().await.is_err());
    let sent = server.heartbeats.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].pending, 2);
    assert!(
        sent[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{:?}",
        sent[0].last_error
    );
    agent.sync_once().await.unwrap();
    let sent = server.heartbeats.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[1].pending, sent[1].last_error.as_deref()), (0, None));
}

/// A refused pull that says when to come back is waited for as long, like
/// a refused push (not retried on the short backoff of a lost link).
#[tokio::test]
async fn a_pull_refused_with_retry_after_is_throttled() {
    let server = Arc::new(ScriptedServer::default());
    server
        .pull_refusals
        .lock()
        .unwrap()
        .push_back(ErrorCode::RateLimited);
    let agent = agent_with(0, server.clone()).await;
    let refused = agent.sync_once().await;
    assert!(
        matches!(
            refused,
            Err(SyncError::Throttled {
                retry_after_secs: 42,
                ..
            })
        ),
        "{refused:?}"
    );
}

/// An operation the screen reports past the kiosk's lease is not refused
/// while the server can be asked: the kiosk syncs (its push spends the
/// lease, its pull refills it) and records it then.
#[tokio::test]
async fn an_online_kiosk_asks_for_more_before_refusing_a_reported_copy() {
    let server = Arc::new(ScriptedServer::default());
    *server.lease.lock().unwrap() = Some(1);
    let agent = agent_with(0, server.clone()).await;
    agent.sync_once().await.unwrap();
    let new = |n: u8| {
        let now = SystemClock.now_utc();
        NewRecording {
            sectors: None,
            op_type: OpType::Copy,
            client: ClientId::new(1).unwrap(),
            uid: BadgeUid::parse(&format!("04AB12{n:02X}")).unwrap(),
            occurred_at: now,
            recorded_at: now,
            op_id: crate::seams::Rng::new_op_id(&SystemRng),
            unverified: false,
        }
    };
    crate::kiosk::record_reported(&agent, new(1)).await.unwrap();
    let pulls = server.pulls.lock().unwrap().len();
    crate::kiosk::record_reported(&agent, new(2))
        .await
        .expect("recorded after asking for more");
    assert_eq!(server.pulls.lock().unwrap().len(), pulls + 1, "it asked");

    // Offline, the lease is all it may spend: refused before anything.
    agent.update_link(|l| l.online = false);
    let refused = crate::kiosk::record_reported(&agent, new(3)).await;
    assert!(
        matches!(refused, Err(StoreError::LeaseExhausted { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_batch_too_large_is_halved() {
    let server = Arc::new(ScriptedServer::default());
    server
        .refusals
        .lock()
        .unwrap()
        .push_back(ErrorCode::PayloadTooLarge);
    let agent = agent_with(4, server.clone()).await;
    assert_eq!(agent.sync_once().await.unwrap().synced, 4);
    let sizes: Vec<usize> = server.pushes.lock().unwrap().iter().map(|p| p.1).collect();
    assert_eq!(sizes, [4, 2, 2]);
}

#[tokio::test]
async fn a_revoked_device_needs_a_login_and_keeps_its_work() {
    let server = Arc::new(ScriptedServer::default());
    server
        .refusals
        .lock()
        .unwrap()
        .push_back(ErrorCode::DeviceRevoked);
    let agent = agent_with(1, server.clone()).await;
    assert!(matches!(
        agent.sync_once().await,
        Err(SyncError::LoggedOut(_))
    ));
    assert!(agent.link().login_required.is_some());
    assert_eq!(
        agent.store.login_required().await.unwrap().as_deref(),
        Some("DeviceRevoked")
    );
    assert_eq!(agent.store.counts().await.unwrap().pending, 1);
    assert_eq!(server.pushes.lock().unwrap().len(), 1, "no retry");
}

#[tokio::test]
async fn a_rate_limited_push_waits_for_retry_after_and_keeps_its_work() {
    let server = Arc::new(ScriptedServer::default());
    server
        .refusals
        .lock()
        .unwrap()
        .push_back(ErrorCode::RateLimited);
    let agent = agent_with(1, server.clone()).await;
    match agent.sync_once().await {
        Err(SyncError::Throttled {
            retry_after_secs, ..
        }) => assert_eq!(retry_after_secs, 42),
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert!(agent.link().login_required.is_none(), "still logged in");
    assert_eq!(agent.store.counts().await.unwrap().pending, 1);
    assert_eq!(agent.sync_once().await.unwrap().synced, 1);
}

#[tokio::test]
async fn an_unavailable_server_is_offline_not_refused() {
    let server = Arc::new(ScriptedServer::default());
    server
        .refusals
        .lock()
        .unwrap()
        .push_back(ErrorCode::Unavailable);
    let agent = agent_with(1, server).await;
    assert!(matches!(
        agent.sync_once().await,
        Err(SyncError::Offline(_))
    ));
    assert!(!agent.link().online);
}

/// Pulls ask only for what changed since the last answer's version, keep
/// the clients a delta does not list, and start over with a complete pull
/// once the last complete one is older than `full_pull_interval_secs`.
#[tokio::test]
async fn pulls_ask_for_changes_since_the_last_version() {
    let server = Arc::new(ScriptedServer::default());
    let agent = agent_with(0, server.clone()).await;
    let clients = |agent: &Arc<Agent>| {
        let store = agent.store.clone();
        async move {
            let mut ids: Vec<i64> = store
                .quotas()
                .await
                .unwrap()
                .iter()
                .map(|q| q.client_id.get())
                .collect();
            ids.sort_unstable();
            ids
        }
    };
    agent.sync_once().await.unwrap();
    agent.sync_once().await.unwrap();
    agent.sync_once().await.unwrap();
    assert_eq!(*server.sinces.lock().unwrap(), [None, Some(101), Some(102)]);
    assert_eq!(clients(&agent).await, [1, 2], "a delta forgets nothing");

    let server = Arc::new(ScriptedServer::default());
    let config = AgentConfig {
        full_pull_interval_secs: 0,
        ..AgentConfig::default()
    };
    let agent = agent_configured(0, server.clone(), config).await;
    agent.sync_once().await.unwrap();
    agent.sync_once().await.unwrap();
    assert_eq!(*server.sinces.lock().unwrap(), [None, None]);
}

/// With the socket up the loop pulls only every `sync_interval_live_secs`;
/// a socket that goes down wakes it at once: the kiosk no longer hears
/// changes as events, and its heartbeat goes over HTTP from now on.
#[tokio::test]
async fn a_dropped_websocket_wakes_the_sync_loop() {
    let server = Arc::new(ScriptedServer::default());
    let config = AgentConfig {
        sync_interval_secs: 3600,
        sync_interval_live_secs: 3600,
        ..AgentConfig::default()
    };
    let agent = agent_configured(0, server.clone(), config).await;
    agent.set_ws_connected(true);
    let (stop, stopped) = watch::channel(false);
    let sync_loop = tokio::spawn(agent.clone().run_sync_loop(stopped));
    let pulls_reach = |n: usize| {
        let server = server.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while server.pulls.lock().unwrap().len() < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the sync loop made no pull {n} within 20 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    pulls_reach(1).await;
    agent.set_ws_connected(false);
    pulls_reach(2).await;
    stop.send(true).unwrap();
    sync_loop.await.unwrap();
}
