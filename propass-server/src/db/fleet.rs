//! The fleet as operators see it: each kiosk's latest heartbeat, whether it
//! is online (heard from recently — a heartbeat or any call — so it holds
//! across server restarts and instances), and what needs a look.

use chrono::{DateTime, Duration, Utc};
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use propass_protocol::{DeviceId, KioskHeartbeat, ReaderHealth};

/// When a kiosk is offline, and what flags it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPolicy {
    pub offline_after: Duration,
    pub clock_skew: Duration,
    pub backlog_age: Duration,
    pub write_failures: i64,
}

/// The longest `last_error` kept (the rest is cut).
const MAX_ERROR_CHARS: usize = 500;

/// Keeps each heartbeat as its device's latest, received at its time, and
/// counts it as contact (with the agent version it reports): in one
/// transaction of two statements whatever their number (one per device).
pub async fn record_many(
    conn: &mut AsyncPgConnection,
    beats: &[(&DeviceId, &KioskHeartbeat, DateTime<Utc>)],
) -> diesel::QueryResult<()> {
    if beats.is_empty() {
        return Ok(());
    }
    let c = Columns::of(beats);
    conn.transaction(async |conn| {
        // By device id: concurrent writers lock the rows in one order.
        diesel::sql_query(
            "INSERT INTO device_heartbeats AS h (device_id, received_at, clock_skew_ms, agent_version, pending, failed, \
                 oldest_pending_at, last_sync_at, last_error, reader, blanks_written, blanks_failed, storage_error) \
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::text[], $5::int8[], $6::int8[], \
                 $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[], $11::int8[], $12::int8[], $13::text[]) \
             ORDER BY 1 \
             ON CONFLICT (device_id) DO UPDATE SET received_at = excluded.received_at, \
                 clock_skew_ms = excluded.clock_skew_ms, agent_version = excluded.agent_version, \
                 pending = excluded.pending, failed = excluded.failed, oldest_pending_at = excluded.oldest_pending_at, \
                 last_sync_at = excluded.last_sync_at, last_error = excluded.last_error, reader = excluded.reader, \
                 blanks_written = excluded.blanks_written, blanks_failed = excluded.blanks_failed, \
                 storage_error = excluded.storage_error",
        )
        .bind::<Array<Text>, _>(&c.devices)
        .bind::<Array<Timestamptz>, _>(&c.at)
        .bind::<Array<BigInt>, _>(&c.skew_ms)
        .bind::<Array<Text>, _>(&c.versions)
        .bind::<Array<BigInt>, _>(&c.pending)
        .bind::<Array<BigInt>, _>(&c.failed)
        .bind::<Array<Nullable<Timestamptz>>, _>(&c.oldest)
        .bind::<Array<Nullable<Timestamptz>>, _>(&c.synced)
        .bind::<Array<Nullable<Text>>, _>(&c.errors)
        .bind::<Array<Text>, _>(&c.readers)
        .bind::<Array<BigInt>, _>(&c.written)
        .bind::<Array<BigInt>, _>(&c.blank_failures)
        .bind::<Array<Nullable<Text>>, _>(&c.storage_errors)
        .execute(conn)
        .await?;
        diesel::sql_query(
            "UPDATE devices AS d SET last_seen = greatest(d.last_seen, b.at), agent_version = b.version \
             FROM (SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS b(device_id, at, version) \
                   ORDER BY device_id) AS b \
             WHERE d.device_id = b.device_id",
        )
        .bind::<Array<Text>, _>(&c.devices)
        .bind::<Array<Timestamptz>, _>(&c.at)
        .bind::<Array<Text>, _>(&c.versions)
        .execute(conn)
        .await?;
        Ok(())
    })
    .await
}

