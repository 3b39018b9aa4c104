//! A model of the store, and random runs against the real one: pulls (with
//! and without a lease), recordings, intents through each of their steps,
//! push answers, retries, and crashes (the file reopened, what was open
//! settled). After every step the real store must agree with the model on
//! what may still be made, the queue's counts, and where every intent ended.

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
    /// The server's word: its remaining and this kiosk's lease.
    Pull {
        remaining: i64,
        lease: Option<i64>,
    },
    /// `POST /v1/operations`.
    Record,
    /// A card's intent.
    Reserve,
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
        2 => (0i64..6, proptest::option::of(0i64..5))
            .prop_map(|(remaining, lease)| Op::Pull { remaining, lease }),
        3 => Just(Op::Record),
        3 => Just(Op::Reserve),
        2 => any::<usize>().prop_map(Op::BeginWriting),
        3 => (any::<usize>(), prop_oneof![Just(Outcome::Verified), Just(Outcome::InDoubt), Just(Outcome::Void)])
            .prop_map(|(i, o)| Op::Settle(i, o)),
        2 => (any::<bool>(), proptest::option::of(0i64..5))
            .prop_map(|(accepted, lease_after)| Op::Push { accepted, lease_after }),
        1 => Just(Op::RetryFailed),
        1 => Just(Op::Crash),
    ]
}

/// What the store should hold.
#[derive(Debug, Default)]
struct Model {
    /// `None` until the first pull.
    server_remaining: Option<i64>,
    lease: Option<i64>,
    /// (op_id, status, unverified) in recording order.
    items: Vec<(OpId, ItemStatus, bool)>,
    /// (intent id, op_id, step).
    intents: Vec<(i64, OpId, Step)>,
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

    /// What the kiosk may still make.
    fn remaining(&self) -> Option<i64> {
        let base = self.lease.or(self.server_remaining)?;
        let unsynced = self.count(ItemStatus::Pending) + self.count(ItemStatus::Failed);
        Some(base - unsynced - self.open_intents().len() as i64)
    }

    fn op_id(&mut self) -> OpId {
        self.next_op += 1;
        OpId(uuid::Uuid::from_u128(self.next_op))
    }
}

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn client() -> ClientId {
    ClientId::new(1).unwrap()
}

fn uid() -> BadgeUid {
    BadgeUid::parse("04AB12CD").unwrap()
}

/// A refusal the model expects: lease spent, or quota spent, or unknown.
fn expect_refusal(m: &Model, e: &StoreError) {
    match (m.server_remaining, m.lease) {
        (None, _) => assert!(matches!(e, StoreError::UnknownClient(_)), "{e:?}"),
        (Some(_), Some(_)) => assert!(matches!(e, StoreError::LeaseExhausted { .. }), "{e:?}"),
        (Some(_), None) => assert!(matches!(e, StoreError::QuotaExhausted { .. }), "{e:?}"),
    }
}

fn step(conn: &mut Connection, path: &std::path::Path, m: &mut Model, op: &Op) {
    match op {
        Op::Pull { remaining, lease } => pull(conn, m, *remaining, *lease),
        Op::Record => record(conn, m),
        Op::Reserve => reserve(conn, m),
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
        Op::Crash => crash(conn, path, m),
    }
}

fn pull(conn: &mut Connection, m: &mut Model, remaining: i64, lease: Option<i64>) {
    let q = ServerQuota {
        client: client(),
        name: None,
        remaining,
        version: None,
        partial_copy: None,
        lease: lease.map_or(LeaseWord::NoLease, LeaseWord::Units),
    };
    quotas::apply_pull(conn, &[q], true, None, at()).unwrap();
    m.server_remaining = Some(remaining);
    m.lease = lease;
}

/// A recording or a reservation is admitted exactly when the model has a
/// unit left, and refused for the model's reason otherwise.
fn admitted<T>(m: &Model, result: Result<T, StoreError>) -> Option<T> {
    let allowed = m.remaining().is_some_and(|r| r > 0);
    match result {
        Ok(t) => {
            assert!(allowed, "admitted beyond what may be made: {m:?}");
            Some(t)
        }
        Err(e) => {
            assert!(!allowed, "refused although allowed: {e:?}");
            expect_refusal(m, &e);
            None
        }
    }
}

