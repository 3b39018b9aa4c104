//! `cargo xtask bench ledger`: the operator plane on a big ledger. Bulk-loads
//! `--copies` copies (10,000,000) over `--kiosks` kiosks (10,000, of which
//! the first thousand made copies) and a thousand clients, starts the real
//! server binary, and measures as the dashboard asks:
//! - p50/p99 of a ledger page at page 1 and at page 10,000, without a
//!   filter, with `overdraft=true` (a tenth of the rows) and with a time
//!   range (the middle half);
//! - p50/p99 of the fleet list;
//! - the CSV export of a million rows: rows/s and the server's resident
//!   memory growth, against a plain `psql … COPY … TO STDOUT` of the same
//!   rows in the same run (the ceiling).
//!
//! Needs `DATABASE_URL` (a superuser URL) and `PROPASS_SERVER_BIN`, set by
//! xtask, and `psql` (in `PROPASS_PG_BIN`, or on PATH).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use propass_protocol::Role;
use propass_server::db;
use propass_test_support::{free_port, percentile, rss_kib, ProcessGuard};
use serde_json::json;

#[path = "common/mod.rs"]
mod common;

const CLIENTS: i64 = 1000;
const ACTIVE_KIOSKS: i64 = 1000;
const PAGE: i64 = 50;
const DEEP_PAGE: i64 = 10_000;

