//! Clients and their quotas.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use propass_protocol::{ClientId, DeviceId};

use super::prepared::Prepare;
use super::schema::{clients, device_clients, quotas};

/// The NOTIFY channel announcing quota changes made outside a push (operator
/// top-ups); the payload is the client id.
pub const QUOTA_CHANNEL: &str = "propass_quota";

/// The NOTIFY channel announcing a change of a client's copy policy or
/// reader keys (which `quota_updated` does not carry); the payload is the
/// client id.
pub const CLIENT_CHANNEL: &str = "propass_client";

/// A client with its quota.
#[derive(Debug, Clone, Queryable, serde::Serialize)]
pub struct ClientRow {
    pub id: i64,
    pub name: String,
    /// Copies bought.
    pub total: i64,
    /// Copies made.
    pub used: i64,
    /// Units set aside in kiosks' leases.
    pub leased: i64,
    /// Bumped by every change of the quota or of the copy policy.
    pub version: i64,
    /// The client accepts a whole-badge copy that leaves out sectors the
    /// kiosk cannot read (told to kiosks by pull).
    pub partial_copy: bool,
    /// Its own lease size (`None`: the server's `lease_target`).
    pub lease_target: Option<i64>,
    /// The keys an operator gave for its badges (secrets: never
    /// serialized but into a pull of a kiosk that asked).
    #[serde(skip)]
    #[diesel(deserialize_as = super::columns::ReaderKeysColumn)]
    pub reader_keys: Vec<propass_protocol::ReaderKey>,
}

impl ClientRow {
    /// `total - used - leased`: the units no kiosk holds; negative after
    /// an overdraft.
    pub fn remaining(&self) -> i64 {
        self.total - self.used - self.leased
    }
}

/// Creates a client with an initial quota and its copy policy; returns its id.
pub async fn create(
    conn: &mut AsyncPgConnection,
    name: &str,
    quota: i64,
    partial_copy: bool,
) -> QueryResult<i64> {
    let name = name.to_owned();
    conn.transaction(async |conn| {
        let id: i64 = diesel::insert_into(clients::table)
            .values((
                clients::name.eq(&name),
                clients::partial_copy.eq(partial_copy),
            ))
            .returning(clients::id)
            .get_result(conn)
            .await?;
        diesel::insert_into(quotas::table)
            .values((quotas::client_id.eq(id), quotas::total.eq(quota)))
            .execute(conn)
            .await?;
        Ok(id)
    })
    .await
}

/// Every client with its quota, by id.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<ClientRow>> {
    with_quota().order(clients::id).load(conn).await
}

/// The clients `device` serves, with their quotas, by id.
pub async fn served_by(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
) -> QueryResult<Vec<ClientRow>> {
    let served = device_clients::table
        .filter(device_clients::device_id.eq(device.as_str()))
        .select(device_clients::client_id);
    with_quota()
        .filter(clients::id.eq_any(served))
        .order(clients::id)
        .load(conn)
        .await
}

#[derive(QueryableByName)]
struct Horizon {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    xmin: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    xmax: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    clients_changed: i64,
}

/// A pull's version, and what it lists: `Some(since)` for the clients
/// changed since the kiosk's last version, `None` for all of them. Run
/// first in the pull's transaction: the version is the xmin of the snapshot
/// it reads with (every transaction below it had ended), so a change the
/// pull does not see carries a transaction id at or above it and is listed
/// next time. All of them when `since` is absent, ahead of the database (a
/// restore, another cluster), or not newer than the device's last
/// assignment change (a client taken away is not a row that changed). The
/// device row is share-locked to COMMIT: an assignment (whose trigger
/// updates it) cannot commit between this read and the clients'.
pub async fn pull_version(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    since: Option<i64>,
) -> QueryResult<(i64, Option<i64>)> {
    let horizon: Option<Horizon> = diesel::sql_query(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin, \
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax, \
                clients_changed_xid::text::bigint AS clients_changed \
         FROM devices WHERE device_id = $1 FOR SHARE",
    )
    .bind::<diesel::sql_types::Text, _>(device.as_str())
    .prepared()
    .get_result(conn)
    .await
    .optional()?;
    // An unknown device serves nothing: version 0 asks everything next time.
    let Some(horizon) = horizon else {
        return Ok((0, None));
    };
    let since = since.filter(|s| *s <= horizon.xmax && *s > horizon.clients_changed);
    Ok((horizon.xmin, since))
}

