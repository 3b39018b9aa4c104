//! The scenarios the agent must survive.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::*;
use propass_test_support::TempDir;

fn uid(i: usize) -> String {
    format!("04{:08X}", i)
}

/// Server stopped, 500 copies recorded through the agent, server started:
/// all 500 in the ledger exactly once, without restarting the agent.
#[tokio::test]
async fn offline_copies_arrive_exactly_once_when_the_server_returns() {
    let mut server = Server::new().await;
    let client = server.add_client("Offline Corp", 1000);
    // Kiosks of this client may spend everything offline.
    server.lease(client, 1000);
    let agent = Agent::enrolled(&server).await;
    assert_eq!(agent.remaining(client).await, Some(1000));

    server.stop();
    for i in 0..500 {
        let (s, v) = agent.record(client, &uid(i)).await;
        assert_eq!(s, 201, "recording works offline: {v}");
    }
    let status = agent.status().await;
    assert_eq!(status.queue.pending, 500);
    assert!(!status.online);
    assert_eq!(
        agent.remaining(client).await,
        Some(500),
        "local quota counts the unsynced copies"
    );

    server.start().await;
    let back = Instant::now();
    let drained = eventually(Duration::from_secs(60), || async {
        agent.pending().await == 0
    })
    .await;
    assert!(
        drained,
        "the agent drained its queue by itself; log:\n{}",
        agent.log()
    );
    eprintln!(
        "offline backlog of 500 drained {:.2} s after the server came back",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(server.ledger_count().await, 500);
    assert_eq!(server.used(client), 500);
    assert_eq!(agent.remaining(client).await, Some(500));
}

/// The server is restored from a backup taken before a kiosk's last pushes:
/// the kiosk learns at its next pull that the ledger lost them, and sends
/// them again — counted once.
#[tokio::test]
async fn a_server_restored_from_a_backup_gets_back_what_it_lost() {
    let server = Server::new().await;
    let client = server.add_client("Restore AG", 100);
    let agent = Agent::enrolled(&server).await;
    for i in 0..3 {
        assert_eq!(agent.record(client, &uid(i)).await.0, 201);
    }
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(server.ledger_count().await, 3);
    // The restore: the copies and their charge are gone — at once, in one
    // statement, as a restore is (the agent may be syncing right now: its
    // socket's first pull, say).
    server
        .query_i64(
            "WITH d AS (DELETE FROM copies RETURNING 1), \
                  u AS (UPDATE quotas SET used = 0 RETURNING 1) \
             SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM u)",
        )
        .await;
    assert_eq!(agent.sync().await.0, 200);
    let back = eventually(Duration::from_secs(20), || async {
        server.ledger_count().await == 3 && agent.pending().await == 0
    })
    .await;
    assert!(
        back,
        "the kiosk sent its lost copies again: {}",
        agent.log()
    );
    assert_eq!(server.used(client), 3, "charged once each");
}

/// The agent's heartbeat reaches the operators' fleet view: its version,
/// its queue, its reader (looked for at start), online.
#[tokio::test]
async fn the_fleet_view_shows_the_agent_heartbeat() {
    let server = Server::new().await;
    let client = server.add_client("Fleet BV", 10);
    let agent = Agent::enrolled(&server).await;
    assert_eq!(agent.record(client, &uid(1)).await.0, 201);
    let device = agent.status().await.device_id;
    let row = || server.fleet_row(&device);
    let seen = eventually(Duration::from_secs(20), || async {
        let r = row();
        !r["health"]["heartbeat_at"].is_null()
            && r["health"]["pending"] == 0
            && r["health"]["last_error"].is_null()
    })
    .await;
    let r = row();
    // Not "never logged in" from before the enrollment until the next
    // heartbeat: a cleared error is told at once.
    assert!(seen, "{r}\n{}", agent.log());
    assert_eq!(r["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["health"]["online"], true);
    // This kiosk has no reader: it says so before any card is asked for.
    assert_eq!(r["health"]["reader"], "absent", "{r}");
    assert_eq!(r["health"]["flags"], json!(["reader_unplugged"]), "{r}");
}

/// The answer to a push is lost after the server committed it: the retry
/// must not count anything twice.
#[tokio::test]
async fn a_lost_push_answer_is_retried_without_double_counting() {
    let server = Server::new().await;
    let client = server.add_client("Lost Answer Ltd", 100);
    server.lease(client, 100);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port)).await;
    let agent = Agent::new(&proxy.url(), &[]).await;
    agent.enroll(&server).await;
    assert_eq!(agent.sync().await.0, 200);

    proxy.set(Mode::SwallowAnswers);
    for i in 0..50 {
        assert_eq!(agent.record(client, &uid(i)).await.0, 201);
    }
    let committed = eventually(Duration::from_secs(30), || async {
        server.ledger_count().await == 50
    })
    .await;
    assert!(committed, "the server committed the pushes");
    assert_eq!(agent.pending().await, 50, "the agent never saw an answer");

    proxy.set(Mode::Pass);
    let drained = eventually(Duration::from_secs(30), || async {
        agent.pending().await == 0
    })
    .await;
    assert!(
        drained,
        "retried after the network healed; log:\n{}",
        agent.log()
    );
    assert_eq!(
        server.ledger_count().await,
        50,
        "each copy is in the ledger once"
    );
    assert_eq!(server.used(client), 50, "and charged once");
}

/// SIGKILL while recording and while pushing: nothing acknowledged is lost,
/// nothing is counted twice, the database is intact.
#[tokio::test]
async fn a_killed_agent_loses_nothing_and_counts_nothing_twice() {
    let mut server = Server::new().await;
    let client = server.add_client("Crash Inc", 10_000);
    server.lease(client, 10_000);
    let mut agent = Agent::enrolled(&server).await;

    // 1. Killed while recording: requests in flight when the process dies.
    server.stop();
    let mut acked = Vec::new();
    let http = agent.http.clone();
    let recorder = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..100_000 {
            let body = json!({"type": "copy", "client_id": client, "uid": uid(i)});
            match http
                .post("http://agent/v1/operations")
                .json(&body)
                .send()
                .await
            {
                Ok(res) if res.status() == 201 => {
                    let v: serde_json::Value = res.json().await.unwrap();
                    acked.push(v["operation"]["op_id"].as_str().unwrap().to_owned());
                }
                _ => break,
            }
        }
        acked
    });
    assert!(
        eventually(Duration::from_secs(30), || async {
            agent.pending().await >= 150
        })
        .await
    );
    agent.kill9();
    acked.extend(recorder.await.unwrap());
    assert!(acked.len() >= 150);
    // The database survived the kill.
    propass_agent::store::Store::open(&agent.db_path()).expect("database intact after SIGKILL");

    // 2. Killed while pushing: the server is back, the first batch lands, kill.
    server.start().await;
    agent.start().await;
    let pushing = eventually(Duration::from_secs(30), || async {
        server.ledger_count().await > 0
    })
    .await;
    assert!(pushing);
    agent.kill9();

    agent.start().await;
    let drained = eventually(Duration::from_secs(60), || async {
        agent.pending().await == 0
    })
    .await;
    assert!(drained, "log:\n{}", agent.log());
    let status = agent.status().await;
    let recorded = status.queue.synced;
    let ledger = server.ledger_op_ids().await;
    assert_eq!(
        ledger.len() as i64,
        recorded,
        "every recorded operation is in the ledger, once"
    );
    let in_ledger: std::collections::HashSet<_> = ledger.into_iter().collect();
    for op in &acked {
        assert!(in_ledger.contains(op), "acknowledged operation {op} lost");
    }
    assert_eq!(server.used(client), recorded, "charged once each");
}

