//! Checks shared by the request extractors and the WebSocket upgrade.

use actix_web::http::header;
use actix_web::HttpRequest;
use propass_protocol::DeviceId;

use crate::db::{self, PgPool};
use crate::error::ApiError;

/// The bearer token of a request, if any.
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Refuses a revoked device (an unknown one is not revoked).
pub async fn ensure_device_active(pool: &PgPool, device: &DeviceId) -> Result<(), ApiError> {
    let mut conn = pool.get().await?;
    if db::devices::is_revoked(&mut conn, device).await? {
        return Err(ApiError::DeviceRevoked(device.clone()));
    }
    Ok(())
}