/// A batch of heartbeats as the columns the upsert unnests.
struct Columns<'a> {
    devices: Vec<&'a str>,
    at: Vec<DateTime<Utc>>,
    skew_ms: Vec<i64>,
    versions: Vec<String>,
    pending: Vec<i64>,
    failed: Vec<i64>,
    oldest: Vec<Option<DateTime<Utc>>>,
    synced: Vec<Option<DateTime<Utc>>>,
    errors: Vec<Option<String>>,
    storage_errors: Vec<Option<String>>,
    readers: Vec<&'static str>,
    written: Vec<i64>,
    blank_failures: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(beats: &[(&'a DeviceId, &KioskHeartbeat, DateTime<Utc>)]) -> Self {
        let sat = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let col = |f: &dyn Fn(&KioskHeartbeat, DateTime<Utc>) -> i64| -> Vec<i64> {
            beats.iter().map(|(_, hb, now)| f(hb, *now)).collect()
        };
        let text = |f: &dyn Fn(&KioskHeartbeat) -> &Option<String>| -> Vec<Option<String>> {
            beats
                .iter()
                .map(|(_, hb, _)| f(hb).as_deref().map(|e| storable(e, MAX_ERROR_CHARS)))
                .collect()
        };
        Self {
            devices: beats.iter().map(|(d, _, _)| d.as_str()).collect(),
            at: beats.iter().map(|(_, _, now)| *now).collect(),
            skew_ms: col(&|hb, now| (hb.clock - now).num_milliseconds()),
            versions: beats
                .iter()
                .map(|(_, hb, _)| storable(&hb.agent_version, 64))
                .collect(),
            pending: col(&|hb, _| hb.pending.max(0)),
            failed: col(&|hb, _| hb.failed.max(0)),
            oldest: beats
                .iter()
                .map(|(_, hb, _)| storable_time(hb.oldest_pending_at))
                .collect(),
            synced: beats
                .iter()
                .map(|(_, hb, _)| storable_time(hb.last_sync_at))
                .collect(),
            errors: text(&|hb| &hb.last_error),
            storage_errors: text(&|hb| &hb.storage_error),
            readers: beats
                .iter()
                .map(|(_, hb, _)| match hb.reader {
                    ReaderHealth::Unknown => "unknown",
                    ReaderHealth::Ok => "ok",
                    ReaderHealth::Absent => "absent",
                    ReaderHealth::Failing => "failing",
                })
                .collect(),
            written: col(&|hb, _| sat(hb.blanks_written)),
            blank_failures: col(&|hb, _| sat(hb.blanks_failed)),
        }
    }
}

/// `text` cut to `max` characters, without NUL (which PostgreSQL's `text`
/// refuses: one kiosk's would fail the whole batch, again and again).
fn storable(text: &str, max: usize) -> String {
    text.chars().filter(|&c| c != '\0').take(max).collect()
}

/// A kiosk's time, unless it is out of any plausible range (a clock that
/// never was set says 1970, not year 0): like a NUL in text, one kiosk's
/// time PostgreSQL refuses (before 4713 BC, which a heartbeat can carry)
/// would fail the whole batch, again and again.
fn storable_time(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    t.filter(|t| (1900..=9999).contains(&t.year()))
}

/// Marks a kiosk's WebSocket as open (`connected`) or its last one as
/// closed, at `now`: a kiosk whose socket closed is offline until it is
/// heard from again.
pub async fn socket(
    conn: &mut AsyncPgConnection,
    device: &DeviceId,
    connected: bool,
    now: DateTime<Utc>,
) -> diesel::QueryResult<()> {
    let sql = if connected {
        "UPDATE devices SET last_seen = greatest(last_seen, $2), disconnected_at = NULL WHERE device_id = $1"
    } else {
        "UPDATE devices SET disconnected_at = greatest(last_seen, $2) WHERE device_id = $1"
    };
    diesel::sql_query(sql)
        .bind::<Text, _>(device.as_str())
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await
        .map(drop)
}

/// One kiosk's health, for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    pub online: bool,
    /// When its last heartbeat arrived.
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub pending: Option<i64>,
    pub failed: Option<i64>,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub reader: Option<String>,
    pub blanks_written: Option<i64>,
    pub blanks_failed: Option<i64>,
    /// Why its database refused its last write (it makes no card meanwhile).
    pub storage_error: Option<String>,
    /// Its clock minus the server's, in milliseconds, at its last heartbeat.
    pub clock_skew_ms: Option<i64>,
    /// Overdrafts its copies caused in the last 24 hours.
    pub overdrafts_24h: i64,
    /// What needs a look: `offline`, `clock_skew`, `backlog`,
    /// `reader_unplugged`, `cannot_record`, `write_failures`, `overdrafts`.
    pub flags: Vec<&'static str>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text, deserialize_as = super::columns::DeviceIdColumn)]
    device_id: DeviceId,
    #[diesel(sql_type = Timestamptz)]
    last_seen: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    disconnected_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    received_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    clock_skew_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pending: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    failed: Option<i64>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest_pending_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_sync_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    reader: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    blanks_written: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    blanks_failed: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    storage_error: Option<String>,
    #[diesel(sql_type = BigInt)]
    overdrafts_24h: i64,
}

