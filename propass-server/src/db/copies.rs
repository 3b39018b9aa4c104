//! The ledger on PostgreSQL: the `copies` table and the charging of quotas.
//!
//! [`PgLedger::record_batch`] writes a whole push in ONE transaction with
//! set-based statements, in named steps: read the device's standing under a
//! share lock (refusing one that does not admit the push), insert the new
//! operations of the clients it serves, resolve the others as duplicates or
//! conflicts, charge the quotas in client-id order, flag overdrafts, read back
//! the named quotas, count the push against the device's limits. Every row
//! inserted is charged exactly once; a key already in the ledger is charged
//! nothing. A deadlock or serialization failure reruns the whole transaction
//! (up to [`MAX_ATTEMPTS`]). The device's last contact is noted after COMMIT.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use propass_protocol::{ClientId, DeviceId, QuotaUpdated};

use super::prepared::Prepare;
use super::{devices, leases};
use crate::device::{admit, Caller, Purpose};
use crate::error::ApiError;
use crate::ledger::{BatchOutcome, ItemFailure, LedgerStore, NewOp, Outcome};

/// Attempts of a push transaction that keeps meeting deadlocks or serialization failures.
pub const MAX_ATTEMPTS: u32 = 4;

/// A device's push limits; 0 means no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceLimits {
    /// Pushes per clock minute.
    pub pushes_per_minute: u32,
    /// New ledger rows per UTC day.
    pub items_per_day: u64,
}

/// The ledger on one connection, under the pushing device's limits.
pub struct PgLedger<'c> {
    pub conn: &'c mut AsyncPgConnection,
    pub limits: DeviceLimits,
    /// Note the device's last contact after COMMIT (the caller skips it
    /// when it noted one moments ago).
    pub note_contact: bool,
}

impl LedgerStore for PgLedger<'_> {
    async fn record_batch(
        &mut self,
        device: &DeviceId,
        caller: Caller,
        ops: &[NewOp<'_>],
        now: DateTime<Utc>,
    ) -> Result<BatchOutcome, ApiError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let limits = self.limits;
            let tx = self
                .conn
                .transaction(async |conn| {
                    record_batch_tx(conn, device, caller, ops, now, limits).await
                })
                .await;
            match tx {
                Err(TxError::Db(e)) if attempt < MAX_ATTEMPTS && is_retryable(&e) => {
                    tracing::warn!(attempt, error = %e, "push transaction conflicted; retrying");
                }
                Err(TxError::Refused(e)) => return Err(e),
                Err(TxError::Db(e)) => return Err(e.into()),
                Ok(outcome) => {
                    // After COMMIT: the row lock it takes is held an instant.
                    if !self.note_contact {
                        return Ok(outcome);
                    }
                    if let Err(e) = devices::seen(self.conn, device, now).await {
                        tracing::debug!(error = %e, %device, "cannot note the device's last contact");
                    }
                    return Ok(outcome);
                }
            }
        }
    }
}

/// Why a push transaction rolled back.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("{0}")]
    Refused(ApiError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Serialization failures and deadlocks: the transaction rolled back and may simply be run again.
fn is_retryable(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        Error::DatabaseError(_, info) => info.message().contains("deadlock detected"),
        _ => false,
    }
}

