//! The operator dashboard in a real browser (Debian's Chromium, driven by
//! `xtask/browser/dashboard.mjs` through playwright-core) against the real
//! server and a real agent: the script asks for what only this side can do
//! (bring a kiosk online, make a copy, stop the kiosk) and checks what a
//! person would see, without reloading. Screenshots land in
//! `target/browser/` for a person to look at.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::*;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xtask/browser")
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser")
}

#[tokio::test]
async fn the_dashboard_shows_the_fleet_and_its_copies_live_in_a_real_browser() {
    let dir = browser_dir();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && std::path::Path::new(&chromium).is_file(),
        "the browser test needs {chromium} (Debian's chromium, or CHROMIUM=/path) and {}/node_modules: `cargo xtask test` (or `cargo xtask e2e`) installs them",
        dir.display()
    );
    let server = Server::new().await;
    server.cli(
        &[
            "user",
            "add",
            "olga",
            "--role",
            "operator",
            "--password-stdin",
        ],
        Some("operator-pass-1\n"),
    );
    let client = server.add_client("Acme Corp", 20);
    // At or below client_low_quota (10): its card carries the flag.
    let low = server.add_client("Tiny Co", 3);
    // A disk of its own, to fill; a heartbeat every 5 s tells a freed one.
    let env = [("PROPASS_HEARTBEAT_SECS", "5")];
    let (mut agent, own_disk) = match Agent::on_small_disk(&server.url(), &env, 16 << 20).await {
        Some(agent) => (agent, true),
        None => (Agent::new(&server.url(), &env).await, false),
    };
    let kiosk = agent.status().await.device_id;

    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .current_dir(&dir)
        .env("PROPASS_ADMIN_URL", server.url())
        .env("PROPASS_ADMIN_USER", "admin")
        .env("PROPASS_ADMIN_PASSWORD", "admin123")
        .env("PROPASS_OPERATOR_USER", "olga")
        .env("PROPASS_OPERATOR_PASSWORD", "operator-pass-1")
        .env("PROPASS_KIOSK_ID", &kiosk)
        .env("PROPASS_CLIENT_ID", client.to_string())
        .env("PROPASS_CLIENT_NAME", "Acme Corp")
        .env("PROPASS_LOW_CLIENT_ID", low.to_string())
        .env("PROPASS_SHOTS", screenshots())
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (cargo xtask test installs it)");
    let mut to_script = node.stdin.take().unwrap();
    let mut from_script = BufReader::new(node.stdout.take().unwrap()).lines();

    let mut passed = false;
    let mut copies = 0;
    let run = async {
        while let Some(line) = from_script.next_line().await.unwrap() {
            let answer = match line.trim() {
                "pass" => {
                    passed = true;
                    break;
                }
                // Enrolled, the agent opens its socket: the kiosk comes online.
                "need kiosk_online" => {
                    agent.enroll(&server).await;
                    "ok".to_owned()
                }
                "need kiosk_disk_full" if !own_disk => "skip".to_owned(),
                // Full: the next operation is refused, and the kiosk tells
                // the server at once.
                "need kiosk_disk_full" => {
                    agent.fill_disk();
                    match agent.record(client, "04A1B2C3D4E5FF").await {
                        (503, _) => "ok".to_owned(),
                        (status, body) => format!("fail a full disk recorded: {status} {body}"),
                    }
                }
                "need kiosk_disk_freed" => {
                    agent.free_disk();
                    "ok".to_owned()
                }
                "need copy" => {
                    copies += 1;
                    let (status, body) = agent
                        .record(client, &format!("04A1B2C3D4E5{copies:02X}"))
                        .await;
                    let (synced, _) = agent.sync().await;
                    if status == 201 && synced == 200 {
                        "ok".to_owned()
                    } else {
                        format!("fail record {status} {body}, sync {synced}")
                    }
                }
                // A fleet bigger than the list shows: 200 kiosks silent for
                // two days (flagged offline), 50 seen just now (no flag).
                "need many_kiosks" => {
                    let added = server
                        .query_i64(
                            "WITH added AS (INSERT INTO devices (device_id, name, status, first_seen, last_seen) \
                             SELECT 'shop-' || lpad(i::text, 3, '0'), 'Shop ' || i, 'active', now() - interval '2 days', \
                                    CASE WHEN i > 200 THEN now() ELSE now() - interval '2 days' END \
                             FROM generate_series(1, 250) i RETURNING 1) SELECT count(*) FROM added",
                        )
                        .await;
                    if added == 250 {
                        "ok".to_owned()
                    } else {
                        format!("fail {added} kiosks added")
                    }
                }
                // The operator's sessions reach their end of life.
                "need operator_session_expired" => {
                    let aged = server
                        .query_i64(
                            "WITH aged AS (UPDATE admin_sessions SET expires_at = now() - interval '1 second' \
                             WHERE user_id = (SELECT id FROM users WHERE username = 'olga') RETURNING 1) \
                             SELECT count(*) FROM aged",
                        )
                        .await;
                    if aged > 0 {
                        "ok".to_owned()
                    } else {
                        "fail the operator has no session to age".to_owned()
                    }
                }
                // SIGTERM: the agent closes its socket on the way out.
                "need kiosk_offline" => {
                    let (status, _) = agent.terminate();
                    if status.success() {
                        "ok".to_owned()
                    } else {
                        format!("fail the agent exited with {status}")
                    }
                }
                other => format!("fail unknown request {other:?}"),
            };
            to_script
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(300), run).await;
    let status = node.wait().await.unwrap();
    assert!(
        finished.is_ok(),
        "the browser script did not finish within 5 minutes"
    );
    assert!(
        passed && status.success(),
        "the browser script failed ({status}); screenshots in {}\nagent log:\n{}",
        screenshots().display(),
        agent.log()
    );
}
