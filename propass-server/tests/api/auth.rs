//! Login, throttling, tokens, refresh, device binding and revocation.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use propass_protocol::{DeviceId, Role};
use propass_server::auth::tokens::{ISSUER, KIOSK_AUDIENCE};
use propass_server::auth::{Claims, JwtKeys, TokenType};
use propass_server::config::{Config, Secret};
use serde_json::{json, Value};

use crate::helpers::*;

fn keys() -> JwtKeys {
    let c = Config::new("unused", Secret::new(SECRET));
    JwtKeys::new(
        c.jwt_secret.expose(),
        c.token_ttl,
        c.device_token_ttl,
        c.refresh_grace,
    )
}

fn sign(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(device: &str, exp_offset_secs: i64) -> Claims {
    let now = Utc::now().timestamp();
    Claims {
        iss: ISSUER.into(),
        aud: KIOSK_AUDIENCE.into(),
        typ: TokenType::Login,
        sub: "admin".into(),
        uid: Some(1),
        role: Some(Role::Admin),
        device_id: DeviceId::parse(device).unwrap(),
        iat: now - 3600,
        exp: now + exp_offset_secs,
        jti: uuid::Uuid::new_v4().to_string(),
        epoch: 0,
    }
}

#[tokio::test]
async fn login_returns_a_token_bound_to_the_device() {
    let app = spawn_app().await;
    let res = app.login("admin", "admin123", "KIOSK_A").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["user"]["username"], "admin");
    assert_eq!(body["user"]["role"], "admin");
    let claims = keys()
        .verify(body["token"].as_str().unwrap(), Utc::now())
        .unwrap();
    assert_eq!(claims.device_id.as_str(), "KIOSK_A");
    assert_eq!(claims.sub, "admin");
    assert!(!claims.jti.is_empty());
    // Default lifetime leaves the seed client (refresh under one day left) days of slack.
    assert!(
        claims.exp - claims.iat >= 2 * 24 * 3600,
        "token lifetime too short for offline kiosks"
    );
}

#[tokio::test]
async fn wrong_credentials_get_401_with_the_error_body() {
    let app = spawn_app().await;
    assert_eq!(
        error_code(app.login("admin", "nope", "K").await, 401).await,
        "invalid_credentials"
    );
    assert_eq!(
        error_code(app.login("nobody", "admin123", "K").await, 401).await,
        "invalid_credentials"
    );
    // A bad device id is a client error, not a crash.
    let res = app.login("admin", "admin123", "has spaces").await;
    assert_eq!(error_code(res, 400).await, "malformed_json");
}

#[tokio::test]
async fn repeated_failures_are_throttled() {
    let app = spawn_with(|c| c.login_max_failures = 3).await;
    for _ in 0..3 {
        assert_eq!(app.login("admin", "bad", "K").await.status(), 401);
    }
    let res = app.login("admin", "admin123", "K").await;
    assert!(
        res.headers().get("retry-after").is_some(),
        "429 says when to retry"
    );
    assert_eq!(error_code(res, 429).await, "rate_limited");
    // Another user from the same address is throttled too (per-address limit).
    app.add_user("op", "op-pass", Role::Operator).await;
    assert_eq!(app.login("op", "op-pass", "K").await.status(), 429);
}

#[tokio::test]
async fn bad_tokens_get_401() {
    let app = spawn_app().await;
    let body = json!({"device_id": "K", "queue": []});
    let url = format!("{}/api/sync/push", app.base);

    let res = app.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(error_code(res, 401).await, "missing_token");

    let expired = sign(&claims("K", -10), SECRET);
    assert_eq!(
        error_code(app.push(&expired, &body).await, 401).await,
        "token_expired"
    );

    let foreign = sign(&claims("K", 3600), "another-secret-another-secret-another");
    assert_eq!(
        error_code(app.push(&foreign, &body).await, 401).await,
        "invalid_token"
    );

    // alg "none" with no signature.
    let payload = serde_json::to_vec(&claims("K", 3600)).unwrap();
    let b64 = |b: &[u8]| {
        use std::fmt::Write;
        // base64url without padding, by hand to avoid a dependency.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                let _ = s.write_char(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        s
    };
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&payload)
    );
    assert_eq!(
        error_code(app.push(&none, &body).await, 401).await,
        "invalid_token"
    );

    let res = app
        .http
        .get(format!("{}/api/sync/pull", app.base))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 401).await, "invalid_token");
}

#[tokio::test]
async fn refresh_accepts_current_and_recently_expired_tokens_only() {
    let app = spawn_with(|c| c.refresh_grace = Duration::from_secs(3600)).await;
    let url = format!("{}/api/auth/refresh", app.base);
    let token = app.token("K").await;

    let res = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let fresh = body["token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, token);
    assert_eq!(app.remaining(&fresh, app.add_client("C", 5).await).await, 5);

    let within = sign(&claims("K", -600), SECRET);
    assert_eq!(
        app.http
            .post(&url)
            .bearer_auth(&within)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let beyond = sign(&claims("K", -7200), SECRET);
    let res = app
        .http
        .post(&url)
        .bearer_auth(&beyond)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 401).await, "token_expired");

    let foreign = sign(&claims("K", 3600), "another-secret-another-secret-another");
    let res = app
        .http
        .post(&url)
        .bearer_auth(&foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 401).await, "invalid_token");
}

#[tokio::test]
async fn a_token_only_works_for_its_own_device() {
    let app = spawn_app().await;
    let client = app.add_client("C", 5).await;
    let token = app.token("KIOSK_A").await;
    let res = app
        .push(
            &token,
            &json!({"device_id": "KIOSK_B", "queue": [seed_item(1, client, "04AB12CD")]}),
        )
        .await;
    assert_eq!(error_code(res, 403).await, "device_mismatch");
    assert_eq!(app.ledger_count().await, 0);

    let url = format!(
        "ws://127.0.0.1:{}/ws?token={token}&device_id=KIOSK_B",
        app.port
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("websocket for another device must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_revoked_device_is_shut_out() {
    let app = spawn_app().await;
    let client = app.add_client("C", 5).await;
    let token = app.token("KIOSK_R").await;
    app.revoke("KIOSK_R").await;

    let res = app
        .push(
            &token,
            &json!({"device_id": "KIOSK_R", "queue": [seed_item(1, client, "04AB12CD")]}),
        )
        .await;
    assert_eq!(error_code(res, 403).await, "device_revoked");
    assert_eq!(app.ledger_count().await, 0);

    let res = app
        .http
        .post(format!("{}/api/auth/refresh", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 403).await, "device_revoked");

    assert_eq!(
        error_code(app.login("admin", "admin123", "KIOSK_R").await, 403).await,
        "device_revoked"
    );

    let url = format!(
        "ws://127.0.0.1:{}/ws?token={token}&device_id=KIOSK_R",
        app.port
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_err());

    // Other kiosks keep working.
    let other = app.token("KIOSK_OK").await;
    assert_eq!(app.remaining(&other, client).await, 5);
}
