//! The audit log: every change made with the operator commands, with who
//! and why, committed with the change — a refused command leaves no entry.

use serde_json::Value;

use crate::helpers::*;

async fn audit(app: &TestApp) -> Vec<Value> {
    let (ok, out, err) = app.cli(&["audit", "--json"]).await;
    assert!(ok, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn every_change_is_audited_with_who_and_why_and_refusals_leave_nothing() {
    let app = spawn_app().await;
    let client = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let id = client.to_string();

    // A quota change needs a reason.
    let (ok, _, err) = app.cli(&["quota", "add", &id, "5"]).await;
    assert!(!ok && err.contains("--reason"), "{err}");
    let (ok, _, err) = app.cli(&["quota", "add", &id, "5", "--reason", "  "]).await;
    assert!(!ok && err.contains("reason is required"), "{err}");
    assert_eq!(app.remaining(&token, client).await, 10);
    assert!(audit(&app).await.is_empty());

    let (ok, _, err) = app
        .cli(&["quota", "add", &id, "5", "--reason", "order 4711"])
        .await;
    assert!(ok, "{err}");
    let (ok, _, err) = app.cli(&["device", "revoke", "K1"]).await;
    assert!(ok, "{err}");
    // Refused: no such client; nothing changes, nothing is audited.
    let (ok, _, _) = app
        .cli(&["quota", "add", "999", "5", "--reason", "typo"])
        .await;
    assert!(!ok);

    let entries = audit(&app).await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["device.revoke", "quota.add"], "newest first");
    let quota = &entries[1];
    assert_eq!(quota["subject"], format!("client:{client}"));
    assert_eq!(quota["detail"]["delta"], 5);
    assert_eq!(quota["detail"]["reason"], "order 4711");
    assert!(
        quota["actor"].as_str().unwrap().starts_with("cli:"),
        "{quota}"
    );
    assert_eq!(entries[0]["subject"], "device:K1");
    let (ok, out, _) = app.cli(&["audit", "--action", "quota.add", "--json"]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
