//! The operator plane over HTTP: the dashboard's assets, browser sessions,
//! and the admin API under `/api/admin`, one module per area — [`session`]
//! (login, logout, who am I), [`access`] (the session extractors: who may
//! call what), [`clients`], [`devices`], [`users`], [`ledger`] (copies,
//! CSV, voids, hourly counts, the audit log), [`events`] (the live stream)
//! and [`dashboard`] (the embedded page).
//!
//! Every route is declared once in [`operations`]: the router is built from
//! that list and so is the OpenAPI document served at
//! `/api/admin/openapi.json`, with who may call each route (`x-access`) —
//! the API tests walk the document and check every route's denials.

mod access;
mod answers;
mod clients;
mod dashboard;
mod devices;
mod events;
mod input;
mod ledger;
mod openapi;
mod session;
mod users;

pub use access::{AdminSession, OperatorSession, SESSION_COOKIE};
pub use openapi::{Field, Input, Kind};

use actix_web::http::Method;
use actix_web::web;
use serde_json::{json, Value};

use crate::admin::AdminError;
use crate::error::ApiError;

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(m) => Self::InvalidRequest(m),
            AdminError::NotFound(m) => Self::NoSuchRecord(m),
            AdminError::Conflict(m) => Self::Conflict(m),
            AdminError::Db(e) => e.into(),
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the page, the login, the document).
    Public,
    /// A logged-in admin or operator.
    Operator,
    /// A logged-in admin.
    Admin,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// One route, as documented.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    /// The actix pattern, which is also the OpenAPI path (`{id}`).
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// What the response is: `json`, `csv`, `html`, `event-stream`, ….
    pub produces: &'static str,
    /// Its request body or query parameters, as documented.
    pub input: Input,
    /// Its success status and the component schema of its JSON answer.
    pub answer: Option<(u16, &'static str)>,
}

impl Operation {
    /// Documents a JSON body of `fields`, read as `T` by the handler (a test
    /// reads the documented body as `T`).
    fn body<T: serde::de::DeserializeOwned>(mut self, fields: &'static [Field]) -> Self {
        self.input = Input::Body {
            fields,
            accepts: openapi::accepts_body::<T>,
        };
        self
    }

    /// Documents a JSON answer: `status`, with a body of schema `name`
    /// (in [`answers::schemas`]).
    const fn answers(mut self, status: u16, name: &'static str) -> Self {
        self.answer = Some((status, name));
        self
    }

    /// Documents query parameters `fields`, read as `T` by the handler.
    fn query<T: serde::de::DeserializeOwned>(mut self, fields: &'static [Field]) -> Self {
        self.input = Input::Query {
            fields,
            accepts: openapi::accepts_query::<T>,
        };
        self
    }
}

const fn op(
    method: &'static str,
    path: &'static str,
    access: Access,
    produces: &'static str,
    summary: &'static str,
) -> Operation {
    Operation {
        method,
        path,
        access,
        summary,
        produces,
        input: Input::Nothing,
        answer: None,
    }
}

/// The ledger's filters (JSON and CSV alike).
const LEDGER_FILTERS: &[Field] = &[
    Field::optional("client", Kind::Int),
    Field::optional("device", Kind::Text),
    Field::optional("from", Kind::Time),
    Field::optional("to", Kind::Time),
    Field::optional("overdraft", Kind::Bool),
    Field::optional("unverified", Kind::Bool),
    Field::optional("limit", Kind::Int),
    Field::optional("cursor", Kind::Text),
];

/// The audit log's filters.
const AUDIT_FILTERS: &[Field] = &[
    Field::optional("action", Kind::Text),
    Field::optional("subject", Kind::Text),
    Field::optional("limit", Kind::Int),
    Field::optional("cursor", Kind::Text),
];

