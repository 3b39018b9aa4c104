//! Golden wire fixtures: every shape round-trips, and the seed client's own
//! shapes parse.

use std::path::PathBuf;

use propass_protocol::*;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Parses the fixture as `T` and checks that serializing gives the same JSON back.
fn round_trip<T: Serialize + DeserializeOwned>(name: &str) -> T {
    let json = fixture(name);
    let parsed: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(back, json, "{name} does not round-trip");
    parsed
}

#[test]
fn every_fixture_round_trips() {
    round_trip::<LoginRequest>("login_request.json");
    let login: LoginResponse = round_trip("login_response.json");
    assert_eq!(login.user.role, Role::Admin);
    round_trip::<RefreshResponse>("refresh_response.json");
    round_trip::<EnrollRequest>("enroll_request.json");
    round_trip::<DeviceTokenRequest>("device_token_request.json");
    let issued: DeviceTokenResponse = round_trip("device_token_response.json");
    assert!(issued.credential.starts_with("pdc_"));
    let push: PushRequest = round_trip("push_request_agent.json");
    assert_eq!(push.queue[1].payload.uid.as_bytes().len(), 7);
    assert_eq!(
        (
            push.queue[0].payload.unverified,
            push.queue[1].payload.unverified
        ),
        (None, Some(true))
    );
    let res: PushResponse = round_trip("push_response.json");
    assert_eq!(res.data[3].status, PushStatus::Failed);
    assert!(res.data[2].overdraft && res.data[1].duplicate);
    assert_eq!(res.leases[0].units, 7);
    let pull: PullResponse = round_trip("pull_response.json");
    assert_eq!(pull.quotas[1].remaining, -1);
    assert_eq!(
        (pull.quotas[0].lease, pull.quotas[1].lease),
        (Some(10), None)
    );
    assert_eq!(pull.recorded_through, Some(41));
    assert!(pull.lease_excess.is_empty(), "absent: nothing asked back");
    let lowered: PullResponse = round_trip("pull_response_lease_excess.json");
    assert_eq!(
        lowered.lease_excess,
        [LeaseEntry {
            client_id: ClientId::new(1).unwrap(),
            units: 7
        }]
    );
    round_trip::<HealthResponse>("health_response.json");
    let err: ErrorBody = round_trip("error_body.json");
    assert_eq!(err.error.code, ErrorCode::PayloadTooLarge);
    assert_eq!(err.error.code.http_status(), 413);
    assert_eq!(round_trip::<WsMessage>("ws_ping.json"), WsMessage::Ping);
    assert_eq!(round_trip::<WsMessage>("ws_pong.json"), WsMessage::Pong);
    assert!(
        matches!(round_trip::<WsMessage>("ws_quota_updated.json"), WsMessage::QuotaUpdated(q) if q.remaining == 46)
    );
    assert!(
        matches!(round_trip::<WsMessage>("ws_sync_completed.json"), WsMessage::SyncCompleted(s) if s.synced == 2)
    );
    assert!(
        matches!(round_trip::<WsMessage>("ws_copy_completed.json"), WsMessage::CopyCompleted(c) if c.id == 41)
    );
    assert!(
        matches!(round_trip::<WsMessage>("ws_heartbeat.json"), WsMessage::Heartbeat(h) if h.pending == 3 && h.reader == ReaderHealth::Ok && h.storage_error.is_none())
    );
    assert!(
        matches!(round_trip::<WsMessage>("ws_heartbeat_cannot_record.json"), WsMessage::Heartbeat(h) if h.storage_error.as_deref() == Some("database or disk is full"))
    );
}

#[test]
fn seed_client_shapes_parse() {
    let login: LoginRequest = serde_json::from_value(fixture("seed_login_request.json")).unwrap();
    assert_eq!(login.device_id.as_str(), "KIOSK_LQ3K9Z2A");

    // The seed sends no op_id, no occurred_at, and an extra "status" in the payload.
    let push: PushRequest = serde_json::from_value(fixture("seed_push_request.json")).unwrap();
    let item = &push.queue[0];
    assert_eq!((item.id, item.op_id, item.op_type), (1, None, OpType::Copy));
    assert_eq!(item.payload.uid.to_hex(), "04AB12CD34");
    assert_eq!(item.payload.occurred_at, None);

    let ping: WsMessage = serde_json::from_value(fixture("seed_ws_ping.json")).unwrap();
    assert_eq!(ping, WsMessage::Ping);
}

#[test]
fn results_carry_what_the_seed_client_reads() {
    // The seed reads result.id, result.status ('synced' or anything else) and
    // result.error (stored in a TEXT column): error must be a string or null.
    let res: Value =
        serde_json::to_value(PushItemResult::failed(Some(7), None, "unknown client 99")).unwrap();
    assert_eq!(res["id"], 7);
    assert_eq!(res["status"], "failed");
    assert_eq!(res["error"], "unknown client 99");
    let ok: PushResponse = serde_json::from_value(fixture("push_response.json")).unwrap();
    let v = serde_json::to_value(&ok.data[0]).unwrap();
    assert!(v["error"].is_null() && v.get("error").is_some());
}

