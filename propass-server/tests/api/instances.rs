//! Several server instances on one PostgreSQL: a push taken by one reaches
//! the kiosks and dashboards connected to another.

use std::time::Duration;

use propass_server::config::{Config, Secret};
use propass_server::startup::Application;
use serde_json::{json, Value};

use crate::helpers::*;

/// Another instance of the server on `app`'s database, listening for
/// changes; its base URL.
async fn second_instance(app: &TestApp) -> (String, propass_server::startup::Stopper) {
    second_instance_with(app, |_| {}).await
}

async fn second_instance_with(
    app: &TestApp,
    tweak: impl FnOnce(&mut Config),
) -> (String, propass_server::startup::Stopper) {
    let mut config = Config::new(app.db_url.clone(), Secret::new(SECRET));
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = Some(1);
    config.db_pool_size = 4;
    tweak(&mut config);
    let other = Application::build(config).expect("second instance");
    let base = format!("http://127.0.0.1:{}", other.port());
    let (stopper, state) = (other.stopper(), other.state());
    tokio::spawn(other.run_until_stopped());
    let listening = eventually(Duration::from_secs(10), || async {
        std::sync::atomic::AtomicBool::load(
            &state.metrics.listening,
            std::sync::atomic::Ordering::Relaxed,
        )
    })
    .await;
    assert!(listening, "the second instance listens for changes");
    (base, stopper)
}

/// A dashboard's live stream on `base`, logged in as the admin.
struct Dashboard {
    events: reqwest::Response,
    seen: String,
}

