//! The operator plane: browser sessions, the role-checked admin API (walked
//! from its own OpenAPI document), the ledger read back by keyset pages and
//! streamed CSV, the dashboards' live stream, and `/metrics`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use propass_protocol::Role;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const OPERATOR: (&str, &str) = ("olga", "operator-pass-1");
const KIOSK: (&str, &str) = ("kiosk1", "kiosk-pass-1");

/// A logged-in browser: its session cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

impl TestApp {
    async fn admin_login(&self, user: &str, password: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/admin/login", self.base))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// The served OpenAPI document.
    async fn openapi(&self) -> Value {
        let res = self
            .http
            .get(format!("{}/api/admin/openapi.json", self.base))
            .send()
            .await
            .unwrap();
        res.json().await.unwrap()
    }

    /// Logs `user` in to the dashboard.
    async fn browser(&self, user: &str, password: &str) -> Browser {
        let res = self.admin_login(user, password).await;
        assert_eq!(res.status(), 200, "login of {user}");
        let set = res
            .headers()
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = res.json().await.unwrap();
        Browser {
            cookie: set.split(';').next().unwrap().to_owned(),
            csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        }
    }

    /// A request as `b`'s page makes it (cookie, and the CSRF header).
    fn as_page(&self, b: &Browser, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &b.cookie)
            .header("x-csrf-token", &b.csrf)
    }

    async fn page_json(
        &self,
        b: &Browser,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.as_page(b, method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// A path of the document with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1").replace("{name}", "nobody")
}

#[tokio::test]
async fn every_documented_route_refuses_whoever_may_not_call_it() {
    let app = spawn_app().await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    app.add_user(KIOSK.0, KIOSK.1, Role::Kiosk).await;
    let kiosk_token = {
        let res = app.login(KIOSK.0, KIOSK.1, "K1").await;
        let body: Value = res.json().await.unwrap();
        app.approve("K1").await;
        body["token"].as_str().unwrap().to_owned()
    };
    let operator = app.browser(OPERATOR.0, OPERATOR.1).await;
    let admin = app.browser(ADMIN.0, ADMIN.1).await;

    // A kiosk account never opens the dashboard.
    let res = app.admin_login(KIOSK.0, KIOSK.1).await;
    assert_eq!(error_code(res, 403).await, "forbidden");

    let doc = app.openapi().await;
    let mut checked = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let access = op["x-access"].as_str().unwrap();
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let url = format!("{}{}", app.base, concrete(path));
            let what = format!("{method} {path}");
            if access == "public" {
                let res = app.http.request(m.clone(), &url).send().await.unwrap();
                assert_ne!(res.status(), 404, "{what} is documented but not routed");
                continue;
            }
            checked += 1;
            // Anonymous: log in first.
            let res = app
                .http
                .request(m.clone(), &url)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(
                error_code(res, 401).await,
                "session_required",
                "{what} anonymous"
            );
            // A kiosk's token, valid as it is, opens nothing here.
            let res = app
                .http
                .request(m.clone(), &url)
                .bearer_auth(&kiosk_token)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(
                error_code(res, 403).await,
                "forbidden",
                "{what} with a kiosk token"
            );
            // A kiosk token next to a valid session cookie is refused too.
            let res = app
                .as_page(&admin, m.clone(), &concrete(path))
                .bearer_auth(&kiosk_token)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(
                error_code(res, 403).await,
                "forbidden",
                "{what} cookie + kiosk token"
            );
            if m != Method::GET {
                // The cookie alone does not change anything: CSRF.
                let res = app
                    .http
                    .request(m.clone(), &url)
                    .header("cookie", &admin.cookie)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    error_code(res, 403).await,
                    "csrf_rejected",
                    "{what} without CSRF"
                );
                let res = app
                    .http
                    .request(m.clone(), &url)
                    .header("cookie", &admin.cookie)
                    .header("x-csrf-token", &operator.csrf)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    error_code(res, 403).await,
                    "csrf_rejected",
                    "{what} with another session's CSRF"
                );
            }
            if access == "admin" {
                let res = app
                    .as_page(&operator, m.clone(), &concrete(path))
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    error_code(res, 403).await,
                    "forbidden",
                    "{what} as an operator"
                );
            } else if m == Method::GET && !path.ends_with("/events") {
                let res = app
                    .as_page(&operator, m.clone(), &concrete(path))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                assert!(
                    status == 200 || status == 404,
                    "{what} as an operator: {status}"
                );
            }
        }
    }
    assert!(checked >= 20, "only {checked} operations documented");
    // A documented path with another method: the wire error, 405.
    let res = app
        .as_page(&admin, Method::DELETE, "/api/admin/clients")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 405).await, "method_not_allowed");
    // What is not documented is not there.
    let res = app
        .as_page(&admin, Method::GET, "/api/admin/secrets")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 404).await, "not_found");
}

#[tokio::test]
async fn a_session_is_an_http_only_cookie_and_ends_with_logout_idleness_or_its_user() {
    let app = spawn_app().await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;

    let res = app.admin_login(OPERATOR.0, "wrong").await;
    assert_eq!(error_code(res, 401).await, "invalid_credentials");
    // An unauthenticated body is small.
    let res = app.admin_login(OPERATOR.0, &"x".repeat(20_000)).await;
    assert_eq!(error_code(res, 413).await, "payload_too_large");
    let res = app.admin_login(OPERATOR.0, OPERATOR.1).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user"]["role"], "operator");
    let op = Browser {
        cookie: cookie.split(';').next().unwrap().to_owned(),
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
    };
    let (status, me) = app
        .page_json(&op, Method::GET, "/api/admin/session", None)
        .await;
    assert_eq!((status, me["csrf_token"].clone()), (200, json!(op.csrf)));

    // Logins are audited, failed ones too.
    let admin = app.browser(ADMIN.0, ADMIN.1).await;
    let (_, audit) = app
        .page_json(
            &admin,
            Method::GET,
            "/api/admin/audit?subject=user:olga",
            None,
        )
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["session.login", "session.login_failed"]);

    // Idle past the limit: over.
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE admin_sessions SET last_seen_at = last_seen_at - interval '2 hours' WHERE user_id = (SELECT id FROM users WHERE username = 'olga')"),
        &mut app.db().await,
    )
    .await
    .unwrap();
    let res = app
        .as_page(&op, Method::GET, "/api/admin/session")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 401).await, "session_required");

    // Disabled by an admin: over at once.
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;
    let (status, _) = app
        .page_json(
            &admin,
            Method::PATCH,
            "/api/admin/users/olga",
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let res = app
        .as_page(&op, Method::GET, "/api/admin/clients")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 401).await, "session_required");
    let res = app.admin_login(OPERATOR.0, OPERATOR.1).await;
    assert_eq!(error_code(res, 403).await, "forbidden");

    // Logged out: the cookie opens nothing any more.
    let (status, _) = app
        .page_json(&admin, Method::POST, "/api/admin/logout", None)
        .await;
    assert_eq!(status, 200);
    let res = app
        .as_page(&admin, Method::GET, "/api/admin/clients")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 401).await, "session_required");
    // A forged cookie of the right shape opens nothing either.
    let forged = Browser {
        cookie: format!("propass_session={}", "a".repeat(64)),
        csrf: String::new(),
    };
    let res = app
        .as_page(&forged, Method::GET, "/api/admin/clients")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res, 401).await, "session_required");
}

