//! A model of the store, and random runs against the real one, for two
//! clients: pulls (with and without a lease, with versions, and saying how
//! far the server's ledger holds this kiosk's operations), live updates in
//! any version order, recordings, intents through each of their steps, push
//! answers, lease units let go (a lowered target), retries, and crashes (the file reopened, what was open settled).
//! After every step the real store must agree with the model on what may
//! still be made of each client, the queue, and where every intent ended.

use chrono::{DateTime, Utc};
use propass_protocol::{BadgeUid, ClientId, OpId, OpType};
use proptest::prelude::*;
use rusqlite::Connection;

use super::intents::{self, Ending, NewIntent, Step};
use super::queue::{self, ItemOutcome, ItemStatus, NewRecording, QuotaPolicy};
use super::quotas::{self, LeaseWord, ServerQuota};
use super::{schema, StoreError};

#[derive(Debug, Clone)]
enum Op {
    /// The server's word on one client: its remaining, this kiosk's lease,
    /// the row's version, and (`recorded_through`) that its ledger holds
    /// only the first n of this kiosk's operations.
    Pull {
        client: usize,
        remaining: i64,
        lease: Option<i64>,
        version: Option<i64>,
        recorded_through: Option<usize>,
    },
    /// A `quota_updated` on the WebSocket, maybe late.
    LiveUpdate {
        client: usize,
        remaining: i64,
        version: i64,
    },
    /// `POST /v1/operations`.
    Record(usize),
    /// A card's intent.
    Reserve(usize),
    /// The n-th open intent (mod their count) starts writing.
    BeginWriting(usize),
    /// The n-th open intent ends.
    Settle(usize, Outcome),
    /// Every pending item pushed: accepted (and the server's new lease), or refused.
    Push {
        accepted: bool,
        lease_after: Option<i64>,
    },
    RetryFailed,
    /// The server asks for `asked` units of the client's lease back.
    LetGo {
        client: usize,
        asked: i64,
    },
    /// The process dies and starts again.
    Crash,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Verified,
    InDoubt,
    Void,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..2, 0i64..6, proptest::option::of(0i64..5), proptest::option::of(0i64..6), proptest::option::weighted(0.2, 0usize..8))
            .prop_map(|(client, remaining, lease, version, recorded_through)| Op::Pull { client, remaining, lease, version, recorded_through }),
        2 => (0usize..2, 0i64..6, 0i64..6)
            .prop_map(|(client, remaining, version)| Op::LiveUpdate { client, remaining, version }),
        3 => (0usize..2).prop_map(Op::Record),
        3 => (0usize..2).prop_map(Op::Reserve),
        2 => any::<usize>().prop_map(Op::BeginWriting),
        3 => (any::<usize>(), prop_oneof![Just(Outcome::Verified), Just(Outcome::InDoubt), Just(Outcome::Void)])
            .prop_map(|(i, o)| Op::Settle(i, o)),
        2 => (any::<bool>(), proptest::option::of(0i64..5))
            .prop_map(|(accepted, lease_after)| Op::Push { accepted, lease_after }),
        1 => Just(Op::RetryFailed),
        1 => (0usize..2, 0i64..6).prop_map(|(client, asked)| Op::LetGo { client, asked }),
        1 => Just(Op::Crash),
    ]
}

/// What the store should hold of one client.
#[derive(Debug, Default, Clone, Copy)]
struct ClientModel {
    /// `None` until a pull names it.
    server_remaining: Option<i64>,
    lease: Option<i64>,
    version: Option<i64>,
}

/// What the store should hold.
#[derive(Debug, Default)]
struct Model {
    clients: [ClientModel; 2],
    /// (op_id, status, unverified, client) in recording order.
    items: Vec<(OpId, ItemStatus, bool, usize)>,
    /// (intent id, op_id, step, client).
    intents: Vec<(i64, OpId, Step, usize)>,
    next_op: u128,
}

impl Model {
    fn open_intents(&self) -> Vec<usize> {
        (0..self.intents.len())
            .filter(|i| matches!(self.intents[*i].2, Step::Reserved | Step::Writing))
            .collect()
    }

    /// The n-th open intent (mod their count), if any is open.
    fn pick_open(&self, n: usize) -> Option<usize> {
        let open = self.open_intents();
        (!open.is_empty()).then(|| open[n % open.len()])
    }

