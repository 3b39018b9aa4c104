//! The HTTP layer: the request [`extract`]ors, and the handlers, one module
//! per area: [`health`], [`auth`] (login, refresh), [`devices`] (enrollment,
//! device tokens), [`sync`] (push, pull),
//! [`ws_session`] (the WebSocket upgrade and session loop), [`admin`] (the
//! operator plane: dashboard, sessions, admin API), and [`metrics`] (served
//! on its own address); the middleware [`access_log`] (log line, metrics,
//! body deadline) and [`shed`]. Each returns [`crate::error::ApiResult`];
//! errors become the wire error body in `error.rs`. Handlers parse, call a
//! use case or a query, and answer: the logic lives elsewhere.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body_deadline;
pub mod client_addr;
pub mod devices;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod push_body;
pub mod shed;
pub mod sync;
pub mod ws_session;

use actix_web::error::JsonPayloadError;
use actix_web::middleware::Compress;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{ApiError, ApiResult};

/// The route table. Login, enrollment and device tokens have their own
/// small body limit (`auth_limit`).
pub fn configure(cfg: &mut web::ServiceConfig, auth_limit: usize) {
    let small_json = || {
        web::JsonConfig::default()
            .limit(auth_limit)
            .error_handler(json_error)
    };
    cfg.route("/health", web::get().to(health::health))
        .service(
            web::resource("/api/auth/login")
                .app_data(small_json())
                .route(web::post().to(auth::login)),
        )
        .service(
            web::resource("/api/devices/enroll")
                .app_data(small_json())
                .route(web::post().to(devices::enroll)),
        )
        .service(
            web::resource("/api/devices/token")
                .app_data(small_json())
                .route(web::post().to(devices::token)),
        )
        .service(
            web::resource("/api/devices/heartbeat")
                .app_data(small_json())
                .route(web::post().to(devices::heartbeat)),
        )
        .route("/api/auth/refresh", web::post().to(auth::refresh))
        // A pull lists every client a kiosk serves, a push answer every
        // item: gzip when the kiosk accepts it (ours does).
        .service(
            web::resource("/api/sync/push")
                .wrap(Compress::default())
                .route(web::post().to(sync::push)),
        )
        .service(
            web::resource("/api/sync/pull")
                .wrap(Compress::default())
                .route(web::get().to(sync::pull)),
        )
        .route("/api/sync/lease", web::delete().to(sync::release_leases))
        .route("/ws", web::get().to(ws_session::upgrade))
        // The seed client's default `wsUrl` is the bare server address.
        .route("/", web::get().to(ws_session::root))
        .configure(|cfg| admin::configure(cfg, auth_limit))
        .default_service(web::to(not_found));
}

/// Maps body-parsing failures to the wire error body (never an HTML page).
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::PayloadTooLarge(
            format!("request body is larger than the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Payload(e) if body_deadline::is_timeout(e) => ApiError::BodyTimeout,
        JsonPayloadError::Deserialize(e) => {
            ApiError::MalformedJson(format!("invalid JSON body: {e}"))
        }
        other => ApiError::MalformedJson(format!("cannot read the JSON body: {other}")),
    };
    api.into()
}

/// Maps query-string and path failures to the wire error body.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &HttpRequest,
) -> actix_web::Error {
    ApiError::InvalidRequest(format!("invalid query string: {err}")).into()
}

/// Maps path-segment failures to the wire error body.
pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidRequest(format!("invalid path: {err}")).into()
}

/// Unknown routes.
pub async fn not_found() -> ApiResult<HttpResponse> {
    Err(ApiError::NotFound)
}
