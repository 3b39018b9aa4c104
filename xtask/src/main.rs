//! `cargo xtask`: the project's commands. Everything runs from the workspace
//! root and provisions what it needs (a throwaway PostgreSQL cluster, Debian
//! packages when run as root).
//!
//! - `cargo xtask test [--no-compat] [ARGS…]`: clippy (warnings are errors), `cargo deny check`
//!   (deny.toml; advisories from GitHub or `PROPASS_ADVISORY_DB`, a local clone), every test of the
//!   workspace against a throwaway cluster (the dashboard's in Debian's Chromium, installed when
//!   missing), the seed Electron client's own TypeScript against the real server (unless
//!   `--no-compat`, which says so loudly), then the Debian packages (`package --check`).
//! - `cargo xtask e2e [ARGS…]`: the end-to-end tests only (also part of `test`).
//! - `cargo xtask demo`: the server on 127.0.0.1:5000 with a demo admin and client, and an agent.
//! - `cargo xtask bench push [--fleet] [--kiosks N] [--batches N] [--batch-size N]`: push
//!   throughput, against raw SQL and pgbench on the same cluster.
//! - `cargo xtask bench agent [--ops N] [--history N] [--backlog N]`: agent recording rate
//!   (fresh, and with a year of history) and backlog drain.
//! - `cargo xtask bench ledger [--copies N] [--kiosks N] [--samples N]`: the dashboard's ledger
//!   pages (page 1 and 10,000), fleet list and CSV export on a bulk-loaded ledger, against psql.
//! - `cargo xtask bench ws [--kiosks N] [--events N] [--broadcasts N]`: kiosk WebSockets on the
//!   server (per-client events, one event to all) against a minimal actix-ws broadcaster, and a
//!   heartbeat from every kiosk at once against one upsert of the same rows.
//! - `cargo xtask bench fleet [--kiosks N] [--outage SECS] …`: two instances behind the shipped
//!   haproxy config, simulated kiosks with WebSockets, both instances stopped for a minute:
//!   socket and backlog recovery, storm p99 and errors, every copy in the ledger exactly once.
//! - `cargo xtask chaos [--rounds N] [--seed S] [--kiosks K]`: the real server and agents at
//!   emulated readers (their state on tmpfs of their own, to fill) under seeded faults, the
//!   ledger's invariants checked after every round.
//! - `cargo xtask package [--check]`: Debian packages of propass-server and propass-agent
//!   (cargo-deb) in `target/debian/`; `--check` verifies them (as root: install, units, purge).
//! - `cargo xtask supply`: the supply-chain check alone (`cargo deny check`; see `supply`).
//! - `cargo xtask db`: just the throwaway cluster, for development.
#![allow(clippy::disallowed_methods)] // a tool on the real clock, not logic under simulation

mod browser;
mod compat;
mod demo;
mod package;
mod pg;
mod setup;
mod supply;
mod sys;

use std::process::{Command, ExitCode};
use std::time::Duration;

use pg::Cluster;
use sys::{cargo, interrupted, run_status};