    fn count(&self, status: ItemStatus) -> i64 {
        self.items.iter().filter(|i| i.1 == status).count() as i64
    }

    /// What the kiosk may still make of `client`.
    fn remaining(&self, client: usize) -> Option<i64> {
        let c = self.clients[client];
        let base = c.lease.or(c.server_remaining)?;
        let unsynced = self
            .items
            .iter()
            .filter(|i| i.3 == client && matches!(i.1, ItemStatus::Pending | ItemStatus::Failed))
            .count() as i64;
        let open = self
            .open_intents()
            .iter()
            .filter(|i| self.intents[**i].3 == client)
            .count() as i64;
        Some(base - unsynced - open)
    }

    fn op_id(&mut self) -> OpId {
        self.next_op += 1;
        OpId(uuid::Uuid::from_u128(self.next_op))
    }
}

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn client(n: usize) -> ClientId {
    ClientId::new(n as i64 + 1).unwrap()
}

fn uid() -> BadgeUid {
    BadgeUid::parse("04AB12CD").unwrap()
}

/// A refusal the model expects: lease spent, or quota spent, or unknown.
fn expect_refusal(c: ClientModel, e: &StoreError) {
    match (c.server_remaining, c.lease) {
        (None, _) => assert!(matches!(e, StoreError::UnknownClient(_)), "{e:?}"),
        (Some(_), Some(_)) => assert!(matches!(e, StoreError::LeaseExhausted { .. }), "{e:?}"),
        (Some(_), None) => assert!(matches!(e, StoreError::QuotaExhausted { .. }), "{e:?}"),
    }
}

fn step(conn: &mut Connection, path: &std::path::Path, m: &mut Model, op: &Op) {
    match op {
        Op::Pull {
            client,
            remaining,
            lease,
            version,
            recorded_through,
        } => pull(
            conn,
            m,
            *client,
            *remaining,
            *lease,
            *version,
            *recorded_through,
        ),
        Op::LiveUpdate {
            client,
            remaining,
            version,
        } => live_update(conn, m, *client, *remaining, *version),
        Op::Record(c) => record(conn, m, *c),
        Op::Reserve(c) => reserve(conn, m, *c),
        Op::BeginWriting(n) => begin_writing(conn, m, *n),
        Op::Settle(n, outcome) => settle(conn, m, *n, *outcome),
        Op::Push {
            accepted,
            lease_after,
        } => push(conn, m, *accepted, *lease_after),
        Op::RetryFailed => {
            queue::retry_failed(conn).unwrap();
            for item in m.items.iter_mut().filter(|i| i.1 == ItemStatus::Failed) {
                item.1 = ItemStatus::Pending;
            }
        }
        Op::LetGo { client, asked } => let_go(conn, m, *client, *asked),
        Op::Crash => crash(conn, path, m),
    }
}

/// Only units neither synced-to-be nor being made are let go, and never
/// more than asked: what may still be made drops by exactly that.
fn let_go(conn: &mut Connection, m: &mut Model, c: usize, asked: i64) {
    let given = quotas::let_go(conn, client(c), asked).unwrap();
    let expected = match (m.clients[c].server_remaining, m.clients[c].lease) {
        (Some(_), Some(_)) => asked.min(m.remaining(c).unwrap()).max(0),
        _ => 0,
    };
    assert_eq!(given, expected, "{m:?}");
    if let Some(lease) = m.clients[c].lease.as_mut() {
        *lease -= given;
    }
}

/// A pull of one client (a delta: the other keeps what it has). It is a
/// fresh read: it replaces what is stored whatever the versions. Operations
/// synced past `recorded_through` are pending again (the server lost them).
fn pull(
    conn: &mut Connection,
    m: &mut Model,
    c: usize,
    remaining: i64,
    lease: Option<i64>,
    version: Option<i64>,
    recorded_through: Option<usize>,
) {
    let q = ServerQuota {
        client: client(c),
        name: None,
        remaining,
        version,
        partial_copy: None,
        reader_keys: None,
        lease: lease.map_or(LeaseWord::NoLease, LeaseWord::Units),
    };
    let ids: Vec<i64> = queue::list(conn, None, 10_000)
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    let through = recorded_through.map(|k| match k.checked_sub(1) {
        None => 0,
        Some(last) => ids.get(last).copied().unwrap_or(i64::MAX / 2),
    });
    quotas::apply_pull(conn, &[q], false, through, at()).unwrap();
    let model = &mut m.clients[c];
    model.server_remaining = Some(remaining);
    model.lease = lease;
    model.version = version.or(model.version);
    if let Some(k) = recorded_through {
        for item in m.items.iter_mut().skip(k) {
            if item.1 == ItemStatus::Synced {
                item.1 = ItemStatus::Pending;
            }
        }
    }
}

