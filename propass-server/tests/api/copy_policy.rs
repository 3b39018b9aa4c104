//! Whole-badge copies: the sector map in the ledger, each client's
//! partial-copy policy (set by the operator, told to kiosks by pull), and
//! unverified copies (charged and flagged).

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use propass_protocol::ClientId;
use propass_server::db;
use serde_json::{json, Value};

use crate::helpers::*;

fn batch(device: &str, items: Vec<Value>) -> Value {
    json!({"device_id": device, "queue": items})
}

/// A copy the way our agent pushes it, with `sectors` when given.
fn agent_copy(id: i64, client: i64, uid: &str, sectors: Option<&str>) -> Value {
    let mut payload =
        json!({"client_id": client, "uid": uid, "occurred_at": "2026-11-23T09:15:00Z"});
    if let Some(s) = sectors {
        payload["sectors"] = json!(s);
    }
    json!({"id": id, "op_id": uuid::Uuid::now_v7(), "type": "copy", "payload": payload})
}

#[tokio::test]
async fn an_unverified_copy_is_charged_and_flagged_in_the_ledger() {
    use propass_server::db::schema::copies;
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let mut unverified = agent_copy(1, client, "04AB12CD", None);
    unverified["payload"]["unverified"] = json!(true);
    let mut verified = agent_copy(2, client, "04AB12CE", None);
    verified["payload"]["unverified"] = json!(false);
    let items = vec![
        unverified,
        verified,
        agent_copy(3, client, "04AB12CF", None),
        seed_item(4, client, "04AB12D0"),
    ];
    let data = app.push_ok(&token, &batch("K1", items)).await;
    assert!(data.iter().all(|r| r["status"] == "synced"), "{data:?}");
    let flags: Vec<(i64, bool)> = copies::table
        .select((copies::local_id, copies::unverified))
        .order(copies::local_id)
        .load(&mut app.db().await)
        .await
        .unwrap();
    assert_eq!(flags, [(1, true), (2, false), (3, false), (4, false)]);
    assert_eq!(
        app.remaining(&token, client).await,
        6,
        "all four are charged"
    );

    // An operator sees it, and voids it with a reason: the unit comes back,
    // once, and the audit log says who and why.
    let (ok, out, err) = app.cli(&["ledger", "unverified", "--json"]).await;
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let copy = listed[0]["id"].as_i64().unwrap().to_string();
    let (ok, _, err) = app.cli(&["ledger", "void", &copy, "--reason", " "]).await;
    assert!(!ok && err.contains("reason is required"), "{err}");
    let why = "customer says the card does not open the door";
    let (ok, out, err) = app.cli(&["ledger", "void", &copy, "--reason", why]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "7");
    assert_eq!(app.remaining(&token, client).await, 7);
    let (ok, _, err) = app
        .cli(&["ledger", "void", &copy, "--reason", "again"])
        .await;
    assert!(!ok && err.contains("already void"), "{err}");
    let verified: i64 = copies::table
        .filter(copies::local_id.eq(2))
        .select(copies::id)
        .first(&mut app.db().await)
        .await
        .unwrap();
    let (ok, _, err) = app
        .cli(&["ledger", "void", &verified.to_string(), "--reason", "no"])
        .await;
    assert!(!ok && err.contains("only an unverified copy"), "{err}");
    assert_eq!(
        app.remaining(&token, client).await,
        7,
        "refused voids change nothing"
    );
    let (ok, out, _) = app.cli(&["ledger", "unverified", "--json"]).await;
    assert!(ok && out.trim() == "[]", "{out}");
    use propass_server::db::schema::audit_log;
    let audited: Vec<(String, String, serde_json::Value)> = audit_log::table
        .select((audit_log::action, audit_log::subject, audit_log::detail))
        .load(&mut app.db().await)
        .await
        .unwrap();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].0, "copy.void");
    assert_eq!(audited[0].1, format!("copy:{copy}"));
    assert_eq!(audited[0].2["reason"], why);
}