/// Every operator-plane route with its handler: the one list the router and
/// the OpenAPI document are built from.
pub fn operations() -> Vec<(Operation, actix_web::Route)> {
    use Access::{Admin, Operator, Public};
    vec![
        (op("GET", "/admin", Public, "text/html", "The dashboard page"), web::get().to(dashboard::page)),
        (op("GET", "/admin/app.js", Public, "text/javascript", "The dashboard's script"), web::get().to(dashboard::script)),
        (op("GET", "/admin/app.css", Public, "text/css", "The dashboard's style sheet"), web::get().to(dashboard::style)),
        (op("GET", "/api/admin/openapi.json", Public, "application/json", "This document").answers(200, "Document"), web::get().to(openapi_json)),
        (op("POST", "/api/admin/login", Public, "application/json", "Open a browser session (sets the HttpOnly session cookie; answers the CSRF token). Kiosk accounts are refused").body::<session::LoginBody>(const { &[Field::required("username", Kind::Text), Field::required("password", Kind::Text)] }).answers(200, "Session"), web::post().to(session::login)),
        (op("GET", "/api/admin/session", Operator, "application/json", "The session's user and CSRF token").answers(200, "Session"), web::get().to(session::current)),
        (op("POST", "/api/admin/logout", Operator, "application/json", "End the session").answers(200, "LoggedOut"), web::post().to(session::logout)),
        (op("GET", "/api/admin/events", Operator, "text/event-stream", "Live events (server-sent events): hello, copy, client, device, audit, session_ended"), web::get().to(events::stream)),
        (op("GET", "/api/admin/clients", Operator, "application/json", "Clients with total, used, leased, remaining, overdrafts and the kiosks serving each (?archived=true includes archived ones)").query::<clients::ListQuery>(const { &[Field::optional("archived", Kind::Bool)] }).answers(200, "ClientList"), web::get().to(clients::list)),
        (op("POST", "/api/admin/clients", Operator, "application/json", "Create a client: {name, quota, partial_copy}").body::<clients::CreateBody>(const { &[Field::required("name", Kind::Text), Field::optional("quota", Kind::Int), Field::optional("partial_copy", Kind::Bool)] }).answers(201, "Client"), web::post().to(clients::create)),
        (op("PATCH", "/api/admin/clients/{id}", Operator, "application/json", "Rename or archive a client, or change its copy policy (kiosks learn it at their next pull): {name?, archived?, partial_copy?}").body::<clients::UpdateBody>(const { &[Field::optional("name", Kind::Text), Field::optional("archived", Kind::Bool), Field::optional("partial_copy", Kind::Bool)] }).answers(200, "Client"), web::patch().to(clients::update)),
        (op("POST", "/api/admin/clients/{id}/quota", Operator, "application/json", "Top up or adjust a quota: {delta, reason}; the kiosks serving the client hear of it").body::<clients::QuotaBody>(const { &[Field::required("delta", Kind::Int), Field::required("reason", Kind::Text)] }).answers(200, "Client"), web::post().to(clients::adjust_quota)),
        (op("PUT", "/api/admin/clients/{id}/reader-keys", Operator, "application/json", "Replace the MIFARE keys of the client's badges (12 hex digits each; an empty list clears them); kiosks serving the client read them at their next pull. The answer and the audit log count them, never show them: {keys}").body::<clients::ReaderKeysBody>(const { &[Field::required("keys", Kind::Texts)] }).answers(200, "Client"), web::put().to(clients::set_reader_keys)),
        (op("GET", "/api/admin/clients/{id}/quota-history", Operator, "application/json", "A client's quota changes: who, when, delta, reason").answers(200, "QuotaHistory"), web::get().to(clients::quota_history)),
        (op("GET", "/api/admin/devices", Operator, "application/json", "Kiosks with status, online, last contact, version, backlog, flags and the units each holds in lease").answers(200, "DeviceList"), web::get().to(devices::list)),
        (op("PATCH", "/api/admin/devices/{id}", Operator, "application/json", "Rename a kiosk: {name}").body::<devices::RenameBody>(const { &[Field::required("name", Kind::Text)] }).answers(200, "Device"), web::patch().to(devices::rename)),
        (op("POST", "/api/admin/devices/{id}/approve", Operator, "application/json", "Approve a pending kiosk: {clients}").body::<devices::ApproveBody>(const { &[Field::optional("clients", Kind::Ids)] }).answers(200, "Device"), web::post().to(devices::approve)),
        (op("POST", "/api/admin/devices/{id}/revoke", Operator, "application/json", "Revoke a kiosk: its tokens and sockets stop at once").answers(200, "Device"), web::post().to(devices::revoke)),
        (op("POST", "/api/admin/devices/{id}/reinstate", Operator, "application/json", "Undo a revocation").answers(200, "Device"), web::post().to(devices::reinstate)),
        (op("POST", "/api/admin/devices/{id}/clients", Operator, "application/json", "Change the clients a kiosk serves: {add, remove}").body::<devices::AssignBody>(const { &[Field::optional("add", Kind::Ids), Field::optional("remove", Kind::Ids)] }).answers(200, "Device"), web::post().to(devices::assign)),
        (op("PUT", "/api/admin/devices/{id}/lease", Operator, "application/json", "Set a kiosk's own lease sizes for every client it serves: {target?, low_water?} (no target: its clients' sizes again)").body::<devices::LeaseBody>(const { &[Field::optional("target", Kind::Int), Field::optional("low_water", Kind::Int)] }).answers(200, "Device"), web::put().to(devices::lease)),
        (op("POST", "/api/admin/devices/{id}/reclaim", Operator, "application/json", "Take back a kiosk's unused lease, of one client or all: {client?}; answers {returned, device}").body::<devices::ReclaimBody>(const { &[Field::optional("client", Kind::Int)] }).answers(200, "Reclaimed"), web::post().to(devices::reclaim)),
        (op("POST", "/api/admin/enrollment-codes", Operator, "application/json", "Create a one-time enrollment code: {name?, clients?, device_id?, valid_hours?}").body::<devices::CodeBody>(const { &[Field::optional("name", Kind::Text), Field::optional("clients", Kind::Ids), Field::optional("device_id", Kind::Text), Field::optional("valid_hours", Kind::Int)] }).answers(200, "EnrollmentCode"), web::post().to(devices::enrollment_code)),
        (op("GET", "/api/admin/users", Admin, "application/json", "Users with role and state").answers(200, "UserList"), web::get().to(users::list)),
        (op("POST", "/api/admin/users", Admin, "application/json", "Create a user: {username, password, role}").body::<users::CreateBody>(const { &[Field::required("username", Kind::Text), Field::required("password", Kind::Text), Field::required("role", Kind::Role)] }).answers(201, "User"), web::post().to(users::create)),
        (op("PATCH", "/api/admin/users/{name}", Admin, "application/json", "Change a user's role, disable or enable it, reset its password: {role?, disabled?, password?}").body::<users::UpdateBody>(const { &[Field::optional("role", Kind::Role), Field::optional("disabled", Kind::Bool), Field::optional("password", Kind::Text)] }).answers(200, "User"), web::patch().to(users::update)),
        (op("GET", "/api/admin/copies", Operator, "application/json", "The ledger, newest first, keyset-paginated: ?client, device, from, to, overdraft, unverified, limit, cursor").query::<ledger::CopiesQuery>(LEDGER_FILTERS).answers(200, "CopyPage"), web::get().to(ledger::copies)),
        (op("GET", "/api/admin/copies.csv", Operator, "text/csv", "The ledger as CSV, streamed (same filters)").query::<ledger::CopiesQuery>(LEDGER_FILTERS), web::get().to(ledger::copies_csv)),
        (op("POST", "/api/admin/copies/{id}/void", Operator, "application/json", "Void an unverified copy that did not work: {reason}; its unit goes back").body::<ledger::VoidBody>(const { &[Field::required("reason", Kind::Text)] }).answers(200, "Voided"), web::post().to(ledger::void)),
        (op("GET", "/api/admin/stats/hourly", Operator, "application/json", "Copies and quota changes per client and hour: ?hours (1 to 720)").query::<ledger::HourlyQuery>(const { &[Field::optional("hours", Kind::Int)] }).answers(200, "Hourly"), web::get().to(ledger::hourly)),
        (op("GET", "/api/admin/audit", Operator, "application/json", "The audit log, newest first: ?action, subject, limit, cursor").query::<ledger::AuditQuery>(AUDIT_FILTERS).answers(200, "AuditPage"), web::get().to(ledger::audit)),
        (op("GET", "/api/admin/audit.csv", Operator, "text/csv", "The audit log as CSV, streamed (same filters)").query::<ledger::AuditQuery>(AUDIT_FILTERS), web::get().to(ledger::audit_csv)),
    ]
}