/// An operator's top-up reaches the agent's cache over the WebSocket (the
/// periodic sync is an hour away, so nothing else can bring it).
#[tokio::test]
async fn a_quota_top_up_reaches_the_agent_over_the_websocket() {
    let server = Server::new().await;
    let client = server.add_client("Top Up SA", 3);
    // No leases for this client: the kiosk spends what the server says is
    // left, so a top-up shows at once.
    server.lease(client, 0);
    let agent = Agent::enrolled(&server).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            agent.status().await.ws_connected
        })
        .await
    );

    // The server's LISTEN connection may still be starting: top up until one arrives.
    let mut latency = None;
    let mut expected = 3;
    for _ in 0..10 {
        expected = server
            .cli(
                &[
                    "quota",
                    "add",
                    &client.to_string(),
                    "7",
                    "--reason",
                    "order 7",
                ],
                None,
            )
            .trim()
            .parse::<i64>()
            .unwrap();
        let t = Instant::now();
        if eventually(Duration::from_secs(2), || async {
            agent.remaining(client).await == Some(expected)
        })
        .await
        {
            latency = Some(t.elapsed());
            break;
        }
    }
    let latency = latency.expect("the top-up reached the agent over the WebSocket");
    eprintln!(
        "quota top-up reached the agent's cache in {} ms",
        latency.as_millis()
    );
    assert_eq!(agent.remaining(client).await, Some(expected));
}

/// An operator who stops a kiosk serving a client is heard by the kiosk at
/// once: the server asks it over the WebSocket to pull (both periodic
/// syncs are an hour away, so nothing else can bring the change).
#[tokio::test]
async fn a_kiosk_hears_at_once_that_it_no_longer_serves_a_client() {
    let server = Server::new().await;
    let kept = server.add_client("Kept SA", 30);
    let dropped = server.add_client("Dropped SA", 30);
    let agent = Agent::new(
        &server.url(),
        &[("PROPASS_SYNC_INTERVAL_LIVE_SECS", "3600")],
    )
    .await;
    agent.enroll(&server).await;
    assert_eq!(agent.sync().await.0, 200);
    assert!(agent.remaining(kept).await.is_some());
    assert!(agent.remaining(dropped).await.is_some());
    assert!(
        eventually(Duration::from_secs(10), || async {
            agent.status().await.ws_connected
        })
        .await
    );
    // The server's change listener is up once its last LISTEN ran.
    assert!(
        eventually(Duration::from_secs(10), || async {
            server
                .query_i64(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND query = 'LISTEN propass_copies'",
                )
                .await
                > 0
        })
        .await,
        "the server's change listener did not start"
    );
    let device = agent.status().await.device_id;

    let t = Instant::now();
    server.cli(
        &[
            "device",
            "assign",
            &device,
            "--remove",
            &dropped.to_string(),
        ],
        None,
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            agent.remaining(dropped).await.is_none()
        })
        .await,
        "the kiosk still offers a client it no longer serves: {}",
        agent.log()
    );
    eprintln!(
        "the unassignment reached the kiosk in {} ms",
        t.elapsed().as_millis()
    );
    assert!(
        agent.remaining(kept).await.is_some(),
        "the other client stays"
    );
}

/// An error answer of the local API: checks its body, returns (status, code).
async fn code(res: reqwest::Response) -> (u16, String) {
    let s = res.status().as_u16();
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["success"], false);
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    (s, v["error"]["code"].as_str().unwrap().to_owned())
}

/// Garbage on the local API gets clear errors and changes nothing.
#[tokio::test]
async fn bad_local_requests_get_clear_errors_and_change_nothing() {
    let server = Server::new().await;
    let client = server.add_client("Careful GmbH", 10);
    let agent = Agent::enrolled(&server).await;

    // POSTs a raw body to /v1/operations; returns (status, error code).
    let http = &agent.http;
    let post = |body: &'static str, ctype: &'static str| async move {
        let req = http
            .post("http://agent/v1/operations")
            .header("content-type", ctype)
            .body(body);
        code(req.send().await.unwrap()).await
    };
    let json = "application/json";
    assert_eq!(
        post("{not json", json).await,
        (400, "malformed_json".into())
    );
    assert_eq!(
        post(r#"{"type":"copy","client_id":1,"uid":"zz"}"#, json)
            .await
            .0,
        400
    );
    assert_eq!(
        post(r#"{"type":"fax","client_id":1,"uid":"04AB12CD"}"#, json)
            .await
            .0,
        400
    );
    assert_eq!(
        post(
            r#"{"type":"copy","client_id":1,"uid":"04AB12CD","x":1}"#,
            json
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post("{}", "text/plain").await,
        (415, "unsupported_media_type".into())
    );
    let big = |n: usize| {
        format!(
            "{{\"type\":\"copy\",\"client_id\":1,\"uid\":\"{}\"}}",
            "A".repeat(n)
        )
    };
    let res = agent
        .http
        .post("http://agent/v1/operations")
        .header("content-type", "application/json")
        .body(big(200_000))
        .send()
        .await
        .unwrap();
    assert_eq!(code(res).await, (413, "payload_too_large".into()));
    // The limit is the configuration's: 10 KB fits the default (64 KiB),
    // not an agent told 4 KiB.
    let small = Agent::new(&server.url(), &[("PROPASS_API_MAX_BODY_BYTES", "4096")]).await;
    for (who, limit) in [(&agent, 400), (&small, 413)] {
        let res = who
            .http
            .post("http://agent/v1/operations")
            .header("content-type", "application/json")
            .body(big(10_000))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), limit, "a 10 KB body");
    }
    let res = agent.http.get("http://agent/v1/nope").send().await.unwrap();
    assert_eq!(code(res).await, (404, "not_found".into()));
    let (s, v) = agent.record(99_999, "04AB12CD").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("unknown_client"))
    );
    let (s, _) = agent
        .call(Method::GET, "/v1/queue?status=bogus", None)
        .await;
    assert_eq!(s, 400);

    let status = agent.status().await;
    let q = status.queue;
    assert_eq!(
        (q.pending, q.synced, q.failed),
        (0, 0, 0),
        "nothing was recorded"
    );
    assert_eq!(agent.remaining(client).await, Some(10));

    // A caller-chosen op_id makes recording idempotent: the retry of a lost answer.
    let op = uuid::Uuid::now_v7().to_string();
    let body = json!({"type": "copy", "client_id": client, "uid": "04AB12CD", "op_id": op});
    let (s1, v1) = agent
        .call(Method::POST, "/v1/operations", Some(body.clone()))
        .await;
    let (s2, v2) = agent.call(Method::POST, "/v1/operations", Some(body)).await;
    assert_eq!((s1, s2), (201, 200), "{v1} {v2}");
    assert_eq!(v2["duplicate"], true);
    assert_eq!(v1["operation"]["id"], v2["operation"]["id"]);
    let other = json!({"type": "copy", "client_id": client, "uid": "04FFFFFF", "op_id": op});
    let (s3, v3) = agent
        .call(Method::POST, "/v1/operations", Some(other))
        .await;
    assert_eq!((s3, v3["error"]["code"].as_str()), (409, Some("conflict")));
    let st = agent.status().await;
    assert_eq!(st.queue.pending + st.queue.synced, 1);
}