fn record(conn: &mut Connection, m: &mut Model) {
    let op_id = m.op_id();
    let new = NewRecording {
        op_type: OpType::Copy,
        client: client(),
        uid: uid(),
        occurred_at: at(),
        recorded_at: at(),
        op_id,
        sectors: None,
        unverified: false,
    };
    if admitted(m, queue::record(conn, &new, QuotaPolicy::Enforce)).is_some() {
        m.items.push((op_id, ItemStatus::Pending, false));
    }
}

fn reserve(conn: &mut Connection, m: &mut Model) {
    let op_id = m.op_id();
    let new = NewIntent {
        op_id,
        op_type: OpType::Copy,
        client: client(),
        uid: uid(),
        sectors: None,
        at: at(),
    };
    if let Some(intent) = admitted(m, intents::reserve(conn, &new)) {
        m.intents.push((intent.id, op_id, Step::Reserved));
    }
}

fn begin_writing(conn: &mut Connection, m: &mut Model, n: usize) {
    let Some(i) = m.pick_open(n) else { return };
    let (id, _, step) = m.intents[i];
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
    let (id, op_id, _) = m.intents[i];
    let (ending, step, queued) = match outcome {
        Outcome::Verified => (Ending::Verified, Step::Recorded, Some(false)),
        Outcome::InDoubt => (Ending::InDoubt("lifted".into()), Step::InDoubt, Some(true)),
        Outcome::Void => (Ending::Void("no blank".into()), Step::Void, None),
    };
    let (operation, _) = intents::settle(conn, id, &ending, at()).unwrap();
    assert_eq!(operation.as_ref().map(|o| o.op_id), queued.map(|_| op_id));
    if let Some(unverified) = queued {
        m.items.push((op_id, ItemStatus::Pending, unverified));
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
    let lease = match (lease_after, m.lease) {
        (Some(units), Some(_)) if accepted => LeaseWord::Units(units),
        _ => LeaseWord::Unsaid,
    };
    let quotas: Vec<ServerQuota> = m
        .server_remaining
        .map(|remaining| ServerQuota {
            client: client(),
            name: None,
            remaining,
            version: None,
            partial_copy: None,
            lease,
        })
        .into_iter()
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
    if let LeaseWord::Units(units) = lease {
        m.lease = Some(units);
    }
}

/// The process dies and starts again: what was writing is in doubt, what
/// was only reserved is void.
fn crash(conn: &mut Connection, path: &std::path::Path, m: &mut Model) {
    *conn = schema::open(path).unwrap();
    let found = intents::settle_interrupted(conn, at()).unwrap();
    assert_eq!(found.len(), m.open_intents().len());
    for i in m.open_intents() {
        let (_, op_id, step) = m.intents[i];
        if step == Step::Writing {
            m.items.push((op_id, ItemStatus::Pending, true));
            m.intents[i].2 = Step::InDoubt;
        } else {
            m.intents[i].2 = Step::Void;
        }
    }
}

/// The real store agrees with the model.
fn check(conn: &Connection, m: &Model) {
    let q = quotas::quota_of(conn, client()).unwrap();
    assert_eq!(q.as_ref().map(|q| q.remaining), m.remaining(), "remaining");
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
        .map(|o| (o.op_id, o.status, o.unverified))
        .collect();
    assert_eq!(
        got, m.items,
        "every card queued once, in order, flagged as it should be"
    );
    let mut steps: Vec<_> = intents::recent(conn, 10_000)
        .unwrap()
        .into_iter()
        .map(|i| (i.id, i.op_id, i.step))
        .collect();
    steps.reverse();
    assert_eq!(steps, m.intents, "every intent where the model has it");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_keeps_to_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let path = super::tests::temp("agent.db");
        let mut conn = schema::open(&path).unwrap();
        let mut m = Model::default();
        for op in &ops {
            step(&mut conn, &path, &mut m, op);
            check(&conn, &m);
        }
    }
}
