//! What the admin API answers, as the OpenAPI document's component schemas:
//! every member of every JSON answer, its type, and whether it may be null.
//! Objects are closed (`additionalProperties: false`) and every member is
//! always present, so the API test that checks each route's real answer
//! against its schema fails on a member added, renamed or dropped here or
//! in the handler.

use serde_json::{json, Map, Value};

fn int() -> Value {
    json!({"type": "integer"})
}

fn text() -> Value {
    json!({"type": "string"})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn one_of(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

fn list(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// `schema`, or null.
fn or_null(schema: Value) -> Value {
    if schema.get("$ref").is_some() {
        return json!({"oneOf": [schema, {"type": "null"}]});
    }
    let mut schema = schema;
    let t = schema["type"].clone();
    schema["type"] = json!([t, "null"]);
    schema
}

/// A reference to the component schema `name`.
pub fn refer(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A closed object whose `members` are all present.
fn object(members: &[(&str, Value)]) -> Value {
    let properties: Map<String, Value> = members
        .iter()
        .map(|(n, s)| ((*n).to_owned(), s.clone()))
        .collect();
    let required: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// Every schema an answer names, by name.
pub fn schemas() -> Value {
    let mut all = Map::new();
    for part in [clients(), kiosks(), people(), ledger(), plumbing()] {
        all.extend(part);
    }
    Value::Object(all)
}

/// `schemas` as a map of names to schemas.
fn named(schemas: Value) -> Map<String, Value> {
    match schemas {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn clients() -> Map<String, Value> {
    let client = object(&[
        ("id", int()),
        ("name", text()),
        ("total", int()),
        ("used", int()),
        ("leased", int()),
        ("remaining", int()),
        ("overdrafts", int()),
        ("kiosks", list(text())),
        ("partial_copy", boolean()),
        ("archived", boolean()),
        ("reader_key_count", int()),
        (
            "flags",
            list(one_of(&["overdrafts", "exhausted", "low_quota"])),
        ),
    ]);
    let change = object(&[
        ("at", time()),
        ("actor", text()),
        ("delta", int()),
        ("reason", text()),
    ]);
    named(json!({
        "Client": client,
        "ClientList": object(&[("clients", list(refer("Client")))]),
        "QuotaHistory": object(&[("entries", list(change))]),
    }))
}

fn kiosks() -> Map<String, Value> {
    let health = object(&[
        ("online", boolean()),
        ("heartbeat_at", or_null(time())),
        ("pending", or_null(int())),
        ("failed", or_null(int())),
        ("oldest_pending_at", or_null(time())),
        ("last_sync_at", or_null(time())),
        ("last_error", or_null(text())),
        ("reader", or_null(text())),
        ("blanks_written", or_null(int())),
        ("blanks_failed", or_null(int())),
        ("storage_error", or_null(text())),
        ("clock_skew_ms", or_null(int())),
        ("overdrafts_24h", int()),
        ("flags", list(text())),
    ]);
    let lease = object(&[
        ("device_id", text()),
        ("client_id", int()),
        ("units", int()),
        ("updated_at", time()),
    ]);
    let device = object(&[
        ("device_id", text()),
        ("name", or_null(text())),
        ("status", one_of(&["pending", "active", "revoked"])),
        ("enrolled", boolean()),
        ("clients", list(int())),
        ("agent_version", or_null(text())),
        ("first_seen", time()),
        ("last_seen", time()),
        ("lease_target", or_null(int())),
        ("lease_low_water", or_null(int())),
        ("health", or_null(refer("Health"))),
        ("leases", list(refer("Lease"))),
    ]);
    let returned = object(&[("client_id", int()), ("units", int())]);
    named(json!({
        "Health": health,
        "Lease": lease,
        "Device": device,
        "DeviceList": object(&[("devices", list(refer("Device")))]),
        "Reclaimed": object(&[("returned", list(returned)), ("device", refer("Device"))]),
        "EnrollmentCode": object(&[("code", text()), ("expires_at", time())]),
    }))
}

fn role() -> Value {
    one_of(&["admin", "operator", "kiosk"])
}

fn people() -> Map<String, Value> {
    let user = object(&[
        ("id", int()),
        ("username", text()),
        ("role", role()),
        ("disabled", boolean()),
        ("created_at", time()),
    ]);
    let who = object(&[("id", int()), ("username", text()), ("role", role())]);
    named(json!({
        "User": user,
        "UserList": object(&[("users", list(refer("User")))]),
        "Session": object(&[("user", who), ("csrf_token", text()), ("expires_at", time())]),
        "LoggedOut": object(&[("ok", boolean())]),
    }))
}

fn ledger() -> Map<String, Value> {
    let copy = object(&[
        ("id", int()),
        ("received_at", time()),
        ("occurred_at", time()),
        ("device_id", text()),
        ("client_id", int()),
        ("kind", text()),
        ("uid", text()),
        ("overdraft", boolean()),
        ("unverified", boolean()),
        ("voided", boolean()),
    ]);
    let audit_entry = object(&[
        ("id", int()),
        ("at", time()),
        ("actor", text()),
        ("action", text()),
        ("subject", text()),
        (
            "detail",
            json!({"description": "what the action changed, by action"}),
        ),
    ]);
    let counts = list(object(&[("hour", time()), ("copies", int())]));
    let series = object(&[
        ("client_id", int()),
        ("name", or_null(text())),
        ("counts", counts),
        (
            "quota_changes",
            list(object(&[("hour", time()), ("delta", int())])),
        ),
    ]);
    let page = |items: &str, of: &str| {
        object(&[(items, list(refer(of))), ("next_cursor", or_null(text()))])
    };
    named(json!({
        "Copy": copy,
        "CopyPage": page("copies", "Copy"),
        "Voided": object(&[("copy_id", int()), ("client", refer("Client"))]),
        "Hourly": object(&[("from", time()), ("to", time()), ("series", list(series))]),
        "AuditEntry": audit_entry,
        "AuditPage": page("entries", "AuditEntry"),
    }))
}

/// The document itself and the error body every refusal has.
fn plumbing() -> Map<String, Value> {
    named(json!({
        "Document": {"type": "object", "description": "this OpenAPI document"},
        "Error": object(&[
            ("success", json!({"type": "boolean", "enum": [false]})),
            ("error", object(&[("code", text()), ("message", text())])),
        ]),
    }))
}