/// A corrupt or foreign database file: the agent refuses to start, says
/// why, and leaves the file as it was.
#[tokio::test]
async fn the_agent_refuses_a_corrupt_or_foreign_database() {
    for (what, content) in [
        (
            "garbage",
            b"PK\x03\x04 definitely not a database, a zip maybe".to_vec(),
        ),
        ("foreign", foreign_sqlite()),
    ] {
        let tmp = TempDir::new(&format!("propass-e2e-bad-{what}")).unwrap();
        let dir = tmp.path();
        let db = dir.join("agent.db");
        std::fs::write(&db, &content).unwrap();
        let out = std::process::Command::new(agent_bin())
            .args(["run", "--state-dir"])
            .arg(dir)
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .env_remove("PROPASS_AGENT_CONFIG")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{what}: the agent must refuse to start"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("refusing"),
            "{what}: clear message expected, got: {stderr}"
        );
        assert_eq!(
            bytes(&db),
            content,
            "{what}: the file must be left untouched"
        );
    }
}

/// A kiosk's disk went read-only (as ext4 does on an I/O error) and the
/// watchdog restarted the agent: it refuses to start, naming the directory
/// and why, rather than run a kiosk that cannot record a card.
#[tokio::test]
async fn the_agent_refuses_to_start_on_a_read_only_state_directory() {
    let server = Server::new().await;
    let client = server.add_client("Read Only Co", 5);
    let mut agent = Agent::enrolled(&server).await;
    assert_eq!(agent.record(client, &uid(1)).await.0, 201);
    assert!(agent.terminate().0.success(), "{}", agent.log());
    let before = bytes(&agent.db_path());

    let state = agent.state_dir();
    let mut run = private_mount_command();
    run.args([
        "sh",
        "-c",
        r#"mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@""#,
    ])
    .arg(state)
    .arg(agent_bin())
    .args(["run", "--state-dir"])
    .arg(state)
    .arg("--socket")
    .arg(state.with_file_name("read-only.sock"))
    .env_remove("PROPASS_AGENT_CONFIG")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let Ok(mut child) = run.spawn() else {
        panic!("unshare is missing (util-linux)");
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unshare:") {
        eprintln!("WARNING: SKIPPED: this machine makes no private mount namespace: {stderr}");
        return;
    }
    assert!(exited, "the agent ran on a read-only disk");
    assert!(!out.status.success());
    assert!(
        stderr.contains(&state.display().to_string()) && stderr.contains("Read-only file system"),
        "clear message expected, got: {stderr}"
    );
    assert_eq!(bytes(&agent.db_path()), before, "the database is untouched");
}

fn foreign_sqlite() -> Vec<u8> {
    let tmp = TempDir::new("propass-foreign").unwrap();
    let path = tmp.path().join("foreign.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices (total) VALUES (9.5);").unwrap();
    drop(c);
    std::fs::read(&path).unwrap()
}

/// A revoked kiosk: the agent enters the logged-out state, keeps recording,
/// and `status` says a login is needed.
#[tokio::test]
async fn a_refused_token_leads_to_a_logged_out_state_that_still_records() {
    let server = Server::new().await;
    let client = server.add_client("Revoked BV", 10);
    let agent = Agent::enrolled(&server).await;
    let device = agent.status().await.device_id;
    server.cli(&["device", "revoke", &device], None);

    assert_eq!(agent.record(client, "04AB12CD").await.0, 201);
    let out = eventually(Duration::from_secs(20), || async {
        !agent.status().await.logged_in
    })
    .await;
    assert!(out, "log:\n{}", agent.log());
    let status = agent.status().await;
    assert!(
        status
            .login_required
            .as_deref()
            .is_some_and(|s| s.contains("revoked")),
        "{status:?}"
    );
    assert_eq!(
        agent.record(client, "04AB12CE").await.0,
        201,
        "operations are still recorded"
    );
    assert_eq!(agent.pending().await, 2);
    assert_eq!(server.ledger_count().await, 0);
}

/// SIGTERM (systemctl stop) while connected: a clean exit, the socket
/// removed, everything recorded still there after a restart.
#[tokio::test]
async fn sigterm_stops_the_agent_cleanly() {
    let server = Server::new().await;
    let client = server.add_client("Stop Corp", 10);
    let mut agent = Agent::enrolled(&server).await;
    assert_eq!(agent.record(client, "04AB12CD").await.0, 201);
    let (status, took) = agent.terminate();
    assert!(status.success(), "exit status {status}");
    eprintln!("agent stopped {} ms after SIGTERM", took.as_millis());
    assert!(!agent.socket.exists(), "the socket is removed");
    agent.start().await;
    let s = agent.status().await;
    assert_eq!(s.queue.pending + s.queue.synced, 1);
}

/// Waits on the agent's event stream for a `card_progress` step.
async fn wait_step(events: &mut reqwest::Response, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = String::new();
    while Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("events")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        if buf
            .lines()
            .any(|l| l.contains("card_progress") && l.contains(&format!("\"step\":\"{step}\"")))
        {
            return;
        }
    }
    panic!("no {step} step; events: {buf}");
}

/// The answer to a copy started with [`begin_copy`].
type CopyAnswer = tokio::task::JoinHandle<Option<(u16, serde_json::Value)>>;

/// Starts a copy and returns once the agent asks for a blank; the answer
/// (`None` when the agent went away first) comes from the handle.
async fn begin_copy(agent: &Agent, client: i64) -> CopyAnswer {
    let mut events = agent
        .http
        .get("http://agent/v1/events")
        .send()
        .await
        .unwrap();
    let http = agent.http.clone();
    let copy = tokio::spawn(async move {
        let res = http
            .post("http://agent/v1/copy")
            .json(&json!({"client_id": client}))
            .send()
            .await
            .ok()?;
        Some((
            res.status().as_u16(),
            res.json::<serde_json::Value>().await.ok()?,
        ))
    });
    wait_step(&mut events, "waiting_for_blank").await;
    copy
}