/// The clients `device` serves, with their quotas, by id: those changed
/// since `since` (see [`pull_version`]), or all of them.
pub async fn served_changed(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    since: Option<i64>,
) -> QueryResult<Vec<ClientRow>> {
    let Some(since) = since else {
        return served_by(conn, device).await;
    };
    let served = device_clients::table
        .filter(device_clients::device_id.eq(device.as_str()))
        .select(device_clients::client_id);
    with_quota()
        .filter(clients::id.eq_any(served))
        .filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>(
                "greatest(quotas.changed_xid, clients.changed_xid) >= ",
            )
            .bind::<diesel::sql_types::BigInt, _>(since)
            .sql("::text::xid8"),
        )
        .order(clients::id)
        .load(conn)
        .await
}

#[diesel::dsl::auto_type]
fn with_quota() -> _ {
    clients::table.inner_join(quotas::table).select((
        clients::id,
        clients::name,
        quotas::total,
        quotas::used,
        quotas::leased,
        quotas::version,
        clients::partial_copy,
        clients::lease_target,
        clients::reader_keys,
    ))
}

/// What a quota change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaChange {
    /// Applied: the client's new remaining.
    Applied(i64),
    /// No such client.
    UnknownClient,
    /// A correction larger than the units that are free: removing them would
    /// take back units already spent or set aside for kiosks (`leased`), and
    /// a kiosk spends its lease offline without asking.
    NotFree { free: i64, leased: i64 },
}

/// Adds `n` copies to a client's quota; a negative `n` corrects a mistake
/// and may only remove units that are free, so used + leased ≤ total holds
/// whatever operators do (checked and applied under the row's lock).
pub async fn add_quota(
    conn: &mut AsyncPgConnection,
    client: ClientId,
    n: i64,
) -> QueryResult<QuotaChange> {
    conn.transaction(async |conn| {
        let row = quotas::table.filter(quotas::client_id.eq(client.get()));
        // Adding is always allowed (an overdrawn client too); removing only
        // what is free.
        let adding =
            diesel::dsl::sql::<diesel::sql_types::Bool>(if n >= 0 { "TRUE" } else { "FALSE" });
        let remaining = diesel::update(row)
            .filter(adding.or(quotas::total.ge(quotas::used + quotas::leased - n)))
            .set((
                quotas::total.eq(quotas::total + n),
                quotas::version.eq(quotas::version + 1),
                quotas::updated_at.eq(diesel::dsl::now),
            ))
            .returning(quotas::total - quotas::used - quotas::leased)
            .get_result::<i64>(conn)
            .await
            .optional()?;
        let Some(remaining) = remaining else {
            let books = row
                .select((
                    quotas::total - quotas::used - quotas::leased,
                    quotas::leased,
                ))
                .first::<(i64, i64)>(conn)
                .await
                .optional()?;
            return Ok(books.map_or(QuotaChange::UnknownClient, |(free, leased)| {
                QuotaChange::NotFree {
                    free: free.max(0),
                    leased,
                }
            }));
        };
        // Delivered at COMMIT to every server listening: they push
        // `quota_updated` to the kiosks.
        diesel::sql_query(format!("NOTIFY {QUOTA_CHANNEL}, '{}'", client.get()))
            .execute(conn)
            .await?;
        Ok(QuotaChange::Applied(remaining))
    })
    .await
}

/// Sets whether a client accepts partial copies; returns the client's new
/// version, `None` for an unknown client (see [`change_terms`]).
pub async fn set_partial_copy(
    conn: &mut AsyncPgConnection,
    client: ClientId,
    allow: bool,
) -> QueryResult<Option<i64>> {
    change_terms(conn, client, Terms::PartialCopy(allow)).await
}

/// Replaces the keys of a client's badges; returns the client's new
/// version, `None` for an unknown client (see [`change_terms`]).
pub async fn set_reader_keys(
    conn: &mut AsyncPgConnection,
    client: ClientId,
    keys: &[propass_protocol::ReaderKey],
) -> QueryResult<Option<i64>> {
    let hex: Vec<String> = keys
        .iter()
        .map(propass_protocol::ReaderKey::to_hex)
        .collect();
    change_terms(conn, client, Terms::ReaderKeys(&hex)).await
}

/// What a pull says of a client besides its quota.
enum Terms<'a> {
    PartialCopy(bool),
    /// Upper-case hex.
    ReaderKeys(&'a [String]),
}

/// Changes what a pull says of a client besides its quota. The version is
/// bumped with it because a pull answers both under one version: a kiosk
/// that keeps the newest answer then keeps the newest terms too.
/// `quota_updated` carries neither: the kiosks serving the client are asked
/// to pull ([`CLIENT_CHANNEL`]).
async fn change_terms(
    conn: &mut AsyncPgConnection,
    client: ClientId,
    terms: Terms<'_>,
) -> QueryResult<Option<i64>> {
    conn.transaction(async |conn| {
        let row = diesel::update(clients::table.find(client.get()));
        let found = match terms {
            Terms::PartialCopy(allow) => {
                row.set(clients::partial_copy.eq(allow))
                    .execute(conn)
                    .await?
            }
            Terms::ReaderKeys(hex) => row.set(clients::reader_keys.eq(hex)).execute(conn).await?,
        };
        if found == 0 {
            return Ok(None);
        }
        announce_policy(conn, client).await?;
        bump_version(conn, client).await
    })
    .await
}

