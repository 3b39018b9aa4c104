//! Kiosks as first-class records: enrollment codes and rotating device
//! credentials, approval of password-login devices, per-kiosk clients (pull,
//! push, live events), revocation reaching open sockets by event, per-device
//! limits.

use std::sync::atomic::Ordering;
use std::time::Duration;

use propass_protocol::Role;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

/// `propass-server device enroll ARGS --json`: the code.
async fn enrollment_code(app: &TestApp, args: &[&str]) -> String {
    let mut all = vec!["device", "enroll", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = app.cli(&all).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["code"].as_str().unwrap().to_owned()
}

async fn post(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(format!("{}{path}", app.base))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn enroll(app: &TestApp, code: &str, device: &str) -> reqwest::Response {
    post(
        app,
        "/api/devices/enroll",
        &json!({"code": code, "device_id": device, "agent_version": "0.9.1"}),
    )
    .await
}

/// Enrolls and answers (access token, credential).
async fn enrolled(app: &TestApp, code: &str, device: &str) -> (String, String) {
    let res = enroll(app, code, device).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_owned(),
        body["credential"].as_str().unwrap().to_owned(),
    )
}

async fn renew(app: &TestApp, credential: &str) -> reqwest::Response {
    post(
        app,
        "/api/devices/token",
        &json!({"credential": credential}),
    )
    .await
}

async fn renewed(app: &TestApp, credential: &str) -> (String, String) {
    let res = renew(app, credential).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_owned(),
        body["credential"].as_str().unwrap().to_owned(),
    )
}

fn quota_ids(pull: &Value) -> Vec<i64> {
    pull["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["client_id"].as_i64().unwrap())
        .collect()
}

/// An operator's code enrolls our agent once: the device serves the code's
/// clients only, a push for another client fails alone, and no password
/// login can take the enrolled id.
#[tokio::test]
async fn an_enrolled_kiosk_serves_its_clients_and_nothing_else() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 10).await;
    let other = app.add_client("Globex", 10).await;
    let code = enrollment_code(&app, &["--name", "Lobby", "--clients", &acme.to_string()]).await;

    let (token, _) = enrolled(&app, &code.to_lowercase().replace('-', " "), "agent-1").await;
    let again = enroll(&app, &code, "agent-2").await;
    assert_eq!(error_code(again, 401).await, "invalid_credential");

    let pull: Value = app.pull(&token).await.json().await.unwrap();
    assert_eq!(quota_ids(&pull), [acme]);

    let push = json!({"device_id": "agent-1", "queue": [
        seed_item(1, acme, "04AB12CD"),
        seed_item(2, other, "04AB12CE"),
    ]});
    let data = app.push_ok(&token, &push).await;
    assert_eq!(data[0]["status"], "synced");
    assert_eq!(data[1]["status"], "failed");
    assert_eq!(
        data[1]["error"],
        format!("client {other} is not served by this kiosk")
    );
    assert_eq!(app.ledger_count().await, 1);
    assert_eq!(app.remaining(&app.token("K-admin").await, other).await, 10);

    assert_eq!(
        error_code(app.login(ADMIN.0, ADMIN.1, "agent-1").await, 403).await,
        "device_enrolled"
    );

    let (ok, out, err) = app.cli(&["device", "list", "--json"]).await;
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let me = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "agent-1")
        .unwrap();
    assert_eq!(
        (
            &me["name"],
            &me["status"],
            &me["enrolled"],
            &me["agent_version"],
            &me["clients"]
        ),
        (
            &json!("Lobby"),
            &json!("active"),
            &json!(true),
            &json!("0.9.1"),
            &json!([acme])
        )
    );
}

/// Codes refuse what they must: unknown, expired for another device, a known
/// id without a re-enrollment code.
#[tokio::test]
async fn enrollment_codes_are_refused_when_they_should_be() {
    let app = spawn_app().await;
    assert_eq!(
        error_code(
            enroll(&app, "AAAAA-AAAAA-AAAAA-AAAAA", "agent-1").await,
            401
        )
        .await,
        "invalid_credential"
    );
    assert_eq!(
        error_code(enroll(&app, "not a code", "agent-1").await, 401).await,
        "invalid_credential"
    );
    app.token("K1").await;
    let code = enrollment_code(&app, &[]).await;
    assert_eq!(
        error_code(enroll(&app, &code, "K1").await, 401).await,
        "invalid_credential",
        "a known id is re-enrolled only by a code naming it"
    );
    let code = enrollment_code(&app, &["--device", "K1"]).await;
    assert_eq!(
        error_code(enroll(&app, &code, "K2").await, 401).await,
        "invalid_credential"
    );
    let (token, _) = enrolled(&app, &code, "K1").await;
    assert_eq!(app.pull(&token).await.status(), 200);
    let (ok, _, err) = app.cli(&["device", "enroll", "--clients", "999"]).await;
    assert!(!ok && err.contains("no client 999"), "{err}");
}