#[tokio::test]
async fn a_whole_badge_copy_keeps_its_sector_map_and_a_malformed_one_fails_alone() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let one_k = "AAAAAA-AAAAAAAAA";
    let four_k = format!("{}B-", "A".repeat(38));
    let whole = agent_copy(1, client, "04AB12CD", Some(one_k));
    let items = vec![
        whole.clone(),
        agent_copy(2, client, "04AB12CE", Some(&four_k)),
        agent_copy(3, client, "04AB12CF", None),
        seed_item(4, client, "04AB12D0"),
        agent_copy(5, client, "04AB12D1", Some("AAAAAAAAAAAAAAA")),
        agent_copy(6, client, "04AB12D2", Some("AAAAAAAAAAAAAAAX")),
        agent_copy(7, client, "04AB12D3", Some("aaaaaaaaaaaaaaaa")),
    ];
    let data = app.push_ok(&token, &batch("K1", items)).await;
    let statuses: Vec<&str> = data.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["synced", "synced", "synced", "synced", "failed", "failed", "failed"]
    );
    for r in &data[4..] {
        let error = r["error"].as_str().unwrap();
        assert!(error.contains("sectors must be 16 or 40 characters"), "{r}");
        assert!(
            r["op_id"].is_string(),
            "the failure is matched by op_id: {r}"
        );
    }
    assert_eq!(
        app.ledger_sectors().await,
        [
            (1, Some(one_k.to_owned())),
            (2, Some(four_k.clone())),
            (3, None),
            (4, None),
        ]
    );
    assert_eq!(app.remaining(&token, client).await, 6);
    // The table holds to the same shape, whoever writes to it.
    let refused = diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE copies SET sectors = 'AAAX' WHERE local_id = 3"),
        &mut app.db().await,
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::CheckViolation,
                _
            ))
        ),
        "{refused:?}"
    );

    // A retry whose map differs is the same copy (judged by client, uid and
    // kind): a duplicate, not a conflict, and the first map stays.
    let mut retry = whole;
    retry["payload"]["sectors"] = json!("BBBBBBBBBBBBBBBB");
    let again = app.push_ok(&token, &batch("K1", vec![retry])).await;
    assert_eq!(
        (&again[0]["status"], &again[0]["duplicate"]),
        (&json!("synced"), &json!(true))
    );
    assert_eq!(app.ledger_sectors().await[0].1.as_deref(), Some(one_k));
    assert_eq!(app.remaining(&token, client).await, 6);
}

#[tokio::test]
async fn pull_tells_each_clients_partial_copy_policy() {
    let app = spawn_app().await;
    let a = app.add_client("A", 5).await;
    let b = app.add_client("B", 5).await;
    let token = app.token("K1").await;
    let before = app.pull_entry(&token, a).await;
    assert_eq!(
        before["partial_copy"], false,
        "denied unless allowed: {before}"
    );

    let version =
        db::clients::set_partial_copy(&mut app.db().await, ClientId::new(a).unwrap(), true)
            .await
            .unwrap()
            .expect("known client");
    let after = app.pull_entry(&token, a).await;
    assert_eq!(after["partial_copy"], true);
    assert_eq!(after["version"], version);
    assert!(
        version > before["version"].as_i64().unwrap(),
        "a policy change bumps the version"
    );
    assert_eq!(after["remaining"], 5, "the quota is untouched");
    assert_eq!(app.pull_entry(&token, b).await["partial_copy"], false);

    let unknown =
        db::clients::set_partial_copy(&mut app.db().await, ClientId::new(999).unwrap(), true)
            .await
            .unwrap();
    assert_eq!(unknown, None);
}

#[tokio::test]
async fn the_operator_sets_and_sees_the_policy_from_the_command_line() {
    let app = spawn_app().await;
    let token = app.token("K1").await;
    let (ok, out, err) = app
        .cli(&[
            "client",
            "add",
            "Lenient",
            "--quota",
            "3",
            "--partial-copy",
            "--json",
        ])
        .await;
    assert!(ok, "{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["partial_copy"], true);
    let id = added["id"].as_i64().unwrap();
    let (ok, _, err) = app
        .cli(&["device", "assign", "K1", "--add", &id.to_string()])
        .await;
    assert!(ok, "{err}");
    assert_eq!(app.pull_entry(&token, id).await["partial_copy"], true);

    let (ok, out, err) = app
        .cli(&[
            "client",
            "policy",
            &id.to_string(),
            "--partial-copy",
            "deny",
        ])
        .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deny");
    assert!(err.contains("next pull"), "{err}");
    assert_eq!(app.pull_entry(&token, id).await["partial_copy"], false);

    let (ok, out, err) = app
        .cli(&[
            "client",
            "policy",
            &id.to_string(),
            "--partial-copy",
            "allow",
            "--json",
        ])
        .await;
    assert!(ok, "{err}");
    let set: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (set["client_id"].as_i64(), &set["partial_copy"]),
        (Some(id), &json!(true))
    );

    let (ok, out, _) = app.cli(&["client", "list", "--json"]).await;
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["partial_copy"], true);
    // Both changes are in the audit log, once each, as the command line's.
    let subject = format!("client:{id}");
    let filter = db::audit::Filter {
        action: None,
        subject: Some(&subject),
        before: None,
    };
    let changes = db::audit::list(&mut app.db().await, filter, 10)
        .await
        .unwrap();
    let seen: Vec<(&str, &Value)> = changes
        .iter()
        .map(|e| (e.action.as_str(), &e.detail["partial_copy"]))
        .collect();
    assert_eq!(
        seen,
        [
            ("client.update", &json!(true)),
            ("client.update", &json!(false)),
        ],
        "newest first"
    );
    let (ok, out, _) = app.cli(&["client", "list"]).await;
    assert!(ok);
    assert!(out.lines().next().unwrap().contains("PARTIAL"), "{out}");
    assert!(out.lines().nth(1).unwrap().contains("allow"), "{out}");

    let (ok, _, err) = app
        .cli(&["client", "policy", "999", "--partial-copy", "allow"])
        .await;
    assert!(!ok);
    assert!(err.contains("error: no client with id 999"), "{err}");
    let (ok, _, err) = app
        .cli(&[
            "client",
            "policy",
            &id.to_string(),
            "--partial-copy",
            "maybe",
        ])
        .await;
    assert!(!ok, "only allow or deny: {err}");
}