async fn record_batch_tx(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    caller: Caller,
    ops: &[NewOp<'_>],
    now: DateTime<Utc>,
    limits: DeviceLimits,
) -> Result<BatchOutcome, TxError> {
    // A share lock: a revocation waits for the pushes in flight (or, if it
    // committed first, this push sees it and is refused), while pushes of
    // one kiosk do not queue behind each other on the device row.
    // Pipelined (sent together; the order they run in does not matter: a
    // refusal rolls the insert back). A kiosk already at its limit is
    // refused before it locks anything others need; the count that decides
    // is taken at the end (see `count_usage`).
    let (mut first, mut second) = (&*conn, &*conn);
    let (standing, fresh) = futures_util::try_join!(
        devices::standing_for_push(&mut first, device, now),
        insert_new(&mut second, device, ops, now),
    )?;
    let (state, pushes) = standing.map_or((None, 0), |(s, p)| (Some(s), p));
    admit(device, caller, state, Purpose::KioskCall).map_err(TxError::Refused)?;
    if limits.pushes_per_minute > 0 && pushes >= limits.pushes_per_minute {
        return Err(TxError::Refused(over_minute_limit(device, now, limits)));
    }
    let new_rows = fresh.len();
    let mut outcomes = resolve(conn, device, ops, fresh).await?;
    let charge = take_leases(conn, device, ops, &outcomes).await?;
    // Pipelined, once the quota rows are locked (every push takes them
    // first): the device's usage row is locked only from here to COMMIT.
    let (mut first, mut second) = (&*conn, &*conn);
    let ((rows, held), ()) = futures_util::try_join!(
        async {
            charge_quotas(&mut first, charge)
                .await
                .map_err(TxError::from)
        },
        count_usage(&mut second, device, new_rows, now, limits),
    )?;
    flag_overdrafts(conn, ops, &mut outcomes, &rows).await?;
    let (named, leases) = read_named(conn, device, ops, &rows, held).await?;
    Ok(BatchOutcome {
        outcomes,
        charged: rows.iter().filter_map(QuotaRow::update).collect(),
        named,
        leases,
    })
}

#[derive(QueryableByName)]
struct Usage {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    minute_pushes: i32,
    #[diesel(sql_type = BigInt)]
    day_items: i64,
}

/// The refusal of a push past the device's pushes-per-minute limit.
fn over_minute_limit(device: &DeviceId, now: DateTime<Utc>, limits: DeviceLimits) -> ApiError {
    tracing::warn!(%device, limit = limits.pushes_per_minute, "device over its pushes-per-minute limit: push refused");
    ApiError::DeviceLimit {
        why: format!(
            "device {device} made more than {} pushes this minute (device_pushes_per_minute)",
            limits.pushes_per_minute
        ),
        retry_after_secs: 60 - now.timestamp().rem_euclid(60).unsigned_abs(),
    }
}

/// Counts this push in the device's minute and its new rows in the
/// device's day, refusing the whole push past either limit: the
/// transaction rolls back, so a refusal counts nothing and records nothing.
async fn count_usage(
    conn: &mut &AsyncPgConnection,
    device: &DeviceId,
    new_rows: usize,
    now: DateTime<Utc>,
    limits: DeviceLimits,
) -> Result<(), TxError> {
    let new_rows = i64::try_from(new_rows).unwrap_or(i64::MAX);
    let usage: Usage = diesel::sql_query(
        "INSERT INTO device_usage AS u (device_id, minute_start, minute_pushes, day, day_items) \
         VALUES ($1, date_trunc('minute', $2), 1, ($2 AT TIME ZONE 'UTC')::date, $3) \
         ON CONFLICT (device_id) DO UPDATE SET \
           minute_pushes = CASE WHEN u.minute_start = excluded.minute_start THEN u.minute_pushes + 1 ELSE 1 END, \
           minute_start = excluded.minute_start, \
           day_items = CASE WHEN u.day = excluded.day THEN u.day_items ELSE 0 END + excluded.day_items, \
           day = excluded.day \
         RETURNING minute_pushes, day_items",
    )
    .bind::<Text, _>(device.as_str())
    .bind::<Timestamptz, _>(now)
    .bind::<BigInt, _>(new_rows)
    .prepared()
    .get_result(conn)
    .await?;
    let pushes = u32::try_from(usage.minute_pushes).unwrap_or(u32::MAX);
    if limits.pushes_per_minute > 0 && pushes > limits.pushes_per_minute {
        return Err(TxError::Refused(over_minute_limit(device, now, limits)));
    }
    let after = u64::try_from(usage.day_items).unwrap_or(0);
    if new_rows > 0 && limits.items_per_day > 0 && after > limits.items_per_day {
        let before = usage.day_items - new_rows;
        tracing::warn!(%device, limit = limits.items_per_day, today = before, pushed = new_rows, "device over its items-per-day limit: push refused; check the kiosk");
        return Err(TxError::Refused(ApiError::DeviceLimit {
            why: format!(
                "device {device} would pass its limit of {} new copies per day (device_items_per_day; {before} today, {new_rows} in this push)",
                limits.items_per_day
            ),
            retry_after_secs: 86_400 - now.timestamp().rem_euclid(86_400).unsigned_abs(),
        }));
    }
    Ok(())
}

#[derive(QueryableByName)]
struct InsertedRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = Timestamptz)]
    occurred_at: DateTime<Utc>,
}

