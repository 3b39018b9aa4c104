//! Leases: units set aside for one kiosk, spendable offline, never granted
//! twice; pushes consume them; revocation, unassignment and a clean shutdown
//! give them back.

use propass_protocol::Role;
use propass_server::db;
use serde_json::{json, Value};

use crate::helpers::*;

/// `GET /api/sync/pull?lease=true`: the entry of `client`.
async fn lease_pull(app: &TestApp, token: &str, client: i64) -> Value {
    app.pull_entry_asking(token, client, "?lease=true").await
}

fn copies(device: &str, client: i64, from: i64, n: i64) -> Value {
    let items: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({"id": i, "op_id": uuid::Uuid::now_v7(), "type": "copy",
                   "payload": {"client_id": client, "uid": format!("04AB{i:04X}"), "occurred_at": "2026-11-23T09:15:00Z"}})
        })
        .collect();
    json!({"device_id": device, "queue": items})
}

/// (used, leased, total) of `client`, and the sum of its lease rows.
async fn books(app: &TestApp, client: i64) -> (i64, i64, i64, i64) {
    let rows = db::clients::list(&mut app.db().await).await.unwrap();
    let r = rows.iter().find(|r| r.id == client).unwrap();
    let held: i64 = db::leases::list(&mut app.db().await, None)
        .await
        .unwrap()
        .iter()
        .filter(|l| l.client_id == client)
        .map(|l| l.units)
        .sum();
    (r.used, r.leased, r.total, held)
}

/// An operator's correction removes only free units: units set aside for a
/// kiosk may be spent offline at any moment, so used + leased ≤ total holds.
#[tokio::test]
async fn a_correction_cannot_take_back_leased_units() {
    let app = spawn_app().await; // lease_target 10
    let client = app.add_client("ACME", 12).await;
    let token = app.token("K1").await;
    assert_eq!(lease_pull(&app, &token, client).await["lease"], 10);
    let actor = propass_server::admin::Actor::cli("root");
    let id = propass_protocol::ClientId::new(client).unwrap();

    let refused = propass_server::admin::adjust_quota(&mut app.db().await, &actor, id, -3, "typo")
        .await
        .unwrap_err();
    let said = refused.to_string();
    assert!(
        said.contains("only 2 are free") && said.contains("10 more are set aside"),
        "{said}"
    );
    assert_eq!(
        books(&app, client).await,
        (0, 10, 12, 10),
        "nothing changed"
    );

    let fixed = propass_server::admin::adjust_quota(&mut app.db().await, &actor, id, -2, "typo")
        .await
        .unwrap();
    assert_eq!(fixed.remaining, 0);
    assert_eq!(books(&app, client).await, (0, 10, 10, 10));
    assert!(
        propass_server::admin::adjust_quota(&mut app.db().await, &actor, id, -1, "again")
            .await
            .is_err(),
        "nothing free is left to remove"
    );
    assert_eq!(
        app.add_quota(client, 1).await,
        1,
        "adding is always allowed"
    );
}

#[tokio::test]
async fn a_lease_is_set_aside_consumed_by_pushes_and_refilled_when_low() {
    let app = spawn_app().await; // lease_target 10, lease_low_water 5
    let client = app.add_client("ACME", 30).await;
    let token = app.token("K1").await;
    let seed = app.token("SEED").await;

    let q = lease_pull(&app, &token, client).await;
    assert_eq!(
        (q["lease"].as_i64(), q["remaining"].as_i64()),
        (Some(10), Some(20))
    );
    assert_eq!(
        app.remaining(&seed, client).await,
        20,
        "a kiosk without a lease sees only the units no lease holds"
    );

    let res = app.push(&token, &copies("K1", client, 1, 3)).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["leases"], json!([{"client_id": client, "units": 7}]));
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["overdraft"] != true));
    assert_eq!(body["quotas"][0]["remaining"], 20, "spent from the lease");

    assert_eq!(
        lease_pull(&app, &token, client).await["lease"],
        7,
        "not below the low-water mark"
    );
    app.push_ok(&token, &copies("K1", client, 4, 3)).await;
    let q = lease_pull(&app, &token, client).await;
    assert_eq!(
        (q["lease"].as_i64(), q["remaining"].as_i64()),
        (Some(10), Some(14)),
        "refilled to the target"
    );
    assert_eq!(books(&app, client).await, (6, 10, 30, 10));
}

