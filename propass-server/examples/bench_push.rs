//! `cargo xtask bench push`: many concurrent simulated kiosks push batches of
//! copies to the real server binary; then the same rows are inserted straight
//! into PostgreSQL with batched SQL, on as many connections, as the raw
//! ceiling. Prints copies/s, p50/p99 push latency and the ratio.
//!
//! A second ceiling is pgbench's: the same rows inserted and their client's
//! quota charged, one transaction per batch, on the same schema and cluster
//! (fleet shape only). `--fleet` is the fleet-shaped run: 64
//! kiosks, 100 clients, batches of 100.
//!
//! Options: `--kiosks N` (32), `--batches N` per kiosk (20), `--batch-size N` (100),
//! `--clients N` (100), `--spread` (worst case: every copy of a batch for a
//! different client, so that every push locks every quota row; by default a
//! kiosk copies the badges of one client, the kiosk at that client's site),
//! `--fleet`. Needs `DATABASE_URL` (a superuser URL),
//! `PROPASS_SERVER_BIN` and `PROPASS_PG_BIN` (set by xtask).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

#[path = "common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use propass_protocol::{PushResponse, PushStatus, Role};
use propass_server::db;
use propass_test_support::{
    cpu_seconds, free_port, machine_busy_seconds, percentile, ProcessGuard, TestDatabase,
};
use serde_json::{json, Value};