/// Inserts every operation whose key is not in the ledger yet, in one
/// statement: keys in sorted order, so concurrent batches take index locks in
/// one order; joined on the device's assigned clients, so an unknown client,
/// or one this device does not serve, inserts nothing.
/// Answers the inserted keys with their row id and time.
async fn insert_new(
    conn: &mut &AsyncPgConnection,
    device: &DeviceId,
    ops: &[NewOp<'_>],
    now: DateTime<Utc>,
) -> diesel::QueryResult<HashMap<String, (i64, DateTime<Utc>)>> {
    if ops.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<&str> = ops.iter().map(|o| o.key.as_str()).collect();
    let op_ids: Vec<Option<uuid::Uuid>> = ops.iter().map(|o| o.item.op_id.map(|x| x.0)).collect();
    let local_ids: Vec<i64> = ops.iter().map(|o| o.item.id).collect();
    let client_ids: Vec<i64> = ops.iter().map(|o| o.item.payload.client_id.get()).collect();
    let uids: Vec<String> = ops.iter().map(|o| o.item.payload.uid.to_hex()).collect();
    let kinds: Vec<&str> = ops.iter().map(|o| o.item.op_type.as_str()).collect();
    let occurred: Vec<DateTime<Utc>> = ops
        .iter()
        .map(|o| o.item.payload.occurred_at.unwrap_or(now))
        .collect();
    let sectors: Vec<Option<&str>> = ops
        .iter()
        .map(|o| o.item.payload.sectors.as_ref().map(|m| m.as_str()))
        .collect();
    let unverified: Vec<bool> = ops
        .iter()
        .map(|o| o.item.payload.unverified == Some(true))
        .collect();
    let inserted: Vec<InsertedRow> = diesel::sql_query(
        "INSERT INTO copies (idempotency_key, op_id, device_id, local_id, client_id, uid, kind, occurred_at, sectors, unverified) \
         SELECT k, o, $3, l, c, u, t, w, s, v \
         FROM unnest($1::text[], $2::uuid[], $4::int8[], $5::int8[], $6::text[], $7::text[], $8::timestamptz[], $9::text[], $10::bool[]) \
              AS x(k, o, l, c, u, t, w, s, v) \
         JOIN device_clients dc ON dc.client_id = x.c AND dc.device_id = $3 \
         ORDER BY k \
         ON CONFLICT (idempotency_key) DO NOTHING \
         RETURNING id, idempotency_key, occurred_at",
    )
    .bind::<Array<Text>, _>(&keys)
    .bind::<Array<Nullable<diesel::sql_types::Uuid>>, _>(&op_ids)
    .bind::<Text, _>(device.as_str())
    .bind::<Array<BigInt>, _>(&local_ids)
    .bind::<Array<BigInt>, _>(&client_ids)
    .bind::<Array<Text>, _>(&uids)
    .bind::<Array<Text>, _>(&kinds)
    .bind::<Array<Timestamptz>, _>(&occurred)
    .bind::<Array<Nullable<Text>>, _>(&sectors)
    .bind::<Array<diesel::sql_types::Bool>, _>(&unverified)
    .prepared()
    .load(conn)
    .await?;
    Ok(inserted
        .into_iter()
        .map(|r| (r.idempotency_key, (r.id, r.occurred_at)))
        .collect())
}

#[derive(QueryableByName)]
struct ExistingRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = BigInt)]
    client_id: i64,
    #[diesel(sql_type = Text)]
    uid: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Timestamptz)]
    occurred_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    overdraft: bool,
}

