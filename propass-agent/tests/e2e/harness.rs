//! The real server and agent processes, each on its own database and
//! directory; the shared pieces (database, proxy, waiting, process guards)
//! come from propass-test-support.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use propass_agent::api::types::{EnrollRequest, EnrollResponse, QuotaView, StatusView};
pub use propass_test_support::private_mount_command;
pub use propass_test_support::{eventually, free_port, FaultProxy, Mode};
use propass_test_support::{ProcessGuard, SmallDisk, TempDir, TestDatabase};
use serde_json::{json, Value};

pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-0123456789";

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_propass-agent"))
}

pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PROPASS_SERVER_BIN") {
        return p.into();
    }
    let p = agent_bin().with_file_name("propass-server");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo xtask test / cargo xtask e2e do)",
        p.display()
    );
    p
}

/// A propass-server process on its own fresh database.
pub struct Server {
    pub port: u16,
    pub db_url: String,
    dir: TempDir,
    child: Option<ProcessGuard>,
    /// Dropped (with every connection to it) when the test ends.
    _database: TestDatabase,
}

impl Server {
    pub async fn new() -> Self {
        propass_agent::tls::install_crypto_provider();
        let database = TestDatabase::create("propass_e2e").await;
        let mut s = Self {
            port: free_port(),
            db_url: database.url().to_owned(),
            dir: TempDir::new("propass-e2e-server").unwrap(),
            child: None,
            _database: database,
        };
        s.cli(&["migrate"], None);
        s.cli(
            &[
                "user",
                "add",
                "admin",
                "--role",
                "admin",
                "--password-stdin",
            ],
            Some("admin123\n"),
        );
        s.start().await;
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs an operator command; returns stdout.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new(server_bin())
            .args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("PROPASS_LOG", "warn")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "propass-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A client, served by every kiosk known so far.
    pub fn add_client(&self, name: &str, quota: i64) -> i64 {
        let v: Value = serde_json::from_str(&self.cli(
            &[
                "client",
                "add",
                name,
                "--quota",
                &quota.to_string(),
                "--json",
            ],
            None,
        ))
        .unwrap();
        let id = v["id"].as_i64().unwrap();
        let devices: Value =
            serde_json::from_str(&self.cli(&["device", "list", "--json"], None)).unwrap();
        for d in devices.as_array().unwrap() {
            let d = d["device_id"].as_str().unwrap();
            self.cli(&["device", "assign", d, "--add", &id.to_string()], None);
        }
        id
    }

    /// A one-time enrollment code (what an operator gives a new kiosk) for a
    /// kiosk serving every client so far.
    pub fn enrollment_code(&self) -> String {
        let clients: Value =
            serde_json::from_str(&self.cli(&["client", "list", "--json"], None)).unwrap();
        let ids: Vec<String> = clients
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].to_string())
            .collect();
        let mut args = vec!["device", "enroll", "--json"];
        let joined = ids.join(",");
        if !ids.is_empty() {
            args.extend(["--clients", joined.as_str()]);
        }
        let v: Value = serde_json::from_str(&self.cli(&args, None)).unwrap();
        v["code"].as_str().unwrap().to_owned()
    }

    /// The client's row of `client list --json` (total, used, leased, remaining).
    pub fn client_row(&self, client: i64) -> Value {
        let v: Value =
            serde_json::from_str(&self.cli(&["client", "list", "--json"], None)).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == client)
            .unwrap()
            .clone()
    }

    /// Sets how many units each kiosk holds in lease for `client` (0: none,
    /// the kiosks spend the free units optimistically).
    pub fn lease(&self, client: i64, target: u32) {
        self.cli(
            &[
                "client",
                "lease",
                &client.to_string(),
                "--target",
                &target.to_string(),
            ],
            None,
        );
    }

    /// `device`'s row in the operators' fleet view (`device list --json`).
    pub fn fleet_row(&self, device: &str) -> Value {
        let rows: Value =
            serde_json::from_str(&self.cli(&["device", "list", "--json"], None)).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["device_id"] == device)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Copies charged to `client`.
    pub fn used(&self, client: i64) -> i64 {
        self.client_row(client)["used"].as_i64().unwrap()
    }

    /// The units no kiosk holds in lease.
    pub fn remaining(&self, client: i64) -> i64 {
        self.client_row(client)["remaining"].as_i64().unwrap()
    }

    pub async fn start(&mut self) {
        self.start_with(&[]).await;
    }

    /// What the server logged since it last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the server with extra environment (TLS files, say); waits
    /// until it answers (over TLS: until it accepts connections).
    pub async fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none());
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(server_bin());
        cmd.args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
            .env("DATABASE_URL", &self.db_url)
            .env("PROPASS_JWT_SECRET", SECRET)
            .env("PROPASS_WORKERS", "2")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(ProcessGuard::new(cmd.spawn().unwrap()));
        let tls = env.iter().any(|(k, _)| *k == "PROPASS_TLS_CERT_FILE");
        let url = format!("{}/health", self.url());
        let port = self.port;
        let up = eventually(Duration::from_secs(30), || async {
            if tls {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            } else {
                reqwest::get(&url)
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            }
        })
        .await;
        assert!(up, "server did not start");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate();
        }
    }

    pub async fn query_i64(&self, sql: &str) -> i64 {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
    }

    pub async fn ledger_count(&self) -> i64 {
        self.query_i64("SELECT count(*) FROM copies").await
    }

    /// Copies in the ledger flagged unverified (in doubt).
    pub async fn unverified_count(&self) -> i64 {
        self.query_i64("SELECT count(*) FROM copies WHERE unverified")
            .await
    }

    /// The sector map of every copy in the ledger, oldest first.
    pub async fn ledger_sectors(&self) -> Vec<Option<String>> {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let rows = client
            .query("SELECT sectors FROM copies ORDER BY id", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, Option<String>>(0)).collect()
    }

    pub async fn ledger_op_ids(&self) -> Vec<String> {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let rows = client
            .query("SELECT op_id::text FROM copies", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    }
}

