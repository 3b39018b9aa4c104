//! Starts the real server against a fresh database, and talks to it.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::{SinkExt, StreamExt};
use propass_protocol::{ClientId, DeviceId, DeviceStatus, Role};
use propass_server::config::{Config, Secret};
use propass_server::db;
use propass_server::startup::Application;
pub use propass_test_support::{eventually, FaultProxy, TestDatabase};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const ADMIN: (&str, &str) = ("admin", "admin123");

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub struct TestApp {
    pub base: String,
    pub port: u16,
    pub db_url: String,
    pub http: reqwest::Client,
    pub proxy: Option<FaultProxy>,
    /// Where `/metrics` is served, when the test asked for it.
    pub metrics_port: Option<u16>,
    /// The running server's state (its counters).
    pub state: actix_web::web::Data<propass_server::state::AppState>,
    /// Stops the running server gracefully.
    pub stopper: propass_server::startup::Stopper,
    /// Dropped (with the server's connections) when the test ends.
    _database: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_full(false, true, tweak).await
}

/// Like [`spawn_with`], for a server meant not to reach its database (its
/// change listener never listens, so nothing waits for it).
pub async fn spawn_unreachable(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_full(false, false, tweak).await
}

/// Like [`spawn_with`], with the server's database connections going through a [`FaultProxy`].
pub async fn spawn_behind_proxy() -> TestApp {
    spawn_full(true, false, |c| c.db_timeout = Duration::from_secs(2)).await
}

/// `proxied`: through a [`FaultProxy`]; `wait_listener`: the start waits
/// until the change listener listens (not for a database meant to fail).
async fn spawn_full(
    proxied: bool,
    wait_listener: bool,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    // The tests' HTTP client (reqwest with rustls) needs the process's provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let database = TestDatabase::create("propass_test").await;
    let url = database.url().to_owned();
    tokio::task::spawn_blocking(move || db::run_migrations(&url))
        .await
        .unwrap()
        .expect("migrations");

    let (server_db_url, proxy) = if proxied {
        let proxy = FaultProxy::start(database.host_port()).await;
        let url = database.url().replacen(
            database.host_port(),
            &format!("127.0.0.1:{}", proxy.port()),
            1,
        );
        (url, Some(proxy))
    } else {
        (database.url().to_owned(), None)
    };

    let mut config = Config::new(server_db_url, Secret::new(SECRET));
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.workers = Some(2);
    config.db_pool_size = 4;
    tweak(&mut config);
    let app = Application::build(config).expect("build app");
    let port = app.port();
    let metrics_port = app.metrics_port();
    let state = app.state();
    let stopper = app.stopper();
    tokio::spawn(app.run_until_stopped());

    let test = TestApp {
        base: format!("http://127.0.0.1:{port}"),
        port,
        db_url: database.url().to_owned(),
        http: reqwest::Client::new(),
        proxy,
        metrics_port,
        state,
        stopper,
        _database: database,
    };
    test.add_user(ADMIN.0, ADMIN.1, Role::Admin).await;
    if wait_listener {
        // Changes reach open sockets by event: the listener is up first.
        let listening = eventually(Duration::from_secs(10), || async {
            std::sync::atomic::AtomicBool::load(
                &test.state.metrics.listening,
                std::sync::atomic::Ordering::Relaxed,
            )
        })
        .await;
        assert!(listening, "the change listener did not start");
    }
    test
}