fn main() -> ExitCode {
    sys::install_signal_handler();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo::run(),
        Some("bench") => bench(&args[1..]),
        Some("chaos") => run_example("propass-agent", "chaos", &args[1..], "chaos run"),
        Some("e2e") => e2e(&args[1..]),
        Some("db") => db(),
        Some("package") => package::run(&args[1..]),
        Some("supply") => supply::check(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 test [ARGS…]   run every test against a throwaway PostgreSQL (ARGS go to cargo test; --no-compat skips the seed client check)\n  \
                 e2e [ARGS…]    only the end-to-end tests (real server, real agents, real PostgreSQL)\n  \
                 demo           run the server on 127.0.0.1:5000 with a demo admin and client\n  \
                 bench push     measure push throughput against raw SQL and pgbench (--fleet: 64 kiosks, 100 clients)\n  \
                 bench agent    measure durable recordings against raw SQLite, and a backlog drain\n  \
                 bench ledger   the dashboard's ledger pages, fleet list and CSV export on ten million copies\n  \
                 bench ws       10,000 kiosk WebSockets: per-client and fleet-wide delivery against a minimal broadcaster, heartbeats stored\n  \
                 bench fleet    two instances behind haproxy, thousands of kiosks with sockets, a one-minute outage: recovery, storm p99\n  \
                 chaos          seeded faults against the real server and agents; invariants after every round\n  \
                 package        Debian packages of the server and the agent in target/debian (--check: verify them)\n  \
                 supply         cargo deny check: licences, bans, sources, advisories (PROPASS_ADVISORY_DB: a local advisory-db clone)\n  \
                 db             start a throwaway PostgreSQL and print its DATABASE_URL"
            );
            Err("unknown command".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Uses `DATABASE_URL` when set, else starts a throwaway cluster (whose CA
/// goes to the tests in `PROPASS_TEST_PG_CA`, for the database TLS test).
fn database(fsync: bool) -> Result<(Option<Cluster>, String), String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        eprintln!("xtask: using DATABASE_URL from the environment");
        match pg::drop_abandoned(&url) {
            Ok(gone) if !gone.is_empty() => eprintln!(
                "xtask: dropped {} test database(s) a killed run on this machine left behind: {}",
                gone.len(),
                gone.join(", ")
            ),
            Ok(_) => {}
            Err(e) => eprintln!("xtask: warning: cannot look for abandoned test databases: {e}"),
        }
        return Ok((None, url));
    }
    let cluster = Cluster::start(fsync)?;
    let url = cluster.url();
    Ok((Some(cluster), url))
}

/// Where the tests find the throwaway cluster's CA.
const PG_CA_ENV: &str = "PROPASS_TEST_PG_CA";

fn test(args: &[String]) -> Result<(), String> {
    let no_compat = args.iter().any(|a| a == "--no-compat");
    let extra: Vec<String> = args
        .iter()
        .filter(|a| *a != "--no-compat")
        .cloned()
        .collect();
    setup::ensure_packages(setup::Needs::Test)?;
    browser::ensure()?;
    clippy()?;
    supply::check()?;
    let (cluster, url) = database(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--locked"])
        .args(&extra)
        .env("DATABASE_URL", &url);
    if let Some(c) = &cluster {
        cmd.env(PG_CA_ENV, c.ca_file());
    }
    let ok = run_status(&mut cmd)?;
    if interrupted() {
        return Err("interrupted".into());
    }
    if !ok {
        return Err("tests failed".into());
    }
    if no_compat {
        eprintln!("xtask: WARNING: --no-compat: the seed Electron client's compatibility check was SKIPPED; the server's wire compatibility is not checked by this run");
    } else {
        eprintln!("xtask: seed client compatibility check…");
        compat::run(&url)?;
    }
    eprintln!("xtask: packages…");
    package::run(&["--check".to_owned()])?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// Clippy with warnings as errors: among others it enforces `clippy.toml`'s
/// rule that time and randomness reach the logic only through the seams.
fn clippy() -> Result<(), String> {
    let has_clippy = || {
        Command::new("cargo")
            .args(["clippy", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_clippy() {
        let _ = Command::new("rustup")
            .args(["component", "add", "clippy"])
            .status();
    }
    if !has_clippy() {
        eprintln!("xtask: WARNING: clippy is not installed (rustup component add clippy); lints not checked");
        return Ok(());
    }
    eprintln!("xtask: clippy (warnings are errors)…");
    let ok = run_status(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    if ok {
        Ok(())
    } else {
        Err("clippy found problems (see above)".into())
    }
}

fn e2e(extra: &[String]) -> Result<(), String> {
    setup::ensure_packages(setup::Needs::Test)?;
    browser::ensure()?;
    if !run_status(cargo().args([
        "build",
        "--locked",
        "-p",
        "propass-server",
        "--bin",
        "propass-server",
    ]))? {
        return Err("build failed".into());
    }
    let (_cluster, url) = database(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--locked", "-p", "propass-agent", "--test", "e2e"])
        .args(extra)
        .env("DATABASE_URL", &url);
    if !run_status(&mut cmd)? || interrupted() {
        return Err("end-to-end tests failed".into());
    }
    Ok(())
}

fn db() -> Result<(), String> {
    setup::ensure_packages(setup::Needs::Build)?;
    let cluster = Cluster::start(true)?;
    println!("DATABASE_URL={}", cluster.url());
    println!("{PG_CA_ENV}={}", cluster.ca_file().display());
    eprintln!("xtask: PostgreSQL is running; Ctrl-C stops and removes it");
    while !interrupted() {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Builds `propass-server` and `propass-agent` in release mode.
pub(crate) fn build_release_binaries() -> Result<(), String> {
    eprintln!("xtask: building propass-server, propass-agent and the PN532 emulator (release)…");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--locked",
        "--release",
        "--bin",
        "propass-server",
        "--bin",
        "propass-agent",
    ])
    .args([
        "-p",
        "propass-server",
        "-p",
        "propass-agent",
        "-p",
        "propass-nfc",
    ])
    .args([
        "--example",
        "pn532-emulator",
        "--features",
        "propass-nfc/emulator",
    ]);
    if !run_status(&mut cmd)? {
        return Err("build failed".into());
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<(), String> {
    let (package, example) = match args.first().map(String::as_str) {
        Some("push") => ("propass-server", "bench_push"),
        Some("agent") => ("propass-agent", "bench_agent"),
        Some("ledger") => ("propass-server", "bench_ledger"),
        Some("ws") => ("propass-server", "bench_ws"),
        Some("fleet") => ("propass-server", "bench_fleet"),
        _ => return Err("usage: cargo xtask bench push [--fleet] [--kiosks N] [--batches N] [--batch-size N] [--clients N] [--spread]\n       cargo xtask bench agent [--ops N] [--history N] [--backlog N]\n       cargo xtask bench ledger [--copies N] [--kiosks N] [--samples N]\n       cargo xtask bench ws [--kiosks N] [--events N] [--broadcasts N]\n       cargo xtask bench fleet [--kiosks N] [--clients N] [--every SECS] [--before SECS] [--outage SECS] [--reconnect-max-ms N]".into()),
    };
    run_example(package, example, &args[1..], "benchmark")
}

/// Builds the release binaries and `example` of `package`, then runs it
/// with `args` against a throwaway cluster, the binaries named in its
/// environment.
fn run_example(package: &str, example: &str, args: &[String], what: &str) -> Result<(), String> {
    setup::ensure_packages(setup::Needs::Bench)?;
    build_release_binaries()?;
    if !run_status(cargo().args([
        "build",
        "--locked",
        "--release",
        "-p",
        package,
        "--example",
        example,
    ]))? {
        return Err("build failed".into());
    }
    let (cluster, url) = database(true)?;
    let mut cmd = Command::new(sys::target_bin("release/examples", example));
    if let Some(c) = &cluster {
        // The chaos run restarts PostgreSQL with it: one argument per line.
        cmd.env("PROPASS_PG_RESTART", c.restart_command().join("\n"));
    }
    if let Some(bin) = pg::find_bin_dir() {
        cmd.env("PROPASS_PG_BIN", bin);
    }
    cmd.args(args)
        .current_dir(sys::root())
        .env("DATABASE_URL", &url)
        .env(
            "PROPASS_SERVER_BIN",
            sys::target_bin("release", "propass-server"),
        )
        .env(
            "PROPASS_AGENT_BIN",
            sys::target_bin("release", "propass-agent"),
        );
    if !run_status(&mut cmd)? {
        return Err(format!("{what} failed"));
    }
    Ok(())
}
