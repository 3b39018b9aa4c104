//! `cargo xtask bench fleet`: two server instances behind the shipped HAProxy
//! config, and thousands of simulated kiosks (the real protocol, each with
//! its own device token) that keep a WebSocket open and record copies at a
//! kiosk's pace, pushing them as our agent does: at once, in batches of up to
//! 100. Pushes and socket reconnects both back off as the agent does (full
//! jitter, capped at `reconnect_max_ms`, `Retry-After` honoured). Then both
//! instances stop for a minute while the kiosks keep recording, and start
//! again. Prints the time until every socket is back and until every backlog
//! recorded before the restart is in the ledger, push latency and error rate
//! during the storm, the upgrade attempts it took, and checks that every copy
//! recorded is in the ledger exactly once.
//!
//! Options: `--kiosks N` (2000), `--clients N` (200), `--every SECS` between
//! a kiosk's copies (10), `--before SECS` of normal running (20),
//! `--outage SECS` (60), `--reconnect-max-ms N` (30000). Needs
//! `DATABASE_URL` (a superuser URL), `PROPASS_SERVER_BIN` (set by xtask) and
//! haproxy on PATH.
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

#[path = "common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use propass_test_support::{free_port, haproxy_config, percentile, ProcessGuard, TempDir};
use serde_json::{json, Value};

const BATCH: usize = 100;

struct Opts {
    kiosks: usize,
    clients: usize,
    every: Duration,
    before: Duration,
    outage: Duration,
    reconnect_max: Duration,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        kiosks: 2000,
        clients: 200,
        every: Duration::from_secs(10),
        before: Duration::from_secs(20),
        outage: Duration::from_secs(60),
        reconnect_max: Duration::from_secs(30),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (flag, v) in common::flags(&args, &[])? {
        match flag.as_str() {
            "--kiosks" => o.kiosks = v as usize,
            "--clients" => o.clients = v as usize,
            "--every" => o.every = Duration::from_secs(v),
            "--before" => o.before = Duration::from_secs(v),
            "--outage" => o.outage = Duration::from_secs(v),
            "--reconnect-max-ms" => o.reconnect_max = Duration::from_millis(v),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// One push as a kiosk saw it.
struct Sample {
    at: Instant,
    latency: Duration,
    /// HTTP status; 0 when no answer came.
    status: u16,
    /// The answer asked to wait (`Retry-After`).
    told_to_wait: bool,
}

/// One WebSocket upgrade a kiosk attempted.
struct Upgrade {
    at: Instant,
    /// 101 when the socket opened; 0 when no answer came.
    status: u16,
    /// Refused with a `Retry-After` (HAProxy with no instance up, a server
    /// shedding load or over its socket cap).
    told_to_wait: bool,
}

/// `upgrades` in a line: how many, and how each refusal was answered.
fn describe(upgrades: &[&Upgrade]) -> String {
    let mut refused = std::collections::BTreeMap::<(u16, bool), usize>::new();
    for u in upgrades.iter().filter(|u| u.status != 101) {
        *refused.entry((u.status, u.told_to_wait)).or_default() += 1;
    }
    let refused: Vec<String> = refused
        .into_iter()
        .map(|((status, wait), n)| match (status, wait) {
            (0, _) => format!("{n} unanswered"),
            (s, true) => format!("{n} × {s} + Retry-After"),
            (s, false) => format!("{n} × {s}"),
        })
        .collect();
    format!(
        "{} upgrades tried, {} opened; refused: {}",
        upgrades.len(),
        upgrades.iter().filter(|u| u.status == 101).count(),
        if refused.is_empty() {
            "none".into()
        } else {
            refused.join(", ")
        }
    )
}

/// What the kiosks share with the conductor.
struct Shared {
    samples: Mutex<Vec<Sample>>,
    upgrades: Mutex<Vec<Upgrade>>,
    /// Per kiosk: its WebSocket is open.
    socket_open: Vec<AtomicBool>,
    recorded: AtomicU64,
    /// Per kiosk: when (ms since `epoch`) its oldest unsynced copy was
    /// recorded; `u64::MAX` when it has none.
    oldest_pending: Vec<AtomicU64>,
    recording: AtomicBool,
    epoch: Instant,
}

struct Item {
    id: u64,
    op_id: uuid::Uuid,
    recorded_ms: u64,
}

fn random_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0
}

/// The agent's backoff: uniform below a ceiling that doubles from 100 ms per
/// failure, capped.
fn backoff(failures: u32, cap: Duration) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << failures.min(16))
        .min(cap)
        .mul_f64(random_unit())
}