/// The outcome of every operation, in input order. The first operation of
/// the batch holding a freshly inserted key is new; every other one is looked
/// up: the same operation already in the ledger is a duplicate, another
/// operation under its key a conflict, and a key nowhere means the insert's
/// join found no such client among the device's: unknown, or not served.
async fn resolve(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    ops: &[NewOp<'_>],
    mut fresh: HashMap<String, (i64, DateTime<Utc>)>,
) -> diesel::QueryResult<Vec<Outcome>> {
    let first: Vec<Option<(i64, DateTime<Utc>)>> =
        ops.iter().map(|op| fresh.remove(op.key.as_str())).collect();
    let again: Vec<&str> = ops
        .iter()
        .zip(&first)
        .filter(|(_, f)| f.is_none())
        .map(|(op, _)| op.key.as_str())
        .collect();
    let existing: HashMap<String, ExistingRow> = if again.is_empty() {
        HashMap::new()
    } else {
        diesel::sql_query(
            "SELECT id, idempotency_key, client_id, uid, kind, occurred_at, overdraft \
             FROM copies WHERE idempotency_key = ANY($1)",
        )
        .bind::<Array<Text>, _>(&again)
        .prepared()
        .load::<ExistingRow>(conn)
        .await?
        .into_iter()
        .map(|r| (r.idempotency_key.clone(), r))
        .collect()
    };
    let missing: Vec<i64> = ops
        .iter()
        .zip(&first)
        .filter(|(op, f)| f.is_none() && !existing.contains_key(op.key.as_str()))
        .map(|(op, _)| op.item.payload.client_id.get())
        .collect();
    let known = existing_clients(conn, device, &missing).await?;
    Ok(ops
        .iter()
        .zip(first)
        .map(|(op, first)| match first {
            Some((ledger_id, occurred_at)) => Outcome::Recorded {
                ledger_id,
                duplicate: false,
                overdraft: false,
                occurred_at,
            },
            None => judge_existing(op, existing.get(op.key.as_str()), &known),
        })
        .collect())
}

/// Which of `ids` are clients at all (the others are unknown); `device` is
/// for the log only.
async fn existing_clients(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    ids: &[i64],
) -> diesel::QueryResult<HashSet<i64>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let found: HashSet<i64> = diesel::sql_query("SELECT id FROM clients WHERE id = ANY($1)")
        .bind::<Array<BigInt>, _>(ids)
        .load::<Id>(conn)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    if ids.iter().any(|c| found.contains(c)) {
        tracing::warn!(%device, "push for clients this kiosk does not serve; those items failed");
    }
    Ok(found)
}

/// The same operation is judged by client, UID and kind only: a copy's
/// sector map describes the card, it does not identify the operation, so a
/// differing map never turns a retry into a conflict (the first one stays).
fn judge_existing(op: &NewOp<'_>, row: Option<&ExistingRow>, clients: &HashSet<i64>) -> Outcome {
    let item = op.item;
    match row {
        Some(row)
            if row.client_id == item.payload.client_id.get()
                && row.uid == item.payload.uid.to_hex()
                && row.kind == item.op_type.as_str() =>
        {
            Outcome::Recorded {
                ledger_id: row.id,
                duplicate: true,
                overdraft: row.overdraft,
                occurred_at: row.occurred_at,
            }
        }
        Some(row) => Outcome::Failed(ItemFailure::Conflict {
            ledger_id: row.id,
            kind: row.kind.clone(),
            uid: row.uid.clone(),
            client_id: row.client_id,
        }),
        None if clients.contains(&item.payload.client_id.get()) => {
            Outcome::Failed(ItemFailure::NotServed(item.payload.client_id))
        }
        None => Outcome::Failed(ItemFailure::UnknownClient(item.payload.client_id)),
    }
}

