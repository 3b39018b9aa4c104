//! Hostile input: raced logins, oversized bodies, implausible times, and
//! answers that must not be cached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use propass_test_support::{free_port, ProcessGuard};
use serde_json::{json, Value};

use crate::helpers::*;

/// 300 wrong passwords at once on one account: the throttle counts each
/// attempt before its password is checked, so at most the configured number
/// of checks run; the others are refused at once with `Retry-After`, and
/// the flood does not crowd out other requests.
#[tokio::test]
async fn concurrent_bad_logins_check_at_most_the_configured_number_of_passwords() {
    let app = spawn_with(|c| c.login_max_failures = 5).await;
    let attempts = (0..300).map(|_| {
        let (http, base) = (app.http.clone(), app.base.clone());
        tokio::spawn(async move {
            let res = http
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"username": ADMIN.0, "password": "wrong", "device_id": "K1"}))
                .send()
                .await
                .unwrap();
            (
                res.status().as_u16(),
                res.headers().contains_key("retry-after"),
            )
        })
    });
    let mut refused = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        match attempt.await.unwrap() {
            (401, _) => {}
            (429, true) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let checks = app.state.metrics.password_checks.load(Ordering::Relaxed);
    assert!(checks <= 5, "{checks} passwords were checked");
    assert_eq!(refused as u64, 300 - checks);
    assert_eq!(
        AtomicU64::load(&app.state.metrics.shed, Ordering::Relaxed),
        0,
        "the flood never crowded the database pool"
    );
}

/// A success does not use up the address's budget: a fleet behind one NAT
/// logs in all morning.
#[tokio::test]
async fn successful_logins_do_not_count_against_the_address() {
    let app = spawn_with(|c| c.login_max_failures = 2).await;
    for i in 0..6 {
        let res = app.login(ADMIN.0, ADMIN.1, &format!("K{i}")).await;
        assert_eq!(res.status(), 200, "login {i}");
    }
}

#[tokio::test]
async fn credentials_are_never_cached_and_login_bodies_are_small() {
    let app = spawn_app().await;
    let res = app.login(ADMIN.0, ADMIN.1, "K1").await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app.refresh(&token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");

    let big = json!({"username": "x".repeat(20_000), "password": "y", "device_id": "K1"});
    let res = app
        .http
        .post(format!("{}/api/auth/login", app.base))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 413).await, "payload_too_large");
    // The device endpoints anyone may call have the same small limit.
    for path in ["/api/devices/enroll", "/api/devices/token"] {
        let big = json!({"code": "x".repeat(20_000), "credential": "y".repeat(20_000), "device_id": "K1"});
        let res = app
            .http
            .post(format!("{}{path}", app.base))
            .json(&big)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(res, 413).await, "payload_too_large", "{path}");
    }
}

/// A copy dated before the kiosk could have existed, or days ahead of the
/// server, fails on its own; the rest of the batch is recorded.
#[tokio::test]
async fn an_implausible_occurred_at_fails_that_item_only() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let item = |id: i64, at: &str| json!({"id": id, "type": "copy", "payload": {"client_id": client, "uid": "04AB12CD", "occurred_at": at}});
    let data = app
        .push_ok(
            &token,
            &json!({"device_id": "K1", "queue": [
                item(1, "1999-01-01T00:00:00Z"),
                item(2, "2300-01-01T00:00:00Z"),
                seed_item(3, client, "04AB12CE"),
            ]}),
        )
        .await;
    for bad in &data[..2] {
        assert_eq!(bad["status"], "failed");
        assert!(
            bad["error"].as_str().unwrap().contains("occurred_at"),
            "{bad}"
        );
    }
    assert_eq!(data[2]["status"], "synced");
    assert_eq!(app.ledger_count().await, 1);
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The real server binary on `app`'s database (one worker, two database
/// connections, warnings and up to `log`), up and answering; its address.
async fn server_process(
    app: &TestApp,
    log: impl Into<std::process::Stdio>,
) -> (ProcessGuard, String) {
    let port = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_propass-server"));
    cmd.args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &app.db_url)
        .env("PROPASS_JWT_SECRET", SECRET)
        .env("PROPASS_WORKERS", "1")
        .env("PROPASS_DB_POOL_SIZE", "2")
        .env("PROPASS_LOG", "info")
        .stderr(log);
    let server = ProcessGuard::spawn(&mut cmd, "propass-server").unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let up = eventually(Duration::from_secs(30), || async {
        http.get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "the server process did not start");
    (server, base)
}