/// Starts a copy, waits until the agent asks for a blank, puts `blank` on
/// the reader, and returns the copy's answer.
async fn copy_at_reader(
    agent: &Agent,
    emu: &propass_nfc::emulator::Emulator,
    client: i64,
    blank: propass_nfc::emulator::Tag,
) -> (u16, serde_json::Value) {
    let copy = begin_copy(agent, client).await;
    emu.place(Some(blank));
    copy.await.unwrap().expect("the agent answered")
}

/// A copy whose blank may hold part of the badge: answered 422
/// `copy_unverified` (it is recorded unverified, charged, flagged).
async fn copy_in_doubt(
    agent: &Agent,
    emu: &propass_nfc::emulator::Emulator,
    client: i64,
    blank: propass_nfc::emulator::Tag,
) {
    let (s, v) = copy_at_reader(agent, emu, client, blank).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("copy_unverified")),
        "{v}"
    );
}

/// An agent at an emulated reader holding `badge`, enrolled and synced.
async fn agent_at_reader(
    server: &Server,
    badge: propass_nfc::emulator::Tag,
) -> (Agent, propass_nfc::emulator::Emulator) {
    let emu = propass_nfc::emulator::Emulator::start(Some(badge)).unwrap();
    let conn = emu.connstring();
    let agent = Agent::new(
        &server.url(),
        &[
            ("PROPASS_READER", conn.as_str()),
            ("PROPASS_CARD_TIMEOUT_SECS", "20"),
        ],
    )
    .await;
    agent.enroll(server).await;
    assert_eq!(agent.sync().await.0, 200);
    (agent, emu)
}

/// SIGKILL while the blank is being written: the card may exist, so the next
/// start records it — as unverified, charged, once — and syncs it.
#[tokio::test]
async fn a_kiosk_killed_while_writing_records_the_card_as_unverified_at_its_next_start() {
    use propass_nfc::emulator::{Tag, TagKind};
    let server = Server::new().await;
    let client = server.add_client("Crash Co", 5);
    let badge = Tag::classic(TagKind::Classic1k, [0x04, 0xAB, 0x12, 0xCD]);
    let (mut agent, emu) = agent_at_reader(&server, badge).await;
    // The reader goes silent when block 0 of the blank is written: the
    // agent is left mid-write, where it is killed.
    emu.with_field(|f| f.freeze_on_write = Some(0));
    let copy = begin_copy(&agent, client).await;
    emu.place(Some(Tag::classic(TagKind::Gen1a, [0x01, 0x02, 0x03, 0x04])));
    let frozen = eventually(Duration::from_secs(20), || async {
        emu.with_field(|f| f.frozen)
    })
    .await;
    assert!(frozen, "the write never started: {}", agent.log());
    agent.kill9();
    assert_eq!(copy.await.unwrap(), None, "the kiosk died before answering");
    emu.thaw();

    agent.start().await;
    let (_, queue) = agent.call(Method::GET, "/v1/queue", None).await;
    let items = queue.as_array().unwrap();
    assert_eq!(items.len(), 1, "{queue}");
    assert_eq!(items[0]["unverified"], true);
    assert_eq!(items[0]["uid"], "04AB12CD");
    assert_eq!(agent.remaining(client).await, Some(4), "charged");
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(server.ledger_count().await, 1);
    assert_eq!(
        server.unverified_count().await,
        1,
        "flagged for an operator"
    );
    assert_eq!(server.used(client), 1);
    // Started again: nothing is settled twice.
    agent.kill9();
    agent.start().await;
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(server.ledger_count().await, 1);
}

/// SIGTERM while a blank is being written: the write is past the point of
/// no return, so the stop waits for it — the card is finished, verified and
/// recorded (not left in doubt), and the agent then exits cleanly.
#[tokio::test]
async fn a_stop_during_a_write_lets_the_card_finish_and_be_recorded() {
    use propass_nfc::emulator::{Tag, TagKind};
    let server = Server::new().await;
    let client = server.add_client("Stop Co", 5);
    let badge = Tag::classic(TagKind::Classic1k, [0x04, 0xAB, 0x12, 0xCD]);
    let (mut agent, emu) = agent_at_reader(&server, badge.clone()).await;
    let mut events = agent
        .http
        .get("http://agent/v1/events")
        .send()
        .await
        .unwrap();
    let copy = begin_copy(&agent, client).await;
    // A slow reader: the write takes seconds, the stop comes in the middle.
    emu.with_field(|f| f.slow = Some(Duration::from_millis(15)));
    emu.place(Some(Tag::classic(TagKind::Gen1a, [0x01, 0x02, 0x03, 0x04])));
    wait_step(&mut events, "writing").await;
    agent.sigterm();
    let answer = copy.await.unwrap();
    assert_eq!(answer.map(|(s, _)| s), Some(201), "the card was made");
    assert!(agent.wait_exit().await.success(), "{}", agent.log());
    let log = agent.log();
    let (stop, made) = (
        log.find("SIGTERM: stopping").expect("stopped by SIGTERM"),
        log.find("card made and verified").expect("card made"),
    );
    assert!(stop < made, "the stop came during the write:\n{log}");
    assert_eq!(emu.tag().unwrap().memory(), badge.memory(), "a whole copy");

    agent.start().await;
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(server.ledger_count().await, 1);
    assert_eq!(server.unverified_count().await, 0, "verified, not in doubt");
}