/// A kiosk's WebSocket: open it, read until it drops, open it again after
/// the agent's backoff (reset only by a session that lasted 10 s, as the
/// agent does) or the `Retry-After` a refusal named; until aborted.
async fn socket(k: usize, url: String, reconnect_max: Duration, shared: Arc<Shared>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Error;
    let mut failures: u32 = 0;
    loop {
        let at = Instant::now();
        let wait = match tokio_tungstenite::connect_async(&url).await {
            Ok((mut ws, _)) => {
                shared.socket_open[k].store(true, Ordering::Relaxed);
                shared.upgrade(at, 101, false);
                // Reading answers the server's pings.
                while let Some(Ok(_)) = ws.next().await {}
                shared.socket_open[k].store(false, Ordering::Relaxed);
                if at.elapsed() >= Duration::from_secs(10) {
                    failures = 0;
                }
                None
            }
            Err(Error::Http(answer)) => {
                let retry_after = answer
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                shared.upgrade(at, answer.status().as_u16(), retry_after.is_some());
                retry_after.map(|s| Duration::from_secs(s.clamp(1, 3600)))
            }
            Err(_) => {
                shared.upgrade(at, 0, false);
                None
            }
        };
        let wait = wait.unwrap_or_else(|| backoff(failures, reconnect_max));
        failures = failures.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

/// A kiosk: records a copy every `every` (from a random phase), pushes
/// whatever is pending as soon as it may, until told to stop recording and
/// everything it recorded is acknowledged.
#[allow(clippy::too_many_arguments)]
async fn kiosk(
    k: usize,
    token: String,
    client: i64,
    url: String,
    http: reqwest::Client,
    every: Duration,
    reconnect_max: Duration,
    shared: Arc<Shared>,
) {
    let device = format!("BF-{k}");
    let mut queue: VecDeque<Item> = VecDeque::new();
    let mut next_copy = Instant::now() + every.mul_f64(random_unit());
    let mut next_push = Instant::now();
    let mut failures: u32 = 0;
    let mut local_id = 0u64;
    loop {
        let now = Instant::now();
        let recording = shared.recording.load(Ordering::Relaxed);
        if recording && now >= next_copy {
            local_id += 1;
            queue.push_back(Item {
                id: local_id,
                op_id: uuid::Uuid::now_v7(),
                recorded_ms: now.duration_since(shared.epoch).as_millis() as u64,
            });
            shared.recorded.fetch_add(1, Ordering::Relaxed);
            next_copy += every;
        }
        shared.oldest_pending[k].store(
            queue.front().map_or(u64::MAX, |i| i.recorded_ms),
            Ordering::Relaxed,
        );
        if !recording && queue.is_empty() {
            return;
        }
        if !queue.is_empty() && now >= next_push {
            let items: Vec<Value> = queue
                .iter()
                .take(BATCH)
                .map(|i| {
                    json!({"id": i.id, "op_id": i.op_id, "type": "copy",
                           "payload": {"client_id": client, "uid": format!("04{:06X}{:06X}", k, i.id)}})
                })
                .collect();
            let body = json!({"device_id": device, "queue": items});
            let t = Instant::now();
            let answer = http.post(&url).bearer_auth(&token).json(&body).send().await;
            let (status, retry_after, acked) = match answer {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let retry_after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let acked: Vec<uuid::Uuid> = if status == 200 {
                        res.json::<Value>()
                            .await
                            .ok()
                            .and_then(|v| {
                                v["data"].as_array().map(|d| {
                                    d.iter()
                                        .filter(|r| r["status"] == "synced")
                                        .filter_map(|r| r["op_id"].as_str()?.parse().ok())
                                        .collect()
                                })
                            })
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    (status, retry_after, acked)
                }
                Err(_) => (0, None, Vec::new()),
            };
            shared
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Sample {
                    at: t,
                    latency: t.elapsed(),
                    status,
                    told_to_wait: retry_after.is_some(),
                });
            if status == 200 {
                queue.retain(|i| !acked.contains(&i.op_id));
                failures = 0;
                next_push = Instant::now();
            } else if let Some(secs) = retry_after {
                next_push = Instant::now() + Duration::from_secs(secs.clamp(1, 3600));
            } else {
                failures = failures.saturating_add(1);
                next_push = Instant::now() + backoff(failures, reconnect_max);
            }
            shared.oldest_pending[k].store(
                queue.front().map_or(u64::MAX, |i| i.recorded_ms),
                Ordering::Relaxed,
            );
            continue;
        }
        let mut wake = now + Duration::from_millis(250);
        if recording {
            wake = wake.min(next_copy);
        }
        if !queue.is_empty() {
            wake = wake.min(next_push);
        }
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// Both instances, on fixed ports (the balancer's backends).
fn start_instances(
    server_bin: &str,
    url: &str,
    ports: &[u16],
) -> Result<Vec<ProcessGuard>, String> {
    ports
        .iter()
        .map(|port| {
            ProcessGuard::spawn(
                Command::new(server_bin)
                    .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
                    .env("DATABASE_URL", url)
                    .env("PROPASS_JWT_SECRET", common::SECRET)
                    .env("PROPASS_LOG", "error")
                    .env("PROPASS_DB_POOL_SIZE", "16")
                    .stdin(Stdio::null()),
                server_bin,
            )
        })
        .collect()
}

/// The clients, and the kiosks enrolled and active, kiosk k serving client
/// k % clients + 1.
async fn seed(url: &str, clients: usize, kiosks: usize) -> Result<(), String> {
    use diesel_async::RunQueryDsl;
    let mut c = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| e.to_string())?;
    for sql in [
        "INSERT INTO clients (name) SELECT 'Client ' || g FROM generate_series(1, $1) g",
        "INSERT INTO quotas (client_id, total) SELECT id, 100000000 FROM clients",
        "INSERT INTO devices (device_id, status, enrolled) \
         SELECT 'BF-' || g, 'active', TRUE FROM generate_series(0, $2 - 1) g",
        "INSERT INTO device_clients (device_id, client_id) \
         SELECT 'BF-' || g, g % $1 + 1 FROM generate_series(0, $2 - 1) g",
    ] {
        diesel::sql_query(sql)
            .bind::<BigInt, _>(clients as i64)
            .bind::<BigInt, _>(kiosks as i64)
            .execute(&mut c)
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
    }
    Ok(())
}

impl Shared {
    fn upgrade(&self, at: Instant, status: u16, told_to_wait: bool) {
        self.upgrades
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Upgrade {
                at,
                status,
                told_to_wait,
            });
    }

    fn sockets_open(&self) -> usize {
        self.socket_open
            .iter()
            .filter(|o| o.load(Ordering::Relaxed))
            .count()
    }
}

/// Waits until every kiosk's socket is open; how long that took.
async fn all_sockets_open(shared: &Shared, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let open = shared.sockets_open();
        if open == shared.socket_open.len() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!(
                "only {open} of {} sockets open after {} s",
                shared.socket_open.len(),
                within.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(diesel::QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = BigInt)]
    ops: i64,
}

/// The ledger's rows and distinct operations.
async fn ledger_counts(url: &str) -> Result<Counts, String> {
    use diesel_async::RunQueryDsl;
    let mut c = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| e.to_string())?;
    diesel::sql_query("SELECT count(*) AS rows, count(DISTINCT op_id) AS ops FROM copies")
        .get_result(&mut c)
        .await
        .map_err(|e| e.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let o = parse_opts()?;
    let base = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (run through cargo xtask bench fleet)")?;
    let server_bin =
        std::env::var("PROPASS_SERVER_BIN").map_err(|_| "PROPASS_SERVER_BIN is not set")?;
    println!(
        "bench fleet: {} kiosks, a copy every {} s each, {} clients; two instances behind haproxy; {} s running, {} s outage",
        o.kiosks,
        o.every.as_secs(),
        o.clients,
        o.before.as_secs(),
        o.outage.as_secs()
    );

    let database = common::fresh_database(&base, "propass_bench_fleet").await?;
    let url = database.url().to_owned();
    seed(&url, o.clients, o.kiosks).await?;

    let ports = [free_port(), free_port()];
    let mut instances = start_instances(&server_bin, &url, &ports)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    for p in ports {
        common::wait_ok(
            &http,
            &format!("http://127.0.0.1:{p}/health"),
            Duration::from_secs(60),
        )
        .await?;
    }
    let lb_port = free_port();
    let dir = TempDir::new("propass-bench-haproxy").map_err(|e| e.to_string())?;
    let cfg = dir.path().join("haproxy.cfg");
    let shipped = std::fs::read_to_string("deploy/haproxy.cfg")
        .map_err(|e| format!("deploy/haproxy.cfg (run from the workspace): {e}"))?;
    let servers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    std::fs::write(&cfg, haproxy_config(&shipped, lb_port, None, &servers))
        .map_err(|e| e.to_string())?;
    let _haproxy = ProcessGuard::spawn(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "haproxy",
    )?;
    let lb = format!("http://127.0.0.1:{lb_port}");
    common::wait_ok(&http, &format!("{lb}/health"), Duration::from_secs(30)).await?;

    let tokens = common::device_tokens((0..o.kiosks).map(|k| format!("BF-{k}")))?;
    let shared = Arc::new(Shared {
        samples: Mutex::new(Vec::new()),
        upgrades: Mutex::new(Vec::new()),
        socket_open: (0..o.kiosks).map(|_| AtomicBool::new(false)).collect(),
        recorded: AtomicU64::new(0),
        oldest_pending: (0..o.kiosks).map(|_| AtomicU64::new(u64::MAX)).collect(),
        recording: AtomicBool::new(true),
        epoch: Instant::now(),
    });
    let mut kiosks = Vec::with_capacity(o.kiosks);
    let mut sockets = Vec::with_capacity(o.kiosks);
    for (k, token) in tokens.into_iter().enumerate() {
        sockets.push(tokio::spawn(socket(
            k,
            format!("ws://127.0.0.1:{lb_port}/ws?token={token}&device_id=BF-{k}"),
            o.reconnect_max,
            shared.clone(),
        )));
        kiosks.push(tokio::spawn(kiosk(
            k,
            token,
            (k % o.clients) as i64 + 1,
            format!("{lb}/api/sync/push"),
            http.clone(),
            o.every,
            o.reconnect_max,
            shared.clone(),
        )));
    }

    let opened = all_sockets_open(&shared, Duration::from_secs(120)).await?;
    {
        let upgrades = shared.upgrades.lock().unwrap_or_else(|p| p.into_inner());
        println!(
            "{} sockets open in {:.1} s (all starting at once): {}",
            o.kiosks,
            opened.as_secs_f64(),
            describe(&upgrades.iter().collect::<Vec<_>>())
        );
    }
    tokio::time::sleep(o.before.saturating_sub(opened)).await;
    println!("both instances stop");
    for i in &mut instances {
        i.terminate();
    }
    drop(instances);
    tokio::time::sleep(o.outage).await;
    let restarted = Instant::now();
    let restart_ms = restarted.duration_since(shared.epoch).as_millis() as u64;
    let _instances = start_instances(&server_bin, &url, &ports)?;
    println!("both instances start again");
    let deadline = restarted + Duration::from_secs(600);
    let mut sockets_back = None;
    let drained = loop {
        if sockets_back.is_none() && shared.sockets_open() == o.kiosks {
            sockets_back = Some(restarted.elapsed());
        }
        let behind = shared
            .oldest_pending
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) <= restart_ms)
            .count();
        if behind == 0 {
            break restarted.elapsed();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{behind} kiosks still hold copies from before the restart after 10 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sockets_back = match sockets_back {
        Some(t) => t,
        None => restarted.elapsed() + all_sockets_open(&shared, Duration::from_secs(600)).await?,
    };
    let storm_end = Instant::now();
    for s in &sockets {
        s.abort();
    }

    // Stop recording; everything recorded reaches the ledger.
    shared.recording.store(false, Ordering::Relaxed);
    for k in kiosks {
        tokio::time::timeout(Duration::from_secs(300), k)
            .await
            .map_err(|_| "a kiosk did not empty its queue within 5 minutes")?
            .map_err(|e| e.to_string())?;
    }
    let recorded = shared.recorded.load(Ordering::Relaxed);

    let counts = ledger_counts(&url).await?;

    let samples = shared
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect::<Vec<_>>();
    let window = |from: Instant, to: Instant| {
        let s: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .collect();
        let mut ok: Vec<Duration> = s
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.latency)
            .collect();
        ok.sort();
        let waited = s
            .iter()
            .filter(|s| s.status != 200 && s.told_to_wait)
            .count();
        let failed = s
            .iter()
            .filter(|s| s.status != 200 && !s.told_to_wait)
            .count();
        (s.len(), ok, waited, failed)
    };
    let upgrades = shared.upgrades.lock().unwrap_or_else(|p| p.into_inner());
    let outage = describe(
        &upgrades
            .iter()
            .filter(|u| u.at >= restarted - o.outage && u.at < restarted)
            .collect::<Vec<_>>(),
    );
    let storm = describe(
        &upgrades
            .iter()
            .filter(|u| u.at >= restarted && u.at < storm_end)
            .collect::<Vec<_>>(),
    );
    drop(upgrades);
    let (n_before, ok_before, _, failed_before) = window(shared.epoch, shared.epoch + o.before);
    let (n, ok, waited, failed) = window(restarted, storm_end);
    println!();
    println!(
        "before    {n_before} pushes, p50 {:.1} ms, p99 {:.1} ms, {failed_before} failed",
        ms(percentile(&ok_before, 0.5)),
        ms(percentile(&ok_before, 0.99))
    );
    println!(
        "storm     backlog from before the restart drained in {:.1} s (reconnect cap {} s)",
        drained.as_secs_f64(),
        o.reconnect_max.as_secs()
    );
    println!(
        "          {n} pushes: {} answered, p50 {:.1} ms, p99 {:.1} ms; {waited} told to wait (429/503 + Retry-After), {failed} failed ({:.1} %)",
        ok.len(),
        ms(percentile(&ok, 0.5)),
        ms(percentile(&ok, 0.99)),
        100.0 * failed as f64 / n.max(1) as f64
    );
    println!(
        "sockets   all {} back {:.1} s after the restart; during the outage {outage}; after it {storm}",
        o.kiosks,
        sockets_back.as_secs_f64(),
    );
    println!(
        "ledger    {} copies recorded by the kiosks, {} rows, {} distinct operations",
        recorded, counts.rows, counts.ops
    );
    if counts.rows != recorded as i64 || counts.ops != counts.rows {
        return Err("the ledger does not hold every copy exactly once".into());
    }
    println!("          every copy exactly once");
    Ok(())
}
