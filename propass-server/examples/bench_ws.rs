//! `cargo xtask bench ws`: N kiosk WebSockets (own device tokens) on the real
//! server binary, then the same N on a minimal actix-ws broadcaster run in
//! the same way, on the same machine, in the same run. Measures:
//!
//! - per-client events: a push for a client served by 10 kiosks, delivered
//!   (`quota_updated`) to those 10 — p50/p99 from the push to each delivery;
//! - the worst case: a push for a client every kiosk serves, delivered to
//!   all N — p50/p99, against the broadcaster sending one message to all N;
//! - resident memory per connection, of each server (measured over the
//!   sockets opened after a 5 % warm-up);
//! - every kiosk's heartbeat at once (as after a reconnect storm): the time
//!   from the first sent until all N are stored, against one upsert of the
//!   same N rows straight into PostgreSQL.
//!
//! Options: `--kiosks N` (10000), `--events N` per-client pushes (100),
//! `--broadcasts N` worst-case rounds (5). Needs `DATABASE_URL` (a superuser
//! URL) and `PROPASS_SERVER_BIN` (set by xtask). The process's open-file
//! limit is raised to its hard limit (each side holds N sockets).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

#[path = "common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use propass_test_support::{free_port, percentile, rss_kib, ProcessGuard};
use serde_json::json;
use tokio::sync::mpsc;

/// Kiosks per client for per-client events.
const PER_CLIENT: usize = 10;

struct Opts {
    kiosks: usize,
    events: usize,
    broadcasts: usize,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        kiosks: 10_000,
        events: 100,
        broadcasts: 5,
    };
    for (flag, v) in common::flags(args, &[])? {
        let v = v as usize;
        match flag.as_str() {
            "--kiosks" => o.kiosks = v.max(PER_CLIENT),
            "--events" => o.events = v,
            "--broadcasts" => o.broadcasts = v,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if <[String]>::first(&args).map(String::as_str) == Some("--serve-broadcaster") {
        let port: u16 = args
            .get(1)
            .and_then(|p| p.parse().ok())
            .ok_or("--serve-broadcaster PORT")?;
        return broadcaster::serve(port).map_err(|e| e.to_string());
    }
    raise_fd_limit();
    let o = parse_opts(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(bench(o))
}

/// Each side holds one socket per kiosk: the soft limit goes to the hard one
/// (the server, spawned from here, inherits it).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The minimal broadcaster: every socket in one list; `POST /broadcast`
/// sends the body to each.
mod broadcaster {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use futures_util::StreamExt;
    use std::sync::Mutex;

    type Sessions = web::Data<Mutex<Vec<actix_ws::Session>>>;

    async fn ws(
        req: HttpRequest,
        body: web::Payload,
        sessions: Sessions,
    ) -> actix_web::Result<HttpResponse> {
        let (res, session, mut stream) = actix_ws::handle(&req, body)?;
        sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session.clone());
        actix_web::rt::spawn(async move {
            let mut session = session;
            while let Some(Ok(msg)) = stream.next().await {
                if let actix_ws::Message::Ping(b) = msg {
                    let _ = session.pong(&b).await;
                }
            }
        });
        Ok(res)
    }

    async fn broadcast(body: String, sessions: Sessions) -> HttpResponse {
        let all = sessions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for mut s in all {
            let _ = s.text(body.clone()).await;
        }
        HttpResponse::Ok().finish()
    }

    pub fn serve(port: u16) -> std::io::Result<()> {
        actix_web::rt::System::new().block_on(async move {
            let sessions: Sessions = web::Data::new(Mutex::new(Vec::new()));
            HttpServer::new(move || {
                App::new()
                    .app_data(sessions.clone())
                    .route("/ws", web::get().to(ws))
                    .route("/broadcast", web::post().to(broadcast))
            })
            .bind(("127.0.0.1", port))?
            .run()
            .await
        })
    }
}

fn device(k: usize) -> String {
    format!("BW-{k}")
}

/// Clients `1..=kiosks/10` (kiosk k serves client k/10 + 1) and one more
/// that every kiosk serves; the kiosks enrolled and active.
async fn seed(url: &str, kiosks: usize) -> Result<i64, String> {
    let mut c = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| e.to_string())?;
    let clients = kiosks.div_ceil(PER_CLIENT);
    let statements = [
        "INSERT INTO clients (name) SELECT 'Client ' || g FROM generate_series(1, $1) g",
        "INSERT INTO clients (name) VALUES ('Everyone')",
        "INSERT INTO quotas (client_id, total) SELECT id, 1000000 FROM clients",
        "INSERT INTO devices (device_id, status, enrolled) \
         SELECT 'BW-' || g, 'active', TRUE FROM generate_series(0, $2 - 1) g",
        "INSERT INTO device_clients (device_id, client_id) \
         SELECT 'BW-' || g, g / 10 + 1 FROM generate_series(0, $2 - 1) g \
         UNION ALL SELECT 'BW-' || g, $1 + 1 FROM generate_series(0, $2 - 1) g",
    ];
    for sql in statements {
        diesel::sql_query(sql)
            .bind::<BigInt, _>(clients as i64)
            .bind::<BigInt, _>(kiosks as i64)
            .execute(&mut c)
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
    }
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let everyone: Id = diesel::sql_query("SELECT id FROM clients WHERE name = $1")
        .bind::<Text, _>("Everyone")
        .get_result(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok(everyone.id)
}

/// A message heard by kiosk `k`, when.
type Heard = (usize, Instant);

/// Sockets open to one server, each reporting on `tx` the text messages
/// containing `marker` it receives.
struct Fleet {
    tx: mpsc::UnboundedSender<Heard>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// What each kiosk sends on.
    sinks: Vec<SplitSink<Socket, Message>>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Message = tokio_tungstenite::tungstenite::Message;

impl Drop for Fleet {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// Opens sockets `range` to `url_of(k)`, 50 at a time, into `fleet`.
async fn connect_all(
    fleet: &mut Fleet,
    range: std::ops::Range<usize>,
    url_of: impl Fn(usize) -> String,
    marker: &'static str,
) -> Result<(), String> {
    let tx = fleet.tx.clone();
    let gate = Arc::new(tokio::sync::Semaphore::new(50));
    let mut connects = Vec::with_capacity(range.len());
    for k in range.clone() {
        let (url, gate) = (url_of(k), gate.clone());
        connects.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            // A server shedding load answers 503: come back, as agents do.
            for _ in 0..100 {
                match tokio_tungstenite::connect_async(&url).await {
                    Ok((ws, _)) => return Ok(ws),
                    Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(format!("kiosk {k}: {e}")),
                }
            }
            Err(format!("kiosk {k}: refused 100 times"))
        }));
    }
    for (k, c) in range.zip(connects) {
        let ws = c.await.map_err(|e| e.to_string())??;
        let tx = tx.clone();
        let (sink, mut stream) = ws.split();
        fleet.sinks.push(sink);
        fleet.readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                    if t.contains(marker) {
                        let _ = tx.send((k, Instant::now()));
                    }
                }
            }
        }));
    }
    Ok(())
}

