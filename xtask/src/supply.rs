//! Supply-chain checks with cargo-deny (installed into ~/.cargo/bin when
//! missing): licences, bans and sources always; advisories against the
//! RustSec database. cargo-deny fetches that database from GitHub; where
//! GitHub cannot be reached (a registry-only network), `PROPASS_ADVISORY_DB`
//! names a local clone of <https://github.com/rustsec/advisory-db> (a work
//! tree or a bare git directory) to check against instead, and the run says
//! how old that snapshot is. With neither, the advisories are NOT checked
//! and xtask says so loudly instead of failing the run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sys::{self, cargo, root, run_status};

/// Where a local snapshot of the advisory database comes from.
const LOCAL_DB_ENV: &str = "PROPASS_ADVISORY_DB";

/// A snapshot older than this is used, with a warning that it is stale.
const STALE_AFTER_DAYS: i64 = 30;

/// `cargo deny check` as configured in deny.toml.
pub fn check() -> Result<(), String> {
    sys::ensure_cargo_tool("deny", "cargo-deny", "^0.20")?;
    eprintln!("xtask: cargo deny check licenses bans sources…");
    if !run_status(cargo().args([
        "deny",
        "--log-level",
        "error",
        "check",
        "licenses",
        "bans",
        "sources",
    ]))? {
        return Err("cargo deny found licence, ban or source problems (see above)".into());
    }
    match std::env::var_os(LOCAL_DB_ENV).filter(|v| !v.is_empty()) {
        Some(local) => advisories_from_snapshot(Path::new(&local)),
        None => advisories_online(),
    }
}

fn advisories_online() -> Result<(), String> {
    eprintln!("xtask: cargo deny check advisories…");
    let out = cargo()
        .args(["deny", "--log-level", "error", "check", "advisories"])
        .stdout(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return Ok(());
    }
    if said.contains("failed to fetch advisory database") {
        eprintln!(
            "xtask: WARNING: the RustSec advisory database could not be fetched (github.com unreachable): \
             security advisories were NOT checked by this run; set {LOCAL_DB_ENV}=/path/to/a/clone/of/advisory-db \
             to check against a local snapshot"
        );
        return Ok(());
    }
    eprintln!("{said}");
    Err("cargo deny found advisories (see above)".into())
}

/// The check against a local snapshot: cloned (or fast-forwarded) into
/// `target/advisory-db` where cargo-deny looks for its default database, then
/// cargo-deny runs offline with deny.toml plus that `db-path`.
fn advisories_from_snapshot(source: &Path) -> Result<(), String> {
    let db_path = root().join("target/advisory-db");
    let source_s = source
        .to_str()
        .ok_or(format!("{LOCAL_DB_ENV} is not UTF-8"))?;
    let clone = update_snapshot(&db_path, source_s)?;
    let (day, age_days) = snapshot_age(&clone)?;
    eprintln!(
        "xtask: cargo deny check advisories against the local snapshot of {day} ({source_s})…"
    );
    let config = root().join("target/deny-local-advisories.toml");
    let deny = std::fs::read_to_string(root().join("deny.toml")).map_err(|e| e.to_string())?;
    let with_path = deny.replacen(
        "[advisories]\n",
        &format!("[advisories]\ndb-path = \"{}\"\n", db_path.display()),
        1,
    );
    if with_path == deny {
        return Err("deny.toml has no [advisories] table".into());
    }
    std::fs::write(&config, with_path).map_err(|e| e.to_string())?;
    let ok = run_status(cargo().args([
        "deny",
        "--offline",
        "--log-level",
        "error",
        "--config",
        config.to_str().unwrap_or_default(),
        "check",
        "advisories",
    ]))?;
    if !ok {
        return Err("cargo deny found advisories (see above)".into());
    }
    if age_days > STALE_AFTER_DAYS {
        eprintln!(
            "xtask: WARNING: the advisory snapshot is {age_days} days old ({day}): advisories published since were NOT checked"
        );
    }
    Ok(())
}

/// The snapshot cloned from `source` (or brought up to it) under `db_path`,
/// where cargo-deny looks; its directory.
fn update_snapshot(db_path: &Path, source: &str) -> Result<PathBuf, String> {
    // The directory cargo-deny 0.20 derives from its default database URL
    // (https://github.com/rustsec/advisory-db); an upgrade of cargo-deny that
    // changes it makes the check fail with "cannot change to …", not pass.
    let clone = db_path.join("advisory-db-3157b0e258782691");
    if clone.join(".git").is_dir() {
        let fetched = git(&clone, &["fetch", "--quiet", source, "HEAD"])?
            && git(&clone, &["reset", "--quiet", "--hard", "FETCH_HEAD"])?;
        if !fetched {
            return Err(format!("cannot update {} from {source}", clone.display()));
        }
        return Ok(clone);
    }
    std::fs::create_dir_all(db_path).map_err(|e| format!("{}: {e}", db_path.display()))?;
    let target = clone.to_str().unwrap_or_default();
    if !git(db_path, &["clone", "--quiet", source, target])? {
        return Err(format!(
            "{LOCAL_DB_ENV}={source} is not a clone of rustsec/advisory-db that git can read"
        ));
    }
    Ok(clone)
}

/// The day of the snapshot's last commit, and its age in days.
fn snapshot_age(clone: &Path) -> Result<(String, i64), String> {
    let date = Command::new("git")
        .args(["log", "-1", "--format=%cs %ct"])
        .current_dir(clone)
        .output()
        .map_err(|e| e.to_string())?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_owned();
    let (day, epoch) = date.split_once(' ').unwrap_or((&date, "0"));
    let age_days = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        - epoch.parse::<i64>().unwrap_or(0))
        / 86_400;
    Ok((day.to_owned(), age_days))
}

fn git(dir: &Path, args: &[&str]) -> Result<bool, String> {
    run_status(Command::new("git").args(args).current_dir(dir))
}
