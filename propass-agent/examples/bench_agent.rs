//! `cargo xtask bench agent`:
//! 1. durable operations recorded per second through the agent's local API,
//!    against raw SQLite commits with the same settings (WAL,
//!    `synchronous=FULL`, the same table) on the same disk, in the same run;
//! 2. the same on a kiosk with a year of history (`--history` synced
//!    operations already in its queue), against the fresh kiosk of part 1:
//!    what a recording costs must not grow with every card ever made;
//! 3. the time the agent takes to drain a backlog of queued operations into
//!    the real server after it comes online.
//!
//! Options: `--ops N` (2000), `--history N` (1000000), `--backlog N` (100000). Needs `DATABASE_URL`,
//! `PROPASS_SERVER_BIN` and `PROPASS_AGENT_BIN` (set by xtask).

// A benchmark measures real time.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use propass_agent::store::{LeaseWord, ServerQuota, Store};
use propass_protocol::{ClientId, OpId};
use propass_test_support::{free_port, ProcessGuard, TempDir, TestDatabase};
use serde_json::{json, Value};

/// A directory under `target/`: on the disk the kiosk's state would be on,
/// where `$TMPDIR` may be memory and make fsync free.
fn bench_dir(tag: &str) -> Result<TempDir, String> {
    let target = std::env::current_dir()
        .map_err(|e| e.to_string())?
        .join("target");
    TempDir::new_in(&target, &format!("bench-{tag}")).map_err(|e| e.to_string())
}

fn opt(name: &str, default: usize) -> Result<usize, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .ok_or(format!("{name} needs a positive number")),
        None => Ok(default),
    }
}