impl TestApp {
    /// Runs `changes` behind the server's back (no notification), then
    /// drops its listener's connection (a PostgreSQL failover, say): what
    /// it learns of them, it learns by catching up.
    pub async fn change_unheard(&self, changes: &[String]) {
        let mut conn = self.db().await;
        let drop_listener = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'";
        for sql in changes.iter().map(String::as_str).chain([drop_listener]) {
            diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), &mut conn)
                .await
                .unwrap();
        }
    }

    pub async fn db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db_url)
            .await
            .expect("connect to test database")
    }

    pub async fn add_user(&self, name: &str, password: &str, role: Role) {
        let pw = password.to_owned();
        let hash =
            tokio::task::spawn_blocking(move || propass_server::auth::password::hash_password(&pw))
                .await
                .unwrap()
                .unwrap();
        db::users::create(&mut self.db().await, name, &hash, role)
            .await
            .unwrap();
    }

    /// A client, served by every device known so far (as before devices had
    /// assignments; the assignment tests narrow it).
    pub async fn add_client(&self, name: &str, quota: i64) -> i64 {
        let mut conn = self.db().await;
        let id = db::clients::create(&mut conn, name, quota, false)
            .await
            .unwrap();
        for d in db::devices::list(&mut conn, None).await.unwrap() {
            db::devices::assign(&mut conn, &d.device_id, &[id], &[])
                .await
                .unwrap();
        }
        id
    }

    /// Makes `device` active, serving every client so far (an operator's
    /// approval of a password-login kiosk).
    pub async fn approve(&self, device: &str) {
        let mut conn = self.db().await;
        let d = DeviceId::parse(device).unwrap();
        let all: Vec<i64> = db::clients::list(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        db::devices::assign(&mut conn, &d, &all, &[]).await.unwrap();
        db::devices::set_status(
            &mut conn,
            &d,
            DeviceStatus::Active,
            &[DeviceStatus::Pending, DeviceStatus::Active],
            chrono::Utc::now(),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    }

    pub async fn add_quota(&self, client: i64, n: i64) -> i64 {
        let change =
            db::clients::add_quota(&mut self.db().await, ClientId::new(client).unwrap(), n)
                .await
                .unwrap();
        match change {
            db::clients::QuotaChange::Applied(remaining) => remaining,
            other => panic!("quota change refused: {other:?}"),
        }
    }

    pub async fn revoke(&self, device: &str) {
        db::devices::set_status(
            &mut self.db().await,
            &DeviceId::parse(device).unwrap(),
            DeviceStatus::Revoked,
            &[DeviceStatus::Active, DeviceStatus::Pending],
            chrono::Utc::now(),
        )
        .await
        .unwrap()
        .expect("device exists")
        .expect("device was not revoked");
    }

    /// Rows in the ledger.
    pub async fn ledger_count(&self) -> i64 {
        use propass_server::db::schema::copies;
        copies::table
            .count()
            .get_result(&mut self.db().await)
            .await
            .unwrap()
    }

    /// Ledger rows flagged as overdraft.
    pub async fn overdraft_count(&self) -> i64 {
        use propass_server::db::schema::copies;
        copies::table
            .filter(copies::overdraft.eq(true))
            .count()
            .get_result(&mut self.db().await)
            .await
            .unwrap()
    }

    /// Every ledger row's local id and sector map, by local id.
    pub async fn ledger_sectors(&self) -> Vec<(i64, Option<String>)> {
        use propass_server::db::schema::copies;
        copies::table
            .select((copies::local_id, copies::sectors))
            .order(copies::local_id)
            .load(&mut self.db().await)
            .await
            .unwrap()
    }

    /// `GET /api/sync/pull` with `token`.
    pub async fn pull(&self, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/api/sync/pull", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `POST /api/auth/refresh` with `token`.
    pub async fn refresh(&self, token: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/auth/refresh", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `GET /api/sync/pull`'s entry for `client`.
    pub async fn pull_entry(&self, token: &str, client: i64) -> Value {
        self.pull_entry_asking(token, client, "").await
    }

    /// `GET /api/sync/pull{query}` as `token`: the whole answer (200).
    pub async fn pull_answer(&self, token: &str, query: &str) -> Value {
        let res = self
            .http
            .get(format!("{}/api/sync/pull{query}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Like [`Self::pull_entry`], with a query string (`?lease=true`).
    pub async fn pull_entry_asking(&self, token: &str, client: i64, query: &str) -> Value {
        self.pull_answer(token, query).await["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["client_id"] == client)
            .expect("client in pull")
            .clone()
    }

    /// Runs the server binary's operator command `args` against the test
    /// database; answers (success, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_fed(args, "").await
    }

    /// [`Self::cli`] with `input` on its standard input.
    pub async fn cli_fed(&self, args: &[&str], input: &str) -> (bool, String, String) {
        use std::io::Write;
        use std::process::Stdio;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_propass-server"));
        cmd.args(args)
            .arg("--database-url")
            .arg(&self.db_url)
            .env_remove("PROPASS_CONFIG")
            .env("PROPASS_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let input = input.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn()?;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
            child.wait_with_output()
        })
        .await
        .unwrap()
        .expect("run propass-server");
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// The admin's dashboard session cookie (`name=value`) on the server at
    /// `base` (this one, or another instance or binary on its database).
    pub async fn admin_cookie_at(&self, base: &str) -> String {
        let res = self
            .http
            .post(format!("{base}/api/admin/login"))
            .json(&json!({"username": ADMIN.0, "password": ADMIN.1}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "the admin logs in on {base}");
        let cookie = res.headers()["set-cookie"].to_str().unwrap();
        cookie.split(';').next().unwrap().to_owned()
    }

    pub async fn login(&self, user: &str, password: &str, device: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/auth/login", self.base))
            .json(&json!({"username": user, "password": password, "device_id": device}))
            .send()
            .await
            .unwrap()
    }

    /// Logs the admin in on `device`, approves the device (serving every
    /// client so far) and returns the token.
    pub async fn token(&self, device: &str) -> String {
        let res = self.login(ADMIN.0, ADMIN.1, device).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        self.approve(device).await;
        body["token"].as_str().unwrap().to_owned()
    }

    /// `POST /api/devices/heartbeat` with `body`, as `token`.
    pub async fn post_heartbeat(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/devices/heartbeat", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The text of `/metrics` on the metrics address.
    pub async fn scrape_metrics(&self) -> String {
        let port = self.metrics_port.expect("metrics served");
        self.http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn push(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/sync/push", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Pushes and expects HTTP 200; returns the per-item results.
    pub async fn push_ok(&self, token: &str, body: &Value) -> Vec<Value> {
        let res = self.push(token, body).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["success"], true);
        body["data"].as_array().unwrap().clone()
    }

    /// The remaining quota of `client` according to `GET /api/sync/pull`.
    pub async fn remaining(&self, token: &str, client: i64) -> i64 {
        self.pull_entry(token, client).await["remaining"]
            .as_i64()
            .unwrap()
    }

    pub async fn health_status(&self) -> u16 {
        self.http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Opens the WebSocket the way the seed client does: `?token=…&device_id=…`.
    pub async fn ws(&self, path: &str, token: &str, device: &str) -> Ws {
        let url = format!(
            "ws://127.0.0.1:{}{path}?token={token}&device_id={device}",
            self.port
        );
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        ws
    }
}

/// An error body: checks the status and returns the code.
pub async fn error_code(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status(), status, "unexpected status");
    let body: Value = res.json().await.expect("error body is JSON");
    assert_eq!(body["success"], false);
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    body["error"]["code"].as_str().unwrap().to_owned()
}

/// A copy item the way the seed client builds it.
pub fn seed_item(id: i64, client: i64, uid: &str) -> Value {
    json!({"id": id, "type": "copy", "payload": {"client_id": client, "uid": uid, "status": "pending"}})
}

/// The next JSON text message, skipping control frames, within `timeout`.
pub async fn next_json(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => {
                return Some(serde_json::from_str(&t).expect("server sends JSON"))
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Collects text messages until `pred` has seen what it wants or the deadline passes.
pub async fn collect_until(
    ws: &mut Ws,
    timeout: Duration,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while !done(&got) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match next_json(ws, left).await {
            Some(v) => got.push(v),
            None => break,
        }
    }
    got
}

pub async fn send_json(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Waits for the server to close `ws`; the close code.
pub async fn server_closes(
    ws: &mut Ws,
    timeout: Duration,
) -> Option<tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode> {
    loop {
        match tokio::time::timeout(timeout, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected the server to close the socket, got {other:?}"),
        }
    }
}
