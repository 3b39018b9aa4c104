//! Push and pull: exactly-once ledger, overdraft, partial failures, limits.

use std::time::Duration;

use propass_protocol::DeviceId;
use propass_server::db;
use serde_json::{json, Value};

use crate::helpers::*;

fn batch(device: &str, items: Vec<Value>) -> Value {
    json!({"device_id": device, "queue": items})
}

#[tokio::test]
async fn push_records_and_counts_each_copy_once() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let body = batch(
        "K1",
        (1..=3)
            .map(|i| seed_item(i, client, &format!("04AB12C{i}")))
            .collect(),
    );

    let data = app.push_ok(&token, &body).await;
    assert_eq!(data.len(), 3);
    for (i, r) in data.iter().enumerate() {
        assert_eq!(
            r["id"],
            i as i64 + 1,
            "results echo the client's ids in order"
        );
        assert_eq!(r["status"], "synced");
        assert!(r["error"].is_null());
    }
    assert_eq!(app.ledger_count().await, 3);
    assert_eq!(app.remaining(&token, client).await, 7);

    // The same batch again (the kiosk never saw the answer): synced, not counted twice.
    let again = app.push_ok(&token, &body).await;
    assert!(again
        .iter()
        .all(|r| r["status"] == "synced" && r["duplicate"] == true));
    assert_eq!(app.ledger_count().await, 3);
    assert_eq!(app.remaining(&token, client).await, 7);
    // Even an all-duplicate answer tells the kiosk where its quota stands.
    let third: Value = app.push(&token, &body).await.json().await.unwrap();
    assert_eq!(third["quotas"][0]["client_id"], client);
    assert_eq!(third["quotas"][0]["remaining"], 7);
    assert_eq!(third["quotas"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_retries_of_one_batch_count_once() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 100).await;
    let token = app.token("K1").await;
    let items = (1..=20)
        .map(|i| json!({"id": i, "op_id": uuid::Uuid::now_v7(), "type": "copy", "payload": {"client_id": client, "uid": "04AB12CD"}}))
        .collect();
    let body = batch("K1", items);
    let pushes = (0..6).map(|_| app.push_ok(&token, &body));
    let results = futures_util::future::join_all(pushes).await;
    for data in &results {
        assert!(data.iter().all(|r| r["status"] == "synced"));
    }
    let fresh: usize = results
        .iter()
        .flatten()
        .filter(|r| r.get("duplicate").is_none())
        .count();
    assert_eq!(
        fresh, 20,
        "each item is new in exactly one of the concurrent pushes"
    );
    assert_eq!(app.ledger_count().await, 20);
    assert_eq!(app.remaining(&token, client).await, 80);
}

#[tokio::test]
async fn op_id_is_the_key_when_present() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let op = uuid::Uuid::now_v7();
    let item = |id: i64| json!({"id": id, "op_id": op, "type": "write", "payload": {"client_id": client, "uid": "04A1B2C3D4E5F6", "occurred_at": "2026-11-20T10:00:00Z"}});
    let first = app.push_ok(&token, &batch("K1", vec![item(1)])).await;
    assert_eq!(first[0]["op_id"], op.to_string());
    // The same operation under another local id (the kiosk's database was rebuilt): still one copy.
    let second = app.push_ok(&token, &batch("K1", vec![item(99)])).await;
    assert_eq!(second[0]["duplicate"], true);
    assert_eq!(second[0]["id"], 99);
    assert_eq!(app.ledger_count().await, 1);
    assert_eq!(app.remaining(&token, client).await, 9);
}

#[tokio::test]
async fn a_reused_local_id_for_another_copy_is_not_silently_dropped() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    app.push_ok(&token, &batch("K1", vec![seed_item(1, client, "04AB12CD")]))
        .await;
    let data = app
        .push_ok(&token, &batch("K1", vec![seed_item(1, client, "04FFFFFF")]))
        .await;
    assert_eq!(data[0]["status"], "failed");
    let error = data[0]["error"].as_str().unwrap();
    assert!(error.contains("conflict"), "{error}");
    assert!(
        !error.contains("04AB12CD"),
        "the answer does not show the other operation's badge: {error}"
    );
    assert_eq!(app.ledger_count().await, 1);
}