/// The devices whose row changes by time alone in `(since, until]`: silent
/// past `offline_after` (online → offline), or with a backlog passing
/// `backlog_age` — no event announces those; see `changes::publish_aging`.
pub async fn aging(
    conn: &mut AsyncPgConnection,
    policy: FleetPolicy,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> diesel::QueryResult<Vec<DeviceId>> {
    #[derive(QueryableByName)]
    struct Aged {
        #[diesel(sql_type = Text, deserialize_as = super::columns::DeviceIdColumn)]
        device_id: DeviceId,
    }
    let rows: Vec<Aged> = diesel::sql_query(
        "SELECT d.device_id FROM devices d LEFT JOIN device_heartbeats h ON h.device_id = d.device_id \
         WHERE greatest(d.last_seen, h.received_at) + $3 > $1 \
           AND greatest(d.last_seen, h.received_at) + $3 <= $2 \
            OR (h.pending > 0 AND h.oldest_pending_at + $4 > $1 AND h.oldest_pending_at + $4 <= $2)",
    )
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(until)
    .bind::<diesel::sql_types::Interval, _>(pg_interval(policy.offline_after))
    .bind::<diesel::sql_types::Interval, _>(pg_interval(policy.backlog_age))
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.device_id).collect())
}

fn pg_interval(d: Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(d.num_microseconds().unwrap_or(i64::MAX))
}

/// Every device's health at `now` (or only `only`'s), by device id.
pub async fn health(
    conn: &mut AsyncPgConnection,
    policy: FleetPolicy,
    now: DateTime<Utc>,
    only: Option<&[DeviceId]>,
) -> diesel::QueryResult<std::collections::HashMap<DeviceId, Health>> {
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT d.device_id, d.last_seen, d.disconnected_at, h.received_at, h.clock_skew_ms, h.pending, h.failed, \
                h.oldest_pending_at, h.last_sync_at, h.last_error, h.reader, h.blanks_written, h.blanks_failed, h.storage_error, \
                (SELECT count(*) FROM copies c WHERE c.device_id = d.device_id AND c.overdraft \
                   AND c.received_at > $1 - interval '24 hours') AS overdrafts_24h \
         FROM devices d LEFT JOIN device_heartbeats h ON h.device_id = d.device_id \
         WHERE $2::text[] IS NULL OR d.device_id = ANY($2)",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Nullable<diesel::sql_types::Array<Text>>, _>(only.map(super::devices::id_strs))
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let h = judge(&r, policy, now);
            (r.device_id, h)
        })
        .collect())
}

/// Online and the flags, from what was stored.
fn judge(r: &Row, p: FleetPolicy, now: DateTime<Utc>) -> Health {
    let heard = r.received_at.map_or(r.last_seen, |h| h.max(r.last_seen));
    // A kiosk whose socket closed and that said nothing since is gone now.
    let online = now - heard <= p.offline_after && r.disconnected_at.is_none_or(|d| heard > d);
    let mut flags = Vec::new();
    if !online {
        flags.push("offline");
    }
    if r.clock_skew_ms
        .is_some_and(|ms| ms.abs() > p.clock_skew.num_milliseconds())
    {
        flags.push("clock_skew");
    }
    if r.pending.unwrap_or(0) > 0 && r.oldest_pending_at.is_some_and(|t| now - t > p.backlog_age) {
        flags.push("backlog");
    }
    if matches!(r.reader.as_deref(), Some("absent" | "failing")) {
        flags.push("reader_unplugged");
    }
    if r.storage_error.is_some() {
        flags.push("cannot_record");
    }
    if r.blanks_failed.unwrap_or(0) >= p.write_failures {
        flags.push("write_failures");
    }
    if r.overdrafts_24h > 0 {
        flags.push("overdrafts");
    }
    Health {
        online,
        heartbeat_at: r.received_at,
        pending: r.pending,
        failed: r.failed,
        oldest_pending_at: r.oldest_pending_at,
        last_sync_at: r.last_sync_at,
        last_error: r.last_error.clone(),
        reader: r.reader.clone(),
        blanks_written: r.blanks_written,
        blanks_failed: r.blanks_failed,
        storage_error: r.storage_error.clone(),
        clock_skew_ms: r.clock_skew_ms,
        overdrafts_24h: r.overdrafts_24h,
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_of_any_plausible_range_are_not_stored() {
        let at = |s: &str| serde_json::from_str::<DateTime<Utc>>(&format!("{s:?}")).ok();
        let today = at("2026-12-06T10:00:00Z");
        assert_eq!(storable_time(today), today);
        assert!(
            storable_time(at("1970-01-01T00:00:00Z")).is_some(),
            "an unset clock"
        );
        // All of them parse; PostgreSQL refuses the first (before 4713 BC).
        for odd in [
            "-5000-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "1899-12-31T23:59:59Z",
        ] {
            let t = at(odd);
            assert!(t.is_some(), "{odd} parses");
            assert_eq!(storable_time(t), None, "{odd}");
        }
    }
}
