//! `/admin`: the dashboard's page, script and style sheet, embedded in the
//! binary (no separate web server, nothing fetched from another host). The
//! page runs no inline script, so its Content-Security-Policy allows only
//! this origin.

use actix_web::HttpResponse;

const PAGE: &str = include_str!("../../../assets/admin/index.html");
const SCRIPT: &str = include_str!("../../../assets/admin/app.js");
const STYLE: &str = include_str!("../../../assets/admin/app.css");

/// What every dashboard asset is sent with.
fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// `GET /admin`.
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /admin/app.js`.
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /admin/app.css`.
pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}