/// Opens `n` sockets in two steps: a warm-up (the server's pools and
/// buffers grow), then the rest; answers the fleet, what it hears, and the
/// server's resident bytes per socket of the second step.
async fn open_fleet(
    n: usize,
    pid: u32,
    url_of: impl Fn(usize) -> String + Copy,
) -> Result<(Fleet, mpsc::UnboundedReceiver<Heard>, f64), String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut fleet = Fleet {
        tx,
        readers: Vec::with_capacity(n),
        sinks: Vec::with_capacity(n),
    };
    let warm = (n / 20).max(1);
    connect_all(&mut fleet, 0..warm, url_of, "quota_updated").await?;
    let before = rss_kib(pid).unwrap_or(0);
    connect_all(&mut fleet, warm..n, url_of, "quota_updated").await?;
    let grown = rss_kib(pid).unwrap_or(0).saturating_sub(before) * 1024;
    Ok((fleet, rx, grown as f64 / (n - warm).max(1) as f64))
}

/// Waits for `expected` deliveries (60 s at most); their latencies from `t0`.
async fn deliveries(
    rx: &mut mpsc::UnboundedReceiver<Heard>,
    expected: usize,
    t0: Instant,
) -> Result<Vec<Duration>, String> {
    let mut out = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((_, at))) => out.push(at.duration_since(t0)),
            Ok(None) => return Err("the sockets closed".into()),
            Err(_) => {
                return Err(format!(
                    "only {} of {expected} deliveries within 60 s",
                    out.len()
                ))
            }
        }
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Run {
    per_client: Vec<Duration>,
    everyone: Vec<Duration>,
    bytes_per_conn: f64,
    /// All heartbeats stored, and the same rows upserted straight in.
    heartbeats: Option<(Duration, Duration)>,
}

