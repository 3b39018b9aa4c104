//! `cargo xtask chaos [--rounds N] [--seed S] [--kiosks K] [--quota Q]`: the
//! real server and K real agents (each at an emulated PN532 through the real
//! libnfc) making copies and recording operations while each round injects a
//! fault picked from the seed — an agent killed mid-write or at rest, or
//! stopped cleanly (its leases given back), the server restarted or killed,
//! PostgreSQL restarted, answers lost after the server committed, the
//! network cut, a card lifted mid-write, an operator top-up, lease
//! reclaim or lowered lease target, a kiosk's disk full before a copy or filling up while the blank
//! is written (each kiosk's state is on a tmpfs of its own, where this
//! machine makes private mount namespaces) — and one round in four a second
//! fault of the world around the kiosks on top. The client's quota (Q,
//! by default half of what the rounds ask) runs out, so leases run dry and
//! copies are refused, offline and online. After every
//! round, with the faults healed and every agent synced, it checks:
//!
//! - every operation a kiosk acknowledged, and every card that may exist, is
//!   in the ledger exactly once (unverified cards flagged);
//! - the client was charged once per ledger row;
//! - `quotas.leased` is the sum of the leases, and `used + leased <= total`
//!   but for copies that had to be recorded without a unit (each flagged
//!   overdraft, each one unit past the total).
//!
//! A violation prints the seed and round that reproduce it and exits 1.
//! Needs `DATABASE_URL`, `PROPASS_SERVER_BIN` and `PROPASS_AGENT_BIN`, and
//! for the PostgreSQL restarts `PROPASS_PG_RESTART` (the command, one
//! argument per line) — all set by xtask (with an outside `DATABASE_URL`,
//! PostgreSQL is not restarted).

// Chaos runs on the real clock.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use propass_nfc::emulator::{Emulator, Tag, TagKind};
use propass_test_support::{
    free_port, FaultProxy, Mode, ProcessGuard, SmallDisk, TempDir, TestDatabase,
};
use serde_json::{json, Value};

const SECRET: &str = "chaos-secret-chaos-secret-chaos-secret-0123";
const BADGE: [u8; 4] = [0x04, 0xAB, 0x12, 0xCD];

/// SplitMix64: the seed decides every choice.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    None,
    KillMidWrite,
    KillAtRest,
    RestartServer,
    RestartDatabase,
    LoseAnswers,
    CutNetwork,
    LiftCard,
    TopUp,
    ReclaimLease,
    ShrinkLease,
    FullDisk,
    FullDiskMidWrite,
    KillServer,
    StopAgent,
}

const FAULTS: [Fault; 15] = [
    Fault::None,
    Fault::KillMidWrite,
    Fault::KillAtRest,
    Fault::RestartServer,
    Fault::RestartDatabase,
    Fault::LoseAnswers,
    Fault::CutNetwork,
    Fault::LiftCard,
    Fault::TopUp,
    Fault::ReclaimLease,
    Fault::ShrinkLease,
    Fault::FullDisk,
    Fault::FullDiskMidWrite,
    Fault::KillServer,
    Fault::StopAgent,
];

/// Faults of the world around the kiosks, one of which may come on top of
/// a round's first fault.
const SECOND: [Fault; 8] = [
    Fault::RestartServer,
    Fault::KillServer,
    Fault::RestartDatabase,
    Fault::LoseAnswers,
    Fault::CutNetwork,
    Fault::TopUp,
    Fault::ReclaimLease,
    Fault::ShrinkLease,
];

/// Whether two faults can be injected in one round: one proxy mode at a
/// time, one way for the server to go, and no operator command while
/// PostgreSQL restarts (it would fail, as an operator's would).
fn compatible(a: Fault, b: Fault) -> bool {
    use Fault::{
        CutNetwork, KillServer, LoseAnswers, ReclaimLease, RestartDatabase, RestartServer,
        ShrinkLease, TopUp,
    };
    let clash = |x, y| (a, b) == (x, y) || (a, b) == (y, x);
    a != b
        && !clash(LoseAnswers, CutNetwork)
        && !clash(RestartServer, KillServer)
        && !clash(RestartDatabase, TopUp)
        && !clash(RestartDatabase, ReclaimLease)
        && !clash(RestartDatabase, ShrinkLease)
}

