//! What a request says, read only once its caller is known: the admin
//! handlers take the session first and the body, query and path through
//! these. (Taken as extractors side by side, a malformed body would be
//! answered before an anonymous caller is — actix runs them together.)

use actix_web::web::Bytes;
use actix_web::HttpRequest;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// The JSON body as `T`.
pub fn json<T: DeserializeOwned>(req: &HttpRequest, body: &Bytes) -> ApiResult<T> {
    json_typed(req)?;
    serde_json::from_slice(body)
        .map_err(|e| ApiError::MalformedJson(format!("invalid JSON body: {e}")))
}

/// [`json`] for a body that holds secrets: a refusal says where, never
/// what (serde's messages quote the values they did not expect).
pub fn secret_json<T: DeserializeOwned>(req: &HttpRequest, body: &Bytes) -> ApiResult<T> {
    json_typed(req)?;
    serde_json::from_slice(body).map_err(|e| {
        ApiError::MalformedJson(format!(
            "invalid JSON body at line {} column {} (its content is not repeated: it holds secrets)",
            e.line(),
            e.column()
        ))
    })
}

/// Refuses a body that is not `application/json`.
fn json_typed(req: &HttpRequest) -> ApiResult<()> {
    let json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// The JSON body as `T`, or `T::default()` when there is none.
pub fn json_or_default<T: DeserializeOwned + Default>(
    req: &HttpRequest,
    body: &Bytes,
) -> ApiResult<T> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        json(req, body)
    }
}

/// The query string as `T`.
pub fn query<T: DeserializeOwned>(req: &HttpRequest) -> ApiResult<T> {
    actix_web::web::Query::<T>::from_query(req.query_string())
        .map(actix_web::web::Query::into_inner)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid query string: {e}")))
}

/// The path segment `name` of the route's pattern.
pub fn param<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.match_info().get(name).unwrap_or_default()
}