/// A refresh credential works once; a retry of a lost answer is served while
/// the successor is unused; a second use after that revokes the chain and
/// stops its access tokens at once, open WebSockets included.
#[tokio::test]
async fn refresh_credentials_rotate_and_reuse_revokes_the_chain() {
    let app = spawn_with(|c| {
        c.ws_heartbeat = Duration::from_secs(3600);
        c.ws_recheck = Duration::from_secs(3600);
    })
    .await;
    let code = enrollment_code(&app, &[]).await;
    let (_, first) = enrolled(&app, &code, "agent-1").await;

    let (_, lost) = renewed(&app, &first).await;
    // The answer carrying `lost` never arrived: the agent retries `first`.
    let (token, second) = renewed(&app, &first).await;
    let mut ws = app.ws("/ws", &token, "agent-1").await;
    ping_pong(&mut ws).await;
    assert!(
        eventually(WAIT, || async {
            app.state.metrics.listening.load(Ordering::Relaxed)
        })
        .await
    );
    assert_eq!(
        error_code(renew(&app, &lost).await, 401).await,
        "invalid_credential",
        "the replaced successor is dead, and using it is a reuse"
    );
    assert_eq!(
        server_closes(&mut ws, WAIT).await,
        Some(CloseCode::Policy),
        "the chain's open socket closes by event, not at its next recheck"
    );
    // That reuse revoked the chain: `second` is dead and so is the token.
    assert_eq!(
        error_code(renew(&app, &second).await, 401).await,
        "invalid_credential"
    );
    assert_eq!(
        error_code(app.pull(&token).await, 401).await,
        "invalid_token"
    );

    // Re-enrolled, the device starts a new chain; reuse of a used credential
    // (its successor already used) revokes it too.
    let code = enrollment_code(&app, &["--device", "agent-1"]).await;
    let (_, c1) = enrolled(&app, &code, "agent-1").await;
    let (_, c2) = renewed(&app, &c1).await;
    let (token, _c3) = renewed(&app, &c2).await;
    assert_eq!(app.pull(&token).await.status(), 200);
    assert_eq!(
        error_code(renew(&app, &c1).await, 401).await,
        "invalid_credential"
    );
    assert_eq!(
        error_code(app.pull(&token).await, 401).await,
        "invalid_token"
    );

    // A device token is not a login token: /api/auth/refresh refuses it.
    let code = enrollment_code(&app, &[]).await;
    let (token, _) = enrolled(&app, &code, "agent-2").await;
    assert_eq!(
        error_code(app.refresh(&token).await, 401).await,
        "invalid_token"
    );
}

/// The chain has an absolute end: after it, the credential no longer renews.
#[tokio::test]
async fn a_credential_chain_ends_at_its_absolute_lifetime() {
    let app = spawn_app().await;
    let code = enrollment_code(&app, &[]).await;
    let (_, credential) = enrolled(&app, &code, "agent-1").await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE device_credentials SET chain_expires_at = now() - interval '1 second'",
        ),
        &mut app.db().await,
    )
    .await
    .unwrap();
    let res = renew(&app, &credential).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_credential");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("absolute lifetime"),
        "{body}"
    );
}

/// A seed client's unknown device id lands pending: it logs in and refreshes,
/// but cannot push or pull until an operator approves it.
#[tokio::test]
async fn a_password_login_device_waits_for_approval() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    app.add_user("kiosk-7", "kiosk-pass", Role::Kiosk).await;
    let res = app.login("kiosk-7", "kiosk-pass", "seed-1").await;
    assert_eq!(res.status(), 200);
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let push = json!({"device_id": "seed-1", "queue": [seed_item(1, client, "04AB12CD")]});
    assert_eq!(
        error_code(app.push(&token, &push).await, 403).await,
        "device_pending"
    );
    assert_eq!(
        error_code(app.pull(&token).await, 403).await,
        "device_pending"
    );
    assert_eq!(app.refresh(&token).await.status(), 200);
    assert_eq!(app.ledger_count().await, 0);

    let (ok, _, err) = app
        .cli(&[
            "device",
            "approve",
            "seed-1",
            "--clients",
            &client.to_string(),
        ])
        .await;
    assert!(ok, "{err}");
    assert_eq!(app.push_ok(&token, &push).await[0]["status"], "synced");
    let (ok, _, err) = app.cli(&["device", "approve", "seed-1"]).await;
    assert!(!ok && err.contains("is active, not pending"), "{err}");

    // The pre-assigned state: registered ahead, it works at its first login.
    let (ok, _, err) = app
        .cli(&[
            "device",
            "add",
            "seed-2",
            "--name",
            "Hall",
            "--clients",
            &client.to_string(),
        ])
        .await;
    assert!(ok, "{err}");
    let res = app.login("kiosk-7", "kiosk-pass", "seed-2").await;
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.remaining(&token, client).await, 9);
}

