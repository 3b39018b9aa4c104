//! The WebSocket: auth as the seed client does it, ping/pong, live events,
//! origin allow-list, rate limit, heartbeat timeout.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn ping_gets_pong_on_ws_and_on_root() {
    let app = spawn_app().await;
    let token = app.token("K1").await;
    for path in ["/ws", "/"] {
        let mut ws = app.ws(path, &token, "K1").await;
        send_json(&mut ws, &json!({"type": "ping"})).await;
        assert_eq!(
            next_json(&mut ws, WAIT).await,
            Some(json!({"type": "pong"})),
            "on {path}"
        );
    }
}

#[tokio::test]
async fn authorization_header_works_and_bad_tokens_are_refused() {
    let app = spawn_app().await;
    let token = app.token("K1").await;
    let mut req = format!("ws://127.0.0.1:{}/ws", app.port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send_json(&mut ws, &json!({"type": "ping"})).await;
    assert_eq!(
        next_json(&mut ws, WAIT).await,
        Some(json!({"type": "pong"}))
    );

    let url = format!("ws://127.0.0.1:{}/ws?token=garbage&device_id=K1", app.port);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn a_push_announces_its_copies_to_its_own_kiosk_and_quotas_to_all() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 2).await;
    let pusher_token = app.token("K1").await;
    let watcher_token = app.token("K2").await;
    let mut pusher = app.ws("/ws", &pusher_token, "K1").await;
    let mut watcher = app.ws("/", &watcher_token, "K2").await;
    // Make sure both sessions are registered before the push.
    for ws in [&mut pusher, &mut watcher] {
        send_json(ws, &json!({"type": "ping"})).await;
        assert_eq!(next_json(ws, WAIT).await, Some(json!({"type": "pong"})));
    }

    let items = vec![
        seed_item(1, client, "04AB12CD"),
        seed_item(2, client, "04AB12CE"),
        seed_item(3, client, "04AB12CF"),
    ];
    app.push_ok(&pusher_token, &json!({"device_id": "K1", "queue": items}))
        .await;

    // Another kiosk learns the new quota — and never the badges.
    let got = collect_until(&mut watcher, WAIT, |m| {
        m.iter().any(|v| v["type"] == "quota_updated")
    })
    .await;
    let quota = got
        .iter()
        .rev()
        .find(|v| v["type"] == "quota_updated")
        .expect("the other kiosk gets quota_updated");
    assert_eq!(
        (&quota["data"]["client_id"], &quota["data"]["remaining"]),
        (&json!(client), &json!(-1))
    );
    assert!(
        quota["data"]["version"].as_i64().is_some_and(|v| v > 0),
        "quota updates carry a version"
    );
    send_json(&mut watcher, &json!({"type": "ping"})).await;
    let rest = collect_until(&mut watcher, WAIT, |m| {
        m.iter().any(|v| v["type"] == "pong")
    })
    .await;
    assert!(
        got.iter()
            .chain(&rest)
            .all(|v| v["type"] != "copy_completed" && v["type"] != "sync_completed"),
        "another kiosk sees no copy and no summary: {got:?} {rest:?}"
    );

    // The pusher gets its own copies, then its summary.
    let mine = collect_until(&mut pusher, WAIT, |m| {
        m.iter().any(|v| v["type"] == "sync_completed")
    })
    .await;
    let copies: Vec<_> = mine
        .iter()
        .filter(|v| v["type"] == "copy_completed")
        .collect();
    assert_eq!(copies.len(), 3, "pusher got {mine:?}");
    assert_eq!(copies[0]["data"]["client_id"], client);
    assert_eq!(copies[0]["data"]["uid"], "04AB12CD");
    assert_eq!(copies[0]["data"]["device_id"], "K1");
    assert_eq!(copies[2]["data"]["overdraft"], true);
    let done = mine
        .iter()
        .find(|v| v["type"] == "sync_completed")
        .expect("pusher gets sync_completed");
    assert_eq!(done["data"]["synced"], 3);
    assert_eq!(done["data"]["failed"], 0);
}