/// The keys of a client's badges, set by an operator from standard input,
/// reach the kiosks serving the client that ask for them (`?reader_keys=
/// true`) — a full pull or one of what changed — and nowhere else: not a
/// kiosk that does not serve the client, not a pull that did not ask, not
/// the client list, not the audit log (which counts them), not an error.
#[tokio::test]
async fn reader_keys_reach_only_the_kiosks_serving_the_client_that_ask() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 10).await;
    let globex = app.add_client("Globex", 10).await;
    let token = app.token("K1").await;
    let (ok, _, err) = app
        .cli(&["device", "assign", "K1", "--remove", &globex.to_string()])
        .await;
    assert!(ok, "{err}");

    let (ok, out, err) = app
        .cli_fed(
            &["client", "keys", &acme.to_string()],
            "a0a1a2a3a4a5, B0B1B2B3B4B5\nb0b1b2b3b4b5\n",
        )
        .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2", "each key once");
    let (ok, _, err) = app
        .cli_fed(&["client", "keys", &globex.to_string()], "C0C1C2C3C4C5")
        .await;
    assert!(ok, "{err}");
    // A bad key changes nothing, and the error does not repeat it.
    let (ok, _, err) = app
        .cli_fed(
            &["client", "keys", &acme.to_string()],
            "D0D1D2D3D4D5 NOTAKEY00000",
        )
        .await;
    assert!(!ok);
    assert!(err.contains("key 2") && !err.contains("NOTAKEY"), "{err}");
    let (ok, _, err) = app
        .cli_fed(&["client", "keys", &acme.to_string()], "")
        .await;
    assert!(!ok && err.contains("--clear"), "{err}");

    let pull = |query: &'static str| {
        let app = &app;
        let token = &token;
        async move {
            let res = app
                .http
                .get(format!("{}/api/sync/pull{query}", app.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()
        }
    };
    let plain = pull("").await;
    assert!(plain["quotas"][0].get("reader_keys").is_none(), "{plain}");
    let asked = pull("?reader_keys=true").await;
    let quotas = asked["quotas"].as_array().unwrap();
    assert_eq!(quotas.len(), 1, "only the client K1 serves: {asked}");
    assert_eq!(quotas[0]["client_id"], acme);
    assert_eq!(
        quotas[0]["reader_keys"],
        json!(["A0A1A2A3A4A5", "B0B1B2B3B4B5"])
    );
    assert!(!asked.to_string().contains("C0C1C2C3C4C5"), "{asked}");

    // Cleared: a pull of what changed says so.
    let since = asked["version"].as_i64().unwrap();
    let (ok, out, err) = app
        .cli(&["client", "keys", &acme.to_string(), "--clear", "--json"])
        .await;
    assert!(ok, "{err}");
    let cleared: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cleared["reader_key_count"], 0);
    let res = app
        .http
        .get(format!(
            "{}/api/sync/pull?reader_keys=true&since_version={since}",
            app.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let delta: Value = res.json().await.unwrap();
    assert_eq!(delta["delta"], true, "{delta}");
    assert_eq!(delta["quotas"][0]["reader_keys"], json!([]), "{delta}");

    // Counted, never shown.
    let (ok, out, _) = app.cli(&["client", "list", "--json"]).await;
    assert!(ok);
    assert!(!out.contains("C0C1C2C3C4C5"), "{out}");
    let subject = format!("client:{acme}");
    let filter = db::audit::Filter {
        action: Some("client.reader_keys"),
        subject: Some(&subject),
        before: None,
    };
    let entries = db::audit::list(&mut app.db().await, filter, 10)
        .await
        .unwrap();
    let counts: Vec<&Value> = entries.iter().map(|e| &e.detail["count"]).collect();
    assert_eq!(
        counts,
        [&json!(0), &json!(2)],
        "newest first; the refused change wrote none"
    );
    let all =
        serde_json::to_string(&entries.iter().map(|e| &e.detail).collect::<Vec<_>>()).unwrap();
    assert!(!all.contains("A0A1A2A3A4A5"), "{all}");
}