/// An operator changes a client's copy policy from the dashboard: the
/// answer shows it, a kiosk serving the client reads it at its next pull,
/// and the audit log says who changed it; an empty change is refused.
#[tokio::test]
async fn an_operator_changes_a_clients_copy_policy_and_kiosks_read_it_at_their_next_pull() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    assert_eq!(app.pull_entry(&token, acme).await["partial_copy"], false);
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;
    let path = format!("/api/admin/clients/{acme}");
    let (status, client) = app
        .page_json(
            &op,
            Method::PATCH,
            &path,
            Some(json!({"partial_copy": true})),
        )
        .await;
    assert_eq!(
        (status, &client["partial_copy"]),
        (200, &json!(true)),
        "{client}"
    );
    assert_eq!(app.pull_entry(&token, acme).await["partial_copy"], true);
    let (status, e) = app
        .page_json(&op, Method::PATCH, &path, Some(json!({})))
        .await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (400, &json!("invalid_request")),
        "{e}"
    );
    let (_, audit) = app
        .page_json(
            &op,
            Method::GET,
            &format!("/api/admin/audit?subject=client:{acme}&action=client.update"),
            None,
        )
        .await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(
        (&entries[0]["actor"], &entries[0]["detail"]["partial_copy"]),
        (&json!(format!("user:{}", OPERATOR.0)), &json!(true))
    );
}

/// Reader keys over HTTP: the answer counts them and never shows them; a
/// malformed key is refused by its position (not its value), more than
/// `client_reader_keys_max` too, and neither changes anything.
#[tokio::test]
async fn an_operator_gives_a_clients_reader_keys_and_never_sees_them_again() {
    let app = spawn_with(|c| c.client_reader_keys_max = 2).await;
    let acme = app.add_client("ACME", 10).await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;
    let path = format!("/api/admin/clients/{acme}/reader-keys");
    let put = |keys: Value| app.page_json(&op, Method::PUT, &path, Some(json!({"keys": keys})));
    let (status, client) = put(json!(["A0A1A2A3A4A5", "b0b1b2b3b4b5", "A0A1A2A3A4A5"])).await;
    assert_eq!(
        (status, &client["reader_key_count"]),
        (200, &json!(2)),
        "{client}"
    );
    assert!(!client.to_string().contains("A0A1A2A3A4A5"), "{client}");
    let (status, e) = put(json!(["C0C1C2C3C4C5", "SECRETSECRET"])).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (400, &json!("invalid_request")),
        "{e}"
    );
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("keys[1]") && !message.contains("SECRET"),
        "{message}"
    );
    // Not a list: refused as JSON, without the value in the message.
    let (status, e) = put(json!("SECRETSECRET")).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (400, &json!("malformed_json")),
        "{e}"
    );
    assert!(!e.to_string().contains("SECRET"), "{e}");
    let (status, e) = put(json!(["C0C1C2C3C4C5", "D0D1D2D3D4D5", "E0E1E2E3E4E5"])).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (400, &json!("invalid_request")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("client_reader_keys_max"),
        "{e}"
    );
    let (_, clients) = app
        .page_json(&op, Method::GET, "/api/admin/clients", None)
        .await;
    assert_eq!(
        clients["clients"][0]["reader_key_count"], 2,
        "refusals changed nothing"
    );
    let (status, _) = app
        .page_json(
            &op,
            Method::PUT,
            "/api/admin/clients/999/reader-keys",
            Some(json!({"keys": []})),
        )
        .await;
    assert_eq!(status, 404);
    let token = app.token("K1").await;
    let res = app
        .http
        .get(format!("{}/api/sync/pull?reader_keys=true", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let pulled: Value = res.json().await.unwrap();
    assert_eq!(
        pulled["quotas"][0]["reader_keys"],
        json!(["A0A1A2A3A4A5", "B0B1B2B3B4B5"])
    );
}

#[tokio::test]
async fn operators_run_clients_quotas_and_kiosks_and_every_change_is_audited() {
    let app = spawn_app().await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;

    let (status, acme) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/clients",
            Some(json!({"name": "ACME", "quota": 10})),
        )
        .await;
    assert_eq!(status, 201, "{acme}");
    let id = acme["id"].as_i64().unwrap();
    assert_eq!(
        (acme["total"].clone(), acme["remaining"].clone()),
        (json!(10), json!(10))
    );
    assert_eq!(
        acme["flags"],
        json!(["low_quota"]),
        "10 left is the default threshold"
    );
    let (status, dup) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/clients",
            Some(json!({"name": "ACME"})),
        )
        .await;
    assert_eq!(
        (status, dup["error"]["code"].clone()),
        (409, json!("conflict"))
    );
    let (status, bad) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/clients",
            Some(json!({"name": "X", "quota": -1})),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );

    // A kiosk serving ACME hears of a top-up; a top-up without a reason changes nothing.
    let token = app.token("K1").await;
    let mut ws = app.ws("/ws", &token, "K1").await;
    let (status, e) = app
        .page_json(
            &op,
            Method::POST,
            &format!("/api/admin/clients/{id}/quota"),
            Some(json!({"delta": 5, "reason": " "})),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (status, e) = app
        .page_json(
            &op,
            Method::POST,
            &format!("/api/admin/clients/{id}/quota"),
            Some(json!({"delta": 5})),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (400, json!("malformed_json"))
    );
    let (status, after) = app
        .page_json(
            &op,
            Method::POST,
            &format!("/api/admin/clients/{id}/quota"),
            Some(json!({"delta": 5, "reason": "order 4711"})),
        )
        .await;
    assert_eq!(
        (status, after["total"].clone()),
        (200, json!(15)),
        "{after}"
    );
    assert_eq!(after["flags"], json!([]), "15 left is above the threshold");
    let fifteen = |m: &Value| m["type"] == "quota_updated" && m["data"]["remaining"] == 15;
    let heard = collect_until(&mut ws, Duration::from_secs(10), |got| {
        got.iter().any(fifteen)
    })
    .await;
    assert!(heard.iter().any(fifteen), "{heard:?}");
    let (status, e) = app
        .page_json(
            &op,
            Method::POST,
            &format!("/api/admin/clients/{id}/quota"),
            Some(json!({"delta": -100, "reason": "typo"})),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (409, json!("conflict"))
    );
    let (_, history) = app
        .page_json(
            &op,
            Method::GET,
            &format!("/api/admin/clients/{id}/quota-history"),
            None,
        )
        .await;
    assert_eq!(history["entries"].as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history["entries"][0]["actor"], "user:olga");
    assert_eq!(history["entries"][0]["delta"], 5);
    assert_eq!(history["entries"][0]["reason"], "order 4711");
    // The charts' hours carry it too: the burn-down rises where it was made.
    let (_, stats) = app
        .page_json(&op, Method::GET, "/api/admin/stats/hourly", None)
        .await;
    let series = stats["series"].as_array().unwrap();
    let acme = series
        .iter()
        .find(|s| s["client_id"] == id)
        .expect("{stats}");
    let added: i64 = acme["quota_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["delta"].as_i64().unwrap())
        .sum();
    assert_eq!(added, 5, "{stats}");

    // Kiosks: rename, take ACME off, revoke, reinstate; enrollment codes.
    let (status, k1) = app
        .page_json(
            &op,
            Method::PATCH,
            "/api/admin/devices/K1",
            Some(json!({"name": "Front desk"})),
        )
        .await;
    assert_eq!((status, k1["name"].clone()), (200, json!("Front desk")));
    assert_eq!(k1["health"]["online"], true, "{k1}");
    let (status, _) = app
        .page_json(
            &op,
            Method::PATCH,
            &format!("/api/admin/clients/{id}"),
            Some(json!({"archived": true})),
        )
        .await;
    assert_eq!(status, 409, "a client kiosks serve is not archived");
    let (status, k1) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/devices/K1/clients",
            Some(json!({"remove": [id]})),
        )
        .await;
    assert_eq!((status, k1["clients"].clone()), (200, json!([])));
    let (status, archived) = app
        .page_json(
            &op,
            Method::PATCH,
            &format!("/api/admin/clients/{id}"),
            Some(json!({"archived": true, "name": "ACME (old)"})),
        )
        .await;
    assert_eq!(
        (
            status,
            archived["archived"].clone(),
            archived["name"].clone()
        ),
        (200, json!(true), json!("ACME (old)"))
    );
    let (_, list) = app
        .page_json(&op, Method::GET, "/api/admin/clients", None)
        .await;
    assert!(
        list["clients"].as_array().unwrap().is_empty(),
        "archived clients are not listed: {list}"
    );
    let (status, _) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/devices/K1/clients",
            Some(json!({"add": [id]})),
        )
        .await;
    assert_eq!(status, 409, "an archived client is not given to a kiosk");
    let (status, k1) = app
        .page_json(&op, Method::POST, "/api/admin/devices/K1/revoke", None)
        .await;
    assert_eq!((status, k1["status"].clone()), (200, json!("revoked")));
    assert!(
        app.pull(&token).await.status() == 403,
        "the revoked kiosk's token stops"
    );
    let (status, _) = app
        .page_json(&op, Method::POST, "/api/admin/devices/K1/revoke", None)
        .await;
    assert_eq!(status, 409);
    let (status, k1) = app
        .page_json(&op, Method::POST, "/api/admin/devices/K1/reinstate", None)
        .await;
    assert_eq!((status, k1["status"].clone()), (200, json!("active")));
    let (status, _) = app
        .page_json(&op, Method::POST, "/api/admin/devices/NOPE/revoke", None)
        .await;
    assert_eq!(status, 404);
    let (status, code) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/enrollment-codes",
            Some(json!({"name": "Lobby", "valid_hours": 2})),
        )
        .await;
    assert_eq!(status, 200, "{code}");
    assert!(code["code"].as_str().is_some_and(|c| c.len() > 10));
    let (status, _) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/enrollment-codes",
            Some(json!({"valid_hours": 100000})),
        )
        .await;
    assert_eq!(status, 400);

    // The audit trail names who did what; the code itself is not in it.
    let (_, audit) = app
        .page_json(&op, Method::GET, "/api/admin/audit?limit=100", None)
        .await;
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .filter(|e| e["actor"] == "user:olga")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "client.add",
        "quota.add",
        "device.rename",
        "device.assign",
        "client.update",
        "device.revoke",
        "device.restore",
        "device.enroll",
        "session.login",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert_eq!(
        actions.iter().filter(|a| **a == "quota.add").count(),
        1,
        "refused changes leave nothing"
    );
    assert!(!audit.to_string().contains(code["code"].as_str().unwrap()));
    let csv = app
        .as_page(&op, Method::GET, "/api/admin/audit.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    assert!(text.starts_with("id,at,actor,action,subject,detail\n"));
    assert!(text.contains("order 4711"));
}

