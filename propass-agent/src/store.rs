//! The agent's durable state: one SQLite database (WAL, `synchronous=FULL`).
//!
//! # Guarantees
//!
//! - **Recorded means durable.** [`Store::record`] returns only after its
//!   transaction committed with `synchronous=FULL`: the operation survives a
//!   crash or a power cut from that moment on. Nothing is ever deleted from the
//!   queue; items only move `pending → synced` or `pending → failed → pending`
//!   (`queue retry`).
//! - **One transaction per recording**: the local quota check and the insert of
//!   the queue item happen under one `BEGIN IMMEDIATE`. The local remaining is
//!   derived — what the server last said minus the items not yet synced — so it
//!   can never drift from the queue (a crash cannot leave a decrement without
//!   its item, or the other way round).
//! - **Exactly once upstream**: every item gets a UUIDv7 `op_id` when recorded.
//!   The server deduplicates on it, so pushing an item again after a lost
//!   answer is safe.
//! - **A pull never erases local work**: pulls store the server's remaining;
//!   what is shown and checked subtracts the items still queued here.
//! - **Foreign or corrupt files are never touched**: the database is marked
//!   with an `application_id`; a file that is not SQLite, belongs to another
//!   program, comes from a newer agent or fails `quick_check` makes
//!   [`Store::open`] refuse, without writing to it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use propass_protocol::{ClientId, DeviceId, OpId};
use rusqlite::Connection;

pub mod intents;
#[cfg(test)]
mod model_tests;
pub mod queue;
pub mod quotas;
pub mod schema;
pub mod session;

pub use intents::{Ending, Intent, NewIntent, Step};
pub use queue::{
    ItemOutcome, ItemStatus, NewRecording, PushApplied, QueueCounts, QueuedOp, QuotaPolicy,
    Recorded,
};
pub use quotas::{LeaseWord, LocalQuota, ServerQuota};
pub use schema::APPLICATION_ID;
pub use session::Session;

/// What can go wrong with the local database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not a SQLite database.
    #[error("{0} is not a SQLite database; refusing to touch it (move it aside to start afresh)")]
    NotSqlite(PathBuf),
    /// The file is a SQLite database of another program.
    #[error("{0} belongs to another application (application_id {1:#x}); refusing to touch it")]
    Foreign(PathBuf, i32),
    /// Written by a newer agent.
    #[error("{0} has schema version {1}, newer than this agent knows ({2}); upgrade the agent")]
    TooNew(PathBuf, i64, i64),
    /// SQLite's integrity check failed.
    #[error("{0} is corrupt ({1}); refusing to start: restore it from a backup or move it aside")]
    Corrupt(PathBuf, String),
    /// The state directory or the file cannot be created or opened.
    #[error("cannot open {0}: {1}")]
    Io(PathBuf, String),
    /// No quota is known for this client (never synced with the server).
    #[error("client {0} is unknown on this kiosk; sync with the server first")]
    UnknownClient(ClientId),
    /// The client's quota is used up.
    #[error("client {client} has no copies left (remaining {remaining}); ask an operator to top up the quota")]
    QuotaExhausted {
        client: ClientId,
        /// Its local remaining.
        remaining: i64,
    },
    /// The units the server set aside for this kiosk are spent: refused
    /// before any card is touched, until the server sets more aside.
    #[error("no copies left for {name} at this kiosk until it reconnects to the server (it may spend only the units the server set aside for it)")]
    LeaseExhausted {
        client: ClientId,
        /// The client's name, or "client N".
        name: String,
    },
    /// Any other SQLite failure.
    #[error("local database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The caller's op_id is already used by a different operation.
    #[error("op_id {0} is already used by a different operation")]
    OpIdConflict(OpId),
    /// A stored value does not parse (the file was edited by hand).
    #[error("local database holds an invalid value: {0}")]
    Invalid(String),
}