#[derive(QueryableByName)]
struct QuotaRow {
    #[diesel(sql_type = BigInt)]
    client_id: i64,
    #[diesel(sql_type = BigInt)]
    remaining: i64,
    #[diesel(sql_type = BigInt)]
    version: i64,
    /// Of the batch's new copies of this client, how many the pushing
    /// device's lease covered (never overdrafts).
    #[diesel(sql_type = BigInt)]
    covered: i64,
}

impl QuotaRow {
    fn update(&self) -> Option<QuotaUpdated> {
        Some(QuotaUpdated {
            client_id: ClientId::new(self.client_id).ok()?,
            remaining: self.remaining,
            version: Some(self.version),
        })
    }
}

/// The ops newly inserted by this batch (not duplicates), with their outcome.
fn new_ops<'o, 'a>(
    ops: &'o [NewOp<'a>],
    outcomes: &'o [Outcome],
) -> impl Iterator<Item = (&'o NewOp<'a>, &'o Outcome)> {
    ops.iter().zip(outcomes).filter(|(_, o)| {
        matches!(
            o,
            Outcome::Recorded {
                duplicate: false,
                ..
            }
        )
    })
}

/// What a push charges: per client (by id) its new copies and how many of
/// them the pushing device's lease covered, and the device's leases after.
#[derive(Default)]
struct Charge {
    cids: Vec<i64>,
    ns: Vec<i64>,
    takes: Vec<i64>,
    held: HashMap<i64, i64>,
}