/// A live update: applied unless an older version than the stored one;
/// refused for a client no pull named (it adds nothing).
fn live_update(conn: &mut Connection, m: &mut Model, c: usize, remaining: i64, version: i64) {
    let q = ServerQuota {
        client: client(c),
        name: None,
        remaining,
        version: Some(version),
        partial_copy: None,
        reader_keys: None,
        lease: LeaseWord::Unsaid,
    };
    let result = quotas::apply_update(conn, &q, at());
    let model = &mut m.clients[c];
    if model.server_remaining.is_none() {
        assert!(
            matches!(result, Err(StoreError::UnknownClient(_))),
            "{result:?}"
        );
        return;
    }
    result.unwrap();
    if model.version.is_none_or(|v| version >= v) {
        model.server_remaining = Some(remaining);
        model.version = Some(version);
    }
}

/// A recording or a reservation is admitted exactly when the model has a
/// unit left of its client, and refused for the model's reason otherwise.
fn admitted<T>(m: &Model, c: usize, result: Result<T, StoreError>) -> Option<T> {
    let allowed = m.remaining(c).is_some_and(|r| r > 0);
    match result {
        Ok(t) => {
            assert!(allowed, "admitted beyond what may be made: {m:?}");
            Some(t)
        }
        Err(e) => {
            assert!(!allowed, "refused although allowed: {e:?}");
            expect_refusal(m.clients[c], &e);
            None
        }
    }
}

fn record(conn: &mut Connection, m: &mut Model, c: usize) {
    let op_id = m.op_id();
    let new = NewRecording {
        op_type: OpType::Copy,
        client: client(c),
        uid: uid(),
        occurred_at: at(),
        recorded_at: at(),
        op_id,
        sectors: None,
        unverified: false,
    };
    if admitted(m, c, queue::record(conn, &new, QuotaPolicy::Enforce)).is_some() {
        m.items.push((op_id, ItemStatus::Pending, false, c));
    }
}

fn reserve(conn: &mut Connection, m: &mut Model, c: usize) {
    let op_id = m.op_id();
    let new = NewIntent {
        op_id,
        op_type: OpType::Copy,
        client: client(c),
        uid: uid(),
        sectors: None,
        at: at(),
    };
    if let Some(intent) = admitted(m, c, intents::reserve(conn, &new)) {
        m.intents.push((intent.id, op_id, Step::Reserved, c));
    }
}

fn begin_writing(conn: &mut Connection, m: &mut Model, n: usize) {
    let Some(i) = m.pick_open(n) else { return };
    let (id, _, step, _) = m.intents[i];
    let r = intents::begin_writing(conn, id, "01020304", at());
    if step == Step::Reserved {
        r.unwrap();
        m.intents[i].2 = Step::Writing;
    } else {
        assert!(r.is_err(), "an intent begins writing once");
    }
}

fn settle(conn: &mut Connection, m: &mut Model, n: usize, outcome: Outcome) {
    let Some(i) = m.pick_open(n) else { return };
    let (id, op_id, _, c) = m.intents[i];
    let (ending, step, queued) = match outcome {
        Outcome::Verified => (Ending::Verified, Step::Recorded, Some(false)),
        Outcome::InDoubt => (Ending::InDoubt("lifted".into()), Step::InDoubt, Some(true)),
        Outcome::Void => (Ending::Void("no blank".into()), Step::Void, None),
    };
    let (operation, _) = intents::settle(conn, id, &ending, at()).unwrap();
    assert_eq!(operation.as_ref().map(|o| o.op_id), queued.map(|_| op_id));
    if let Some(unverified) = queued {
        m.items.push((op_id, ItemStatus::Pending, unverified, c));
    }
    m.intents[i].2 = step;
    assert!(
        intents::settle(conn, id, &ending, at()).is_err(),
        "an intent ends once"
    );
}