struct Opts {
    kiosks: usize,
    batches: usize,
    batch_size: usize,
    clients: usize,
    spread: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        kiosks: 32,
        batches: 20,
        batch_size: 100,
        clients: 100,
        spread: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (flag, v) in common::flags(&args, &["--spread", "--fleet"])? {
        let v = v as usize;
        match flag.as_str() {
            "--spread" => o.spread = true,
            "--fleet" => (o.kiosks, o.clients, o.batch_size) = (64, 100, 100),
            "--kiosks" => o.kiosks = v,
            "--batches" => o.batches = v,
            "--batch-size" => o.batch_size = v,
            "--clients" => o.clients = v,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// The clients, and the kiosks registered ahead (active, serving every client).
async fn seed(
    url: &str,
    clients: usize,
    kiosks: usize,
    quota_each: i64,
) -> Result<Vec<i64>, String> {
    let mut c = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    for i in 0..clients {
        ids.push(
            db::clients::create(&mut c, &format!("Bench client {i}"), quota_each, false)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for k in 0..kiosks {
        let device =
            propass_protocol::DeviceId::parse(&format!("BENCH-{k}")).map_err(|e| e.to_string())?;
        db::devices::register(&mut c, &device, None, &ids)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(ids)
}

/// A fresh database for a ceiling: the clients (ids 1..=clients), and the
/// kiosks' device rows the ledger's foreign key needs.
async fn ceiling_database(
    base: &str,
    prefix: &str,
    o: &Opts,
) -> Result<(TestDatabase, Vec<i64>), String> {
    let database = common::fresh_database(base, prefix).await?;
    let url = database.url().to_owned();
    let clients = seed(&url, o.clients, 0, 0).await?;
    let mut c = AsyncPgConnection::establish(&url)
        .await
        .map_err(|e| e.to_string())?;
    let devices: Vec<String> = (0..o.kiosks).map(|k| format!("BENCH-{k}")).collect();
    diesel::sql_query("INSERT INTO devices (device_id) SELECT unnest($1::text[])")
        .bind::<Array<Text>, _>(&devices)
        .execute(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok((database, clients))
}

/// Which client pays for copy `i` of batch `b` of kiosk `k`.
fn client_of(spread: bool, clients: &[i64], k: usize, b: usize, i: usize) -> i64 {
    if spread {
        clients[(k * 7 + b * 13 + i) % clients.len()]
    } else {
        clients[k % clients.len()]
    }
}

fn uid(k: usize, b: usize, i: usize) -> String {
    format!("04{:06X}{:06X}", k & 0xFFFFFF, (b * 4096 + i) & 0xFFFFFF)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let o = parse_opts()?;
    let base = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (run through cargo xtask bench push)")?;
    let server_bin =
        std::env::var("PROPASS_SERVER_BIN").map_err(|_| "PROPASS_SERVER_BIN is not set")?;
    let total = o.kiosks * o.batches * o.batch_size;
    let connections = o.kiosks.min(16);
    println!(
        "bench push: {} kiosks × {} batches × {} copies = {total} copies over {} clients ({}); {connections} database connections",
        o.kiosks, o.batches, o.batch_size, o.clients,
        if o.spread { "every copy of a batch for another client" } else { "each kiosk serves one client" }
    );

    // --- the real server -------------------------------------------------
    let server_db = common::fresh_database(&base, "propass_bench_server").await?;
    let server_url = server_db.url().to_owned();
    // Enough for any client to pay for every copy: no overdraft to flag
    // (the ceilings flag none).
    let client_ids = seed(&server_url, o.clients, o.kiosks, total as i64).await?;
    {
        let mut c = AsyncPgConnection::establish(&server_url)
            .await
            .map_err(|e| e.to_string())?;
        let hash = propass_server::auth::password::hash_password("bench-pass")?;
        db::users::create(&mut c, "bench", &hash, Role::Kiosk)
            .await
            .map_err(|e| e.to_string())?;
    }
    let port = free_port();
    let mut server = ProcessGuard::spawn(
        Command::new(&server_bin)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &server_url)
            .env("PROPASS_JWT_SECRET", common::SECRET)
            .env("PROPASS_DB_POOL_SIZE", connections.to_string())
            .env(
                "PROPASS_MAX_BATCH_ITEMS",
                (o.batch_size.max(5000)).to_string(),
            )
            .env("PROPASS_LOG", "warn")
            // A benchmark pushes far more than a kiosk: limits too high to
            // refuse, but counted as in production.
            .env("PROPASS_DEVICE_PUSHES_PER_MINUTE", "1000000000")
            .env("PROPASS_DEVICE_ITEMS_PER_DAY", "1000000000000")
            .stdin(Stdio::null()),
        &server_bin,
    )?;
    let base_http = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base_http}/health"))
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

    let mut tokens = Vec::new();
    for k in 0..o.kiosks {
        let res: Value = http
            .post(format!("{base_http}/api/auth/login"))
            .json(&json!({"username": "bench", "password": "bench-pass", "device_id": format!("BENCH-{k}")}))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        tokens.push(
            res["token"]
                .as_str()
                .ok_or(format!("login failed: {res}"))?
                .to_owned(),
        );
    }

    // The kiosks' request bodies are built before the clock starts, as
    // pgbench's script is: real kiosks build them on their own hardware, so
    // their CPU is not the server's to pay on these two cores.
    let bodies: Vec<Vec<Vec<u8>>> = (0..o.kiosks)
        .map(|k| {
            (0..o.batches)
                .map(|b| {
                    let queue: Vec<Value> = (0..o.batch_size)
                        .map(|i| {
                            let client = client_of(o.spread, &client_ids, k, b, i);
                            json!({"id": b * o.batch_size + i + 1, "op_id": uuid::Uuid::now_v7(), "type": "copy",
                                   "payload": {"client_id": client, "uid": uid(k, b, i)}})
                        })
                        .collect();
                    serde_json::to_vec(&json!({"device_id": format!("BENCH-{k}"), "queue": queue}))
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();

    let server_pid = server.child().id().to_string();
    let cpu_before = (
        cpu_seconds(&server_pid),
        cpu_seconds("self"),
        machine_busy_seconds(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (token, batches) in tokens.into_iter().zip(bodies) {
        let http = http.clone();
        let url = format!("{base_http}/api/sync/push");
        let size = o.batch_size;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(batches.len());
            for body in batches {
                let t = Instant::now();
                let res = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if res.status() != 200 {
                    return Err(format!("push answered {}", res.status()));
                }
                let bytes = res.bytes().await.map_err(|e| e.to_string())?;
                latencies.push(t.elapsed());
                let answer: PushResponse =
                    serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                let synced = answer
                    .data
                    .iter()
                    .filter(|r| r.status == PushStatus::Synced)
                    .count();
                if synced != size {
                    return Err(format!("only {synced} of {size} items synced"));
                }
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    let server_elapsed = started.elapsed();
    // Cores used during the run: the server, this process (the kiosks), and
    // the rest of the machine (PostgreSQL, mostly).
    let cores = |before: Option<f64>, after: Option<f64>| {
        Some((after? - before?) / server_elapsed.as_secs_f64())
    };
    let server_cores = cores(cpu_before.0, cpu_seconds(&server_pid));
    let kiosk_cores = cores(cpu_before.1, cpu_seconds("self"));
    let machine_cores = cores(cpu_before.2, machine_busy_seconds());
    server.terminate();
    latencies.sort();
    let server_rate = total as f64 / server_elapsed.as_secs_f64();

    let mut c = AsyncPgConnection::establish(&server_url)
        .await
        .map_err(|e| e.to_string())?;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let in_ledger = diesel::sql_query("SELECT count(*) AS n FROM copies")
        .get_result::<N>(&mut c)
        .await
        .map_err(|e| e.to_string())?
        .n;
    if in_ledger != total as i64 {
        return Err(format!("ledger holds {in_ledger} copies, expected {total}"));
    }

    // --- the raw ceiling: the same rows, batched SQL, straight in ---------
    let (raw_db, raw_clients) = ceiling_database(&base, "propass_bench_raw", &o).await?;
    let raw_url = raw_db.url().to_owned();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..connections {
        let url = raw_url.clone();
        let clients = raw_clients.clone();
        let (kiosks, batches, size, spread) = (o.kiosks, o.batches, o.batch_size, o.spread);
        tasks.push(tokio::spawn(async move {
            let mut c = AsyncPgConnection::establish(&url).await.map_err(|e| e.to_string())?;
            for k in (w..kiosks).step_by(connections) {
                for b in 0..batches {
                    let keys: Vec<String> = (0..size).map(|_| format!("op:{}", uuid::Uuid::now_v7())).collect();
                    let local: Vec<i64> = (0..size).map(|i| (b * size + i + 1) as i64).collect();
                    let cl: Vec<i64> = (0..size).map(|i| client_of(spread, &clients, k, b, i)).collect();
                    let uids: Vec<String> = (0..size).map(|i| uid(k, b, i)).collect();
                    diesel::sql_query(
                        "INSERT INTO copies (idempotency_key, device_id, local_id, client_id, uid, kind, occurred_at) \
                         SELECT k, $2, l, c, u, 'copy', now() FROM unnest($1::text[], $3::int8[], $4::int8[], $5::text[]) AS x(k, l, c, u) \
                         ON CONFLICT (idempotency_key) DO NOTHING",
                    )
                    .bind::<Array<Text>, _>(&keys)
                    .bind::<Text, _>(format!("BENCH-{k}"))
                    .bind::<Array<BigInt>, _>(&local)
                    .bind::<Array<BigInt>, _>(&cl)
                    .bind::<Array<Text>, _>(&uids)
                    .execute(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                }
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let raw_elapsed = started.elapsed();
    let raw_rate = total as f64 / raw_elapsed.as_secs_f64();

    drop(raw_db);
    let pgbench_rate = if o.spread {
        None
    } else {
        Some(pgbench(&base, &o, connections).await?)
    };

    println!();
    println!(
        "server   {server_rate:>10.0} copies/s   ({total} copies in {:.2} s, {} pushes)",
        server_elapsed.as_secs_f64(),
        latencies.len()
    );
    println!(
        "         push latency p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    );
    if let (Some(s), Some(k), Some(m)) = (server_cores, kiosk_cores, machine_cores) {
        println!(
            "         cores used: server {s:.2}, simulated kiosks {k:.2}, the rest (PostgreSQL) {:.2}",
            (m - s - k).max(0.0)
        );
    }
    println!("raw SQL  {raw_rate:>10.0} copies/s   (same rows, batched INSERT … ON CONFLICT, {connections} connections)");
    println!("ratio    {:.2} of the raw ceiling", server_rate / raw_rate);
    match pgbench_rate {
        Some(rate) => {
            println!("pgbench  {rate:>10.0} copies/s   (same rows + their quota update, one transaction per batch, {connections} clients)");
            println!("ratio    {:.2} of pgbench", server_rate / rate);
        }
        None => println!("pgbench  (fleet shape only: not run with --spread)"),
    }
    println!("ledger   {in_ledger} copies, each exactly once");
    Ok(())
}

/// pgbench's rate on a fresh database with the schema: per transaction, one
/// kiosk's batch of copies of its client inserted and that quota charged.
async fn pgbench(base: &str, o: &Opts, connections: usize) -> Result<f64, String> {
    let (database, _) = ceiling_database(base, "propass_bench_pgbench", o).await?;
    let url = database.url().to_owned();
    // Client ids are 1..=clients in a fresh database; kiosk k serves client
    // k % clients + 1, as in the server run, and each pgbench client plays
    // its own kiosks (as each kiosk pushes one batch at a time there).
    let script = format!(
        "\\set k (:client_id + {connections} * random(0, {rounds})) % {kiosks}\n\
         \\set c (:k % {clients}) + 1\n\
         BEGIN;\n\
         INSERT INTO copies (idempotency_key, device_id, local_id, client_id, uid, kind, occurred_at) \
         SELECT 'pgb:' || txid_current() || ':' || g, 'BENCH-' || :k, txid_current() * 10000 + g, :c, \
         '04' || lpad(to_hex(txid_current() * 10000 + g), 12, '0'), 'copy', now() FROM generate_series(1, {size}) g;\n\
         UPDATE quotas SET used = used + {size}, version = version + 1 WHERE client_id = :c;\n\
         END;\n",
        rounds = o.kiosks.div_ceil(connections) - 1,
        kiosks = o.kiosks,
        clients = o.clients,
        size = o.batch_size,
    );
    let path = std::env::temp_dir().join(format!("propass-bench-{}.pgbench", std::process::id()));
    std::fs::write(&path, script).map_err(|e| e.to_string())?;
    let bin = pgbench_bin();
    let per_client = (o.kiosks * o.batches).div_ceil(connections);
    let out = Command::new(&bin)
        .args(["-n", "-j", "2", "-f"])
        .arg(&path)
        .args([
            "-c",
            &connections.to_string(),
            "-t",
            &per_client.to_string(),
        ])
        .arg(&url)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let tps: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or(format!("no tps in pgbench's output: {text}"))?;
    Ok(tps * o.batch_size as f64)
}

/// pgbench beside the server binaries xtask found (which may be symlinks
/// into the version's directory), else on PATH.
fn pgbench_bin() -> std::path::PathBuf {
    let Ok(dir) = std::env::var("PROPASS_PG_BIN") else {
        return "pgbench".into();
    };
    let dir = std::path::Path::new(&dir);
    let beside_initdb = std::fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|initdb| Some(initdb.parent()?.join("pgbench")));
    [Some(dir.join("pgbench")), beside_initdb]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .unwrap_or_else(|| "pgbench".into())
}