/// A kiosk killed at each step of a copy — its intent written, the blank
/// about to be written, the verification under way, the card verified but
/// not recorded — finishes at its next start what it left: a blank that
/// may have been touched is in the ledger exactly once (flagged unverified,
/// charged), one that was not costs nothing, and a second restart settles
/// nothing twice. (Test builds honour `PROPASS_TEST_CRASH_AT`; the emulator
/// freezes the verification for the kill there.)
#[tokio::test]
async fn a_kiosk_killed_at_any_step_of_a_copy_leaves_the_ledger_exact() {
    use propass_nfc::emulator::{Tag, TagKind};
    let server = Server::new().await;
    let client = server.add_client("Step Co", 20);
    let badge = Tag::classic(TagKind::Classic1k, [0x04, 0xAB, 0x12, 0xCD]);
    let (mut agent, emu) = agent_at_reader(&server, badge.clone()).await;
    let mut recorded = 0;
    for (n, point, touched) in [
        (1u8, "reserved", false),
        (2, "writing", false),
        (3, "verifying", true),
        (4, "written", true),
    ] {
        emu.place(Some(badge.clone()));
        agent.kill9();
        if point == "verifying" {
            emu.with_field(|f| f.freeze_after_write = true);
        } else {
            agent.set_env("PROPASS_TEST_CRASH_AT", Some(point));
        }
        agent.start().await;
        let blank = Tag::classic(TagKind::Gen1a, [n, n + 1, n + 2, n + 3]);
        if point == "reserved" {
            let http = agent.http.clone();
            let copy = tokio::spawn(async move {
                http.post("http://agent/v1/copy")
                    .json(&json!({"client_id": client}))
                    .send()
                    .await
                    .ok()
            });
            agent.wait_exit().await;
            assert!(copy.await.unwrap().is_none(), "{point}: no answer");
            emu.place(Some(blank.clone()));
        } else {
            let copy = begin_copy(&agent, client).await;
            emu.place(Some(blank.clone()));
            if point == "verifying" {
                let frozen = eventually(Duration::from_secs(20), || async {
                    emu.with_field(|f| f.frozen)
                })
                .await;
                assert!(frozen, "the verification never started: {}", agent.log());
                agent.kill9();
                emu.thaw();
            } else {
                agent.wait_exit().await;
            }
            assert_eq!(
                copy.await.unwrap(),
                None,
                "{point}: the kiosk died before answering"
            );
        }
        agent.set_env("PROPASS_TEST_CRASH_AT", None);
        agent.start().await;
        assert_eq!(agent.sync().await.0, 200, "{}", agent.log());
        let card = emu.tag().expect("the blank is on the reader");
        if touched {
            assert_eq!(
                card.memory(),
                badge.memory(),
                "{point}: the blank is a copy"
            );
        } else if point == "reserved" {
            assert_eq!(
                card.memory(),
                blank.memory(),
                "{point}: the blank is untouched"
            );
        }
        // Past the point of no return the kiosk cannot know what the card
        // holds: charged and flagged for an operator, never free.
        recorded += i64::from(point != "reserved");
        assert_eq!(server.ledger_count().await, recorded, "{point}");
        assert_eq!(server.unverified_count().await, recorded, "{point}");
        assert_eq!(server.used(client), recorded, "{point}: charged once");
        assert_eq!(agent.pending().await, 0, "{point}");
    }
    // Started again: nothing is settled twice.
    agent.kill9();
    agent.start().await;
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(server.ledger_count().await, recorded);
    assert_eq!(server.used(client), recorded);
}

/// A blank lifted in the middle of its write: it may hold part of the badge,
/// so it is recorded as an unverified copy, charged and flagged — never a
/// free copy. SIGKILL while waiting for the blank: the next start releases
/// the unit, and the blank placed afterwards is never touched. A Gen1a
/// lifted right after a complete write: charged and flagged too. No log line
/// names the badge.
#[tokio::test]
async fn a_blank_lifted_mid_write_is_charged_and_a_kill_before_the_write_is_not() {
    use propass_nfc::emulator::{Tag, TagKind};
    let server = Server::new().await;
    let client = server.add_client("Lift Co", 5);
    let badge = Tag::classic(TagKind::Classic1k, [0x04, 0xAB, 0x12, 0xCD]);
    let (mut agent, emu) = agent_at_reader(&server, badge.clone()).await;

    emu.with_field(|f| f.remove_on_write = Some(4));
    copy_in_doubt(
        &agent,
        &emu,
        client,
        Tag::classic(TagKind::Gen1a, [0x01, 0x02, 0x03, 0x04]),
    )
    .await;
    assert_eq!(agent.remaining(client).await, Some(4), "charged");
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(server.unverified_count().await, 1);

    // Killed while it waits for a blank: nothing was written, the unit goes back.
    emu.place(Some(badge.clone()));
    let copy = begin_copy(&agent, client).await;
    agent.kill9();
    assert_eq!(copy.await.unwrap(), None);
    let blank = Tag::classic(TagKind::Gen1a, [0x05, 0x06, 0x07, 0x08]);
    emu.place(Some(blank.clone()));
    agent.start().await;
    assert_eq!(agent.pending().await, 0);
    assert_eq!(
        agent.remaining(client).await,
        Some(4),
        "the reserved unit went back"
    );
    assert_eq!(
        emu.tag().unwrap().memory(),
        blank.memory(),
        "the blank is untouched"
    );
    assert_eq!(server.ledger_count().await, 1);

    // A Gen1a blank lifted right after its write went through, before the
    // verification in a fresh field: a working copy left the kiosk, so it
    // is charged and flagged — never a repeatable free copy.
    emu.place(Some(badge.clone()));
    emu.with_field(|f| f.lift_after_write = true);
    copy_in_doubt(
        &agent,
        &emu,
        client,
        Tag::classic(TagKind::Gen1a, [0x09, 0x0A, 0x0B, 0x0C]),
    )
    .await;
    let lifted = emu
        .with_field(|f| f.lifted.take())
        .expect("the blank was lifted");
    assert_eq!(
        lifted.memory(),
        badge.memory(),
        "the lifted card is a whole copy"
    );
    assert_eq!(agent.remaining(client).await, Some(3), "charged");
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(server.unverified_count().await, 2);

    // The badge's UID is what it takes to clone it: it is in no log line
    // (both run at the default level, info), a failed verification's included.
    for (who, log) in [("agent", agent.log()), ("server", server.log())] {
        assert!(
            !log.to_ascii_uppercase().contains("04AB12CD"),
            "the {who} logged the badge's UID:\n{log}"
        );
        assert!(!log.is_empty(), "the {who} logged nothing at all");
    }
}

/// Three kiosks cut off together, one client with 30 units, 20 tries each:
/// each spends only the units the server set aside for it, so together they
/// make at most 30, the rest refused clearly; after reconnecting, the ledger
/// and the quota agree to the unit.
#[tokio::test]
async fn kiosks_offline_together_never_spend_more_than_the_client_paid_for() {
    let mut server = Server::new().await;
    let mut agents = Vec::new();
    for _ in 0..3 {
        let a = Agent::new(&server.url(), &[]).await;
        a.enroll(&server).await;
        agents.push(a);
    }
    let client = server.add_client("Escrow Co", 30);
    for a in &agents {
        assert_eq!(a.sync().await.0, 200);
        assert_eq!(
            a.remaining(client).await,
            Some(10),
            "a lease of the server's lease_target"
        );
    }
    assert_eq!(server.client_row(client)["leased"], 30);
    assert_eq!(
        server.remaining(client),
        0,
        "every unit is in a kiosk's lease"
    );
    server.stop();

    let mut made = 0;
    for (k, a) in agents.iter().enumerate() {
        for i in 0..20 {
            let (status, v) = a.record(client, &format!("04{k:02X}{i:04X}")).await;
            match status {
                201 => made += 1,
                409 => {
                    assert_eq!(v["error"]["code"], "quota_exhausted", "{v}");
                    let m = v["error"]["message"].as_str().unwrap();
                    assert!(m.contains("until it reconnects"), "{m}");
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
    }
    assert_eq!(made, 30, "each kiosk made exactly its lease");

    server.start().await;
    for a in &agents {
        assert_eq!(a.sync().await.0, 200);
    }
    assert_eq!(server.ledger_count().await, 30);
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM copies WHERE overdraft")
            .await,
        0
    );
    let row = server.client_row(client);
    assert_eq!(
        (
            row["used"].as_i64(),
            row["leased"].as_i64(),
            row["remaining"].as_i64()
        ),
        (Some(30), Some(0), Some(0))
    );
}

/// An operator lowers a client's lease target: a connected kiosk hears of
/// it at once and gives back what it holds above the new target, so the
/// units are free for other kiosks now, not once this one has spent them.
#[tokio::test]
async fn a_lowered_lease_target_comes_back_from_a_connected_kiosk_at_once() {
    let server = Server::new().await;
    let client = server.add_client("Shrink Ltd", 30);
    let agent = Agent::enrolled(&server).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            agent.status().await.ws_connected
        })
        .await
    );
    assert_eq!(agent.sync().await.0, 200);
    for i in 0..2 {
        assert_eq!(agent.record(client, &format!("04AA{i:04X}")).await.0, 201);
    }
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(
        agent.remaining(client).await,
        Some(8),
        "a lease of 10, 2 spent"
    );

    server.lease(client, 3);
    let given_back = eventually(Duration::from_secs(10), || async {
        server.client_row(client)["leased"] == 3
    })
    .await;
    let row = server.client_row(client);
    assert!(given_back, "{row}\n{}", agent.log());
    assert_eq!(
        (row["used"].as_i64(), row["remaining"].as_i64()),
        (Some(2), Some(25))
    );
    assert_eq!(agent.remaining(client).await, Some(3));
}