#[test]
fn lenient_item_parsing_keeps_the_id() {
    let bad = serde_json::json!({"id": 5, "type": "steal", "payload": {"client_id": 1, "uid": "04AB12CD"}});
    let e = QueueItem::from_json(&bad).unwrap_err();
    assert_eq!(e.id, Some(5));
    assert!(e.message.contains("steal"), "{}", e.message);

    let bad_uid =
        serde_json::json!({"id": 6, "type": "copy", "payload": {"client_id": 1, "uid": "nothex"}});
    let e = QueueItem::from_json(&bad_uid).unwrap_err();
    assert_eq!(e.id, Some(6));
    assert!(e.message.contains("uid"), "{}", e.message);

    let no_id = serde_json::json!({"type": "copy", "payload": {}});
    assert_eq!(QueueItem::from_json(&no_id).unwrap_err().id, None);
    assert!(QueueItem::from_json(&fixture("seed_push_request.json")["queue"][0]).is_ok());
}

/// The server parses each pushed item once, from its text: whatever the
/// item, that answers exactly what the lenient parse of its JSON value does.
#[test]
fn parsing_an_item_from_its_text_answers_what_the_lenient_parse_does() {
    let seed = fixture("seed_push_request.json")["queue"][0].to_string();
    let items = [
        seed.as_str(),
        r#"{"id": 1, "op_id": "0190a6b0-0000-7000-8000-000000000001", "type": "copy", "payload": {"client_id": 3, "uid": "04AB12CD", "occurred_at": "2026-11-30T10:00:00Z", "sectors": "AAAAAAAAAAAAAAAA", "unverified": true}}"#,
        r#"{"id": 2, "type": "write", "payload": {"client_id": 3, "uid": "04:ab:12:cd", "status": "pending"}, "extra": [1]}"#,
        // A duplicated key: the typed parse refuses it, the value keeps the last.
        r#"{"id": 3, "id": 4, "type": "copy", "payload": {"client_id": 3, "uid": "04AB12CD"}}"#,
        r#"[5, null, "copy", {"client_id": 3, "uid": "04AB12CD"}]"#,
        r#"{"id": 6, "type": "copy", "payload": {"client_id": 3.0, "uid": "04AB12CD"}}"#,
        r#"{"id": 7, "type": "copy", "payload": {"client_id": "3", "uid": "04AB12CD"}}"#,
        r#"{"id": 8, "type": "copy", "payload": {"client_id": 0, "uid": "04AB12CD"}}"#,
        r#"{"id": 9.5, "type": "copy", "payload": {"client_id": 3, "uid": "04AB12CD"}}"#,
        r#"{"id": 18446744073709551615, "type": "copy", "payload": {"client_id": 3, "uid": "04AB12CD"}}"#,
        r#"{"id": 10, "type": "steal", "payload": {"client_id": 3, "uid": "04AB12CD"}}"#,
        r#"{"id": 11, "type": "copy", "payload": {"client_id": 3, "uid": "nothex"}}"#,
        r#"{"id": 12, "op_id": "not-a-uuid", "type": "copy", "payload": {"client_id": 3, "uid": "04AB12CD"}}"#,
        r#"{"id": 13, "type": "copy"}"#,
        r#"{"id": 14, "type": "copy", "payload": {"client_id": 3, "uid": "04AB12CD", "occurred_at": "yesterday"}}"#,
        r#""a string""#,
        "null",
        "17",
    ];
    for text in items {
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            QueueItem::from_raw(&raw),
            QueueItem::from_json(&value),
            "{text}"
        );
    }
    let dup: Box<serde_json::value::RawValue> = serde_json::from_str(items[3]).unwrap();
    assert_eq!(
        QueueItem::from_raw(&dup).unwrap().id,
        4,
        "the last key wins, as before"
    );
}

#[test]
fn unknown_error_codes_from_newer_servers_parse() {
    let body: ErrorBody =
        serde_json::from_str(r#"{"success":false,"error":{"code":"brand_new","message":"x"}}"#)
            .unwrap();
    assert_eq!(body.error.code, ErrorCode::Unknown);
}

#[test]
fn docs_show_every_fixture_verbatim() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../docs/protocol.md")).expect("docs/protocol.md");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("tests/fixtures")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed_") && name != "seed_push_request.json" {
            continue; // the seed's other shapes equal ours and are shown once
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if !doc.contains(&text) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/protocol.md no longer shows these fixtures verbatim: {missing:?}"
    );
}