fn opt(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

struct Server {
    bin: String,
    db_url: String,
    port: u16,
    proc_: Option<ProcessGuard>,
}

impl Server {
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("DATABASE_URL", &self.db_url)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "propass-server {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn start(&mut self) -> Result<(), String> {
        let proc_ = ProcessGuard::spawn(
            Command::new(&self.bin)
                .args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
                .env("DATABASE_URL", &self.db_url)
                .env("PROPASS_JWT_SECRET", SECRET)
                .env("PROPASS_LOG", "warn")
                .env("PROPASS_LEASE_TARGET", "5")
                .env("PROPASS_LEASE_LOW_WATER", "3")
                .env("PROPASS_DEVICE_PUSHES_PER_MINUTE", "0")
                .env("PROPASS_DEVICE_ITEMS_PER_DAY", "0")
                .stdin(Stdio::null()),
            &self.bin,
        )?;
        self.proc_ = Some(proc_);
        let url = format!("http://127.0.0.1:{}/health", self.port);
        until(Duration::from_secs(30), "the server to start", || async {
            reqwest::get(&url)
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.terminate();
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.kill();
        }
    }
}

/// Polls `check` until it holds, at most `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("timed out waiting for {what}"))
}

struct Kiosk {
    dir: TempDir,
    /// Its state directory's own filesystem, to fill up.
    disk: Option<SmallDisk>,
    bin: String,
    server_url: String,
    emu: Emulator,
    proc_: Option<ProcessGuard>,
    http: reqwest::Client,
    /// op_ids the kiosk acknowledged (recorded operations, made cards).
    acked: Vec<String>,
    /// Operations refused because its disk was full.
    disk_refusals: u64,
    /// Operations refused for want of units (lease and quota spent).
    quota_refusals: u64,
}