/// Operators see the units each kiosk holds in lease, take them back (for a
/// kiosk that will not return: the units are free again) and size a kiosk's
/// leases; every change is audited, and bad requests change nothing.
#[tokio::test]
async fn operators_see_size_and_take_back_each_kiosks_lease() {
    let app = spawn_app().await; // lease_target 10
    let acme = app.add_client("ACME", 30).await;
    let token = app.token("K1").await;
    app.pull_entry_asking(&token, acme, "?lease=true").await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;
    let k1_of = |list: &Value| {
        list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == "K1")
            .cloned()
            .unwrap()
    };

    let (status, list) = app
        .page_json(&op, Method::GET, "/api/admin/devices", None)
        .await;
    assert_eq!(status, 200);
    let leases = &k1_of(&list)["leases"];
    assert_eq!(leases.as_array().unwrap().len(), 1, "{leases}");
    assert_eq!(
        (leases[0]["client_id"].as_i64(), leases[0]["units"].as_i64()),
        (Some(acme), Some(10))
    );

    for (body, status) in [
        (json!({"client": 0}), 400),
        (json!({"clients": [acme]}), 400),
    ] {
        let (got, e) = app
            .page_json(
                &op,
                Method::POST,
                "/api/admin/devices/K1/reclaim",
                Some(body.clone()),
            )
            .await;
        assert_eq!(got, status, "{body}: {e}");
    }
    let (status, _) = app
        .page_json(&op, Method::POST, "/api/admin/devices/NOPE/reclaim", None)
        .await;
    assert_eq!(status, 404);
    let (status, none) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/devices/K1/reclaim",
            Some(json!({"client": acme + 1000})),
        )
        .await;
    assert_eq!((status, none["returned"].clone()), (200, json!([])));
    let (_, clients) = app
        .page_json(&op, Method::GET, "/api/admin/clients", None)
        .await;
    assert_eq!(clients["clients"][0]["leased"], 10, "nothing changed yet");

    let (status, done) = app
        .page_json(&op, Method::POST, "/api/admin/devices/K1/reclaim", None)
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["returned"], json!([{"client_id": acme, "units": 10}]));
    assert_eq!(done["device"]["leases"], json!([]));
    let (_, clients) = app
        .page_json(&op, Method::GET, "/api/admin/clients", None)
        .await;
    assert_eq!(
        (
            clients["clients"][0]["leased"].clone(),
            clients["clients"][0]["remaining"].clone()
        ),
        (json!(0), json!(30))
    );
    let (_, audit) = app
        .page_json(&op, Method::GET, "/api/admin/audit?subject=device:K1", None)
        .await;
    let reclaims: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "device.reclaim")
        .collect();
    assert_eq!(
        reclaims.len(),
        2,
        "both reclaims, the empty one too: {audit}"
    );
    assert!(reclaims.iter().all(|e| e["actor"] == "user:olga"));
    // Newest first: the entry keeps what the kiosk held.
    assert_eq!(
        reclaims[0]["detail"]["returned"],
        json!([{"client": acme, "units": 10}]),
        "{audit}"
    );
    assert_eq!(reclaims[1]["detail"]["returned"], json!([]), "{audit}");

    // The kiosk's own lease size replaces the client's (10 here).
    for bad in [
        json!({"target": 4, "low_water": 5}),
        json!({"low_water": 2}),
        json!({"target": -1}),
        json!({"target": 4, "extra": 1}),
    ] {
        let (status, _) = app
            .page_json(
                &op,
                Method::PUT,
                "/api/admin/devices/K1/lease",
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, k1) = app
        .page_json(
            &op,
            Method::PUT,
            "/api/admin/devices/K1/lease",
            Some(json!({"target": 4})),
        )
        .await;
    assert_eq!(
        (
            status,
            k1["lease_target"].clone(),
            k1["lease_low_water"].clone()
        ),
        (200, json!(4), json!(2)),
        "{k1}"
    );
    let q = app.pull_entry_asking(&token, acme, "?lease=true").await;
    assert_eq!(q["lease"], 4, "{q}");
    let (status, _) = app
        .page_json(
            &op,
            Method::PUT,
            "/api/admin/devices/NOPE/lease",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, k1) = app
        .page_json(
            &op,
            Method::PUT,
            "/api/admin/devices/K1/lease",
            Some(json!({})),
        )
        .await;
    assert_eq!((status, k1["lease_target"].clone()), (200, Value::Null));
    let (_, audit) = app
        .page_json(&op, Method::GET, "/api/admin/audit?subject=device:K1", None)
        .await;
    let sized: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "device.lease")
        .collect();
    assert_eq!(
        sized.len(),
        2,
        "the two changes, not the refused ones: {audit}"
    );
}

