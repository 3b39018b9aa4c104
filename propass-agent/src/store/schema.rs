//! Opening the database: the checks that refuse foreign, newer or corrupt
//! files without writing to them, the pragmas behind "recorded means
//! durable", and the schema migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::{StoreError, StoreResult};

/// `PRPS`, stored in the SQLite header to recognise our databases.
pub const APPLICATION_ID: i32 = 0x5052_5053;

/// Applied in order; `user_version` counts those applied. `queue` rows are
/// never deleted (it is the kiosk's history, and `queue::counts` takes the
/// number of rows from the last AUTOINCREMENT id): pruning it would need a
/// stored count instead.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id       TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL CHECK (type IN ('copy', 'write')),
    client_id   INTEGER NOT NULL,
    uid         TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'synced', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    created_at  TEXT NOT NULL,
    synced_at   TEXT
);
CREATE INDEX queue_status ON queue (status, id);
CREATE TABLE quotas (
    client_id        INTEGER PRIMARY KEY,
    name             TEXT,
    server_remaining INTEGER NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
CREATE INDEX queue_client_status ON queue (client_id, status);
"#,
    r#"
ALTER TABLE quotas ADD COLUMN server_version INTEGER;
"#,
    // Whole-badge copies: the client's partial-copy policy (NULL: not said,
    // which means no) and each copy's sector map.
    r#"
ALTER TABLE quotas ADD COLUMN partial_copy INTEGER;
ALTER TABLE queue ADD COLUMN sectors TEXT;
"#,
    // Write-ahead intents: a unit is reserved and the card named before any
    // blank is touched; `writing` is durable before the first write command,
    // so a crash leaves an intent that start-up settles (see `intents`).
    // An in-doubt card is queued with `unverified`.
    r#"
CREATE TABLE intents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id       TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL CHECK (type IN ('copy', 'write')),
    client_id   INTEGER NOT NULL,
    uid         TEXT NOT NULL,
    sectors     TEXT,
    blank_uid   TEXT,
    step        TEXT NOT NULL CHECK (step IN ('reserved', 'writing', 'recorded', 'in_doubt', 'void')),
    reason      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX intents_open ON intents (client_id) WHERE step IN ('reserved', 'writing');
ALTER TABLE queue ADD COLUMN unverified INTEGER NOT NULL DEFAULT 0;
"#,
    // Leases: the units the server set aside for this kiosk, by client
    // (NULL: no lease; the kiosk spends the free units optimistically).
    r#"
ALTER TABLE quotas ADD COLUMN server_lease INTEGER;
"#,
    // The MIFARE keys the server gave for a client's badges, upper-case hex
    // separated by commas ('' none; NULL: the server never said). Secrets:
    // read only by the copy flow, never by the status or the local API.
    r#"
ALTER TABLE quotas ADD COLUMN reader_keys TEXT;
"#,
];

/// Opens (or creates) the database at `path`, refusing foreign, newer or
/// corrupt files without writing to them, then migrates it.
pub fn open(path: &Path) -> StoreResult<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.into(), e.to_string()))?;
    }
    let existing = path.exists();
    if existing {
        check_header(path)?;
    }
    let mut conn =
        Connection::open(path).map_err(|e| StoreError::Io(path.into(), e.to_string()))?;
    make_private(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version = check_identity(&conn, path, existing)?;
    make_durable(&conn, path)?;
    migrate(&mut conn, version)?;
    Ok(conn)
}

/// Opens an existing database read-only, without migrating it (what
/// `export-unsynced` reads while the agent may be stopped or running).
/// Refuses a file an older agent left at an older schema: the running agent
/// upgrades it at its next start.
pub fn open_read_only(path: &Path) -> StoreResult<Connection> {
    if !path.is_file() {
        return Err(StoreError::Io(path.into(), "no such database".into()));
    }
    check_header(path)?;
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Io(path.into(), e.to_string()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version = check_identity(&conn, path, true)?;
    let known = MIGRATIONS.len() as i64;
    if version != known {
        return Err(StoreError::Io(
            path.into(),
            format!("its schema is version {version}, this agent's {known}: start the agent once so that it upgrades it"),
        ));
    }
    Ok(conn)
}

/// A non-empty file must start with SQLite's magic string.
fn check_header(path: &Path) -> StoreResult<()> {
    let mut header = [0u8; 16];
    let mut f =
        std::fs::File::open(path).map_err(|e| StoreError::Io(path.into(), e.to_string()))?;
    let n = std::io::Read::read(&mut f, &mut header)
        .map_err(|e| StoreError::Io(path.into(), e.to_string()))?;
    if n > 0 && (n < 16 || &header != b"SQLite format 3\0") {
        return Err(StoreError::NotSqlite(path.into()));
    }
    Ok(())
}

/// Ours (or empty), not newer than this agent, and intact; returns the
/// schema version.
fn check_identity(conn: &Connection, path: &Path, existing: bool) -> StoreResult<i64> {
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| map_open_err(path, e))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| map_open_err(path, e))?;
    if app_id != APPLICATION_ID && !(app_id == 0 && version == 0 && tables == 0) {
        return Err(StoreError::Foreign(path.into(), app_id));
    }
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew(path.into(), version, known));
    }
    if existing && tables > 0 {
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| map_open_err(path, e))?;
        if check != "ok" {
            return Err(StoreError::Corrupt(path.into(), check));
        }
    }
    Ok(version)
}

/// WAL with `synchronous=FULL`: a commit that returned survives a power cut.
fn make_durable(conn: &Connection, path: &Path) -> StoreResult<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Io(
            path.into(),
            format!("cannot switch to WAL mode (got {mode})"),
        ));
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(())
}

/// The queue holds who got which badge copied: the database (and its
/// directory) are for the agent's user alone (0600 / 0700).
fn make_private(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::Io(p.into(), e.to_string()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        set(dir, 0o700)?;
    }
    set(path, 0o600)
}

fn migrate(conn: &mut Connection, from: i64) -> StoreResult<()> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!(
            "PRAGMA user_version = {}; PRAGMA application_id = {APPLICATION_ID};",
            i + 1
        ))?;
        tx.commit()?;
    }
    Ok(())
}

fn map_open_err(path: &Path, e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            StoreError::NotSqlite(path.into())
        }
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::DatabaseCorrupt =>
        {
            StoreError::Corrupt(
                path.into(),
                msg.unwrap_or_else(|| "database disk image is malformed".into()),
            )
        }
        other => StoreError::Sqlite(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp;

    #[test]
    fn refuses_foreign_and_garbage_files() {
        let garbage = temp("garbage.db");
        std::fs::write(&garbage, b"this is not a database at all, not even close!").unwrap();
        assert!(matches!(open(&garbage), Err(StoreError::NotSqlite(_))));
        assert_eq!(
            std::fs::read(&garbage).unwrap(),
            b"this is not a database at all, not even close!"
        );

        let foreign = temp("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        assert!(matches!(open(&foreign), Err(StoreError::Foreign(_, 0))));
    }
}