async fn seed_quota(dir: &Path, remaining: i64) -> Result<Store, String> {
    let store = Store::open(&dir.join("agent.db")).map_err(|e| e.to_string())?;
    store
        .apply_pull(
            vec![ServerQuota {
                partial_copy: None,
                reader_keys: None,
                client: ClientId::new(1).unwrap(),
                remaining,
                name: None,
                version: None,
                lease: LeaseWord::NoLease,
            }],
            chrono::Utc::now(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(store)
}

fn start_agent(
    bin: &str,
    dir: &Path,
    server: Option<&str>,
) -> Result<(ProcessGuard, reqwest::Client), String> {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--state-dir"])
        .arg(dir)
        .arg("--socket")
        .arg(dir.join("agent.sock"));
    if let Some(s) = server {
        cmd.args(["--server", s]);
    }
    let child = ProcessGuard::spawn(
        cmd.env("PROPASS_LOG", "warn")
            .env("PROPASS_RECONNECT_MAX_MS", "200")
            .env_remove("PROPASS_AGENT_CONFIG")
            .stdin(Stdio::null()),
        bin,
    )?;
    let http = reqwest::Client::builder()
        .unix_socket(dir.join("agent.sock"))
        .build()
        .map_err(|e| e.to_string())?;
    Ok((child, http))
}

/// Records `ops` operations through the local API, one at a time like a
/// kiosk; answers the rate per second.
async fn record_ops(http: &reqwest::Client, ops: usize) -> Result<f64, String> {
    let t = Instant::now();
    for i in 0..ops {
        let res = http
            .post("http://agent/v1/operations")
            .json(&json!({"type": "copy", "client_id": 1, "uid": format!("04{i:08X}")}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if res.status() != 201 {
            return Err(format!("record answered {}", res.status()));
        }
    }
    Ok(ops as f64 / t.elapsed().as_secs_f64())
}

async fn wait_status(http: &reqwest::Client) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get("http://agent/v1/status").send().await {
            if let Ok(v) = r.json::<Value>().await {
                return Ok(v);
            }
        }
        if Instant::now() > deadline {
            return Err("agent did not answer".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    propass_agent::tls::install_crypto_provider();
    let ops = opt("--ops", 2000)?;
    let backlog = opt("--backlog", 100_000)?;
    let history = opt("--history", 1_000_000)?;
    let agent_bin = std::env::var("PROPASS_AGENT_BIN")
        .map_err(|_| "PROPASS_AGENT_BIN is not set (run cargo xtask bench agent)")?;
    let server_bin =
        std::env::var("PROPASS_SERVER_BIN").map_err(|_| "PROPASS_SERVER_BIN is not set")?;
    let base = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;

    // --- 1a. raw SQLite: one INSERT per committed transaction --------------
    let raw_dir = bench_dir("raw")?;
    let store = seed_quota(raw_dir.path(), i64::MAX / 2).await?;
    let raw = store
        .with(move |conn| {
            let t = Instant::now();
            for i in 0..ops {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                tx.execute(
                    "INSERT INTO queue (op_id, type, client_id, uid, occurred_at, created_at) VALUES (?1, 'copy', 1, ?2, ?3, ?3)",
                    rusqlite::params![OpId::new_v7().to_string(), format!("04{i:08X}"), chrono::Utc::now().to_rfc3339()],
                )?;
                tx.commit()?;
            }
            Ok(t.elapsed())
        })
        .await
        .map_err(|e| e.to_string())?;
    drop(store);
    let raw_rate = ops as f64 / raw.as_secs_f64();

    // --- 1b. the agent: POST /v1/operations, one at a time, like a kiosk ----
    let dir = bench_dir("agent")?;
    drop(seed_quota(dir.path(), i64::MAX / 2).await?);
    let (proc_, http) = start_agent(&agent_bin, dir.path(), None)?;
    wait_status(&http).await?;
    let agent_rate = record_ops(&http, ops).await?;
    drop(proc_);

    // --- 2. the same on a kiosk with a year of synced history --------------
    let old_dir = bench_dir("history")?;
    let store = seed_quota(old_dir.path(), i64::MAX / 2).await?;
    store
        .with(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO queue (op_id, type, client_id, uid, occurred_at, created_at, status, synced_at) \
                     VALUES (?1, 'copy', 1, ?2, ?3, ?3, 'synced', ?3)",
                )?;
                let at = chrono::Utc::now().to_rfc3339();
                for i in 0..history {
                    stmt.execute(rusqlite::params![OpId::new_v7().to_string(), format!("05{i:08X}"), at])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
    drop(store);
    let (proc_, http) = start_agent(&agent_bin, old_dir.path(), None)?;
    wait_status(&http).await?;
    let history_rate = record_ops(&http, ops).await?;
    drop(proc_);

    // --- 3. drain a backlog into the real server ----------------------------
    let database = TestDatabase::create_in(&base, "propass_bench_agent").await?;
    let db_url = database.url().to_owned();
    let cli = |args: &[&str], stdin: Option<&str>| -> Result<String, String> {
        let mut c = Command::new(&server_bin)
            .args(args)
            .env("DATABASE_URL", &db_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(s) = stdin {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(s.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            .ok_or(format!("propass-server {args:?} failed"))
    };
    let client: i64 = cli(
        &[
            "client",
            "add",
            "Backlog",
            "--quota",
            &(backlog * 2).to_string(),
        ],
        None,
    )?
    .trim()
    .parse()
    .map_err(|_| "bad client id")?;
    let code: serde_json::Value = serde_json::from_str(&cli(
        &[
            "device",
            "enroll",
            "--clients",
            &client.to_string(),
            "--json",
        ],
        None,
    )?)
    .map_err(|e| e.to_string())?;
    let port = free_port();
    let server_url = format!("http://127.0.0.1:{port}");
    let _server = ProcessGuard::spawn(
        Command::new(&server_bin)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &db_url)
            .env(
                "PROPASS_JWT_SECRET",
                "bench-secret-bench-secret-bench-secret-0123",
            )
            .env("PROPASS_LOG", "warn")
            // A 100k backlog in one go: no per-device limits.
            .env("PROPASS_DEVICE_PUSHES_PER_MINUTE", "0")
            .env("PROPASS_DEVICE_ITEMS_PER_DAY", "0")
            .stdin(Stdio::null()),
        &server_bin,
    )?;
    let probe = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe
        .get(format!("{server_url}/health"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            return Err("server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let drain_dir = bench_dir("drain")?;
    let store = Store::open(&drain_dir.path().join("agent.db")).map_err(|e| e.to_string())?;
    store
        .apply_pull(
            vec![ServerQuota {
                partial_copy: None,
                reader_keys: None,
                client: ClientId::new(client).unwrap(),
                remaining: (backlog * 2) as i64,
                name: None,
                version: None,
                lease: LeaseWord::NoLease,
            }],
            chrono::Utc::now(),
        )
        .await
        .map_err(|e| e.to_string())?;
    // The backlog, written straight into the queue in one transaction (a
    // shortcut: recording 100k operations one by one is part 1's job).
    store
        .with(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare("INSERT INTO queue (op_id, type, client_id, uid, occurred_at, created_at) VALUES (?1, 'copy', ?2, ?3, ?4, ?4)")?;
                let now = chrono::Utc::now().to_rfc3339();
                for i in 0..backlog {
                    stmt.execute(rusqlite::params![OpId::new_v7().to_string(), client, format!("04{i:08X}"), now])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
    drop(store);

    let (_agent, http) = start_agent(&agent_bin, drain_dir.path(), Some(&server_url))?;
    wait_status(&http).await?;
    let t = Instant::now();
    let res = http
        .post("http://agent/v1/enroll")
        .json(&json!({"code": code["code"]}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status() != 200 {
        return Err(format!("enrollment failed: {}", res.status()));
    }
    loop {
        let v = wait_status(&http).await?;
        if v["queue"]["pending"] == 0 {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "backlog not drained after 10 minutes: {}",
                v["queue"]
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = t.elapsed();
    let (pg2, conn2) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn2);
    let in_ledger: i64 = pg2
        .query_one("SELECT count(*) FROM copies", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);

    println!();
    println!("record   agent   {agent_rate:>8.0} durable operations/s   ({ops} POST /v1/operations, one at a time)");
    println!("         raw     {raw_rate:>8.0} commits/s               (same table, WAL + synchronous=FULL, same disk)");
    println!(
        "         ratio   {:.2} of the raw SQLite ceiling",
        agent_rate / raw_rate
    );
    println!("history  agent   {history_rate:>8.0} durable operations/s   (the same, on a kiosk with {history} synced operations)");
    println!(
        "         ratio   {:.2} of the fresh kiosk's rate",
        history_rate / agent_rate
    );
    println!(
        "drain    {backlog} queued operations into the real server in {:.2} s ({:.0} copies/s, enrollment included)",
        drain.as_secs_f64(),
        backlog as f64 / drain.as_secs_f64()
    );
    println!("ledger   {in_ledger} copies (expected {backlog})");
    if in_ledger != backlog as i64 {
        return Err("the ledger does not hold the backlog exactly once".into());
    }
    Ok(())
}