/// Tells every server (at COMMIT) that what a pull says of `client` beyond
/// its quota changed: they ask the kiosks serving it to pull now.
pub(super) async fn announce_policy(
    conn: &mut AsyncPgConnection,
    client: ClientId,
) -> QueryResult<()> {
    diesel::sql_query(format!("NOTIFY {CLIENT_CHANNEL}, '{}'", client.get()))
        .execute(conn)
        .await
        .map(drop)
}

/// Bumps a client's version (what a pull answers changed) in the caller's
/// transaction; the new version, `None` when the client has no quota row.
async fn bump_version(conn: &mut AsyncPgConnection, client: ClientId) -> QueryResult<Option<i64>> {
    diesel::update(quotas::table.filter(quotas::client_id.eq(client.get())))
        .set((
            quotas::version.eq(quotas::version + 1),
            quotas::updated_at.eq(diesel::dsl::now),
        ))
        .returning(quotas::version)
        .get_result::<i64>(conn)
        .await
        .optional()
}

/// The remaining quota of one client, with the row's version.
pub async fn remaining_of(
    conn: &mut AsyncPgConnection,
    client: ClientId,
) -> QueryResult<Option<(i64, i64)>> {
    quotas::table
        .filter(quotas::client_id.eq(client.get()))
        .select((
            quotas::total - quotas::used - quotas::leased,
            quotas::version,
        ))
        .first(conn)
        .await
        .optional()
}

/// A client as operators see it.
#[derive(Debug, Clone, diesel::QueryableByName, serde::Serialize)]
pub struct ClientOverview {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub total: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub used: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub leased: i64,
    /// `total - used - leased`; negative after an overdraft.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub remaining: i64,
    /// Copies recorded beyond what was paid for.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub overdrafts: i64,
    /// The kiosks serving it.
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Text>)]
    pub kiosks: Vec<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub partial_copy: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub archived: bool,
    /// How many keys an operator gave for its badges (never which).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub reader_key_count: i64,
}

/// Clients with their quotas, overdrafts and kiosks, by id: those of
/// `only`, or all (archived ones when asked).
pub async fn overview(
    conn: &mut AsyncPgConnection,
    only: Option<&[i64]>,
    include_archived: bool,
) -> QueryResult<Vec<ClientOverview>> {
    diesel::sql_query(
        "SELECT c.id, c.name, q.total, q.used, q.leased, q.total - q.used - q.leased AS remaining, \
                coalesce(o.n, 0) AS overdrafts, \
                coalesce((SELECT array_agg(dc.device_id ORDER BY dc.device_id) FROM device_clients dc \
                          WHERE dc.client_id = c.id), '{}') AS kiosks, \
                c.partial_copy, c.archived_at IS NOT NULL AS archived, \
                cardinality(c.reader_keys)::int8 AS reader_key_count \
         FROM clients c JOIN quotas q ON q.client_id = c.id \
         LEFT JOIN (SELECT client_id, count(*) AS n FROM copies WHERE overdraft GROUP BY client_id) o \
                ON o.client_id = c.id \
         WHERE ($1::int8[] IS NULL OR c.id = ANY($1)) AND ($2 OR c.archived_at IS NULL) \
         ORDER BY c.id",
    )
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::BigInt>>, _>(only)
    .bind::<diesel::sql_types::Bool, _>(include_archived)
    .load(conn)
    .await
}

/// Renames a client; whether it exists. A name taken by another client is
/// a unique violation.
pub async fn rename(conn: &mut AsyncPgConnection, client: i64, name: &str) -> QueryResult<bool> {
    let n = diesel::update(clients::table.find(client))
        .set(clients::name.eq(name))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Archives a client (or takes it out of the archive); whether it exists.
pub async fn set_archived(
    conn: &mut AsyncPgConnection,
    client: i64,
    archived: bool,
) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE clients SET archived_at = CASE WHEN $2 THEN coalesce(archived_at, now()) END WHERE id = $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(client)
    .bind::<diesel::sql_types::Bool, _>(archived)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Clients of `ids` that are archived (a kiosk may not be given one).
pub async fn archived_among(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<Vec<i64>> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let rows: Vec<Id> = diesel::sql_query(
        "SELECT id FROM clients WHERE id = ANY($1) AND archived_at IS NOT NULL ORDER BY id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}
