//! Fleet visibility: a kiosk's heartbeat (over its WebSocket, or over HTTP
//! while the socket is down) shows in `device list`, with online and the
//! flags that need an operator's look.

use std::time::Duration;

use chrono::Utc;
use propass_protocol::Role;
use serde_json::{json, Value};

use crate::helpers::*;

/// K1's row of `device list --json`.
async fn fleet_row(app: &TestApp, device: &str) -> Value {
    let (ok, out, err) = app.cli(&["device", "list", "--json"]).await;
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["device_id"] == device)
        .cloned()
        .unwrap_or(Value::Null)
}

fn heartbeat(
    clock: chrono::DateTime<Utc>,
    reader: &str,
    pending: i64,
    failed_writes: u64,
) -> Value {
    json!({
        "agent_version": "9.8.7",
        "pending": pending,
        "failed": 0,
        "oldest_pending_at": (Utc::now() - chrono::Duration::hours(2)).to_rfc3339(),
        "last_sync_at": null,
        "last_error": "server unreachable: connection refused",
        "reader": reader,
        "blanks_written": 12,
        "blanks_failed": failed_writes,
        "clock": clock.to_rfc3339(),
    })
}

#[tokio::test]
async fn a_kiosk_heartbeat_shows_in_the_fleet_view_with_what_needs_a_look() {
    let app = spawn_app().await;
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    let skewed = Utc::now() - chrono::Duration::minutes(10);
    let mut data = heartbeat(skewed, "absent", 3, 5);
    data["storage_error"] = json!("database or disk is full");
    send_json(&mut ws, &json!({"type": "heartbeat", "data": data})).await;
    let arrived = eventually(Duration::from_secs(10), || async {
        fleet_row(&app, "K1").await["health"]["pending"] == 3
    })
    .await;
    let row = fleet_row(&app, "K1").await;
    assert!(arrived, "{row}");
    let h = &row["health"];
    assert_eq!(h["online"], true);
    assert_eq!(row["agent_version"], "9.8.7");
    assert_eq!(h["reader"], "absent");
    assert_eq!(h["storage_error"], "database or disk is full");
    assert_eq!(
        h["flags"],
        json!([
            "clock_skew",
            "backlog",
            "reader_unplugged",
            "cannot_record",
            "write_failures"
        ]),
        "{row}"
    );

    // Its socket down, the kiosk reports over HTTP: all well now.
    let res = app
        .post_heartbeat(&token, &heartbeat(Utc::now(), "ok", 0, 0))
        .await;
    assert_eq!(res.status(), 200);
    let row = fleet_row(&app, "K1").await;
    assert_eq!(row["health"]["flags"], json!([]), "{row}");
    assert_eq!(row["health"]["storage_error"], Value::Null, "{row}");

    // Not heard from for an hour (as after a server restart): offline.
    let stale = "WITH h AS (UPDATE device_heartbeats SET received_at = now() - interval '1 hour' RETURNING 1), \
                 d AS (UPDATE devices SET last_seen = now() - interval '1 hour' RETURNING 1) \
                 SELECT (SELECT count(*) FROM h) + (SELECT count(*) FROM d)";
    diesel_async::RunQueryDsl::execute(diesel::sql_query(stale), &mut app.db().await)
        .await
        .unwrap();
    let row = fleet_row(&app, "K1").await;
    assert_eq!(row["health"]["online"], false);
    assert_eq!(row["health"]["flags"], json!(["offline"]), "{row}");
}

/// Heartbeats over WebSockets are stored together (one write for all the
/// kiosks heard since the last one): each kiosk's latest lands, none is
/// mixed up with another's.
#[tokio::test]
async fn heartbeats_of_many_kiosks_are_stored_each_the_latest() {
    let app = spawn_app().await;
    let kiosks = ["K1", "K2", "K3", "K4", "K5"];
    let mut sockets = Vec::new();
    for k in kiosks {
        let token = app.token(k).await;
        sockets.push(app.ws("/ws", &token, k).await);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        for pending in [100, i as i64 + 1] {
            let msg = json!({"type": "heartbeat", "data": heartbeat(Utc::now(), "ok", pending, 0)});
            send_json(ws, &msg).await;
        }
    }
    let all_in = eventually(Duration::from_secs(10), || async {
        let (ok, out, _) = app.cli(&["device", "list", "--json"]).await;
        let rows: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        ok && kiosks.iter().enumerate().all(|(i, k)| {
            rows.as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["device_id"] == *k && r["health"]["pending"] == i as i64 + 1)
            })
        })
    })
    .await;
    assert!(all_in, "not every kiosk's latest heartbeat was stored");
    for k in kiosks {
        let row = fleet_row(&app, k).await;
        assert_eq!(row["agent_version"], "9.8.7", "{row}");
        assert_eq!(row["health"]["online"], true, "{row}");
    }
}