/// What a person typed is escaped in the log: a username with a newline or
/// a terminal escape cannot forge a log line or repaint the operator's
/// terminal.
#[tokio::test]
async fn log_lines_escape_what_users_typed() {
    let app = spawn_app().await;
    let dir = propass_test_support::TempDir::new("hostile-log").unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut server, base) = server_process(&app, log).await;
    let forged = "nobody\n2026-01-01T00:00:00Z  INFO login ok user=admin\u{1b}[2J";
    let res = reqwest::Client::new()
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": forged, "password": "wrong", "device_id": "K1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    server.terminate();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("login failed"),
        "the failure is logged: {text}"
    );
    assert!(
        text.contains(r"nobody\n2026-01-01"),
        "the username is in the log, escaped: {text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a typed newline started a line of its own: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "a terminal escape reached the log"
    );
    assert!(!text.contains('\r'), "a carriage return reached the log");
}

/// An 8 MiB push of `[0,0,0,…]` is refused while it is parsed: the real
/// server process grows by far less than the millions of JSON values it
/// would take to hold it.
#[tokio::test]
async fn a_huge_push_of_zeros_is_refused_without_holding_it_in_memory() {
    let app = spawn_app().await;
    let (mut server, base) = server_process(&app, std::process::Stdio::null()).await;
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": ADMIN.0, "password": ADMIN.1, "device_id": "K1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap();
    // The baseline is what the process holds now, and its peak is reset to
    // it ("5" to clear_refs): the login's Argon2 peak (~19 MiB, freed since)
    // must not hide growth below it.
    let pid = server.child().id();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    let before = propass_test_support::rss_kib(pid).expect("VmRSS");

    let mut body = String::from(r#"{"device_id": "K1", "queue": ["#);
    while body.len() < 8 * 1024 * 1024 - 64 {
        body.push_str("0,");
    }
    body.push_str("0]}");
    let res = http
        .post(format!("{base}/api/sync/push"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 413).await, "payload_too_large");
    let grown_bytes = peak_rss_kib(pid).saturating_sub(before) * 1024;
    assert!(
        grown_bytes < 50_000_000,
        "the server's peak memory grew by {} MB",
        grown_bytes / 1_000_000
    );
    eprintln!(
        "an 8 MiB push of zeros: peak memory grew by {:.1} MB",
        grown_bytes as f64 / 1e6
    );
}

/// A login's status, sent with `X-Forwarded-For: forwarded_for`.
async fn login_from(app: &TestApp, user: &str, password: &str, forwarded_for: &str) -> u16 {
    app.http
        .post(format!("{}/api/auth/login", app.base))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": user, "password": password, "device_id": "K1"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Wrong passwords for ever new usernames from one address: the address is
/// throttled — whatever `X-Forwarded-For` claims, unless the request comes
/// from a trusted proxy, which then tells the clients apart.
#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_a_trusted_proxy() {
    let app = spawn_with(|c| c.login_max_failures = 2).await;
    assert_eq!(login_from(&app, "u1", "wrong", "198.51.100.1").await, 401);
    assert_eq!(login_from(&app, "u2", "wrong", "198.51.100.2").await, 401);
    assert_eq!(
        login_from(&app, "u3", "wrong", "198.51.100.3").await,
        429,
        "a made-up address changes nothing"
    );

    let app = spawn_with(|c| {
        c.login_max_failures = 2;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    assert_eq!(login_from(&app, "u1", "wrong", "198.51.100.1").await, 401);
    assert_eq!(login_from(&app, "u2", "wrong", "198.51.100.1").await, 401);
    assert_eq!(
        login_from(&app, "u3", "wrong", "198.51.100.1").await,
        429,
        "that client is throttled"
    );
    assert_eq!(
        login_from(&app, "u4", "wrong", "198.51.100.2").await,
        401,
        "another client behind the proxy is not"
    );
}

/// Guesses at one account from many addresses get `login_max_failures`
/// password checks per window in all, even when the account's real owner
/// logs in between them (a shared kiosk account does, often).
#[tokio::test]
async fn a_success_in_between_gives_guessers_no_more_checks() {
    let app = spawn_with(|c| {
        c.login_max_failures = 3;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let checks = || app.state.metrics.password_checks.load(Ordering::Relaxed);
    assert_eq!(
        login_from(&app, "admin", "guess1", "198.51.100.1").await,
        401
    );
    assert_eq!(
        login_from(&app, "admin", "guess2", "198.51.100.2").await,
        401
    );
    assert_eq!(
        login_from(&app, "admin", "admin123", "203.0.113.9").await,
        200
    );
    assert_eq!(
        login_from(&app, "admin", "guess3", "198.51.100.3").await,
        401
    );
    let before = checks();
    assert_eq!(
        login_from(&app, "admin", "guess4", "198.51.100.4").await,
        429,
        "the success forgave itself, not the guesses"
    );
    assert_eq!(checks(), before, "no password was checked for it");
}

/// A body that trickles in is cut at `body_read_timeout`: 408, and the
/// connection does not stay with the server.
#[tokio::test]
async fn a_trickling_body_is_cut_after_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_with(|c| c.body_read_timeout = Duration::from_secs(1)).await;
    let token = app.token("K1").await;
    for path in ["/api/auth/login", "/api/sync/push"] {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"user"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
            .await
            .expect("the server answers a stalled body within its timeout")
            .unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
    }
}