/// Registers every route of [`operations`], one resource per path (a
/// path's methods must share it: actix answers 405 from the first resource
/// matching a path). The public ones that take a body (the login) get the
/// small body limit of unauthenticated calls.
pub fn configure(cfg: &mut web::ServiceConfig, auth_limit: usize) {
    let mut by_path: Vec<(&'static str, Vec<(Operation, actix_web::Route)>)> = Vec::new();
    for (op, route) in operations() {
        match by_path.iter_mut().find(|(p, _)| *p == op.path) {
            Some((_, routes)) => routes.push((op, route)),
            None => by_path.push((op.path, vec![(op, route)])),
        }
    }
    for (path, routes) in by_path {
        let mut resource = web::resource(path);
        if routes
            .iter()
            .any(|(op, _)| op.access == Access::Public && op.method == "POST")
        {
            resource = resource.app_data(
                web::JsonConfig::default()
                    .limit(auth_limit)
                    .error_handler(crate::routes::json_error),
            );
        }
        for (_, route) in routes {
            resource = resource.route(route);
        }
        cfg.service(resource.default_service(web::to(method_not_allowed)));
    }
}

/// The OpenAPI 3.1 document of [`operations`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for (op, _) in operations() {
        let mut parameters = Vec::new();
        for name in op
            .path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
        {
            parameters.push(
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
        let mut operation = json!({
            "summary": op.summary,
            "x-access": op.access.as_str(),
            "parameters": parameters,
            "responses": {
                "4XX": {"description": "Refused: the error body", "content": {"application/json": {"schema": answers::refer("Error")}}}
            }
        });
        let (status, content) = match op.answer {
            Some((status, name)) => (
                status,
                json!({op.produces: {"schema": answers::refer(name)}}),
            ),
            None => (200, json!({op.produces: {}})),
        };
        operation["responses"][status.to_string()] =
            json!({"description": "Done", "content": content});
        op.input.document(&mut operation);
        if op.access != Access::Public {
            operation["security"] = json!([{"session": []}]);
        }
        if op.method != "GET" && op.access != Access::Public {
            if let Some(p) = operation["parameters"].as_array_mut() {
                p.push(json!({"name": "X-CSRF-Token", "in": "header", "required": true, "schema": {"type": "string"}}));
            }
        }
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method.to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "PROPASS operator API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The dashboard's API. A browser session (POST /api/admin/login) sets an HttpOnly, Secure, SameSite=Strict cookie; every request that changes something also sends the session's X-CSRF-Token. Kiosk tokens are refused (403) on every route here. x-access says who may call each route: public, operator (operators and admins) or admin."
        },
        "components": {
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE}},
            "schemas": answers::schemas()
        },
        "paths": paths
    })
}