#[tokio::test]
async fn admins_manage_users_and_the_last_admin_cannot_lock_everyone_out() {
    let app = spawn_app().await;
    let admin = app.browser(ADMIN.0, ADMIN.1).await;
    let (status, u) = app
        .page_json(
            &admin,
            Method::POST,
            "/api/admin/users",
            Some(json!({"username": "ben", "password": "short", "role": "operator"})),
        )
        .await;
    assert_eq!(
        (status, u["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (status, u) = app
        .page_json(
            &admin,
            Method::POST,
            "/api/admin/users",
            Some(json!({"username": "ben", "password": "long-enough-1", "role": "operator"})),
        )
        .await;
    assert_eq!((status, u["role"].clone()), (201, json!("operator")), "{u}");
    assert!(u.get("password_hash").is_none());
    let (status, _) = app
        .page_json(
            &admin,
            Method::POST,
            "/api/admin/users",
            Some(json!({"username": "ben", "password": "long-enough-1", "role": "operator"})),
        )
        .await;
    assert_eq!(status, 409);

    let ben = app.browser("ben", "long-enough-1").await;
    let (status, _) = app
        .page_json(
            &admin,
            Method::PATCH,
            "/api/admin/users/ben",
            Some(json!({"password": "another-pass-2"})),
        )
        .await;
    assert_eq!(status, 200);
    let res = app
        .as_page(&ben, Method::GET, "/api/admin/clients")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, 401).await,
        "session_required",
        "a reset password ends the sessions"
    );
    assert_eq!(app.admin_login("ben", "long-enough-1").await.status(), 401);
    let (status, u) = app
        .page_json(
            &admin,
            Method::PATCH,
            "/api/admin/users/ben",
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!((status, u["role"].clone()), (200, json!("admin")));

    // Two admins: one may step down; then the other is the last.
    let (status, _) = app
        .page_json(
            &admin,
            Method::PATCH,
            "/api/admin/users/ben",
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, e) = app
        .page_json(
            &admin,
            Method::PATCH,
            "/api/admin/users/admin",
            Some(json!({"role": "operator"})),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (409, json!("conflict")),
        "{e}"
    );
    let (status, e) = app
        .page_json(
            &admin,
            Method::PATCH,
            "/api/admin/users/admin",
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (409, json!("conflict"))
    );
    let (_, users) = app
        .page_json(&admin, Method::GET, "/api/admin/users", None)
        .await;
    let states: Vec<(String, bool)> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["username"].as_str().unwrap().to_owned(),
                u["disabled"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [("admin".to_owned(), false), ("ben".to_owned(), true)]
    );
}

/// Pushes `n` seed copies for `client` from the kiosk of `token`, local ids from `first`.
/// An operator finds the unverified copies (`?unverified=true`) and voids
/// one that did not work, over HTTP: its unit comes back, the ledger shows
/// it voided, the audit log says who and why; a second void, a void of a
/// verified copy and a kiosk's token are refused and change nothing.
#[tokio::test]
async fn unverified_copies_are_found_and_voided_over_http() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    push_copies(&app, &token, "K1", acme, 1, 2).await;
    let mut doubtful = seed_item(3, acme, "04DEAD0000");
    doubtful["payload"]["unverified"] = json!(true);
    app.push_ok(&token, &json!({"device_id": "K1", "queue": [doubtful]}))
        .await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;
    let (_, found) = app
        .page_json(&op, Method::GET, "/api/admin/copies?unverified=true", None)
        .await;
    let found = found["copies"].as_array().unwrap().clone();
    assert_eq!(found.len(), 1, "{found:?}");
    let id = found[0]["id"].as_i64().unwrap();
    let remaining = || async {
        let (_, clients) = app
            .page_json(&op, Method::GET, "/api/admin/clients", None)
            .await;
        clients["clients"][0]["remaining"].as_i64().unwrap()
    };
    assert_eq!(remaining().await, 7);

    let void = format!("/api/admin/copies/{id}/void");
    let refused = app
        .http
        .post(format!("{}{void}", app.base))
        .bearer_auth(&token)
        .json(&json!({"reason": "kiosk"}))
        .send()
        .await
        .unwrap();
    assert!(
        matches!(refused.status().as_u16(), 401 | 403),
        "{}",
        refused.status()
    );
    let (status, e) = app
        .page_json(&op, Method::POST, &void, Some(json!({"reason": " "})))
        .await;
    assert_eq!(status, 400, "a reason is required: {e}");
    let (status, done) = app
        .page_json(
            &op,
            Method::POST,
            &void,
            Some(json!({"reason": "blank thrown away"})),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(remaining().await, 8, "its unit came back");
    let (status, _) = app
        .page_json(&op, Method::POST, &void, Some(json!({"reason": "again"})))
        .await;
    assert_eq!(status, 409, "already void");
    let verified = found[0]["id"].as_i64().unwrap() - 1;
    let (status, _) = app
        .page_json(
            &op,
            Method::POST,
            &format!("/api/admin/copies/{verified}/void"),
            Some(json!({"reason": "no"})),
        )
        .await;
    assert!(
        matches!(status, 404 | 409),
        "a verified copy is not voided: {status}"
    );
    assert_eq!(remaining().await, 8, "refused voids change nothing");
    let (_, audit) = app
        .page_json(&op, Method::GET, "/api/admin/audit?action=copy.void", None)
        .await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["actor"], format!("user:{}", OPERATOR.0));
    assert_eq!(entries[0]["detail"]["reason"], "blank thrown away");
}

async fn push_copies(app: &TestApp, token: &str, device: &str, client: i64, first: i64, n: i64) {
    let queue: Vec<Value> = (first..first + n)
        .map(|i| seed_item(i, client, &format!("04{i:010X}")))
        .collect();
    let results = app
        .push_ok(token, &json!({"device_id": device, "queue": queue}))
        .await;
    assert!(results.iter().all(|r| r["status"] == "synced"));
}

#[tokio::test]
async fn ledger_pages_hold_still_under_concurrent_pushes_and_filters_narrow_them() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 1000).await;
    let globex = app.add_client("Globex", 1000).await;
    let t1 = app.token("K1").await;
    let t2 = app.token("K2").await;
    push_copies(&app, &t1, "K1", acme, 1, 60).await;
    push_copies(&app, &t2, "K2", globex, 1, 40).await;
    let admin = app.browser(ADMIN.0, ADMIN.1).await;

    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pushed = 0;
    loop {
        let (status, page) = app
            .page_json(
                &admin,
                Method::GET,
                &format!("/api/admin/copies?limit=15&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["copies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_i64().unwrap()),
        );
        // Kiosks keep pushing while the operator pages.
        push_copies(&app, &t1, "K1", acme, 1000 + pushed * 3, 3).await;
        pushed += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no row twice");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_eq!(
        seen.len(),
        100,
        "every row that was there, and none pushed behind the cursor"
    );

    let (_, k2) = app
        .page_json(
            &admin,
            Method::GET,
            &format!("/api/admin/copies?device=K2&client={globex}&limit=500"),
            None,
        )
        .await;
    let k2 = k2["copies"].as_array().unwrap();
    assert_eq!(k2.len(), 40);
    assert!(k2
        .iter()
        .all(|c| c["device_id"] == "K2" && c["client_id"] == globex));
    let (_, none) = app
        .page_json(
            &admin,
            Method::GET,
            "/api/admin/copies?overdraft=true",
            None,
        )
        .await;
    assert!(none["copies"].as_array().unwrap().is_empty());
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, later) = app
        .page_json(
            &admin,
            Method::GET,
            &format!("/api/admin/copies?from={}", future.replace('+', "%2B")),
            None,
        )
        .await;
    assert!(later["copies"].as_array().unwrap().is_empty(), "{later}");

    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (_, earlier) = app
        .page_json(
            &admin,
            Method::GET,
            &format!("/api/admin/copies?to={}", past.replace('+', "%2B")),
            None,
        )
        .await;
    assert!(
        earlier["copies"].as_array().unwrap().is_empty(),
        "{earlier}"
    );
    let (_, until_now) = app
        .page_json(
            &admin,
            Method::GET,
            &format!(
                "/api/admin/copies?to={}&limit=500",
                future.replace('+', "%2B")
            ),
            None,
        )
        .await;
    assert!(until_now["copies"].as_array().unwrap().len() >= 100);

    for bad in [
        "cursor=garbage",
        "limit=0",
        "limit=100000",
        "client=x",
        "from=yesterday",
        "colour=red",
    ] {
        let (status, e) = app
            .page_json(
                &admin,
                Method::GET,
                &format!("/api/admin/copies?{bad}"),
                None,
            )
            .await;
        assert_eq!(
            (status, e["error"]["code"].clone()),
            (400, json!("invalid_request")),
            "{bad}: {e}"
        );
    }
    let (status, stats) = app
        .page_json(
            &admin,
            Method::GET,
            "/api/admin/stats/hourly?hours=24",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let total: i64 = stats["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["copies"].as_i64().unwrap())
        })
        .sum();
    assert_eq!(total, 100 + 3 * pushed);
}