/// Only a kiosk reports its health: an operator's token is refused, and a
/// heartbeat that does not parse changes nothing.
#[tokio::test]
async fn only_a_kiosk_sends_heartbeats_and_bad_ones_change_nothing() {
    let app = spawn_app().await;
    app.token("K1").await;
    app.add_user("olga", "operator-pass", Role::Operator).await;
    let operator = app
        .login("olga", "operator-pass", "K1")
        .await
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = |token: Option<String>, body: Value| {
        let mut req = app
            .http
            .post(format!("{}/api/devices/heartbeat", app.base))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let good = heartbeat(Utc::now(), "ok", 0, 0);
    assert_eq!(
        error_code(post(Some(operator), good.clone()).await.unwrap(), 403).await,
        "forbidden"
    );
    assert_eq!(
        error_code(post(None, good).await.unwrap(), 401).await,
        "missing_token"
    );
    let kiosk = app.token("K1").await;
    let res = post(Some(kiosk), json!({"agent_version": 7}))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(fleet_row(&app, "K1").await["health"]["heartbeat_at"].is_null());

    // NUL, which PostgreSQL's text refuses, is dropped: the heartbeat and
    // the next ones (stored together with other kiosks') still land.
    let mut nul = heartbeat(Utc::now(), "ok", 4, 0);
    nul["storage_error"] = json!("disk\u{0}full");
    nul["agent_version"] = json!("1.0\u{0}");
    let kiosk = app.token("K1").await;
    let mut ws = app.ws("/ws", &kiosk, "K1").await;
    send_json(&mut ws, &json!({"type": "heartbeat", "data": nul})).await;
    let stored = eventually(Duration::from_secs(10), || async {
        fleet_row(&app, "K1").await["health"]["pending"] == 4
    })
    .await;
    let row = fleet_row(&app, "K1").await;
    assert!(stored, "{row}");
    assert_eq!(row["health"]["storage_error"], "diskfull");
    assert_eq!(row["agent_version"], "1.0");
    send_json(
        &mut ws,
        &json!({"type": "heartbeat", "data": heartbeat(Utc::now(), "ok", 5, 0)}),
    )
    .await;
    let next = eventually(Duration::from_secs(10), || async {
        fleet_row(&app, "K1").await["health"]["pending"] == 5
    })
    .await;
    assert!(next, "{}", fleet_row(&app, "K1").await);
}

/// Heartbeats over HTTP (kiosks whose socket is down) are stored together:
/// many at once cost a few transactions, each request is answered 200 only
/// once its heartbeat is stored, and the fleet shows the last one.
#[tokio::test]
async fn heartbeats_over_http_are_stored_together_and_answered_once_stored() {
    let app = spawn_with(|c| c.metrics_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    let token = app.token("K1").await;
    let scrape = |name: &'static str| {
        let app = &app;
        async move {
            let text = app.scrape_metrics().await;
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} not in {text}"))
        }
    };
    let writes_before = scrape("propass_heartbeat_writes_total").await;
    let n: i64 = 40;
    let beats: Vec<Value> = (0..n).map(|i| heartbeat(Utc::now(), "ok", i, 0)).collect();
    let answers =
        futures_util::future::join_all(beats.iter().map(|b| app.post_heartbeat(&token, b))).await;
    assert!(
        answers.iter().all(|r| r.status() == 200),
        "every heartbeat stored"
    );
    let writes = scrape("propass_heartbeat_writes_total").await - writes_before;
    assert!(
        writes >= 1 && writes <= n as u64 / 2,
        "{n} heartbeats at once took {writes} transactions"
    );
    let row = fleet_row(&app, "K1").await;
    assert!(
        row["health"]["pending"]
            .as_i64()
            .is_some_and(|p| (0..n).contains(&p)),
        "{row}"
    );

    // What PostgreSQL would refuse (a time before 4713 BC, a NUL) must not
    // fail the write, nor the other kiosks' heartbeats in it: left out, cut.
    let mut odd = heartbeat(Utc::now(), "ok", 7, 0);
    odd["oldest_pending_at"] = json!("-5000-01-01T00:00:00Z");
    odd["last_error"] = json!("bad\u{0}byte");
    let other = app.token("K2").await;
    let fine = heartbeat(Utc::now(), "ok", 3, 0);
    let (a, b) = tokio::join!(
        app.post_heartbeat(&token, &odd),
        app.post_heartbeat(&other, &fine)
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let row = fleet_row(&app, "K1").await;
    let h = &row["health"];
    assert_eq!(
        (&h["pending"], &h["oldest_pending_at"], &h["last_error"]),
        (&json!(7), &Value::Null, &json!("badbyte")),
        "{row}"
    );
    assert_eq!(fleet_row(&app, "K2").await["health"]["pending"], 3);
}