async fn method_not_allowed() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

async fn openapi_json() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(openapi())
}

/// Whether `method` changes something (and so needs the CSRF token).
fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_route_once_with_its_access() {
        let doc = openapi();
        let ops = operations();
        let mut listed = 0;
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, o) in methods.as_object().unwrap() {
                listed += 1;
                let (want, _) = ops
                    .iter()
                    .find(|(op, _)| op.path == path && op.method.eq_ignore_ascii_case(method))
                    .unwrap_or_else(|| panic!("{method} {path} documented but not routed"));
                assert_eq!(o["x-access"], want.access.as_str());
            }
        }
        assert_eq!(listed, ops.len(), "a route registered twice");
    }

    /// Every JSON route names the schema of its answer, and the schema
    /// exists (the API test checks real answers against them).
    #[test]
    fn every_json_answer_names_a_schema() {
        let schemas = answers::schemas();
        for (op, _) in operations() {
            if op.produces == "application/json" {
                let (_, name) = op
                    .answer
                    .unwrap_or_else(|| panic!("{} {}: no answer documented", op.method, op.path));
                assert!(
                    schemas.get(name).is_some(),
                    "{} {}: no schema {name}",
                    op.method,
                    op.path
                );
            }
        }
    }

    /// Every documented body and query is what its handler reads: all of
    /// its fields, and its required ones alone, are accepted by the
    /// handler's type (which refuses unknown fields); a body or query lacking
    /// a required field is refused.
    #[test]
    fn documented_inputs_are_what_the_handlers_read() {
        let mut checked = 0;
        for (op, _) in operations() {
            if let Some(problem) = op.input.check() {
                panic!("{} {}: {problem}", op.method, op.path);
            }
            checked += usize::from(!matches!(op.input, Input::Nothing));
        }
        assert!(checked >= 18, "only {checked} inputs documented");
    }
}
