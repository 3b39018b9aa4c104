//! `/health` follows the database: 200 → 503 while it is unreachable → 200
//! again, without restarting the server.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// With `db_queue_max` requests already waiting for a database connection, a
/// new request is answered 503 at once with a jittered `Retry-After`
/// (counted in `/metrics`), while the operators' dashboard is never shed;
/// the waiting one is served once a connection frees up.
#[tokio::test]
async fn a_saturated_server_sheds_new_requests_at_once() {
    let app = spawn_with(|c| {
        c.db_pool_size = 1;
        c.db_queue_max = 1;
        c.db_timeout = Duration::from_secs(60);
    })
    .await;
    app.add_client("A", 5).await;
    let token = app.token("K1").await;
    let held = app.state.pool.get().await.unwrap();
    let waiting = tokio::spawn({
        let (http, base, token) = (app.http.clone(), app.base.clone(), token.clone());
        async move {
            let res = http
                .get(format!("{base}/api/sync/pull"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }
    });
    let queued = eventually(Duration::from_secs(10), || async {
        app.state.pool.status().waiting >= 1
    })
    .await;
    assert!(queued, "the first pull waits for the connection");

    let res = app.pull(&token).await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((5..=10).contains(&retry), "Retry-After {retry}");
    assert_eq!(error_code(res, 503).await, "unavailable");
    assert_eq!(
        AtomicU64::load(&app.state.metrics.shed, Ordering::Relaxed),
        1
    );
    let page = app
        .http
        .get(format!("{}/admin", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "operators still get their dashboard");
    assert!(!waiting.is_finished(), "the waiting pull still waits");
    drop(held);
    assert_eq!(waiting.await.unwrap(), 200, "and is served");
}