/// What to measure, from the command line.
struct Options {
    copies: i64,
    kiosks: i64,
    samples: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        copies: 10_000_000,
        kiosks: 10_000,
        samples: 200,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (flag, v) in common::flags(&args, &[])? {
        let v = i64::try_from(v).map_err(|_| format!("{flag} is too large"))?;
        match flag.as_str() {
            "--copies" => o.copies = v,
            "--kiosks" => o.kiosks = v.max(ACTIVE_KIOSKS),
            "--samples" => o.samples = usize::try_from(v).unwrap_or(200),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

async fn connect(url: &str) -> Result<AsyncPgConnection, String> {
    AsyncPgConnection::establish(url)
        .await
        .map_err(|e| e.to_string())
}

/// Runs `sql` (several statements allowed; no parameters).
async fn exec(c: &mut AsyncPgConnection, sql: &str) -> Result<(), String> {
    c.batch_execute(sql)
        .await
        .map_err(|e| format!("{e}: {sql}"))
}

#[derive(diesel::QueryableByName)]
struct Def {
    #[diesel(sql_type = Text)]
    indexdef: String,
    #[diesel(sql_type = Text)]
    indexname: String,
}

/// Clients, kiosks with heartbeats, and `copies` copies, bulk-loaded: the
/// ledger's secondary indexes are dropped for the load and built again after
/// (as a restore would), two at a time on the machine's two cores.
async fn load(url: &str, copies: i64, kiosks: i64) -> Result<(), String> {
    let mut c = connect(url).await?;
    exec(&mut c, &format!(
        "INSERT INTO clients (id, name) SELECT i, 'Client ' || i FROM generate_series(1, {CLIENTS}) i; \
         INSERT INTO quotas (client_id, total) SELECT i, 1000000000 FROM generate_series(1, {CLIENTS}) i; \
         SELECT setval(pg_get_serial_sequence('clients', 'id'), {CLIENTS})"
    )).await?;
    exec(&mut c, &format!(
        "INSERT INTO devices (device_id, status, name, last_seen) \
         SELECT 'K' || i, 'active', 'Kiosk ' || i, now() - (i % 300) * interval '1 second' FROM generate_series(1, {kiosks}) i; \
         INSERT INTO device_clients (device_id, client_id) SELECT 'K' || i, 1 + i % {CLIENTS} FROM generate_series(1, {kiosks}) i; \
         INSERT INTO device_heartbeats (device_id, received_at, clock_skew_ms, agent_version, pending, failed, reader, blanks_written, blanks_failed) \
         SELECT 'K' || i, now() - (i % 300) * interval '1 second', 0, '0.1.0', i % 7, 0, 'ok', 100, i % 4 FROM generate_series(1, {kiosks}) i"
    )).await?;
    let defs: Vec<Def> = diesel::sql_query(
        "SELECT indexdef, indexname FROM pg_indexes WHERE tablename = 'copies' \
         AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'copies'::regclass)",
    )
    .load(&mut c)
    .await
    .map_err(|e| e.to_string())?;
    for d in &defs {
        exec(&mut c, &format!("DROP INDEX {}", d.indexname)).await?;
    }
    let started = Instant::now();
    let halves = [(1, copies / 2), (copies / 2 + 1, copies)];
    let mut tasks = Vec::new();
    for (from, to) in halves {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url).await?;
            // A copy a second, the newest now; every tenth an overdraft, every thousandth unverified.
            exec(&mut c, &format!(
                "INSERT INTO copies (idempotency_key, device_id, local_id, client_id, uid, kind, occurred_at, received_at, overdraft, unverified) \
                 SELECT 'dev:K' || (1 + i % {ACTIVE_KIOSKS}) || ':' || i, 'K' || (1 + i % {ACTIVE_KIOSKS}), i, 1 + i % {CLIENTS}, \
                        lpad(to_hex(i), 14, '0'), 'copy', now() - ({copies} - i) * interval '1 second', \
                        now() - ({copies} - i) * interval '1 second', i % 10 = 0, i % 1000 = 0 \
                 FROM generate_series({from}, {to}) i"
            )).await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    println!(
        "loaded   {copies} copies in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    for pair in defs.chunks(2) {
        let mut builds = Vec::new();
        for d in pair {
            let url = url.to_owned();
            let def = d.indexdef.clone();
            builds.push(tokio::spawn(async move {
                exec(&mut connect(&url).await?, &def).await
            }));
        }
        for b in builds {
            b.await.map_err(|e| e.to_string())??;
        }
    }
    exec(&mut c, "ANALYZE").await?;
    println!(
        "indexed  {} indexes in {:.0} s",
        defs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The cursor of the page after the first `skip` rows of `filter` (the
/// server's own encoding), read straight from the database.
async fn cursor_after(
    c: &mut AsyncPgConnection,
    filter: &str,
    skip: i64,
) -> Result<String, String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Timestamptz)]
        received_at: chrono::DateTime<chrono::Utc>,
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let r: Row = diesel::sql_query(format!(
        "SELECT received_at, id FROM copies WHERE {filter} ORDER BY received_at DESC, id DESC OFFSET {} LIMIT 1",
        skip - 1
    ))
    .get_result(c)
    .await
    .map_err(|e| e.to_string())?;
    Ok(db::ledger_view::Cursor {
        received_at: r.received_at,
        id: r.id,
    }
    .encode())
}

/// `n` timed GETs of `path`; each must answer 200. Sorted latencies.
async fn timed(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    path: &str,
    n: usize,
) -> Result<Vec<Duration>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let res = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if res.status() != 200 {
            return Err(format!("{path} answered {}", res.status()));
        }
        res.bytes().await.map_err(|e| e.to_string())?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Options {
        copies,
        kiosks,
        samples,
    } = options()?;
    let base = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (run through cargo xtask bench ledger)")?;
    let server_bin =
        std::env::var("PROPASS_SERVER_BIN").map_err(|_| "PROPASS_SERVER_BIN is not set")?;
    // The cluster's own psql when its directory has one, else the one on PATH.
    let psql = std::env::var_os("PROPASS_PG_BIN")
        .map(|d| std::path::PathBuf::from(d).join("psql"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into());
    if copies < (DEEP_PAGE * PAGE) * 10 {
        return Err(format!(
            "--copies must be at least {} for page {DEEP_PAGE} of the overdraft filter",
            DEEP_PAGE * PAGE * 10
        ));
    }
    println!("bench ledger: {copies} copies, {CLIENTS} clients, {kiosks} kiosks ({ACTIVE_KIOSKS} with copies); {samples} requests per figure");

    let database = common::fresh_database(&base, "propass_bench_ledger").await?;
    let url = database.url().to_owned();
    load(&url, copies, kiosks).await?;
    let mut c = connect(&url).await?;
    let hash = propass_server::auth::password::hash_password("bench-pass")?;
    db::users::create(&mut c, "bench", &hash, Role::Admin)
        .await
        .map_err(|e| e.to_string())?;

    let port = free_port();
    let mut server = ProcessGuard::spawn(
        Command::new(&server_bin)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &url)
            .env("PROPASS_JWT_SECRET", common::SECRET)
            .env("PROPASS_LOG", "warn")
            .stdin(Stdio::null()),
        &server_bin,
    )?;
    let pid = server.child().id();
    let http = reqwest::Client::new();
    let base_http = format!("http://127.0.0.1:{port}");
    common::wait_ok(
        &http,
        &format!("{base_http}/health"),
        Duration::from_secs(30),
    )
    .await?;
    let res = http
        .post(format!("{base_http}/api/admin/login"))
        .json(&json!({"username": "bench", "password": "bench-pass"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status() != 200 {
        return Err(format!("the bench user's login answered {}", res.status()));
    }
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .map_err(|e| e.to_string())?
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();

    let now = chrono::Utc::now();
    let from = now - chrono::Duration::seconds(copies * 3 / 4);
    let to = now - chrono::Duration::seconds(copies / 4);
    let range_sql = format!(
        "received_at >= '{}' AND received_at < '{}'",
        from.to_rfc3339(),
        to.to_rfc3339()
    );
    let range_query = format!(
        "from={}&to={}",
        from.to_rfc3339().replace('+', "%2B"),
        to.to_rfc3339().replace('+', "%2B")
    );
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>16}",
        "ledger page (50 rows)", "p50 ms", "p99 ms", "p50 vs page 1"
    );
    for (name, sql, query) in [
        ("no filter", "true".to_owned(), String::new()),
        (
            "overdraft=true",
            "overdraft".to_owned(),
            "overdraft=true".to_owned(),
        ),
        ("time range (middle half)", range_sql, range_query),
    ] {
        let first = timed(
            &http,
            &base_http,
            &cookie,
            &format!("/api/admin/copies?limit={PAGE}&{query}"),
            samples,
        )
        .await?;
        let cursor = cursor_after(&mut c, &sql, (DEEP_PAGE - 1) * PAGE).await?;
        let deep = timed(
            &http,
            &base_http,
            &cookie,
            &format!("/api/admin/copies?limit={PAGE}&{query}&cursor={cursor}"),
            samples,
        )
        .await?;
        let p1 = percentile(&first, 0.5);
        println!(
            "{:<34} {:>10.2} {:>10.2}",
            format!("{name}, page 1"),
            ms(p1),
            ms(percentile(&first, 0.99))
        );
        println!(
            "{:<34} {:>10.2} {:>10.2} {:>15.2}x",
            format!("{name}, page {DEEP_PAGE}"),
            ms(percentile(&deep, 0.5)),
            ms(percentile(&deep, 0.99)),
            percentile(&deep, 0.5).as_secs_f64() / p1.as_secs_f64()
        );
    }
    let fleet = timed(
        &http,
        &base_http,
        &cookie,
        "/api/admin/devices",
        samples.min(20),
    )
    .await?;
    println!(
        "{:<34} {:>10.2} {:>10.2}",
        format!("fleet list ({kiosks} kiosks)"),
        ms(percentile(&fleet, 0.5)),
        ms(percentile(&fleet, 0.99))
    );

    // --- CSV export of a million rows, against psql's COPY -----------------
    let rows = copies / 10;
    let before = rss_kib(pid).unwrap_or(0);
    let mut peak = before;
    let started = Instant::now();
    let mut res = http
        .get(format!("{base_http}/api/admin/copies.csv?overdraft=true"))
        .header("cookie", &cookie)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = 0usize;
    while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
        lines += chunk.iter().filter(|b| **b == b'\n').count();
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    }
    let export = started.elapsed();
    if i64::try_from(lines).ok() != Some(rows + 1) {
        return Err(format!(
            "the export has {lines} lines, expected {} (header and rows)",
            rows + 1
        ));
    }
    let started = Instant::now();
    let out = Command::new(&psql)
        .args([&url, "-q", "-c", "COPY (SELECT c.id, c.received_at, c.occurred_at, c.device_id, c.client_id, c.kind, c.uid, c.overdraft, c.unverified, \
                EXISTS (SELECT 1 FROM copy_voids v WHERE v.copy_id = c.id) FROM copies c WHERE overdraft ORDER BY received_at DESC, id DESC) TO STDOUT WITH CSV HEADER"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", psql.display()))?;
    let ceiling = started.elapsed();
    let psql_lines = out.stdout.iter().filter(|b| **b == b'\n').count();
    if psql_lines != lines {
        return Err(format!(
            "psql copied {psql_lines} lines, the server {lines}"
        ));
    }
    server.terminate();
    #[allow(clippy::cast_precision_loss)]
    let (server_rate, psql_rate) = (
        rows as f64 / export.as_secs_f64(),
        rows as f64 / ceiling.as_secs_f64(),
    );
    println!();
    println!("CSV export  server {server_rate:>10.0} rows/s   ({rows} rows in {:.1} s; server memory grew {} MiB)", export.as_secs_f64(), peak.saturating_sub(before) / 1024);
    println!("            psql   {psql_rate:>10.0} rows/s   (COPY … TO STDOUT of the same rows)");
    println!(
        "            ratio  {:.2} of the ceiling",
        server_rate / psql_rate
    );
    Ok(())
}