/// A propass-agent process.
pub struct Agent {
    dir: TempDir,
    /// Its state directory (inside `dir`).
    state: PathBuf,
    /// The filesystem of its own the state directory is on, if it has one
    /// (see [`Agent::on_small_disk`]).
    small_disk: Option<SmallDisk>,
    pub socket: PathBuf,
    server_url: String,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
    pub http: reqwest::Client,
}

impl Agent {
    pub async fn new(server_url: &str, env: &[(&str, &str)]) -> Self {
        Self::build(server_url, env, None)
            .await
            .expect("no disk of its own to make")
    }

    /// An agent of `server`, enrolled with a code its operator created, and
    /// synced.
    pub async fn enrolled(server: &Server) -> Self {
        let agent = Self::new(&server.url(), &[]).await;
        agent.enroll(server).await;
        assert_eq!(agent.sync().await.0, 200, "{}", agent.log());
        agent
    }

    /// An agent whose state directory is a filesystem of its own, `bytes`
    /// large (a tmpfs in a private mount namespace), that the test can fill
    /// ([`Agent::fill_disk`]) as a kiosk's disk fills up. `None` (with a
    /// warning) where this machine cannot make one: a private mount needs
    /// root or unprivileged user namespaces.
    pub async fn on_small_disk(server_url: &str, env: &[(&str, &str)], bytes: u64) -> Option<Self> {
        Self::build(server_url, env, Some(bytes)).await
    }