/// The kiosk's disk fills up: it makes no card (it could not record it) and
/// says so to the person, in its status and to the operators; once space is
/// freed it copies again, and the ledger holds exactly the cards made.
#[tokio::test]
async fn a_kiosk_whose_disk_is_full_makes_no_card_and_says_so() {
    use propass_nfc::emulator::{Emulator, Tag, TagKind};
    let server = Server::new().await;
    let client = server.add_client("Disk Co", 5);
    let badge = Tag::classic(TagKind::Classic1k, [0x04, 0xAB, 0x12, 0xCD]);
    let emu = Emulator::start(Some(badge.clone())).unwrap();
    let conn = emu.connstring();
    let env = [
        ("PROPASS_READER", conn.as_str()),
        ("PROPASS_CARD_TIMEOUT_SECS", "20"),
        ("PROPASS_HEARTBEAT_SECS", "5"),
    ];
    let Some(mut agent) = Agent::on_small_disk(&server.url(), &env, 4 << 20).await else {
        return;
    };
    agent.enroll(&server).await;
    assert_eq!(agent.sync().await.0, 200);
    let device = agent.status().await.device_id;
    let made = |uid: [u8; 4]| Tag::classic(TagKind::Gen1a, uid);
    let (status, body) = copy_at_reader(&agent, &emu, client, made([1, 2, 3, 4])).await;
    assert_eq!(status, 201, "{body}");

    agent.fill_disk();
    emu.place(Some(badge.clone()));
    // Refused once the badge is read, before a blank is asked for (the
    // answer comes without one on the reader).
    let (status, body) = agent
        .call(Method::POST, "/v1/copy", Some(json!({"client_id": client})))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("recording_unavailable")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("call an operator"), "{message}");
    let (status, body) = agent.record(client, &uid(9)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("recording_unavailable")),
        "an operation reported by the kiosk's UI is refused the same way: {body}"
    );
    // Known to fail now: the next copy is refused before the badge is even
    // asked for (no card on the reader; the answer does not wait for one).
    emu.place(None);
    let (status, body) = agent
        .call(Method::POST, "/v1/copy", Some(json!({"client_id": client})))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("recording_unavailable")),
        "{body}"
    );
    emu.place(Some(badge.clone()));
    let (healthy, _, why) = agent.cli(&["health"]);
    assert!(
        !healthy && why.contains("cannot save its records"),
        "the health check fails, saying why: {why}"
    );
    let storage = agent.status().await.storage_error;
    assert!(
        storage.as_deref().is_some_and(|e| e.contains("full")),
        "{storage:?}"
    );
    let flagged = eventually(Duration::from_secs(20), || async {
        server.fleet_row(&device)["health"]["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "cannot_record"))
    })
    .await;
    assert!(flagged, "{}", server.fleet_row(&device));

    agent.free_disk();
    let cleared = eventually(Duration::from_secs(20), || async {
        agent.status().await.storage_error.is_none()
            && server.fleet_row(&device)["health"]["storage_error"].is_null()
    })
    .await;
    assert!(cleared, "{}\n{}", server.fleet_row(&device), agent.log());
    let (healthy, out, why) = agent.cli(&["health"]);
    assert!(healthy && out.starts_with("ok"), "{out}{why}");
    let (status, body) = copy_at_reader(&agent, &emu, client, made([5, 6, 7, 8])).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(
        (server.used(client), server.ledger_count().await),
        (2, 2),
        "two cards made, two in the ledger"
    );
    assert_eq!(agent.remaining(client).await, Some(3));
}

/// SIGTERM while the kiosk waits for a blank: the flow ends (its unit goes
/// back), the agent exits cleanly, and no blank is written afterwards.
#[tokio::test]
async fn a_kiosk_stopped_while_waiting_for_a_blank_writes_nothing() {
    use propass_nfc::emulator::{Tag, TagKind};
    let server = Server::new().await;
    let client = server.add_client("Stop Co", 5);
    let badge = Tag::classic(TagKind::Classic1k, [0x04, 0xAB, 0x12, 0xCD]);
    let (mut agent, emu) = agent_at_reader(&server, badge).await;
    let copy = begin_copy(&agent, client).await;
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.log());
    let answer = copy
        .await
        .unwrap()
        .expect("the flow answered before the agent stopped");
    assert_eq!(
        (answer.0, answer.1["error"]["code"].as_str()),
        (503, Some("stopping")),
        "{answer:?}"
    );
    assert_eq!(
        server.client_row(client)["leased"],
        0,
        "a clean stop with nothing to push gives the lease back: {}",
        agent.log()
    );
    // The blank arrives after the stop: nothing touches it.
    let blank = Tag::classic(TagKind::Gen1a, [0x01, 0x02, 0x03, 0x04]);
    emu.place(Some(blank.clone()));
    agent.start().await;
    assert_eq!(emu.tag().unwrap().memory(), blank.memory());
    assert_eq!(agent.pending().await, 0);
    assert_eq!(agent.sync().await.0, 200);
    assert_eq!(agent.remaining(client).await, Some(5), "the unit went back");
    assert_eq!(server.used(client), 0);
}

