//! Several server instances on one PostgreSQL: a push taken by one reaches
//! the kiosks and dashboards connected to another.

use std::time::Duration;

use propass_server::config::{Config, Secret};
use propass_server::startup::Application;
use serde_json::{json, Value};

use crate::helpers::*;

/// Another instance of the server on `app`'s database; its base URL.
fn second_instance(app: &TestApp) -> (String, propass_server::startup::Stopper) {
    let mut config = Config::new(app.db_url.clone(), Secret::new(SECRET));
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = Some(1);
    config.db_pool_size = 4;
    let other = Application::build(config).expect("second instance");
    let base = format!("http://127.0.0.1:{}", other.port());
    let stopper = other.stopper();
    tokio::spawn(other.run_until_stopped());
    (base, stopper)
}

#[tokio::test]
async fn a_push_on_one_instance_reaches_kiosks_and_dashboards_on_another() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 50).await;
    let k1 = app.token("K1").await;
    let k2 = app.token("K2").await;
    let (other, stopper) = second_instance(&app);
    let wait_listening = eventually(Duration::from_secs(10), || async {
        app.state
            .metrics
            .listening
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    assert!(wait_listening);

    // K1 on the first instance; K2 and a dashboard on the other.
    let mut ws1 = app.ws("/ws", &k1, "K1").await;
    let port = other.rsplit(':').next().unwrap();
    let (mut ws2, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{port}/ws?token={k2}&device_id=K2"
    ))
    .await
    .expect("K2 connects to the other instance");
    let login = app
        .http
        .post(format!("{other}/api/admin/login"))
        .json(&json!({"username": ADMIN.0, "password": ADMIN.1}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut events = app
        .http
        .get(format!("{other}/api/admin/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    // The other instance listens too before the push is made.
    let mut buf = String::new();
    while !buf.contains("event: hello") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }

    let queue = json!([seed_item(1, acme, "04A1A1A1A1A1A1")]);
    let results = app
        .push_ok(&k1, &json!({"device_id": "K1", "queue": queue}))
        .await;
    let ledger_id = results[0]["ledger_id"].as_i64().unwrap();

    // The pusher hears its copy on its own instance.
    let mine = collect_until(&mut ws1, Duration::from_secs(10), |got| {
        got.iter().any(|m| m["type"] == "copy_completed")
    })
    .await;
    assert!(
        mine.iter()
            .any(|m| m["type"] == "copy_completed" && m["data"]["ledger_id"] == ledger_id),
        "{mine:?}"
    );
    // K2, on the other instance, hears the client's new quota, never the UID.
    let theirs = collect_until(&mut ws2, Duration::from_secs(10), |got| {
        got.iter()
            .any(|m| m["type"] == "quota_updated" && m["data"]["remaining"] == 49)
    })
    .await;
    assert!(
        theirs
            .iter()
            .any(|m| m["type"] == "quota_updated" && m["data"]["remaining"] == 49),
        "{theirs:?}"
    );
    assert!(
        !theirs
            .iter()
            .any(|m| m.to_string().contains("04A1A1A1A1A1A1")),
        "{theirs:?}"
    );
    // The dashboard there shows the copy.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !buf.contains(&format!("\"id\":{ledger_id}")) {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("the copy reaches the other instance's dashboard");
        let chunk = tokio::time::timeout(left, events.chunk())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    let frame = buf
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
    stopper.stop().await;
}

/// deploy/haproxy.cfg with a plain-HTTP bind on `port` and `servers` as
/// its backends: the shipped example, run.
fn haproxy_config(port: u16, servers: &[String]) -> String {
    let shipped = include_str!("../../../deploy/haproxy.cfg");
    let mut out = String::new();
    let mut servers_written = false;
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            out.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if t.starts_with("server ") {
            if !servers_written {
                for (i, s) in servers.iter().enumerate() {
                    out.push_str(&format!(
                        "    server propass{} {s} check inter 2s fall 2 rise 1\n",
                        i + 1
                    ));
                }
                servers_written = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[tokio::test]
async fn the_shipped_haproxy_config_fronts_two_instances() {
    assert!(
        std::process::Command::new("haproxy")
            .arg("-v")
            .output()
            .is_ok(),
        "haproxy is missing: cargo xtask test installs it (Debian's haproxy)"
    );
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 50).await;
    let k1 = app.token("K1").await;
    let k2 = app.token("K2").await;
    let (other, stopper) = second_instance(&app);
    let lb_port = propass_test_support::free_port();
    let dir = propass_test_support::TempDir::new("propass-haproxy").unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let servers = [
        format!("127.0.0.1:{}", app.port),
        other.trim_start_matches("http://").to_owned(),
    ];
    std::fs::write(&cfg, haproxy_config(lb_port, &servers)).unwrap();
    let _haproxy = propass_test_support::ProcessGuard::spawn(
        std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(std::process::Stdio::null()),
        "haproxy",
    )
    .unwrap();
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
    let ws = |token: &str, device: &str| {
        let url = format!("ws://127.0.0.1:{lb_port}/ws?token={token}&device_id={device}");
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .expect("a WebSocket through haproxy")
                .0
        }
    };
    let mut ws1 = ws(&k1, "K1").await;
    let mut ws2 = ws(&k2, "K2").await;
    let login = app
        .http
        .post(format!("{lb}/api/admin/login"))
        .json(&json!({"username": ADMIN.0, "password": ADMIN.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut events = app
        .http
        .get(format!("{lb}/api/admin/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let mut buf = String::new();
    while !buf.contains("event: hello") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }

    let res = app
        .http
        .post(format!("{lb}/api/sync/push"))
        .bearer_auth(&k1)
        .json(&json!({"device_id": "K1", "queue": [seed_item(1, acme, "04B2B2B2B2B2B2")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let ledger_id = body["data"][0]["ledger_id"].as_i64().unwrap();

    let mine = collect_until(&mut ws1, Duration::from_secs(10), |got| {
        got.iter().any(|m| m["type"] == "copy_completed")
    })
    .await;
    assert!(
        mine.iter().any(|m| m["data"]["ledger_id"] == ledger_id),
        "{mine:?}"
    );
    let theirs = collect_until(&mut ws2, Duration::from_secs(10), |got| {
        got.iter()
            .any(|m| m["type"] == "quota_updated" && m["data"]["remaining"] == 49)
    })
    .await;
    assert!(
        theirs
            .iter()
            .any(|m| m["type"] == "quota_updated" && m["data"]["remaining"] == 49),
        "{theirs:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !buf.contains(&format!("\"id\":{ledger_id}")) {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("the copy reaches the dashboard through haproxy");
        let chunk = tokio::time::timeout(left, events.chunk())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    stopper.stop().await;
}