/// What the change listener missed while it was away (here: changes made
/// with no notification at all) is caught up when it reconnects: a revoked
/// kiosk's socket closes and a kiosk given a new client hears its quota —
/// without the sockets' own rechecks (an hour away).
#[tokio::test]
async fn a_reconnected_listener_catches_up_on_what_it_missed() {
    let app = spawn_with(|c| {
        c.ws_heartbeat = Duration::from_secs(3600);
        c.ws_recheck = Duration::from_secs(3600);
    })
    .await;
    let (a, b) = (app.add_client("A", 10).await, app.add_client("B", 7).await);
    let code_a = enrollment_code(&app, &["--clients", &a.to_string()]).await;
    let code_r = enrollment_code(&app, &["--clients", &a.to_string()]).await;
    let (token_a, _) = enrolled(&app, &code_a, "kiosk-a").await;
    let (token_r, _) = enrolled(&app, &code_r, "kiosk-r").await;
    let mut ws_a = app.ws("/ws", &token_a, "kiosk-a").await;
    let mut ws_r = app.ws("/ws", &token_r, "kiosk-r").await;
    ping_pong(&mut ws_a).await;
    ping_pong(&mut ws_r).await;
    assert!(
        eventually(WAIT, || async {
            app.state.metrics.listening.load(Ordering::Relaxed)
        })
        .await
    );

    app.change_unheard(&[
        "UPDATE devices SET status = 'revoked', revoked_at = now() WHERE device_id = 'kiosk-r'"
            .to_owned(),
        format!("INSERT INTO device_clients (device_id, client_id) VALUES ('kiosk-a', {b})"),
    ])
    .await;

    assert_eq!(
        server_closes(&mut ws_r, WAIT).await,
        Some(CloseCode::Policy),
        "the revocation it never heard of closes the socket"
    );
    let heard = collect_until(&mut ws_a, WAIT, |m| {
        m.iter()
            .any(|v| v["type"] == "quota_updated" && v["data"]["client_id"] == b)
    })
    .await;
    assert!(
        heard
            .iter()
            .any(|v| v["type"] == "quota_updated" && v["data"]["client_id"] == b),
        "the kiosk hears the client it now serves: {heard:?}"
    );
}

async fn ping_pong(ws: &mut Ws) {
    send_json(ws, &json!({"type": "ping"})).await;
    let got = collect_until(ws, WAIT, |m| m.iter().any(|v| v["type"] == "pong")).await;
    assert!(got.iter().any(|v| v["type"] == "pong"), "{got:?}");
}

/// Live events follow the assignment: a kiosk hears the quotas of its own
/// clients (from pushes and operator top-ups) and nothing of the others'.
#[tokio::test]
async fn live_quota_updates_reach_only_the_kiosks_serving_the_client() {
    let app = spawn_app().await;
    let (a, b) = (app.add_client("A", 10).await, app.add_client("B", 10).await);
    let code_a = enrollment_code(&app, &["--clients", &a.to_string()]).await;
    let code_b = enrollment_code(&app, &["--clients", &b.to_string()]).await;
    let (token_a, _) = enrolled(&app, &code_a, "kiosk-a").await;
    let (token_b, _) = enrolled(&app, &code_b, "kiosk-b").await;
    let mut ws_a = app.ws("/ws", &token_a, "kiosk-a").await;
    let mut ws_b = app.ws("/ws", &token_b, "kiosk-b").await;
    ping_pong(&mut ws_a).await;
    ping_pong(&mut ws_b).await;
    assert!(
        eventually(WAIT, || async {
            app.state.metrics.listening.load(Ordering::Relaxed)
        })
        .await
    );

    app.push_ok(
        &token_a,
        &json!({"device_id": "kiosk-a", "queue": [seed_item(1, a, "04AB12CD")]}),
    )
    .await;
    app.add_quota(a, 5).await;
    let got_a = collect_until(&mut ws_a, WAIT, |m| {
        m.iter()
            .filter(|v| v["type"] == "quota_updated")
            .any(|v| v["data"]["remaining"] == 14)
    })
    .await;
    assert!(
        got_a
            .iter()
            .any(|v| v["type"] == "quota_updated" && v["data"]["remaining"] == 14),
        "{got_a:?}"
    );
    // B's socket: a ping after the events, and nothing of client A before the pong.
    send_json(&mut ws_b, &json!({"type": "ping"})).await;
    let got_b = collect_until(&mut ws_b, WAIT, |m| m.iter().any(|v| v["type"] == "pong")).await;
    assert_eq!(got_b, [json!({"type": "pong"})], "kiosk B heard: {got_b:?}");

    // Assigned A by an operator, B hears A's next top-up.
    let (ok, _, err) = app
        .cli(&["device", "assign", "kiosk-b", "--add", &a.to_string()])
        .await;
    assert!(ok, "{err}");
    let deadline = std::time::Instant::now() + WAIT;
    let mut heard = false;
    while !heard && std::time::Instant::now() < deadline {
        app.add_quota(a, 1).await;
        let got = collect_until(&mut ws_b, Duration::from_millis(300), |m| {
            m.iter().any(|v| v["type"] == "quota_updated")
        })
        .await;
        heard = got.iter().any(|v| v["data"]["client_id"] == a);
    }
    assert!(heard, "an assignment change reaches the open socket");
}

