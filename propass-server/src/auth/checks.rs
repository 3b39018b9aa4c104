//! Checks shared by the request extractors and the WebSocket upgrade.

use actix_web::http::header;
use actix_web::HttpRequest;

use super::tokens::Claims;
use crate::db::users::User;
use diesel_async::AsyncPgConnection;

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

/// Why a kiosk call is made: what the caller's user must be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Push, pull, WebSocket: a kiosk account's (or an admin's) calls.
    KioskCall,
    /// Refreshing the token: any role.
    Refresh,
}

/// Refuses a token whose user is gone, disabled, or changed its password
/// since (its epoch moved), or whose user's role may not make this call.
/// Returns the user as it is now.
pub async fn ensure_standing(
    pool: &PgPool,
    claims: &Claims,
    purpose: Purpose,
) -> Result<User, ApiError> {
    standing(&mut *pool.get().await?, claims, purpose).await
}

/// [`ensure_standing`], and the token's device not revoked (an unknown one
/// is not), on one connection: the checks of a call made on a device (pull,
/// refresh, a WebSocket and its heartbeat). A revoked device is reported first.
pub async fn ensure_standing_on_active_device(
    pool: &PgPool,
    claims: &Claims,
    purpose: Purpose,
) -> Result<User, ApiError> {
    let mut conn = pool.get().await?;
    if db::devices::is_revoked(&mut conn, &claims.device_id).await? {
        return Err(ApiError::DeviceRevoked(claims.device_id.clone()));
    }
    standing(&mut conn, claims, purpose).await
}

async fn standing(
    conn: &mut AsyncPgConnection,
    claims: &Claims,
    purpose: Purpose,
) -> Result<User, ApiError> {
    let user = db::users::by_id(conn, claims.uid)
        .await?
        .filter(|u| u.username == claims.sub)
        .ok_or_else(|| ApiError::InvalidToken("the token's user no longer exists".into()))?;
    if user.disabled {
        return Err(ApiError::InvalidToken("this account is disabled".into()));
    }
    if user.token_epoch != claims.epoch {
        return Err(ApiError::InvalidToken(
            "this token was revoked (the account's password or role changed): log in again".into(),
        ));
    }
    if purpose == Purpose::KioskCall && !user.role.acts_as_kiosk() {
        return Err(ApiError::Forbidden(format!(
            "a user with role {} does not make a kiosk's calls: log the kiosk in with a kiosk account",
            user.role.as_str()
        )));
    }
    Ok(user)
}