/// The kiosk flow on an emulated PN532 through the real libnfc: badge read,
/// Gen1a blank cloned and verified, copy recorded and synced; a card that is
/// not magic fails and records nothing.
#[tokio::test]
async fn copies_a_badge_at_the_reader_and_records_it_only_when_verified() {
    use propass_nfc::emulator::{Emulator, Tag, TagKind};
    let server = Server::new().await;
    let client = server.add_client("Reader Co", 5);
    // Another client whose badges use a key of their own.
    let other = server.add_client("Other Co", 5);
    let other_keys = format!("{other}=5A5A5A5A5A5A");
    // The site's credential lives in sector 1, behind the site's keys (key B secret).
    let site_a = [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC];
    let site_b = [0xCB, 0xA9, 0x87, 0x65, 0x43, 0x21];
    let badge = Tag::classic(TagKind::Classic1k, [0x04, 0xAB, 0x12, 0xCD]).with_sector(
        1,
        site_a,
        [0x7F, 0x07, 0x88, 0x69],
        site_b,
        &[[0x5C; 16], [0x01; 16], [0x02; 16]],
    );
    let emu = Emulator::start(Some(badge.clone())).unwrap();
    let conn = emu.connstring();
    let agent = Agent::new(
        &server.url(),
        &[
            ("PROPASS_READER", conn.as_str()),
            ("PROPASS_CARD_TIMEOUT_SECS", "20"),
            ("PROPASS_READER_KEYS", "123456789ABC,CBA987654321"),
            ("PROPASS_CLIENT_READER_KEYS", other_keys.as_str()),
        ],
    )
    .await;
    agent.enroll(&server).await;
    assert_eq!(agent.sync().await.0, 200);

    let (s, v) = agent.call(Method::POST, "/v1/nfc/read", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["uid"], "04AB12CD");
    assert_eq!(v["family"], "mifare_classic_1k");

    // A good copy onto a Gen1a blank.
    let (s, v) = copy_at_reader(
        &agent,
        &emu,
        client,
        Tag::classic(TagKind::Gen1a, [0x01, 0x02, 0x03, 0x04]),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["blank"], "gen1a");
    assert_eq!(v["operation"]["uid"], "04AB12CD");
    assert_eq!(v["operation"]["sectors"], "AAAAAAAAAAAAAAAA");
    assert_eq!(
        emu.tag().unwrap().memory(),
        badge.memory(),
        "the blank carries the whole badge: UID, the site's sector, keys and access bits"
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            server.ledger_count().await == 1
        })
        .await
    );
    assert_eq!(
        server.ledger_sectors().await,
        [Some("AAAAAAAAAAAAAAAA".to_string())],
        "the ledger knows the copy was whole"
    );

    // A plain card offered as the blank: refused, nothing recorded.
    emu.place(Some(Tag::classic(
        TagKind::Classic1k,
        [0x04, 0xAB, 0x12, 0xCD],
    )));
    let (s, v) = copy_at_reader(
        &agent,
        &emu,
        client,
        Tag::classic(TagKind::Classic1k, [0x0A, 0x0B, 0x0C, 0x0D]),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("card_not_writable")),
        "{v}"
    );
    let st = agent.status().await;
    assert_eq!(
        st.queue.pending + st.queue.synced,
        1,
        "nothing recorded for the failed copy"
    );

    // A sector under a key no one gave the kiosk, for a client that wants
    // whole copies only: refused before any blank is asked for.
    let keyed = Tag::classic(TagKind::Classic1k, [0x04, 0x0F, 0x0E, 0x0D]).with_sector(
        4,
        [0x5A; 6],
        [0x7F, 0x07, 0x88, 0x69],
        [0x5A; 6],
        &[[0x44; 16]],
    );
    emu.place(Some(keyed.clone()));
    let (s, v) = agent
        .call(Method::POST, "/v1/copy", Some(json!({"client_id": client})))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("protected_sectors")),
        "{v}"
    );
    // The same badge for the client whose keys the kiosk was given: whole.
    let (s, v) = copy_at_reader(
        &agent,
        &emu,
        other,
        Tag::classic(TagKind::Gen1a, [0x01, 0x02, 0x03, 0x06]),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["operation"]["sectors"], "AAAAAAAAAAAAAAAA");
    assert_eq!(emu.tag().unwrap().memory(), keyed.memory());
    emu.place(Some(keyed.clone()));

    // The operator allows partial copies for the client; once the kiosk has
    // synced, the same badge is copied without its protected sector.
    server.cli(
        &[
            "client",
            "policy",
            &client.to_string(),
            "--partial-copy",
            "allow",
        ],
        None,
    );
    assert_eq!(agent.sync().await.0, 200);
    let (s, v) = copy_at_reader(
        &agent,
        &emu,
        client,
        Tag::classic(TagKind::Gen2, [0x01, 0x02, 0x03, 0x05]),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["operation"]["sectors"], "AAAA-AAAAAAAAAAA");
    assert!(
        eventually(Duration::from_secs(20), || async {
            server.ledger_sectors().await.last() == Some(&Some("AAAA-AAAAAAAAAAA".into()))
        })
        .await,
        "the ledger records what the partial copy left out"
    );

    // The operator gives the server the client's key: once the kiosk has
    // synced, the same badge is copied whole for it.
    server.cli(
        &["client", "keys", &client.to_string()],
        Some("5a5a5a5a5a5a\n"),
    );
    assert_eq!(agent.sync().await.0, 200);
    emu.place(Some(keyed.clone()));
    let (s, v) = copy_at_reader(
        &agent,
        &emu,
        client,
        Tag::classic(TagKind::Gen2, [0x01, 0x02, 0x03, 0x07]),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(emu.tag().unwrap().memory(), keyed.memory());
    assert_eq!(
        v["operation"]["sectors"], "AAAAAAAAAAAAAAAA",
        "the server's key opened sector 4"
    );
    assert!(
        !agent.log().contains("5A5A5A5A5A5A")
            && !agent.log().to_lowercase().contains("5a5a5a5a5a5a"),
        "the key is in no log line"
    );
    let status = agent.status_json().await.to_string();
    assert!(!status.contains("5A5A5A5A5A5A"), "{status}");

    // A badge our blanks cannot become (an Ultralight): refused before any blank is asked for.
    emu.place(Some(Tag::ultralight([
        0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6,
    ])));
    let (s, v) = agent
        .call(Method::POST, "/v1/copy", Some(json!({"client_id": client})))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("unsupported_badge")),
        "{v}"
    );
}

/// The agent's transport rules: no plain http:// across the network unless
/// configured, no redirects followed, state private to its user, and the
/// socket shared only with the configured group.
#[tokio::test]
async fn the_agent_guards_its_transport_and_its_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let server = Server::new().await;
    let gid = std::fs::metadata("/proc/self").unwrap().gid();
    let agent = Agent::new(&server.url(), &[("PROPASS_SOCKET_GROUP", &gid.to_string())]).await;

    let login =
        |url: String| json!({"server_url": url, "username": "admin", "password": "admin123"});
    let (s, v) = agent
        .call(
            Method::POST,
            "/v1/login",
            Some(login("http://192.0.2.10:5000".into())),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_insecure_http"),
        "{v}"
    );

    // A server URL that redirects to the real server: not followed.
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_port = redirector.local_addr().unwrap().port();
    let target = server.url();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = redirector.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}/api/auth/login\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    let (s, v) = agent
        .call(
            Method::POST,
            "/v1/login",
            Some(login(format!("http://127.0.0.1:{redirect_port}"))),
        )
        .await;
    assert_eq!(s, 502, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("redirect"),
        "{v}"
    );

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let db = agent.db_path();
    assert_eq!(mode(&db), 0o600, "the database is private");
    assert_eq!(
        mode(db.parent().unwrap()),
        0o700,
        "the state directory is private"
    );
    assert_eq!(
        mode(&agent.socket),
        0o660,
        "the socket is shared with its group only"
    );
    assert_eq!(std::fs::metadata(&agent.socket).unwrap().gid(), gid);
}