fn rss_kib(pid: u32) -> u64 {
    propass_test_support::rss_kib(pid).expect("the server runs")
}

/// The real server binary serving `db_url` on a free port, as its own
/// process (so that its memory is its own); answers it and its base URL.
fn serve_binary(db_url: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_propass-server"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env_remove("PROPASS_CONFIG")
        .env("DATABASE_URL", db_url)
        .env("PROPASS_JWT_SECRET", SECRET)
        .env("PROPASS_CSV_CHUNK_ROWS", "2000")
        .env("PROPASS_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start propass-server");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("the server says where it listens")
            .unwrap();
        if let Some(p) = line.split("port=").nth(1) {
            break p.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn a_million_row_csv_export_streams_in_bounded_memory() {
    let app = spawn_app().await;
    let acme = app.add_client("ACME", 10).await;
    app.token("K1").await;
    // Bulk-loaded: a million kiosk pushes would take the test's whole budget.
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "INSERT INTO copies (idempotency_key, device_id, local_id, client_id, uid, kind, occurred_at, received_at) \
             SELECT 'dev:K1:' || i, 'K1', i, {acme}, lpad(to_hex(i), 14, '0'), 'copy', \
                    now() - interval '1 second' * i, now() - interval '1 second' * i \
             FROM generate_series(1, 1000000) AS i"
        )),
        &mut app.db().await,
    )
    .await
    .unwrap();
    let (mut server, base) = tokio::task::spawn_blocking({
        let url = app.db_url.clone();
        move || serve_binary(&url)
    })
    .await
    .unwrap();
    let pid = server.id();
    let cookie = app.admin_cookie_at(&base).await;
    // Warm: the first requests size the server's buffers and pool.
    let warm = app
        .http
        .get(format!("{base}/api/admin/copies?limit=500"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut res = app
        .http
        .get(format!("{base}/api/admin/copies.csv"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (mut lines, mut bytes, mut peak) = (0usize, 0usize, before);
    let mut head = Vec::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        if head.len() < 200 {
            head.extend_from_slice(&chunk[..chunk.len().min(200)]);
        }
        lines += chunk.iter().filter(|b| **b == b'\n').count();
        bytes += chunk.len();
        peak = peak.max(rss_kib(pid));
    }
    let _ = server.kill();
    let _ = server.wait();
    let growth_mib = (peak.saturating_sub(before)) / 1024;
    eprintln!(
        "CSV export: {} rows, {} MiB in {:.1} s; resident memory grew {growth_mib} MiB",
        lines - 1,
        bytes / (1 << 20),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lines, 1_000_001, "the header and every row");
    assert!(String::from_utf8_lossy(&head).starts_with(
        "id,received_at,occurred_at,device_id,client_id,kind,uid,overdraft,unverified,voided\n"
    ));
    // The export is ~100 MiB; holding it would show. Chunks of 2000 rows
    // (~400 KiB) do not: the bound leaves room for the allocator's arenas.
    assert!(
        growth_mib < 48,
        "memory grew {growth_mib} MiB while streaming {} MiB",
        bytes >> 20
    );
}

/// Reads server-sent events until one named `event` whose data satisfies
/// `want` arrives (or the deadline passes); returns its data.
async fn next_event(
    stream: &mut reqwest::Response,
    buf: &mut String,
    event: &str,
    want: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let name = frame.lines().find_map(|l| l.strip_prefix("event: "));
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(name), Some(data)) = (name, data) {
                let data: Value = serde_json::from_str(data).unwrap();
                if name == event && want(&data) {
                    return Some(data);
                }
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .ok()?
            .ok()??;
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A kiosk is not tied to the person who enrolled it: disabling that
/// operator and changing their password leaves its tokens, its refresh
/// credential and its pushes working (they end the operator's own session).
#[tokio::test]
async fn a_kiosk_outlives_the_operator_who_enrolled_it() {
    let app = spawn_app().await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    let acme = app.add_client("ACME", 10).await;
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;
    let (status, code) = app
        .page_json(
            &op,
            Method::POST,
            "/api/admin/enrollment-codes",
            Some(json!({"name": "Lobby", "clients": [acme]})),
        )
        .await;
    assert_eq!(status, 200, "{code}");
    let post = |path: &str, body: Value| {
        app.http
            .post(format!("{}{path}", app.base))
            .json(&body)
            .send()
    };
    let enrolled: Value = post(
        "/api/devices/enroll",
        json!({"code": code["code"], "device_id": "agent-1", "agent_version": "1.0.0"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = enrolled["token"].as_str().expect("a token").to_owned();

    let mut conn = app.db().await;
    let hash = propass_server::auth::password::hash_password("a-new-pass-1").unwrap();
    assert!(
        propass_server::db::users::set_password(&mut conn, OPERATOR.0, &hash)
            .await
            .unwrap()
    );
    assert!(
        propass_server::db::users::set_disabled(&mut conn, OPERATOR.0, true)
            .await
            .unwrap()
    );
    let (status, _) = app
        .page_json(&op, Method::GET, "/api/admin/devices", None)
        .await;
    assert_eq!(status, 401, "the operator's own session ended");

    let push = json!({"device_id": "agent-1", "queue": [seed_item(1, acme, "04AB12CD")]});
    assert_eq!(app.push_ok(&token, &push).await[0]["status"], "synced");
    let renewed = post(
        "/api/devices/token",
        json!({"credential": enrolled["credential"]}),
    )
    .await
    .unwrap();
    assert_eq!(renewed.status(), 200, "the kiosk renews its token");
}

/// A kiosk that falls silent without closing a socket (it only pulls, or
/// its instance died with the socket) goes offline on open dashboards by
/// time alone: its row comes in a `devices` event, no reload.
#[tokio::test]
async fn a_kiosk_that_falls_silent_goes_offline_on_open_dashboards() {
    let app = spawn_with(|c| c.fleet.offline_after = chrono::Duration::seconds(2)).await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;
    let mut stream = app
        .as_page(&op, Method::GET, "/api/admin/events")
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    assert!(next_event(&mut stream, &mut buf, "hello", |_| true)
        .await
        .is_some());
    // Heard from once (a login), then silent, while the page is open.
    let _token = app.token("K1").await;
    let k1_offline = |d: &Value| {
        d["device_id"] == "K1"
            && d["health"]["online"] == false
            && d["health"]["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "offline"))
    };
    let rows = next_event(&mut stream, &mut buf, "devices", |e| {
        e["devices"]
            .as_array()
            .is_some_and(|r| r.iter().any(k1_offline))
    })
    .await;
    assert!(rows.is_some(), "K1's row, offline, reached the open page");
}

#[tokio::test]
async fn the_live_stream_shows_copies_top_ups_kiosks_and_its_own_end() {
    let app = spawn_app().await;
    app.add_user(OPERATOR.0, OPERATOR.1, Role::Operator).await;
    let acme = app.add_client("ACME", 10).await;
    let token = app.token("K1").await;
    let op = app.browser(OPERATOR.0, OPERATOR.1).await;
    let mut stream = app
        .as_page(&op, Method::GET, "/api/admin/events")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    assert!(next_event(&mut stream, &mut buf, "hello", |_| true)
        .await
        .is_some());

    // A kiosk connects: its row, as the fleet list shows it, comes along
    // (no page refetches the fleet).
    let _ws = app.ws("/ws", &token, "K1").await;
    let k1_online = |d: &Value| d["device_id"] == "K1" && d["health"]["online"] == true;
    let rows = next_event(&mut stream, &mut buf, "devices", |e| {
        e["devices"]
            .as_array()
            .is_some_and(|r| r.iter().any(k1_online))
    })
    .await
    .expect("K1's row, online");
    let row = rows["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| k1_online(d))
        .unwrap();
    assert_eq!(row["status"], "active");
    assert!(row["leases"].is_array(), "{row}");
    // A kiosk pushes: the copy, and its client's new numbers.
    push_copies(&app, &token, "K1", acme, 1, 1).await;
    let copy = next_event(&mut stream, &mut buf, "copy", |_| true)
        .await
        .expect("a copy event");
    assert_eq!(
        (copy["device_id"].clone(), copy["client_id"].clone()),
        (json!("K1"), json!(acme))
    );
    assert!(copy.get("uid").is_none(), "the feed carries no badge UID");
    assert!(
        next_event(&mut stream, &mut buf, "client", |c| c["id"] == acme
            && c["used"] == 1)
        .await
        .is_some()
    );
    // Another process tops up: every dashboard sees the entry and the client.
    let (ok, _, err) = app
        .cli(&[
            "quota",
            "add",
            &acme.to_string(),
            "7",
            "--reason",
            "order 4711",
        ])
        .await;
    assert!(ok, "{err}");
    let entry = next_event(&mut stream, &mut buf, "audit", |e| {
        e["action"] == "quota.add"
    })
    .await
    .expect("the audit entry");
    assert_eq!(entry["detail"]["reason"], "order 4711");
    assert!(
        next_event(&mut stream, &mut buf, "client", |c| c["id"] == acme
            && c["total"] == 17)
        .await
        .is_some()
    );
    // The operator is disabled: the page is told, and the stream ends.
    let (ok, _, err) = app.cli(&["user", "disable", OPERATOR.0]).await;
    assert!(ok, "{err}");
    let end = next_event(&mut stream, &mut buf, "session_ended", |_| true)
        .await
        .expect("session_ended");
    assert!(end["message"].as_str().unwrap().contains("log in again"));
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(closed.is_ok(), "the stream ends");
}

#[tokio::test]
async fn metrics_are_served_on_their_own_address_and_count_what_happened() {
    let app = spawn_with(|c| c.metrics_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    let acme = app.add_client("ACME", 2).await;
    let token = app.token("K1").await;
    let _ws = app.ws("/ws", &token, "K1").await;
    push_copies(&app, &token, "K1", acme, 1, 3).await;
    app.push_ok(
        &token,
        &json!({"device_id": "K1", "queue": [seed_item(1, acme, &format!("04{:010X}", 1))]}),
    )
    .await;
    let _ = app.admin_login(ADMIN.0, "wrong").await;
    // The kiosk's disk is full.
    let full = json!({"agent_version": "0.1.0", "pending": 0, "failed": 0, "reader": "ok",
        "blanks_written": 0, "blanks_failed": 0, "storage_error": "database or disk is full",
        "clock": chrono::Utc::now()});
    assert_eq!(app.post_heartbeat(&token, &full).await.status(), 200);

    let text = app.scrape_metrics().await;
    for want in [
        "propass_push_items_total{outcome=\"new\"} 3",
        "propass_push_items_total{outcome=\"duplicate\"} 1",
        "propass_push_items_total{outcome=\"overdraft\"} 1",
        "propass_http_requests_total{route=\"/api/sync/push\",method=\"POST\",status=\"200\"} 2",
        "propass_http_request_duration_seconds_count{route=\"/api/sync/push\"} 2",
        "propass_login_failures_total 1",
        "propass_ws_connections 1",
        "propass_device_online{device=\"K1\"} 1",
        "propass_device_can_record{device=\"K1\"} 0",
        "propass_client_remaining{client=\"",
        "propass_db_pool_connections{state=\"max\"} 4",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    // 2 bought, 3 made: overdrawn, so at or below the low-quota threshold.
    let low = format!("propass_client_low_quota{{client=\"{acme}\",name=\"ACME\"}} 1");
    assert!(text.contains(&low), "{low} missing from\n{text}");
    assert!(
        text.contains("propass_device_reader_ok{device=\"K1\"} 1"),
        "{text}"
    );

    // A kiosk that does not know its reader yet says nothing of it (no
    // false "reader down"); a revoked kiosk is not expected to be heard
    // from (no "kiosk silent" for ever).
    let k2 = app.token("K2").await;
    let unknown = json!({"agent_version": "0.1.0", "pending": 0, "failed": 0, "reader": "unknown",
        "blanks_written": 0, "blanks_failed": 0, "clock": chrono::Utc::now()});
    assert_eq!(app.post_heartbeat(&k2, &unknown).await.status(), 200);
    app.revoke("K1").await;
    let text = app.scrape_metrics().await;
    assert!(
        text.contains("propass_device_online{device=\"K2\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("propass_device_reader_ok{device=\"K2\"}"),
        "{text}"
    );
    assert!(!text.contains("device=\"K1\""), "a revoked kiosk: {text}");
    // Not on the API's address.
    let res = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_under_a_strict_policy() {
    let app = spawn_app().await;
    // A person opening the server's address lands on the dashboard.
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/admin");
    for (path, kind) in [
        ("/admin", "text/html"),
        ("/admin/app.js", "text/javascript"),
        ("/admin/app.css", "text/css"),
    ] {
        let res = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        let csp = res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        let body = res.text().await.unwrap();
        // Only the SVG namespace, which names and fetches nothing.
        let foreign = body
            .match_indices("http")
            .filter(|(i, _)| {
                body[*i..].starts_with("http://") || body[*i..].starts_with("https://")
            })
            .filter(|(i, _)| !body[*i..].starts_with("http://www.w3.org/"))
            .count();
        assert_eq!(foreign, 0, "{path} names another host");
    }
}

/// What `v` breaks of `schema` (the subset of JSON Schema the document
/// uses: `$ref`, `oneOf`, `type` (one or several), `enum`, `format:
/// date-time`, `items`, `properties`, `required`, closed objects), with its
/// place; every component schema met is noted in `met`.
fn violations(
    doc: &Value,
    schema: &Value,
    v: &Value,
    at: &str,
    met: &mut BTreeSet<String>,
) -> Vec<String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        met.insert(name.to_owned());
        return violations(doc, &doc["components"]["schemas"][name], v, at, met);
    }
    if let Some(any) = schema["oneOf"].as_array() {
        // Only the branch the value fits counts as met.
        let mut wrong = Vec::new();
        for s in any {
            let mut branch = BTreeSet::new();
            let w = violations(doc, s, v, at, &mut branch);
            if w.is_empty() {
                met.extend(branch);
                return Vec::new();
            }
            wrong.extend(w);
        }
        return wrong;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Vec::new(),
    };
    let fits = |t: &str| match t {
        "null" => v.is_null(),
        "integer" => v.is_i64() || v.is_u64(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    };
    if !types.iter().any(|t| fits(t)) {
        return vec![format!("{at}: {v} is not {types:?}")];
    }
    let mut out = Vec::new();
    if let Some(allowed) = schema["enum"].as_array() {
        if !v.is_null() && !allowed.contains(v) {
            out.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if schema["format"] == "date-time" {
        if let Some(t) = v.as_str() {
            if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                out.push(format!("{at}: {t:?} is not an RFC 3339 time"));
            }
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), v.as_array()) {
        for (i, x) in values.iter().enumerate() {
            out.extend(violations(doc, items, x, &format!("{at}[{i}]"), met));
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), v.as_object()) {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !obj.contains_key(name) {
                out.push(format!("{at}.{name}: documented, not sent"));
            }
        }
        for (name, x) in obj {
            match props.get(name) {
                Some(s) => out.extend(violations(doc, s, x, &format!("{at}.{name}"), met)),
                None if schema["additionalProperties"] == false => {
                    out.push(format!("{at}.{name}: sent, not documented"))
                }
                None => {}
            }
        }
    }
    out
}

/// Each route's real answer, status and body, against what the document
/// says of it: every route with a documented JSON answer is called (with
/// data behind it: a client with a quota history, kiosks with a heartbeat,
/// copies and a lease, users, audit entries), and every schema is met; an
/// error body too. A member added, renamed or dropped on either side fails.
#[tokio::test]
async fn every_json_answer_is_what_the_document_says() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let mut met = BTreeSet::new();
    let mut called = BTreeSet::new();
    let mut check = |method: &str, path: &str, status: u16, body: &Value| {
        let op = &doc["paths"][path][method.to_ascii_lowercase()];
        let answer = if status >= 400 {
            &op["responses"]["4XX"]
        } else {
            let (documented, answer) = op["responses"]
                .as_object()
                .unwrap()
                .iter()
                .find(|(s, _)| s.starts_with('2'))
                .unwrap_or_else(|| panic!("{method} {path}: no success documented"));
            assert_eq!(status.to_string(), *documented, "{method} {path}: {body}");
            called.insert(format!("{method} {path}"));
            answer
        };
        let schema = &answer["content"]["application/json"]["schema"];
        let wrong = violations(&doc, schema, body, "answer", &mut met);
        assert!(
            wrong.is_empty(),
            "{method} {path}:\n{}\n{body:#}",
            wrong.join("\n")
        );
    };

    let res = app.admin_login(ADMIN.0, ADMIN.1).await;
    let status = res.status().as_u16();
    let session: Value = res.json().await.unwrap();
    check("POST", "/api/admin/login", status, &session);
    let admin = app.browser(ADMIN.0, ADMIN.1).await;
    let call = |method: Method, path: String, body: Option<Value>| {
        let admin = &admin;
        let app = &app;
        async move { app.page_json(admin, method, &path, body).await }
    };
    let (s, v) = call(Method::GET, "/api/admin/openapi.json".into(), None).await;
    check("GET", "/api/admin/openapi.json", s, &v);
    let (s, v) = call(Method::GET, "/api/admin/session".into(), None).await;
    check("GET", "/api/admin/session", s, &v);

    let (s, client) = call(
        Method::POST,
        "/api/admin/clients".into(),
        Some(json!({"name": "ACME", "quota": 10})),
    )
    .await;
    check("POST", "/api/admin/clients", s, &client);
    let id = client["id"].as_i64().unwrap();
    let (s, v) = call(
        Method::PATCH,
        format!("/api/admin/clients/{id}"),
        Some(json!({"name": "ACME Ltd"})),
    )
    .await;
    check("PATCH", "/api/admin/clients/{id}", s, &v);
    let (s, v) = call(
        Method::POST,
        format!("/api/admin/clients/{id}/quota"),
        Some(json!({"delta": 5, "reason": "paid"})),
    )
    .await;
    check("POST", "/api/admin/clients/{id}/quota", s, &v);
    let (s, v) = call(
        Method::GET,
        format!("/api/admin/clients/{id}/quota-history"),
        None,
    )
    .await;
    check("GET", "/api/admin/clients/{id}/quota-history", s, &v);
    let (s, v) = call(
        Method::PUT,
        format!("/api/admin/clients/{id}/reader-keys"),
        Some(json!({"keys": ["A0A1A2A3A4A5"]})),
    )
    .await;
    check("PUT", "/api/admin/clients/{id}/reader-keys", s, &v);

    // A kiosk that logged in, is approved for the client, reported its
    // health and pushed a verified and an unverified copy.
    let login: Value = app
        .login(ADMIN.0, ADMIN.1, "K1")
        .await
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap();
    let (s, v) = call(
        Method::POST,
        "/api/admin/devices/K1/approve".into(),
        Some(json!({"clients": [id]})),
    )
    .await;
    check("POST", "/api/admin/devices/{id}/approve", s, &v);
    let beat = json!({"agent_version": "9.8.7", "pending": 1, "failed": 0,
        "oldest_pending_at": chrono::Utc::now().to_rfc3339(), "last_sync_at": null,
        "last_error": "server unreachable", "reader": "ok", "blanks_written": 2,
        "blanks_failed": 1, "clock": chrono::Utc::now().to_rfc3339()});
    assert_eq!(app.post_heartbeat(token, &beat).await.status(), 200);
    let mut doubtful = seed_item(2, id, "04DEAD0000");
    doubtful["payload"]["unverified"] = json!(true);
    app.push_ok(
        token,
        &json!({"device_id": "K1", "queue": [seed_item(1, id, "04AB12CD"), doubtful]}),
    )
    .await;
    let (s, page) = call(Method::GET, "/api/admin/copies?limit=1".into(), None).await;
    check("GET", "/api/admin/copies", s, &page);
    assert!(page["next_cursor"].is_string(), "a second page: {page}");
    let copy = page["copies"][0]["id"].as_i64().unwrap();
    let (s, v) = call(
        Method::POST,
        format!("/api/admin/copies/{copy}/void"),
        Some(json!({"reason": "did not open the door"})),
    )
    .await;
    check("POST", "/api/admin/copies/{id}/void", s, &v);
    let (s, v) = call(Method::GET, "/api/admin/stats/hourly".into(), None).await;
    check("GET", "/api/admin/stats/hourly", s, &v);
    assert!(!v["series"].as_array().unwrap().is_empty(), "{v}");

    let device = |method: Method, what: &'static str, body: Value| {
        let call = &call;
        async move {
            let path = format!("/api/admin/devices/K1{what}");
            let (s, v) = call(method.clone(), path, Some(body)).await;
            (
                format!("/api/admin/devices/{{id}}{what}"),
                method.to_string(),
                s,
                v,
            )
        }
    };
    for (path, method, s, v) in [
        device(Method::PATCH, "", json!({"name": "Front desk"})).await,
        device(Method::POST, "/clients", json!({"add": [id]})).await,
        device(Method::PUT, "/lease", json!({"target": 3})).await,
    ] {
        check(&method, &path, s, &v);
    }
    // The kiosk's pull takes its lease.
    let entry = app.pull_entry_asking(token, id, "?lease=true").await;
    assert_eq!(entry["lease"], 3, "{entry}");
    let (s, v) = call(Method::GET, "/api/admin/devices".into(), None).await;
    check("GET", "/api/admin/devices", s, &v);
    assert!(v["devices"][0]["health"]["heartbeat_at"].is_string(), "{v}");
    assert!(
        !v["devices"][0]["leases"].as_array().unwrap().is_empty(),
        "{v}"
    );
    for (path, method, s, v) in [
        device(Method::POST, "/reclaim", json!({})).await,
        device(Method::POST, "/revoke", json!({})).await,
        device(Method::POST, "/reinstate", json!({})).await,
    ] {
        check(&method, &path, s, &v);
    }
    let (s, v) = call(Method::GET, "/api/admin/clients".into(), None).await;
    check("GET", "/api/admin/clients", s, &v);
    let (s, v) = call(
        Method::POST,
        "/api/admin/enrollment-codes".into(),
        Some(json!({"name": "Lobby", "clients": [id]})),
    )
    .await;
    check("POST", "/api/admin/enrollment-codes", s, &v);

    let (s, v) = call(
        Method::POST,
        "/api/admin/users".into(),
        Some(json!({"username": "olga", "password": "operator-pass-1", "role": "operator"})),
    )
    .await;
    check("POST", "/api/admin/users", s, &v);
    let (s, v) = call(
        Method::PATCH,
        "/api/admin/users/olga".into(),
        Some(json!({"disabled": true})),
    )
    .await;
    check("PATCH", "/api/admin/users/{name}", s, &v);
    let (s, v) = call(Method::GET, "/api/admin/users".into(), None).await;
    check("GET", "/api/admin/users", s, &v);
    let (s, v) = call(Method::GET, "/api/admin/audit".into(), None).await;
    check("GET", "/api/admin/audit", s, &v);

    // A refusal, in the documented error body.
    let (s, v) = call(
        Method::GET,
        "/api/admin/clients/999/quota-history".into(),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    check("GET", "/api/admin/clients/{id}/quota-history", s, &v);

    let (s, v) = call(Method::POST, "/api/admin/logout".into(), None).await;
    check("POST", "/api/admin/logout", s, &v);

    let mut documented = BTreeSet::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let json_answer = op["responses"].as_object().unwrap().iter().any(|(s, r)| {
                s.starts_with('2') && r["content"]["application/json"]["schema"].is_object()
            });
            if json_answer {
                documented.insert(format!("{} {path}", method.to_ascii_uppercase()));
            }
        }
    }
    assert_eq!(called, documented, "every JSON answer is checked");
    let schemas: BTreeSet<String> = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(met, schemas, "every schema was met by an answer");
}
