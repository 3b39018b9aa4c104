//! `/health` follows the database: 200 → 503 while it is unreachable → 200
//! again, without restarting the server.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn health_follows_the_database() {
    let app = spawn_behind_proxy().await;
    let res = app
        .http
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let proxy = app.proxy.as_ref().unwrap();
    proxy.cut();
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.health_status().await == 503
        })
        .await,
        "503 while the database is down"
    );
    let res = app
        .http
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["database"], "down");
    // Other endpoints say the database is unavailable, as an error body,
    // and when to come back (kiosks do not all retry at once).
    let res = app.login("admin", "admin123", "K1").await;
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(error_code(res, 503).await, "unavailable");

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.health_status().await == 200
        })
        .await,
        "200 once it is back"
    );
    assert_eq!(app.login("admin", "admin123", "K1").await.status(), 200);
}