/// A CA and a `localhost` certificate it signed, as PEM files in a
/// directory that lives as long as this value.
struct TestPki {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    dir: TempDir,
}

impl TestPki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let dir = TempDir::new("propass-e2e-tls").unwrap();
        let pki = Self {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            dir,
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, leaf.pem()).unwrap();
        std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
        pki
    }

    /// An agent trusting this CA (and the system's).
    async fn agent(&self, url: &str) -> Agent {
        Agent::new(
            url,
            &[("PROPASS_SERVER_CA_FILE", self.ca.to_str().unwrap())],
        )
        .await
    }
}

/// Enrolls `agent`, pulls, records one copy for `client`, and waits until it
/// is in the ledger and the WebSocket is up.
async fn syncs_one_copy(agent: &Agent, server: &Server, client: i64, how: &str) {
    agent.enroll(server).await;
    assert_eq!(agent.sync().await.0, 200, "pull over {how}");
    assert_eq!(agent.record(client, "04AB12CD").await.0, 201);
    assert!(
        eventually(Duration::from_secs(20), || async {
            server.ledger_count().await == 1
        })
        .await,
        "the copy reached the ledger over {how}: {}",
        agent.log()
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            agent.status().await.ws_connected
        })
        .await,
        "the WebSocket is up over {how}: {:?}",
        agent.status().await
    );
}

/// The agent syncs to the real server over HTTPS and WSS, trusting a CA made
/// for the test (given as `server_ca_file`), and nothing else.
#[tokio::test]
async fn the_agent_syncs_over_tls_with_a_private_ca() {
    let mut server = Server::new().await;
    let client = server.add_client("TLS Ltd", 10);
    server.stop();
    let pki = TestPki::new();
    server
        .start_with(&[
            ("PROPASS_TLS_CERT_FILE", pki.cert.to_str().unwrap()),
            ("PROPASS_TLS_KEY_FILE", pki.key.to_str().unwrap()),
        ])
        .await;
    let https = format!("https://localhost:{}", server.port);

    // Without the CA, the server's certificate is not trusted.
    let stranger = Agent::new(&https, &[]).await;
    let (s, v) = stranger
        .call(
            Method::POST,
            "/v1/login",
            Some(json!({"username": "admin", "password": "admin123"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("server_unreachable")),
        "{v}"
    );

    let agent = pki.agent(&https).await;
    syncs_one_copy(&agent, &server, client, "HTTPS").await;
}

/// The shipped HAProxy example, TLS bind and all (with a certificate made for
/// the test), in front of a plain-HTTP server: the agent enrolls, pulls,
/// pushes and keeps its WebSocket through it, as docs/deploy.md describes.
#[tokio::test]
async fn the_agent_syncs_through_the_shipped_haproxy_ending_tls() {
    let server = Server::new().await;
    let client = server.add_client("Proxied Ltd", 10);
    let pki = TestPki::new();
    let bundle = pki.dir.path().join("haproxy.pem");
    let mut pem = std::fs::read(&pki.cert).unwrap();
    pem.extend(std::fs::read(&pki.key).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let lb_port = propass_test_support::free_port();
    let cfg = pki.dir.path().join("haproxy.cfg");
    let shipped = include_str!("../../../deploy/haproxy.cfg");
    let backend = [format!("127.0.0.1:{}", server.port)];
    std::fs::write(
        &cfg,
        propass_test_support::haproxy_config(shipped, lb_port, Some(&bundle), &backend),
    )
    .unwrap();
    let _haproxy = propass_test_support::spawn_haproxy(&cfg).unwrap();
    let https = format!("https://localhost:{lb_port}");
    // HAProxy sends requests on once a health check has passed.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let up = eventually(Duration::from_secs(20), || async {
        http.get(format!("{https}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "the server answers through haproxy's TLS");
    let agent = pki.agent(&https).await;
    syncs_one_copy(&agent, &server, client, "HAProxy's TLS").await;
}

/// An enrolled kiosk holds no password: when its access token stops working
/// (here the server's signing secret changed, which voids every token but not
/// the device's credential) it renews it with its rotating credential, and
/// syncs on.
#[tokio::test]
async fn an_enrolled_agent_renews_its_token_with_its_rotating_credential() {
    let mut server = Server::new().await;
    let client = server.add_client("Rotate Ltd", 10);
    let agent = Agent::enrolled(&server).await;
    server.stop();
    server
        .start_with(&[(
            "PROPASS_JWT_SECRET",
            "a-rotated-secret-0123456789abcdef-0123456789",
        )])
        .await;
    assert_eq!(agent.record(client, "04AB12CD").await.0, 201);
    let synced = eventually(Duration::from_secs(20), || async {
        server.ledger_count().await == 1
    })
    .await;
    assert!(synced, "log:\n{}", agent.log());
    assert!(
        server
            .query_i64("SELECT count(*) FROM device_credentials WHERE used_at IS NOT NULL")
            .await
            >= 1,
        "the credential was used and rotated"
    );
    assert!(agent.status().await.logged_in);
}

/// Before a kiosk is re-imaged: what the server has not recorded can be read
/// out of the agent's database, running or stopped, and the package's
/// removal check counts it.
#[tokio::test]
async fn unsynced_work_is_exported_from_a_stopped_kiosk() {
    let mut server = Server::new().await;
    let client = server.add_client("Reimage BV", 100);
    server.lease(client, 100);
    let mut agent = Agent::enrolled(&server).await;
    server.stop();
    for i in 0..3 {
        assert_eq!(agent.record(client, &uid(i)).await.0, 201);
    }
    let (status, _) = agent.terminate();
    assert!(status.success());

    let dir = agent.db_path().parent().unwrap().to_owned();
    let export = |args: &[&str]| {
        let out = std::process::Command::new(agent_bin())
            .arg("export-unsynced")
            .arg("--state-dir")
            .arg(&dir)
            .args(args)
            .env_remove("PROPASS_AGENT_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(export(&["--count"]).trim(), "3");
    let lines: Vec<serde_json::Value> = export(&[])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .all(|l| l["status"] == "pending" && l["client_id"] == client));
    let uids: Vec<&str> = lines.iter().map(|l| l["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, [uid(0), uid(1), uid(2)]);

    // Back online, the agent syncs them: nothing is left to export.
    server.start().await;
    agent.start().await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            agent.pending().await == 0
        })
        .await,
        "{}",
        agent.log()
    );
    assert_eq!(export(&["--count"]).trim(), "0");
    // A state directory without a database holds nothing.
    let empty = TempDir::new("propass-e2e-empty").unwrap();
    let out = std::process::Command::new(agent_bin())
        .args(["export-unsynced", "--count", "--state-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert!(!empty.path().join("agent.db").exists(), "nothing created");
}