#[tokio::test]
async fn concurrent_lease_requests_never_grant_a_unit_twice() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 25).await;
    let mut tokens = Vec::new();
    for k in 0..12 {
        tokens.push(app.token(&format!("K{k}")).await);
    }
    let pulls = tokens.iter().map(|t| lease_pull(&app, t, client));
    let leases: Vec<i64> = futures_util::future::join_all(pulls)
        .await
        .iter()
        .map(|q| q["lease"].as_i64().unwrap())
        .collect();
    assert_eq!(leases.iter().sum::<i64>(), 25, "{leases:?}");
    assert!(leases.iter().all(|l| [0, 5, 10].contains(l)), "{leases:?}");
    let (used, leased, total, held) = books(&app, client).await;
    assert_eq!((used, leased, total, held), (0, 25, 25, 25));
}

#[tokio::test]
async fn copies_beyond_a_lease_spend_the_free_units_and_are_flagged_when_none_are_left() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let seed = app.token("SEED").await;
    assert_eq!(lease_pull(&app, &token, client).await["lease"], 10);
    // The seed kiosk holds no lease: every unit is K1's.
    let seed_push = json!({"device_id": "SEED", "queue": [seed_item(1, client, "04AB12CD")]});
    let data = app.push_ok(&seed, &seed_push).await;
    assert_eq!(data[0]["overdraft"], true);
    // K1's ten are its own; the eleventh is not.
    let data = app.push_ok(&token, &copies("K1", client, 1, 11)).await;
    let flags: Vec<bool> = data.iter().map(|r| r["overdraft"] == true).collect();
    assert_eq!(flags.iter().filter(|f| **f).count(), 1, "{flags:?}");
    assert!(flags[10]);
    let (used, leased, total, _) = books(&app, client).await;
    assert_eq!((used, leased, total), (12, 0, 10));
}

#[tokio::test]
async fn revocation_unassignment_and_a_clean_shutdown_give_units_back() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 30).await;
    let globex = app.add_client("Globex", 30).await;
    let k1 = app.token("K1").await;
    let k2 = app.token("K2").await;
    lease_pull(&app, &k1, acme).await;
    lease_pull(&app, &k2, acme).await;
    assert_eq!(books(&app, acme).await.1, 20);
    assert_eq!(books(&app, globex).await.1, 20);

    // K1 shuts down cleanly.
    let res = app
        .http
        .delete(format!("{}/api/sync/lease", app.base))
        .bearer_auth(&k1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["released"],
        json!([{"client_id": acme, "units": 10}, {"client_id": globex, "units": 10}])
    );
    assert_eq!(books(&app, acme).await.1, 10);

    // K2 stops serving Globex, then is revoked.
    let d = propass_protocol::DeviceId::parse("K2").unwrap();
    db::devices::assign(&mut app.db().await, &d, &[], &[globex])
        .await
        .unwrap();
    assert_eq!(books(&app, globex).await.1, 0);
    assert_eq!(books(&app, acme).await.1, 10);
    app.revoke("K2").await;
    assert_eq!(books(&app, acme).await, (0, 0, 30, 0));
}

/// Only a kiosk gives its own units back: an operator's token is refused.
#[tokio::test]
async fn only_a_kiosk_releases_its_lease() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 30).await;
    let k1 = app.token("K1").await;
    lease_pull(&app, &k1, acme).await;
    app.add_user("olga", "operator-pass", Role::Operator).await;
    let res = app.login("olga", "operator-pass", "K1").await;
    let operator = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .http
        .delete(format!("{}/api/sync/lease", app.base))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 403).await, "forbidden");
    let res = app
        .http
        .delete(format!("{}/api/sync/lease", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 401).await, "missing_token");
    assert_eq!(books(&app, acme).await.1, 10, "nothing given back");
}