/// A revocation closes the device's socket by event, long before its heartbeat.
#[tokio::test]
async fn revocation_closes_open_sockets_without_waiting_for_the_heartbeat() {
    let app = spawn_with(|c| c.ws_heartbeat = Duration::from_secs(3600)).await;
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    ping_pong(&mut ws).await;
    assert!(
        eventually(WAIT, || async {
            app.state.metrics.listening.load(Ordering::Relaxed)
        })
        .await
    );
    let (ok, _, err) = app.cli(&["device", "revoke", "K1"]).await;
    assert!(ok, "{err}");
    assert_eq!(server_closes(&mut ws, WAIT).await, Some(CloseCode::Policy));
    let (ok, _, err) = app.cli(&["device", "revoke", "K1"]).await;
    assert!(!ok && err.contains("is revoked"), "{err}");
    let (ok, _, err) = app.cli(&["device", "restore", "K1"]).await;
    assert!(ok, "{err}");
    assert_eq!(app.pull(&token).await.status(), 200);

    // A user disabled with the CLI loses its sockets the same way.
    app.add_user("kiosk-7", "kiosk-pass", Role::Kiosk).await;
    let res = app.login("kiosk-7", "kiosk-pass", "K1").await;
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = app.ws("/ws", &token, "K1").await;
    ping_pong(&mut ws).await;
    let (ok, _, err) = app.cli(&["user", "disable", "kiosk-7"]).await;
    assert!(ok, "{err}");
    assert_eq!(server_closes(&mut ws, WAIT).await, Some(CloseCode::Policy));
}

/// Over a per-device limit, a push is answered 429 with `Retry-After` and
/// records nothing.
#[tokio::test]
async fn per_device_limits_refuse_whole_pushes() {
    let app = spawn_with(|c| {
        c.device_pushes_per_minute = 0;
        c.device_items_per_day = 3;
    })
    .await;
    let client = app.add_client("ACME", 100).await;
    let token = app.token("K1").await;
    let batch = |from: i64, n: i64| {
        json!({"device_id": "K1", "queue": (from..from + n)
            .map(|i| seed_item(i, client, &format!("04AB{i:04X}")))
            .collect::<Vec<_>>()})
    };
    app.push_ok(&token, &batch(1, 2)).await;
    let res = app.push(&token, &batch(3, 2)).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_code(res, 429).await, "rate_limited");
    assert_eq!(app.ledger_count().await, 2);
    // Retries of recorded copies are not new rows: they pass.
    app.push_ok(&token, &batch(1, 3)).await;
    assert_eq!(app.ledger_count().await, 3);

    let app = spawn_with(|c| c.device_pushes_per_minute = 2).await;
    let client = app.add_client("ACME", 100).await;
    let token = app.token("K1").await;
    let one = |i: i64| json!({"device_id": "K1", "queue": [seed_item(i, client, "04AB12CD")]});
    // Two pushes per clock minute: the third is refused (the fourth too,
    // unless the minute turned in between).
    let mut refused = None;
    for i in 1..=4 {
        let before = app.ledger_count().await;
        let res = app.push(&token, &one(i)).await;
        if res.status() == 429 {
            assert_eq!(
                app.ledger_count().await,
                before,
                "a refused push records nothing"
            );
            refused = Some(res);
            break;
        }
    }
    let res = refused.expect("a third push within a minute is refused");
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
}