#[tokio::test]
async fn browser_origins_must_be_allowed() {
    let app = spawn_with(|c| c.ws_allowed_origins = vec!["https://fleet.example".into()]).await;
    let token = app.token("K1").await;
    let open = |origin: &'static str| {
        let mut req = format!("ws://127.0.0.1:{}/ws?token={token}&device_id=K1", app.port)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    match open("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(open("https://fleet.example").await.is_ok());
}

/// A frame over `ws_max_frame_bytes` ends the connection; one under it
/// does not.
#[tokio::test]
async fn an_oversized_frame_closes_the_socket() {
    let app = spawn_with(|c| c.ws_max_frame_bytes = 2048).await;
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    let ping = |pad: usize| {
        Message::Text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(pad)).into())
    };
    futures_util::SinkExt::send(&mut ws, ping(1000))
        .await
        .unwrap();
    let answered = next_json(&mut ws, Duration::from_secs(10)).await;
    assert!(answered.is_some(), "a frame under the limit is read");
    let _ = futures_util::SinkExt::send(&mut ws, ping(4000)).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection ended");
}

#[tokio::test]
async fn flooding_clients_are_disconnected() {
    let app = spawn_with(|c| c.ws_inbound_per_sec = 10).await;
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    for _ in 0..100 {
        if futures_util::SinkExt::send(&mut ws, Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => pongs += 1,
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| f.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Policy));
    assert!(pongs < 100, "the flood was cut short ({pongs} pongs)");
}

#[tokio::test]
async fn silent_connections_are_closed_by_the_heartbeat() {
    let app = spawn_with(|c| {
        c.ws_heartbeat = Duration::from_millis(300);
        c.ws_client_timeout = Duration::from_secs(1);
    })
    .await;
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    // Read nothing (so no pong is sent) until the server must have given up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The server has closed: either its close frame (code "going away") is
    // still readable, or answering its queued pings already hit the closed socket.
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Away));
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => panic!("the server kept a silent connection open"),
        }
    }
}

#[tokio::test]
async fn an_operator_top_up_reaches_connected_kiosks() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 1).await;
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    send_json(&mut ws, &json!({"type": "ping"})).await;
    assert_eq!(
        next_json(&mut ws, WAIT).await,
        Some(json!({"type": "pong"}))
    );
    // The server's LISTEN connection may still be starting: top up until it hears one.
    let mut expected = 1;
    let mut heard = None;
    for _ in 0..20 {
        expected = app.add_quota(client, 5).await;
        let got = collect_until(&mut ws, Duration::from_millis(500), |m| {
            m.iter().any(|v| v["type"] == "quota_updated")
        })
        .await;
        if let Some(q) = got.into_iter().find(|v| v["type"] == "quota_updated") {
            heard = Some(q);
            break;
        }
    }
    let q = heard.expect("a top-up made with the operator CLI reaches the WebSocket");
    assert_eq!(q["data"]["client_id"], client);
    assert_eq!(q["data"]["remaining"], expected);
}

#[tokio::test]
async fn a_revoked_device_loses_its_open_websocket() {
    let app = spawn_with(|c| c.ws_heartbeat = Duration::from_millis(200)).await;
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    send_json(&mut ws, &json!({"type": "ping"})).await;
    assert_eq!(
        next_json(&mut ws, WAIT).await,
        Some(json!({"type": "pong"}))
    );
    app.revoke("K1").await;
    let closed = server_closes(&mut ws, WAIT).await;
    assert_eq!(closed, Some(CloseCode::Policy));
}

#[tokio::test]
async fn a_stopping_server_tells_its_websockets_it_is_going_away() {
    let app = spawn_app().await;
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    send_json(&mut ws, &json!({"type": "ping"})).await;
    assert_eq!(
        next_json(&mut ws, WAIT).await,
        Some(json!({"type": "pong"}))
    );
    let stopping = tokio::spawn({
        let stopper = app.stopper.clone();
        async move { stopper.stop().await }
    });
    // Before the graceful stop's timeout (10 s), and with "going away": a
    // kiosk reconnects at once instead of treating it as a refusal.
    assert_eq!(server_closes(&mut ws, WAIT).await, Some(CloseCode::Away));
    drop(ws);
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the server stops without waiting out its shutdown timeout")
        .unwrap();
    assert!(
        reqwest::get(format!("{}/health", app.base)).await.is_err(),
        "a stopped server accepts no request"
    );
}

