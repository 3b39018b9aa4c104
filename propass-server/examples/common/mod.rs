//! What the server benchmarks share: a fresh database with the schema, the
//! secret their servers sign with, kiosks' own device tokens, and waiting
//! for a server to answer. Included by each benchmark with `#[path]` (a
//! directory without `main.rs` is not an example of its own).
#![allow(dead_code)] // each benchmark uses its part

use std::time::{Duration, Instant};

use propass_protocol::DeviceId;
use propass_server::auth::JwtKeys;
use propass_server::db;
use propass_test_support::TestDatabase;

/// The JWT secret of the servers benchmarks start.
pub const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";

/// A fresh database with the schema, dropped when the benchmark ends.
pub async fn fresh_database(base: &str, prefix: &str) -> Result<TestDatabase, String> {
    let database = TestDatabase::create_in(base, prefix).await?;
    let url = database.url().to_owned();
    tokio::task::spawn_blocking(move || db::run_migrations(&url))
        .await
        .map_err(|e| e.to_string())??;
    Ok(database)
}

/// A device token (valid an hour) for each of `devices`, signed with
/// [`SECRET`]: each kiosk its own, without a login per kiosk.
pub fn device_tokens(devices: impl Iterator<Item = String>) -> Result<Vec<String>, String> {
    let keys = JwtKeys::new(
        SECRET.as_bytes(),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        Duration::ZERO,
    );
    let now = chrono::Utc::now();
    devices
        .map(|d| {
            let d = DeviceId::parse(&d).map_err(|e| e.to_string())?;
            keys.issue_device(&d, 0, now, uuid::Uuid::new_v4())
                .map(|(t, _)| t)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Waits until `url` answers 2xx, `within` at most.
pub async fn wait_ok(http: &reqwest::Client, url: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{url} did not answer within {} s",
                within.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The command line as `(flag, value)` pairs, in order: each flag takes a
/// positive number, except the `switches`, which take none (value 0).
pub fn flags(args: &[String], switches: &[&str]) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if switches.contains(&flag.as_str()) {
            out.push((flag.clone(), 0));
            continue;
        }
        let v: u64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .ok_or(format!("{flag} needs a positive number"))?;
        out.push((flag.clone(), v));
    }
    Ok(out)
}