impl StoreError {
    /// The disk refused a write (full, read-only, I/O error): nothing can
    /// be recorded until it is fixed — unlike a refusal of this operation.
    pub fn is_storage_failure(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            Self::Io(..) => true,
            Self::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    C::DiskFull
                        | C::ReadOnly
                        | C::SystemIoFailure
                        | C::CannotOpen
                        | C::DatabaseCorrupt
                )
            ),
            _ => false,
        }
    }
}

/// Result of the store's operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The database, shared by the agent's tasks: the async shell over the
/// synchronous core in [`schema`], [`queue`], [`quotas`] and [`session`].
/// Every call runs on a blocking thread; one connection, one writer.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Invalid(format!("timestamp {s:?}: {e}")))
}

impl Store {
    /// Opens (or creates) the database at `path`, refusing foreign, newer or
    /// corrupt files without writing to them.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = schema::open(path)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.into(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn with<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("store task failed: {e}")))?
    }

    /// Records one operation, durably, before returning (see [`queue::record`]).
    pub async fn record(&self, new: NewRecording, policy: QuotaPolicy) -> StoreResult<Recorded> {
        self.with(move |c| queue::record(c, &new, policy)).await
    }

    /// Reserves a unit and names the card before any blank is touched
    /// (see [`intents`]).
    pub async fn reserve(&self, new: NewIntent) -> StoreResult<Intent> {
        self.with(move |c| intents::reserve(c, &new)).await
    }

    /// Notes, durably, that the write to the blank begins.
    pub async fn begin_writing(
        &self,
        id: i64,
        blank_uid: String,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.with(move |c| intents::begin_writing(c, id, &blank_uid, at))
            .await
    }

    /// Ends an open intent (see [`intents::settle`]).
    pub async fn settle(
        &self,
        id: i64,
        ending: Ending,
        at: DateTime<Utc>,
    ) -> StoreResult<(Option<QueuedOp>, i64)> {
        self.with(move |c| intents::settle(c, id, &ending, at))
            .await
    }

    /// Settles the intents a crash left open; returns them as found.
    pub async fn settle_interrupted(&self, at: DateTime<Utc>) -> StoreResult<Vec<Intent>> {
        self.with(move |c| intents::settle_interrupted(c, at)).await
    }

    /// The latest intents, newest first.
    pub async fn recent_intents(&self, limit: usize) -> StoreResult<Vec<Intent>> {
        self.with(move |c| intents::recent(c, limit)).await
    }

    /// Whether the database takes a write (see [`intents::probe_write`]).
    pub async fn probe_write(&self, at: DateTime<Utc>) -> StoreResult<()> {
        self.with(move |c| intents::probe_write(c, at)).await
    }

    /// The operation with this op_id.
    pub async fn find(&self, op_id: OpId) -> StoreResult<Option<QueuedOp>> {
        self.with(move |c| queue::find(c, op_id)).await
    }

    /// The oldest `limit` pending items, oldest first.
    pub async fn pending(&self, limit: usize) -> StoreResult<Vec<QueuedOp>> {
        self.list(Some(ItemStatus::Pending), limit).await
    }

    /// Items, oldest first, optionally of one status.
    pub async fn list(
        &self,
        status: Option<ItemStatus>,
        limit: usize,
    ) -> StoreResult<Vec<QueuedOp>> {
        self.with(move |c| queue::list(c, status, limit)).await
    }

    /// Counts an attempt for each item about to be pushed.
    pub async fn note_attempt(&self, ids: Vec<i64>) -> StoreResult<()> {
        self.with(move |c| queue::note_attempt(c, &ids)).await
    }

    /// Applies a push's outcomes and quotas in one transaction.
    pub async fn apply_push(
        &self,
        outcomes: Vec<ItemOutcome>,
        server_quotas: Vec<ServerQuota>,
        now: DateTime<Utc>,
    ) -> StoreResult<PushApplied> {
        self.with(move |c| queue::apply_push(c, &outcomes, &server_quotas, now))
            .await
    }

    /// Stores a pull (see [`quotas::apply_pull`]).
    pub async fn apply_pull(
        &self,
        listed: Vec<ServerQuota>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.with(move |c| quotas::apply_pull(c, &listed, true, None, now).map(|_| ()))
            .await
    }

    /// Stores a pull (complete, or only what changed) that says how far the
    /// server's ledger holds this kiosk's operations; returns how many
    /// synced ones it lost and are pending again (see [`quotas::apply_pull`]).
    pub async fn apply_pull_through(
        &self,
        listed: Vec<ServerQuota>,
        complete: bool,
        recorded_through: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<usize> {
        self.with(move |c| quotas::apply_pull(c, &listed, complete, recorded_through, now))
            .await
    }

    /// Lets go of unspent units of one lease (see [`quotas::let_go`]).
    pub async fn let_go(&self, client: ClientId, asked: i64) -> StoreResult<i64> {
        self.with(move |c| quotas::let_go(c, client, asked)).await
    }

    /// Notes that the kiosk gave its leases back (see [`quotas::leases_returned`]).
    pub async fn leases_returned(&self) -> StoreResult<()> {
        self.with(|c| quotas::leases_returned(c)).await
    }

    /// A live update of one client's quota.
    pub async fn apply_quota_update(
        &self,
        q: ServerQuota,
        now: DateTime<Utc>,
    ) -> StoreResult<LocalQuota> {
        self.with(move |c| quotas::apply_update(c, &q, now)).await
    }

    /// The keys the server gave for `client`'s badges (secrets: for the
    /// copy flow only).
    pub async fn reader_keys(
        &self,
        client: ClientId,
    ) -> StoreResult<Vec<propass_protocol::ReaderKey>> {
        self.with(move |c| quotas::reader_keys_of(c, client)).await
    }

    /// Every known client's quota.
    pub async fn quotas(&self) -> StoreResult<Vec<LocalQuota>> {
        self.with(|c| quotas::quotas(c)).await
    }

    /// One client's quota if it may get one more card here; else why not
    /// (unknown, quota or lease exhausted).
    pub async fn spendable(&self, client: ClientId) -> StoreResult<LocalQuota> {
        self.with(move |c| {
            let q = quotas::quota_of(c, client)?;
            queue::check_quota(client, q.as_ref())?;
            q.ok_or(StoreError::UnknownClient(client))
        })
        .await
    }

    /// One client's quota, `None` when unknown here.
    pub async fn quota(&self, client: ClientId) -> StoreResult<Option<LocalQuota>> {
        self.with(move |c| quotas::quota_of(c, client)).await
    }

    /// Makes every failed item pending again; returns how many.
    pub async fn retry_failed(&self) -> StoreResult<usize> {
        self.with(|c| queue::retry_failed(c)).await
    }

    /// Queue depth by status.
    pub async fn counts(&self) -> StoreResult<QueueCounts> {
        self.with(|c| queue::counts(c)).await
    }

    /// The device id, stored as `candidate` on first start.
    pub async fn device_id(&self, candidate: DeviceId) -> StoreResult<DeviceId> {
        self.with(move |c| session::device_id(c, candidate)).await
    }

    /// The session of the last login.
    pub async fn session(&self) -> StoreResult<Option<Session>> {
        self.with(|c| session::session(c)).await
    }

    /// The server chosen at the last login.
    pub async fn server_url(&self) -> StoreResult<Option<String>> {
        self.with(|c| session::server_url(c)).await
    }

    /// Stores a login's session and clears "login required".
    pub async fn save_login(&self, s: Session) -> StoreResult<()> {
        self.with(move |c| session::save_login(c, &s)).await
    }

    /// Stores a refreshed token (and, for an enrolled device, the next
    /// refresh credential), atomically.
    pub async fn save_token(
        &self,
        token: String,
        expires_at: Option<DateTime<Utc>>,
        credential: Option<String>,
    ) -> StoreResult<()> {
        self.with(move |c| session::save_token(c, &token, expires_at, credential.as_deref()))
            .await
    }

    /// Why a login is required, if it is.
    pub async fn login_required(&self) -> StoreResult<Option<String>> {
        self.with(|c| session::login_required(c)).await
    }

    /// Remembers (across restarts) that a login is required.
    pub async fn set_login_required(&self, reason: String) -> StoreResult<()> {
        self.with(move |c| session::set_login_required(c, &reason))
            .await
    }

    /// The last successful sync.
    pub async fn last_sync_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        self.with(|c| session::last_sync_at(c)).await
    }

    /// Notes a successful sync.
    pub async fn set_last_sync_at(&self, at: DateTime<Utc>) -> StoreResult<()> {
        self.with(move |c| session::set_last_sync_at(c, at)).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use propass_protocol::{BadgeUid, OpType};

    /// A path `name` in a new directory of its own. The directories live
    /// as long as the test process (stores opened from helpers outlive any
    /// guard); each process first removes those of test processes that have
    /// ended, so a run leaves at most its own behind until the next.
    #[allow(clippy::disallowed_methods)] // a unique directory per test run
    pub(crate) fn temp(name: &str) -> PathBuf {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(remove_ended_runs);
        let dir = std::env::temp_dir().join(format!(
            "propass-store-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Removes `propass-store-PID-…` directories whose process has ended.
    fn remove_ended_runs() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("propass-store-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    /// A pull in which the server says the client has 2 copies left.
    async fn pull_two(store: &Store, c: ClientId) {
        let q = ServerQuota {
            partial_copy: None,
            reader_keys: None,
            client: c,
            remaining: 2,
            name: None,
            version: None,
            lease: LeaseWord::NoLease,
        };
        store.apply_pull(vec![q], at(0)).await.unwrap();
    }

    fn copy(c: ClientId, n: u128) -> NewRecording {
        NewRecording {
            sectors: None,
            op_type: OpType::Copy,
            client: c,
            uid: BadgeUid::parse("04AB12CD").unwrap(),
            occurred_at: at(1),
            recorded_at: at(1),
            op_id: OpId(uuid::Uuid::from_u128(n)),
            unverified: false,
        }
    }

    #[tokio::test]
    async fn record_checks_quota_and_pull_keeps_local_work() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        let enforce = QuotaPolicy::Enforce;
        assert!(matches!(
            store.record(copy(c, 1), enforce).await,
            Err(StoreError::UnknownClient(_))
        ));
        pull_two(&store, c).await;
        let r = store.record(copy(c, 2), enforce).await.unwrap();
        assert_eq!((r.remaining, r.duplicate), (1, false));
        // A pull from a server that has not seen the pending copy: still 1 locally.
        pull_two(&store, c).await;
        assert_eq!(store.quotas().await.unwrap()[0].remaining, 1);
        store.record(copy(c, 3), enforce).await.unwrap();
        assert!(matches!(
            store.record(copy(c, 4), enforce).await,
            Err(StoreError::QuotaExhausted { .. })
        ));
        assert_eq!(store.counts().await.unwrap().pending, 2);
    }

    #[tokio::test]
    async fn a_repeated_op_id_is_a_duplicate_or_a_conflict() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        pull_two(&store, c).await;
        let first = store
            .record(copy(c, 7), QuotaPolicy::Enforce)
            .await
            .unwrap();
        let again = store
            .record(copy(c, 7), QuotaPolicy::Enforce)
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.operation, first.operation);
        let mut other = copy(c, 7);
        other.op_type = OpType::Write;
        assert!(matches!(
            store.record(other, QuotaPolicy::Enforce).await,
            Err(StoreError::OpIdConflict(_))
        ));
        assert_eq!(store.counts().await.unwrap().pending, 1);
    }

    #[tokio::test]
    async fn an_older_quota_update_does_not_overwrite_a_newer_one() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        let q = |remaining, version| ServerQuota {
            partial_copy: None,
            reader_keys: None,
            client: c,
            name: None,
            remaining,
            version: Some(version),
            lease: LeaseWord::Unsaid,
        };
        // A client a pull never named is not added by an update.
        let unknown = store.apply_quota_update(q(10, 5), at(0)).await;
        assert!(
            matches!(unknown, Err(StoreError::UnknownClient(_))),
            "{unknown:?}"
        );
        assert!(store.quotas().await.unwrap().is_empty());
        store.apply_pull(vec![q(10, 5)], at(0)).await.unwrap();
        store.apply_quota_update(q(12, 4), at(1)).await.unwrap(); // late, older
        assert_eq!(store.quotas().await.unwrap()[0].remaining, 10);
        store.apply_quota_update(q(9, 6), at(2)).await.unwrap();
        assert_eq!(store.quotas().await.unwrap()[0].remaining, 9);
        // A server restored from a backup counts versions anew: its pull
        // is the truth, and its live updates apply from there.
        store.apply_pull(vec![q(30, 2)], at(3)).await.unwrap();
        assert_eq!(store.quotas().await.unwrap()[0].remaining, 30);
        store.apply_quota_update(q(29, 3), at(4)).await.unwrap();
        assert_eq!(store.quotas().await.unwrap()[0].remaining, 29);
    }

    fn intent(c: ClientId, n: u128) -> NewIntent {
        NewIntent {
            op_id: OpId(uuid::Uuid::from_u128(n)),
            op_type: OpType::Copy,
            client: c,
            uid: BadgeUid::parse("04AB12CD").unwrap(),
            sectors: None,
            at: at(1),
        }
    }

    /// Asked for units above a lowered target, the kiosk lets go only of
    /// what it has not spent: copies not synced yet and cards being made
    /// came out of its lease.
    #[tokio::test]
    async fn a_kiosk_lets_go_only_of_lease_units_it_has_not_spent() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        assert_eq!(store.let_go(c, 5).await.unwrap(), 0, "an unknown client");
        pull_two(&store, c).await;
        assert_eq!(
            store.let_go(c, 5).await.unwrap(),
            0,
            "no lease: nothing held"
        );
        let leased = ServerQuota {
            partial_copy: None,
            reader_keys: None,
            client: c,
            remaining: 0,
            name: None,
            version: None,
            lease: LeaseWord::Units(10),
        };
        store.apply_pull(vec![leased], at(0)).await.unwrap();
        for n in 1..=3 {
            store
                .record(copy(c, n), QuotaPolicy::Enforce)
                .await
                .unwrap();
        }
        store.reserve(intent(c, 4)).await.unwrap();
        assert_eq!(store.quota(c).await.unwrap().unwrap().remaining, 6);

        assert_eq!(store.let_go(c, 4).await.unwrap(), 4);
        assert_eq!(
            store.let_go(c, 8).await.unwrap(),
            2,
            "3 copies and 1 card in the making came out of the 10"
        );
        let q = store.quota(c).await.unwrap().unwrap();
        assert_eq!((q.lease, q.remaining), (Some(4), 0));
        assert_eq!(store.let_go(c, 1).await.unwrap(), 0);
        assert_eq!(store.let_go(c, -3).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_reservation_holds_a_unit_until_it_is_settled() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        pull_two(&store, c).await;
        let first = store.reserve(intent(c, 1)).await.unwrap();
        store.reserve(intent(c, 2)).await.unwrap();
        assert!(
            matches!(
                store.reserve(intent(c, 3)).await,
                Err(StoreError::QuotaExhausted { .. })
            ),
            "two units, two reservations"
        );
        assert_eq!(store.quota(c).await.unwrap().unwrap().reserved, 2);
        let (op, remaining) = store
            .settle(first.id, Ending::Void("no blank".into()), at(2))
            .await
            .unwrap();
        assert!(op.is_none());
        assert_eq!(remaining, 1, "a void intent gives its unit back");
        assert!(
            store
                .settle(first.id, Ending::Verified, at(3))
                .await
                .is_err(),
            "an intent ends once"
        );
    }

    #[tokio::test]
    async fn a_restart_settles_what_a_crash_left_open() {
        let path = temp("agent.db");
        let c = ClientId::new(1).unwrap();
        {
            let store = Store::open(&path).unwrap();
            pull_two(&store, c).await;
            let writing = store.reserve(intent(c, 1)).await.unwrap();
            store
                .begin_writing(writing.id, "01020304".into(), at(2))
                .await
                .unwrap();
            store.reserve(intent(c, 2)).await.unwrap();
        }
        let store = Store::open(&path).unwrap();
        let found = store.settle_interrupted(at(3)).await.unwrap();
        assert_eq!(found.len(), 2);
        let queued = store.list(None, 10).await.unwrap();
        assert_eq!(queued.len(), 1, "the card being written is recorded");
        assert!(queued[0].unverified);
        assert_eq!(queued[0].op_id, OpId(uuid::Uuid::from_u128(1)));
        let q = store.quota(c).await.unwrap().unwrap();
        assert_eq!((q.remaining, q.reserved), (1, 0));
        assert!(store.settle_interrupted(at(4)).await.unwrap().is_empty());
    }

    /// A delta pull updates what it lists and forgets nothing; a complete
    /// pull forgets the clients it no longer lists.
    #[tokio::test]
    async fn a_delta_pull_keeps_the_clients_it_does_not_list() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let said = |id, remaining| ServerQuota {
            partial_copy: None,
            reader_keys: None,
            client: ClientId::new(id).unwrap(),
            remaining,
            name: None,
            version: None,
            lease: LeaseWord::NoLease,
        };
        let remaining = |store: &Store| {
            let store = store.clone();
            async move {
                let mut all: Vec<(i64, i64)> = store
                    .quotas()
                    .await
                    .unwrap()
                    .iter()
                    .map(|q| (q.client_id.get(), q.server_remaining))
                    .collect();
                all.sort_unstable();
                all
            }
        };
        store
            .apply_pull_through(vec![said(1, 5), said(2, 7)], true, None, at(0))
            .await
            .unwrap();
        store
            .apply_pull_through(vec![said(1, 4)], false, None, at(1))
            .await
            .unwrap();
        assert_eq!(remaining(&store).await, [(1, 4), (2, 7)]);
        store
            .apply_pull_through(vec![said(1, 4)], true, None, at(2))
            .await
            .unwrap();
        assert_eq!(remaining(&store).await, [(1, 4)]);
    }

    /// A kiosk left serving no client forgets them all (and their leases):
    /// a complete pull that lists none is not a pull that says nothing.
    #[tokio::test]
    async fn a_complete_pull_listing_no_client_forgets_every_client() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        let q = ServerQuota {
            partial_copy: None,
            reader_keys: None,
            client: c,
            remaining: 5,
            name: None,
            version: None,
            lease: LeaseWord::Units(3),
        };
        store.apply_pull(vec![q], at(0)).await.unwrap();
        assert!(store.quota(c).await.unwrap().is_some());
        store.apply_pull(Vec::new(), at(1)).await.unwrap();
        assert_eq!(store.quota(c).await.unwrap(), None);
        assert!(store
            .record(copy(c, 1), QuotaPolicy::Enforce)
            .await
            .is_err());
    }

    /// A pull's reader keys are kept until a pull says otherwise: a live
    /// update (which carries none) leaves them, an empty list clears them,
    /// and the quota the status and the local API show never holds them.
    #[tokio::test]
    async fn reader_keys_follow_what_pulls_say() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        let key = propass_protocol::ReaderKey::parse("A0A1A2A3A4A5").unwrap();
        let said = |reader_keys, version| ServerQuota {
            partial_copy: None,
            reader_keys,
            client: c,
            remaining: 5,
            name: None,
            version: Some(version),
            lease: LeaseWord::NoLease,
        };
        assert!(
            store.reader_keys(c).await.unwrap().is_empty(),
            "unknown client"
        );
        store
            .apply_pull(vec![said(Some(vec![key]), 1)], at(0))
            .await
            .unwrap();
        assert_eq!(store.reader_keys(c).await.unwrap(), [key]);
        store
            .apply_quota_update(said(None, 2), at(1))
            .await
            .unwrap();
        assert_eq!(
            store.reader_keys(c).await.unwrap(),
            [key],
            "a live update keeps them"
        );
        let shown = serde_json::to_string(&store.quotas().await.unwrap()).unwrap();
        assert!(!shown.contains("A0A1A2A3A4A5"), "{shown}");
        store
            .apply_pull(vec![said(Some(Vec::new()), 3)], at(2))
            .await
            .unwrap();
        assert!(store.reader_keys(c).await.unwrap().is_empty(), "cleared");

        // No longer served, its row kept for its unsynced copy: keys gone.
        store
            .apply_pull(vec![said(Some(vec![key]), 4)], at(3))
            .await
            .unwrap();
        store
            .record(copy(c, 1), QuotaPolicy::Enforce)
            .await
            .unwrap();
        store.apply_pull(Vec::new(), at(4)).await.unwrap();
        assert!(store.quota(c).await.unwrap().is_some(), "kept for its copy");
        assert!(
            store.reader_keys(c).await.unwrap().is_empty(),
            "keys of a client not served"
        );
    }

    #[tokio::test]
    async fn with_a_lease_the_kiosk_spends_only_its_own_units() {
        let store = Store::open(&temp("agent.db")).unwrap();
        let c = ClientId::new(1).unwrap();
        let said = |remaining, lease| ServerQuota {
            partial_copy: None,
            reader_keys: None,
            client: c,
            remaining,
            name: Some("ACME".into()),
            version: None,
            lease,
        };
        store
            .apply_pull(vec![said(100, LeaseWord::Units(2))], at(0))
            .await
            .unwrap();
        assert_eq!(store.quota(c).await.unwrap().unwrap().remaining, 2);
        store
            .record(copy(c, 1), QuotaPolicy::Enforce)
            .await
            .unwrap();
        store
            .record(copy(c, 2), QuotaPolicy::Enforce)
            .await
            .unwrap();
        let refused = store.record(copy(c, 3), QuotaPolicy::Enforce).await;
        let Err(e @ StoreError::LeaseExhausted { .. }) = refused else {
            panic!("expected the lease to be spent: {refused:?}");
        };
        assert!(e.to_string().contains("ACME"), "{e}");
        assert!(e.to_string().contains("until it reconnects"), "{e}");

        // The push that syncs both says the lease is spent; a live update
        // (no word on the lease) leaves it.
        let pushed = store.pending(10).await.unwrap();
        let outcomes = pushed
            .iter()
            .map(|o| ItemOutcome {
                id: o.id,
                op_id: Some(o.op_id),
                result: Ok(()),
            })
            .collect();
        store
            .apply_push(outcomes, vec![said(100, LeaseWord::Units(0))], at(2))
            .await
            .unwrap();
        store
            .apply_quota_update(said(120, LeaseWord::Unsaid), at(3))
            .await
            .unwrap();
        let q = store.quota(c).await.unwrap().unwrap();
        assert_eq!((q.lease, q.remaining), (Some(0), 0));
        // A server without leases: the kiosk spends the free units again.
        store
            .apply_pull(vec![said(120, LeaseWord::NoLease)], at(4))
            .await
            .unwrap();
        assert_eq!(store.quota(c).await.unwrap().unwrap().remaining, 120);
    }
}