/// Pings are cheap at thousands of sockets: no database query per socket
/// per ping; a revocation still closes every socket of the device at once,
/// by event.
#[tokio::test]
async fn pings_ask_the_database_nothing_and_a_revocation_closes_sockets_by_event() {
    let app = spawn_with(|c| c.ws_heartbeat = Duration::from_millis(100)).await;
    let token = app.token("K1").await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(app.ws("/ws", &token, "K1").await);
    }
    let mut pings = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while pings < 5 {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("the server pings");
        if let Ok(Some(Ok(Message::Ping(_)))) = tokio::time::timeout(left, sockets[0].next()).await
        {
            pings += 1;
        }
    }
    let checks = app
        .state
        .metrics
        .ws_standing_checks
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        checks, 0,
        "{pings} pings on 4 sockets asked the database {checks} times"
    );
    app.revoke("K1").await;
    for ws in &mut sockets {
        assert_eq!(server_closes(ws, WAIT).await, Some(CloseCode::Policy));
    }
}

/// Past the server's WebSocket cap a new socket gets 503 with Retry-After,
/// and HTTP — pushes — keeps working.
#[tokio::test]
async fn past_the_socket_cap_new_sockets_wait_and_pushes_still_work() {
    let app = spawn_with(|c| c.ws_max_connections = 2).await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let first = app.ws("/ws", &token, "K1").await;
    let _second = app.ws("/ws", &token, "K1").await;
    let url = format!("ws://127.0.0.1:{}/ws?token={token}&device_id=K1", app.port);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 503);
            assert_eq!(res.headers()["retry-after"], "30");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // Refused before it is authenticated: a storm of sockets this server
    // cannot hold costs it no database query.
    let forged = format!("ws://127.0.0.1:{}/ws?token=forged&device_id=K1", app.port);
    match tokio_tungstenite::connect_async(&forged).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    let queue = json!([seed_item(1, client, "04C0FFEE000001")]);
    let pushed = app
        .push_ok(&token, &json!({"device_id": "K1", "queue": queue}))
        .await;
    assert_eq!(pushed[0]["status"], "synced");
    drop(first);
    let reopened = eventually(WAIT, || async {
        tokio_tungstenite::connect_async(&url).await.is_ok()
    })
    .await;
    assert!(reopened, "a freed slot is taken again");
}

/// One device holds at most a few sockets; past them it is told when to
/// come back, and another device is not affected.
#[tokio::test]
async fn a_device_past_its_socket_cap_gets_429_with_retry_after() {
    let app = spawn_with(|c| c.ws_max_per_device = 3).await;
    let token = app.token("K1").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(app.ws("/ws", &token, "K1").await);
    }
    let url = format!("ws://127.0.0.1:{}/ws?token={token}&device_id=K1", app.port);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 429);
            assert_eq!(res.headers()["retry-after"], "30");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    let other = app.token("K2").await;
    let _k2 = app.ws("/ws", &other, "K2").await;
}