#[tokio::test]
async fn overdraft_is_recorded_counted_and_flagged() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 1).await;
    let token = app.token("K1").await;
    let data = app
        .push_ok(
            &token,
            &batch(
                "K1",
                (1..=3).map(|i| seed_item(i, client, "04AB12CD")).collect(),
            ),
        )
        .await;
    assert!(
        data.iter().all(|r| r["status"] == "synced"),
        "a copy is never refused for lack of quota"
    );
    let flags: Vec<bool> = data.iter().map(|r| r["overdraft"] == true).collect();
    assert_eq!(flags, vec![false, true, true]);
    assert_eq!(app.ledger_count().await, 3);
    assert_eq!(app.overdraft_count().await, 2);
    assert_eq!(app.remaining(&token, client).await, -2);
    // A top-up brings it back.
    assert_eq!(app.add_quota(client, 5).await, 3);
    assert_eq!(app.remaining(&token, client).await, 3);
}

#[tokio::test]
async fn one_bad_item_does_not_sink_its_batch() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let items = vec![
        seed_item(1, client, "04AB12CD"),
        seed_item(2, 999_999, "04AB12CD"),
        seed_item(3, client, "not-hex"),
        json!({"id": 4, "type": "teleport", "payload": {"client_id": client, "uid": "04AB12CD"}}),
        json!({"type": "copy", "payload": {"client_id": client, "uid": "04AB12CD"}}),
        json!({"id": 6, "type": "copy"}),
        seed_item(7, client, "04AB12CE"),
    ];
    let data = app.push_ok(&token, &batch("K1", items)).await;
    let statuses: Vec<&str> = data.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["synced", "failed", "failed", "failed", "failed", "failed", "synced"]
    );
    for r in data.iter().filter(|r| r["status"] == "failed") {
        assert!(
            r["error"].as_str().is_some_and(|e| !e.is_empty()),
            "failed items carry a string error: {r}"
        );
    }
    assert!(data[1]["error"]
        .as_str()
        .unwrap()
        .contains("unknown client"));
    assert!(data[2]["error"].as_str().unwrap().contains("uid"));
    assert!(data[3]["error"].as_str().unwrap().contains("teleport"));
    assert!(data[4]["id"].is_null());
    assert_eq!(app.ledger_count().await, 2);
    assert_eq!(app.remaining(&token, client).await, 8);
}

