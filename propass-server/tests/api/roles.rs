//! Who may make a kiosk's calls, and how a person's tokens end.

use std::time::Duration;

use propass_protocol::Role;
use propass_server::db;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

async fn token_of(app: &TestApp, user: &str, password: &str, device: &str) -> String {
    let res = app.login(user, password, device).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// An operator manages clients and kiosks; it does not push, pull or open a
/// kiosk's WebSocket. A kiosk account does.
#[tokio::test]
async fn only_kiosk_accounts_and_admins_make_a_kiosks_calls() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    app.add_user("olga", "operator-pass", Role::Operator).await;
    app.add_user("kiosk-7", "kiosk-pass", Role::Kiosk).await;

    let operator = token_of(&app, "olga", "operator-pass", "K1").await;
    app.approve("K1").await;
    let push = json!({"device_id": "K1", "queue": [seed_item(1, client, "04AB12CD")]});
    assert_eq!(
        error_code(app.push(&operator, &push).await, 403).await,
        "forbidden"
    );
    assert_eq!(
        error_code(app.pull(&operator).await, 403).await,
        "forbidden"
    );
    let url = format!(
        "ws://127.0.0.1:{}/ws?token={operator}&device_id=K1",
        app.port
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!(
            "an operator's WebSocket must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    assert_eq!(app.ledger_count().await, 0);
    assert_eq!(
        error_code(app.refresh(&operator).await, 403).await,
        "forbidden",
        "an operator's kiosk-login token is not renewed either"
    );

    let res = app.login("kiosk-7", "kiosk-pass", "K2").await;
    app.approve("K2").await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user"]["role"], "kiosk");
    let kiosk = body["token"].as_str().unwrap();
    let push = json!({"device_id": "K2", "queue": [seed_item(1, client, "04AB12CD")]});
    assert_eq!(app.push_ok(kiosk, &push).await[0]["status"], "synced");
    assert_eq!(app.pull(kiosk).await.status(), 200);
}

/// Disabling a user ends its tokens and its open WebSockets at once, and
/// refuses its logins; a password change ends the tokens issued before it.
#[tokio::test]
async fn disabling_a_user_or_changing_its_password_ends_its_tokens() {
    let app = spawn_with(|c| c.ws_heartbeat = Duration::from_millis(200)).await;
    app.add_user("kiosk-7", "kiosk-pass", Role::Kiosk).await;
    let token = token_of(&app, "kiosk-7", "kiosk-pass", "K1").await;
    app.approve("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    send_json(&mut ws, &json!({"type": "ping"})).await;
    assert_eq!(
        next_json(&mut ws, WAIT).await,
        Some(json!({"type": "pong"}))
    );

    assert!(
        db::users::set_disabled(&mut app.db().await, "kiosk-7", true)
            .await
            .unwrap()
    );
    assert_eq!(
        error_code(app.pull(&token).await, 401).await,
        "invalid_token"
    );
    let closed = server_closes(&mut ws, WAIT).await;
    assert_eq!(closed, Some(CloseCode::Policy));
    assert_eq!(
        error_code(app.login("kiosk-7", "kiosk-pass", "K1").await, 403).await,
        "forbidden"
    );

    assert!(
        db::users::set_disabled(&mut app.db().await, "kiosk-7", false)
            .await
            .unwrap()
    );
    let token = token_of(&app, "kiosk-7", "kiosk-pass", "K1").await;
    assert_eq!(app.pull(&token).await.status(), 200);
    let mut ws = app.ws("/ws", &token, "K1").await;
    send_json(&mut ws, &json!({"type": "ping"})).await;
    assert_eq!(
        next_json(&mut ws, WAIT).await,
        Some(json!({"type": "pong"}))
    );
    let hash = propass_server::auth::password::hash_password("new-pass").unwrap();
    db::users::update(&mut app.db().await, "kiosk-7", &hash, Role::Kiosk)
        .await
        .unwrap();
    assert_eq!(
        error_code(app.pull(&token).await, 401).await,
        "invalid_token"
    );
    assert_eq!(
        server_closes(&mut ws, WAIT).await,
        Some(CloseCode::Policy),
        "a password change closes the open socket too"
    );
    let refresh = app.refresh(&token).await;
    assert_eq!(
        error_code(refresh, 401).await,
        "invalid_token",
        "no refresh either"
    );
    let token = token_of(&app, "kiosk-7", "new-pass", "K1").await;
    assert_eq!(app.pull(&token).await.status(), 200);

    // An operator made a kiosk account (the upgrade step): old tokens end.
    let (ok, _, err) = app.cli(&["user", "role", "kiosk-7", "operator"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        error_code(app.pull(&token).await, 401).await,
        "invalid_token"
    );
    let token = token_of(&app, "kiosk-7", "new-pass", "K1").await;
    assert_eq!(error_code(app.pull(&token).await, 403).await, "forbidden");
    let (ok, _, err) = app.cli(&["user", "role", "nobody", "kiosk"]).await;
    assert!(!ok && err.contains("no user named"), "{err}");
}