    async fn build(server_url: &str, env: &[(&str, &str)], disk: Option<u64>) -> Option<Self> {
        propass_agent::tls::install_crypto_provider();
        let dir = TempDir::new("propass-e2e-agent").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let small_disk = match disk {
            None => None,
            Some(bytes) => match SmallDisk::new(&state, bytes).unwrap() {
                Some(disk) => Some(disk),
                None => {
                    eprintln!(
                        "WARNING: SKIPPED: this machine makes no private mount namespace (run as root, or \
                         allow unprivileged user namespaces: sysctl kernel.apparmor_restrict_unprivileged_userns=0)"
                    );
                    return None;
                }
            },
        };
        // Outside the state directory: a private mount is not seen from here.
        let socket = dir.path().join("agent.sock");
        // No pooled connections: the agent restarts under our feet, and its idle
        // keep-alive connections close.
        let http = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut a = Self {
            dir,
            state,
            small_disk,
            socket,
            server_url: server_url.to_owned(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            http,
        };
        a.start().await;
        Some(a)
    }

    pub async fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = match &mut self.small_disk {
            None => Command::new(agent_bin()),
            Some(disk) => disk.command(&agent_bin()),
        };
        cmd.args(["run", "--state-dir"])
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--server", &self.server_url])
            .env("PROPASS_RECONNECT_MAX_MS", "500")
            .env("PROPASS_SYNC_INTERVAL_SECS", "3600")
            .env_remove("PROPASS_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
        let ok = eventually(Duration::from_secs(20), || async {
            self.try_status().await.is_some()
        })
        .await;
        assert!(ok, "agent did not start: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and returns at once (see [`Agent::wait_exit`]).
    pub fn sigterm(&self) {
        let c = self.child.as_ref().expect("agent running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }

    /// Sets (or with `None` removes) an environment variable for the next starts.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.extra_env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.extra_env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Waits (up to 20 s) for the agent to end by itself; its exit status.
    /// Async: the test's own tasks (the request that makes it end) run
    /// meanwhile.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("agent running");
        let mut status = None;
        let ended = eventually(Duration::from_secs(20), || {
            status = c.try_wait().ok().flatten();
            std::future::ready(status.is_some())
        })
        .await;
        assert!(ended, "the agent did not end: {}", self.log());
        self.child = None;
        status.expect("ended")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status and how long the agent took to exit.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("agent running");
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = t + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return (status, t.elapsed());
            }
            assert!(Instant::now() < deadline, "the agent ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("http://agent{path}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("agent answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn try_status(&self) -> Option<Value> {
        let res = self.http.get("http://agent/v1/status").send().await.ok()?;
        res.json().await.ok()
    }

    /// `GET /v1/status` as the local API's own type (the CLI reads it so).
    pub async fn status(&self) -> StatusView {
        serde_json::from_value(self.status_json().await).expect("a status")
    }

    /// `GET /v1/status` as it is on the wire, for what the type leaves out.
    pub async fn status_json(&self) -> Value {
        self.try_status().await.expect("status")
    }

    /// Enrolls the kiosk with a code `server`'s operator created.
    pub async fn enroll(&self, server: &Server) {
        let body = EnrollRequest {
            server_url: None,
            code: server.enrollment_code(),
        };
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/enroll",
                Some(serde_json::to_value(body).unwrap()),
            )
            .await;
        assert_eq!(s, 200, "enrollment failed: {v}");
        let _: EnrollResponse = serde_json::from_value(v).expect("an enrollment answer");
    }

    /// Runs `propass-agent ARGS` against this agent's socket: whether it
    /// succeeded, and its output and error.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(agent_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("PROPASS_AGENT_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn sync(&self) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/v1/sync", None).await
    }

    /// Records a copy; returns (status, body) — the body as it is on the
    /// wire, since refusals are checked by their error code.
    pub async fn record(&self, client: i64, uid: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/operations",
            Some(json!({"type": "copy", "client_id": client, "uid": uid})),
        )
        .await
    }

    pub async fn pending(&self) -> i64 {
        self.status().await.queue.pending
    }

    pub async fn remaining(&self, client: i64) -> Option<i64> {
        let (_, v) = self.call(reqwest::Method::GET, "/v1/quotas", None).await;
        let quotas: Vec<QuotaView> = serde_json::from_value(v).ok()?;
        Some(
            quotas
                .into_iter()
                .find(|q| q.client_id == client)?
                .remaining,
        )
    }

    pub fn db_path(&self) -> PathBuf {
        self.state.join("agent.db")
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Fills the agent's disk (see [`Agent::on_small_disk`]) to the last byte.
    pub fn fill_disk(&mut self) {
        self.small_disk
            .as_mut()
            .expect("a disk of its own")
            .fill()
            .unwrap();
    }

    /// Frees what [`Agent::fill_disk`] took.
    pub fn free_disk(&mut self) {
        self.small_disk
            .as_mut()
            .expect("a disk of its own")
            .free()
            .unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads a file's bytes (for "unchanged" checks).
pub fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}