/// `device lease`: a kiosk's own sizes replace its clients' for every client
/// it serves; `--default` gives them back; a low-water mark above the target
/// is refused and changes nothing.
#[tokio::test]
async fn a_kiosks_own_lease_sizes_replace_its_clients() {
    let app = spawn_app().await; // lease_target 10, lease_low_water 5
    let acme = app.add_client("ACME", 30).await;
    let k1 = app.token("K1").await;
    let k2 = app.token("K2").await;
    let (ok, _, err) = app
        .cli(&["device", "lease", "K1", "--target", "3", "--low-water", "4"])
        .await;
    assert!(!ok && err.contains("above the target"), "{err}");
    let (ok, _, err) = app.cli(&["device", "lease", "K1", "--target", "3"]).await;
    assert!(ok, "{err}");
    assert_eq!(lease_pull(&app, &k1, acme).await["lease"], 3);
    assert_eq!(
        lease_pull(&app, &k2, acme).await["lease"],
        10,
        "K2 keeps the client's size"
    );
    let (ok, _, err) = app.cli(&["device", "lease", "NOPE", "--target", "3"]).await;
    assert!(!ok && err.contains("no device NOPE"), "{err}");

    // Back to the client's sizes: refilled once below its low-water mark (5).
    let (ok, _, err) = app.cli(&["device", "lease", "K1", "--default"]).await;
    assert!(ok, "{err}");
    assert_eq!(lease_pull(&app, &k1, acme).await["lease"], 10);
    assert_eq!(books(&app, acme).await, (0, 20, 30, 20));

    // A kiosk's own lowered target asks it for what it holds above it.
    let (ok, _, err) = app.cli(&["device", "lease", "K2", "--target", "4"]).await;
    assert!(ok, "{err}");
    let body = app.pull_answer(&k2, "?lease=true").await;
    assert_eq!(
        body["lease_excess"],
        json!([{"client_id": acme, "units": 6}])
    );
}

/// Lowering a target asks each kiosk for what it holds above it (only the
/// kiosk knows what it has spent offline); the kiosk gives back what it has
/// not spent and keeps the rest. A seed client, which holds no lease, is
/// never asked.
#[tokio::test]
async fn a_lowered_target_is_given_back_by_the_kiosk_as_far_as_unspent() {
    let app = spawn_app().await; // lease_target 10
    let acme = app.add_client("ACME", 30).await;
    let k1 = app.token("K1").await;
    assert_eq!(lease_pull(&app, &k1, acme).await["lease"], 10);
    let pull = |query: &'static str| app.pull_answer(&k1, query);
    assert_eq!(pull("?lease=true").await.get("lease_excess"), None);

    let (ok, _, err) = app
        .cli(&["client", "lease", &acme.to_string(), "--target", "3"])
        .await;
    assert!(ok, "{err}");
    let body = pull("?lease=true").await;
    assert_eq!(
        body["lease_excess"],
        json!([{"client_id": acme, "units": 7}])
    );
    assert_eq!(
        pull("").await.get("lease_excess"),
        None,
        "only asked of a kiosk that leases"
    );

    let give = |query: String| {
        let (app, k1) = (&app, &k1);
        async move {
            app.http
                .delete(format!("{}/api/sync/lease{query}", app.base))
                .bearer_auth(k1)
                .send()
                .await
                .unwrap()
        }
    };
    // Bad asks change nothing.
    for bad in [
        "?units=5".to_owned(),
        format!("?client_id={acme}"),
        format!("?client_id={acme}&units=0"),
        format!("?client_id={acme}&units=-4"),
        "?client_id=abc&units=1".to_owned(),
        "?client_id=0&units=1".to_owned(),
    ] {
        let res = give(bad.clone()).await;
        assert_eq!(error_code(res, 400).await, "invalid_request", "{bad}");
    }
    assert_eq!(books(&app, acme).await, (0, 10, 30, 10));

    // Two of the ten were spent offline and are not pushed yet: it gives 5.
    let res = give(format!("?client_id={acme}&units=5")).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["released"], json!([{"client_id": acme, "units": 5}]));
    assert_eq!(books(&app, acme).await, (0, 5, 30, 5));
    assert_eq!(
        pull("?lease=true").await["lease_excess"],
        json!([{"client_id": acme, "units": 2}])
    );
    // Asking more than it holds gives what it holds; the lease stays (empty).
    let res = give(format!("?client_id={acme}&units=100")).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["released"], json!([{"client_id": acme, "units": 5}]));
    assert_eq!(books(&app, acme).await, (0, 0, 30, 0));
    // Empty, it is refilled up to the new target at its next pull.
    assert_eq!(lease_pull(&app, &k1, acme).await["lease"], 3);
}