async fn bench(o: Opts) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (run through cargo xtask bench ws)")?;
    let server_bin =
        std::env::var("PROPASS_SERVER_BIN").map_err(|_| "PROPASS_SERVER_BIN is not set")?;
    println!(
        "bench ws: {} kiosk WebSockets; {} per-client pushes (10 kiosks each), {} pushes to all",
        o.kiosks, o.events, o.broadcasts
    );
    let ours = run_server(&o, &base, &server_bin).await?;
    let theirs = run_broadcaster(&o).await?;

    let (mut pc, mut ev, mut bc) = (ours.per_client, ours.everyone, theirs.everyone);
    pc.sort();
    ev.sort();
    bc.sort();
    println!();
    println!(
        "server       per-client event  p50 {:>7.1} ms  p99 {:>7.1} ms   ({} deliveries)",
        ms(percentile(&pc, 0.5)),
        ms(percentile(&pc, 0.99)),
        pc.len()
    );
    println!(
        "server       event to all {:>5}  p50 {:>7.1} ms  p99 {:>7.1} ms   ({} deliveries)",
        o.kiosks,
        ms(percentile(&ev, 0.5)),
        ms(percentile(&ev, 0.99)),
        ev.len()
    );
    println!(
        "broadcaster  message to all      p50 {:>7.1} ms  p99 {:>7.1} ms   ({} deliveries)",
        ms(percentile(&bc, 0.5)),
        ms(percentile(&bc, 0.99)),
        bc.len()
    );
    let p99 = |v: &[Duration]| percentile(v, 0.99).as_secs_f64();
    println!(
        "ratio        worst case p99 {:.2}× the broadcaster's; per-client p99 {:.3}× it",
        p99(&ev) / p99(&bc),
        p99(&pc) / p99(&bc)
    );
    println!(
        "memory       {:.1} KiB per connection (server), {:.1} KiB (broadcaster)",
        ours.bytes_per_conn / 1024.0,
        theirs.bytes_per_conn / 1024.0
    );
    if let Some((stored, ceiling)) = ours.heartbeats {
        println!(
            "heartbeats   {} at once, all stored in {:.0} ms; the same rows upserted straight in: {:.0} ms (ratio {:.2})",
            o.kiosks,
            ms(stored),
            ms(ceiling),
            ceiling.as_secs_f64() / stored.as_secs_f64()
        );
    }
    Ok(())
}