/// A kiosk whose clients or lease change on the server is asked to pull at
/// once, on a socket whose upgrade asked for it; the seed client's socket is
/// never sent a message it does not know.
#[tokio::test]
async fn a_kiosk_is_asked_to_pull_when_its_clients_or_its_lease_change() {
    let app = spawn_app().await; // lease_target 10
    let acme = app.add_client("ACME", 30).await;
    let globex = app.add_client("Globex", 30).await;
    let token = app.token("K1").await;
    app.pull_entry_asking(&token, acme, "?lease=true").await;
    let url = format!(
        "ws://127.0.0.1:{}/ws?token={token}&device_id=K1&accept=sync_requested",
        app.port
    );
    let (mut agent, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut seed = app.ws("/ws", &token, "K1").await;
    let asked = |got: &[serde_json::Value]| got.iter().any(|m| m["type"] == "sync_requested");
    // The approval's own notifications may still be on their way (the agent
    // is asked to pull for them too): a top-up, heard after them in order,
    // marks where they end.
    let (ok, _, err) = app
        .cli(&["quota", "add", &acme.to_string(), "7", "--reason", "marker"])
        .await;
    assert!(ok, "{err}");
    for ws in [&mut agent, &mut seed] {
        let got = collect_until(ws, WAIT, |got| {
            got.iter()
                .any(|m| m["type"] == "quota_updated" && m["data"]["remaining"] == 27)
        })
        .await;
        assert!(
            got.iter().any(|m| m["data"]["remaining"] == 27),
            "the top-up did not arrive: {got:?}"
        );
    }
    let device = propass_protocol::DeviceId::parse("K1").unwrap();

    // An operator stops K1 serving Globex.
    propass_server::db::devices::assign(&mut app.db().await, &device, &[], &[globex])
        .await
        .unwrap();
    assert!(
        asked(&collect_until(&mut agent, WAIT, asked).await),
        "no sync_requested after the assignment changed"
    );

    // An operator takes back its lease of ACME (`device reclaim`).
    let returned = propass_server::admin::reclaim_leases(
        &mut app.db().await,
        &propass_server::admin::Actor::cli("root"),
        &device,
        None,
    )
    .await
    .unwrap();
    assert_eq!(returned, [(acme, 10)]);
    assert!(
        asked(&collect_until(&mut agent, WAIT, asked).await),
        "no sync_requested after the lease was taken back"
    );

    // An operator gives ACME's badges a key, then changes its copy policy:
    // a pull tells both, so the kiosk is asked to pull each time.
    let key = propass_protocol::ReaderKey::parse("A0A1A2A3A4A5").unwrap();
    let acme_id = propass_protocol::ClientId::new(acme).unwrap();
    propass_server::db::clients::set_reader_keys(&mut app.db().await, acme_id, &[key])
        .await
        .unwrap();
    assert!(
        asked(&collect_until(&mut agent, WAIT, asked).await),
        "no sync_requested after the client's keys changed"
    );
    propass_server::db::clients::set_partial_copy(&mut app.db().await, acme_id, true)
        .await
        .unwrap();
    assert!(
        asked(&collect_until(&mut agent, WAIT, asked).await),
        "no sync_requested after the client's policy changed"
    );
    // ... and its lease sizes (a lowered target: the kiosk gives back).
    propass_server::db::leases::set_policy(&mut app.db().await, acme_id, Some(3), Some(1))
        .await
        .unwrap();
    assert!(
        asked(&collect_until(&mut agent, WAIT, asked).await),
        "no sync_requested after the client's lease sizes changed"
    );
    // A client K1 no longer serves: nothing for K1 (a top-up of ACME, made
    // after the change, arrives alone).
    let globex_id = propass_protocol::ClientId::new(globex).unwrap();
    propass_server::db::clients::set_partial_copy(&mut app.db().await, globex_id, true)
        .await
        .unwrap();
    let (ok, _, err) = app
        .cli(&["quota", "add", &acme.to_string(), "1", "--reason", "marker"])
        .await;
    assert!(ok, "{err}");
    let marker =
        |m: &serde_json::Value| m["type"] == "quota_updated" && m["data"]["client_id"] == acme;
    let got = collect_until(&mut agent, WAIT, |got| got.iter().any(marker)).await;
    assert!(got.iter().any(marker), "the marker did not arrive: {got:?}");
    assert!(!asked(&got), "asked for another kiosk's client: {got:?}");

    send_json(&mut seed, &json!({"type": "ping"})).await;
    let got = collect_until(&mut seed, WAIT, |got| {
        got.last().is_some_and(|m| m["type"] == "pong")
    })
    .await;
    assert_eq!(got.last(), Some(&json!({"type": "pong"})), "{got:?}");
    assert!(!asked(&got), "the seed's socket was sent {got:?}");
}

/// What only a pull tells and the listener missed while its connection was
/// down (here a copy policy changed without a notification): every kiosk
/// that understands `sync_requested` is asked to pull at its next ping.
#[tokio::test]
async fn after_lost_events_each_kiosk_is_asked_to_pull_at_its_next_ping() {
    let app = spawn_with(|c| c.ws_heartbeat = Duration::from_secs(1)).await;
    let acme = app.add_client("ACME", 30).await;
    let token = app.token("K1").await;
    let url = format!(
        "ws://127.0.0.1:{}/ws?token={token}&device_id=K1&accept=sync_requested",
        app.port
    );
    let (mut agent, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let listening = || async {
        app.state
            .metrics
            .listening
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(eventually(WAIT, listening).await);
    let asked = |got: &[serde_json::Value]| got.iter().any(|m| m["type"] == "sync_requested");
    // Pings with nothing missed ask nothing.
    let mut pings = 0;
    while pings < 2 {
        let frame = tokio::time::timeout(WAIT, agent.next())
            .await
            .expect("the server pings every second")
            .unwrap()
            .unwrap();
        match frame {
            Message::Ping(_) => pings += 1,
            Message::Text(t) => assert!(!t.contains("sync_requested"), "asked: {t}"),
            _ => {}
        }
    }

    app.change_unheard(&[format!(
        "UPDATE clients SET partial_copy = true WHERE id = {acme}"
    )])
    .await;
    assert!(
        asked(&collect_until(&mut agent, WAIT, asked).await),
        "no sync_requested after the listener came back"
    );
}