/// Locks the quota rows of the clients the batch newly charges and spends
/// the pushing device's lease on those copies first.
async fn take_leases(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    ops: &[NewOp<'_>],
    outcomes: &[Outcome],
) -> diesel::QueryResult<Charge> {
    let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
    for (op, _) in new_ops(ops, outcomes) {
        *counts.entry(op.item.payload.client_id.get()).or_default() += 1;
    }
    if counts.is_empty() {
        return Ok(Charge::default());
    }
    let (cids, ns): (Vec<i64>, Vec<i64>) = counts.into_iter().unzip();
    // Lock the quota rows in one global order (by id) so that concurrent
    // pushes and lease grants never deadlock and the leases read below stay
    // as read; the locks are held only from here to COMMIT. Pipelined: the
    // lease is read after the lock, in the order they are sent.
    let (mut first, mut second) = (&*conn, &*conn);
    let ((), consumed) = futures_util::try_join!(
        leases::lock_quotas(&mut first, &cids),
        leases::consume(&mut second, device, &cids, &ns),
    )?;
    let takes: Vec<i64> = cids
        .iter()
        .map(|c| consumed.get(c).map_or(0, |l| l.taken))
        .collect();
    let held = consumed.into_iter().map(|(c, l)| (c, l.left)).collect();
    Ok(Charge {
        cids,
        ns,
        takes,
        held,
    })
}

/// Charges each client for its newly inserted copies, from the lease first;
/// answers the new remaining (the free units) of every charged client, by
/// client id, and the device's leases of them after.
async fn charge_quotas(
    conn: &mut &AsyncPgConnection,
    charge: Charge,
) -> diesel::QueryResult<(Vec<QuotaRow>, HashMap<i64, i64>)> {
    if charge.cids.is_empty() {
        return Ok((Vec::new(), charge.held));
    }
    let mut rows: Vec<QuotaRow> = diesel::sql_query(
        "UPDATE quotas AS q SET used = q.used + c.n, leased = q.leased - c.take, \
                version = q.version + 1, updated_at = now() \
         FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS c(client_id, n, take) \
         WHERE q.client_id = c.client_id \
         RETURNING q.client_id, q.total - q.used - q.leased AS remaining, q.version, c.take AS covered",
    )
    .bind::<Array<BigInt>, _>(&charge.cids)
    .bind::<Array<BigInt>, _>(&charge.ns)
    .bind::<Array<BigInt>, _>(&charge.takes)
    .prepared()
    .load(conn)
    .await?;
    rows.sort_unstable_by_key(|r| r.client_id);
    Ok((rows, charge.held))
}

/// A copy is never refused for lack of quota (the card exists): the copies
/// that took their client below zero are flagged instead. Of a client's `n`
/// new copies in input order, the first `covered` spent the device's lease
/// (set aside for them: never an overdraft); the k-th (1-based) after them
/// left `remaining + n - k` free units.
async fn flag_overdrafts(
    conn: &mut AsyncPgConnection,
    ops: &[NewOp<'_>],
    outcomes: &mut [Outcome],
    charged: &[QuotaRow],
) -> diesel::QueryResult<()> {
    let after: HashMap<i64, (i64, i64)> = charged
        .iter()
        .map(|r| (r.client_id, (r.remaining, r.covered)))
        .collect();
    let mut total: HashMap<i64, i64> = HashMap::new();
    for (op, _) in new_ops(ops, outcomes) {
        *total.entry(op.item.payload.client_id.get()).or_default() += 1;
    }
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut overdrawn: Vec<i64> = Vec::new();
    for (op, outcome) in ops.iter().zip(outcomes.iter_mut()) {
        let Outcome::Recorded {
            ledger_id,
            duplicate: false,
            overdraft,
            ..
        } = outcome
        else {
            continue;
        };
        let client = op.item.payload.client_id.get();
        let k = seen.entry(client).or_default();
        *k += 1;
        let (Some((remaining, covered)), Some(n)) = (after.get(&client), total.get(&client)) else {
            continue;
        };
        if *k > *covered && remaining + n - *k < 0 {
            *overdraft = true;
            overdrawn.push(*ledger_id);
        }
    }
    if !overdrawn.is_empty() {
        diesel::sql_query("UPDATE copies SET overdraft = TRUE WHERE id = ANY($1)")
            .bind::<Array<BigInt>, _>(&overdrawn)
            .prepared()
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The remaining of every client the batch names — duplicates included — so
/// that a kiosk whose retry comes back all-duplicate still learns the truth
/// in the same answer that marks its items synced — and the device's leases
/// of them, by client id. When the batch charged every client it names (the
/// usual push), the charge already read both.
async fn read_named(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    ops: &[NewOp<'_>],
    charged: &[QuotaRow],
    held: HashMap<i64, i64>,
) -> diesel::QueryResult<(Vec<QuotaUpdated>, Vec<(i64, i64)>)> {
    let mut named: Vec<i64> = ops.iter().map(|o| o.item.payload.client_id.get()).collect();
    named.sort_unstable();
    named.dedup();
    let all_charged =
        named.len() == charged.len() && named.iter().zip(charged).all(|(n, c)| *n == c.client_id);
    let (quotas, held) = if all_charged {
        (charged.iter().filter_map(QuotaRow::update).collect(), held)
    } else {
        let held = leases::held(conn, device, Some(&named)).await?;
        (read_named_quotas(conn, &named).await?, held)
    };
    let mut leases: Vec<(i64, i64)> = held.into_iter().collect();
    leases.sort_unstable();
    Ok((quotas, leases))
}

/// The remaining of the clients `named` (sorted, without duplicates).
async fn read_named_quotas(
    conn: &mut AsyncPgConnection,
    named: &[i64],
) -> diesel::QueryResult<Vec<QuotaUpdated>> {
    if named.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<QuotaRow> = diesel::sql_query(
        "SELECT client_id, total - used - leased AS remaining, version, 0::int8 AS covered FROM quotas \
         WHERE client_id = ANY($1) ORDER BY client_id",
    )
    .bind::<Array<BigInt>, _>(named)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.iter().filter_map(QuotaRow::update).collect())
}