impl Dashboard {
    /// Logs in on `base` and opens the stream; returns once it said hello.
    async fn open(app: &TestApp, base: &str) -> Self {
        let cookie = app.admin_cookie_at(base).await;
        let events = app
            .http
            .get(format!("{base}/api/admin/events"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(events.status(), 200);
        let mut d = Self {
            events,
            seen: String::new(),
        };
        d.wait_for("event: hello").await;
        d
    }

    /// Reads the stream until `text` has come (10 s at most).
    async fn wait_for(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.seen.contains(text) {
            let left = deadline
                .checked_duration_since(std::time::Instant::now())
                .unwrap_or_else(|| panic!("{text:?} never reached the dashboard"));
            let chunk = tokio::time::timeout(left, self.events.chunk())
                .await
                .expect("in time")
                .unwrap()
                .expect("the stream stays open");
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A kiosk's WebSocket on the server at `port`.
async fn kiosk_socket(port: &str, token: &str, device: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{port}/ws?token={token}&device_id={device}");
    tokio_tungstenite::connect_async(url)
        .await
        .expect("the kiosk connects")
        .0
}

/// K1 pushes its `n`th copy of `client` (50 units) through `base`: K1
/// hears its copy and its sync, K2 the client's new quota (never the badge
/// UID), the dashboard the copy — wherever each of them is connected.
async fn push_reaches_everyone(
    app: &TestApp,
    base: &str,
    k1: (&str, &mut Ws),
    k2: &mut Ws,
    dashboard: &mut Dashboard,
    (client, n): (i64, i64),
) {
    let uid = "04A1A1A1A1A1A1";
    let res = app
        .http
        .post(format!("{base}/api/sync/push"))
        .bearer_auth(k1.0)
        .json(&json!({"device_id": "K1", "queue": [seed_item(n, client, uid)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let ledger_id = body["data"][0]["ledger_id"].as_i64().unwrap();
    let mine = collect_until(k1.1, Duration::from_secs(10), |got| {
        got.iter().any(|m| m["type"] == "sync_completed")
    })
    .await;
    assert!(
        mine.iter()
            .any(|m| m["type"] == "copy_completed" && m["data"]["ledger_id"] == ledger_id),
        "{mine:?}"
    );
    let sync = mine.iter().find(|m| m["type"] == "sync_completed").unwrap();
    assert_eq!(
        (&sync["data"]["device_id"], &sync["data"]["synced"]),
        (&json!("K1"), &json!(1)),
        "{mine:?}"
    );
    let charged = |m: &Value| m["type"] == "quota_updated" && m["data"]["remaining"] == 50 - n;
    let theirs = collect_until(k2, Duration::from_secs(10), |got| got.iter().any(charged)).await;
    assert!(theirs.iter().any(charged), "{theirs:?}");
    assert!(
        !theirs.iter().any(|m| m.to_string().contains(uid)),
        "{theirs:?}"
    );
    dashboard.wait_for(&format!("\"id\":{ledger_id}")).await;
    let frame = dashboard
        .seen
        .split("\n\n")
        .find(|f| f.starts_with("event: copy") && f.contains(&format!("\"id\":{ledger_id}")))
        .unwrap();
    let data: Value = serde_json::from_str(
        frame
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data["device_id"], "K1");
}

#[tokio::test]
async fn a_push_on_one_instance_reaches_kiosks_and_dashboards_on_another() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 50).await;
    let k1 = app.token("K1").await;
    let k2 = app.token("K2").await;
    // Registered before the other instance listens: the only news of K3
    // it can get is K3's socket opening below.
    let k3 = app.token("K3").await;
    let (other, stopper) = second_instance(&app).await;

    // K1 on the first instance; K2 and a dashboard on the other.
    let mut ws1 = app.ws("/ws", &k1, "K1").await;
    let mut ws2 = kiosk_socket(other.rsplit(':').next().unwrap(), &k2, "K2").await;
    let mut dashboard = Dashboard::open(&app, &other).await;
    push_reaches_everyone(
        &app,
        &app.base,
        (&k1, &mut ws1),
        &mut ws2,
        &mut dashboard,
        (acme, 1),
    )
    .await;
    // K1 pushing through the other instance (a load balancer's choice)
    // hears of it on its socket here all the same.
    push_reaches_everyone(
        &app,
        &other,
        (&k1, &mut ws1),
        &mut ws2,
        &mut dashboard,
        (acme, 2),
    )
    .await;

    // A kiosk coming online on the first instance is shown on the other's
    // dashboard.
    assert!(
        !dashboard.seen.contains("\"device_id\":\"K3\""),
        "{}",
        dashboard.seen
    );
    let _ws3 = app.ws("/ws", &k3, "K3").await;
    dashboard.wait_for("\"device_id\":\"K3\"").await;
    stopper.stop().await;
}

/// The login throttle counts an account's failures on every instance
/// together: guessing on several does not multiply the attempts.
#[tokio::test]
async fn the_login_throttle_holds_across_instances() {
    let app = spawn_with(|c| c.login_max_failures = 3).await;
    let (other, stopper) = second_instance_with(&app, |c| c.login_max_failures = 3).await;
    let guess = |base: String| {
        let http = app.http.clone();
        async move {
            http.post(format!("{base}/api/auth/login"))
                .json(&json!({"username": ADMIN.0, "password": "wrong", "device_id": "K1"}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(guess(app.base.clone()).await.status(), 401);
    assert_eq!(guess(app.base.clone()).await.status(), 401);
    assert_eq!(guess(other.clone()).await.status(), 401);
    let res = guess(other.clone()).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(res, 429).await,
        "rate_limited",
        "the other instance counted the first one's failures"
    );
    assert_eq!(
        app.login(ADMIN.0, ADMIN.1, "K1").await.status(),
        429,
        "even the right password waits on the first one"
    );
    stopper.stop().await;
}

#[tokio::test]
async fn the_shipped_haproxy_config_fronts_two_instances() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 50).await;
    let k1 = app.token("K1").await;
    let k2 = app.token("K2").await;
    let (other, stopper) = second_instance(&app).await;
    let lb_port = propass_test_support::free_port();
    let dir = propass_test_support::TempDir::new("propass-haproxy").unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let servers = [
        format!("127.0.0.1:{}", app.port),
        other.trim_start_matches("http://").to_owned(),
    ];
    let shipped = include_str!("../../../deploy/haproxy.cfg");
    std::fs::write(
        &cfg,
        propass_test_support::haproxy_config(shipped, lb_port, None, &servers),
    )
    .unwrap();
    let _haproxy = propass_test_support::spawn_haproxy(&cfg).unwrap();
    let lb = format!("http://127.0.0.1:{lb_port}");
    let up = eventually(Duration::from_secs(15), || async {
        app.http
            .get(format!("{lb}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "haproxy answers /health");

    // Two kiosks and a dashboard, all through the balancer (leastconn
    // spreads them over both instances).
    let port = lb_port.to_string();
    let mut ws1 = kiosk_socket(&port, &k1, "K1").await;
    let mut ws2 = kiosk_socket(&port, &k2, "K2").await;
    let mut dashboard = Dashboard::open(&app, &lb).await;
    push_reaches_everyone(
        &app,
        &lb,
        (&k1, &mut ws1),
        &mut ws2,
        &mut dashboard,
        (acme, 1),
    )
    .await;
    stopper.stop().await;
}