impl Kiosk {
    async fn start(&mut self) -> Result<(), String> {
        let sock = self.dir.path().join("agent.sock");
        let bin = std::path::PathBuf::from(&self.bin);
        let mut cmd = match &mut self.disk {
            Some(disk) => disk.command(&bin),
            None => Command::new(&bin),
        };
        let proc_ = ProcessGuard::spawn(
            cmd.args(["run", "--state-dir"])
                .arg(self.dir.path().join("state"))
                .arg("--socket")
                .arg(&sock)
                .args(["--server", &self.server_url])
                .env("PROPASS_LOG", "warn")
                .env("PROPASS_READER", self.emu.connstring())
                .env("PROPASS_CARD_TIMEOUT_SECS", "10")
                .env("PROPASS_RECONNECT_MAX_MS", "200")
                .env("PROPASS_SYNC_INTERVAL_SECS", "3600")
                // Its heartbeat tries a write: a freed disk is noticed soon.
                .env("PROPASS_HEARTBEAT_SECS", "5")
                .env_remove("PROPASS_AGENT_CONFIG")
                .stdin(Stdio::null()),
            &self.bin,
        )?;
        self.proc_ = Some(proc_);
        let http = self.http.clone();
        until(Duration::from_secs(30), "an agent to start", || async {
            http.get("http://agent/v1/status").send().await.is_ok()
        })
        .await
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.kill();
        }
    }

    /// SIGTERM: a clean stop, which gives the kiosk's leases back.
    fn stop(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.terminate();
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let mut req = self.http.request(method, format!("http://agent{path}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.ok()?;
        let status = res.status().as_u16();
        Some((status, res.json().await.ok()?))
    }

    async fn pending(&self) -> Option<i64> {
        let (_, v) = self.call(reqwest::Method::GET, "/v1/status", None).await?;
        v["queue"]["pending"].as_i64()
    }

    /// A UI-reported operation; acknowledged ones are remembered.
    async fn record(&mut self, client: i64, n: u64) -> Result<(), String> {
        let body = json!({"type": "copy", "client_id": client, "uid": format!("05{n:08X}")});
        match self
            .call(reqwest::Method::POST, "/v1/operations", Some(body))
            .await
        {
            Some((201, v)) => {
                self.acked.push(
                    v["operation"]["op_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
                Ok(())
            }
            Some((409, v)) if v["error"]["code"] == "quota_exhausted" => {
                self.quota_refusals += 1;
                Ok(())
            }
            // Its disk is full: nothing recorded.
            Some((503, v)) if v["error"]["code"] == "recording_unavailable" => {
                self.disk_refusals += 1;
                Ok(())
            }
            None => Ok(()), // the agent died under the request: nothing acknowledged
            Some((s, v)) => Err(format!("record answered {s}: {v}")),
        }
    }
}

/// A copy under way: whether it asks for a blank (else it was refused
/// first), and its answer to come.
struct Started {
    wants_blank: bool,
    answer: tokio::task::JoinHandle<Option<(u16, Value)>>,
    /// The kiosk's event stream, from after the step seen.
    events: reqwest::Response,
}

/// Starts a copy and returns once the agent asks for a blank or refused.
async fn begin_copy(k: &Kiosk, client: i64) -> Result<Started, String> {
    let mut events = k
        .http
        .get("http://agent/v1/events")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let http = k.http.clone();
    let copy = tokio::spawn(async move {
        let res = http
            .post("http://agent/v1/copy")
            .json(&json!({"client_id": client}))
            .send()
            .await
            .ok()?;
        Some((res.status().as_u16(), res.json::<Value>().await.ok()?))
    });
    let step = until_step(&mut events, &["waiting_for_blank", "failed"]).await?;
    Ok(Started {
        wants_blank: step == "waiting_for_blank",
        answer: copy,
        events,
    })
}

/// Reads the event stream until one of `steps` (20 s at most); which one.
async fn until_step(events: &mut reqwest::Response, steps: &[&str]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = String::new();
    loop {
        if let Some(step) = steps
            .iter()
            .find(|s| buf.contains(&format!("\"step\":\"{s}\"")))
        {
            return Ok((*step).to_owned());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.chunk()).await {
            Ok(Ok(Some(chunk))) => buf.push_str(&String::from_utf8_lossy(&chunk)),
            _ => return Err(format!("none of the steps {steps:?}: {buf}")),
        }
    }
}

/// What a round's copy at the reader came to.
enum Copied {
    /// Answered: the op_id of a card that may exist (made or unverified).
    Card(String),
    /// Refused or failed with nothing written.
    Nothing,
    /// Refused before a blank: the kiosk's disk is full.
    DiskRefused,
    /// Made, and recorded once the kiosk's disk takes writes again.
    RecordedLater(String),
}

async fn copy_at_reader(k: &Kiosk, client: i64, blank: u32) -> Result<Copied, String> {
    k.emu.place(Some(Tag::classic(TagKind::Classic1k, BADGE)));
    let copy = begin_copy(k, client).await?;
    if copy.wants_blank {
        k.emu
            .place(Some(Tag::classic(TagKind::Gen1a, blank.to_be_bytes())));
    }
    copied(copy.answer.await.map_err(|e| e.to_string())?)
}

/// A copy during which the kiosk's disk fills up: as soon as the agent
/// says it is writing the blank (its intent is stored), the disk is filled.
/// The card is recorded at once if the fill came too late, or once the disk
/// is freed.
async fn copy_as_the_disk_fills(k: &mut Kiosk, client: i64, blank: u32) -> Result<Copied, String> {
    k.emu.place(Some(Tag::classic(TagKind::Classic1k, BADGE)));
    let mut copy = begin_copy(k, client).await?;
    if copy.wants_blank {
        k.emu
            .place(Some(Tag::classic(TagKind::Gen1a, blank.to_be_bytes())));
        until_step(&mut copy.events, &["writing", "failed"]).await?;
        if let Some(disk) = k.disk.as_mut() {
            disk.fill()?;
        }
    }
    copied(copy.answer.await.map_err(|e| e.to_string())?)
}

/// What a copy's answer says was made.
fn copied(answer: Option<(u16, Value)>) -> Result<Copied, String> {
    match answer {
        Some((201, v)) => Ok(Copied::Card(
            v["operation"]["op_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )),
        Some((422, v)) if v["error"]["code"] == "copy_unverified" => {
            Ok(Copied::Card(named_operation(&v)))
        }
        // The disk refused the card's record: it names the card, recorded
        // once the disk takes writes again.
        Some((503, v))
            if v["error"]["code"] == "recording_unavailable"
                && v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("(operation ")) =>
        {
            Ok(Copied::RecordedLater(named_operation(&v)))
        }
        // The disk refused the card's intent: nothing was touched.
        Some((503, v)) if v["error"]["code"] == "recording_unavailable" => Ok(Copied::DiskRefused),
        Some((409, _)) => Ok(Copied::Nothing),
        Some((s, v)) => Err(format!("copy answered {s}: {v}")),
        None => Err("the agent died under a copy".into()),
    }
}

/// The operation an error message names: "(operation <uuid>, …" or
/// "(operation <uuid>)".
fn named_operation(v: &Value) -> String {
    let m = v["error"]["message"].as_str().unwrap_or_default();
    m.split("(operation ")
        .nth(1)
        .and_then(|r| r.split([',', ')']).next())
        .unwrap_or_default()
        .to_owned()
}

#[derive(Default)]
struct Tally {
    faults: BTreeMap<String, u64>,
    cards: u64,
    operations: u64,
    unverified_expected: u64,
    killed_mid_write: u64,
    /// Copies refused for a full disk, before a blank.
    disk_refused: u64,
    /// Cards made as the disk filled, recorded once it was freed.
    recorded_later: u64,
    /// Copies refused before a blank for want of units.
    copies_refused: u64,
    /// Rounds with two faults at once.
    double_rounds: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    propass_agent::tls::install_crypto_provider();
    let rounds = opt("--rounds", 100)?;
    let seed = opt("--seed", 1)?;
    let kiosks_n = opt("--kiosks", 3)?.clamp(1, 8);
    let agent_bin = std::env::var("PROPASS_AGENT_BIN")
        .map_err(|_| "PROPASS_AGENT_BIN is not set (run cargo xtask chaos)")?;
    let server_bin =
        std::env::var("PROPASS_SERVER_BIN").map_err(|_| "PROPASS_SERVER_BIN is not set")?;
    let base = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let pg_restart: Option<Vec<String>> = std::env::var("PROPASS_PG_RESTART")
        .ok()
        .map(|v| v.lines().map(str::to_owned).collect());

    let database = TestDatabase::create_in(&base, "propass_chaos").await?;
    let mut server = Server {
        bin: server_bin,
        db_url: database.url().to_owned(),
        port: free_port(),
        proc_: None,
    };
    server.cli(&["migrate"])?;
    // Each round asks 2 units of each kiosk: by default the quota covers
    // half of that (top-ups add some), so leases run dry and kiosks refuse
    // copies offline as well as online.
    let quota = opt("--quota", rounds * kiosks_n + 20)?;
    let client: i64 = server
        .cli(&["client", "add", "Chaos", "--quota", &quota.to_string()])?
        .trim()
        .parse()
        .map_err(|_| "bad client id")?;
    server.start().await?;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port)).await;

    let mut kiosks = Vec::new();
    for i in 0..kiosks_n {
        let dir = TempDir::new(&format!("propass-chaos-{i}")).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .unix_socket(dir.path().join("agent.sock"))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| e.to_string())?;
        std::fs::create_dir(dir.path().join("state")).map_err(|e| e.to_string())?;
        let disk = SmallDisk::new(&dir.path().join("state"), 64 << 20)?;
        if disk.is_none() && i == 0 {
            eprintln!("chaos: WARNING: no private mount namespace here (run as root): the FullDisk fault does nothing");
        }
        let mut k = Kiosk {
            disk,
            dir,
            bin: agent_bin.clone(),
            server_url: proxy.url(),
            emu: Emulator::start(None).map_err(|e| e.to_string())?,
            proc_: None,
            http,
            acked: Vec::new(),
            disk_refusals: 0,
            quota_refusals: 0,
        };
        k.start().await?;
        let code: Value = serde_json::from_str(&server.cli(&[
            "device",
            "enroll",
            "--clients",
            &client.to_string(),
            "--json",
        ])?)
        .map_err(|e| e.to_string())?;
        match k
            .call(
                reqwest::Method::POST,
                "/v1/enroll",
                Some(json!({"code": code["code"]})),
            )
            .await
        {
            Some((200, _)) => {}
            other => return Err(format!("enrollment failed: {other:?}")),
        }
        match k.call(reqwest::Method::POST, "/v1/sync", None).await {
            Some((200, _)) => {}
            other => return Err(format!("first sync failed: {other:?}")),
        }
        kiosks.push(k);
    }

    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut serial: u64 = 0;
    let mut overdrafts = 0;
    let started = Instant::now();
    for round in 1..=rounds {
        let first = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        let victim = rng.below(kiosks_n) as usize;
        let mut faults = vec![first];
        if rng.below(4) == 0 {
            let second = SECOND[rng.below(SECOND.len() as u64) as usize];
            if compatible(first, second) {
                faults.push(second);
            }
        }
        for f in &faults {
            *tally.faults.entry(format!("{f:?}")).or_default() += 1;
        }
        if faults.len() > 1 {
            tally.double_rounds += 1;
        }
        let has = |f: Fault| faults.contains(&f);
        let fail = |e: String| {
            format!("round {round} (seed {seed}, faults {faults:?} on kiosk {victim}): {e}")
        };

        // PostgreSQL restarts while the kiosks work (the server answers 503
        // meanwhile and must recover by itself).
        let mut pg_restarting = None;
        for fault in faults.iter().copied() {
            match fault {
                Fault::RestartDatabase => {
                    if let Some(argv) = pg_restart.clone() {
                        pg_restarting = Some(tokio::task::spawn_blocking(move || {
                            Command::new(&argv[0])
                                .args(&argv[1..])
                                .stdin(Stdio::null())
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .status()
                                .map(|s| s.success())
                        }));
                    }
                }
                Fault::LoseAnswers => proxy.set(Mode::SwallowAnswers),
                Fault::CutNetwork => proxy.set(Mode::Cut),
                Fault::RestartServer => server.stop(),
                Fault::KillServer => server.kill(),
                Fault::StopAgent => {
                    // A clean stop gives the kiosk's leases back; it starts
                    // again (and pulls new ones) before the round's copies.
                    kiosks[victim].stop();
                    kiosks[victim].start().await.map_err(fail)?;
                }
                Fault::FullDisk => {
                    if let Some(disk) = kiosks[victim].disk.as_mut() {
                        disk.fill().map_err(fail)?;
                    }
                }
                Fault::TopUp => {
                    server
                        .cli(&[
                            "quota",
                            "add",
                            &client.to_string(),
                            "10",
                            "--reason",
                            "chaos top-up",
                        ])
                        .map_err(fail)?;
                }
                Fault::ReclaimLease => {
                    let (_, st) = kiosks[victim]
                        .call(reqwest::Method::GET, "/v1/status", None)
                        .await
                        .ok_or_else(|| fail("no status".into()))?;
                    let device = st["device_id"].as_str().unwrap_or_default().to_owned();
                    server.cli(&["device", "reclaim", &device]).map_err(fail)?;
                }
                Fault::ShrinkLease => {
                    // An operator lowers the client's lease target, or sets
                    // the server's back: kiosks give back what they hold
                    // above it and have not spent, at their next sync.
                    let id = client.to_string();
                    let args: &[&str] = match rng.below(3) {
                        0 => &["client", "lease", &id, "--target", "1"],
                        1 => &["client", "lease", &id, "--target", "3"],
                        _ => &["client", "lease", &id, "--default"],
                    };
                    server.cli(args).map_err(fail)?;
                }
                _ => {}
            }
        }

        for (i, k) in kiosks.iter_mut().enumerate() {
            // A UI-reported operation, then a copy at the reader.
            serial += 1;
            k.record(client, serial).await.map_err(fail)?;
            tally.operations += 1;
            serial += 1;
            let blank = 0x1000_0000 | serial as u32;
            if i == victim && has(Fault::KillMidWrite) {
                k.emu.place(Some(Tag::classic(TagKind::Classic1k, BADGE)));
                k.emu.with_field(|f| f.freeze_on_write = Some(0));
                let copy = begin_copy(k, client).await.map_err(fail)?;
                if !copy.wants_blank {
                    k.emu.with_field(|f| f.freeze_on_write = None);
                    let _ = copy.answer.await;
                    continue; // refused before a blank: no units left
                }
                k.emu
                    .place(Some(Tag::classic(TagKind::Gen1a, blank.to_be_bytes())));
                let emu = &k.emu;
                until(Duration::from_secs(20), "the write to start", || async {
                    emu.with_field(|f| f.frozen)
                })
                .await
                .map_err(fail)?;
                k.kill();
                k.emu.thaw();
                let _ = copy.answer.await;
                tally.unverified_expected += 1;
                tally.killed_mid_write += 1;
                tally.cards += 1;
                k.start().await.map_err(fail)?;
                continue;
            }
            if i == victim && has(Fault::LiftCard) {
                k.emu.with_field(|f| f.remove_on_write = Some(4));
            }
            let copy = if i == victim && has(Fault::FullDiskMidWrite) {
                copy_as_the_disk_fills(k, client, blank).await
            } else {
                copy_at_reader(k, client, blank).await
            };
            match copy.map_err(fail)? {
                Copied::Card(op) => {
                    if i == victim && has(Fault::LiftCard) {
                        tally.unverified_expected += 1;
                    }
                    k.acked.push(op);
                    tally.cards += 1;
                }
                Copied::RecordedLater(op) => {
                    k.acked.push(op);
                    tally.cards += 1;
                    tally.recorded_later += 1;
                }
                Copied::DiskRefused => tally.disk_refused += 1,
                Copied::Nothing => tally.copies_refused += 1,
            }
            k.emu.with_field(|f| f.remove_on_write = None);
            if i == victim && has(Fault::KillAtRest) {
                k.kill();
                k.start().await.map_err(fail)?;
            }
        }

        // Heal, then let every kiosk sync.
        if let Some(r) = pg_restarting {
            match r.await {
                Ok(Ok(true)) => {}
                other => return Err(fail(format!("PostgreSQL did not restart: {other:?}"))),
            }
        }
        proxy.set(Mode::Pass);
        if has(Fault::RestartServer) || has(Fault::KillServer) {
            server.start().await.map_err(fail)?;
        }
        if has(Fault::FullDisk) || has(Fault::FullDiskMidWrite) {
            let k = &mut kiosks[victim];
            if let Some(disk) = k.disk.as_mut() {
                disk.free().map_err(fail)?;
                // Cards the disk would not record are queued before the
                // kiosk says its storage works again.
                let k = &kiosks[victim];
                until(
                    Duration::from_secs(30),
                    "the kiosk to write again",
                    || async {
                        k.call(reqwest::Method::GET, "/v1/status", None)
                            .await
                            .is_some_and(|(_, v)| v["storage_error"].is_null())
                    },
                )
                .await
                .map_err(fail)?;
            }
        }
        for k in &kiosks {
            until(Duration::from_secs(60), "a kiosk to sync", || async {
                let _ = k.call(reqwest::Method::POST, "/v1/sync", None).await;
                k.pending().await == Some(0)
            })
            .await
            .map_err(fail)?;
        }
        let now = check(&server.db_url, client, &kiosks, &tally)
            .await
            .map_err(fail)?;
        if now > overdrafts {
            // Not a violation (each is flagged, one unit past the total),
            // but which faults lead to one is worth seeing.
            eprintln!(
                "chaos: round {round}: {} copy(ies) charged with no unit free (faults {faults:?} on kiosk {victim})",
                now - overdrafts
            );
        }
        overdrafts = now;
        if round % 10 == 0 || round == rounds {
            eprintln!(
                "chaos: round {round}/{rounds}: {} operations, {} cards, {:.0} s",
                tally.operations,
                tally.cards,
                started.elapsed().as_secs_f64()
            );
        }
    }
    for k in &mut kiosks {
        k.kill();
    }
    server.stop();
    println!();
    println!(
        "chaos    seed {seed}, {rounds} rounds, {kiosks_n} kiosks, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "         {} operations tried, {} cards made ({} unverified: {} kiosks killed mid-write, {} cards lifted mid-write)",
        tally.operations,
        tally.cards,
        tally.unverified_expected,
        tally.killed_mid_write,
        tally.unverified_expected - tally.killed_mid_write
    );
    println!(
        "         full disks: {} operations and {} copies refused before anything was made, {} cards recorded once the disk was freed",
        kiosks.iter().map(|k| k.disk_refusals).sum::<u64>(),
        tally.disk_refused,
        tally.recorded_later
    );
    let faults: Vec<String> = tally
        .faults
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect();
    println!(
        "         units spent: {} operations and {} copies refused before anything was made (quota {quota}, topped up by 10 at each TopUp)",
        kiosks.iter().map(|k| k.quota_refusals).sum::<u64>(),
        tally.copies_refused
    );
    println!(
        "rounds   by fault injected ({} rounds with two at once): {}",
        tally.double_rounds,
        faults.join(", ")
    );
    println!("         copies charged with no unit free (flagged overdraft): {overdrafts}");
    println!("checks   after every round: ledger == every acknowledged operation and card, once; charged once; leases == quotas.leased; used - overdrafts + leased <= total");
    println!("         0 violations");
    Ok(())
}

/// The invariants, read from PostgreSQL.
/// Answers the copies flagged overdraft so far.
async fn check(db_url: &str, client: i64, kiosks: &[Kiosk], tally: &Tally) -> Result<i64, String> {
    let (pg, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let q = |sql: &'static str| {
        let pg = &pg;
        async move {
            pg.query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| format!("{sql}: {e}"))
        }
    };
    let rows = pg
        .query(
            "SELECT op_id::text FROM copies WHERE op_id IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let ledger: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let unique: HashSet<&String> = ledger.iter().collect();
    if unique.len() != ledger.len() {
        return Err("an operation is in the ledger twice".into());
    }
    for k in kiosks {
        for op in &k.acked {
            if !unique.contains(op) {
                return Err(format!("acknowledged operation {op} is not in the ledger"));
            }
        }
    }
    // Every acknowledged operation and card, and every card whose kiosk was
    // killed mid-write (recorded at its next start, acknowledged to no one).
    let acked: usize = kiosks.iter().map(|k| k.acked.len()).sum();
    let expected = acked as u64 + tally.killed_mid_write;
    if ledger.len() as u64 != expected {
        return Err(format!(
            "the ledger holds {} rows; the kiosks acknowledged {acked} and {} were killed mid-write",
            ledger.len(),
            tally.killed_mid_write
        ));
    }
    let unverified = q("SELECT count(*) FROM copies WHERE unverified").await?;
    if unverified != tally.unverified_expected as i64 {
        return Err(format!(
            "{unverified} unverified copies in the ledger, {} cards in doubt made",
            tally.unverified_expected
        ));
    }
    let row = pg
        .query_one(
            "SELECT total, used, leased, (SELECT count(*) FROM copies WHERE client_id = $1), \
                    (SELECT coalesce(sum(units), 0)::int8 FROM leases WHERE client_id = $1), \
                    (SELECT count(*) FROM copies WHERE client_id = $1 AND overdraft) \
             FROM quotas WHERE client_id = $1",
            &[&client],
        )
        .await
        .map_err(|e| e.to_string())?;
    let (total, used, leased, copies, held, overdrafts): (i64, i64, i64, i64, i64, i64) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    if used != copies {
        return Err(format!("charged {used} for {copies} ledger rows"));
    }
    if leased != held {
        return Err(format!("quotas.leased {leased} but the leases hold {held}"));
    }
    // An overdraft is a copy charged when no unit was free: each may take
    // `used` one past the total, and nothing else may.
    if used - overdrafts + leased > total {
        return Err(format!(
            "used {used} (of which {overdrafts} flagged overdraft) + leased {leased} > total {total}"
        ));
    }
    if copies != ledger.len() as i64 {
        return Err("a ledger row has no op_id".into());
    }
    Ok(overdrafts)
}