#[tokio::test]
async fn limits_and_malformed_bodies_get_clear_errors() {
    let app = spawn_with(|c| {
        c.max_batch_items = 10;
        c.max_body_bytes = 4096;
    })
    .await;
    let client = app.add_client("ACME", 100).await;
    let token = app.token("K1").await;

    let too_many = batch(
        "K1",
        (1..=11).map(|i| seed_item(i, client, "04AB12CD")).collect(),
    );
    assert_eq!(
        error_code(app.push(&token, &too_many).await, 413).await,
        "payload_too_large"
    );

    let huge = batch(
        "K1",
        vec![
            json!({"id": 1, "type": "copy", "payload": {"client_id": client, "uid": "04AB12CD", "pad": "x".repeat(8000)}}),
        ],
    );
    assert_eq!(
        error_code(app.push(&token, &huge).await, 413).await,
        "payload_too_large"
    );

    let raw = |ctype: &'static str, body: &'static str| {
        app.http
            .post(format!("{}/api/sync/push", app.base))
            .bearer_auth(&token)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let res = raw("application/json", "{\"device_id\": \"K1\", \"queue\": [")
        .await
        .unwrap();
    assert_eq!(error_code(res, 400).await, "malformed_json");
    let res = raw("application/json", "[1,2,3]").await.unwrap();
    assert_eq!(error_code(res, 400).await, "malformed_json");
    let res = raw("text/plain", "{}").await.unwrap();
    assert_eq!(error_code(res, 415).await, "unsupported_media_type");

    let res = app
        .http
        .get(format!("{}/no/such/route", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");

    assert_eq!(
        app.ledger_count().await,
        0,
        "rejected requests change nothing"
    );
    assert_eq!(app.remaining(&token, client).await, 100);
}

#[tokio::test]
async fn pull_returns_each_clients_remaining() {
    let app = spawn_app().await;
    let a = app.add_client("A", 5).await;
    let b = app.add_client("B", 0).await;
    let token = app.token("K1").await;
    app.push_ok(
        &token,
        &batch(
            "K1",
            vec![
                seed_item(1, a, "04AB12CD"),
                seed_item(2, a, "04AB12CE"),
                seed_item(3, b, "04AB12CF"),
            ],
        ),
    )
    .await;
    let res = app
        .http
        .get(format!("{}/api/sync/pull", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["success"], true);
    let quotas = body["quotas"].as_array().unwrap();
    let get = |c: i64| {
        quotas.iter().find(|q| q["client_id"] == c).unwrap()["remaining"]
            .as_i64()
            .unwrap()
    };
    assert_eq!((get(a), get(b)), (3, -1));
    assert_eq!(quotas.len(), 2);
}

#[tokio::test]
async fn concurrent_pushes_charging_the_same_clients_all_succeed() {
    // Kiosks whose batches charge several shared clients in opposite orders:
    // the pattern that deadlocked before quota rows were locked in id order.
    let app = spawn_with(|c| c.db_pool_size = 8).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(app.add_client(&format!("C{i}"), 1000).await);
    }
    let mut tasks = Vec::new();
    for k in 0..8 {
        let device = format!("K{k}");
        let token = app.token(&device).await;
        let mut order = clients.clone();
        if k % 2 == 1 {
            order.reverse();
        }
        let (http, base) = (app.http.clone(), app.base.clone());
        tasks.push(tokio::spawn(async move {
            for b in 0..5 {
                let items: Vec<Value> = (0..20)
                    .map(|i| seed_item(b * 20 + i + 1, order[i as usize % 5], "04AB12CD"))
                    .collect();
                let res = http
                    .post(format!("{base}/api/sync/push"))
                    .bearer_auth(&token)
                    .json(&batch(&device, items))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(app.ledger_count().await, 8 * 5 * 20);
    let token = app.token("K0").await;
    let mut left = 0;
    for c in clients {
        left += app.remaining(&token, c).await;
    }
    assert_eq!(left, 5 * 1000 - 800);
}

/// A pull's `version` asked back as `since_version` lists only the clients
/// changed since; an assignment change, or a version the database has not
/// reached (a restore), answers everything again. A version is a snapshot's
/// xmin, cluster-wide: another test's transaction running meanwhile makes
/// an answer list more, never less — so every change must be listed at
/// once, while "only the change" is awaited from a fresh version.
#[tokio::test]
async fn a_pull_since_a_version_lists_only_what_changed() {
    let app = spawn_app().await;
    let a = app.add_client("A", 5).await;
    let b = app.add_client("B", 7).await;
    let token = app.token("K1").await;
    let pull = |query: String| {
        let (http, base, token) = (app.http.clone(), app.base.clone(), token.clone());
        async move {
            let res = http
                .get(format!("{base}/api/sync/pull{query}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body: Value = res.json().await.unwrap();
            let listed: Vec<(i64, i64)> = body["quotas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| {
                    (
                        q["client_id"].as_i64().unwrap(),
                        q["remaining"].as_i64().unwrap(),
                    )
                })
                .collect();
            let delta = body["delta"].as_bool().unwrap();
            (body["version"].as_i64().unwrap(), delta, listed)
        }
    };
    let (_, delta, listed) = pull(String::new()).await;
    assert_eq!((delta, listed), (false, vec![(a, 5), (b, 7)]));

    let quiet = eventually(Duration::from_secs(20), || async {
        let (v, _, _) = pull(String::new()).await;
        let (_, delta, listed) = pull(format!("?since_version={v}")).await;
        delta && listed.is_empty()
    })
    .await;
    assert!(quiet, "nothing changed: an empty delta");

    let mut remaining_a = 5;
    let only_a = eventually(Duration::from_secs(20), || {
        remaining_a += 1;
        let expected = remaining_a;
        let pull = &pull;
        let app = &app;
        async move {
            let (v, _, _) = pull(String::new()).await;
            app.add_quota(a, 1).await;
            let (_, delta, listed) = pull(format!("?since_version={v}")).await;
            assert!(
                listed.contains(&(a, expected)),
                "a change is never missed: {listed:?}"
            );
            delta && listed == [(a, expected)]
        }
    })
    .await;
    assert!(only_a, "a top-up: only that client");

    let (v, _, _) = pull(String::new()).await;
    let mut conn = app.db().await;
    db::devices::assign(&mut conn, &DeviceId::parse("K1").unwrap(), &[], &[b])
        .await
        .unwrap();
    let (v4, delta, listed) = pull(format!("?since_version={v}")).await;
    assert_eq!(
        (delta, listed),
        (false, vec![(a, remaining_a)]),
        "a client taken away: everything, so the kiosk forgets it"
    );

    let (_, delta, listed) = pull(format!("?since_version={}", v4 + 1_000_000_000)).await;
    assert_eq!(
        (delta, listed.len()),
        (false, 1),
        "a version from elsewhere"
    );

    let leasing = eventually(Duration::from_secs(20), || async {
        let (v, _, _) = pull(String::new()).await;
        pull(format!("?lease=true&since_version={v}")).await.1
    })
    .await;
    assert!(leasing, "a leasing pull answers a delta too");
    let res = app
        .http
        .get(format!("{}/api/sync/pull?since_version=x", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 400).await, "invalid_request");
}

/// A pull answer is gzip-compressed for a kiosk that accepts it, and plain
/// for one that does not (the seed client).
#[tokio::test]
async fn sync_answers_are_compressed_when_accepted() {
    let app = spawn_app().await;
    for i in 0..50 {
        app.add_client(&format!("Client number {i}"), 10).await;
    }
    let token = app.token("K1").await;
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let get = |encoding: Option<&'static str>| {
        let mut req = raw
            .get(format!("{}/api/sync/pull", app.base))
            .bearer_auth(&token);
        if let Some(e) = encoding {
            req = req.header("accept-encoding", e);
        }
        req.send()
    };
    let plain = get(None).await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    let gzipped = get(Some("gzip")).await.unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let gzipped = gzipped.bytes().await.unwrap();
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "a gzip stream");
    assert!(
        gzipped.len() * 3 < plain.len(),
        "{} bytes gzipped, {} plain",
        gzipped.len(),
        plain.len()
    );
    // The test client accepts gzip and decodes it.
    let quotas = app.pull(&token).await.json::<Value>().await.unwrap();
    assert_eq!(quotas["quotas"].as_array().unwrap().len(), 50);
}

/// A kiosk's push does not wait for another of its pushes still in flight:
/// the device row is only share-locked by a push. The first push is held up
/// on its client's quota row (locked here); the second, for another client,
/// completes meanwhile.
#[tokio::test]
async fn a_kiosks_pushes_do_not_queue_on_its_device_row() {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
    let app = spawn_app().await;
    let a = app.add_client("A", 10).await;
    let b = app.add_client("B", 10).await;
    let token = app.token("K1").await;

    let mut blocker = app.db().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM quotas WHERE client_id = {a} FOR UPDATE"
        ))
        .await
        .unwrap();
    let first = tokio::spawn({
        let (http, base, token) = (app.http.clone(), app.base.clone(), token.clone());
        let body = batch("K1", vec![seed_item(1, a, "04AB12CD")]);
        async move {
            http.post(format!("{base}/api/sync/push"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let waiting = eventually(Duration::from_secs(10), || async {
        diesel::sql_query(
            "SELECT count(*)::int8 AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query LIKE '%FROM quotas%FOR UPDATE%'",
        )
        .get_result::<N>(&mut app.db().await)
        .await
        .unwrap()
        .n > 0
    })
    .await;
    assert!(waiting, "the first push waits for client A's quota row");

    let second = tokio::time::timeout(
        Duration::from_secs(20),
        app.push_ok(&token, &batch("K1", vec![seed_item(2, b, "04AB12CE")])),
    )
    .await
    .expect("the second push does not wait for the first");
    assert_eq!(
        second[0]["status"], "synced",
        "the second push went through"
    );
    assert!(!first.is_finished(), "while the first still waits");
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(app.ledger_count().await, 2);
}