async fn run_server(o: &Opts, base: &str, server_bin: &str) -> Result<Run, String> {
    let database = common::fresh_database(base, "propass_bench_ws").await?;
    let url = database.url().to_owned();
    let everyone = seed(&url, o.kiosks).await?;
    let port = free_port();
    let mut server = ProcessGuard::spawn(
        Command::new(server_bin)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &url)
            .env("PROPASS_JWT_SECRET", common::SECRET)
            .env("PROPASS_LOG", "warn")
            .env("PROPASS_DEVICE_PUSHES_PER_MINUTE", "0")
            .stdin(Stdio::null()),
        server_bin,
    )?;
    let base_http = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    common::wait_ok(
        &http,
        &format!("{base_http}/health"),
        Duration::from_secs(30),
    )
    .await?;
    let pid = server.child().id();

    let tokens = common::device_tokens((0..o.kiosks).map(device))?;
    let started = Instant::now();
    let tokens = &tokens;
    let (mut fleet, mut rx, bytes_per_conn) = open_fleet(o.kiosks, pid, |k| {
        format!(
            "ws://127.0.0.1:{port}/ws?token={}&device_id={}",
            tokens[k],
            device(k)
        )
    })
    .await?;
    println!(
        "server: {} sockets open in {:.1} s",
        o.kiosks,
        started.elapsed().as_secs_f64()
    );

    let clients = o.kiosks / PER_CLIENT;
    let push = |k: usize, client: i64, n: usize| {
        let body = json!({"device_id": device(k), "queue": [{
            "id": n, "op_id": uuid::Uuid::now_v7(), "type": "copy",
            "payload": {"client_id": client, "uid": format!("04{:012X}", n)}}]});
        let req = http
            .post(format!("{base_http}/api/sync/push"))
            .bearer_auth(&tokens[k])
            .json(&body);
        async move {
            let res = req.send().await.map_err(|e| e.to_string())?;
            if res.status() != 200 {
                return Err(format!("push answered {}", res.status()));
            }
            Ok::<_, String>(())
        }
    };
    let mut per_client = Vec::new();
    for e in 0..o.events {
        let client = e % clients;
        let k = client * PER_CLIENT;
        let t0 = Instant::now();
        push(k, client as i64 + 1, e + 1).await?;
        per_client.extend(deliveries(&mut rx, PER_CLIENT, t0).await?);
    }
    let mut all = Vec::new();
    for b in 0..o.broadcasts {
        let t0 = Instant::now();
        push(b, everyone, o.events + b + 1).await?;
        all.extend(deliveries(&mut rx, o.kiosks, t0).await?);
    }
    let heartbeats = heartbeat_storm(&mut fleet, &url, o.kiosks).await?;
    drop(fleet);
    server.terminate();
    Ok(Run {
        per_client,
        everyone: all,
        bytes_per_conn,
        heartbeats: Some(heartbeats),
    })
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Every kiosk sends a heartbeat at once: the time until all `kiosks` are
/// stored; then the ceiling, the same rows upserted in one transaction.
async fn heartbeat_storm(
    fleet: &mut Fleet,
    url: &str,
    kiosks: usize,
) -> Result<(Duration, Duration), String> {
    let mut c = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| e.to_string())?;
    let beat = json!({"type": "heartbeat", "data": {
        "agent_version": "bench", "pending": 4242, "failed": 0, "reader": "ok",
        "blanks_written": 0, "blanks_failed": 0, "clock": chrono::Utc::now()}})
    .to_string();
    let t0 = Instant::now();
    for sink in &mut fleet.sinks {
        sink.send(Message::Text(beat.clone().into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let deadline = t0 + Duration::from_secs(60);
    loop {
        let stored: Count =
            diesel::sql_query("SELECT count(*) AS n FROM device_heartbeats WHERE pending = 4242")
                .get_result(&mut c)
                .await
                .map_err(|e| e.to_string())?;
        if stored.n as usize >= kiosks {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {kiosks} heartbeats stored within 60 s",
                stored.n
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = t0.elapsed();
    let t1 = Instant::now();
    c.transaction(async |c| {
        diesel::sql_query(
            "INSERT INTO device_heartbeats AS h (device_id, received_at, clock_skew_ms, agent_version, pending, failed, \
                 reader, blanks_written, blanks_failed) \
             SELECT 'BW-' || g, now(), 0, 'bench', 4243, 0, 'ok', 0, 0 FROM generate_series(0, $1 - 1) g \
             ON CONFLICT (device_id) DO UPDATE SET received_at = excluded.received_at, \
                 clock_skew_ms = excluded.clock_skew_ms, agent_version = excluded.agent_version, \
                 pending = excluded.pending, failed = excluded.failed, reader = excluded.reader, \
                 blanks_written = excluded.blanks_written, blanks_failed = excluded.blanks_failed",
        )
        .bind::<BigInt, _>(kiosks as i64)
        .execute(c)
        .await?;
        diesel::sql_query(
            "UPDATE devices SET last_seen = greatest(last_seen, now()), agent_version = 'bench' \
             WHERE device_id LIKE 'BW-%'",
        )
        .execute(c)
        .await
    })
    .await
    .map_err(|e: diesel::result::Error| e.to_string())?;
    Ok((stored, t1.elapsed()))
}

async fn run_broadcaster(o: &Opts) -> Result<Run, String> {
    let port = free_port();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut server = ProcessGuard::spawn(
        Command::new(&me)
            .args(["--serve-broadcaster", &port.to_string()])
            .stdin(Stdio::null()),
        "broadcaster",
    )?;
    let base_http = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // No /health: wait for the port to answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base_http}/")).send().await.is_err() {
        if Instant::now() > deadline {
            return Err("the broadcaster did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = server.child().id();
    let (fleet, mut rx, bytes_per_conn) =
        open_fleet(o.kiosks, pid, |_| format!("ws://127.0.0.1:{port}/ws")).await?;
    let mut all = Vec::new();
    for b in 0..o.broadcasts {
        let msg = json!({"type": "quota_updated", "data": {"client_id": 1, "remaining": b, "version": b}})
            .to_string();
        let t0 = Instant::now();
        let res = http
            .post(format!("{base_http}/broadcast"))
            .body(msg)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("broadcast answered {}", res.status()));
        }
        all.extend(deliveries(&mut rx, o.kiosks, t0).await?);
    }
    drop(fleet);
    server.terminate();
    Ok(Run {
        per_client: Vec::new(),
        everyone: all,
        bytes_per_conn,
        heartbeats: None,
    })
}