/// Every pending item pushed: accepted (with the server's new lease for a
/// kiosk that holds one) or refused.
fn push(conn: &mut Connection, m: &mut Model, accepted: bool, lease_after: Option<i64>) {
    let pending = queue::list(conn, Some(ItemStatus::Pending), 10_000).unwrap();
    let outcomes: Vec<ItemOutcome> = pending
        .iter()
        .map(|o| ItemOutcome {
            id: o.id,
            op_id: Some(o.op_id),
            result: if accepted {
                Ok(())
            } else {
                Err("refused".into())
            },
        })
        .collect();
    // The answer names each known client: its remaining as the model has
    // it (no version: applied), and a new lease for one held.
    let mut leases = [LeaseWord::Unsaid; 2];
    let quotas: Vec<ServerQuota> = (0..2)
        .filter_map(|c| {
            let model = m.clients[c];
            if let (Some(units), Some(_), true) = (lease_after, model.lease, accepted) {
                leases[c] = LeaseWord::Units(units);
            }
            Some(ServerQuota {
                client: client(c),
                name: None,
                remaining: model.server_remaining?,
                version: None,
                partial_copy: None,
                reader_keys: None,
                lease: leases[c],
            })
        })
        .collect();
    queue::apply_push(conn, &outcomes, &quotas, at()).unwrap();
    let to = if accepted {
        ItemStatus::Synced
    } else {
        ItemStatus::Failed
    };
    for item in m.items.iter_mut().filter(|i| i.1 == ItemStatus::Pending) {
        item.1 = to;
    }
    for (c, word) in leases.iter().enumerate() {
        if let LeaseWord::Units(units) = word {
            m.clients[c].lease = Some(*units);
        }
    }
}

/// The process dies and starts again: what was writing is in doubt, what
/// was only reserved is void.
fn crash(conn: &mut Connection, path: &std::path::Path, m: &mut Model) {
    *conn = schema::open(path).unwrap();
    let found = intents::settle_interrupted(conn, at()).unwrap();
    assert_eq!(found.len(), m.open_intents().len());
    for i in m.open_intents() {
        let (_, op_id, step, c) = m.intents[i];
        if step == Step::Writing {
            m.items.push((op_id, ItemStatus::Pending, true, c));
            m.intents[i].2 = Step::InDoubt;
        } else {
            m.intents[i].2 = Step::Void;
        }
    }
}

/// The real store agrees with the model.
fn check(conn: &Connection, m: &Model) {
    for c in 0..2 {
        let q = quotas::quota_of(conn, client(c)).unwrap();
        assert_eq!(
            q.as_ref().map(|q| q.remaining),
            m.remaining(c),
            "remaining of {c}"
        );
    }
    let counts = queue::counts(conn).unwrap();
    assert_eq!(
        (counts.pending, counts.synced, counts.failed),
        (
            m.count(ItemStatus::Pending),
            m.count(ItemStatus::Synced),
            m.count(ItemStatus::Failed)
        ),
        "queue counts"
    );
    let stored = queue::list(conn, None, 10_000).unwrap();
    let got: Vec<_> = stored
        .iter()
        .map(|o| {
            (
                o.op_id,
                o.status,
                o.unverified,
                o.client_id.get() as usize - 1,
            )
        })
        .collect();
    assert_eq!(
        got, m.items,
        "every card queued once, in order, flagged as it should be"
    );
    let mut steps: Vec<_> = intents::recent(conn, 10_000)
        .unwrap()
        .into_iter()
        .map(|i| (i.id, i.op_id, i.step, i.client_id.get() as usize - 1))
        .collect();
    steps.reverse();
    assert_eq!(steps, m.intents, "every intent where the model has it");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_store_keeps_to_its_model(ops in proptest::collection::vec(op(), 1..60)) {
        let path = super::tests::temp("agent.db");
        let mut conn = schema::open(&path).unwrap();
        let mut m = Model::default();
        for op in &ops {
            step(&mut conn, &path, &mut m, op);
            check(&conn, &m);
        }
    }
}
